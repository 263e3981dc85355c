//! The in-memory store behind `--dev`: same rules as PostgreSQL, nothing survives a restart.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use fleetlet_manifests::api::{Event, EventType, StoreReadiness};
use fleetlet_manifests::{AgentId, AgentStatus};
use time::OffsetDateTime;

use super::{
    Contact, FleetQuery, FleetRow, NewEvent, NewManifest, PreviousReport, PutManifestOutcome,
    RepairMark, StoreError, StoredManifest, events_for_report, manifest_rejected, phase_counts,
    repair_events, rolled_back,
};
use crate::token::TokenHash;
use crate::watch::ManifestWatch;

/// What `/readyz` says about the memory store, so nobody mistakes it for a durable one.
pub const MEMORY_WARNING: &str =
    "running on the in-memory store (--dev): every manifest, status and event is lost on restart";

#[derive(Debug)]
struct MemoryAgent {
    labels: BTreeMap<String, String>,
    token_hash: Option<TokenHash>,
    last_seen_at: Option<OffsetDateTime>,
    last_report_seq: Option<u64>,
    decommissioned: bool,
    manifests: Vec<StoredManifest>,
    status: Option<AgentStatus>,
    events: Vec<Event>,
    /// Resource id → what `ResourceRepaired` events already said (as PostgreSQL keeps it in the
    /// resource's row).
    repair_marks: BTreeMap<String, RepairMark>,
}

impl MemoryAgent {
    fn generation(&self) -> u64 {
        self.manifests.last().map_or(0, |m| m.generation)
    }

    fn append(&mut self, event: NewEvent, now: OffsetDateTime) {
        let seq = self.events.last().map_or(1, |e| e.seq + 1);
        self.events.push(Event {
            seq,
            type_: event.type_,
            resource_id: event.resource_id,
            payload: event.payload,
            created_at: now,
        });
    }

    fn fleet_row(&self, agent_id: &AgentId) -> FleetRow {
        let counts = self
            .status
            .as_ref()
            .map(|status| phase_counts(&status.resources))
            .unwrap_or_default();
        FleetRow {
            agent_id: agent_id.clone(),
            labels: self.labels.clone(),
            desired_generation: self.generation(),
            last_seen_at: self.last_seen_at,
            observed_generation: self.status.as_ref().map(|s| s.observed_generation),
            counts,
            manifest_rejected: self
                .status
                .as_ref()
                .is_some_and(|s| manifest_rejected(&s.conditions)),
            rolled_back: self
                .status
                .as_ref()
                .is_some_and(|s| rolled_back(&s.conditions)),
        }
    }
}

/// The in-memory store. Clones share the same data.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    agents: Arc<Mutex<BTreeMap<AgentId, MemoryAgent>>>,
    watch: ManifestWatch,
}

