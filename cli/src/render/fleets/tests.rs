//! Unit tests of `cli/src/render/fleets.rs`.

use fleetlet_manifests::fleet_api::FleetView;
use serde_json::json;

use super::*;

/// A fleet of 6 devices in batches [1, 50%, rest] whose canary failed: paused after batch 1.
fn paused_view() -> FleetView {
    serde_json::from_value(json!({
        "name": "kiosks",
        "fleet": {"apiVersion": "fleetlet.dev/v1", "kind": "Fleet", "name": "kiosks",
                  "rolloutStrategy": {"batches": [{"limit": 1}, {"limit": "50%"}, {}],
                                      "successThreshold": "100%"}},
        "revision": 2, "targetRevision": 2, "goodRevision": 1, "phase": "Paused",
        "currentBatch": 0,
        "batches": [
            {"index": 0, "devices": 1, "succeeded": 0, "failed": 1, "pending": 0, "deferred": 0,
             "startedAt": "2026-12-07T19:00:00Z", "finished": true},
            {"index": 1, "devices": 0, "succeeded": 0, "failed": 0, "pending": 3, "deferred": 0,
             "finished": false},
            {"index": 2, "devices": 0, "succeeded": 0, "failed": 0, "pending": 2, "deferred": 0,
             "finished": false}
        ],
        "pauseReason": "batch 1: 0 of 1 succeeded, 1 failed (threshold 100%)",
        "devices": {"Pending": 5, "Failed": 1},
        "updatedAt": "2026-12-07T19:01:00Z"
    }))
    .expect("a valid fleet view")
}

#[test]
fn piped_rollout_lines_name_the_fleet_and_carry_no_bars() {
    let lines = rollout_lines(&paused_view(), false);
    assert_eq!(
        lines,
        [
            "kiosks: Paused, revision 2 (last good 1), success threshold 100%",
            "kiosks: paused: batch 1: 0 of 1 succeeded, 1 failed (threshold 100%)",
            "kiosks revision 2 batch 1/3 (limit 1): 1 devices, 0 succeeded, 1 failed, 0 pending, done",
            "kiosks revision 2 batch 2/3 (limit 50%): 0 devices, 0 succeeded, 0 failed, 3 pending, waiting",
            "kiosks revision 2 batch 3/3 (limit rest): 0 devices, 0 succeeded, 0 failed, 2 pending, waiting",
        ]
    );
}

#[test]
fn a_terminal_gets_a_bar_per_batch() {
    let lines = rollout_lines(&paused_view(), true);
    assert!(
        lines[2].starts_with("[xxxxxxxxxxxxxxxxxxxx] kiosks revision 2 batch 1/3"),
        "{}",
        lines[2]
    );
    // A batch that has not started shows its pending devices against a device count of 0.
    assert!(lines[3].starts_with('['), "{}", lines[3]);
}

#[test]
fn bars_show_succeeded_failed_and_pending_in_proportion() {
    let batch = BatchView {
        index: 0,
        devices: 4,
        succeeded: 2,
        failed: 1,
        pending: 1,
        deferred: 0,
        started_at: None,
        finished: false,
    };
    assert_eq!(bar(&batch), "[##########xxxxx-----]");
}

#[test]
fn the_fleet_list_shows_phase_batch_and_pause_reason() {
    let table = render_fleets(&[paused_view()]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("FLEET"), "{table}");
    assert!(lines[1].contains("Paused"), "{table}");
    assert!(lines[1].contains("1/3"), "{table}");
    assert!(lines[1].contains("6 (5 Pending, 1 Failed)"), "{table}");
    assert!(lines[1].ends_with("(threshold 100%)"), "{table}");
}

#[test]
fn devices_show_their_state_revision_and_conflicts() {
    let devices: Vec<FleetDeviceView> = serde_json::from_value(json!([
        {"agentId": "pi-1", "revisionRendered": 2, "generation": 3, "state": "Failed",
         "batch": 0, "detail": "motd: PathNotAllowed", "updatedAt": "2026-12-07T19:00:00Z"},
        {"agentId": "pi-2", "state": "Conflict", "conflictingFleets": ["kiosks", "signs"],
         "updatedAt": "2026-12-07T19:00:00Z"}
    ]))
    .expect("valid devices");
    let table = render_fleet_devices(&devices);
    assert!(
        table.contains("pi-1   Failed    2         3           1      motd: PathNotAllowed"),
        "{table}"
    );
    assert!(table.contains("fleets kiosks, signs"), "{table}");
}
