//! The agent's metrics as a file for node_exporter's textfile collector (FLEETLET_METRICS_FILE),
//! the way Pi fleets already collect host metrics: nothing listens on the device, node_exporter
//! reads the `.prom` file at every scrape and serves it with its own.
//!
//! The file is replaced atomically (written to a hidden temporary file in the same directory,
//! then renamed over it), so node_exporter never reads half of it. It is written after a pass,
//! and only when it would say something new, so that an idle agent does not wake the SD card:
//!
//! - the *state* families (resources by kind and phase, failures, generations, conditions,
//!   report delivery, store errors) change only when something happens; a change is written at
//!   once, after the pass that saw it;
//! - the *pass* histogram changes with every pass (every resync), so a change of it alone is
//!   written at most every [`PASS_REWRITE_INTERVAL`]: an idle agent rewrites the file five
//!   times an hour rather than every 10 s. `rate()` over those counters still works.
//!
//! No timestamp that moves by itself is in the file (only when the agent started and when the
//! manager last took a report). Counters start at zero when the agent starts, as Prometheus
//! expects.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fleetlet_manifests::{AgentStatus, ConditionStatus, Phase};

use crate::store::Store;

/// How long a change of the pass counters alone waits before the file is written again.
pub const PASS_REWRITE_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// Upper bounds of the pass duration buckets, in seconds: a settled pass takes milliseconds,
/// one that pulls an image or waits out an apply timeout (120 s by default) minutes.
const PASS_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// The newest report the manager has acknowledged, as far as this process has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub report_seq: u64,
    /// When that report was made (its `observedAt`), in Unix seconds.
    pub observed_at: i64,
}

/// What the agent reports to the manager, for the delivery families; `None` in standalone mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reporting {
    pub delivered: Option<Delivery>,
    /// A report is waiting in the outbox for the manager.
    pub pending: bool,
}

/// Durations of the passes of this process.
#[derive(Debug, Clone, PartialEq)]
pub struct Passes {
    /// Cumulative counts per bound of [`PASS_BUCKETS`].
    buckets: Vec<u64>,
    count: u64,
    sum: f64,
}

impl Default for Passes {
    fn default() -> Self {
        Self {
            buckets: vec![0; PASS_BUCKETS.len()],
            count: 0,
            sum: 0.0,
        }
    }
}

impl Passes {
    pub fn observe(&mut self, seconds: f64) {
        for (bucket, bound) in self.buckets.iter_mut().zip(PASS_BUCKETS) {
            if seconds <= *bound {
                *bucket += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }
}

/// Everything the state families are rendered from.
#[derive(Debug, Clone, Copy)]
pub struct StateFacts<'a> {
    /// The last status the agent published (none before its first).
    pub status: Option<&'a AgentStatus>,
    /// When this process started, in Unix seconds.
    pub started_at: u64,
    /// Passes stopped by a local store error.
    pub store_errors: u64,
    pub reporting: Option<Reporting>,
}

/// A label value with `\`, `"` and newlines escaped as the text format requires.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A family of one sample without labels.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    family(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// The state families, in the text exposition format.
pub fn render_state(facts: &StateFacts<'_>) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "fleetlet_agent_info",
        "gauge",
        "The agent's version and platform; always 1.",
    );
    let _ = writeln!(
        out,
        "fleetlet_agent_info{{version=\"{}\",arch=\"{}\",os=\"{}\"}} 1",
        escape(env!("CARGO_PKG_VERSION")),
        escape(std::env::consts::ARCH),
        escape(std::env::consts::OS)
    );
    single(
        &mut out,
        "fleetlet_agent_start_time_seconds",
        "gauge",
        "When the agent process started, in seconds since the Unix epoch.",
        facts.started_at,
    );

    let status = facts.status;
    single(
        &mut out,
        "fleetlet_agent_manifest_generation",
        "gauge",
        "The newest manifest generation the agent has received (0: none yet).",
        status.map_or(0, |s| s.manifest_generation),
    );
    single(
        &mut out,
        "fleetlet_agent_observed_generation",
        "gauge",
        "The manifest generation the agent's last complete pass applied (0: none yet).",
        status.map_or(0, |s| s.observed_generation),
    );

