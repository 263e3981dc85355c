//! Token roles: scoping, rotation, decommissioning.

use reqwest::Method;
use serde_json::{Value, json};

use super::support::{ADMIN, Backend, READER, expect_error, manifest, serve, status};

on_both_stores!(missing_token_is_unauthorized);
async fn missing_token_is_unauthorized(store: Backend) {
    let server = serve(store).await;
    let response = server
        .client
        .get(format!("{}/api/v1/agents", server.url))
        .send()
        .await
        .expect("answered");
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    expect_error(response, 401, "unauthorized").await;
}

on_both_stores!(an_unknown_token_is_unauthorized);
async fn an_unknown_token_is_unauthorized(store: Backend) {
    let server = serve(store).await;
    for token in [
        "nope",
        "flt_0000000000000000000000000000000000000000000000000000000000000000",
    ] {
        expect_error(
            server.get("/api/v1/agents", token).await,
            401,
            "unauthorized",
        )
        .await;
    }
}

on_both_stores!(an_agent_token_used_on_another_agent_is_forbidden);
async fn an_agent_token_used_on_another_agent_is_forbidden(store: Backend) {
    let server = serve(store).await;
    let one = server.register("pi-1", json!({})).await;
    server.register("pi-2", json!({})).await;
    server.apply("pi-2", &manifest("pi-2", &["a"])).await;
    expect_error(
        server.get("/api/v1/agents/pi-2/manifest", &one).await,
        403,
        "forbidden",
    )
    .await;
    expect_error(
        server
            .report("pi-2", &one, &status("pi-2", 1, 1, &[]))
            .await,
        403,
        "forbidden",
    )
    .await;
    // Nor may it read fleet-wide data or write manifests.
    expect_error(server.get("/api/v1/agents", &one).await, 403, "forbidden").await;
    expect_error(server.put_manifest_as("pi-1", &one).await, 403, "forbidden").await;
    // Its own manifest and status are fine.
    server.apply("pi-1", &manifest("pi-1", &["a"])).await;
    assert_eq!(
        server
            .get("/api/v1/agents/pi-1/manifest", &one)
            .await
            .status(),
        200
    );
    server
        .report_accepted("pi-1", &one, &status("pi-1", 1, 1, &[]))
        .await;
}

on_both_stores!(a_reader_token_on_a_write_is_forbidden);
async fn a_reader_token_on_a_write_is_forbidden(store: Backend) {
    let server = serve(store).await;
    server.register("pi-1", json!({})).await;
    expect_error(
        server.put_manifest_as("pi-1", READER).await,
        403,
        "forbidden",
    )
    .await;
    expect_error(
        server
            .send(
                Method::POST,
                "/api/v1/agents",
                READER,
                &json!({"agentId": "pi-2"}),
            )
            .await,
        403,
        "forbidden",
    )
    .await;
    expect_error(
        server
            .request(Method::DELETE, "/api/v1/agents/pi-1", READER)
            .send()
            .await
            .expect("answered"),
        403,
        "forbidden",
    )
    .await;
    expect_error(
        server
            .report("pi-1", READER, &status("pi-1", 1, 0, &[]))
            .await,
        403,
        "forbidden",
    )
    .await;
    // Reading is what the reader is for.
    assert_eq!(server.get("/api/v1/agents", READER).await.status(), 200);
    assert_eq!(
        server
            .get("/api/v1/agents/pi-1/status", READER)
            .await
            .status(),
        200
    );
}

on_both_stores!(rotating_a_token_revokes_the_old_one);
async fn rotating_a_token_revokes_the_old_one(store: Backend) {
    // Its rows are read where the store keeps them, in PostgreSQL.
    let pool = store.pool();
    let server = serve(store).await;
    let old = server.register("pi-1", json!({})).await;
    let response = server
        .request(Method::POST, "/api/v1/agents/pi-1/token", ADMIN)
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("JSON");
    let new = body["token"].as_str().expect("token").to_owned();
    assert!(new.starts_with("flt_") && new != old);
    expect_error(
        server
            .report("pi-1", &old, &status("pi-1", 1, 0, &[]))
            .await,
        401,
        "unauthorized",
    )
    .await;
    server
        .report_accepted("pi-1", &new, &status("pi-1", 1, 0, &[]))
        .await;

    if let Some(pool) = &pool {
        // Only the hash is stored.
        let stored: String =
            sqlx::query_scalar("SELECT token_hash FROM agents WHERE agent_id = 'pi-1'")
                .fetch_one(pool)
                .await
                .expect("row");
        assert_ne!(stored, new);
        assert_eq!(stored.len(), 64);
    }
}

on_both_stores!(decommissioning_revokes_the_token_and_hides_the_agent);
async fn decommissioning_revokes_the_token_and_hides_the_agent(store: Backend) {
    let server = serve(store).await;
    let token = server.register("pi-1", json!({})).await;
    let response = server
        .request(Method::DELETE, "/api/v1/agents/pi-1", ADMIN)
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 204);
    expect_error(
        server
            .report("pi-1", &token, &status("pi-1", 1, 0, &[]))
            .await,
        401,
        "unauthorized",
    )
    .await;
    expect_error(
        server.get("/api/v1/agents/pi-1/status", ADMIN).await,
        404,
        "not-found",
    )
    .await;
    let fleet = server.json("/api/v1/agents", ADMIN).await;
    assert_eq!(fleet["items"], json!([]));
    // Registering the same id twice is a conflict; after decommissioning it is allowed again.
    server.register("pi-1", json!({})).await;
    expect_error(
        server
            .send(
                Method::POST,
                "/api/v1/agents",
                ADMIN,
                &json!({"agentId": "pi-1"}),
            )
            .await,
        409,
        "conflict",
    )
    .await;
}
