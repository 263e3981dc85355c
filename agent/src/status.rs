//! Building the `AgentStatus` the agent reports: per-resource status, conditions, generations,
//! and the `reportSeq` scheme.
//!
//! Pure functions of their inputs (plus the clock passed in), so that what the fleet sees can be
//! unit-tested without an engine.

use std::borrow::Cow;
use std::collections::BTreeMap;

use fleetlet_manifests::signature::SignatureError;
use fleetlet_manifests::status::STATUS_KIND;
use fleetlet_manifests::{
    API_VERSION, AgentId, AgentInfo, AgentManifest, AgentStatus, Condition, ConditionStatus,
    ConditionType, Phase, Repairs, Resource, ResourceId, ResourceStatus,
};
use time::OffsetDateTime;

use crate::reconcile::Change;
use crate::store::{DeadlineOutcome, MissedDeadline, ResourceState};

/// Where the agent stands with its manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connectivity {
    /// Desired state comes from a local file; there is no manager.
    Standalone,
    /// No answer from the manager yet.
    Connecting,
    /// The manager answered the last request.
    Online,
    /// The last request did not reach the manager (or it refused the agent).
    Offline { reason: String, message: String },
}

/// Why the newest manifest was refused: the `ManifestRejected` condition's reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: &'static str,
    pub message: String,
}

impl Rejection {
    /// The manifest could not be parsed or validated, or is for another agent.
    pub fn invalid(message: String) -> Self {
        Self {
            reason: "InvalidManifest",
            message,
        }
    }

    /// Trusted keys are configured and `error` refused the manifest: `SignatureInvalid` for the
    /// manifest's own signature, a reason of its own for each refusal of a fleet-rendered one
    /// (`FleetSignatureInvalid`, `FleetValueOutsidePattern`, `FleetTemplateMismatch`).
    pub fn signature_refused(error: &SignatureError, message: String) -> Self {
        Self {
            reason: error.reason(),
            message,
        }
    }
}

/// Everything a status is built from.
#[derive(Debug)]
pub struct StatusInputs<'a> {
    pub agent_id: &'a AgentId,
    pub agent: &'a AgentInfo,
    /// The manifest the agent converges to: the one received last, or the known-good one while
    /// that is rolled back.
    pub manifest: Option<&'a AgentManifest>,
    /// The rollout deadline the generation received last missed, if it did.
    pub missed_deadline: Option<&'a MissedDeadline>,
    /// The newest generation received.
    pub manifest_generation: u64,
    /// The generation the last complete pass applied.
    pub observed_generation: u64,
    /// The spec hash of every resource of `manifest`, in order, when the caller has them
    /// (computed here otherwise).
    pub spec_hashes: Option<&'a [String]>,
    pub states: &'a BTreeMap<ResourceId, ResourceState>,
    pub connectivity: &'a Connectivity,
    /// Why the newest manifest received was refused, if it was.
    pub manifest_rejected: Option<&'a Rejection>,
    /// The previous status, whose conditions keep their transition times when unchanged.
    pub previous: Option<&'a AgentStatus>,
    pub now: OffsetDateTime,
}

/// The next `reportSeq`: above the last one, and at least the current time in microseconds since
/// the Unix epoch. The time floor is what makes the sequence keep increasing across restarts
/// even when the store forgot the last value (memory store), as long as the clock does not jump
/// back by more than the time between two reports.
pub fn next_report_seq(last: u64, now: OffsetDateTime) -> u64 {
    let micros = u64::try_from(now.unix_timestamp_nanos() / 1000).unwrap_or(0);
    last.saturating_add(1).max(micros)
}

/// Builds the status; `report_seq` is left at 0 for the caller to assign when it is queued.
pub fn build_status(inputs: &StatusInputs<'_>) -> AgentStatus {
    let resources = resource_statuses(inputs);
    let conditions = conditions(inputs, &resources);
    AgentStatus {
        api_version: API_VERSION.to_owned(),
        kind: STATUS_KIND.to_owned(),
        agent_id: inputs.agent_id.clone(),
        report_seq: 0,
        manifest_generation: inputs.manifest_generation,
        observed_generation: inputs.observed_generation.min(inputs.manifest_generation),
        observed_at: inputs.now,
        agent: inputs.agent.clone(),
        conditions,
        resources,
        facts: Some(crate::facts::host().clone()),
    }
}

