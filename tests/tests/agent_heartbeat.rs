//! An idle agent against the real manager on PostgreSQL: no status goes out while nothing
//! changes, its watch and heartbeats still show it alive, and a manager that lost the latest
//! report (a database restored from a backup) gets it again through the heartbeat.

use std::time::Duration;

use anyhow::Context;
use fleetlet_tests::agent::{
    AgentDirs, AgentOptions, AgentProcess, ManagerProcess, file_resource, unique_agent_id, wait_for,
};

async fn database() -> anyhow::Result<sqlx::PgPool> {
    let url = std::env::var("DATABASE_URL").context("DATABASE_URL is not set")?;
    Ok(sqlx::PgPool::connect(&url).await?)
}

#[tokio::test]
async fn an_idle_agent_reports_nothing_new_yet_stays_seen_and_heals_a_lost_report()
-> anyhow::Result<()> {
    let manager = ManagerProcess::start().await?;
    let pool = database().await?;
    let agent_id = unique_agent_id("idle");
    let options = manager.enroll(&agent_id).await?;
    let dirs = AgentDirs::new()?;
    // Heartbeats every second and polls of one second: several of each within the test.
    let options = AgentOptions {
        report_interval: "1s",
        watch_wait: "1s",
        ..options
    };
    let _agent = AgentProcess::start(&dirs, &options)?;
    let path = dirs.root().join("idle.conf");
    let generation = manager
        .put_resources(
            &agent_id,
            vec![file_resource("idle", &path, "quiet\n", "0644")],
        )
        .await?;
    let view = manager
        .wait_converged(&agent_id, generation, Duration::from_secs(15))
        .await?;
    let converged_seq = view.status.context("a status")?.report_seq;
    let seen = view.summary.last_seen_at.context("last seen")?;

    // Idle: contact moves on with every poll and heartbeat, the report does not.
    let later = wait_for(
        "contact after the last report",
        Duration::from_secs(10),
        || async {
            let view = manager.status(&agent_id).await.ok()?;
            view.summary
                .last_seen_at
                .filter(|at| *at > seen + time::Duration::seconds(4))
                .map(|_| view)
        },
    )
    .await?;
    assert_eq!(
        later.status.map(|s| s.report_seq),
        Some(converged_seq),
        "an unchanged status is not sent again"
    );

    // The manager loses the report; the next heartbeat finds out and the agent sends it again.
    let mut tx = pool.begin().await?;
    for statement in [
        "DELETE FROM resource_status WHERE agent_id = $1",
        "DELETE FROM agent_status WHERE agent_id = $1",
        "UPDATE agents SET last_report_seq = NULL WHERE agent_id = $1",
    ] {
        sqlx::query(statement)
            .bind(&agent_id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    assert!(manager.status(&agent_id).await?.status.is_none());
    let restored = manager
        .wait_for_status(
            &agent_id,
            "the status sent again",
            Duration::from_secs(10),
            |s| s.report_seq == converged_seq && s.observed_generation == generation,
        )
        .await?;
    assert_eq!(restored.resources.len(), 1);
    Ok(())
}

#[tokio::test]
async fn an_agent_whose_watch_wait_a_manager_refuses_falls_back_to_a_shorter_one()
-> anyhow::Result<()> {
    // A manager capped at 40 s (as behind a proxy with a short read timeout) refuses the agent's
    // default 120 s wait with a 400.
    let manager = ManagerProcess::start_with_env(&[("FLEETLET_MAX_WAIT_SECONDS", "40")]).await?;
    let agent_id = unique_agent_id("capped");
    let options = manager.enroll(&agent_id).await?;
    let dirs = AgentDirs::new()?;
    let options = AgentOptions {
        watch_wait: "120s",
        ..options
    };
    let agent = AgentProcess::start(&dirs, &options)?;
    let path = dirs.root().join("capped.conf");
    let first = manager
        .put_resources(
            &agent_id,
            vec![file_resource("capped", &path, "one\n", "0644")],
        )
        .await?;
    manager
        .wait_converged(&agent_id, first, Duration::from_secs(15))
        .await?;
    agent
        .wait_for_log(&["using a shorter one"], Duration::from_secs(10))
        .await?;
    // The shorter long-poll still wakes at once on a push.
    let second = manager
        .put_resources(
            &agent_id,
            vec![file_resource("capped", &path, "two\n", "0644")],
        )
        .await?;
    manager
        .wait_converged(&agent_id, second, Duration::from_secs(5))
        .await?;
    assert_eq!(std::fs::read_to_string(&path)?, "two\n");
    Ok(())
}
