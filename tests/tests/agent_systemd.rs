//! System tests of SystemdUnit resources: the real `fleetlet-agent` binary (standalone mode)
//! against a real systemd user manager, brought up by `deploy/dev/systemd-user.sh`.
//!
//! These tests fail, never skip, when no user manager answers. Every test uses unit names of its
//! own (a unique suffix) and removes its units again on drop, so tests run in parallel and leave
//! nothing behind. Unit files go to `~/.config/systemd/user`, which is in the user manager's
//! search path (the agent's default unit dir for the user scope).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fleetlet_manifests::{AgentStatus, ErrorReason, Phase, ResourceDetails, SystemdUnitDetails};
use fleetlet_tests::agent::{
    AgentDirs, AgentOptions, AgentProcess, file_resource, manifest, unique_agent_id, wait_for,
};
use serde_json::json;
use time::OffsetDateTime;

const AGENT: &str = "pi-systemd";
/// The resync interval the agents of these tests run with.
const RESYNC: Duration = Duration::from_millis(500);
/// How long a test waits for systemd or the agent to get somewhere. Only a bound on a failure
/// (a passing test never waits it out), so generous: systemd is slow on a loaded machine. What
/// must be fast is asserted on timestamps the agent or systemd recorded.
const WAIT: Duration = Duration::from_secs(30);

/// A long-running service that can be enabled.
fn sleeper(description: &str) -> String {
    format!(
        "[Unit]\nDescription={description}\n[Service]\nExecStart=/bin/sleep 100000\n\
         [Install]\nWantedBy=default.target\n"
    )
}

fn unit_resource(
    id: &str,
    name: &str,
    unit: &str,
    enabled: bool,
    state: &str,
) -> serde_json::Value {
    json!({
        "id": id,
        "kind": "SystemdUnit",
        "spec": {"name": name, "unit": unit, "enabled": enabled, "state": state},
    })
}

/// The user manager of `deploy/dev/systemd-user.sh`, and the units one test created in it.
struct UserSystemd {
    runtime_dir: String,
    unit_dir: PathBuf,
    units: Vec<String>,
}

impl UserSystemd {
    /// Fails loudly unless a user manager answers.
    fn connect() -> anyhow::Result<Self> {
        let runtime_dir = std::env::var("XDG_RUNTIME_DIR").context(
            "XDG_RUNTIME_DIR is not set: these tests need a systemd user manager; run \
             `set -a; eval \"$(deploy/dev/systemd-user.sh)\"; set +a` first",
        )?;
        let home = std::env::var("HOME").context("HOME is not set")?;
        let systemd = Self {
            runtime_dir,
            unit_dir: Path::new(&home).join(".config/systemd/user"),
            units: Vec::new(),
        };
        let state = systemd.systemctl(&["show", "-p", "SystemState", "--value"])?;
        if !matches!(state.trim(), "running" | "degraded") {
            bail!(
                "the systemd user manager is not running (SystemState={state:?}); run \
                 deploy/dev/systemd-user.sh"
            );
        }
        std::fs::create_dir_all(&systemd.unit_dir)?;
        Ok(systemd)
    }

    /// A unit name no other test uses; removed again when this value is dropped.
    fn unit(&mut self, stem: &str, suffix: &str) -> String {
        let name = format!("{}.{suffix}", unique_agent_id(&format!("fl-{stem}")));
        self.units.push(name.clone());
        name
    }

    /// Registers the same stem under another suffix (a timer's service).
    fn sibling(&mut self, unit: &str, suffix: &str) -> String {
        let stem = unit.rsplit_once('.').map_or(unit, |(stem, _)| stem);
        let name = format!("{stem}.{suffix}");
        self.units.push(name.clone());
        name
    }

    fn file(&self, unit: &str) -> PathBuf {
        self.unit_dir.join(unit)
    }

