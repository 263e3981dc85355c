//! System tests of Container resources: the real `fleetlet-agent` binary in standalone mode
//! (`--manifest-file`) against real podman and real docker, every scenario once per runtime.
//!
//! They need both runtimes and the local image `localhost/busybox:test`
//! (`deploy/dev/containers.sh` sets them up). A runtime that is missing fails the tests loudly;
//! nothing is skipped. Each test has its own agent id, and its `Drop` removes every container
//! labelled with that id and every foreign container the test made. The tests run one at a time
//! (a shared lock), because several of them measure time on a small machine.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use fleetlet_manifests::{
    AgentStatus, ContainerDetails, ErrorReason, Phase, ResourceDetails, ResourceStatus,
};
use fleetlet_tests::agent::{
    AgentDirs, AgentOptions, AgentProcess, file_resource, manifest, unique_agent_id, wait_for,
};
use fleetlet_tests::containers::{IMAGE, Runtime, cli, inspect};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// How often the agent checks its manifest file; a change reaches it within this long.
const MANIFEST_POLL: Duration = Duration::from_millis(500);

/// One test at a time: restart delays and the 2 s start budget are measured, and parallel
/// container starts on a 2-core machine would measure each other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn state_field<'a>(document: &'a Value, field: &str) -> &'a str {
    document["State"][field].as_str().unwrap_or_default()
}

fn time_field(document: &Value, field: &str) -> anyhow::Result<OffsetDateTime> {
    let text = state_field(document, field);
    OffsetDateTime::parse(text, &Rfc3339).with_context(|| format!("State.{field} = {text:?}"))
}

fn container_details(status: &ResourceStatus) -> Option<&ContainerDetails> {
    match &status.details {
        Some(ResourceDetails::Container(details)) => Some(details),
        _ => None,
    }
}

fn reason(status: &ResourceStatus) -> Option<ErrorReason> {
    status.error.as_ref().map(|e| e.reason.clone())
}

fn container(id: &str, spec: Value) -> Value {
    json!({"id": id, "kind": "Container", "spec": spec})
}

/// A long-running container that stops at once on SIGTERM (the agent adds `--init`).
fn sleeper(id: &str, extra: Value) -> Value {
    let mut spec = json!({"image": IMAGE, "command": ["sleep", "100000"], "pullPolicy": "Never"});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    container(id, spec)
}

/// One agent on one runtime, with its own id; cleans up its containers when dropped.
struct Fixture {
    runtime: Runtime,
    agent_id: String,
    dirs: AgentDirs,
    env: Vec<(String, String)>,
    agent: Option<AgentProcess>,
    foreign: Vec<String>,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

impl Fixture {
    /// Fails (never skips) when the runtime or the test image is not there.
    async fn new(runtime: Runtime, prefix: &str) -> anyhow::Result<Self> {
        let serial = SERIAL.lock().await;
        cli(runtime, &["image", "inspect", IMAGE]).await.with_context(|| {
            format!(
                "{} with the image {IMAGE} is required by these tests: run deploy/dev/containers.sh",
                runtime.cli()
            )
        })?;
        Ok(Self {
            runtime,
            agent_id: unique_agent_id(&format!("{prefix}-{}", runtime.cli())),
            dirs: AgentDirs::new()?,
            env: vec![(
                "FLEETLET_CONTAINER_RUNTIME".into(),
                runtime.cli().to_owned(),
            )],
            agent: None,
            foreign: Vec::new(),
            _serial: serial,
        })
    }

    fn write(&self, resources: Vec<Value>) -> anyhow::Result<()> {
        self.dirs
            .write_manifest(&manifest(&self.agent_id, resources))
    }

    fn start_agent(&mut self) -> anyhow::Result<()> {
        let mut options = AgentOptions::standalone(&self.agent_id);
        options.env = self.env.clone();
        self.agent = Some(AgentProcess::start(&self.dirs, &options)?);
        Ok(())
    }

    fn agent(&self) -> anyhow::Result<&AgentProcess> {
        self.agent.as_ref().context("the agent is not running")
    }

