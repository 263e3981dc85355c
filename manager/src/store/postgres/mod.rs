//! The PostgreSQL store: the durable source of truth shared by every manager replica.
//!
//! Every write that must be atomic (a manifest and its event, a report and its per-resource rows
//! and events) runs in one transaction that first locks the agent's row, so concurrent writes for
//! one agent serialise and event seqs stay dense. Manifest writes also `NOTIFY` the channel
//! [`MANIFEST_CHANNEL`] with the agent id, which [`listen_for_manifest_changes`] on every replica
//! turns into wake-ups of its local long-polls.
//!
//! This file holds the type, the row lock and event appends every writer shares, and the error
//! classification; the rest is split by aggregate: `migrate.rs` (connect, migrations,
//! readiness), `agents.rs`, `manifests.rs`, `reports.rs` (status report batching) and
//! `queries.rs` (status view, fleet list, events).

mod agents;
mod fleet_devices;
mod fleets;
mod manifests;
mod migrate;
mod queries;
mod reports;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use fleetlet_manifests::{AgentId, AgentStatus};
use sqlx::postgres::{PgPool, PgRow};
use sqlx::types::Json;
use sqlx::{Postgres, Transaction};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::coalesce::Coalescer;
use super::{NewEvent, StoreError};
use crate::token::TokenHash;
use crate::watch::ManifestWatch;
use agents::{active_generations, agents_for_tokens};
use reports::report_batch;

pub use manifests::{MANIFEST_CHANNEL, listen_for_manifest_changes};
pub use migrate::{ACQUIRE_TIMEOUT, ConnectError, MIGRATOR, STATEMENT_TIMEOUT_MS};

/// The PostgreSQL store. Clones share one pool and one set of batch dispatchers.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    database: String,
    watch: ManifestWatch,
    batches: Batches,
}

/// The calls that arrive many at a time under load, each coalesced into one round trip per
/// batch (`coalesce.rs`): a poll's token and generation lookups, and status reports.
#[derive(Clone)]
struct Batches {
    tokens: Coalescer<TokenHash, Option<AgentId>>,
    generations: Coalescer<AgentId, u64>,
    reports: Coalescer<(Arc<AgentStatus>, OffsetDateTime), bool>,
}

/// A batch of lookups answers at most this many calls: 10,000 agents re-polling together cost
/// 20 reads, not 10,000.
pub const LOOKUP_BATCH: usize = 500;
/// Reports per transaction. Each carries its resources' rows, so batches stay smaller.
pub const REPORT_BATCH: usize = 64;
/// Lookup batches in flight at once. The pool has 16 connections; these and the report
/// batches leave room for everything else.
pub const BATCHES_IN_FLIGHT: usize = 4;
/// Report transactions in flight at once: fewer, larger transactions cost PostgreSQL less per
/// report than many small ones, and two keep one committing while the next is built.
pub const REPORTS_IN_FLIGHT: usize = 2;

impl Batches {
    fn spawn(pool: &PgPool) -> Self {
        let tokens = Coalescer::spawn(LOOKUP_BATCH, BATCHES_IN_FLIGHT, {
            let pool = pool.clone();
            move |hashes| agents_for_tokens(pool.clone(), hashes)
        });
        let generations = Coalescer::spawn(LOOKUP_BATCH, BATCHES_IN_FLIGHT, {
            let pool = pool.clone();
            move |ids| active_generations(pool.clone(), ids)
        });
        let reports = Coalescer::spawn(REPORT_BATCH, REPORTS_IN_FLIGHT, {
            let pool = pool.clone();
            move |reports| report_batch(pool.clone(), reports)
        });
        Self {
            tokens,
            generations,
            reports,
        }
    }
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

/// Whether an error means the database is (for now) out of reach, rather than a bug.
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // Class 08: connection exception; 53: insufficient resources; 57: operator intervention
        // (shutdown, statement timeout).
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            ["08", "53", "57"]
                .iter()
                .any(|class| code.starts_with(class))
        }),
        _ => false,
    }
}

