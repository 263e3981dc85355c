//! The `fleetlet` command-line client: register agents, apply manifests, read status.
//!
//! It speaks only the REST API (never the database), with the wire types of
//! `fleetlet-manifests`, and reads `FLEETLET_URL` and `FLEETLET_TOKEN`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use fleetlet_manifests::api::{AgentSummary, AgentToken, ErrorBody, FleetState, Page, StatusView};
use fleetlet_manifests::{AgentManifest, Phase};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

/// fleetlet: the control plane's command-line client.
#[derive(Debug, Parser)]
#[command(name = "fleetlet", version, about)]
pub struct Cli {
    /// The manager's base URL.
    #[arg(long, env = "FLEETLET_URL", default_value = "http://127.0.0.1:7800")]
    pub url: String,
    /// Bearer token (admin for writes, admin or reader for reads).
    #[arg(long, env = "FLEETLET_TOKEN", hide_env_values = true)]
    pub token: String,
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
    /// Store a manifest (JSON) as its agent's next generation.
    Apply {
        /// The manifest file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Wait until the agent has converged on the new generation.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits (e.g. 120s, 5m).
        #[arg(long, default_value = "120s", value_parser = crate::config::parse_duration)]
        timeout: Duration,
    },
    /// Read from the manager.
    Get {
        #[command(subcommand)]
        command: GetCommand,
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
    Agents {
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Json,
    Table,
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{text:?} is not key=value"))
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
    #[error("{0}")]
    NotConverged(String),
}

/// A thin client over the manager's API.
#[derive(Debug)]
struct Client {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Client {
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T, CliError> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url.trim_end_matches('/')))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await?;
        let status = response.status();
        if status.is_success() {
            return Ok(response.json().await?);
        }
        let message = match response.json::<ErrorBody>().await {
            Ok(body) => {
                let mut message = body.error.message;
                for violation in body.error.violations {
                    message.push_str(&format!("\n  {violation}"));
                }
                message
            }
            Err(_) => "no error details".to_owned(),
        };
        Err(CliError::Api { status, message })
    }
}

/// Runs one command, printing its result to stdout.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    let client = Client {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?,
        url: cli.url,
        token: cli.token,
    };
    match cli.command {
        Command::Agent {
            command: AgentCommand::Add { agent_id, labels },
        } => {
            let labels: serde_json::Map<String, serde_json::Value> = labels
                .into_iter()
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect();
            let body = serde_json::json!({"agentId": agent_id, "labels": labels});
            let token: AgentToken = client
                .call(Method::POST, "/api/v1/agents", Some(&body))
                .await?;
            println!("{}", token.token);
        }
        Command::Apply {
            file,
            wait,
            timeout,
        } => apply(&client, file, wait, timeout).await?,
        Command::Get {
            command: GetCommand::Status { agent_id, output },
        } => {
            let view: StatusView = client
                .call(
                    Method::GET,
                    &format!("/api/v1/agents/{agent_id}/status"),
                    None,
                )
                .await?;
            match output {
                Output::Json => print_json(&view),
                Output::Table => print!("{}", render_status(&view)),
            }
        }
        Command::Get {
            command: GetCommand::Agents { output },
        } => {
            let mut rows = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let path = match &cursor {
                    Some(c) => format!("/api/v1/agents?limit=500&cursor={c}"),
                    None => "/api/v1/agents?limit=500".to_owned(),
                };
                let page: Page<AgentSummary> = client.call(Method::GET, &path, None).await?;
                rows.extend(page.items);
                match page.next_cursor {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
            match output {
                Output::Json => print_json(&rows),
                Output::Table => print!("{}", render_fleet(&rows)),
            }
        }
    }
    Ok(())
}

fn print_json<T: serde::Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(error) => eprintln!("cannot print JSON: {error}"),
    }
}

