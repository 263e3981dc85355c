//! Tests of the resource table's journal: a change is one line that reads back and applies idempotently.

use super::*;
use crate::store::file_record as record;

#[test]
fn a_change_is_one_line_that_reads_back_and_applies_idempotently() {
    let id = ResourceId::try_from("motd").expect("id");
    let rec = record("/etc/motd");
    let line = ChangeRef::Record {
        id: &id,
        value: Some(&rec),
    }
    .to_line()
    .expect("serialise");
    assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
    let change: Change = serde_json::from_slice(&line).expect("parse");
    let mut table = Table::default();
    table.apply(change.clone());
    let once = table.clone();
    table.apply(change);
    assert_eq!(table, once);
    assert_eq!(table.records[&id], rec);
    assert!(table.tracks(&id));
    assert_eq!(table.resource_count(), 1);
}
