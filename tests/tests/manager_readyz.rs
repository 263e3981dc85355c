//! Acceptance 4: /readyz reports the Postgres store, answers 503 with a failureKind within two
//! seconds of PostgreSQL stopping, and recovers by itself when it is back.

use std::time::{Duration, Instant};

use fleetlet_tests::manager::{ManagerProcess, wait_for};
use fleetlet_tests::postgres::PgCluster;
use reqwest::Method;
use serde_json::{Value, json};

async fn readyz(
    client: &reqwest::Client,
    manager: &ManagerProcess,
) -> anyhow::Result<(u16, Value)> {
    let response = client.get(format!("{}/readyz", manager.url)).send().await?;
    Ok((response.status().as_u16(), response.json().await?))
}

#[tokio::test]
async fn readyz_follows_postgres_down_and_back_up_without_a_restart() -> anyhow::Result<()> {
    let cluster = PgCluster::start()?;
    let manager = ManagerProcess::start(&cluster.database_url("postgres")).await?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;

    let (status, body) = readyz(&client, &manager).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ready"], true);
    assert_eq!(body["store"]["adapter"], "postgres");
    assert_eq!(body["store"]["reachable"], true);
    assert_eq!(body["store"]["migrationReady"], true);
    assert_eq!(body["store"]["migrationVersion"], 7);
    assert_eq!(body["store"]["failureKind"], Value::Null);
    assert_eq!(
        body["store"]["database"],
        format!(
            "postgres://fleetlet:***@127.0.0.1:{}/postgres",
            cluster.port
        )
    );
    assert!(!body.to_string().contains(&cluster.password));

    cluster.stop()?;
    let asked = Instant::now();
    let (status, body) = readyz(&client, &manager).await?;
    let took = asked.elapsed();
    assert_eq!(status, 503, "{body}");
    assert!(took < Duration::from_secs(2), "readyz took {took:?}");
    assert_eq!(body["ready"], false);
    assert_eq!(body["store"]["reachable"], false);
    assert!(body["store"]["failureKind"].is_string(), "{body}");
    // The API says the same, as JSON, just as fast.
    let asked = Instant::now();
    let response = manager
        .admin(&client, Method::GET, "/api/v1/agents")
        .send()
        .await?;
    assert_eq!(response.status(), 503);
    let error: Value = response.json().await?;
    assert_eq!(error["error"]["kind"], "store-unavailable");
    assert!(asked.elapsed() < Duration::from_secs(2));

    cluster.start_again()?;
    wait_for("readyz to recover", Duration::from_secs(20), || async {
        matches!(readyz(&client, &manager).await, Ok((200, _))).then_some(())
    })
    .await?;
    let response = manager
        .admin(&client, Method::POST, "/api/v1/agents")
        .json(&json!({"agentId": "after-outage"}))
        .send()
        .await?;
    assert_eq!(response.status(), 201);
    Ok(())
}
