//! Coalesces concurrent store calls of one kind into one round trip per batch.
//!
//! Under load, many requests put the same kind of question to the database at the same moment:
//! which agent holds this token, what is this agent's generation, store this report. Answered one
//! by one, each costs the manager and PostgreSQL a protocol exchange, a task wake-up and, for a
//! write, a commit. A [`Coalescer`] queues the calls; a dispatcher takes whatever has queued when
//! a batch slot is free and runs it as one batch. A lone call on an idle manager goes out at
//! once, with no added delay; on a busy one, calls that arrive while batches are in flight ride
//! together in the next. No answer is cached: every call is answered by a read or write that
//! started after the call was made.
//!
//! Results are per call. A batch that fails as a whole is retried call by call, so one bad call
//! cannot fail its neighbours, except when the database is out of reach: then every call of the
//! batch gets the same answer at once instead of a second wait.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

use super::StoreError;

type Reply<V> = oneshot::Sender<Result<V, StoreError>>;

/// Handle to a batch dispatcher; cheap to clone. The dispatcher stops when the last handle is
/// dropped.
pub struct Coalescer<K, V> {
    queue: mpsc::UnboundedSender<(K, Reply<V>)>,
}

impl<K, V> Clone for Coalescer<K, V> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<K, V> std::fmt::Debug for Coalescer<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalescer").finish_non_exhaustive()
    }
}

/// Runs one batch: one result per call, in the order of the calls, or an error for the batch
/// as a whole.
pub trait BatchFn<K, V>: Send + Sync + 'static {
    fn run(
        &self,
        calls: Vec<K>,
    ) -> impl Future<Output = Result<Vec<Result<V, StoreError>>, StoreError>> + Send;
}

impl<K, V, F, Fut> BatchFn<K, V> for F
where
    F: Fn(Vec<K>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<Result<V, StoreError>>, StoreError>> + Send,
{
    fn run(
        &self,
        calls: Vec<K>,
    ) -> impl Future<Output = Result<Vec<Result<V, StoreError>>, StoreError>> + Send {
        self(calls)
    }
}

impl<K, V> Coalescer<K, V>
where
    K: Clone + Send + 'static,
    V: Send + 'static,
{
    /// Starts the dispatcher on the current tokio runtime: at most `max_batch` calls per batch
    /// and `in_flight` batches at a time.
    pub fn spawn(max_batch: usize, in_flight: usize, batch: impl BatchFn<K, V>) -> Self {
        let (queue, calls) = mpsc::unbounded_channel();
        tokio::spawn(dispatch(
            calls,
            Arc::new(batch),
            max_batch.max(1),
            Arc::new(Semaphore::new(in_flight.max(1))),
        ));
        Self { queue }
    }

    /// Queues one call and waits for its result.
    pub async fn call(&self, key: K) -> Result<V, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((key, reply))
            .map_err(|_| StoreError::Internal("the store's batch dispatcher has stopped".into()))?;
        answer.await.unwrap_or_else(|_| {
            // The batch's task ended without answering: it panicked.
            Err(StoreError::Internal("a store batch failed".into()))
        })
    }
}

async fn dispatch<K, V, B>(
    mut queue: mpsc::UnboundedReceiver<(K, Reply<V>)>,
    batch: Arc<B>,
    max_batch: usize,
    slots: Arc<Semaphore>,
) where
    K: Clone + Send + 'static,
    V: Send + 'static,
    B: BatchFn<K, V>,
{
    loop {
        // Take a slot first, then the calls: whatever queued while every slot was busy goes
        // out together.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let Some(first) = queue.recv().await else {
            return;
        };
        let mut calls = vec![first];
        while calls.len() < max_batch {
            match queue.try_recv() {
                Ok(call) => calls.push(call),
                Err(_) => break,
            }
        }
        let batch = Arc::clone(&batch);
        tokio::spawn(async move {
            run_batch(&*batch, calls).await;
            drop(slot);
        });
    }
}

async fn run_batch<K, V, B>(batch: &B, calls: Vec<(K, Reply<V>)>)
where
    K: Clone + Send + 'static,
    V: Send + 'static,
    B: BatchFn<K, V>,
{
    let (keys, replies): (Vec<K>, Vec<Reply<V>>) = calls.into_iter().unzip();
    let count = keys.len();
    match batch.run(keys.clone()).await {
        Ok(results) if results.len() == count => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
        }
        Ok(results) => {
            let message = format!(
                "a store batch of {count} calls gave {} results",
                results.len()
            );
            for reply in replies {
                let _ = reply.send(Err(StoreError::Internal(message.clone())));
            }
        }
        Err(error) if count == 1 => {
            let _ = replies
                .into_iter()
                .next()
                .map(|reply| reply.send(Err(error)));
        }
        Err(StoreError::Unavailable(cause)) if same_cause(&cause).is_some() => {
            for reply in replies {
                let cause = same_cause(&cause).unwrap_or(sqlx::Error::PoolTimedOut);
                let _ = reply.send(Err(StoreError::Unavailable(cause)));
            }
        }
        Err(_) => {
            // Find the call that broke the batch by running each alone, side by side.
            let alone = keys
                .into_iter()
                .zip(replies)
                .map(|(key, reply)| async move {
                    let result = match batch.run(vec![key]).await {
                        Ok(mut results) if results.len() == 1 => results.remove(0),
                        Ok(_) => Err(StoreError::Internal("a store call gave no result".into())),
                        Err(error) => Err(error),
                    };
                    let _ = reply.send(result);
                });
            join_all(alone).await;
        }
    }
}

/// The same "database out of reach" error again, for every call of a failed batch; `None` for
/// errors that carry more than a kind (those calls are retried one by one instead).
fn same_cause(error: &sqlx::Error) -> Option<sqlx::Error> {
    match error {
        sqlx::Error::PoolTimedOut => Some(sqlx::Error::PoolTimedOut),
        sqlx::Error::PoolClosed => Some(sqlx::Error::PoolClosed),
        sqlx::Error::WorkerCrashed => Some(sqlx::Error::WorkerCrashed),
        sqlx::Error::Io(io) => Some(sqlx::Error::Io(std::io::Error::new(
            io.kind(),
            io.to_string(),
        ))),
        _ => None,
    }
}

/// Runs the futures concurrently on this task and waits for all of them.
async fn join_all<F: Future<Output = ()>>(futures: impl Iterator<Item = F>) {
    let mut pending: Vec<_> = futures.map(Box::pin).collect();
    std::future::poll_fn(|context| {
        pending.retain_mut(|future| future.as_mut().poll(context).is_pending());
        if pending.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}

#[cfg(test)]
mod tests;
