//! Fleets over real PostgreSQL: the API of docs/fleets.md with the rollout controller stepped by
//! hand (`controller::tick`), devices simulated by status reports through the agents' API.

use std::collections::BTreeMap;
use std::time::Duration;

use fleetlet_manager::rollout::controller;
use fleetlet_manager::store::PgStore;
use fleetlet_manager::watch::ManifestWatch;
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::support::{ADMIN, Backend, READER, TestServer, expect_error, serve, status};

mod statistics;
mod unwritten;

const INTERVAL: Duration = Duration::from_secs(30);

/// A manager, its database and the controller's own store handle.
struct Lab {
    server: TestServer,
    store: PgStore,
    pool: PgPool,
    tokens: BTreeMap<String, String>,
    seqs: BTreeMap<String, u64>,
}

impl Lab {
    async fn new(pool: PgPool) -> Self {
        let server = serve(pool.clone()).await;
        let store =
            PgStore::from_pool(pool.clone(), "postgres://t:x@h/t", ManifestWatch::default());
        Self {
            server,
            store,
            pool,
            tokens: BTreeMap::new(),
            seqs: BTreeMap::new(),
        }
    }

    /// Registers a device with labels, and has it report (so it is not stale).
    async fn device(&mut self, id: &str, labels: Value) {
        let token = self.server.register(id, labels).await;
        self.tokens.insert(id.to_owned(), token);
        self.report(id, 0, &[]).await;
    }

    /// The device reports `generation` with its resources in `phase`.
    async fn report(&mut self, id: &str, generation: u64, phases: &[(&str, &str)]) {
        let seq = self.seqs.entry(id.to_owned()).or_default();
        *seq += 1;
        let body = status(id, *seq, generation, phases);
        let token = self.tokens[id].clone();
        self.server.report_accepted(id, &token, &body).await;
    }

    async fn converge(&mut self, id: &str) {
        let generation = self.generation(id).await;
        self.report(id, generation, &[("motd", "Ready")]).await;
    }

    async fn tick(&self) {
        controller::tick(&self.store, "test-controller", INTERVAL)
            .await
            .expect("a controller step");
    }

    async fn put_fleet(&self, fleet: &Value) -> Value {
        let name = fleet["name"].as_str().expect("a name");
        let response = self
            .server
            .send(Method::PUT, &format!("/api/v1/fleets/{name}"), ADMIN, fleet)
            .await;
        assert_eq!(response.status(), 200, "PUT fleet {name}");
        response.json().await.expect("JSON")
    }

    async fn view(&self, name: &str) -> Value {
        self.server
            .json(&format!("/api/v1/fleets/{name}"), READER)
            .await
    }

    async fn action(&self, name: &str, action: &str) -> reqwest::Response {
        self.server
            .send(
                Method::POST,
                &format!("/api/v1/fleets/{name}/rollout/{action}"),
                ADMIN,
                &json!({}),
            )
            .await
    }

    async fn generation(&self, id: &str) -> u64 {
        let generation: i64 =
            sqlx::query_scalar("SELECT desired_generation FROM agents WHERE agent_id = $1")
                .bind(id)
                .fetch_one(&self.pool)
                .await
                .expect("an agent row");
        u64::try_from(generation).expect("positive")
    }

    /// The fleet's events, oldest first.
    async fn events(&self, name: &str) -> Vec<Value> {
        let page = self
            .server
            .json(&format!("/api/v1/fleets/{name}/events?limit=1000"), READER)
            .await;
        page["items"].as_array().expect("items").clone()
    }

    async fn event_types(&self, name: &str) -> Vec<String> {
        self.events(name)
            .await
            .iter()
            .map(|e| e["type"].as_str().expect("a type").to_owned())
            .collect()
    }
}

fn fleet(name: &str, selector: Value, text: &str, batches: Value, approval: bool) -> Value {
    json!({
        "apiVersion": "fleetlet.dev/v1", "kind": "Fleet", "name": name,
        "selector": {"matchLabels": selector},
        "parameters": {"greeting": {"pattern": "^[a-z]+$", "default": "hello"}},
        "template": {"resources": [{"id": "motd", "kind": "File", "spec": {
            "path": "/etc/motd", "content": {"text": format!("{text} {{{{ greeting }}}} {{{{ agentId }}}}\n")},
            "mode": "0644"}}]},
        "rolloutStrategy": {"batches": batches, "successThreshold": "100%",
            "batchTimeoutSeconds": 600, "requireApproval": approval},
    })
}

