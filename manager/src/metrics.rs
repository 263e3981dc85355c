//! The manager's Prometheus text exposition (format 0.0.4), written by hand: the registry the
//! HTTP layer records into, and the text `http/scrape.rs` serves at `GET /metrics`. It knows
//! nothing of the HTTP layer or the store: they call into it, never the other way round.
//!
//! Why no crate: the manager needs two counters, two histograms and three gauges, and the text
//! format is a few lines of `name{label="value"} number`. `prometheus-client` would bring a
//! registry and encoder for that, plus its own types wrapped around every metric; the hand-written
//! version is about as long as the glue would be, and `tests/tests/manager_metrics.rs` parses the
//! output with a strict parser to keep it honest.
//!
//! What is measured:
//! - `fleetlet_http_requests_total{method,route,status}`: every answered request, labelled by the
//!   *matched route template* (`/api/v1/agents/{agent_id}/status`), never the raw path: agent
//!   ids in label values would grow without bound. Unmatched paths are `route="unmatched"`.
//! - `fleetlet_http_request_duration_seconds{method,route}` (a histogram): the time to answer
//!   every request *except* manifest long-polls. A long-poll lasts as long as the agent asked
//!   (`waitSeconds`, up to 300 s) and says nothing about how fast the manager is, so mixing them
//!   in would drown the latency of real requests; the buckets still reach the 315 s deadline.
//! - `fleetlet_http_long_poll_duration_seconds{status}` (a histogram): manifest long-polls
//!   (`GET …/manifest` with `waitSeconds` > 0) that were answered 200 (a newer generation) or
//!   304 (the wait ran out), with buckets up to the deadline. A refused poll (400, 401, 429, …)
//!   is an ordinary request.
//! - `fleetlet_status_reports_total{outcome}`: status reports, counted by the report handler
//!   where the store decided: `accepted` (new) or `duplicate` (a replay of an old `reportSeq`).
//! - `fleetlet_long_polls_open`: manifest long-polls currently held open by this replica.
//! - `fleetlet_agents{state}`: agents per fleet state, derived at scrape time from the store
//!   (so every replica reports the whole fleet; take `max` across replicas, not `sum`).
//!   `fleetlet_store_up` is 0 when the store could not be read for it.
//!
//! - `fleetlet_fleet_devices{fleet,state}`: devices per fleet and rollout state, and
//!   `fleetlet_fleet_rollout_phase{fleet,phase}` (1 for the fleet's phase), read from the store at
//!   scrape time like `fleetlet_agents`.
//! - `fleetlet_rollout_events_total{type}`: rollout events (`RolloutBatchStarted`,
//!   `RolloutPaused`, `RolloutCompleted`, …) counted where the controller or an operator's action
//!   caused them, on this replica.
//!
//! Counters are per replica and start at zero when the process starts, as Prometheus expects.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use axum::extract::MatchedPath;
use axum::http::{Method, StatusCode};

/// Upper bounds of the request latency buckets, in seconds: fine-grained where real requests
/// are, then up to the request deadline (`http::limits::REQUEST_TIMEOUT`, 315 s), so that no
/// answered request lands only in `+Inf`.
pub(crate) const REQUEST_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 315.0,
];

/// Upper bounds of the long-poll buckets, in seconds: a poll answered at once (a generation was
/// already newer), woken within the wait, or held to the end of a wait of up to 300 s.
pub(crate) const LONG_POLL_BUCKETS: &[f64] = &[
    0.1, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 180.0, 240.0, 300.0, 315.0,
];

#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    /// Cumulative counts per bound of `bounds`, plus `+Inf` via `count`.
    buckets: Vec<u64>,
    count: u64,
    sum: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: vec![0; bounds.len()],
            count: 0,
            sum: 0.0,
        }
    }

    fn observe(&mut self, seconds: f64) {
        for (bucket, bound) in self.buckets.iter_mut().zip(self.bounds) {
            if seconds <= *bound {
                *bucket += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }

    /// The `_bucket`, `_sum` and `_count` lines of one series.
    fn render(&self, out: &mut String, family: &str, labels: &str) {
        for (bound, count) in self.bounds.iter().zip(&self.buckets) {
            let _ = writeln!(out, "{family}_bucket{{{labels},le=\"{bound}\"}} {count}");
        }
        let count = self.count;
        let _ = writeln!(out, "{family}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{family}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{family}_count{{{labels}}} {count}");
    }
}

/// How the store took a status report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ReportOutcome {
    /// A new report, stored.
    Accepted,
    /// A replay of a `reportSeq` already seen: answered, not stored.
    Duplicate,
}

