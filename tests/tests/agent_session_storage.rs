//! System tests of SessionStorage resources: the real `fleetlet-agent` binary in standalone mode
//! (`--manifest-file`) on a real session root, and real podman and docker for the mounts.
//!
//! The container scenarios need both runtimes and the local image `localhost/busybox:test`
//! (`deploy/dev/containers.sh`); a missing runtime fails them, nothing is skipped. The tests run
//! one at a time, because the first one measures time on a small machine.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use fleetlet_manifests::{
    AgentStatus, ErrorReason, Phase, ResourceDetails, ResourceStatus, SessionStorageDetails,
};
use fleetlet_tests::agent::{
    AgentDirs, AgentOptions, AgentProcess, file_resource, manifest, unique_agent_id, wait_for,
};
use fleetlet_tests::containers::{IMAGE, Runtime, cli};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The agent's resync interval in these tests.
const RESYNC: Duration = Duration::from_secs(1);

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn session(id: &str, session_id: &str, limit: u64, expires_at: Option<&str>) -> Value {
    let mut spec = json!({"sessionId": session_id, "sizeLimitBytes": limit});
    if let Some(at) = expires_at {
        spec["expiresAt"] = json!(at);
    }
    json!({"id": id, "kind": "SessionStorage", "spec": spec})
}

fn rfc3339_in(seconds: i64) -> anyhow::Result<String> {
    Ok((OffsetDateTime::now_utc() + time::Duration::seconds(seconds)).format(&Rfc3339)?)
}

fn session_details(status: &ResourceStatus) -> Option<&SessionStorageDetails> {
    match &status.details {
        Some(ResourceDetails::SessionStorage(details)) => Some(details),
        _ => None,
    }
}

fn reason(status: &ResourceStatus) -> Option<ErrorReason> {
    status.error.as_ref().map(|e| e.reason.clone())
}

/// One standalone agent with its own session root; removes its containers when dropped.
struct Fixture {
    agent_id: String,
    dirs: AgentDirs,
    env: Vec<(String, String)>,
    agent: Option<AgentProcess>,
    runtime: Option<Runtime>,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

impl Fixture {
    async fn new(prefix: &str, runtime: Option<Runtime>) -> anyhow::Result<Self> {
        let serial = SERIAL.lock().await;
        let dirs = AgentDirs::new()?;
        let mut env = vec![(
            "FLEETLET_SESSION_ROOT".to_owned(),
            dirs.base().join("sessions").display().to_string(),
        )];
        if let Some(runtime) = runtime {
            cli(runtime, &["image", "inspect", IMAGE]).await.with_context(|| {
                format!(
                    "{} with the image {IMAGE} is required by these tests: run deploy/dev/containers.sh",
                    runtime.cli()
                )
            })?;
            env.push((
                "FLEETLET_CONTAINER_RUNTIME".into(),
                runtime.cli().to_owned(),
            ));
        }
        Ok(Self {
            agent_id: unique_agent_id(prefix),
            dirs,
            env,
            agent: None,
            runtime,
            _serial: serial,
        })
    }

    fn root(&self) -> PathBuf {
        self.dirs.base().join("sessions")
    }

    fn session_dir(&self, id: &str, session_id: &str) -> PathBuf {
        self.root().join(format!("{id}@{session_id}"))
    }

    fn data(&self, id: &str, session_id: &str) -> PathBuf {
        self.session_dir(id, session_id).join("data")
    }

    fn write(&self, resources: Vec<Value>) -> anyhow::Result<()> {
        self.dirs
            .write_manifest(&manifest(&self.agent_id, resources))
    }

