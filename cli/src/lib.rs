//! The `fleetlet` command-line client: register agents, apply and diff manifests, read status,
//! history and events.
//!
//! It speaks only the REST API (never the database), with the wire types of
//! `fleetlet-manifests`. The manager and token come from `--url`/`--token`, `FLEETLET_URL` /
//! `FLEETLET_TOKEN`, or a TOML config file (see `client.rs`). The commands live in
//! `commands.rs`, the manifest reading and diffing in `manifest_file.rs`, `apply --wait` in
//! `wait.rs`, every table in `render.rs`, and every write to stdout or stderr in `output.rs` (a
//! reader that goes away ends a command quietly, never with a panic).
//!
//! Invariant: this crate does not depend on `fleetlet-manager`, so the `fleetlet` binary links
//! no server, no database driver and not the manager's allocator (checked by this crate's
//! `tests/dependencies.rs`).

mod client;
mod commands;
mod manifest_file;
pub mod output;
mod render;
mod signing;
mod wait;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use reqwest::StatusCode;

pub use render::{render_fleet, render_status};

/// fleetlet: the control plane's command-line client.
#[derive(Debug, Parser)]
#[command(name = "fleetlet", version, about)]
pub struct Cli {
    /// The manager's base URL [default: the config file's `url`, else http://127.0.0.1:7800].
    #[arg(long, env = "FLEETLET_URL", global = true)]
    pub url: Option<String>,
    /// Bearer token (admin for writes, admin or reader for reads) [default: the config file's
    /// `token` or `token-file`].
    #[arg(long, env = "FLEETLET_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// A TOML file with `url` and `token` or `token-file` [default:
    /// $XDG_CONFIG_HOME/fleetlet/config.toml when it exists].
    #[arg(long, env = "FLEETLET_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// PEM file of the CA that signed the manager's certificate; with it, only that CA is
    /// trusted for https URLs [default: the config file's `ca-file`, else the system's roots].
    #[arg(long, env = "FLEETLET_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage agents.
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
    },
    /// Store a manifest (YAML or JSON) as its agent's next generation.
    Apply {
        /// The manifest file (`-` for stdin).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Show progress until the agent has converged on the new generation; exit non-zero
        /// with the failing resources if it does not, at once if the agent rolled it back.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits (e.g. 120s, 5m).
        #[arg(long, default_value = "120s", value_parser = parse_duration)]
        timeout: Duration,
        /// Sign the manifest with this private key (from `fleetlet keygen`) before storing it;
        /// agents with trusted keys refuse unsigned manifests.
        #[arg(long, env = "FLEETLET_SIGN_KEY")]
        sign_key: Option<PathBuf>,
    },
    /// Create an ed25519 key pair for signing manifests: `fleetlet-signing.key` (private, mode
    /// 0600, stays with the operator) and `fleetlet-signing.pub` (for the agents'
    /// FLEETLET_TRUSTED_KEYS). Existing files are never overwritten.
    Keygen {
        /// The directory to write both files into.
        #[arg(long)]
        out: PathBuf,
    },
    /// Show what applying a manifest would change, by resource id, with each changed field's
    /// old and new value (long text cut around the change, base64 content as size and digest).
    Diff {
        /// The manifest file (`-` for stdin).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Exit with status 1 when there are changes (like `git diff --exit-code`).
        #[arg(long)]
        exit_code: bool,
    },
    /// Read from the manager.
    Get {
        #[command(subcommand)]
        command: GetCommand,
    },
    /// An agent's manifest generations, newest first.
    History {
        agent_id: String,
        /// At most this many generations.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// An agent's event log, oldest first.
    Events {
        agent_id: String,
        /// Keep printing new events as they arrive (until interrupted).
        #[arg(long)]
        follow: bool,
        /// Only events with a seq above this.
        #[arg(long, default_value_t = 0)]
        after_seq: u64,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = EventsOutput::Table)]
        output: EventsOutput,
    },
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Register an agent and print its token (shown this once).
    Add {
        agent_id: String,
        /// A label as key=value; repeat for more.
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
    },
    /// The fleet list (same as `get agents`).
    List(FleetFilter),
    /// Decommission an agent: its token stops working.
    Rm { agent_id: String },
    /// Issue a new token for an agent and print it; the old one stops working.
    RotateToken { agent_id: String },
}

