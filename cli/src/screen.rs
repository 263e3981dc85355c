//! How a watched display reaches stdout: on a terminal the block of lines is drawn again in
//! place (cursor up, clear to the end of the screen); anywhere else (a pipe, a file, a CI log)
//! only the lines that changed since the last frame are printed, as plain text with no escape
//! code, so a log reads as a history of what happened.
//!
//! On a terminal every line is cut to the terminal's width: a line that wrapped would take two
//! rows, and the next redraw would move up too few of them.

use std::io::IsTerminal as _;

/// ANSI: move the cursor to the start of the line `n` lines up.
fn cursor_up(n: usize) -> String {
    format!("\x1b[{n}F")
}

/// ANSI: clear from the cursor to the end of the screen.
const CLEAR_BELOW: &str = "\x1b[J";

/// The width assumed when the terminal does not say.
const DEFAULT_WIDTH: usize = 80;

/// The columns of the terminal on stdout.
fn terminal_width() -> usize {
    rustix::termios::tcgetwinsize(std::io::stdout())
        .map(|size| usize::from(size.ws_col))
        .ok()
        .filter(|width| *width > 0)
        .unwrap_or(DEFAULT_WIDTH)
}

/// `line` cut to fewer than `width` characters (the last column stays free, so no terminal
/// wraps it), with `…` where it was cut.
fn fit(line: &str, width: usize) -> String {
    let room = width.saturating_sub(1).max(1);
    if line.chars().count() <= room {
        return line.to_owned();
    }
    let mut cut: String = line.chars().take(room - 1).collect();
    cut.push('…');
    cut
}

/// A display that is redrawn as its content changes.
#[derive(Debug)]
pub(super) enum Screen {
    /// Redraws in place; `drawn` lines of the previous frame are on screen above the cursor,
    /// each cut to `width` columns.
    Terminal { drawn: usize, width: usize },
    /// Prints each line that was not in the previous frame.
    Plain { previous: Vec<String> },
}

impl Screen {
    /// A terminal screen when stdout is a terminal, plain lines otherwise.
    pub(super) fn for_stdout() -> Self {
        if std::io::stdout().is_terminal() {
            Screen::Terminal {
                drawn: 0,
                width: terminal_width(),
            }
        } else {
            Screen::Plain {
                previous: Vec::new(),
            }
        }
    }

    /// What to write for a frame of `lines` (each without its newline); empty when nothing
    /// changed.
    pub(super) fn frame(&mut self, lines: &[String]) -> String {
        match self {
            Screen::Terminal { drawn, width } => {
                let mut out = String::new();
                if *drawn > 0 {
                    out.push_str(&cursor_up(*drawn));
                    out.push_str(CLEAR_BELOW);
                }
                for line in lines {
                    out.push_str(&fit(line, *width));
                    out.push('\n');
                }
                *drawn = lines.len();
                out
            }
            Screen::Plain { previous } => {
                let mut out = String::new();
                for line in lines {
                    if !previous.contains(line) {
                        out.push_str(line);
                        out.push('\n');
                    }
                }
                *previous = lines.to_vec();
                out
            }
        }
    }

    /// Whether frames are redrawn (a terminal), so they may carry bars and colour.
    pub(super) fn is_terminal(&self) -> bool {
        matches!(self, Screen::Terminal { .. })
    }
}

#[cfg(test)]
mod tests;
