//! Tests of the metrics exposition: cumulative buckets, escaping, route templates, long polls, reports.

use super::*;

const STATUS_ROUTE: &str = "/api/v1/agents/{agent_id}/status";
const MANIFEST_ROUTE: &str = "/api/v1/agents/{agent_id}/manifest";

#[test]
fn histogram_buckets_are_cumulative() {
    let mut histogram = Histogram::new(REQUEST_BUCKETS);
    histogram.observe(0.003);
    histogram.observe(0.2);
    assert_eq!(histogram.buckets[0], 0); // ≤ 1 ms
    assert_eq!(histogram.buckets[1], 1); // ≤ 5 ms
    assert_eq!(histogram.buckets[6], 2); // ≤ 250 ms
    assert_eq!(histogram.count, 2);
}

/// That the last bound is the request deadline is checked beside the deadline, in
/// `http::limits` (this module knows nothing of HTTP).
#[test]
fn the_buckets_rise_to_the_request_deadline() {
    for bounds in [REQUEST_BUCKETS, LONG_POLL_BUCKETS] {
        assert!(bounds.windows(2).all(|pair| pair[0] < pair[1]));
    }
    // The default long-poll (300 s) lands in a bucket of its own, not only in +Inf.
    let mut histogram = Histogram::new(LONG_POLL_BUCKETS);
    histogram.observe(300.2);
    assert_eq!(histogram.buckets[LONG_POLL_BUCKETS.len() - 2], 0); // ≤ 300 s
    assert_eq!(histogram.buckets[LONG_POLL_BUCKETS.len() - 1], 1); // ≤ 315 s
}

#[test]
fn label_values_are_escaped() {
    assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
}

#[test]
fn requests_render_with_route_templates() {
    let metrics = Metrics::default();
    metrics.record_request(&Method::GET, STATUS_ROUTE, false, StatusCode::OK, 0.01);
    let mut out = String::new();
    metrics.render_requests(&mut out);
    assert!(out.contains(
        "fleetlet_http_requests_total{method=\"GET\",route=\"/api/v1/agents/{agent_id}/status\",status=\"200\"} 1"
    ));
    assert!(out.contains(
        "fleetlet_http_request_duration_seconds_bucket{method=\"GET\",route=\"/api/v1/agents/{agent_id}/status\",le=\"315\"} 1"
    ));
}

#[test]
fn long_polls_that_waited_have_their_own_histogram() {
    let metrics = Metrics::default();
    metrics.record_request(
        &Method::GET,
        MANIFEST_ROUTE,
        true,
        StatusCode::NOT_MODIFIED,
        300.1,
    );
    metrics.record_request(&Method::GET, MANIFEST_ROUTE, true, StatusCode::OK, 2.0);
    // A refused poll is answered at once: an ordinary request.
    metrics.record_request(
        &Method::GET,
        MANIFEST_ROUTE,
        true,
        StatusCode::TOO_MANY_REQUESTS,
        0.002,
    );
    let mut out = String::new();
    metrics.render_requests(&mut out);
    assert!(
        out.contains(
            "fleetlet_http_long_poll_duration_seconds_bucket{status=\"304\",le=\"300\"} 0"
        )
    );
    assert!(
        out.contains(
            "fleetlet_http_long_poll_duration_seconds_bucket{status=\"304\",le=\"315\"} 1"
        )
    );
    assert!(out.contains("fleetlet_http_long_poll_duration_seconds_count{status=\"200\"} 1"));
    assert!(out.contains(
        "fleetlet_http_request_duration_seconds_count{method=\"GET\",route=\"/api/v1/agents/{agent_id}/manifest\"} 1"
    ));
    assert!(out.contains(
        "fleetlet_http_requests_total{method=\"GET\",route=\"/api/v1/agents/{agent_id}/manifest\",status=\"304\"} 1"
    ));
}

#[test]
fn reports_are_counted_by_outcome_with_both_series_present() {
    let metrics = Metrics::default();
    let mut out = String::new();
    metrics.render_requests(&mut out);
    assert!(out.contains("fleetlet_status_reports_total{outcome=\"accepted\"} 0"));
    assert!(out.contains("fleetlet_status_reports_total{outcome=\"duplicate\"} 0"));
    metrics.record_report(ReportOutcome::Accepted);
    metrics.record_report(ReportOutcome::Accepted);
    metrics.record_report(ReportOutcome::Duplicate);
    let mut out = String::new();
    metrics.render_requests(&mut out);
    assert!(out.contains("fleetlet_status_reports_total{outcome=\"accepted\"} 2"));
    assert!(out.contains("fleetlet_status_reports_total{outcome=\"duplicate\"} 1"));
}
