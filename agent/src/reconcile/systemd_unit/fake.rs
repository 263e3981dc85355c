//! A fake systemd manager for unit tests: it keeps a small model of each unit (loaded, active,
//! enabled, main PID), loads unit files from a real directory on daemon-reload the way systemd
//! does, records every call in order, and can be told to make a unit fail to start or to be
//! unreachable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use fleetlet_manifests::UnitName;

use super::manager::{ManagerScope, SystemdError, SystemdManager, UnitObservation, UnitOperation};

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Reload,
    Run(UnitOperation, String),
}

#[derive(Debug, Default)]
struct Model {
    calls: Vec<Call>,
    units: BTreeMap<String, UnitObservation>,
    /// Units whose start ends in the failed state with this Result.
    failing: BTreeMap<String, String>,
    /// The text of each unit file as of the last daemon-reload.
    loaded: BTreeMap<String, String>,
    unreachable: bool,
    next_pid: u32,
}

/// Cheap to clone; clones share the model.
#[derive(Debug, Clone)]
pub struct FakeSystemd {
    unit_dir: PathBuf,
    model: Arc<Mutex<Model>>,
}

/// The unit files in `dir` and their text.
fn unit_files(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let text = std::fs::read_to_string(entry.path()).ok()?;
            Some((name, text))
        })
        .collect()
}

fn inactive(fragment_path: String, installable: bool) -> UnitObservation {
    UnitObservation {
        load_state: "loaded".into(),
        active_state: "inactive".into(),
        sub_state: "dead".into(),
        result: "success".into(),
        unit_file_state: if installable { "disabled" } else { "static" }.into(),
        fragment_path,
        ..UnitObservation::default()
    }
}

impl FakeSystemd {
    /// A manager whose search path is `unit_dir`.
    pub fn new(unit_dir: &Path) -> Self {
        Self {
            unit_dir: unit_dir.to_path_buf(),
            model: Arc::default(),
        }
    }

    fn model(&self) -> MutexGuard<'_, Model> {
        // A test that panicked while holding the lock has failed already; the model is still
        // good enough to read.
        self.model
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every call so far, then forgets them.
    pub fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut self.model().calls)
    }

    /// Makes every later start of `unit` fail with systemd's `result`.
    pub fn fail_starts(&self, unit: &str, result: &str) {
        self.model()
            .failing
            .insert(unit.to_owned(), result.to_owned());
    }

    pub fn set_unreachable(&self, unreachable: bool) {
        self.model().unreachable = unreachable;
    }

    /// Changes a unit behind the agent's back, as `systemctl stop` by hand would.
    pub fn stop_by_hand(&self, unit: &str) {
        if let Some(state) = self.model().units.get_mut(unit) {
            state.active_state = "inactive".into();
            state.sub_state = "dead".into();
            state.main_pid = 0;
        }
    }

    /// Overrides what systemd says about a loaded unit.
    pub fn replace(&self, unit: &str, observed: UnitObservation) {
        self.model().units.insert(unit.to_owned(), observed);
    }

    pub fn observed(&self, unit: &str) -> Option<UnitObservation> {
        self.model().units.get(unit).cloned()
    }
}

impl Model {
    fn check_reachable(&self, unit: &UnitName) -> Result<(), SystemdError> {
        if self.unreachable {
            return Err(SystemdError::Unavailable {
                scope: ManagerScope::User,
                unit: unit.to_string(),
                message: "Failed to connect to bus: No such file or directory".into(),
            });
        }
        Ok(())
    }

    fn start(&mut self, unit: &UnitName) -> Result<(), SystemdError> {
        let failing = self.failing.get(unit.as_str()).cloned();
        self.next_pid += 1;
        let pid = 1000 + self.next_pid;
        let Some(state) = self.units.get_mut(unit.as_str()) else {
            return Err(SystemdError::OperationFailed {
                verb: "start",
                unit: unit.to_string(),
                message: format!("Unit {unit} not found."),
            });
        };
        // Like a Type=simple service: the start job succeeds, the process dies right after.
        match failing {
            Some(result) => {
                state.active_state = "failed".into();
                state.sub_state = "failed".into();
                state.main_pid = 0;
                state.result = result;
            }
            None => {
                state.active_state = "active".into();
                state.sub_state = "running".into();
                state.main_pid = pid;
                state.result = "success".into();
            }
        }
        Ok(())
    }
}

impl SystemdManager for FakeSystemd {
    async fn daemon_reload(&self, unit: &UnitName) -> Result<(), SystemdError> {
        let mut model = self.model();
        model.check_reachable(unit)?;
        model.calls.push(Call::Reload);
        let files = unit_files(&self.unit_dir);
        // Units whose file is gone are unloaded unless still running, as systemd does.
        model
            .units
            .retain(|name, state| files.contains_key(name) || state.is_up());
        for (name, text) in &files {
            let path = self.unit_dir.join(name).display().to_string();
            let can_install = text.contains("[Install]");
            let state = model
                .units
                .entry(name.clone())
                .or_insert_with(|| inactive(path.clone(), can_install));
            state.fragment_path = path;
            if !can_install {
                state.unit_file_state = "static".into();
            } else if state.unit_file_state == "static" {
                state.unit_file_state = "disabled".into();
            }
        }
        model.loaded = files;
        Ok(())
    }

    async fn run(&self, operation: UnitOperation, unit: &UnitName) -> Result<(), SystemdError> {
        let mut model = self.model();
        model.check_reachable(unit)?;
        model
            .calls
            .push(Call::Run(operation, unit.as_str().to_owned()));
        match operation {
            UnitOperation::Start => return model.start(unit),
            UnitOperation::Restart => {
                model.stop_unit(unit);
                return model.start(unit);
            }
            UnitOperation::Stop => model.stop_unit(unit),
            UnitOperation::Enable | UnitOperation::Disable => {
                if let Some(state) = model.units.get_mut(unit.as_str()) {
                    state.unit_file_state = if operation == UnitOperation::Enable {
                        "enabled"
                    } else {
                        "disabled"
                    }
                    .into();
                }
            }
            UnitOperation::ResetFailed => {
                if let Some(state) = model.units.get_mut(unit.as_str())
                    && state.active_state == "failed"
                {
                    state.active_state = "inactive".into();
                    state.sub_state = "dead".into();
                    state.result = "success".into();
                }
            }
        }
        Ok(())
    }

    async fn observe(&self, unit: &UnitName) -> Result<UnitObservation, SystemdError> {
        let model = self.model();
        model.check_reachable(unit)?;
        let on_disk = std::fs::read_to_string(self.unit_dir.join(unit.as_str())).ok();
        let need_daemon_reload = on_disk.as_ref() != model.loaded.get(unit.as_str());
        let mut observed =
            model
                .units
                .get(unit.as_str())
                .cloned()
                .unwrap_or_else(|| UnitObservation {
                    load_state: "not-found".into(),
                    active_state: "inactive".into(),
                    sub_state: "dead".into(),
                    ..UnitObservation::default()
                });
        observed.need_daemon_reload = need_daemon_reload && observed.load_state == "loaded";
        Ok(observed)
    }
}

impl Model {
    fn stop_unit(&mut self, unit: &UnitName) {
        if let Some(state) = self.units.get_mut(unit.as_str())
            && state.active_state != "failed"
        {
            state.active_state = "inactive".into();
            state.sub_state = "dead".into();
            state.main_pid = 0;
        }
    }
}
