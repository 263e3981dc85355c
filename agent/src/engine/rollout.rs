//! Health-gated rollout: a generation with a policy gets a deadline when accepted; one not all
//! Ready by then is rolled back to the known-good manifest or held.
//!
//! The decisions are pure functions of the rollout state (and the resource states, the clock,
//! which manifests are trusted) to the next state and the event to record; the engine's methods
//! below them only read their inputs, save the state and record the event.

use std::collections::BTreeMap;

use fleetlet_manifests::{AgentManifest, OnFailure, Phase, ResourceId};
use time::OffsetDateTime;

use super::{Accepted, Desired, Engine, EngineError, generation_of};
use crate::reconcile::Reconcile;
use crate::status;
use crate::store::{
    DeadlineOutcome, EventKind, MissedDeadline, ResourceState, RolloutState, RolloutTrial,
};

/// An event a decision asks to be recorded: its kind and message.
pub(super) type RolloutEvent = (EventKind, String);

/// The manifest passes converge to: the known-good one while the generation received last is
/// rolled back, else that generation.
pub(super) fn desired<'a>(
    state: &'a RolloutState,
    accepted: Option<&'a Accepted>,
) -> Option<Desired<'a>> {
    let generation = accepted.map_or(0, |accepted| accepted.generation);
    if let Some(missed) = current_miss(state, generation)
        && let DeadlineOutcome::RolledBack { .. } = missed.outcome
        && let Some(good) = &state.known_good
    {
        return Some(Desired {
            generation: generation_of(good),
            manifest: good,
        });
    }
    accepted.map(|accepted| Desired {
        generation: accepted.generation,
        manifest: &accepted.manifest,
    })
}

/// The missed deadline of `generation` (the one received last), if it missed one.
pub(super) fn current_miss(state: &RolloutState, generation: u64) -> Option<&MissedDeadline> {
    state
        .missed
        .as_ref()
        .filter(|missed| missed.generation == generation)
}

/// The state once `accepted` is taken at `now`. A missed deadline stays while the same
/// generation comes again (a restart, a re-poll), so it is not retried; any other generation
/// clears it. A manifest with a policy starts its deadline now, unless it is the generation
/// already on trial, whose deadline stands.
pub(super) fn on_accept(
    state: &RolloutState,
    accepted: &Accepted,
    now: OffsetDateTime,
) -> RolloutState {
    let generation = accepted.generation;
    let mut next = state.clone();
    if next
        .missed
        .as_ref()
        .is_some_and(|missed| missed.generation != generation)
    {
        next.missed = None;
    }
    let missed_before = next.missed.is_some();
    next.trial = match (accepted.manifest.rollout, next.trial.take()) {
        (Some(_), Some(trial)) if trial.generation == generation => Some(trial),
        (Some(policy), _) if !missed_before => Some(RolloutTrial {
            generation,
            deadline: now + time::Duration::seconds(i64::from(policy.progress_deadline_seconds)),
            policy,
        }),
        _ => None,
    };
    next
}

/// Whether a generation is on trial and its deadline has come.
pub(super) fn deadline_passed(state: &RolloutState, now: OffsetDateTime) -> bool {
    state
        .trial
        .as_ref()
        .is_some_and(|trial| now >= trial.deadline)
}

/// The decision about the generation on trial once its deadline has passed (see
/// [`deadline_passed`]): roll back to the known-good manifest, or stay on it (policy `Hold`, or
/// nothing to go back to). `current` is the manifest received last, `states` the stored resource
/// states; `trusted` says whether a manifest's signature verifies with the current keys (the
/// known-good manifest was verified when it was accepted; it is checked again so that a key
/// removed since then cannot be rolled back to).
pub(super) fn at_deadline(
    state: &RolloutState,
    current: Option<&Accepted>,
    states: &BTreeMap<ResourceId, ResourceState>,
    trusted: impl Fn(&AgentManifest) -> bool,
) -> (RolloutState, Option<RolloutEvent>) {
    let mut next = state.clone();
    let Some(trial) = next.trial.take() else {
        return (next, None);
    };
    let current = match current {
        Some(current) if trial.generation == current.generation => current,
        // A trial of a generation no longer current has nothing left to decide.
        _ => return (next, None),
    };
    let manifest = &current.manifest;
    let not_ready = not_ready_resources(manifest, None, states);
    if not_ready.is_empty() {
        // Ready by the deadline, only no complete pass has said so yet (one was cut short).
        let ready = on_all_ready(state, manifest, current.generation, None, states);
        return (ready.unwrap_or_else(|| state.clone()), None);
    }
    let summary = format!(
        "generation {} was not Ready within {}s ({})",
        trial.generation, trial.policy.progress_deadline_seconds, not_ready
    );
    let good = next
        .known_good
        .as_ref()
        .filter(|good| good.generation != manifest.generation && trusted(good));
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
    let kind = match outcome {
        DeadlineOutcome::RolledBack { .. } => EventKind::RolledBack,
        _ => EventKind::ProgressDeadlineExceeded,
    };
    let message = missed.message();
    next.missed = Some(missed);
    (next, Some((kind, message)))
}

