//! One step of a fleet's rollout: the stored state, the device rows with what each device
//! reported, and the time in; the new state, the device rows that change, the events and the
//! manifests to write out. Pure, so every rule is unit-tested without a database.
//!
//! The writes are derived from the new state and rows, never remembered: the controller commits
//! the state and rows first, then writes, and a replica that dies in between leaves rows that
//! the next step (on any replica) derives the same writes from. Each write is conditional on
//! the device not holding that revision yet, so none happens twice.

use fleetlet_manifests::api::EventType;
use fleetlet_manifests::fleet_api::{DeviceRolloutState as D, RolloutPhase};
use fleetlet_manifests::{AgentId, Phase};
use time::OffsetDateTime;

use super::state::{BatchOutcome, BatchRecord, PauseCause, RolloutState};
use crate::store::NewEvent;
use crate::store::fleets::DeviceHealth;

/// The strategy of the fleet's newest revision, as the step needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Batch sizes for the devices selected now; frozen when the first batch starts.
    pub sizes: Vec<usize>,
    /// `successThreshold` in percent.
    pub threshold_percent: f64,
    pub batch_timeout: time::Duration,
    pub require_approval: bool,
}

/// What a device's report says about a generation written to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Converged,
    Failed(String),
    Working,
}

/// A device row as the step reads and writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    pub agent_id: AgentId,
    pub state: D,
    pub revision_rendered: Option<u64>,
    pub state_revision: Option<u64>,
    pub batch: Option<u32>,
    pub detail: Option<String>,
    /// No report for the stale interval (`fleet::STALE_AFTER_INTERVALS`).
    pub stale: bool,
    /// What it reported about the generation written for `revision_rendered`.
    pub seen: Seen,
}

/// A manifest to render and write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub agent_id: AgentId,
    pub revision: u64,
    pub batch: Option<u32>,
}

/// The outcome of a step.
#[derive(Debug, Clone)]
pub struct Step {
    pub state: RolloutState,
    /// Rows whose state, revision, batch or detail changed.
    pub updates: Vec<Device>,
    pub events: Vec<NewEvent>,
    pub writes: Vec<Write>,
}

/// What a device's report says about `generation`: converged on it (every resource Ready),
/// failed (rolled back or rejected it, or a resource of it failed), or neither yet.
pub fn observe(generation: u64, health: &DeviceHealth) -> Seen {
    let reached = health
        .manifest_generation
        .is_some_and(|manifest| manifest >= generation);
    if reached && health.rolled_back {
        return Seen::Failed(format!(
            "rolled back from generation {generation} to its last known-good one"
        ));
    }
    if reached && health.manifest_rejected {
        return Seen::Failed(format!("rejected generation {generation}"));
    }
    if health.observed_generation == Some(generation) {
        let failing = [Phase::Failed, Phase::Unsupported]
            .iter()
            .any(|phase| health.counts.get(phase).copied().unwrap_or(0) > 0);
        if failing {
            return Seen::Failed(format!("a resource of generation {generation} failed"));
        }
        if crate::fleet::is_converged(generation, generation, &health.counts) {
            return Seen::Converged;
        }
    }
    Seen::Working
}

fn parameter_error(state: D) -> bool {
    matches!(state, D::ParameterMissing | D::ParameterInvalid)
}

/// Runs one step (see the module documentation).
pub fn step(state: &RolloutState, plan: &Plan, devices: &[Device], now: OffsetDateTime) -> Step {
    let mut st = state.clone();
    let target = st.target_revision;
    let mut events = Vec::new();
    let mut devs: Vec<Device> = devices
        .iter()
        .filter(|d| d.state != D::Conflict)
        .cloned()
        .collect();

    // Rows about another revision start over for the target.
    for d in &mut devs {
        if d.state_revision == Some(target) {
            continue;
        }
        if matches!(
            d.state,
            D::Succeeded | D::Failed | D::Updating | D::Deferred | D::Pending
        ) {
            d.state = if d.revision_rendered == Some(target) {
                D::Updating
            } else {
                D::Pending
            };
            d.state_revision = Some(target);
            d.batch = None;
            d.detail = None;
        }
    }
    // Outcomes of the devices given the target.
    for d in &mut devs {
        if d.state == D::Updating && d.revision_rendered == Some(target) {
            match &d.seen {
                Seen::Converged => d.state = D::Succeeded,
                Seen::Failed(why) => {
                    d.state = D::Failed;
                    d.detail = Some(why.clone());
                }
                Seen::Working => {}
            }
        }
    }
    if matches!(
        st.phase,
        RolloutPhase::Progressing | RolloutPhase::WaitingApproval
    ) {
        mark_waiting(&mut devs, target);
    }
    if st.phase == RolloutPhase::Progressing
        && !st.batch_done
        && let Some(k) = st.current_batch()
    {
        reach(&mut st, &mut devs, k, now);
    }
    // A running batch's devices that did not converge in time failed.
    if st.phase == RolloutPhase::Progressing
        && !st.batch_done
        && let Some(k) = st.current_batch()
        && now - st.batches[k].started_at >= plan.batch_timeout
    {
        for d in devs.iter_mut().filter(|d| in_batch(d, k, target)) {
            if matches!(d.state, D::Updating | D::Pending) {
                d.state = D::Failed;
                d.detail = Some(format!(
                    "not converged within {} s",
                    plan.batch_timeout.whole_seconds()
                ));
            }
        }
    }
    advance(&mut st, plan, &mut devs, &mut events, now);
    let writes = writes(&st, &devs);
    let updates = devs
        .into_iter()
        .filter(|d| {
            devices
                .iter()
                .find(|o| o.agent_id == d.agent_id)
                .is_none_or(|o| {
                    (o.state, o.state_revision, o.batch, &o.detail)
                        != (d.state, d.state_revision, d.batch, &d.detail)
                })
        })
        .collect();
    Step {
        state: st,
        updates,
        events,
        writes,
    }
}

