//! Fleet validation that reports every violation with its JSON path, read field by field like a
//! manifest (`crate::validate`).
//!
//! Beyond each field's own rule, the template is checked as the manifest it will become: every
//! placeholder must name a declared parameter or `agentId`, and may appear only in string values
//! (not in object keys, ids or kinds); then the template is rendered with sample values — each
//! parameter's `default`, the agent id `agent-0` — and validated as an ordinary manifest, every
//! violation reported at its path under `template`. A string that holds a placeholder of a
//! parameter *without* a default cannot be judged before a device supplies the value: violations
//! at (or beneath) such a string are left to rendering, which refuses that device alone
//! (`RenderError::Invalid`).

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::placeholder::{placeholders, substitute_value};
use super::{
    AGENT_ID_PARAMETER, BatchSpec, FLEET_KIND, Fleet, FleetName, FleetTemplate,
    MAX_BATCH_TIMEOUT_SECONDS, MAX_BATCHES, MAX_PARAMETERS, ParameterName, ParameterSpec,
    RolloutStrategy, Selector, TemplateResource,
};
use crate::ids::{ManifestSignature, ResourceId};
use crate::manifest::{AgentManifest, Kind, MANIFEST_KIND, RolloutPolicy};
use crate::validate::{Fields, Report, child_path};
use crate::{API_VERSION, Violation};

/// The agent id a template is validated with.
pub(crate) const SAMPLE_AGENT_ID: &str = "agent-0";

impl Fleet {
    /// Parses and validates a fleet, reporting every violation with its JSON path.
    pub fn from_value(value: Value) -> Result<Self, Vec<Violation>> {
        let mut report = Report::default();
        match read_fleet(value, &mut report) {
            Some(fleet) if report.violations.is_empty() => Ok(fleet),
            _ => {
                if report.violations.is_empty() {
                    report.add("", "invalid fleet");
                }
                Err(report.violations)
            }
        }
    }

    /// Parses raw JSON bytes; a syntax error is one violation at the root.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, Vec<Violation>> {
        let value: Value = serde_json::from_slice(bytes).map_err(|error| {
            vec![Violation {
                path: String::new(),
                message: format!("malformed JSON: {error}"),
            }]
        })?;
        Self::from_value(value)
    }
}

impl<'de> Deserialize<'de> for Fleet {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Self::from_value(value).map_err(|violations| {
            let text: Vec<String> = violations.iter().map(ToString::to_string).collect();
            serde::de::Error::custom(format!("invalid fleet: {}", text.join("; ")))
        })
    }
}

fn read_fleet(value: Value, report: &mut Report) -> Option<Fleet> {
    let mut fields = Fields::of(value, "", report)?;
    let api_version: Option<String> = fields.required("apiVersion");
    let kind: Option<String> = fields.required("kind");
    let name: Option<FleetName> = fields.required("name");
    let selector: Option<Selector> = fields.required("selector");
    let raw_parameters: Option<Map<String, Value>> = fields.defaulted("parameters");
    let raw_template: Option<Value> = fields.required("template");
    let strategy: Option<RolloutStrategy> = fields.defaulted("rolloutStrategy");
    let signature: Option<Option<ManifestSignature>> = fields.optional("signature");
    fields.finish();

    if api_version.as_deref().is_some_and(|v| v != API_VERSION) {
        report.add("apiVersion", format!("must be \"{API_VERSION}\""));
    }
    if kind.as_deref().is_some_and(|k| k != FLEET_KIND) {
        report.add("kind", format!("must be \"{FLEET_KIND}\""));
    }
    if selector.as_ref().is_some_and(Selector::is_empty) {
        report.add(
            "selector",
            "must name at least one label (matchLabels) or fact (matchFacts)",
        );
    }
    let parameters = raw_parameters.map(|raw| read_parameters(raw, report));
    let template = match (raw_template, &parameters) {
        (Some(raw), Some(parameters)) => read_template(raw, parameters, report),
        // Without the declarations, placeholders cannot be judged; the parameters' own
        // violations are reported.
        _ => None,
    };
    if let Some(strategy) = &strategy {
        check_strategy(strategy, report);
    }
    Some(Fleet {
        api_version: api_version?,
        kind: kind?,
        name: name?,
        selector: selector?,
        parameters: parameters?,
        template: template?,
        rollout_strategy: strategy?,
        signature: signature?,
    })
}

