//! Issue 8's hard limits at the connection level, against the real binary: an oversized header
//! block is refused (431) without hurting anyone else, and so is an oversized body (413).

use std::time::Duration;

use fleetlet_tests::manager::ManagerProcess;
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn oversized_headers_and_bodies_are_refused_and_the_manager_carries_on() -> anyhow::Result<()>
{
    let manager = ManagerProcess::start_dev().await?;
    // No connection reuse: the server may close a connection after refusing a request whose body
    // it did not read, and a reused connection would then fail on the client's side, not the
    // manager's.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .build()?;

    // 100 KiB of header: above the 64 KiB limit, refused before any handler runs.
    let response = client
        .get(format!("{}/healthz", manager.url))
        .header("x-padding", "a".repeat(100 * 1024))
        .send()
        .await?;
    assert_eq!(response.status(), 431);
    let body: serde_json::Value = response.json().await?;
    assert_eq!(body["error"]["kind"], "headers-too-large");
    // Too many header fields: hyper refuses them itself (431, no body).
    let mut request = client.get(format!("{}/healthz", manager.url));
    for i in 0..100 {
        request = request.header(format!("x-field-{i}"), "v");
    }
    assert_eq!(request.send().await?.status(), 431);

    // A body above 8 MiB is a JSON 413.
    let big = json!({"agentId": "pi-1", "labels": {"a": "b".repeat(9 * 1024 * 1024)}});
    let response = manager
        .admin(&client, Method::POST, "/api/v1/agents")
        .json(&big)
        .send()
        .await?;
    assert_eq!(response.status(), 413);
    let body: serde_json::Value = response.json().await?;
    assert_eq!(body["error"]["kind"], "payload-too-large");

    // Ordinary requests are unaffected.
    assert_eq!(
        client
            .get(format!("{}/healthz", manager.url))
            .send()
            .await?
            .status(),
        200
    );
    Ok(())
}
