//! The one declaration of the agent's settings: each is written once below, with its
//! `FLEETLET_*` environment variable, its default and its help, and the `settings!` macro makes
//! from it the flags (`--help` shows the defaults), the TOML keys, the layering and [`DECLARED`],
//! against which a test checks the README's table.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, CommandFactory, FromArgMatches, Parser};

use super::ConfigError;
use super::parse::{ContainerRuntimeKind, FromToml, SystemdScope, parse_bytes, parse_duration};

/// One declared setting, as [`DECLARED`] lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Declared {
    /// The field, and with '-' for '_' the flag and the TOML key.
    pub name: &'static str,
    pub env: &'static str,
    /// The default, in the flag's syntax; none: absent unless given, or derived from another
    /// setting (see the help text).
    pub default: Option<&'static str>,
    /// False for the settings that only a flag or the environment can give.
    pub in_file: bool,
}

impl Declared {
    /// The flag without its dashes, which is also the TOML key.
    pub fn key(&self) -> String {
        self.name.replace('_', "-")
    }
}

/// Declares every setting once:
/// `/// help` `#[arg(more clap options)]` `file|flag name: Type [= "default"], env "NAME";`
/// (`file`: also a TOML key; `flag`: flag and environment only).
macro_rules! settings {
    (@in_file file) => { true };
    (@in_file flag) => { false };
    (@default) => { None };
    (@default $default:literal) => { Some($default) };
    (@value_type $ty:ty) => { Option<$ty> };
    (@value_type $ty:ty, $default:literal) => { $ty };
    (@value $value:expr, $env:literal) => { $value };
    (@value $value:expr, $env:literal, $default:literal) => {
        $value.ok_or(ConfigError::Invalid {
            setting: $env,
            message: "has no value, not even its default".to_owned(),
        })?
    };
    (@read $table:ident, $settings:ident, flag $name:ident $env:literal) => {};
    (@read $table:ident, $settings:ident, file $name:ident $env:literal) => {
        let key = stringify!($name).replace('_', "-");
        if let Some(value) = $table.remove(&key) {
            $settings.$name = Some(FromToml::from_toml(value).map_err(|message| {
                ConfigError::Invalid {
                    setting: $env,
                    message: format!("{key} in the config file: {message}"),
                }
            })?);
        }
    };
    ($(
        $(#[$attr:meta])*
        $place:ident $name:ident : $ty:ty $(= $default:literal)?, env $env:literal;
    )*) => {
        /// The settings one layer gives (flags and environment, the TOML file, or the
        /// defaults): `None` where the layer does not set it. Build it with
        /// [`Settings::from_args`], [`Settings::from_toml`] or [`Settings::defaults`], never
        /// with clap's own `parse`, which would mix the defaults into the flags.
        #[derive(Debug, Clone, Default, Parser)]
        #[command(
            name = "fleetlet-agent",
            version,
            about = "The fleetlet device agent: converges this device toward its manifest"
        )]
        pub struct Settings {
            $(
                $(#[$attr])*
                #[arg(long, env = $env $(, default_value = $default)?)]
                pub $name: Option<$ty>,
            )*
        }

        /// Every setting after layering: a plain value where a default exists.
        #[derive(Debug, Clone)]
        pub struct Values {
            $(pub $name: settings!(@value_type $ty $(, $default)?),)*
        }

        /// Every setting, in declaration order.
        pub const DECLARED: &[Declared] = &[$(
            Declared {
                name: stringify!($name),
                env: $env,
                default: settings!(@default $($default)?),
                in_file: settings!(@in_file $place),
            },
        )*];

        impl Settings {
            /// Parsed flags and environment: what they set (`given`) and the defaults of the
            /// rest, as two layers.
            pub fn split(matches: &ArgMatches) -> Result<(Settings, Settings), clap::Error> {
                let all = Settings::from_arg_matches(matches)?;
                let (mut given, mut defaults) = (Settings::default(), Settings::default());
                $(
                    if matches.value_source(stringify!($name)) == Some(ValueSource::DefaultValue) {
                        defaults.$name = all.$name;
                    } else {
                        given.$name = all.$name;
                    }
                )*
                Ok((given, defaults))
            }

            /// The settings this layer sets, in declaration order.
            #[cfg(test)]
            pub fn set_names(&self) -> Vec<&'static str> {
                let mut names = Vec::new();
                $(if self.$name.is_some() {
                    names.push(stringify!($name));
                })*
                names
            }

            /// Each setting from `self`, else from `lower`.
            pub fn or(self, lower: Settings) -> Settings {
                Settings { $($name: self.$name.or(lower.$name),)* }
            }

            /// The layered values; every declared default is in `self` when it comes last in
            /// an [`or`](Self::or) chain after [`Settings::defaults`].
            pub fn values(self) -> Result<Values, ConfigError> {
                Ok(Values { $($name: settings!(@value self.$name, $env $(, $default)?),)* })
            }

            /// The settings of a TOML file (kebab-case keys); a value of the wrong form is
            /// refused naming its setting, an unknown key naming the file.
            pub fn from_toml(path: &std::path::Path, text: &str) -> Result<Settings, ConfigError> {
                let parse_error = |message: String| ConfigError::ParseFile {
                    path: path.to_path_buf(),
                    message,
                };
                let mut table: toml::Table =
                    text.parse().map_err(|e: toml::de::Error| parse_error(e.to_string()))?;
                let mut settings = Settings::default();
                $(settings!(@read table, settings, $place $name $env);)*
                if let Some(key) = table.keys().next() {
                    let keys: Vec<String> =
                        DECLARED.iter().filter(|s| s.in_file).map(Declared::key).collect();
                    return Err(parse_error(format!(
                        "unknown key {key:?}, expected one of {}",
                        keys.join(", ")
                    )));
                }
                Ok(settings)
            }
        }
    };
}

