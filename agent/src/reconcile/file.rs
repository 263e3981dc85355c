//! The File reconciler: regular files with inline content, written atomically under the
//! configured file roots.
//!
//! Every path is opened beneath its root through [`crate::confined`], so a symbolic link
//! anywhere below the root (a directory or the file itself) is refused instead of followed, and
//! a link swapped in between the check and the write cannot redirect it: the write happens
//! relative to the directory descriptor that was checked. Content is replaced atomically by
//! [`confined::replace`] (temporary file, fsync, rename, directory fsync), so the path always
//! holds either the old or the new file, never a torn one.
//!
//! The engine hands over a pass's File resources all at once ([`FileReconciler::apply_all`]);
//! the reconciler applies them in batches (`file/schedule.rs`): one blocking task per batch, and
//! a converged file is confirmed through the directories that batch has already walked to (stat,
//! then every byte compared). Anything else, drift included, goes through the full apply of that
//! one file, which walks from the root again.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fleetlet_manifests::{
    AccountName, ErrorReason, FileDetails, FileSpec, ResourceDetails, ResourceId,
};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::SFlag;
use nix::unistd::{Gid, Group, Uid, User};
use sha2::{Digest, Sha256};

use super::{Applied, Change, Deleted, Desired, KindReconciler, KnownSpec, ReconcileError, Target};
use crate::confined::{
    self, ConfinedError, DirSyncs, Durability, FileStat, ModeChoice, Parent, Replace, file_type,
    fstatat,
};
use crate::store::{Owned, OwnedFile};

mod batch;
mod schedule;

pub use schedule::{BATCH_SIZE, BatchResults};

/// Mode of the directories the reconciler creates on the way to a file.
const CREATED_DIR_MODE: u32 = 0o755;

/// Why a File resource could not be applied or deleted.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("path {path} is outside the configured file roots ({roots})")]
    OutsideRoots { path: String, roots: String },
    /// What the confined filesystem refused or failed at: a link in the way, an entry that is
    /// not a regular file, an I/O error. Its message is the confined module's, with an entry in
    /// the way named as one the agent cannot manage.
    #[error("{}{}", .0, not_manageable(.0))]
    Confined(#[source] ConfinedError),
    #[error("owner {owner} of {path} does not exist on this device")]
    OwnerNotFound { path: String, owner: String },
    #[error("group {group} of {path} does not exist on this device")]
    GroupNotFound { path: String, group: String },
    #[error("content of file resource {id} is not valid base64")]
    UndecodableContent { id: ResourceId },
    #[error("permission denied to {action} {path}")]
    PermissionDenied { path: String, action: &'static str },
    #[error("file worker for {path} stopped: {message}")]
    WorkerStopped { path: String, message: String },
}

/// What the message of an entry in the way adds: it is not something the agent manages.
fn not_manageable(error: &ConfinedError) -> &'static str {
    match error {
        ConfinedError::Occupied { .. } => ", not by a regular file the agent can manage",
        _ => "",
    }
}

impl FileError {
    pub fn reason(&self) -> ErrorReason {
        match self {
            FileError::OutsideRoots { .. }
            | FileError::Confined(
                ConfinedError::SymlinkInPath { .. } | ConfinedError::NotBeneath { .. },
            ) => ErrorReason::PathNotAllowed,
            FileError::Confined(ConfinedError::Occupied { .. }) => ErrorReason::Conflict,
            FileError::OwnerNotFound { .. } | FileError::GroupNotFound { .. } => {
                ErrorReason::OwnerNotFound
            }
            FileError::UndecodableContent { .. } => ErrorReason::InvalidSpec,
            FileError::PermissionDenied { .. } => ErrorReason::PermissionDenied,
            FileError::Confined(ConfinedError::Io { source, .. })
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                ) =>
            {
                ErrorReason::DiskFull
            }
            FileError::Confined(ConfinedError::Os {
                errno: Errno::ENOSPC | Errno::EDQUOT,
                ..
            }) => ErrorReason::DiskFull,
            FileError::Confined(ConfinedError::Io { .. } | ConfinedError::Os { .. })
            | FileError::WorkerStopped { .. } => ErrorReason::IoError,
        }
    }

    /// An I/O error, as the confined filesystem reports one.
    pub fn io(path: &Path, action: &'static str, source: std::io::Error) -> FileError {
        FileError::Confined(ConfinedError::io(path, action, source))
    }
}

