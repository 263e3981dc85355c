//! The SessionStorage reconciler: one directory per session under the configured session root,
//! with a summary (size, file count, content hash), a size limit and an expiry.
//!
//! Layout, named only from the resource id and the session id (never from a path in the
//! manifest; neither id may contain `@`, so the name is unambiguous):
//!
//! ```text
//! <session-root>/<resourceId>@<sessionId>/                     0700, the agent's
//! <session-root>/<resourceId>@<sessionId>/fleetlet-session.json the ownership marker (0600)
//! <session-root>/<resourceId>@<sessionId>/data/                 0700, what containers mount
//! ```
//!
//! The marker names the agent, the resource and the session, and records the expiry, the time
//! of an eviction and the last summary. It sits *beside* the data, not in it, so a container
//! that mounts the data cannot forge or delete it. A directory without a matching marker is
//! never modified or removed.
//!
//! Summaries are computed on the blocking pool, one task per session: an apply starts a refresh
//! when none is running, waits for it a short while ([`SUMMARY_WAIT`]) and otherwise reports the
//! last completed summary. A session of a hundred thousand files therefore never holds up the
//! pass; its summary is at most one refresh old.
//!
//! The content hash is sha256 over one record per non-directory entry below `data/`, in
//! depth-first order with the entries of each directory sorted by name (bytes), where `path` is
//! the `/`-separated path relative to `data/`:
//!
//! - regular file: `F\0<path>\0<size in decimal>\0<hex sha256 of the content>\n`
//! - symbolic link (never followed): `L\0<path>\0<link target>\n`
//! - anything else (fifo, socket, device): `O\0<path>\n`
//!
//! `sizeBytes` is the sum of regular file sizes and `filesCount` the number of records.

use std::collections::{BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use fleetlet_manifests::{
    ErrorReason, Resource, ResourceDetails, ResourceId, ResourceSpec, SessionId,
    SessionStorageDetails, SessionStorageSpec,
};
use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, readlinkat};
use nix::sys::stat::{Mode, SFlag, fstat, fstatat, mkdirat};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio::task::JoinHandle;

use super::{Applied, Change, Deleted, FileError, KindReconciler, Target};
use crate::confined::{self, ConfinedError, Durability, ModeChoice, Parent, Replace, file_type};
use crate::store::{Owned, OwnedSession};

/// The ownership marker's file name, beside the data directory.
pub const MARKER_NAME: &str = "fleetlet-session.json";
/// The directory that holds the session's data and that containers mount.
pub const DATA_DIR: &str = "data";
/// How long an apply waits for a summary refresh before it reports the last completed one. Small
/// sessions are summarised well within it, so their status is current on every pass.
pub const SUMMARY_WAIT: Duration = Duration::from_millis(200);
/// How soon a session over its quota is looked at again: usage can drop at any moment, and the
/// engine's growing backoff would otherwise report `QuotaExceeded` long after it stopped being true.
pub const QUOTA_RECHECK: Duration = Duration::from_secs(5);
/// Directories nested deeper than this are not summarised (each level holds a descriptor open).
const MAX_DEPTH: usize = 256;
/// A marker is a few hundred bytes; anything much larger is not ours.
const MAX_MARKER_BYTES: u64 = 64 * 1024;
/// Only the agent's user may enter a session directory. Root containers (and rootless podman,
/// whose root is the agent's user) have full access to the mounted data.
const SESSION_DIR_MODE: u32 = 0o700;
/// Mode of the marker: only the agent reads it.
const MARKER_MODE: u32 = 0o600;
/// Ends the name of the temporary file the marker is written to.
const TEMP_SUFFIX: &str = ".fleetlet-tmp";

/// Why a SessionStorage resource could not be applied or deleted.
#[derive(Debug, thiserror::Error)]
pub enum SessionStorageError {
    #[error("session storage resource {id}: no session root is configured")]
    NoRoot { id: ResourceId },
    #[error(
        "session storage resource {id}: {path} exists but carries no marker of this agent for this session, so it is left alone"
    )]
    Foreign { id: ResourceId, path: String },
    #[error("session storage resource {id}: could not {action} {path}: {message}")]
    Io {
        id: ResourceId,
        path: String,
        action: &'static str,
        message: String,
    },
    #[error("session storage resource {id}: writing the marker failed: {source}")]
    Marker {
        id: ResourceId,
        #[source]
        source: FileError,
    },
    #[error(
        "session storage resource {id} uses {used} bytes, more than its limit of {limit} bytes"
    )]
    QuotaExceeded {
        id: ResourceId,
        used: u64,
        limit: u64,
        details: Box<SessionStorageDetails>,
    },
    #[error(
        "session storage resource {id}: session {session} expired at {expires_at} and its data was deleted; it stays evicted until the manifest gives a new session id or a later expiry"
    )]
    Evicted {
        id: ResourceId,
        session: SessionId,
        expires_at: String,
        details: Box<SessionStorageDetails>,
    },
    #[error("session storage resource {id}: summarising {path} failed: {message}")]
    Summary {
        id: ResourceId,
        path: String,
        message: String,
    },
    #[error("session storage resource {id}: worker stopped: {message}")]
    WorkerStopped { id: ResourceId, message: String },
}