impl Settings {
    /// What `args` (the program name first) and the process's environment set, without the
    /// defaults.
    pub fn from_args<I, T>(args: I) -> Result<Settings, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Settings::command().try_get_matches_from(args)?;
        Ok(Settings::split(&matches)?.0)
    }

    /// The declared defaults, whatever the environment holds.
    pub fn defaults() -> Result<Settings, clap::Error> {
        let matches = Settings::command()
            .mut_args(|arg| arg.env(None))
            .try_get_matches_from(["fleetlet-agent"])?;
        Ok(Settings::split(&matches)?.1)
    }

    /// The declared defaults as values. The declaration is the program's own, and a test parses
    /// it (`config::tests`), so a default that does not parse is a bug, not an input.
    pub fn default_values() -> Values {
        Settings::defaults()
            .map_err(|e| ConfigError::Invalid {
                setting: "defaults",
                message: e.to_string(),
            })
            .and_then(Settings::values)
            .expect("the declared defaults parse (checked by config::tests)")
    }
}

settings! {
    /// TOML file with any of the settings below (kebab-case keys); flags and environment win.
    flag config: PathBuf, env "FLEETLET_CONFIG";
    /// The identity of this device (1–63 of a-z, 0-9, '-', '_', '.'); needed with a manager.
    file agent_id: String, env "FLEETLET_AGENT_ID";
    /// Base URL of the manager, e.g. http://manager:7800.
    file manager_url: String, env "FLEETLET_MANAGER_URL";
    /// The agent's token. Prefer the environment or --token-file: flags are visible in `ps`.
    #[arg(hide_env_values = true)]
    flag token: String, env "FLEETLET_TOKEN";
    /// File holding the agent's token (surrounding whitespace is ignored).
    file token_file: PathBuf, env "FLEETLET_TOKEN_FILE";
    /// The fleet's bootstrap token: without a token, the agent enrolls itself with it once and
    /// keeps its own token in the state dir (mode 0600).
    #[arg(hide_env_values = true)]
    flag bootstrap_token: String, env "FLEETLET_BOOTSTRAP_TOKEN";
    /// File holding the bootstrap token.
    file bootstrap_token_file: PathBuf, env "FLEETLET_BOOTSTRAP_TOKEN_FILE";
    /// PEM file of the CA that signed the manager's certificate. With it, only that CA is
    /// trusted for an https manager URL; without it, the system's roots are.
    file ca_file: PathBuf, env "FLEETLET_CA_FILE";
    /// Directory of the agent's local state.
    file state_dir: PathBuf = "/var/lib/fleetlet", env "FLEETLET_STATE_DIR";
    /// Absolute directories, separated by ':', under which File resources may write. None by
    /// default: every File is refused.
    #[arg(value_delimiter = ':')]
    file file_roots: Vec<PathBuf>, env "FLEETLET_FILE_ROOTS";
    /// Directory under which SessionStorage resources live; by default `<state dir>/sessions`.
    file session_root: PathBuf, env "FLEETLET_SESSION_ROOT";
    /// Container runtime for Container resources.
    file container_runtime: ContainerRuntimeKind = "podman", env "FLEETLET_CONTAINER_RUNTIME";
    /// The container runtime's binary, when it is not `podman` or `docker` on PATH.
    file container_runtime_path: PathBuf, env "FLEETLET_CONTAINER_RUNTIME_PATH";
    /// Which systemd manager SystemdUnit resources go to.
    file systemd_scope: SystemdScope = "system", env "FLEETLET_SYSTEMD_SCOPE";
    /// Directory where SystemdUnit resources write their unit files; by default
    /// `/etc/systemd/system`, or `$XDG_CONFIG_HOME/systemd/user` (`~/.config/systemd/user`)
    /// with the user scope.
    file unit_dir: PathBuf, env "FLEETLET_UNIT_DIR";
    /// How often every resource is observed again and drift repaired (e.g. 10s, 500ms).
    #[arg(value_parser = parse_duration)]
    file resync_interval: Duration = "10s", env "FLEETLET_RESYNC_INTERVAL";
    /// How long one manifest long-poll waits at the manager (at most 300s). Each poll also
    /// tells the manager the agent is alive.
    #[arg(value_parser = parse_duration)]
    file watch_wait: Duration = "120s", env "FLEETLET_WATCH_WAIT";
    /// Heartbeat: a compact message (the last report's seq) sent this often; a full status goes
    /// out only when it changed or the manager lacks it.
    #[arg(value_parser = parse_duration)]
    file report_interval: Duration = "10m", env "FLEETLET_REPORT_INTERVAL";
    /// How many resources of one kind are reconciled at the same time.
    file concurrency: usize = "8", env "FLEETLET_CONCURRENCY";
    /// An apply or delete taking longer than this fails and is retried with backoff.
    #[arg(value_parser = parse_duration)]
    file apply_timeout: Duration = "120s", env "FLEETLET_APPLY_TIMEOUT";
    /// Standalone mode: take the desired state from this manifest file, with no manager.
    file manifest_file: PathBuf, env "FLEETLET_MANIFEST_FILE";
    /// Make one full pass, print the status JSON on stdout, exit 0 only if converged.
    #[arg(action = ArgAction::SetTrue)]
    flag once: bool = "false", env "FLEETLET_ONCE";
    /// Size cap of the filesystem store in the state dir: bytes, or with a KiB, MiB or GiB
    /// suffix; at least 1MiB. Only used when the agent is built with the `fs-store` feature;
    /// without it the setting is accepted and ignored.
    #[arg(value_parser = parse_bytes)]
    file store_max_bytes: u64 = "64MiB", env "FLEETLET_STORE_MAX_BYTES";
    /// Let Container resources run privileged (`privileged: true`), which hands them the whole
    /// device; `--allow-privileged` alone means true.
    #[arg(num_args = 0..=1, require_equals = true, default_missing_value = "true",
        value_parser = BoolishValueParser::new())]
    file allow_privileged: bool = "false", env "FLEETLET_ALLOW_PRIVILEGED";
    /// Let Container resources use the host's network namespace (`hostNetwork: true`).
    #[arg(num_args = 0..=1, require_equals = true, default_missing_value = "true",
        value_parser = BoolishValueParser::new())]
    file allow_host_network: bool = "false", env "FLEETLET_ALLOW_HOST_NETWORK";
    /// Let Container resources use the host's PID namespace (`hostPid: true`).
    #[arg(num_args = 0..=1, require_equals = true, default_missing_value = "true",
        value_parser = BoolishValueParser::new())]
    file allow_host_pid: bool = "false", env "FLEETLET_ALLOW_HOST_PID";
    /// Host devices, absolute paths separated by ':', that Container resources may be given
    /// (`devices`); matched exactly. None by default.
    #[arg(value_delimiter = ':')]
    file allowed_devices: Vec<PathBuf>, env "FLEETLET_ALLOWED_DEVICES";
    /// Public key files (from `fleetlet keygen`), separated by ':', whose signatures the agent
    /// trusts; more than one allows a key rotation. With any key set, an unsigned or mis-signed
    /// manifest is refused. None by default: unsigned manifests are accepted (for development).
    #[arg(value_delimiter = ':')]
    file trusted_keys: Vec<PathBuf>, env "FLEETLET_TRUSTED_KEYS";
    /// Write the agent's metrics to this `.prom` file, for node_exporter's textfile collector
    /// (e.g. /var/lib/node_exporter/textfile_collector/fleetlet.prom). Replaced atomically after
    /// a pass that changed something. None by default: no metrics, and nothing listens anyway.
    file metrics_file: PathBuf, env "FLEETLET_METRICS_FILE";
    /// Log filter in tracing's syntax (e.g. `info,fleetlet_agent=debug`); logs go to stderr.
    file log: String = "info", env "FLEETLET_LOG";
}
