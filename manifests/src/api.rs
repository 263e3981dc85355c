//! Bodies of the manager's REST API that are not manifests or statuses: errors, registration,
//! fleet rows, summaries, history, events and pages.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::Violation;
use crate::ids::{AgentId, ResourceId};
use crate::manifest::{Resource, RolloutPolicy};
use crate::status::{AgentStatus, Phase};

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ErrorBody {
    pub error: ApiError,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub violations: Vec<Violation>,
}

/// The closed set of error kinds, each with one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    PayloadTooLarge,
    UnsupportedMediaType,
    InvalidManifest,
    TooManyRequests,
    StoreUnavailable,
    /// The path exists but not with this method (405).
    MethodNotAllowed,
    /// The request, body included, was not finished within the manager's time limit (408).
    RequestTimeout,
    /// The request line and headers together exceed the manager's limit (431).
    HeadersTooLarge,
    /// A bug in the manager (500); the last resort, never with details.
    Internal,
}

impl ErrorKind {
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::BadRequest => 400,
            ErrorKind::Unauthorized => 401,
            ErrorKind::Forbidden => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::UnsupportedMediaType => 415,
            ErrorKind::InvalidManifest => 422,
            ErrorKind::TooManyRequests => 429,
            ErrorKind::StoreUnavailable => 503,
            ErrorKind::MethodNotAllowed => 405,
            ErrorKind::RequestTimeout => 408,
            ErrorKind::HeadersTooLarge => 431,
            ErrorKind::Internal => 500,
        }
    }
}

/// `POST /api/v1/agents` and `POST /api/v1/enroll`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegisterAgent {
    pub agent_id: AgentId,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The answer to a registration or a token rotation: the token is shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentToken {
    pub agent_id: AgentId,
    pub token: String,
}

/// The answer to a status report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ReportAck {
    pub accepted: bool,
}

/// A compact heartbeat: the agent says which report it last made, instead of sending it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Heartbeat {
    pub report_seq: u64,
}

/// The answer to a heartbeat: the manager's newest report from the agent, and whether the agent
/// should send its status again because the manager does not hold it (a restored database, a
/// report lost on the way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatAck {
    pub report_seq: Option<u64>,
    pub resend: bool,
}

/// The fleet-level state of one agent, derived by the manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FleetState {
    /// Observed the current generation and every resource is Ready.
    Converged,
    /// Working toward the current generation; nothing has failed.
    Progressing,
    /// At least one resource Failed or Unsupported, or the manifest was rejected.
    Degraded,
    /// A generation missed its rollout deadline and the agent went back to its last known-good
    /// resources (condition `RolledBack`).
    #[serde(rename = "rolledBack")]
    RolledBack,
    /// No report for three report intervals.
    Stale,
    /// Never reported.
    Unknown,
}

impl FleetState {
    pub const ALL: [FleetState; 6] = [
        FleetState::Converged,
        FleetState::Progressing,
        FleetState::Degraded,
        FleetState::RolledBack,
        FleetState::Stale,
        FleetState::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FleetState::Converged => "converged",
            FleetState::Progressing => "progressing",
            FleetState::Degraded => "degraded",
            FleetState::RolledBack => "rolledBack",
            FleetState::Stale => "stale",
            FleetState::Unknown => "unknown",
        }
    }

    pub fn parse(text: &str) -> Option<FleetState> {
        FleetState::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// Number of resources in each phase; phases with none are left out.
pub type PhaseCounts = BTreeMap<Phase, u32>;

/// One row of the fleet list, and the summary that goes with an agent's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentSummary {
    pub agent_id: AgentId,
    pub labels: BTreeMap<String, String>,
    pub state: FleetState,
    /// The manager's current generation for the agent (0: no manifest yet).
    pub desired_generation: u64,
    pub observed_generation: Option<u64>,
    pub converged: bool,
    pub counts: PhaseCounts,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schemars(with = "Option<String>")]
    pub last_seen_at: Option<OffsetDateTime>,
}

/// `GET /api/v1/agents/{agentId}/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusView {
    pub status: Option<AgentStatus>,
    pub summary: AgentSummary,
}

