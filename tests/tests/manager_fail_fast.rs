//! Acceptance 6: the manager refuses to start without a database (unless --dev), and refuses a
//! database whose migration ledger does not match this build; --dev says "memory" loudly.

use std::time::Duration;

use fleetlet_tests::manager::{ManagerOptions, ManagerProcess, run_to_exit};
use fleetlet_tests::postgres::fresh_database;
use serde_json::Value;

const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn without_database_url_or_dev_it_exits_with_a_one_line_reason() -> anyhow::Result<()> {
    let (status, output) = run_to_exit(&ManagerOptions::new(None), EXIT_TIMEOUT).await?;
    assert!(!status.success());
    assert_eq!(output.lines().count(), 1, "output: {output}");
    assert!(
        output.contains("DATABASE_URL") && output.contains("--dev"),
        "output: {output}"
    );
    Ok(())
}

/// Starts a manager once so the migrations are applied, then stops it.
async fn migrated_database() -> anyhow::Result<fleetlet_tests::postgres::FreshDatabase> {
    let database = fresh_database().await?;
    let mut manager = ManagerProcess::start(&database.url).await?;
    manager.kill()?;
    Ok(database)
}

async fn execute(url: &str, sql: &str) -> anyhow::Result<()> {
    use sqlx::Connection;
    let mut connection = sqlx::PgConnection::connect(url).await?;
    sqlx::query(sql).execute(&mut connection).await?;
    Ok(())
}

#[tokio::test]
async fn a_changed_migration_checksum_stops_the_start_naming_the_migration() -> anyhow::Result<()> {
    let database = migrated_database().await?;
    execute(
        &database.url,
        "UPDATE _sqlx_migrations SET checksum = '\\x00'::bytea WHERE version = 1",
    )
    .await?;
    let (status, output) =
        run_to_exit(&ManagerOptions::new(Some(&database.url)), EXIT_TIMEOUT).await?;
    assert!(!status.success());
    assert!(
        output.contains("migration 1 (init)") && output.contains("checksum"),
        "output: {output}"
    );
    Ok(())
}

#[tokio::test]
async fn a_migration_unknown_to_this_build_stops_the_start() -> anyhow::Result<()> {
    let database = migrated_database().await?;
    execute(
        &database.url,
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99, 'from the future', true, '\\x00'::bytea, 0)",
    )
    .await?;
    let (status, output) =
        run_to_exit(&ManagerOptions::new(Some(&database.url)), EXIT_TIMEOUT).await?;
    assert!(!status.success());
    assert!(
        output.contains("migration 99") && output.contains("missing"),
        "output: {output}"
    );
    Ok(())
}

#[tokio::test]
async fn conflicting_token_sources_stop_the_start() -> anyhow::Result<()> {
    let mut options = ManagerOptions::new(None);
    options.dev = true;
    options
        .extra_env
        .insert("FLEETLET_ADMIN_TOKEN_FILE".into(), "/dev/null".into());
    let (status, output) = run_to_exit(&options, EXIT_TIMEOUT).await?;
    assert!(!status.success());
    assert!(
        output.contains("FLEETLET_ADMIN_TOKEN_FILE"),
        "output: {output}"
    );
    Ok(())
}

#[tokio::test]
async fn dev_mode_runs_on_memory_and_says_so() -> anyhow::Result<()> {
    let manager = ManagerProcess::start_dev().await?;
    assert!(
        manager.logs().contains("in-memory store"),
        "logs: {}",
        manager.logs()
    );
    let response = reqwest::get(format!("{}/readyz", manager.url)).await?;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await?;
    assert_eq!(body["store"]["adapter"], "memory");
    assert!(
        body["store"]["warning"]
            .as_str()
            .is_some_and(|w| w.contains("lost on restart"))
    );
    Ok(())
}
