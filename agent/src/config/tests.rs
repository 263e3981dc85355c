//! Unit tests of the configuration: the layering, each setting's checks, and the one
//! declaration against `--help`, the TOML keys and the README's table.

use std::path::Path;

use fleetlet_manifests::AbsPath;
use serde_json::json;

use super::*;

#[test]
fn durations_take_the_documented_forms() {
    assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
    for bad in ["", "10", "s", "10x", "-1s", "1.5s"] {
        assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
    }
}

#[test]
fn flags_win_over_the_file_which_wins_over_defaults() {
    let cli = Settings::from_args([
        "fleetlet-agent",
        "--agent-id",
        "pi-1",
        "--manager-url",
        "http://m:7800/",
        "--token",
        " secret\n",
        "--resync-interval",
        "500ms",
    ])
    .expect("flags parse");
    let file = Settings::from_toml(
        Path::new("agent.toml"),
        "resync-interval = \"20s\"\nreport-interval = \"5s\"\nfile-roots = [\"/srv/a\", \"/srv/b\"]\n",
    )
    .expect("toml parses");
    let config = Config::resolve(cli, file).expect("valid");
    assert_eq!(config.resync_interval, Duration::from_millis(500));
    assert_eq!(config.report_interval, Duration::from_secs(5));
    assert_eq!(config.watch_wait, Duration::from_secs(120));
    assert_eq!(
        config.file_roots,
        [PathBuf::from("/srv/a"), PathBuf::from("/srv/b")]
    );
    assert_eq!(
        config.source,
        Source::Manager {
            url: "http://m:7800".into(),
            token: Credential::Token(Token::new("secret".into())),
            ca_file: None,
        }
    );
}

fn standalone(args: &[&str], file: &str) -> Result<Config, ConfigError> {
    let mut all = vec!["fleetlet-agent", "--manifest-file", "/m.json"];
    all.extend_from_slice(args);
    Config::resolve(
        Settings::from_args(all).expect("flags parse"),
        Settings::from_toml(Path::new("agent.toml"), file)?,
    )
}

/// Agent `pi-1` of the manager at http://m:7800, from flags alone, with `args` added.
fn managed(args: &[&str]) -> Result<Config, ConfigError> {
    let mut all = vec![
        "fleetlet-agent",
        "--agent-id",
        "pi-1",
        "--manager-url",
        "http://m:7800",
    ];
    all.extend_from_slice(args);
    Config::resolve(
        Settings::from_args(all).expect("flags parse"),
        Settings::default(),
    )
}

#[test]
fn sizes_take_the_documented_forms() {
    assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
    assert_eq!(parse_bytes("512KiB"), Ok(512 << 10));
    assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
    assert_eq!(parse_bytes("2 GiB"), Ok(2 << 30));
    for bad in [
        "",
        "MiB",
        "-1",
        "1.5MiB",
        "64MB",
        "64m",
        "99999999999999999999GiB",
    ] {
        assert!(parse_bytes(bad).is_err(), "{bad:?} was accepted");
    }
}

#[test]
fn the_store_size_cap_comes_from_flag_then_file_then_default() {
    let config = standalone(&[], "").expect("valid");
    assert_eq!(config.store_max_bytes, 64 << 20);
    let config = standalone(&[], "store-max-bytes = 2097152").expect("valid");
    assert_eq!(config.store_max_bytes, 2 << 20);
    let config = standalone(&[], "store-max-bytes = \"16MiB\"").expect("valid");
    assert_eq!(config.store_max_bytes, 16 << 20);
    let config =
        standalone(&["--store-max-bytes", "8MiB"], "store-max-bytes = 2097152").expect("valid");
    assert_eq!(config.store_max_bytes, 8 << 20);
    assert_eq!(config.snapshot()["storeMaxBytes"], 8 << 20);
}

