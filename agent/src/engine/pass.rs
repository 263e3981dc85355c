//! One pass: deletes of what is owned but no longer desired, then the applies, kind by kind, then
//! the states, events and rollout bookkeeping they leave behind.

use std::collections::BTreeMap;

use fleetlet_manifests::{
    ErrorReason, Kind, Phase, Resource, ResourceError, ResourceId, ResourceStatus,
};
use time::OffsetDateTime;

use super::{Engine, EngineError, PassOutcome, PendingEvent};
use crate::reconcile::{
    Applied, Change, Deleted, Desired, KnownSpec, Reconcile, ReconcileError, Retry,
};
use crate::shutdown::ShutdownSignal;
use crate::status;
use crate::store::{EventKind, OwnershipRecord, ResourceState};

impl<R: Reconcile> Engine<R> {
    /// One full pass over the current manifest (or, with none, over what is owned: nothing is
    /// deleted before a first manifest arrives, since an empty desired state is not the same as
    /// an unknown one).
    pub async fn pass(&mut self, shutdown: &ShutdownSignal) -> Result<PassOutcome, EngineError> {
        let now = self.settings.clock.now();
        // At the start, so that the pass that runs at a deadline (the run loop wakes up for it,
        // and `--once` runs just one) already converges to where the decision points.
        self.check_deadline(now)?;
        let Some((generation, manifest)) = self
            .desired()
            .map(|desired| (desired.generation, desired.manifest.clone()))
        else {
            return Ok(PassOutcome {
                complete: true,
                next_retry: None,
            });
        };
        let spec_hashes = self.desired_spec_hashes();
        // `states` is kept equal to what the store holds through the pass, and `records` for
        // resources not desired (all a pass changes of theirs is removing them), so that neither
        // is read again.
        let mut records = self.store.ownership_records()?;
        let mut states = self.store.resource_states()?;
        let desired: BTreeMap<&ResourceId, (&Resource, &str)> = manifest
            .resources
            .iter()
            .zip(spec_hashes.iter())
            .map(|(r, hash)| (&r.id, (r, hash.as_str())))
            .collect();
        let mut events: Vec<PendingEvent> = Vec::new();
        let mut complete = true;

        // Deletes first, in reverse kind order: what depends on others goes away first, and a
        // path or name freed by one resource can be taken by another in the same pass.
        for kind in Kind::ALL.into_iter().rev() {
            let to_delete: Vec<(ResourceId, OwnershipRecord)> = records
                .iter()
                .filter(|(id, record)| {
                    record.kind == kind
                        && desired
                            .get(id)
                            .is_none_or(|(r, _)| r.spec.known_kind() != Some(kind))
                        && !(self.failed_deletes.contains(*id)
                            && backing_off(states.get(*id), None, now))
                })
                .map(|(id, record)| (id.clone(), record.clone()))
                .collect();
            if shutdown.is_triggered() {
                complete = false;
                break;
            }
            let results = self.run_deletes(to_delete, shutdown).await;
            for (id, record, result) in results {
                let previous = states.remove(&id);
                match result {
                    Ok(deleted) => {
                        self.failed_deletes.remove(&id);
                        self.store.remove_ownership_record(&id)?;
                        records.remove(&id);
                        self.store.remove_resource_state(&id)?;
                        let (event, message) = match deleted {
                            Deleted::Removed => (EventKind::ResourceDeleted, "removed".to_owned()),
                            Deleted::AlreadyGone => {
                                (EventKind::ResourceDeleted, "was already gone".to_owned())
                            }
                            Deleted::Released { why } => (EventKind::ResourceReleased, why),
                        };
                        events.push((event, id, message));
                    }
                    Err(error) => {
                        self.failed_deletes.insert(id.clone());
                        let state = self.failed_state(
                            previous.as_ref(),
                            record.kind.as_str(),
                            Some(record.spec_hash.clone()),
                            record.generation,
                            &error,
                            Retry::Backoff,
                        );
                        self.note_failure(&id, previous.as_ref(), &state, &error, &mut events);
                        self.store.save_resource_state(&id, &state)?;
                        states.insert(id, state);
                    }
                }
            }
        }

        // What no record covers but the reconcilers still find of resources gone from the
        // manifest (a session directory whose first apply failed) is collected after the deletes.
        if complete {
            for (id, message) in self.reconcilers.collect_garbage(&manifest.resources).await {
                events.push((EventKind::ResourceDeleted, id, message));
            }
        }

        // Then applies, in kind order.
        for kind in Kind::ALL {
            if shutdown.is_triggered() {
                complete = false;
                break;
            }
            let to_apply: Vec<Desired> = manifest
                .resources
                .iter()
                .zip(spec_hashes.iter())
                .filter(|(r, _)| r.spec.known_kind() == Some(kind))
                .filter(|(r, hash)| !backing_off(states.get(&r.id), Some(hash), now))
                .filter_map(|(r, hash)| {
                    Some(Desired {
                        id: r.id.clone(),
                        spec: KnownSpec::of(&r.spec)?,
                        spec_hash: hash.clone(),
                        previous: records.get(&r.id).filter(|rec| rec.kind == kind).cloned(),
                    })
                })
                .collect();
            let results = self.run_applies(to_apply, shutdown).await;
            for (done, outcome) in results {
                let id = done.id.clone();
                // The hash the engine cached for the very spec that was applied.
                let spec_hash = done.spec_hash.clone();
                // Taken out: the new state goes back in below.
                let previous = states.remove(&id);
                let state = match outcome.result {
                    Ok(applied) => {
                        self.store.save_ownership_record(
                            &id,
                            &OwnershipRecord {
                                kind,
                                spec_hash: spec_hash.clone(),
                                generation,
                                owned: applied.owned.clone(),
                            },
                        )?;
                        if let Some(event) = change_event(&applied) {
                            events.push((event.0, id.clone(), event.1));
                        }
                        let state = ResourceState {
                            status: ResourceStatus {
                                kind: kind.as_str().to_owned(),
                                phase: Phase::Ready,
                                since: since(previous.as_ref(), Phase::Ready, now),
                                generation,
                                spec_hash: Some(spec_hash),
                                error: None,
                                retry_after: None,
                                details: applied.details,
                                repairs: status::repairs_after(
                                    previous.as_ref(),
                                    &applied.change,
                                    self.settings.clock.now(),
                                ),
                            },
                            consecutive_failures: 0,
                        };
                        if previous
                            .as_ref()
                            .is_some_and(|p| p.status.phase != Phase::Ready)
                        {
                            events.push((
                                EventKind::ResourcePhaseChanged,
                                id.clone(),
                                "phase is now Ready".into(),
                            ));
                        }
                        state
                    }
                    Err(error) => {
                        let state = self.failed_state(
                            previous.as_ref(),
                            kind.as_str(),
                            Some(spec_hash),
                            generation,
                            &error,
                            outcome.retry,
                        );
                        self.note_failure(&id, previous.as_ref(), &state, &error, &mut events);
                        state
                    }
                };
                self.store.save_resource_state(&id, &state)?;
                states.insert(id, state);
            }
        }

        // Kinds this build does not know: reported, never touched.
        for (resource, spec_hash) in manifest
            .resources
            .iter()
            .zip(spec_hashes.iter())
            .filter(|(r, _)| r.spec.known_kind().is_none())
        {
            let previous = states.get(&resource.id);
            let state = ResourceState {
                status: ResourceStatus {
                    kind: resource.kind().to_owned(),
                    phase: Phase::Unsupported,
                    since: since(previous, Phase::Unsupported, now),
                    generation,
                    spec_hash: Some(spec_hash.clone()),
                    error: Some(ResourceError {
                        reason: ErrorReason::UnsupportedKind,
                        message: format!(
                            "kind {} is not known to this agent build (version {})",
                            resource.kind(),
                            self.agent.version
                        ),
                    }),
                    retry_after: None,
                    details: None,
                    repairs: previous.and_then(|p| p.status.repairs.clone()),
                },
                consecutive_failures: 0,
            };
            if previous.is_none_or(|p| p.status.phase != Phase::Unsupported) {
                events.push((
                    EventKind::ResourcePhaseChanged,
                    resource.id.clone(),
                    "phase is now Unsupported".into(),
                ));
            }
            self.store.save_resource_state(&resource.id, &state)?;
            states.insert(resource.id.clone(), state);
        }

        // States of resources neither desired nor owned (one that failed before it was ever
        // applied, then left the manifest) have nothing left to report.
        let orphans: Vec<ResourceId> = states
            .keys()
            .filter(|id| !desired.contains_key(id) && !records.contains_key(*id))
            .cloned()
            .collect();
        for id in orphans {
            self.store.remove_resource_state(&id)?;
            states.remove(&id);
        }

        for (kind, id, message) in events {
            self.record_event(kind, Some(id), message)?;
        }
        if complete {
            self.observed_generation = generation;
            self.note_all_ready(&manifest, generation, Some(&spec_hashes), &states)?;
        }
        let next_retry = states.values().filter_map(|s| s.status.retry_after).min();
        self.store.flush()?;
        Ok(PassOutcome {
            complete,
            next_retry,
        })
    }

