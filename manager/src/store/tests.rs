//! Unit tests of the rules both stores share: the events a report causes, repair events, and
//! what degrades an agent.

use serde_json::json;

use super::*;

/// A report with one Ready file at `observed`, manifest generation `manifest`, and a
/// RolledBack condition with `rolled_back` as its status when given.
fn report(manifest: u64, observed: u64, rolled_back: Option<&str>) -> AgentStatus {
    let conditions: Vec<serde_json::Value> = rolled_back
        .map(|status| {
            json!({"type": "RolledBack", "status": status,
                   "reason": if status == "True" { "ProgressDeadlineExceeded" } else { "HoldPolicy" },
                   "message": "generation 2 was not Ready within 3s; rolled back to generation 1",
                   "lastTransitionTime": "2026-11-22T10:00:00Z"})
        })
        .into_iter()
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "fleetlet.dev/v1", "kind": "AgentStatus", "agentId": "pi-1",
        "reportSeq": 1, "manifestGeneration": manifest, "observedGeneration": observed,
        "observedAt": "2026-11-22T10:00:00Z",
        "agent": {"version": "0.1.0", "hostname": "h", "arch": "x86_64", "os": "linux",
                  "bootId": "b", "startedAt": "2026-11-22T09:00:00Z", "supportedKinds": []},
        "conditions": conditions,
        "resources": {"motd": {"kind": "File", "phase": "Ready",
                               "since": "2026-11-22T10:00:00Z", "generation": observed}},
    }))
    .expect("valid status")
}

#[test]
fn a_store_fault_or_a_rejected_manifest_degrades_the_agent_and_failed_resources_do_not_here() {
    let with = |type_: &str, status: &str, reason: &str| {
        let condition: fleetlet_manifests::Condition = serde_json::from_value(json!({
            "type": type_, "status": status, "reason": reason, "message": "m",
            "lastTransitionTime": "2026-11-22T10:00:00Z"}))
        .expect("condition");
        manifest_rejected(&[condition])
    };
    assert!(with("Degraded", "True", "DiskFull"));
    assert!(with("Degraded", "True", "StoreUnavailable"));
    assert!(with("ManifestRejected", "True", "InvalidManifest"));
    // Failed resources are counted by phase, not by this flag.
    assert!(!with("Degraded", "True", "ResourcesFailed"));
    assert!(!with("Degraded", "False", "NoFailures"));
    assert!(!with("ManifestRejected", "False", "Accepted"));
}

fn previous(observed: u64, rolled_back: bool) -> PreviousReport {
    PreviousReport {
        observed_generation: Some(observed),
        phases: BTreeMap::from([("motd".to_owned(), "Ready".to_owned())]),
        rolled_back,
        ..PreviousReport::default()
    }
}

fn types(events: &[NewEvent]) -> Vec<EventType> {
    events.iter().map(|e| e.type_).collect()
}

#[test]
fn a_rollback_turning_true_is_one_event_naming_both_generations() {
    let events = events_for_report(&previous(1, false), &report(2, 1, Some("True")));
    assert_eq!(types(&events), [EventType::RolledBack]);
    let payload = &events[0].payload;
    assert_eq!(payload["failedGeneration"], 2);
    assert_eq!(payload["rolledBackTo"], 1);
    assert_eq!(payload["reason"], "ProgressDeadlineExceeded");
    assert!(
        payload["message"]
            .as_str()
            .is_some_and(|m| m.contains("generation 2") && m.contains("generation 1")),
        "{payload}"
    );
}

#[test]
fn a_rollback_repeated_by_later_reports_is_no_new_event() {
    let events = events_for_report(&previous(1, true), &report(2, 1, Some("True")));
    assert!(events.is_empty(), "{:?}", types(&events));
}

#[test]
fn a_rollback_that_goes_away_is_cleared() {
    // Generation 3 converged: the condition is gone and the observed generation moved.
    let events = events_for_report(&previous(1, true), &report(3, 3, None));
    assert_eq!(
        types(&events),
        [EventType::RollbackCleared, EventType::StatusReported]
    );
    // A condition that turns False clears the rollback as well.
    let events = events_for_report(&previous(1, true), &report(2, 1, Some("False")));
    assert_eq!(types(&events), [EventType::RollbackCleared]);
}

