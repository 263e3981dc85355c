//! Tests of page cursors: they round-trip and refuse other lists.

use super::*;

#[test]
fn cursors_round_trip_and_refuse_other_lists() {
    let cursor = encode("a", "pi-kitchen-01");
    assert_eq!(decode("a", &cursor).expect("valid"), "pi-kitchen-01");
    assert!(decode("g", &cursor).is_err());
    assert!(decode("a", "!!!").is_err());
}

#[test]
fn a_page_cuts_the_extra_row_and_continues_after_its_last() {
    let mut rows = vec![1, 2, 3];
    assert_eq!(page(&mut rows, 2, |r| r.to_string()), Some("2".to_owned()));
    assert_eq!(rows, [1, 2]);
    let mut last = vec![1, 2];
    assert_eq!(page(&mut last, 2, |r| r.to_string()), None);
    assert_eq!(last, [1, 2]);
}
