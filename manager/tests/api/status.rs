//! Acceptance 3 (first part): idempotent reports, per-resource rows, events and their paging.

use serde_json::{Value, json};

use super::support::{Backend, READER, manifest, serve, status};

on_both_stores!(status_reports_are_idempotent_by_report_seq);
async fn status_reports_are_idempotent_by_report_seq(store: Backend) {
    // Its rows are read where the store keeps them, in PostgreSQL.
    let pool = store.pool();
    let server = serve(store).await;
    let token = server.register("pi-1", json!({})).await;
    server.apply("pi-1", &manifest("pi-1", &["a"])).await;

    server
        .report_accepted(
            "pi-1",
            &token,
            &status("pi-1", 5, 1, &[("file-0", "Ready")]),
        )
        .await;
    let before = server.json("/api/v1/agents/pi-1/status", READER).await;
    let events_before = server.json("/api/v1/agents/pi-1/events", READER).await;

    for (seq, phase) in [(5, "Failed"), (4, "Failed"), (1, "Reconciling")] {
        let response = server
            .report(
                "pi-1",
                &token,
                &status("pi-1", seq, 1, &[("file-0", phase)]),
            )
            .await;
        assert_eq!(response.status(), 200);
        let ack: Value = response.json().await.expect("JSON");
        assert_eq!(ack, json!({"accepted": false}), "seq {seq}");
    }
    let after = server.json("/api/v1/agents/pi-1/status", READER).await;
    assert_eq!(after["status"], before["status"], "nothing changed");
    assert_eq!(after["status"]["reportSeq"], 5);
    let events_after = server.json("/api/v1/agents/pi-1/events", READER).await;
    assert_eq!(events_after, events_before);
    if let Some(pool) = &pool {
        let phase: String =
            sqlx::query_scalar("SELECT phase FROM resource_status WHERE agent_id = 'pi-1'")
                .fetch_one(pool)
                .await
                .expect("row");
        assert_eq!(phase, "Ready");
    }
}

on_both_stores!(phase_changes_write_resource_rows_and_events);
async fn phase_changes_write_resource_rows_and_events(store: Backend) {
    // Its rows are read where the store keeps them, in PostgreSQL.
    let pool = store.pool();
    let server = serve(store).await;
    let token = server.register("pi-1", json!({})).await;
    server.apply("pi-1", &manifest("pi-1", &["a", "b"])).await;

    let first = status(
        "pi-1",
        1,
        1,
        &[("file-0", "Reconciling"), ("file-1", "Reconciling")],
    );
    server.report_accepted("pi-1", &token, &first).await;
    // A heartbeat with nothing new adds no event.
    server
        .report_accepted(
            "pi-1",
            &token,
            &status(
                "pi-1",
                2,
                1,
                &[("file-0", "Reconciling"), ("file-1", "Reconciling")],
            ),
        )
        .await;
    server
        .report_accepted(
            "pi-1",
            &token,
            &status("pi-1", 3, 1, &[("file-0", "Ready"), ("file-1", "Failed")]),
        )
        .await;

    if let Some(pool) = &pool {
        let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
            "SELECT resource_id, phase, error_reason FROM resource_status WHERE agent_id = 'pi-1' ORDER BY resource_id",
        )
        .fetch_all(pool)
        .await
        .expect("rows");
        assert_eq!(
            rows,
            vec![
                ("file-0".into(), "Ready".into(), None),
                (
                    "file-1".into(),
                    "Failed".into(),
                    Some("PathNotAllowed".into())
                ),
            ]
        );
    }

    let events = server
        .json("/api/v1/agents/pi-1/events?limit=100", READER)
        .await;
    let summary: Vec<(String, Option<String>, Option<String>)> = events["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| {
            (
                e["type"].as_str().expect("type").to_owned(),
                e["resourceId"].as_str().map(str::to_owned),
                e["payload"]["to"].as_str().map(str::to_owned),
            )
        })
        .collect();
    let expected: Vec<(String, Option<String>, Option<String>)> = vec![
        ("AgentRegistered".into(), None, None),
        ("ManifestUpdated".into(), None, None),
        ("StatusReported".into(), None, None),
        (
            "ResourcePhaseChanged".into(),
            Some("file-0".into()),
            Some("Reconciling".into()),
        ),
        (
            "ResourcePhaseChanged".into(),
            Some("file-1".into()),
            Some("Reconciling".into()),
        ),
        (
            "ResourcePhaseChanged".into(),
            Some("file-0".into()),
            Some("Ready".into()),
        ),
        (
            "ResourcePhaseChanged".into(),
            Some("file-1".into()),
            Some("Failed".into()),
        ),
    ];
    assert_eq!(summary, expected);
    let seqs: Vec<u64> = events["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());

    let view = server.json("/api/v1/agents/pi-1/status", READER).await;
    assert_eq!(
        view["status"]["resources"]["file-1"]["error"]["reason"],
        "PathNotAllowed"
    );
    assert_eq!(view["summary"]["counts"], json!({"Ready": 1, "Failed": 1}));
    assert_eq!(view["summary"]["state"], "degraded");
}

