//! Tests of the metrics file: counts, the pass histogram, rewrites only on change, and retries.

use std::collections::BTreeMap;

use fleetlet_manifests::{
    AgentId, AgentInfo, Condition, ConditionType, ErrorReason, Repairs, ResourceError, ResourceId,
    ResourceStatus,
};

use time::OffsetDateTime;

use super::*;
use crate::store::MemoryStore;

fn status(phases: &[(&str, &str, Phase)]) -> AgentStatus {
    let at = OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("valid time");
    let resources: BTreeMap<ResourceId, ResourceStatus> = phases
        .iter()
        .map(|(id, kind, phase)| {
            (
                ResourceId::try_from(*id).expect("valid id"),
                ResourceStatus {
                    kind: (*kind).to_owned(),
                    phase: *phase,
                    since: at,
                    generation: 3,
                    spec_hash: None,
                    error: (*phase == Phase::Failed).then(|| ResourceError {
                        reason: ErrorReason::KNOWN[0].clone(),
                        message: "it broke".into(),
                    }),
                    retry_after: None,
                    details: None,
                    repairs: (*id == "a").then(|| Repairs {
                        count: 2,
                        last_at: at,
                        last_drift: "content changed".into(),
                    }),
                },
            )
        })
        .collect();
    AgentStatus {
        api_version: fleetlet_manifests::API_VERSION.to_owned(),
        kind: "AgentStatus".to_owned(),
        agent_id: AgentId::try_from("pi-1").expect("valid id"),
        report_seq: 7,
        manifest_generation: 3,
        observed_generation: 2,
        observed_at: at,
        agent: AgentInfo {
            version: "0.1.0".into(),
            hostname: "pi".into(),
            arch: "aarch64".into(),
            os: "linux".into(),
            boot_id: String::new(),
            started_at: at,
            supported_kinds: vec!["File".into(), "Container".into()],
        },
        conditions: vec![Condition {
            type_: ConditionType::Offline,
            status: ConditionStatus::True,
            reason: "ManagerUnreachable".into(),
            message: "no route".into(),
            last_transition_time: at,
        }],
        resources,
        facts: None,
    }
}

#[test]
fn the_state_counts_resources_by_kind_and_phase() {
    let status = status(&[
        ("a", "File", Phase::Ready),
        ("b", "File", Phase::Ready),
        ("c", "File", Phase::Failed),
        ("d", "SystemdUnit", Phase::Pending),
    ]);
    let text = render_state(&StateFacts {
        status: Some(&status),
        started_at: 1_700_000_000,
        store_errors: 2,
        reporting: Some(Reporting {
            delivered: Some(Delivery {
                report_seq: 6,
                observed_at: 1_799_999_990,
            }),
            pending: true,
        }),
    });
    for line in [
        "fleetlet_agent_resources{kind=\"File\",phase=\"Ready\"} 2",
        "fleetlet_agent_resources{kind=\"File\",phase=\"Failed\"} 1",
        // A supported kind with no resource is all zeros; a kind only the manifest names
        // is counted too.
        "fleetlet_agent_resources{kind=\"Container\",phase=\"Ready\"} 0",
        "fleetlet_agent_resources{kind=\"SystemdUnit\",phase=\"Pending\"} 1",
        &format!(
            "fleetlet_agent_failed_resources{{reason=\"{}\"}} 1",
            ErrorReason::KNOWN[0].as_str()
        ),
        "fleetlet_agent_repairs{kind=\"File\"} 2",
        "fleetlet_agent_repairs{kind=\"Container\"} 0",
        "fleetlet_agent_manifest_generation 3",
        "fleetlet_agent_observed_generation 2",
        "fleetlet_agent_condition{type=\"Offline\"} 1",
        "fleetlet_agent_report_pending 1",
        "fleetlet_agent_last_report_timestamp_seconds 1799999990",
        "fleetlet_agent_store_errors_total 2",
        "fleetlet_agent_start_time_seconds 1700000000",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from\n{text}"
        );
    }
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("fleetlet_agent_resources{"))
            .count(),
        3 * Phase::ALL.len()
    );
    assert!(text.contains(&format!(
        "fleetlet_agent_info{{version=\"{}\",arch=\"{}\",os=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH,
        std::env::consts::OS
    )));
    // Every sample follows the HELP and TYPE of its family.
    let mut declared = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            declared.push(rest.split(' ').next().expect("a name").to_owned());
        } else if !line.starts_with("# HELP ") {
            let name = line.split(['{', ' ']).next().expect("a name");
            assert_eq!(declared.last().map(String::as_str), Some(name), "{line}");
        }
    }
}

