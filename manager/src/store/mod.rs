//! The manager's store: one interface over PostgreSQL (production) and memory (`--dev`).
//!
//! Dispatch is an enum with a `match` per operation rather than a trait object: there are exactly
//! two implementations and the methods are async. Both implementations keep the same rules
//! (generations, idempotent reports, event sequence numbers), which the API tests check.

mod coalesce;
pub mod fleets;
pub mod memory;
pub mod postgres;

use std::collections::BTreeMap;

use fleetlet_manifests::api::{Event, EventType, PhaseCounts, StoreReadiness};
use fleetlet_manifests::manifest::RolloutPolicy;
use fleetlet_manifests::manifest::origin::FleetOrigin;
use fleetlet_manifests::{
    AgentId, AgentManifest, AgentStatus, ConditionStatus, ConditionType, ManifestSignature,
    Resource, ResourceId, ResourceStatus,
};
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
    /// The agent is owned by this fleet, which alone writes its manifests.
    #[error("agent is managed by fleet {0}")]
    OwnedByFleet(String),
    #[error("fleet {0} not found")]
    FleetNotFound(String),
    /// Fleets live in PostgreSQL; the memory store of `--dev` has none.
    #[error("fleets need the PostgreSQL store")]
    FleetsNeedPostgres,
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

/// A manifest generation as stored, typed: the store serialises it only at its own boundary
/// (a JSONB column) and hands back the same types it was given.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredManifest {
    pub generation: u64,
    pub resources: Vec<Resource>,
    pub content_hash: String,
    /// The operator's signature as received (`None`: unsigned). Stored and served, never checked
    /// here: the manager holds no keys, the agent verifies.
    pub signature: Option<ManifestSignature>,
    /// The manifest's rollout policy as received (`None`: none), served back as it came because
    /// the agent acts on it and the signature covers it.
    pub rollout: Option<RolloutPolicy>,
    /// The fleet that rendered this generation, with its revision and values (`None`: an
    /// operator's own manifest), served as received.
    pub fleet: Option<FleetOrigin>,
    pub created_at: OffsetDateTime,
    pub created_by: String,
}

impl StoredManifest {
    /// The manifest as served to the agent: the stored generation of `agent_id`'s manifest.
    pub fn into_manifest(self, agent_id: AgentId) -> AgentManifest {
        let mut manifest = AgentManifest::new(agent_id, self.resources);
        manifest.generation = Some(self.generation);
        manifest.rollout = self.rollout;
        manifest.signature = self.signature;
        manifest.fleet = self.fleet;
        manifest
    }
}

/// A manifest to store as the agent's next generation.
#[derive(Debug, Clone)]
pub struct NewManifest {
    pub resources: Vec<Resource>,
    pub content_hash: String,
    pub signature: Option<ManifestSignature>,
    pub rollout: Option<RolloutPolicy>,
    pub fleet: Option<FleetOrigin>,
    pub created_by: String,
    /// The `If-Match` precondition: the generation the writer based its change on.
    pub if_generation: Option<u64>,
}

impl NewManifest {
    /// A validated manifest to store, its content hash taken from it.
    pub fn new(manifest: AgentManifest, created_by: &str, if_generation: Option<u64>) -> Self {
        Self {
            content_hash: manifest.content_hash(),
            resources: manifest.resources,
            signature: manifest.signature,
            rollout: manifest.rollout,
            fleet: manifest.fleet,
            created_by: created_by.to_owned(),
            if_generation,
        }
    }

    /// The manifest as stored at `generation`, written `now` (both stores build it here).
    pub fn into_stored(self, generation: u64, now: OffsetDateTime) -> StoredManifest {
        StoredManifest {
            generation,
            resources: self.resources,
            content_hash: self.content_hash,
            signature: self.signature,
            rollout: self.rollout,
            fleet: self.fleet,
            created_at: now,
            created_by: self.created_by,
        }
    }
}

/// The result of storing a manifest.
#[derive(Debug, Clone)]
pub struct PutManifestOutcome {
    pub manifest: StoredManifest,
    /// False when the resources, the rollout policy and the signature were identical to the
    /// current generation's.
    pub created: bool,
}

