//! Tests of page cursors: they round-trip and refuse other lists.

use super::*;

#[test]
fn cursors_round_trip_and_refuse_other_lists() {
    let cursor = encode("a", "pi-kitchen-01");
    assert_eq!(decode("a", &cursor).expect("valid"), "pi-kitchen-01");
    assert!(decode("g", &cursor).is_err());
    assert!(decode("a", "!!!").is_err());
}