#[test]
fn a_false_rolled_back_condition_without_a_previous_rollback_is_no_event() {
    // Hold: the deadline passed and the agent stayed on the generation.
    let events = events_for_report(&previous(2, false), &report(2, 2, Some("False")));
    assert!(events.is_empty(), "{:?}", types(&events));
}

/// A report of `motd` with `count` repairs, the last one at 10:00.
fn repaired(count: Option<u64>) -> AgentStatus {
    let mut status = report(1, 1, None);
    let motd = status.resources.values_mut().next().expect("motd");
    motd.repairs = count.map(|count| fleetlet_manifests::Repairs {
        count,
        last_at: time::macros::datetime!(2026-11-22 10:00 UTC),
        last_drift: "content changed".into(),
    });
    status
}

fn after(marks: BTreeMap<String, RepairMark>) -> PreviousReport {
    PreviousReport {
        repairs: marks,
        ..previous(1, false)
    }
}

#[test]
fn repairs_are_one_event_per_resource_per_interval_carrying_the_count_since() {
    let t0 = time::macros::datetime!(2026-11-22 10:00 UTC);
    // The first repair is an event at once, naming the resource, its kind and the drift.
    let (events, marks) = repair_events(&previous(1, false), &repaired(Some(1)), t0);
    assert_eq!(types(&events), [EventType::ResourceRepaired]);
    assert_eq!(
        events[0].resource_id.as_ref().map(|id| id.as_str()),
        Some("motd")
    );
    let payload = &events[0].payload;
    assert_eq!(payload["kind"], "File");
    assert_eq!(payload["repairs"], 1);
    assert_eq!(payload["totalRepairs"], 1);
    assert_eq!(payload["drift"], "content changed");
    assert_eq!(
        marks["motd"],
        RepairMark {
            evented: 1,
            evented_at: Some(t0)
        }
    );

    // More repairs within the interval: no event, the mark waits.
    let soon = t0 + time::Duration::minutes(9);
    let (events, held) = repair_events(&after(marks.clone()), &repaired(Some(4)), soon);
    assert!(events.is_empty(), "{:?}", types(&events));
    assert_eq!(held, marks);

    // After the interval, one event counts every repair since the last one.
    let later = t0 + REPAIR_EVENT_INTERVAL;
    let (events, marks) = repair_events(&after(held), &repaired(Some(5)), later);
    assert_eq!(types(&events), [EventType::ResourceRepaired]);
    assert_eq!(events[0].payload["repairs"], 4);
    assert_eq!(events[0].payload["totalRepairs"], 5);
    assert_eq!(
        marks["motd"],
        RepairMark {
            evented: 5,
            evented_at: Some(later)
        }
    );

    // The same count again (a report for another reason) is no event, however late.
    let much_later = later + time::Duration::hours(5);
    let (events, same) = repair_events(&after(marks.clone()), &repaired(Some(5)), much_later);
    assert!(events.is_empty(), "{:?}", types(&events));
    assert_eq!(same, marks);
}

#[test]
fn a_report_without_repairs_keeps_the_mark_and_a_lower_count_starts_again() {
    let t0 = time::macros::datetime!(2026-11-22 10:00 UTC);
    let mark = RepairMark {
        evented: 5,
        evented_at: Some(t0),
    };
    let marks = BTreeMap::from([("motd".to_owned(), mark)]);
    let (events, kept) = repair_events(&after(marks.clone()), &repaired(None), t0);
    assert!(events.is_empty());
    assert_eq!(kept, marks);
    // An agent that lost its store counts from 1 again: that repair is news.
    let later = t0 + REPAIR_EVENT_INTERVAL;
    let (events, marks) = repair_events(&after(marks), &repaired(Some(1)), later);
    assert_eq!(types(&events), [EventType::ResourceRepaired]);
    assert_eq!(events[0].payload["repairs"], 1);
    assert_eq!(
        marks["motd"],
        RepairMark {
            evented: 1,
            evented_at: Some(later)
        }
    );
}

#[test]
fn a_first_report_is_a_status_event_and_phase_changes_are_events() {
    let events = events_for_report(&PreviousReport::default(), &report(1, 1, None));
    assert_eq!(
        types(&events),
        [EventType::StatusReported, EventType::ResourcePhaseChanged]
    );
}
