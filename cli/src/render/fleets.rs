//! The fleet tables (`fleet list|get|devices|history`) and the rollout's progress display
//! (`rollout status`, redrawn by `--watch`), as pure functions of the fleet API's bodies.

use fleetlet_manifests::fleet_api::{BatchView, FleetDeviceView, FleetRevisionView, FleetView};
use serde_json::Value;

use super::{render_table, timestamp};

/// Width of a batch's progress bar on a terminal, in characters.
const BAR_WIDTH: usize = 20;

/// A batch's `limit` as the operator wrote it (`1`, `25%`), or `rest` for `{}`; read from the
/// fleet JSON the view carries.
fn batch_limit(view: &FleetView, index: u32) -> String {
    let limit = view
        .fleet
        .pointer(&format!("/rolloutStrategy/batches/{index}/limit"));
    match limit {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Number(number)) => number.to_string(),
        _ => "rest".to_owned(),
    }
}

/// The strategy's `successThreshold`, as written.
fn threshold(view: &FleetView) -> Option<String> {
    match view.fleet.pointer("/rolloutStrategy/successThreshold") {
        Some(Value::String(text)) => Some(text.clone()),
        Some(Value::Number(number)) => Some(number.to_string()),
        _ => None,
    }
}

/// Where a batch stands: `done`, `running` or `waiting` (not started).
fn batch_state(batch: &BatchView) -> &'static str {
    if batch.finished {
        "done"
    } else if batch.started_at.is_some() {
        "running"
    } else {
        "waiting"
    }
}

/// `[#######-----xx......]`: succeeded `#`, failed `x`, pending `-`, not started `.`.
fn bar(batch: &BatchView) -> String {
    let total = batch.devices.max(1) as usize;
    let cells = |n: u32| (n as usize * BAR_WIDTH).div_ceil(total).min(BAR_WIDTH);
    let succeeded = cells(batch.succeeded);
    let failed = cells(batch.failed).min(BAR_WIDTH - succeeded);
    let pending = cells(batch.pending).min(BAR_WIDTH - succeeded - failed);
    let rest = BAR_WIDTH - succeeded - failed - pending;
    format!(
        "[{}{}{}{}]",
        "#".repeat(succeeded),
        "x".repeat(failed),
        "-".repeat(pending),
        ".".repeat(rest)
    )
}

/// `revision 3` or `revision 4 (rolling out 4, last good 3)`.
fn revisions(view: &FleetView) -> String {
    let mut text = format!("revision {}", view.revision);
    let mut notes = Vec::new();
    if view.target_revision != view.revision {
        notes.push(format!("target {}", view.target_revision));
    }
    if let Some(good) = view.good_revision.filter(|g| *g != view.target_revision) {
        notes.push(format!("last good {good}"));
    }
    if !notes.is_empty() {
        text.push_str(&format!(" ({})", notes.join(", ")));
    }
    text
}

/// The rollout as lines: the phase (with the pause reason), then one line per batch with its
/// counts. Every line names the fleet and the target revision, so that piped output (where only
/// changed lines are printed) reads on its own; on a terminal each batch also gets a bar.
pub(crate) fn rollout_lines(view: &FleetView, terminal: bool) -> Vec<String> {
    let name = &view.name;
    let target = view.target_revision;
    let mut phase = format!("{name}: {}, {}", view.phase.as_str(), revisions(view));
    if let Some(threshold) = threshold(view) {
        phase.push_str(&format!(", success threshold {threshold}"));
    }
    let mut lines = vec![phase];
    if let Some(reason) = &view.pause_reason {
        lines.push(format!("{name}: paused: {reason}"));
    }
    let count = view.batches.len();
    for batch in &view.batches {
        let mut line = format!(
            "{name} revision {target} batch {}/{count} (limit {}): {} devices, {} succeeded, {} \
             failed, {} pending",
            batch.index + 1,
            batch_limit(view, batch.index),
            batch.devices,
            batch.succeeded,
            batch.failed,
            batch.pending,
        );
        if batch.deferred > 0 {
            line.push_str(&format!(", {} deferred", batch.deferred));
        }
        line.push_str(&format!(", {}", batch_state(batch)));
        if terminal {
            line = format!("{} {line}", bar(batch));
        }
        lines.push(line);
    }
    lines
}

