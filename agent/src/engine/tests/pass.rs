//! Passes: the order of deletes and applies, the isolation of failures, backoff, kinds this
//! build does not know, shutdown, and a generation the store cannot save.

use super::*;

#[tokio::test]
async fn applies_go_session_storage_file_systemd_unit_container_and_deletes_go_in_reverse() {
    let (mut engine, fake) = engine(FakeReconciler::default(), EngineSettings::default());
    // Listed in the worst order on purpose.
    let kinds = [
        ("web", "Container"),
        ("kiosk", "SystemdUnit"),
        ("motd", "File"),
        ("scratch", "SessionStorage"),
    ];
    accept_and_pass(&mut engine, manifest(1, &kinds)).await;
    let applies: Vec<Call> = fake.calls();
    assert_eq!(
        applies,
        ["scratch", "motd", "kiosk", "web"].map(|id| Call::Apply(id.into()))
    );

    accept_and_pass(&mut engine, manifest(2, &[])).await;
    let deletes: Vec<Call> = fake.calls()[4..].to_vec();
    assert_eq!(
        deletes,
        ["web", "kiosk", "motd", "scratch"].map(|id| Call::Delete(id.into()))
    );
    let status = engine.build_status(&Connectivity::Online).expect("status");
    assert!(status.resources.is_empty());
}

#[tokio::test]
async fn deletes_run_before_applies_so_a_freed_object_can_be_taken_over() {
    let (mut engine, fake) = engine(FakeReconciler::default(), EngineSettings::default());
    accept_and_pass(&mut engine, manifest(1, &[("old", "File")])).await;
    accept_and_pass(&mut engine, manifest(2, &[("new", "File")])).await;
    let calls = fake.calls();
    assert!(
        position(&calls, &Call::Delete("old".into()))
            < position(&calls, &Call::Apply("new".into()))
    );
}

#[tokio::test]
async fn one_failing_resource_never_blocks_the_others() {
    let fake = FakeReconciler {
        hanging: HashSet::from(["stuck".to_owned()]),
        ..FakeReconciler::default()
    };
    fake.fail("broken");
    let (mut engine, _fake) = serial_engine(fake);
    let resources = [
        ("broken", "File"),
        ("stuck", "File"),
        ("fine", "File"),
        ("unit", "SystemdUnit"),
    ];
    let outcome = accept_and_pass(&mut engine, manifest(1, &resources)).await;
    assert!(outcome.complete);
    assert_eq!(phase(&engine, "fine"), Phase::Ready);
    assert_eq!(phase(&engine, "unit"), Phase::Ready);
    let status = engine.build_status(&Connectivity::Online).expect("status");
    let broken = &status.resources["broken"];
    assert_eq!(broken.phase, Phase::Failed);
    assert_eq!(
        broken.error.as_ref().map(|e| e.reason.clone()),
        Some(ErrorReason::PathNotAllowed)
    );
    assert!(broken.retry_after.is_some());
    assert_eq!(status.resources["stuck"].phase, Phase::Failed);
    assert_eq!(status.observed_generation, 1);
}

#[tokio::test]
async fn a_failed_resource_waits_out_its_backoff_then_succeeds_and_resets() {
    let fake = FakeReconciler::default();
    fake.fail("flaky");
    let settings = EngineSettings {
        backoff: Backoff {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(5),
        },
        ..EngineSettings::default()
    };
    let (mut engine, fake) = engine(fake, settings);
    let shutdown = Shutdown::new();
    engine
        .accept(DesiredUpdate::Manifest(manifest(
            1,
            &[("flaky", "File"), ("other", "File")],
        )))
        .expect("accept");
    let first = engine.pass(&shutdown.signal()).await.expect("pass");
    assert!(first.next_retry.is_some());

    // A resync before the retry time leaves the failed resource alone but still visits others.
    engine.pass(&shutdown.signal()).await.expect("pass");
    let flaky_calls = |fake: &FakeReconciler| {
        fake.calls()
            .iter()
            .filter(|c| **c == Call::Apply("flaky".into()))
            .count()
    };
    assert_eq!(flaky_calls(&fake), 1);
    assert_eq!(
        fake.calls()
            .iter()
            .filter(|c| **c == Call::Apply("other".into()))
            .count(),
        2
    );

    // The second failure doubles the wait.
    tokio::time::sleep(Duration::from_millis(250)).await;
    engine.pass(&shutdown.signal()).await.expect("pass");
    assert_eq!(flaky_calls(&fake), 2);
    let states = engine.store().resource_states().expect("states");
    let flaky = &states[&ResourceId::try_from("flaky").expect("id")];
    assert_eq!(flaky.consecutive_failures, 2);
    let wait = flaky.status.retry_after.expect("retry") - flaky.status.since;
    assert!(
        wait >= time::Duration::milliseconds(400),
        "waited only {wait}"
    );

    fake.heal("flaky");
    tokio::time::sleep(Duration::from_millis(450)).await;
    engine.pass(&shutdown.signal()).await.expect("pass");
    let states = engine.store().resource_states().expect("states");
    let flaky = &states[&ResourceId::try_from("flaky").expect("id")];
    assert_eq!(flaky.status.phase, Phase::Ready);
    assert_eq!(flaky.consecutive_failures, 0);
    assert!(flaky.status.retry_after.is_none());
}

