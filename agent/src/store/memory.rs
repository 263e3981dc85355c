//! The memory store: everything in one mutex, gone when the process exits.
//!
//! Always built (it needs no dependency), used by tests and by agents started without a
//! persistent store. Event logs are capped so that a long-running agent cannot grow without bound.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use fleetlet_manifests::{AgentId, AgentManifest, AgentStatus, ResourceId};
use time::OffsetDateTime;

use super::{
    AgentRecord, MAX_EVENTS_PER_READ, NewEvent, OwnershipRecord, ResourceState, RolloutState,
    Store, StoreError, StoredEvent,
};

/// How many events the memory store keeps; older ones are dropped first.
pub const MEMORY_EVENT_CAPACITY: usize = 10_000;

#[derive(Debug)]
pub struct MemoryStore {
    agent_id: AgentId,
    inner: Mutex<Contents>,
}

#[derive(Debug, Default)]
struct Contents {
    agent_record: Option<AgentRecord>,
    manifest: Option<AgentManifest>,
    rollout: RolloutState,
    records: BTreeMap<ResourceId, OwnershipRecord>,
    states: BTreeMap<ResourceId, ResourceState>,
    /// Counts the calls that changed `states`.
    states_revision: u64,
    events: VecDeque<StoredEvent>,
    last_event_seq: u64,
    status: Option<AgentStatus>,
    outbox: Option<AgentStatus>,
    last_report_seq: u64,
}

impl MemoryStore {
    pub fn new(agent_id: AgentId) -> Self {
        Self {
            agent_id,
            inner: Mutex::new(Contents::default()),
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, Contents>, StoreError> {
        self.inner.lock().map_err(|_| StoreError::Poisoned {
            agent_id: self.agent_id.clone(),
        })
    }
}

fn page(
    events: &VecDeque<StoredEvent>,
    after_seq: u64,
    limit: usize,
    keep: impl Fn(&StoredEvent) -> bool,
) -> Vec<StoredEvent> {
    events
        .iter()
        .filter(|e| e.seq > after_seq && keep(e))
        .take(limit.min(MAX_EVENTS_PER_READ))
        .cloned()
        .collect()
}

impl Store for MemoryStore {
    fn agent_id(&self) -> &AgentId {
        &self.agent_id
    }

    fn load_agent_record(&self) -> Result<Option<AgentRecord>, StoreError> {
        Ok(self.lock()?.agent_record.clone())
    }

    fn save_agent_record(&self, record: &AgentRecord) -> Result<(), StoreError> {
        self.lock()?.agent_record = Some(record.clone());
        Ok(())
    }

    fn load_manifest(&self) -> Result<Option<AgentManifest>, StoreError> {
        Ok(self.lock()?.manifest.clone())
    }

    fn save_manifest(&self, manifest: &AgentManifest) -> Result<(), StoreError> {
        self.lock()?.manifest = Some(manifest.clone());
        Ok(())
    }

    fn load_rollout(&self) -> Result<RolloutState, StoreError> {
        Ok(self.lock()?.rollout.clone())
    }

    fn save_rollout(&self, rollout: &RolloutState) -> Result<(), StoreError> {
        self.lock()?.rollout = rollout.clone();
        Ok(())
    }

    fn ownership_records(&self) -> Result<BTreeMap<ResourceId, OwnershipRecord>, StoreError> {
        Ok(self.lock()?.records.clone())
    }

    fn save_ownership_record(
        &self,
        id: &ResourceId,
        record: &OwnershipRecord,
    ) -> Result<(), StoreError> {
        self.lock()?.records.insert(id.clone(), record.clone());
        Ok(())
    }

    fn remove_ownership_record(&self, id: &ResourceId) -> Result<(), StoreError> {
        self.lock()?.records.remove(id);
        Ok(())
    }

    fn resource_states(&self) -> Result<BTreeMap<ResourceId, ResourceState>, StoreError> {
        Ok(self.lock()?.states.clone())
    }

    fn save_resource_state(
        &self,
        id: &ResourceId,
        state: &ResourceState,
    ) -> Result<(), StoreError> {
        let mut contents = self.lock()?;
        if contents.states.get(id) != Some(state) {
            contents.states.insert(id.clone(), state.clone());
            contents.states_revision += 1;
        }
        Ok(())
    }

    fn remove_resource_state(&self, id: &ResourceId) -> Result<(), StoreError> {
        let mut contents = self.lock()?;
        if contents.states.remove(id).is_some() {
            contents.states_revision += 1;
        }
        Ok(())
    }

    fn states_revision(&self) -> Option<u64> {
        Some(self.lock().ok()?.states_revision)
    }

    fn append_event(&self, event: NewEvent) -> Result<u64, StoreError> {
        let mut contents = self.lock()?;
        contents.last_event_seq += 1;
        let seq = contents.last_event_seq;
        contents.events.push_back(StoredEvent {
            seq,
            at: OffsetDateTime::now_utc(),
            kind: event.kind,
            resource_id: event.resource_id,
            message: event.message,
        });
        while contents.events.len() > MEMORY_EVENT_CAPACITY {
            contents.events.pop_front();
        }
        Ok(seq)
    }

    fn read_events(&self, after_seq: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        Ok(page(&self.lock()?.events, after_seq, limit, |_| true))
    }

    fn read_resource_events(
        &self,
        id: &ResourceId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        Ok(page(&self.lock()?.events, after_seq, limit, |e| {
            e.resource_id.as_ref() == Some(id)
        }))
    }

    fn load_status(&self) -> Result<Option<AgentStatus>, StoreError> {
        Ok(self.lock()?.status.clone())
    }

    fn save_status(&self, status: &AgentStatus) -> Result<(), StoreError> {
        self.lock()?.status = Some(status.clone());
        Ok(())
    }

    fn enqueue_report(&self, status: &AgentStatus) -> Result<(), StoreError> {
        self.lock()?.outbox = Some(status.clone());
        Ok(())
    }

    fn pending_report(&self) -> Result<Option<AgentStatus>, StoreError> {
        Ok(self.lock()?.outbox.clone())
    }

    fn acknowledge_report(&self, report_seq: u64) -> Result<(), StoreError> {
        let mut contents = self.lock()?;
        if contents
            .outbox
            .as_ref()
            .is_some_and(|pending| pending.report_seq <= report_seq)
        {
            contents.outbox = None;
        }
        Ok(())
    }

    fn last_report_seq(&self) -> Result<u64, StoreError> {
        Ok(self.lock()?.last_report_seq)
    }

    fn save_last_report_seq(&self, report_seq: u64) -> Result<(), StoreError> {
        let mut contents = self.lock()?;
        contents.last_report_seq = contents.last_report_seq.max(report_seq);
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
