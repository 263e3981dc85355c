//! How the File reconciler schedules a pass's files: cut into batches of at most [`BATCH_SIZE`],
//! a few batches side by side, each batch one blocking task (`batch.rs`), and every file of a
//! batch timed on its own, as if it were applied alone. The engine sees none of this: it hands
//! the whole list over ([`FileReconciler::apply_all`]) and gets an outcome per file.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use fleetlet_manifests::ResourceId;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::FileReconciler;
use crate::reconcile::bounded::run_bounded;
use crate::reconcile::{ApplyLimits, Desired, Outcome, ReconcileError};
use crate::shutdown::ShutdownSignal;

/// The most File resources in one batch: enough that the hand-off to the blocking pool and the
/// walks from the root are paid once for many files.
pub const BATCH_SIZE: usize = 64;

impl FileReconciler {
    /// Applies every File resource of a pass in batches, each one blocking task that confirms
    /// converged files through directories it has already walked to and fsyncs each directory
    /// once for the files it wrote there ([`FileReconciler::apply_batch_blocking`]). Outcomes
    /// per file, as [`crate::reconcile::Reconcile::apply_all`] promises.
    pub async fn apply_all(
        &self,
        items: Vec<Arc<Desired>>,
        limits: ApplyLimits,
        shutdown: &ShutdownSignal,
    ) -> Vec<(Arc<Desired>, Outcome)> {
        let files = self.clone();
        run_batches(items, limits, shutdown, move |batch, results| {
            let files = files.clone();
            tokio::task::spawn_blocking(move || files.apply_batch_blocking(&batch, &results))
        })
        .await
    }
}

/// Applies `items` in batches: at most [`BATCH_SIZE`] resources, and no more than an even share
/// of the work, so that a few resources (a first apply, bound by fsync) still run side by side
/// as they would one by one; `limits.concurrency` batches at a time. `start` starts one batch,
/// handing each result to its [`BatchResults`] in the order given ([`run_batch`] times them).
pub(super) async fn run_batches<S>(
    items: Vec<Arc<Desired>>,
    limits: ApplyLimits,
    shutdown: &ShutdownSignal,
    start: S,
) -> Vec<(Arc<Desired>, Outcome)>
where
    S: Fn(Vec<Arc<Desired>>, BatchResults) -> JoinHandle<()> + Clone + Send + 'static,
{
    let concurrency = limits.concurrency.max(1);
    let size = items.len().div_ceil(concurrency).clamp(1, BATCH_SIZE);
    let mut items = items.into_iter();
    // Shared, not copied, with `run_bounded`, which keeps each batch for a crash report.
    let batches: Vec<Arc<Vec<Arc<Desired>>>> = std::iter::from_fn(|| {
        let next: Vec<_> = items.by_ref().take(size).collect();
        (!next.is_empty()).then(|| Arc::new(next))
    })
    .collect();
    let results = run_bounded(
        batches,
        concurrency,
        shutdown,
        |batch| {
            let ids: Vec<&str> = batch.iter().map(|d| d.id.as_str()).collect();
            format!("batch of {}", ids.join(", "))
        },
        |batch| run_batch(batch, limits.timeout, shutdown.clone(), start.clone()),
        |batch, message| {
            batch
                .iter()
                .map(|desired| {
                    let id = desired.id.clone();
                    let message = message.clone();
                    (
                        Arc::clone(desired),
                        Err(ReconcileError::Crashed { id, message }).into(),
                    )
                })
                .collect()
        },
    )
    .await;
    results.into_iter().flatten().collect()
}

/// Runs one batch and collects its results, giving every resource a timeout of its own, counted
/// from the result before it, as if it were applied alone. A resource that times out fails with
/// `TimedOut` and one whose apply panicked with `Crashed`; the batch is then given up and the
/// resources after it go on in a new one. After shutdown no new resource starts, and those not
/// started get no result (as for any kind).
async fn run_batch<S>(
    batch: Arc<Vec<Arc<Desired>>>,
    timeout: Duration,
    shutdown: ShutdownSignal,
    start: S,
) -> Vec<(Arc<Desired>, Outcome)>
where
    S: Fn(Vec<Arc<Desired>>, BatchResults) -> JoinHandle<()>,
{
    // Positions in `batch` of the resources without a result yet, in order.
    let mut waiting: VecDeque<usize> = (0..batch.len()).collect();
    let mut results = Vec::with_capacity(waiting.len());
    while !waiting.is_empty() && !shutdown.is_triggered() {
        let (sender, mut receiver) = mpsc::unbounded_channel();
        let sink = BatchResults::new(sender, shutdown.clone());
        let items: Vec<Arc<Desired>> = waiting.iter().map(|&at| Arc::clone(&batch[at])).collect();
        let task = start(items, sink);
        loop {
            match tokio::time::timeout(timeout, receiver.recv()).await {
                Ok(Some((id, outcome))) => {
                    if let Some(at) = waiting.iter().position(|&at| batch[at].id == id) {
                        results.push((Arc::clone(&batch[waiting[at]]), outcome));
                        waiting.remove(at);
                    }
                }
                Ok(None) => {
                    // The batch is over. Left without a result: resources not started because
                    // of shutdown, or the one it stopped at.
                    let stopped = match task.await {
                        Err(join) => Some(join.to_string()),
                        Ok(()) if !shutdown.is_triggered() => {
                            Some("the reconciler stopped before applying it".to_owned())
                        }
                        Ok(()) => None,
                    };
                    if let Some(message) = stopped
                        && let Some(at) = waiting.pop_front()
                    {
                        let desired = Arc::clone(&batch[at]);
                        tracing::error!(resource = %desired.id, %message, "reconciler task failed");
                        let id = desired.id.clone();
                        results
                            .push((desired, Err(ReconcileError::Crashed { id, message }).into()));
                    }
                    break;
                }
                Err(_elapsed) => {
                    // Dropping the receiver (at the end of this round) tells the batch to start
                    // nothing more; a blocking task cannot be stopped in the middle of a file.
                    task.abort();
                    if let Some(at) = waiting.pop_front() {
                        let desired = Arc::clone(&batch[at]);
                        let id = desired.id.clone();
                        results.push((
                            desired,
                            Err(ReconcileError::TimedOut { id, timeout }).into(),
                        ));
                    }
                    break;
                }
            }
        }
    }
    results
}

/// Where a batch puts its results, one per resource in the order given.
#[derive(Debug)]
pub struct BatchResults {
    sender: mpsc::UnboundedSender<(ResourceId, Outcome)>,
    shutdown: ShutdownSignal,
}

impl BatchResults {
    pub fn new(
        sender: mpsc::UnboundedSender<(ResourceId, Outcome)>,
        shutdown: ShutdownSignal,
    ) -> Self {
        Self { sender, shutdown }
    }

    /// Whether the next resource may be started: not once the agent shuts down (the applies
    /// already running finish, as for any kind) or nobody waits for results any more.
    pub fn may_start(&self) -> bool {
        !self.shutdown.is_triggered() && !self.sender.is_closed()
    }

    /// Hands over the result of resource `id`; false when nobody takes results any more.
    pub fn send(&self, id: ResourceId, outcome: Outcome) -> bool {
        self.sender.send((id, outcome)).is_ok()
    }
}

#[cfg(test)]
mod tests;
