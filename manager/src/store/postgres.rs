//! The PostgreSQL store: the durable source of truth shared by every manager replica.
//!
//! Every write that must be atomic (a manifest and its event, a report and its per-resource rows
//! and events) runs in one transaction that first locks the agent's row, so concurrent writes for
//! one agent serialise and event seqs stay dense. Manifest writes also `NOTIFY` the channel
//! [`MANIFEST_CHANNEL`] with the agent id, which [`listen_for_manifest_changes`] on every replica
//! turns into wake-ups of its local long-polls.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use fleetlet_manifests::api::{Event, EventType, PhaseCounts, StoreReadiness};
use fleetlet_manifests::{
    AgentId, AgentInfo, AgentStatus, Condition, ErrorReason, Phase, Repairs, ResourceDetails,
    ResourceError, ResourceId, ResourceStatus,
};
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::types::Json;
use sqlx::{ConnectOptions, Postgres, Row, Transaction};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::coalesce::Coalescer;
use super::{
    Contact, FleetQuery, FleetRow, NewEvent, NewManifest, PreviousReport, PutManifestOutcome,
    RepairMark, StoreError, StoredManifest, events_for_report, manifest_rejected, phase_counts,
    repair_events, rolled_back,
};
use crate::redact::redact_database_url;
use crate::token::TokenHash;
use crate::watch::ManifestWatch;

/// The migrations of `migrations/`, embedded at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// The NOTIFY channel of manifest changes; the payload is the agent id.
pub const MANIFEST_CHANNEL: &str = "fleetlet_manifest";

/// How long a request waits for a database connection before answering 503. Short, so that
/// `/readyz` answers within two seconds while the database is down.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest any single statement may run.
const STATEMENT_TIMEOUT_MS: &str = "5000";
/// How long the start-up waits for the database to accept connections.
const STARTUP_WAIT: Duration = Duration::from_secs(15);