/// The parameter declarations; a bad one is reported and left out, which fails the fleet.
fn read_parameters(
    raw: Map<String, Value>,
    report: &mut Report,
) -> BTreeMap<ParameterName, ParameterSpec> {
    if raw.len() > MAX_PARAMETERS {
        report.add(
            "parameters",
            format!("must declare at most {MAX_PARAMETERS} parameters"),
        );
    }
    let mut parameters = BTreeMap::new();
    for (name, value) in raw {
        let path = child_path("parameters", &name);
        let parsed_name = match ParameterName::try_from(name.as_str()) {
            Ok(_) if name == AGENT_ID_PARAMETER => {
                report.add(
                    &path,
                    "agentId is built in (the device's agent id) and cannot be declared",
                );
                None
            }
            Ok(parsed) => Some(parsed),
            Err(error) => {
                report.add(&path, format!("parameter name {error}"));
                None
            }
        };
        let spec: Option<ParameterSpec> = parse_at(&path, value, report);
        let Some(spec) = spec else { continue };
        let pattern_ok = match spec.regex() {
            Ok(regex) => {
                if let Some(default) = &spec.default
                    && !regex.is_match(default)
                {
                    report.add(
                        child_path(&path, "default"),
                        "does not match the parameter's pattern",
                    );
                }
                true
            }
            Err(error) => {
                report.add(child_path(&path, "pattern"), error.to_string());
                false
            }
        };
        if let (Some(name), true) = (parsed_name, pattern_ok) {
            parameters.insert(name, spec);
        }
    }
    parameters
}

/// `value` read as a `T`, or a violation at `path` (plus serde's path within it).
fn parse_at<T: serde::de::DeserializeOwned>(
    path: &str,
    value: Value,
    report: &mut Report,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(parsed) => Some(parsed),
        Err(error) => {
            let inner = error.path().to_string();
            let full = match inner.as_str() {
                "." | "" => path.to_owned(),
                _ if inner.starts_with('[') => format!("{path}{inner}"),
                _ => format!("{path}.{inner}"),
            };
            let message = error.into_inner().to_string();
            let message = message.split(" at line ").next().unwrap_or_default();
            report.add(full, message);
            None
        }
    }
}

/// The template: its resources with their placeholders checked, and then, rendered with sample
/// values, the manifest it becomes (see the module docs).
fn read_template(
    raw: Value,
    parameters: &BTreeMap<ParameterName, ParameterSpec>,
    report: &mut Report,
) -> Option<FleetTemplate> {
    let mut fields = Fields::of(raw, "template", report)?;
    let raw_rollout: Option<Option<Value>> = fields.optional("rollout");
    let raw_resources: Option<Vec<Value>> = fields.defaulted("resources");
    fields.finish();
    let raw_rollout = raw_rollout?;
    let raw_resources = raw_resources?;

    let mut resources = Vec::with_capacity(raw_resources.len());
    let mut complete = true;
    // Strings that name a parameter without a default: judged per device, not here.
    let mut undecided: BTreeSet<String> = BTreeSet::new();
    for (index, raw) in raw_resources.iter().enumerate() {
        let path = format!("resources[{index}]");
        match read_template_resource(raw, &path, parameters, report, &mut undecided) {
            Some(resource) => resources.push(resource),
            None => complete = false,
        }
    }
    if !complete {
        return None;
    }

    // Render with sample values and validate as a manifest.
    let lookup = |name: &str| -> Option<&str> {
        if name == AGENT_ID_PARAMETER {
            return Some(SAMPLE_AGENT_ID);
        }
        let spec = parameters.get(name)?;
        Some(spec.default.as_deref().unwrap_or("x"))
    };
    let mut rendered = Vec::with_capacity(resources.len());
    for resource in &resources {
        let spec = substitute_value(&resource.spec, &lookup).ok()?;
        rendered.push(json!({"id": resource.id, "kind": resource.kind, "spec": spec}));
    }
    let mut manifest = json!({
        "apiVersion": API_VERSION, "kind": MANIFEST_KIND, "agentId": SAMPLE_AGENT_ID,
        "resources": rendered,
    });
    if let Some(rollout) = &raw_rollout {
        manifest["rollout"] = rollout.clone();
    }
    let mut rollout_ok = true;
    if let Err(violations) = AgentManifest::from_value(manifest) {
        for violation in violations {
            let decided_later = undecided.iter().any(|string| {
                violation.path == *string
                    || violation.path.starts_with(&format!("{string}."))
                    || violation.path.starts_with(&format!("{string}["))
            });
            if decided_later {
                continue;
            }
            if violation.path.starts_with("rollout") {
                rollout_ok = false;
            }
            let path = if violation.path.is_empty() {
                "template".to_owned()
            } else {
                format!("template.{}", violation.path)
            };
            report.add(path, violation.message);
        }
    }
    let rollout = match raw_rollout {
        None => None,
        Some(raw) if rollout_ok => Some(serde_json::from_value::<RolloutPolicy>(raw).ok()?),
        Some(_) => return None,
    };
    Some(FleetTemplate { rollout, resources })
}

