//! The agent's local store: what it must remember between passes (and, with a persistent store,
//! across restarts): the last accepted manifest, the rollout state, what it owns, per-resource
//! state, events, the status overview and the outbox of unsent reports.
//!
//! One store instance is scoped to one agent id; resource records are scoped by resource id
//! (docs/reference.md §6). The trait is synchronous on purpose: every call is a small read or write, the
//! memory store never blocks, and a filesystem store does short, fsync-bounded I/O that is
//! cheaper to run inline than to hop threads for.

#[cfg(test)]
pub(crate) mod failing;
#[cfg(feature = "fs-store")]
pub mod fs;
pub mod memory;
pub mod resilient;

use std::collections::BTreeMap;

use fleetlet_manifests::{
    AgentId, AgentManifest, AgentStatus, Kind, ResourceId, ResourceStatus, RolloutPolicy,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

#[cfg(feature = "fs-store")]
pub use fs::{FsStore, FsStoreError, FsStoreOptions};
pub use memory::MemoryStore;
pub use resilient::ResilientStore;

/// No read of an event log returns more than this many entries, whatever the caller asks for.
pub const MAX_EVENTS_PER_READ: usize = 500;

/// The local store of one agent.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// The agent this store belongs to.
    fn agent_id(&self) -> &AgentId;

    /// The agent record: who ran on this store, with which version and configuration.
    fn load_agent_record(&self) -> Result<Option<AgentRecord>, StoreError>;
    fn save_agent_record(&self, record: &AgentRecord) -> Result<(), StoreError>;

    /// The last accepted manifest: the desired state the agent converges to, even offline.
    fn load_manifest(&self) -> Result<Option<AgentManifest>, StoreError>;
    fn save_manifest(&self, manifest: &AgentManifest) -> Result<(), StoreError>;

    /// The rollout state: the known-good manifest, the deadline of a generation on trial and a
    /// missed deadline. Kept so that a restart neither resets a deadline nor retries a
    /// generation that was rolled back. The default (nothing known) when never saved.
    fn load_rollout(&self) -> Result<RolloutState, StoreError>;
    fn save_rollout(&self, rollout: &RolloutState) -> Result<(), StoreError>;

    /// Ownership records: what the agent created for each resource. Deletion is derived from
    /// these ("owned but no longer desired"), never from a one-shot event.
    fn ownership_records(&self) -> Result<BTreeMap<ResourceId, OwnershipRecord>, StoreError>;
    fn save_ownership_record(
        &self,
        id: &ResourceId,
        record: &OwnershipRecord,
    ) -> Result<(), StoreError>;
    fn remove_ownership_record(&self, id: &ResourceId) -> Result<(), StoreError>;

    /// Per-resource state: the status last computed and the failure count that drives backoff.
    fn resource_states(&self) -> Result<BTreeMap<ResourceId, ResourceState>, StoreError>;
    fn save_resource_state(&self, id: &ResourceId, state: &ResourceState)
    -> Result<(), StoreError>;
    fn remove_resource_state(&self, id: &ResourceId) -> Result<(), StoreError>;

    /// Appends an event to the agent log (and, when it names a resource, to that resource's
    /// log) and returns its sequence number, which increases by one per event.
    fn append_event(&self, event: NewEvent) -> Result<u64, StoreError>;
    /// Events with a seq greater than `after_seq`, oldest first, at most
    /// `min(limit, MAX_EVENTS_PER_READ)` of them.
    fn read_events(&self, after_seq: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError>;
    /// The same, restricted to the events of one resource.
    fn read_resource_events(
        &self,
        id: &ResourceId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// The last built status (the overview a local tool can read without the manager).
    fn load_status(&self) -> Result<Option<AgentStatus>, StoreError>;
    fn save_status(&self, status: &AgentStatus) -> Result<(), StoreError>;

    /// The outbox: reports not yet acknowledged by the manager. Every report is a full
    /// snapshot, so a newer report supersedes older unsent ones (latest wins).
    fn enqueue_report(&self, status: &AgentStatus) -> Result<(), StoreError>;
    fn pending_report(&self) -> Result<Option<AgentStatus>, StoreError>;
    /// Drops the pending report if its seq is at most `report_seq`.
    fn acknowledge_report(&self, report_seq: u64) -> Result<(), StoreError>;

    /// The highest `reportSeq` handed out so far (0 if none).
    fn last_report_seq(&self) -> Result<u64, StoreError>;
    fn save_last_report_seq(&self, report_seq: u64) -> Result<(), StoreError>;

    /// Makes everything written so far durable (a no-op for the memory store).
    fn flush(&self) -> Result<(), StoreError>;

    /// A number that changes whenever the resource states change, for callers that keep what
    /// they built from them; `None` when the store cannot tell (the caller then reads again).
    fn states_revision(&self) -> Option<u64> {
        None
    }

    /// Why writes are failing, while they are (see [`ResilientStore`]); `None` when the store
    /// saves what it is given. A store that fails its callers instead always answers `None`.
    fn fault(&self) -> Option<StoreFault> {
        None
    }
}

/// The store cannot save what it is given (a full disk, an I/O error); what waits is kept in
/// memory and retried. Reported as the agent's `Degraded` condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreFault {
    /// The disk (or the quota) is full: `ENOSPC` or `EDQUOT`.
    pub disk_full: bool,
    /// The first failure since the store last saved everything, e.g.
    /// `i/o on /var/lib/fleetlet/agents/a1/manifest.json: No space left on device (os error 28)`.
    pub message: String,
    /// When writes started to fail.
    pub since: OffsetDateTime,
}

impl StoreFault {
    /// The fault a failed store call stands for, first seen at `now`.
    pub fn of(error: &StoreError, now: OffsetDateTime) -> Self {
        let disk_full = match error {
            StoreError::Io { source, .. } => {
                matches!(
                    source.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                )
            }
            _ => false,
        };
        Self {
            disk_full,
            message: error.to_string(),
            since: now,
        }
    }

    /// The `Degraded` condition's reason: `DiskFull` or `StoreUnavailable`
    /// ([`fleetlet_manifests::status::STORE_FAULT_REASONS`], which the manager reads).
    pub fn reason(&self) -> &'static str {
        let [disk_full, unavailable] = fleetlet_manifests::status::STORE_FAULT_REASONS;
        if self.disk_full {
            disk_full
        } else {
            unavailable
        }
    }
}

