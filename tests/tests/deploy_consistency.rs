//! deploy/ is consistent: every Kubernetes YAML parses, the objects and Secret references match
//! `deploy/deploy.json`, probes point at routes the real manager serves (per its OpenAPI
//! document, and by calling them), and no secret value appears anywhere under deploy/.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::Context;
use fleetlet_tests::manager::ManagerProcess;
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn files_under(dir: &Path, found: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            files_under(&path, found)?;
        } else {
            found.push(path);
        }
    }
    Ok(())
}

/// Every document of every YAML file under deploy/kubernetes, with the file it came from.
fn kubernetes_documents() -> anyhow::Result<Vec<(PathBuf, Value)>> {
    let mut files = Vec::new();
    files_under(&deploy_dir().join("kubernetes"), &mut files)?;
    let mut documents = Vec::new();
    for file in files {
        assert!(
            matches!(
                file.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ),
            "{} is not YAML",
            file.display()
        );
        let text = std::fs::read_to_string(&file)?;
        // Documents are separated by `---` lines (the only separator these files use).
        let mut chunks = vec![String::new()];
        for line in text.lines() {
            if line.trim_end() == "---" {
                chunks.push(String::new());
            } else if let Some(chunk) = chunks.last_mut() {
                chunk.push_str(line);
                chunk.push('\n');
            }
        }
        for chunk in chunks {
            let value: Value = serde_yaml_ng::from_str(&chunk)
                .with_context(|| format!("{} does not parse", file.display()))?;
            if !value.is_null() {
                documents.push((file.clone(), value));
            }
        }
    }
    assert!(!documents.is_empty(), "no Kubernetes manifests found");
    Ok(documents)
}

fn deploy_json() -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(deploy_dir().join("deploy.json"))?;
    Ok(serde_json::from_str(&text)?)
}

/// Calls `visit` on every object nested anywhere in `value`.
fn walk<'a>(value: &'a Value, visit: &mut impl FnMut(&'a serde_json::Map<String, Value>)) {
    match value {
        Value::Object(map) => {
            visit(map);
            map.values().for_each(|child| walk(child, visit));
        }
        Value::Array(items) => items.iter().for_each(|child| walk(child, visit)),
        _ => {}
    }
}

#[test]
fn kubernetes_objects_match_deploy_json() -> anyhow::Result<()> {
    let documents = kubernetes_documents()?;
    let expected = deploy_json()?;
    let namespace = expected["namespace"].as_str().context("namespace")?;
    let mut declared = BTreeSet::new();
    for resource in expected["resources"].as_array().context("resources")? {
        let kind = resource["kind"].as_str().context("kind")?;
        let name = resource["name"].as_str().context("name")?;
        let file = deploy_dir().join(resource["file"].as_str().context("file")?);
        declared.insert((kind.to_owned(), name.to_owned()));
        let (_, object) = documents
            .iter()
            .find(|(path, doc)| {
                *path == file && doc["kind"] == kind && doc["metadata"]["name"] == name
            })
            .with_context(|| format!("{kind} {name} is not in {}", file.display()))?;
        if let Some(replicas) = resource.get("replicas") {
            assert_eq!(&object["spec"]["replicas"], replicas, "{kind} {name}");
        }
    }
    let mut found = BTreeSet::new();
    for (path, document) in &documents {
        let kind = document["kind"]
            .as_str()
            .context("every document has a kind")?;
        assert!(
            document["apiVersion"].is_string(),
            "{}: no apiVersion",
            path.display()
        );
        assert_ne!(
            kind,
            "Secret",
            "{}: Secrets are never stored in deploy/",
            path.display()
        );
        assert_eq!(
            document["metadata"]["namespace"],
            namespace,
            "{}: {kind} in the wrong namespace",
            path.display()
        );
        found.insert((
            kind.to_owned(),
            document["metadata"]["name"]
                .as_str()
                .context("name")?
                .to_owned(),
        ));
        // Selectors must select the pod template's labels.
        if let Some(selector) = document["spec"]["selector"]["matchLabels"].as_object() {
            for (key, value) in selector {
                assert_eq!(
                    &document["spec"]["template"]["metadata"]["labels"][key],
                    value,
                    "{}: the selector does not match the pods",
                    path.display()
                );
            }
        }
    }
    assert_eq!(
        found, declared,
        "deploy.json and deploy/kubernetes list different objects"
    );

    // The manager's image is the one deploy.json names (and the Containerfile builds).
    let manager = documents
        .iter()
        .find(|(_, d)| d["kind"] == "Deployment" && d["metadata"]["name"] == "fleetlet-manager")
        .context("manager Deployment")?;
    assert_eq!(
        manager.1["spec"]["template"]["spec"]["containers"][0]["image"],
        expected["image"]
    );
    Ok(())
}

