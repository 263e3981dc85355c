//! The agent built for the Raspberry Pis (deploy/dev/cross.sh: aarch64 for a 64-bit OS, armv7
//! for 32-bit Raspberry Pi OS), run under qemu-user on this x86_64 machine: it converges a File
//! with `--once`, repairs a drifted file in standalone mode, and (aarch64) registers with the real
//! x86_64 manager on loopback, converges the manifest pushed there and reports `arch: aarch64`.
//!
//! Needs the variables `deploy/dev/cross.sh build` prints (FLEETLET_AGENT_AARCH64,
//! FLEETLET_AGENT_ARMV7, FLEETLET_QEMU_AARCH64, FLEETLET_QEMU_ARM) and, for the manager test,
//! DATABASE_URL. A missing one fails the test; none is skipped. qemu runs the binaries with the
//! multiarch ARM glibc (`libc6:arm64`/`:armhf`) and no `-L` (see cross.sh for why).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use fleetlet_manifests::AgentStatus;
use fleetlet_tests::agent::{
    AgentDirs, AgentOptions, ManagerProcess, file_resource, manifest, run_once_to_end,
    unique_agent_id, wait_for,
};

/// Emulated, an agent is some ten times slower than natively; the waits allow for a loaded CI.
const DEADLINE: Duration = Duration::from_secs(90);

#[derive(Debug, Clone, Copy)]
enum Target {
    Aarch64,
    Armv7,
}

impl Target {
    /// The agent binary for the target and the qemu that runs it.
    fn binary_and_qemu(self) -> anyhow::Result<(PathBuf, PathBuf)> {
        let (binary, qemu) = match self {
            Target::Aarch64 => ("FLEETLET_AGENT_AARCH64", "FLEETLET_QEMU_AARCH64"),
            Target::Armv7 => ("FLEETLET_AGENT_ARMV7", "FLEETLET_QEMU_ARM"),
        };
        let var = |name: &str| -> anyhow::Result<PathBuf> {
            let path = PathBuf::from(std::env::var_os(name).with_context(|| {
                format!(
                    "{name} is not set: run `set -a; eval \"$(deploy/dev/cross.sh build)\"; set +a`"
                )
            })?);
            if !path.exists() {
                bail!("{name}={} does not exist", path.display());
            }
            Ok(path)
        };
        Ok((var(binary)?, var(qemu)?))
    }

    /// What the agent reports as its architecture (`std::env::consts::ARCH` of its build).
    fn arch(self) -> &'static str {
        match self {
            Target::Aarch64 => "aarch64",
            Target::Armv7 => "arm",
        }
    }
}

/// The command `options` describes for the native agent, run instead as the target's agent
/// under qemu-user: same arguments, same (cleared and set) environment.
fn emulated(target: Target, options: &AgentOptions, dirs: &AgentDirs) -> anyhow::Result<Command> {
    let (binary, qemu) = target.binary_and_qemu()?;
    let native = options.command(dirs)?;
    let mut command = Command::new(qemu);
    command.arg(binary).args(native.get_args()).env_clear();
    for (key, value) in native.get_envs() {
        if let Some(value) = value {
            command.env(key, value);
        }
    }
    Ok(command)
}

/// An emulated agent running in the background, killed when dropped; its output in a file.
#[derive(Debug)]
struct Emulated {
    child: Child,
    log: PathBuf,
}

