//! End-to-end tests of signed manifests with the real `fleetlet` CLI (keygen, apply
//! --sign-key), `fleetlet-manager` on PostgreSQL and `fleetlet-agent` with trusted keys: a
//! manifest altered in the database is refused, unsigned manifests are refused only when keys are
//! configured, and either of two trusted keys is accepted during a rotation.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use fleetlet_manifests::api::FleetState;
use fleetlet_manifests::{AgentStatus, ConditionStatus, ConditionType};
use fleetlet_tests::agent::{
    AgentDirs, AgentOptions, AgentProcess, ManagerProcess, file_resource, manifest,
    unique_agent_id, wait_for,
};
use fleetlet_tests::binary;
use sqlx::Connection;

const CONVERGE: Duration = Duration::from_secs(20);

/// Runs the real `fleetlet` CLI against `manager` and returns its stdout; fails on non-zero exit.
fn fleetlet(manager: &ManagerProcess, args: &[&str]) -> anyhow::Result<String> {
    let path = binary("fleetlet");
    if !path.exists() {
        bail!(
            "{} does not exist: run `cargo build --workspace --bins` first",
            path.display()
        );
    }
    let output = Command::new(path)
        .env_clear()
        .env("FLEETLET_URL", manager.url())
        .env("FLEETLET_TOKEN", &manager.admin_token)
        .env("XDG_CONFIG_HOME", "/nonexistent")
        .args(args)
        .output()
        .context("run fleetlet")?;
    if !output.status.success() {
        bail!(
            "fleetlet {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

/// `fleetlet keygen --out <dir>`; returns the private and public key paths.
fn keygen(manager: &ManagerProcess, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    fleetlet(manager, &["keygen", "--out", &dir.display().to_string()])?;
    Ok((
        dir.join("fleetlet-signing.key"),
        dir.join("fleetlet-signing.pub"),
    ))
}

/// Writes `body` to a file and stores it with `fleetlet apply`, signed with `key` if given;
/// returns the generation the CLI printed.
fn apply(
    manager: &ManagerProcess,
    dirs: &AgentDirs,
    body: &serde_json::Value,
    key: Option<&Path>,
) -> anyhow::Result<u64> {
    let file = dirs
        .base()
        .join(format!("apply-{}.json", unique_agent_id("m")));
    std::fs::write(&file, serde_json::to_vec_pretty(body)?)?;
    let file = file.display().to_string();
    let key = key.map(|k| k.display().to_string());
    let mut args = vec!["apply", "-f", file.as_str()];
    if let Some(key) = &key {
        args.extend(["--sign-key", key.as_str()]);
    }
    let stdout = fleetlet(manager, &args)?;
    stdout
        .trim()
        .rsplit_once("generation ")
        .and_then(|(_, n)| n.parse().ok())
        .with_context(|| format!("no generation in {stdout:?}"))
}

fn trusting(options: AgentOptions, keys: &[&Path]) -> AgentOptions {
    let joined: Vec<String> = keys.iter().map(|k| k.display().to_string()).collect();
    let mut options = options;
    options
        .env
        .push(("FLEETLET_TRUSTED_KEYS".into(), joined.join(":")));
    options
}

fn signature_rejected(status: &AgentStatus) -> bool {
    status.conditions.iter().any(|c| {
        c.type_ == ConditionType::ManifestRejected
            && c.status == ConditionStatus::True
            && c.reason == "SignatureInvalid"
    })
}

fn motd(dirs: &AgentDirs, text: &str) -> serde_json::Value {
    file_resource("motd", &dirs.root().join("motd"), text, "0644")
}

#[tokio::test]
async fn a_manifest_altered_in_the_database_after_signing_is_refused_and_the_old_files_kept()
-> anyhow::Result<()> {
    let manager = ManagerProcess::start().await?;
    let agent_id = unique_agent_id("signed");
    let token = manager.register_agent(&agent_id).await?;
    let dirs = AgentDirs::new()?;
    let keys = dirs.base().join("keys");
    let (secret, public) = keygen(&manager, &keys)?;

    let generation = apply(
        &manager,
        &dirs,
        &manifest(&agent_id, vec![motd(&dirs, "signed by the operator\n")]),
        Some(&secret),
    )?;
    let _agent = AgentProcess::start(
        &dirs,
        &trusting(
            AgentOptions::with_manager(&agent_id, &manager.url(), &token),
            &[&public],
        ),
    )?;
    manager
        .wait_converged(&agent_id, generation, CONVERGE)
        .await?;
    let motd_path = dirs.root().join("motd");
    assert_eq!(
        std::fs::read_to_string(&motd_path)?,
        "signed by the operator\n"
    );

    // Someone with write access to the database serves other content under the operator's
    // signature as a new generation, exactly as the manager would have stored it.
    let database_url = std::env::var("DATABASE_URL").context("DATABASE_URL")?;
    let mut db = sqlx::PgConnection::connect(&database_url).await?;
    let tampered_generation = i64::try_from(generation + 1)?;
    let mut tx = db.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO manifests \
           (agent_id, generation, resources, content_hash, signature, created_at, created_by) \
         SELECT agent_id, $2, \
                jsonb_set(resources, '{0,spec,content,text}', '\"written by an attacker\\n\"'), \
                'sha256:tampered', signature, now(), 'admin' \
         FROM manifests WHERE agent_id = $1 AND generation = $2 - 1 AND signature IS NOT NULL",
    )
    .bind(&agent_id)
    .bind(tampered_generation)
    .execute(&mut *tx)
    .await?;
    assert_eq!(
        inserted.rows_affected(),
        1,
        "the signed generation is stored"
    );
    sqlx::query("UPDATE agents SET desired_generation = $2 WHERE agent_id = $1")
        .bind(&agent_id)
        .bind(tampered_generation)
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT pg_notify('fleetlet_manifest', $1)")
        .bind(&agent_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;

    // The manager serves it (with the signature), the agent refuses it and says why.
    let status = manager
        .wait_for_status(
            &agent_id,
            "the agent to report ManifestRejected/SignatureInvalid",
            CONVERGE,
            signature_rejected,
        )
        .await?;
    let condition = status
        .conditions
        .iter()
        .find(|c| c.type_ == ConditionType::ManifestRejected)
        .context("ManifestRejected condition")?;
    assert!(
        condition
            .message
            .contains(&format!("generation {tampered_generation}")),
        "{condition:?}"
    );
    assert!(
        condition.message.contains("does not match"),
        "{condition:?}"
    );
    assert_eq!(status.observed_generation, generation);

    // The previous resources keep running: the file is the signed content, and stays so across
    // resyncs (drift repair still converges to the last accepted manifest).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        std::fs::read_to_string(&motd_path)?,
        "signed by the operator\n"
    );
    std::fs::write(&motd_path, "local drift\n")?;
    wait_for("the signed content to be restored", CONVERGE, || async {
        (std::fs::read_to_string(&motd_path).ok()? == "signed by the operator\n").then_some(())
    })
    .await?;

    // The manager shows the rejection: the fleet state is degraded.
    let view = manager.status(&agent_id).await?;
    assert_eq!(view.summary.state, FleetState::Degraded);
    assert_eq!(view.summary.desired_generation, generation + 1);

    // A newly signed manifest from the operator heals it.
    let healed = apply(
        &manager,
        &dirs,
        &manifest(&agent_id, vec![motd(&dirs, "signed again\n")]),
        Some(&secret),
    )?;
    assert_eq!(healed, generation + 2);
    manager.wait_converged(&agent_id, healed, CONVERGE).await?;
    assert_eq!(std::fs::read_to_string(&motd_path)?, "signed again\n");
    let status = manager.status(&agent_id).await?.status.context("status")?;
    assert!(!signature_rejected(&status));
    Ok(())
}

#[tokio::test]
async fn unsigned_manifests_are_refused_only_when_keys_are_configured_and_either_rotated_key_works()
-> anyhow::Result<()> {
    let manager = ManagerProcess::start().await?;

    // An agent without trusted keys (the development default) accepts an unsigned manifest.
    let open_id = unique_agent_id("unsigned-ok");
    let open_token = manager.register_agent(&open_id).await?;
    let open_dirs = AgentDirs::new()?;
    let _open_agent = AgentProcess::start(
        &open_dirs,
        &AgentOptions::with_manager(&open_id, &manager.url(), &open_token),
    )?;
    let open_generation = apply(
        &manager,
        &open_dirs,
        &manifest(&open_id, vec![motd(&open_dirs, "unsigned\n")]),
        None,
    )?;
    manager
        .wait_converged(&open_id, open_generation, CONVERGE)
        .await?;
    assert_eq!(
        std::fs::read_to_string(open_dirs.root().join("motd"))?,
        "unsigned\n"
    );

    // An agent trusting two keys (old and new, mid-rotation) refuses the unsigned manifest.
    let agent_id = unique_agent_id("rotation");
    let token = manager.register_agent(&agent_id).await?;
    let dirs = AgentDirs::new()?;
    let (old_secret, old_public) = keygen(&manager, &dirs.base().join("old"))?;
    let (new_secret, new_public) = keygen(&manager, &dirs.base().join("new"))?;
    let _agent = AgentProcess::start(
        &dirs,
        &trusting(
            AgentOptions::with_manager(&agent_id, &manager.url(), &token),
            &[&old_public, &new_public],
        ),
    )?;
    apply(
        &manager,
        &dirs,
        &manifest(&agent_id, vec![motd(&dirs, "unsigned\n")]),
        None,
    )?;
    let status = manager
        .wait_for_status(
            &agent_id,
            "the unsigned manifest to be refused",
            CONVERGE,
            signature_rejected,
        )
        .await?;
    let condition = status
        .conditions
        .iter()
        .find(|c| c.type_ == ConditionType::ManifestRejected)
        .context("ManifestRejected condition")?;
    assert!(condition.message.contains("not signed"), "{condition:?}");
    assert!(!dirs.root().join("motd").exists());

    // Signed by the old key: accepted.
    let by_old = apply(
        &manager,
        &dirs,
        &manifest(&agent_id, vec![motd(&dirs, "old key\n")]),
        Some(&old_secret),
    )?;
    manager.wait_converged(&agent_id, by_old, CONVERGE).await?;
    assert_eq!(
        std::fs::read_to_string(dirs.root().join("motd"))?,
        "old key\n"
    );

    // Signed by the new key: accepted too.
    let by_new = apply(
        &manager,
        &dirs,
        &manifest(&agent_id, vec![motd(&dirs, "new key\n")]),
        Some(&new_secret),
    )?;
    manager.wait_converged(&agent_id, by_new, CONVERGE).await?;
    assert_eq!(
        std::fs::read_to_string(dirs.root().join("motd"))?,
        "new key\n"
    );

    // Re-signing identical resources with the other key is a new generation: the agent must
    // receive the manifest in the form the operator signed last.
    let resigned = apply(
        &manager,
        &dirs,
        &manifest(&agent_id, vec![motd(&dirs, "new key\n")]),
        Some(&old_secret),
    )?;
    assert_eq!(resigned, by_new + 1);
    // Applying exactly the same signed manifest again changes nothing (ed25519 is deterministic).
    let again = apply(
        &manager,
        &dirs,
        &manifest(&agent_id, vec![motd(&dirs, "new key\n")]),
        Some(&old_secret),
    )?;
    assert_eq!(again, resigned);
    manager
        .wait_converged(&agent_id, resigned, CONVERGE)
        .await?;
    Ok(())
}
