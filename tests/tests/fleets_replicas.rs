//! Issue 20, acceptance 4: a rollout survives the SIGKILL of the manager replica driving it.
//! Two real managers on one fresh PostgreSQL database, real agents reaching them through a
//! balancer (tests/src/fleets.rs); the replica that alone held the fleet's lease is killed just
//! after an approval started a batch; the other continues within 10 s, and every device gets the
//! revision exactly once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fleetlet_manifests::fleet_api::{DeviceRolloutState as State, RolloutPhase};
use fleetlet_tests::fleets::{Lab, strategy};
use reqwest::StatusCode;
use serde_json::json;

const CONVERGE: Duration = Duration::from_secs(60);
const ROLLOUT: Duration = Duration::from_secs(90);
/// How soon the surviving replica must carry on (issue 20, acceptance 4).
const TAKEOVER: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_replica_killed_mid_rollout_is_replaced_within_seconds_and_no_device_is_written_twice()
-> anyhow::Result<()> {
    // Replica 0 alone at first, so the fleet's lease is certainly its own.
    let mut lab = Lab::with_kiosks(8, 0).await?;
    let devices = lab.device_ids();
    let mut body = lab.kiosks_fleet(
        "v1 {{ agentId }}\n",
        strategy(json!([{"limit": 1}, {"limit": 3}, {}]), "100%", true),
    );
    lab.put_fleet(&body).await?;
    for batch in 0..2 {
        lab.wait_fleet("kiosks", "revision 1 waiting", ROLLOUT, |v| {
            v.phase == RolloutPhase::WaitingApproval && v.current_batch == Some(batch)
        })
        .await?;
        let (status, answer) = lab.action("kiosks", "approve").await?;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    lab.wait_completed("kiosks", &devices, ROLLOUT).await?;
    let mut before = BTreeMap::new();
    for id in &devices {
        before.insert(id.clone(), lab.generation(id).await?);
    }

    // Revision 2 waits after its canary; then the second replica comes up.
    body["template"]["resources"] = json!([lab.motd("v2 {{ agentId }}\n")]);
    lab.put_fleet(&body).await?;
    lab.wait_fleet(
        "kiosks",
        "revision 2 waiting after its canary",
        ROLLOUT,
        |v| {
            v.target_revision == 2
                && v.phase == RolloutPhase::WaitingApproval
                && v.current_batch == Some(0)
        },
    )
    .await?;
    lab.add_replica().await?;

    // Approve through replica 0 and kill it at once: batch 1 is starting on it.
    let (status, answer) = lab.action("kiosks", "approve").await?;
    assert_eq!(status, StatusCode::OK, "{answer}");
    lab.replicas[0].kill()?;
    let killed = Instant::now();
    let view = lab
        .wait_fleet("kiosks", "replica 1 finished batch 1", TAKEOVER, |v| {
            v.current_batch == Some(1)
                && v.batches[1].finished
                && v.phase == RolloutPhase::WaitingApproval
        })
        .await?;
    println!(
        "batch 1 finished {:?} after the kill: {view:?}",
        killed.elapsed()
    );
    let (status, answer) = lab.action("kiosks", "approve").await?;
    assert_eq!(status, StatusCode::OK, "through the survivor: {answer}");
    lab.wait_fleet("kiosks", "revision 2 completed", ROLLOUT, |v| {
        v.phase == RolloutPhase::Completed && v.target_revision == 2
    })
    .await?;
    lab.wait_converged(&devices, 2, CONVERGE).await?;

    // Exactly once: one new generation per device, with revision 2's content.
    for id in &devices {
        let generations = lab.generations(id).await?;
        assert_eq!(
            generations.last().map(|g| g.generation),
            Some(before[id] + 1),
            "{id} got revision 2 once: {generations:?}"
        );
        assert_eq!(
            std::fs::read_to_string(lab.device_file(id, "motd"))?,
            format!("v2 {id}\n")
        );
    }
    let rows = lab.fleet_devices("kiosks").await?;
    assert!(
        rows.values()
            .all(|r| r.state == State::Succeeded && r.revision_rendered == Some(2)),
        "{rows:#?}"
    );
    let logs = lab.manager_logs();
    assert!(!logs.contains("panicked"), "{logs}");
    Ok(())
}
