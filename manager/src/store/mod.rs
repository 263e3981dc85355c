//! The manager's store: one interface over PostgreSQL (production) and memory (`--dev`).
//!
//! Dispatch is an enum with a `match` per operation rather than a trait object: there are exactly
//! two implementations and the methods are async. Both implementations keep the same rules
//! (generations, idempotent reports, event sequence numbers), which the API tests check.

pub mod memory;
pub mod postgres;

use std::collections::BTreeMap;

use fleetlet_manifests::api::{Event, EventType, PhaseCounts, StoreReadiness};
use fleetlet_manifests::{AgentId, AgentStatus, ConditionStatus, ConditionType, ResourceId};
use time::OffsetDateTime;

use crate::token::TokenHash;

pub use memory::MemoryStore;
pub use postgres::PgStore;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("agent {0} not found")]
    AgentNotFound(AgentId),
    #[error("agent {0} is already registered")]
    AgentExists(AgentId),
    #[error("generation {expected} was expected but the current one is {current}")]
    GenerationMismatch { expected: u64, current: u64 },
    /// The database cannot be reached or is shutting down; the client may retry.
    #[error("the store is unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// Anything else that went wrong inside the store: a bug or a corrupt row.
    #[error("store failure: {0}")]
    Internal(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        if postgres::is_unavailable(&error) {
            StoreError::Unavailable(error)
        } else {
            StoreError::Internal(error.to_string())
        }
    }
}

/// A manifest generation as stored: the resources are kept as the canonical JSON of the
/// validated manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredManifest {
    pub generation: u64,
    pub resources: serde_json::Value,
    pub content_hash: String,
    /// The operator's signature as received (`None`: unsigned). Stored and served, never checked
    /// here: the manager holds no keys, the agent verifies.
    pub signature: Option<serde_json::Value>,
    pub created_at: OffsetDateTime,
    pub created_by: String,
}

/// A manifest to store as the agent's next generation.
#[derive(Debug, Clone)]
pub struct NewManifest {
    pub resources: serde_json::Value,
    pub content_hash: String,
    pub signature: Option<serde_json::Value>,
    pub created_by: String,
    /// The `If-Match` precondition: the generation the writer based its change on.
    pub if_generation: Option<u64>,
}

/// The result of storing a manifest.
#[derive(Debug, Clone)]
pub struct PutManifestOutcome {
    pub manifest: StoredManifest,
    /// False when the resources and the signature were identical to the current generation's.
    pub created: bool,
}

/// Everything the fleet state of one agent is derived from.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetRow {
    pub agent_id: AgentId,
    pub labels: BTreeMap<String, String>,
    pub desired_generation: u64,
    pub last_seen_at: Option<OffsetDateTime>,
    pub observed_generation: Option<u64>,
    pub counts: PhaseCounts,
    pub manifest_rejected: bool,
}

/// Which agents the fleet list asks for, in agent id order.
#[derive(Debug, Clone, Default)]
pub struct FleetQuery {
    /// Every one of these labels must be present with this value.
    pub labels: BTreeMap<String, String>,
    /// Only agents whose id sorts after this one.
    pub after: Option<AgentId>,
    pub limit: usize,
    /// Only agents with at least one resource failing with this reason (`QuotaExceeded`,
    /// `SessionStorageEvicted`, ...).
    pub error_reason: Option<String>,
}

/// An event to append to an agent's log.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub type_: EventType,
    pub resource_id: Option<ResourceId>,
    pub payload: serde_json::Value,
}

impl NewEvent {
    pub fn new(type_: EventType, payload: serde_json::Value) -> Self {
        Self {
            type_,
            resource_id: None,
            payload,
        }
    }
}

/// The events a status report causes, given the phases stored before it.
///
/// A phase change of any resource is an event; the report itself is an event only when it is the
/// agent's first or when the observed generation moved, so heartbeats do not flood the log.
pub fn events_for_report(
    previous_observed: Option<u64>,
    previous_phases: &BTreeMap<String, String>,
    status: &AgentStatus,
) -> Vec<NewEvent> {
    let mut events = Vec::new();
    if previous_observed != Some(status.observed_generation) {
        events.push(NewEvent::new(
            EventType::StatusReported,
            serde_json::json!({
                "reportSeq": status.report_seq,
                "manifestGeneration": status.manifest_generation,
                "observedGeneration": status.observed_generation,
            }),
        ));
    }
    for (id, resource) in &status.resources {
        let before = previous_phases.get(id.as_str()).map(String::as_str);
        if before == Some(resource.phase.as_str()) {
            continue;
        }
        events.push(NewEvent {
            type_: EventType::ResourcePhaseChanged,
            resource_id: Some(id.clone()),
            payload: serde_json::json!({
                "from": before,
                "to": resource.phase,
                "kind": resource.kind,
                "generation": resource.generation,
                "reason": resource.error.as_ref().map(|e| e.reason.as_str()),
            }),
        });
    }
    events
}

