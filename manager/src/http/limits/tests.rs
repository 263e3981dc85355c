//! Tests of the request limits: long-poll slots per caller, metric buckets, and what counts as a long poll.

use super::*;

#[test]
fn a_caller_gets_at_most_the_limit_and_slots_come_back_on_drop() {
    let polls = LongPolls::default();
    let agent = AgentId::try_from("pi-1").expect("valid id");
    let caller = Caller::Agent(agent.clone());
    let slots: Vec<_> = (0..MAX_LONG_POLLS_PER_CALLER)
        .map(|_| polls.acquire(&caller, &agent).expect("within the limit"))
        .collect();
    let refused = polls
        .acquire(&caller, &agent)
        .expect_err("one over the limit");
    assert_eq!(refused.kind, ErrorKind::TooManyRequests);
    // Another caller is not affected.
    assert!(polls.acquire(&Caller::Reader, &agent).is_ok());
    drop(slots);
    assert_eq!(polls.open(), 0);
    assert!(polls.acquire(&caller, &agent).is_ok());
}

#[test]
fn the_metrics_buckets_reach_the_request_deadline() {
    let deadline = REQUEST_TIMEOUT.as_secs_f64();
    for bounds in [
        crate::metrics::REQUEST_BUCKETS,
        crate::metrics::LONG_POLL_BUCKETS,
    ] {
        assert_eq!(bounds.last().copied(), Some(deadline));
    }
}

#[test]
fn only_a_manifest_get_that_waits_is_a_long_poll() {
    // The templates as the router registers them (a renamed route fails here).
    let manifest = "/api/v1/agents/{agent_id}/manifest";
    let status = "/api/v1/agents/{agent_id}/status";
    let poll = Some("afterGeneration=3&waitSeconds=120");
    assert!(is_long_poll(&Method::GET, Some(manifest), poll));
    assert!(!is_long_poll(&Method::PUT, Some(manifest), poll));
    assert!(!is_long_poll(&Method::GET, Some(status), poll));
    assert!(!is_long_poll(&Method::GET, None, poll));
    for query in [
        None,
        Some("afterGeneration=3"),
        Some("afterGeneration=3&waitSeconds=0"),
        Some("waitSeconds=x"),
    ] {
        assert!(
            !is_long_poll(&Method::GET, Some(manifest), query),
            "{query:?}"
        );
    }
}
