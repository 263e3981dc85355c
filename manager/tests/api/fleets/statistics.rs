//! A selection pass that moves many devices at once brings the planner's statistics of the
//! fleet tables up to date, rather than leave the first rollout of a new large fleet planned on
//! the old row counts until autovacuum gets to it (`refresh_statistics` in
//! store/postgres/fleet_devices.rs; BENCHMARKS.md, "Fleets").

use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::PgPool;

use super::{Lab, fleet};

/// When the manager last ran ANALYZE on `table` itself (autovacuum's runs are recorded apart).
async fn analyzed_at(pool: &PgPool, table: &str) -> Option<time::OffsetDateTime> {
    sqlx::query_scalar("SELECT last_analyze FROM pg_stat_user_tables WHERE relname = $1")
        .bind(table)
        .fetch_one(pool)
        .await
        .expect("the table's statistics row")
}

/// Waits up to 5 s for `table` to have been analyzed (the statistics view may lag the command).
async fn wait_analyzed(pool: &PgPool, table: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if analyzed_at(pool, table).await.is_some() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

async fn register(lab: &Lab, range: std::ops::Range<usize>) {
    for i in range {
        lab.server
            .register(&format!("bulk-{i:04}"), json!({"role": "bulk"}))
            .await;
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn a_selection_pass_that_moves_many_devices_analyzes_the_fleet_tables(pool: PgPool) {
    let lab = Lab::new(pool.clone()).await;
    // A few devices: left to autovacuum, as any small change.
    register(&lab, 0..20).await;
    lab.put_fleet(&fleet(
        "bulk",
        json!({"role": "bulk"}),
        "v1",
        json!([{}]),
        false,
    ))
    .await;
    lab.tick().await;
    assert_eq!(analyzed_at(&pool, "fleet_devices").await, None);
    // A batch's worth (500) and more selected in one pass: analyzed at once.
    register(&lab, 20..540).await;
    lab.tick().await;
    for table in ["fleet_devices", "agents"] {
        assert!(
            wait_analyzed(&pool, table).await,
            "{table} was not analyzed after 520 devices were selected in one pass"
        );
    }
}
