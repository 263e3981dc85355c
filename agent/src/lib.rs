//! The fleetlet agent library: it converges a device toward its typed manifest and reports a
//! typed status. The binary (`main.rs`) only parses configuration, sets up tracing and calls
//! [`run`] or [`run_once`].
//!
//! Map: `config` (flags, environment, TOML) → `engine` (level-triggered passes, the loop) over
//! `reconcile` (one reconciler per kind, enum dispatch) and `store` (what the agent remembers);
//! `client` talks to the manager, `manifest_file` replaces it in standalone mode, `status` builds
//! what is reported, `backoff` is the retry policy, `shutdown` and `sd_notify` the lifecycle.

pub mod backoff;
pub mod client;
pub mod config;
pub mod confined;
pub mod engine;
pub mod enroll;
pub mod error;
pub mod facts;
pub mod manifest_file;
pub mod memory;
pub mod metrics_file;
pub mod reconcile;
pub mod runtime;
pub mod sd_notify;
pub mod shutdown;
pub mod status;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use fleetlet_manifests::{AgentId, AgentInfo, AgentStatus};
use time::OffsetDateTime;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;

use crate::client::{ManagerClient, ManifestAnswer};
use crate::config::{Config, Credential, Source};
use crate::engine::{DesiredUpdate, Engine};
pub use crate::error::AgentError;
use crate::reconcile::{Reconcile, Reconcilers};
use crate::sd_notify::SystemdNotifier;
use crate::shutdown::{Shutdown, ShutdownSignal};
use crate::status::Connectivity;
use crate::store::{AgentRecord, Store};

/// How long the last status report may take at shutdown; it must fit in
/// [`shutdown::DRAIN_TIMEOUT`].
const FINAL_REPORT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long `--once` waits for its one report.
const ONCE_REPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything both modes start from.
struct Prepared {
    engine: Engine<Reconcilers>,
    store: Arc<dyn Store>,
    client: Option<ManagerClient>,
}

/// The agent id: configured, or in standalone mode named by the manifest file.
fn agent_id_of(config: &Config) -> Result<AgentId, AgentError> {
    if let Some(id) = &config.agent_id {
        return Ok(id.clone());
    }
    match &config.source {
        Source::ManifestFile(path) => manifest_file::read_manifest_file(path, None)
            .map(|manifest| manifest.agent_id)
            .map_err(AgentError::NoAgentId),
        // Config::resolve refuses a manager without an agent id; this is only a safety net.
        Source::Manager { .. } => Err(AgentError::Config(config::ConfigError::Invalid {
            setting: "FLEETLET_AGENT_ID",
            message: "an agent id is needed to talk to the manager".into(),
        })),
    }
}

fn read_first_line(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|text| text.trim().to_owned())
        .filter(|text| !text.is_empty())
}

fn agent_info(reconcilers: &Reconcilers) -> AgentInfo {
    AgentInfo {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        hostname: read_first_line("/proc/sys/kernel/hostname").unwrap_or_else(|| "unknown".into()),
        arch: std::env::consts::ARCH.to_owned(),
        os: std::env::consts::OS.to_owned(),
        boot_id: read_first_line("/proc/sys/kernel/random/boot_id").unwrap_or_default(),
        started_at: OffsetDateTime::now_utc(),
        supported_kinds: reconcilers
            .supported_kinds()
            .iter()
            .map(|kind| kind.as_str().to_owned())
            .collect(),
    }
}

/// The store the agent runs on: [`open_inner_store`]'s, wrapped so that a write the disk refuses
/// (full, or an I/O error) degrades the agent instead of stopping it: what could not be saved is
/// kept in memory, reported as the `Degraded` condition and retried (`store::resilient`).
fn open_store(config: &Config, agent_id: &AgentId) -> Result<Arc<dyn Store>, AgentError> {
    Ok(Arc::new(store::ResilientStore::new(open_inner_store(
        config, agent_id,
    )?)))
}

/// The filesystem store in the state dir when it is built in (feature `fs-store`, docs/reference.md §6),
/// so the device keeps its desired state, ownership and unsent reports across restarts; it
/// refuses to start while another agent holds the state dir; its size cap is
/// FLEETLET_STORE_MAX_BYTES. Otherwise the memory store (and the size cap is not used).
#[cfg(feature = "fs-store")]
fn open_inner_store(config: &Config, agent_id: &AgentId) -> Result<Arc<dyn Store>, AgentError> {
    let store = store::FsStore::open(
        &config.state_dir,
        agent_id.clone(),
        store::FsStoreOptions {
            max_bytes: config.store_max_bytes,
            ..store::FsStoreOptions::default()
        },
    )?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "fs-store"))]
