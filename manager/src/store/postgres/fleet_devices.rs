//! Fleet devices in PostgreSQL: their rows with the agent's health, a batch of rendered
//! manifests written with their rows in one transaction, state updates, selection passes and
//! label patches.

use std::collections::{BTreeMap, BTreeSet};

use fleetlet_manifests::AgentId;
use fleetlet_manifests::api::{EventType, PhaseCounts};
use fleetlet_manifests::fleet::Selector;
use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use time::OffsetDateTime;

use super::fleets::{append_fleet_events, update_devices};
use super::manifests::stored_manifest;
use super::{MANIFEST_CHANNEL, PgStore, corrupt, event_rows, from_db, insert_events, to_db};
use crate::store::fleets::{
    DeviceHealth, DeviceStateUpdate, DeviceWrite, DeviceWritten, FleetDevicePageRow, FleetDeviceRow,
};
use crate::store::{NewEvent, StoreError, StoredManifest};

const DEVICE_COLUMNS: &str = "d.agent_id, d.state, d.revision_rendered, d.generation, \
     d.state_revision, d.batch, d.detail, d.updated_at, a.labels, a.desired_generation, \
     a.last_seen_at, s.manifest_generation, s.observed_generation, s.phase_counts, \
     s.manifest_rejected, s.rolled_back";

/// The state a device's row starts in, and takes when its conflict ends.
const PENDING: &str = "Pending";
const CONFLICT: &str = "Conflict";

/// A selection pass that changes at least this many devices (a batch's worth) refreshes the
/// planner's statistics of the fleet tables ([`PgStore::refresh_statistics`]).
const BULK_SELECTION: usize = 500;

