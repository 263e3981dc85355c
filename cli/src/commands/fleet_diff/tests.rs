//! Unit tests of `cli/src/commands/fleet_diff.rs`.

use serde_json::json;

use super::*;

fn fleet(greeting_pattern: &str, text: &str) -> Fleet {
    Fleet::from_value(json!({
        "apiVersion": "fleetlet.dev/v1", "kind": "Fleet", "name": "kiosks",
        "selector": {"matchLabels": {"role": "kiosk"}},
        "parameters": {"greeting": {"pattern": greeting_pattern, "default": "hello"}},
        "template": {"resources": [{"id": "motd", "kind": "File",
            "spec": {"path": "/etc/motd", "content": {"text": text}, "mode": "0644"}}]}
    }))
    .expect("a valid fleet")
}

fn device(
    id: &str,
    labels: &[(&str, &str)],
    current: Option<AgentManifest>,
    in_fleet: bool,
) -> Device {
    Device {
        agent_id: AgentId::try_from(id).expect("a valid id"),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        facts: BTreeMap::new(),
        current,
        in_fleet,
    }
}

/// What `fleet` renders for `id` with the label role=kiosk, as its current manifest.
fn rendered(fleet: &Fleet, id: &str) -> AgentManifest {
    let labels = BTreeMap::from([("role".to_owned(), "kiosk".to_owned())]);
    render(fleet, 1, &AgentId::try_from(id).expect("id"), &labels).expect("renders")
}

#[test]
fn the_plan_counts_selected_devices_and_names_each_change() {
    let old = fleet("^[a-z]+$", "{{ greeting }} from {{ agentId }}\n");
    let new = fleet("^[a-z]+$", "{{ greeting }}, this is {{ agentId }}\n");
    let kiosk = [("role", "kiosk")];
    let devices = [
        device("pi-1", &kiosk, Some(rendered(&old, "pi-1")), true),
        // Newly labelled: no manifest yet.
        device("pi-2", &kiosk, None, false),
        // Its greeting label breaks the pattern.
        device(
            "pi-3",
            &[("role", "kiosk"), ("greeting", "Hi!")],
            None,
            false,
        ),
        // Relabelled out of the fleet.
        device(
            "pi-4",
            &[("role", "sign")],
            Some(rendered(&old, "pi-4")),
            true,
        ),
        // Not selected, never was: not mentioned.
        device("pi-5", &[("role", "sign")], None, false),
    ];
    let plan = plan(&new, &devices);
    assert_eq!(plan.selected, 3);
    assert!(plan.has_changes());
    let text = render_plan(&plan);
    assert!(
        text.starts_with(
            "kiosks: 3 devices selected; 2 would change, 0 unchanged, 1 not rendered, 1 released\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("~ pi-1\n    ~ motd (File)\n        spec.content.text: \"hello from pi-1\\n\" -> \"hello, this is pi-1\\n\""),
        "{text}"
    );
    assert!(
        text.contains("+ pi-2 (newly selected)\n    + motd (File)"),
        "{text}"
    );
    assert!(
        text.contains("! pi-3 not rendered, keeps its manifest: "),
        "{text}"
    );
    assert!(text.contains("greeting"), "{text}");
    assert!(
        text.contains("- pi-4 released, keeps its manifest"),
        "{text}"
    );
    assert!(!text.contains("pi-5"), "{text}");
}

#[test]
fn the_same_fleet_again_changes_nothing() {
    let current = fleet("^[a-z]+$", "{{ greeting }}\n");
    let devices = [device(
        "pi-1",
        &[("role", "kiosk")],
        Some(rendered(&current, "pi-1")),
        true,
    )];
    let plan = plan(&current, &devices);
    assert!(!plan.has_changes());
    assert_eq!(
        render_plan(&plan),
        "kiosks: 1 devices selected; 0 would change, 1 unchanged\n"
    );
}
