//! Issue 8 on the API: enrollment with the bootstrap token, tokens that stop working at once,
//! the long-poll limit, the OpenAPI document, and out-of-range numbers that must not be 500s.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use super::support::{
    ADMIN, BOOTSTRAP, Backend, TestServer, expect_error, manifest, serve, serve_without_bootstrap,
    status,
};

async fn enroll(server: &TestServer, token: &str, agent_id: &str) -> reqwest::Response {
    server
        .send(
            Method::POST,
            "/api/v1/enroll",
            token,
            &json!({"agentId": agent_id, "labels": {"site": "lab"}}),
        )
        .await
}

on_both_stores!(a_device_enrolls_once_with_the_bootstrap_token_and_its_token_works);
async fn a_device_enrolls_once_with_the_bootstrap_token_and_its_token_works(store: Backend) {
    // Its rows are read where the store keeps them, in PostgreSQL.
    let pool = store.pool();
    let server = serve(store).await;
    let response = enroll(&server, BOOTSTRAP, "pi-new").await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["agentId"], "pi-new");
    let token = body["token"].as_str().expect("token").to_owned();
    assert!(token.starts_with("flt_") && token.len() == 68);

    // The token is the agent's own: it may report, and the fleet sees the agent's labels.
    server
        .report_accepted("pi-new", &token, &status("pi-new", 1, 0, &[]))
        .await;
    let fleet = server.json("/api/v1/agents?label=site=lab", ADMIN).await;
    assert_eq!(fleet["items"][0]["agentId"], "pi-new");

    // Both stores record how the agent came to be, with the same payload.
    let events = server
        .json("/api/v1/agents/pi-new/events?limit=10", ADMIN)
        .await;
    assert_eq!(events["items"][0]["type"], "AgentRegistered");
    assert_eq!(events["items"][0]["payload"]["via"], "enroll");
    assert_eq!(events["items"][0]["payload"]["labels"]["site"], "lab");

    // Once: a second enrollment of the id is a conflict, and the first token keeps working.
    expect_error(enroll(&server, BOOTSTRAP, "pi-new").await, 409, "conflict").await;
    server
        .report_accepted("pi-new", &token, &status("pi-new", 2, 0, &[]))
        .await;

    if let Some(pool) = &pool {
        // Only the hash is stored.
        let stored: String =
            sqlx::query_scalar("SELECT token_hash FROM agents WHERE agent_id = 'pi-new'")
                .fetch_one(pool)
                .await
                .expect("row");
        assert!(!stored.contains(&token[4..]));
    }
}

on_both_stores!(enrollment_cannot_take_over_an_admin_registered_or_decommissioned_id);
async fn enrollment_cannot_take_over_an_admin_registered_or_decommissioned_id(store: Backend) {
    let server = serve(store).await;
    server.register("pi-1", json!({})).await;
    expect_error(enroll(&server, BOOTSTRAP, "pi-1").await, 409, "conflict").await;
    let response = server
        .request(Method::DELETE, "/api/v1/agents/pi-1", ADMIN)
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 204);
    // Bringing a decommissioned device back is the admin's call, not the bootstrap token's.
    expect_error(enroll(&server, BOOTSTRAP, "pi-1").await, 409, "conflict").await;
    server.register("pi-1", json!({})).await;
}

on_both_stores!(enrollment_needs_the_bootstrap_token_itself);
async fn enrollment_needs_the_bootstrap_token_itself(store: Backend) {
    let server = serve(store).await;
    for token in ["wrong-bootstrap-token", ADMIN] {
        let response = enroll(&server, token, "pi-x").await;
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        expect_error(response, 401, "unauthorized").await;
    }
    let response = server
        .client
        .post(format!("{}/api/v1/enroll", server.url))
        .json(&json!({"agentId": "pi-x"}))
        .send()
        .await
        .expect("answered");
    expect_error(response, 401, "unauthorized").await;
    // A bad body with the right token is the usual 422; the labels rules of registration hold.
    let response = server
        .send(
            Method::POST,
            "/api/v1/enroll",
            BOOTSTRAP,
            &json!({"agentId": "pi-x", "labels": {"a,b": "c"}}),
        )
        .await;
    expect_error(response, 422, "invalid-manifest").await;
    // Nothing was registered by any of that.
    expect_error(
        server.get("/api/v1/agents/pi-x/status", ADMIN).await,
        404,
        "not-found",
    )
    .await;
}

on_both_stores!(without_a_bootstrap_token_enrollment_is_not_found);
async fn without_a_bootstrap_token_enrollment_is_not_found(store: Backend) {
    let server = serve_without_bootstrap(store).await;
    expect_error(enroll(&server, BOOTSTRAP, "pi-x").await, 404, "not-found").await;
    expect_error(enroll(&server, "", "pi-x").await, 404, "not-found").await;
}

