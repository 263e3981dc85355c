//! Fleets in PostgreSQL: revisions, the rollout state (a compare-and-set on its version), the
//! fleet's event log and the per-fleet leases of the rollout controller. Device rows, manifest
//! writes and selection are in `fleet_devices.rs`.

use fleetlet_manifests::api::{Event, EventType};
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{Postgres, Row, Transaction};
use time::OffsetDateTime;

use super::{PgStore, corrupt, from_db, rfc3339, to_db};
use crate::store::fleets::{
    DeviceStateUpdate, NewFleetRevision, PutFleetOutcome, RolloutWrite, StoredFleet,
    StoredFleetRevision, Supersede,
};
use crate::store::{NewEvent, StoreError};

const FLEET_COLUMNS: &str = "f.name, f.revision, f.rollout, f.rollout_version, f.phase, \
     f.updated_at, r.spec, r.content_revision";

impl PgStore {
    /// Stores a new revision unless it is identical to the newest one; a changed template
    /// (`template_hash`) makes the revision its own content revision and starts its rollout.
    pub async fn put_fleet(
        &self,
        new: NewFleetRevision,
        supersede: Supersede,
        now: OffsetDateTime,
    ) -> Result<PutFleetOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Serialises concurrent PUTs of one fleet, including the first one.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('fleet:' || $1))")
            .bind(&new.name)
            .execute(&mut *tx)
            .await?;
        let current = sqlx::query(
            "SELECT f.revision, f.rollout, r.content_hash, r.template_hash, r.content_revision \
             FROM fleets f JOIN fleet_revisions r ON r.fleet = f.name AND r.revision = f.revision \
             WHERE f.name = $1 FOR UPDATE OF f",
        )
        .bind(&new.name)
        .fetch_optional(&mut *tx)
        .await?;
        let (revision, content_revision, rollout) = match &current {
            None => (1, 1, supersede(None, 1, now)),
            Some(row) => {
                let revision = from_db(row.try_get("revision")?)?;
                let content_hash: String = row.try_get("content_hash")?;
                if content_hash == new.content_hash {
                    return Ok(PutFleetOutcome {
                        revision,
                        created: false,
                        rollout: false,
                    });
                }
                let template_hash: String = row.try_get("template_hash")?;
                let next = revision + 1;
                if template_hash == new.template_hash {
                    let content_revision = from_db(row.try_get("content_revision")?)?;
                    (
                        next,
                        content_revision,
                        (serde_json::Value::Null, String::new()),
                    )
                } else {
                    let state = row.try_get::<Json<serde_json::Value>, _>("rollout")?.0;
                    (next, next, supersede(Some(&state), next, now))
                }
            }
        };
        let starts = content_revision == revision;
        if current.is_none() {
            sqlx::query(
                "INSERT INTO fleets (name, revision, rollout, rollout_version, phase, \
                   created_at, updated_at) VALUES ($1, 1, $2, 1, $3, $4, $4)",
            )
            .bind(&new.name)
            .bind(Json(&rollout.0))
            .bind(&rollout.1)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        } else if starts {
            sqlx::query(
                "UPDATE fleets SET revision = $2, rollout = $3, phase = $4, \
                   rollout_version = rollout_version + 1, updated_at = $5 WHERE name = $1",
            )
            .bind(&new.name)
            .bind(to_db(revision)?)
            .bind(Json(&rollout.0))
            .bind(&rollout.1)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        } else {
            sqlx::query("UPDATE fleets SET revision = $2, updated_at = $3 WHERE name = $1")
                .bind(&new.name)
                .bind(to_db(revision)?)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "INSERT INTO fleet_revisions (fleet, revision, content_revision, spec, content_hash, \
               template_hash, created_at, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&new.name)
        .bind(to_db(revision)?)
        .bind(to_db(content_revision)?)
        .bind(Json(&new.spec))
        .bind(&new.content_hash)
        .bind(&new.template_hash)
        .bind(now)
        .bind(&new.created_by)
        .execute(&mut *tx)
        .await?;
        let event = NewEvent::new(
            EventType::FleetRevisionCreated,
            serde_json::json!({
                "revision": revision,
                "contentRevision": content_revision,
                "rollout": starts,
                "createdBy": new.created_by,
            }),
        );
        append_fleet_events(&mut tx, &new.name, vec![event], now).await?;
        tx.commit().await?;
        Ok(PutFleetOutcome {
            revision,
            created: true,
            rollout: starts,
        })
    }

    pub async fn get_fleet(&self, name: &str) -> Result<Option<StoredFleet>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {FLEET_COLUMNS} FROM fleets f \
             JOIN fleet_revisions r ON r.fleet = f.name AND r.revision = f.revision \
             WHERE f.name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(stored_fleet).transpose()
    }

    /// Up to `limit` fleets whose name sorts after `after`, in name order.
    pub async fn list_fleets(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StoredFleet>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {FLEET_COLUMNS} FROM fleets f \
             JOIN fleet_revisions r ON r.fleet = f.name AND r.revision = f.revision \
             WHERE ($1::text IS NULL OR f.name > $1) ORDER BY f.name LIMIT $2"
        ))
        .bind(after)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(stored_fleet).collect()
    }

    /// Stops managing the fleet: its rows go, every device keeps its manifest. False when there
    /// was no such fleet.
    pub async fn delete_fleet(&self, name: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('fleet:' || $1))")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE agents SET fleet = NULL WHERE fleet = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM fleet_leases WHERE fleet = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let deleted = sqlx::query("DELETE FROM fleets WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(deleted > 0)
    }

    /// Up to `limit` revisions below `before` (all when `None`), newest first.
    pub async fn fleet_revisions(
        &self,
        name: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<StoredFleetRevision>, StoreError> {
        let rows = sqlx::query(
            "SELECT revision, content_revision, spec, content_hash, created_at, created_by \
             FROM fleet_revisions WHERE fleet = $1 AND ($2::bigint IS NULL OR revision < $2) \
             ORDER BY revision DESC LIMIT $3",
        )
        .bind(name)
        .bind(before.map(to_db).transpose()?)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(stored_revision).collect()
    }

    /// One revision of the fleet.
    pub async fn fleet_revision(
        &self,
        name: &str,
        revision: u64,
    ) -> Result<Option<StoredFleetRevision>, StoreError> {
        let row = sqlx::query(
            "SELECT revision, content_revision, spec, content_hash, created_at, created_by \
             FROM fleet_revisions WHERE fleet = $1 AND revision = $2",
        )
        .bind(name)
        .bind(to_db(revision)?)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(stored_revision).transpose()
    }

    /// Writes the rollout state if it is still at `write.version` (and, with a holder, the
    /// writer still holds the fleet's lease), with its device rows and events, in one
    /// transaction. False when someone wrote first: nothing was written.
    pub async fn set_rollout(
        &self,
        name: &str,
        write: RolloutWrite<'_>,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        if let Some(holder) = write.holder {
            let held: Option<i32> = sqlx::query_scalar(
                "SELECT 1 FROM fleet_leases WHERE fleet = $1 AND holder = $2 \
                 AND expires_at > $3 FOR SHARE",
            )
            .bind(name)
            .bind(holder)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            if held.is_none() {
                return Ok(false);
            }
        }
        let updated = sqlx::query(
            "UPDATE fleets SET rollout = $3, phase = $4, rollout_version = rollout_version + 1, \
               updated_at = $5 WHERE name = $1 AND rollout_version = $2",
        )
        .bind(name)
        .bind(to_db(write.version)?)
        .bind(Json(write.state))
        .bind(write.phase)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            return Ok(false);
        }
        update_devices(&mut tx, name, write.devices, now).await?;
        append_fleet_events(&mut tx, name, write.events, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Up to `limit` events of the fleet with a seq above `after_seq`, oldest first.
    pub async fn fleet_events(
        &self,
        name: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, type, payload, created_at FROM fleet_events \
             WHERE fleet = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(name)
        .bind(to_db(after_seq)?)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let type_: String = row.try_get("type")?;
                Ok(Event {
                    seq: from_db(row.try_get("seq")?)?,
                    type_: EventType::parse(&type_)
                        .ok_or_else(|| corrupt("fleet event type", &type_))?,
                    resource_id: None,
                    payload: row.try_get::<Json<serde_json::Value>, _>("payload")?.0,
                    created_at: row.try_get("created_at")?,
                })
            })
            .collect()
    }

    /// Takes or renews the lease named `name` for `ttl`; true when `holder` holds it now.
    pub async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: time::Duration,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let held: Option<String> = sqlx::query_scalar(
            "INSERT INTO fleet_leases (fleet, holder, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (fleet) DO UPDATE SET holder = EXCLUDED.holder, \
               expires_at = EXCLUDED.expires_at \
             WHERE fleet_leases.holder = EXCLUDED.holder OR fleet_leases.expires_at <= $4 \
             RETURNING holder",
        )
        .bind(name)
        .bind(holder)
        .bind(now + ttl)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(held.as_deref() == Some(holder))
    }

    /// Gives the lease up, so another replica may take it at once.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM fleet_leases WHERE fleet = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Devices per fleet and rollout state, and fleets per phase, for `/metrics`.
    pub async fn fleet_gauges(
        &self,
    ) -> Result<(Vec<(String, String, u64)>, Vec<(String, String)>), StoreError> {
        let devices = sqlx::query(
            "SELECT fleet, state, count(*) AS n FROM fleet_devices GROUP BY fleet, state \
             ORDER BY fleet, state",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok((
                row.try_get("fleet")?,
                row.try_get("state")?,
                from_db(row.try_get("n")?)?,
            ))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
        let phases = sqlx::query("SELECT name, phase FROM fleets ORDER BY name")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| Ok((row.try_get("name")?, row.try_get("phase")?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok((devices, phases))
    }
}

/// Appends events to the fleet's log with its next seqs.
pub(super) async fn append_fleet_events(
    tx: &mut Transaction<'_, Postgres>,
    name: &str,
    events: Vec<NewEvent>,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let count = i64::try_from(events.len()).map_err(|e| corrupt("event count", e))?;
    let last: i64 = sqlx::query_scalar(
        "UPDATE fleets SET last_event_seq = last_event_seq + $2 WHERE name = $1 \
         RETURNING last_event_seq",
    )
    .bind(name)
    .bind(count)
    .fetch_one(&mut **tx)
    .await?;
    let created_at = rfc3339(now)?;
    let rows: Vec<serde_json::Value> = events
        .into_iter()
        .zip(last - count + 1..)
        .map(|(event, seq)| {
            serde_json::json!({
                "fleet": name, "seq": seq, "type": event.type_.as_str(),
                "payload": event.payload, "created_at": created_at,
            })
        })
        .collect();
    sqlx::query(
        "INSERT INTO fleet_events (fleet, seq, type, payload, created_at) \
         SELECT e.fleet, e.seq, e.type, e.payload, e.created_at \
         FROM jsonb_to_recordset($1) AS e(fleet text, seq bigint, type text, payload jsonb, \
           created_at timestamptz)",
    )
    .bind(Json(rows))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Sets the state of device rows of the fleet (rows that are gone, or in conflict, are skipped).
pub(super) async fn update_devices(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    name: &str,
    updates: &[DeviceStateUpdate],
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    if updates.is_empty() {
        return Ok(());
    }
    let rows: Vec<serde_json::Value> = updates
        .iter()
        .map(|u| {
            serde_json::json!({
                "agent_id": u.agent_id, "state": u.state,
                "state_revision": u.state_revision, "batch": u.batch, "detail": u.detail,
            })
        })
        .collect();
    sqlx::query(
        "UPDATE fleet_devices d SET state = u.state, state_revision = u.state_revision, \
           batch = u.batch, detail = u.detail, updated_at = $3 \
         FROM jsonb_to_recordset($2) AS u(agent_id text, state text, state_revision bigint, \
           batch integer, detail text) \
         WHERE d.fleet = $1 AND d.agent_id = u.agent_id AND d.state <> 'Conflict'",
    )
    .bind(name)
    .bind(Json(rows))
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn stored_fleet(row: &PgRow) -> Result<StoredFleet, StoreError> {
    Ok(StoredFleet {
        name: row.try_get("name")?,
        revision: from_db(row.try_get("revision")?)?,
        spec: row.try_get::<Json<serde_json::Value>, _>("spec")?.0,
        content_revision: from_db(row.try_get("content_revision")?)?,
        rollout: row.try_get::<Json<serde_json::Value>, _>("rollout")?.0,
        rollout_version: from_db(row.try_get("rollout_version")?)?,
        phase: row.try_get("phase")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn stored_revision(row: &PgRow) -> Result<StoredFleetRevision, StoreError> {
    Ok(StoredFleetRevision {
        revision: from_db(row.try_get("revision")?)?,
        content_revision: from_db(row.try_get("content_revision")?)?,
        spec: row.try_get::<Json<serde_json::Value>, _>("spec")?.0,
        content_hash: row.try_get("content_hash")?,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
    })
}
