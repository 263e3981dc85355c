//! Fleets (docs/fleets.md): storing a revision, reading fleets with their rollouts, their
//! devices, revisions and events, deleting one, and the operator actions on a rollout.

use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use fleetlet_manifests::api::{ErrorKind, Event, Page};
use fleetlet_manifests::fleet::{Fleet, FleetName};
use fleetlet_manifests::fleet_api::{
    DeviceRolloutState, FleetDeviceView, FleetRevisionView, FleetView, PutFleetResponse,
    RolloutAction,
};
use fleetlet_manifests::{AgentId, Violation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::AppState;
use super::cursor;
use super::error::HttpError;
use super::extract::{Caller, JsonBody, QueryParams};
use super::nul::refuse_nul;
use super::status::EventParams;
use crate::rollout::selection::reselect;
use crate::rollout::state::{RolloutState, supersede};
use crate::rollout::view::fleet_view;
use crate::store::StoreError;
use crate::store::fleets::{NewFleetRevision, RolloutWrite};
use crate::store::postgres::PgStore;

const DEFAULT_LIMIT: usize = 100;
/// A larger `limit` is clamped to this (devices: like the agent list).
pub const MAX_FLEET_PAGE: usize = 1000;
/// Revisions carry a whole fleet each.
const MAX_REVISIONS_PAGE: usize = 100;

/// The `{name}` of the path, validated: no fleet exists under an invalid name.
#[derive(Debug)]
pub struct FleetPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for FleetPath {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(params) = Path::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|_| HttpError::bad_request("the path must name one fleet"))?;
        let raw = params
            .into_iter()
            .find(|(key, _)| key == "name")
            .map(|(_, value)| value)
            .ok_or_else(|| HttpError::bad_request("the path must name one fleet"))?;
        FleetName::try_from(raw.clone())
            .map(|name| FleetPath(name.to_string()))
            .map_err(|_| HttpError::not_found(format!("fleet {raw:?} not found")))
    }
}

fn hash<T: Serialize>(value: &T) -> String {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    format!("sha256:{}", hex::encode(Sha256::digest(&bytes)))
}

fn not_found(name: &str) -> HttpError {
    HttpError::from(StoreError::FleetNotFound(name.to_owned()))
}

/// `PUT /api/v1/fleets/{name}`: stores the fleet as its next revision, unless identical.
pub async fn put(
    State(state): State<AppState>,
    caller: Caller,
    FleetPath(name): FleetPath,
    JsonBody(body): JsonBody,
) -> Result<Json<PutFleetResponse>, HttpError> {
    caller.require_admin()?;
    refuse_nul(&body, "invalid fleet")?;
    let fleet = Fleet::from_value(body)
        .map_err(|violations| HttpError::invalid("invalid fleet", violations))?;
    if fleet.name.as_str() != name {
        return Err(HttpError::invalid(
            "invalid fleet",
            vec![Violation {
                path: "name".into(),
                message: format!("must be {name}, the fleet of the path"),
            }],
        ));
    }
    let store = state.store.fleets()?;
    let spec = serde_json::to_value(&fleet).map_err(|_| HttpError::internal())?;
    let new = NewFleetRevision {
        name: name.clone(),
        content_hash: hash(&spec),
        template_hash: hash(&(&fleet.template, &fleet.parameters, &fleet.signature)),
        spec,
        created_by: "admin".to_owned(),
    };
    let now = OffsetDateTime::now_utc();
    let outcome = store.put_fleet(new, supersede, now).await?;
    if outcome.created {
        crate::metrics::count_fleet_event(fleetlet_manifests::api::EventType::FleetRevisionCreated);
        tracing::info!(fleet = %name, revision = outcome.revision, rollout = outcome.rollout, "fleet revision stored");
        // Selection and the rollout are the controller's, under its leases: this replica's
        // controller steps at once rather than at its next tick; the request waits for neither.
        crate::rollout::controller::nudge();
    }
    Ok(Json(PutFleetResponse {
        name,
        revision: outcome.revision,
        created: outcome.created,
        rollout: outcome.rollout,
    }))
}

