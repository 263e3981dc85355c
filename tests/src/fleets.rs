//! Fixtures for the fleet system tests (issue 20, docs/fleets.md): a lab of real manager
//! replicas on a fresh PostgreSQL database behind a small TCP balancer, and real agent processes
//! registered with labels, each writing files under its own root `<lab>/roots/<agentId>` so one
//! fleet template (`<lab>/roots/{{ agentId }}/…`) fits every device.
//!
//! Every fleet test gets its own database: selectors match every agent of a database, so two
//! tests sharing one would select each other's devices.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use fleetlet_manifests::api::{Page, StatusView};
use fleetlet_manifests::fleet_api::{DeviceRolloutState, FleetDeviceView, FleetView, RolloutPhase};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::Row;
use time::OffsetDateTime;

use crate::agent::{AgentDirs, AgentOptions, AgentProcess};
use crate::manager::{ManagerOptions, ManagerProcess};
use crate::postgres::{FreshDatabase, fresh_database};

mod bodies;
pub use bodies::{count, fleet, ids, kiosk, numbered, strategy, template_file};

/// The manager's report interval in the lab: an agent is stale after three of these without
/// contact, so a stopped agent goes stale within seconds while a live one (polling every
/// [`AGENT_WATCH_WAIT`]) never does.
pub const MANAGER_REPORT_INTERVAL: &str = "2s";
/// How long an agent's long-poll waits: well below the stale limit above.
pub const AGENT_WATCH_WAIT: &str = "2s";
/// How long new agents may take to report, all together; generous for a loaded two-core machine.
const FIRST_REPORT: Duration = Duration::from_secs(60);

/// A fleet event from the fleet's log (the `fleet_events` table), oldest first.
#[derive(Debug, Clone)]
pub struct FleetEvent {
    pub seq: i64,
    pub type_: String,
    pub payload: Value,
    pub created_at: OffsetDateTime,
}

/// One manifest generation of a device as stored (the `manifests` table).
#[derive(Debug, Clone)]
pub struct StoredGeneration {
    pub generation: u64,
    pub created_at: OffsetDateTime,
    pub created_by: String,
}

/// A registered device and, while it runs, its agent process.
#[derive(Debug)]
pub struct Device {
    pub id: String,
    pub token: String,
    pub dirs: AgentDirs,
    pub options: AgentOptions,
    pub process: Option<AgentProcess>,
}

impl Device {
    /// Starts the agent process (again).
    pub fn start(&mut self) -> anyhow::Result<()> {
        if self.process.is_none() {
            self.process = Some(AgentProcess::start(&self.dirs, &self.options)?);
        }
        Ok(())
    }

    /// Stops the agent process (SIGTERM, SIGKILL on drop after the timeout).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut process) = self.process.take() {
            let _ = process.terminate(Duration::from_secs(10));
        }
        Ok(())
    }

    /// What the agent logged so far.
    pub fn logs(&self) -> String {
        self.process
            .as_ref()
            .map(AgentProcess::logs)
            .unwrap_or_default()
    }
}

/// Manager replicas on one fresh database, a balancer in front of them for the agents, and the
/// devices.
#[derive(Debug)]
pub struct Lab {
    pub database: FreshDatabase,
    pub replicas: Vec<ManagerProcess>,
    /// Where the agents connect: the balancer, which hands each connection to the first replica
    /// that accepts it.
    pub agent_url: String,
    pub client: reqwest::Client,
    pub db: sqlx::PgPool,
    dir: tempfile::TempDir,
    pub devices: BTreeMap<String, Device>,
    /// The replicas' addresses, in the order the balancer tries them.
    upstreams: Upstreams,
    options: ManagerOptions,
    balancer: tokio::task::JoinHandle<()>,
}

type Upstreams = Arc<std::sync::Mutex<Vec<String>>>;

impl Drop for Lab {
    fn drop(&mut self) {
        self.balancer.abort();
    }
}

