//! End-to-end tests of the agent's filesystem store (issue 7) with the real `fleetlet-agent`
//! binary: the state-dir lock, torn and corrupt files, offline boot, kill -9 at random moments,
//! and reports made while the manager was down.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fleetlet_agent::store::fs::Diagnostic;
use fleetlet_agent::store::{FsStore, FsStoreOptions, Store};
use fleetlet_manifests::{AgentId, AgentStatus, ConditionStatus, ConditionType};
use fleetlet_tests::agent::{
    AgentDirs, AgentOptions, AgentProcess, ManagerProcess, file_resource, manifest,
    unique_agent_id, wait_for,
};
use rand::Rng;

const AGENT: &str = "pi-store";

/// `<state-dir>/agents/<agentId>`
fn agent_dir(dirs: &AgentDirs, agent_id: &str) -> PathBuf {
    dirs.state_dir().join("agents").join(agent_id)
}

/// The status overview the agent keeps in its store (readable without any manager).
fn local_status(dirs: &AgentDirs, agent_id: &str) -> Option<AgentStatus> {
    dirs.stored_status(agent_id)
}

fn converged(status: &AgentStatus) -> bool {
    status.manifest_generation > 0 && status.all_ready_at(status.manifest_generation)
}

fn holds(path: &Path, text: &str) -> bool {
    std::fs::read(path).ok().as_deref() == Some(text.as_bytes())
}

