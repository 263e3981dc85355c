//! The facts the agent reports about its host (`AgentStatus.facts`), which fleet selectors match
//! with `matchFacts`: architecture, operating system, hostname, board model, kernel and memory.
//!
//! Read from `/proc`, `/etc` and the device tree once, the first time a status is built, and kept
//! for the life of the process: they describe the host, which does not change under a running
//! agent (a renamed host shows its new name after the agent restarts). A fact that cannot be read
//! is reported as `unknown` (or 0 bytes, or no model), never as an error: facts serve selection,
//! and a device that cannot say its kernel must still converge.

use std::path::Path;
use std::sync::OnceLock;

use fleetlet_manifests::status::Facts;

/// What a fact that cannot be read is reported as.
pub const UNKNOWN: &str = "unknown";

/// The facts of this host, read on first use (see the module docs).
pub fn host() -> &'static Facts {
    static FACTS: OnceLock<Facts> = OnceLock::new();
    FACTS.get_or_init(|| gather(Path::new("/")))
}

/// Reads the facts of the system whose root directory is `root` (`/` for this host; a test
/// passes a directory laid out like one). The architecture is the one this agent was built for.
pub fn gather(root: &Path) -> Facts {
    Facts {
        arch: std::env::consts::ARCH.to_owned(),
        os: os_id(root).unwrap_or_else(|| std::env::consts::OS.to_owned()),
        hostname: first_line(&root.join("proc/sys/kernel/hostname"))
            .unwrap_or_else(|| UNKNOWN.to_owned()),
        model: model(root),
        kernel: first_line(&root.join("proc/sys/kernel/osrelease"))
            .unwrap_or_else(|| UNKNOWN.to_owned()),
        memory_bytes: memory_bytes(root).unwrap_or(0),
    }
}

/// The first line of a text file, trimmed; `None` when unreadable or empty.
fn first_line(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().next()?.trim();
    (!line.is_empty()).then(|| line.to_owned())
}

/// The board model from the device tree. The file holds a NUL-terminated string (the kernel
/// exports the property as it is stored), so the NUL and any surrounding space are trimmed.
fn model(root: &Path) -> Option<String> {
    let bytes = std::fs::read(root.join("proc/device-tree/model")).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let model = text
        .split('\0')
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    (!model.is_empty()).then_some(model)
}

/// The `ID` of os-release (`/etc/os-release`, else `/usr/lib/os-release`), unquoted: `debian`,
/// `raspbian`, `fedora`.
fn os_id(root: &Path) -> Option<String> {
    ["etc/os-release", "usr/lib/os-release"]
        .iter()
        .find_map(|file| std::fs::read_to_string(root.join(file)).ok())
        .and_then(|text| os_release_id(&text))
}

/// The value of the `ID=` line of an os-release text, without quotes.
pub fn os_release_id(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("ID="))
        .map(|value| {
            value
                .trim()
                .trim_matches(|c| c == '"' || c == '\'')
                .to_owned()
        })
        .find(|value| !value.is_empty())
}

/// `MemTotal` of `/proc/meminfo`, which the kernel writes in KiB, in bytes.
fn memory_bytes(root: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(root.join("proc/meminfo")).ok()?;
    meminfo_total_bytes(&text)
}

/// The `MemTotal:` line of a meminfo text, in bytes.
pub fn meminfo_total_bytes(text: &str) -> Option<u64> {
    let line = text.lines().find(|line| line.starts_with("MemTotal:"))?;
    let mut words = line["MemTotal:".len()..].split_whitespace();
    let kib: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") | None => kib.checked_mul(1024),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests;
