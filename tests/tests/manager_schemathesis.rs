//! Issue 8, acceptance 2: Schemathesis, a fuzzer nobody on the team wrote, runs against a live
//! manager on a fresh PostgreSQL database, driven by the manager's own `/api/v1/openapi.json`,
//! once per token role. Any server error or response that the document does not describe fails
//! the test.
//!
//! Schemathesis comes from PyPI: `deploy/dev/schemathesis.sh` installs the pinned version into
//! a virtual environment. Without it this test fails; it never skips.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use fleetlet_tests::manager::{ManagerOptions, ManagerProcess, random_token};
use fleetlet_tests::postgres::fresh_database;
use serde_json::{Value, json};

/// The version `deploy/dev/schemathesis.sh` installs and this test was written against.
const SCHEMATHESIS_VERSION: &str = "4.32.5";
/// Where `deploy/dev/schemathesis.sh` puts it by default.
const DEFAULT_BINARY: &str = "/var/tmp/fleetlet-schemathesis/bin/st";
/// Test cases per operation and phase: about ten seconds per role on a small machine.
const MAX_EXAMPLES: &str = "30";

/// `$FLEETLET_SCHEMATHESIS`, else the script's venv, else `st` on PATH; a loud failure if none.
fn schemathesis_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("FLEETLET_SCHEMATHESIS") {
        return PathBuf::from(path);
    }
    let default = PathBuf::from(DEFAULT_BINARY);
    if default.exists() {
        return default;
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("st"))
            .find(|candidate| candidate.exists())
    });
    on_path.unwrap_or_else(|| {
        panic!(
            "schemathesis is not installed: run deploy/dev/schemathesis.sh \
             (or set FLEETLET_SCHEMATHESIS to its `st` binary)"
        )
    })
}

fn manifest(agent: &str) -> Value {
    json!({"apiVersion": "fleetlet.dev/v1", "kind": "AgentManifest", "agentId": agent,
           "resources": [{"id": "motd", "kind": "File",
                          "spec": {"path": "/etc/motd", "content": {"text": "hello\n"}, "mode": "0644"}}]})
}

fn status(agent: &str) -> Value {
    json!({
        "apiVersion": "fleetlet.dev/v1", "kind": "AgentStatus", "agentId": agent,
        "reportSeq": 1, "manifestGeneration": 1, "observedGeneration": 1,
        "observedAt": "2026-11-22T10:00:00Z",
        "agent": {"version": "0.1.0", "hostname": agent, "arch": "aarch64", "os": "linux",
                  "bootId": "b", "startedAt": "2026-11-22T09:00:00Z"},
        "resources": {"motd": {"kind": "File", "phase": "Ready", "since": "2026-11-22T10:00:00Z",
                               "generation": 1}}
    })
}

/// The operations of fleets (issue 20), which the OpenAPI document must describe.
const FLEET_OPERATIONS: [(&str, &str); 8] = [
    ("/api/v1/fleets", "get"),
    ("/api/v1/fleets/{name}", "get"),
    ("/api/v1/fleets/{name}", "put"),
    ("/api/v1/fleets/{name}", "delete"),
    ("/api/v1/fleets/{name}/devices", "get"),
    ("/api/v1/fleets/{name}/revisions", "get"),
    ("/api/v1/fleets/{name}/events", "get"),
    ("/api/v1/agents/{agentId}", "patch"),
];

/// The operator actions on a rollout: documented one path each, or as one path with an
/// `{action}` parameter.
const ROLLOUT_ACTIONS: [&str; 5] = ["pause", "resume", "approve", "abort", "rollback"];

