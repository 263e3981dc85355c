//! Reading a fleet file (YAML or JSON) through the wire crate's one fleet validator, so every
//! problem (an unknown placeholder, a bad pattern, a template that would not make a valid
//! manifest) comes back with its JSON path before anything is sent; and signing it.

use std::path::{Path, PathBuf};

use fleetlet_manifests::fleet::Fleet;
use serde_json::Value;

use super::super::CliError;
use super::super::manifest_file::read_document;
use super::super::signing::read_secret_key;

/// Reads and validates the fleet at `path` (`-` is stdin).
pub(super) fn read_fleet(path: &Path) -> Result<Fleet, CliError> {
    let invalid = |details: String| CliError::InvalidFleet {
        path: path.to_owned(),
        details,
    };
    let value = read_document(path, &invalid)?;
    Fleet::from_value(value).map_err(|violations| {
        invalid(
            violations
                .iter()
                .map(|v| format!("  {v}"))
                .collect::<Vec<_>>()
                .join("\n"),
        )
    })
}

/// A fleet ready for `PUT /api/v1/fleets/{name}`.
pub(super) struct FleetBody {
    pub name: String,
    pub json: Value,
}

/// Reads the fleet at `path`, signs it with the key at `sign_key` when one is given (the
/// signature covers the name, the template and the parameter declarations), and makes the body.
pub(super) fn put_body(path: &Path, sign_key: Option<&Path>) -> Result<FleetBody, CliError> {
    let mut fleet = read_fleet(path)?;
    if let Some(key_path) = sign_key {
        let key = read_secret_key(&PathBuf::from(key_path))?;
        fleet.signature = Some(key.sign_fleet(&fleet));
    }
    let json = serde_json::to_value(&fleet).map_err(|e| CliError::Print(e.to_string()))?;
    Ok(FleetBody {
        name: fleet.name.to_string(),
        json,
    })
}

#[cfg(test)]
mod tests;
