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
fn link_probes_pause_between_half_and_all_of_the_interval() {
    for spread in [0, 1, 499, 500, 501, 12_345, u64::MAX] {
        let pause = probe_pause(spread);
        assert!(pause >= LINK_PROBE_INTERVAL / 2, "{spread}: {pause:?}");
        assert!(pause <= LINK_PROBE_INTERVAL, "{spread}: {pause:?}");
    }
    assert_ne!(probe_pause(0), probe_pause(250));
}
