//! The `fleetlet` CLI against the real manager binary on a fresh PostgreSQL database, with a
//! real agent: apply (YAML), diff, get, history, events (also `--follow`), agent list / rm /
//! rotate-token, completions, and `apply --wait` on a manifest that fails on the device.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use fleetlet_tests::agent::{
    AgentDirs, AgentOptions, AgentProcess, binary, file_resource, manifest,
};
use fleetlet_tests::manager::ManagerProcess;
use fleetlet_tests::postgres::fresh_database;
use fleetlet_tests::tools::{add_agent, fleetlet_cli};
use serde_json::Value;

fn cli(manager: &ManagerProcess, token: &str) -> Command {
    fleetlet_cli(manager, token)
}

fn run(manager: &ManagerProcess, args: &[&str]) -> Output {
    cli(manager, &manager.admin_token)
        .args(args)
        .output()
        .expect("runs the CLI")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn write_yaml(path: &Path, agent_id: &str, resources: &[(&str, &Path, &str)]) {
    let mut text = format!(
        "# a manifest in YAML\napiVersion: fleetlet.dev/v1\nkind: AgentManifest\nagentId: {agent_id}\nresources:\n"
    );
    for (id, file, content) in resources {
        text.push_str(&format!(
            "  - id: {id}\n    kind: File\n    spec:\n      path: {}\n      content:\n        text: \"{content}\"\n      mode: \"0644\"\n",
            file.display()
        ));
    }
    std::fs::write(path, text).expect("writes the manifest");
}

#[tokio::test]
async fn apply_diff_get_history_and_events_drive_the_real_manager() -> anyhow::Result<()> {
    let database = fresh_database().await?;
    let manager = ManagerProcess::start(&database.url).await?;
    let added = run(&manager, &["agent", "add", "pi-cli", "--label", "site=lab"]);
    assert!(added.status.success(), "{}", stderr(&added));
    let token = stdout(&added).trim().to_owned();
    assert!(token.starts_with("flt_"));
    let other = run(
        &manager,
        &["agent", "add", "pi-other", "--label", "site=attic"],
    );
    assert!(other.status.success(), "{}", stderr(&other));

    let dir = tempfile::tempdir()?;
    let file = dir.path().join("pi-cli.yaml");
    let motd = Path::new("/srv/fleetlet/motd");
    let banner = Path::new("/srv/fleetlet/banner");
    write_yaml(&file, "pi-cli", &[("motd", motd, "one")]);
    let file_arg = file.to_str().context("utf-8 path")?;

    // Before anything is stored, everything is an addition.
    let diff = run(&manager, &["diff", "-f", file_arg]);
    assert!(diff.status.success(), "{}", stderr(&diff));
    assert!(stdout(&diff).contains("+ motd (File)"), "{}", stdout(&diff));

    let applied = run(&manager, &["apply", "-f", file_arg]);
    assert!(applied.status.success(), "{}", stderr(&applied));
    assert_eq!(stdout(&applied).trim(), "pi-cli: generation 1");

    let unchanged = run(&manager, &["diff", "-f", file_arg, "--exit-code"]);
    assert!(unchanged.status.success(), "{}", stdout(&unchanged));
    assert!(stdout(&unchanged).contains("no changes"));

    // Change one resource, add another: diff names both by id and (with --exit-code) says so.
    write_yaml(
        &file,
        "pi-cli",
        &[("motd", motd, "two"), ("banner", banner, "hi")],
    );
    let diff = run(&manager, &["diff", "-f", file_arg, "--exit-code"]);
    assert_eq!(diff.status.code(), Some(1), "{}", stderr(&diff));
    let text = stdout(&diff);
    assert!(text.contains("generation 1 would become 2"), "{text}");
    assert!(
        text.contains("~ motd (File)\n    spec.content.text: \"one\" -> \"two\""),
        "{text}"
    );
    assert!(text.contains("+ banner (File)"), "{text}");
    let applied = run(&manager, &["apply", "-f", file_arg]);
    assert!(applied.status.success(), "{}", stderr(&applied));

    // Removal.
    write_yaml(&file, "pi-cli", &[("banner", banner, "hi")]);
    let diff = run(&manager, &["diff", "-f", file_arg]);
    assert!(stdout(&diff).contains("- motd (File)"), "{}", stdout(&diff));

    // History, newest first, in every output.
    let history = run(&manager, &["history", "pi-cli"]);
    assert!(history.status.success(), "{}", stderr(&history));
    let lines: Vec<String> = stdout(&history).lines().map(str::to_owned).collect();
    assert!(lines[0].starts_with("GENERATION"), "{lines:?}");
    assert!(lines[1].starts_with("2 "), "{lines:?}");
    assert!(lines[2].starts_with("1 "), "{lines:?}");
    let history: Value =
        serde_json::from_slice(&run(&manager, &["history", "pi-cli", "-o", "json"]).stdout)?;
    assert_eq!(history[0]["generation"], 2);

    // A reader may read but not write; errors name the problem.
    let denied = cli(&manager, &manager.reader_token)
        .args(["apply", "-f", file_arg])
        .output()?;
    assert!(!denied.status.success());
    assert!(stderr(&denied).contains("403"), "{}", stderr(&denied));

    // Invalid manifests: every violation with its path, before any request.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: fleetlet.dev/v1\nkind: AgentManifest\nagentId: pi-cli\nresources:\n  - id: a\n    kind: File\n    spec: {path: relative, content: {text: x}, mode: \"0644\"}\n  - id: a\n    kind: File\n    spec: {path: /x//y, content: {text: x}, mode: \"9\"}\n",
    )?;
    let rejected = run(&manager, &["apply", "-f", bad.to_str().context("utf-8")?]);
    assert!(!rejected.status.success());
    let message = stderr(&rejected);
    for path in [
        "resources[0].spec.path",
        "resources[1].spec.path",
        "resources[1].spec.mode",
    ] {
        assert!(message.contains(path), "{path} missing in {message}");
    }

    // The fleet with filters, and get status in three outputs.
    let fleet = stdout(&run(&manager, &["get", "agents", "--label", "site=lab"]));
    assert!(
        fleet.contains("pi-cli") && !fleet.contains("pi-other"),
        "{fleet}"
    );
    let fleet = stdout(&run(
        &manager,
        &["agent", "list", "--state", "unknown", "-o", "json"],
    ));
    let rows: Value = serde_json::from_str(&fleet)?;
    assert_eq!(rows.as_array().map(Vec::len), Some(2), "{fleet}");
    let fleet = stdout(&run(&manager, &["get", "agents", "--state", "converged"]));
    assert!(!fleet.contains("pi-cli"), "{fleet}");
    let table = stdout(&run(&manager, &["get", "status", "pi-cli"]));
    assert!(
        table.contains("state unknown") && table.contains("RESOURCE"),
        "{table}"
    );
    let yaml = stdout(&run(&manager, &["get", "status", "pi-cli", "-o", "yaml"]));
    assert!(yaml.contains("desiredGeneration: 2"), "{yaml}");
    let json: Value =
        serde_json::from_slice(&run(&manager, &["get", "status", "pi-cli", "-o", "json"]).stdout)?;
    assert_eq!(json["summary"]["desiredGeneration"], 2);

    // Events, then --follow sees a new one arrive.
    let events = stdout(&run(&manager, &["events", "pi-cli"]));
    assert!(
        events.contains("AgentRegistered") && events.contains("ManifestUpdated"),
        "{events}"
    );
    let mut follower = cli(&manager, &manager.admin_token)
        .args(["events", "pi-cli", "--follow", "-o", "jsonl"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let (lines_sender, lines) = mpsc::channel();
    let reader = BufReader::new(follower.stdout.take().context("piped stdout")?);
    std::thread::spawn(move || {
        for line in reader.lines().map_while(Result::ok) {
            if lines_sender.send(line).is_err() {
                break;
            }
        }
    });
    let rotated = run(&manager, &["agent", "rotate-token", "pi-cli"]);
    assert!(rotated.status.success(), "{}", stderr(&rotated));
    assert_ne!(stdout(&rotated).trim(), token);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("TokenRotated")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => {
                let _ = follower.kill();
                anyhow::bail!("events --follow did not show TokenRotated: {seen:?}");
            }
        }
    }
    follower.kill()?;
    follower.wait()?;

    // Decommission.
    let removed = run(&manager, &["agent", "rm", "pi-other"]);
    assert!(removed.status.success(), "{}", stderr(&removed));
    let fleet = stdout(&run(&manager, &["get", "agents"]));
    assert!(!fleet.contains("pi-other"), "{fleet}");
    Ok(())
}