#[test]
fn a_tiny_store_size_cap_is_refused() {
    for (args, file) in [
        (&["--store-max-bytes", "4096"][..], ""),
        (&[][..], "store-max-bytes = 1000"),
        (&[][..], "store-max-bytes = \"1023KiB\""),
    ] {
        let error = standalone(args, file).expect_err("refused");
        assert!(
            matches!(
                error,
                ConfigError::Invalid {
                    setting: "FLEETLET_STORE_MAX_BYTES",
                    ..
                }
            ),
            "{error}"
        );
    }
    let error = standalone(&[], "store-max-bytes = \"lots\"").expect_err("refused");
    assert!(
        error.to_string().contains("FLEETLET_STORE_MAX_BYTES"),
        "{error}"
    );
    assert!(Settings::from_args(["fleetlet-agent", "--store-max-bytes", "64MB"]).is_err());
    assert_eq!(
        standalone(&["--store-max-bytes", "1MiB"], "")
            .expect("the minimum itself is fine")
            .store_max_bytes,
        MIN_STORE_MAX_BYTES
    );
}

#[cfg(feature = "fs-store")]
#[test]
fn the_default_store_size_cap_is_the_stores_own() {
    assert_eq!(
        Settings::default_values().store_max_bytes,
        crate::store::FsStoreOptions::default().max_bytes
    );
}

#[test]
fn host_access_is_refused_by_default_and_allowed_by_flag_or_file() {
    let config = standalone(&[], "").expect("valid");
    assert_eq!(config.host_access, HostAccess::default());
    assert_eq!(
        config.reconciler_settings().container.host_access,
        HostAccess::default()
    );

    let config = standalone(
        &[
            "--allow-privileged",
            "--allow-host-network=true",
            "--allow-host-pid=yes",
            "--allowed-devices",
            "/dev/ttyUSB0:/dev/i2c-1",
        ],
        "",
    )
    .expect("valid");
    let device = |path: &str| AbsPath::try_from(path).expect("absolute");
    let expected = HostAccess {
        privileged: true,
        host_network: true,
        host_pid: true,
        devices: vec![device("/dev/ttyUSB0"), device("/dev/i2c-1")],
    };
    assert_eq!(config.host_access, expected);
    assert_eq!(config.reconciler_settings().container.host_access, expected);
    let snapshot = config.snapshot();
    assert_eq!(snapshot["allowPrivileged"], true);
    assert_eq!(snapshot["allowHostNetwork"], true);
    assert_eq!(snapshot["allowHostPid"], true);
    assert_eq!(
        snapshot["allowedDevices"],
        json!(["/dev/ttyUSB0", "/dev/i2c-1"])
    );

    // The file allows, a flag set to false takes it back.
    let file =
        "allow-privileged = true\nallow-host-pid = true\nallowed-devices = [\"/dev/video0\"]\n";
    let config = standalone(&["--allow-privileged=false"], file).expect("valid");
    assert!(!config.host_access.privileged);
    assert!(config.host_access.host_pid);
    assert!(!config.host_access.host_network);
    assert_eq!(config.host_access.devices, [device("/dev/video0")]);
}

#[test]
fn allowed_devices_must_be_plain_absolute_paths() {
    for bad in ["dev/ttyUSB0", "/dev/../sda", "/dev/tty/"] {
        let error = standalone(&["--allowed-devices", bad], "").expect_err(bad);
        assert!(
            error.to_string().contains("FLEETLET_ALLOWED_DEVICES"),
            "{error}"
        );
    }
    for bad in ["/dev/a:/dev/b", "/dev/a,rw", ""] {
        let file = format!("allowed-devices = [{bad:?}]");
        let error = standalone(&[], &file).expect_err(bad);
        assert!(
            error.to_string().contains("FLEETLET_ALLOWED_DEVICES"),
            "{error}"
        );
    }
    // An empty list is no device at all.
    let config = standalone(&[], "allowed-devices = []").expect("valid");
    assert!(config.host_access.devices.is_empty());
}