/// Who ran on this store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentRecord {
    pub agent_id: AgentId,
    pub version: String,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// The effective configuration, without secrets.
    pub config: serde_json::Value,
}

/// What the engine remembers about rollouts between passes and across restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutState {
    /// The last manifest of which a complete pass found every resource Ready: where a rollback
    /// goes back to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_good: Option<AgentManifest>,
    /// A generation with a rollout policy that has not been all Ready yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trial: Option<RolloutTrial>,
    /// The deadline a generation missed, and what was done about it. Stays until a newer
    /// generation arrives (or, when the agent held on, until that generation becomes Ready).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed: Option<MissedDeadline>,
}

/// A generation that must become Ready by `deadline`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutTrial {
    pub generation: u64,
    /// Wall-clock time, so that a restart does not give the generation a fresh deadline.
    #[serde(with = "time::serde::rfc3339")]
    pub deadline: OffsetDateTime,
    pub policy: RolloutPolicy,
}

/// A generation that was not Ready by its deadline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MissedDeadline {
    /// The generation that missed its deadline.
    pub generation: u64,
    pub outcome: DeadlineOutcome,
    /// Which generation, how long, and what was not Ready, e.g.
    /// `generation 5 was not Ready within 60s (web: Failed ImageNotFound)`.
    pub summary: String,
}

impl MissedDeadline {
    /// The whole story in one line, for the `RolledBack` condition and the event.
    pub fn message(&self) -> String {
        match self.outcome {
            DeadlineOutcome::RolledBack { to_generation } => {
                format!(
                    "{}; rolled back to generation {to_generation}",
                    self.summary
                )
            }
            DeadlineOutcome::Held => format!("{}; held as its policy says", self.summary),
            DeadlineOutcome::NoKnownGoodGeneration => format!(
                "{}; no earlier generation was ever all Ready, so it stays",
                self.summary
            ),
        }
    }
}

/// What the agent did when a deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "PascalCase")]
pub enum DeadlineOutcome {
    /// Converging to the known-good generation instead.
    #[serde(rename_all = "camelCase")]
    RolledBack { to_generation: u64 },
    /// Still converging to the generation, whose policy is `Hold`.
    Held,
    /// The policy said `Rollback`, but there was nothing to go back to.
    NoKnownGoodGeneration,
}

/// What the agent created for one resource, so that it deletes only what it made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnershipRecord {
    /// The kind of the resource; it decides where the record's delete falls in the pass order.
    pub kind: Kind,
    /// The spec hash last applied successfully.
    pub spec_hash: String,
    /// The manifest generation of that apply.
    pub generation: u64,
    pub owned: Owned,
}

