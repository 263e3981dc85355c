//! The agent's configuration: command-line flags, each with a `FLEETLET_*` environment variable
//! (DESIGN §5), over an optional TOML file, over built-in defaults.
//!
//! Precedence is flag or environment, then the file, then the default, so that a unit file can
//! ship a TOML and an operator can still override one value with an environment variable.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{Parser, ValueEnum};
use fleetlet_manifests::signature::PublicKey;
use fleetlet_manifests::{AbsPath, AgentId};
use serde::{Deserialize, Serialize};

use crate::engine::EngineSettings;
use crate::reconcile::systemd_unit::ManagerScope;
use crate::reconcile::{ContainerSettings, HostAccess, ReconcilerSettings, SystemdSettings};
use crate::runtime::RuntimeFlavor;

/// The manager answers a long-poll after at most this long (DESIGN §3).
pub const MAX_WATCH_WAIT: Duration = Duration::from_secs(300);
/// Long enough that idle long-polls cost little on a metered link (BENCHMARKS.md, target 5),
/// short enough for the manager to see a lost device within minutes.
pub const DEFAULT_WATCH_WAIT: Duration = Duration::from_secs(120);
/// The compact heartbeat; the watch's polls already show the manager the agent is alive, so this
/// only checks that the manager holds the agent's latest report.
pub const DEFAULT_REPORT_INTERVAL: Duration = Duration::from_secs(600);
/// A full status is sent at least this often even when nothing changed.
pub const FULL_STATUS_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// The filesystem store's size cap unless configured (the store's own default).
pub const DEFAULT_STORE_MAX_BYTES: u64 = 64 * MIB;
/// Below this the store's logs would rotate after a handful of events.
pub const MIN_STORE_MAX_BYTES: u64 = MIB;
const MIB: u64 = 1024 * 1024;

/// Command-line flags and environment variables.
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "fleetlet-agent",
    version,
    about = "The fleetlet device agent: converges this device toward its manifest"
)]
pub struct Cli {
    /// TOML file with any of the settings below (kebab-case keys); flags and environment win.
    #[arg(long, env = "FLEETLET_CONFIG")]
    pub config: Option<PathBuf>,
    /// The identity of this device (1–63 of a-z, 0-9, '-', '_', '.').
    #[arg(long, env = "FLEETLET_AGENT_ID")]
    pub agent_id: Option<String>,
    /// Base URL of the manager, e.g. http://manager:7800.
    #[arg(long, env = "FLEETLET_MANAGER_URL")]
    pub manager_url: Option<String>,
    /// The agent's token. Prefer the environment or --token-file: flags are visible in `ps`.
    #[arg(long, env = "FLEETLET_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the agent's token (surrounding whitespace is ignored).
    #[arg(long, env = "FLEETLET_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The fleet's bootstrap token: without a token, the agent enrolls itself with it once and
    /// keeps its own token in the state dir (mode 0600).
    #[arg(long, env = "FLEETLET_BOOTSTRAP_TOKEN", hide_env_values = true)]
    pub bootstrap_token: Option<String>,
    /// File holding the bootstrap token.
    #[arg(long, env = "FLEETLET_BOOTSTRAP_TOKEN_FILE")]
    pub bootstrap_token_file: Option<PathBuf>,
    /// PEM file of the CA that signed the manager's certificate. With it, only that CA is
    /// trusted for an https manager URL; without it, the system's roots are.
    #[arg(long, env = "FLEETLET_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Directory of the agent's local state.
    #[arg(long, env = "FLEETLET_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Absolute directories, separated by ':', under which File resources may write.
    #[arg(long, env = "FLEETLET_FILE_ROOTS", value_delimiter = ':')]
    pub file_roots: Option<Vec<PathBuf>>,
    /// Directory under which SessionStorage resources live.
    #[arg(long, env = "FLEETLET_SESSION_ROOT")]
    pub session_root: Option<PathBuf>,
    /// Container runtime for Container resources.
    #[arg(long, env = "FLEETLET_CONTAINER_RUNTIME")]
    pub container_runtime: Option<ContainerRuntimeKind>,
    /// The container runtime's binary, when it is not `podman` or `docker` on PATH.
    #[arg(long, env = "FLEETLET_CONTAINER_RUNTIME_PATH")]
    pub container_runtime_path: Option<PathBuf>,
    /// Which systemd manager SystemdUnit resources go to.
    #[arg(long, env = "FLEETLET_SYSTEMD_SCOPE")]
    pub systemd_scope: Option<SystemdScope>,
    /// Directory where SystemdUnit resources write their unit files.
    #[arg(long, env = "FLEETLET_UNIT_DIR")]
    pub unit_dir: Option<PathBuf>,
    /// How often every resource is observed again and drift repaired (e.g. 10s, 500ms).
    #[arg(long, env = "FLEETLET_RESYNC_INTERVAL", value_parser = parse_duration)]
    pub resync_interval: Option<Duration>,
    /// How long one manifest long-poll waits at the manager (at most 300s; default 120s). Each
    /// poll also tells the manager the agent is alive.
    #[arg(long, env = "FLEETLET_WATCH_WAIT", value_parser = parse_duration)]
    pub watch_wait: Option<Duration>,
    /// Heartbeat: a compact message (the last report's seq) sent this often (default 10m); a
    /// full status goes out only when it changed or the manager lacks it.
    #[arg(long, env = "FLEETLET_REPORT_INTERVAL", value_parser = parse_duration)]
    pub report_interval: Option<Duration>,
    /// How many resources of one kind are reconciled at the same time.
    #[arg(long, env = "FLEETLET_CONCURRENCY")]
    pub concurrency: Option<usize>,
    /// An apply or delete taking longer than this fails and is retried with backoff.
    #[arg(long, env = "FLEETLET_APPLY_TIMEOUT", value_parser = parse_duration)]
    pub apply_timeout: Option<Duration>,
    /// Standalone mode: take the desired state from this manifest file, with no manager.
    #[arg(long, env = "FLEETLET_MANIFEST_FILE")]
    pub manifest_file: Option<PathBuf>,
    /// Make one full pass, print the status JSON on stdout, exit 0 only if converged.
    #[arg(long, env = "FLEETLET_ONCE")]
    pub once: bool,
    /// Size cap of the filesystem store in the state dir: bytes, or with a KiB, MiB or GiB
    /// suffix (e.g. 64MiB); at least 1MiB, 64MiB by default. Only used when the agent is built
    /// with the `fs-store` feature; without it the setting is accepted and ignored.
    #[arg(long, env = "FLEETLET_STORE_MAX_BYTES", value_parser = parse_bytes)]
    pub store_max_bytes: Option<u64>,
    /// Let Container resources run privileged (`privileged: true`), which hands them the whole
    /// device. Off by default; `--allow-privileged` alone means true.
    #[arg(long, env = "FLEETLET_ALLOW_PRIVILEGED", num_args = 0..=1, require_equals = true,
        default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub allow_privileged: Option<bool>,
    /// Let Container resources use the host's network namespace (`hostNetwork: true`). Off by
    /// default.
    #[arg(long, env = "FLEETLET_ALLOW_HOST_NETWORK", num_args = 0..=1, require_equals = true,
        default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub allow_host_network: Option<bool>,
    /// Let Container resources use the host's PID namespace (`hostPid: true`). Off by default.
    #[arg(long, env = "FLEETLET_ALLOW_HOST_PID", num_args = 0..=1, require_equals = true,
        default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub allow_host_pid: Option<bool>,
    /// Host devices, absolute paths separated by ':', that Container resources may be given
    /// (`devices`); matched exactly. None by default.
    #[arg(long, env = "FLEETLET_ALLOWED_DEVICES", value_delimiter = ':')]
    pub allowed_devices: Option<Vec<PathBuf>>,
    /// Public key files (from `fleetlet keygen`), separated by ':', whose signatures the agent
    /// trusts; more than one allows a key rotation. With any key set, an unsigned or mis-signed
    /// manifest is refused. None by default: unsigned manifests are accepted (for development).
    #[arg(long, env = "FLEETLET_TRUSTED_KEYS", value_delimiter = ':')]
    pub trusted_keys: Option<Vec<PathBuf>>,
    /// Write the agent's metrics to this `.prom` file, for node_exporter's textfile collector
    /// (e.g. /var/lib/node_exporter/textfile_collector/fleetlet.prom). Replaced atomically after
    /// a pass that changed something. None by default: no metrics, and nothing listens anyway.
    #[arg(long, env = "FLEETLET_METRICS_FILE")]
    pub metrics_file: Option<PathBuf>,
}

