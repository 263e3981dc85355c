//! Unit tests of the SessionStorage reconciler, on temporary directories.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::time::Instant;

use serde_json::json;

use super::*;
use crate::reconcile::Previous;

const AGENT: &str = "pi-1";

struct Fixture {
    dir: tempfile::TempDir,
    reconciler: SessionStorageReconciler,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let reconciler = SessionStorageReconciler::new(Some(dir.path().join("sessions")), AGENT);
        Self { dir, reconciler }
    }

    fn root(&self) -> PathBuf {
        self.dir
            .path()
            .join("sessions")
            .canonicalize()
            .unwrap_or_else(|_| self.dir.path().join("sessions"))
    }

    fn data(&self, dir: &str) -> PathBuf {
        self.root().join(dir).join(DATA_DIR)
    }
}

fn resource(id: &str, spec: serde_json::Value) -> Resource {
    serde_json::from_value(json!({"id": id, "kind": "SessionStorage", "spec": spec}))
        .expect("valid resource")
}

fn spec_of(resource: &Resource) -> &SessionStorageSpec {
    match &resource.spec {
        ResourceSpec::SessionStorage(spec) => spec,
        other => panic!("not a session storage spec: {other:?}"),
    }
}

fn owned(applied: &Applied) -> OwnedSession {
    match &applied.owned {
        Owned::SessionStorage(owned) => owned.clone(),
        other => panic!("not a session record: {other:?}"),
    }
}

fn details(applied: &Applied) -> SessionStorageDetails {
    match &applied.details {
        Some(ResourceDetails::SessionStorage(details)) => details.clone(),
        other => panic!("no session details: {other:?}"),
    }
}

fn error_details(error: &SessionStorageError) -> SessionStorageDetails {
    match error.details() {
        Some(ResourceDetails::SessionStorage(details)) => details,
        other => panic!("no session details: {other:?}"),
    }
}

async fn apply(
    fixture: &Fixture,
    resource: &Resource,
    previous: Option<&OwnedSession>,
) -> Result<Applied, SessionStorageError> {
    // The engine's record of the previous apply; session storage reads only what it owns.
    let spec_hash = resource.spec_hash();
    fixture
        .reconciler
        .apply(Target {
            id: &resource.id,
            spec: spec_of(resource),
            spec_hash: &spec_hash,
            previous: previous.map(|owned| Previous {
                spec_hash: &spec_hash,
                owned,
            }),
        })
        .await
}

/// Applies until `done` accepts the outcome: summaries are refreshed in the background, so a
/// change on disk shows up within a few applies, not necessarily the first.
async fn apply_until(
    fixture: &Fixture,
    resource: &Resource,
    previous: Option<&OwnedSession>,
    done: impl Fn(&Result<Applied, SessionStorageError>) -> bool,
) -> Result<Applied, SessionStorageError> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let outcome = apply(fixture, resource, previous).await;
        if done(&outcome) || Instant::now() > deadline {
            return outcome;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// One record of the documented hash input.
enum Record<'a> {
    File(&'a str, &'a [u8]),
    Link(&'a str, &'a str),
}

/// The documented record format, computed here independently of `summarize`.
fn expected_hash(records: &[Record<'_>]) -> String {
    let mut input = Vec::new();
    for record in records {
        let line = match record {
            Record::File(path, content) => {
                format!("F\0{path}\0{}\0{}\n", content.len(), sha256_hex(content))
            }
            Record::Link(path, target) => format!("L\0{path}\0{target}\n"),
        };
        input.extend_from_slice(line.as_bytes());
    }
    sha256_hex(&input)
}

fn far_future() -> String {
    "2099-01-01T00:00:00Z".into()
}

#[test]
fn the_summary_of_a_known_tree_is_exact_and_follows_no_link() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("sub/deeper")).expect("mkdir");
    std::fs::create_dir_all(data.join("empty")).expect("mkdir");
    std::fs::write(data.join("b.txt"), b"bee\n").expect("write");
    std::fs::write(data.join("a.txt"), b"hello").expect("write");
    std::fs::write(data.join("sub/deeper/z"), vec![7u8; 100_000]).expect("write");
    std::fs::write(data.join("sub.txt"), b"").expect("write");
    // A link out of the session: counted with its target, never followed.
    std::fs::write(dir.path().join("secret"), b"outside").expect("write");
    symlink(dir.path().join("secret"), data.join("sub/link")).expect("symlink");

    let summary = summarize(&data).expect("summary");
    let link_target = dir.path().join("secret").display().to_string();
    let big = vec![7u8; 100_000];
    // Depth first, each directory's names sorted: "sub" (a directory) comes before "sub.txt".
    let expected = expected_hash(&[
        Record::File("a.txt", b"hello"),
        Record::File("b.txt", b"bee\n"),
        Record::File("sub/deeper/z", &big),
        Record::Link("sub/link", &link_target),
        Record::File("sub.txt", b""),
    ]);
    assert_eq!(
        summary,
        Summary {
            size_bytes: 5 + 4 + 100_000,
            files_count: 5,
            sha256: expected,
        }
    );
}

