//! Manifests: storing a new generation, reading (and long-polling) the current one, history.

use axum::Json;
use axum::extract::State;
use axum::http::header::{ETAG, IF_MATCH};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use fleetlet_manifests::api::{ManifestRevision, Page};
use fleetlet_manifests::{AgentId, AgentManifest, Violation};
use serde::Deserialize;
use time::OffsetDateTime;

use super::AppState;
use super::cursor;
use super::error::HttpError;
use super::extract::{AgentPath, Caller, JsonBody, QueryParams};
use super::nul::refuse_nul;
use crate::store::{NewManifest, StoredManifest};

const DEFAULT_HISTORY_LIMIT: usize = 20;
/// A larger `limit` is clamped to this: each revision carries a whole manifest.
pub const MAX_HISTORY_LIMIT: usize = 100;

/// `PUT /api/v1/agents/{agentId}/manifest`: stores the manifest as the next generation, or
/// answers the current one when the resources did not change.
pub async fn put(
    State(state): State<AppState>,
    caller: Caller,
    AgentPath(agent_id): AgentPath,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, HttpError> {
    caller.require_admin()?;
    let if_generation = parse_if_match(headers.get(IF_MATCH))?;
    refuse_nul(&body, "invalid manifest")?;
    let manifest = AgentManifest::from_value(body)
        .map_err(|violations| HttpError::invalid("invalid manifest", violations))?;
    if manifest.agent_id != agent_id {
        return Err(HttpError::invalid(
            "invalid manifest",
            vec![Violation {
                path: "agentId".into(),
                message: format!("must be {agent_id}, the agent of the path"),
            }],
        ));
    }
    let outcome = state
        .store
        .put_manifest(
            &agent_id,
            NewManifest::new(manifest, "admin", if_generation),
            OffsetDateTime::now_utc(),
        )
        .await?;
    if outcome.created {
        tracing::info!(%agent_id, generation = outcome.manifest.generation, "manifest stored");
    }
    Ok(manifest_response(&agent_id, outcome.manifest))
}

/// `If-Match: "3"` (or a bare `3`); `*` means no precondition.
fn parse_if_match(value: Option<&HeaderValue>) -> Result<Option<u64>, HttpError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let bad = || HttpError::bad_request("If-Match must be a generation in quotes, like \"3\"");
    let text = value.to_str().map_err(|_| bad())?.trim();
    if text == "*" {
        return Ok(None);
    }
    let unquoted = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    unquoted.parse().map(Some).map_err(|_| bad())
}

fn etag(generation: u64) -> HeaderValue {
    // Digits and quotes are always a valid header value.
    HeaderValue::from_str(&format!("\"{generation}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

fn manifest_response(agent_id: &AgentId, stored: StoredManifest) -> Response {
    let generation = stored.generation;
    let manifest = stored.into_manifest(agent_id.clone());
    ([(ETAG, etag(generation))], Json(manifest)).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GetParams {
    after_generation: Option<u64>,
    wait_seconds: Option<u64>,
}

/// `GET /api/v1/agents/{agentId}/manifest`, optionally a long-poll for a newer generation.
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    AgentPath(agent_id): AgentPath,
    QueryParams(params): QueryParams<GetParams>,
) -> Result<Response, HttpError> {
    caller.require_reader_or_agent(&agent_id)?;
    let wait = params.wait_seconds.unwrap_or(0);
    // The agent's own watch is its sign of life: an idle agent sends no reports at all. Noted in
    // memory and written in batches (`contact.rs`), so a poll costs no write of its own.
    if matches!(&caller, Caller::Agent(_)) {
        state.contacts.note(&agent_id, OffsetDateTime::now_utc());
    }
    if wait > state.max_wait_seconds {
        return Err(HttpError::bad_request(format!(
            "waitSeconds must be at most {}",
            state.max_wait_seconds
        )));
    }
    let Some(after) = params.after_generation else {
        if params.wait_seconds.is_some() {
            return Err(HttpError::bad_request("waitSeconds needs afterGeneration"));
        }
        let stored = state
            .store
            .current_manifest(&agent_id)
            .await?
            .ok_or_else(|| HttpError::not_found(format!("agent {agent_id} has no manifest yet")))?;
        return Ok(manifest_response(&agent_id, stored));
    };

    // Only a poll that waits holds a slot; a plain read is as cheap as any other request.
    let _slot = if wait > 0 {
        Some(state.long_polls.acquire(&caller, &agent_id)?)
    } else {
        None
    };
    let wake = state.watch.subscribe(agent_id.as_str());
    let mut timeout = std::pin::pin!(tokio::time::sleep(std::time::Duration::from_secs(wait)));
    loop {
        // Registered before the read, so a write landing between the read and the wait still
        // wakes this poll.
        let mut woken = std::pin::pin!(wake.notified());
        woken.as_mut().enable();
        let generation = state.store.current_generation(&agent_id).await?;
        if generation > after
            && let Some(stored) = state.store.current_manifest(&agent_id).await?
        {
            return Ok(manifest_response(&agent_id, stored));
        }
        if state.watch.is_closing() {
            return Ok(not_modified(generation));
        }
        tokio::select! {
            () = woken => {}
            () = timeout.as_mut() => return Ok(not_modified(generation)),
        }
    }
}

fn not_modified(generation: u64) -> Response {
    (StatusCode::NOT_MODIFIED, [(ETAG, etag(generation))]).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryParams {
    limit: Option<usize>,
    cursor: Option<String>,
}

/// `GET /api/v1/agents/{agentId}/manifests`: every generation, newest first, cursor-paged.
pub async fn history(
    State(state): State<AppState>,
    caller: Caller,
    AgentPath(agent_id): AgentPath,
    QueryParams(params): QueryParams<HistoryParams>,
) -> Result<Json<Page<ManifestRevision>>, HttpError> {
    caller.require_reader()?;
    let limit = params
        .limit
        .unwrap_or(DEFAULT_HISTORY_LIMIT)
        .clamp(1, MAX_HISTORY_LIMIT);
    let before = params
        .cursor
        .as_deref()
        .map(|c| {
            cursor::decode("g", c)?
                .parse::<u64>()
                .map_err(|_| HttpError::bad_request("invalid cursor"))
        })
        .transpose()?
        // Generations are bigints; a forged cursor above that range pages from the newest.
        .map(|before| before.min(i64::MAX as u64));
    let mut stored = state
        .store
        .manifest_history(&agent_id, before, limit + 1)
        .await?;
    let next_cursor = cursor::page(&mut stored, limit, |m| {
        cursor::encode("g", &m.generation.to_string())
    });
    let items = stored
        .into_iter()
        .map(|m| ManifestRevision {
            generation: m.generation,
            content_hash: m.content_hash,
            created_at: m.created_at,
            created_by: m.created_by,
            resources: m.resources,
            rollout: m.rollout,
        })
        .collect();
    Ok(Json(Page { items, next_cursor }))
}
