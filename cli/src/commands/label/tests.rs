//! Unit tests of `cli/src/commands/label.rs`.

use super::*;

#[test]
fn changes_parse_as_set_or_remove() {
    assert_eq!(
        parse_label_change("role=kiosk"),
        Ok(LabelChange::Set("role".into(), "kiosk".into()))
    );
    // An empty value is a value; only the key must be there.
    assert_eq!(
        parse_label_change("note="),
        Ok(LabelChange::Set("note".into(), String::new()))
    );
    // A value may itself contain '=' or end with '-'.
    assert_eq!(
        parse_label_change("expr=a=b-"),
        Ok(LabelChange::Set("expr".into(), "a=b-".into()))
    );
    assert_eq!(
        parse_label_change("site-"),
        Ok(LabelChange::Remove("site".into()))
    );
    for bad in ["site", "-", "=v", ""] {
        assert!(parse_label_change(bad).is_err(), "{bad:?} was accepted");
    }
}

#[test]
fn the_patch_sets_values_and_removes_with_null() {
    let changes = [
        LabelChange::Set("role".into(), "kiosk".into()),
        LabelChange::Remove("site".into()),
    ];
    assert_eq!(
        serde_json::to_value(merge_patch(&changes).expect("a patch")).expect("json"),
        serde_json::json!({"labels": {"role": "kiosk", "site": null}})
    );
}

#[test]
fn a_key_changed_twice_is_refused() {
    let changes = [
        LabelChange::Set("role".into(), "kiosk".into()),
        LabelChange::Remove("role".into()),
    ];
    let error = merge_patch(&changes).expect_err("refused");
    assert!(error.to_string().contains("\"role\""), "{error}");
}

#[test]
fn the_answer_names_the_owning_fleet_or_the_conflict() {
    let answer = |fleet: Option<&str>, conflicting: &[&str]| {
        serde_json::from_value::<AgentLabels>(serde_json::json!({
            "agentId": "pi-1", "labels": {"role": "kiosk"}, "fleet": fleet,
            "conflictingFleets": conflicting,
        }))
        .expect("valid answer")
    };
    assert_eq!(
        labelled_line(&answer(Some("kiosks"), &[])),
        "pi-1: labels role=kiosk; fleet kiosks"
    );
    assert_eq!(
        labelled_line(&answer(None, &[])),
        "pi-1: labels role=kiosk; no fleet"
    );
    assert!(
        labelled_line(&answer(None, &["kiosks", "signs"]))
            .contains("in conflict between kiosks, signs")
    );
}
