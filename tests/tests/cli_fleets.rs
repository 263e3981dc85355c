//! The `fleetlet` CLI's fleet commands against a real manager on a fresh PostgreSQL database and
//! real `fleetlet-agent` processes (the fleet lab of tests/src/fleets.rs): `fleet apply` (YAML,
//! checked locally with JSON paths), `fleet diff|get|list|devices|history|delete`, `label`,
//! `rollout status --watch` piped (plain lines, no escape codes, an exit status per ending) and
//! the operator actions `pause|resume|approve|abort|rollback`, with their 409s.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use anyhow::Context;
use fleetlet_tests::agent::wait_for;
use fleetlet_tests::fleets::Lab;
use fleetlet_tests::tools::fleetlet_cli;
use serde_json::{Value, json};

/// A watch or command that takes longer than this has hung.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);
/// Real agents converge on a File in seconds; generous for a loaded two-core machine.
const CONVERGE: Duration = Duration::from_secs(60);

/// Runs `fleetlet ARGS` as the admin against the lab's manager, without blocking the runtime
/// (the lab's balancer, which the agents talk through, runs on it), stdout and stderr piped.
async fn fleetlet(lab: &mut Lab, args: &[&str]) -> anyhow::Result<Output> {
    let manager = lab.manager();
    let mut command = tokio::process::Command::from(fleetlet_cli(manager, &manager.admin_token));
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    tokio::time::timeout(COMMAND_TIMEOUT, command.output())
        .await
        .with_context(|| format!("fleetlet {args:?} did not end within {COMMAND_TIMEOUT:?}"))?
        .with_context(|| format!("running fleetlet {args:?}"))
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The command's exit status and both its outputs, for failure messages.
fn shown(output: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        stdout(output),
        stderr(output)
    )
}

/// Asserts that the command succeeded and returns its stdout.
fn ok(output: &Output) -> String {
    assert!(output.status.success(), "{}", shown(output));
    stdout(output)
}

/// The kiosks fleet in YAML: role=kiosk devices write `<path>/{{ agentId }}/motd` saying
/// `<greeting> from <agentId> (<tag>)`, in batches [1, rest] at a 100% threshold.
fn kiosks_yaml(path: &Path, tag: &str, approval: bool) -> String {
    format!(
        r#"# the kiosks fleet
apiVersion: fleetlet.dev/v1
kind: Fleet
name: kiosks
selector:
  matchLabels: {{role: kiosk}}
parameters:
  greeting: {{pattern: "^[a-z]+$", default: hello}}
template:
  resources:
    - id: motd
      kind: File
      spec:
        path: "{}/{{{{ agentId }}}}/motd"
        content: {{text: "{{{{ greeting }}}} from {{{{ agentId }}}} ({tag})\n"}}
        mode: "0644"
rolloutStrategy:
  batches: [{{limit: 1}}, {{}}]
  successThreshold: "100%"
  batchTimeoutSeconds: 60
  requireApproval: {approval}
"#,
        path.display()
    )
}

/// Writes `text` to `name` in `dir` and returns the path as a string argument.
fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<String> {
    let path: PathBuf = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path.to_str().context("utf-8 path")?.to_owned())
}

/// Waits until device `id`'s motd says `text`.
async fn wait_for_motd(lab: &Lab, id: &str, text: &str) -> anyhow::Result<()> {
    let path = lab.device_file(id, "motd");
    wait_for(
        &format!("{} to say {text:?}", path.display()),
        CONVERGE,
        || {
            let path = path.clone();
            async move { (std::fs::read_to_string(&path).ok()? == text).then_some(()) }
        },
    )
    .await
}

/// `rollout status kiosks --watch`, piped.
async fn watch(lab: &mut Lab) -> anyhow::Result<Output> {
    fleetlet(lab, &["rollout", "status", "kiosks", "--watch"]).await
}

/// `fleet apply -f <file>`, which must succeed, then [`watch`].
async fn apply_and_watch(lab: &mut Lab, file: &str) -> anyhow::Result<Output> {
    ok(&fleetlet(lab, &["fleet", "apply", "-f", file]).await?);
    watch(lab).await
}

/// `fleet devices kiosks -o json`, as JSON rows.
async fn devices_json(lab: &mut Lab) -> anyhow::Result<Vec<Value>> {
    let out = ok(&fleetlet(lab, &["fleet", "devices", "kiosks", "-o", "json"]).await?);
    Ok(serde_json::from_str(&out)?)
}

