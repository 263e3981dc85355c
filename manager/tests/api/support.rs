//! Serves the real router on 127.0.0.1:0 over a fresh database or the in-memory store, and builds
//! test documents.

use std::time::Duration;

use fleetlet_manager::http::{AppState, LongPolls, RoleHashes, Shared, router};
use fleetlet_manager::store::{MemoryStore, PgStore, Store};
use fleetlet_manager::token::hash_token;
use fleetlet_manager::watch::ManifestWatch;
use reqwest::{Method, RequestBuilder, Response};
use serde_json::{Value, json};
use sqlx::PgPool;

pub const ADMIN: &str = "admin-token-for-tests-0123456789";
pub const READER: &str = "reader-token-for-tests-0123456789";
pub const BOOTSTRAP: &str = "bootstrap-token-for-tests-0123456789";

/// A manager serving on an ephemeral port; stops when dropped.
pub struct TestServer {
    pub url: String,
    pub client: reqwest::Client,
    _stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The store a test's manager runs on: a fresh PostgreSQL database (`#[sqlx::test]`), or the
/// in-memory store that `--dev` uses. Tests written once run on both (`on_both_stores!`), so the
/// two keep the same rules; the few that read the database's rows run on PostgreSQL only.
pub enum Backend {
    Postgres(PgPool),
    Memory,
}

impl Backend {
    /// The database's pool, for a test that also reads the rows the store wrote.
    pub fn pool(&self) -> Option<PgPool> {
        match self {
            Backend::Postgres(pool) => Some(pool.clone()),
            Backend::Memory => None,
        }
    }
}

impl From<PgPool> for Backend {
    fn from(pool: PgPool) -> Self {
        Backend::Postgres(pool)
    }
}

/// Serves with the default 30 s report interval.
pub async fn serve(store: impl Into<Backend>) -> TestServer {
    serve_with_interval(store, Duration::from_secs(30)).await
}

pub async fn serve_with_interval(
    store: impl Into<Backend>,
    report_interval: Duration,
) -> TestServer {
    serve_inner(store.into(), report_interval, Some(BOOTSTRAP)).await
}

/// Serves with enrollment disabled: no bootstrap token is configured.
pub async fn serve_without_bootstrap(store: impl Into<Backend>) -> TestServer {
    serve_inner(store.into(), Duration::from_secs(30), None).await
}

async fn serve_inner(
    backend: Backend,
    report_interval: Duration,
    bootstrap: Option<&str>,
) -> TestServer {
    // Warnings (such as why the store was unavailable) show up in the output of a failed test.
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("warn")
        .try_init();
    let watch = ManifestWatch::default();
    let (stop_sender, stop) = tokio::sync::watch::channel(false);
    let store = match backend {
        Backend::Postgres(pool) => {
            tokio::spawn(
                fleetlet_manager::store::postgres::listen_for_manifest_changes(
                    pool.clone(),
                    watch.clone(),
                    stop.clone(),
                ),
            );
            Store::Postgres(PgStore::from_pool(
                pool,
                "postgres://test:x@localhost/test",
                watch.clone(),
            ))
        }
        Backend::Memory => Store::Memory(MemoryStore::new(watch.clone())),
    };
    let contacts = fleetlet_manager::contact::Contacts::default();
    tokio::spawn(fleetlet_manager::contact::write_contacts(
        contacts.clone(),
        store.clone(),
        Duration::from_millis(50),
        stop.clone(),
    ));
    let state = AppState::new(Shared {
        contacts,
        store,
        watch,
        roles: RoleHashes {
            admin: hash_token(ADMIN),
            reader: Some(hash_token(READER)),
            bootstrap: bootstrap.map(hash_token),
        },
        long_polls: LongPolls::default(),
        max_wait_seconds: fleetlet_manager::http::MAX_WAIT_SECONDS,
        report_interval,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds an ephemeral port");
    let addr = listener.local_addr().expect("has an address");
    let app = router(state);
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serves");
    });
    TestServer {
        url: format!("http://{addr}"),
        client: reqwest::Client::new(),
        _stop: stop_sender,
        task,
    }
}

impl TestServer {
    pub fn request(&self, method: Method, path: &str, token: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(token)
    }

    pub async fn send(&self, method: Method, path: &str, token: &str, body: &Value) -> Response {
        self.request(method, path, token)
            .json(body)
            .send()
            .await
            .expect("request is answered")
    }

