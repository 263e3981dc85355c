//! Unit tests of the rollout state machine: batches, thresholds, approval, timeouts, deferral,
//! batches nobody could be reached in, rollback. Batches written to no device (parameters that
//! do not render, stale devices coming back) are in `tests/unwritten.rs`.

use fleetlet_manifests::api::EventType;
use fleetlet_manifests::fleet_api::{DeviceRolloutState as D, RolloutAction, RolloutPhase};
use fleetlet_manifests::{AgentId, Phase};
use time::OffsetDateTime;

use super::state::RolloutState;
use super::step::{Device, Plan, Seen, observe, step};
use crate::store::fleets::DeviceHealth;

mod unwritten;

fn t0() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("a valid time")
}

fn plan(sizes: &[usize], threshold: f64, approval: bool) -> Plan {
    Plan {
        sizes: sizes.to_vec(),
        threshold_percent: threshold,
        batch_timeout: time::Duration::seconds(60),
        require_approval: approval,
    }
}

fn devices(n: usize) -> Vec<Device> {
    (0..n)
        .map(|i| Device {
            agent_id: AgentId::try_from(format!("dev-{i:02}").as_str()).expect("a valid id"),
            state: D::Pending,
            revision_rendered: None,
            state_revision: None,
            batch: None,
            detail: None,
            stale: false,
            seen: Seen::Working,
        })
        .collect()
}

/// Applies a step's updates and writes to the rows, as the controller and store do.
fn apply(devs: &mut [Device], s: &super::step::Step) {
    for u in &s.updates {
        let d = devs
            .iter_mut()
            .find(|d| d.agent_id == u.agent_id)
            .expect("a known device");
        d.state = u.state;
        d.state_revision = u.state_revision;
        d.batch = u.batch;
        d.detail = u.detail.clone();
    }
    for w in &s.writes {
        let d = devs
            .iter_mut()
            .find(|d| d.agent_id == w.agent_id)
            .expect("a known device");
        d.revision_rendered = Some(w.revision);
        d.state = D::Updating;
        d.state_revision = Some(w.revision);
        d.batch = w.batch;
        d.seen = Seen::Working;
    }
}

fn types(s: &super::step::Step) -> Vec<EventType> {
    s.events.iter().map(|e| e.type_).collect()
}

#[test]
fn batches_go_out_in_order_and_complete() {
    let plan = plan(&[1, 2, 3], 100.0, false);
    let mut devs = devices(6);
    let mut st = RolloutState::first(1);
    let s = step(&st, &plan, &devs, t0());
    assert_eq!(types(&s), [EventType::RolloutBatchStarted]);
    assert_eq!(s.writes.len(), 1, "only the canary is written");
    assert_eq!(s.writes[0].agent_id.as_str(), "dev-00");
    apply(&mut devs, &s);
    st = s.state;
    // Nothing converged yet: nothing more is written.
    let s = step(&st, &plan, &devs, t0());
    assert!(s.writes.is_empty());
    devs[0].seen = Seen::Converged;
    let s = step(&st, &plan, &devs, t0());
    assert_eq!(types(&s), [EventType::RolloutBatchStarted]);
    let written: Vec<&str> = s.writes.iter().map(|w| w.agent_id.as_str()).collect();
    assert_eq!(written, ["dev-01", "dev-02"]);
    apply(&mut devs, &s);
    st = s.state;
    for d in &mut devs[1..3] {
        d.seen = Seen::Converged;
    }
    let s = step(&st, &plan, &devs, t0());
    assert_eq!(s.writes.len(), 3);
    apply(&mut devs, &s);
    st = s.state;
    for d in &mut devs[3..] {
        d.seen = Seen::Converged;
    }
    let s = step(&st, &plan, &devs, t0());
    assert_eq!(types(&s), [EventType::RolloutCompleted]);
    assert_eq!(s.state.phase, RolloutPhase::Completed);
    assert_eq!(s.state.good_revision, Some(1));
}

