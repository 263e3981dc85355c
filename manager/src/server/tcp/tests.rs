//! The retransmission settings as the kernel reads them back, on a real loopback connection.

use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use super::{RETRANSMIT_INTERVAL_MAX, UNACKED_LIMIT, rto_max, tune};

/// An accepted connection, as the server loop gets it (and its client end, kept open).
fn accepted() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let client = TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    (server, client)
}

#[test]
fn an_accepted_connection_gets_all_three_options() {
    let (server, _client) = accepted();
    let tuned = tune(&server);
    // CI's kernel is 6.18; TCP_RTO_MAX_MS needs 6.15. On an older kernel this test fails rather
    // than pass without checking the option the partition test depends on.
    assert!(
        tuned.interval_capped,
        "TCP_RTO_MAX_MS refused: this kernel is older than Linux 6.15"
    );
    assert!(tuned.thin_linear && tuned.unacked_limit, "{tuned:?}");
    assert_eq!(
        rto_max(&server).expect("getsockopt"),
        RETRANSMIT_INTERVAL_MAX
    );
    assert!(rustix::net::sockopt::tcp_thin_linear_timeouts(&server).expect("getsockopt"));
    assert_eq!(
        Duration::from_millis(
            rustix::net::sockopt::tcp_user_timeout(&server)
                .expect("getsockopt")
                .into()
        ),
        UNACKED_LIMIT
    );
}

#[test]
fn an_untuned_connection_keeps_the_kernels_defaults() {
    // The check above can fail: without `tune`, the options read back as the kernel's defaults.
    let (server, _client) = accepted();
    assert_eq!(
        rto_max(&server).expect("getsockopt"),
        Duration::from_secs(120)
    );
    assert!(!rustix::net::sockopt::tcp_thin_linear_timeouts(&server).expect("getsockopt"));
    assert_eq!(
        rustix::net::sockopt::tcp_user_timeout(&server).expect("getsockopt"),
        0
    );
}