    /// The state of a resource whose apply or delete failed just now, to be retried as `retry`
    /// says. The backoff counts from the failure, not from the start of its pass: an apply that
    /// took a minute to fail (a container pull, a unit's start timeout) must not have spent its
    /// own delay.
    fn failed_state(
        &self,
        previous: Option<&ResourceState>,
        kind: &str,
        spec_hash: Option<String>,
        generation: u64,
        error: &ReconcileError,
        retry: Retry,
    ) -> ResourceState {
        let failed_at = self.settings.clock.now();
        // Failures count up only while the spec stays the same: a new spec gets a fresh start.
        let failures = previous
            .filter(|p| p.status.spec_hash == spec_hash)
            .map_or(0, |p| p.consecutive_failures)
            .saturating_add(1);
        // A reconciler may know when a retry makes sense (a container's restart backoff).
        let delay = match retry {
            Retry::After(delay) => delay,
            Retry::Backoff => self.settings.backoff.delay(failures),
        };
        ResourceState {
            status: ResourceStatus {
                kind: kind.to_owned(),
                phase: Phase::Failed,
                since: since(previous, Phase::Failed, failed_at),
                generation,
                spec_hash,
                error: Some(ResourceError {
                    reason: error.reason(),
                    message: error.to_string(),
                }),
                retry_after: Some(failed_at + delay),
                details: error
                    .details()
                    .or_else(|| previous.and_then(|p| p.status.details.clone())),
                repairs: previous.and_then(|p| p.status.repairs.clone()),
            },
            consecutive_failures: failures,
        }
    }

