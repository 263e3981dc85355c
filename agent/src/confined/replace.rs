//! Atomic replacement and removal of one entry in an open directory, and directory syncs that
//! can be deferred and shared by many files.
//!
//! The crash-safety argument for [`replace`]: the new content goes to a temporary file in the
//! same directory, is fsynced, and only then renamed over the old name; the directory is fsynced
//! last. A crash before the rename leaves the old file untouched (plus a stray temporary, which
//! the next replacement of the same name removes first). `rename(2)` within one directory is
//! atomic, so the name never points to a half-written file: because the data was durable before
//! the rename, whichever entry survives a power cut (old or new) names a complete file. The
//! final directory fsync makes the new entry itself durable before the caller is told.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, renameat};
use nix::sys::stat::{Mode, SFlag, fchmod};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fsync, unlinkat};

use super::{ConfinedError, fstatat};

/// How much of a replacement waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The content is fsynced before the rename and the directory after it: once [`replace`]
    /// returns, the new file survives a power cut.
    Full,
    /// As `Full`, but the directory is left to the caller ([`DirSyncs`]), to be fsynced once for
    /// every file written into it before any of them is reported.
    DeferDirSync,
    /// Nothing waits for the disk: a process crash still leaves the old or the new file, a power
    /// cut may lose the latest replacement (never tear it).
    None,
}

/// The mode of the new file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeChoice {
    /// Exactly this mode (umask ignored), set after the owner. The temporary is created 0600, so
    /// the content is never readable by others before the mode says so.
    Exact(u32),
    /// Created with this mode, less the process umask, as `open(2)` does.
    CreatedWith(u32),
}

/// What a replacement sets and waits for.
#[derive(Debug, Clone, Copy)]
pub struct Replace<'a> {
    pub mode: ModeChoice,
    pub uid: Option<Uid>,
    pub gid: Option<Gid>,
    pub durability: Durability,
    /// Ends the temporary file's name, `.<name><suffix>`: fixed, so that a temporary left by a
    /// crash is reused (and so cleaned up) by the next write instead of piling up.
    pub temp_suffix: &'a str,
}

/// The temporary file's name for `name`: `.<name><suffix>`.
pub fn temporary_name(name: &OsStr, suffix: &str) -> OsString {
    let mut temporary = OsString::from(".");
    temporary.push(name);
    temporary.push(suffix);
    temporary
}

/// Replaces the entry `name` of `dir` with a regular file holding `content`, as `how` says.
/// `shown` is the entry's full path, for errors. A temporary that could not be finished is
/// removed (a full disk must not keep its space).
pub fn replace(
    dir: &OwnedFd,
    name: &OsStr,
    shown: &Path,
    content: &[u8],
    how: &Replace<'_>,
) -> Result<(), ConfinedError> {
    let temporary = temporary_name(name, how.temp_suffix);
    match unlinkat(dir, temporary.as_os_str(), UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(errno) => {
            return Err(ConfinedError::os(
                shown,
                "remove the stale temporary file of",
                errno,
            ));
        }
    }
    let create_mode = match how.mode {
        ModeChoice::Exact(_) => 0o600,
        ModeChoice::CreatedWith(mode) => mode,
    };
    let fd = openat(
        dir,
        temporary.as_os_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(create_mode),
    )
    .map_err(|errno| ConfinedError::os(shown, "create a temporary file for", errno))?;
    let renamed = fill_and_rename(dir, name, shown, &temporary, File::from(fd), content, how);
    if renamed.is_err() {
        // Best effort: the next replacement removes a leftover temporary anyway.
        let _ = unlinkat(dir, temporary.as_os_str(), UnlinkatFlags::NoRemoveDir);
        return renamed;
    }
    if how.durability == Durability::Full {
        fsync(dir).map_err(|errno| ConfinedError::os(shown, "sync the directory of", errno))?;
    }
    Ok(())
}

fn fill_and_rename(
    dir: &OwnedFd,
    name: &OsStr,
    shown: &Path,
    temporary: &OsStr,
    mut file: File,
    content: &[u8],
    how: &Replace<'_>,
) -> Result<(), ConfinedError> {
    if how.uid.is_some() || how.gid.is_some() {
        fchown(&file, how.uid, how.gid)
            .map_err(|errno| ConfinedError::os(shown, "change the owner of", errno))?;
    }
    if let ModeChoice::Exact(mode) = how.mode {
        // After chown, which clears set-id bits, and without the umask getting in the way.
        fchmod(&file, Mode::from_bits_truncate(mode))
            .map_err(|errno| ConfinedError::os(shown, "change the mode of", errno))?;
    }
    file.write_all(content)
        .map_err(|error| ConfinedError::io(shown, "write", error))?;
    if how.durability != Durability::None && !fault_injection_skips_content_fsync() {
        // Data and size must be on disk before the rename makes them visible under the name.
        file.sync_all()
            .map_err(|error| ConfinedError::io(shown, "sync", error))?;
    }
    drop(file);
    renameat(dir, temporary, dir, name)
        .map_err(|errno| ConfinedError::os(shown, "rename the temporary file onto", errno))
}

