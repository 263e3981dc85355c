//! End-to-end tests of the real `fleetlet-agent` against the real `fleetlet-manager` on a real
//! PostgreSQL: manifests pushed through the API, status seen through the API, the manager going
//! away and coming back, and agent restarts.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use fleetlet_manifests::api::{Event, EventType};
use fleetlet_manifests::{ConditionStatus, ConditionType, ErrorReason, Phase};
use fleetlet_tests::agent::{
    AgentDirs, AgentOptions, AgentProcess, ManagerProcess, file_resource, unique_agent_id, wait_for,
};
use serde_json::json;

fn offline_is(status: &fleetlet_manifests::AgentStatus, wanted: ConditionStatus) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == ConditionType::Offline && c.status == wanted)
}

#[tokio::test]
async fn fifty_files_pushed_through_the_api_are_reported_converged_within_two_seconds()
-> anyhow::Result<()> {
    let manager = ManagerProcess::start().await?;
    let agent_id = unique_agent_id("fifty");
    let options = manager.enroll(&agent_id).await?;
    let dirs = AgentDirs::new()?;
    let _agent = AgentProcess::start(&dirs, &options)?;
    // A first, empty generation: the agent is up, watching, and has reported.
    let first = manager.put_resources(&agent_id, vec![]).await?;
    manager
        .wait_converged(&agent_id, first, Duration::from_secs(15))
        .await?;

    // Owners by name and by number, modes of every kind, three levels of directories.
    let owners = [("root", "root"), ("nobody", "daemon"), ("4242", "4343")];
    let modes = ["0644", "0600", "0755", "0640", "0444"];
    let files: Vec<(PathBuf, String, &str, (&str, &str))> = (0..50)
        .map(|i| {
            let path = dirs.root().join(format!(
                "level-{}/sub-{}/leaf-{}/file-{i}.conf",
                i % 3,
                i % 5,
                i % 7
            ));
            (
                path,
                format!("content of file {i}\n{}\n", "x".repeat(i * 13)),
                modes[i % 5],
                owners[i % 3],
            )
        })
        .collect();
    let resources = files
        .iter()
        .enumerate()
        .map(|(i, (path, text, mode, (owner, group)))| {
            json!({"id": format!("file-{i}"), "kind": "File", "spec": {
                "path": path.display().to_string(), "content": {"text": text},
                "mode": mode, "owner": owner, "group": group}})
        })
        .collect();
    let generation = manager.put_resources(&agent_id, resources).await?;
    // The wait is only a bound on a failure; the two seconds are measured on the times the
    // manager recorded, from storing the generation to receiving the report that observed it
    // with every file Ready, not on when this test's polls noticed.
    let view = manager
        .wait_converged(&agent_id, generation, Duration::from_secs(30))
        .await?;
    assert_eq!(view.status.map(|s| s.resources.len()), Some(50));
    let events = manager.events(&agent_id).await?;
    let of_generation = |event: &&Event| {
        let key = match event.type_ {
            EventType::ManifestUpdated => "generation",
            EventType::StatusReported => "observedGeneration",
            EventType::ResourcePhaseChanged => "generation",
            _ => return false,
        };
        event.payload[key] == json!(generation)
    };
    let stored_at = events
        .iter()
        .filter(of_generation)
        .find(|e| e.type_ == EventType::ManifestUpdated)
        .context("a ManifestUpdated event for the generation")?
        .created_at;
    let observed_at = events
        .iter()
        .filter(of_generation)
        .find(|e| e.type_ == EventType::StatusReported)
        .context("a StatusReported event observing the generation")?
        .created_at;
    let ready: Vec<_> = events
        .iter()
        .filter(of_generation)
        .filter(|e| e.type_ == EventType::ResourcePhaseChanged && e.payload["to"] == "Ready")
        .collect();
    assert_eq!(ready.len(), 50, "{events:#?}");
    let reported_at = ready
        .iter()
        .map(|e| e.created_at)
        .fold(observed_at, std::cmp::max);
    let took = reported_at - stored_at;
    eprintln!("stored → reported converged in {took}");
    assert!(
        took <= time::Duration::seconds(2),
        "reported converged {took} after the generation was stored"
    );

    for (path, text, mode, (owner, group)) in &files {
        let meta = std::fs::metadata(path)?;
        assert_eq!(std::fs::read_to_string(path)?, *text, "{}", path.display());
        assert_eq!(format!("{:04o}", meta.permissions().mode() & 0o7777), *mode);
        let uid = match *owner {
            "root" => 0,
            "nobody" => 65534,
            number => number.parse()?,
        };
        assert_eq!(meta.uid(), uid, "owner of {}", path.display());
        let gid = match *group {
            "root" => 0,
            "daemon" => 1,
            number => number.parse()?,
        };
        assert_eq!(meta.gid(), gid, "group of {}", path.display());
    }
    Ok(())
}

