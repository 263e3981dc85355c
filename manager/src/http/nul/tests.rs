//! Unit tests of the NUL refusal: every path named, clean bodies pass.

use serde_json::json;

use super::collect;

#[test]
fn every_string_and_key_with_a_nul_is_named_by_its_path() {
    let body = json!({
        "resources": [{"id": "f", "spec": {"content": {"text": "a\u{0}b"}}}],
        "labels": {"ok": "fine", "bad\u{0}key": "x"},
        "clean": "no nul here"
    });
    let mut found = Vec::new();
    collect(&body, "", &mut found);
    let paths: Vec<&str> = found.iter().map(|v| v.path.as_str()).collect();
    assert_eq!(
        paths,
        ["labels.bad\\0key", "resources[0].spec.content.text"]
    );
}

#[test]
fn a_body_without_nul_passes() {
    let mut found = Vec::new();
    collect(&json!({"a": ["b", {"c": "d"}], "n": 1}), "", &mut found);
    assert!(found.is_empty());
}
