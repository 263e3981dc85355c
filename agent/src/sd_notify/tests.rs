//! Tests of the notify protocol: READY reaches the notify socket.

use super::*;

#[test]
fn ready_reaches_the_notify_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notify");
    let listener = UnixDatagram::bind(&path).expect("bind");
    let notifier = SystemdNotifier {
        socket: Some(path),
        watchdog: None,
    };
    notifier.notify("READY=1");
    let mut buffer = [0u8; 64];
    let read = listener.recv(&mut buffer).expect("receive");
    assert_eq!(&buffer[..read], b"READY=1");
}