#[test]
fn the_summary_changes_when_a_file_content_changes_even_at_the_same_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("f"), b"aaaa").expect("write");
    let before = summarize(dir.path()).expect("summary");
    std::fs::write(dir.path().join("f"), b"aaab").expect("write");
    let after = summarize(dir.path()).expect("summary");
    assert_eq!(before.size_bytes, after.size_bytes);
    assert_eq!(before.files_count, after.files_count);
    assert_ne!(before.sha256, after.sha256);
    assert_eq!(Summary::empty().sha256, sha256_hex(b""));
}

#[tokio::test]
async fn apply_creates_a_private_directory_with_a_marker_and_reports_its_summary() {
    let fixture = Fixture::new();
    let resource = resource(
        "scratch",
        json!({"sessionId": "sess-1", "sizeLimitBytes": 1000, "expiresAt": far_future()}),
    );
    let applied = apply(&fixture, &resource, None).await.expect("apply");
    assert_eq!(applied.change, Change::Created);
    let session_dir = fixture.root().join("scratch@sess-1");
    assert_eq!(owned(&applied).dir, "scratch@sess-1");
    for path in [&session_dir, &session_dir.join(DATA_DIR)] {
        let mode = std::fs::metadata(path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", path.display());
    }
    let marker: serde_json::Value =
        serde_json::from_slice(&std::fs::read(session_dir.join(MARKER_NAME)).expect("marker"))
            .expect("json");
    assert_eq!(marker["agentId"], AGENT);
    assert_eq!(marker["resourceId"], "scratch");
    assert_eq!(marker["sessionId"], "sess-1");
    let found = details(&applied);
    assert_eq!(found.path, session_dir.join(DATA_DIR).display().to_string());
    assert_eq!((found.size_bytes, found.files_count), (0, 0));
    assert_eq!(found.used_fraction, 0.0);
    assert_eq!(found.evicted_at, None);
    assert_eq!(
        fixture.reconciler.volumes().get(&resource.id),
        VolumeState::Ready {
            path: session_dir.join(DATA_DIR)
        }
    );

    std::fs::write(fixture.data("scratch@sess-1").join("note"), b"0123456789").expect("write");
    let record = owned(&applied);
    let again = apply_until(&fixture, &resource, Some(&record), |outcome| {
        outcome
            .as_ref()
            .is_ok_and(|applied| details(applied).files_count == 1)
    })
    .await
    .expect("apply");
    assert_eq!(again.change, Change::Unchanged);
    let found = details(&again);
    assert_eq!(found.size_bytes, 10);
    assert_eq!(found.used_fraction, 0.01);
    assert_eq!(
        found.sha256,
        expected_hash(&[Record::File("note", b"0123456789")])
    );
}

#[tokio::test]
async fn usage_over_the_limit_fails_with_quota_exceeded_and_recovers_when_it_drops() {
    let fixture = Fixture::new();
    let resource = resource("scratch", json!({"sessionId": "s", "sizeLimitBytes": 100}));
    let record = owned(&apply(&fixture, &resource, None).await.expect("apply"));
    let data = fixture.data("scratch@s");
    std::fs::write(data.join("big"), vec![1u8; 101]).expect("write");
    let outcome = apply_until(&fixture, &resource, Some(&record), Result::is_err).await;
    let error = outcome.expect_err("over quota");
    assert_eq!(error.reason(), ErrorReason::QuotaExceeded);
    assert_eq!(
        SessionStorageReconciler::error_policy(&error),
        Retry::After(QUOTA_RECHECK)
    );
    let seen = error_details(&error);
    assert_eq!(seen.size_bytes, 101);
    assert!(seen.used_fraction > 1.0);
    // Over quota the data stays mountable: the workload may be what frees the space.
    assert!(matches!(
        fixture.reconciler.volumes().get(&resource.id),
        VolumeState::Ready { .. }
    ));

    // Exactly at the limit is within it.
    std::fs::write(data.join("big"), vec![1u8; 100]).expect("write");
    let applied = apply_until(&fixture, &resource, Some(&record), Result::is_ok)
        .await
        .expect("back within quota");
    assert_eq!(details(&applied).size_bytes, 100);
}

#[tokio::test]
async fn expiry_deletes_the_data_and_stays_evicted_until_a_new_session_or_a_later_expiry() {
    let fixture = Fixture::new();
    let live = resource(
        "scratch",
        json!({"sessionId": "s1", "sizeLimitBytes": 1000, "expiresAt": far_future()}),
    );
    let record = owned(&apply(&fixture, &live, None).await.expect("apply"));
    let data = fixture.data("scratch@s1");
    std::fs::write(data.join("keep"), b"precious").expect("write");

    let expired = resource(
        "scratch",
        json!({"sessionId": "s1", "sizeLimitBytes": 1000, "expiresAt": "2020-01-01T00:00:00Z"}),
    );
    let error = apply(&fixture, &expired, Some(&record))
        .await
        .expect_err("evicted");
    assert_eq!(error.reason(), ErrorReason::SessionStorageEvicted);
    let seen = error_details(&error);
    let evicted_at = seen.evicted_at.expect("evictedAt");
    assert_eq!((seen.size_bytes, seen.files_count), (0, 0));
    assert!(!data.exists(), "the data is deleted");
    assert_eq!(
        fixture.reconciler.volumes().get(&expired.id),
        VolumeState::Evicted
    );

    // Not silently recreated, however often it is applied; the eviction time is kept.
    for _ in 0..2 {
        let error = apply(&fixture, &expired, Some(&record))
            .await
            .expect_err("still evicted");
        assert_eq!(error.reason(), ErrorReason::SessionStorageEvicted);
        assert_eq!(error_details(&error).evicted_at, Some(evicted_at));
        assert!(!data.exists());
    }
    // A fresh reconciler (an agent restart) reads the eviction from the marker.
    let restarted = SessionStorageReconciler::new(fixture.reconciler.root.clone(), AGENT);
    let error = restarted
        .apply(Target {
            id: &expired.id,
            spec: spec_of(&expired),
            spec_hash: &expired.spec_hash(),
            previous: None,
        })
        .await
        .expect_err("still evicted after a restart");
    assert_eq!(error_details(&error).evicted_at, Some(evicted_at));

    // A later expiry brings the session back, empty.
    let extended = owned(
        &apply(&fixture, &live, Some(&record))
            .await
            .expect("later expiry"),
    );
    assert!(data.is_dir());
    assert_eq!(std::fs::read_dir(&data).expect("list").count(), 0);

    // So does a new session id, in its own directory; the old session's directory goes.
    let new_session = resource(
        "scratch",
        json!({"sessionId": "s2", "sizeLimitBytes": 1000, "expiresAt": far_future()}),
    );
    let applied = apply(&fixture, &new_session, Some(&extended))
        .await
        .expect("new session");
    assert_eq!(applied.change, Change::Updated);
    assert!(fixture.data("scratch@s2").is_dir());
    assert!(!fixture.root().join("scratch@s1").exists());
}

#[tokio::test]
async fn a_session_expired_before_its_first_apply_is_evicted_and_collected_when_removed() {
    let fixture = Fixture::new();
    let expired = resource(
        "late",
        json!({"sessionId": "s", "sizeLimitBytes": 10, "expiresAt": "2020-01-01T00:00:00Z"}),
    );
    let error = apply(&fixture, &expired, None).await.expect_err("evicted");
    assert_eq!(error.reason(), ErrorReason::SessionStorageEvicted);
    assert!(fixture.root().join("late@s").join(MARKER_NAME).is_file());
    assert!(!fixture.data("late@s").exists());

    // It never had an ownership record; garbage collection removes it once it is not desired.
    let still_desired = fixture
        .reconciler
        .collect_garbage(std::slice::from_ref(&expired))
        .await;
    assert!(still_desired.is_empty());
    let removed = fixture.reconciler.collect_garbage(&[]).await;
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0].0.as_str(), "late");
    assert!(!fixture.root().join("late@s").exists());
}

