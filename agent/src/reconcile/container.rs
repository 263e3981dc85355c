//! The Container reconciler: one container per resource on podman or docker, found by its
//! labels, replaced when its spec changes, and restarted by the agent (not the runtime) when it
//! exits, with exponential backoff between restarts.
//!
//! Ownership: a container is the agent's only if it carries `dev.fleetlet.agent=<agentId>` and
//! `dev.fleetlet.resource=<resourceId>`. Containers are always looked up by those labels, never
//! by name alone; a container holding the name the agent wants without those labels is a
//! `Conflict`, and is never stopped or removed.
//!
//! Restarts: containers are created with the runtime's `--restart=no`, so that the agent sees
//! every exit, counts it, and applies one backoff policy whatever the runtime. The timing is
//! kept in the ownership record (`crashStreak`, with the runtime's `FinishedAt` as the clock):
//! the n-th restart in a row waits `Backoff::RESOURCE.delay(n)` (1 s, 2 s, 4 s, … 5 min) after
//! the exit, and a container that ran for [`STABLE_RUN`] before exiting starts a fresh streak.
//! While it waits, the apply fails with `CrashLoopBackOff` and tells the engine exactly when to
//! come back ([`ContainerError::retry_in`]); the restart itself is a successful apply, which is
//! how the new restart count reaches the ownership record (the engine records only successful
//! applies). Counting in the engine's failure counter instead would not work: a successful
//! restart resets it, so the delay would never grow.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fleetlet_manifests::{
    AbsPath, AgentId, ContainerDetails, ContainerSpec, ErrorReason, PullPolicy, ResourceDetails,
    ResourceId, RestartPolicy,
};
use time::OffsetDateTime;

use sha2::{Digest, Sha256};

use super::session_storage::{SessionVolumes, VolumeState};
use super::{Applied, Change, Deleted, KindReconciler, Target};
use crate::backoff::Backoff;
use crate::runtime::{
    BindMount, CliRuntime, ConfiguredRuntime, ContainerInfo, ContainerRuntime, CreateRequest,
    LABEL_AGENT, LABEL_RESOURCE, LABEL_SPEC_HASH, RunState, RuntimeError, RuntimeFlavor,
};
use crate::store::{Owned, OwnedContainer};

/// A container that ran this long before exiting was healthy: its next restart is not delayed
/// by earlier crashes (kubelet uses the same rule, with the same duration).
pub const STABLE_RUN: Duration = Duration::from_secs(600);

/// The delay before the n-th restart in a row: the resource backoff of DESIGN §5.
const RESTART_BACKOFF: Backoff = Backoff::RESOURCE;

/// Which runtime Container resources use, from the agent's configuration.
#[derive(Debug, Clone, Default)]
pub struct ContainerSettings {
    /// `None`: no runtime (`FLEETLET_CONTAINER_RUNTIME=none`); every container then fails with
    /// `RuntimeUnavailable`.
    pub runtime: Option<RuntimeFlavor>,
    /// The runtime's binary, when not `podman` or `docker` on `PATH`.
    pub runtime_path: Option<PathBuf>,
    /// What containers may ask of the host; nothing unless the operator allows it.
    pub host_access: HostAccess,
}

/// Host access the operator lets Container resources have (`FLEETLET_ALLOW_PRIVILEGED`,
/// `FLEETLET_ALLOW_HOST_NETWORK`, `FLEETLET_ALLOW_HOST_PID`, `FLEETLET_ALLOWED_DEVICES`). The
/// default allows nothing: each of these lets whoever writes manifests take over the device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostAccess {
    pub privileged: bool,
    pub host_network: bool,
    pub host_pid: bool,
    /// Device paths a container may be given, matched exactly (no prefixes, links are not
    /// resolved): `/dev/ttyUSB0` allows that path and nothing else.
    pub devices: Vec<AbsPath>,
}

impl ContainerSettings {
    pub fn runtime(&self) -> ConfiguredRuntime {
        match self.runtime {
            Some(flavor) => {
                ConfiguredRuntime::Cli(CliRuntime::new(flavor, self.runtime_path.clone()))
            }
            None => ConfiguredRuntime::Disabled,
        }
    }
}

/// Refuses a spec that asks for access to the host that the agent's configuration does not
/// allow: privileged mode, the host's network or PID namespace, or host devices not on the
/// allowed list. Each would let whoever writes manifests take over the device, so none reaches
/// the runtime unless the operator allowed it; the refusal names what was asked and the setting
/// that would allow it.
fn refuse_host_access(
    id: &ResourceId,
    spec: &ContainerSpec,
    allowed: &HostAccess,
) -> Result<(), ContainerError> {
    let mut asked = Vec::new();
    if spec.privileged && !allowed.privileged {
        asked.push("privileged mode (allowed by FLEETLET_ALLOW_PRIVILEGED)".to_owned());
    }
    if spec.host_network && !allowed.host_network {
        asked.push("the host network (allowed by FLEETLET_ALLOW_HOST_NETWORK)".to_owned());
    }
    if spec.host_pid && !allowed.host_pid {
        asked.push("the host PID namespace (allowed by FLEETLET_ALLOW_HOST_PID)".to_owned());
    }
    let devices: Vec<&str> = spec
        .devices
        .iter()
        .filter(|device| !allowed.devices.contains(device))
        .map(|device| device.as_str())
        .collect();
    if !devices.is_empty() {
        asked.push(format!(
            "host devices {} (not listed in FLEETLET_ALLOWED_DEVICES)",
            devices.join(", ")
        ));
    }
    if asked.is_empty() {
        Ok(())
    } else {
        Err(ContainerError::NotAllowed {
            id: id.clone(),
            what: asked.join(" and "),
        })
    }
}

