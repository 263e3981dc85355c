//! Runs the real `fleetlet-manager` binary: random role tokens, port 0 with a port file, logs
//! captured to a file, killed on drop. Build the binaries first: `cargo build --workspace --bins`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::RngCore;

/// How long a manager may take to come up (it waits for its database for up to 15 s).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The manager binary, or a loud failure telling how to build it. `FLEETLET_BENCH_MANAGER_BIN`
/// names another build (the benchmarks' release manager); the tests never set it.
pub fn manager_binary() -> PathBuf {
    let path = std::env::var_os("FLEETLET_BENCH_MANAGER_BIN")
        .map_or_else(|| crate::binary("fleetlet-manager"), PathBuf::from);
    assert!(
        path.exists(),
        "{} does not exist: run `cargo build --workspace --bins` before the tests",
        path.display()
    );
    path
}

pub use crate::agent::wait_for;

/// A random token of 32 hex digits.
pub fn random_token(prefix: &str) -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    let digits: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}-{digits}")
}

/// How to start a manager.
#[derive(Debug, Clone)]
pub struct ManagerOptions {
    /// Set as DATABASE_URL when present.
    pub database_url: Option<String>,
    /// Pass `--dev` (in-memory store).
    pub dev: bool,
    pub admin_token: String,
    pub reader_token: String,
    /// `RUST_LOG` of the process.
    pub log_filter: String,
    pub extra_env: BTreeMap<String, String>,
    pub extra_args: Vec<String>,
}

impl ManagerOptions {
    pub fn new(database_url: Option<&str>) -> Self {
        Self {
            database_url: database_url.map(str::to_owned),
            dev: false,
            admin_token: random_token("admin"),
            reader_token: random_token("reader"),
            log_filter: "info".to_owned(),
            extra_env: BTreeMap::new(),
            extra_args: Vec::new(),
        }
    }
}

/// A running manager process.
#[derive(Debug)]
pub struct ManagerProcess {
    /// `http://127.0.0.1:PORT` (`https://` when FLEETLET_TLS_CERT is in `extra_env`)
    pub url: String,
    pub admin_token: String,
    pub reader_token: String,
    pub options: ManagerOptions,
    child: Child,
    dir: tempfile::TempDir,
}

impl ManagerProcess {
    /// Starts a manager with `--dev` (in-memory store) and fresh random tokens.
    pub async fn start_dev() -> anyhow::Result<Self> {
        let mut options = ManagerOptions::new(None);
        options.dev = true;
        Self::start_with(options).await
    }

    /// Starts a manager on `database_url` with fresh random tokens.
    pub async fn start(database_url: &str) -> anyhow::Result<Self> {
        Self::start_with(ManagerOptions::new(Some(database_url))).await
    }

