//! The `fleetlet` command-line client: register and label agents, apply and diff manifests and
//! fleets, read status, history and events, watch and steer fleet rollouts.
//!
//! It speaks only the REST API (never the database), with the wire types of
//! `fleetlet-manifests`. The manager and token come from `--url`/`--token`, `FLEETLET_URL` /
//! `FLEETLET_TOKEN`, or a TOML config file (see `client.rs`). The commands live in
//! `commands.rs` (fleets, rollouts and labels in `commands/`), the manifest reading and diffing
//! in `manifest_file.rs`, `apply --wait` in `wait.rs`, every table in `render.rs` (fleets in
//! `render/fleets.rs`), the redrawn or plain display of `rollout status --watch` in `screen.rs`,
//! and every write to stdout or stderr in `output.rs` (a reader that goes away ends a command
//! quietly, never with a panic).
//!
//! Invariant: this crate does not depend on `fleetlet-manager`, so the `fleetlet` binary links
//! no server, no database driver and not the manager's allocator (checked by this crate's
//! `tests/dependencies.rs`).

mod client;
mod commands;
mod manifest_file;
pub mod output;
mod render;
mod screen;
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
    /// Change an agent's labels: `key=value` sets one, `key-` removes it; fleet selection follows
    /// at once.
    Label {
        agent_id: String,
        /// `key=value` or `key-`; at least one.
        #[arg(required = true, value_parser = commands::parse_label_change)]
        changes: Vec<commands::LabelChange>,
    },
    /// Fleets: one template rendered into the manifest of every device a selector picks.
    Fleet {
        #[command(subcommand)]
        command: FleetCommand,
    },
    /// A fleet's staged rollout: watch it and act on it.
    Rollout {
        #[command(subcommand)]
        command: RolloutCommand,
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

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Create or change a fleet (YAML or JSON), checked here first with the JSON path of every
    /// problem; prints the revision it now has.
    Apply {
        /// The fleet file (`-` for stdin).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Sign the fleet (name, template, parameter declarations) with this private key (from
        /// `fleetlet keygen`); agents with trusted keys then check every rendered manifest.
        #[arg(long, env = "FLEETLET_SIGN_KEY")]
        sign_key: Option<PathBuf>,
    },
    /// One fleet with its rollout.
    Get {
        name: String,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Every fleet with its rollout phase.
    List {
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// The devices a fleet selects, with the revision rendered for each and its rollout state.
    Devices {
        name: String,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// A fleet's revisions, newest first.
    History {
        name: String,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// What applying a fleet file would do: how many devices it selects, which would get a new
    /// manifest, which would be released, and which cannot be rendered (and why).
    Diff {
        /// The fleet file (`-` for stdin).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Exit with status 1 when some device would change.
        #[arg(long)]
        exit_code: bool,
    },
    /// Stop managing the fleet; its devices keep the manifests they have.
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// The rollout's phase and each batch's devices, succeeded, failed and pending counts.
    Status {
        name: String,
        /// Keep showing progress (redrawn on a terminal, one line per change when piped) until
        /// the rollout completes (exit 0), pauses (3), is aborted (4), waits for approval (5)
        /// or is rolled back (6).
        #[arg(long)]
        watch: bool,
        /// With --watch, give up after this long (exit 1), e.g. 10m.
        #[arg(long, value_parser = parse_duration, requires = "watch")]
        timeout: Option<Duration>,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table, conflicts_with = "watch")]
        output: Output,
    },
    /// Stop the rollout where it is: no further device is touched.
    Pause { name: String },
    /// Continue a paused rollout from where it stopped.
    Resume { name: String },
    /// Let a rollout that waits for approval start its next batch.
    Approve { name: String },
    /// End the rollout: devices keep what they have, no further device is touched.
    Abort { name: String },
    /// Send the previous revision at once to every device that received the current one.
    Rollback { name: String },
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
/// The same spelling as the manager's `--report-interval`: the wire crate's one duration parser.
use fleetlet_manifests::duration::parse_positive as parse_duration;

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
    #[error("{path} is not a valid fleet:\n{details}")]
    InvalidFleet { path: PathBuf, details: String },
    /// A command line that clap accepts but that does not make sense (a label changed twice).
    #[error("{0}")]
    Usage(String),
    /// `rollout status --watch` ended because the rollout stopped short of completing.
    #[error("{message}")]
    RolloutStopped { end: RolloutEnd, message: String },
}

/// Why `rollout status --watch` ended before the rollout completed; each has its exit status,
/// so a script can tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutEnd {
    /// Paused by itself (a batch under its success threshold) or by an operator: status 3.
    Paused,
    /// Aborted: status 4.
    Aborted,
    /// Waiting for `rollout approve` before its next batch: status 5.
    WaitingApproval,
    /// Rolled back to the previous revision: status 6.
    RolledBack,
}

impl RolloutEnd {
    /// The exit status of a watch that ended this way.
    pub fn exit_code(self) -> u8 {
        match self {
            RolloutEnd::Paused => 3,
            RolloutEnd::Aborted => 4,
            RolloutEnd::WaitingApproval => 5,
            RolloutEnd::RolledBack => 6,
        }
    }
}

impl CliError {
    /// The process exit status: 1 for "changes found" and failures alike (as `git diff
    /// --exit-code` does), except that a usage or config problem is 2 and a closed output 141.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Config { .. }
            | CliError::CaFile { .. }
            | CliError::NoToken
            | CliError::Usage(_) => 2,
            CliError::RolloutStopped { end, .. } => end.exit_code(),
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
