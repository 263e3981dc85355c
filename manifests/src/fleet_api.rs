//! Bodies of the manager's fleet API (docs/fleets.md): a fleet with its rollout, its devices,
//! its revisions, the answer to a `PUT`, and the label patch of `PATCH /api/v1/agents/{agentId}`.
//!
//! The fleet itself travels as the JSON the operator wrote (`fleet`), exactly as stored for that
//! revision; these bodies add what the manager knows about it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ids::AgentId;

/// Where a fleet's rollout stands.
///
/// `RolledBack` is a phase of its own, beside the five of the contract: after a rollback the
/// fleet's devices run the previous revision again while the newest revision is still the bad
/// one, which neither `Aborted` (devices keep what they got) nor `Completed` (the newest
/// revision is out) says. A new revision supersedes it like any other phase.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
pub enum RolloutPhase {
    /// A batch is going out, or the next one starts at the next step of the controller.
    Progressing,
    /// A batch met its threshold and `requireApproval` holds the next one until `approve`.
    WaitingApproval,
    /// Stopped (see `pauseReason`; the `RolloutPaused` event's reason): by an operator
    /// (`operator`), by a batch below `successThreshold` (`threshold`), or by a batch that wrote
    /// the revision to no device while none has converged on it, because no device was reachable
    /// within `batchTimeoutSeconds` (`unreachable`) or every device it could take failed to
    /// render its parameters (`parameters`). The target revision goes to no further device until
    /// `resume`.
    Paused,
    /// Every batch passed: each selected device in contact was given the target revision; a
    /// stale device of the last batch (`Deferred`) gets it when it is back in contact.
    Completed,
    /// Stopped for good by an operator; devices keep what they have.
    Aborted,
    /// The previous revision went back to every device that had received the target one.
    RolledBack,
}

impl RolloutPhase {
    pub const ALL: [RolloutPhase; 6] = [
        RolloutPhase::Progressing,
        RolloutPhase::WaitingApproval,
        RolloutPhase::Paused,
        RolloutPhase::Completed,
        RolloutPhase::Aborted,
        RolloutPhase::RolledBack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RolloutPhase::Progressing => "Progressing",
            RolloutPhase::WaitingApproval => "WaitingApproval",
            RolloutPhase::Paused => "Paused",
            RolloutPhase::Completed => "Completed",
            RolloutPhase::Aborted => "Aborted",
            RolloutPhase::RolledBack => "RolledBack",
        }
    }

    pub fn parse(text: &str) -> Option<RolloutPhase> {
        RolloutPhase::ALL.into_iter().find(|p| p.as_str() == text)
    }
}

/// Where one selected device stands in its fleet's rollout.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
pub enum DeviceRolloutState {
    /// Not yet given the target revision (its batch has not started).
    Pending,
    /// Given the target revision; not yet converged on it.
    Updating,
    /// Converged on the generation rendered for the target revision.
    Succeeded,
    /// Reported it degraded or rolled back, or did not converge within `batchTimeoutSeconds`.
    Failed,
    /// Stale when its batch started: it gets the revision when it reports again, unless the
    /// rollout is paused, aborted or rolled back.
    Deferred,
    /// A parameter has no value (no label, no default); `detail` names it. Not rendered.
    ParameterMissing,
    /// A parameter's value does not match its pattern; `detail` names it. Not rendered.
    ParameterInvalid,
    /// Selected by more than one fleet, so managed by none; `conflictingFleets` names them.
    Conflict,
}

impl DeviceRolloutState {
    pub const ALL: [DeviceRolloutState; 8] = [
        DeviceRolloutState::Pending,
        DeviceRolloutState::Updating,
        DeviceRolloutState::Succeeded,
        DeviceRolloutState::Failed,
        DeviceRolloutState::Deferred,
        DeviceRolloutState::ParameterMissing,
        DeviceRolloutState::ParameterInvalid,
        DeviceRolloutState::Conflict,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeviceRolloutState::Pending => "Pending",
            DeviceRolloutState::Updating => "Updating",
            DeviceRolloutState::Succeeded => "Succeeded",
            DeviceRolloutState::Failed => "Failed",
            DeviceRolloutState::Deferred => "Deferred",
            DeviceRolloutState::ParameterMissing => "ParameterMissing",
            DeviceRolloutState::ParameterInvalid => "ParameterInvalid",
            DeviceRolloutState::Conflict => "Conflict",
        }
    }

    pub fn parse(text: &str) -> Option<DeviceRolloutState> {
        DeviceRolloutState::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// One batch of a rollout, as far as it got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchView {
    /// 0 for the first batch of the strategy.
    pub index: u32,
    /// Devices the batch holds (0 for a batch that has not started).
    pub devices: u32,
    pub succeeded: u32,
    pub failed: u32,
    /// Given the revision, no outcome yet; before the batch starts, every device it will hold.
    pub pending: u32,
    /// Stale when the batch started; not counted against the threshold.
    pub deferred: u32,
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schemars(with = "Option<String>")]
    pub started_at: Option<OffsetDateTime>,
    /// The batch has an outcome: every device decided, or `batchTimeoutSeconds` passed.
    pub finished: bool,
}

