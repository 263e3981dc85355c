//! One File batch, applied in one blocking task (`schedule.rs` cuts and times the batches): a
//! converged file is confirmed through the directories the batch has already walked to, and the
//! directories of the files it wrote are fsynced once per directory.

use super::*;

impl FileReconciler {
    /// Applies a batch of File resources, in order, and hands each result to `results` as soon
    /// as it is durable: a written file once its directory is fsynced, which happens once per
    /// directory for the files written together ([`PendingDirSyncs`]). It stops starting files
    /// when `results` says so. Blocking: [`FileReconciler::apply_all`] runs it on the blocking
    /// pool, one task per batch.
    pub fn apply_batch_blocking(&self, batch: &[Arc<Desired>], results: &BatchResults) {
        let mut seen = BatchMemo::default();
        let mut pending = PendingDirSyncs::default();
        for desired in batch {
            if !results.may_start() {
                break;
            }
            let (result, unsynced) = match &desired.spec {
                KnownSpec::File(spec) => self.apply_in_batch(&mut seen, desired, spec),
                // The dispatch hands this reconciler File resources only.
                _ => (
                    Err(ReconcileError::Crashed {
                        id: desired.id.clone(),
                        message: "not a File resource, handed to the File reconciler".into(),
                    }),
                    None,
                ),
            };
            if !pending.report(desired.id.clone(), result, unsynced, results) {
                break;
            }
        }
        // Also when the batch stops early: what was renamed into place is made durable before
        // anything (the next pass's fast path included) can take it as applied.
        pending.flush(results);
    }

    /// One file of a batch: confirmed through the batch's walked directories when it is exactly
    /// converged, else the full apply with its directory fsync deferred (the directory to sync
    /// comes back with the result).
    fn apply_in_batch(
        &self,
        seen: &mut BatchMemo,
        desired: &Desired,
        spec: &FileSpec,
    ) -> (Result<Applied, ReconcileError>, Option<OwnedFd>) {
        let previous = desired
            .previous
            .as_ref()
            .and_then(|record| match &record.owned {
                Owned::File(owned) => Some((record.spec_hash.clone(), owned.clone())),
                _ => None,
            });
        if let Some(applied) = self.confirm_converged(seen, spec, previous.as_ref()) {
            return (Ok(applied), None);
        }
        match self.apply_with(
            &desired.id,
            spec,
            &desired.spec_hash,
            previous.as_ref(),
            DirSync::Deferred,
        ) {
            Ok((applied, unsynced)) => (Ok(applied), unsynced),
            Err(error) => (Err(error.into()), None),
        }
    }

    /// The fast path of a converged file: through directories this batch has already walked to,
    /// confirms that the file is exactly as desired (a regular file with the mode, owner, group,
    /// size and every byte of the spec). `None` means anything else (drift, a missing file, a
    /// link, an error); the caller then runs [`FileReconciler::apply_blocking`], which walks from
    /// the root again, so every write and every error goes through that one careful path.
    fn confirm_converged(
        &self,
        seen: &mut BatchMemo,
        spec: &FileSpec,
        previous: Option<&(String, OwnedFile)>,
    ) -> Option<Applied> {
        let path = spec.path.as_path();
        // A resource that moved still has its old file to remove: the full apply does that.
        if previous.is_some_and(|(_, owned)| Path::new(&owned.path) != path) {
            return None;
        }
        let content = spec.content.bytes().ok()?;
        let uid = match &spec.owner {
            Some(owner) => Some(seen.user_id(owner)?),
            None => None,
        };
        let gid = match &spec.group {
            Some(group) => Some(seen.group_id(group)?),
            None => None,
        };
        let (dir, name) = seen.dirs.parent(self, path)?;
        let stat = fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW).ok()?;
        let converged = file_type(&stat) == SFlag::S_IFREG
            && stat.st_mode & 0o7777 == spec.mode.bits()
            && uid.is_none_or(|uid| uid.as_raw() == stat.st_uid)
            && gid.is_none_or(|gid| gid.as_raw() == stat.st_gid)
            && u64::try_from(stat.st_size).ok() == Some(content.len() as u64)
            && holds_exactly(dir, name, &content, &mut seen.buffer);
        if !converged {
            return None;
        }
        let sha256 = hex_lower(&Sha256::digest(&content));
        let details = seen.details_of(&stat, &sha256);
        Some(Applied {
            change: Change::Unchanged,
            owned: Owned::File(OwnedFile {
                path: path.display().to_string(),
                // As in the full apply: a file present before the first apply stays adopted.
                created: previous.is_some_and(|(_, owned)| owned.created),
                sha256,
            }),
            details: Some(ResourceDetails::File(details)),
        })
    }
}

