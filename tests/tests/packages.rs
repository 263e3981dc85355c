//! The Debian packages deploy/dev/packages.sh builds (FLEETLET_DEB_DIR, FLEETLET_DEB_VERSION):
//! each holds its architecture's binary; the amd64 agent package installs with dpkg into a
//! throwaway root, its files land where the package says, its unit passes `systemd-analyze
//! verify`, an upgrade keeps an edited conffile, remove keeps the state directory and purge
//! deletes it. And the commented conffile names exactly the settings the agent reads from a file.
//!
//! dpkg runs with `--root` and `--force-script-chrootless`: the maintainer scripts run here with
//! DPKG_ROOT set, which they honour (they touch no running service then), so no chroot with a
//! shell and a libc is needed. The root's package database starts as a copy of this machine's,
//! so the package's dependencies (libc6) are satisfied as on a real system.
//! A missing variable or tool fails the test; none is skipped.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, bail};
use fleetlet_agent::config::{DECLARED, Settings};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The package file `pkg` for `arch` built by packages.sh.
fn deb(pkg: &str, arch: &str) -> anyhow::Result<PathBuf> {
    let hint = "run `set -a; eval \"$(deploy/dev/packages.sh)\"; set +a`";
    let dir = std::env::var_os("FLEETLET_DEB_DIR")
        .with_context(|| format!("FLEETLET_DEB_DIR is not set: {hint}"))?;
    let version = std::env::var("FLEETLET_DEB_VERSION")
        .with_context(|| format!("FLEETLET_DEB_VERSION is not set: {hint}"))?;
    let path = PathBuf::from(dir).join(format!("{pkg}_{version}_{arch}.deb"));
    if !path.exists() {
        bail!("{} does not exist: {hint}", path.display());
    }
    Ok(path)
}

/// Runs `command`; its output, or an error with everything it said.
fn run(command: &mut Command) -> anyhow::Result<Output> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?}: {}\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output)
}

/// The ELF machine of a binary: 0x3e x86_64, 0xb7 aarch64, 0x28 32-bit ARM.
fn elf_machine(bytes: &[u8]) -> Option<u16> {
    (bytes.get(..4)? == b"\x7fELF").then(|| u16::from_le_bytes([bytes[18], bytes[19]]))
}

#[test]
fn every_package_holds_its_architectures_binary() -> anyhow::Result<()> {
    for (pkg, arch, machine) in [
        ("fleetlet-agent", "amd64", 0x3e),
        ("fleetlet-agent", "arm64", 0xb7),
        ("fleetlet-agent", "armhf", 0x28),
        ("fleetlet-manager", "amd64", 0x3e),
        ("fleetlet-manager", "arm64", 0xb7),
    ] {
        let deb = deb(pkg, arch)?;
        let field = |name: &str| -> anyhow::Result<String> {
            let output = run(Command::new("dpkg-deb").arg("--field").arg(&deb).arg(name))?;
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
        };
        assert_eq!(field("Package")?, pkg);
        assert_eq!(field("Architecture")?, arch);
        assert!(field("Depends")?.contains("libc6"), "{pkg} {arch}");
        let dir = tempfile::tempdir()?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(dir.path()))?;
        let binary = std::fs::read(dir.path().join("usr/bin").join(pkg))?;
        assert_eq!(elf_machine(&binary), Some(machine), "{pkg} {arch}");
        for file in [
            format!("lib/systemd/system/{pkg}.service"),
            format!("usr/share/man/man8/{pkg}.8.gz"),
            format!("usr/share/doc/{pkg}/copyright"),
        ] {
            assert!(
                dir.path().join(&file).is_file(),
                "{pkg} {arch} lacks {file}"
            );
        }
    }
    Ok(())
}

/// The `#key = value` lines of the conffile, each a setting at an example value.
fn conffile_examples() -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(repo().join("deploy/debian/agent.toml"))?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let (key, value) = line.strip_prefix('#')?.split_once(" = ")?;
            let is_key = !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '-' || c.is_ascii_digit());
            is_key.then(|| (key.to_owned(), value.to_owned()))
        })
        .collect())
}