    /// Runs `systemctl --user ARGS` (bounded by 10 s) and returns its stdout.
    fn systemctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = Command::new("timeout")
            .args(["10", "systemctl", "--user"])
            .args(args)
            .env("XDG_RUNTIME_DIR", &self.runtime_dir)
            .output()
            .context("run systemctl")?;
        if !output.status.success() {
            bail!(
                "systemctl --user {args:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// systemd's own view of a unit.
    fn show(&self, unit: &str) -> anyhow::Result<HashMap<String, String>> {
        let stdout = self.systemctl(&[
            "show",
            "-p",
            "LoadState,ActiveState,SubState,MainPID,NRestarts,Result,UnitFileState",
            "--",
            unit,
        ])?;
        Ok(stdout
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .collect())
    }

    fn property(&self, unit: &str, key: &str) -> String {
        self.show(unit)
            .ok()
            .and_then(|properties| properties.get(key).cloned())
            .unwrap_or_default()
    }

    fn is_running(&self, unit: &str) -> bool {
        let properties = self.show(unit).unwrap_or_default();
        properties.get("ActiveState").map(String::as_str) == Some("active")
            && properties.get("SubState").map(String::as_str) == Some("running")
    }

    async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&Self) -> bool,
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        wait_for(what, timeout, || async { check(self).then_some(()) }).await?;
        Ok(started.elapsed())
    }

    /// Agent options for the user manager with unit files in the test's unit dir.
    fn agent_options(&self) -> AgentOptions {
        let mut options = AgentOptions::standalone(AGENT);
        options.env = vec![
            ("FLEETLET_SYSTEMD_SCOPE".into(), "user".into()),
            (
                "FLEETLET_UNIT_DIR".into(),
                self.unit_dir.display().to_string(),
            ),
            ("XDG_RUNTIME_DIR".into(), self.runtime_dir.clone()),
        ];
        options
    }
}

impl Drop for UserSystemd {
    fn drop(&mut self) {
        for unit in &self.units {
            let _ = self.systemctl(&["disable", "--now", "--", unit]);
            let _ = std::fs::remove_file(self.file(unit));
            let _ = self.systemctl(&["reset-failed", "--", unit]);
        }
        let _ = self.systemctl(&["daemon-reload"]);
    }
}

fn parse_status(stdout: &[u8]) -> anyhow::Result<AgentStatus> {
    serde_json::from_slice(stdout).with_context(|| {
        format!(
            "stdout is not an AgentStatus: {}",
            String::from_utf8_lossy(stdout)
        )
    })
}

fn unit_details(status: &AgentStatus, id: &str) -> anyhow::Result<SystemdUnitDetails> {
    match &status.resources[id].details {
        Some(ResourceDetails::SystemdUnit(details)) => Ok(details.clone()),
        other => bail!("resource {id} has no unit details: {other:?}"),
    }
}

#[tokio::test]
async fn a_started_enabled_service_runs_within_two_seconds_and_reports_systemds_own_values()
-> anyhow::Result<()> {
    let mut systemd = UserSystemd::connect()?;
    let unit = systemd.unit("kiosk", "service");
    let dirs = AgentDirs::new()?;
    dirs.write_manifest(&manifest(
        AGENT,
        vec![unit_resource(
            "kiosk",
            &unit,
            &sleeper("Kiosk"),
            true,
            "Started",
        )],
    ))?;
    let options = systemd.agent_options();
    let mut agent = AgentProcess::start(&dirs, &options)?;
    systemd
        .wait_until(
            "the unit to be active (running) and enabled",
            Duration::from_secs(30),
            |s| s.is_running(&unit) && s.property(&unit, "UnitFileState") == "enabled",
        )
        .await
        .with_context(|| agent.logs())?;
    // The two seconds by the agent's own clock, from its start to the unit created (written,
    // loaded, enabled and started): how often this test polls systemd does not count.
    let starting = agent
        .logged_at(&["agent starting"], Duration::from_secs(10))
        .await?;
    let created = agent
        .logged_at(&["ResourceCreated", "kiosk"], Duration::from_secs(10))
        .await?;
    let took = created - starting;
    eprintln!("agent start → unit created in {took}");
    assert!(took <= time::Duration::seconds(2), "took {took}");
    agent.terminate(Duration::from_secs(15))?;
    let pid = systemd.property(&unit, "MainPID");

    // A new agent finds the unit as it left it: nothing reloaded, nothing restarted, and the
    // details are systemd's own values.
    let output = options.run_once(&dirs)?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "not converged:\n{stderr}");
    let status = parse_status(&output.stdout)?;
    assert_eq!(status.resources["kiosk"].phase, Phase::Ready);
    let details = unit_details(&status, "kiosk")?;
    let shown = systemd.show(&unit)?;
    assert_eq!(details.active_state, shown["ActiveState"]);
    assert_eq!(details.sub_state, shown["SubState"]);
    assert_eq!(details.main_pid.to_string(), shown["MainPID"]);
    assert_eq!(details.n_restarts.to_string(), shown["NRestarts"]);
    assert_eq!(details.result.as_deref(), Some(shown["Result"].as_str()));
    assert_eq!(
        details.unit_file_state.as_deref(),
        Some(shown["UnitFileState"].as_str())
    );
    assert!(details.enabled);
    assert_eq!(
        shown["MainPID"], pid,
        "the unit was restarted by the new agent"
    );
    assert!(
        !stderr.contains("daemon-reload"),
        "reloaded without a change:\n{stderr}"
    );
    let text = std::fs::read_to_string(systemd.file(&unit))?;
    assert!(text.starts_with(&format!(
        "# Managed by fleetlet: agent={AGENT} resource=kiosk\n"
    )));
    Ok(())
}

