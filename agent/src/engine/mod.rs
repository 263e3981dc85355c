//! The reconcile engine: level-triggered passes that diff desired against owned state, and the
//! loop that runs them on manifest changes, on resync and when a backoff runs out.
//!
//! A pass first deletes what is owned but no longer desired (kinds in reverse order: Container,
//! SystemdUnit, File, SessionStorage), then applies every desired resource (SessionStorage, File,
//! SystemdUnit, Container). Within one kind, resources run concurrently up to a bound; a kind
//! starts when the previous one is done. Every apply is independent: a failure only sets that
//! resource's state and backoff, and a hung apply is cut off by a timeout. A kind whose reconciler
//! takes batches (File) is handed its resources a batch at a time, still with a timeout per
//! resource (see [`apply_batch_timed`]).
//!
//! Rollback: after a complete pass in which every resource is Ready, that manifest is the
//! known-good one. A new generation with a `rollout` policy gets a wall-clock deadline when it is
//! accepted; if it is not all Ready by then, the engine either converges back to the known-good
//! manifest (`Rollback`) or stays and reports it (`Hold`). The generation that missed its
//! deadline is not tried again until another generation arrives.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fleetlet_manifests::signature::{self, PublicKey, SignatureError};
use fleetlet_manifests::{
    AgentInfo, AgentManifest, AgentStatus, ErrorReason, Kind, OnFailure, Phase, Resource,
    ResourceError, ResourceId, ResourceStatus,
};
use time::OffsetDateTime;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::reconcile::{Applied, BatchResults, Change, Deleted, Reconcile, ReconcileError};
use crate::shutdown::ShutdownSignal;
use crate::status::{self, Connectivity, Rejection, StatusInputs};
use crate::store::{
    DeadlineOutcome, EventKind, MissedDeadline, NewEvent, OwnershipRecord, ResourceState,
    RolloutState, RolloutTrial, Store, StoreError, StoreFault,
};

