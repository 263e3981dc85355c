//! Reads for operators: one agent's status rebuilt from its rows, the fleet list's pages, and
//! the event log's pages.

use std::collections::BTreeMap;

use fleetlet_manifests::api::{Event, EventType, PhaseCounts};
use fleetlet_manifests::{
    AgentId, AgentInfo, AgentStatus, Condition, ErrorReason, Phase, Repairs, ResourceDetails,
    ResourceError, ResourceId, ResourceStatus,
};
use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use time::OffsetDateTime;

use super::{PgStore, corrupt, from_db, to_db};
use crate::store::{FleetQuery, FleetRow, StoreError, phase_counts};

impl PgStore {
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
                facts: None,
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
