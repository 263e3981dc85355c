//! The manager client: the manifest long-poll watch and the status reports, with timeouts on
//! every call and backoff while the manager cannot be reached.
//!
//! Three tasks use it: [`watch_manifests`] feeds new generations to the engine,
//! [`deliver_reports`] drains the store's outbox, and [`send_heartbeats`] checks now and then that
//! the manager holds the agent's latest report. The first two say through one `watch` channel
//! whether the manager answers, which the engine turns into the `Offline` condition.
//!
//! After a failed call the agent waits out its backoff, but not longer than the link is down:
//! when the manager could not be reached, fresh TCP connects to its address every quarter to half
//! second end the wait once one succeeds after one failed, and a call still in flight on a link
//! that went down and came back is started anew ([`ManagerClient::wait_out`],
//! [`ManagerClient::link_back`], `link.rs`). A manager that answers with errors, or whose address
//! accepts connections all along, gets the whole backoff.
//!
//! An idle agent is cheap on the wire (BENCHMARKS.md, target 5): the long-poll doubles as the
//! sign of life, a status goes out only when it changed, and the heartbeat carries a number, not
//! the status.

use std::sync::Arc;
use std::time::Duration;

use fleetlet_manifests::api::{ErrorBody, Heartbeat, HeartbeatAck, ReportAck};
use fleetlet_manifests::{AgentId, AgentManifest, AgentStatus, ManifestError};
use reqwest::StatusCode;
use tokio::sync::{Notify, mpsc, watch};

use crate::backoff::Backoff;
use crate::config::Token;
use crate::engine::DesiredUpdate;
use crate::shutdown::ShutdownSignal;
use crate::status::Connectivity;
use crate::store::Store;

mod link;
pub use link::{LinkSeen, PROBE_PATIENCE};

/// How long a request other than a long-poll may take, end to end.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to the manager may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a kept-alive connection may sit unused in the pool before a request is sent on it:
/// less than the manager's 10 s (`HEADER_READ_TIMEOUT`, after which it closes an idle
/// connection), so that the agent never sends on a connection the manager closed while a
/// partition dropped its FIN; such a request would fail after the link is back.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait before asking again when the manager has no manifest for this agent yet.
const NO_MANIFEST_RETRY: Duration = Duration::from_secs(1);
/// The wait every manager accepts (older ones and those behind a proxy may cap it lower than
/// the agent's setting); used after a manager refuses the configured one.
pub const SAFE_WATCH_WAIT: Duration = Duration::from_secs(30);

/// Why a call to the manager failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("could not build the HTTP client: {0}")]
    Setup(String),
    #[error("manager at {url} is unreachable: {message}")]
    Unreachable { url: String, message: String },
    #[error("manager refused agent {agent_id}'s token (HTTP {status})")]
    Unauthorized { agent_id: AgentId, status: u16 },
    #[error("manager answered {url} with HTTP {status}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
    },
}

impl ClientError {
    /// Whether the failure means the manager is out of reach (as opposed to a refused request).
    fn connectivity(&self) -> Option<Connectivity> {
        match self {
            ClientError::Unreachable { message, .. } => Some(Connectivity::Offline {
                reason: "ManagerUnreachable".into(),
                message: message.clone(),
            }),
            ClientError::Unauthorized { status, .. } => Some(Connectivity::Offline {
                reason: "Unauthorized".into(),
                message: format!("the manager refused the agent's token (HTTP {status})"),
            }),
            ClientError::Status {
                status, message, ..
            } if *status >= 500 => Some(Connectivity::Offline {
                reason: "ManagerUnavailable".into(),
                message: format!("HTTP {status}: {message}"),
            }),
            ClientError::Status { .. } | ClientError::Setup(_) => None,
        }
    }
}

/// What one manifest request found.
#[derive(Debug, Clone, PartialEq)]
pub enum ManifestAnswer {
    /// A newer manifest than the one asked after.
    Changed(AgentManifest),
    /// Nothing newer within the wait.
    Unchanged,
    /// The manager has no manifest for this agent yet.
    NoManifest,
    /// The manager sent something that is not a valid manifest.
    Invalid(String),
}