#[tokio::test]
async fn changing_the_unit_text_rewrites_the_file_reloads_once_and_restarts_the_unit()
-> anyhow::Result<()> {
    let mut systemd = UserSystemd::connect()?;
    let unit = systemd.unit("change", "service");
    let dirs = AgentDirs::new()?;
    dirs.write_manifest(&manifest(
        AGENT,
        vec![unit_resource(
            "svc",
            &unit,
            &sleeper("version one"),
            true,
            "Started",
        )],
    ))?;
    let agent = AgentProcess::start(&dirs, &systemd.agent_options())?;
    systemd
        .wait_until("the unit to run", WAIT, |s| s.is_running(&unit))
        .await
        .with_context(|| agent.logs())?;
    let first_pid = systemd.property(&unit, "MainPID");
    let reloads = |agent: &AgentProcess| agent.count_log_lines(&["daemon-reload", &unit]);
    agent
        .wait_for_log(&["ResourceCreated", "svc"], WAIT)
        .await?;
    assert_eq!(reloads(&agent), 1);

    dirs.write_manifest(&manifest(
        AGENT,
        vec![unit_resource(
            "svc",
            &unit,
            &sleeper("version two"),
            true,
            "Started",
        )],
    ))?;
    systemd
        .wait_until("the unit to run with a new main PID", WAIT, |s| {
            s.is_running(&unit) && s.property(&unit, "MainPID") != first_pid
        })
        .await
        .with_context(|| agent.logs())?;
    agent
        .wait_for_log(&["ResourceUpdated", "svc"], WAIT)
        .await?;
    assert!(std::fs::read_to_string(systemd.file(&unit))?.contains("Description=version two"));
    // Later resyncs see the same text: still exactly one reload for the change.
    let passes_before = agent.count_log_lines(&["ResourceUpdated"]);
    tokio::time::sleep(RESYNC * 3).await;
    assert_eq!(agent.count_log_lines(&["ResourceUpdated"]), passes_before);
    assert_eq!(reloads(&agent), 2, "{}", agent.logs());
    Ok(())
}