    // Every kind this build supports (and any other the manifest names) with every phase, so
    // that a count going to zero is a 0, not a series that disappears.
    let mut kinds: std::collections::BTreeSet<&str> = status
        .map(|s| s.agent.supported_kinds.iter().map(String::as_str).collect())
        .unwrap_or_default();
    let mut counts: std::collections::BTreeMap<(&str, Phase), u64> =
        std::collections::BTreeMap::new();
    let mut failed: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
    let mut repairs: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
    for resource in status.iter().flat_map(|s| s.resources.values()) {
        kinds.insert(&resource.kind);
        *counts.entry((&resource.kind, resource.phase)).or_default() += 1;
        *repairs.entry(&resource.kind).or_default() +=
            resource.repairs.as_ref().map_or(0, |r| r.count);
        if resource.phase == Phase::Failed {
            let reason = resource
                .error
                .as_ref()
                .map_or("Unknown", |error| error.reason.as_str());
            *failed.entry(reason).or_default() += 1;
        }
    }
    family(
        &mut out,
        "fleetlet_agent_resources",
        "gauge",
        "Resources of the current manifest by kind and phase.",
    );
    for kind in &kinds {
        for phase in Phase::ALL {
            let count = counts.get(&(*kind, phase)).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "fleetlet_agent_resources{{kind=\"{}\",phase=\"{phase}\"}} {count}",
                escape(kind)
            );
        }
    }
    family(
        &mut out,
        "fleetlet_agent_failed_resources",
        "gauge",
        "Resources in phase Failed by error reason (only reasons that occur).",
    );
    for (reason, count) in &failed {
        let _ = writeln!(
            out,
            "fleetlet_agent_failed_resources{{reason=\"{}\"}} {count}",
            escape(reason)
        );
    }
    family(
        &mut out,
        "fleetlet_agent_repairs",
        "gauge",
        "Drift repairs made on the current resources, by kind (as reported: a burst is counted in the next report); drops when a repaired resource leaves the manifest.",
    );
    for kind in &kinds {
        let count = repairs.get(kind).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "fleetlet_agent_repairs{{kind=\"{}\"}} {count}",
            escape(kind)
        );
    }
    family(
        &mut out,
        "fleetlet_agent_condition",
        "gauge",
        "The agent's status conditions: 1 when True, 0 when False or Unknown; type=\"Offline\" is 1 while the manager cannot be reached.",
    );
    for condition in status.iter().flat_map(|s| &s.conditions) {
        let _ = writeln!(
            out,
            "fleetlet_agent_condition{{type=\"{:?}\"}} {}",
            condition.type_,
            u8::from(condition.status == ConditionStatus::True)
        );
    }

    if let Some(reporting) = facts.reporting {
        single(
            &mut out,
            "fleetlet_agent_report_pending",
            "gauge",
            "1 while a status report waits in the outbox for the manager.",
            u8::from(reporting.pending),
        );
        family(
            &mut out,
            "fleetlet_agent_last_report_timestamp_seconds",
            "gauge",
            "When the newest report the manager acknowledged was made, in seconds since the Unix epoch.",
        );
        if let Some(delivered) = reporting.delivered {
            let _ = writeln!(
                out,
                "fleetlet_agent_last_report_timestamp_seconds {}",
                delivered.observed_at
            );
        }
    }
    single(
        &mut out,
        "fleetlet_agent_store_errors_total",
        "counter",
        "Passes stopped by an error of the local store, or ended while it cannot save (a write or flush that failed).",
        facts.store_errors,
    );
    out
}