#[test]
fn a_failed_canary_pauses_with_no_other_device_written() {
    let plan = plan(&[1, 2, 3], 100.0, false);
    let mut devs = devices(6);
    let s = step(&RolloutState::first(1), &plan, &devs, t0());
    apply(&mut devs, &s);
    devs[0].seen = Seen::Failed("a resource failed".into());
    let s = step(&s.state, &plan, &devs, t0());
    assert_eq!(s.state.phase, RolloutPhase::Paused);
    assert!(s.writes.is_empty());
    assert_eq!(types(&s), [EventType::RolloutPaused]);
    assert_eq!(s.events[0].payload["failed"], 1);
    assert_eq!(s.events[0].payload["succeeded"], 0);
    let reason = s.state.pause_reason.clone().expect("as expected");
    assert!(
        reason.contains("0 of 1 devices succeeded, 1 failed"),
        "{reason}"
    );
    apply(&mut devs, &s);
    // Paused: later steps write nothing either.
    let again = step(&s.state, &plan, &devs, t0() + time::Duration::hours(1));
    assert!(again.writes.is_empty());
    assert_eq!(again.state.phase, RolloutPhase::Paused);
}

#[test]
fn a_batch_that_times_out_fails_its_unconverged_devices() {
    let plan = plan(&[1, 5], 100.0, false);
    let mut devs = devices(3);
    let s = step(&RolloutState::first(1), &plan, &devs, t0());
    apply(&mut devs, &s);
    let s = step(&s.state, &plan, &devs, t0() + time::Duration::seconds(61));
    assert_eq!(s.state.phase, RolloutPhase::Paused);
    let failed = s
        .updates
        .iter()
        .find(|d| d.agent_id.as_str() == "dev-00")
        .expect("as expected");
    assert_eq!(failed.state, D::Failed);
    assert!(
        failed
            .detail
            .as_deref()
            .expect("as expected")
            .contains("60 s")
    );
}

#[test]
fn approval_holds_the_next_batch() {
    let plan = plan(&[1, 5], 100.0, true);
    let mut devs = devices(3);
    let s = step(&RolloutState::first(1), &plan, &devs, t0());
    apply(&mut devs, &s);
    devs[0].seen = Seen::Converged;
    let s = step(&s.state, &plan, &devs, t0());
    assert_eq!(s.state.phase, RolloutPhase::WaitingApproval);
    assert!(s.writes.is_empty());
    let waiting = s.state.clone();
    apply(&mut devs, &s);
    let (approved, events) = s.state.act(RolloutAction::Approve).expect("as expected");
    assert_eq!(events[0].type_, EventType::RolloutResumed);
    let s = step(&approved, &plan, &devs, t0());
    assert_eq!(s.writes.len(), 2);
    assert!(approved.act(RolloutAction::Approve).is_err());
    // Paused while waiting, a resume waits for approval again.
    let (paused, _) = waiting.act(RolloutAction::Pause).expect("as expected");
    let (resumed, _) = paused.act(RolloutAction::Resume).expect("as expected");
    assert_eq!(resumed.phase, RolloutPhase::WaitingApproval);
}

#[test]
fn actions_apply_only_to_their_phases() {
    let st = RolloutState::first(1);
    assert!(st.act(RolloutAction::Resume).is_err());
    assert!(st.act(RolloutAction::Approve).is_err());
    let err = st.act(RolloutAction::Rollback).expect_err("refused");
    assert!(err.to_string().contains("no earlier revision"), "{err}");
    let (paused, _) = st.act(RolloutAction::Pause).expect("as expected");
    assert!(paused.act(RolloutAction::Pause).is_err());
    let (resumed, _) = paused.act(RolloutAction::Resume).expect("as expected");
    assert_eq!(resumed.phase, RolloutPhase::Progressing);
    let (aborted, _) = resumed.act(RolloutAction::Abort).expect("as expected");
    for action in [
        RolloutAction::Pause,
        RolloutAction::Resume,
        RolloutAction::Approve,
        RolloutAction::Abort,
    ] {
        assert!(aborted.act(action).is_err(), "{action:?}");
    }
}

