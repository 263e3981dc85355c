//! Unit tests of the confined filesystem on temporary directories: links below a root are never
//! followed (through `openat2` and through the walk alike), and a replacement is whole or absent.

use std::ffi::OsStr;
use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;

use super::beneath::walk_beneath;
use super::*;

struct Tree {
    _dir: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
}

/// `root/a/b/file` and `outside/secret`, with the links `root/escape -> outside` and
/// `root/a/leak -> outside/secret`.
fn tree() -> Tree {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    let outside = dir.path().join("outside");
    fs::create_dir_all(root.join("a/b")).expect("mkdir");
    fs::create_dir_all(&outside).expect("mkdir");
    fs::write(root.join("a/b/file"), "inside").expect("write");
    fs::write(outside.join("secret"), "outside").expect("write");
    symlink(&outside, root.join("escape")).expect("symlink");
    symlink(outside.join("secret"), root.join("a/leak")).expect("symlink");
    Tree {
        _dir: dir,
        root,
        outside,
    }
}

fn read_fd(fd: std::os::fd::OwnedFd) -> String {
    std::io::read_to_string(fs::File::from(fd)).expect("read")
}

#[test]
fn open_beneath_opens_plain_paths_and_refuses_links_and_dot_dot() {
    let tree = tree();
    let root = open_dir(&tree.root).expect("root");
    let opened = open_beneath(&root, Path::new("a/b/file"), OFlag::O_RDONLY).expect("open");
    assert_eq!(read_fd(opened), "inside");
    for (path, expected) in [
        ("escape/secret", Errno::ELOOP),
        ("a/leak", Errno::ELOOP),
        ("a/../escape/secret", Errno::EXDEV),
        ("../outside/secret", Errno::EXDEV),
        ("", Errno::EXDEV),
    ] {
        let refused = open_beneath(&root, Path::new(path), OFlag::O_RDONLY);
        assert_eq!(refused.err(), Some(expected), "{path}");
    }
}

#[test]
fn the_walk_without_openat2_refuses_the_same_links() {
    let tree = tree();
    let root = open_dir(&tree.root).expect("root");
    let names = |path: &'static str| path.split('/').map(OsStr::new).collect::<Vec<_>>();
    let walk = |path: &'static str| {
        let names = names(path);
        let (last, directories) = names.split_last().expect("names");
        walk_beneath(root.as_fd(), directories, last, OFlag::O_RDONLY)
    };
    assert_eq!(read_fd(walk("a/b/file").expect("open")), "inside");
    // A directory opened with O_NOFOLLOW that is a link is "not a directory" to the kernel.
    assert_eq!(walk("escape/secret").err(), Some(Errno::ENOTDIR));
    assert_eq!(walk("a/leak").err(), Some(Errno::ELOOP));
    assert_eq!(walk("a/b/file/x").err(), Some(Errno::ENOTDIR));
}

#[test]
fn open_dir_at_and_open_file_at_take_one_plain_name_and_follow_no_link() {
    let tree = tree();
    let a = open_dir(&tree.root.join("a")).expect("a");
    assert_eq!(
        open_file_at(&a, OsStr::new("leak"), OFlag::O_NONBLOCK).err(),
        Some(Errno::ELOOP)
    );
    let root = open_dir(&tree.root).expect("root");
    assert_eq!(
        open_dir_at(&root, OsStr::new("escape")).err(),
        Some(Errno::ENOTDIR)
    );
    for name in ["..", ".", "a/b"] {
        assert_eq!(
            open_dir_at(&a, OsStr::new(name)).err(),
            Some(Errno::EXDEV),
            "{name}"
        );
    }
    assert!(open_dir_at(&a, OsStr::new("b")).is_ok());
}

