//! The hand-over of a kind's resources, the concurrency bound, and a timeout and failure of its
//! own for every resource.

use super::*;

#[tokio::test]
async fn no_more_than_the_concurrency_bound_run_at_once_within_a_kind() {
    let fake = FakeReconciler {
        work_time: Duration::from_millis(20),
        ..FakeReconciler::default()
    };
    let settings = EngineSettings {
        concurrency: 3,
        ..EngineSettings::default()
    };
    let (mut engine, fake) = engine(fake, settings);
    let ids = files(12);
    let resources: Vec<(&str, &str)> = ids.iter().map(|id| (id.as_str(), "File")).collect();
    accept_and_pass(&mut engine, manifest(1, &resources)).await;
    assert_eq!(fake.calls().len(), 12);
    assert_eq!(fake.most_running.load(Ordering::SeqCst), 3);
    // Started in the manifest's order.
    let calls = fake.calls();
    for pair in [("f0", "f3"), ("f4", "f8"), ("f8", "f11")] {
        assert!(
            position(&calls, &Call::Apply(pair.0.into()))
                < position(&calls, &Call::Apply(pair.1.into()))
        );
    }
    for id in &ids {
        assert_eq!(phase(&engine, id), Phase::Ready, "{id}");
    }
}

#[tokio::test]
async fn each_kind_gets_its_whole_list_at_once_kind_after_kind() {
    let (mut engine, fake) = engine(FakeReconciler::default(), EngineSettings::default());
    let resources = [
        ("web", "Container"),
        ("f0", "File"),
        ("cache", "SessionStorage"),
        ("f1", "File"),
        ("db", "Container"),
        ("f2", "File"),
    ];
    accept_and_pass(&mut engine, manifest(1, &resources)).await;
    let handed: Vec<Vec<String>> = fake
        .handed
        .lock()
        .expect("lock")
        .iter()
        .filter(|list| !list.is_empty())
        .cloned()
        .collect();
    let expected: Vec<Vec<String>> = [vec!["cache"], vec!["f0", "f1", "f2"], vec!["web", "db"]]
        .into_iter()
        .map(|ids| ids.into_iter().map(String::from).collect())
        .collect();
    assert_eq!(
        handed, expected,
        "in kind order, each kind in the manifest's order"
    );
    for (id, _) in resources {
        assert_eq!(phase(&engine, id), Phase::Ready, "{id}");
    }
}

#[tokio::test]
async fn each_resource_has_its_own_timeout_and_failure() {
    let fake = FakeReconciler {
        hanging: HashSet::from(["stuck".to_owned()]),
        panicking: HashSet::from(["buggy".to_owned()]),
        ..FakeReconciler::default()
    };
    fake.fail("broken");
    let (mut engine, fake) = serial_engine(fake);
    // One at a time: the resources after the hung and the panicking one still get applied.
    let resources = [
        ("first", "File"),
        ("broken", "File"),
        ("stuck", "File"),
        ("after-stuck", "File"),
        ("buggy", "File"),
        ("last", "File"),
    ];
    let outcome = accept_and_pass(&mut engine, manifest(1, &resources)).await;
    assert!(outcome.complete);
    let status = engine.build_status(&Connectivity::Online).expect("status");
    let reason = |id: &str| {
        status.resources[id]
            .error
            .as_ref()
            .map(|error| error.reason.clone())
    };
    for id in ["first", "after-stuck", "last"] {
        assert_eq!(status.resources[id].phase, Phase::Ready, "{id}");
    }
    assert_eq!(reason("broken"), Some(ErrorReason::PathNotAllowed));
    assert_eq!(reason("stuck"), Some(ErrorReason::IoError));
    assert!(
        status.resources["stuck"]
            .error
            .as_ref()
            .is_some_and(|error| error.message.contains("took longer than"))
    );
    assert_eq!(reason("buggy"), Some(ErrorReason::IoError));
    assert!(
        status.resources["buggy"]
            .error
            .as_ref()
            .is_some_and(|error| error.message.contains("stopped unexpectedly"))
    );
    assert_eq!(fake.calls().len(), resources.len());
}

#[tokio::test]
async fn after_shutdown_the_apply_under_way_finishes_and_no_other_starts() {
    let shutdown = Arc::new(Shutdown::new());
    let fake = FakeReconciler {
        stops_the_agent: Some(("second".to_owned(), Arc::clone(&shutdown))),
        ..FakeReconciler::default()
    };
    let settings = EngineSettings {
        concurrency: 1,
        ..EngineSettings::default()
    };
    let (mut engine, fake) = engine(fake, settings);
    let resources = [
        ("first", "File"),
        ("second", "File"),
        ("third", "File"),
        ("fourth", "File"),
    ];
    engine
        .accept(DesiredUpdate::Manifest(manifest(1, &resources)))
        .expect("accept");
    let outcome = engine.pass(&shutdown.signal()).await.expect("pass");
    assert!(!outcome.complete);
    assert_eq!(
        fake.calls(),
        ["first", "second"].map(|id| Call::Apply(id.into()))
    );
    assert_eq!(phase(&engine, "second"), Phase::Ready);
    let status = engine.build_status(&Connectivity::Online).expect("status");
    assert_eq!(status.resources["third"].phase, Phase::Pending);
}