#[test]
fn rollback_sends_the_good_revision_to_devices_that_got_the_bad_one() {
    let plan = plan(&[1, 5], 100.0, false);
    let mut devs = devices(3);
    for d in &mut devs {
        d.revision_rendered = Some(1);
        d.state = D::Succeeded;
        d.state_revision = Some(1);
    }
    let mut done = RolloutState::first(1);
    done.phase = RolloutPhase::Completed;
    done.good_revision = Some(1);
    let st = done.superseded(2);
    let s = step(&st, &plan, &devs, t0());
    assert_eq!(s.writes.len(), 1);
    apply(&mut devs, &s);
    devs[0].seen = Seen::Failed("rolled back".into());
    let s = step(&s.state, &plan, &devs, t0());
    assert_eq!(s.state.phase, RolloutPhase::Paused);
    apply(&mut devs, &s);
    let (rolled, events) = s.state.act(RolloutAction::Rollback).expect("as expected");
    assert_eq!(events[0].type_, EventType::RolloutRolledBack);
    let s = step(&rolled, &plan, &devs, t0());
    let written: Vec<(&str, u64)> = s
        .writes
        .iter()
        .map(|w| (w.agent_id.as_str(), w.revision))
        .collect();
    assert_eq!(written, [("dev-00", 1)]);
    // The others never left revision 1 and are not written again.
    let others = s.updates.iter().filter(|d| d.agent_id.as_str() != "dev-00");
    assert!(
        others.clone().all(|d| d.state == D::Updating),
        "{:?}",
        s.updates
    );
}

#[test]
fn a_stale_device_is_deferred_and_written_when_it_returns() {
    let plan = plan(&[1, 5], 100.0, false);
    let mut devs = devices(3);
    devs[0].stale = true;
    let s = step(&RolloutState::first(1), &plan, &devs, t0());
    let written: Vec<&str> = s.writes.iter().map(|w| w.agent_id.as_str()).collect();
    assert_eq!(
        written,
        ["dev-01"],
        "the stale device takes no slot of the canary"
    );
    apply(&mut devs, &s);
    assert_eq!(devs[0].state, D::Deferred);
    devs[1].seen = Seen::Converged;
    let s = step(&s.state, &plan, &devs, t0());
    assert_eq!(
        s.writes.len(),
        1,
        "the rest goes on without the stale device"
    );
    apply(&mut devs, &s);
    devs[2].seen = Seen::Converged;
    let s = step(&s.state, &plan, &devs, t0());
    assert_eq!(s.state.phase, RolloutPhase::Completed);
    apply(&mut devs, &s);
    devs[0].stale = false;
    let s = step(&s.state, &plan, &devs, t0());
    let written: Vec<&str> = s.writes.iter().map(|w| w.agent_id.as_str()).collect();
    assert_eq!(written, ["dev-00"]);
}

#[test]
fn a_paused_rollout_does_not_write_a_returning_deferred_device() {
    let plan = plan(&[1, 5], 100.0, false);
    let mut devs = devices(2);
    devs[0].stale = true;
    let s = step(&RolloutState::first(1), &plan, &devs, t0());
    apply(&mut devs, &s);
    let (paused, _) = s.state.act(RolloutAction::Pause).expect("as expected");
    devs[0].stale = false;
    let s = step(&paused, &plan, &devs, t0());
    assert!(s.writes.is_empty());
}

#[test]
fn a_newly_selected_device_gets_the_good_revision_at_once() {
    let plan = plan(&[1, 5], 100.0, false);
    let mut done = RolloutState::first(1);
    done.phase = RolloutPhase::Completed;
    done.good_revision = Some(1);
    let devs = devices(1);
    let s = step(&done, &plan, &devs, t0());
    assert_eq!(s.writes[0].revision, 1);
    // During the next revision's paused rollout too.
    let (paused, _) = done
        .superseded(2)
        .act(RolloutAction::Pause)
        .expect("as expected");
    let s = step(&paused, &plan, &devs, t0());
    assert_eq!(s.writes.len(), 1);
    assert_eq!(s.writes[0].revision, 1);
}

#[test]
fn a_conflicted_device_is_left_alone() {
    let plan = plan(&[5], 100.0, false);
    let mut devs = devices(2);
    devs[0].state = D::Conflict;
    let s = step(&RolloutState::first(1), &plan, &devs, t0());
    let written: Vec<&str> = s.writes.iter().map(|w| w.agent_id.as_str()).collect();
    assert_eq!(written, ["dev-01"]);
    assert!(s.updates.iter().all(|d| d.agent_id.as_str() != "dev-00"));
}

