//! The JSON bodies of the fleet tests (a fleet, its template's File, a rollout strategy), the
//! device ids and labels they select, and counts read from a fleet's view: pure functions, no
//! lab needed.

use fleetlet_manifests::fleet_api::{DeviceRolloutState, FleetView};
use serde_json::{Value, json};

/// The labels of a kiosk, which the `kiosks` fleets select: `role=kiosk`.
pub fn kiosk() -> Value {
    json!({"role": "kiosk"})
}

/// A fleet body: `name`, selector labels, parameters, the template's resources and the
/// strategy.
pub fn fleet(
    name: &str,
    match_labels: Value,
    parameters: Value,
    resources: Vec<Value>,
    strategy: Value,
) -> Value {
    json!({
        "apiVersion": "fleetlet.dev/v1",
        "kind": "Fleet",
        "name": name,
        "selector": {"matchLabels": match_labels},
        "parameters": parameters,
        "template": {"resources": resources},
        "rolloutStrategy": strategy,
    })
}

/// A File resource of a template: `text` at `path` (placeholders allowed in both).
pub fn template_file(id: &str, path: &str, text: &str) -> Value {
    json!({"id": id, "kind": "File",
           "spec": {"path": path, "content": {"text": text}, "mode": "0644"}})
}

/// A rollout strategy with a one-minute batch timeout.
pub fn strategy(batches: Value, threshold: &str, approval: bool) -> Value {
    json!({"batches": batches, "successThreshold": threshold, "batchTimeoutSeconds": 60,
           "requireApproval": approval})
}

/// Device ids `<prefix>-NN` for the numbers in `range`.
pub fn ids(prefix: &str, range: std::ops::RangeInclusive<u32>) -> Vec<String> {
    range.map(|i| format!("{prefix}-{i:02}")).collect()
}

/// Device ids `<prefix>-1` … `<prefix>-<n>`, the numbers zero-padded to the width of `n` so
/// that the ids sort in number order (`kiosk-01` … `kiosk-12`).
pub fn numbered(prefix: &str, n: u32) -> Vec<String> {
    let width = n.to_string().len();
    (1..=n).map(|i| format!("{prefix}-{i:0width$}")).collect()
}

/// Counts of a fleet view's devices in `state` (0 when absent).
pub fn count(view: &FleetView, state: DeviceRolloutState) -> u64 {
    view.devices.get(&state).copied().unwrap_or(0)
}
