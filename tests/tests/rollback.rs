//! Health-gated rollback end to end (issue #11, acceptance 3 and 4): the real `fleetlet-manager`
//! on a fresh PostgreSQL database, the real `fleetlet-agent` with real podman, and the real
//! `fleetlet` CLI.
//!
//! A generation whose container cannot start (its image is missing and `pullPolicy` is `Never`,
//! which fails the same way on every run) misses its rollout deadline. With `onFailure: Rollback`
//! the agent goes back to the previous generation's resources and says so in its status; the
//! manager shows it in the fleet list and the event log, and `fleetlet apply --wait` stops at
//! once. With `onFailure: Hold` the agent stays on the bad generation and reports it failed.
//!
//! podman and the image `localhost/busybox:test` are required (`deploy/dev/containers.sh`); a
//! missing runtime fails the tests, nothing is skipped.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fleetlet_manifests::api::{AgentSummary, Event, EventType, FleetState, Page, StatusView};
use fleetlet_manifests::{AgentStatus, Condition, ConditionStatus, ConditionType, Phase};
use fleetlet_tests::agent::{
    AgentDirs, AgentOptions, AgentProcess, file_resource, manifest, unique_agent_id, wait_for,
};
use fleetlet_tests::binary;
use fleetlet_tests::containers::{IMAGE, Runtime, cli, inspect};
use fleetlet_tests::manager::ManagerProcess;
use fleetlet_tests::postgres::{FreshDatabase, fresh_database};
use reqwest::Method;
use serde_json::{Value, json};

/// The rollout deadline of the bad generations.
const DEADLINE: Duration = Duration::from_secs(3);
/// The agent's resync interval in these tests.
const RESYNC: Duration = Duration::from_secs(1);
/// What the bound "deadline plus one resync" is allowed on top: the long-poll that delivers the
/// generation, a few podman calls (each up to about a second on a busy two-core machine) and the
/// status report's round trip. Measured from before the manifest is stored.
const MARGIN: Duration = Duration::from_secs(6);
/// How long a good generation may take to converge (container start included).
const CONVERGE: Duration = Duration::from_secs(45);
/// How long the test watches an agent that rolled back, to see it does not try the bad
/// generation again: five resync passes.
const NO_RETRY_WINDOW: Duration = Duration::from_secs(5);

/// One test at a time: both measure the rollback against a deadline on a small machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A manager on its own database, one agent on podman, and the agent's containers removed on
/// drop.
struct Fixture {
    agent_id: String,
    dirs: AgentDirs,
    manager: ManagerProcess,
    http: reqwest::Client,
    agent: Option<AgentProcess>,
    _database: FreshDatabase,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

impl Fixture {
    /// Fails (never skips) when podman or the test image is missing.
    async fn start(prefix: &str) -> anyhow::Result<Self> {
        let serial = SERIAL.lock().await;
        cli(Runtime::Podman, &["image", "inspect", IMAGE])
            .await
            .with_context(|| {
                format!(
                    "podman with the image {IMAGE} is required by these tests: run deploy/dev/containers.sh"
                )
            })?;
        let database = fresh_database().await?;
        let manager = ManagerProcess::start(&database.url).await?;
        let mut fixture = Self {
            agent_id: unique_agent_id(prefix),
            dirs: AgentDirs::new()?,
            manager,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            agent: None,
            _database: database,
            _serial: serial,
        };
        let token = fixture.register().await?;
        let mut options =
            AgentOptions::with_manager(&fixture.agent_id, &fixture.manager.url, &token);
        options.resync_interval = "1s";
        options.report_interval = "2s";
        options.watch_wait = "5s";
        options
            .env
            .push(("FLEETLET_CONTAINER_RUNTIME".into(), "podman".into()));
        fixture.agent = Some(AgentProcess::start(&fixture.dirs, &options)?);
        Ok(fixture)
    }

