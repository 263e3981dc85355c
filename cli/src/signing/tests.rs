//! Unit tests of `cli/src/signing.rs`.

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
