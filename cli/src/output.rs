//! Every byte the CLI prints goes through here. `println!` panics when its write fails, and a
//! reader that stops early (`fleetlet get status pi-1 -o json | head -1`) makes every later write
//! fail with a broken pipe. So stdout is written through a handle whose errors come back: a
//! broken pipe becomes [`CliError::OutputClosed`], which the binary turns into a silent exit with
//! status 141 (what a shell reports for a program that SIGPIPE ended, as most Unix tools are);
//! any other write error is [`CliError::Print`]. Notes on stderr (progress, warnings, the final
//! error) are best effort: a closed stderr changes nothing about the command's outcome.

use std::io::Write as _;

use super::CliError;

/// The exit status when the reader of stdout went away: 128 + SIGPIPE.
pub const OUTPUT_CLOSED_STATUS: u8 = 141;

fn print_error(error: std::io::Error) -> CliError {
    if error.kind() == std::io::ErrorKind::BrokenPipe {
        CliError::OutputClosed
    } else {
        CliError::Print(error.to_string())
    }
}

/// Writes `text` to stdout as it is and flushes it, so that a pipe (or `events --follow`'s
/// reader) sees it at once and a failed write is reported here rather than lost at exit.
pub(super) fn print(text: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes()).map_err(print_error)?;
    stdout.flush().map_err(print_error)
}

/// Writes `text` and a newline to stdout.
pub(super) fn print_line(text: &str) -> Result<(), CliError> {
    print(&format!("{text}\n"))
}

/// Writes `text` to stderr as it is, ignoring a failure.
pub fn note(text: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_all(text.as_bytes());
    let _ = stderr.flush();
}

/// Writes `text` and a newline to stderr, ignoring a failure.
pub fn note_line(text: &str) {
    note(&format!("{text}\n"));
}

#[cfg(test)]
mod tests;
