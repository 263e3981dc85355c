//! The filesystem store (cargo feature `fs-store`): the agent's memory on local disk, so that a
//! device converges again after a reboot, a power cut or a kill -9 without its manager (docs/reference.md §6).
//!
//! Layout, scoped by agent id and resource id:
//!
//! ```text
//! <state-dir>/LOCK                                  flock held while an agent runs; names the holder
//! <state-dir>/agents/<agentId>/agent.json           agent record and config snapshot
//! <state-dir>/agents/<agentId>/manifest.json        last accepted manifest
//! <state-dir>/agents/<agentId>/status.json          last built AgentStatus (overview)
//! <state-dir>/agents/<agentId>/seq.json             last reportSeq handed out, and a floor for event seqs
//! <state-dir>/agents/<agentId>/events.jsonl         agent event log (plus events.jsonl.1, the previous segment)
//! <state-dir>/agents/<agentId>/outbox.jsonl         the newest report not yet acknowledged (latest wins)
//! <state-dir>/agents/<agentId>/resources.json      every ownership record and resource state (snapshot)
//! <state-dir>/agents/<agentId>/resources.jsonl     changes to them since the snapshot (journal)
//! <state-dir>/agents/<agentId>/resources/<id>/events.jsonl  that resource's events (plus .1)
//! ```
//!
//! `seq.json` is one file the first layout did not have: the trait's last `reportSeq` has no other
//! natural home, and it also keeps a floor for event seqs so they keep increasing even after an
//! event log was quarantined. The first layout's `resources/<id>/record.json` and `state.json` became one
//! snapshot and one journal for all resources (see [`journal`]): a file pair per resource cost
//! four fsyncs per resource per change. A store written in that older layout is imported at open
//! (the snapshot is written, then the old files are removed).
//!
//! **Crash safety.** Whole-file records are replaced atomically (see [`atomic`]: temp file in the
//! same directory, fsync, rename, fsync directory), so a record is always the old or the new
//! version in full; these writes (agent record, manifest, status, outbox, seq, rollout) are
//! durable when the call returns. Records and states of resources, and event lines, are
//! *group-committed*: each change is one line appended with one `write(2)` (see [`jsonl`] and
//! [`journal`]) and [`Store::flush`], which the engine calls at the end of every pass, makes all
//! of them durable at once. So a kill -9 loses nothing, and a power cut loses at most what was
//! written since the last flush (the last pass's records, states and events) and tears at most
//! the last line of a log or journal, which is skipped when read and cut off before the next
//! append. Removing an ownership record is the exception: it is made durable at once, so a record
//! of something already deleted never comes back. What losing a pass means is argued in
//! docs/agent-store.md; in short, a lost record makes the next pass adopt what it created (and so
//! never delete it), which errs on the side of leaving things in place.
//!
//! **Damage never stops the agent.** A missing file is "none". A torn last line is a
//! [`Diagnostic::TornLine`]. A record or a log line that cannot be read (corruption, not a crash)
//! is moved aside to `<file>.corrupt-<timestamp>` and reported as [`Diagnostic::Quarantined`],
//! naming the file and line; the load that met it answers as if the file were missing
//! (`Ok(None)`, or the collection without that entry), so the agent converges from its manifest
//! instead of crash-looping. Every diagnostic is logged with `tracing::warn!` and kept for
//! [`FsStore::diagnostics`].
//!
//! **Size bound.** With a cap of `max_bytes`, the logs take at most half: the agent log half of
//! that (two segments), resource logs share the other half (two segments each). The rest is for
//! the records, whose size is set by the manifest and the status they hold (the resource journal
//! is compacted once it outgrows both the snapshot and `max_bytes / 16`); when the records need
//! more than their half (a large manifest, kept in `manifest.json` and again as the known-good
//! one in `rollout.json`, plus a temporary copy while one is replaced), the logs get less, down
//! to a floor of a few lines (see [`FsStore::log_budget`]). The outbox holds
//! one report (latest wins) and is removed when acknowledged. A resource's directory goes when
//! it has neither a record nor a state, and only the newest quarantined copy of a file is kept.
//! Event seqs and report seqs keep increasing across rotations and restarts. The cap cannot
//! shrink the records themselves: it must leave room for twice the largest status (overview and
//! outbox) plus the manifest (the default, 64 MiB, does for any valid manifest).

