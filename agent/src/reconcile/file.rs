//! The File reconciler: regular files with inline content, written atomically under the
//! configured file roots.
//!
//! Every path is walked from its root one component at a time with `openat(O_NOFOLLOW)`, so a
//! symbolic link anywhere below the root (a directory or the file itself) is refused instead of
//! followed, and a link swapped in between the check and the write cannot redirect it: the write
//! happens relative to the directory descriptor that was checked. Content goes to a temporary
//! file in the target's own directory, is fsync'ed, renamed over the target, and the directory is
//! fsync'ed, so the path always holds either the old or the new file, never a torn one.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fleetlet_manifests::{
    AccountName, ErrorReason, FileDetails, FileSpec, ResourceDetails, ResourceId,
};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, open, openat, renameat};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstatat, mkdirat};
use nix::unistd::{Gid, Group, Uid, UnlinkatFlags, User, fchown, fsync, unlinkat};
use sha2::{Digest, Sha256};

use super::{Applied, Change, Deleted};
use crate::store::{Owned, OwnedFile};

/// Mode of the directories the reconciler creates on the way to a file.
const CREATED_DIR_MODE: u32 = 0o755;

/// Why a File resource could not be applied or deleted.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("path {path} is outside the configured file roots ({roots})")]
    OutsideRoots { path: String, roots: String },
    #[error("path {path} goes through the symbolic link {link}, which is not followed")]
    SymlinkInPath { path: String, link: String },
    #[error("path {path} is occupied by {found}, not by a regular file the agent can manage")]
    Occupied { path: String, found: String },
    #[error("owner {owner} of {path} does not exist on this device")]
    OwnerNotFound { path: String, owner: String },
    #[error("group {group} of {path} does not exist on this device")]
    GroupNotFound { path: String, group: String },
    #[error("content of file resource {id} is not valid base64")]
    UndecodableContent { id: ResourceId },
    #[error("permission denied to {action} {path}")]
    PermissionDenied { path: String, action: &'static str },
    #[error("could not {action} {path}: {source}")]
    Io {
        path: String,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("file worker for {path} stopped: {message}")]
    WorkerStopped { path: String, message: String },
}

impl FileError {
    pub fn reason(&self) -> ErrorReason {
        match self {
            FileError::OutsideRoots { .. } | FileError::SymlinkInPath { .. } => {
                ErrorReason::PathNotAllowed
            }
            FileError::Occupied { .. } => ErrorReason::Conflict,
            FileError::OwnerNotFound { .. } | FileError::GroupNotFound { .. } => {
                ErrorReason::OwnerNotFound
            }
            FileError::UndecodableContent { .. } => ErrorReason::InvalidSpec,
            FileError::PermissionDenied { .. } => ErrorReason::PermissionDenied,
            FileError::Io { .. } | FileError::WorkerStopped { .. } => ErrorReason::IoError,
        }
    }
}

/// Turns a failed system call into a [`FileError`], singling out missing permissions.
fn io_error(path: &Path, action: &'static str, errno: Errno) -> FileError {
    let path = path.display().to_string();
    match errno {
        Errno::EACCES | Errno::EPERM => FileError::PermissionDenied { path, action },
        _ => FileError::Io {
            path,
            action,
            source: errno.into(),
        },
    }
}