#[tokio::test]
async fn garbage_collection_and_delete_leave_directories_the_agent_did_not_create() {
    let fixture = Fixture::new();
    let kept = resource("kept", json!({"sessionId": "s", "sizeLimitBytes": 10}));
    let gone = resource("gone", json!({"sessionId": "s", "sizeLimitBytes": 10}));
    apply(&fixture, &kept, None).await.expect("apply");
    apply(&fixture, &gone, None).await.expect("apply");
    let root = fixture.root();
    // Foreign: a plain directory, one named like a session without a marker, one with another
    // agent's marker, and a link.
    std::fs::create_dir_all(root.join("operator-data")).expect("mkdir");
    std::fs::create_dir_all(root.join("fake@s")).expect("mkdir");
    std::fs::create_dir_all(root.join("other@s")).expect("mkdir");
    std::fs::write(
        root.join("other@s").join(MARKER_NAME),
        json!({"agentId": "pi-2", "resourceId": "other", "sessionId": "s",
               "createdAt": "2026-01-01T00:00:00Z"})
        .to_string(),
    )
    .expect("write");
    symlink(root.join("operator-data"), root.join("link@s")).expect("symlink");

    let removed = fixture
        .reconciler
        .collect_garbage(std::slice::from_ref(&kept))
        .await;
    let removed: Vec<&str> = removed.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(removed, ["gone"]);
    for name in ["kept@s", "operator-data", "fake@s", "other@s", "link@s"] {
        assert!(
            root.join(name).symlink_metadata().is_ok(),
            "{name} is left alone"
        );
    }

    // Delete removes its own directory; with a record pointing at a foreign one it lets go.
    let kept_record = owned(&apply(&fixture, &kept, None).await.expect("apply"));
    let deleted = fixture
        .reconciler
        .delete(&kept.id, &kept_record)
        .await
        .expect("delete");
    assert_eq!(deleted, Deleted::Removed);
    assert!(!root.join("kept@s").exists());
    let again = fixture
        .reconciler
        .delete(&kept.id, &kept_record)
        .await
        .expect("delete again");
    assert_eq!(again, Deleted::AlreadyGone);
    let foreign = OwnedSession {
        path: root.join("fake@s").display().to_string(),
        dir: "fake@s".into(),
        session_id: "s".into(),
    };
    let fake = ResourceId::try_from("fake").expect("id");
    let released = fixture
        .reconciler
        .delete(&fake, &foreign)
        .await
        .expect("delete");
    assert!(matches!(released, Deleted::Released { .. }));
    assert!(root.join("fake@s").exists());
}

