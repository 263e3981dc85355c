//! Benchmarks (not tests) of issue 10: the real `fleetlet-agent` and `fleetlet-manager` binaries
//! timed, sampled and metered end to end. Every subcommand prints its figures and the machine load.
//!
//! Run: `cargo build --workspace --bins && cargo build --release -p fleetlet-agent`, then
//! `./target/debug/fleet_load <subcommand> [args] [--agent-bin PATH]`:
//!
//! - `push [pushes]` (target 1): a manager on a fresh database and one agent; each push is a PUT of
//!   a one-file manifest, timed until `GET status` says converged at that generation.
//! - `first-apply [files] [rounds]` (target 2): `fleetlet-agent --once` on a fresh state dir and a
//!   manifest of N files, against a plain program writing the same files with the same durability.
//! - `rss [files] [minutes]` (target 4): a standalone agent resyncing every second; VmRSS every 10 s.
//! - `cpu [files] [seconds]` (target 3): CPU of a steady-state pass, two ways, and idle CPU.
//! - `wire [seconds]` (target 5): bytes between an idle agent and the manager, through a counting
//!   TCP proxy, per long-poll and per heartbeat, scaled to a month of default intervals;
//!   `wire-defaults [seconds]` meters an idle agent at its default settings directly.
//! - `replicas [pushes]` (target 7): two managers on one database; a long-poll held on one, a
//!   manifest PUT through the other, timed until the long-poll answers.
//! - `fleet [agents] [seconds] [reporters] [page] [resources]` (target 6): simulated agents (tokio
//!   tasks) each holding a long-poll and reporting at a fleet's pace (each once every 30 s), each
//!   report carrying `resources` Ready File resources (default 0); after one round,
//!   the whole fleet list is walked 100 times in pages of `page` rows (default 500) while the pace
//!   goes on; then `reporters` tasks (default 64) send status reports as fast as the manager
//!   takes them for `seconds`, and the list is walked 20 times more; manager RSS at the end.
//! - `fleet-rollout [devices] [reads] [watchers]` (issue 20): a fleet of `devices` simulated
//!   agents holding long-polls (default 10,000); the time to render and store a revision for all
//!   of them, with `watchers` reading the rollout status once a second meanwhile, then the
//!   rollout status and pages of 1,000 device rows timed (`fleet_load/fleets.rs`).
//!
//! The agent binary is `target/debug/fleetlet-agent` unless `--agent-bin` names another (the
//! release build for memory figures). Debug builds of the manager are used throughout.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fleetlet_tests::agent::{AgentDirs, binary, manifest, unique_agent_id, wait_for};
use fleetlet_tests::manager::ManagerProcess;
use fleetlet_tests::postgres::fresh_database;
use serde_json::{Value, json};
use sqlx::Connection;

#[path = "fleet_load/fleets.rs"]
mod fleets;

/// Walks through the whole fleet list in the `fleet` benchmark while the fleet reports at its
/// pace (100, so that the p99 is not just the slowest walk).
const WALKS: usize = 100;

/// How often the push benchmark reads the status while waiting for convergence.
const STATUS_POLL: Duration = Duration::from_millis(2);

/// Kernel clock ticks per second (`getconf CLK_TCK`; 100 on every Linux this runs on).
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Debug)]
struct Args {
    subcommand: String,
    numbers: Vec<u64>,
    agent_bin: PathBuf,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut subcommand = None;
    let mut numbers = Vec::new();
    let mut agent_bin = binary("fleetlet-agent");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--agent-bin" {
            agent_bin = PathBuf::from(args.next().context("--agent-bin needs a path")?);
        } else if subcommand.is_none() {
            subcommand = Some(arg);
        } else {
            numbers.push(
                arg.parse()
                    .with_context(|| format!("not a number: {arg}"))?,
            );
        }
    }
    let subcommand = subcommand.context(
        "usage: fleet_load push|first-apply|rss|cpu|wire|replicas|fleet|fleet-rollout [numbers] \
         [--agent-bin PATH]",
    )?;
    if !agent_bin.exists() {
        bail!(
            "{} does not exist: run `cargo build --workspace --bins`",
            agent_bin.display()
        );
    }
    Ok(Args {
        subcommand,
        numbers,
        agent_bin,
    })
}

