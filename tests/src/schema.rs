//! The manifests the tests push, checked against the manager's JSON Schema in process.
//!
//! The manager serves `fleetlet_manifests::schema::manifest_schema()` at
//! `/api/v1/schema/manifest` (`tests/tests/validators_schema.rs` checks that the two are equal),
//! so every valid manifest a test sends through a helper is also a test of that schema: a
//! schema that refused it would refuse a manifest the manager accepts. Manifests sent on purpose
//! to be refused go through the raw request builders (`ManagerProcess::admin`), not these helpers.

use std::sync::OnceLock;

use anyhow::bail;

/// The compiled manifest schema, built once per test binary.
fn manifest_validator() -> &'static jsonschema::Validator {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        let schema = fleetlet_manifests::schema::manifest_schema().to_value();
        jsonschema::validator_for(&schema).expect("the manifest schema compiles")
    })
}

/// The schema's complaints about `manifest`, one line each: JSON pointer and message.
pub fn manifest_schema_errors(manifest: &serde_json::Value) -> Vec<String> {
    manifest_validator()
        .iter_errors(manifest)
        .map(|error| format!("{}: {error}", error.instance_path()))
        .collect()
}

/// Fails when the manifest schema refuses `manifest`.
pub fn check_manifest(manifest: &serde_json::Value) -> anyhow::Result<()> {
    let errors = manifest_schema_errors(manifest);
    if !errors.is_empty() {
        bail!(
            "the served manifest schema refuses this manifest (a test pushes it as valid):\n{}\n{manifest}",
            errors.join("\n")
        );
    }
    Ok(())
}
