//! Acceptance 3 (second part): the fleet list derives every state; filters and cursors.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::PgPool;

use super::support::{Backend, READER, TestServer, manifest, serve, serve_with_interval, status};

async fn states_by_agent(server: &TestServer, query: &str) -> Vec<(String, String)> {
    let page = server.json(&format!("/api/v1/agents{query}"), READER).await;
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|row| {
            (
                row["agentId"].as_str().expect("id").to_owned(),
                row["state"].as_str().expect("state").to_owned(),
            )
        })
        .collect()
}

/// Registers five agents and brings each into one of the non-stale states.
async fn populate(server: &TestServer) {
    for (id, labels) in [
        ("a-converged", json!({"site": "north", "tier": "prod"})),
        ("b-progressing", json!({"site": "north"})),
        ("c-degraded", json!({"site": "south", "tier": "prod"})),
        ("d-unknown", json!({"site": "south"})),
        ("e-rejected", json!({"site": "south"})),
    ] {
        let token = server.register(id, labels).await;
        server.apply(id, &manifest(id, &["a", "b"])).await;
        let report = match id {
            "a-converged" => status(id, 1, 1, &[("file-0", "Ready"), ("file-1", "Ready")]),
            "b-progressing" => status(id, 1, 1, &[("file-0", "Ready"), ("file-1", "Reconciling")]),
            "c-degraded" => status(id, 1, 1, &[("file-0", "Ready"), ("file-1", "Failed")]),
            "e-rejected" => {
                let mut report = status(id, 1, 0, &[]);
                report["conditions"] = json!([{"type": "ManifestRejected", "status": "True",
                    "reason": "SignatureInvalid", "message": "no", "lastTransitionTime": "2026-11-22T10:00:00Z"}]);
                report
            }
            _ => continue,
        };
        server.report_accepted(id, &token, &report).await;
    }
}

on_both_stores!(fleet_list_derives_converged_progressing_degraded_and_unknown);
async fn fleet_list_derives_converged_progressing_degraded_and_unknown(store: Backend) {
    let server = serve(store).await;
    populate(&server).await;
    assert_eq!(
        states_by_agent(&server, "").await,
        vec![
            ("a-converged".to_owned(), "converged".to_owned()),
            ("b-progressing".to_owned(), "progressing".to_owned()),
            ("c-degraded".to_owned(), "degraded".to_owned()),
            ("d-unknown".to_owned(), "unknown".to_owned()),
            ("e-rejected".to_owned(), "degraded".to_owned()),
        ]
    );
    let page = server.json("/api/v1/agents?limit=1", READER).await;
    let row = &page["items"][0];
    assert_eq!(row["desiredGeneration"], 1);
    assert_eq!(row["observedGeneration"], 1);
    assert_eq!(row["counts"], json!({"Ready": 2}));
    assert_eq!(row["labels"], json!({"site": "north", "tier": "prod"}));
    assert!(row["lastSeenAt"].is_string());

    // A new generation makes the converged agent progressing until it reports again.
    server
        .apply("a-converged", &manifest("a-converged", &["changed", "b"]))
        .await;
    assert_eq!(
        states_by_agent(&server, "?state=progressing").await,
        vec![
            ("a-converged".to_owned(), "progressing".to_owned()),
            ("b-progressing".to_owned(), "progressing".to_owned()),
        ]
    );
}