/// Whether a status carries a True `ManifestRejected` condition.
pub fn manifest_rejected(conditions: &[fleetlet_manifests::Condition]) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == ConditionType::ManifestRejected && c.status == ConditionStatus::True)
}

/// The manager's store.
#[derive(Debug, Clone)]
pub enum Store {
    Postgres(PgStore),
    Memory(MemoryStore),
}

macro_rules! dispatch {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            Store::Postgres($store) => $call.await,
            Store::Memory($store) => $call.await,
        }
    };
}

impl Store {
    /// Registers an agent with the hash of its first token. A decommissioned agent may be
    /// registered again under the same id; its history is kept.
    pub async fn register_agent(
        &self,
        agent_id: &AgentId,
        labels: &BTreeMap<String, String>,
        token_hash: TokenHash,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.register_agent(agent_id, labels, token_hash, now))
    }

    /// Registers a device that enrolled itself with the bootstrap token. Any id the store has
    /// seen, even a decommissioned one, is refused with [`StoreError::AgentExists`].
    pub async fn enroll_agent(
        &self,
        agent_id: &AgentId,
        labels: &BTreeMap<String, String>,
        token_hash: TokenHash,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.enroll_agent(agent_id, labels, token_hash, now))
    }

    /// Replaces the agent's token hash; the old token stops working at once.
    pub async fn rotate_token(
        &self,
        agent_id: &AgentId,
        token_hash: TokenHash,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.rotate_token(agent_id, token_hash, now))
    }

    /// Marks the agent decommissioned and forgets its token.
    pub async fn decommission(
        &self,
        agent_id: &AgentId,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.decommission(agent_id, now))
    }

    /// The active agent that holds a token with this hash.
    pub async fn agent_for_token(
        &self,
        token_hash: TokenHash,
    ) -> Result<Option<AgentId>, StoreError> {
        dispatch!(self, s => s.agent_for_token(token_hash))
    }

    /// Stores a manifest as the next generation unless its resources are unchanged.
    pub async fn put_manifest(
        &self,
        agent_id: &AgentId,
        manifest: NewManifest,
        now: OffsetDateTime,
    ) -> Result<PutManifestOutcome, StoreError> {
        dispatch!(self, s => s.put_manifest(agent_id, manifest, now))
    }

    /// The agent's current generation (0 when it has no manifest yet).
    pub async fn current_generation(&self, agent_id: &AgentId) -> Result<u64, StoreError> {
        dispatch!(self, s => s.current_generation(agent_id))
    }

    /// The agent's current manifest, if it has one.
    pub async fn current_manifest(
        &self,
        agent_id: &AgentId,
    ) -> Result<Option<StoredManifest>, StoreError> {
        dispatch!(self, s => s.current_manifest(agent_id))
    }

    /// Up to `limit` generations below `before` (all when `None`), newest first.
    pub async fn manifest_history(
        &self,
        agent_id: &AgentId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<StoredManifest>, StoreError> {
        dispatch!(self, s => s.manifest_history(agent_id, before, limit))
    }

    /// Stores a status report unless its `reportSeq` is not above the stored one; returns
    /// whether it was accepted.
    pub async fn report_status(
        &self,
        status: &AgentStatus,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        dispatch!(self, s => s.report_status(status, now))
    }

    /// The agent's fleet row and its last status, rebuilt from the stored rows.
    pub async fn status(
        &self,
        agent_id: &AgentId,
    ) -> Result<(FleetRow, Option<AgentStatus>), StoreError> {
        dispatch!(self, s => s.status(agent_id))
    }

    /// Fleet rows of active agents in agent id order.
    pub async fn fleet(&self, query: &FleetQuery) -> Result<Vec<FleetRow>, StoreError> {
        dispatch!(self, s => s.fleet(query))
    }

    /// Up to `limit` events with a seq above `after_seq`, oldest first.
    pub async fn events(
        &self,
        agent_id: &AgentId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        dispatch!(self, s => s.events(agent_id, after_seq, limit))
    }

    /// What `/readyz` shows about the store.
    pub async fn readiness(&self) -> StoreReadiness {
        dispatch!(self, s => s.readiness())
    }
}
