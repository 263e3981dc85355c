//! End-to-end tests of the real `fleetlet-agent` binary in standalone mode (`--manifest-file`)
//! and with `--once`: file convergence, drift repair, ownership, file roots, unknown kinds,
//! exit codes and graceful shutdown. No manager is involved: that is the point of these modes.

use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use fleetlet_manifests::{AgentStatus, ErrorReason, Phase};
use fleetlet_tests::agent::{
    AgentDirs, AgentOptions, AgentProcess, file_resource, manifest, wait_for,
};
use serde_json::json;

const AGENT: &str = "pi-standalone";
/// The resync interval of `AgentOptions::standalone`.
const RESYNC: Duration = Duration::from_millis(500);
/// How long a test waits for the agent to get somewhere: only a bound on a failure (a passing
/// test never waits it out), so generous for a loaded machine. What must be fast is asserted on
/// the timestamps the agent writes on its log lines.
const WAIT: Duration = Duration::from_secs(20);

fn mode_of(path: &Path) -> Option<u32> {
    std::fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o7777)
}

/// Whether `path` holds exactly `text` with `mode`.
fn holds(path: &Path, text: &str, mode: u32) -> bool {
    std::fs::read(path).ok().as_deref() == Some(text.as_bytes()) && mode_of(path) == Some(mode)
}

async fn wait_until_holds(
    path: &Path,
    text: &str,
    mode: u32,
    timeout: Duration,
) -> anyhow::Result<()> {
    wait_for(
        &format!("{} to hold {text:?} with mode {mode:o}", path.display()),
        timeout,
        || async { holds(path, text, mode).then_some(()) },
    )
    .await
}

fn parse_status(stdout: &[u8]) -> anyhow::Result<AgentStatus> {
    serde_json::from_slice(stdout).with_context(|| {
        format!(
            "stdout is not an AgentStatus: {}",
            String::from_utf8_lossy(stdout)
        )
    })
}

#[tokio::test]
async fn manifest_file_mode_converges_with_no_manager_and_follows_file_changes()
-> anyhow::Result<()> {
    let dirs = AgentDirs::new()?;
    let root = dirs.root();
    dirs.write_manifest(&manifest(
        AGENT,
        vec![
            file_resource("motd", &root.join("etc/motd"), "hello\n", "0644"),
            file_resource("conf", &root.join("etc/app/deep/conf.ini"), "a=1\n", "0600"),
        ],
    ))?;
    let agent = AgentProcess::start(&dirs, &AgentOptions::standalone(AGENT))?;
    wait_until_holds(&root.join("etc/motd"), "hello\n", 0o644, WAIT).await?;
    wait_until_holds(&root.join("etc/app/deep/conf.ini"), "a=1\n", 0o600, WAIT).await?;

    dirs.write_manifest(&manifest(
        AGENT,
        vec![
            file_resource("motd", &root.join("etc/motd"), "hello again\n", "0644"),
            file_resource("conf", &root.join("etc/app/deep/conf.ini"), "a=1\n", "0600"),
        ],
    ))?;
    wait_until_holds(&root.join("etc/motd"), "hello again\n", 0o644, WAIT).await?;
    agent
        .wait_for_log(&["ManifestAccepted", "generation 2"], WAIT)
        .await?;
    Ok(())
}

#[tokio::test]
async fn drift_is_repaired_within_one_resync_interval_and_recorded() -> anyhow::Result<()> {
    let dirs = AgentDirs::new()?;
    let path = dirs.root().join("srv/drifty.txt");
    dirs.write_manifest(&manifest(
        AGENT,
        vec![file_resource("drifty", &path, "desired\n", "0640")],
    ))?;
    let agent = AgentProcess::start(&dirs, &AgentOptions::standalone(AGENT))?;
    wait_until_holds(&path, "desired\n", 0o640, WAIT).await?;

    // One resync interval; the margin covers a pass that was just starting. Counted from just
    // before the edit to the repair as the agent logged it (its own timestamp), not to when this
    // test noticed the repaired file, which lags by a polling interval or more.
    let within_one_resync = RESYNC + Duration::from_millis(400);
    let drifts: [(&str, &dyn Fn() -> std::io::Result<()>); 3] = [
        ("content", &|| std::fs::write(&path, "edited by hand\n")),
        ("mode", &|| {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))
        }),
        ("deleted", &|| std::fs::remove_file(&path)),
    ];
    for (drift, make) in drifts {
        let edited = time::OffsetDateTime::now_utc();
        make()?;
        wait_until_holds(&path, "desired\n", 0o640, WAIT).await?;
        let repaired = agent
            .logged_at(&["ResourceRepaired", "drifty", drift], WAIT)
            .await?;
        let took = repaired - edited;
        eprintln!("{drift}: repaired {took} after the edit");
        assert!(
            took <= within_one_resync,
            "{drift}: repaired {took} after the edit\n{}",
            agent.logs()
        );
    }
    Ok(())
}