impl Args {
    fn number(&self, index: usize, default: u64) -> u64 {
        self.numbers.get(index).copied().unwrap_or(default)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    println!("load before: {}", load_average());
    match args.subcommand.as_str() {
        "push" => push(&args).await?,
        "first-apply" => first_apply(&args)?,
        "rss" => rss(&args).await?,
        "cpu" => cpu(&args).await?,
        "wire" => wire(&args).await?,
        "wire-defaults" => wire_defaults(&args).await?,
        "replicas" => replicas(&args).await?,
        "fleet" => fleet(&args).await?,
        "fleet-rollout" => fleets::fleet_rollout(&args).await?,
        other => bail!("unknown subcommand {other}"),
    }
    println!("load after: {}", load_average());
    Ok(())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// One agent process started with the benchmark's own settings (quiet logs, no systemd or
/// container runtime), killed on drop.
#[derive(Debug)]
struct Agent {
    child: Child,
}

impl Agent {
    fn start(agent_bin: &Path, dirs: &AgentDirs, env: &[(&str, String)]) -> anyhow::Result<Self> {
        let log = std::fs::File::create(dirs.base().join("agent.log"))?;
        let child = agent_command(agent_bin, dirs, env)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start fleetlet-agent")?;
        Ok(Self { child })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent_command(agent_bin: &Path, dirs: &AgentDirs, env: &[(&str, String)]) -> Command {
    let mut command = Command::new(agent_bin);
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("FLEETLET_LOG", "warn")
        .env("FLEETLET_STATE_DIR", dirs.state_dir())
        .env("FLEETLET_FILE_ROOTS", dirs.root())
        .env("FLEETLET_CONTAINER_RUNTIME", "none")
        .env("FLEETLET_SYSTEMD_SCOPE", "none")
        .stdin(Stdio::null());
    command.envs(env.iter().map(|(key, value)| (key, value)));
    command
}

/// `count` File resources under the dirs' root, spread over ten directories.
fn file_resources(dirs: &AgentDirs, count: u64, text: &str) -> Vec<Value> {
    (0..count)
        .map(|i| {
            let path = dirs.root().join(format!("d{}/f{i}.conf", i % 10));
            json!({"id": format!("file-{i}"), "kind": "File", "spec": {
                "path": path.display().to_string(),
                "content": {"text": format!("{text} {i}\n")}, "mode": "0644"}})
        })
        .collect()
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    // Nearest rank: the smallest value with at least `fraction` of the samples at or below it.
    let rank = (fraction * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    stat_ticks(&stat, 13, 14)
}

/// utime + stime of the PostgreSQL processes that work for `database`: its backends, and the
/// WAL writer, checkpointer and background writer (shared with any other database on the
/// server, so other work on the same server shows up here too). Backends that exit take their
/// share with them; the manager's pool keeps its connections, so over a window little is lost.
fn postgres_cpu_seconds(database: &str) -> anyhow::Result<f64> {
    const SHARED: [&str; 3] = ["walwriter", "checkpointer", "background writer"];
    let mut total = 0.0;
    for entry in std::fs::read_dir("/proc")? {
        let path = entry?.path();
        let is_pid = path
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.bytes().all(|b| b.is_ascii_digit()));
        if !is_pid {
            continue;
        }
        // A process may exit between listing and reading: skip it.
        let (Ok(stat), Ok(title)) = (
            std::fs::read_to_string(path.join("stat")),
            std::fs::read_to_string(path.join("cmdline")),
        ) else {
            continue;
        };
        // A backend's title is "postgres: <user> <database> <client> <state>".
        let ours = title.starts_with("postgres: ")
            && (title.split(' ').nth(2) == Some(database)
                || SHARED
                    .iter()
                    .any(|name| title.trim_end_matches('\0').ends_with(name)));
        if stat.contains("(postgres)") && ours {
            total += stat_ticks(&stat, 13, 14)?;
        }
    }
    Ok(total)
}

/// CPU seconds of the manager, PostgreSQL and this load generator, to split a window's work.
fn cpu_split(manager: u32, database: &str) -> anyhow::Result<[f64; 3]> {
    Ok([
        cpu_seconds(manager)?,
        postgres_cpu_seconds(database)?,
        cpu_seconds(std::process::id())?,
    ])
}

/// cutime + cstime of this process: the CPU of the children it has reaped, in seconds.
fn reaped_children_cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    stat_ticks(&stat, 15, 16)
}

/// The sum of two fields of `/proc/<pid>/stat` (0-based, counting `pid` as 0), in seconds.
fn stat_ticks(stat: &str, first: usize, second: usize) -> anyhow::Result<f64> {
    // The command name may hold spaces; fields are counted after its closing parenthesis.
    let after_name = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // fields[0] is field 2 (state).
    let field = |n: usize| -> anyhow::Result<f64> {
        Ok(fields.get(n - 2).context("short stat")?.parse::<f64>()?)
    };
    Ok((field(first)? + field(second)?) / TICKS_PER_SECOND)
}

fn vm_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("malformed VmRSS")?
        .parse()?)
}

/// A manager on a fresh database and one registered agent.
struct ManagedAgent {
    manager: ManagerProcess,
    http: reqwest::Client,
    agent_id: String,
    token: String,
    // Dropped after the manager, which is dropped after the agent (field order matters).
    database: fleetlet_tests::postgres::FreshDatabase,
}

impl ManagedAgent {
    async fn start() -> anyhow::Result<Self> {
        let database = fresh_database().await?;
        let manager = ManagerProcess::start(&database.url).await?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let agent_id = unique_agent_id("load");
        let response = manager
            .admin(&http, reqwest::Method::POST, "/api/v1/agents")
            .json(&json!({"agentId": agent_id, "labels": {"bench": "load"}}))
            .send()
            .await?;
        let body: Value = response.json().await?;
        let token = body["token"]
            .as_str()
            .with_context(|| {
                format!(
                    "registration answered {body}; the manager logged:\n{}",
                    manager.logs()
                )
            })?
            .to_owned();
        Ok(Self {
            manager,
            http,
            agent_id,
            token,
            database,
        })
    }

    async fn put_manifest(&self, resources: Vec<Value>) -> anyhow::Result<u64> {
        let path = format!("/api/v1/agents/{}/manifest", self.agent_id);
        let response = self
            .manager
            .admin(&self.http, reqwest::Method::PUT, &path)
            .json(&manifest(&self.agent_id, resources))
            .send()
            .await?;
        let body: Value = response.json().await?;
        body["generation"]
            .as_u64()
            .with_context(|| format!("manifest PUT answered {body}"))
    }

    /// Whether the manager reports the agent converged at `generation`.
    async fn converged_at(&self, generation: u64) -> anyhow::Result<bool> {
        let path = format!("/api/v1/agents/{}/status", self.agent_id);
        let body: Value = self
            .manager
            .admin(&self.http, reqwest::Method::GET, &path)
            .send()
            .await?
            .json()
            .await?;
        let summary = &body["summary"];
        Ok(summary["converged"] == json!(true)
            && summary["desiredGeneration"].as_u64() == Some(generation))
    }

