//! `fleetlet apply --wait`: poll the agent's status, print a progress line whenever it changes,
//! and end when the agent has converged on the new generation, has applied it and is degraded
//! (the failing resources are named), has rolled it back (the condition's message is shown), or
//! the timeout passes. A generation with a rollout policy may fail and recover until its deadline,
//! so it only counts as failed once the agent reports that the deadline passed.

use std::time::{Duration, Instant};

use fleetlet_manifests::api::{FleetState, StatusView};
use fleetlet_manifests::{ConditionStatus, Phase};
use reqwest::Method;

use super::CliError;
use super::client::{Client, segment};
use super::output::{note, note_line, print_line};
use super::render::{failing_resources, render_status, rollback_condition};

/// How often the status is read; a report arrives at most this much later on screen.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// How a wait ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Converged,
    /// The agent applied the generation and some resources failed.
    Failed,
    /// The generation missed its rollout deadline and the agent went back to an older one; the
    /// condition's message names both.
    RolledBack(String),
    Waiting,
}

/// How the wait stands; `rollout` says whether the generation has a rollout policy.
fn outcome(view: &StatusView, generation: u64, rollout: bool) -> Outcome {
    let caught_up = view.summary.observed_generation == Some(generation);
    // A rollback of an older generation, reported before the agent picked up this one, is not
    // this generation's failure: only a condition about this generation (or a newer one) counts.
    let deadline = view
        .status
        .as_ref()
        .filter(|status| status.manifest_generation >= generation)
        .and_then(rollback_condition);
    if view.summary.state == FleetState::RolledBack
        && let Some(condition) = deadline
    {
        return Outcome::RolledBack(condition.message.clone());
    }
    // Under a rollout policy the agent keeps retrying a failing resource until the deadline;
    // failed means the deadline passed (RolledBack False: held, or nothing to roll back to).
    let final_failure = !rollout || deadline.is_some_and(|c| c.status == ConditionStatus::False);
    if caught_up && view.summary.converged {
        Outcome::Converged
    } else if caught_up && view.summary.state == FleetState::Degraded && final_failure {
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
    rollout: bool,
    timeout: Duration,
) -> Result<(), CliError> {
    let deadline = Instant::now() + timeout;
    let path = format!("/api/v1/agents/{}/status", segment(agent_id));
    let mut last_line = String::new();
    loop {
        let view: StatusView = client.call(Method::GET, &path, &[], None).await?;
        let line = progress_line(&view, generation);
        if line != last_line {
            note_line(&line);
            last_line = line;
        }
        match outcome(&view, generation, rollout) {
            Outcome::Converged => {
                return print_line(&format!("{agent_id}: converged on generation {generation}"));
            }
            Outcome::Failed => {
                note(&render_status(&view));
                return Err(CliError::NotConverged(format!(
                    "{agent_id} applied generation {generation} but these resources failed:\n  {}",
                    failing_resources(&view).join("\n  ")
                )));
            }
            Outcome::RolledBack(message) => {
                note(&render_status(&view));
                return Err(CliError::NotConverged(format!(
                    "{agent_id} rolled back generation {generation}: {message}"
                )));
            }
            Outcome::Waiting => {}
        }
        if Instant::now() >= deadline {
            note(&render_status(&view));
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

#[cfg(test)]
mod tests;
