//! JSON Schema of the wire types, served by the manager at `/api/v1/schema/{manifest,status}`,
//! and of a fleet body (`manifests/schema/fleet.schema.json`).

use schemars::{Schema, SchemaGenerator, json_schema};

use crate::manifest::{
    ContainerSpec, FileSpec, Kind, MAX_RESOURCES, SessionStorageSpec, SystemdUnitSpec,
};
use crate::status::AgentStatus;

/// The schema of an `AgentManifest`. Resources of known kinds have a typed spec; any other kind
/// is allowed with an object spec, since unknown kinds are kept and reported `Unsupported`.
pub fn manifest_schema() -> Schema {
    let mut generator = SchemaGenerator::default();
    let mut typed = Vec::new();
    for kind in Kind::ALL {
        let spec = match kind {
            Kind::File => generator.subschema_for::<FileSpec>(),
            Kind::SessionStorage => generator.subschema_for::<SessionStorageSpec>(),
            Kind::Container => generator.subschema_for::<ContainerSpec>(),
            Kind::SystemdUnit => generator.subschema_for::<SystemdUnitSpec>(),
        };
        typed.push(json_schema!({
            "type": "object",
            "required": ["id", "kind", "spec"],
            "additionalProperties": false,
            "properties": {
                "id": {"$ref": "#/$defs/ResourceId"},
                "kind": {"const": kind.as_str()},
                "spec": spec,
            }
        }));
    }
    let known: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
    typed.push(json_schema!({
        "type": "object",
        "required": ["id", "kind", "spec"],
        "additionalProperties": false,
        "properties": {
            "id": {"$ref": "#/$defs/ResourceId"},
            "kind": {"type": "string", "pattern": "^[A-Za-z0-9]{1,63}$", "not": {"enum": known}},
            "spec": {"type": "object"},
        }
    }));
    // Provenance of a manifest rendered from a fleet (`crate::fleet`).
    let fleet = generator.subschema_for::<Option<crate::manifest::origin::FleetOrigin>>();
    let mut defs = generator.take_definitions(true);
    defs.insert(
        "ResourceId".into(),
        serde_json::json!({"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{0,62}$"}),
    );
    json_schema!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "AgentManifest",
        "type": "object",
        "required": ["apiVersion", "kind", "agentId"],
        "additionalProperties": false,
        "properties": {
            "apiVersion": {"const": crate::API_VERSION},
            "kind": {"const": crate::manifest::MANIFEST_KIND},
            "agentId": {"$ref": "#/$defs/ResourceId"},
            // As the parser reads it: null is like absent and 0 is allowed; neither matters in a
            // PUT, since the manager assigns generations (from 1).
            "generation": {"type": ["integer", "null"], "minimum": 0, "maximum": u64::MAX},
            "resources": {"type": "array", "maxItems": MAX_RESOURCES, "items": {"oneOf": typed}},
            // What the agent does when this generation is not Ready in time; `onFailure` is
            // `Rollback` when left out.
            "rollout": {
                "type": ["object", "null"],
                "required": ["progressDeadlineSeconds"],
                "additionalProperties": false,
                "properties": {
                    "progressDeadlineSeconds": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": crate::manifest::MAX_PROGRESS_DEADLINE_SECONDS,
                    },
                    "onFailure": {"enum": ["Rollback", "Hold"], "default": "Rollback"},
                },
            },
            // The operator's ed25519 signature over agentId, resources and rollout (see
            // `signature.rs`).
            "signature": {
                "type": ["object", "null"],
                "required": ["keyId", "ed25519"],
                "additionalProperties": false,
                "properties": {
                    "keyId": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
                    "ed25519": {
                        "type": "string",
                        "pattern": "^[A-Za-z0-9+/]{85}[AQgw]==$",
                    },
                },
            },
            "fleet": fleet,
        },
        "$defs": defs,
    })
}

/// The schema of an `AgentStatus`, as the manager accepts it in a report: the derived schema of
/// the type (whose fields with defaults are optional, since the default generator describes what
/// deserializing accepts), with the envelope's constants and the counters' upper bound, which the
/// manager checks after deserializing.
pub fn status_schema() -> Schema {
    let mut schema = schemars::schema_for!(AgentStatus);
    let counter_max = i64::MAX;
    if let Some(properties) = schema
        .get_mut("properties")
        .and_then(serde_json::Value::as_object_mut)
    {
        properties.insert(
            "apiVersion".into(),
            serde_json::json!({"const": crate::API_VERSION}),
        );
        properties.insert(
            "kind".into(),
            serde_json::json!({"const": crate::status::STATUS_KIND}),
        );
        for counter in ["reportSeq", "manifestGeneration", "observedGeneration"] {
            if let Some(field) = properties.get_mut(counter) {
                field["maximum"] = counter_max.into();
            }
        }
    }
    // Not on `ResourceStatus.generation` as well: that definition is shared with the status view
    // in the OpenAPI document, which keeps one schema per name.
    schema
}

/// The schema of a `Fleet` (`PUT /api/v1/fleets/{name}`): the derived schema of the type with the
/// envelope's constants. Template specs are objects of any shape there: their strings may hold
/// `{{ name }}` placeholders, so the typed spec rules apply only once a device's values are in
/// (`crate::fleet::render`); the parser checks the rest.
pub fn fleet_schema() -> Schema {
    let mut schema = schemars::schema_for!(crate::fleet::Fleet);
    if let Some(properties) = schema
        .get_mut("properties")
        .and_then(serde_json::Value::as_object_mut)
    {
        properties.insert(
            "apiVersion".into(),
            serde_json::json!({"const": crate::API_VERSION}),
        );
        properties.insert(
            "kind".into(),
            serde_json::json!({"const": crate::fleet::FLEET_KIND}),
        );
        properties.insert(
            "parameters".into(),
            serde_json::json!({
                "type": "object",
                "maxProperties": crate::fleet::MAX_PARAMETERS,
                "propertyNames": {
                    "type": "string",
                    "pattern": "^[A-Za-z][A-Za-z0-9._/-]{0,127}$",
                    "not": {"const": crate::fleet::AGENT_ID_PARAMETER},
                },
                "additionalProperties": {"$ref": "#/$defs/ParameterSpec"},
            }),
        );
    }
    schema
}

#[cfg(test)]
mod tests;
