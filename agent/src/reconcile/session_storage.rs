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
use nix::sys::stat::{Mode, SFlag, mkdirat};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio::task::JoinHandle;

use super::{Applied, Change, Deleted, FileError, KindReconciler, Retry, Target};
use crate::confined::{self, ConfinedError, Durability, ModeChoice, Parent, Replace, file_type};
use crate::store::{Owned, OwnedSession};

mod disk;
mod summaries;
mod summarize;
mod volumes;

use disk::remove_beneath;
pub use summarize::{SummaryError, summarize};
pub use volumes::{SessionVolumes, VolumeState};

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

    /// A session over its quota is looked at again after [`QUOTA_RECHECK`], not the engine's
    /// growing backoff.
    fn error_policy(error: &SessionStorageError) -> Retry {
        match error {
            SessionStorageError::QuotaExceeded { .. } => Retry::After(QUOTA_RECHECK),
            _ => Retry::Backoff,
        }
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

#[cfg(test)]
mod tests;
