//! Tests of the status builder: reportSeq, conditions, pending resources and repair counts.

use super::*;
use fleetlet_manifests::{ErrorReason, ResourceError};
use time::macros::datetime;

fn agent() -> AgentInfo {
    AgentInfo {
        version: "0.1.0".into(),
        hostname: "pi".into(),
        arch: "aarch64".into(),
        os: "linux".into(),
        boot_id: String::new(),
        started_at: datetime!(2026-11-22 10:00 UTC),
        supported_kinds: vec!["File".into()],
    }
}

fn manifest() -> AgentManifest {
    AgentManifest::from_value(serde_json::json!({
        "apiVersion": "fleetlet.dev/v1", "kind": "AgentManifest", "agentId": "pi", "generation": 2,
        "resources": [
            {"id": "a", "kind": "File", "spec": {"path": "/r/a", "content": {"text": "a"}, "mode": "0644"}},
            {"id": "b", "kind": "File", "spec": {"path": "/r/b", "content": {"text": "b"}, "mode": "0644"}}
        ]
    }))
    .expect("valid manifest")
}

fn state(manifest: &AgentManifest, id: &str, phase: Phase) -> (ResourceId, ResourceState) {
    let resource = manifest.resource(id).expect("resource");
    (
        resource.id.clone(),
        ResourceState {
            status: ResourceStatus {
                kind: "File".into(),
                phase,
                since: datetime!(2026-11-22 10:00 UTC),
                generation: 2,
                spec_hash: Some(resource.spec_hash()),
                error: (phase == Phase::Failed).then(|| ResourceError {
                    reason: ErrorReason::PathNotAllowed,
                    message: "outside".into(),
                }),
                retry_after: None,
                details: None,
                repairs: None,
            },
            consecutive_failures: 0,
        },
    )
}

fn condition(status: &AgentStatus, type_: ConditionType) -> &Condition {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .expect("condition present")
}

/// The agent the inputs speak of; `inputs` borrows from it.
struct Fixture {
    agent_id: AgentId,
    agent: AgentInfo,
}

impl Fixture {
    fn new() -> Self {
        Self {
            agent_id: AgentId::try_from("pi").expect("id"),
            agent: agent(),
        }
    }

    /// Generation 2 received and applied, online, at 10:01, with no history; a test overrides
    /// the fields it is about.
    fn inputs<'a>(
        &'a self,
        manifest: Option<&'a AgentManifest>,
        states: &'a BTreeMap<ResourceId, ResourceState>,
    ) -> StatusInputs<'a> {
        StatusInputs {
            agent_id: &self.agent_id,
            agent: &self.agent,
            manifest,
            missed_deadline: None,
            spec_hashes: None,
            manifest_generation: 2,
            observed_generation: 2,
            states,
            connectivity: &Connectivity::Online,
            manifest_rejected: None,
            previous: None,
            now: datetime!(2026-11-22 10:01 UTC),
        }
    }
}

#[test]
fn report_seq_increases_and_is_floored_by_the_clock() {
    let now = datetime!(2026-11-22 10:00 UTC);
    let micros = 1_795_341_600_000_000;
    assert_eq!(next_report_seq(0, now), micros);
    assert_eq!(next_report_seq(micros + 5, now), micros + 6);
    assert!(next_report_seq(7, now + time::Duration::seconds(1)) > next_report_seq(7, now));
}

#[test]
fn converged_when_every_resource_is_ready_at_the_received_generation() {
    let manifest = manifest();
    let states = BTreeMap::from([
        state(&manifest, "a", Phase::Ready),
        state(&manifest, "b", Phase::Ready),
    ]);
    let fixture = Fixture::new();
    let inputs = fixture.inputs(Some(&manifest), &states);
    let status = build_status(&inputs);
    assert!(is_converged(&status));
    assert_eq!(
        condition(&status, ConditionType::Ready).status,
        ConditionStatus::True
    );
    assert_eq!(
        condition(&status, ConditionType::Offline).status,
        ConditionStatus::False
    );
    assert!(status.check().is_empty());
}

#[test]
fn a_failed_resource_degrades_and_transition_times_are_kept() {
    let manifest = manifest();
    let states = BTreeMap::from([
        state(&manifest, "a", Phase::Ready),
        state(&manifest, "b", Phase::Failed),
    ]);
    let fixture = Fixture::new();
    let offline = Connectivity::Offline {
        reason: "ManagerUnreachable".into(),
        message: "connection refused".into(),
    };
    let mut inputs = StatusInputs {
        connectivity: &offline,
        ..fixture.inputs(Some(&manifest), &states)
    };
    let first = build_status(&inputs);
    assert!(!is_converged(&first));
    assert_eq!(
        condition(&first, ConditionType::Degraded).status,
        ConditionStatus::True
    );
    assert_eq!(
        condition(&first, ConditionType::Offline).status,
        ConditionStatus::True
    );

    inputs.previous = Some(&first);
    inputs.now = datetime!(2026-11-22 10:05 UTC);
    let second = build_status(&inputs);
    assert_eq!(
        condition(&second, ConditionType::Degraded).last_transition_time,
        datetime!(2026-11-22 10:01 UTC)
    );
    assert!(same_content(&first, &second));
}

