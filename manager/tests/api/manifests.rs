//! Acceptance 1: generations, If-Match, history; and in-process long-polls.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

use super::support::{ADMIN, Backend, READER, expect_error, manifest, serve};

on_both_stores!(generation_starts_at_one_and_rises_only_when_resources_change);
async fn generation_starts_at_one_and_rises_only_when_resources_change(store: Backend) {
    let server = serve(store).await;
    server.register("pi-1", serde_json::json!({})).await;

    assert_eq!(server.apply("pi-1", &manifest("pi-1", &["a"])).await, 1);
    assert_eq!(
        server.apply("pi-1", &manifest("pi-1", &["a"])).await,
        1,
        "identical re-PUT keeps the generation"
    );
    assert_eq!(server.apply("pi-1", &manifest("pi-1", &["b"])).await, 2);
    assert_eq!(
        server.apply("pi-1", &manifest("pi-1", &["b", "c"])).await,
        3
    );
    assert_eq!(
        server.apply("pi-1", &manifest("pi-1", &["b", "c"])).await,
        3
    );

    let response = server.get("/api/v1/agents/pi-1/manifest", READER).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["etag"], "\"3\"");
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["generation"], 3);
    assert_eq!(body["resources"].as_array().map(Vec::len), Some(2));
}

on_both_stores!(if_match_with_a_stale_generation_is_a_conflict);
async fn if_match_with_a_stale_generation_is_a_conflict(store: Backend) {
    let server = serve(store).await;
    server.register("pi-1", serde_json::json!({})).await;
    server.apply("pi-1", &manifest("pi-1", &["a"])).await;
    server.apply("pi-1", &manifest("pi-1", &["b"])).await;

    let stale = server
        .request(Method::PUT, "/api/v1/agents/pi-1/manifest", ADMIN)
        .header("If-Match", "\"1\"")
        .json(&manifest("pi-1", &["c"]))
        .send()
        .await
        .expect("answered");
    expect_error(stale, 409, "conflict").await;

    let current = server
        .request(Method::PUT, "/api/v1/agents/pi-1/manifest", ADMIN)
        .header("If-Match", "\"2\"")
        .json(&manifest("pi-1", &["c"]))
        .send()
        .await
        .expect("answered");
    assert_eq!(current.status(), 200);
    let body: Value = current.json().await.expect("JSON");
    assert_eq!(body["generation"], 3);
}

