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
//! - Failures are data: a [`ReconcileError`] maps to a closed [`ErrorReason`] and says nothing
//!   about scheduling. When to look again is part of the apply's [`Outcome`] ([`Retry`]): the
//!   engine's backoff (`backoff.rs`) unless the kind's [`KindReconciler::error_policy`] knows
//!   better (in the spirit of kube-rs's `error_policy` returning an `Action`).
//!
//! Every kind implements one trait, [`KindReconciler`]: it declares its spec, its ownership
//! record and its error type, `apply` gets one [`Target`] (id, spec, the spec hash the engine
//! has cached, the previous record of this kind) and `delete` the record it made. The dispatch
//! from a resource to its kind's reconciler ([`Reconcilers`]) is written once, generically.
//!
//! The engine hands each kind its whole list of resources to apply ([`Reconcile::apply_all`])
//! and knows nothing of how a kind schedules them: by default one apply per resource under a
//! concurrency bound ([`bounded`]); the File reconciler takes them in batches (`file/schedule.rs`).

pub mod bounded;
pub mod container;
pub mod file;
pub mod session_storage;
pub mod systemd_unit;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use fleetlet_manifests::{
    ContainerSpec, ErrorReason, FileSpec, Kind, Resource, ResourceDetails, ResourceId,
    ResourceSpec, SessionStorageSpec, SystemdUnitSpec,
};

use crate::shutdown::ShutdownSignal;
use crate::store::{Owned, OwnershipRecord};
pub use container::{ContainerError, ContainerReconciler, ContainerSettings, HostAccess};
pub use file::{FileError, FileReconciler};
pub use session_storage::{SessionStorageError, SessionStorageReconciler, SessionVolumes};
pub use systemd_unit::{SystemdSettings, SystemdUnitError, SystemdUnitReconciler};