/// A fleet of the agents labelled `site: lab`, one File in its template.
fn fleet() -> Value {
    json!({"apiVersion": "fleetlet.dev/v1", "kind": "Fleet", "name": "kiosks",
           "selector": {"matchLabels": {"site": "lab"}},
           "parameters": {"greeting": {"pattern": "^[a-z]+$", "default": "hello"}},
           "template": {"resources": [{"id": "motd", "kind": "File",
               "spec": {"path": "/etc/motd", "content": {"text": "{{ greeting }} {{ agentId }}\n"},
                        "mode": "0644"}}]},
           "rolloutStrategy": {"batches": [{"limit": 1}, {}], "successThreshold": "100%"}})
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_undocumented_response_for_any_role()
-> anyhow::Result<()> {
    let binary = schemathesis_binary();
    let version = Command::new(&binary)
        .arg("--version")
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    assert!(
        version.contains(SCHEMATHESIS_VERSION),
        "{} is {version:?}, but this test pins {SCHEMATHESIS_VERSION}: run deploy/dev/schemathesis.sh",
        binary.display()
    );

    let database = fresh_database().await?;
    let mut options = ManagerOptions::new(Some(&database.url));
    let bootstrap = random_token("bootstrap");
    options
        .extra_env
        .insert("FLEETLET_BOOTSTRAP_TOKEN".into(), bootstrap.clone());
    // Long-polls that wait out their full time would make the run take hours; one second still
    // exercises the waiting path and its 304.
    options
        .extra_env
        .insert("FLEETLET_MAX_WAIT_SECONDS".into(), "1".into());
    let manager = ManagerProcess::start_with(options).await?;

    // Something to find: an agent with a manifest and a status, so reads answer 200, not 404.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let agent_token = manager
        .register(
            &client,
            json!({"agentId": "pi-1", "labels": {"site": "lab"}}),
        )
        .await?;
    manager
        .put_manifest(&client, "pi-1", &manifest("pi-1"))
        .await?
        .error_for_status()?;
    client
        .put(format!("{}/api/v1/agents/pi-1/status", manager.url))
        .bearer_auth(&agent_token)
        .json(&status("pi-1"))
        .send()
        .await?
        .error_for_status()?;

    // A fleet selecting pi-1 (issue 20), so the fleet routes have a fleet, devices, revisions
    // and a rollout to read and act on.
    manager
        .admin(&client, reqwest::Method::PUT, "/api/v1/fleets/kiosks")
        .json(&fleet())
        .send()
        .await?
        .error_for_status()?;

    let schema_url = format!("{}/api/v1/openapi.json", manager.url);
    // Schemathesis keeps a cache in its working directory; that belongs in a temporary one, not
    // in the source tree.
    let work_dir = tempfile::tempdir()?;
    let mut failures = Vec::new();
    for (role, token) in [
        ("admin", manager.admin_token.clone()),
        ("reader", manager.reader_token.clone()),
        ("agent", agent_token.clone()),
        ("bootstrap", bootstrap.clone()),
    ] {
        let output = tokio::task::spawn_blocking({
            let binary = binary.clone();
            let schema_url = schema_url.clone();
            let work_dir = work_dir.path().to_owned();
            move || {
                Command::new(binary)
                    .current_dir(work_dir)
                    .args(["run", &schema_url])
                    .args(["--header", &format!("Authorization: Bearer {token}")])
                    // Every check, except that every request valid by the schema must succeed:
                    // some rules span fields or the path (the body's agentId must be the path's;
                    // waitSeconds needs afterGeneration; a cursor must come from a previous page),
                    // which JSON Schema cannot state, and a 400/422 there is the right answer.
                    .args([
                        "--checks",
                        "all",
                        "--exclude-checks",
                        "positive_data_acceptance",
                    ])
                    .args(["--max-examples", MAX_EXAMPLES, "--seed", "8"])
                    .args(["--request-timeout", "15", "--no-color"])
                    .output()
            }
        })
        .await??;
        let stdout = String::from_utf8_lossy(&output.stdout);
        println!("--- schemathesis as {role} ---\n{stdout}");
        if !output.status.success() {
            failures.push(format!(
                "schemathesis as {role} exited with {}:\n{stdout}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));

    // The manager itself must have survived it all, and never logged a panic.
    let logs = manager.logs();
    assert!(
        !logs.contains("panicked"),
        "the manager panicked during the run:\n{logs}"
    );
    Ok(())
}

/// Issue 20, acceptance 8: schemathesis covers the fleet routes only if the OpenAPI document
/// describes them, for it tests exactly the operations the document holds.
#[tokio::test]
async fn the_openapi_document_describes_every_fleet_route() -> anyhow::Result<()> {
    let manager = ManagerProcess::start_dev().await?;
    let client = reqwest::Client::new();
    let schema_url = format!("{}/api/v1/openapi.json", manager.url);
    let document: Value = client.get(&schema_url).send().await?.json().await?;
    for (path, method) in FLEET_OPERATIONS {
        assert!(
            document["paths"][path][method].is_object(),
            "the OpenAPI document lacks {method} {path}, so schemathesis would not test it"
        );
    }
    let per_action = ROLLOUT_ACTIONS.iter().all(|action| {
        document["paths"][format!("/api/v1/fleets/{{name}}/rollout/{action}")]["post"].is_object()
    });
    assert!(
        per_action
            || document["paths"]["/api/v1/fleets/{name}/rollout/{action}"]["post"].is_object(),
        "the OpenAPI document lacks the rollout actions, so schemathesis would not test them"
    );
    Ok(())
}
