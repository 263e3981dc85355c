//! Unit tests of the in-memory store.

use fleetlet_manifests::manifest::RolloutPolicy;
use serde_json::json;

use super::*;

/// A store with one registered agent, `pi-1`.
async fn store_with_pi_1() -> (MemoryStore, AgentId, OffsetDateTime) {
    let store = MemoryStore::new(ManifestWatch::default());
    let now = OffsetDateTime::now_utc();
    let agent = AgentId::try_from("pi-1").expect("agent id");
    store
        .register_agent(&agent, &BTreeMap::new(), crate::token::hash_token("t"), now)
        .await
        .expect("register");
    (store, agent, now)
}

fn status_with(agent_id: &str, reason: Option<&str>) -> AgentStatus {
    let mut resource = json!({"kind": "SessionStorage", "phase": "Ready",
        "since": "2026-11-22T10:00:00Z", "generation": 1});
    if let Some(reason) = reason {
        resource["phase"] = json!("Failed");
        resource["error"] = json!({"reason": reason, "message": "m"});
    }
    serde_json::from_value(json!({
        "apiVersion": "fleetlet.dev/v1", "kind": "AgentStatus", "agentId": agent_id,
        "reportSeq": 1, "manifestGeneration": 0, "observedGeneration": 0,
        "observedAt": "2026-11-22T10:00:00Z",
        "agent": {"version": "0.1.0", "hostname": "h", "arch": "x86_64", "os": "linux",
                  "bootId": "b", "startedAt": "2026-11-22T09:00:00Z", "supportedKinds": []},
        "conditions": [], "resources": {"scratch": resource},
    }))
    .expect("valid status")
}

fn new_manifest(rollout: Option<RolloutPolicy>) -> NewManifest {
    NewManifest {
        resources: Vec::new(),
        content_hash: "sha256:same".to_owned(),
        signature: None,
        rollout,
        fleet: None,
        created_by: "admin".to_owned(),
        if_generation: None,
    }
}

#[tokio::test]
async fn a_change_of_the_rollout_alone_is_a_new_generation() {
    let (store, agent, now) = store_with_pi_1().await;
    let hold: RolloutPolicy =
        serde_json::from_value(json!({"progressDeadlineSeconds": 5, "onFailure": "Hold"}))
            .expect("rollout policy");
    for (rollout, generation, created) in [
        (None, 1, true),
        (None, 1, false),
        (Some(hold), 2, true),
        (Some(hold), 2, false),
        (None, 3, true),
    ] {
        let outcome = store
            .put_manifest(&agent, new_manifest(rollout), now)
            .await
            .expect("put");
        assert_eq!(
            (outcome.manifest.generation, outcome.created),
            (generation, created),
            "{rollout:?}"
        );
        assert_eq!(outcome.manifest.rollout, rollout);
    }
}

#[tokio::test]
async fn a_true_rolled_back_condition_marks_the_fleet_row_and_is_one_event() {
    let (store, agent, now) = store_with_pi_1().await;
    let mut status = status_with("pi-1", None);
    status.conditions = serde_json::from_value(json!([{"type": "RolledBack",
        "status": "True", "reason": "ProgressDeadlineExceeded",
        "message": "generation 2 was not Ready within 3s; rolled back to generation 1",
        "lastTransitionTime": "2026-11-22T10:00:00Z"}]))
    .expect("conditions");
    for seq in [1, 2] {
        status.report_seq = seq;
        store.report_status(&status, now).await.expect("report");
    }
    let (row, _) = store.status(&agent).await.expect("status");
    assert!(row.rolled_back);
    let events = store.events(&agent, 0, 100).await.expect("events");
    let rollbacks = events
        .iter()
        .filter(|e| e.type_ == EventType::RolledBack)
        .count();
    assert_eq!(rollbacks, 1);

    status.report_seq = 3;
    status.conditions.clear();
    store.report_status(&status, now).await.expect("report");
    let (row, _) = store.status(&agent).await.expect("status");
    assert!(!row.rolled_back);
    let events = store.events(&agent, 0, 100).await.expect("events");
    assert_eq!(
        events.last().map(|e| e.type_),
        Some(EventType::RollbackCleared)
    );
}

#[tokio::test]
async fn repairs_are_one_event_per_interval_and_their_count_is_kept_in_the_status() {
    let (store, agent, now) = store_with_pi_1().await;
    let mut status = status_with("pi-1", None);
    let repaired = |status: &mut AgentStatus, seq: u64, count: u64| {
        status.report_seq = seq;
        status.resources.values_mut().for_each(|r| {
            r.repairs = Some(fleetlet_manifests::Repairs {
                count,
                last_at: now,
                last_drift: "the directory was deleted".into(),
            });
        });
    };
    let repairs = |events: &[Event]| -> Vec<serde_json::Value> {
        events
            .iter()
            .filter(|e| e.type_ == EventType::ResourceRepaired)
            .map(|e| e.payload["repairs"].clone())
            .collect()
    };
    repaired(&mut status, 1, 1);
    store.report_status(&status, now).await.expect("report");
    repaired(&mut status, 2, 3);
    let soon = now + time::Duration::minutes(1);
    store.report_status(&status, soon).await.expect("report");
    let events = store.events(&agent, 0, 100).await.expect("events");
    assert_eq!(repairs(&events), [json!(1)]);
    let (_, stored) = store.status(&agent).await.expect("status");
    let stored = stored.expect("a status");
    assert_eq!(
        stored.resources["scratch"]
            .repairs
            .as_ref()
            .map(|r| r.count),
        Some(3)
    );

    repaired(&mut status, 3, 4);
    let later = now + super::super::REPAIR_EVENT_INTERVAL;
    store.report_status(&status, later).await.expect("report");
    let events = store.events(&agent, 0, 100).await.expect("events");
    assert_eq!(repairs(&events), [json!(1), json!(3)]);
}

#[tokio::test]
async fn the_fleet_filters_by_a_resource_error_reason() {
    let store = MemoryStore::new(ManifestWatch::default());
    let now = OffsetDateTime::now_utc();
    for (id, reason) in [
        ("a", None),
        ("b", Some("QuotaExceeded")),
        ("c", Some("SessionStorageEvicted")),
    ] {
        let agent = AgentId::try_from(id).expect("agent id");
        store
            .register_agent(&agent, &BTreeMap::new(), crate::token::hash_token(id), now)
            .await
            .expect("register");
        store
            .report_status(&status_with(id, reason), now)
            .await
            .expect("report");
    }
    for (reason, expected) in [
        (Some("QuotaExceeded"), vec!["b"]),
        (Some("SessionStorageEvicted"), vec!["c"]),
        (Some("UnitFailed"), vec![]),
        (None, vec!["a", "b", "c"]),
    ] {
        let query = FleetQuery {
            limit: 10,
            error_reason: reason.map(str::to_owned),
            ..FleetQuery::default()
        };
        let rows = store.fleet(&query).await.expect("fleet");
        let ids: Vec<&str> = rows.iter().map(|r| r.agent_id.as_str()).collect();
        assert_eq!(ids, expected, "{reason:?}");
    }
}
