//! Unit tests of the engine, with a recording fake reconciler: ordering, the concurrency bound,
//! backoff and the isolation of failures.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use fleetlet_manifests::signature::SecretKey;
use fleetlet_manifests::{AgentId, FileDetails, ResourceDetails};
use serde_json::json;

use super::*;
use crate::reconcile::FileError;
use crate::shutdown::Shutdown;
use crate::store::{MemoryStore, Owned, OwnedFile};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Apply(String),
    Delete(String),
}

/// Records every call, fails or hangs on the ids it is told to, and measures how many calls ran
/// at the same time.
#[derive(Debug, Default)]
struct FakeReconciler {
    calls: Mutex<Vec<Call>>,
    failing: Mutex<HashSet<String>>,
    hanging: HashSet<String>,
    work_time: Duration,
    running: AtomicUsize,
    most_running: AtomicUsize,
}

impl FakeReconciler {
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("lock").clone()
    }

    fn fail(&self, id: &str) {
        self.failing.lock().expect("lock").insert(id.to_owned());
    }

    fn heal(&self, id: &str) {
        self.failing.lock().expect("lock").remove(id);
    }

    async fn work(&self, call: Call, id: &str) -> bool {
        self.calls.lock().expect("lock").push(call);
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_running.fetch_max(now, Ordering::SeqCst);
        if self.hanging.contains(id) {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(self.work_time).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.failing.lock().expect("lock").contains(id)
    }
}

impl Reconcile for FakeReconciler {
    async fn apply(
        &self,
        resource: &Resource,
        _previous: Option<&OwnershipRecord>,
    ) -> Result<Applied, ReconcileError> {
        let id = resource.id.as_str();
        if self.work(Call::Apply(id.to_owned()), id).await {
            return Err(FileError::OutsideRoots {
                path: format!("/outside/{id}"),
                roots: "/fake".into(),
            }
            .into());
        }
        Ok(Applied {
            change: Change::Created,
            owned: Owned::File(OwnedFile {
                path: format!("/fake/{id}"),
                created: true,
                sha256: String::new(),
            }),
            details: Some(ResourceDetails::File(FileDetails {
                sha256: String::new(),
                size: 0,
                mode: "0644".into(),
                owner: None,
                group: None,
            })),
        })
    }

    async fn delete(
        &self,
        id: &ResourceId,
        _record: &OwnershipRecord,
    ) -> Result<Deleted, ReconcileError> {
        self.work(Call::Delete(id.to_string()), id.as_str()).await;
        Ok(Deleted::Removed)
    }

    fn supported_kinds(&self) -> Vec<Kind> {
        Kind::ALL.to_vec()
    }
}

fn agent_info() -> AgentInfo {
    AgentInfo {
        version: "test".into(),
        hostname: "test".into(),
        arch: "x86_64".into(),
        os: "linux".into(),
        boot_id: String::new(),
        started_at: OffsetDateTime::now_utc(),
        supported_kinds: vec![],
    }
}

fn resource_json(id: &str, kind: &str) -> serde_json::Value {
    match kind {
        "File" => json!({"id": id, "kind": "File",
            "spec": {"path": format!("/fake/{id}"), "content": {"text": id}, "mode": "0644"}}),
        "SessionStorage" => json!({"id": id, "kind": "SessionStorage",
            "spec": {"sessionId": format!("s-{id}"), "sizeLimitBytes": 1024}}),
        "SystemdUnit" => json!({"id": id, "kind": "SystemdUnit",
            "spec": {"name": format!("{id}.service"), "unit": "[Service]\nExecStart=/bin/true\n", "enabled": true, "state": "Started"}}),
        "Container" => json!({"id": id, "kind": "Container",
            "spec": {"image": "localhost/busybox:test", "restartPolicy": "Always", "pullPolicy": "Never"}}),
        other => json!({"id": id, "kind": other, "spec": {"anything": true}}),
    }
}

fn manifest(generation: u64, resources: &[(&str, &str)]) -> AgentManifest {
    let resources: Vec<_> = resources
        .iter()
        .map(|(id, kind)| resource_json(id, kind))
        .collect();
    AgentManifest::from_value(json!({
        "apiVersion": "fleetlet.dev/v1", "kind": "AgentManifest", "agentId": "pi",
        "generation": generation, "resources": resources,
    }))
    .expect("valid manifest")
}

