//! The container runtime behind the Container reconciler: a small async trait
//! ([`ContainerRuntime`]) with one real implementation that drives the podman or docker CLI
//! ([`cli::CliRuntime`]) and, for unit tests, a fake that records every call.
//!
//! The trait speaks in the reconciler's terms (find containers by label, inspect one, create,
//! start, remove, check and pull an image), not in the runtime's, so that the reconciler never
//! sees a command line or a JSON shape of one engine.

pub mod cli;
#[cfg(test)]
pub mod fake;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use fleetlet_manifests::PortMapping;
use time::OffsetDateTime;

pub use cli::{CliRuntime, RuntimeFlavor};

/// Label naming the agent that created a container. A container without it (or with another
/// agent's id) is never stopped or removed.
pub const LABEL_AGENT: &str = "dev.fleetlet.agent";
/// Label naming the resource id a container belongs to.
pub const LABEL_RESOURCE: &str = "dev.fleetlet.resource";
/// Label holding the spec hash the container was built from; a different hash means replace.
pub const LABEL_SPEC_HASH: &str = "dev.fleetlet.spec-hash";

/// What the runtime says about one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    /// The name without docker's leading `/`.
    pub name: String,
    pub image_id: String,
    pub labels: BTreeMap<String, String>,
    /// The runtime's state word (created, running, paused, exited, …), with podman's synonyms
    /// folded into docker's words so that the status reads the same on both.
    pub status: String,
    pub exit_code: Option<i32>,
    pub created_at: Option<OffsetDateTime>,
    pub started_at: Option<OffsetDateTime>,
    pub finished_at: Option<OffsetDateTime>,
}

/// The state words of podman and docker folded into what the reconciler acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Running (or paused, which is an operator's deliberate act, not a crash).
    Running,
    /// Created but never started (the agent stopped between create and start).
    NotStarted,
    /// The process ended.
    Exited,
    /// Being removed or in a state the agent does not know: it waits for the next pass.
    Transient,
}

impl ContainerInfo {
    pub fn run_state(&self) -> RunState {
        match self.status.as_str() {
            "running" | "paused" => RunState::Running,
            "created" | "configured" | "initialized" => RunState::NotStarted,
            "exited" | "stopped" | "dead" => RunState::Exited,
            _ => RunState::Transient,
        }
    }

    /// Whether the container carries the labels of `agent` and `resource`.
    pub fn belongs_to(&self, agent: &str, resource: &str) -> bool {
        self.labels.get(LABEL_AGENT).map(String::as_str) == Some(agent)
            && self.labels.get(LABEL_RESOURCE).map(String::as_str) == Some(resource)
    }

    pub fn spec_hash(&self) -> Option<&str> {
        self.labels.get(LABEL_SPEC_HASH).map(String::as_str)
    }
}

/// Everything needed to create one container. The runtime's own restart policy is always off:
/// the agent restarts containers itself, with its backoff and its restart count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateRequest {
    pub name: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    /// Replaces the image's entrypoint (the first word of the spec's `command`).
    pub entrypoint: Option<String>,
    /// Arguments after the image: the rest of `command`, then `args`. When given they replace
    /// the image's CMD, as in Kubernetes.
    pub arguments: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub ports: Vec<PortMapping>,
    pub memory_limit_bytes: Option<u64>,
    pub cpu_millis: Option<u32>,
    /// Host directories bound into the container (session storage).
    pub mounts: Vec<BindMount>,
    /// Host access, only ever set when the agent's configuration allows it (the Container
    /// reconciler refuses the spec otherwise): `--privileged`, `--network=host`, `--pid=host`.
    pub privileged: bool,
    pub host_network: bool,
    pub host_pid: bool,
    /// Host device paths passed in with `--device=<path>`, each on the allowed list.
    pub devices: Vec<String>,
}

/// A host directory bound into a container. A bind, not a named volume: the runtime refuses a
/// missing source instead of creating an empty one, so a workload never starts on an empty
/// directory in place of its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    pub source: String,
    pub target: String,
    pub read_only: bool,
}

