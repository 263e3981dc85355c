//! The agent's top-level error: why [`crate::run`] or [`crate::run_once`] could not start or
//! had to stop. Each module has its own error enum; this one only gathers them.

use crate::client::ClientError;
use crate::config::ConfigError;
use crate::engine::EngineError;
use crate::manifest_file::ManifestFileError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("no agent id: set FLEETLET_AGENT_ID, or give the manifest file an agentId ({0})")]
    NoAgentId(#[source] ManifestFileError),
    #[error("local store: {0}")]
    Store(#[from] StoreError),
    #[cfg(feature = "fs-store")]
    #[error("local store: {0}")]
    FsStore(#[from] crate::store::FsStoreError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("manager client: {0}")]
    Client(#[from] ClientError),
    #[error("enrollment: {0}")]
    Enroll(#[from] crate::enroll::EnrollError),
}
