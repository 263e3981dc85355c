//! Proof that the `fs-store` feature only adds the filesystem store: built without it, the agent's
//! dependency tree holds none of the crates that only the filesystem store needs.
//!
//! The filesystem store is written against std alone today, so the feature adds no crate at all;
//! this test keeps it that way, or makes whoever adds an optional dependency for it list the crate
//! in [`FS_STORE_ONLY_CRATES`], where the test then checks it is absent without the feature.

use std::collections::BTreeSet;
use std::process::Command;

/// Crates that only the filesystem store pulls in. Empty: it needs nothing beyond std and the
/// crates the agent uses anyway.
const FS_STORE_ONLY_CRATES: &[&str] = &[];

/// The names of the crates in the agent's normal (non-dev, non-build) dependency tree.
fn dependency_names(feature_args: &[&str]) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let output = Command::new(&cargo)
        .args(["tree", "--manifest-path", manifest, "-p", "fleetlet-agent"])
        .args(feature_args)
        .args(["-e", "normal", "--prefix", "none", "--offline"])
        .output()
        .unwrap_or_else(|error| panic!("could not run {cargo} tree: {error}"));
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let names: BTreeSet<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    assert!(
        names.contains("fleetlet-agent") && names.contains("serde"),
        "unexpected cargo tree output: {names:?}"
    );
    names
}

#[test]
fn without_fs_store_the_dependency_tree_lacks_every_fs_store_only_crate() {
    let without = dependency_names(&["--no-default-features"]);
    let with = dependency_names(&["--no-default-features", "--features", "fs-store"]);

    for name in FS_STORE_ONLY_CRATES {
        assert!(!without.contains(*name), "{name} is built without fs-store");
        assert!(with.contains(*name), "{name} is not built with fs-store");
    }
    let added: Vec<&String> = with.difference(&without).collect();
    let unlisted: Vec<&&String> = added
        .iter()
        .filter(|name| !FS_STORE_ONLY_CRATES.contains(&name.as_str()))
        .collect();
    assert!(
        unlisted.is_empty(),
        "fs-store pulls in {unlisted:?}: make them optional and list them in FS_STORE_ONLY_CRATES"
    );
    assert!(
        without.is_subset(&with),
        "turning fs-store on removed crates: {:?}",
        without.difference(&with).collect::<Vec<_>>()
    );
}
