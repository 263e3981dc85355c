//! Large files on every target: the reason this module exists is 32-bit ARM, and these tests run
//! there too (`deploy/dev/cross.sh unit-tests` runs the agent's unit tests under qemu-arm).

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::MetadataExt;

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::sys::stat::SFlag;

use super::{fstat, fstatat};
use crate::confined::file_type;

/// Three GiB: above both 2^31 (a signed 32-bit `off_t`) and nowhere near a real disk's use, since
/// the file is sparse.
const LARGE: u64 = 3 << 30;

#[test]
fn a_sparse_file_over_two_gib_has_its_full_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("large");
    let file = File::create(&path).expect("create");
    file.set_len(LARGE).expect("set_len (sparse)");
    assert_eq!(std::fs::metadata(&path).expect("metadata").size(), LARGE);

    let parent = File::open(dir.path()).expect("open dir");
    let stat = fstatat(&parent, OsStr::new("large"), AtFlags::AT_SYMLINK_NOFOLLOW)
        .expect("fstatat must not overflow on a file of 3 GiB");
    assert_eq!(u64::try_from(stat.st_size).ok(), Some(LARGE));
    assert_eq!(file_type(&stat), SFlag::S_IFREG);

    let opened = fstat(&file).expect("fstat must not overflow on a file of 3 GiB");
    assert_eq!(u64::try_from(opened.st_size).ok(), Some(LARGE));
    assert_eq!(
        opened.st_ino,
        std::fs::metadata(&path).expect("metadata").ino()
    );
}

#[test]
fn a_missing_entry_is_enoent_and_a_link_is_not_followed() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink("/nonexistent", dir.path().join("link")).expect("symlink");
    let parent = File::open(dir.path()).expect("open dir");
    let missing = fstatat(&parent, OsStr::new("missing"), AtFlags::AT_SYMLINK_NOFOLLOW);
    assert_eq!(missing.err(), Some(Errno::ENOENT));
    let link = fstatat(&parent, OsStr::new("link"), AtFlags::AT_SYMLINK_NOFOLLOW).expect("lstat");
    assert_eq!(file_type(&link), SFlag::S_IFLNK);
}