    async fn wait_converged(&self, generation: u64, timeout: Duration) -> anyhow::Result<()> {
        wait_for("convergence", timeout, || async {
            self.converged_at(generation)
                .await
                .ok()
                .and_then(|done| done.then_some(()))
        })
        .await
    }
}

async fn push(args: &Args) -> anyhow::Result<()> {
    let pushes = args.number(0, 200);
    let managed = ManagedAgent::start().await?;
    let dirs = AgentDirs::new()?;
    let _agent = Agent::start(
        &args.agent_bin,
        &dirs,
        &[
            ("FLEETLET_AGENT_ID", managed.agent_id.clone()),
            ("FLEETLET_MANAGER_URL", managed.manager.url.clone()),
            ("FLEETLET_TOKEN", managed.token.clone()),
        ],
    )?;
    let generation = managed
        .put_manifest(file_resources(&dirs, 1, "warm-up"))
        .await?;
    managed
        .wait_converged(generation, Duration::from_secs(30))
        .await?;

    let mut took = Vec::new();
    for i in 0..pushes {
        let started = Instant::now();
        let generation = managed
            .put_manifest(file_resources(&dirs, 1, &format!("push {i}")))
            .await?;
        let put = started.elapsed();
        loop {
            if managed.converged_at(generation).await? {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("push {i} did not converge within 30 s");
            }
            tokio::time::sleep(STATUS_POLL).await;
        }
        took.push((started.elapsed(), put));
    }
    let mut total: Vec<Duration> = took.iter().map(|(total, _)| *total).collect();
    let mut puts: Vec<Duration> = took.iter().map(|(_, put)| *put).collect();
    total.sort();
    puts.sort();
    println!(
        "push -> converged over {pushes} pushes: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(percentile(&total, 0.5)),
        ms(percentile(&total, 0.99)),
        ms(percentile(&total, 1.0)),
    );
    println!(
        "of which the manifest PUT alone: p50 {:.1} ms, p99 {:.1} ms (status polled every {} ms)",
        ms(percentile(&puts, 0.5)),
        ms(percentile(&puts, 0.99)),
        STATUS_POLL.as_millis(),
    );
    Ok(())
}

/// Writes `content` to `path` as the agent does: a temp file in the same directory, fsync,
/// rename over the name, fsync of the directory.
fn write_durably(path: &Path, content: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = path.parent().context("path without parent")?;
    let temporary = dir.join(format!(
        ".{}.tmp",
        path.file_name().context("no name")?.to_string_lossy()
    ));
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(content)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// The plain program of target 2: the same files, one after the other, each written durably.
fn write_plainly(dirs: &AgentDirs, count: u64) -> anyhow::Result<Duration> {
    let started = Instant::now();
    for i in 0..count {
        let dir = dirs.root().join(format!("d{}", i % 10));
        std::fs::create_dir_all(&dir)?;
        write_durably(
            &dir.join(format!("f{i}.conf")),
            format!("first apply {i}\n").as_bytes(),
        )?;
    }
    Ok(started.elapsed())
}

/// Runs `fleetlet-agent --once` on a standalone manifest; returns its wall time and CPU.
fn run_once(
    args: &Args,
    dirs: &AgentDirs,
    resources: Vec<Value>,
) -> anyhow::Result<(Duration, f64)> {
    let agent_id = unique_agent_id("first-apply");
    dirs.write_manifest(&manifest(&agent_id, resources))?;
    let cpu_before = reaped_children_cpu_seconds()?;
    let started = Instant::now();
    let output = agent_command(
        &args.agent_bin,
        dirs,
        &[
            ("FLEETLET_AGENT_ID", agent_id.clone()),
            (
                "FLEETLET_MANIFEST_FILE",
                dirs.manifest_file().display().to_string(),
            ),
        ],
    )
    .arg("--once")
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .output()?;
    let took = started.elapsed();
    if !output.status.success() {
        bail!(
            "fleetlet-agent --once failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok((took, reaped_children_cpu_seconds()? - cpu_before))
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values.get(values.len() / 2).copied().unwrap_or_default()
}

fn first_apply(args: &Args) -> anyhow::Result<()> {
    let count = args.number(0, 1000);
    let rounds = args.number(1, 5);
    let mut agent_times = Vec::new();
    let mut empty_times = Vec::new();
    let mut plain_times = Vec::new();
    for round in 0..rounds {
        // Alternate which goes first so that a burst of load from elsewhere hits both alike.
        let agent_dirs = AgentDirs::new()?;
        let plain_dirs = AgentDirs::new()?;
        let empty_dirs = AgentDirs::new()?;
        let resources = (0..count)
            .map(|i| {
                let path = agent_dirs.root().join(format!("d{}/f{i}.conf", i % 10));
                json!({"id": format!("file-{i}"), "kind": "File", "spec": {
                    "path": path.display().to_string(),
                    "content": {"text": format!("first apply {i}\n")}, "mode": "0644"}})
            })
            .collect();
        if round % 2 == 0 {
            agent_times.push(run_once(args, &agent_dirs, resources)?.0);
            plain_times.push(write_plainly(&plain_dirs, count)?);
        } else {
            plain_times.push(write_plainly(&plain_dirs, count)?);
            agent_times.push(run_once(args, &agent_dirs, resources)?.0);
        }
        empty_times.push(run_once(args, &empty_dirs, vec![])?.0);
        println!(
            "round {round}: agent --once {:.0} ms, plain {:.0} ms, agent --once empty {:.0} ms",
            ms(agent_times[agent_times.len() - 1]),
            ms(plain_times[plain_times.len() - 1]),
            ms(empty_times[empty_times.len() - 1]),
        );
    }
    let agent = median(agent_times);
    let plain = median(plain_times);
    let empty = median(empty_times);
    println!(
        "first apply of {count} files, medians of {rounds}: agent {:.0} ms, plain {:.0} ms, \
         ratio {:.2}; agent minus its empty-manifest run ({:.0} ms) {:.2}",
        ms(agent),
        ms(plain),
        agent.as_secs_f64() / plain.as_secs_f64(),
        ms(empty),
        (agent.saturating_sub(empty)).as_secs_f64() / plain.as_secs_f64(),
    );
    Ok(())
}

/// A standalone agent resyncing at `resync` on `files` File resources, started and converged.
async fn standalone_agent(
    args: &Args,
    dirs: &AgentDirs,
    files: u64,
    resync: &str,
) -> anyhow::Result<Agent> {
    let agent_id = unique_agent_id("steady");
    dirs.write_manifest(&manifest(&agent_id, file_resources(dirs, files, "steady")))?;
    let agent = Agent::start(
        &args.agent_bin,
        dirs,
        &[
            ("FLEETLET_AGENT_ID", agent_id),
            (
                "FLEETLET_MANIFEST_FILE",
                dirs.manifest_file().display().to_string(),
            ),
            ("FLEETLET_RESYNC_INTERVAL", resync.to_owned()),
        ],
    )?;
    let last = dirs
        .root()
        .join(format!("d{}/f{}.conf", (files - 1) % 10, files - 1));
    wait_for("the last file", Duration::from_secs(120), || async {
        last.exists().then_some(())
    })
    .await?;
    Ok(agent)
}

async fn rss(args: &Args) -> anyhow::Result<()> {
    let files = args.number(0, 100);
    let minutes = args.number(1, 10);
    let dirs = AgentDirs::new()?;
    let agent = standalone_agent(args, &dirs, files, "1s").await?;
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < Duration::from_secs(minutes * 60) {
        let kib = vm_rss_kib(agent.pid())?;
        let at = started.elapsed().as_secs_f64();
        println!("t={at:>5.0} s VmRSS {kib} KiB");
        samples.push((at, kib as f64));
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    let kib = vm_rss_kib(agent.pid())?;
    samples.push((started.elapsed().as_secs_f64(), kib as f64));
    // Least-squares slope over the samples after the first minute (warm-up excluded).
    let steady: Vec<(f64, f64)> = samples
        .iter()
        .copied()
        .filter(|(t, _)| *t >= 60.0)
        .collect();
    let n = steady.len() as f64;
    let mean_t = steady.iter().map(|(t, _)| t).sum::<f64>() / n;
    let mean_k = steady.iter().map(|(_, k)| k).sum::<f64>() / n;
    let covariance: f64 = steady
        .iter()
        .map(|(t, k)| (t - mean_t) * (k - mean_k))
        .sum();
    let variance: f64 = steady.iter().map(|(t, _)| (t - mean_t).powi(2)).sum();
    let slope_per_minute = if variance > 0.0 {
        covariance / variance * 60.0
    } else {
        0.0
    };
    let first = samples.first().map_or(0.0, |s| s.1);
    let peak = samples.iter().map(|s| s.1).fold(0.0, f64::max);
    println!(
        "VmRSS with {files} files, 1 s resync, {minutes} min: start {first:.0} KiB, end {kib} KiB, \
         peak {peak:.0} KiB, slope after the first minute {slope_per_minute:+.1} KiB/min"
    );
    println!("binary {}", args.agent_bin.display());
    Ok(())
}

async fn cpu(args: &Args) -> anyhow::Result<()> {
    let files = args.number(0, 1000);
    let seconds = args.number(1, 60);

    // 1. A steady-state `--once` pass over an already converged state, minus an empty one.
    let dirs = AgentDirs::new()?;
    let resources = file_resources(&dirs, files, "steady");
    run_once(args, &dirs, resources.clone())?;
    let mut steady = Vec::new();
    let mut empty = Vec::new();
    let empty_dirs = AgentDirs::new()?;
    for _ in 0..5 {
        steady.push(run_once(args, &dirs, resources.clone())?.1);
        empty.push(run_once(args, &empty_dirs, vec![])?.1);
    }
    steady.sort_by(f64::total_cmp);
    empty.sort_by(f64::total_cmp);
    println!(
        "--once over {files} converged files: CPU median {:.0} ms; --once with an empty manifest \
         {:.0} ms; difference {:.0} ms (all runs: {steady:?} / {empty:?})",
        steady[2] * 1000.0,
        empty[2] * 1000.0,
        (steady[2] - empty[2]) * 1000.0,
    );

    // 2. A long-running agent at a 1 s resync: CPU over `seconds`, divided by the passes.
    let dirs = AgentDirs::new()?;
    let agent = standalone_agent(args, &dirs, files, "1s").await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = cpu_seconds(agent.pid())?;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let used = cpu_seconds(agent.pid())? - before;
    let wall = started.elapsed().as_secs_f64();
    // The next pass starts one interval after the previous one ended, so there were at most
    // wall / 1 s passes: dividing by that gives a lower bound per pass, and by wall / (1 s + the
    // CPU of a pass, a stand-in for its duration) an estimate.
    let most_passes = wall;
    let lower = used / most_passes;
    let estimate = used / (wall / (1.0 + lower));
    println!(
        "running agent, 1 s resync, {wall:.0} s: {:.0} ms CPU, {:.1} % of one core; per pass \
         at least {:.0} ms, about {:.0} ms",
        used * 1000.0,
        used / wall * 100.0,
        lower * 1000.0,
        estimate * 1000.0
    );
    drop(agent);

    // 3. Idle: the same agent with a resync far away, so no pass runs in the window.
    let dirs = AgentDirs::new()?;
    let agent = standalone_agent(args, &dirs, files, "1h").await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = cpu_seconds(agent.pid())?;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let used = cpu_seconds(agent.pid())? - before;
    println!(
        "idle between passes ({files} files, no resync in {:.0} s): {:.0} ms CPU (tick = 10 ms)",
        started.elapsed().as_secs_f64(),
        used * 1000.0
    );
    Ok(())
}

/// Bytes through a TCP proxy, each direction.
#[derive(Debug, Default)]
struct Meter {
    up: AtomicU64,
    down: AtomicU64,
}

impl Meter {
    fn read(&self) -> (u64, u64) {
        (
            self.up.load(Ordering::Relaxed),
            self.down.load(Ordering::Relaxed),
        )
    }
}

/// Listens on a free loopback port and forwards every connection to `upstream`, counting
/// payload bytes. Returns the proxy's address.
async fn counting_proxy(upstream: String, meter: Arc<Meter>) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?.to_string();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let upstream = upstream.clone();
            let meter = Arc::clone(&meter);
            tokio::spawn(async move {
                let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut in_read, mut in_write) = inbound.split();
                let (mut out_read, mut out_write) = outbound.split();
                let up = copy_counting(&mut in_read, &mut out_write, &meter.up);
                let down = copy_counting(&mut out_read, &mut in_write, &meter.down);
                let _ = tokio::join!(up, down);
            });
        }
    });
    Ok(address)
}

