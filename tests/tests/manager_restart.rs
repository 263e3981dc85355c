//! Acceptance 5: manifests, history, status and events written through the API are all there
//! after the manager process is killed with SIGKILL and started again.

use fleetlet_tests::manager::ManagerProcess;
use fleetlet_tests::postgres::fresh_database;
use reqwest::Method;
use serde_json::{Value, json};

fn manifest(text: &str) -> Value {
    json!({"apiVersion": "fleetlet.dev/v1", "kind": "AgentManifest", "agentId": "pi-1",
           "resources": [{"id": "motd", "kind": "File",
                          "spec": {"path": "/etc/motd", "content": {"text": text}, "mode": "0644"}}]})
}

fn status() -> Value {
    json!({
        "apiVersion": "fleetlet.dev/v1", "kind": "AgentStatus", "agentId": "pi-1",
        "reportSeq": 7, "manifestGeneration": 2, "observedGeneration": 2,
        "observedAt": "2026-11-22T10:00:00Z",
        "agent": {"version": "0.1.0", "hostname": "pi-1", "arch": "aarch64", "os": "linux",
                  "bootId": "b", "startedAt": "2026-11-22T09:00:00Z", "supportedKinds": ["File"]},
        "conditions": [{"type": "Ready", "status": "True", "reason": "AllReady", "message": "1 of 1 ready",
                        "lastTransitionTime": "2026-11-22T10:00:00Z"}],
        "resources": {"motd": {"kind": "File", "phase": "Ready", "since": "2026-11-22T10:00:00Z",
                               "generation": 2, "specHash": "sha256:ab",
                               "details": {"sha256": "cd", "size": 4, "mode": "0644"}}}
    })
}

async fn snapshot(
    client: &reqwest::Client,
    manager: &ManagerProcess,
) -> anyhow::Result<Vec<Value>> {
    let mut facts = Vec::new();
    for path in [
        "/api/v1/agents/pi-1/manifest",
        "/api/v1/agents/pi-1/manifests",
        "/api/v1/agents/pi-1/status",
        "/api/v1/agents/pi-1/events",
    ] {
        let response = manager
            .admin(client, Method::GET, path)
            .send()
            .await?
            .error_for_status()?;
        facts.push(response.json().await?);
    }
    Ok(facts)
}

#[tokio::test]
async fn facts_survive_a_killed_manager() -> anyhow::Result<()> {
    let database = fresh_database().await?;
    let mut manager = ManagerProcess::start(&database.url).await?;
    let client = reqwest::Client::new();
    let token = manager
        .register(
            &client,
            json!({"agentId": "pi-1", "labels": {"site": "kitchen"}}),
        )
        .await?;
    for text in ["one", "two"] {
        manager
            .put_manifest(&client, "pi-1", &manifest(text))
            .await?
            .error_for_status()?;
    }
    client
        .put(format!("{}/api/v1/agents/pi-1/status", manager.url))
        .bearer_auth(&token)
        .json(&status())
        .send()
        .await?
        .error_for_status()?;
    let before = snapshot(&client, &manager).await?;
    assert_eq!(before[0]["generation"], 2);
    assert_eq!(before[1]["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(before[2]["status"]["reportSeq"], 7);
    assert!(
        before[3]["items"]
            .as_array()
            .is_some_and(|events| events.len() >= 4)
    );

    manager.kill()?;
    let mut options = manager.options.clone();
    options.extra_args.clear();
    let restarted = ManagerProcess::start_with(options).await?;
    let after = snapshot(&client, &restarted).await?;
    assert_eq!(after, before);

    // The agent's token is still valid, and its next report is judged against the stored seq.
    let replay: Value = client
        .put(format!("{}/api/v1/agents/pi-1/status", restarted.url))
        .bearer_auth(&token)
        .json(&status())
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(replay, json!({"accepted": false}));
    Ok(())
}