/// `GET /api/v1/fleets/{name}`, one item of `GET /api/v1/fleets`, and the answer to the
/// operator actions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetView {
    pub name: String,
    /// The fleet of the newest revision, as the operator wrote it.
    pub fleet: serde_json::Value,
    /// The newest revision.
    pub revision: u64,
    /// The revision the rollout moves devices to: the newest one whose template, parameters or
    /// signature changed (a change of selector or strategy alone rolls nothing out), or after a
    /// rollback the one rolled back to.
    pub target_revision: u64,
    /// The newest revision that completed its rollout; newly selected devices get it at once.
    pub good_revision: Option<u64>,
    pub phase: RolloutPhase,
    /// The batch in progress or last finished (an index into `batches`).
    pub current_batch: Option<u32>,
    /// Every batch of the strategy, in order.
    pub batches: Vec<BatchView>,
    /// Why the rollout is paused: an operator, or the counts of the batch that missed its
    /// threshold.
    pub pause_reason: Option<String>,
    /// Selected devices in each rollout state; states with none are left out.
    pub devices: BTreeMap<DeviceRolloutState, u64>,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub updated_at: OffsetDateTime,
}

/// One row of `GET /api/v1/fleets/{name}/devices`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetDeviceView {
    pub agent_id: AgentId,
    /// The fleet revision whose rendering the device was last given (`None`: never).
    pub revision_rendered: Option<u64>,
    /// The device's manifest generation written for `revisionRendered`.
    pub generation: Option<u64>,
    pub state: DeviceRolloutState,
    /// The batch of the current rollout the device belongs to.
    pub batch: Option<u32>,
    /// Why: the parameter missing or invalid, the failure seen, the timeout.
    pub detail: Option<String>,
    /// With `Conflict`: every fleet that selects the device.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicting_fleets: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub updated_at: OffsetDateTime,
}

/// One item of `GET /api/v1/fleets/{name}/revisions`, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetRevisionView {
    pub revision: u64,
    /// The revision whose template this one carries (itself when the template, parameters or
    /// signature changed; an earlier one when only the selector or strategy did).
    pub content_revision: u64,
    pub content_hash: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub created_at: OffsetDateTime,
    pub created_by: String,
    pub fleet: serde_json::Value,
}

/// The answer to `PUT /api/v1/fleets/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PutFleetResponse {
    pub name: String,
    pub revision: u64,
    /// False when the fleet was identical to its newest revision (nothing stored).
    pub created: bool,
    /// Whether this revision starts a rollout (its template, parameters or signature changed).
    pub rollout: bool,
}

/// The body of `PATCH /api/v1/agents/{agentId}`: a JSON merge patch of the labels, a `null`
/// value removing the label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelPatch {
    #[serde(default)]
    pub labels: BTreeMap<String, Option<String>>,
}

/// The answer to `PATCH /api/v1/agents/{agentId}`: the labels now, and the fleet that owns the
/// device after selection was evaluated again (`None`: none, or in conflict).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentLabels {
    pub agent_id: AgentId,
    pub labels: BTreeMap<String, String>,
    pub fleet: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicting_fleets: Vec<String>,
}

/// An operator action on a rollout (`POST /api/v1/fleets/{name}/rollout/{action}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RolloutAction {
    Pause,
    Resume,
    Approve,
    Abort,
    Rollback,
}

impl RolloutAction {
    pub const ALL: [RolloutAction; 5] = [
        RolloutAction::Pause,
        RolloutAction::Resume,
        RolloutAction::Approve,
        RolloutAction::Abort,
        RolloutAction::Rollback,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RolloutAction::Pause => "pause",
            RolloutAction::Resume => "resume",
            RolloutAction::Approve => "approve",
            RolloutAction::Abort => "abort",
            RolloutAction::Rollback => "rollback",
        }
    }

    pub fn parse(text: &str) -> Option<RolloutAction> {
        RolloutAction::ALL.into_iter().find(|a| a.as_str() == text)
    }
}
