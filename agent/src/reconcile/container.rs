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
//! come back (its [`KindReconciler::error_policy`]); the restart itself is a successful apply, which is
//! how the new restart count reaches the ownership record (the engine records only successful
//! applies). Counting in the engine's failure counter instead would not work: a successful
//! restart resets it, so the delay would never grow.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fleetlet_manifests::{
    AgentId, ContainerDetails, ContainerSpec, ErrorReason, PullPolicy, ResourceDetails, ResourceId,
    RestartPolicy,
};
use time::OffsetDateTime;

use sha2::{Digest, Sha256};

use super::session_storage::{SessionVolumes, VolumeState};
use super::{Applied, Change, Deleted, KindReconciler, Retry, Target};
use crate::backoff::Backoff;
use crate::runtime::{
    BindMount, ContainerInfo, ContainerRuntime, CreateRequest, LABEL_AGENT, LABEL_RESOURCE,
    LABEL_SPEC_HASH, RunState, RuntimeError,
};
use crate::store::{Owned, OwnedContainer};

mod host_access;

use host_access::refuse_host_access;
pub use host_access::{ContainerSettings, HostAccess};

/// A container that ran this long before exiting was healthy: its next restart is not delayed
/// by earlier crashes (kubelet uses the same rule, with the same duration).
pub const STABLE_RUN: Duration = Duration::from_secs(600);

/// The delay before the n-th restart in a row: the resource backoff of DESIGN §5.
const RESTART_BACKOFF: Backoff = Backoff::RESOURCE;

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

    /// A container waiting out its restart delay is looked at again when the delay, measured
    /// from its exit, has passed; every other failure waits out the engine's backoff.
    fn error_policy(error: &ContainerError) -> Retry {
        match error {
            ContainerError::CrashLoop { wait, .. } => Retry::After(*wait),
            _ => Retry::Backoff,
        }
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
mod tests;
