//! Manifest validation that reports every violation with its JSON path.
//!
//! serde stops at the first error, but an operator fixing a manifest wants the whole list at once.
//! So the manifest is read field by field from a `serde_json::Value`: each field is deserialized
//! on its own (through the validated newtypes, which hold the rules), every failure is recorded
//! with its path, and the reading goes on. Fields nobody asked for are violations too, so a typo
//! is never silently dropped.
//!
//! This is the only way into a manifest or a resource: [`AgentManifest::from_value`] and both
//! types' `Deserialize` are defined here, above the wire types of `manifest.rs`, which know
//! nothing of their validation.

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::ids::{AgentId, ManifestSignature, ResourceId, parse_key_id, parse_signature_bytes};
use crate::manifest::origin::FleetOrigin;
use crate::manifest::{
    AgentManifest, ContainerSpec, FileContent, FileSpec, Kind, MANIFEST_KIND,
    MAX_FILE_CONTENT_BYTES, MAX_MANIFEST_CONTENT_BYTES, MAX_PROGRESS_DEADLINE_SECONDS,
    MAX_RESOURCES, ManifestError, OnFailure, Resource, ResourceSpec, RolloutPolicy,
    SessionStorageSpec, SystemdUnitSpec, VolumeMount,
};
use crate::{API_VERSION, Violation};

/// Longest unit file text accepted.
const MAX_UNIT_TEXT_BYTES: usize = 64 * 1024;

/// Collects violations as a manifest is read.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) violations: Vec<Violation>,
}

impl Report {
    pub(crate) fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.violations.push(Violation {
            path: path.into(),
            message: message.into(),
        });
    }
}

/// What the rules across resources need of one resource: each of its fields that parsed, kept
/// even when another field of the same resource did not, so that one bad field never hides a
/// violation of another rule (a duplicate id, a volume naming no storage).
#[derive(Debug, Default)]
struct Seen {
    id: Option<ResourceId>,
    kind: Option<String>,
    file_path: Option<String>,
    content: Option<FileContent>,
    unit_name: Option<String>,
    volumes: Vec<ResourceId>,
}

/// The path of field `name` below `parent`. A name that is not a plain word (empty, or holding
/// a dot, bracket, quote or space) is written as `parent["name"]`, so that every violation,
/// even of an unknown field named "", points somewhere unambiguous.
pub(crate) fn child_path(parent: &str, name: &str) -> String {
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-');
    match (plain, parent.is_empty()) {
        (true, true) => name.to_owned(),
        (true, false) => format!("{parent}.{name}"),
        (false, _) => format!("{parent}[{}]", serde_json::Value::String(name.to_owned())),
    }
}

/// Reads the fields of one JSON object, recording a violation for each bad or unknown field.
pub(crate) struct Fields<'r> {
    path: String,
    map: Map<String, Value>,
    report: &'r mut Report,
}

impl<'r> Fields<'r> {
    /// Starts reading `value` as an object at `path`; `None` (with a violation) if it is not one.
    pub(crate) fn of(value: Value, path: &str, report: &'r mut Report) -> Option<Self> {
        match value {
            Value::Object(map) => Some(Self {
                path: path.to_owned(),
                map,
                report,
            }),
            other => {
                report.add(
                    path,
                    format!("must be an object, found {}", json_type(&other)),
                );
                None
            }
        }
    }

    fn child(&self, name: &str) -> String {
        child_path(&self.path, name)
    }

    /// A field that must be present and valid.
    pub(crate) fn required<T: DeserializeOwned>(&mut self, name: &str) -> Option<T> {
        let path = self.child(name);
        match self.map.remove(name) {
            None | Some(Value::Null) => {
                self.report.add(path, "is required");
                None
            }
            Some(value) => self.parse(&path, value),
        }
    }

    /// A field that may be absent or null; present, it must be valid.
    pub(crate) fn optional<T: DeserializeOwned>(&mut self, name: &str) -> Option<Option<T>> {
        let path = self.child(name);
        match self.map.remove(name) {
            None | Some(Value::Null) => Some(None),
            Some(value) => self.parse(&path, value).map(Some),
        }
    }