    /// Starts a manager and waits until it listens.
    pub async fn start_with(options: ManagerOptions) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("fleetlet-manager-test-")
            .tempdir()
            .context("creating the manager's test directory")?;
        let port_file = dir.path().join("port");
        let log_path = dir.path().join("manager.log");
        let log = std::fs::File::create(&log_path).context("creating the log file")?;
        let mut command = command_for(&options);
        command
            .env("FLEETLET_LISTEN", "127.0.0.1:0")
            .env("FLEETLET_PORT_FILE", &port_file)
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = command.spawn().context("spawning fleetlet-manager")?;
        let mut process = Self {
            url: String::new(),
            admin_token: options.admin_token.clone(),
            reader_token: options.reader_token.clone(),
            options,
            child,
            dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(text) = std::fs::read_to_string(&port_file)
                && text.ends_with('\n')
            {
                // With a certificate configured the manager speaks HTTPS only.
                let scheme = if process.options.extra_env.contains_key("FLEETLET_TLS_CERT") {
                    "https"
                } else {
                    "http"
                };
                process.url = format!("{scheme}://{}", text.trim());
                return Ok(process);
            }
            if let Some(status) = process.child.try_wait()? {
                bail!(
                    "fleetlet-manager exited with {status} before listening:\n{}",
                    process.logs()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "fleetlet-manager did not listen within {START_TIMEOUT:?}:\n{}",
                    process.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("manager.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process with SIGKILL (no chance to clean up) and reaps it.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_none() {
            self.child.kill().context("killing fleetlet-manager")?;
        }
        self.child.wait().context("reaping fleetlet-manager")?;
        Ok(())
    }

    /// Sends SIGTERM and waits up to `timeout` for the process to exit; returns its status.
    pub async fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let pid = i32::try_from(self.child.id()).context("pid fits in i32")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("fleetlet-manager still runs {timeout:?} after SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the process has exited (and with what).
    pub fn exited(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// An HTTP client and a request to `path` with the admin token.
    pub fn admin(
        &self,
        client: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        client
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.admin_token)
    }

    /// Sends `manifest` as the agent's desired state (PUT with the admin token), after checking it
    /// against the JSON Schema: for manifests meant to be valid. One meant to be refused goes
    /// through [`Self::admin`].
    pub async fn put_manifest(
        &self,
        client: &reqwest::Client,
        agent_id: &str,
        manifest: &serde_json::Value,
    ) -> anyhow::Result<reqwest::Response> {
        crate::schema::check_manifest(manifest)?;
        let path = format!("/api/v1/agents/{agent_id}/manifest");
        Ok(self
            .admin(client, reqwest::Method::PUT, &path)
            .json(manifest)
            .send()
            .await?)
    }

    /// Registers an agent with this body (`agentId`, `labels`) and answers its token.
    pub async fn register(
        &self,
        client: &reqwest::Client,
        registration: serde_json::Value,
    ) -> anyhow::Result<String> {
        issued_token(
            self.admin(client, reqwest::Method::POST, "/api/v1/agents")
                .json(&registration),
        )
        .await
    }

    /// Rotates the agent's token and answers the new one.
    pub async fn rotate_token(
        &self,
        client: &reqwest::Client,
        agent_id: &str,
    ) -> anyhow::Result<String> {
        let path = format!("/api/v1/agents/{agent_id}/token");
        issued_token(self.admin(client, reqwest::Method::POST, &path)).await
    }

    /// The agent's status view as an admin reads it (`GET /api/v1/agents/{agent_id}/status`),
    /// or `None` when the request or its decoding fails: for polls that wait for a condition.
    pub async fn status_json(
        &self,
        client: &reqwest::Client,
        agent_id: &str,
    ) -> Option<serde_json::Value> {
        let path = format!("/api/v1/agents/{agent_id}/status");
        self.admin(client, reqwest::Method::GET, &path)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()
    }

    /// Reports, as agent `agent_id` with its `token`, a status that observed generation 1 (report
    /// sequence 1) with `resources` (the status' map from resource id to resource status).
    pub async fn report_generation_one(
        &self,
        agent_id: &str,
        token: &str,
        resources: serde_json::Value,
    ) -> anyhow::Result<()> {
        reqwest::Client::new()
            .put(format!("{}/api/v1/agents/{agent_id}/status", self.url))
            .bearer_auth(token)
            .json(&serde_json::json!({
                "apiVersion": "fleetlet.dev/v1", "kind": "AgentStatus", "agentId": agent_id,
                "reportSeq": 1, "manifestGeneration": 1, "observedGeneration": 1,
                "observedAt": "2026-11-22T10:00:00Z",
                "agent": {"version": "0.1.0", "hostname": agent_id, "arch": "aarch64",
                          "os": "linux", "startedAt": "2026-11-22T09:00:00Z"},
                "resources": resources,
            }))
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }
}

/// Sends a request that issues an agent token (a registration or a rotation) and answers it.
async fn issued_token(request: reqwest::RequestBuilder) -> anyhow::Result<String> {
    let answer: serde_json::Value = request.send().await?.error_for_status()?.json().await?;
    answer["token"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no token in {answer}"))
}

impl Drop for ManagerProcess {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

fn command_for(options: &ManagerOptions) -> Command {
    let mut command = Command::new(manager_binary());
    // Start from a clean slate so the caller's environment (DATABASE_URL above all) cannot leak in.
    command.env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    command
        .env("RUST_LOG", &options.log_filter)
        .env("FLEETLET_ADMIN_TOKEN", &options.admin_token)
        .env("FLEETLET_READER_TOKEN", &options.reader_token)
        .stdin(Stdio::null());
    if let Some(url) = &options.database_url {
        command.env("DATABASE_URL", url);
    }
    if options.dev {
        command.arg("--dev");
    }
    command.envs(&options.extra_env).args(&options.extra_args);
    command
}

/// Runs the manager expecting it to exit by itself (fail-fast cases); returns its exit status
/// and its combined output, or fails if it is still running after `timeout`.
pub async fn run_to_exit(
    options: &ManagerOptions,
    timeout: Duration,
) -> anyhow::Result<(ExitStatus, String)> {
    let dir = tempfile::tempdir()?;
    let log_path = dir.path().join("manager.log");
    let log = std::fs::File::create(&log_path)?;
    let mut child = command_for(options)
        .env("FLEETLET_LISTEN", "127.0.0.1:0")
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("spawning fleetlet-manager")?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok((status, std::fs::read_to_string(&log_path)?));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "fleetlet-manager still ran after {timeout:?}:\n{}",
                std::fs::read_to_string(&log_path)?
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
