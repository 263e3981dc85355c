//! Issue 20, acceptance 1–3 and 5–6: fleets against real manager processes on a fresh
//! PostgreSQL database and real `fleetlet-agent` processes, each writing under its own file root
//! (tests/src/fleets.rs). Replicas (acceptance 4) and signed fleets (acceptance 7) are in
//! fleets_replicas.rs and fleets_signed.rs.

use std::time::Duration;

use fleetlet_manifests::fleet_api::{DeviceRolloutState as State, RolloutPhase};
use fleetlet_tests::agent::{file_resource, manifest};
use fleetlet_tests::fleets::{Lab, count, fleet, ids, kiosk, strategy, template_file};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Generous bounds for a loaded two-core CI machine; every wait ends as soon as its condition
/// holds.
const CONVERGE: Duration = Duration::from_secs(60);
const ROLLOUT: Duration = Duration::from_secs(90);

/// PUTs, as the admin, a manifest of device `id`'s own (no fleet's), checked against the JSON
/// Schema first: one File `name` under its root saying `text`. Answers the status and body.
async fn put_own_file(
    lab: &mut Lab,
    id: &str,
    name: &str,
    text: &str,
) -> anyhow::Result<(StatusCode, Value)> {
    let file = file_resource(name, &lab.device_file(id, name), text, "0644");
    let own = manifest(id, vec![file]);
    fleetlet_tests::schema::check_manifest(&own)?;
    let path = format!("/api/v1/agents/{id}/manifest");
    lab.call(Method::PUT, &path, Some(&own)).await
}

