//! Session directories on disk: opened, created and marked beneath the session root without
//! following links, found by their marker, deleted and collected.

use super::*;

impl SessionStorageReconciler {
    pub(super) fn collect_garbage_blocking(
        &self,
        keep: &BTreeSet<String>,
    ) -> Vec<(ResourceId, String)> {
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

    /// Opens the directory that holds `path` beneath `root`, following no link.
    pub(super) fn open_parent(
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
    pub(super) fn make_dir(
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
    pub(super) fn write_marker(
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
    pub(super) fn find(
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

    pub(super) fn delete_blocking(
        &self,
        id: &ResourceId,
        dir: &str,
    ) -> Result<Deleted, SessionStorageError> {
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
}

/// Removes `relative` below `root` and everything in it, opened beneath the root and following
/// no link on the way or inside ([`confined::remove_tree`]). Returns whether there was something.
pub(super) fn remove_beneath(root: &Path, relative: &Path) -> Result<bool, Errno> {
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