#[test]
fn observation_reads_generations_and_failures() {
    let mut health = DeviceHealth {
        desired_generation: 4,
        manifest_generation: Some(3),
        observed_generation: Some(3),
        ..DeviceHealth::default()
    };
    health.counts.insert(Phase::Ready, 2);
    assert_eq!(observe(4, &health), Seen::Working);
    health.manifest_generation = Some(4);
    health.observed_generation = Some(4);
    assert_eq!(observe(4, &health), Seen::Converged);
    health.counts.insert(Phase::Failed, 1);
    assert!(matches!(observe(4, &health), Seen::Failed(_)));
    health.counts.remove(&Phase::Failed);
    health.observed_generation = Some(3);
    health.rolled_back = true;
    assert!(matches!(observe(4, &health), Seen::Failed(_)));
}

#[test]
fn a_new_revision_supersedes_a_paused_rollout() {
    let (paused, _) = RolloutState::first(1)
        .act(RolloutAction::Pause)
        .expect("as expected");
    let next = paused.superseded(2);
    assert_eq!(next.phase, RolloutPhase::Progressing);
    assert_eq!(next.target_revision, 2);
    assert!(next.batches.is_empty() && next.pause_reason.is_none());
}

fn written(s: &super::step::Step) -> Vec<&str> {
    s.writes.iter().map(|w| w.agent_id.as_str()).collect()
}

fn row<'a>(devs: &'a [Device], id: &str) -> &'a Device {
    devs.iter()
        .find(|d| d.agent_id.as_str() == id)
        .expect("a known device")
}

#[test]
fn a_canary_of_stale_devices_neither_passes_nor_completes_the_rollout() {
    let plan = plan(&[1, 5], 100.0, false);
    let mut devs = devices(3);
    for d in &mut devs {
        d.stale = true;
    }
    let s = step(&RolloutState::first(1), &plan, &devs, t0());
    assert_eq!(types(&s), [EventType::RolloutBatchStarted]);
    assert!(s.writes.is_empty(), "{:?}", s.writes);
    apply(&mut devs, &s);
    let mut st = s.state;
    // Steps go by inside the batch timeout: the canary waits, nothing is written, nothing ends.
    for seconds in [1, 10, 30, 59] {
        let s = step(&st, &plan, &devs, t0() + time::Duration::seconds(seconds));
        assert!(s.writes.is_empty(), "{:?}", s.writes);
        assert!(s.events.is_empty(), "{:?}", types(&s));
        assert_eq!(s.state.phase, RolloutPhase::Progressing);
        assert_eq!(s.state.batches.len(), 1, "still the canary");
        assert_eq!(s.state.batches[0].outcome, None);
        apply(&mut devs, &s);
        st = s.state;
    }
    assert!(
        devs.iter()
            .all(|d| d.state == D::Deferred && d.batch.is_none())
    );
    // One device comes back at 50 s: the canary takes it, and gives it a whole timeout.
    devs[2].stale = false;
    let back = t0() + time::Duration::seconds(50);
    let s = step(&st, &plan, &devs, back);
    assert_eq!(written(&s), ["dev-02"]);
    assert_eq!(s.writes[0].batch, Some(0));
    apply(&mut devs, &s);
    let s = step(&s.state, &plan, &devs, back + time::Duration::seconds(59));
    assert_eq!(s.state.phase, RolloutPhase::Progressing);
    assert!(s.updates.is_empty(), "not failed: {:?}", s.updates);
    st = s.state;
    devs[2].seen = Seen::Converged;
    let s = step(&st, &plan, &devs, back + time::Duration::seconds(59));
    // It converged: the rest, stale, stalls nothing and gets the revision when back.
    assert_eq!(types(&s), [EventType::RolloutBatchStarted]);
    assert_eq!(s.events[0].payload["deferred"], 2);
    assert!(s.writes.is_empty());
    apply(&mut devs, &s);
    let s = step(&s.state, &plan, &devs, back + time::Duration::seconds(60));
    assert_eq!(types(&s), [EventType::RolloutCompleted]);
    assert!(s.writes.is_empty());
}