/// The same settings, read from the TOML file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FileConfig {
    pub agent_id: Option<String>,
    pub manager_url: Option<String>,
    pub token_file: Option<PathBuf>,
    pub bootstrap_token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub file_roots: Option<Vec<PathBuf>>,
    pub session_root: Option<PathBuf>,
    pub container_runtime: Option<ContainerRuntimeKind>,
    pub container_runtime_path: Option<PathBuf>,
    pub systemd_scope: Option<SystemdScope>,
    pub unit_dir: Option<PathBuf>,
    pub resync_interval: Option<String>,
    pub watch_wait: Option<String>,
    pub report_interval: Option<String>,
    pub concurrency: Option<usize>,
    pub apply_timeout: Option<String>,
    pub manifest_file: Option<PathBuf>,
    /// A number of bytes, or a string such as "64MiB".
    pub store_max_bytes: Option<FileBytes>,
    pub allow_privileged: Option<bool>,
    pub allow_host_network: Option<bool>,
    pub allow_host_pid: Option<bool>,
    pub allowed_devices: Option<Vec<PathBuf>>,
    pub trusted_keys: Option<Vec<PathBuf>>,
    pub metrics_file: Option<PathBuf>,
}

/// A size in the TOML file: `store-max-bytes = 67108864` or `store-max-bytes = "64MiB"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum FileBytes {
    Count(u64),
    Text(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerRuntimeKind {
    Podman,
    Docker,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SystemdScope {
    System,
    User,
    None,
}

/// A bearer token. Its `Debug` never shows the value, so it cannot leak through a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The value, for the `Authorization` header and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(***)")
    }
}

/// How the agent proves who it is to the manager.
#[derive(Debug, Clone, PartialEq)]
pub enum Credential {
    /// FLEETLET_TOKEN or FLEETLET_TOKEN_FILE.
    Token(Token),
    /// No token configured: the one kept from an earlier enrollment, else enrollment with this
    /// bootstrap token (see `enroll.rs`).
    Enroll { bootstrap: Option<Token> },
}