async fn copy_counting<R, W>(
    reader: &mut R,
    writer: &mut W,
    counter: &AtomicU64,
) -> std::io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = reader.read(&mut buffer).await?;
        if read == 0 {
            writer.shutdown().await?;
            return Ok(());
        }
        counter.fetch_add(read as u64, Ordering::Relaxed);
        writer.write_all(&buffer[..read]).await?;
    }
}

/// Bytes (up, down) of one idle agent over `seconds`, after it converged, with the given intervals.
/// With `intervals` (watch wait, heartbeat), those; without, the agent's defaults.
async fn idle_bytes(
    args: &Args,
    seconds: u64,
    intervals: Option<(&str, &str)>,
) -> anyhow::Result<IdleBytes> {
    let managed = ManagedAgent::start().await?;
    let meter = Arc::new(Meter::default());
    let upstream = managed.manager.url.trim_start_matches("http://").to_owned();
    let proxy = counting_proxy(upstream, Arc::clone(&meter)).await?;
    let dirs = AgentDirs::new()?;
    let mut env = vec![
        ("FLEETLET_AGENT_ID", managed.agent_id.clone()),
        ("FLEETLET_MANAGER_URL", format!("http://{proxy}")),
        ("FLEETLET_TOKEN", managed.token.clone()),
    ];
    if let Some((watch_wait, report_interval)) = intervals {
        env.push(("FLEETLET_WATCH_WAIT", watch_wait.to_owned()));
        env.push(("FLEETLET_REPORT_INTERVAL", report_interval.to_owned()));
    }
    let _agent = Agent::start(&args.agent_bin, &dirs, &env)?;
    let generation = managed
        .put_manifest(file_resources(&dirs, 1, "idle"))
        .await?;
    managed
        .wait_converged(generation, Duration::from_secs(30))
        .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (up_before, down_before) = meter.read();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (up, down) = meter.read();
    let wall = started.elapsed().as_secs_f64();
    let path = format!("/api/v1/agents/{}/status", managed.agent_id);
    let view: Value = managed
        .manager
        .admin(&managed.http, reqwest::Method::GET, &path)
        .send()
        .await?
        .json()
        .await?;
    Ok(IdleBytes {
        up: up - up_before,
        down: down - down_before,
        wall,
        status_bytes: serde_json::to_vec(&view["status"])?.len(),
    })
}

