//! Reading a manifest file (YAML or JSON) through the one validator of `fleetlet-manifests`, and
//! the resource-by-resource difference between two manifests that `fleetlet diff` prints.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use fleetlet_manifests::{AgentManifest, FileContent, Kind, Resource, ResourceSpec};
use serde_json::Value;

use super::CliError;
use super::output::note_line;

/// Reads `path` (`-` is stdin). JSON is tried first, since every JSON document is also YAML but
/// JSON's error messages are the better ones for a JSON file; anything else is parsed as YAML
/// into a JSON value and then validated exactly as the manager would, so every violation comes
/// back with its path (`resources[1].spec.path: must be absolute`). A kind this build does not
/// know is valid (see [`unknown_kind_warnings`]) and gets a warning on stderr.
pub(super) fn read_manifest(path: &Path) -> Result<AgentManifest, CliError> {
    let invalid = |details: String| CliError::InvalidManifest {
        path: path.to_owned(),
        details,
    };
    let value = read_document(path, &invalid)?;
    let manifest = AgentManifest::from_value(value).map_err(|violations| {
        invalid(
            violations
                .iter()
                .map(|v| format!("  {v}"))
                .collect::<Vec<_>>()
                .join("\n"),
        )
    })?;
    let name = if path == Path::new("-") {
        "stdin".to_owned()
    } else {
        path.display().to_string()
    };
    for warning in unknown_kind_warnings(&manifest) {
        note_line(&format!("fleetlet: {name}: {warning}"));
    }
    Ok(manifest)
}

/// Reads `path` (`-` is stdin) as JSON, else YAML, into a JSON value; a document that is
/// neither becomes `invalid(details)`. Shared by manifests and fleets.
pub(super) fn read_document(
    path: &Path,
    invalid: &dyn Fn(String) -> CliError,
) -> Result<Value, CliError> {
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
    match serde_json::from_slice(&bytes) {
        Ok(value) => Ok(value),
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
            })
        }
    }
}

/// The body of a manifest PUT: the manifest without `generation`, which the manager assigns.
pub(super) fn put_body(manifest: &AgentManifest) -> Result<Value, CliError> {
    let mut body = serde_json::to_value(manifest).map_err(|e| CliError::Print(e.to_string()))?;
    if let Some(object) = body.as_object_mut() {
        object.remove("generation");
    }
    Ok(body)
}

/// One resource of a diff.
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
    /// `fields` are the fields (`kind`, `spec.mode`, `spec.env.DEBUG`) whose values differ.
    Changed {
        id: String,
        kind: String,
        fields: Vec<FieldChange>,
    },
}

