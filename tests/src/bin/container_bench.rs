//! Benchmark (not a test) of issue 4, acceptance 6: how long the real `fleetlet-agent` takes from
//! receiving a manifest with one Container resource to reporting it `Ready`, against a raw
//! `<runtime> run -d` of the same image and command, printed as a ratio. Also times the two CLI
//! calls the agent's create path is built on (`create` + `start`).
//!
//! Run: `cargo build -p fleetlet-agent --bins && cargo run -p fleetlet-tests --bin container_bench
//! [podman|docker] [iterations]` after `deploy/dev/containers.sh`.
//!
//! "Receipt" and "Ready" are read from the agent's own event log (one clock): the
//! `ManifestAccepted` event of the new generation, and the `ResourceCreated` event of the
//! container, which the engine records when the pass that created it ends. Between iterations the
//! manifest is emptied and the container removal awaited, so every measured pass creates exactly
//! one container and deletes nothing.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fleetlet_tests::agent::{
    AgentDirs, AgentOptions, AgentProcess, manifest, unique_agent_id, wait_for,
};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const IMAGE: &str = "localhost/busybox:test";
const COMMAND: [&str; 2] = ["sleep", "100000"];

async fn cli(runtime: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(runtime)
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .with_context(|| format!("{runtime} {args:?} timed out"))??;
    if !output.status.success() {
        bail!(
            "{runtime} {args:?}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The agent's events with a seq above `after`.
fn events_after(path: &std::path::Path, after: u64) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["seq"].as_u64().is_some_and(|seq| seq > after))
        .collect()
}

fn event_time(event: &Value) -> anyhow::Result<OffsetDateTime> {
    let text = event["at"].as_str().context("event without time")?;
    Ok(OffsetDateTime::parse(text, &Rfc3339)?)
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values.get(values.len() / 2).copied().unwrap_or_default()
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

async fn raw_run(runtime: &str, name: &str) -> anyhow::Result<Duration> {
    let mut args = vec![
        "run",
        "--detach",
        "--init",
        "--pull=never",
        "--restart=no",
        "--name",
        name,
        IMAGE,
    ];
    args.extend(COMMAND);
    let started = Instant::now();
    cli(runtime, &args).await?;
    let took = started.elapsed();
    cli(runtime, &["rm", "-f", name]).await?;
    Ok(took)
}

async fn raw_create_start(runtime: &str, name: &str) -> anyhow::Result<(Duration, Duration)> {
    let mut args = vec![
        "create",
        "--init",
        "--pull=never",
        "--restart=no",
        "--name",
        name,
        IMAGE,
    ];
    args.extend(COMMAND);
    let started = Instant::now();
    let id = cli(runtime, &args).await?;
    let created = started.elapsed();
    let started = Instant::now();
    cli(runtime, &["start", id.lines().last().unwrap_or_default()]).await?;
    let start = started.elapsed();
    cli(runtime, &["rm", "-f", name]).await?;
    Ok((created, start))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let runtime = args.next().unwrap_or_else(|| "podman".into());
    let iterations: usize = args.next().map_or(Ok(5), |n| n.parse())?;
    if !matches!(runtime.as_str(), "podman" | "docker") {
        bail!("runtime must be podman or docker, not {runtime}");
    }
    cli(&runtime, &["image", "inspect", IMAGE])
        .await
        .context("the test image is missing: run deploy/dev/containers.sh")?;

    let agent_id = unique_agent_id(&format!("bench-{runtime}"));
    let dirs = AgentDirs::new()?;
    let events = dirs
        .state_dir()
        .join("agents")
        .join(&agent_id)
        .join("events.jsonl");
    dirs.write_manifest(&manifest(&agent_id, vec![]))?;
    let mut options = AgentOptions::standalone(&agent_id);
    options.env = vec![("FLEETLET_CONTAINER_RUNTIME".into(), runtime.clone())];
    let agent = AgentProcess::start(&dirs, &options)?;
    agent
        .wait_for_log(&["ManifestAccepted"], Duration::from_secs(10))
        .await?;

    let mut agent_times = Vec::new();
    let mut raw_times = Vec::new();
    let mut creates = Vec::new();
    let mut starts = Vec::new();
    let result: anyhow::Result<()> = async {
        for i in 0..iterations {
            let last_seq = events_after(&events, 0)
                .last()
                .and_then(|e| e["seq"].as_u64())
                .unwrap_or(0);
            let resource = format!("web-{i}");
            dirs.write_manifest(&manifest(
                &agent_id,
                vec![json!({"id": resource, "kind": "Container",
                    "spec": {"image": IMAGE, "command": COMMAND, "pullPolicy": "Never"}})],
            ))?;
            let (accepted, created) = wait_for("ResourceCreated", Duration::from_secs(20), || {
                let events = events_after(&events, last_seq);
                let resource = resource.clone();
                async move {
                    let accepted = events.iter().find(|e| e["kind"] == "ManifestAccepted")?;
                    let created = events.iter().find(|e| {
                        e["kind"] == "ResourceCreated" && e["resourceId"] == json!(resource)
                    })?;
                    Some((accepted.clone(), created.clone()))
                }
            })
            .await
            .with_context(|| agent.logs())?;
            let took = (event_time(&created)? - event_time(&accepted)?).unsigned_abs();
            agent_times.push(took);

            // Back to empty, and wait for the removal, so the next pass only creates.
            dirs.write_manifest(&manifest(&agent_id, vec![]))?;
            let filter = format!("label=dev.fleetlet.agent={agent_id}");
            wait_for("the removal", Duration::from_secs(30), || async {
                cli(&runtime, &["ps", "-a", "-q", "--filter", &filter])
                    .await
                    .ok()?
                    .is_empty()
                    .then_some(())
            })
            .await?;

            let name = format!("{agent_id}-raw-{i}");
            raw_times.push(raw_run(&runtime, &name).await?);
            let (create, start) = raw_create_start(&runtime, &name).await?;
            creates.push(create);
            starts.push(start);
        }
        Ok(())
    }
    .await;
    drop(agent);
    let filter = format!("label=dev.fleetlet.agent={agent_id}");
    if let Ok(ids) = cli(&runtime, &["ps", "-a", "-q", "--filter", &filter]).await {
        for id in ids.lines() {
            let _ = cli(&runtime, &["rm", "-f", id]).await;
        }
    }
    result?;

    let agent_median = median(agent_times.clone());
    let raw_median = median(raw_times.clone());
    println!("runtime: {runtime}, iterations: {iterations}");
    println!(
        "agent manifest receipt -> Ready: median {:.0} ms  (all: {:?})",
        ms(agent_median),
        agent_times
            .iter()
            .map(|d| ms(*d).round())
            .collect::<Vec<_>>()
    );
    println!(
        "raw `{runtime} run -d`:          median {:.0} ms  (all: {:?})",
        ms(raw_median),
        raw_times.iter().map(|d| ms(*d).round()).collect::<Vec<_>>()
    );
    println!(
        "raw `{runtime} create` + `start`: median {:.0} ms + {:.0} ms",
        ms(median(creates)),
        ms(median(starts))
    );
    println!(
        "ratio agent / raw run -d: {:.2}",
        agent_median.as_secs_f64() / raw_median.as_secs_f64().max(f64::EPSILON)
    );
    Ok(())
}
