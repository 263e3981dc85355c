//! Unit tests of the SystemdUnit reconciler against the recording fake manager: which systemd
//! calls each situation leads to, in which order, and what is reported.

use std::path::PathBuf;
use std::time::Duration;

use fleetlet_manifests::{Resource, ResourceSpec};
use serde_json::json;

use super::fake::{Call, FakeSystemd};
use super::*;

struct Fixture {
    _dir: tempfile::TempDir,
    unit_dir: PathBuf,
    systemd: FakeSystemd,
    reconciler: SystemdUnitReconciler<FakeSystemd>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let unit_dir = dir.path().join("units");
    let systemd = FakeSystemd::new(&unit_dir);
    let reconciler = SystemdUnitReconciler::with_manager(
        Some((systemd.clone(), unit_dir.clone())),
        "pi-1",
        Duration::ZERO,
    );
    Fixture {
        _dir: dir,
        unit_dir,
        systemd,
        reconciler,
    }
}

const SLEEPER: &str = "[Unit]\nDescription=Kiosk\n[Service]\nExecStart=/usr/bin/sleep infinity\n\
                       [Install]\nWantedBy=default.target\n";

fn unit_resource(id: &str, name: &str, unit: &str, enabled: bool, state: &str) -> Resource {
    serde_json::from_value(json!({
        "id": id,
        "kind": "SystemdUnit",
        "spec": {"name": name, "unit": unit, "enabled": enabled, "state": state},
    }))
    .expect("valid resource")
}

fn spec_of(resource: &Resource) -> &SystemdUnitSpec {
    match &resource.spec {
        ResourceSpec::SystemdUnit(spec) => spec,
        other => panic!("not a unit spec: {other:?}"),
    }
}

fn owned_of(applied: &Applied) -> OwnedUnit {
    match &applied.owned {
        Owned::SystemdUnit(owned) => owned.clone(),
        other => panic!("not a unit: {other:?}"),
    }
}

fn details_of_applied(applied: &Applied) -> SystemdUnitDetails {
    match &applied.details {
        Some(ResourceDetails::SystemdUnit(details)) => details.clone(),
        other => panic!("no unit details: {other:?}"),
    }
}

fn run(operation: UnitOperation, unit: &str) -> Call {
    Call::Run(operation, unit.to_owned())
}

impl Fixture {
    /// Applies `resource`, as the engine would after `previous` was applied successfully.
    async fn apply(
        &self,
        resource: &Resource,
        previous: Option<(&Resource, &Applied)>,
    ) -> Result<Applied, SystemdUnitError> {
        let previous =
            previous.map(|(resource, applied)| (resource.spec_hash(), owned_of(applied)));
        let spec_hash = resource.spec_hash();
        self.reconciler
            .apply(crate::reconcile::Target {
                id: &resource.id,
                spec: spec_of(resource),
                spec_hash: &spec_hash,
                previous: previous
                    .as_ref()
                    .map(|(spec_hash, owned)| Previous { spec_hash, owned }),
            })
            .await
    }

    fn file(&self, name: &str) -> PathBuf {
        self.unit_dir.join(name)
    }
}

#[tokio::test]
async fn a_new_unit_is_written_reloaded_once_enabled_and_started() {
    let fx = fixture();
    let kiosk = unit_resource("kiosk", "kiosk.service", SLEEPER, true, "Started");
    let applied = fx.apply(&kiosk, None).await.expect("apply");

    assert_eq!(applied.change, Change::Created);
    assert_eq!(
        fx.systemd.take_calls(),
        [
            Call::Reload,
            run(UnitOperation::Enable, "kiosk.service"),
            run(UnitOperation::Start, "kiosk.service"),
        ]
    );
    let text = std::fs::read_to_string(fx.file("kiosk.service")).expect("unit file");
    assert_eq!(
        text.lines().next(),
        Some("# Managed by fleetlet: agent=pi-1 resource=kiosk")
    );
    assert!(text.ends_with(SLEEPER));
    let details = details_of_applied(&applied);
    assert_eq!(
        (details.active_state.as_str(), details.sub_state.as_str()),
        ("active", "running")
    );
    assert!(details.enabled);
    assert_ne!(details.main_pid, 0);
    assert_eq!(details.unit_file_state.as_deref(), Some("enabled"));
    assert_eq!(owned_of(&applied).name, "kiosk.service");
}