/// Turns a failed system call into a [`FileError`], singling out missing permissions.
fn io_error(path: &Path, action: &'static str, errno: Errno) -> FileError {
    match errno {
        Errno::EACCES | Errno::EPERM => FileError::PermissionDenied {
            path: path.display().to_string(),
            action,
        },
        _ => FileError::io(path, action, errno.into()),
    }
}

fn std_io_error(path: &Path, action: &'static str, error: std::io::Error) -> FileError {
    match error.raw_os_error() {
        Some(raw) => io_error(path, action, Errno::from_raw(raw)),
        None => FileError::io(path, action, error),
    }
}

impl From<ConfinedError> for FileError {
    /// Wrapped as it is, but for a path not beneath its root (said as a File path outside the
    /// roots) and a failed system call (missing permissions singled out, as [`io_error`] does).
    fn from(error: ConfinedError) -> Self {
        match error {
            ConfinedError::NotBeneath { path } => FileError::OutsideRoots {
                roots: "the root it was opened beneath".into(),
                path,
            },
            ConfinedError::Os {
                path,
                action,
                errno,
            } => io_error(Path::new(&path), action, errno),
            ConfinedError::Io {
                path,
                action,
                source,
            } => std_io_error(Path::new(&path), action, source),
            other => FileError::Confined(other),
        }
    }
}

/// Writes File resources under a fixed set of roots. Cheap to clone.
#[derive(Debug, Clone)]
pub struct FileReconciler {
    roots: Arc<[PathBuf]>,
}

/// The spec with content decoded and owner and group resolved to ids.
struct DesiredFile {
    content: Vec<u8>,
    sha256: String,
    mode: u32,
    uid: Option<Uid>,
    gid: Option<Gid>,
}

/// What was found at a file's path.
enum Observed {
    Missing,
    /// A regular file; `drift` names what differs from the spec (empty: it matches).
    Present {
        drift: Vec<&'static str>,
    },
}

impl FileReconciler {
    pub fn new(roots: Vec<PathBuf>) -> Self {
        Self {
            roots: roots.into(),
        }
    }

    pub fn apply_blocking(
        &self,
        id: &ResourceId,
        spec: &FileSpec,
        spec_hash: &str,
        previous: Option<&(String, OwnedFile)>,
    ) -> Result<Applied, FileError> {
        self.apply_with(id, spec, spec_hash, previous, DirSync::Now)
            .map(|(applied, _)| applied)
    }

    /// The full apply. With [`DirSync::Deferred`], a file written is not yet durable in its
    /// directory: the directory is returned, to be fsynced (once for every file of a batch
    /// written into it) before the result is reported.
    fn apply_with(
        &self,
        id: &ResourceId,
        spec: &FileSpec,
        spec_hash: &str,
        previous: Option<&(String, OwnedFile)>,
        dir_sync: DirSync,
    ) -> Result<(Applied, Option<OwnedFd>), FileError> {
        let path = spec.path.as_path();
        let desired = resolve_desired(id, spec)?;
        let parent = self.open_parent(path, true)?.ok_or_else(|| {
            FileError::io(
                path,
                "open the directory of",
                std::io::ErrorKind::NotFound.into(),
            )
        })?;
        let observed = observe(&parent, path, &desired)?;

        let same_path_before = previous.filter(|(_, owned)| Path::new(&owned.path) == path);
        let change = match (&observed, same_path_before) {
            (Observed::Present { drift }, _) if drift.is_empty() => Change::Unchanged,
            (Observed::Missing, None) => Change::Created,
            (Observed::Missing, Some(_)) => Change::Repaired {
                drift: "the file was deleted".into(),
            },
            (Observed::Present { .. }, None) => Change::Adopted,
            (Observed::Present { drift }, Some((hash_before, _))) if hash_before == spec_hash => {
                Change::Repaired {
                    drift: format!("{} changed", drift.join(", ")),
                }
            }
            (Observed::Present { .. }, Some(_)) => Change::Updated,
        };
        let written_now = change != Change::Unchanged;
        if written_now {
            write_atomically(&parent, path, &desired, dir_sync)?;
        }
        let written = stat_entry(&parent, path)?.ok_or_else(|| {
            FileError::io(
                path,
                "find the file just written at",
                std::io::ErrorKind::NotFound.into(),
            )
        })?;

        // A file keeps the "created by the agent" mark it got when it was first written; a path
        // that held a file before the agent's first write stays adopted.
        let created = match same_path_before {
            Some((_, owned)) => owned.created,
            None => matches!(observed, Observed::Missing),
        };
        // The resource moved to another path: the old file is ours to remove if we created it.
        if let Some((_, old)) = previous.filter(|(_, owned)| Path::new(&owned.path) != path)
            && let Err(error) = self.delete_blocking(id, old)
        {
            tracing::warn!(resource = %id, %error, "could not remove the file at the resource's previous path");
        }

        let applied = Applied {
            change,
            owned: Owned::File(OwnedFile {
                path: path.display().to_string(),
                created,
                sha256: desired.sha256.clone(),
            }),
            details: Some(ResourceDetails::File(details_of(&written, &desired.sha256))),
        };
        let unsynced = (written_now && dir_sync == DirSync::Deferred).then_some(parent.dir);
        Ok((applied, unsynced))
    }