fn in_batch(d: &Device, k: usize, target: u64) -> bool {
    d.state_revision == Some(target) && d.batch.is_some_and(|b| b as usize == k)
}

/// Not yet in a batch of the target, and not on it: the next batch may take it. A device whose
/// parameters did not render for an earlier revision waits too (its batch was that revision's):
/// it is tried again for this one.
fn waiting(d: &Device, target: u64) -> bool {
    let in_a_batch = d.batch.is_some() && d.state_revision == Some(target);
    !in_a_batch
        && d.revision_rendered != Some(target)
        && (matches!(d.state, D::Pending | D::Deferred) || parameter_error(d.state))
}

/// The devices of batch `k` whose parameters did not render for the target.
fn unrendered(devs: &[Device], k: usize, target: u64) -> u32 {
    let n = devs
        .iter()
        .filter(|d| in_batch(d, k, target) && parameter_error(d.state))
        .count();
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// While the rollout runs, a device waiting for a batch shows whether a batch can take it:
/// `Deferred` while stale, `Pending` once in contact.
fn mark_waiting(devs: &mut [Device], target: u64) {
    for d in devs.iter_mut() {
        if waiting(d, target)
            && d.state_revision == Some(target)
            && matches!(d.state, D::Pending | D::Deferred)
        {
            d.state = if d.stale { D::Deferred } else { D::Pending };
        }
    }
}

/// Whether some device has converged on the target: a batch of this rollout counted a success,
/// or a device's row says so now.
fn converged_somewhere(st: &RolloutState, devs: &[Device]) -> bool {
    let target = st.target_revision;
    st.batches
        .iter()
        .any(|b| b.outcome.is_some_and(|o| o.succeeded > 0))
        || devs
            .iter()
            .any(|d| d.state_revision == Some(target) && d.state == D::Succeeded)
}

/// A running batch none of whose devices has been written (every one was stale, none was in
/// contact when it started, or their parameters did not render) takes the devices that come
/// into contact: its stale devices that are back, and waiting devices in contact (those whose
/// parameters did not render for an earlier revision too), up to its size (any number in the
/// last batch). When one is written this way the batch's timer starts again, so that it has
/// the whole `batchTimeoutSeconds` to converge.
fn reach(st: &mut RolloutState, devs: &mut [Device], k: usize, now: OffsetDateTime) {
    let target = st.target_revision;
    let Some(planned) = st.planned.clone() else {
        return;
    };
    let reached = devs.iter().any(|d| {
        in_batch(d, k, target)
            && matches!(d.state, D::Pending | D::Updating | D::Succeeded | D::Failed)
    });
    if reached {
        return;
    }
    let mut written = devs
        .iter()
        .any(|d| in_batch(d, k, target) && d.state == D::Deferred && !d.stale);
    let mut room = if k + 1 >= planned.len() {
        usize::MAX
    } else {
        planned.get(k).copied().unwrap_or(0)
    };
    for d in devs.iter_mut() {
        if room == 0 {
            break;
        }
        if waiting(d, target) && !d.stale {
            d.batch = Some(k as u32);
            d.state = D::Pending;
            d.state_revision = Some(target);
            d.detail = None;
            room -= 1;
            written = true;
        }
    }
    if written && let Some(batch) = st.batches.get_mut(k) {
        batch.started_at = now;
    }
}

/// Devices that could still be reached for batch `k`: its stale devices, and stale devices
/// waiting for a batch.
fn unreached(devs: &[Device], k: usize, target: u64) -> u32 {
    let n = devs
        .iter()
        .filter(|d| {
            d.stale && d.state == D::Deferred && (in_batch(d, k, target) || waiting(d, target))
        })
        .count();
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Starts and ends batches while the rollout progresses.
fn advance(
    st: &mut RolloutState,
    plan: &Plan,
    devs: &mut [Device],
    events: &mut Vec<NewEvent>,
    now: OffsetDateTime,
) {
    let target = st.target_revision;
    while st.phase == RolloutPhase::Progressing {
        let planned = st.planned.get_or_insert_with(|| plan.sizes.clone()).clone();
        if st.batches.is_empty() || st.batch_done {
            let k = st.batches.len();
            if k >= planned.len() {
                complete(st, events);
                return;
            }
            let last = k + 1 == planned.len();
            // A batch started again (resumed after it was written to no device): its devices
            // that were not written wait for it like the others, and are tried again.
            for d in devs.iter_mut() {
                if in_batch(d, k, target)
                    && d.revision_rendered != Some(target)
                    && (matches!(d.state, D::Pending | D::Deferred) || parameter_error(d.state))
                {
                    d.batch = None;
                    d.state = if d.stale { D::Deferred } else { D::Pending };
                    d.detail = None;
                }
            }
            let (mut taken, mut deferred) = (0u32, 0u32);
            for d in devs.iter_mut() {
                // Before the last batch, a stale device waits for a later one: it takes no
                // slot that a device in contact could use.
                if !waiting(d, target) || d.stale && !last {
                    continue;
                }
                if !last && taken as usize >= planned[k] {
                    break;
                }
                d.batch = Some(k as u32);
                d.state_revision = Some(target);
                d.detail = None;
                if d.stale {
                    d.state = D::Deferred;
                    deferred += 1;
                } else {
                    d.state = D::Pending;
                    taken += 1;
                }
            }
            st.batches.push(BatchRecord {
                started_at: now,
                outcome: None,
            });
            st.batch_done = false;
            events.push(NewEvent::new(
                EventType::RolloutBatchStarted,
                serde_json::json!({"revision": target, "batch": k, "batches": planned.len(),
                    "devices": taken, "deferred": deferred}),
            ));
            // The batch's devices are written now; their outcomes come with later steps.
            return;
        }
        let k = st.batches.len() - 1;
        let outcome = count(devs, k, target);
        let counted = outcome.succeeded + outcome.failed + outcome.pending;
        // The batch wrote the revision to no device, and nobody anywhere converged on it: it
        // does not pass unjudged. It waits for stale devices (or any device to take) and
        // pauses at its timeout; when every device it could take failed to render its
        // parameters and none waits, nothing can change by waiting, and it pauses now.
        if counted == 0 && !converged_somewhere(st, devs) {
            let unwritten = Unwritten {
                outcome,
                stale: unreached(devs, k, target),
                unrendered: unrendered(devs, k, target),
            };
            if unwritten.stale == 0 && unwritten.unrendered > 0
                || now - st.batches[k].started_at >= plan.batch_timeout
            {
                pause_unwritten(st, plan, unwritten, events);
            }
            return;
        }
        let percent = |n: u32| {
            if counted == 0 {
                100.0
            } else {
                f64::from(n) * 100.0 / f64::from(counted)
            }
        };
        let hopeless = percent(outcome.succeeded + outcome.pending) < plan.threshold_percent;
        if outcome.pending > 0 && !hopeless {
            return;
        }
        st.batches[k].outcome = Some(outcome);
        st.batch_done = true;
        if percent(outcome.succeeded) < plan.threshold_percent {
            let reason = format!(
                "batch {} of {}: {} of {} devices succeeded, {} failed, {} pending, {} deferred \
                 (threshold {}%)",
                k + 1,
                planned.len(),
                outcome.succeeded,
                counted,
                outcome.failed,
                outcome.pending,
                outcome.deferred,
                plan.threshold_percent
            );
            st.phase = RolloutPhase::Paused;
            st.pause_reason = Some(reason.clone());
            events.push(NewEvent::new(
                EventType::RolloutPaused,
                serde_json::json!({"revision": target, "batch": k,
                    "reason": PauseCause::Threshold.as_str(), "devices": outcome.devices,
                    "succeeded": outcome.succeeded,
                    "failed": outcome.failed, "pending": outcome.pending,
                    "deferred": outcome.deferred, "threshold": plan.threshold_percent,
                    "message": reason}),
            ));
            return;
        }
        if k + 1 == planned.len() {
            complete(st, events);
            return;
        }
        if plan.require_approval {
            st.phase = RolloutPhase::WaitingApproval;
            return;
        }
    }
}

/// A batch that wrote the revision to no device: its counts, the stale devices that could
/// still be reached for it, and its devices whose parameters did not render.
struct Unwritten {
    outcome: BatchOutcome,
    stale: u32,
    unrendered: u32,
}

fn devices_text(n: u32) -> String {
    if n == 1 {
        "1 device".to_owned()
    } else {
        format!("{n} devices")
    }
}

/// The running batch wrote the revision to no device: the rollout pauses, and `resume` starts
/// the batch again (`RolloutState::act`). Reason `unreachable` when stale devices could still
/// be reached (or none was there to take) but none was within the batch timeout; reason
/// `parameters` when every device the batch could take failed to render its parameters.
fn pause_unwritten(st: &mut RolloutState, plan: &Plan, u: Unwritten, events: &mut Vec<NewEvent>) {
    let target = st.target_revision;
    let k = st.batches.len().saturating_sub(1);
    let batches = st.planned.as_ref().map_or(0, Vec::len);
    let failed_to_render = |n: u32| {
        let whose = if n == 1 { "its" } else { "their" };
        format!("{} failed to render {whose} parameters", devices_text(n))
    };
    let (code, reason) = if u.stale == 0 && u.unrendered > 0 {
        let reason = format!(
            "batch {} of {}: the revision was written to no device of the batch: {} \
             (ParameterMissing or ParameterInvalid), no other device is waiting, and no device \
             has converged on revision {} yet; fix the devices' labels or the fleet's \
             parameters, then resume to start the batch again",
            k + 1,
            batches,
            failed_to_render(u.unrendered),
            target
        );
        (PauseCause::Parameters, reason)
    } else {
        let also = if u.unrendered > 0 {
            format!(", {}", failed_to_render(u.unrendered))
        } else {
            String::new()
        };
        let reason = format!(
            "batch {} of {}: no device of the batch was reachable within {} s ({} stale devices \
             waiting{}, and no device has converged on revision {} yet); resume starts the \
             batch again",
            k + 1,
            batches,
            plan.batch_timeout.whole_seconds(),
            u.stale,
            also,
            target
        );
        (PauseCause::Unreachable, reason)
    };
    st.phase = RolloutPhase::Paused;
    st.pause_reason = Some(reason.clone());
    st.paused_unwritten = true;
    events.push(NewEvent::new(
        EventType::RolloutPaused,
        serde_json::json!({"revision": target, "reason": code.as_str(), "batch": k,
            "devices": u.outcome.devices, "succeeded": 0, "failed": 0, "pending": 0,
            "deferred": u.outcome.deferred, "stale": u.stale,
            "parameterErrors": u.unrendered, "message": reason}),
    ));
}

fn count(devs: &[Device], k: usize, target: u64) -> BatchOutcome {
    let mut outcome = BatchOutcome::default();
    for d in devs.iter().filter(|d| in_batch(d, k, target)) {
        outcome.devices += 1;
        match d.state {
            D::Succeeded => outcome.succeeded += 1,
            D::Failed => outcome.failed += 1,
            D::Updating | D::Pending => outcome.pending += 1,
            D::Deferred => outcome.deferred += 1,
            _ => {}
        }
    }
    outcome
}

fn complete(st: &mut RolloutState, events: &mut Vec<NewEvent>) {
    st.phase = RolloutPhase::Completed;
    st.good_revision = Some(st.target_revision);
    st.pause_reason = None;
    events.push(NewEvent::new(
        EventType::RolloutCompleted,
        serde_json::json!({"revision": st.target_revision, "batches": st.batches.len()}),
    ));
}

/// The manifests the state and rows call for.
fn writes(st: &RolloutState, devs: &[Device]) -> Vec<Write> {
    let target = st.target_revision;
    let mut writes = Vec::new();
    for d in devs {
        let write = |revision: u64, batch: Option<u32>| Write {
            agent_id: d.agent_id.clone(),
            revision,
            batch,
        };
        let on_target = d.revision_rendered == Some(target);
        match st.phase {
            RolloutPhase::Completed | RolloutPhase::RolledBack => {
                // A deferred device stays so, visibly, until it reports again.
                if !(on_target || d.state == D::Deferred && d.stale) {
                    writes.push(write(target, None));
                }
                continue;
            }
            RolloutPhase::Progressing | RolloutPhase::WaitingApproval if !on_target => {
                let assigned = d.batch.is_some() && d.state_revision == Some(target);
                if assigned && d.state == D::Pending
                    || assigned && d.state == D::Deferred && !d.stale
                {
                    writes.push(write(target, d.batch));
                    continue;
                }
            }
            _ => {}
        }
        // A device newly selected gets the last good revision at once.
        if let Some(good) = st.good_revision
            && d.revision_rendered.is_none()
            && d.batch.is_none()
            && !(parameter_error(d.state) && d.state_revision == Some(good))
        {
            writes.push(write(good, None));
        }
    }
    writes
}