    /// A field with a default value when absent. An explicit null is refused: the JSON Schema
    /// (and so the OpenAPI document) types these fields without null, and the parser must accept
    /// exactly what the schema describes.
    pub(crate) fn defaulted<T: DeserializeOwned + Default>(&mut self, name: &str) -> Option<T> {
        if self.map.get(name).is_some_and(Value::is_null) {
            let path = self.child(name);
            self.map.remove(name);
            self.report
                .add(path, "must not be null (leave the field out instead)");
            return None;
        }
        self.optional(name).map(Option::unwrap_or_default)
    }

    fn parse<T: DeserializeOwned>(&mut self, path: &str, value: Value) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(parsed) => Some(parsed),
            Err(err) => {
                let inner = err.path().to_string();
                let full = if inner == "." || inner.is_empty() {
                    path.to_owned()
                } else if inner.starts_with('[') {
                    format!("{path}{inner}")
                } else {
                    format!("{path}.{inner}")
                };
                self.report
                    .add(full, clean_serde_message(&err.into_inner().to_string()));
                None
            }
        }
    }

    /// Ends the reading: every field left over is unknown.
    pub(crate) fn finish(self) {
        for name in self.map.keys() {
            let path = child_path(&self.path, name);
            self.report.add(path, "unknown field");
        }
    }
}

/// serde's messages end with " at line 1 column 5" for some inputs; paths already say where.
fn clean_serde_message(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl AgentManifest {
    /// Parses and validates a manifest, reporting every violation with its JSON path.
    pub fn from_value(value: serde_json::Value) -> Result<Self, Vec<Violation>> {
        manifest(value)
    }

    /// Parses raw JSON bytes; a syntax error is one violation at the root.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, ManifestError> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Malformed(e.to_string()))?;
        Self::from_value(value).map_err(ManifestError::Invalid)
    }
}

impl<'de> Deserialize<'de> for AgentManifest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        Self::from_value(value).map_err(|violations| {
            let text: Vec<String> = violations.iter().map(ToString::to_string).collect();
            serde::de::Error::custom(format!("invalid manifest: {}", text.join("; ")))
        })
    }
}

impl<'de> Deserialize<'de> for Resource {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        resource(value).map_err(|violations| {
            let text: Vec<String> = violations.iter().map(ToString::to_string).collect();
            serde::de::Error::custom(format!("invalid resource: {}", text.join("; ")))
        })
    }
}

/// Validates a whole manifest.
pub(crate) fn manifest(value: Value) -> Result<AgentManifest, Vec<Violation>> {
    let mut report = Report::default();
    let parsed = read_manifest(value, &mut report);
    match parsed {
        Some(manifest) if report.violations.is_empty() => Ok(manifest),
        _ => {
            if report.violations.is_empty() {
                report.add("", "invalid manifest");
            }
            Err(report.violations)
        }
    }
}

/// Validates one resource on its own (the rules that need the whole manifest are not checked).
pub(crate) fn resource(value: Value) -> Result<Resource, Vec<Violation>> {
    let mut report = Report::default();
    match read_resource(value, "", &mut report, &mut Seen::default()) {
        Some(resource) if report.violations.is_empty() => Ok(resource),
        _ => Err(report.violations),
    }
}

fn read_manifest(value: Value, report: &mut Report) -> Option<AgentManifest> {
    let mut fields = Fields::of(value, "", report)?;
    let api_version: Option<String> = fields.required("apiVersion");
    let kind: Option<String> = fields.required("kind");
    let agent_id: Option<AgentId> = fields.required("agentId");
    let generation: Option<Option<u64>> = fields.optional("generation");
    let raw_resources: Option<Vec<Value>> = fields.defaulted("resources");
    let raw_rollout: Option<Option<Value>> = fields.optional("rollout");
    let raw_signature: Option<Option<Value>> = fields.optional("signature");
    // Provenance of a manifest rendered from a fleet (`crate::fleet`); its signed template is
    // checked by the agent's signature verification, which renders it again.
    let fleet: Option<Option<FleetOrigin>> = fields.optional("fleet");
    fields.finish();
    let signature = match raw_signature {
        Some(Some(value)) => read_signature(value, "signature", report).map(Some),
        Some(None) => Some(None),
        None => None,
    };
    let rollout = match raw_rollout {
        Some(Some(value)) => read_rollout(value, "rollout", report).map(Some),
        Some(None) => Some(None),
        None => None,
    };

    if let Some(v) = &api_version
        && v != API_VERSION
    {
        report.add("apiVersion", format!("must be \"{API_VERSION}\""));
    }
    if let Some(k) = &kind
        && k != MANIFEST_KIND
    {
        report.add("kind", format!("must be \"{MANIFEST_KIND}\""));
    }
    let raw_resources = raw_resources.unwrap_or_default();
    if raw_resources.len() > MAX_RESOURCES {
        report.add(
            "resources",
            format!("must hold at most {MAX_RESOURCES} resources"),
        );
    }

    let mut resources = Vec::with_capacity(raw_resources.len());
    let mut seen = Vec::with_capacity(raw_resources.len());
    for (index, raw) in raw_resources.into_iter().enumerate() {
        let mut fields = Seen::default();
        // A resource that fails leaves no entry, which is fine: any violation fails the whole
        // manifest. Its parsed fields still take part in the checks across resources.
        resources.extend(read_resource(
            raw,
            &format!("resources[{index}]"),
            report,
            &mut fields,
        ));
        seen.push(fields);
    }
    check_across_resources(&seen, report);

    Some(AgentManifest {
        api_version: api_version?,
        kind: kind?,
        agent_id: agent_id?,
        generation: generation?,
        resources,
        rollout: rollout?,
        signature: signature?,
        fleet: fleet?,
    })
}

