//! Agents: registration and enrollment, tokens (rotation, the coalesced lookup by hash),
//! decommissioning, and what an agent's contact reads and writes.

use std::collections::{BTreeMap, HashMap};

use fleetlet_manifests::AgentId;
use fleetlet_manifests::api::EventType;
use sqlx::postgres::PgPool;
use sqlx::types::Json;
use time::OffsetDateTime;

use super::{BatchResults, PgStore, corrupt, from_db};
use crate::store::{Contact, NewEvent, StoreError};
use crate::token::TokenHash;

impl PgStore {
    pub async fn register_agent(
        &self,
        agent_id: &AgentId,
        labels: &BTreeMap<String, String>,
        token_hash: TokenHash,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        // A decommissioned agent may come back under its id (a replaced device); an active one
        // may not be registered twice, which the WHERE of the upsert enforces.
        let insert = "INSERT INTO agents (agent_id, labels, token_hash, registered_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (agent_id) DO UPDATE SET labels = EXCLUDED.labels, \
               token_hash = EXCLUDED.token_hash, registered_at = EXCLUDED.registered_at, \
               decommissioned_at = NULL \
             WHERE agents.decommissioned_at IS NOT NULL \
             RETURNING agent_id";
        let details = serde_json::json!({"labels": labels});
        self.insert_agent(insert, agent_id, labels, token_hash, details, now)
            .await
    }

    pub async fn enroll_agent(
        &self,
        agent_id: &AgentId,
        labels: &BTreeMap<String, String>,
        token_hash: TokenHash,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        // Unlike an admin registration, enrollment never takes over an existing id, not even a
        // decommissioned one: bringing a device back is the admin's decision.
        let insert = "INSERT INTO agents (agent_id, labels, token_hash, registered_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (agent_id) DO NOTHING RETURNING agent_id";
        let details = serde_json::json!({"labels": labels, "via": "enroll"});
        self.insert_agent(insert, agent_id, labels, token_hash, details, now)
            .await
    }

    /// Runs `insert` (which returns the agent id only when it took the row), then records
    /// `AgentRegistered` with `details`, in one transaction; no row is `AgentExists`.
    async fn insert_agent(
        &self,
        insert: &'static str,
        agent_id: &AgentId,
        labels: &BTreeMap<String, String>,
        token_hash: TokenHash,
        details: serde_json::Value,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(insert)
            .bind(agent_id.as_str())
            .bind(Json(labels))
            .bind(token_hash.to_hex())
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
        if inserted.is_none() {
            return Err(StoreError::AgentExists(agent_id.clone()));
        }
        let event = NewEvent::new(EventType::AgentRegistered, details);
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
}

/// The agents holding these token hashes, in one read. A lookup by the hash: the token itself
/// never reaches the database, and the time taken depends on the hashes only.
pub(super) async fn agents_for_tokens(
    pool: PgPool,
    hashes: Vec<TokenHash>,
) -> BatchResults<Option<AgentId>> {
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
pub(super) async fn active_generations(pool: PgPool, ids: Vec<AgentId>) -> BatchResults<u64> {
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
