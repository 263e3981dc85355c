//! The reconciler contract, and the dispatch from a resource's kind to its reconciler.
//!
//! Every kind implements the same three steps: **observe** what is there, **apply** only what
//! differs from the spec, and **delete** what the agent owns. The guarantees the engine relies
//! on, for every kind:
//!
//! - `apply` is idempotent: applying a spec that is already in place changes nothing and reports
//!   [`Change::Unchanged`]. It observes first, so calling it on every resync is how drift is found
//!   and repaired (level-triggered, not edge-triggered).
//! - `apply` returns what it owns ([`Owned`]); the engine records it before anything else, and
//!   `delete` is only ever called with such a record, so the agent deletes only what it made.
//! - `delete` tolerates an apply that never ran or half ran, and an object that is already gone.
//! - Failures are data: a [`ReconcileError`] maps to a closed [`ErrorReason`]; the retry policy is
//!   not the reconciler's business (see `backoff.rs`).
//!
//! Dispatch is a `match` on the kind ([`Reconcilers`]); kinds not built yet fail with a typed
//! reason instead of being silently skipped.

pub mod container;
pub mod file;
pub mod session_storage;
pub mod systemd_unit;

use std::future::Future;
use std::time::Duration;

use fleetlet_manifests::{ErrorReason, Kind, Resource, ResourceDetails, ResourceId, ResourceSpec};
use tokio::sync::mpsc;

use crate::shutdown::ShutdownSignal;
use crate::store::{Owned, OwnershipRecord};
pub use container::{ContainerError, ContainerReconciler, ContainerSettings, HostAccess};
pub use file::{FileError, FileReconciler};
pub use session_storage::{SessionStorageError, SessionStorageReconciler, SessionVolumes};
pub use systemd_unit::{SystemdSettings, SystemdUnitError, SystemdUnitReconciler};

/// The contract the engine drives. [`Reconcilers`] is the real implementation; unit tests of the
/// engine use a recording fake.
pub trait Reconcile: Send + Sync + 'static {
    /// Makes the resource match its spec. `previous` is the ownership record of the last
    /// successful apply of this resource id, if any.
    fn apply(
        &self,
        resource: &Resource,
        previous: Option<&OwnershipRecord>,
    ) -> impl Future<Output = Result<Applied, ReconcileError>> + Send;

    /// Removes what `record` says the agent created for resource `id`.
    fn delete(
        &self,
        id: &ResourceId,
        record: &OwnershipRecord,
    ) -> impl Future<Output = Result<Deleted, ReconcileError>> + Send;

    /// The kinds this build can apply (reported in `agent.supportedKinds`).
    fn supported_kinds(&self) -> Vec<Kind>;

    /// How many resources of `kind` the engine may hand to one [`Reconcile::apply_batch`]. With
    /// 1, the default, every resource is its own [`Reconcile::apply`].
    fn batch_size(&self, _kind: Kind) -> usize {
        1
    }

    /// Applies several resources of one kind, one after the other, with the same guarantees as
    /// [`Reconcile::apply`] for each, and hands every result to `results` in the order given.
    /// This is for kinds whose converged resources are cheap to confirm but costly to dispatch
    /// one by one (File: one blocking task for the whole batch instead of one per file). The
    /// engine times out every result on its own; an implementation stops starting resources when
    /// [`BatchResults::may_start`] says so. The default applies them in turn.
    fn apply_batch(
        &self,
        batch: Vec<(Resource, Option<OwnershipRecord>)>,
        results: BatchResults,
    ) -> impl Future<Output = ()> + Send {
        apply_in_turn(self, batch, results)
    }

    /// Removes what the agent made for resources that are neither desired nor recorded (a
    /// resource whose first apply failed has no ownership record to drive its delete). Called
    /// once per pass, after the deletes. Returns what was removed, by resource id.
    fn collect_garbage(
        &self,
        _desired: &[Resource],
    ) -> impl Future<Output = Vec<(ResourceId, String)>> + Send {
        std::future::ready(Vec::new())
    }
}

/// Where [`Reconcile::apply_batch`] puts its results, one per resource in the order given.
#[derive(Debug)]
pub struct BatchResults {
    sender: mpsc::UnboundedSender<(Resource, Result<Applied, ReconcileError>)>,
    shutdown: ShutdownSignal,
}

impl BatchResults {
    pub fn new(
        sender: mpsc::UnboundedSender<(Resource, Result<Applied, ReconcileError>)>,
        shutdown: ShutdownSignal,
    ) -> Self {
        Self { sender, shutdown }
    }

