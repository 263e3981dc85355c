//! Power cuts (issue 22, item 2): the real `fleetlet-agent` (standalone, `--manifest-file`) with
//! its state dir and its File root on the power-cut filesystem (`fleetlet_tests::powercut`,
//! FUSE), which keeps writes in memory until they are fsynced and drops the rest on a cut.
//!
//! Rounds cut the power at a random moment (seeded; the seed is printed, and
//! `FLEETLET_POWERCUT_SEED` replays it) during a first apply, a content change, a drift repair,
//! a generation change and a rollback. After each cut, before the agent runs again: every
//! managed file holds the complete content it had before or the complete content it was being
//! given, never an empty, torn or foreign one; whatever the agent had reported (its status
//! file, as the last read before the cut saw it) is on disk; the store opens (as the agent opens
//! it) and every record kind reads, with typed diagnostics at most. Then the agent starts again
//! on the rebooted disk and re-converges, within a bound.
//!
//! A second test proves the checker can fail: an agent whose content fsync is left out
//! (`FLEETLET_FAULT_INJECTION_SKIP_CONTENT_FSYNC`, debug builds only) must be caught.
//!
//! Needs root and FUSE (`deploy/dev/fuse.sh`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fleetlet_agent::store::{FsStore, FsStoreOptions, Store};
use fleetlet_manifests::{AgentId, AgentStatus, ConditionStatus, ConditionType, Phase};
use fleetlet_tests::agent::{AgentDirs, AgentOptions, AgentProcess, unique_agent_id, wait_for};
use fleetlet_tests::powercut::PowerCutFs;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// Only a bound on a failure; a passing round never waits it out.
const WAIT: Duration = Duration::from_secs(30);
/// Rounds of each scenario: 5 scenarios, 30 cuts.
const ROUNDS_PER_SCENARIO: usize = 6;
/// The rollout deadline of the generation that is rolled back.
const DEADLINE_SECONDS: u64 = 1;

/// What a round does between the converged state and the cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    FirstApply,
    ContentChange,
    DriftRepair,
    GenerationChange,
    Rollback,
}

impl Scenario {
    const ALL: [Self; 5] = [
        Self::FirstApply,
        Self::ContentChange,
        Self::DriftRepair,
        Self::GenerationChange,
        Self::Rollback,
    ];

    /// The cut falls at a uniformly random moment within this many milliseconds of the action:
    /// wide enough to cover the pass it starts (or, for a rollback, the deadline and the pass
    /// that rolls back).
    fn window_ms(self) -> u64 {
        match self {
            Self::FirstApply => 500,
            Self::ContentChange | Self::GenerationChange => 400,
            Self::DriftRepair => 500,
            Self::Rollback => 1_000 * DEADLINE_SECONDS + 500,
        }
    }
}

/// The desired files of one generation: path → content.
type Files = BTreeMap<PathBuf, String>;

/// One agent on one power-cut disk. Dropped in this order: the agent, the mount, the dirs.
struct Rig {
    agent: Option<AgentProcess>,
    fs: PowerCutFs,
    agent_id: String,
    options: AgentOptions,
    generation: u64,
    dirs: AgentDirs,
}

fn content(generation: u64, name: &str) -> String {
    // Several KiB, so a torn file could not pass for a whole one by chance.
    format!("generation {generation} of {name}\n").repeat(300)
}

impl Rig {
    /// A fresh disk with an empty state dir and File root (made durable, as an installed
    /// device's are), and `extra_env` for the agent.
    fn new(prefix: &str, extra_env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let dirs = AgentDirs::new()?;
        let mount_at = dirs.base().join("disk");
        std::fs::create_dir(&mount_at)?;
        let fs = PowerCutFs::mount(&mount_at)?;
        for sub in ["state", "root", "root/etc", "root/srv"] {
            std::fs::create_dir(mount_at.join(sub))?;
        }
        // A regular file where the bad generation wants a directory: its File fails.
        std::fs::write(mount_at.join("root/blocker"), "not a directory\n")?;
        for synced in ["root/blocker", "root/etc", "root/srv", "root", "state", ""] {
            std::fs::File::open(mount_at.join(synced))?.sync_all()?;
        }
        let agent_id = unique_agent_id(prefix);
        let mut options = AgentOptions::standalone(&agent_id);
        options.resync_interval = "200ms";
        options.env = vec![
            (
                "FLEETLET_STATE_DIR".into(),
                mount_at.join("state").display().to_string(),
            ),
            (
                "FLEETLET_FILE_ROOTS".into(),
                mount_at.join("root").display().to_string(),
            ),
        ];
        options.env.extend(
            extra_env
                .iter()
                .map(|(key, value)| ((*key).to_owned(), (*value).to_owned())),
        );
        Ok(Self {
            dirs,
            fs,
            agent_id,
            options,
            agent: None,
            generation: 0,
        })
    }

