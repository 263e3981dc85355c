//! The applies and deletes of one kind. Applies: the kind's whole list goes to the reconcilers,
//! which schedule it within the concurrency bound and the apply timeout. Deletes: at most
//! `concurrency` at a time, each under the apply timeout, with a crashed task turned into a
//! failure of its resource.

use std::sync::Arc;

use fleetlet_manifests::ResourceId;

use super::Engine;
use crate::reconcile::bounded::run_bounded;
use crate::reconcile::{ApplyLimits, Deleted, Desired, Outcome, Reconcile, ReconcileError};
use crate::shutdown::ShutdownSignal;
use crate::store::OwnershipRecord;

impl<R: Reconcile> Engine<R> {
    /// Hands a kind's whole list of resources to apply to the reconcilers, which schedule them
    /// as the kind wants ([`Reconcile::apply_all`]) within the engine's concurrency and apply
    /// timeout, and returns each with its outcome.
    pub(super) async fn run_applies(
        &self,
        items: Vec<Desired>,
        shutdown: &ShutdownSignal,
    ) -> Vec<(Arc<Desired>, Outcome)> {
        // Shared, not copied, with the reconcilers, which hand each back with its outcome.
        let items = items.into_iter().map(Arc::new).collect();
        let limits = ApplyLimits {
            concurrency: self.settings.concurrency,
            timeout: self.settings.apply_timeout,
        };
        Arc::clone(&self.reconcilers)
            .apply_all(items, limits, shutdown.clone())
            .await
    }

    pub(super) async fn run_deletes(
        &self,
        items: Vec<(ResourceId, OwnershipRecord)>,
        shutdown: &ShutdownSignal,
    ) -> Vec<(ResourceId, OwnershipRecord, Result<Deleted, ReconcileError>)> {
        let timeout = self.settings.apply_timeout;
        run_bounded(
            items,
            self.settings.concurrency,
            shutdown,
            |(id, _)| id.to_string(),
            |(id, record)| {
                let reconcilers = Arc::clone(&self.reconcilers);
                async move {
                    let result = tokio::time::timeout(timeout, reconcilers.delete(&id, &record))
                        .await
                        .unwrap_or_else(|_| {
                            Err(ReconcileError::TimedOut {
                                id: id.clone(),
                                timeout,
                            })
                        });
                    (id, record, result)
                }
            },
            |(id, record), message| {
                let crashed = ReconcileError::Crashed {
                    id: id.clone(),
                    message,
                };
                (id, record, Err(crashed))
            },
        )
        .await
    }
}