    fn start_agent(&mut self) -> anyhow::Result<()> {
        let mut options = AgentOptions::standalone(&self.agent_id);
        options.resync_interval = "1s";
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

    fn status(&self) -> Option<AgentStatus> {
        self.dirs.stored_status(&self.agent_id)
    }

    fn resource(&self, id: &str) -> Option<ResourceStatus> {
        self.status()?
            .resources
            .iter()
            .find(|(rid, _)| rid.as_str() == id)
            .map(|(_, r)| r.clone())
    }

    async fn wait_resource<F>(
        &self,
        id: &str,
        what: &str,
        timeout: Duration,
        check: F,
    ) -> anyhow::Result<ResourceStatus>
    where
        F: Fn(&ResourceStatus) -> bool,
    {
        let found = wait_for(what, timeout, || async {
            self.resource(id).filter(|r| check(r))
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

    async fn wait_ready(&self, id: &str, timeout: Duration) -> anyhow::Result<ResourceStatus> {
        self.wait_resource(id, &format!("{id} to be Ready"), timeout, |r| {
            r.phase == Phase::Ready
        })
        .await
    }

    async fn wait_failed(
        &self,
        id: &str,
        why: ErrorReason,
        timeout: Duration,
    ) -> anyhow::Result<ResourceStatus> {
        let what = format!("{id} to fail with {why}");
        self.wait_resource(id, &what, timeout, |r| {
            r.phase == Phase::Failed && reason(r).as_ref() == Some(&why)
        })
        .await
    }

    /// Ids of the containers labelled with this test's agent id.
    async fn labelled(&self, runtime: Runtime) -> anyhow::Result<Vec<String>> {
        let filter = format!("label=dev.fleetlet.agent={}", self.agent_id);
        let text = cli(
            runtime,
            &["ps", "--all", "--quiet", "--no-trunc", "--filter", &filter],
        )
        .await?;
        Ok(text.lines().map(str::to_owned).collect())
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        drop(self.agent.take());
        if let Some(runtime) = self.runtime {
            let filter = format!("label=dev.fleetlet.agent={}", self.agent_id);
            let listed = std::process::Command::new(runtime.cli())
                .args(["ps", "--all", "--quiet", "--no-trunc", "--filter", &filter])
                .output();
            let doomed: Vec<String> = listed
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            if !doomed.is_empty() {
                let _ = std::process::Command::new(runtime.cli())
                    .arg("rm")
                    .arg("-f")
                    .args(&doomed)
                    .output();
            }
        }
    }
}

fn holds(path: &Path, text: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|found| found == text)
}

/// Acceptance 1: a session of 100,000 files is summarised without holding up other resources.
#[tokio::test]
async fn a_hundred_thousand_file_session_does_not_delay_other_resources() -> anyhow::Result<()> {
    let mut fixture = Fixture::new("ss-big", None).await?;
    let motd = fixture.dirs.root().join("motd");
    fixture.write(vec![
        session("big", "s1", 1 << 30, None),
        file_resource("motd", &motd, "hello\n", "0644"),
    ])?;
    fixture.start_agent()?;
    fixture.wait_ready("big", Duration::from_secs(20)).await?;
    fixture.wait_ready("motd", Duration::from_secs(20)).await?;

    let data = fixture.data("big", "s1");
    let files = 100_000;
    for n in 0..files {
        let dir = data.join(format!("d{:03}", n / 1000));
        if n % 1000 == 0 {
            std::fs::create_dir_all(&dir)?;
        }
        std::fs::write(dir.join(format!("f{n:06}")), b"x")?;
    }

    // While the large tree is being walked, a file edited by hand is still repaired within
    // one resync interval (plus the time one pass takes on this machine).
    let mut repairs = Vec::new();
    let mut during_walk = 0;
    // Each repair is timed by the agent's own log line, not by when this test noticed it.
    let repaired = ["ResourceRepaired", "resource=motd"];
    for round in 0..3 {
        let repairs_before = fixture.agent()?.count_log_lines(&repaired);
        std::fs::write(&motd, format!("tampered {round}\n"))?;
        let edited = OffsetDateTime::now_utc();
        wait_for("motd to be repaired", Duration::from_secs(20), || async {
            holds(&motd, "hello\n").then_some(())
        })
        .await
        .with_context(|| fixture.logs())?;
        let repaired_at = fixture
            .agent()?
            .nth_logged_at(repairs_before, &repaired, Duration::from_secs(20))
            .await?;
        repairs.push(
            (repaired_at - edited)
                .max(time::Duration::ZERO)
                .unsigned_abs(),
        );
        let summarised = fixture
            .resource("big")
            .as_ref()
            .and_then(session_details)
            .is_some_and(|d| d.files_count == files);
        if !summarised {
            during_walk += 1;
        }
    }
    let summarised = fixture
        .wait_resource(
            "big",
            "the summary of all files",
            Duration::from_secs(180),
            |r| session_details(r).is_some_and(|d| d.files_count == files),
        )
        .await?;
    let details = session_details(&summarised).context("details")?;
    assert_eq!(details.size_bytes, files);
    assert_eq!(summarised.phase, Phase::Ready);
    assert!(
        during_walk > 0,
        "the repairs were measured before the summary caught up"
    );
    for repair in &repairs {
        assert!(
            *repair <= RESYNC * 2,
            "a File repair took {repair:?} while the session was summarised (resync {RESYNC:?}); all: {repairs:?}"
        );
    }
    fixture.agent()?;
    Ok(())
}

/// Acceptance 1 (exact values) and 2: usage past the limit fails with QuotaExceeded, and the
/// resource is Ready again when usage drops.
#[tokio::test]
async fn writing_past_the_limit_fails_with_quota_exceeded_until_usage_drops() -> anyhow::Result<()>
{
    let mut fixture = Fixture::new("ss-quota", None).await?;
    fixture.write(vec![session("scratch", "s1", 1000, None)])?;
    fixture.start_agent()?;
    let ready = fixture
        .wait_ready("scratch", Duration::from_secs(20))
        .await?;
    let details = session_details(&ready).context("details")?;
    assert_eq!((details.size_bytes, details.files_count), (0, 0));
    assert_eq!(
        details.path,
        fixture
            .data("scratch", "s1")
            .canonicalize()?
            .display()
            .to_string()
    );

    let data = fixture.data("scratch", "s1");
    std::fs::write(data.join("small"), b"0123456789")?;
    let counted = fixture
        .wait_resource(
            "scratch",
            "the small file counted",
            Duration::from_secs(20),
            |r| session_details(r).is_some_and(|d| d.files_count == 1),
        )
        .await?;
    let details = session_details(&counted).context("details")?;
    assert_eq!(details.size_bytes, 10);
    assert_eq!(details.used_fraction, 0.01);

    std::fs::write(data.join("big"), vec![0u8; 1500])?;
    let failed = fixture
        .wait_failed(
            "scratch",
            ErrorReason::QuotaExceeded,
            Duration::from_secs(20),
        )
        .await?;
    let details = session_details(&failed).context("details")?;
    assert_eq!(details.size_bytes, 1510);
    assert!(details.used_fraction > 1.0);

    std::fs::remove_file(data.join("big"))?;
    let ready = fixture
        .wait_ready("scratch", Duration::from_secs(30))
        .await?;
    assert_eq!(session_details(&ready).context("details")?.size_bytes, 10);
    Ok(())
}

/// Acceptance 3: at expiresAt the data is gone, evictedAt is reported, the storage is not
/// recreated, and an event says so; a new session id brings a fresh directory.
#[tokio::test]
async fn an_expired_session_is_evicted_reported_and_not_recreated() -> anyhow::Result<()> {
    let mut fixture = Fixture::new("ss-expiry", None).await?;
    let expires_at = rfc3339_in(4)?;
    fixture.write(vec![session("scratch", "s1", 1 << 20, Some(&expires_at))])?;
    fixture.start_agent()?;
    fixture
        .wait_ready("scratch", Duration::from_secs(20))
        .await?;
    let data = fixture.data("scratch", "s1");
    std::fs::write(data.join("precious"), b"data")?;

    let evicted = fixture
        .wait_failed(
            "scratch",
            ErrorReason::SessionStorageEvicted,
            Duration::from_secs(30),
        )
        .await?;
    let details = session_details(&evicted).context("details")?;
    let evicted_at = details.evicted_at.context("evictedAt is reported")?;
    assert!(evicted_at >= OffsetDateTime::parse(&expires_at, &Rfc3339)?);
    assert!(!data.exists(), "the data is deleted");
    fixture
        .agent()?
        .wait_for_log(
            &["ResourceFailed", "scratch", "expired", "data was deleted"],
            Duration::from_secs(10),
        )
        .await?;

    // Several resyncs later it is still evicted, with the same eviction time, and no data.
    tokio::time::sleep(RESYNC * 4).await;
    let still = fixture.resource("scratch").context("status")?;
    assert_eq!(still.phase, Phase::Failed);
    assert_eq!(reason(&still), Some(ErrorReason::SessionStorageEvicted));
    assert_eq!(
        session_details(&still).and_then(|d| d.evicted_at),
        Some(evicted_at)
    );
    assert!(!data.exists(), "an evicted session is not recreated");

    // A new session id is a new session: a fresh directory, and the old one is collected.
    fixture.write(vec![session("scratch", "s2", 1 << 20, None)])?;
    fixture
        .wait_resource("scratch", "the new session", Duration::from_secs(20), |r| {
            r.phase == Phase::Ready && session_details(r).is_some_and(|d| d.evicted_at.is_none())
        })
        .await?;
    assert!(fixture.data("scratch", "s2").is_dir());
    wait_for(
        "the old session directory to go",
        Duration::from_secs(10),
        || async { (!fixture.session_dir("scratch", "s1").exists()).then_some(()) },
    )
    .await?;
    Ok(())
}

/// Acceptance 5: removing the resource deletes its directory; directories the agent did not
/// create under the root are left alone.
#[tokio::test]
async fn removal_deletes_the_directory_and_leaves_foreign_ones_alone() -> anyhow::Result<()> {
    let mut fixture = Fixture::new("ss-remove", None).await?;
    let root = fixture.root();
    std::fs::create_dir_all(root.join("operator-backup"))?;
    std::fs::write(root.join("operator-backup").join("keep"), b"mine")?;
    // Named like a session of a resource the manifest does not have, but without a marker.
    std::fs::create_dir_all(root.join("old@s1").join("data"))?;
    std::fs::write(root.join("old@s1").join("data").join("keep"), b"mine")?;
    fixture.write(vec![
        session("a", "s1", 1 << 20, None),
        session("b", "s1", 1 << 20, None),
    ])?;
    fixture.start_agent()?;
    fixture.wait_ready("a", Duration::from_secs(20)).await?;
    fixture.wait_ready("b", Duration::from_secs(20)).await?;
    std::fs::write(fixture.data("b", "s1").join("x"), b"x")?;

    fixture.write(vec![session("a", "s1", 1 << 20, None)])?;
    wait_for(
        "b's directory to be deleted",
        Duration::from_secs(20),
        || async { (!fixture.session_dir("b", "s1").exists()).then_some(()) },
    )
    .await
    .with_context(|| fixture.logs())?;
    wait_for("b to leave the status", Duration::from_secs(10), || async {
        fixture.resource("b").is_none().then_some(())
    })
    .await?;
    assert!(fixture.data("a", "s1").is_dir());
    assert!(holds(&root.join("operator-backup").join("keep"), "mine"));
    assert!(holds(
        &root.join("old@s1").join("data").join("keep"),
        "mine"
    ));
    Ok(())
}

/// A long-running container that appends a line to /data/starts each time it starts.
fn writer(volume_storage: &str) -> Value {
    json!({"id": "web", "kind": "Container", "spec": {
        "image": IMAGE,
        "command": ["sh", "-c", "echo start >> /data/starts; exec sleep 100000"],
        "pullPolicy": "Never",
        "restartPolicy": "Always",
        "volumes": [{"sessionStorage": volume_storage, "mountPath": "/data"}],
    }})
}

/// Acceptance 4: the container sees and keeps its files across restarts, and they are counted
/// in the summary.
async fn a_container_keeps_its_session_files_across_restarts(
    runtime: Runtime,
) -> anyhow::Result<()> {
    let mut fixture = Fixture::new(&format!("ss-mount-{}", runtime.cli()), Some(runtime)).await?;
    fixture.write(vec![
        session("scratch", "s1", 1 << 20, None),
        writer("scratch"),
    ])?;
    fixture.start_agent()?;
    fixture.wait_ready("web", Duration::from_secs(60)).await?;
    let starts = fixture.data("scratch", "s1").join("starts");
    wait_for(
        "the container's first write",
        Duration::from_secs(20),
        || async { holds(&starts, "start\n").then_some(()) },
    )
    .await?;

    let ids = fixture.labelled(runtime).await?;
    let id = ids.first().context("the container")?.clone();
    cli(runtime, &["kill", &id]).await?;
    wait_for(
        "the restarted container to find its file",
        Duration::from_secs(30),
        || async { holds(&starts, "start\nstart\n").then_some(()) },
    )
    .await
    .with_context(|| fixture.logs())?;
    let counted = fixture
        .wait_resource(
            "scratch",
            "the file in the summary",
            Duration::from_secs(20),
            |r| session_details(r).is_some_and(|d| d.files_count == 1 && d.size_bytes == 12),
        )
        .await?;
    assert_eq!(counted.phase, Phase::Ready);
    let web = fixture.wait_ready("web", Duration::from_secs(30)).await?;
    match &web.details {
        Some(ResourceDetails::Container(details)) => assert!(details.restarts >= 1),
        other => bail!("no container details: {other:?}"),
    }
    Ok(())
}

/// Acceptance 4: a container mounting an evicted storage fails with SessionStorageEvicted and
/// does not run (the one that ran before the eviction is removed).
async fn a_container_on_an_evicted_storage_fails_instead_of_starting(
    runtime: Runtime,
) -> anyhow::Result<()> {
    let mut fixture = Fixture::new(&format!("ss-evict-{}", runtime.cli()), Some(runtime)).await?;
    let expires_at = rfc3339_in(6)?;
    fixture.write(vec![
        session("scratch", "s1", 1 << 20, Some(&expires_at)),
        writer("scratch"),
    ])?;
    fixture.start_agent()?;
    fixture.wait_ready("web", Duration::from_secs(60)).await?;

    fixture
        .wait_failed(
            "scratch",
            ErrorReason::SessionStorageEvicted,
            Duration::from_secs(30),
        )
        .await?;
    fixture
        .wait_failed(
            "web",
            ErrorReason::SessionStorageEvicted,
            Duration::from_secs(30),
        )
        .await?;
    wait_for(
        "the container to be removed",
        Duration::from_secs(30),
        || async {
            fixture
                .labelled(runtime)
                .await
                .ok()
                .filter(Vec::is_empty)
                .map(|_| ())
        },
    )
    .await?;
    // And it stays down: no container is started on an empty directory.
    tokio::time::sleep(RESYNC * 3).await;
    assert!(fixture.labelled(runtime).await?.is_empty());
    assert!(!fixture.data("scratch", "s1").exists());
    let web = fixture.resource("web").context("status")?;
    assert_eq!(reason(&web), Some(ErrorReason::SessionStorageEvicted));
    Ok(())
}

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
    a_container_keeps_its_session_files_across_restarts,
    a_container_on_an_evicted_storage_fails_instead_of_starting,
);
