//! Taking a new desired state: a manifest for this agent whose signature verifies is accepted,
//! anything else refused with the last accepted manifest kept in force.

use fleetlet_manifests::AgentManifest;
use fleetlet_manifests::signature::{self, SignatureError};

use super::{DesiredUpdate, Engine, EngineError};
use crate::reconcile::Reconcile;
use crate::status::Rejection;
use crate::store::EventKind;

impl<R: Reconcile> Engine<R> {
    /// Takes a new desired state. A manifest for another agent is refused.
    pub fn accept(&mut self, update: DesiredUpdate) -> Result<(), EngineError> {
        match update {
            DesiredUpdate::Manifest(manifest) if manifest.agent_id != *self.store.agent_id() => {
                let why = format!(
                    "manifest is for agent {}, not {}",
                    manifest.agent_id,
                    self.store.agent_id()
                );
                self.reject(Rejection::invalid(why))
            }
            // Checked here, where every source of manifests (watch, --once, manifest file) meets,
            // so none can bypass it. The last accepted manifest stays in force.
            DesiredUpdate::Manifest(manifest)
                if let Err(error) = self.check_signature(&manifest) =>
            {
                let generation = manifest.generation.unwrap_or(0);
                tracing::error!(generation, %error, "refusing a manifest whose signature does not verify");
                self.reject(Rejection::signature_invalid(format!(
                    "generation {generation}: {error}"
                )))
            }
            DesiredUpdate::Manifest(manifest) => {
                let generation = manifest.generation.unwrap_or(0);
                let unchanged = self.manifest.as_ref() == Some(&manifest);
                self.manifest_rejected = None;
                if !unchanged {
                    self.start_rollout(&manifest)?;
                    self.store.save_manifest(&manifest)?;
                    self.record_event(
                        EventKind::ManifestAccepted,
                        None,
                        format!(
                            "generation {generation} with {} resources",
                            manifest.resources.len()
                        ),
                    )?;
                    self.manifest_generation = generation;
                    self.manifest = Some(manifest);
                    self.refresh_spec_hashes();
                }
                Ok(())
            }
            DesiredUpdate::Rejected(why) => self.reject(Rejection::invalid(why)),
        }
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
