//! The fleetlet manager: the control plane's REST API over PostgreSQL (or memory with `--dev`).
//!
//! Layers, from the outside in: `http` (routes, auth, errors) → `store` (one enum over Postgres
//! and memory) → the database. `fleet` derives each agent's fleet state as a pure function;
//! `watch` wakes long-polls when a manifest changes on this or any other replica.
//!
//! Invariant: only the manager talks to Postgres; agents, the CLI and dashboards use the API.

pub mod config;
pub mod contact;
pub mod fleet;
pub mod http;
pub mod metrics;
pub mod redact;
pub mod rollout;
pub mod server;
pub mod store;
pub mod token;
pub mod watch;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use config::{Config, ConfigError, StoreChoice};
use store::postgres::{ConnectError, listen_for_manifest_changes};
use store::{MemoryStore, PgStore, Store};
use watch::ManifestWatch;

/// How long in-flight requests may take to finish once shutdown begins.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often agents' contact (watch polls, heartbeats) is written to the store.
pub const CONTACT_WRITE_PERIOD: Duration = Duration::from_secs(1);

/// Why the manager stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot write the port file {path}: {source}")]
    PortFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] server::TlsError),
}

/// Opens the configured store, applying migrations to Postgres.
pub async fn open_store(config: &Config, watch: &ManifestWatch) -> Result<Store, RunError> {
    match config.store_choice()? {
        StoreChoice::Postgres { url } => Ok(Store::Postgres(
            PgStore::connect(&url, watch.clone()).await?,
        )),
        StoreChoice::Memory => {
            if config.database_url.is_some() {
                tracing::warn!("--dev is set, so DATABASE_URL is ignored");
            }
            tracing::warn!(
                "DEV MODE: {}; never use --dev for a real fleet",
                store::memory::MEMORY_WARNING
            );
            Ok(Store::Memory(MemoryStore::new(watch.clone())))
        }
    }
}

/// Runs the manager until `shutdown` resolves, then drains in-flight requests.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    // The store choice is checked first: a missing DATABASE_URL is the most basic mistake.
    config.store_choice()?;
    let roles = config.role_tokens()?;
    // A bad certificate or key stops the start: falling back to plain HTTP would be a silent
    // downgrade.
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(server::tls_acceptor(cert, key)?),
        _ => None,
    };
    if roles.bootstrap.is_some() {
        tracing::info!("a bootstrap token is configured: devices may enroll themselves");
    }
    let watch = ManifestWatch::default();
    let store = open_store(&config, &watch).await?;
    let (stop_sender, stop) = tokio::sync::watch::channel(false);
    if let Store::Postgres(pg) = &store {
        tokio::spawn(listen_for_manifest_changes(
            pg.pool().clone(),
            watch.clone(),
            stop.clone(),
        ));
    }
    // The rollout controller runs on every replica; leases in PostgreSQL decide who steps which
    // fleet (docs/fleets.md). The memory store has no fleets and the controller returns at once.
    tokio::spawn(rollout::controller::run(
        store.clone(),
        config.report_interval,
        stop.clone(),
    ));
    let contacts = contact::Contacts::default();
    tokio::spawn(contact::write_contacts(
        contacts.clone(),
        store.clone(),
        CONTACT_WRITE_PERIOD,
        stop.clone(),
    ));
    let state = http::AppState::new(http::Shared {
        contacts,
        store,
        watch,
        roles: http::RoleHashes::from(&roles),
        report_interval: config.report_interval,
        long_polls: http::LongPolls::default(),
        max_wait_seconds: config.max_wait_seconds,
    });
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| RunError::Bind {
            addr: config.listen,
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| RunError::Bind {
        addr: config.listen,
        source,
    })?;
    if let Some(path) = &config.port_file {
        write_port_file(path, bound).map_err(|source| RunError::PortFile {
            path: path.clone(),
            source,
        })?;
    }
    // Tests and scripts parse this line to learn the port when listening on port 0.
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!("listening on {bound} ({scheme})");

    let mut drained = stop.clone();
    let closing = state.watch.clone();
    let serve = server::serve(listener, http::router(state), tls, async move {
        shutdown.await;
        tracing::info!("shutting down: finishing in-flight requests");
        let _ = stop_sender.send(true);
        // Long-polls see this and answer at once.
        closing.close();
    });
    tokio::select! {
        () = serve => {}
        () = async {
            // Only once shutdown has begun does the drain timeout start counting.
            let _ = drained.wait_for(|stopping| *stopping).await;
            tokio::time::sleep(DRAIN_TIMEOUT).await;
        } => {
            tracing::warn!("in-flight requests did not finish within {DRAIN_TIMEOUT:?}; stopping anyway");
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Writes the bound address atomically, so a reader never sees a half-written file.
fn write_port_file(path: &std::path::Path, addr: SocketAddr) -> std::io::Result<()> {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, format!("{addr}\n"))?;
    std::fs::rename(&temporary, path)
}