#[tokio::test]
async fn a_unit_stopped_by_hand_is_started_again_and_one_in_state_stopped_stays_stopped()
-> anyhow::Result<()> {
    let mut systemd = UserSystemd::connect()?;
    let running = systemd.unit("drift", "service");
    let stopped = systemd.unit("parked", "service");
    let dirs = AgentDirs::new()?;
    dirs.write_manifest(&manifest(
        AGENT,
        vec![
            unit_resource(
                "running",
                &running,
                &sleeper("keeps running"),
                true,
                "Started",
            ),
            unit_resource(
                "parked",
                &stopped,
                &sleeper("stays stopped"),
                false,
                "Stopped",
            ),
        ],
    ))?;
    let agent = AgentProcess::start(&dirs, &systemd.agent_options())?;
    systemd
        .wait_until("the unit to run", WAIT, |s| s.is_running(&running))
        .await
        .with_context(|| agent.logs())?;
    agent
        .wait_for_log(&["ResourceCreated", "parked"], WAIT)
        .await?;

    // One resync interval, plus a margin for a pass that was just starting and a loaded machine,
    // from the moment the drift exists (systemctl returned) to the repair the agent logged (its
    // own timestamp, not when this test noticed it). The waits themselves are only bounds on a
    // failure, so they are generous.
    let within_one_resync = RESYNC + Duration::from_millis(1500);
    systemd.systemctl(&["stop", "--", &running])?;
    let stopped_at = OffsetDateTime::now_utc();
    systemd
        .wait_until(
            "the stopped unit to run again",
            Duration::from_secs(30),
            |s| s.is_running(&running),
        )
        .await
        .with_context(|| agent.logs())?;
    let repaired_at = agent
        .logged_at(
            &["ResourceRepaired", "running", "not running"],
            Duration::from_secs(10),
        )
        .await?;
    let took = repaired_at - stopped_at;
    eprintln!("started again {took} after the stop");
    assert!(
        took <= within_one_resync,
        "started again {took} after the stop"
    );

    assert_eq!(systemd.property(&stopped, "ActiveState"), "inactive");
    assert_eq!(systemd.property(&stopped, "UnitFileState"), "disabled");
    systemd.systemctl(&["start", "--", &stopped])?;
    let started_at = OffsetDateTime::now_utc();
    systemd
        .wait_until(
            "the unit started by hand to be stopped again",
            Duration::from_secs(30),
            |s| s.property(&stopped, "ActiveState") == "inactive",
        )
        .await
        .with_context(|| agent.logs())?;
    let repaired_at = agent
        .logged_at(
            &["ResourceRepaired", "parked", "was running"],
            Duration::from_secs(10),
        )
        .await?;
    let took = repaired_at - started_at;
    eprintln!("stopped again {took} after the start by hand");
    assert!(
        took <= within_one_resync,
        "stopped again {took} after the start by hand"
    );

    // The repair is counted in the status, with what drifted (the manager logs it from there).
    let status = wait_for("the repair in the agent's status", WAIT, || async {
        dirs.stored_status(AGENT)
            .filter(|s| s.resources["running"].repairs.is_some())
    })
    .await?;
    let repairs = status.resources["running"]
        .repairs
        .clone()
        .context("repairs")?;
    assert_eq!(repairs.count, 1);
    assert!(
        repairs.last_drift.contains("not running"),
        "{}",
        repairs.last_drift
    );
    Ok(())
}

#[tokio::test]
async fn a_timer_with_its_service_fires_and_both_converge() -> anyhow::Result<()> {
    let mut systemd = UserSystemd::connect()?;
    let timer = systemd.unit("tick", "timer");
    let service = systemd.sibling(&timer, "service");
    let dirs = AgentDirs::new()?;
    let ticks = dirs.root().join("ticks");
    let timer_text = "[Timer]\nOnActiveSec=1s\nOnUnitActiveSec=1s\nAccuracySec=100ms\n\
                      [Install]\nWantedBy=timers.target\n";
    let service_text = format!(
        "[Service]\nType=oneshot\nExecStart=/usr/bin/touch {}\n",
        ticks.display()
    );
    dirs.write_manifest(&manifest(
        AGENT,
        vec![
            unit_resource("tick-timer", &timer, timer_text, true, "Started"),
            unit_resource("tick", &service, &service_text, false, "Stopped"),
        ],
    ))?;
    let mut agent = AgentProcess::start(&dirs, &systemd.agent_options())?;
    systemd
        .wait_until("the timer to wait", WAIT, |s| {
            s.property(&timer, "ActiveState") == "active"
                && s.property(&timer, "SubState") == "waiting"
                && s.property(&timer, "UnitFileState") == "enabled"
        })
        .await
        .with_context(|| agent.logs())?;
    // The timer fires the service, and keeps doing so while the agent resyncs.
    for round in 0..2 {
        wait_for(
            &format!("the timer's service to run (round {round})"),
            WAIT,
            || async { ticks.exists().then_some(()) },
        )
        .await
        .with_context(|| agent.logs())?;
        std::fs::remove_file(&ticks)?;
    }
    assert_eq!(systemd.property(&service, "Result"), "success");
    agent.terminate(Duration::from_secs(15))?;

    let output = systemd.agent_options().run_once(&dirs)?;
    let status = parse_status(&output.stdout)?;
    assert_eq!(status.resources["tick-timer"].phase, Phase::Ready);
    assert_eq!(status.resources["tick"].phase, Phase::Ready);
    assert_eq!(unit_details(&status, "tick-timer")?.sub_state, "waiting");
    Ok(())
}

