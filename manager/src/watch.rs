//! Wakes long-polls when an agent's manifest changes, or when the manager shuts down.
//!
//! Each agent with a waiting long-poll has a `tokio::sync::Notify`. A wake only says "look
//! again": the waiter re-reads the generation from the store, which stays the single source of
//! truth. Writes wake the agent directly on the replica that made them, and through Postgres
//! NOTIFY on every other replica (see `store::postgres`).
//!
//! A `Notify` (tens of bytes) rather than a `watch` channel (hundreds, with its eight-way
//! notifier): a manager of a large fleet holds one per polling agent (BENCHMARKS.md, target 6).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

/// The per-agent wake-ups of this process.
#[derive(Debug, Clone, Default)]
pub struct ManifestWatch {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    agents: Mutex<HashMap<String, Arc<Notify>>>,
    closing: AtomicBool,
}

impl ManifestWatch {
    /// The wake-up of this agent. A waiter registers with [`Notify::notified`] and
    /// `Notified::enable` *before* it reads the generation, so that a write landing between
    /// the read and the wait still wakes it.
    pub fn subscribe(&self, agent_id: &str) -> Arc<Notify> {
        let mut agents = self.agents();
        match agents.get(agent_id) {
            Some(notify) => Arc::clone(notify),
            None => {
                let notify = Arc::new(Notify::new());
                agents.insert(agent_id.to_owned(), Arc::clone(&notify));
                notify
            }
        }
    }

    /// Wakes every long-poll of this agent.
    pub fn wake(&self, agent_id: &str) {
        let mut agents = self.agents();
        if let Some(notify) = agents.get(agent_id) {
            if Arc::strong_count(notify) == 1 {
                // Nobody waits any more: drop the entry so the map stays as small as the set of
                // agents that are polling right now.
                agents.remove(agent_id);
            } else {
                notify.notify_waiters();
            }
        }
    }

    /// Wakes every long-poll, e.g. after notifications may have been missed.
    pub fn wake_all(&self) {
        let mut agents = self.agents();
        agents.retain(|_, notify| Arc::strong_count(notify) > 1);
        for notify in agents.values() {
            notify.notify_waiters();
        }
    }

    /// The manager is shutting down: every long-poll, waiting now or starting later, answers at
    /// once instead of holding the drain.
    pub fn close(&self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        self.wake_all();
    }

    /// Whether [`Self::close`] was called. A waiter checks it after registering its wake-up and
    /// before it waits, so a close cannot slip between the two.
    pub fn is_closing(&self) -> bool {
        self.shared.closing.load(Ordering::SeqCst)
    }

    fn agents(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Notify>>> {
        self.shared
            .agents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests;