/// Why a Container resource could not be applied or deleted.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("container resource {id} mounts session storage {storage}, which is not ready: {why}")]
    StorageNotReady {
        id: ResourceId,
        storage: ResourceId,
        why: String,
    },
    #[error(
        "container resource {id} mounts session storage {storage}, which expired and was evicted; the container is not run on an empty directory"
    )]
    StorageEvicted { id: ResourceId, storage: ResourceId },
    #[error("container resource {id}: {path} cannot be mounted: it contains a ','")]
    UnmountablePath { id: ResourceId, path: String },
    #[error("container resource {id} asks for {what}, which this agent does not allow")]
    NotAllowed { id: ResourceId, what: String },
    #[error("container resource {id}: {source}")]
    Runtime {
        id: ResourceId,
        #[source]
        source: RuntimeError,
    },
    #[error("container resource {id}: image {image} is not present and its pull policy is Never")]
    ImageNotFound { id: ResourceId, image: String },
    #[error(
        "container resource {id}: the name {name} is taken by container {holder}, which this agent did not create"
    )]
    NameTaken {
        id: ResourceId,
        name: String,
        holder: String,
    },
    #[error(
        "container resource {id}: container {container} exited with code {exit_code} and restart policy {policy} keeps it down"
    )]
    Exited {
        id: ResourceId,
        container: String,
        exit_code: i32,
        policy: &'static str,
        details: Box<ContainerDetails>,
    },
    #[error(
        "container resource {id}: container {container} exited with code {exit_code}; next restart in {wait:?} (restarted {restarts} times so far)"
    )]
    CrashLoop {
        id: ResourceId,
        container: String,
        exit_code: i32,
        restarts: u32,
        wait: Duration,
        details: Box<ContainerDetails>,
    },
    #[error("container resource {id}: container {container} is {status}; waiting for it to settle")]
    Unsettled {
        id: ResourceId,
        container: String,
        status: String,
    },
    #[error("container resource {id}: the container reconciler was started without an agent id")]
    NoAgentId { id: ResourceId },
}

impl ContainerError {
    pub fn reason(&self) -> ErrorReason {
        match self {
            ContainerError::StorageNotReady { .. } => ErrorReason::StorageNotReady,
            ContainerError::StorageEvicted { .. } => ErrorReason::SessionStorageEvicted,
            ContainerError::UnmountablePath { .. } => ErrorReason::InvalidSpec,
            ContainerError::NotAllowed { .. } => ErrorReason::NotAllowed,
            ContainerError::Runtime { source, .. } => match source {
                RuntimeError::Unavailable { .. }
                | RuntimeError::TimedOut { .. }
                | RuntimeError::BadOutput { .. } => ErrorReason::RuntimeUnavailable,
                RuntimeError::ImageNotFound { .. } => ErrorReason::ImageNotFound,
                RuntimeError::PullFailed { .. } => ErrorReason::ImagePullFailed,
                RuntimeError::NameInUse { .. } => ErrorReason::Conflict,
                RuntimeError::Failed { .. } => ErrorReason::ContainerCreateFailed,
            },
            ContainerError::ImageNotFound { .. } => ErrorReason::ImageNotFound,
            ContainerError::NameTaken { .. } => ErrorReason::Conflict,
            ContainerError::Exited { .. } => ErrorReason::ContainerExited,
            ContainerError::CrashLoop { .. } => ErrorReason::CrashLoopBackOff,
            ContainerError::Unsettled { .. } => ErrorReason::ContainerCreateFailed,
            ContainerError::NoAgentId { .. } => ErrorReason::RuntimeUnavailable,
        }
    }

    /// What the failed apply saw of the container, so that the status shows the exit code and
    /// restart count of an exited container rather than the details of its last good run.
    pub fn details(&self) -> Option<ResourceDetails> {
        match self {
            ContainerError::Exited { details, .. } | ContainerError::CrashLoop { details, .. } => {
                Some(ResourceDetails::Container(details.as_ref().clone()))
            }
            _ => None,
        }
    }

    /// When the next attempt is due, if the reconciler knows better than the engine's failure
    /// count (the restart backoff, measured from the container's exit).
    pub fn retry_in(&self) -> Option<Duration> {
        match self {
            ContainerError::CrashLoop { wait, .. } => Some(*wait),
            _ => None,
        }
    }
}

/// Runs Container resources on one runtime. Cheap to clone.
#[derive(Debug)]
pub struct ContainerReconciler<R> {
    runtime: Arc<R>,
    agent_id: Option<AgentId>,
    volumes: SessionVolumes,
    host_access: HostAccess,
}

impl<R> Clone for ContainerReconciler<R> {
    fn clone(&self) -> Self {
        Self {
            runtime: Arc::clone(&self.runtime),
            agent_id: self.agent_id.clone(),
            volumes: self.volumes.clone(),
            host_access: self.host_access.clone(),
        }
    }
}

/// The name the agent gives the container of `resource`. Names are for people; the agent finds
/// its containers by label.
pub fn container_name(agent: &AgentId, resource: &ResourceId) -> String {
    format!("fleetlet-{agent}-{resource}")
}

fn policy_name(policy: RestartPolicy) -> &'static str {
    match policy {
        RestartPolicy::Always => "Always",
        RestartPolicy::OnFailure => "OnFailure",
        RestartPolicy::Never => "Never",
    }
}

impl<R: ContainerRuntime> KindReconciler for ContainerReconciler<R> {
    type Spec = ContainerSpec;
    type Owned = OwnedContainer;
    type Error = ContainerError;

    fn owned(owned: &Owned) -> Option<&OwnedContainer> {
        match owned {
            Owned::Container(owned) => Some(owned),
            _ => None,
        }
    }

    async fn apply(
        &self,
        target: Target<'_, ContainerSpec, OwnedContainer>,
    ) -> Result<Applied, ContainerError> {
        let previous = target
            .previous
            .map(|previous| (previous.spec_hash, previous.owned));
        self.apply_parts(target.id, target.spec, target.spec_hash, previous)
            .await
    }

    async fn delete(
        &self,
        id: &ResourceId,
        owned: &OwnedContainer,
    ) -> Result<Deleted, ContainerError> {
        self.delete_parts(id, owned).await
    }
}

fn details_of(info: &ContainerInfo, restarts: u32) -> ContainerDetails {
    ContainerDetails {
        container_id: Some(info.id.clone()),
        image_id: Some(info.image_id.clone()).filter(|id| !id.is_empty()),
        state: info.status.clone(),
        started_at: info.started_at,
        restarts,
        exit_code: info.exit_code,
    }
}

/// Restart bookkeeping carried in the ownership record.
#[derive(Debug, Clone, Copy, Default)]
struct RestartBook {
    restarts: u32,
    crash_streak: u32,
}

impl<R: ContainerRuntime> ContainerReconciler<R> {
    pub fn new(runtime: R, agent_id: Option<AgentId>) -> Self {
        Self {
            runtime: Arc::new(runtime),
            agent_id,
            volumes: SessionVolumes::default(),
            host_access: HostAccess::default(),
        }
    }

    /// Allows containers the host access in `allowed` (without this call: none at all).
    pub fn with_host_access(mut self, allowed: HostAccess) -> Self {
        self.host_access = allowed;
        self
    }

    /// Resolves volumes through the session storage view (without one, every volume is not
    /// ready).
    pub fn with_volumes(mut self, volumes: SessionVolumes) -> Self {
        self.volumes = volumes;
        self
    }

