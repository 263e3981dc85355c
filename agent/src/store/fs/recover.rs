//! What opening the filesystem store does to recover from whatever the last run left: the
//! resource table (snapshot plus journal, or the layout before the journal), temporary files,
//! stale resource dirs, and the report and event seqs.

use std::fs::{self, OpenOptions};
use std::io;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use fleetlet_manifests::{AgentStatus, ResourceId};

use super::{
    Diagnostic, EVENTS_FILE, FsStore, Inner, LEGACY_RECORD_FILE, LEGACY_STATE_FILE, SEQ_FILE,
    STATUS_FILE, atomic, io_error, journal, jsonl, rotated,
};
use crate::store::{OwnershipRecord, ResourceState, StoreError, StoredEvent};

impl FsStore {
    /// Brings the in-memory view in line with the disk after whatever the last run left.
    pub(super) fn recover(&self, inner: &mut Inner) -> Result<(), StoreError> {
        self.sweep_temporaries(&self.agent_dir)?;
        self.load_table(inner)?;
        for (id, dir) in self.resource_dir_entries()? {
            if inner.table.tracks(&id) {
                self.sweep_temporaries(&dir)?;
                // What a crash in the middle of an import from the older layout left behind.
                for name in [LEGACY_RECORD_FILE, LEGACY_STATE_FILE] {
                    atomic::remove_durably(&dir.join(name), false).map_err(io_error(&dir))?;
                }
                inner.resource_dirs.insert(id);
            } else {
                // Nothing owned and no state: only the log of a deleted resource (its events
                // remain in the agent log), or a removal that a crash interrupted.
                fs::remove_dir_all(&dir).map_err(io_error(&dir))?;
            }
        }

        // reportSeq: the highest of what seq.json, the status and the outbox remember, so that a
        // lost seq.json cannot make a seq be handed out twice.
        let seq_path = self.agent_file(SEQ_FILE);
        inner.sequences = self.load_record(inner, &seq_path)?.unwrap_or_default();
        let status: Option<AgentStatus> = self.load_record(inner, &self.agent_file(STATUS_FILE))?;
        let pending = self.read_outbox(inner)?;
        inner.sequences.last_report_seq =
            [status.map(|s| s.report_seq), pending.map(|s| s.report_seq)]
                .into_iter()
                .flatten()
                .fold(inner.sequences.last_report_seq, u64::max);

        // Event seq: recovered from the newest segment that has events.
        let live = self.agent_file(EVENTS_FILE);
        let (mut first, mut last) = (None, 0u64);
        let report = jsonl::scan::<StoredEvent>(&live, |event| {
            first.get_or_insert(event.seq);
            last = last.max(event.seq);
            ControlFlow::Continue(())
        })
        .map_err(io_error(&live))?;
        let mut floor_moved = false;
        if let Some(report) = report {
            if let Some((line, message)) = report.corrupt {
                self.quarantine(inner, &live, line, message)?;
                first = None;
                floor_moved = true;
            } else {
                inner.agent_log.bytes = fs::metadata(&live).map_err(io_error(&live))?.len();
                if let Some((line, offset)) = report.torn {
                    self.note(
                        inner,
                        Diagnostic::TornLine {
                            path: live.clone(),
                            line,
                        },
                    );
                    inner.agent_log.repair_to = Some(offset);
                }
            }
        }
        inner.agent_log.first_seq = first;
        if first.is_none() {
            let older = rotated(&live);
            let report = jsonl::scan::<StoredEvent>(&older, |event| {
                last = last.max(event.seq);
                ControlFlow::Continue(())
            })
            .map_err(io_error(&older))?;
            if let Some((line, message)) = report.and_then(|r| r.corrupt) {
                self.quarantine(inner, &older, line, message)?;
                floor_moved = true;
            }
        }
        inner.last_event_seq = last.max(inner.sequences.event_seq_floor);
        if floor_moved {
            inner.sequences.event_seq_floor = inner.last_event_seq;
            // Kept in memory if the disk refuses it (the next save of seq.json writes it):
            // event seqs never leave the device, so a reuse after a crash costs little.
            if let Err(error) = self.save_sequences(inner) {
                tracing::warn!(%error, "could not save the event seq floor at open");
            }
        }
        Ok(())
    }

