//! `fleetlet fleet diff -f FILE`: what applying a fleet would do, worked out here from what the
//! manager already serves (the API has no dry run): the agents with their labels (and facts,
//! read from their status when the selector matches facts), each selected device's current
//! manifest, and the fleet's current devices. The fleet is rendered locally with the wire
//! crate's own `render`, so the plan is the manager's rendering, not a second implementation.
//!
//! A device is compared by its resources and rollout policy; the fleet provenance (revision,
//! values) is not a change a device would act on.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use fleetlet_manifests::api::{AgentSummary, StatusView};
use fleetlet_manifests::fleet::{Fleet, render};
use fleetlet_manifests::fleet_api::FleetDeviceView;
use fleetlet_manifests::{AgentId, AgentManifest};
use reqwest::{Method, StatusCode};

use super::super::CliError;
use super::super::client::{Client, segment};
use super::super::manifest_file::{Change, diff};
use super::super::output::print;
use super::fleet_file::read_fleet;

/// What the diff knows about one agent.
#[derive(Debug, Clone)]
pub(super) struct Device {
    pub agent_id: AgentId,
    pub labels: BTreeMap<String, String>,
    /// The facts the agent reported (empty when it never did, or when the selector does not
    /// look at facts).
    pub facts: BTreeMap<String, String>,
    /// Its manifest now (read only for selected devices).
    pub current: Option<AgentManifest>,
    /// Whether it is one of the fleet's devices now.
    pub in_fleet: bool,
}

/// What applying the fleet would do to one device.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Outcome {
    Unchanged,
    /// A new manifest: its resource changes, and whether the rollout policy changes too.
    Changed {
        changes: Vec<Change>,
        rollout_changed: bool,
        newly_selected: bool,
    },
    /// Selected, but the fleet cannot be rendered for it (the device would say
    /// `ParameterMissing` / `ParameterInvalid`); it keeps its manifest.
    NotRendered(String),
    /// Its manifest comes from another fleet: selected by both, it would be in conflict and
    /// left alone.
    Conflict(String),
    /// No longer selected: released, keeping its manifest.
    Released,
}

/// The plan for a whole fleet.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Plan {
    pub name: String,
    pub selected: usize,
    /// Every device with something to say, by agent id (unchanged ones too, for the counts).
    pub devices: Vec<(String, Outcome)>,
}

impl Plan {
    fn count(&self, wanted: fn(&Outcome) -> bool) -> usize {
        self.devices.iter().filter(|(_, o)| wanted(o)).count()
    }

    /// Whether applying would change any device's manifest or release one.
    pub(super) fn has_changes(&self) -> bool {
        self.count(|o| matches!(o, Outcome::Changed { .. } | Outcome::Released)) > 0
    }
}

/// Works out the plan: pure, over what was read from the manager.
pub(super) fn plan(fleet: &Fleet, devices: &[Device]) -> Plan {
    let name = fleet.name.to_string();
    let mut selected = 0;
    let mut outcomes = Vec::new();
    for device in devices {
        let id = device.agent_id.to_string();
        if !fleet.selector.matches(&device.labels, &device.facts) {
            if device.in_fleet {
                outcomes.push((id, Outcome::Released));
            }
            continue;
        }
        selected += 1;
        let owner = device
            .current
            .as_ref()
            .and_then(|m| m.fleet.as_ref())
            .map(|origin| origin.name.to_string())
            .filter(|owner| *owner != name);
        if let Some(other) = owner {
            outcomes.push((id, Outcome::Conflict(other)));
            continue;
        }
        let rendered = match render(fleet, 0, &device.agent_id, &device.labels) {
            Ok(rendered) => rendered,
            Err(error) => {
                outcomes.push((id, Outcome::NotRendered(error.to_string())));
                continue;
            }
        };
        let (resources, rollout) = match &device.current {
            Some(current) => (current.resources.as_slice(), current.rollout),
            None => (&[][..], None),
        };
        let changes = diff(resources, &rendered.resources);
        let rollout_changed = rollout != rendered.rollout;
        if changes.is_empty() && !rollout_changed {
            outcomes.push((id, Outcome::Unchanged));
        } else {
            outcomes.push((
                id,
                Outcome::Changed {
                    changes,
                    rollout_changed,
                    newly_selected: !device.in_fleet,
                },
            ));
        }
    }
    Plan {
        name,
        selected,
        devices: outcomes,
    }
}

