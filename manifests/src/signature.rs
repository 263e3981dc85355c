//! Manifest signatures: the exact bytes an operator's ed25519 key signs, key ids, key files,
//! signing and verification.
//!
//! The signed payload is the UTF-8 bytes of
//!
//! ```text
//! fleetlet-manifest-v1\n<agentId>\n<canonical JSON of the resources>[\n<canonical JSON of the rollout>]
//! ```
//!
//! where the canonical JSON is the validated value (defaults filled in) turned into a
//! `serde_json::Value` and written without whitespace, so every object's keys are sorted by
//! bytes. The last line is there only when the manifest has a `rollout` policy: a manifest
//! without one signs exactly the bytes it signed before policies existed (old signatures stay
//! valid), and one with it cannot have its policy stripped or changed without failing
//! verification. Signer and verifier both parse before they serialize, so the bytes depend only on the
//! meaning of the manifest, not on how its file was formatted or how PostgreSQL's `jsonb`
//! reordered it. The agent id is part of the payload, so a manifest signed for one device is
//! refused by every other. The `generation` is *not*: the manager assigns it after the operator
//! signed. The consequence is a known limit: someone who can write the manager's database can
//! re-serve an older manifest that was signed for the same device as a new generation (a
//! rollback to a state the operator once approved), but can never make a device run resources
//! the operator did not sign for it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::ids::{AgentId, KEY_ID_BYTES};
use crate::manifest::{AgentManifest, Resource, RolloutPolicy};

/// The wire form of a signature is a validated value like the ids, defined with them (beneath
/// the manifest that carries it); it is named here too, where signatures are made and checked.
pub use crate::ids::{ManifestSignature, SignatureFieldError};

/// The first line of every signed payload: names the format, so a signature over anything else
/// (or a future format) can never verify as a manifest signature.
pub const PAYLOAD_CONTEXT: &str = "fleetlet-manifest-v1\n";

/// The exact bytes that are signed for `agent_id` and `resources` (see the module docs).
pub fn signed_payload(agent_id: &AgentId, resources: &[Resource]) -> Vec<u8> {
    // Through `Value`, whose maps are sorted, so key order never depends on struct field order.
    // Serializing validated resources cannot fail; an empty list stands in if it ever did, and
    // would then fail verification rather than pass it.
    let canonical = serde_json::to_value(resources)
        .and_then(|value| serde_json::to_vec(&value))
        .unwrap_or_default();
    let mut payload = Vec::with_capacity(PAYLOAD_CONTEXT.len() + 64 + canonical.len());
    payload.extend_from_slice(PAYLOAD_CONTEXT.as_bytes());
    payload.extend_from_slice(agent_id.as_str().as_bytes());
    payload.push(b'\n');
    payload.extend_from_slice(&canonical);
    payload
}

/// The exact bytes that are signed for `manifest`: [`signed_payload`] of its agent id and
/// resources, plus a line with its rollout policy when it has one.
pub fn manifest_payload(manifest: &AgentManifest) -> Vec<u8> {
    let mut payload = signed_payload(&manifest.agent_id, &manifest.resources);
    if let Some(rollout) = &manifest.rollout {
        payload.push(b'\n');
        payload.extend_from_slice(&canonical_rollout(rollout));
    }
    payload
}

/// The rollout policy as JSON with sorted keys, like the resources. Serializing it cannot fail;
/// if it ever did, the empty bytes would fail verification rather than pass it.
fn canonical_rollout(rollout: &RolloutPolicy) -> Vec<u8> {
    serde_json::to_value(rollout)
        .and_then(|value| serde_json::to_vec(&value))
        .unwrap_or_default()
}

/// An operator's private signing key. Its `Debug` never shows the key.
pub struct SecretKey(SigningKey);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKey")
            .field("key_id", &self.public().key_id())
            .finish_non_exhaustive()
    }
}

impl SecretKey {
    /// A key from 32 secret random bytes (the ed25519 seed).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(SigningKey::from_bytes(&seed))
    }

    /// Reads a key file: one line with the standard base64 of the 32-byte seed.
    pub fn from_file_text(text: &str) -> Result<Self, KeyError> {
        let seed = decode_32(text).ok_or(KeyError::Secret)?;
        Ok(Self::from_seed(seed))
    }

    /// The text of a key file, ending in a newline.
    pub fn to_file_text(&self) -> String {
        format!("{}\n", STANDARD.encode(self.0.to_bytes()))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Signs `manifest` for its agent, resources and rollout policy.
    pub fn sign(&self, manifest: &AgentManifest) -> ManifestSignature {
        let payload = manifest_payload(manifest);
        ManifestSignature {
            key_id: self.public().key_id(),
            ed25519: self.0.sign(&payload).to_bytes(),
        }
    }
}

