//! The fleetlet wire contract: typed manifests and statuses, the manager's API bodies, their
//! validation and their JSON Schema. Types only: no I/O and no async runtime.
//!
//! Invariant: only this crate defines wire types; the agent, the manager and the CLI all use
//! these, so a field cannot drift between the sides.

pub mod api;
pub mod duration;
pub mod fleet;
pub mod fleet_api;
pub mod ids;
pub mod manifest;
pub mod signature;
pub mod status;
mod validate;

pub use fleet::{
    BatchLimit, BatchSpec, Fleet, FleetName, FleetOrigin, FleetTemplate, ParameterName,
    ParameterSpec, Percent, RenderError, RolloutStrategy, Selector, SignedTemplate,
    TemplateResource,
};
pub use ids::{
    AbsPath, AccountName, AgentId, FileMode, ImageRef, InvalidValue, ResourceId, SessionId,
    UnitName,
};
pub use manifest::{
    AgentManifest, ContainerSpec, FileContent, FileSpec, Kind, ManifestError, OnFailure,
    PortMapping, PullPolicy, Resource, ResourceSpec, RestartPolicy, RolloutPolicy,
    SessionStorageSpec, SystemdUnitSpec, UnitState, VolumeMount,
};
pub use signature::ManifestSignature;
pub use status::{
    AgentInfo, AgentStatus, Condition, ConditionStatus, ConditionType, ContainerDetails,
    ErrorReason, Facts, FileDetails, Phase, Repairs, ResourceDetails, ResourceError,
    ResourceStatus, SessionStorageDetails, SystemdUnitDetails,
};

use serde::{Deserialize, Serialize};

/// The `apiVersion` of every manifest and status.
pub const API_VERSION: &str = "fleetlet.dev/v1";

/// One broken rule, with the JSON path of the value that broke it, e.g.
/// `resources[2].spec.path: must be absolute`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Violation {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

pub mod schema;