#[test]
fn resources_with_a_newer_spec_than_their_state_are_pending() {
    let manifest = manifest();
    let (id, mut stale) = state(&manifest, "a", Phase::Ready);
    stale.status.spec_hash = Some("sha256:old".into());
    let states = BTreeMap::from([(id, stale)]);
    // As the engine passes them, computed once per manifest.
    let hashes: Vec<String> = manifest.resources.iter().map(|r| r.spec_hash()).collect();
    let fixture = Fixture::new();
    let status = build_status(&StatusInputs {
        spec_hashes: Some(&hashes),
        observed_generation: 1,
        connectivity: &Connectivity::Standalone,
        ..fixture.inputs(Some(&manifest), &states)
    });
    assert!(status.resources.values().all(|r| r.phase == Phase::Pending));
    assert_eq!(
        condition(&status, ConditionType::Reconciling).status,
        ConditionStatus::True
    );
}

#[test]
fn a_repair_counts_one_more_and_names_the_drift_while_other_changes_keep_the_count() {
    let manifest = manifest();
    let (_, mut before) = state(&manifest, "a", Phase::Ready);
    let t1 = datetime!(2026-11-22 10:01 UTC);
    let edited = Change::Repaired {
        drift: "content changed".into(),
    };
    let first = repairs_after(Some(&before), &edited, t1).expect("counted");
    assert_eq!(
        first,
        Repairs {
            count: 1,
            last_at: t1,
            last_drift: "content changed".into()
        }
    );
    before.status.repairs = Some(first.clone());
    for change in [Change::Unchanged, Change::Updated, Change::Created] {
        assert_eq!(
            repairs_after(Some(&before), &change, datetime!(2026-11-22 10:02 UTC)),
            Some(first.clone()),
            "{change:?}"
        );
    }
    let deleted = Change::Repaired {
        drift: "the file was deleted".into(),
    };
    let second = repairs_after(Some(&before), &deleted, t1).expect("counted");
    assert_eq!(
        (second.count, second.last_drift.as_str()),
        (2, "the file was deleted")
    );
    assert_eq!(repairs_after(None, &Change::Created, t1), None);
    // A long drift message is cut.
    let long = Change::Repaired {
        drift: "x".repeat(10_000),
    };
    assert!(
        repairs_after(None, &long, t1)
            .expect("counted")
            .last_drift
            .len()
            < 300
    );
}

#[test]
fn a_status_that_differs_only_in_repairs_is_the_same_content_but_not_the_same_repairs() {
    let manifest = manifest();
    let states = BTreeMap::from([state(&manifest, "a", Phase::Ready)]);
    let fixture = Fixture::new();
    let mut inputs = fixture.inputs(None, &states);
    let before = build_status(&inputs);
    let mut repaired_states = states.clone();
    for state in repaired_states.values_mut() {
        state.status.repairs = Some(Repairs {
            count: 1,
            last_at: datetime!(2026-11-22 10:01 UTC),
            last_drift: "mode changed".into(),
        });
    }
    inputs.states = &repaired_states;
    inputs.previous = Some(&before);
    let after = build_status(&inputs);
    assert!(same_content(&before, &after));
    assert!(!same_repairs(&before, &after));
    assert!(same_repairs(&after, &after));
    // Anything else still counts as news.
    let mut failed = after.clone();
    failed
        .resources
        .values_mut()
        .for_each(|r| r.phase = Phase::Failed);
    assert!(!same_content(&after, &failed));
}

#[test]
fn a_status_whose_only_news_is_repairs_goes_out_at_most_once_per_interval() {
    let t0 = datetime!(2026-11-22 10:00 UTC);
    assert!(repairs_due(None, t0));
    assert!(!repairs_due(Some(t0), t0 + time::Duration::minutes(9)));
    assert!(repairs_due(Some(t0), t0 + REPAIR_REPORT_INTERVAL));
}

#[test]
fn a_resource_pending_for_a_new_spec_keeps_its_repairs() {
    let manifest = manifest();
    let (id, mut old) = state(&manifest, "a", Phase::Ready);
    old.status.spec_hash = Some("an older spec".into());
    old.status.repairs = Some(Repairs {
        count: 3,
        last_at: datetime!(2026-11-22 10:00 UTC),
        last_drift: "content changed".into(),
    });
    let states = BTreeMap::from([(id, old)]);
    let fixture = Fixture::new();
    let status = build_status(&StatusInputs {
        observed_generation: 1,
        ..fixture.inputs(Some(&manifest), &states)
    });
    let a = &status.resources["a"];
    assert_eq!(a.phase, Phase::Pending);
    assert_eq!(a.repairs.as_ref().map(|r| r.count), Some(3));
    assert_eq!(status.resources["b"].repairs, None);
}
