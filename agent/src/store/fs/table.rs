//! Writing through the resource table: each change to an ownership record or a resource state
//! is a journal line (compacted into the snapshot when it outgrows its share), and each
//! resource has a directory for its log while it has a record or a state.

use std::fs;
use std::io;

use fleetlet_manifests::ResourceId;

use super::{FsStore, Inner, io_error, journal};
use crate::store::StoreError;

impl FsStore {
    /// Creates a resource's directory for its log. Its entry is made durable by the next flush,
    /// with the log's first lines: until then a power cut loses both, and nothing else.
    pub(super) fn ensure_resource_dir(
        &self,
        inner: &mut Inner,
        id: &ResourceId,
    ) -> Result<(), StoreError> {
        if !inner.resource_dirs.contains(id) {
            let dir = self.resource_dir(id);
            match fs::create_dir(&dir) {
                Err(error) if error.kind() != io::ErrorKind::AlreadyExists => {
                    return Err(io_error(&dir)(error));
                }
                _ => {}
            }
            inner.unsynced_dirs.insert(self.resources_dir.clone());
            inner.resource_dirs.insert(id.clone());
        }
        Ok(())
    }

    /// Appends a change to the journal and then applies it to the table, compacting the journal
    /// into the snapshot when it has grown past its share.
    pub(super) fn commit(
        &self,
        inner: &mut Inner,
        change: journal::ChangeRef<'_>,
    ) -> Result<(), StoreError> {
        let path = self.agent_file(journal::JOURNAL_FILE);
        let line = change
            .to_line()
            .map_err(|e| io_error(&path)(io::Error::other(e)))?;
        if inner
            .journal
            .append(&path, &line)
            .map_err(io_error(&path))?
        {
            inner.unsynced_dirs.insert(self.agent_dir.clone());
        }
        let table = &mut inner.table;
        match change {
            journal::ChangeRef::Record { id, value } => match value {
                Some(record) => {
                    table.records.insert(id.clone(), record.clone());
                }
                None => {
                    table.records.remove(id);
                }
            },
            journal::ChangeRef::State { id, value } => {
                match value {
                    Some(state) => {
                        table.states.insert(id.clone(), state.clone());
                    }
                    None => {
                        table.states.remove(id);
                    }
                }
                inner.states_revision += 1;
            }
        }
        if inner.journal.needs_compaction(self.options.max_bytes) {
            let snapshot = self.agent_file(journal::SNAPSHOT_FILE);
            inner
                .journal
                .compact(&inner.table, &snapshot, &path, self.options.sync)
                .map_err(io_error(&snapshot))?;
        }
        Ok(())
    }

    /// Once a resource has neither a record nor a state, its directory (and its log) goes: the
    /// resource no longer exists for this agent, and its events remain in the agent log.
    pub(super) fn drop_resource_dir_if_unused(
        &self,
        inner: &mut Inner,
        id: &ResourceId,
    ) -> Result<(), StoreError> {
        let dir = self.resource_dir(id);
        if !inner.resource_dirs.contains(id) || inner.table.tracks(id) {
            return Ok(());
        }
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(io_error(&dir)(error)),
        }
        // A removal a power cut undoes leaves a directory without a record or a state, which the
        // next open removes again: no need to wait for the disk here.
        inner.resource_dirs.remove(id);
        inner.checked_resource_logs.remove(id);
        inner.unsynced_resource_logs.remove(id);
        Ok(())
    }
}