mod atomic;
mod budget;
mod flush;
mod journal;
mod jsonl;
mod lock;
mod logs;
mod records;
mod recover;
mod table;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use fleetlet_manifests::{AgentId, AgentManifest, AgentStatus, ResourceId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{
    AgentRecord, NewEvent, OwnershipRecord, ResourceState, Store, StoreError, StoredEvent,
};

/// The default cap on the state dir: small next to any SD card, large next to what one agent
/// needs (a 4 MiB manifest at most, plus its logs).
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Caps below this are raised to it: the logs need room for at least a few lines per segment.
pub const MIN_MAX_BYTES: u64 = 64 * 1024;
/// The logs keep at least this much, however large the records are.
pub const MIN_LOG_BUDGET: u64 = 16 * 1024;
/// A resource log segment is never smaller than this, however many resources share the budget.
const MIN_RESOURCE_SEGMENT_BYTES: u64 = 1024;
/// Event messages are cut to this many bytes so that one line stays small.
const MAX_MESSAGE_BYTES: usize = 4096;
/// Records up to this size are remembered to skip rewriting them unchanged; bigger ones (a large
/// manifest) are rare writes and not worth the memory.
const MAX_REMEMBERED_BYTES: usize = 64 * 1024;
/// How many diagnostics are kept for [`FsStore::diagnostics`]; older ones are dropped.
const MAX_DIAGNOSTICS: usize = 100;
/// A flush with more files and directories than this to sync uses one `syncfs(2)` of the state
/// dir's filesystem instead of an fsync each (a first apply of 1,000 resources creates 1,000
/// resource logs): one journal commit instead of thousands.
pub const MAX_SEPARATE_SYNCS: usize = 8;

const AGENTS_DIR: &str = "agents";
const RESOURCES_DIR: &str = "resources";
const AGENT_FILE: &str = "agent.json";
const MANIFEST_FILE: &str = "manifest.json";
/// The rollout state (known-good manifest, deadline on trial, missed deadline), one atomic record.
const ROLLOUT_FILE: &str = "rollout.json";
const STATUS_FILE: &str = "status.json";
const SEQ_FILE: &str = "seq.json";
const EVENTS_FILE: &str = "events.jsonl";
const OUTBOX_FILE: &str = "outbox.jsonl";
/// A resource's ownership record and state in the layout before the journal; only read (and
/// then removed) when a store written by an older agent is opened.
const LEGACY_RECORD_FILE: &str = "record.json";
const LEGACY_STATE_FILE: &str = "state.json";
/// Appended to a log's name for its previous segment.
const ROTATED_SUFFIX: &str = ".1";

/// How an [`FsStore`] behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsStoreOptions {
    /// The state dir stays under this many bytes (see the module documentation for the split).
    pub max_bytes: u64,
    /// Wait for the disk (fsync) before a write returns. Always on in the agent; tests that
    /// only measure sizes turn it off, which keeps every write order but not power-cut safety.
    pub sync: bool,
}

impl Default for FsStoreOptions {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_BYTES,
            sync: true,
        }
    }
}

/// Why a state dir could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum FsStoreError {
    #[error(
        "the state dir is in use by {holder} (lock {}); refusing to run a second agent on it",
        lock_path.display()
    )]
    Locked { lock_path: PathBuf, holder: String },
    #[error("cannot prepare the state dir at {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Damage the store met and worked around. Each is also logged as a warning.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Diagnostic {
    /// The last line of a log was cut short by a crash; it is skipped, and cut off before the
    /// next append.
    #[error("torn last line {line} of {} skipped (a write cut short by a crash)", path.display())]
    TornLine { path: PathBuf, line: u64 },
    /// A record or log that cannot be read was moved aside; the store goes on without it.
    #[error(
        "corrupt record in {} at line {line}: {message}; quarantined as {}",
        path.display(),
        quarantined_as.display()
    )]
    Quarantined {
        path: PathBuf,
        line: u64,
        message: String,
        quarantined_as: PathBuf,
    },
}

impl Diagnostic {
    /// The typed store error a quarantine stands for (none for a torn line, which is expected
    /// after a crash and is not an error).
    pub fn as_store_error(&self) -> Option<StoreError> {
        match self {
            Diagnostic::TornLine { .. } => None,
            Diagnostic::Quarantined {
                path,
                line,
                message,
                ..
            } => Some(StoreError::Corrupt {
                path: path.display().to_string(),
                line: *line,
                message: message.clone(),
            }),
        }
    }
}

/// The persistent store of one agent on local disk. Opening it takes the state dir's lock,
/// which is held until the store is dropped.
#[derive(Debug)]
pub struct FsStore {
    agent_id: AgentId,
    state_dir: PathBuf,
    agent_dir: PathBuf,
    resources_dir: PathBuf,
    options: FsStoreOptions,
    _lock: lock::StateDirLock,
    inner: Mutex<Inner>,
}

