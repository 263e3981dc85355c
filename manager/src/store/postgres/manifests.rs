//! Manifests: storing a generation (with its event and NOTIFY), reading the current one and the
//! history, and turning NOTIFYs from every replica into wake-ups of local long-polls.

use std::time::Duration;

use fleetlet_manifests::api::EventType;
use fleetlet_manifests::manifest::RolloutPolicy;
use fleetlet_manifests::manifest::origin::FleetOrigin;
use fleetlet_manifests::{AgentId, ManifestSignature, Resource};
use sqlx::postgres::{PgListener, PgPool, PgRow};
use sqlx::types::Json;
use sqlx::{Postgres, Row, Transaction};
use time::OffsetDateTime;

use super::{PgStore, failure_kind, from_db, to_db};
use crate::store::{NewEvent, NewManifest, PutManifestOutcome, StoreError, StoredManifest};
use crate::watch::ManifestWatch;

/// The NOTIFY channel of manifest changes; the payload is the agent id.
pub const MANIFEST_CHANNEL: &str = "fleetlet_manifest";

impl PgStore {
    /// Queues a NOTIFY for the agent; PostgreSQL delivers it when the transaction commits.
    pub(super) async fn notify_manifest_change(
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
        // A device a fleet owns takes its manifests from the fleet only (docs/fleets.md).
        let owner: Option<String> =
            sqlx::query_scalar("SELECT fleet FROM agents WHERE agent_id = $1")
                .bind(agent_id.as_str())
                .fetch_one(&mut *tx)
                .await?;
        if let Some(fleet) = owner {
            return Err(StoreError::OwnedByFleet(fleet));
        }
        let outcome = Self::store_generation(&mut tx, agent_id, current, manifest, now).await?;
        tx.commit().await?;
        if outcome.created {
            // The NOTIFY reaches this replica too, but waking directly keeps local long-polls
            // prompt even while the listener is reconnecting.
            self.watch.wake(agent_id.as_str());
        }
        Ok(outcome)
    }

    /// Stores `manifest` as the generation after `current` unless it is the same as `current`;
    /// the caller holds the agent's row lock and commits.
    pub(super) async fn store_generation(
        tx: &mut Transaction<'_, Postgres>,
        agent_id: &AgentId,
        current: u64,
        manifest: NewManifest,
        now: OffsetDateTime,
    ) -> Result<PutManifestOutcome, StoreError> {
        if current > 0 {
            let latest = sqlx::query(
                "SELECT generation, resources, content_hash, signature, rollout, fleet, created_at, created_by FROM manifests \
                 WHERE agent_id = $1 AND generation = $2",
            )
            .bind(agent_id.as_str())
            .bind(to_db(current)?)
            .fetch_one(&mut **tx)
            .await?;
            let latest = stored_manifest(&latest)?;
            if latest.is_same_as(&manifest) {
                return Ok(PutManifestOutcome {
                    manifest: latest,
                    created: false,
                });
            }
        }
        let stored = manifest.into_stored(current + 1, now);
        sqlx::query(
            "INSERT INTO manifests \
               (agent_id, generation, resources, content_hash, signature, rollout, created_at, \
                created_by, fleet) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(agent_id.as_str())
        .bind(to_db(stored.generation)?)
        .bind(Json(&stored.resources))
        .bind(&stored.content_hash)
        .bind(stored.signature.as_ref().map(Json))
        .bind(stored.rollout.as_ref().map(Json))
        .bind(now)
        .bind(&stored.created_by)
        .bind(stored.fleet.as_ref().map(Json))
        .execute(&mut **tx)
        .await?;
        sqlx::query("UPDATE agents SET desired_generation = $2 WHERE agent_id = $1")
            .bind(agent_id.as_str())
            .bind(to_db(stored.generation)?)
            .execute(&mut **tx)
            .await?;
        let event = NewEvent::new(
            EventType::ManifestUpdated,
            serde_json::json!({"generation": stored.generation, "contentHash": stored.content_hash}),
        );
        Self::append_events(tx, agent_id, vec![event], now).await?;
        Self::notify_manifest_change(tx, agent_id).await?;
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
            "SELECT generation, resources, content_hash, signature, rollout, fleet, created_at, created_by FROM manifests \
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
            "SELECT generation, resources, content_hash, signature, rollout, fleet, created_at, created_by FROM manifests \
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
}

pub(super) fn stored_manifest(row: &PgRow) -> Result<StoredManifest, StoreError> {
    Ok(StoredManifest {
        generation: from_db(row.try_get("generation")?)?,
        resources: row.try_get::<Json<Vec<Resource>>, _>("resources")?.0,
        content_hash: row.try_get("content_hash")?,
        signature: row
            .try_get::<Option<Json<ManifestSignature>>, _>("signature")?
            .map(|json| json.0),
        rollout: row
            .try_get::<Option<Json<RolloutPolicy>>, _>("rollout")?
            .map(|json| json.0),
        fleet: row
            .try_get::<Option<Json<FleetOrigin>>, _>("fleet")?
            .map(|json| json.0),
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
    })
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