/// The environment is the process's: setting it here would race with the other tests, which
/// parse flags (and so read the environment) at the same time. A child process of this test
/// binary runs [`child_reads_the_environment`] with the variables set instead.
#[test]
fn the_new_settings_are_read_from_the_environment() {
    let output = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "config::tests::child_reads_the_environment",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("FLEETLET_TEST_ENV_CHILD", "1")
        .env("FLEETLET_STORE_MAX_BYTES", "3MiB")
        .env("FLEETLET_ALLOW_PRIVILEGED", "true")
        .env("FLEETLET_ALLOW_HOST_NETWORK", "false")
        .env("FLEETLET_ALLOW_HOST_PID", "1")
        .env("FLEETLET_ALLOWED_DEVICES", "/dev/ttyUSB0:/dev/gpiochip0")
        .env("FLEETLET_METRICS_FILE", "/run/fleetlet/agent.prom")
        .output()
        .expect("child runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
#[ignore = "run with its environment by the_new_settings_are_read_from_the_environment"]
fn child_reads_the_environment() {
    if std::env::var_os("FLEETLET_TEST_ENV_CHILD").is_none() {
        return;
    }
    let config = standalone(
        &[],
        "store-max-bytes = 2097152\nallow-host-network = true\n",
    )
    .expect("valid");
    assert_eq!(config.store_max_bytes, 3 << 20);
    assert!(config.host_access.privileged);
    assert!(!config.host_access.host_network);
    assert!(config.host_access.host_pid);
    assert_eq!(
        config.snapshot()["allowedDevices"],
        json!(["/dev/ttyUSB0", "/dev/gpiochip0"])
    );
    assert_eq!(
        config.metrics_file,
        Some(PathBuf::from("/run/fleetlet/agent.prom"))
    );
}

#[test]
fn a_token_given_both_inline_and_as_a_file_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("token");
    std::fs::write(&file, "from-file\n").expect("written");
    let file = file.to_str().expect("utf-8 path");
    for (inline, file_flag) in [
        ("--token", "--token-file"),
        ("--bootstrap-token", "--bootstrap-token-file"),
    ] {
        let error = managed(&[inline, "inline", file_flag, file]).expect_err("refused");
        assert!(error.to_string().contains("set only one of"), "{error}");
    }
}

#[test]
fn the_token_never_shows_in_debug_output() {
    let config = managed(&["--token", "very-secret-token"]).expect("valid");
    assert!(!format!("{config:?}").contains("very-secret-token"));
    assert!(!config.snapshot().to_string().contains("very-secret-token"));
}

#[test]
fn a_manager_needs_an_id_and_a_token_and_roots_must_be_absolute() {
    let parse = |args: &[&str]| {
        let mut all = vec!["fleetlet-agent"];
        all.extend_from_slice(args);
        Config::resolve(
            Settings::from_args(all).expect("flags parse"),
            Settings::default(),
        )
    };
    assert!(parse(&["--manager-url", "http://m", "--token", "t"]).is_err());
    // Without a token the agent looks for a kept one, or enrolls, when it starts.
    let enrolling = parse(&["--agent-id", "a", "--manager-url", "http://m"]).expect("valid");
    assert!(matches!(
        enrolling.source,
        Source::Manager {
            token: Credential::Enroll { bootstrap: None },
            ..
        }
    ));
    assert!(parse(&[]).is_err());
    assert!(parse(&["--manifest-file", "/m.json", "--file-roots", "/a:rel"]).is_err());
    assert!(parse(&["--manifest-file", "/m.json", "--watch-wait", "301s"]).is_err());
    let standalone =
        parse(&["--manifest-file", "/m.json", "--file-roots", "/a:/b"]).expect("valid");
    assert_eq!(standalone.file_roots.len(), 2);
    assert_eq!(standalone.agent_id, None);
}
#[test]
fn the_metrics_file_is_off_by_default_and_must_be_a_prom_file() {
    assert_eq!(standalone(&[], "").expect("valid").metrics_file, None);
    let path = PathBuf::from("/var/lib/node_exporter/textfile_collector/fleetlet.prom");
    let config = standalone(
        &["--metrics-file", "/run/metrics/fleetlet.prom"],
        "metrics-file = \"/srv/x.prom\"",
    )
    .expect("valid");
    assert_eq!(
        config.metrics_file,
        Some(PathBuf::from("/run/metrics/fleetlet.prom"))
    );
    let file = format!("metrics-file = \"{}\"", path.display());
    let config = standalone(&[], &file).expect("valid");
    assert_eq!(config.metrics_file.as_ref(), Some(&path));
    assert_eq!(config.snapshot()["metricsFile"], path.display().to_string());
    for bad in [
        "/run/fleetlet.txt",
        "/run/metrics/",
        "/run/.prom",
        "fleetlet.prom.tmp",
    ] {
        let error = standalone(&["--metrics-file", bad], "").expect_err(bad);
        assert!(
            matches!(
                error,
                ConfigError::Invalid {
                    setting: "FLEETLET_METRICS_FILE",
                    ..
                }
            ),
            "{bad}: {error}"
        );
    }
}

#[test]
fn trusted_keys_are_read_at_start_and_a_bad_key_file_stops_it() {
    use fleetlet_manifests::signature::SecretKey;
    let dir = tempfile::tempdir().expect("temp dir");
    let (a, b) = (dir.path().join("a.pub"), dir.path().join("b.pub"));
    let keys = [SecretKey::from_seed([1; 32]), SecretKey::from_seed([2; 32])];
    std::fs::write(&a, keys[0].public().to_file_text()).expect("write");
    std::fs::write(&b, keys[1].public().to_file_text()).expect("write");
    let both = format!("{}:{}", a.display(), b.display());
    let config = standalone(&["--trusted-keys", &both], "").expect("valid");
    assert_eq!(config.trusted_keys, [keys[0].public(), keys[1].public()]);
    assert_eq!(config.engine_settings().trusted_keys.len(), 2);
    assert_eq!(
        config.snapshot()["trustedKeyIds"][1],
        keys[1].public().key_id()
    );
    assert!(standalone(&[], "").expect("valid").trusted_keys.is_empty());

    let garbage = dir.path().join("garbage.pub");
    std::fs::write(&garbage, "not a key").expect("write");
    for bad in [garbage, dir.path().join("missing.pub")] {
        let path = bad.display().to_string();
        let error = standalone(&["--trusted-keys", &path], "").expect_err("refused");
        assert!(
            error.to_string().contains("FLEETLET_TRUSTED_KEYS"),
            "{error}"
        );
    }
}

/// Every in-file setting with a value, as a TOML file would give them.
const EVERY_KEY: &str = r#"
agent-id = "pi-1"
manager-url = "http://m:7800"
token-file = "/etc/fleetlet/token"
bootstrap-token-file = "/etc/fleetlet/bootstrap"
ca-file = "/etc/fleetlet/ca.pem"
state-dir = "/srv/state"
file-roots = ["/srv/a"]
session-root = "/srv/sessions"
container-runtime = "docker"
container-runtime-path = "/usr/bin/docker"
systemd-scope = "user"
unit-dir = "/srv/units"
resync-interval = "20s"
watch-wait = "30s"
report-interval = "1m"
concurrency = 2
apply-timeout = "1m30s"
manifest-file = "/srv/m.json"
store-max-bytes = "2MiB"
allow-privileged = true
allow-host-network = true
allow-host-pid = true
allowed-devices = ["/dev/ttyUSB0"]
trusted-keys = []
metrics-file = "/run/fleetlet.prom"
log = "debug"
"#;

#[test]
fn every_setting_is_a_flag_with_its_environment_variable_and_default_in_the_help() {
    let command = Settings::command();
    let help = Settings::command().render_long_help().to_string();
    let args: Vec<_> = command
        .get_arguments()
        .filter(|arg| !matches!(arg.get_id().as_str(), "help" | "version"))
        .collect();
    assert_eq!(
        args.len(),
        DECLARED.len(),
        "an argument outside the declaration"
    );
    for (arg, declared) in args.iter().zip(DECLARED) {
        assert_eq!(arg.get_id().as_str(), declared.name);
        assert_eq!(arg.get_long(), Some(declared.key().as_str()));
        assert_eq!(
            arg.get_env().and_then(|env| env.to_str()),
            Some(declared.env),
            "{}",
            declared.name
        );
        let defaults: Vec<_> = arg
            .get_default_values()
            .iter()
            .map(|value| value.to_str().expect("utf-8"))
            .collect();
        assert_eq!(
            defaults,
            Vec::from_iter(declared.default),
            "{}",
            declared.name
        );
        // The flag's own entry in `--help`, up to the next flag.
        let flag = format!("\n      --{}", declared.key());
        let entry = help
            .split_once(flag.as_str())
            .map(|(_, rest)| rest.split("\n      --").next().unwrap_or(rest))
            .unwrap_or_else(|| panic!("{flag} is not in\n{help}"));
        assert!(
            entry.contains(&format!("[env: {}", declared.env)),
            "{entry}"
        );
        if let Some(default) = declared.default.filter(|_| declared.name != "once") {
            let shown = format!("[default: {default}]");
            assert!(entry.contains(&shown), "{shown} is not in {entry}");
        }
    }
}

#[test]
fn every_file_setting_is_a_toml_key_and_the_others_are_not() {
    let settings = Settings::from_toml(Path::new("agent.toml"), EVERY_KEY).expect("valid");
    let in_file: Vec<_> = DECLARED
        .iter()
        .filter(|declared| declared.in_file)
        .map(|declared| declared.name)
        .collect();
    assert_eq!(settings.set_names(), in_file);
    let flag_only: Vec<_> = DECLARED.iter().filter(|d| !d.in_file).collect();
    assert_eq!(
        flag_only.iter().map(|d| d.name).collect::<Vec<_>>(),
        ["config", "token", "bootstrap_token", "once"]
    );
    for declared in flag_only {
        let file = format!("{} = \"x\"", declared.key());
        let error = Settings::from_toml(Path::new("agent.toml"), &file).expect_err(&file);
        assert!(
            matches!(&error, ConfigError::ParseFile { message, .. }
                if message.contains(&format!("unknown key \"{}\"", declared.key()))),
            "{error}"
        );
    }
    // The values arrive as the flags would give them.
    let config = Config::resolve(Settings::default(), settings).expect("valid");
    assert_eq!(config.resync_interval, Duration::from_secs(20));
    assert_eq!(config.apply_timeout, Duration::from_secs(90));
    assert_eq!(config.store_max_bytes, 2 << 20);
    assert_eq!(config.container_runtime, ContainerRuntimeKind::Docker);
    assert_eq!(config.systemd_scope, SystemdScope::User);
    assert_eq!(config.unit_dir, PathBuf::from("/srv/units"));
    assert_eq!(config.log, "debug");
}

#[test]
fn a_bad_value_in_the_file_names_its_setting() {
    for (file, setting) in [
        ("resync-interval = 5", "FLEETLET_RESYNC_INTERVAL"),
        ("watch-wait = \"soon\"", "FLEETLET_WATCH_WAIT"),
        ("concurrency = \"many\"", "FLEETLET_CONCURRENCY"),
        ("concurrency = -1", "FLEETLET_CONCURRENCY"),
        ("store-max-bytes = -1", "FLEETLET_STORE_MAX_BYTES"),
        ("container-runtime = \"lxc\"", "FLEETLET_CONTAINER_RUNTIME"),
        ("allow-privileged = \"maybe\"", "FLEETLET_ALLOW_PRIVILEGED"),
        ("file-roots = \"/srv/a\"", "FLEETLET_FILE_ROOTS"),
    ] {
        let error = Settings::from_toml(Path::new("agent.toml"), file).expect_err(file);
        assert!(
            matches!(&error, ConfigError::Invalid { setting: named, .. } if *named == setting),
            "{file}: {error}"
        );
    }
    let error =
        Settings::from_toml(Path::new("/etc/agent.toml"), "resync = \"5s\"").expect_err("unknown");
    assert!(
        error.to_string().contains("/etc/agent.toml") && error.to_string().contains("resync"),
        "{error}"
    );
}

#[test]
fn the_defaults_are_the_declared_ones_whatever_the_environment_and_the_engine_shares_them() {
    let values = Settings::default_values();
    assert_eq!(values.state_dir, PathBuf::from("/var/lib/fleetlet"));
    assert_eq!(values.resync_interval, Duration::from_secs(10));
    assert_eq!(values.watch_wait, Duration::from_secs(120));
    assert_eq!(values.report_interval, Duration::from_secs(600));
    assert_eq!(values.concurrency, 8);
    assert_eq!(values.apply_timeout, Duration::from_secs(120));
    assert_eq!(values.store_max_bytes, 64 << 20);
    assert_eq!(values.container_runtime, ContainerRuntimeKind::Podman);
    assert_eq!(values.systemd_scope, SystemdScope::System);
    assert!(!values.once && !values.allow_privileged && !values.allow_host_network);
    assert!(!values.allow_host_pid);
    assert_eq!(values.log, "info");
    let with_defaults: Vec<_> = DECLARED
        .iter()
        .filter(|declared| declared.default.is_some())
        .map(|declared| declared.name)
        .collect();
    assert_eq!(
        Settings::defaults().expect("parse").set_names(),
        with_defaults
    );

    let configured = standalone(&[], "").expect("valid").engine_settings();
    let engine = EngineSettings::default();
    assert_eq!(engine.concurrency, configured.concurrency);
    assert_eq!(engine.apply_timeout, configured.apply_timeout);
    assert_eq!(engine.resync_interval, configured.resync_interval);
    assert_eq!(engine.report_interval, configured.report_interval);
    assert_eq!(engine.report_interval, FULL_STATUS_INTERVAL);
}

/// The README's agent settings table: each row's environment variables and, in the same order,
/// the defaults it shows as code.
fn readme_rows() -> Vec<(Vec<String>, Vec<String>)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let table = readme
        .split_once("## Running an agent")
        .expect("the agent's section")
        .1
        .split("| setting | environment | default |")
        .nth(1)
        .expect("the agent settings table");
    // The code spans of a cell, up to the prose that explains them ("(…", ": …").
    let code = |text: &str| -> Vec<String> {
        let mut spans = Vec::new();
        for (i, piece) in text.split('`').enumerate() {
            if i % 2 == 1 {
                spans.push(piece.to_owned());
            } else if piece.contains(['(', ':']) {
                break;
            }
        }
        spans
    };
    table
        .lines()
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .map(|line| {
            let cells: Vec<_> = line
                .replace("\\|", "/")
                .split('|')
                .map(str::to_owned)
                .collect();
            assert_eq!(cells.len(), 5, "{line}");
            let envs = code(&cells[2])
                .into_iter()
                .filter(|span| span.starts_with("FLEETLET_"))
                .collect();
            (envs, code(&cells[3]))
        })
        .collect()
}