async fn wait_for_exit(agent: &mut AgentProcess, timeout: Duration) -> anyhow::Result<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = agent.exited()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            bail!("the agent still runs after {timeout:?}:\n{}", agent.logs());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Fails loudly when the agent binary was built without the `fs-store` feature (a
/// `cargo test -p fleetlet-agent --no-default-features` rebuilds it that way): every test here
/// would otherwise run against the memory store.
async fn wait_for_the_state_dir_lock(dirs: &AgentDirs) -> anyhow::Result<()> {
    wait_for(
        "the agent to lock its state dir (a binary without fs-store never does: rebuild it \
         with `cargo build --workspace --bins`)",
        Duration::from_secs(10),
        || async { dirs.state_dir().join("LOCK").is_file().then_some(()) },
    )
    .await
}

fn kill_hard(agent: &AgentProcess) -> anyhow::Result<()> {
    let pid = i32::try_from(agent.pid()).context("pid fits in i32")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    Ok(())
}

/// Opens the store the way the agent does (the agent must not be running) and reads every
/// record kind; returns what the store had to work around.
fn load_store(dirs: &AgentDirs, agent_id: &str) -> anyhow::Result<Vec<Diagnostic>> {
    let store = FsStore::open(
        dirs.state_dir(),
        AgentId::try_from(agent_id)?,
        FsStoreOptions::default(),
    )?;
    store.load_agent_record()?;
    store
        .load_manifest()?
        .context("the store has no manifest")?;
    store.ownership_records()?;
    store.resource_states()?;
    store.load_status()?;
    store.pending_report()?;
    let mut after = 0;
    loop {
        let page = store.read_events(after, 500)?;
        let Some(last) = page.last() else { break };
        after = last.seq;
    }
    Ok(store.diagnostics())
}

fn files_of(dirs: &AgentDirs, count: usize, version: u32) -> Vec<(PathBuf, String)> {
    (0..count)
        .map(|i| {
            (
                dirs.root().join(format!("dir-{}/file-{i}.conf", i % 10)),
                content(i, version),
            )
        })
        .collect()
}

fn content(i: usize, version: u32) -> String {
    format!("file {i} version {version}\n{}\n", "x".repeat(2000 + i))
}

fn manifest_of(agent_id: &str, files: &[(PathBuf, String)]) -> serde_json::Value {
    manifest(
        agent_id,
        files
            .iter()
            .enumerate()
            .map(|(i, (path, text))| file_resource(&format!("file-{i}"), path, text, "0644"))
            .collect(),
    )
}

#[tokio::test]
async fn a_second_agent_on_the_same_state_dir_refuses_to_start_naming_the_lock_holder()
-> anyhow::Result<()> {
    let dirs = AgentDirs::new()?;
    let motd = dirs.root().join("motd");
    dirs.write_manifest(&manifest(
        AGENT,
        vec![file_resource("motd", &motd, "hi\n", "0644")],
    ))?;
    let mut first = AgentProcess::start(&dirs, &AgentOptions::standalone(AGENT))?;
    wait_for_the_state_dir_lock(&dirs).await?;
    wait_for(
        "the first agent to write motd",
        Duration::from_secs(10),
        || async { holds(&motd, "hi\n").then_some(()) },
    )
    .await?;

    let mut second = AgentProcess::start(&dirs, &AgentOptions::standalone(AGENT))?;
    let status = wait_for_exit(&mut second, Duration::from_secs(10)).await?;
    assert!(!status.success(), "the second agent exited with {status}");
    let logs = second.logs();
    assert!(
        logs.contains("in use by agent pi-store")
            && logs.contains(&format!("pid {}", first.pid()))
            && logs.contains("LOCK"),
        "the refusal does not name the holder:\n{logs}"
    );
    assert!(first.exited()?.is_none(), "the first agent kept running");
    let (status, _) = first.terminate(Duration::from_secs(10))?;
    assert!(status.success());
    Ok(())
}

#[tokio::test]
async fn a_torn_event_line_and_a_corrupt_record_are_worked_around_and_the_agent_converges()
-> anyhow::Result<()> {
    let dirs = AgentDirs::new()?;
    let files = files_of(&dirs, 3, 1);
    dirs.write_manifest(&manifest_of(AGENT, &files))?;
    let mut agent = AgentProcess::start(&dirs, &AgentOptions::standalone(AGENT))?;
    wait_for_the_state_dir_lock(&dirs).await?;
    wait_for("the first convergence", Duration::from_secs(10), || async {
        local_status(&dirs, AGENT).filter(converged)
    })
    .await?;
    agent.terminate(Duration::from_secs(10))?;

    // What a power cut during an append and a damaged disk block leave behind.
    let base = agent_dir(&dirs, AGENT);
    let log = base.join("events.jsonl");
    let mut text = std::fs::read(&log)?;
    text.extend_from_slice(b"{\"seq\":99999,\"at\":\"2026-11-");
    std::fs::write(&log, text)?;
    // The first line of the ownership journal (records and states of every resource).
    let journal = base.join("resources.jsonl");
    let lines = std::fs::read_to_string(&journal)?;
    let rest: String = lines.split_inclusive('\n').skip(1).collect();
    std::fs::write(&journal, format!("{{\"record\": \u{0}\u{0}garbage\n{rest}"))?;
    // And the device drifted while the agent was down.
    std::fs::remove_file(&files[0].0)?;
    std::fs::write(&files[1].0, "edited by hand\n")?;

    let agent = AgentProcess::start(&dirs, &AgentOptions::standalone(AGENT))?;
    agent
        .wait_for_log(&["torn last line", "events.jsonl"], Duration::from_secs(10))
        .await?;
    agent
        .wait_for_log(
            &[
                "corrupt record in",
                "resources.jsonl",
                "at line 1",
                "quarantined as",
            ],
            Duration::from_secs(10),
        )
        .await?;
    for (path, text) in &files {
        wait_for(
            &format!("{} to be restored", path.display()),
            Duration::from_secs(10),
            || async { holds(path, text).then_some(()) },
        )
        .await?;
    }
    let mut agent = agent;
    assert!(
        agent.exited()?.is_none(),
        "the agent is running, not crash-looping"
    );
    let quarantined = std::fs::read_dir(&base)?.filter_map(Result::ok).any(|e| {
        e.file_name()
            .to_string_lossy()
            .starts_with("resources.jsonl.corrupt-")
    });
    assert!(
        quarantined,
        "the corrupt record was kept aside for the operator"
    );
    agent.terminate(Duration::from_secs(10))?;

    // The log is line-aligned again and the readable records went into a new snapshot.
    for line in std::fs::read_to_string(&log)?.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .with_context(|| format!("a line of events.jsonl is not JSON: {line}"))?;
    }
    assert!(load_store(&dirs, AGENT)?.is_empty(), "no damage is left");
    assert!(base.join("resources.json").is_file());
    Ok(())
}

