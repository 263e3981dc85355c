//! Agent contact without a report (a watch poll, a heartbeat), noted in memory and written to the
//! store in batches.
//!
//! Every agent's long-poll counts as a sign of life, so writing `last_seen_at` once per poll
//! would put one `UPDATE` (and one commit) on the database per poll; when thousands of agents
//! re-poll at the same moment (after a manager restart) those writes crowd out everything else.
//! A replica instead remembers the newest contact per agent and writes them all with one
//! statement a second. Staleness is measured in minutes, so a second's delay changes nothing; a
//! replica that dies loses at most that second of contact, which the agent's next poll restores.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fleetlet_manifests::AgentId;
use time::OffsetDateTime;

use crate::store::Store;

/// Contacts not yet written, newest per agent.
#[derive(Debug, Clone, Default)]
pub struct Contacts {
    pending: Arc<Mutex<HashMap<AgentId, OffsetDateTime>>>,
}

impl Contacts {
    /// Notes that `agent_id` made contact at `at`.
    pub fn note(&self, agent_id: &AgentId, at: OffsetDateTime) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let newest = pending.entry(agent_id.clone()).or_insert(at);
        *newest = (*newest).max(at);
    }

    /// Writes what is pending. On failure the contacts go back, so the next write retries them.
    pub async fn write(&self, store: &Store) {
        let batch: Vec<(AgentId, OffsetDateTime)> = {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            pending.drain().collect()
        };
        if batch.is_empty() {
            return;
        }
        if let Err(error) = store.record_contacts(&batch).await {
            tracing::warn!(%error, agents = batch.len(), "could not record agent contact; retrying");
            for (agent_id, at) in &batch {
                self.note(agent_id, *at);
            }
        }
    }
}

/// Writes pending contacts every `period` until `stop` turns true, then once more.
pub async fn write_contacts(
    contacts: Contacts,
    store: Store,
    period: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => contacts.write(&store).await,
            // The guard `wait_for` returns is not `Send`; only its arrival matters.
            _ = async { stop.wait_for(|stopping| *stopping).await.is_ok() } => {
                contacts.write(&store).await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests;