#[tokio::test]
async fn a_directory_without_a_marker_is_a_conflict_not_adopted() {
    let fixture = Fixture::new();
    let root = fixture.dir.path().join("sessions");
    std::fs::create_dir_all(root.join("scratch@s").join(DATA_DIR)).expect("mkdir");
    std::fs::write(root.join("scratch@s").join(DATA_DIR).join("x"), b"x").expect("write");
    let resource = resource("scratch", json!({"sessionId": "s", "sizeLimitBytes": 10}));
    let error = apply(&fixture, &resource, None).await.expect_err("foreign");
    assert_eq!(error.reason(), ErrorReason::Conflict);
    assert!(matches!(
        fixture.reconciler.volumes().get(&resource.id),
        VolumeState::NotReady { .. }
    ));
    assert!(root.join("scratch@s").join(DATA_DIR).join("x").exists());
}

#[tokio::test]
async fn a_large_session_is_summarised_in_the_background_without_holding_the_apply() {
    let fixture = Fixture::new();
    let resource = resource("big", json!({"sessionId": "s", "sizeLimitBytes": 1 << 30}));
    let record = owned(&apply(&fixture, &resource, None).await.expect("apply"));
    let data = fixture.data("big@s");
    for n in 0..20_000 {
        std::fs::write(data.join(format!("f{n:05}")), b"x").expect("write");
    }
    let started = Instant::now();
    let applied = apply(&fixture, &resource, Some(&record))
        .await
        .expect("apply");
    // The apply waits SUMMARY_WAIT at most, plus the small marker and directory checks.
    assert!(
        started.elapsed() < SUMMARY_WAIT + Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let _ = applied;
    let settled = apply_until(&fixture, &resource, Some(&record), |outcome| {
        outcome
            .as_ref()
            .is_ok_and(|applied| details(applied).files_count == 20_000)
    })
    .await
    .expect("apply");
    assert_eq!(details(&settled).size_bytes, 20_000);
}

#[tokio::test]
async fn without_a_session_root_the_storage_is_not_ready() {
    let reconciler = SessionStorageReconciler::new(None, AGENT);
    let resource = resource("scratch", json!({"sessionId": "s", "sizeLimitBytes": 10}));
    let error = reconciler
        .apply(Target {
            id: &resource.id,
            spec: spec_of(&resource),
            spec_hash: &resource.spec_hash(),
            previous: None,
        })
        .await
        .expect_err("no root");
    assert_eq!(error.reason(), ErrorReason::StorageNotReady);
}

#[tokio::test]
async fn a_session_directory_replaced_by_a_link_outside_is_not_followed() {
    let fixture = Fixture::new();
    let session = resource("cache", json!({"sessionId": "s", "sizeLimitBytes": 1000}));
    let record = owned(&apply(&fixture, &session, None).await.expect("apply"));
    let root = fixture.root();
    // Outside the root: a copy of the session, this agent's marker included.
    let outside = fixture.dir.path().join("outside");
    std::fs::create_dir_all(outside.join(DATA_DIR)).expect("mkdir");
    let marker = std::fs::read(root.join("cache@s").join(MARKER_NAME)).expect("read");
    std::fs::write(outside.join(MARKER_NAME), &marker).expect("write");
    std::fs::write(outside.join(DATA_DIR).join("precious"), "keep").expect("write");
    std::fs::remove_dir_all(root.join("cache@s")).expect("rm");
    symlink(&outside, root.join("cache@s")).expect("symlink");

    let error = apply(&fixture, &session, Some(&record))
        .await
        .expect_err("a link is not the agent's directory");
    assert_eq!(error.reason(), ErrorReason::Conflict);
    let deleted = fixture
        .reconciler
        .delete(&session.id, &record)
        .await
        .expect("delete");
    assert!(matches!(deleted, Deleted::Released { .. }), "{deleted:?}");
    let removed = fixture.reconciler.collect_garbage(&[]).await;
    assert!(removed.is_empty(), "{removed:?}");
    assert_eq!(
        std::fs::read(outside.join(MARKER_NAME)).expect("read"),
        marker
    );
    assert!(outside.join(DATA_DIR).join("precious").exists());
    assert!(
        root.join("cache@s")
            .symlink_metadata()
            .expect("stat")
            .file_type()
            .is_symlink()
    );
}

#[tokio::test]
async fn a_link_planted_inside_a_session_directory_is_not_written_through() {
    let fixture = Fixture::new();
    let session = resource("cache", json!({"sessionId": "s", "sizeLimitBytes": 1000}));
    let record = owned(&apply(&fixture, &session, None).await.expect("apply"));
    let root = fixture.root();
    let marker_path = root.join("cache@s").join(MARKER_NAME);
    let text = std::fs::read(&marker_path).expect("read");
    let marker: Marker = serde_json::from_slice(&text).expect("marker");
    // The marker swapped for a link to a file outside that holds a valid marker.
    let outside = fixture.dir.path().join("outside-marker.json");
    std::fs::write(&outside, &text).expect("write");
    std::fs::remove_file(&marker_path).expect("rm");
    symlink(&outside, &marker_path).expect("symlink");

    let error = apply(&fixture, &session, Some(&record))
        .await
        .expect_err("a linked marker is not the agent's");
    assert_eq!(error.reason(), ErrorReason::Conflict);
    // The shared writer refuses the link even when asked directly, past the marker check.
    let error = fixture
        .reconciler
        .write_marker(&session.id, &root, "cache@s", &marker)
        .expect_err("a link at the marker's name");
    assert_eq!(error.reason(), ErrorReason::PathNotAllowed);
    assert_eq!(std::fs::read(&outside).expect("read"), text);
    assert!(
        marker_path
            .symlink_metadata()
            .expect("stat")
            .file_type()
            .is_symlink()
    );

    // The data directory swapped for a link: not summarised through, not adopted.
    std::fs::remove_file(&marker_path).expect("rm");
    std::fs::write(&marker_path, &text).expect("restore");
    let outside_data = fixture.dir.path().join("outside-data");
    std::fs::create_dir_all(&outside_data).expect("mkdir");
    std::fs::write(outside_data.join("secret"), "x").expect("write");
    let data = fixture.data("cache@s");
    std::fs::remove_dir_all(&data).expect("rm");
    symlink(&outside_data, &data).expect("symlink");
    assert!(summarize(&data).is_err(), "the data link is not followed");
    let error = apply(&fixture, &session, Some(&record))
        .await
        .expect_err("a linked data directory");
    assert_eq!(error.reason(), ErrorReason::Conflict);
    assert!(outside_data.join("secret").exists());
}
