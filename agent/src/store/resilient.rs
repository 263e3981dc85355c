//! A store that keeps the agent converging when its disk cannot be written.
//!
//! [`ResilientStore`] wraps the real store (the filesystem store in the agent). While the inner
//! store saves what it is given, every call goes straight through. The first write that fails (a
//! full state dir, an fsync's `EIO`) is kept in memory instead of failing its caller, and from
//! then on the store is *faulted*: every write is kept in memory (the newest value per record,
//! per resource, and the outbox; events in order, at most [`MAX_PENDING_EVENTS`]), reads answer
//! from what waits before what is on disk, and [`Store::fault`] says why. [`Store::flush`] (the
//! end of every pass, and the engine's retry timer while faulted) writes what waits in the order
//! it was written in kind (agent record, rollout state, manifest, ownership records, resource
//! states, events, status, outbox, report seq), then flushes the inner store; once all of it
//! succeeds the fault ends.
//!
//! So a received manifest is never dropped because it could not be saved: the engine converges
//! to it from memory, reports the fault as its `Degraded` condition (`DiskFull` or
//! `StoreUnavailable`), and saves it as soon as the disk allows. What a crash loses while faulted
//! is what waits here: the agent starts again from what is on disk (the last manifest saved), and
//! the manager sends the newer generation again. docs/agent-store.md argues what that means for
//! rollouts and ownership.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use fleetlet_manifests::{AgentId, AgentManifest, AgentStatus, ResourceId};
use time::OffsetDateTime;

use super::{
    AgentRecord, NewEvent, OwnershipRecord, ResourceState, RolloutState, Store, StoreError,
    StoreFault, StoredEvent,
};

/// Events kept while the store is faulted; older ones are dropped first (they are in the log).
pub const MAX_PENDING_EVENTS: usize = 1000;

/// See the module documentation.
#[derive(Debug)]
pub struct ResilientStore {
    inner: Arc<dyn Store>,
    pending: Mutex<Pending>,
}

/// What waits to be written, and why. Invariant: nothing waits while `fault` is `None`.
#[derive(Debug, Default)]
struct Pending {
    fault: Option<StoreFault>,
    agent_record: Option<AgentRecord>,
    rollout: Option<RolloutState>,
    manifest: Option<AgentManifest>,
    /// `None` values are removals.
    records: BTreeMap<ResourceId, Option<OwnershipRecord>>,
    states: BTreeMap<ResourceId, Option<ResourceState>>,
    events: VecDeque<NewEvent>,
    dropped_events: u64,
    status: Option<AgentStatus>,
    /// Reports up to this seq were acknowledged; the inner outbox is cleared when it can be.
    acknowledged: Option<u64>,
    outbox: Option<AgentStatus>,
    report_seq: Option<u64>,
    /// Counts the changes of `states`, which [`Store::states_revision`] adds to the inner one.
    revision: u64,
}

impl Pending {
    fn waiting(&self) -> usize {
        [
            self.agent_record.is_some(),
            self.rollout.is_some(),
            self.manifest.is_some(),
            self.status.is_some(),
            self.acknowledged.is_some(),
            self.outbox.is_some(),
            self.report_seq.is_some(),
        ]
        .into_iter()
        .filter(|waits| *waits)
        .count()
            + self.records.len()
            + self.states.len()
            + self.events.len()
    }
}