#[test]
fn secret_references_are_exactly_those_of_deploy_json() -> anyhow::Result<()> {
    let documents = kubernetes_documents()?;
    let mut referenced = BTreeSet::new();
    for (_, document) in &documents {
        walk(document, &mut |map| {
            if let Some(reference) = map.get("secretKeyRef") {
                referenced.insert((
                    reference["name"].as_str().unwrap_or_default().to_owned(),
                    reference["key"].as_str().unwrap_or_default().to_owned(),
                ));
            }
            if let Some(secret) = map.get("secret")
                && let Some(name) = secret["secretName"].as_str()
            {
                let items = secret["items"].as_array().cloned().unwrap_or_default();
                assert!(!items.is_empty(), "secret volume {name} must list its keys");
                for item in items {
                    referenced.insert((
                        name.to_owned(),
                        item["key"].as_str().unwrap_or_default().to_owned(),
                    ));
                }
            }
        });
    }
    let mut declared = BTreeSet::new();
    for secret in deploy_json()?["secretRefs"]
        .as_array()
        .context("secretRefs")?
    {
        let name = secret["name"].as_str().context("name")?;
        let keys = secret["keys"].as_array().context("keys")?;
        assert_eq!(
            secret.as_object().map(|o| o.len()),
            Some(2),
            "secretRefs hold names and keys only: {secret}"
        );
        for key in keys {
            declared.insert((name.to_owned(), key.as_str().context("key")?.to_owned()));
        }
    }
    assert_eq!(referenced, declared);
    Ok(())
}

/// A value that looks like a credential written inline: URL passwords (other than a shell
/// variable or a placeholder), agent tokens, private keys.
fn secret_looking(text: &str) -> Option<String> {
    if text.contains("-----BEGIN") && text.contains("PRIVATE KEY") {
        return Some("a private key".to_owned());
    }
    let bytes = text.as_bytes();
    for (index, _) in text.match_indices("flt_") {
        let digits = bytes[index + 4..]
            .iter()
            .take_while(|b| b.is_ascii_hexdigit())
            .count();
        if digits >= 16 {
            return Some(format!("an agent token at byte {index}"));
        }
    }
    for (index, _) in text.match_indices("://") {
        let rest = &text[index + 3..];
        let authority: String = rest
            .chars()
            .take_while(|c| !c.is_whitespace() && !"/\"'`".contains(*c))
            .collect();
        if let Some((credentials, _host)) = authority.rsplit_once('@')
            && let Some((_user, password)) = credentials.split_once(':')
        {
            let placeholder = password.starts_with('$')
                || password.starts_with('*')
                || password.starts_with('<')
                || password.starts_with('{');
            if !placeholder {
                return Some(format!("a URL with a password: {authority}"));
            }
        }
    }
    None
}

