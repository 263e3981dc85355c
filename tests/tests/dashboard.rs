//! The dashboard in a real headless Chromium (Debian's package, installed by
//! `deploy/dev/chromium.sh`) against the real manager on a seeded PostgreSQL database: the fleet
//! page shows the counts and the state of every agent, an agent page lists its typed resources
//! and events, the fleets page shows a rollout that paused by itself (real agents, a canary that
//! fails) with its batches and pause reason, the device table filters by fleet, and screenshots
//! land in `target/test-artifacts/`.
//!
//! The reader token travels in the URL fragment (`#token=...`), which the browser never sends to
//! the server; the page moves it into sessionStorage.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fleetlet_manifests::fleet_api::RolloutPhase;
use fleetlet_tests::fleets::{Lab, fleet, template_file};
use fleetlet_tests::manager::ManagerProcess;
use fleetlet_tests::postgres::fresh_database;
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::Connection;

/// Chromium's own start and the page's first fetches fit well within this.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(90);

fn chromium() -> PathBuf {
    let path = std::env::var_os("FLEETLET_CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join("chromium"))
                    .find(|candidate| candidate.exists())
            })
        });
    match path {
        Some(path) if path.exists() => path,
        _ => panic!(
            "chromium is not installed: run deploy/dev/chromium.sh (Debian's chromium package) first"
        ),
    }
}