#[tokio::test]
async fn a_unit_that_fails_to_start_is_unit_failed_with_its_result_backs_off_and_blocks_nothing()
-> anyhow::Result<()> {
    let mut systemd = UserSystemd::connect()?;
    let missing = systemd.unit("missing", "service");
    let exits = systemd.unit("exits", "service");
    let dirs = AgentDirs::new()?;
    let motd = dirs.root().join("motd");
    dirs.write_manifest(&manifest(
        AGENT,
        vec![
            unit_resource(
                "missing",
                &missing,
                "[Service]\nExecStart=/nonexistent/fleetlet-no-such-program\n",
                false,
                "Started",
            ),
            unit_resource(
                "exits",
                &exits,
                "[Service]\nExecStart=/bin/false\n",
                false,
                "Started",
            ),
            file_resource("motd", &motd, "still converges\n", "0644"),
        ],
    ))?;
    let options = systemd.agent_options();
    let output = options.run_once(&dirs)?;
    assert!(!output.status.success());
    let status = parse_status(&output.stdout)?;
    assert_eq!(status.resources["motd"].phase, Phase::Ready);
    assert_eq!(std::fs::read_to_string(&motd)?, "still converges\n");
    for id in ["missing", "exits"] {
        let resource = &status.resources[id];
        assert_eq!(resource.phase, Phase::Failed, "{id}");
        let error = resource.error.as_ref().context("an error")?;
        assert_eq!(
            error.reason,
            ErrorReason::UnitFailed,
            "{id}: {}",
            error.message
        );
        assert!(
            error.message.contains("Result=exit-code"),
            "{id}: {}",
            error.message
        );
        assert!(resource.retry_after.is_some(), "{id}");
    }

    // A running agent goes on retrying (the store remembers the failure of the run above) with
    // growing delays, counted from each failure: 2 s after the second, 4 s after the third.
    let agent = AgentProcess::start(&dirs, &options)?;
    let timeout = Duration::from_secs(20);
    let mut logged = Vec::new();
    for failures in 2..=4 {
        let needle = format!("failures={failures}");
        logged.push(
            agent
                .logged_at(&["still failing", "exits", &needle], timeout)
                .await?,
        );
    }
    eprintln!("failures 2, 3 and 4 logged at {logged:?}");
    let (second_delay, third_delay) = (logged[1] - logged[0], logged[2] - logged[1]);
    assert!(second_delay >= time::Duration::seconds(2), "{logged:?}");
    assert!(third_delay >= time::Duration::seconds(4), "{logged:?}");
    // The other failing unit is retried on the same schedule, independently.
    agent
        .wait_for_log(&["still failing", "missing", "failures=4"], WAIT)
        .await?;
    Ok(())
}

