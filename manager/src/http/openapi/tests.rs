//! Tests of the OpenAPI description: every route described, every reference resolving, shared definitions agreeing.

use super::*;

fn collect_refs(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(reference)) = map.get("$ref") {
                found.push(reference.clone());
            }
            map.values().for_each(|child| collect_refs(child, found));
        }
        Value::Array(items) => items.iter().for_each(|child| collect_refs(child, found)),
        _ => {}
    }
}

#[test]
fn the_state_filter_and_the_history_know_about_rollbacks() {
    let document = document(60);
    let parameters = document
        .pointer("/paths/~1api~1v1~1agents/get/parameters")
        .and_then(Value::as_array)
        .expect("fleet list parameters");
    let state = parameters
        .iter()
        .find(|p| p["name"] == "state")
        .expect("a state parameter");
    let states: Vec<&str> = FleetState::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(state["schema"]["enum"], json!(states));
    let rollout = document
        .pointer(
            "/components/schemas/ManifestRevisionPage/properties/items/items/properties/rollout",
        )
        .expect("a revision's rollout");
    assert_eq!(
        rollout["properties"]["onFailure"]["enum"],
        json!(["Rollback", "Hold"])
    );
}

#[test]
fn the_manifest_components_require_only_what_the_parser_requires() {
    // Fields with defaults are optional, as in the served schema (issue 18: the document
    // marked them required, so a client generated from it refused valid manifests).
    let document = document(60);
    for (component, required) in [
        ("FileSpec", json!(["path", "content"])),
        ("ContainerSpec", json!(["image"])),
        ("SystemdUnitSpec", json!(["name", "unit"])),
        ("SessionStorageSpec", json!(["sessionId", "sizeLimitBytes"])),
        ("AgentManifest", json!(["apiVersion", "kind", "agentId"])),
    ] {
        let schema = &document["components"]["schemas"][component];
        assert_eq!(schema["required"], required, "{component}");
        assert_eq!(schema["additionalProperties"], json!(false), "{component}");
    }
}

#[test]
fn every_reference_resolves_inside_the_document() {
    let document = document(60);
    let mut refs = Vec::new();
    collect_refs(&document, &mut refs);
    assert!(!refs.is_empty());
    for reference in refs {
        let pointer = reference
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{reference} is not local"));
        assert!(
            document.pointer(pointer).is_some(),
            "{reference} does not resolve"
        );
    }
}

#[test]
fn definitions_shared_by_several_types_agree() {
    let mut seen: Map<String, Value> = Map::new();
    for schema in [
        manifest_schema().to_value(),
        schema_of::<ErrorBody>(),
        schema_of::<Page<AgentSummary>>(),
        schema_of::<StatusView>(),
        schema_of::<Page<Event>>(),
        schema_of::<Readiness>(),
        status_schema().to_value(),
    ] {
        let mut schema = schema;
        rehome_refs(&mut schema);
        if let Some(Value::Object(defs)) = schema.get("$defs") {
            for (name, def) in defs {
                match seen.get(name) {
                    None => {
                        seen.insert(name.clone(), def.clone());
                    }
                    // A plain string next to the same string with its pattern.
                    Some(kept)
                        if *def == json!({"type": "string"})
                            && kept["type"] == "string"
                            && kept.get("pattern").is_some() => {}
                    Some(kept) => {
                        assert_eq!(kept, def, "two different schemas are named {name}")
                    }
                }
            }
        }
    }
}

#[test]
fn every_route_is_described() {
    let document = document(60);
    let paths = document["paths"].as_object().expect("paths");
    for path in [
        "/api/v1/enroll",
        "/api/v1/agents",
        "/api/v1/agents/{agentId}",
        "/api/v1/agents/{agentId}/token",
        "/api/v1/agents/{agentId}/manifest",
        "/api/v1/agents/{agentId}/manifests",
        "/api/v1/agents/{agentId}/status",
        "/api/v1/agents/{agentId}/events",
        "/api/v1/agents/{agentId}/heartbeat",
        "/api/v1/fleets",
        "/api/v1/fleets/{name}",
        "/api/v1/fleets/{name}/devices",
        "/api/v1/fleets/{name}/revisions",
        "/api/v1/fleets/{name}/events",
        "/api/v1/fleets/{name}/rollout/{action}",
        "/api/v1/schema/manifest",
        "/api/v1/schema/status",
        "/api/v1/openapi.json",
        "/healthz",
        "/readyz",
        "/metrics",
    ]
    .into_iter()
    .chain(super::super::dashboard::DASHBOARD_PATHS)
    {
        assert!(paths.contains_key(path), "{path} is missing");
    }
    assert!(
        document
            .pointer("/paths/~1api~1v1~1agents~1{agentId}/patch")
            .is_some(),
        "the label patch is missing"
    );
}