    /// Loads the resource table: the snapshot (or, in a store an older agent wrote, the
    /// per-resource `record.json` and `state.json` files), then the journal's lines over it.
    /// A torn journal tail is skipped and cut before the next append. When the snapshot is
    /// missing or unreadable, or a journal line before the last is unreadable, what could be read
    /// is written as a new snapshot at once, and a damaged journal is then quarantined.
    pub(super) fn load_table(&self, inner: &mut Inner) -> Result<(), StoreError> {
        let snapshot = self.agent_file(journal::SNAPSHOT_FILE);
        let journal_path = self.agent_file(journal::JOURNAL_FILE);
        let mut rewrite = false;
        let mut legacy = Vec::new();
        if snapshot.exists() {
            match self.load_record::<journal::Table>(inner, &snapshot)? {
                Some(table) => {
                    inner.table = table;
                    inner.journal.snapshot_bytes =
                        fs::metadata(&snapshot).map_err(io_error(&snapshot))?.len();
                }
                None => rewrite = true,
            }
            inner.written.remove(&snapshot);
        } else {
            legacy = self.import_legacy_files(inner)?;
            rewrite = true;
        }

        let mut table = std::mem::take(&mut inner.table);
        let report = jsonl::scan::<journal::Change>(&journal_path, |change| {
            table.apply(change);
            ControlFlow::Continue(())
        })
        .map_err(io_error(&journal_path))?;
        inner.table = table;
        inner.states_revision += 1;
        let mut corrupt = None;
        if let Some(report) = report {
            inner.journal.bytes = fs::metadata(&journal_path)
                .map_err(io_error(&journal_path))?
                .len();
            if let Some((line, offset)) = report.torn {
                self.note(
                    inner,
                    Diagnostic::TornLine {
                        path: journal_path.clone(),
                        line,
                    },
                );
                // Cut at once, not at the next append: a converged agent may not append for a
                // long time, and the finding should not come back at every open.
                let file = OpenOptions::new()
                    .write(true)
                    .open(&journal_path)
                    .map_err(io_error(&journal_path))?;
                jsonl::truncate_to(&file, offset, self.options.sync)
                    .map_err(io_error(&journal_path))?;
                inner.journal.bytes = offset;
            }
            if report.corrupt.is_some() {
                corrupt = report.corrupt;
                rewrite = true;
            }
        }

        if rewrite {
            let sync = self.options.sync;
            let written = match corrupt {
                None => inner
                    .journal
                    .compact(&inner.table, &snapshot, &journal_path, sync),
                Some((line, message)) => {
                    // The snapshot takes every readable line first, so that moving the journal
                    // aside loses nothing a crash in between could not replay again.
                    match inner.journal.write_snapshot(&inner.table, &snapshot, sync) {
                        Ok(()) => {
                            self.quarantine(inner, &journal_path, line, message)?;
                            inner.journal.close();
                            Ok(())
                        }
                        Err(error) => Err(error),
                    }
                }
            };
            if let Err(error) = written {
                // A full or failing disk does not stop the start: the table is in memory, the
                // files are as they were (and read the same way at the next open), and the
                // snapshot is written by the first flush that can.
                tracing::warn!(error = %io_error(&snapshot)(error), "could not rewrite the resource table at open; retrying at the next flush");
                inner.snapshot_due = true;
                return Ok(());
            }
        }
        // Files of the older layout go once the snapshot holding them is durable. A crash before
        // they are all gone leaves some behind; with a snapshot present they are never read.
        for dir in legacy {
            for name in [LEGACY_RECORD_FILE, LEGACY_STATE_FILE] {
                match fs::remove_file(dir.join(name)) {
                    Err(error) if error.kind() != io::ErrorKind::NotFound => {
                        return Err(io_error(&dir)(error));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Reads the `record.json` and `state.json` of every resource dir (the layout before the
    /// journal) into the table; unreadable ones are quarantined like any record. Returns the
    /// directories read, whose old files go once the table is in a snapshot. In a store that
    /// has a snapshot this is never called, and leftovers are removed by [`FsStore::recover`].
    pub(super) fn import_legacy_files(
        &self,
        inner: &mut Inner,
    ) -> Result<Vec<PathBuf>, StoreError> {
        let mut dirs = Vec::new();
        for (id, dir) in self.resource_dir_entries()? {
            self.sweep_temporaries(&dir)?;
            let record: Option<OwnershipRecord> =
                self.load_record(inner, &dir.join(LEGACY_RECORD_FILE))?;
            let state: Option<ResourceState> =
                self.load_record(inner, &dir.join(LEGACY_STATE_FILE))?;
            if let Some(record) = record {
                inner.table.records.insert(id.clone(), record);
            }
            if let Some(state) = state {
                inner.table.states.insert(id, state);
            }
            inner.written.retain(|path, _| !path.starts_with(&dir));
            dirs.push(dir);
        }
        Ok(dirs)
    }

    /// The per-resource directories under `resources/`, by id; other entries are passed over.
    pub(super) fn resource_dir_entries(&self) -> Result<Vec<(ResourceId, PathBuf)>, StoreError> {
        let mut found = Vec::new();
        let entries = fs::read_dir(&self.resources_dir).map_err(io_error(&self.resources_dir))?;
        for entry in entries {
            let entry = entry.map_err(io_error(&self.resources_dir))?;
            let dir = entry.path();
            let id = entry
                .file_name()
                .to_str()
                .and_then(|name| ResourceId::try_from(name).ok());
            if let Some(id) = id
                && dir.is_dir()
            {
                found.push((id, dir));
            }
        }
        Ok(found)
    }

    /// Removes the temporary files that a crash in the middle of a replacement left in `dir`.
    pub(super) fn sweep_temporaries(&self, dir: &Path) -> Result<(), StoreError> {
        for entry in fs::read_dir(dir).map_err(io_error(dir))? {
            let entry = entry.map_err(io_error(dir))?;
            if atomic::is_temp_name(&entry.file_name().to_string_lossy()) {
                fs::remove_file(entry.path()).map_err(io_error(dir))?;
            }
        }
        Ok(())
    }
}