    async fn register(&self) -> anyhow::Result<String> {
        let body: Value = self
            .manager
            .admin(&self.http, Method::POST, "/api/v1/agents")
            .json(&json!({"agentId": self.agent_id, "labels": {"test": "rollback"}}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        body["token"]
            .as_str()
            .map(str::to_owned)
            .context("registration answered no token")
    }

    /// GET with the reader token, as a dashboard would.
    async fn read(&self, path: &str) -> anyhow::Result<Value> {
        let response = self
            .http
            .get(format!("{}{path}", self.manager.url))
            .bearer_auth(&self.manager.reader_token)
            .send()
            .await?;
        let status = response.status();
        if !status.is_success() {
            bail!("GET {path} answered {status}: {}", response.text().await?);
        }
        Ok(response.json().await?)
    }

    /// Stores a manifest (checked against the JSON Schema first) and returns its generation.
    async fn put_manifest(&self, body: &Value) -> anyhow::Result<u64> {
        let stored: Value = self
            .manager
            .put_manifest(&self.http, &self.agent_id, body)
            .await?
            .error_for_status()?
            .json()
            .await?;
        stored["generation"]
            .as_u64()
            .context("stored manifest without a generation")
    }

    async fn view(&self) -> anyhow::Result<StatusView> {
        let view = self
            .read(&format!("/api/v1/agents/{}/status", self.agent_id))
            .await?;
        Ok(serde_json::from_value(view)?)
    }

    /// Waits until the manager's view of the agent satisfies `check`.
    async fn wait_view<F>(
        &self,
        what: &str,
        timeout: Duration,
        check: F,
    ) -> anyhow::Result<StatusView>
    where
        F: Fn(&StatusView) -> bool,
    {
        wait_for(what, timeout, || async {
            self.view().await.ok().filter(|view| check(view))
        })
        .await
        .with_context(|| self.diagnostics())
    }

    async fn fleet(&self, state: FleetState) -> anyhow::Result<Vec<String>> {
        let page: Page<AgentSummary> = serde_json::from_value(
            self.read(&format!("/api/v1/agents?state={}", state.as_str()))
                .await?,
        )?;
        Ok(page
            .items
            .into_iter()
            .map(|row| row.agent_id.to_string())
            .collect())
    }

    async fn events(&self) -> anyhow::Result<Vec<Event>> {
        let page: Page<Event> = serde_json::from_value(
            self.read(&format!(
                "/api/v1/agents/{}/events?limit=1000",
                self.agent_id
            ))
            .await?,
        )?;
        Ok(page.items)
    }

    /// The agent's container of resource `app`, as podman inspects it.
    async fn app_container(&self) -> anyhow::Result<Option<Value>> {
        inspect(Runtime::Podman, &format!("fleetlet-{}-app", self.agent_id)).await
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dirs.root().join(name)
    }

    fn motd(&self, text: &str) -> Value {
        file_resource("motd", &self.path("motd"), text, "0644")
    }

    /// Runs `fleetlet apply -f <file> --wait` with the admin token (off the async runtime);
    /// returns whether it succeeded, its stdout and its stderr.
    async fn fleetlet_apply_and_wait(
        &self,
        body: &Value,
    ) -> anyhow::Result<(bool, String, String)> {
        let file = self
            .dirs
            .base()
            .join(format!("apply-{}.json", unique_agent_id("m")));
        std::fs::write(&file, serde_json::to_vec_pretty(body)?)?;
        let path = binary("fleetlet");
        if !path.exists() {
            bail!(
                "{} does not exist: run `cargo build --workspace --bins` first",
                path.display()
            );
        }
        let mut command = Command::new(path);
        command
            .env_clear()
            .env("FLEETLET_URL", &self.manager.url)
            .env("FLEETLET_TOKEN", &self.manager.admin_token)
            .env("XDG_CONFIG_HOME", "/nonexistent")
            .args(["apply", "--wait", "--timeout", "60s", "-f"])
            .arg(&file);
        let output = tokio::task::spawn_blocking(move || command.output())
            .await?
            .context("run fleetlet apply")?;
        Ok((
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ))
    }

    fn diagnostics(&self) -> String {
        let agent = self
            .agent
            .as_ref()
            .map(AgentProcess::logs)
            .unwrap_or_default();
        format!("agent log:\n{agent}\nmanager log:\n{}", self.manager.logs())
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // The agent goes first, so that it cannot recreate what is being removed.
        drop(self.agent.take());
        let filter = format!("label=dev.fleetlet.agent={}", self.agent_id);
        let listed = Command::new("podman")
            .args(["ps", "--all", "--quiet", "--no-trunc", "--filter", &filter])
            .output();
        let doomed: Vec<String> = listed
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        if !doomed.is_empty() {
            let _ = Command::new("podman")
                .arg("rm")
                .arg("-f")
                .args(&doomed)
                .output();
        }
    }
}

/// A long-running container that stops at once on SIGTERM (the agent adds `--init`).
fn app(image: &str, seconds: &str) -> Value {
    json!({"id": "app", "kind": "Container",
           "spec": {"image": image, "command": ["sleep", seconds], "pullPolicy": "Never"}})
}

/// An image that is not there; with `pullPolicy: Never` the container can never start.
const MISSING_IMAGE: &str = "localhost/fleetlet-rollback-missing:never";

fn with_rollout(mut body: Value, on_failure: &str) -> Value {
    body["rollout"] = json!({
        "progressDeadlineSeconds": DEADLINE.as_secs(),
        "onFailure": on_failure,
    });
    body
}

fn rolled_back_condition(status: &AgentStatus) -> Option<&Condition> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == ConditionType::RolledBack)
}

fn all_ready(status: &AgentStatus) -> bool {
    !status.resources.is_empty() && status.resources.values().all(|r| r.phase == Phase::Ready)
}

fn running(container: &Value) -> bool {
    container["State"]["Running"].as_bool() == Some(true)
}

fn spec_hash_label(container: &Value) -> Option<String> {
    container["Config"]["Labels"]["dev.fleetlet.spec-hash"]
        .as_str()
        .map(str::to_owned)
}

impl Fixture {
    /// Generation 2: its container cannot start (the image is missing), it changes the motd and
    /// adds a file, and it carries a short rollout deadline with `on_failure`.
    fn bad_generation(&self, on_failure: &str) -> Value {
        with_rollout(
            manifest(
                &self.agent_id,
                vec![
                    app(MISSING_IMAGE, "100000"),
                    self.motd("generation 2\n"),
                    file_resource("extra", &self.path("extra.conf"), "only in 2\n", "0644"),
                ],
            ),
            on_failure,
        )
    }

