//! The outside programs the tests run on what the binaries produce: the `fleetlet` CLI against a
//! manager, and promtool on a metrics text.

use std::process::Command;

use crate::manager::ManagerProcess;

/// The `fleetlet` CLI pointed at `manager` with `token`, with no environment from the machine
/// running the tests (no config file either); a loud failure when it is not built.
pub fn fleetlet_cli(manager: &ManagerProcess, token: &str) -> Command {
    let path = crate::binary("fleetlet");
    assert!(
        path.exists(),
        "{} does not exist: run `cargo build --workspace --bins` first",
        path.display()
    );
    let mut command = Command::new(path);
    command
        .env_clear()
        .env("FLEETLET_URL", &manager.url)
        .env("FLEETLET_TOKEN", token)
        // No config file from the machine running the tests.
        .env("XDG_CONFIG_HOME", "/nonexistent");
    command
}

/// `promtool check metrics` (FLEETLET_PROMTOOL, from deploy/dev/validators.sh) on `text`: it must
/// parse and pass promtool's lint (names, units, `_total` on counters, HELP on every family) with
/// nothing to say.
pub fn promtool_check(text: &str) {
    use std::io::Write as _;
    let promtool = std::env::var_os("FLEETLET_PROMTOOL").expect(
        "FLEETLET_PROMTOOL is not set: eval \"$(deploy/dev/validators.sh)\" first to install promtool",
    );
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", promtool.to_string_lossy()));
    child
        .stdin
        .take()
        .expect("stdin piped")
        .write_all(text.as_bytes())
        .expect("promtool reads its input");
    let output = child.wait_with_output().expect("promtool finishes");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && said.trim().is_empty(),
        "promtool check metrics: {}\n{said}\non:\n{text}",
        output.status
    );
}

/// Registers `agent_id` with `fleetlet agent add` as the admin and returns the token it printed;
/// a failing command fails the test with its stderr.
pub fn add_agent(manager: &ManagerProcess, agent_id: &str) -> String {
    let added = fleetlet_cli(manager, &manager.admin_token)
        .args(["agent", "add", agent_id])
        .output()
        .expect("runs the CLI");
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    String::from_utf8_lossy(&added.stdout).trim().to_owned()
}
