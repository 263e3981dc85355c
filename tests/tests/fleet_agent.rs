//! Issue 20, on the device: the real `fleetlet-agent`, standalone (`FLEETLET_MANIFEST_FILE`) with
//! a trusted key, given manifests rendered from a signed fleet. The one rendered as the operator
//! signed converges; one whose parameter value lies outside its signed pattern, and one whose
//! carried template was altered (or whose resources differ from what the signed template
//! renders), are refused with a typed `ManifestRejected` reason and the files of the accepted
//! generation are kept.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use fleetlet_manifests::fleet::{Fleet, ParameterName, render, render_template};
use fleetlet_manifests::signature::SecretKey;
use fleetlet_manifests::{
    AgentId, AgentManifest, AgentStatus, Condition, ConditionStatus, ConditionType,
};
use fleetlet_tests::agent::{AgentDirs, AgentOptions, AgentProcess, unique_agent_id, wait_for};
use serde_json::json;

const CONVERGE: Duration = Duration::from_secs(20);

/// A signed fleet whose File lands in the agent's root: `{{ greeting }} from {{ agentId }}`.
fn signed_fleet(root: &Path, key: &SecretKey) -> anyhow::Result<Fleet> {
    let mut fleet = Fleet::from_value(json!({
        "apiVersion": "fleetlet.dev/v1", "kind": "Fleet", "name": "kiosks",
        "selector": {"matchLabels": {"role": "kiosk"}},
        "parameters": {"greeting": {"pattern": "[A-Za-z ]{1,20}", "default": "Hello"}},
        "template": {"resources": [{"id": "motd", "kind": "File", "spec": {
            "path": root.join("motd").display().to_string(),
            "content": {"text": "{{ greeting }} from {{ agentId }}\n"}, "mode": "0644"}}]}
    }))
    .map_err(|violations| anyhow::anyhow!("invalid fleet: {violations:?}"))?;
    fleet.signature = Some(key.sign_fleet(&fleet));
    Ok(fleet)
}

/// Writes `manifest` as generation `generation` of the standalone manifest file.
fn deliver(dirs: &AgentDirs, manifest: &AgentManifest, generation: u64) -> anyhow::Result<()> {
    let mut manifest = manifest.clone();
    manifest.generation = Some(generation);
    dirs.write_manifest(&serde_json::to_value(&manifest)?)
}

/// The `ManifestRejected` condition of the agent's stored status, while it is true.
fn rejection(status: &AgentStatus) -> Option<&Condition> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == ConditionType::ManifestRejected && c.status == ConditionStatus::True)
}

/// Delivers `manifest` as generation `generation`, waits until its agent reports the refusal
/// with `reason`, and checks that the accepted generation's `motd` still says `kept`.
async fn assert_refused(
    dirs: &AgentDirs,
    manifest: &AgentManifest,
    generation: u64,
    reason: &str,
    kept: &str,
) -> anyhow::Result<()> {
    deliver(dirs, manifest, generation)?;
    let agent_id = manifest.agent_id.as_str();
    wait_for(
        &format!("ManifestRejected/{reason} for generation {generation}"),
        CONVERGE,
        || async {
            let status = dirs.stored_status(agent_id)?;
            let condition = rejection(&status)?;
            (condition.reason == reason
                && condition
                    .message
                    .contains(&format!("generation {generation}")))
            .then_some(())
        },
    )
    .await?;
    assert_eq!(
        std::fs::read_to_string(dirs.root().join("motd"))?,
        kept,
        "previous file kept"
    );
    Ok(())
}

#[tokio::test]
async fn a_signed_fleet_manifest_converges_and_tampered_ones_are_refused_with_typed_reasons()
-> anyhow::Result<()> {
    let dirs = AgentDirs::new()?;
    let agent_id = unique_agent_id("fleet");
    let agent = AgentId::try_from(agent_id.as_str()).context("agent id")?;
    let key = SecretKey::from_seed(rand::random());
    let trusted = dirs.base().join("trusted.pub");
    std::fs::write(&trusted, key.public().to_file_text())?;
    let fleet = signed_fleet(&dirs.root(), &key)?;

    // As the operator signed it: converges.
    let labels = BTreeMap::from([("greeting".to_owned(), "Good morning".to_owned())]);
    let good = render(&fleet, 1, &agent, &labels).context("render")?;
    assert!(good.signature.is_none(), "no signature of its own");
    deliver(&dirs, &good, 1)?;
    let mut options = AgentOptions::standalone(&agent_id);
    options.env.push((
        "FLEETLET_TRUSTED_KEYS".into(),
        trusted.display().to_string(),
    ));
    let _agent = AgentProcess::start(&dirs, &options)?;
    let motd = dirs.root().join("motd");
    let expected = format!("Good morning from {agent_id}\n");
    wait_for("the fleet's file", CONVERGE, || async {
        (std::fs::read_to_string(&motd).ok()? == expected).then_some(())
    })
    .await?;
    wait_for("a status without a rejection", CONVERGE, || async {
        let status = dirs.stored_status(&agent_id)?;
        (status.observed_generation == 1 && rejection(&status).is_none()).then_some(())
    })
    .await?;

    // A value outside its signed pattern, with the resources rendered from it, as a manager that
    // was broken into would send.
    let evil_value = "x; rm -rf /";
    let mut outside = good.clone();
    let values = BTreeMap::from([("greeting".to_owned(), evil_value.to_owned())]);
    outside.resources = render_template(&fleet.template, &values, &agent)
        .context("render the evil value")?
        .resources;
    outside
        .fleet
        .as_mut()
        .context("provenance")?
        .values
        .insert(ParameterName::try_from("greeting")?, evil_value.to_owned());
    assert_refused(&dirs, &outside, 2, "FleetValueOutsidePattern", &expected).await?;

    // The template altered where the manager keeps it (the file moved outside the signed path),
    // and the manifest rendered from the altered template.
    let mut altered_fleet = fleet.clone();
    altered_fleet.template.resources[0].spec["content"]["text"] = json!("altered {{ greeting }}\n");
    let altered = render(&altered_fleet, 2, &agent, &labels).context("render altered")?;
    assert_refused(&dirs, &altered, 3, "FleetSignatureInvalid", &expected).await?;

    // The signed template intact, but the resources not what it renders.
    let mut mismatched = good.clone();
    mismatched.resources = altered.resources.clone();
    assert_refused(&dirs, &mismatched, 4, "FleetTemplateMismatch", &expected).await?;
    Ok(())
}
