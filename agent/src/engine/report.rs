//! The status: built from the store, the desired manifest and the connectivity, and published
//! (stored and queued for the manager) only when it says something new.

use fleetlet_manifests::{AgentStatus, Phase};

use super::{Engine, EngineError, StatusBasis};
use crate::reconcile::Reconcile;
use crate::status::{self, Connectivity, StatusInputs};

impl<R: Reconcile> Engine<R> {
    /// The status as of now. While the store cannot save, `Degraded` says so.
    pub fn build_status(&self, connectivity: &Connectivity) -> Result<AgentStatus, EngineError> {
        let states = self.store.resource_states()?;
        let mut status = status::build_status(&StatusInputs {
            agent_id: self.store.agent_id(),
            agent: &self.agent,
            manifest: self.desired_manifest(),
            missed_deadline: self.current_miss(),
            manifest_generation: self.manifest_generation(),
            observed_generation: self.observed_generation,
            spec_hashes: Some(&self.desired_spec_hashes()),
            states: &states,
            connectivity,
            manifest_rejected: self.manifest_rejected.as_ref(),
            previous: self.last_report.as_ref(),
            now: self.settings.clock.now(),
        });
        if let Some(fault) = self.store.fault() {
            status::note_store_fault(&mut status, &fault, self.last_report.as_ref());
        }
        Ok(status)
    }

    /// What a status built now would be built from; `None` when the store cannot say whether
    /// its states changed.
    fn status_basis(&self, connectivity: &Connectivity) -> Option<StatusBasis> {
        Some(StatusBasis {
            states_revision: self.store.states_revision()?,
            desired_revision: self.desired_revision,
            manifest_generation: self.manifest_generation(),
            observed_generation: self.observed_generation,
            connectivity: connectivity.clone(),
            manifest_rejected: self.manifest_rejected.clone(),
            store_fault: self.store.fault(),
        })
    }

    /// Builds the status and, when it says something new (or `heartbeat` is set), gives it the
    /// next `reportSeq`, stores it and queues it for the manager. Returns the queued status.
    ///
    /// A status built from the same basis as the last one, which had no Pending resource, would
    /// have the same content as the last report (its conditions keep their transition times), so
    /// it is not built again: that is every pass of a settled device.
    pub fn publish_status(
        &mut self,
        connectivity: &Connectivity,
        heartbeat: bool,
    ) -> Result<Option<AgentStatus>, EngineError> {
        // Read before the states are, so that a change in between only causes another build.
        let basis = self.status_basis(connectivity);
        if !heartbeat && self.last_report.is_some() && basis.is_some() && basis == self.status_basis
        {
            return Ok(None);
        }
        self.status_basis = None;
        let mut status = self.build_status(connectivity)?;
        let reusable = basis.filter(|_| {
            !status
                .resources
                .values()
                .any(|resource| resource.phase == Phase::Pending)
        });
        let changed = self
            .last_report
            .as_ref()
            .is_none_or(|last| !status::same_content(last, &status));
        let repaired = self
            .last_report
            .as_ref()
            .is_some_and(|last| !status::same_repairs(last, &status));
        let now = self.settings.clock.now();
        let news = changed || (repaired && status::repairs_due(self.repairs_reported_at, now));
        if !news && !heartbeat {
            // A repair count held back is looked at again by the next pass.
            self.status_basis = reusable.filter(|_| !repaired);
            return Ok(None);
        }
        if repaired {
            self.repairs_reported_at = Some(now);
        }
        let seq = status::next_report_seq(self.store.last_report_seq()?, status.observed_at);
        self.store.save_last_report_seq(seq)?;
        status.report_seq = seq;
        self.store.save_status(&status)?;
        self.store.enqueue_report(&status)?;
        self.last_report = Some(status.clone());
        self.status_basis = reusable;
        Ok(Some(status))
    }
}
