//! Which fleets select which devices: every fleet's selector over every active agent's labels
//! and facts, evaluated in one SQL statement that returns only the agents whose selection
//! changed, applied to the store's rows and owners in one pass (`PgStore::apply_selection`).
//!
//! A pass runs on the controller's schedule under the selection lease (facts arrive with reports),
//! at once for one agent when its labels change and for all when a fleet is deleted; a stored
//! fleet nudges the controller (`controller::nudge`).

use std::collections::{BTreeMap, BTreeSet};

use fleetlet_manifests::AgentId;
use fleetlet_manifests::fleet::{Fleet, Selector};
use time::OffsetDateTime;

use crate::store::StoreError;
use crate::store::fleets::StoredFleet;
use crate::store::postgres::PgStore;

/// The fleets that parse, by name. A stored fleet that no longer parses (a newer manager wrote
/// it) selects nothing and is logged.
pub fn parse_fleets(stored: &[StoredFleet]) -> BTreeMap<String, Fleet> {
    stored
        .iter()
        .filter_map(|f| match Fleet::from_value(f.spec.clone()) {
            Ok(fleet) => Some((f.name.clone(), fleet)),
            Err(violations) => {
                tracing::error!(fleet = %f.name, ?violations, "a stored fleet does not parse; it selects nothing");
                None
            }
        })
        .collect()
}

/// Evaluates selection for one agent or all of them and applies what changed (set-based: one
/// statement finds the agents whose fleets differ from their rows, `PgStore::selection_changes`);
/// returns how many devices changed.
pub async fn reselect(
    store: &PgStore,
    only: Option<&AgentId>,
    now: OffsetDateTime,
) -> Result<usize, StoreError> {
    let stored = store.list_fleets(None, usize::MAX).await?;
    let fleets = parse_fleets(&stored);
    let names: BTreeSet<String> = stored.iter().map(|f| f.name.clone()).collect();
    let selectors: Vec<(&str, &Selector)> = fleets
        .iter()
        .map(|(name, fleet)| (name.as_str(), &fleet.selector))
        .collect();
    let wanted = store.selection_changes(&selectors, &names, only).await?;
    store.apply_selection(&names, &wanted, now).await
}