#[tokio::test]
async fn a_fleet_renders_each_selected_device_with_its_own_values_and_leaves_the_rest_alone()
-> anyhow::Result<()> {
    let kiosks = ids("kiosk", 1..=12);
    let others = ids("other", 1..=8);
    let greeted = kiosks.iter().enumerate().map(|(i, id)| {
        let mut labels = json!({"role": "kiosk", "greeting": format!("hello-{i}")});
        if i == 2 {
            labels["site"] = json!("north");
        }
        (id.clone(), labels)
    });
    let printers = others
        .iter()
        .map(|id| (id.clone(), json!({"role": "printer"})));
    let mut lab = Lab::with_devices(greeted.chain(printers)).await?;
    // The eight others run a manifest of their own, which the fleet must not touch.
    for id in &others {
        let (status, answer) = put_own_file(&mut lab, id, "own", "mine\n").await?;
        anyhow::ensure!(
            status.is_success(),
            "{id}'s own manifest: {status}: {answer}"
        );
    }
    lab.wait_converged(&others, 1, CONVERGE).await?;

    let body = fleet(
        "kiosks",
        json!({"role": "kiosk"}),
        json!({"greeting": {"pattern": "^hello-[0-9]+$"},
               "site": {"pattern": "^[a-z]+$", "default": "lab"}}),
        vec![lab.motd("{{ greeting }} at {{ site }} from {{ agentId }}\n")],
        strategy(json!([{}]), "100%", false),
    );
    let revision = lab.put_fleet(&body).await?;
    assert_eq!(revision, 1);
    // The same fleet again stores nothing.
    let (status, again) = lab
        .call(Method::PUT, "/api/v1/fleets/kiosks", Some(&body))
        .await?;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["revision"], 1, "{again}");
    assert_eq!(again["created"], false, "{again}");

    let view = lab
        .wait_fleet("kiosks", "every kiosk succeeded", ROLLOUT, |v| {
            v.phase == RolloutPhase::Completed && count(v, State::Succeeded) == 12
        })
        .await?;
    assert_eq!(view.devices.len(), 1, "only Succeeded devices: {view:?}");
    lab.wait_converged(&kiosks, 1, CONVERGE).await?;
    for (i, id) in kiosks.iter().enumerate() {
        let site = if i == 2 { "north" } else { "lab" };
        assert_eq!(
            std::fs::read_to_string(lab.device_file(id, "motd"))?,
            format!("hello-{i} at {site} from {id}\n"),
            "{id}'s own values"
        );
    }
    let rows = lab.fleet_devices("kiosks").await?;
    assert_eq!(
        rows.keys().cloned().collect::<Vec<_>>(),
        kiosks,
        "the fleet selects exactly the twelve kiosks"
    );
    for id in &others {
        assert_eq!(lab.generation(id).await?, 1, "{id} kept its own manifest");
        assert_eq!(
            std::fs::read_to_string(lab.device_file(id, "own"))?,
            "mine\n"
        );
        assert!(!lab.device_file(id, "motd").exists(), "{id} got no motd");
    }

    // A label that breaks its pattern: the device is not rendered, and keeps what it has.
    let broken = kiosks[4].clone();
    let generation = lab.generation(&broken).await?;
    let (status, patched) = lab
        .patch_labels(&broken, json!({"greeting": "HELLO"}))
        .await?;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["labels"]["greeting"], "HELLO", "{patched}");
    assert_eq!(patched["fleet"], "kiosks", "{patched}");
    // A change of template rolls out; the broken device is left out of it.
    let mut second = body.clone();
    second["template"]["resources"] =
        json!([lab.motd("{{ greeting }} again at {{ site }} from {{ agentId }}\n")]);
    lab.put_fleet(&second).await?;
    let view = lab
        .wait_fleet(
            "kiosks",
            "the second revision out, one device invalid",
            ROLLOUT,
            |v| {
                v.phase == RolloutPhase::Completed
                    && count(v, State::Succeeded) == 11
                    && count(v, State::ParameterInvalid) == 1
            },
        )
        .await?;
    assert_eq!(view.revision, 2);
    let rows = lab.fleet_devices("kiosks").await?;
    let row = &rows[&broken];
    assert_eq!(row.state, State::ParameterInvalid, "{row:?}");
    assert!(
        row.detail
            .as_deref()
            .unwrap_or_default()
            .contains("greeting"),
        "the detail names the parameter: {row:?}"
    );
    assert_eq!(lab.generation(&broken).await?, generation, "not rendered");
    assert_eq!(
        std::fs::read_to_string(lab.device_file(&broken, "motd"))?,
        format!("hello-4 at lab from {broken}\n"),
        "the broken device keeps its files"
    );
    assert_eq!(
        std::fs::read_to_string(lab.device_file(&kiosks[0], "motd"))?,
        format!("hello-0 again at lab from {}\n", kiosks[0]),
    );
    Ok(())
}