#[test]
fn open_parent_creates_directories_and_names_what_is_in_the_way() {
    let tree = tree();
    let root_fd = || open_dir(&tree.root).expect("root");
    let path = tree.root.join("new/deeper/file");
    assert!(
        open_parent(root_fd(), &tree.root, &path, None)
            .expect("walk")
            .is_none()
    );
    let parent = open_parent(root_fd(), &tree.root, &path, Some(0o750))
        .expect("walk")
        .expect("created");
    assert_eq!(parent.name, "file");
    let mode = fs::metadata(tree.root.join("new/deeper"))
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o750 & !current_umask());

    let through_link = tree.root.join("escape/new/file");
    match open_parent(root_fd(), &tree.root, &through_link, Some(0o755)) {
        Err(ConfinedError::SymlinkInPath { link, .. }) => {
            assert_eq!(link, tree.root.join("escape").display().to_string());
        }
        other => panic!("a link in the path must be refused: {other:?}"),
    }
    assert!(!tree.outside.join("new").exists());
    match open_parent(root_fd(), &tree.root, &tree.root.join("a/b/file/x"), None) {
        Err(ConfinedError::Occupied { .. }) => {}
        other => panic!("a file in the path is in the way: {other:?}"),
    }
    for outside in [tree.root.clone(), tree.outside.join("secret")] {
        assert!(matches!(
            open_parent(root_fd(), &tree.root, &outside, None),
            Err(ConfinedError::NotBeneath { .. })
        ));
    }
}

fn current_umask() -> u32 {
    let probe = tempfile::tempdir().expect("tempdir");
    let path = probe.path().join("probe");
    fs::DirBuilder::new().create(&path).expect("mkdir");
    0o777 & !fs::metadata(&path).expect("stat").permissions().mode()
}

fn exact(mode: u32) -> Replace<'static> {
    Replace {
        mode: ModeChoice::Exact(mode),
        uid: None,
        gid: None,
        durability: Durability::Full,
        temp_suffix: ".test-tmp",
    }
}

#[test]
fn replace_writes_a_whole_file_with_its_mode_and_leaves_no_temporary() {
    let tree = tree();
    let dir = open_dir(&tree.root.join("a/b")).expect("dir");
    let path = tree.root.join("a/b/file");
    let before = fs::metadata(&path).expect("stat").ino();
    replace(
        &dir,
        OsStr::new("file"),
        &path,
        b"new content",
        &exact(0o640),
    )
    .expect("replace");
    assert_eq!(fs::read(&path).expect("read"), b"new content");
    let after = fs::metadata(&path).expect("stat");
    assert_eq!(after.permissions().mode() & 0o7777, 0o640);
    assert_ne!(after.ino(), before, "a new file renamed into place");
    let names: Vec<_> = fs::read_dir(tree.root.join("a/b"))
        .expect("list")
        .map(|entry| entry.expect("entry").file_name())
        .collect();
    assert_eq!(names, ["file"]);

    // A temporary left by a crash is taken over, not piled up.
    fs::write(tree.root.join("a/b/.file.test-tmp"), "stale").expect("write");
    replace(&dir, OsStr::new("file"), &path, b"again", &exact(0o600)).expect("replace");
    assert_eq!(fs::read(&path).expect("read"), b"again");
    assert!(!tree.root.join("a/b/.file.test-tmp").exists());
}

#[test]
fn replace_never_writes_through_a_link_and_check_replaceable_refuses_one() {
    let tree = tree();
    let dir = open_dir(&tree.root.join("a")).expect("dir");
    let path = tree.root.join("a/leak");
    assert!(matches!(
        check_replaceable(&dir, OsStr::new("leak"), &path),
        Err(ConfinedError::SymlinkInPath { .. })
    ));
    assert!(matches!(
        check_replaceable(&dir, OsStr::new("b"), &tree.root.join("a/b")),
        Err(ConfinedError::Occupied { .. })
    ));
    check_replaceable(&dir, OsStr::new("missing"), &tree.root.join("a/missing")).expect("free");
    // Even without the check, the rename takes the link's place: its target is never written.
    replace(&dir, OsStr::new("leak"), &path, b"mine", &exact(0o644)).expect("replace");
    assert_eq!(
        fs::read(tree.outside.join("secret")).expect("read"),
        b"outside"
    );
    assert!(fs::symlink_metadata(&path).expect("stat").is_file());
}

