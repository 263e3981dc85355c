//! Unit tests of `cli/src/screen.rs`.

use super::*;

fn lines(texts: &[&str]) -> Vec<String> {
    texts.iter().map(|t| (*t).to_owned()).collect()
}

#[test]
fn plain_output_prints_only_changed_lines_without_escape_codes() {
    let mut screen = Screen::Plain {
        previous: Vec::new(),
    };
    let first = screen.frame(&lines(&["phase Progressing", "batch 1: 0/1"]));
    assert_eq!(first, "phase Progressing\nbatch 1: 0/1\n");
    // The same frame again prints nothing.
    assert_eq!(
        screen.frame(&lines(&["phase Progressing", "batch 1: 0/1"])),
        ""
    );
    let next = screen.frame(&lines(&["phase Progressing", "batch 1: 1/1"]));
    assert_eq!(next, "batch 1: 1/1\n");
    assert!(!next.contains('\x1b'));
}

#[test]
fn a_terminal_redraws_the_block_in_place() {
    let mut screen = Screen::Terminal {
        drawn: 0,
        width: 80,
    };
    // The first frame is drawn as it is.
    assert_eq!(screen.frame(&lines(&["a", "b"])), "a\nb\n");
    // The next one moves up over the two lines drawn and clears them first.
    assert_eq!(
        screen.frame(&lines(&["a", "b", "c"])),
        "\x1b[2F\x1b[Ja\nb\nc\n"
    );
    assert_eq!(screen.frame(&lines(&["x"])), "\x1b[3F\x1b[Jx\n");
}

#[test]
fn a_terminal_line_is_cut_to_the_width_so_it_never_wraps() {
    let mut screen = Screen::Terminal {
        drawn: 0,
        width: 10,
    };
    assert_eq!(
        screen.frame(&lines(&["short", "a line far too long"])),
        "short\na line f…\n"
    );
    // Piped output is never cut.
    let mut plain = Screen::Plain {
        previous: Vec::new(),
    };
    assert_eq!(
        plain.frame(&lines(&["a line far too long"])),
        "a line far too long\n"
    );
}
