//! The podman and docker runtimes, driven through their command-line tools with JSON output.
//!
//! Why the CLI and not the engines' HTTP APIs: podman has no daemon unless its API service is
//! started separately, so its socket is one more moving part on a small device, while its CLI is
//! always there; and the two CLIs agree on every verb and flag the agent needs (`ps --filter
//! label=`, `container inspect`, `image inspect`, `create`, `start`, `stop -t`, `rm -f`,
//! `pull`), so one implementation with a [`RuntimeFlavor`] covers both. The cost is a process
//! spawn per call (tens of milliseconds), which is small next to a container start.
//!
//! Every call runs the binary directly with an argument vector (never a shell), with stdin closed
//! and a timeout after which the child is killed. Values from the manifest are passed as
//! `--flag=value` and the image after `--`, so no manifest string can be read as an option.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{ContainerInfo, ContainerRuntime, CreateRequest, RuntimeError};

/// Which engine's CLI this is. The differences that matter are in how they report errors and
/// names, not in the verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeFlavor {
    Podman,
    Docker,
}

impl RuntimeFlavor {
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeFlavor::Podman => "podman",
            RuntimeFlavor::Docker => "docker",
        }
    }
}

/// How long each kind of call may take before the child is killed and the call fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CliTimeouts {
    /// `ps`, `inspect`, `image inspect`, `start`.
    pub query: Duration,
    /// `create`.
    pub create: Duration,
    /// `pull`: bounded below the engine's default apply timeout (120 s), so that a slow pull
    /// fails as a pull, not as a timed-out apply.
    pub pull: Duration,
    /// How long a container gets to stop after SIGTERM before it is killed on removal.
    pub stop_grace: Duration,
}

impl Default for CliTimeouts {
    fn default() -> Self {
        Self {
            query: Duration::from_secs(20),
            create: Duration::from_secs(60),
            pull: Duration::from_secs(100),
            stop_grace: Duration::from_secs(10),
        }
    }
}

/// Error output kept in a message: enough to diagnose, bounded so that a runaway engine cannot
/// blow up a status report.
const MAX_MESSAGE_CHARS: usize = 400;

/// A podman or docker CLI. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CliRuntime {
    flavor: RuntimeFlavor,
    program: PathBuf,
    timeouts: CliTimeouts,
}

/// What one finished command printed.
struct Finished {
    success: bool,
    stdout: String,
    stderr: String,
}

impl CliRuntime {
    /// The runtime's CLI found on `PATH` (`podman` or `docker`), or at `program` when given.
    pub fn new(flavor: RuntimeFlavor, program: Option<PathBuf>) -> Self {
        Self {
            flavor,
            program: program.unwrap_or_else(|| PathBuf::from(flavor.as_str())),
            timeouts: CliTimeouts::default(),
        }
    }

    pub fn with_timeouts(mut self, timeouts: CliTimeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    pub fn flavor(&self) -> RuntimeFlavor {
        self.flavor
    }

    fn name(&self) -> String {
        self.flavor.as_str().to_owned()
    }

    /// Runs the CLI with `args`. A binary that cannot be started, an engine that does not
    /// answer, and a call that runs out of time are errors here; any other failure is returned
    /// as a finished command for the caller to classify.
    async fn run(
        &self,
        operation: &'static str,
        args: &[String],
        timeout: Duration,
    ) -> Result<Finished, RuntimeError> {
        let mut command = tokio::process::Command::new(&self.program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Dropping the future on timeout kills the child instead of leaving it behind.
            .kill_on_drop(true);
        let output = match tokio::time::timeout(timeout, command.output()).await {
            Err(_) => {
                return Err(RuntimeError::TimedOut {
                    runtime: self.name(),
                    operation,
                    timeout,
                });
            }
            Ok(Err(error)) => {
                return Err(RuntimeError::Unavailable {
                    runtime: self.name(),
                    message: format!("could not run {}: {error}", self.program.display()),
                });
            }
            Ok(Ok(output)) => output,
        };
        let finished = Finished {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        };
        if !finished.success && engine_unreachable(&finished.stderr) {
            return Err(RuntimeError::Unavailable {
                runtime: self.name(),
                message: bounded(&finished.stderr),
            });
        }
        Ok(finished)
    }

    fn failed(&self, operation: &'static str, finished: &Finished) -> RuntimeError {
        RuntimeError::Failed {
            runtime: self.name(),
            operation,
            message: bounded(&finished.stderr),
        }
    }

    fn bad_output(&self, operation: &'static str, message: impl ToString) -> RuntimeError {
        RuntimeError::BadOutput {
            runtime: self.name(),
            operation,
            message: bounded(&message.to_string()),
        }
    }

    /// The arguments of `create`, in the form both CLIs accept.
    pub fn create_args(request: &CreateRequest) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "create".into(),
            // The agent decides about pulls itself (pull policy) before it creates.
            "--pull=never".into(),
            // The agent restarts containers itself, with its backoff and restart count.
            "--restart=no".into(),
            // A tiny init as PID 1 forwards SIGTERM and reaps zombies, so a workload that
            // ignores signals as PID 1 (busybox sleep) still stops without waiting out the grace.
            "--init".into(),
            format!("--name={}", request.name),
        ];
        for (key, value) in &request.labels {
            args.push(format!("--label={key}={value}"));
        }
        if let Some(entrypoint) = &request.entrypoint {
            args.push(format!("--entrypoint={entrypoint}"));
        }
        for (key, value) in &request.env {
            args.push(format!("--env={key}={value}"));
        }
        if let Some(dir) = &request.working_dir {
            args.push(format!("--workdir={dir}"));
        }
        if let Some(user) = &request.user {
            args.push(format!("--user={user}"));
        }
        for port in &request.ports {
            let protocol = match port.protocol {
                fleetlet_manifests::manifest::PortProtocol::Tcp => "tcp",
                fleetlet_manifests::manifest::PortProtocol::Udp => "udp",
            };
            args.push(format!(
                "--publish={}:{}/{protocol}",
                port.host_port, port.container_port
            ));
        }
        if let Some(bytes) = request.memory_limit_bytes {
            args.push(format!("--memory={bytes}"));
        }
        if let Some(millis) = request.cpu_millis {
            args.push(format!("--cpus={}.{:03}", millis / 1000, millis % 1000));
        }
        // `--mount` rather than `-v`: docker's `-v` creates a missing source as an empty
        // directory, `--mount` fails. Paths with `,` are refused before they get here.
        for mount in &request.mounts {
            let mut option = format!(
                "--mount=type=bind,source={},target={}",
                mount.source, mount.target
            );
            if mount.read_only {
                option.push_str(",readonly");
            }
            args.push(option);
        }
        // Host access, each flag its own argument. The reconciler only sets these when the
        // agent's configuration allows them; a device path contains no ':' (the runtime's
        // `host:container:perms` separator) because the allowed list refuses one.
        if request.privileged {
            args.push("--privileged".into());
        }
        if request.host_network {
            args.push("--network=host".into());
        }
        if request.host_pid {
            args.push("--pid=host".into());
        }
        for device in &request.devices {
            args.push(format!("--device={device}"));
        }
        // Everything after `--` is positional: the image, then the container's arguments.
        args.push("--".into());
        args.push(request.image.clone());
        args.extend(request.arguments.iter().cloned());
        args
    }
}

