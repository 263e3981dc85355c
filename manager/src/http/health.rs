//! Liveness, readiness and the JSON Schemas of the wire types.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use fleetlet_manifests::api::Readiness;
use fleetlet_manifests::schema::{manifest_schema, status_schema};

use super::AppState;

/// `GET /healthz`: the process serves requests. Says nothing about the database on purpose, so
/// an orchestrator does not restart managers because Postgres is down.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// `GET /readyz`: 200 when the store is reachable and fully migrated, else 503.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let store = state.store.readiness().await;
    let ready = store.reachable && store.migration_ready;
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(Readiness { ready, store }))
}

/// `GET /api/v1/schema/manifest`.
pub async fn manifest_schema_handler() -> Json<serde_json::Value> {
    Json(manifest_schema().to_value())
}

/// `GET /api/v1/schema/status`.
pub async fn status_schema_handler() -> Json<serde_json::Value> {
    Json(status_schema().to_value())
}
