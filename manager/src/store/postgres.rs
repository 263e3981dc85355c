//! The PostgreSQL store: the durable source of truth shared by every manager replica.
//!
//! Every write that must be atomic (a manifest and its event, a report and its per-resource rows
//! and events) runs in one transaction that first locks the agent's row, so concurrent writes for
//! one agent serialise and event seqs stay dense. Manifest writes also `NOTIFY` the channel
//! [`MANIFEST_CHANNEL`] with the agent id, which [`listen_for_manifest_changes`] on every replica
//! turns into wake-ups of its local long-polls.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use fleetlet_manifests::api::{Event, EventType, PhaseCounts, StoreReadiness};
use fleetlet_manifests::{
    AgentId, AgentInfo, AgentStatus, Condition, ErrorReason, Phase, ResourceDetails, ResourceError,
    ResourceId, ResourceStatus,
};
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::types::Json;
use sqlx::{ConnectOptions, Postgres, Row, Transaction};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{
    Contact, FleetQuery, FleetRow, NewEvent, NewManifest, PreviousReport, PutManifestOutcome,
    StoreError, StoredManifest, events_for_report, manifest_rejected, rolled_back,
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

/// The PostgreSQL store. Clones share one pool.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    database: String,
    watch: ManifestWatch,
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
        let store = Self {
            pool,
            database,
            watch,
        };
        store.wait_until_reachable().await?;
        store.migrate().await?;
        Ok(store)
    }

    /// A store over a pool whose database is already migrated (the API tests' fresh databases).
    pub fn from_pool(pool: PgPool, database: &str, watch: ManifestWatch) -> Self {
        Self {
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

    async fn ensure_active(&self, agent_id: &AgentId) -> Result<u64, StoreError> {
        let row = sqlx::query(
            "SELECT desired_generation FROM agents WHERE agent_id = $1 AND decommissioned_at IS NULL",
        )
        .bind(agent_id.as_str())
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::AgentNotFound(agent_id.clone()))?;
        from_db(row.try_get("desired_generation")?)
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
        let first = last - count + 1;
        let rows: Vec<serde_json::Value> = events
            .into_iter()
            .zip(first..)
            .map(|(event, seq)| {
                serde_json::json!({
                    "seq": seq,
                    "type": event.type_.as_str(),
                    "resource_id": event.resource_id,
                    "payload": event.payload,
                })
            })
            .collect();
        sqlx::query(
            "INSERT INTO events (agent_id, seq, type, resource_id, payload, created_at) \
             SELECT $1, e.seq, e.type, e.resource_id, e.payload, $3 \
             FROM jsonb_to_recordset($2) AS e(seq bigint, type text, resource_id text, payload jsonb)",
        )
        .bind(agent_id.as_str())
        .bind(Json(rows))
        .bind(now)
        .execute(&mut **tx)
        .await?;
        Ok(())
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
        // A lookup by the hash: the token itself never reaches the database, and the time taken
        // depends on the hash only, which an attacker cannot steer byte by byte.
        let id: Option<String> = sqlx::query_scalar(
            "SELECT agent_id FROM agents WHERE token_hash = $1 AND decommissioned_at IS NULL",
        )
        .bind(token_hash.to_hex())
        .fetch_optional(&self.pool)
        .await?;
        id.map(|id| AgentId::try_from(id).map_err(|e| corrupt("stored agent id", e.0)))
            .transpose()
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

    pub async fn report_status(
        &self,
        status: &AgentStatus,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let agent_id = &status.agent_id;
        let mut tx = self.pool.begin().await?;
        let agent = Self::lock_agent(&mut tx, agent_id).await?;
        let last_seq: Option<i64> = agent.try_get("last_report_seq")?;
        if last_seq.is_some_and(|last| to_db(status.report_seq).is_ok_and(|seq| seq <= last)) {
            return Ok(false);
        }
        let previous_status: Option<(i64, bool)> = sqlx::query_as(
            "SELECT observed_generation, rolled_back FROM agent_status WHERE agent_id = $1",
        )
        .bind(agent_id.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let previous_phases: BTreeMap<String, String> =
            sqlx::query_as("SELECT resource_id, phase FROM resource_status WHERE agent_id = $1")
                .bind(agent_id.as_str())
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .collect();
        let previous = PreviousReport {
            observed_generation: previous_status
                .map(|(observed, _)| from_db(observed))
                .transpose()?,
            phases: previous_phases,
            rolled_back: previous_status.is_some_and(|(_, rolled_back)| rolled_back),
        };
        let events = events_for_report(&previous, status);

        sqlx::query(
            "INSERT INTO agent_status (agent_id, manifest_generation, observed_generation, report_seq, \
               conditions, manifest_rejected, rolled_back, observed_at, received_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (agent_id) DO UPDATE SET manifest_generation = EXCLUDED.manifest_generation, \
               observed_generation = EXCLUDED.observed_generation, report_seq = EXCLUDED.report_seq, \
               conditions = EXCLUDED.conditions, manifest_rejected = EXCLUDED.manifest_rejected, \
               rolled_back = EXCLUDED.rolled_back, observed_at = EXCLUDED.observed_at, received_at = EXCLUDED.received_at",
        )
        .bind(agent_id.as_str())
        .bind(to_db(status.manifest_generation)?)
        .bind(to_db(status.observed_generation)?)
        .bind(to_db(status.report_seq)?)
        .bind(Json(&status.conditions))
        .bind(manifest_rejected(&status.conditions))
        .bind(rolled_back(&status.conditions))
        .bind(status.observed_at)
        .bind(now)
        .execute(&mut *tx)
        .await?;

        let reported: Vec<String> = status.resources.keys().map(ToString::to_string).collect();
        sqlx::query(
            "DELETE FROM resource_status WHERE agent_id = $1 AND NOT (resource_id = ANY($2))",
        )
        .bind(agent_id.as_str())
        .bind(&reported)
        .execute(&mut *tx)
        .await?;
        let rows = resource_rows(status)?;
        // One statement for all resources, however many there are: the rows travel as one JSON
        // array that PostgreSQL unpacks with jsonb_to_recordset.
        sqlx::query(
            "INSERT INTO resource_status (agent_id, resource_id, kind, phase, since, generation, \
               spec_hash, error_reason, error_message, retry_after, details, updated_at) \
             SELECT $1, r.resource_id, r.kind, r.phase, r.since, r.generation, r.spec_hash, \
               r.error_reason, r.error_message, r.retry_after, r.details, $3 \
             FROM jsonb_to_recordset($2) AS r(resource_id text, kind text, phase text, \
               since timestamptz, generation bigint, spec_hash text, error_reason text, \
               error_message text, retry_after timestamptz, details jsonb) \
             ON CONFLICT (agent_id, resource_id) DO UPDATE SET kind = EXCLUDED.kind, \
               phase = EXCLUDED.phase, since = EXCLUDED.since, generation = EXCLUDED.generation, \
               spec_hash = EXCLUDED.spec_hash, error_reason = EXCLUDED.error_reason, \
               error_message = EXCLUDED.error_message, retry_after = EXCLUDED.retry_after, \
               details = EXCLUDED.details, updated_at = EXCLUDED.updated_at",
        )
        .bind(agent_id.as_str())
        .bind(Json(rows))
        .bind(now)
        .execute(&mut *tx)
        .await?;

        sqlx::query(
            "UPDATE agents SET last_seen_at = $2, last_report_seq = $3, agent_info = $4 \
             WHERE agent_id = $1",
        )
        .bind(agent_id.as_str())
        .bind(now)
        .bind(to_db(status.report_seq)?)
        .bind(Json(&status.agent))
        .execute(&mut *tx)
        .await?;
        Self::append_events(&mut tx, agent_id, events, now).await?;
        tx.commit().await?;
        Ok(true)
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
        // GREATEST: a contact noted before a report must not move last contact back.
        sqlx::query(
            "UPDATE agents AS a SET last_seen_at = GREATEST(a.last_seen_at, c.at) \
             FROM unnest($1::text[], $2::timestamptz[]) AS c(agent_id, at) \
             WHERE a.agent_id = c.agent_id AND a.decommissioned_at IS NULL",
        )
        .bind(&ids)
        .bind(&times)
        .execute(&self.pool)
        .await?;
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
               error_message, retry_after, details \
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
        let mut counts = PhaseCounts::new();
        for resource in resources.values() {
            *counts.entry(resource.phase).or_default() += 1;
        }
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
        let rows = sqlx::query(
            "SELECT a.agent_id, a.labels, a.desired_generation, a.last_seen_at, \
               s.observed_generation, s.manifest_rejected, s.rolled_back \
             FROM agents a LEFT JOIN agent_status s ON s.agent_id = a.agent_id \
             WHERE a.decommissioned_at IS NULL AND a.labels @> $1 \
               AND ($2::text IS NULL OR a.agent_id > $2) \
               AND ($4::text IS NULL OR EXISTS (SELECT 1 FROM resource_status r \
                    WHERE r.agent_id = a.agent_id AND r.error_reason = $4)) \
             ORDER BY a.agent_id LIMIT $3",
        )
        .bind(Json(&query.labels))
        .bind(query.after.as_ref().map(AgentId::as_str))
        .bind(i64::try_from(query.limit).unwrap_or(i64::MAX))
        .bind(query.error_reason.as_deref())
        .fetch_all(&self.pool)
        .await?;
        let mut fleet = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: String = row.try_get("agent_id")?;
            fleet.push(FleetRow {
                agent_id: AgentId::try_from(id).map_err(|e| corrupt("stored agent id", e.0))?,
                labels: row
                    .try_get::<Json<BTreeMap<String, String>>, _>("labels")?
                    .0,
                desired_generation: from_db(row.try_get("desired_generation")?)?,
                last_seen_at: row.try_get("last_seen_at")?,
                observed_generation: row
                    .try_get::<Option<i64>, _>("observed_generation")?
                    .map(from_db)
                    .transpose()?,
                counts: PhaseCounts::new(),
                manifest_rejected: row
                    .try_get::<Option<bool>, _>("manifest_rejected")?
                    .unwrap_or(false),
                rolled_back: row
                    .try_get::<Option<bool>, _>("rolled_back")?
                    .unwrap_or(false),
            });
        }
        let ids: Vec<String> = fleet.iter().map(|r| r.agent_id.to_string()).collect();
        let counts: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT agent_id, phase, count(*) FROM resource_status \
             WHERE agent_id = ANY($1) GROUP BY agent_id, phase",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        for (id, phase, count) in counts {
            let phase = Phase::parse(&phase).ok_or_else(|| corrupt("stored phase", &phase))?;
            if let Some(row) = fleet.iter_mut().find(|r| r.agent_id.as_str() == id) {
                row.counts
                    .insert(phase, u32::try_from(count).unwrap_or(u32::MAX));
            }
        }
        Ok(fleet)
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

/// The rows of `resource_status` for a report, as the JSON that jsonb_to_recordset reads.
fn resource_rows(status: &AgentStatus) -> Result<Vec<serde_json::Value>, StoreError> {
    status
        .resources
        .iter()
        .map(|(id, resource)| {
            Ok(serde_json::json!({
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