impl ContainerRuntime for CliRuntime {
    async fn list(&self, labels: &[(&str, &str)]) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let mut args: Vec<String> = vec![
            "ps".into(),
            "--all".into(),
            "--no-trunc".into(),
            "--format={{.ID}}".into(),
        ];
        // Both engines AND several label filters together.
        for (key, value) in labels {
            args.push(format!("--filter=label={key}={value}"));
        }
        let finished = self.run("list", &args, self.timeouts.query).await?;
        if !finished.success {
            return Err(self.failed("list", &finished));
        }
        let mut found = Vec::new();
        for id in finished
            .stdout
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
        {
            // A container removed between the listing and its inspection is simply gone.
            if let Some(info) = self.inspect(id).await? {
                found.push(info);
            }
        }
        Ok(found)
    }

    async fn inspect(&self, id_or_name: &str) -> Result<Option<ContainerInfo>, RuntimeError> {
        let args = vec![
            "container".into(),
            "inspect".into(),
            "--".into(),
            id_or_name.to_owned(),
        ];
        let finished = self.run("inspect", &args, self.timeouts.query).await?;
        if !finished.success {
            if names_missing_object(&finished.stderr) {
                return Ok(None);
            }
            return Err(self.failed("inspect", &finished));
        }
        let parsed: Vec<InspectedContainer> = serde_json::from_str(&finished.stdout)
            .map_err(|error| self.bad_output("inspect", error))?;
        let Some(container) = parsed.into_iter().next() else {
            return Ok(None);
        };
        Ok(Some(container.into_info()))
    }

    async fn image_id(&self, image: &str) -> Result<Option<String>, RuntimeError> {
        let args = vec![
            "image".into(),
            "inspect".into(),
            "--format={{.Id}}".into(),
            "--".into(),
            image.to_owned(),
        ];
        let finished = self
            .run("image inspect", &args, self.timeouts.query)
            .await?;
        if !finished.success {
            if names_missing_object(&finished.stderr) {
                return Ok(None);
            }
            return Err(self.failed("image inspect", &finished));
        }
        match finished.stdout.lines().next().map(str::trim) {
            Some(id) if !id.is_empty() => Ok(Some(normalize_image_id(id))),
            _ => Err(self.bad_output("image inspect", "no image id printed")),
        }
    }

    async fn pull(&self, image: &str) -> Result<(), RuntimeError> {
        let args = vec!["pull".into(), "--".into(), image.to_owned()];
        let finished = self.run("pull", &args, self.timeouts.pull).await?;
        if finished.success {
            return Ok(());
        }
        Err(RuntimeError::PullFailed {
            runtime: self.name(),
            image: image.to_owned(),
            message: bounded(last_line(&finished.stderr)),
        })
    }

    async fn create(&self, request: &CreateRequest) -> Result<String, RuntimeError> {
        let args = Self::create_args(request);
        let finished = self.run("create", &args, self.timeouts.create).await?;
        if !finished.success {
            let lower = finished.stderr.to_lowercase();
            if lower.contains("already in use") {
                return Err(RuntimeError::NameInUse {
                    name: request.name.clone(),
                });
            }
            if names_missing_object(&finished.stderr) {
                return Err(RuntimeError::ImageNotFound {
                    image: request.image.clone(),
                });
            }
            return Err(self.failed("create", &finished));
        }
        // The id is the last line; podman may print warnings before it.
        match finished
            .stdout
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
        {
            Some(id) => Ok(id.to_owned()),
            None => Err(self.bad_output("create", "no container id printed")),
        }
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        let args = vec!["start".into(), "--".into(), id.to_owned()];
        let finished = self.run("start", &args, self.timeouts.create).await?;
        if finished.success {
            Ok(())
        } else {
            Err(self.failed("start", &finished))
        }
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        // Stop first with a grace period (SIGTERM, then SIGKILL), so the workload can shut down
        // cleanly; `rm -f` alone kills at once on docker. A failed stop is not final: `rm -f`
        // below kills whatever is left.
        let grace = self.timeouts.stop_grace.as_secs().to_string();
        let stop = vec![
            "stop".into(),
            "-t".into(),
            grace,
            "--".into(),
            id.to_owned(),
        ];
        let stop_timeout = self.timeouts.stop_grace + self.timeouts.query;
        let stopped = self.run("stop", &stop, stop_timeout).await?;
        if !stopped.success && names_missing_object(&stopped.stderr) {
            return Ok(());
        }
        let remove = vec!["rm".into(), "-f".into(), "--".into(), id.to_owned()];
        let finished = self.run("remove", &remove, self.timeouts.query).await?;
        if finished.success || names_missing_object(&finished.stderr) {
            Ok(())
        } else {
            Err(self.failed("remove", &finished))
        }
    }
}