/// Where desired state comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Manager {
        url: String,
        token: Credential,
        /// The CA the manager's certificate must chain to (FLEETLET_CA_FILE).
        ca_file: Option<PathBuf>,
    },
    ManifestFile(PathBuf),
}

/// The effective configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// May be absent only in standalone mode, where the manifest file names the agent.
    pub agent_id: Option<AgentId>,
    pub source: Source,
    pub once: bool,
    pub state_dir: PathBuf,
    pub file_roots: Vec<PathBuf>,
    pub session_root: PathBuf,
    pub container_runtime: ContainerRuntimeKind,
    pub container_runtime_path: Option<PathBuf>,
    pub systemd_scope: SystemdScope,
    pub unit_dir: PathBuf,
    pub resync_interval: Duration,
    pub watch_wait: Duration,
    pub report_interval: Duration,
    pub concurrency: usize,
    pub apply_timeout: Duration,
    /// Size cap of the filesystem store (FLEETLET_STORE_MAX_BYTES); unused without `fs-store`.
    pub store_max_bytes: u64,
    /// What Container resources may ask of the host (FLEETLET_ALLOW_*, FLEETLET_ALLOWED_DEVICES).
    pub host_access: HostAccess,
    /// Keys whose manifest signatures are trusted (FLEETLET_TRUSTED_KEYS); empty: none required.
    pub trusted_keys: Vec<PublicKey>,
    /// The textfile metrics (FLEETLET_METRICS_FILE), a path ending in `.prom`; none: off.
    pub metrics_file: Option<PathBuf>,
}

/// Why the configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("could not read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error("{setting}: {message}")]
    Invalid {
        setting: &'static str,
        message: String,
    },
    #[error("could not read the token file {path}: {source}")]
    ReadToken {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A secret given inline (flag or environment) or as a file. Both at once on the command line
/// or in the environment is refused rather than guessed at; a file named in the TOML file only
/// counts when neither is given.
fn read_secret(
    setting: &'static str,
    inline: Option<String>,
    cli_file: Option<PathBuf>,
    config_file: Option<PathBuf>,
) -> Result<Option<Token>, ConfigError> {
    let text = match (inline, cli_file) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                setting,
                format!("set only one of {setting} and {setting}_FILE"),
            ));
        }
        (Some(text), None) => text,
        (None, Some(path)) => std::fs::read_to_string(&path)
            .map_err(|source| ConfigError::ReadToken { path, source })?,
        (None, None) => match config_file {
            Some(path) => std::fs::read_to_string(&path)
                .map_err(|source| ConfigError::ReadToken { path, source })?,
            None => return Ok(None),
        },
    };
    let text = text.trim();
    if text.is_empty() {
        return Err(invalid(setting, "the token is empty"));
    }
    Ok(Some(Token::new(text.to_owned())))
}

/// Reads every trusted public key file; an unreadable or malformed one stops the start, since
/// silently trusting fewer keys could refuse every manifest (or, with none left, accept any).
fn read_trusted_keys(paths: Option<Vec<PathBuf>>) -> Result<Vec<PublicKey>, ConfigError> {
    const SETTING: &str = "FLEETLET_TRUSTED_KEYS";
    let mut keys = Vec::new();
    for path in paths.unwrap_or_default() {
        if path.as_os_str().is_empty() {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| invalid(SETTING, format!("cannot read {}: {e}", path.display())))?;
        let key = PublicKey::from_file_text(&text)
            .map_err(|e| invalid(SETTING, format!("{}: {e}", path.display())))?;
        keys.push(key);
    }
    Ok(keys)
}

fn invalid(setting: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        message: message.into(),
    }
}

/// Parses durations such as `10s`, `500ms`, `2m`, `1h` or `1m30s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration such as 10s, 500ms, 2m or 1h");
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let part = match &rest[..unit_len] {
            "ms" => Duration::from_millis(number),
            "s" => Duration::from_secs(number),
            "m" => Duration::from_secs(number.saturating_mul(60)),
            "h" => Duration::from_secs(number.saturating_mul(3600)),
            _ => return Err(bad()),
        };
        total = total.saturating_add(part);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// Parses sizes such as `1048576`, `512KiB`, `64MiB` or `1GiB` (binary units).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a size such as 67108864, 512KiB, 64MiB or 1GiB");
    let trimmed = text.trim();
    let digits = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    if digits == 0 {
        return Err(bad());
    }
    let number: u64 = trimmed[..digits].parse().map_err(|_| bad())?;
    let unit: u64 = match trimmed[digits..].trim_start() {
        "" | "B" => 1,
        "KiB" => 1024,
        "MiB" => MIB,
        "GiB" => 1024 * MIB,
        _ => return Err(bad()),
    };
    number.checked_mul(unit).ok_or_else(bad)
}

fn file_duration(
    setting: &'static str,
    value: Option<&String>,
) -> Result<Option<Duration>, ConfigError> {
    value
        .map(|text| parse_duration(text).map_err(|message| invalid(setting, message)))
        .transpose()
}

/// A duration setting: the flag or environment, else the file, else `default`.
fn duration_setting(
    setting: &'static str,
    flag: Option<Duration>,
    in_file: Option<&String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    Ok(flag.or(file_duration(setting, in_file)?).unwrap_or(default))
}

