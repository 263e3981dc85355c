//! Registration, token rotation, decommissioning and the fleet list.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use fleetlet_manifests::api::{AgentSummary, AgentToken, FleetState, Page, RegisterAgent};
use fleetlet_manifests::fleet_api::{AgentLabels, LabelPatch};
use fleetlet_manifests::{AgentId, Violation};
use serde::Deserialize;
use time::OffsetDateTime;

use super::AppState;
use super::cursor;
use super::error::HttpError;
use super::extract::{AgentPath, Bootstrap, Caller, JsonBody, QueryParams, decode};
use crate::fleet::summarize;
use crate::store::FleetQuery;
use crate::token::{hash_token, mint_agent_token};

const MAX_LABELS: usize = 64;
const MAX_LABEL_KEY_CHARS: usize = 128;
const MAX_LABEL_VALUE_CHARS: usize = 256;
const DEFAULT_FLEET_LIMIT: usize = 100;
/// A larger `limit` is clamped to this: pages of 1,000 read a fleet of 10,000 in ten requests of
/// a few milliseconds each (BENCHMARKS.md, target 6).
pub const MAX_FLEET_LIMIT: usize = 1000;

/// `POST /api/v1/agents`: registers an agent and answers its token, this once.
pub async fn register(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<AgentToken>), HttpError> {
    caller.require_admin()?;
    let request = decode_registration(body, "registration")?;
    let token = mint_agent_token();
    state
        .store
        .register_agent(
            &request.agent_id,
            &request.labels,
            hash_token(&token),
            OffsetDateTime::now_utc(),
        )
        .await?;
    tracing::info!(agent_id = %request.agent_id, "agent registered");
    Ok(token_issued(request.agent_id, token))
}

/// Reads a registration or enrollment body: a typed `RegisterAgent` with valid labels.
fn decode_registration(body: serde_json::Value, what: &str) -> Result<RegisterAgent, HttpError> {
    let request: RegisterAgent = decode(body, what)?;
    let violations = label_violations(&request.labels);
    if !violations.is_empty() {
        return Err(HttpError::invalid("invalid labels", violations));
    }
    Ok(request)
}

/// The answer that shows a newly minted agent token, this once.
fn token_issued(agent_id: AgentId, token: String) -> (StatusCode, Json<AgentToken>) {
    (StatusCode::CREATED, Json(AgentToken { agent_id, token }))
}

/// `POST /api/v1/enroll`: a device registers itself with the fleet's bootstrap token and gets
/// its own agent token, this once. An id the manager already knows, even a decommissioned one,
/// is a 409: the bootstrap token must not let one device take over another's identity.
pub async fn enroll(
    State(state): State<AppState>,
    _bootstrap: Bootstrap,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<AgentToken>), HttpError> {
    let request = decode_registration(body, "enrollment")?;
    let token = mint_agent_token();
    state
        .store
        .enroll_agent(
            &request.agent_id,
            &request.labels,
            hash_token(&token),
            OffsetDateTime::now_utc(),
        )
        .await?;
    tracing::info!(agent_id = %request.agent_id, "agent enrolled itself");
    Ok(token_issued(request.agent_id, token))
}

/// Labels are filtered on as `key=value,key=value`, so keys and values may not hold the
/// separators, and both are bounded like every other input.
fn label_violations(labels: &BTreeMap<String, String>) -> Vec<Violation> {
    let mut violations = Vec::new();
    if labels.len() > MAX_LABELS {
        violations.push(Violation {
            path: "labels".into(),
            message: format!("at most {MAX_LABELS} labels are allowed"),
        });
    }
    for (key, value) in labels {
        let key_ok = !key.is_empty()
            && key.chars().count() <= MAX_LABEL_KEY_CHARS
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
        if !key_ok {
            violations.push(Violation {
                path: format!("labels.{key}"),
                message: format!(
                    "a label key must be 1-{MAX_LABEL_KEY_CHARS} characters of [A-Za-z0-9._/-]"
                ),
            });
        }
        let value_ok = value.chars().count() <= MAX_LABEL_VALUE_CHARS
            && !value.chars().any(|c| c == ',' || c.is_control());
        if !value_ok {
            violations.push(Violation {
                path: format!("labels.{key}"),
                message: format!(
                    "a label value must be at most {MAX_LABEL_VALUE_CHARS} characters, without commas or control characters"
                ),
            });
        }
    }
    violations
}

/// `PATCH /api/v1/agents/{agentId}`: a JSON merge patch of the agent's labels (`null` removes
/// one); fleet selection follows at once, so the answer names the fleet that owns it now.
pub async fn patch(
    State(state): State<AppState>,
    caller: Caller,
    AgentPath(agent_id): AgentPath,
    JsonBody(body): JsonBody,
) -> Result<Json<AgentLabels>, HttpError> {
    caller.require_admin()?;
    let patch: LabelPatch = decode(body, "label patch")?;
    let set: BTreeMap<String, String> = patch
        .labels
        .iter()
        .map(|(key, value)| (key.clone(), value.clone().unwrap_or_default()))
        .collect();
    let violations = label_violations(&set);
    if !violations.is_empty() {
        return Err(HttpError::invalid("invalid labels", violations));
    }
    let labels = state.store.patch_labels(&agent_id, &patch.labels).await?;
    if labels.len() > MAX_LABELS {
        // Applied already; the registration limit is checked on the result too, so say so.
        tracing::warn!(%agent_id, count = labels.len(), "an agent has more labels than registration allows");
    }
    let now = OffsetDateTime::now_utc();
    let mut fleets = Vec::new();
    if let Ok(store) = state.store.fleets() {
        crate::rollout::selection::reselect(store, Some(&agent_id), now).await?;
        fleets = store
            .fleets_of(std::slice::from_ref(&agent_id))
            .await?
            .remove(&agent_id)
            .unwrap_or_default();
    }
    tracing::info!(%agent_id, "agent labels changed");
    let (fleet, conflicting_fleets) = match fleets.len() {
        1 => (fleets.pop(), Vec::new()),
        _ => (None, fleets),
    };
    Ok(Json(AgentLabels {
        agent_id,
        labels,
        fleet,
        conflicting_fleets,
    }))
}

