//! Fleets (docs/fleets.md, docs/reference.md "Fleet"): one template rendered into the manifest
//! of every device a selector picks, with typed parameters, and the strategy that moves a new
//! revision through the selected devices in batches.
//!
//! The types here are the wire body of `PUT /api/v1/fleets/{name}`. A fleet is built only
//! through [`Fleet::from_value`] (`fleet/validate.rs`, which `Deserialize` uses too), so every
//! fleet value in the program has passed validation; [`render`] (`fleet/render.rs`) turns one
//! into a device's `AgentManifest`, purely. The template and parameter types live beneath the
//! manifest, which carries them in its `fleet` provenance, and are re-exported here.

mod placeholder;
mod render;
mod validate;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::ids::ManifestSignature;
pub use crate::manifest::origin::{
    AGENT_ID_PARAMETER, FleetName, FleetOrigin, FleetProvenance, FleetTemplate,
    MAX_PARAMETER_NAME_CHARS, MAX_PATTERN_CHARS, ParameterName, ParameterSpec, PatternError,
    SignedTemplate, TemplateResource,
};
pub use placeholder::{Placeholder, PlaceholderError, placeholders};
pub use render::{RenderError, render, render_template, resolve_values};

/// The `kind` of a fleet body.
pub const FLEET_KIND: &str = "Fleet";
/// A fleet declares at most this many parameters.
pub const MAX_PARAMETERS: usize = 64;
/// A rollout strategy has at most this many batches.
pub const MAX_BATCHES: usize = 100;
/// `batchTimeoutSeconds` when left out: 30 minutes.
pub const DEFAULT_BATCH_TIMEOUT_SECONDS: u64 = 1800;
/// The longest `batchTimeoutSeconds` accepted: one week.
pub const MAX_BATCH_TIMEOUT_SECONDS: u64 = 604_800;

/// A fleet: which devices (selector), what they run (template with parameters) and how a new
/// revision reaches them (rollout strategy); optionally signed by an operator.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Fleet {
    pub api_version: String,
    /// Always `Fleet`.
    pub kind: String,
    pub name: FleetName,
    pub selector: Selector,
    #[serde(default)]
    pub parameters: BTreeMap<ParameterName, ParameterSpec>,
    pub template: FleetTemplate,
    #[serde(default)]
    pub rollout_strategy: RolloutStrategy,
    /// The operator's signature over the name, template and parameters
    /// (`crate::signature::fleet_payload`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<crate::manifest::origin::SignatureSchema>")]
    pub signature: Option<ManifestSignature>,
}

/// Which devices a fleet selects: every label of `matchLabels` and every fact of `matchFacts`
/// must be present with exactly that value. At least one of them must be given (a fleet never
/// takes every device by accident).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Selector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_facts: BTreeMap<String, String>,
}

impl Selector {
    /// Whether a device with these labels and facts (`Facts::to_map`) is selected.
    pub fn matches(
        &self,
        labels: &BTreeMap<String, String>,
        facts: &BTreeMap<String, String>,
    ) -> bool {
        let all = |wanted: &BTreeMap<String, String>, have: &BTreeMap<String, String>| {
            wanted
                .iter()
                .all(|(key, value)| have.get(key) == Some(value))
        };
        all(&self.match_labels, labels) && all(&self.match_facts, facts)
    }

    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_facts.is_empty()
    }
}

/// How a new revision goes out: batch by batch, each judged against `successThreshold` within
/// `batchTimeoutSeconds`, optionally waiting for an operator's approval between batches.
///
/// Left out, it is one device first, then all the others (`[{"limit": 1}, {}]`), with a
/// threshold of 100%, a 30-minute timeout and no approval: a broken revision stops after one
/// device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RolloutStrategy {
    pub batches: Vec<BatchSpec>,
    pub success_threshold: Percent,
    pub batch_timeout_seconds: u64,
    pub require_approval: bool,
}

impl Default for RolloutStrategy {
    fn default() -> Self {
        Self {
            batches: vec![
                BatchSpec {
                    limit: Some(BatchLimit::Count(1)),
                },
                BatchSpec { limit: None },
            ],
            success_threshold: Percent(100),
            batch_timeout_seconds: DEFAULT_BATCH_TIMEOUT_SECONDS,
            require_approval: false,
        }
    }
}

