//! The desired state of one device: `AgentManifest` and the typed spec of every resource kind.
//!
//! Manifests are built only through [`AgentManifest::from_value`] (which `Deserialize` also uses;
//! both live in `validate.rs`, above these types), so every manifest value in the program has
//! passed validation. Serialization writes the
//! canonical form: defaults filled in, unknown kinds exactly as received.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::ids::{
    AbsPath, AccountName, AgentId, FileMode, ImageRef, ManifestSignature, ResourceId, SessionId,
    UnitName,
};
use crate::{API_VERSION, Violation};

pub mod origin;

use origin::FleetOrigin;

pub const MANIFEST_KIND: &str = "AgentManifest";

/// Inline content of one File resource may not exceed this many bytes (decoded).
pub const MAX_FILE_CONTENT_BYTES: usize = 1024 * 1024;
/// All inline File content of one manifest together may not exceed this many bytes (decoded).
pub const MAX_MANIFEST_CONTENT_BYTES: usize = 4 * 1024 * 1024;
/// A manifest may hold at most this many resources.
pub const MAX_RESOURCES: usize = 1000;

/// The desired state of one device.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentManifest {
    pub api_version: String,
    pub kind: String,
    pub agent_id: AgentId,
    /// Assigned by the manager; absent in a manifest that a client sends to be stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    pub resources: Vec<Resource>,
    /// How the agent treats this generation when it does not become Ready in time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutPolicy>,
    /// The operator's signature over the agent id, resources and rollout policy (see
    /// [`crate::signature`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<ManifestSignature>,
    /// Set when the manifest was rendered from a fleet: which fleet, revision and parameter
    /// values, and for a signed fleet what the operator signed (see [`origin`]). Not part of
    /// [`Self::content_hash`] nor of the manifest's own signature payload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetOrigin>,
}

impl AgentManifest {
    /// A new manifest for `agent_id` with the given resources and no generation.
    pub fn new(agent_id: AgentId, resources: Vec<Resource>) -> Self {
        Self {
            api_version: API_VERSION.to_owned(),
            kind: MANIFEST_KIND.to_owned(),
            agent_id,
            generation: None,
            resources,
            rollout: None,
            signature: None,
            fleet: None,
        }
    }

    /// A hash of what the agent is asked to do, used to decide whether a new generation is
    /// needed. Without a rollout policy it is the hash of the resources alone, exactly as before
    /// the policy existed, so hashes already stored by a manager keep matching.
    pub fn content_hash(&self) -> String {
        match &self.rollout {
            None => hash_json(&self.resources),
            Some(rollout) => {
                #[derive(Serialize)]
                struct WithRollout<'a> {
                    resources: &'a [Resource],
                    rollout: &'a RolloutPolicy,
                }
                hash_json(&WithRollout {
                    resources: &self.resources,
                    rollout,
                })
            }
        }
    }

    pub fn resource(&self, id: &str) -> Option<&Resource> {
        self.resources.iter().find(|r| r.id.as_str() == id)
    }
}

/// Why bytes could not become a manifest.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ManifestError {
    #[error("malformed JSON: {0}")]
    Malformed(String),
    #[error("invalid manifest: {} violation(s)", .0.len())]
    Invalid(Vec<Violation>),
}

/// The longest `progressDeadlineSeconds` accepted: one day.
pub const MAX_PROGRESS_DEADLINE_SECONDS: u32 = 86_400;

/// A manifest's rollout policy: how long a new generation may take to become Ready, and what
/// the agent does when it does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RolloutPolicy {
    /// Seconds from the agent accepting the generation until every resource must be Ready
    /// (1 to 86400).
    pub progress_deadline_seconds: u32,
    #[serde(default)]
    pub on_failure: OnFailure,
}

/// What the agent does when a generation misses its progress deadline.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum OnFailure {
    /// Converge back to the last generation whose resources were all Ready.
    #[default]
    Rollback,
    /// Stay on the new generation and report it failed.
    Hold,
}

