//! The resilient store over a store whose writes fail on demand (a full disk).

use std::sync::Arc;

use fleetlet_manifests::{AgentId, AgentManifest, ResourceId};
use serde_json::json;

use super::*;
use crate::store::EventKind;
use crate::store::failing::FailingStore;
use crate::store::file_record as record;

fn manifest(generation: u64) -> AgentManifest {
    AgentManifest::from_value(json!({
        "apiVersion": "fleetlet.dev/v1", "kind": "AgentManifest", "agentId": "pi",
        "generation": generation, "resources": [],
    }))
    .expect("valid manifest")
}

fn stores() -> (Arc<FailingStore>, ResilientStore) {
    let failing = Arc::new(FailingStore::new(AgentId::try_from("pi").expect("id")));
    let resilient = ResilientStore::new(Arc::clone(&failing) as Arc<dyn Store>);
    (failing, resilient)
}

fn id(text: &str) -> ResourceId {
    ResourceId::try_from(text).expect("id")
}

#[test]
fn while_healthy_every_write_goes_through_and_there_is_no_fault() {
    let (failing, store) = stores();
    store.save_manifest(&manifest(1)).expect("save");
    store
        .save_ownership_record(&id("a"), &record("/a"))
        .expect("save");
    store.flush().expect("flush");
    assert_eq!(failing.load_manifest().expect("load"), Some(manifest(1)));
    assert!(
        failing
            .ownership_records()
            .expect("records")
            .contains_key(&id("a"))
    );
    assert_eq!(store.fault(), None);
}

#[test]
fn a_failed_write_is_kept_read_back_reported_and_written_once_the_disk_recovers() {
    let (failing, store) = stores();
    store.save_manifest(&manifest(1)).expect("save");
    store
        .save_ownership_record(&id("gone"), &record("/gone"))
        .expect("save");

    failing.fail(true);
    store
        .save_manifest(&manifest(2))
        .expect("a failed save is kept, not an error");
    store
        .save_ownership_record(&id("a"), &record("/a"))
        .expect("kept");
    store.remove_ownership_record(&id("gone")).expect("kept");
    store
        .append_event(NewEvent {
            kind: EventKind::ManifestAccepted,
            resource_id: None,
            message: "generation 2".into(),
        })
        .expect("kept");
    store.save_last_report_seq(7).expect("kept");

    let fault = store.fault().expect("the store is faulted");
    assert!(fault.disk_full, "ENOSPC is a full disk: {fault:?}");
    assert_eq!(fault.reason(), "DiskFull");
    // Reads see what waits; the disk still has the old state.
    assert_eq!(store.load_manifest().expect("load"), Some(manifest(2)));
    let records = store.ownership_records().expect("records");
    assert!(records.contains_key(&id("a")) && !records.contains_key(&id("gone")));
    assert_eq!(store.last_report_seq().expect("seq"), 7);
    assert_eq!(failing.load_manifest().expect("load"), Some(manifest(1)));

    // Still failing: the retry keeps everything and the first failure stays the reported one.
    store
        .flush()
        .expect("a failing retry is the fault, not an error");
    assert_eq!(store.fault(), Some(fault));

    failing.fail(false);
    store.flush().expect("flush");
    assert_eq!(store.fault(), None);
    assert_eq!(failing.load_manifest().expect("load"), Some(manifest(2)));
    let records = failing.ownership_records().expect("records");
    assert!(records.contains_key(&id("a")) && !records.contains_key(&id("gone")));
    assert_eq!(failing.last_report_seq().expect("seq"), 7);
    let events = failing.read_events(0, 10).expect("events");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].message, "generation 2");
}

#[test]
fn once_faulted_nothing_is_written_until_a_flush_writes_it_all_in_order() {
    let (failing, store) = stores();
    failing.fail(true);
    store.save_manifest(&manifest(2)).expect("kept");
    failing.fail(false);
    // The disk has room again, but a later write does not overtake what waits.
    store.save_rollout(&RolloutState::default()).expect("kept");
    assert_eq!(failing.load_manifest().expect("load"), None);
    assert!(store.fault().is_some());
    store.flush().expect("flush");
    assert_eq!(failing.load_manifest().expect("load"), Some(manifest(2)));
    assert!(store.fault().is_none());
}