/// The agent's HTTP client: a connect timeout here, a timeout on every request where it is sent.
/// With `ca_file`, only that CA is trusted: a fleet's private CA must not be bypassable by any
/// certificate a public CA issued for the manager's name.
pub fn http_client(ca_file: Option<&std::path::Path>) -> Result<reqwest::Client, ClientError> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .user_agent(concat!("fleetlet-agent/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| {
            ClientError::Setup(format!("cannot read the CA file {}: {e}", path.display()))
        })?;
        let certificate = reqwest::Certificate::from_pem(&pem).map_err(|e| {
            ClientError::Setup(format!(
                "the CA file {} is not a PEM certificate: {e}",
                path.display()
            ))
        })?;
        builder = builder
            .tls_built_in_root_certs(false)
            .add_root_certificate(certificate);
    }
    builder
        .build()
        .map_err(|e| ClientError::Setup(e.to_string()))
}

/// How [`ManagerClient::wait_out`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitEnd {
    Shutdown,
    /// The whole delay passed.
    BackoffOver,
    /// The link to the manager went down and came back: retry now, the backoff started over.
    LinkBack,
}

/// A client for one agent's endpoints.
#[derive(Debug, Clone)]
pub struct ManagerClient {
    http: reqwest::Client,
    base_url: String,
    agent_id: AgentId,
    token: Token,
}

impl ManagerClient {
    pub fn new(base_url: &str, agent_id: AgentId, token: Token) -> Result<Self, ClientError> {
        Ok(Self::with_http(
            http_client(None)?,
            base_url,
            agent_id,
            token,
        ))
    }

    /// A client over an already built HTTP client (see [`http_client`]).
    pub fn with_http(
        http: reqwest::Client,
        base_url: &str,
        agent_id: AgentId,
        token: Token,
    ) -> Self {
        Self {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            agent_id,
            token,
        }
    }

    /// The host and port the manager's URL names (the scheme's port when it names none).
    fn authority(&self) -> Option<(String, u16)> {
        let url = reqwest::Url::parse(&self.base_url).ok()?;
        // An IPv6 literal comes in brackets, which a socket address does not take.
        let host = url
            .host_str()?
            .trim_start_matches('[')
            .trim_end_matches(']');
        Some((host.to_owned(), url.port_or_known_default()?))
    }

    /// Waits out `delay` after `error`, or less: when the manager was out of reach (no
    /// connection, no answer), the wait ends as soon as the link is back ([`Self::link_back`]:
    /// a connect to its address succeeds after one failed, during this wait or the failed call
    /// before it). A manager that answered with an error gets the whole delay, and no connects.
    pub async fn wait_out(
        &self,
        delay: Duration,
        error: &ClientError,
        seen: &LinkSeen,
        shutdown: &ShutdownSignal,
    ) -> WaitEnd {
        let unreachable = matches!(error, ClientError::Unreachable { .. });
        tokio::select! {
            () = shutdown.triggered() => WaitEnd::Shutdown,
            () = tokio::time::sleep(delay) => WaitEnd::BackoffOver,
            () = self.link_back(seen), if unreachable => WaitEnd::LinkBack,
        }
    }

    fn url(&self, tail: &str) -> String {
        format!("{}/api/v1/agents/{}/{tail}", self.base_url, self.agent_id)
    }

