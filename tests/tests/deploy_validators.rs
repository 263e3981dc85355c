//! What deploy/ ships to other tools passes those tools: `kubernetes-validate` and `checkov` on
//! deploy/kubernetes, `checkov` and `hadolint` on deploy/Containerfile, `shellcheck` on every
//! shell script under deploy/ and on .ci/run.
//!
//! The tools are the real ones, installed by `deploy/dev/validators.sh`, which prints the
//! variables read here (FLEETLET_KUBERNETES_VALIDATE, FLEETLET_CHECKOV, FLEETLET_HADOLINT,
//! FLEETLET_SHELLCHECK). A missing variable or tool fails the test; it is never skipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, bail};
use serde_json::Value;

fn repo() -> PathBuf {
    let tests_crate = Path::new(env!("CARGO_MANIFEST_DIR"));
    tests_crate.parent().unwrap_or(tests_crate).to_path_buf()
}

/// The tool named by `variable`, which must exist and be executable.
fn tool(variable: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os(variable).with_context(|| {
        format!(
            "{variable} is not set: install the validators and export their paths with \
             `set -a; eval \"$(deploy/dev/validators.sh)\"; set +a`"
        )
    })?;
    let path = PathBuf::from(path);
    let metadata = std::fs::metadata(&path).with_context(|| {
        format!(
            "{variable}={} does not exist: run deploy/dev/validators.sh",
            path.display()
        )
    })?;
    use std::os::unix::fs::PermissionsExt;
    if !metadata.is_file() || metadata.permissions().mode() & 0o111 == 0 {
        bail!("{variable}={} is not an executable file", path.display());
    }
    Ok(path)
}

/// Runs the command from the repository root and returns its output, whatever its exit code.
fn run(command: &mut Command) -> anyhow::Result<(Output, String)> {
    let output = command
        .current_dir(repo())
        .output()
        .with_context(|| format!("running {command:?}"))?;
    let text = format!(
        "{command:?} exited with {}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((output, text))
}

/// Runs the command and fails with everything it printed unless it exits 0.
fn run_clean(command: &mut Command) -> anyhow::Result<String> {
    let (output, text) = run(command)?;
    assert!(output.status.success(), "{text}");
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn deploy_json() -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(repo().join("deploy/deploy.json"))?;
    Ok(serde_json::from_str(&text)?)
}

/// The YAML files of deploy/kubernetes, sorted, as repository-relative paths.
fn kubernetes_files() -> anyhow::Result<Vec<String>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(repo().join("deploy/kubernetes"))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".yaml") || name.ends_with(".yml") {
            files.push(format!("deploy/kubernetes/{name}"));
        }
    }
    files.sort();
    assert!(!files.is_empty(), "no YAML under deploy/kubernetes");
    Ok(files)
}

/// checkov prints "Passed checks: N, Failed checks: N, Skipped checks: N" per framework. It
/// exits 0 without that line when it found nothing it could scan, so the line is required and
/// at least one check must have run.
fn checkov_counts(stdout: &str, text: &str) -> (u32, u32, u32) {
    let line = stdout
        .lines()
        .find(|line| line.starts_with("Passed checks:"))
        .unwrap_or_else(|| panic!("checkov scanned nothing:\n{text}"));
    let numbers: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|part| !part.is_empty())
        .map(|part| part.parse().expect("a count"))
        .collect();
    assert_eq!(numbers.len(), 3, "unexpected checkov summary {line:?}");
    assert!(numbers[0] > 0, "checkov ran no check:\n{text}");
    (numbers[0], numbers[1], numbers[2])
}

/// Every checkov skip in `text` names a check and gives a reason of a few words. Dockerfiles
/// skip with a comment (`# checkov:skip=CKV_DOCKER_2: reason`), Kubernetes objects with an
/// annotation (`checkov.io/skip1: CKV_K8S_43=reason`). Returns how many there are.
fn assert_skips_are_explained(file: &str, text: &str) -> usize {
    let mut skips = 0;
    for (number, line) in text.lines().enumerate() {
        let (check, reason) = if let Some((_, rest)) = line.split_once("checkov:skip=") {
            rest.split_once(':').unwrap_or((rest, ""))
        } else if let Some((_, rest)) = line.split_once("checkov.io/skip") {
            let value = rest.split_once(':').map(|(_, value)| value).unwrap_or("");
            let value = value.trim().trim_matches('"');
            value.split_once('=').unwrap_or((value, ""))
        } else {
            continue;
        };
        skips += 1;
        let check = check.trim();
        assert!(
            check.starts_with("CKV") && !check.contains(' '),
            "{file}:{}: {check:?} is not a check id",
            number + 1
        );
        assert!(
            reason.split_whitespace().count() >= 5,
            "{file}:{}: the reason for skipping {check} is missing or too short to explain anything",
            number + 1
        );
    }
    skips
}