/// The state after a pass found every resource of `manifest` (of `generation`) Ready, or
/// `None` when nothing changes: it becomes the known-good manifest, ends its trial, and clears
/// a deadline it missed but stayed on. `spec_hashes` are those of its resources if known;
/// `states` are the stored ones. Nothing changes either while a resource is not Ready.
pub(super) fn on_all_ready(
    state: &RolloutState,
    manifest: &AgentManifest,
    generation: u64,
    spec_hashes: Option<&[String]>,
    states: &BTreeMap<ResourceId, ResourceState>,
) -> Option<RolloutState> {
    if !not_ready_resources(manifest, spec_hashes, states).is_empty() {
        return None;
    }
    let trial_ends = state
        .trial
        .as_ref()
        .is_some_and(|trial| trial.generation == generation);
    let miss_ends = state.missed.as_ref().is_some_and(|missed| {
        missed.generation == generation
            && !matches!(missed.outcome, DeadlineOutcome::RolledBack { .. })
    });
    // The usual case, every resync of a settled device: nothing to copy or write.
    if !trial_ends && !miss_ends && state.known_good.as_ref() == Some(manifest) {
        return None;
    }
    let mut next = state.clone();
    next.known_good = Some(manifest.clone());
    if trial_ends {
        next.trial = None;
    }
    if miss_ends {
        next.missed = None;
    }
    Some(next)
}

impl<R: Reconcile> Engine<R> {
    /// The rollout bookkeeping of a newly accepted manifest (see [`on_accept`]).
    pub(super) fn start_rollout(&mut self, accepted: &Accepted) -> Result<(), EngineError> {
        let next = on_accept(&self.rollout, accepted, self.settings.clock.now());
        self.save_rollout(next)
    }

    fn save_rollout(&mut self, rollout: RolloutState) -> Result<(), EngineError> {
        if rollout != self.rollout {
            self.store.save_rollout(&rollout)?;
            self.rollout = rollout;
            self.refresh_spec_hashes();
        }
        Ok(())
    }

    /// Decides about the generation on trial once its deadline has passed (see [`at_deadline`]).
    pub(super) fn check_deadline(&mut self, now: OffsetDateTime) -> Result<(), EngineError> {
        if !deadline_passed(&self.rollout, now) {
            return Ok(());
        }
        let states = self.store.resource_states()?;
        let (next, event) = at_deadline(&self.rollout, self.accepted.as_ref(), &states, |good| {
            self.check_signature(good).is_ok()
        });
        let generation = next.missed.as_ref().map(|missed| missed.generation);
        // The decision is stored before it is logged: losing the event is better than deciding
        // twice.
        self.save_rollout(next)?;
        match event {
            Some((kind, message)) => {
                tracing::warn!(generation, "{message}");
                self.record_event(kind, None, message)
            }
            None => Ok(()),
        }
    }

    /// After a complete pass over `manifest` (see [`on_all_ready`]).
    pub(super) fn note_all_ready(
        &mut self,
        manifest: &AgentManifest,
        generation: u64,
        spec_hashes: Option<&[String]>,
        states: &BTreeMap<ResourceId, ResourceState>,
    ) -> Result<(), EngineError> {
        match on_all_ready(&self.rollout, manifest, generation, spec_hashes, states) {
            Some(next) => self.save_rollout(next),
            None => Ok(()),
        }
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
