//! Tests of the filesystem store: shared helpers, round trips (shared with the memory store), the
//! layout and the lock; the logs, damage, the resource table and the size cap in the files beside.

use std::fs::{self, OpenOptions};
use std::path::Path;

use fleetlet_manifests::{AgentId, AgentManifest, AgentStatus, ResourceId};
use serde_json::json;

use super::*;
use crate::store::file_record as record;
use crate::store::{EventKind, MAX_EVENTS_PER_READ, MemoryStore, NewEvent};

mod budget;
mod damage;
mod logs;
mod table;

fn agent() -> AgentId {
    AgentId::try_from("pi-kitchen-01").expect("valid agent id")
}

fn rid(name: &str) -> ResourceId {
    ResourceId::try_from(name).expect("valid resource id")
}

fn open(dir: &Path) -> FsStore {
    FsStore::open(dir, agent(), FsStoreOptions::default()).expect("store opens")
}

fn open_small(dir: &Path, max_bytes: u64) -> FsStore {
    FsStore::open(
        dir,
        agent(),
        FsStoreOptions {
            max_bytes,
            sync: true,
        },
    )
    .expect("store opens")
}

fn manifest(generation: u64, text: &str) -> AgentManifest {
    let mut manifest = AgentManifest::from_value(json!({
        "apiVersion": "fleetlet.dev/v1",
        "kind": "AgentManifest",
        "agentId": "pi-kitchen-01",
        "resources": [
            {"id": "motd", "kind": "File",
             "spec": {"path": "/etc/motd", "content": {"text": text}, "mode": "0644"}},
            {"id": "later", "kind": "Gadget", "spec": {"anything": [1, 2]}}
        ]
    }))
    .expect("valid manifest");
    manifest.generation = Some(generation);
    manifest
}

fn resource_state(phase: &str, failures: u32) -> ResourceState {
    ResourceState {
        status: serde_json::from_value(json!({
            "kind": "File", "phase": phase, "since": "2026-11-22T10:00:00Z",
            "generation": 3, "specHash": "sha256:abc"
        }))
        .expect("valid resource status"),
        consecutive_failures: failures,
    }
}

fn status(report_seq: u64) -> AgentStatus {
    serde_json::from_value(json!({
        "apiVersion": "fleetlet.dev/v1", "kind": "AgentStatus", "agentId": "pi-kitchen-01",
        "reportSeq": report_seq, "manifestGeneration": 3, "observedGeneration": 3,
        "observedAt": "2026-11-22T10:00:00Z",
        "agent": {"version": "0.1.0", "hostname": "pi", "arch": "aarch64", "os": "linux",
                  "bootId": "b", "startedAt": "2026-11-22T09:00:00Z", "supportedKinds": ["File"]},
        "conditions": [],
        "resources": {"motd": {"kind": "File", "phase": "Ready", "since": "2026-11-22T10:00:00Z",
                               "generation": 3, "specHash": "sha256:abc"}}
    }))
    .expect("valid status")
}

/// Saves `record(path)` as the ownership record of `id`.
fn save_record(store: &dyn Store, id: &str, path: &str) {
    store
        .save_ownership_record(&rid(id), &record(path))
        .expect("save");
}

/// Saves `resource_state(phase, failures)` as the state of `id`.
fn save_state(store: &dyn Store, id: &str, phase: &str, failures: u32) {
    store
        .save_resource_state(&rid(id), &resource_state(phase, failures))
        .expect("save");
}

fn agent_record() -> AgentRecord {
    AgentRecord {
        agent_id: agent(),
        version: "0.1.0".into(),
        started_at: OffsetDateTime::UNIX_EPOCH,
        config: json!({"stateDir": "/var/lib/fleetlet", "fileRoots": ["/srv"]}),
    }
}

fn event(kind: EventKind, resource: Option<&str>, message: &str) -> NewEvent {
    NewEvent {
        kind,
        resource_id: resource.map(rid),
        message: message.into(),
    }
}

