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
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use fleetlet_manifests::AgentManifest;
    use fleetlet_manifests::signature::{PublicKey, verify};

    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let path = std::env::temp_dir().join(format!(
                "fleetlet-keygen-{name}-{}-{}",
                std::process::id(),
                rand::random::<u64>()
            ));
            Self(path)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn keygen_writes_a_private_key_only_its_owner_can_read_and_a_matching_public_key() {
        let dir = TempDir::new("writes");
        let key_id = keygen(dir.path()).expect("keygen");
        let secret_path = dir.path().join(SECRET_KEY_FILE);
        let mode = std::fs::metadata(&secret_path)
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let secret = read_secret_key(&secret_path).expect("reads");
        let public_text =
            std::fs::read_to_string(dir.path().join(PUBLIC_KEY_FILE)).expect("public key file");
        let public = PublicKey::from_file_text(&public_text).expect("parses");
        assert_eq!(public.key_id(), key_id);

        let mut manifest = AgentManifest::from_value(serde_json::json!({
            "apiVersion": "fleetlet.dev/v1", "kind": "AgentManifest", "agentId": "pi-1"
        }))
        .expect("valid");
        manifest.signature = Some(secret.sign(&manifest));
        assert_eq!(verify(&manifest, &[public]), Ok(()));
    }

    #[test]
    fn keygen_never_overwrites_a_key() {
        let dir = TempDir::new("overwrite");
        keygen(dir.path()).expect("first keygen");
        let before = std::fs::read(dir.path().join(SECRET_KEY_FILE)).expect("key");
        assert!(keygen(dir.path()).is_err());
        let after = std::fs::read(dir.path().join(SECRET_KEY_FILE)).expect("key");
        assert_eq!(before, after);
    }
}
