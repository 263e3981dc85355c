//! Tests of the JSON Schemas: every kind and field named, and the schemas agreeing with the parser.

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

/// The fleet schema's shipped copy, beside the manifest's.
const SHIPPED_FLEET_SCHEMA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/schema/fleet.schema.json");

#[test]
fn the_shipped_copy_is_the_fleet_schema() {
    let generated = fleet_schema().to_value();
    if std::env::var_os("FLEETLET_WRITE_SCHEMA").is_some() {
        let text = serde_json::to_string_pretty(&generated).expect("serializes") + "\n";
        std::fs::write(SHIPPED_FLEET_SCHEMA, text).expect("writes the shipped copy");
    }
    let shipped: Value = std::fs::read(SHIPPED_FLEET_SCHEMA)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    assert!(
        shipped == generated,
        "manifests/schema/fleet.schema.json is not fleet_schema(): rewrite it with \
         `FLEETLET_WRITE_SCHEMA=1 cargo test -p fleetlet-manifests shipped_copy`"
    );
}

#[test]
fn the_fleet_schema_requires_and_allows_what_the_parser_does() {
    let schema = fleet_schema().to_value();
    let full = json!({
        "apiVersion": "fleetlet.dev/v1", "kind": "Fleet", "name": "kiosks",
        "selector": {"matchLabels": {"role": "kiosk"}},
        "parameters": {"tag": {"pattern": "[0-9]+", "default": "1"}},
        "template": {"resources": [{"id": "web", "kind": "Container",
            "spec": {"image": "localhost/kiosk:1"}}]},
        "rolloutStrategy": {"batches": [{"limit": 1}, {"limit": "10%"}, {}]},
        "signature": {"keyId": "0123456789abcdef", "ed25519": format!("{}==", "A".repeat(86))},
    });
    schema_agrees_with_parser("Fleet", &schema, &full, |fleet| {
        crate::fleet::Fleet::from_value(fleet).is_ok()
    });
    let text = schema.to_string();
    for word in [
        "matchFacts",
        "successThreshold",
        "batchTimeoutSeconds",
        "requireApproval",
    ] {
        assert!(text.contains(word), "{word} missing");
    }
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
    full["fleet"] = json!({"name": "kiosks", "revision": 2, "values": {"greeting": "hi"}});
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
