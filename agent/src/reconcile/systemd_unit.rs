//! The SystemdUnit reconciler: writes a unit file into the configured unit dir and drives the
//! unit to its desired enablement and state through a [`SystemdManager`].
//!
//! One apply, in order: write the file atomically (through [`crate::confined`], beneath the unit
//! dir without following a link) if its text differs; `daemon-reload` only if the file changed (or systemd says its copy is stale);
//! enable or disable; start, stop, or restart when the text changed while it should run; then
//! observe what systemd itself reports. A start is only trusted after a short settle time,
//! because a `Type=simple` service "starts" successfully and dies a moment later when its
//! command is missing or exits 1.
//!
//! **Ownership.** Every file the agent writes begins with a marker line naming the agent and the
//! resource. A file at the target path without that exact marker was not written by this agent
//! for this resource, and it is never modified or removed (reason `Conflict`), whatever the
//! store says: a record can be lost or stale, the file's own first line cannot be mistaken. The
//! marker also lets an agent whose store was lost recognise its own files after a restart
//! instead of rewriting (and restarting) them.

mod checks;
mod manager;
mod systemctl;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fleetlet_manifests::{
    AbsPath, ErrorReason, ResourceDetails, ResourceId, SystemdUnitDetails, SystemdUnitSpec,
    UnitName, UnitState,
};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::SFlag;
use sha2::{Digest, Sha256};

use super::{Applied, Change, Deleted, FileError, KindReconciler, Previous};
use crate::confined::{self, ConfinedError, Durability, ModeChoice, Replace, fstatat};
use crate::store::{Owned, OwnedUnit};
pub use manager::{ManagerScope, SystemdError, SystemdManager, UnitObservation, UnitOperation};
pub use systemctl::Systemctl;

use checks::{
    abs_path, check_loaded, check_unit_name, details_of, installable, read_existing, unit_failed,
};

/// How long a freshly started unit must stay up before the start counts as a success.
pub const START_SETTLE: Duration = Duration::from_millis(500);
/// How often the settling unit is observed.
const SETTLE_POLL: Duration = Duration::from_millis(100);
/// Mode of the unit files the agent writes: systemd only needs to read them.
const UNIT_FILE_MODE: u32 = 0o644;
/// Ends the name of the temporary file a unit file is written to.
const TEMP_SUFFIX: &str = ".fleetlet-tmp";
/// Unit files are small; reading a foreign file at the target path stops here.
const MAX_UNIT_FILE_READ: u64 = 2 * 1024 * 1024;

/// Why a SystemdUnit resource could not be applied or deleted.
#[derive(Debug, thiserror::Error)]
pub enum SystemdUnitError {
    #[error("unit {unit}: systemd is not available to this agent (FLEETLET_SYSTEMD_SCOPE=none)")]
    Disabled { unit: String },
    #[error("unit name {unit} is not valid: {message}")]
    InvalidName { unit: String, message: String },
    #[error(
        "unit {unit} failed (Result={result}, ActiveState={active_state}, SubState={sub_state})"
    )]
    UnitFailed {
        unit: String,
        result: String,
        active_state: String,
        sub_state: String,
    },
    #[error(
        "unit {unit} could not be loaded by systemd (LoadState={load_state}); check the unit text and that {dir} is in the manager's search path"
    )]
    NotLoaded {
        unit: String,
        load_state: String,
        dir: String,
    },
    #[error(
        "unit file {path} of {unit} was not written by this agent for this resource ({why}); it is left untouched"
    )]
    ForeignFile {
        unit: String,
        path: String,
        why: String,
    },
    #[error(
        "unit {unit} cannot be enabled: {why}, so systemd has nothing to enable it into (enabled: true); add an [Install] section (e.g. WantedBy=default.target) or set enabled: false"
    )]
    NotInstallable { unit: String, why: &'static str },
    #[error("unit {unit} is loaded from {fragment}, not from the agent's file {path}")]
    Shadowed {
        unit: String,
        path: String,
        fragment: String,
    },
    #[error("unit dir {dir} of {unit} is not usable: {message}")]
    UnitDir {
        unit: String,
        dir: String,
        message: String,
    },
    #[error("unit file of {unit}: {source}")]
    File {
        unit: String,
        #[source]
        source: FileError,
    },
    #[error(transparent)]
    Systemd(#[from] SystemdError),
}

impl SystemdUnitError {
    pub fn reason(&self) -> ErrorReason {
        match self {
            SystemdUnitError::Disabled { .. } => ErrorReason::SystemdUnavailable,
            SystemdUnitError::InvalidName { .. } => ErrorReason::InvalidSpec,
            SystemdUnitError::UnitFailed { .. } | SystemdUnitError::NotLoaded { .. } => {
                ErrorReason::UnitFailed
            }
            SystemdUnitError::ForeignFile { .. } | SystemdUnitError::Shadowed { .. } => {
                ErrorReason::Conflict
            }
            SystemdUnitError::NotInstallable { .. } => ErrorReason::UnitNotInstallable,
            SystemdUnitError::UnitDir { .. } => ErrorReason::IoError,
            SystemdUnitError::File { source, .. } => source.reason(),
            SystemdUnitError::Systemd(SystemdError::Unavailable { .. }) => {
                ErrorReason::SystemdUnavailable
            }
            SystemdUnitError::Systemd(_) => ErrorReason::UnitOperationFailed,
        }
    }
}

/// Where SystemdUnit resources go; absent when the agent's systemd scope is `none`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemdSettings {
    pub scope: ManagerScope,
    /// The directory unit files are written to; it must be in the manager's search path.
    pub unit_dir: PathBuf,
}

