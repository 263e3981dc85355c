//! A batch that wrote the revision to no device (docs/fleets.md, "A canary that never ran is not a
//! canary") over real PostgreSQL: devices whose parameters do not render, and a canary nobody
//! could reach, pause the rollout instead of completing it; resume starts the batch again.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use super::{Lab, complete, fleet, generations};
use crate::support::{ADMIN, READER};

/// Steps the controller until the rollout stops progressing by itself, and returns its view.
async fn until_stopped(lab: &Lab, name: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        lab.tick().await;
        let view = lab.view(name).await;
        if view["phase"] != "Progressing" {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "the rollout still progresses after {within:?}: {view}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The payloads of the fleet's events of one type, oldest first.
async fn payloads(lab: &Lab, name: &str, type_: &str) -> Vec<Value> {
    lab.events(name)
        .await
        .into_iter()
        .filter(|e| e["type"] == type_)
        .map(|e| e["payload"].clone())
        .collect()
}

/// The fleet's devices' rollout states, in agent id order.
async fn states(lab: &Lab, name: &str) -> Vec<String> {
    let page = lab
        .server
        .json(&format!("/api/v1/fleets/{name}/devices?limit=100"), READER)
        .await;
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|d| d["state"].as_str().expect("a state").to_owned())
        .collect()
}

async fn resume(lab: &Lab, name: &str) {
    let response = lab.action(name, "resume").await;
    assert_eq!(response.status(), 200, "resume {name}");
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["phase"], "Progressing", "{body}");
}