impl RolloutStrategy {
    /// How many devices each batch takes when `selected` devices are selected, in order. Pure.
    ///
    /// Each batch takes its own limit of the devices not yet taken: a count as is, a percentage
    /// of `selected` rounded **up** (so `10%` of 5 devices is 1, never 0); a batch without a limit
    /// takes all that are left. When the listed batches leave devices over, one more batch takes
    /// them. A batch that would be empty is left out, so the sizes are all positive, sum to
    /// `selected` and, for `selected > 0`, there is at least one; for 0 devices the list is empty.
    pub fn batch_sizes(&self, selected: usize) -> Vec<usize> {
        let mut sizes = Vec::new();
        let mut left = selected;
        for batch in &self.batches {
            if left == 0 {
                break;
            }
            let wanted = match batch.limit {
                None => left,
                Some(BatchLimit::Count(count)) => usize::try_from(count).unwrap_or(usize::MAX),
                Some(BatchLimit::Percent(percent)) => {
                    (selected.saturating_mul(usize::from(percent))).div_ceil(100)
                }
            };
            let size = wanted.min(left);
            if size > 0 {
                sizes.push(size);
                left -= size;
            }
        }
        if left > 0 {
            sizes.push(left);
        }
        sizes
    }

    /// Whether `succeeded` of `devices` meets the success threshold (an empty batch does).
    pub fn threshold_met(&self, succeeded: usize, devices: usize) -> bool {
        succeeded.saturating_mul(100)
            >= devices.saturating_mul(usize::from(self.success_threshold.0))
    }
}

/// One batch of a rollout: `{"limit": 5}`, `{"limit": "10%"}`, or `{}` for the rest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatchSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<BatchLimit>,
}

/// How many devices a batch takes: a count (a JSON number, at least 1) or a percentage of the
/// selected devices (a string such as `"10%"`, 1 to 100).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchLimit {
    Count(u32),
    Percent(u8),
}

impl Serialize for BatchLimit {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            BatchLimit::Count(count) => serializer.serialize_u32(*count),
            BatchLimit::Percent(percent) => serializer.collect_str(&format_args!("{percent}%")),
        }
    }
}

impl<'de> Deserialize<'de> for BatchLimit {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::Number(number) => number
                .as_u64()
                .and_then(|count| u32::try_from(count).ok())
                .filter(|count| *count >= 1)
                .map(BatchLimit::Count)
                .ok_or_else(|| D::Error::custom("a count must be a whole number of at least 1")),
            serde_json::Value::String(text) => parse_percent(&text)
                .filter(|percent| *percent >= 1)
                .map(BatchLimit::Percent)
                .ok_or_else(|| D::Error::custom("a percentage must be written \"1%\" to \"100%\"")),
            _ => Err(D::Error::custom(
                "must be a count (a number) or a percentage (a string such as \"10%\")",
            )),
        }
    }
}

impl schemars::JsonSchema for BatchLimit {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "BatchLimit".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"oneOf": [
            {"type": "integer", "minimum": 1, "maximum": u32::MAX},
            {"type": "string", "pattern": "^(100|[1-9][0-9]?)%$"},
        ]})
    }
}

/// A percentage from 0 to 100, written `"90%"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Percent(pub u8);

impl Serialize for Percent {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{}%", self.0))
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let text = String::deserialize(deserializer)?;
        parse_percent(&text)
            .map(Percent)
            .ok_or_else(|| D::Error::custom("must be a percentage written \"0%\" to \"100%\""))
    }
}

impl schemars::JsonSchema for Percent {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Percent".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "pattern": "^(100|[1-9]?[0-9])%$"})
    }
}

/// `"0%"` to `"100%"`: digits without a sign or leading zero, then `%`.
fn parse_percent(text: &str) -> Option<u8> {
    let digits = text.strip_suffix('%')?;
    let canonical = !digits.is_empty()
        && digits.len() <= 3
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    let value: u8 = digits.parse().ok().filter(|_| canonical)?;
    (value <= 100).then_some(value)
}

#[cfg(test)]
mod tests;
