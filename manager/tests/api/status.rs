//! Acceptance 3 (first part): idempotent reports, per-resource rows, events and their paging.

use serde_json::{Value, json};
use sqlx::PgPool;

use super::support::{READER, manifest, serve, status};

#[sqlx::test(migrations = "../migrations")]
async fn status_reports_are_idempotent_by_report_seq(pool: PgPool) {
    let server = serve(pool.clone()).await;
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
    let phase: String =
        sqlx::query_scalar("SELECT phase FROM resource_status WHERE agent_id = 'pi-1'")
            .fetch_one(&pool)
            .await
            .expect("row");
    assert_eq!(phase, "Ready");
}

#[sqlx::test(migrations = "../migrations")]
async fn phase_changes_write_resource_rows_and_events(pool: PgPool) {
    let server = serve(pool.clone()).await;
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

    let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT resource_id, phase, error_reason FROM resource_status WHERE agent_id = 'pi-1' ORDER BY resource_id",
    )
    .fetch_all(&pool)
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

#[sqlx::test(migrations = "../migrations")]
async fn events_are_paged_by_seq(pool: PgPool) {
    let server = serve(pool).await;
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
