//! The rollout's state as stored (`fleets.rollout`), the operator actions on it, and a new
//! revision superseding it. Pure: no clock, no store.

use fleetlet_manifests::api::EventType;
use fleetlet_manifests::fleet_api::{RolloutAction, RolloutPhase};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::store::NewEvent;

/// Why a rollout paused: the `reason` of its `RolloutPaused` event (docs/fleets.md, "Events and
/// metrics"); the state's `pause_reason` is the sentence for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseCause {
    /// `POST …/rollout/pause`.
    Operator,
    /// A finished batch fell short of the success threshold.
    Threshold,
    /// No device of the running batch could be reached within its timeout.
    Unreachable,
    /// Every device the running batch could take failed to render its parameters.
    Parameters,
}

impl PauseCause {
    pub const ALL: [Self; 4] = [
        Self::Operator,
        Self::Threshold,
        Self::Unreachable,
        Self::Parameters,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Operator => "operator",
            Self::Threshold => "threshold",
            Self::Unreachable => "unreachable",
            Self::Parameters => "parameters",
        }
    }
}

/// Where a fleet's rollout stands: everything the controller needs beyond the device rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutState {
    /// The content revision devices are moved to (after a rollback: the one rolled back to).
    pub target_revision: u64,
    /// The newest revision whose rollout completed: newly selected devices get it at once.
    pub good_revision: Option<u64>,
    /// After a rollback, the revision rolled back from.
    #[serde(default)]
    pub rolled_back_from: Option<u64>,
    pub phase: RolloutPhase,
    /// Batch sizes, fixed when the first batch starts (from the devices selected then).
    #[serde(default)]
    pub planned: Option<Vec<usize>>,
    /// The batches started so far, in order.
    #[serde(default)]
    pub batches: Vec<BatchRecord>,
    /// The last started batch has an outcome (so the next may start).
    #[serde(default)]
    pub batch_done: bool,
    #[serde(default)]
    pub pause_reason: Option<String>,
    /// Paused while waiting for approval: `resume` waits for approval again rather than
    /// starting the next batch.
    #[serde(default)]
    pub paused_awaiting_approval: bool,
    /// Paused because the running batch wrote the revision to no device (none could be reached
    /// within its timeout, or every one it could take failed to render its parameters):
    /// `resume` starts that batch again rather than going on with the next.
    #[serde(default, alias = "pausedUnreached")]
    pub paused_unwritten: bool,
}

/// A started batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchRecord {
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// The counts it ended with (`None` while it runs).
    #[serde(default)]
    pub outcome: Option<BatchOutcome>,
}

/// How a batch ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchOutcome {
    pub devices: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub pending: u32,
    pub deferred: u32,
}

/// Why an operator action was refused: it does not apply to the current phase.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {action} a rollout that is {phase}{why}")]
pub struct NotApplicable {
    pub action: &'static str,
    pub phase: &'static str,
    pub why: &'static str,
}

impl RolloutState {
    /// The state of a fleet's first revision: its rollout starts from the first batch.
    pub fn first(revision: u64) -> Self {
        Self {
            target_revision: revision,
            good_revision: None,
            rolled_back_from: None,
            phase: RolloutPhase::Progressing,
            planned: None,
            batches: Vec::new(),
            batch_done: false,
            pause_reason: None,
            paused_awaiting_approval: false,
            paused_unwritten: false,
        }
    }

    /// A new revision supersedes whatever the rollout was doing: its own rollout starts from
    /// the first batch, and the last good revision stays what newly selected devices get.
    pub fn superseded(&self, revision: u64) -> Self {
        let good_revision = match self.phase {
            RolloutPhase::Completed => Some(self.target_revision),
            _ => self.good_revision,
        };
        Self {
            good_revision,
            ..Self::first(revision)
        }
    }

    /// The index of the batch in progress or last started.
    pub fn current_batch(&self) -> Option<usize> {
        self.batches.len().checked_sub(1)
    }