    fn root(&self) -> PathBuf {
        self.fs.path().join("root")
    }

    fn status_path(&self) -> PathBuf {
        self.fs
            .path()
            .join("state/agents")
            .join(&self.agent_id)
            .join("status.json")
    }

    /// The status the agent reported last, as a reader of its status file sees it now.
    fn reported(&self) -> Option<AgentStatus> {
        serde_json::from_slice(&std::fs::read(self.status_path()).ok()?).ok()
    }

    /// The files of a normal generation: `variant` picks the file set (a generation change
    /// swaps one file for another).
    fn files(&self, generation: u64, variant: u64) -> Files {
        let mut names = vec!["etc/app.conf", "etc/motd", "srv/index.html"];
        names.push(if variant.is_multiple_of(2) {
            "srv/extra-a.txt"
        } else {
            "srv/extra-b.txt"
        });
        names
            .into_iter()
            .map(|name| (self.root().join(name), content(generation, name)))
            .collect()
    }

    /// Writes the manifest file for `files` at the next generation (atomically, on the test's
    /// own disk: it is the operator's input, not the device's state); a bad one also has a File
    /// that always fails and a short rollout deadline with `onFailure: Rollback`.
    fn publish(&mut self, files: &Files, bad: bool) -> anyhow::Result<u64> {
        self.generation += 1;
        let mut resources: Vec<Value> = files
            .iter()
            .map(|(path, text)| {
                let id = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("file")
                    .replace('.', "-");
                json!({"id": id, "kind": "File",
                       "spec": {"path": path.display().to_string(),
                                "content": {"text": text}, "mode": "0644"}})
            })
            .collect();
        let mut body = json!({
            "apiVersion": "fleetlet.dev/v1",
            "kind": "AgentManifest",
            "agentId": self.agent_id,
            "generation": self.generation,
        });
        if bad {
            resources.push(json!({"id": "blocked", "kind": "File",
                "spec": {"path": self.root().join("blocker/inside").display().to_string(),
                         "content": {"text": "never\n"}, "mode": "0644"}}));
            body["rollout"] =
                json!({"progressDeadlineSeconds": DEADLINE_SECONDS, "onFailure": "Rollback"});
        }
        body["resources"] = Value::Array(resources);
        self.dirs.write_manifest(&body)?;
        Ok(self.generation)
    }

    fn start(&mut self) -> anyhow::Result<()> {
        self.agent = Some(AgentProcess::start(&self.dirs, &self.options)?);
        Ok(())
    }

    /// Starts the agent on the rebooted disk and waits for it to report the round's target
    /// (see [`Self::converged`]); the time counts from the start.
    async fn restart_and_converge(
        &mut self,
        generation: u64,
        files: &Files,
        rolled_back: bool,
    ) -> anyhow::Result<Duration> {
        let kept_seq = self.reported().map_or(0, |s| s.report_seq);
        let started = Instant::now();
        self.start()?;
        self.converged_after(kept_seq, generation, files, rolled_back)
            .await?;
        Ok(started.elapsed())
    }

    /// Opens the store as the agent does (it must not be running) and reads every record kind:
    /// it must load, perhaps with typed diagnostics for what it worked around; returns how many.
    fn load_store(&self) -> anyhow::Result<usize> {
        let store = FsStore::open(
            self.fs.path().join("state"),
            AgentId::try_from(self.agent_id.as_str())?,
            FsStoreOptions::default(),
        )
        .context("the store does not open after the cut")?;
        store.load_agent_record()?;
        store.load_manifest()?;
        store.ownership_records()?;
        store.resource_states()?;
        store.load_status()?;
        store.pending_report()?;
        let mut after = 0;
        loop {
            let page = store.read_events(after, 500)?;
            let Some(last) = page.last() else { break };
            after = last.seq;
        }
        Ok(store.diagnostics().len())
    }

