//! Health-gated rollback: the decisions as pure functions of the rollout state (at the end),
//! and through the engine: deadlines on a manual clock, rollback, hold, and what survives a
//! restart.

use std::collections::BTreeMap;

use fleetlet_manifests::{ResourceError, ResourceStatus};

use super::super::rollout::{
    at_deadline, current_miss, deadline_passed, desired, on_accept, on_all_ready,
};
use super::*;
use crate::store::{DeadlineOutcome, MissedDeadline, ResourceState, RolloutState, RolloutTrial};

#[tokio::test]
async fn a_generation_not_ready_by_its_deadline_rolls_back_to_the_known_good_one() {
    let mut t = Rollout::new();
    t.apply(good()).await;
    assert_eq!(t.known_good_generation(), Some(4));
    t.apply(bad(OnFailure::Rollback)).await;
    assert_eq!(phase(&t.engine, "web"), Phase::Failed);
    assert_eq!(phase(&t.engine, "banner"), Phase::Ready);
    assert_eq!(
        t.rolled_back_condition(),
        None,
        "the deadline has not passed"
    );

    t.past_the_deadline();
    t.pass().await;

    // The known-good spec is applied again, and what only the bad generation had is deleted.
    assert_eq!(t.applies_of(&good(), "web"), 2);
    assert!(t.fake.calls().contains(&Call::Delete("banner".into())));
    let status = t.status();
    assert_eq!(status.manifest_generation, 5);
    assert_eq!(status.observed_generation, 4);
    assert_eq!(
        status
            .resources
            .keys()
            .map(|id| id.as_str())
            .collect::<Vec<_>>(),
        ["motd", "web"]
    );
    for resource in status.resources.values() {
        assert_eq!((resource.phase, resource.generation), (Phase::Ready, 4));
    }
    let condition = t.rolled_back_condition().expect("RolledBack condition");
    assert_eq!(condition.status, ConditionStatus::True);
    assert_eq!(condition.reason, "ProgressDeadlineExceeded");
    assert_eq!(
        condition.message,
        "generation 5 was not Ready within 60s (web: Failed ImageNotFound); \
         rolled back to generation 4"
    );
    assert_eq!(t.events(EventKind::RolledBack), [condition.message]);

    // Later passes stay on the known-good generation and never retry the bad one.
    t.clock.advance(Duration::from_secs(600));
    t.pass().await;
    assert_eq!(t.applies_of(&bad(OnFailure::Rollback), "web"), 1);
    assert_eq!(t.events(EventKind::RolledBack).len(), 1);
}

#[tokio::test]
async fn the_rolled_back_generation_is_not_retried_when_it_arrives_again_or_after_a_restart() {
    let mut t = Rollout::new();
    t.bad_missed_its_deadline(OnFailure::Rollback).await;

    // The same generation again, as a re-poll of the manager would bring it.
    t.apply(bad(OnFailure::Rollback)).await;
    // A restart over the same store, and the manager sending generation 5 once more.
    t.restart();
    t.pass().await;
    t.apply(bad(OnFailure::Rollback)).await;

    assert_eq!(t.applies_of(&bad(OnFailure::Rollback), "web"), 1);
    assert_eq!(t.applies_of(&bad(OnFailure::Rollback), "banner"), 1);
    assert_eq!(t.generations(), (5, 4));
    assert_eq!(
        t.rolled_back_condition().map(|c| c.status),
        Some(ConditionStatus::True)
    );
    assert_eq!(t.events(EventKind::RolledBack).len(), 1);
}

#[tokio::test]
async fn a_deadline_survives_a_restart() {
    let mut t = Rollout::new();
    t.apply(good()).await;
    t.apply(bad(OnFailure::Rollback)).await;
    let deadline = t.engine.rollout_deadline().expect("on trial");
    t.clock.advance(Duration::from_secs(30));
    t.restart();
    assert_eq!(t.engine.rollout_deadline(), Some(deadline));
    t.apply(bad(OnFailure::Rollback)).await;
    assert_eq!(t.engine.rollout_deadline(), Some(deadline));
    t.clock.advance(Duration::from_secs(31));
    t.pass().await;
    assert_eq!(t.status().observed_generation, 4);
}

