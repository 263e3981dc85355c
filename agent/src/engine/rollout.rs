//! Health-gated rollout: a generation with a policy gets a deadline when accepted; one not all
//! Ready by then is rolled back to the known-good manifest or held.

use std::collections::BTreeMap;

use fleetlet_manifests::{AgentManifest, OnFailure, Phase, ResourceId};
use time::OffsetDateTime;

use super::{Accepted, Engine, EngineError, generation_of};
use crate::reconcile::Reconcile;
use crate::status;
use crate::store::{
    DeadlineOutcome, EventKind, MissedDeadline, ResourceState, RolloutState, RolloutTrial,
};

impl<R: Reconcile> Engine<R> {
    /// The rollout bookkeeping of a newly accepted manifest. A missed deadline stays while the
    /// same generation comes again (a restart, a re-poll), so it is not retried; any other
    /// generation clears it. A manifest with a policy starts its deadline now, unless it is the
    /// generation already on trial, whose deadline stands.
    pub(super) fn start_rollout(&mut self, accepted: &Accepted) -> Result<(), EngineError> {
        let generation = accepted.generation;
        let mut rollout = self.rollout.clone();
        if rollout
            .missed
            .as_ref()
            .is_some_and(|missed| missed.generation != generation)
        {
            rollout.missed = None;
        }
        let missed_before = rollout.missed.is_some();
        rollout.trial = match (accepted.manifest.rollout, rollout.trial.take()) {
            (Some(_), Some(trial)) if trial.generation == generation => Some(trial),
            (Some(policy), _) if !missed_before => Some(RolloutTrial {
                generation,
                deadline: self.settings.clock.now()
                    + time::Duration::seconds(i64::from(policy.progress_deadline_seconds)),
                policy,
            }),
            _ => None,
        };
        self.save_rollout(rollout)
    }

    fn save_rollout(&mut self, rollout: RolloutState) -> Result<(), EngineError> {
        if rollout != self.rollout {
            self.store.save_rollout(&rollout)?;
            self.rollout = rollout;
            self.refresh_spec_hashes();
        }
        Ok(())
    }

    /// Decides what happens to the generation on trial once its deadline has passed: roll back
    /// to the known-good manifest, or stay on it (policy `Hold`, or nothing to go back to).
    pub(super) fn check_deadline(&mut self, now: OffsetDateTime) -> Result<(), EngineError> {
        let Some(trial) = self.rollout.trial.clone() else {
            return Ok(());
        };
        if now < trial.deadline {
            return Ok(());
        }
        let mut rollout = self.rollout.clone();
        rollout.trial = None;
        let current = match &self.accepted {
            Some(accepted) if trial.generation == accepted.generation => accepted.clone(),
            // A trial of a generation no longer current has nothing left to decide.
            _ => return self.save_rollout(rollout),
        };
        let manifest = &current.manifest;
        let states = self.store.resource_states()?;
        let not_ready = not_ready_resources(manifest, None, &states);
        if not_ready.is_empty() {
            // Ready by the deadline, only no complete pass has said so yet (one was cut short).
            return self.note_all_ready(manifest, current.generation, None, &states);
        }
        let summary = format!(
            "generation {} was not Ready within {}s ({})",
            trial.generation, trial.policy.progress_deadline_seconds, not_ready
        );
        // The known-good manifest was verified when it was accepted; it is checked again so
        // that a key removed since then cannot be rolled back to.
        let good = rollout.known_good.as_ref().filter(|good| {
            good.generation != manifest.generation && self.check_signature(good).is_ok()
        });
        let outcome = match (trial.policy.on_failure, good) {
            (OnFailure::Rollback, Some(good)) => DeadlineOutcome::RolledBack {
                to_generation: generation_of(good),
            },
            (OnFailure::Rollback, None) => DeadlineOutcome::NoKnownGoodGeneration,
            (OnFailure::Hold, _) => DeadlineOutcome::Held,
        };
        let missed = MissedDeadline {
            generation: trial.generation,
            outcome,
            summary,
        };
        let (kind, message) = match outcome {
            DeadlineOutcome::RolledBack { .. } => (EventKind::RolledBack, missed.message()),
            _ => (EventKind::ProgressDeadlineExceeded, missed.message()),
        };
        tracing::warn!(generation = trial.generation, "{message}");
        // The decision is stored before it is logged: losing the event is better than deciding
        // twice.
        rollout.missed = Some(missed);
        self.save_rollout(rollout)?;
        self.record_event(kind, None, message)
    }

    /// After a complete pass: a manifest whose every resource is Ready becomes the known-good
    /// one, ends its trial, and clears a deadline it missed but stayed on. `generation` is
    /// `manifest`'s, as accepted; `spec_hashes` are those of its resources if known; `states` are
    /// the stored ones.
    pub(super) fn note_all_ready(
        &mut self,
        manifest: &AgentManifest,
        generation: u64,
        spec_hashes: Option<&[String]>,
        states: &BTreeMap<ResourceId, ResourceState>,
    ) -> Result<(), EngineError> {
        if !not_ready_resources(manifest, spec_hashes, states).is_empty() {
            return Ok(());
        }
        let trial_ends = self
            .rollout
            .trial
            .as_ref()
            .is_some_and(|trial| trial.generation == generation);
        let miss_ends = self.rollout.missed.as_ref().is_some_and(|missed| {
            missed.generation == generation
                && !matches!(missed.outcome, DeadlineOutcome::RolledBack { .. })
        });
        // The usual case, every resync of a settled device: nothing to copy or write.
        if !trial_ends && !miss_ends && self.rollout.known_good.as_ref() == Some(manifest) {
            return Ok(());
        }
        let mut rollout = self.rollout.clone();
        rollout.known_good = Some(manifest.clone());
        if trial_ends {
            rollout.trial = None;
        }
        if miss_ends {
            rollout.missed = None;
        }
        self.save_rollout(rollout)
    }
}

/// The resources of `manifest` that are not Ready at its current spec, as
/// `web: Failed ImageNotFound, cache: Pending` (at most three named); empty when all are Ready.
/// A kind this build does not know counts as not Ready.
fn not_ready_resources(
    manifest: &AgentManifest,
    spec_hashes: Option<&[String]>,
    states: &BTreeMap<ResourceId, ResourceState>,
) -> String {
    const NAMED: usize = 3;
    let not_ready: Vec<String> = status::with_spec_hashes(manifest, spec_hashes)
        .filter_map(|(resource, spec_hash)| {
            let state = states
                .get(&resource.id)
                .filter(|s| s.status.spec_hash.as_deref() == Some(&*spec_hash));
            match state {
                Some(state) if state.status.phase == Phase::Ready => None,
                Some(state) => Some(match &state.status.error {
                    Some(error) => {
                        format!("{}: {} {}", resource.id, state.status.phase, error.reason)
                    }
                    None => format!("{}: {}", resource.id, state.status.phase),
                }),
                None => Some(format!("{}: {}", resource.id, Phase::Pending)),
            }
        })
        .collect();
    let mut text = not_ready
        .iter()
        .take(NAMED)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if not_ready.len() > NAMED {
        text.push_str(&format!(" and {} more", not_ready.len() - NAMED));
    }
    text
}
