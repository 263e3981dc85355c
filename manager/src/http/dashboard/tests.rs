//! Tests of the dashboard page: external script and style only, no HTML built from data, every
//! fleet state and rollout phase counted.

use super::*;

#[test]
fn the_page_loads_only_external_script_and_style() {
    assert!(INDEX_HTML.contains("src=\"/dashboard/app.js\""));
    assert!(INDEX_HTML.contains("href=\"/dashboard/style.css\""));
    // No inline script: the CSP would block it anyway.
    assert_eq!(INDEX_HTML.matches("<script").count(), 1);
}

#[test]
fn the_script_never_builds_html_from_data() {
    assert!(!APP_JS.contains("innerHTML"));
    assert!(!APP_JS.contains("outerHTML"));
    assert!(!APP_JS.contains("insertAdjacentHTML"));
}

#[test]
fn the_script_counts_every_fleet_state() {
    let states: Vec<String> = fleetlet_manifests::api::FleetState::ALL
        .iter()
        .map(|s| format!("\"{}\"", s.as_str()))
        .collect();
    let line = format!("const STATES = [{}];", states.join(", "));
    assert!(APP_JS.contains(&line), "app.js should declare {line}");
}

#[test]
fn the_script_counts_every_rollout_phase() {
    let phases: Vec<String> = fleetlet_manifests::fleet_api::RolloutPhase::ALL
        .iter()
        .map(|p| format!("\"{}\"", p.as_str()))
        .collect();
    let line = format!("const ROLLOUT_PHASES = [{}];", phases.join(", "));
    assert!(APP_JS.contains(&line), "app.js should declare {line}");
}