    /// Applies an operator action; the events it causes go with the new state.
    pub fn act(&self, action: RolloutAction) -> Result<(Self, Vec<NewEvent>), NotApplicable> {
        let refuse = |why: &'static str| NotApplicable {
            action: action.as_str(),
            phase: self.phase.as_str(),
            why,
        };
        let mut next = self.clone();
        let revision = serde_json::json!(self.target_revision);
        let event = match (action, self.phase) {
            (RolloutAction::Pause, RolloutPhase::Progressing | RolloutPhase::WaitingApproval) => {
                next.phase = RolloutPhase::Paused;
                next.pause_reason = Some("paused by an operator".to_owned());
                next.paused_awaiting_approval = self.phase == RolloutPhase::WaitingApproval;
                NewEvent::new(
                    EventType::RolloutPaused,
                    serde_json::json!({"revision": revision,
                        "reason": PauseCause::Operator.as_str(), "batch": self.current_batch()}),
                )
            }
            (RolloutAction::Resume, RolloutPhase::Paused) => {
                next.phase = if self.paused_awaiting_approval {
                    RolloutPhase::WaitingApproval
                } else {
                    RolloutPhase::Progressing
                };
                next.pause_reason = None;
                next.paused_awaiting_approval = false;
                if self.paused_unwritten {
                    // The batch was written to nobody: it starts again, with a new timeout,
                    // tries its devices again and takes the devices in contact by then.
                    next.batches.pop();
                    next.batch_done = !next.batches.is_empty();
                    next.paused_unwritten = false;
                }
                NewEvent::new(
                    EventType::RolloutResumed,
                    serde_json::json!({"revision": revision, "batch": self.current_batch()}),
                )
            }
            (RolloutAction::Approve, RolloutPhase::WaitingApproval) => {
                next.phase = RolloutPhase::Progressing;
                NewEvent::new(
                    EventType::RolloutResumed,
                    serde_json::json!({"revision": revision, "approved": true,
                        "batch": self.current_batch()}),
                )
            }
            (
                RolloutAction::Abort,
                RolloutPhase::Progressing | RolloutPhase::WaitingApproval | RolloutPhase::Paused,
            ) => {
                next.phase = RolloutPhase::Aborted;
                next.pause_reason = None;
                next.paused_unwritten = false;
                NewEvent::new(
                    EventType::RolloutAborted,
                    serde_json::json!({"revision": revision, "batch": self.current_batch()}),
                )
            }
            (
                RolloutAction::Rollback,
                RolloutPhase::Progressing
                | RolloutPhase::WaitingApproval
                | RolloutPhase::Paused
                | RolloutPhase::Aborted,
            ) => {
                let Some(good) = self.good_revision else {
                    return Err(refuse(": no earlier revision completed its rollout"));
                };
                // A fresh rollout of the good revision, apart from where it came from.
                next = Self {
                    good_revision: Some(good),
                    rolled_back_from: Some(self.target_revision),
                    phase: RolloutPhase::RolledBack,
                    ..Self::first(good)
                };
                NewEvent::new(
                    EventType::RolloutRolledBack,
                    serde_json::json!({"from": self.target_revision, "to": good}),
                )
            }
            _ => return Err(refuse("")),
        };
        Ok((next, vec![event]))
    }
}

/// What the store calls for a new revision ([`crate::store::fleets::Supersede`]): the rollout
/// state for `revision`, from the stored one (`None` for a new fleet).
pub fn supersede(
    stored: Option<&serde_json::Value>,
    revision: u64,
    _now: OffsetDateTime,
) -> (serde_json::Value, String) {
    let state = stored
        .and_then(|value| serde_json::from_value::<RolloutState>(value.clone()).ok())
        .map_or_else(|| RolloutState::first(revision), |s| s.superseded(revision));
    let phase = state.phase.as_str().to_owned();
    (
        serde_json::to_value(&state).unwrap_or(serde_json::Value::Null),
        phase,
    )
}