/// The part of `inspect`'s JSON the agent reads; podman and docker agree on these fields.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectedContainer {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    image: String,
    #[serde(default)]
    created: Option<String>,
    state: InspectedState,
    #[serde(default)]
    config: Option<InspectedConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectedState {
    #[serde(default)]
    status: String,
    #[serde(default)]
    exit_code: Option<i32>,
    #[serde(default)]
    started_at: Option<String>,
    #[serde(default)]
    finished_at: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectedConfig {
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

impl InspectedContainer {
    fn into_info(self) -> ContainerInfo {
        // One vocabulary whatever the runtime: podman says "stopped" for an exited container
        // until its cleanup has run, and "configured" or "initialized" for a created one.
        let status = match self.state.status.to_lowercase().as_str() {
            "stopped" => "exited".to_owned(),
            "configured" | "initialized" => "created".to_owned(),
            other => other.to_owned(),
        };
        // Both engines report exit code 0 for a container that never exited; only an exited
        // container has an exit code worth reporting.
        let exited = matches!(status.as_str(), "exited" | "stopped" | "dead");
        ContainerInfo {
            id: self.id,
            name: self.name.trim_start_matches('/').to_owned(),
            image_id: normalize_image_id(&self.image),
            labels: self.config.and_then(|c| c.labels).unwrap_or_default(),
            exit_code: self.state.exit_code.filter(|_| exited),
            status,
            created_at: self.created.as_deref().and_then(parse_time),
            started_at: self.state.started_at.as_deref().and_then(parse_time),
            finished_at: self.state.finished_at.as_deref().and_then(parse_time),
        }
    }
}

/// Parses an RFC 3339 time; the engines' "never" (`0001-01-01T00:00:00Z`) is `None`.
fn parse_time(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339)
        .ok()
        .filter(|t| t.year() > 1970)
}

/// Docker prints image ids as `sha256:<hex>`, podman as bare hex; the status uses docker's form.
fn normalize_image_id(id: &str) -> String {
    if id.is_empty() || id.contains(':') {
        id.to_owned()
    } else {
        format!("sha256:{id}")
    }
}

/// Whether an error output says the engine itself could not be reached (as opposed to a
/// request it refused).
fn engine_unreachable(stderr: &str) -> bool {
    let lower = stderr.to_lowercase();
    [
        "cannot connect to the docker daemon",
        "is the docker daemon running",
        "error during connect",
        "permission denied while trying to connect",
        "cannot connect to podman",
        "unable to connect to podman",
    ]
    .iter()
    .any(|needle| lower.contains(needle))
}

/// Whether an error output says the named container or image does not exist.
fn names_missing_object(stderr: &str) -> bool {
    let lower = stderr.to_lowercase();
    [
        "no such container",
        "no such image",
        "no such object",
        "image not known",
    ]
    .iter()
    .any(|needle| lower.contains(needle))
}

fn last_line(text: &str) -> &str {
    text.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or(text)
}

fn bounded(text: &str) -> String {
    let text = text.trim();
    if text.chars().count() <= MAX_MESSAGE_CHARS {
        return text.to_owned();
    }
    let cut: String = text.chars().take(MAX_MESSAGE_CHARS).collect();
    format!("{cut}…")
}

#[cfg(test)]
mod tests;