/// Reconciles SystemdUnit resources through the manager `M`. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SystemdUnitReconciler<M> {
    /// None: the agent is configured without systemd, and every unit fails as unavailable.
    target: Option<Target<M>>,
    /// Names the agent in the marker line of every file it writes.
    agent: String,
    start_settle: Duration,
}

#[derive(Debug, Clone)]
struct Target<M> {
    manager: Arc<M>,
    /// Unit files are opened, replaced and removed beneath it through [`crate::confined`], with
    /// the same atomic replace and the same refusal to follow links as File resources.
    unit_dir: PathBuf,
}

/// What was at the unit file's path before the apply.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Existing {
    Missing,
    /// A file with this agent's marker for this resource, holding `text`.
    Ours {
        text: String,
    },
    /// Anything else; `why` says what.
    Foreign {
        why: String,
    },
}

impl<M: SystemdManager> KindReconciler for SystemdUnitReconciler<M> {
    type Spec = SystemdUnitSpec;
    type Owned = OwnedUnit;
    type Error = SystemdUnitError;

    fn owned(owned: &Owned) -> Option<&OwnedUnit> {
        match owned {
            Owned::SystemdUnit(owned) => Some(owned),
            _ => None,
        }
    }

    async fn apply(
        &self,
        target: super::Target<'_, SystemdUnitSpec, OwnedUnit>,
    ) -> Result<Applied, SystemdUnitError> {
        self.apply_parts(target.id, target.spec, target.spec_hash, target.previous)
            .await
    }

    async fn delete(
        &self,
        id: &ResourceId,
        owned: &OwnedUnit,
    ) -> Result<Deleted, SystemdUnitError> {
        self.delete_parts(id, owned).await
    }
}

impl SystemdUnitReconciler<Systemctl> {
    /// The real reconciler: `systemctl` on the configured scope, or none at all.
    pub fn new(settings: Option<&SystemdSettings>, agent: &str) -> Self {
        Self::with_manager(
            settings.map(|settings| (Systemctl::new(settings.scope), settings.unit_dir.clone())),
            agent,
            START_SETTLE,
        )
    }
}

impl<M: SystemdManager> SystemdUnitReconciler<M> {
    pub fn with_manager(target: Option<(M, PathBuf)>, agent: &str, start_settle: Duration) -> Self {
        Self {
            target: target.map(|(manager, unit_dir)| Target {
                manager: Arc::new(manager),
                unit_dir,
            }),
            agent: agent.to_owned(),
            start_settle,
        }
    }

    /// The first line of every unit file this agent writes for resource `id`.
    fn marker(&self, id: &ResourceId) -> String {
        format!("# Managed by fleetlet: agent={} resource={id}", self.agent)
    }

    /// The file's full text: the marker, a warning for whoever opens it, then the spec's text.
    fn render_unit_file(&self, id: &ResourceId, spec: &SystemdUnitSpec) -> String {
        format!(
            "{}\n# Edits are overwritten: change the resource in the manifest instead.\n{}",
            self.marker(id),
            spec.unit
        )
    }

