//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 description of the API as this build serves it.
//!
//! The document is assembled from the wire types themselves: manifest and status schemas come
//! from `fleetlet_manifests::schema`, the other bodies from their `JsonSchema` derives, so a field
//! added to a type shows up here without anyone editing a second description. Only what the types
//! cannot say (paths, parameters, status codes, security) is written out below. Schemathesis runs
//! against this document in CI with every token role (`tests/tests/manager_schemathesis.rs`).

use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use fleetlet_manifests::api::{
    AgentSummary, AgentToken, ErrorBody, Event, FleetState, Heartbeat, HeartbeatAck, Page,
    Readiness, RegisterAgent, ReportAck, StatusView,
};
use fleetlet_manifests::schema::{manifest_schema, status_schema};
use serde_json::{Map, Value, json};

mod fleet_paths;

use super::agents::MAX_FLEET_LIMIT;
use super::limits::MAX_LONG_POLLS_PER_CALLER;

/// The handler of `GET /api/v1/openapi.json`: the document is rendered once, when the router is
/// built, since it depends only on the build and the configured long-poll limit.
pub fn openapi_handler(
    max_wait_seconds: u64,
) -> impl Fn() -> std::future::Ready<Response> + Clone + Send + Sync + 'static {
    let body = axum::body::Bytes::from(document(max_wait_seconds).to_string());
    move || std::future::ready(([(CONTENT_TYPE, "application/json")], body.clone()).into_response())
}

/// Schemas generated with `$defs` are re-homed under `components/schemas`, since a `$ref` inside
/// an OpenAPI document resolves against the document's root.
fn rehome_refs(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(reference)) = map.get_mut("$ref")
                && let Some(name) = reference.strip_prefix("#/$defs/")
            {
                *reference = format!("#/components/schemas/{name}");
            }
            map.remove("$schema");
            for child in map.values_mut() {
                rehome_refs(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(rehome_refs),
        _ => {}
    }
}

/// Adds a generated schema as component `name`, moving its `$defs` next to it. Of two
/// definitions with one name the first is kept; the unit test below checks that they agree, or
/// that the first is the stricter one.
fn add_schema(components: &mut Map<String, Value>, name: &str, schema: Value) {
    let mut schema = schema;
    rehome_refs(&mut schema);
    if let Value::Object(map) = &mut schema
        && let Some(Value::Object(defs)) = map.remove("$defs")
    {
        for (def_name, def) in defs {
            components.entry(def_name).or_insert(def);
        }
    }
    components.insert(name.to_owned(), schema);
}

fn schema_of<T: schemars::JsonSchema>() -> Value {
    schemars::schema_for!(T).to_value()
}

fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn json_content(schema: Value) -> Value {
    json!({"application/json": {"schema": schema}})
}

/// What each error status means in this API; every one carries the error body.
fn error_description(code: u16) -> &'static str {
    match code {
        400 => "bad-request: malformed JSON, a bad query parameter or header",
        401 => "unauthorized: no bearer token, or not a valid one for any role",
        403 => "forbidden: the token's role may not do this",
        404 => "not-found: no such agent (or none of its manifests yet)",
        408 => "request-timeout: the request did not finish within the manager's time limit",
        409 => "conflict: the id is taken, or If-Match names another generation",
        413 => "payload-too-large: the body exceeds 8 MiB",
        415 => "unsupported-media-type: the body is not application/json",
        422 => "invalid-manifest: the body is JSON but not valid; violations list every field",
        429 => "too-many-requests: too many long-polls open with this token on this agent",
        431 => "headers-too-large: the request line and headers exceed 64 KiB",
        503 => "store-unavailable: the database cannot be reached; retry later",
        _ => "error",
    }
}