async fn wire(args: &Args) -> anyhow::Result<()> {
    let seconds = args.number(0, 60);
    // Long-polls only: a 2 s watch wait and no heartbeat within the window.
    let idle = idle_bytes(args, seconds, Some(("2s", "1h"))).await?;
    let polls = idle.wall / 2.0;
    let per_poll = (idle.up + idle.down) as f64 / polls;
    println!(
        "long-polls (2 s wait, no heartbeat) over {:.0} s: {} B up, {} B down, \
         about {per_poll:.0} B per long-poll",
        idle.wall, idle.up, idle.down
    );
    // Heartbeats: a 2 s heartbeat interval and long-polls of 60 s.
    let beating = idle_bytes(args, seconds, Some(("60s", "2s"))).await?;
    let polls = beating.wall / 60.0;
    let beats = beating.wall / 2.0;
    let per_beat = ((beating.up + beating.down) as f64 - polls * per_poll) / beats;
    println!(
        "heartbeats (2 s interval, 60 s wait) over {:.0} s: {} B up, {} B down, \
         about {per_beat:.0} B per heartbeat",
        beating.wall, beating.up, beating.down
    );
    // A full status (body plus about as many bytes of headers as a heartbeat) goes out when
    // something changed, and at least once a day.
    let full = beating.status_bytes as f64 + per_beat;
    println!("a full status report: about {full:.0} B");
    // The agent's defaults: a 120 s watch wait, a 10 min heartbeat, a full status a day.
    let per_hour = 30.0 * per_poll + 6.0 * per_beat + full / 24.0;
    println!(
        "default settings: 30 long-polls + 6 heartbeats + 1/24 full status an hour = \
         {per_hour:.0} B/h, x 720 = {:.2} MB per month (of TCP payload, plain HTTP)",
        per_hour * 720.0 / 1e6
    );
    Ok(())
}

