//! The real `fleetlet-agent` under real faults (issue #22): a full state dir (a small tmpfs
//! mounted over it, filled up and freed again), `EIO` from fsync (strace's fault injection), a
//! full file root, and a stderr that cannot be written. The agent must degrade, say so in its
//! status, keep converging, and save what it was given once the disk recovers; never stop, lose
//! a generation or panic.
//!
//! Needs root (mount) and strace, which `deploy/dev/validators.sh` installs (`FLEETLET_STRACE`);
//! the tests with a manager need PostgreSQL (`DATABASE_URL`).

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use fleetlet_manifests::api::FleetState;
use fleetlet_manifests::{AgentStatus, ConditionStatus, ConditionType, ErrorReason, Phase};
use fleetlet_tests::agent::{
    AgentDirs, AgentOptions, AgentProcess, ManagerProcess, file_resource, manifest,
    run_once_to_end, unique_agent_id, wait_for,
};
use fleetlet_tests::manager::random_token;
use serde_json::json;

/// Only a bound on a failure; a passing test never waits it out.
const WAIT: Duration = Duration::from_secs(30);

/// A tmpfs of `size` mounted over a directory, unmounted on drop.
struct Tmpfs {
    at: PathBuf,
}

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> anyhow::Result<Self> {
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .context("run mount (these tests need root)")?;
        if !status.success() {
            bail!(
                "mounting a tmpfs on {} failed ({status}); these tests need root",
                at.display()
            );
        }
        Ok(Self {
            at: at.to_path_buf(),
        })
    }

    fn filler(&self) -> PathBuf {
        self.at.join("filler")
    }

    /// Fills the filesystem up to its last byte (again, after something was freed).
    fn fill(&self) -> anyhow::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.filler())?;
        let chunk = vec![0x5a_u8; 64 * 1024];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(error) if error.raw_os_error() == Some(nix::libc::ENOSPC) => break,
                Err(error) => return Err(error.into()),
            }
        }
        // Whatever a 64 KiB chunk could not take, byte by byte.
        while file.write(&[0x5a]).is_ok_and(|n| n == 1) {}
        Ok(())
    }

    /// Gives the space back.
    fn free(&self) -> anyhow::Result<()> {
        std::fs::remove_file(self.filler()).context("remove the filler")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}

/// strace, as installed by `deploy/dev/validators.sh`.
fn strace() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("FLEETLET_STRACE").map(PathBuf::from).context(
        "FLEETLET_STRACE is not set: run `set -a; eval \"$(deploy/dev/validators.sh)\"; set +a` first",
    )?;
    if !path.exists() {
        bail!(
            "FLEETLET_STRACE names {}, which does not exist",
            path.display()
        );
    }
    Ok(path)
}

/// `agent` run under strace with `strace_args` (quiet: the trace goes nowhere), same
/// environment, in a process group of its own so that a kill reaches the agent too.
fn under_strace(agent: &Command, strace_args: &[String]) -> anyhow::Result<Command> {
    let mut command = Command::new(strace()?);
    command
        .args(["-f", "-qq", "-o", "/dev/null"])
        .args(strace_args)
        .arg("--")
        .arg(agent.get_program())
        .args(agent.get_args())
        .env_clear()
        .process_group(0);
    for (key, value) in agent.get_envs() {
        if let Some(value) = value {
            command.env(key, value);
        }
    }
    Ok(command)
}

/// A process group started by a test, killed whole on drop.
struct Group {
    child: Child,
    log: PathBuf,
}

impl Group {
    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.child.wait();
    }
}

fn condition(status: &AgentStatus, type_: ConditionType) -> (ConditionStatus, String) {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status, c.reason.clone()))
        .unwrap_or((ConditionStatus::Unknown, String::new()))
}

/// The generation of the manifest the agent saved in its store.
fn saved_generation(dirs: &AgentDirs, agent_id: &str) -> Option<u64> {
    let path = dirs
        .state_dir()
        .join("agents")
        .join(agent_id)
        .join("manifest.json");
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    manifest["generation"].as_u64()
}