/// The responses of an operation: its successes plus the error codes it can answer. 408, 431
/// and 503 can happen to any request, so they are always listed.
fn responses(successes: Value, errors: &[u16]) -> Value {
    let mut responses = match successes {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    let mut codes: Vec<u16> = errors.to_vec();
    codes.extend([408, 431, 503]);
    codes.sort_unstable();
    codes.dedup();
    for code in codes {
        let mut response = json!({
            "description": error_description(code),
            "content": json_content(reference("ErrorBody")),
        });
        if code == 401 {
            response["headers"] = json!({"WWW-Authenticate": {
                "description": "always `Bearer`",
                "schema": {"type": "string", "const": "Bearer"}
            }});
        }
        responses.insert(code.to_string(), response);
    }
    Value::Object(responses)
}

fn ok(description: &str, schema: Value) -> Value {
    json!({"200": {"description": description, "content": json_content(schema)}})
}

fn agent_id_parameter() -> Value {
    json!({
        "name": "agentId", "in": "path", "required": true,
        "description": "the agent's id; an id that cannot exist is answered 404",
        "schema": {"type": "string"}
    })
}

fn query(name: &str, description: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": description, "schema": schema})
}

fn u64_schema() -> Value {
    json!({"type": "integer", "minimum": 0, "maximum": u64::MAX})
}

/// Like `usize` on the platforms the manager runs on.
fn limit_schema(max: usize) -> Value {
    json!({"type": "integer", "minimum": 0, "maximum": u64::MAX,
           "description": format!("page size; 0 counts as 1 and anything above {max} as {max}")})
}

fn cursor_schema() -> Value {
    json!({"type": "string", "description": "the nextCursor of the previous page; anything else is a 400"})
}

fn security(roles: &[&str]) -> Value {
    Value::Array(roles.iter().map(|role| json!({*role: []})).collect())
}

fn json_body(schema: Value) -> Value {
    json!({"required": true, "content": json_content(schema)})
}

/// Label rules of registration (see `agents::label_violations`), stated as JSON Schema so that
/// what the document allows is what the manager accepts.
fn register_schema() -> Value {
    let mut schema = schema_of::<RegisterAgent>();
    schema["properties"]["labels"] = json!({
        "type": "object",
        "maxProperties": 64,
        "propertyNames": {"pattern": "^[A-Za-z0-9._/-]{1,128}$"},
        "additionalProperties": {"type": "string", "maxLength": 256, "pattern": "^[^,\\u0000-\\u001f\\u007f-\\u009f]*$"}
    });
    schema
}

/// The OpenAPI document of this build, with `waitSeconds` bounded by `max_wait_seconds`.
pub fn document(max_wait_seconds: u64) -> Value {
    let mut schemas = Map::new();
    // The manifest schema goes first: its `ResourceId` carries the id pattern, while the derived
    // schemas of the other types only know that an id is a string, and the first one is kept.
    add_schema(&mut schemas, "AgentManifest", manifest_schema().to_value());
    add_schema(&mut schemas, "ErrorBody", schema_of::<ErrorBody>());
    add_schema(&mut schemas, "RegisterAgent", register_schema());
    add_schema(&mut schemas, "AgentToken", schema_of::<AgentToken>());
    add_schema(&mut schemas, "ReportAck", schema_of::<ReportAck>());
    add_schema(&mut schemas, "Heartbeat", schema_of::<Heartbeat>());
    add_schema(&mut schemas, "HeartbeatAck", schema_of::<HeartbeatAck>());
    add_schema(
        &mut schemas,
        "AgentSummaryPage",
        schema_of::<Page<AgentSummary>>(),
    );
    add_schema(&mut schemas, "StatusView", schema_of::<StatusView>());
    add_schema(&mut schemas, "EventPage", schema_of::<Page<Event>>());
    add_schema(&mut schemas, "Readiness", schema_of::<Readiness>());
    add_schema(&mut schemas, "AgentStatus", status_schema().to_value());
    fleet_paths::add_schemas(&mut schemas);
    // The resource schema of a manifest, shared by the history's revisions.
    let resource = schemas
        .get("AgentManifest")
        .and_then(|m| m.pointer("/properties/resources/items"))
        .cloned()
        .unwrap_or_else(|| json!({"type": "object"}));
    schemas.insert("Resource".to_owned(), resource);
    // A revision's rollout policy is the manifest's, absent when the generation has none.
    let rollout = schemas
        .get("AgentManifest")
        .and_then(|m| m.pointer("/properties/rollout"))
        .cloned()
        .unwrap_or_else(|| json!({"type": "object"}));
    schemas.insert(
        "ManifestRevisionPage".to_owned(),
        json!({
            "type": "object",
            "required": ["items", "nextCursor"],
            "properties": {
                "items": {"type": "array", "items": {
                    "type": "object",
                    "required": ["generation", "contentHash", "createdAt", "createdBy", "resources"],
                    "properties": {
                        "generation": {"type": "integer", "minimum": 1},
                        "contentHash": {"type": "string"},
                        "createdAt": {"type": "string", "format": "date-time"},
                        "createdBy": {"type": "string"},
                        "resources": {"type": "array", "items": reference("Resource")},
                        "rollout": rollout
                    }
                }},
                "nextCursor": {"type": ["string", "null"]}
            }
        }),
    );

    let etag = json!({"ETag": {"description": "the generation in quotes, e.g. \"3\"",
                               "schema": {"type": "string", "pattern": "^\"[0-9]+\"$"}}});
    let manifest_ok = json!({"200": {"description": "the manifest with its generation",
                                     "headers": etag, "content": json_content(reference("AgentManifest"))}});
    let mut manifest_get = manifest_ok.clone();
    manifest_get["304"] = json!({"description": "long-poll: no newer generation arrived within waitSeconds", "headers": etag});

    let paths = json!({
        "/healthz": {"get": {
            "operationId": "healthz", "summary": "liveness: the process serves requests", "security": [],
            "responses": {"200": {"description": "alive", "content": json_content(json!({
                "type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}}))}}
        }},
        "/readyz": {"get": {
            "operationId": "readyz", "summary": "readiness: the store is reachable and migrated", "security": [],
            "responses": {
                "200": {"description": "ready", "content": json_content(reference("Readiness"))},
                "503": {"description": "not ready; the store part says why", "content": json_content(reference("Readiness"))}
            }
        }},
        "/metrics": {"get": {
            "operationId": "metrics", "summary": "Prometheus metrics of this replica (text format 0.0.4)", "security": [],
            "responses": {"200": {"description": "requests and latency by route, agents by state, reports ingested, long-polls open",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}}}
        }},
        "/": {"get": {
            "operationId": "dashboard", "summary": "the fleet dashboard (HTML); its data comes from this API with a reader token", "security": [],
            "responses": {"200": {"description": "the dashboard page", "content": {"text/html": {"schema": {"type": "string"}}}}}
        }},
        "/dashboard/app.js": {"get": {
            "operationId": "dashboardScript", "summary": "the dashboard's script", "security": [],
            "responses": {"200": {"description": "JavaScript", "content": {"text/javascript": {"schema": {"type": "string"}}}}}
        }},
        "/dashboard/style.css": {"get": {
            "operationId": "dashboardStyle", "summary": "the dashboard's stylesheet", "security": [],
            "responses": {"200": {"description": "CSS", "content": {"text/css": {"schema": {"type": "string"}}}}}
        }},
        "/api/v1/openapi.json": {"get": {
            "operationId": "openapi", "summary": "this document", "security": [],
            "responses": {"200": {"description": "OpenAPI 3.1", "content": json_content(json!({"type": "object"}))}}
        }},
        "/api/v1/schema/manifest": {"get": {
            "operationId": "manifestSchema", "summary": "JSON Schema of AgentManifest", "security": [],
            "responses": {"200": {"description": "JSON Schema 2020-12", "content": json_content(json!({"type": "object"}))}}
        }},
        "/api/v1/schema/status": {"get": {
            "operationId": "statusSchema", "summary": "JSON Schema of AgentStatus", "security": [],
            "responses": {"200": {"description": "JSON Schema 2020-12", "content": json_content(json!({"type": "object"}))}}
        }},
        "/api/v1/enroll": {"post": {
            "operationId": "enroll",
            "summary": "a device registers itself with the fleet's bootstrap token",
            "description": "Answered once per agent id with the agent's token. An id the manager knows, even a decommissioned one, is a 409. Without a configured bootstrap token the endpoint answers 404.",
            "security": security(&["bootstrapToken"]),
            "requestBody": json_body(reference("RegisterAgent")),
            "responses": responses(json!({"201": {"description": "enrolled; the token is shown this once",
                                                  "content": json_content(reference("AgentToken"))}}),
                                   &[400, 401, 404, 409, 413, 415, 422])
        }},
        "/api/v1/agents": {
            "post": {
                "operationId": "registerAgent", "summary": "register an agent",
                "description": "A decommissioned id may be registered again; an active one is a 409.",
                "security": security(&["adminToken"]),
                "requestBody": json_body(reference("RegisterAgent")),
                "responses": responses(json!({"201": {"description": "registered; the token is shown this once",
                                                      "content": json_content(reference("AgentToken"))}}),
                                       &[400, 401, 403, 409, 413, 415, 422])
            },
            "get": {
                "operationId": "listAgents", "summary": "the fleet list, one summary row per agent",
                "security": security(&["adminToken", "readerToken"]),
                "parameters": [
                    query("state", "only agents in this fleet state", json!({"type": "string", "enum": FleetState::ALL.map(FleetState::as_str)})),
                    query("label", "key=value pairs separated by commas; every one must match",
                          json!({"type": "string", "pattern": "^([^,]*=[^,]*)?(,([^,]*=[^,]*)?)*$"})),
                    query("reason", "only agents with a resource failing with this error reason, e.g. QuotaExceeded or SessionStorageEvicted",
                          json!({"type": "string", "pattern": "^[A-Z][A-Za-z0-9]{0,63}$"})),
                    query("limit", "page size", limit_schema(MAX_FLEET_LIMIT)),
                    query("cursor", "paging cursor", cursor_schema())
                ],
                "responses": responses(ok("a page of the fleet", reference("AgentSummaryPage")), &[400, 401, 403])
            }
        },
        "/api/v1/agents/{agentId}": {
            "parameters": [agent_id_parameter()],
            "delete": {
                "operationId": "decommissionAgent", "summary": "decommission an agent and revoke its token",
                "security": security(&["adminToken"]),
                "responses": responses(json!({"204": {"description": "decommissioned"}}), &[401, 403, 404])
            }
        },
        "/api/v1/agents/{agentId}/token": {
            "parameters": [agent_id_parameter()],
            "post": {
                "operationId": "rotateToken", "summary": "a new agent token; the old one stops working at once",
                "security": security(&["adminToken"]),
                "responses": responses(ok("the new token, shown this once", reference("AgentToken")), &[401, 403, 404])
            }
        },
        "/api/v1/agents/{agentId}/manifest": {
            "parameters": [agent_id_parameter()],
            "put": {
                "operationId": "putManifest", "summary": "store a manifest as the agent's next generation",
                "description": "Identical resources leave the generation unchanged. `generation` in the body is ignored.",
                "security": security(&["adminToken"]),
                "parameters": [{"name": "If-Match", "in": "header", "required": false,
                                "description": "the generation the change is based on, in quotes (\"3\"), or *",
                                "schema": {"type": "string", "pattern": "^(\\*|\"[0-9]{1,19}\"|[0-9]{1,19})$"}}],
                "requestBody": json_body(reference("AgentManifest")),
                "responses": responses(manifest_ok, &[400, 401, 403, 404, 409, 413, 415, 422])
            },
            "get": {
                "operationId": "getManifest", "summary": "the current manifest, or a long-poll for a newer one",
                "description": format!("With afterGeneration, answers as soon as the generation is above it; with waitSeconds too, waits up to that long, then answers 304. At most {MAX_LONG_POLLS_PER_CALLER} waiting polls per token and agent."),
                "security": security(&["adminToken", "readerToken", "agentToken"]),
                "parameters": [
                    query("afterGeneration", "answer only with a generation above this one", u64_schema()),
                    query("waitSeconds", "how long to wait for a newer generation; needs afterGeneration",
                          json!({"type": "integer", "minimum": 0, "maximum": max_wait_seconds}))
                ],
                "responses": responses(manifest_get, &[400, 401, 403, 404, 429])
            }
        },
        "/api/v1/agents/{agentId}/manifests": {
            "parameters": [agent_id_parameter()],
            "get": {
                "operationId": "manifestHistory", "summary": "every generation, newest first",
                "security": security(&["adminToken", "readerToken"]),
                "parameters": [
                    query("limit", "page size", limit_schema(super::manifests::MAX_HISTORY_LIMIT)),
                    query("cursor", "paging cursor", cursor_schema())
                ],
                "responses": responses(ok("a page of the history", reference("ManifestRevisionPage")), &[400, 401, 403, 404])
            }
        },
        "/api/v1/agents/{agentId}/status": {
            "parameters": [agent_id_parameter()],
            "put": {
                "operationId": "reportStatus", "summary": "the agent's report, idempotent by reportSeq",
                "security": security(&["agentToken"]),
                "requestBody": json_body(reference("AgentStatus")),
                "responses": responses(ok("accepted, or not (a reportSeq not above the stored one)", reference("ReportAck")),
                                       &[400, 401, 403, 404, 413, 415, 422])
            },
            "get": {
                "operationId": "getStatus", "summary": "the stored status and its summary",
                "security": security(&["adminToken", "readerToken"]),
                "responses": responses(ok("status and summary", reference("StatusView")), &[401, 403, 404])
            }
        },
        "/api/v1/agents/{agentId}/events": {
            "parameters": [agent_id_parameter()],
            "get": {
                "operationId": "listEvents", "summary": "the agent's event log, oldest first",
                "security": security(&["adminToken", "readerToken"]),
                "parameters": [
                    query("afterSeq", "only events with a seq above this", u64_schema()),
                    query("limit", "page size", limit_schema(super::status::MAX_EVENTS_LIMIT))
                ],
                "responses": responses(ok("a page of events; nextCursor is the next afterSeq", reference("EventPage")), &[400, 401, 403, 404])
            }
        },
        "/api/v1/agents/{agentId}/heartbeat": {
            "parameters": [agent_id_parameter()],
            "post": {
                "operationId": "heartbeat", "summary": "the agent's sign of life: the seq of its latest report; resend asks for the status again",
                "security": security(&["agentToken"]),
                "requestBody": json_body(reference("Heartbeat")),
                "responses": responses(ok("the newest reportSeq the manager holds", reference("HeartbeatAck")),
                                       &[400, 401, 403, 404, 413, 415, 422])
            }
        }
    });

    let mut paths = paths;
    let (fleet_routes, label_patch) = fleet_paths::paths();
    if let Value::Object(map) = &mut paths {
        map.extend(fleet_routes);
        if let Some(agent) = map.get_mut("/api/v1/agents/{agentId}") {
            agent["patch"] = label_patch;
        }
    }
    let bearer =
        |description: &str| json!({"type": "http", "scheme": "bearer", "description": description});
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "fleetlet manager",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The control plane of fleetlet. Every error answer is an ErrorBody. The request line and headers are limited to 64 KiB (431 headers-too-large) and bodies to 8 MiB (413). More than 64 header fields, or a header block that does not arrive within 10 seconds, end the connection at the HTTP layer (431 without a body, or a closed connection), before the API sees the request."
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "adminToken": bearer("the admin token of the control plane"),
                "readerToken": bearer("the read-only token of dashboards"),
                "agentToken": bearer("an agent's own token (flt_…), valid for that agent only"),
                "bootstrapToken": bearer("the fleet's bootstrap token, for enrollment only")
            }
        }
    })
}

#[cfg(test)]
mod tests;
