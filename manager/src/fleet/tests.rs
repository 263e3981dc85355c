//! Tests of an agent's fleet state: unknown, converged, progressing, degraded, rolled back and stale.

use super::*;

const INTERVAL: Duration = Duration::from_secs(30);

fn now() -> OffsetDateTime {
    time::macros::datetime!(2026-11-22 10:00 UTC)
}

fn counts(entries: &[(Phase, u32)]) -> PhaseCounts {
    entries.iter().copied().collect()
}

fn reported(observed: u64, counts: &PhaseCounts, seconds_ago: i64) -> StateInputs<'_> {
    StateInputs {
        desired_generation: 3,
        last_seen_at: Some(now() - time::Duration::seconds(seconds_ago)),
        observed_generation: Some(observed),
        counts,
        manifest_rejected: false,
        rolled_back: false,
    }
}

#[test]
fn an_agent_that_never_reported_is_unknown() {
    let none = counts(&[]);
    let inputs = StateInputs {
        desired_generation: 3,
        last_seen_at: None,
        observed_generation: None,
        counts: &none,
        manifest_rejected: false,
        rolled_back: false,
    };
    assert_eq!(derive_state(inputs, now(), INTERVAL), FleetState::Unknown);
}

#[test]
fn all_ready_at_the_desired_generation_is_converged() {
    let ready = counts(&[(Phase::Ready, 4)]);
    assert_eq!(
        derive_state(reported(3, &ready, 5), now(), INTERVAL),
        FleetState::Converged
    );
}

#[test]
fn an_older_observed_generation_is_progressing() {
    let ready = counts(&[(Phase::Ready, 4)]);
    assert_eq!(
        derive_state(reported(2, &ready, 5), now(), INTERVAL),
        FleetState::Progressing
    );
}

#[test]
fn a_reconciling_resource_is_progressing() {
    let mixed = counts(&[(Phase::Ready, 3), (Phase::Reconciling, 1)]);
    assert_eq!(
        derive_state(reported(3, &mixed, 5), now(), INTERVAL),
        FleetState::Progressing
    );
}

#[test]
fn a_failed_or_unsupported_resource_is_degraded() {
    for phase in [Phase::Failed, Phase::Unsupported] {
        let mixed = counts(&[(Phase::Ready, 3), (phase, 1)]);
        assert_eq!(
            derive_state(reported(3, &mixed, 5), now(), INTERVAL),
            FleetState::Degraded
        );
    }
}

#[test]
fn a_rejected_manifest_is_degraded() {
    let ready = counts(&[(Phase::Ready, 4)]);
    let mut inputs = reported(2, &ready, 5);
    inputs.manifest_rejected = true;
    assert_eq!(derive_state(inputs, now(), INTERVAL), FleetState::Degraded);
}

#[test]
fn a_rolled_back_agent_is_rolled_back_even_with_everything_ready() {
    // While rolled back the agent reports the bad generation as its manifest generation and
    // the good one as observed; its resources are the good generation's, all Ready.
    let ready = counts(&[(Phase::Ready, 4)]);
    let mut inputs = reported(2, &ready, 5);
    inputs.rolled_back = true;
    assert_eq!(
        derive_state(inputs, now(), INTERVAL),
        FleetState::RolledBack
    );
}

#[test]
fn a_rollback_wins_over_degraded_and_over_converged() {
    let failed = counts(&[(Phase::Ready, 3), (Phase::Failed, 1)]);
    let mut inputs = reported(3, &failed, 5);
    inputs.rolled_back = true;
    inputs.manifest_rejected = true;
    assert_eq!(
        derive_state(inputs, now(), INTERVAL),
        FleetState::RolledBack
    );
    let ready = counts(&[(Phase::Ready, 4)]);
    let mut inputs = reported(3, &ready, 5);
    inputs.rolled_back = true;
    assert_eq!(
        derive_state(inputs, now(), INTERVAL),
        FleetState::RolledBack
    );
}

#[test]
fn staleness_wins_over_a_rollback() {
    let ready = counts(&[(Phase::Ready, 4)]);
    let mut inputs = reported(2, &ready, 600);
    inputs.rolled_back = true;
    assert_eq!(derive_state(inputs, now(), INTERVAL), FleetState::Stale);
}

#[test]
fn a_rolled_back_summary_is_not_converged() {
    let row = FleetRow {
        agent_id: fleetlet_manifests::AgentId::try_from("pi-1").expect("agent id"),
        labels: std::collections::BTreeMap::new(),
        desired_generation: 2,
        last_seen_at: Some(now()),
        observed_generation: Some(2),
        counts: counts(&[(Phase::Ready, 2)]),
        manifest_rejected: false,
        rolled_back: true,
    };
    let summary = summarize(row.clone(), now(), INTERVAL);
    assert_eq!(summary.state, FleetState::RolledBack);
    assert!(!summary.converged);
    let summary = summarize(
        FleetRow {
            rolled_back: false,
            ..row
        },
        now(),
        INTERVAL,
    );
    assert_eq!(summary.state, FleetState::Converged);
    assert!(summary.converged);
}

#[test]
fn stale_after_three_missed_intervals_and_not_before() {
    let ready = counts(&[(Phase::Ready, 4)]);
    assert_eq!(
        derive_state(reported(3, &ready, 90), now(), INTERVAL),
        FleetState::Converged
    );
    assert_eq!(
        derive_state(reported(3, &ready, 91), now(), INTERVAL),
        FleetState::Stale
    );
}

#[test]
fn staleness_wins_over_degraded() {
    let failed = counts(&[(Phase::Failed, 1)]);
    assert_eq!(
        derive_state(reported(3, &failed, 600), now(), INTERVAL),
        FleetState::Stale
    );
}

#[test]
fn no_manifest_and_no_resources_is_converged() {
    let none = counts(&[]);
    let mut inputs = reported(0, &none, 1);
    inputs.desired_generation = 0;
    assert_eq!(derive_state(inputs, now(), INTERVAL), FleetState::Converged);
}