/// `POST /api/v1/agents/{agentId}/token`: a new token; the old one stops working.
pub async fn rotate_token(
    State(state): State<AppState>,
    caller: Caller,
    AgentPath(agent_id): AgentPath,
) -> Result<Json<AgentToken>, HttpError> {
    caller.require_admin()?;
    let token = mint_agent_token();
    state
        .store
        .rotate_token(&agent_id, hash_token(&token), OffsetDateTime::now_utc())
        .await?;
    tracing::info!(%agent_id, "agent token rotated");
    Ok(Json(AgentToken { agent_id, token }))
}

/// `DELETE /api/v1/agents/{agentId}`: decommissions the agent and revokes its token.
pub async fn decommission(
    State(state): State<AppState>,
    caller: Caller,
    AgentPath(agent_id): AgentPath,
) -> Result<StatusCode, HttpError> {
    caller.require_admin()?;
    state
        .store
        .decommission(&agent_id, OffsetDateTime::now_utc())
        .await?;
    tracing::info!(%agent_id, "agent decommissioned");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetParams {
    state: Option<String>,
    /// `key=value` pairs separated by commas; every one must match.
    label: Option<String>,
    /// An error reason (`QuotaExceeded`, `SessionStorageEvicted`, ...): only agents with a
    /// resource failing with it.
    reason: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// `GET /api/v1/agents`: one summary row per agent, in agent id order, cursor-paged.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(params): QueryParams<FleetParams>,
) -> Result<Json<Page<AgentSummary>>, HttpError> {
    caller.require_reader()?;
    let wanted_state = params
        .state
        .as_deref()
        .map(|text| {
            FleetState::parse(text).ok_or_else(|| {
                let states: Vec<&str> = FleetState::ALL.map(FleetState::as_str).to_vec();
                HttpError::bad_request(format!("state must be one of {}", states.join(", ")))
            })
        })
        .transpose()?;
    let labels = parse_label_filter(params.label.as_deref())?;
    let error_reason = params
        .reason
        .as_deref()
        .map(parse_reason_filter)
        .transpose()?;
    let limit = params
        .limit
        .unwrap_or(DEFAULT_FLEET_LIMIT)
        .clamp(1, MAX_FLEET_LIMIT);
    let mut after = params
        .cursor
        .as_deref()
        .map(|c| {
            let id = cursor::decode("a", c)?;
            AgentId::try_from(id.as_str()).map_err(|_| HttpError::bad_request("invalid cursor"))
        })
        .transpose()?;

    // The state depends on the clock (staleness), so it is derived here, not in SQL. With a
    // state filter, batches are scanned until the page is full or the fleet ends. One row more
    // than the page tells whether a next page exists.
    let now = OffsetDateTime::now_utc();
    let wanted = limit + 1;
    let batch = wanted.max(DEFAULT_FLEET_LIMIT);
    let mut items = Vec::with_capacity(wanted);
    loop {
        let query = FleetQuery {
            labels: labels.clone(),
            after: after.clone(),
            limit: batch,
            error_reason: error_reason.clone(),
        };
        let rows = state.store.fleet(&query).await?;
        let exhausted = rows.len() < batch;
        for row in rows {
            after = Some(row.agent_id.clone());
            let summary = summarize(row, now, state.report_interval);
            if wanted_state.is_none_or(|s| s == summary.state) {
                items.push(summary);
                if items.len() == wanted {
                    break;
                }
            }
        }
        if exhausted || items.len() == wanted {
            break;
        }
    }
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items
            .last()
            .map(|last| cursor::encode("a", last.agent_id.as_str()))
    } else {
        None
    };
    Ok(Json(Page { items, next_cursor }))
}

/// A reason is a PascalCase word. Reasons this build does not know are accepted too: a newer
/// agent may report one (it is stored as sent), and filtering on it must find that agent.
fn parse_reason_filter(text: &str) -> Result<String, HttpError> {
    let word = text.len() <= 64
        && text.starts_with(|c: char| c.is_ascii_uppercase())
        && text.chars().all(|c| c.is_ascii_alphanumeric());
    if word {
        Ok(text.to_owned())
    } else {
        Err(HttpError::bad_request(
            "reason must be an error reason such as QuotaExceeded or SessionStorageEvicted",
        ))
    }
}

fn parse_label_filter(text: Option<&str>) -> Result<BTreeMap<String, String>, HttpError> {
    let mut labels = BTreeMap::new();
    for pair in text
        .unwrap_or_default()
        .split(',')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| HttpError::bad_request("label must be key=value[,key=value...]"))?;
        labels.insert(key.to_owned(), value.to_owned());
    }
    // Only labels that registration accepts can match; anything else (a NUL byte above all,
    // which PostgreSQL refuses in text) is a bad request, not a store failure.
    if !label_violations(&labels).is_empty() {
        return Err(HttpError::bad_request(
            "label must be key=value pairs with keys and values as registration accepts them",
        ));
    }
    Ok(labels)
}

#[cfg(test)]
mod tests;