#[test]
fn the_readme_table_lists_every_setting_with_its_default() {
    let rows = readme_rows();
    let help = Settings::command().render_long_help().to_string();
    let mut listed = Vec::new();
    for (envs, defaults) in &rows {
        assert!(!envs.is_empty(), "a row without a variable: {defaults:?}");
        for (k, env) in envs.iter().enumerate() {
            let declared = DECLARED
                .iter()
                .find(|declared| declared.env == env)
                .unwrap_or_else(|| panic!("the README lists {env}, which is no setting"));
            // One default shown for a row of several variables is each one's.
            let shown = defaults
                .get(k)
                .or(defaults.first().filter(|_| defaults.len() == 1 && k > 0));
            match (declared.default, shown) {
                (Some(default), shown) => {
                    assert_eq!(shown.map(String::as_str), Some(default), "{env}");
                }
                // A default derived from another setting is described in `--help`.
                (None, Some(shown)) if defaults.len() == envs.len() => {
                    assert!(
                        help.contains(shown.as_str()),
                        "{env}: {shown} not in --help"
                    );
                }
                (None, _) => {}
            }
            listed.push(declared.env);
        }
    }
    for declared in DECLARED {
        assert!(
            listed.contains(&declared.env),
            "{} is not in the README's table",
            declared.env
        );
    }
    assert_eq!(listed.len(), DECLARED.len(), "a setting listed twice");
}