impl Config {
    /// Parses the process's flags and environment, then the TOML file they name.
    pub fn load() -> Result<Self, ConfigError> {
        Self::from_cli(Cli::parse())
    }

    pub fn from_cli(cli: Cli) -> Result<Self, ConfigError> {
        let file = match &cli.config {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
                        path: path.clone(),
                        source,
                    })?;
                toml::from_str::<FileConfig>(&text).map_err(|e| ConfigError::ParseFile {
                    path: path.clone(),
                    message: e.to_string(),
                })?
            }
            None => FileConfig::default(),
        };
        Self::resolve(cli, file)
    }

    /// Merges flags over the file over defaults, and checks the result.
    pub fn resolve(cli: Cli, file: FileConfig) -> Result<Self, ConfigError> {
        let agent_id = cli
            .agent_id
            .or(file.agent_id)
            .map(|id| AgentId::try_from(id).map_err(|e| invalid("FLEETLET_AGENT_ID", e.0)))
            .transpose()?;
        let manifest_file = cli.manifest_file.or(file.manifest_file);
        let manager_url = cli.manager_url.or(file.manager_url);
        let source = match (manifest_file, manager_url) {
            (Some(path), _) => Source::ManifestFile(path),
            (None, Some(url)) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(invalid(
                        "FLEETLET_MANAGER_URL",
                        format!("{url:?} must start with http:// or https://"),
                    ));
                }
                let token =
                    read_secret("FLEETLET_TOKEN", cli.token, cli.token_file, file.token_file)?;
                let bootstrap = read_secret(
                    "FLEETLET_BOOTSTRAP_TOKEN",
                    cli.bootstrap_token,
                    cli.bootstrap_token_file,
                    file.bootstrap_token_file,
                )?;
                Source::Manager {
                    url: url.trim_end_matches('/').to_owned(),
                    // Whether a kept token exists is decided when the agent starts: the state
                    // dir may not even exist yet.
                    token: match token {
                        Some(token) => Credential::Token(token),
                        None => Credential::Enroll { bootstrap },
                    },
                    ca_file: cli.ca_file.or(file.ca_file),
                }
            }
            (None, None) => {
                return Err(invalid(
                    "FLEETLET_MANAGER_URL",
                    "set a manager URL, or --manifest-file for standalone mode",
                ));
            }
        };
        if agent_id.is_none() && matches!(source, Source::Manager { .. }) {
            return Err(invalid(
                "FLEETLET_AGENT_ID",
                "an agent id is needed to talk to the manager",
            ));
        }

        let file_roots = cli.file_roots.or(file.file_roots).unwrap_or_default();
        if let Some(relative) = file_roots.iter().find(|root| !root.is_absolute()) {
            return Err(invalid(
                "FLEETLET_FILE_ROOTS",
                format!("{} is not an absolute directory", relative.display()),
            ));
        }
        let watch_wait = duration_setting(
            "FLEETLET_WATCH_WAIT",
            cli.watch_wait,
            file.watch_wait.as_ref(),
            DEFAULT_WATCH_WAIT,
        )?;
        if watch_wait > MAX_WATCH_WAIT {
            return Err(invalid("FLEETLET_WATCH_WAIT", "must be at most 300s"));
        }
        let positive = |setting: &'static str, value: Duration| {
            if value.is_zero() {
                Err(invalid(setting, "must be more than zero"))
            } else {
                Ok(value)
            }
        };
        let resync_interval = positive(
            "FLEETLET_RESYNC_INTERVAL",
            duration_setting(
                "FLEETLET_RESYNC_INTERVAL",
                cli.resync_interval,
                file.resync_interval.as_ref(),
                Duration::from_secs(10),
            )?,
        )?;
        let report_interval = positive(
            "FLEETLET_REPORT_INTERVAL",
            duration_setting(
                "FLEETLET_REPORT_INTERVAL",
                cli.report_interval,
                file.report_interval.as_ref(),
                DEFAULT_REPORT_INTERVAL,
            )?,
        )?;
        let apply_timeout = positive(
            "FLEETLET_APPLY_TIMEOUT",
            duration_setting(
                "FLEETLET_APPLY_TIMEOUT",
                cli.apply_timeout,
                file.apply_timeout.as_ref(),
                Duration::from_secs(120),
            )?,
        )?;
        let concurrency = cli.concurrency.or(file.concurrency).unwrap_or(8);
        if concurrency == 0 {
            return Err(invalid("FLEETLET_CONCURRENCY", "must be at least 1"));
        }
        let store_max_bytes = match cli.store_max_bytes {
            Some(bytes) => bytes,
            None => match file.store_max_bytes {
                Some(FileBytes::Count(bytes)) => bytes,
                Some(FileBytes::Text(text)) => parse_bytes(&text)
                    .map_err(|message| invalid("FLEETLET_STORE_MAX_BYTES", message))?,
                None => DEFAULT_STORE_MAX_BYTES,
            },
        };
        if store_max_bytes < MIN_STORE_MAX_BYTES {
            return Err(invalid(
                "FLEETLET_STORE_MAX_BYTES",
                format!("{store_max_bytes} bytes is too small: must be at least 1MiB (1048576)"),
            ));
        }
        let host_access = HostAccess {
            privileged: cli
                .allow_privileged
                .or(file.allow_privileged)
                .unwrap_or(false),
            host_network: cli
                .allow_host_network
                .or(file.allow_host_network)
                .unwrap_or(false),
            host_pid: cli.allow_host_pid.or(file.allow_host_pid).unwrap_or(false),
            devices: allowed_devices(cli.allowed_devices.or(file.allowed_devices))?,
        };
        let trusted_keys = read_trusted_keys(cli.trusted_keys.or(file.trusted_keys))?;
        let metrics_file = metrics_file(cli.metrics_file.or(file.metrics_file))?;
        let state_dir = cli
            .state_dir
            .or(file.state_dir)
            .unwrap_or_else(|| PathBuf::from("/var/lib/fleetlet"));
        let systemd_scope = cli
            .systemd_scope
            .or(file.systemd_scope)
            .unwrap_or(SystemdScope::System);
        Ok(Config {
            agent_id,
            source,
            once: cli.once,
            session_root: cli
                .session_root
                .or(file.session_root)
                .unwrap_or_else(|| state_dir.join("sessions")),
            state_dir,
            file_roots,
            container_runtime: cli
                .container_runtime
                .or(file.container_runtime)
                .unwrap_or(ContainerRuntimeKind::Podman),
            container_runtime_path: cli.container_runtime_path.or(file.container_runtime_path),
            systemd_scope,
            unit_dir: cli
                .unit_dir
                .or(file.unit_dir)
                .unwrap_or_else(|| default_unit_dir(systemd_scope)),
            resync_interval,
            watch_wait,
            report_interval,
            concurrency,
            apply_timeout,
            store_max_bytes,
            host_access,
            trusted_keys,
            metrics_file,
        })
    }

    pub fn engine_settings(&self) -> EngineSettings {
        EngineSettings {
            concurrency: self.concurrency,
            apply_timeout: self.apply_timeout,
            resync_interval: self.resync_interval,
            report_interval: FULL_STATUS_INTERVAL,
            trusted_keys: self.trusted_keys.clone(),
            ..EngineSettings::default()
        }
    }

    /// File roots are resolved once, at start, so that a root given through a link (such as
    /// /tmp on some systems) compares equal to the paths under it.
    pub fn reconciler_settings(&self) -> ReconcilerSettings {
        ReconcilerSettings {
            file_roots: self
                .file_roots
                .iter()
                .map(|root| canonical_or_given(root))
                .collect(),
            systemd: match self.systemd_scope {
                SystemdScope::System => Some(ManagerScope::System),
                SystemdScope::User => Some(ManagerScope::User),
                SystemdScope::None => None,
            }
            .map(|scope| SystemdSettings {
                scope,
                unit_dir: self.unit_dir.clone(),
            }),
            agent_id: self.agent_id.clone(),
            container: ContainerSettings {
                runtime: match self.container_runtime {
                    ContainerRuntimeKind::Podman => Some(RuntimeFlavor::Podman),
                    ContainerRuntimeKind::Docker => Some(RuntimeFlavor::Docker),
                    ContainerRuntimeKind::None => None,
                },
                runtime_path: self.container_runtime_path.clone(),
                host_access: self.host_access.clone(),
            },
            session_root: Some(self.session_root.clone()),
        }
    }

    /// The configuration as recorded in the store's agent record: no secret in it.
    pub fn snapshot(&self) -> serde_json::Value {
        let source = match &self.source {
            Source::Manager { url, .. } => serde_json::json!({"managerUrl": url}),
            Source::ManifestFile(path) => serde_json::json!({"manifestFile": path}),
        };
        serde_json::json!({
            "source": source,
            "stateDir": self.state_dir,
            "fileRoots": self.file_roots,
            "sessionRoot": self.session_root,
            "containerRuntime": self.container_runtime,
            "containerRuntimePath": self.container_runtime_path,
            "systemdScope": self.systemd_scope,
            "unitDir": self.unit_dir,
            "resyncIntervalMs": self.resync_interval.as_millis() as u64,
            "watchWaitMs": self.watch_wait.as_millis() as u64,
            "reportIntervalMs": self.report_interval.as_millis() as u64,
            "concurrency": self.concurrency,
            "storeMaxBytes": self.store_max_bytes,
            "allowPrivileged": self.host_access.privileged,
            "allowHostNetwork": self.host_access.host_network,
            "allowHostPid": self.host_access.host_pid,
            "allowedDevices": self.host_access.devices,
            "trustedKeyIds": self.trusted_keys.iter().map(PublicKey::key_id).collect::<Vec<_>>(),
            "metricsFile": self.metrics_file,
        })
    }
}