#[tokio::test]
async fn a_bad_path_and_an_unknown_kind_fail_alone_as_the_manager_sees_it() -> anyhow::Result<()> {
    let manager = ManagerProcess::start().await?;
    let agent_id = unique_agent_id("alone");
    let options = manager.enroll(&agent_id).await?;
    let dirs = AgentDirs::new()?;
    let _agent = AgentProcess::start(&dirs, &options)?;
    let generation = manager
        .put_resources(
            &agent_id,
            vec![
                file_resource("good", &dirs.root().join("good.txt"), "good\n", "0644"),
                file_resource("outside", &dirs.outside().join("bad.txt"), "bad\n", "0644"),
                json!({"id": "gpu", "kind": "GpuPassthrough", "spec": {"device": "card0"}}),
            ],
        )
        .await?;
    let status = manager
        .wait_for_status(
            &agent_id,
            "every resource settled",
            Duration::from_secs(10),
            |s| {
                s.observed_generation == generation
                    && s.resources.len() == 3
                    && s.resources.values().all(|r| r.phase != Phase::Pending)
            },
        )
        .await?;
    assert_eq!(status.resources["good"].phase, Phase::Ready);
    assert_eq!(status.resources["outside"].phase, Phase::Failed);
    assert_eq!(
        status.resources["outside"]
            .error
            .as_ref()
            .map(|e| e.reason.clone()),
        Some(ErrorReason::PathNotAllowed)
    );
    assert_eq!(status.resources["gpu"].phase, Phase::Unsupported);
    assert!(!dirs.outside().join("bad.txt").exists());
    let view = manager.status(&agent_id).await?;
    assert!(!view.summary.converged);
    Ok(())
}

#[tokio::test]
async fn with_the_manager_stopped_the_agent_keeps_repairing_and_its_latest_status_arrives_later()
-> anyhow::Result<()> {
    let mut manager = ManagerProcess::start().await?;
    let agent_id = unique_agent_id("offline");
    let options = manager.enroll(&agent_id).await?;
    let dirs = AgentDirs::new()?;
    let agent = AgentProcess::start(&dirs, &options)?;
    let repaired = dirs.root().join("etc/repaired.conf");
    let blocked = dirs.root().join("etc/blocked.conf");
    let generation = manager
        .put_resources(
            &agent_id,
            vec![
                file_resource("repaired", &repaired, "keep me\n", "0644"),
                file_resource("blocked", &blocked, "me too\n", "0644"),
            ],
        )
        .await?;
    let before = manager
        .wait_converged(&agent_id, generation, Duration::from_secs(10))
        .await?
        .status
        .map(|s| s.report_seq)
        .unwrap_or_default();

    manager.stop()?;
    wait_for(
        "the agent to notice the manager is gone",
        Duration::from_secs(10),
        || async {
            (agent.count_log_lines(&["manifest watch failed"])
                + agent.count_log_lines(&["status report failed"])
                > 0)
            .then_some(())
        },
    )
    .await?;

    // Drift while the manager is away is still repaired...
    std::fs::write(&repaired, "edited while offline\n")?;
    wait_for(
        "the offline agent to repair the file",
        Duration::from_secs(20),
        || async { (std::fs::read_to_string(&repaired).ok()? == "keep me\n").then_some(()) },
    )
    .await?;
    agent
        .wait_for_log(&["ResourceRepaired", "repaired"], Duration::from_secs(20))
        .await?;
    // ...and what cannot be repaired changes the status the manager will get.
    std::fs::remove_file(&blocked)?;
    std::fs::create_dir(&blocked)?;
    agent
        .wait_for_log(&["ResourceFailed", "blocked"], Duration::from_secs(20))
        .await?;

    manager.restart().await?;
    let latest = manager
        .wait_for_status(
            &agent_id,
            "the agent's latest status after the manager came back",
            Duration::from_secs(40),
            |s| {
                s.report_seq > before
                    && s.resources.get("blocked").is_some_and(|r| {
                        r.phase == Phase::Failed
                            && r.error.as_ref().map(|e| e.reason.clone())
                                == Some(ErrorReason::Conflict)
                    })
                    && offline_is(s, ConditionStatus::False)
            },
        )
        .await?;
    assert_eq!(latest.resources["repaired"].phase, Phase::Ready);
    Ok(())
}