/// A public key that verifies manifest signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Reads a public key file: one line with the standard base64 of the 32-byte key.
    pub fn from_file_text(text: &str) -> Result<Self, KeyError> {
        let bytes = decode_32(text).ok_or(KeyError::Public)?;
        VerifyingKey::from_bytes(&bytes)
            .map(Self)
            .map_err(|_| KeyError::Public)
    }

    /// The text of a public key file, ending in a newline.
    pub fn to_file_text(&self) -> String {
        format!("{}\n", STANDARD.encode(self.0.to_bytes()))
    }

    /// Hex of the first 8 bytes of the sha256 of the 32 key bytes.
    pub fn key_id(&self) -> String {
        hex::encode(&Sha256::digest(self.0.to_bytes())[..KEY_ID_BYTES])
    }
}

fn decode_32(text: &str) -> Option<[u8; 32]> {
    let bytes = STANDARD.decode(text.trim()).ok()?;
    <[u8; 32]>::try_from(bytes).ok()
}

/// Why a key file could not be read. Never quotes the file's content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not a fleetlet signing key (one line of base64 of 32 bytes expected)")]
    Secret,
    #[error("not a fleetlet public key (one line of base64 of a 32-byte ed25519 key expected)")]
    Public,
}

/// Why a manifest's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the manifest is not signed and trusted keys are configured")]
    Unsigned,
    #[error("the manifest is signed by key {key_id}, which is not trusted")]
    UnknownKey { key_id: String },
    #[error("the signature by key {key_id} does not match the manifest")]
    Mismatch { key_id: String },
}