async fn kiosks(lab: &mut Lab, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let id = format!("kiosk-{i:02}");
        lab.device(&id, json!({"role": "kiosk"})).await;
        ids.push(id);
    }
    ids
}

/// Steps the controller and converges every device written, until the rollout completes.
async fn complete(lab: &mut Lab, ids: &[String], name: &str) {
    for _ in 0..10 {
        lab.tick().await;
        for id in ids {
            lab.converge(id).await;
        }
        lab.tick().await;
        if lab.view(name).await["phase"] == "Completed" {
            return;
        }
    }
    panic!("the rollout did not complete: {}", lab.view(name).await);
}

#[sqlx::test(migrations = "../migrations")]
async fn batches_go_in_order_and_a_failed_canary_pauses_with_nothing_else_written(pool: PgPool) {
    let mut lab = Lab::new(pool).await;
    let ids = kiosks(&mut lab, 4).await;
    lab.device("other-00", json!({"role": "other"})).await;
    let batches = json!([{"limit": 1}, {"limit": "50%"}, {}]);
    let put = lab
        .put_fleet(&fleet(
            "kiosks",
            json!({"role": "kiosk"}),
            "v1",
            batches.clone(),
            false,
        ))
        .await;
    assert_eq!(put["revision"], 1);
    assert_eq!(put["created"], true);

    // Batch 1: only the canary is written.
    lab.tick().await;
    assert_eq!(generations(&lab, &ids).await, [1, 0, 0, 0]);
    let view = lab.view("kiosks").await;
    assert_eq!(view["phase"], "Progressing");
    assert_eq!(view["batches"][0]["devices"], 1);
    assert_eq!(view["batches"][1]["pending"], 2);
    // Not converged yet: nothing more.
    lab.tick().await;
    assert_eq!(generations(&lab, &ids).await, [1, 0, 0, 0]);
    lab.converge(&ids[0]).await;
    lab.tick().await;
    assert_eq!(generations(&lab, &ids).await, [1, 1, 1, 0]);
    lab.converge(&ids[1]).await;
    lab.tick().await;
    assert_eq!(
        generations(&lab, &ids).await,
        [1, 1, 1, 0],
        "batch 3 waits for all of batch 2"
    );
    lab.converge(&ids[2]).await;
    lab.tick().await;
    assert_eq!(generations(&lab, &ids).await, [1, 1, 1, 1]);
    lab.converge(&ids[3]).await;
    lab.tick().await;
    let view = lab.view("kiosks").await;
    assert_eq!(view["phase"], "Completed", "{view}");
    assert_eq!(view["goodRevision"], 1);
    assert_eq!(
        lab.generation("other-00").await,
        0,
        "an unselected device is untouched"
    );

    // The rendered manifest carries the device's own values and the fleet's provenance.
    let manifest = lab
        .server
        .json("/api/v1/agents/kiosk-02/manifest", READER)
        .await;
    assert_eq!(
        manifest["resources"][0]["spec"]["content"]["text"],
        "v1 hello kiosk-02\n"
    );
    assert_eq!(manifest["fleet"]["name"], "kiosks");

    // Revision 2: the canary fails, the rollout pauses by itself, nobody else gets it.
    let put = lab
        .put_fleet(&fleet(
            "kiosks",
            json!({"role": "kiosk"}),
            "v2",
            batches,
            false,
        ))
        .await;
    assert_eq!(put["revision"], 2);
    lab.tick().await;
    assert_eq!(generations(&lab, &ids).await, [2, 1, 1, 1]);
    lab.report(&ids[0], 2, &[("motd", "Failed")]).await;
    lab.tick().await;
    lab.tick().await;
    let view = lab.view("kiosks").await;
    assert_eq!(view["phase"], "Paused", "{view}");
    let reason = view["pauseReason"].as_str().expect("a pause reason");
    assert!(
        reason.contains("0 of 1 devices succeeded, 1 failed"),
        "{reason}"
    );
    assert_eq!(generations(&lab, &ids).await, [2, 1, 1, 1]);
    let paused = lab.event_types("kiosks").await;
    assert!(paused.contains(&"RolloutPaused".to_owned()), "{paused:?}");
    let devices = lab
        .server
        .json("/api/v1/fleets/kiosks/devices?limit=2", READER)
        .await;
    assert_eq!(devices["items"][0]["state"], "Failed");
    assert!(devices["nextCursor"].is_string(), "paged: {devices}");

    // Approve does not apply; rollback sends revision 1 to the canary only.
    expect_error(lab.action("kiosks", "approve").await, 409, "conflict").await;
    let rolled = lab.action("kiosks", "rollback").await;
    assert_eq!(rolled.status(), 200);
    lab.tick().await;
    assert_eq!(generations(&lab, &ids).await, [3, 1, 1, 1]);
    let manifest = lab
        .server
        .json("/api/v1/agents/kiosk-00/manifest", READER)
        .await;
    assert_eq!(
        manifest["resources"][0]["spec"]["content"]["text"],
        "v1 hello kiosk-00\n"
    );
    assert_eq!(lab.view("kiosks").await["phase"], "RolledBack");
    expect_error(lab.action("kiosks", "rollback").await, 409, "conflict").await;
}

