//! Tests of the client's retry wait: after an unreachable manager it ends as soon as the
//! manager's address accepts connections again; a manager that answered gets the whole backoff.

use std::time::Instant;

use super::*;
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

#[tokio::test]
async fn the_wait_ends_soon_after_the_link_comes_back() {
    // A port nobody listens on refuses connects, as a host whose manager is down does.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    drop(listener);
    let client = client_for(address);
    let shutdown = Shutdown::new();
    let started = Instant::now();
    let waiting = tokio::spawn({
        let signal = shutdown.signal();
        async move {
            client
                .wait_out(Duration::from_secs(60), &unreachable(), &signal)
                .await
        }
    });
    tokio::time::sleep(3 * LINK_PROBE_INTERVAL).await;
    assert!(
        !waiting.is_finished(),
        "the wait ended while the link was down"
    );
    let _listener = tokio::net::TcpListener::bind(address)
        .await
        .expect("rebind");
    let stopped = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the wait did not end once the link was back")
        .expect("join");
    assert!(!stopped);
    assert!(started.elapsed() < Duration::from_secs(30));
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
    assert!(!client.wait_out(delay, &refused, &shutdown.signal()).await);
    assert!(started.elapsed() >= delay);
}

#[tokio::test]
async fn a_call_in_flight_is_only_abandoned_after_the_link_went_down() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let client = client_for(listener.local_addr().expect("address"));
    // The address accepts at once: nothing says the link went down, so nothing is abandoned.
    let waited = tokio::time::timeout(3 * LINK_PROBE_INTERVAL, client.link_up(true)).await;
    assert!(
        waited.is_err(),
        "link_up(true) completed on a link that never went down"
    );
    // Without the condition, the accepting address is the link being up.
    tokio::time::timeout(3 * LINK_PROBE_INTERVAL, client.link_up(false))
        .await
        .expect("link_up(false) on an accepting address");
}

#[tokio::test]
async fn shutdown_ends_the_wait() {
    let client = client_for("127.0.0.1:9".parse().expect("address"));
    let shutdown = Shutdown::new();
    let signal = shutdown.signal();
    shutdown.trigger();
    assert!(
        client
            .wait_out(Duration::from_secs(60), &unreachable(), &signal)
            .await
    );
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
    assert!(
        !client
            .wait_out(delay, &unreachable(), &shutdown.signal())
            .await
    );
    assert!(started.elapsed() >= delay);
}