    fn logs(&self) -> String {
        self.agent
            .as_ref()
            .map(AgentProcess::logs)
            .unwrap_or_default()
    }

    /// The status the agent last wrote to its store.
    fn status(&self) -> Option<AgentStatus> {
        self.dirs.stored_status(&self.agent_id)
    }

    /// Waits until the status of `resource` satisfies `check`.
    async fn wait_resource<F>(
        &self,
        resource: &str,
        what: &str,
        timeout: Duration,
        check: F,
    ) -> anyhow::Result<ResourceStatus>
    where
        F: Fn(&AgentStatus, &ResourceStatus) -> bool,
    {
        let found = wait_for(what, timeout, || async {
            let status = self.status()?;
            let resource = status
                .resources
                .iter()
                .find(|(id, _)| id.as_str() == resource)
                .map(|(_, r)| r.clone())?;
            check(&status, &resource).then_some(resource)
        })
        .await;
        found.with_context(|| {
            format!(
                "last status: {}\nagent log:\n{}",
                self.status()
                    .map(|s| serde_json::to_string_pretty(&s).unwrap_or_default())
                    .unwrap_or_default(),
                self.logs()
            )
        })
    }

    async fn wait_ready(
        &self,
        resource: &str,
        timeout: Duration,
    ) -> anyhow::Result<ResourceStatus> {
        self.wait_resource(
            resource,
            &format!("{resource} to be Ready"),
            timeout,
            |_, r| {
                r.phase == Phase::Ready
                    && container_details(r).is_some_and(|d| d.state == "running")
            },
        )
        .await
    }

    /// Ids of the containers labelled with this test's agent id (and `resource`, if given).
    async fn labelled(&self, resource: Option<&str>) -> anyhow::Result<Vec<String>> {
        let agent_filter = format!("label=dev.fleetlet.agent={}", self.agent_id);
        let mut args = vec![
            "ps",
            "--all",
            "--quiet",
            "--no-trunc",
            "--filter",
            &agent_filter,
        ];
        let resource_filter = resource.map(|r| format!("label=dev.fleetlet.resource={r}"));
        if let Some(filter) = &resource_filter {
            args.extend(["--filter", filter.as_str()]);
        }
        let text = cli(self.runtime, &args).await?;
        Ok(text.lines().map(str::to_owned).collect())
    }

    /// When the agent accepted the manifest whose event message starts with `message`.
    fn accepted_at(&self, message: &str) -> Option<OffsetDateTime> {
        let path = self
            .dirs
            .state_dir()
            .join("agents")
            .join(&self.agent_id)
            .join("events.jsonl");
        std::fs::read_to_string(path)
            .ok()?
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|event| event["kind"] == "ManifestAccepted")
            .find(|event| {
                event["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(message))
            })
            .and_then(|event| OffsetDateTime::parse(event["at"].as_str()?, &Rfc3339).ok())
    }

    fn name_of(&self, resource: &str) -> String {
        format!("fleetlet-{}-{resource}", self.agent_id)
    }