/// Each resource of `manifest` with its spec hash: from `spec_hashes` (the hashes of those
/// resources, in order) when given for all of them, computed otherwise.
pub fn with_spec_hashes<'a>(
    manifest: &'a AgentManifest,
    spec_hashes: Option<&'a [String]>,
) -> impl Iterator<Item = (&'a Resource, Cow<'a, str>)> {
    let spec_hashes = spec_hashes.filter(|hashes| hashes.len() == manifest.resources.len());
    manifest
        .resources
        .iter()
        .enumerate()
        .map(move |(at, resource)| {
            let spec_hash = match spec_hashes {
                Some(hashes) => Cow::Borrowed(hashes[at].as_str()),
                None => Cow::Owned(resource.spec_hash()),
            };
            (resource, spec_hash)
        })
}

/// Every desired resource, plus owned ones still being deleted. A desired resource whose state is
/// for an older spec (or that has no state yet) is `Pending`.
fn resource_statuses(inputs: &StatusInputs<'_>) -> BTreeMap<ResourceId, ResourceStatus> {
    let mut resources = BTreeMap::new();
    if let Some(manifest) = inputs.manifest {
        for (resource, spec_hash) in with_spec_hashes(manifest, inputs.spec_hashes) {
            let status = match inputs.states.get(&resource.id) {
                Some(state) if state.status.spec_hash.as_deref() == Some(&*spec_hash) => {
                    state.status.clone()
                }
                // A new spec keeps the resource's repairs: the count only grows.
                state => ResourceStatus {
                    kind: resource.kind().to_owned(),
                    phase: Phase::Pending,
                    since: inputs.now,
                    generation: desired_generation(inputs),
                    spec_hash: Some(spec_hash.into_owned()),
                    error: None,
                    retry_after: None,
                    details: None,
                    repairs: state.and_then(|s| s.status.repairs.clone()),
                },
            };
            resources.insert(resource.id.clone(), status);
        }
    }
    for (id, state) in inputs.states {
        if !resources.contains_key(id) {
            resources.insert(id.clone(), state.status.clone());
        }
    }
    resources
}

/// The generation of the manifest being converged to (lower than the one received while a
/// rollback is in force).
fn desired_generation(inputs: &StatusInputs<'_>) -> u64 {
    inputs
        .manifest
        .and_then(|m| m.generation)
        .unwrap_or(inputs.manifest_generation)
}

fn rolled_back(inputs: &StatusInputs<'_>) -> bool {
    inputs
        .missed_deadline
        .is_some_and(|missed| matches!(missed.outcome, DeadlineOutcome::RolledBack { .. }))
}

/// Counts of resources per phase.
fn count(resources: &BTreeMap<ResourceId, ResourceStatus>, phase: Phase) -> usize {
    resources.values().filter(|r| r.phase == phase).count()
}

/// Whether a status says the device is converged: the generation it received is the one it last
/// applied completely, and every resource is Ready.
pub fn is_converged(status: &AgentStatus) -> bool {
    status.manifest_generation > 0 && status.all_ready_at(status.manifest_generation)
}