fn artifacts_dir() -> anyhow::Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Runs headless Chromium on `url` with a fresh profile; `mode` is `--dump-dom` or
/// `--screenshot=PATH`. Returns stdout. The virtual time budget lets the page's fetches and
/// first render finish before the DOM is dumped.
fn run_chromium(url: &str, mode: &str) -> anyhow::Result<String> {
    let profile = tempfile::tempdir()?;
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1280,900",
            "--virtual-time-budget=8000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(mode)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting chromium")?;
    let deadline = Instant::now() + BROWSER_TIMEOUT;
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("chromium did not finish within {BROWSER_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!("chromium failed: {}", output.status);
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn report(agent_id: &str, seq: u64, observed: u64, resources: Value) -> Value {
    json!({
        "apiVersion": "fleetlet.dev/v1", "kind": "AgentStatus", "agentId": agent_id,
        "reportSeq": seq, "manifestGeneration": 1, "observedGeneration": observed,
        "observedAt": "2026-11-22T10:00:00Z",
        "agent": {"version": "0.1.0", "hostname": agent_id, "arch": "aarch64", "os": "linux",
                  "startedAt": "2026-11-22T09:00:00Z"},
        "resources": resources
    })
}

fn file(id: &str, path: &str) -> Value {
    json!({"id": id, "kind": "File",
           "spec": {"path": path, "content": {"text": "hi\n"}, "mode": "0644"}})
}

/// A report of an agent that rolled generation 2 back to generation 1.
fn rolled_back_report(agent_id: &str) -> Value {
    let mut status = report(
        agent_id,
        1,
        1,
        json!({"motd": {"kind": "File", "phase": "Ready", "since": "2026-11-22T10:00:00Z", "generation": 1}}),
    );
    status["manifestGeneration"] = json!(2);
    status["conditions"] = json!([{"type": "RolledBack", "status": "True",
        "reason": "ProgressDeadlineExceeded",
        "message": "generation 2 was not Ready within 60s (app: ImagePullFailed); rolled back to generation 1",
        "lastTransitionTime": "2026-11-22T10:00:00Z"}]);
    status
}

/// Registers agents in every fleet state: converged, degraded, rolledBack, progressing, stale,
/// unknown.
async fn seed(manager: &ManagerProcess, database_url: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let ready = |generation: u64| json!({"kind": "File", "phase": "Ready", "since": "2026-11-22T10:00:00Z", "generation": generation});
    let agents = [
        (
            "pi-ok",
            Some(report("pi-ok", 1, 1, json!({"motd": ready(1)}))),
        ),
        (
            "pi-bad",
            Some(report(
                "pi-bad",
                1,
                1,
                json!({
                    "motd": ready(1),
                    "escape": {"kind": "File", "phase": "Failed", "since": "2026-11-22T10:00:00Z",
                               "generation": 1,
                               "error": {"reason": "PathNotAllowed",
                                         "message": "/root/escape is outside the file roots"}}
                }),
            )),
        ),
        (
            "pi-busy",
            Some(report(
                "pi-busy",
                1,
                0,
                json!({"motd": {"kind": "File", "phase": "Reconciling",
                                "since": "2026-11-22T10:00:00Z", "generation": 1}}),
            )),
        ),
        (
            "pi-old",
            Some(report("pi-old", 1, 1, json!({"motd": ready(1)}))),
        ),
        ("pi-new", None),
        ("pi-back", Some(rolled_back_report("pi-back"))),
    ];
    for (agent_id, status) in agents {
        let token: Value = manager
            .admin(&client, Method::POST, "/api/v1/agents")
            .json(&json!({"agentId": agent_id, "labels": {"site": "lab"}}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let mut resources = vec![file("motd", "/etc/motd")];
        if agent_id == "pi-bad" {
            resources.push(file("escape", "/root/escape"));
        }
        let mut generations = vec![resources.clone()];
        if agent_id == "pi-back" {
            // The generation that the agent rolled back.
            generations.push(vec![
                file("motd", "/etc/motd"),
                file("app", "/etc/app.conf"),
            ]);
        }
        for resources in generations {
            let manifest = json!({"apiVersion": "fleetlet.dev/v1", "kind": "AgentManifest",
                                  "agentId": agent_id, "resources": resources});
            manager
                .put_manifest(&client, agent_id, &manifest)
                .await?
                .error_for_status()?;
        }
        if let Some(status) = status {
            client
                .put(format!("{}/api/v1/agents/{agent_id}/status", manager.url))
                .bearer_auth(token["token"].as_str().context("token")?)
                .json(&status)
                .send()
                .await?
                .error_for_status()?;
        }
    }
    // Staleness is measured by the manager's own receive time: an hour ago is stale.
    let mut connection = sqlx::PgConnection::connect(database_url).await?;
    sqlx::query(
        "UPDATE agents SET last_seen_at = now() - interval '1 hour' WHERE agent_id = 'pi-old'",
    )
    .execute(&mut connection)
    .await?;
    sqlx::query(
        "UPDATE agent_status SET received_at = now() - interval '1 hour' WHERE agent_id = 'pi-old'",
    )
    .execute(&mut connection)
    .await?;
    connection.close().await?;
    Ok(())
}

#[tokio::test]
async fn the_dashboard_renders_the_seeded_fleet_in_chromium() -> anyhow::Result<()> {
    let chromium_path = chromium();
    assert!(chromium_path.exists());
    let database = fresh_database().await?;
    let manager = ManagerProcess::start(&database.url).await?;
    seed(&manager, &database.url).await?;
    let fragment = format!("token={}", manager.reader_token);

    // The fleet page: counts per state and one row per agent with its state.
    let url = format!("{}/#{fragment}", manager.url);
    let dom = tokio::task::spawn_blocking(move || run_chromium(&url, "--dump-dom")).await??;
    assert!(
        dom.contains("data-loaded=\"true\""),
        "the page did not load:\n{dom}"
    );
    for (state, count) in [
        ("total", 6),
        ("converged", 1),
        ("degraded", 1),
        ("rolledBack", 1),
        ("progressing", 1),
        ("stale", 1),
        ("unknown", 1),
    ] {
        let needle = format!("id=\"count-{state}\">{count}<");
        assert!(dom.contains(&needle), "{needle} missing:\n{dom}");
    }
    for (agent, state) in [
        ("pi-ok", "converged"),
        ("pi-bad", "degraded"),
        ("pi-busy", "progressing"),
        ("pi-old", "stale"),
        ("pi-new", "unknown"),
        ("pi-back", "rolledBack"),
    ] {
        let needle = format!("data-agent=\"{agent}\" data-state=\"{state}\"");
        assert!(dom.contains(&needle), "{needle} missing:\n{dom}");
    }
    assert!(
        dom.contains("escape (PathNotAllowed)"),
        "failing resource missing:\n{dom}"
    );
    assert!(
        dom.contains("rolled back: generation 2 was not Ready within 60s"),
        "rollback missing from the fleet list:\n{dom}"
    );
    assert!(
        !dom.contains(&manager.reader_token),
        "the token stayed in the page"
    );

    // An agent page: its typed resources and recent events.
    let url = format!("{}/#agent=pi-bad&{fragment}", manager.url);
    let dom = tokio::task::spawn_blocking(move || run_chromium(&url, "--dump-dom")).await??;
    assert!(
        dom.contains("data-loaded=\"true\""),
        "the page did not load:\n{dom}"
    );
    assert!(
        dom.contains("data-resource=\"escape\" data-phase=\"Failed\""),
        "{dom}"
    );
    assert!(
        dom.contains("data-resource=\"motd\" data-phase=\"Ready\""),
        "{dom}"
    );
    assert!(
        dom.contains("/root/escape is outside the file roots"),
        "{dom}"
    );
    assert!(dom.contains("ManifestUpdated"), "events missing:\n{dom}");

    // A rolled-back agent's page says so above its resources, and its log has the event.
    let url = format!("{}/#agent=pi-back&{fragment}", manager.url);
    let dom = tokio::task::spawn_blocking(move || run_chromium(&url, "--dump-dom")).await??;
    assert!(
        dom.contains("data-loaded=\"true\""),
        "the page did not load:\n{dom}"
    );
    assert!(
        dom.contains("Rolled back: generation 2 was not Ready within 60s (app: ImagePullFailed); rolled back to generation 1"),
        "rollback banner missing:\n{dom}"
    );
    assert!(
        dom.contains(">RolledBack<"),
        "rollback event or condition missing:\n{dom}"
    );

    // Screenshots as test artifacts.
    let dir = artifacts_dir()?;
    for (name, fragment) in [
        ("dashboard-fleet.png", fragment.clone()),
        ("dashboard-agent.png", format!("agent=pi-bad&{fragment}")),
        (
            "dashboard-agent-rolled-back.png",
            format!("agent=pi-back&{fragment}"),
        ),
    ] {
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        let url = format!("{}/#{fragment}", manager.url);
        let mode = format!("--screenshot={}", path.display());
        tokio::task::spawn_blocking(move || run_chromium(&url, &mode)).await??;
        let bytes =
            std::fs::read(&path).with_context(|| format!("{} was not written", path.display()))?;
        assert!(
            bytes.starts_with(b"\x89PNG"),
            "{} is not a PNG",
            path.display()
        );
    }

    // Without a token the page asks for one and shows no data.
    let url = format!("{}/", manager.url);
    let dom = tokio::task::spawn_blocking(move || run_chromium(&url, "--dump-dom")).await??;
    assert!(dom.contains("<section id=\"login\">"), "{dom}");
    assert!(!dom.contains("data-agent=\"pi-ok\""), "{dom}");
    Ok(())
}

#[tokio::test]
async fn the_dashboard_shows_drift_repairs_and_keeps_a_refused_tokens_message() -> anyhow::Result<()>
{
    chromium();
    let database = fresh_database().await?;
    let manager = ManagerProcess::start(&database.url).await?;
    let client = reqwest::Client::new();
    let token = manager
        .register(&client, json!({"agentId": "pi-drift", "labels": {}}))
        .await?;
    manager
        .put_manifest(
            &client,
            "pi-drift",
            &json!({"apiVersion": "fleetlet.dev/v1", "kind": "AgentManifest",
                    "agentId": "pi-drift", "resources": [file("motd", "/etc/motd")]}),
        )
        .await?
        .error_for_status()?;
    let status = report(
        "pi-drift",
        1,
        1,
        json!({"motd": {"kind": "File", "phase": "Ready", "since": "2026-11-22T10:00:00Z",
                        "generation": 1,
                        "repairs": {"count": 3, "lastAt": "2026-11-22T10:05:00Z",
                                    "lastDrift": "content changed"}}}),
    );
    client
        .put(format!("{}/api/v1/agents/pi-drift/status", manager.url))
        .bearer_auth(&token)
        .json(&status)
        .send()
        .await?
        .error_for_status()?;

    // The agent page: the repair event stands out in the log, and the resource counts them.
    let url = format!(
        "{}/#agent=pi-drift&token={}",
        manager.url, manager.reader_token
    );
    let dom = tokio::task::spawn_blocking(move || run_chromium(&url, "--dump-dom")).await??;
    assert!(
        dom.contains("data-loaded=\"true\""),
        "the page did not load:\n{dom}"
    );
    assert!(
        dom.contains("data-type=\"ResourceRepaired\""),
        "repair event missing:\n{dom}"
    );
    assert!(
        dom.contains("File drifted and was repaired 3"),
        "repair event text missing:\n{dom}"
    );
    assert!(
        dom.contains("<td class=\"repairs\" title=\"2026-11-22T10:05:00Z\">3 (content changed,"),
        "repairs column missing:\n{dom}"
    );
    let path = artifacts_dir()?.join("dashboard-agent-repairs.png");
    let url = format!(
        "{}/#agent=pi-drift&token={}",
        manager.url, manager.reader_token
    );
    let mode = format!("--screenshot={}", path.display());
    tokio::task::spawn_blocking(move || run_chromium(&url, &mode)).await??;

    // A wrong token: the refusal is still on the page after the next refreshes (every 5 s; the
    // browser's virtual time runs 8 s), not only until the first one.
    let url = format!("{}/#token=flt_{}", manager.url, "0".repeat(64));
    let dom = tokio::task::spawn_blocking(move || run_chromium(&url, "--dump-dom")).await??;
    assert!(dom.contains("<section id=\"login\">"), "{dom}");
    assert!(
        dom.contains("the manager refused this token"),
        "the refusal vanished:\n{dom}"
    );
    Ok(())
}

#[tokio::test]
async fn the_fleets_page_shows_a_paused_rollout_with_its_pause_reason() -> anyhow::Result<()> {
    chromium();
    // Real agents: kiosk-1..3 in the fleet, printer-1 outside it.
    let mut lab = Lab::with_kiosks(3, 1).await?;
    // The template writes outside every device's file roots: the canary fails on its device and
    // the rollout pauses by itself after batch 1.
    let path = format!("{}/{{{{ agentId }}}}/motd", lab.outside().display());
    lab.put_fleet(&fleet(
        "kiosks",
        json!({"role": "kiosk"}),
        json!({}),
        vec![template_file("motd", &path, "hello from {{ agentId }}\n")],
        json!({"batches": [{"limit": 1}, {}], "successThreshold": "100%",
               "batchTimeoutSeconds": 60}),
    ))
    .await?;
    let view = lab
        .wait_fleet(
            "kiosks",
            "paused by itself",
            Duration::from_secs(90),
            |view| view.phase == RolloutPhase::Paused,
        )
        .await?;
    let reason = view.pause_reason.context("a pause reason")?;
    let (url, reader) = {
        let manager = lab.manager();
        (manager.url.clone(), manager.reader_token.clone())
    };

    // The fleets page, with the reader token: the phase, the reason, each batch and its counts.
    let page = format!("{url}/#fleets&token={reader}");
    let dom = tokio::task::spawn_blocking(move || run_chromium(&page, "--dump-dom")).await??;
    assert!(
        dom.contains("data-loaded=\"true\""),
        "the page did not load:\n{dom}"
    );
    assert!(
        dom.contains("data-fleet=\"kiosks\" data-phase=\"Paused\""),
        "{dom}"
    );
    assert!(
        dom.contains(&format!("<p class=\"pause-reason\">Paused: {reason}</p>")),
        "pause reason {reason:?} missing:\n{dom}"
    );
    assert!(reason.contains("1 failed"), "{reason}");
    assert!(
        dom.contains("<tr data-batch=\"1\" data-batch-state=\"done\" class=\"current\"><td>1</td><td>1</td><td>1</td><td class=\"succeeded\">0</td><td class=\"failed\">1</td>"),
        "batch 1 with its counts missing:\n{dom}"
    );
    assert!(
        dom.contains("<tr data-batch=\"2\" data-batch-state=\"waiting\""),
        "{dom}"
    );
    assert!(dom.contains("id=\"fleets-Paused\">1<"), "{dom}");

    // The device table filtered by the fleet: its three devices with their rollout state, not
    // the printer.
    let page = format!("{url}/#fleet=kiosks&token={reader}");
    let dom = tokio::task::spawn_blocking(move || run_chromium(&page, "--dump-dom")).await??;
    assert!(
        dom.contains("data-loaded=\"true\""),
        "the page did not load:\n{dom}"
    );
    for id in ["kiosk-1", "kiosk-2", "kiosk-3"] {
        assert!(
            dom.contains(&format!("data-agent=\"{id}\"")),
            "{id}:\n{dom}"
        );
    }
    assert!(!dom.contains("data-agent=\"printer-1\""), "{dom}");
    assert_eq!(
        dom.matches("data-rollout-state=\"Failed\"").count(),
        1,
        "one failed canary:\n{dom}"
    );
    assert_eq!(
        dom.matches("data-rollout-state=\"Pending\"").count(),
        2,
        "two devices waiting:\n{dom}"
    );
    assert!(
        dom.contains("<option value=\"kiosks\">kiosks</option>"),
        "{dom}"
    );

    let path = artifacts_dir()?.join("dashboard-fleets-paused.png");
    let _ = std::fs::remove_file(&path);
    let page = format!("{url}/#fleets&token={reader}");
    let mode = format!("--screenshot={}", path.display());
    tokio::task::spawn_blocking(move || run_chromium(&page, &mode)).await??;
    let bytes =
        std::fs::read(&path).with_context(|| format!("{} was not written", path.display()))?;
    assert!(
        bytes.starts_with(b"\x89PNG"),
        "{} is not a PNG",
        path.display()
    );
    Ok(())
}