on_both_stores!(history_lists_every_generation_newest_first_in_pages);
async fn history_lists_every_generation_newest_first_in_pages(store: Backend) {
    let server = serve(store).await;
    server.register("pi-1", serde_json::json!({})).await;
    for text in ["a", "b", "c", "d", "e"] {
        server.apply("pi-1", &manifest("pi-1", &[text])).await;
    }
    let mut seen = Vec::new();
    let mut path = "/api/v1/agents/pi-1/manifests?limit=2".to_owned();
    loop {
        let page = server.json(&path, READER).await;
        for item in page["items"].as_array().expect("items") {
            seen.push(item["generation"].as_u64().expect("generation"));
            assert!(item["contentHash"].is_string() && item["createdAt"].is_string());
            assert_eq!(item["createdBy"], "admin");
        }
        match page["nextCursor"].as_str() {
            Some(cursor) => path = format!("/api/v1/agents/pi-1/manifests?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, vec![5, 4, 3, 2, 1]);
}

on_both_stores!(long_poll_answers_when_a_new_generation_is_written);
async fn long_poll_answers_when_a_new_generation_is_written(store: Backend) {
    let server = serve(store).await;
    let token = server.register("pi-1", serde_json::json!({})).await;
    server.apply("pi-1", &manifest("pi-1", &["a"])).await;

    let poll = server
        .request(
            Method::GET,
            "/api/v1/agents/pi-1/manifest?afterGeneration=1&waitSeconds=30",
            &token,
        )
        .send();
    let poll = tokio::spawn(poll);
    // Give the poll time to start waiting, then write; the answer must follow the write quickly.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let written = Instant::now();
    server.apply("pi-1", &manifest("pi-1", &["b"])).await;
    let response = poll.await.expect("joins").expect("answered");
    assert!(
        written.elapsed() < Duration::from_secs(1),
        "took {:?}",
        written.elapsed()
    );
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["generation"], 2);
}

on_both_stores!(long_poll_answers_not_modified_when_the_wait_runs_out);
async fn long_poll_answers_not_modified_when_the_wait_runs_out(store: Backend) {
    let server = serve(store).await;
    let token = server.register("pi-1", serde_json::json!({})).await;
    server.apply("pi-1", &manifest("pi-1", &["a"])).await;
    let started = Instant::now();
    let response = server
        .get(
            "/api/v1/agents/pi-1/manifest?afterGeneration=1&waitSeconds=1",
            &token,
        )
        .await;
    assert_eq!(response.status(), 304);
    assert_eq!(response.headers()["etag"], "\"1\"");
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(started.elapsed() < Duration::from_secs(3));

    // A poll for an older generation answers at once.
    let response = server
        .get(
            "/api/v1/agents/pi-1/manifest?afterGeneration=0&waitSeconds=30",
            &token,
        )
        .await;
    assert_eq!(response.status(), 200);
}

on_both_stores!(an_agent_without_a_manifest_gets_404_and_its_long_poll_waits);
async fn an_agent_without_a_manifest_gets_404_and_its_long_poll_waits(store: Backend) {
    let server = serve(store).await;
    let token = server.register("pi-1", serde_json::json!({})).await;
    expect_error(
        server.get("/api/v1/agents/pi-1/manifest", &token).await,
        404,
        "not-found",
    )
    .await;
    let response = server
        .get(
            "/api/v1/agents/pi-1/manifest?afterGeneration=0&waitSeconds=1",
            &token,
        )
        .await;
    assert_eq!(response.status(), 304);
}

on_both_stores!(a_signature_is_stored_and_served_verbatim_and_a_new_one_is_a_new_generation);
async fn a_signature_is_stored_and_served_verbatim_and_a_new_one_is_a_new_generation(
    store: Backend,
) {
    use fleetlet_manifests::AgentManifest;
    use fleetlet_manifests::signature::{SecretKey, verify};

    let server = serve(store).await;
    server.register("pi-1", serde_json::json!({})).await;
    let (key, other) = (SecretKey::from_seed([1; 32]), SecretKey::from_seed([2; 32]));
    let unsigned = AgentManifest::from_value(manifest("pi-1", &["a"])).expect("valid");
    let signed_by = |key: &SecretKey| {
        let mut signed = unsigned.clone();
        signed.signature = Some(key.sign(&signed));
        serde_json::to_value(&signed).expect("serializes")
    };

    assert_eq!(server.apply("pi-1", &signed_by(&key)).await, 1);
    assert_eq!(server.apply("pi-1", &signed_by(&key)).await, 1);
    let served: AgentManifest = server
        .get("/api/v1/agents/pi-1/manifest", READER)
        .await
        .json()
        .await
        .expect("a manifest");
    assert_eq!(
        serde_json::to_value(&served.signature).expect("serializes"),
        signed_by(&key)["signature"]
    );
    assert_eq!(verify(&served, &[key.public()]), Ok(()));

    // The same resources signed by another key, or unsigned, are new generations: the agent
    // must receive exactly what the operator last stored.
    assert_eq!(server.apply("pi-1", &signed_by(&other)).await, 2);
    assert_eq!(server.apply("pi-1", &manifest("pi-1", &["a"])).await, 3);

    let mut bad = manifest("pi-1", &["a"]);
    bad["signature"] = serde_json::json!({"keyId": "nothex", "ed25519": "short"});
    let body = expect_error(
        server.put_manifest("pi-1", &bad).await,
        422,
        "invalid-manifest",
    )
    .await;
    let text = body.to_string();
    assert!(text.contains("signature.keyId"), "{text}");
    assert!(text.contains("signature.ed25519"), "{text}");
}

on_both_stores!(a_rollout_policy_is_stored_and_served_and_a_change_to_it_alone_is_a_new_generation);
async fn a_rollout_policy_is_stored_and_served_and_a_change_to_it_alone_is_a_new_generation(
    store: Backend,
) {
    let server = serve(store).await;
    server.register("pi-1", serde_json::json!({})).await;
    let with_rollout = |rollout: Value| {
        let mut body = manifest("pi-1", &["a"]);
        body["rollout"] = rollout;
        body
    };
    let rollback = serde_json::json!({"progressDeadlineSeconds": 60, "onFailure": "Rollback"});
    let hold = serde_json::json!({"progressDeadlineSeconds": 60, "onFailure": "Hold"});

    assert_eq!(server.apply("pi-1", &manifest("pi-1", &["a"])).await, 1);
    assert_eq!(
        server.apply("pi-1", &with_rollout(rollback.clone())).await,
        2
    );
    assert_eq!(
        server.apply("pi-1", &with_rollout(rollback.clone())).await,
        2,
        "an identical re-PUT keeps the generation"
    );
    // onFailure defaults to Rollback: the same policy spelled shorter is the same manifest.
    assert_eq!(
        server
            .apply(
                "pi-1",
                &with_rollout(serde_json::json!({"progressDeadlineSeconds": 60}))
            )
            .await,
        2
    );
    let served = server.json("/api/v1/agents/pi-1/manifest", READER).await;
    assert_eq!(served["rollout"], rollback);

    assert_eq!(server.apply("pi-1", &with_rollout(hold.clone())).await, 3);
    let shorter = serde_json::json!({"progressDeadlineSeconds": 5, "onFailure": "Hold"});
    assert_eq!(
        server.apply("pi-1", &with_rollout(shorter.clone())).await,
        4
    );
    assert_eq!(server.apply("pi-1", &manifest("pi-1", &["a"])).await, 5);
    let served = server.json("/api/v1/agents/pi-1/manifest", READER).await;
    assert!(served.get("rollout").is_none(), "{served}");

    let history = server
        .json("/api/v1/agents/pi-1/manifests?limit=10", READER)
        .await;
    let rollouts: Vec<Value> = history["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| item.get("rollout").cloned().unwrap_or(Value::Null))
        .collect();
    assert_eq!(
        rollouts,
        [Value::Null, shorter, hold, rollback, Value::Null],
        "{history}"
    );
}

on_both_stores!(a_signed_manifest_with_a_rollout_is_served_so_that_its_signature_still_verifies);
async fn a_signed_manifest_with_a_rollout_is_served_so_that_its_signature_still_verifies(
    store: Backend,
) {
    use fleetlet_manifests::AgentManifest;
    use fleetlet_manifests::signature::{SecretKey, verify};

    let server = serve(store).await;
    server.register("pi-1", serde_json::json!({})).await;
    let key = SecretKey::from_seed([3; 32]);
    let mut body = manifest("pi-1", &["a"]);
    body["rollout"] = serde_json::json!({"progressDeadlineSeconds": 30});
    let mut signed = AgentManifest::from_value(body).expect("valid");
    signed.signature = Some(key.sign(&signed));
    let signed = serde_json::to_value(&signed).expect("serializes");

    assert_eq!(server.apply("pi-1", &signed).await, 1);
    let served: AgentManifest = server
        .get("/api/v1/agents/pi-1/manifest", READER)
        .await
        .json()
        .await
        .expect("a manifest");
    assert!(served.rollout.is_some());
    assert_eq!(verify(&served, &[key.public()]), Ok(()));
}