/// The results of a batch's written files, held until their directories are fsynced: once per
/// directory for all the files the batch renamed into it, instead of once per file (a first
/// apply of many files into a few directories costs about half the fsyncs). A file is reported
/// only after its directory entry is durable, as with [`DirSync::Now`]; the content itself was
/// fsynced before the rename, so the path never holds a torn file either way. Results behind a
/// held one are held too, so that they go out in the batch's order.
#[derive(Default)]
struct PendingDirSyncs {
    /// Distinct directories, each fsynced once.
    dirs: DirSyncs,
    /// Held results, each with the position in `dirs` of the directory it waits for, if any.
    held: Vec<(ResourceId, Result<Applied, ReconcileError>, Option<usize>)>,
    /// When the oldest held result was held.
    since: Option<std::time::Instant>,
}

impl PendingDirSyncs {
    /// How long a result may be held before the pending directories are fsynced anyway, so a
    /// slow batch still reports as it goes, far inside any apply timeout.
    const MAX_HOLD: std::time::Duration = std::time::Duration::from_secs(1);

    fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    fn hold(
        &mut self,
        id: ResourceId,
        result: Result<Applied, ReconcileError>,
        unsynced: Option<OwnedFd>,
    ) {
        let at = unsynced.map(|dir| self.dirs.add(dir));
        self.held.push((id, result, at));
        self.since.get_or_insert_with(std::time::Instant::now);
    }

    /// Reports `result` at once when nothing is held and nothing waits for a directory fsync,
    /// else holds it, so that results go out in the batch's order; flushes once the oldest held
    /// result is due. False when nobody takes results any more.
    fn report(
        &mut self,
        id: ResourceId,
        result: Result<Applied, ReconcileError>,
        unsynced: Option<OwnedFd>,
        results: &BatchResults,
    ) -> bool {
        let sent = if unsynced.is_none() && self.is_empty() {
            results.send(id, result.into())
        } else {
            self.hold(id, result, unsynced);
            true
        };
        sent && (!self.is_due() || self.flush(results))
    }

    fn is_due(&self) -> bool {
        self.since
            .is_some_and(|since| since.elapsed() >= Self::MAX_HOLD)
    }

    /// Fsyncs every pending directory, then reports each held result in order; a written file
    /// whose directory could not be synced fails with that error. False when nobody takes
    /// results any more.
    fn flush(&mut self, results: &BatchResults) -> bool {
        let synced: Vec<Result<(), Errno>> = self.dirs.sync_all();
        self.since = None;
        let mut taken = true;
        for (id, result, at) in self.held.drain(..) {
            let result = match (result, at.map(|at| synced[at])) {
                (Ok(applied), Some(Err(errno))) => {
                    let path = match &applied.owned {
                        Owned::File(owned) => owned.path.clone(),
                        _ => id.to_string(),
                    };
                    Err(ReconcileError::from(io_error(
                        Path::new(&path),
                        "sync the directory of",
                        errno,
                    )))
                }
                (result, _) => result,
            };
            taken = taken && results.send(id, result.into());
        }
        taken
    }
}