impl StoredManifest {
    /// Whether `new` asks for exactly this generation again, so that no new one is needed.
    ///
    /// A new signature over the same content is a new generation: the agent must get the signed
    /// form (ed25519 is deterministic, so re-signing with the same key is not). The rollout is
    /// compared on its own too, not only through the content hash, so that a policy change is
    /// never lost whatever the hash covers. Of a fleet's provenance only the signed part counts:
    /// a new fleet revision that renders the same resources for a device needs no generation
    /// there, but a new signature does (the agent checks it).
    pub fn is_same_as(&self, new: &NewManifest) -> bool {
        self.content_hash == new.content_hash
            && self.signature == new.signature
            && self.rollout == new.rollout
            && self.fleet.as_ref().map(|f| &f.signed) == new.fleet.as_ref().map(|f| &f.signed)
    }
}

/// What an agent's contact finds in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Contact {
    /// The `reportSeq` of the newest report held from the agent.
    pub report_seq: Option<u64>,
    /// The agent's current manifest generation (0: none yet).
    pub generation: u64,
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
    /// The agent reported a condition that makes it degraded by itself (see [`manifest_rejected`]).
    pub manifest_rejected: bool,
    /// The agent reported a `RolledBack` condition with status True.
    pub rolled_back: bool,
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

/// What the store kept of the agent's previous report, as far as events are derived from it.
#[derive(Debug, Clone, Default)]
pub struct PreviousReport {
    /// `None` when the agent never reported.
    pub observed_generation: Option<u64>,
    /// Resource id → phase.
    pub phases: BTreeMap<String, String>,
    /// Whether its `RolledBack` condition was True.
    pub rolled_back: bool,
    /// Resource id → what events already said of its repairs.
    pub repairs: BTreeMap<String, RepairMark>,
}

/// How much of a resource's repair count `ResourceRepaired` events already told, and when the
/// last of them was appended. Kept beside the resource's status, dropped with it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RepairMark {
    /// The agent's repair count as of the last event.
    pub evented: u64,
    pub evented_at: Option<OffsetDateTime>,
}

/// At most one `ResourceRepaired` event per resource this often: a device whose file is edited
/// at every resync adds one event per resource per interval, carrying how many repairs it
/// covers, instead of one per repair.
pub const REPAIR_EVENT_INTERVAL: time::Duration = time::Duration::minutes(10);

/// The `ResourceRepaired` events a report causes, and the repair marks to keep for each of its
/// resources.
///
/// A resource whose repair count went up since the last event is an event, unless its last
/// event is younger than [`REPAIR_EVENT_INTERVAL`]: then nothing is appended and the repairs
/// wait to be counted by the next event (the status always shows the current count). A count
/// lower than the one already told means the agent lost its store and counts from 1 again.
/// A report without repairs for a resource keeps its mark.
pub fn repair_events(
    previous: &PreviousReport,
    status: &AgentStatus,
    now: OffsetDateTime,
) -> (Vec<NewEvent>, BTreeMap<String, RepairMark>) {
    let mut events = Vec::new();
    let mut marks = BTreeMap::new();
    for (id, resource) in &status.resources {
        let before = previous
            .repairs
            .get(id.as_str())
            .copied()
            .unwrap_or_default();
        let mark = match &resource.repairs {
            None => before,
            Some(repairs) => {
                let evented = if repairs.count < before.evented {
                    0
                } else {
                    before.evented
                };
                let since_event = repairs.count - evented;
                let due = before
                    .evented_at
                    .is_none_or(|at| now - at >= REPAIR_EVENT_INTERVAL);
                if since_event > 0 && due {
                    events.push(NewEvent {
                        type_: EventType::ResourceRepaired,
                        resource_id: Some(id.clone()),
                        payload: serde_json::json!({
                            "kind": resource.kind,
                            "repairs": since_event,
                            "totalRepairs": repairs.count,
                            "drift": repairs.last_drift,
                            "lastRepairAt": repairs.last_at
                                .format(&time::format_description::well_known::Rfc3339)
                                .ok(),
                        }),
                    });
                    RepairMark {
                        evented: repairs.count,
                        evented_at: Some(now),
                    }
                } else {
                    RepairMark {
                        evented,
                        evented_at: before.evented_at,
                    }
                }
            }
        };
        marks.insert(id.to_string(), mark);
    }
    (events, marks)
}

