//! The size cap of the filesystem store: what the state dir uses, and how much of the cap the
//! event logs get once the records have what they need.

use std::fs;
use std::io;
use std::path::Path;

use super::{FsStore, Inner, MIN_LOG_BUDGET, MIN_RESOURCE_SEGMENT_BYTES, io_error};
use crate::store::StoreError;

/// Sum of the sizes of all files under `dir`.
fn usage_of(dir: &Path) -> io::Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            usage_of(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

impl FsStore {
    /// Bytes used by all files under the state dir (what the size cap bounds).
    pub fn disk_usage(&self) -> Result<u64, StoreError> {
        usage_of(&self.state_dir).map_err(io_error(&self.state_dir))
    }

    /// What the logs may take: half the cap, less whatever the records need beyond the other
    /// half at their peak: every whole-file record (`manifest.json` and the known-good manifest
    /// in `rollout.json` are the big ones) plus the temporary copy of the largest, which a
    /// replacement writes beside the old file, and the resource table's snapshot twice (the
    /// same for its compaction) plus a journal as large as the snapshot or the compaction floor.
    /// Never below [`MIN_LOG_BUDGET`]: records larger than the cap cannot be shrunk, and the
    /// logs then keep a few lines each.
    pub(super) fn log_budget(&self, inner: &Inner) -> u64 {
        let max = self.options.max_bytes;
        let records: u64 = inner.record_sizes.values().sum();
        let largest = inner.record_sizes.values().copied().max().unwrap_or(0);
        let snapshot = inner.journal.snapshot_bytes;
        let table = 2 * snapshot + snapshot.max(max / 16);
        (max / 2)
            .min(max.saturating_sub(records + largest + table))
            .max(MIN_LOG_BUDGET)
    }

    /// The agent log has half the logs' budget, in two segments.
    pub(super) fn agent_segment_bytes(&self, inner: &Inner) -> u64 {
        self.log_budget(inner) / 4
    }

    /// Resource logs share the other half of the logs' budget, two segments each.
    pub(super) fn resource_segment_bytes(&self, inner: &Inner) -> u64 {
        let budget = self.log_budget(inner);
        let resources = inner.table.resource_count();
        let share = budget / 2 / (2 * resources.max(1) as u64);
        share.clamp(MIN_RESOURCE_SEGMENT_BYTES, budget / 4)
    }
}
