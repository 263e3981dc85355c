//! Proof that the `fleetlet` binary does not link the server: the CLI crate's normal (non-dev,
//! non-build) dependency tree holds neither the manager, nor the database driver, nor the HTTP
//! server side, nor the manager's allocator.
//!
//! reqwest brings hyper and hyper-util for its client (and tokio-rustls and tower-http with
//! them); what must stay out is their `server` features, which only the manager turns on. `cargo tree -p fleetlet-cli` resolves features for
//! this crate alone, as `cargo build -p fleetlet-cli` does, so the manager's features do not leak
//! in through workspace unification.

use std::collections::BTreeSet;
use std::process::Command;

/// Crates that belong to the manager's side and must never be built for the CLI.
const SERVER_ONLY_CRATES: &[&str] = &[
    "fleetlet-manager",
    "sqlx",
    "sqlx-core",
    "sqlx-postgres",
    "axum",
    "axum-core",
    "tikv-jemallocator",
    "tikv-jemalloc-sys",
];

/// `(crate, feature)` pairs that only a server turns on.
const SERVER_ONLY_FEATURES: &[(&str, &str)] = &[
    ("hyper", "server"),
    ("hyper-util", "server"),
    ("hyper-util", "server-auto"),
    ("hyper-util", "server-graceful"),
];

/// The lines of `cargo tree -p fleetlet-cli -e <edges> --prefix none`, without the ` (*)` that
/// marks a repeat, deduplicated.
fn tree_lines(edges: &str) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let output = Command::new(&cargo)
        .args(["tree", "--manifest-path", manifest, "-p", "fleetlet-cli"])
        .args(["-e", edges, "--prefix", "none", "--offline"])
        .output()
        .unwrap_or_else(|error| panic!("could not run {cargo} tree: {error}"));
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| line.trim().trim_end_matches(" (*)").to_owned())
        .filter(|line| !line.is_empty())
        .collect()
}

#[test]
fn the_cli_links_no_server_database_or_allocator_crate() {
    let names: BTreeSet<String> = tree_lines("normal")
        .iter()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    // The output is the tree this test means: the CLI itself and its HTTP client are in it.
    for expected in [
        "fleetlet-cli",
        "fleetlet-manifests",
        "reqwest",
        "hyper",
        "clap",
    ] {
        assert!(
            names.contains(expected),
            "{expected} is missing; unexpected cargo tree output: {names:?}"
        );
    }
    let linked: Vec<&&str> = SERVER_ONLY_CRATES
        .iter()
        .filter(|name| names.contains(**name))
        .collect();
    assert!(
        linked.is_empty(),
        "the CLI's dependency tree holds {linked:?}"
    );
}

#[test]
fn hyper_is_built_for_the_cli_without_its_server_side() {
    // With features as nodes, each enabled feature is a line such as `hyper feature "client"`.
    let lines = tree_lines("normal,features");
    assert!(
        lines.contains("hyper feature \"client\""),
        "hyper's client feature is missing; unexpected cargo tree output: {lines:?}"
    );
    let enabled: Vec<String> = SERVER_ONLY_FEATURES
        .iter()
        .map(|(name, feature)| format!("{name} feature \"{feature}\""))
        .filter(|line| lines.contains(line))
        .collect();
    assert!(
        enabled.is_empty(),
        "the CLI builds server features: {enabled:?}"
    );
}