#[tokio::test]
async fn removing_the_resource_stops_disables_deletes_and_reloads() -> anyhow::Result<()> {
    let mut systemd = UserSystemd::connect()?;
    let unit = systemd.unit("gone", "service");
    let dirs = AgentDirs::new()?;
    let keep = dirs.root().join("keep");
    dirs.write_manifest(&manifest(
        AGENT,
        vec![
            unit_resource("gone", &unit, &sleeper("to be removed"), true, "Started"),
            file_resource("keep", &keep, "x", "0644"),
        ],
    ))?;
    let agent = AgentProcess::start(&dirs, &systemd.agent_options())?;
    systemd
        .wait_until("the unit to run", WAIT, |s| s.is_running(&unit))
        .await
        .with_context(|| agent.logs())?;
    let wants = systemd.unit_dir.join("default.target.wants").join(&unit);
    assert!(wants.symlink_metadata().is_ok(), "the unit was not enabled");
    agent
        .wait_for_log(&["ResourceCreated", "gone"], WAIT)
        .await?;

    dirs.write_manifest(&manifest(
        AGENT,
        vec![file_resource("keep", &keep, "x", "0644")],
    ))?;
    agent
        .wait_for_log(&["ResourceDeleted", "gone"], WAIT)
        .await?;
    assert!(
        !systemd.file(&unit).exists(),
        "the unit file is still there"
    );
    assert!(
        wants.symlink_metadata().is_err(),
        "the unit is still enabled"
    );
    assert_eq!(systemd.property(&unit, "LoadState"), "not-found");
    assert_eq!(systemd.property(&unit, "ActiveState"), "inactive");
    assert_eq!(
        agent.count_log_lines(&["daemon-reload", &unit]),
        2,
        "one reload to load the unit and one after removing it:\n{}",
        agent.logs()
    );
    Ok(())
}

#[tokio::test]
async fn a_unit_file_the_agent_did_not_write_is_never_modified_or_removed() -> anyhow::Result<()> {
    let mut systemd = UserSystemd::connect()?;
    let foreign_unit = systemd.unit("foreign", "service");
    let taken_unit = systemd.unit("taken", "service");
    let foreign_text =
        "[Unit]\nDescription=written by an operator\n[Service]\nExecStart=/bin/sleep 100000\n";
    std::fs::write(systemd.file(&foreign_unit), foreign_text)?;
    systemd.systemctl(&["daemon-reload"])?;

    // A pre-existing file at the target path: Conflict, untouched, not started.
    let dirs = AgentDirs::new()?;
    let options = systemd.agent_options();
    dirs.write_manifest(&manifest(
        AGENT,
        vec![unit_resource(
            "foreign",
            &foreign_unit,
            &sleeper("fleetlet's"),
            true,
            "Started",
        )],
    ))?;
    let output = options.run_once(&dirs)?;
    let status = parse_status(&output.stdout)?;
    let error = status.resources["foreign"]
        .error
        .as_ref()
        .context("an error")?;
    assert_eq!(error.reason, ErrorReason::Conflict, "{}", error.message);
    assert_eq!(
        std::fs::read_to_string(systemd.file(&foreign_unit))?,
        foreign_text
    );
    assert_eq!(systemd.property(&foreign_unit, "ActiveState"), "inactive");

    // A file the agent wrote and an operator then replaced is not the agent's any more: the
    // agent neither rewrites it nor removes it when the resource goes away.
    dirs.write_manifest(&manifest(
        AGENT,
        vec![unit_resource(
            "taken",
            &taken_unit,
            &sleeper("fleetlet's"),
            false,
            "Stopped",
        )],
    ))?;
    let agent = AgentProcess::start(&dirs, &options)?;
    agent
        .wait_for_log(&["ResourceCreated", "taken"], WAIT)
        .await?;
    std::fs::write(systemd.file(&taken_unit), foreign_text)?;
    agent
        .wait_for_log(
            &["ResourceFailed", "taken", "not written by this agent"],
            WAIT,
        )
        .await?;
    assert_eq!(
        std::fs::read_to_string(systemd.file(&taken_unit))?,
        foreign_text
    );
    dirs.write_manifest(&manifest(AGENT, vec![]))?;
    agent
        .wait_for_log(&["ResourceReleased", "taken"], WAIT)
        .await?;
    assert_eq!(
        std::fs::read_to_string(systemd.file(&taken_unit))?,
        foreign_text
    );
    Ok(())
}