/// What one batch has already looked up: the directories it walked to, by path, and account
/// names and ids (each lookup reads /etc/passwd or /etc/group). It lives for one batch, a few
/// milliseconds, and only ever serves the fast path's reads: nothing is written through a
/// directory found here, and a directory renamed or an account edited since is seen afresh by
/// the next batch.
#[derive(Default)]
struct BatchMemo {
    dirs: WalkedDirs,
    user_ids: HashMap<String, Uid>,
    group_ids: HashMap<String, Gid>,
    user_names: HashMap<u32, String>,
    group_names: HashMap<u32, String>,
    /// Read buffer of the content comparison, allocated once per batch.
    buffer: Vec<u8>,
}

/// The directories a batch has walked to, by path.
#[derive(Default)]
struct WalkedDirs(HashMap<PathBuf, OwnedFd>);

impl WalkedDirs {
    /// The directory that holds `path` and the file's name in it, walked to from the root (as
    /// [`FileReconciler::apply_blocking`] does, without following links or creating anything)
    /// the first time this batch needs it. `None`: the walk did not succeed.
    fn parent<'p>(
        &mut self,
        files: &FileReconciler,
        path: &'p Path,
    ) -> Option<(&OwnedFd, &'p OsStr)> {
        let (directory, name) = (path.parent()?, path.file_name()?);
        if !self.0.contains_key(directory) {
            let parent = files.open_parent(path, false).ok()??;
            if parent.name != name {
                return None;
            }
            self.0.insert(directory.to_path_buf(), parent.dir);
        }
        Some((self.0.get(directory)?, name))
    }
}

impl BatchMemo {
    /// The id of `owner`; `None` when it cannot be resolved (the full apply reports why).
    fn user_id(&mut self, owner: &AccountName) -> Option<Uid> {
        if let Some(uid) = self.user_ids.get(owner.as_str()) {
            return Some(*uid);
        }
        let uid = resolve_user(owner, Path::new("")).ok()?;
        self.user_ids.insert(owner.to_string(), uid);
        Some(uid)
    }

    fn group_id(&mut self, group: &AccountName) -> Option<Gid> {
        if let Some(gid) = self.group_ids.get(group.as_str()) {
            return Some(*gid);
        }
        let gid = resolve_group(group, Path::new("")).ok()?;
        self.group_ids.insert(group.to_string(), gid);
        Some(gid)
    }

    /// [`details_of`], with the names of the owner and group looked up once per batch.
    fn details_of(&mut self, stat: &FileStat, sha256: &str) -> FileDetails {
        let owner = self
            .user_names
            .entry(stat.st_uid)
            .or_insert_with(|| user_name(stat.st_uid))
            .clone();
        let group = self
            .group_names
            .entry(stat.st_gid)
            .or_insert_with(|| group_name(stat.st_gid))
            .clone();
        FileDetails {
            sha256: sha256.to_owned(),
            size: u64::try_from(stat.st_size).unwrap_or_default(),
            mode: format!("{:04o}", stat.st_mode & 0o7777),
            owner: Some(owner),
            group: Some(group),
        }
    }
}

/// Whether the file `name` in `dir` holds exactly `expected`, compared byte for byte in chunks
/// (never the whole file in memory). Any failure to read counts as a difference. Opened without
/// following a link, and non-blocking so that a FIFO swapped in after the stat cannot hang it.
fn holds_exactly(dir: &OwnedFd, name: &OsStr, expected: &[u8], buffer: &mut Vec<u8>) -> bool {
    const CHUNK: usize = 64 * 1024;
    let Ok(fd) = confined::open_file_at(dir, name, OFlag::O_NONBLOCK) else {
        return false;
    };
    let mut file = File::from(fd);
    // One byte more than expected, so that a file that grew shows in the first read.
    buffer.resize((expected.len() + 1).min(CHUNK), 0);
    let mut compared = 0;
    loop {
        let read = match file.read(buffer) {
            Ok(read) => read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        };
        if read == 0 {
            return compared == expected.len();
        }
        let end = compared + read;
        if expected.get(compared..end) != Some(&buffer[..read]) {
            return false;
        }
        compared = end;
    }
}
