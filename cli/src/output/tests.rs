//! Unit tests of `cli/src/output.rs`.

use super::*;

#[test]
fn a_broken_pipe_is_its_own_quiet_error_and_other_failures_are_reported() {
    let closed = print_error(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
    assert!(matches!(closed, CliError::OutputClosed), "{closed:?}");
    assert_eq!(closed.exit_code(), OUTPUT_CLOSED_STATUS);
    let full = print_error(std::io::Error::from(std::io::ErrorKind::StorageFull));
    assert!(matches!(full, CliError::Print(_)), "{full:?}");
    assert_eq!(full.exit_code(), 1);
}