#[tokio::test]
async fn a_newer_generation_ends_the_rollback_and_is_applied() {
    let mut t = Rollout::new();
    t.bad_missed_its_deadline(OnFailure::Rollback).await;

    let fixed = rollout_manifest(
        6,
        vec![container("web", "localhost/web:2"), file("motd")],
        Some(OnFailure::Rollback),
    );
    t.apply(fixed.clone()).await;
    assert_eq!(t.applies_of(&fixed, "web"), 1);
    let status = t.status();
    assert_eq!(
        (status.manifest_generation, status.observed_generation),
        (6, 6)
    );
    assert!(crate::status::is_converged(&status));
    assert_eq!(t.rolled_back_condition(), None);
    assert_eq!(t.engine.rollout().missed, None);
    assert_eq!(t.known_good_generation(), Some(6));
}

#[tokio::test]
async fn with_hold_the_generation_stays_failed_and_says_so() {
    let mut t = Rollout::new();
    t.bad_missed_its_deadline(OnFailure::Hold).await;
    t.clock.advance(Duration::from_secs(600));
    t.pass().await;

    assert_eq!(phase(&t.engine, "web"), Phase::Failed);
    assert_eq!(phase(&t.engine, "banner"), Phase::Ready);
    assert_eq!(t.applies_of(&good(), "web"), 1, "never rolled back");
    assert_eq!(t.generations(), (5, 5));
    let condition = t.rolled_back_condition().expect("RolledBack condition");
    assert_eq!(condition.status, ConditionStatus::False);
    assert_eq!(condition.reason, "HoldPolicy");
    assert!(
        condition
            .message
            .starts_with("generation 5 was not Ready within 60s"),
        "{}",
        condition.message
    );
    assert_eq!(
        t.events(EventKind::ProgressDeadlineExceeded),
        [condition.message]
    );
    assert!(t.events(EventKind::RolledBack).is_empty());
}

#[tokio::test]
async fn without_a_known_good_generation_there_is_nothing_to_roll_back_to() {
    let mut t = Rollout::new();
    t.apply(bad(OnFailure::Rollback)).await;
    t.past_the_deadline();
    t.pass().await;

    assert_eq!(phase(&t.engine, "web"), Phase::Failed);
    let condition = t.rolled_back_condition().expect("RolledBack condition");
    assert_eq!(condition.status, ConditionStatus::False);
    assert_eq!(condition.reason, "NoKnownGoodGeneration");
    assert!(
        condition.message.contains("generation 5"),
        "{}",
        condition.message
    );
    assert_eq!(t.events(EventKind::ProgressDeadlineExceeded).len(), 1);
}

#[tokio::test]
async fn a_generation_ready_in_time_becomes_known_good_and_never_rolls_back() {
    let mut t = Rollout::new();
    t.apply(good()).await;
    let next = rollout_manifest(
        5,
        vec![container("web", "localhost/web:2"), file("motd")],
        Some(OnFailure::Rollback),
    );
    t.apply(next.clone()).await;
    assert_eq!(
        t.engine.rollout_deadline(),
        None,
        "ready: the trial is over"
    );
    assert_eq!(t.engine.rollout().known_good.as_ref(), Some(&next));

    // Failing later is a failure of a good generation, not a failed rollout.
    t.fake.fail("motd");
    t.clock.advance(Duration::from_secs(3600));
    t.pass().await;
    assert_eq!(phase(&t.engine, "motd"), Phase::Failed);
    assert_eq!(t.rolled_back_condition(), None);
    assert_eq!(t.status().observed_generation, 5);
    assert_eq!(t.applies_of(&good(), "web"), 1);
}

#[tokio::test]
async fn a_resource_that_failed_to_apply_is_deleted_at_once_when_it_leaves_the_manifest() {
    let fake = FakeReconciler::default();
    let (mut engine, fake) = engine(fake, EngineSettings::default());
    accept_and_pass(&mut engine, manifest(1, &[("a", "File")])).await;
    fake.fail("a");
    accept_and_pass(&mut engine, a_changed()).await;
    assert_eq!(phase(&engine, "a"), Phase::Failed);
    accept_and_pass(&mut engine, manifest(3, &[])).await;
    assert_eq!(fake.calls().last(), Some(&Call::Delete("a".into())));
}

