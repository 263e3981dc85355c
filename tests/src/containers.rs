//! The container runtimes of the system tests: podman and docker through their CLIs, with the
//! locally built test image (`deploy/dev/containers.sh` builds it in both).

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

/// The image every container test runs; no registry is reachable, so it is built locally.
pub const IMAGE: &str = "localhost/busybox:test";

/// A container runtime the tests drive by its CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Podman,
    Docker,
}

impl Runtime {
    pub fn cli(self) -> &'static str {
        match self {
            Runtime::Podman => "podman",
            Runtime::Docker => "docker",
        }
    }
}

/// Runs the runtime's CLI (bounded by 60 s) and returns its stdout.
pub async fn cli(runtime: Runtime, args: &[&str]) -> anyhow::Result<String> {
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(runtime.cli())
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .with_context(|| format!("{} {args:?} took more than 60 s", runtime.cli()))?
    .with_context(|| format!("run {} {args:?}", runtime.cli()))?;
    if !output.status.success() {
        bail!(
            "{} {args:?} failed: {}",
            runtime.cli(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The runtime's inspect document of one container, or `None` when it does not exist.
pub async fn inspect(runtime: Runtime, id: &str) -> anyhow::Result<Option<Value>> {
    match cli(runtime, &["container", "inspect", id]).await {
        Ok(text) => {
            let mut all: Vec<Value> = serde_json::from_str(&text)?;
            Ok(all.pop())
        }
        Err(error) => {
            let text = error.to_string().to_lowercase();
            if text.contains("no such container") || text.contains("no such object") {
                Ok(None)
            } else {
                Err(error)
            }
        }
    }
}
