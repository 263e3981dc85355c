//! The `fleetlet` CLI's answers where a new user found them wrong (issue 18, point 4), each run
//! against the real manager on a fresh PostgreSQL database: `diff` of an agent that does not
//! exist, `diff` with before and after values, a reader that closes the pipe early, every
//! violation of a manifest listed (by the CLI and by the manager's 422), and a warning for a
//! kind this build of the CLI does not know.

use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use anyhow::Context;
use fleetlet_tests::agent::{file_resource, manifest};
use fleetlet_tests::manager::ManagerProcess;
use fleetlet_tests::postgres::fresh_database;
use fleetlet_tests::tools::{add_agent, fleetlet_cli};
use serde_json::{Value, json};

/// The status a command ends with when its reader went away: 128 + SIGPIPE, as a shell reports a
/// program that SIGPIPE killed (README, "The CLI").
const BROKEN_PIPE_STATUS: i32 = 141;

fn cli(manager: &ManagerProcess) -> Command {
    fleetlet_cli(manager, &manager.admin_token)
}

fn run(manager: &ManagerProcess, args: &[&str]) -> Output {
    cli(manager).args(args).output().expect("runs the CLI")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn write_json(path: &Path, value: &Value) -> String {
    std::fs::write(path, serde_json::to_vec_pretty(value).expect("serializes"))
        .expect("writes the manifest");
    path.to_str().expect("utf-8 path").to_owned()
}

#[tokio::test]
async fn diff_of_an_agent_that_does_not_exist_fails_as_apply_does() -> anyhow::Result<()> {
    let database = fresh_database().await?;
    let manager = ManagerProcess::start(&database.url).await?;
    let dir = tempfile::tempdir()?;
    let motd = file_resource("motd", Path::new("/srv/motd"), "hi", "0644");

    // Never registered.
    let file = write_json(
        &dir.path().join("ghost.json"),
        &manifest("pi-ghost", vec![motd.clone()]),
    );
    let applied = run(&manager, &["apply", "-f", &file]);
    assert!(!applied.status.success(), "{}", stdout(&applied));
    assert!(stderr(&applied).contains("404"), "{}", stderr(&applied));
    let diffed = run(&manager, &["diff", "-f", &file]);
    assert_eq!(
        diffed.status.code(),
        applied.status.code(),
        "diff: {}{}",
        stdout(&diffed),
        stderr(&diffed)
    );
    assert_eq!(stderr(&diffed), stderr(&applied));
    assert_eq!(
        stdout(&diffed),
        "",
        "diff printed a plan for a missing agent"
    );

    // Registered, then decommissioned: gone for diff as for apply.
    add_agent(&manager, "pi-gone");
    let file = write_json(
        &dir.path().join("gone.json"),
        &manifest("pi-gone", vec![motd.clone()]),
    );
    // Registered without a manifest: every resource is an addition.
    let diffed = run(&manager, &["diff", "-f", &file]);
    assert!(diffed.status.success(), "{}", stderr(&diffed));
    assert!(
        stdout(&diffed).contains("+ motd (File)"),
        "{}",
        stdout(&diffed)
    );
    let removed = run(&manager, &["agent", "rm", "pi-gone"]);
    assert!(removed.status.success(), "{}", stderr(&removed));
    let applied = run(&manager, &["apply", "-f", &file]);
    assert!(!applied.status.success(), "{}", stdout(&applied));
    let diffed = run(&manager, &["diff", "-f", &file]);
    assert_eq!(diffed.status.code(), applied.status.code());
    assert_eq!(stderr(&diffed), stderr(&applied));
    assert_eq!(stdout(&diffed), "");
    Ok(())
}

#[tokio::test]
async fn diff_shows_each_changed_field_with_its_old_and_new_value() -> anyhow::Result<()> {
    let database = fresh_database().await?;
    let manager = ManagerProcess::start(&database.url).await?;
    add_agent(&manager, "pi-diff");
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("pi-diff.json");

    let long_before = format!(
        "{}\nExecStart=/usr/bin/kiosk --old\n",
        "# comment\n".repeat(40)
    );
    let long_after = long_before.replace("--old", "--new");
    let blob_before = "QUFB".repeat(2000); // "AAA" × 2000, as base64
    let blob_after = "QkJC".repeat(2000);
    let resources = |mode: &str, text: &str, unit: &str, blob: &str| {
        vec![
            json!({"id": "motd", "kind": "File",
                   "spec": {"path": "/srv/motd", "content": {"text": text}, "mode": mode}}),
            json!({"id": "kiosk", "kind": "SystemdUnit",
                   "spec": {"name": "kiosk.service", "unit": unit}}),
            json!({"id": "blob", "kind": "File",
                   "spec": {"path": "/srv/blob", "content": {"base64": blob}}}),
        ]
    };
    let file = write_json(
        &path,
        &manifest(
            "pi-diff",
            resources("0644", "one", &long_before, &blob_before),
        ),
    );
    let applied = run(&manager, &["apply", "-f", &file]);
    assert!(applied.status.success(), "{}", stderr(&applied));

    let mut changed = manifest(
        "pi-diff",
        resources("0600", "two", &long_after, &blob_after),
    );
    changed["resources"][0]["spec"]["owner"] = json!("root");
    write_json(&path, &changed);
    let diffed = run(&manager, &["diff", "-f", &file, "--exit-code"]);
    assert_eq!(diffed.status.code(), Some(1), "{}", stderr(&diffed));
    let text = stdout(&diffed);
    for expected in [
        "~ motd (File)",
        r#"spec.mode: "0644" -> "0600""#,
        r#"spec.content.text: "one" -> "two""#,
        r#"spec.owner: (unset) -> "root""#,
        "~ kiosk (SystemdUnit)",
        "~ blob (File)",
    ] {
        assert!(text.contains(expected), "{expected:?} missing in:\n{text}");
    }
    // A long text is cut to the part around its first difference.
    let unit_line = text
        .lines()
        .find(|l| l.contains("spec.unit:"))
        .with_context(|| format!("no spec.unit line in:\n{text}"))?;
    assert!(
        unit_line.contains("--old") && unit_line.contains("--new"),
        "{unit_line}"
    );
    // Base64 is summarised, never printed whole.
    let blob_line = text
        .lines()
        .find(|l| l.contains("spec.content.base64:"))
        .with_context(|| format!("no base64 line in:\n{text}"))?;
    assert!(blob_line.contains("6000 bytes"), "{blob_line}");
    assert!(!text.contains(&blob_before[..64]), "{text}");
    assert!(!text.contains(&blob_after[..64]), "{text}");
    for line in text.lines() {
        assert!(
            line.chars().count() <= 200,
            "a line of {} chars: {line}",
            line.len()
        );
    }
    Ok(())
}

/// Runs the CLI with its stdout on a pipe of one page (4 KiB), reads the first line and closes
/// the pipe: whatever the CLI still has to write (more than the pipe holds) meets a broken pipe.
fn run_with_closed_pipe(manager: &ManagerProcess, args: &[&str]) -> anyhow::Result<Output> {
    let (mut reader, writer) = std::io::pipe()?;
    nix::fcntl::fcntl(&reader, nix::fcntl::FcntlArg::F_SETPIPE_SZ(4096))?;
    let child = cli(manager)
        .args(args)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()?;
    // One byte at a time, so that nothing past the first line is taken out of the pipe.
    let mut first = Vec::new();
    let mut byte = [0u8; 1];
    while reader.read(&mut byte)? == 1 && byte[0] != b'\n' {
        first.push(byte[0]);
    }
    anyhow::ensure!(!first.is_empty(), "{args:?} printed nothing");
    drop(reader);
    Ok(child.wait_with_output()?)
}

#[tokio::test]
async fn a_reader_that_goes_away_ends_every_command_quietly() -> anyhow::Result<()> {
    let database = fresh_database().await?;
    let manager = ManagerProcess::start(&database.url).await?;
    let http = reqwest::Client::new();
    let dir = tempfile::tempdir()?;
    let token = manager
        .register(&http, json!({"agentId": "pi-pipe", "labels": {}}))
        .await?;
    // Enough agents and resources for every output to outgrow the pipe.
    for n in 0..80 {
        manager
            .register(
                &http,
                json!({"agentId": format!("pi-pipe-{n:03}"),
                       "labels": {"site": format!("a-site-with-a-rather-long-name-{n:03}")}}),
            )
            .await?;
    }
    let files = |text: &str| -> Vec<Value> {
        (0..250)
            .map(|n| {
                file_resource(
                    &format!("a-file-with-a-long-id-{n:03}"),
                    Path::new(&format!("/srv/pipe/file-{n:03}")),
                    text,
                    "0644",
                )
            })
            .collect()
    };
    let path = dir.path().join("pi-pipe.json");
    let file = write_json(&path, &manifest("pi-pipe", files("one")));
    let applied = run(&manager, &["apply", "-f", &file]);
    assert!(applied.status.success(), "{}", stderr(&applied));
    let resources: serde_json::Map<String, Value> = (0..250)
        .map(|n| {
            (
                format!("a-file-with-a-long-id-{n:03}"),
                json!({"kind": "File", "phase": "Ready", "since": "2026-11-22T10:00:00Z",
                       "generation": 1}),
            )
        })
        .collect();
    manager
        .report_generation_one("pi-pipe", &token, json!(resources))
        .await?;
    write_json(&path, &manifest("pi-pipe", files("two")));

    let commands: [&[&str]; 10] = [
        &["get", "status", "pi-pipe", "-o", "json"],
        &["get", "status", "pi-pipe", "-o", "yaml"],
        &["get", "status", "pi-pipe"],
        &["get", "agents"],
        &["agent", "list", "-o", "json"],
        &["history", "pi-pipe", "-o", "json"],
        &["events", "pi-pipe"],
        &["events", "pi-pipe", "-o", "jsonl"],
        &["diff", "-f", &file],
        &["completions", "bash"],
    ];
    for args in commands {
        // Read whole, the output is well over a pipe's worth, so the early close must bite.
        let whole = run(&manager, args);
        assert!(
            whole.status.success() || args[0] == "diff",
            "{args:?}: {}",
            stderr(&whole)
        );
        assert!(
            whole.stdout.len() > 2 * 4096,
            "{args:?} printed only {} bytes",
            whole.stdout.len()
        );
        let cut = run_with_closed_pipe(&manager, args)?;
        let errors = stderr(&cut);
        assert!(!errors.contains("panicked"), "{args:?}: {errors}");
        assert_eq!(errors, "", "{args:?} is not quiet");
        assert_eq!(
            cut.status.code(),
            Some(BROKEN_PIPE_STATUS),
            "{args:?}: {errors}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn every_violation_is_listed_by_the_cli_and_by_the_manager() -> anyhow::Result<()> {
    let database = fresh_database().await?;
    let manager = ManagerProcess::start(&database.url).await?;
    add_agent(&manager, "pi-bad");
    let dir = tempfile::tempdir()?;
    // Two resources share the id "a"; the first also has a relative path, and the container
    // has a bad restart policy and names a storage that does not exist.
    let bad = manifest(
        "pi-bad",
        vec![
            file_resource("a", Path::new("relative/motd"), "x", "0644"),
            file_resource("a", Path::new("/srv/other"), "x", "0644"),
            json!({"id": "web", "kind": "Container",
                   "spec": {"image": "img", "restartPolicy": "Sometimes",
                            "volumes": [{"sessionStorage": "nope", "mountPath": "/data"}]}}),
        ],
    );
    let expected = [
        "resources[0].spec.path",
        "resources[1].id: duplicate id \"a\"",
        "resources[2].spec.restartPolicy",
        "resources[2].spec.volumes[0].sessionStorage",
    ];
    let file = write_json(&dir.path().join("bad.json"), &bad);
    for command in ["apply", "diff"] {
        let rejected = run(&manager, &[command, "-f", &file]);
        assert_eq!(rejected.status.code(), Some(1), "{command}");
        let message = stderr(&rejected);
        for violation in expected {
            assert!(
                message.contains(violation),
                "{command}: {violation} missing in {message}"
            );
        }
    }

    // The manager's own answer lists the same violations.
    let answer = manager
        .admin(
            &reqwest::Client::new(),
            reqwest::Method::PUT,
            "/api/v1/agents/pi-bad/manifest",
        )
        .json(&bad)
        .send()
        .await?;
    assert_eq!(answer.status(), reqwest::StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = answer.json().await?;
    let listed: Vec<String> = body["error"]["violations"]
        .as_array()
        .context("violations")?
        .iter()
        .map(|v| {
            format!(
                "{}: {}",
                v["path"].as_str().unwrap_or(""),
                v["message"].as_str().unwrap_or("")
            )
        })
        .collect();
    for violation in expected {
        assert!(
            listed.iter().any(|l| l.starts_with(violation)),
            "{violation} missing in {listed:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_kind_this_build_does_not_know_is_sent_with_a_warning() -> anyhow::Result<()> {
    let database = fresh_database().await?;
    let manager = ManagerProcess::start(&database.url).await?;
    add_agent(&manager, "pi-kind");
    let dir = tempfile::tempdir()?;
    let file = write_json(
        &dir.path().join("typo.json"),
        &manifest(
            "pi-kind",
            vec![
                file_resource("motd", Path::new("/srv/motd"), "hi", "0644"),
                json!({"id": "banner", "kind": "Flie",
                       "spec": {"path": "/srv/banner", "content": {"text": "hi"}}}),
                json!({"id": "gpu", "kind": "GpuSlice", "spec": {"devices": [0]}}),
            ],
        ),
    );
    for command in ["diff", "apply"] {
        let output = run(&manager, &[command, "-f", &file]);
        assert!(output.status.success(), "{command}: {}", stderr(&output));
        let warnings = stderr(&output);
        let typo = warnings
            .lines()
            .find(|l| l.contains("resources[1].kind"))
            .with_context(|| format!("{command}: no warning for the typo in {warnings:?}"))?;
        assert!(typo.contains("banner"), "{typo}");
        assert!(typo.contains("\"Flie\""), "{typo}");
        assert!(typo.contains("did you mean \"File\""), "{typo}");
        let skew = warnings
            .lines()
            .find(|l| l.contains("resources[2].kind"))
            .with_context(|| format!("{command}: no warning for GpuSlice in {warnings:?}"))?;
        assert!(!skew.contains("did you mean"), "{skew}");
        assert!(!warnings.contains("resources[0]"), "{warnings}");
    }
    // Sent as written: the manager stores it (version skew), with the warning only on stderr.
    let stored = run(&manager, &["history", "pi-kind", "-o", "json"]);
    let history: Value = serde_json::from_slice(&stored.stdout)?;
    assert_eq!(history[0]["generation"], 1);
    assert_eq!(history[0]["resources"][1]["kind"], "Flie");
    Ok(())
}
