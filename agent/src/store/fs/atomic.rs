//! Crash-safe replacement and removal of whole files, and quarantine of corrupt ones: the store's
//! names for them, on top of [`crate::confined`], which does the replacing and removing for every
//! writer of the agent.
//!
//! The crash-safety argument for [`write_atomically`]: the new content goes to a temporary file
//! in the same directory, is fsynced, and only then renamed over the old name; the directory is
//! fsynced last. A kill -9 or a power cut before the rename leaves the old file untouched (plus a
//! stray temporary, swept away at the next open). `rename(2)` within one directory is atomic, so
//! at no point does the name point to a half-written file: because the data was durable before
//! the rename, whichever directory entry survives a power cut (old or new) names a complete file.
//! The final directory fsync makes the new entry itself durable before the caller is told the
//! write happened, so an acknowledged write is never rolled back by a power cut.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use time::OffsetDateTime;
use time::macros::format_description;

use crate::confined::{self, Durability, ModeChoice, Replace};

/// Marks the temporary file a replacement is written to: `<dir>/.<name>.tmp`.
pub(super) const TEMP_SUFFIX: &str = ".tmp";

/// Marks a quarantined file: `<name>.corrupt-<UTC timestamp>`.
pub(super) const QUARANTINE_MARK: &str = ".corrupt-";

fn parent_of(path: &Path) -> &Path {
    path.parent().unwrap_or_else(|| Path::new("."))
}

fn file_name_of(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The temporary sibling of `path`, as [`confined::temporary_name`] names it with [`TEMP_SUFFIX`].
/// A fixed name is enough: the state dir is locked by one agent, and every write of one file is
/// serialised by the store's mutex.
#[cfg(test)]
pub(super) fn temp_path(path: &Path) -> PathBuf {
    parent_of(path).join(format!(".{}{TEMP_SUFFIX}", file_name_of(path)))
}

/// True for names written by [`temp_path`], which only a crash can leave behind.
pub(super) fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(TEMP_SUFFIX)
}

/// Replaces `path` with `bytes` so that, whatever the moment of a crash, the file holds either the
/// old or the new content in full. With `sync` off the order is the same but nothing waits for the
/// disk: a process crash is still safe, a power cut may lose the latest writes (never tear them).
/// A temporary that could not be finished (a full disk) is removed, so it does not hold on to
/// its space. The file is created as `open(2)` would (mode 0666 less the umask).
pub(super) fn write_atomically(path: &Path, bytes: &[u8], sync: bool) -> io::Result<()> {
    let how = Replace {
        mode: ModeChoice::CreatedWith(0o666),
        uid: None,
        gid: None,
        durability: if sync {
            Durability::Full
        } else {
            Durability::None
        },
        temp_suffix: TEMP_SUFFIX,
    };
    let dir = confined::open_dir(parent_of(path)).map_err(io::Error::from)?;
    confined::replace(&dir, name_of(path), path, bytes, &how)
        .map_err(confined::ConfinedError::into_io)
}

fn name_of(path: &Path) -> &OsStr {
    path.file_name().unwrap_or_else(|| OsStr::new(""))
}

/// Makes the entries of `dir` (files created, renamed or removed in it) durable.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    confined::sync_dir(dir)
}

/// Removes `path` if it exists and makes the removal durable. Returns whether it existed.
pub(super) fn remove_durably(path: &Path, sync: bool) -> io::Result<bool> {
    let dir = match confined::open_dir(parent_of(path)) {
        Ok(dir) => dir,
        // No directory, no file.
        Err(nix::errno::Errno::ENOENT) => return Ok(false),
        Err(errno) => return Err(errno.into()),
    };
    confined::remove_at(&dir, name_of(path), path, sync).map_err(confined::ConfinedError::into_io)
}

/// Moves a corrupt file aside as `<name>.corrupt-<timestamp>` so that the store starts over
/// without it while an operator can still inspect it. Only the newest quarantined copy of each
/// file is kept: a disk that keeps corrupting one file must not fill the card with copies.
pub(super) fn quarantine(path: &Path, sync: bool) -> io::Result<PathBuf> {
    let dir = parent_of(path);
    let prefix = format!("{}{QUARANTINE_MARK}", file_name_of(path));
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            fs::remove_file(entry.path())?;
        }
    }
    let stamp = OffsetDateTime::now_utc()
        .format(format_description!(
            "[year][month][day]T[hour][minute][second].[subsecond digits:3]Z"
        ))
        .unwrap_or_else(|_| "unknown-time".to_owned());
    let target = dir.join(format!("{prefix}{stamp}"));
    fs::rename(path, &target)?;
    if sync {
        sync_dir(dir)?;
    }
    Ok(target)
}

#[cfg(test)]
mod tests;