impl Lab {
    /// A lab with `replicas` managers (at least one) on a fresh database.
    pub async fn start(replicas: usize) -> anyhow::Result<Self> {
        let database = fresh_database().await?;
        let mut options = ManagerOptions::new(Some(&database.url));
        options.extra_env.insert(
            "FLEETLET_REPORT_INTERVAL".into(),
            MANAGER_REPORT_INTERVAL.into(),
        );
        let mut started = Vec::new();
        for _ in 0..replicas.max(1) {
            // The same tokens for every replica: they are one manager to their users.
            started.push(ManagerProcess::start_with(options.clone()).await?);
        }
        let upstreams: Upstreams = Arc::new(std::sync::Mutex::new(
            started
                .iter()
                .map(|m| m.url.trim_start_matches("http://").to_owned())
                .collect(),
        ));
        let (agent_url, balancer) = balancer(Arc::clone(&upstreams)).await?;
        let db = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&database.url)
            .await
            .context("connecting the test to its database")?;
        let dir = tempfile::Builder::new()
            .prefix("fleetlet-fleet-lab-")
            .tempdir()?;
        for sub in ["roots", "outside"] {
            std::fs::create_dir_all(dir.path().join(sub))?;
        }
        Ok(Self {
            database,
            replicas: started,
            agent_url,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()?,
            db,
            dir,
            devices: BTreeMap::new(),
            upstreams,
            options,
            balancer,
        })
    }

    /// A lab of one manager and the devices `(id, labels)`, their agents running and reported
    /// (see [`Self::add_devices`]).
    pub async fn with_devices<I, S>(devices: I) -> anyhow::Result<Self>
    where
        I: IntoIterator<Item = (S, Value)>,
        S: Into<String>,
    {
        let mut lab = Self::start(1).await?;
        lab.add_devices(devices, &[]).await?;
        Ok(lab)
    }

    /// A lab of one manager, `kiosks` devices labelled [`kiosk`] and `printers` labelled
    /// `role=printer` (which no kiosks fleet selects), named by [`numbered`]: `kiosk-1`…,
    /// `printer-1`…; their agents running and reported.
    pub async fn with_kiosks(kiosks: u32, printers: u32) -> anyhow::Result<Self> {
        let kiosks = numbered("kiosk", kiosks)
            .into_iter()
            .map(|id| (id, kiosk()));
        let printers = numbered("printer", printers)
            .into_iter()
            .map(|id| (id, json!({"role": "printer"})));
        Self::with_devices(kiosks.chain(printers)).await
    }

    /// Starts one more replica on the same database, with the same tokens, last in the
    /// balancer's order.
    pub async fn add_replica(&mut self) -> anyhow::Result<()> {
        let replica = ManagerProcess::start_with(self.options.clone()).await?;
        self.upstreams
            .lock()
            .map_err(|_| anyhow::anyhow!("the balancer's list is poisoned"))?
            .push(replica.url.trim_start_matches("http://").to_owned());
        self.replicas.push(replica);
        Ok(())
    }

    /// Runs the real `fleetlet` CLI as the admin against the first running replica; answers
    /// its stdout, failing with its stderr on a non-zero exit.
    pub fn fleetlet(&mut self, args: &[&str]) -> anyhow::Result<String> {
        let path = crate::binary("fleetlet");
        if !path.exists() {
            bail!(
                "{} does not exist: run `cargo build --workspace --bins` first",
                path.display()
            );
        }
        let manager = self.manager();
        let output = std::process::Command::new(path)
            .env_clear()
            .env("FLEETLET_URL", &manager.url)
            .env("FLEETLET_TOKEN", &manager.admin_token)
            .env("XDG_CONFIG_HOME", "/nonexistent")
            .args(args)
            .output()?;
        if !output.status.success() {
            bail!(
                "fleetlet {args:?} failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8(output.stdout)?)
    }

    /// A template's `motd` File: `<roots>/{{ agentId }}/motd` with `text`.
    pub fn motd(&self, text: &str) -> Value {
        let path = format!("{}/{{{{ agentId }}}}/motd", self.roots().display());
        template_file("motd", &path, text)
    }

    /// The `kiosks` fleet: every [`kiosk`] gets the template's `motd` saying `text`
    /// (placeholders allowed), with no parameters, rolled out by `strategy`.
    pub fn kiosks_fleet(&self, text: &str, strategy: Value) -> Value {
        fleet(
            "kiosks",
            kiosk(),
            json!({}),
            vec![self.motd(text)],
            strategy,
        )
    }

    /// A file in the lab's directory (for fleet bodies and keys the CLI reads).
    pub fn lab_file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The replica the test talks to: the first one still running.
    pub fn manager(&mut self) -> &ManagerProcess {
        let index = self
            .replicas
            .iter_mut()
            .position(|m| matches!(m.exited(), Ok(None)))
            .unwrap_or(0);
        &self.replicas[index]
    }

    fn any(&self) -> &ManagerProcess {
        &self.replicas[self.replicas.len() - 1]
    }

    /// Every replica's log, for failure messages.
    pub fn manager_logs(&self) -> String {
        self.replicas
            .iter()
            .enumerate()
            .map(|(i, m)| format!("--- manager replica {i} ---\n{}", m.logs()))
            .collect()
    }

    /// The lab's directory of device roots: the file root of device `id` is `roots/<id>`.
    pub fn roots(&self) -> PathBuf {
        self.dir.path().join("roots")
    }

    /// A directory outside every device's file roots.
    pub fn outside(&self) -> PathBuf {
        self.dir.path().join("outside")
    }

    /// The path of `name` under device `id`'s root.
    pub fn device_file(&self, id: &str, name: &str) -> PathBuf {
        self.roots().join(id).join(name)
    }

    /// Registers device `id` with `labels` and starts its agent with `extra_env` (e.g. trusted
    /// keys); answers once it reported (see [`Self::add_devices`]).
    pub async fn add_device(
        &mut self,
        id: &str,
        labels: Value,
        extra_env: &[(&str, String)],
    ) -> anyhow::Result<()> {
        self.add_devices([(id, labels)], extra_env).await
    }

    /// Registers each device `(id, labels)` and starts its agent with `extra_env`, all at once;
    /// then waits, against one deadline, until every one of them has reported.
    ///
    /// The wait matters: a device that never reported counts as stale, and a rollout defers
    /// stale devices, so a fleet applied before the first reports could complete with none of
    /// them judged in its batches.
    pub async fn add_devices<I, S>(
        &mut self,
        devices: I,
        extra_env: &[(&str, String)],
    ) -> anyhow::Result<()>
    where
        I: IntoIterator<Item = (S, Value)>,
        S: Into<String>,
    {
        let mut started = Vec::new();
        for (id, labels) in devices {
            let id = id.into();
            self.start_device(&id, labels, extra_env).await?;
            started.push(id);
        }
        self.wait_converged(&started, 0, FIRST_REPORT)
            .await
            .context("the new devices' first reports")
    }

    async fn start_device(
        &mut self,
        id: &str,
        labels: Value,
        extra_env: &[(&str, String)],
    ) -> anyhow::Result<()> {
        let manager = self.any();
        let token = manager
            .register(&self.client, json!({"agentId": id, "labels": labels}))
            .await
            .with_context(|| format!("registering {id}"))?;
        let dirs = AgentDirs::new()?;
        let root = self.roots().join(id);
        std::fs::create_dir_all(&root)?;
        let mut options = AgentOptions::with_manager(id, &self.agent_url, &token);
        options.report_interval = "1s";
        options.watch_wait = AGENT_WATCH_WAIT;
        options
            .env
            .push(("FLEETLET_FILE_ROOTS".into(), root.display().to_string()));
        options
            .env
            .extend(extra_env.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        let mut device = Device {
            id: id.to_owned(),
            token,
            dirs,
            options,
            process: None,
        };
        device.start()?;
        self.devices.insert(id.to_owned(), device);
        Ok(())
    }

    /// The ids of the lab's devices, in order.
    pub fn device_ids(&self) -> Vec<String> {
        self.devices.keys().cloned().collect()
    }

    pub fn device(&mut self, id: &str) -> &mut Device {
        self.devices
            .get_mut(id)
            .unwrap_or_else(|| panic!("no device {id} in the lab"))
    }

    /// An admin request to the first running replica.
    pub fn admin(&mut self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let client = self.client.clone();
        self.manager().admin(&client, method, path)
    }

    /// Sends an admin request and answers its status and JSON body (`Null` when it has none).
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let mut request = self.admin(method.clone(), path);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = response.status();
        let bytes = response.bytes().await?;
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Ok((status, value))
    }

    /// `PUT /api/v1/fleets/{name}`, expected to succeed; answers the stored revision.
    pub async fn put_fleet(&mut self, fleet: &Value) -> anyhow::Result<u64> {
        let name = fleet["name"].as_str().context("the fleet has a name")?;
        let (status, body) = self
            .call(Method::PUT, &format!("/api/v1/fleets/{name}"), Some(fleet))
            .await?;
        if !status.is_success() {
            bail!("PUT fleet {name} answered {status}: {body}");
        }
        body["revision"]
            .as_u64()
            .with_context(|| format!("PUT fleet {name} answered {body}"))
    }

    /// `GET /api/v1/fleets/{name}`, decoded.
    pub async fn fleet(&mut self, name: &str) -> anyhow::Result<FleetView> {
        self.get(&format!("/api/v1/fleets/{name}")).await
    }

    /// An admin `GET path`, expected to answer 200 with a body that decodes as a `T`.
    async fn get<T: serde::de::DeserializeOwned>(&mut self, path: &str) -> anyhow::Result<T> {
        let (status, body) = self.call(Method::GET, path, None).await?;
        if status != StatusCode::OK {
            bail!("GET {path} answered {status}: {body}");
        }
        serde_json::from_value(body.clone()).with_context(|| format!("GET {path} answered {body}"))
    }

    /// Every row of `GET /api/v1/fleets/{name}/devices`, page by page.
    pub async fn fleet_devices(
        &mut self,
        name: &str,
    ) -> anyhow::Result<BTreeMap<String, FleetDeviceView>> {
        let mut rows = BTreeMap::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/api/v1/fleets/{name}/devices?limit=7");
            if let Some(cursor) = &cursor {
                path.push_str(&format!("&cursor={cursor}"));
            }
            let page: Page<FleetDeviceView> = self.get(&path).await?;
            for row in page.items {
                rows.insert(row.agent_id.as_str().to_owned(), row);
            }
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(rows),
            }
        }
    }

    /// `POST /api/v1/fleets/{name}/rollout/{action}`: its status and body.
    pub async fn action(
        &mut self,
        name: &str,
        action: &str,
    ) -> anyhow::Result<(StatusCode, Value)> {
        self.call(
            Method::POST,
            &format!("/api/v1/fleets/{name}/rollout/{action}"),
            None,
        )
        .await
    }

    /// `PATCH /api/v1/agents/{id}` with a label merge patch: its status and body.
    pub async fn patch_labels(
        &mut self,
        id: &str,
        labels: Value,
    ) -> anyhow::Result<(StatusCode, Value)> {
        self.call(
            Method::PATCH,
            &format!("/api/v1/agents/{id}"),
            Some(&json!({"labels": labels})),
        )
        .await
    }

    /// The manager's view of a device's status.
    pub async fn status(&mut self, id: &str) -> anyhow::Result<StatusView> {
        self.get(&format!("/api/v1/agents/{id}/status")).await
    }

    /// Each device's state and True conditions as the manager shows them, for failure messages.
    pub async fn agent_conditions(&mut self) -> BTreeMap<String, String> {
        let ids: Vec<String> = self.devices.keys().cloned().collect();
        let mut shown = BTreeMap::new();
        for id in ids {
            let line = match self.status(&id).await {
                Ok(view) => {
                    let conditions: Vec<String> = view
                        .status
                        .iter()
                        .flat_map(|s| &s.conditions)
                        .filter(|c| c.status == fleetlet_manifests::ConditionStatus::True)
                        .map(|c| format!("{:?} {}: {}", c.type_, c.reason, c.message))
                        .collect();
                    format!(
                        "{:?} at generation {} of {}; {conditions:?}",
                        view.summary.state,
                        view.summary.observed_generation.unwrap_or(0),
                        view.summary.desired_generation
                    )
                }
                Err(error) => format!("{error:#}"),
            };
            shown.insert(id, line);
        }
        shown
    }

    /// Polls the fleet until `check` holds, failing after `timeout` with the last view and the
    /// managers' logs.
    pub async fn wait_fleet<F>(
        &mut self,
        name: &str,
        what: &str,
        timeout: Duration,
        check: F,
    ) -> anyhow::Result<FleetView>
    where
        F: Fn(&FleetView) -> bool,
    {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let view = self.fleet(name).await;
            if let Ok(view) = &view
                && check(view)
            {
                return Ok(view.clone());
            }
            if std::time::Instant::now() >= deadline {
                let devices = self.fleet_devices(name).await.ok();
                let agents = self.agent_conditions().await;
                bail!(
                    "timed out after {timeout:?} waiting for fleet {name}: {what}\nlast view: \
                     {view:#?}\ndevices: {devices:#?}\nevents: {:#?}\nagents: \
                     {agents:#?}\n{}",
                    self.events(name).await.ok(),
                    self.manager_logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until fleet `name`'s rollout completed with each of `devices` Succeeded, then until
    /// each of them converged on its desired generation (at least 1: what the fleet wrote).
    pub async fn wait_completed(
        &mut self,
        name: &str,
        devices: &[String],
        timeout: Duration,
    ) -> anyhow::Result<FleetView> {
        let succeeded = u64::try_from(devices.len())?;
        let what = format!("completed with {succeeded} devices succeeded");
        let view = self
            .wait_fleet(name, &what, timeout, |v| {
                v.phase == RolloutPhase::Completed
                    && count(v, DeviceRolloutState::Succeeded) == succeeded
            })
            .await?;
        self.wait_converged(devices, 1, timeout).await?;
        Ok(view)
    }

    /// Waits until the manager says each of `ids` converged on its current desired generation,
    /// which is at least `at_least`. Every round asks about each device still waited for, so
    /// they are all waited for at once, against one deadline.
    pub async fn wait_converged(
        &mut self,
        ids: &[String],
        at_least: u64,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        let client = self.client.clone();
        // Each device still waited for, with the summary the manager last showed for it.
        let mut waiting: Vec<(&String, Value)> = ids.iter().map(|id| (id, Value::Null)).collect();
        loop {
            let manager = self.manager();
            for (id, summary) in &mut waiting {
                let view = manager.status_json(&client, id).await;
                *summary = view.map_or(Value::Null, |view| view["summary"].clone());
            }
            waiting.retain(|(_, summary)| {
                let generation = summary["desiredGeneration"].as_u64();
                !(summary["converged"] == true && generation.is_some_and(|g| g >= at_least))
            });
            if waiting.is_empty() {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let shown: String = waiting
            .iter()
            .map(|(id, summary)| {
                let logs = self.devices.get(*id).map(Device::logs).unwrap_or_default();
                format!("--- {id}, last summary {summary}; its agent's log:\n{logs}\n")
            })
            .collect();
        bail!(
            "timed out after {timeout:?} waiting for {} of {} devices to converge at a \
             generation ≥ {at_least}\n{shown}{}",
            waiting.len(),
            ids.len(),
            self.manager_logs()
        )
    }

    /// The fleet's event log, oldest first (read from the database).
    pub async fn events(&self, name: &str) -> anyhow::Result<Vec<FleetEvent>> {
        let sql = "SELECT seq, type, payload, created_at FROM fleet_events WHERE fleet = $1 \
                   ORDER BY seq";
        self.rows(sql, name, |row| {
            Ok(FleetEvent {
                seq: row.try_get("seq")?,
                type_: row.try_get("type")?,
                payload: row.try_get("payload")?,
                created_at: row.try_get("created_at")?,
            })
        })
        .await
    }

    /// The device's stored manifest generations, oldest first.
    pub async fn generations(&self, id: &str) -> anyhow::Result<Vec<StoredGeneration>> {
        let sql = "SELECT generation, created_at, created_by FROM manifests WHERE agent_id = $1 \
                   ORDER BY generation";
        self.rows(sql, id, |row| {
            Ok(StoredGeneration {
                generation: u64::try_from(row.try_get::<i64, _>("generation")?)?,
                created_at: row.try_get("created_at")?,
                created_by: row.try_get("created_by")?,
            })
        })
        .await
    }

    /// Each row `sql` selects with `key` as `$1`, read by `read`.
    async fn rows<T>(
        &self,
        sql: &str,
        key: &str,
        read: impl Fn(&sqlx::postgres::PgRow) -> anyhow::Result<T>,
    ) -> anyhow::Result<Vec<T>> {
        let rows = sqlx::query(sql).bind(key).fetch_all(&self.db).await?;
        rows.iter().map(read).collect()
    }

    /// The newest stored generation of the device (0: none).
    pub async fn generation(&self, id: &str) -> anyhow::Result<u64> {
        Ok(self
            .generations(id)
            .await?
            .last()
            .map_or(0, |g| g.generation))
    }
}

/// A TCP balancer on 127.0.0.1: each connection goes to the first upstream that accepts it, so
/// when a replica dies its agents reconnect to the next one, as behind any load balancer.
async fn balancer(upstreams: Upstreams) -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let task = tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let order = upstreams.lock().map(|u| u.clone()).unwrap_or_default();
            tokio::spawn(async move {
                for upstream in &order {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        return;
                    }
                }
            });
        }
    });
    Ok((url, task))
}
