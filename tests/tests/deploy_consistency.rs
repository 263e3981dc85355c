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
        if kind == "Namespace" {
            // Cluster-scoped: the namespace everything else lives in.
            assert_eq!(
                document["metadata"]["name"],
                namespace,
                "{}",
                path.display()
            );
            assert!(document["metadata"]["namespace"].is_null());
        } else {
            assert_eq!(
                document["metadata"]["namespace"],
                namespace,
                "{}: {kind} in the wrong namespace",
                path.display()
            );
        }
        found.insert((
            kind.to_owned(),
            document["metadata"]["name"]
                .as_str()
                .context("name")?
                .to_owned(),
        ));
        // Workload selectors must select the pod template's labels.
        if let (Some(selector), true) = (
            document["spec"]["selector"]["matchLabels"].as_object(),
            document["spec"]["template"].is_object(),
        ) {
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
    // The server and the CLI are separate crates, so the image names both packages.
    for (binary, package, dir) in [
        ("fleetlet-manager", "fleetlet-manager", "manager"),
        ("fleetlet", "fleetlet-cli", "cli"),
    ] {
        let toml = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../{dir}/Cargo.toml")),
        )?;
        assert!(
            toml.contains(&format!("name = \"{binary}\"")),
            "{dir}/Cargo.toml"
        );
        assert!(
            text.contains(&format!("-p {package}")),
            "{package} is not built"
        );
        assert!(
            text.contains(&format!("COPY {dir} {dir}")),
            "{dir} is not copied"
        );
        assert!(
            text.contains(&format!("--bin {binary}")),
            "{binary} is not built"
        );
    }
    assert!(text.contains("ENTRYPOINT [\"/usr/local/bin/fleetlet-manager\"]"));
    Ok(())
}

/// The object of `kind` named `name`.
fn object<'a>(documents: &'a [(PathBuf, Value)], kind: &str, name: &str) -> &'a Value {
    &documents
        .iter()
        .find(|(_, d)| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} under deploy/kubernetes"))
        .1
}

/// True when a `matchLabels` selector (every pair must be present) selects `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let Some(required) = selector["matchLabels"].as_object() else {
        return false;
    };
    !required.is_empty() && required.iter().all(|(key, value)| labels[key] == *value)
}

/// The last `USER` of the Containerfile, as numeric `(uid, gid)`.
fn containerfile_user() -> anyhow::Result<(u64, Option<u64>)> {
    let text = std::fs::read_to_string(deploy_dir().join("Containerfile"))?;
    let user = text
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("USER "))
        .context("the Containerfile sets no USER")?
        .trim();
    let (uid, gid) = match user.split_once(':') {
        Some((uid, gid)) => (uid, Some(gid)),
        None => (user, None),
    };
    // A name cannot be checked by the kubelet against runAsNonRoot: it refuses to start the
    // container ("image has non-numeric user").
    let uid: u64 = uid
        .parse()
        .with_context(|| format!("USER {user}: the user must be a number"))?;
    let gid = gid
        .map(|gid| gid.parse::<u64>())
        .transpose()
        .with_context(|| format!("USER {user}: the group must be a number"))?;
    assert_ne!(uid, 0, "the image runs as root");
    Ok((uid, gid))
}

