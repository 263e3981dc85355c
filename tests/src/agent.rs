//! Fixtures for running the real `fleetlet-agent` binary: a temporary state dir and file root,
//! a process killed on drop, its log captured to a file, and waiting for conditions with a
//! deadline (never sleep-and-hope).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub use crate::binary;

/// The agent binary, or a loud failure telling how to build it.
pub fn agent_binary() -> anyhow::Result<PathBuf> {
    let path = binary("fleetlet-agent");
    if !path.exists() {
        bail!(
            "{} does not exist: run `cargo build --workspace --bins` before the tests",
            path.display()
        );
    }
    Ok(path)
}

/// Polls `check` every 50 ms until it yields a value or `timeout` passes; the error names `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The directories of one agent: a file root it may write under, a directory outside every
/// root (to prove it never writes there), a state dir, and the manifest file for standalone mode.
#[derive(Debug)]
pub struct AgentDirs {
    dir: tempfile::TempDir,
}

impl AgentDirs {
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("fleetlet-agent-test-")
            .tempdir()
            .context("create the agent's temporary directory")?;
        for sub in ["root", "outside", "state"] {
            std::fs::create_dir_all(dir.path().join(sub))?;
        }
        Ok(Self { dir })
    }

    pub fn base(&self) -> &Path {
        self.dir.path()
    }

    /// The only directory the agent may write files under.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// A directory outside the agent's file roots.
    pub fn outside(&self) -> PathBuf {
        self.dir.path().join("outside")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The status overview the agent keeps in its store (`<state>/agents/<id>/status.json`),
    /// readable without any manager; `None` until the agent has written one.
    pub fn stored_status(&self, agent_id: &str) -> Option<fleetlet_manifests::AgentStatus> {
        let path = self
            .state_dir()
            .join("agents")
            .join(agent_id)
            .join("status.json");
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    pub fn manifest_file(&self) -> PathBuf {
        self.dir.path().join("manifest.json")
    }

    /// Writes the standalone manifest atomically, so the agent never reads half of it.
    pub fn write_manifest(&self, manifest: &serde_json::Value) -> anyhow::Result<()> {
        let temporary = self.dir.path().join(".manifest.json.tmp");
        std::fs::write(&temporary, serde_json::to_vec_pretty(manifest)?)?;
        std::fs::rename(&temporary, self.manifest_file())?;
        Ok(())
    }
}

/// How to start one agent.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub agent_id: String,
    /// Manager mode: the manager's URL and this agent's token.
    pub manager: Option<(String, String)>,
    /// Standalone mode: read the desired state from the dirs' manifest file.
    pub standalone: bool,
    pub resync_interval: &'static str,
    pub report_interval: &'static str,
    pub watch_wait: &'static str,
    /// Extra environment, set last so that it overrides the defaults (e.g. a systemd scope).
    pub env: Vec<(String, String)>,
}

impl AgentOptions {
    pub fn standalone(agent_id: &str) -> Self {
        Self {
            agent_id: agent_id.to_owned(),
            manager: None,
            standalone: true,
            resync_interval: "500ms",
            report_interval: "2s",
            watch_wait: "5s",
            env: Vec::new(),
        }
    }

    pub fn with_manager(agent_id: &str, url: &str, token: &str) -> Self {
        Self {
            manager: Some((url.to_owned(), token.to_owned())),
            standalone: false,
            ..Self::standalone(agent_id)
        }
    }

    /// The agent's command line and environment, not started (a test may wrap it, e.g. in strace).
    pub fn command(&self, dirs: &AgentDirs) -> anyhow::Result<Command> {
        let mut command = Command::new(agent_binary()?);
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("FLEETLET_LOG", "info,fleetlet_agent=debug")
            .env("FLEETLET_AGENT_ID", &self.agent_id)
            .env("FLEETLET_STATE_DIR", dirs.state_dir())
            .env("FLEETLET_FILE_ROOTS", dirs.root())
            .env("FLEETLET_RESYNC_INTERVAL", self.resync_interval)
            .env("FLEETLET_REPORT_INTERVAL", self.report_interval)
            .env("FLEETLET_WATCH_WAIT", self.watch_wait)
            .env("FLEETLET_CONTAINER_RUNTIME", "none")
            .env("FLEETLET_SYSTEMD_SCOPE", "none");
        if let Some((url, token)) = &self.manager {
            command
                .env("FLEETLET_MANAGER_URL", url)
                .env("FLEETLET_TOKEN", token);
        }
        if self.standalone {
            command.env("FLEETLET_MANIFEST_FILE", dirs.manifest_file());
        }
        command.envs(self.env.iter().map(|(key, value)| (key, value)));
        Ok(command)
    }