impl SessionStorageError {
    pub fn reason(&self) -> ErrorReason {
        match self {
            SessionStorageError::NoRoot { .. } => ErrorReason::StorageNotReady,
            SessionStorageError::Foreign { .. } => ErrorReason::Conflict,
            SessionStorageError::Marker { source, .. } => source.reason(),
            SessionStorageError::QuotaExceeded { .. } => ErrorReason::QuotaExceeded,
            SessionStorageError::Evicted { .. } => ErrorReason::SessionStorageEvicted,
            SessionStorageError::Io { .. }
            | SessionStorageError::Summary { .. }
            | SessionStorageError::WorkerStopped { .. } => ErrorReason::IoError,
        }
    }

    /// The summary seen by the failed apply: usage over quota, or the eviction time.
    pub fn details(&self) -> Option<ResourceDetails> {
        match self {
            SessionStorageError::QuotaExceeded { details, .. }
            | SessionStorageError::Evicted { details, .. } => {
                Some(ResourceDetails::SessionStorage(details.as_ref().clone()))
            }
            _ => None,
        }
    }

    pub fn retry_in(&self) -> Option<Duration> {
        match self {
            SessionStorageError::QuotaExceeded { .. } => Some(QUOTA_RECHECK),
            _ => None,
        }
    }
}

/// What a session's content adds up to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub size_bytes: u64,
    pub files_count: u64,
    pub sha256: String,
}

impl Summary {
    /// The summary of an empty directory.
    pub fn empty() -> Self {
        Self {
            size_bytes: 0,
            files_count: 0,
            sha256: hex::encode(Sha256::digest(b"")),
        }
    }
}

/// The ownership marker beside a session's data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Marker {
    agent_id: String,
    resource_id: String,
    session_id: String,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    expires_at: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    evicted_at: Option<OffsetDateTime>,
    #[serde(default)]
    summary: Option<Summary>,
}

/// What a container may do with the session storage it mounts; kept by the SessionStorage
/// reconciler, read by the Container reconciler. SessionStorage applies before Container in
/// every pass, so a container sees the state of the same pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeState {
    /// The data directory exists (possibly over quota: the workload may be what frees space).
    Ready { path: PathBuf },
    /// Expired and deleted: a container must not start on an empty directory in its place.
    Evicted,
    /// Not created (yet), or its last apply failed.
    NotReady { why: String },
}

/// The shared view of session storage states by resource id. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct SessionVolumes {
    states: Arc<RwLock<HashMap<ResourceId, VolumeState>>>,
}

impl SessionVolumes {
    /// The state of session storage `id`; `NotReady` when nothing is known of it.
    pub fn get(&self, id: &ResourceId) -> VolumeState {
        self.states
            .read()
            .ok()
            .and_then(|states| states.get(id).cloned())
            .unwrap_or_else(|| VolumeState::NotReady {
                why: "it has not been applied yet".into(),
            })
    }

    pub fn set(&self, id: &ResourceId, state: VolumeState) {
        if let Ok(mut states) = self.states.write() {
            states.insert(id.clone(), state);
        }
    }

    fn remove(&self, id: &ResourceId) {
        if let Ok(mut states) = self.states.write() {
            states.remove(id);
        }
    }
}

/// The summary bookkeeping of one session: the last completed result and the refresh in flight.
#[derive(Debug)]
struct Slot {
    dir: String,
    latest: Option<Summary>,
    running: Option<JoinHandle<Result<Summary, String>>>,
}

/// Runs SessionStorage resources under one session root. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SessionStorageReconciler {
    root: Option<PathBuf>,
    agent_id: String,
    volumes: SessionVolumes,
    slots: Arc<Mutex<HashMap<ResourceId, Slot>>>,
}

/// What the blocking part of an apply found and did.
struct Prepared {
    change: Change,
    dir: String,
    root: PathBuf,
    marker: Marker,
}

/// A session directory as found under the root.
enum Found {
    Missing,
    Foreign,
    Ours(Marker),
}

impl KindReconciler for SessionStorageReconciler {
    type Spec = SessionStorageSpec;
    type Owned = OwnedSession;
    type Error = SessionStorageError;

    fn owned(owned: &Owned) -> Option<&OwnedSession> {
        match owned {
            Owned::SessionStorage(owned) => Some(owned),
            _ => None,
        }
    }

    /// The spec hashes play no part: what a session directory holds is its own record.
    async fn apply(
        &self,
        target: Target<'_, SessionStorageSpec, OwnedSession>,
    ) -> Result<Applied, SessionStorageError> {
        let previous = target.previous.map(|previous| previous.owned);
        self.apply_parts(target.id, target.spec, previous).await
    }

    async fn delete(
        &self,
        id: &ResourceId,
        owned: &OwnedSession,
    ) -> Result<Deleted, SessionStorageError> {
        self.delete_parts(id, owned).await
    }
}

