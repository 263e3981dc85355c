//! `POST /api/v1/agents/{agentId}/heartbeat`: an idle agent's sign of life.
//!
//! A heartbeat carries the `reportSeq` of the agent's latest report instead of the report itself,
//! so that an idle device costs a few hundred bytes per heartbeat on its link. The manager answers
//! with the newest seq it holds and asks for the status again when that is older than the agent's
//! (a database restored from a backup, a report lost between two replicas).

use axum::Json;
use axum::extract::State;
use fleetlet_manifests::api::{Heartbeat, HeartbeatAck};
use time::OffsetDateTime;

use super::AppState;
use super::error::HttpError;
use super::extract::{AgentPath, Caller, JsonBody, decode};

pub async fn post(
    State(state): State<AppState>,
    caller: Caller,
    AgentPath(agent_id): AgentPath,
    JsonBody(body): JsonBody,
) -> Result<Json<HeartbeatAck>, HttpError> {
    caller.require_agent(&agent_id)?;
    let heartbeat: Heartbeat = decode(body, "heartbeat")?;
    state.contacts.note(&agent_id, OffsetDateTime::now_utc());
    let held = state.store.agent_contact(&agent_id).await?.report_seq;
    // An agent that never reported has seq 0 and nothing to resend.
    let resend = heartbeat.report_seq > held.unwrap_or(0);
    Ok(Json(HeartbeatAck {
        report_seq: held,
        resend,
    }))
}