/// The pass histogram, in the text exposition format.
pub fn render_passes(passes: &Passes) -> String {
    let mut out = String::new();
    let name = "fleetlet_agent_pass_duration_seconds";
    family(
        &mut out,
        name,
        "histogram",
        "Time the agent's passes took; _count is the number of passes.",
    );
    for (bound, count) in PASS_BUCKETS.iter().zip(&passes.buckets) {
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", passes.count);
    let _ = writeln!(out, "{name}_sum {}", passes.sum);
    let _ = writeln!(out, "{name}_count {}", passes.count);
    out
}

/// The metrics file of a running agent: what it has counted, and what it last wrote.
#[derive(Debug)]
pub struct MetricsFile {
    path: PathBuf,
    store: Arc<dyn Store>,
    started_at: u64,
    store_errors: u64,
    passes: Passes,
    /// `None` in standalone mode, where no report goes anywhere.
    reporting: Option<Reporting>,
    /// The state part and the pass part last written, and when.
    written: Option<(String, String, Instant)>,
    /// The last write failed (warned once, until a write works again).
    failing: bool,
}

impl MetricsFile {
    /// A metrics file at `path` (a `.prom` file; config.rs checks the name). `to_manager`: the
    /// agent reports to a manager, so report delivery is part of the file.
    pub fn new(path: &Path, store: Arc<dyn Store>, to_manager: bool) -> Self {
        Self {
            path: path.to_path_buf(),
            store,
            started_at: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |since| since.as_secs()),
            store_errors: 0,
            passes: Passes::default(),
            reporting: to_manager.then(Reporting::default),
            written: None,
            failing: false,
        }
    }

    /// Called by the run loop after every pass (and the status published after it): counts the
    /// pass and writes the file when it has something new to say (see the module comment).
    pub fn after_pass(&mut self, took: Duration, failed: bool, status: Option<&AgentStatus>) {
        self.passes.observe(took.as_secs_f64());
        // A pass fails only on an error of the local store (`EngineError`), or when the store
        // could not save what the pass wrote (the engine then passes `failed` too).
        if failed {
            self.store_errors += 1;
        }
        self.note_delivery(status);
        let state = render_state(&StateFacts {
            status,
            started_at: self.started_at,
            store_errors: self.store_errors,
            reporting: self.reporting,
        });
        let passes = render_passes(&self.passes);
        let due = match &self.written {
            None => true,
            Some((written_state, written_passes, at)) => {
                *written_state != state
                    || (*written_passes != passes && at.elapsed() >= PASS_REWRITE_INTERVAL)
            }
        };
        if due {
            self.write(state, passes);
        }
    }

    /// Whether the manager has taken the newest report: read from the outbox only while a
    /// report newer than the last delivered one exists, so a settled agent reads nothing.
    fn note_delivery(&mut self, status: Option<&AgentStatus>) {
        let (Some(reporting), Some(status)) = (self.reporting.as_mut(), status) else {
            return;
        };
        if reporting
            .delivered
            .is_some_and(|delivered| delivered.report_seq >= status.report_seq)
        {
            reporting.pending = false;
            return;
        }
        match self.store.pending_report() {
            Ok(None) => {
                reporting.pending = false;
                reporting.delivered = Some(Delivery {
                    report_seq: status.report_seq,
                    observed_at: status.observed_at.unix_timestamp(),
                });
            }
            Ok(Some(_)) => reporting.pending = true,
            Err(error) => tracing::debug!(%error, "metrics file: could not read the outbox"),
        }
    }

    fn write(&mut self, state: String, passes: String) {
        let content = format!("{state}{passes}");
        match replace_file(&self.path, content.as_bytes()) {
            Ok(()) => {
                if self.failing {
                    tracing::info!(path = %self.path.display(), "metrics file written again");
                }
                self.failing = false;
                self.written = Some((state, passes, Instant::now()));
            }
            Err(error) => {
                // Tried again after the next pass; said once, not every 10 s.
                if !self.failing {
                    tracing::warn!(path = %self.path.display(), %error, "could not write the metrics file");
                }
                self.failing = true;
            }
        }
    }
}

/// Replaces `path` with `content` atomically through [`crate::confined`]: written to a hidden
/// temporary in the same directory (so the rename cannot cross filesystems) and renamed over it.
/// Created readable by all (mode 0644 less the umask), since node_exporter runs as its own user.
/// No fsync: after a crash the file is either the old or the new one, and both are metrics the
/// next pass rewrites.
fn replace_file(path: &Path, content: &[u8]) -> std::io::Result<()> {
    // Hidden (`.<name>.tmp`) and not ending in `.prom`, so the collector never reads it
    // half-written.
    const TEMP_SUFFIX: &str = ".tmp";
    use crate::confined::{self, ConfinedError, Durability, ModeChoice, Replace};
    let how = Replace {
        mode: ModeChoice::CreatedWith(0o644),
        uid: None,
        gid: None,
        durability: Durability::None,
        temp_suffix: TEMP_SUFFIX,
    };
    let dir = confined::open_dir(path.parent().unwrap_or(Path::new(".")))?;
    let name = path.file_name().unwrap_or_default();
    confined::replace(&dir, name, path, content, &how).map_err(ConfinedError::into_io)
}

#[cfg(test)]
mod tests;
