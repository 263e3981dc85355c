//! The fleet types a manifest can carry: a fleet's template and parameter declarations, and the
//! provenance (`AgentManifest.fleet`) of a manifest rendered from one.
//!
//! They live beneath `manifest` because a manifest holds them; the fleet itself (selector,
//! rollout strategy, validation, rendering) is `crate::fleet`, above the manifest, and
//! re-exports these.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{
    AgentId, IDENTIFIER_PATTERN, InvalidValue, ManifestSignature, ResourceId, string_newtype,
};
use crate::manifest::{Kind, RolloutPolicy};

/// The placeholder every template may use without declaring it: the device's agent id.
pub const AGENT_ID_PARAMETER: &str = "agentId";
/// A parameter name is at most this many characters (a label key's limit).
pub const MAX_PARAMETER_NAME_CHARS: usize = 128;
/// A parameter's pattern is at most this many characters.
pub const MAX_PATTERN_CHARS: usize = 1024;

/// A fleet name follows the agent id rule.
fn check_fleet_name(value: &str) -> Result<(), InvalidValue> {
    AgentId::try_from(value).map(|_| ())
}

string_newtype!(
    /// The name of a fleet: 1–63 characters of `[a-z0-9-_.]`, starting with a letter or digit
    /// (the rule of an agent id).
    FleetName,
    check_fleet_name,
    pattern = Some(IDENTIFIER_PATTERN)
);

/// A parameter name is a label key that starts with a letter: its value comes from the label of
/// the same name, and it is written in placeholders as `{{ name }}`.
fn check_parameter_name(value: &str) -> Result<(), InvalidValue> {
    let valid = value.len() <= MAX_PARAMETER_NAME_CHARS
        && value.starts_with(|c: char| c.is_ascii_alphabetic())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-'));
    if valid {
        Ok(())
    } else {
        Err(InvalidValue(format!(
            "must be 1 to {MAX_PARAMETER_NAME_CHARS} characters of [A-Za-z0-9._/-] starting with a letter"
        )))
    }
}

string_newtype!(
    /// The name of a fleet parameter: a label key (1–128 characters of `[A-Za-z0-9._/-]`)
    /// starting with a letter.
    ParameterName,
    check_parameter_name,
    pattern = Some("^[A-Za-z][A-Za-z0-9._/-]{0,127}$")
);

/// The declaration of one parameter: the pattern every value must match, and the value used
/// when the device has no label of the parameter's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParameterSpec {
    /// A regular expression (Rust `regex` syntax, no look-around or back-references) that the
    /// whole value must match: it is anchored at both ends whether or not it says `^…$`.
    pub pattern: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

/// Why a pattern does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PatternError(pub String);

impl ParameterSpec {
    /// The pattern compiled and anchored at both ends; bounded in size, and matched in linear
    /// time (the `regex` crate has no backtracking), so no pattern can stall a manager or an
    /// agent.
    pub fn regex(&self) -> Result<regex::Regex, PatternError> {
        if self.pattern.chars().count() > MAX_PATTERN_CHARS {
            return Err(PatternError(format!(
                "must be at most {MAX_PATTERN_CHARS} characters"
            )));
        }
        regex::RegexBuilder::new(&format!("^(?:{})$", self.pattern))
            .size_limit(1 << 20)
            .build()
            .map_err(|error| PatternError(format!("is not a valid regular expression: {error}")))
    }

    /// Whether `value` matches the pattern (false when the pattern does not compile).
    pub fn matches(&self, value: &str) -> bool {
        self.regex().is_ok_and(|regex| regex.is_match(value))
    }
}

/// What a fleet renders for every device: an optional rollout policy and resources whose specs
/// may hold `{{ name }}` placeholders in their string values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FleetTemplate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutPolicy>,
    #[serde(default)]
    pub resources: Vec<TemplateResource>,
}

/// One resource of a template: its id and kind as in a manifest, and a spec that is a manifest
/// spec once its placeholders are replaced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TemplateResource {
    pub id: ResourceId,
    pub kind: Kind,
    pub spec: serde_json::Value,
}

/// Where a manifest rendered from a fleet came from (`AgentManifest.fleet`): the fleet, its
/// revision and the parameter values used for this device; for a signed fleet also what the
/// operator signed, so that an agent with trusted keys can check the manifest itself (see
/// `crate::signature::verify`).
///
/// On the wire it is exactly a [`FleetProvenance`] object; in memory it is boxed, so that the
/// manifest (which every agent holds and moves around) grows by one pointer, not by a fleet.
/// Its fields are read and written through `Deref` as if they were its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct FleetOrigin(Box<FleetProvenance>);

impl FleetOrigin {
    pub fn new(provenance: FleetProvenance) -> Self {
        Self(Box::new(provenance))
    }

    pub fn into_inner(self) -> FleetProvenance {
        *self.0
    }
}

impl From<FleetProvenance> for FleetOrigin {
    fn from(provenance: FleetProvenance) -> Self {
        Self::new(provenance)
    }
}

impl std::ops::Deref for FleetOrigin {
    type Target = FleetProvenance;
    fn deref(&self) -> &FleetProvenance {
        &self.0
    }
}

impl std::ops::DerefMut for FleetOrigin {
    fn deref_mut(&mut self) -> &mut FleetProvenance {
        &mut self.0
    }
}

/// The fields of a [`FleetOrigin`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FleetProvenance {
    pub name: FleetName,
    pub revision: u64,
    /// The value of every declared parameter for this device (`agentId` is the manifest's own).
    #[serde(default)]
    pub values: BTreeMap<ParameterName, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed: Option<SignedTemplate>,
}

/// The signed part of a fleet, as the operator signed it: template, parameter declarations and
/// the signature over them and the fleet's name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignedTemplate {
    pub template: FleetTemplate,
    #[serde(default)]
    pub parameters: BTreeMap<ParameterName, ParameterSpec>,
    #[schemars(with = "SignatureSchema")]
    pub signature: ManifestSignature,
}

/// The wire shape of a [`ManifestSignature`], for the JSON Schema only.
#[derive(schemars::JsonSchema)]
#[schemars(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct SignatureSchema {
    /// 16 lower-case hex characters.
    #[schemars(pattern("^[0-9a-f]{16}$"))]
    key_id: String,
    /// The standard base64 of the 64-byte ed25519 signature.
    #[schemars(pattern("^[A-Za-z0-9+/]{85}[AQgw]==$"))]
    ed25519: String,
}
