//! Tests of graceful shutdown: every listener sees the trigger.

use super::*;

#[tokio::test]
async fn every_listener_sees_the_trigger() {
    let shutdown = Shutdown::new();
    let early = shutdown.signal();
    assert!(!early.is_triggered());
    shutdown.trigger();
    let late = shutdown.signal();
    early.triggered().await;
    late.triggered().await;
    assert!(late.is_triggered());
}
