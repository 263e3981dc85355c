//! `GET /metrics`: reads this scrape's gauges (the long-polls held open, the agents per fleet
//! state from the store) and answers with the exposition [`crate::metrics::Metrics`] renders.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use fleetlet_manifests::api::FleetState;
use time::OffsetDateTime;

use super::AppState;
use crate::metrics::{EXPOSITION_CONTENT_TYPE, Metrics};
use crate::store::FleetQuery;

/// Fleet rows read per store call while counting agents by state.
const FLEET_BATCH: usize = 500;

/// Counts agents per fleet state, reading the fleet in batches. `None` when the store fails.
async fn agents_by_state(state: &AppState) -> Option<BTreeMap<&'static str, u64>> {
    let mut counts: BTreeMap<&'static str, u64> =
        FleetState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
    let now = OffsetDateTime::now_utc();
    let mut after = None;
    loop {
        let query = FleetQuery {
            labels: BTreeMap::new(),
            after: after.clone(),
            limit: FLEET_BATCH,
            error_reason: None,
        };
        let rows = state.store.fleet(&query).await.ok()?;
        let last_batch = rows.len() < FLEET_BATCH;
        for row in rows {
            let summary = crate::fleet::summarize(row, now, state.report_interval);
            *counts.entry(summary.state.as_str()).or_default() += 1;
            after = Some(summary.agent_id);
        }
        if last_batch {
            return Some(counts);
        }
    }
}

/// The handler of `GET /metrics`.
pub async fn metrics_handler(
    State(state): State<AppState>,
    axum::Extension(metrics): axum::Extension<Metrics>,
) -> Response {
    let long_polls_open = state.long_polls.open();
    let agents = agents_by_state(&state).await;
    let fleets = match state.store.fleets() {
        Ok(store) => store.fleet_gauges().await.ok(),
        Err(_) => None,
    };
    let mut text = metrics.render(long_polls_open, agents);
    text.push_str(&crate::metrics::render_fleets(fleets));
    ([(CONTENT_TYPE, EXPOSITION_CONTENT_TYPE)], text).into_response()
}