#[tokio::test]
async fn an_unchanged_unit_is_neither_reloaded_nor_restarted() {
    let fx = fixture();
    let kiosk = unit_resource("kiosk", "kiosk.service", SLEEPER, true, "Started");
    let first = fx.apply(&kiosk, None).await.expect("apply");
    let pid = details_of_applied(&first).main_pid;
    fx.systemd.take_calls();

    let again = fx
        .apply(&kiosk, Some((&kiosk, &first)))
        .await
        .expect("apply");
    assert_eq!(again.change, Change::Unchanged);
    assert_eq!(fx.systemd.take_calls(), []);
    assert_eq!(details_of_applied(&again).main_pid, pid);

    // An agent that lost its store (no previous record) recognises its own file by the marker.
    let after_restart = fx.apply(&kiosk, None).await.expect("apply");
    assert_eq!(after_restart.change, Change::Unchanged);
    assert_eq!(fx.systemd.take_calls(), []);
}

#[tokio::test]
async fn changed_text_rewrites_the_file_reloads_once_and_restarts() {
    let fx = fixture();
    let v1 = unit_resource("kiosk", "kiosk.service", SLEEPER, true, "Started");
    let first = fx.apply(&v1, None).await.expect("apply");
    let pid = details_of_applied(&first).main_pid;
    fx.systemd.take_calls();

    let text = SLEEPER.replace("Kiosk", "Kiosk v2");
    let v2 = unit_resource("kiosk", "kiosk.service", &text, true, "Started");
    let updated = fx.apply(&v2, Some((&v1, &first))).await.expect("apply");
    assert_eq!(updated.change, Change::Updated);
    assert_eq!(
        fx.systemd.take_calls(),
        [Call::Reload, run(UnitOperation::Restart, "kiosk.service")]
    );
    assert!(
        std::fs::read_to_string(fx.file("kiosk.service"))
            .expect("read")
            .contains("Kiosk v2")
    );
    assert_ne!(details_of_applied(&updated).main_pid, pid);

    // A changed text on a unit that should stay stopped is loaded, not started.
    let stopped = unit_resource("kiosk", "kiosk.service", SLEEPER, true, "Stopped");
    fx.apply(&stopped, Some((&v2, &updated)))
        .await
        .expect("apply");
    assert_eq!(
        fx.systemd.take_calls(),
        [Call::Reload, run(UnitOperation::Stop, "kiosk.service")]
    );
}

#[tokio::test]
async fn a_unit_stopped_by_hand_is_started_again_and_reported_as_repaired() {
    let fx = fixture();
    let kiosk = unit_resource("kiosk", "kiosk.service", SLEEPER, true, "Started");
    let first = fx.apply(&kiosk, None).await.expect("apply");
    fx.systemd.take_calls();

    fx.systemd.stop_by_hand("kiosk.service");
    let repaired = fx
        .apply(&kiosk, Some((&kiosk, &first)))
        .await
        .expect("apply");
    assert!(
        matches!(&repaired.change, Change::Repaired { drift } if drift.contains("not running")),
        "{:?}",
        repaired.change
    );
    assert_eq!(
        fx.systemd.take_calls(),
        [run(UnitOperation::Start, "kiosk.service")]
    );
    assert_eq!(details_of_applied(&repaired).active_state, "active");
}

#[tokio::test]
async fn state_stopped_keeps_a_unit_stopped_and_disabled() {
    let fx = fixture();
    let started = unit_resource("kiosk", "kiosk.service", SLEEPER, true, "Started");
    let first = fx.apply(&started, None).await.expect("apply");
    fx.systemd.take_calls();

    let stopped = unit_resource("kiosk", "kiosk.service", SLEEPER, false, "Stopped");
    let applied = fx
        .apply(&stopped, Some((&started, &first)))
        .await
        .expect("apply");
    assert_eq!(applied.change, Change::Updated);
    assert_eq!(
        fx.systemd.take_calls(),
        [
            run(UnitOperation::Disable, "kiosk.service"),
            run(UnitOperation::Stop, "kiosk.service"),
        ]
    );
    let again = fx
        .apply(&stopped, Some((&stopped, &applied)))
        .await
        .expect("apply");
    assert_eq!(again.change, Change::Unchanged);
    assert_eq!(fx.systemd.take_calls(), []);
    let details = details_of_applied(&again);
    assert_eq!(details.active_state, "inactive");
    assert!(!details.enabled);
}

