//! JSON Lines logs: line-by-line scanning that tells a torn tail from a corrupt middle, and
//! appends that keep the file line-aligned.
//!
//! The crash-safety argument: a line is appended with one `write(2)` on an `O_APPEND` descriptor
//! and then fsynced. A kill -9 or a power cut can leave at most the last line incomplete (a large
//! write can be cut between pages; a power cut can also leave a zero-filled tail), never an
//! earlier one, because earlier lines were durable before the next write began. So a bad *last*
//! line is the expected trace of a crash: it is skipped when read and cut off before the next
//! append. A bad line *before* the last one cannot come from a crash and is treated as
//! corruption.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::ops::ControlFlow;
use std::path::Path;

use serde::de::DeserializeOwned;

/// What a scan found besides the records it handed out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct ScanReport {
    /// True when the visitor stopped the scan early; torn or corrupt lines after that point are
    /// not reported.
    pub stopped: bool,
    /// The last line is incomplete or unreadable: `(line number, byte offset where it starts)`.
    pub torn: Option<(u64, u64)>,
    /// The first unreadable line that is followed by more lines: `(line number, parse error)`.
    pub corrupt: Option<(u64, String)>,
}

/// Reads `path` line by line (never the whole file at once), handing each readable record to
/// `visit` until it breaks. Unreadable lines are reported, not handed out; the scan goes on past
/// a corrupt line so that the caller still sees every readable record (for example to recover the
/// highest sequence number). Returns `None` when the file does not exist.
pub(super) fn scan<T: DeserializeOwned>(
    path: &Path,
    mut visit: impl FnMut(T) -> ControlFlow<()>,
) -> io::Result<Option<ScanReport>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let mut reader = BufReader::new(file);
    let mut report = ScanReport::default();
    let mut line = Vec::new();
    let mut offset = 0u64;
    let mut number = 0u64;
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line)?;
        if read == 0 {
            return Ok(Some(report));
        }
        number += 1;
        let start = offset;
        offset += read as u64;
        let Some(body) = line.strip_suffix(b"\n") else {
            // No newline: the file ends inside this line, which a cut-short append leaves.
            report.torn = Some((number, start));
            return Ok(Some(report));
        };
        match serde_json::from_slice::<T>(body) {
            Ok(record) => {
                if visit(record).is_break() {
                    report.stopped = true;
                    return Ok(Some(report));
                }
            }
            Err(error) => {
                if reader.fill_buf()?.is_empty() {
                    // A complete but unreadable last line (e.g. zeros after a power cut) is
                    // the same trace of a crash as a missing newline.
                    report.torn = Some((number, start));
                    return Ok(Some(report));
                }
                if report.corrupt.is_none() {
                    report.corrupt = Some((number, describe_parse_error(&error)));
                }
            }
        }
    }
}

/// Why a record could not be parsed, in words that never quote the record's content: a
/// manifest or a status may hold file contents that have no business in a log line.
pub(super) fn describe_parse_error(error: &serde_json::Error) -> String {
    match error.classify() {
        serde_json::error::Category::Data => format!(
            "the JSON does not match the expected record (line {} column {})",
            error.line(),
            error.column()
        ),
        // Syntax and end-of-input errors name what was expected, never what was found.
        _ => error.to_string(),
    }
}

/// Opens `path` for appending, creating it if needed. Returns the file, its current length, and
/// whether it was created (the caller then fsyncs the directory so the new entry is durable).
pub(super) fn open_for_append(path: &Path) -> io::Result<(File, u64, bool)> {
    let existed = path.exists();
    let file = OpenOptions::new().append(true).create(true).open(path)?;
    let len = file.metadata()?.len();
    Ok((file, len, !existed))
}

/// Appends one complete line (which must end with `\n`) with a single write, then makes it
/// durable when `sync` is set.
pub(super) fn append_line(file: &mut File, line: &[u8], sync: bool) -> io::Result<()> {
    debug_assert!(line.ends_with(b"\n"));
    file.write_all(line)?;
    if sync {
        file.sync_data()?;
    }
    Ok(())
}

/// Cuts a torn tail off so that the next append starts on a line of its own.
pub(super) fn truncate_to(file: &File, len: u64, sync: bool) -> io::Result<()> {
    file.set_len(len)?;
    if sync {
        file.sync_data()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
