//! `fleetlet keygen` and `apply --sign-key`: the operator's ed25519 key lives only on the
//! control-plane side; the manager stores the signature and never sees the key.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use fleetlet_manifests::signature::SecretKey;

use super::CliError;

/// The private key's file name in `keygen --out`.
pub const SECRET_KEY_FILE: &str = "fleetlet-signing.key";
/// The public key's file name in `keygen --out`; this file goes to the agents.
pub const PUBLIC_KEY_FILE: &str = "fleetlet-signing.pub";

/// Writes a new key pair into `dir` (created if missing): the private key 0600, the public key
/// 0644. Existing key files are never overwritten, since losing a key strands every device that
/// trusts only it. Returns the key id.
pub(super) fn keygen(dir: &Path) -> Result<String, CliError> {
    std::fs::create_dir_all(dir).map_err(|source| CliError::Read {
        path: dir.to_owned(),
        source,
    })?;
    let key = SecretKey::from_seed(rand::random());
    write_new(&dir.join(SECRET_KEY_FILE), &key.to_file_text(), 0o600)?;
    write_new(
        &dir.join(PUBLIC_KEY_FILE),
        &key.public().to_file_text(),
        0o644,
    )?;
    Ok(key.public().key_id())
}

fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), CliError> {
    let error = |source| CliError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(error)?;
    file.write_all(text.as_bytes()).map_err(error)?;
    file.sync_all().map_err(error)
}

/// Reads the private key written by `keygen`.
pub(super) fn read_secret_key(path: &PathBuf) -> Result<SecretKey, CliError> {
    let text = std::fs::read_to_string(path).map_err(|source| CliError::Read {
        path: path.clone(),
        source,
    })?;
    SecretKey::from_file_text(&text).map_err(|e| CliError::Key {
        path: path.clone(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests;