on_both_stores!(an_agent_is_stale_after_three_missed_report_intervals);
async fn an_agent_is_stale_after_three_missed_report_intervals(store: Backend) {
    let interval = Duration::from_millis(500);
    let server = serve_with_interval(store, interval).await;
    let token = server.register("pi-1", json!({})).await;
    server.apply("pi-1", &manifest("pi-1", &["a"])).await;
    let reported = Instant::now();
    server
        .report_accepted(
            "pi-1",
            &token,
            &status("pi-1", 1, 1, &[("file-0", "Ready")]),
        )
        .await;
    let fresh = states_by_agent(&server, "").await;
    if reported.elapsed() < interval * 3 {
        assert_eq!(fresh, vec![("pi-1".to_owned(), "converged".to_owned())]);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let states = states_by_agent(&server, "").await;
        if states == vec![("pi-1".to_owned(), "stale".to_owned())] {
            break;
        }
        assert!(Instant::now() < deadline, "never became stale: {states:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reported.elapsed() >= interval * 3, "stale too early");
    let view = server.json("/api/v1/agents/pi-1/status", READER).await;
    assert_eq!(view["summary"]["state"], "stale");
}

on_both_stores!(fleet_list_filters_by_state_and_labels);
async fn fleet_list_filters_by_state_and_labels(store: Backend) {
    let server = serve(store).await;
    populate(&server).await;
    let ids = |rows: Vec<(String, String)>| rows.into_iter().map(|(id, _)| id).collect::<Vec<_>>();
    assert_eq!(
        ids(states_by_agent(&server, "?state=degraded").await),
        ["c-degraded", "e-rejected"]
    );
    assert_eq!(
        ids(states_by_agent(&server, "?state=unknown").await),
        ["d-unknown"]
    );
    assert_eq!(
        ids(states_by_agent(&server, "?state=stale").await),
        Vec::<String>::new()
    );
    assert_eq!(
        ids(states_by_agent(&server, "?label=tier=prod").await),
        ["a-converged", "c-degraded"]
    );
    assert_eq!(
        ids(states_by_agent(&server, "?label=site=south,tier=prod").await),
        ["c-degraded"]
    );
    assert_eq!(
        ids(states_by_agent(&server, "?label=site=south&state=degraded").await),
        ["c-degraded", "e-rejected"]
    );
    let bad = server.get("/api/v1/agents?state=sleepy", READER).await;
    assert_eq!(bad.status(), 400);
}

on_both_stores!(fleet_list_pages_with_an_opaque_cursor);
async fn fleet_list_pages_with_an_opaque_cursor(store: Backend) {
    let server = serve(store).await;
    populate(&server).await;
    for query in ["", "&state=degraded", "&label=site=south"] {
        let everything = states_by_agent(&server, &format!("?limit=100{query}")).await;
        let mut paged = Vec::new();
        let mut path = format!("/api/v1/agents?limit=2{query}");
        let mut pages = 0;
        loop {
            let page: Value = server.json(&path, READER).await;
            pages += 1;
            for row in page["items"].as_array().expect("items") {
                paged.push((
                    row["agentId"].as_str().expect("id").to_owned(),
                    row["state"].as_str().expect("state").to_owned(),
                ));
            }
            match page["nextCursor"].as_str() {
                Some(cursor) => path = format!("/api/v1/agents?limit=2{query}&cursor={cursor}"),
                None => break,
            }
        }
        assert_eq!(paged, everything, "query {query}");
        assert_eq!(pages, everything.len().div_ceil(2).max(1), "query {query}");
    }
    assert_eq!(
        server
            .get("/api/v1/agents?cursor=garbage", READER)
            .await
            .status(),
        400
    );
}

/// A status whose one resource is a SessionStorage in `phase`, failing with `reason` if given.
fn session_status(agent_id: &str, phase: &str, reason: Option<&str>) -> Value {
    let mut report = status(agent_id, 1, 1, &[]);
    let mut resource = json!({"kind": "SessionStorage", "phase": phase,
        "since": "2026-11-22T10:00:00Z", "generation": 1, "specHash": "sha256:00",
        "details": {"path": "/var/lib/fleetlet/sessions/scratch@s1/data", "sizeBytes": 1510,
                    "filesCount": 2, "sha256": "ab", "usedFraction": 1.51,
                    "expiresAt": "2026-12-01T00:00:00Z"}});
    if let Some(reason) = reason {
        resource["error"] = json!({"reason": reason, "message": "session storage trouble"});
    }
    if reason == Some("SessionStorageEvicted") {
        resource["details"]["evictedAt"] = json!("2026-12-01T00:00:01Z");
    }
    report["resources"] = json!({"scratch": resource});
    report
}

on_both_stores!(fleet_list_filters_agents_with_evicted_or_over_quota_storage);
async fn fleet_list_filters_agents_with_evicted_or_over_quota_storage(store: Backend) {
    let server = serve(store).await;
    for (id, phase, reason) in [
        ("a-fine", "Ready", None),
        ("b-over-quota", "Failed", Some("QuotaExceeded")),
        ("c-evicted", "Failed", Some("SessionStorageEvicted")),
        ("d-other-failure", "Failed", Some("IoError")),
    ] {
        let token = server.register(id, json!({"site": "north"})).await;
        server.apply(id, &manifest(id, &["a"])).await;
        server
            .report_accepted(id, &token, &session_status(id, phase, reason))
            .await;
    }
    let ids = |rows: Vec<(String, String)>| -> Vec<String> {
        rows.into_iter().map(|(id, _)| id).collect()
    };
    assert_eq!(
        ids(states_by_agent(&server, "?reason=QuotaExceeded").await),
        ["b-over-quota"]
    );
    assert_eq!(
        ids(states_by_agent(&server, "?reason=SessionStorageEvicted").await),
        ["c-evicted"]
    );
    assert_eq!(
        ids(states_by_agent(
            &server,
            "?reason=SessionStorageEvicted&state=degraded&label=site=north"
        )
        .await),
        ["c-evicted"]
    );
    assert!(
        states_by_agent(&server, "?reason=SessionStorageEvicted&label=site=south")
            .await
            .is_empty()
    );
    assert!(
        states_by_agent(&server, "?reason=UnitFailed")
            .await
            .is_empty()
    );
    // Paging still works with the filter: one row per page.
    let page = server
        .json("/api/v1/agents?reason=QuotaExceeded&limit=1", READER)
        .await;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1));
    assert!(page["nextCursor"].is_null());

    let response = server
        .get("/api/v1/agents?reason=not%20a%20reason", READER)
        .await;
    super::support::expect_error(response, 400, "bad-request").await;

    // The summaries themselves are served in the status as reported.
    let stored = server.json("/api/v1/agents/c-evicted/status", READER).await;
    let details = &stored["status"]["resources"]["scratch"]["details"];
    assert_eq!(details["sizeBytes"], 1510);
    assert_eq!(details["filesCount"], 2);
    assert_eq!(details["usedFraction"], 1.51);
    assert_eq!(details["evictedAt"], "2026-12-01T00:00:01Z");
    assert_eq!(
        stored["status"]["resources"]["scratch"]["error"]["reason"],
        "SessionStorageEvicted"
    );
}

