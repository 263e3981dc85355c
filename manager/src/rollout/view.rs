//! The API's view of a fleet and its rollout, assembled from the stored state and the counts of
//! its device rows (one scan of them, `PgStore::fleet_counts`).

use std::collections::BTreeMap;

use fleetlet_manifests::fleet::Fleet;
use fleetlet_manifests::fleet_api::{BatchView, DeviceRolloutState, FleetView, RolloutPhase};

use super::controller::plan;
use super::state::RolloutState;
use crate::store::StoreError;
use crate::store::fleets::StoredFleet;
use crate::store::postgres::PgStore;

/// The view of one stored fleet, with its batches and device counts read from the store.
pub async fn fleet_view(store: &PgStore, stored: StoredFleet) -> Result<FleetView, StoreError> {
    let state: RolloutState = serde_json::from_value(stored.rollout.clone())
        .map_err(|e| StoreError::Internal(format!("rollout state of {}: {e}", stored.name)))?;
    let counts = store
        .fleet_counts(&stored.name, state.target_revision)
        .await?;
    let mut devices: BTreeMap<DeviceRolloutState, u64> = BTreeMap::new();
    let mut batch_counts = Vec::new();
    for (device_state, batch, n) in counts {
        if let Some(parsed) = DeviceRolloutState::parse(&device_state) {
            *devices.entry(parsed).or_default() += n;
        }
        if let Some(batch) = batch {
            batch_counts.push((batch, device_state, n));
        }
    }
    let selected = devices
        .iter()
        .filter(|(state, _)| **state != DeviceRolloutState::Conflict)
        .map(|(_, n)| *n)
        .sum::<u64>();
    let planned = match &state.planned {
        Some(planned) => planned.clone(),
        None if matches!(state.phase, RolloutPhase::Progressing) => {
            Fleet::from_value(stored.spec.clone())
                .map(|fleet| plan(&fleet, usize::try_from(selected).unwrap_or(usize::MAX)).sizes)
                .unwrap_or_default()
        }
        None => Vec::new(),
    };
    let batches = planned
        .iter()
        .enumerate()
        .map(|(index, size)| batch_view(&state, &batch_counts, index, *size))
        .collect();
    Ok(FleetView {
        name: stored.name,
        fleet: stored.spec,
        revision: stored.revision,
        target_revision: state.target_revision,
        good_revision: state.good_revision,
        phase: state.phase,
        current_batch: state.current_batch().and_then(|k| u32::try_from(k).ok()),
        batches,
        pause_reason: state.pause_reason,
        devices,
        updated_at: stored.updated_at,
    })
}

fn batch_view(
    state: &RolloutState,
    counts: &[(u32, String, u64)],
    index: usize,
    size: usize,
) -> BatchView {
    let narrow = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    let Some(record) = state.batches.get(index) else {
        return BatchView {
            index: narrow(index as u64),
            devices: 0,
            succeeded: 0,
            failed: 0,
            pending: narrow(size as u64),
            deferred: 0,
            started_at: None,
            finished: false,
        };
    };
    let mut view = BatchView {
        index: narrow(index as u64),
        devices: 0,
        succeeded: 0,
        failed: 0,
        pending: 0,
        deferred: 0,
        started_at: Some(record.started_at),
        finished: record.outcome.is_some(),
    };
    for (batch, device_state, n) in counts {
        if *batch as usize != index {
            continue;
        }
        let n = narrow(*n);
        view.devices += n;
        match DeviceRolloutState::parse(device_state) {
            Some(DeviceRolloutState::Succeeded) => view.succeeded += n,
            Some(DeviceRolloutState::Failed) => view.failed += n,
            Some(DeviceRolloutState::Pending | DeviceRolloutState::Updating) => view.pending += n,
            Some(DeviceRolloutState::Deferred) => view.deferred += n,
            _ => {}
        }
    }
    view
}
