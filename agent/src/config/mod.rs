//! The agent's configuration: every setting is declared once, in `settings.rs`, as a flag with a
//! `FLEETLET_*` environment variable (docs/reference.md §5), a key of an optional TOML file and a default.
//!
//! Precedence is flag or environment, then the file, then the default, so that a unit file can
//! ship a TOML and an operator can still override one value with an environment variable. The
//! layers are [`Settings`] values merged by [`Settings::or`]; [`Config::validate`] holds every
//! rule that looks at more than one setting and makes the typed [`Config`].

mod parse;
mod settings;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

use clap::CommandFactory;
use fleetlet_manifests::AgentId;
use fleetlet_manifests::signature::PublicKey;

use crate::backoff::Backoff;
use crate::engine::{Clock, EngineSettings};
use crate::reconcile::systemd_unit::ManagerScope;
use crate::reconcile::{ContainerSettings, HostAccess, ReconcilerSettings, SystemdSettings};
use crate::runtime::RuntimeFlavor;

pub use parse::{ContainerRuntimeKind, SystemdScope, parse_bytes, parse_duration};
pub use settings::{DECLARED, Declared, Settings, Values};

use parse::{
    allowed_devices, canonical_or_given, default_unit_dir, invalid, metrics_file, read_secret,
    read_trusted_keys,
};

/// The manager answers a long-poll after at most this long (docs/reference.md §3).
pub const MAX_WATCH_WAIT: Duration = Duration::from_secs(300);
/// A full status is sent at least this often even when nothing changed.
pub const FULL_STATUS_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// Below this the store's logs would rotate after a handful of events.
pub const MIN_STORE_MAX_BYTES: u64 = MIB;
const MIB: u64 = 1024 * 1024;
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
    /// The log filter (FLEETLET_LOG), in tracing's syntax.
    pub log: String,
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

impl Config {
    /// Parses the process's flags and environment, then the TOML file they name. Bad flags
    /// print clap's usage message and exit, as `--help` and `--version` do.
    pub fn load() -> Result<Self, ConfigError> {
        let matches = Settings::command().get_matches();
        let (given, defaults) = Settings::split(&matches).unwrap_or_else(|e| e.exit());
        Self::from_layers(given, defaults)
    }

