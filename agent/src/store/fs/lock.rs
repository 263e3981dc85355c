//! The exclusive lock on a state dir: at most one agent process works on one store.
//!
//! The lock is `flock(2)` on `<state-dir>/LOCK` (std's `File::try_lock`), so the kernel drops it
//! when the holder exits, however it exits: a kill -9 never leaves a stale lock behind that would
//! keep the next agent from starting. The file's content names the holder (pid, agent id, start
//! time) only so that a refused agent can say who is in the way; the content is never trusted
//! for the locking itself.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use fleetlet_manifests::AgentId;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::FsStoreError;

/// The name of the lock file in the state dir.
pub(super) const LOCK_FILE: &str = "LOCK";

/// Held for as long as the store is open; dropping it (or the process ending) releases the lock.
#[derive(Debug)]
pub(super) struct StateDirLock {
    _file: File,
}

/// What the holder writes into the lock file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Holder {
    pid: u32,
    agent_id: String,
    #[serde(with = "time::serde::rfc3339")]
    started_at: OffsetDateTime,
}

/// Takes the lock on `state_dir` without waiting, or says who holds it.
pub(super) fn acquire(
    state_dir: &Path,
    agent_id: &AgentId,
    sync: bool,
) -> Result<StateDirLock, FsStoreError> {
    let path = state_dir.join(LOCK_FILE);
    let io = |source| FsStoreError::Io {
        path: path.clone(),
        source,
    };
    // Not truncated on open: the content belongs to the current holder until we hold the lock.
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(FsStoreError::Locked {
                lock_path: path.clone(),
                holder: describe_holder(&path),
            });
        }
        Err(std::fs::TryLockError::Error(source)) => return Err(io(source)),
    }
    let holder = Holder {
        pid: std::process::id(),
        agent_id: agent_id.to_string(),
        started_at: OffsetDateTime::now_utc(),
    };
    let mut text = serde_json::to_vec(&holder).map_err(|e| io(std::io::Error::other(e)))?;
    text.push(b'\n');
    // The name only tells a second agent who holds the lock; the lock itself is held. A full or
    // failing disk must not stop the start for it.
    let named = file
        .set_len(0)
        .and_then(|()| file.write_all(&text))
        .and_then(|()| if sync { file.sync_data() } else { Ok(()) });
    if let Err(error) = named {
        tracing::warn!(lock = %path.display(), %error, "could not write this agent's name into the lock file");
    }
    Ok(StateDirLock { _file: file })
}

/// "agent pi-1 (pid 812, running since …)", from the lock file's content.
fn describe_holder(path: &PathBuf) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    match serde_json::from_str::<Holder>(text.trim()) {
        Ok(holder) => format!(
            "agent {} (pid {}, running since {})",
            holder.agent_id,
            holder.pid,
            holder
                .started_at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|_| "an unknown time".to_owned())
        ),
        // The holder may be between taking the lock and writing its name.
        Err(_) => "a process that has not written its name yet".to_owned(),
    }
}

#[cfg(test)]
mod tests;