/// `GET /api/v1/fleets/{name}`.
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    FleetPath(name): FleetPath,
) -> Result<Json<FleetView>, HttpError> {
    caller.require_reader()?;
    let store = readable(&state, &name)?;
    let stored = store
        .get_fleet(&name)
        .await?
        .ok_or_else(|| not_found(&name))?;
    Ok(Json(fleet_view(store, stored).await?))
}

/// The PostgreSQL store for a read of the named fleet; the memory store has none (404).
fn readable<'a>(state: &'a AppState, name: &str) -> Result<&'a PgStore, HttpError> {
    state.store.fleets().map_err(|_| not_found(name))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageParams {
    limit: Option<usize>,
    cursor: Option<String>,
}

fn limit(params: &PageParams, max: usize) -> usize {
    params.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, max)
}

/// `GET /api/v1/fleets`: every fleet with its rollout, by name, cursor-paged.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(params): QueryParams<PageParams>,
) -> Result<Json<Page<FleetView>>, HttpError> {
    caller.require_reader()?;
    let limit = limit(&params, MAX_REVISIONS_PAGE);
    let after = params
        .cursor
        .as_deref()
        .map(|c| cursor::decode("f", c))
        .transpose()?;
    let Ok(store) = state.store.fleets() else {
        return Ok(Json(Page {
            items: Vec::new(),
            next_cursor: None,
        }));
    };
    let mut stored = store.list_fleets(after.as_deref(), limit + 1).await?;
    let next_cursor = cursor::page(&mut stored, limit, |f| cursor::encode("f", &f.name));
    let mut items = Vec::with_capacity(stored.len());
    for fleet in stored {
        items.push(fleet_view(store, fleet).await?);
    }
    Ok(Json(Page { items, next_cursor }))
}