/// Checks that `manifest` carries a signature by one of `trusted` over its agent id, resources
/// and rollout policy. With no trusted keys there is nothing to check against; callers decide whether
/// that means "accept unsigned" (see the agent's `FLEETLET_TRUSTED_KEYS`).
pub fn verify(manifest: &AgentManifest, trusted: &[PublicKey]) -> Result<(), SignatureError> {
    let signature = manifest
        .signature
        .as_ref()
        .ok_or(SignatureError::Unsigned)?;
    let key = trusted
        .iter()
        .find(|key| key.key_id() == signature.key_id)
        .ok_or_else(|| SignatureError::UnknownKey {
            key_id: signature.key_id.clone(),
        })?;
    let payload = manifest_payload(manifest);
    key.0
        .verify(&payload, &Signature::from_bytes(&signature.ed25519))
        .map_err(|_| SignatureError::Mismatch {
            key_id: signature.key_id.clone(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::parse_key_id;
    use crate::manifest::OnFailure;

    fn manifest(agent: &str, text: &str) -> AgentManifest {
        AgentManifest::from_value(serde_json::json!({
            "apiVersion": "fleetlet.dev/v1", "kind": "AgentManifest", "agentId": agent,
            "resources": [
                {"id": "motd", "kind": "File", "spec": {"path": "/etc/motd", "content": {"text": text}}},
                {"id": "gadget", "kind": "Gadget", "spec": {"zeta": 1, "alpha": {"b": 2, "a": 1}}}
            ]
        }))
        .expect("valid manifest")
    }

    fn key(byte: u8) -> SecretKey {
        SecretKey::from_seed([byte; 32])
    }

    fn signed(agent: &str, text: &str, key: &SecretKey) -> AgentManifest {
        let mut manifest = manifest(agent, text);
        manifest.signature = Some(key.sign(&manifest));
        manifest
    }

    #[test]
    fn a_manifest_signed_by_a_trusted_key_verifies() {
        let key = key(1);
        let manifest = signed("pi-1", "hello\n", &key);
        assert_eq!(verify(&manifest, &[key.public()]), Ok(()));
    }

    #[test]
    fn changed_resources_no_longer_verify() {
        let key = key(1);
        let evil = manifest("pi-1", "evil\n");
        let mut tampered = signed("pi-1", "hello\n", &key);
        tampered.resources = evil.resources;
        assert_eq!(
            verify(&tampered, &[key.public()]),
            Err(SignatureError::Mismatch {
                key_id: key.public().key_id()
            })
        );
    }

    #[test]
    fn a_manifest_signed_for_another_agent_does_not_verify() {
        let key = key(1);
        let mut manifest = signed("pi-1", "hello\n", &key);
        manifest.agent_id = AgentId::try_from("pi-2").expect("valid id");
        assert!(matches!(
            verify(&manifest, &[key.public()]),
            Err(SignatureError::Mismatch { .. })
        ));
    }

    #[test]
    fn unsigned_and_untrusted_signatures_are_refused() {
        let trusted = key(1);
        let unsigned = manifest("pi-1", "hello\n");
        assert_eq!(
            verify(&unsigned, &[trusted.public()]),
            Err(SignatureError::Unsigned)
        );
        let other = key(2);
        let by_other = signed("pi-1", "hello\n", &other);
        assert_eq!(
            verify(&by_other, &[trusted.public()]),
            Err(SignatureError::UnknownKey {
                key_id: other.public().key_id()
            })
        );
    }

    #[test]
    fn either_of_two_trusted_keys_verifies_during_a_rotation() {
        let (old, new) = (key(1), key(2));
        let trusted = [old.public(), new.public()];
        assert_eq!(verify(&signed("pi-1", "a", &old), &trusted), Ok(()));
        assert_eq!(verify(&signed("pi-1", "a", &new), &trusted), Ok(()));
    }

    #[test]
    fn the_signature_survives_a_round_trip_through_json_and_jsonb_key_order() {
        let key = key(3);
        let manifest = signed("pi-1", "hello\n", &key);
        let text = serde_json::to_string(&manifest).expect("serializes");
        let back = AgentManifest::from_slice(text.as_bytes()).expect("parses");
        assert_eq!(back, manifest);
        assert_eq!(verify(&back, &[key.public()]), Ok(()));
        // The payload sorts keys, so the unknown kind's spec is canonical whatever its order.
        let payload = String::from_utf8(signed_payload(&manifest.agent_id, &manifest.resources))
            .expect("utf-8");
        assert!(
            payload.starts_with("fleetlet-manifest-v1\npi-1\n["),
            "{payload}"
        );
        assert!(
            payload.contains(r#""spec":{"alpha":{"a":1,"b":2},"zeta":1}"#),
            "{payload}"
        );
    }

    fn with_rollout(mut manifest: AgentManifest, on_failure: OnFailure) -> AgentManifest {
        manifest.rollout = Some(RolloutPolicy {
            progress_deadline_seconds: 60,
            on_failure,
        });
        manifest
    }

    #[test]
    fn without_a_rollout_the_signed_bytes_are_the_same_as_before_policies_existed() {
        let manifest = manifest("pi-1", "hello\n");
        assert_eq!(
            manifest_payload(&manifest),
            signed_payload(&manifest.agent_id, &manifest.resources)
        );
    }

    #[test]
    fn a_signed_rollout_verifies_and_is_in_the_signed_bytes() {
        let key = key(5);
        let mut manifest = with_rollout(manifest("pi-1", "hello\n"), OnFailure::Hold);
        manifest.signature = Some(key.sign(&manifest));
        assert_eq!(verify(&manifest, &[key.public()]), Ok(()));
        let payload = String::from_utf8(manifest_payload(&manifest)).expect("utf-8");
        assert!(
            payload.ends_with("]\n{\"onFailure\":\"Hold\",\"progressDeadlineSeconds\":60}"),
            "{payload}"
        );
    }

    #[test]
    fn a_stripped_rollout_no_longer_verifies() {
        let key = key(5);
        let mut manifest = with_rollout(manifest("pi-1", "hello\n"), OnFailure::Rollback);
        manifest.signature = Some(key.sign(&manifest));
        manifest.rollout = None;
        assert!(matches!(
            verify(&manifest, &[key.public()]),
            Err(SignatureError::Mismatch { .. })
        ));
    }

    #[test]
    fn an_altered_or_added_rollout_no_longer_verifies() {
        let key = key(5);
        let mut altered = with_rollout(manifest("pi-1", "hello\n"), OnFailure::Rollback);
        altered.signature = Some(key.sign(&altered));
        altered.rollout = Some(RolloutPolicy {
            progress_deadline_seconds: 60,
            on_failure: OnFailure::Hold,
        });
        assert!(matches!(
            verify(&altered, &[key.public()]),
            Err(SignatureError::Mismatch { .. })
        ));
        let mut added = signed("pi-1", "hello\n", &key);
        added = with_rollout(added, OnFailure::Rollback);
        assert!(matches!(
            verify(&added, &[key.public()]),
            Err(SignatureError::Mismatch { .. })
        ));
    }

    #[test]
    fn key_files_round_trip_and_key_ids_are_sixteen_hex_characters() {
        let secret = key(4);
        let again = SecretKey::from_file_text(&secret.to_file_text()).expect("reads");
        assert_eq!(again.public(), secret.public());
        let public = PublicKey::from_file_text(&secret.public().to_file_text()).expect("reads");
        assert_eq!(public, secret.public());
        let id = public.key_id();
        assert_eq!(parse_key_id(&id), Ok(id.clone()));
        assert_eq!(
            PublicKey::from_file_text("not base64"),
            Err(KeyError::Public)
        );
        assert!(format!("{again:?}").contains(&id));
    }

    #[test]
    fn every_signature_violation_is_reported_with_its_path() {
        let violations = AgentManifest::from_value(serde_json::json!({
            "apiVersion": "fleetlet.dev/v1", "kind": "AgentManifest", "agentId": "pi-1",
            "signature": {"keyId": "XYZ", "ed25519": "bm90IDY0IGJ5dGVz", "extra": 1}
        }))
        .expect_err("invalid signature");
        let text: Vec<String> = violations.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "signature.extra: unknown field",
                "signature.keyId: must be 16 lower-case hex characters",
                "signature.ed25519: must be the base64 of a 64-byte ed25519 signature",
            ]
        );
    }

    #[test]
    fn wire_fields_are_checked() {
        assert_eq!(
            ManifestSignature::from_parts("ABCDEF0123456789", &STANDARD.encode([0u8; 64])),
            Err(SignatureFieldError::KeyId)
        );
        assert_eq!(
            ManifestSignature::from_parts("abcdef0123456789", &STANDARD.encode([0u8; 63])),
            Err(SignatureFieldError::Ed25519)
        );
    }
}