/// Where unit files go unless configured: the directory an administrator's own units live in,
/// for the system manager or for the user the agent runs as.
fn default_unit_dir(scope: SystemdScope) -> PathBuf {
    match scope {
        SystemdScope::User => std::env::var_os("XDG_CONFIG_HOME")
            .filter(|dir| Path::new(dir).is_absolute())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".config")))
            .map_or_else(
                || PathBuf::from("/etc/systemd/user"),
                |config| config.join("systemd/user"),
            ),
        SystemdScope::System | SystemdScope::None => PathBuf::from("/etc/systemd/system"),
    }
}

/// The allowed device list: absolute, normalised paths (matched exactly against a manifest's
/// `devices`), without ':' or ',', which the runtimes read as separators in `--device`.
fn allowed_devices(paths: Option<Vec<PathBuf>>) -> Result<Vec<AbsPath>, ConfigError> {
    let mut devices = Vec::new();
    for path in paths.unwrap_or_default() {
        let text = path.to_str().ok_or_else(|| {
            invalid(
                "FLEETLET_ALLOWED_DEVICES",
                format!("{} is not valid UTF-8", path.display()),
            )
        })?;
        if text.contains([':', ',']) {
            return Err(invalid(
                "FLEETLET_ALLOWED_DEVICES",
                format!("{text} must not contain ':' or ','"),
            ));
        }
        let device = AbsPath::try_from(text)
            .map_err(|e| invalid("FLEETLET_ALLOWED_DEVICES", format!("{text}: {}", e.0)))?;
        if !devices.contains(&device) {
            devices.push(device);
        }
    }
    Ok(devices)
}