/// Everything that changes while the store is open; one mutex serialises all store calls, so
/// that no two writes of one file ever overlap.
#[derive(Debug, Default)]
struct Inner {
    last_event_seq: u64,
    sequences: Sequences,
    agent_log: LiveLog,
    /// Every ownership record and resource state, loaded once at open and written through.
    table: journal::Table,
    /// Counts the changes of `table.states` (see [`Store::states_revision`]).
    states_revision: u64,
    journal: journal::Journal,
    /// Resource dirs that exist (the state dir is ours alone, so this mirrors the disk). A
    /// resource has one once it has a record or a state and an event to log.
    resource_dirs: HashSet<ResourceId>,
    /// Resource logs appended to since the last flush.
    unsynced_resource_logs: HashSet<ResourceId>,
    /// Directories whose entries changed since the last flush.
    unsynced_dirs: HashSet<PathBuf>,
    /// Resource logs whose tail was checked (and repaired) since open.
    checked_resource_logs: HashSet<ResourceId>,
    /// Each small record file's content as last read or written: an unchanged record is not
    /// rewritten, which spares the card a write per resource per resync.
    written: HashMap<PathBuf, Vec<u8>>,
    /// The size of each whole-file record as last read or written, whatever its size: what the
    /// records take is left out of the logs' share of the cap (see [`FsStore::log_budget`]).
    record_sizes: HashMap<PathBuf, u64>,
    diagnostics: VecDeque<Diagnostic>,
    /// The table must be written as a new snapshot at the next flush: a rewrite at open could
    /// not be made (a full disk), or a flush failed, after which the kernel may have dropped the
    /// journal's unsynced pages (a retried `fsync` would not bring them back).
    snapshot_due: bool,
}

/// The open segment of the agent event log.
#[derive(Debug, Default)]
struct LiveLog {
    file: Option<File>,
    bytes: u64,
    first_seq: Option<u64>,
    /// A torn tail starts here; it is cut off before the next append.
    repair_to: Option<u64>,
    /// Lines were appended since the last fsync.
    unsynced: bool,
}

/// The content of `seq.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Sequences {
    last_report_seq: u64,
    /// Event seqs start above this even when every log segment is gone.
    #[serde(default)]
    event_seq_floor: u64,
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn rotated(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(ROTATED_SUFFIX);
    PathBuf::from(name)
}

fn to_json_line<T: Serialize>(path: &Path, value: &T) -> Result<Vec<u8>, StoreError> {
    let mut bytes = serde_json::to_vec(value).map_err(|e| io_error(path)(io::Error::other(e)))?;
    bytes.push(b'\n');
    Ok(bytes)
}

