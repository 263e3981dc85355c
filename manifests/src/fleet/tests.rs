//! Tests of fleets: validation with JSON paths, batch sizes, rendering and its refusals.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::*;
use crate::ids::AgentId;
use crate::manifest::{FileContent, ResourceSpec};

fn kiosks() -> Value {
    json!({
        "apiVersion": "fleetlet.dev/v1",
        "kind": "Fleet",
        "name": "kiosks",
        "selector": {"matchLabels": {"role": "kiosk"}, "matchFacts": {"arch": "aarch64"}},
        "parameters": {
            "imageTag": {"pattern": "^[0-9]+\\.[0-9]+$", "default": "1.4"},
            "greeting": {"pattern": "^[A-Za-z !\"\\\\]{1,40}$"}
        },
        "template": {
            "rollout": {"progressDeadlineSeconds": 300, "onFailure": "Rollback"},
            "resources": [
                {"id": "motd", "kind": "File",
                 "spec": {"path": "/etc/motd", "content": {"text": "{{ greeting }} from {{agentId}}\n"}, "mode": "0644"}},
                {"id": "web", "kind": "Container", "spec": {"image": "registry.local/kiosk:{{ imageTag }}"}}
            ]
        },
        "rolloutStrategy": {
            "batches": [{"limit": 1}, {"limit": "10%"}, {"limit": "50%"}, {}],
            "successThreshold": "90%",
            "batchTimeoutSeconds": 1800,
            "requireApproval": false
        }
    })
}

