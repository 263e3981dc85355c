//! The reconcile engine: level-triggered passes that diff desired against owned state, and the
//! loop that runs them on manifest changes, on resync and when a backoff runs out.
//!
//! A pass first deletes what is owned but no longer desired (kinds in reverse order: Container,
//! SystemdUnit, File, SessionStorage), then applies every desired resource (SessionStorage, File,
//! SystemdUnit, Container). Each kind gets its whole list of resources to apply at once
//! ([`crate::reconcile::Reconcile::apply_all`]) and schedules it within a concurrency bound (how,
//! File's batches included, is the kind's business); a kind starts when the previous one is done.
//! Every apply is independent: a failure only sets that resource's state and backoff, and a hung
//! apply is cut off by a timeout of its own.
//!
//! Rollback: after a complete pass in which every resource is Ready, that manifest is the
//! known-good one. A new generation with a `rollout` policy gets a wall-clock deadline when it is
//! accepted; if it is not all Ready by then, the engine either converges back to the known-good
//! manifest (`Rollback`) or stays and reports it (`Hold`). The generation that missed its
//! deadline is not tried again until another generation arrives.
//!
//! One file per job: [`Engine`] and its public API here; `accept` (taking a manifest: agent id,
//! signature), `pass` (one pass), `concurrency` (the applies and the bounded deletes of one
//! kind), `rollout` (deadlines, rollback, the known-good manifest), `report` (building and
//! publishing the status) and `run` (the loop).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fleetlet_manifests::signature::PublicKey;
use fleetlet_manifests::{AgentInfo, AgentManifest, AgentStatus, Resource, ResourceId};
use time::OffsetDateTime;

use crate::backoff::Backoff;
use crate::reconcile::Reconcile;
use crate::status::{Connectivity, Rejection};
use crate::store::{
    EventKind, MissedDeadline, NewEvent, RolloutState, Store, StoreError, StoreFault,
};

mod accept;
mod concurrency;
mod pass;
mod report;
mod rollout;
mod run;
#[cfg(test)]
mod tests;

/// How the engine runs its passes. Its `Default` (in `config/mod.rs`) is the agent's declared
/// defaults, as the configuration hands them over.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// How many resources of one kind are reconciled at the same time.
    pub concurrency: usize,
    /// An apply or delete taking longer than this fails (and backs off) instead of holding the pass.
    pub apply_timeout: Duration,
    pub backoff: Backoff,
    /// Every resource is observed again at least this often, to repair drift.
    pub resync_interval: Duration,
    /// A report is sent at least this often even when nothing changed.
    pub report_interval: Duration,
    /// With any key here, a manifest must be signed by one of them or it is refused
    /// (`SignatureInvalid`); with none, unsigned manifests are accepted.
    pub trusted_keys: Vec<PublicKey>,
    /// The wall clock that rollout deadlines and backoff are measured on.
    pub clock: Clock,
}

/// Where the engine reads the wall clock. Rollout deadlines are wall-clock times because they
/// must outlive a restart; tests use a manual clock to step past one instead of waiting for it.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    manual: Option<Arc<Mutex<OffsetDateTime>>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self::default()
    }

    /// A clock that stands at `start` and moves only when told to.
    pub fn manual(start: OffsetDateTime) -> Self {
        Self {
            manual: Some(Arc::new(Mutex::new(start))),
        }
    }

    pub fn now(&self) -> OffsetDateTime {
        match &self.manual {
            None => OffsetDateTime::now_utc(),
            Some(at) => *at.lock().unwrap_or_else(PoisonError::into_inner),
        }
    }

    /// Moves a manual clock forward; the system clock ignores it.
    pub fn advance(&self, by: Duration) {
        if let Some(at) = &self.manual {
            let mut at = at.lock().unwrap_or_else(PoisonError::into_inner);
            *at += by;
        }
    }
}

