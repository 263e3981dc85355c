//! Unit tests of the engine, with a recording fake reconciler: ordering, the concurrency bound,
//! backoff, the isolation of failures, and health-gated rollback (on a manual clock). The fake
//! and the helpers are here; the tests are split by the engine's jobs, one file each.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleetlet_manifests::signature::SecretKey;
use fleetlet_manifests::{
    AgentId, ConditionStatus, ConditionType, ErrorReason, FileDetails, Kind, OnFailure, Phase,
    Resource, ResourceDetails, ResourceSpec, RolloutPolicy,
};
use serde_json::json;

use super::*;
use crate::reconcile::{
    Applied, ApplyLimits, Change, ContainerError, Deleted, Desired, FileError, Outcome, Reconcile,
    ReconcileError, bounded,
};
use crate::shutdown::{Shutdown, ShutdownSignal};
use crate::status::{self, Connectivity};
use crate::store::{MemoryStore, Owned, OwnedFile, OwnershipRecord};

mod accept;
mod concurrency;
mod pass;
mod report;
mod rollout;

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
    /// The ids of every list the engine handed over (`apply_all`), in order.
    handed: Mutex<Vec<Vec<String>>>,
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

impl FakeReconciler {
    async fn apply_result(
        &self,
        resource: &Resource,
        spec_hash: &str,
    ) -> Result<Applied, ReconcileError> {
        let id = resource.id.as_str();
        assert_eq!(spec_hash, resource.spec_hash(), "the engine's cached hash");
        self.applied_specs
            .lock()
            .expect("lock")
            .push((id.to_owned(), spec_hash.to_owned()));
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
}

impl Reconcile for FakeReconciler {
    async fn apply(&self, desired: &Desired) -> Outcome {
        self.apply_result(&desired.resource(), &desired.spec_hash)
            .await
            .into()
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

    /// Records the list, then applies it as every kind does by default.
    async fn apply_all(
        self: Arc<Self>,
        items: Vec<Arc<Desired>>,
        limits: ApplyLimits,
        shutdown: ShutdownSignal,
    ) -> Vec<(Arc<Desired>, Outcome)> {
        let ids = items.iter().map(|desired| desired.id.to_string()).collect();
        self.handed.lock().expect("lock").push(ids);
        bounded::apply_each(self, items, limits, shutdown).await
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

/// Generation 2 of `manifest(1, &[("a", "File")])` with a changed spec for `a`.
fn a_changed() -> AgentManifest {
    AgentManifest::from_value(json!({
        "apiVersion": "fleetlet.dev/v1", "kind": "AgentManifest", "agentId": "pi", "generation": 2,
        "resources": [{"id": "a", "kind": "File", "spec": {"path": "/fake/a", "content": {"text": "new"}, "mode": "0600"}}]
    }))
    .expect("valid")
}

/// Accepts `manifest` and runs one pass that no shutdown stops.
async fn accept_and_pass(
    engine: &mut Engine<FakeReconciler>,
    manifest: AgentManifest,
) -> PassOutcome {
    engine
        .accept(DesiredUpdate::Manifest(manifest))
        .expect("accept");
    engine.pass(&Shutdown::new().signal()).await.expect("pass")
}

/// The `report_seq` of the report waiting in the store's outbox, if one is.
fn outbox_seq(engine: &Engine<FakeReconciler>) -> Option<u64> {
    engine
        .store()
        .pending_report()
        .expect("outbox")
        .map(|s| s.report_seq)
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

/// An engine over `fake` that applies one resource at a time and gives each 100 ms.
fn serial_engine(fake: FakeReconciler) -> (Engine<FakeReconciler>, Arc<FakeReconciler>) {
    let settings = EngineSettings {
        concurrency: 1,
        apply_timeout: Duration::from_millis(100),
        ..EngineSettings::default()
    };
    engine(fake, settings)
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

    /// Generation 4 (`good`) converged, then generation 5 (`bad`, with the given policy) was
    /// still not ready at its deadline, and a pass ran after it.
    async fn bad_missed_its_deadline(&mut self, on_failure: OnFailure) {
        self.apply(good()).await;
        self.apply(bad(on_failure)).await;
        self.past_the_deadline();
        self.pass().await;
    }

    fn status(&self) -> AgentStatus {
        self.engine
            .build_status(&Connectivity::Online)
            .expect("status")
    }

    /// The generation of the manifest the engine would roll back to.
    fn known_good_generation(&self) -> Option<u64> {
        self.engine
            .rollout()
            .known_good
            .as_ref()
            .and_then(|m| m.generation)
    }

    /// The status's (received, applied) generations.
    fn generations(&self) -> (u64, u64) {
        let status = self.status();
        (status.manifest_generation, status.observed_generation)
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

fn files(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("f{i}")).collect()
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
