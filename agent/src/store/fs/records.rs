//! Whole-file records of the filesystem store (agent record, manifest, rollout, status, seqs,
//! outbox): atomic replacement, reads that quarantine what cannot be parsed, and the diagnostics
//! kept for damage met on the way.

use std::fs;
use std::io;
use std::ops::ControlFlow;
use std::path::Path;

use fleetlet_manifests::AgentStatus;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{
    Diagnostic, FsStore, Inner, MAX_DIAGNOSTICS, MAX_REMEMBERED_BYTES, OUTBOX_FILE, SEQ_FILE,
    atomic, io_error, jsonl,
};
use crate::store::StoreError;

fn remember(inner: &mut Inner, path: &Path, bytes: Vec<u8>) {
    if bytes.len() <= MAX_REMEMBERED_BYTES {
        inner.written.insert(path.to_path_buf(), bytes);
    } else {
        inner.written.remove(path);
    }
}

impl FsStore {
    /// Logs and keeps a diagnostic, once: a torn tail met again by every read until the next
    /// append is one finding, not many.
    pub(super) fn note(&self, inner: &mut Inner, diagnostic: Diagnostic) {
        if !inner.diagnostics.contains(&diagnostic) {
            tracing::warn!(diagnostic = %diagnostic, "local store damage worked around");
            inner.diagnostics.push_back(diagnostic);
            while inner.diagnostics.len() > MAX_DIAGNOSTICS {
                inner.diagnostics.pop_front();
            }
        }
    }

    pub(super) fn quarantine(
        &self,
        inner: &mut Inner,
        path: &Path,
        line: u64,
        message: String,
    ) -> Result<(), StoreError> {
        let quarantined_as = atomic::quarantine(path, self.options.sync).map_err(io_error(path))?;
        inner.written.remove(path);
        self.note(
            inner,
            Diagnostic::Quarantined {
                path: path.to_path_buf(),
                line,
                message,
                quarantined_as,
            },
        );
        Ok(())
    }

    /// Reads a whole-file record: `None` when missing, and also `None` (after quarantining it)
    /// when it cannot be parsed.
    pub(super) fn load_record<T: DeserializeOwned>(
        &self,
        inner: &mut Inner,
        path: &Path,
    ) -> Result<Option<T>, StoreError> {
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(io_error(path)(error)),
        };
        match serde_json::from_slice::<T>(&bytes) {
            Ok(value) => {
                inner
                    .record_sizes
                    .insert(path.to_path_buf(), bytes.len() as u64);
                remember(inner, path, bytes);
                Ok(Some(value))
            }
            Err(error) => {
                let line = error.line().max(1) as u64;
                self.quarantine(inner, path, line, jsonl::describe_parse_error(&error))?;
                Ok(None)
            }
        }
    }

    /// Replaces a whole-file record atomically, unless it already holds exactly these bytes.
    pub(super) fn save_bytes(
        &self,
        inner: &mut Inner,
        path: &Path,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        if inner.written.get(path).is_some_and(|last| last == bytes) && path.exists() {
            return Ok(());
        }
        atomic::write_atomically(path, bytes, self.options.sync).map_err(io_error(path))?;
        inner
            .record_sizes
            .insert(path.to_path_buf(), bytes.len() as u64);
        remember(inner, path, bytes.to_vec());
        Ok(())
    }

    pub(super) fn save_record<T: Serialize>(
        &self,
        inner: &mut Inner,
        path: &Path,
        value: &T,
    ) -> Result<(), StoreError> {
        let mut bytes =
            serde_json::to_vec_pretty(value).map_err(|e| io_error(path)(io::Error::other(e)))?;
        bytes.push(b'\n');
        self.save_bytes(inner, path, &bytes)
    }

    pub(super) fn remove_record(&self, inner: &mut Inner, path: &Path) -> Result<(), StoreError> {
        inner.written.remove(path);
        inner.record_sizes.remove(path);
        atomic::remove_durably(path, self.options.sync).map_err(io_error(path))?;
        Ok(())
    }

    pub(super) fn save_sequences(&self, inner: &mut Inner) -> Result<(), StoreError> {
        let sequences = inner.sequences.clone();
        self.save_record(inner, &self.agent_file(SEQ_FILE), &sequences)
    }

    /// The outbox's newest readable report.
    pub(super) fn read_outbox(&self, inner: &mut Inner) -> Result<Option<AgentStatus>, StoreError> {
        let path = self.agent_file(OUTBOX_FILE);
        let mut newest = None;
        let report = jsonl::scan::<AgentStatus>(&path, |status| {
            newest = Some(status);
            ControlFlow::Continue(())
        })
        .map_err(io_error(&path))?;
        let Some(report) = report else {
            return Ok(None);
        };
        if let Ok(meta) = fs::metadata(&path) {
            inner.record_sizes.insert(path.clone(), meta.len());
        }
        if let Some((line, message)) = report.corrupt {
            self.quarantine(inner, &path, line, message)?;
            return Ok(None);
        }
        if let Some((line, _)) = report.torn {
            self.note(inner, Diagnostic::TornLine { path, line });
        }
        Ok(newest)
    }
}