/// Why the engine stopped or a pass could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("local store: {0}")]
    Store(#[from] StoreError),
}

/// A change of desired state, from the manager watch or the manifest file.
#[derive(Debug, Clone)]
pub enum DesiredUpdate {
    /// A valid manifest.
    Manifest(AgentManifest),
    /// The newest manifest was refused; the agent keeps converging to the last accepted one.
    Rejected(String),
}

/// The outcome of one pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PassOutcome {
    /// False when shutdown cut the pass short.
    pub complete: bool,
    /// The earliest moment a failed resource may be retried.
    pub next_retry: Option<OffsetDateTime>,
}

/// The engine: one store, one set of reconcilers, and what it knows about the current manifest.
#[derive(Debug)]
pub struct Engine<R> {
    store: Arc<dyn Store>,
    reconcilers: Arc<R>,
    settings: EngineSettings,
    agent: AgentInfo,
    /// The manifest received last and taken (see [`Engine::accept`]).
    accepted: Option<Accepted>,
    observed_generation: u64,
    manifest_rejected: Option<Rejection>,
    last_report: Option<AgentStatus>,
    rollout: RolloutState,
    /// Resources whose last delete failed: only those wait out a backoff before the next delete.
    /// A resource that failed to *apply* and then left the manifest is deleted at once, like a
    /// changed spec is applied at once (this is what lets a rollback remove a crash-looping
    /// resource of the bad generation without waiting). In memory: after a restart the first
    /// delete is simply tried again.
    failed_deletes: HashSet<ResourceId>,
    /// The spec hash of every resource of [`Engine::desired_manifest`], in order. Hashing a spec
    /// serializes it, so the hashes are computed again only where the desired manifest can
    /// change (a manifest accepted, the rollout state saved), not in every pass and status.
    spec_hashes: Arc<Vec<String>>,
    /// Counts the changes of the desired manifest (each [`Engine::refresh_spec_hashes`]).
    desired_revision: u64,
    /// What the status last built came from, when building it again from the same would give
    /// the same content (see [`Engine::publish_status`]).
    status_basis: Option<StatusBasis>,
    /// The textfile metrics, told after every pass of [`Engine::run`] (FLEETLET_METRICS_FILE).
    metrics_file: Option<crate::metrics_file::MetricsFile>,
    /// When a report last carried a higher repair count (see [`status::REPAIR_REPORT_INTERVAL`]).
    repairs_reported_at: Option<OffsetDateTime>,
}

/// A manifest the engine has taken, with its generation settled once (in [`Accepted::new`]), so
/// that nothing after acceptance asks what a missing generation means.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    pub generation: u64,
    pub manifest: AgentManifest,
}

impl Accepted {
    pub fn new(manifest: AgentManifest) -> Self {
        Self {
            generation: generation_of(&manifest),
            manifest,
        }
    }
}

/// The generation a manifest is taken at: the one place that says what a manifest without one
/// means. The manager client refuses such a manifest and the manifest file numbers its own, so
/// only one handed to the library directly lacks it; it counts as generation 0, as it always
/// has. Also read for the known-good manifest, which the store keeps as it was accepted.
fn generation_of(manifest: &AgentManifest) -> u64 {
    manifest.generation.unwrap_or(0)
}

/// The manifest passes converge to, and its generation.
#[derive(Debug, Clone, Copy)]
struct Desired<'a> {
    generation: u64,
    manifest: &'a AgentManifest,
}

/// Everything a status is built from, except the clock and the previous report (a status with
/// a Pending resource, whose `since` is the clock, is never reused).
#[derive(Debug, Clone, PartialEq)]
struct StatusBasis {
    states_revision: u64,
    desired_revision: u64,
    manifest_generation: u64,
    observed_generation: u64,
    connectivity: Connectivity,
    manifest_rejected: Option<Rejection>,
    store_fault: Option<StoreFault>,
}