#[tokio::test]
async fn a_failing_canary_pauses_the_rollout_rollback_restores_it_and_a_fix_goes_out_batch_by_batch()
-> anyhow::Result<()> {
    let mut lab = Lab::with_kiosks(8, 0).await?;
    let devices = lab.device_ids();
    let staged = strategy(json!([{"limit": 1}, {"limit": "25%"}, {}]), "100%", false);
    let mut body = lab.kiosks_fleet("v1 {{ agentId }}\n", staged);
    lab.put_fleet(&body).await?;
    lab.wait_completed("kiosks", &devices, ROLLOUT).await?;
    let mut before = std::collections::BTreeMap::new();
    for id in &devices {
        before.insert(id.clone(), lab.generation(id).await?);
    }

    // Revision 2 writes a file outside every device's file roots: the canary fails it.
    let outside = format!("{}/{{{{ agentId }}}}/bad", lab.outside().display());
    body["template"]["resources"] = json!([
        lab.motd("v2 {{ agentId }}\n"),
        template_file("bad", &outside, "never\n")
    ]);
    assert_eq!(lab.put_fleet(&body).await?, 2);
    let paused = lab
        .wait_fleet("kiosks", "the rollout paused by itself", ROLLOUT, |v| {
            v.phase == RolloutPhase::Paused
        })
        .await?;
    assert_eq!(paused.target_revision, 2);
    assert_eq!(paused.current_batch, Some(0), "{paused:?}");
    let first = &paused.batches[0];
    assert_eq!(
        (first.devices, first.failed, first.succeeded),
        (1, 1, 0),
        "{paused:?}"
    );
    assert!(
        paused.batches[1..].iter().all(|b| b.started_at.is_none()),
        "no later batch started: {paused:?}"
    );
    let reason = paused.pause_reason.clone().unwrap_or_default();
    assert!(
        reason.contains('1'),
        "the pause reason names the counts: {reason}"
    );
    let canary = {
        let rows = lab.fleet_devices("kiosks").await?;
        let failed: Vec<_> = rows
            .values()
            .filter(|r| r.batch == Some(0) && r.state == State::Failed)
            .map(|r| r.agent_id.as_str().to_owned())
            .collect();
        assert_eq!(failed.len(), 1, "one failed canary: {rows:#?}");
        failed[0].clone()
    };
    for id in &devices {
        let now = lab.generation(id).await?;
        if *id == canary {
            assert_eq!(now, before[id] + 1, "the canary got revision 2");
        } else {
            assert_eq!(now, before[id], "{id} did not get revision 2");
        }
    }
    let events = lab.events("kiosks").await?;
    let pause = events
        .iter()
        .rev()
        .find(|e| e.type_ == "RolloutPaused")
        .unwrap_or_else(|| panic!("a RolloutPaused event: {events:#?}"));
    let payload = pause.payload.to_string();
    assert!(
        payload.contains("failed") && payload.contains('1'),
        "the pause event names the counts: {payload}"
    );
    assert!(!lab.outside().join(&canary).join("bad").exists());

    // Rollback: the canary gets revision 1's content back as a new generation.
    let (status, answer) = lab.action("kiosks", "rollback").await?;
    assert_eq!(status, StatusCode::OK, "{answer}");
    lab.wait_fleet("kiosks", "rolled back", ROLLOUT, |v| {
        v.phase == RolloutPhase::RolledBack
    })
    .await?;
    lab.wait_converged(std::slice::from_ref(&canary), before[&canary] + 2, CONVERGE)
        .await?;
    assert_eq!(
        std::fs::read_to_string(lab.device_file(&canary, "motd"))?,
        format!("v1 {canary}\n"),
        "the canary runs revision 1 again"
    );
    for id in devices.iter().filter(|id| **id != canary) {
        assert_eq!(
            lab.generation(id).await?,
            before[id],
            "{id} untouched by the rollback"
        );
    }
    assert!(
        lab.events("kiosks")
            .await?
            .iter()
            .any(|e| e.type_ == "RolloutRolledBack")
    );

    // A fixed revision 3 goes out batch by batch: 1, then 25% of 8 = 2, then the other 5.
    body["template"]["resources"] = json!([lab.motd("v3 {{ agentId }}\n")]);
    assert_eq!(lab.put_fleet(&body).await?, 3);
    let done = lab
        .wait_fleet("kiosks", "revision 3 completed", ROLLOUT, |v| {
            v.phase == RolloutPhase::Completed && v.target_revision == 3
        })
        .await?;
    let sizes: Vec<u32> = done.batches.iter().map(|b| b.devices).collect();
    assert_eq!(sizes, [1, 2, 5], "{done:?}");
    assert!(
        done.batches
            .iter()
            .all(|b| b.finished && b.succeeded == b.devices),
        "{done:?}"
    );
    let starts: Vec<_> = done
        .batches
        .iter()
        .map(|b| b.started_at.expect("every batch started"))
        .collect();
    assert!(
        starts.windows(2).all(|w| w[0] < w[1]),
        "in order: {starts:?}"
    );
    let events = lab.events("kiosks").await?;
    let third_started: Vec<&Value> = events
        .iter()
        .filter(|e| e.type_ == "RolloutBatchStarted")
        .map(|e| &e.payload)
        .filter(|p| p["revision"] == 3 || p.to_string().contains("\"revision\":3"))
        .collect();
    assert_eq!(
        third_started.len(),
        3,
        "three batches started for revision 3: {events:#?}"
    );
    // Each device's revision-3 manifest was written inside its batch, and each batch started
    // only once every device of the previous one had converged on it.
    let rows = lab.fleet_devices("kiosks").await?;
    for (id, row) in &rows {
        let batch = row.batch.expect("every device in a batch") as usize;
        let written = lab
            .generations(id)
            .await?
            .last()
            .map(|g| g.created_at)
            .expect("a generation");
        assert!(
            written >= starts[batch],
            "{id} written after its batch {batch} started"
        );
        if let Some(next) = starts.get(batch + 1) {
            assert!(
                written < *next,
                "{id} written before batch {} started",
                batch + 1
            );
        }
        assert_eq!(
            std::fs::read_to_string(lab.device_file(id, "motd"))?,
            format!("v3 {id}\n")
        );
    }
    lab.wait_converged(&devices, 1, CONVERGE).await?;
    Ok(())
}