impl MemoryStore {
    pub fn new(watch: ManifestWatch) -> Self {
        Self {
            agents: Arc::default(),
            watch,
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<AgentId, MemoryAgent>> {
        // A panic while holding the lock leaves plain data behind, still consistent enough to
        // serve a development store.
        self.agents.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn with_active<T>(
        &self,
        agent_id: &AgentId,
        f: impl FnOnce(&mut MemoryAgent) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut agents = self.lock();
        match agents.get_mut(agent_id) {
            Some(agent) if !agent.decommissioned => f(agent),
            _ => Err(StoreError::AgentNotFound(agent_id.clone())),
        }
    }

    pub async fn register_agent(
        &self,
        agent_id: &AgentId,
        labels: &BTreeMap<String, String>,
        token_hash: TokenHash,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let details = serde_json::json!({"labels": labels});
        self.insert_agent(agent_id, labels, token_hash, details, false, now)
    }

    pub async fn enroll_agent(
        &self,
        agent_id: &AgentId,
        labels: &BTreeMap<String, String>,
        token_hash: TokenHash,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        // Any known id, decommissioned or not, is taken (see the PostgreSQL store).
        let details = serde_json::json!({"labels": labels, "via": "enroll"});
        self.insert_agent(agent_id, labels, token_hash, details, true, now)
    }

    /// Registers `agent_id` under one lock: a new id, or (unless `known_is_taken`) a
    /// decommissioned one; an active id is `AgentExists`.
    fn insert_agent(
        &self,
        agent_id: &AgentId,
        labels: &BTreeMap<String, String>,
        token_hash: TokenHash,
        details: serde_json::Value,
        known_is_taken: bool,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let mut agents = self.lock();
        if known_is_taken && agents.contains_key(agent_id) {
            return Err(StoreError::AgentExists(agent_id.clone()));
        }
        let agent = agents
            .entry(agent_id.clone())
            .or_insert_with(|| MemoryAgent {
                labels: BTreeMap::new(),
                token_hash: None,
                last_seen_at: None,
                last_report_seq: None,
                decommissioned: true,
                manifests: Vec::new(),
                status: None,
                events: Vec::new(),
                repair_marks: BTreeMap::new(),
            });
        if !agent.decommissioned {
            return Err(StoreError::AgentExists(agent_id.clone()));
        }
        agent.decommissioned = false;
        agent.labels = labels.clone();
        agent.token_hash = Some(token_hash);
        agent.append(NewEvent::new(EventType::AgentRegistered, details), now);
        Ok(())
    }

    pub async fn rotate_token(
        &self,
        agent_id: &AgentId,
        token_hash: TokenHash,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.with_active(agent_id, |agent| {
            agent.token_hash = Some(token_hash);
            agent.append(
                NewEvent::new(EventType::TokenRotated, serde_json::json!({})),
                now,
            );
            Ok(())
        })
    }

    pub async fn decommission(
        &self,
        agent_id: &AgentId,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.with_active(agent_id, |agent| {
            agent.decommissioned = true;
            agent.token_hash = None;
            agent.append(
                NewEvent::new(EventType::AgentDecommissioned, serde_json::json!({})),
                now,
            );
            Ok(())
        })?;
        // A long-poll of a decommissioned agent should learn about it now, not at its timeout.
        self.watch.wake(agent_id.as_str());
        Ok(())
    }

    pub async fn agent_for_token(
        &self,
        token_hash: TokenHash,
    ) -> Result<Option<AgentId>, StoreError> {
        let agents = self.lock();
        Ok(agents
            .iter()
            .find(|(_, agent)| {
                !agent.decommissioned
                    && agent
                        .token_hash
                        .is_some_and(|stored| stored.matches(&token_hash))
            })
            .map(|(id, _)| id.clone()))
    }

    pub async fn put_manifest(
        &self,
        agent_id: &AgentId,
        manifest: NewManifest,
        now: OffsetDateTime,
    ) -> Result<PutManifestOutcome, StoreError> {
        let outcome = self.with_active(agent_id, |agent| {
            let current = agent.generation();
            if let Some(expected) = manifest.if_generation
                && expected != current
            {
                return Err(StoreError::GenerationMismatch { expected, current });
            }
            if let Some(latest) = agent.manifests.last()
                && latest.is_same_as(&manifest)
            {
                return Ok(PutManifestOutcome {
                    manifest: latest.clone(),
                    created: false,
                });
            }
            let stored = manifest.into_stored(current + 1, now);
            agent.manifests.push(stored.clone());
            agent.append(
                NewEvent::new(
                    EventType::ManifestUpdated,
                    serde_json::json!({"generation": stored.generation, "contentHash": stored.content_hash}),
                ),
                now,
            );
            Ok(PutManifestOutcome {
                manifest: stored,
                created: true,
            })
        })?;
        if outcome.created {
            self.watch.wake(agent_id.as_str());
        }
        Ok(outcome)
    }

    pub async fn current_generation(&self, agent_id: &AgentId) -> Result<u64, StoreError> {
        self.with_active(agent_id, |agent| Ok(agent.generation()))
    }

    pub async fn current_manifest(
        &self,
        agent_id: &AgentId,
    ) -> Result<Option<StoredManifest>, StoreError> {
        self.with_active(agent_id, |agent| Ok(agent.manifests.last().cloned()))
    }

    pub async fn manifest_history(
        &self,
        agent_id: &AgentId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<StoredManifest>, StoreError> {
        self.with_active(agent_id, |agent| {
            Ok(agent
                .manifests
                .iter()
                .rev()
                .filter(|m| before.is_none_or(|before| m.generation < before))
                .take(limit)
                .cloned()
                .collect())
        })
    }

    pub async fn report_status(
        &self,
        status: &AgentStatus,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        self.with_active(&status.agent_id, |agent| {
            if agent
                .last_report_seq
                .is_some_and(|seq| status.report_seq <= seq)
            {
                return Ok(false);
            }
            let previous = PreviousReport {
                observed_generation: agent.status.as_ref().map(|s| s.observed_generation),
                phases: agent
                    .status
                    .iter()
                    .flat_map(|s| s.resources.iter())
                    .map(|(id, r)| (id.to_string(), r.phase.as_str().to_owned()))
                    .collect(),
                rolled_back: agent
                    .status
                    .as_ref()
                    .is_some_and(|s| rolled_back(&s.conditions)),
                repairs: std::mem::take(&mut agent.repair_marks),
            };
            let (repaired, marks) = repair_events(&previous, status, now);
            for event in events_for_report(&previous, status)
                .into_iter()
                .chain(repaired)
            {
                agent.append(event, now);
            }
            agent.repair_marks = marks;
            agent.status = Some(status.clone());
            agent.last_report_seq = Some(status.report_seq);
            agent.last_seen_at = Some(now);
            Ok(true)
        })
    }

    pub async fn agent_contact(&self, agent_id: &AgentId) -> Result<Contact, StoreError> {
        self.with_active(agent_id, |agent| {
            Ok(Contact {
                report_seq: agent.last_report_seq,
                generation: agent.generation(),
            })
        })
    }

    pub async fn record_contacts(
        &self,
        contacts: &[(AgentId, OffsetDateTime)],
    ) -> Result<(), StoreError> {
        for (agent_id, at) in contacts {
            // An agent decommissioned since is simply skipped.
            let _ = self.with_active(agent_id, |agent| {
                agent.last_seen_at = agent.last_seen_at.max(Some(*at));
                Ok(())
            });
        }
        Ok(())
    }

    pub async fn status(
        &self,
        agent_id: &AgentId,
    ) -> Result<(FleetRow, Option<AgentStatus>), StoreError> {
        self.with_active(agent_id, |agent| {
            Ok((agent.fleet_row(agent_id), agent.status.clone()))
        })
    }

    pub async fn fleet(&self, query: &FleetQuery) -> Result<Vec<FleetRow>, StoreError> {
        let agents = self.lock();
        Ok(agents
            .iter()
            .filter(|(id, agent)| {
                !agent.decommissioned
                    && query.after.as_ref().is_none_or(|after| *id > after)
                    && query
                        .labels
                        .iter()
                        .all(|(key, value)| agent.labels.get(key) == Some(value))
                    && query.error_reason.as_deref().is_none_or(|wanted| {
                        agent.status.as_ref().is_some_and(|status| {
                            status.resources.values().any(|resource| {
                                resource
                                    .error
                                    .as_ref()
                                    .is_some_and(|error| error.reason.as_str() == wanted)
                            })
                        })
                    })
            })
            .take(query.limit)
            .map(|(id, agent)| agent.fleet_row(id))
            .collect())
    }

    pub async fn events(
        &self,
        agent_id: &AgentId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        self.with_active(agent_id, |agent| {
            Ok(agent
                .events
                .iter()
                .filter(|e| e.seq > after_seq)
                .take(limit)
                .cloned()
                .collect())
        })
    }

    /// Applies a merge patch to the agent's labels. The memory store has no fleets
    /// (`store::fleets`), so nothing else follows from it.
    pub fn patch_labels(
        &self,
        agent_id: &AgentId,
        patch: &BTreeMap<String, Option<String>>,
    ) -> Result<BTreeMap<String, String>, StoreError> {
        self.with_active(agent_id, |agent| {
            for (key, value) in patch {
                match value {
                    Some(value) => agent.labels.insert(key.clone(), value.clone()),
                    None => agent.labels.remove(key),
                };
            }
            Ok(agent.labels.clone())
        })
    }

    pub async fn readiness(&self) -> StoreReadiness {
        StoreReadiness {
            adapter: "memory".to_owned(),
            reachable: true,
            migration_ready: true,
            migration_version: None,
            failure_kind: None,
            database: None,
            warning: Some(MEMORY_WARNING.to_owned()),
        }
    }
}

#[cfg(test)]
mod tests;