fn conditions(
    inputs: &StatusInputs<'_>,
    resources: &BTreeMap<ResourceId, ResourceStatus>,
) -> Vec<Condition> {
    let total = resources.len();
    let ready = count(resources, Phase::Ready);
    let failed = count(resources, Phase::Failed);
    let unsupported = count(resources, Phase::Unsupported);
    let unsettled = count(resources, Phase::Pending)
        + count(resources, Phase::Reconciling)
        + count(resources, Phase::Deleting);
    let generation = inputs.manifest_generation;
    // While rolled back, "applied" is about the known-good generation the agent converges to.
    let target = desired_generation(inputs);
    let applied = inputs.manifest.is_some() && inputs.observed_generation >= target;

    let mut conditions = Vec::new();
    let mut add = |type_, status, reason: &str, message: String| {
        let last_transition_time = inputs
            .previous
            .and_then(|previous| {
                previous
                    .conditions
                    .iter()
                    .find(|c| c.type_ == type_ && c.status == status)
            })
            .map_or(inputs.now, |c| c.last_transition_time);
        conditions.push(Condition {
            type_,
            status,
            reason: reason.to_owned(),
            message,
            last_transition_time,
        });
    };

    if inputs.manifest.is_none() {
        add(
            ConditionType::Ready,
            ConditionStatus::False,
            "NoManifest",
            "no manifest has been received yet".into(),
        );
    } else if rolled_back(inputs) {
        add(
            ConditionType::Ready,
            ConditionStatus::False,
            "RolledBack",
            format!("generation {generation} was rolled back; running generation {target}"),
        );
    } else if applied && ready == total {
        add(
            ConditionType::Ready,
            ConditionStatus::True,
            "Converged",
            format!("all {total} resources are ready at generation {generation}"),
        );
    } else if !applied {
        add(
            ConditionType::Ready,
            ConditionStatus::False,
            "Progressing",
            format!("generation {generation} is not applied yet"),
        );
    } else {
        add(
            ConditionType::Ready,
            ConditionStatus::False,
            "ResourcesNotReady",
            format!("{} of {total} resources are not ready", total - ready),
        );
    }

    if failed + unsupported > 0 {
        add(
            ConditionType::Degraded,
            ConditionStatus::True,
            if failed > 0 {
                "ResourcesFailed"
            } else {
                "ResourcesUnsupported"
            },
            format!("{failed} of {total} resources failed, {unsupported} unsupported"),
        );
    } else {
        add(
            ConditionType::Degraded,
            ConditionStatus::False,
            "NoFailures",
            "no resource failed".into(),
        );
    }

    if inputs.manifest.is_some() && (!applied || unsettled > 0) {
        add(
            ConditionType::Reconciling,
            ConditionStatus::True,
            "Applying",
            format!("applying generation {target}: {unsettled} resources not settled"),
        );
    } else {
        add(
            ConditionType::Reconciling,
            ConditionStatus::False,
            "Idle",
            "nothing left to apply".into(),
        );
    }

    match inputs.manifest_rejected {
        Some(rejection) => add(
            ConditionType::ManifestRejected,
            ConditionStatus::True,
            rejection.reason,
            rejection.message.clone(),
        ),
        None => add(
            ConditionType::ManifestRejected,
            ConditionStatus::False,
            "Accepted",
            "the newest manifest was accepted".into(),
        ),
    }

    // Only when a deadline was missed: a rollout that went well leaves no trace here.
    if let Some(missed) = inputs.missed_deadline {
        let (status, reason) = match missed.outcome {
            DeadlineOutcome::RolledBack { .. } => {
                (ConditionStatus::True, "ProgressDeadlineExceeded")
            }
            DeadlineOutcome::Held => (ConditionStatus::False, "HoldPolicy"),
            DeadlineOutcome::NoKnownGoodGeneration => {
                (ConditionStatus::False, "NoKnownGoodGeneration")
            }
        };
        add(ConditionType::RolledBack, status, reason, missed.message());
    }

    match inputs.connectivity {
        Connectivity::Standalone => add(
            ConditionType::Offline,
            ConditionStatus::False,
            "Standalone",
            "desired state comes from a local manifest file".into(),
        ),
        Connectivity::Connecting => add(
            ConditionType::Offline,
            ConditionStatus::Unknown,
            "Connecting",
            "the manager has not answered yet".into(),
        ),
        Connectivity::Online => add(
            ConditionType::Offline,
            ConditionStatus::False,
            "Connected",
            "the manager answers".into(),
        ),
        Connectivity::Offline { reason, message } => add(
            ConditionType::Offline,
            ConditionStatus::True,
            reason,
            message.clone(),
        ),
    }
    conditions
}