    fn target(&self, unit: &str) -> Result<&Target<M>, SystemdUnitError> {
        self.target
            .as_ref()
            .ok_or_else(|| SystemdUnitError::Disabled {
                unit: unit.to_owned(),
            })
    }

    /// Applies one SystemdUnit resource. `previous` is the spec hash and ownership of the last
    /// successful apply.
    async fn apply_parts(
        &self,
        id: &ResourceId,
        spec: &SystemdUnitSpec,
        spec_hash: &str,
        previous: Option<Previous<'_, OwnedUnit>>,
    ) -> Result<Applied, SystemdUnitError> {
        let unit = check_unit_name(spec.name.as_str())?;
        let target = self.target(unit.as_str())?;
        // Refused before anything is written or started: the resource would otherwise be Ready
        // while the unit silently never starts at boot.
        if spec.enabled && !installable(&spec.unit) {
            return Err(SystemdUnitError::NotInstallable {
                unit: unit.to_string(),
                why: "its text has no [Install] section with WantedBy=, RequiredBy=, UpheldBy=, Alias= or Also=",
            });
        }
        let manager = &*target.manager;
        let path = target.unit_dir.join(unit.as_str());
        let rendered = self.render_unit_file(id, spec);

        let existing = self
            .write_unit_file(target, id, &unit, &path, &rendered)
            .await?;
        let text_changed = !matches!(&existing, Existing::Ours { text } if *text == rendered);
        let mut observed = manager.observe(&unit).await?;
        if text_changed || observed.need_daemon_reload {
            tracing::info!(resource = %id, unit = %unit, "systemd daemon-reload");
            manager.daemon_reload(&unit).await?;
            observed = manager.observe(&unit).await?;
        }
        check_loaded(&unit, &path, &observed)?;
        // systemd's own verdict, for what the text check above lets through.
        if spec.enabled && observed.unit_file_state == "static" {
            return Err(SystemdUnitError::NotInstallable {
                unit: unit.to_string(),
                why: "systemd reports it as static (its [Install] section installs nothing)",
            });
        }

        // What had to be done besides the file, in words for the drift message.
        let mut done: Vec<String> = Vec::new();
        if spec.enabled && !observed.is_enabled() && observed.can_be_enabled() {
            manager.run(UnitOperation::Enable, &unit).await?;
            done.push("the unit was not enabled".into());
        } else if !spec.enabled && observed.is_enabled() {
            manager.run(UnitOperation::Disable, &unit).await?;
            done.push("the unit was enabled".into());
        }

        let mut settled = None;
        match spec.state {
            UnitState::Started if observed.is_up() => {
                // A running unit picks up new text only by a restart; unchanged text never
                // restarts it (an agent restart must not bounce every service).
                if text_changed && existing != Existing::Missing {
                    tracing::info!(resource = %id, unit = %unit, "restarting for the new unit text");
                    settled = Some(
                        self.run_and_settle(manager, UnitOperation::Restart, &unit)
                            .await?,
                    );
                }
            }
            UnitState::Started if observed.is_auto_restarting() => {
                // systemd's own Restart= is already on it; starting now would only skip its delay.
                return Err(unit_failed(&unit, &observed));
            }
            UnitState::Started => {
                if observed.active_state == "failed" {
                    // A fresh attempt: clears the failed state and systemd's start rate limit,
                    // whose pace the agent's own backoff replaces.
                    manager.run(UnitOperation::ResetFailed, &unit).await?;
                }
                done.push(format!(
                    "the unit was not running ({}/{}, Result={})",
                    observed.active_state, observed.sub_state, observed.result
                ));
                settled = Some(
                    self.run_and_settle(manager, UnitOperation::Start, &unit)
                        .await?,
                );
            }
            UnitState::Stopped if observed.is_up() && observed.triggered_by.is_empty() => {
                manager.run(UnitOperation::Stop, &unit).await?;
                done.push("the unit was running".into());
            }
            // A unit started by its timer, socket or path unit runs when its trigger says so:
            // `Stopped` means "not started by the agent", not "killed whenever seen running".
            UnitState::Stopped => {}
        }
        // Enabling happens before a start, so a settled observation is already the latest.
        let observed = match settled {
            Some(observed) => observed,
            None => manager.observe(&unit).await?,
        };

        let same_spec = previous.is_some_and(|previous| previous.spec_hash == spec_hash);
        let change = if existing == Existing::Missing && same_spec {
            Change::Repaired {
                drift: "the unit file was deleted".into(),
            }
        } else if existing == Existing::Missing {
            Change::Created
        } else if text_changed && same_spec {
            Change::Repaired {
                drift: "the unit file was edited".into(),
            }
        } else if text_changed || (!done.is_empty() && previous.is_some() && !same_spec) {
            Change::Updated
        } else if done.is_empty() {
            Change::Unchanged
        } else {
            Change::Repaired {
                drift: done.join(", "),
            }
        };

        // The resource now names another unit: the old one is ours to remove.
        if let Some(old) = previous
            .map(|previous| previous.owned)
            .filter(|old| old.name != unit.as_str())
            && let Err(error) = self.delete_parts(id, old).await
        {
            tracing::warn!(resource = %id, unit = %old.name, %error, "could not remove the unit the resource named before");
        }

        Ok(Applied {
            change,
            owned: Owned::SystemdUnit(OwnedUnit {
                name: unit.to_string(),
                path: path.display().to_string(),
                sha256: hex::encode(Sha256::digest(rendered.as_bytes())),
            }),
            details: Some(ResourceDetails::SystemdUnit(details_of(&observed))),
        })
    }