    fn unreachable(&self, url: &str, error: &reqwest::Error) -> ClientError {
        // reqwest's message names the URL but never a header, so the token cannot leak here.
        let mut message = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            message = format!("{message}: {cause}");
            source = cause.source();
        }
        ClientError::Unreachable {
            url: url.to_owned(),
            message,
        }
    }

    async fn refused(&self, url: &str, response: reqwest::Response) -> ClientError {
        let status = response.status();
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return ClientError::Unauthorized {
                agent_id: self.agent_id.clone(),
                status: status.as_u16(),
            };
        }
        let message = match response.json::<ErrorBody>().await {
            Ok(body) => body.error.message,
            Err(_) => status.canonical_reason().unwrap_or("error").to_owned(),
        };
        ClientError::Status {
            url: url.to_owned(),
            status: status.as_u16(),
            message,
        }
    }

    /// Asks for the manifest. With `after_generation`, long-polls up to `wait` for a generation
    /// above it; without, answers at once with whatever the manager has.
    pub async fn fetch_manifest(
        &self,
        after_generation: Option<u64>,
        wait: Duration,
    ) -> Result<ManifestAnswer, ClientError> {
        let url = self.url("manifest");
        let mut request = self.http.get(&url).bearer_auth(self.token.expose());
        let timeout = match after_generation {
            Some(after) => {
                request = request.query(&[
                    ("afterGeneration", after.to_string()),
                    ("waitSeconds", wait.as_secs().to_string()),
                ]);
                wait + REQUEST_TIMEOUT
            }
            None => REQUEST_TIMEOUT,
        };
        let response = request
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| self.unreachable(&url, &e))?;
        match response.status() {
            StatusCode::NOT_MODIFIED => Ok(ManifestAnswer::Unchanged),
            StatusCode::NOT_FOUND => Ok(ManifestAnswer::NoManifest),
            StatusCode::OK => {
                let bytes = response
                    .bytes()
                    .await
                    .map_err(|e| self.unreachable(&url, &e))?;
                Ok(match AgentManifest::from_slice(&bytes) {
                    Ok(manifest) if manifest.generation.is_none() => {
                        ManifestAnswer::Invalid("the manifest has no generation".into())
                    }
                    Ok(manifest)
                        if after_generation
                            .is_some_and(|after| manifest.generation <= Some(after)) =>
                    {
                        ManifestAnswer::Unchanged
                    }
                    Ok(manifest) => ManifestAnswer::Changed(manifest),
                    Err(ManifestError::Malformed(message)) => ManifestAnswer::Invalid(message),
                    Err(ManifestError::Invalid(violations)) => ManifestAnswer::Invalid(
                        violations
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("; "),
                    ),
                })
            }
            _ => Err(self.refused(&url, response).await),
        }
    }

    /// Sends one status report.
    pub async fn report_status(&self, status: &AgentStatus) -> Result<ReportAck, ClientError> {
        self.exchange(
            reqwest::Method::PUT,
            "status",
            status,
            "a report acknowledgement",
        )
        .await
    }

    /// Sends a heartbeat naming the agent's latest report.
    pub async fn heartbeat(&self, report_seq: u64) -> Result<HeartbeatAck, ClientError> {
        self.exchange(
            reqwest::Method::POST,
            "heartbeat",
            &Heartbeat { report_seq },
            "a heartbeat acknowledgement",
        )
        .await
    }

    /// Sends `body` as JSON to one of the agent's endpoints and reads the 200 answer as `A`
    /// (`what` names it in the error when it is something else).
    async fn exchange<A: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        tail: &str,
        body: &impl serde::Serialize,
        what: &str,
    ) -> Result<A, ClientError> {
        let url = self.url(tail);
        let response = self
            .http
            .request(method, &url)
            .bearer_auth(self.token.expose())
            .json(body)
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|e| self.unreachable(&url, &e))?;
        if response.status() != StatusCode::OK {
            return Err(self.refused(&url, response).await);
        }
        response.json::<A>().await.map_err(|e| ClientError::Status {
            url: url.clone(),
            status: 200,
            message: format!("the answer is not {what}: {e}"),
        })
    }
}

/// Tells the engine whether the manager answers; only actual changes wake it.
fn set_connectivity(connectivity: &watch::Sender<Connectivity>, now: Connectivity) {
    connectivity.send_if_modified(|current| {
        if *current == now {
            false
        } else {
            *current = now;
            true
        }
    });
}

fn note_failure(connectivity: &watch::Sender<Connectivity>, error: &ClientError) {
    match error.connectivity() {
        Some(offline) => set_connectivity(connectivity, offline),
        None => set_connectivity(connectivity, Connectivity::Online),
    }
}

/// Waits for `delay`, returning early (with `true`) on shutdown.
async fn sleep_or_shutdown(delay: Duration, shutdown: &ShutdownSignal) -> bool {
    tokio::select! {
        () = shutdown.triggered() => true,
        () = tokio::time::sleep(delay) => false,
    }
}