/// Bytes of one idle agent at its default intervals, measured over `seconds` (an hour gives the
/// figure target 5 names directly).
async fn wire_defaults(args: &Args) -> anyhow::Result<()> {
    let seconds = args.number(0, 3600);
    let idle = idle_bytes(args, seconds, None).await?;
    let per_hour = (idle.up + idle.down) as f64 * 3600.0 / idle.wall;
    println!(
        "default settings over {:.0} s: {} B up, {} B down = {per_hour:.0} B/h, x 720 = {:.2} MB \
         per month (of TCP payload, plain HTTP)",
        idle.wall,
        idle.up,
        idle.down,
        per_hour * 720.0 / 1e6
    );
    Ok(())
}

struct IdleBytes {
    up: u64,
    down: u64,
    wall: f64,
    /// The size of the agent's stored status as the manager serves it.
    status_bytes: usize,
}

async fn replicas(args: &Args) -> anyhow::Result<()> {
    let pushes = args.number(0, 200);
    // `ManagedAgent` owns the database and the first replica; the second shares the database.
    let managed = ManagedAgent::start().await?;
    let database_url = managed.database.url.clone();
    let other = ManagerProcess::start(&database_url).await?;
    let poll_url = format!("{}/api/v1/agents/{}/manifest", other.url, managed.agent_id);
    let poller = reqwest::Client::builder()
        .timeout(Duration::from_secs(40))
        .build()?;
    let mut generation = managed.put_manifest(file_resources_at(0)).await?;
    let mut woke = Vec::new();
    let mut puts = Vec::new();
    for i in 1..=pushes {
        let poll = poller
            .get(&poll_url)
            .query(&[("afterGeneration", generation), ("waitSeconds", 30)])
            .bearer_auth(&managed.token)
            .send();
        let poll = tokio::spawn(poll);
        // Give the poll time to reach the other replica and subscribe before the write.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = Instant::now();
        let written = managed.put_manifest(file_resources_at(i)).await?;
        puts.push(started.elapsed());
        let response = poll.await??;
        woke.push(started.elapsed());
        if response.status() != reqwest::StatusCode::OK {
            bail!("the long-poll answered {}", response.status());
        }
        generation = written;
    }
    woke.sort();
    puts.sort();
    println!(
        "wake on the other replica, from the start of the PUT, over {pushes} pushes: p50 {:.1} ms, \
         p99 {:.1} ms, max {:.1} ms; the PUT itself p50 {:.1} ms, p99 {:.1} ms",
        ms(percentile(&woke, 0.5)),
        ms(percentile(&woke, 0.99)),
        ms(percentile(&woke, 1.0)),
        ms(percentile(&puts, 0.5)),
        ms(percentile(&puts, 0.99)),
    );
    Ok(())
}

/// A one-file manifest's resources whose content differs with `i` (the path is never written).
fn file_resources_at(i: u64) -> Vec<Value> {
    vec![json!({"id": "file-0", "kind": "File", "spec": {
        "path": "/nonexistent/fleetlet-bench.conf",
        "content": {"text": format!("push {i}\n")}, "mode": "0644"}})]
}

/// A status report of a simulated agent with no manifest yet.
fn simulated_report(agent_id: &str, seq: u64, resources: u64) -> Value {
    let resources: serde_json::Map<String, Value> = (0..resources)
        .map(|i| {
            let resource = json!({"kind": "File", "phase": "Ready",
                "since": "2026-11-22T10:00:00Z", "generation": 0, "specHash": "sha256:00"});
            (format!("file-{i}"), resource)
        })
        .collect();
    json!({
        "apiVersion": "fleetlet.dev/v1", "kind": "AgentStatus", "agentId": agent_id,
        "reportSeq": seq, "manifestGeneration": 0, "observedGeneration": 0,
        "observedAt": "2026-11-22T10:00:00Z",
        "agent": {"version": "0.1.0", "hostname": agent_id, "arch": "aarch64", "os": "linux",
                  "startedAt": "2026-11-22T09:00:00Z"},
        "resources": resources
    })
}

/// Status reports sent at a fleet's own pace in the background: each agent once every 30 s,
/// one report every 30 s / agents, each in its own task so a slow answer does not slow the pace.
struct SteadyReports {
    stop: Arc<std::sync::atomic::AtomicBool>,
    started: Instant,
    pacer: tokio::task::JoinHandle<tokio::task::JoinSet<Option<Duration>>>,
}

fn steady_reports(
    client: &reqwest::Client,
    base: &str,
    agents: &Arc<Vec<(String, String)>>,
    resources: u64,
) -> SteadyReports {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (client, base, agents, done) = (
        client.clone(),
        base.to_owned(),
        Arc::clone(agents),
        Arc::clone(&stop),
    );
    let pacer = tokio::spawn(async move {
        let mut sent = tokio::task::JoinSet::new();
        let period = Duration::from_secs(30).div_f64(agents.len().max(1) as f64);
        let mut ticks = tokio::time::interval(period);
        // Raised once per round of the fleet.
        let mut seq = 0;
        for index in (0..agents.len()).cycle() {
            ticks.tick().await;
            if done.load(Ordering::Relaxed) {
                break;
            }
            if index == 0 {
                seq += 1;
            }
            let (id, token) = agents[index].clone();
            let request = client
                .put(format!("{base}/api/v1/agents/{id}/status"))
                .bearer_auth(token)
                .json(&simulated_report(&id, seq, resources));
            sent.spawn(async move {
                let started = Instant::now();
                let answer = request.send().await.ok()?;
                answer.status().is_success().then(|| started.elapsed())
            });
        }
        sent
    });
    SteadyReports {
        stop,
        started: Instant::now(),
        pacer,
    }
}

