//! The `fleetlet` CLI against a real manager (in-memory, `--dev`): register, apply, wait, read.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fleetlet_tests::manager::ManagerProcess;
use serde_json::{Value, json};

fn cli_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = target.join("debug").join("fleetlet");
    assert!(
        path.exists(),
        "{} does not exist: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

fn fleetlet(manager: &ManagerProcess, args: &[&str]) -> Output {
    Command::new(cli_binary())
        .env("FLEETLET_URL", &manager.url)
        .env("FLEETLET_TOKEN", &manager.admin_token)
        .args(args)
        .output()
        .expect("runs the CLI")
}

#[tokio::test]
async fn the_cli_registers_applies_waits_and_reads() -> anyhow::Result<()> {
    let manager = ManagerProcess::start_dev().await?;
    let added = fleetlet(&manager, &["agent", "add", "pi-1", "--label", "site=lab"]);
    assert!(added.status.success(), "{added:?}");
    let token = String::from_utf8(added.stdout)?.trim().to_owned();
    assert!(token.starts_with("flt_"));

    let dir = tempfile::tempdir()?;
    let file = dir.path().join("pi-1.json");
    std::fs::write(
        &file,
        json!({"apiVersion": "fleetlet.dev/v1", "kind": "AgentManifest", "agentId": "pi-1",
               "resources": [{"id": "motd", "kind": "File",
                              "spec": {"path": "/etc/motd", "content": {"text": "hi"}, "mode": "0644"}}]})
        .to_string(),
    )?;
    let file = file.to_str().expect("utf-8 path");
    let applied = fleetlet(&manager, &["apply", "-f", file]);
    assert!(applied.status.success(), "{applied:?}");
    assert_eq!(
        String::from_utf8(applied.stdout)?.trim(),
        "pi-1: generation 1"
    );

    // Nobody reports yet: --wait times out, non-zero, with the per-resource table.
    let waited = fleetlet(
        &manager,
        &["apply", "-f", file, "--wait", "--timeout", "1s"],
    );
    assert!(!waited.status.success());
    assert!(String::from_utf8(waited.stderr)?.contains("RESOURCE"));

    // Once the agent reports the generation Ready, --wait succeeds.
    manager
        .report_generation_one(
            "pi-1",
            &token,
            json!({"motd": {"kind": "File", "phase": "Ready", "since": "2026-11-22T10:00:00Z", "generation": 1}}),
        )
        .await?;
    let waited = fleetlet(
        &manager,
        &["apply", "-f", file, "--wait", "--timeout", "10s"],
    );
    assert!(waited.status.success(), "{waited:?}");

    let status = fleetlet(&manager, &["get", "status", "pi-1", "-o", "json"]);
    assert!(status.status.success());
    let view: Value = serde_json::from_slice(&status.stdout)?;
    assert_eq!(view["summary"]["state"], "converged");
    let table = fleetlet(&manager, &["get", "agents"]);
    let table = String::from_utf8(table.stdout)?;
    assert!(
        table.contains("pi-1") && table.contains("converged"),
        "{table}"
    );
    Ok(())
}