#[test]
fn the_conffile_names_every_file_setting_once_with_a_value_the_agent_reads() -> anyhow::Result<()> {
    let examples = conffile_examples()?;
    let named: Vec<&str> = examples.iter().map(|(key, _)| key.as_str()).collect();
    let unique: BTreeSet<&str> = named.iter().copied().collect();
    assert_eq!(unique.len(), named.len(), "a key appears twice: {named:?}");
    let declared: BTreeSet<String> = DECLARED
        .iter()
        .filter(|setting| setting.in_file)
        .map(|setting| setting.key())
        .collect();
    let named: BTreeSet<String> = unique.iter().map(|key| (*key).to_owned()).collect();
    assert_eq!(
        named, declared,
        "deploy/debian/agent.toml must list exactly the settings agent/src/config/settings.rs \
         lets a file set"
    );

    let path = Path::new("/etc/fleetlet/agent.toml");
    // As shipped, everything is commented out: the file sets nothing.
    let shipped = std::fs::read_to_string(repo().join("deploy/debian/agent.toml"))?;
    let settings = Settings::from_toml(path, &shipped)?;
    assert!(
        !format!("{settings:?}").contains("Some("),
        "the shipped conffile sets nothing: {settings:?}"
    );
    // Every example, uncommented, is a value the agent accepts.
    let uncommented: String = examples
        .iter()
        .map(|(key, value)| format!("{key} = {value}\n"))
        .collect();
    Settings::from_toml(path, &uncommented)
        .and_then(|settings| {
            settings
                .or(Settings::defaults().expect("defaults"))
                .values()
        })
        .map_err(|error| anyhow::anyhow!("the uncommented examples: {error}"))?;
    Ok(())
}

/// A throwaway root for dpkg: its package database starts as this machine's.
struct Root {
    dir: tempfile::TempDir,
}

impl Root {
    fn new() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("fleetlet-dpkg-")
            .tempdir()?;
        let admin = dir.path().join("var/lib/dpkg");
        for sub in ["info", "updates", "triggers"] {
            std::fs::create_dir_all(admin.join(sub))?;
        }
        std::fs::copy("/var/lib/dpkg/status", admin.join("status"))?;
        std::fs::write(admin.join("available"), "")?;
        Ok(Self { dir })
    }

    fn path(&self, inside: &str) -> PathBuf {
        self.dir.path().join(inside.trim_start_matches('/'))
    }

    fn dpkg(&self, args: &[&str]) -> anyhow::Result<Output> {
        run(Command::new("dpkg")
            .arg(format!("--root={}", self.dir.path().display()))
            .arg("--force-script-chrootless")
            .arg("--force-not-root")
            // An edited conffile is the operator's: keep it and say so, never ask.
            .args(["--force-confdef", "--force-confold"])
            .arg(format!(
                "--log={}",
                self.path("/var/log/dpkg.log").display()
            ))
            .args(args))
    }

    fn installed_version(&self, pkg: &str) -> anyhow::Result<Option<String>> {
        let output = Command::new("dpkg-query")
            .arg(format!(
                "--admindir={}",
                self.path("/var/lib/dpkg").display()
            ))
            .args(["-W", "-f", "${db:Status-Status} ${Version}", pkg])
            .output()?;
        let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        Ok(text.strip_prefix("installed ").map(str::to_owned))
    }
}

/// The package with its version raised and a line added to its conffile: what an upgrade that
/// also changes the default config looks like.
fn newer_package(deb: &Path, work: &Path) -> anyhow::Result<(PathBuf, String)> {
    let tree = work.join("tree");
    run(Command::new("dpkg-deb").arg("-R").arg(deb).arg(&tree))?;
    let control = std::fs::read_to_string(tree.join("DEBIAN/control"))?;
    let version = control
        .lines()
        .find_map(|line| line.strip_prefix("Version: "))
        .context("a Version field")?
        .to_owned();
    let newer = format!("{version}+next1");
    std::fs::write(
        tree.join("DEBIAN/control"),
        control.replace(&format!("Version: {version}"), &format!("Version: {newer}")),
    )?;
    let conffile = tree.join("etc/fleetlet/agent.toml");
    let mut text = std::fs::read_to_string(&conffile)?;
    text.push_str("\n# A setting added by a newer version.\n");
    std::fs::write(&conffile, text)?;
    // md5sums must match the new content.
    let sums = run(Command::new("sh")
        .current_dir(&tree)
        .arg("-c")
        .arg("find . -type f ! -path './DEBIAN/*' -printf '%P\\n' | sort | xargs md5sum"))?;
    std::fs::write(tree.join("DEBIAN/md5sums"), sums.stdout)?;
    let out = work.join(format!("fleetlet-agent_{newer}_amd64.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zgzip", "--build"])
        .arg(&tree)
        .arg(&out))?;
    Ok((out, newer))
}

