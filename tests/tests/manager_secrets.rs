//! Acceptance 8: with logging at trace level, a run that uses every endpoint, sees a database
//! outage and recovers writes neither the database password nor any token to its logs.

use std::time::Duration;

use fleetlet_tests::manager::{ManagerOptions, ManagerProcess, wait_for};
use fleetlet_tests::postgres::PgCluster;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn manifest(agent: &str) -> Value {
    json!({"apiVersion": "fleetlet.dev/v1", "kind": "AgentManifest", "agentId": agent,
           "resources": [{"id": "motd", "kind": "File",
                          "spec": {"path": "/etc/motd", "content": {"text": "hi"}, "mode": "0644"}}]})
}

fn status(agent: &str, seq: u64) -> Value {
    json!({
        "apiVersion": "fleetlet.dev/v1", "kind": "AgentStatus", "agentId": agent,
        "reportSeq": seq, "manifestGeneration": 1, "observedGeneration": 1,
        "observedAt": "2026-11-22T10:00:00Z",
        "agent": {"version": "0.1.0", "hostname": agent, "arch": "aarch64", "os": "linux",
                  "bootId": "b", "startedAt": "2026-11-22T09:00:00Z"},
        "resources": {"motd": {"kind": "File", "phase": "Ready", "since": "2026-11-22T10:00:00Z", "generation": 1}}
    })
}

/// Calls every endpoint once (some of them with wrong tokens) and returns the tokens it saw.
async fn exercise(
    client: &reqwest::Client,
    manager: &ManagerProcess,
    suffix: &str,
) -> anyhow::Result<Vec<String>> {
    let url = |path: &str| format!("{}{path}", manager.url);
    let agent = format!("pi-{suffix}");
    let spare = format!("spare-{suffix}");
    let mut tokens = Vec::new();
    for id in [&agent, &spare] {
        tokens.push(
            manager
                .register(client, json!({"agentId": id, "labels": {"site": "lab"}}))
                .await?,
        );
    }
    let token = manager.rotate_token(client, &agent).await?;
    tokens.push(token.clone());
    manager
        .admin(
            client,
            Method::PUT,
            &format!("/api/v1/agents/{agent}/manifest"),
        )
        .header("If-Match", "\"0\"")
        .json(&manifest(&agent))
        .send()
        .await?
        .error_for_status()?;
    let agent_get = |path: String| client.get(url(&path)).bearer_auth(&token).send();
    assert_eq!(
        agent_get(format!("/api/v1/agents/{agent}/manifest"))
            .await?
            .status(),
        200
    );
    assert_eq!(
        agent_get(format!(
            "/api/v1/agents/{agent}/manifest?afterGeneration=1&waitSeconds=1"
        ))
        .await?
        .status(),
        304
    );
    client
        .put(url(&format!("/api/v1/agents/{agent}/status")))
        .bearer_auth(&token)
        .json(&status(&agent, 1))
        .send()
        .await?
        .error_for_status()?;
    for path in [
        format!("/api/v1/agents/{agent}/status"),
        format!("/api/v1/agents/{agent}/manifests"),
        format!("/api/v1/agents/{agent}/events?afterSeq=0&limit=5"),
        "/api/v1/agents?state=converged&label=site=lab&limit=1".to_owned(),
    ] {
        let response = client
            .get(url(&path))
            .bearer_auth(&manager.reader_token)
            .send()
            .await?;
        assert_eq!(response.status(), 200, "{path}");
    }
    for path in [
        "/healthz",
        "/readyz",
        "/api/v1/schema/manifest",
        "/api/v1/schema/status",
    ] {
        assert!(
            client.get(url(path)).send().await?.status().is_success(),
            "{path}"
        );
    }
    // Refusals: a wrong token, the old agent token, a reader writing, a malformed body.
    let bogus = format!("flt_{}", "ab".repeat(32));
    assert_eq!(
        client
            .get(url("/api/v1/agents"))
            .bearer_auth(&bogus)
            .send()
            .await?
            .status(),
        401
    );
    tokens.push(bogus);
    let response = client
        .put(url(&format!("/api/v1/agents/{agent}/manifest")))
        .bearer_auth(&manager.reader_token)
        .json(&manifest(&agent))
        .send()
        .await?;
    assert_eq!(response.status(), 403);
    let response = manager
        .admin(
            client,
            Method::PUT,
            &format!("/api/v1/agents/{agent}/manifest"),
        )
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await?;
    assert_eq!(response.status(), 400);
    assert_eq!(
        manager
            .admin(client, Method::DELETE, &format!("/api/v1/agents/{spare}"))
            .send()
            .await?
            .status(),
        StatusCode::NO_CONTENT
    );
    Ok(tokens)
}

#[tokio::test]
async fn no_password_or_token_reaches_the_logs_even_at_trace_level() -> anyhow::Result<()> {
    let cluster = PgCluster::start()?;
    let mut options = ManagerOptions::new(Some(&cluster.database_url("postgres")));
    options.log_filter = "trace".to_owned();
    let mut manager = ManagerProcess::start_with(options).await?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;

    let mut tokens = exercise(&client, &manager, "before").await?;

    // An outage: requests fail with 503 while the listener and the pool reconnect in a loop.
    cluster.stop()?;
    for path in ["/readyz", "/api/v1/agents"] {
        let response = manager.admin(&client, Method::GET, path).send().await?;
        assert_eq!(response.status(), 503, "{path}");
    }
    let response = client
        .get(format!("{}/api/v1/agents/pi-before/manifest", manager.url))
        .bearer_auth(&tokens[2])
        .send()
        .await?;
    assert_eq!(response.status(), 503);
    cluster.start_again()?;
    wait_for(
        "the manager to be ready again",
        Duration::from_secs(20),
        || async {
            let response = client
                .get(format!("{}/readyz", manager.url))
                .send()
                .await
                .ok()?;
            (response.status() == 200).then_some(())
        },
    )
    .await?;
    tokens.extend(exercise(&client, &manager, "after").await?);

    manager.kill()?;
    let logs = manager.logs();
    assert!(
        logs.lines()
            .filter(|l| l.contains("TRACE") || l.contains("DEBUG"))
            .count()
            > 20,
        "the run was not logged at trace level:\n{logs}"
    );
    assert!(
        logs.contains("postgres://fleetlet:***@127.0.0.1"),
        "the redacted URL should appear"
    );
    let mut secrets = vec![
        ("database password", cluster.password.clone()),
        ("admin token", manager.admin_token.clone()),
        ("reader token", manager.reader_token.clone()),
    ];
    secrets.extend(tokens.into_iter().map(|t| ("agent token", t)));
    for (what, secret) in secrets {
        if let Some(line) = logs.lines().find(|line| line.contains(&secret)) {
            panic!("the {what} appears in the logs: {line}");
        }
    }
    Ok(())
}
