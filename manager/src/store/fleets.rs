//! The store's side of fleets (docs/fleets.md, "Manager"): the rows the HTTP API and the rollout
//! controller read and write, and the dispatch to PostgreSQL.
//!
//! Fleets live in PostgreSQL only. The memory store of `--dev` refuses fleet writes with
//! `StoreError::FleetsNeedPostgres` (`Store::fleets`) (a 409, never a 5xx) and has no fleet to read: a rollout
//! is driven by leases and transactions shared between replicas, which a single in-process map
//! would have to imitate with a second implementation of every step. Labels can be patched on
//! both stores.
//!
//! The store knows the rollout state only as JSON with a version: the rollout module owns its
//! meaning, and every write of it is a compare-and-set on the version, so an operator action and
//! the controller never overwrite each other.

use std::collections::BTreeMap;

use fleetlet_manifests::AgentId;
use fleetlet_manifests::api::PhaseCounts;
use time::OffsetDateTime;

use super::{NewEvent, NewManifest};

/// A fleet as stored: its newest revision and its rollout state.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredFleet {
    pub name: String,
    pub revision: u64,
    /// The fleet of the newest revision, as the operator wrote it.
    pub spec: serde_json::Value,
    /// The revision whose template the newest revision carries.
    pub content_revision: u64,
    pub rollout: serde_json::Value,
    /// Bumped by every write of `rollout`.
    pub rollout_version: u64,
    pub phase: String,
    pub updated_at: OffsetDateTime,
}

/// One stored revision of a fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredFleetRevision {
    pub revision: u64,
    pub content_revision: u64,
    pub spec: serde_json::Value,
    pub content_hash: String,
    pub created_at: OffsetDateTime,
    pub created_by: String,
}

/// A revision to store.
#[derive(Debug, Clone)]
pub struct NewFleetRevision {
    pub name: String,
    pub spec: serde_json::Value,
    /// Over the whole fleet: an identical PUT stores nothing.
    pub content_hash: String,
    /// Over what is rendered (template, parameters, signature): when it changes, a rollout starts.
    pub template_hash: String,
    pub created_by: String,
}

/// The rollout state for a new revision, given the current one (`None` for a new fleet) and the
/// revision to roll out: `(state, phase)`. Supplied by the rollout module.
pub type Supersede =
    fn(Option<&serde_json::Value>, u64, OffsetDateTime) -> (serde_json::Value, String);

/// What storing a revision did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutFleetOutcome {
    pub revision: u64,
    pub created: bool,
    /// The revision changed the template, so a rollout started.
    pub rollout: bool,
}

/// A device's row in a fleet, with what the controller needs to know of the agent.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetDeviceRow {
    pub agent_id: AgentId,
    pub state: String,
    pub revision_rendered: Option<u64>,
    pub generation: Option<u64>,
    pub state_revision: Option<u64>,
    pub batch: Option<u32>,
    pub detail: Option<String>,
    pub updated_at: OffsetDateTime,
    pub labels: BTreeMap<String, String>,
    pub health: DeviceHealth,
}

/// A device's row as the API's page of devices shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetDevicePageRow {
    pub agent_id: AgentId,
    pub state: String,
    pub revision_rendered: Option<u64>,
    pub generation: Option<u64>,
    pub batch: Option<u32>,
    pub detail: Option<String>,
    pub updated_at: OffsetDateTime,
}

/// The agent's side of a fleet device: its generations and its last report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceHealth {
    pub desired_generation: u64,
    pub last_seen_at: Option<OffsetDateTime>,
    pub manifest_generation: Option<u64>,
    pub observed_generation: Option<u64>,
    pub counts: PhaseCounts,
    pub manifest_rejected: bool,
    pub rolled_back: bool,
}

/// A change of a device's row that writes no manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceStateUpdate {
    pub agent_id: AgentId,
    pub state: String,
    pub state_revision: Option<u64>,
    pub batch: Option<u32>,
    pub detail: Option<String>,
}

/// A write of a fleet's rollout state, with the device rows and events that go with it.
#[derive(Debug, Clone)]
pub struct RolloutWrite<'a> {
    /// The version the state was read at (compare-and-set).
    pub version: u64,
    pub state: &'a serde_json::Value,
    pub phase: &'a str,
    pub devices: &'a [DeviceStateUpdate],
    pub events: Vec<NewEvent>,
    /// The controller's lease holder name; `None` for an operator's action.
    pub holder: Option<&'a str>,
}

/// A manifest rendered for a device of a fleet, to store with its row in one transaction.
#[derive(Debug, Clone)]
pub struct DeviceWrite {
    pub agent_id: AgentId,
    /// The content revision the manifest was rendered from.
    pub revision: u64,
    pub manifest: NewManifest,
    /// The batch of the rollout the write belongs to (`None`: outside batches, e.g. a newly
    /// selected device or a rollback).
    pub batch: Option<u32>,
}

/// What a batch of manifest writes gave one device (`PgStore::write_fleet_devices`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceWritten {
    pub agent_id: AgentId,
    pub revision: u64,
    pub batch: Option<u32>,
    /// The generation the row names now.
    pub generation: u64,
    pub content_hash: String,
    /// False when the manifest was the same as the device's current one: no new generation.
    pub created: bool,
}

/// The membership of one device after a selection pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Membership {
    pub agent_id: AgentId,
    /// Every fleet whose selector matches, in name order.
    pub fleets: Vec<String>,
}