fn open_inner_store(_config: &Config, agent_id: &AgentId) -> Result<Arc<dyn Store>, AgentError> {
    Ok(Arc::new(store::MemoryStore::new(agent_id.clone())))
}

fn prepare(config: &Config) -> Result<Prepared, AgentError> {
    let agent_id = agent_id_of(config)?;
    let store = open_store(config, &agent_id)?;
    // In standalone mode the agent id may come from the manifest file rather than the config.
    let mut settings = config.reconciler_settings();
    settings.agent_id = Some(agent_id.clone());
    let reconcilers = Reconcilers::new(&settings);
    let agent = agent_info(&reconcilers);
    // A full or failing state dir does not stop the start: the record waits in memory.
    store.save_agent_record(&AgentRecord {
        agent_id: agent_id.clone(),
        version: agent.version.clone(),
        started_at: agent.started_at,
        config: config.snapshot(),
    })?;
    let client = match &config.source {
        Source::Manager {
            url,
            token: Credential::Token(token),
            ca_file,
        } => Some(ManagerClient::with_http(
            client::http_client(ca_file.as_deref())?,
            url,
            agent_id.clone(),
            token.clone(),
        )),
        // `obtain_token` turns this into a token before the agent prepares.
        Source::Manager {
            token: Credential::Enroll { .. },
            ..
        } => {
            return Err(AgentError::Enroll(enroll::EnrollError::NoCredential {
                path: enroll::token_path(&config.state_dir, &agent_id),
                agent_id,
            }));
        }
        Source::ManifestFile(_) => None,
    };
    let engine = Engine::new(
        Arc::clone(&store),
        Arc::new(reconcilers),
        config.engine_settings(),
        agent,
    )?;
    tracing::info!(agent_id = %agent_id, source = ?source_label(config), file_roots = ?config.file_roots, "agent starting");
    Ok(Prepared {
        engine,
        store,
        client,
    })
}

fn source_label(config: &Config) -> String {
    match &config.source {
        Source::Manager { url, .. } => format!("manager {url}"),
        Source::ManifestFile(path) => format!("manifest file {}", path.display()),
    }
}

/// Without a configured token, uses the one kept from an earlier enrollment or enrolls now
/// (see `enroll.rs`); the returned config always carries a token when it names a manager.
async fn obtain_token(mut config: Config, shutdown: &ShutdownSignal) -> Result<Config, AgentError> {
    let Source::Manager {
        url,
        token: Credential::Enroll { bootstrap },
        ca_file,
    } = &config.source
    else {
        return Ok(config);
    };
    let agent_id = agent_id_of(&config)?;
    let token = match enroll::kept_token(&config.state_dir, &agent_id)? {
        Some(token) => token,
        None => {
            let Some(bootstrap) = bootstrap else {
                return Err(AgentError::Enroll(enroll::EnrollError::NoCredential {
                    path: enroll::token_path(&config.state_dir, &agent_id),
                    agent_id,
                }));
            };
            let http = client::http_client(ca_file.as_deref())?;
            enroll::enroll(
                &http,
                url,
                &agent_id,
                bootstrap,
                &config.state_dir,
                shutdown,
            )
            .await?
        }
    };
    config.source = Source::Manager {
        url: url.clone(),
        token: Credential::Token(token),
        ca_file: ca_file.clone(),
    };
    Ok(config)
}

