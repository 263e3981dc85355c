//! Issue 18, point 1: the JSON Schemas and the OpenAPI document the manager serves, checked by the
//! tools users already run on them. `check-jsonschema` (FLEETLET_CHECK_JSONSCHEMA) validates every
//! example manifest and a real agent's status against the served schemas, and refuses known-bad
//! manifests that the manager refuses too; `openapi-spec-validator`
//! (FLEETLET_OPENAPI_SPEC_VALIDATOR) checks `/api/v1/openapi.json`. Both come from
//! `deploy/dev/validators.sh`; a missing variable or tool fails the tests, never skips them. The
//! `jsonschema` crate checks the same schemas in process, where a test needs many cases.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use fleetlet_manifests::schema::{manifest_schema, status_schema};
use fleetlet_tests::agent::{AgentDirs, AgentOptions, AgentProcess, file_resource, wait_for};
use fleetlet_tests::manager::ManagerProcess;
use fleetlet_tests::schema::{check_manifest, manifest_schema_errors};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A third-party checker named by `var`, or a loud failure telling how to install it.
fn tool(var: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os(var).map(PathBuf::from).with_context(|| {
        format!(
            "{var} is not set: run `set -a; eval \"$(deploy/dev/validators.sh)\"; set +a` first"
        )
    })?;
    if !path.exists() {
        bail!(
            "{var}={} does not exist: run deploy/dev/validators.sh",
            path.display()
        );
    }
    Ok(path)
}

/// Runs a checker (bounded by two minutes) and answers whether it passed, and its output.
async fn run(program: &Path, args: &[&Path]) -> anyhow::Result<(bool, String)> {
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(program)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .with_context(|| format!("{} did not finish within 2 minutes", program.display()))??;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // check-jsonschema answers 1 for invalid instances; anything else is the tool failing.
    if !output.status.success() && output.status.code() != Some(1) {
        bail!(
            "{} failed to run ({}):\n{text}",
            program.display(),
            output.status
        );
    }
    Ok((output.status.success(), text))
}

fn workspace() -> PathBuf {
    let tests_crate = Path::new(env!("CARGO_MANIFEST_DIR"));
    tests_crate.parent().unwrap_or(tests_crate).to_path_buf()
}

/// Every file of `manifests/examples/`, sorted.
fn examples() -> anyhow::Result<Vec<PathBuf>> {
    let dir = workspace().join("manifests/examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    assert!(files.len() >= 4, "examples missing in {}", dir.display());
    Ok(files)
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    serde_json::from_slice(&std::fs::read(path)?).with_context(|| format!("{}", path.display()))
}

fn write_json(dir: &Path, name: &str, value: &Value) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec_pretty(value)?)?;
    Ok(path)
}

/// A document the manager serves without a token.
async fn served(
    client: &reqwest::Client,
    manager: &ManagerProcess,
    path: &str,
) -> anyhow::Result<Value> {
    let response = client.get(format!("{}{path}", manager.url)).send().await?;
    let status = response.status();
    let body = response.text().await?;
    if status != StatusCode::OK {
        bail!("GET {path} answered {status}: {body}");
    }
    Ok(serde_json::from_str(&body)?)
}

async fn register(
    client: &reqwest::Client,
    manager: &ManagerProcess,
    agent_id: &str,
) -> anyhow::Result<String> {
    manager
        .register(
            client,
            json!({"agentId": agent_id, "labels": {"test": "schema"}}),
        )
        .await
}

/// The violation paths of a 422 answer, or a failure naming what came instead.
async fn violation_paths(response: reqwest::Response) -> anyhow::Result<Vec<String>> {
    let status = response.status();
    let body: Value = response.json().await?;
    if status != StatusCode::UNPROCESSABLE_ENTITY {
        bail!("expected 422, got {status}: {body}");
    }
    Ok(body["error"]["violations"]
        .as_array()
        .context("a 422 without violations")?
        .iter()
        .filter_map(|v| v["path"].as_str().map(str::to_owned))
        .collect())
}

