//! The rollout controller: on every replica, once per [`TICK`], a selection pass under the
//! selection lease, then one step of each fleet whose lease this replica holds.
//!
//! A lease is a row (`fleet_leases`) with a holder and an expiry, renewed every tick; when a
//! replica dies its leases expire after [`LEASE_TTL`] and the next replica to tick takes them,
//! so a rollout goes on within seconds. The state lives in PostgreSQL only: a restarted replica
//! continues where the rows say. A step's state, rows and events are one compare-and-set
//! transaction that also checks the lease; the manifests it calls for are then written in
//! batches, each one transaction conditional on every row (`PgStore::write_fleet_devices`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use fleetlet_manifests::AgentId;
use fleetlet_manifests::fleet::{Fleet, RenderError, render};
use fleetlet_manifests::fleet_api::DeviceRolloutState;
use time::OffsetDateTime;

use super::selection;
use super::state::RolloutState;
use super::step::{Device, Plan, Seen, Write, observe, step};
use crate::store::fleets::{
    DeviceStateUpdate, DeviceWrite, DeviceWritten, FleetDeviceRow, RolloutWrite,
};
use crate::store::postgres::PgStore;
use crate::store::{NewManifest, Store, StoreError};

/// How often each replica steps the fleets it leads.
pub const TICK: Duration = Duration::from_secs(1);
/// How long a lease lasts without renewal: a killed replica's fleets move on within this and a
/// tick.
pub const LEASE_TTL: time::Duration = time::Duration::seconds(5);
/// Devices whose manifests are written in one transaction (`PgStore::write_fleet_devices`): a
/// few statements for the whole batch instead of a transaction per device.
pub const WRITE_BATCH: usize = 500;
/// Write transactions of one step in flight at once: one renders while another commits (the
/// pool has 16 connections).
pub const BATCHES_IN_FLIGHT: usize = 2;
/// The lease of the selection pass (no fleet name has a `*`).
pub const SELECTION_LEASE: &str = "*selection*";

/// Wakes this process's controller for a tick now (`nudge`).
static NUDGE: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Has this process's controller tick at once instead of at its next [`TICK`] (a fleet was
/// stored); a nudge during a tick makes the next one start right after it.
pub fn nudge() {
    NUDGE.notify_one();
}

/// Runs the controller until `shutdown` fires; the memory store has no fleets, so nothing runs.
pub async fn run(
    store: Store,
    report_interval: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let Store::Postgres(store) = store else {
        return;
    };
    let holder = format!(
        "{}-{}-{}",
        hostname(),
        std::process::id(),
        OffsetDateTime::now_utc().unix_timestamp_nanos()
    );
    tracing::info!(%holder, "rollout controller started");
    loop {
        if let Err(error) = tick(&store, &holder, report_interval).await {
            tracing::warn!(%error, "a rollout controller step failed; retrying");
        }
        tokio::select! {
            _ = shutdown.changed() => break,
            () = tokio::time::sleep(TICK) => {}
            () = NUDGE.notified() => {}
        }
    }
    // Another replica may take over at once rather than after the TTL.
    if let Ok(fleets) = store.list_fleets(None, usize::MAX).await {
        for fleet in fleets {
            let _ = store.release_lease(&fleet.name, &holder).await;
        }
    }
    let _ = store.release_lease(SELECTION_LEASE, &holder).await;
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "manager".to_owned())
}

/// One tick: selection, then a step of every fleet whose lease this replica holds.
pub async fn tick(
    store: &PgStore,
    holder: &str,
    report_interval: Duration,
) -> Result<(), StoreError> {
    let now = OffsetDateTime::now_utc();
    if store
        .try_lease(SELECTION_LEASE, holder, LEASE_TTL, now)
        .await?
    {
        let started = std::time::Instant::now();
        let changed = selection::reselect(store, None, now).await?;
        if changed > 0 {
            tracing::info!(
                changed,
                ms = started.elapsed().as_millis(),
                "selection pass"
            );
        }
    }
    let fleets = store.list_fleets(None, usize::MAX).await?;
    let parsed = selection::parse_fleets(&fleets);
    for stored in &fleets {
        let Some(fleet) = parsed.get(&stored.name) else {
            continue;
        };
        let now = OffsetDateTime::now_utc();
        if !store
            .try_lease(&stored.name, holder, LEASE_TTL, now)
            .await?
        {
            continue;
        }
        if let Err(error) = drive(store, stored, fleet, holder, report_interval).await {
            tracing::warn!(fleet = %stored.name, %error, "a rollout step failed; retrying");
        }
    }
    Ok(())
}

