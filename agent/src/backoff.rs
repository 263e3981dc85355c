//! The retry policy: how long to wait before trying a failing resource (or the manager) again.
//!
//! Kept outside the reconcilers as a small pure function so that it can be unit-tested and tuned
//! in one place (the way kube-rs separates `error_policy` from `reconcile`).

use std::time::Duration;

/// While the manager is out of reach, how often the agent checks whether the link to it is back
/// (a bare TCP connect, no request; `client::ManagerClient::link_back`): every half to all of this
/// interval during the first [`LINK_PROBE_SLOWDOWN_AFTER`] of an outage, every one to two times it
/// after that.
pub const LINK_PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// After the link has been down this long, link checks go half as often: a long outage costs
/// fewer packets, and a short one is still noticed within half a second of its end.
pub const LINK_PROBE_SLOWDOWN_AFTER: Duration = Duration::from_secs(60);

/// The pause between the starts of two link checks, `down_for` into an outage: between half and
/// all of [`LINK_PROBE_INTERVAL`] (twice that after [`LINK_PROBE_SLOWDOWN_AFTER`]), placed by
/// `spread` (any number, e.g. a random one), so that a fleet that lost its manager at the same
/// moment does not come back in lockstep.
pub fn probe_pause(spread: u64, down_for: Duration) -> Duration {
    let interval = if down_for < LINK_PROBE_SLOWDOWN_AFTER {
        LINK_PROBE_INTERVAL
    } else {
        2 * LINK_PROBE_INTERVAL
    };
    let half = interval / 2;
    let millis = u64::try_from(half.as_millis()).unwrap_or(u64::MAX).max(1);
    half + Duration::from_millis(spread % (millis + 1))
}

/// Exponential backoff: `initial` after the first failure, doubling with every further failure,
/// never more than `max`. Success resets the failure count, and with it the delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The policy for resources (docs/reference.md §5): 1 s doubling to 5 min.
    pub const RESOURCE: Backoff = Backoff {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(300),
    };

    /// The policy for reaching the manager: 1 s doubling to 30 s, so that a fleet whose manager
    /// went down does not hammer it, yet notices within half a minute when it is back.
    pub const MANAGER: Backoff = Backoff {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(30),
    };

    /// The delay after `consecutive_failures` failures in a row (0 means no failure: no delay).
    pub fn delay(self, consecutive_failures: u32) -> Duration {
        if consecutive_failures == 0 {
            return Duration::ZERO;
        }
        // 2^31 seconds is far past any sane maximum, so capping the exponent keeps the
        // multiplication from overflowing without changing the result.
        let exponent = (consecutive_failures - 1).min(31);
        self.initial
            .checked_mul(1u32 << exponent)
            .map_or(self.max, |delay| delay.min(self.max))
    }
}

#[cfg(test)]
mod tests;
