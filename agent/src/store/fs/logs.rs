//! The event logs of the filesystem store: appending to the agent log and the resource logs,
//! rotation into two segments, torn-tail repair, and paged reads.

use std::fs::{self, OpenOptions};
use std::io;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use fleetlet_manifests::ResourceId;

use super::{Diagnostic, EVENTS_FILE, FsStore, Inner, LiveLog, atomic, io_error, jsonl, rotated};
use crate::store::{MAX_EVENTS_PER_READ, StoreError, StoredEvent};

impl FsStore {
    /// Appends one line to the agent log, cutting a torn tail first and rotating when the
    /// segment is full. Rotation renames the live segment over the previous one in one atomic
    /// step, so a crash leaves either the old pair of segments or the new one.
    pub(super) fn append_agent_line(
        &self,
        inner: &mut Inner,
        line: &[u8],
        seq: u64,
    ) -> Result<(), StoreError> {
        let path = self.agent_file(EVENTS_FILE);
        let sync = self.options.sync;
        let segment = self.agent_segment_bytes(inner);
        let log = &mut inner.agent_log;
        if log.file.is_none() {
            let (file, len, created) = jsonl::open_for_append(&path).map_err(io_error(&path))?;
            if created {
                inner.unsynced_dirs.insert(self.agent_dir.clone());
            }
            log.file = Some(file);
            log.bytes = len;
        }
        if let (Some(to), Some(file)) = (log.repair_to, log.file.as_ref()) {
            jsonl::truncate_to(file, to, sync).map_err(io_error(&path))?;
            log.bytes = to;
            log.repair_to = None;
        }
        if log.bytes > 0 && log.bytes + line.len() as u64 > segment {
            // The full segment's last lines are made durable before it stops being the live one
            // (a flush only syncs the live segment).
            if let (true, true, Some(file)) = (sync, log.unsynced, log.file.as_ref()) {
                file.sync_data().map_err(io_error(&path))?;
            }
            log.file = None;
            fs::rename(&path, rotated(&path)).map_err(io_error(&path))?;
            let (file, _, _) = jsonl::open_for_append(&path).map_err(io_error(&path))?;
            if sync {
                atomic::sync_dir(&self.agent_dir).map_err(io_error(&self.agent_dir))?;
            }
            log.file = Some(file);
            log.bytes = 0;
            log.first_seq = None;
        }
        let Some(file) = log.file.as_mut() else {
            return Err(io_error(&path)(io::Error::other(
                "the event log is not open",
            )));
        };
        // Not synced here: the next flush makes every line since the last one durable at once.
        if let Err(error) = jsonl::append_line(file, line, false) {
            // Part of the line may have been written: cut it off before the next append.
            log.repair_to = Some(log.bytes);
            return Err(io_error(&path)(error));
        }
        log.unsynced = true;
        log.bytes += line.len() as u64;
        log.first_seq.get_or_insert(seq);
        Ok(())
    }

    /// Appends one line to a resource's log while the resource has a record or a state; the
    /// next flush makes it durable.
    pub(super) fn append_resource_line(
        &self,
        inner: &mut Inner,
        id: &ResourceId,
        line: &[u8],
    ) -> Result<(), StoreError> {
        if !inner.table.tracks(id) {
            return Ok(());
        }
        self.ensure_resource_dir(inner, id)?;
        let dir = self.resource_dir(id);
        let path = dir.join(EVENTS_FILE);
        if !inner.checked_resource_logs.contains(id) {
            self.repair_log(inner, &path)?;
            inner.checked_resource_logs.insert(id.clone());
        }
        let (mut file, len, mut created) =
            jsonl::open_for_append(&path).map_err(io_error(&path))?;
        let segment = self.resource_segment_bytes(inner);
        if len > 0 && len + line.len() as u64 > segment {
            if self.options.sync && inner.unsynced_resource_logs.contains(id) {
                file.sync_data().map_err(io_error(&path))?;
            }
            drop(file);
            fs::rename(&path, rotated(&path)).map_err(io_error(&path))?;
            (file, _, created) = jsonl::open_for_append(&path).map_err(io_error(&path))?;
        }
        if created {
            inner.unsynced_dirs.insert(dir);
        }
        if let Err(error) = jsonl::append_line(&mut file, line, false) {
            inner.checked_resource_logs.remove(id);
            return Err(io_error(&path)(error));
        }
        inner.unsynced_resource_logs.insert(id.clone());
        Ok(())
    }

    /// Makes a log line-aligned again: a torn tail is cut off, a corrupt log quarantined.
    pub(super) fn repair_log(&self, inner: &mut Inner, path: &Path) -> Result<(), StoreError> {
        let Some(report) = jsonl::scan::<StoredEvent>(path, |_| ControlFlow::Continue(()))
            .map_err(io_error(path))?
        else {
            return Ok(());
        };
        if let Some((line, message)) = report.corrupt {
            return self.quarantine(inner, path, line, message);
        }
        if let Some((line, offset)) = report.torn {
            self.note(
                inner,
                Diagnostic::TornLine {
                    path: path.to_path_buf(),
                    line,
                },
            );
            let file = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(io_error(path))?;
            jsonl::truncate_to(&file, offset, self.options.sync).map_err(io_error(path))?;
        }
        Ok(())
    }

    /// One page of events from a log's segments (older first), line by line: at most `limit`
    /// events are held in memory, whatever the size of the files.
    pub(super) fn read_page(
        &self,
        inner: &mut Inner,
        segments: &[PathBuf],
        after_seq: u64,
        limit: usize,
        keep: impl Fn(&StoredEvent) -> bool,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let limit = limit.min(MAX_EVENTS_PER_READ);
        let mut page = Vec::new();
        if limit == 0 {
            return Ok(page);
        }
        for path in segments {
            let report = jsonl::scan::<StoredEvent>(path, |event| {
                if event.seq > after_seq && keep(&event) {
                    page.push(event);
                }
                if page.len() >= limit {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .map_err(io_error(path))?;
            let Some(report) = report else { continue };
            if let Some((line, message)) = report.corrupt {
                self.quarantine(inner, path, line, message)?;
                if *path == self.agent_file(EVENTS_FILE) {
                    inner.agent_log = LiveLog::default();
                    inner.sequences.event_seq_floor = inner.last_event_seq;
                    self.save_sequences(inner)?;
                }
            } else if let Some((line, _)) = report.torn {
                self.note(
                    inner,
                    Diagnostic::TornLine {
                        path: path.clone(),
                        line,
                    },
                );
            }
            if report.stopped {
                break;
            }
        }
        Ok(page)
    }

    /// The agent log's segments worth reading for events after `after_seq`: the previous
    /// segment is skipped when the live one already starts early enough.
    pub(super) fn agent_segments(&self, inner: &Inner, after_seq: u64) -> Vec<PathBuf> {
        let live = self.agent_file(EVENTS_FILE);
        match inner.agent_log.first_seq {
            Some(first) if first <= after_seq.saturating_add(1) => vec![live],
            _ => vec![rotated(&live), live],
        }
    }
}