#[tokio::test]
async fn enabled_true_without_an_install_section_fails_before_anything_is_done() {
    let fx = fixture();
    let text = "[Service]\nExecStart=/usr/bin/sleep infinity\n";
    let resource = unit_resource("plain", "plain.service", text, true, "Started");
    let error = fx
        .apply(&resource, None)
        .await
        .expect_err("not installable");
    assert_eq!(error.reason(), ErrorReason::UnitNotInstallable);
    let message = error.to_string();
    assert!(
        message.contains("plain.service")
            && message.contains("[Install]")
            && message.contains("enabled: false"),
        "{message}"
    );
    // Nothing written, loaded or started: the manifest has to change first.
    assert_eq!(fx.systemd.take_calls(), []);
    assert!(!fx.file("plain.service").exists());

    // An [Install] section that installs nothing is no better.
    let empty =
        "[Service]\nExecStart=/usr/bin/sleep infinity\n[Install]\n# WantedBy=default.target\n";
    let resource = unit_resource("plain", "plain.service", empty, true, "Started");
    let error = fx
        .apply(&resource, None)
        .await
        .expect_err("not installable");
    assert_eq!(error.reason(), ErrorReason::UnitNotInstallable);
}

#[tokio::test]
async fn a_unit_without_install_section_and_enabled_false_is_started_and_ready() {
    let fx = fixture();
    let text = "[Service]\nExecStart=/usr/bin/sleep infinity\n";
    let resource = unit_resource("plain", "plain.service", text, false, "Started");
    let first = fx.apply(&resource, None).await.expect("apply");
    assert_eq!(
        fx.systemd.take_calls(),
        [Call::Reload, run(UnitOperation::Start, "plain.service")]
    );
    let again = fx
        .apply(&resource, Some((&resource, &first)))
        .await
        .expect("apply");
    assert_eq!(again.change, Change::Unchanged);
    assert_eq!(
        details_of_applied(&again).unit_file_state.as_deref(),
        Some("static")
    );
}

#[tokio::test]
async fn a_unit_systemd_calls_static_fails_when_it_should_be_enabled() {
    let fx = fixture();
    let kiosk = unit_resource("kiosk", "kiosk.service", SLEEPER, true, "Started");
    let applied = fx.apply(&kiosk, None).await.expect("apply");
    fx.systemd.take_calls();
    // systemd's verdict differs from what the text suggests (a later `WantedBy=` emptied the
    // list, say): its word counts.
    let mut observed = fx.systemd.observed("kiosk.service").expect("known unit");
    observed.unit_file_state = "static".into();
    fx.systemd.replace("kiosk.service", observed);
    let error = fx
        .apply(&kiosk, Some((&kiosk, &applied)))
        .await
        .expect_err("not installable");
    assert_eq!(error.reason(), ErrorReason::UnitNotInstallable);
    assert!(error.to_string().contains("static"), "{error}");
}

#[test]
fn an_install_section_counts_only_when_it_installs_the_unit_somewhere() {
    for (text, expected) in [
        ("[Service]\nExecStart=/bin/true\n", false),
        ("[Service]\nExecStart=/bin/true\n[Install]\n", false),
        ("[Install]\n# WantedBy=default.target\n", false),
        ("[Install]\nWantedBy=\n", false),
        ("[Unit]\nWantedBy=default.target\n", false),
        ("[Install]\nWantedBy=default.target\n", true),
        ("[Install]\n  RequiredBy = multi-user.target\n", true),
        ("[Install]\nAlias=kiosk-alias.service\n", true),
        (
            "[Install]\nAlso=kiosk.socket\n[Service]\nExecStart=/bin/true\n",
            true,
        ),
    ] {
        assert_eq!(installable(text), expected, "{text:?}");
    }
}

#[tokio::test]
async fn a_unit_that_fails_to_start_is_unit_failed_with_systemds_result() {
    let fx = fixture();
    fx.systemd.fail_starts("broken.service", "exit-code");
    let broken = unit_resource(
        "broken",
        "broken.service",
        "[Service]\nExecStart=/nonexistent\n",
        false,
        "Started",
    );
    let error = fx.apply(&broken, None).await.expect_err("fails");
    assert_eq!(error.reason(), ErrorReason::UnitFailed);
    assert!(error.to_string().contains("Result=exit-code"), "{error}");

    // The retry (the engine decides when) clears the failed state first and tries again.
    fx.systemd.take_calls();
    let error = fx.apply(&broken, None).await.expect_err("fails again");
    assert_eq!(error.reason(), ErrorReason::UnitFailed);
    assert_eq!(
        fx.systemd.take_calls(),
        [
            run(UnitOperation::ResetFailed, "broken.service"),
            run(UnitOperation::Start, "broken.service"),
        ]
    );
}