impl SteadyReports {
    /// Stops sending; returns the sorted latencies of the answered reports, the failures and
    /// the seconds the pace ran.
    async fn finish(self) -> anyhow::Result<(Vec<Duration>, u64, f64)> {
        self.stop.store(true, Ordering::Relaxed);
        let wall = self.started.elapsed().as_secs_f64();
        let mut sent = self.pacer.await?;
        let (mut latencies, mut errors) = (Vec::new(), 0);
        while let Some(answer) = sent.join_next().await {
            match answer? {
                Some(latency) => latencies.push(latency),
                None => errors += 1,
            }
        }
        latencies.sort();
        Ok((latencies, errors, wall))
    }
}

/// Timings of walks through the whole fleet list, each sorted.
struct Walks {
    pages: Vec<Duration>,
    walks: Vec<Duration>,
    /// Of each walk, the time the load generator spent parsing the pages.
    parsing: Vec<Duration>,
}

impl Walks {
    fn print(&self, when: &str, agents: usize, page_size: u64) {
        println!(
            "fleet list of {agents} agents {when}: page of {page_size} p50 {:.1} ms, p99 {:.1} ms; \
             whole list p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms of {} walks (of a walk, the \
             load generator's JSON parsing p50 {:.1} ms)",
            ms(percentile(&self.pages, 0.5)),
            ms(percentile(&self.pages, 0.99)),
            ms(percentile(&self.walks, 0.5)),
            ms(percentile(&self.walks, 0.99)),
            ms(percentile(&self.walks, 1.0)),
            self.walks.len(),
            ms(percentile(&self.parsing, 0.5)),
        );
    }
}

