//! `cargo bench -p fleetlet-agent`: the agent's own CPU cost with 1,000 resources, apart from
//! what the reconcilers do on the device: one engine pass over converged resources (memory
//! store, a reconciler that finds everything unchanged), and the filesystem store's save, flush
//! and open (in a temporary directory, with fsync on, as the agent runs it). Then the File
//! reconciler's share: an engine pass with the real reconcilers over 1,000 converged files on
//! disk, laid out as `fleet_load cpu` does (10 directories of 100), with the CPU it used.
//!
//! Std timing only (no bench framework): each case runs for about two seconds after a warm-up,
//! and the median and 99th percentile of single runs are printed. Figures are for comparing
//! builds on one machine, never test assertions.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetlet_agent::engine::{DesiredUpdate, Engine, EngineSettings};
use fleetlet_agent::reconcile::{
    Applied, Change, Deleted, Desired, Outcome, Reconcile, ReconcileError, ReconcilerSettings,
    Reconcilers,
};
use fleetlet_agent::shutdown::Shutdown;
use fleetlet_agent::store::{MemoryStore, Owned, OwnedFile, OwnershipRecord, Store};
use fleetlet_manifests::{AgentId, AgentInfo, AgentManifest, Kind, Resource, ResourceId};
use serde_json::json;

const RESOURCES: usize = 1000;
/// How long each case keeps running.
const BUDGET: Duration = Duration::from_secs(2);

/// Runs `case` repeatedly for [`BUDGET`] (at least 5 times) and prints median and p99.
fn measure<T>(name: &str, mut case: impl FnMut() -> T) {
    black_box(case());
    let started = Instant::now();
    let mut times = Vec::new();
    while times.len() < 5 || (started.elapsed() < BUDGET && times.len() < 100_000) {
        let run = Instant::now();
        black_box(case());
        times.push(run.elapsed());
    }
    times.sort();
    let at = |fraction: f64| times[((times.len() as f64 * fraction).ceil() as usize).max(1) - 1];
    println!(
        "{name:<44} {:>7} runs   median {:>12?}   p99 {:>12?}",
        times.len(),
        at(0.5),
        at(0.99)
    );
}

fn agent_id() -> AgentId {
    AgentId::try_from("bench-agent").expect("valid agent id")
}

fn manifest() -> AgentManifest {
    let resources: Vec<serde_json::Value> = (0..RESOURCES)
        .map(|i| {
            json!({
                "id": format!("file-{i}"),
                "kind": "File",
                "spec": {
                    "path": format!("/srv/app/dir-{}/file-{i}.conf", i % 10),
                    "content": {"text": format!("setting-{i} = {}\n", i * 7)},
                    "mode": "0644"
                }
            })
        })
        .collect();
    let mut manifest = AgentManifest::from_value(json!({
        "apiVersion": "fleetlet.dev/v1",
        "kind": "AgentManifest",
        "agentId": "bench-agent",
        "resources": resources
    }))
    .expect("valid manifest");
    manifest.generation = Some(1);
    manifest
}

fn owned_file(resource: &Resource) -> Owned {
    Owned::File(OwnedFile {
        path: format!("/srv/app/{}", resource.id),
        created: true,
        sha256: resource.spec_hash(),
    })
}

/// A reconciler that finds every resource already as its spec says: what is left of a pass is
/// the engine's and the store's own work.
#[derive(Debug)]
struct Converged;

impl Reconcile for Converged {
    async fn apply(&self, desired: &Desired) -> Outcome {
        Ok(Applied {
            change: Change::Unchanged,
            owned: owned_file(&desired.resource()),
            details: None,
        })
        .into()
    }

    async fn delete(
        &self,
        _id: &ResourceId,
        _record: &OwnershipRecord,
    ) -> Result<Deleted, ReconcileError> {
        Ok(Deleted::AlreadyGone)
    }

    fn supported_kinds(&self) -> Vec<Kind> {
        vec![Kind::File]
    }
}

fn agent_info() -> AgentInfo {
    AgentInfo {
        version: "0.0.0-bench".into(),
        hostname: "bench".into(),
        arch: std::env::consts::ARCH.into(),
        os: std::env::consts::OS.into(),
        boot_id: "bench".into(),
        started_at: time::OffsetDateTime::UNIX_EPOCH,
        supported_kinds: vec!["File".into()],
    }
}

/// An engine over a memory store and `reconciler`, at default settings.
fn engine_over<R: Reconcile>(reconciler: R) -> Engine<R> {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new(agent_id()));
    Engine::new(
        store,
        Arc::new(reconciler),
        EngineSettings::default(),
        agent_info(),
    )
    .expect("engine")
}