/// `DELETE /api/v1/fleets/{name}`: stops managing; every device keeps its manifest.
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    FleetPath(name): FleetPath,
) -> Result<StatusCode, HttpError> {
    caller.require_admin()?;
    let store = state.store.fleets()?;
    if !store.delete_fleet(&name).await? {
        return Err(not_found(&name));
    }
    tracing::info!(fleet = %name, "fleet deleted; its devices keep their manifests");
    // Devices it shared with another fleet may now belong to that one.
    reselect(store, None, OffsetDateTime::now_utc()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/fleets/{name}/devices`: the selected devices by agent id, cursor-paged.
pub async fn devices(
    State(state): State<AppState>,
    caller: Caller,
    FleetPath(name): FleetPath,
    QueryParams(params): QueryParams<PageParams>,
) -> Result<Json<Page<FleetDeviceView>>, HttpError> {
    caller.require_reader()?;
    let limit = limit(&params, MAX_FLEET_PAGE);
    let after = params
        .cursor
        .as_deref()
        .map(|c| {
            let id = cursor::decode("d", c)?;
            AgentId::try_from(id.as_str()).map_err(|_| HttpError::bad_request("invalid cursor"))
        })
        .transpose()?;
    let store = readable(&state, &name)?;
    if store.get_fleet(&name).await?.is_none() {
        return Err(not_found(&name));
    }
    let mut rows = store
        .fleet_device_page(&name, after.as_ref(), limit + 1)
        .await?;
    let next_cursor = cursor::page(&mut rows, limit, |r| {
        cursor::encode("d", r.agent_id.as_str())
    });
    let conflicted: Vec<AgentId> = rows
        .iter()
        .filter(|r| r.state == DeviceRolloutState::Conflict.as_str())
        .map(|r| r.agent_id.clone())
        .collect();
    let mut others = if conflicted.is_empty() {
        Default::default()
    } else {
        store.fleets_of(&conflicted).await?
    };
    let items = rows
        .into_iter()
        .map(|row| FleetDeviceView {
            conflicting_fleets: others.remove(&row.agent_id).unwrap_or_default(),
            state: DeviceRolloutState::parse(&row.state).unwrap_or(DeviceRolloutState::Pending),
            agent_id: row.agent_id,
            revision_rendered: row.revision_rendered,
            generation: row.generation,
            batch: row.batch,
            detail: row.detail,
            updated_at: row.updated_at,
        })
        .collect();
    Ok(Json(Page { items, next_cursor }))
}

/// `GET /api/v1/fleets/{name}/revisions`: every revision, newest first, cursor-paged.
pub async fn revisions(
    State(state): State<AppState>,
    caller: Caller,
    FleetPath(name): FleetPath,
    QueryParams(params): QueryParams<PageParams>,
) -> Result<Json<Page<FleetRevisionView>>, HttpError> {
    caller.require_reader()?;
    let limit = limit(&params, MAX_REVISIONS_PAGE);
    let before = params
        .cursor
        .as_deref()
        .map(|c| {
            cursor::decode("r", c)?
                .parse::<u64>()
                .map_err(|_| HttpError::bad_request("invalid cursor"))
        })
        .transpose()?
        .map(|before| before.min(i64::MAX as u64));
    let store = readable(&state, &name)?;
    if store.get_fleet(&name).await?.is_none() {
        return Err(not_found(&name));
    }
    let mut stored = store.fleet_revisions(&name, before, limit + 1).await?;
    let next_cursor = cursor::page(&mut stored, limit, |r| {
        cursor::encode("r", &r.revision.to_string())
    });
    let items = stored
        .into_iter()
        .map(|r| FleetRevisionView {
            revision: r.revision,
            content_revision: r.content_revision,
            content_hash: r.content_hash,
            created_at: r.created_at,
            created_by: r.created_by,
            fleet: r.spec,
        })
        .collect();
    Ok(Json(Page { items, next_cursor }))
}

/// `GET /api/v1/fleets/{name}/events`: the fleet's event log, oldest first, after `afterSeq`.
pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    FleetPath(name): FleetPath,
    QueryParams(params): QueryParams<EventParams>,
) -> Result<Json<Page<Event>>, HttpError> {
    caller.require_reader()?;
    let limit = params.limit();
    let store = readable(&state, &name)?;
    if store.get_fleet(&name).await?.is_none() {
        return Err(not_found(&name));
    }
    let mut items = store
        .fleet_events(&name, params.after_seq(), limit + 1)
        .await?;
    let next_cursor = cursor::page(&mut items, limit, |e| e.seq.to_string());
    Ok(Json(Page { items, next_cursor }))
}

/// How often an action retries its compare-and-set when the controller wrote in between.
const ACTION_ATTEMPTS: usize = 5;

/// `POST /api/v1/fleets/{name}/rollout/{action}`: 409 when the action does not apply.
pub async fn action(
    State(state): State<AppState>,
    caller: Caller,
    Path((raw_name, raw_action)): Path<(String, String)>,
) -> Result<Json<FleetView>, HttpError> {
    caller.require_admin()?;
    let name = FleetName::try_from(raw_name.clone())
        .map(|n| n.to_string())
        .map_err(|_| not_found(&raw_name))?;
    let action = RolloutAction::parse(&raw_action).ok_or_else(|| {
        HttpError::not_found(format!(
            "no rollout action {raw_action:?}: pause, resume, approve, abort or rollback"
        ))
    })?;
    let store = state.store.fleets()?;
    for _ in 0..ACTION_ATTEMPTS {
        let stored = store
            .get_fleet(&name)
            .await?
            .ok_or_else(|| not_found(&name))?;
        let current: RolloutState = serde_json::from_value(stored.rollout.clone())
            .map_err(|e| StoreError::Internal(format!("rollout state of {name}: {e}")))?;
        let (next, events) = current
            .act(action)
            .map_err(|refused| HttpError::new(ErrorKind::Conflict, refused.to_string()))?;
        let value = serde_json::to_value(&next).map_err(|_| HttpError::internal())?;
        let types: Vec<_> = events.iter().map(|e| e.type_).collect();
        let write = RolloutWrite {
            version: stored.rollout_version,
            state: &value,
            phase: next.phase.as_str(),
            devices: &[],
            events,
            holder: None,
        };
        if store
            .set_rollout(&name, write, OffsetDateTime::now_utc())
            .await?
        {
            types
                .into_iter()
                .for_each(crate::metrics::count_fleet_event);
            tracing::info!(fleet = %name, action = action.as_str(), "rollout action");
            let stored = store
                .get_fleet(&name)
                .await?
                .ok_or_else(|| not_found(&name))?;
            return Ok(Json(fleet_view(store, stored).await?));
        }
    }
    Err(HttpError::new(
        ErrorKind::Conflict,
        "the rollout kept changing while the action was applied; retry",
    ))
}