#[test]
fn stale_devices_are_left_for_a_later_batch_while_devices_in_contact_wait() {
    let plan = plan(&[1, 1, 5], 100.0, false);
    let mut devs = devices(4);
    devs[0].stale = true;
    devs[1].stale = true;
    let s = step(&RolloutState::first(1), &plan, &devs, t0());
    assert_eq!(written(&s), ["dev-02"]);
    assert_eq!(s.events[0].payload["devices"], 1);
    apply(&mut devs, &s);
    for id in ["dev-00", "dev-01"] {
        let d = row(&devs, id);
        assert_eq!(
            (d.state, d.batch),
            (D::Deferred, None),
            "{id} is in no batch"
        );
    }
    devs[2].seen = Seen::Converged;
    let s = step(&s.state, &plan, &devs, t0());
    assert_eq!(
        written(&s),
        ["dev-03"],
        "the second batch takes the device in contact"
    );
    apply(&mut devs, &s);
    devs[3].seen = Seen::Converged;
    let s = step(&s.state, &plan, &devs, t0());
    // The last batch takes the stale devices; they are written when they come back.
    assert_eq!(types(&s), [EventType::RolloutBatchStarted]);
    assert_eq!(s.events[0].payload["deferred"], 2);
    assert!(s.writes.is_empty());
    apply(&mut devs, &s);
    assert_eq!(row(&devs, "dev-00").batch, Some(2));
    let s = step(&s.state, &plan, &devs, t0());
    assert_eq!(types(&s), [EventType::RolloutCompleted]);
    apply(&mut devs, &s);
    devs[1].stale = false;
    let s = step(&s.state, &plan, &devs, t0());
    assert_eq!(written(&s), ["dev-01"]);
}

#[test]
fn a_batch_nobody_reached_pauses_at_its_timeout_and_resume_starts_it_again() {
    let plan = plan(&[1, 5], 100.0, false);
    let mut devs = devices(2);
    for d in &mut devs {
        d.stale = true;
    }
    let s = step(&RolloutState::first(1), &plan, &devs, t0());
    apply(&mut devs, &s);
    let s = step(&s.state, &plan, &devs, t0() + time::Duration::seconds(60));
    assert_eq!(s.state.phase, RolloutPhase::Paused);
    assert!(s.writes.is_empty());
    assert_eq!(types(&s), [EventType::RolloutPaused]);
    let payload = &s.events[0].payload;
    assert_eq!(payload["reason"], "unreachable", "{payload}");
    assert_eq!(payload["batch"], 0, "{payload}");
    assert_eq!(payload["stale"], 2, "{payload}");
    let reason = s.state.pause_reason.clone().expect("a reason");
    assert!(
        reason.contains("batch 1 of 2: no device of the batch was reachable within 60 s"),
        "{reason}"
    );
    apply(&mut devs, &s);
    // Back while paused: nothing is written.
    for d in &mut devs {
        d.stale = false;
    }
    let paused = step(&s.state, &plan, &devs, t0() + time::Duration::seconds(90));
    assert!(paused.writes.is_empty());
    // Resumed, the canary starts again with a device in contact, not the next batch.
    let (resumed, _) = s.state.act(RolloutAction::Resume).expect("resumable");
    let later = t0() + time::Duration::seconds(120);
    let s = step(&resumed, &plan, &devs, later);
    assert_eq!(types(&s), [EventType::RolloutBatchStarted]);
    assert_eq!(s.events[0].payload["batch"], 0);
    assert_eq!(written(&s), ["dev-00"]);
    assert_eq!(s.state.batches.len(), 1);
    assert_eq!(s.state.batches[0].started_at, later);
    apply(&mut devs, &s);
    devs[0].seen = Seen::Converged;
    let s = step(&s.state, &plan, &devs, later);
    assert_eq!(written(&s), ["dev-01"]);
}

#[test]
fn once_a_device_converged_batches_of_stale_devices_pass() {
    let plan = plan(&[1, 1, 5], 100.0, false);
    let mut devs = devices(3);
    devs[1].stale = true;
    devs[2].stale = true;
    let s = step(&RolloutState::first(1), &plan, &devs, t0());
    assert_eq!(written(&s), ["dev-00"]);
    apply(&mut devs, &s);
    devs[0].seen = Seen::Converged;
    let mut st = s.state;
    let mut events = Vec::new();
    for _ in 0..4 {
        let s = step(&st, &plan, &devs, t0());
        assert!(s.writes.is_empty(), "{:?}", s.writes);
        events.extend(types(&s));
        apply(&mut devs, &s);
        st = s.state;
    }
    assert_eq!(st.phase, RolloutPhase::Completed, "{events:?}");
    assert_eq!(
        events,
        [
            EventType::RolloutBatchStarted,
            EventType::RolloutBatchStarted,
            EventType::RolloutCompleted
        ]
    );
    devs[2].stale = false;
    let s = step(&st, &plan, &devs, t0());
    assert_eq!(written(&s), ["dev-02"]);
}
