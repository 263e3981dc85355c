//! Unit tests of `agent/src/reconcile/systemd_unit/systemctl.rs`.

use super::*;

fn unit(name: &str) -> UnitName {
    UnitName::try_from(name).expect("valid unit name")
}

#[test]
fn show_output_is_parsed_in_any_order() {
    let stdout = "MainPID=4242\nResult=success\nNRestarts=3\nTriggeredBy=a.timer b.socket\n\
                  LoadState=loaded\nActiveState=active\nSubState=running\n\
                  UnitFileState=enabled\nNeedDaemonReload=no\nFragmentPath=/etc/x.service\n";
    let observed = parse_show(&unit("x.service"), stdout).expect("parses");
    assert_eq!(
        observed,
        UnitObservation {
            load_state: "loaded".into(),
            active_state: "active".into(),
            sub_state: "running".into(),
            main_pid: 4242,
            n_restarts: 3,
            result: "success".into(),
            unit_file_state: "enabled".into(),
            need_daemon_reload: false,
            triggered_by: vec!["a.timer".into(), "b.socket".into()],
            fragment_path: "/etc/x.service".into(),
        }
    );
    assert!(observed.is_up() && observed.is_enabled() && !observed.has_failed());
}

#[test]
fn numbers_a_unit_type_lacks_read_as_zero_and_garbage_is_an_error() {
    let observed = parse_show(
        &unit("x.timer"),
        "ActiveState=active\nMainPID=\nNRestarts=[not set]\n",
    )
    .expect("parses");
    assert_eq!((observed.main_pid, observed.n_restarts), (0, 0));
    assert!(parse_show(&unit("x.service"), "ActiveState=active\nMainPID=x\n").is_err());
    assert!(parse_show(&unit("x.service"), "").is_err());
}

#[test]
fn bus_failures_read_as_unreachable_and_refusals_do_not() {
    assert!(is_unreachable(
        "Failed to connect to bus: No such file or directory"
    ));
    assert!(is_unreachable(
        "System has not been booted with systemd as init system (PID 1). Can't operate."
    ));
    assert!(!is_unreachable(
        "Failed to stop x.service: Unit x.service not loaded."
    ));
}