fn bench_engine_pass() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut engine = engine_over(Converged);
    engine
        .accept(DesiredUpdate::Manifest(manifest()))
        .expect("accept");
    let shutdown = Shutdown::new();
    let signal = shutdown.signal();
    // The first pass records everything; the measured ones find it converged.
    runtime.block_on(engine.pass(&signal)).expect("pass");
    measure("engine pass, 1,000 converged (memory store)", || {
        runtime.block_on(engine.pass(&signal)).expect("pass")
    });
}

#[cfg(feature = "fs-store")]
fn bench_fs_store() {
    use fleetlet_agent::store::{FsStore, FsStoreOptions, ResourceState};
    use fleetlet_manifests::ResourceStatus;

    let manifest = manifest();
    let records: Vec<(ResourceId, OwnershipRecord, ResourceState)> = manifest
        .resources
        .iter()
        .map(|r| {
            let record = OwnershipRecord {
                kind: Kind::File,
                spec_hash: r.spec_hash(),
                generation: 1,
                owned: owned_file(r),
            };
            let status: ResourceStatus = serde_json::from_value(json!({
                "kind": "File", "phase": "Ready", "since": "2026-11-22T10:00:00Z",
                "generation": 1, "specHash": r.spec_hash()
            }))
            .expect("valid status");
            let state = ResourceState {
                status,
                consecutive_failures: 0,
            };
            (r.id.clone(), record, state)
        })
        .collect();
    let open = |dir: &std::path::Path| {
        FsStore::open(dir, agent_id(), FsStoreOptions::default()).expect("store opens")
    };

    // Every record and state saved, then the pass's one flush.
    let save_all = |store: &FsStore| {
        for (id, record, state) in &records {
            store.save_ownership_record(id, record).expect("save");
            store.save_resource_state(id, state).expect("save");
        }
        store.flush().expect("flush");
    };

    // A first apply's share: 1,000 new records and states, then the pass's one flush.
    measure("fs store: save 1,000 new + flush", || {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        save_all(&store);
    });

    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    save_all(&store);
    // A converged resync's share: every record and state saved unchanged, read back, flushed.
    measure("fs store: resave 1,000 unchanged + flush", || {
        for (id, record, state) in &records {
            store.save_ownership_record(id, record).expect("save");
            store.save_resource_state(id, state).expect("save");
        }
        let states = store.resource_states().expect("load");
        store.flush().expect("flush");
        states.len()
    });
    drop(store);
    // A restart: the lock, the snapshot and the journal's replay.
    measure("fs store: open with 1,000 records", || {
        let store = open(dir.path());
        store.ownership_records().expect("load").len()
    });
}

/// CPU (user + system) this process has used, from `/proc/self/stat` (in 10 ms ticks).
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("read /proc/self/stat");
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks: u64 = [11, 12]
        .iter()
        .map(|&i| fields[i].parse::<u64>().expect("tick count"))
        .sum();
    Duration::from_millis(ticks * 10)
}

fn bench_file_pass() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).expect("root");
    let resources: Vec<serde_json::Value> = (0..RESOURCES)
        .map(|i| {
            let path = root.join(format!("d{}/f{i}.conf", i % 10));
            json!({"id": format!("file-{i}"), "kind": "File", "spec": {
                "path": path.display().to_string(),
                "content": {"text": format!("steady {i}\n")}, "mode": "0644"}})
        })
        .collect();
    let mut manifest = AgentManifest::from_value(json!({
        "apiVersion": "fleetlet.dev/v1", "kind": "AgentManifest", "agentId": "bench-agent",
        "resources": resources
    }))
    .expect("valid manifest");
    manifest.generation = Some(1);
    let reconcilers = Reconcilers::new(&ReconcilerSettings {
        file_roots: vec![root],
        ..ReconcilerSettings::default()
    });
    // As the agent runs: two workers and the blocking pool.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut engine = engine_over(reconcilers);
    engine
        .accept(DesiredUpdate::Manifest(manifest))
        .expect("accept");
    let shutdown = Shutdown::new();
    let signal = shutdown.signal();
    // The first pass writes the files; the measured ones find them converged.
    runtime.block_on(engine.pass(&signal)).expect("pass");
    let cpu_before = process_cpu();
    let mut passes = 0u32;
    measure("engine pass, 1,000 converged files on disk", || {
        passes += 1;
        runtime.block_on(engine.pass(&signal)).expect("pass")
    });
    println!(
        "{:<44} {:>7} runs   CPU per pass {:>9.1?}",
        "  (its CPU, all threads)",
        passes,
        (process_cpu() - cpu_before) / passes
    );
}

fn main() {
    bench_engine_pass();
    bench_file_pass();
    #[cfg(feature = "fs-store")]
    bench_fs_store();
}