    /// The flags and environment (`given`), over the file they name, over `defaults`.
    pub fn from_layers(given: Settings, defaults: Settings) -> Result<Self, ConfigError> {
        let file = match &given.config {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
                        path: path.clone(),
                        source,
                    })?;
                Settings::from_toml(path, &text)?
            }
            None => Settings::default(),
        };
        Self::layered(given, file, defaults)
    }

    /// The flags and environment over the file over the declared defaults, checked.
    pub fn resolve(flags: Settings, file: Settings) -> Result<Self, ConfigError> {
        let defaults = Settings::defaults().map_err(|e| invalid("defaults", e.to_string()))?;
        Self::layered(flags, file, defaults)
    }

    fn layered(
        given: Settings,
        mut file: Settings,
        defaults: Settings,
    ) -> Result<Self, ConfigError> {
        // A secret given inline by a flag or the environment wins over a secret file named in
        // the TOML file; both inline and as a file in the flags and environment is refused.
        if given.token.is_some() {
            file.token_file = None;
        }
        if given.bootstrap_token.is_some() {
            file.bootstrap_token_file = None;
        }
        Self::validate(given.or(file).or(defaults).values()?)
    }

    /// Every check of the layered values, and the typed configuration made of them.
    pub fn validate(values: Values) -> Result<Self, ConfigError> {
        let agent_id = values
            .agent_id
            .map(|id| AgentId::try_from(id).map_err(|e| invalid("FLEETLET_AGENT_ID", e.0)))
            .transpose()?;
        let source = match (values.manifest_file, values.manager_url) {
            (Some(path), _) => Source::ManifestFile(path),
            (None, Some(url)) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(invalid(
                        "FLEETLET_MANAGER_URL",
                        format!("{url:?} must start with http:// or https://"),
                    ));
                }
                let token = read_secret("FLEETLET_TOKEN", values.token, values.token_file)?;
                let bootstrap = read_secret(
                    "FLEETLET_BOOTSTRAP_TOKEN",
                    values.bootstrap_token,
                    values.bootstrap_token_file,
                )?;
                Source::Manager {
                    url: url.trim_end_matches('/').to_owned(),
                    // Whether a kept token exists is decided when the agent starts: the state
                    // dir may not even exist yet.
                    token: match token {
                        Some(token) => Credential::Token(token),
                        None => Credential::Enroll { bootstrap },
                    },
                    ca_file: values.ca_file,
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

        let file_roots = values.file_roots.unwrap_or_default();
        if let Some(relative) = file_roots.iter().find(|root| !root.is_absolute()) {
            return Err(invalid(
                "FLEETLET_FILE_ROOTS",
                format!("{} is not an absolute directory", relative.display()),
            ));
        }
        if values.watch_wait > MAX_WATCH_WAIT {
            return Err(invalid("FLEETLET_WATCH_WAIT", "must be at most 300s"));
        }
        for (setting, value) in [
            ("FLEETLET_RESYNC_INTERVAL", values.resync_interval),
            ("FLEETLET_REPORT_INTERVAL", values.report_interval),
            ("FLEETLET_APPLY_TIMEOUT", values.apply_timeout),
        ] {
            if value.is_zero() {
                return Err(invalid(setting, "must be more than zero"));
            }
        }
        if values.concurrency == 0 {
            return Err(invalid("FLEETLET_CONCURRENCY", "must be at least 1"));
        }
        if values.store_max_bytes < MIN_STORE_MAX_BYTES {
            return Err(invalid(
                "FLEETLET_STORE_MAX_BYTES",
                format!(
                    "{} bytes is too small: must be at least 1MiB (1048576)",
                    values.store_max_bytes
                ),
            ));
        }
        let host_access = HostAccess {
            privileged: values.allow_privileged,
            host_network: values.allow_host_network,
            host_pid: values.allow_host_pid,
            devices: allowed_devices(values.allowed_devices)?,
        };
        let trusted_keys = read_trusted_keys(values.trusted_keys)?;
        let metrics_file = metrics_file(values.metrics_file)?;
        let state_dir = values.state_dir;
        Ok(Config {
            agent_id,
            source,
            once: values.once,
            session_root: values
                .session_root
                .unwrap_or_else(|| state_dir.join("sessions")),
            state_dir,
            file_roots,
            container_runtime: values.container_runtime,
            container_runtime_path: values.container_runtime_path,
            systemd_scope: values.systemd_scope,
            unit_dir: values
                .unit_dir
                .unwrap_or_else(|| default_unit_dir(values.systemd_scope)),
            resync_interval: values.resync_interval,
            watch_wait: values.watch_wait,
            report_interval: values.report_interval,
            concurrency: values.concurrency,
            apply_timeout: values.apply_timeout,
            store_max_bytes: values.store_max_bytes,
            host_access,
            trusted_keys,
            metrics_file,
            log: values.log,
        })
    }

    pub fn engine_settings(&self) -> EngineSettings {
        engine_settings(
            self.concurrency,
            self.apply_timeout,
            self.resync_interval,
            self.trusted_keys.clone(),
        )
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

/// The engine's settings at the declared defaults, as [`Config::engine_settings`] makes them.
impl Default for EngineSettings {
    fn default() -> Self {
        let values = Settings::default_values();
        engine_settings(
            values.concurrency,
            values.apply_timeout,
            values.resync_interval,
            Vec::new(),
        )
    }
}

fn engine_settings(
    concurrency: usize,
    apply_timeout: Duration,
    resync_interval: Duration,
    trusted_keys: Vec<PublicKey>,
) -> EngineSettings {
    EngineSettings {
        concurrency,
        apply_timeout,
        backoff: Backoff::RESOURCE,
        resync_interval,
        report_interval: FULL_STATUS_INTERVAL,
        trusted_keys,
        clock: Clock::system(),
    }
}