fn engine(
    fake: FakeReconciler,
    settings: EngineSettings,
) -> (Engine<FakeReconciler>, Arc<FakeReconciler>) {
    let store = Arc::new(MemoryStore::new(AgentId::try_from("pi").expect("id")));
    let fake = Arc::new(fake);
    let engine = Engine::new(store, Arc::clone(&fake), settings, agent_info()).expect("engine");
    (engine, fake)
}

fn phase(engine: &Engine<FakeReconciler>, id: &str) -> Phase {
    let status = engine.build_status(&Connectivity::Online).expect("status");
    status.resources[id].phase
}

/// The position of a call in the log.
fn position(calls: &[Call], call: &Call) -> usize {
    calls
        .iter()
        .position(|c| c == call)
        .unwrap_or_else(|| panic!("{call:?} was not made: {calls:?}"))
}

#[tokio::test]
async fn applies_go_session_storage_file_systemd_unit_container_and_deletes_go_in_reverse() {
    let (mut engine, fake) = engine(FakeReconciler::default(), EngineSettings::default());
    let shutdown = Shutdown::new();
    // Listed in the worst order on purpose.
    let kinds = [
        ("web", "Container"),
        ("kiosk", "SystemdUnit"),
        ("motd", "File"),
        ("scratch", "SessionStorage"),
    ];
    engine
        .accept(DesiredUpdate::Manifest(manifest(1, &kinds)))
        .expect("accept");
    engine.pass(&shutdown.signal()).await.expect("pass");
    let applies: Vec<Call> = fake.calls();
    assert_eq!(
        applies,
        ["scratch", "motd", "kiosk", "web"].map(|id| Call::Apply(id.into()))
    );

    engine
        .accept(DesiredUpdate::Manifest(manifest(2, &[])))
        .expect("accept");
    engine.pass(&shutdown.signal()).await.expect("pass");
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
    let shutdown = Shutdown::new();
    engine
        .accept(DesiredUpdate::Manifest(manifest(1, &[("old", "File")])))
        .expect("accept");
    engine.pass(&shutdown.signal()).await.expect("pass");
    engine
        .accept(DesiredUpdate::Manifest(manifest(2, &[("new", "File")])))
        .expect("accept");
    engine.pass(&shutdown.signal()).await.expect("pass");
    let calls = fake.calls();
    assert!(
        position(&calls, &Call::Delete("old".into()))
            < position(&calls, &Call::Apply("new".into()))
    );
}

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
    let ids: Vec<String> = (0..12).map(|i| format!("f{i}")).collect();
    let resources: Vec<(&str, &str)> = ids.iter().map(|id| (id.as_str(), "File")).collect();
    engine
        .accept(DesiredUpdate::Manifest(manifest(1, &resources)))
        .expect("accept");
    engine.pass(&Shutdown::new().signal()).await.expect("pass");
    assert_eq!(fake.calls().len(), 12);
    assert_eq!(fake.most_running.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn one_failing_resource_never_blocks_the_others() {
    let fake = FakeReconciler {
        hanging: HashSet::from(["stuck".to_owned()]),
        ..FakeReconciler::default()
    };
    fake.fail("broken");
    let settings = EngineSettings {
        concurrency: 1,
        apply_timeout: Duration::from_millis(100),
        ..EngineSettings::default()
    };
    let (mut engine, _fake) = engine(fake, settings);
    let resources = [
        ("broken", "File"),
        ("stuck", "File"),
        ("fine", "File"),
        ("unit", "SystemdUnit"),
    ];
    engine
        .accept(DesiredUpdate::Manifest(manifest(1, &resources)))
        .expect("accept");
    let outcome = engine.pass(&Shutdown::new().signal()).await.expect("pass");
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
    let shutdown = Shutdown::new();
    engine
        .accept(DesiredUpdate::Manifest(manifest(1, &[("a", "File")])))
        .expect("accept");
    engine.pass(&shutdown.signal()).await.expect("pass");
    let changed = AgentManifest::from_value(json!({
        "apiVersion": "fleetlet.dev/v1", "kind": "AgentManifest", "agentId": "pi", "generation": 2,
        "resources": [{"id": "a", "kind": "File", "spec": {"path": "/fake/a", "content": {"text": "new"}, "mode": "0600"}}]
    }))
    .expect("valid");
    engine
        .accept(DesiredUpdate::Manifest(changed))
        .expect("accept");
    engine.pass(&shutdown.signal()).await.expect("pass");
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

#[tokio::test]
async fn a_manifest_for_another_agent_is_rejected_and_the_last_one_kept() {
    let (mut engine, _fake) = engine(FakeReconciler::default(), EngineSettings::default());
    engine
        .accept(DesiredUpdate::Manifest(manifest(1, &[("motd", "File")])))
        .expect("accept");
    let mut foreign = manifest(2, &[]);
    foreign.agent_id = AgentId::try_from("someone-else").expect("id");
    engine
        .accept(DesiredUpdate::Manifest(foreign))
        .expect("accept");
    assert_eq!(engine.manifest_generation(), 1);
    let status = engine.build_status(&Connectivity::Online).expect("status");
    assert!(status.conditions.iter().any(|c| {
        c.type_ == fleetlet_manifests::ConditionType::ManifestRejected
            && c.status == fleetlet_manifests::ConditionStatus::True
    }));
}

fn rejection(engine: &Engine<FakeReconciler>) -> Option<(String, String)> {
    let status = engine.build_status(&Connectivity::Online).expect("status");
    status
        .conditions
        .iter()
        .find(|c| {
            c.type_ == fleetlet_manifests::ConditionType::ManifestRejected
                && c.status == fleetlet_manifests::ConditionStatus::True
        })
        .map(|c| (c.reason.clone(), c.message.clone()))
}

fn signed(mut manifest: AgentManifest, key: &SecretKey) -> AgentManifest {
    manifest.signature = Some(key.sign(&manifest));
    manifest
}

fn trusting(keys: &[&SecretKey]) -> EngineSettings {
    EngineSettings {
        trusted_keys: keys.iter().map(|k| k.public()).collect(),
        ..EngineSettings::default()
    }
}

#[tokio::test]
async fn with_trusted_keys_a_tampered_manifest_is_refused_and_the_signed_one_kept() {
    let key = SecretKey::from_seed([7; 32]);
    let (mut engine, _fake) = engine(FakeReconciler::default(), trusting(&[&key]));
    let good = signed(manifest(1, &[("motd", "File")]), &key);
    engine
        .accept(DesiredUpdate::Manifest(good.clone()))
        .expect("accept");
    assert_eq!(rejection(&engine), None);

    let mut tampered = manifest(2, &[("motd", "File"), ("evil", "File")]);
    tampered.signature = good.signature.clone();
    engine
        .accept(DesiredUpdate::Manifest(tampered))
        .expect("accept");
    assert_eq!(engine.manifest_generation(), 1);
    assert_eq!(engine.manifest(), Some(&good));
    let (reason, message) = rejection(&engine).expect("rejected");
    assert_eq!(reason, "SignatureInvalid");
    assert!(message.contains("generation 2"), "{message}");
}

#[tokio::test]
async fn with_trusted_keys_an_unsigned_manifest_is_refused() {
    let key = SecretKey::from_seed([7; 32]);
    let (mut engine, _fake) = engine(FakeReconciler::default(), trusting(&[&key]));
    engine
        .accept(DesiredUpdate::Manifest(manifest(1, &[("motd", "File")])))
        .expect("accept");
    assert_eq!(engine.manifest(), None);
    let (reason, message) = rejection(&engine).expect("rejected");
    assert_eq!(reason, "SignatureInvalid");
    assert!(message.contains("not signed"), "{message}");
}

#[tokio::test]
async fn without_trusted_keys_unsigned_manifests_are_accepted() {
    let (mut engine, _fake) = engine(FakeReconciler::default(), EngineSettings::default());
    engine
        .accept(DesiredUpdate::Manifest(manifest(1, &[("motd", "File")])))
        .expect("accept");
    assert_eq!(engine.manifest_generation(), 1);
    assert_eq!(rejection(&engine), None);
}

#[tokio::test]
async fn during_a_key_rotation_either_trusted_key_is_accepted() {
    let (old, new) = (SecretKey::from_seed([1; 32]), SecretKey::from_seed([2; 32]));
    let (mut engine, _fake) = engine(FakeReconciler::default(), trusting(&[&old, &new]));
    engine
        .accept(DesiredUpdate::Manifest(signed(
            manifest(1, &[("a", "File")]),
            &old,
        )))
        .expect("accept");
    engine
        .accept(DesiredUpdate::Manifest(signed(
            manifest(2, &[("b", "File")]),
            &new,
        )))
        .expect("accept");
    assert_eq!(engine.manifest_generation(), 2);
    assert_eq!(rejection(&engine), None);
}

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
    assert_eq!(
        engine
            .store()
            .pending_report()
            .expect("outbox")
            .map(|s| s.report_seq),
        Some(heartbeat.report_seq)
    );
}
