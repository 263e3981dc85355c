//! Tests of the memory store: event numbering and paging, and report seqs that never go back.

use super::*;
use crate::store::EventKind;

fn store() -> MemoryStore {
    MemoryStore::new(AgentId::try_from("pi-1").expect("valid id"))
}

fn event(resource: &str) -> NewEvent {
    NewEvent {
        kind: EventKind::ResourceRepaired,
        resource_id: Some(ResourceId::try_from(resource).expect("valid id")),
        message: "repaired".into(),
    }
}

#[test]
fn events_are_numbered_and_read_in_bounded_pages() {
    let store = store();
    for i in 0..1200 {
        let seq = store
            .append_event(event(if i % 2 == 0 { "a" } else { "b" }))
            .expect("append");
        assert_eq!(seq, i + 1);
    }
    let first = store.read_events(0, usize::MAX).expect("read");
    assert_eq!(first.len(), MAX_EVENTS_PER_READ);
    assert_eq!(first[0].seq, 1);
    let next = store
        .read_events(first[first.len() - 1].seq, 10)
        .expect("read");
    assert_eq!(
        next.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (501..=510).collect::<Vec<_>>()
    );
    let only_b = store
        .read_resource_events(&ResourceId::try_from("b").expect("id"), 0, 3)
        .expect("read");
    assert_eq!(only_b.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 4, 6]);
}

#[test]
fn the_last_report_seq_never_goes_back() {
    let store = store();
    store.save_last_report_seq(7).expect("save");
    store.save_last_report_seq(3).expect("save");
    assert_eq!(store.last_report_seq().expect("read"), 7);
}