#[tokio::test]
async fn approval_holds_each_batch_and_operator_actions_answer_409_where_they_do_not_apply()
-> anyhow::Result<()> {
    let mut lab = Lab::with_kiosks(4, 0).await?;
    let devices = lab.device_ids();
    let mut body = lab.kiosks_fleet(
        "v1 {{ agentId }}\n",
        strategy(json!([{"limit": 1}, {}]), "100%", true),
    );
    let (status, _) = lab.action("nothing-here", "pause").await?;
    assert_eq!(status, StatusCode::NOT_FOUND, "an unknown fleet");
    lab.put_fleet(&body).await?;
    let waiting = lab
        .wait_fleet("kiosks", "waiting for approval", ROLLOUT, |v| {
            v.phase == RolloutPhase::WaitingApproval
        })
        .await?;
    assert_eq!(waiting.batches[0].succeeded, 1, "{waiting:?}");
    let mut given = 0;
    for id in &devices {
        given += usize::from(lab.generation(id).await? > 0);
    }
    assert_eq!(given, 1, "only the first batch got the revision");
    for action in ["resume"] {
        let (status, answer) = lab.action("kiosks", action).await?;
        assert_eq!(
            status,
            StatusCode::CONFLICT,
            "{action} while waiting: {answer}"
        );
    }
    let (status, answer) = lab.action("kiosks", "approve").await?;
    assert_eq!(status, StatusCode::OK, "{answer}");
    lab.wait_completed("kiosks", &devices, ROLLOUT).await?;
    for action in ["pause", "resume", "approve", "abort"] {
        let (status, answer) = lab.action("kiosks", action).await?;
        assert_eq!(
            status,
            StatusCode::CONFLICT,
            "{action} when completed: {answer}"
        );
        assert!(answer.to_string().contains("Completed") || !answer.is_null());
    }

    // Revision 2: pause and resume while it waits, then abort; devices keep what they have.
    body["template"]["resources"] = json!([lab.motd("v2 {{ agentId }}\n")]);
    lab.put_fleet(&body).await?;
    lab.wait_fleet("kiosks", "revision 2 waiting", ROLLOUT, |v| {
        v.phase == RolloutPhase::WaitingApproval && v.target_revision == 2
    })
    .await?;
    let (status, answer) = lab.action("kiosks", "pause").await?;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let paused = lab.fleet("kiosks").await?;
    assert_eq!(paused.phase, RolloutPhase::Paused);
    assert!(paused.pause_reason.is_some(), "{paused:?}");
    let (status, answer) = lab.action("kiosks", "pause").await?;
    assert_eq!(status, StatusCode::CONFLICT, "pause twice: {answer}");
    let (status, answer) = lab.action("kiosks", "approve").await?;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "approve while paused: {answer}"
    );
    let (status, answer) = lab.action("kiosks", "resume").await?;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let resumed = lab.fleet("kiosks").await?;
    assert_ne!(resumed.phase, RolloutPhase::Paused);
    assert!(
        lab.events("kiosks")
            .await?
            .iter()
            .any(|e| e.type_ == "RolloutResumed")
    );
    lab.wait_fleet("kiosks", "revision 2 waiting again", ROLLOUT, |v| {
        v.phase == RolloutPhase::WaitingApproval
    })
    .await?;
    let mut generations = Vec::new();
    for id in &devices {
        generations.push(lab.generation(id).await?);
    }
    let (status, answer) = lab.action("kiosks", "abort").await?;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let aborted = lab.fleet("kiosks").await?;
    assert_eq!(aborted.phase, RolloutPhase::Aborted);
    for action in ["pause", "resume", "approve", "abort"] {
        let (status, answer) = lab.action("kiosks", action).await?;
        assert_eq!(
            status,
            StatusCode::CONFLICT,
            "{action} when aborted: {answer}"
        );
    }
    assert_eq!(
        lab.generation(&devices[1]).await?,
        generations[1],
        "an aborted rollout writes nothing more"
    );
    assert_eq!(
        generations.iter().filter(|g| **g == 2).count(),
        1,
        "only the first batch got revision 2: {generations:?}"
    );
    assert!(
        lab.events("kiosks")
            .await?
            .iter()
            .any(|e| e.type_ == "RolloutAborted")
    );
    Ok(())
}

