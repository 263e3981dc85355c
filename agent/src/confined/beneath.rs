//! Opening beneath a root without following links: `openat2(2)` with `RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS` where the kernel has it, a component-by-component `O_NOFOLLOW` walk
//! where it does not (and wherever a directory must be created or a refusal explained).

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, open, openat, openat2};
use nix::sys::stat::{Mode, SFlag, mkdirat};
use nix::unistd::fsync;

use super::{ConfinedError, fstatat};

/// Set once the kernel has said it has no `openat2` (before Linux 5.6, or a seccomp filter that
/// answers ENOSYS); from then on only the walk is used.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// The flags every directory on a walk is opened with.
const DIR_FLAGS: OFlag = OFlag::O_DIRECTORY
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_RDONLY)
    .union(OFlag::O_CLOEXEC);

/// The directory that holds an entry (opened without following links) and the entry's name in it.
#[derive(Debug)]
pub struct Parent {
    pub dir: OwnedFd,
    pub name: OsString,
}

/// Opens a root directory. Roots are configured by the operator, so a root may itself be reached
/// through links; nothing below it is.
pub fn open_root(root: &Path, action: &'static str) -> Result<OwnedFd, ConfinedError> {
    open_dir(root).map_err(|errno| ConfinedError::os(root, action, errno))
}

