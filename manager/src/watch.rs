//! Wakes long-polls when an agent's manifest changes.
//!
//! Each agent with a waiting long-poll has a `tokio::sync::watch` channel whose value is a change
//! counter. A change only says "look again": the waiter re-reads the generation from the store,
//! which stays the single source of truth. Writes wake the channel directly on the replica that
//! made them, and through Postgres NOTIFY on every other replica (see `store::postgres`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

/// The per-agent wake-up channels of this process.
#[derive(Debug, Clone, Default)]
pub struct ManifestWatch {
    senders: Arc<Mutex<HashMap<String, watch::Sender<u64>>>>,
}

impl ManifestWatch {
    /// A receiver that sees a change whenever `wake` is called for this agent afterwards.
    pub fn subscribe(&self, agent_id: &str) -> watch::Receiver<u64> {
        let mut senders = self.senders.lock().unwrap_or_else(PoisonError::into_inner);
        match senders.get(agent_id) {
            Some(sender) => sender.subscribe(),
            None => {
                let (sender, receiver) = watch::channel(0);
                senders.insert(agent_id.to_owned(), sender);
                receiver
            }
        }
    }

    /// Wakes every long-poll of this agent.
    pub fn wake(&self, agent_id: &str) {
        let mut senders = self.senders.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sender) = senders.get(agent_id) {
            if sender.receiver_count() == 0 {
                // Nobody waits any more: drop the channel so the map stays as small as the set
                // of agents that are polling right now.
                senders.remove(agent_id);
            } else {
                sender.send_modify(|changes| *changes = changes.wrapping_add(1));
            }
        }
    }

    /// Wakes every long-poll, e.g. after notifications may have been missed.
    pub fn wake_all(&self) {
        let mut senders = self.senders.lock().unwrap_or_else(PoisonError::into_inner);
        senders.retain(|_, sender| sender.receiver_count() > 0);
        for sender in senders.values() {
            sender.send_modify(|changes| *changes = changes.wrapping_add(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wake_reaches_the_subscribers_of_that_agent_only() {
        let watch = ManifestWatch::default();
        let mut kitchen = watch.subscribe("kitchen");
        let mut garage = watch.subscribe("garage");
        watch.wake("kitchen");
        assert!(kitchen.has_changed().expect("sender alive"));
        assert!(!garage.has_changed().expect("sender alive"));
        watch.wake_all();
        garage.changed().await.expect("sender alive");
        kitchen.changed().await.expect("sender alive");
    }
}
