//! Status reports from agents, the status view, and the event log.

use axum::Json;
use axum::extract::State;
use fleetlet_manifests::api::{Event, Page, ReportAck, StatusView};
use fleetlet_manifests::{AgentStatus, Violation};
use serde::Deserialize;
use time::OffsetDateTime;

use super::AppState;
use super::error::HttpError;
use super::extract::{AgentPath, Caller, JsonBody, QueryParams, decode};
use super::nul::refuse_nul;
use crate::fleet::summarize;
use crate::metrics::{Metrics, ReportOutcome};

const DEFAULT_EVENTS_LIMIT: usize = 100;
/// A larger `limit` is clamped to this.
pub const MAX_EVENTS_LIMIT: usize = 1000;

/// `PUT /api/v1/agents/{agentId}/status`: the agent's report, idempotent by `reportSeq`.
pub async fn put(
    State(state): State<AppState>,
    axum::Extension(metrics): axum::Extension<Metrics>,
    caller: Caller,
    AgentPath(agent_id): AgentPath,
    JsonBody(body): JsonBody,
) -> Result<Json<ReportAck>, HttpError> {
    caller.require_agent(&agent_id)?;
    refuse_nul(&body, "invalid status")?;
    let status: AgentStatus = decode(body, "status")?;
    let mut violations = status.check();
    if status.agent_id != agent_id {
        violations.push(Violation {
            path: "agentId".into(),
            message: format!("must be {agent_id}, the agent of the path"),
        });
    }
    // Counters are bigint columns; a value past i64 would be a broken agent, not a real count.
    let in_range = |value: u64| i64::try_from(value).is_ok();
    for (path, value) in [
        ("reportSeq", status.report_seq),
        ("manifestGeneration", status.manifest_generation),
        ("observedGeneration", status.observed_generation),
    ] {
        if !in_range(value) {
            violations.push(Violation {
                path: path.into(),
                message: "is too large".into(),
            });
        }
    }
    for (id, resource) in &status.resources {
        if !in_range(resource.generation) {
            violations.push(Violation {
                path: format!("resources.{id}.generation"),
                message: "is too large".into(),
            });
        }
    }
    if !violations.is_empty() {
        return Err(HttpError::invalid("invalid status", violations));
    }
    let report_seq = status.report_seq;
    let accepted = state
        .store
        .report_status(status, OffsetDateTime::now_utc())
        .await?;
    metrics.record_report(if accepted {
        ReportOutcome::Accepted
    } else {
        ReportOutcome::Duplicate
    });
    tracing::debug!(%agent_id, report_seq, accepted, "status report");
    Ok(Json(ReportAck { accepted }))
}

/// `GET /api/v1/agents/{agentId}/status`: the stored status and its summary.
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    AgentPath(agent_id): AgentPath,
) -> Result<Json<StatusView>, HttpError> {
    caller.require_reader()?;
    let (row, status) = state.store.status(&agent_id).await?;
    let summary = summarize(row, OffsetDateTime::now_utc(), state.report_interval);
    Ok(Json(StatusView { status, summary }))
}

/// The query of an event log read (an agent's or a fleet's): `afterSeq` and `limit`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventParams {
    after_seq: Option<u64>,
    limit: Option<usize>,
}

impl EventParams {
    /// The page size asked for, within 1..=`MAX_EVENTS_LIMIT`.
    pub(super) fn limit(&self) -> usize {
        self.limit
            .unwrap_or(DEFAULT_EVENTS_LIMIT)
            .clamp(1, MAX_EVENTS_LIMIT)
    }

    /// The seq to read after. Seqs are bigints: nothing lies above i64::MAX, so a larger
    /// `afterSeq` is an empty page, not a value the store has to refuse.
    pub(super) fn after_seq(&self) -> u64 {
        self.after_seq.unwrap_or(0).min(i64::MAX as u64)
    }
}

/// `GET /api/v1/agents/{agentId}/events`: the event log, oldest first, from `afterSeq` on.
/// `nextCursor` is the seq to pass as the next `afterSeq`, or null on the last page.
pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    AgentPath(agent_id): AgentPath,
    QueryParams(params): QueryParams<EventParams>,
) -> Result<Json<Page<Event>>, HttpError> {
    caller.require_reader()?;
    let limit = params.limit();
    let mut items = state
        .store
        .events(&agent_id, params.after_seq(), limit + 1)
        .await?;
    let next_cursor = super::cursor::page(&mut items, limit, |e| e.seq.to_string());
    Ok(Json(Page { items, next_cursor }))
}