#[tokio::test]
async fn without_a_reachable_systemd_units_fail_with_systemd_unavailable() -> anyhow::Result<()> {
    let mut systemd = UserSystemd::connect()?;
    let unit = systemd.unit("nosystemd", "service");
    let dirs = AgentDirs::new()?;
    dirs.write_manifest(&manifest(
        AGENT,
        vec![unit_resource(
            "kiosk",
            &unit,
            &sleeper("x"),
            true,
            "Started",
        )],
    ))?;
    // FLEETLET_SYSTEMD_SCOPE=none (the fixture's default).
    let output = AgentOptions::standalone(AGENT).run_once(&dirs)?;
    let status = parse_status(&output.stdout)?;
    let error = status.resources["kiosk"]
        .error
        .as_ref()
        .context("an error")?;
    assert_eq!(
        error.reason,
        ErrorReason::SystemdUnavailable,
        "{}",
        error.message
    );

    // The user scope, with no manager behind the runtime dir.
    let empty = tempfile::tempdir()?;
    let mut options = systemd.agent_options();
    for (key, value) in &mut options.env {
        if key == "XDG_RUNTIME_DIR" {
            *value = empty.path().display().to_string();
        }
    }
    let output = options.run_once(&dirs)?;
    let status = parse_status(&output.stdout)?;
    let error = status.resources["kiosk"]
        .error
        .as_ref()
        .context("an error")?;
    assert_eq!(
        error.reason,
        ErrorReason::SystemdUnavailable,
        "{}",
        error.message
    );
    Ok(())
}

#[tokio::test]
async fn an_invalid_unit_name_is_refused_by_the_agent() -> anyhow::Result<()> {
    let systemd = UserSystemd::connect()?;
    let dirs = AgentDirs::new()?;
    dirs.write_manifest(&manifest(
        AGENT,
        vec![unit_resource(
            "bad",
            "../../escape.service",
            &sleeper("x"),
            true,
            "Started",
        )],
    ))?;
    let output = systemd.agent_options().run_once(&dirs)?;
    assert!(!output.status.success());
    let status = parse_status(&output.stdout)?;
    assert!(status.resources.is_empty(), "{:?}", status.resources);
    assert!(
        status
            .conditions
            .iter()
            .any(|c| format!("{:?}", c.type_) == "ManifestRejected"
                && c.message.contains("resources[0].spec.name")),
        "{:?}",
        status.conditions
    );
    assert!(!systemd.unit_dir.join("../../escape.service").exists());
    Ok(())
}

#[tokio::test]
async fn enabled_true_on_a_unit_without_an_install_section_fails_with_unit_not_installable()
-> anyhow::Result<()> {
    let mut systemd = UserSystemd::connect()?;
    let bare = systemd.unit("bare", "service");
    let commented = systemd.unit("commented", "service");
    let plain = systemd.unit("plain", "service");
    let service = "[Service]\nExecStart=/bin/sleep 100000\n";
    let dirs = AgentDirs::new()?;
    dirs.write_manifest(&manifest(
        AGENT,
        vec![
            unit_resource("bare", &bare, service, true, "Started"),
            unit_resource(
                "commented",
                &commented,
                &format!("{service}[Install]\n# WantedBy=default.target\n"),
                true,
                "Started",
            ),
            // The same unit without `enabled: true` is what the operator can have.
            unit_resource("plain", &plain, service, false, "Started"),
        ],
    ))?;
    let output = systemd.agent_options().run_once(&dirs)?;
    assert!(!output.status.success());
    let status = parse_status(&output.stdout)?;
    for (id, unit) in [("bare", &bare), ("commented", &commented)] {
        let resource = &status.resources[id];
        assert_eq!(resource.phase, Phase::Failed, "{id}");
        let error = resource.error.as_ref().context("an error")?;
        assert_eq!(
            error.reason,
            ErrorReason::UnitNotInstallable,
            "{id}: {}",
            error.message
        );
        assert!(
            error.message.contains(unit.as_str()) && error.message.contains("[Install]"),
            "{id}: {}",
            error.message
        );
        // Refused before anything was done: no file, nothing loaded or running.
        assert!(!systemd.file(unit).exists(), "{id}");
        assert!(!systemd.is_running(unit), "{id}");
    }
    // systemd agrees with the agent's reading of the text: without [Install] a unit is static.
    assert_eq!(status.resources["plain"].phase, Phase::Ready);
    let details = unit_details(&status, "plain")?;
    assert_eq!(details.unit_file_state.as_deref(), Some("static"));
    assert!(!details.enabled);
    assert!(systemd.is_running(&plain));
    assert_eq!(systemd.property(&plain, "UnitFileState"), "static");
    Ok(())
}