#[tokio::test]
async fn a_changed_spec_is_retried_at_once_despite_backoff() {
    let fake = FakeReconciler::default();
    fake.fail("a");
    let (mut engine, fake) = engine(fake, EngineSettings::default());
    accept_and_pass(&mut engine, manifest(1, &[("a", "File")])).await;
    accept_and_pass(&mut engine, a_changed()).await;
    assert_eq!(
        fake.calls(),
        [Call::Apply("a".into()), Call::Apply("a".into())]
    );
}

#[tokio::test]
async fn unknown_kinds_are_unsupported_and_never_reach_a_reconciler() {
    let (mut engine, fake) = engine(FakeReconciler::default(), EngineSettings::default());
    engine
        .accept(DesiredUpdate::Manifest(manifest(
            1,
            &[("gpu", "GpuDevice"), ("motd", "File")],
        )))
        .expect("accept");
    engine.pass(&Shutdown::new().signal()).await.expect("pass");
    assert_eq!(fake.calls(), [Call::Apply("motd".into())]);
    assert_eq!(phase(&engine, "gpu"), Phase::Unsupported);
    assert_eq!(phase(&engine, "motd"), Phase::Ready);
}

#[tokio::test]
async fn after_shutdown_no_new_work_starts_and_the_pass_is_incomplete() {
    let (mut engine, fake) = engine(FakeReconciler::default(), EngineSettings::default());
    let shutdown = Shutdown::new();
    shutdown.trigger();
    engine
        .accept(DesiredUpdate::Manifest(manifest(1, &[("motd", "File")])))
        .expect("accept");
    let outcome = engine.pass(&shutdown.signal()).await.expect("pass");
    assert!(!outcome.complete);
    assert!(fake.calls().is_empty());
    let status = engine.build_status(&Connectivity::Online).expect("status");
    assert_eq!(status.observed_generation, 0);
}

// A store that cannot save (issue #22, B1): the generation received is applied from memory,
// reported as Degraded, and saved once the store can.

#[tokio::test]
async fn a_generation_the_store_cannot_save_is_applied_reported_and_saved_when_it_can() {
    use crate::store::ResilientStore;
    use crate::store::failing::FailingStore;

    let disk = Arc::new(FailingStore::new(AgentId::try_from("pi").expect("id")));
    let store = Arc::new(ResilientStore::new(Arc::clone(&disk) as Arc<dyn Store>));
    let fake = Arc::new(FakeReconciler::default());
    let mut engine = Engine::new(
        store,
        Arc::clone(&fake),
        EngineSettings::default(),
        agent_info(),
    )
    .expect("engine");
    let shutdown = Shutdown::new();
    let degraded = |status: &AgentStatus| {
        let c = status
            .conditions
            .iter()
            .find(|c| c.type_ == ConditionType::Degraded)
            .expect("Degraded condition");
        (c.status, c.reason.clone())
    };

    engine
        .accept(DesiredUpdate::Manifest(manifest(1, &[("a", "File")])))
        .expect("accept 1");
    engine.pass(&shutdown.signal()).await.expect("pass");
    engine
        .publish_status(&Connectivity::Online, false)
        .expect("publish");

    // The disk fills up just as generation 2 arrives.
    disk.fail(true);
    engine
        .accept(DesiredUpdate::Manifest(manifest(
            2,
            &[("a", "File"), ("b", "File")],
        )))
        .expect("a store that cannot save does not lose the generation");
    let outcome = engine.pass(&shutdown.signal()).await.expect("pass");
    assert!(outcome.complete);
    assert!(fake.calls().contains(&Call::Apply("b".into())));
    let status = engine
        .publish_status(&Connectivity::Online, false)
        .expect("publish")
        .expect("a new status");
    assert_eq!(
        (status.manifest_generation, status.observed_generation),
        (2, 2)
    );
    assert_eq!(
        status.resources[&ResourceId::try_from("b").expect("id")].phase,
        Phase::Ready
    );
    assert_eq!(
        degraded(&status),
        (ConditionStatus::True, "DiskFull".into())
    );
    // The report waits for the manager in memory; the disk still holds generation 1.
    assert_eq!(outbox_seq(&engine), Some(status.report_seq));
    let on_disk = |disk: &FailingStore| {
        disk.load_manifest()
            .expect("load")
            .and_then(|m| m.generation)
    };
    assert_eq!(on_disk(&disk), Some(1));

    // Still full at the next pass: nothing lost, still reported.
    engine.pass(&shutdown.signal()).await.expect("pass");
    assert_eq!(on_disk(&disk), Some(1));
    assert!(engine.store().fault().is_some());

    // Space again: the pass's flush saves what waited, and the status says so.
    disk.fail(false);
    engine.pass(&shutdown.signal()).await.expect("pass");
    assert_eq!(on_disk(&disk), Some(2));
    assert!(
        disk.ownership_records()
            .expect("records")
            .contains_key(&ResourceId::try_from("b").expect("id"))
    );
    let status = engine
        .publish_status(&Connectivity::Online, false)
        .expect("publish")
        .expect("a new status");
    assert_eq!(
        degraded(&status),
        (ConditionStatus::False, "NoFailures".into())
    );
    assert_eq!(
        disk.load_status().expect("status").map(|s| s.report_seq),
        Some(status.report_seq)
    );
}
