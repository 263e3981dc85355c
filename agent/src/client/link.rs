//! Whether the link to the manager came back: fresh TCP connects to the manager's address while
//! calls fail, and what each task saw of them since the manager last answered it.
//!
//! A check is a bare TCP connect (no request), started every quarter to half second while the link
//! is down ([`probe_pause`]), several in flight at a time, each given [`PROBE_PATIENCE`]: less than
//! the kernel's first SYN retransmission (1 s), so each check sends one SYN, and a link that
//! comes back is found by the next check's fresh SYN within half a second, not by a retransmission
//! of an old one that may be up to a second or two away.
//!
//! What a task saw is kept across its calls ([`LinkSeen`]) until the manager answers it: a call
//! that fails just after the link came back (its connect gave up a moment after the heal) is still
//! retried at once, because the failed checks during the call said the link was down.

use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use super::ManagerClient;
use crate::backoff::probe_pause;

/// How long one link check (a bare TCP connect) may take: under the kernel's first SYN
/// retransmission (1 s), so that a check sends one SYN and no more.
pub const PROBE_PATIENCE: Duration = Duration::from_millis(900);

/// What one task saw of the link to the manager since the manager last answered it.
#[derive(Debug, Default)]
pub struct LinkSeen {
    /// When a check first failed, since the last answer (or the link last came back).
    down_since: Mutex<Option<Instant>>,
}

impl LinkSeen {
    pub fn new() -> Self {
        Self::default()
    }

    /// The manager answered (whatever it said): the link works; forget the failed checks.
    pub fn answered(&self) {
        self.forget();
    }

    fn forget(&self) {
        *self.lock() = None;
    }

    /// How long ago a check first failed, if one did since the last answer.
    pub fn down_for(&self) -> Option<Duration> {
        self.lock().map(|since| since.elapsed())
    }

    /// A check failed; returns `true` when it is the first since the last answer.
    fn check_failed(&self) -> bool {
        let mut down_since = self.lock();
        let first = down_since.is_none();
        down_since.get_or_insert_with(Instant::now);
        first
    }

    fn lock(&self) -> MutexGuard<'_, Option<Instant>> {
        self.down_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl ManagerClient {
    /// Completes when a TCP connect to the manager's address succeeds after one failed, in this
    /// call or an earlier one of the same task (`seen`, kept until the manager answers): the link
    /// went down and came back, so a call still in flight on it is better abandoned and a backoff
    /// cut short. `seen` is then cleared, so the next failure waits out its backoff again. When a
    /// connect succeeds and none failed, the link is not what fails (a proxy in front of a
    /// stopped manager, a hung manager): the checks stop and this never completes. Never
    /// completes either when the URL names no address to try.
    pub async fn link_back(&self, seen: &LinkSeen) {
        let Some((host, port)) = self.authority() else {
            return std::future::pending().await;
        };
        let spread = std::hash::RandomState::new();
        let mut checks = JoinSet::new();
        let mut next = Instant::now();
        let mut started = 0u64;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(next) => {
                    started += 1;
                    let host = host.clone();
                    checks.spawn(async move {
                        let connect = tokio::net::TcpStream::connect((host.as_str(), port));
                        matches!(tokio::time::timeout(PROBE_PATIENCE, connect).await, Ok(Ok(_)))
                    });
                    let down_for = seen.down_for().unwrap_or_default();
                    next = Instant::now() + probe_pause(spread.hash_one(started), down_for);
                }
                Some(joined) = checks.join_next() => {
                    if matches!(joined, Ok(true)) {
                        if let Some(down_for) = seen.down_for() {
                            seen.forget();
                            tracing::info!(%host, port, ?down_for, "the manager's address accepts connections again; retrying now");
                            return;
                        }
                        checks.abort_all();
                        return std::future::pending().await;
                    }
                    if seen.check_failed() {
                        tracing::debug!(%host, port, "a connect to the manager's address failed; checking until one succeeds");
                    }
                }
            }
        }
    }
}
