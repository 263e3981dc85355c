//! Unit tests of `cli/src/render.rs`.

use super::*;

#[test]
fn tables_align_their_columns() {
    let rows = [
        ["A".to_owned(), "LONG HEADER".to_owned()],
        ["value".to_owned(), "x".to_owned()],
    ];
    assert_eq!(render_table(&rows), "A      LONG HEADER\nvalue  x\n");
}

#[test]
fn event_payloads_show_their_scalar_fields() {
    let payload = serde_json::json!({"from": "Pending", "to": "Failed", "n": 2, "nested": {}});
    assert_eq!(payload_summary(&payload), "from=Pending n=2 to=Failed");
}