    /// The bind mounts of `spec`'s volumes, or why the container may not run now.
    fn resolve_mounts(
        &self,
        id: &ResourceId,
        spec: &ContainerSpec,
    ) -> Result<Vec<BindMount>, ContainerError> {
        let mut mounts = Vec::with_capacity(spec.volumes.len());
        for volume in &spec.volumes {
            let storage = volume.session_storage.clone();
            let source = match self.volumes.get(&storage) {
                VolumeState::Ready { path } => path.display().to_string(),
                VolumeState::Evicted => {
                    return Err(ContainerError::StorageEvicted {
                        id: id.clone(),
                        storage,
                    });
                }
                VolumeState::NotReady { why } => {
                    return Err(ContainerError::StorageNotReady {
                        id: id.clone(),
                        storage,
                        why,
                    });
                }
            };
            let target = volume.mount_path.to_string();
            if let Some(path) = [&source, &target].into_iter().find(|p| p.contains(',')) {
                return Err(ContainerError::UnmountablePath {
                    id: id.clone(),
                    path: path.clone(),
                });
            }
            mounts.push(BindMount {
                source,
                target,
                read_only: volume.read_only,
            });
        }
        Ok(mounts)
    }

    pub fn runtime(&self) -> &R {
        &self.runtime
    }

    fn agent<'a>(&'a self, id: &ResourceId) -> Result<&'a AgentId, ContainerError> {
        self.agent_id
            .as_ref()
            .ok_or_else(|| ContainerError::NoAgentId { id: id.clone() })
    }

    /// Containers labelled as this agent's container for `id` (the filter is the runtime's; the
    /// labels are checked again here, since removal depends on them).
    async fn observe_ours(
        &self,
        agent: &AgentId,
        id: &ResourceId,
    ) -> Result<Vec<ContainerInfo>, ContainerError> {
        let found = self
            .runtime
            .list(&[(LABEL_AGENT, agent.as_str()), (LABEL_RESOURCE, id.as_str())])
            .await
            .map_err(|source| runtime_error(id, source))?;
        Ok(found
            .into_iter()
            .filter(|c| c.belongs_to(agent.as_str(), id.as_str()))
            .collect())
    }

    /// Makes the resource's container match `spec`. `previous` is the spec hash and ownership
    /// of the last successful apply.
    async fn apply_parts(
        &self,
        id: &ResourceId,
        spec: &ContainerSpec,
        spec_hash: &str,
        previous: Option<(&str, &OwnedContainer)>,
    ) -> Result<Applied, ContainerError> {
        // Before anything touches the runtime: what a manifest may not ask for is refused
        // outright, and nothing of the resource is created.
        refuse_host_access(id, spec, &self.host_access)?;
        let agent = self.agent(id)?;
        let mounts = match self.resolve_mounts(id, spec) {
            Ok(mounts) => mounts,
            Err(error @ ContainerError::StorageEvicted { .. }) => {
                // Its data is gone: a container still running would go on writing into a
                // deleted directory, so it is stopped and removed too.
                for container in self.observe_ours(agent, id).await? {
                    self.runtime
                        .remove(&container.id)
                        .await
                        .map_err(|source| runtime_error(id, source))?;
                }
                return Err(error);
            }
            Err(error) => return Err(error),
        };
        // The host paths behind the volumes are part of what the container is built from: a
        // new session (a new directory) replaces the container even though its own spec is
        // the same. The record keeps the plain spec hash, so restart counts carry over.
        let label_hash = label_hash(spec_hash, &mounts);
        let ours = self.observe_ours(agent, id).await?;
        // Restart counts carry over while the spec stays the same.
        let same_spec = previous
            .filter(|(hash, _)| *hash == spec_hash)
            .map(|(_, owned)| owned);
        let mut book = same_spec.map_or_else(RestartBook::default, |owned| RestartBook {
            restarts: owned.restarts,
            crash_streak: owned.crash_streak,
        });

        // The container to keep is one built from this spec: the recorded one if it is still
        // there, else the newest. Everything else of ours goes: older specs, and duplicates
        // left by an agent that stopped halfway through a replace.
        let recorded_id = same_spec.map(|owned| owned.container_id.as_str());
        let (mut current, outdated): (Vec<ContainerInfo>, Vec<ContainerInfo>) = ours
            .into_iter()
            .partition(|c| c.spec_hash() == Some(label_hash.as_str()));
        current.sort_by_key(|c| (Some(c.id.as_str()) == recorded_id, c.created_at));
        let keep = current.pop();
        let replaced = !outdated.is_empty();
        for container in outdated.iter().chain(current.iter()) {
            self.runtime
                .remove(&container.id)
                .await
                .map_err(|source| runtime_error(id, source))?;
        }

        let (container, change) = match keep {
            None => {
                let created = self
                    .create_and_start(agent, id, spec, &label_hash, mounts)
                    .await?;
                let change = if replaced || previous.is_some_and(|(hash, _)| hash != spec_hash) {
                    book = RestartBook::default();
                    Change::Updated
                } else if same_spec.is_some() {
                    Change::Repaired {
                        drift: "the container was removed".into(),
                    }
                } else {
                    Change::Created
                };
                (created, change)
            }
            Some(found) => match found.run_state() {
                RunState::Running if replaced => (
                    found,
                    Change::Repaired {
                        drift: "a container of an older spec was left behind".into(),
                    },
                ),
                RunState::Running => (found, Change::Unchanged),
                RunState::NotStarted => {
                    let started = self.start_and_inspect(id, &found.id).await?;
                    let drift = "the container was created but not started".into();
                    (started, Change::Repaired { drift })
                }
                RunState::Exited => self.after_exit(id, spec, found, &mut book).await?,
                RunState::Transient => {
                    return Err(ContainerError::Unsettled {
                        id: id.clone(),
                        container: found.id,
                        status: found.status,
                    });
                }
            },
        };
        Ok(Applied {
            change,
            owned: Owned::Container(OwnedContainer {
                container_id: container.id.clone(),
                name: container.name.clone(),
                restarts: book.restarts,
                crash_streak: book.crash_streak,
            }),
            details: Some(ResourceDetails::Container(details_of(
                &container,
                book.restarts,
            ))),
        })
    }

    /// Decides what an exited container gets from its restart policy: a restart (once its
    /// backoff has passed), a wait, or nothing.
    async fn after_exit(
        &self,
        id: &ResourceId,
        spec: &ContainerSpec,
        found: ContainerInfo,
        book: &mut RestartBook,
    ) -> Result<(ContainerInfo, Change), ContainerError> {
        // An exited container without a code is treated as failed: restarting it is the safe
        // side for Always and OnFailure, and Never reports it.
        let exit_code = found.exit_code.unwrap_or(-1);
        let restart = match spec.restart_policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => exit_code != 0,
            RestartPolicy::Never => false,
        };
        if !restart {
            if exit_code == 0 {
                // Ran to completion, as its policy allows: that is the desired state.
                return Ok((found, Change::Unchanged));
            }
            return Err(ContainerError::Exited {
                id: id.clone(),
                exit_code,
                policy: policy_name(spec.restart_policy),
                details: Box::new(details_of(&found, book.restarts)),
                container: found.id,
            });
        }
        let ran_for = match (found.started_at, found.finished_at) {
            (Some(started), Some(finished)) => (finished - started).unsigned_abs(),
            _ => Duration::ZERO,
        };
        if ran_for >= STABLE_RUN {
            book.crash_streak = 0;
        }
        let delay = RESTART_BACKOFF.delay(book.crash_streak.saturating_add(1));
        let since_exit = found.finished_at.map_or(delay, |finished| {
            (OffsetDateTime::now_utc() - finished).unsigned_abs()
        });
        if since_exit < delay {
            return Err(ContainerError::CrashLoop {
                id: id.clone(),
                exit_code,
                restarts: book.restarts,
                wait: delay - since_exit,
                details: Box::new(details_of(&found, book.restarts)),
                container: found.id,
            });
        }
        let started = self.start_and_inspect(id, &found.id).await?;
        book.restarts = book.restarts.saturating_add(1);
        book.crash_streak = book.crash_streak.saturating_add(1);
        let drift = format!(
            "container exited with code {exit_code}; restarted (restart {})",
            book.restarts
        );
        Ok((started, Change::Repaired { drift }))
    }

    async fn start_and_inspect(
        &self,
        id: &ResourceId,
        container: &str,
    ) -> Result<ContainerInfo, ContainerError> {
        self.runtime
            .start(container)
            .await
            .map_err(|source| runtime_error(id, source))?;
        self.inspect_existing(id, container).await
    }

    async fn inspect_existing(
        &self,
        id: &ResourceId,
        container: &str,
    ) -> Result<ContainerInfo, ContainerError> {
        self.runtime
            .inspect(container)
            .await
            .map_err(|source| runtime_error(id, source))?
            .ok_or_else(|| ContainerError::Unsettled {
                id: id.clone(),
                container: container.to_owned(),
                status: "gone right after it was started".into(),
            })
    }

    /// Makes sure the image is there as the pull policy says: pulled every time (`Always`),
    /// pulled when missing (`IfNotPresent`), or never pulled (`Never`).
    async fn ensure_image(
        &self,
        id: &ResourceId,
        spec: &ContainerSpec,
    ) -> Result<(), ContainerError> {
        let image = spec.image.as_str();
        let present = match spec.pull_policy {
            PullPolicy::Always => false,
            PullPolicy::IfNotPresent | PullPolicy::Never => self
                .runtime
                .image_id(image)
                .await
                .map_err(|source| runtime_error(id, source))?
                .is_some(),
        };
        if present {
            return Ok(());
        }
        if spec.pull_policy == PullPolicy::Never {
            return Err(ContainerError::ImageNotFound {
                id: id.clone(),
                image: image.to_owned(),
            });
        }
        self.runtime
            .pull(image)
            .await
            .map_err(|source| runtime_error(id, source))
    }

    async fn create_and_start(
        &self,
        agent: &AgentId,
        id: &ResourceId,
        spec: &ContainerSpec,
        spec_hash: &str,
        mounts: Vec<BindMount>,
    ) -> Result<ContainerInfo, ContainerError> {
        self.ensure_image(id, spec).await?;
        let name = container_name(agent, id);
        let mut request = create_request(agent, id, spec, spec_hash, name.clone());
        request.mounts = mounts;
        let created = match self.runtime.create(&request).await {
            Ok(created) => created,
            // Ours would have been found by its labels, so whatever holds the name is not ours.
            // Asking who holds it only after the create failed saves a call on every create.
            Err(RuntimeError::NameInUse { .. }) => {
                let holder = self
                    .runtime
                    .inspect(&name)
                    .await
                    .map_err(|source| runtime_error(id, source))?
                    .map_or_else(|| "unknown".to_owned(), |holder| holder.id);
                return Err(ContainerError::NameTaken {
                    id: id.clone(),
                    name,
                    holder,
                });
            }
            Err(source) => return Err(runtime_error(id, source)),
        };
        // A container that fails to start is left in place: the next pass finds it labelled as
        // ours and tries to start it again, after the backoff.
        self.start_and_inspect(id, &created).await
    }

    /// Removes every container labelled as this agent's for `id`, and nothing else.
    async fn delete_parts(
        &self,
        id: &ResourceId,
        _owned: &OwnedContainer,
    ) -> Result<Deleted, ContainerError> {
        let agent = self.agent(id)?;
        let ours = self.observe_ours(agent, id).await?;
        if ours.is_empty() {
            return Ok(Deleted::AlreadyGone);
        }
        for container in &ours {
            self.runtime
                .remove(&container.id)
                .await
                .map_err(|source| runtime_error(id, source))?;
        }
        Ok(Deleted::Removed)
    }
}