impl ReportOutcome {
    const ALL: [ReportOutcome; 2] = [ReportOutcome::Accepted, ReportOutcome::Duplicate];

    fn as_str(self) -> &'static str {
        match self {
            ReportOutcome::Accepted => "accepted",
            ReportOutcome::Duplicate => "duplicate",
        }
    }
}

#[derive(Debug, Default)]
struct Recorded {
    /// (method, route, status) → count
    requests: BTreeMap<(String, String, u16), u64>,
    /// (method, route) → latency, long-polls left out
    latency: BTreeMap<(String, String), Histogram>,
    /// status code → duration of manifest long-polls
    long_polls: BTreeMap<u16, Histogram>,
    /// outcome → count
    reports: BTreeMap<ReportOutcome, u64>,
}

/// The request metrics of this process; cheap to clone (one shared table).
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    recorded: Arc<Mutex<Recorded>>,
}

impl Metrics {
    fn record_request(
        &self,
        method: &Method,
        route: &str,
        long_poll: bool,
        status: StatusCode,
        seconds: f64,
    ) {
        let mut recorded = self.recorded.lock().unwrap_or_else(PoisonError::into_inner);
        *recorded
            .requests
            .entry((method.to_string(), route.to_owned(), status.as_u16()))
            .or_default() += 1;
        // A poll that waited ends with its answer or the end of the wait; anything else (a
        // refusal) was answered at once, like any request.
        if long_poll && matches!(status, StatusCode::OK | StatusCode::NOT_MODIFIED) {
            recorded
                .long_polls
                .entry(status.as_u16())
                .or_insert_with(|| Histogram::new(LONG_POLL_BUCKETS))
                .observe(seconds);
        } else {
            recorded
                .latency
                .entry((method.to_string(), route.to_owned()))
                .or_insert_with(|| Histogram::new(REQUEST_BUCKETS))
                .observe(seconds);
        }
    }

    /// Counts a status report as the store took it; called by the report handler.
    pub fn record_report(&self, outcome: ReportOutcome) {
        let mut recorded = self.recorded.lock().unwrap_or_else(PoisonError::into_inner);
        *recorded.reports.entry(outcome).or_default() += 1;
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
        out.push_str("# HELP fleetlet_http_request_duration_seconds Time to answer HTTP requests, by matched route; manifest long-polls are in fleetlet_http_long_poll_duration_seconds.\n");
        out.push_str("# TYPE fleetlet_http_request_duration_seconds histogram\n");
        for ((method, route), histogram) in &recorded.latency {
            let labels = format!("method=\"{}\",route=\"{}\"", escape(method), escape(route));
            histogram.render(out, "fleetlet_http_request_duration_seconds", &labels);
        }
        out.push_str("# HELP fleetlet_http_long_poll_duration_seconds Time manifest long-polls were held, by answer: 200 a newer generation, 304 the wait ran out.\n");
        out.push_str("# TYPE fleetlet_http_long_poll_duration_seconds histogram\n");
        for (status, histogram) in &recorded.long_polls {
            let labels = format!("status=\"{status}\"");
            histogram.render(out, "fleetlet_http_long_poll_duration_seconds", &labels);
        }
        out.push_str("# HELP fleetlet_status_reports_total Status reports taken by the store: accepted (new) or duplicate (a replay of an old reportSeq).\n");
        out.push_str("# TYPE fleetlet_status_reports_total counter\n");
        for outcome in ReportOutcome::ALL {
            let count = recorded.reports.get(&outcome).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "fleetlet_status_reports_total{{outcome=\"{}\"}} {count}",
                outcome.as_str()
            );
        }
    }
}

/// The content type of [`Metrics::render`]'s text.
pub const EXPOSITION_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Metrics {
    /// The whole exposition of one scrape: the request metrics of this process, then the gauges
    /// the caller read for it: the long-polls this replica holds open, and the agents per fleet
    /// state (`None` when the store could not be read, which `fleetlet_store_up` says).
    pub fn render(
        &self,
        long_polls_open: usize,
        agents: Option<BTreeMap<&'static str, u64>>,
    ) -> String {
        let mut out = String::new();
        self.render_requests(&mut out);
        out.push_str(
            "# HELP fleetlet_long_polls_open Manifest long-polls held open by this replica.\n",
        );
        out.push_str("# TYPE fleetlet_long_polls_open gauge\n");
        let _ = writeln!(out, "fleetlet_long_polls_open {long_polls_open}");
        out.push_str(
            "# HELP fleetlet_store_up Whether the store answered the scrape's fleet query.\n",
        );
        out.push_str("# TYPE fleetlet_store_up gauge\n");
        let _ = writeln!(out, "fleetlet_store_up {}", u8::from(agents.is_some()));
        if let Some(agents) = agents {
            out.push_str("# HELP fleetlet_agents Registered agents by fleet state.\n");
            out.push_str("# TYPE fleetlet_agents gauge\n");
            for (fleet_state, count) in agents {
                let _ = writeln!(out, "fleetlet_agents{{state=\"{fleet_state}\"}} {count}");
            }
        }
        out
    }
}

