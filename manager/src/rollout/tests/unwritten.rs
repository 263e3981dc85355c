//! Unit tests of batches that wrote the revision to no device: devices whose parameters do not
//! render, stale devices that come back, and what `resume` and a new revision do after them.

use fleetlet_manifests::api::EventType;
use fleetlet_manifests::fleet_api::{DeviceRolloutState as D, RolloutAction, RolloutPhase};

use super::super::state::RolloutState;
use super::super::step::{Device, Seen, Step, step};
use super::{apply, devices, plan, t0, types, written};

/// Applies a step as the controller does when the devices named in `broken` do not render:
/// they get `ParameterMissing` for the written revision and batch, and keep their manifest.
fn apply_rendering(devs: &mut [Device], s: &Step, broken: &[&str]) {
    let (fails, renders): (Vec<_>, Vec<_>) = s
        .writes
        .iter()
        .cloned()
        .partition(|w| broken.contains(&w.agent_id.as_str()));
    let rendered = Step {
        writes: renders,
        ..s.clone()
    };
    apply(devs, &rendered);
    for w in fails {
        let d = devs
            .iter_mut()
            .find(|d| d.agent_id == w.agent_id)
            .expect("a known device");
        d.state = D::ParameterMissing;
        d.state_revision = Some(w.revision);
        d.batch = w.batch;
        d.detail = Some("parameter greeting has no value".to_owned());
    }
}

/// Steps at `t0` until the rollout leaves `Progressing` (at most `limit` steps): the state, the
/// devices written in order, and the events.
fn run(
    mut st: RolloutState,
    devs: &mut [Device],
    broken: &[&str],
    limit: usize,
) -> (RolloutState, Vec<String>, Vec<crate::store::NewEvent>) {
    let plan = plan(&[1, 5], 100.0, false);
    let (mut tried, mut events) = (Vec::new(), Vec::new());
    for _ in 0..limit {
        let s = step(&st, &plan, devs, t0());
        tried.extend(written(&s).into_iter().map(str::to_owned));
        events.extend(s.events.iter().cloned());
        apply_rendering(devs, &s, broken);
        st = s.state;
        if st.phase != RolloutPhase::Progressing {
            break;
        }
    }
    (st, tried, events)
}

const ALL: [&str; 3] = ["dev-00", "dev-01", "dev-02"];

#[test]
fn a_fleet_none_of_whose_devices_renders_pauses_instead_of_completing() {
    let mut devs = devices(3);
    let (st, tried, events) = run(RolloutState::first(1), &mut devs, &ALL, 10);
    assert_eq!(st.phase, RolloutPhase::Paused, "{st:?}");
    assert_eq!(st.good_revision, None, "nothing completed");
    assert_eq!(tried, ALL, "the canary tried each device in turn");
    let kinds: Vec<EventType> = events.iter().map(|e| e.type_).collect();
    assert_eq!(
        kinds,
        [EventType::RolloutBatchStarted, EventType::RolloutPaused]
    );
    let payload = &events[1].payload;
    assert_eq!(payload["reason"], "parameters", "{payload}");
    assert_eq!(payload["batch"], 0, "{payload}");
    assert_eq!(payload["parameterErrors"], 3, "{payload}");
    assert_eq!(payload["stale"], 0, "{payload}");
    assert_eq!(payload["devices"], 3, "{payload}");
    let reason = st.pause_reason.clone().expect("a pause reason");
    assert!(
        reason.contains("batch 1 of 2: the revision was written to no device of the batch: 3 devices failed to render their parameters"),
        "{reason}"
    );
    assert!(reason.contains("fix the devices' labels or the fleet's parameters, then resume"));
    assert!(
        devs.iter()
            .all(|d| d.state == D::ParameterMissing && d.revision_rendered.is_none())
    );
    // Paused: nothing more is tried.
    let s = step(&st, &plan(&[1, 5], 100.0, false), &devs, t0());
    assert!(s.writes.is_empty() && s.events.is_empty(), "{:?}", s.writes);

    // Resumed without a fix: the batch starts again, tries them again, and pauses again.
    let (resumed, _) = st.act(RolloutAction::Resume).expect("resumable");
    let (st, tried, events) = run(resumed, &mut devs, &ALL, 10);
    assert_eq!(st.phase, RolloutPhase::Paused);
    assert_eq!(tried, ALL);
    assert_eq!(
        events.last().expect("events").payload["reason"],
        "parameters"
    );
    assert_eq!(st.batches.len(), 1, "still the canary");

    // Labels fixed, resumed: the canary is written and judged, and the rollout goes on.
    let (resumed, _) = st.act(RolloutAction::Resume).expect("resumable");
    let plan = plan(&[1, 5], 100.0, false);
    let s = step(&resumed, &plan, &devs, t0());
    assert_eq!(written(&s), ["dev-00"]);
    apply(&mut devs, &s);
    devs[0].seen = Seen::Converged;
    let s = step(&s.state, &plan, &devs, t0());
    assert_eq!(types(&s), [EventType::RolloutBatchStarted]);
    assert_eq!(written(&s), ["dev-01", "dev-02"]);
}