fn std_io_error(path: &Path, action: &'static str, error: std::io::Error) -> FileError {
    match error.raw_os_error() {
        Some(raw) => io_error(path, action, Errno::from_raw(raw)),
        None => FileError::Io {
            path: path.display().to_string(),
            action,
            source: error,
        },
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

/// The directory that holds a file (opened without following links) and the file's name in it.
struct Parent {
    dir: OwnedFd,
    name: OsString,
}

impl FileReconciler {
    pub fn new(roots: Vec<PathBuf>) -> Self {
        Self {
            roots: roots.into(),
        }
    }

    /// Applies one File resource. `previous` is the spec hash and ownership of the last
    /// successful apply. The work is blocking file I/O, so it runs on the blocking pool.
    pub async fn apply(
        &self,
        id: ResourceId,
        spec: FileSpec,
        spec_hash: String,
        previous: Option<(String, OwnedFile)>,
    ) -> Result<Applied, FileError> {
        let this = self.clone();
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
    pub async fn delete(&self, id: ResourceId, owned: OwnedFile) -> Result<Deleted, FileError> {
        let this = self.clone();
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

    pub fn apply_blocking(
        &self,
        id: &ResourceId,
        spec: &FileSpec,
        spec_hash: &str,
        previous: Option<&(String, OwnedFile)>,
    ) -> Result<Applied, FileError> {
        let path = spec.path.as_path();
        let desired = resolve_desired(id, spec)?;
        let parent = self.open_parent(path, true)?.ok_or_else(|| FileError::Io {
            path: path.display().to_string(),
            action: "open the directory of",
            source: std::io::ErrorKind::NotFound.into(),
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
        if change != Change::Unchanged {
            write_atomically(&parent, path, &desired)?;
        }
        let written = stat_entry(&parent, path)?.ok_or_else(|| FileError::Io {
            path: path.display().to_string(),
            action: "find the file just written at",
            source: std::io::ErrorKind::NotFound.into(),
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

        Ok(Applied {
            change,
            owned: Owned::File(OwnedFile {
                path: path.display().to_string(),
                created,
                sha256: desired.sha256.clone(),
            }),
            details: Some(ResourceDetails::File(details_of(&written, &desired.sha256))),
        })
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
            Err(error @ (FileError::OutsideRoots { .. } | FileError::SymlinkInPath { .. })) => {
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
        match unlinkat(
            &parent.dir,
            parent.name.as_os_str(),
            UnlinkatFlags::NoRemoveDir,
        ) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(errno) => return Err(io_error(path, "remove", errno)),
        }
        fsync(&parent.dir).map_err(|errno| io_error(path, "sync the directory of", errno))?;
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

    /// Walks from the root to the directory that holds `path` without following links, creating
    /// missing directories when `create` is set. `None`: a directory is missing (and `create` is
    /// not set).
    fn open_parent(&self, path: &Path, create: bool) -> Result<Option<Parent>, FileError> {
        let root = self.root_of(path)?;
        let relative = path
            .strip_prefix(root)
            .map_err(|_| FileError::OutsideRoots {
                path: path.display().to_string(),
                roots: root.display().to_string(),
            })?;
        let components: Vec<&OsStr> = relative.iter().collect();
        let Some((name, directories)) = components.split_last() else {
            return Err(FileError::OutsideRoots {
                path: path.display().to_string(),
                roots: root.display().to_string(),
            });
        };
        // The root itself is configured by the operator, so it may be reached through links.
        let mut dir = open(
            root,
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| io_error(root, "open the file root", errno))?;
        let mut walked = root.to_path_buf();
        for component in directories {
            walked.push(component);
            let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC;
            let next = match openat(&dir, *component, flags, Mode::empty()) {
                Ok(next) => next,
                Err(Errno::ENOENT) if create => {
                    match mkdirat(&dir, *component, Mode::from_bits_truncate(CREATED_DIR_MODE)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(errno) => return Err(io_error(&walked, "create directory", errno)),
                    }
                    openat(&dir, *component, flags, Mode::empty()).map_err(|errno| {
                        classify_open_failure(&dir, component, &walked, path, errno)
                    })?
                }
                Err(Errno::ENOENT) => return Ok(None),
                Err(errno) => {
                    return Err(classify_open_failure(&dir, component, &walked, path, errno));
                }
            };
            dir = next;
        }
        Ok(Some(Parent {
            dir,
            name: name.to_os_string(),
        }))
    }
}

/// Says why a directory component could not be opened: a link (refused), something that is not
/// a directory (occupied), or a plain I/O error.
fn classify_open_failure(
    dir: &OwnedFd,
    component: &OsStr,
    walked: &Path,
    path: &Path,
    errno: Errno,
) -> FileError {
    if matches!(errno, Errno::ELOOP | Errno::ENOTDIR)
        && let Ok(stat) = fstatat(dir, component, AtFlags::AT_SYMLINK_NOFOLLOW)
    {
        return if file_type(&stat) == SFlag::S_IFLNK {
            FileError::SymlinkInPath {
                path: path.display().to_string(),
                link: walked.display().to_string(),
            }
        } else {
            FileError::Occupied {
                path: path.display().to_string(),
                found: format!("a non-directory at {}", walked.display()),
            }
        };
    }
    io_error(walked, "open directory", errno)
}

fn file_type(stat: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits())
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
            return Err(FileError::SymlinkInPath {
                path: path.display().to_string(),
                link: path.display().to_string(),
            });
        }
        SFlag::S_IFDIR => {
            return Err(FileError::Occupied {
                path: path.display().to_string(),
                found: "a directory".into(),
            });
        }
        _ => {
            return Err(FileError::Occupied {
                path: path.display().to_string(),
                found: "a special file".into(),
            });
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
    let fd = openat(
        &parent.dir,
        parent.name.as_os_str(),
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
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

/// The name of the temporary file next to `name`. It is deterministic so that a temporary file
/// left by a crash is reused (and so cleaned up) by the next write instead of piling up.
fn temporary_name(name: &OsStr) -> OsString {
    let mut temporary = OsString::from(".");
    temporary.push(name);
    temporary.push(".fleetlet-tmp");
    temporary
}

/// Replaces the file atomically: temporary file in the same directory, owner, mode, content,
/// fsync, rename over the target, fsync of the directory.
fn write_atomically(parent: &Parent, path: &Path, desired: &DesiredFile) -> Result<(), FileError> {
    let temporary = temporary_name(&parent.name);
    match unlinkat(
        &parent.dir,
        temporary.as_os_str(),
        UnlinkatFlags::NoRemoveDir,
    ) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(errno) => return Err(io_error(path, "remove the stale temporary file of", errno)),
    }
    let fd = openat(
        &parent.dir,
        temporary.as_os_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(|errno| io_error(path, "create a temporary file for", errno))?;
    let result = fill_and_rename(parent, path, &temporary, File::from(fd), desired);
    if result.is_err() {
        // Best effort: the next write removes a leftover temporary file anyway.
        let _ = unlinkat(
            &parent.dir,
            temporary.as_os_str(),
            UnlinkatFlags::NoRemoveDir,
        );
    }
    result
}

fn fill_and_rename(
    parent: &Parent,
    path: &Path,
    temporary: &OsStr,
    mut file: File,
    desired: &DesiredFile,
) -> Result<(), FileError> {
    if desired.uid.is_some() || desired.gid.is_some() {
        fchown(&file, desired.uid, desired.gid)
            .map_err(|errno| io_error(path, "change the owner of", errno))?;
    }
    // After chown, which clears set-id bits, and without the umask getting in the way.
    fchmod(&file, Mode::from_bits_truncate(desired.mode))
        .map_err(|errno| io_error(path, "change the mode of", errno))?;
    file.write_all(&desired.content)
        .map_err(|error| std_io_error(path, "write", error))?;
    file.sync_all()
        .map_err(|error| std_io_error(path, "sync", error))?;
    drop(file);
    renameat(&parent.dir, temporary, &parent.dir, parent.name.as_os_str())
        .map_err(|errno| io_error(path, "rename the temporary file onto", errno))?;
    fsync(&parent.dir).map_err(|errno| io_error(path, "sync the directory of", errno))
}

/// Details as found on disk after the apply, so that the status tells what is there.
fn details_of(stat: &FileStat, sha256: &str) -> FileDetails {
    let uid = Uid::from_raw(stat.st_uid);
    let gid = Gid::from_raw(stat.st_gid);
    FileDetails {
        sha256: sha256.to_owned(),
        size: u64::try_from(stat.st_size).unwrap_or_default(),
        mode: format!("{:04o}", stat.st_mode & 0o7777),
        owner: Some(
            User::from_uid(uid)
                .ok()
                .flatten()
                .map_or_else(|| uid.to_string(), |user| user.name),
        ),
        group: Some(
            Group::from_gid(gid)
                .ok()
                .flatten()
                .map_or_else(|| gid.to_string(), |group| group.name),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

    use fleetlet_manifests::{Resource, ResourceSpec};
    use serde_json::json;

    use super::*;

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

    fn resource(
        id: &str,
        path: &Path,
        text: &str,
        mode: &str,
        extra: serde_json::Value,
    ) -> Resource {
        let mut spec =
            json!({"path": path.display().to_string(), "content": {"text": text}, "mode": mode});
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        serde_json::from_value(json!({"id": id, "kind": "File", "spec": spec}))
            .expect("valid resource")
    }

    fn spec_of(resource: &Resource) -> &FileSpec {
        match &resource.spec {
            ResourceSpec::File(spec) => spec,
            other => panic!("not a file spec: {other:?}"),
        }
    }

    impl Fixture {
        fn apply(
            &self,
            resource: &Resource,
            previous: Option<&Applied>,
        ) -> Result<Applied, FileError> {
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
}
