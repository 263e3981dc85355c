//! Rendering a fleet into one device's `AgentManifest`: pure functions of the fleet, the
//! device's id and labels.
//!
//! A device gets a whole manifest or a typed reason, never part of one: its values are resolved
//! first (label of the parameter's name, else the default; each must match its pattern), then
//! every placeholder is replaced literally, then the result is validated like any manifest.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::placeholder::{SubstituteError, substitute_value};
use super::{
    AGENT_ID_PARAMETER, Fleet, FleetOrigin, FleetProvenance, FleetTemplate, ParameterName,
    ParameterSpec, SignedTemplate,
};
use crate::Violation;
use crate::ids::AgentId;
use crate::manifest::{AgentManifest, MANIFEST_KIND};

/// Why a fleet was not rendered for a device.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RenderError {
    /// The device has no label of the parameter's name and the parameter has no default.
    #[error("parameter {name} has no value: no label {name} on the device and no default")]
    ParameterMissing { name: String },
    /// The device's value for the parameter does not match the parameter's pattern.
    #[error("the value of parameter {name} does not match its pattern")]
    ParameterInvalid { name: String },
    /// The rendered manifest breaks the manifest rules (paths are the manifest's).
    #[error("the rendered manifest is invalid: {}", join(.0))]
    Invalid(Vec<Violation>),
}

fn join(violations: &[Violation]) -> String {
    let text: Vec<String> = violations.iter().map(ToString::to_string).collect();
    text.join("; ")
}

/// The value of every declared parameter for a device with `labels`: the label of the same
/// name, else the default; each must match its pattern. The first parameter (by name) without a
/// value, or with a value outside its pattern, is the error.
pub fn resolve_values(
    parameters: &BTreeMap<ParameterName, ParameterSpec>,
    labels: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, RenderError> {
    let mut values = BTreeMap::new();
    for (name, spec) in parameters {
        let value = labels
            .get(name.as_str())
            .or(spec.default.as_ref())
            .ok_or_else(|| RenderError::ParameterMissing {
                name: name.to_string(),
            })?;
        if !spec.matches(value) {
            return Err(RenderError::ParameterInvalid {
                name: name.to_string(),
            });
        }
        values.insert(name.to_string(), value.clone());
    }
    Ok(values)
}

/// The manifest `template` becomes for `agent_id` with `values` (one per parameter; `agentId`
/// is the agent id), without generation, signature or provenance. Values are not checked
/// against patterns here ([`resolve_values`] and signature verification do that).
pub fn render_template(
    template: &FleetTemplate,
    values: &BTreeMap<String, String>,
    agent_id: &AgentId,
) -> Result<AgentManifest, RenderError> {
    let lookup = |name: &str| -> Option<&str> {
        if name == AGENT_ID_PARAMETER {
            Some(agent_id.as_str())
        } else {
            values.get(name).map(String::as_str)
        }
    };
    let mut resources = Vec::with_capacity(template.resources.len());
    for (index, resource) in template.resources.iter().enumerate() {
        let spec = substitute_value(&resource.spec, &lookup).map_err(|error| match error {
            SubstituteError::Unknown(name) => RenderError::ParameterMissing { name },
            SubstituteError::Malformed(error) => RenderError::Invalid(vec![Violation {
                path: format!("resources[{index}].spec"),
                message: error.to_string(),
            }]),
        })?;
        resources.push(json!({"id": resource.id, "kind": resource.kind, "spec": spec}));
    }
    let mut manifest = json!({
        "apiVersion": crate::API_VERSION,
        "kind": MANIFEST_KIND,
        "agentId": agent_id,
        "resources": Value::Array(resources),
    });
    if let Some(rollout) = &template.rollout {
        manifest["rollout"] = json!(rollout);
    }
    AgentManifest::from_value(manifest).map_err(RenderError::Invalid)
}

/// The manifest `fleet` renders for the device `agent_id` with `labels`, at fleet revision
/// `revision`: resources and rollout policy from the template, and the provenance
/// (`AgentManifest.fleet`) with the values used and, for a signed fleet, what was signed.
pub fn render(
    fleet: &Fleet,
    revision: u64,
    agent_id: &AgentId,
    labels: &BTreeMap<String, String>,
) -> Result<AgentManifest, RenderError> {
    let values = resolve_values(&fleet.parameters, labels)?;
    let mut manifest = render_template(&fleet.template, &values, agent_id)?;
    let values = values
        .into_iter()
        .filter_map(|(name, value)| Some((ParameterName::try_from(name).ok()?, value)))
        .collect();
    manifest.fleet = Some(FleetOrigin::new(FleetProvenance {
        name: fleet.name.clone(),
        revision,
        values,
        signed: fleet.signature.as_ref().map(|signature| SignedTemplate {
            template: fleet.template.clone(),
            parameters: fleet.parameters.clone(),
            signature: signature.clone(),
        }),
    }));
    Ok(manifest)
}