impl SessionStorageReconciler {
    pub fn new(root: Option<PathBuf>, agent_id: &str) -> Self {
        Self {
            root,
            agent_id: agent_id.to_owned(),
            volumes: SessionVolumes::default(),
            slots: Arc::default(),
        }
    }

    /// The view the Container reconciler reads.
    pub fn volumes(&self) -> SessionVolumes {
        self.volumes.clone()
    }

    /// Makes the session directory match `spec` and reports its summary.
    async fn apply_parts(
        &self,
        id: &ResourceId,
        spec: &SessionStorageSpec,
        previous: Option<&OwnedSession>,
    ) -> Result<Applied, SessionStorageError> {
        let result = self.apply_inner(id, spec, previous).await;
        let state = match &result {
            Ok(applied) => match &applied.owned {
                Owned::SessionStorage(owned) => VolumeState::Ready {
                    path: Path::new(&owned.path).join(DATA_DIR),
                },
                _ => VolumeState::NotReady {
                    why: "it is not a session storage".into(),
                },
            },
            Err(SessionStorageError::QuotaExceeded { details, .. }) => VolumeState::Ready {
                path: PathBuf::from(&details.path),
            },
            Err(SessionStorageError::Evicted { .. }) => VolumeState::Evicted,
            Err(error) => VolumeState::NotReady {
                why: error.to_string(),
            },
        };
        self.volumes.set(id, state);
        result
    }

    async fn apply_inner(
        &self,
        id: &ResourceId,
        spec: &SessionStorageSpec,
        previous: Option<&OwnedSession>,
    ) -> Result<Applied, SessionStorageError> {
        let this = self.clone();
        let (owned_id, owned_spec, owned_previous) = (id.clone(), spec.clone(), previous.cloned());
        let prepared = tokio::task::spawn_blocking(move || {
            this.prepare_blocking(
                &owned_id,
                &owned_spec,
                owned_previous.as_ref(),
                OffsetDateTime::now_utc(),
            )
        })
        .await
        .map_err(|join| SessionStorageError::WorkerStopped {
            id: id.clone(),
            message: join.to_string(),
        })?;
        let prepared = match prepared {
            Ok(prepared) => prepared,
            Err(error) => {
                if matches!(error, SessionStorageError::Evicted { .. }) {
                    self.forget_summary(id);
                }
                return Err(error);
            }
        };
        let session_dir = prepared.root.join(&prepared.dir);
        let data = session_dir.join(DATA_DIR);
        let summary = self
            .current_summary(id, &prepared.dir, &data, prepared.marker.summary.clone())
            .await?;

        // The last summary is kept in the marker, so that an agent restarted on a large session
        // reports it at once instead of waiting for a fresh walk.
        if summary.is_some() && summary != prepared.marker.summary {
            let mut marker = prepared.marker.clone();
            marker.summary.clone_from(&summary);
            let this = self.clone();
            let (owned_id, root, dir) = (id.clone(), prepared.root.clone(), prepared.dir.clone());
            tokio::task::spawn_blocking(move || this.write_marker(&owned_id, &root, &dir, &marker))
                .await
                .map_err(|join| SessionStorageError::WorkerStopped {
                    id: id.clone(),
                    message: join.to_string(),
                })??;
        }

        let summary = summary.unwrap_or_else(Summary::empty);
        let details = details_of(&data, &summary, spec, &prepared.marker);
        if summary.size_bytes > spec.size_limit_bytes {
            return Err(SessionStorageError::QuotaExceeded {
                id: id.clone(),
                used: summary.size_bytes,
                limit: spec.size_limit_bytes,
                details: Box::new(details),
            });
        }
        Ok(Applied {
            change: prepared.change,
            owned: Owned::SessionStorage(OwnedSession {
                path: session_dir.display().to_string(),
                dir: prepared.dir,
                session_id: spec.session_id.to_string(),
            }),
            details: Some(ResourceDetails::SessionStorage(details)),
        })
    }

    /// Removes the session directory the record names, if it carries this agent's marker for
    /// this resource.
    async fn delete_parts(
        &self,
        id: &ResourceId,
        owned: &OwnedSession,
    ) -> Result<Deleted, SessionStorageError> {
        self.forget_summary(id);
        self.volumes.remove(id);
        let this = self.clone();
        let (owned_id, owned) = (id.clone(), owned.clone());
        tokio::task::spawn_blocking(move || this.delete_blocking(&owned_id, &owned.dir))
            .await
            .map_err(|join| SessionStorageError::WorkerStopped {
                id: id.clone(),
                message: join.to_string(),
            })?
    }

