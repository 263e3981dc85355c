//! The group commit of the filesystem store: one flush makes the journal, the logs appended
//! to and the directories changed since the last one durable, by an fsync each or one syncfs.

use std::fs::{File, OpenOptions};
use std::io;

use super::{EVENTS_FILE, FsStore, Inner, MAX_SEPARATE_SYNCS, atomic, io_error, journal};
use crate::store::StoreError;

impl FsStore {
    /// Makes everything written so far durable: the journal and the logs appended to, and the
    /// directories whose entries changed. Many scattered files (the logs of a first apply) are
    /// synced by one `syncfs(2)`, a few by an fsync each; `whole_filesystem` asks for `syncfs`.
    pub(super) fn make_durable(
        &self,
        inner: &mut Inner,
        whole_filesystem: bool,
    ) -> Result<(), StoreError> {
        let result = self.make_durable_once(inner, whole_filesystem);
        if result.is_err() {
            inner.snapshot_due = true;
        }
        result
    }

    /// [`FsStore::make_durable`]'s work. After a failure, the table is first written whole as
    /// the snapshot (which also empties the journal), since lines written before a failed sync
    /// may be gone from the page cache whatever a later sync answers.
    pub(super) fn make_durable_once(
        &self,
        inner: &mut Inner,
        whole_filesystem: bool,
    ) -> Result<(), StoreError> {
        if inner.snapshot_due {
            let snapshot = self.agent_file(journal::SNAPSHOT_FILE);
            let journal_path = self.agent_file(journal::JOURNAL_FILE);
            inner
                .journal
                .compact(&inner.table, &snapshot, &journal_path, self.options.sync)
                .map_err(io_error(&snapshot))?;
            inner.snapshot_due = false;
        }
        let scattered = inner.unsynced_resource_logs.len() + inner.unsynced_dirs.len();
        if whole_filesystem || scattered > MAX_SEPARATE_SYNCS {
            let dir = File::open(&self.agent_dir).map_err(io_error(&self.agent_dir))?;
            nix::unistd::syncfs(&dir).map_err(|e| io_error(&self.agent_dir)(io::Error::from(e)))?;
            inner.journal.mark_synced();
            inner.agent_log.unsynced = false;
            inner.unsynced_resource_logs.clear();
            inner.unsynced_dirs.clear();
            return Ok(());
        }
        let journal_path = self.agent_file(journal::JOURNAL_FILE);
        inner.journal.sync().map_err(io_error(&journal_path))?;
        if let (true, Some(file)) = (inner.agent_log.unsynced, inner.agent_log.file.as_ref()) {
            file.sync_data()
                .map_err(io_error(&self.agent_file(EVENTS_FILE)))?;
        }
        inner.agent_log.unsynced = false;
        for id in std::mem::take(&mut inner.unsynced_resource_logs) {
            let path = self.resource_dir(&id).join(EVENTS_FILE);
            match OpenOptions::new().append(true).open(&path) {
                Ok(file) => file.sync_data().map_err(io_error(&path))?,
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(io_error(&path)(error)),
            }
        }
        for dir in std::mem::take(&mut inner.unsynced_dirs) {
            atomic::sync_dir(&dir).map_err(io_error(&dir))?;
        }
        Ok(())
    }
}