impl Emulated {
    fn start(mut command: Command, log: &Path) -> anyhow::Result<Self> {
        let file = File::create(log)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("start the emulated agent")?;
        Ok(Self {
            child,
            log: log.to_path_buf(),
        })
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Emulated {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `--once` converges a File, and replaces a file of 3 GiB that stood at its path: on 32-bit
/// ARM, a 32-bit stat of that file fails with EOVERFLOW (agent/src/confined/stat.rs).
fn converges_once(target: Target) -> anyhow::Result<()> {
    let dirs = AgentDirs::new()?;
    let agent_id = unique_agent_id("cross-once");
    let small = dirs.root().join("motd");
    let large = dirs.root().join("large.img");
    // Sparse: no disk space is used.
    File::create(&large)?.set_len(3 << 30)?;
    dirs.write_manifest(&manifest(
        &agent_id,
        vec![
            file_resource("motd", &small, "hello from an emulated Pi\n", "0644"),
            file_resource("large", &large, "now small\n", "0600"),
        ],
    ))?;
    let options = AgentOptions::standalone(&agent_id);
    let output = run_once_to_end(emulated(target, &options, &dirs)?)?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{target:?} agent --once: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&small)?,
        "hello from an emulated Pi\n"
    );
    assert_eq!(std::fs::read_to_string(&large)?, "now small\n");
    let status: AgentStatus = serde_json::from_str(&stdout).context("the --once status JSON")?;
    assert_eq!(status.agent.arch, target.arch());
    Ok(())
}

/// Standalone with `--manifest-file`, the agent writes the File, then puts it back after
/// someone changed it.
async fn repairs_drift(target: Target) -> anyhow::Result<()> {
    let dirs = AgentDirs::new()?;
    let agent_id = unique_agent_id("cross-drift");
    let path = dirs.root().join("app.conf");
    let wanted = "mode = production\n";
    dirs.write_manifest(&manifest(
        &agent_id,
        vec![file_resource("conf", &path, wanted, "0644")],
    ))?;
    let options = AgentOptions::standalone(&agent_id);
    let agent = Emulated::start(
        emulated(target, &options, &dirs)?,
        &dirs.base().join("agent.log"),
    )?;
    let holds_wanted = || async { (std::fs::read_to_string(&path).ok()? == wanted).then_some(()) };
    wait_for("the file written", DEADLINE, holds_wanted)
        .await
        .with_context(|| agent.logs())?;
    std::fs::write(&path, "mode = debug\n")?;
    wait_for("the drifted file repaired", DEADLINE, holds_wanted)
        .await
        .with_context(|| agent.logs())?;
    Ok(())
}

#[test]
fn arm64_agent_converges_a_file_once() -> anyhow::Result<()> {
    converges_once(Target::Aarch64)
}

#[test]
fn armhf_agent_converges_a_file_once_and_replaces_a_file_over_two_gib() -> anyhow::Result<()> {
    converges_once(Target::Armv7)
}

#[tokio::test]
async fn arm64_agent_repairs_a_drifted_file_standalone() -> anyhow::Result<()> {
    repairs_drift(Target::Aarch64).await
}

#[tokio::test]
async fn armhf_agent_repairs_a_drifted_file_standalone() -> anyhow::Result<()> {
    repairs_drift(Target::Armv7).await
}

/// The arm64 agent and the x86_64 manager (target/debug, on PostgreSQL) on loopback: the agent
/// uses its token, converges the manifest pushed to the manager, and its status there says it is
/// an aarch64 device.
#[tokio::test]
async fn arm64_agent_converges_a_pushed_manifest_and_reports_aarch64() -> anyhow::Result<()> {
    let manager = ManagerProcess::start().await?;
    let dirs = AgentDirs::new()?;
    let agent_id = unique_agent_id("cross-pi");
    let options = manager.enroll(&agent_id).await?;
    let path = dirs.root().join("pushed.txt");
    let generation = manager
        .put_resources(
            &agent_id,
            vec![file_resource("pushed", &path, "from the manager\n", "0644")],
        )
        .await?;
    let agent = Emulated::start(
        emulated(Target::Aarch64, &options, &dirs)?,
        &dirs.base().join("agent.log"),
    )?;
    let view = manager
        .wait_converged(&agent_id, generation, DEADLINE)
        .await
        .with_context(|| {
            format!(
                "agent log:\n{}\nmanager log:\n{}",
                agent.logs(),
                manager.logs()
            )
        })?;
    assert_eq!(std::fs::read_to_string(&path)?, "from the manager\n");
    let status = view.status.context("a converged agent has a status")?;
    assert_eq!(status.agent.arch, "aarch64");
    Ok(())
}
