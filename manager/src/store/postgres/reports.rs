//! Status reports: coalesced into batches, stored in rounds of one transaction each, with the
//! per-resource rows, phase counts, repair marks and the events each report causes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use fleetlet_manifests::api::PhaseCounts;
use fleetlet_manifests::{AgentInfo, AgentStatus, Condition};
use sqlx::postgres::PgPool;
use sqlx::types::Json;
use time::OffsetDateTime;

use super::{BatchResults, PgStore, corrupt, event_rows, from_db, insert_events, rfc3339, to_db};
use crate::store::{
    PreviousReport, RepairMark, StoreError, events_for_report, manifest_rejected, phase_counts,
    repair_events, rolled_back,
};

impl PgStore {
    /// Stores a report. Concurrent reports share one transaction (`report_batch`).
    pub async fn report_status(
        &self,
        status: AgentStatus,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        self.batches.reports.call((Arc::new(status), now)).await
    }
}

/// Stores a batch of reports in rounds, one transaction each. The first rounds hold reports of
/// distinct agents, at most [`ROUND_RESOURCES`] resource rows each; an agent's second report in
/// the same batch comes after them, alone, so its `reportSeq` check and events see the first.
pub(super) async fn report_batch(
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
pub(super) fn report_rounds(reports: &[(Arc<AgentStatus>, OffsetDateTime)]) -> Vec<Vec<usize>> {
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
           agent_info = u.agent_info, last_event_seq = a.last_event_seq + u.events, \
           facts = COALESCE(u.facts, a.facts) \
         FROM unnest($1::text[], $2::timestamptz[], $3::bigint[], $4::jsonb[], $5::bigint[], \
           $6::jsonb[]) AS u(agent_id, received_at, report_seq, agent_info, events, facts) \
         WHERE a.agent_id = u.agent_id RETURNING a.agent_id, a.last_event_seq",
    )
    .bind(&rows.agent_ids)
    .bind(&rows.received_at)
    .bind(&rows.report_seqs)
    .bind(&rows.agent_info)
    .bind(&rows.event_counts)
    .bind(&rows.facts)
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
    /// The facts as the string map fleet selectors match (`agents.facts`); `None` keeps the
    /// stored ones (an agent older than fleets).
    facts: Vec<Option<Json<BTreeMap<String, String>>>>,
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
        self.facts
            .push(status.facts.as_ref().map(|facts| Json(facts.to_map())));
        Ok(())
    }
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