#[tokio::test]
async fn an_owned_device_refuses_direct_writes_two_fleets_conflict_and_relabelling_releases()
-> anyhow::Result<()> {
    let mut lab = Lab::with_devices([
        ("pi-1", kiosk()),
        ("pi-2", json!({"role": "kiosk", "tier": "a"})),
        ("pi-3", kiosk()),
    ])
    .await?;
    let all = lab.device_ids();
    let mut kiosks = lab.kiosks_fleet(
        "kiosk {{ agentId }}\n",
        strategy(json!([{}]), "100%", false),
    );
    lab.put_fleet(&kiosks).await?;
    lab.wait_completed("kiosks", &all, ROLLOUT).await?;

    // A direct write to an owned device: 409 naming the fleet.
    let (status, answer) = put_own_file(&mut lab, "pi-1", "motd", "direct\n").await?;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert!(
        answer.to_string().contains("kiosks"),
        "names the fleet: {answer}"
    );

    // A second fleet selecting pi-2 too: pi-2 is in conflict, written by neither.
    let pi2 = lab.generation("pi-2").await?;
    let tier = fleet(
        "tier-a",
        json!({"tier": "a"}),
        json!({}),
        vec![lab.motd("tier {{ agentId }}\n")],
        strategy(json!([{}]), "100%", false),
    );
    lab.put_fleet(&tier).await?;
    for name in ["kiosks", "tier-a"] {
        lab.wait_fleet(name, "pi-2 in conflict", ROLLOUT, |v| {
            count(v, State::Conflict) == 1
        })
        .await?;
        let row = lab.fleet_devices(name).await?["pi-2"].clone();
        assert_eq!(row.state, State::Conflict);
        assert_eq!(row.conflicting_fleets, ["kiosks", "tier-a"], "{row:?}");
    }
    assert!(
        lab.events("kiosks")
            .await?
            .iter()
            .any(|e| e.type_ == "FleetConflict")
    );
    kiosks["template"]["resources"] = json!([lab.motd("kiosk v2 {{ agentId }}\n")]);
    lab.put_fleet(&kiosks).await?;
    lab.wait_fleet(
        "kiosks",
        "revision 2 out to the owned devices",
        ROLLOUT,
        |v| v.target_revision == 2 && count(v, State::Succeeded) == 2,
    )
    .await?;
    lab.wait_converged(&["pi-1".into(), "pi-3".into()], 2, CONVERGE)
        .await?;
    assert_eq!(
        lab.generation("pi-2").await?,
        pi2,
        "the conflicted device untouched"
    );
    assert_eq!(
        std::fs::read_to_string(lab.device_file("pi-2", "motd"))?,
        "kiosk pi-2\n"
    );
    let (status, patched) = lab.patch_labels("pi-2", json!({"tier": null})).await?;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["fleet"], "kiosks", "the conflict ends: {patched}");

    // Relabelled out: released, nothing wiped, direct writes allowed again.
    let pi3 = lab.generation("pi-3").await?;
    let (status, patched) = lab.patch_labels("pi-3", json!({"role": null})).await?;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert!(patched["fleet"].is_null(), "{patched}");
    assert!(patched["labels"].get("role").is_none(), "{patched}");
    let rows = lab.fleet_devices("kiosks").await?;
    assert!(!rows.contains_key("pi-3"), "released: {rows:#?}");
    assert!(
        lab.events("kiosks")
            .await?
            .iter()
            .any(|e| e.type_ == "FleetReleased")
    );
    assert_eq!(lab.generation("pi-3").await?, pi3, "the manifest is kept");
    let status = lab.status("pi-3").await?;
    assert!(status.summary.converged, "{status:?}");
    assert_eq!(
        std::fs::read_to_string(lab.device_file("pi-3", "motd"))?,
        "kiosk v2 pi-3\n",
        "the files are kept"
    );
    let (status, answer) = put_own_file(&mut lab, "pi-3", "motd", "mine now\n").await?;
    assert!(status.is_success(), "{status}: {answer}");
    Ok(())
}