#[test]
fn standalone_leaves_out_report_delivery_and_an_empty_agent_renders() {
    let text = render_state(&StateFacts {
        status: None,
        started_at: 1,
        store_errors: 0,
        reporting: None,
    });
    assert!(!text.contains("fleetlet_agent_report_pending"), "{text}");
    assert!(!text.contains("fleetlet_agent_last_report"), "{text}");
    assert!(text.contains("fleetlet_agent_manifest_generation 0\n"));
    assert!(!text.contains("fleetlet_agent_resources{"));
}

#[test]
fn the_pass_histogram_is_cumulative() {
    let mut passes = Passes::default();
    passes.observe(0.002);
    passes.observe(0.3);
    passes.observe(400.0);
    let text = render_passes(&passes);
    assert!(text.contains("fleetlet_agent_pass_duration_seconds_bucket{le=\"0.01\"} 1\n"));
    assert!(text.contains("fleetlet_agent_pass_duration_seconds_bucket{le=\"0.5\"} 2\n"));
    assert!(text.contains("fleetlet_agent_pass_duration_seconds_bucket{le=\"300\"} 2\n"));
    assert!(text.contains("fleetlet_agent_pass_duration_seconds_bucket{le=\"+Inf\"} 3\n"));
    assert!(text.contains("fleetlet_agent_pass_duration_seconds_count 3\n"));
}

fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .expect("file exists")
}

#[test]
fn the_file_is_rewritten_for_a_new_state_but_not_for_another_idle_pass() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fleetlet.prom");
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new(
        AgentId::try_from("pi-1").expect("valid id"),
    ));
    let mut file = MetricsFile::new(&path, store, true);
    let pending = status(&[("a", "File", Phase::Pending)]);
    file.after_pass(Duration::from_millis(5), false, Some(&pending));
    let first = std::fs::read_to_string(&path).expect("written");
    // The memory store's outbox is empty: the report counts as delivered.
    assert!(
        first.contains("fleetlet_agent_report_pending 0\n"),
        "{first}"
    );
    assert!(first.contains("fleetlet_agent_last_report_timestamp_seconds 1800000000\n"));
    assert!(first.contains("fleetlet_agent_pass_duration_seconds_count 1\n"));

    // Another pass with the same status: only the pass counters changed, not written.
    let before = modified(&path);
    std::thread::sleep(Duration::from_millis(20));
    file.after_pass(Duration::from_millis(5), false, Some(&pending));
    assert_eq!(std::fs::read_to_string(&path).expect("still there"), first);
    assert_eq!(modified(&path), before);

    // A new state is written at once, with the passes counted so far.
    let ready = status(&[("a", "File", Phase::Ready)]);
    file.after_pass(Duration::from_millis(5), false, Some(&ready));
    let second = std::fs::read_to_string(&path).expect("written");
    assert!(second.contains("fleetlet_agent_resources{kind=\"File\",phase=\"Ready\"} 1\n"));
    assert!(second.contains("fleetlet_agent_pass_duration_seconds_count 3\n"));
    // Nothing but the file itself is left in the directory.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("listed")
        .map(|entry| entry.expect("entry").file_name())
        .collect();
    assert_eq!(names, ["fleetlet.prom"]);
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&path)
        .expect("exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644 & !current_umask());
}

/// The process's umask, read from /proc (0o022 when it cannot be read).
fn current_umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("Umask:"))
                .and_then(|value| u32::from_str_radix(value.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

#[test]
fn a_write_that_fails_is_tried_again_after_the_next_pass() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("missing-dir").join("fleetlet.prom");
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new(
        AgentId::try_from("pi-1").expect("valid id"),
    ));
    let mut file = MetricsFile::new(&path, store, false);
    let ready = status(&[("a", "File", Phase::Ready)]);
    file.after_pass(Duration::from_millis(5), false, Some(&ready));
    assert!(!path.exists());
    std::fs::create_dir(dir.path().join("missing-dir")).expect("created");
    file.after_pass(Duration::from_millis(5), false, Some(&ready));
    let text = std::fs::read_to_string(&path).expect("written on the next pass");
    assert!(text.contains("fleetlet_agent_pass_duration_seconds_count 2\n"));
    assert!(
        !text.contains("fleetlet_agent_report_pending"),
        "standalone: {text}"
    );
}