#[tokio::test]
async fn a_restarted_agent_keeps_increasing_report_seq_and_its_reports_are_accepted()
-> anyhow::Result<()> {
    let manager = ManagerProcess::start().await?;
    let agent_id = unique_agent_id("restart");
    let token = manager.register_agent(&agent_id).await?;
    let dirs = AgentDirs::new()?;
    let options = AgentOptions::with_manager(&agent_id, &manager.url(), &token);
    let generation = manager
        .put_resources(
            &agent_id,
            vec![file_resource(
                "motd",
                &dirs.root().join("motd"),
                "hi\n",
                "0644",
            )],
        )
        .await?;
    let mut first = AgentProcess::start(&dirs, &options)?;
    let seq_before = manager
        .wait_converged(&agent_id, generation, Duration::from_secs(10))
        .await?
        .status
        .map(|s| s.report_seq)
        .unwrap_or_default();
    let (exit, took) = first.terminate(Duration::from_secs(6))?;
    assert!(
        exit.success() && took < Duration::from_secs(5),
        "{exit:?} after {took:?}"
    );
    assert!(!first.logs().contains(&token), "the agent logged its token");

    // A new process with a fresh memory store: nothing remembers the last seq but the clock.
    let restarted_at = time::OffsetDateTime::now_utc();
    let _second = AgentProcess::start(&dirs, &options)?;
    let after = manager
        .wait_for_status(
            &agent_id,
            "a converged report from the restarted agent",
            Duration::from_secs(10),
            |s| {
                s.report_seq > seq_before
                    && s.agent.started_at >= restarted_at
                    && s.all_ready_at(generation)
            },
        )
        .await?;
    assert!(after.report_seq > seq_before);
    let view = manager.status(&agent_id).await?;
    assert!(view.summary.converged);
    Ok(())
}

#[tokio::test]
async fn a_file_edited_by_hand_is_repaired_and_the_manager_logs_it_once_per_interval_with_a_count()
-> anyhow::Result<()> {
    let manager = ManagerProcess::start().await?;
    let agent_id = unique_agent_id("drift");
    let options = manager.enroll(&agent_id).await?;
    let dirs = AgentDirs::new()?;
    let agent = AgentProcess::start(&dirs, &options)?;
    let drifty = dirs.root().join("etc/drifty.conf");
    let first = manager
        .put_resources(
            &agent_id,
            vec![file_resource("drifty", &drifty, "as managed\n", "0644")],
        )
        .await?;
    manager
        .wait_converged(&agent_id, first, Duration::from_secs(15))
        .await?;
    let repaired_events = |events: &[Event]| -> Vec<Event> {
        events
            .iter()
            .filter(|e| e.type_ == EventType::ResourceRepaired)
            .cloned()
            .collect()
    };
    assert!(repaired_events(&manager.events(&agent_id).await?).is_empty());

    // Someone edits the file by hand: the agent puts it back and the manager's log says so.
    std::fs::write(&drifty, "edited by hand\n")?;
    let events = wait_for(
        "a ResourceRepaired event in the manager's log",
        Duration::from_secs(20),
        || async {
            let events = repaired_events(&manager.events(&agent_id).await.ok()?);
            (!events.is_empty()).then_some(events)
        },
    )
    .await?;
    assert_eq!(std::fs::read_to_string(&drifty)?, "as managed\n");
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_eq!(
        event.resource_id.as_ref().map(|id| id.as_str()),
        Some("drifty")
    );
    assert_eq!(event.payload["kind"], "File");
    assert_eq!(event.payload["repairs"], 1);
    assert_eq!(event.payload["drift"], "content changed");
    let status = manager
        .wait_for_status(
            &agent_id,
            "the repair in the status",
            Duration::from_secs(10),
            |s| s.resources["drifty"].repairs.is_some(),
        )
        .await?;
    let repairs = status.resources["drifty"]
        .repairs
        .clone()
        .context("repairs")?;
    assert_eq!(
        (repairs.count, repairs.last_drift.as_str()),
        (1, "content changed")
    );

    // The same drift again, within the interval: repaired, counted, but no second event.
    std::fs::write(&drifty, "edited by hand again\n")?;
    wait_for("the second repair", Duration::from_secs(20), || async {
        (agent.count_log_lines(&["ResourceRepaired", "drifty"]) >= 2).then_some(())
    })
    .await?;
    // A count alone waits for the agent's next report: a new generation brings one.
    let second = manager
        .put_resources(
            &agent_id,
            vec![
                file_resource("drifty", &drifty, "as managed\n", "0644"),
                file_resource("other", &dirs.root().join("etc/other.conf"), "x\n", "0644"),
            ],
        )
        .await?;
    let status = manager
        .wait_for_status(
            &agent_id,
            "the second repair counted in the status",
            Duration::from_secs(20),
            |s| {
                s.all_ready_at(second)
                    && s.resources["drifty"].repairs.as_ref().map(|r| r.count) == Some(2)
            },
        )
        .await?;
    assert_eq!(status.resources["other"].repairs, None);
    let events = repaired_events(&manager.events(&agent_id).await?);
    assert_eq!(
        events.len(),
        1,
        "a second event within the interval: {events:?}"
    );
    Ok(())
}