fn cut_message(mut message: String) -> String {
    if message.len() > MAX_MESSAGE_BYTES {
        let mut end = MAX_MESSAGE_BYTES;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

/// Creates `dir` and its missing parents, fsyncing the parent of each new directory so that the
/// new entries survive a power cut.
fn create_dir_durably(dir: &Path, sync: bool) -> io::Result<()> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
    fs::create_dir_all(dir)?;
    if sync {
        for created in missing {
            if let Some(parent) = created.parent().filter(|p| !p.as_os_str().is_empty()) {
                atomic::sync_dir(parent)?;
            }
        }
    }
    Ok(())
}

impl FsStore {
    /// Opens (creating if needed) the store of `agent_id` in `state_dir`. Fails with
    /// [`FsStoreError::Locked`], naming the holder, when another agent has the state dir open.
    ///
    /// Opening also recovers from whatever a crash left: temporary files are removed, the event
    /// seq is recovered from the newest log segment, a torn log tail is noted for repair, and
    /// resource dirs that hold neither a record nor a state are dropped.
    pub fn open(
        state_dir: impl AsRef<Path>,
        agent_id: AgentId,
        options: FsStoreOptions,
    ) -> Result<Self, FsStoreError> {
        let state_dir = state_dir.as_ref().to_path_buf();
        let options = FsStoreOptions {
            max_bytes: options.max_bytes.max(MIN_MAX_BYTES),
            ..options
        };
        create_dir_durably(&state_dir, options.sync).map_err(|source| FsStoreError::Io {
            path: state_dir.clone(),
            source,
        })?;
        let lock = lock::acquire(&state_dir, &agent_id, options.sync)?;
        let agent_dir = state_dir.join(AGENTS_DIR).join(agent_id.as_str());
        let resources_dir = agent_dir.join(RESOURCES_DIR);
        create_dir_durably(&resources_dir, options.sync).map_err(|source| FsStoreError::Io {
            path: resources_dir.clone(),
            source,
        })?;
        let store = FsStore {
            agent_id,
            state_dir,
            agent_dir,
            resources_dir,
            options,
            _lock: lock,
            inner: Mutex::new(Inner::default()),
        };
        {
            let mut inner = store.lock()?;
            store.recover(&mut inner)?;
        }
        Ok(store)
    }

    /// The state dir this store lives in.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// What the store met and worked around since it was opened, oldest first.
    pub fn diagnostics(&self) -> Vec<Diagnostic> {
        let inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        inner.diagnostics.iter().cloned().collect()
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>, StoreError> {
        self.inner.lock().map_err(|_| StoreError::Poisoned {
            agent_id: self.agent_id.clone(),
        })
    }

    fn agent_file(&self, name: &str) -> PathBuf {
        self.agent_dir.join(name)
    }

    fn resource_dir(&self, id: &ResourceId) -> PathBuf {
        self.resources_dir.join(id.as_str())
    }
}

/// What each load returns when it meets damage is stated on the module: missing or quarantined
/// files read as absent, torn log tails are skipped.
impl Store for FsStore {
    fn agent_id(&self) -> &AgentId {
        &self.agent_id
    }

    fn load_agent_record(&self) -> Result<Option<AgentRecord>, StoreError> {
        let mut inner = self.lock()?;
        self.load_record(&mut inner, &self.agent_file(AGENT_FILE))
    }

    fn save_agent_record(&self, record: &AgentRecord) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        self.save_record(&mut inner, &self.agent_file(AGENT_FILE), record)
    }

    fn load_manifest(&self) -> Result<Option<AgentManifest>, StoreError> {
        let mut inner = self.lock()?;
        self.load_record(&mut inner, &self.agent_file(MANIFEST_FILE))
    }

    fn save_manifest(&self, manifest: &AgentManifest) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        self.save_record(&mut inner, &self.agent_file(MANIFEST_FILE), manifest)
    }

    /// An unreadable record is quarantined and read as the default: the agent then knows no
    /// known-good generation and no missed deadline, so it converges to its manifest (it may
    /// retry a generation it had rolled back, but never rolls back to something unknown).
    fn load_rollout(&self) -> Result<super::RolloutState, StoreError> {
        let mut inner = self.lock()?;
        Ok(self
            .load_record(&mut inner, &self.agent_file(ROLLOUT_FILE))?
            .unwrap_or_default())
    }

    fn save_rollout(&self, rollout: &super::RolloutState) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        self.save_record(&mut inner, &self.agent_file(ROLLOUT_FILE), rollout)
    }

    /// Records that cannot be read are quarantined and left out: the agent then treats the
    /// resource as not owned and converges it from the manifest.
    /// Served from memory: the table is read once, at open.
    fn ownership_records(&self) -> Result<BTreeMap<ResourceId, OwnershipRecord>, StoreError> {
        Ok(self.lock()?.table.records.clone())
    }

    /// A record equal to the stored one is not written again (the engine saves every record
    /// every pass).
    fn save_ownership_record(
        &self,
        id: &ResourceId,
        record: &OwnershipRecord,
    ) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        if inner.table.records.get(id) == Some(record) {
            return Ok(());
        }
        let change = journal::ChangeRef::Record {
            id,
            value: Some(record),
        };
        self.commit(&mut inner, change)
    }

    /// Durable before it returns, unlike other changes: the record's object is already gone, and
    /// a record brought back by a power cut would name something the agent no longer created.
    fn remove_ownership_record(&self, id: &ResourceId) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        if !inner.table.records.contains_key(id) {
            return Ok(());
        }
        self.commit(&mut inner, journal::ChangeRef::Record { id, value: None })?;
        if self.options.sync {
            let path = self.agent_file(journal::JOURNAL_FILE);
            if let Err(error) = inner.journal.sync() {
                // The table no longer has the record; the snapshot written at the next flush
                // makes that durable, whatever became of the journal's line.
                inner.snapshot_due = true;
                return Err(io_error(&path)(error));
            }
        }
        self.drop_resource_dir_if_unused(&mut inner, id)
    }

    /// Served from memory: the table is read once, at open.
    fn resource_states(&self) -> Result<BTreeMap<ResourceId, ResourceState>, StoreError> {
        Ok(self.lock()?.table.states.clone())
    }

    fn states_revision(&self) -> Option<u64> {
        Some(self.lock().ok()?.states_revision)
    }

    /// A state equal to the stored one is not written again.
    fn save_resource_state(
        &self,
        id: &ResourceId,
        state: &ResourceState,
    ) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        if inner.table.states.get(id) == Some(state) {
            return Ok(());
        }
        let change = journal::ChangeRef::State {
            id,
            value: Some(state),
        };
        self.commit(&mut inner, change)
    }

    fn remove_resource_state(&self, id: &ResourceId) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        if !inner.table.states.contains_key(id) {
            return Ok(());
        }
        self.commit(&mut inner, journal::ChangeRef::State { id, value: None })?;
        self.drop_resource_dir_if_unused(&mut inner, id)
    }

    /// The event goes to the agent log first (it is the one that assigns seqs), then to the
    /// resource's log while the resource has a directory. A crash between the two loses the
    /// event from the resource's log only.
    fn append_event(&self, event: NewEvent) -> Result<u64, StoreError> {
        let mut inner = self.lock()?;
        let seq = inner.last_event_seq + 1;
        let stored = StoredEvent {
            seq,
            at: OffsetDateTime::now_utc(),
            kind: event.kind,
            resource_id: event.resource_id,
            message: cut_message(event.message),
        };
        let line = to_json_line(&self.agent_file(EVENTS_FILE), &stored)?;
        self.append_agent_line(&mut inner, &line, seq)?;
        inner.last_event_seq = seq;
        if let Some(id) = &stored.resource_id {
            self.append_resource_line(&mut inner, id, &line)?;
        }
        Ok(seq)
    }

    fn read_events(&self, after_seq: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        let mut inner = self.lock()?;
        let segments = self.agent_segments(&inner, after_seq);
        self.read_page(&mut inner, &segments, after_seq, limit, |_| true)
    }

    /// From the resource's own log while it exists; for a resource that is gone, from the
    /// agent log (where its last events remain).
    fn read_resource_events(
        &self,
        id: &ResourceId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let mut inner = self.lock()?;
        if inner.resource_dirs.contains(id) {
            let live = self.resource_dir(id).join(EVENTS_FILE);
            let segments = [rotated(&live), live];
            self.read_page(&mut inner, &segments, after_seq, limit, |_| true)
        } else {
            let segments = self.agent_segments(&inner, after_seq);
            self.read_page(&mut inner, &segments, after_seq, limit, |event| {
                event.resource_id.as_ref() == Some(id)
            })
        }
    }

    fn load_status(&self) -> Result<Option<AgentStatus>, StoreError> {
        let mut inner = self.lock()?;
        self.load_record(&mut inner, &self.agent_file(STATUS_FILE))
    }

    fn save_status(&self, status: &AgentStatus) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        self.save_record(&mut inner, &self.agent_file(STATUS_FILE), status)
    }

    /// The outbox is rewritten atomically with the one newest report: every report is a full
    /// snapshot, so older unsent ones are worthless, and the file never grows.
    fn enqueue_report(&self, status: &AgentStatus) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        let path = self.agent_file(OUTBOX_FILE);
        let line = to_json_line(&path, status)?;
        self.save_bytes(&mut inner, &path, &line)
    }

    fn pending_report(&self) -> Result<Option<AgentStatus>, StoreError> {
        let mut inner = self.lock()?;
        self.read_outbox(&mut inner)
    }

    fn acknowledge_report(&self, report_seq: u64) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        if self
            .read_outbox(&mut inner)?
            .is_some_and(|pending| pending.report_seq <= report_seq)
        {
            self.remove_record(&mut inner, &self.agent_file(OUTBOX_FILE))?;
        }
        Ok(())
    }

    fn last_report_seq(&self) -> Result<u64, StoreError> {
        Ok(self.lock()?.sequences.last_report_seq)
    }

    /// Durable before it returns, so that a seq handed out is never handed out again.
    fn save_last_report_seq(&self, report_seq: u64) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        if report_seq > inner.sequences.last_report_seq {
            inner.sequences.last_report_seq = report_seq;
            self.save_sequences(&mut inner)?;
        }
        Ok(())
    }

    /// The group commit: every journal line, event line and new directory entry since the last
    /// flush becomes durable here (whole-file records already are). Nothing to sync costs nothing,
    /// so an idle pass makes no system call. With `sync` off this syncs the whole filesystem, since
    /// no write waited for the disk.
    fn flush(&self) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        self.make_durable(&mut inner, !self.options.sync)
    }
}