#[test]
fn a_canary_that_did_not_render_waits_for_stale_devices_and_says_both() {
    let plan = plan(&[1, 5], 100.0, false);
    let mut devs = devices(2);
    devs[1].stale = true;
    let s = step(&RolloutState::first(1), &plan, &devs, t0());
    assert_eq!(written(&s), ["dev-00"]);
    apply_rendering(&mut devs, &s, &["dev-00"]);
    let s = step(&s.state, &plan, &devs, t0() + time::Duration::seconds(59));
    assert!(
        s.events.is_empty() && s.writes.is_empty(),
        "{:?}",
        types(&s)
    );
    let s = step(&s.state, &plan, &devs, t0() + time::Duration::seconds(60));
    assert_eq!(s.state.phase, RolloutPhase::Paused);
    let payload = &s.events[0].payload;
    assert_eq!(payload["reason"], "unreachable", "{payload}");
    assert_eq!(
        (&payload["stale"], &payload["parameterErrors"]),
        (&1.into(), &1.into())
    );
    let reason = s.state.pause_reason.expect("a pause reason");
    assert!(
        reason.contains("1 device failed to render its parameters"),
        "{reason}"
    );
    assert!(reason.contains("resume starts the batch again"), "{reason}");
}

#[test]
fn a_revision_after_one_nobody_could_render_tries_its_devices_again() {
    let mut devs = devices(2);
    let (st, _, _) = run(RolloutState::first(1), &mut devs, &ALL, 10);
    assert_eq!(st.phase, RolloutPhase::Paused);
    // Revision 2, still broken: each device is tried for it, then the rollout pauses again.
    let (st, tried, events) = run(st.superseded(2), &mut devs, &ALL, 10);
    assert_eq!(tried, ["dev-00", "dev-01"]);
    assert_eq!(st.phase, RolloutPhase::Paused);
    let payload = &events.last().expect("events").payload;
    assert_eq!(payload["reason"], "parameters", "{payload}");
    assert_eq!(payload["parameterErrors"], 2, "{payload}");
    // Revision 3 (the labels fixed, or the parameters): its canary is one of those devices.
    let (st, tried, _) = run(st.superseded(3), &mut devs, &[], 1);
    assert_eq!(tried, ["dev-00"]);
    assert_eq!(st.phase, RolloutPhase::Progressing);
    assert_eq!(devs[0].revision_rendered, Some(3));
}

#[test]
fn a_last_batch_of_stale_devices_that_come_back_waits_for_them_to_converge() {
    let plan = plan(&[5], 100.0, false);
    let mut devs = devices(2);
    for d in &mut devs {
        d.stale = true;
    }
    let s = step(&RolloutState::first(1), &plan, &devs, t0());
    assert_eq!(s.events[0].payload["deferred"], 2);
    apply(&mut devs, &s);
    for d in &mut devs {
        d.stale = false;
    }
    let s = step(&s.state, &plan, &devs, t0() + time::Duration::seconds(1));
    assert_eq!(written(&s), ["dev-00", "dev-01"]);
    assert_eq!(s.state.phase, RolloutPhase::Progressing, "{:?}", types(&s));
    apply(&mut devs, &s);
    let s = step(&s.state, &plan, &devs, t0() + time::Duration::seconds(2));
    assert!(
        s.events.is_empty(),
        "judged only when they report: {:?}",
        types(&s)
    );
    for d in &mut devs {
        d.seen = Seen::Converged;
    }
    let s = step(&s.state, &plan, &devs, t0() + time::Duration::seconds(3));
    assert_eq!(types(&s), [EventType::RolloutCompleted]);
}

#[test]
fn once_a_device_converged_a_batch_nobody_renders_for_passes() {
    let plan = plan(&[1, 1], 100.0, false);
    let mut devs = devices(2);
    let s = step(&RolloutState::first(1), &plan, &devs, t0());
    apply(&mut devs, &s);
    devs[0].seen = Seen::Converged;
    let s = step(&s.state, &plan, &devs, t0());
    assert_eq!(written(&s), ["dev-01"]);
    apply_rendering(&mut devs, &s, &["dev-01"]);
    let s = step(&s.state, &plan, &devs, t0());
    assert_eq!(types(&s), [EventType::RolloutCompleted]);
}
