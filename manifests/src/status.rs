//! What a device reports: `AgentStatus`, per-resource phases, typed errors and typed details.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ids::{AgentId, ResourceId};
use crate::manifest::Kind;

pub const STATUS_KIND: &str = "AgentStatus";

/// The state of one device as its agent last saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentStatus {
    pub api_version: String,
    pub kind: String,
    pub agent_id: AgentId,
    /// Increases with every report the agent makes, across restarts.
    pub report_seq: u64,
    /// The newest generation the agent has received (0: none yet).
    pub manifest_generation: u64,
    /// The generation the agent's last complete pass applied (0: none yet).
    pub observed_generation: u64,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub observed_at: OffsetDateTime,
    pub agent: AgentInfo,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub resources: BTreeMap<ResourceId, ResourceStatus>,
    /// What the agent found out about its host, for fleet selectors (`matchFacts`). Absent from
    /// agents older than fleets, which still parse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facts: Option<Facts>,
}

/// Facts an agent reports about the host it runs on, read when it starts. A fleet's
/// `selector.matchFacts` compares its values, as strings, with [`Facts::to_map`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Facts {
    /// The CPU architecture the agent was built for, e.g. `aarch64`, `x86_64`.
    pub arch: String,
    /// The operating system: the `ID` of os-release (`debian`, `raspbian`, `fedora`), else
    /// `linux`.
    pub os: String,
    pub hostname: String,
    /// The board model from the device tree (`Raspberry Pi 4 Model B Rev 1.4`); absent where the
    /// host has no device tree (most PCs and virtual machines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The kernel release, e.g. `6.1.0-rpi7-rpi-v8`.
    pub kernel: String,
    /// Total memory of the host in bytes.
    pub memory_bytes: u64,
}

impl Facts {
    /// The facts as the string map selectors match against: the camelCase field names as keys,
    /// `memoryBytes` in decimal, `model` only when known.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        let mut map = BTreeMap::from([
            ("arch".to_owned(), self.arch.clone()),
            ("os".to_owned(), self.os.clone()),
            ("hostname".to_owned(), self.hostname.clone()),
            ("kernel".to_owned(), self.kernel.clone()),
            ("memoryBytes".to_owned(), self.memory_bytes.to_string()),
        ]);
        if let Some(model) = &self.model {
            map.insert("model".to_owned(), model.clone());
        }
        map
    }
}

/// Facts about the agent process and its host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentInfo {
    pub version: String,
    pub hostname: String,
    pub arch: String,
    pub os: String,
    #[serde(default)]
    pub boot_id: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub started_at: OffsetDateTime,
    #[serde(default)]
    pub supported_kinds: Vec<String>,
}

/// Where a resource stands.
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
pub enum Phase {
    Pending,
    Reconciling,
    Ready,
    Failed,
    Deleting,
    Unsupported,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::Pending,
        Phase::Reconciling,
        Phase::Ready,
        Phase::Failed,
        Phase::Deleting,
        Phase::Unsupported,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Reconciling => "Reconciling",
            Phase::Ready => "Ready",
            Phase::Failed => "Failed",
            Phase::Deleting => "Deleting",
            Phase::Unsupported => "Unsupported",
        }
    }

    pub fn parse(text: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == text)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The status of one resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceStatus {
    pub kind: String,
    pub phase: Phase,
    /// When the resource entered its current phase.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub since: OffsetDateTime,
    /// The manifest generation this status was computed for.
    pub generation: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ResourceError>,
    /// When the next attempt is due after a failure.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>")]
    pub retry_after: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<ResourceDetails>,
    /// Drift the agent found and repaired on this resource (absent until the first repair).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repairs: Option<Repairs>,
}

/// How often the agent found a resource drifted (edited, deleted, stopped or killed by someone
/// else) and put it back. The count only grows while the resource exists on the agent, across
/// spec changes and restarts; it starts again at 1 only if the agent lost its store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Repairs {
    pub count: u64,
    /// When the last repair was made.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub last_at: OffsetDateTime,
    /// What the last repair found drifted, in words ("content changed").
    pub last_drift: String,
}

/// A typed failure: a reason from a closed set, and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceError {
    pub reason: ErrorReason,
    pub message: String,
}