async fn apply(
    client: &Client,
    file: PathBuf,
    wait: bool,
    timeout: Duration,
) -> Result<(), CliError> {
    let bytes = std::fs::read(&file).map_err(|source| CliError::Read {
        path: file.clone(),
        source,
    })?;
    // Validating here gives every violation at once, without a round trip.
    let manifest = AgentManifest::from_slice(&bytes).map_err(|error| {
        let details = match error {
            fleetlet_manifests::ManifestError::Malformed(text) => text,
            fleetlet_manifests::ManifestError::Invalid(violations) => violations
                .iter()
                .map(|v| format!("  {v}"))
                .collect::<Vec<_>>()
                .join("\n"),
        };
        CliError::InvalidManifest {
            path: file.clone(),
            details,
        }
    })?;
    let agent_id = manifest.agent_id.clone();
    let mut body = serde_json::to_value(&manifest).map_err(|e| CliError::InvalidManifest {
        path: file.clone(),
        details: e.to_string(),
    })?;
    if let Some(object) = body.as_object_mut() {
        object.remove("generation");
    }
    let stored: AgentManifest = client
        .call(
            Method::PUT,
            &format!("/api/v1/agents/{agent_id}/manifest"),
            Some(&body),
        )
        .await?;
    let generation = stored.generation.unwrap_or(0);
    println!("{agent_id}: generation {generation}");
    if !wait {
        return Ok(());
    }
    let deadline = Instant::now() + timeout;
    loop {
        let view: StatusView = client
            .call(
                Method::GET,
                &format!("/api/v1/agents/{agent_id}/status"),
                None,
            )
            .await?;
        let caught_up = view.summary.observed_generation == Some(generation);
        if caught_up && view.summary.converged {
            println!("{agent_id}: converged on generation {generation}");
            return Ok(());
        }
        if caught_up && view.summary.state == FleetState::Degraded {
            eprint!("{}", render_status(&view));
            return Err(CliError::NotConverged(format!(
                "{agent_id} applied generation {generation} but is degraded"
            )));
        }
        if Instant::now() >= deadline {
            eprint!("{}", render_status(&view));
            return Err(CliError::NotConverged(format!(
                "{agent_id} did not converge on generation {generation} within {timeout:?}"
            )));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The status view as a short header and one row per resource.
pub fn render_status(view: &StatusView) -> String {
    let summary = &view.summary;
    let mut out = format!(
        "agent {}  state {}  desired {}  observed {}\n",
        summary.agent_id,
        summary.state.as_str(),
        summary.desired_generation,
        summary
            .observed_generation
            .map_or_else(|| "-".to_owned(), |g| g.to_string()),
    );
    let mut rows = vec![[
        "RESOURCE".to_owned(),
        "KIND".to_owned(),
        "PHASE".to_owned(),
        "GEN".to_owned(),
        "REASON".to_owned(),
        "MESSAGE".to_owned(),
    ]];
    if let Some(status) = &view.status {
        for (id, resource) in &status.resources {
            rows.push([
                id.to_string(),
                resource.kind.clone(),
                resource.phase.as_str().to_owned(),
                resource.generation.to_string(),
                resource
                    .error
                    .as_ref()
                    .map_or_else(String::new, |e| e.reason.to_string()),
                resource
                    .error
                    .as_ref()
                    .map_or_else(String::new, |e| e.message.clone()),
            ]);
        }
    }
    out.push_str(&render_table(&rows));
    out
}

/// The fleet list as a table.
pub fn render_fleet(rows: &[AgentSummary]) -> String {
    let mut table = vec![[
        "AGENT".to_owned(),
        "STATE".to_owned(),
        "DESIRED".to_owned(),
        "OBSERVED".to_owned(),
        "READY".to_owned(),
        "LAST SEEN".to_owned(),
    ]];
    for row in rows {
        let total: u32 = row.counts.values().sum();
        let ready = row.counts.get(&Phase::Ready).copied().unwrap_or(0);
        table.push([
            row.agent_id.to_string(),
            row.state.as_str().to_owned(),
            row.desired_generation.to_string(),
            row.observed_generation
                .map_or_else(|| "-".to_owned(), |g| g.to_string()),
            format!("{ready}/{total}"),
            row.last_seen_at
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_else(|| "never".to_owned()),
        ]);
    }
    render_table(&table)
}

fn render_table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_their_columns() {
        let rows = [
            ["A".to_owned(), "LONG HEADER".to_owned()],
            ["value".to_owned(), "x".to_owned()],
        ];
        assert_eq!(render_table(&rows), "A      LONG HEADER\nvalue  x\n");
    }

    #[test]
    fn labels_parse_as_key_value() {
        assert_eq!(
            parse_label("site=north"),
            Ok(("site".into(), "north".into()))
        );
        assert!(parse_label("site").is_err());
    }
}