fn exit_line(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// B1: generation 2 arrives while the state dir is full. It is applied from memory, the status
/// says `Degraded`/`DiskFull` and the manager shows the device degraded; once space is back the
/// generation is saved and the device converged.
#[tokio::test]
async fn a_generation_received_while_the_state_dir_is_full_is_applied_reported_and_saved_later()
-> anyhow::Result<()> {
    let manager = ManagerProcess::start().await?;
    let agent_id = unique_agent_id("full-state");
    let options = manager.enroll(&agent_id).await?;
    let dirs = AgentDirs::new()?;
    let state = Tmpfs::mount(&dirs.state_dir(), "2m")?;
    let _agent = AgentProcess::start(&dirs, &options)?;
    let first_file = dirs.root().join("first.conf");
    let second_file = dirs.root().join("second.conf");
    let first = manager
        .put_resources(&agent_id, generation_files(&first_file, None))
        .await?;
    manager.wait_converged(&agent_id, first, WAIT).await?;

    state.fill()?;
    // The report of generation 1 leaves the outbox once acknowledged, which frees a page: wait for
    // that and fill it too, so that the new manifest cannot slip into it.
    let outbox = dirs
        .state_dir()
        .join("agents")
        .join(&agent_id)
        .join("outbox.jsonl");
    wait_for(
        "the acknowledged report to leave the outbox",
        WAIT,
        || async { (!outbox.exists()).then_some(()) },
    )
    .await?;
    state.fill()?;
    let second = manager
        .put_resources(&agent_id, generation_files(&first_file, Some(&second_file)))
        .await?;
    let view = wait_for("the manager to show the full state dir", WAIT, || async {
        let view = manager.status(&agent_id).await.ok()?;
        let status = view.status.as_ref()?;
        (status.manifest_generation == second
            && condition(status, ConditionType::Degraded)
                == (ConditionStatus::True, "DiskFull".into()))
            .then_some(view)
    })
    .await?;
    assert_eq!(view.summary.state, FleetState::Degraded, "{view:?}");
    // Converged from memory: the file roots have space.
    wait_for("the second file", WAIT, || async {
        (std::fs::read_to_string(&second_file).ok()? == "two\n").then_some(())
    })
    .await?;
    assert_eq!(
        saved_generation(&dirs, &agent_id),
        Some(first),
        "nothing could be saved yet"
    );

    state.free()?;
    let view = manager.wait_converged(&agent_id, second, WAIT).await?;
    wait_for("the Degraded condition to clear", WAIT, || async {
        let view = manager.status(&agent_id).await.ok()?;
        let status = view.status?;
        (condition(&status, ConditionType::Degraded).0 == ConditionStatus::False
            && view.summary.state == FleetState::Converged)
            .then_some(())
    })
    .await?;
    assert_eq!(view.summary.desired_generation, second);
    wait_for("generation 2 to be saved in the store", WAIT, || async {
        (saved_generation(&dirs, &agent_id) == Some(second)).then_some(())
    })
    .await?;
    Ok(())
}

/// B1 with `EIO` from fsync: the first fsyncs of the new manifest's file fail (strace), the agent
/// keeps the generation, retries, and saves and converges it.
#[tokio::test]
async fn a_generation_whose_fsync_fails_with_eio_is_retried_until_saved() -> anyhow::Result<()> {
    save_fails_with_eio_then_succeeds("fsync").await
}

/// The same with `EIO` from the write of the new manifest's temporary file.
#[tokio::test]
async fn a_generation_whose_write_fails_with_eio_is_retried_until_saved() -> anyhow::Result<()> {
    save_fails_with_eio_then_succeeds("write").await
}

/// The same with `EIO` from the rename of the temporary file over `manifest.json`.
#[tokio::test]
async fn a_generation_whose_rename_fails_with_eio_is_retried_until_saved() -> anyhow::Result<()> {
    save_fails_with_eio_then_succeeds("rename").await
}

/// The File resources of generation 1 (`first` alone) or of generation 2 (`second` too).
fn generation_files(first: &Path, second: Option<&Path>) -> Vec<serde_json::Value> {
    let mut files = vec![file_resource("first", first, "one\n", "0644")];
    files.extend(second.map(|second| file_resource("second", second, "two\n", "0644")));
    files
}

/// The system calls `syscall` stands for: a rename may be made by any of the three.
fn syscall_set(syscall: &str) -> &str {
    match syscall {
        "rename" => "rename,renameat,renameat2",
        other => other,
    }
}

/// Generation 1 converges; the agent is started again under strace, which makes the first two
/// `syscall`s on the manifest's temporary file (per thread) fail with `EIO`; generation 2 must
/// still converge, the failure be logged, and the generation end up saved.
async fn save_fails_with_eio_then_succeeds(syscall: &str) -> anyhow::Result<()> {
    let manager = ManagerProcess::start().await?;
    let agent_id = unique_agent_id(&format!("eio-{syscall}"));
    let options = manager.enroll(&agent_id).await?;
    let dirs = AgentDirs::new()?;
    let first_file = dirs.root().join("first.conf");
    let second_file = dirs.root().join("second.conf");
    let first = manager
        .put_resources(&agent_id, generation_files(&first_file, None))
        .await?;
    {
        let _agent = AgentProcess::start(&dirs, &options)?;
        manager.wait_converged(&agent_id, first, WAIT).await?;
    }
    // Again under strace: the first two calls on the manifest's temporary file fail, on every
    // thread (strace counts per thread), so the save of generation 2 fails at least twice.
    let temporary = dirs
        .state_dir()
        .join("agents")
        .join(&agent_id)
        .join(".manifest.json.tmp");
    let log = dirs.base().join("agent-strace.log");
    let file = std::fs::File::create(&log)?;
    let child = under_strace(
        &options.command(&dirs)?,
        &[
            "-P".into(),
            temporary.display().to_string(),
            // The agent renames relative to the directory's descriptor (`renameat`), naming the
            // temporary as it is in that directory; strace matches that name as given.
            "-P".into(),
            ".manifest.json.tmp".into(),
            format!("--inject={}:error=EIO:when=1..2", syscall_set(syscall)),
        ],
    )?
    .stdin(Stdio::null())
    .stdout(file.try_clone()?)
    .stderr(file)
    .spawn()
    .context("start the agent under strace")?;
    let agent = Group { child, log };
    wait_for("the agent under strace to start watching", WAIT, || async {
        agent.logs().contains("agent starting").then_some(())
    })
    .await?;

    let second = manager
        .put_resources(&agent_id, generation_files(&first_file, Some(&second_file)))
        .await?;
    manager
        .wait_converged(&agent_id, second, WAIT)
        .await
        .with_context(|| format!("agent log:\n{}", agent.logs()))?;
    let logs = agent.logs();
    assert!(
        logs.contains("the local store cannot save") && logs.contains("Input/output error"),
        "the injected EIO was met and logged:\n{logs}"
    );
    wait_for("generation 2 to be saved in the store", WAIT, || async {
        (saved_generation(&dirs, &agent_id) == Some(second)).then_some(())
    })
    .await
    .with_context(|| format!("agent log:\n{}", agent.logs()))?;
    wait_for("the Degraded condition to clear", WAIT, || async {
        let status = manager.status(&agent_id).await.ok()?.status?;
        (condition(&status, ConditionType::Degraded).0 == ConditionStatus::False).then_some(())
    })
    .await?;
    assert_eq!(std::fs::read_to_string(&second_file)?, "two\n");
    Ok(())
}

/// Converges once with the manager unreachable, so that the agent works from its store alone.
fn offline(agent_id: &str) -> AgentOptions {
    // A port nothing listens on; the token is well formed and never checked.
    AgentOptions::with_manager(
        agent_id,
        "http://127.0.0.1:9",
        &format!("flt_{}", "ab".repeat(32)),
    )
}

/// First run, standalone: the store then holds the manifest, its ownership and its status.
fn converge_once(dirs: &AgentDirs, agent_id: &str, path: &Path) -> anyhow::Result<()> {
    let mut generation_one = manifest(
        agent_id,
        vec![file_resource("motd", path, "hello\n", "0644")],
    );
    generation_one["generation"] = json!(1);
    dirs.write_manifest(&generation_one)?;
    let output = AgentOptions::standalone(agent_id).run_once(dirs)?;
    if !output.status.success() {
        bail!("the first run did not converge: {}", exit_line(&output));
    }
    std::fs::remove_file(path)?;
    Ok(())
}

fn printed_status(output: &Output) -> anyhow::Result<AgentStatus> {
    serde_json::from_slice(&output.stdout)
        .with_context(|| format!("a status on stdout: {}", exit_line(output)))
}

/// B3: an agent started on a full state dir converges from the manifest on disk and says why it
/// cannot save, instead of exiting (a crash loop under `Restart=always`).
#[tokio::test]
async fn an_agent_started_on_a_full_state_dir_converges_from_its_store_and_reports_disk_full()
-> anyhow::Result<()> {
    let agent_id = "pi-full-at-start";
    let dirs = AgentDirs::new()?;
    let state = Tmpfs::mount(&dirs.state_dir(), "1m")?;
    let path = dirs.root().join("motd");
    converge_once(&dirs, agent_id, &path)?;
    state.fill()?;

    let output = run_once_to_end(offline(agent_id).command(&dirs)?)?;
    assert_eq!(output.status.code(), Some(0), "{}", exit_line(&output));
    assert_eq!(
        std::fs::read_to_string(&path)?,
        "hello\n",
        "repaired from the stored manifest"
    );
    let status = printed_status(&output)?;
    assert_eq!(
        condition(&status, ConditionType::Degraded),
        (ConditionStatus::True, "DiskFull".into()),
        "{status:?}"
    );
    assert_eq!(status.resources["motd"].phase, Phase::Ready);

    // With space again, the next start saves and reports a healthy store.
    state.free()?;
    std::fs::remove_file(&path)?;
    let output = run_once_to_end(offline(agent_id).command(&dirs)?)?;
    assert_eq!(output.status.code(), Some(0), "{}", exit_line(&output));
    let status = printed_status(&output)?;
    assert_eq!(
        condition(&status, ConditionType::Degraded).0,
        ConditionStatus::False
    );
    assert_eq!(std::fs::read_to_string(&path)?, "hello\n");
    Ok(())
}

/// B3 with `EIO`: every fsync and fdatasync of the run fails; the agent still converges and
/// reports `StoreUnavailable`.
#[tokio::test]
async fn an_agent_whose_every_fsync_fails_at_start_converges_and_reports_the_store_unavailable()
-> anyhow::Result<()> {
    let agent_id = "pi-eio-at-start";
    let dirs = AgentDirs::new()?;
    let path = dirs.root().join("motd");
    converge_once(&dirs, agent_id, &path)?;

    let command = under_strace(
        &offline(agent_id).command(&dirs)?,
        &[
            "--inject=fsync:error=EIO".into(),
            "--inject=fdatasync:error=EIO".into(),
        ],
    )?;
    let output = run_once_to_end(command)?;
    // The File resource's own fsync fails as well: the file is written but not Ready.
    assert_ne!(
        output.status.code(),
        Some(2),
        "the agent must not stop: {}",
        exit_line(&output)
    );
    let status = printed_status(&output)?;
    assert_eq!(
        condition(&status, ConditionType::Degraded),
        (ConditionStatus::True, "StoreUnavailable".into()),
        "{status:?}"
    );
    assert_eq!(
        status.manifest_generation, 1,
        "the stored manifest was used: {status:?}"
    );
    Ok(())
}

/// B3 with `EIO` from `write` (then from `rename`) at start-up: every write to the store's
/// journal, event log, lock holder line and record temporaries — or every rename of the status
/// and seq records' temporaries — fails from the first system call on. The agent still converges from the stored
/// manifest, says why it cannot save, and does not stop.
#[test]
fn an_agent_whose_store_writes_fail_at_start_converges_and_reports_the_store_unavailable()
-> anyhow::Result<()> {
    eio_at_start("write", true)
}

#[test]
fn an_agent_whose_store_renames_fail_at_start_converges_and_reports_the_store_unavailable()
-> anyhow::Result<()> {
    // Only the run's last save fails here (the status, after the status was printed): the
    // `--once` run ends before a later status could say so, so only the log does.
    eio_at_start("rename", false)
}

/// `printed_degraded`: whether the status `--once` prints was made after the first failure.
fn eio_at_start(syscall: &str, printed_degraded: bool) -> anyhow::Result<()> {
    let agent_id = format!("pi-eio-{syscall}-at-start");
    let dirs = AgentDirs::new()?;
    let path = dirs.root().join("motd");
    converge_once(&dirs, &agent_id, &path)?;
    let agent_dir = dirs.state_dir().join("agents").join(&agent_id);
    let mut args = Vec::new();
    for file in [
        agent_dir.join("resources.jsonl"),
        agent_dir.join("events.jsonl"),
        dirs.state_dir().join("LOCK"),
        agent_dir.join(".status.json.tmp"),
        agent_dir.join(".seq.json.tmp"),
    ] {
        args.extend(["-P".to_owned(), file.display().to_string()]);
    }
    // Renames name the temporary relative to its directory's descriptor.
    for name in [".status.json.tmp", ".seq.json.tmp"] {
        args.extend(["-P".to_owned(), name.to_owned()]);
    }
    args.push(format!("--inject={}:error=EIO", syscall_set(syscall)));
    let output = run_once_to_end(under_strace(&offline(&agent_id).command(&dirs)?, &args)?)?;
    assert_ne!(
        output.status.code(),
        Some(2),
        "the agent must not stop: {}",
        exit_line(&output)
    );
    assert_eq!(
        std::fs::read_to_string(&path).ok().as_deref(),
        Some("hello\n"),
        "converged from the stored manifest: {}",
        exit_line(&output)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("the local store cannot save") && stderr.contains("Input/output error"),
        "the injected EIO was met and logged: {}",
        exit_line(&output)
    );
    let status = printed_status(&output)?;
    if printed_degraded {
        assert_eq!(
            condition(&status, ConditionType::Degraded),
            (ConditionStatus::True, "StoreUnavailable".into()),
            "{status:?}"
        );
    }
    assert_eq!(
        status.manifest_generation, 1,
        "the stored manifest was used: {status:?}"
    );
    Ok(())
}

/// B2: a log that cannot be written is dropped, never a panic (exit 101).
#[test]
fn an_agent_whose_stderr_cannot_be_written_still_converges() -> anyhow::Result<()> {
    let agent_id = "pi-dev-full";
    let dirs = AgentDirs::new()?;
    let path = dirs.root().join("motd");
    let mut generation_one = manifest(
        agent_id,
        vec![file_resource("motd", &path, "hello\n", "0644")],
    );
    generation_one["generation"] = json!(1);
    dirs.write_manifest(&generation_one)?;
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full")?;
    let output = AgentOptions::standalone(agent_id)
        .command(&dirs)?
        .arg("--once")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(full)
        .output()?;
    assert_eq!(output.status.code(), Some(0), "{}", exit_line(&output));
    assert_eq!(std::fs::read_to_string(&path)?, "hello\n");
    let status = printed_status(&output)?;
    assert_eq!(status.resources["motd"].phase, Phase::Ready);
    Ok(())
}

/// A full file root is its own reason, `DiskFull`, not the generic `IoError`.
#[test]
fn a_file_that_does_not_fit_its_root_fails_with_disk_full() -> anyhow::Result<()> {
    let agent_id = "pi-full-root";
    let dirs = AgentDirs::new()?;
    let _root = Tmpfs::mount(&dirs.root(), "64k")?;
    let path = dirs.root().join("big.bin");
    let mut generation_one = manifest(
        agent_id,
        vec![file_resource("big", &path, &"x".repeat(256 * 1024), "0644")],
    );
    generation_one["generation"] = json!(1);
    dirs.write_manifest(&generation_one)?;
    let output = AgentOptions::standalone(agent_id).run_once(&dirs)?;
    let status = printed_status(&output)?;
    let big = &status.resources["big"];
    assert_eq!(big.phase, Phase::Failed, "{status:?}");
    assert_eq!(
        big.error.as_ref().map(|e| e.reason.clone()),
        Some(ErrorReason::DiskFull),
        "{status:?}"
    );
    Ok(())
}

/// Enrollment on a full state dir: the manager answers the agent's token once, so the agent
/// must not stop when it cannot write it (a restart would be refused, 409). It uses the token
/// from memory — it reports and converges — and keeps it once space is back; a restart without
/// the bootstrap token then reuses it.
#[tokio::test]
async fn a_token_enrolled_on_a_full_state_dir_is_used_at_once_and_kept_when_space_is_back()
-> anyhow::Result<()> {
    let bootstrap = random_token("bootstrap");
    let manager =
        ManagerProcess::start_with_env(&[("FLEETLET_BOOTSTRAP_TOKEN", bootstrap.as_str())]).await?;
    let agent_id = unique_agent_id("full-enroll");
    let dirs = AgentDirs::new()?;
    let state = Tmpfs::mount(&dirs.state_dir(), "1m")?;
    state.fill()?;
    let mut options = AgentOptions::standalone(&agent_id);
    options.standalone = false;
    options.env = vec![
        ("FLEETLET_MANAGER_URL".into(), manager.url()),
        ("FLEETLET_BOOTSTRAP_TOKEN".into(), bootstrap.clone()),
    ];
    let agent = AgentProcess::start(&dirs, &options)?;
    agent
        .wait_for_log(&["enrolled", "cannot be kept yet"], WAIT)
        .await?;
    let file = dirs.root().join("enrolled.conf");
    let generation = manager
        .put_resources(
            &agent_id,
            vec![file_resource("enrolled", &file, "enrolled\n", "0644")],
        )
        .await?;
    manager.wait_converged(&agent_id, generation, WAIT).await?;
    let token_file = dirs
        .state_dir()
        .join("agents")
        .join(&agent_id)
        .join("token");
    assert!(!token_file.exists(), "a token was kept on a full disk");

    state.free()?;
    agent
        .wait_for_log(&["the agent token is now kept"], WAIT)
        .await?;
    let token = std::fs::read_to_string(&token_file)?;
    assert!(
        token.trim().starts_with("flt_"),
        "kept token: {} bytes",
        token.len()
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&token_file)?.permissions());
    assert_eq!(mode & 0o777, 0o600, "the kept token is readable by others");
    assert!(
        !agent.logs().contains(token.trim()),
        "the token appears in the agent's log"
    );

    // A restart without the bootstrap token reuses the kept one and reports again.
    let seq_before = manager
        .status(&agent_id)
        .await?
        .status
        .map_or(0, |s| s.report_seq);
    drop(agent);
    options
        .env
        .retain(|(key, _)| key != "FLEETLET_BOOTSTRAP_TOKEN");
    let again = AgentProcess::start(&dirs, &options)?;
    wait_for("a report from the restarted agent", WAIT, || async {
        let status = manager.status(&agent_id).await.ok()?.status?;
        (status.report_seq > seq_before).then_some(())
    })
    .await
    .with_context(|| format!("agent log:\n{}", again.logs()))?;
    Ok(())
}
