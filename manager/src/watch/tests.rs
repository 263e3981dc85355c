//! Tests of long-poll wakes: only that agent's waiters wake, unheld entries go, close is seen.

use std::pin::pin;
use std::time::Duration;

use super::*;

/// Whether `notified` completes within a short while.
async fn woken(notified: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>) -> bool {
    tokio::time::timeout(Duration::from_millis(50), notified)
        .await
        .is_ok()
}

#[tokio::test]
async fn a_wake_reaches_the_registered_waiters_of_that_agent_only() {
    let watch = ManifestWatch::default();
    let kitchen = watch.subscribe("kitchen");
    let garage = watch.subscribe("garage");
    let mut kitchen_woken = pin!(kitchen.notified());
    let mut garage_woken = pin!(garage.notified());
    kitchen_woken.as_mut().enable();
    garage_woken.as_mut().enable();
    watch.wake("kitchen");
    assert!(woken(kitchen_woken.as_mut()).await);
    assert!(!woken(garage_woken.as_mut()).await);
    watch.wake_all();
    assert!(woken(garage_woken.as_mut()).await);
}

#[tokio::test]
async fn entries_nobody_holds_are_dropped_and_close_is_seen_by_later_waiters() {
    let watch = ManifestWatch::default();
    drop(watch.subscribe("kitchen"));
    watch.wake("kitchen");
    assert!(watch.agents().is_empty());

    let garage = watch.subscribe("garage");
    let mut garage_woken = pin!(garage.notified());
    garage_woken.as_mut().enable();
    assert!(!watch.is_closing());
    watch.close();
    assert!(woken(garage_woken.as_mut()).await);
    assert!(watch.is_closing());
}