/// One template resource: id and kind as in a manifest, a spec object whose placeholders all
/// name declared parameters and stand in string values only.
fn read_template_resource(
    raw: &Value,
    path: &str,
    parameters: &BTreeMap<ParameterName, ParameterSpec>,
    report: &mut Report,
    undecided: &mut BTreeSet<String>,
) -> Option<TemplateResource> {
    let mut fields = Fields::of(raw.clone(), path, report)?;
    let id: Option<ResourceId> = fields.required("id");
    let kind: Option<Kind> = fields.required("kind");
    let spec: Option<Value> = fields.required("spec");
    fields.finish();
    let spec = spec?;
    let spec_path = format!("{path}.spec");
    if !spec.is_object() {
        report.add(format!("template.{spec_path}"), "must be an object");
        return None;
    }
    let mut ok = true;
    super::placeholder::visit_strings(&spec, &spec_path, &mut |at, text, is_key| {
        let found = match placeholders(text) {
            Ok(found) => found,
            Err(error) => {
                report.add(format!("template.{at}"), error.to_string());
                ok = false;
                return;
            }
        };
        if is_key {
            if !found.is_empty() {
                report.add(
                    format!("template.{at}"),
                    "placeholders may appear only in string values, not in keys",
                );
                ok = false;
            }
            return;
        }
        for placeholder in found {
            if placeholder.name == AGENT_ID_PARAMETER {
                continue;
            }
            match parameters.get(placeholder.name.as_str()) {
                None => {
                    report.add(
                        format!("template.{at}"),
                        format!(
                            "the placeholder {{{{ {} }}}} names no declared parameter",
                            placeholder.name
                        ),
                    );
                    ok = false;
                }
                Some(spec) if spec.default.is_none() => {
                    undecided.insert(at.to_owned());
                }
                Some(_) => {}
            }
        }
    });
    let resource = TemplateResource {
        id: id?,
        kind: kind?,
        spec,
    };
    ok.then_some(resource)
}

/// The strategy's rules beyond its types: batches bounded, only the last one without a limit,
/// a timeout in range.
fn check_strategy(strategy: &RolloutStrategy, report: &mut Report) {
    if strategy.batches.len() > MAX_BATCHES {
        report.add(
            "rolloutStrategy.batches",
            format!("must hold at most {MAX_BATCHES} batches"),
        );
    }
    let last = strategy.batches.len().saturating_sub(1);
    for (index, BatchSpec { limit }) in strategy.batches.iter().enumerate() {
        if limit.is_none() && index != last {
            report.add(
                format!("rolloutStrategy.batches[{index}]"),
                "only the last batch may leave out its limit (it takes the rest)",
            );
        }
    }
    if !(1..=MAX_BATCH_TIMEOUT_SECONDS).contains(&strategy.batch_timeout_seconds) {
        report.add(
            "rolloutStrategy.batchTimeoutSeconds",
            format!("must be between 1 and {MAX_BATCH_TIMEOUT_SECONDS} seconds"),
        );
    }
}
