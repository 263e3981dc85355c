//! Unit tests of `cli/src/commands/rollout.rs`.

use serde_json::json;

use super::*;

/// A fleet in `phase` after its first of three batches, whose canary failed.
fn in_phase(phase: RolloutPhase) -> FleetView {
    let batches: Vec<serde_json::Value> = (0..3)
        .map(|index| {
            json!({"index": index, "devices": 1, "succeeded": 0, "failed": 1, "pending": 0,
                   "deferred": 0, "finished": index == 0})
        })
        .collect();
    serde_json::from_value(json!({
        "name": "kiosks", "fleet": {}, "revision": 2, "targetRevision": 2, "goodRevision": 1,
        "phase": phase.as_str(), "currentBatch": 0,
        "batches": batches,
        "pauseReason": "batch 1: 0 of 1 succeeded, 1 failed (threshold 100%)",
        "devices": {"Failed": 1}, "updatedAt": "2026-12-07T19:01:00Z"
    }))
    .expect("a valid fleet view")
}

#[test]
fn a_progressing_rollout_is_watched_on_and_a_completed_one_ends_it() {
    assert_eq!(
        watch_step(&in_phase(RolloutPhase::Progressing)),
        Watch::Continue
    );
    assert_eq!(
        watch_step(&in_phase(RolloutPhase::Completed)),
        Watch::Completed
    );
}

#[test]
fn each_stop_has_its_own_exit_status_and_says_why() {
    let Watch::Stopped(end, message) = watch_step(&in_phase(RolloutPhase::Paused)) else {
        panic!("a pause ends the watch");
    };
    assert_eq!(end.exit_code(), 3);
    assert!(message.contains("1 failed (threshold 100%)"), "{message}");
    let Watch::Stopped(end, message) = watch_step(&in_phase(RolloutPhase::WaitingApproval)) else {
        panic!("waiting for approval ends the watch");
    };
    assert_eq!(end.exit_code(), 5);
    assert!(message.contains("before batch 2/3"), "{message}");
    assert!(
        message.contains("fleetlet rollout approve kiosks"),
        "{message}"
    );
    let codes: Vec<u8> = [
        RolloutPhase::Paused,
        RolloutPhase::Aborted,
        RolloutPhase::WaitingApproval,
        RolloutPhase::RolledBack,
    ]
    .into_iter()
    .map(|phase| match watch_step(&in_phase(phase)) {
        Watch::Stopped(end, _) => end.exit_code(),
        other => panic!("{phase:?}: {other:?}"),
    })
    .collect();
    assert_eq!(codes, [3, 4, 5, 6]);
}
