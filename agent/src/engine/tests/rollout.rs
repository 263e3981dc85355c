//! Health-gated rollback through the engine: deadlines on a manual clock, rollback, hold, and
//! what survives a restart.

use super::*;

#[tokio::test]
async fn a_generation_not_ready_by_its_deadline_rolls_back_to_the_known_good_one() {
    let mut t = Rollout::new();
    t.apply(good()).await;
    assert_eq!(
        t.engine
            .rollout()
            .known_good
            .as_ref()
            .and_then(|m| m.generation),
        Some(4)
    );
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
    t.apply(good()).await;
    t.apply(bad(OnFailure::Rollback)).await;
    t.past_the_deadline();
    t.pass().await;

    // The same generation again, as a re-poll of the manager would bring it.
    t.apply(bad(OnFailure::Rollback)).await;
    // A restart over the same store, and the manager sending generation 5 once more.
    t.restart();
    t.pass().await;
    t.apply(bad(OnFailure::Rollback)).await;

    assert_eq!(t.applies_of(&bad(OnFailure::Rollback), "web"), 1);
    assert_eq!(t.applies_of(&bad(OnFailure::Rollback), "banner"), 1);
    let status = t.status();
    assert_eq!(
        (status.manifest_generation, status.observed_generation),
        (5, 4)
    );
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
    t.apply(good()).await;
    t.apply(bad(OnFailure::Rollback)).await;
    t.past_the_deadline();
    t.pass().await;

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
    assert_eq!(
        t.engine
            .rollout()
            .known_good
            .as_ref()
            .and_then(|m| m.generation),
        Some(6)
    );
}

#[tokio::test]
async fn with_hold_the_generation_stays_failed_and_says_so() {
    let mut t = Rollout::new();
    t.apply(good()).await;
    t.apply(bad(OnFailure::Hold)).await;
    t.past_the_deadline();
    t.pass().await;
    t.clock.advance(Duration::from_secs(600));
    t.pass().await;

    assert_eq!(phase(&t.engine, "web"), Phase::Failed);
    assert_eq!(phase(&t.engine, "banner"), Phase::Ready);
    assert_eq!(t.applies_of(&good(), "web"), 1, "never rolled back");
    let status = t.status();
    assert_eq!(
        (status.manifest_generation, status.observed_generation),
        (5, 5)
    );
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
    let shutdown = Shutdown::new();
    engine
        .accept(DesiredUpdate::Manifest(manifest(1, &[("a", "File")])))
        .expect("accept");
    engine.pass(&shutdown.signal()).await.expect("pass");
    fake.fail("a");
    let changed = AgentManifest::from_value(json!({
        "apiVersion": "fleetlet.dev/v1", "kind": "AgentManifest", "agentId": "pi", "generation": 2,
        "resources": [{"id": "a", "kind": "File", "spec": {"path": "/fake/a", "content": {"text": "new"}, "mode": "0600"}}]
    }))
    .expect("valid");
    engine
        .accept(DesiredUpdate::Manifest(changed))
        .expect("accept");
    engine.pass(&shutdown.signal()).await.expect("pass");
    assert_eq!(phase(&engine, "a"), Phase::Failed);
    engine
        .accept(DesiredUpdate::Manifest(manifest(3, &[])))
        .expect("accept");
    engine.pass(&shutdown.signal()).await.expect("pass");
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
    t.apply(good()).await;
    t.apply(bad(OnFailure::Rollback)).await;
    t.past_the_deadline();
    t.pass().await;
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
    let status = t.status();
    assert_eq!(
        (status.manifest_generation, status.observed_generation),
        (5, 4)
    );
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