fn paths(value: Value) -> Vec<String> {
    let violations = Fleet::from_value(value).expect_err("must be refused");
    violations.into_iter().map(|v| v.path).collect()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn agent(id: &str) -> AgentId {
    AgentId::try_from(id).expect("valid id")
}

#[test]
fn the_contract_example_parses_and_round_trips() {
    let fleet = Fleet::from_value(kiosks()).expect("valid fleet");
    assert_eq!(fleet.name.as_str(), "kiosks");
    assert_eq!(fleet.parameters.len(), 2);
    assert_eq!(fleet.rollout_strategy.success_threshold, Percent(90));
    assert_eq!(
        fleet.rollout_strategy.batches[1].limit,
        Some(BatchLimit::Percent(10))
    );
    let again = Fleet::from_value(serde_json::to_value(&fleet).expect("serializes"))
        .expect("its own serialization is valid");
    assert_eq!(again, fleet);
}

#[test]
fn every_violation_is_reported_with_its_path() {
    let mut fleet = kiosks();
    fleet["kind"] = json!("Fleets");
    fleet["name"] = json!("Kiosks!");
    fleet["parameters"]["imageTag"]["pattern"] = json!("([0-9]");
    fleet["parameters"]["greeting"]["default"] = json!("no digits 1");
    fleet["parameters"]["agentId"] = json!({"pattern": ".*"});
    fleet["template"]["resources"][0]["spec"]["content"]["text"] = json!("{{ nobody }}");
    fleet["template"]["resources"][1]["spec"]["extra"] = json!(1);
    fleet["rolloutStrategy"]["batches"] = json!([{}, {"limit": 0}, {"limit": "0%"}]);
    fleet["rolloutStrategy"]["successThreshold"] = json!("101%");
    fleet["unknown"] = json!(true);
    let mut found = paths(fleet);
    found.sort();
    let mut expected = vec![
        "kind",
        "name",
        "parameters.imageTag.pattern",
        "parameters.greeting.default",
        "parameters.agentId",
        "unknown",
        "rolloutStrategy.batches[1].limit",
    ];
    expected.sort();
    for path in &expected {
        assert!(
            found.iter().any(|p| p == path),
            "{path} missing from {found:?}"
        );
    }
}

#[test]
fn a_placeholder_naming_no_parameter_is_refused_at_its_path() {
    let mut fleet = kiosks();
    fleet["template"]["resources"][1]["spec"]["env"] = json!({"MODE": "{{ mode }}"});
    assert_eq!(paths(fleet), vec!["template.resources[1].spec.env.MODE"]);
}

#[test]
fn render_substitutes_values_literally_and_fills_the_provenance() {
    let fleet = Fleet::from_value(kiosks()).expect("valid fleet");
    let quoted = "Hi \"there\" \\ {{ imageTag }}";
    let manifest = render(
        &fleet,
        7,
        &agent("pi-3"),
        &labels(&[("greeting", "Hi \"there\" \\ ")]),
    )
    .expect("renders");
    let ResourceSpec::File(file) = &manifest.resources[0].spec else {
        panic!("a File");
    };
    // The value's quotes and backslashes arrive as written, and no placeholder in it is expanded.
    assert_eq!(
        file.content,
        FileContent::Text("Hi \"there\" \\  from pi-3\n".into())
    );
    let ResourceSpec::Container(container) = &manifest.resources[1].spec else {
        panic!("a Container");
    };
    assert_eq!(container.image.as_str(), "registry.local/kiosk:1.4");
    let origin = manifest.fleet.as_ref().expect("provenance");
    assert_eq!((origin.name.as_str(), origin.revision), ("kiosks", 7));
    assert_eq!(origin.values.len(), 2);
    assert!(origin.signed.is_none());
    assert!(manifest.rollout.is_some());
    // A value that itself holds a placeholder stays literal.
    let fleet = Fleet::from_value({
        let mut value = kiosks();
        value["parameters"]["greeting"]["pattern"] = json!(".*");
        value
    })
    .expect("valid");
    let manifest =
        render(&fleet, 1, &agent("pi-3"), &labels(&[("greeting", quoted)])).expect("renders");
    let ResourceSpec::File(file) = &manifest.resources[0].spec else {
        panic!("a File");
    };
    assert_eq!(
        file.content,
        FileContent::Text(format!("{quoted} from pi-3\n"))
    );
}

#[test]
fn render_refuses_a_missing_or_invalid_value_and_an_invalid_result() {
    let fleet = Fleet::from_value(kiosks()).expect("valid fleet");
    assert_eq!(
        render(&fleet, 1, &agent("a"), &labels(&[])),
        Err(RenderError::ParameterMissing {
            name: "greeting".into()
        })
    );
    assert_eq!(
        render(
            &fleet,
            1,
            &agent("a"),
            &labels(&[("greeting", "hi"), ("imageTag", "latest")])
        ),
        Err(RenderError::ParameterInvalid {
            name: "imageTag".into()
        })
    );
    // A value that the pattern allows but the manifest rules refuse: the device is not rendered.
    let mut value = kiosks();
    value["parameters"]["dir"] = json!({"pattern": "[a-z./]+"});
    value["template"]["resources"][0]["spec"]["path"] = json!("/srv/{{ dir }}/motd");
    let fleet = Fleet::from_value(value).expect("valid: the path is judged per device");
    match render(
        &fleet,
        1,
        &agent("a"),
        &labels(&[("greeting", "hi"), ("dir", "../etc")]),
    ) {
        Err(RenderError::Invalid(violations)) => {
            assert_eq!(violations[0].path, "resources[0].spec.path");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn batch_sizes_sum_to_the_selection_and_round_percentages_up() {
    let fleet = Fleet::from_value(kiosks()).expect("valid fleet");
    let strategy = &fleet.rollout_strategy;
    assert_eq!(strategy.batch_sizes(0), Vec::<usize>::new());
    assert_eq!(strategy.batch_sizes(1), vec![1]);
    assert_eq!(strategy.batch_sizes(5), vec![1, 1, 3]);
    assert_eq!(strategy.batch_sizes(100), vec![1, 10, 50, 39]);
    let counts = RolloutStrategy {
        batches: vec![BatchSpec {
            limit: Some(BatchLimit::Count(2)),
        }],
        ..RolloutStrategy::default()
    };
    assert_eq!(counts.batch_sizes(5), vec![2, 3], "the rest gets a batch");
    let none = RolloutStrategy {
        batches: Vec::new(),
        ..RolloutStrategy::default()
    };
    assert_eq!(none.batch_sizes(4), vec![4]);
    assert_eq!(RolloutStrategy::default().batch_sizes(12), vec![1, 11]);
    for selected in 0..300 {
        let sizes = strategy.batch_sizes(selected);
        assert_eq!(sizes.iter().sum::<usize>(), selected);
        assert!(sizes.iter().all(|size| *size > 0));
    }
}

#[test]
fn placeholders_are_found_and_what_is_not_one_stays_text() {
    let found = placeholders("a {{ x }} b {{y}} {{.Go}} {{ 1 }}").expect("well formed");
    let names: Vec<&str> = found.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, vec!["x", "y"]);
    assert_eq!(placeholders("ok {{ tag }"), Err(PlaceholderError { at: 3 }));
    assert!(placeholders("{{ a b }}").is_err());
}

#[test]
fn template_rules_name_their_paths() {
    // A placeholder in a key, a malformed one, an empty selector, a limit-less batch that is not
    // the last, and a declared default that makes the template an invalid manifest.
    let mut fleet = kiosks();
    fleet["selector"] = json!({});
    fleet["template"]["resources"][1]["spec"]["env"] = json!({"{{ imageTag }}": "v"});
    fleet["template"]["resources"][0]["spec"]["mode"] = json!("{{ greeting }");
    fleet["rolloutStrategy"]["batches"] = json!([{}, {"limit": 1}]);
    fleet["parameters"]["imageTag"] = json!({"pattern": ".*", "default": "has space"});
    let mut found = paths(fleet);
    found.sort();
    assert_eq!(
        found,
        vec![
            "rolloutStrategy.batches[0]",
            "selector",
            "template.resources[0].spec.mode",
            "template.resources[1].spec.env[\"{{ imageTag }}\"]",
        ]
    );
    // With the key fixed, the default's invalid image is reported at the template's path.
    let mut fleet = kiosks();
    fleet["parameters"]["imageTag"] = json!({"pattern": ".*", "default": "has space"});
    assert_eq!(paths(fleet), vec!["template.resources[1].spec.image"]);
    // Without a default, the string is judged per device and the fleet is valid.
    let mut fleet = kiosks();
    fleet["parameters"]["imageTag"] = json!({"pattern": ".*"});
    assert!(Fleet::from_value(fleet).is_ok());
}

#[test]
fn selectors_need_every_label_and_fact() {
    let fleet = Fleet::from_value(kiosks()).expect("valid fleet");
    let kiosk = labels(&[("role", "kiosk"), ("site", "a")]);
    let arm = labels(&[("arch", "aarch64")]);
    assert!(fleet.selector.matches(&kiosk, &arm));
    assert!(
        !fleet
            .selector
            .matches(&kiosk, &labels(&[("arch", "x86_64")]))
    );
    assert!(!fleet.selector.matches(&labels(&[("role", "tv")]), &arm));
    assert!(!fleet.selector.matches(&labels(&[]), &arm));
}

#[test]
fn thresholds_and_percentages_read_as_written() {
    let strategy = Fleet::from_value(kiosks())
        .expect("valid fleet")
        .rollout_strategy;
    assert!(strategy.threshold_met(9, 10));
    assert!(!strategy.threshold_met(8, 10));
    assert!(strategy.threshold_met(0, 0));
    for bad in ["090%", "1000%", "%", "-1%", "5"] {
        assert!(
            serde_json::from_value::<Percent>(json!(bad)).is_err(),
            "{bad}"
        );
    }
    assert_eq!(
        serde_json::from_value::<BatchLimit>(json!("100%")).expect("valid"),
        BatchLimit::Percent(100)
    );
}