#[cfg(feature = "fs-store")]
#[tokio::test]
async fn a_rollback_survives_a_restart_over_the_filesystem_store() {
    use crate::store::{FsStore, FsStoreOptions};
    let dir = tempfile::tempdir().expect("temp dir");
    let open = || -> Arc<dyn Store> {
        Arc::new(
            FsStore::open(
                dir.path(),
                AgentId::try_from("pi").expect("id"),
                FsStoreOptions::default(),
            )
            .expect("store opens"),
        )
    };
    let mut t = Rollout::over(open());
    t.bad_missed_its_deadline(OnFailure::Rollback).await;
    assert!(dir.path().join("agents/pi/rollout.json").is_file());

    // Power cut and reboot: the engine and the store (and its lock) are gone, then reopened.
    let (fake, clock) = (Arc::clone(&t.fake), t.clock.clone());
    drop(t);
    let store = open();
    let mut t = Rollout {
        engine: Rollout::engine_over(&store, &fake, &clock, &[]),
        fake,
        store,
        clock,
        shutdown: Shutdown::new(),
        trusted_keys: Vec::new(),
    };
    t.apply(bad(OnFailure::Rollback)).await;
    assert_eq!(t.applies_of(&bad(OnFailure::Rollback), "web"), 1);
    assert_eq!(t.generations(), (5, 4));
    assert_eq!(
        t.rolled_back_condition().map(|c| c.reason),
        Some("ProgressDeadlineExceeded".to_owned())
    );
}

#[tokio::test]
async fn with_trusted_keys_a_rollback_goes_only_to_a_manifest_the_current_keys_still_trust() {
    let (old, new) = (SecretKey::from_seed([1; 32]), SecretKey::from_seed([2; 32]));
    let mut t = Rollout::new();
    t.trusted_keys = vec![old.public(), new.public()];
    t.restart();
    t.apply(signed(good(), &old)).await;
    t.apply(signed(bad(OnFailure::Rollback), &new)).await;
    assert_eq!(
        phase(&t.engine, "web"),
        Phase::Failed,
        "the signed rollout was accepted"
    );

    // The old key is retired before the deadline: the known-good manifest it signed is no
    // longer trusted, so there is nothing to roll back to.
    t.trusted_keys = vec![new.public()];
    t.restart();
    t.past_the_deadline();
    t.pass().await;
    assert_eq!(
        t.rolled_back_condition().map(|c| c.reason),
        Some("NoKnownGoodGeneration".to_owned())
    );
    assert_eq!(t.applies_of(&good(), "web"), 1);

    // With both keys trusted the same story ends in a rollback.
    let mut t = Rollout::new();
    t.trusted_keys = vec![old.public(), new.public()];
    t.restart();
    t.apply(signed(good(), &old)).await;
    t.apply(signed(bad(OnFailure::Rollback), &new)).await;
    t.past_the_deadline();
    t.pass().await;
    assert_eq!(
        t.rolled_back_condition().map(|c| c.status),
        Some(ConditionStatus::True)
    );
}

// The decisions themselves, as functions of the rollout state: no engine, no store, no clock.

fn t(seconds: i64) -> OffsetDateTime {
    OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(1_800_000_000 + seconds)
}

/// The stored states of `manifest`'s resources at its current specs: Ready, except those named
/// in `failed` (Failed, `ImageNotFound`) and `absent` (no state: Pending).
fn states_of(
    manifest: &AgentManifest,
    failed: &[&str],
    absent: &[&str],
) -> BTreeMap<ResourceId, ResourceState> {
    manifest
        .resources
        .iter()
        .filter(|resource| !absent.contains(&resource.id.as_str()))
        .map(|resource| {
            let failing = failed.contains(&resource.id.as_str());
            let state = ResourceState {
                status: ResourceStatus {
                    kind: resource.kind().to_owned(),
                    phase: if failing { Phase::Failed } else { Phase::Ready },
                    since: t(0),
                    generation: manifest.generation.expect("generation"),
                    spec_hash: Some(resource.spec_hash()),
                    error: failing.then(|| ResourceError {
                        reason: ErrorReason::ImageNotFound,
                        message: "no such image".into(),
                    }),
                    retry_after: None,
                    details: None,
                    repairs: None,
                },
                consecutive_failures: u32::from(failing),
            };
            (resource.id.clone(), state)
        })
        .collect()
}

/// Generation 5 (`bad`) on trial since `t(0)`, with generation 4 (`good`) known-good.
fn on_trial(on_failure: OnFailure) -> (RolloutState, Accepted) {
    let accepted = Accepted::new(bad(on_failure));
    let state = RolloutState {
        known_good: Some(good()),
        ..RolloutState::default()
    };
    (on_accept(&state, &accepted, t(0)), accepted)
}