#[tokio::test]
async fn removal_stops_disables_deletes_the_file_then_reloads() {
    let fx = fixture();
    let kiosk = unit_resource("kiosk", "kiosk.service", SLEEPER, true, "Started");
    let applied = fx.apply(&kiosk, None).await.expect("apply");
    fx.systemd.take_calls();

    let deleted = fx
        .reconciler
        .delete(&kiosk.id, &owned_of(&applied))
        .await
        .expect("delete");
    assert_eq!(deleted, Deleted::Removed);
    assert_eq!(
        fx.systemd.take_calls(),
        [
            run(UnitOperation::Stop, "kiosk.service"),
            run(UnitOperation::Disable, "kiosk.service"),
            Call::Reload,
        ]
    );
    assert!(!fx.file("kiosk.service").exists());
    assert_eq!(
        fx.systemd.observed("kiosk.service").map(|o| o.load_state),
        None,
        "the unit is unloaded after the reload"
    );

    // Deleting again, or what was never applied, is fine and touches nothing.
    let again = fx
        .reconciler
        .delete(&kiosk.id, &owned_of(&applied))
        .await
        .expect("delete");
    assert_eq!(again, Deleted::AlreadyGone);
    assert_eq!(fx.systemd.take_calls(), []);
}

#[tokio::test]
async fn a_unit_file_the_agent_did_not_write_is_never_modified_or_removed() {
    let fx = fixture();
    std::fs::create_dir_all(&fx.unit_dir).expect("mkdir");
    let foreign = "[Service]\nExecStart=/usr/bin/true\n";
    std::fs::write(fx.file("kiosk.service"), foreign).expect("write");

    let kiosk = unit_resource("kiosk", "kiosk.service", SLEEPER, true, "Started");
    let error = fx.apply(&kiosk, None).await.expect_err("conflict");
    assert_eq!(error.reason(), ErrorReason::Conflict);
    assert_eq!(
        std::fs::read_to_string(fx.file("kiosk.service")).expect("read"),
        foreign
    );
    assert_eq!(fx.systemd.take_calls(), []);

    // Another resource's marker is not this resource's either.
    let other = unit_resource("other", "other.service", SLEEPER, true, "Started");
    fx.apply(&other, None).await.expect("apply");
    let thief = unit_resource("thief", "other.service", SLEEPER, true, "Started");
    let error = fx.apply(&thief, None).await.expect_err("conflict");
    assert_eq!(error.reason(), ErrorReason::Conflict);

    // A record claiming the file (lost marker: replaced by hand) does not make it deletable.
    fx.systemd.take_calls();
    let claimed = OwnedUnit {
        name: "kiosk.service".into(),
        path: fx.file("kiosk.service").display().to_string(),
        sha256: String::new(),
    };
    let deleted = fx
        .reconciler
        .delete(&kiosk.id, &claimed)
        .await
        .expect("delete");
    assert!(matches!(deleted, Deleted::Released { .. }), "{deleted:?}");
    assert!(fx.file("kiosk.service").exists());
    assert_eq!(fx.systemd.take_calls(), []);
}

#[tokio::test]
async fn a_timer_triggered_service_in_state_stopped_is_left_to_its_timer() {
    let fx = fixture();
    let timer = unit_resource(
        "tick-timer",
        "tick.timer",
        "[Timer]\nOnActiveSec=1s\n[Install]\nWantedBy=timers.target\n",
        true,
        "Started",
    );
    fx.apply(&timer, None).await.expect("timer");
    let service = unit_resource(
        "tick",
        "tick.service",
        "[Service]\nType=oneshot\nExecStart=/usr/bin/true\n",
        false,
        "Stopped",
    );
    let applied = fx.apply(&service, None).await.expect("service");
    fx.systemd.take_calls();

    // The timer fired and the service runs: that is not drift.
    {
        let mut observed = fx.systemd.observed("tick.service").expect("loaded");
        observed.active_state = "activating".into();
        observed.triggered_by = vec!["tick.timer".into()];
        fx.systemd.replace("tick.service", observed);
    }
    let again = fx
        .apply(&service, Some((&service, &applied)))
        .await
        .expect("apply");
    assert_eq!(again.change, Change::Unchanged);
    assert_eq!(fx.systemd.take_calls(), []);
}

#[tokio::test]
async fn without_systemd_or_with_an_unreachable_manager_units_are_systemd_unavailable() {
    let none: SystemdUnitReconciler<FakeSystemd> =
        SystemdUnitReconciler::with_manager(None, "pi-1", Duration::ZERO);
    let kiosk = unit_resource("kiosk", "kiosk.service", SLEEPER, true, "Started");
    let error = none
        .apply(crate::reconcile::Target {
            id: &kiosk.id,
            spec: spec_of(&kiosk),
            spec_hash: &kiosk.spec_hash(),
            previous: None,
        })
        .await
        .expect_err("no systemd");
    assert_eq!(error.reason(), ErrorReason::SystemdUnavailable);

    let fx = fixture();
    fx.systemd.set_unreachable(true);
    let error = fx.apply(&kiosk, None).await.expect_err("unreachable");
    assert_eq!(error.reason(), ErrorReason::SystemdUnavailable);
}