/// Why a runtime call failed. Each variant maps to one status reason in the reconciler.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    #[error("{runtime} is not reachable: {message}")]
    Unavailable { runtime: String, message: String },
    #[error("{runtime} {operation} took longer than {timeout:?}")]
    TimedOut {
        runtime: String,
        operation: &'static str,
        timeout: Duration,
    },
    #[error("image {image} is not present")]
    ImageNotFound { image: String },
    #[error("{runtime} could not pull {image}: {message}")]
    PullFailed {
        runtime: String,
        image: String,
        message: String,
    },
    #[error("container name {name} is already in use")]
    NameInUse { name: String },
    #[error("{runtime} {operation} failed: {message}")]
    Failed {
        runtime: String,
        operation: &'static str,
        message: String,
    },
    #[error("{runtime} {operation} answered with output that is not understood: {message}")]
    BadOutput {
        runtime: String,
        operation: &'static str,
        message: String,
    },
}

/// A container engine. Every call is bounded by a timeout in the implementation, so a hung
/// engine fails the apply instead of holding it.
pub trait ContainerRuntime: Send + Sync + std::fmt::Debug + 'static {
    /// All containers (running or not) that carry every one of `labels`.
    fn list(
        &self,
        labels: &[(&str, &str)],
    ) -> impl Future<Output = Result<Vec<ContainerInfo>, RuntimeError>> + Send;

    /// The container with this id or name, if there is one.
    fn inspect(
        &self,
        id_or_name: &str,
    ) -> impl Future<Output = Result<Option<ContainerInfo>, RuntimeError>> + Send;

    /// The id of the local image `image`, or `None` when it is not present.
    fn image_id(
        &self,
        image: &str,
    ) -> impl Future<Output = Result<Option<String>, RuntimeError>> + Send;

    fn pull(&self, image: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Creates the container (without starting it) and returns its id.
    fn create(
        &self,
        request: &CreateRequest,
    ) -> impl Future<Output = Result<String, RuntimeError>> + Send;

    fn start(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Stops (with a grace period) and removes the container; one already gone is fine.
    fn remove(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
}

/// The runtime chosen by the agent's configuration: a CLI runtime, or none at all (every
/// container then fails with `RuntimeUnavailable` while other kinds still converge).
#[derive(Debug, Clone)]
pub enum ConfiguredRuntime {
    Cli(CliRuntime),
    Disabled,
}

impl ConfiguredRuntime {
    fn disabled<T>() -> Result<T, RuntimeError> {
        Err(RuntimeError::Unavailable {
            runtime: "container runtime".into(),
            message: "no container runtime is configured (FLEETLET_CONTAINER_RUNTIME=none)".into(),
        })
    }
}

impl ContainerRuntime for ConfiguredRuntime {
    async fn list(&self, labels: &[(&str, &str)]) -> Result<Vec<ContainerInfo>, RuntimeError> {
        match self {
            ConfiguredRuntime::Cli(cli) => cli.list(labels).await,
            ConfiguredRuntime::Disabled => Self::disabled(),
        }
    }

    async fn inspect(&self, id_or_name: &str) -> Result<Option<ContainerInfo>, RuntimeError> {
        match self {
            ConfiguredRuntime::Cli(cli) => cli.inspect(id_or_name).await,
            ConfiguredRuntime::Disabled => Self::disabled(),
        }
    }

    async fn image_id(&self, image: &str) -> Result<Option<String>, RuntimeError> {
        match self {
            ConfiguredRuntime::Cli(cli) => cli.image_id(image).await,
            ConfiguredRuntime::Disabled => Self::disabled(),
        }
    }

    async fn pull(&self, image: &str) -> Result<(), RuntimeError> {
        match self {
            ConfiguredRuntime::Cli(cli) => cli.pull(image).await,
            ConfiguredRuntime::Disabled => Self::disabled(),
        }
    }

    async fn create(&self, request: &CreateRequest) -> Result<String, RuntimeError> {
        match self {
            ConfiguredRuntime::Cli(cli) => cli.create(request).await,
            ConfiguredRuntime::Disabled => Self::disabled(),
        }
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        match self {
            ConfiguredRuntime::Cli(cli) => cli.start(id).await,
            ConfiguredRuntime::Disabled => Self::disabled(),
        }
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        match self {
            ConfiguredRuntime::Cli(cli) => cli.remove(id).await,
            ConfiguredRuntime::Disabled => Self::disabled(),
        }
    }
}