macro_rules! error_reasons {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Why a resource failed. The set is closed and documented; a reason sent by a newer agent
        /// that this build does not know is kept as `Other` rather than refused.
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum ErrorReason {
            $($(#[$doc])* $name,)*
            /// A reason this build does not know (sent by a newer agent).
            Other(String),
        }

        impl ErrorReason {
            pub const KNOWN: &[ErrorReason] = &[$(ErrorReason::$name),*];

            pub fn as_str(&self) -> &str {
                match self {
                    $(ErrorReason::$name => stringify!($name),)*
                    ErrorReason::Other(other) => other,
                }
            }

            pub fn parse(text: &str) -> ErrorReason {
                match text {
                    $(stringify!($name) => ErrorReason::$name,)*
                    other => ErrorReason::Other(other.to_owned()),
                }
            }
        }
    };
}

error_reasons! {
    /// The spec cannot be applied as written (beyond what the manager's validation catches).
    InvalidSpec,
    /// The kind is not supported by this agent build or configuration.
    UnsupportedKind,
    /// A File path lies outside the agent's configured file roots, or escapes them by a link.
    PathNotAllowed,
    /// The agent lacks the permission to do what the spec asks.
    PermissionDenied,
    /// A File owner or group does not exist on the device.
    OwnerNotFound,
    /// A filesystem operation failed.
    IoError,
    /// The filesystem (or the quota) is full: `ENOSPC` or `EDQUOT`.
    DiskFull,
    /// A path is occupied by something the agent did not create.
    Conflict,
    /// The container image is not present and may not or cannot be pulled.
    ImageNotFound,
    /// Pulling the image failed.
    ImagePullFailed,
    /// The container runtime cannot be reached.
    RuntimeUnavailable,
    /// The runtime refused to create or start the container.
    ContainerCreateFailed,
    /// The container exited and its restart policy keeps it down.
    ContainerExited,
    /// The container keeps exiting and waits for its next restart.
    CrashLoopBackOff,
    /// The spec asks for a capability the agent's configuration does not allow.
    NotAllowed,
    /// A volume's SessionStorage is not ready.
    StorageNotReady,
    /// The systemd unit failed to start or run.
    UnitFailed,
    /// The systemd manager cannot be reached.
    SystemdUnavailable,
    /// A systemd operation (reload, enable, start, stop) failed.
    UnitOperationFailed,
    /// A SystemdUnit asks for `enabled: true`, but its unit has no `[Install]` section, so
    /// systemd cannot enable it (the unit is "static").
    UnitNotInstallable,
    /// A SessionStorage uses more than its size limit.
    QuotaExceeded,
    /// A SessionStorage passed its expiry and its data was deleted.
    SessionStorageEvicted,
    /// The manifest's signature is missing or does not verify.
    SignatureInvalid,
    /// The agent's local store failed.
    StoreError,
}

impl std::fmt::Display for ErrorReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorReason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorReason {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let pascal = text.len() <= 64
            && text.starts_with(|c: char| c.is_ascii_uppercase())
            && text.chars().all(|c| c.is_ascii_alphanumeric());
        if !pascal {
            return Err(serde::de::Error::custom(
                "reason must be a PascalCase word of at most 64 characters",
            ));
        }
        Ok(ErrorReason::parse(&text))
    }
}

impl schemars::JsonSchema for ErrorReason {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ErrorReason".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let known: Vec<&str> = ErrorReason::KNOWN.iter().map(ErrorReason::as_str).collect();
        schemars::json_schema!({
            "type": "string",
            "pattern": "^[A-Z][A-Za-z0-9]{0,63}$",
            "description": format!("one of {}", known.join(", ")),
        })
    }
}

/// Typed details of a resource; which shape applies follows from the resource's kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum ResourceDetails {
    File(FileDetails),
    Container(ContainerDetails),
    SystemdUnit(SystemdUnitDetails),
    SessionStorage(SessionStorageDetails),
}

impl ResourceDetails {
    pub fn kind(&self) -> Kind {
        match self {
            ResourceDetails::File(_) => Kind::File,
            ResourceDetails::Container(_) => Kind::Container,
            ResourceDetails::SystemdUnit(_) => Kind::SystemdUnit,
            ResourceDetails::SessionStorage(_) => Kind::SessionStorage,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileDetails {
    pub sha256: String,
    pub size: u64,
    pub mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerDetails {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// The runtime's state word: created, running, exited, …
    pub state: String,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>")]
    pub started_at: Option<OffsetDateTime>,
    pub restarts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SystemdUnitDetails {
    pub active_state: String,
    pub sub_state: String,
    #[serde(default)]
    pub main_pid: u32,
    #[serde(default)]
    pub n_restarts: u32,
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit_file_state: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionStorageDetails {
    pub path: String,
    pub size_bytes: u64,
    pub files_count: u64,
    pub sha256: String,
    pub used_fraction: f64,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>")]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>")]
    pub evicted_at: Option<OffsetDateTime>,
}

/// A condition of the agent as a whole, in the style of Kubernetes conditions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: ConditionType,
    pub status: ConditionStatus,
    pub reason: String,
    pub message: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub last_transition_time: OffsetDateTime,
}

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
pub enum ConditionType {
    Ready,
    Degraded,
    Reconciling,
    ManifestRejected,
    Offline,
    /// True while the agent runs its last known-good generation because a newer one missed its
    /// rollout deadline; False with a reason when a deadline passed and it did not roll back.
    RolledBack,
}

/// The reasons of a True `Degraded` condition that say the agent's local store cannot save: the
/// disk (or quota) is full, or another I/O error. The agent then converges from memory, and the
/// manager shows it `degraded` whatever its resources say.
pub const STORE_FAULT_REASONS: [&str; 2] = ["DiskFull", "StoreUnavailable"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl AgentStatus {
    /// Checks what serde cannot: the envelope and that each resource's details match its kind.
    pub fn check(&self) -> Vec<crate::Violation> {
        let mut violations = Vec::new();
        let mut add = |path: String, message: &str| {
            violations.push(crate::Violation {
                path,
                message: message.into(),
            })
        };
        if self.api_version != crate::API_VERSION {
            add("apiVersion".into(), "must be \"fleetlet.dev/v1\"");
        }
        if self.kind != STATUS_KIND {
            add("kind".into(), "must be \"AgentStatus\"");
        }
        if self.observed_generation > self.manifest_generation {
            add(
                "observedGeneration".into(),
                "must not exceed manifestGeneration",
            );
        }
        for (id, resource) in &self.resources {
            if let Some(details) = &resource.details
                && Kind::parse(&resource.kind) != Some(details.kind())
            {
                add(
                    format!("resources.{id}.details"),
                    "must match the resource's kind",
                );
            }
        }
        violations
    }

    /// Whether the agent says every resource is Ready at the given generation.
    pub fn all_ready_at(&self, generation: u64) -> bool {
        self.observed_generation == generation
            && self.resources.values().all(|r| r.phase == Phase::Ready)
    }
}

#[cfg(test)]
mod tests;