/// [`open_root`] with the bare error of the system.
pub fn open_dir(root: &Path) -> Result<OwnedFd, Errno> {
    open(
        root,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// The names of `relative`, if every one of them is a plain name (no `/`, `.` or `..` anywhere):
/// such a path cannot leave the directory it is resolved in except through a link.
fn plain_names(relative: &Path) -> Option<Vec<&OsStr>> {
    relative
        .components()
        .map(|component| match component {
            Component::Normal(name) => Some(name),
            _ => None,
        })
        .collect()
}

/// `openat2` beneath `dir` with no link followed. `None`: the kernel does not have it (or a
/// filter refused it), so the caller walks instead.
fn try_openat2(
    dir: BorrowedFd<'_>,
    relative: &Path,
    flags: OFlag,
) -> Option<Result<OwnedFd, Errno>> {
    if NO_OPENAT2.load(Ordering::Relaxed) {
        return None;
    }
    let how = OpenHow::new()
        .flags(flags)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    match openat2(dir, relative, how) {
        Err(Errno::ENOSYS | Errno::E2BIG) => {
            NO_OPENAT2.store(true, Ordering::Relaxed);
            None
        }
        // Some container runtimes' filters answer EPERM for system calls they do not know, and
        // the kernel answers EAGAIN when a rename elsewhere raced the lookup: the walk then gives
        // the real answer (a real EPERM included).
        Err(Errno::EPERM | Errno::EAGAIN) => None,
        other => Some(other),
    }
}

/// Opens `relative` below `dir` with `flags` (`O_NOFOLLOW` and `O_CLOEXEC` are added), following
/// no link on the way or at the end and never leaving `dir`. The errors are the kernel's:
/// `ELOOP` for a link, `ENOTDIR`, `ENOENT`, and `EXDEV` for a path that is not plain names.
pub fn open_beneath<Fd: AsFd>(dir: Fd, relative: &Path, flags: OFlag) -> Result<OwnedFd, Errno> {
    let names = plain_names(relative).ok_or(Errno::EXDEV)?;
    let Some((last, directories)) = names.split_last() else {
        return Err(Errno::EXDEV);
    };
    let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    if let Some(opened) = try_openat2(dir.as_fd(), relative, flags) {
        return opened;
    }
    walk_beneath(dir.as_fd(), directories, last, flags)
}

/// The walk of [`open_beneath`] without `openat2`: every directory on the way, then the last
/// name, opened with `O_NOFOLLOW` relative to the one before.
pub(super) fn walk_beneath(
    dir: BorrowedFd<'_>,
    directories: &[&OsStr],
    last: &OsStr,
    flags: OFlag,
) -> Result<OwnedFd, Errno> {
    let mut current: Option<OwnedFd> = None;
    for name in directories {
        let at = current.as_ref().map_or(dir, AsFd::as_fd);
        current = Some(openat(at, *name, DIR_FLAGS, Mode::empty())?);
    }
    let at = current.as_ref().map_or(dir, AsFd::as_fd);
    openat(
        at,
        last,
        flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Opens the directory `name` in `dir` without following a link. `name` must be a plain name.
pub fn open_dir_at<Fd: AsFd>(dir: Fd, name: &OsStr) -> Result<OwnedFd, Errno> {
    check_plain(name)?;
    openat(dir.as_fd(), name, DIR_FLAGS, Mode::empty())
}

/// Opens the entry `name` in `dir` for reading without following a link; `extra` adds flags
/// (`O_NONBLOCK`, so that a FIFO swapped in cannot hang the reader). `name` must be a plain name.
pub fn open_file_at<Fd: AsFd>(dir: Fd, name: &OsStr, extra: OFlag) -> Result<OwnedFd, Errno> {
    check_plain(name)?;
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | extra;
    openat(dir.as_fd(), name, flags, Mode::empty())
}

/// Refuses (`EXDEV`) a name that is not one plain name: no `/`, not `.` or `..`.
pub(super) fn check_plain(name: &OsStr) -> Result<(), Errno> {
    match plain_names(Path::new(name)).as_deref() {
        Some([_]) => Ok(()),
        _ => Err(Errno::EXDEV),
    }
}

/// Opens the directory that holds `path`, which must lie strictly below `root` (whose
/// descriptor `root_fd` is), without following links. With `create_dirs`, missing directories
/// are created with that mode, and each new entry is made durable (its parent fsynced) before
/// anything is written below it. `None`: a directory is missing and `create_dirs` is not set.
///
/// The common case (every directory there, no link) is one `openat2`; anything else walks, so
/// that directories are created and a refusal names the link or the non-directory in the way.
pub fn open_parent(
    root_fd: OwnedFd,
    root: &Path,
    path: &Path,
    create_dirs: Option<u32>,
) -> Result<Option<Parent>, ConfinedError> {
    let not_beneath = || ConfinedError::NotBeneath {
        path: path.display().to_string(),
    };
    let relative = path.strip_prefix(root).map_err(|_| not_beneath())?;
    let names = plain_names(relative).ok_or_else(not_beneath)?;
    let Some((name, directories)) = names.split_last() else {
        return Err(not_beneath());
    };
    let name = name.to_os_string();
    if directories.is_empty() {
        return Ok(Some(Parent { dir: root_fd, name }));
    }
    let directory: PathBuf = directories.iter().collect();
    if let Some(Ok(dir)) = try_openat2(root_fd.as_fd(), &directory, DIR_FLAGS) {
        return Ok(Some(Parent { dir, name }));
    }
    let mut dir = root_fd;
    let mut walked = root.to_path_buf();
    for component in directories {
        walked.push(component);
        let next = match openat(&dir, *component, DIR_FLAGS, Mode::empty()) {
            Ok(next) => next,
            Err(Errno::ENOENT) if create_dirs.is_some() => {
                let mode = Mode::from_bits_truncate(create_dirs.unwrap_or_default());
                match mkdirat(&dir, *component, mode) {
                    // The new entry is made durable before anything is written below it: a
                    // file reported written must not vanish with its directory in a power cut
                    // because only the file itself was synced.
                    Ok(()) => fsync(&dir).map_err(|errno| {
                        ConfinedError::os(&walked, "sync the parent of the new directory", errno)
                    })?,
                    Err(Errno::EEXIST) => {}
                    Err(errno) => {
                        return Err(ConfinedError::os(&walked, "create directory", errno));
                    }
                }
                openat(&dir, *component, DIR_FLAGS, Mode::empty())
                    .map_err(|errno| classify(&dir, component, &walked, path, errno))?
            }
            Err(Errno::ENOENT) => return Ok(None),
            Err(errno) => return Err(classify(&dir, component, &walked, path, errno)),
        };
        dir = next;
    }
    Ok(Some(Parent { dir, name }))
}

/// Says why a directory on the way could not be opened: a link (refused), something that is not
/// a directory (occupied), or a plain error of the system.
fn classify(
    dir: &OwnedFd,
    component: &OsStr,
    walked: &Path,
    path: &Path,
    errno: Errno,
) -> ConfinedError {
    if matches!(errno, Errno::ELOOP | Errno::ENOTDIR)
        && let Ok(stat) = fstatat(dir, component, AtFlags::AT_SYMLINK_NOFOLLOW)
    {
        return if super::file_type(&stat) == SFlag::S_IFLNK {
            ConfinedError::SymlinkInPath {
                path: path.display().to_string(),
                link: walked.display().to_string(),
            }
        } else {
            ConfinedError::Occupied {
                path: path.display().to_string(),
                found: format!("a non-directory at {}", walked.display()),
            }
        };
    }
    ConfinedError::os(walked, "open directory", errno)
}