    /// A started fixture whose agent converged on generation 1: a long-running container and
    /// the motd file.
    async fn converged_on_a_good_generation(prefix: &str) -> anyhow::Result<Self> {
        let fixture = Fixture::start(prefix).await?;
        let good = manifest(
            &fixture.agent_id,
            vec![app(IMAGE, "100000"), fixture.motd("generation 1\n")],
        );
        assert_eq!(fixture.put_manifest(&good).await?, 1);
        fixture
            .wait_view("generation 1 to converge", CONVERGE, |view| {
                view.summary.converged && view.summary.desired_generation == 1
            })
            .await?;
        Ok(fixture)
    }
}

fn read_text(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

#[tokio::test]
async fn a_generation_whose_container_cannot_start_is_rolled_back_to_the_last_good_one()
-> anyhow::Result<()> {
    // (a) Generation 1: a container and a file, converged.
    let fixture = Fixture::converged_on_a_good_generation("rollback").await?;
    let id = fixture.agent_id.clone();
    let container = fixture
        .app_container()
        .await?
        .context("the container of generation 1 is missing")?;
    assert!(running(&container), "{container}");
    let good_hash = spec_hash_label(&container).context("no spec-hash label")?;

    // (b) Generation 2 cannot start its container, adds a file and changes another; it has a
    // rollout deadline with onFailure Rollback. `fleetlet apply --wait` stores it and stops as
    // soon as the agent rolled it back, long before its own 60 s timeout.
    let bad = fixture.bad_generation("Rollback");
    let stored = Instant::now();
    let (succeeded, stdout, stderr) = fixture.fleetlet_apply_and_wait(&bad).await?;
    assert!(
        !succeeded,
        "apply --wait succeeded on a rolled-back generation:\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("rolled back generation 2"),
        "apply --wait did not name the rollback:\n{stderr}"
    );
    assert!(
        stored.elapsed() < DEADLINE + RESYNC + MARGIN + Duration::from_secs(1),
        "apply --wait took {:?}",
        stored.elapsed()
    );

    // Within the deadline plus one resync (and the margin), the agent runs generation 1's
    // resources again and says so.
    let bound = (DEADLINE + RESYNC + MARGIN).saturating_sub(stored.elapsed());
    let view = fixture
        .wait_view(
            "the agent to report the rollback of generation 2",
            bound,
            |view| {
                view.status.as_ref().is_some_and(|status| {
                    status.manifest_generation == 2
                        && status.observed_generation == 1
                        && all_ready(status)
                        && rolled_back_condition(status)
                            .is_some_and(|c| c.status == ConditionStatus::True)
                })
            },
        )
        .await?;
    eprintln!(
        "rolled back {:?} after generation 2 was stored (deadline {DEADLINE:?})",
        stored.elapsed()
    );
    let status = view.status.as_ref().context("no status")?;
    let condition = rolled_back_condition(status).context("no RolledBack condition")?;
    assert_eq!(condition.reason, "ProgressDeadlineExceeded");
    assert!(
        condition.message.contains("generation 2") && condition.message.contains("generation 1"),
        "the condition should name both generations: {}",
        condition.message
    );
    assert_eq!(view.summary.state, FleetState::RolledBack);
    assert!(!view.summary.converged);
    assert_eq!(view.summary.desired_generation, 2);
    assert_eq!(view.summary.observed_generation, Some(1));

    // The real runtime runs generation 1's container; the files are generation 1's.
    let container = fixture
        .app_container()
        .await?
        .context("no container after the rollback")?;
    assert!(running(&container), "{container}");
    assert_eq!(
        spec_hash_label(&container).as_deref(),
        Some(good_hash.as_str())
    );
    assert_eq!(
        read_text(&fixture.path("motd")).as_deref(),
        Some("generation 1\n")
    );
    assert!(
        !fixture.path("extra.conf").exists(),
        "the file only generation 2 had is still there"
    );

    // The fleet list and the event log show it.
    assert_eq!(
        fixture.fleet(FleetState::RolledBack).await?,
        vec![id.clone()]
    );
    let events = fixture.events().await?;
    let rollback_event = events
        .iter()
        .find(|e| e.type_ == EventType::RolledBack)
        .with_context(|| format!("no RolledBack event in {events:?}"))?;
    assert_eq!(rollback_event.payload["failedGeneration"], 2);
    assert_eq!(rollback_event.payload["rolledBackTo"], 1);
    assert_eq!(rollback_event.payload["message"], json!(condition.message));

    // The agent does not try generation 2 again: over several resyncs the container stays
    // generation 1's and nothing fails. This watches a window on purpose: it checks that
    // something does not happen.
    let window = Instant::now() + NO_RETRY_WINDOW;
    while Instant::now() < window {
        let view = fixture.view().await?;
        let status = view.status.context("no status")?;
        assert!(all_ready(&status), "a resource left Ready: {status:?}");
        assert_eq!(status.observed_generation, 1);
        assert!(
            rolled_back_condition(&status).is_some_and(|c| c.status == ConditionStatus::True),
            "the rollback ended without a new generation: {:?}",
            status.conditions
        );
        let container = fixture.app_container().await?.context("no container")?;
        assert!(running(&container), "{container}");
        assert_eq!(
            spec_hash_label(&container).as_deref(),
            Some(good_hash.as_str())
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let after: Vec<Event> = fixture
        .events()
        .await?
        .into_iter()
        .filter(|e| e.seq > rollback_event.seq)
        .collect();
    assert!(
        !after.iter().any(
            |e| e.type_ == EventType::ResourcePhaseChanged && e.payload["to"] != json!("Ready")
        ),
        "a resource changed phase after the rollback: {after:?}"
    );

    // (c) Generation 3, a good one, converges; the rollback is over.
    let fixed = manifest(
        &id,
        vec![app(IMAGE, "200000"), fixture.motd("generation 3\n")],
    );
    assert_eq!(fixture.put_manifest(&fixed).await?, 3);
    let view = fixture
        .wait_view("generation 3 to converge", CONVERGE, |view| {
            view.summary.converged && view.summary.desired_generation == 3
        })
        .await?;
    assert_eq!(view.summary.state, FleetState::Converged);
    let status = view.status.context("no status")?;
    assert!(
        !rolled_back_condition(&status).is_some_and(|c| c.status == ConditionStatus::True),
        "still rolled back: {:?}",
        status.conditions
    );
    assert!(fixture.fleet(FleetState::RolledBack).await?.is_empty());
    assert_eq!(
        fixture.fleet(FleetState::Converged).await?,
        vec![id.clone()]
    );
    let container = fixture.app_container().await?.context("no container")?;
    assert!(running(&container), "{container}");
    assert_ne!(
        spec_hash_label(&container).as_deref(),
        Some(good_hash.as_str())
    );
    assert_eq!(
        read_text(&fixture.path("motd")).as_deref(),
        Some("generation 3\n")
    );
    let events = fixture.events().await?;
    assert!(
        events.iter().any(|e| e.type_ == EventType::RollbackCleared),
        "no RollbackCleared event in {events:?}"
    );
    Ok(())
}

#[tokio::test]
async fn with_onfailure_hold_a_generation_that_misses_its_deadline_stays_and_is_failed()
-> anyhow::Result<()> {
    let fixture = Fixture::converged_on_a_good_generation("hold").await?;
    let id = fixture.agent_id.clone();

    let bad = fixture.bad_generation("Hold");
    let stored = Instant::now();
    assert_eq!(fixture.put_manifest(&bad).await?, 2);
    let view = fixture
        .wait_view(
            "the agent to report that generation 2 missed its deadline and is held",
            DEADLINE + RESYNC + MARGIN,
            |view| {
                view.status.as_ref().is_some_and(|status| {
                    status.manifest_generation == 2
                        && status
                            .resources
                            .get("app")
                            .is_some_and(|r| r.phase == Phase::Failed)
                        && rolled_back_condition(status).is_some_and(|c| {
                            c.status == ConditionStatus::False && c.reason == "HoldPolicy"
                        })
                })
            },
        )
        .await?;
    assert!(
        stored.elapsed() >= DEADLINE,
        "the deadline was reported missed after only {:?}",
        stored.elapsed()
    );
    assert_eq!(view.summary.state, FleetState::Degraded);
    assert!(!view.summary.converged);
    let status = view.status.context("no status")?;
    let condition = rolled_back_condition(&status).context("no RolledBack condition")?;
    assert!(
        condition.message.contains("generation 2"),
        "{}",
        condition.message
    );

    // It stays on generation 2: its files are there, nothing was rolled back.
    assert_eq!(
        read_text(&fixture.path("motd")).as_deref(),
        Some("generation 2\n")
    );
    assert_eq!(
        read_text(&fixture.path("extra.conf")).as_deref(),
        Some("only in 2\n")
    );
    assert_eq!(fixture.fleet(FleetState::Degraded).await?, vec![id.clone()]);
    assert!(fixture.fleet(FleetState::RolledBack).await?.is_empty());
    let events = fixture.events().await?;
    assert!(
        !events.iter().any(|e| e.type_ == EventType::RolledBack),
        "a held generation is no rollback: {events:?}"
    );
    Ok(())
}