#[tokio::test]
async fn fleet_apply_and_a_piped_watch_follow_the_rollout_batch_by_batch() -> anyhow::Result<()> {
    // kiosk-1..3 (role=kiosk) and printer-1 (role=printer), their agents running.
    let mut lab = Lab::with_kiosks(3, 1).await?;
    let dir = tempfile::tempdir()?;
    let roots = lab.roots();

    // A placeholder that names no parameter: refused here with its JSON path, nothing sent.
    let broken = kiosks_yaml(&roots, "one", false).replace("{{ greeting }}", "{{ greting }}");
    let broken = write(dir.path(), "broken.yaml", &broken)?;
    let refused = fleetlet(&mut lab, &["fleet", "apply", "-f", &broken]).await?;
    assert!(!refused.status.success(), "{}", stdout(&refused));
    let message = stderr(&refused);
    assert!(message.contains("is not a valid fleet"), "{message}");
    assert!(
        message.contains("template.resources[0].spec.content.text"),
        "{message}"
    );
    let listed = ok(&fleetlet(&mut lab, &["fleet", "list", "-o", "json"]).await?);
    assert_eq!(serde_json::from_str::<Value>(&listed)?, json!([]));

    // Before it exists, diff counts the selected devices; each would get a manifest.
    let one = write(dir.path(), "one.yaml", &kiosks_yaml(&roots, "one", false))?;
    let diff = fleetlet(&mut lab, &["fleet", "diff", "-f", &one, "--exit-code"]).await?;
    assert_eq!(diff.status.code(), Some(1), "{}", stderr(&diff));
    let plan = stdout(&diff);
    assert!(
        plan.starts_with("kiosks: 3 devices selected; 3 would change, 0 unchanged\n"),
        "{plan}"
    );
    assert!(
        plan.contains("+ kiosk-1 (newly selected)\n    + motd (File)"),
        "{plan}"
    );
    assert!(!plan.contains("printer-1"), "{plan}");

    let applied = ok(&fleetlet(&mut lab, &["fleet", "apply", "-f", &one]).await?);
    assert!(
        applied.starts_with("kiosks: revision 1, rolling out"),
        "{applied}"
    );

    // The watch, piped: plain lines only, each batch's progress as it changes, in order, and
    // exit 0 when the rollout completes.
    let watched = fleetlet(
        &mut lab,
        &[
            "rollout",
            "status",
            "kiosks",
            "--watch",
            "--timeout",
            "150s",
        ],
    )
    .await?;
    let lines = ok(&watched);
    assert!(
        !lines.contains('\x1b'),
        "escape codes in piped output:\n{lines}"
    );
    assert!(
        lines.ends_with("kiosks: revision 1 rolled out\n"),
        "{lines}"
    );
    let first_done = lines
        .find("kiosks revision 1 batch 1/2 (limit 1): 1 devices, 1 succeeded, 0 failed, 0 pending, done")
        .with_context(|| format!("batch 1 never shown done:\n{lines}"))?;
    let second_started = lines
        .find("batch 2/2 (limit rest): 2 devices")
        .with_context(|| format!("batch 2 never shown started:\n{lines}"))?;
    assert!(
        first_done < second_started,
        "batch 2 started before batch 1 was done:\n{lines}"
    );
    assert!(
        lines.contains("kiosks revision 1 batch 2/2 (limit rest): 2 devices, 2 succeeded, 0 failed, 0 pending, done"),
        "{lines}"
    );
    for id in ["kiosk-1", "kiosk-2", "kiosk-3"] {
        wait_for_motd(&lab, id, &format!("hello from {id} (one)\n")).await?;
    }
    assert_eq!(
        lab.generation("printer-1").await?,
        0,
        "printer-1 was touched"
    );

    // The reads.
    let list = ok(&fleetlet(&mut lab, &["fleet", "list"]).await?);
    assert!(list.starts_with("FLEET"), "{list}");
    assert!(
        list.contains("kiosks") && list.contains("Completed"),
        "{list}"
    );
    assert!(list.contains("3 (3 Succeeded)"), "{list}");
    let get = ok(&fleetlet(&mut lab, &["fleet", "get", "kiosks"]).await?);
    assert!(get.starts_with("kiosks: Completed, revision 1"), "{get}");
    assert!(get.contains("BATCH"), "{get}");
    let status = ok(&fleetlet(&mut lab, &["rollout", "status", "kiosks"]).await?);
    assert!(status.contains("devices: 3 (3 Succeeded)"), "{status}");
    let rows = devices_json(&mut lab).await?;
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(
        rows.iter()
            .all(|r| r["state"] == "Succeeded" && r["revisionRendered"] == 1),
        "{rows:?}"
    );
    let table = ok(&fleetlet(&mut lab, &["fleet", "devices", "kiosks"]).await?);
    assert!(table.starts_with("AGENT"), "{table}");
    let history = ok(&fleetlet(&mut lab, &["fleet", "history", "kiosks"]).await?);
    let history: Vec<&str> = history.lines().collect();
    assert!(history[0].starts_with("REVISION"), "{history:?}");
    assert!(history[1].starts_with("1 "), "{history:?}");

    // Applied, the same file changes nothing; applying it again stores nothing.
    let same = fleetlet(&mut lab, &["fleet", "diff", "-f", &one, "--exit-code"]).await?;
    assert!(
        ok(&same).starts_with("kiosks: 3 devices selected; 0 would change, 3 unchanged\n"),
        "{}",
        stdout(&same)
    );
    let again = ok(&fleetlet(&mut lab, &["fleet", "apply", "-f", &one]).await?);
    assert_eq!(again, "kiosks: unchanged (revision 1)\n");

    // Labels: printer-1 joins the fleet and gets the good revision with its own greeting; taken
    // out again, it is released and keeps its file.
    let labelled = ok(&fleetlet(
        &mut lab,
        &["label", "printer-1", "role=kiosk", "greeting=hi"],
    )
    .await?);
    assert_eq!(
        labelled,
        "printer-1: labels greeting=hi,role=kiosk; fleet kiosks\n"
    );
    wait_for_motd(&lab, "printer-1", "hi from printer-1 (one)\n").await?;
    let released = ok(&fleetlet(&mut lab, &["label", "printer-1", "role-"]).await?);
    assert_eq!(released, "printer-1: labels greeting=hi; no fleet\n");
    let bad = fleetlet(&mut lab, &["label", "printer-1", "role"]).await?;
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(
        stderr(&bad).contains("neither key=value"),
        "{}",
        stderr(&bad)
    );

    // Delete: the fleet goes, the devices keep what they run.
    let deleted = ok(&fleetlet(&mut lab, &["fleet", "delete", "kiosks"]).await?);
    assert!(deleted.contains("keep the manifests"), "{deleted}");
    let listed = ok(&fleetlet(&mut lab, &["fleet", "list", "-o", "json"]).await?);
    assert_eq!(serde_json::from_str::<Value>(&listed)?, json!([]));
    assert_eq!(
        std::fs::read_to_string(lab.device_file("kiosk-1", "motd"))?,
        "hello from kiosk-1 (one)\n"
    );
    Ok(())
}

