//! Tests of the retry policy: doubling from one second to five minutes, without overflow.

use super::*;

#[test]
fn resource_backoff_starts_at_one_second_and_doubles_to_five_minutes() {
    let schedule: Vec<u64> = (0..=12)
        .map(|failures| Backoff::RESOURCE.delay(failures).as_secs())
        .collect();
    assert_eq!(
        schedule,
        [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]
    );
}

#[test]
fn backoff_never_overflows_after_many_failures() {
    assert_eq!(Backoff::RESOURCE.delay(u32::MAX), Duration::from_secs(300));
    assert_eq!(Backoff::MANAGER.delay(1000), Duration::from_secs(30));
}

#[test]
fn link_checks_pause_a_quarter_to_half_a_second_then_twice_that_after_a_minute() {
    let early = Duration::from_secs(5);
    let late = LINK_PROBE_SLOWDOWN_AFTER;
    for spread in [0, 1, 249, 250, 251, 499, 500, 501, 12_345, u64::MAX] {
        let pause = probe_pause(spread, early);
        assert!(pause >= Duration::from_millis(250), "{spread}: {pause:?}");
        assert!(pause <= Duration::from_millis(500), "{spread}: {pause:?}");
        let pause = probe_pause(spread, late);
        assert!(pause >= Duration::from_millis(500), "{spread}: {pause:?}");
        assert!(pause <= Duration::from_secs(1), "{spread}: {pause:?}");
    }
    assert_ne!(probe_pause(0, early), probe_pause(125, early));
}