#[test]
fn kubernetes_validate_accepts_every_object_strictly() -> anyhow::Result<()> {
    let validator = tool("FLEETLET_KUBERNETES_VALIDATE")?;
    let files = kubernetes_files()?;
    // --strict rejects fields the API does not know, so a misspelt field fails instead of
    // being dropped silently by the API server.
    let (output, text) = run(Command::new(&validator).arg("--strict").args(&files))?;
    assert!(output.status.success(), "{text}");
    // The validator saw every object deploy.json lists (none was skipped as unknown).
    for resource in deploy_json()?["resources"]
        .as_array()
        .context("resources")?
    {
        let kind = resource["kind"].as_str().context("kind")?.to_lowercase();
        let name = resource["name"].as_str().context("name")?;
        let expected = format!("passed for resource {kind}/{name} ");
        assert!(
            text.contains(&expected),
            "kubernetes-validate did not validate {kind}/{name}:\n{text}"
        );
    }
    Ok(())
}

#[test]
fn checkov_passes_deploy_kubernetes_with_explained_skips_only() -> anyhow::Result<()> {
    let checkov = tool("FLEETLET_CHECKOV")?;
    let mut skips = 0;
    for file in kubernetes_files()? {
        skips += assert_skips_are_explained(&file, &std::fs::read_to_string(repo().join(&file))?);
    }
    // --skip-download: no call to the vendor's API (CI has no network, and needs none).
    let (output, text) = run(Command::new(&checkov).args([
        "-d",
        "deploy/kubernetes",
        "--framework",
        "kubernetes",
        "--compact",
        "--quiet",
        "--skip-download",
    ]))?;
    let (_, failed, skipped) = checkov_counts(&String::from_utf8_lossy(&output.stdout), &text);
    assert_eq!(failed, 0, "{text}");
    assert!(output.status.success(), "{text}");
    // Each skip comment is used (a skip of a check that now passes is stale), and one comment
    // may cover one resource only.
    assert!(
        skipped as usize <= skips,
        "{skipped} skipped checks but {skips} skip comments:\n{text}"
    );
    Ok(())
}

#[test]
fn checkov_passes_the_containerfile() -> anyhow::Result<()> {
    let checkov = tool("FLEETLET_CHECKOV")?;
    let containerfile = std::fs::read_to_string(repo().join("deploy/Containerfile"))?;
    assert_skips_are_explained("deploy/Containerfile", &containerfile);
    // checkov recognises Dockerfiles by name only and silently scans nothing given a file named
    // Containerfile, so it reads a copy named Dockerfile.
    let dir = tempfile::tempdir()?;
    let copy = dir.path().join("Dockerfile");
    std::fs::write(&copy, &containerfile)?;
    let (output, text) = run(Command::new(&checkov).arg("-f").arg(&copy).args([
        "--framework",
        "dockerfile",
        "--compact",
        "--quiet",
        "--skip-download",
    ]))?;
    let (_, failed, _) = checkov_counts(&String::from_utf8_lossy(&output.stdout), &text);
    assert_eq!(failed, 0, "{text}");
    assert!(output.status.success(), "{text}");
    Ok(())
}

#[test]
fn hadolint_passes_the_containerfile() -> anyhow::Result<()> {
    let hadolint = tool("FLEETLET_HADOLINT")?;
    // No findings at any level: info-level findings (DL3066, a user name instead of a number)
    // are the ones that matter for Kubernetes' runAsNonRoot.
    run_clean(Command::new(&hadolint).args([
        "--failure-threshold",
        "info",
        "deploy/Containerfile",
    ]))?;
    Ok(())
}

/// Every shell script under deploy/: `*.sh`, and any other file whose first line runs a shell.
fn shell_scripts(dir: &Path, found: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            shell_scripts(&path, found)?;
            continue;
        }
        let first_line = std::fs::read(&path)?
            .split(|b| *b == b'\n')
            .next()
            .map(|line| String::from_utf8_lossy(line).into_owned())
            .unwrap_or_default();
        let shebang_shell = first_line.starts_with("#!")
            && ["sh", "bash", "dash"].iter().any(|shell| {
                first_line.ends_with(&format!("/{shell}"))
                    || first_line.ends_with(&format!(" {shell}"))
            });
        if path.extension().is_some_and(|e| e == "sh") || shebang_shell {
            found.push(path);
        }
    }
    Ok(())
}

#[test]
fn shellcheck_passes_every_script() -> anyhow::Result<()> {
    let shellcheck = tool("FLEETLET_SHELLCHECK")?;
    let mut scripts = Vec::new();
    shell_scripts(&repo().join("deploy"), &mut scripts)?;
    scripts.push(repo().join(".ci/run"));
    scripts.sort();
    let relative: Vec<String> = scripts
        .iter()
        .map(|path| {
            path.strip_prefix(repo())
                .unwrap_or(path)
                .display()
                .to_string()
        })
        .collect();
    for expected in ["deploy/dev/demo.sh", "deploy/dev/lib.sh", ".ci/run"] {
        assert!(
            relative.iter().any(|path| path == expected),
            "{expected} not found among {relative:?}"
        );
    }
    // -x follows `source` lines, so lib.sh's functions are known where they are used.
    run_clean(Command::new(&shellcheck).arg("-x").args(&relative))?;
    Ok(())
}