#[tokio::test]
async fn every_example_passes_check_jsonschema_with_the_served_schema_and_the_manager()
-> anyhow::Result<()> {
    let check_jsonschema = tool("FLEETLET_CHECK_JSONSCHEMA")?;
    let manager = ManagerProcess::start_dev().await?;
    let client = reqwest::Client::new();
    let schema = served(&client, &manager, "/api/v1/schema/manifest").await?;
    let dir = tempfile::tempdir()?;
    let schema_file = write_json(dir.path(), "manifest.schema.json", &schema)?;
    let examples = examples()?;
    let mut args: Vec<&Path> = vec![Path::new("--schemafile"), &schema_file];
    args.extend(examples.iter().map(PathBuf::as_path));
    let (passed, output) = run(&check_jsonschema, &args).await?;
    assert!(
        passed,
        "check-jsonschema refuses an example manifest:\n{output}"
    );

    // The in-process checks of the tests' helpers (fleetlet_tests::schema) use this very schema,
    // and so does the copy shipped for editors.
    assert!(
        schema == manifest_schema().to_value(),
        "the served schema is not manifest_schema()"
    );
    let shipped = read_json(&workspace().join("manifests/schema/manifest.schema.json"))?;
    assert!(
        schema == shipped,
        "manifests/schema/manifest.schema.json is not the served schema: rewrite it with \
         `FLEETLET_WRITE_SCHEMA=1 cargo test -p fleetlet-manifests shipped_copy`"
    );

    // The manager takes each of them, too: the schema and the parser agree on every example.
    let mut registered = std::collections::BTreeSet::new();
    for path in &examples {
        let example = read_json(path)?;
        let agent_id = example["agentId"]
            .as_str()
            .context("an example without agentId")?;
        if registered.insert(agent_id.to_owned()) {
            register(&client, &manager, agent_id).await?;
        }
        let response = manager.put_manifest(&client, agent_id, &example).await?;
        let status = response.status();
        assert!(
            status.is_success(),
            "{} answered {status}: {}",
            path.display(),
            response.text().await?
        );
    }
    Ok(())
}

/// Manifests each breaking one rule that the schema can state, with the path the manager names.
fn known_bad_manifests() -> Vec<(&'static str, Value, &'static str)> {
    let base = |resources: Value| {
        json!({"apiVersion": "fleetlet.dev/v1", "kind": "AgentManifest", "agentId": "pi-bad",
            "resources": resources})
    };
    let file = |spec: Value| base(json!([{"id": "motd", "kind": "File", "spec": spec}]));
    let mut unknown_field = file(json!({"path": "/etc/motd", "content": {"text": "hi"}}));
    unknown_field["colour"] = json!("red");
    vec![
        (
            "relative-path",
            file(json!({"path": "etc/motd", "content": {"text": "hi"}})),
            "resources[0].spec.path",
        ),
        (
            "mode-as-number",
            file(json!({"path": "/etc/motd", "content": {"text": "hi"}, "mode": 420})),
            "resources[0].spec.mode",
        ),
        (
            "mode-above-07777",
            file(json!({"path": "/etc/motd", "content": {"text": "hi"}, "mode": "17777"})),
            "resources[0].spec.mode",
        ),
        ("unknown-top-level-field", unknown_field, "colour"),
        (
            "unknown-spec-field",
            file(json!({"path": "/etc/motd", "content": {"text": "hi"}, "owner_name": "root"})),
            "resources[0].spec.owner_name",
        ),
        (
            "null-for-a-defaulted-field",
            base(json!([{"id": "web", "kind": "Container",
                "spec": {"image": "localhost/busybox:test", "args": null}}])),
            "resources[0].spec.args",
        ),
        (
            "unit-without-suffix",
            base(json!([{"id": "kiosk", "kind": "SystemdUnit",
                "spec": {"name": "kiosk", "unit": "[Unit]\n"}}])),
            "resources[0].spec.name",
        ),
        (
            "unknown-kind-with-a-space",
            base(json!([{"id": "gpu", "kind": "Gpu Slice", "spec": {}}])),
            "resources[0].kind",
        ),
        (
            "unknown-kind-without-an-object-spec",
            base(json!([{"id": "gpu", "kind": "GpuSlice", "spec": [0]}])),
            "resources[0].spec",
        ),
    ]
}

