//! Unit tests of the engine, with a recording fake reconciler: ordering, the concurrency bound,
//! backoff, the isolation of failures, and health-gated rollback (on a manual clock).

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use fleetlet_manifests::signature::SecretKey;
use fleetlet_manifests::{
    AgentId, ConditionStatus, ConditionType, FileDetails, ResourceDetails, ResourceSpec,
    RolloutPolicy,
};
use serde_json::json;

use super::*;
use crate::reconcile::{ContainerError, FileError};
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
    /// Every apply as (resource id, spec hash), to tell which spec of a resource was applied.
    applied_specs: Mutex<Vec<(String, String)>>,
    /// Resources handed over per batch (0 or 1: one by one), through the default `apply_batch`.
    batch: usize,
    /// Applies of these ids panic.
    panicking: HashSet<String>,
    /// Applying this id triggers shutdown (once the apply is done).
    stops_the_agent: Option<(String, Arc<Shutdown>)>,
    /// Applies of these ids find drift and repair it.
    drifting: Mutex<HashSet<String>>,
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
        self.applied_specs
            .lock()
            .expect("lock")
            .push((id.to_owned(), resource.spec_hash()));
        let failing = self.work(Call::Apply(id.to_owned()), id).await;
        assert!(!self.panicking.contains(id), "the fake panics on {id}");
        if let Some((stopper, shutdown)) = &self.stops_the_agent
            && stopper == id
        {
            shutdown.trigger();
        }
        // A container whose image is called "missing" cannot start, whatever else is going on.
        if let ResourceSpec::Container(spec) = &resource.spec
            && spec.image.as_str().contains("missing")
        {
            return Err(ContainerError::ImageNotFound {
                id: resource.id.clone(),
                image: spec.image.as_str().to_owned(),
            }
            .into());
        }
        if failing {
            return Err(FileError::OutsideRoots {
                path: format!("/outside/{id}"),
                roots: "/fake".into(),
            }
            .into());
        }
        let change = if self.drifting.lock().expect("lock").contains(id) {
            Change::Repaired {
                drift: "content changed".into(),
            }
        } else {
            Change::Created
        };
        Ok(Applied {
            change,
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

    fn batch_size(&self, _kind: Kind) -> usize {
        self.batch.max(1)
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

// Health-gated rollback. Time is a manual clock: deadlines are passed by moving it, never by
// waiting.

const DEADLINE: u32 = 60;

fn container(id: &str, image: &str) -> serde_json::Value {
    json!({"id": id, "kind": "Container",
        "spec": {"image": image, "restartPolicy": "Always", "pullPolicy": "Never"}})
}

fn file(id: &str) -> serde_json::Value {
    json!({"id": id, "kind": "File",
        "spec": {"path": format!("/fake/{id}"), "content": {"text": id}, "mode": "0644"}})
}

/// A manifest of `resources`, with a rollout policy when `on_failure` is given.
fn rollout_manifest(
    generation: u64,
    resources: Vec<serde_json::Value>,
    on_failure: Option<OnFailure>,
) -> AgentManifest {
    let mut manifest = AgentManifest::from_value(json!({
        "apiVersion": "fleetlet.dev/v1", "kind": "AgentManifest", "agentId": "pi",
        "generation": generation, "resources": resources,
    }))
    .expect("valid manifest");
    manifest.rollout = on_failure.map(|on_failure| RolloutPolicy {
        progress_deadline_seconds: DEADLINE,
        on_failure,
    });
    manifest
}

/// Generation 4: a web container that starts, and a file.
fn good() -> AgentManifest {
    rollout_manifest(
        4,
        vec![container("web", "localhost/web:1"), file("motd")],
        None,
    )
}

/// Generation 5: the web container's image is missing, and a file only this generation has.
fn bad(on_failure: OnFailure) -> AgentManifest {
    rollout_manifest(
        5,
        vec![
            container("web", "localhost/web:missing"),
            file("motd"),
            file("banner"),
        ],
        Some(on_failure),
    )
}

struct Rollout {
    engine: Engine<FakeReconciler>,
    fake: Arc<FakeReconciler>,
    store: Arc<dyn Store>,
    clock: Clock,
    shutdown: Shutdown,
    trusted_keys: Vec<PublicKey>,
}

impl Rollout {
    fn new() -> Self {
        Self::over(Arc::new(MemoryStore::new(
            AgentId::try_from("pi").expect("id"),
        )))
    }

    fn over(store: Arc<dyn Store>) -> Self {
        let fake = Arc::new(FakeReconciler::default());
        let clock = Clock::manual(OffsetDateTime::now_utc());
        let engine = Self::engine_over(&store, &fake, &clock, &[]);
        Self {
            engine,
            fake,
            store,
            clock,
            shutdown: Shutdown::new(),
            trusted_keys: Vec::new(),
        }
    }

    /// An engine over the given store, as after a restart of the agent.
    fn engine_over(
        store: &Arc<dyn Store>,
        fake: &Arc<FakeReconciler>,
        clock: &Clock,
        trusted_keys: &[PublicKey],
    ) -> Engine<FakeReconciler> {
        let settings = EngineSettings {
            clock: clock.clone(),
            trusted_keys: trusted_keys.to_vec(),
            ..EngineSettings::default()
        };
        Engine::new(Arc::clone(store), Arc::clone(fake), settings, agent_info()).expect("engine")
    }

    fn restart(&mut self) {
        self.engine = Self::engine_over(&self.store, &self.fake, &self.clock, &self.trusted_keys);
    }

    async fn apply(&mut self, manifest: AgentManifest) {
        self.engine
            .accept(DesiredUpdate::Manifest(manifest))
            .expect("accept");
        self.pass().await;
    }

    async fn pass(&mut self) {
        let outcome = self
            .engine
            .pass(&self.shutdown.signal())
            .await
            .expect("pass");
        assert!(outcome.complete);
    }

    fn past_the_deadline(&self) {
        self.clock
            .advance(Duration::from_secs(u64::from(DEADLINE) + 1));
    }

    fn status(&self) -> AgentStatus {
        self.engine
            .build_status(&Connectivity::Online)
            .expect("status")
    }

    fn rolled_back_condition(&self) -> Option<fleetlet_manifests::Condition> {
        self.status()
            .conditions
            .into_iter()
            .find(|c| c.type_ == ConditionType::RolledBack)
    }

    /// How often `id` was applied with the spec it has in `manifest`.
    fn applies_of(&self, manifest: &AgentManifest, id: &str) -> usize {
        let hash = manifest.resource(id).expect("resource").spec_hash();
        self.fake
            .applied_specs
            .lock()
            .expect("lock")
            .iter()
            .filter(|(applied, spec)| applied == id && *spec == hash)
            .count()
    }

    fn events(&self, kind: EventKind) -> Vec<String> {
        self.store
            .read_events(0, MAX_EVENTS)
            .expect("events")
            .into_iter()
            .filter(|e| e.kind == kind)
            .map(|e| e.message)
            .collect()
    }
}

const MAX_EVENTS: usize = 500;

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

fn files(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("f{i}")).collect()
}

#[tokio::test]
async fn batches_keep_the_order_and_the_concurrency_bound() {
    let fake = FakeReconciler {
        work_time: Duration::from_millis(20),
        batch: 64,
        ..FakeReconciler::default()
    };
    let settings = EngineSettings {
        concurrency: 3,
        ..EngineSettings::default()
    };
    let (mut engine, fake) = engine(fake, settings);
    let ids = files(12);
    let resources: Vec<(&str, &str)> = ids.iter().map(|id| (id.as_str(), "File")).collect();
    engine
        .accept(DesiredUpdate::Manifest(manifest(1, &resources)))
        .expect("accept");
    engine.pass(&Shutdown::new().signal()).await.expect("pass");
    // 12 resources, 3 at a time: batches of 4, all three running side by side.
    assert_eq!(fake.calls().len(), 12);
    assert_eq!(fake.most_running.load(Ordering::SeqCst), 3);
    let calls = fake.calls();
    for pair in [("f0", "f1"), ("f4", "f5"), ("f8", "f11")] {
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
async fn within_a_batch_each_resource_has_its_own_timeout_and_failure() {
    let fake = FakeReconciler {
        hanging: HashSet::from(["stuck".to_owned()]),
        panicking: HashSet::from(["buggy".to_owned()]),
        batch: 64,
        ..FakeReconciler::default()
    };
    fake.fail("broken");
    let settings = EngineSettings {
        concurrency: 1,
        apply_timeout: Duration::from_millis(100),
        ..EngineSettings::default()
    };
    let (mut engine, fake) = engine(fake, settings);
    // One batch: the resources after the hung and the panicking one still get applied.
    let resources = [
        ("first", "File"),
        ("broken", "File"),
        ("stuck", "File"),
        ("after-stuck", "File"),
        ("buggy", "File"),
        ("last", "File"),
    ];
    engine
        .accept(DesiredUpdate::Manifest(manifest(1, &resources)))
        .expect("accept");
    let outcome = engine.pass(&Shutdown::new().signal()).await.expect("pass");
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
    assert_eq!(fake.calls().len(), resources.len());
}

#[tokio::test]
async fn after_shutdown_a_batch_finishes_the_apply_under_way_and_starts_no_other() {
    let shutdown = Arc::new(Shutdown::new());
    let fake = FakeReconciler {
        batch: 64,
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

/// Publishes through `engine` and checks that a status it did not publish (it was not built
/// again) says what a status built now says, i.e. what it last published. Returns whether a
/// status was published.
fn publish(engine: &mut Engine<FakeReconciler>, connectivity: &Connectivity) -> bool {
    let published = engine
        .publish_status(connectivity, false)
        .expect("publish")
        .is_some();
    let built = engine.build_status(connectivity).expect("status");
    let last = engine
        .store()
        .pending_report()
        .expect("outbox")
        .expect("a status was published before");
    assert!(
        status::same_content(&built, &last),
        "the last published status is out of date:\n{built:#?}\n{last:#?}"
    );
    published
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
    assert_eq!(
        engine
            .store()
            .pending_report()
            .expect("outbox")
            .map(|s| s.report_seq),
        Some(status.report_seq)
    );
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