#[test]
fn unit_names_are_checked_again_in_the_agent() {
    for bad in [
        "../escape.service",
        "a/b.service",
        "-x.service",
        "kiosk",
        ".hidden.service",
    ] {
        let error = check_unit_name(bad).expect_err(bad);
        assert_eq!(error.reason(), ErrorReason::InvalidSpec, "{bad}");
    }
    assert!(check_unit_name("getty@tty1.service").is_ok());
}

#[tokio::test]
async fn renaming_the_unit_removes_the_old_one() {
    let fx = fixture();
    let old = unit_resource("kiosk", "kiosk.service", SLEEPER, true, "Started");
    let applied = fx.apply(&old, None).await.expect("apply");
    let new = unit_resource("kiosk", "kiosk2.service", SLEEPER, true, "Started");
    fx.apply(&new, Some((&old, &applied))).await.expect("apply");
    assert!(!fx.file("kiosk.service").exists());
    assert!(fx.file("kiosk2.service").exists());
    assert_eq!(fx.systemd.observed("kiosk.service"), None);
}

#[tokio::test]
async fn a_unit_file_replaced_by_a_link_to_a_file_outside_is_never_followed() {
    let fx = fixture();
    let kiosk = unit_resource("kiosk", "kiosk.service", SLEEPER, true, "Started");
    let applied = fx.apply(&kiosk, None).await.expect("apply");
    let ours = std::fs::read_to_string(fx.file("kiosk.service")).expect("read");

    // Outside the unit dir, a file that carries this resource's marker: read through the link it
    // would pass for the agent's own file.
    let outside = fx._dir.path().join("outside.service");
    std::fs::write(&outside, &ours).expect("write");
    std::fs::remove_file(fx.file("kiosk.service")).expect("rm");
    std::os::unix::fs::symlink(&outside, fx.file("kiosk.service")).expect("symlink");
    fx.systemd.take_calls();

    let changed = unit_resource(
        "kiosk",
        "kiosk.service",
        &format!("{SLEEPER}# v2\n"),
        true,
        "Started",
    );
    let error = fx
        .apply(&changed, Some((&kiosk, &applied)))
        .await
        .expect_err("a link is not the agent's file");
    assert_eq!(error.reason(), ErrorReason::Conflict);
    let deleted = fx
        .reconciler
        .delete(&kiosk.id, &owned_of(&applied))
        .await
        .expect("delete");
    assert!(matches!(deleted, Deleted::Released { .. }), "{deleted:?}");
    assert_eq!(std::fs::read_to_string(&outside).expect("read"), ours);
    assert!(
        std::fs::symlink_metadata(fx.file("kiosk.service"))
            .expect("stat")
            .file_type()
            .is_symlink()
    );
    assert_eq!(fx.systemd.take_calls(), []);
}

#[test]
fn the_unit_file_writer_refuses_a_link_and_the_remover_leaves_it() {
    let fx = fixture();
    std::fs::create_dir_all(&fx.unit_dir).expect("mkdir");
    let outside = fx._dir.path().join("outside.service");
    std::fs::write(&outside, "precious").expect("write");
    let path = fx.file("kiosk.service");
    std::os::unix::fs::symlink(&outside, &path).expect("symlink");

    // Called directly, past the marker check: the confined writer itself refuses the link.
    let error = replace_unit_file(&fx.unit_dir, &path, b"[Unit]\n").expect_err("a link");
    assert_eq!(FileError::from(error).reason(), ErrorReason::PathNotAllowed);
    remove_unit_file_blocking(
        &ResourceId::try_from("kiosk").expect("id"),
        &fx.unit_dir,
        &path,
    )
    .expect("remove");
    assert_eq!(std::fs::read_to_string(&outside).expect("read"), "precious");
    assert!(
        std::fs::symlink_metadata(&path)
            .expect("stat")
            .file_type()
            .is_symlink()
    );

    // A plain unit file is written whole, mode 0644, and removed.
    let plain = fx.file("plain.service");
    replace_unit_file(&fx.unit_dir, &plain, b"[Unit]\n").expect("write");
    let meta = std::fs::metadata(&plain).expect("stat");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777,
        0o644
    );
    remove_unit_file_blocking(
        &ResourceId::try_from("plain").expect("id"),
        &fx.unit_dir,
        &plain,
    )
    .expect("remove");
    assert!(!plain.exists());
}