/// A short kebab-case word for why the database failed, for `/readyz` and start-up errors.
pub fn failure_kind(error: &sqlx::Error) -> &'static str {
    match error {
        sqlx::Error::PoolTimedOut => "timeout",
        sqlx::Error::Io(_) | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => "unreachable",
        sqlx::Error::Tls(_) => "tls-failed",
        sqlx::Error::Protocol(_) => "protocol-error",
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("28P01" | "28000") => "auth-failed",
            Some("3D000") => "database-missing",
            Some("42P01") => "schema-missing",
            Some("57014") => "timeout",
            Some(code) if code.starts_with("57") || code.starts_with("08") => "unreachable",
            _ => "query-failed",
        },
        _ => "query-failed",
    }
}

fn to_db(value: u64) -> Result<i64, StoreError> {
    i64::try_from(value)
        .map_err(|_| StoreError::Internal(format!("{value} exceeds the range of a bigint")))
}

fn from_db(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value)
        .map_err(|_| StoreError::Internal(format!("negative value {value} in the database")))
}

fn corrupt(what: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("{what}: {error}"))
}

fn rfc3339(at: OffsetDateTime) -> Result<String, StoreError> {
    at.format(&Rfc3339)
        .map_err(|e| corrupt("formatting a timestamp", e))
}

impl PgStore {
    /// The pool, for the NOTIFY listener.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Locks the agent's row for the rest of the transaction; fails if it is not active.
    async fn lock_agent(
        tx: &mut Transaction<'_, Postgres>,
        agent_id: &AgentId,
    ) -> Result<PgRow, StoreError> {
        sqlx::query(
            "SELECT desired_generation, last_report_seq FROM agents \
             WHERE agent_id = $1 AND decommissioned_at IS NULL FOR UPDATE",
        )
        .bind(agent_id.as_str())
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| StoreError::AgentNotFound(agent_id.clone()))
    }

    /// The agent's generation; fails if it is not active. Coalesced with concurrent lookups.
    async fn ensure_active(&self, agent_id: &AgentId) -> Result<u64, StoreError> {
        self.batches.generations.call(agent_id.clone()).await
    }

    /// Appends events with the next seqs of the agent; the caller holds the agent's row lock.
    async fn append_events(
        tx: &mut Transaction<'_, Postgres>,
        agent_id: &AgentId,
        events: Vec<NewEvent>,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let count = i64::try_from(events.len()).map_err(|e| corrupt("event count", e))?;
        let last: i64 = sqlx::query_scalar(
            "UPDATE agents SET last_event_seq = last_event_seq + $2 WHERE agent_id = $1 \
             RETURNING last_event_seq",
        )
        .bind(agent_id.as_str())
        .bind(count)
        .fetch_one(&mut **tx)
        .await?;
        let rows = event_rows(agent_id, events, last - count + 1, now)?;
        insert_events(tx, rows).await
    }
}

/// The per-call results of one batch (`coalesce.rs`).
type BatchResults<V> = Result<Vec<Result<V, StoreError>>, StoreError>;

/// Event rows with seqs from `first` on, as the JSON that [`insert_events`] reads.
fn event_rows(
    agent_id: &AgentId,
    events: Vec<NewEvent>,
    first: i64,
    now: OffsetDateTime,
) -> Result<Vec<serde_json::Value>, StoreError> {
    let created_at = rfc3339(now)?;
    Ok(events
        .into_iter()
        .zip(first..)
        .map(|(event, seq)| {
            serde_json::json!({
                "agent_id": agent_id,
                "seq": seq,
                "type": event.type_.as_str(),
                "resource_id": event.resource_id,
                "payload": event.payload,
                "created_at": created_at,
            })
        })
        .collect())
}

async fn insert_events(
    tx: &mut Transaction<'_, Postgres>,
    rows: Vec<serde_json::Value>,
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO events (agent_id, seq, type, resource_id, payload, created_at) \
         SELECT e.agent_id, e.seq, e.type, e.resource_id, e.payload, e.created_at \
         FROM jsonb_to_recordset($1) AS e(agent_id text, seq bigint, type text, \
           resource_id text, payload jsonb, created_at timestamptz)",
    )
    .bind(Json(rows))
    .execute(&mut **tx)
    .await?;
    Ok(())
}