#[tokio::test]
async fn a_stale_device_does_not_stall_the_rollout_and_gets_the_revision_when_it_returns()
-> anyhow::Result<()> {
    let mut lab = Lab::with_kiosks(4, 0).await?;
    let devices = lab.device_ids();
    let mut body = lab.kiosks_fleet(
        "v1 {{ agentId }}\n",
        strategy(json!([{"limit": 1}, {}]), "100%", false),
    );
    lab.put_fleet(&body).await?;
    lab.wait_completed("kiosks", &devices, ROLLOUT).await?;

    // The last device goes away and turns stale.
    let away = devices[3].as_str();
    lab.device(away).stop()?;
    let client = lab.client.clone();
    let manager = lab.manager();
    fleetlet_tests::agent::wait_for("the stopped device stale", CONVERGE, || async {
        let view = manager.status_json(&client, away).await?;
        (view["summary"]["state"] == "stale").then_some(())
    })
    .await?;
    let generation = lab.generation(away).await?;

    body["template"]["resources"] = json!([lab.motd("v2 {{ agentId }}\n")]);
    lab.put_fleet(&body).await?;
    let view = lab
        .wait_fleet(
            "kiosks",
            "every batch decided without the stopped device",
            ROLLOUT,
            |v| v.batches.iter().all(|b| b.finished) && count(v, State::Succeeded) == 3,
        )
        .await?;
    assert_ne!(view.phase, RolloutPhase::Paused, "{view:?}");
    let rows = lab.fleet_devices("kiosks").await?;
    assert_eq!(rows[away].state, State::Deferred, "{:?}", rows[away]);
    lab.wait_converged(&devices[..3], 2, CONVERGE).await?;
    assert_eq!(
        std::fs::read_to_string(lab.device_file(away, "motd"))?,
        format!("v1 {away}\n"),
        "nothing reached the stopped device"
    );

    // Back: it gets revision 2, once.
    lab.device(away).start()?;
    lab.wait_fleet("kiosks", "the returned device succeeded", ROLLOUT, |v| {
        count(v, State::Succeeded) == 4
    })
    .await?;
    lab.wait_converged(&[away.to_owned()], generation + 1, CONVERGE)
        .await?;
    assert_eq!(lab.generation(away).await?, generation + 1);
    assert_eq!(
        std::fs::read_to_string(lab.device_file(away, "motd"))?,
        format!("v2 {away}\n")
    );
    Ok(())
}