/// FAULT INJECTION, in debug builds only (a release build compiles the constant `false`): with
/// `FLEETLET_FAULT_INJECTION_SKIP_CONTENT_FSYNC=1` the content fsync before the rename is left
/// out, the bug a power cut turns into an empty file. It exists so that the power-cut test can
/// prove it catches a missing fsync (tests/tests/agent_powercut.rs); nothing else sets it.
#[cfg(debug_assertions)]
fn fault_injection_skips_content_fsync() -> bool {
    static SKIP: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SKIP.get_or_init(|| {
        std::env::var_os("FLEETLET_FAULT_INJECTION_SKIP_CONTENT_FSYNC").is_some_and(|v| v == "1")
    })
}

#[cfg(not(debug_assertions))]
const fn fault_injection_skips_content_fsync() -> bool {
    false
}

/// Checks that the entry `name` of `dir` is missing or a regular file, so that a replacement
/// takes the place of a file and never of a link or a directory someone put there.
pub fn check_replaceable(dir: &OwnedFd, name: &OsStr, shown: &Path) -> Result<(), ConfinedError> {
    let stat = match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(stat) => stat,
        Err(Errno::ENOENT) => return Ok(()),
        Err(errno) => return Err(ConfinedError::os(shown, "inspect", errno)),
    };
    let path = shown.display().to_string();
    match super::file_type(&stat) {
        SFlag::S_IFREG => Ok(()),
        SFlag::S_IFLNK => Err(ConfinedError::SymlinkInPath {
            link: path.clone(),
            path,
        }),
        SFlag::S_IFDIR => Err(ConfinedError::Occupied {
            path,
            found: "a directory".into(),
        }),
        _ => Err(ConfinedError::Occupied {
            path,
            found: "a special file".into(),
        }),
    }
}

/// Removes the entry `name` of `dir` (not a directory) and, with `sync`, makes the removal
/// durable. Returns whether it existed.
pub fn remove_at(
    dir: &OwnedFd,
    name: &OsStr,
    shown: &Path,
    sync: bool,
) -> Result<bool, ConfinedError> {
    match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) => {}
        Err(Errno::ENOENT) => return Ok(false),
        Err(errno) => return Err(ConfinedError::os(shown, "remove", errno)),
    }
    if sync {
        fsync(dir).map_err(|errno| ConfinedError::os(shown, "sync the directory of", errno))?;
    }
    Ok(true)
}

/// Removes the entry `name` of `dir` and, if it is a directory, everything below it, without
/// following a link anywhere (a link is removed, never what it points to). Returns whether
/// there was something. Entries that vanish meanwhile are fine: a workload may be deleting too.
pub fn remove_tree(dir: &OwnedFd, name: &OsStr) -> Result<bool, Errno> {
    super::beneath::check_plain(name)?;
    match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) => return Ok(true),
        Err(Errno::ENOENT) => return Ok(false),
        // Linux answers EISDIR for a directory (POSIX allows EPERM).
        Err(Errno::EISDIR | Errno::EPERM) => {}
        Err(errno) => return Err(errno),
    }
    let below = match super::open_dir_at(dir, name) {
        Ok(below) => below,
        Err(Errno::ENOENT) => return Ok(false),
        Err(errno) => return Err(errno),
    };
    let mut names = Vec::new();
    for entry in nix::dir::Dir::from_fd(below.try_clone().map_err(io_errno)?)?.iter() {
        let entry = entry?;
        let entry_name = entry.file_name().to_bytes();
        if entry_name != b"." && entry_name != b".." {
            names.push(std::ffi::OsString::from_vec(entry_name.to_vec()));
        }
    }
    for entry_name in names {
        remove_tree(&below, &entry_name)?;
    }
    match unlinkat(dir, name, UnlinkatFlags::RemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(true),
        Err(errno) => Err(errno),
    }
}

fn io_errno(error: std::io::Error) -> Errno {
    error.raw_os_error().map_or(Errno::EIO, Errno::from_raw)
}

/// Makes the entries of the directory at `dir` (files created, renamed or removed in it)
/// durable. The directory is reached as given: this is for directories the agent was configured
/// with (its state dir), not for paths below a root.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Directories whose fsync was deferred ([`Durability::DeferDirSync`]), each kept once (by
/// device and inode) however many files were renamed into it.
#[derive(Debug, Default)]
pub struct DirSyncs {
    dirs: Vec<((u64, u64), File)>,
}

impl DirSyncs {
    /// Adds a directory to sync; returns its position in the result of [`DirSyncs::sync_all`].
    pub fn add(&mut self, dir: OwnedFd) -> usize {
        let dir = File::from(dir);
        // By std's metadata, whose device and inode are 64 bits on every target (the raw stat
        // fields are narrower on 32-bit ARM). Without an identity the directory is synced alone.
        let identity = dir
            .metadata()
            .map_or((u64::MAX, self.dirs.len() as u64), |meta| {
                (meta.dev(), meta.ino())
            });
        match self.dirs.iter().position(|(known, _)| *known == identity) {
            Some(at) => at,
            None => {
                self.dirs.push((identity, dir));
                self.dirs.len() - 1
            }
        }
    }

    /// Fsyncs every directory added, in order, and forgets them.
    pub fn sync_all(&mut self) -> Vec<Result<(), Errno>> {
        let synced = self.dirs.iter().map(|(_, dir)| fsync(dir)).collect();
        self.dirs.clear();
        synced
    }
}
