//! Issue 20, acceptance 7: a fleet signed with `fleetlet fleet apply --sign-key` reaches real
//! agents that trust the key, and what someone with write access to the database changes in the
//! rendered manifests — a parameter value outside its signed pattern, or the template itself — is
//! refused on the device with a typed reason while the previous files stay.

use std::time::Duration;

use fleetlet_manifests::fleet_api::{DeviceRolloutState as State, RolloutPhase};
use fleetlet_manifests::{AgentStatus, ConditionStatus, ConditionType};
use fleetlet_tests::agent::wait_for;
use fleetlet_tests::fleets::{Lab, count, fleet, ids, strategy};
use serde_json::json;

const CONVERGE: Duration = Duration::from_secs(60);
const ROLLOUT: Duration = Duration::from_secs(90);

/// The agent's `ManifestRejected` condition while it is True: `(reason, message)`.
fn rejection(status: &AgentStatus) -> Option<(String, String)> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == ConditionType::ManifestRejected && c.status == ConditionStatus::True)
        .map(|c| (c.reason.clone(), c.message.clone()))
}

/// Stores, as someone with write access to the database would, a new generation for `agent`:
/// a copy of its newest one with `edit` (SQL over the row's columns, `fleet` being the
/// manifest's fleet provenance) applied; wakes the agent's long-poll as the manager does.
async fn tamper(lab: &Lab, agent: &str, edit: &str) -> anyhow::Result<u64> {
    let current = lab.generation(agent).await?;
    let next = current + 1;
    let mut tx = lab.db.begin().await?;
    let inserted = sqlx::query(&format!(
        "INSERT INTO manifests \
           (agent_id, generation, resources, content_hash, signature, rollout, fleet, \
            created_at, created_by) \
         SELECT agent_id, $2, {edit}, 'sha256:tampered', signature, rollout, {edit_fleet}, \
                now(), created_by \
         FROM manifests WHERE agent_id = $1 AND generation = $3",
        edit = edit_column(edit, "resources"),
        edit_fleet = edit_column(edit, "fleet"),
    ))
    .bind(agent)
    .bind(i64::try_from(next)?)
    .bind(i64::try_from(current)?)
    .execute(&mut *tx)
    .await?;
    assert_eq!(
        inserted.rows_affected(),
        1,
        "the tampered generation is stored"
    );
    sqlx::query("UPDATE agents SET desired_generation = $2 WHERE agent_id = $1")
        .bind(agent)
        .bind(i64::try_from(next)?)
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT pg_notify('fleetlet_manifest', $1)")
        .bind(agent)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(next)
}

/// The SQL expression of `column` after the edit: `edit` is `old text => new text`, replaced
/// in the column's JSON text wherever it occurs.
fn edit_column(edit: &str, column: &str) -> String {
    let (old, new) = edit.split_once(" => ").expect("an edit is `old => new`");
    format!("replace({column}::text, '{old}', '{new}')::jsonb")
}

