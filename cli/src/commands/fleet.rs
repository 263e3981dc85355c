//! `fleetlet fleet apply|get|list|devices|history|diff|delete`: fleets over the manager's
//! `/api/v1/fleets` routes. `apply` and `diff` read the fleet file through the wire crate's
//! validator first, so every problem comes back with its JSON path before anything is sent.

use fleetlet_manifests::fleet_api::{
    FleetDeviceView, FleetRevisionView, FleetView, PutFleetResponse,
};
use reqwest::Method;

use super::super::client::{Client, segment};
use super::super::output::print_line;
use super::super::render::{
    print_as, render_fleet_devices, render_fleet_history, render_fleet_view, render_fleets,
};
use super::super::{CliError, FleetCommand};

pub(super) async fn run(client: &Client, command: FleetCommand) -> Result<(), CliError> {
    match command {
        FleetCommand::Apply { file, sign_key } => {
            let body = super::fleet_file::put_body(&file, sign_key.as_deref())?;
            let name = body.name.clone();
            let path = format!("/api/v1/fleets/{}", segment(&name));
            let answer: PutFleetResponse = client
                .call(Method::PUT, &path, &[], Some(&body.json))
                .await?;
            print_line(&applied_line(&answer))
        }
        FleetCommand::Get { name, output } => {
            let view = super::rollout::read(client, &name).await?;
            print_as(output, &view, render_fleet_view)
        }
        FleetCommand::List { output } => {
            let views: Vec<FleetView> = client.all_pages("/api/v1/fleets", &[]).await?;
            print_as(output, &views, |v| render_fleets(v))
        }
        FleetCommand::Devices { name, output } => {
            let path = format!("/api/v1/fleets/{}/devices", segment(&name));
            let devices: Vec<FleetDeviceView> = client.all_pages(&path, &[]).await?;
            print_as(output, &devices, |d| render_fleet_devices(d))
        }
        FleetCommand::History { name, output } => {
            let path = format!("/api/v1/fleets/{}/revisions", segment(&name));
            let revisions: Vec<FleetRevisionView> = client.all_pages(&path, &[]).await?;
            print_as(output, &revisions, |r| render_fleet_history(r))
        }
        FleetCommand::Diff { file, exit_code } => {
            super::fleet_diff::run(client, &file, exit_code).await
        }
        FleetCommand::Delete { name } => {
            let path = format!("/api/v1/fleets/{}", segment(&name));
            client.call_empty(Method::DELETE, &path).await?;
            print_line(&format!(
                "{name}: deleted; its devices keep the manifests they have"
            ))
        }
    }
}

/// What `apply` prints: the revision, and whether it rolls out.
pub(super) fn applied_line(answer: &PutFleetResponse) -> String {
    let name = &answer.name;
    let revision = answer.revision;
    match (answer.created, answer.rollout) {
        (false, _) => format!("{name}: unchanged (revision {revision})"),
        (true, true) => format!(
            "{name}: revision {revision}, rolling out (fleetlet rollout status {name} --watch)"
        ),
        (true, false) => format!(
            "{name}: revision {revision}; only the selector or strategy changed, nothing to roll \
             out"
        ),
    }
}

#[cfg(test)]
mod tests;