/// `rollout status` without `--watch`: the progress lines and the devices per rollout state.
pub(crate) fn render_rollout(view: &FleetView) -> String {
    let mut out = String::new();
    for line in rollout_lines(view, false) {
        out.push_str(&line);
        out.push('\n');
    }
    out.push_str(&format!("devices: {}\n", device_counts(view)));
    out
}

/// `12 (10 Succeeded, 2 Pending)`.
fn device_counts(view: &FleetView) -> String {
    let total: u64 = view.devices.values().sum();
    if total == 0 {
        return "0".to_owned();
    }
    let parts: Vec<String> = view
        .devices
        .iter()
        .map(|(state, n)| format!("{n} {}", state.as_str()))
        .collect();
    format!("{total} ({})", parts.join(", "))
}

/// `fleet list`: one row per fleet.
pub(crate) fn render_fleets(views: &[FleetView]) -> String {
    let mut rows = vec![[
        "FLEET".to_owned(),
        "REVISION".to_owned(),
        "TARGET".to_owned(),
        "PHASE".to_owned(),
        "BATCH".to_owned(),
        "DEVICES".to_owned(),
        "UPDATED".to_owned(),
        "PAUSE REASON".to_owned(),
    ]];
    for view in views {
        rows.push([
            view.name.clone(),
            view.revision.to_string(),
            view.target_revision.to_string(),
            view.phase.as_str().to_owned(),
            view.current_batch.map_or_else(
                || "-".to_owned(),
                |b| format!("{}/{}", b + 1, view.batches.len()),
            ),
            device_counts(view),
            timestamp(Some(view.updated_at)),
            view.pause_reason.clone().unwrap_or_default(),
        ]);
    }
    render_table(&rows)
}

/// `fleet get`: the rollout, then each batch as a table row.
pub(crate) fn render_fleet_view(view: &FleetView) -> String {
    let mut out = render_rollout(view);
    let mut rows = vec![[
        "BATCH".to_owned(),
        "LIMIT".to_owned(),
        "DEVICES".to_owned(),
        "SUCCEEDED".to_owned(),
        "FAILED".to_owned(),
        "PENDING".to_owned(),
        "DEFERRED".to_owned(),
        "STATE".to_owned(),
        "STARTED".to_owned(),
    ]];
    for batch in &view.batches {
        rows.push([
            (batch.index + 1).to_string(),
            batch_limit(view, batch.index),
            batch.devices.to_string(),
            batch.succeeded.to_string(),
            batch.failed.to_string(),
            batch.pending.to_string(),
            batch.deferred.to_string(),
            batch_state(batch).to_owned(),
            batch
                .started_at
                .map_or_else(|| "-".to_owned(), |t| timestamp(Some(t))),
        ]);
    }
    out.push_str(&render_table(&rows));
    out
}

/// `fleet devices`: one row per selected device.
pub(crate) fn render_fleet_devices(devices: &[FleetDeviceView]) -> String {
    let mut rows = vec![[
        "AGENT".to_owned(),
        "STATE".to_owned(),
        "REVISION".to_owned(),
        "GENERATION".to_owned(),
        "BATCH".to_owned(),
        "DETAIL".to_owned(),
    ]];
    for device in devices {
        let mut detail = device.detail.clone().unwrap_or_default();
        if !device.conflicting_fleets.is_empty() {
            let fleets = format!("fleets {}", device.conflicting_fleets.join(", "));
            detail = if detail.is_empty() {
                fleets
            } else {
                format!("{detail}; {fleets}")
            };
        }
        let number = |n: Option<u64>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
        rows.push([
            device.agent_id.to_string(),
            device.state.as_str().to_owned(),
            number(device.revision_rendered),
            number(device.generation),
            device
                .batch
                .map_or_else(|| "-".to_owned(), |b| (b + 1).to_string()),
            detail,
        ]);
    }
    render_table(&rows)
}

/// `fleet history`: revisions newest first; `CONTENT` is the revision whose template it carries.
pub(crate) fn render_fleet_history(revisions: &[FleetRevisionView]) -> String {
    let mut rows = vec![[
        "REVISION".to_owned(),
        "CONTENT".to_owned(),
        "CREATED".to_owned(),
        "BY".to_owned(),
        "CONTENT HASH".to_owned(),
    ]];
    for revision in revisions {
        rows.push([
            revision.revision.to_string(),
            revision.content_revision.to_string(),
            timestamp(Some(revision.created_at)),
            revision.created_by.clone(),
            revision.content_hash.chars().take(19).collect(),
        ]);
    }
    render_table(&rows)
}

#[cfg(test)]
mod tests;
