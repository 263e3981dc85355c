//! Unit tests of `cli/src/client.rs`.

use super::*;

#[test]
fn path_segments_are_escaped() {
    assert_eq!(segment("pi-1_b"), "pi-1_b");
    // Dots too, so that `..` can never climb out of the agent's routes.
    assert_eq!(segment("../x"), "%2E%2E%2Fx");
}

#[test]
fn the_config_file_rejects_unknown_keys() {
    let parsed: Result<ConfigFile, _> = toml::from_str("url = \"x\"\ntokn = \"y\"\n");
    assert!(parsed.is_err());
}