/// Whether the agent missed the stale interval (`fleet::STALE_AFTER_INTERVALS`); one that never
/// reported counts as stale.
fn is_stale(row: &FleetDeviceRow, now: OffsetDateTime, report_interval: Duration) -> bool {
    let stale_after = report_interval.saturating_mul(crate::fleet::STALE_AFTER_INTERVALS);
    row.health
        .last_seen_at
        .is_none_or(|seen| now - seen > stale_after)
}

fn device(row: &FleetDeviceRow, now: OffsetDateTime, report_interval: Duration) -> Device {
    let seen = match (row.revision_rendered, row.generation) {
        (Some(_), Some(generation)) => observe(generation, &row.health),
        _ => Seen::Working,
    };
    Device {
        agent_id: row.agent_id.clone(),
        state: DeviceRolloutState::parse(&row.state).unwrap_or(DeviceRolloutState::Pending),
        revision_rendered: row.revision_rendered,
        state_revision: row.state_revision,
        batch: row.batch,
        detail: row.detail.clone(),
        stale: is_stale(row, now, report_interval),
        seen,
    }
}

/// The step's plan from the fleet's newest revision.
pub fn plan(fleet: &Fleet, selected: usize) -> Plan {
    let strategy = &fleet.rollout_strategy;
    Plan {
        sizes: strategy.batch_sizes(selected),
        threshold_percent: f64::from(strategy.success_threshold.0),
        batch_timeout: time::Duration::seconds(
            i64::try_from(strategy.batch_timeout_seconds).unwrap_or(i64::MAX),
        ),
        require_approval: strategy.require_approval,
    }
}

fn update(device: &Device) -> DeviceStateUpdate {
    DeviceStateUpdate {
        agent_id: device.agent_id.clone(),
        state: device.state.as_str().to_owned(),
        state_revision: device.state_revision,
        batch: device.batch,
        detail: device.detail.clone(),
    }
}

/// One step of one fleet: read, decide, commit the decision, then write the manifests it calls
/// for.
async fn drive(
    store: &PgStore,
    stored: &crate::store::fleets::StoredFleet,
    fleet: &Fleet,
    holder: &str,
    report_interval: Duration,
) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    let now = OffsetDateTime::now_utc();
    let state: RolloutState = serde_json::from_value(stored.rollout.clone())
        .map_err(|e| StoreError::Internal(format!("rollout state of {}: {e}", stored.name)))?;
    let rows = store.fleet_devices(&stored.name, None, usize::MAX).await?;
    let devices: Vec<Device> = rows
        .iter()
        .map(|row| device(row, now, report_interval))
        .collect();
    let selected = devices
        .iter()
        .filter(|d| d.state != DeviceRolloutState::Conflict)
        .count();
    let outcome = step(&state, &plan(fleet, selected), &devices, now);
    if outcome.state != state || !outcome.updates.is_empty() || !outcome.events.is_empty() {
        let updates: Vec<DeviceStateUpdate> = outcome.updates.iter().map(update).collect();
        let value = serde_json::to_value(&outcome.state)
            .map_err(|e| StoreError::Internal(format!("rollout state: {e}")))?;
        let types: Vec<_> = outcome.events.iter().map(|e| e.type_).collect();
        for event in &outcome.events {
            tracing::info!(
                fleet = %stored.name,
                event = event.type_.as_str(),
                payload = %event.payload,
                "rollout"
            );
        }
        let write = RolloutWrite {
            version: stored.rollout_version,
            state: &value,
            phase: outcome.state.phase.as_str(),
            devices: &updates,
            events: outcome.events,
            holder: Some(holder),
        };
        if !store.set_rollout(&stored.name, write, now).await? {
            // An operator acted or the lease moved: the next tick reads again.
            return Ok(());
        }
        types
            .into_iter()
            .for_each(crate::metrics::count_fleet_event);
    }
    if !outcome.writes.is_empty() {
        tracing::info!(
            fleet = %stored.name,
            devices = rows.len(),
            writes = outcome.writes.len(),
            ms = started.elapsed().as_millis(),
            "rollout step committed; writing manifests"
        );
    }
    write_devices(store, &stored.name, &rows, outcome.writes).await
}