/// A File ownership record for `path`, the one the store tests save, read back and remove.
#[cfg(test)]
pub(crate) fn file_record(path: &str) -> OwnershipRecord {
    OwnershipRecord {
        kind: Kind::File,
        spec_hash: "sha256:abc".into(),
        generation: 3,
        owned: Owned::File(OwnedFile {
            path: path.into(),
            created: true,
            sha256: "00ff".into(),
        }),
    }
}

/// The kind-specific part of an ownership record. Later kinds add a variant each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "PascalCase")]
pub enum Owned {
    File(OwnedFile),
    SystemdUnit(OwnedUnit),
    Container(OwnedContainer),
    SessionStorage(OwnedSession),
}

impl Owned {
    pub fn kind(&self) -> Kind {
        match self {
            Owned::File(_) => Kind::File,
            Owned::SystemdUnit(_) => Kind::SystemdUnit,
            Owned::Container(_) => Kind::Container,
            Owned::SessionStorage(_) => Kind::SessionStorage,
        }
    }
}

/// A file the agent wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnedFile {
    pub path: String,
    /// True when the path did not exist before the agent first wrote it. Only such files are
    /// deleted when their resource goes away; a file that existed before is adopted (the agent
    /// manages its content while the resource exists) and left in place afterwards.
    pub created: bool,
    /// sha256 (hex) of the content last written.
    pub sha256: String,
}

/// A systemd unit whose file the agent wrote. The file itself carries a marker line naming the
/// agent and resource; the agent modifies or removes it only while that marker is there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnedUnit {
    /// The unit name, e.g. `kiosk.service`.
    pub name: String,
    /// The unit file's path.
    pub path: String,
    /// sha256 (hex) of the file last written, marker included.
    pub sha256: String,
}

/// A container the agent created, with its restart bookkeeping. The container itself carries the
/// labels `dev.fleetlet.agent` and `dev.fleetlet.resource`; the agent removes only containers that
/// carry both, whatever this record says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnedContainer {
    pub container_id: String,
    pub name: String,
    /// Restarts by the agent since the container was created for the current spec.
    #[serde(default)]
    pub restarts: u32,
    /// Restarts in a row without a stable run in between; the delay before the next restart
    /// grows with it.
    #[serde(default)]
    pub crash_streak: u32,
}

/// A session directory the agent created. The directory carries a marker naming the agent,
/// resource and session beside its data; the agent removes it only while that marker is there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnedSession {
    /// The session directory's path (for people; removal goes by `dir` under the root).
    pub path: String,
    /// Its name under the session root: `<resourceId>@<sessionId>`.
    pub dir: String,
    pub session_id: String,
}

/// The state of one resource between passes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceState {
    pub status: ResourceStatus,
    /// Failures in a row; reset by a success. Drives the backoff.
    pub consecutive_failures: u32,
}

/// What happened, in the agent's own event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    ManifestAccepted,
    ManifestRejected,
    ResourceCreated,
    ResourceAdopted,
    ResourceUpdated,
    ResourceRepaired,
    ResourceFailed,
    ResourceDeleted,
    ResourceReleased,
    ResourcePhaseChanged,
    /// A generation missed its progress deadline and the agent went back to the known-good one.
    RolledBack,
    /// A generation missed its progress deadline and the agent stayed on it (policy `Hold`, or
    /// no known-good generation).
    ProgressDeadlineExceeded,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::ManifestAccepted => "ManifestAccepted",
            EventKind::ManifestRejected => "ManifestRejected",
            EventKind::ResourceCreated => "ResourceCreated",
            EventKind::ResourceAdopted => "ResourceAdopted",
            EventKind::ResourceUpdated => "ResourceUpdated",
            EventKind::ResourceRepaired => "ResourceRepaired",
            EventKind::ResourceFailed => "ResourceFailed",
            EventKind::ResourceDeleted => "ResourceDeleted",
            EventKind::ResourceReleased => "ResourceReleased",
            EventKind::ResourcePhaseChanged => "ResourcePhaseChanged",
            EventKind::RolledBack => "RolledBack",
            EventKind::ProgressDeadlineExceeded => "ProgressDeadlineExceeded",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event to append; the store assigns its seq and time.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub kind: EventKind,
    pub resource_id: Option<ResourceId>,
    pub message: String,
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredEvent {
    pub seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub kind: EventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<ResourceId>,
    pub message: String,
}

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store of agent {agent_id} is unusable: a writer panicked while holding its lock")]
    Poisoned { agent_id: AgentId },
    #[error("i/o on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt record in {path} at line {line}: {message}")]
    Corrupt {
        path: String,
        line: u64,
        message: String,
    },
}
