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
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(30);

    fn now() -> OffsetDateTime {
        time::macros::datetime!(2026-11-22 10:00 UTC)
    }

    fn counts(entries: &[(Phase, u32)]) -> PhaseCounts {
        entries.iter().copied().collect()
    }

    fn reported(observed: u64, counts: &PhaseCounts, seconds_ago: i64) -> StateInputs<'_> {
        StateInputs {
            desired_generation: 3,
            last_seen_at: Some(now() - time::Duration::seconds(seconds_ago)),
            observed_generation: Some(observed),
            counts,
            manifest_rejected: false,
            rolled_back: false,
        }
    }

    #[test]
    fn an_agent_that_never_reported_is_unknown() {
        let none = counts(&[]);
        let inputs = StateInputs {
            desired_generation: 3,
            last_seen_at: None,
            observed_generation: None,
            counts: &none,
            manifest_rejected: false,
            rolled_back: false,
        };
        assert_eq!(derive_state(inputs, now(), INTERVAL), FleetState::Unknown);
    }

    #[test]
    fn all_ready_at_the_desired_generation_is_converged() {
        let ready = counts(&[(Phase::Ready, 4)]);
        assert_eq!(
            derive_state(reported(3, &ready, 5), now(), INTERVAL),
            FleetState::Converged
        );
    }

    #[test]
    fn an_older_observed_generation_is_progressing() {
        let ready = counts(&[(Phase::Ready, 4)]);
        assert_eq!(
            derive_state(reported(2, &ready, 5), now(), INTERVAL),
            FleetState::Progressing
        );
    }

    #[test]
    fn a_reconciling_resource_is_progressing() {
        let mixed = counts(&[(Phase::Ready, 3), (Phase::Reconciling, 1)]);
        assert_eq!(
            derive_state(reported(3, &mixed, 5), now(), INTERVAL),
            FleetState::Progressing
        );
    }

    #[test]
    fn a_failed_or_unsupported_resource_is_degraded() {
        for phase in [Phase::Failed, Phase::Unsupported] {
            let mixed = counts(&[(Phase::Ready, 3), (phase, 1)]);
            assert_eq!(
                derive_state(reported(3, &mixed, 5), now(), INTERVAL),
                FleetState::Degraded
            );
        }
    }

    #[test]
    fn a_rejected_manifest_is_degraded() {
        let ready = counts(&[(Phase::Ready, 4)]);
        let mut inputs = reported(2, &ready, 5);
        inputs.manifest_rejected = true;
        assert_eq!(derive_state(inputs, now(), INTERVAL), FleetState::Degraded);
    }

    #[test]
    fn a_rolled_back_agent_is_rolled_back_even_with_everything_ready() {
        // While rolled back the agent reports the bad generation as its manifest generation and
        // the good one as observed; its resources are the good generation's, all Ready.
        let ready = counts(&[(Phase::Ready, 4)]);
        let mut inputs = reported(2, &ready, 5);
        inputs.rolled_back = true;
        assert_eq!(
            derive_state(inputs, now(), INTERVAL),
            FleetState::RolledBack
        );
    }

    #[test]
    fn a_rollback_wins_over_degraded_and_over_converged() {
        let failed = counts(&[(Phase::Ready, 3), (Phase::Failed, 1)]);
        let mut inputs = reported(3, &failed, 5);
        inputs.rolled_back = true;
        inputs.manifest_rejected = true;
        assert_eq!(
            derive_state(inputs, now(), INTERVAL),
            FleetState::RolledBack
        );
        let ready = counts(&[(Phase::Ready, 4)]);
        let mut inputs = reported(3, &ready, 5);
        inputs.rolled_back = true;
        assert_eq!(
            derive_state(inputs, now(), INTERVAL),
            FleetState::RolledBack
        );
    }

    #[test]
    fn staleness_wins_over_a_rollback() {
        let ready = counts(&[(Phase::Ready, 4)]);
        let mut inputs = reported(2, &ready, 600);
        inputs.rolled_back = true;
        assert_eq!(derive_state(inputs, now(), INTERVAL), FleetState::Stale);
    }

    #[test]
    fn a_rolled_back_summary_is_not_converged() {
        let row = FleetRow {
            agent_id: fleetlet_manifests::AgentId::try_from("pi-1").expect("agent id"),
            labels: std::collections::BTreeMap::new(),
            desired_generation: 2,
            last_seen_at: Some(now()),
            observed_generation: Some(2),
            counts: counts(&[(Phase::Ready, 2)]),
            manifest_rejected: false,
            rolled_back: true,
        };
        let summary = summarize(row.clone(), now(), INTERVAL);
        assert_eq!(summary.state, FleetState::RolledBack);
        assert!(!summary.converged);
        let summary = summarize(
            FleetRow {
                rolled_back: false,
                ..row
            },
            now(),
            INTERVAL,
        );
        assert_eq!(summary.state, FleetState::Converged);
        assert!(summary.converged);
    }

    #[test]
    fn stale_after_three_missed_intervals_and_not_before() {
        let ready = counts(&[(Phase::Ready, 4)]);
        assert_eq!(
            derive_state(reported(3, &ready, 90), now(), INTERVAL),
            FleetState::Converged
        );
        assert_eq!(
            derive_state(reported(3, &ready, 91), now(), INTERVAL),
            FleetState::Stale
        );
    }

    #[test]
    fn staleness_wins_over_degraded() {
        let failed = counts(&[(Phase::Failed, 1)]);
        assert_eq!(
            derive_state(reported(3, &failed, 600), now(), INTERVAL),
            FleetState::Stale
        );
    }

    #[test]
    fn no_manifest_and_no_resources_is_converged() {
        let none = counts(&[]);
        let mut inputs = reported(0, &none, 1);
        inputs.desired_generation = 0;
        assert_eq!(derive_state(inputs, now(), INTERVAL), FleetState::Converged);
    }
}