async fn generations(lab: &Lab, ids: &[String]) -> Vec<u64> {
    let mut generations = Vec::new();
    for id in ids {
        generations.push(lab.generation(id).await);
    }
    generations
}

#[sqlx::test(migrations = "../migrations")]
async fn approval_holds_batches_and_actions_are_409_where_they_do_not_apply(pool: PgPool) {
    let mut lab = Lab::new(pool).await;
    let ids = kiosks(&mut lab, 3).await;
    lab.put_fleet(&fleet(
        "kiosks",
        json!({"role": "kiosk"}),
        "v1",
        json!([{"limit": 1}, {}]),
        true,
    ))
    .await;
    expect_error(lab.action("kiosks", "resume").await, 409, "conflict").await;
    expect_error(lab.action("kiosks", "approve").await, 409, "conflict").await;
    lab.tick().await;
    lab.converge(&ids[0]).await;
    lab.tick().await;
    assert_eq!(lab.view("kiosks").await["phase"], "WaitingApproval");
    lab.tick().await;
    assert_eq!(generations(&lab, &ids).await, [1, 0, 0]);
    let paused = lab.action("kiosks", "pause").await;
    assert_eq!(paused.status(), 200);
    expect_error(lab.action("kiosks", "pause").await, 409, "conflict").await;
    let resumed: Value = lab
        .action("kiosks", "resume")
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(resumed["phase"], "WaitingApproval");
    let approved: Value = lab
        .action("kiosks", "approve")
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(approved["phase"], "Progressing");
    lab.tick().await;
    assert_eq!(generations(&lab, &ids).await, [1, 1, 1]);
    let aborted = lab.action("kiosks", "abort").await;
    assert_eq!(aborted.status(), 200);
    expect_error(lab.action("kiosks", "abort").await, 409, "conflict").await;
    expect_error(lab.action("kiosks", "dance").await, 404, "not-found").await;
    // The reader may read but not act.
    let response = lab
        .server
        .send(
            Method::POST,
            "/api/v1/fleets/kiosks/rollout/pause",
            READER,
            &json!({}),
        )
        .await;
    expect_error(response, 403, "forbidden").await;
}