    /// Starts a container the agent did not create, under `name`.
    async fn plant_foreign(&mut self, name: &str) -> anyhow::Result<String> {
        self.foreign.push(name.to_owned());
        let id = cli(
            self.runtime,
            &[
                "run",
                "--detach",
                "--init",
                "--pull=never",
                "--name",
                name,
                IMAGE,
                "sleep",
                "100000",
            ],
        )
        .await?;
        Ok(id.lines().last().unwrap_or_default().to_owned())
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // The agent goes first, so that it cannot recreate what is being removed.
        drop(self.agent.take());
        let cli = self.runtime.cli();
        let filter = format!("label=dev.fleetlet.agent={}", self.agent_id);
        let listed = std::process::Command::new(cli)
            .args(["ps", "--all", "--quiet", "--no-trunc", "--filter", &filter])
            .output();
        let mut doomed: Vec<String> = listed
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        doomed.append(&mut self.foreign);
        if !doomed.is_empty() {
            let _ = std::process::Command::new(cli)
                .arg("rm")
                .arg("-f")
                .args(&doomed)
                .output();
        }
    }
}

/// Runs every listed scenario once on podman and once on docker.
macro_rules! on_both_runtimes {
    ($($scenario:ident),* $(,)?) => {
        mod podman {
            $(
                #[tokio::test]
                async fn $scenario() -> anyhow::Result<()> {
                    super::$scenario(super::Runtime::Podman).await
                }
            )*
        }
        mod docker {
            $(
                #[tokio::test]
                async fn $scenario() -> anyhow::Result<()> {
                    super::$scenario(super::Runtime::Docker).await
                }
            )*
        }
    };
}

on_both_runtimes!(
    a_container_runs_within_two_seconds_labelled_and_with_details,
    a_spec_change_replaces_the_container_and_an_agent_restart_keeps_it,
    a_killed_container_is_restarted_with_growing_delays_under_always,
    a_killed_container_stays_down_with_its_exit_code_under_never,
    a_missing_image_fails_with_image_not_found_or_image_pull_failed,
    an_unreachable_runtime_fails_containers_while_files_converge,
    removal_removes_the_container_and_a_foreign_one_with_its_name_is_never_touched,
);

/// Acceptance 1.
async fn a_container_runs_within_two_seconds_labelled_and_with_details(
    runtime: Runtime,
) -> anyhow::Result<()> {
    let mut fx = Fixture::new(runtime, "create").await?;
    fx.write(vec![])?;
    fx.start_agent()?;
    fx.agent()?
        .wait_for_log(&["ManifestAccepted"], Duration::from_secs(10))
        .await?;

    fx.write(vec![sleeper("web", json!({"env": {"MODE": "kiosk"}}))])?;
    // The agent reads its manifest file every 500 ms, so the 2 s budget starts when the agent
    // accepted the manifest (its own event) and ends when it logged the container created (its
    // own log timestamp), not when this test's polls saw the status: the wait only bounds a
    // failure.
    let ready = fx
        .wait_ready("web", MANIFEST_POLL + Duration::from_secs(30))
        .await?;
    let accepted = fx
        .accepted_at("generation 2 ")
        .context("ManifestAccepted event")?;
    let created = fx
        .agent()?
        .logged_at(
            &["ResourceCreated", "resource=web"],
            Duration::from_secs(10),
        )
        .await?;
    let took = created - accepted;
    eprintln!(
        "{}: manifest accepted → container created in {took}",
        runtime.cli()
    );
    assert!(took <= time::Duration::seconds(2), "took {took}");

    let details = container_details(&ready).context("details")?;
    let id = details.container_id.clone().context("containerId")?;
    assert!(details.image_id.as_deref().is_some_and(|i| !i.is_empty()));
    assert!(details.started_at.is_some());
    assert_eq!((details.restarts, details.exit_code), (0, None));

    let document = inspect(runtime, &id)
        .await?
        .context("the container exists")?;
    assert_eq!(state_field(&document, "Status"), "running");
    // The runtime's own record agrees: it started the container in between.
    let started = time_field(&document, "StartedAt")?;
    assert!(
        accepted <= started && started <= created,
        "accepted {accepted}, started {started}, created {created}"
    );
    let labels = &document["Config"]["Labels"];
    assert_eq!(labels["dev.fleetlet.agent"], json!(fx.agent_id));
    assert_eq!(labels["dev.fleetlet.resource"], json!("web"));
    assert_eq!(
        labels["dev.fleetlet.spec-hash"].as_str(),
        ready.spec_hash.as_deref()
    );
    let name = document["Name"].as_str().unwrap_or_default();
    assert_eq!(name.trim_start_matches('/'), fx.name_of("web"));
    let env: Vec<&str> = document["Config"]["Env"]
        .as_array()
        .map(|e| e.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(env.contains(&"MODE=kiosk"), "{env:?}");
    Ok(())
}

/// Acceptance 2.
async fn a_spec_change_replaces_the_container_and_an_agent_restart_keeps_it(
    runtime: Runtime,
) -> anyhow::Result<()> {
    let mut fx = Fixture::new(runtime, "replace").await?;
    fx.write(vec![sleeper("web", json!({"env": {"MODE": "a"}}))])?;
    fx.start_agent()?;
    let first = fx.wait_ready("web", Duration::from_secs(10)).await?;
    let first_id = container_details(&first).and_then(|d| d.container_id.clone());
    let first_id = first_id.context("containerId")?;

    // Each of env, command and limits is a new spec: a new container, the old one gone.
    let changes = [
        json!({"env": {"MODE": "b"}}),
        json!({"env": {"MODE": "b"}, "command": ["sleep", "200000"]}),
        json!({"env": {"MODE": "b"}, "command": ["sleep", "200000"],
               "memoryLimitBytes": 67108864, "cpuMillis": 500}),
    ];
    let mut previous_id = first_id;
    for change in changes {
        fx.write(vec![sleeper("web", change.clone())])?;
        let before = previous_id.clone();
        let replaced = fx
            .wait_resource("web", "a new container", Duration::from_secs(10), |_, r| {
                r.phase == Phase::Ready
                    && container_details(r)
                        .and_then(|d| d.container_id.as_deref())
                        .is_some_and(|id| id != before)
            })
            .await?;
        let new_id = container_details(&replaced)
            .and_then(|d| d.container_id.clone())
            .context("containerId")?;
        assert!(
            inspect(runtime, &previous_id).await?.is_none(),
            "old container {previous_id} is gone after {change}"
        );
        assert_eq!(
            fx.labelled(Some("web")).await?,
            std::slice::from_ref(&new_id)
        );
        previous_id = new_id;
    }
    let document = inspect(runtime, &previous_id).await?.context("exists")?;
    assert_eq!(document["HostConfig"]["Memory"], json!(67108864));

    // The agent restarts with the same spec: same container, not even restarted.
    let started_before = time_field(&document, "StartedAt")?;
    let old_start = fx.status().context("a status")?.agent.started_at;
    let (exit, _) = fx
        .agent
        .as_mut()
        .context("agent")?
        .terminate(Duration::from_secs(10))?;
    assert!(exit.success(), "agent exit: {exit:?}");
    fx.start_agent()?;
    let kept = fx
        .wait_resource(
            "web",
            "the new agent's Ready",
            Duration::from_secs(10),
            |s, r| s.agent.started_at != old_start && r.phase == Phase::Ready,
        )
        .await?;
    assert_eq!(
        container_details(&kept).and_then(|d| d.container_id.as_deref()),
        Some(previous_id.as_str())
    );
    let document = inspect(runtime, &previous_id).await?.context("exists")?;
    assert_eq!(time_field(&document, "StartedAt")?, started_before);
    Ok(())
}

/// Acceptance 3, `Always`.
async fn a_killed_container_is_restarted_with_growing_delays_under_always(
    runtime: Runtime,
) -> anyhow::Result<()> {
    let mut fx = Fixture::new(runtime, "always").await?;
    fx.write(vec![sleeper("web", json!({"restartPolicy": "Always"}))])?;
    fx.start_agent()?;
    let ready = fx.wait_ready("web", Duration::from_secs(10)).await?;
    let id = container_details(&ready)
        .and_then(|d| d.container_id.clone())
        .context("containerId")?;

    let mut delays = Vec::new();
    for restart in 1..=3u32 {
        cli(runtime, &["kill", &id]).await?;
        if restart > 1 {
            // While it waits out its backoff, the status says so, with the exit code.
            fx.wait_resource("web", "CrashLoopBackOff", Duration::from_secs(5), |_, r| {
                reason(r) == Some(ErrorReason::CrashLoopBackOff)
                    && container_details(r).is_some_and(|d| d.exit_code == Some(137))
            })
            .await?;
        }
        let restarted = fx
            .wait_resource(
                "web",
                &format!("restart {restart}"),
                Duration::from_secs(20),
                |_, r| {
                    r.phase == Phase::Ready
                        && container_details(r)
                            .is_some_and(|d| d.restarts == restart && d.state == "running")
                },
            )
            .await?;
        assert_eq!(
            container_details(&restarted).and_then(|d| d.container_id.as_deref()),
            Some(id.as_str()),
            "restarted in place, not recreated"
        );
        let document = inspect(runtime, &id).await?.context("exists")?;
        let delay = time_field(&document, "StartedAt")? - time_field(&document, "FinishedAt")?;
        delays.push(delay);
    }
    eprintln!(
        "{}: delays between exit and restart: {delays:?}",
        runtime.cli()
    );
    // The policy is 1 s, 2 s, 4 s after the exit; each restart waits longer than the last.
    let seconds: Vec<f64> = delays.iter().map(|d| d.as_seconds_f64()).collect();
    assert!(seconds[0] >= 0.9, "{seconds:?}");
    assert!(seconds[1] >= 1.9 && seconds[1] > seconds[0], "{seconds:?}");
    assert!(seconds[2] >= 3.9 && seconds[2] > seconds[1], "{seconds:?}");
    assert!(seconds[2] < 8.0, "{seconds:?}");
    Ok(())
}

/// Acceptance 3, `Never`.
async fn a_killed_container_stays_down_with_its_exit_code_under_never(
    runtime: Runtime,
) -> anyhow::Result<()> {
    let mut fx = Fixture::new(runtime, "never").await?;
    fx.write(vec![sleeper("web", json!({"restartPolicy": "Never"}))])?;
    fx.start_agent()?;
    let ready = fx.wait_ready("web", Duration::from_secs(10)).await?;
    let id = container_details(&ready)
        .and_then(|d| d.container_id.clone())
        .context("containerId")?;
    cli(runtime, &["kill", &id]).await?;
    let failed = fx
        .wait_resource(
            "web",
            "Failed/ContainerExited",
            Duration::from_secs(5),
            |_, r| r.phase == Phase::Failed && reason(r) == Some(ErrorReason::ContainerExited),
        )
        .await?;
    let details = container_details(&failed).context("details")?;
    assert_eq!(details.exit_code, Some(137));
    assert_eq!(details.state, "exited");
    assert_eq!(details.restarts, 0);

    // Several resync intervals later it is still down and was never started again.
    let document = inspect(runtime, &id).await?.context("exists")?;
    let started = time_field(&document, "StartedAt")?;
    // Asserting that nothing happens needs a window: four resync intervals.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let document = inspect(runtime, &id).await?.context("still exists")?;
    assert_eq!(state_field(&document, "Status"), "exited");
    assert_eq!(time_field(&document, "StartedAt")?, started);
    Ok(())
}

/// Acceptance 4, images.
async fn a_missing_image_fails_with_image_not_found_or_image_pull_failed(
    runtime: Runtime,
) -> anyhow::Result<()> {
    let mut fx = Fixture::new(runtime, "image").await?;
    fx.write(vec![
        container(
            "never",
            json!({"image": "localhost/fleetlet-missing:1", "pullPolicy": "Never"}),
        ),
        container(
            "ifmissing",
            json!({"image": "localhost/fleetlet-missing:2", "pullPolicy": "IfNotPresent"}),
        ),
        sleeper("web", json!({})),
    ])?;
    fx.start_agent()?;
    let never = fx
        .wait_resource("never", "ImageNotFound", Duration::from_secs(10), |_, r| {
            r.phase == Phase::Failed
        })
        .await?;
    assert_eq!(reason(&never), Some(ErrorReason::ImageNotFound));
    // No registry is reachable here, so the pull that IfNotPresent tries fails.
    let pulled = fx
        .wait_resource(
            "ifmissing",
            "ImagePullFailed",
            Duration::from_secs(30),
            |_, r| r.phase == Phase::Failed,
        )
        .await?;
    assert_eq!(reason(&pulled), Some(ErrorReason::ImagePullFailed));
    // One failing resource does not hold the others back.
    fx.wait_ready("web", Duration::from_secs(10)).await?;
    assert!(fx.labelled(Some("never")).await?.is_empty());
    Ok(())
}

/// Acceptance 4, runtime. Podman is pointed at a binary that does not exist; docker's CLI at an
/// engine socket where nothing listens (an engine that is down).
async fn an_unreachable_runtime_fails_containers_while_files_converge(
    runtime: Runtime,
) -> anyhow::Result<()> {
    let mut fx = Fixture::new(runtime, "unreachable").await?;
    match runtime {
        Runtime::Podman => fx.env.push((
            "FLEETLET_CONTAINER_RUNTIME_PATH".into(),
            "/nonexistent/bin/podman".into(),
        )),
        Runtime::Docker => fx.env.push((
            "DOCKER_HOST".into(),
            format!("unix://{}/no-engine.sock", fx.dirs.base().display()),
        )),
    }
    let path = fx.dirs.root().join("motd");
    fx.write(vec![
        sleeper("web", json!({})),
        sleeper("worker", json!({"restartPolicy": "Never"})),
        file_resource("motd", &path, "hello\n", "0644"),
    ])?;
    fx.start_agent()?;
    for id in ["web", "worker"] {
        let failed = fx
            .wait_resource(id, "RuntimeUnavailable", Duration::from_secs(10), |_, r| {
                r.phase == Phase::Failed
            })
            .await?;
        assert_eq!(reason(&failed), Some(ErrorReason::RuntimeUnavailable));
    }
    fx.wait_resource(
        "motd",
        "the file to be Ready",
        Duration::from_secs(10),
        |_, r| r.phase == Phase::Ready,
    )
    .await?;
    assert_eq!(std::fs::read_to_string(&path)?, "hello\n");
    assert!(fx.labelled(None).await?.is_empty());
    Ok(())
}

/// Acceptance 5.
async fn removal_removes_the_container_and_a_foreign_one_with_its_name_is_never_touched(
    runtime: Runtime,
) -> anyhow::Result<()> {
    let mut fx = Fixture::new(runtime, "remove").await?;
    let clash_name = fx.name_of("clash");
    let foreign = fx.plant_foreign(&clash_name).await?;
    let foreign_started = time_field(
        &inspect(runtime, &foreign)
            .await?
            .context("foreign exists")?,
        "StartedAt",
    )?;

    fx.write(vec![sleeper("web", json!({})), sleeper("clash", json!({}))])?;
    fx.start_agent()?;
    let ready = fx.wait_ready("web", Duration::from_secs(10)).await?;
    let web_id = container_details(&ready)
        .and_then(|d| d.container_id.clone())
        .context("containerId")?;
    let clash = fx
        .wait_resource("clash", "Conflict", Duration::from_secs(10), |_, r| {
            r.phase == Phase::Failed
        })
        .await?;
    assert_eq!(reason(&clash), Some(ErrorReason::Conflict));

    // Both resources leave the manifest: ours is removed, the foreign one stays as it was.
    fx.write(vec![])?;
    wait_for(
        "the container to be removed",
        Duration::from_secs(15),
        || async {
            inspect(runtime, &web_id)
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await
    .with_context(|| fx.logs())?;
    fx.wait_resource_gone("web").await?;
    assert!(fx.labelled(None).await?.is_empty());
    let document = inspect(runtime, &foreign)
        .await?
        .context("foreign still exists")?;
    assert_eq!(state_field(&document, "Status"), "running");
    assert_eq!(time_field(&document, "StartedAt")?, foreign_started);
    assert!(!labels_of(&document).contains_key("dev.fleetlet.agent"));
    Ok(())
}

impl Fixture {
    async fn wait_resource_gone(&self, resource: &str) -> anyhow::Result<()> {
        wait_for(
            &format!("{resource} to leave the status"),
            Duration::from_secs(10),
            || async {
                let status = self.status()?;
                (!status.resources.keys().any(|id| id.as_str() == resource)).then_some(())
            },
        )
        .await
        .with_context(|| self.logs())
    }
}

/// Labels of an inspect document (docker and podman may say `null` for none).
fn labels_of(document: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(document["Config"]["Labels"].clone()).unwrap_or_default()
}