impl std::fmt::Display for OnFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OnFailure::Rollback => "Rollback",
            OnFailure::Hold => "Hold",
        })
    }
}

/// One resource of a manifest: its identity and its typed spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub id: ResourceId,
    pub spec: ResourceSpec,
}

impl Resource {
    pub fn kind(&self) -> &str {
        self.spec.kind()
    }

    /// `sha256:<hex>` of the canonical kind and spec. The id is not part of it, so the hash says
    /// whether the thing to build changed, not what it is called.
    pub fn spec_hash(&self) -> String {
        #[derive(Serialize)]
        struct KindAndSpec<'a> {
            kind: &'a str,
            spec: &'a ResourceSpec,
        }
        hash_json(&KindAndSpec {
            kind: self.kind(),
            spec: &self.spec,
        })
    }
}

impl Serialize for Resource {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Wire<'a> {
            id: &'a ResourceId,
            kind: &'a str,
            spec: &'a ResourceSpec,
        }
        Wire {
            id: &self.id,
            kind: self.kind(),
            spec: &self.spec,
        }
        .serialize(serializer)
    }
}

/// The resource kinds this build understands, in the order a pass applies them.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
pub enum Kind {
    SessionStorage,
    File,
    SystemdUnit,
    Container,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::SessionStorage,
        Kind::File,
        Kind::SystemdUnit,
        Kind::Container,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::SessionStorage => "SessionStorage",
            Kind::File => "File",
            Kind::SystemdUnit => "SystemdUnit",
            Kind::Container => "Container",
        }
    }

    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The spec of a resource, typed by kind. A kind this build does not know is kept verbatim so that
/// it round-trips unchanged and can be reported `Unsupported`.
#[derive(Debug, Clone, PartialEq)]
pub enum ResourceSpec {
    File(FileSpec),
    SessionStorage(SessionStorageSpec),
    Container(ContainerSpec),
    SystemdUnit(SystemdUnitSpec),
    Unknown {
        kind: String,
        spec: serde_json::Value,
    },
}

impl ResourceSpec {
    pub fn kind(&self) -> &str {
        match self {
            ResourceSpec::File(_) => Kind::File.as_str(),
            ResourceSpec::SessionStorage(_) => Kind::SessionStorage.as_str(),
            ResourceSpec::Container(_) => Kind::Container.as_str(),
            ResourceSpec::SystemdUnit(_) => Kind::SystemdUnit.as_str(),
            ResourceSpec::Unknown { kind, .. } => kind,
        }
    }

    /// The known kind, or `None` for a kind this build does not support.
    pub fn known_kind(&self) -> Option<Kind> {
        match self {
            ResourceSpec::File(_) => Some(Kind::File),
            ResourceSpec::SessionStorage(_) => Some(Kind::SessionStorage),
            ResourceSpec::Container(_) => Some(Kind::Container),
            ResourceSpec::SystemdUnit(_) => Some(Kind::SystemdUnit),
            ResourceSpec::Unknown { .. } => None,
        }
    }
}

impl Serialize for ResourceSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ResourceSpec::File(spec) => spec.serialize(serializer),
            ResourceSpec::SessionStorage(spec) => spec.serialize(serializer),
            ResourceSpec::Container(spec) => spec.serialize(serializer),
            ResourceSpec::SystemdUnit(spec) => spec.serialize(serializer),
            ResourceSpec::Unknown { spec, .. } => spec.serialize(serializer),
        }
    }
}

// The spec types are read by `validate.rs`, not by a `Deserialize` derive; their `schemars`
// attributes say what that reading accepts, so that the JSON Schema does too: `default` on a field
// it fills in when absent (and refuses as null), `deny_unknown_fields` since it refuses fields
// nobody asked for. `schema.rs` checks every field against the parser.

/// A regular file with inline content.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct FileSpec {
    pub path: AbsPath,
    pub content: FileContent,
    #[schemars(default)]
    pub mode: FileMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<AccountName>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<AccountName>,
}

