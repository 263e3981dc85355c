//! Unit tests of `cli/src/manifest_file.rs`.

use super::*;

fn resources(value: Value) -> Vec<Resource> {
    serde_json::from_value(value).expect("valid resources")
}

#[test]
fn diff_names_added_removed_and_changed_resources_by_id() {
    let current = resources(serde_json::json!([
        {"id": "motd", "kind": "File", "spec": {"path": "/etc/motd", "content": {"text": "a"}, "mode": "0644"}},
        {"id": "old", "kind": "File", "spec": {"path": "/etc/old", "content": {"text": "a"}, "mode": "0644"}},
        {"id": "same", "kind": "File", "spec": {"path": "/etc/same", "content": {"text": "a"}, "mode": "0644"}}
    ]));
    let desired = resources(serde_json::json!([
        {"id": "motd", "kind": "File", "spec": {"path": "/etc/motd", "content": {"text": "b"}, "mode": "0600"}},
        {"id": "same", "kind": "File", "spec": {"path": "/etc/same", "content": {"text": "a"}, "mode": "0644"}},
        {"id": "new", "kind": "File", "spec": {"path": "/etc/new", "content": {"text": "a"}, "mode": "0644"}}
    ]));
    let lines: Vec<String> = diff(&current, &desired)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        lines,
        [
            "- old (File)",
            "~ motd (File)\n    spec.content.text: \"a\" -> \"b\"\n    spec.mode: \"0644\" -> \"0600\"",
            "+ new (File)"
        ]
    );
}

fn change(path: &str, before: Option<Value>, after: Option<Value>) -> String {
    FieldChange {
        path: path.to_owned(),
        before,
        after,
    }
    .to_string()
}

#[test]
fn changed_fields_show_both_values_down_to_the_leaf() {
    let current = resources(serde_json::json!([
        {"id": "web", "kind": "Container", "spec": {"image": "img:1", "env": {"A": "1", "B": "2"},
         "ports": [{"containerPort": 80, "hostPort": 8080}], "args": ["--a"]}},
        {"id": "k", "kind": "File", "spec": {"path": "/k", "content": {"text": "x"}}}
    ]));
    let desired = resources(serde_json::json!([
        {"id": "web", "kind": "Container", "spec": {"image": "img:2", "env": {"A": "1", "C": "3"},
         "ports": [{"containerPort": 80, "hostPort": 9090}], "args": ["--a", "--b"]}},
        {"id": "k", "kind": "SystemdUnit", "spec": {"name": "k.service", "unit": "[Unit]\n"}}
    ]));
    let text: Vec<String> = diff(&current, &desired)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        text[0],
        "~ k (SystemdUnit)\n    kind: \"File\" -> \"SystemdUnit\"\n    spec.content: {\"text\":\"x\"} -> (unset)\n    spec.enabled: (unset) -> true\n    spec.mode: \"0644\" -> (unset)\n    spec.name: (unset) -> \"k.service\"\n    spec.path: \"/k\" -> (unset)\n    spec.state: (unset) -> \"Started\"\n    spec.unit: (unset) -> \"[Unit]\\n\""
    );
    let web = &text[1];
    for line in [
        "    spec.args: [\"--a\"] -> [\"--a\",\"--b\"]",
        "    spec.env.B: \"2\" -> (unset)",
        "    spec.env.C: (unset) -> \"3\"",
        "    spec.image: \"img:1\" -> \"img:2\"",
        "    spec.ports[0].hostPort: 8080 -> 9090",
    ] {
        assert!(
            web.lines().any(|l| l == line),
            "{line:?} missing in:\n{web}"
        );
    }
    assert!(!web.contains("spec.env.A"), "{web}");
}

#[test]
fn long_text_is_cut_around_its_first_difference() {
    let before = format!("{}tail one", "x".repeat(500));
    let after = format!("{}tail two", "x".repeat(500));
    let line = change(
        "spec.unit",
        Some(Value::String(before)),
        Some(Value::String(after)),
    );
    assert_eq!(
        line,
        "spec.unit: \"…xxxxxxxxxxxtail one\" (508 bytes) -> \"…xxxxxxxxxxxtail two\" (508 bytes)"
    );
    // Cut at the end too when the difference comes early; escapes count towards the length.
    let before = format!("a{}", "\n".repeat(300));
    let line = change(
        "spec.content.text",
        Some(Value::String(before)),
        Some(Value::String("b".to_owned())),
    );
    assert_eq!(
        line,
        format!(
            "spec.content.text: \"a{}…\" (301 bytes) -> \"b\"",
            "\\n".repeat(30)
        )
    );
    // A short string stays whole; other long values are cut.
    let list = Value::Array((0..100).map(Value::from).collect());
    let line = change("spec.args", None, Some(list));
    assert!(line.starts_with("spec.args: (unset) -> [0,1,2,"), "{line}");
    assert!(line.ends_with("… (291 bytes of JSON)"), "{line}");
}

#[test]
fn base64_content_shows_as_size_and_digest() {
    let line = change(
        "spec.content.base64",
        Some(Value::String("aGk=".to_owned())),
        Some(Value::String("QUFB".repeat(1000))),
    );
    // sha256("hi") = 8f434346648f6b96...; the 3000 bytes of "A" are not printed.
    assert_eq!(
        line,
        format!(
            "spec.content.base64: base64 of 2 bytes (sha256 8f434346648f…) -> base64 of 3000 bytes (sha256 {}…)",
            &hex::encode(<sha2::Sha256 as sha2::Digest>::digest("A".repeat(3000)))[..12]
        )
    );
}

#[test]
fn unknown_kinds_are_warned_about_with_the_nearest_known_kind() {
    let manifest = AgentManifest::from_value(serde_json::json!({
        "apiVersion": "fleetlet.dev/v1", "kind": "AgentManifest", "agentId": "pi-1",
        "resources": [
            {"id": "ok", "kind": "File", "spec": {"path": "/x", "content": {"text": ""}}},
            {"id": "typo", "kind": "Flie", "spec": {}},
            {"id": "lower", "kind": "systemdunit", "spec": {}},
            {"id": "new", "kind": "GpuSlice", "spec": {}}
        ]
    }))
    .expect("unknown kinds are valid");
    let warnings = unknown_kind_warnings(&manifest);
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    assert!(
        warnings[0].starts_with(
            "warning: resources[1].kind: resource \"typo\" has kind \"Flie\", which this fleetlet does not know (did you mean \"File\"?); it is sent as written"
        ),
        "{}",
        warnings[0]
    );
    assert!(
        warnings[1].contains("(did you mean \"SystemdUnit\"?)"),
        "{}",
        warnings[1]
    );
    assert!(warnings[2].starts_with("warning: resources[3].kind: resource \"new\""));
    assert!(!warnings[2].contains("did you mean"), "{}", warnings[2]);
    assert_eq!(nearest_kind("Contianer"), Some("Container"));
    assert_eq!(nearest_kind("Pod"), None);
}

#[test]
fn yaml_manifests_are_validated_with_paths() {
    let dir = tempfile_dir();
    let path = dir.join("bad.yaml");
    std::fs::write(
        &path,
        "apiVersion: fleetlet.dev/v1\nkind: AgentManifest\nagentId: pi-1\nresources:\n  - id: motd\n    kind: File\n    spec:\n      path: etc/motd\n      content: {text: hi}\n      mode: \"0644\"\n",
    )
    .expect("writes");
    let error = read_manifest(&path).expect_err("relative path");
    assert!(
        error.to_string().contains("resources[0].spec.path"),
        "{error}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("fleetlet-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creates a temp dir");
    dir
}
