//! The manager's database failing under load (issue 22, item 5). Simulated agents report over
//! HTTP to the real manager as fast as it answers, each remembering which of its reports got
//! `accepted: true`; the database is then killed:
//!
//! - SIGKILL of every PostgreSQL process during the storm, then a restart: the manager answers
//!   503 meanwhile and recovers by itself, and every accepted report is in the database.
//! - A failover: a primary with a synchronous streaming standby (both clusters made here with
//!   initdb, pg_basebackup and pg_ctl from `FLEETLET_PG_BINDIR`); the primary is killed, the
//!   standby promoted, and the manager restarted with the new primary's `DATABASE_URL`, as the
//!   README's "Database failover" tells an operator to: no accepted report is missing.
//!
//! Figures and the command to rerun are in RELIABILITY.md. Needs root (PostgreSQL runs as the
//! `postgres` user), `FLEETLET_PG_BINDIR` and `cargo build --workspace --bins`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use fleetlet_tests::manager::{ManagerProcess, wait_for};
use fleetlet_tests::postgres::{PgCluster, as_postgres, free_port, pg_bindir, run};
use sqlx::Connection;

/// What one simulated agent sent and what the manager answered.
#[derive(Debug, Default)]
struct Ledger {
    /// Every seq sent (whatever the answer).
    sent: Vec<u64>,
    /// The seqs answered with `accepted: true`.
    accepted: Vec<u64>,
    unavailable: u64,
    errors: u64,
}

/// Counts shared by the storm's tasks.
#[derive(Debug, Default)]
struct Totals {
    sent: AtomicU64,
    accepted: AtomicU64,
    unavailable: AtomicU64,
    errors: AtomicU64,
}

fn status_body(agent_id: &str, seq: u64) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "fleetlet.dev/v1", "kind": "AgentStatus", "agentId": agent_id,
        "reportSeq": seq, "manifestGeneration": 1, "observedGeneration": 1,
        "observedAt": "2026-12-07T10:00:00Z",
        "agent": {"version": "0.1.0", "hostname": agent_id, "arch": "aarch64",
                  "os": "linux", "startedAt": "2026-12-07T09:00:00Z"},
        "resources": {},
    })
}