    /// Records a failure event when the resource was not already failing for the same reason,
    /// so that a resource stuck in backoff does not flood the log.
    fn note_failure(
        &self,
        id: &ResourceId,
        previous: Option<&ResourceState>,
        state: &ResourceState,
        error: &ReconcileError,
        events: &mut Vec<PendingEvent>,
    ) {
        let same_as_before = previous.is_some_and(|p| {
            p.status.phase == Phase::Failed
                && p.status.error.as_ref().map(|e| &e.reason)
                    == state.status.error.as_ref().map(|e| &e.reason)
        });
        if same_as_before {
            tracing::debug!(resource = %id, %error, failures = state.consecutive_failures, "still failing");
        } else {
            events.push((EventKind::ResourceFailed, id.clone(), error.to_string()));
        }
    }
}

/// Whether a resource is waiting out its backoff. A changed spec (`spec_hash` differs from the
/// failed one) is never held back: the new spec may well work.
fn backing_off(
    state: Option<&ResourceState>,
    spec_hash: Option<&str>,
    now: OffsetDateTime,
) -> bool {
    state.is_some_and(|state| {
        state.status.phase == Phase::Failed
            && state.status.retry_after.is_some_and(|at| at > now)
            && spec_hash.is_none_or(|hash| state.status.spec_hash.as_deref() == Some(hash))
    })
}

/// When the resource entered `phase`: kept from the previous state if it was already there.
fn since(previous: Option<&ResourceState>, phase: Phase, now: OffsetDateTime) -> OffsetDateTime {
    previous
        .filter(|p| p.status.phase == phase)
        .map_or(now, |p| p.status.since)
}

fn change_event(applied: &Applied) -> Option<(EventKind, String)> {
    match &applied.change {
        Change::Unchanged => None,
        Change::Created => Some((EventKind::ResourceCreated, "created".into())),
        Change::Adopted => Some((
            EventKind::ResourceAdopted,
            "an existing object was taken over and made to match its spec".into(),
        )),
        Change::Updated => Some((EventKind::ResourceUpdated, "updated to a new spec".into())),
        Change::Repaired { drift } => Some((
            EventKind::ResourceRepaired,
            format!("drift repaired: {drift}"),
        )),
    }
}