    /// Removes session directories of this agent whose resource and session are not desired
    /// any more (a resource that never applied successfully has no ownership record to drive
    /// its delete, and an agent on a lost store has none at all). Directories without this
    /// agent's marker are left alone. Returns the removed directories by resource id.
    pub async fn collect_garbage(&self, desired: &[Resource]) -> Vec<(ResourceId, String)> {
        let keep: BTreeSet<String> = desired
            .iter()
            .filter_map(|resource| match &resource.spec {
                ResourceSpec::SessionStorage(spec) => {
                    Some(dir_name(&resource.id, &spec.session_id))
                }
                _ => None,
            })
            .collect();
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.collect_garbage_blocking(&keep))
            .await
            .unwrap_or_else(|join| {
                tracing::warn!(error = %join, "session storage garbage collection stopped");
                Vec::new()
            })
    }

    fn collect_garbage_blocking(&self, keep: &BTreeSet<String>) -> Vec<(ResourceId, String)> {
        let Some(root) = &self.root else {
            return Vec::new();
        };
        let entries = match std::fs::read_dir(root) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(error) => {
                tracing::warn!(root = %root.display(), %error, "could not list the session root");
                return Vec::new();
            }
        };
        let mut removed = Vec::new();
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Some((resource, session)) = name.split_once('@') else {
                continue;
            };
            let (Ok(resource), Ok(session)) =
                (ResourceId::try_from(resource), SessionId::try_from(session))
            else {
                continue;
            };
            if keep.contains(&name) {
                continue;
            }
            match self.find(&resource, root, &name, &session) {
                Ok(Found::Ours(_)) => match remove_beneath(root, Path::new(&name)) {
                    Ok(false) => {}
                    Ok(true) => removed.push((
                        resource,
                        format!(
                            "session directory {name} of a removed resource or session was deleted"
                        ),
                    )),
                    Err(error) => {
                        tracing::warn!(dir = %name, %error, "could not remove a stale session directory");
                    }
                },
                Ok(Found::Missing | Found::Foreign) => {}
                Err(error) => {
                    tracing::warn!(dir = %name, %error, "could not inspect a session directory")
                }
            }
        }
        removed
    }

    fn root(&self, id: &ResourceId) -> Result<&Path, SessionStorageError> {
        self.root
            .as_deref()
            .ok_or_else(|| SessionStorageError::NoRoot { id: id.clone() })
    }

    /// Creates the root if needed and returns it without links, so that every path below it is
    /// opened beneath it.
    fn ensure_root(&self, id: &ResourceId) -> Result<PathBuf, SessionStorageError> {
        let root = self.root(id)?;
        let io = |action: &'static str, error: std::io::Error| SessionStorageError::Io {
            id: id.clone(),
            path: root.display().to_string(),
            action,
            message: error.to_string(),
        };
        if !root.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(SESSION_DIR_MODE)
                .create(root)
                .map_err(|error| io("create the session root", error))?;
        }
        root.canonicalize()
            .map_err(|error| io("resolve the session root", error))
    }

    fn prepare_blocking(
        &self,
        id: &ResourceId,
        spec: &SessionStorageSpec,
        previous: Option<&OwnedSession>,
        now: OffsetDateTime,
    ) -> Result<Prepared, SessionStorageError> {
        let root = self.ensure_root(id)?;
        let dir = dir_name(id, &spec.session_id);
        let mut change = Change::Unchanged;
        // A new session id is a new session: the old one's data goes.
        if let Some(old) = previous.filter(|old| old.dir != dir) {
            self.delete_blocking(id, &old.dir)?;
            change = Change::Updated;
        }
        let expired = spec.expires_at.is_some_and(|at| at <= now);
        let session_dir = root.join(&dir);
        let data = session_dir.join(DATA_DIR);
        let marker = match self.find(id, &root, &dir, &spec.session_id)? {
            Found::Foreign => {
                return Err(SessionStorageError::Foreign {
                    id: id.clone(),
                    path: session_dir.display().to_string(),
                });
            }
            Found::Missing => {
                let marker = Marker {
                    agent_id: self.agent_id.clone(),
                    resource_id: id.to_string(),
                    session_id: spec.session_id.to_string(),
                    created_at: now,
                    expires_at: spec.expires_at,
                    evicted_at: None,
                    summary: Some(Summary::empty()),
                };
                self.make_dir(id, &root, &session_dir)?;
                // The marker goes first: a directory the agent made must never look foreign.
                self.write_marker(id, &root, &dir, &marker)?;
                if expired {
                    // Already past its expiry when first asked for: recorded as evicted, with
                    // nothing to delete, rather than created for nobody.
                    return Err(self.evict(id, &root, &dir, marker, now)?);
                }
                self.make_dir(id, &root, &data)?;
                if change == Change::Unchanged {
                    change = Change::Created;
                }
                marker
            }
            Found::Ours(mut marker) => {
                if let Some(evicted_at) = marker.evicted_at {
                    // Only a manifest change brings it back: a later expiry (different from the
                    // one that evicted it, and not passed) or a new session id (another dir).
                    if spec.expires_at == marker.expires_at || expired {
                        return Err(evicted_error(id, spec, &data, &marker, evicted_at));
                    }
                    marker.evicted_at = None;
                    marker.expires_at = spec.expires_at;
                    marker.summary = Some(Summary::empty());
                    self.make_dir(id, &root, &data)?;
                    self.write_marker(id, &root, &dir, &marker)?;
                    self.forget_summary(id);
                    change = Change::Updated;
                } else if expired {
                    // The eviction records the expiry that caused it: only another one (or a
                    // new session id) brings the session back.
                    marker.expires_at = spec.expires_at;
                    return Err(self.evict(id, &root, &dir, marker, now)?);
                } else {
                    if marker.expires_at != spec.expires_at {
                        marker.expires_at = spec.expires_at;
                        self.write_marker(id, &root, &dir, &marker)?;
                        if change == Change::Unchanged {
                            change = Change::Updated;
                        }
                    }
                    match std::fs::symlink_metadata(&data) {
                        Ok(meta) if meta.is_dir() => {}
                        Ok(_) => {
                            return Err(SessionStorageError::Foreign {
                                id: id.clone(),
                                path: data.display().to_string(),
                            });
                        }
                        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                            self.make_dir(id, &root, &data)?;
                            self.forget_summary(id);
                            change = Change::Repaired {
                                drift: "the data directory was missing".into(),
                            };
                        }
                        Err(error) => {
                            return Err(SessionStorageError::Io {
                                id: id.clone(),
                                path: data.display().to_string(),
                                action: "inspect",
                                message: error.to_string(),
                            });
                        }
                    }
                }
                marker
            }
        };
        Ok(Prepared {
            change,
            dir,
            root,
            marker,
        })
    }

    /// Deletes a session's data and records the eviction in its marker; returns the error the
    /// apply reports.
    fn evict(
        &self,
        id: &ResourceId,
        root: &Path,
        dir: &str,
        mut marker: Marker,
        now: OffsetDateTime,
    ) -> Result<SessionStorageError, SessionStorageError> {
        let data = root.join(dir).join(DATA_DIR);
        if let Err(errno) = remove_beneath(root, &Path::new(dir).join(DATA_DIR)) {
            return Err(SessionStorageError::Io {
                id: id.clone(),
                path: data.display().to_string(),
                action: "delete the expired data in",
                message: errno.desc().to_owned(),
            });
        }
        marker.evicted_at = Some(now);
        marker.summary = Some(Summary::empty());
        self.write_marker(id, root, dir, &marker)?;
        tracing::info!(resource = %id, session = %marker.session_id, "session storage expired; its data was deleted");
        let session = SessionId::try_from(marker.session_id.as_str()).map_err(|error| {
            SessionStorageError::Io {
                id: id.clone(),
                path: data.display().to_string(),
                action: "read the session id of",
                message: error.to_string(),
            }
        })?;
        let spec = SessionStorageSpec {
            session_id: session,
            size_limit_bytes: 0,
            expires_at: marker.expires_at,
        };
        Ok(evicted_error(id, &spec, &data, &marker, now))
    }

    /// Opens the directory that holds `path` beneath `root`, following no link.
    fn open_parent(
        &self,
        id: &ResourceId,
        root: &Path,
        path: &Path,
    ) -> Result<Parent, SessionStorageError> {
        let io = |message: String| SessionStorageError::Io {
            id: id.clone(),
            path: path.display().to_string(),
            action: "open the directory of",
            message,
        };
        let root_fd = confined::open_root(root, "open the session root above")
            .map_err(|error| io(error.to_string()))?;
        confined::open_parent(root_fd, root, path, None)
            .map_err(|error| io(error.to_string()))?
            .ok_or_else(|| io(Errno::ENOENT.desc().to_owned()))
    }

    /// Creates the directory `path` (mode 0700) beneath `root`; one already there is fine.
    fn make_dir(
        &self,
        id: &ResourceId,
        root: &Path,
        path: &Path,
    ) -> Result<(), SessionStorageError> {
        let parent = self.open_parent(id, root, path)?;
        match mkdirat(
            &parent.dir,
            parent.name.as_os_str(),
            Mode::from_bits_truncate(SESSION_DIR_MODE),
        ) {
            Ok(()) | Err(Errno::EEXIST) => Ok(()),
            Err(errno) => Err(SessionStorageError::Io {
                id: id.clone(),
                path: path.display().to_string(),
                action: "create",
                message: errno.desc().to_owned(),
            }),
        }
    }

    /// Replaces the marker atomically (temporary file, fsync, rename, directory fsync) beneath
    /// the root, following no link: the same replace as every other writer of the agent.
    fn write_marker(
        &self,
        id: &ResourceId,
        root: &Path,
        dir: &str,
        marker: &Marker,
    ) -> Result<(), SessionStorageError> {
        let marker_error = |source: ConfinedError| SessionStorageError::Marker {
            id: id.clone(),
            source: FileError::from(source),
        };
        let path = root.join(dir).join(MARKER_NAME);
        let text =
            serde_json::to_string_pretty(marker).map_err(|error| SessionStorageError::Io {
                id: id.clone(),
                path: path.display().to_string(),
                action: "encode the marker",
                message: error.to_string(),
            })?;
        let root_fd =
            confined::open_root(root, "open the session root above").map_err(marker_error)?;
        let parent = confined::open_parent(root_fd, root, &path, None)
            .map_err(marker_error)?
            .ok_or_else(|| {
                marker_error(ConfinedError::os(
                    &path,
                    "open the directory of",
                    Errno::ENOENT,
                ))
            })?;
        confined::check_replaceable(&parent.dir, &parent.name, &path).map_err(marker_error)?;
        let how = Replace {
            mode: ModeChoice::Exact(MARKER_MODE),
            uid: None,
            gid: None,
            durability: Durability::Full,
            temp_suffix: TEMP_SUFFIX,
        };
        confined::replace(&parent.dir, &parent.name, &path, text.as_bytes(), &how)
            .map_err(marker_error)
    }

    /// Looks at `<root>/<dir>` without following links and reads its marker.
    fn find(
        &self,
        id: &ResourceId,
        root: &Path,
        dir: &str,
        session: &SessionId,
    ) -> Result<Found, SessionStorageError> {
        let path = root.join(dir);
        let io = |action: &'static str, errno: Errno| SessionStorageError::Io {
            id: id.clone(),
            path: path.display().to_string(),
            action,
            message: errno.desc().to_owned(),
        };
        let root_fd =
            confined::open_dir(root).map_err(|errno| io("open the session root above", errno))?;
        let dir_fd = match confined::open_beneath(
            &root_fd,
            Path::new(dir),
            OFlag::O_DIRECTORY | OFlag::O_RDONLY,
        ) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(Found::Missing),
            // A link or a file under our name (or a name that is not one) is someone else's.
            Err(Errno::ELOOP | Errno::ENOTDIR | Errno::EXDEV) => return Ok(Found::Foreign),
            Err(errno) => return Err(io("open", errno)),
        };
        let marker_fd =
            match confined::open_file_at(&dir_fd, OsStr::new(MARKER_NAME), OFlag::O_NONBLOCK) {
                Ok(fd) => fd,
                Err(Errno::ENOENT | Errno::ELOOP) => return Ok(Found::Foreign),
                Err(errno) => return Err(io("open the marker in", errno)),
            };
        let mut text = Vec::new();
        File::from(marker_fd)
            .take(MAX_MARKER_BYTES)
            .read_to_end(&mut text)
            .map_err(|error| SessionStorageError::Io {
                id: id.clone(),
                path: path.display().to_string(),
                action: "read the marker in",
                message: error.to_string(),
            })?;
        let Ok(marker) = serde_json::from_slice::<Marker>(&text) else {
            return Ok(Found::Foreign);
        };
        let ours = marker.agent_id == self.agent_id
            && marker.resource_id == id.as_str()
            && marker.session_id == session.as_str();
        Ok(if ours {
            Found::Ours(marker)
        } else {
            Found::Foreign
        })
    }

    fn delete_blocking(&self, id: &ResourceId, dir: &str) -> Result<Deleted, SessionStorageError> {
        let root = self.root(id)?;
        let Some((_, session)) = dir.split_once('@') else {
            return Ok(Deleted::Released {
                why: format!("{dir} is not a session directory name"),
            });
        };
        let session = SessionId::try_from(session).map_err(|error| SessionStorageError::Io {
            id: id.clone(),
            path: dir.to_owned(),
            action: "parse the session id of",
            message: error.to_string(),
        })?;
        let path = root.join(dir);
        match self.find(id, root, dir, &session) {
            Ok(Found::Missing) => Ok(Deleted::AlreadyGone),
            Ok(Found::Foreign) => Ok(Deleted::Released {
                why: format!(
                    "{} does not carry this agent's marker and is left in place",
                    path.display()
                ),
            }),
            Ok(Found::Ours(_)) => match remove_beneath(root, Path::new(dir)) {
                Ok(true) => Ok(Deleted::Removed),
                Ok(false) => Ok(Deleted::AlreadyGone),
                Err(errno) => Err(SessionStorageError::Io {
                    id: id.clone(),
                    path: path.display().to_string(),
                    action: "remove",
                    message: errno.desc().to_owned(),
                }),
            },
            // The root itself is gone: so is everything under it.
            Err(_) if !root.exists() => Ok(Deleted::AlreadyGone),
            Err(error) => Err(error),
        }
    }

    /// The newest summary of `data`: a refresh is started when none is running, and waited for
    /// at most [`SUMMARY_WAIT`]; past that, the last completed summary (or `persisted`, from the
    /// marker) is returned and the refresh carries on in the background.
    async fn current_summary(
        &self,
        id: &ResourceId,
        dir: &str,
        data: &Path,
        persisted: Option<Summary>,
    ) -> Result<Option<Summary>, SessionStorageError> {
        let finished = {
            let mut slots = self.lock_slots();
            let slot = slots.entry(id.clone()).or_insert_with(|| Slot {
                dir: dir.to_owned(),
                latest: None,
                running: None,
            });
            if slot.dir != dir {
                *slot = Slot {
                    dir: dir.to_owned(),
                    latest: None,
                    running: None,
                };
            }
            if slot.latest.is_none() {
                slot.latest = persisted;
            }
            slot.running.take_if(|handle| handle.is_finished())
        };
        if let Some(handle) = finished {
            let result = handle.await;
            self.record_summary(id, dir, result)?;
        }
        let handle = {
            let mut slots = self.lock_slots();
            match slots.get_mut(id).and_then(|slot| slot.running.take()) {
                Some(handle) => handle,
                None => {
                    let data = data.to_path_buf();
                    tokio::task::spawn_blocking(move || {
                        summarize(&data).map_err(|error| error.to_string())
                    })
                }
            }
        };
        let mut handle = handle;
        match tokio::time::timeout(SUMMARY_WAIT, &mut handle).await {
            Ok(result) => self.record_summary(id, dir, result)?,
            Err(_) => {
                let mut slots = self.lock_slots();
                match slots.get_mut(id).filter(|slot| slot.dir == dir) {
                    Some(slot) => slot.running = Some(handle),
                    None => handle.abort(),
                }
            }
        }
        Ok(self
            .lock_slots()
            .get(id)
            .filter(|slot| slot.dir == dir)
            .and_then(|slot| slot.latest.clone()))
    }

    fn record_summary(
        &self,
        id: &ResourceId,
        dir: &str,
        result: Result<Result<Summary, String>, tokio::task::JoinError>,
    ) -> Result<(), SessionStorageError> {
        let summary = match result {
            Ok(Ok(summary)) => summary,
            Ok(Err(message)) => {
                return Err(SessionStorageError::Summary {
                    id: id.clone(),
                    path: dir.to_owned(),
                    message,
                });
            }
            Err(join) => {
                return Err(SessionStorageError::WorkerStopped {
                    id: id.clone(),
                    message: join.to_string(),
                });
            }
        };
        if let Some(slot) = self.lock_slots().get_mut(id).filter(|slot| slot.dir == dir) {
            slot.latest = Some(summary);
        }
        Ok(())
    }

    /// Drops what is known of a session's summary; a walk still running is left to finish and
    /// its result is discarded.
    fn forget_summary(&self, id: &ResourceId) {
        self.lock_slots().remove(id);
    }

    fn lock_slots(&self) -> std::sync::MutexGuard<'_, HashMap<ResourceId, Slot>> {
        // A panic while holding this lock leaves only summaries behind, which are recomputed.
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Removes `relative` below `root` and everything in it, opened beneath the root and following
/// no link on the way or inside ([`confined::remove_tree`]). Returns whether there was something.
fn remove_beneath(root: &Path, relative: &Path) -> Result<bool, Errno> {
    let (Some(parent), Some(name)) = (relative.parent(), relative.file_name()) else {
        return Err(Errno::EXDEV);
    };
    let root_fd = confined::open_dir(root)?;
    let dir = if parent.as_os_str().is_empty() {
        root_fd
    } else {
        match confined::open_beneath(&root_fd, parent, OFlag::O_DIRECTORY | OFlag::O_RDONLY) {
            Ok(dir) => dir,
            Err(Errno::ENOENT) => return Ok(false),
            Err(errno) => return Err(errno),
        }
    };
    confined::remove_tree(&dir, name)
}