/// A manifest's `rollout` policy. The deadline is read as a signed integer so that a negative
/// value gets the range message rather than serde's type complaint.
fn read_rollout(value: Value, path: &str, report: &mut Report) -> Option<RolloutPolicy> {
    let mut fields = Fields::of(value, path, report)?;
    let deadline: Option<i64> = fields.required("progressDeadlineSeconds");
    let on_failure: Option<OnFailure> = fields.defaulted("onFailure");
    fields.finish();
    let deadline = deadline.and_then(|seconds| match u32::try_from(seconds) {
        Ok(seconds) if (1..=MAX_PROGRESS_DEADLINE_SECONDS).contains(&seconds) => Some(seconds),
        _ => {
            report.add(
                child_path(path, "progressDeadlineSeconds"),
                format!("must be between 1 and {MAX_PROGRESS_DEADLINE_SECONDS} seconds"),
            );
            None
        }
    });
    Some(RolloutPolicy {
        progress_deadline_seconds: deadline?,
        on_failure: on_failure?,
    })
}

/// A manifest's `signature`: both fields are checked, each violation with its own path.
fn read_signature(value: Value, path: &str, report: &mut Report) -> Option<ManifestSignature> {
    let mut fields = Fields::of(value, path, report)?;
    let key_id: Option<String> = fields.required("keyId");
    let ed25519: Option<String> = fields.required("ed25519");
    fields.finish();
    let key_id = key_id.and_then(|text| match parse_key_id(&text) {
        Ok(id) => Some(id),
        Err(error) => {
            report.add(child_path(path, error.field()), error.rule());
            None
        }
    });
    let ed25519 = ed25519.and_then(|text| match parse_signature_bytes(&text) {
        Ok(_) => Some(text),
        Err(error) => {
            report.add(child_path(path, error.field()), error.rule());
            None
        }
    });
    ManifestSignature::from_parts(&key_id?, &ed25519?).ok()
}

fn read_resource(
    value: Value,
    path: &str,
    report: &mut Report,
    seen: &mut Seen,
) -> Option<Resource> {
    let mut fields = Fields::of(value, path, report)?;
    let id: Option<ResourceId> = fields.required("id");
    let kind: Option<String> = fields.required("kind");
    let spec_value: Option<Value> = fields.required("spec");
    fields.finish();
    seen.id.clone_from(&id);
    seen.kind.clone_from(&kind);
    let (kind, spec_value) = (kind?, spec_value?);
    let spec_path = format!("{path}.spec");
    let spec = match Kind::parse(&kind) {
        Some(Kind::File) => {
            ResourceSpec::File(read_file_spec(spec_value, &spec_path, report, seen)?)
        }
        Some(Kind::SessionStorage) => {
            ResourceSpec::SessionStorage(read_session_storage_spec(spec_value, &spec_path, report)?)
        }
        Some(Kind::Container) => {
            ResourceSpec::Container(read_container_spec(spec_value, &spec_path, report, seen)?)
        }
        Some(Kind::SystemdUnit) => {
            ResourceSpec::SystemdUnit(read_unit_spec(spec_value, &spec_path, report, seen)?)
        }
        None => {
            // Kept verbatim and reported Unsupported by the agent: version skew must be visible.
            if kind.is_empty()
                || kind.len() > 63
                || !kind.chars().all(|c| c.is_ascii_alphanumeric())
            {
                report.add(
                    format!("{path}.kind"),
                    "must be 1 to 63 ASCII letters or digits",
                );
                return None;
            }
            // Every kind's spec is an object, including kinds a newer build will know.
            if !spec_value.is_object() {
                report.add(spec_path, "must be an object");
                return None;
            }
            ResourceSpec::Unknown {
                kind,
                spec: spec_value,
            }
        }
    };
    Some(Resource { id: id?, spec })
}