    pub fn delete_blocking(
        &self,
        id: &ResourceId,
        owned: &OwnedFile,
    ) -> Result<Deleted, FileError> {
        if !owned.created {
            return Ok(Deleted::Released {
                why: format!(
                    "{} existed before the agent managed it, so it is left in place",
                    owned.path
                ),
            });
        }
        let path = Path::new(&owned.path);
        let parent = match self.open_parent(path, false) {
            Ok(Some(parent)) => parent,
            Ok(None) => return Ok(Deleted::AlreadyGone),
            // The roots changed or a link was put in the way: reaching the file would mean
            // following something we refuse to follow, so we stop managing it instead.
            Err(
                error @ (FileError::OutsideRoots { .. }
                | FileError::Confined(ConfinedError::SymlinkInPath { .. })),
            ) => {
                tracing::warn!(resource = %id, %error, "file left in place");
                return Ok(Deleted::Released {
                    why: error.to_string(),
                });
            }
            Err(error) => return Err(error),
        };
        match stat_entry(&parent, path)? {
            None => return Ok(Deleted::AlreadyGone),
            Some(stat) if file_type(&stat) != SFlag::S_IFREG => {
                return Ok(Deleted::Released {
                    why: format!("{} is no longer a regular file", owned.path),
                });
            }
            Some(_) => {}
        }
        confined::remove_at(&parent.dir, &parent.name, path, true)?;
        Ok(Deleted::Removed)
    }

    /// The root that `path` lies strictly below.
    fn root_of(&self, path: &Path) -> Result<&Path, FileError> {
        self.roots
            .iter()
            .map(PathBuf::as_path)
            .find(|root| path != *root && path.starts_with(root))
            .ok_or_else(|| FileError::OutsideRoots {
                path: path.display().to_string(),
                roots: if self.roots.is_empty() {
                    "none configured".into()
                } else {
                    self.roots
                        .iter()
                        .map(|r| r.display().to_string())
                        .collect::<Vec<_>>()
                        .join(":")
                },
            })
    }

    /// Opens the directory that holds `path` beneath its root without following links,
    /// creating missing directories when `create` is set. `None`: a directory is missing (and
    /// `create` is not set).
    fn open_parent(&self, path: &Path, create: bool) -> Result<Option<Parent>, FileError> {
        let root = self.root_of(path)?;
        let root_fd = confined::open_root(root, "open the file root")?;
        let create_dirs = create.then_some(CREATED_DIR_MODE);
        confined::open_parent(root_fd, root, path, create_dirs).map_err(|error| match error {
            // A `.` or `..` in the path, or the root itself: not a path strictly below it.
            ConfinedError::NotBeneath { path } => FileError::OutsideRoots {
                path,
                roots: root.display().to_string(),
            },
            other => other.into(),
        })
    }
}