#[test]
fn a_replacement_that_fails_removes_its_temporary_and_keeps_what_was_there() {
    let tree = tree();
    let dir = open_dir(&tree.root.join("a")).expect("dir");
    // A directory cannot be replaced by a file: the rename fails after the temporary was filled.
    let error = replace(
        &dir,
        OsStr::new("b"),
        &tree.root.join("a/b"),
        b"x",
        &exact(0o644),
    )
    .expect_err("a directory is in the way");
    assert!(matches!(error, ConfinedError::Os { .. }), "{error:?}");
    assert!(!tree.root.join("a/.b.test-tmp").exists());
    assert!(tree.root.join("a/b/file").exists());
}

#[test]
fn remove_at_says_whether_there_was_something_and_deferred_syncs_are_shared() {
    let tree = tree();
    let dir = open_dir(&tree.root.join("a/b")).expect("dir");
    let path = tree.root.join("a/b/file");
    assert!(remove_at(&dir, OsStr::new("file"), &path, true).expect("remove"));
    assert!(!remove_at(&dir, OsStr::new("file"), &path, true).expect("remove"));
    assert!(!path.exists());

    let mut syncs = DirSyncs::default();
    let first = syncs.add(open_dir(&tree.root.join("a/b")).expect("dir"));
    let same = syncs.add(open_dir(&tree.root.join("a/b")).expect("dir"));
    let other = syncs.add(open_dir(&tree.root).expect("dir"));
    assert_eq!((first, same, other), (0, 0, 1));
    assert_eq!(syncs.sync_all(), [Ok(()), Ok(())]);
    assert!(syncs.sync_all().is_empty());
}

#[test]
fn created_with_leaves_the_mode_to_the_umask_as_open_does() {
    let tree = tree();
    let dir = open_dir(&tree.root).expect("dir");
    let path = tree.root.join("state.json");
    let how = Replace {
        mode: ModeChoice::CreatedWith(0o666),
        uid: None,
        gid: None,
        durability: Durability::None,
        temp_suffix: ".tmp",
    };
    replace(&dir, OsStr::new("state.json"), &path, b"{}", &how).expect("replace");
    let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o666 & !current_umask());
    assert_eq!(
        ConfinedError::os(&path, "write", Errno::ENOSPC)
            .into_io()
            .kind(),
        std::io::ErrorKind::StorageFull
    );
}

#[test]
fn remove_tree_removes_links_and_never_what_they_point_to() {
    let tree = tree();
    fs::create_dir_all(tree.root.join("a/b/c/d")).expect("mkdir");
    fs::write(tree.root.join("a/b/c/d/deep"), "x").expect("write");
    symlink(&tree.outside, tree.root.join("a/b/out")).expect("symlink");
    let root = open_dir(&tree.root).expect("root");

    assert_eq!(remove_tree(&root, OsStr::new("a")), Ok(true));
    assert!(!tree.root.join("a").exists());
    assert_eq!(remove_tree(&root, OsStr::new("a")), Ok(false));
    // The top itself a link: the link goes, the directory it names stays whole.
    assert_eq!(remove_tree(&root, OsStr::new("escape")), Ok(true));
    assert!(tree.root.join("escape").symlink_metadata().is_err());
    assert_eq!(
        fs::read(tree.outside.join("secret")).expect("read"),
        b"outside"
    );
    for name in ["..", "escape/secret"] {
        assert_eq!(
            remove_tree(&root, OsStr::new(name)),
            Err(Errno::EXDEV),
            "only a plain name is removed: {name}"
        );
    }
}