#[sqlx::test(migrations = "../migrations")]
async fn ownership_conflicts_and_release(pool: PgPool) {
    let mut lab = Lab::new(pool).await;
    let ids = kiosks(&mut lab, 2).await;
    lab.device("both", json!({"role": "kiosk", "site": "north"}))
        .await;
    let batches = json!([{}]);
    lab.put_fleet(&fleet(
        "kiosks",
        json!({"role": "kiosk"}),
        "k",
        batches.clone(),
        false,
    ))
    .await;
    lab.put_fleet(&fleet(
        "north",
        json!({"site": "north"}),
        "n",
        batches,
        false,
    ))
    .await;
    complete(&mut lab, &ids, "kiosks").await;

    // An owned device refuses a direct manifest, naming its fleet.
    let response = lab
        .server
        .put_manifest(&ids[0], &crate::support::manifest(&ids[0], &["x"]))
        .await;
    let body = expect_error(response, 409, "conflict").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("a message")
            .contains("kiosks")
    );
    // Selected by both: in conflict in both, untouched by both.
    assert_eq!(lab.generation("both").await, 0);
    let devices = lab
        .server
        .json("/api/v1/fleets/north/devices", READER)
        .await;
    assert_eq!(devices["items"][0]["agentId"], "both");
    assert_eq!(devices["items"][0]["state"], "Conflict");
    assert_eq!(
        devices["items"][0]["conflictingFleets"],
        json!(["kiosks", "north"])
    );
    assert!(
        lab.event_types("north")
            .await
            .contains(&"FleetConflict".to_owned())
    );
    // Relabelled out of kiosks: owned by north alone, which writes it.
    let response = lab
        .server
        .send(
            Method::PATCH,
            "/api/v1/agents/both",
            ADMIN,
            &json!({"labels": {"role": null}}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let labels: Value = response.json().await.expect("JSON");
    assert_eq!(labels["labels"], json!({"site": "north"}));
    assert_eq!(labels["fleet"], "north");
    lab.tick().await;
    assert_eq!(lab.generation("both").await, 1);
    // Relabelled out of every fleet: released, its manifest kept.
    let response = lab
        .server
        .send(
            Method::PATCH,
            &format!("/api/v1/agents/{}", ids[1]),
            ADMIN,
            &json!({"labels": {"role": "retired"}}),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert!(
        lab.event_types("kiosks")
            .await
            .contains(&"FleetReleased".to_owned())
    );
    assert_eq!(lab.generation(&ids[1]).await, 1, "nothing is wiped");
    assert_eq!(
        lab.server
            .put_manifest(&ids[1], &crate::support::manifest(&ids[1], &["x"]))
            .await
            .status(),
        200
    );
    // Bad label patches are 422 with their path.
    let response = lab
        .server
        .send(
            Method::PATCH,
            "/api/v1/agents/both",
            ADMIN,
            &json!({"labels": {"bad key": "x"}}),
        )
        .await;
    let body = expect_error(response, 422, "invalid-manifest").await;
    assert_eq!(body["error"]["violations"][0]["path"], "labels.bad key");
}

#[sqlx::test(migrations = "../migrations")]
async fn an_identical_put_returns_the_current_revision_and_bad_fleets_are_422(pool: PgPool) {
    let lab = Lab::new(pool).await;
    let body = fleet("kiosks", json!({"role": "kiosk"}), "v1", json!([{}]), false);
    assert_eq!(lab.put_fleet(&body).await["revision"], 1);
    let again = lab.put_fleet(&body).await;
    assert_eq!(again["revision"], 1);
    assert_eq!(again["created"], false);
    // A change of strategy alone is a revision that rolls nothing out.
    let mut strategy_only = body.clone();
    strategy_only["rolloutStrategy"]["batchTimeoutSeconds"] = json!(900);
    let put = lab.put_fleet(&strategy_only).await;
    assert_eq!(put["revision"], 2);
    assert_eq!(put["rollout"], false);
    let history = lab
        .server
        .json("/api/v1/fleets/kiosks/revisions", READER)
        .await;
    assert_eq!(history["items"][0]["revision"], 2);
    assert_eq!(history["items"][0]["contentRevision"], 1);
    assert_eq!(history["items"][1]["revision"], 1);

    let mut unknown = body.clone();
    unknown["template"]["resources"][0]["spec"]["path"] = json!("/etc/{{ nowhere }}");
    let response = lab
        .server
        .send(Method::PUT, "/api/v1/fleets/kiosks", ADMIN, &unknown)
        .await;
    let error = expect_error(response, 422, "invalid-manifest").await;
    assert!(
        error["error"]["violations"][0]["path"]
            .as_str()
            .expect("a path")
            .starts_with("template.resources[0].spec"),
        "{error}"
    );
    let response = lab
        .server
        .send(Method::PUT, "/api/v1/fleets/other", ADMIN, &body)
        .await;
    let error = expect_error(response, 422, "invalid-manifest").await;
    assert_eq!(error["error"]["violations"][0]["path"], "name");
    expect_error(
        lab.server.get("/api/v1/fleets/missing", READER).await,
        404,
        "not-found",
    )
    .await;
    let response = lab
        .server
        .send(Method::PUT, "/api/v1/fleets/kiosks", READER, &body)
        .await;
    expect_error(response, 403, "forbidden").await;
    // DELETE stops managing; the list no longer has it.
    let response = lab
        .server
        .request(Method::DELETE, "/api/v1/fleets/kiosks", ADMIN)
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 204);
    let list = lab.server.json("/api/v1/fleets", READER).await;
    assert_eq!(list["items"], json!([]));
}

#[tokio::test]
async fn the_memory_store_refuses_fleet_writes_with_a_409() {
    let server = serve(Backend::Memory).await;
    let body = fleet("kiosks", json!({"role": "kiosk"}), "v1", json!([{}]), false);
    let response = server
        .send(Method::PUT, "/api/v1/fleets/kiosks", ADMIN, &body)
        .await;
    expect_error(response, 409, "conflict").await;
    let list = server.json("/api/v1/fleets", READER).await;
    assert_eq!(list["items"], json!([]));
    expect_error(
        server.get("/api/v1/fleets/kiosks", READER).await,
        404,
        "not-found",
    )
    .await;
    // Labels can be patched on the memory store too.
    server.register("kiosk-00", json!({"role": "kiosk"})).await;
    let response = server
        .send(
            Method::PATCH,
            "/api/v1/agents/kiosk-00",
            ADMIN,
            &json!({"labels": {"role": null, "site": "x"}}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["labels"], json!({"site": "x"}));
}

#[sqlx::test(migrations = "../migrations")]
async fn two_controllers_never_write_a_device_twice_for_one_revision(pool: PgPool) {
    let mut lab = Lab::new(pool.clone()).await;
    let ids = kiosks(&mut lab, 6).await;
    lab.put_fleet(&fleet(
        "kiosks",
        json!({"role": "kiosk"}),
        "v1",
        json!([{"limit": 2}, {}]),
        false,
    ))
    .await;
    // A second manager process's controller: its own pool and holder name.
    let other = PgStore::from_pool(pool, "postgres://t:x@h/t", ManifestWatch::default());
    for _ in 0..6 {
        let (a, b) = tokio::join!(
            controller::tick(&lab.store, "replica-a", INTERVAL),
            controller::tick(&other, "replica-b", INTERVAL),
        );
        a.expect("replica a steps");
        b.expect("replica b steps");
        for id in &ids {
            lab.converge(id).await;
        }
    }
    let (a, b) = tokio::join!(
        controller::tick(&lab.store, "replica-a", INTERVAL),
        controller::tick(&other, "replica-b", INTERVAL),
    );
    a.expect("replica a steps");
    b.expect("replica b steps");
    assert_eq!(lab.view("kiosks").await["phase"], "Completed");
    assert_eq!(generations(&lab, &ids).await, [1; 6]);
    // Even when the lease moves (replica a is gone), nothing is written again.
    sqlx::query("UPDATE fleet_leases SET expires_at = now() - interval '1 second'")
        .execute(&lab.pool)
        .await
        .expect("expires the leases");
    controller::tick(&other, "replica-b", INTERVAL)
        .await
        .expect("replica b takes over");
    assert_eq!(generations(&lab, &ids).await, [1; 6]);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_stale_device_is_deferred_and_gets_the_revision_when_it_returns(pool: PgPool) {
    let mut lab = Lab::new(pool).await;
    let ids = kiosks(&mut lab, 3).await;
    // kiosk-00 last reported two minutes ago: stale for a 30 s report interval.
    sqlx::query(
        "UPDATE agents SET last_seen_at = now() - interval '2 minutes' WHERE agent_id = $1",
    )
    .bind(&ids[0])
    .execute(&lab.pool)
    .await
    .expect("ages the device");
    lab.put_fleet(&fleet(
        "kiosks",
        json!({"role": "kiosk"}),
        "v1",
        json!([{"limit": 1}, {}]),
        false,
    ))
    .await;
    lab.tick().await;
    assert_eq!(
        generations(&lab, &ids).await,
        [0, 1, 0],
        "the canary is the first device in contact"
    );
    lab.converge(&ids[1]).await;
    lab.tick().await;
    lab.converge(&ids[2]).await;
    lab.tick().await;
    let view = lab.view("kiosks").await;
    assert_eq!(
        view["phase"], "Completed",
        "the stale device stalls nothing: {view}"
    );
    assert_eq!(view["devices"]["Deferred"], 1);
    assert_eq!(lab.generation(&ids[0]).await, 0);
    // It reports again: it gets the revision at once.
    lab.report(&ids[0], 0, &[]).await;
    lab.tick().await;
    assert_eq!(lab.generation(&ids[0]).await, 1);
    // A device selected later gets the fleet's good revision at once.
    lab.device("kiosk-09", json!({"role": "kiosk"})).await;
    lab.tick().await;
    assert_eq!(lab.generation("kiosk-09").await, 1);
}