#[test]
fn the_pods_can_start_under_restricted_policies_and_survive_a_drain() -> anyhow::Result<()> {
    let documents = kubernetes_documents()?;
    let namespace = deploy_json()?["namespace"]
        .as_str()
        .context("namespace")?
        .to_owned();

    // The Namespace comes first in `kubectl apply -f deploy/kubernetes/` (files are applied in
    // name order) and enforces the restricted Pod Security Standard.
    let (namespace_file, namespace_object) = documents
        .iter()
        .find(|(_, d)| d["kind"] == "Namespace")
        .context("no Namespace under deploy/kubernetes")?;
    assert_eq!(namespace_object["metadata"]["name"], namespace.as_str());
    assert_eq!(
        namespace_object["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    let first_file = documents
        .iter()
        .map(|(path, _)| path)
        .min()
        .context("files")?;
    assert_eq!(
        first_file, namespace_file,
        "the Namespace's file must sort first"
    );

    // The manager's numeric user is the same in the image and in the pod.
    let (uid, gid) = containerfile_user()?;
    let manager = object(&documents, "Deployment", "fleetlet-manager");
    let manager_pod = &manager["spec"]["template"];
    let pod_security = &manager_pod["spec"]["securityContext"];
    assert_eq!(pod_security["runAsNonRoot"], true);
    assert_eq!(
        pod_security["runAsUser"], uid,
        "runAsUser and the image's USER differ"
    );
    if let Some(gid) = gid {
        assert_eq!(
            pod_security["runAsGroup"], gid,
            "runAsGroup and the image's group differ"
        );
    }

    // Every pod: no service-account token, non-root with a numeric user, the runtime's
    // seccomp profile, and containers with bounded resources and no privileges to gain.
    let postgres = object(&documents, "StatefulSet", "fleetlet-postgres");
    for workload in [manager, postgres] {
        let name = &workload["metadata"]["name"];
        let spec = &workload["spec"]["template"]["spec"];
        assert_eq!(spec["automountServiceAccountToken"], false, "{name}");
        let security = &spec["securityContext"];
        assert_eq!(security["runAsNonRoot"], true, "{name}");
        assert!(
            security["runAsUser"].as_u64().is_some_and(|uid| uid > 0),
            "{name}: runAsUser must be a non-zero number"
        );
        assert_eq!(
            security["seccompProfile"]["type"], "RuntimeDefault",
            "{name}"
        );
        for container in spec["containers"].as_array().context("containers")? {
            let resources = &container["resources"];
            for (class, what) in [
                ("requests", "cpu"),
                ("requests", "memory"),
                ("limits", "cpu"),
                ("limits", "memory"),
            ] {
                assert!(
                    resources[class][what].is_string(),
                    "{name}: no {class}.{what}"
                );
            }
            let security = &container["securityContext"];
            assert_eq!(security["allowPrivilegeEscalation"], false, "{name}");
            assert_eq!(security["readOnlyRootFilesystem"], true, "{name}");
            assert_eq!(
                security["capabilities"]["drop"],
                serde_json::json!(["ALL"]),
                "{name}"
            );
        }
    }

    // Two manager replicas stay apart and a drain leaves at least one serving.
    let labels = &manager_pod["metadata"]["labels"];
    let replicas = manager["spec"]["replicas"].as_u64().context("replicas")?;
    let budget = documents
        .iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"] == "PodDisruptionBudget" && selects(&d["spec"]["selector"], labels))
        .context("no PodDisruptionBudget selects the manager's pods")?;
    let min_available = budget["spec"]["minAvailable"]
        .as_u64()
        .context("the manager's budget sets minAvailable as a number")?;
    assert!(
        (1..replicas).contains(&min_available),
        "minAvailable {min_available} of {replicas} replicas either protects nothing or blocks every drain"
    );
    let spread = manager_pod["spec"]["topologySpreadConstraints"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        spread.iter().any(|constraint| {
            constraint["topologyKey"] == "kubernetes.io/hostname"
                && selects(&constraint["labelSelector"], labels)
        }),
        "the manager's replicas are not spread across nodes"
    );

    // Network: the manager takes connections on its port; PostgreSQL only from the manager.
    let policies: Vec<&Value> = documents
        .iter()
        .map(|(_, d)| d)
        .filter(|d| d["kind"] == "NetworkPolicy")
        .collect();
    let policy_for = |pod_labels: &Value| -> &Value {
        policies
            .iter()
            .copied()
            .find(|p| selects(&p["spec"]["podSelector"], pod_labels))
            .unwrap_or_else(|| panic!("no NetworkPolicy selects {pod_labels}"))
    };
    let manager_policy = policy_for(labels);
    assert!(
        manager_policy["spec"]["ingress"]
            .as_array()
            .context("manager ingress")?
            .iter()
            .any(|rule| rule["ports"].as_array().is_some_and(|ports| ports
                .iter()
                .any(|p| p["port"] == 7800 || p["port"] == "http"))),
        "the manager's port is not open"
    );
    let postgres_policy = policy_for(&postgres["spec"]["template"]["metadata"]["labels"]);
    let types = &postgres_policy["spec"]["policyTypes"];
    assert!(
        types
            .as_array()
            .is_some_and(|t| t.contains(&Value::from("Ingress")))
    );
    let rules = postgres_policy["spec"]["ingress"]
        .as_array()
        .context("PostgreSQL's policy lists its ingress")?;
    assert!(!rules.is_empty());
    for rule in rules {
        let from = rule["from"]
            .as_array()
            .context("every rule names its peers")?;
        assert!(!from.is_empty(), "an ingress rule open to everyone: {rule}");
        for peer in from {
            assert_eq!(
                peer.as_object().map(|p| p.keys().collect::<Vec<_>>()),
                Some(vec![&"podSelector".to_owned()]),
                "PostgreSQL admits a peer other than pods of its namespace: {peer}"
            );
            assert!(
                selects(&peer["podSelector"], labels),
                "PostgreSQL admits pods other than the manager's: {peer}"
            );
        }
        assert_eq!(
            rule["ports"],
            serde_json::json!([{"port": 5432, "protocol": "TCP"}])
        );
    }
    Ok(())
}
