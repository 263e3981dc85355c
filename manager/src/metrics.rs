//! `GET /metrics`: the manager's Prometheus text exposition (format 0.0.4), written by hand.
//!
//! Why no crate: the manager needs three counters, one histogram and two gauges, and the text
//! format is a few lines of `name{label="value"} number`. `prometheus-client` would bring a
//! registry and encoder for that, plus its own types wrapped around every metric; the hand-written
//! version is about as long as the glue would be, and `tests/tests/manager_metrics.rs` parses the
//! output with a strict parser to keep it honest.
//!
//! What is measured:
//! - `fleetlet_http_requests_total{method,route,status}` and
//!   `fleetlet_http_request_duration_seconds{method,route}` (a histogram), labelled by the
//!   *matched route template* (`/api/v1/agents/{agent_id}/status`), never the raw path: agent
//!   ids in label values would grow without bound. Unmatched paths are `route="unmatched"`.
//! - `fleetlet_status_reports_total{accepted}`: status reports ingested, split by whether
//!   they were new (`true`) or replays of an old `reportSeq` (`false`).
//! - `fleetlet_long_polls_open`: manifest long-polls currently held open by this replica.
//! - `fleetlet_agents{state}`: agents per fleet state, derived at scrape time from the store
//!   (so every replica reports the whole fleet; take `max` across replicas, not `sum`).
//!   `fleetlet_store_up` is 0 when the store could not be read for it.
//!
//! Counters are per replica and start at zero when the process starts, as Prometheus expects.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use fleetlet_manifests::api::{FleetState, ReportAck};
use time::OffsetDateTime;

use crate::http::AppState;
use crate::store::FleetQuery;

/// Upper bounds of the latency buckets, in seconds. Long-polls hold a request for up to 60 s,
/// so the buckets reach past that.
const BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The route of status reports, whose answers are counted as ingested reports.
const STATUS_ROUTE: &str = "/api/v1/agents/{agent_id}/status";

/// A status answer is a tiny `ReportAck`; anything longer is not read for the metric.
const ACK_BODY_LIMIT: usize = 1024;

/// Fleet rows read per store call while counting agents by state.
const FLEET_BATCH: usize = 500;

#[derive(Debug, Default, Clone)]
struct Histogram {
    /// Cumulative counts per bucket of [`BUCKETS`], plus `+Inf` via `count`.
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (bucket, bound) in self.buckets.iter_mut().zip(BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }
}

#[derive(Debug, Default)]
struct Recorded {
    /// (method, route, status) → count
    requests: BTreeMap<(String, String, u16), u64>,
    /// (method, route) → latency
    latency: BTreeMap<(String, String), Histogram>,
    /// accepted → count
    reports: BTreeMap<bool, u64>,
}

/// The request metrics of this process; cheap to clone (one shared table).
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    recorded: Arc<Mutex<Recorded>>,
}

impl Metrics {
    fn record_request(&self, method: &Method, route: &str, status: StatusCode, seconds: f64) {
        let mut recorded = self.recorded.lock().unwrap_or_else(PoisonError::into_inner);
        *recorded
            .requests
            .entry((method.to_string(), route.to_owned(), status.as_u16()))
            .or_default() += 1;
        recorded
            .latency
            .entry((method.to_string(), route.to_owned()))
            .or_default()
            .observe(seconds);
    }

    fn record_report(&self, accepted: bool) {
        let mut recorded = self.recorded.lock().unwrap_or_else(PoisonError::into_inner);
        *recorded.reports.entry(accepted).or_default() += 1;
    }