#[tokio::test]
async fn operator_actions_steer_a_rollout_and_the_watch_exit_status_says_how_it_stopped()
-> anyhow::Result<()> {
    // kiosk-1..3 (role=kiosk) and printer-1 (role=printer), their agents running.
    let mut lab = Lab::with_kiosks(3, 1).await?;
    let dir = tempfile::tempdir()?;
    let roots = lab.roots();
    let one = write(dir.path(), "one.yaml", &kiosks_yaml(&roots, "one", false))?;
    ok(&apply_and_watch(&mut lab, &one).await?);

    // Revision 2 writes outside the devices' file roots: the canary fails, the rollout pauses
    // by itself after batch 1, and the watch ends with status 3 and the counts.
    let outside = lab.outside();
    let broken = write(dir.path(), "two.yaml", &kiosks_yaml(&outside, "two", false))?;
    let watched = apply_and_watch(&mut lab, &broken).await?;
    assert_eq!(watched.status.code(), Some(3), "{}", shown(&watched));
    let reason = "batch 1 of 2: 0 of 1 devices succeeded, 1 failed";
    assert!(
        stdout(&watched).contains(&format!("kiosks: paused: {reason}")),
        "{}",
        stdout(&watched)
    );
    assert!(!stdout(&watched).contains('\x1b'), "{}", stdout(&watched));
    assert!(
        stderr(&watched).contains(&format!(
            "the rollout of kiosks revision 2 is paused: {reason}"
        )),
        "{}",
        stderr(&watched)
    );
    let rows = devices_json(&mut lab).await?;
    let given: Vec<&Value> = rows.iter().filter(|r| r["revisionRendered"] == 2).collect();
    assert_eq!(given.len(), 1, "only the canary gets revision 2: {rows:?}");
    assert_eq!(given[0]["state"], "Failed", "{rows:?}");

    // Approve does not apply to a paused rollout: 409, and the manager says why.
    let refused = fleetlet(&mut lab, &["rollout", "approve", "kiosks"]).await?;
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("409"), "{}", stderr(&refused));

    // Rollback: revision 1 goes back to the canary; a watch ends at once with status 6.
    let rolled = ok(&fleetlet(&mut lab, &["rollout", "rollback", "kiosks"]).await?);
    assert_eq!(
        rolled,
        "kiosks: rollback done; the rollout of revision 1 is RolledBack\n"
    );
    let watched = watch(&mut lab).await?;
    assert_eq!(watched.status.code(), Some(6), "{}", stderr(&watched));
    let deadline = std::time::Instant::now() + CONVERGE;
    loop {
        let rows = devices_json(&mut lab).await?;
        if rows.iter().all(|r| r["revisionRendered"] == 1) {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the canary did not get revision 1 back: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Revision 3, fixed, waits for approval after its canary: status 5 and what to run.
    let three = write(
        dir.path(),
        "three.yaml",
        &kiosks_yaml(&roots, "three", true),
    )?;
    let watched = apply_and_watch(&mut lab, &three).await?;
    assert_eq!(watched.status.code(), Some(5), "{}", shown(&watched));
    assert!(
        stderr(&watched)
            .contains("waits for approval before batch 2/2 (fleetlet rollout approve kiosks)"),
        "{}",
        stderr(&watched)
    );
    // Paused by an operator, the status says so.
    ok(&fleetlet(&mut lab, &["rollout", "pause", "kiosks"]).await?);
    let status = ok(&fleetlet(&mut lab, &["rollout", "status", "kiosks"]).await?);
    assert!(
        status.contains("kiosks: paused: paused by an operator"),
        "{status}"
    );
    // Resumed, it waits for the approval again (a resume is not an approval); approved, it
    // completes.
    let resumed = ok(&fleetlet(&mut lab, &["rollout", "resume", "kiosks"]).await?);
    assert!(resumed.starts_with("kiosks: resume done"), "{resumed}");
    let watched = watch(&mut lab).await?;
    assert_eq!(watched.status.code(), Some(5), "{}", stderr(&watched));
    let approved = ok(&fleetlet(&mut lab, &["rollout", "approve", "kiosks"]).await?);
    assert!(approved.starts_with("kiosks: approve done"), "{approved}");
    let watched = watch(&mut lab).await?;
    assert!(
        ok(&watched).ends_with("kiosks: revision 3 rolled out\n"),
        "{}",
        stdout(&watched)
    );
    for id in ["kiosk-1", "kiosk-2", "kiosk-3"] {
        wait_for_motd(&lab, id, &format!("hello from {id} (three)\n")).await?;
    }
    for action in ["resume", "approve", "abort"] {
        let refused = fleetlet(&mut lab, &["rollout", action, "kiosks"]).await?;
        assert!(
            stderr(&refused).contains("409") && !refused.status.success(),
            "{action} on a completed rollout: {}",
            stderr(&refused)
        );
    }

    // Revision 4 is aborted while it waits for approval: status 4; abort again is a 409.
    let four = write(dir.path(), "four.yaml", &kiosks_yaml(&roots, "four", true))?;
    let watched = apply_and_watch(&mut lab, &four).await?;
    assert_eq!(watched.status.code(), Some(5), "{}", stderr(&watched));
    ok(&fleetlet(&mut lab, &["rollout", "abort", "kiosks"]).await?);
    let watched = watch(&mut lab).await?;
    assert_eq!(watched.status.code(), Some(4), "{}", stderr(&watched));
    assert!(
        stderr(&watched).contains("was aborted"),
        "{}",
        stderr(&watched)
    );
    let again = fleetlet(&mut lab, &["rollout", "abort", "kiosks"]).await?;
    assert!(stderr(&again).contains("409"), "{}", stderr(&again));
    Ok(())
}