#[tokio::test]
async fn changing_one_file_rewrites_only_it_and_removal_deletes_only_what_the_agent_wrote()
-> anyhow::Result<()> {
    let dirs = AgentDirs::new()?;
    let root = dirs.root();
    // Files the agent did not write: one never in the manifest, one adopted by a resource.
    let foreign = root.join("data/foreign.txt");
    let adopted = root.join("data/adopted.txt");
    std::fs::create_dir_all(root.join("data"))?;
    std::fs::write(&foreign, "not the agent's\n")?;
    std::fs::write(&adopted, "was here first\n")?;

    let files: Vec<_> = (0..5)
        .map(|i| root.join(format!("data/file-{i}.txt")))
        .collect();
    let resources = |changed: &str, with_adopted: bool, with_last: bool| {
        let mut resources: Vec<_> = files
            .iter()
            .enumerate()
            .filter(|(i, _)| with_last || *i != 4)
            .map(|(i, path)| {
                let text = if i == 0 {
                    changed.to_owned()
                } else {
                    format!("file {i}\n")
                };
                file_resource(&format!("file-{i}"), path, &text, "0644")
            })
            .collect();
        if with_adopted {
            resources.push(file_resource("adopted", &adopted, "managed now\n", "0644"));
        }
        resources
    };
    dirs.write_manifest(&manifest(AGENT, resources("first\n", true, true)))?;
    let _agent = AgentProcess::start(&dirs, &AgentOptions::standalone(AGENT))?;
    for (i, path) in files.iter().enumerate().skip(1) {
        wait_until_holds(path, &format!("file {i}\n"), 0o644, WAIT).await?;
    }
    wait_until_holds(&files[0], "first\n", 0o644, WAIT).await?;
    wait_until_holds(&adopted, "managed now\n", 0o644, WAIT).await?;
    let before: Vec<(u64, i64, i64)> = files[1..]
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| (m.ino(), m.mtime(), m.mtime_nsec())))
        .collect::<Result<_, _>>()?;

    dirs.write_manifest(&manifest(AGENT, resources("second\n", true, true)))?;
    wait_until_holds(&files[0], "second\n", 0o644, WAIT).await?;
    let after: Vec<(u64, i64, i64)> = files[1..]
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| (m.ino(), m.mtime(), m.mtime_nsec())))
        .collect::<Result<_, _>>()?;
    assert_eq!(before, after, "unchanged files were rewritten");

    // Remove the last file's resource and the adopted one.
    dirs.write_manifest(&manifest(AGENT, resources("second\n", false, false)))?;
    wait_for(
        "the removed resource's file to be deleted",
        WAIT,
        || async { (!files[4].exists()).then_some(()) },
    )
    .await?;
    // Give the agent a few more passes to do anything it should not.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        foreign.exists(),
        "a file the agent never managed was deleted"
    );
    assert_eq!(
        std::fs::read_to_string(&adopted)?,
        "managed now\n",
        "a file the agent did not create was deleted or changed on release"
    );
    for path in &files[..4] {
        assert!(path.exists(), "{} was deleted", path.display());
    }
    Ok(())
}