/// The events a status report causes, given what was stored before it.
///
/// A phase change of any resource is an event; the report itself is an event only when it is the
/// agent's first or when the observed generation moved, so heartbeats do not flood the log. A
/// `RolledBack` condition turning True is a `RolledBack` event, and its turning False or going
/// away a `RollbackCleared` event: transitions only, however many reports repeat the condition.
pub fn events_for_report(previous: &PreviousReport, status: &AgentStatus) -> Vec<NewEvent> {
    let previous_observed = previous.observed_generation;
    let previous_phases = &previous.phases;
    let mut events = Vec::new();
    let rollback = rolled_back_condition(&status.conditions);
    match (previous.rolled_back, rollback) {
        (false, Some(condition)) => events.push(NewEvent::new(
            EventType::RolledBack,
            serde_json::json!({
                "failedGeneration": status.manifest_generation,
                "rolledBackTo": status.observed_generation,
                "reason": condition.reason,
                "message": condition.message,
            }),
        )),
        (true, None) => events.push(NewEvent::new(
            EventType::RollbackCleared,
            serde_json::json!({
                "manifestGeneration": status.manifest_generation,
                "observedGeneration": status.observed_generation,
            }),
        )),
        _ => {}
    }
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

/// How many of a status's resources are in each phase.
pub fn phase_counts(resources: &BTreeMap<ResourceId, ResourceStatus>) -> PhaseCounts {
    let mut counts = PhaseCounts::new();
    for resource in resources.values() {
        *counts.entry(resource.phase).or_default() += 1;
    }
    counts
}

/// Whether a status carries a condition that makes the agent degraded whatever its resources
/// say: a True `ManifestRejected`, or a True `Degraded` whose reason says the agent's local store
/// cannot save (`DiskFull`, `StoreUnavailable`). Stored as `agent_status.manifest_rejected`.
pub fn manifest_rejected(conditions: &[fleetlet_manifests::Condition]) -> bool {
    conditions.iter().any(|c| {
        c.status == ConditionStatus::True
            && (c.type_ == ConditionType::ManifestRejected
                || (c.type_ == ConditionType::Degraded
                    && fleetlet_manifests::status::STORE_FAULT_REASONS
                        .contains(&c.reason.as_str())))
    })
}

/// The agent's `RolledBack` condition when its status is True.
fn rolled_back_condition(
    conditions: &[fleetlet_manifests::Condition],
) -> Option<&fleetlet_manifests::Condition> {
    conditions
        .iter()
        .find(|c| c.type_ == ConditionType::RolledBack && c.status == ConditionStatus::True)
}

/// Whether a status carries a True `RolledBack` condition.
pub fn rolled_back(conditions: &[fleetlet_manifests::Condition]) -> bool {
    rolled_back_condition(conditions).is_some()
}

/// The manager's store.
#[derive(Debug, Clone)]
pub enum Store {
    Postgres(PgStore),
    Memory(MemoryStore),
}

/// Calls the same method on whichever store this is. The call's future is boxed: inline, every
/// caller's future (a request handler held for minutes by a long-poll) would be as large as the
/// largest store call of either kind it makes; boxed, it holds a pointer, and the store call's
/// state lives only while the call runs.
macro_rules! dispatch {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            Store::Postgres($store) => Box::pin($call).await,
            Store::Memory($store) => Box::pin($call).await,
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
        status: AgentStatus,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        match self {
            // The Postgres store queues the report for a batch, which takes it whole.
            Store::Postgres(store) => store.report_status(status, now).await,
            Store::Memory(store) => store.report_status(&status, now).await,
        }
    }

    /// What an agent's contact needs to know: its newest report and its generation, in one read.
    pub async fn agent_contact(&self, agent_id: &AgentId) -> Result<Contact, StoreError> {
        dispatch!(self, s => s.agent_contact(agent_id))
    }

    /// Moves `last_seen_at` forward for each agent (never back), in one statement; agents
    /// decommissioned meanwhile are skipped.
    pub async fn record_contacts(
        &self,
        contacts: &[(AgentId, OffsetDateTime)],
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.record_contacts(contacts))
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

/// Fleets (`fleets.rs`): the PostgreSQL store, or the memory store's typed refusal.
impl Store {
    /// The PostgreSQL store, or the typed refusal of the memory store.
    pub fn fleets(&self) -> Result<&PgStore, StoreError> {
        match self {
            Store::Postgres(store) => Ok(store),
            Store::Memory(_) => Err(StoreError::FleetsNeedPostgres),
        }
    }

    /// Applies a merge patch to the agent's labels (`None` removes) and returns them.
    pub async fn patch_labels(
        &self,
        agent_id: &AgentId,
        patch: &BTreeMap<String, Option<String>>,
    ) -> Result<BTreeMap<String, String>, StoreError> {
        match self {
            Store::Postgres(store) => Box::pin(store.patch_labels(agent_id, patch)).await,
            Store::Memory(store) => store.patch_labels(agent_id, patch),
        }
    }
}

#[cfg(test)]
mod tests;