/// Walks the whole fleet list `count` times, page by page, checking it has at least `agents`
/// rows.
async fn walk_fleet_list(
    manager: &ManagerProcess,
    client: &reqwest::Client,
    page_size: u64,
    count: usize,
    agents: usize,
) -> anyhow::Result<Walks> {
    let mut timed = Walks {
        pages: Vec::new(),
        walks: Vec::new(),
        parsing: Vec::new(),
    };
    for _ in 0..count {
        let walk_started = Instant::now();
        let mut parsed_in = Duration::ZERO;
        let mut cursor: Option<String> = None;
        let mut rows = 0;
        loop {
            let mut path = format!("/api/v1/agents?limit={page_size}");
            if let Some(cursor) = &cursor {
                path.push_str(&format!("&cursor={cursor}"));
            }
            let started = Instant::now();
            let body = manager
                .admin(client, reqwest::Method::GET, &path)
                .send()
                .await?
                .bytes()
                .await?;
            let parse_started = Instant::now();
            let page: Value = serde_json::from_slice(&body)?;
            parsed_in += parse_started.elapsed();
            timed.pages.push(started.elapsed());
            rows += page["items"]
                .as_array()
                .with_context(|| format!("the fleet list answered {page}"))?
                .len();
            match page["nextCursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        timed.walks.push(walk_started.elapsed());
        timed.parsing.push(parsed_in);
        if rows < agents {
            bail!("the fleet list had {rows} rows");
        }
    }
    timed.pages.sort();
    timed.walks.sort();
    timed.parsing.sort();
    Ok(timed)
}

async fn fleet(args: &Args) -> anyhow::Result<()> {
    let count = args.number(0, 1000);
    let seconds = args.number(1, 30);
    let reporters = args.number(2, 64);
    let page_size = args.number(3, 500);
    let resources = args.number(4, 0);
    let managed = ManagedAgent::start().await?;
    let manager = &managed.manager;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(usize::MAX)
        .build()?;

    // Register the simulated agents, 32 at a time.
    let started = Instant::now();
    let ids: Vec<String> = (0..count).map(|i| format!("sim-{i:05}")).collect();
    let mut agents = Vec::new();
    for chunk in ids.chunks(32) {
        let mut set = tokio::task::JoinSet::new();
        for id in chunk {
            let request = manager
                .admin(&client, reqwest::Method::POST, "/api/v1/agents")
                .json(&json!({"agentId": id, "labels": {"bench": "fleet"}}));
            let id = id.clone();
            set.spawn(async move {
                let body: Value = request.send().await?.json().await?;
                let token = body["token"]
                    .as_str()
                    .with_context(|| format!("registration answered {body}"))?;
                anyhow::Ok((id, token.to_owned()))
            });
        }
        while let Some(agent) = set.join_next().await {
            agents
                .push(agent?.with_context(|| format!("the manager logged:\n{}", manager.logs()))?);
        }
    }
    println!(
        "registered {count} agents in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Every simulated agent holds a long-poll, re-polling when it times out.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let held = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut pollers = tokio::task::JoinSet::new();
    for (id, token) in &agents {
        let url = format!("{}/api/v1/agents/{id}/manifest", manager.url);
        let (client, token, stop, held, failed) = (
            client.clone(),
            token.clone(),
            Arc::clone(&stop),
            Arc::clone(&held),
            Arc::clone(&failed),
        );
        pollers.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                held.fetch_add(1, Ordering::Relaxed);
                let answer = client
                    .get(&url)
                    .query(&[("afterGeneration", 0), ("waitSeconds", 30)])
                    .bearer_auth(&token)
                    .send()
                    .await;
                // Like a real agent, wait before polling again after a failure.
                if !answer.is_ok_and(|r| r.status() == reqwest::StatusCode::NOT_MODIFIED) {
                    failed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    println!(
        "long-polls sent after 5 s: {}, failed {} (manager RSS {} KiB)",
        held.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        vm_rss_kib(manager.pid())?
    );

    // The fleet as the target describes it: every agent reports once every 30 s, spread evenly
    // (agents / 30 reports a second). After one full round (every agent has a status), the
    // fleet list is walked while the pace goes on.
    let agents = Arc::new(agents);
    let steady = steady_reports(&client, &manager.url, &agents, resources);
    tokio::time::sleep(Duration::from_secs(30)).await;
    // A fleet's database has planner statistics: autovacuum analyzes a table once a tenth of it
    // changed, within its one-minute nap. A benchmark that registers and reports the whole fleet
    // within seconds would otherwise walk the list on a fresh table's guesses (a sort of every
    // row past the cursor for each page instead of an index walk) and read the reports'
    // resource rows by scanning the whole table (3.9 ms a batch at 10 resources an agent instead
    // of an index lookup), which no running fleet sees for longer than that minute.
    let mut connection = sqlx::PgConnection::connect(&managed.database.url).await?;
    sqlx::query("ANALYZE agents, agent_status, resource_status")
        .execute(&mut connection)
        .await?;
    drop(connection);
    let during = walk_fleet_list(manager, &client, page_size, WALKS, agents.len()).await?;
    let (steady_latencies, steady_errors, steady_wall) = steady.finish().await?;
    println!(
        "{:.0} reports/s at the fleet's pace for {steady_wall:.0} s: p50 {:.1} ms, p99 {:.1} ms, \
         {steady_errors} errors",
        steady_latencies.len() as f64 / steady_wall,
        ms(percentile(&steady_latencies, 0.5)),
        ms(percentile(&steady_latencies, 0.99)),
    );
    during.print(
        "while the fleet reports at its pace",
        agents.len() + 1,
        page_size,
    );

    // Capacity: reporters each own every `reporters`-th agent and walk their own share, one
    // report after another, raising the seq each time round (above the paced reports' seqs), so
    // every report is new to the manager (a stale seq is acknowledged with `accepted: false` and
    // costs it less). Only accepted reports count.
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut set = tokio::task::JoinSet::new();
    for worker in 0..reporters {
        let (client, agents, base) = (client.clone(), Arc::clone(&agents), manager.url.clone());
        set.spawn(async move {
            let share: Vec<usize> = (worker as usize..agents.len())
                .step_by(reporters as usize)
                .collect();
            let (mut latencies, mut errors, mut stale) = (Vec::new(), 0u64, 0u64);
            let mut seq = 2_000_000;
            'rounds: loop {
                seq += 1;
                for &index in &share {
                    if Instant::now() >= deadline {
                        break 'rounds;
                    }
                    let (id, token) = &agents[index];
                    let started = Instant::now();
                    let answer = client
                        .put(format!("{base}/api/v1/agents/{id}/status"))
                        .bearer_auth(token)
                        .json(&simulated_report(id, seq, resources))
                        .send()
                        .await;
                    let ack = match answer {
                        Ok(response) if response.status().is_success() => {
                            response.json::<Value>().await.ok()
                        }
                        _ => None,
                    };
                    match ack.as_ref().and_then(|ack| ack["accepted"].as_bool()) {
                        Some(true) => latencies.push(started.elapsed()),
                        Some(false) => stale += 1,
                        None => errors += 1,
                    }
                }
            }
            (latencies, errors, stale)
        });
    }
    let report_started = Instant::now();
    let cpu_before = cpu_split(manager.pid(), &managed.database.name)?;
    let (mut latencies, mut errors, mut stale) = (Vec::new(), 0, 0);
    while let Some(result) = set.join_next().await {
        let (mut some, failed, not_new) = result?;
        latencies.append(&mut some);
        errors += failed;
        stale += not_new;
    }
    let wall = report_started.elapsed().as_secs_f64();
    let cpu_after = cpu_split(manager.pid(), &managed.database.name)?;
    latencies.sort();
    println!(
        "status reports with {count} long-polls held, {reporters} reporters, {wall:.0} s: \
         {:.0} accepted reports/s, p50 {:.1} ms, p99 {:.1} ms, {errors} errors, {stale} not \
         accepted",
        latencies.len() as f64 / wall,
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
    );
    // CPU per report is what throughput on a given machine follows from, whatever else runs.
    let per_report =
        |i: usize| (cpu_after[i] - cpu_before[i]) * 1_000_000.0 / (latencies.len().max(1) as f64);
    println!(
        "CPU per report: manager {:.0} µs, PostgreSQL {:.0} µs, load generator {:.0} µs",
        per_report(0),
        per_report(1),
        per_report(2),
    );

    // The list again right after the burst, which left its dead row versions for autovacuum.
    let after = walk_fleet_list(manager, &client, page_size, WALKS / 5, agents.len()).await?;
    after.print("right after the burst", agents.len() + 1, page_size);
    println!(
        "manager RSS {} KiB; long-polls sent {}, failed {}",
        vm_rss_kib(manager.pid())?,
        held.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    stop.store(true, Ordering::Relaxed);
    pollers.abort_all();
    Ok(())
}
