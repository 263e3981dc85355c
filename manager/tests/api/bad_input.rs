//! Acceptance 7: every kind of bad input gets its JSON error, one test each, and never a 500.

use reqwest::Method;
use serde_json::{Value, json};

use super::support::{ADMIN, Backend, READER, expect_error, manifest, serve, status};

on_both_stores!(malformed_json_is_a_bad_request);
async fn malformed_json_is_a_bad_request(store: Backend) {
    let server = serve(store).await;
    server.register("pi-1", json!({})).await;
    let response = server
        .request(Method::PUT, "/api/v1/agents/pi-1/manifest", ADMIN)
        .header("content-type", "application/json")
        .body("{\"apiVersion\": ")
        .send()
        .await
        .expect("answered");
    expect_error(response, 400, "bad-request").await;
}

on_both_stores!(a_body_that_is_not_json_is_unsupported_media_type);
async fn a_body_that_is_not_json_is_unsupported_media_type(store: Backend) {
    let server = serve(store).await;
    server.register("pi-1", json!({})).await;
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut request = server
            .request(Method::PUT, "/api/v1/agents/pi-1/manifest", ADMIN)
            .body(manifest("pi-1", &["a"]).to_string());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.expect("answered");
        expect_error(response, 415, "unsupported-media-type").await;
    }
}

on_both_stores!(a_body_over_the_limit_is_payload_too_large);
async fn a_body_over_the_limit_is_payload_too_large(store: Backend) {
    let server = serve(store).await;
    server.register("pi-1", json!({})).await;
    let huge = "x".repeat(fleetlet_manager::http::BODY_LIMIT_BYTES + 1);
    let response = server
        .request(Method::PUT, "/api/v1/agents/pi-1/manifest", ADMIN)
        .header("content-type", "application/json")
        .body(format!("{{\"pad\": \"{huge}\"}}"))
        .send()
        .await
        .expect("answered");
    expect_error(response, 413, "payload-too-large").await;
}

on_both_stores!(an_invalid_manifest_lists_every_violation_path);
async fn an_invalid_manifest_lists_every_violation_path(store: Backend) {
    let server = serve(store).await;
    server.register("pi-1", json!({})).await;
    let bad = json!({
        "apiVersion": "fleetlet.dev/v1", "kind": "AgentManifest", "agentId": "pi-1",
        "resources": [
            {"id": "ok", "kind": "File", "spec": {"path": "/etc/ok", "content": {"text": "x"}, "mode": "0644"}},
            {"id": "rel", "kind": "File", "spec": {"path": "etc/motd", "content": {"text": "x"}, "mode": "0644"}},
            {"id": "Bad Id", "kind": "File", "spec": {"path": "/etc/x", "content": {"text": "x"}, "mode": "0644"}},
            {"id": "unit", "kind": "SystemdUnit", "spec": {"name": "kiosk", "unit": "[Unit]\n", "enabled": true, "state": "Started"}},
        ],
        "typo": true,
    });
    let body = expect_error(
        server.put_manifest("pi-1", &bad).await,
        422,
        "invalid-manifest",
    )
    .await;
    let paths: Vec<&str> = body["error"]["violations"]
        .as_array()
        .expect("violations")
        .iter()
        .map(|v| v["path"].as_str().expect("path"))
        .collect();
    for expected in [
        "resources[1].spec.path",
        "resources[2].id",
        "resources[3].spec.name",
        "typo",
    ] {
        assert!(
            paths.contains(&expected),
            "{expected} missing from {paths:?}"
        );
    }
    // Nothing was stored.
    expect_error(
        server.get("/api/v1/agents/pi-1/manifest", ADMIN).await,
        404,
        "not-found",
    )
    .await;
}

on_both_stores!(a_manifest_for_another_agent_than_the_path_is_invalid);
async fn a_manifest_for_another_agent_than_the_path_is_invalid(store: Backend) {
    let server = serve(store).await;
    server.register("pi-1", json!({})).await;
    let body = expect_error(
        server.put_manifest("pi-1", &manifest("pi-2", &["a"])).await,
        422,
        "invalid-manifest",
    )
    .await;
    assert_eq!(body["error"]["violations"][0]["path"], "agentId");
}

on_both_stores!(a_nul_character_in_a_body_is_invalid_not_a_server_error);
/// PostgreSQL cannot store a NUL character in `jsonb`: a manifest or status holding one is a 422
/// naming where it is, and nothing is stored.
async fn a_nul_character_in_a_body_is_invalid_not_a_server_error(store: Backend) {
    let server = serve(store).await;
    let token = server.register("pi-1", json!({})).await;
    let mut bad = manifest("pi-1", &["a"]);
    bad["resources"][0]["spec"]["content"] = json!({"text": "before\u{0}after"});
    let body = expect_error(
        server.put_manifest("pi-1", &bad).await,
        422,
        "invalid-manifest",
    )
    .await;
    assert_eq!(
        body["error"]["violations"][0]["path"],
        "resources[0].spec.content.text"
    );
    expect_error(
        server.get("/api/v1/agents/pi-1/manifest", ADMIN).await,
        404,
        "not-found",
    )
    .await;

    let mut report = status("pi-1", 1, 0, &[]);
    report["agent"]["hostname"] = json!("pi\u{0}1");
    let body = expect_error(
        server.report("pi-1", &token, &report).await,
        422,
        "invalid-manifest",
    )
    .await;
    assert_eq!(body["error"]["violations"][0]["path"], "agent.hostname");
}

