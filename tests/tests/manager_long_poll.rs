//! Acceptance 2: a long-poll held by one manager process is answered within a second of a
//! manifest write made through a second process on the same database (Postgres NOTIFY), and
//! answers 304 when its wait runs out.

use std::time::{Duration, Instant};

use fleetlet_tests::manager::{ManagerOptions, ManagerProcess, wait_for};
use fleetlet_tests::postgres::fresh_database;
use reqwest::Method;
use serde_json::{Value, json};

fn manifest(text: &str) -> Value {
    json!({"apiVersion": "fleetlet.dev/v1", "kind": "AgentManifest", "agentId": "pi-1",
           "resources": [{"id": "motd", "kind": "File",
                          "spec": {"path": "/etc/motd", "content": {"text": text}, "mode": "0644"}}]})
}

/// Registers agent `pi-1`, gives it generation 1, and returns the agent's token.
async fn register_with_manifest(
    manager: &ManagerProcess,
    client: &reqwest::Client,
) -> anyhow::Result<String> {
    let token = manager.register(client, json!({"agentId": "pi-1"})).await?;
    manager
        .put_manifest(client, "pi-1", &manifest("one"))
        .await?
        .error_for_status()?;
    Ok(token)
}

#[tokio::test]
async fn long_poll_is_answered_within_a_second_of_a_write_through_another_manager()
-> anyhow::Result<()> {
    let database = fresh_database().await?;
    let first = ManagerProcess::start(&database.url).await?;
    // The second replica shares the database and the admin token, as replicas behind one load
    // balancer would.
    let mut options = ManagerOptions::new(Some(&database.url));
    options.admin_token = first.admin_token.clone();
    let second = ManagerProcess::start_with(options).await?;
    let client = reqwest::Client::new();

    let token = register_with_manifest(&first, &client).await?;

    let poll = tokio::spawn(
        client
            .get(format!(
                "{}/api/v1/agents/pi-1/manifest?afterGeneration=1&waitSeconds=30",
                first.url
            ))
            .bearer_auth(&token)
            .send(),
    );
    // The poll must really be waiting before the write, or the test would prove nothing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !poll.is_finished(),
        "the long-poll answered before any write"
    );

    let written = Instant::now();
    let stored: Value = second
        .put_manifest(&client, "pi-1", &manifest("two"))
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(stored["generation"], 2);
    let answer = poll.await??;
    let latency = written.elapsed();
    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await?;
    assert_eq!(body["generation"], 2);
    assert!(
        latency < Duration::from_secs(1),
        "answered {latency:?} after the write"
    );

    // Nothing newer: the poll answers 304 once its wait runs out.
    let started = Instant::now();
    let answer = client
        .get(format!(
            "{}/api/v1/agents/pi-1/manifest?afterGeneration=2&waitSeconds=1",
            first.url
        ))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(answer.status(), 304);
    assert_eq!(answer.headers()["etag"], "\"2\"");
    // At least its wait; well short of the 30 s a forgotten timeout would take (the upper bound
    // is loose so that a loaded machine cannot fail it).
    assert!(
        started.elapsed() >= Duration::from_millis(900)
            && started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    Ok(())
}

/// A manager that is stopped answers its held long-polls at once (304, nothing newer) rather
/// than holding its drain until they time out, and then exits cleanly.
#[tokio::test]
async fn a_stopping_manager_answers_held_long_polls_and_exits() -> anyhow::Result<()> {
    let database = fresh_database().await?;
    let mut manager = ManagerProcess::start(&database.url).await?;
    let client = reqwest::Client::new();
    let token = register_with_manifest(&manager, &client).await?;
    let poll = tokio::spawn(
        client
            .get(format!(
                "{}/api/v1/agents/pi-1/manifest?afterGeneration=1&waitSeconds=300",
                manager.url
            ))
            .bearer_auth(&token)
            .send(),
    );
    // The poll must be held by the manager before it is stopped.
    wait_for(
        "the long-poll to be held",
        Duration::from_secs(20),
        || async {
            let metrics = manager
                .admin(&client, Method::GET, "/metrics")
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            metrics
                .lines()
                .any(|line| line == "fleetlet_long_polls_open 1")
                .then_some(())
        },
    )
    .await?;

    let status = manager.terminate(Duration::from_secs(60)).await?;
    let answer = poll.await??;
    assert_eq!(answer.status(), 304, "{}", manager.logs());
    assert_eq!(answer.headers()["etag"], "\"1\"");
    assert!(status.success(), "{status:?}\n{}", manager.logs());
    // Answered, not cut off when the drain gave up.
    assert!(
        !manager.logs().contains("did not finish"),
        "{}",
        manager.logs()
    );
    Ok(())
}