/// One field whose value differs, at its path inside the resource; `None` is "not set".
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FieldChange {
    pub path: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Added { id, kind } => write!(f, "+ {id} ({kind})"),
            Change::Removed { id, kind } => write!(f, "- {id} ({kind})"),
            Change::Changed { id, kind, fields } => {
                write!(f, "~ {id} ({kind})")?;
                for field in fields {
                    write!(f, "\n    {field}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::fmt::Display for FieldChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (before, after) = (self.before.as_ref(), self.after.as_ref());
        write!(
            f,
            "{}: {} -> {}",
            self.path,
            show_value(&self.path, before, after),
            show_value(&self.path, after, before)
        )
    }
}

/// A string longer than this (JSON-escaped) is shown as an excerpt.
const MAX_SHOWN_CHARS: usize = 60;
/// How much of a long string's excerpt comes before its first difference.
const EXCERPT_LEAD_CHARS: usize = 16;

/// One side of a field change, readable on one line: JSON for short values; for a long string
/// the part around where it first differs from `other`, with `…` where it was cut and its
/// length; base64 content as its decoded size and a digest (the bytes tell a reader nothing);
/// other long values cut short.
fn show_value(path: &str, value: Option<&Value>, other: Option<&Value>) -> String {
    let Some(value) = value else {
        return "(unset)".to_owned();
    };
    match value {
        Value::String(text) if path.ends_with("content.base64") => show_base64(text),
        Value::String(text) => {
            let whole = Value::String(text.clone()).to_string();
            if whole.chars().count() <= MAX_SHOWN_CHARS {
                return whole;
            }
            let start = match other {
                Some(Value::String(other)) => text
                    .chars()
                    .zip(other.chars())
                    .take_while(|(a, b)| a == b)
                    .count()
                    .saturating_sub(EXCERPT_LEAD_CHARS),
                _ => 0,
            };
            let mut excerpt = String::new();
            let mut taken = 0;
            for c in text.chars().skip(start) {
                if excerpt.chars().count() >= MAX_SHOWN_CHARS {
                    break;
                }
                let escaped = Value::String(c.to_string()).to_string();
                excerpt.push_str(&escaped[1..escaped.len() - 1]);
                taken += 1;
            }
            let cut_before = if start > 0 { "…" } else { "" };
            let cut_after = if start + taken < text.chars().count() {
                "…"
            } else {
                ""
            };
            format!(
                "\"{cut_before}{excerpt}{cut_after}\" ({} bytes)",
                text.len()
            )
        }
        _ => {
            let whole = value.to_string();
            if whole.chars().count() <= MAX_SHOWN_CHARS {
                whole
            } else {
                let cut: String = whole.chars().take(MAX_SHOWN_CHARS).collect();
                format!("{cut}… ({} bytes of JSON)", whole.len())
            }
        }
    }
}

/// Base64 content as `base64 of 6000 bytes (sha256 1f2e3d4c…)`.
fn show_base64(text: &str) -> String {
    use sha2::Digest as _;
    match FileContent::Base64(text.to_owned()).bytes() {
        Ok(bytes) => {
            let digest = hex::encode(sha2::Sha256::digest(&bytes));
            format!(
                "base64 of {} bytes (sha256 {}…)",
                bytes.len(),
                &digest[..12]
            )
        }
        Err(_) => format!("{} characters of invalid base64", text.len()),
    }
}

/// The path of `key` below `parent`, as validation spells paths: `spec.mode`, and
/// `spec.env["A B"]` for a key that is not a plain word.
fn field_path(parent: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-');
    match (plain, parent.is_empty()) {
        (true, true) => key.to_owned(),
        (true, false) => format!("{parent}.{key}"),
        (false, _) => format!("{parent}[{}]", Value::String(key.to_owned())),
    }
}

/// Collects the leaf fields that differ between `before` and `after` at `path`: objects are
/// compared key by key, lists of the same length item by item, anything else whole.
fn field_changes(
    path: &str,
    before: Option<&Value>,
    after: Option<&Value>,
    out: &mut Vec<FieldChange>,
) {
    if before == after {
        return;
    }
    match (before, after) {
        (Some(Value::Object(old)), Some(Value::Object(new))) => {
            let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                field_changes(&field_path(path, key), old.get(key), new.get(key), out);
            }
        }
        (Some(Value::Array(old)), Some(Value::Array(new))) if old.len() == new.len() => {
            for (index, (old, new)) in old.iter().zip(new).enumerate() {
                field_changes(&format!("{path}[{index}]"), Some(old), Some(new), out);
            }
        }
        _ => out.push(FieldChange {
            path: path.to_owned(),
            before: before.cloned(),
            after: after.cloned(),
        }),
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
        for key in ["kind", "spec"] {
            field_changes(key, old.get(key), new.get(key), &mut fields);
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

/// A warning for each resource whose kind this build does not know, naming its path and id and
/// the nearest known kind when the name looks like a typo. The manifest is still sent: the
/// manager stores kinds it does not know (an agent newer than this CLI may know them), and an
/// agent that does not know one either reports that resource `Unsupported`.
pub(super) fn unknown_kind_warnings(manifest: &AgentManifest) -> Vec<String> {
    manifest
        .resources
        .iter()
        .enumerate()
        .filter_map(|(index, resource)| {
            let ResourceSpec::Unknown { kind, .. } = &resource.spec else {
                return None;
            };
            let hint = nearest_kind(kind)
                .map(|near| format!(" (did you mean {near:?}?)"))
                .unwrap_or_default();
            Some(format!(
                "warning: resources[{index}].kind: resource {:?} has kind {kind:?}, which this \
                 fleetlet does not know{hint}; it is sent as written, and an agent that does not \
                 know the kind either reports the resource Unsupported",
                resource.id.as_str()
            ))
        })
        .collect()
}

/// The known kind `kind` is most likely a typo of: at most two edits away, ignoring case.
fn nearest_kind(kind: &str) -> Option<&'static str> {
    let lower = kind.to_lowercase();
    Kind::ALL
        .iter()
        .map(|known| {
            let name = known.as_str();
            (edit_distance(&lower, &name.to_lowercase()), name)
        })
        .filter(|(distance, _)| *distance <= 2)
        .min()
        .map(|(_, name)| name)
}

/// Edits (insert, delete, substitute, swap two neighbours) that turn `a` into `b`.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

#[cfg(test)]
mod tests;
