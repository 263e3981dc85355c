//! Unit tests of the File reconciler on a temporary root: writes, drift repair, batches, and
//! the paths it refuses (links, traversal, other roots).

use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

use fleetlet_manifests::{Kind, Resource, ResourceSpec};
use serde_json::json;

use super::*;
use crate::store::OwnershipRecord;

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
    reconciler: FileReconciler,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&root).expect("root");
    std::fs::create_dir_all(&outside).expect("outside");
    let reconciler = FileReconciler::new(vec![root.clone()]);
    Fixture {
        _dir: dir,
        root,
        outside,
        reconciler,
    }
}

fn resource(id: &str, path: &Path, text: &str, mode: &str, extra: serde_json::Value) -> Resource {
    let mut spec =
        json!({"path": path.display().to_string(), "content": {"text": text}, "mode": mode});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    serde_json::from_value(json!({"id": id, "kind": "File", "spec": spec})).expect("valid resource")
}

fn spec_of(resource: &Resource) -> &FileSpec {
    match &resource.spec {
        ResourceSpec::File(spec) => spec,
        other => panic!("not a file spec: {other:?}"),
    }
}

impl Fixture {
    fn apply(&self, resource: &Resource, previous: Option<&Applied>) -> Result<Applied, FileError> {
        let previous = previous.and_then(|applied| match &applied.owned {
            Owned::File(owned) => Some((resource.spec_hash(), owned.clone())),
            _ => None,
        });
        self.reconciler.apply_blocking(
            &resource.id,
            spec_of(resource),
            &resource.spec_hash(),
            previous.as_ref(),
        )
    }

    fn delete(&self, applied: &Applied) -> Deleted {
        let Owned::File(owned) = &applied.owned else {
            panic!("a file apply owns a file");
        };
        self.reconciler
            .delete_blocking(&ResourceId::try_from("x").expect("id"), owned)
            .expect("delete")
    }
}

impl Fixture {
    /// Applies `resources` as one batch, each with its previous apply.
    fn apply_batch(
        &self,
        resources: &[(&Resource, Option<&Applied>)],
    ) -> Vec<Result<Applied, ReconcileError>> {
        let batch: Vec<Arc<Desired>> = resources
            .iter()
            .map(|(resource, previous)| {
                Arc::new(Desired {
                    id: resource.id.clone(),
                    spec: KnownSpec::of(&resource.spec).expect("a known kind"),
                    spec_hash: resource.spec_hash(),
                    previous: previous.map(|applied| OwnershipRecord {
                        kind: Kind::File,
                        spec_hash: resource.spec_hash(),
                        generation: 1,
                        owned: applied.owned.clone(),
                    }),
                })
            })
            .collect();
        let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
        let shutdown = crate::shutdown::Shutdown::new();
        self.reconciler
            .apply_batch_blocking(&batch, &BatchResults::new(sender, shutdown.signal()));
        let mut results = Vec::new();
        while let Ok((id, outcome)) = receiver.try_recv() {
            assert_eq!(id, resources[results.len()].0.id, "in order");
            results.push(outcome.result);
        }
        assert_eq!(results.len(), resources.len());
        results
    }
}

