//! Fixtures for the end-to-end tests.

use std::path::{Path, PathBuf};

pub mod agent;
pub mod containers;
pub mod fleets;
pub mod manager;
pub mod netns;
pub mod postgres;
pub mod powercut;
pub mod proxy;
pub mod schema;
pub mod tools;

/// Where cargo put the workspace's binaries: `$CARGO_TARGET_DIR/debug` or `<workspace>/target/debug`.
///
/// The path has no `..` in it: paths derived from it end up in manifests (which refuse
/// unnormalised paths) and in systemd units (which ignore unnormalised output paths).
pub fn binary(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let tests_crate = Path::new(env!("CARGO_MANIFEST_DIR"));
            tests_crate.parent().unwrap_or(tests_crate).join("target")
        });
    target.join("debug").join(name)
}
