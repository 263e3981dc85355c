//! Every table and structured output the CLI prints, as pure functions of the API's types.

use fleetlet_manifests::api::{AgentSummary, Event, ManifestRevision, StatusView};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use fleetlet_manifests::{Condition, ConditionType, Phase};

use super::output::{print, print_line};
use super::{CliError, Output};

mod fleets;

pub(super) use fleets::{
    render_fleet_devices, render_fleet_history, render_fleet_view, render_fleets, render_rollout,
    rollout_lines,
};

/// Prints `value` as JSON or YAML, or `table` for the table output.
pub(super) fn print_as<T: Serialize>(
    output: Output,
    value: &T,
    table: impl FnOnce(&T) -> String,
) -> Result<(), CliError> {
    match output {
        Output::Json => print_line(
            &serde_json::to_string_pretty(value).map_err(|e| CliError::Print(e.to_string()))?,
        ),
        Output::Yaml => {
            print(&serde_yaml_ng::to_string(value).map_err(|e| CliError::Print(e.to_string()))?)
        }
        Output::Table => print(&table(value)),
    }
}

fn timestamp(time: Option<OffsetDateTime>) -> String {
    // Whole seconds: nanoseconds only widen every table.
    time.and_then(|t| t.replace_nanosecond(0).ok())
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "never".to_owned())
}

/// The status view as a short header and one row per resource; failing resources are the rows
/// with a reason.
pub fn render_status(view: &StatusView) -> String {
    let summary = &view.summary;
    let mut out = format!(
        "agent {}  state {}  desired {}  observed {}  last seen {}\n",
        summary.agent_id,
        summary.state.as_str(),
        summary.desired_generation,
        summary
            .observed_generation
            .map_or_else(|| "-".to_owned(), |g| g.to_string()),
        timestamp(summary.last_seen_at),
    );
    if let Some(condition) = view.status.as_ref().and_then(rollback_condition) {
        out.push_str(&format!(
            "RolledBack={:?} ({}): {}\n",
            condition.status, condition.reason, condition.message
        ));
    }
    let mut rows = vec![[
        "RESOURCE".to_owned(),
        "KIND".to_owned(),
        "PHASE".to_owned(),
        "GEN".to_owned(),
        "REASON".to_owned(),
        "MESSAGE".to_owned(),
    ]];
    if let Some(status) = &view.status {
        for (id, resource) in &status.resources {
            rows.push([
                id.to_string(),
                resource.kind.clone(),
                resource.phase.as_str().to_owned(),
                resource.generation.to_string(),
                resource
                    .error
                    .as_ref()
                    .map_or_else(String::new, |e| e.reason.to_string()),
                resource
                    .error
                    .as_ref()
                    .map_or_else(String::new, |e| e.message.clone()),
            ]);
        }
    }
    out.push_str(&render_table(&rows));
    out
}

/// The agent's `RolledBack` condition, True while it runs its last known-good generation, False
/// with a reason when a generation missed its deadline and it did not roll back.
pub(super) fn rollback_condition(status: &fleetlet_manifests::AgentStatus) -> Option<&Condition> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == ConditionType::RolledBack)
}

/// The resources of a status that are Failed or Unsupported, as `id (Kind) Reason: message`.
pub(super) fn failing_resources(view: &StatusView) -> Vec<String> {
    let Some(status) = &view.status else {
        return Vec::new();
    };
    status
        .resources
        .iter()
        .filter(|(_, r)| matches!(r.phase, Phase::Failed | Phase::Unsupported))
        .map(|(id, r)| match &r.error {
            Some(error) => format!("{id} ({}) {}: {}", r.kind, error.reason, error.message),
            None => format!("{id} ({}) {}", r.kind, r.phase.as_str()),
        })
        .collect()
}

/// The fleet list as a table.
pub fn render_fleet(rows: &[AgentSummary]) -> String {
    let mut table = vec![[
        "AGENT".to_owned(),
        "STATE".to_owned(),
        "DESIRED".to_owned(),
        "OBSERVED".to_owned(),
        "READY".to_owned(),
        "FAILED".to_owned(),
        "LAST SEEN".to_owned(),
        "LABELS".to_owned(),
    ]];
    for row in rows {
        let total: u32 = row.counts.values().sum();
        let count = |phase| row.counts.get(&phase).copied().unwrap_or(0);
        table.push([
            row.agent_id.to_string(),
            row.state.as_str().to_owned(),
            row.desired_generation.to_string(),
            row.observed_generation
                .map_or_else(|| "-".to_owned(), |g| g.to_string()),
            format!("{}/{total}", count(Phase::Ready)),
            (count(Phase::Failed) + count(Phase::Unsupported)).to_string(),
            timestamp(row.last_seen_at),
            row.labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
        ]);
    }
    render_table(&table)
}

/// The manifest history as a table, newest first.
pub(super) fn render_history(revisions: &[ManifestRevision]) -> String {
    let mut table = vec![[
        "GENERATION".to_owned(),
        "CREATED".to_owned(),
        "BY".to_owned(),
        "RESOURCES".to_owned(),
        "ROLLOUT".to_owned(),
        "CONTENT HASH".to_owned(),
    ]];
    for revision in revisions {
        table.push([
            revision.generation.to_string(),
            timestamp(Some(revision.created_at)),
            revision.created_by.clone(),
            revision.resources.len().to_string(),
            revision.rollout.map_or_else(
                || "-".to_owned(),
                |r| format!("{}s {}", r.progress_deadline_seconds, r.on_failure),
            ),
            revision.content_hash.chars().take(19).collect(),
        ]);
    }
    render_table(&table)
}

/// The scalar fields of an event's payload as `key=value`, so a line stays short.
fn payload_summary(payload: &serde_json::Value) -> String {
    let Some(object) = payload.as_object() else {
        return payload.to_string();
    };
    object
        .iter()
        .filter_map(|(key, value)| match value {
            serde_json::Value::String(text) => Some(format!("{key}={text}")),
            serde_json::Value::Number(_) | serde_json::Value::Bool(_) => {
                Some(format!("{key}={value}"))
            }
            _ => None,
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Events as table rows; the header is printed once, even while following.
pub(super) fn render_events(events: &[Event], header: bool) -> String {
    let mut table = Vec::new();
    if header {
        table.push([
            "SEQ".to_owned(),
            "TIME".to_owned(),
            "TYPE".to_owned(),
            "RESOURCE".to_owned(),
            "DETAILS".to_owned(),
        ]);
    }
    for event in events {
        table.push([
            event.seq.to_string(),
            timestamp(Some(event.created_at)),
            event.type_.as_str().to_owned(),
            event
                .resource_id
                .as_ref()
                .map_or_else(|| "-".to_owned(), ToString::to_string),
            payload_summary(&event.payload),
        ]);
    }
    // Fixed widths: a followed log cannot re-align columns it already printed.
    let widths = [6, 20, 20, 20, 0];
    let mut out = String::new();
    for row in table {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Aligns columns to their widest cell.
pub(super) fn render_table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests;
