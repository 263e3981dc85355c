//! `deploy/dev/demo.sh --keep`, run twice in a row, leaves exactly one demo running: the second
//! run stops the first run's manager and agent (found by the PIDs it recorded) before it drops
//! and recreates the demo database, and its own manager and agent are up and converged. Then
//! `--stop` stops them.
//!
//! The demo runs the binaries cargo built (FLEETLET_DEMO_BIN_DIR), so that it does not rebuild
//! target/debug under other tests. It uses the demo's fixed places (/var/tmp/fleetlet-demo,
//! /run/fleetlet-demo, the database fleetlet_demo), so it stops a demo kept on this machine.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

const DEMO_DIR: &str = "/var/tmp/fleetlet-demo";
const RUN_DIR: &str = "/run/fleetlet-demo";

fn repo() -> PathBuf {
    let tests_crate = Path::new(env!("CARGO_MANIFEST_DIR"));
    tests_crate.parent().unwrap_or(tests_crate).to_path_buf()
}

fn demo(argument: Option<&str>) -> anyhow::Result<String> {
    let bin_dir = fleetlet_tests::binary("fleetlet-manager")
        .parent()
        .context("the binaries' directory")?
        .to_path_buf();
    for binary in ["fleetlet-manager", "fleetlet-agent", "fleetlet"] {
        anyhow::ensure!(
            bin_dir.join(binary).exists(),
            "{} is missing: run `cargo build --workspace --bins` first",
            bin_dir.join(binary).display()
        );
    }
    let mut command = Command::new(repo().join("deploy/dev/demo.sh"));
    command
        .args(argument)
        .env("FLEETLET_DEMO_BIN_DIR", &bin_dir);
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        bail!(
            "demo.sh {argument:?} exited with {}\n--- stdout\n{}\n--- stderr\n{stderr}",
            output.status,
            String::from_utf8_lossy(&output.stdout)
        );
    }
    Ok(stderr)
}

/// Stops whatever the test left running, even when it fails half-way.
struct StopOnDrop;

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = demo(Some("--stop"));
    }
}

/// A process as demo.sh records it: its PID and its start time in clock ticks after boot.
#[derive(Debug, Clone, PartialEq)]
struct Recorded {
    pid: u32,
    start: u64,
}

fn recorded(name: &str) -> anyhow::Result<Recorded> {
    let path = Path::new(RUN_DIR).join(format!("{name}.pid"));
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("demo.sh recorded no {name}: {}", path.display()))?;
    let (pid, start) = text
        .trim()
        .split_once(' ')
        .with_context(|| format!("{}: {text:?}", path.display()))?;
    Ok(Recorded {
        pid: pid.parse()?,
        start: start.parse()?,
    })
}

/// The state letter and start time of a process, from /proc/PID/stat.
fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some((
        fields.first()?.chars().next()?,
        fields.get(19)?.parse().ok()?,
    ))
}

/// The recorded process still runs: same PID, same start time, not a zombie.
fn running(process: &Recorded) -> bool {
    proc_stat(process.pid).is_some_and(|(state, start)| state != 'Z' && start == process.start)
}

/// The recorded process runs and is the named binary.
fn assert_runs(process: &Recorded, binary: &str) {
    assert!(running(process), "{binary} {process:?} is not running");
    let exe = std::fs::read_link(format!("/proc/{}/exe", process.pid)).unwrap_or_default();
    assert!(
        exe.file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with(binary)),
        "pid {} is {}, not {binary}",
        process.pid,
        exe.display()
    );
}

fn manager_url() -> anyhow::Result<String> {
    let addr = std::fs::read_to_string(Path::new(DEMO_DIR).join("manager.addr"))?;
    Ok(format!("http://{}", addr.trim()))
}

async fn answers(url: &str) -> bool {
    reqwest::Client::new()
        .get(format!("{url}/healthz"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .is_ok()
}

/// The demo agent's row of the fleet list.
async fn fleet_row(url: &str) -> anyhow::Result<Value> {
    let token = std::fs::read_to_string(Path::new(DEMO_DIR).join("admin-token"))?;
    let list: Value = reqwest::Client::new()
        .get(format!("{url}/api/v1/agents"))
        .bearer_auth(token.trim())
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let items = list["items"].as_array().context("items")?;
    assert_eq!(items.len(), 1, "the demo database holds one agent: {list}");
    assert_eq!(items[0]["agentId"], "demo-pi");
    Ok(items[0].clone())
}

#[tokio::test]
async fn demo_keep_twice_leaves_only_the_second_run_and_stop_ends_it() -> anyhow::Result<()> {
    let _stop = StopOnDrop;

    let first_log = demo(Some("--keep"))?;
    let first_manager = recorded("manager")?;
    let first_agent = recorded("agent")?;
    assert_runs(&first_manager, "fleetlet-manager");
    assert_runs(&first_agent, "fleetlet-agent");
    let first_url = manager_url()?;
    assert!(
        answers(&first_url).await,
        "the first manager does not answer"
    );
    // A ready-to-open dashboard address, with a reader token in the fragment.
    let reader = std::fs::read_to_string(Path::new(DEMO_DIR).join("reader-token"))?;
    assert!(
        first_log.contains(&format!("{first_url}/#token={}", reader.trim())),
        "no dashboard address in:\n{first_log}"
    );

    let second_log = demo(Some("--keep"))?;
    // The first run's processes are gone, by the PIDs the first run recorded.
    assert!(
        !running(&first_manager),
        "the first manager {first_manager:?} still runs:\n{second_log}"
    );
    assert!(
        !running(&first_agent),
        "the first agent {first_agent:?} still runs:\n{second_log}"
    );
    assert!(
        !answers(&first_url).await,
        "the first manager's address {first_url} still answers"
    );
    let second_manager = recorded("manager")?;
    let second_agent = recorded("agent")?;
    assert_ne!(second_manager, first_manager);
    assert_ne!(second_agent, first_agent);
    assert_runs(&second_manager, "fleetlet-manager");
    assert_runs(&second_agent, "fleetlet-agent");

    // The second run's device converged, and its agent keeps talking to its manager: the last
    // contact moves on (the demo's agents make contact every 10 s).
    let url = manager_url()?;
    let row = fleet_row(&url).await?;
    assert_eq!(row["converged"], true, "{row}");
    assert_eq!(row["observedGeneration"], 1, "{row}");
    let seen = row["lastSeenAt"].clone();
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let now = fleet_row(&url).await?;
        if now["lastSeenAt"] != seen && now["converged"] == true {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the second agent made no contact in 45 s (last seen {seen}):\n{}",
            std::fs::read_to_string(Path::new(DEMO_DIR).join("agent.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(running(&second_agent) && running(&second_manager));

    demo(Some("--stop"))?;
    assert!(!running(&second_manager), "--stop left the manager running");
    assert!(!running(&second_agent), "--stop left the agent running");
    assert!(!answers(&url).await, "{url} still answers after --stop");
    for name in ["manager", "agent"] {
        assert!(
            !Path::new(RUN_DIR).join(format!("{name}.pid")).exists(),
            "--stop left the {name}'s record"
        );
    }
    Ok(())
}
