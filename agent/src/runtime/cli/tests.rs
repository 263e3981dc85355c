//! Unit tests of `agent/src/runtime/cli.rs`.

use super::*;

#[test]
fn create_arguments_keep_manifest_values_out_of_option_position() {
    let request = CreateRequest {
        name: "fleetlet-a-web".into(),
        image: "localhost/busybox:test".into(),
        labels: BTreeMap::from([("dev.fleetlet.agent".into(), "a".into())]),
        entrypoint: Some("--privileged".into()),
        arguments: vec!["--rm".into(), "-v".into()],
        env: BTreeMap::from([("MODE".into(), "a b".into())]),
        working_dir: Some("/srv".into()),
        user: Some("nobody".into()),
        ports: vec![fleetlet_manifests::PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: fleetlet_manifests::manifest::PortProtocol::Tcp,
        }],
        memory_limit_bytes: Some(64 << 20),
        cpu_millis: Some(500),
        mounts: vec![super::super::BindMount {
            source: "/var/lib/fleetlet/sessions/scratch@s1/data".into(),
            target: "/data".into(),
            read_only: true,
        }],
        privileged: false,
        host_network: false,
        host_pid: false,
        devices: Vec::new(),
    };
    let args = CliRuntime::create_args(&request);
    let separator = args.iter().position(|a| a == "--").expect("separator");
    assert_eq!(
        &args[separator + 1..],
        ["localhost/busybox:test", "--rm", "-v"]
    );
    for expected in [
        "--restart=no",
        "--pull=never",
        "--entrypoint=--privileged",
        "--env=MODE=a b",
        "--publish=8080:80/tcp",
        "--memory=67108864",
        "--cpus=0.500",
        "--label=dev.fleetlet.agent=a",
        "--mount=type=bind,source=/var/lib/fleetlet/sessions/scratch@s1/data,target=/data,readonly",
    ] {
        assert!(
            args[..separator].iter().any(|a| a == expected),
            "{expected}"
        );
    }
}

#[test]
fn host_access_is_passed_only_when_requested_each_flag_its_own_argument() {
    let mut request = CreateRequest {
        name: "fleetlet-a-probe".into(),
        image: "localhost/busybox:test".into(),
        labels: BTreeMap::new(),
        entrypoint: None,
        arguments: vec!["--privileged".into()],
        env: BTreeMap::new(),
        working_dir: None,
        user: None,
        ports: Vec::new(),
        memory_limit_bytes: None,
        cpu_millis: None,
        mounts: Vec::new(),
        privileged: false,
        host_network: false,
        host_pid: false,
        devices: Vec::new(),
    };
    let host_flags = |args: &[String]| -> Vec<String> {
        let separator = args.iter().position(|a| a == "--").expect("separator");
        args[..separator]
            .iter()
            .filter(|a| {
                *a == "--privileged"
                    || a.starts_with("--network")
                    || a.starts_with("--pid")
                    || a.starts_with("--device")
            })
            .cloned()
            .collect()
    };
    // An argument after the image that looks like a flag stays an argument.
    assert!(host_flags(&CliRuntime::create_args(&request)).is_empty());

    request.privileged = true;
    request.host_network = true;
    request.host_pid = true;
    request.devices = vec!["/dev/ttyUSB0".into(), "/dev/i2c-1".into()];
    let args = CliRuntime::create_args(&request);
    assert_eq!(
        host_flags(&args),
        [
            "--privileged",
            "--network=host",
            "--pid=host",
            "--device=/dev/ttyUSB0",
            "--device=/dev/i2c-1",
        ]
    );
    let separator = args.iter().position(|a| a == "--").expect("separator");
    assert_eq!(
        &args[separator + 1..],
        ["localhost/busybox:test", "--privileged"]
    );
}

#[test]
fn inspect_output_of_both_engines_is_understood() {
    let docker = r#"[{"Id":"abc","Name":"/fleetlet-a-web","Image":"sha256:123",
        "Created":"2026-11-22T21:38:04.8Z",
        "State":{"Status":"exited","ExitCode":137,"StartedAt":"2026-11-22T21:38:04.844150951Z",
                 "FinishedAt":"2026-11-22T21:38:05.413683259Z"},
        "Config":{"Labels":{"dev.fleetlet.agent":"a"}}}]"#;
    let parsed: Vec<InspectedContainer> = serde_json::from_str(docker).expect("parses");
    let info = parsed.into_iter().next().expect("one").into_info();
    assert_eq!(info.name, "fleetlet-a-web");
    assert_eq!(info.exit_code, Some(137));
    assert_eq!(info.run_state(), super::super::RunState::Exited);
    assert!(info.started_at.is_some() && info.finished_at.is_some());

    let podman = r#"[{"Id":"def","Name":"fleetlet-a-web","Image":"34f0","ImageName":"x",
        "State":{"Status":"running","ExitCode":0,"StartedAt":"2026-11-22T21:38:01.609060169Z",
                 "FinishedAt":"0001-01-01T00:00:00Z"},
        "Config":{"Labels":null}}]"#;
    let parsed: Vec<InspectedContainer> = serde_json::from_str(podman).expect("parses");
    let info = parsed.into_iter().next().expect("one").into_info();
    assert_eq!(info.image_id, "sha256:34f0");
    assert_eq!(info.exit_code, None);
    assert_eq!(info.finished_at, None);
    assert!(info.labels.is_empty());
}

#[test]
fn unreachable_engines_and_missing_objects_are_told_apart() {
    assert!(engine_unreachable(
        "Cannot connect to the Docker daemon at unix:///x.sock. Is the docker daemon running?"
    ));
    assert!(!engine_unreachable(
        "Error response from daemon: No such container: x"
    ));
    assert!(names_missing_object(
        "Error: inspecting object: no such container nope"
    ));
    assert!(names_missing_object(
        "Error: localhost/nope:1: image not known"
    ));
    assert!(!names_missing_object("Error: permission denied"));
}