    /// Whether the next resource may be started: not once the agent shuts down (the applies
    /// already running finish, as outside a batch) or the engine stopped waiting for results.
    pub fn may_start(&self) -> bool {
        !self.shutdown.is_triggered() && !self.sender.is_closed()
    }

    /// Hands over the result of `resource`; false when nobody takes results any more.
    pub fn send(&self, resource: Resource, result: Result<Applied, ReconcileError>) -> bool {
        self.sender.send((resource, result)).is_ok()
    }
}

/// [`Reconcile::apply_batch`] as one [`Reconcile::apply`] after the other.
pub async fn apply_in_turn<R: Reconcile + ?Sized>(
    reconciler: &R,
    batch: Vec<(Resource, Option<OwnershipRecord>)>,
    results: BatchResults,
) {
    for (resource, record) in batch {
        if !results.may_start() {
            return;
        }
        let result = reconciler.apply(&resource, record.as_ref()).await;
        if !results.send(resource, result) {
            return;
        }
    }
}

/// What a successful apply found and did.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub change: Change,
    pub owned: Owned,
    pub details: Option<ResourceDetails>,
}

/// What an apply changed on the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Everything already matched the spec.
    Unchanged,
    /// The object did not exist and was created.
    Created,
    /// An object the agent did not create was taken over and made to match.
    Adopted,
    /// The spec changed and the object was changed to match it.
    Updated,
    /// The spec did not change but the object had drifted (what drifted is named) and was repaired.
    Repaired { drift: String },
}

/// What a delete did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deleted {
    /// The object was removed.
    Removed,
    /// Nothing was there any more.
    AlreadyGone,
    /// The object is left in place on purpose (the agent did not create it, or it is no longer
    /// what the agent made); the agent stops managing it.
    Released { why: String },
}

/// Why an apply or a delete failed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    SystemdUnit(#[from] SystemdUnitError),
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error(transparent)]
    SessionStorage(#[from] SessionStorageError),
    #[error("{kind} resource {id}: {kind} is not implemented in this build")]
    NotImplemented { id: ResourceId, kind: Kind },
    #[error("resource {id} has kind {kind}, which this agent build does not know")]
    UnknownKind { id: ResourceId, kind: String },
    #[error("reconciling resource {id} took longer than {timeout:?}")]
    TimedOut { id: ResourceId, timeout: Duration },
    #[error("reconciler of resource {id} stopped unexpectedly: {message}")]
    Crashed { id: ResourceId, message: String },
}

impl ReconcileError {
    /// The typed reason reported in the resource's status.
    pub fn reason(&self) -> ErrorReason {
        match self {
            ReconcileError::File(error) => error.reason(),
            ReconcileError::SystemdUnit(error) => error.reason(),
            ReconcileError::Container(error) => error.reason(),
            ReconcileError::SessionStorage(error) => error.reason(),
            ReconcileError::NotImplemented { .. } | ReconcileError::UnknownKind { .. } => {
                ErrorReason::UnsupportedKind
            }
            ReconcileError::TimedOut { .. } | ReconcileError::Crashed { .. } => {
                ErrorReason::IoError
            }
        }
    }

    /// Details of what the failed apply observed, reported instead of those of the last
    /// success (an exited container's exit code and restart count).
    pub fn details(&self) -> Option<ResourceDetails> {
        match self {
            ReconcileError::Container(error) => error.details(),
            ReconcileError::SessionStorage(error) => error.details(),
            _ => None,
        }
    }

    /// When the next attempt is due, when the reconciler knows better than the engine's
    /// failure count (a container's restart backoff, measured from its exit).
    pub fn retry_in(&self) -> Option<Duration> {
        match self {
            ReconcileError::Container(error) => error.retry_in(),
            ReconcileError::SessionStorage(error) => error.retry_in(),
            _ => None,
        }
    }
}

/// Settings of the reconcilers, from the agent's configuration.
#[derive(Debug, Clone, Default)]
pub struct ReconcilerSettings {
    /// Absolute directories under which File resources may write.
    pub file_roots: Vec<std::path::PathBuf>,
    /// Where SystemdUnit resources go; `None` when the agent runs without systemd.
    pub systemd: Option<SystemdSettings>,
    /// The agent's id, written into the ownership marker of the unit files it writes.
    pub agent_id: Option<fleetlet_manifests::AgentId>,
    /// Which container runtime Container resources use.
    pub container: ContainerSettings,
    /// Where SessionStorage resources keep their directories; `None`: SessionStorage resources
    /// fail with `StorageNotReady`.
    pub session_root: Option<std::path::PathBuf>,
}

