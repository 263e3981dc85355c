//! The `SystemdManager` trait: the few things the SystemdUnit reconciler asks of a systemd
//! manager (reload, one operation on one unit, observe one unit), and what it sees.
//!
//! The real implementation drives `systemctl` ([`super::systemctl`]); unit tests use a fake that
//! records every call. Unit names reach this layer only as validated [`UnitName`]s.

use std::future::Future;

use fleetlet_manifests::UnitName;

/// Which systemd manager the agent drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManagerScope {
    /// The system manager (PID 1): `systemctl`.
    System,
    /// The calling user's manager: `systemctl --user`.
    User,
}

impl std::fmt::Display for ManagerScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ManagerScope::System => "system",
            ManagerScope::User => "user",
        })
    }
}

/// One operation on one unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnitOperation {
    Start,
    Stop,
    Restart,
    Enable,
    Disable,
    /// Clears a failed unit's failed state (and its start rate limit), so that starting it
    /// again is a fresh attempt.
    ResetFailed,
}

impl UnitOperation {
    /// The `systemctl` verb, also used in messages.
    pub fn verb(self) -> &'static str {
        match self {
            UnitOperation::Start => "start",
            UnitOperation::Stop => "stop",
            UnitOperation::Restart => "restart",
            UnitOperation::Enable => "enable",
            UnitOperation::Disable => "disable",
            UnitOperation::ResetFailed => "reset-failed",
        }
    }
}

/// What systemd says about one unit, in its own words (`systemctl show` properties).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnitObservation {
    /// loaded, not-found, bad-setting, error, masked.
    pub load_state: String,
    /// active, reloading, inactive, failed, activating, deactivating.
    pub active_state: String,
    /// The type-specific state: running, dead, failed, waiting, auto-restart, …
    pub sub_state: String,
    pub main_pid: u32,
    pub n_restarts: u32,
    /// How the last run ended: success, exit-code, signal, timeout, start-limit-hit, …
    pub result: String,
    /// enabled, disabled, static, indirect, masked, … (empty when no file is loaded).
    pub unit_file_state: String,
    /// The file on disk differs from what the manager loaded.
    pub need_daemon_reload: bool,
    /// The units (timers, sockets, paths) that start this one.
    pub triggered_by: Vec<String>,
    /// The file the unit was loaded from.
    pub fragment_path: String,
}

impl UnitObservation {
    /// Running or on its way up, and not merely waiting for systemd's own restart after a crash.
    pub fn is_up(&self) -> bool {
        match self.active_state.as_str() {
            "active" | "reloading" => true,
            "activating" => self.sub_state != "auto-restart",
            _ => false,
        }
    }

    /// Crashed and waiting for systemd's own `Restart=` to start it again.
    pub fn is_auto_restarting(&self) -> bool {
        self.active_state == "activating" && self.sub_state == "auto-restart"
    }

    /// Ended badly: in the failed state, or stopped with a result other than success.
    pub fn has_failed(&self) -> bool {
        self.active_state == "failed"
            || self.is_auto_restarting()
            || (self.active_state == "inactive"
                && !self.result.is_empty()
                && self.result != "success")
    }

    /// Enabled in the sense `systemctl is-enabled` reports.
    pub fn is_enabled(&self) -> bool {
        matches!(self.unit_file_state.as_str(), "enabled" | "enabled-runtime")
    }

    /// A unit without an `[Install]` section is "static": it cannot be enabled, and asking again
    /// on every pass would only repeat systemd's warning.
    pub fn can_be_enabled(&self) -> bool {
        self.unit_file_state == "disabled"
    }
}

/// Why a call to the systemd manager failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SystemdError {
    #[error("the systemd {scope} manager cannot be reached (needed for {unit}): {message}")]
    Unavailable {
        scope: ManagerScope,
        unit: String,
        message: String,
    },
    #[error("systemctl {verb} {unit} failed: {message}")]
    OperationFailed {
        verb: &'static str,
        unit: String,
        message: String,
    },
    #[error("systemctl {verb} {unit} did not finish within {seconds} s")]
    TimedOut {
        verb: &'static str,
        unit: String,
        seconds: u64,
    },
    #[error("systemctl show {unit} answered something unexpected: {message}")]
    UnexpectedOutput { unit: String, message: String },
}

/// A systemd manager. Every method is bounded in time by the implementation.
pub trait SystemdManager: Send + Sync + std::fmt::Debug + 'static {
    /// Makes the manager re-read unit files. `unit` names the unit that asked for it, for
    /// messages only.
    fn daemon_reload(
        &self,
        unit: &UnitName,
    ) -> impl Future<Output = Result<(), SystemdError>> + Send;

    fn run(
        &self,
        operation: UnitOperation,
        unit: &UnitName,
    ) -> impl Future<Output = Result<(), SystemdError>> + Send;

    fn observe(
        &self,
        unit: &UnitName,
    ) -> impl Future<Output = Result<UnitObservation, SystemdError>> + Send;
}
