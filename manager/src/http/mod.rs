//! The REST API of docs/reference.md §3: routes, shared state and the layers every request passes.

mod agents;
mod cursor;
mod dashboard;
pub mod error;
mod extract;
mod fleets;
mod health;
mod heartbeat;
pub mod limits;
mod manifests;
mod nul;
pub mod openapi;
mod scrape;
mod status;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use fleetlet_manifests::api::ErrorKind;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::config::RoleTokens;
use crate::store::Store;
use crate::token::{TokenHash, hash_token};
use crate::watch::ManifestWatch;
pub use agents::MAX_FLEET_LIMIT;
use error::HttpError;
pub use limits::LongPolls;
pub use manifests::MAX_HISTORY_LIMIT;
pub use status::MAX_EVENTS_LIMIT;

/// No request body may exceed this. A manifest carries at most 4 MiB of decoded file content,
/// which base64 and JSON inflate by about a third, so 8 MiB leaves room without being unbounded.
pub const BODY_LIMIT_BYTES: usize = 8 * 1024 * 1024;

/// The longest a manifest long-poll may wait; an operator may set a lower bound with
/// `FLEETLET_MAX_WAIT_SECONDS`, e.g. behind a proxy with a shorter idle timeout. The first contract said
/// 60 s; five minutes lets an idle agent on a metered link poll far less often (BENCHMARKS.md,
/// target 5), and agents fall back to a short wait when a manager refuses theirs.
pub const MAX_WAIT_SECONDS: u64 = 300;

/// The hashes of the configured role tokens; the tokens themselves are not kept.
#[derive(Debug, Clone, Copy)]
pub struct RoleHashes {
    pub admin: TokenHash,
    pub reader: Option<TokenHash>,
    /// Enables `POST /api/v1/enroll` when set.
    pub bootstrap: Option<TokenHash>,
}

impl From<&RoleTokens> for RoleHashes {
    fn from(tokens: &RoleTokens) -> Self {
        Self {
            admin: hash_token(&tokens.admin),
            reader: tokens.reader.as_deref().map(hash_token),
            bootstrap: tokens.bootstrap.as_deref().map(hash_token),
        }
    }
}

/// What every handler shares, behind one `Arc`. axum clones the state for every request, every
/// layer and every `State` extractor, and a held long-poll keeps its copies for minutes: a clone
/// is one pointer instead of every field (and the store's strings) copied.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The fields of [`AppState`].
#[derive(Debug)]
pub struct Shared {
    pub store: Store,
    /// Wakes long-polls on a manifest change, and all of them at once when the manager shuts
    /// down ([`ManifestWatch::close`]), so that none holds the drain.
    pub watch: ManifestWatch,
    pub roles: RoleHashes,
    pub report_interval: Duration,
    /// Open long-polls per caller and agent, bounded by [`limits::MAX_LONG_POLLS_PER_CALLER`].
    pub long_polls: LongPolls,
    /// The largest `waitSeconds` accepted, at most [`MAX_WAIT_SECONDS`].
    pub max_wait_seconds: u64,
    /// Agents' watch polls and heartbeats, written to the store in batches.
    pub contacts: crate::contact::Contacts,
}

/// The route an agent long-polls its manifest on (`GET`, with `waitSeconds`); the request guard
/// tells long-polls from other requests by it.
pub(crate) const MANIFEST_ROUTE: &str = "/api/v1/agents/{agent_id}/manifest";

/// The path of an API route: every route of docs/reference.md §3 lives under `/api/v1`.
fn api(path: &str) -> String {
    format!("/api/v1{path}")
}

/// The API router with its layers: request tracing, request metrics, header limit and deadline,
/// panic catcher, body limit.
///
/// The routes are registered with their full paths rather than nested under `/api/v1`, and the
/// layers are composed into one and added with a single `layer` call: axum wraps a route's
/// service in another boxed, cloned service at every nesting and every `layer` call, and each of
/// those costs every request a boxed future. An agent's long-poll holds its request for minutes,
/// so that cost is paid per agent (BENCHMARKS.md, target 6).
pub fn router(state: AppState) -> Router {
    let metrics = crate::metrics::Metrics::default();
    let layers = ServiceBuilder::new()
        // The default span names method and path only: headers, which carry tokens, stay out.
        .layer(TraceLayer::new_for_http())
        .layer(axum::Extension(metrics.clone()))
        // Outside the panic catcher, so that a panic is counted as the 500 it became.
        .layer(limits::GuardLayer::new(metrics))
        .layer(CatchPanicLayer::custom(
            |_panic: Box<dyn std::any::Any + Send>| {
                // The panic message may hold anything, so it is neither logged in full nor shown.
                tracing::error!("a request handler panicked");
                HttpError::internal().into_response()
            },
        ))
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES));
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(scrape::metrics_handler))
        .route(&api("/enroll"), post(agents::enroll))
        .route(&api("/agents"), post(agents::register).get(agents::list))
        .route(
            &api("/agents/{agent_id}"),
            delete(agents::decommission).patch(agents::patch),
        )
        .route(
            &api("/fleets/{name}"),
            get(fleets::get).put(fleets::put).delete(fleets::delete),
        )
        .route(&api("/fleets"), get(fleets::list))
        .route(&api("/fleets/{name}/devices"), get(fleets::devices))
        .route(&api("/fleets/{name}/revisions"), get(fleets::revisions))
        .route(&api("/fleets/{name}/events"), get(fleets::events))
        .route(
            &api("/fleets/{name}/rollout/{action}"),
            post(fleets::action),
        )
        .route(&api("/agents/{agent_id}/token"), post(agents::rotate_token))
        .route(MANIFEST_ROUTE, get(manifests::get).put(manifests::put))
        .route(
            &api("/agents/{agent_id}/manifests"),
            get(manifests::history),
        )
        .route(
            &api("/agents/{agent_id}/status"),
            get(status::get).put(status::put),
        )
        .route(&api("/agents/{agent_id}/events"), get(status::events))
        .route(&api("/agents/{agent_id}/heartbeat"), post(heartbeat::post))
        .route(
            &api("/schema/manifest"),
            get(health::manifest_schema_handler),
        )
        .route(&api("/schema/status"), get(health::status_schema_handler))
        .route(
            &api("/openapi.json"),
            get(openapi::openapi_handler(state.max_wait_seconds)),
        )
        .merge(dashboard::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(layers)
        .with_state(state)
}

async fn not_found() -> HttpError {
    HttpError::not_found("no such endpoint")
}

async fn method_not_allowed() -> HttpError {
    HttpError::new(
        ErrorKind::MethodNotAllowed,
        "this endpoint does not support that method",
    )
}