impl ResilientStore {
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            pending: Mutex::new(Pending::default()),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<dyn Store> {
        &self.inner
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        // Nothing here panics while holding the lock; a poisoned one still holds consistent data.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes a failed write: the store is faulted from now on (the first failure is the one
    /// reported until the fault ends).
    fn fail(pending: &mut Pending, error: &StoreError) {
        if pending.fault.is_none() {
            tracing::error!(%error, "the local store cannot save; keeping what it was given in memory and retrying");
            pending.fault = Some(StoreFault::of(error, OffsetDateTime::now_utc()));
        } else {
            tracing::debug!(%error, "the local store still cannot save");
        }
    }

    /// Writes through while healthy; keeps the value (through `keep`) when faulted or when the
    /// write fails.
    fn write(
        &self,
        save: impl FnOnce(&dyn Store) -> Result<(), StoreError>,
        keep: impl FnOnce(&mut Pending),
    ) -> Result<(), StoreError> {
        let mut pending = self.lock();
        if pending.fault.is_none() {
            match save(&*self.inner) {
                Ok(()) => return Ok(()),
                Err(error) => Self::fail(&mut pending, &error),
            }
        }
        keep(&mut pending);
        Ok(())
    }

    /// Writes everything that waits, in order, then flushes the inner store. Stops at the first
    /// failure (the rest waits for the next try); ends the fault when all of it succeeded.
    fn drain(&self, pending: &mut Pending) -> Result<(), StoreError> {
        let inner = &*self.inner;
        if let Some(record) = &pending.agent_record {
            inner.save_agent_record(record)?;
            pending.agent_record = None;
        }
        if let Some(rollout) = &pending.rollout {
            inner.save_rollout(rollout)?;
            pending.rollout = None;
        }
        if let Some(manifest) = &pending.manifest {
            inner.save_manifest(manifest)?;
            pending.manifest = None;
        }
        while let Some((id, record)) = pending.records.first_key_value() {
            match record {
                Some(record) => inner.save_ownership_record(id, record)?,
                None => inner.remove_ownership_record(id)?,
            }
            pending.records.pop_first();
        }
        while let Some((id, state)) = pending.states.first_key_value() {
            match state {
                Some(state) => inner.save_resource_state(id, state)?,
                None => inner.remove_resource_state(id)?,
            }
            pending.states.pop_first();
            pending.revision += 1;
        }
        while let Some(event) = pending.events.front() {
            inner.append_event(event.clone())?;
            pending.events.pop_front();
        }
        if let Some(status) = &pending.status {
            inner.save_status(status)?;
            pending.status = None;
        }
        if let Some(seq) = pending.acknowledged {
            inner.acknowledge_report(seq)?;
            pending.acknowledged = None;
        }
        if let Some(report) = &pending.outbox {
            inner.enqueue_report(report)?;
            pending.outbox = None;
        }
        if let Some(seq) = pending.report_seq {
            inner.save_last_report_seq(seq)?;
            pending.report_seq = None;
        }
        inner.flush()
    }
}

impl Store for ResilientStore {
    fn agent_id(&self) -> &AgentId {
        self.inner.agent_id()
    }

    fn load_agent_record(&self) -> Result<Option<AgentRecord>, StoreError> {
        match self.lock().agent_record.clone() {
            Some(record) => Ok(Some(record)),
            None => self.inner.load_agent_record(),
        }
    }

    fn save_agent_record(&self, record: &AgentRecord) -> Result<(), StoreError> {
        self.write(
            |inner| inner.save_agent_record(record),
            |pending| pending.agent_record = Some(record.clone()),
        )
    }

    fn load_manifest(&self) -> Result<Option<AgentManifest>, StoreError> {
        match self.lock().manifest.clone() {
            Some(manifest) => Ok(Some(manifest)),
            None => self.inner.load_manifest(),
        }
    }

    fn save_manifest(&self, manifest: &AgentManifest) -> Result<(), StoreError> {
        self.write(
            |inner| inner.save_manifest(manifest),
            |pending| pending.manifest = Some(manifest.clone()),
        )
    }

    fn load_rollout(&self) -> Result<RolloutState, StoreError> {
        match self.lock().rollout.clone() {
            Some(rollout) => Ok(rollout),
            None => self.inner.load_rollout(),
        }
    }

    fn save_rollout(&self, rollout: &RolloutState) -> Result<(), StoreError> {
        self.write(
            |inner| inner.save_rollout(rollout),
            |pending| pending.rollout = Some(rollout.clone()),
        )
    }

    fn ownership_records(&self) -> Result<BTreeMap<ResourceId, OwnershipRecord>, StoreError> {
        let pending = self.lock();
        let mut records = self.inner.ownership_records()?;
        for (id, record) in &pending.records {
            match record {
                Some(record) => records.insert(id.clone(), record.clone()),
                None => records.remove(id),
            };
        }
        Ok(records)
    }

    fn save_ownership_record(
        &self,
        id: &ResourceId,
        record: &OwnershipRecord,
    ) -> Result<(), StoreError> {
        self.write(
            |inner| inner.save_ownership_record(id, record),
            |pending| {
                pending.records.insert(id.clone(), Some(record.clone()));
            },
        )
    }

    fn remove_ownership_record(&self, id: &ResourceId) -> Result<(), StoreError> {
        self.write(
            |inner| inner.remove_ownership_record(id),
            |pending| {
                pending.records.insert(id.clone(), None);
            },
        )
    }

    fn resource_states(&self) -> Result<BTreeMap<ResourceId, ResourceState>, StoreError> {
        let pending = self.lock();
        let mut states = self.inner.resource_states()?;
        for (id, state) in &pending.states {
            match state {
                Some(state) => states.insert(id.clone(), state.clone()),
                None => states.remove(id),
            };
        }
        Ok(states)
    }