#[test]
fn a_batch_confirms_converged_files_and_repairs_every_byte_of_drift() {
    let fx = fixture();
    let paths = ["a/one", "a/two", "b/three"].map(|p| fx.root.join(p));
    let files: Vec<Resource> = paths
        .iter()
        .enumerate()
        .map(|(i, path)| resource(&format!("f{i}"), path, "same size", "0644", json!({})))
        .collect();
    let first: Vec<Applied> = fx
        .apply_batch(&files.iter().map(|f| (f, None)).collect::<Vec<_>>())
        .into_iter()
        .map(|result| result.expect("apply"))
        .collect();
    assert!(
        first
            .iter()
            .all(|applied| applied.change == Change::Created)
    );
    let with_previous: Vec<(&Resource, Option<&Applied>)> = files
        .iter()
        .zip(&first)
        .map(|(f, a)| (f, Some(a)))
        .collect();

    // Converged: nothing written, and the same answer as the full apply gives.
    let inode = std::fs::metadata(&paths[0]).expect("stat").ino();
    let confirmed = fx.apply_batch(&with_previous);
    for ((result, file), previous) in confirmed.into_iter().zip(&files).zip(&first) {
        let confirmed = result.expect("apply");
        assert_eq!(confirmed.change, Change::Unchanged);
        assert_eq!(confirmed, fx.apply(file, Some(previous)).expect("apply"));
    }
    assert_eq!(std::fs::metadata(&paths[0]).expect("stat").ino(), inode);

    // A byte changed without changing the size, and a mode: both found and repaired.
    std::fs::write(&paths[0], "same sizE").expect("edit");
    std::fs::set_permissions(&paths[1], std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let repaired = fx.apply_batch(&with_previous);
    let changes: Vec<Change> = repaired
        .into_iter()
        .map(|result| result.expect("apply").change)
        .collect();
    assert_eq!(
        changes,
        [
            Change::Repaired {
                drift: "content changed".into()
            },
            Change::Repaired {
                drift: "mode changed".into()
            },
            Change::Unchanged,
        ]
    );
    assert_eq!(std::fs::read(&paths[0]).expect("read"), b"same size");
    assert_eq!(
        std::fs::metadata(&paths[1])
            .expect("stat")
            .permissions()
            .mode()
            & 0o7777,
        0o644
    );
}

#[test]
fn a_batch_does_not_follow_a_directory_swapped_for_a_link() {
    let fx = fixture();
    let path = fx.root.join("dir/file");
    let file = resource("f", &path, "x", "0644", json!({}));
    let applied = fx.apply_batch(&[(&file, None)]).remove(0).expect("apply");
    // The same file, byte for byte, but outside the roots and reached through a link.
    std::fs::remove_dir_all(fx.root.join("dir")).expect("rm");
    std::fs::write(fx.outside.join("file"), "x").expect("write");
    std::fs::set_permissions(
        fx.outside.join("file"),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    symlink(&fx.outside, fx.root.join("dir")).expect("symlink");
    let error = fx
        .apply_batch(&[(&file, Some(&applied))])
        .remove(0)
        .expect_err("link in the path");
    assert_eq!(error.reason(), ErrorReason::PathNotAllowed);
}

#[test]
fn hex_lower_writes_what_hex_encode_does() {
    let all: Vec<u8> = (0..=255).collect();
    assert_eq!(hex_lower(&all), hex::encode(&all));
    assert_eq!(hex_lower(&[]), "");
}

#[test]
fn writes_the_exact_bytes_and_mode_and_creates_the_directories() {
    let fx = fixture();
    let path = fx.root.join("a/b/c/motd");
    let applied = fx
        .apply(&resource("motd", &path, "hello\n", "0640", json!({})), None)
        .expect("apply");
    assert_eq!(applied.change, Change::Created);
    assert_eq!(std::fs::read(&path).expect("read"), b"hello\n");
    let meta = std::fs::metadata(&path).expect("stat");
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    let Some(ResourceDetails::File(details)) = applied.details else {
        panic!("file details expected");
    };
    assert_eq!(details.size, 6);
    assert_eq!(details.mode, "0640");
    assert_eq!(details.sha256, hex::encode(Sha256::digest(b"hello\n")));
    // No temporary file is left next to it.
    let names: Vec<_> = std::fs::read_dir(fx.root.join("a/b/c"))
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, ["motd"]);
}

#[test]
fn an_unchanged_file_is_not_rewritten() {
    let fx = fixture();
    let path = fx.root.join("motd");
    let motd = resource("motd", &path, "hi", "0644", json!({}));
    let first = fx.apply(&motd, None).expect("apply");
    let before = std::fs::metadata(&path).expect("stat");
    let second = fx.apply(&motd, Some(&first)).expect("apply");
    let after = std::fs::metadata(&path).expect("stat");
    assert_eq!(second.change, Change::Unchanged);
    assert_eq!(before.ino(), after.ino());
    assert_eq!(before.mtime_nsec(), after.mtime_nsec());
}

#[test]
fn drift_in_content_mode_or_existence_is_repaired_and_named() {
    let fx = fixture();
    let path = fx.root.join("motd");
    let motd = resource("motd", &path, "hi", "0644", json!({}));
    let applied = fx.apply(&motd, None).expect("apply");

    std::fs::write(&path, "edited by hand").expect("edit");
    let repaired = fx.apply(&motd, Some(&applied)).expect("apply");
    assert_eq!(
        repaired.change,
        Change::Repaired {
            drift: "content changed".into()
        }
    );
    assert_eq!(std::fs::read(&path).expect("read"), b"hi");

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let repaired = fx.apply(&motd, Some(&applied)).expect("apply");
    assert_eq!(
        repaired.change,
        Change::Repaired {
            drift: "mode changed".into()
        }
    );
    assert_eq!(
        std::fs::metadata(&path).expect("stat").permissions().mode() & 0o7777,
        0o644
    );

    std::fs::remove_file(&path).expect("rm");
    let repaired = fx.apply(&motd, Some(&applied)).expect("apply");
    assert_eq!(
        repaired.change,
        Change::Repaired {
            drift: "the file was deleted".into()
        }
    );
    assert!(path.exists());
}

#[test]
fn owner_and_group_are_applied_by_name_or_number_and_drift_is_seen() {
    if !Uid::effective().is_root() {
        // Changing owners needs root; the CI and these machines run as root.
        panic!("this test must run as root to change file owners");
    }
    let fx = fixture();
    let path = fx.root.join("owned");
    let by_name = resource(
        "owned",
        &path,
        "x",
        "0600",
        json!({"owner": "nobody", "group": "daemon"}),
    );
    let applied = fx.apply(&by_name, None).expect("apply");
    let nobody = User::from_name("nobody")
        .expect("lookup")
        .expect("nobody exists");
    let daemon = Group::from_name("daemon")
        .expect("lookup")
        .expect("daemon exists");
    let meta = std::fs::metadata(&path).expect("stat");
    assert_eq!(
        (meta.uid(), meta.gid()),
        (nobody.uid.as_raw(), daemon.gid.as_raw())
    );

    std::os::unix::fs::chown(&path, Some(0), Some(0)).expect("chown");
    let repaired = fx.apply(&by_name, Some(&applied)).expect("apply");
    assert_eq!(
        repaired.change,
        Change::Repaired {
            drift: "owner, group changed".into()
        }
    );

    let by_number = resource(
        "owned",
        &path,
        "x",
        "0600",
        json!({"owner": "4242", "group": "4343"}),
    );
    fx.apply(&by_number, Some(&applied)).expect("apply");
    let meta = std::fs::metadata(&path).expect("stat");
    assert_eq!((meta.uid(), meta.gid()), (4242, 4343));

    let missing = resource(
        "owned",
        &path,
        "x",
        "0600",
        json!({"owner": "no-such-user-here"}),
    );
    let error = fx.apply(&missing, None).expect_err("unknown owner");
    assert_eq!(error.reason(), ErrorReason::OwnerNotFound);
}

#[test]
fn paths_outside_the_roots_are_refused() {
    let fx = fixture();
    let sibling = PathBuf::from(format!("{}2/file", fx.root.display()));
    for path in [
        fx.outside.join("file"),
        fx.root.clone(),
        sibling,
        PathBuf::from("/etc/motd"),
    ] {
        let error = fx
            .apply(&resource("f", &path, "x", "0644", json!({})), None)
            .expect_err("outside the roots");
        assert_eq!(error.reason(), ErrorReason::PathNotAllowed, "{path:?}");
    }
    assert!(!fx.outside.join("file").exists());
}

#[test]
fn a_symlink_inside_a_root_pointing_outside_is_not_followed() {
    let fx = fixture();
    symlink(&fx.outside, fx.root.join("escape")).expect("symlink");
    let error = fx
        .apply(
            &resource("f", &fx.root.join("escape/passwd"), "x", "0644", json!({})),
            None,
        )
        .expect_err("symlink in the path");
    assert_eq!(error.reason(), ErrorReason::PathNotAllowed);
    assert!(!fx.outside.join("passwd").exists());

    // A link at the file's own path is not replaced or written through either.
    let target = fx.outside.join("target");
    std::fs::write(&target, "outside").expect("write");
    symlink(&target, fx.root.join("link")).expect("symlink");
    let error = fx
        .apply(
            &resource("f", &fx.root.join("link"), "x", "0644", json!({})),
            None,
        )
        .expect_err("symlink at the path");
    assert_eq!(error.reason(), ErrorReason::PathNotAllowed);
    assert_eq!(std::fs::read(&target).expect("read"), b"outside");
    assert!(
        std::fs::symlink_metadata(fx.root.join("link"))
            .expect("stat")
            .file_type()
            .is_symlink()
    );
}

#[test]
fn a_directory_at_the_path_is_a_conflict() {
    let fx = fixture();
    std::fs::create_dir(fx.root.join("dir")).expect("mkdir");
    let error = fx
        .apply(
            &resource("f", &fx.root.join("dir"), "x", "0644", json!({})),
            None,
        )
        .expect_err("directory");
    assert_eq!(error.reason(), ErrorReason::Conflict);
}

#[test]
fn delete_removes_a_created_file_but_leaves_an_adopted_one() {
    let fx = fixture();
    let created_path = fx.root.join("created");
    let created = fx
        .apply(
            &resource("c", &created_path, "ours", "0644", json!({})),
            None,
        )
        .expect("apply");
    let adopted_path = fx.root.join("adopted");
    std::fs::write(&adopted_path, "was here before").expect("write");
    let adopted = fx
        .apply(
            &resource("a", &adopted_path, "ours now", "0644", json!({})),
            None,
        )
        .expect("apply");
    assert_eq!(adopted.change, Change::Adopted);

    assert_eq!(fx.delete(&created), Deleted::Removed);
    assert!(!created_path.exists());
    assert!(matches!(fx.delete(&adopted), Deleted::Released { .. }));
    assert!(adopted_path.exists());
    // Deleting again, or what was never written, is fine.
    assert_eq!(fx.delete(&created), Deleted::AlreadyGone);
}

#[test]
fn delete_does_not_follow_a_link_put_in_place_of_the_directory() {
    let fx = fixture();
    let path = fx.root.join("dir/file");
    let applied = fx
        .apply(&resource("f", &path, "x", "0644", json!({})), None)
        .expect("apply");
    std::fs::remove_dir_all(fx.root.join("dir")).expect("rm");
    std::fs::write(fx.outside.join("file"), "precious").expect("write");
    symlink(&fx.outside, fx.root.join("dir")).expect("symlink");
    assert!(matches!(fx.delete(&applied), Deleted::Released { .. }));
    assert!(fx.outside.join("file").exists());
}

#[test]
fn moving_a_resource_to_a_new_path_removes_the_old_file_it_created() {
    let fx = fixture();
    let old = fx.root.join("old");
    let applied = fx
        .apply(&resource("f", &old, "x", "0644", json!({})), None)
        .expect("apply");
    let new = fx.root.join("new");
    fx.apply(&resource("f", &new, "x", "0644", json!({})), Some(&applied))
        .expect("apply");
    assert!(!old.exists());
    assert!(new.exists());
}
