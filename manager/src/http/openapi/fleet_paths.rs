//! The fleet routes of the OpenAPI document (docs/fleets.md): their schemas, from the wire
//! types' derives, and their paths.

use fleetlet_manifests::fleet::Fleet;
use fleetlet_manifests::fleet_api::{
    AgentLabels, FleetDeviceView, FleetRevisionView, FleetView, PutFleetResponse, RolloutAction,
};
use serde_json::{Map, Value, json};

use super::{
    add_schema, cursor_schema, json_body, limit_schema, ok, query, reference, responses, schema_of,
    security, u64_schema,
};
use fleetlet_manifests::api::Page;

/// The fleet bodies as components.
pub fn add_schemas(schemas: &mut Map<String, Value>) {
    add_schema(schemas, "Fleet", schema_of::<Fleet>());
    add_schema(schemas, "FleetView", schema_of::<FleetView>());
    add_schema(schemas, "FleetViewPage", schema_of::<Page<FleetView>>());
    add_schema(
        schemas,
        "FleetDevicePage",
        schema_of::<Page<FleetDeviceView>>(),
    );
    add_schema(
        schemas,
        "FleetRevisionPage",
        schema_of::<Page<FleetRevisionView>>(),
    );
    add_schema(schemas, "PutFleetResponse", schema_of::<PutFleetResponse>());
    add_schema(schemas, "AgentLabels", schema_of::<AgentLabels>());
    // The label rules of registration, a `null` value removing the label.
    schemas.insert(
        "LabelPatch".to_owned(),
        json!({
            "type": "object",
            "additionalProperties": false,
            "properties": {"labels": {
                "type": "object",
                "maxProperties": 64,
                "propertyNames": {"pattern": "^[A-Za-z0-9._/-]{1,128}$"},
                "additionalProperties": {"oneOf": [
                    {"type": "string", "maxLength": 256, "pattern": "^[^,\\u0000-\\u001f\\u007f-\\u009f]*$"},
                    {"type": "null"}
                ]}
            }}
        }),
    );
}

fn name_parameter() -> Value {
    json!({
        "name": "name", "in": "path", "required": true,
        "description": "the fleet's name; a name that cannot exist is answered 404",
        "schema": {"type": "string"}
    })
}

/// The fleet paths, and the PATCH of an agent's labels (merged into its path by the caller).
pub fn paths() -> (Map<String, Value>, Value) {
    let readers = security(&["adminToken", "readerToken"]);
    let admin = security(&["adminToken"]);
    let page = |max| {
        vec![
            query("limit", "page size", limit_schema(max)),
            query("cursor", "paging cursor", cursor_schema()),
        ]
    };
    let paths = json!({
        "/api/v1/fleets": {"get": {
            "operationId": "listFleets", "summary": "every fleet with its rollout, by name",
            "security": readers,
            "parameters": page(100),
            "responses": responses(ok("a page of fleets", reference("FleetViewPage")), &[400, 401, 403])
        }},
        "/api/v1/fleets/{name}": {
            "parameters": [name_parameter()],
            "put": {
                "operationId": "putFleet", "summary": "create or change a fleet",
                "description": "A change is stored as the next revision; an identical body returns the current one (created false). A change of template, parameters or signature starts a rollout. The memory store of --dev has no fleets: 409.",
                "security": admin,
                "requestBody": json_body(reference("Fleet")),
                "responses": responses(ok("the revision", reference("PutFleetResponse")),
                                       &[400, 401, 403, 404, 409, 413, 415, 422])
            },
            "get": {
                "operationId": "getFleet", "summary": "the fleet with its rollout: phase, batches, counts, pause reason",
                "security": readers,
                "responses": responses(ok("the fleet", reference("FleetView")), &[401, 403, 404])
            },
            "delete": {
                "operationId": "deleteFleet", "summary": "stop managing the fleet; its devices keep their manifests",
                "security": admin,
                "responses": responses(json!({"204": {"description": "deleted"}}), &[401, 403, 404, 409])
            }
        },
        "/api/v1/fleets/{name}/devices": {
            "parameters": [name_parameter()],
            "get": {
                "operationId": "fleetDevices", "summary": "the selected devices with their rollout state, by agent id",
                "security": readers,
                "parameters": page(super::super::fleets::MAX_FLEET_PAGE),
                "responses": responses(ok("a page of devices", reference("FleetDevicePage")), &[400, 401, 403, 404])
            }
        },
        "/api/v1/fleets/{name}/revisions": {
            "parameters": [name_parameter()],
            "get": {
                "operationId": "fleetRevisions", "summary": "every revision, newest first",
                "security": readers,
                "parameters": page(100),
                "responses": responses(ok("a page of revisions", reference("FleetRevisionPage")), &[400, 401, 403, 404])
            }
        },
        "/api/v1/fleets/{name}/events": {
            "parameters": [name_parameter()],
            "get": {
                "operationId": "fleetEvents", "summary": "the fleet's event log (revisions, batches, pauses, conflicts, releases), oldest first",
                "security": readers,
                "parameters": [
                    query("afterSeq", "only events with a seq above this", u64_schema()),
                    query("limit", "page size", limit_schema(super::super::MAX_EVENTS_LIMIT))
                ],
                "responses": responses(ok("a page of events; nextCursor is the next afterSeq", reference("EventPage")), &[400, 401, 403, 404])
            }
        },
        "/api/v1/fleets/{name}/rollout/{action}": {
            "parameters": [name_parameter(), {
                "name": "action", "in": "path", "required": true,
                "description": "the operator action; another word is answered 404",
                "schema": {"type": "string", "enum": RolloutAction::ALL.map(RolloutAction::as_str)}
            }],
            "post": {
                "operationId": "rolloutAction", "summary": "pause, resume, approve, abort or roll back the rollout",
                "description": "409 when the action does not apply to the rollout's phase (e.g. approve when not WaitingApproval, rollback without an earlier completed revision).",
                "security": admin,
                "responses": responses(ok("the fleet after the action", reference("FleetView")), &[401, 403, 404, 409])
            }
        }
    });
    let patch = json!({
        "operationId": "patchAgentLabels", "summary": "change the agent's labels (JSON merge patch; null removes)",
        "description": "Fleet selection is evaluated again at once; the answer names the fleet that owns the agent now.",
        "security": admin,
        "requestBody": json_body(reference("LabelPatch")),
        "responses": responses(ok("the labels now", reference("AgentLabels")), &[400, 401, 403, 404, 413, 415, 422])
    });
    let Value::Object(paths) = paths else {
        return (Map::new(), patch);
    };
    (paths, patch)
}