    fn save_resource_state(
        &self,
        id: &ResourceId,
        state: &ResourceState,
    ) -> Result<(), StoreError> {
        self.write(
            |inner| inner.save_resource_state(id, state),
            |pending| {
                pending.states.insert(id.clone(), Some(state.clone()));
                pending.revision += 1;
            },
        )
    }

    fn remove_resource_state(&self, id: &ResourceId) -> Result<(), StoreError> {
        self.write(
            |inner| inner.remove_resource_state(id),
            |pending| {
                pending.states.insert(id.clone(), None);
                pending.revision += 1;
            },
        )
    }

    /// While faulted the event waits (it has no seq yet, and 0 is returned); the local event
    /// log shows it once it is written.
    fn append_event(&self, event: NewEvent) -> Result<u64, StoreError> {
        let mut pending = self.lock();
        if pending.fault.is_none() {
            match self.inner.append_event(event.clone()) {
                Ok(seq) => return Ok(seq),
                Err(error) => Self::fail(&mut pending, &error),
            }
        }
        pending.events.push_back(event);
        if pending.events.len() > MAX_PENDING_EVENTS {
            pending.events.pop_front();
            pending.dropped_events += 1;
        }
        Ok(0)
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
        match self.lock().status.clone() {
            Some(status) => Ok(Some(status)),
            None => self.inner.load_status(),
        }
    }

    fn save_status(&self, status: &AgentStatus) -> Result<(), StoreError> {
        self.write(
            |inner| inner.save_status(status),
            |pending| pending.status = Some(status.clone()),
        )
    }

    fn enqueue_report(&self, status: &AgentStatus) -> Result<(), StoreError> {
        self.write(
            |inner| inner.enqueue_report(status),
            |pending| pending.outbox = Some(status.clone()),
        )
    }

    fn pending_report(&self) -> Result<Option<AgentStatus>, StoreError> {
        let pending = self.lock();
        if let Some(report) = &pending.outbox {
            return Ok(Some(report.clone()));
        }
        let acknowledged = pending.acknowledged;
        Ok(self
            .inner
            .pending_report()?
            .filter(|report| acknowledged.is_none_or(|seq| report.report_seq > seq)))
    }

    fn acknowledge_report(&self, report_seq: u64) -> Result<(), StoreError> {
        {
            let mut pending = self.lock();
            if pending
                .outbox
                .as_ref()
                .is_some_and(|report| report.report_seq <= report_seq)
            {
                pending.outbox = None;
            }
        }
        self.write(
            |inner| inner.acknowledge_report(report_seq),
            |pending| {
                pending.acknowledged = Some(pending.acknowledged.unwrap_or(0).max(report_seq));
            },
        )
    }

    fn last_report_seq(&self) -> Result<u64, StoreError> {
        let waiting = self.lock().report_seq.unwrap_or(0);
        Ok(self.inner.last_report_seq()?.max(waiting))
    }

    /// While faulted the seq is kept in memory only. A restart before it is written still hands
    /// out higher seqs: a seq is at least the time in microseconds (`status::next_report_seq`).
    fn save_last_report_seq(&self, report_seq: u64) -> Result<(), StoreError> {
        self.write(
            |inner| inner.save_last_report_seq(report_seq),
            |pending| {
                pending.report_seq = Some(pending.report_seq.unwrap_or(0).max(report_seq));
            },
        )
    }

    /// Retries what waits (see [`ResilientStore`]). Never fails for a write that fails again:
    /// that is the fault [`Store::fault`] reports.
    fn flush(&self) -> Result<(), StoreError> {
        let mut pending = self.lock();
        let was_faulted = pending.fault.is_some();
        let waiting = pending.waiting();
        match self.drain(&mut pending) {
            Ok(()) => {
                if was_faulted {
                    tracing::info!(
                        saved = waiting,
                        dropped_events = pending.dropped_events,
                        "the local store saves again; everything kept in memory is written"
                    );
                }
                pending.fault = None;
                pending.dropped_events = 0;
            }
            Err(error) => Self::fail(&mut pending, &error),
        }
        Ok(())
    }

    fn states_revision(&self) -> Option<u64> {
        let own = self.lock().revision;
        Some(self.inner.states_revision()?.wrapping_add(own))
    }

    fn fault(&self) -> Option<StoreFault> {
        self.lock().fault.clone()
    }
}

#[cfg(test)]
mod tests;
