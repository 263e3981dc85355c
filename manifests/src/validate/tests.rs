//! Tests of manifest validation: every violation with its path, cross-resource rules, defaults and hashes.

use super::*;
use serde_json::json;

fn paths(value: Value) -> Vec<String> {
    match AgentManifest::from_value(value) {
        Ok(_) => vec![],
        Err(violations) => violations.into_iter().map(|v| v.path).collect(),
    }
}

fn manifest_with(resources: Value) -> Value {
    json!({"apiVersion": API_VERSION, "kind": MANIFEST_KIND, "agentId": "pi-1", "resources": resources})
}

#[test]
fn every_violation_is_listed_with_its_path() {
    let found = paths(manifest_with(json!([
        {"id": "motd", "kind": "File", "spec": {"path": "etc/motd", "content": {"text": "x"}, "mode": "999"}},
        {"id": "Bad Id", "kind": "SystemdUnit", "spec": {"name": "kiosk", "unit": "[Unit]\n"}},
        {"id": "web", "kind": "Container", "spec": {"image": "img", "restartPolicy": "Sometimes",
            "volumes": [{"sessionStorage": "nope", "mountPath": "/data"}], "colour": "red"}},
    ])));
    assert_eq!(
        found,
        vec![
            "resources[0].spec.path",
            "resources[0].spec.mode",
            "resources[1].id",
            "resources[1].spec.name",
            "resources[2].spec.restartPolicy",
            "resources[2].spec.colour",
            // Checked although the container's other fields failed.
            "resources[2].spec.volumes[0].sessionStorage",
        ]
    );
}

#[test]
fn a_duplicate_id_is_reported_even_when_either_resource_has_another_violation() {
    // The first holder of the id is invalid, the second valid: once hid the duplicate.
    let found = paths(manifest_with(json!([
        {"id": "a", "kind": "File", "spec": {"path": "relative", "content": {"text": "x"}}},
        {"id": "a", "kind": "File", "spec": {"path": "/y", "content": {"text": "x"}}},
    ])));
    assert_eq!(found, vec!["resources[0].spec.path", "resources[1].id"]);
    // The second holder is invalid (another kind, bad spec), the first valid.
    let found = paths(manifest_with(json!([
        {"id": "a", "kind": "File", "spec": {"path": "/x", "content": {"text": "x"}}},
        {"id": "a", "kind": "SystemdUnit", "spec": {"name": "kiosk"}},
    ])));
    assert_eq!(
        found,
        vec![
            "resources[1].spec.name",
            "resources[1].spec.unit",
            "resources[1].id"
        ]
    );
    // Both invalid, one with an unknown field, the other missing its spec.
    let found = paths(manifest_with(json!([
        {"id": "a", "kind": "File", "spec": {"path": "/x", "content": {"text": "x"}, "x": 1}},
        {"id": "a", "kind": "File"},
    ])));
    assert_eq!(
        found,
        vec![
            "resources[0].spec.x",
            "resources[1].spec",
            "resources[1].id"
        ]
    );
}

#[test]
fn cross_resource_rules_see_the_valid_fields_of_invalid_resources() {
    let found = paths(manifest_with(json!([
        // A bad mode, and content that is not base64: both reported.
        {"id": "f", "kind": "File", "spec": {"path": "/x", "content": {"base64": "!!"}, "mode": "9"}},
        // The same path as an invalid File, and an invalid owner.
        {"id": "g", "kind": "File", "spec": {"path": "/x", "content": {"text": ""}, "owner": "a b"}},
        // The same unit name as an invalid unit.
        {"id": "u1", "kind": "SystemdUnit", "spec": {"name": "k.service", "unit": "", "state": "Up"}},
        {"id": "u2", "kind": "SystemdUnit", "spec": {"name": "k.service", "unit": ""}},
        // An invalid SessionStorage still counts as the target of a volume.
        {"id": "data", "kind": "SessionStorage", "spec": {"sessionId": "s", "sizeLimitBytes": -1}},
        {"id": "web", "kind": "Container", "spec": {"image": "img",
            "volumes": [{"sessionStorage": "data", "mountPath": "/data"}]}},
    ])));
    assert_eq!(
        found,
        vec![
            "resources[0].spec.mode",
            "resources[1].spec.owner",
            "resources[2].spec.state",
            "resources[4].spec.sizeLimitBytes",
            "resources[0].spec.content.base64",
            "resources[1].spec.path",
            "resources[3].spec.name",
        ]
    );
}

#[test]
fn the_manager_and_the_cli_get_every_violation_from_one_call() {
    // `AgentManifest::from_value` is what both call: the messages are the whole list.
    let violations = AgentManifest::from_value(manifest_with(json!([
        {"id": "a", "kind": "File", "spec": {"path": "rel", "content": {"text": "x"}}},
        {"id": "a", "kind": "File", "spec": {"path": "/y", "content": {"text": "x"}}},
    ])))
    .expect_err("invalid");
    let text: Vec<String> = violations.iter().map(ToString::to_string).collect();
    assert_eq!(text.len(), 2, "{text:?}");
    assert_eq!(text[1], "resources[1].id: duplicate id \"a\"");
}

