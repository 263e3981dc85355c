//! A store for tests whose writes fail on demand, the way a full disk fails them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use fleetlet_manifests::{AgentId, AgentManifest, AgentStatus, ResourceId};

use super::{
    AgentRecord, MemoryStore, NewEvent, OwnershipRecord, ResourceState, RolloutState, Store,
    StoreError, StoredEvent,
};

/// A [`MemoryStore`] whose writes (and flush) fail with `ENOSPC` while [`FailingStore::fail`]
/// is on; reads always work.
#[derive(Debug)]
pub struct FailingStore {
    inner: MemoryStore,
    failing: AtomicBool,
}

impl FailingStore {
    pub fn new(agent_id: AgentId) -> Self {
        Self {
            inner: MemoryStore::new(agent_id),
            failing: AtomicBool::new(false),
        }
    }

    /// Turns failing writes on or off.
    pub fn fail(&self, on: bool) {
        self.failing.store(on, Ordering::SeqCst);
    }

    fn check(&self, what: &str) -> Result<(), StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::Io {
                path: format!("/test/{what}"),
                source: std::io::Error::from_raw_os_error(28),
            });
        }
        Ok(())
    }
}

impl Store for FailingStore {
    fn agent_id(&self) -> &AgentId {
        self.inner.agent_id()
    }
    fn load_agent_record(&self) -> Result<Option<AgentRecord>, StoreError> {
        self.inner.load_agent_record()
    }
    fn save_agent_record(&self, record: &AgentRecord) -> Result<(), StoreError> {
        self.check("agent.json")?;
        self.inner.save_agent_record(record)
    }
    fn load_manifest(&self) -> Result<Option<AgentManifest>, StoreError> {
        self.inner.load_manifest()
    }
    fn save_manifest(&self, manifest: &AgentManifest) -> Result<(), StoreError> {
        self.check("manifest.json")?;
        self.inner.save_manifest(manifest)
    }
    fn load_rollout(&self) -> Result<RolloutState, StoreError> {
        self.inner.load_rollout()
    }
    fn save_rollout(&self, rollout: &RolloutState) -> Result<(), StoreError> {
        self.check("rollout.json")?;
        self.inner.save_rollout(rollout)
    }
    fn ownership_records(&self) -> Result<BTreeMap<ResourceId, OwnershipRecord>, StoreError> {
        self.inner.ownership_records()
    }
    fn save_ownership_record(
        &self,
        id: &ResourceId,
        record: &OwnershipRecord,
    ) -> Result<(), StoreError> {
        self.check("resources.jsonl")?;
        self.inner.save_ownership_record(id, record)
    }
    fn remove_ownership_record(&self, id: &ResourceId) -> Result<(), StoreError> {
        self.check("resources.jsonl")?;
        self.inner.remove_ownership_record(id)
    }
    fn resource_states(&self) -> Result<BTreeMap<ResourceId, ResourceState>, StoreError> {
        self.inner.resource_states()
    }
    fn save_resource_state(
        &self,
        id: &ResourceId,
        state: &ResourceState,
    ) -> Result<(), StoreError> {
        self.check("resources.jsonl")?;
        self.inner.save_resource_state(id, state)
    }
    fn remove_resource_state(&self, id: &ResourceId) -> Result<(), StoreError> {
        self.check("resources.jsonl")?;
        self.inner.remove_resource_state(id)
    }
    fn append_event(&self, event: NewEvent) -> Result<u64, StoreError> {
        self.check("events.jsonl")?;
        self.inner.append_event(event)
    }
    fn read_events(&self, after_seq: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        self.inner.read_events(after_seq, limit)
    }
    fn read_resource_events(
        &self,
        id: &ResourceId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.inner.read_resource_events(id, after_seq, limit)
    }
    fn load_status(&self) -> Result<Option<AgentStatus>, StoreError> {
        self.inner.load_status()
    }
    fn save_status(&self, status: &AgentStatus) -> Result<(), StoreError> {
        self.check("status.json")?;
        self.inner.save_status(status)
    }
    fn enqueue_report(&self, status: &AgentStatus) -> Result<(), StoreError> {
        self.check("outbox.jsonl")?;
        self.inner.enqueue_report(status)
    }
    fn pending_report(&self) -> Result<Option<AgentStatus>, StoreError> {
        self.inner.pending_report()
    }
    fn acknowledge_report(&self, report_seq: u64) -> Result<(), StoreError> {
        self.check("outbox.jsonl")?;
        self.inner.acknowledge_report(report_seq)
    }
    fn last_report_seq(&self) -> Result<u64, StoreError> {
        self.inner.last_report_seq()
    }
    fn save_last_report_seq(&self, report_seq: u64) -> Result<(), StoreError> {
        self.check("seq.json")?;
        self.inner.save_last_report_seq(report_seq)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.check("resources.jsonl")?;
        self.inner.flush()
    }
    fn states_revision(&self) -> Option<u64> {
        self.inner.states_revision()
    }
}