    /// The request part of the exposition.
    fn render_requests(&self, out: &mut String) {
        let recorded = self.recorded.lock().unwrap_or_else(PoisonError::into_inner);
        out.push_str(
            "# HELP fleetlet_http_requests_total HTTP requests answered, by matched route.\n",
        );
        out.push_str("# TYPE fleetlet_http_requests_total counter\n");
        for ((method, route, status), count) in &recorded.requests {
            let _ = writeln!(
                out,
                "fleetlet_http_requests_total{{method=\"{}\",route=\"{}\",status=\"{status}\"}} {count}",
                escape(method),
                escape(route)
            );
        }
        out.push_str("# HELP fleetlet_http_request_duration_seconds Time to answer HTTP requests, by matched route.\n");
        out.push_str("# TYPE fleetlet_http_request_duration_seconds histogram\n");
        for ((method, route), histogram) in &recorded.latency {
            let labels = format!("method=\"{}\",route=\"{}\"", escape(method), escape(route));
            for (bound, count) in BUCKETS.iter().zip(histogram.buckets) {
                let _ = writeln!(
                    out,
                    "fleetlet_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "fleetlet_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                histogram.count
            );
            let _ = writeln!(
                out,
                "fleetlet_http_request_duration_seconds_sum{{{labels}}} {}",
                histogram.sum
            );
            let _ = writeln!(
                out,
                "fleetlet_http_request_duration_seconds_count{{{labels}}} {}",
                histogram.count
            );
        }
        out.push_str("# HELP fleetlet_status_reports_total Status reports ingested; accepted=false are replays of an old reportSeq.\n");
        out.push_str("# TYPE fleetlet_status_reports_total counter\n");
        for accepted in [true, false] {
            let count = recorded.reports.get(&accepted).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "fleetlet_status_reports_total{{accepted=\"{accepted}\"}} {count}"
            );
        }
    }
}

/// A label value with `\`, `"` and newlines escaped as the text format requires.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// Records an answered request under its matched route (`None`: unmatched). Status reports
    /// are also counted by their `accepted` answer, read back from the (tiny) response body, so
    /// the handler itself stays free of metrics code.
    pub async fn observe(
        &self,
        method: &Method,
        route: Option<&MatchedPath>,
        started: Instant,
        response: Response,
    ) -> Response {
        let route = route.map_or("unmatched", MatchedPath::as_str);
        self.record_request(
            method,
            route,
            response.status(),
            started.elapsed().as_secs_f64(),
        );
        if method == Method::PUT && route == STATUS_ROUTE && response.status() == StatusCode::OK {
            let (parts, body) = response.into_parts();
            // Boxed, so that the future of every request is not as large as this rare step.
            let bytes = Box::pin(axum::body::to_bytes(body, ACK_BODY_LIMIT))
                .await
                .unwrap_or_default();
            if let Ok(ack) = serde_json::from_slice::<ReportAck>(&bytes) {
                self.record_report(ack.accepted);
            }
            return Response::from_parts(parts, Body::from(bytes));
        }
        response
    }
}

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
    let mut out = String::new();
    metrics.render_requests(&mut out);
    out.push_str(
        "# HELP fleetlet_long_polls_open Manifest long-polls held open by this replica.\n",
    );
    out.push_str("# TYPE fleetlet_long_polls_open gauge\n");
    let _ = writeln!(out, "fleetlet_long_polls_open {}", state.long_polls.open());
    let agents = agents_by_state(&state).await;
    out.push_str("# HELP fleetlet_store_up Whether the store answered the scrape's fleet query.\n");
    out.push_str("# TYPE fleetlet_store_up gauge\n");
    let _ = writeln!(out, "fleetlet_store_up {}", u8::from(agents.is_some()));
    if let Some(agents) = agents {
        out.push_str("# HELP fleetlet_agents Registered agents by fleet state.\n");
        out.push_str("# TYPE fleetlet_agents gauge\n");
        for (fleet_state, count) in agents {
            let _ = writeln!(out, "fleetlet_agents{{state=\"{fleet_state}\"}} {count}");
        }
    }
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        out,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut histogram = Histogram::default();
        histogram.observe(0.003);
        histogram.observe(0.2);
        assert_eq!(histogram.buckets[0], 0); // ≤ 1 ms
        assert_eq!(histogram.buckets[1], 1); // ≤ 5 ms
        assert_eq!(histogram.buckets[6], 2); // ≤ 250 ms
        assert_eq!(histogram.count, 2);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn requests_render_with_route_templates() {
        let metrics = Metrics::default();
        metrics.record_request(&Method::GET, STATUS_ROUTE, StatusCode::OK, 0.01);
        let mut out = String::new();
        metrics.render_requests(&mut out);
        assert!(out.contains(
            "fleetlet_http_requests_total{method=\"GET\",route=\"/api/v1/agents/{agent_id}/status\",status=\"200\"} 1"
        ));
    }
}
