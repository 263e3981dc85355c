//! Contact without reports: the agent's watch polls and compact heartbeats keep it from going
//! stale, and a heartbeat asks for the status again when the manager lacks the agent's latest.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgPool;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::support::{
    ADMIN, Backend, READER, TestServer, expect_error, manifest, serve, serve_with_interval, status,
};

/// When the store last saw the agent: its row's `last_seen_at` in PostgreSQL; on the memory
/// store, which has no rows, the `lastSeenAt` of the agent's status view.
async fn last_seen(
    server: &TestServer,
    pool: Option<&PgPool>,
    agent_id: &str,
) -> Option<OffsetDateTime> {
    let Some(pool) = pool else {
        let view = server
            .json(&format!("/api/v1/agents/{agent_id}/status"), READER)
            .await;
        return view["summary"]["lastSeenAt"]
            .as_str()
            .map(|at| OffsetDateTime::parse(at, &Rfc3339).expect("an RFC 3339 time"));
    };
    sqlx::query_scalar("SELECT last_seen_at FROM agents WHERE agent_id = $1")
        .bind(agent_id)
        .fetch_one(pool)
        .await
        .expect("agent row")
}

on_both_stores!(a_heartbeat_says_which_report_the_manager_holds);
async fn a_heartbeat_says_which_report_the_manager_holds(store: Backend) {
    let pool = store.pool();
    let server = serve(store).await;
    let token = server.register("pi-1", json!({})).await;
    server.apply("pi-1", &manifest("pi-1", &["a"])).await;
    let path = "/api/v1/agents/pi-1/heartbeat";

    // Never reported: nothing to resend for seq 0, but a later seq is missing.
    let ack: Value = server
        .send(Method::POST, path, &token, &json!({"reportSeq": 0}))
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(ack, json!({"reportSeq": null, "resend": false}));
    // Contact is written in batches (every 50 ms in these tests).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while last_seen(&server, pool.as_ref(), "pi-1").await.is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "contact never recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    server
        .report_accepted(
            "pi-1",
            &token,
            &status("pi-1", 7, 1, &[("file-0", "Ready")]),
        )
        .await;
    for (seq, resend) in [(7, false), (6, false), (9, true)] {
        let response = server
            .send(Method::POST, path, &token, &json!({"reportSeq": seq}))
            .await;
        assert_eq!(response.status(), 200);
        let ack: Value = response.json().await.expect("JSON");
        assert_eq!(ack, json!({"reportSeq": 7, "resend": resend}), "seq {seq}");
    }
    // A heartbeat changes no status and writes no event.
    let view = server.json("/api/v1/agents/pi-1/status", READER).await;
    assert_eq!(view["status"]["reportSeq"], 7);
}

on_both_stores!(only_the_agent_itself_sends_heartbeats_and_bodies_are_checked);
async fn only_the_agent_itself_sends_heartbeats_and_bodies_are_checked(store: Backend) {
    let server = serve(store).await;
    let token = server.register("pi-1", json!({})).await;
    let other = server.register("pi-2", json!({})).await;
    let path = "/api/v1/agents/pi-1/heartbeat";
    let body = json!({"reportSeq": 1});
    for caller in [ADMIN, READER, other.as_str()] {
        expect_error(
            server.send(Method::POST, path, caller, &body).await,
            403,
            "forbidden",
        )
        .await;
    }
    let error = expect_error(
        server
            .send(
                Method::POST,
                path,
                &token,
                &json!({"reportSeq": "one", "extra": 1}),
            )
            .await,
        422,
        "invalid-manifest",
    )
    .await;
    assert!(
        error["error"]["violations"][0]["path"]
            .as_str()
            .is_some_and(|p| p == "reportSeq" || p == "extra"),
        "{error}"
    );
}

on_both_stores!(watch_polls_keep_an_agent_that_sends_no_reports_from_going_stale);
async fn watch_polls_keep_an_agent_that_sends_no_reports_from_going_stale(store: Backend) {
    let pool = store.pool();
    let interval = Duration::from_millis(600);
    let server = serve_with_interval(store, interval).await;
    let token = server.register("pi-1", json!({})).await;
    let generation = server.apply("pi-1", &manifest("pi-1", &["a"])).await;
    server
        .report_accepted(
            "pi-1",
            &token,
            &status("pi-1", 1, generation, &[("file-0", "Ready")]),
        )
        .await;
    let poll = format!("/api/v1/agents/pi-1/manifest?afterGeneration={generation}&waitSeconds=1");
    // Three stale thresholds (3 × interval each) of polling and nothing else: the agent stays
    // converged throughout.
    let until = tokio::time::Instant::now() + interval * 9;
    while tokio::time::Instant::now() < until {
        let before = last_seen(&server, pool.as_ref(), "pi-1").await;
        // Held a second; its contact, noted at its start, is written within 50 ms.
        assert_eq!(server.get(&poll, &token).await.status(), 304);
        assert!(
            last_seen(&server, pool.as_ref(), "pi-1").await > before,
            "the poll is contact"
        );
        let view = server.json("/api/v1/agents/pi-1/status", READER).await;
        assert_eq!(view["summary"]["state"], "converged", "{view}");
    }
    // A reader's poll is not the agent's contact.
    let before = last_seen(&server, pool.as_ref(), "pi-1").await;
    assert_eq!(
        server
            .get(
                &format!("/api/v1/agents/pi-1/manifest?afterGeneration={generation}"),
                READER
            )
            .await
            .status(),
        304
    );
    // Past a batch of contact writes, nothing moved.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(last_seen(&server, pool.as_ref(), "pi-1").await, before);
}