/// Why the manager cannot start on this database. Every message names the URL redacted only.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("DATABASE_URL {database} is not a valid PostgreSQL URL: {reason}")]
    InvalidUrl { database: String, reason: String },
    #[error("cannot use the database {database} ({kind}): {source}")]
    Unreachable {
        database: String,
        kind: &'static str,
        source: sqlx::Error,
    },
    #[error(
        "migration {version} ({description}) was changed after it was applied to {database}: its checksum differs"
    )]
    ChecksumMismatch {
        version: i64,
        description: String,
        database: String,
    },
    #[error(
        "migration {version} is applied in {database} but missing from this build (is the manager older than the database?)"
    )]
    MigrationMissing { version: i64, database: String },
    #[error("migration {version} in {database} was left unfinished by an earlier run")]
    MigrationDirty { version: i64, database: String },
    #[error("applying the migrations to {database} failed: {reason}")]
    MigrationFailed { database: String, reason: String },
}

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
const LOOKUP_BATCH: usize = 500;
/// Reports per transaction. Each carries its resources' rows, so batches stay smaller.
const REPORT_BATCH: usize = 64;
/// Lookup batches in flight at once. The pool has 16 connections; these and the report
/// batches leave room for everything else.
const BATCHES_IN_FLIGHT: usize = 4;
/// Report transactions in flight at once: fewer, larger transactions cost PostgreSQL less per
/// report than many small ones, and two keep one committing while the next is built.
const REPORTS_IN_FLIGHT: usize = 2;

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
    /// Connects (waiting a while for the database to come up) and applies pending migrations.
    pub async fn connect(url: &str, watch: ManifestWatch) -> Result<Self, ConnectError> {
        let database = redact_database_url(url);
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| ConnectError::InvalidUrl {
                database: database.clone(),
                // The parser's message names the bad part, never the password itself.
                reason: e.to_string(),
            })?
            .application_name("fleetlet-manager")
            .options([("statement_timeout", STATEMENT_TIMEOUT_MS)])
            // sqlx logs every statement's text at debug level (and slow ones at warn). SQL never
            // belongs in the manager's logs (DESIGN §1): turning on debug logging to chase a
            // problem must not show an operator the schema's queries and parameters.
            .disable_statement_logging();
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .min_connections(0)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options);
        let batches = Batches::spawn(&pool);
        let store = Self {
            pool,
            database,
            watch,
            batches,
        };
        store.wait_until_reachable().await?;
        store.migrate().await?;
        Ok(store)
    }

    /// A store over a pool whose database is already migrated (the API tests' fresh databases).
    pub fn from_pool(pool: PgPool, database: &str, watch: ManifestWatch) -> Self {
        Self {
            batches: Batches::spawn(&pool),
            pool,
            database: redact_database_url(database),
            watch,
        }
    }

    async fn wait_until_reachable(&self) -> Result<(), ConnectError> {
        let deadline = tokio::time::Instant::now() + STARTUP_WAIT;
        loop {
            match self.pool.acquire().await {
                Ok(_) => return Ok(()),
                Err(error) if is_unavailable(&error) && tokio::time::Instant::now() < deadline => {
                    tracing::warn!(database = %self.database, kind = failure_kind(&error), "database not reachable yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(source) => {
                    return Err(ConnectError::Unreachable {
                        database: self.database.clone(),
                        kind: failure_kind(&source),
                        source,
                    });
                }
            }
        }
    }

    async fn migrate(&self) -> Result<(), ConnectError> {
        let database = self.database.clone();
        let describe = |version: i64| {
            MIGRATOR
                .iter()
                .find(|m| m.version == version)
                .map_or_else(String::new, |m| m.description.to_string())
        };
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|error| match error {
                MigrateError::VersionMismatch(version) => ConnectError::ChecksumMismatch {
                    version,
                    description: describe(version),
                    database,
                },
                MigrateError::VersionMissing(version) => {
                    ConnectError::MigrationMissing { version, database }
                }
                MigrateError::Dirty(version) => ConnectError::MigrationDirty { version, database },
                other => ConnectError::MigrationFailed {
                    database,
                    reason: other.to_string(),
                },
            })?;
        tracing::info!(database = %self.database, version = ?MIGRATOR.iter().map(|m| m.version).max(), "database schema is up to date");
        Ok(())
    }

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

    /// Queues a NOTIFY for the agent; PostgreSQL delivers it when the transaction commits.
    async fn notify_manifest_change(
        tx: &mut Transaction<'_, Postgres>,
        agent_id: &AgentId,
    ) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(MANIFEST_CHANNEL)
            .bind(agent_id.as_str())
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    pub async fn register_agent(
        &self,
        agent_id: &AgentId,
        labels: &BTreeMap<String, String>,
        token_hash: TokenHash,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        // A decommissioned agent may come back under its id (a replaced device); an active one
        // may not be registered twice, which the WHERE of the upsert enforces.
        let registered = sqlx::query(
            "INSERT INTO agents (agent_id, labels, token_hash, registered_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (agent_id) DO UPDATE SET labels = EXCLUDED.labels, \
               token_hash = EXCLUDED.token_hash, registered_at = EXCLUDED.registered_at, \
               decommissioned_at = NULL \
             WHERE agents.decommissioned_at IS NOT NULL \
             RETURNING agent_id",
        )
        .bind(agent_id.as_str())
        .bind(Json(labels))
        .bind(token_hash.to_hex())
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        if registered.is_none() {
            return Err(StoreError::AgentExists(agent_id.clone()));
        }
        let event = NewEvent::new(
            EventType::AgentRegistered,
            serde_json::json!({"labels": labels}),
        );
        Self::append_events(&mut tx, agent_id, vec![event], now).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn enroll_agent(
        &self,
        agent_id: &AgentId,
        labels: &BTreeMap<String, String>,
        token_hash: TokenHash,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        // Unlike an admin registration, enrollment never takes over an existing id, not even a
        // decommissioned one: bringing a device back is the admin's decision.
        let enrolled = sqlx::query(
            "INSERT INTO agents (agent_id, labels, token_hash, registered_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (agent_id) DO NOTHING RETURNING agent_id",
        )
        .bind(agent_id.as_str())
        .bind(Json(labels))
        .bind(token_hash.to_hex())
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        if enrolled.is_none() {
            return Err(StoreError::AgentExists(agent_id.clone()));
        }
        let event = NewEvent::new(
            EventType::AgentRegistered,
            serde_json::json!({"labels": labels, "via": "enroll"}),
        );
        Self::append_events(&mut tx, agent_id, vec![event], now).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn rotate_token(
        &self,
        agent_id: &AgentId,
        token_hash: TokenHash,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        Self::lock_agent(&mut tx, agent_id).await?;
        sqlx::query("UPDATE agents SET token_hash = $2 WHERE agent_id = $1")
            .bind(agent_id.as_str())
            .bind(token_hash.to_hex())
            .execute(&mut *tx)
            .await?;
        let event = NewEvent::new(EventType::TokenRotated, serde_json::json!({}));
        Self::append_events(&mut tx, agent_id, vec![event], now).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn decommission(
        &self,
        agent_id: &AgentId,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        Self::lock_agent(&mut tx, agent_id).await?;
        sqlx::query(
            "UPDATE agents SET token_hash = NULL, decommissioned_at = $2 WHERE agent_id = $1",
        )
        .bind(agent_id.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let event = NewEvent::new(EventType::AgentDecommissioned, serde_json::json!({}));
        Self::append_events(&mut tx, agent_id, vec![event], now).await?;
        // Long-polls of this agent, on any replica, should end now rather than at their timeout.
        Self::notify_manifest_change(&mut tx, agent_id).await?;
        tx.commit().await?;
        self.watch.wake(agent_id.as_str());
        Ok(())
    }

    pub async fn agent_for_token(
        &self,
        token_hash: TokenHash,
    ) -> Result<Option<AgentId>, StoreError> {
        self.batches.tokens.call(token_hash).await
    }

    pub async fn put_manifest(
        &self,
        agent_id: &AgentId,
        manifest: NewManifest,
        now: OffsetDateTime,
    ) -> Result<PutManifestOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        let agent = Self::lock_agent(&mut tx, agent_id).await?;
        let current = from_db(agent.try_get("desired_generation")?)?;
        if let Some(expected) = manifest.if_generation
            && expected != current
        {
            return Err(StoreError::GenerationMismatch { expected, current });
        }
        if current > 0 {
            let latest = sqlx::query(
                "SELECT generation, resources, content_hash, signature, rollout, created_at, created_by FROM manifests \
                 WHERE agent_id = $1 AND generation = $2",
            )
            .bind(agent_id.as_str())
            .bind(to_db(current)?)
            .fetch_one(&mut *tx)
            .await?;
            let latest = stored_manifest(&latest)?;
            if latest.is_same_as(&manifest) {
                return Ok(PutManifestOutcome {
                    manifest: latest,
                    created: false,
                });
            }
        }
        let stored = StoredManifest {
            generation: current + 1,
            resources: manifest.resources,
            content_hash: manifest.content_hash,
            signature: manifest.signature,
            rollout: manifest.rollout,
            created_at: now,
            created_by: manifest.created_by,
        };
        sqlx::query(
            "INSERT INTO manifests \
               (agent_id, generation, resources, content_hash, signature, rollout, created_at, \
                created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(agent_id.as_str())
        .bind(to_db(stored.generation)?)
        .bind(Json(&stored.resources))
        .bind(&stored.content_hash)
        .bind(stored.signature.as_ref().map(Json))
        .bind(stored.rollout.as_ref().map(Json))
        .bind(now)
        .bind(&stored.created_by)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE agents SET desired_generation = $2 WHERE agent_id = $1")
            .bind(agent_id.as_str())
            .bind(to_db(stored.generation)?)
            .execute(&mut *tx)
            .await?;
        let event = NewEvent::new(
            EventType::ManifestUpdated,
            serde_json::json!({"generation": stored.generation, "contentHash": stored.content_hash}),
        );
        Self::append_events(&mut tx, agent_id, vec![event], now).await?;
        Self::notify_manifest_change(&mut tx, agent_id).await?;
        tx.commit().await?;
        // The NOTIFY reaches this replica too, but waking directly keeps local long-polls prompt
        // even while the listener is reconnecting.
        self.watch.wake(agent_id.as_str());
        Ok(PutManifestOutcome {
            manifest: stored,
            created: true,
        })
    }

    pub async fn current_generation(&self, agent_id: &AgentId) -> Result<u64, StoreError> {
        self.ensure_active(agent_id).await
    }

    pub async fn current_manifest(
        &self,
        agent_id: &AgentId,
    ) -> Result<Option<StoredManifest>, StoreError> {
        let generation = self.ensure_active(agent_id).await?;
        if generation == 0 {
            return Ok(None);
        }
        let row = sqlx::query(
            "SELECT generation, resources, content_hash, signature, rollout, created_at, created_by FROM manifests \
             WHERE agent_id = $1 AND generation = $2",
        )
        .bind(agent_id.as_str())
        .bind(to_db(generation)?)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(stored_manifest).transpose()
    }

    pub async fn manifest_history(
        &self,
        agent_id: &AgentId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<StoredManifest>, StoreError> {
        self.ensure_active(agent_id).await?;
        let before = before.map(to_db).transpose()?;
        let rows = sqlx::query(
            "SELECT generation, resources, content_hash, signature, rollout, created_at, created_by FROM manifests \
             WHERE agent_id = $1 AND ($2::bigint IS NULL OR generation < $2) \
             ORDER BY generation DESC LIMIT $3",
        )
        .bind(agent_id.as_str())
        .bind(before)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(stored_manifest).collect()
    }

    /// Stores a report. Concurrent reports share one transaction (`report_batch`).
    pub async fn report_status(
        &self,
        status: AgentStatus,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        self.batches.reports.call((Arc::new(status), now)).await
    }

    pub async fn agent_contact(&self, agent_id: &AgentId) -> Result<Contact, StoreError> {
        let row: Option<(Option<i64>, i64)> = sqlx::query_as(
            "SELECT last_report_seq, desired_generation FROM agents \
             WHERE agent_id = $1 AND decommissioned_at IS NULL",
        )
        .bind(agent_id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let (seq, generation) = row.ok_or_else(|| StoreError::AgentNotFound(agent_id.clone()))?;
        Ok(Contact {
            report_seq: seq.map(from_db).transpose()?,
            generation: from_db(generation)?,
        })
    }

    pub async fn record_contacts(
        &self,
        contacts: &[(AgentId, OffsetDateTime)],
    ) -> Result<(), StoreError> {
        let ids: Vec<&str> = contacts.iter().map(|(id, _)| id.as_str()).collect();
        let times: Vec<OffsetDateTime> = contacts.iter().map(|(_, at)| *at).collect();
        let mut tx = self.pool.begin().await?;
        // Lock the rows in id order first, as batched reports do: an UPDATE over many rows
        // locks them in whatever order its plan visits them, which could deadlock with a batch.
        sqlx::query(
            "SELECT 1 FROM agents WHERE agent_id = ANY($1) AND decommissioned_at IS NULL \
             ORDER BY agent_id FOR UPDATE",
        )
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
        // GREATEST: a contact noted before a report must not move last contact back.
        sqlx::query(
            "UPDATE agents AS a SET last_seen_at = GREATEST(a.last_seen_at, c.at) \
             FROM unnest($1::text[], $2::timestamptz[]) AS c(agent_id, at) \
             WHERE a.agent_id = c.agent_id AND a.decommissioned_at IS NULL",
        )
        .bind(&ids)
        .bind(&times)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn status(
        &self,
        agent_id: &AgentId,
    ) -> Result<(FleetRow, Option<AgentStatus>), StoreError> {
        let row = sqlx::query(
            "SELECT a.labels, a.desired_generation, a.last_seen_at, a.agent_info, \
               s.manifest_generation, s.observed_generation, s.report_seq, s.conditions, \
               s.manifest_rejected, s.rolled_back, s.observed_at \
             FROM agents a LEFT JOIN agent_status s ON s.agent_id = a.agent_id \
             WHERE a.agent_id = $1 AND a.decommissioned_at IS NULL",
        )
        .bind(agent_id.as_str())
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::AgentNotFound(agent_id.clone()))?;
        let resource_rows = sqlx::query(
            "SELECT resource_id, kind, phase, since, generation, spec_hash, error_reason, \
               error_message, retry_after, details, repairs \
             FROM resource_status WHERE agent_id = $1 ORDER BY resource_id",
        )
        .bind(agent_id.as_str())
        .fetch_all(&self.pool)
        .await?;
        let mut resources = BTreeMap::new();
        for resource in &resource_rows {
            let (id, status) = resource_status(resource)?;
            resources.insert(id, status);
        }
        let counts = phase_counts(&resources);
        let fleet_row = FleetRow {
            agent_id: agent_id.clone(),
            labels: row
                .try_get::<Json<BTreeMap<String, String>>, _>("labels")?
                .0,
            desired_generation: from_db(row.try_get("desired_generation")?)?,
            last_seen_at: row.try_get("last_seen_at")?,
            observed_generation: row
                .try_get::<Option<i64>, _>("observed_generation")?
                .map(from_db)
                .transpose()?,
            counts,
            manifest_rejected: row
                .try_get::<Option<bool>, _>("manifest_rejected")?
                .unwrap_or(false),
            rolled_back: row
                .try_get::<Option<bool>, _>("rolled_back")?
                .unwrap_or(false),
        };
        let report_seq: Option<i64> = row.try_get("report_seq")?;
        let info: Option<Json<AgentInfo>> = row.try_get("agent_info")?;
        let status = match (report_seq, info) {
            (Some(report_seq), Some(Json(agent))) => Some(AgentStatus {
                api_version: fleetlet_manifests::API_VERSION.to_owned(),
                kind: fleetlet_manifests::status::STATUS_KIND.to_owned(),
                agent_id: agent_id.clone(),
                report_seq: from_db(report_seq)?,
                manifest_generation: from_db(row.try_get("manifest_generation")?)?,
                observed_generation: from_db(row.try_get("observed_generation")?)?,
                observed_at: row.try_get("observed_at")?,
                agent,
                conditions: row.try_get::<Json<Vec<Condition>>, _>("conditions")?.0,
                resources,
            }),
            _ => None,
        };
        Ok((fleet_row, status))
    }

    pub async fn fleet(&self, query: &FleetQuery) -> Result<Vec<FleetRow>, StoreError> {
        // The cursor bounds both sides of the join (ids are never empty, so '' is below all of
        // them): each page then starts both index scans at the cursor. Bounding `agents` alone
        // let the join read `agent_status` from its first row, so a walk through the whole
        // fleet cost time quadratic in its size. Not a persistent prepared statement: PostgreSQL
        // soon switches those to a generic plan, which cannot see the cursor or the page size
        // and sorts every agent past the cursor (BENCHMARKS.md, target 6); planned with its
        // values each time, a page is an index walk that stops at the limit. The phase counts
        // are the ones the agent's last report stored beside its status, so a page reads one
        // row per agent however many resources each has. The row is read as a tuple, which sqlx
        // decodes by position (by name it hashes each column's name in every row).
        let rows: Vec<FleetColumns> = sqlx::query_as(
            "SELECT a.agent_id, a.labels, a.desired_generation, a.last_seen_at, \
               s.observed_generation, s.manifest_rejected, s.rolled_back, s.phase_counts \
             FROM agents a LEFT JOIN agent_status s \
               ON s.agent_id = a.agent_id AND s.agent_id > COALESCE($2::text, '') \
             WHERE a.decommissioned_at IS NULL AND a.labels @> $1 \
               AND a.agent_id > COALESCE($2::text, '') \
               AND ($4::text IS NULL OR EXISTS (SELECT 1 FROM resource_status r \
                    WHERE r.agent_id = a.agent_id AND r.error_reason = $4)) \
             ORDER BY a.agent_id LIMIT $3",
        )
        .bind(Json(&query.labels))
        .bind(query.after.as_ref().map(AgentId::as_str))
        .bind(i64::try_from(query.limit).unwrap_or(i64::MAX))
        .bind(query.error_reason.as_deref())
        .persistent(false)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(
                |(id, labels, desired, last_seen_at, observed, rejected, rolled_back, counts)| {
                    Ok(FleetRow {
                        agent_id: AgentId::try_from(id)
                            .map_err(|e| corrupt("stored agent id", e.0))?,
                        labels: labels.0,
                        desired_generation: from_db(desired)?,
                        last_seen_at,
                        observed_generation: observed.map(from_db).transpose()?,
                        counts: counts.map(|counts| counts.0).unwrap_or_default(),
                        manifest_rejected: rejected.unwrap_or(false),
                        rolled_back: rolled_back.unwrap_or(false),
                    })
                },
            )
            .collect()
    }

    pub async fn events(
        &self,
        agent_id: &AgentId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        self.ensure_active(agent_id).await?;
        let rows = sqlx::query(
            "SELECT seq, type, resource_id, payload, created_at FROM events \
             WHERE agent_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(agent_id.as_str())
        .bind(to_db(after_seq)?)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let type_: String = row.try_get("type")?;
                let resource_id: Option<String> = row.try_get("resource_id")?;
                Ok(Event {
                    seq: from_db(row.try_get("seq")?)?,
                    type_: EventType::parse(&type_)
                        .ok_or_else(|| corrupt("stored event type", &type_))?,
                    resource_id: resource_id
                        .map(|id| {
                            ResourceId::try_from(id).map_err(|e| corrupt("stored resource id", e.0))
                        })
                        .transpose()?,
                    payload: row.try_get::<Json<serde_json::Value>, _>("payload")?.0,
                    created_at: row.try_get("created_at")?,
                })
            })
            .collect()
    }

    pub async fn readiness(&self) -> StoreReadiness {
        let mut readiness = StoreReadiness {
            adapter: "postgres".to_owned(),
            reachable: false,
            migration_ready: false,
            migration_version: None,
            failure_kind: None,
            database: Some(self.database.clone()),
            warning: None,
        };
        // The pool's acquire timeout bounds this already; the outer timeout also covers a server
        // that accepts the connection but never answers.
        let probe = sqlx::query_as::<_, (i64, bool, Vec<u8>)>(
            "SELECT version, success, checksum FROM _sqlx_migrations ORDER BY version",
        )
        .fetch_all(&self.pool);
        let applied = match tokio::time::timeout(Duration::from_millis(1500), probe).await {
            Err(_) => {
                readiness.failure_kind = Some("timeout".to_owned());
                return readiness;
            }
            Ok(Err(error)) => {
                let kind = failure_kind(&error);
                tracing::debug!(kind, error = %error, "readiness probe failed");
                // A missing ledger still means the server answered.
                readiness.reachable = matches!(&error, sqlx::Error::Database(_));
                readiness.failure_kind = Some(match kind {
                    "schema-missing" => "migrations-missing".to_owned(),
                    other => other.to_owned(),
                });
                return readiness;
            }
            Ok(Ok(applied)) => applied,
        };
        readiness.reachable = true;
        readiness.migration_version = applied.iter().map(|(version, ..)| *version).max();
        let every_migration_applied = MIGRATOR.iter().all(|migration| {
            applied.iter().any(|(version, success, checksum)| {
                *version == migration.version && *success && **checksum == *migration.checksum
            })
        });
        let nothing_unknown = applied
            .iter()
            .all(|(version, ..)| MIGRATOR.iter().any(|m| m.version == *version));
        readiness.migration_ready = every_migration_applied && nothing_unknown;
        if !readiness.migration_ready {
            readiness.failure_kind = Some("migrations-not-applied".to_owned());
        }
        readiness
    }
}

fn stored_manifest(row: &PgRow) -> Result<StoredManifest, StoreError> {
    Ok(StoredManifest {
        generation: from_db(row.try_get("generation")?)?,
        resources: row.try_get::<Json<serde_json::Value>, _>("resources")?.0,
        content_hash: row.try_get("content_hash")?,
        signature: row
            .try_get::<Option<Json<serde_json::Value>>, _>("signature")?
            .map(|json| json.0),
        rollout: row
            .try_get::<Option<Json<serde_json::Value>>, _>("rollout")?
            .map(|json| json.0),
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
    })
}

/// The per-call results of one batch (`coalesce.rs`).
type BatchResults<V> = Result<Vec<Result<V, StoreError>>, StoreError>;

/// The agents holding these token hashes, in one read. A lookup by the hash: the token itself
/// never reaches the database, and the time taken depends on the hashes only.
async fn agents_for_tokens(pool: PgPool, hashes: Vec<TokenHash>) -> BatchResults<Option<AgentId>> {
    let hex: Vec<String> = hashes.into_iter().map(TokenHash::to_hex).collect();
    let owners: HashMap<String, String> = sqlx::query_as(
        "SELECT token_hash, agent_id FROM agents \
         WHERE token_hash = ANY($1) AND decommissioned_at IS NULL",
    )
    .bind(&hex)
    .fetch_all(&pool)
    .await?
    .into_iter()
    .collect();
    Ok(hex
        .iter()
        .map(|hash| {
            owners
                .get(hash)
                .map(|id| {
                    AgentId::try_from(id.as_str()).map_err(|e| corrupt("stored agent id", e.0))
                })
                .transpose()
        })
        .collect())
}

/// The generations of these agents, in one read; an agent that is not active is not found.
async fn active_generations(pool: PgPool, ids: Vec<AgentId>) -> BatchResults<u64> {
    let names: Vec<&str> = ids.iter().map(AgentId::as_str).collect();
    let generations: HashMap<String, i64> = sqlx::query_as(
        "SELECT agent_id, desired_generation FROM agents \
         WHERE agent_id = ANY($1) AND decommissioned_at IS NULL",
    )
    .bind(&names)
    .fetch_all(&pool)
    .await?
    .into_iter()
    .collect();
    Ok(ids
        .into_iter()
        .map(|id| match generations.get(id.as_str()) {
            Some(generation) => from_db(*generation),
            None => Err(StoreError::AgentNotFound(id)),
        })
        .collect())
}

/// Stores a batch of reports in rounds, one transaction each. The first rounds hold reports of
/// distinct agents, at most [`ROUND_RESOURCES`] resource rows each; an agent's second report in
/// the same batch comes after them, alone, so its `reportSeq` check and events see the first.
async fn report_batch(
    pool: PgPool,
    reports: Vec<(Arc<AgentStatus>, OffsetDateTime)>,
) -> BatchResults<bool> {
    let mut results: Vec<Option<Result<bool, StoreError>>> = std::iter::repeat_with(|| None)
        .take(reports.len())
        .collect();
    for (number, round) in report_rounds(&reports).into_iter().enumerate() {
        let outcomes = match report_round(&pool, round.iter().map(|&i| &reports[i]).collect()).await
        {
            Ok(outcomes) => outcomes,
            // Nothing is stored yet: the caller retries the calls one by one.
            Err(error) if number == 0 => return Err(error),
            Err(error) if round.len() == 1 => vec![Err(error)],
            Err(_) => {
                let mut outcomes = Vec::with_capacity(round.len());
                for &i in &round {
                    outcomes.push(match report_round(&pool, vec![&reports[i]]).await {
                        Ok(mut outcome) if outcome.len() == 1 => outcome.remove(0),
                        Ok(_) => Err(StoreError::Internal("a report gave no result".into())),
                        Err(error) => Err(error),
                    });
                }
                outcomes
            }
        };
        for (i, outcome) in round.into_iter().zip(outcomes) {
            results[i] = Some(outcome);
        }
    }
    Ok(results
        .into_iter()
        .map(|result| {
            result.unwrap_or_else(|| Err(StoreError::Internal("a report was lost".into())))
        })
        .collect())
}

/// Resource rows per report transaction: a few large reports do not make one huge statement.
const ROUND_RESOURCES: usize = 2_000;

/// Splits a batch into rounds of indices (see [`report_batch`]).
fn report_rounds(reports: &[(Arc<AgentStatus>, OffsetDateTime)]) -> Vec<Vec<usize>> {
    let mut seen = HashSet::new();
    let (first, again): (Vec<usize>, Vec<usize>) =
        (0..reports.len()).partition(|&i| seen.insert(reports[i].0.agent_id.as_str()));
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    let mut rows = 0;
    for i in first {
        let weight = reports[i].0.resources.len().max(1);
        match rounds.last_mut() {
            Some(round) if rows + weight <= ROUND_RESOURCES => {
                round.push(i);
                rows += weight;
            }
            _ => {
                rounds.push(vec![i]);
                rows = weight;
            }
        }
    }
    rounds.extend(again.into_iter().map(|i| vec![i]));
    rounds
}

/// One transaction for reports of distinct agents: lock their rows (in id order, as every
/// multi-agent write does, so two such writes cannot deadlock), drop the reports whose
/// `reportSeq` is not new, read what events are derived from, and write statuses, resource rows,
/// agent rows and events with one statement each.
async fn report_round(
    pool: &PgPool,
    reports: Vec<&(Arc<AgentStatus>, OffsetDateTime)>,
) -> BatchResults<bool> {
    let mut tx = pool.begin().await?;
    let mut ids: Vec<&str> = reports.iter().map(|(s, _)| s.agent_id.as_str()).collect();
    ids.sort_unstable();
    let last_seqs: HashMap<String, Option<i64>> = sqlx::query_as(
        "SELECT agent_id, last_report_seq FROM agents \
         WHERE agent_id = ANY($1) AND decommissioned_at IS NULL ORDER BY agent_id FOR UPDATE",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    let mut outcomes = Vec::with_capacity(reports.len());
    let mut accepted = Vec::new();
    for (status, now) in reports {
        outcomes.push(match last_seqs.get(status.agent_id.as_str()) {
            None => Err(StoreError::AgentNotFound(status.agent_id.clone())),
            Some(last)
                if last
                    .is_some_and(|last| to_db(status.report_seq).is_ok_and(|seq| seq <= last)) =>
            {
                Ok(false)
            }
            Some(_) => {
                accepted.push((status.as_ref(), *now));
                Ok(true)
            }
        });
    }
    if accepted.is_empty() {
        return Ok(outcomes);
    }
    let ids: Vec<&str> = accepted.iter().map(|(s, _)| s.agent_id.as_str()).collect();
    let mut previous: HashMap<String, PreviousReport> = HashMap::new();
    let statuses: Vec<(String, i64, bool)> = sqlx::query_as(
        "SELECT agent_id, observed_generation, rolled_back FROM agent_status \
         WHERE agent_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    for (agent, observed, was_rolled_back) in statuses {
        let entry = previous.entry(agent).or_default();
        entry.observed_generation = Some(from_db(observed)?);
        entry.rolled_back = was_rolled_back;
    }
    type PhaseRow = (String, String, String, i64, Option<OffsetDateTime>);
    let phases: Vec<PhaseRow> = sqlx::query_as(
        "SELECT agent_id, resource_id, phase, repairs_evented, repair_evented_at \
         FROM resource_status WHERE agent_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    for (agent, resource, phase, evented, evented_at) in phases {
        let entry = previous.entry(agent).or_default();
        if evented > 0 || evented_at.is_some() {
            let mark = RepairMark {
                evented: from_db(evented)?,
                evented_at,
            };
            entry.repairs.insert(resource.clone(), mark);
        }
        entry.phases.insert(resource, phase);
    }

    let mut rows = StatusRows::default();
    let mut resources = Vec::new();
    let (mut kept_agents, mut kept_resources) = (Vec::new(), Vec::new());
    let mut events = Vec::new();
    for &(status, now) in &accepted {
        let agent = status.agent_id.as_str();
        let before = previous.get(agent).cloned().unwrap_or_default();
        let (repaired, marks) = repair_events(&before, status, now);
        let mut new_events = events_for_report(&before, status);
        new_events.extend(repaired);
        rows.push(
            status,
            now,
            i64::try_from(new_events.len()).map_err(|e| corrupt("event count", e))?,
        )?;
        resources.extend(resource_rows(status, &marks, now)?);
        for id in status.resources.keys() {
            kept_agents.push(agent);
            kept_resources.push(id.as_str());
        }
        events.push((&status.agent_id, new_events, now));
    }

    sqlx::query(
        "INSERT INTO agent_status (agent_id, manifest_generation, observed_generation, report_seq, \
           conditions, manifest_rejected, rolled_back, observed_at, received_at, phase_counts) \
         SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::jsonb[], \
           $6::boolean[], $7::boolean[], $8::timestamptz[], $9::timestamptz[], $10::jsonb[]) \
         ON CONFLICT (agent_id) DO UPDATE SET manifest_generation = EXCLUDED.manifest_generation, \
           observed_generation = EXCLUDED.observed_generation, report_seq = EXCLUDED.report_seq, \
           conditions = EXCLUDED.conditions, manifest_rejected = EXCLUDED.manifest_rejected, \
           rolled_back = EXCLUDED.rolled_back, observed_at = EXCLUDED.observed_at, \
           received_at = EXCLUDED.received_at, phase_counts = EXCLUDED.phase_counts",
    )
    .bind(&rows.agent_ids)
    .bind(&rows.manifest_generations)
    .bind(&rows.observed_generations)
    .bind(&rows.report_seqs)
    .bind(&rows.conditions)
    .bind(&rows.manifest_rejected)
    .bind(&rows.rolled_back)
    .bind(&rows.observed_at)
    .bind(&rows.received_at)
    .bind(&rows.phase_counts)
    .execute(&mut *tx)
    .await?;

    // Resources the agents no longer report are gone from their status.
    sqlx::query(
        "DELETE FROM resource_status r WHERE r.agent_id = ANY($1) AND NOT EXISTS ( \
           SELECT 1 FROM unnest($2::text[], $3::text[]) AS k(agent_id, resource_id) \
           WHERE k.agent_id = r.agent_id AND k.resource_id = r.resource_id)",
    )
    .bind(&ids)
    .bind(&kept_agents)
    .bind(&kept_resources)
    .execute(&mut *tx)
    .await?;
    if !resources.is_empty() {
        // One statement for all resources of all reports: the rows travel as one JSON array
        // that PostgreSQL unpacks with jsonb_to_recordset.
        sqlx::query(
            "INSERT INTO resource_status (agent_id, resource_id, kind, phase, since, generation, \
               spec_hash, error_reason, error_message, retry_after, details, updated_at, \
               repairs, repairs_evented, repair_evented_at) \
             SELECT r.agent_id, r.resource_id, r.kind, r.phase, r.since, r.generation, \
               r.spec_hash, r.error_reason, r.error_message, r.retry_after, r.details, \
               r.updated_at, r.repairs, r.repairs_evented, r.repair_evented_at \
             FROM jsonb_to_recordset($1) AS r(agent_id text, resource_id text, kind text, \
               phase text, since timestamptz, generation bigint, spec_hash text, \
               error_reason text, error_message text, retry_after timestamptz, details jsonb, \
               updated_at timestamptz, repairs jsonb, repairs_evented bigint, \
               repair_evented_at timestamptz) \
             ON CONFLICT (agent_id, resource_id) DO UPDATE SET kind = EXCLUDED.kind, \
               phase = EXCLUDED.phase, since = EXCLUDED.since, generation = EXCLUDED.generation, \
               spec_hash = EXCLUDED.spec_hash, error_reason = EXCLUDED.error_reason, \
               error_message = EXCLUDED.error_message, retry_after = EXCLUDED.retry_after, \
               details = EXCLUDED.details, updated_at = EXCLUDED.updated_at, \
               repairs = EXCLUDED.repairs, repairs_evented = EXCLUDED.repairs_evented, \
               repair_evented_at = EXCLUDED.repair_evented_at",
        )
        .bind(Json(resources))
        .execute(&mut *tx)
        .await?;
    }

    // The agents' rows, and their event seqs moved past this report's events, in one statement.
    let last_event_seqs: HashMap<String, i64> = sqlx::query_as(
        "UPDATE agents AS a SET last_seen_at = u.received_at, last_report_seq = u.report_seq, \
           agent_info = u.agent_info, last_event_seq = a.last_event_seq + u.events \
         FROM unnest($1::text[], $2::timestamptz[], $3::bigint[], $4::jsonb[], $5::bigint[]) \
           AS u(agent_id, received_at, report_seq, agent_info, events) \
         WHERE a.agent_id = u.agent_id RETURNING a.agent_id, a.last_event_seq",
    )
    .bind(&rows.agent_ids)
    .bind(&rows.received_at)
    .bind(&rows.report_seqs)
    .bind(&rows.agent_info)
    .bind(&rows.event_counts)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    let mut event_rows_all = Vec::new();
    for ((agent_id, new_events, now), count) in events.into_iter().zip(&rows.event_counts) {
        if new_events.is_empty() {
            continue;
        }
        let last = *last_event_seqs
            .get(agent_id.as_str())
            .ok_or_else(|| corrupt("event seq", format!("no row for {agent_id}")))?;
        event_rows_all.extend(event_rows(agent_id, new_events, last - count + 1, now)?);
    }
    insert_events(&mut tx, event_rows_all).await?;
    tx.commit().await?;
    Ok(outcomes)
}

/// A row of the fleet list's page query, in its column order: the status columns are NULL for
/// an agent that never reported.
type FleetColumns = (
    String,
    Json<BTreeMap<String, String>>,
    i64,
    Option<OffsetDateTime>,
    Option<i64>,
    Option<bool>,
    Option<bool>,
    Option<Json<PhaseCounts>>,
);

/// The `agent_status` and `agents` columns of a batch of reports, one array per column.
#[derive(Default)]
struct StatusRows<'a> {
    agent_ids: Vec<&'a str>,
    manifest_generations: Vec<i64>,
    observed_generations: Vec<i64>,
    report_seqs: Vec<i64>,
    conditions: Vec<Json<&'a [Condition]>>,
    manifest_rejected: Vec<bool>,
    rolled_back: Vec<bool>,
    observed_at: Vec<OffsetDateTime>,
    received_at: Vec<OffsetDateTime>,
    agent_info: Vec<Json<&'a AgentInfo>>,
    event_counts: Vec<i64>,
    phase_counts: Vec<Json<PhaseCounts>>,
}

impl<'a> StatusRows<'a> {
    fn push(
        &mut self,
        status: &'a AgentStatus,
        now: OffsetDateTime,
        events: i64,
    ) -> Result<(), StoreError> {
        self.agent_ids.push(status.agent_id.as_str());
        self.manifest_generations
            .push(to_db(status.manifest_generation)?);
        self.observed_generations
            .push(to_db(status.observed_generation)?);
        self.report_seqs.push(to_db(status.report_seq)?);
        self.conditions.push(Json(&status.conditions));
        self.manifest_rejected
            .push(manifest_rejected(&status.conditions));
        self.rolled_back.push(rolled_back(&status.conditions));
        self.observed_at.push(status.observed_at);
        self.received_at.push(now);
        self.agent_info.push(Json(&status.agent));
        self.event_counts.push(events);
        self.phase_counts
            .push(Json(phase_counts(&status.resources)));
        Ok(())
    }
}

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

/// The rows of `resource_status` for a report, as the JSON that jsonb_to_recordset reads.
fn resource_rows(
    status: &AgentStatus,
    marks: &BTreeMap<String, RepairMark>,
    now: OffsetDateTime,
) -> Result<Vec<serde_json::Value>, StoreError> {
    let updated_at = rfc3339(now)?;
    status
        .resources
        .iter()
        .map(|(id, resource)| {
            let mark = marks.get(id.as_str()).copied().unwrap_or_default();
            Ok(serde_json::json!({
                "repairs": resource.repairs,
                "repairs_evented": to_db(mark.evented)?,
                "repair_evented_at": mark.evented_at.map(rfc3339).transpose()?,
                "agent_id": status.agent_id,
                "resource_id": id,
                "kind": resource.kind,
                "phase": resource.phase.as_str(),
                "since": rfc3339(resource.since)?,
                "generation": to_db(resource.generation)?,
                "spec_hash": resource.spec_hash,
                "error_reason": resource.error.as_ref().map(|e| e.reason.as_str()),
                "error_message": resource.error.as_ref().map(|e| e.message.as_str()),
                "retry_after": resource.retry_after.map(rfc3339).transpose()?,
                "details": resource.details,
                "updated_at": updated_at,
            }))
        })
        .collect()
}

fn resource_status(row: &PgRow) -> Result<(ResourceId, ResourceStatus), StoreError> {
    let id: String = row.try_get("resource_id")?;
    let id = ResourceId::try_from(id).map_err(|e| corrupt("stored resource id", e.0))?;
    let phase: String = row.try_get("phase")?;
    let reason: Option<String> = row.try_get("error_reason")?;
    let message: Option<String> = row.try_get("error_message")?;
    let details: Option<Json<ResourceDetails>> = row.try_get("details")?;
    let repairs: Option<Json<Repairs>> = row.try_get("repairs")?;
    let status = ResourceStatus {
        kind: row.try_get("kind")?,
        phase: Phase::parse(&phase).ok_or_else(|| corrupt("stored phase", &phase))?,
        since: row.try_get("since")?,
        generation: from_db(row.try_get("generation")?)?,
        spec_hash: row.try_get("spec_hash")?,
        error: reason.map(|reason| ResourceError {
            reason: ErrorReason::parse(&reason),
            message: message.unwrap_or_default(),
        }),
        retry_after: row.try_get("retry_after")?,
        details: details.map(|Json(details)| details),
        repairs: repairs.map(|Json(repairs)| repairs),
    };
    Ok((id, status))
}

/// Turns NOTIFYs from every replica into wake-ups of this replica's long-polls, reconnecting
/// whenever the database goes away, until `shutdown` fires.
pub async fn listen_for_manifest_changes(
    pool: PgPool,
    watch: ManifestWatch,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        match subscribe(&pool).await {
            Ok(mut listener) => {
                // Changes made while nobody listened were missed; the waiters re-read the store.
                watch.wake_all();
                loop {
                    tokio::select! {
                        _ = shutdown.changed() => return,
                        received = listener.try_recv() => match received {
                            Ok(Some(notification)) => watch.wake(notification.payload()),
                            // The connection dropped; the next try_recv reconnects.
                            Ok(None) => {
                                tracing::warn!("lost the database connection that listens for manifest changes");
                                watch.wake_all();
                            }
                            Err(error) => {
                                tracing::warn!(kind = failure_kind(&error), error = %error, "listening for manifest changes failed; retrying");
                                break;
                            }
                        },
                    }
                }
            }
            Err(error) => {
                tracing::warn!(kind = failure_kind(&error), error = %error, "cannot listen for manifest changes yet; retrying");
            }
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

async fn subscribe(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(MANIFEST_CHANNEL).await?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A report of `agent_id` with `resources` File resources.
    fn report(agent_id: &str, resources: usize) -> (Arc<AgentStatus>, OffsetDateTime) {
        let resources: serde_json::Map<String, serde_json::Value> = (0..resources)
            .map(|i| {
                let resource = json!({"kind": "File", "phase": "Ready",
                    "since": "2026-11-22T10:00:00Z", "generation": 1});
                (format!("file-{i}"), resource)
            })
            .collect();
        let status = serde_json::from_value(json!({
            "apiVersion": "fleetlet.dev/v1", "kind": "AgentStatus", "agentId": agent_id,
            "reportSeq": 1, "manifestGeneration": 1, "observedGeneration": 1,
            "observedAt": "2026-11-22T10:00:00Z",
            "agent": {"version": "0.1.0", "hostname": "h", "arch": "x86_64", "os": "linux",
                      "bootId": "b", "startedAt": "2026-11-22T09:00:00Z", "supportedKinds": []},
            "conditions": [], "resources": resources,
        }))
        .expect("valid status");
        (Arc::new(status), OffsetDateTime::now_utc())
    }

    #[test]
    fn an_agents_second_report_in_a_batch_is_a_round_of_its_own_after_the_rest() {
        let batch = [
            report("a", 1),
            report("b", 0),
            report("a", 1),
            report("c", 1),
            report("a", 1),
        ];
        assert_eq!(report_rounds(&batch), vec![vec![0, 1, 3], vec![2], vec![4]]);
    }

    #[test]
    fn large_reports_are_split_across_rounds_by_their_resource_rows() {
        let batch = [
            report("a", 1_500),
            report("b", 400),
            report("c", 200),
            report("d", 3_000),
            report("e", 0),
        ];
        assert_eq!(
            report_rounds(&batch),
            vec![vec![0, 1], vec![2], vec![3], vec![4]]
        );
    }
}