/// Stats the entry `parent.name` without following it; `None` when it does not exist.
fn stat_entry(parent: &Parent, path: &Path) -> Result<Option<FileStat>, FileError> {
    match fstatat(
        &parent.dir,
        parent.name.as_os_str(),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        Ok(stat) => Ok(Some(stat)),
        Err(Errno::ENOENT) => Ok(None),
        Err(errno) => Err(io_error(path, "inspect", errno)),
    }
}

fn resolve_desired(id: &ResourceId, spec: &FileSpec) -> Result<DesiredFile, FileError> {
    let path = spec.path.as_path();
    let content = spec
        .content
        .bytes()
        .map_err(|_| FileError::UndecodableContent { id: id.clone() })?;
    let sha256 = hex::encode(Sha256::digest(&content));
    let uid = spec
        .owner
        .as_ref()
        .map(|owner| resolve_user(owner, path))
        .transpose()?;
    let gid = spec
        .group
        .as_ref()
        .map(|group| resolve_group(group, path))
        .transpose()?;
    Ok(DesiredFile {
        content,
        sha256,
        mode: spec.mode.bits(),
        uid,
        gid,
    })
}

fn resolve_user(owner: &AccountName, path: &Path) -> Result<Uid, FileError> {
    if let Ok(raw) = owner.as_str().parse::<u32>() {
        return Ok(Uid::from_raw(raw));
    }
    match User::from_name(owner.as_str()) {
        Ok(Some(user)) => Ok(user.uid),
        Ok(None) => Err(FileError::OwnerNotFound {
            path: path.display().to_string(),
            owner: owner.to_string(),
        }),
        Err(errno) => Err(io_error(path, "look up the owner of", errno)),
    }
}

fn resolve_group(group: &AccountName, path: &Path) -> Result<Gid, FileError> {
    if let Ok(raw) = group.as_str().parse::<u32>() {
        return Ok(Gid::from_raw(raw));
    }
    match Group::from_name(group.as_str()) {
        Ok(Some(found)) => Ok(found.gid),
        Ok(None) => Err(FileError::GroupNotFound {
            path: path.display().to_string(),
            group: group.to_string(),
        }),
        Err(errno) => Err(io_error(path, "look up the group of", errno)),
    }
}

/// Compares what is at the path with the desired file: type, mode, owner, group, then content
/// (hashed only when the size already matches).
fn observe(parent: &Parent, path: &Path, desired: &DesiredFile) -> Result<Observed, FileError> {
    let Some(stat) = stat_entry(parent, path)? else {
        return Ok(Observed::Missing);
    };
    match file_type(&stat) {
        SFlag::S_IFREG => {}
        SFlag::S_IFLNK => {
            return Err(FileError::Confined(ConfinedError::SymlinkInPath {
                path: path.display().to_string(),
                link: path.display().to_string(),
            }));
        }
        SFlag::S_IFDIR => {
            return Err(FileError::Confined(ConfinedError::Occupied {
                path: path.display().to_string(),
                found: "a directory".into(),
            }));
        }
        _ => {
            return Err(FileError::Confined(ConfinedError::Occupied {
                path: path.display().to_string(),
                found: "a special file".into(),
            }));
        }
    }
    let mut drift = Vec::new();
    if stat.st_mode & 0o7777 != desired.mode {
        drift.push("mode");
    }
    if desired.uid.is_some_and(|uid| uid.as_raw() != stat.st_uid) {
        drift.push("owner");
    }
    if desired.gid.is_some_and(|gid| gid.as_raw() != stat.st_gid) {
        drift.push("group");
    }
    let same_size = u64::try_from(stat.st_size).ok() == Some(desired.content.len() as u64);
    if !same_size || hash_entry(parent, path)? != desired.sha256 {
        drift.push("content");
    }
    Ok(Observed::Present { drift })
}