/// One simulated agent: reports seq 1, 2, 3, … to whatever manager `url` names, one request at
/// a time with `pause` between them, until `stop`; answers are written into its ledger.
async fn report_loop(
    agent_id: String,
    token: String,
    url: Arc<RwLock<String>>,
    pause: Duration,
    stop: Arc<AtomicBool>,
    totals: Arc<Totals>,
) -> Ledger {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("HTTP client");
    let mut ledger = Ledger::default();
    let mut seq = 0;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let base = url.read().expect("url").clone();
        ledger.sent.push(seq);
        totals.sent.fetch_add(1, Ordering::Relaxed);
        let answer = http
            .put(format!("{base}/api/v1/agents/{agent_id}/status"))
            .bearer_auth(&token)
            .json(&status_body(&agent_id, seq))
            .send()
            .await;
        match answer {
            Ok(response) if response.status().is_success() => {
                let ack: serde_json::Value = response.json().await.unwrap_or_default();
                if ack["accepted"] == true {
                    ledger.accepted.push(seq);
                    totals.accepted.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(response) if response.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => {
                ledger.unavailable += 1;
                totals.unavailable.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                ledger.errors += 1;
                totals.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(pause).await;
    }
    ledger
}

/// A storm of `agents` simulated agents registered at `manager`.
struct Storm {
    url: Arc<RwLock<String>>,
    stop: Arc<AtomicBool>,
    totals: Arc<Totals>,
    tasks: Vec<(String, tokio::task::JoinHandle<Ledger>)>,
}

impl Storm {
    async fn start(manager: &ManagerProcess, agents: usize, prefix: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::new();
        let url = Arc::new(RwLock::new(manager.url.clone()));
        let stop = Arc::new(AtomicBool::new(false));
        let totals = Arc::new(Totals::default());
        let mut tasks = Vec::new();
        for n in 0..agents {
            let agent_id = format!("{prefix}-{n}");
            let token = manager
                .register(
                    &http,
                    serde_json::json!({"agentId": agent_id, "labels": {}}),
                )
                .await?;
            let task = tokio::spawn(report_loop(
                agent_id.clone(),
                token,
                Arc::clone(&url),
                Duration::from_millis(50),
                Arc::clone(&stop),
                Arc::clone(&totals),
            ));
            tasks.push((agent_id, task));
        }
        Ok(Self {
            url,
            stop,
            totals,
            tasks,
        })
    }

    fn accepted(&self) -> u64 {
        self.totals.accepted.load(Ordering::Relaxed)
    }

    /// Waits until at least `more` further reports are accepted.
    async fn wait_accepted(&self, more: u64, timeout: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let target = self.accepted() + more;
        wait_for("reports to be accepted", timeout, || async {
            (self.accepted() >= target).then_some(())
        })
        .await?;
        Ok(started.elapsed())
    }

    async fn finish(self) -> anyhow::Result<(BTreeMap<String, Ledger>, Arc<Totals>)> {
        self.stop.store(true, Ordering::Relaxed);
        let mut ledgers = BTreeMap::new();
        for (agent_id, task) in self.tasks {
            ledgers.insert(agent_id, task.await?);
        }
        Ok((ledgers, self.totals))
    }
}

/// Every report answered `accepted: true` is in the database at `url`: the stored seq of each
/// agent is at least its highest accepted seq, and one it really sent. Returns how many
/// accepted reports that covers.
async fn check_every_accepted_report_stored(
    url: &str,
    ledgers: &BTreeMap<String, Ledger>,
) -> anyhow::Result<usize> {
    let mut connection = sqlx::PgConnection::connect(url).await?;
    let mut covered = 0;
    for (agent_id, ledger) in ledgers {
        let stored: Option<i64> =
            sqlx::query_scalar("SELECT report_seq FROM agent_status WHERE agent_id = $1")
                .bind(agent_id)
                .fetch_optional(&mut connection)
                .await?;
        let Some(&highest) = ledger.accepted.iter().max() else {
            continue;
        };
        let stored = stored.with_context(|| {
            format!("{agent_id}: accepted up to seq {highest}, but nothing stored")
        })?;
        let stored = u64::try_from(stored)?;
        ensure!(
            stored >= highest,
            "{agent_id}: seq {highest} was accepted, the database holds only {stored}"
        );
        ensure!(
            ledger.sent.contains(&stored),
            "{agent_id}: the database holds seq {stored}, which was never sent"
        );
        covered += ledger.accepted.len();
    }
    connection.close().await.ok();
    Ok(covered)
}

/// SIGKILLs every process of the PostgreSQL server at `url`: the postmaster (the parent of a
/// backend of ours) and all its children, as a crash of the database host would.
async fn kill_postgres(url: &str) -> anyhow::Result<()> {
    let mut connection = sqlx::PgConnection::connect(url).await?;
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut connection)
        .await?;
    let postmaster = parent_of(backend)?;
    let mut victims = vec![postmaster];
    for entry in std::fs::read_dir("/proc")? {
        let Ok(pid) = entry?.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if parent_of(pid).ok() == Some(postmaster) {
            victims.push(pid);
        }
    }
    for &pid in &victims {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    drop(connection);
    // A restart must not find the old postmaster still alive (its lock file would stop it).
    wait_for(
        "the killed PostgreSQL processes to be gone",
        Duration::from_secs(10),
        || async {
            victims
                .iter()
                .all(|pid| !Path::new(&format!("/proc/{pid}")).exists())
                .then_some(())
        },
    )
    .await?;
    Ok(())
}

fn parent_of(pid: i32) -> anyhow::Result<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces: the fields after its closing parenthesis are fixed.
    let after = stat.rsplit_once(')').context("stat format")?.1;
    let parent = after.split_whitespace().nth(1).context("ppid")?;
    Ok(parent.parse()?)
}

fn storm_figures(what: &str, totals: &Totals, covered: usize) {
    eprintln!(
        "{what}: {} reports sent, {} accepted (all {covered} found in the database), {} answered 503, {} failed otherwise",
        totals.sent.load(Ordering::Relaxed),
        totals.accepted.load(Ordering::Relaxed),
        totals.unavailable.load(Ordering::Relaxed),
        totals.errors.load(Ordering::Relaxed),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_killed_during_a_report_storm_loses_no_accepted_report() -> anyhow::Result<()> {
    const AGENTS: usize = 40;
    const OUTAGE: Duration = Duration::from_secs(3);
    let cluster = PgCluster::start()?;
    let database = cluster.database_url("postgres");
    let mut manager = ManagerProcess::start(&database).await?;
    let storm = Storm::start(&manager, AGENTS, "dbkill").await?;
    storm.wait_accepted(200, Duration::from_secs(60)).await?;
    for round in 0..2 {
        kill_postgres(&database).await?;
        let killed = Instant::now();
        // The manager must notice: reports fail while the database is gone.
        let failed_before = storm.totals.unavailable.load(Ordering::Relaxed)
            + storm.totals.errors.load(Ordering::Relaxed);
        wait_for(
            "reports to fail while PostgreSQL is down",
            Duration::from_secs(30),
            || async {
                (storm.totals.unavailable.load(Ordering::Relaxed)
                    + storm.totals.errors.load(Ordering::Relaxed)
                    > failed_before)
                    .then_some(())
            },
        )
        .await?;
        // The outage itself: the database stays down while the agents keep reporting.
        tokio::time::sleep(OUTAGE.saturating_sub(killed.elapsed())).await;
        cluster.start_again()?;
        let restarted = Instant::now();
        let recovered = storm
            .wait_accepted(AGENTS as u64, Duration::from_secs(60))
            .await
            .with_context(|| format!("manager log:\n{}", manager.logs()))?;
        eprintln!(
            "round {round}: PostgreSQL down {:.1} s; {} reports accepted again {:.2} s after its restart",
            restarted.duration_since(killed).as_secs_f64(),
            AGENTS,
            recovered.as_secs_f64()
        );
        ensure!(
            manager.exited()?.is_none(),
            "the manager exited instead of recovering:\n{}",
            manager.logs()
        );
    }
    let (ledgers, totals) = storm.finish().await?;
    let covered = check_every_accepted_report_stored(&database, &ledgers).await?;
    storm_figures("SIGKILL storm", &totals, covered);
    ensure!(totals.unavailable.load(Ordering::Relaxed) + totals.errors.load(Ordering::Relaxed) > 0);
    Ok(())
}

/// A streaming standby of a [`PgCluster`], made with pg_basebackup; stopped on drop.
struct Standby {
    dir: tempfile::TempDir,
    url: String,
}

impl Standby {
    /// Copies `primary` with pg_basebackup and starts the copy as a standby named `standby1`.
    fn start(primary: &PgCluster) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("fleetlet-pg-standby-")
            .tempdir()?;
        run(
            Command::new("chown")
                .arg("postgres:postgres")
                .arg(dir.path()),
            "chown of the standby directory",
        )?;
        let data = dir.path().join("data");
        let conninfo = format!(
            "host=127.0.0.1 port={} user=fleetlet password={} application_name=standby1",
            primary.port, primary.password
        );
        run(
            as_postgres(&pg_bindir().join("pg_basebackup"))
                .arg("-D")
                .arg(&data)
                .args(["-d", &conninfo, "-X", "stream", "-c", "fast", "--no-sync"]),
            "pg_basebackup",
        )?;
        std::fs::write(data.join("standby.signal"), "")?;
        let mut auto = std::fs::read_to_string(data.join("postgresql.auto.conf"))?;
        auto.push_str(&format!("primary_conninfo = '{conninfo}'\n"));
        std::fs::write(data.join("postgresql.auto.conf"), auto)?;
        run(
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&data),
            "chown of the standby's data",
        )?;
        let port = free_port()?;
        let standby = Self {
            url: format!(
                "postgres://fleetlet:{}@127.0.0.1:{port}/postgres",
                primary.password
            ),
            dir,
        };
        standby.pg_ctl(&[
            "-o",
            &format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1",
                standby.dir.path().display()
            ),
            "-l",
            &standby
                .dir
                .path()
                .join("postgres.log")
                .display()
                .to_string(),
            "-w",
            "-t",
            "30",
            "start",
        ])?;
        Ok(standby)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn pg_ctl(&self, args: &[&str]) -> anyhow::Result<()> {
        run(
            as_postgres(&pg_bindir().join("pg_ctl"))
                .arg("-D")
                .arg(self.data())
                .args(args),
            &format!("pg_ctl {}", args.last().copied().unwrap_or_default()),
        )
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["-m", "immediate", "-w", "-t", "30", "stop"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_to_a_synchronous_standby_loses_no_accepted_report() -> anyhow::Result<()> {
    const AGENTS: usize = 30;
    let primary = PgCluster::start()?;
    let primary_db = primary.database_url("postgres");
    let standby = Standby::start(&primary)?;
    {
        // Synchronous replication: a commit returns only once standby1 has flushed it.
        let mut connection = sqlx::PgConnection::connect(&primary_db).await?;
        sqlx::query("ALTER SYSTEM SET synchronous_standby_names = 'standby1'")
            .execute(&mut connection)
            .await?;
        sqlx::query("SELECT pg_reload_conf()")
            .execute(&mut connection)
            .await?;
        wait_for(
            "standby1 to replicate synchronously",
            Duration::from_secs(30),
            || async {
                let mut connection = sqlx::PgConnection::connect(&primary_db).await.ok()?;
                let state: Option<String> = sqlx::query_scalar(
                    "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby1'",
                )
                .fetch_optional(&mut connection)
                .await
                .ok()?;
                (state.as_deref() == Some("sync")).then_some(())
            },
        )
        .await
        .with_context(|| format!("standby log:\n{}", standby.logs()))?;
    }
    let mut manager = ManagerProcess::start(&primary_db).await?;
    let storm = Storm::start(&manager, AGENTS, "dbfailover").await?;
    storm.wait_accepted(300, Duration::from_secs(60)).await?;

    kill_postgres(&primary_db).await?;
    let killed = Instant::now();
    standby.pg_ctl(&["-w", "-t", "30", "promote"])?;
    // The operator's step: the manager restarted with the new primary's URL. The agents' tokens
    // are in the replicated database, so they keep working.
    manager.terminate(Duration::from_secs(15)).await?;
    let mut options = manager.options.clone();
    options.database_url = Some(standby.url.clone());
    let new_manager = ManagerProcess::start_with(options).await?;
    *storm.url.write().expect("url") = new_manager.url.clone();
    let recovered = storm
        .wait_accepted(AGENTS as u64, Duration::from_secs(60))
        .await
        .with_context(|| format!("new manager log:\n{}", new_manager.logs()))?;
    eprintln!(
        "failover: reports accepted again {:.2} s after the primary was killed (promotion and manager restart included)",
        (killed.elapsed()).as_secs_f64()
    );
    let _ = recovered;
    let (ledgers, totals) = storm.finish().await?;
    let covered = check_every_accepted_report_stored(&standby.url, &ledgers).await?;
    storm_figures("failover storm", &totals, covered);
    drop(manager);
    Ok(())
}
