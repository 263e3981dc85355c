//! `fleetlet apply --wait`: poll the agent's status, print a progress line whenever it changes,
//! and end when the agent has converged on the new generation, has applied it and is degraded
//! (the failing resources are named), or the timeout passes.

use std::time::{Duration, Instant};

use fleetlet_manifests::Phase;
use fleetlet_manifests::api::{FleetState, StatusView};
use reqwest::Method;

use super::CliError;
use super::client::{Client, segment};
use super::render::{failing_resources, render_status};

/// How often the status is read; a report arrives at most this much later on screen.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// How a wait ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Converged,
    /// The agent applied the generation and some resources failed.
    Failed,
    Waiting,
}

fn outcome(view: &StatusView, generation: u64) -> Outcome {
    let caught_up = view.summary.observed_generation == Some(generation);
    if caught_up && view.summary.converged {
        Outcome::Converged
    } else if caught_up && view.summary.state == FleetState::Degraded {
        Outcome::Failed
    } else {
        Outcome::Waiting
    }
}

/// One line of progress, e.g. `pi-1: progressing, observed 2 of 3, 1/2 ready, 0 failed`.
fn progress_line(view: &StatusView, generation: u64) -> String {
    let summary = &view.summary;
    let total: u32 = summary.counts.values().sum();
    let count = |phase| summary.counts.get(&phase).copied().unwrap_or(0);
    format!(
        "{}: {}, observed {} of {generation}, {}/{total} ready, {} failed",
        summary.agent_id,
        summary.state.as_str(),
        summary
            .observed_generation
            .map_or_else(|| "none".to_owned(), |g| g.to_string()),
        count(Phase::Ready),
        count(Phase::Failed) + count(Phase::Unsupported),
    )
}

/// Waits for `agent_id` to converge on `generation`; progress goes to stderr.
pub(super) async fn wait_for_convergence(
    client: &Client,
    agent_id: &str,
    generation: u64,
    timeout: Duration,
) -> Result<(), CliError> {
    let deadline = Instant::now() + timeout;
    let path = format!("/api/v1/agents/{}/status", segment(agent_id));
    let mut last_line = String::new();
    loop {
        let view: StatusView = client.call(Method::GET, &path, &[], None).await?;
        let line = progress_line(&view, generation);
        if line != last_line {
            eprintln!("{line}");
            last_line = line;
        }
        match outcome(&view, generation) {
            Outcome::Converged => {
                println!("{agent_id}: converged on generation {generation}");
                return Ok(());
            }
            Outcome::Failed => {
                eprint!("{}", render_status(&view));
                return Err(CliError::NotConverged(format!(
                    "{agent_id} applied generation {generation} but these resources failed:\n  {}",
                    failing_resources(&view).join("\n  ")
                )));
            }
            Outcome::Waiting => {}
        }
        if Instant::now() >= deadline {
            eprint!("{}", render_status(&view));
            let failing = failing_resources(&view);
            let detail = if failing.is_empty() {
                String::new()
            } else {
                format!("; failing:\n  {}", failing.join("\n  "))
            };
            return Err(CliError::NotConverged(format!(
                "{agent_id} did not converge on generation {generation} within {timeout:?}{detail}"
            )));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
