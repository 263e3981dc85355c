//! How a watched display reaches stdout: on a terminal the block of lines is drawn again in
//! place (cursor up, clear to the end of the screen); anywhere else (a pipe, a file, a CI log)
//! only the lines that changed since the last frame are printed, as plain text with no escape
//! code, so a log reads as a history of what happened.

use std::io::IsTerminal as _;

/// ANSI: move the cursor to the start of the line `n` lines up.
fn cursor_up(n: usize) -> String {
    format!("\x1b[{n}F")
}

/// ANSI: clear from the cursor to the end of the screen.
const CLEAR_BELOW: &str = "\x1b[J";

/// A display that is redrawn as its content changes.
#[derive(Debug)]
pub(super) enum Screen {
    /// Redraws in place; `drawn` lines of the previous frame are on screen above the cursor.
    Terminal { drawn: usize },
    /// Prints each line that was not in the previous frame.
    Plain { previous: Vec<String> },
}

impl Screen {
    /// A terminal screen when stdout is a terminal, plain lines otherwise.
    pub(super) fn for_stdout() -> Self {
        if std::io::stdout().is_terminal() {
            Screen::Terminal { drawn: 0 }
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
            Screen::Terminal { drawn } => {
                let mut out = String::new();
                if *drawn > 0 {
                    out.push_str(&cursor_up(*drawn));
                    out.push_str(CLEAR_BELOW);
                }
                for line in lines {
                    out.push_str(line);
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