#[tokio::test]
async fn apply_wait_on_a_failing_manifest_names_the_failing_resource() -> anyhow::Result<()> {
    let database = fresh_database().await?;
    let manager = ManagerProcess::start(&database.url).await?;
    let token = add_agent(&manager, "pi-wait");
    let dirs = AgentDirs::new()?;
    let _agent = AgentProcess::start(
        &dirs,
        &AgentOptions::with_manager("pi-wait", &manager.url, &token),
    )?;

    // A good manifest converges, with progress on stderr.
    let file = dirs.base().join("good.json");
    std::fs::write(
        &file,
        manifest(
            "pi-wait",
            vec![file_resource(
                "motd",
                &dirs.root().join("motd"),
                "hi\n",
                "0644",
            )],
        )
        .to_string(),
    )?;
    let file_arg = file.to_str().context("utf-8 path")?;
    let waited = run(
        &manager,
        &["apply", "-f", file_arg, "--wait", "--timeout", "60s"],
    );
    assert!(
        waited.status.success(),
        "{}\n{}",
        stdout(&waited),
        stderr(&waited)
    );
    assert!(stdout(&waited).contains("converged on generation 1"));
    assert!(stderr(&waited).contains("pi-wait: "), "{}", stderr(&waited));

    // A File outside the agent's roots fails on the device: non-zero, naming the resource.
    let bad = dirs.base().join("bad.json");
    std::fs::write(
        &bad,
        manifest(
            "pi-wait",
            vec![
                file_resource("motd", &dirs.root().join("motd"), "hi\n", "0644"),
                file_resource("escape", &dirs.outside().join("nope"), "x", "0644"),
            ],
        )
        .to_string(),
    )?;
    let bad_arg = bad.to_str().context("utf-8 path")?;
    let failed = run(
        &manager,
        &["apply", "-f", bad_arg, "--wait", "--timeout", "60s"],
    );
    assert!(!failed.status.success(), "{}", stdout(&failed));
    let text = stderr(&failed);
    assert!(
        text.contains("RESOURCE"),
        "the per-resource table is missing: {text}"
    );
    assert!(text.contains("escape (File) PathNotAllowed"), "{text}");
    assert!(!dirs.outside().join("nope").exists());
    Ok(())
}

#[test]
fn completions_are_printed_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let output = Command::new(binary("fleetlet"))
            .env_clear()
            .args(["completions", shell])
            .output()
            .expect("runs the CLI");
        assert!(output.status.success(), "{shell}: {output:?}");
        let script = String::from_utf8_lossy(&output.stdout);
        assert!(script.contains("rotate-token"), "{shell}: {script}");
    }
}