#[test]
fn accepting_a_generation_with_a_policy_starts_its_deadline_once() {
    let (state, accepted) = on_trial(OnFailure::Rollback);
    let trial = state.trial.clone().expect("a trial");
    assert_eq!(
        (trial.generation, trial.deadline),
        (5, t(i64::from(DEADLINE)))
    );
    assert_eq!(state.known_good, Some(good()), "the known-good one stays");

    // The same generation again (a re-poll, a restart) keeps its deadline.
    let again = on_accept(&state, &accepted, t(30));
    assert_eq!(again, state);

    // A generation without a policy ends the trial.
    let next = on_accept(&state, &Accepted::new(good()), t(31));
    assert_eq!(next.trial, None);
}

#[test]
fn a_missed_deadline_stays_for_its_generation_and_goes_with_the_next() {
    let (state, accepted) = on_trial(OnFailure::Rollback);
    let (missed, _) = at_deadline(
        &state,
        Some(&accepted),
        &states_of(&accepted.manifest, &["web"], &[]),
        |_| true,
    );
    assert!(missed.missed.is_some());

    // The generation that missed comes again: not tried again, no new deadline.
    let again = on_accept(&missed, &accepted, t(100));
    assert_eq!(
        (again.trial.as_ref(), again.missed.as_ref()),
        (None, missed.missed.as_ref())
    );

    // Another generation clears the miss and, with a policy, starts its own deadline.
    let newer = Accepted::new(rollout_manifest(
        6,
        vec![container("web", "localhost/web:2")],
        Some(OnFailure::Rollback),
    ));
    let next = on_accept(&again, &newer, t(100));
    assert_eq!(next.missed, None);
    assert_eq!(
        next.trial.map(|trial| (trial.generation, trial.deadline)),
        Some((6, t(100 + i64::from(DEADLINE))))
    );
}

#[test]
fn the_deadline_passes_at_its_instant_not_before() {
    let (state, _) = on_trial(OnFailure::Rollback);
    assert!(
        !deadline_passed(&RolloutState::default(), t(1_000)),
        "no trial"
    );
    assert!(!deadline_passed(&state, t(i64::from(DEADLINE) - 1)));
    assert!(deadline_passed(&state, t(i64::from(DEADLINE))));
}

#[test]
fn at_the_deadline_a_generation_not_ready_rolls_back_to_a_trusted_known_good_one() {
    let (state, accepted) = on_trial(OnFailure::Rollback);
    let states = states_of(&accepted.manifest, &["web"], &["banner"]);
    let (next, event) = at_deadline(&state, Some(&accepted), &states, |_| true);

    let summary =
        "generation 5 was not Ready within 60s (web: Failed ImageNotFound, banner: Pending)";
    assert_eq!(
        next.missed,
        Some(MissedDeadline {
            generation: 5,
            outcome: DeadlineOutcome::RolledBack { to_generation: 4 },
            summary: summary.into(),
        })
    );
    assert_eq!(next.trial, None);
    assert_eq!(next.known_good, Some(good()));
    assert_eq!(
        event,
        Some((
            EventKind::RolledBack,
            format!("{summary}; rolled back to generation 4")
        ))
    );
    // Passes now converge to generation 4, while generation 5 stays the one received.
    let to = desired(&next, Some(&accepted)).expect("desired");
    assert_eq!((to.generation, to.manifest), (4, &good()));
    assert!(current_miss(&next, 5).is_some());
    assert!(current_miss(&next, 6).is_none());
}

#[test]
fn at_the_deadline_without_a_trusted_known_good_one_or_with_hold_the_generation_stays() {
    let (state, accepted) = on_trial(OnFailure::Rollback);
    let states = states_of(&accepted.manifest, &["web"], &[]);
    // The known-good manifest no longer verifies with the current keys.
    let (next, event) = at_deadline(&state, Some(&accepted), &states, |_| false);
    let missed = next.missed.clone().expect("missed");
    assert_eq!(missed.outcome, DeadlineOutcome::NoKnownGoodGeneration);
    assert_eq!(
        event.map(|(kind, _)| kind),
        Some(EventKind::ProgressDeadlineExceeded)
    );
    let to = desired(&next, Some(&accepted)).expect("desired");
    assert_eq!(to.generation, 5);

    let (state, accepted) = on_trial(OnFailure::Hold);
    let (next, event) = at_deadline(&state, Some(&accepted), &states, |_| true);
    assert_eq!(
        next.missed.map(|missed| missed.outcome),
        Some(DeadlineOutcome::Held)
    );
    assert_eq!(
        event.map(|(kind, message)| (kind, message.ends_with("; held as its policy says"))),
        Some((EventKind::ProgressDeadlineExceeded, true))
    );
}

