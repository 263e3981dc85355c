//! Unit tests of `cli/src/wait.rs`.

use serde_json::json;

use super::*;

/// A status view of an agent whose manifest generation is `manifest` and observed `observed`,
/// in fleet state `state`, with a True RolledBack condition when `rolled_back`.
fn view(state: &str, manifest: u64, observed: u64, rolled_back: bool) -> StatusView {
    let conditions = if rolled_back {
        json!([{"type": "RolledBack", "status": "True", "reason": "ProgressDeadlineExceeded",
                "message": format!("generation {manifest} was not Ready within 3s; rolled back to generation {observed}"),
                "lastTransitionTime": "2026-11-22T10:00:00Z"}])
    } else {
        json!([])
    };
    serde_json::from_value(json!({
        "status": {
            "apiVersion": "fleetlet.dev/v1", "kind": "AgentStatus", "agentId": "pi-1",
            "reportSeq": 1, "manifestGeneration": manifest, "observedGeneration": observed,
            "observedAt": "2026-11-22T10:00:00Z",
            "agent": {"version": "0.1.0", "hostname": "h", "arch": "x86_64", "os": "linux",
                      "bootId": "b", "startedAt": "2026-11-22T09:00:00Z", "supportedKinds": []},
            "conditions": conditions, "resources": {},
        },
        "summary": {
            "agentId": "pi-1", "labels": {}, "state": state, "desiredGeneration": manifest,
            "observedGeneration": observed, "converged": state == "converged", "counts": {},
            "lastSeenAt": "2026-11-22T10:00:00Z",
        },
    }))
    .expect("valid status view")
}

#[test]
fn a_rollback_of_the_awaited_generation_ends_the_wait_with_its_message() {
    let outcome = outcome(&view("rolledBack", 2, 1, true), 2, true);
    let Outcome::RolledBack(message) = outcome else {
        panic!("expected a rollback, got {outcome:?}");
    };
    assert!(message.contains("generation 2"), "{message}");
    assert!(message.contains("generation 1"), "{message}");
}

#[test]
fn a_rollback_of_an_older_generation_keeps_waiting() {
    // Generation 3 was stored, but the agent still reports the rollback of generation 2.
    assert_eq!(
        outcome(&view("rolledBack", 2, 1, true), 3, true),
        Outcome::Waiting
    );
}

#[test]
fn a_failure_before_the_rollout_deadline_keeps_waiting() {
    // Degraded at the awaited generation: final without a rollout policy, but with one the
    // agent retries until the deadline and may still roll back or recover.
    let degraded = view("degraded", 2, 2, false);
    assert_eq!(outcome(&degraded, 2, false), Outcome::Failed);
    assert_eq!(outcome(&degraded, 2, true), Outcome::Waiting);
    // The deadline passed and the agent held the generation: now it failed.
    let mut held = degraded;
    if let Some(status) = held.status.as_mut() {
        status.conditions = serde_json::from_value(json!([{"type": "RolledBack",
            "status": "False", "reason": "HoldPolicy", "message": "generation 2 was not Ready",
            "lastTransitionTime": "2026-11-22T10:00:00Z"}]))
        .expect("conditions");
    }
    assert_eq!(outcome(&held, 2, true), Outcome::Failed);
}

#[test]
fn converged_on_the_awaited_generation_ends_the_wait() {
    assert_eq!(
        outcome(&view("converged", 3, 3, false), 3, false),
        Outcome::Converged
    );
}