    /// Runs `fleetlet-agent --once` to completion (bounded by 30 s).
    pub fn run_once(&self, dirs: &AgentDirs) -> anyhow::Result<Output> {
        run_once_to_end(self.command(dirs)?)
    }
}

/// Runs an agent's `command` (as [`AgentOptions::command`] gives it, perhaps wrapped, e.g. in
/// strace) with `--once` to completion, its output captured; killed and an error after 30 s.
pub fn run_once_to_end(mut command: Command) -> anyhow::Result<Output> {
    let mut child = command
        .arg("--once")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("start fleetlet-agent --once")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("fleetlet-agent --once did not finish within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child.wait_with_output()?)
}

/// A running agent; killed (SIGKILL) when dropped if still running.
#[derive(Debug)]
pub struct AgentProcess {
    child: Child,
    log: PathBuf,
}

impl AgentProcess {
    /// Starts the agent on `dirs`; its stdout and stderr go to `agent-<n>.log` in the dirs.
    pub fn start(dirs: &AgentDirs, options: &AgentOptions) -> anyhow::Result<Self> {
        let log = (0..)
            .map(|n| dirs.base().join(format!("agent-{n}.log")))
            .find(|path| !path.exists())
            .context("pick a log file name")?;
        let file = std::fs::File::create(&log)?;
        let child = options
            .command(dirs)?
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("start fleetlet-agent")?;
        Ok(Self { child, log })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the agent logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until a log line contains every one of `needles`.
    pub async fn wait_for_log(&self, needles: &[&str], timeout: Duration) -> anyhow::Result<()> {
        let what = format!("an agent log line with {needles:?}");
        wait_for(&what, timeout, || async {
            self.logs()
                .lines()
                .any(|line| needles.iter().all(|n| line.contains(n)))
                .then_some(())
        })
        .await
        .with_context(|| format!("agent log:\n{}", self.logs()))
    }

    /// When the agent logged each line that contains every one of `needles`, oldest first, by
    /// the RFC 3339 timestamp the agent wrote at the start of the line. Tests that bound a
    /// duration use these, never the moment they noticed a line: that lags by a polling
    /// interval, and by much more on a loaded machine.
    pub fn log_times(&self, needles: &[&str]) -> anyhow::Result<Vec<OffsetDateTime>> {
        self.logs()
            .lines()
            .filter(|line| needles.iter().all(|n| line.contains(n)))
            .map(|line| {
                let stamp = line.split_whitespace().next().unwrap_or_default();
                OffsetDateTime::parse(stamp, &Rfc3339)
                    .with_context(|| format!("a timestamp on {line:?}"))
            })
            .collect()
    }

    /// Waits for the `n`th (from 0) log line with every one of `needles` and returns when the
    /// agent logged it, by its own timestamp (see [`Self::log_times`]).
    pub async fn nth_logged_at(
        &self,
        n: usize,
        needles: &[&str],
        timeout: Duration,
    ) -> anyhow::Result<OffsetDateTime> {
        let what = format!("agent log line {n} (from 0) with {needles:?}");
        wait_for(&what, timeout, || async {
            (self.count_log_lines(needles) > n).then_some(())
        })
        .await
        .with_context(|| format!("agent log:\n{}", self.logs()))?;
        self.log_times(needles)?
            .get(n)
            .copied()
            .context("the line just seen")
    }

    /// When the agent logged the first line with every one of `needles`, waiting for it.
    pub async fn logged_at(
        &self,
        needles: &[&str],
        timeout: Duration,
    ) -> anyhow::Result<OffsetDateTime> {
        self.nth_logged_at(0, needles, timeout).await
    }

    /// Counts log lines that contain every one of `needles`.
    pub fn count_log_lines(&self, needles: &[&str]) -> usize {
        self.logs()
            .lines()
            .filter(|line| needles.iter().all(|n| line.contains(n)))
            .count()
    }

    /// Sends SIGTERM and waits for the exit; returns the status and how long it took.
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<(ExitStatus, Duration)> {
        let pid = i32::try_from(self.child.id()).context("pid fits in i32")?;
        let started = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok((status, started.elapsed()));
            }
            if started.elapsed() > timeout {
                bail!("agent did not exit within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A File resource as manifest JSON.
pub fn file_resource(id: &str, path: &Path, text: &str, mode: &str) -> serde_json::Value {
    serde_json::json!({
        "id": id,
        "kind": "File",
        "spec": {"path": path.display().to_string(), "content": {"text": text}, "mode": mode},
    })
}

/// A manifest for `agent_id` (without generation, as a client sends it).
pub fn manifest(agent_id: &str, resources: Vec<serde_json::Value>) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "fleetlet.dev/v1",
        "kind": "AgentManifest",
        "agentId": agent_id,
        "resources": resources,
    })
}

/// A unique agent id for one test, so that tests can share one database.
pub fn unique_agent_id(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{prefix}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

/// A minimal manager fixture for the agent's end-to-end tests: the real `fleetlet-manager`
/// binary on PostgreSQL (`DATABASE_URL`, required: the tests fail loudly without it), on a port
/// of the OS's choosing that is kept across a restart, so that an agent can see its manager go
/// away and come back at the same address. Tests isolate themselves by unique agent ids.
#[derive(Debug)]
pub struct ManagerProcess {
    child: Option<Child>,
    dir: tempfile::TempDir,
    database_url: String,
    address: Option<std::net::SocketAddr>,
    pub admin_token: String,
    http: reqwest::Client,
    /// Set after the defaults, so a test can override them (e.g. `FLEETLET_MAX_WAIT_SECONDS`).
    env: Vec<(String, String)>,
}

impl ManagerProcess {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with_env(&[]).await
    }

    /// Starts the manager with extra environment, set after the defaults.
    pub async fn start_with_env(env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let database_url = std::env::var("DATABASE_URL").context(
            "DATABASE_URL is not set: the agent end-to-end tests need PostgreSQL; run \
             `set -a; eval \"$(deploy/dev/postgres.sh)\"; set +a` first",
        )?;
        let mut manager = Self {
            child: None,
            dir: tempfile::Builder::new()
                .prefix("fleetlet-manager-test-")
                .tempdir()?,
            database_url,
            address: None,
            admin_token: format!("admin-{}", unique_agent_id("token")),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            env: env
                .iter()
                .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                .collect(),
        };
        manager.launch().await?;
        Ok(manager)
    }

    /// The manager's base URL.
    pub fn url(&self) -> String {
        self.address
            .map(|address| format!("http://{address}"))
            .unwrap_or_default()
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        let manager = binary("fleetlet-manager");
        if !manager.exists() {
            bail!(
                "{} does not exist: run `cargo build --workspace --bins` before the tests",
                manager.display()
            );
        }
        let port_file = self.dir.path().join("port");
        let _ = std::fs::remove_file(&port_file);
        let listen = self
            .address
            .map_or_else(|| "127.0.0.1:0".to_owned(), |a| a.to_string());
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("manager.log"))?;
        let child = Command::new(&manager)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("DATABASE_URL", &self.database_url)
            .env("FLEETLET_LISTEN", &listen)
            .env("FLEETLET_PORT_FILE", &port_file)
            .env("FLEETLET_ADMIN_TOKEN", &self.admin_token)
            .env("FLEETLET_REPORT_INTERVAL", "2s")
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start fleetlet-manager")?;
        self.child = Some(child);
        let address: std::net::SocketAddr = wait_for(
            "the manager's port file",
            Duration::from_secs(20),
            || async {
                std::fs::read_to_string(&port_file)
                    .ok()
                    .and_then(|text| text.trim().parse().ok())
            },
        )
        .await
        .with_context(|| format!("manager log:\n{}", self.logs()))?;
        self.address = Some(address);
        let url = format!("{}/healthz", self.url());
        wait_for(
            "the manager to answer /healthz",
            Duration::from_secs(20),
            || async {
                let ok = self.http.get(&url).send().await.ok()?.status().is_success();
                ok.then_some(())
            },
        )
        .await
        .with_context(|| format!("manager log:\n{}", self.logs()))?;
        Ok(())
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("manager.log")).unwrap_or_default()
    }

    /// Stops the manager (SIGTERM, then SIGKILL after 5 s).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = i32::try_from(child.id())?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                child.kill()?;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait()?;
        Ok(())
    }

    /// Starts the manager again on the same address.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        self.launch().await
    }

    fn admin(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        builder.bearer_auth(&self.admin_token)
    }

    /// Registers an agent and returns its token.
    pub async fn register_agent(&self, agent_id: &str) -> anyhow::Result<String> {
        let response = self
            .admin(self.http.post(format!("{}/api/v1/agents", self.url())))
            .json(&serde_json::json!({"agentId": agent_id, "labels": {"test": "agent"}}))
            .send()
            .await?;
        let status = response.status();
        let body: serde_json::Value = response.json().await?;
        if status.as_u16() != 201 {
            bail!("registering {agent_id} answered {status}: {body}");
        }
        body["token"]
            .as_str()
            .map(str::to_owned)
            .context("registration answer without a token")
    }

    /// Stores a manifest and returns its generation; the manifest must pass the JSON Schema too.
    pub async fn put_manifest(
        &self,
        agent_id: &str,
        manifest: &serde_json::Value,
    ) -> anyhow::Result<u64> {
        crate::schema::check_manifest(manifest)?;
        let response = self
            .admin(
                self.http
                    .put(format!("{}/api/v1/agents/{agent_id}/manifest", self.url())),
            )
            .json(manifest)
            .send()
            .await?;
        let status = response.status();
        let body: serde_json::Value = response.json().await?;
        if !status.is_success() {
            bail!("storing the manifest of {agent_id} answered {status}: {body}");
        }
        body["generation"]
            .as_u64()
            .context("stored manifest without a generation")
    }

    /// Stores a manifest for `agent_id` made of `resources` (see [`manifest`]) and returns its
    /// generation, as [`Self::put_manifest`] does.
    pub async fn put_resources(
        &self,
        agent_id: &str,
        resources: Vec<serde_json::Value>,
    ) -> anyhow::Result<u64> {
        self.put_manifest(agent_id, &manifest(agent_id, resources))
            .await
    }

    /// Registers `agent_id` and returns the options of an agent that reports to this manager
    /// with the token it got.
    pub async fn enroll(&self, agent_id: &str) -> anyhow::Result<AgentOptions> {
        let token = self.register_agent(agent_id).await?;
        Ok(AgentOptions::with_manager(agent_id, &self.url(), &token))
    }

    /// The manager's view of an agent's status.
    pub async fn status(
        &self,
        agent_id: &str,
    ) -> anyhow::Result<fleetlet_manifests::api::StatusView> {
        self.get_json(&format!("/api/v1/agents/{agent_id}/status"))
            .await
    }

    /// The agent's event log on the manager (up to 1000 events, oldest first), with the times
    /// the manager recorded.
    pub async fn events(
        &self,
        agent_id: &str,
    ) -> anyhow::Result<Vec<fleetlet_manifests::api::Event>> {
        let page: fleetlet_manifests::api::Page<fleetlet_manifests::api::Event> = self
            .get_json(&format!("/api/v1/agents/{agent_id}/events?limit=1000"))
            .await?;
        Ok(page.items)
    }

    /// The manager's Prometheus metrics text.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let response = self
            .admin(self.http.get(format!("{}/metrics", self.url())))
            .send()
            .await?;
        let status = response.status();
        if !status.is_success() {
            bail!("GET /metrics answered {status}: {}", response.text().await?);
        }
        Ok(response.text().await?)
    }

    /// An admin GET of `path`, its JSON answer decoded; any other answer is an error naming it.
    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let response = self
            .admin(self.http.get(format!("{}{path}", self.url())))
            .send()
            .await?;
        let status = response.status();
        if !status.is_success() {
            bail!("GET {path} answered {status}: {}", response.text().await?);
        }
        Ok(response.json().await?)
    }

    /// Waits until the manager has a status for the agent that satisfies `check`.
    pub async fn wait_for_status<F>(
        &self,
        agent_id: &str,
        what: &str,
        timeout: Duration,
        check: F,
    ) -> anyhow::Result<fleetlet_manifests::AgentStatus>
    where
        F: Fn(&fleetlet_manifests::AgentStatus) -> bool,
    {
        wait_for(what, timeout, || async {
            let view = self.status(agent_id).await.ok()?;
            view.status.filter(|status| check(status))
        })
        .await
    }

    /// Waits until the manager says the agent converged on `generation`.
    pub async fn wait_converged(
        &self,
        agent_id: &str,
        generation: u64,
        timeout: Duration,
    ) -> anyhow::Result<fleetlet_manifests::api::StatusView> {
        wait_for(
            &format!("{agent_id} to be reported converged at generation {generation}"),
            timeout,
            || async {
                let view = self.status(agent_id).await.ok()?;
                (view.summary.converged && view.summary.desired_generation == generation)
                    .then_some(view)
            },
        )
        .await
    }
}

impl Drop for ManagerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
