//! Tests of the client's retry wait: after an unreachable manager it ends as soon as the
//! manager's address accepts connections again, also when the call failed just after the link
//! came back; a manager that answered, or an address that accepted all along, gets the whole
//! backoff.

use std::time::Instant;

use super::*;
use crate::backoff::LINK_PROBE_INTERVAL;
use crate::shutdown::Shutdown;

fn client_for(address: std::net::SocketAddr) -> ManagerClient {
    ManagerClient::new(
        &format!("http://{address}"),
        AgentId::try_from("probe-test").expect("agent id"),
        Token::new("t".repeat(40)),
    )
    .expect("client")
}

fn unreachable() -> ClientError {
    ClientError::Unreachable {
        url: "http://manager".into(),
        message: "connection refused".into(),
    }
}

/// An address nobody listens on: it refuses connects, as a host whose manager is down does.
fn refusing_address() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address")
}

/// How soon after the link is back a wait must end: the next check starts within one
/// [`LINK_PROBE_INTERVAL`], and a local connect is quick (twice that, for a loaded machine).
const NOTICED_WITHIN: Duration = Duration::from_millis(1_500);

#[tokio::test]
async fn the_wait_ends_soon_after_the_link_comes_back() {
    let address = refusing_address();
    let client = client_for(address);
    let shutdown = Shutdown::new();
    let seen = Arc::new(LinkSeen::new());
    let waiting = tokio::spawn({
        let signal = shutdown.signal();
        let seen = Arc::clone(&seen);
        async move {
            client
                .wait_out(Duration::from_secs(60), &unreachable(), &seen, &signal)
                .await
        }
    });
    tokio::time::sleep(3 * LINK_PROBE_INTERVAL).await;
    assert!(
        !waiting.is_finished(),
        "the wait ended while the link was down"
    );
    assert!(seen.down_for().is_some(), "no failed check was noted");
    let _listener = tokio::net::TcpListener::bind(address)
        .await
        .expect("rebind");
    let back = Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the wait did not end once the link was back")
        .expect("join");
    assert_eq!(end, WaitEnd::LinkBack);
    assert!(
        back.elapsed() < NOTICED_WITHIN,
        "the link back was noticed after {:?}",
        back.elapsed()
    );
    assert!(seen.down_for().is_none(), "the link back was not noted");
}

#[tokio::test]
async fn a_call_that_failed_after_the_link_came_back_is_retried_at_once() {
    // The race of issue 22's slow round: checks failed while a call was in flight, the link came
    // back, and the call's own connect gave up before a check noticed. The wait after that
    // failure must not take the first successful connect for "the link was up all along".
    let address = refusing_address();
    let client = client_for(address);
    let seen = LinkSeen::new();
    let during_the_call =
        tokio::time::timeout(2 * LINK_PROBE_INTERVAL, client.link_back(&seen)).await;
    assert!(
        during_the_call.is_err(),
        "link_back completed on a dead link"
    );
    assert!(seen.down_for().is_some());
    let _listener = tokio::net::TcpListener::bind(address)
        .await
        .expect("rebind");
    let shutdown = Shutdown::new();
    let started = Instant::now();
    let end = client
        .wait_out(
            Duration::from_secs(60),
            &unreachable(),
            &seen,
            &shutdown.signal(),
        )
        .await;
    assert_eq!(end, WaitEnd::LinkBack);
    assert!(
        started.elapsed() < NOTICED_WITHIN,
        "{:?}",
        started.elapsed()
    );
    // Once used, the knowledge is gone: a call that fails again with the link up waits out its
    // backoff, so a manager that fails fast is not retried in a tight loop.
    let delay = 2 * LINK_PROBE_INTERVAL;
    let started = Instant::now();
    let end = client
        .wait_out(delay, &unreachable(), &seen, &shutdown.signal())
        .await;
    assert_eq!(end, WaitEnd::BackoffOver);
    assert!(started.elapsed() >= delay);
}

#[tokio::test]
async fn an_answer_from_the_manager_forgets_the_failed_checks() {
    let address = refusing_address();
    let client = client_for(address);
    let seen = LinkSeen::new();
    let _ = tokio::time::timeout(2 * LINK_PROBE_INTERVAL, client.link_back(&seen)).await;
    assert!(seen.down_for().is_some());
    seen.answered();
    assert!(seen.down_for().is_none());
    let _listener = tokio::net::TcpListener::bind(address)
        .await
        .expect("rebind");
    let waited = tokio::time::timeout(3 * LINK_PROBE_INTERVAL, client.link_back(&seen)).await;
    assert!(waited.is_err(), "link_back completed on a link seen up");
}

#[tokio::test]
async fn a_manager_that_answered_with_an_error_gets_the_whole_backoff() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let client = client_for(listener.local_addr().expect("address"));
    let shutdown = Shutdown::new();
    let refused = ClientError::Status {
        url: "http://manager".into(),
        status: 503,
        message: "database unavailable".into(),
    };
    let delay = 3 * LINK_PROBE_INTERVAL;
    let started = Instant::now();
    let end = client
        .wait_out(delay, &refused, &LinkSeen::new(), &shutdown.signal())
        .await;
    assert_eq!(end, WaitEnd::BackoffOver);
    assert!(started.elapsed() >= delay);
}

#[tokio::test]
async fn a_call_in_flight_is_only_abandoned_after_the_link_went_down() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let client = client_for(listener.local_addr().expect("address"));
    // The address accepts at once: nothing says the link went down, so nothing is abandoned.
    let seen = LinkSeen::new();
    let waited = tokio::time::timeout(3 * LINK_PROBE_INTERVAL, client.link_back(&seen)).await;
    assert!(
        waited.is_err(),
        "link_back completed on a link that never went down"
    );
    assert!(seen.down_for().is_none());
}

#[tokio::test]
async fn shutdown_ends_the_wait() {
    let client = client_for("127.0.0.1:9".parse().expect("address"));
    let shutdown = Shutdown::new();
    let signal = shutdown.signal();
    shutdown.trigger();
    let end = client
        .wait_out(
            Duration::from_secs(60),
            &unreachable(),
            &LinkSeen::new(),
            &signal,
        )
        .await;
    assert_eq!(end, WaitEnd::Shutdown);
}

#[tokio::test]
async fn an_address_that_accepts_all_along_gets_the_whole_backoff() {
    // A TCP proxy in front of a stopped manager accepts and closes: the link is fine, so the
    // agent must not retry in a tight loop.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let client = client_for(listener.local_addr().expect("address"));
    let shutdown = Shutdown::new();
    let delay = 3 * LINK_PROBE_INTERVAL;
    let started = Instant::now();
    let end = client
        .wait_out(delay, &unreachable(), &LinkSeen::new(), &shutdown.signal())
        .await;
    assert_eq!(end, WaitEnd::BackoffOver);
    assert!(started.elapsed() >= delay);
}