/// While the store cannot save, what waits is retried this soon after the fault is seen, the
/// delay doubling up to [`STORE_RETRY_MAX`] (besides the flush at the end of every pass).
const STORE_RETRY_MIN: Duration = Duration::from_secs(1);
const STORE_RETRY_MAX: Duration = Duration::from_secs(30);

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
    manifest: Option<AgentManifest>,
    manifest_generation: u64,
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
        let manifest = store.load_manifest()?;
        let manifest_generation = manifest.as_ref().and_then(|m| m.generation).unwrap_or(0);
        let last_report = store.load_status()?;
        let rollout = store.load_rollout()?;
        let mut engine = Self {
            store,
            reconcilers,
            settings,
            agent,
            manifest,
            manifest_generation,
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
        self.manifest.as_ref()
    }

    pub fn manifest_generation(&self) -> u64 {
        self.manifest_generation
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
    fn desired_manifest(&self) -> Option<&AgentManifest> {
        if let Some(missed) = self.current_miss()
            && let DeadlineOutcome::RolledBack { .. } = missed.outcome
            && let Some(good) = &self.rollout.known_good
        {
            return Some(good);
        }
        self.manifest.as_ref()
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
        self.rollout
            .missed
            .as_ref()
            .filter(|missed| missed.generation == self.manifest_generation)
    }

    /// Takes a new desired state. A manifest for another agent is refused.
    pub fn accept(&mut self, update: DesiredUpdate) -> Result<(), EngineError> {
        match update {
            DesiredUpdate::Manifest(manifest) if manifest.agent_id != *self.store.agent_id() => {
                let why = format!(
                    "manifest is for agent {}, not {}",
                    manifest.agent_id,
                    self.store.agent_id()
                );
                self.reject(Rejection::invalid(why))
            }
            // Checked here, where every source of manifests (watch, --once, manifest file) meets,
            // so none can bypass it. The last accepted manifest stays in force.
            DesiredUpdate::Manifest(manifest)
                if let Err(error) = self.check_signature(&manifest) =>
            {
                let generation = manifest.generation.unwrap_or(0);
                tracing::error!(generation, %error, "refusing a manifest whose signature does not verify");
                self.reject(Rejection::signature_invalid(format!(
                    "generation {generation}: {error}"
                )))
            }
            DesiredUpdate::Manifest(manifest) => {
                let generation = manifest.generation.unwrap_or(0);
                let unchanged = self.manifest.as_ref() == Some(&manifest);
                self.manifest_rejected = None;
                if !unchanged {
                    self.start_rollout(&manifest)?;
                    self.store.save_manifest(&manifest)?;
                    self.record_event(
                        EventKind::ManifestAccepted,
                        None,
                        format!(
                            "generation {generation} with {} resources",
                            manifest.resources.len()
                        ),
                    )?;
                    self.manifest_generation = generation;
                    self.manifest = Some(manifest);
                    self.refresh_spec_hashes();
                }
                Ok(())
            }
            DesiredUpdate::Rejected(why) => self.reject(Rejection::invalid(why)),
        }
    }

    /// The rollout bookkeeping of a newly accepted manifest. A missed deadline stays while the
    /// same generation comes again (a restart, a re-poll), so it is not retried; any other
    /// generation clears it. A manifest with a policy starts its deadline now, unless it is the
    /// generation already on trial, whose deadline stands.
    fn start_rollout(&mut self, manifest: &AgentManifest) -> Result<(), EngineError> {
        let generation = manifest.generation.unwrap_or(0);
        let mut rollout = self.rollout.clone();
        if rollout
            .missed
            .as_ref()
            .is_some_and(|missed| missed.generation != generation)
        {
            rollout.missed = None;
        }
        let missed_before = rollout.missed.is_some();
        rollout.trial = match (manifest.rollout, rollout.trial.take()) {
            (Some(_), Some(trial)) if trial.generation == generation => Some(trial),
            (Some(policy), _) if !missed_before => Some(RolloutTrial {
                generation,
                deadline: self.settings.clock.now()
                    + time::Duration::seconds(i64::from(policy.progress_deadline_seconds)),
                policy,
            }),
            _ => None,
        };
        self.save_rollout(rollout)
    }

    fn save_rollout(&mut self, rollout: RolloutState) -> Result<(), EngineError> {
        if rollout != self.rollout {
            self.store.save_rollout(&rollout)?;
            self.rollout = rollout;
            self.refresh_spec_hashes();
        }
        Ok(())
    }

    /// Decides what happens to the generation on trial once its deadline has passed: roll back
    /// to the known-good manifest, or stay on it (policy `Hold`, or nothing to go back to).
    fn check_deadline(&mut self, now: OffsetDateTime) -> Result<(), EngineError> {
        let Some(trial) = self.rollout.trial.clone() else {
            return Ok(());
        };
        if now < trial.deadline {
            return Ok(());
        }
        let mut rollout = self.rollout.clone();
        rollout.trial = None;
        let manifest = match &self.manifest {
            Some(manifest) if trial.generation == self.manifest_generation => manifest.clone(),
            // A trial of a generation no longer current has nothing left to decide.
            _ => return self.save_rollout(rollout),
        };
        let states = self.store.resource_states()?;
        let not_ready = not_ready_resources(&manifest, None, &states);
        if not_ready.is_empty() {
            // Ready by the deadline, only no complete pass has said so yet (one was cut short).
            return self.note_all_ready(&manifest, None, &states);
        }
        let summary = format!(
            "generation {} was not Ready within {}s ({})",
            trial.generation, trial.policy.progress_deadline_seconds, not_ready
        );
        // The known-good manifest was verified when it was accepted; it is checked again so
        // that a key removed since then cannot be rolled back to.
        let good = rollout.known_good.as_ref().filter(|good| {
            good.generation != manifest.generation && self.check_signature(good).is_ok()
        });
        let outcome = match (trial.policy.on_failure, good) {
            (OnFailure::Rollback, Some(good)) => DeadlineOutcome::RolledBack {
                to_generation: good.generation.unwrap_or(0),
            },
            (OnFailure::Rollback, None) => DeadlineOutcome::NoKnownGoodGeneration,
            (OnFailure::Hold, _) => DeadlineOutcome::Held,
        };
        let missed = MissedDeadline {
            generation: trial.generation,
            outcome,
            summary,
        };
        let (kind, message) = match outcome {
            DeadlineOutcome::RolledBack { .. } => (EventKind::RolledBack, missed.message()),
            _ => (EventKind::ProgressDeadlineExceeded, missed.message()),
        };
        tracing::warn!(generation = trial.generation, "{message}");
        // The decision is stored before it is logged: losing the event is better than deciding
        // twice.
        rollout.missed = Some(missed);
        self.save_rollout(rollout)?;
        self.record_event(kind, None, message)
    }

    /// After a complete pass: a manifest whose every resource is Ready becomes the known-good
    /// one, ends its trial, and clears a deadline it missed but stayed on.
    /// `spec_hashes` are those of `manifest`'s resources if known; `states` are the stored ones.
    fn note_all_ready(
        &mut self,
        manifest: &AgentManifest,
        spec_hashes: Option<&[String]>,
        states: &BTreeMap<ResourceId, ResourceState>,
    ) -> Result<(), EngineError> {
        if !not_ready_resources(manifest, spec_hashes, states).is_empty() {
            return Ok(());
        }
        let generation = manifest.generation.unwrap_or(0);
        let trial_ends = self
            .rollout
            .trial
            .as_ref()
            .is_some_and(|trial| trial.generation == generation);
        let miss_ends = self.rollout.missed.as_ref().is_some_and(|missed| {
            missed.generation == generation
                && !matches!(missed.outcome, DeadlineOutcome::RolledBack { .. })
        });
        // The usual case, every resync of a settled device: nothing to copy or write.
        if !trial_ends && !miss_ends && self.rollout.known_good.as_ref() == Some(manifest) {
            return Ok(());
        }
        let mut rollout = self.rollout.clone();
        rollout.known_good = Some(manifest.clone());
        if trial_ends {
            rollout.trial = None;
        }
        if miss_ends {
            rollout.missed = None;
        }
        self.save_rollout(rollout)
    }

    /// Without trusted keys every manifest passes (the documented development default).
    fn check_signature(&self, manifest: &AgentManifest) -> Result<(), SignatureError> {
        if self.settings.trusted_keys.is_empty() {
            return Ok(());
        }
        signature::verify(manifest, &self.settings.trusted_keys)
    }

    fn reject(&mut self, rejection: Rejection) -> Result<(), EngineError> {
        if self.manifest_rejected.as_ref() != Some(&rejection) {
            self.record_event(
                EventKind::ManifestRejected,
                None,
                format!("{}: {}", rejection.reason, rejection.message),
            )?;
            self.manifest_rejected = Some(rejection);
        }
        Ok(())
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

    /// One full pass over the current manifest (or, with none, over what is owned: nothing is
    /// deleted before a first manifest arrives, since an empty desired state is not the same as
    /// an unknown one).
    pub async fn pass(&mut self, shutdown: &ShutdownSignal) -> Result<PassOutcome, EngineError> {
        let now = self.settings.clock.now();
        // At the start, so that the pass that runs at a deadline (the run loop wakes up for it,
        // and `--once` runs just one) already converges to where the decision points.
        self.check_deadline(now)?;
        let Some(manifest) = self.desired_manifest().cloned() else {
            return Ok(PassOutcome {
                complete: true,
                next_retry: None,
            });
        };
        let generation = manifest.generation.unwrap_or(0);
        let spec_hashes = self.desired_spec_hashes();
        // `states` is kept equal to what the store holds through the pass, and `records` for
        // resources not desired (all a pass changes of theirs is removing them), so that neither
        // is read again.
        let mut records = self.store.ownership_records()?;
        let mut states = self.store.resource_states()?;
        let desired: BTreeMap<&ResourceId, (&Resource, &str)> = manifest
            .resources
            .iter()
            .zip(spec_hashes.iter())
            .map(|(r, hash)| (&r.id, (r, hash.as_str())))
            .collect();
        let mut events: Vec<PendingEvent> = Vec::new();
        let mut complete = true;

        // Deletes first, in reverse kind order: what depends on others goes away first, and a
        // path or name freed by one resource can be taken by another in the same pass.
        for kind in Kind::ALL.into_iter().rev() {
            let batch: Vec<(ResourceId, OwnershipRecord)> = records
                .iter()
                .filter(|(id, record)| {
                    record.kind == kind
                        && desired
                            .get(id)
                            .is_none_or(|(r, _)| r.spec.known_kind() != Some(kind))
                        && !(self.failed_deletes.contains(*id)
                            && backing_off(states.get(*id), None, now))
                })
                .map(|(id, record)| (id.clone(), record.clone()))
                .collect();
            if shutdown.is_triggered() {
                complete = false;
                break;
            }
            let results = self.run_deletes(batch, shutdown).await;
            for (id, record, result) in results {
                let previous = states.remove(&id);
                match result {
                    Ok(deleted) => {
                        self.failed_deletes.remove(&id);
                        self.store.remove_ownership_record(&id)?;
                        records.remove(&id);
                        self.store.remove_resource_state(&id)?;
                        let (event, message) = match deleted {
                            Deleted::Removed => (EventKind::ResourceDeleted, "removed".to_owned()),
                            Deleted::AlreadyGone => {
                                (EventKind::ResourceDeleted, "was already gone".to_owned())
                            }
                            Deleted::Released { why } => (EventKind::ResourceReleased, why),
                        };
                        events.push((event, id, message));
                    }
                    Err(error) => {
                        self.failed_deletes.insert(id.clone());
                        let state = self.failed_state(
                            previous.as_ref(),
                            record.kind.as_str(),
                            Some(record.spec_hash.clone()),
                            record.generation,
                            &error,
                            self.settings.clock.now(),
                        );
                        self.note_failure(&id, previous.as_ref(), &state, &error, &mut events);
                        self.store.save_resource_state(&id, &state)?;
                        states.insert(id, state);
                    }
                }
            }
        }

        // What no record covers but the reconcilers still find of resources gone from the
        // manifest (a session directory whose first apply failed) is collected after the deletes.
        if complete {
            for (id, message) in self.reconcilers.collect_garbage(&manifest.resources).await {
                events.push((EventKind::ResourceDeleted, id, message));
            }
        }

        // Then applies, in kind order.
        for kind in Kind::ALL {
            if shutdown.is_triggered() {
                complete = false;
                break;
            }
            let batch: Vec<(Resource, Option<OwnershipRecord>)> = manifest
                .resources
                .iter()
                .zip(spec_hashes.iter())
                .filter(|(r, _)| r.spec.known_kind() == Some(kind))
                .filter(|(r, hash)| !backing_off(states.get(&r.id), Some(hash), now))
                .map(|(r, _)| {
                    let record = records.get(&r.id).filter(|rec| rec.kind == kind).cloned();
                    (r.clone(), record)
                })
                .collect();
            let results = self.run_applies(kind, batch, shutdown).await;
            for (resource, result) in results {
                let id = resource.id.clone();
                let spec_hash = match desired.get(&id) {
                    Some((desired, hash)) if desired.spec == resource.spec => (*hash).to_owned(),
                    _ => resource.spec_hash(),
                };
                // Taken out: the new state goes back in below.
                let previous = states.remove(&id);
                let state = match result {
                    Ok(applied) => {
                        self.store.save_ownership_record(
                            &id,
                            &OwnershipRecord {
                                kind,
                                spec_hash: spec_hash.clone(),
                                generation,
                                owned: applied.owned.clone(),
                            },
                        )?;
                        if let Some(event) = change_event(&applied) {
                            events.push((event.0, id.clone(), event.1));
                        }
                        let state = ResourceState {
                            status: ResourceStatus {
                                kind: resource.kind().to_owned(),
                                phase: Phase::Ready,
                                since: since(previous.as_ref(), Phase::Ready, now),
                                generation,
                                spec_hash: Some(spec_hash),
                                error: None,
                                retry_after: None,
                                details: applied.details,
                                repairs: status::repairs_after(
                                    previous.as_ref(),
                                    &applied.change,
                                    self.settings.clock.now(),
                                ),
                            },
                            consecutive_failures: 0,
                        };
                        if previous
                            .as_ref()
                            .is_some_and(|p| p.status.phase != Phase::Ready)
                        {
                            events.push((
                                EventKind::ResourcePhaseChanged,
                                id.clone(),
                                "phase is now Ready".into(),
                            ));
                        }
                        state
                    }
                    Err(error) => {
                        let state = self.failed_state(
                            previous.as_ref(),
                            resource.kind(),
                            Some(spec_hash),
                            generation,
                            &error,
                            self.settings.clock.now(),
                        );
                        self.note_failure(&id, previous.as_ref(), &state, &error, &mut events);
                        state
                    }
                };
                self.store.save_resource_state(&id, &state)?;
                states.insert(id, state);
            }
        }

        // Kinds this build does not know: reported, never touched.
        for (resource, spec_hash) in manifest
            .resources
            .iter()
            .zip(spec_hashes.iter())
            .filter(|(r, _)| r.spec.known_kind().is_none())
        {
            let previous = states.get(&resource.id);
            let state = ResourceState {
                status: ResourceStatus {
                    kind: resource.kind().to_owned(),
                    phase: Phase::Unsupported,
                    since: since(previous, Phase::Unsupported, now),
                    generation,
                    spec_hash: Some(spec_hash.clone()),
                    error: Some(ResourceError {
                        reason: ErrorReason::UnsupportedKind,
                        message: format!(
                            "kind {} is not known to this agent build (version {})",
                            resource.kind(),
                            self.agent.version
                        ),
                    }),
                    retry_after: None,
                    details: None,
                    repairs: previous.and_then(|p| p.status.repairs.clone()),
                },
                consecutive_failures: 0,
            };
            if previous.is_none_or(|p| p.status.phase != Phase::Unsupported) {
                events.push((
                    EventKind::ResourcePhaseChanged,
                    resource.id.clone(),
                    "phase is now Unsupported".into(),
                ));
            }
            self.store.save_resource_state(&resource.id, &state)?;
            states.insert(resource.id.clone(), state);
        }

        // States of resources neither desired nor owned (one that failed before it was ever
        // applied, then left the manifest) have nothing left to report.
        let orphans: Vec<ResourceId> = states
            .keys()
            .filter(|id| !desired.contains_key(id) && !records.contains_key(*id))
            .cloned()
            .collect();
        for id in orphans {
            self.store.remove_resource_state(&id)?;
            states.remove(&id);
        }

        for (kind, id, message) in events {
            self.record_event(kind, Some(id), message)?;
        }
        if complete {
            self.observed_generation = generation;
            self.note_all_ready(&manifest, Some(&spec_hashes), &states)?;
        }
        let next_retry = states.values().filter_map(|s| s.status.retry_after).min();
        self.store.flush()?;
        Ok(PassOutcome {
            complete,
            next_retry,
        })
    }

    /// The state of a resource whose apply or delete failed at `failed_at`. The backoff counts
    /// from the failure, not from the start of its pass: an apply that took a minute to fail
    /// (a container pull, a unit's start timeout) must not have spent its own delay.
    fn failed_state(
        &self,
        previous: Option<&ResourceState>,
        kind: &str,
        spec_hash: Option<String>,
        generation: u64,
        error: &ReconcileError,
        failed_at: OffsetDateTime,
    ) -> ResourceState {
        // Failures count up only while the spec stays the same: a new spec gets a fresh start.
        let failures = previous
            .filter(|p| p.status.spec_hash == spec_hash)
            .map_or(0, |p| p.consecutive_failures)
            .saturating_add(1);
        // A reconciler may know when a retry makes sense (a container's restart backoff).
        let delay = error
            .retry_in()
            .unwrap_or_else(|| self.settings.backoff.delay(failures));
        ResourceState {
            status: ResourceStatus {
                kind: kind.to_owned(),
                phase: Phase::Failed,
                since: since(previous, Phase::Failed, failed_at),
                generation,
                spec_hash,
                error: Some(ResourceError {
                    reason: error.reason(),
                    message: error.to_string(),
                }),
                retry_after: Some(failed_at + delay),
                details: error
                    .details()
                    .or_else(|| previous.and_then(|p| p.status.details.clone())),
                repairs: previous.and_then(|p| p.status.repairs.clone()),
            },
            consecutive_failures: failures,
        }
    }

    /// Records a failure event when the resource was not already failing for the same reason,
    /// so that a resource stuck in backoff does not flood the log.
    fn note_failure(
        &self,
        id: &ResourceId,
        previous: Option<&ResourceState>,
        state: &ResourceState,
        error: &ReconcileError,
        events: &mut Vec<PendingEvent>,
    ) {
        let same_as_before = previous.is_some_and(|p| {
            p.status.phase == Phase::Failed
                && p.status.error.as_ref().map(|e| &e.reason)
                    == state.status.error.as_ref().map(|e| &e.reason)
        });
        if same_as_before {
            tracing::debug!(resource = %id, %error, failures = state.consecutive_failures, "still failing");
        } else {
            events.push((EventKind::ResourceFailed, id.clone(), error.to_string()));
        }
    }

    async fn run_applies(
        &self,
        kind: Kind,
        batch: Vec<(Resource, Option<OwnershipRecord>)>,
        shutdown: &ShutdownSignal,
    ) -> Vec<(Resource, Result<Applied, ReconcileError>)> {
        let timeout = self.settings.apply_timeout;
        let most = self.reconcilers.batch_size(kind);
        if most > 1 {
            return self.run_apply_batches(batch, most, shutdown).await;
        }
        run_bounded(
            batch,
            self.settings.concurrency,
            shutdown,
            |(resource, _)| resource.id.to_string(),
            |(resource, record)| {
                let reconcilers = Arc::clone(&self.reconcilers);
                async move {
                    let result = tokio::time::timeout(
                        timeout,
                        reconcilers.apply(&resource, record.as_ref()),
                    )
                    .await
                    .unwrap_or_else(|_| {
                        Err(ReconcileError::TimedOut {
                            id: resource.id.clone(),
                            timeout,
                        })
                    });
                    (resource, result)
                }
            },
            |(resource, _), message| {
                let id = resource.id.clone();
                (resource, Err(ReconcileError::Crashed { id, message }))
            },
        )
        .await
    }

    /// Applies in batches of at most `most` resources, `concurrency` batches at a time. A batch
    /// is no larger than an even share of the work, so that a few resources (a first apply,
    /// bound by fsync) still run side by side as they would one by one.
    async fn run_apply_batches(
        &self,
        batch: Vec<(Resource, Option<OwnershipRecord>)>,
        most: usize,
        shutdown: &ShutdownSignal,
    ) -> Vec<(Resource, Result<Applied, ReconcileError>)> {
        let concurrency = self.settings.concurrency.max(1);
        let size = batch.len().div_ceil(concurrency).clamp(1, most);
        let mut items = batch.into_iter();
        // Shared, not copied, with `run_bounded`, which keeps each batch for a crash report.
        let batches: Vec<Arc<Vec<_>>> = std::iter::from_fn(|| {
            let next: Vec<_> = items.by_ref().take(size).collect();
            (!next.is_empty()).then(|| Arc::new(next))
        })
        .collect();
        let timeout = self.settings.apply_timeout;
        let results = run_bounded(
            batches,
            concurrency,
            shutdown,
            |batch| {
                let ids: Vec<&str> = batch.iter().map(|(r, _)| r.id.as_str()).collect();
                format!("batch of {}", ids.join(", "))
            },
            |batch| {
                let reconcilers = Arc::clone(&self.reconcilers);
                let shutdown = shutdown.clone();
                apply_batch_timed(reconcilers, batch, timeout, shutdown)
            },
            |batch, message| {
                batch
                    .iter()
                    .map(|(resource, _)| {
                        let id = resource.id.clone();
                        let message = message.clone();
                        (
                            resource.clone(),
                            Err(ReconcileError::Crashed { id, message }),
                        )
                    })
                    .collect()
            },
        )
        .await;
        results.into_iter().flatten().collect()
    }

    async fn run_deletes(
        &self,
        batch: Vec<(ResourceId, OwnershipRecord)>,
        shutdown: &ShutdownSignal,
    ) -> Vec<(ResourceId, OwnershipRecord, Result<Deleted, ReconcileError>)> {
        let timeout = self.settings.apply_timeout;
        run_bounded(
            batch,
            self.settings.concurrency,
            shutdown,
            |(id, _)| id.to_string(),
            |(id, record)| {
                let reconcilers = Arc::clone(&self.reconcilers);
                async move {
                    let result = tokio::time::timeout(timeout, reconcilers.delete(&id, &record))
                        .await
                        .unwrap_or_else(|_| {
                            Err(ReconcileError::TimedOut {
                                id: id.clone(),
                                timeout,
                            })
                        });
                    (id, record, result)
                }
            },
            |(id, record), message| {
                let crashed = ReconcileError::Crashed {
                    id: id.clone(),
                    message,
                };
                (id, record, Err(crashed))
            },
        )
        .await
    }

    /// The status as of now. While the store cannot save, `Degraded` says so.
    pub fn build_status(&self, connectivity: &Connectivity) -> Result<AgentStatus, EngineError> {
        let states = self.store.resource_states()?;
        let mut status = status::build_status(&StatusInputs {
            agent_id: self.store.agent_id(),
            agent: &self.agent,
            manifest: self.desired_manifest(),
            missed_deadline: self.current_miss(),
            manifest_generation: self.manifest_generation,
            observed_generation: self.observed_generation,
            spec_hashes: Some(&self.desired_spec_hashes()),
            states: &states,
            connectivity,
            manifest_rejected: self.manifest_rejected.as_ref(),
            previous: self.last_report.as_ref(),
            now: self.settings.clock.now(),
        });
        if let Some(fault) = self.store.fault() {
            status::note_store_fault(&mut status, &fault, self.last_report.as_ref());
        }
        Ok(status)
    }

    /// What a status built now would be built from; `None` when the store cannot say whether
    /// its states changed.
    fn status_basis(&self, connectivity: &Connectivity) -> Option<StatusBasis> {
        Some(StatusBasis {
            states_revision: self.store.states_revision()?,
            desired_revision: self.desired_revision,
            manifest_generation: self.manifest_generation,
            observed_generation: self.observed_generation,
            connectivity: connectivity.clone(),
            manifest_rejected: self.manifest_rejected.clone(),
            store_fault: self.store.fault(),
        })
    }

    /// Builds the status and, when it says something new (or `heartbeat` is set), gives it the
    /// next `reportSeq`, stores it and queues it for the manager. Returns the queued status.
    ///
    /// A status built from the same basis as the last one, which had no Pending resource, would
    /// have the same content as the last report (its conditions keep their transition times), so
    /// it is not built again: that is every pass of a settled device.
    pub fn publish_status(
        &mut self,
        connectivity: &Connectivity,
        heartbeat: bool,
    ) -> Result<Option<AgentStatus>, EngineError> {
        // Read before the states are, so that a change in between only causes another build.
        let basis = self.status_basis(connectivity);
        if !heartbeat && self.last_report.is_some() && basis.is_some() && basis == self.status_basis
        {
            return Ok(None);
        }
        self.status_basis = None;
        let mut status = self.build_status(connectivity)?;
        let reusable = basis.filter(|_| {
            !status
                .resources
                .values()
                .any(|resource| resource.phase == Phase::Pending)
        });
        let changed = self
            .last_report
            .as_ref()
            .is_none_or(|last| !status::same_content(last, &status));
        let repaired = self
            .last_report
            .as_ref()
            .is_some_and(|last| !status::same_repairs(last, &status));
        let now = self.settings.clock.now();
        let news = changed || (repaired && status::repairs_due(self.repairs_reported_at, now));
        if !news && !heartbeat {
            // A repair count held back is looked at again by the next pass.
            self.status_basis = reusable.filter(|_| !repaired);
            return Ok(None);
        }
        if repaired {
            self.repairs_reported_at = Some(now);
        }
        let seq = status::next_report_seq(self.store.last_report_seq()?, status.observed_at);
        self.store.save_last_report_seq(seq)?;
        status.report_seq = seq;
        self.store.save_status(&status)?;
        self.store.enqueue_report(&status)?;
        self.last_report = Some(status.clone());
        self.status_basis = reusable;
        Ok(Some(status))
    }

    /// Runs passes until shutdown: on start, on every desired-state update, every resync
    /// interval, and when a failed resource's backoff runs out. Statuses are published after
    /// every pass, when connectivity changes, and as a heartbeat.
    pub async fn run(
        mut self,
        mut updates: mpsc::Receiver<DesiredUpdate>,
        mut connectivity: watch::Receiver<Connectivity>,
        report_ready: Arc<Notify>,
        shutdown: ShutdownSignal,
    ) -> Result<(), EngineError> {
        let mut next_pass = Instant::now();
        let mut next_heartbeat = Instant::now() + self.settings.report_interval;
        let mut updates_open = true;
        let mut connectivity_open = true;
        // While the store cannot save: when to try again, and the delay after that.
        let mut store_retry: Option<(Instant, Duration)> = None;
        loop {
            if shutdown.is_triggered() {
                break;
            }
            store_retry = match (self.store.fault(), store_retry) {
                (None, _) => None,
                (Some(_), None) => Some((Instant::now() + STORE_RETRY_MIN, STORE_RETRY_MIN)),
                (Some(_), Some(retry)) => Some(retry),
            };
            if Instant::now() >= next_pass {
                next_pass = Instant::now() + self.settings.resync_interval;
                let started = Instant::now();
                let passed = self.pass(&shutdown).await;
                // A store that cannot save no longer stops the pass (`ResilientStore`): it counts.
                let failed = passed.is_err() || self.store.fault().is_some();
                match passed {
                    Ok(outcome) => {
                        // The next pass comes no later than a retry or the rollout deadline, so a
                        // rollback happens at the deadline, not up to a resync after it.
                        for at in [outcome.next_retry, self.rollout_deadline()]
                            .into_iter()
                            .flatten()
                        {
                            let wait = (at - self.settings.clock.now())
                                .max(time::Duration::ZERO)
                                .unsigned_abs();
                            next_pass = next_pass.min(Instant::now() + wait);
                        }
                    }
                    Err(error) => {
                        tracing::error!(%error, "pass failed; retrying at the next resync")
                    }
                }
                self.publish(&connectivity.borrow().clone(), false, &report_ready);
                if let Some(file) = &mut self.metrics_file {
                    file.after_pass(started.elapsed(), failed, self.last_report.as_ref());
                }
                // The pass's temporary allocations are freed: give their pages back.
                crate::memory::release_free_memory();
            }
            tokio::select! {
                () = shutdown.triggered() => break,
                update = updates.recv(), if updates_open => match update {
                    Some(update) => {
                        if let Err(error) = self.accept(update) {
                            tracing::error!(%error, "could not record the new desired state");
                        }
                        next_pass = Instant::now();
                        self.publish(&connectivity.borrow().clone(), false, &report_ready);
                    }
                    None => updates_open = false,
                },
                changed = connectivity.changed(), if connectivity_open => {
                    if changed.is_ok() {
                        self.publish(&connectivity.borrow_and_update().clone(), false, &report_ready);
                    } else {
                        connectivity_open = false;
                    }
                }
                () = tokio::time::sleep_until(next_pass) => {}
                () = sleep_until_some(store_retry.map(|(at, _)| at)) => {
                    // Whatever waits is written now if the store can take it.
                    if let Err(error) = self.store.flush() {
                        tracing::error!(%error, "could not save to the local store");
                    }
                    store_retry = store_retry.map(|(_, delay)| {
                        let delay = (delay * 2).min(STORE_RETRY_MAX);
                        (Instant::now() + delay, delay)
                    });
                    self.publish(&connectivity.borrow().clone(), false, &report_ready);
                }
                () = tokio::time::sleep_until(next_heartbeat) => {
                    next_heartbeat = Instant::now() + self.settings.report_interval;
                    self.publish(&connectivity.borrow().clone(), true, &report_ready);
                }
            }
        }
        // Last word: the status as the agent leaves it, then everything to durable storage.
        self.publish(&connectivity.borrow().clone(), false, &report_ready);
        self.store.flush()?;
        Ok(())
    }

    fn publish(&mut self, connectivity: &Connectivity, heartbeat: bool, report_ready: &Notify) {
        match self.publish_status(connectivity, heartbeat) {
            Ok(Some(_)) => report_ready.notify_one(),
            Ok(None) => {}
            Err(error) => tracing::error!(%error, "could not publish the status"),
        }
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Whether a resource is waiting out its backoff. A changed spec (`spec_hash` differs from the
/// failed one) is never held back: the new spec may well work.
fn backing_off(
    state: Option<&ResourceState>,
    spec_hash: Option<&str>,
    now: OffsetDateTime,
) -> bool {
    state.is_some_and(|state| {
        state.status.phase == Phase::Failed
            && state.status.retry_after.is_some_and(|at| at > now)
            && spec_hash.is_none_or(|hash| state.status.spec_hash.as_deref() == Some(hash))
    })
}

/// The resources of `manifest` that are not Ready at its current spec, as
/// `web: Failed ImageNotFound, cache: Pending` (at most three named); empty when all are Ready.
/// A kind this build does not know counts as not Ready.
fn not_ready_resources(
    manifest: &AgentManifest,
    spec_hashes: Option<&[String]>,
    states: &BTreeMap<ResourceId, ResourceState>,
) -> String {
    const NAMED: usize = 3;
    let not_ready: Vec<String> = status::with_spec_hashes(manifest, spec_hashes)
        .filter_map(|(resource, spec_hash)| {
            let state = states
                .get(&resource.id)
                .filter(|s| s.status.spec_hash.as_deref() == Some(&*spec_hash));
            match state {
                Some(state) if state.status.phase == Phase::Ready => None,
                Some(state) => Some(match &state.status.error {
                    Some(error) => {
                        format!("{}: {} {}", resource.id, state.status.phase, error.reason)
                    }
                    None => format!("{}: {}", resource.id, state.status.phase),
                }),
                None => Some(format!("{}: {}", resource.id, Phase::Pending)),
            }
        })
        .collect();
    let mut text = not_ready
        .iter()
        .take(NAMED)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if not_ready.len() > NAMED {
        text.push_str(&format!(" and {} more", not_ready.len() - NAMED));
    }
    text
}

/// When the resource entered `phase`: kept from the previous state if it was already there.
fn since(previous: Option<&ResourceState>, phase: Phase, now: OffsetDateTime) -> OffsetDateTime {
    previous
        .filter(|p| p.status.phase == phase)
        .map_or(now, |p| p.status.since)
}

fn change_event(applied: &Applied) -> Option<(EventKind, String)> {
    match &applied.change {
        Change::Unchanged => None,
        Change::Created => Some((EventKind::ResourceCreated, "created".into())),
        Change::Adopted => Some((
            EventKind::ResourceAdopted,
            "an existing object was taken over and made to match its spec".into(),
        )),
        Change::Updated => Some((EventKind::ResourceUpdated, "updated to a new spec".into())),
        Change::Repaired { drift } => Some((
            EventKind::ResourceRepaired,
            format!("drift repaired: {drift}"),
        )),
    }
}

/// Runs one [`Reconcile::apply_batch`] and collects its results, giving every resource a timeout
/// of its own, counted from the result before it, as if it were applied alone. A resource that
/// times out fails with `TimedOut` and one whose apply panicked with `Crashed`; the batch is then
/// given up and the resources after it go on in a new one. After shutdown no new resource
/// starts, and those not started get no result (as outside a batch).
async fn apply_batch_timed<R: Reconcile>(
    reconcilers: Arc<R>,
    batch: Arc<Vec<(Resource, Option<OwnershipRecord>)>>,
    timeout: Duration,
    shutdown: ShutdownSignal,
) -> Vec<(Resource, Result<Applied, ReconcileError>)> {
    // Positions in `batch` of the resources without a result yet, in order.
    let mut waiting: VecDeque<usize> = (0..batch.len()).collect();
    let mut results = Vec::with_capacity(waiting.len());
    while !waiting.is_empty() && !shutdown.is_triggered() {
        let (sender, mut receiver) = mpsc::unbounded_channel();
        let sink = BatchResults::new(sender, shutdown.clone());
        let items: Vec<_> = waiting.iter().map(|&at| batch[at].clone()).collect();
        let reconcilers = Arc::clone(&reconcilers);
        let task = tokio::spawn(async move { reconcilers.apply_batch(items, sink).await });
        loop {
            match tokio::time::timeout(timeout, receiver.recv()).await {
                Ok(Some((resource, result))) => {
                    if let Some(at) = waiting.iter().position(|&at| batch[at].0.id == resource.id) {
                        waiting.remove(at);
                    }
                    results.push((resource, result));
                }
                Ok(None) => {
                    // The batch is over. Left without a result: resources not started because
                    // of shutdown, or the one it stopped at.
                    let stopped = match task.await {
                        Err(join) => Some(join.to_string()),
                        Ok(()) if !shutdown.is_triggered() => {
                            Some("the reconciler stopped before applying it".to_owned())
                        }
                        Ok(()) => None,
                    };
                    if let Some(message) = stopped
                        && let Some(at) = waiting.pop_front()
                    {
                        let resource = batch[at].0.clone();
                        tracing::error!(resource = %resource.id, %message, "reconciler task failed");
                        let id = resource.id.clone();
                        results.push((resource, Err(ReconcileError::Crashed { id, message })));
                    }
                    break;
                }
                Err(_elapsed) => {
                    // Dropping the receiver tells the batch to start nothing more.
                    task.abort();
                    if let Some(at) = waiting.pop_front() {
                        let resource = batch[at].0.clone();
                        let id = resource.id.clone();
                        results.push((resource, Err(ReconcileError::TimedOut { id, timeout })));
                    }
                    break;
                }
            }
        }
    }
    results
}

/// Runs `work` on every item with at most `limit` running at once, in the order given, and
/// returns the results in completion order. After shutdown no new item starts; running ones
/// finish. A panicking task becomes `crashed(item, message)`.
async fn run_bounded<T, O, K, W, F, C>(
    items: Vec<T>,
    limit: usize,
    shutdown: &ShutdownSignal,
    key: K,
    work: W,
    crashed: C,
) -> Vec<O>
where
    T: Clone + Send + 'static,
    O: Send + 'static,
    K: Fn(&T) -> String,
    W: Fn(T) -> F,
    F: std::future::Future<Output = O> + Send + 'static,
    C: Fn(T, String) -> O,
{
    let limit = limit.max(1);
    let mut pending = items.into_iter();
    let mut running: JoinSet<O> = JoinSet::new();
    let mut started: HashMap<tokio::task::Id, T> = HashMap::new();
    let mut results = Vec::new();
    loop {
        while running.len() < limit && !shutdown.is_triggered() {
            let Some(item) = pending.next() else { break };
            let handle = running.spawn(work(item.clone()));
            started.insert(handle.id(), item);
        }
        match running.join_next_with_id().await {
            Some(Ok((task, output))) => {
                started.remove(&task);
                results.push(output);
            }
            Some(Err(join_error)) => {
                if let Some(item) = started.remove(&join_error.id()) {
                    tracing::error!(resource = %key(&item), error = %join_error, "reconciler task failed");
                    results.push(crashed(item, join_error.to_string()));
                }
            }
            None => break,
        }
    }
    results
}

#[cfg(test)]
mod tests;