#[tokio::test]
async fn a_known_bad_manifest_is_refused_by_check_jsonschema_and_by_the_manager()
-> anyhow::Result<()> {
    let check_jsonschema = tool("FLEETLET_CHECK_JSONSCHEMA")?;
    let manager = ManagerProcess::start_dev().await?;
    let client = reqwest::Client::new();
    register(&client, &manager, "pi-bad").await?;
    let schema = served(&client, &manager, "/api/v1/schema/manifest").await?;
    let dir = tempfile::tempdir()?;
    let schema_file = write_json(dir.path(), "manifest.schema.json", &schema)?;
    for (name, manifest, path) in known_bad_manifests() {
        let file = write_json(dir.path(), &format!("{name}.json"), &manifest)?;
        let (passed, output) = run(
            &check_jsonschema,
            &[Path::new("--schemafile"), &schema_file, &file],
        )
        .await?;
        assert!(!passed, "check-jsonschema accepts {name}:\n{output}");
        assert!(
            output.contains("Schema validation errors"),
            "{name}: check-jsonschema said:\n{output}"
        );
        assert!(!manifest_schema_errors(&manifest).is_empty(), "{name}");
        assert!(check_manifest(&manifest).is_err(), "{name}");

        // Deliberately invalid: sent raw, not through the checked put_manifest.
        let response = manager
            .admin(&client, Method::PUT, "/api/v1/agents/pi-bad/manifest")
            .json(&manifest)
            .send()
            .await?;
        let paths = violation_paths(response).await?;
        assert_eq!(paths, vec![path.to_owned()], "{name}");
    }
    // Nothing was stored by any of them.
    let stored = manager
        .admin(&client, Method::GET, "/api/v1/agents/pi-bad/manifest")
        .send()
        .await?;
    assert_eq!(stored.status(), StatusCode::NOT_FOUND);
    Ok(())
}

#[tokio::test]
async fn the_served_status_schema_accepts_a_real_agents_status() -> anyhow::Result<()> {
    let check_jsonschema = tool("FLEETLET_CHECK_JSONSCHEMA")?;
    let manager = ManagerProcess::start_dev().await?;
    let client = reqwest::Client::new();
    let agent_id = "pi-status-schema";
    let token = register(&client, &manager, agent_id).await?;
    let dirs = AgentDirs::new()?;
    // Ready, Failed (outside the file roots, with a typed error) and Unsupported (a newer kind):
    // the status carries details, an error and an unknown kind.
    let manifest = json!({"apiVersion": "fleetlet.dev/v1", "kind": "AgentManifest", "agentId": agent_id,
    "resources": [
        file_resource("inside", &dirs.root().join("motd"), "hi\n", "0640"),
        file_resource("outside", &dirs.outside().join("motd"), "no\n", "0644"),
        {"id": "gpu", "kind": "GpuSlice", "spec": {"devices": [0]}},
    ]});
    let response = manager.put_manifest(&client, agent_id, &manifest).await?;
    assert!(response.status().is_success(), "{}", response.text().await?);
    let _agent = AgentProcess::start(
        &dirs,
        &AgentOptions::with_manager(agent_id, &manager.url, &token),
    )?;

    let status_url = format!("/api/v1/agents/{agent_id}/status");
    let reported = wait_for(
        "the agent's status with all three resources",
        Duration::from_secs(30),
        || async {
            let view = manager.status_json(&client, agent_id).await?;
            let status = view["status"].clone();
            let phase = |id: &str| status["resources"][id]["phase"].as_str().map(str::to_owned);
            (phase("inside").as_deref() == Some("Ready")
                && phase("outside").as_deref() == Some("Failed")
                && phase("gpu").as_deref() == Some("Unsupported"))
            .then_some(status)
        },
    )
    .await?;
    // What the agent itself wrote, byte for byte, beside what the manager serves back.
    let stored_path = dirs
        .state_dir()
        .join("agents")
        .join(agent_id)
        .join("status.json");
    let stored = wait_for(
        "the agent's stored status",
        Duration::from_secs(10),
        || async { read_json(&stored_path).ok() },
    )
    .await?;

    let schema = served(&client, &manager, "/api/v1/schema/status").await?;
    assert!(
        schema == status_schema().to_value(),
        "the served status schema is not status_schema()"
    );
    let dir = tempfile::tempdir()?;
    let schema_file = write_json(dir.path(), "status.schema.json", &schema)?;
    let reported_file = write_json(dir.path(), "reported.json", &reported)?;
    let (passed, output) = run(
        &check_jsonschema,
        &[
            Path::new("--schemafile"),
            &schema_file,
            &reported_file,
            &stored_path,
        ],
    )
    .await?;
    assert!(
        passed,
        "check-jsonschema refuses a real status:\n{output}\n{reported}"
    );
    let validator = jsonschema::validator_for(&schema)?;
    assert!(validator.is_valid(&stored), "{stored}");

    // A status with a field nobody knows is refused by both the schema and the manager.
    let mut bad = reported.clone();
    bad["reportSeq"] = json!(bad["reportSeq"].as_u64().unwrap_or_default() + 1000);
    bad["colour"] = json!("red");
    let bad_file = write_json(dir.path(), "bad.json", &bad)?;
    let (passed, output) = run(
        &check_jsonschema,
        &[Path::new("--schemafile"), &schema_file, &bad_file],
    )
    .await?;
    assert!(
        !passed,
        "check-jsonschema accepts an unknown status field:\n{output}"
    );
    let response = client
        .put(format!("{}{status_url}", manager.url))
        .bearer_auth(&token)
        .json(&bad)
        .send()
        .await?;
    assert_eq!(
        response.status(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        response.text().await?
    );
    Ok(())
}

#[tokio::test]
async fn the_served_openapi_document_passes_openapi_spec_validator() -> anyhow::Result<()> {
    let validator_tool = tool("FLEETLET_OPENAPI_SPEC_VALIDATOR")?;
    let manager = ManagerProcess::start_dev().await?;
    let client = reqwest::Client::new();
    let document = served(&client, &manager, "/api/v1/openapi.json").await?;
    let dir = tempfile::tempdir()?;
    let file = write_json(dir.path(), "openapi.json", &document)?;
    let (passed, output) = run(&validator_tool, &[&file]).await?;
    assert!(
        passed,
        "openapi-spec-validator refuses /api/v1/openapi.json:\n{output}"
    );

    // Its manifest component describes what the manager accepts, like the served schema: every
    // example passes it and every known-bad manifest fails it.
    let component = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": "#/components/schemas/AgentManifest",
        "components": document["components"],
    });
    let validator = jsonschema::validator_for(&component)?;
    for path in examples()? {
        let example = read_json(&path)?;
        let errors: Vec<String> = validator
            .iter_errors(&example)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
    }
    for (name, manifest, _) in known_bad_manifests() {
        assert!(
            !validator.is_valid(&manifest),
            "the OpenAPI component accepts {name}"
        );
    }
    Ok(())
}