#[test]
fn the_amd64_agent_package_installs_upgrades_removes_and_purges() -> anyhow::Result<()> {
    let deb = deb("fleetlet-agent", "amd64")?;
    let root = Root::new()?;

    // Install: the files land where the package lists them.
    root.dpkg(&["--install", &deb.display().to_string()])?;
    let version = root
        .installed_version("fleetlet-agent")?
        .context("fleetlet-agent installed")?;
    let listed = root.dpkg(&["--listfiles", "fleetlet-agent"])?;
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    for expected in [
        "/usr/bin/fleetlet-agent",
        "/lib/systemd/system/fleetlet-agent.service",
        "/etc/fleetlet/agent.toml",
        "/usr/share/man/man8/fleetlet-agent.8.gz",
        "/usr/share/doc/fleetlet-agent/copyright",
    ] {
        assert!(
            listed.lines().any(|line| line == expected),
            "{expected} not listed:\n{listed}"
        );
        assert!(root.path(expected).is_file(), "{expected} not installed");
    }
    for line in listed.lines().filter(|line| line.starts_with('/')) {
        assert!(root.path(line).exists(), "{line} listed but not there");
    }
    let mode = |path: &str| -> anyhow::Result<u32> {
        Ok(std::fs::metadata(root.path(path))?.permissions().mode() & 0o7777)
    };
    assert_eq!(mode("/usr/bin/fleetlet-agent")?, 0o755);
    // The state directory, made by postinst: root's alone.
    assert!(root.path("/var/lib/fleetlet").is_dir());
    assert_eq!(mode("/var/lib/fleetlet")?, 0o700);
    let help = run(Command::new(root.path("/usr/bin/fleetlet-agent")).arg("--version"))?;
    assert!(String::from_utf8_lossy(&help.stdout).contains("fleetlet-agent"));

    // The installed unit: verified by systemd with the installed binary in its ExecStart.
    verify_unit(&root)?;

    // Upgrade to a version whose default config changed: the operator's edit stays, the new
    // default is put beside it.
    let conffile = root.path("/etc/fleetlet/agent.toml");
    let edited = format!(
        "{}\nagent-id = \"pi-kitchen\"\n",
        std::fs::read_to_string(&conffile)?
    );
    std::fs::write(&conffile, &edited)?;
    std::fs::write(root.path("/var/lib/fleetlet/store.marker"), "kept")?;
    let work = tempfile::tempdir()?;
    let (newer, newer_version) = newer_package(&deb, work.path())?;
    root.dpkg(&["--install", &newer.display().to_string()])?;
    assert_eq!(
        root.installed_version("fleetlet-agent")?.as_deref(),
        Some(newer_version.as_str()),
        "upgraded from {version}"
    );
    assert_eq!(std::fs::read_to_string(&conffile)?, edited);
    assert!(
        std::fs::read_to_string(root.path("/etc/fleetlet/agent.toml.dpkg-dist"))?
            .contains("A setting added by a newer version"),
        "the new default config is put beside the edited one"
    );
    assert!(root.path("/var/lib/fleetlet/store.marker").is_file());

    // Remove: the program goes, the state directory (and the edited config) stay.
    root.dpkg(&["--remove", "fleetlet-agent"])?;
    assert!(!root.path("/usr/bin/fleetlet-agent").exists());
    assert!(
        !root
            .path("/lib/systemd/system/fleetlet-agent.service")
            .exists()
    );
    assert!(
        root.path("/var/lib/fleetlet/store.marker").is_file(),
        "remove keeps the state"
    );
    assert!(conffile.is_file(), "remove keeps the config");

    // Purge: the state directory and the config go too.
    root.dpkg(&["--purge", "fleetlet-agent"])?;
    assert!(
        !root.path("/var/lib/fleetlet").exists(),
        "purge deletes the state"
    );
    assert!(!conffile.exists(), "purge deletes the config");
    assert!(!root.path("/etc/fleetlet").exists());
    assert_eq!(root.installed_version("fleetlet-agent")?, None);
    Ok(())
}

/// `systemd-analyze verify` of the unit as installed in `root`, with its ExecStart pointed at the
/// installed binary (verify checks that the command exists) and nothing else changed.
fn verify_unit(root: &Root) -> anyhow::Result<()> {
    let analyze = std::env::var_os("FLEETLET_SYSTEMD_ANALYZE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/systemd-analyze"));
    let installed =
        std::fs::read_to_string(root.path("/lib/systemd/system/fleetlet-agent.service"))?;
    let exec_start = "ExecStart=/usr/bin/fleetlet-agent --config /etc/fleetlet/agent.toml";
    assert!(
        installed.lines().any(|line| line == exec_start),
        "{installed}"
    );
    for required in [
        "Type=notify",
        "WatchdogSec=",
        "StateDirectory=fleetlet",
        "NoNewPrivileges=yes",
    ] {
        assert!(
            installed.contains(required),
            "the packaged unit lacks {required}"
        );
    }
    let dir = tempfile::tempdir()?;
    let unit = dir.path().join("fleetlet-agent.service");
    std::fs::write(
        &unit,
        installed.replace(
            exec_start,
            &format!(
                "ExecStart={} --config {}",
                root.path("/usr/bin/fleetlet-agent").display(),
                root.path("/etc/fleetlet/agent.toml").display()
            ),
        ),
    )?;
    // --man=no: the unit's man:fleetlet-agent(8) page is in the throwaway root, not on this
    // machine (the install above checks it is there); everything else is verified.
    let output = Command::new(&analyze)
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .with_context(|| format!("running {}", analyze.display()))?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {}\n{said}",
        output.status
    );
    Ok(())
}