#[test]
fn cross_resource_rules_are_checked() {
    let found = paths(manifest_with(json!([
        {"id": "a", "kind": "File", "spec": {"path": "/x", "content": {"text": ""}}},
        {"id": "a", "kind": "File", "spec": {"path": "/x", "content": {"base64": "!!"}}},
        {"id": "web", "kind": "Container", "spec": {"image": "img",
            "volumes": [{"sessionStorage": "nope", "mountPath": "/data"}]}},
    ])));
    assert_eq!(
        found,
        vec![
            "resources[1].id",
            "resources[1].spec.path",
            "resources[1].spec.content.base64",
            "resources[2].spec.volumes[0].sessionStorage",
        ]
    );
}

#[test]
fn top_level_fields_are_checked() {
    let found = paths(json!({"apiVersion": "v0", "kind": "Pod", "resources": {}, "extra": 1}));
    assert_eq!(
        found,
        vec!["agentId", "resources", "extra", "apiVersion", "kind"]
    );
}

#[test]
fn unknown_kinds_are_kept_and_round_trip() {
    let raw = manifest_with(json!([
        {"id": "gpu", "kind": "GpuSlice", "spec": {"devices": [0, 1], "nested": {"k": "v"}}},
    ]));
    let manifest = AgentManifest::from_value(raw.clone()).expect("valid");
    assert_eq!(manifest.resources[0].kind(), "GpuSlice");
    assert_eq!(manifest.resources[0].spec.known_kind(), None);
    assert_eq!(serde_json::to_value(&manifest).expect("serializes"), raw);
}

#[test]
fn defaults_are_filled_and_the_hash_is_stable() {
    let terse = manifest_with(
        json!([{"id": "f", "kind": "File", "spec": {"path": "/x", "content": {"text": "hi"}}}]),
    );
    let explicit = manifest_with(json!([{"id": "f", "kind": "File",
        "spec": {"path": "/x", "content": {"text": "hi"}, "mode": "0644"}}]));
    let a = AgentManifest::from_value(terse).expect("valid");
    let b = AgentManifest::from_value(explicit).expect("valid");
    assert_eq!(a.content_hash(), b.content_hash());
    assert_eq!(a.resources[0].spec_hash(), b.resources[0].spec_hash());
    assert!(a.resources[0].spec_hash().starts_with("sha256:"));
}

#[test]
fn rollout_violations_are_listed_with_their_paths() {
    let mut raw = manifest_with(json!([]));
    raw["rollout"] = json!({"progressDeadlineSeconds": 0, "onFailure": "Retry", "extra": 1});
    let violations = AgentManifest::from_value(raw).expect_err("invalid rollout");
    let text: Vec<String> = violations.iter().map(ToString::to_string).collect();
    assert_eq!(text.len(), 3, "{text:?}");
    assert!(text[0].starts_with("rollout.onFailure: "), "{text:?}");
    assert_eq!(text[1], "rollout.extra: unknown field");
    assert_eq!(
        text[2],
        "rollout.progressDeadlineSeconds: must be between 1 and 86400 seconds"
    );

    for bad in [
        json!({}),
        json!({"progressDeadlineSeconds": 86_401}),
        json!({"progressDeadlineSeconds": -5}),
        json!({"progressDeadlineSeconds": "60"}),
    ] {
        let mut raw = manifest_with(json!([]));
        raw["rollout"] = bad.clone();
        assert_eq!(paths(raw), vec!["rollout.progressDeadlineSeconds"], "{bad}");
    }
    let mut raw = manifest_with(json!([]));
    raw["rollout"] = json!(60);
    assert_eq!(paths(raw), vec!["rollout"]);
}

#[test]
fn on_failure_defaults_to_rollback_and_is_written_out() {
    let mut raw = manifest_with(json!([]));
    raw["rollout"] = json!({"progressDeadlineSeconds": 60});
    let manifest = AgentManifest::from_value(raw).expect("valid");
    assert_eq!(
        manifest.rollout,
        Some(RolloutPolicy {
            progress_deadline_seconds: 60,
            on_failure: OnFailure::Rollback
        })
    );
    let written = serde_json::to_value(&manifest).expect("serializes");
    assert_eq!(
        written["rollout"],
        json!({"progressDeadlineSeconds": 60, "onFailure": "Rollback"})
    );
}

#[test]
fn the_content_hash_covers_the_rollout_only_when_there_is_one() {
    let plain = AgentManifest::from_value(manifest_with(
        json!([{"id": "f", "kind": "File", "spec": {"path": "/x", "content": {"text": "hi"}}}]),
    ))
    .expect("valid");
    // Unchanged from before rollout policies existed: the hash of the resource list alone.
    assert_eq!(
        plain.content_hash(),
        crate::manifest::hash_json(&plain.resources)
    );
    let mut rollback = plain.clone();
    rollback.rollout = Some(RolloutPolicy {
        progress_deadline_seconds: 60,
        on_failure: OnFailure::Rollback,
    });
    let mut hold = rollback.clone();
    hold.rollout = Some(RolloutPolicy {
        progress_deadline_seconds: 60,
        on_failure: OnFailure::Hold,
    });
    assert_ne!(plain.content_hash(), rollback.content_hash());
    assert_ne!(rollback.content_hash(), hold.content_hash());
}

#[test]
fn content_caps_are_enforced() {
    let big = "x".repeat(MAX_FILE_CONTENT_BYTES + 1);
    let found = paths(manifest_with(
        json!([{"id": "f", "kind": "File", "spec": {"path": "/x", "content": {"text": big}}}]),
    ));
    assert_eq!(found, vec!["resources[0].spec.content"]);
}