/// Renders each manifest and writes them [`WRITE_BATCH`] devices to a transaction, at most
/// [`BATCHES_IN_FLIGHT`] at once; a device whose parameters do not render gets its reason.
async fn write_devices(
    store: &PgStore,
    name: &str,
    rows: &[FleetDeviceRow],
    writes: Vec<Write>,
) -> Result<(), StoreError> {
    if writes.is_empty() {
        return Ok(());
    }
    let by_id: HashMap<&AgentId, &FleetDeviceRow> = rows.iter().map(|r| (&r.agent_id, r)).collect();
    let mut revisions: BTreeMap<u64, Option<Arc<Fleet>>> = BTreeMap::new();
    for write in &writes {
        if let std::collections::btree_map::Entry::Vacant(entry) = revisions.entry(write.revision) {
            let fleet = store
                .fleet_revision(name, write.revision)
                .await?
                .and_then(|r| Fleet::from_value(r.spec).ok());
            entry.insert(fleet.map(Arc::new));
        }
    }
    let mut failures = Vec::new();
    let mut in_flight = tokio::task::JoinSet::new();
    let mut first_error = None;
    for chunk in writes.chunks(WRITE_BATCH) {
        let work: Vec<(Write, Arc<Fleet>, BTreeMap<String, String>)> = chunk
            .iter()
            .filter_map(|write| {
                let fleet = revisions.get(&write.revision)?.as_ref()?;
                let row = by_id.get(&write.agent_id)?;
                Some((write.clone(), Arc::clone(fleet), row.labels.clone()))
            })
            .collect();
        // Rendering is CPU work: off the runtime's threads, so held long-polls keep answering.
        let owner = format!("fleet:{name}");
        let (batch, failed) = tokio::task::spawn_blocking(move || render_all(work, &owner))
            .await
            .map_err(|e| StoreError::Internal(format!("rendering stopped: {e}")))?;
        failures.extend(failed);
        if batch.is_empty() {
            continue;
        }
        if in_flight.len() >= BATCHES_IN_FLIGHT
            && let Some(done) = in_flight.join_next().await
        {
            note_write(name, done, &mut first_error);
        }
        let (store, name) = (store.clone(), name.to_owned());
        in_flight.spawn(async move {
            let started = std::time::Instant::now();
            let written = store
                .write_fleet_devices(&name, batch, OffsetDateTime::now_utc())
                .await?;
            Ok((written, started.elapsed()))
        });
    }
    while let Some(done) = in_flight.join_next().await {
        note_write(name, done, &mut first_error);
    }
    if let Some(error) = first_error {
        return Err(error);
    }
    // Only rows whose reason changed are written again.
    failures.retain(|f| {
        by_id.get(&f.agent_id).is_none_or(|r| {
            (r.state.as_str(), r.state_revision, &r.detail)
                != (f.state.as_str(), f.state_revision, &f.detail)
        })
    });
    store
        .update_fleet_devices(name, &failures, OffsetDateTime::now_utc())
        .await
}

/// Renders each device's manifest: the writes, and the devices whose parameters do not render.
fn render_all(
    work: Vec<(Write, Arc<Fleet>, BTreeMap<String, String>)>,
    owner: &str,
) -> (Vec<DeviceWrite>, Vec<DeviceStateUpdate>) {
    let mut batch = Vec::with_capacity(work.len());
    let mut failures = Vec::new();
    for (write, fleet, labels) in work {
        match render(&fleet, write.revision, &write.agent_id, &labels) {
            Ok(manifest) => batch.push(DeviceWrite {
                agent_id: write.agent_id,
                revision: write.revision,
                manifest: NewManifest::new(manifest, owner, None),
                batch: write.batch,
            }),
            Err(error) => {
                let state = match error {
                    RenderError::ParameterMissing { .. } => DeviceRolloutState::ParameterMissing,
                    _ => DeviceRolloutState::ParameterInvalid,
                };
                failures.push(DeviceStateUpdate {
                    agent_id: write.agent_id,
                    state: state.as_str().to_owned(),
                    state_revision: Some(write.revision),
                    batch: write.batch,
                    detail: Some(error.to_string()),
                });
            }
        }
    }
    (batch, failures)
}

/// Logs a batch of writes, keeping the first failure; the others are logged by the next step's
/// retry.
fn note_write(
    name: &str,
    done: Result<Result<(Vec<DeviceWritten>, Duration), StoreError>, tokio::task::JoinError>,
    first_error: &mut Option<StoreError>,
) {
    let error = match done {
        Ok(Ok((written, took))) => {
            for device in &written {
                tracing::debug!(
                    fleet = %name,
                    agent_id = %device.agent_id,
                    revision = device.revision,
                    generation = device.generation,
                    created = device.created,
                    "fleet manifest written"
                );
            }
            let created = written.iter().filter(|w| w.created).count();
            tracing::info!(
                fleet = %name,
                devices = written.len(),
                new_generations = created,
                ms = took.as_millis(),
                "fleet manifests written"
            );
            return;
        }
        Ok(Err(error)) => error,
        Err(join) => StoreError::Internal(format!("a manifest write stopped: {join}")),
    };
    first_error.get_or_insert(error);
}
