//! The real [`SystemdManager`]: one `systemctl` process per call, started without a shell and
//! with the unit name as a separate argument after `--`, bounded by a timeout that kills it.
//!
//! Why `systemctl` rather than D-Bus (zbus): it adds no dependency, it is the interface these
//! machines were verified with (including the user manager's private socket, which needs no bus
//! daemon), and a call costs about 13 ms here (`show` with seven properties; `busctl` takes about
//! 7 ms, an in-process D-Bus call would take less). At a handful of calls per unit per resync
//! interval that cost is noise on a Pi, while the error messages stay the ones an operator knows.

use std::process::Stdio;
use std::time::Duration;

use fleetlet_manifests::UnitName;
use tokio::process::Command;

use super::manager::{ManagerScope, SystemdError, SystemdManager, UnitObservation, UnitOperation};

/// `systemctl show` is a read: if it takes this long, the manager is not answering.
const OBSERVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Start, stop and restart wait for their job; a slow `ExecStartPre=` gets this long, which is
/// well inside the engine's apply timeout.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(60);

/// The properties read by [`Systemctl::observe`].
const PROPERTIES: &str = "LoadState,ActiveState,SubState,MainPID,NRestarts,Result,UnitFileState,\
                          NeedDaemonReload,TriggeredBy,FragmentPath";

/// Drives the system or the user manager through `systemctl`.
#[derive(Debug, Clone)]
pub struct Systemctl {
    scope: ManagerScope,
}

impl Systemctl {
    pub fn new(scope: ManagerScope) -> Self {
        Self { scope }
    }

    /// Runs `systemctl [--user] <args>` and returns its stdout, or a typed error.
    async fn systemctl(
        &self,
        verb: &'static str,
        unit: &UnitName,
        args: &[&str],
        timeout: Duration,
    ) -> Result<String, SystemdError> {
        let mut command = Command::new("systemctl");
        if self.scope == ManagerScope::User {
            command.arg("--user");
        }
        command
            .args(["--no-ask-password", "--no-pager", "--quiet"])
            .args(args)
            // Messages are matched below (to tell "unreachable" from "failed"), so they must not
            // be translated.
            .env("LC_ALL", "C")
            .env("SYSTEMD_COLORS", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A timed-out call is killed rather than left running behind the agent's back.
            .kill_on_drop(true);
        let output = match tokio::time::timeout(timeout, command.output()).await {
            Ok(Ok(output)) => output,
            Ok(Err(error)) => {
                return Err(SystemdError::Unavailable {
                    scope: self.scope,
                    unit: unit.to_string(),
                    message: format!("could not run systemctl: {error}"),
                });
            }
            Err(_) => {
                return Err(SystemdError::TimedOut {
                    verb,
                    unit: unit.to_string(),
                    seconds: timeout.as_secs(),
                });
            }
        };
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        if output.status.success() {
            return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
        }
        if is_unreachable(&stderr) {
            return Err(SystemdError::Unavailable {
                scope: self.scope,
                unit: unit.to_string(),
                message: stderr,
            });
        }
        Err(SystemdError::OperationFailed {
            verb,
            unit: unit.to_string(),
            message: if stderr.is_empty() {
                format!("exit status {}", output.status)
            } else {
                stderr
            },
        })
    }
}

/// Whether systemctl's complaint means "no manager to talk to" rather than "the manager said no".
fn is_unreachable(stderr: &str) -> bool {
    [
        "Failed to connect to bus",
        "Failed to get D-Bus connection",
        "has not been booted with systemd",
        "Transport endpoint is not connected",
        "Connection refused",
        "Connection timed out",
    ]
    .iter()
    .any(|needle| stderr.contains(needle))
}

impl SystemdManager for Systemctl {
    async fn daemon_reload(&self, unit: &UnitName) -> Result<(), SystemdError> {
        self.systemctl("daemon-reload", unit, &["daemon-reload"], OPERATION_TIMEOUT)
            .await
            .map(drop)
    }

    async fn run(&self, operation: UnitOperation, unit: &UnitName) -> Result<(), SystemdError> {
        let verb = operation.verb();
        self.systemctl(verb, unit, &[verb, "--", unit.as_str()], OPERATION_TIMEOUT)
            .await
            .map(drop)
    }

    async fn observe(&self, unit: &UnitName) -> Result<UnitObservation, SystemdError> {
        let stdout = self
            .systemctl(
                "show",
                unit,
                &["show", "-p", PROPERTIES, "--", unit.as_str()],
                OBSERVE_TIMEOUT,
            )
            .await
            .map_err(|error| match error {
                // A read that hangs means the manager does not answer.
                SystemdError::TimedOut { unit, .. } => SystemdError::Unavailable {
                    scope: self.scope,
                    unit,
                    message: format!("systemctl show did not answer within {OBSERVE_TIMEOUT:?}"),
                },
                other => other,
            })?;
        parse_show(unit, &stdout)
    }
}

/// Parses `Key=Value` lines as printed by `systemctl show -p …` (in any order).
fn parse_show(unit: &UnitName, stdout: &str) -> Result<UnitObservation, SystemdError> {
    let unexpected = |message: String| SystemdError::UnexpectedOutput {
        unit: unit.to_string(),
        message,
    };
    let number = |key: &str, value: &str| {
        // systemd prints "[not set]" for numbers a unit type does not have.
        if value.is_empty() || value.starts_with('[') {
            return Ok(0);
        }
        value
            .parse::<u32>()
            .map_err(|_| unexpected(format!("{key}={value} is not a number")))
    };
    let mut observed = UnitObservation::default();
    let mut seen_active_state = false;
    for line in stdout.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        match key {
            "LoadState" => observed.load_state = value.to_owned(),
            "ActiveState" => {
                observed.active_state = value.to_owned();
                seen_active_state = true;
            }
            "SubState" => observed.sub_state = value.to_owned(),
            "MainPID" => observed.main_pid = number(key, value)?,
            "NRestarts" => observed.n_restarts = number(key, value)?,
            "Result" => observed.result = value.to_owned(),
            "UnitFileState" => observed.unit_file_state = value.to_owned(),
            "NeedDaemonReload" => observed.need_daemon_reload = value == "yes",
            "TriggeredBy" => {
                observed.triggered_by = value.split_whitespace().map(str::to_owned).collect();
            }
            "FragmentPath" => observed.fragment_path = value.to_owned(),
            _ => {}
        }
    }
    if !seen_active_state {
        return Err(unexpected(format!("no ActiveState in {stdout:?}")));
    }
    Ok(observed)
}

#[cfg(test)]
mod tests;
