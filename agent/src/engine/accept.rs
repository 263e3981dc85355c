//! Taking a new desired state: a manifest for this agent whose signature verifies is accepted,
//! anything else refused with the last accepted manifest kept in force.

use fleetlet_manifests::AgentManifest;
use fleetlet_manifests::signature::{self, SignatureError};

use super::{Accepted, DesiredUpdate, Engine, EngineError};
use crate::reconcile::Reconcile;
use crate::status::Rejection;
use crate::store::EventKind;

impl<R: Reconcile> Engine<R> {
    /// Takes a new desired state. A manifest for another agent is refused, and so is one whose
    /// signature does not verify; the last accepted manifest then stays in force.
    pub fn accept(&mut self, update: DesiredUpdate) -> Result<(), EngineError> {
        let candidate = match update {
            DesiredUpdate::Manifest(manifest) => Accepted::new(manifest),
            DesiredUpdate::Rejected(why) => return self.reject(Rejection::invalid(why)),
        };
        if candidate.manifest.agent_id != *self.store.agent_id() {
            let why = format!(
                "manifest is for agent {}, not {}",
                candidate.manifest.agent_id,
                self.store.agent_id()
            );
            return self.reject(Rejection::invalid(why));
        }
        // Checked here, where every source of manifests (watch, --once, manifest file) meets,
        // so none can bypass it.
        if let Err(error) = self.check_signature(&candidate.manifest) {
            let generation = candidate.generation;
            tracing::error!(generation, %error, "refusing a manifest whose signature does not verify");
            return self.reject(Rejection::signature_refused(
                &error,
                format!("generation {generation}: {error}"),
            ));
        }
        self.manifest_rejected = None;
        if self.accepted.as_ref() != Some(&candidate) {
            self.start_rollout(&candidate)?;
            self.store.save_manifest(&candidate.manifest)?;
            self.record_event(
                EventKind::ManifestAccepted,
                None,
                format!(
                    "generation {} with {} resources",
                    candidate.generation,
                    candidate.manifest.resources.len()
                ),
            )?;
            self.accepted = Some(candidate);
            self.refresh_spec_hashes();
        }
        Ok(())
    }

    /// Without trusted keys every manifest passes (the documented development default).
    pub(super) fn check_signature(&self, manifest: &AgentManifest) -> Result<(), SignatureError> {
        if self.settings.trusted_keys.is_empty() {
            return Ok(());
        }
        signature::verify(manifest, &self.settings.trusted_keys)
    }

    fn reject(&mut self, rejection: Rejection) -> Result<(), EngineError> {
        if self.manifest_rejected.as_ref() != Some(&rejection) {
            self.record_event(
                EventKind::ManifestRejected,
                None,
                format!("{}: {}", rejection.reason, rejection.message),
            )?;
            self.manifest_rejected = Some(rejection);
        }
        Ok(())
    }
}
