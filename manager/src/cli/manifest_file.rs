//! Reading a manifest file (YAML or JSON) through the one validator of `fleetlet-manifests`, and
//! the resource-by-resource difference between two manifests that `fleetlet diff` prints.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use fleetlet_manifests::{AgentManifest, Resource};
use serde_json::Value;

use super::CliError;

/// Reads `path` (`-` is stdin). JSON is tried first, since every JSON document is also YAML but
/// JSON's error messages are the better ones for a JSON file; anything else is parsed as YAML
/// into a JSON value and then validated exactly as the manager would, so every violation comes
/// back with its path (`resources[1].spec.path: must be absolute`).
pub(super) fn read_manifest(path: &Path) -> Result<AgentManifest, CliError> {
    let read_error = |source| CliError::Read {
        path: path.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    if path == Path::new("-") {
        std::io::stdin()
            .read_to_end(&mut bytes)
            .map_err(read_error)?;
    } else {
        bytes = std::fs::read(path).map_err(read_error)?;
    }
    let invalid = |details: String| CliError::InvalidManifest {
        path: path.to_owned(),
        details,
    };
    let value: Value = match serde_json::from_slice(&bytes) {
        Ok(value) => value,
        Err(json_error) => {
            let looks_like_json = bytes
                .iter()
                .find(|b| !b.is_ascii_whitespace())
                .is_some_and(|b| *b == b'{');
            serde_yaml_ng::from_slice(&bytes).map_err(|yaml_error| {
                invalid(if looks_like_json {
                    format!("  not JSON: {json_error}")
                } else {
                    format!("  not YAML: {yaml_error}")
                })
            })?
        }
    };
    AgentManifest::from_value(value).map_err(|violations| {
        invalid(
            violations
                .iter()
                .map(|v| format!("  {v}"))
                .collect::<Vec<_>>()
                .join("\n"),
        )
    })
}

/// The body of a manifest PUT: the manifest without `generation`, which the manager assigns.
pub(super) fn put_body(manifest: &AgentManifest) -> Result<Value, CliError> {
    let mut body = serde_json::to_value(manifest).map_err(|e| CliError::Print(e.to_string()))?;
    if let Some(object) = body.as_object_mut() {
        object.remove("generation");
    }
    Ok(body)
}

/// One line of a diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Change {
    Added {
        id: String,
        kind: String,
    },
    Removed {
        id: String,
        kind: String,
    },
    /// `fields` are the spec fields (or `kind`) whose values differ.
    Changed {
        id: String,
        kind: String,
        fields: Vec<String>,
    },
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Added { id, kind } => write!(f, "+ {id} ({kind})"),
            Change::Removed { id, kind } => write!(f, "- {id} ({kind})"),
            Change::Changed { id, kind, fields } => {
                write!(f, "~ {id} ({kind}): {}", fields.join(", "))
            }
        }
    }
}

/// What replacing `current` by `desired` changes, by resource id (identity is the id, never a
/// path or a name), in the order removed, changed, added, each sorted by id.
pub(super) fn diff(current: &[Resource], desired: &[Resource]) -> Vec<Change> {
    let index = |resources: &[Resource]| -> BTreeMap<String, Value> {
        resources
            .iter()
            .map(|r| {
                (
                    r.id.to_string(),
                    serde_json::to_value(r).unwrap_or(Value::Null),
                )
            })
            .collect()
    };
    let (before, after) = (index(current), index(desired));
    let kind_of = |value: &Value| value["kind"].as_str().unwrap_or("?").to_owned();
    let mut changes = Vec::new();
    for (id, old) in &before {
        if !after.contains_key(id) {
            changes.push(Change::Removed {
                id: id.clone(),
                kind: kind_of(old),
            });
        }
    }
    for (id, new) in &after {
        let Some(old) = before.get(id) else { continue };
        if old == new {
            continue;
        }
        let mut fields = Vec::new();
        if old["kind"] != new["kind"] {
            fields.push("kind".to_owned());
        }
        let empty = serde_json::Map::new();
        let old_spec = old["spec"].as_object().unwrap_or(&empty);
        let new_spec = new["spec"].as_object().unwrap_or(&empty);
        let mut keys: Vec<&String> = old_spec.keys().chain(new_spec.keys()).collect();
        keys.sort();
        keys.dedup();
        for key in keys {
            if old_spec.get(key) != new_spec.get(key) {
                fields.push(format!("spec.{key}"));
            }
        }
        changes.push(Change::Changed {
            id: id.clone(),
            kind: kind_of(new),
            fields,
        });
    }
    for (id, new) in &after {
        if !before.contains_key(id) {
            changes.push(Change::Added {
                id: id.clone(),
                kind: kind_of(new),
            });
        }
    }
    changes
}

#[cfg(test)]
mod tests {
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
                "~ motd (File): spec.content, spec.mode",
                "+ new (File)"
            ]
        );
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
}
