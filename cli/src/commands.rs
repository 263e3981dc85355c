//! What each CLI command does: one function per command, over the API client; the fleet,
//! rollout and label commands in their own files below `commands/`.

mod fleet;
mod fleet_diff;
mod fleet_file;
mod label;
mod rollout;

pub use label::{LabelChange, parse_label_change};

use fleetlet_manifests::AgentManifest;
use fleetlet_manifests::api::{
    AgentSummary, AgentToken, Event, ManifestRevision, Page, StatusView,
};
use reqwest::Method;

use super::client::{Client, segment};
use super::manifest_file::{diff, put_body, read_manifest};
use super::output::{print, print_line};
use super::render::{print_as, render_events, render_fleet, render_history, render_status};
use super::signing::read_secret_key;
use super::wait::wait_for_convergence;
use super::{AgentCommand, CliError, Command, EventsOutput, FleetFilter, GetCommand, StateFilter};

/// How often `events --follow` asks for new events.
const FOLLOW_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

pub(super) async fn dispatch(client: &Client, command: Command) -> Result<(), CliError> {
    match command {
        Command::Agent { command } => match command {
            AgentCommand::Add { agent_id, labels } => {
                let labels: serde_json::Map<String, serde_json::Value> = labels
                    .into_iter()
                    .map(|(k, v)| (k, serde_json::Value::String(v)))
                    .collect();
                let body = serde_json::json!({"agentId": agent_id, "labels": labels});
                let token: AgentToken = client
                    .call(Method::POST, "/api/v1/agents", &[], Some(&body))
                    .await?;
                print_line(&token.token)?;
            }
            AgentCommand::List(filter) => fleet(client, filter).await?,
            AgentCommand::Rm { agent_id } => {
                let path = format!("/api/v1/agents/{}", segment(&agent_id));
                client.call_empty(Method::DELETE, &path).await?;
                print_line(&format!("{agent_id}: decommissioned"))?;
            }
            AgentCommand::RotateToken { agent_id } => {
                let path = format!("/api/v1/agents/{}/token", segment(&agent_id));
                let token: AgentToken = client.call(Method::POST, &path, &[], None).await?;
                print_line(&token.token)?;
            }
        },
        Command::Apply {
            file,
            wait,
            timeout,
            sign_key,
        } => {
            let mut manifest = read_manifest(&file)?;
            if let Some(key_path) = &sign_key {
                let key = read_secret_key(key_path)?;
                manifest.signature = Some(key.sign(&manifest));
            }
            let agent_id = manifest.agent_id.to_string();
            let path = format!("/api/v1/agents/{}/manifest", segment(&agent_id));
            let stored: AgentManifest = client
                .call(Method::PUT, &path, &[], Some(&put_body(&manifest)?))
                .await?;
            let generation = stored.generation.unwrap_or(0);
            print_line(&format!("{agent_id}: generation {generation}"))?;
            if wait {
                let rollout = stored.rollout.is_some();
                wait_for_convergence(client, &agent_id, generation, rollout, timeout).await?;
            }
        }
        Command::Diff { file, exit_code } => {
            let desired = read_manifest(&file)?;
            let agent_id = desired.agent_id.to_string();
            let path = format!("/api/v1/agents/{}/manifest", segment(&agent_id));
            let current: Option<AgentManifest> = client.call_optional(&path).await?;
            if current.is_none() {
                // A 404 means "no manifest yet" or "no such agent". The agent's status route
                // answers 404 only for the second, with the error apply would get, so diff fails
                // as apply would instead of planning for an agent that is not there.
                let status = format!("/api/v1/agents/{}/status", segment(&agent_id));
                let _: serde_json::Value = client.call(Method::GET, &status, &[], None).await?;
            }
            let (generation, resources) = match &current {
                Some(m) => (m.generation.unwrap_or(0), m.resources.as_slice()),
                None => (0, &[][..]),
            };
            let changes = diff(resources, &desired.resources);
            if changes.is_empty() {
                return print_line(&format!(
                    "{agent_id}: no changes (generation {generation} stays)"
                ));
            }
            let mut text = format!(
                "{agent_id}: generation {generation} would become {}\n",
                generation + 1
            );
            for change in &changes {
                text.push_str(&format!("{change}\n"));
            }
            print(&text)?;
            if exit_code {
                return Err(CliError::Changes);
            }
        }
        Command::Get { command } => match command {
            GetCommand::Status { agent_id, output } => {
                let path = format!("/api/v1/agents/{}/status", segment(&agent_id));
                let view: StatusView = client.call(Method::GET, &path, &[], None).await?;
                print_as(output, &view, render_status)?;
            }
            GetCommand::Agents(filter) => fleet(client, filter).await?,
        },
        Command::History {
            agent_id,
            limit,
            output,
        } => {
            let path = format!("/api/v1/agents/{}/manifests", segment(&agent_id));
            let mut revisions: Vec<ManifestRevision> = Vec::new();
            let mut cursor: Option<String> = None;
            while revisions.len() < limit {
                let mut query = vec![("limit", (limit - revisions.len()).to_string())];
                query.extend(cursor.take().map(|c| ("cursor", c)));
                let page: Page<ManifestRevision> =
                    client.call(Method::GET, &path, &query, None).await?;
                revisions.extend(page.items);
                match page.next_cursor {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
            revisions.truncate(limit);
            print_as(output, &revisions, |r| render_history(r))?;
        }
        Command::Events {
            agent_id,
            follow,
            after_seq,
            output,
        } => events(client, &agent_id, follow, after_seq, output).await?,
        Command::Label { agent_id, changes } => label::run(client, &agent_id, &changes).await?,
        Command::Fleet { command } => fleet::run(client, command).await?,
        Command::Rollout { command } => rollout::run(client, command).await?,
        // Handled before a client exists, since it needs no manager.
        Command::Completions { .. } | Command::Keygen { .. } => {}
    }
    Ok(())
}

async fn fleet(client: &Client, filter: FleetFilter) -> Result<(), CliError> {
    let mut base = Vec::new();
    if let Some(state) = filter.state {
        let state = match state {
            StateFilter::Converged => "converged",
            StateFilter::Progressing => "progressing",
            StateFilter::Degraded => "degraded",
            StateFilter::RolledBack => "rolledBack",
            StateFilter::Stale => "stale",
            StateFilter::Unknown => "unknown",
        };
        base.push(("state", state.to_owned()));
    }
    if !filter.labels.is_empty() {
        let labels: Vec<String> = filter
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        base.push(("label", labels.join(",")));
    }
    let mut rows: Vec<AgentSummary> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut query = base.clone();
        query.push(("limit", "500".to_owned()));
        query.extend(cursor.take().map(|c| ("cursor", c)));
        let page: Page<AgentSummary> = client
            .call(Method::GET, "/api/v1/agents", &query, None)
            .await?;
        rows.extend(page.items);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    print_as(filter.output, &rows, |r| render_fleet(r))
}

/// Prints the event log from `after_seq` on; with `follow`, keeps asking for newer events.
async fn events(
    client: &Client,
    agent_id: &str,
    follow: bool,
    mut after_seq: u64,
    output: EventsOutput,
) -> Result<(), CliError> {
    let path = format!("/api/v1/agents/{}/events", segment(agent_id));
    let mut header = output == EventsOutput::Table;
    loop {
        let query = [
            ("afterSeq", after_seq.to_string()),
            ("limit", "1000".to_owned()),
        ];
        let page: Page<Event> = client.call(Method::GET, &path, &query, None).await?;
        if !page.items.is_empty() || header {
            match output {
                EventsOutput::Table => print(&render_events(&page.items, header))?,
                EventsOutput::Jsonl => {
                    let mut lines = String::new();
                    for event in &page.items {
                        lines.push_str(
                            &serde_json::to_string(event)
                                .map_err(|e| CliError::Print(e.to_string()))?,
                        );
                        lines.push('\n');
                    }
                    print(&lines)?;
                }
            }
            header = false;
        }
        if let Some(last) = page.items.last() {
            after_seq = last.seq;
        }
        // A full page means more are waiting: ask again at once.
        if page.next_cursor.is_some() {
            continue;
        }
        if !follow {
            return Ok(());
        }
        // `print` flushes, so a pipe (or a test) sees each event as it arrives.
        tokio::time::sleep(FOLLOW_INTERVAL).await;
    }
}