fn seqs(events: &[StoredEvent]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

/// Every record kind the worker writes comes back as written, from any store.
fn round_trip_every_record_kind(store: &dyn Store) {
    assert_eq!(store.agent_id(), &agent());
    assert_eq!(store.load_agent_record().expect("load"), None);
    assert_eq!(store.load_manifest().expect("load"), None);
    assert_eq!(store.load_status().expect("load"), None);
    assert_eq!(store.pending_report().expect("load"), None);
    assert_eq!(store.last_report_seq().expect("load"), 0);
    assert!(store.ownership_records().expect("load").is_empty());
    assert!(store.resource_states().expect("load").is_empty());
    assert!(store.read_events(0, 10).expect("read").is_empty());

    store.save_agent_record(&agent_record()).expect("save");
    assert_eq!(
        store.load_agent_record().expect("load"),
        Some(agent_record())
    );

    store.save_manifest(&manifest(3, "hello\n")).expect("save");
    store.save_manifest(&manifest(4, "bye\n")).expect("save");
    assert_eq!(
        store.load_manifest().expect("load"),
        Some(manifest(4, "bye\n"))
    );

    save_record(store, "motd", "/etc/motd");
    save_record(store, "issue", "/etc/issue");
    save_state(store, "motd", "Failed", 2);
    save_state(store, "motd", "Ready", 0);
    let records = store.ownership_records().expect("load");
    assert_eq!(records.len(), 2);
    assert_eq!(records[&rid("issue")], record("/etc/issue"));
    assert_eq!(
        store.resource_states().expect("load")[&rid("motd")],
        resource_state("Ready", 0)
    );
    store
        .remove_ownership_record(&rid("issue"))
        .expect("remove");
    store
        .remove_resource_state(&rid("issue"))
        .expect("remove (never saved)");
    assert_eq!(
        store
            .ownership_records()
            .expect("load")
            .keys()
            .collect::<Vec<_>>(),
        [&rid("motd")]
    );

    let first = store
        .append_event(event(EventKind::ManifestAccepted, None, "generation 4"))
        .expect("append");
    let second = store
        .append_event(event(EventKind::ResourceCreated, Some("motd"), "created"))
        .expect("append");
    let third = store
        .append_event(event(EventKind::ResourceDeleted, Some("issue"), "removed"))
        .expect("append");
    assert_eq!((second, third), (first + 1, first + 2));
    let all = store.read_events(0, 100).expect("read");
    assert_eq!(seqs(&all), [first, second, third]);
    assert_eq!(all[1].kind, EventKind::ResourceCreated);
    assert_eq!(all[1].resource_id, Some(rid("motd")));
    assert_eq!(all[1].message, "created");
    assert_eq!(seqs(&store.read_events(first, 1).expect("read")), [second]);
    let motd = store
        .read_resource_events(&rid("motd"), 0, 100)
        .expect("read");
    assert_eq!(seqs(&motd), [second]);
    // A resource that is gone still has its last events, from the agent log.
    let issue = store
        .read_resource_events(&rid("issue"), 0, 100)
        .expect("read");
    assert_eq!(seqs(&issue), [third]);

    store.save_status(&status(10)).expect("save");
    assert_eq!(store.load_status().expect("load"), Some(status(10)));

    // The outbox: latest wins, an older ack leaves a newer report in place.
    store.save_last_report_seq(10).expect("save");
    store.enqueue_report(&status(10)).expect("enqueue");
    store.save_last_report_seq(11).expect("save");
    store.enqueue_report(&status(11)).expect("enqueue");
    assert_eq!(store.pending_report().expect("load"), Some(status(11)));
    store.acknowledge_report(10).expect("ack");
    assert_eq!(store.pending_report().expect("load"), Some(status(11)));
    store.acknowledge_report(11).expect("ack");
    assert_eq!(store.pending_report().expect("load"), None);
    store.save_last_report_seq(5).expect("save");
    assert_eq!(store.last_report_seq().expect("load"), 11);
    store.flush().expect("flush");
}

#[test]
fn every_record_kind_round_trips_through_the_memory_store() {
    round_trip_every_record_kind(&MemoryStore::new(agent()));
}

#[test]
fn every_record_kind_round_trips_through_the_fs_store_and_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    round_trip_every_record_kind(&store);
    store.enqueue_report(&status(12)).expect("enqueue");
    let last_event = store
        .append_event(event(EventKind::ResourceRepaired, Some("motd"), "drift"))
        .expect("append");
    drop(store);

    let store = open(dir.path());
    assert_eq!(
        store.load_agent_record().expect("load"),
        Some(agent_record())
    );
    assert_eq!(
        store.load_manifest().expect("load"),
        Some(manifest(4, "bye\n"))
    );
    assert_eq!(
        store.ownership_records().expect("load")[&rid("motd")],
        record("/etc/motd")
    );
    assert_eq!(
        store.resource_states().expect("load")[&rid("motd")],
        resource_state("Ready", 0)
    );
    assert_eq!(store.load_status().expect("load"), Some(status(10)));
    assert_eq!(store.pending_report().expect("load"), Some(status(12)));
    // The seq in the outbox counts as handed out even though seq.json never heard of it.
    assert_eq!(store.last_report_seq().expect("load"), 12);
    let next = store
        .append_event(event(
            EventKind::ResourceRepaired,
            Some("motd"),
            "drift again",
        ))
        .expect("append");
    assert_eq!(next, last_event + 1, "event seqs continue across a restart");
    assert_eq!(
        seqs(
            &store
                .read_resource_events(&rid("motd"), 0, 100)
                .expect("read")
        ),
        [2, last_event, next]
    );
    assert!(store.diagnostics().is_empty(), "{:?}", store.diagnostics());
}