/// The filters and output of the fleet list.
#[derive(Debug, clap::Args)]
pub struct FleetFilter {
    /// Only agents in this state.
    #[arg(long, value_enum)]
    pub state: Option<StateFilter>,
    /// Only agents with this label (key=value); repeat for more, all must match.
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Subcommand)]
pub enum GetCommand {
    /// One agent's status and summary.
    Status {
        agent_id: String,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// The fleet list.
    Agents(FleetFilter),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

/// Events print as a table or as one JSON object per line (easy to pipe while following).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EventsOutput {
    Table,
    Jsonl,
}

/// The fleet states, as the API spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StateFilter {
    Converged,
    Progressing,
    Degraded,
    /// The agent went back to its last known-good generation (spelled as the API does).
    #[value(name = "rolledBack", alias = "rolled-back")]
    RolledBack,
    Stale,
    Unknown,
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{text:?} is not key=value"))
}

/// A duration such as `30s`, `500ms`, `5m` or `1h` (a bare number is seconds); zero is refused.
/// The same spelling as the manager's `--report-interval`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s or 500ms"))?;
    let duration = match unit {
        "ms" => Duration::from_millis(value),
        "s" | "" => Duration::from_secs(value),
        "m" => Duration::from_secs(value.saturating_mul(60)),
        "h" => Duration::from_secs(value.saturating_mul(3600)),
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?} (use ms, s, m or h)"
            ));
        }
    };
    if duration.is_zero() {
        return Err("the duration must be above zero".to_owned());
    }
    Ok(duration)
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot reach the manager: {0}")]
    Http(#[from] reqwest::Error),
    #[error("the manager answered {status}: {message}")]
    Api { status: StatusCode, message: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid manifest:\n{details}")]
    InvalidManifest { path: PathBuf, details: String },
    #[error("signing key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("config file {path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("the CA file {path} holds no usable PEM certificate: {message}")]
    CaFile { path: PathBuf, message: String },
    #[error("no token: set FLEETLET_TOKEN, pass --token, or put `token` in a config file")]
    NoToken,
    #[error("cannot print the result: {0}")]
    Print(String),
    /// The reader of stdout went away (`| head -1`): nothing more to print or say.
    #[error("the output was closed")]
    OutputClosed,
    #[error("{0}")]
    NotConverged(String),
    /// `diff --exit-code` found changes; nothing more to say.
    #[error("there are changes")]
    Changes,
}

impl CliError {
    /// The process exit status: 1 for "changes found" and failures alike (as `git diff
    /// --exit-code` does), except that a usage or config problem is 2 and a closed output 141.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Config { .. } | CliError::CaFile { .. } | CliError::NoToken => 2,
            CliError::OutputClosed => output::OUTPUT_CLOSED_STATUS,
            _ => 1,
        }
    }
}

/// Runs one command, printing its result to stdout (progress goes to stderr).
pub async fn run(cli: Cli) -> Result<(), CliError> {
    if let Command::Completions { shell } = cli.command {
        let mut command = <Cli as clap::CommandFactory>::command();
        // Generated into memory: clap_complete panics when its own write fails.
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut command, "fleetlet", &mut script);
        return output::print(&String::from_utf8_lossy(&script));
    }
    if let Command::Keygen { out } = &cli.command {
        let key_id = signing::keygen(out)?;
        return output::print_line(&format!(
            "key {key_id}: {} (private, keep it with the operator) and {} (for agents)",
            out.join(signing::SECRET_KEY_FILE).display(),
            out.join(signing::PUBLIC_KEY_FILE).display()
        ));
    }
    let client = client::Client::from_settings(cli.url, cli.token, cli.config, cli.ca_file)?;
    commands::dispatch(&client, cli.command).await
}

#[cfg(test)]
mod tests;
