//! Unit tests of the File reconciler's scheduling: batch sizes, batches side by side, a timeout
//! and a failure of its own for every file of a batch, shutdown; against a fake batch, and once
//! end to end against a temporary root.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use fleetlet_manifests::{ErrorReason, Resource};
use serde_json::json;

use super::*;
use crate::reconcile::{Applied, Change, FileError, KnownSpec};
use crate::shutdown::Shutdown;
use crate::store::{Owned, OwnedFile};

fn desired(id: &str, path: &str) -> Arc<Desired> {
    let resource: Resource = serde_json::from_value(json!({"id": id, "kind": "File",
        "spec": {"path": path, "content": {"text": id}, "mode": "0644"}}))
    .expect("valid resource");
    Arc::new(Desired {
        id: resource.id.clone(),
        spec: KnownSpec::of(&resource.spec).expect("a known kind"),
        spec_hash: resource.spec_hash(),
        previous: None,
    })
}

fn items(ids: &[&str]) -> Vec<Arc<Desired>> {
    ids.iter()
        .map(|id| desired(id, &format!("/srv/{id}")))
        .collect()
}

fn numbered(count: usize) -> Vec<Arc<Desired>> {
    (0..count)
        .map(|i| desired(&format!("f{i}"), &format!("/srv/f{i}")))
        .collect()
}

fn limits(concurrency: usize, timeout: Duration) -> ApplyLimits {
    ApplyLimits {
        concurrency,
        timeout,
    }
}

/// A batch that records what it is given, takes `work_time` per file, and hangs, panics or fails
/// on the ids it is told to.
#[derive(Debug, Default)]
struct FakeBatch {
    /// The ids of every batch started, in order.
    started: Mutex<Vec<Vec<String>>>,
    /// Every file a batch began, in order.
    begun: Mutex<Vec<String>>,
    running: AtomicUsize,
    most_running: AtomicUsize,
    work_time: Duration,
    hanging: HashSet<String>,
    panicking: HashSet<String>,
    failing: HashSet<String>,
    /// Finishing this id triggers shutdown.
    stops_the_agent: Option<(String, Arc<Shutdown>)>,
}