/// Rollout events caused on this replica, by type. Process-wide: the controller runs beside the
/// HTTP layer, not inside it.
static FLEET_EVENTS: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());

/// Counts a rollout event where it happens (the controller's step, an operator's action).
pub fn count_fleet_event(type_: fleetlet_manifests::api::EventType) {
    let mut events = FLEET_EVENTS.lock().unwrap_or_else(PoisonError::into_inner);
    *events.entry(type_.as_str()).or_default() += 1;
}

/// What a scrape read of the fleets: (fleet, rollout state, devices) and (fleet, phase).
pub type FleetGauges = (Vec<(String, String, u64)>, Vec<(String, String)>);

/// The fleet part of the exposition: the rollout event counters, and the gauges when the store
/// has fleets (`None` for the memory store).
pub fn render_fleets(gauges: Option<FleetGauges>) -> String {
    use fleetlet_manifests::fleet_api::{DeviceRolloutState, RolloutPhase};
    let mut out = String::new();
    out.push_str(
        "# HELP fleetlet_rollout_events_total Rollout events caused on this replica, by type.\n",
    );
    out.push_str("# TYPE fleetlet_rollout_events_total counter\n");
    {
        let events = FLEET_EVENTS.lock().unwrap_or_else(PoisonError::into_inner);
        for type_ in fleetlet_manifests::api::EventType::ALL {
            let name = type_.as_str();
            if name.starts_with("Rollout") {
                let count = events.get(name).copied().unwrap_or(0);
                let _ = writeln!(
                    out,
                    "fleetlet_rollout_events_total{{type=\"{name}\"}} {count}"
                );
            }
        }
    }
    let Some((devices, phases)) = gauges else {
        return out;
    };
    out.push_str(
        "# HELP fleetlet_fleet_devices Devices selected by each fleet, by rollout state.\n",
    );
    out.push_str("# TYPE fleetlet_fleet_devices gauge\n");
    let mut by_fleet: BTreeMap<&str, BTreeMap<&str, u64>> = BTreeMap::new();
    for (fleet, _) in &phases {
        by_fleet.entry(fleet).or_default();
    }
    for (fleet, state, count) in &devices {
        by_fleet.entry(fleet).or_default().insert(state, *count);
    }
    for (fleet, counts) in &by_fleet {
        for state in DeviceRolloutState::ALL {
            let count = counts.get(state.as_str()).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "fleetlet_fleet_devices{{fleet=\"{}\",state=\"{}\"}} {count}",
                escape(fleet),
                state.as_str()
            );
        }
    }
    out.push_str("# HELP fleetlet_fleet_rollout_phase The phase of each fleet's rollout (1 for the current one).\n");
    out.push_str("# TYPE fleetlet_fleet_rollout_phase gauge\n");
    for (fleet, phase) in &phases {
        for candidate in RolloutPhase::ALL {
            let _ = writeln!(
                out,
                "fleetlet_fleet_rollout_phase{{fleet=\"{}\",phase=\"{}\"}} {}",
                escape(fleet),
                candidate.as_str(),
                u8::from(candidate.as_str() == phase)
            );
        }
    }
    out
}

/// A label value with `\`, `"` and newlines escaped as the text format requires.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// Records an answered request under its matched route (`None`: unmatched); `long_poll` is
    /// what [`is_long_poll`] said of the request.
    pub fn observe(
        &self,
        method: &Method,
        route: Option<&MatchedPath>,
        long_poll: bool,
        started: Instant,
        status: StatusCode,
    ) {
        let route = route.map_or("unmatched", MatchedPath::as_str);
        self.record_request(
            method,
            route,
            long_poll,
            status,
            started.elapsed().as_secs_f64(),
        );
    }
}

#[cfg(test)]
mod tests;
