//! JSON Schema of the wire types, served by the manager at `/api/v1/schema/{manifest,status}`.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_name_every_kind_and_status_field() {
        let manifest = serde_json::to_string(&manifest_schema()).expect("serializes");
        for kind in Kind::ALL {
            assert!(
                manifest.contains(&format!("\"const\":\"{}\"", kind.as_str())),
                "{kind} missing"
            );
        }
        assert!(manifest.contains("sizeLimitBytes") && manifest.contains("restartPolicy"));
        assert!(manifest.contains("progressDeadlineSeconds") && manifest.contains("\"Hold\""));
        let status = serde_json::to_string(&status_schema()).expect("serializes");
        assert!(status.contains("observedGeneration") && status.contains("reportSeq"));
    }

    /// The copy for editors and CI that do not run a manager, `manifests/schema/`.
    const SHIPPED_MANIFEST_SCHEMA: &str =
        concat!(env!("CARGO_MANIFEST_DIR"), "/schema/manifest.schema.json");

    #[test]
    fn the_shipped_copy_is_the_manifest_schema() {
        let generated = manifest_schema().to_value();
        if std::env::var_os("FLEETLET_WRITE_SCHEMA").is_some() {
            let text = serde_json::to_string_pretty(&generated).expect("serializes") + "\n";
            std::fs::write(SHIPPED_MANIFEST_SCHEMA, text).expect("writes the shipped copy");
        }
        let shipped: Value = std::fs::read(SHIPPED_MANIFEST_SCHEMA)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        assert!(
            shipped == generated,
            "manifests/schema/manifest.schema.json is not manifest_schema(): rewrite it with \
             `FLEETLET_WRITE_SCHEMA=1 cargo test -p fleetlet-manifests shipped_copy`"
        );
    }

    use serde_json::{Value, json};

    use crate::manifest::{AgentManifest, MANIFEST_KIND};

    /// Every field of every spec kind, set to a valid value other than its default.
    fn full_specs() -> Vec<(&'static str, &'static str, Value)> {
        vec![
            (
                "File",
                "FileSpec",
                json!({"path": "/etc/motd", "content": {"text": "hi"}, "mode": "0600",
                    "owner": "root", "group": "0"}),
            ),
            (
                "SessionStorage",
                "SessionStorageSpec",
                json!({"sessionId": "s-1", "sizeLimitBytes": 1024,
                    "expiresAt": "2030-01-01T00:00:00Z"}),
            ),
            (
                "Container",
                "ContainerSpec",
                json!({"image": "localhost/busybox:test", "command": ["sh"], "args": ["-c", "true"],
                    "env": {"A": "b"}, "workingDir": "/srv", "user": "1000:1000",
                    "ports": [{"hostPort": 8080, "containerPort": 80, "protocol": "udp"}],
                    "volumes": [{"sessionStorage": "data", "mountPath": "/data", "readOnly": true}],
                    "restartPolicy": "Never", "pullPolicy": "Always",
                    "memoryLimitBytes": 8_388_608, "cpuMillis": 500, "privileged": true,
                    "hostNetwork": true, "hostPid": true, "devices": ["/dev/ttyUSB0"]}),
            ),
            (
                "SystemdUnit",
                "SystemdUnitSpec",
                json!({"name": "kiosk.service", "unit": "[Unit]\n", "enabled": false,
                    "state": "Stopped"}),
            ),
        ]
    }

    /// A manifest holding `spec` as a resource of `kind`, plus the storage its volumes name.
    fn manifest_of(kind: &str, spec: Value) -> Value {
        json!({"apiVersion": crate::API_VERSION, "kind": MANIFEST_KIND, "agentId": "pi-1",
        "resources": [
            {"id": "subject", "kind": kind, "spec": spec},
            {"id": "data", "kind": "SessionStorage", "spec": {"sessionId": "d", "sizeLimitBytes": 1}},
        ]})
    }

    fn allows_null(property: &Value) -> bool {
        match &property["type"] {
            Value::String(t) => t == "null",
            Value::Array(types) => types.iter().any(|t| t == "null"),
            _ => property["anyOf"]
                .as_array()
                .is_some_and(|alternatives| alternatives.iter().any(|a| a["type"] == "null")),
        }
    }

    /// Checks one object schema against the parser: a field is required exactly when leaving it
    /// out is refused, null is allowed exactly when the parser accepts it, the properties are
    /// exactly the fields the parser reads, and a field nobody asked for is refused by both.
    fn schema_agrees_with_parser(
        name: &str,
        object: &Value,
        full: &Value,
        accepts: impl Fn(Value) -> bool,
    ) {
        assert!(
            accepts(full.clone()),
            "{name}: the full sample must be valid"
        );
        let properties = object["properties"].as_object().expect("properties");
        let required: Vec<&str> = object["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let sample_fields: Vec<&String> = full.as_object().expect("object").keys().collect();
        let schema_fields: Vec<&String> = properties.keys().collect();
        assert_eq!(schema_fields, sample_fields, "{name}: schema properties");
        for (field, property) in properties {
            let mut without = full.clone();
            without.as_object_mut().expect("object").remove(field);
            assert_eq!(
                accepts(without),
                !required.contains(&field.as_str()),
                "{name}.{field}: required in the schema exactly when the parser needs it"
            );
            let mut null = full.clone();
            null[field] = Value::Null;
            assert_eq!(
                accepts(null),
                allows_null(property),
                "{name}.{field}: null allowed by the schema exactly when the parser takes it"
            );
        }
        assert_eq!(object["additionalProperties"], json!(false), "{name}");
        let mut extra = full.clone();
        extra["colour"] = json!("red");
        assert!(!accepts(extra), "{name}: an unknown field is refused");
    }

    #[test]
    fn every_spec_schema_requires_and_allows_what_the_parser_does() {
        let schema = manifest_schema().to_value();
        for (kind, def, full) in full_specs() {
            let object = &schema["$defs"][def];
            schema_agrees_with_parser(def, object, &full, |spec| {
                AgentManifest::from_value(manifest_of(kind, spec)).is_ok()
            });
        }
    }

    #[test]
    fn the_manifest_and_rollout_schemas_require_and_allow_what_the_parser_does() {
        let schema = manifest_schema().to_value();
        let signature =
            json!({"keyId": "0123456789abcdef", "ed25519": format!("{}==", "A".repeat(86))});
        let rollout = json!({"progressDeadlineSeconds": 60, "onFailure": "Hold"});
        let mut full = manifest_of("File", full_specs()[0].2.clone());
        full["generation"] = json!(3);
        full["rollout"] = rollout.clone();
        full["signature"] = signature;
        schema_agrees_with_parser("AgentManifest", &schema, &full, |manifest| {
            AgentManifest::from_value(manifest).is_ok()
        });
        schema_agrees_with_parser(
            "rollout",
            &schema["properties"]["rollout"],
            &rollout,
            |rollout| {
                let mut manifest = full.clone();
                manifest["rollout"] = rollout;
                AgentManifest::from_value(manifest).is_ok()
            },
        );
    }
}
