//! The resource table (every ownership record and resource state) and how it is made durable:
//! a snapshot file plus a journal of the changes since, committed as a group.
//!
//! The crash-safety argument: the snapshot is only ever replaced whole (see [`super::atomic`]).
//! A change is appended to the journal as one line with one `write(2)` before the in-memory
//! table takes it, and lines are fsynced together when the store is flushed (once per pass), not
//! one by one. A kill -9 loses nothing (every line is in the kernel before the call returns); a
//! power cut can lose or tear the lines written since the last flush and nothing older, and a
//! torn or unreadable tail is recognised by the line format and skipped. Every line is the whole
//! new value of one record or state (or its removal), so replaying a line twice, or over a
//! snapshot that already holds it, changes nothing: compaction writes the snapshot durably first
//! and only then empties the journal, and a crash in between replays lines the snapshot already
//! has.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use fleetlet_manifests::ResourceId;
use serde::{Deserialize, Serialize};

use super::atomic;
use crate::store::{OwnershipRecord, ResourceState};

/// The snapshot: the whole table as of the last compaction.
pub(super) const SNAPSHOT_FILE: &str = "resources.json";
/// The journal: one [`Change`] per line since the snapshot.
pub(super) const JOURNAL_FILE: &str = "resources.jsonl";
/// The journal is compacted into the snapshot once it is larger than the snapshot and than this.
const MIN_COMPACTION_BYTES: u64 = 64 * 1024;

/// Every ownership record and resource state, by resource id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Table {
    #[serde(default)]
    pub records: BTreeMap<ResourceId, OwnershipRecord>,
    #[serde(default)]
    pub states: BTreeMap<ResourceId, ResourceState>,
}

impl Table {
    /// Whether the resource has a record or a state (and so a directory for its log).
    pub fn tracks(&self, id: &ResourceId) -> bool {
        self.records.contains_key(id) || self.states.contains_key(id)
    }

    /// The number of resources with a record or a state.
    pub fn resource_count(&self) -> usize {
        self.records.len()
            + self
                .states
                .keys()
                .filter(|id| !self.records.contains_key(*id))
                .count()
    }

    /// Takes one journal line. Idempotent: applying it again leaves the table as it is.
    pub fn apply(&mut self, change: Change) {
        match change {
            Change::Record {
                id,
                value: Some(record),
            } => {
                self.records.insert(id, record);
            }
            Change::Record { id, value: None } => {
                self.records.remove(&id);
            }
            Change::State {
                id,
                value: Some(state),
            } => {
                self.states.insert(id, state);
            }
            Change::State { id, value: None } => {
                self.states.remove(&id);
            }
        }
    }
}

/// One journal line: the new value of a resource's record or state, or `None` for its removal.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) enum Change {
    Record {
        id: ResourceId,
        value: Option<OwnershipRecord>,
    },
    State {
        id: ResourceId,
        value: Option<ResourceState>,
    },
}

/// [`Change`] as written, borrowing the value instead of cloning it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) enum ChangeRef<'a> {
    Record {
        id: &'a ResourceId,
        value: Option<&'a OwnershipRecord>,
    },
    State {
        id: &'a ResourceId,
        value: Option<&'a ResourceState>,
    },
}

impl ChangeRef<'_> {
    /// The change as one journal line, newline included.
    pub fn to_line(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut line = serde_json::to_vec(self)?;
        line.push(b'\n');
        Ok(line)
    }
}

/// The open journal and what is known about it and the snapshot.
#[derive(Debug, Default)]
pub(super) struct Journal {
    file: Option<File>,
    /// The journal's length: where the next line goes.
    pub bytes: u64,
    /// The snapshot's length, which sets when the journal is worth compacting.
    pub snapshot_bytes: u64,
    /// Lines were written since the last fsync.
    unsynced: bool,
    /// A torn tail or a failed write starts here; it is cut off before the next append.
    repair_to: Option<u64>,
}

impl Journal {
    /// Appends one line (ending in `\n`) with a single write, without waiting for the disk:
    /// [`Journal::sync`] does that for every line since the last one. Returns whether the file
    /// was created, in which case its directory entry still has to be made durable.
    pub fn append(&mut self, path: &Path, line: &[u8]) -> io::Result<bool> {
        debug_assert!(line.ends_with(b"\n"));
        let mut created = false;
        if self.file.is_none() {
            let (file, len, new) = super::jsonl::open_for_append(path)?;
            self.file = Some(file);
            self.bytes = len;
            created = new;
        }
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("journal not open"))?;
        if let Some(to) = self.repair_to {
            file.set_len(to)?;
            self.bytes = to;
            self.repair_to = None;
        }
        if let Err(error) = file.write_all(line) {
            // Part of the line may be in the file: cut it off before the next append.
            self.repair_to = Some(self.bytes);
            return Err(error);
        }
        self.bytes += line.len() as u64;
        self.unsynced = true;
        Ok(created)
    }

    /// Makes every line appended so far durable (one `fdatasync`, nothing when none waits).
    pub fn sync(&mut self) -> io::Result<()> {
        if let (true, Some(file)) = (self.unsynced, self.file.as_ref()) {
            file.sync_data()?;
        }
        self.unsynced = false;
        Ok(())
    }

    /// Counts lines made durable by other means (a `syncfs` of the whole filesystem).
    pub fn mark_synced(&mut self) {
        self.unsynced = false;
    }

    /// A journal larger than both the snapshot and a floor (`max_bytes / 16` of the store's cap,
    /// at least 64 KiB) is folded into the snapshot: replay at open then stays short and the
    /// pair takes at most about twice the table's size.
    pub fn needs_compaction(&self, max_bytes: u64) -> bool {
        self.bytes
            > self
                .snapshot_bytes
                .max((max_bytes / 16).max(MIN_COMPACTION_BYTES))
    }

    /// Writes `table` as the new snapshot (atomically, durably when `sync`), then empties the
    /// journal. The order is what makes a crash in between harmless: the journal's lines are
    /// all already in the snapshot, and replaying them over it changes nothing.
    pub fn compact(
        &mut self,
        table: &Table,
        snapshot: &Path,
        journal: &Path,
        sync: bool,
    ) -> io::Result<()> {
        self.write_snapshot(table, snapshot, sync)?;
        if self.file.is_none() && journal.exists() {
            self.file = Some(OpenOptions::new().append(true).open(journal)?);
        }
        if let Some(file) = &self.file {
            file.set_len(0)?;
            if sync {
                file.sync_data()?;
            }
        }
        self.bytes = 0;
        self.repair_to = None;
        self.unsynced = false;
        Ok(())
    }

    /// Replaces the snapshot with `table` (atomically; durably when `sync`).
    pub fn write_snapshot(&mut self, table: &Table, snapshot: &Path, sync: bool) -> io::Result<()> {
        let mut bytes = serde_json::to_vec(table).map_err(io::Error::other)?;
        bytes.push(b'\n');
        atomic::write_atomically(snapshot, &bytes, sync)?;
        self.snapshot_bytes = bytes.len() as u64;
        Ok(())
    }

    /// Forgets the open file (after the journal was moved aside).
    pub fn close(&mut self) {
        self.file = None;
        self.bytes = 0;
        self.repair_to = None;
        self.unsynced = false;
    }
}

#[cfg(test)]
mod tests;
