//! The loop: a pass on start, on every desired-state update, every resync and when a backoff or
//! a rollout deadline runs out; statuses published after passes, on connectivity changes and as a
//! heartbeat; the store retried on a timer while it cannot save; and a last status at shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

use super::{DesiredUpdate, Engine, EngineError};
use crate::reconcile::Reconcile;
use crate::shutdown::ShutdownSignal;
use crate::status::Connectivity;

/// While the store cannot save, what waits is retried this soon after the fault is seen, the
/// delay doubling up to [`STORE_RETRY_MAX`] (besides the flush at the end of every pass).
const STORE_RETRY_MIN: Duration = Duration::from_secs(1);
const STORE_RETRY_MAX: Duration = Duration::from_secs(30);

impl<R: Reconcile> Engine<R> {
    /// Runs passes until shutdown: on start, on every desired-state update, every resync
    /// interval, and when a failed resource's backoff runs out. Statuses are published after
    /// every pass, when connectivity changes, and as a heartbeat.
    pub async fn run(
        mut self,
        mut updates: mpsc::Receiver<DesiredUpdate>,
        mut connectivity: watch::Receiver<Connectivity>,
        report_ready: Arc<Notify>,
        shutdown: ShutdownSignal,
    ) -> Result<(), EngineError> {
        let mut next_pass = Instant::now();
        let mut next_heartbeat = Instant::now() + self.settings.report_interval;
        let mut updates_open = true;
        let mut connectivity_open = true;
        // While the store cannot save: when to try again, and the delay after that.
        let mut store_retry: Option<(Instant, Duration)> = None;
        loop {
            if shutdown.is_triggered() {
                break;
            }
            store_retry = match (self.store.fault(), store_retry) {
                (None, _) => None,
                (Some(_), None) => Some((Instant::now() + STORE_RETRY_MIN, STORE_RETRY_MIN)),
                (Some(_), Some(retry)) => Some(retry),
            };
            if Instant::now() >= next_pass {
                next_pass = Instant::now() + self.settings.resync_interval;
                let started = Instant::now();
                let passed = self.pass(&shutdown).await;
                // A store that cannot save no longer stops the pass (`ResilientStore`): it counts.
                let failed = passed.is_err() || self.store.fault().is_some();
                match passed {
                    Ok(outcome) => {
                        // The next pass comes no later than a retry or the rollout deadline, so a
                        // rollback happens at the deadline, not up to a resync after it.
                        for at in [outcome.next_retry, self.rollout_deadline()]
                            .into_iter()
                            .flatten()
                        {
                            let wait = (at - self.settings.clock.now())
                                .max(time::Duration::ZERO)
                                .unsigned_abs();
                            next_pass = next_pass.min(Instant::now() + wait);
                        }
                    }
                    Err(error) => {
                        tracing::error!(%error, "pass failed; retrying at the next resync")
                    }
                }
                self.publish(&connectivity.borrow().clone(), false, &report_ready);
                if let Some(file) = &mut self.metrics_file {
                    file.after_pass(started.elapsed(), failed, self.last_report.as_ref());
                }
                // The pass's temporary allocations are freed: give their pages back.
                crate::memory::release_free_memory();
            }
            tokio::select! {
                () = shutdown.triggered() => break,
                update = updates.recv(), if updates_open => match update {
                    Some(update) => {
                        if let Err(error) = self.accept(update) {
                            tracing::error!(%error, "could not record the new desired state");
                        }
                        next_pass = Instant::now();
                        self.publish(&connectivity.borrow().clone(), false, &report_ready);
                    }
                    None => updates_open = false,
                },
                changed = connectivity.changed(), if connectivity_open => {
                    if changed.is_ok() {
                        self.publish(&connectivity.borrow_and_update().clone(), false, &report_ready);
                    } else {
                        connectivity_open = false;
                    }
                }
                () = tokio::time::sleep_until(next_pass) => {}
                () = sleep_until_some(store_retry.map(|(at, _)| at)) => {
                    // Whatever waits is written now if the store can take it.
                    if let Err(error) = self.store.flush() {
                        tracing::error!(%error, "could not save to the local store");
                    }
                    store_retry = store_retry.map(|(_, delay)| {
                        let delay = (delay * 2).min(STORE_RETRY_MAX);
                        (Instant::now() + delay, delay)
                    });
                    self.publish(&connectivity.borrow().clone(), false, &report_ready);
                }
                () = tokio::time::sleep_until(next_heartbeat) => {
                    next_heartbeat = Instant::now() + self.settings.report_interval;
                    self.publish(&connectivity.borrow().clone(), true, &report_ready);
                }
            }
        }
        // Last word: the status as the agent leaves it, then everything to durable storage.
        self.publish(&connectivity.borrow().clone(), false, &report_ready);
        self.store.flush()?;
        Ok(())
    }

    fn publish(&mut self, connectivity: &Connectivity, heartbeat: bool, report_ready: &Notify) {
        match self.publish_status(connectivity, heartbeat) {
            Ok(Some(_)) => report_ready.notify_one(),
            Ok(None) => {}
            Err(error) => tracing::error!(%error, "could not publish the status"),
        }
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