/// A report of generation `manifest` observed at `observed`, all resources Ready, with a
/// RolledBack condition of `rolled_back` status when given.
fn rollback_status(
    agent_id: &str,
    seq: u64,
    manifest: u64,
    observed: u64,
    rolled_back: Option<&str>,
) -> Value {
    let mut report = status(agent_id, seq, observed, &[("file-0", "Ready")]);
    report["manifestGeneration"] = json!(manifest);
    if let Some(condition) = rolled_back {
        report["conditions"] = json!([{"type": "RolledBack", "status": condition,
            "reason": "ProgressDeadlineExceeded",
            "message": format!("generation {manifest} was not Ready within 3s; rolled back to generation {observed}"),
            "lastTransitionTime": "2026-11-22T10:00:00Z"}]);
    }
    report
}

on_both_stores!(a_rolled_back_agent_is_listed_as_rolled_back_until_a_newer_generation_converges);
async fn a_rolled_back_agent_is_listed_as_rolled_back_until_a_newer_generation_converges(
    store: Backend,
) {
    let server = serve(store).await;
    let token = server.register("pi-1", json!({})).await;
    server.register("pi-2", json!({})).await;
    server.apply("pi-1", &manifest("pi-1", &["good"])).await;
    server
        .report_accepted("pi-1", &token, &rollback_status("pi-1", 1, 1, 1, None))
        .await;
    server.apply("pi-1", &manifest("pi-1", &["bad"])).await;
    // Reported twice: the event is for the transition, not for every report.
    for seq in [2, 3] {
        server
            .report_accepted(
                "pi-1",
                &token,
                &rollback_status("pi-1", seq, 2, 1, Some("True")),
            )
            .await;
    }

    assert_eq!(
        states_by_agent(&server, "?state=rolledBack").await,
        vec![("pi-1".to_owned(), "rolledBack".to_owned())]
    );
    let view = server.json("/api/v1/agents/pi-1/status", READER).await;
    assert_eq!(view["summary"]["state"], "rolledBack");
    assert_eq!(view["summary"]["converged"], false);
    assert_eq!(view["summary"]["desiredGeneration"], 2);
    assert_eq!(view["summary"]["observedGeneration"], 1);
    assert_eq!(view["status"]["conditions"][0]["type"], "RolledBack");

    let events = server.json("/api/v1/agents/pi-1/events", READER).await;
    let of_type = |events: &Value, wanted: &str| -> Vec<Value> {
        events["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter(|e| e["type"] == wanted)
            .map(|e| e["payload"].clone())
            .collect()
    };
    let rolled_back = of_type(&events, "RolledBack");
    assert_eq!(rolled_back.len(), 1, "{events}");
    assert_eq!(rolled_back[0]["failedGeneration"], 2);
    assert_eq!(rolled_back[0]["rolledBackTo"], 1);
    assert!(
        rolled_back[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("generation 2") && m.contains("generation 1")),
        "{events}"
    );
    assert!(of_type(&events, "RollbackCleared").is_empty());

    // A newer generation that converges clears the rollback.
    server.apply("pi-1", &manifest("pi-1", &["fixed"])).await;
    server
        .report_accepted("pi-1", &token, &rollback_status("pi-1", 4, 3, 3, None))
        .await;
    assert!(
        states_by_agent(&server, "?state=rolledBack")
            .await
            .is_empty()
    );
    let view = server.json("/api/v1/agents/pi-1/status", READER).await;
    assert_eq!(view["summary"]["state"], "converged");
    assert_eq!(view["summary"]["converged"], true);
    let events = server.json("/api/v1/agents/pi-1/events", READER).await;
    assert_eq!(of_type(&events, "RollbackCleared").len(), 1, "{events}");
}

on_both_stores!(a_false_rolled_back_condition_is_not_a_rollback);
async fn a_false_rolled_back_condition_is_not_a_rollback(store: Backend) {
    // With onFailure Hold the agent reports RolledBack False (reason HoldPolicy) and the failed
    // resource: the fleet state is degraded, not rolledBack.
    let server = serve(store).await;
    let token = server.register("pi-1", json!({})).await;
    server.apply("pi-1", &manifest("pi-1", &["a"])).await;
    let mut report = status("pi-1", 1, 1, &[("file-0", "Failed")]);
    report["conditions"] = json!([{"type": "RolledBack", "status": "False", "reason": "HoldPolicy",
        "message": "generation 1 was not Ready within 3s; holding", "lastTransitionTime": "2026-11-22T10:00:00Z"}]);
    server.report_accepted("pi-1", &token, &report).await;
    assert_eq!(
        states_by_agent(&server, "").await,
        vec![("pi-1".to_owned(), "degraded".to_owned())]
    );
    let events = server.json("/api/v1/agents/pi-1/events", READER).await;
    assert!(
        !events["items"]
            .as_array()
            .expect("items")
            .iter()
            .any(|e| e["type"] == "RolledBack"),
        "{events}"
    );
}

/// Migration 4 moved the fleet list's phase counts onto the status row. A database upgraded from
/// migration 3 must show the counts of the reports it already holds, not empty ones until every
/// agent reports again.
#[sqlx::test(migrations = false)]
async fn an_upgraded_database_counts_the_resources_it_already_holds(pool: PgPool) {
    let mut migrator = sqlx::migrate!("../migrations");
    migrator.migrations = migrator
        .migrations
        .iter()
        .filter(|migration| migration.version < 4)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    migrator.run(&pool).await.expect("migrations 1-3");
    // What a manager of migration 3 stored: two agents with a status, one with resources.
    for statement in [
        "INSERT INTO agents (agent_id, labels, token_hash, registered_at, last_seen_at, \
           desired_generation) VALUES \
           ('pi-1', '{}', 'h1', now(), now(), 1), ('pi-2', '{}', 'h2', now(), now(), 1)",
        "INSERT INTO agent_status (agent_id, manifest_generation, observed_generation, \
           report_seq, observed_at, received_at) VALUES \
           ('pi-1', 1, 1, 1, now(), now()), ('pi-2', 1, 1, 1, now(), now())",
        "INSERT INTO resource_status (agent_id, resource_id, kind, phase, since, generation, \
           updated_at) VALUES \
           ('pi-1', 'a', 'File', 'Ready', now(), 1, now()), \
           ('pi-1', 'b', 'File', 'Ready', now(), 1, now()), \
           ('pi-1', 'c', 'File', 'Failed', now(), 1, now())",
    ] {
        sqlx::query(statement)
            .execute(&pool)
            .await
            .expect(statement);
    }
    sqlx::migrate!("../migrations")
        .run(&pool)
        .await
        .expect("migration 4");

    let server = serve(pool).await;
    let page = server.json("/api/v1/agents", READER).await;
    let counts: Vec<&Value> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|row| &row["counts"])
        .collect();
    assert_eq!(counts, [&json!({"Ready": 2, "Failed": 1}), &json!({})]);
    assert_eq!(page["items"][0]["state"], "degraded");
}

on_both_stores!(the_list_counts_what_the_latest_report_holds);
/// The counts a page shows are those of the agent's latest report: a resource that changed phase
/// or that the agent no longer reports moves them.
async fn the_list_counts_what_the_latest_report_holds(store: Backend) {
    let server = serve(store).await;
    let token = server.register("pi-1", json!({})).await;
    server
        .apply("pi-1", &manifest("pi-1", &["a", "b", "c"]))
        .await;
    let counts = || async {
        let page = server.json("/api/v1/agents", READER).await;
        (
            page["items"][0]["counts"].clone(),
            page["items"][0]["state"].clone(),
        )
    };
    let report = status(
        "pi-1",
        1,
        1,
        &[
            ("file-0", "Ready"),
            ("file-1", "Failed"),
            ("file-2", "Ready"),
        ],
    );
    server.report_accepted("pi-1", &token, &report).await;
    assert_eq!(
        counts().await,
        (json!({"Ready": 2, "Failed": 1}), json!("degraded"))
    );
    let report = status("pi-1", 2, 1, &[("file-0", "Ready"), ("file-1", "Ready")]);
    server.report_accepted("pi-1", &token, &report).await;
    assert_eq!(counts().await, (json!({"Ready": 2}), json!("converged")));
}
