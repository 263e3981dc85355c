//! The `fleet-rollout [devices] [reads] [watchers]` benchmark (issue 20, BENCHMARKS.md "Fleets"): a fleet
//! selecting `devices` simulated agents (default 10,000), each holding a long-poll for its
//! manifest as a real agent does (the next poll waits after the generation it was given).
//!
//! Measured: from `PUT /api/v1/fleets/{name}` until every device's row says it was given the
//! revision (the rendered manifests stored: the last device's notification), for the first
//! revision and for a changed template; then, with every long-poll held again, `reads` (default
//! 200) rollout status reads (`GET /api/v1/fleets/{name}`) and as many pages of 1,000 device
//! rows (`GET …/devices?limit=1000`, walked round the fleet), each timed. With `watchers`
//! (default 0), that many tasks read the rollout status once a second while each revision is
//! written, as dashboards watching the rollout would.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fleetlet_manager::store::postgres::MANIFEST_CHANNEL;
use fleetlet_tests::manager::ManagerProcess;
use fleetlet_tests::postgres::fresh_database;
use serde_json::{Value, json};

use super::{Args, ms, percentile, vm_rss_kib};

const FLEET: &str = "bench";
/// How long rendering a revision for the whole fleet may take before the run gives up.
const RENDER_LIMIT: Duration = Duration::from_secs(600);

fn fleet_body(text: &str) -> Value {
    json!({
        "apiVersion": "fleetlet.dev/v1", "kind": "Fleet", "name": FLEET,
        "selector": {"matchLabels": {"bench": "fleet"}},
        "parameters": {"site": {"pattern": "^[a-z]+-[0-9]+$"},
                       "greeting": {"pattern": "^[A-Za-z ]{1,40}$", "default": "Hello"}},
        "template": {"resources": [{"id": "motd", "kind": "File", "spec": {
            "path": "/nonexistent/fleetlet-bench/motd", "mode": "0644",
            "content": {"text": format!("{{{{ greeting }}}} from {{{{ agentId }}}} at {{{{ site }}}}: {text}\n")}}}]},
        // One batch of everyone: the benchmark times rendering and storing, not the pacing.
        "rolloutStrategy": {"batches": [{}], "successThreshold": "100%",
                            "batchTimeoutSeconds": 3600},
    })
}