/// The directory name of a session: `<resourceId>@<sessionId>`.
pub fn dir_name(id: &ResourceId, session: &SessionId) -> String {
    format!("{id}@{session}")
}

fn details_of(
    data: &Path,
    summary: &Summary,
    spec: &SessionStorageSpec,
    marker: &Marker,
) -> SessionStorageDetails {
    SessionStorageDetails {
        path: data.display().to_string(),
        size_bytes: summary.size_bytes,
        files_count: summary.files_count,
        sha256: summary.sha256.clone(),
        // A zero limit counts as one byte: the fraction stays a finite number.
        used_fraction: summary.size_bytes as f64 / spec.size_limit_bytes.max(1) as f64,
        expires_at: spec.expires_at,
        evicted_at: marker.evicted_at,
    }
}

fn evicted_error(
    id: &ResourceId,
    spec: &SessionStorageSpec,
    data: &Path,
    marker: &Marker,
    evicted_at: OffsetDateTime,
) -> SessionStorageError {
    let mut details = details_of(data, &Summary::empty(), spec, marker);
    details.evicted_at = Some(evicted_at);
    details.expires_at = marker.expires_at;
    let expires_at = marker
        .expires_at
        .and_then(|at| {
            at.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "an unknown time".into());
    SessionStorageError::Evicted {
        id: id.clone(),
        session: spec.session_id.clone(),
        expires_at,
        details: Box::new(details),
    }
}

/// Why a summary could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum SummaryError {
    #[error("could not {action} {path}: {errno}")]
    Os {
        path: String,
        action: &'static str,
        errno: Errno,
    },
    #[error("could not read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is nested deeper than {MAX_DEPTH} directories")]
    TooDeep { path: String },
}

