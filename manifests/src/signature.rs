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
//!
//! A fleet (`crate::fleet`) is signed over other bytes, [`fleet_payload`]:
//!
//! ```text
//! fleetlet-fleet-v1\n<fleet name>\n<canonical JSON of the template>\n<canonical JSON of the parameter declarations>
//! ```
//!
//! A manifest rendered from a signed fleet has no signature of its own; it carries the signed
//! template, the declarations, the signature and the values used (`AgentManifest.fleet`), and
//! [`verify`] accepts it only when the fleet signature verifies, every value matches its signed
//! pattern, and rendering the signed template with those values for the manifest's agent id
//! gives exactly the manifest's resources and rollout policy. The selector and rollout strategy
//! are not signed: they decide which devices get the template and when, never what a device
//! runs. The same known limit as above applies: an older signed revision can be re-served.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest, Sha256};

use std::collections::BTreeMap;

use crate::fleet::{
    Fleet, FleetName, FleetOrigin, FleetTemplate, ParameterName, ParameterSpec, render_template,
};
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

/// The first line of every signed fleet payload: a fleet signature can never verify as a
/// manifest signature, nor the other way round.
pub const FLEET_PAYLOAD_CONTEXT: &str = "fleetlet-fleet-v1\n";

/// The exact bytes signed for a fleet: its name, template and parameter declarations (see the
/// module docs), as canonical JSON like a manifest's resources.
pub fn fleet_payload(
    name: &FleetName,
    template: &FleetTemplate,
    parameters: &BTreeMap<ParameterName, ParameterSpec>,
) -> Vec<u8> {
    let canonical = |value: serde_json::Result<serde_json::Value>| {
        value
            .and_then(|value| serde_json::to_vec(&value))
            .unwrap_or_default()
    };
    let template = canonical(serde_json::to_value(template));
    let parameters = canonical(serde_json::to_value(parameters));
    let mut payload = Vec::with_capacity(
        FLEET_PAYLOAD_CONTEXT.len() + name.as_str().len() + template.len() + parameters.len() + 2,
    );
    payload.extend_from_slice(FLEET_PAYLOAD_CONTEXT.as_bytes());
    payload.extend_from_slice(name.as_str().as_bytes());
    payload.push(b'\n');
    payload.extend_from_slice(&template);
    payload.push(b'\n');
    payload.extend_from_slice(&parameters);
    payload
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

    /// Signs `fleet` for its name, template and parameter declarations.
    pub fn sign_fleet(&self, fleet: &Fleet) -> ManifestSignature {
        let payload = fleet_payload(&fleet.name, &fleet.template, &fleet.parameters);
        ManifestSignature {
            key_id: self.public().key_id(),
            ed25519: self.0.sign(&payload).to_bytes(),
        }
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
    /// A fleet-rendered manifest whose fleet signature does not match the carried name,
    /// template and parameter declarations.
    #[error("the fleet signature by key {key_id} does not match the signed template")]
    FleetSignatureMismatch { key_id: String },
    /// A fleet-rendered manifest with a value missing, undeclared, or outside its signed pattern.
    #[error(
        "the value of fleet parameter {name} is missing, undeclared or outside its signed pattern"
    )]
    FleetValueOutsidePattern { name: String },
    /// A fleet-rendered manifest whose resources or rollout policy are not what the signed
    /// template renders for this agent with the carried values.
    #[error("the manifest is not what the signed fleet template renders for this agent")]
    FleetTemplateMismatch,
}

impl SignatureError {
    /// The reason of the agent's `ManifestRejected` condition for this refusal.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unsigned | Self::UnknownKey { .. } | Self::Mismatch { .. } => "SignatureInvalid",
            Self::FleetSignatureMismatch { .. } => "FleetSignatureInvalid",
            Self::FleetValueOutsidePattern { .. } => "FleetValueOutsidePattern",
            Self::FleetTemplateMismatch => "FleetTemplateMismatch",
        }
    }
}

/// Checks that `manifest` carries a signature by one of `trusted` over its agent id, resources
/// and rollout policy. With no trusted keys there is nothing to check against; callers decide whether
/// that means "accept unsigned" (see the agent's `FLEETLET_TRUSTED_KEYS`).
///
/// A manifest without a signature of its own but rendered from a signed fleet is checked as the
/// module docs say ([`verify_fleet`]).
pub fn verify(manifest: &AgentManifest, trusted: &[PublicKey]) -> Result<(), SignatureError> {
    let signature = match (&manifest.signature, &manifest.fleet) {
        (Some(signature), _) => signature,
        (None, Some(origin)) if origin.signed.is_some() => {
            return verify_fleet(manifest, origin, trusted);
        }
        (None, _) => return Err(SignatureError::Unsigned),
    };
    let key = trusted_key(trusted, signature)?;
    let payload = manifest_payload(manifest);
    key.0
        .verify(&payload, &Signature::from_bytes(&signature.ed25519))
        .map_err(|_| SignatureError::Mismatch {
            key_id: signature.key_id.clone(),
        })
}

fn trusted_key<'k>(
    trusted: &'k [PublicKey],
    signature: &ManifestSignature,
) -> Result<&'k PublicKey, SignatureError> {
    trusted
        .iter()
        .find(|key| key.key_id() == signature.key_id)
        .ok_or_else(|| SignatureError::UnknownKey {
            key_id: signature.key_id.clone(),
        })
}

/// Checks a manifest rendered from a signed fleet: the fleet signature over the carried name,
/// template and declarations; every declared parameter has a value matching its signed pattern
/// and no other value is carried; the signed template rendered with those values for the
/// manifest's agent id is exactly the manifest's resources and rollout policy.
pub fn verify_fleet(
    manifest: &AgentManifest,
    origin: &FleetOrigin,
    trusted: &[PublicKey],
) -> Result<(), SignatureError> {
    let signed = origin.signed.as_ref().ok_or(SignatureError::Unsigned)?;
    let key = trusted_key(trusted, &signed.signature)?;
    let payload = fleet_payload(&origin.name, &signed.template, &signed.parameters);
    key.0
        .verify(&payload, &Signature::from_bytes(&signed.signature.ed25519))
        .map_err(|_| SignatureError::FleetSignatureMismatch {
            key_id: signed.signature.key_id.clone(),
        })?;
    let outside = |name: &ParameterName| SignatureError::FleetValueOutsidePattern {
        name: name.to_string(),
    };
    for (name, spec) in &signed.parameters {
        match origin.values.get(name) {
            Some(value) if spec.matches(value) => {}
            _ => return Err(outside(name)),
        }
    }
    if let Some(name) = origin
        .values
        .keys()
        .find(|name| !signed.parameters.contains_key(*name))
    {
        return Err(outside(name));
    }
    let values: BTreeMap<String, String> = origin
        .values
        .iter()
        .map(|(name, value)| (name.to_string(), value.clone()))
        .collect();
    let rendered = render_template(&signed.template, &values, &manifest.agent_id)
        .map_err(|_| SignatureError::FleetTemplateMismatch)?;
    if rendered.resources != manifest.resources || rendered.rollout != manifest.rollout {
        return Err(SignatureError::FleetTemplateMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