/// The patterns of the wire names never refuse what their parsers accept (and refuse what they
/// refuse, where the pattern states the whole rule), on samples near every edge of each rule.
#[test]
fn the_schema_patterns_agree_with_the_parsers() -> anyhow::Result<()> {
    use fleetlet_manifests::{
        AbsPath, AccountName, FileMode, ImageRef, ResourceId, SessionId, UnitName,
    };
    let defs = manifest_schema().to_value()["$defs"].clone();
    let long = |n: usize| "a".repeat(n);
    /// A name of `$defs`, its parser, and the samples.
    type Case = (&'static str, fn(&str) -> bool, Vec<String>);
    let cases: Vec<Case> = vec![
        (
            "AbsPath",
            |s| AbsPath::try_from(s).is_ok(),
            [
                "/",
                "/etc/motd",
                "etc/motd",
                "",
                "/etc/",
                "//etc",
                "/etc//motd",
                "/./x",
                "/../x",
                "/x/..",
                "/x/.",
                "/.hidden",
                "/..x",
                "/...",
                "/a b",
                "/nul\0x",
                "/ü",
                "/x/.y/..z",
            ]
            .map(String::from)
            .to_vec(),
        ),
        (
            "UnitName",
            |s| UnitName::try_from(s).is_ok(),
            [
                "kiosk.service",
                "a.timer",
                "x@y.service",
                "@.service",
                "sshd@.service",
                "x@@y.service",
                "a@b@c.service",
                ".a.service",
                "-a.service",
                ".service",
                "kiosk",
                "kiosk.conf",
                "k i.service",
                "a\\x2d.service",
                "a:b_c.d-e.mount",
                "a.b.socket",
                "a-.path",
                "_.target",
                "kiosk.service.d",
                "Kiosk.SERVICE",
            ]
            .map(String::from)
            .to_vec(),
        ),
        (
            "ImageRef",
            |s| ImageRef::try_from(s).is_ok(),
            vec![
                "localhost/busybox:test".into(),
                "busybox".into(),
                "-x".into(),
                "".into(),
                "a b".into(),
                "img@sha256:abc".into(),
                "a+b".into(),
                "x\ty".into(),
                "ä".into(),
                long(255),
                long(256),
                "_x".into(),
                ".x".into(),
            ],
        ),
        (
            "SessionId",
            |s| SessionId::try_from(s).is_ok(),
            vec![
                "s-1".into(),
                ".s".into(),
                "_s".into(),
                "-s".into(),
                "".into(),
                long(128),
                long(129),
                "a/b".into(),
                "A.b".into(),
            ],
        ),
        (
            "AccountName",
            |s| AccountName::try_from(s).is_ok(),
            vec![
                "root".into(),
                "0".into(),
                "www-data".into(),
                "-x".into(),
                ".x".into(),
                "_x".into(),
                long(32),
                long(33),
                "a b".into(),
                "".into(),
                "a:b".into(),
            ],
        ),
        (
            "FileMode",
            |s| FileMode::try_from(s).is_ok(),
            [
                "0644", "644", "7777", "07777", "17777", "0", "", "8", "00644", "000644", "0o644",
                "0000", "00000", "000000", "77777",
            ]
            .map(String::from)
            .to_vec(),
        ),
        (
            "ResourceId",
            |s| ResourceId::try_from(s).is_ok(),
            vec![
                "motd".into(),
                "0web_1.a-b".into(),
                "".into(),
                "-web".into(),
                "Web".into(),
                "a/b".into(),
                long(63),
                long(64),
            ],
        ),
    ];
    for (name, parses, samples) in cases {
        let schema = json!({"$ref": format!("#/$defs/{name}"), "$defs": defs});
        let validator = jsonschema::validator_for(&schema)?;
        for sample in samples {
            assert_eq!(
                validator.is_valid(&json!(sample)),
                parses(&sample),
                "{name} {sample:?}: the schema and the parser disagree"
            );
        }
    }
    Ok(())
}

/// Issue 20: the shipped fleet schema (`manifests/schema/fleet.schema.json`) is what
/// check-jsonschema judges fleet bodies by: it accepts the contract's example and refuses
/// known-bad fleets, each of which the parser refuses too, at the path named here.
#[tokio::test]
async fn the_shipped_fleet_schema_agrees_with_the_parser_under_check_jsonschema()
-> anyhow::Result<()> {
    let check_jsonschema = tool("FLEETLET_CHECK_JSONSCHEMA")?;
    let schema_file = workspace().join("manifests/schema/fleet.schema.json");
    let good = json!({
        "apiVersion": "fleetlet.dev/v1", "kind": "Fleet", "name": "kiosks",
        "selector": {"matchLabels": {"role": "kiosk"}, "matchFacts": {"arch": "aarch64"}},
        "parameters": {
            "imageTag": {"pattern": "^[0-9]+\\.[0-9]+$", "default": "1.4"},
            "greeting": {"pattern": "^[A-Za-z !]{1,40}$"}
        },
        "template": {
            "rollout": {"progressDeadlineSeconds": 300, "onFailure": "Rollback"},
            "resources": [
                {"id": "motd", "kind": "File", "spec": {"path": "/etc/motd",
                    "content": {"text": "{{ greeting }} from {{ agentId }}\n"}, "mode": "0644"}},
                {"id": "web", "kind": "Container",
                    "spec": {"image": "registry.local/kiosk:{{ imageTag }}"}}
            ]
        },
        "rolloutStrategy": {"batches": [{"limit": 1}, {"limit": "10%"}, {"limit": "50%"}, {}],
            "successThreshold": "90%", "batchTimeoutSeconds": 1800, "requireApproval": false}
    });
    let dir = tempfile::tempdir()?;
    let file = write_json(dir.path(), "good.json", &good)?;
    let (passed, output) = run(
        &check_jsonschema,
        &[Path::new("--schemafile"), &schema_file, &file],
    )
    .await?;
    assert!(
        passed,
        "check-jsonschema refuses the example fleet:\n{output}"
    );
    fleetlet_manifests::fleet::Fleet::from_value(good.clone())
        .map_err(|v| anyhow::anyhow!("the parser refuses the example: {v:?}"))?;

    let bad: [(&str, &str, Value); 5] = [
        ("unknown-field", "colour", json!("red")),
        ("kind", "kind", json!("Fleets")),
        (
            "zero-limit",
            "rolloutStrategy",
            json!({"batches": [{"limit": 0}]}),
        ),
        (
            "threshold",
            "rolloutStrategy",
            json!({"successThreshold": "101%"}),
        ),
        (
            "agent-id-declared",
            "parameters",
            json!({"agentId": {"pattern": ".*"}}),
        ),
    ];
    for (name, field, value) in bad {
        let mut fleet = good.clone();
        fleet[field] = value;
        let file = write_json(dir.path(), &format!("{name}.json"), &fleet)?;
        let (passed, output) = run(
            &check_jsonschema,
            &[Path::new("--schemafile"), &schema_file, &file],
        )
        .await?;
        assert!(!passed, "check-jsonschema accepts {name}:\n{output}");
        assert!(
            output.contains("Schema validation errors"),
            "{name}: check-jsonschema said:\n{output}"
        );
        assert!(
            fleetlet_manifests::fleet::Fleet::from_value(fleet).is_err(),
            "the parser accepts {name}"
        );
    }
    Ok(())
}