#[test]
fn the_files_are_laid_out_as_design_section_6_says() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    store.save_agent_record(&agent_record()).expect("save");
    store.save_manifest(&manifest(1, "x")).expect("save");
    store.save_status(&status(1)).expect("save");
    store.save_last_report_seq(1).expect("save");
    store.enqueue_report(&status(1)).expect("save");
    save_record(&store, "motd", "/etc/motd");
    save_state(&store, "motd", "Ready", 0);
    store
        .append_event(event(EventKind::ResourceCreated, Some("motd"), "created"))
        .expect("append");
    let base = dir.path().join("agents/pi-kitchen-01");
    for path in [
        dir.path().join("LOCK"),
        base.join("agent.json"),
        base.join("manifest.json"),
        base.join("status.json"),
        base.join("seq.json"),
        base.join("events.jsonl"),
        base.join("outbox.jsonl"),
        base.join("resources.json"),
        base.join("resources.jsonl"),
        base.join("resources/motd/events.jsonl"),
    ] {
        assert!(path.is_file(), "{} is missing", path.display());
    }
    let lock = fs::read_to_string(dir.path().join("LOCK")).expect("read");
    assert!(lock.contains("pi-kitchen-01") && lock.contains(&std::process::id().to_string()));
    let line = fs::read_to_string(base.join("events.jsonl")).expect("read");
    assert!(
        line.starts_with("{\"seq\":1,") && line.ends_with("}\n"),
        "{line}"
    );

    // A resource that is neither owned nor tracked leaves no directory behind.
    store.remove_ownership_record(&rid("motd")).expect("remove");
    store.remove_resource_state(&rid("motd")).expect("remove");
    assert!(!base.join("resources/motd").exists());
}

#[test]
fn a_second_open_on_the_same_state_dir_is_refused_naming_the_holder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = open(dir.path());
    let other = AgentId::try_from("pi-other").expect("id");
    let error = FsStore::open(dir.path(), other.clone(), FsStoreOptions::default())
        .expect_err("the state dir is taken");
    assert!(matches!(error, FsStoreError::Locked { .. }));
    let message = error.to_string();
    assert!(message.contains("pi-kitchen-01"), "{message}");
    assert!(
        message.contains(&format!("pid {}", std::process::id())),
        "{message}"
    );
    assert!(message.contains("LOCK"), "{message}");
    drop(first);
    FsStore::open(dir.path(), other, FsStoreOptions::default())
        .expect("free once the holder is gone");
}