fn hash_entry(parent: &Parent, path: &Path) -> Result<String, FileError> {
    let fd = confined::open_file_at(&parent.dir, &parent.name, OFlag::empty())
        .map_err(|errno| io_error(path, "open", errno))?;
    let mut file = File::from(fd);
    let mut hasher = Sha256::new();
    let mut buffer = [0u8; 64 * 1024];
    loop {
        let read = file
            .read(&mut buffer)
            .map_err(|error| std_io_error(path, "read", error))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Ends the name of the temporary file a File is written to, `.<name>.fleetlet-tmp`.
const TEMP_SUFFIX: &str = ".fleetlet-tmp";

/// Replaces the file atomically through [`confined::replace`]: owner, mode, content, fsync,
/// rename over the target, and the directory fsynced now or (deferred) by the caller.
fn write_atomically(
    parent: &Parent,
    path: &Path,
    desired: &DesiredFile,
    dir_sync: DirSync,
) -> Result<(), FileError> {
    let how = Replace {
        mode: ModeChoice::Exact(desired.mode),
        uid: desired.uid,
        gid: desired.gid,
        durability: match dir_sync {
            DirSync::Now => Durability::Full,
            DirSync::Deferred => Durability::DeferDirSync,
        },
        temp_suffix: TEMP_SUFFIX,
    };
    Ok(confined::replace(
        &parent.dir,
        &parent.name,
        path,
        &desired.content,
        &how,
    )?)
}

/// When the directory of a file just renamed into place is fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DirSync {
    /// Before the write returns.
    Now,
    /// By the caller, before it reports the file ([`PendingDirSyncs`]).
    Deferred,
}

/// Details as found on disk after the apply, so that the status tells what is there.
impl KindReconciler for FileReconciler {
    type Spec = FileSpec;
    type Owned = OwnedFile;
    type Error = FileError;

    fn owned(owned: &Owned) -> Option<&OwnedFile> {
        match owned {
            Owned::File(owned) => Some(owned),
            _ => None,
        }
    }

    /// Applies one File resource. The work is blocking file I/O, so it runs on the blocking pool.
    async fn apply(&self, target: Target<'_, FileSpec, OwnedFile>) -> Result<Applied, FileError> {
        let this = self.clone();
        let (id, spec, spec_hash) = (
            target.id.clone(),
            target.spec.clone(),
            target.spec_hash.to_owned(),
        );
        let previous = target
            .previous
            .map(|previous| (previous.spec_hash.to_owned(), previous.owned.clone()));
        let path = spec.path.to_string();
        tokio::task::spawn_blocking(move || {
            this.apply_blocking(&id, &spec, &spec_hash, previous.as_ref())
        })
        .await
        .unwrap_or_else(|join| {
            Err(FileError::WorkerStopped {
                path,
                message: join.to_string(),
            })
        })
    }

    /// Deletes a file the agent owns (see [`OwnedFile::created`]).
    async fn delete(&self, id: &ResourceId, owned: &OwnedFile) -> Result<Deleted, FileError> {
        let this = self.clone();
        let (id, owned) = (id.clone(), owned.clone());
        let path = owned.path.clone();
        tokio::task::spawn_blocking(move || this.delete_blocking(&id, &owned))
            .await
            .unwrap_or_else(|join| {
                Err(FileError::WorkerStopped {
                    path,
                    message: join.to_string(),
                })
            })
    }
}

fn details_of(stat: &FileStat, sha256: &str) -> FileDetails {
    FileDetails {
        sha256: sha256.to_owned(),
        size: u64::try_from(stat.st_size).unwrap_or_default(),
        mode: format!("{:04o}", stat.st_mode & 0o7777),
        owner: Some(user_name(stat.st_uid)),
        group: Some(group_name(stat.st_gid)),
    }
}

/// `bytes` in lowercase hex, as `hex::encode` writes them (without its per-character iterator:
/// this runs for every converged file of every pass).
fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

/// The account name of a user id, or the number when it has none.
fn user_name(uid: u32) -> String {
    let uid = Uid::from_raw(uid);
    User::from_uid(uid)
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |user| user.name)
}

fn group_name(gid: u32) -> String {
    let gid = Gid::from_raw(gid);
    Group::from_gid(gid)
        .ok()
        .flatten()
        .map_or_else(|| gid.to_string(), |group| group.name)
}

#[cfg(test)]
mod tests;