on_both_stores!(rotated_and_revoked_tokens_are_refused_at_once_even_mid_long_poll);
async fn rotated_and_revoked_tokens_are_refused_at_once_even_mid_long_poll(store: Backend) {
    let server = serve(store).await;
    let enrolled: Value = enroll(&server, BOOTSTRAP, "pi-1")
        .await
        .json()
        .await
        .expect("JSON");
    let old = enrolled["token"].as_str().expect("token").to_owned();
    server.apply("pi-1", &manifest("pi-1", &["a"])).await;
    assert_eq!(
        server
            .get("/api/v1/agents/pi-1/manifest", &old)
            .await
            .status(),
        200
    );
    let rotated: Value = server
        .request(Method::POST, "/api/v1/agents/pi-1/token", ADMIN)
        .send()
        .await
        .expect("answered")
        .json()
        .await
        .expect("JSON");
    let new = rotated["token"].as_str().expect("token").to_owned();
    // The very next request with the old token is refused; the new one works.
    expect_error(
        server.get("/api/v1/agents/pi-1/manifest", &old).await,
        401,
        "unauthorized",
    )
    .await;
    assert_eq!(
        server
            .get("/api/v1/agents/pi-1/manifest", &new)
            .await
            .status(),
        200
    );
    let response = server
        .request(Method::DELETE, "/api/v1/agents/pi-1", ADMIN)
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 204);
    for token in [&old, &new] {
        expect_error(
            server.get("/api/v1/agents/pi-1/manifest", token).await,
            401,
            "unauthorized",
        )
        .await;
    }
}

on_both_stores!(a_token_may_hold_only_a_few_long_polls_on_one_agent);
async fn a_token_may_hold_only_a_few_long_polls_on_one_agent(store: Backend) {
    let server = serve(store).await;
    let token = server.register("pi-1", json!({})).await;
    server.apply("pi-1", &manifest("pi-1", &["a"])).await;
    let path = "/api/v1/agents/pi-1/manifest?afterGeneration=1&waitSeconds=3";
    let limit = fleetlet_manager::http::limits::MAX_LONG_POLLS_PER_CALLER;
    // One more poll than allowed, all at once: exactly one is refused, at once.
    let polls: Vec<_> = (0..=limit)
        .map(|_| tokio::spawn(server.request(Method::GET, path, &token).send()))
        .collect();
    let mut refused = Vec::new();
    let mut waited = 0;
    for poll in polls {
        let response = poll.await.expect("joined").expect("answered");
        match response.status().as_u16() {
            429 => refused.push(response),
            304 => waited += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((refused.len(), waited), (1, limit));
    let refused = refused.pop().expect("one refusal");
    expect_error(refused, 429, "too-many-requests").await;
    // A plain read and another caller are not affected.
    assert_eq!(
        server
            .get("/api/v1/agents/pi-1/manifest", &token)
            .await
            .status(),
        200
    );
    assert_eq!(server.get(path, ADMIN).await.status(), 304);
    // The slots come back when the polls end.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    loop {
        let response = server
            .get(
                "/api/v1/agents/pi-1/manifest?afterGeneration=0&waitSeconds=1",
                &token,
            )
            .await;
        if response.status() == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the long-poll slots never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

on_both_stores!(numbers_beyond_the_database_range_are_answered_not_failed);
async fn numbers_beyond_the_database_range_are_answered_not_failed(store: Backend) {
    let server = serve(store).await;
    server.register("pi-1", json!({})).await;
    let page = server
        .json(
            &format!("/api/v1/agents/pi-1/events?afterSeq={}", u64::MAX),
            ADMIN,
        )
        .await;
    assert_eq!(page["items"], json!([]));
    // A forged history cursor past the bigint range pages from the newest, not a 500.
    let cursor = base64_url(&format!("g:{}", u64::MAX));
    let response = server
        .get(
            &format!("/api/v1/agents/pi-1/manifests?cursor={cursor}"),
            ADMIN,
        )
        .await;
    assert_eq!(response.status(), 200);
}

fn base64_url(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

on_both_stores!(the_openapi_document_is_served_to_anyone);
async fn the_openapi_document_is_served_to_anyone(store: Backend) {
    let server = serve(store).await;
    let response = server
        .client
        .get(format!("{}/api/v1/openapi.json", server.url))
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 200);
    let document: Value = response.json().await.expect("JSON");
    assert_eq!(document["openapi"], "3.1.0");
    assert!(document["paths"]["/api/v1/enroll"]["post"].is_object());
    assert_eq!(
        document["paths"]["/api/v1/agents/{agentId}/manifest"]["get"]["parameters"][1]["schema"]["maximum"],
        fleetlet_manager::http::MAX_WAIT_SECONDS
    );
}
