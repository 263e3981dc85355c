//! `fleetlet label AGENT k=v k-`: change an agent's labels with one JSON merge patch
//! (`PATCH /api/v1/agents/{agentId}`, `{"labels": {"k": "v", "gone": null}}`); the manager
//! re-evaluates which fleet selects the agent at once.

use std::collections::BTreeMap;

use fleetlet_manifests::fleet_api::{AgentLabels, LabelPatch};
use reqwest::Method;

use super::super::CliError;
use super::super::client::{Client, segment};
use super::super::output::print_line;

/// One change on the command line: `key=value` sets a label, `key-` removes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelChange {
    Set(String, String),
    Remove(String),
}

impl LabelChange {
    fn key(&self) -> &str {
        match self {
            LabelChange::Set(key, _) | LabelChange::Remove(key) => key,
        }
    }
}

/// Parses `key=value` or `key-` (as `kubectl label` spells them). The manager checks the keys
/// and values themselves; this only refuses what is neither form.
pub fn parse_label_change(text: &str) -> Result<LabelChange, String> {
    if let Some((key, value)) = text.split_once('=') {
        if key.is_empty() {
            return Err(format!("{text:?} has no label key before '='"));
        }
        return Ok(LabelChange::Set(key.to_owned(), value.to_owned()));
    }
    match text.strip_suffix('-') {
        Some(key) if !key.is_empty() => Ok(LabelChange::Remove(key.to_owned())),
        _ => Err(format!(
            "{text:?} is neither key=value (set a label) nor key- (remove it)"
        )),
    }
}

/// The merge patch for `changes`; a key named twice is refused rather than one side winning
/// silently.
pub(super) fn merge_patch(changes: &[LabelChange]) -> Result<LabelPatch, CliError> {
    let mut labels = BTreeMap::new();
    for change in changes {
        let value = match change {
            LabelChange::Set(_, value) => Some(value.clone()),
            LabelChange::Remove(_) => None,
        };
        if labels.insert(change.key().to_owned(), value).is_some() {
            return Err(CliError::Usage(format!(
                "label {:?} is changed more than once",
                change.key()
            )));
        }
    }
    Ok(LabelPatch { labels })
}

/// `k1=v1,k2=v2`, or `(none)`.
pub(super) fn labels_text(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "(none)".to_owned();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// What `label` prints: the labels now, and the fleet that owns the device after selection was
/// evaluated again.
pub(super) fn labelled_line(answer: &AgentLabels) -> String {
    let owner = match (&answer.fleet, answer.conflicting_fleets.as_slice()) {
        (Some(fleet), _) => format!("fleet {fleet}"),
        (None, []) => "no fleet".to_owned(),
        (None, fleets) => format!(
            "no fleet: in conflict between {} (it keeps its manifest)",
            fleets.join(", ")
        ),
    };
    format!(
        "{}: labels {}; {owner}",
        answer.agent_id,
        labels_text(&answer.labels)
    )
}

/// Sends the patch and prints the labels the agent has now and its fleet.
pub(super) async fn run(
    client: &Client,
    agent_id: &str,
    changes: &[LabelChange],
) -> Result<(), CliError> {
    let body =
        serde_json::to_value(merge_patch(changes)?).map_err(|e| CliError::Print(e.to_string()))?;
    let path = format!("/api/v1/agents/{}", segment(agent_id));
    let answer: AgentLabels = client.call(Method::PATCH, &path, &[], Some(&body)).await?;
    print_line(&labelled_line(&answer))
}

#[cfg(test)]
mod tests;