/// The contract the engine drives. [`Reconcilers`] is the real implementation; unit tests of the
/// engine use a recording fake.
pub trait Reconcile: Send + Sync + 'static {
    /// Makes the resource match its spec (a kind this build knows: see [`Desired`]). The
    /// outcome says when to look again after a failure.
    fn apply(&self, desired: &Desired) -> impl Future<Output = Outcome> + Send;

    /// Removes what `record` says the agent created for resource `id`.
    fn delete(
        &self,
        id: &ResourceId,
        record: &OwnershipRecord,
    ) -> impl Future<Output = Result<Deleted, ReconcileError>> + Send;

    /// The kinds this build can apply (reported in `agent.supportedKinds`).
    fn supported_kinds(&self) -> Vec<Kind>;

    /// Applies every resource of one kind that this pass applies: the engine hands each kind its
    /// whole list, kind after kind, and takes back every resource with its outcome, in the order
    /// they finished. However a kind schedules them, each resource keeps the guarantees of
    /// [`Reconcile::apply`] and gets an outcome of its own: one that takes longer than
    /// `limits.timeout` fails with `TimedOut`, one whose apply panics with `Crashed`, and
    /// neither holds up the others; no more than `limits.concurrency` applies run at once.
    /// After shutdown nothing new starts, and a resource not started gets no outcome.
    ///
    /// The default is [`bounded::apply_each`]: every resource its own [`Reconcile::apply`]. A
    /// kind that is cheaper to apply together does so behind this call (File: batches in one
    /// blocking task each, see [`FileReconciler::apply_all`]).
    fn apply_all(
        self: Arc<Self>,
        items: Vec<Arc<Desired>>,
        limits: ApplyLimits,
        shutdown: ShutdownSignal,
    ) -> impl Future<Output = Vec<(Arc<Desired>, Outcome)>> + Send {
        bounded::apply_each(self, items, limits, shutdown)
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

/// A resource to apply as the engine hands it over: its id, its spec, the spec hash the engine
/// cached and the ownership record of its last successful apply. The spec is of a kind this build
/// knows: a resource of an unknown kind cannot be a `Desired` (the engine reports it
/// `Unsupported` and never hands it to a reconciler).
#[derive(Debug, Clone)]
pub struct Desired {
    pub id: ResourceId,
    pub spec: KnownSpec,
    pub spec_hash: String,
    pub previous: Option<OwnershipRecord>,
}

impl Desired {
    /// The resource as the manifest has it.
    pub fn resource(&self) -> Resource {
        Resource {
            id: self.id.clone(),
            spec: self.spec.clone().into(),
        }
    }
}

/// What the engine allows the applies of one kind: how many run at once, and how long each may
/// take (`FLEETLET_CONCURRENCY`, `FLEETLET_APPLY_TIMEOUT`).
#[derive(Debug, Clone, Copy)]
pub struct ApplyLimits {
    pub concurrency: usize,
    pub timeout: Duration,
}

/// The spec of a resource of a kind this build applies: [`ResourceSpec`] without `Unknown`.
#[derive(Debug, Clone, PartialEq)]
pub enum KnownSpec {
    SessionStorage(SessionStorageSpec),
    File(FileSpec),
    SystemdUnit(SystemdUnitSpec),
    Container(ContainerSpec),
}

impl KnownSpec {
    /// The spec, if its kind is known to this build.
    pub fn of(spec: &ResourceSpec) -> Option<KnownSpec> {
        match spec {
            ResourceSpec::SessionStorage(spec) => Some(KnownSpec::SessionStorage(spec.clone())),
            ResourceSpec::File(spec) => Some(KnownSpec::File(spec.clone())),
            ResourceSpec::SystemdUnit(spec) => Some(KnownSpec::SystemdUnit(spec.clone())),
            ResourceSpec::Container(spec) => Some(KnownSpec::Container(spec.clone())),
            ResourceSpec::Unknown { .. } => None,
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            KnownSpec::SessionStorage(_) => Kind::SessionStorage,
            KnownSpec::File(_) => Kind::File,
            KnownSpec::SystemdUnit(_) => Kind::SystemdUnit,
            KnownSpec::Container(_) => Kind::Container,
        }
    }
}

impl From<KnownSpec> for ResourceSpec {
    fn from(spec: KnownSpec) -> Self {
        match spec {
            KnownSpec::SessionStorage(spec) => ResourceSpec::SessionStorage(spec),
            KnownSpec::File(spec) => ResourceSpec::File(spec),
            KnownSpec::SystemdUnit(spec) => ResourceSpec::SystemdUnit(spec),
            KnownSpec::Container(spec) => ResourceSpec::Container(spec),
        }
    }
}

/// One kind's reconciler. The kind declares its spec, the ownership record its applies return
/// (inside [`Owned`]) and its delete is given back, and its error type.
pub trait KindReconciler: Send + Sync {
    type Spec: Sync;
    type Owned: Sync;
    type Error: Into<ReconcileError>;

    /// This kind's record inside an ownership record; `None` for another kind's.
    fn owned(owned: &Owned) -> Option<&Self::Owned>;

    /// Makes the resource match its spec (see the module's guarantees).
    fn apply(
        &self,
        target: Target<'_, Self::Spec, Self::Owned>,
    ) -> impl Future<Output = Result<Applied, Self::Error>> + Send;

    /// Removes what `owned` says the agent made for resource `id`.
    fn delete(
        &self,
        id: &ResourceId,
        owned: &Self::Owned,
    ) -> impl Future<Output = Result<Deleted, Self::Error>> + Send;

    /// When to try again after a failed apply. The default is the engine's backoff; a kind that
    /// knows when a retry makes sense (a container's restart delay) says so here.
    fn error_policy(_error: &Self::Error) -> Retry {
        Retry::Backoff
    }
}

/// When the engine looks at a failed resource again (kube-rs's `Action`, for failures: after a
/// success the next resync is the only schedule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// After the engine's backoff for the resource's consecutive failures (`backoff.rs`).
    Backoff,
    /// After this long, counted from the failure.
    After(Duration),
}

/// What one apply ended with, and when to try again if it failed.
#[derive(Debug)]
pub struct Outcome {
    pub result: Result<Applied, ReconcileError>,
    /// Read only when `result` is an error.
    pub retry: Retry,
}