#[sqlx::test(migrations = "../migrations")]
async fn devices_whose_parameters_do_not_render_pause_the_rollout_until_relabelled(
    pool: sqlx::PgPool,
) {
    let mut lab = Lab::new(pool).await;
    // The fleet's `greeting` must match ^[a-z]+$: these labels break it on every device.
    let ids: Vec<String> = (0..3).map(|i| format!("kiosk-{i:02}")).collect();
    for id in &ids {
        lab.device(id, json!({"role": "kiosk", "greeting": "Hello1"}))
            .await;
    }
    let body = fleet(
        "kiosks",
        json!({"role": "kiosk"}),
        "v1",
        json!([{"limit": 1}, {}]),
        false,
    );
    lab.put_fleet(&body).await;

    // The canary takes each device in turn as the one before fails to render; then, with
    // nobody left to take and nobody waiting, it pauses instead of passing empty.
    let view = until_stopped(&lab, "kiosks", Duration::from_secs(20)).await;
    assert_eq!(view["phase"], "Paused", "nobody rendered: {view}");
    assert_eq!(view["goodRevision"], Value::Null, "{view}");
    let reason = view["pauseReason"].as_str().expect("a pause reason");
    assert!(
        reason.contains("3 devices failed to render their parameters"),
        "{reason}"
    );
    let paused = payloads(&lab, "kiosks", "RolloutPaused").await;
    assert_eq!(paused.len(), 1, "{paused:?}");
    for (field, value) in [
        ("reason", json!("parameters")),
        ("batch", json!(0)),
        ("devices", json!(3)),
        ("parameterErrors", json!(3)),
        ("stale", json!(0)),
        ("succeeded", json!(0)),
    ] {
        assert_eq!(paused[0][field], value, "{field} in {}", paused[0]);
    }
    assert_eq!(generations(&lab, &ids).await, [0, 0, 0]);
    assert_eq!(states(&lab, "kiosks").await, ["ParameterInvalid"; 3]);

    // Resumed without a fix: the batch starts again, tries all three again, pauses again.
    resume(&lab, "kiosks").await;
    let view = until_stopped(&lab, "kiosks", Duration::from_secs(20)).await;
    assert_eq!(view["phase"], "Paused", "{view}");
    let paused = payloads(&lab, "kiosks", "RolloutPaused").await;
    assert_eq!(paused.len(), 2, "{paused:?}");
    assert_eq!(paused[1]["reason"], "parameters", "{}", paused[1]);
    assert_eq!(paused[1]["parameterErrors"], 3, "{}", paused[1]);
    assert_eq!(generations(&lab, &ids).await, [0, 0, 0]);

    // Relabelled to a value the pattern allows, then resumed: the batches go out and the
    // rollout completes once the devices converge.
    for id in &ids {
        let response = lab
            .server
            .send(
                Method::PATCH,
                &format!("/api/v1/agents/{id}"),
                ADMIN,
                &json!({"labels": {"greeting": "hola"}}),
            )
            .await;
        assert_eq!(response.status(), 200, "relabel {id}");
    }
    resume(&lab, "kiosks").await;
    complete(&mut lab, &ids, "kiosks").await;
    let view = lab.view("kiosks").await;
    assert_eq!(view["goodRevision"], 1, "{view}");
    assert_eq!(generations(&lab, &ids).await, [1, 1, 1]);
    assert_eq!(states(&lab, "kiosks").await, ["Succeeded"; 3]);
    let manifest = lab
        .server
        .json("/api/v1/agents/kiosk-01/manifest", READER)
        .await;
    assert_eq!(
        manifest["resources"][0]["spec"]["content"]["text"],
        "v1 hola kiosk-01\n"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn a_canary_nobody_could_reach_pauses_at_its_timeout_instead_of_completing(
    pool: sqlx::PgPool,
) {
    let mut lab = Lab::new(pool).await;
    // Registered, never reported: both stale from the start.
    let ids: Vec<String> = (0..2).map(|i| format!("kiosk-{i:02}")).collect();
    for id in &ids {
        let token = lab.server.register(id, json!({"role": "kiosk"})).await;
        lab.tokens.insert(id.clone(), token);
    }
    let mut body = fleet(
        "kiosks",
        json!({"role": "kiosk"}),
        "v1",
        json!([{"limit": 1}, {}]),
        false,
    );
    body["rolloutStrategy"]["batchTimeoutSeconds"] = json!(1);
    lab.put_fleet(&body).await;

    let view = until_stopped(&lab, "kiosks", Duration::from_secs(20)).await;
    assert_eq!(
        view["phase"], "Paused",
        "a canary nobody reached is not a canary: {view}"
    );
    assert_eq!(view["goodRevision"], Value::Null, "{view}");
    let reason = view["pauseReason"].as_str().expect("a pause reason");
    assert!(
        reason.contains("no device of the batch was reachable within 1 s"),
        "{reason}"
    );
    let paused = payloads(&lab, "kiosks", "RolloutPaused").await;
    assert_eq!(paused.len(), 1, "{paused:?}");
    for (field, value) in [
        ("reason", json!("unreachable")),
        ("batch", json!(0)),
        ("stale", json!(2)),
        ("parameterErrors", json!(0)),
        ("succeeded", json!(0)),
    ] {
        assert_eq!(paused[0][field], value, "{field} in {}", paused[0]);
    }
    assert_eq!(generations(&lab, &ids).await, [0, 0], "nothing was written");
    assert_eq!(states(&lab, "kiosks").await, ["Deferred"; 2]);
    assert!(
        !lab.event_types("kiosks")
            .await
            .contains(&"RolloutCompleted".to_owned())
    );

    // kiosk-00 comes back; the operator gives batches time to converge and resumes: the same
    // batch starts again, takes it, and once it converged the stale kiosk-01 stalls nothing.
    lab.report(&ids[0], 0, &[]).await;
    body["rolloutStrategy"]["batchTimeoutSeconds"] = json!(600);
    assert_eq!(lab.put_fleet(&body).await["rollout"], false);
    resume(&lab, "kiosks").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while lab.generation(&ids[0]).await == 0 {
        assert!(Instant::now() < deadline, "{}", lab.view("kiosks").await);
        lab.tick().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(lab.view("kiosks").await["batches"][0]["devices"], 1);
    let started = payloads(&lab, "kiosks", "RolloutBatchStarted").await;
    let batches: Vec<&Value> = started.iter().map(|p| &p["batch"]).collect();
    assert_eq!(batches, [0, 0], "resume started batch 0 again: {started:?}");
    lab.converge(&ids[0]).await;
    let view = until_stopped(&lab, "kiosks", Duration::from_secs(20)).await;
    assert_eq!(view["phase"], "Completed", "{view}");
    assert_eq!(
        generations(&lab, &ids).await,
        [1, 0],
        "kiosk-01 is still away"
    );
}