fn read_file_spec(
    value: Value,
    path: &str,
    report: &mut Report,
    seen: &mut Seen,
) -> Option<FileSpec> {
    let mut fields = Fields::of(value, path, report)?;
    // Every field is read before any `?`, so that all of their violations are reported.
    let file_path: Option<crate::ids::AbsPath> = fields.required("path");
    let content: Option<FileContent> = fields.required("content");
    let mode = fields.defaulted("mode");
    let owner = fields.optional("owner");
    let group = fields.optional("group");
    fields.finish();
    seen.file_path = file_path.as_ref().map(|p| p.as_str().to_owned());
    seen.content.clone_from(&content);
    Some(FileSpec {
        path: file_path?,
        content: content?,
        mode: mode?,
        owner: owner?,
        group: group?,
    })
}

fn read_session_storage_spec(
    value: Value,
    path: &str,
    report: &mut Report,
) -> Option<SessionStorageSpec> {
    let mut fields = Fields::of(value, path, report)?;
    let session_id = fields.required("sessionId");
    let size_limit_bytes: Option<u64> = fields.required("sizeLimitBytes");
    let expires_at: Option<Option<String>> = fields.optional("expiresAt");
    fields.finish();
    if size_limit_bytes == Some(0) {
        report.add(format!("{path}.sizeLimitBytes"), "must be greater than 0");
    }
    let expires_at = match expires_at? {
        None => None,
        Some(text) => {
            match time::OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339)
            {
                Ok(at) => Some(at),
                Err(_) => {
                    report.add(format!("{path}.expiresAt"), "must be an RFC 3339 timestamp");
                    return None;
                }
            }
        }
    };
    Some(SessionStorageSpec {
        session_id: session_id?,
        size_limit_bytes: size_limit_bytes?,
        expires_at,
    })
}

fn read_container_spec(
    value: Value,
    path: &str,
    report: &mut Report,
    seen: &mut Seen,
) -> Option<ContainerSpec> {
    let mut fields = Fields::of(value, path, report)?;
    let image = fields.required("image");
    let command = fields.defaulted("command");
    let args = fields.defaulted("args");
    let env: Option<BTreeMap<String, String>> = fields.defaulted("env");
    let working_dir = fields.optional("workingDir");
    let user: Option<Option<String>> = fields.optional("user");
    let ports = fields.defaulted("ports");
    let volumes: Option<Vec<VolumeMount>> = fields.defaulted("volumes");
    let restart_policy = fields.defaulted("restartPolicy");
    let pull_policy = fields.defaulted("pullPolicy");
    let memory_limit_bytes: Option<Option<u64>> = fields.optional("memoryLimitBytes");
    let cpu_millis: Option<Option<u32>> = fields.optional("cpuMillis");
    // Host access: valid to ask for (the contract names it), refused by the agent unless its own
    // configuration allows it, so that the refusal is a typed failure of that resource alone.
    let privileged = fields.defaulted("privileged");
    let host_network = fields.defaulted("hostNetwork");
    let host_pid = fields.defaulted("hostPid");
    let devices = fields.defaulted("devices");
    fields.finish();
    seen.volumes = volumes
        .iter()
        .flatten()
        .map(|v| v.session_storage.clone())
        .collect();

    if let Some(env) = &env {
        for name in env.keys() {
            let valid = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                report.add(
                    format!("{path}.env.{name}"),
                    "must be a name of letters, digits and '_'",
                );
            }
        }
    }
    if let Some(Some(user)) = &user {
        let valid = !user.is_empty()
            && user.len() <= 65
            && user
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
        if !valid {
            report.add(
                format!("{path}.user"),
                "must be a user name or uid, optionally with ':group'",
            );
        }
    }
    if let Some(Some(memory)) = memory_limit_bytes
        && memory < 4 * 1024 * 1024
    {
        report.add(
            format!("{path}.memoryLimitBytes"),
            "must be at least 4194304 (4 MiB)",
        );
    }
    if let Some(Some(0)) = cpu_millis {
        report.add(format!("{path}.cpuMillis"), "must be greater than 0");
    }
    Some(ContainerSpec {
        image: image?,
        command: command?,
        args: args?,
        env: env?,
        working_dir: working_dir?,
        user: user?,
        ports: ports?,
        volumes: volumes?,
        restart_policy: restart_policy?,
        pull_policy: pull_policy?,
        memory_limit_bytes: memory_limit_bytes?,
        cpu_millis: cpu_millis?,
        privileged: privileged?,
        host_network: host_network?,
        host_pid: host_pid?,
        devices: devices?,
    })
}