/// Inline file content, as text or as base64.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum FileContent {
    Text(String),
    Base64(String),
}

impl FileContent {
    /// The bytes to write. Base64 was checked during validation, so decoding cannot fail here
    /// for a validated manifest; an unvalidated value yields an error.
    pub fn bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
        use base64::Engine as _;
        match self {
            FileContent::Text(text) => Ok(text.as_bytes().to_vec()),
            FileContent::Base64(b64) => base64::engine::general_purpose::STANDARD.decode(b64),
        }
    }
}

/// A directory of per-session data with a size limit and an optional expiry.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct SessionStorageSpec {
    pub session_id: SessionId,
    pub size_limit_bytes: u64,
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>")]
    pub expires_at: Option<time::OffsetDateTime>,
}

/// A container run by podman or docker.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct ContainerSpec {
    pub image: ImageRef,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schemars(default)]
    pub command: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schemars(default)]
    pub args: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(default)]
    pub env: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<AbsPath>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schemars(default)]
    pub ports: Vec<PortMapping>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schemars(default)]
    pub volumes: Vec<VolumeMount>,
    #[schemars(default)]
    pub restart_policy: RestartPolicy,
    #[schemars(default)]
    pub pull_policy: PullPolicy,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
    /// CPU limit in thousandths of a core (1000 = one core).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u32>,
    /// Privileged mode: every capability and device of the host. Refused by the agent
    /// (`NotAllowed`) unless its operator set FLEETLET_ALLOW_PRIVILEGED: by default a manifest
    /// must not be able to take over the device.
    #[serde(default, skip_serializing_if = "is_false")]
    pub privileged: bool,
    /// The host's network namespace instead of the container's own. Refused (`NotAllowed`)
    /// unless the agent sets FLEETLET_ALLOW_HOST_NETWORK.
    #[serde(default, skip_serializing_if = "is_false")]
    pub host_network: bool,
    /// The host's PID namespace. Refused (`NotAllowed`) unless the agent sets
    /// FLEETLET_ALLOW_HOST_PID.
    #[serde(default, skip_serializing_if = "is_false")]
    pub host_pid: bool,
    /// Host devices to pass into the container (e.g. /dev/ttyUSB0). Each is refused
    /// (`NotAllowed`) unless the agent lists exactly that path in FLEETLET_ALLOWED_DEVICES.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<AbsPath>,
}

/// For `skip_serializing_if`: a flag left false is left out, so specs written before the flag
/// existed keep their hash.
fn is_false(value: &bool) -> bool {
    !*value
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum PullPolicy {
    #[default]
    IfNotPresent,
    Always,
    Never,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum PortProtocol {
    #[default]
    Tcp,
    Udp,
}

/// A port published on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    #[serde(default)]
    pub protocol: PortProtocol,
}

/// A SessionStorage resource of the same manifest mounted into a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VolumeMount {
    pub session_storage: ResourceId,
    pub mount_path: AbsPath,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

/// A systemd unit whose file the agent writes and whose state it drives.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct SystemdUnitSpec {
    pub name: UnitName,
    pub unit: String,
    /// `true` when absent or null.
    #[schemars(with = "Option<bool>", default = "enabled_by_default")]
    pub enabled: bool,
    #[schemars(default)]
    pub state: UnitState,
}

/// A SystemdUnit without `enabled` is enabled.
fn enabled_by_default() -> bool {
    true
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum UnitState {
    #[default]
    Started,
    Stopped,
}

/// `sha256:<hex>` of the JSON serialization of `value`. Struct fields serialize in declaration
/// order and maps are `BTreeMap`s, so the serialization (and the hash) is canonical.
pub(crate) fn hash_json<T: Serialize + ?Sized>(value: &T) -> String {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    format!("sha256:{}", hex::encode(Sha256::digest(&bytes)))
}