/// One directory being walked: its descriptor, its path relative to the data directory (with a
/// trailing `/`, empty at the top) and the names not visited yet, in order.
struct Frame {
    fd: OwnedFd,
    prefix: Vec<u8>,
    names: std::vec::IntoIter<OsString>,
}

impl Frame {
    fn open(fd: OwnedFd, prefix: Vec<u8>) -> Result<Self, SummaryError> {
        let os_error = |errno| SummaryError::Os {
            path: String::from_utf8_lossy(&prefix).into_owned(),
            action: "list",
            errno,
        };
        let listing = fd.try_clone().map_err(|error| SummaryError::Read {
            path: String::from_utf8_lossy(&prefix).into_owned(),
            source: error,
        })?;
        let mut dir = Dir::from_fd(listing).map_err(os_error)?;
        let mut names: Vec<OsString> = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(os_error)?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(OsString::from_vec(name.to_vec()));
            }
        }
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        Ok(Self {
            fd,
            prefix,
            names: names.into_iter(),
        })
    }
}

/// What to do with the next entry of the walk.
enum Step {
    Descend(Frame),
    Done,
    Skip,
}

/// Summarises the data directory at `data` without following any link below it (the format is
/// in this module's documentation). Entries that vanish during the walk are skipped: a workload
/// may be deleting files while it runs.
pub fn summarize(data: &Path) -> Result<Summary, SummaryError> {
    // The data directory itself is not followed if it is a link; its parents are the session
    // root and the session directory the apply has just checked.
    let top = match (data.parent(), data.file_name()) {
        (Some(parent), Some(name)) => {
            confined::open_dir(parent).and_then(|parent| confined::open_dir_at(&parent, name))
        }
        _ => Err(Errno::EXDEV),
    }
    .map_err(|errno| SummaryError::Os {
        path: data.display().to_string(),
        action: "open",
        errno,
    })?;
    let mut hasher = Sha256::new();
    let mut summary = Summary::empty();
    let mut stack = vec![Frame::open(top, Vec::new())?];
    loop {
        let depth = stack.len();
        let Some(frame) = stack.last_mut() else {
            break;
        };
        let Some(name) = frame.names.next() else {
            stack.pop();
            continue;
        };
        let mut path = frame.prefix.clone();
        path.extend_from_slice(name.as_bytes());
        let step = summarize_entry(frame, &name, path, depth, &mut hasher, &mut summary)?;
        match step {
            Step::Descend(next) => stack.push(next),
            Step::Done | Step::Skip => {}
        }
    }
    summary.sha256 = hex::encode(hasher.finalize());
    Ok(summary)
}