on_both_stores!(events_are_paged_by_seq);
async fn events_are_paged_by_seq(store: Backend) {
    let server = serve(store).await;
    server.register("pi-1", json!({})).await;
    for text in ["a", "b", "c", "d", "e", "f", "g"] {
        server.apply("pi-1", &manifest("pi-1", &[text])).await;
    }
    // 1 registration + 7 manifest updates.
    let mut seqs = Vec::new();
    let mut after = 0;
    loop {
        let page = server
            .json(
                &format!("/api/v1/agents/pi-1/events?afterSeq={after}&limit=3"),
                READER,
            )
            .await;
        let items = page["items"].as_array().expect("items");
        assert!(items.len() <= 3);
        seqs.extend(items.iter().map(|e| e["seq"].as_u64().expect("seq")));
        match page["nextCursor"].as_str() {
            Some(next) => after = next.parse().expect("the cursor is the last seq"),
            None => break,
        }
    }
    assert_eq!(seqs, (1..=8).collect::<Vec<_>>());
    let tail = server
        .json("/api/v1/agents/pi-1/events?afterSeq=6", READER)
        .await;
    assert_eq!(tail["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(tail["nextCursor"], Value::Null);
}

on_both_stores!(concurrent_reports_of_many_agents_are_stored_as_if_one_by_one);
/// Concurrent reports are stored in shared transactions (`store/coalesce.rs`); each agent's
/// rows, `reportSeq` and dense event seqs must come out as if they had been stored one by one,
/// including an agent whose two reports arrive at the same moment.
async fn concurrent_reports_of_many_agents_are_stored_as_if_one_by_one(store: Backend) {
    // Its rows are read where the store keeps them, in PostgreSQL.
    let pool = store.pool();
    let server = std::sync::Arc::new(serve(store).await);
    let agents: Vec<String> = (0..24).map(|i| format!("pi-{i:02}")).collect();
    let mut tokens = Vec::new();
    for agent in &agents {
        tokens.push(server.register(agent, json!({})).await);
        server.apply(agent, &manifest(agent, &["a", "b"])).await;
    }
    // Three rounds; in each, every agent reports at once, and the last agent twice at once.
    for round in 1..=3u64 {
        let phase = if round == 3 { "Ready" } else { "Reconciling" };
        let mut reports = tokio::task::JoinSet::new();
        for (agent, token) in agents.iter().zip(&tokens) {
            let seqs = if agent == "pi-23" {
                vec![round * 10, round * 10 + 1]
            } else {
                vec![round * 10]
            };
            for seq in seqs {
                let (server, agent, token) = (server.clone(), agent.clone(), token.clone());
                let body = status(&agent, seq, 1, &[("file-0", phase), ("file-1", "Ready")]);
                reports.spawn(async move {
                    let response = server.report(&agent, &token, &body).await;
                    assert_eq!(response.status(), 200, "report {seq} of {agent}");
                    let ack: Value = response.json().await.expect("JSON");
                    (agent, seq, ack["accepted"].as_bool().expect("accepted"))
                });
            }
        }
        let mut acks = Vec::new();
        while let Some(ack) = reports.join_next().await {
            acks.push(ack.expect("report task"));
        }
        for (agent, seq, accepted) in &acks {
            // The only report that may be refused is pi-23's lower one, if it came second.
            assert!(
                *accepted || (agent == "pi-23" && seq % 10 == 0),
                "{agent} seq {seq} refused"
            );
        }
    }
    for agent in &agents {
        let view = server
            .json(&format!("/api/v1/agents/{agent}/status"), READER)
            .await;
        let expected_seq = if agent == "pi-23" { 31 } else { 30 };
        assert_eq!(view["status"]["reportSeq"], expected_seq, "{agent}");
        assert_eq!(view["summary"]["counts"], json!({"Ready": 2}), "{agent}");
        let events = server
            .json(&format!("/api/v1/agents/{agent}/events?limit=100"), READER)
            .await;
        let items = events["items"].as_array().expect("items");
        let seqs: Vec<u64> = items
            .iter()
            .map(|e| e["seq"].as_u64().expect("seq"))
            .collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "{agent}");
        let types: Vec<&str> = items
            .iter()
            .map(|e| e["type"].as_str().expect("type"))
            .collect();
        // Registered, manifest, first report, two first phases, file-0 turning Ready.
        assert_eq!(
            types,
            [
                "AgentRegistered",
                "ManifestUpdated",
                "StatusReported",
                "ResourcePhaseChanged",
                "ResourcePhaseChanged",
                "ResourcePhaseChanged"
            ],
            "{agent}"
        );
    }
    if let Some(pool) = &pool {
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM resource_status")
            .fetch_one(pool)
            .await
            .expect("count");
        assert_eq!(rows, 48);
    }
}