#[tokio::test]
async fn with_the_manager_stopped_a_restarted_agent_converges_from_its_store_within_one_second()
-> anyhow::Result<()> {
    let mut manager = ManagerProcess::start().await?;
    let agent_id = unique_agent_id("offline-boot");
    let token = manager.register_agent(&agent_id).await?;
    let dirs = AgentDirs::new()?;
    let files: Vec<(PathBuf, String)> = (0..20)
        .map(|i| {
            (
                dirs.root().join(format!("etc/app-{i}.conf")),
                format!("setting {i}\n"),
            )
        })
        .collect();
    let options = AgentOptions::with_manager(&agent_id, &manager.url(), &token);
    let mut agent = AgentProcess::start(&dirs, &options)?;
    wait_for_the_state_dir_lock(&dirs).await?;
    let generation = manager
        .put_manifest(&agent_id, &manifest_of(&agent_id, &files))
        .await?;
    manager
        .wait_converged(&agent_id, generation, Duration::from_secs(15))
        .await?;
    agent.terminate(Duration::from_secs(10))?;
    manager.stop()?;
    // A reboot that lost the files (a tmpfs, a wiped partition): only the store remembers them.
    for (path, _) in &files {
        std::fs::remove_file(path)?;
    }

    let agent = AgentProcess::start(&dirs, &options)?;
    for (path, text) in &files {
        wait_for(
            &format!("{} offline", path.display()),
            Duration::from_secs(20),
            || async { holds(path, text).then_some(()) },
        )
        .await
        .with_context(|| agent.logs())?;
    }
    // The second by the agent's own clock: from its start to the last file restored, as its log
    // lines say, not when this test's polls saw the files (the waits above only bound a failure).
    let starting = agent
        .logged_at(&["agent starting"], Duration::from_secs(10))
        .await?;
    let restored = ["ResourceRepaired", "the file was deleted"];
    agent
        .nth_logged_at(files.len() - 1, &restored, Duration::from_secs(10))
        .await?;
    let last_restored = agent
        .log_times(&restored)?
        .into_iter()
        .max()
        .context("no file was restored")?;
    let took = last_restored - starting;
    eprintln!(
        "agent start → {} files restored offline in {took}",
        files.len()
    );
    assert!(
        took <= time::Duration::seconds(1),
        "converged offline after {took}:\n{}",
        agent.logs()
    );
    let status = wait_for(
        "the local status to say converged",
        Duration::from_secs(5),
        || async { local_status(&dirs, &agent_id).filter(converged) },
    )
    .await?;
    assert_eq!(status.observed_generation, generation);
    Ok(())
}

#[tokio::test]
async fn reports_made_while_the_manager_was_down_arrive_when_it_is_back_without_seq_reuse()
-> anyhow::Result<()> {
    let mut manager = ManagerProcess::start().await?;
    let agent_id = unique_agent_id("outbox");
    let token = manager.register_agent(&agent_id).await?;
    let dirs = AgentDirs::new()?;
    let files: Vec<(PathBuf, String)> = (0..3)
        .map(|i| {
            (
                dirs.root().join(format!("conf-{i}")),
                format!("value {i}\n"),
            )
        })
        .collect();
    let options = AgentOptions::with_manager(&agent_id, &manager.url(), &token);
    let mut agent = AgentProcess::start(&dirs, &options)?;
    wait_for_the_state_dir_lock(&dirs).await?;
    let generation = manager
        .put_manifest(&agent_id, &manifest_of(&agent_id, &files))
        .await?;
    let before = manager
        .wait_converged(&agent_id, generation, Duration::from_secs(15))
        .await?
        .status
        .context("a converged agent has a status")?
        .report_seq;

    // The manager goes away; the agent notices, repairs drift, reports into its outbox.
    manager.stop()?;
    std::fs::write(&files[0].0, "drifted\n")?;
    let offline = wait_for(
        "an offline report in the outbox",
        Duration::from_secs(15),
        || async {
            local_status(&dirs, &agent_id).filter(|s| {
                s.report_seq > before
                    && s.conditions.iter().any(|c| {
                        c.type_ == ConditionType::Offline && c.status == ConditionStatus::True
                    })
            })
        },
    )
    .await?;
    wait_for(
        "the drift to be repaired",
        Duration::from_secs(10),
        || async { holds(&files[0].0, &files[0].1).then_some(()) },
    )
    .await?;

    // The agent restarts while the manager is still down: its seqs must keep going up.
    agent.terminate(Duration::from_secs(10))?;
    let after_first_run = local_status(&dirs, &agent_id).context("status")?.report_seq;
    assert!(after_first_run >= offline.report_seq);
    let mut agent = AgentProcess::start(&dirs, &options)?;
    let restarted = wait_for(
        "a report from the restarted agent",
        Duration::from_secs(15),
        || async { local_status(&dirs, &agent_id).filter(|s| s.report_seq > after_first_run) },
    )
    .await?;
    assert!(
        agent_dir(&dirs, &agent_id).join("outbox.jsonl").is_file(),
        "the unsent report waits in the outbox"
    );

    // The manager comes back and ends up with the agent's latest state.
    manager.restart().await?;
    let delivered = manager
        .wait_for_status(
            &agent_id,
            "the reports made offline",
            Duration::from_secs(30),
            |s| s.report_seq >= restarted.report_seq,
        )
        .await?;
    assert!(delivered.report_seq > before);
    wait_for(
        "the manager to hold the latest local status",
        Duration::from_secs(30),
        || async {
            let local = local_status(&dirs, &agent_id)?;
            let remote = manager.status(&agent_id).await.ok()?.status?;
            (remote.report_seq == local.report_seq
                && remote.conditions.iter().any(|c| {
                    c.type_ == ConditionType::Offline && c.status == ConditionStatus::False
                }))
            .then_some(())
        },
    )
    .await
    .with_context(|| agent.logs())?;
    assert_eq!(
        agent.count_log_lines(&["did not accept a stale report"]),
        0,
        "a reportSeq was reused:\n{}",
        agent.logs()
    );
    agent.terminate(Duration::from_secs(10))?;
    Ok(())
}