fn summarize_entry(
    frame: &Frame,
    name: &OsStr,
    path: Vec<u8>,
    depth: usize,
    hasher: &mut Sha256,
    summary: &mut Summary,
) -> Result<Step, SummaryError> {
    let shown = || String::from_utf8_lossy(&path).into_owned();
    let os_error = |action, errno| SummaryError::Os {
        path: shown(),
        action,
        errno,
    };
    let stat = match fstatat(&frame.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(stat) => stat,
        Err(Errno::ENOENT) => return Ok(Step::Skip),
        Err(errno) => return Err(os_error("inspect", errno)),
    };
    match file_type(&stat) {
        SFlag::S_IFDIR => {
            if depth >= MAX_DEPTH {
                return Err(SummaryError::TooDeep { path: shown() });
            }
            match confined::open_dir_at(&frame.fd, name) {
                Ok(fd) => {
                    let mut prefix = path;
                    prefix.push(b'/');
                    Ok(Step::Descend(Frame::open(fd, prefix)?))
                }
                // Replaced or removed since it was listed.
                Err(Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR) => Ok(Step::Skip),
                Err(errno) => Err(os_error("open", errno)),
            }
        }
        SFlag::S_IFREG => {
            // Non-blocking, and checked again after opening: a fifo swapped in after the stat
            // must not hang the walk.
            let fd = match confined::open_file_at(&frame.fd, name, OFlag::O_NONBLOCK) {
                Ok(fd) => fd,
                Err(Errno::ENOENT | Errno::ELOOP) => return Ok(Step::Skip),
                Err(errno) => return Err(os_error("open", errno)),
            };
            let opened = fstat(&fd).map_err(|errno| os_error("inspect", errno))?;
            if file_type(&opened) != SFlag::S_IFREG {
                return Ok(Step::Skip);
            }
            let (size, content) =
                hash_content(File::from(fd)).map_err(|source| SummaryError::Read {
                    path: shown(),
                    source,
                })?;
            hasher.update(b"F\0");
            hasher.update(&path);
            hasher.update(format!("\0{size}\0{content}\n").as_bytes());
            summary.size_bytes = summary.size_bytes.saturating_add(size);
            summary.files_count += 1;
            Ok(Step::Done)
        }
        SFlag::S_IFLNK => {
            let target = match readlinkat(&frame.fd, name) {
                Ok(target) => target,
                Err(Errno::ENOENT | Errno::EINVAL) => return Ok(Step::Skip),
                Err(errno) => return Err(os_error("read the link", errno)),
            };
            hasher.update(b"L\0");
            hasher.update(&path);
            hasher.update(b"\0");
            hasher.update(target.as_bytes());
            hasher.update(b"\n");
            summary.files_count += 1;
            Ok(Step::Done)
        }
        _ => {
            hasher.update(b"O\0");
            hasher.update(&path);
            hasher.update(b"\n");
            summary.files_count += 1;
            Ok(Step::Done)
        }
    }
}

/// The size read and the hex sha256 of a file's content.
fn hash_content(mut file: File) -> std::io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buffer = [0u8; 64 * 1024];
    let mut size: u64 = 0;
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        size += read as u64;
    }
    Ok((size, hex::encode(hasher.finalize())))
}

#[cfg(test)]
mod tests;