    /// Stops, disables and removes a unit the agent wrote, then reloads. A file that is not the
    /// agent's (any more) is left alone, and so is the unit loaded from it.
    async fn delete_parts(
        &self,
        id: &ResourceId,
        owned: &OwnedUnit,
    ) -> Result<Deleted, SystemdUnitError> {
        let Ok(unit) = check_unit_name(&owned.name) else {
            return Ok(Deleted::Released {
                why: format!("{} is not a valid unit name", owned.name),
            });
        };
        let target = self.target(unit.as_str())?;
        let manager = &*target.manager;
        let path = PathBuf::from(&owned.path);
        let existing = read_existing(&path, &self.marker(id), unit.as_str())?;
        if let Existing::Foreign { why } = existing {
            return Ok(Deleted::Released {
                why: format!("{}: {why}", path.display()),
            });
        }
        let observed = manager.observe(&unit).await?;
        // Only the unit loaded from the agent's own file is stopped: a same-named unit from
        // another directory of the search path belongs to someone else.
        let from_our_file = observed.load_state != "not-found"
            && (observed.fragment_path.is_empty() || Path::new(&observed.fragment_path) == path);
        if from_our_file {
            if observed.is_up() || observed.is_auto_restarting() {
                manager.run(UnitOperation::Stop, &unit).await?;
            }
            if observed.is_enabled() {
                manager.run(UnitOperation::Disable, &unit).await?;
            }
            if observed.active_state == "failed" {
                manager.run(UnitOperation::ResetFailed, &unit).await?;
            }
        }
        if existing == Existing::Missing {
            if from_our_file {
                manager.daemon_reload(&unit).await?;
            }
            return Ok(Deleted::AlreadyGone);
        }
        self.remove_unit_file(target, id, &unit, &path).await?;
        tracing::info!(resource = %id, unit = %unit, "systemd daemon-reload");
        manager.daemon_reload(&unit).await?;
        Ok(Deleted::Removed)
    }

    /// Starts or restarts the unit and watches it for the settle time: a unit that fails in
    /// that window failed to start.
    async fn run_and_settle(
        &self,
        manager: &M,
        operation: UnitOperation,
        unit: &UnitName,
    ) -> Result<UnitObservation, SystemdUnitError> {
        if let Err(error) = manager.run(operation, unit).await {
            // A start job that fails ("control process exited with error code") leaves the
            // unit failed; systemd's Result says more than systemctl's message.
            let observed = manager.observe(unit).await?;
            if observed.has_failed() {
                return Err(unit_failed(unit, &observed));
            }
            return Err(error.into());
        }
        let deadline = tokio::time::Instant::now() + self.start_settle;
        loop {
            let observed = manager.observe(unit).await?;
            if observed.has_failed() {
                return Err(unit_failed(unit, &observed));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(observed);
            }
            tokio::time::sleep(SETTLE_POLL.min(deadline - now)).await;
        }
    }