/// One generation of an agent's manifest history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestRevision {
    pub generation: u64,
    pub content_hash: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub created_by: String,
    pub resources: Vec<Resource>,
    /// The generation's rollout policy, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutPolicy>,
}

/// Types of the events in an agent's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub enum EventType {
    AgentRegistered,
    AgentDecommissioned,
    TokenRotated,
    ManifestUpdated,
    StatusReported,
    ResourcePhaseChanged,
    ResourceRepaired,
    AgentStale,
    /// The agent's `RolledBack` condition turned True: a generation missed its rollout deadline.
    RolledBack,
    /// The agent's `RolledBack` condition turned False or went away (a newer generation arrived).
    RollbackCleared,
    /// Fleet events (docs/fleets.md): in the fleet's log, and `FleetConflict` / `FleetReleased`
    /// in the device's log too.
    FleetRevisionCreated,
    RolloutBatchStarted,
    RolloutPaused,
    RolloutResumed,
    RolloutCompleted,
    RolloutAborted,
    RolloutRolledBack,
    FleetConflict,
    FleetReleased,
}

impl EventType {
    pub const ALL: [EventType; 19] = [
        EventType::AgentRegistered,
        EventType::AgentDecommissioned,
        EventType::TokenRotated,
        EventType::ManifestUpdated,
        EventType::StatusReported,
        EventType::ResourcePhaseChanged,
        EventType::ResourceRepaired,
        EventType::AgentStale,
        EventType::RolledBack,
        EventType::RollbackCleared,
        EventType::FleetRevisionCreated,
        EventType::RolloutBatchStarted,
        EventType::RolloutPaused,
        EventType::RolloutResumed,
        EventType::RolloutCompleted,
        EventType::RolloutAborted,
        EventType::RolloutRolledBack,
        EventType::FleetConflict,
        EventType::FleetReleased,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::AgentRegistered => "AgentRegistered",
            EventType::AgentDecommissioned => "AgentDecommissioned",
            EventType::TokenRotated => "TokenRotated",
            EventType::ManifestUpdated => "ManifestUpdated",
            EventType::StatusReported => "StatusReported",
            EventType::ResourcePhaseChanged => "ResourcePhaseChanged",
            EventType::ResourceRepaired => "ResourceRepaired",
            EventType::AgentStale => "AgentStale",
            EventType::RolledBack => "RolledBack",
            EventType::RollbackCleared => "RollbackCleared",
            EventType::FleetRevisionCreated => "FleetRevisionCreated",
            EventType::RolloutBatchStarted => "RolloutBatchStarted",
            EventType::RolloutPaused => "RolloutPaused",
            EventType::RolloutResumed => "RolloutResumed",
            EventType::RolloutCompleted => "RolloutCompleted",
            EventType::RolloutAborted => "RolloutAborted",
            EventType::RolloutRolledBack => "RolloutRolledBack",
            EventType::FleetConflict => "FleetConflict",
            EventType::FleetReleased => "FleetReleased",
        }
    }

    pub fn parse(text: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == text)
    }
}

/// One entry of an agent's append-only event log on the manager.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub seq: u64,
    #[serde(rename = "type")]
    pub type_: EventType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<ResourceId>,
    pub payload: serde_json::Value,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub created_at: OffsetDateTime,
}

/// A page of a list; `next_cursor` is opaque and `None` on the last page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// `GET /readyz`: whether the manager can serve, and why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Readiness {
    pub ready: bool,
    pub store: StoreReadiness,
}

/// The store part of `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StoreReadiness {
    /// `postgres` or `memory`.
    pub adapter: String,
    pub reachable: bool,
    pub migration_ready: bool,
    /// The newest applied migration (none for the memory store).
    pub migration_version: Option<i64>,
    /// Why the store is not ready, as a short kebab-case word (`unreachable`, `timeout`, …).
    pub failure_kind: Option<String>,
    /// The database URL with its password replaced by `***`.
    pub database: Option<String>,
    /// A warning an operator must see, e.g. that the memory store loses everything on restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}
