//! Connecting to PostgreSQL: the pool, waiting for the database at start-up, applying the
//! embedded migrations, and the `/readyz` probe of the schema.

use std::str::FromStr;
use std::time::Duration;

use fleetlet_manifests::api::StoreReadiness;
use sqlx::ConnectOptions;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::{Batches, PgStore, failure_kind, is_unavailable};
use crate::redact::redact_database_url;
use crate::watch::ManifestWatch;

/// The migrations of `migrations/`, embedded at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// How long a request waits for a database connection before answering 503. Short, so that
/// `/readyz` answers within two seconds while the database is down.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest any single statement may run.
pub const STATEMENT_TIMEOUT_MS: &str = "5000";
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
            // belongs in the manager's logs (docs/reference.md §1): turning on debug logging to chase a
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
