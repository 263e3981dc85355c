//! Tests of call coalescing: batching in order, batch size, failures per call and per batch.

use std::sync::Mutex;
use std::time::Duration;

use super::*;

/// A batch function that records the batches it saw and doubles each number; 13 breaks the
/// batch it is in, 7 fails alone.
fn doubling(seen: Arc<Mutex<Vec<Vec<u32>>>>) -> impl BatchFn<u32, u32> {
    move |calls: Vec<u32>| {
        let seen = Arc::clone(&seen);
        async move {
            seen.lock().expect("lock").push(calls.clone());
            tokio::time::sleep(Duration::from_millis(20)).await;
            if calls.contains(&13) {
                return Err(StoreError::Internal("thirteen".into()));
            }
            Ok(calls
                .into_iter()
                .map(|n| {
                    if n == 7 {
                        Err(StoreError::Internal("seven".into()))
                    } else {
                        Ok(n * 2)
                    }
                })
                .collect())
        }
    }
}

#[tokio::test]
async fn calls_made_while_a_batch_is_in_flight_go_out_together_in_order() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let coalescer = Coalescer::spawn(100, 1, doubling(Arc::clone(&seen)));
    let calls: Vec<_> = (1..=5u32)
        .map(|n| {
            let coalescer = coalescer.clone();
            tokio::spawn(async move { coalescer.call(n).await })
        })
        .collect();
    let mut results = Vec::new();
    for call in calls {
        results.push(call.await.expect("task").expect("result"));
    }
    assert_eq!(results, vec![2, 4, 6, 8, 10]);
    let seen = seen.lock().expect("lock").clone();
    assert!(seen.len() < 5, "five calls made together ran as {seen:?}");
    assert_eq!(seen.concat().len(), 5);
}

#[tokio::test]
async fn a_batch_never_exceeds_its_size() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let coalescer = Coalescer::spawn(3, 1, doubling(Arc::clone(&seen)));
    let calls: Vec<_> = (20..30u32)
        .map(|n| {
            let coalescer = coalescer.clone();
            tokio::spawn(async move { coalescer.call(n).await })
        })
        .collect();
    for call in calls {
        call.await.expect("task").expect("result");
    }
    let seen = seen.lock().expect("lock").clone();
    assert!(seen.iter().all(|batch| batch.len() <= 3), "{seen:?}");
    assert_eq!(seen.concat().len(), 10);
}

#[tokio::test]
async fn a_call_that_breaks_its_batch_fails_alone_and_per_call_errors_stay_per_call() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let coalescer = Coalescer::spawn(100, 1, doubling(Arc::clone(&seen)));
    // Hold the only slot so that the next three calls queue up and form one batch.
    let first = tokio::spawn({
        let coalescer = coalescer.clone();
        async move { coalescer.call(1).await }
    });
    tokio::time::sleep(Duration::from_millis(5)).await;
    let calls: Vec<_> = [4u32, 13, 7]
        .into_iter()
        .map(|n| {
            let coalescer = coalescer.clone();
            tokio::spawn(async move { coalescer.call(n).await })
        })
        .collect();
    assert_eq!(first.await.expect("task").expect("result"), 2);
    let results: Vec<_> = {
        let mut results = Vec::new();
        for call in calls {
            results.push(call.await.expect("task"));
        }
        results
    };
    assert_eq!(results[0].as_ref().expect("result"), &8);
    assert!(matches!(&results[1], Err(StoreError::Internal(m)) if m == "thirteen"));
    assert!(matches!(&results[2], Err(StoreError::Internal(m)) if m == "seven"));
    let seen = seen.lock().expect("lock").clone();
    assert!(seen.contains(&vec![4, 13, 7]), "{seen:?}");
    assert!(
        seen.contains(&vec![13]) && seen.contains(&vec![4]),
        "{seen:?}"
    );
}

#[tokio::test]
async fn an_unreachable_database_fails_the_whole_batch_at_once() {
    let runs = Arc::new(Mutex::new(0));
    let coalescer = Coalescer::spawn(100, 1, {
        let runs = Arc::clone(&runs);
        move |calls: Vec<u32>| {
            let runs = Arc::clone(&runs);
            async move {
                *runs.lock().expect("lock") += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = calls;
                Err::<Vec<Result<u32, StoreError>>, _>(StoreError::Unavailable(
                    sqlx::Error::PoolTimedOut,
                ))
            }
        }
    });
    let calls: Vec<_> = (0..6u32)
        .map(|n| {
            let coalescer = coalescer.clone();
            tokio::spawn(async move { coalescer.call(n).await })
        })
        .collect();
    for call in calls {
        let result = call.await.expect("task");
        assert!(
            matches!(
                result,
                Err(StoreError::Unavailable(sqlx::Error::PoolTimedOut))
            ),
            "{result:?}"
        );
    }
    assert!(
        *runs.lock().expect("lock") < 6,
        "each call was retried alone"
    );
}
