//! Bounded concurrency: work on a list of resources with at most a given number running at once,
//! a panicking task turned into a failure of its own item, and the default way a kind's applies
//! run ([`apply_each`]: one resource per task, each under the apply timeout).

use std::collections::HashMap;
use std::sync::Arc;

use tokio::task::JoinSet;

use super::{ApplyLimits, Desired, Outcome, Reconcile, ReconcileError};
use crate::shutdown::ShutdownSignal;

/// [`Reconcile::apply_all`] as most kinds want it: every resource its own [`Reconcile::apply`],
/// at most `limits.concurrency` at a time, in the order given, each under `limits.timeout`
/// (`TimedOut` after it). A panicking apply is its resource's failure alone (`Crashed`). After
/// shutdown no apply starts; those running finish. Outcomes come in the order they finished.
pub async fn apply_each<R: Reconcile + ?Sized>(
    reconciler: Arc<R>,
    items: Vec<Arc<Desired>>,
    limits: ApplyLimits,
    shutdown: ShutdownSignal,
) -> Vec<(Arc<Desired>, Outcome)> {
    let timeout = limits.timeout;
    run_bounded(
        items,
        limits.concurrency,
        &shutdown,
        |desired| desired.id.to_string(),
        |desired| {
            let reconciler = Arc::clone(&reconciler);
            async move {
                let outcome = tokio::time::timeout(timeout, reconciler.apply(&desired))
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

/// Runs `work` on every item with at most `limit` running at once, in the order given, and
/// returns the results in completion order. After shutdown no new item starts; running ones
/// finish. A panicking task becomes `crashed(item, message)`; `key` names the item in the log.
pub async fn run_bounded<T, O, K, W, F, C>(
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