impl PgStore {
    /// Up to `limit` device rows of the fleet whose agent id sorts after `after`.
    pub async fn fleet_devices(
        &self,
        name: &str,
        after: Option<&AgentId>,
        limit: usize,
    ) -> Result<Vec<FleetDeviceRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {DEVICE_COLUMNS} FROM fleet_devices d \
             JOIN agents a ON a.agent_id = d.agent_id \
             LEFT JOIN agent_status s ON s.agent_id = d.agent_id \
             WHERE d.fleet = $1 AND ($2::text IS NULL OR d.agent_id > $2) \
             ORDER BY d.agent_id LIMIT $3"
        ))
        .bind(name)
        .bind(after.map(AgentId::as_str))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(device_row).collect()
    }

    /// Up to `limit` device rows of the fleet whose agent id sorts after `after`, as the API's
    /// page shows them: the rows alone, one walk of the primary key, no agent columns.
    pub async fn fleet_device_page(
        &self,
        name: &str,
        after: Option<&AgentId>,
        limit: usize,
    ) -> Result<Vec<FleetDevicePageRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT agent_id, state, revision_rendered, generation, batch, detail, updated_at \
             FROM fleet_devices WHERE fleet = $1 AND ($2::text IS NULL OR agent_id > $2) \
             ORDER BY agent_id LIMIT $3",
        )
        .bind(name)
        .bind(after.map(AgentId::as_str))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get("agent_id")?;
                let optional = |column: &str| -> Result<Option<u64>, StoreError> {
                    row.try_get::<Option<i64>, _>(column)?
                        .map(from_db)
                        .transpose()
                };
                Ok(FleetDevicePageRow {
                    agent_id: AgentId::try_from(id.as_str()).map_err(|e| corrupt("agent id", e))?,
                    state: row.try_get("state")?,
                    revision_rendered: optional("revision_rendered")?,
                    generation: optional("generation")?,
                    batch: batch(row)?,
                    detail: row.try_get("detail")?,
                    updated_at: row.try_get("updated_at")?,
                })
            })
            .collect()
    }

    /// The fleet's devices counted in one scan: (state, batch, count), the batch given only for
    /// rows about `revision` (the rollout's batches), `None` for the others.
    pub async fn fleet_counts(
        &self,
        name: &str,
        revision: u64,
    ) -> Result<Vec<(String, Option<u32>, u64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT state, CASE WHEN state_revision = $2 THEN batch END AS batch, \
               count(*) AS n \
             FROM fleet_devices WHERE fleet = $1 GROUP BY 1, 2",
        )
        .bind(name)
        .bind(to_db(revision)?)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get("state")?,
                    batch(row)?,
                    from_db(row.try_get("n")?)?,
                ))
            })
            .collect()
    }

    /// Every fleet that selects each of these agents, in name order.
    pub async fn fleets_of(
        &self,
        agent_ids: &[AgentId],
    ) -> Result<BTreeMap<AgentId, Vec<String>>, StoreError> {
        let ids: Vec<&str> = agent_ids.iter().map(AgentId::as_str).collect();
        let rows = sqlx::query(
            "SELECT agent_id, fleet FROM fleet_devices WHERE agent_id = ANY($1) \
             ORDER BY agent_id, fleet",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        let mut fleets: BTreeMap<AgentId, Vec<String>> = BTreeMap::new();
        for row in &rows {
            let id: String = row.try_get("agent_id")?;
            let id = AgentId::try_from(id.as_str()).map_err(|e| corrupt("agent id", e))?;
            fleets.entry(id).or_default().push(row.try_get("fleet")?);
        }
        Ok(fleets)
    }

    /// Stores the manifests rendered for devices of the fleet, each as its device's next
    /// generation, and marks their rows `Updating` for the write's revision, all in one
    /// transaction of a few statements whatever the number of devices. Only devices the fleet
    /// still owns and whose row does not hold that revision yet are written (their agent and
    /// device rows are locked, in agent id order, and the condition is checked under the
    /// lock); the others are skipped, so no device is written twice for one revision. A
    /// manifest the same as the device's current one (`StoredManifest::is_same_as`) is no new
    /// generation: the row names the current one. Returns what each written device got.
    pub async fn write_fleet_devices(
        &self,
        name: &str,
        writes: Vec<DeviceWrite>,
        now: OffsetDateTime,
    ) -> Result<Vec<DeviceWritten>, StoreError> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = writes.iter().map(|w| w.agent_id.as_str()).collect();
        let revisions = writes
            .iter()
            .map(|w| to_db(w.revision))
            .collect::<Result<Vec<_>, _>>()?;
        let mut tx = self.pool.begin().await?;
        let locked = sqlx::query(
            "SELECT a.agent_id, a.desired_generation \
             FROM unnest($2::text[], $3::bigint[]) AS w(agent_id, revision) \
             JOIN agents a ON a.agent_id = w.agent_id \
             JOIN fleet_devices d ON d.fleet = $1 AND d.agent_id = w.agent_id \
             WHERE a.decommissioned_at IS NULL AND a.fleet = $1 \
               AND d.revision_rendered IS DISTINCT FROM w.revision \
             ORDER BY a.agent_id FOR UPDATE OF a, d",
        )
        .bind(name)
        .bind(&ids)
        .bind(&revisions)
        .fetch_all(&mut *tx)
        .await?;
        let mut current: BTreeMap<String, u64> = BTreeMap::new();
        for row in &locked {
            current.insert(
                row.try_get("agent_id")?,
                from_db(row.try_get("desired_generation")?)?,
            );
        }
        let (with_manifest, generations): (Vec<&str>, Vec<i64>) = current
            .iter()
            .filter(|(_, generation)| **generation > 0)
            .map(|(id, generation)| Ok((id.as_str(), to_db(*generation)?)))
            .collect::<Result<Vec<_>, StoreError>>()?
            .into_iter()
            .unzip();
        let latest = sqlx::query(
            "SELECT m.agent_id, m.generation, m.resources, m.content_hash, m.signature, \
               m.rollout, m.fleet, m.created_at, m.created_by \
             FROM unnest($1::text[], $2::bigint[]) AS c(agent_id, generation) \
             JOIN manifests m ON m.agent_id = c.agent_id AND m.generation = c.generation",
        )
        .bind(&with_manifest)
        .bind(&generations)
        .fetch_all(&mut *tx)
        .await?;
        let mut latest: BTreeMap<String, StoredManifest> = latest
            .iter()
            .map(|row| Ok((row.try_get("agent_id")?, stored_manifest(row)?)))
            .collect::<Result<_, StoreError>>()?;
        let mut written = Vec::with_capacity(current.len());
        let mut manifests = Vec::new();
        let mut seen = BTreeSet::new();
        for write in writes {
            let id = write.agent_id.as_str();
            let Some(&generation) = current.get(id) else {
                continue;
            };
            if !seen.insert(write.agent_id.clone()) {
                continue;
            }
            let same = latest
                .remove(id)
                .is_some_and(|stored| stored.is_same_as(&write.manifest));
            let generation = if same { generation } else { generation + 1 };
            let content_hash = write.manifest.content_hash.clone();
            if !same {
                let m = write.manifest;
                manifests.push(serde_json::json!({
                    "agent_id": id, "generation": generation, "resources": m.resources,
                    "content_hash": m.content_hash, "signature": m.signature,
                    "rollout": m.rollout, "fleet": m.fleet, "created_by": m.created_by,
                }));
            }
            written.push(DeviceWritten {
                agent_id: write.agent_id,
                revision: write.revision,
                batch: write.batch,
                generation,
                content_hash,
                created: !same,
            });
        }
        store_generations(&mut tx, manifests, &written, now).await?;
        let rows = |f: fn(&DeviceWritten) -> Option<i64>| -> Vec<Option<i64>> {
            written.iter().map(f).collect()
        };
        sqlx::query(
            "UPDATE fleet_devices d SET revision_rendered = w.revision, generation = w.generation, \
               state = 'Updating', state_revision = w.revision, batch = w.batch::integer, \
               detail = NULL, updated_at = $2 \
             FROM unnest($3::text[], $4::bigint[], $5::bigint[], $6::bigint[]) \
               AS w(agent_id, revision, generation, batch) \
             WHERE d.fleet = $1 AND d.agent_id = w.agent_id",
        )
        .bind(name)
        .bind(now)
        .bind(
            written
                .iter()
                .map(|w| w.agent_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(rows(|w| i64::try_from(w.revision).ok()))
        .bind(rows(|w| i64::try_from(w.generation).ok()))
        .bind(rows(|w| w.batch.map(i64::from)))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        for device in written.iter().filter(|w| w.created) {
            self.watch.wake(device.agent_id.as_str());
        }
        Ok(written)
    }

    /// Sets the state of device rows of the fleet outside a step (a device whose parameters do
    /// not render).
    pub async fn update_fleet_devices(
        &self,
        name: &str,
        updates: &[DeviceStateUpdate],
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        if updates.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        update_devices(&mut tx, name, updates, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The active agents (all, or `only`) whose selection changed: every fleet whose selector
    /// matches each of them now, for those whose rows (among `fleets`, the fleets that exist)
    /// name other fleets or whose conflict ended or began. Evaluated in one statement:
    /// `selectors` are `(fleet, matchLabels, matchFacts)`, matched by jsonb containment over
    /// `agents.labels` and `agents.facts`, which for maps of strings is `Selector::matches`
    /// (every entry present with exactly that value). An agent whose selection did not change
    /// costs no row.
    pub async fn selection_changes(
        &self,
        selectors: &[(&str, &Selector)],
        fleets: &BTreeSet<String>,
        only: Option<&AgentId>,
    ) -> Result<BTreeMap<AgentId, BTreeSet<String>>, StoreError> {
        let selectors: Vec<serde_json::Value> = selectors
            .iter()
            .map(|(fleet, selector)| {
                serde_json::json!({
                    "fleet": fleet,
                    "labels": selector.match_labels,
                    "facts": selector.match_facts,
                })
            })
            .collect();
        let rows = sqlx::query(
            "WITH s AS (SELECT * FROM jsonb_to_recordset($1) AS s(fleet text, labels jsonb, \
               facts jsonb)), \
             wanted AS (SELECT a.agent_id, array_agg(s.fleet COLLATE \"C\" ORDER BY s.fleet \
                 COLLATE \"C\") AS fleets \
               FROM agents a JOIN s ON a.labels @> s.labels \
                 AND coalesce(a.facts, '{}'::jsonb) @> s.facts \
               WHERE a.decommissioned_at IS NULL AND ($2::text IS NULL OR a.agent_id = $2) \
               GROUP BY a.agent_id), \
             have AS (SELECT d.agent_id, array_agg(d.fleet ORDER BY d.fleet) AS fleets, \
                 bool_or(d.state = 'Conflict') AS conflict \
               FROM fleet_devices d JOIN agents a ON a.agent_id = d.agent_id \
               WHERE d.fleet = ANY($3) AND a.decommissioned_at IS NULL \
                 AND ($2::text IS NULL OR d.agent_id = $2) \
               GROUP BY d.agent_id) \
             SELECT coalesce(w.agent_id, h.agent_id) AS agent_id, \
               coalesce(w.fleets, '{}') AS fleets \
             FROM wanted w FULL JOIN have h ON h.agent_id = w.agent_id \
             WHERE coalesce(w.fleets, '{}') IS DISTINCT FROM coalesce(h.fleets, '{}') \
               OR coalesce(cardinality(w.fleets) > 1, false) \
                 IS DISTINCT FROM coalesce(h.conflict, false)",
        )
        .bind(Json(selectors))
        .bind(only.map(AgentId::as_str))
        .bind(fleets.iter().collect::<Vec<_>>())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get("agent_id")?;
                let fleets: Vec<String> = row.try_get("fleets")?;
                Ok((
                    AgentId::try_from(id.as_str()).map_err(|e| corrupt("agent id", e))?,
                    fleets.into_iter().collect(),
                ))
            })
            .collect()
    }

    /// Brings device rows and owners in line with `wanted` (agent → every fleet that selects
    /// it, for the agents passed), in one transaction serialised with other passes: a new row
    /// starts `Pending`, a device selected by several fleets is `Conflict` in each and owned by
    /// none (`FleetConflict`), a device no fleet selects any more loses its row and keeps its
    /// manifest (`FleetReleased`). `fleets` are the fleets that exist; rows of others are left
    /// to their deletion. Returns how many devices changed.
    pub async fn apply_selection(
        &self,
        fleets: &BTreeSet<String>,
        wanted: &BTreeMap<AgentId, BTreeSet<String>>,
        now: OffsetDateTime,
    ) -> Result<usize, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('fleet-selection'))")
            .execute(&mut *tx)
            .await?;
        // Rows of decommissioned agents go: they are no device of any fleet.
        sqlx::query(
            "DELETE FROM fleet_devices d USING agents a \
             WHERE a.agent_id = d.agent_id AND a.decommissioned_at IS NOT NULL",
        )
        .execute(&mut *tx)
        .await?;
        let ids: Vec<&str> = wanted.keys().map(AgentId::as_str).collect();
        let rows = sqlx::query(
            "SELECT d.agent_id, d.fleet, d.state, a.fleet AS owner FROM fleet_devices d \
             JOIN agents a ON a.agent_id = d.agent_id WHERE d.agent_id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
        let mut have: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for row in &rows {
            have.entry(row.try_get("agent_id")?)
                .or_default()
                .insert(row.try_get("fleet")?, row.try_get("state")?);
        }
        let mut changed = 0;
        // The common changes (a device newly selected by one fleet, an owner set) are written
        // in one statement each after the loop; conflicts and releases, rare, as they come.
        let mut inserts = Vec::new();
        let mut owners = Vec::new();
        for (agent_id, selecting) in wanted {
            let selecting: BTreeSet<String> = selecting.intersection(fleets).cloned().collect();
            let existing = have.remove(agent_id.as_str()).unwrap_or_default();
            let existing_names: BTreeSet<String> = existing
                .keys()
                .filter(|name| fleets.contains(*name))
                .cloned()
                .collect();
            let conflict = selecting.len() > 1;
            let was_conflict = existing.values().any(|state| state == CONFLICT);
            if selecting == existing_names && conflict == was_conflict {
                continue;
            }
            changed += 1;
            let mut agent_events = Vec::new();
            for released in existing_names.difference(&selecting) {
                sqlx::query("DELETE FROM fleet_devices WHERE fleet = $1 AND agent_id = $2")
                    .bind(released)
                    .bind(agent_id.as_str())
                    .execute(&mut *tx)
                    .await?;
                let payload = serde_json::json!({"fleet": released, "agentId": agent_id});
                append_fleet_events(
                    &mut tx,
                    released,
                    vec![NewEvent::new(EventType::FleetReleased, payload.clone())],
                    now,
                )
                .await?;
                agent_events.push(NewEvent::new(EventType::FleetReleased, payload));
            }
            for added in selecting.difference(&existing_names) {
                inserts.push(serde_json::json!({"fleet": added, "agent_id": agent_id}));
            }
            if conflict {
                // The rows must exist before they are marked.
                insert_pending(&mut tx, std::mem::take(&mut inserts), now).await?;
            }
            let owner = (selecting.len() == 1).then(|| selecting.iter().next().cloned());
            if conflict {
                sqlx::query(
                    "UPDATE fleet_devices SET state = $2, updated_at = $3 \
                     WHERE agent_id = $1 AND fleet = ANY($4)",
                )
                .bind(agent_id.as_str())
                .bind(CONFLICT)
                .bind(now)
                .bind(selecting.iter().collect::<Vec<_>>())
                .execute(&mut *tx)
                .await?;
                if !was_conflict || selecting != existing_names {
                    let payload = serde_json::json!({
                        "agentId": agent_id, "fleets": selecting,
                    });
                    for fleet in &selecting {
                        append_fleet_events(
                            &mut tx,
                            fleet,
                            vec![NewEvent::new(EventType::FleetConflict, payload.clone())],
                            now,
                        )
                        .await?;
                    }
                    agent_events.push(NewEvent::new(EventType::FleetConflict, payload));
                }
            } else if was_conflict {
                sqlx::query(
                    "UPDATE fleet_devices SET state = $2, updated_at = $3 \
                     WHERE agent_id = $1 AND state = $4",
                )
                .bind(agent_id.as_str())
                .bind(PENDING)
                .bind(now)
                .bind(CONFLICT)
                .execute(&mut *tx)
                .await?;
            }
            owners.push(serde_json::json!({"agent_id": agent_id, "fleet": owner.flatten()}));
            Self::append_events(&mut tx, agent_id, agent_events, now).await?;
        }
        insert_pending(&mut tx, inserts, now).await?;
        if !owners.is_empty() {
            sqlx::query(
                "UPDATE agents a SET fleet = o.fleet \
                 FROM jsonb_to_recordset($1) AS o(agent_id text, fleet text) \
                 WHERE a.agent_id = o.agent_id",
            )
            .bind(Json(owners))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        if changed >= BULK_SELECTION {
            self.refresh_statistics().await;
        }
        Ok(changed)
    }

    /// Brings the planner's statistics of the fleet tables up to date after a selection pass
    /// that moved many rows. Until autovacuum's next analyze (a minute or more away) the planner
    /// sees the old row counts: with a few dozen rows recorded for a fleet that now has 10,000,
    /// it plans a batch write's lock query as a loop over the whole fleet for each of the
    /// batch's 500 devices, about 0.9 s per batch instead of 0.1-0.3 s (BENCHMARKS.md,
    /// "Fleets"). A failure only leaves that to autovacuum, so it is logged, not returned.
    async fn refresh_statistics(&self) {
        if let Err(error) = sqlx::query("ANALYZE fleet_devices, agents")
            .execute(&self.pool)
            .await
        {
            tracing::warn!(
                %error,
                "could not analyze the fleet tables after a large selection change"
            );
        }
    }

    /// Applies a merge patch to the agent's labels.
    pub async fn patch_labels(
        &self,
        agent_id: &AgentId,
        patch: &BTreeMap<String, Option<String>>,
    ) -> Result<BTreeMap<String, String>, StoreError> {
        let mut tx = self.pool.begin().await?;
        Self::lock_agent(&mut tx, agent_id).await?;
        let Json(mut labels): Json<BTreeMap<String, String>> =
            sqlx::query_scalar("SELECT labels FROM agents WHERE agent_id = $1")
                .bind(agent_id.as_str())
                .fetch_one(&mut *tx)
                .await?;
        for (key, value) in patch {
            match value {
                Some(value) => labels.insert(key.clone(), value.clone()),
                None => labels.remove(key),
            };
        }
        sqlx::query("UPDATE agents SET labels = $2 WHERE agent_id = $1")
            .bind(agent_id.as_str())
            .bind(Json(&labels))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(labels)
    }
}

/// New `Pending` rows, one statement for all of them.
async fn insert_pending(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    rows: Vec<serde_json::Value>,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO fleet_devices (fleet, agent_id, state, updated_at) \
         SELECT r.fleet, r.agent_id, $2, $3 \
         FROM jsonb_to_recordset($1) AS r(fleet text, agent_id text) ON CONFLICT DO NOTHING",
    )
    .bind(Json(rows))
    .bind(PENDING)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Inserts new generations (`manifests`: rows for `jsonb_to_recordset`), moves each agent's
/// `desired_generation` to it, appends its `ManifestUpdated` event and NOTIFYs every replica,
/// as `PgStore::store_generation` does for one, in one statement each; the caller holds the
/// agents' row locks and commits.
async fn store_generations(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    manifests: Vec<serde_json::Value>,
    written: &[DeviceWritten],
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    let created: Vec<&DeviceWritten> = written.iter().filter(|w| w.created).collect();
    if created.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO manifests (agent_id, generation, resources, content_hash, signature, \
           rollout, created_at, created_by, fleet) \
         SELECT m.agent_id, m.generation, m.resources, m.content_hash, m.signature, m.rollout, \
           $2, m.created_by, m.fleet \
         FROM jsonb_to_recordset($1) AS m(agent_id text, generation bigint, resources jsonb, \
           content_hash text, signature jsonb, rollout jsonb, created_by text, fleet jsonb)",
    )
    .bind(Json(manifests))
    .bind(now)
    .execute(&mut **tx)
    .await?;
    let ids: Vec<&str> = created.iter().map(|w| w.agent_id.as_str()).collect();
    let generations = created
        .iter()
        .map(|w| to_db(w.generation))
        .collect::<Result<Vec<_>, _>>()?;
    let seqs = sqlx::query(
        "UPDATE agents a SET desired_generation = w.generation, \
           last_event_seq = a.last_event_seq + 1 \
         FROM unnest($1::text[], $2::bigint[]) AS w(agent_id, generation) \
         WHERE a.agent_id = w.agent_id RETURNING a.agent_id, a.last_event_seq",
    )
    .bind(&ids)
    .bind(&generations)
    .fetch_all(&mut **tx)
    .await?;
    let seqs: BTreeMap<String, i64> = seqs
        .iter()
        .map(|row| Ok((row.try_get("agent_id")?, row.try_get("last_event_seq")?)))
        .collect::<Result<_, StoreError>>()?;
    let mut events = Vec::with_capacity(created.len());
    for device in &created {
        let seq = *seqs
            .get(device.agent_id.as_str())
            .ok_or_else(|| corrupt("event seq", &device.agent_id))?;
        let event = NewEvent::new(
            EventType::ManifestUpdated,
            serde_json::json!({
                "generation": device.generation,
                "contentHash": device.content_hash,
            }),
        );
        events.extend(event_rows(&device.agent_id, vec![event], seq, now)?);
    }
    insert_events(tx, events).await?;
    sqlx::query("SELECT pg_notify($1, id) FROM unnest($2::text[]) AS id")
        .bind(MANIFEST_CHANNEL)
        .bind(&ids)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn batch(row: &PgRow) -> Result<Option<u32>, StoreError> {
    row.try_get::<Option<i32>, _>("batch")?
        .map(u32::try_from)
        .transpose()
        .map_err(|e| corrupt("batch", e))
}

fn device_row(row: &PgRow) -> Result<FleetDeviceRow, StoreError> {
    let id: String = row.try_get("agent_id")?;
    let optional = |column: &str| -> Result<Option<u64>, StoreError> {
        row.try_get::<Option<i64>, _>(column)?
            .map(from_db)
            .transpose()
    };
    Ok(FleetDeviceRow {
        agent_id: AgentId::try_from(id.as_str()).map_err(|e| corrupt("agent id", e))?,
        state: row.try_get("state")?,
        revision_rendered: optional("revision_rendered")?,
        generation: optional("generation")?,
        state_revision: optional("state_revision")?,
        batch: batch(row)?,
        detail: row.try_get("detail")?,
        updated_at: row.try_get("updated_at")?,
        labels: row
            .try_get::<Json<BTreeMap<String, String>>, _>("labels")?
            .0,
        health: DeviceHealth {
            desired_generation: from_db(row.try_get("desired_generation")?)?,
            last_seen_at: row.try_get("last_seen_at")?,
            manifest_generation: optional("manifest_generation")?,
            observed_generation: optional("observed_generation")?,
            counts: row
                .try_get::<Option<Json<PhaseCounts>>, _>("phase_counts")?
                .map(|json| json.0)
                .unwrap_or_default(),
            manifest_rejected: row
                .try_get::<Option<bool>, _>("manifest_rejected")?
                .unwrap_or(false),
            rolled_back: row
                .try_get::<Option<bool>, _>("rolled_back")?
                .unwrap_or(false),
        },
    })
}