#[tokio::test]
async fn a_signed_fleet_converges_and_values_or_templates_changed_in_the_database_are_refused()
-> anyhow::Result<()> {
    let mut lab = Lab::start(1).await?;
    let keys = lab.lab_file("keys");
    let keys_arg = keys.display().to_string();
    lab.fleetlet(&["keygen", "--out", &keys_arg])?;
    let secret = keys.join("fleetlet-signing.key");
    let public = keys.join("fleetlet-signing.pub");
    let trusted = [("FLEETLET_TRUSTED_KEYS", public.display().to_string())];
    let devices = ids("pi", 1..=3);
    for (i, id) in devices.iter().enumerate() {
        let labels = json!({"role": "kiosk", "greeting": format!("hello-{i}")});
        lab.add_device(id, labels, &trusted).await?;
    }
    let body = fleet(
        "kiosks",
        json!({"role": "kiosk"}),
        json!({"greeting": {"pattern": "^hello-[0-9]$"}}),
        vec![lab.motd("{{ greeting }} from {{ agentId }}\n")],
        strategy(json!([{}]), "100%", false),
    );
    let file = lab.lab_file("kiosks.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&body)?)?;
    let file_arg = file.display().to_string();
    let secret_arg = secret.display().to_string();
    lab.fleetlet(&["fleet", "apply", "-f", &file_arg, "--sign-key", &secret_arg])?;
    lab.wait_fleet("kiosks", "the signed fleet out", ROLLOUT, |v| {
        v.phase == RolloutPhase::Completed && count(v, State::Succeeded) == 3
    })
    .await?;
    lab.wait_converged(&devices, 1, CONVERGE).await?;
    for (i, id) in devices.iter().enumerate() {
        assert_eq!(
            std::fs::read_to_string(lab.device_file(id, "motd"))?,
            format!("hello-{i} from {id}\n")
        );
    }
    let stored: serde_json::Value = sqlx::query_scalar(
        "SELECT fleet FROM manifests WHERE agent_id = $1 ORDER BY generation DESC LIMIT 1",
    )
    .bind(&devices[0])
    .fetch_one(&lab.db)
    .await?;
    assert!(
        stored["signed"]["signature"].is_object(),
        "the rendered manifest carries the operator's signature: {stored}"
    );

    // 1. A value outside its signed pattern, with the resources rendered from it.
    let (valued, changed) = (devices[0].clone(), "hello-0 => evil-0");
    let generation = lab.generation(&valued).await?;
    let tampered = tamper(&lab, &valued, changed).await?;
    assert_eq!(tampered, generation + 1);
    // 2. The template altered (what every device would run), the values left alone.
    let (templated, changed) = (devices[1].clone(), "from => owned by");
    let tampered_template = tamper(&lab, &templated, changed).await?;

    for (id, expected, what, expected_reason) in [
        (
            &valued,
            tampered,
            "a value outside its pattern",
            "FleetValueOutsidePattern",
        ),
        (
            &templated,
            tampered_template,
            "an altered template",
            "FleetSignatureInvalid",
        ),
    ] {
        let client = lab.client.clone();
        let manager = lab.manager();
        let (reason, message) = wait_for(&format!("{id} to refuse {what}"), CONVERGE, || async {
            let view = manager.status_json(&client, id).await?;
            let status: AgentStatus = serde_json::from_value(view["status"].clone()).ok()?;
            rejection(&status)
        })
        .await?;
        println!("{id} refused {what}: {reason}: {message}");
        assert_eq!(reason, expected_reason, "{message}");
        assert!(
            message.contains(&format!("generation {expected}")),
            "{message}"
        );
    }
    // 3. Resources that are not the signed template's rendering, template and values left
    // alone: the device runs what the operator signed, or refuses; never the altered content.
    let rendered = devices[2].clone();
    let altered = tamper(&lab, &rendered, "hello-2 from => evil-2 from").await?;
    let client = lab.client.clone();
    let manager = lab.manager();
    let outcome = wait_for(
        "the third device to take or refuse the altered resources",
        CONVERGE,
        || async {
            let view = manager.status_json(&client, &rendered).await?;
            let status: AgentStatus = serde_json::from_value(view["status"].clone()).ok()?;
            if let Some((reason, _)) = rejection(&status) {
                return Some(reason);
            }
            let converged =
                view["summary"]["converged"].as_bool()? && status.observed_generation == altered;
            converged.then(|| "converged".to_owned())
        },
    )
    .await?;
    println!("{rendered} with resources not rendered from the signed template: {outcome}");
    assert_eq!(
        std::fs::read_to_string(lab.device_file(&rendered, "motd"))?,
        format!("hello-2 from {rendered}\n"),
        "only what the operator signed runs"
    );

    // The refusing devices keep their files.
    assert_eq!(
        std::fs::read_to_string(lab.device_file(&valued, "motd"))?,
        format!("hello-0 from {valued}\n")
    );
    assert_eq!(
        std::fs::read_to_string(lab.device_file(&templated, "motd"))?,
        format!("hello-1 from {templated}\n")
    );
    Ok(())
}