on_both_stores!(an_invalid_status_lists_its_violations);
async fn an_invalid_status_lists_its_violations(store: Backend) {
    let server = serve(store).await;
    let token = server.register("pi-1", json!({})).await;
    let mut report = status("pi-1", 1, 1, &[]);
    report["observedGeneration"] = json!(7);
    report["kind"] = json!("Nope");
    let body = expect_error(
        server.report("pi-1", &token, &report).await,
        422,
        "invalid-manifest",
    )
    .await;
    let paths: Vec<&str> = body["error"]["violations"]
        .as_array()
        .expect("violations")
        .iter()
        .map(|v| v["path"].as_str().expect("path"))
        .collect();
    assert!(
        paths.contains(&"kind") && paths.contains(&"observedGeneration"),
        "{paths:?}"
    );

    let mut typed_wrong = status("pi-1", 1, 1, &[]);
    typed_wrong["reportSeq"] = json!("seventeen");
    let body = expect_error(
        server.report("pi-1", &token, &typed_wrong).await,
        422,
        "invalid-manifest",
    )
    .await;
    assert_eq!(body["error"]["violations"][0]["path"], "reportSeq");
}

on_both_stores!(an_unknown_agent_is_not_found);
async fn an_unknown_agent_is_not_found(store: Backend) {
    let server = serve(store).await;
    for path in [
        "/api/v1/agents/ghost/manifest",
        "/api/v1/agents/ghost/manifests",
        "/api/v1/agents/ghost/status",
        "/api/v1/agents/ghost/events",
    ] {
        expect_error(server.get(path, READER).await, 404, "not-found").await;
    }
    expect_error(
        server
            .put_manifest("ghost", &manifest("ghost", &["a"]))
            .await,
        404,
        "not-found",
    )
    .await;
    expect_error(
        server
            .request(Method::POST, "/api/v1/agents/ghost/token", ADMIN)
            .send()
            .await
            .expect("answered"),
        404,
        "not-found",
    )
    .await;
    expect_error(
        server
            .request(Method::DELETE, "/api/v1/agents/ghost", ADMIN)
            .send()
            .await
            .expect("answered"),
        404,
        "not-found",
    )
    .await;
}

on_both_stores!(unknown_paths_and_methods_answer_json);
async fn unknown_paths_and_methods_answer_json(store: Backend) {
    let server = serve(store).await;
    expect_error(
        server.get("/api/v1/nothing-here", ADMIN).await,
        404,
        "not-found",
    )
    .await;
    expect_error(
        server
            .request(Method::PATCH, "/api/v1/agents", ADMIN)
            .send()
            .await
            .expect("answered"),
        405,
        "method-not-allowed",
    )
    .await;
}

on_both_stores!(bad_query_parameters_are_bad_requests);
async fn bad_query_parameters_are_bad_requests(store: Backend) {
    let server = serve(store).await;
    let token = server.register("pi-1", json!({})).await;
    for path in [
        "/api/v1/agents/pi-1/manifest?afterGeneration=0&waitSeconds=301",
        "/api/v1/agents/pi-1/manifest?waitSeconds=5",
        "/api/v1/agents/pi-1/manifest?afterGeneration=minus-one",
    ] {
        expect_error(server.get(path, &token).await, 400, "bad-request").await;
    }
    expect_error(
        server
            .get("/api/v1/agents/pi-1/events?afterSeq=-1", READER)
            .await,
        400,
        "bad-request",
    )
    .await;
    expect_error(
        server
            .request(Method::PUT, "/api/v1/agents/pi-1/manifest", ADMIN)
            .header("If-Match", "yesterday")
            .json(&manifest("pi-1", &["a"]))
            .send()
            .await
            .expect("answered"),
        400,
        "bad-request",
    )
    .await;
}

on_both_stores!(schemas_and_health_need_no_token);
async fn schemas_and_health_need_no_token(store: Backend) {
    let on_postgres = matches!(store, Backend::Postgres(_));
    let server = serve(store).await;
    for path in [
        "/api/v1/schema/manifest",
        "/api/v1/schema/status",
        "/healthz",
        "/readyz",
    ] {
        let response = server
            .client
            .get(format!("{}{path}", server.url))
            .send()
            .await
            .expect("answered");
        assert_eq!(response.status(), 200, "{path}");
        let _: Value = response.json().await.expect("JSON");
    }
    let ready: Value = server
        .client
        .get(format!("{}/readyz", server.url))
        .send()
        .await
        .expect("answered")
        .json()
        .await
        .expect("JSON");
    if on_postgres {
        assert_eq!(ready["store"]["adapter"], "postgres");
        assert_eq!(ready["store"]["migrationReady"], true);
        assert_eq!(ready["store"]["migrationVersion"], 7);
    } else {
        // The memory store is ready, and says loudly that nothing it holds survives.
        assert_eq!(ready["store"]["adapter"], "memory");
        assert_eq!(ready["store"]["migrationReady"], true);
        assert!(
            ready["store"]["warning"]
                .as_str()
                .is_some_and(|w| !w.is_empty()),
            "{ready}"
        );
    }
}
