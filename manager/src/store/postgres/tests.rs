//! Unit tests of the PostgreSQL store's pure parts: how a batch of reports splits into rounds.

use serde_json::json;

use std::sync::Arc;

use fleetlet_manifests::AgentStatus;
use time::OffsetDateTime;

use super::reports::report_rounds;

/// A report of `agent_id` with `resources` File resources.
fn report(agent_id: &str, resources: usize) -> (Arc<AgentStatus>, OffsetDateTime) {
    let resources: serde_json::Map<String, serde_json::Value> = (0..resources)
        .map(|i| {
            let resource = json!({"kind": "File", "phase": "Ready",
                "since": "2026-11-22T10:00:00Z", "generation": 1});
            (format!("file-{i}"), resource)
        })
        .collect();
    let status = serde_json::from_value(json!({
        "apiVersion": "fleetlet.dev/v1", "kind": "AgentStatus", "agentId": agent_id,
        "reportSeq": 1, "manifestGeneration": 1, "observedGeneration": 1,
        "observedAt": "2026-11-22T10:00:00Z",
        "agent": {"version": "0.1.0", "hostname": "h", "arch": "x86_64", "os": "linux",
                  "bootId": "b", "startedAt": "2026-11-22T09:00:00Z", "supportedKinds": []},
        "conditions": [], "resources": resources,
    }))
    .expect("valid status");
    (Arc::new(status), OffsetDateTime::now_utc())
}

#[test]
fn an_agents_second_report_in_a_batch_is_a_round_of_its_own_after_the_rest() {
    let batch = [
        report("a", 1),
        report("b", 0),
        report("a", 1),
        report("c", 1),
        report("a", 1),
    ];
    assert_eq!(report_rounds(&batch), vec![vec![0, 1, 3], vec![2], vec![4]]);
}

#[test]
fn large_reports_are_split_across_rounds_by_their_resource_rows() {
    let batch = [
        report("a", 1_500),
        report("b", 400),
        report("c", 200),
        report("d", 3_000),
        report("e", 0),
    ];
    assert_eq!(
        report_rounds(&batch),
        vec![vec![0, 1], vec![2], vec![3], vec![4]]
    );
}