/// Runs the agent until `shutdown` is triggered: watches the desired state, converges toward it,
/// reports. Returns once in-flight work is finished and the store is flushed.
pub async fn run(config: Config, shutdown: ShutdownSignal) -> Result<(), AgentError> {
    let config = obtain_token(config, &shutdown).await?;
    let Prepared {
        mut engine,
        store,
        client,
    } = prepare(&config)?;
    if let Some(path) = &config.metrics_file {
        let to_manager = matches!(config.source, Source::Manager { .. });
        let file = metrics_file::MetricsFile::new(path, Arc::clone(&store), to_manager);
        engine.set_metrics_file(file);
    }
    let (updates_sender, updates) = mpsc::channel(16);
    let report_ready = Arc::new(Notify::new());
    let initial = match config.source {
        Source::Manager { .. } => Connectivity::Connecting,
        Source::ManifestFile(_) => Connectivity::Standalone,
    };
    let (connectivity_sender, connectivity) = watch::channel(initial);
    // Helper tasks get their own stop signal, triggered only after the engine has finished, so
    // that the engine's last status can still be delivered.
    let helpers_stop = Shutdown::new();
    let mut helpers = JoinSet::new();
    match (&config.source, &client) {
        (Source::Manager { .. }, Some(client)) => {
            helpers.spawn(client::watch_manifests(
                client.clone(),
                engine.manifest_generation(),
                config.watch_wait,
                updates_sender,
                connectivity_sender.clone(),
                shutdown.clone(),
            ));
            helpers.spawn(client::deliver_reports(
                client.clone(),
                Arc::clone(&store),
                Arc::clone(&report_ready),
                connectivity_sender.clone(),
                helpers_stop.signal(),
            ));
            helpers.spawn(client::send_heartbeats(
                client.clone(),
                Arc::clone(&store),
                config.report_interval,
                Arc::clone(&report_ready),
                shutdown.clone(),
            ));
        }
        (Source::ManifestFile(path), _) => {
            helpers.spawn(manifest_file::watch_manifest_file(
                path.clone(),
                engine.manifest().cloned(),
                config.resync_interval,
                updates_sender,
                shutdown.clone(),
            ));
        }
        (Source::Manager { .. }, None) => {}
    }
    let notifier = SystemdNotifier::from_env();
    helpers.spawn(notifier.clone().run_watchdog(helpers_stop.signal()));
    notifier.notify("READY=1");

    let result = engine
        .run(updates, connectivity, report_ready, shutdown)
        .await;
    notifier.notify("STOPPING=1");
    helpers_stop.trigger();
    drop(connectivity_sender);
    while helpers.join_next().await.is_some() {}
    if let Some(client) = &client {
        client::deliver_pending_once(client, &*store, FINAL_REPORT_TIMEOUT).await;
    }
    store.flush()?;
    if let Some(fault) = store.fault() {
        tracing::error!(reason = fault.reason(), error = %fault.message, "stopping with writes the local store could not save; they are lost");
    }
    tracing::info!("agent stopped");
    Ok(result?)
}

/// One full pass: fetch the desired state once, converge, report once, and return the status.
/// The caller decides the exit code with [`status::is_converged`].
pub async fn run_once(config: Config) -> Result<AgentStatus, AgentError> {
    // `--once` has no signal handling of its own; a shutdown that never comes is right here.
    let config = obtain_token(config, &shutdown::Shutdown::new().signal()).await?;
    let Prepared {
        mut engine,
        store,
        client,
    } = prepare(&config)?;
    let mut connectivity = Connectivity::Standalone;
    match (&config.source, &client) {
        (Source::ManifestFile(path), _) => {
            match manifest_file::read_manifest_file(path, engine.manifest()) {
                Ok(manifest) => engine.accept(DesiredUpdate::Manifest(manifest))?,
                Err(error) => engine.accept(DesiredUpdate::Rejected(error.to_string()))?,
            }
        }
        (Source::Manager { .. }, Some(client)) => {
            match client.fetch_manifest(None, Duration::ZERO).await {
                Ok(answer) => {
                    connectivity = Connectivity::Online;
                    match answer {
                        ManifestAnswer::Changed(manifest) => {
                            engine.accept(DesiredUpdate::Manifest(manifest))?;
                        }
                        ManifestAnswer::Invalid(why) => {
                            engine.accept(DesiredUpdate::Rejected(why))?;
                        }
                        ManifestAnswer::Unchanged | ManifestAnswer::NoManifest => {}
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "could not fetch the manifest; using the stored one");
                    connectivity = Connectivity::Offline {
                        reason: "ManagerUnreachable".into(),
                        message: error.to_string(),
                    };
                }
            }
        }
        (Source::Manager { .. }, None) => {}
    }
    engine.pass(&Shutdown::new().signal()).await?;
    engine.publish_status(&connectivity, true)?;
    if let Some(client) = &client {
        client::deliver_pending_once(client, &*store, ONCE_REPORT_TIMEOUT).await;
    }
    store.flush()?;
    let status = engine.build_status(&connectivity)?;
    Ok(store.load_status()?.unwrap_or(status))
}
