//! Bounded concurrency: the applies and deletes of one kind, at most `concurrency` at a time,
//! each under the apply timeout, with a crashed task turned into a failure of its resource.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use fleetlet_manifests::{Kind, ResourceId};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::Engine;
use crate::reconcile::{BatchResults, Deleted, Desired, Outcome, Reconcile, ReconcileError};
use crate::shutdown::ShutdownSignal;
use crate::store::OwnershipRecord;

impl<R: Reconcile> Engine<R> {
    pub(super) async fn run_applies(
        &self,
        kind: Kind,
        batch: Vec<Desired>,
        shutdown: &ShutdownSignal,
    ) -> Vec<(Arc<Desired>, Outcome)> {
        let timeout = self.settings.apply_timeout;
        // Shared, not copied, with `run_bounded`, which keeps each item for a crash report, and
        // handed back with its outcome.
        let batch: Vec<Arc<Desired>> = batch.into_iter().map(Arc::new).collect();
        let most = self.reconcilers.batch_size(kind);
        if most > 1 {
            return self.run_apply_batches(batch, most, shutdown).await;
        }
        run_bounded(
            batch,
            self.settings.concurrency,
            shutdown,
            |desired| desired.id.to_string(),
            |desired| {
                let reconcilers = Arc::clone(&self.reconcilers);
                async move {
                    let outcome = tokio::time::timeout(timeout, reconcilers.apply(&desired))
                        .await
                        .unwrap_or_else(|_| {
                            Err(ReconcileError::TimedOut {
                                id: desired.id.clone(),
                                timeout,
                            })
                            .into()
                        });
                    (desired, outcome)
                }
            },
            |desired, message| {
                let id = desired.id.clone();
                (desired, Err(ReconcileError::Crashed { id, message }).into())
            },
        )
        .await
    }

    /// Applies in batches of at most `most` resources, `concurrency` batches at a time. A batch
    /// is no larger than an even share of the work, so that a few resources (a first apply,
    /// bound by fsync) still run side by side as they would one by one.
    async fn run_apply_batches(
        &self,
        batch: Vec<Arc<Desired>>,
        most: usize,
        shutdown: &ShutdownSignal,
    ) -> Vec<(Arc<Desired>, Outcome)> {
        let concurrency = self.settings.concurrency.max(1);
        let size = batch.len().div_ceil(concurrency).clamp(1, most);
        let mut items = batch.into_iter();
        // Shared, not copied, with `run_bounded`, which keeps each batch for a crash report.
        let batches: Vec<Arc<Vec<_>>> = std::iter::from_fn(|| {
            let next: Vec<_> = items.by_ref().take(size).collect();
            (!next.is_empty()).then(|| Arc::new(next))
        })
        .collect();
        let timeout = self.settings.apply_timeout;
        let results = run_bounded(
            batches,
            concurrency,
            shutdown,
            |batch| {
                let ids: Vec<&str> = batch.iter().map(|d| d.id.as_str()).collect();
                format!("batch of {}", ids.join(", "))
            },
            |batch| {
                let reconcilers = Arc::clone(&self.reconcilers);
                let shutdown = shutdown.clone();
                apply_batch_timed(reconcilers, batch, timeout, shutdown)
            },
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

    pub(super) async fn run_deletes(
        &self,
        batch: Vec<(ResourceId, OwnershipRecord)>,
        shutdown: &ShutdownSignal,
    ) -> Vec<(ResourceId, OwnershipRecord, Result<Deleted, ReconcileError>)> {
        let timeout = self.settings.apply_timeout;
        run_bounded(
            batch,
            self.settings.concurrency,
            shutdown,
            |(id, _)| id.to_string(),
            |(id, record)| {
                let reconcilers = Arc::clone(&self.reconcilers);
                async move {
                    let result = tokio::time::timeout(timeout, reconcilers.delete(&id, &record))
                        .await
                        .unwrap_or_else(|_| {
                            Err(ReconcileError::TimedOut {
                                id: id.clone(),
                                timeout,
                            })
                        });
                    (id, record, result)
                }
            },
            |(id, record), message| {
                let crashed = ReconcileError::Crashed {
                    id: id.clone(),
                    message,
                };
                (id, record, Err(crashed))
            },
        )
        .await
    }
}

/// Runs one [`Reconcile::apply_batch`] and collects its results, giving every resource a timeout
/// of its own, counted from the result before it, as if it were applied alone. A resource that
/// times out fails with `TimedOut` and one whose apply panicked with `Crashed`; the batch is then
/// given up and the resources after it go on in a new one. After shutdown no new resource
/// starts, and those not started get no result (as outside a batch).
async fn apply_batch_timed<R: Reconcile>(
    reconcilers: Arc<R>,
    batch: Arc<Vec<Arc<Desired>>>,
    timeout: Duration,
    shutdown: ShutdownSignal,
) -> Vec<(Arc<Desired>, Outcome)> {
    // Positions in `batch` of the resources without a result yet, in order.
    let mut waiting: VecDeque<usize> = (0..batch.len()).collect();
    let mut results = Vec::with_capacity(waiting.len());
    while !waiting.is_empty() && !shutdown.is_triggered() {
        let (sender, mut receiver) = mpsc::unbounded_channel();
        let sink = BatchResults::new(sender, shutdown.clone());
        let items: Vec<Desired> = waiting.iter().map(|&at| (*batch[at]).clone()).collect();
        let reconcilers = Arc::clone(&reconcilers);
        let task = tokio::spawn(async move { reconcilers.apply_batch(items, sink).await });
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
                    // Dropping the receiver tells the batch to start nothing more.
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

/// Runs `work` on every item with at most `limit` running at once, in the order given, and
/// returns the results in completion order. After shutdown no new item starts; running ones
/// finish. A panicking task becomes `crashed(item, message)`.
async fn run_bounded<T, O, K, W, F, C>(
    items: Vec<T>,
    limit: usize,
    shutdown: &ShutdownSignal,
    key: K,
    work: W,
    crashed: C,
) -> Vec<O>
where
    T: Clone + Send + 'static,
    O: Send + 'static,
    K: Fn(&T) -> String,
    W: Fn(T) -> F,
    F: std::future::Future<Output = O> + Send + 'static,
    C: Fn(T, String) -> O,
{
    let limit = limit.max(1);
    let mut pending = items.into_iter();
    let mut running: JoinSet<O> = JoinSet::new();
    let mut started: HashMap<tokio::task::Id, T> = HashMap::new();
    let mut results = Vec::new();
    loop {
        while running.len() < limit && !shutdown.is_triggered() {
            let Some(item) = pending.next() else { break };
            let handle = running.spawn(work(item.clone()));
            started.insert(handle.id(), item);
        }
        match running.join_next_with_id().await {
            Some(Ok((task, output))) => {
                started.remove(&task);
                results.push(output);
            }
            Some(Err(join_error)) => {
                if let Some(item) = started.remove(&join_error.id()) {
                    tracing::error!(resource = %key(&item), error = %join_error, "reconciler task failed");
                    results.push(crashed(item, join_error.to_string()));
                }
            }
            None => break,
        }
    }
    results
}