#[tokio::test]
async fn paths_outside_the_roots_and_symlink_escapes_fail_alone_with_path_not_allowed()
-> anyhow::Result<()> {
    let dirs = AgentDirs::new()?;
    let root = dirs.root();
    let outside = dirs.outside();
    symlink(&outside, root.join("escape"))?;
    dirs.write_manifest(&manifest(
        AGENT,
        vec![
            file_resource("inside", &root.join("ok/inside.txt"), "fine\n", "0644"),
            file_resource("outside", &outside.join("evil.txt"), "no\n", "0644"),
            file_resource("escape", &root.join("escape/evil.txt"), "no\n", "0644"),
            file_resource(
                "also-inside",
                &root.join("ok/also.txt"),
                "fine too\n",
                "0600",
            ),
        ],
    ))?;
    let output = AgentOptions::standalone(AGENT).run_once(&dirs)?;
    assert!(
        !output.status.success(),
        "a failed resource must make --once fail"
    );
    let status = parse_status(&output.stdout)?;
    for id in ["outside", "escape"] {
        let resource = &status.resources[id];
        assert_eq!(resource.phase, Phase::Failed, "{id}");
        assert_eq!(
            resource.error.as_ref().map(|e| e.reason.clone()),
            Some(ErrorReason::PathNotAllowed),
            "{id}"
        );
    }
    for id in ["inside", "also-inside"] {
        assert_eq!(status.resources[id].phase, Phase::Ready, "{id}");
    }
    assert!(holds(&root.join("ok/inside.txt"), "fine\n", 0o644));
    assert!(holds(&root.join("ok/also.txt"), "fine too\n", 0o600));
    assert_eq!(
        std::fs::read_dir(&outside)?.count(),
        0,
        "something was written outside the roots"
    );
    Ok(())
}

#[tokio::test]
async fn an_unknown_kind_is_unsupported_and_the_rest_converge() -> anyhow::Result<()> {
    let dirs = AgentDirs::new()?;
    let path = dirs.root().join("motd");
    dirs.write_manifest(&manifest(
        AGENT,
        vec![
            file_resource("motd", &path, "hi\n", "0644"),
            json!({"id": "gpu", "kind": "GpuPassthrough", "spec": {"device": "/dev/dri/card0"}}),
        ],
    ))?;
    let output = AgentOptions::standalone(AGENT).run_once(&dirs)?;
    let status = parse_status(&output.stdout)?;
    assert_eq!(status.resources["gpu"].phase, Phase::Unsupported);
    assert_eq!(status.resources["gpu"].kind, "GpuPassthrough");
    assert_eq!(status.resources["motd"].phase, Phase::Ready);
    assert!(holds(&path, "hi\n", 0o644));
    // Unsupported is not converged: version skew must be visible.
    assert!(!output.status.success());
    Ok(())
}

#[tokio::test]
async fn once_exits_zero_and_prints_the_status_only_when_converged() -> anyhow::Result<()> {
    let dirs = AgentDirs::new()?;
    let root = dirs.root();
    dirs.write_manifest(&manifest(
        AGENT,
        vec![
            file_resource("a", &root.join("a.txt"), "a\n", "0644"),
            file_resource("b", &root.join("sub/b.txt"), "b\n", "0600"),
        ],
    ))?;
    let output = AgentOptions::standalone(AGENT).run_once(&dirs)?;
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let status = parse_status(&output.stdout)?;
    assert_eq!(status.observed_generation, status.manifest_generation);
    assert!(status.all_ready_at(status.manifest_generation));
    assert_eq!(status.resources.len(), 2);

    // The same agent with a file it may not write: not converged, non-zero, status still printed.
    dirs.write_manifest(&manifest(
        AGENT,
        vec![file_resource(
            "bad",
            Path::new("/etc/fleetlet-should-not-exist"),
            "x",
            "0644",
        )],
    ))?;
    let output = AgentOptions::standalone(AGENT).run_once(&dirs)?;
    assert!(!output.status.success());
    let status = parse_status(&output.stdout)?;
    assert_eq!(status.resources["bad"].phase, Phase::Failed);
    assert!(!Path::new("/etc/fleetlet-should-not-exist").exists());
    Ok(())
}

#[tokio::test]
async fn sigterm_makes_the_agent_exit_zero_within_five_seconds() -> anyhow::Result<()> {
    let dirs = AgentDirs::new()?;
    let root = dirs.root();
    let resources = (0..100)
        .map(|i| {
            file_resource(
                &format!("f{i}"),
                &root.join(format!("many/f{i}")),
                "x\n",
                "0644",
            )
        })
        .collect();
    dirs.write_manifest(&manifest(AGENT, resources))?;
    let mut agent = AgentProcess::start(&dirs, &AgentOptions::standalone(AGENT))?;
    agent.wait_for_log(&["ResourceCreated", "f0"], WAIT).await?;
    let (status, took) = agent.terminate(Duration::from_secs(6))?;
    assert!(status.success(), "exit status {status:?}\n{}", agent.logs());
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(agent.logs().contains("agent stopped"));
    Ok(())
}