/// The real reconcilers, one per kind, dispatched by a `match` on the resource's kind.
#[derive(Debug, Clone)]
pub struct Reconcilers {
    file: FileReconciler,
    systemd_unit: SystemdUnitReconciler<systemd_unit::Systemctl>,
    container: ContainerReconciler<crate::runtime::ConfiguredRuntime>,
    session_storage: SessionStorageReconciler,
}

impl Reconcilers {
    pub fn new(settings: &ReconcilerSettings) -> Self {
        let agent_id = settings
            .agent_id
            .as_ref()
            .map_or("unknown", |id| id.as_str());
        // Containers mount session storage through the view its reconciler keeps.
        let session_storage =
            SessionStorageReconciler::new(settings.session_root.clone(), agent_id);
        Self {
            file: FileReconciler::new(settings.file_roots.clone()),
            systemd_unit: SystemdUnitReconciler::new(
                settings.systemd.as_ref(),
                settings
                    .agent_id
                    .as_ref()
                    .map_or("unknown", |id| id.as_str()),
            ),
            container: ContainerReconciler::new(
                settings.container.runtime(),
                settings.agent_id.clone(),
            )
            .with_volumes(session_storage.volumes())
            .with_host_access(settings.container.host_access.clone()),
            session_storage,
        }
    }
}

impl Reconcile for Reconcilers {
    async fn apply(
        &self,
        resource: &Resource,
        previous: Option<&OwnershipRecord>,
    ) -> Result<Applied, ReconcileError> {
        let id = &resource.id;
        match &resource.spec {
            ResourceSpec::File(spec) => {
                let previous = previous.and_then(|record| match &record.owned {
                    Owned::File(owned) => Some((record.spec_hash.clone(), owned.clone())),
                    _ => None,
                });
                Ok(self
                    .file
                    .apply(id.clone(), spec.clone(), resource.spec_hash(), previous)
                    .await?)
            }
            ResourceSpec::SessionStorage(spec) => {
                let previous = previous.and_then(|record| match &record.owned {
                    Owned::SessionStorage(owned) => Some(owned),
                    _ => None,
                });
                Ok(self.session_storage.apply(id, spec, previous).await?)
            }
            ResourceSpec::SystemdUnit(spec) => {
                let previous = previous.and_then(|record| match &record.owned {
                    Owned::SystemdUnit(owned) => Some((record.spec_hash.clone(), owned.clone())),
                    _ => None,
                });
                Ok(self
                    .systemd_unit
                    .apply(id, spec, &resource.spec_hash(), previous)
                    .await?)
            }
            ResourceSpec::Container(spec) => {
                let previous = previous.and_then(|record| match &record.owned {
                    Owned::Container(owned) => Some((record.spec_hash.as_str(), owned)),
                    _ => None,
                });
                Ok(self
                    .container
                    .apply(id, spec, &resource.spec_hash(), previous)
                    .await?)
            }
            ResourceSpec::Unknown { kind, .. } => Err(ReconcileError::UnknownKind {
                id: id.clone(),
                kind: kind.clone(),
            }),
        }
    }

    async fn delete(
        &self,
        id: &ResourceId,
        record: &OwnershipRecord,
    ) -> Result<Deleted, ReconcileError> {
        match &record.owned {
            Owned::File(owned) => Ok(self.file.delete(id.clone(), owned.clone()).await?),
            Owned::SystemdUnit(owned) => Ok(self.systemd_unit.delete(id, owned).await?),
            Owned::Container(owned) => Ok(self.container.delete(id, owned).await?),
            Owned::SessionStorage(owned) => Ok(self.session_storage.delete(id, owned).await?),
        }
    }

    fn batch_size(&self, kind: Kind) -> usize {
        match kind {
            Kind::File => file::BATCH_SIZE,
            _ => 1,
        }
    }

    async fn apply_batch(
        &self,
        batch: Vec<(Resource, Option<OwnershipRecord>)>,
        results: BatchResults,
    ) {
        if !batch
            .iter()
            .all(|(resource, _)| matches!(resource.spec, ResourceSpec::File(_)))
        {
            return apply_in_turn(self, batch, results).await;
        }
        let batch = batch
            .into_iter()
            .map(|(resource, record)| file::BatchItem {
                resource,
                previous: record.and_then(|record| match record.owned {
                    Owned::File(owned) => Some((record.spec_hash, owned)),
                    _ => None,
                }),
            })
            .collect();
        self.file.apply_batch(batch, results).await;
    }

    fn supported_kinds(&self) -> Vec<Kind> {
        vec![
            Kind::SessionStorage,
            Kind::File,
            Kind::SystemdUnit,
            Kind::Container,
        ]
    }

    async fn collect_garbage(&self, desired: &[Resource]) -> Vec<(ResourceId, String)> {
        self.session_storage.collect_garbage(desired).await
    }
}