/// The metrics file must be named `*.prom`: node_exporter's textfile collector reads nothing
/// else, so any other name would be a setting that silently does nothing.
fn metrics_file(path: Option<PathBuf>) -> Result<Option<PathBuf>, ConfigError> {
    const SETTING: &str = "FLEETLET_METRICS_FILE";
    let Some(path) = path.filter(|path| !path.as_os_str().is_empty()) else {
        return Ok(None);
    };
    let named_prom = path
        .file_name()
        .and_then(|name| name.to_str())
        .is_some_and(|name| name.len() > ".prom".len() && name.ends_with(".prom"));
    if !named_prom {
        return Err(invalid(
            SETTING,
            format!(
                "{} must be a file named *.prom (node_exporter's textfile collector reads only those)",
                path.display()
            ),
        ));
    }
    Ok(Some(path))
}

fn canonical_or_given(root: &Path) -> PathBuf {
    std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn durations_take_the_documented_forms() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        for bad in ["", "10", "s", "10x", "-1s", "1.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn flags_win_over_the_file_which_wins_over_defaults() {
        let cli = Cli::try_parse_from([
            "fleetlet-agent",
            "--agent-id",
            "pi-1",
            "--manager-url",
            "http://m:7800/",
            "--token",
            " secret\n",
            "--resync-interval",
            "500ms",
        ])
        .expect("flags parse");
        let file: FileConfig = toml::from_str(
            "resync-interval = \"20s\"\nreport-interval = \"5s\"\nfile-roots = [\"/srv/a\", \"/srv/b\"]\n",
        )
        .expect("toml parses");
        let config = Config::resolve(cli, file).expect("valid");
        assert_eq!(config.resync_interval, Duration::from_millis(500));
        assert_eq!(config.report_interval, Duration::from_secs(5));
        assert_eq!(config.watch_wait, DEFAULT_WATCH_WAIT);
        assert_eq!(
            config.file_roots,
            [PathBuf::from("/srv/a"), PathBuf::from("/srv/b")]
        );
        assert_eq!(
            config.source,
            Source::Manager {
                url: "http://m:7800".into(),
                token: Credential::Token(Token::new("secret".into())),
                ca_file: None,
            }
        );
    }

    fn standalone(args: &[&str], file: &str) -> Result<Config, ConfigError> {
        let mut all = vec!["fleetlet-agent", "--manifest-file", "/m.json"];
        all.extend_from_slice(args);
        Config::resolve(
            Cli::try_parse_from(all).expect("flags parse"),
            toml::from_str(file).expect("toml parses"),
        )
    }

    #[test]
    fn sizes_take_the_documented_forms() {
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("512KiB"), Ok(512 << 10));
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("2 GiB"), Ok(2 << 30));
        for bad in [
            "",
            "MiB",
            "-1",
            "1.5MiB",
            "64MB",
            "64m",
            "99999999999999999999GiB",
        ] {
            assert!(parse_bytes(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn the_store_size_cap_comes_from_flag_then_file_then_default() {
        let config = standalone(&[], "").expect("valid");
        assert_eq!(config.store_max_bytes, DEFAULT_STORE_MAX_BYTES);
        let config = standalone(&[], "store-max-bytes = 2097152").expect("valid");
        assert_eq!(config.store_max_bytes, 2 << 20);
        let config = standalone(&[], "store-max-bytes = \"16MiB\"").expect("valid");
        assert_eq!(config.store_max_bytes, 16 << 20);
        let config =
            standalone(&["--store-max-bytes", "8MiB"], "store-max-bytes = 2097152").expect("valid");
        assert_eq!(config.store_max_bytes, 8 << 20);
        assert_eq!(config.snapshot()["storeMaxBytes"], 8 << 20);
    }

    #[test]
    fn a_tiny_store_size_cap_is_refused() {
        for (args, file) in [
            (&["--store-max-bytes", "4096"][..], ""),
            (&[][..], "store-max-bytes = 1000"),
            (&[][..], "store-max-bytes = \"1023KiB\""),
        ] {
            let error = standalone(args, file).expect_err("refused");
            assert!(
                matches!(
                    error,
                    ConfigError::Invalid {
                        setting: "FLEETLET_STORE_MAX_BYTES",
                        ..
                    }
                ),
                "{error}"
            );
        }
        let error = standalone(&[], "store-max-bytes = \"lots\"").expect_err("refused");
        assert!(
            error.to_string().contains("FLEETLET_STORE_MAX_BYTES"),
            "{error}"
        );
        assert!(Cli::try_parse_from(["fleetlet-agent", "--store-max-bytes", "64MB"]).is_err());
        assert_eq!(
            standalone(&["--store-max-bytes", "1MiB"], "")
                .expect("the minimum itself is fine")
                .store_max_bytes,
            MIN_STORE_MAX_BYTES
        );
    }

    #[cfg(feature = "fs-store")]
    #[test]
    fn the_default_store_size_cap_is_the_stores_own() {
        assert_eq!(
            DEFAULT_STORE_MAX_BYTES,
            crate::store::FsStoreOptions::default().max_bytes
        );
    }

    #[test]
    fn host_access_is_refused_by_default_and_allowed_by_flag_or_file() {
        let config = standalone(&[], "").expect("valid");
        assert_eq!(config.host_access, HostAccess::default());
        assert_eq!(
            config.reconciler_settings().container.host_access,
            HostAccess::default()
        );

        let config = standalone(
            &[
                "--allow-privileged",
                "--allow-host-network=true",
                "--allow-host-pid=yes",
                "--allowed-devices",
                "/dev/ttyUSB0:/dev/i2c-1",
            ],
            "",
        )
        .expect("valid");
        let device = |path: &str| AbsPath::try_from(path).expect("absolute");
        let expected = HostAccess {
            privileged: true,
            host_network: true,
            host_pid: true,
            devices: vec![device("/dev/ttyUSB0"), device("/dev/i2c-1")],
        };
        assert_eq!(config.host_access, expected);
        assert_eq!(config.reconciler_settings().container.host_access, expected);
        let snapshot = config.snapshot();
        assert_eq!(snapshot["allowPrivileged"], true);
        assert_eq!(snapshot["allowHostNetwork"], true);
        assert_eq!(snapshot["allowHostPid"], true);
        assert_eq!(
            snapshot["allowedDevices"],
            json!(["/dev/ttyUSB0", "/dev/i2c-1"])
        );

        // The file allows, a flag set to false takes it back.
        let file =
            "allow-privileged = true\nallow-host-pid = true\nallowed-devices = [\"/dev/video0\"]\n";
        let config = standalone(&["--allow-privileged=false"], file).expect("valid");
        assert!(!config.host_access.privileged);
        assert!(config.host_access.host_pid);
        assert!(!config.host_access.host_network);
        assert_eq!(config.host_access.devices, [device("/dev/video0")]);
    }

    #[test]
    fn allowed_devices_must_be_plain_absolute_paths() {
        for bad in ["dev/ttyUSB0", "/dev/../sda", "/dev/tty/"] {
            let error = standalone(&["--allowed-devices", bad], "").expect_err(bad);
            assert!(
                error.to_string().contains("FLEETLET_ALLOWED_DEVICES"),
                "{error}"
            );
        }
        for bad in ["/dev/a:/dev/b", "/dev/a,rw", ""] {
            let file = format!("allowed-devices = [{bad:?}]");
            let error = standalone(&[], &file).expect_err(bad);
            assert!(
                error.to_string().contains("FLEETLET_ALLOWED_DEVICES"),
                "{error}"
            );
        }
        // An empty list is no device at all.
        let config = standalone(&[], "allowed-devices = []").expect("valid");
        assert!(config.host_access.devices.is_empty());
    }

    /// The environment is the process's: setting it here would race with the other tests, which
    /// parse flags (and so read the environment) at the same time. A child process of this test
    /// binary runs [`child_reads_the_environment`] with the variables set instead.
    #[test]
    fn the_new_settings_are_read_from_the_environment() {
        let output = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "config::tests::child_reads_the_environment",
                "--include-ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("FLEETLET_TEST_ENV_CHILD", "1")
            .env("FLEETLET_STORE_MAX_BYTES", "3MiB")
            .env("FLEETLET_ALLOW_PRIVILEGED", "true")
            .env("FLEETLET_ALLOW_HOST_NETWORK", "false")
            .env("FLEETLET_ALLOW_HOST_PID", "1")
            .env("FLEETLET_ALLOWED_DEVICES", "/dev/ttyUSB0:/dev/gpiochip0")
            .env("FLEETLET_METRICS_FILE", "/run/fleetlet/agent.prom")
            .output()
            .expect("child runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("1 passed"),
            "{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    #[test]
    #[ignore = "run with its environment by the_new_settings_are_read_from_the_environment"]
    fn child_reads_the_environment() {
        if std::env::var_os("FLEETLET_TEST_ENV_CHILD").is_none() {
            return;
        }
        let config = standalone(
            &[],
            "store-max-bytes = 2097152\nallow-host-network = true\n",
        )
        .expect("valid");
        assert_eq!(config.store_max_bytes, 3 << 20);
        assert!(config.host_access.privileged);
        assert!(!config.host_access.host_network);
        assert!(config.host_access.host_pid);
        assert_eq!(
            config.snapshot()["allowedDevices"],
            json!(["/dev/ttyUSB0", "/dev/gpiochip0"])
        );
        assert_eq!(
            config.metrics_file,
            Some(PathBuf::from("/run/fleetlet/agent.prom"))
        );
    }

    #[test]
    fn a_token_given_both_inline_and_as_a_file_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("token");
        std::fs::write(&file, "from-file\n").expect("written");
        let file = file.to_str().expect("utf-8 path");
        for (inline, file_flag) in [
            ("--token", "--token-file"),
            ("--bootstrap-token", "--bootstrap-token-file"),
        ] {
            let cli = Cli::try_parse_from([
                "fleetlet-agent",
                "--agent-id",
                "pi-1",
                "--manager-url",
                "http://m:7800",
                inline,
                "inline",
                file_flag,
                file,
            ])
            .expect("flags parse");
            let error = Config::resolve(cli, FileConfig::default()).expect_err("refused");
            assert!(error.to_string().contains("set only one of"), "{error}");
        }
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let cli = Cli::try_parse_from([
            "fleetlet-agent",
            "--agent-id",
            "pi-1",
            "--manager-url",
            "http://m:7800",
            "--token",
            "very-secret-token",
        ])
        .expect("flags parse");
        let config = Config::resolve(cli, FileConfig::default()).expect("valid");
        assert!(!format!("{config:?}").contains("very-secret-token"));
        assert!(!config.snapshot().to_string().contains("very-secret-token"));
    }

    #[test]
    fn a_manager_needs_an_id_and_a_token_and_roots_must_be_absolute() {
        let parse = |args: &[&str]| {
            let mut all = vec!["fleetlet-agent"];
            all.extend_from_slice(args);
            Config::resolve(
                Cli::try_parse_from(all).expect("flags parse"),
                FileConfig::default(),
            )
        };
        assert!(parse(&["--manager-url", "http://m", "--token", "t"]).is_err());
        // Without a token the agent looks for a kept one, or enrolls, when it starts.
        let enrolling = parse(&["--agent-id", "a", "--manager-url", "http://m"]).expect("valid");
        assert!(matches!(
            enrolling.source,
            Source::Manager {
                token: Credential::Enroll { bootstrap: None },
                ..
            }
        ));
        assert!(parse(&[]).is_err());
        assert!(parse(&["--manifest-file", "/m.json", "--file-roots", "/a:rel"]).is_err());
        assert!(parse(&["--manifest-file", "/m.json", "--watch-wait", "301s"]).is_err());
        let standalone =
            parse(&["--manifest-file", "/m.json", "--file-roots", "/a:/b"]).expect("valid");
        assert_eq!(standalone.file_roots.len(), 2);
        assert_eq!(standalone.agent_id, None);
    }
    #[test]
    fn the_metrics_file_is_off_by_default_and_must_be_a_prom_file() {
        assert_eq!(standalone(&[], "").expect("valid").metrics_file, None);
        let path = PathBuf::from("/var/lib/node_exporter/textfile_collector/fleetlet.prom");
        let config = standalone(
            &["--metrics-file", "/run/metrics/fleetlet.prom"],
            "metrics-file = \"/srv/x.prom\"",
        )
        .expect("valid");
        assert_eq!(
            config.metrics_file,
            Some(PathBuf::from("/run/metrics/fleetlet.prom"))
        );
        let file = format!("metrics-file = \"{}\"", path.display());
        let config = standalone(&[], &file).expect("valid");
        assert_eq!(config.metrics_file.as_ref(), Some(&path));
        assert_eq!(config.snapshot()["metricsFile"], path.display().to_string());
        for bad in [
            "/run/fleetlet.txt",
            "/run/metrics/",
            "/run/.prom",
            "fleetlet.prom.tmp",
        ] {
            let error = standalone(&["--metrics-file", bad], "").expect_err(bad);
            assert!(
                matches!(
                    error,
                    ConfigError::Invalid {
                        setting: "FLEETLET_METRICS_FILE",
                        ..
                    }
                ),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn trusted_keys_are_read_at_start_and_a_bad_key_file_stops_it() {
        use fleetlet_manifests::signature::SecretKey;
        let dir = tempfile::tempdir().expect("temp dir");
        let (a, b) = (dir.path().join("a.pub"), dir.path().join("b.pub"));
        let keys = [SecretKey::from_seed([1; 32]), SecretKey::from_seed([2; 32])];
        std::fs::write(&a, keys[0].public().to_file_text()).expect("write");
        std::fs::write(&b, keys[1].public().to_file_text()).expect("write");
        let both = format!("{}:{}", a.display(), b.display());
        let config = standalone(&["--trusted-keys", &both], "").expect("valid");
        assert_eq!(config.trusted_keys, [keys[0].public(), keys[1].public()]);
        assert_eq!(config.engine_settings().trusted_keys.len(), 2);
        assert_eq!(
            config.snapshot()["trustedKeyIds"][1],
            keys[1].public().key_id()
        );
        assert!(standalone(&[], "").expect("valid").trusted_keys.is_empty());

        let garbage = dir.path().join("garbage.pub");
        std::fs::write(&garbage, "not a key").expect("write");
        for bad in [garbage, dir.path().join("missing.pub")] {
            let path = bad.display().to_string();
            let error = standalone(&["--trusted-keys", &path], "").expect_err("refused");
            assert!(
                error.to_string().contains("FLEETLET_TRUSTED_KEYS"),
                "{error}"
            );
        }
    }
}