#[tokio::test]
async fn thirty_rounds_of_kill_9_at_random_moments_never_leave_a_torn_file_or_an_unloadable_store()
-> anyhow::Result<()> {
    const ROUNDS: u32 = 30;
    const FILES: usize = 300;
    let dirs = AgentDirs::new()?;
    let options = AgentOptions::standalone(AGENT);

    // How long one full convergence takes here, so that kills land all over it.
    let first = files_of(&dirs, FILES, 0);
    dirs.write_manifest(&manifest_of(AGENT, &first))?;
    let started = Instant::now();
    let mut agent = AgentProcess::start(&dirs, &options)?;
    wait_for_the_state_dir_lock(&dirs).await?;
    wait_for("the first convergence", Duration::from_secs(60), || async {
        local_status(&dirs, AGENT).filter(converged)
    })
    .await
    .with_context(|| agent.logs())?;
    let window = started.elapsed();
    eprintln!("one convergence of {FILES} files took {window:?}; kills land within that");
    agent.terminate(Duration::from_secs(10))?;

    for round in 1..=ROUNDS {
        let files = files_of(&dirs, FILES, round);
        dirs.write_manifest(&manifest_of(AGENT, &files))?;
        let mut agent = AgentProcess::start(&dirs, &options)?;
        let kill_after = rand::rng().random_range(Duration::ZERO..=window);
        tokio::time::sleep(kill_after).await;
        kill_hard(&agent)?;
        wait_for_exit(&mut agent, Duration::from_secs(10)).await?;

        // Every desired path is absent or holds one whole version: never a torn file.
        for (i, (path, _)) in files.iter().enumerate() {
            let Ok(bytes) = std::fs::read(path) else {
                continue;
            };
            let text = String::from_utf8_lossy(&bytes);
            let version: Option<u32> = text
                .lines()
                .next()
                .and_then(|line| line.rsplit(' ').next())
                .and_then(|v| v.parse().ok());
            assert!(
                version.is_some_and(|v| v <= round && text == content(i, v)),
                "round {round} (killed after {kill_after:?}): {} is torn ({} bytes)",
                path.display(),
                bytes.len()
            );
        }
        // The store loads; a kill may tear the last log line, never corrupt a record.
        let diagnostics = load_store(&dirs, AGENT)
            .with_context(|| format!("round {round}: the store does not load"))?;
        assert!(
            diagnostics
                .iter()
                .all(|d| matches!(d, Diagnostic::TornLine { .. })),
            "round {round}: {diagnostics:?}"
        );

        // The next start converges. One file is removed first, so that convergence is the new
        // process's work and not what the killed one had already finished.
        let _ = std::fs::remove_file(&files[0].0);
        let mut agent = AgentProcess::start(&dirs, &options)?;
        agent
            .wait_for_log(&["agent starting"], Duration::from_secs(10))
            .await?;
        wait_for(
            &format!("round {round} to converge"),
            Duration::from_secs(60),
            || async {
                let status = local_status(&dirs, AGENT).filter(converged)?;
                files
                    .iter()
                    .all(|(path, text)| holds(path, text))
                    .then_some(status)
            },
        )
        .await
        .with_context(|| agent.logs())?;
        let (status, _) = agent.terminate(Duration::from_secs(10))?;
        assert!(status.success(), "round {round}: {status}");
    }
    Ok(())
}