/// Registers `count` simulated agents, 32 at a time, each with a `site` label; their tokens.
async fn register(
    manager: &ManagerProcess,
    client: &reqwest::Client,
    count: u64,
) -> anyhow::Result<Vec<(String, String)>> {
    let ids: Vec<String> = (0..count).map(|i| format!("sim-{i:05}")).collect();
    let mut agents = Vec::new();
    for chunk in ids.chunks(32) {
        let mut set = tokio::task::JoinSet::new();
        for id in chunk {
            let site = format!(
                "site-{}",
                id.len() % 7 + id.as_bytes()[id.len() - 1] as usize % 13
            );
            let request = manager
                .admin(client, reqwest::Method::POST, "/api/v1/agents")
                .json(&json!({"agentId": id, "labels": {"bench": "fleet", "site": site}}));
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
    Ok(agents)
}

/// Long-polls held by every simulated agent; counts of polls sent, manifests received and
/// failures.
struct Pollers {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: tokio::task::JoinSet<()>,
}

impl Pollers {
    fn start(client: &reqwest::Client, base: &str, agents: &[(String, String)]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let received = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for (id, token) in agents {
            let url = format!("{base}/api/v1/agents/{id}/manifest");
            let (client, token) = (client.clone(), token.clone());
            let (stop, sent, received, failed) = (
                Arc::clone(&stop),
                Arc::clone(&sent),
                Arc::clone(&received),
                Arc::clone(&failed),
            );
            tasks.spawn(async move {
                let mut after = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    sent.fetch_add(1, Ordering::Relaxed);
                    let answer = client
                        .get(&url)
                        .query(&[("afterGeneration", after), ("waitSeconds", 30)])
                        .bearer_auth(&token)
                        .send()
                        .await;
                    match answer {
                        Ok(r) if r.status() == reqwest::StatusCode::NOT_MODIFIED => {}
                        Ok(r) if r.status().is_success() => {
                            let body: Option<Value> = r.json().await.ok();
                            match body.and_then(|b| b["generation"].as_u64()) {
                                Some(generation) => {
                                    after = generation;
                                    received.fetch_add(1, Ordering::Relaxed);
                                }
                                None => {
                                    failed.fetch_add(1, Ordering::Relaxed);
                                    tokio::time::sleep(Duration::from_secs(1)).await;
                                }
                            }
                        }
                        _ => {
                            // Like a real agent, wait before polling again after a failure.
                            failed.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            });
        }
        Self {
            stop,
            sent,
            received,
            failed,
            tasks,
        }
    }

    fn counts(&self) -> (u64, u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.received.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.tasks.abort_all();
    }
}

/// PUTs the fleet and times until every one of `devices` rows says it was given `revision`.
///
/// The moment is when the last device's manifest notification arrives: the manager stores a
/// device's manifest, its `fleet_devices` row and the notification in one transaction, so the
/// notification says the row was written, at no cost to the database (polling the table every
/// 20 ms, as this did first, scanned the 10,000 rows and their dead versions 50 times a second on
/// the same two cores). The table is read once afterwards to confirm.
///
/// Meanwhile `watchers` tasks each read the rollout status once a second, as dashboards and
/// `fleetlet rollout status --watch` would; the reads are counted.
async fn render_revision(
    manager: &ManagerProcess,
    client: &reqwest::Client,
    db: &sqlx::PgPool,
    body: &Value,
    devices: u64,
    watchers: u64,
) -> anyhow::Result<(u64, Duration, Duration, u64)> {
    let mut listener = sqlx::postgres::PgListener::connect_with(db).await?;
    listener.listen(MANIFEST_CHANNEL).await?;
    let watched = Arc::new(AtomicU64::new(0));
    let mut watching = tokio::task::JoinSet::new();
    for _ in 0..watchers {
        let request = manager.admin(
            client,
            reqwest::Method::GET,
            &format!("/api/v1/fleets/{FLEET}"),
        );
        let watched = Arc::clone(&watched);
        watching.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(request) = request.try_clone() else {
                    return;
                };
                if request.send().await.is_ok_and(|r| r.status().is_success()) {
                    watched.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    let started = Instant::now();
    let answer: Value = manager
        .admin(
            client,
            reqwest::Method::PUT,
            &format!("/api/v1/fleets/{FLEET}"),
        )
        .json(body)
        .send()
        .await?
        .json()
        .await?;
    let put = started.elapsed();
    let revision = answer["revision"]
        .as_u64()
        .with_context(|| format!("the fleet PUT answered {answer}"))?;
    let mut notified = std::collections::HashSet::new();
    while u64::try_from(notified.len())? < devices {
        let left = RENDER_LIMIT.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, listener.recv()).await {
            Ok(notification) => notified.insert(notification?.payload().to_owned()),
            Err(_) => bail!(
                "after {RENDER_LIMIT:?} only {} of {devices} devices were given revision \
                 {revision}",
                notified.len()
            ),
        };
    }
    let all = started.elapsed();
    watching.abort_all();
    let given: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM fleet_devices WHERE fleet = $1 AND revision_rendered = $2",
    )
    .bind(FLEET)
    .bind(i64::try_from(revision)?)
    .fetch_one(db)
    .await?;
    if u64::try_from(given)? < devices {
        bail!(
            "{devices} devices were notified of a new manifest but only {given} rows say they \
             were given revision {revision}"
        );
    }
    Ok((revision, put, all, watched.load(Ordering::Relaxed)))
}

/// Times `reads` GETs of the rollout status and as many pages of 1,000 devices.
async fn timed_reads(
    manager: &ManagerProcess,
    client: &reqwest::Client,
    reads: u64,
    devices: u64,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let (mut status, mut pages) = (Vec::new(), Vec::new());
    let mut cursor: Option<String> = None;
    for _ in 0..reads {
        let started = Instant::now();
        let view: Value = manager
            .admin(
                client,
                reqwest::Method::GET,
                &format!("/api/v1/fleets/{FLEET}"),
            )
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        status.push(started.elapsed());
        if view["name"] != FLEET {
            bail!("the rollout status answered {view}");
        }

        let mut path = format!("/api/v1/fleets/{FLEET}/devices?limit=1000");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let started = Instant::now();
        let page: Value = manager
            .admin(client, reqwest::Method::GET, &path)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        pages.push(started.elapsed());
        let rows = page["items"].as_array().map_or(0, Vec::len) as u64;
        if rows != 1000.min(devices) && page["nextCursor"].is_string() {
            bail!("a page of {rows} rows before the end");
        }
        cursor = page["nextCursor"].as_str().map(str::to_owned);
    }
    status.sort();
    pages.sort();
    Ok((status, pages))
}

/// What the manager's controller logged so far (selection passes, steps, batches of writes,
/// failures, with their timestamps and durations), to see where a revision's time went.
fn print_controller_log(manager: &ManagerProcess) {
    const WANTED: [&str; 6] = [
        "fleet revision stored",
        "selection pass",
        "rollout step committed",
        "fleet manifests written",
        "retrying",
        "failed",
    ];
    let logs = manager.logs();
    let lines: Vec<&str> = logs
        .lines()
        .filter(|line| WANTED.iter().any(|w| line.contains(w)))
        .collect();
    println!(
        "the manager's controller log ({} lines, the last 60):",
        lines.len()
    );
    for line in &lines[lines.len().saturating_sub(60)..] {
        println!("  {line}");
    }
}

/// The end of the manager's log, for errors.
fn manager_tail(manager: &ManagerProcess) -> String {
    let logs = manager.logs();
    let lines: Vec<&str> = logs.lines().collect();
    format!(
        "the manager's last log lines:\n{}",
        lines[lines.len().saturating_sub(30)..].join("\n")
    )
}

pub(super) async fn fleet_rollout(args: &Args) -> anyhow::Result<()> {
    let count = args.number(0, 10_000);
    let reads = args.number(1, 200);
    let watchers = args.number(2, 0);
    let database = fresh_database().await?;
    let manager = ManagerProcess::start(&database.url).await?;
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(3)
        .connect(&database.url)
        .await?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(usize::MAX)
        .build()?;

    // The operator's requests go on a client of their own, never on a connection the
    // long-polls were using.
    let admin = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()?;
    let started = Instant::now();
    let agents = register(&manager, &client, count).await?;
    println!(
        "registered {count} agents in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let pollers = Pollers::start(&client, &manager.url, &agents);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (sent, _, failed) = pollers.counts();
    println!(
        "long-polls sent after 5 s: {sent}, failed {failed} (manager RSS {} KiB)",
        vm_rss_kib(manager.pid())?
    );

    for (what, text) in [("first revision", "one"), ("changed template", "two")] {
        let (revision, put, all, watched) =
            render_revision(&manager, &admin, &db, &fleet_body(text), count, watchers)
                .await
                .with_context(|| manager_tail(&manager))?;
        let (sent, received, failed) = pollers.counts();
        println!(
            "{what} (revision {revision}) for {count} devices: PUT answered in {:.1} ms, every \
             device given it after {:.2} s ({watched} status reads by {watchers} watchers \
             meanwhile); long-polls sent {sent}, manifests received {received}, failed {failed}",
            ms(put),
            all.as_secs_f64()
        );
        print_controller_log(&manager);
        // Let the woken long-polls deliver and settle back into waiting.
        super::wait_for("the manifests delivered", RENDER_LIMIT, || async {
            (pollers.counts().1 >= received.max(revision * count)).then_some(())
        })
        .await
        .with_context(|| format!("deliveries: {:?}", pollers.counts()))?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut connection = db.acquire().await?;
    sqlx::query("ANALYZE agents, fleet_devices, agent_status")
        .execute(&mut *connection)
        .await?;
    drop(connection);
    let (status, pages) = timed_reads(&manager, &admin, reads, count)
        .await
        .with_context(|| manager_tail(&manager))?;
    let (sent, received, failed) = pollers.counts();
    println!(
        "with {count} long-polls held: rollout status p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; \
         page of 1,000 devices p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({reads} of each)",
        ms(percentile(&status, 0.5)),
        ms(percentile(&status, 0.99)),
        ms(percentile(&status, 1.0)),
        ms(percentile(&pages, 0.5)),
        ms(percentile(&pages, 0.99)),
        ms(percentile(&pages, 1.0)),
    );
    println!(
        "manager RSS {} KiB; long-polls sent {sent}, manifests received {received}, failed \
         {failed}",
        vm_rss_kib(manager.pid())?
    );
    pollers.stop();
    Ok(())
}