    fn logs(&self) -> String {
        self.agent
            .as_ref()
            .map(AgentProcess::logs)
            .unwrap_or_default()
    }

    /// Waits until the agent reports `generation` observed with every resource Ready, the
    /// files on disk as `files` say, and (`rolled_back`) the rollback condition; returns how
    /// long that took.
    async fn converged(
        &self,
        generation: u64,
        files: &Files,
        rolled_back: bool,
    ) -> anyhow::Result<Duration> {
        self.converged_after(0, generation, files, rolled_back)
            .await
    }

    /// As [`Self::converged`], counting only a report newer than `kept_seq` (one the disk kept
    /// from before a cut proves nothing about the run after it).
    async fn converged_after(
        &self,
        kept_seq: u64,
        generation: u64,
        files: &Files,
        rolled_back: bool,
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let what = format!("generation {generation} converged (rolled back: {rolled_back})");
        wait_for(&what, WAIT, || async {
            let status = self.reported()?;
            let ready = status.report_seq > kept_seq
                && status.observed_generation == generation
                && status.resources.len() == files.len()
                && status.resources.values().all(|r| r.phase == Phase::Ready)
                && rolled_back == is_rolled_back(&status);
            let on_disk = files
                .iter()
                .all(|(path, text)| std::fs::read_to_string(path).ok().as_deref() == Some(text));
            (ready && on_disk).then_some(())
        })
        .await
        .with_context(|| format!("agent log:\n{}", self.logs()))?;
        Ok(started.elapsed())
    }

    /// The power goes off: the disk first (nothing more becomes durable), then the agent dies
    /// with it; the disk comes back with what was durable.
    fn power_cut(&mut self) -> anyhow::Result<()> {
        self.fs.cut();
        drop(self.agent.take());
        self.fs.reboot()
    }
}

fn is_rolled_back(status: &AgentStatus) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == ConditionType::RolledBack && c.status == ConditionStatus::True)
}

/// What one round expects after its cut.
struct Expectation {
    /// Every content each path may hold (`None`: absent).
    allowed: BTreeMap<PathBuf, BTreeSet<Option<String>>>,
    /// The files the round converges to, and their generation.
    target: Files,
    target_generation: u64,
    rolled_back: bool,
}

impl Expectation {
    fn new(before: &Files, after: &Files, target_generation: u64, rolled_back: bool) -> Self {
        let mut allowed: BTreeMap<PathBuf, BTreeSet<Option<String>>> = BTreeMap::new();
        for path in before.keys().chain(after.keys()) {
            let set = allowed.entry(path.clone()).or_default();
            set.insert(before.get(path).cloned());
            set.insert(after.get(path).cloned());
        }
        let target = if rolled_back { before } else { after }.clone();
        Self {
            allowed,
            target,
            target_generation,
            rolled_back,
        }
    }
}

/// Whether the status read before the cut reported the round's target as done.
fn reported_done(status: &AgentStatus, expectation: &Expectation, repairs_before: u64) -> bool {
    if expectation.rolled_back {
        return is_rolled_back(status);
    }
    let all_ready = status.observed_generation == expectation.target_generation
        && !status.resources.is_empty()
        && status
            .resources
            .values()
            .all(|r| r.phase == Phase::Ready && r.generation == expectation.target_generation);
    all_ready && repairs(status) >= repairs_before
}

fn repairs(status: &AgentStatus) -> u64 {
    status
        .resources
        .values()
        .filter_map(|r| r.repairs.as_ref().map(|repairs| repairs.count))
        .sum()
}