#[test]
fn the_secret_detector_finds_what_it_should() {
    assert!(secret_looking("postgres://fleetlet:hunter2@db/fleetlet").is_some());
    assert!(secret_looking("token: flt_0123456789abcdef0123").is_some());
    assert!(secret_looking("postgres://fleetlet:${password}@127.0.0.1/x").is_none());
    assert!(secret_looking("postgres://fleetlet:***@host/db").is_none());
    assert!(secret_looking("https://example.com/path").is_none());
}

#[test]
fn no_secret_value_appears_under_deploy() -> anyhow::Result<()> {
    let mut files = Vec::new();
    files_under(&deploy_dir(), &mut files)?;
    for file in &files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("{} is not text", file.display()))?;
        assert_eq!(
            secret_looking(&text),
            None,
            "{} holds what looks like a secret",
            file.display()
        );
    }
    // Environment variables that carry secrets come from Secrets, never inline values.
    for (path, document) in kubernetes_documents()? {
        walk(&document, &mut |map| {
            if let (Some(Value::String(name)), Some(_)) = (map.get("name"), map.get("value")) {
                let upper = name.to_ascii_uppercase();
                let sensitive = ["TOKEN", "PASSWORD", "SECRET", "DATABASE_URL"]
                    .iter()
                    .any(|word| upper.contains(word));
                assert!(
                    !sensitive || upper.ends_with("_FILE"),
                    "{}: {name} has an inline value; use valueFrom.secretKeyRef or a file",
                    path.display()
                );
            }
        });
    }
    Ok(())
}

#[tokio::test]
async fn probes_point_at_routes_the_manager_serves() -> anyhow::Result<()> {
    let documents = kubernetes_documents()?;
    let manager = ManagerProcess::start_dev().await?;
    let client = reqwest::Client::new();
    let openapi: Value = client
        .get(format!("{}/api/v1/openapi.json", manager.url))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let mut probes = Vec::new();
    for (path, document) in &documents {
        if document["metadata"]["name"] != "fleetlet-manager" || document["kind"] != "Deployment" {
            continue;
        }
        for container in document["spec"]["template"]["spec"]["containers"]
            .as_array()
            .context("containers")?
        {
            let ports = container["ports"].as_array().cloned().unwrap_or_default();
            for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
                let get = &container[probe]["httpGet"];
                let route = get["path"]
                    .as_str()
                    .with_context(|| format!("{}: {probe} has no httpGet path", path.display()))?;
                // The probe's port is one the container declares, and the one it listens on.
                let port = &get["port"];
                let declared = ports
                    .iter()
                    .find(|p| p["name"] == *port || p["containerPort"] == *port)
                    .with_context(|| format!("{probe} uses an undeclared port {port}"))?;
                assert_eq!(declared["containerPort"], 7800);
                probes.push((probe, route.to_owned()));
            }
        }
    }
    let routes: BTreeSet<&str> = probes.iter().map(|(_, route)| route.as_str()).collect();
    assert!(
        routes.contains("/healthz") && routes.contains("/readyz"),
        "{probes:?}"
    );
    for (probe, route) in &probes {
        assert!(
            openapi["paths"].get(route).is_some(),
            "{probe} path {route} is not a manager route"
        );
        let status = client
            .get(format!("{}{route}", manager.url))
            .send()
            .await?
            .status();
        assert_eq!(status, 200, "{probe} {route} answers {status}");
    }
    Ok(())
}

#[test]
fn the_containerfile_builds_the_manager_binaries() -> anyhow::Result<()> {
    let text = std::fs::read_to_string(deploy_dir().join("Containerfile"))?;
    let from_count = text.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(from_count >= 2, "a multi-stage build");
    let manager_toml = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../manager/Cargo.toml"),
    )?;
    for binary in ["fleetlet-manager", "fleetlet"] {
        assert!(manager_toml.contains(&format!("name = \"{binary}\"")));
        assert!(
            text.contains(&format!("--bin {binary}")),
            "{binary} is not built"
        );
    }
    assert!(text.contains("ENTRYPOINT [\"/usr/local/bin/fleetlet-manager\"]"));
    Ok(())
}