#[test]
fn at_the_deadline_a_generation_all_ready_becomes_known_good_without_an_event() {
    let (state, accepted) = on_trial(OnFailure::Rollback);
    let states = states_of(&accepted.manifest, &[], &[]);
    let (next, event) = at_deadline(&state, Some(&accepted), &states, |_| true);
    assert_eq!(event, None);
    assert_eq!(
        next,
        RolloutState {
            known_good: Some(accepted.manifest.clone()),
            trial: None,
            missed: None,
        }
    );
}

#[test]
fn at_the_deadline_a_trial_of_a_generation_no_longer_current_is_dropped() {
    let (state, _) = on_trial(OnFailure::Rollback);
    let newer = Accepted::new(rollout_manifest(6, vec![file("motd")], None));
    let (next, event) = at_deadline(&state, Some(&newer), &BTreeMap::new(), |_| true);
    assert_eq!(event, None);
    assert_eq!(
        next,
        RolloutState {
            trial: None,
            ..state
        }
    );
}

#[test]
fn all_ready_makes_the_known_good_one_and_ends_a_trial_or_a_held_miss_but_not_a_rollback() {
    let (state, accepted) = on_trial(OnFailure::Hold);
    let manifest = &accepted.manifest;
    let ready = states_of(manifest, &[], &[]);

    // Not all Ready: nothing changes.
    let failing = states_of(manifest, &["web"], &[]);
    assert_eq!(on_all_ready(&state, manifest, 5, None, &failing), None);

    // All Ready: known-good, trial over.
    let next = on_all_ready(&state, manifest, 5, None, &ready).expect("a change");
    assert_eq!(
        (next.known_good.as_ref(), next.trial.as_ref()),
        (Some(manifest), None)
    );
    // And once settled, every later pass changes nothing (and writes nothing).
    assert_eq!(on_all_ready(&next, manifest, 5, None, &ready), None);

    // A generation that missed its deadline and was held clears the miss once Ready.
    let held = RolloutState {
        missed: Some(MissedDeadline {
            generation: 5,
            outcome: DeadlineOutcome::Held,
            summary: "s".into(),
        }),
        ..next.clone()
    };
    assert_eq!(
        on_all_ready(&held, manifest, 5, None, &ready).map(|s| s.missed),
        Some(None)
    );

    // While rolled back, the known-good generation being Ready does not end the rollback.
    let rolled_back = RolloutState {
        known_good: Some(good()),
        trial: None,
        missed: Some(MissedDeadline {
            generation: 5,
            outcome: DeadlineOutcome::RolledBack { to_generation: 4 },
            summary: "s".into(),
        }),
    };
    let good_ready = states_of(&good(), &[], &[]);
    assert_eq!(
        on_all_ready(&rolled_back, &good(), 4, None, &good_ready),
        None
    );
    // Nor does the generation rolled back from: it is not tried again until another arrives.
    let bad = bad(OnFailure::Rollback);
    let bad_ready = states_of(&bad, &[], &[]);
    assert_eq!(
        on_all_ready(&rolled_back, &bad, 5, None, &bad_ready).and_then(|s| s.missed),
        rolled_back.missed
    );
}

#[test]
fn a_trial_of_another_generation_gives_way_to_the_new_generations_deadline() {
    // A trial of another generation (superseded before its deadline) is replaced, not kept.
    let state = RolloutState {
        trial: Some(RolloutTrial {
            generation: 3,
            deadline: t(5),
            policy: RolloutPolicy {
                progress_deadline_seconds: DEADLINE,
                on_failure: OnFailure::Rollback,
            },
        }),
        ..RolloutState::default()
    };
    let next = on_accept(&state, &Accepted::new(bad(OnFailure::Hold)), t(10));
    let trial = next.trial.expect("a trial");
    assert_eq!(
        (trial.generation, trial.deadline, trial.policy.on_failure),
        (5, t(10 + i64::from(DEADLINE)), OnFailure::Hold)
    );
}