/// The hash in a container's spec-hash label: the spec hash alone without volumes, else
/// combined with the host paths the volumes resolve to.
fn label_hash(spec_hash: &str, mounts: &[BindMount]) -> String {
    if mounts.is_empty() {
        return spec_hash.to_owned();
    }
    let mut hasher = Sha256::new();
    hasher.update(spec_hash.as_bytes());
    for mount in mounts {
        hasher.update(b"\0");
        hasher.update(mount.source.as_bytes());
    }
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

fn runtime_error(id: &ResourceId, source: RuntimeError) -> ContainerError {
    ContainerError::Runtime {
        id: id.clone(),
        source,
    }
}

/// The runtime request for `spec`. `command` replaces the image's entrypoint and `args` its
/// CMD, as in Kubernetes; both runtimes drop the image's CMD when the entrypoint is replaced.
fn create_request(
    agent: &AgentId,
    id: &ResourceId,
    spec: &ContainerSpec,
    spec_hash: &str,
    name: String,
) -> CreateRequest {
    let (entrypoint, mut arguments) = match spec.command.split_first() {
        Some((first, rest)) => (Some(first.clone()), rest.to_vec()),
        None => (None, Vec::new()),
    };
    arguments.extend(spec.args.iter().cloned());
    CreateRequest {
        name,
        image: spec.image.as_str().to_owned(),
        labels: BTreeMap::from([
            (LABEL_AGENT.to_owned(), agent.as_str().to_owned()),
            (LABEL_RESOURCE.to_owned(), id.as_str().to_owned()),
            (LABEL_SPEC_HASH.to_owned(), spec_hash.to_owned()),
        ]),
        entrypoint,
        arguments,
        env: spec.env.clone(),
        working_dir: spec.working_dir.as_ref().map(|dir| dir.to_string()),
        user: spec.user.clone(),
        ports: spec.ports.clone(),
        memory_limit_bytes: spec.memory_limit_bytes,
        cpu_millis: spec.cpu_millis,
        mounts: Vec::new(),
        // `apply` has refused whatever of these the configuration does not allow.
        privileged: spec.privileged,
        host_network: spec.host_network,
        host_pid: spec.host_pid,
        devices: spec.devices.iter().map(|d| d.as_str().to_owned()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use fleetlet_manifests::{Resource, ResourceSpec};
    use serde_json::json;

    use super::*;
    use crate::reconcile::Previous;
    use crate::runtime::fake::{Call, FakeRuntime};

    const IMAGE: &str = "localhost/busybox:test";

    fn agent() -> AgentId {
        AgentId::try_from("pi-1").expect("agent id")
    }

    fn reconciler(fake: FakeRuntime) -> ContainerReconciler<FakeRuntime> {
        ContainerReconciler::new(fake, Some(agent()))
    }

    fn resource(spec: serde_json::Value) -> Resource {
        serde_json::from_value(json!({"id": "web", "kind": "Container", "spec": spec}))
            .expect("valid resource")
    }

    fn resource_with_id(id: &str, spec: serde_json::Value) -> Resource {
        serde_json::from_value(json!({"id": id, "kind": "Container", "spec": spec}))
            .expect("valid resource")
    }

    fn web(extra: serde_json::Value) -> Resource {
        let mut spec = json!({"image": IMAGE, "command": ["sleep", "1000"]});
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        resource(spec)
    }

    /// Applies `resource` the way the engine does: with the record of the previous success.
    async fn apply(
        reconciler: &ContainerReconciler<FakeRuntime>,
        resource: &Resource,
        previous: Option<&(String, OwnedContainer)>,
    ) -> Result<Applied, ContainerError> {
        let ResourceSpec::Container(spec) = &resource.spec else {
            panic!("not a container spec");
        };
        let spec_hash = resource.spec_hash();
        reconciler
            .apply(Target {
                id: &resource.id,
                spec,
                spec_hash: &spec_hash,
                previous: previous.map(|(hash, owned)| Previous {
                    spec_hash: hash,
                    owned,
                }),
            })
            .await
    }

    fn record(resource: &Resource, applied: &Applied) -> (String, OwnedContainer) {
        match &applied.owned {
            Owned::Container(owned) => (resource.spec_hash(), owned.clone()),
            other => panic!("not a container record: {other:?}"),
        }
    }

    fn container_details(applied: &Applied) -> ContainerDetails {
        match &applied.details {
            Some(ResourceDetails::Container(details)) => details.clone(),
            other => panic!("no container details: {other:?}"),
        }
    }

    fn ago(seconds: i64) -> OffsetDateTime {
        OffsetDateTime::now_utc() - time::Duration::seconds(seconds)
    }

    #[tokio::test]
    async fn creates_a_labelled_container_from_the_spec_and_starts_it() {
        let reconciler = reconciler(FakeRuntime::with_images(&[IMAGE]));
        let resource = web(json!({"args": ["extra"], "env": {"MODE": "kiosk"},
            "memoryLimitBytes": 67108864, "cpuMillis": 250, "user": "nobody", "workingDir": "/tmp"}));
        let applied = apply(&reconciler, &resource, None).await.expect("apply");
        assert_eq!(applied.change, Change::Created);
        let details = container_details(&applied);
        assert_eq!(details.state, "running");
        assert_eq!(details.restarts, 0);
        let id = details.container_id.expect("container id");
        let request = reconciler.runtime().request(&id).expect("request");
        assert_eq!(request.name, "fleetlet-pi-1-web");
        assert_eq!(request.labels[LABEL_AGENT], "pi-1");
        assert_eq!(request.labels[LABEL_RESOURCE], "web");
        assert_eq!(request.labels[LABEL_SPEC_HASH], resource.spec_hash());
        assert_eq!(request.entrypoint.as_deref(), Some("sleep"));
        assert_eq!(request.arguments, ["1000", "extra"]);
        assert_eq!(request.env["MODE"], "kiosk");
        assert_eq!(request.memory_limit_bytes, Some(67108864));
        assert_eq!(request.cpu_millis, Some(250));
        assert_eq!(request.user.as_deref(), Some("nobody"));
        assert_eq!(request.working_dir.as_deref(), Some("/tmp"));
    }

    #[tokio::test]
    async fn an_unchanged_spec_makes_no_call_beyond_observing() {
        let reconciler = reconciler(FakeRuntime::with_images(&[IMAGE]));
        let resource = web(json!({}));
        let first = apply(&reconciler, &resource, None).await.expect("apply");
        reconciler.runtime().take_calls();
        let second = apply(&reconciler, &resource, Some(&record(&resource, &first)))
            .await
            .expect("apply");
        assert_eq!(second.change, Change::Unchanged);
        assert_eq!(reconciler.runtime().take_calls(), [Call::List]);
        // Without a record (an agent restarted on a memory store) the labels still identify
        // the container: kept, not restarted.
        let third = apply(&reconciler, &resource, None).await.expect("apply");
        assert_eq!(third.change, Change::Unchanged);
        assert_eq!(reconciler.runtime().take_calls(), [Call::List]);
        assert_eq!(
            container_details(&third).container_id,
            container_details(&first).container_id
        );
    }

    #[tokio::test]
    async fn a_spec_change_removes_the_old_container_and_creates_a_new_one() {
        let reconciler = reconciler(FakeRuntime::with_images(&[IMAGE]));
        let before = web(json!({"env": {"MODE": "a"}}));
        let first = apply(&reconciler, &before, None).await.expect("apply");
        let old_id = container_details(&first).container_id.expect("id");
        reconciler.runtime().take_calls();

        let after = web(json!({"env": {"MODE": "b"}}));
        let second = apply(&reconciler, &after, Some(&record(&before, &first)))
            .await
            .expect("apply");
        assert_eq!(second.change, Change::Updated);
        let new_id = container_details(&second).container_id.expect("id");
        assert_ne!(new_id, old_id);
        let calls = reconciler.runtime().take_calls();
        let removed = calls
            .iter()
            .position(|c| *c == Call::Remove(old_id.clone()));
        let created = calls.iter().position(|c| matches!(c, Call::Create(_)));
        assert!(
            removed.is_some() && removed < created,
            "old removed before the new one is created: {calls:?}"
        );
        assert!(reconciler.runtime().container(&old_id).is_none());
        assert_eq!(reconciler.runtime().containers().len(), 1);
    }

    #[tokio::test]
    async fn an_exited_container_under_always_is_restarted_with_growing_delays() {
        let reconciler = reconciler(FakeRuntime::with_images(&[IMAGE]));
        let resource = web(json!({"restartPolicy": "Always"}));
        let applied = apply(&reconciler, &resource, None).await.expect("apply");
        let id = container_details(&applied).container_id.expect("id");
        let mut previous = record(&resource, &applied);

        // First exit, long enough ago: restarted at once and counted.
        reconciler.runtime().exit(&id, 137, ago(5));
        reconciler.runtime().take_calls();
        let restarted = apply(&reconciler, &resource, Some(&previous))
            .await
            .expect("restart");
        assert!(matches!(restarted.change, Change::Repaired { .. }));
        assert!(
            reconciler
                .runtime()
                .take_calls()
                .contains(&Call::Start(id.clone()))
        );
        let details = container_details(&restarted);
        assert_eq!((details.restarts, details.state.as_str()), (1, "running"));
        assert_eq!(details.container_id.as_deref(), Some(id.as_str()));
        previous = record(&resource, &restarted);
        assert_eq!(previous.1.restarts, 1);

        // Second exit, just now: the second restart in a row waits 2 s after the exit, and the
        // failure tells the engine when to come back.
        reconciler.runtime().exit(&id, 137, ago(0));
        let waiting = apply(&reconciler, &resource, Some(&previous))
            .await
            .expect_err("backing off");
        assert_eq!(waiting.reason(), ErrorReason::CrashLoopBackOff);
        let wait = waiting.retry_in().expect("a retry time");
        assert!(
            wait > Duration::from_secs(1) && wait <= Duration::from_secs(2),
            "{wait:?}"
        );
        let Some(ResourceDetails::Container(details)) = waiting.details() else {
            panic!("details of the exited container");
        };
        assert_eq!((details.exit_code, details.restarts), (Some(137), 1));
        assert!(
            !reconciler
                .runtime()
                .take_calls()
                .iter()
                .any(|c| matches!(c, Call::Start(_)))
        );

        // Once the delay has passed it is restarted; the next delay doubles.
        reconciler.runtime().exit(&id, 137, ago(3));
        let restarted = apply(&reconciler, &resource, Some(&previous))
            .await
            .expect("restart");
        previous = record(&resource, &restarted);
        assert_eq!((previous.1.restarts, previous.1.crash_streak), (2, 2));
        reconciler.runtime().exit(&id, 137, ago(3));
        let waiting = apply(&reconciler, &resource, Some(&previous))
            .await
            .expect_err("backing off");
        let wait = waiting.retry_in().expect("a retry time");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "4 s after exit, 3 s passed: {wait:?}"
        );
    }

    #[tokio::test]
    async fn a_container_that_ran_long_before_exiting_starts_a_fresh_streak() {
        let reconciler = reconciler(FakeRuntime::with_images(&[IMAGE]));
        let resource = web(json!({}));
        let applied = apply(&reconciler, &resource, None).await.expect("apply");
        let id = container_details(&applied).container_id.expect("id");
        let (hash, mut owned) = record(&resource, &applied);
        owned.crash_streak = 8;
        owned.restarts = 8;
        let previous = (hash, owned);

        // Crashing again right after the eighth restart: the ninth waits 256 s.
        reconciler.runtime().set_started_at(&id, ago(1));
        reconciler.runtime().exit(&id, 1, ago(0));
        let waiting = apply(&reconciler, &resource, Some(&previous))
            .await
            .expect_err("backing off");
        assert!(waiting.retry_in().expect("retry") > Duration::from_secs(200));

        // After a run longer than STABLE_RUN the streak starts over: 1 s.
        reconciler.runtime().set_started_at(&id, ago(1200));
        let waiting = apply(&reconciler, &resource, Some(&previous))
            .await
            .expect_err("backing off");
        assert!(waiting.retry_in().expect("retry") <= Duration::from_secs(1));
    }

    #[tokio::test]
    async fn under_never_an_exited_container_stays_down_and_reports_its_exit_code() {
        let reconciler = reconciler(FakeRuntime::with_images(&[IMAGE]));
        let resource = web(json!({"restartPolicy": "Never"}));
        let applied = apply(&reconciler, &resource, None).await.expect("apply");
        let id = container_details(&applied).container_id.expect("id");
        reconciler.runtime().exit(&id, 137, ago(60));
        reconciler.runtime().take_calls();
        let error = apply(&reconciler, &resource, Some(&record(&resource, &applied)))
            .await
            .expect_err("exited");
        assert_eq!(error.reason(), ErrorReason::ContainerExited);
        let Some(ResourceDetails::Container(details)) = error.details() else {
            panic!("details");
        };
        assert_eq!(
            (details.exit_code, details.state.as_str()),
            (Some(137), "exited")
        );
        assert_eq!(reconciler.runtime().take_calls(), [Call::List]);

        // Under OnFailure a clean exit is completion, not a failure.
        let job = web(json!({"restartPolicy": "OnFailure"}));
        let reconciler = super::tests::reconciler(FakeRuntime::with_images(&[IMAGE]));
        let applied = apply(&reconciler, &job, None).await.expect("apply");
        let id = container_details(&applied).container_id.expect("id");
        reconciler.runtime().exit(&id, 0, ago(60));
        let done = apply(&reconciler, &job, Some(&record(&job, &applied)))
            .await
            .expect("completed");
        assert_eq!(container_details(&done).exit_code, Some(0));
    }

    #[tokio::test]
    async fn a_foreign_container_holding_the_name_is_a_conflict_and_is_never_removed() {
        let fake = FakeRuntime::with_images(&[IMAGE]);
        // Same name, and even the agent label of another agent.
        let foreign = fake.plant(
            "fleetlet-pi-1-web",
            BTreeMap::from([(LABEL_AGENT.to_owned(), "someone-else".to_owned())]),
        );
        let reconciler = reconciler(fake);
        let resource = web(json!({}));
        let error = apply(&reconciler, &resource, None)
            .await
            .expect_err("conflict");
        assert_eq!(error.reason(), ErrorReason::Conflict);
        let owned = OwnedContainer {
            container_id: foreign.clone(),
            name: "fleetlet-pi-1-web".into(),
            restarts: 0,
            crash_streak: 0,
        };
        // Even a record naming it (a corrupted or forged record) does not get it removed.
        let deleted = reconciler
            .delete(&resource.id, &owned)
            .await
            .expect("delete");
        assert_eq!(deleted, Deleted::AlreadyGone);
        let calls = reconciler.runtime().take_calls();
        assert!(
            !calls.iter().any(|c| matches!(c, Call::Remove(_))),
            "{calls:?}"
        );
        assert!(reconciler.runtime().container(&foreign).is_some());
    }

    #[tokio::test]
    async fn delete_removes_only_the_labelled_container() {
        let fake = FakeRuntime::with_images(&[IMAGE]);
        let other = fake.plant("unrelated", BTreeMap::new());
        let reconciler = reconciler(fake);
        let resource = web(json!({}));
        let applied = apply(&reconciler, &resource, None).await.expect("apply");
        let (_, owned) = record(&resource, &applied);
        assert_eq!(
            reconciler
                .delete(&resource.id, &owned)
                .await
                .expect("delete"),
            Deleted::Removed
        );
        assert_eq!(
            reconciler
                .delete(&resource.id, &owned)
                .await
                .expect("delete"),
            Deleted::AlreadyGone
        );
        assert_eq!(reconciler.runtime().containers().len(), 1);
        assert!(reconciler.runtime().container(&other).is_some());
    }

    #[tokio::test]
    async fn privileged_host_network_host_pid_and_devices_are_not_allowed() {
        for extra in [
            json!({"privileged": true}),
            json!({"hostNetwork": true}),
            json!({"hostPid": true}),
            json!({"devices": ["/dev/ttyUSB0"]}),
        ] {
            let reconciler = reconciler(FakeRuntime::with_images(&[IMAGE]));
            let error = apply(&reconciler, &web(extra.clone()), None)
                .await
                .expect_err("refused");
            assert_eq!(error.reason(), ErrorReason::NotAllowed, "{extra}");
            // Refused before the runtime was asked anything: nothing was created.
            assert!(reconciler.runtime().containers().is_empty(), "{extra}");
        }
        // Asking for none of it (the flags left false) is fine.
        let reconciler = reconciler(FakeRuntime::with_images(&[IMAGE]));
        apply(&reconciler, &web(json!({"privileged": false})), None)
            .await
            .expect("an ordinary container");
    }

    fn dev(path: &str) -> AbsPath {
        AbsPath::try_from(path).expect("absolute path")
    }

    #[tokio::test]
    async fn a_refusal_names_what_was_asked_and_the_setting_that_allows_it() {
        let reconciler = reconciler(FakeRuntime::with_images(&[IMAGE]));
        let error = apply(
            &reconciler,
            &web(
                json!({"privileged": true, "hostNetwork": true, "hostPid": true,
                "devices": ["/dev/ttyUSB0"]}),
            ),
            None,
        )
        .await
        .expect_err("refused");
        let message = error.to_string();
        for expected in [
            "privileged mode",
            "FLEETLET_ALLOW_PRIVILEGED",
            "the host network",
            "FLEETLET_ALLOW_HOST_NETWORK",
            "the host PID namespace",
            "FLEETLET_ALLOW_HOST_PID",
            "/dev/ttyUSB0",
            "FLEETLET_ALLOWED_DEVICES",
        ] {
            assert!(message.contains(expected), "{expected} in {message}");
        }
    }

    #[tokio::test]
    async fn allowed_host_access_reaches_the_create_request() {
        let reconciler =
            reconciler(FakeRuntime::with_images(&[IMAGE])).with_host_access(HostAccess {
                privileged: true,
                host_network: true,
                host_pid: true,
                devices: vec![dev("/dev/ttyUSB0"), dev("/dev/i2c-1")],
            });
        let resource = web(
            json!({"privileged": true, "hostNetwork": true, "hostPid": true,
            "devices": ["/dev/ttyUSB0"]}),
        );
        let applied = apply(&reconciler, &resource, None).await.expect("allowed");
        let id = container_details(&applied).container_id.expect("id");
        let request = reconciler.runtime().request(&id).expect("request");
        assert!(request.privileged && request.host_network && request.host_pid);
        assert_eq!(request.devices, ["/dev/ttyUSB0"]);
        assert_eq!(request.labels[LABEL_SPEC_HASH], resource.spec_hash());

        // Allowing is not asking: an ordinary container gets none of it.
        let plain = resource_with_id("plain", json!({"image": IMAGE}));
        let applied = apply(&reconciler, &plain, None).await.expect("ordinary");
        let id = container_details(&applied).container_id.expect("id");
        let request = reconciler.runtime().request(&id).expect("request");
        assert!(!request.privileged && !request.host_network && !request.host_pid);
        assert!(request.devices.is_empty());
    }

    #[tokio::test]
    async fn only_what_is_allowed_passes_and_a_device_off_the_list_is_refused() {
        // Privileged allowed, devices allowed: /dev/sda is not on the list.
        let reconciler =
            reconciler(FakeRuntime::with_images(&[IMAGE])).with_host_access(HostAccess {
                privileged: true,
                devices: vec![dev("/dev/ttyUSB0")],
                ..HostAccess::default()
            });
        let error = apply(
            &reconciler,
            &web(json!({"privileged": true, "devices": ["/dev/ttyUSB0", "/dev/sda"]})),
            None,
        )
        .await
        .expect_err("refused");
        assert_eq!(error.reason(), ErrorReason::NotAllowed);
        let message = error.to_string();
        assert!(message.contains("/dev/sda"), "{message}");
        assert!(!message.contains("/dev/ttyUSB0"), "{message}");
        assert!(!message.contains("privileged"), "{message}");
        // Exact paths only: a path under an allowed one, or a link to it, is not allowed.
        let error = apply(
            &reconciler,
            &web(json!({"devices": ["/dev/ttyUSB0/x"]})),
            None,
        )
        .await
        .expect_err("refused");
        assert_eq!(error.reason(), ErrorReason::NotAllowed);
        // Host network was not allowed, whatever else was.
        let error = apply(&reconciler, &web(json!({"hostNetwork": true})), None)
            .await
            .expect_err("refused");
        assert!(
            error.to_string().contains("FLEETLET_ALLOW_HOST_NETWORK"),
            "{error}"
        );
        assert!(reconciler.runtime().containers().is_empty());
    }

    #[tokio::test]
    async fn asking_for_host_access_changes_the_spec_hash_and_replaces_the_container() {
        let reconciler =
            reconciler(FakeRuntime::with_images(&[IMAGE])).with_host_access(HostAccess {
                host_network: true,
                ..HostAccess::default()
            });
        let before = web(json!({}));
        let after = web(json!({"hostNetwork": true}));
        assert_ne!(before.spec_hash(), after.spec_hash());
        let first = apply(&reconciler, &before, None).await.expect("apply");
        let second = apply(&reconciler, &after, Some(&record(&before, &first)))
            .await
            .expect("apply");
        assert_eq!(second.change, Change::Updated);
        let id = container_details(&second).container_id.expect("id");
        assert!(
            reconciler
                .runtime()
                .request(&id)
                .expect("request")
                .host_network
        );
        assert_eq!(reconciler.runtime().containers().len(), 1);
    }

    #[tokio::test]
    async fn images_follow_the_pull_policy() {
        let reconciler = reconciler(FakeRuntime::with_images(&[]));
        let never = resource(json!({"image": "localhost/nope:1", "pullPolicy": "Never"}));
        let error = apply(&reconciler, &never, None).await.expect_err("missing");
        assert_eq!(error.reason(), ErrorReason::ImageNotFound);
        assert!(
            !reconciler
                .runtime()
                .take_calls()
                .iter()
                .any(|c| matches!(c, Call::Pull(_)))
        );

        let if_missing =
            resource(json!({"image": "localhost/nope:1", "pullPolicy": "IfNotPresent"}));
        let error = apply(&reconciler, &if_missing, None)
            .await
            .expect_err("pull fails");
        assert_eq!(error.reason(), ErrorReason::ImagePullFailed);
        assert!(
            reconciler
                .runtime()
                .take_calls()
                .contains(&Call::Pull("localhost/nope:1".into()))
        );

        let present = FakeRuntime::with_images(&[IMAGE]);
        let reconciler = super::tests::reconciler(present);
        apply(
            &reconciler,
            &web(json!({"pullPolicy": "IfNotPresent"})),
            None,
        )
        .await
        .expect("present");
        assert!(
            !reconciler
                .runtime()
                .take_calls()
                .iter()
                .any(|c| matches!(c, Call::Pull(_)))
        );
    }

    #[tokio::test]
    async fn an_unreachable_runtime_fails_with_runtime_unavailable() {
        let fake = FakeRuntime::with_images(&[IMAGE]);
        fake.set_down(true);
        let reconciler = reconciler(fake);
        let error = apply(&reconciler, &web(json!({})), None)
            .await
            .expect_err("down");
        assert_eq!(error.reason(), ErrorReason::RuntimeUnavailable);

        let disabled = ContainerReconciler::new(ConfiguredRuntime::Disabled, Some(agent()));
        let resource = web(json!({}));
        let ResourceSpec::Container(spec) = &resource.spec else {
            panic!("container spec");
        };
        let error = disabled
            .apply(Target {
                id: &resource.id,
                spec,
                spec_hash: &resource.spec_hash(),
                previous: None,
            })
            .await
            .expect_err("disabled");
        assert_eq!(error.reason(), ErrorReason::RuntimeUnavailable);
    }

    #[tokio::test]
    async fn volumes_wait_for_session_storage() {
        let reconciler = reconciler(FakeRuntime::with_images(&[IMAGE]));
        let resource =
            web(json!({"volumes": [{"sessionStorage": "scratch", "mountPath": "/data"}]}));
        let error = apply(&reconciler, &resource, None)
            .await
            .expect_err("no storage");
        assert_eq!(error.reason(), ErrorReason::StorageNotReady);
        assert!(error.to_string().contains("not ready"), "{error}");
        assert!(reconciler.runtime().take_calls().is_empty());
    }

    fn scratch() -> ResourceId {
        ResourceId::try_from("scratch").expect("resource id")
    }

    #[tokio::test]
    async fn a_ready_volume_is_bound_and_a_new_session_directory_replaces_the_container() {
        let volumes = SessionVolumes::default();
        let reconciler =
            reconciler(FakeRuntime::with_images(&[IMAGE])).with_volumes(volumes.clone());
        volumes.set(
            &scratch(),
            VolumeState::Ready {
                path: "/sessions/scratch@s1/data".into(),
            },
        );
        let resource = web(json!({"volumes": [
            {"sessionStorage": "scratch", "mountPath": "/data", "readOnly": true}]}));
        let first = apply(&reconciler, &resource, None).await.expect("apply");
        let first_id = container_details(&first).container_id.expect("id");
        let request = reconciler.runtime().request(&first_id).expect("request");
        assert_eq!(
            request.mounts,
            [BindMount {
                source: "/sessions/scratch@s1/data".into(),
                target: "/data".into(),
                read_only: true,
            }]
        );
        assert_ne!(request.labels[LABEL_SPEC_HASH], resource.spec_hash());

        let unchanged = apply(&reconciler, &resource, Some(&record(&resource, &first)))
            .await
            .expect("apply");
        assert_eq!(unchanged.change, Change::Unchanged);

        volumes.set(
            &scratch(),
            VolumeState::Ready {
                path: "/sessions/scratch@s2/data".into(),
            },
        );
        let moved = apply(&reconciler, &resource, Some(&record(&resource, &first)))
            .await
            .expect("apply");
        let moved_id = container_details(&moved).container_id.expect("id");
        assert_ne!(moved_id, first_id);
        let request = reconciler.runtime().request(&moved_id).expect("request");
        assert_eq!(request.mounts[0].source, "/sessions/scratch@s2/data");
    }

    #[tokio::test]
    async fn an_evicted_volume_fails_and_stops_the_container_instead_of_running_it_empty() {
        let volumes = SessionVolumes::default();
        let reconciler =
            reconciler(FakeRuntime::with_images(&[IMAGE])).with_volumes(volumes.clone());
        volumes.set(
            &scratch(),
            VolumeState::Ready {
                path: "/sessions/scratch@s1/data".into(),
            },
        );
        let resource =
            web(json!({"volumes": [{"sessionStorage": "scratch", "mountPath": "/data"}]}));
        let first = apply(&reconciler, &resource, None).await.expect("apply");
        let first_id = container_details(&first).container_id.expect("id");
        volumes.set(&scratch(), VolumeState::Evicted);
        reconciler.runtime().take_calls();
        let error = apply(&reconciler, &resource, Some(&record(&resource, &first)))
            .await
            .expect_err("evicted");
        assert_eq!(error.reason(), ErrorReason::SessionStorageEvicted);
        let calls = reconciler.runtime().take_calls();
        assert!(calls.contains(&Call::Remove(first_id)), "{calls:?}");
        assert!(
            !calls
                .iter()
                .any(|c| matches!(c, Call::Create(_) | Call::Start(_)))
        );
    }

    #[tokio::test]
    async fn a_removed_container_is_recreated_and_its_restart_count_kept() {
        let reconciler = reconciler(FakeRuntime::with_images(&[IMAGE]));
        let resource = web(json!({}));
        let applied = apply(&reconciler, &resource, None).await.expect("apply");
        let id = container_details(&applied).container_id.expect("id");
        let (hash, mut owned) = record(&resource, &applied);
        owned.restarts = 3;
        reconciler.runtime().remove(&id).await.expect("remove");
        let repaired = apply(&reconciler, &resource, Some(&(hash, owned)))
            .await
            .expect("apply");
        assert!(matches!(repaired.change, Change::Repaired { .. }));
        assert_eq!(container_details(&repaired).restarts, 3);
    }
}