/// The checker: what is on the rebooted disk, against what the round allows and what the agent
/// reported. Returns every violation, in words.
fn violations(expectation: &Expectation, reported_done_before_cut: bool) -> Vec<String> {
    let mut found = Vec::new();
    for (path, allowed) in &expectation.allowed {
        let on_disk = match std::fs::read(path) {
            Ok(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => {
                found.push(format!(
                    "{}: unreadable after the cut: {error}",
                    path.display()
                ));
                continue;
            }
        };
        if !allowed.contains(&on_disk) {
            found.push(format!(
                "{}: neither the complete old nor the complete new content after the cut ({})",
                path.display(),
                match &on_disk {
                    Some(text) if text.is_empty() => "empty".to_owned(),
                    Some(text) => format!("{} bytes", text.len()),
                    None => "absent".to_owned(),
                }
            ));
        } else if reported_done_before_cut
            // A file the round removed may stay, whole: an ownership record lost to an
            // earlier cut made the agent adopt it, and an adopted file is released, not
            // deleted (docs/agent-store.md, "What a crash can lose").
            && expectation.target.contains_key(path)
            && on_disk.as_ref() != expectation.target.get(path)
        {
            found.push(format!(
                "{}: reported Ready before the cut, but the reported content is lost",
                path.display()
            ));
        }
    }
    found
}

/// One round: from a converged device, `scenario`'s action, a cut at a random moment, the
/// checks, the restart and the re-convergence. Returns the time to re-converge.
async fn round(
    rig: &mut Rig,
    scenario: Scenario,
    rng: &mut StdRng,
    converged: &mut (u64, Files),
) -> anyhow::Result<(Duration, Vec<String>, bool, usize)> {
    let (good_generation, before) = converged.clone();
    let repairs_before = rig.reported().map_or(0, |s| repairs(&s));
    let expectation = match scenario {
        Scenario::FirstApply => {
            let after = rig.files(1, 0);
            let generation = rig.publish(&after, false)?;
            rig.start()?;
            Expectation::new(&Files::new(), &after, generation, false)
        }
        Scenario::ContentChange => {
            let variant = variant_of(&before);
            let after = rig.files(rig.generation + 1, variant);
            let generation = rig.publish(&after, false)?;
            Expectation::new(&before, &after, generation, false)
        }
        Scenario::GenerationChange => {
            // One file removed, another added, the rest rewritten.
            let after = rig.files(rig.generation + 1, variant_of(&before) + 1);
            let generation = rig.publish(&after, false)?;
            Expectation::new(&before, &after, generation, false)
        }
        Scenario::DriftRepair => {
            let (path, _) = before.iter().next().context("a managed file")?;
            let drifted = "changed by hand\n".to_owned();
            let mut file = std::fs::File::create(path)?;
            std::io::Write::write_all(&mut file, drifted.as_bytes())?;
            file.sync_all()?;
            let mut expectation = Expectation::new(&before, &before, good_generation, false);
            expectation
                .allowed
                .entry(path.clone())
                .or_default()
                .insert(Some(drifted));
            expectation
        }
        Scenario::Rollback => {
            let bad = rig.files(rig.generation + 1, variant_of(&before));
            rig.publish(&bad, true)?;
            Expectation::new(&before, &bad, good_generation, true)
        }
    };
    // Skewed towards the start (a cube of a uniform draw): a pass takes tens of milliseconds,
    // so most of the window would otherwise fall after the work is done.
    let draw: f64 = rng.random();
    let delay = (scenario.window_ms() as f64 * draw.powi(3)) as u64;
    tokio::time::sleep(Duration::from_millis(delay)).await;
    let last_report = rig.reported();
    let repairs_needed = if scenario == Scenario::DriftRepair {
        repairs_before + 1
    } else {
        0
    };
    let done = last_report
        .as_ref()
        .is_some_and(|status| reported_done(status, &expectation, repairs_needed));
    rig.power_cut()?;
    let found = violations(&expectation, done);
    let diagnostics = rig
        .load_store()
        .with_context(|| format!("loading the store after a cut {delay} ms into {scenario:?}"))?;
    let took = rig
        .restart_and_converge(
            expectation.target_generation,
            &expectation.target,
            expectation.rolled_back,
        )
        .await
        .with_context(|| format!("re-converging after a cut {delay} ms into {scenario:?}"))?;
    *converged = (expectation.target_generation, expectation.target.clone());
    Ok((took, found, done, diagnostics))
}

/// 0 for a file set with `extra-a`, 1 with `extra-b`.
fn variant_of(files: &Files) -> u64 {
    u64::from(files.keys().any(|p| p.ends_with("srv/extra-b.txt")))
}

fn seed() -> u64 {
    std::env::var("FLEETLET_POWERCUT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        })
}

/// 30 cuts: 6 rounds of each scenario, in turn, each on a device converged by the previous
/// round (a first apply on a fresh disk).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cut_leaves_whole_files_keeps_what_was_reported_and_reconverges() -> anyhow::Result<()>
{
    let seed = seed();
    println!("power-cut seed {seed} (FLEETLET_POWERCUT_SEED={seed} replays it)");
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let mut times = Vec::new();
    let mut all_violations = Vec::new();
    let mut rig: Option<Rig> = None;
    let mut converged = (0, Files::new());
    let mut counters = Vec::new();
    let mut after_report = 0;
    let mut store_diagnostics = 0;
    for index in 0..ROUNDS_PER_SCENARIO * Scenario::ALL.len() {
        let scenario = Scenario::ALL[index % Scenario::ALL.len()];
        if scenario == Scenario::FirstApply {
            if let Some(old) = rig.take() {
                counters.push(old.fs.counters());
            }
            rig = Some(Rig::new("powercut", &[])?);
            converged = (0, Files::new());
        }
        let rig = rig.as_mut().context("a rig")?;
        let (took, found, done, diagnostics) = round(rig, scenario, &mut rng, &mut converged)
            .await
            .with_context(|| format!("round {index} ({scenario:?}), seed {seed}"))?;
        for violation in &found {
            println!("round {index} ({scenario:?}): VIOLATION {violation}");
        }
        all_violations.extend(found);
        after_report += usize::from(done);
        store_diagnostics += diagnostics;
        times.push(took);
    }
    if let Some(old) = rig.take() {
        counters.push(old.fs.counters());
    }
    times.sort();
    let writes: u64 = counters.iter().map(|c| c.writes).sum();
    let file_syncs: u64 = counters.iter().map(|c| c.file_syncs).sum();
    let dir_syncs: u64 = counters.iter().map(|c| c.dir_syncs).sum();
    println!(
        "power cuts: {} cuts ({after_report} after the agent reported the round done), {} violations, the store loaded after every cut ({store_diagnostics} typed diagnostics), re-converged in median {:?} max {:?}; {} writes, {} file fsyncs, {} directory fsyncs seen; {:?} in all (seed {seed})",
        times.len(),
        all_violations.len(),
        times[times.len() / 2],
        times[times.len() - 1],
        writes,
        file_syncs,
        dir_syncs,
        started.elapsed(),
    );
    if !all_violations.is_empty() {
        bail!(
            "power cuts lost data (seed {seed}):\n{}",
            all_violations.join("\n")
        );
    }
    Ok(())
}

/// The checker can fail: an agent built with its content fsync left out (the debug-only fault
/// hook) converges, reports Ready, loses power — and the files it reported are found empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_content_fsync_is_caught() -> anyhow::Result<()> {
    let mut rig = Rig::new(
        "powercut-nofsync",
        &[("FLEETLET_FAULT_INJECTION_SKIP_CONTENT_FSYNC", "1")],
    )?;
    let files = rig.files(1, 0);
    let generation = rig.publish(&files, false)?;
    rig.start()?;
    rig.converged(generation, &files, false).await?;
    let status = rig.reported().context("a status")?;
    let expectation = Expectation::new(&Files::new(), &files, generation, false);
    assert!(reported_done(&status, &expectation, 0));
    rig.power_cut()?;
    let found = violations(&expectation, true);
    assert!(
        found.iter().any(|v| v.contains("empty")),
        "the checker missed the left-out fsync: {found:?}"
    );
    Ok(())
}

/// Without the hook, the same steps find nothing: the failure above is the fsync's, not the
/// harness's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_steps_with_the_fsync_find_nothing() -> anyhow::Result<()> {
    let mut rig = Rig::new("powercut-fsync", &[])?;
    let files = rig.files(1, 0);
    let generation = rig.publish(&files, false)?;
    rig.start()?;
    rig.converged(generation, &files, false).await?;
    let expectation = Expectation::new(&Files::new(), &files, generation, false);
    rig.power_cut()?;
    assert_eq!(violations(&expectation, true), Vec::<String>::new());
    Ok(())
}