impl FakeBatch {
    async fn run(&self, batch: Vec<Arc<Desired>>, results: BatchResults) {
        let ids = batch.iter().map(|d| d.id.to_string()).collect();
        self.started.lock().expect("lock").push(ids);
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_running.fetch_max(now, Ordering::SeqCst);
        for desired in batch {
            if !results.may_start() {
                break;
            }
            let id = desired.id.to_string();
            self.begun.lock().expect("lock").push(id.clone());
            if self.hanging.contains(&id) {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(self.work_time).await;
            assert!(!self.panicking.contains(&id), "the fake panics on {id}");
            let result = if self.failing.contains(&id) {
                Err(FileError::OutsideRoots {
                    path: format!("/outside/{id}"),
                    roots: "/srv".into(),
                }
                .into())
            } else {
                Ok(Applied {
                    change: Change::Created,
                    owned: Owned::File(OwnedFile {
                        path: format!("/srv/{id}"),
                        created: true,
                        sha256: String::new(),
                    }),
                    details: None,
                })
            };
            if let Some((stopper, shutdown)) = &self.stops_the_agent
                && *stopper == id
            {
                shutdown.trigger();
            }
            if !results.send(desired.id.clone(), result.into()) {
                break;
            }
        }
        self.running.fetch_sub(1, Ordering::SeqCst);
    }

    fn started(&self) -> Vec<Vec<String>> {
        self.started.lock().expect("lock").clone()
    }

    fn begun(&self) -> Vec<String> {
        self.begun.lock().expect("lock").clone()
    }
}

async fn run(
    fake: &Arc<FakeBatch>,
    items: Vec<Arc<Desired>>,
    limits: ApplyLimits,
    shutdown: &ShutdownSignal,
) -> Vec<(Arc<Desired>, Outcome)> {
    let fake = Arc::clone(fake);
    run_batches(items, limits, shutdown, move |batch, results| {
        let fake = Arc::clone(&fake);
        tokio::spawn(async move { fake.run(batch, results).await })
    })
    .await
}

/// Each result's resource id and error reason (`None`: applied).
fn reasons(done: &[(Arc<Desired>, Outcome)]) -> Vec<(String, Option<ErrorReason>)> {
    done.iter()
        .map(|(desired, outcome)| {
            let reason = outcome.result.as_ref().err().map(ReconcileError::reason);
            (desired.id.to_string(), reason)
        })
        .collect()
}

#[tokio::test]
async fn batches_take_an_even_share_of_the_concurrency_and_keep_the_order() {
    let fake = Arc::new(FakeBatch {
        work_time: Duration::from_millis(20),
        ..FakeBatch::default()
    });
    let done = run(
        &fake,
        numbered(12),
        limits(3, Duration::from_secs(5)),
        &Shutdown::new().signal(),
    )
    .await;
    // 12 resources, 3 at a time: batches of 4, all three running side by side.
    let started = fake.started();
    assert_eq!(started.len(), 3, "{started:?}");
    for (n, batch) in started.iter().enumerate() {
        let expected: Vec<String> = (n * 4..n * 4 + 4).map(|i| format!("f{i}")).collect();
        assert_eq!(*batch, expected);
    }
    assert_eq!(fake.most_running.load(Ordering::SeqCst), 3);
    assert_eq!(done.len(), 12);
    assert!(reasons(&done).iter().all(|(_, reason)| reason.is_none()));
}

#[tokio::test]
async fn no_batch_holds_more_than_batch_size_files() {
    let fake = Arc::new(FakeBatch::default());
    let count = 3 * BATCH_SIZE + 8;
    let done = run(
        &fake,
        numbered(count),
        limits(1, Duration::from_secs(5)),
        &Shutdown::new().signal(),
    )
    .await;
    let sizes: Vec<usize> = fake.started().iter().map(Vec::len).collect();
    assert_eq!(sizes, [BATCH_SIZE, BATCH_SIZE, BATCH_SIZE, 8]);
    assert_eq!(done.len(), count);
    // One batch at a time, files in the order given.
    let order: Vec<String> = done.iter().map(|(d, _)| d.id.to_string()).collect();
    let expected: Vec<String> = (0..count).map(|i| format!("f{i}")).collect();
    assert_eq!(order, expected);
}

#[tokio::test]
async fn a_timeout_counts_from_the_result_before_not_from_the_start_of_the_batch() {
    let fake = Arc::new(FakeBatch {
        work_time: Duration::from_millis(60),
        ..FakeBatch::default()
    });
    // Four files of 60 ms each in one batch take 240 ms, more than the 150 ms timeout, but no
    // file takes longer than it alone.
    let done = run(
        &fake,
        numbered(4),
        limits(1, Duration::from_millis(150)),
        &Shutdown::new().signal(),
    )
    .await;
    assert_eq!(fake.started().len(), 1);
    assert_eq!(
        reasons(&done),
        (0..4).map(|i| (format!("f{i}"), None)).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn within_a_batch_each_file_has_its_own_timeout_and_failure() {
    let fake = Arc::new(FakeBatch {
        hanging: HashSet::from(["stuck".to_owned()]),
        panicking: HashSet::from(["buggy".to_owned()]),
        failing: HashSet::from(["broken".to_owned()]),
        ..FakeBatch::default()
    });
    let ids = ["first", "broken", "stuck", "after-stuck", "buggy", "last"];
    let done = run(
        &fake,
        items(&ids),
        limits(1, Duration::from_millis(100)),
        &Shutdown::new().signal(),
    )
    .await;
    let by_id: std::collections::HashMap<String, Option<ErrorReason>> =
        reasons(&done).into_iter().collect();
    assert_eq!(by_id.len(), ids.len(), "one outcome per file: {done:?}");
    for id in ["first", "after-stuck", "last"] {
        assert_eq!(by_id[id], None, "{id}");
    }
    assert_eq!(by_id["broken"], Some(ErrorReason::PathNotAllowed));
    let message = |id: &str| {
        done.iter()
            .find(|(d, _)| d.id.as_str() == id)
            .and_then(|(_, outcome)| outcome.result.as_ref().err())
            .map(ToString::to_string)
            .unwrap_or_default()
    };
    assert!(
        message("stuck").contains("took longer than"),
        "{}",
        message("stuck")
    );
    assert!(
        message("buggy").contains("stopped unexpectedly"),
        "{}",
        message("buggy")
    );
    // The files after the hung one, then after the panicking one, went on in a new batch; every
    // file was begun once.
    assert_eq!(
        fake.started(),
        [
            ids.to_vec(),
            vec!["after-stuck", "buggy", "last"],
            vec!["last"]
        ]
        .map(|batch| batch.into_iter().map(String::from).collect::<Vec<_>>())
    );
    assert_eq!(fake.begun(), ids.map(String::from));
}

#[tokio::test]
async fn after_shutdown_a_batch_finishes_the_file_under_way_and_starts_no_other() {
    let shutdown = Arc::new(Shutdown::new());
    let fake = Arc::new(FakeBatch {
        stops_the_agent: Some(("second".to_owned(), Arc::clone(&shutdown))),
        ..FakeBatch::default()
    });
    let done = run(
        &fake,
        items(&["first", "second", "third", "fourth"]),
        limits(1, Duration::from_secs(5)),
        &shutdown.signal(),
    )
    .await;
    assert_eq!(fake.begun(), ["first", "second"]);
    assert_eq!(
        reasons(&done),
        [("first".to_owned(), None), ("second".to_owned(), None)]
    );
}

#[tokio::test]
async fn apply_all_writes_every_file_then_confirms_them_unchanged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).expect("root");
    let files = FileReconciler::new(vec![root.clone()]);
    let count = BATCH_SIZE + 36;
    let path_of = |i: usize| root.join(format!("d{}/f{i}", i % 7));
    let items: Vec<Arc<Desired>> = (0..count)
        .map(|i| desired(&format!("f{i}"), &path_of(i).display().to_string()))
        .collect();
    let signal = Shutdown::new().signal();
    let first = files
        .apply_all(items, limits(2, Duration::from_secs(30)), &signal)
        .await;
    assert_eq!(first.len(), count);
    let mut again = Vec::with_capacity(count);
    for (desired, outcome) in first {
        let applied = outcome.result.expect("applied");
        assert_eq!(applied.change, Change::Created, "{}", desired.id);
        let Owned::File(owned) = &applied.owned else {
            panic!("a File apply owns a file");
        };
        assert_eq!(
            std::fs::read_to_string(&owned.path).expect("written"),
            desired.id.as_str()
        );
        let record = crate::store::OwnershipRecord {
            kind: fleetlet_manifests::Kind::File,
            spec_hash: desired.spec_hash.clone(),
            generation: 1,
            owned: applied.owned,
        };
        again.push(Arc::new(Desired {
            previous: Some(record),
            ..(*desired).clone()
        }));
    }
    let second = files
        .apply_all(again, limits(2, Duration::from_secs(30)), &signal)
        .await;
    assert_eq!(second.len(), count);
    for (desired, outcome) in second {
        assert_eq!(
            outcome.result.expect("applied").change,
            Change::Unchanged,
            "{}",
            desired.id
        );
    }
}
