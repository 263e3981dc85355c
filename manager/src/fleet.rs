//! Fleet-level state of an agent, derived from what the manager stored about it.
//!
//! The derivation is a pure function of the stored facts and the current time, so it is the same
//! on every replica and is tested without a database.

use std::time::Duration;

use fleetlet_manifests::Phase;
use fleetlet_manifests::api::{AgentSummary, FleetState, PhaseCounts};
use time::OffsetDateTime;

use crate::store::FleetRow;

/// An agent is stale after this many report intervals without a report.
pub const STALE_AFTER_INTERVALS: u32 = 3;

/// What the state of one agent is derived from.
#[derive(Debug, Clone, Copy)]
pub struct StateInputs<'a> {
    pub desired_generation: u64,
    /// When the manager last received a report (its own clock, never the device's).
    pub last_seen_at: Option<OffsetDateTime>,
    /// `None` when the agent never reported.
    pub observed_generation: Option<u64>,
    pub counts: &'a PhaseCounts,
    /// The agent reported a `ManifestRejected` condition with status True, or a `Degraded` one
    /// saying its local store cannot save (`DiskFull`, `StoreUnavailable`): degraded by itself,
    /// whatever its resources say (`store::manifest_rejected`).
    pub manifest_rejected: bool,
    /// The agent reported a `RolledBack` condition with status True.
    pub rolled_back: bool,
}

/// Derives the fleet state, checking in order: unknown, stale, rolledBack, degraded (a resource
/// Failed or Unsupported, a rejected manifest, or a store that cannot save), converged,
/// progressing.
///
/// Staleness wins over what the last report said, because that report may describe a device that
/// has since lost power. A rollback wins over degraded: it says more (the device left the desired
/// generation on purpose and runs an older one), and the resources it reports are the known-good
/// ones. Degraded wins over converged, because a failed resource needs attention even when the
/// agent has caught up with the generation.
pub fn derive_state(
    inputs: StateInputs<'_>,
    now: OffsetDateTime,
    report_interval: Duration,
) -> FleetState {
    let (Some(last_seen_at), Some(observed_generation)) =
        (inputs.last_seen_at, inputs.observed_generation)
    else {
        return FleetState::Unknown;
    };
    let stale_after = report_interval.saturating_mul(STALE_AFTER_INTERVALS);
    if now - last_seen_at > stale_after {
        return FleetState::Stale;
    }
    if inputs.rolled_back {
        return FleetState::RolledBack;
    }
    let failing = [Phase::Failed, Phase::Unsupported]
        .iter()
        .any(|phase| inputs.counts.get(phase).copied().unwrap_or(0) > 0);
    if failing || inputs.manifest_rejected {
        return FleetState::Degraded;
    }
    if is_converged(
        inputs.desired_generation,
        observed_generation,
        inputs.counts,
    ) {
        return FleetState::Converged;
    }
    FleetState::Progressing
}

/// The agent applied the current generation and every resource it reports is Ready.
pub fn is_converged(
    desired_generation: u64,
    observed_generation: u64,
    counts: &PhaseCounts,
) -> bool {
    observed_generation == desired_generation
        && counts
            .iter()
            .all(|(phase, count)| *phase == Phase::Ready || *count == 0)
}

/// Builds the summary row that the fleet list and the status view show.
///
/// `converged` is false while the agent is rolled back, whatever its generations say: the device
/// does not run the desired generation.
pub fn summarize(row: FleetRow, now: OffsetDateTime, report_interval: Duration) -> AgentSummary {
    let inputs = StateInputs {
        desired_generation: row.desired_generation,
        last_seen_at: row.last_seen_at,
        observed_generation: row.observed_generation,
        counts: &row.counts,
        manifest_rejected: row.manifest_rejected,
        rolled_back: row.rolled_back,
    };
    let state = derive_state(inputs, now, report_interval);
    let converged = !row.rolled_back
        && row
            .observed_generation
            .is_some_and(|observed| is_converged(row.desired_generation, observed, &row.counts));
    // The row is moved, not copied: a page of the fleet list is up to a thousand of them.
    AgentSummary {
        agent_id: row.agent_id,
        labels: row.labels,
        state,
        desired_generation: row.desired_generation,
        observed_generation: row.observed_generation,
        converged,
        counts: row.counts,
        last_seen_at: row.last_seen_at,
    }
}

#[cfg(test)]
mod tests;
