//! Manager configuration: flags mirrored by `FLEETLET_*` environment variables.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;

/// The fleetlet manager: the control plane's REST API over PostgreSQL.
#[derive(Clone, Parser)]
#[command(name = "fleetlet-manager", version, about)]
pub struct Config {
    /// PostgreSQL URL. Required unless --dev is given.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Socket address to listen on (port 0 lets the OS choose).
    #[arg(long, env = "FLEETLET_LISTEN", default_value = "0.0.0.0:7800")]
    pub listen: SocketAddr,

    /// Bearer token of the admin role (control plane).
    #[arg(long, env = "FLEETLET_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// File holding the admin token (alternative to FLEETLET_ADMIN_TOKEN).
    #[arg(long, env = "FLEETLET_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Bearer token of the read-only reader role (dashboards). Without one, the role is disabled.
    #[arg(long, env = "FLEETLET_READER_TOKEN", hide_env_values = true)]
    pub reader_token: Option<String>,

    /// File holding the reader token (alternative to FLEETLET_READER_TOKEN).
    #[arg(long, env = "FLEETLET_READER_TOKEN_FILE")]
    pub reader_token_file: Option<PathBuf>,

    /// Bootstrap token that lets devices enroll themselves (POST /api/v1/enroll). Without one,
    /// enrollment is disabled.
    #[arg(long, env = "FLEETLET_BOOTSTRAP_TOKEN", hide_env_values = true)]
    pub bootstrap_token: Option<String>,

    /// File holding the bootstrap token (alternative to FLEETLET_BOOTSTRAP_TOKEN).
    #[arg(long, env = "FLEETLET_BOOTSTRAP_TOKEN_FILE")]
    pub bootstrap_token_file: Option<PathBuf>,

    /// How often agents make contact (a watch poll, a report or a heartbeat; e.g. 2m, 500ms): an
    /// agent is stale after three of these without any. Agents poll every 2 minutes by default.
    #[arg(long, env = "FLEETLET_REPORT_INTERVAL", default_value = "2m", value_parser = parse_duration)]
    pub report_interval: Duration,

    /// PEM certificate chain (leaf first) to serve HTTPS with; needs FLEETLET_TLS_KEY.
    /// Without both, the manager serves plain HTTP (put it behind a TLS-terminating proxy).
    #[arg(long, env = "FLEETLET_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of FLEETLET_TLS_CERT.
    #[arg(long, env = "FLEETLET_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// The longest a manifest long-poll may wait, in seconds (1-300; larger waitSeconds are 400).
    #[arg(long, env = "FLEETLET_MAX_WAIT_SECONDS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub max_wait_seconds: u64,

    /// Write the bound socket address to this file once listening (useful with port 0).
    #[arg(long, env = "FLEETLET_PORT_FILE")]
    pub port_file: Option<PathBuf>,

    /// Run on an in-memory store: nothing survives a restart. For development only.
    #[arg(long)]
    pub dev: bool,
}

// Tokens and the database URL are secrets, so the derived Debug would be a leak waiting to happen.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("tls_cert", &self.tls_cert)
            .field("report_interval", &self.report_interval)
            .field("dev", &self.dev)
            .finish_non_exhaustive()
    }
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "DATABASE_URL is not set; set it to a PostgreSQL URL, or pass --dev to run on an in-memory store"
    )]
    MissingDatabaseUrl,
    #[error("{role} token is required: set FLEETLET_{env}_TOKEN or FLEETLET_{env}_TOKEN_FILE")]
    MissingToken {
        role: &'static str,
        env: &'static str,
    },
    #[error("set only one of FLEETLET_{env}_TOKEN and FLEETLET_{env}_TOKEN_FILE")]
    TwoTokenSources { env: &'static str },
    #[error("cannot read the {role} token file {path}: {source}")]
    TokenFile {
        role: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the {role} token is empty")]
    EmptyToken { role: &'static str },
}

/// Which store the manager runs on.
#[derive(Clone)]
pub enum StoreChoice {
    Postgres { url: String },
    Memory,
}

impl std::fmt::Debug for StoreChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreChoice::Postgres { url } => f
                .debug_struct("Postgres")
                .field("url", &crate::redact::redact_database_url(url))
                .finish(),
            StoreChoice::Memory => f.write_str("Memory"),
        }
    }
}

/// The tokens of the configured roles, read from the environment or files.
#[derive(Clone)]
pub struct RoleTokens {
    pub admin: String,
    pub reader: Option<String>,
    pub bootstrap: Option<String>,
}

impl std::fmt::Debug for RoleTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RoleTokens(..)")
    }
}

impl Config {
    /// The store to use: `--dev` selects memory even when a DATABASE_URL is set.
    pub fn store_choice(&self) -> Result<StoreChoice, ConfigError> {
        if self.dev {
            return Ok(StoreChoice::Memory);
        }
        match &self.database_url {
            Some(url) if !url.trim().is_empty() => Ok(StoreChoice::Postgres { url: url.clone() }),
            _ => Err(ConfigError::MissingDatabaseUrl),
        }
    }

    /// Reads the role tokens; the admin token is required, the others enable their role.
    pub fn role_tokens(&self) -> Result<RoleTokens, ConfigError> {
        let admin = read_token(
            "admin",
            "ADMIN",
            self.admin_token.as_deref(),
            self.admin_token_file.as_deref(),
        )?
        .ok_or(ConfigError::MissingToken {
            role: "admin",
            env: "ADMIN",
        })?;
        let reader = read_token(
            "reader",
            "READER",
            self.reader_token.as_deref(),
            self.reader_token_file.as_deref(),
        )?;
        let bootstrap = read_token(
            "bootstrap",
            "BOOTSTRAP",
            self.bootstrap_token.as_deref(),
            self.bootstrap_token_file.as_deref(),
        )?;
        Ok(RoleTokens {
            admin,
            reader,
            bootstrap,
        })
    }
}

fn read_token(
    role: &'static str,
    env: &'static str,
    inline: Option<&str>,
    file: Option<&Path>,
) -> Result<Option<String>, ConfigError> {
    let token = match (inline, file) {
        (Some(_), Some(_)) => return Err(ConfigError::TwoTokenSources { env }),
        (Some(token), None) => token.to_owned(),
        (None, Some(path)) => {
            std::fs::read_to_string(path).map_err(|source| ConfigError::TokenFile {
                role,
                path: path.to_owned(),
                source,
            })?
        }
        (None, None) => return Ok(None),
    };
    // Files usually end in a newline that is not part of the token.
    let token = token.trim();
    if token.is_empty() {
        return Err(ConfigError::EmptyToken { role });
    }
    Ok(Some(token.to_owned()))
}

/// Parses a duration such as `30s`, `500ms`, `2m` or `1h` (a bare number is seconds; zero is
/// refused): the wire crate's one duration parser, in the spelling the CLI shares.
pub use fleetlet_manifests::duration::parse_positive as parse_duration;

#[cfg(test)]
mod tests;