    pub async fn get(&self, path: &str, token: &str) -> Response {
        self.request(Method::GET, path, token)
            .send()
            .await
            .expect("request is answered")
    }

    /// Registers an agent and returns its token.
    pub async fn register(&self, agent_id: &str, labels: Value) -> String {
        let response = self
            .send(
                Method::POST,
                "/api/v1/agents",
                ADMIN,
                &json!({"agentId": agent_id, "labels": labels}),
            )
            .await;
        assert_eq!(response.status(), 201, "registering {agent_id}");
        let body: Value = response.json().await.expect("JSON body");
        body["token"]
            .as_str()
            .expect("token is a string")
            .to_owned()
    }

    /// PUTs a manifest and returns the response.
    pub async fn put_manifest(&self, agent_id: &str, manifest: &Value) -> Response {
        self.send(
            Method::PUT,
            &format!("/api/v1/agents/{agent_id}/manifest"),
            ADMIN,
            manifest,
        )
        .await
    }

    /// PUTs a valid manifest with the given token.
    pub async fn put_manifest_as(&self, agent_id: &str, token: &str) -> Response {
        self.send(
            Method::PUT,
            &format!("/api/v1/agents/{agent_id}/manifest"),
            token,
            &manifest(agent_id, &["a"]),
        )
        .await
    }

    /// PUTs a manifest that must be stored, returning its generation.
    pub async fn apply(&self, agent_id: &str, manifest: &Value) -> u64 {
        let response = self.put_manifest(agent_id, manifest).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.expect("JSON body");
        body["generation"].as_u64().expect("generation is a number")
    }

    pub async fn report(&self, agent_id: &str, token: &str, status: &Value) -> Response {
        self.send(
            Method::PUT,
            &format!("/api/v1/agents/{agent_id}/status"),
            token,
            status,
        )
        .await
    }

    /// Reports a status that must be accepted.
    pub async fn report_accepted(&self, agent_id: &str, token: &str, status: &Value) {
        let response = self.report(agent_id, token, status).await;
        assert_eq!(response.status(), 200, "report of {agent_id}");
        let ack: Value = response.json().await.expect("JSON body");
        assert_eq!(ack, json!({"accepted": true}));
    }

    pub async fn json(&self, path: &str, token: &str) -> Value {
        let response = self.get(path, token).await;
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.expect("JSON body")
    }
}

/// A manifest with one File resource per given text.
pub fn manifest(agent_id: &str, texts: &[&str]) -> Value {
    let resources: Vec<Value> = texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            json!({"id": format!("file-{i}"), "kind": "File",
                   "spec": {"path": format!("/etc/fleetlet/file-{i}"), "content": {"text": text}, "mode": "0644"}})
        })
        .collect();
    json!({"apiVersion": "fleetlet.dev/v1", "kind": "AgentManifest", "agentId": agent_id, "resources": resources})
}

/// A status report with the given resources as (id, phase) at the given generation.
pub fn status(agent_id: &str, seq: u64, generation: u64, phases: &[(&str, &str)]) -> Value {
    let resources: serde_json::Map<String, Value> = phases
        .iter()
        .map(|(id, phase)| {
            let mut resource = json!({"kind": "File", "phase": phase, "since": "2026-11-22T10:00:00Z",
                                      "generation": generation, "specHash": "sha256:00"});
            if *phase == "Failed" {
                resource["error"] = json!({"reason": "PathNotAllowed", "message": "outside the file roots"});
            }
            ((*id).to_owned(), resource)
        })
        .collect();
    json!({
        "apiVersion": "fleetlet.dev/v1", "kind": "AgentStatus", "agentId": agent_id,
        "reportSeq": seq, "manifestGeneration": generation, "observedGeneration": generation,
        "observedAt": "2026-11-22T10:00:00Z",
        "agent": {"version": "0.1.0", "hostname": agent_id, "arch": "x86_64", "os": "linux",
                  "bootId": "b", "startedAt": "2026-11-22T09:00:00Z", "supportedKinds": ["File"]},
        "conditions": [],
        "resources": resources,
    })
}

/// Asserts the error shape of docs/reference.md §3 and kind, and returns the body.
pub async fn expect_error(response: Response, status: u16, kind: &str) -> Value {
    assert_eq!(response.status(), status);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "content type {content_type}"
    );
    let body: Value = response.json().await.expect("JSON error body");
    assert_eq!(body["error"]["kind"], kind, "body {body}");
    assert!(body["error"]["message"].is_string());
    body
}