/// Makes `Degraded` say that the local store cannot save (reason `DiskFull` or
/// `StoreUnavailable`), whatever the resources say: the agent converges from memory, and a
/// restart now would lose what it could not save. A failure of resources at the same time is
/// kept in the message. The transition time moves only when `Degraded` turns True.
pub fn note_store_fault(
    status: &mut AgentStatus,
    fault: &crate::store::StoreFault,
    previous: Option<&AgentStatus>,
) {
    let was_true = |conditions: &[Condition]| {
        conditions
            .iter()
            .find(|c| c.type_ == ConditionType::Degraded && c.status == ConditionStatus::True)
            .map(|c| c.last_transition_time)
    };
    let since = previous
        .and_then(|previous| was_true(&previous.conditions))
        .or_else(|| was_true(&status.conditions))
        .unwrap_or(status.observed_at);
    let mut message = format!(
        "the local store cannot save ({}); the agent converges from memory and retries the writes",
        fault.message
    );
    if let Some(degraded) = status
        .conditions
        .iter_mut()
        .find(|c| c.type_ == ConditionType::Degraded)
    {
        if degraded.status == ConditionStatus::True {
            message.push_str("; also ");
            message.push_str(&degraded.message);
        }
        degraded.status = ConditionStatus::True;
        degraded.reason = fault.reason().to_owned();
        degraded.message = message;
        degraded.last_transition_time = since;
    }
}

/// Whether two statuses say the same thing, ignoring when they were made, their seq and their
/// resources' repair counts (see [`same_repairs`]).
pub fn same_content(a: &AgentStatus, b: &AgentStatus) -> bool {
    a.manifest_generation == b.manifest_generation
        && a.observed_generation == b.observed_generation
        && a.agent == b.agent
        && a.conditions == b.conditions
        && a.resources.len() == b.resources.len()
        && a.resources
            .iter()
            .zip(&b.resources)
            .all(|((id_a, a), (id_b, b))| id_a == id_b && same_resource(a, b))
}

/// Every field but `repairs`. Spelled out, so that a new field cannot be forgotten here.
fn same_resource(a: &ResourceStatus, b: &ResourceStatus) -> bool {
    let ResourceStatus {
        kind,
        phase,
        since,
        generation,
        spec_hash,
        error,
        retry_after,
        details,
        repairs: _,
    } = a;
    *kind == b.kind
        && *phase == b.phase
        && *since == b.since
        && *generation == b.generation
        && *spec_hash == b.spec_hash
        && *error == b.error
        && *retry_after == b.retry_after
        && *details == b.details
}

/// Whether two statuses carry the same repair counts for every resource.
pub fn same_repairs(a: &AgentStatus, b: &AgentStatus) -> bool {
    let counts = |status: &AgentStatus| -> Vec<(ResourceId, u64)> {
        status
            .resources
            .iter()
            .filter_map(|(id, r)| {
                r.repairs
                    .as_ref()
                    .map(|repairs| (id.clone(), repairs.count))
            })
            .collect()
    };
    counts(a) == counts(b)
}

/// A status whose only news is a higher repair count is sent at most this often (the compact
/// heartbeat's default interval): a device whose file someone edits at every resync must not
/// report at every resync. The count rides along with any other report in between, and the
/// status sent at the end of the interval carries every repair made during it.
pub const REPAIR_REPORT_INTERVAL: time::Duration = time::Duration::minutes(10);

/// Whether a status that differs from the last report only in its repair counts goes out now,
/// given when such a status was last sent.
pub fn repairs_due(last_sent: Option<OffsetDateTime>, now: OffsetDateTime) -> bool {
    last_sent.is_none_or(|at| now - at >= REPAIR_REPORT_INTERVAL)
}

/// A resource's repairs after an apply that made `change`: one more after a repair, as before
/// otherwise. `previous` is the resource's state before the apply, whatever its spec was.
pub fn repairs_after(
    previous: Option<&ResourceState>,
    change: &Change,
    at: OffsetDateTime,
) -> Option<Repairs> {
    let before = previous.and_then(|p| p.status.repairs.clone());
    match change {
        Change::Repaired { drift } => Some(Repairs {
            count: before.map_or(0, |r| r.count).saturating_add(1),
            last_at: at,
            last_drift: bounded(drift),
        }),
        _ => before,
    }
}

/// What drifted, cut to a length a status row can carry.
fn bounded(drift: &str) -> String {
    const MOST: usize = 256;
    match drift.char_indices().nth(MOST) {
        Some((cut, _)) => format!("{}…", &drift[..cut]),
        None => drift.to_owned(),
    }
}

#[cfg(test)]
mod tests;
