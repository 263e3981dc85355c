//! `fleetlet rollout status [--watch]|pause|resume|approve|abort|rollback NAME`: a fleet's
//! staged rollout, read from `GET /api/v1/fleets/{name}` and acted on with
//! `POST /api/v1/fleets/{name}/rollout/{action}` (409 when the action does not apply to the
//! phase; the manager's message says why).

use std::time::{Duration, Instant};

use fleetlet_manifests::fleet_api::{FleetView, RolloutAction, RolloutPhase};
use reqwest::Method;

use super::super::client::{Client, segment};
use super::super::output::{print, print_line};
use super::super::render::{print_as, render_rollout, rollout_lines};
use super::super::screen::Screen;
use super::super::{CliError, RolloutCommand, RolloutEnd};

/// How often `--watch` reads the rollout.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

pub(super) async fn run(client: &Client, command: RolloutCommand) -> Result<(), CliError> {
    let (name, action) = match command {
        RolloutCommand::Status {
            name,
            watch,
            timeout,
            output,
        } => {
            if watch {
                return watch_rollout(client, &name, timeout).await;
            }
            let view = read(client, &name).await?;
            return print_as(output, &view, render_rollout);
        }
        RolloutCommand::Pause { name } => (name, RolloutAction::Pause),
        RolloutCommand::Resume { name } => (name, RolloutAction::Resume),
        RolloutCommand::Approve { name } => (name, RolloutAction::Approve),
        RolloutCommand::Abort { name } => (name, RolloutAction::Abort),
        RolloutCommand::Rollback { name } => (name, RolloutAction::Rollback),
    };
    let path = format!(
        "/api/v1/fleets/{}/rollout/{}",
        segment(&name),
        action.as_str()
    );
    let view: FleetView = client.call(Method::POST, &path, &[], None).await?;
    print_line(&format!(
        "{name}: {} done; the rollout of revision {} is {}",
        action.as_str(),
        view.target_revision,
        view.phase.as_str()
    ))
}

pub(super) async fn read(client: &Client, name: &str) -> Result<FleetView, CliError> {
    let path = format!("/api/v1/fleets/{}", segment(name));
    client.call(Method::GET, &path, &[], None).await
}

/// How a watch stands after one reading of the rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Watch {
    /// Devices are still being updated: look again.
    Continue,
    /// Every selected device has the target revision.
    Completed,
    /// The rollout stopped short of completing; the watch ends with this status and message.
    Stopped(RolloutEnd, String),
}

/// What the rollout's phase means for a watch: only `Progressing` goes on by itself; every other
/// phase waits for an operator (or is over).
pub(super) fn watch_step(view: &FleetView) -> Watch {
    let name = &view.name;
    let target = view.target_revision;
    match view.phase {
        RolloutPhase::Progressing => Watch::Continue,
        RolloutPhase::Completed => Watch::Completed,
        RolloutPhase::Paused => Watch::Stopped(
            RolloutEnd::Paused,
            format!(
                "the rollout of {name} revision {target} is paused: {}",
                view.pause_reason.as_deref().unwrap_or("no reason given")
            ),
        ),
        RolloutPhase::Aborted => Watch::Stopped(
            RolloutEnd::Aborted,
            format!("the rollout of {name} revision {target} was aborted"),
        ),
        RolloutPhase::WaitingApproval => {
            let next = view.current_batch.map_or(1, |b| b + 2);
            Watch::Stopped(
                RolloutEnd::WaitingApproval,
                format!(
                    "the rollout of {name} revision {target} waits for approval before batch \
                     {next}/{} (fleetlet rollout approve {name})",
                    view.batches.len()
                ),
            )
        }
        RolloutPhase::RolledBack => Watch::Stopped(
            RolloutEnd::RolledBack,
            format!("the rollout of {name} was rolled back to revision {target}"),
        ),
    }
}

/// Shows the rollout until it completes (Ok), stops (`RolloutStopped`, whose exit status says
/// how) or `timeout` passes. On a terminal the display is redrawn in place; piped, each line
/// that changed is printed once.
async fn watch_rollout(
    client: &Client,
    name: &str,
    timeout: Option<Duration>,
) -> Result<(), CliError> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut screen = Screen::for_stdout();
    loop {
        let view = read(client, name).await?;
        print(&screen.frame(&rollout_lines(&view, screen.is_terminal())))?;
        match watch_step(&view) {
            Watch::Continue => {}
            Watch::Completed => {
                return print_line(&format!(
                    "{name}: revision {} rolled out",
                    view.target_revision
                ));
            }
            Watch::Stopped(end, message) => {
                return Err(CliError::RolloutStopped { end, message });
            }
        }
        if let (Some(deadline), Some(timeout)) = (deadline, timeout)
            && Instant::now() >= deadline
        {
            return Err(CliError::NotConverged(format!(
                "the rollout of {name} revision {} did not finish within {timeout:?}",
                view.target_revision
            )));
        }
        tokio::time::sleep(WATCH_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests;