    /// Writes the unit file if its text differs, refusing to touch a file that is not ours.
    /// Returns what was there before.
    async fn write_unit_file(
        &self,
        target: &Target<M>,
        id: &ResourceId,
        unit: &UnitName,
        path: &Path,
        rendered: &str,
    ) -> Result<Existing, SystemdUnitError> {
        // The path must be absolute and normalised, as the unit file's path is reported.
        abs_path(unit, path)?;
        let unit_dir = target.unit_dir.clone();
        let marker = self.marker(id);
        let unit_name = unit.to_string();
        let path = path.to_path_buf();
        let rendered_text = rendered.to_owned();
        run_blocking(unit, move || {
            let existing = read_existing(&path, &marker, &unit_name)?;
            match &existing {
                Existing::Foreign { why } => {
                    return Err(SystemdUnitError::ForeignFile {
                        unit: unit_name,
                        path: path.display().to_string(),
                        why: why.clone(),
                    });
                }
                Existing::Ours { text } if *text == rendered_text => return Ok(existing),
                _ => {}
            }
            std::fs::create_dir_all(&unit_dir).map_err(|error| SystemdUnitError::UnitDir {
                unit: unit_name.clone(),
                dir: unit_dir.display().to_string(),
                message: error.to_string(),
            })?;
            replace_unit_file(&unit_dir, &path, rendered_text.as_bytes()).map_err(|source| {
                SystemdUnitError::File {
                    unit: unit_name,
                    source: source.into(),
                }
            })?;
            Ok(existing)
        })
        .await
    }

    async fn remove_unit_file(
        &self,
        target: &Target<M>,
        id: &ResourceId,
        unit: &UnitName,
        path: &Path,
    ) -> Result<(), SystemdUnitError> {
        let id = id.clone();
        let unit_dir = target.unit_dir.clone();
        let unit_name = unit.to_string();
        let path = path.to_path_buf();
        run_blocking(unit, move || {
            remove_unit_file_blocking(&id, &unit_dir, &path).map_err(|source| {
                SystemdUnitError::File {
                    unit: unit_name,
                    source: source.into(),
                }
            })
        })
        .await
    }
}

/// Replaces the unit file `path` in `unit_dir` atomically, beneath the unit dir without
/// following a link: the same replace as every other writer of the agent.
fn replace_unit_file(unit_dir: &Path, path: &Path, text: &[u8]) -> Result<(), ConfinedError> {
    let root = confined::open_root(unit_dir, "open the unit dir")?;
    let parent = confined::open_parent(root, unit_dir, path, None)?
        .ok_or_else(|| ConfinedError::os(path, "open the directory of", Errno::ENOENT))?;
    let how = Replace {
        mode: ModeChoice::Exact(UNIT_FILE_MODE),
        uid: None,
        gid: None,
        durability: Durability::Full,
        temp_suffix: TEMP_SUFFIX,
    };
    confined::check_replaceable(&parent.dir, &parent.name, path)?;
    confined::replace(&parent.dir, &parent.name, path, text, &how)
}

/// Removes the unit file `path` from `unit_dir` if it is a regular file (never through a link),
/// and makes the removal durable. A file that is not (any more) below the unit dir is left.
fn remove_unit_file_blocking(
    id: &ResourceId,
    unit_dir: &Path,
    path: &Path,
) -> Result<(), ConfinedError> {
    let root = confined::open_root(unit_dir, "open the unit dir")?;
    let parent = match confined::open_parent(root, unit_dir, path, None) {
        Ok(Some(parent)) => parent,
        Ok(None) => return Ok(()),
        Err(error @ (ConfinedError::NotBeneath { .. } | ConfinedError::SymlinkInPath { .. })) => {
            tracing::warn!(resource = %id, %error, "unit file left in place");
            return Ok(());
        }
        Err(error) => return Err(error),
    };
    match fstatat(
        &parent.dir,
        parent.name.as_os_str(),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        Err(Errno::ENOENT) => Ok(()),
        Err(errno) => Err(ConfinedError::os(path, "inspect", errno)),
        Ok(stat) if confined::file_type(&stat) != SFlag::S_IFREG => Ok(()),
        Ok(_) => confined::remove_at(&parent.dir, &parent.name, path, true).map(drop),
    }
}

/// Runs blocking file work off the async threads.
async fn run_blocking<T, F>(unit: &UnitName, work: F) -> Result<T, SystemdUnitError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, SystemdUnitError> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|join| {
            Err(SystemdUnitError::File {
                unit: unit.to_string(),
                source: FileError::WorkerStopped {
                    path: unit.to_string(),
                    message: join.to_string(),
                },
            })
        })
}