/// Long-polls the manager for generations above `after_generation` and hands each new manifest
/// (or the reason one was refused) to the engine. Runs until shutdown.
pub async fn watch_manifests(
    client: ManagerClient,
    mut after_generation: u64,
    mut wait: Duration,
    updates: mpsc::Sender<DesiredUpdate>,
    connectivity: watch::Sender<Connectivity>,
    shutdown: ShutdownSignal,
) {
    let mut failures = 0u32;
    let seen = LinkSeen::new();
    loop {
        let answer = tokio::select! {
            () = shutdown.triggered() => return,
            answer = client.fetch_manifest(Some(after_generation), wait) => answer,
            // After a failure, a poll stuck on a link that has just come back is started anew.
            () = client.link_back(&seen), if failures > 0 => {
                failures = 0;
                continue;
            }
        };
        if !matches!(answer, Err(ClientError::Unreachable { .. })) {
            seen.answered();
        }
        let delay = match answer {
            Ok(answer) => {
                failures = 0;
                set_connectivity(&connectivity, Connectivity::Online);
                match answer {
                    ManifestAnswer::Changed(manifest) => {
                        after_generation = manifest.generation.unwrap_or(after_generation);
                        if updates
                            .send(DesiredUpdate::Manifest(manifest))
                            .await
                            .is_err()
                        {
                            return;
                        }
                        Duration::ZERO
                    }
                    ManifestAnswer::Unchanged => Duration::ZERO,
                    ManifestAnswer::NoManifest => NO_MANIFEST_RETRY,
                    ManifestAnswer::Invalid(why) => {
                        tracing::error!(%why, "the manager sent an invalid manifest; keeping the last accepted one");
                        if updates.send(DesiredUpdate::Rejected(why)).await.is_err() {
                            return;
                        }
                        Backoff::MANAGER.max
                    }
                }
            }
            Err(ClientError::Status {
                status: 400,
                message,
                ..
            }) if wait > SAFE_WATCH_WAIT => {
                // This manager caps the wait lower than the agent's setting: a long-poll that
                // waits less is still a long-poll, while insisting would never reach it.
                tracing::warn!(%message, wait = ?SAFE_WATCH_WAIT, "the manager refused the watch wait; using a shorter one");
                wait = SAFE_WATCH_WAIT;
                Duration::ZERO
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                let delay = Backoff::MANAGER.delay(failures);
                tracing::warn!(%error, retry_in = ?delay, "manifest watch failed");
                note_failure(&connectivity, &error);
                match client.wait_out(delay, &error, &seen, &shutdown).await {
                    WaitEnd::Shutdown => return,
                    WaitEnd::LinkBack => failures = 0,
                    WaitEnd::BackoffOver => {}
                }
                Duration::ZERO
            }
        };
        if !delay.is_zero() && sleep_or_shutdown(delay, &shutdown).await {
            return;
        }
    }
}

/// Sends the outbox's pending report whenever there is one, retrying with backoff while the
/// manager is unreachable. A newer report replaces an unsent one in the outbox, so the manager
/// gets the latest state when it is back. Runs until shutdown.
pub async fn deliver_reports(
    client: ManagerClient,
    store: Arc<dyn Store>,
    report_ready: Arc<Notify>,
    connectivity: watch::Sender<Connectivity>,
    shutdown: ShutdownSignal,
) {
    let mut failures = 0u32;
    let seen = LinkSeen::new();
    let mut online = connectivity.subscribe();
    loop {
        let pending = match store.pending_report() {
            Ok(pending) => pending,
            Err(error) => {
                tracing::error!(%error, "could not read the outbox");
                None
            }
        };
        let Some(report) = pending else {
            tokio::select! {
                () = shutdown.triggered() => return,
                () = report_ready.notified() => continue,
            }
        };
        // A report sent while the watch finds the manager out of reach may sit on a dead
        // connection (its bytes resent only when the kernel's backed-off timer fires, or sent to
        // a peer that has closed it): once the watch gets through again, it is sent anew.
        let offline = matches!(*online.borrow_and_update(), Connectivity::Offline { .. });
        let delivered = tokio::select! {
            delivered = deliver(&client, &*store, &report) => delivered,
            // After a failure, a report stuck on a link that has just come back is sent anew
            // (it is still in the outbox; the manager ignores a seq it already holds).
            () = client.link_back(&seen), if failures > 0 => {
                failures = 0;
                continue;
            }
            _ = online.wait_for(|c| *c == Connectivity::Online), if offline => {
                failures = 0;
                continue;
            }
        };
        if !matches!(delivered, Err(ClientError::Unreachable { .. })) {
            seen.answered();
        }
        match delivered {
            Ok(()) => {
                failures = 0;
                set_connectivity(&connectivity, Connectivity::Online);
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                let delay = Backoff::MANAGER.delay(failures);
                tracing::warn!(%error, retry_in = ?delay, report_seq = report.report_seq, "status report failed");
                note_failure(&connectivity, &error);
                if error.connectivity().is_none() {
                    // The manager understood and refused this report; sending it again would
                    // be refused again. The next status change makes a new one.
                    if let Err(error) = store.acknowledge_report(report.report_seq) {
                        tracing::error!(%error, "could not drop a refused report");
                    }
                    continue;
                }
                online.mark_unchanged();
                // Retry after the backoff, as soon as the link is back, or as soon as the watch
                // reaches the manager again.
                tokio::select! {
                    end = client.wait_out(delay, &error, &seen, &shutdown) => match end {
                        WaitEnd::Shutdown => return,
                        WaitEnd::LinkBack => failures = 0,
                        WaitEnd::BackoffOver => {}
                    },
                    _ = online.wait_for(|c| *c == Connectivity::Online) => {}
                }
            }
        }
    }
}