/// Events a pass records: the kind, the resource and a message.
type PendingEvent = (EventKind, ResourceId, String);

impl<R: Reconcile> Engine<R> {
    /// An engine over `store`, starting from the manifest the store last accepted (so a device
    /// converges after a reboot without its manager).
    pub fn new(
        store: Arc<dyn Store>,
        reconcilers: Arc<R>,
        settings: EngineSettings,
        agent: AgentInfo,
    ) -> Result<Self, EngineError> {
        let accepted = store.load_manifest()?.map(Accepted::new);
        let last_report = store.load_status()?;
        let rollout = store.load_rollout()?;
        let mut engine = Self {
            store,
            reconcilers,
            settings,
            agent,
            accepted,
            observed_generation: 0,
            manifest_rejected: None,
            last_report,
            rollout,
            failed_deletes: HashSet::new(),
            spec_hashes: Arc::default(),
            desired_revision: 0,
            status_basis: None,
            metrics_file: None,
            repairs_reported_at: None,
        };
        engine.refresh_spec_hashes();
        Ok(engine)
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Writes the textfile metrics after every pass of [`Engine::run`].
    pub fn set_metrics_file(&mut self, file: crate::metrics_file::MetricsFile) {
        self.metrics_file = Some(file);
    }

    pub fn manifest(&self) -> Option<&AgentManifest> {
        self.accepted.as_ref().map(|accepted| &accepted.manifest)
    }

    /// The generation of the manifest received last; 0 before the first one.
    pub fn manifest_generation(&self) -> u64 {
        self.accepted
            .as_ref()
            .map_or(0, |accepted| accepted.generation)
    }

    /// What the engine remembers about rollouts.
    pub fn rollout(&self) -> &RolloutState {
        &self.rollout
    }

    /// When the generation on trial must be all Ready; the run loop wakes up then.
    pub fn rollout_deadline(&self) -> Option<OffsetDateTime> {
        self.rollout.trial.as_ref().map(|trial| trial.deadline)
    }

    /// The manifest passes converge to: the one received last, or the known-good one while that
    /// generation is rolled back.
    fn desired(&self) -> Option<Desired<'_>> {
        rollout::desired(&self.rollout, self.accepted.as_ref())
    }

    fn desired_manifest(&self) -> Option<&AgentManifest> {
        self.desired().map(|desired| desired.manifest)
    }

    /// Computes [`Engine::spec_hashes`] again; called wherever `desired_manifest` may change.
    fn refresh_spec_hashes(&mut self) {
        let hashes = self
            .desired_manifest()
            .map(|manifest| manifest.resources.iter().map(Resource::spec_hash).collect())
            .unwrap_or_default();
        self.spec_hashes = Arc::new(hashes);
        self.desired_revision += 1;
    }

    /// The spec hashes of the desired manifest's resources, in order.
    fn desired_spec_hashes(&self) -> Arc<Vec<String>> {
        #[cfg(debug_assertions)]
        {
            let fresh: Vec<String> = self
                .desired_manifest()
                .map(|manifest| manifest.resources.iter().map(Resource::spec_hash).collect())
                .unwrap_or_default();
            assert_eq!(*self.spec_hashes, fresh, "stale spec hashes");
        }
        Arc::clone(&self.spec_hashes)
    }

    /// The missed deadline of the generation received last, if it missed one.
    fn current_miss(&self) -> Option<&MissedDeadline> {
        rollout::current_miss(&self.rollout, self.manifest_generation())
    }

    fn record_event(
        &self,
        kind: EventKind,
        resource_id: Option<ResourceId>,
        message: String,
    ) -> Result<(), EngineError> {
        match &resource_id {
            Some(id) => tracing::info!(event = %kind, resource = %id, "{message}"),
            None => tracing::info!(event = %kind, "{message}"),
        }
        self.store.append_event(NewEvent {
            kind,
            resource_id,
            message,
        })?;
        Ok(())
    }
}