fn read_unit_spec(
    value: Value,
    path: &str,
    report: &mut Report,
    seen: &mut Seen,
) -> Option<SystemdUnitSpec> {
    let mut fields = Fields::of(value, path, report)?;
    let name: Option<crate::ids::UnitName> = fields.required("name");
    let unit: Option<String> = fields.required("unit");
    let enabled = fields.optional("enabled");
    let state = fields.defaulted("state");
    fields.finish();
    seen.unit_name = name.as_ref().map(|n| n.as_str().to_owned());
    if let Some(text) = &unit {
        if text.len() > MAX_UNIT_TEXT_BYTES {
            report.add(
                format!("{path}.unit"),
                format!("must be at most {MAX_UNIT_TEXT_BYTES} bytes"),
            );
        }
        if text.contains('\0') {
            report.add(format!("{path}.unit"), "must not contain a NUL byte");
        }
    }
    Some(SystemdUnitSpec {
        name: name?,
        unit: unit?,
        enabled: enabled?.unwrap_or(true),
        state: state?,
    })
}

/// Rules that need the whole manifest: unique ids, paths and unit names, content caps, volume
/// references. They read what each resource's valid fields are, so a resource with another
/// violation is still checked (and still counts for the others).
fn check_across_resources(resources: &[Seen], report: &mut Report) {
    let mut seen_ids = HashSet::new();
    let mut seen_paths = HashSet::new();
    let mut seen_units = HashSet::new();
    let mut total_content = 0usize;
    let storages: HashSet<&str> = resources
        .iter()
        .filter(|r| r.kind.as_deref() == Some(Kind::SessionStorage.as_str()))
        .filter_map(|r| r.id.as_ref().map(ResourceId::as_str))
        .collect();

    for (index, resource) in resources.iter().enumerate() {
        let path = format!("resources[{index}]");
        if let Some(id) = &resource.id
            && !seen_ids.insert(id.as_str())
        {
            report.add(format!("{path}.id"), format!("duplicate id \"{id}\""));
        }
        if let Some(file_path) = &resource.file_path
            && !seen_paths.insert(file_path.as_str())
        {
            report.add(
                format!("{path}.spec.path"),
                "another File resource writes the same path",
            );
        }
        match resource.content.as_ref().map(FileContent::bytes) {
            Some(Ok(bytes)) if bytes.len() > MAX_FILE_CONTENT_BYTES => report.add(
                format!("{path}.spec.content"),
                format!("must be at most {MAX_FILE_CONTENT_BYTES} bytes"),
            ),
            Some(Ok(bytes)) => total_content += bytes.len(),
            Some(Err(_)) => report.add(
                format!("{path}.spec.content.base64"),
                "must be valid base64",
            ),
            None => {}
        }
        if let Some(name) = &resource.unit_name
            && !seen_units.insert(name.as_str())
        {
            report.add(
                format!("{path}.spec.name"),
                "another SystemdUnit resource has the same name",
            );
        }
        for (v, storage) in resource.volumes.iter().enumerate() {
            if !storages.contains(storage.as_str()) {
                report.add(
                    format!("{path}.spec.volumes[{v}].sessionStorage"),
                    format!("names no SessionStorage resource \"{storage}\" of this manifest"),
                );
            }
        }
    }
    if total_content > MAX_MANIFEST_CONTENT_BYTES {
        report.add(
            "resources",
            format!("inline content must total at most {MAX_MANIFEST_CONTENT_BYTES} bytes"),
        );
    }
}

#[cfg(test)]
mod tests;