/// Sends one report and removes it from the outbox once the manager has it.
async fn deliver(
    client: &ManagerClient,
    store: &dyn Store,
    report: &AgentStatus,
) -> Result<(), ClientError> {
    let ack = client.report_status(report).await?;
    if !ack.accepted {
        // The manager holds a report with a seq at least as high: ours is stale, not lost.
        tracing::warn!(
            report_seq = report.report_seq,
            "the manager did not accept a stale report"
        );
    }
    if let Err(error) = store.acknowledge_report(report.report_seq) {
        tracing::error!(%error, "could not remove a delivered report from the outbox");
    }
    Ok(())
}

/// Every `interval`, tells the manager which report the agent made last. When the manager answers
/// that it does not hold that report, the stored status goes back into the outbox (with its own
/// seq, which the manager will accept as newer than what it has). Runs until shutdown.
pub async fn send_heartbeats(
    client: ManagerClient,
    store: Arc<dyn Store>,
    interval: Duration,
    report_ready: Arc<Notify>,
    shutdown: ShutdownSignal,
) {
    loop {
        if sleep_or_shutdown(interval, &shutdown).await {
            return;
        }
        let last_seq = match store.last_report_seq() {
            Ok(seq) => seq,
            Err(error) => {
                tracing::error!(%error, "could not read the last report seq");
                continue;
            }
        };
        match client.heartbeat(last_seq).await {
            Ok(ack) if ack.resend => {
                tracing::info!(report_seq = last_seq, manager_has = ?ack.report_seq, "the manager lacks the latest report; sending it again");
                resend_latest(&*store, &report_ready);
            }
            Ok(_) => tracing::debug!(report_seq = last_seq, "heartbeat acknowledged"),
            // The watch and the report delivery notice an unreachable manager and say so; a
            // failed heartbeat has nothing to add.
            Err(error) => tracing::debug!(%error, "heartbeat failed"),
        }
    }
}

fn resend_latest(store: &dyn Store, report_ready: &Notify) {
    match store.load_status() {
        Ok(Some(status)) => match store.enqueue_report(&status) {
            Ok(()) => report_ready.notify_one(),
            Err(error) => tracing::error!(%error, "could not queue the status again"),
        },
        Ok(None) => {}
        Err(error) => tracing::error!(%error, "could not read the stored status"),
    }
}

/// One last attempt to deliver the pending report, used at shutdown (bounded by `timeout`).
pub async fn deliver_pending_once(client: &ManagerClient, store: &dyn Store, timeout: Duration) {
    let Ok(Some(report)) = store.pending_report() else {
        return;
    };
    match tokio::time::timeout(timeout, deliver(client, store, &report)).await {
        Ok(Ok(())) => tracing::debug!(report_seq = report.report_seq, "final report delivered"),
        Ok(Err(error)) => tracing::warn!(%error, "final report not delivered"),
        Err(_) => tracing::warn!("final report not delivered in time"),
    }
}

#[cfg(test)]
mod tests;