impl From<Result<Applied, ReconcileError>> for Outcome {
    /// An outcome whose failure, if any, waits out the engine's backoff.
    fn from(result: Result<Applied, ReconcileError>) -> Self {
        Outcome {
            result,
            retry: Retry::Backoff,
        }
    }
}

/// What one apply of a kind is given.
#[derive(Debug)]
pub struct Target<'a, S, O> {
    pub id: &'a ResourceId,
    pub spec: &'a S,
    /// The spec hash of `spec`, as the engine cached it.
    pub spec_hash: &'a str,
    /// What the last successful apply of this resource id recorded, if it was of this kind.
    pub previous: Option<Previous<'a, O>>,
}

/// The record of the last successful apply of a resource: its spec hash and what it owns.
#[derive(Debug)]
pub struct Previous<'a, O> {
    pub spec_hash: &'a str,
    pub owned: &'a O,
}

impl<S, O> Clone for Target<'_, S, O> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<S, O> Copy for Target<'_, S, O> {}
impl<O> Clone for Previous<'_, O> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<O> Copy for Previous<'_, O> {}

/// The dispatch of an apply to one kind's reconciler, the same for every kind.
async fn apply_kind<K: KindReconciler>(
    reconciler: &K,
    id: &ResourceId,
    spec: &K::Spec,
    spec_hash: &str,
    previous: Option<&OwnershipRecord>,
) -> Outcome {
    let previous = previous.and_then(|record| {
        K::owned(&record.owned).map(|owned| Previous {
            spec_hash: &record.spec_hash,
            owned,
        })
    });
    let target = Target {
        id,
        spec,
        spec_hash,
        previous,
    };
    match reconciler.apply(target).await {
        Ok(applied) => Ok(applied).into(),
        Err(error) => Outcome {
            retry: K::error_policy(&error),
            result: Err(error.into()),
        },
    }
}

/// The dispatch of a delete to one kind's reconciler, the same for every kind.
async fn delete_kind<K: KindReconciler>(
    reconciler: &K,
    id: &ResourceId,
    owned: &K::Owned,
) -> Result<Deleted, ReconcileError> {
    reconciler.delete(id, owned).await.map_err(Into::into)
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
    async fn apply(&self, desired: &Desired) -> Outcome {
        let (id, hash, previous) = (&desired.id, &desired.spec_hash, desired.previous.as_ref());
        match &desired.spec {
            KnownSpec::File(spec) => apply_kind(&self.file, id, spec, hash, previous).await,
            KnownSpec::SessionStorage(spec) => {
                apply_kind(&self.session_storage, id, spec, hash, previous).await
            }
            KnownSpec::SystemdUnit(spec) => {
                apply_kind(&self.systemd_unit, id, spec, hash, previous).await
            }
            KnownSpec::Container(spec) => {
                apply_kind(&self.container, id, spec, hash, previous).await
            }
        }
    }

    async fn delete(
        &self,
        id: &ResourceId,
        record: &OwnershipRecord,
    ) -> Result<Deleted, ReconcileError> {
        match &record.owned {
            Owned::File(owned) => delete_kind(&self.file, id, owned).await,
            Owned::SystemdUnit(owned) => delete_kind(&self.systemd_unit, id, owned).await,
            Owned::Container(owned) => delete_kind(&self.container, id, owned).await,
            Owned::SessionStorage(owned) => delete_kind(&self.session_storage, id, owned).await,
        }
    }

    async fn apply_all(
        self: Arc<Self>,
        items: Vec<Arc<Desired>>,
        limits: ApplyLimits,
        shutdown: ShutdownSignal,
    ) -> Vec<(Arc<Desired>, Outcome)> {
        // File resources are scheduled by the File reconciler; every other kind one by one.
        let (files, others): (Vec<_>, Vec<_>) = items
            .into_iter()
            .partition(|desired| matches!(desired.spec, KnownSpec::File(_)));
        let mut done = Vec::with_capacity(files.len() + others.len());
        if !files.is_empty() {
            done.extend(self.file.apply_all(files, limits, &shutdown).await);
        }
        if !others.is_empty() {
            done.extend(bounded::apply_each(self, others, limits, shutdown).await);
        }
        done
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