/// The plan as text: a summary line with the counts, then each device that would change or
/// cannot be rendered, with its resource changes indented below it.
pub(super) fn render_plan(plan: &Plan) -> String {
    let changed = plan.count(|o| matches!(o, Outcome::Changed { .. }));
    let mut out = format!(
        "{}: {} devices selected; {changed} would change, {} unchanged",
        plan.name,
        plan.selected,
        plan.count(|o| matches!(o, Outcome::Unchanged)),
    );
    for (count, what) in [
        (
            plan.count(|o| matches!(o, Outcome::NotRendered(_))),
            "not rendered",
        ),
        (
            plan.count(|o| matches!(o, Outcome::Conflict(_))),
            "in conflict",
        ),
        (plan.count(|o| matches!(o, Outcome::Released)), "released"),
    ] {
        if count > 0 {
            out.push_str(&format!(", {count} {what}"));
        }
    }
    out.push('\n');
    for (id, outcome) in &plan.devices {
        match outcome {
            Outcome::Unchanged => {}
            Outcome::Changed {
                changes,
                rollout_changed,
                newly_selected,
            } => {
                let (mark, note) = if *newly_selected {
                    ("+", " (newly selected)")
                } else {
                    ("~", "")
                };
                out.push_str(&format!("{mark} {id}{note}\n"));
                for change in changes {
                    for line in change.to_string().lines() {
                        out.push_str(&format!("    {line}\n"));
                    }
                }
                if *rollout_changed {
                    out.push_str("    ~ rollout policy\n");
                }
            }
            Outcome::NotRendered(reason) => {
                out.push_str(&format!(
                    "! {id} not rendered, keeps its manifest: {reason}\n"
                ));
            }
            Outcome::Conflict(other) => out.push_str(&format!(
                "! {id} also selected by fleet {other}: in conflict, managed by neither\n"
            )),
            Outcome::Released => {
                out.push_str(&format!("- {id} released, keeps its manifest\n"));
            }
        }
    }
    out
}

/// Reads what the plan needs from the manager, prints it, and with `exit_code` fails with
/// [`CliError::Changes`] when a device would change.
pub(super) async fn run(client: &Client, file: &Path, exit_code: bool) -> Result<(), CliError> {
    let fleet = read_fleet(file)?;
    let name = fleet.name.to_string();
    let members: BTreeSet<String> = match client
        .all_pages::<FleetDeviceView>(&format!("/api/v1/fleets/{}/devices", segment(&name)), &[])
        .await
    {
        Ok(devices) => devices
            .into_iter()
            .map(|d| d.agent_id.to_string())
            .collect(),
        // A fleet not created yet has no devices.
        Err(CliError::Api {
            status: StatusCode::NOT_FOUND,
            ..
        }) => BTreeSet::new(),
        Err(error) => return Err(error),
    };
    let agents: Vec<AgentSummary> = client.all_pages("/api/v1/agents", &[]).await?;
    let mut devices = Vec::new();
    for agent in agents {
        let id = agent.agent_id.to_string();
        let agent_path = format!("/api/v1/agents/{}", segment(&id));
        // Facts cost a request per agent: read them only when the labels already match and
        // the selector looks at facts.
        let labels_match = fleet
            .selector
            .match_labels
            .iter()
            .all(|(k, v)| agent.labels.get(k) == Some(v));
        let mut facts = BTreeMap::new();
        if labels_match && !fleet.selector.match_facts.is_empty() {
            let view: StatusView = client
                .call(Method::GET, &format!("{agent_path}/status"), &[], None)
                .await?;
            if let Some(reported) = view.status.and_then(|s| s.facts) {
                facts = reported.to_map();
            }
        }
        let current = if fleet.selector.matches(&agent.labels, &facts) {
            client
                .call_optional::<AgentManifest>(&format!("{agent_path}/manifest"))
                .await?
        } else {
            None
        };
        devices.push(Device {
            in_fleet: members.contains(&id),
            agent_id: agent.agent_id,
            labels: agent.labels,
            facts,
            current,
        });
    }
    let plan = plan(&fleet, &devices);
    print(&render_plan(&plan))?;
    if exit_code && plan.has_changes() {
        return Err(CliError::Changes);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
