//! Publishing statuses: a new report sequence number each time, a status built again only when
//! what it says may have changed, and repair counts held to one report an interval.

use super::*;

#[tokio::test]
async fn report_seq_increases_with_every_published_status() {
    let (mut engine, _fake) = engine(FakeReconciler::default(), EngineSettings::default());
    let first = engine
        .publish_status(&Connectivity::Online, false)
        .expect("publish")
        .expect("first status is new");
    assert!(
        engine
            .publish_status(&Connectivity::Online, false)
            .expect("publish")
            .is_none()
    );
    let heartbeat = engine
        .publish_status(&Connectivity::Online, true)
        .expect("publish")
        .expect("heartbeat");
    assert!(heartbeat.report_seq > first.report_seq);
    assert_eq!(outbox_seq(&engine), Some(heartbeat.report_seq));
}

#[tokio::test]
async fn a_status_is_published_again_whenever_what_it_says_changes() {
    let mut r = Rollout::new();
    let online = Connectivity::Online;
    let files = |ids: &[&str]| ids.iter().map(|id| file(id)).collect::<Vec<_>>();
    r.apply(rollout_manifest(1, files(&["a", "b"]), None)).await;
    assert!(publish(&mut r.engine, &online));
    assert!(!publish(&mut r.engine, &online));
    r.pass().await;
    assert!(
        !publish(&mut r.engine, &online),
        "a settled pass says nothing new"
    );
    assert!(
        r.engine.status_basis.is_some(),
        "and its status is not built again"
    );

    // A resource's phase changes, and changes back.
    r.fake.fail("a");
    r.pass().await;
    assert!(publish(&mut r.engine, &online));
    assert_eq!(r.status().resources["a"].phase, Phase::Failed);
    assert!(!publish(&mut r.engine, &online));
    r.fake.heal("a");
    r.clock.advance(Duration::from_secs(2));
    r.pass().await;
    assert!(publish(&mut r.engine, &online));
    assert_eq!(r.status().resources["a"].phase, Phase::Ready);
    assert!(!publish(&mut r.engine, &online));

    // Connectivity.
    let offline = Connectivity::Offline {
        reason: "ManagerUnreachable".into(),
        message: "connection refused".into(),
    };
    assert!(publish(&mut r.engine, &offline));
    assert!(!publish(&mut r.engine, &offline));
    assert!(publish(&mut r.engine, &online));

    // A refused manifest.
    r.engine
        .accept(DesiredUpdate::Rejected("not JSON".into()))
        .expect("accept");
    assert!(publish(&mut r.engine, &online));
    assert!(!publish(&mut r.engine, &online));

    // A new generation, before its pass: its new resource is Pending since now, so every
    // status says something new until the pass.
    r.engine
        .accept(DesiredUpdate::Manifest(rollout_manifest(
            2,
            files(&["a", "b", "c"]),
            None,
        )))
        .expect("accept");
    assert!(publish(&mut r.engine, &online));
    assert_eq!(r.status().resources["c"].phase, Phase::Pending);
    r.clock.advance(Duration::from_secs(1));
    assert!(publish(&mut r.engine, &online));
    r.pass().await;
    assert!(publish(&mut r.engine, &online));
    assert!(!publish(&mut r.engine, &online));

    // A state changed in the store by someone else than a pass.
    let id = ResourceId::try_from("b").expect("id");
    let mut state = r.store.resource_states().expect("states")[&id].clone();
    state.status.phase = Phase::Reconciling;
    r.store.save_resource_state(&id, &state).expect("save");
    assert!(publish(&mut r.engine, &online));
    assert!(!publish(&mut r.engine, &online));

    // A heartbeat is always a new report.
    assert!(
        r.engine
            .publish_status(&online, true)
            .expect("publish")
            .is_some()
    );
    assert!(!publish(&mut r.engine, &online));
}

/// The same over the filesystem store, whose states revision comes from its journal.
#[cfg(feature = "fs-store")]
#[tokio::test]
async fn a_status_over_the_filesystem_store_is_published_again_when_a_state_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = Arc::new(
        crate::store::FsStore::open(
            dir.path(),
            AgentId::try_from("pi").expect("id"),
            crate::store::FsStoreOptions::default(),
        )
        .expect("store"),
    );
    let mut r = Rollout::over(store);
    let online = Connectivity::Online;
    r.apply(rollout_manifest(1, vec![file("a")], None)).await;
    assert!(publish(&mut r.engine, &online));
    r.pass().await;
    assert!(!publish(&mut r.engine, &online));
    r.fake.fail("a");
    r.pass().await;
    assert!(publish(&mut r.engine, &online));
    assert!(!publish(&mut r.engine, &online));
    r.engine
        .accept(DesiredUpdate::Manifest(rollout_manifest(2, vec![], None)))
        .expect("accept");
    assert!(publish(&mut r.engine, &online));
    r.pass().await;
    assert!(publish(&mut r.engine, &online));
    assert!(r.status().resources.is_empty());
    assert!(!publish(&mut r.engine, &online));
}

#[tokio::test]
async fn repairs_are_counted_and_a_new_count_alone_is_published_at_most_once_per_interval() {
    let mut r = Rollout::new();
    let online = Connectivity::Online;
    let repairs = |r: &Rollout| r.status().resources["a"].repairs.as_ref().map(|x| x.count);
    r.apply(rollout_manifest(1, vec![file("a"), file("b")], None))
        .await;
    assert!(publish(&mut r.engine, &online));
    assert_eq!(repairs(&r), None);

    // Someone edits the file at every resync.
    r.fake.drifting.lock().expect("lock").insert("a".into());
    r.pass().await;
    assert_eq!(repairs(&r), Some(1));
    let repaired = &r.status().resources["a"];
    assert_eq!(repaired.phase, Phase::Ready);
    assert_eq!(
        repaired.repairs.as_ref().map(|x| x.last_drift.as_str()),
        Some("content changed")
    );
    assert!(publish(&mut r.engine, &online), "the first repair is news");
    let sent = |r: &Rollout| {
        r.store
            .pending_report()
            .expect("outbox")
            .and_then(|s| s.resources["a"].repairs.as_ref().map(|x| x.count))
    };
    assert_eq!(sent(&r), Some(1));

    // More repairs within the interval wait, and are looked at again by every pass.
    for count in 2..=3 {
        r.pass().await;
        assert_eq!(repairs(&r), Some(count));
        assert!(
            !publish(&mut r.engine, &online),
            "repair {count} alone is held back"
        );
        assert!(r.engine.status_basis.is_none());
    }
    assert_eq!(sent(&r), Some(1));
    // Other news carries the count along at once.
    r.fake.fail("b");
    r.pass().await;
    assert!(publish(&mut r.engine, &online));
    assert_eq!(sent(&r), Some(4));
    r.pass().await;
    assert!(!publish(&mut r.engine, &online));

    // Once the interval is over, the count goes out.
    r.clock
        .advance(status::REPAIR_REPORT_INTERVAL.unsigned_abs());
    assert!(publish(&mut r.engine, &online));
    assert_eq!(sent(&r), Some(5));

    // Without drift, nothing more (once `b`, retried after its backoff, is Ready again).
    r.fake.drifting.lock().expect("lock").clear();
    r.fake.heal("b");
    r.pass().await;
    assert!(publish(&mut r.engine, &online));
    r.pass().await;
    assert!(!publish(&mut r.engine, &online));
    assert_eq!(repairs(&r), Some(5));
    assert_eq!(sent(&r), Some(5));
}
