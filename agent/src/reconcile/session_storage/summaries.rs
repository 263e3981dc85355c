//! The in-memory summaries of sessions: the last completed one per session and the refresh in
//! flight, waited for at most `SUMMARY_WAIT`.

use super::*;

impl SessionStorageReconciler {
    /// The newest summary of `data`: a refresh is started when none is running, and waited for
    /// at most [`SUMMARY_WAIT`]; past that, the last completed summary (or `persisted`, from the
    /// marker) is returned and the refresh carries on in the background.
    pub(super) async fn current_summary(
        &self,
        id: &ResourceId,
        dir: &str,
        data: &Path,
        persisted: Option<Summary>,
    ) -> Result<Option<Summary>, SessionStorageError> {
        let finished = {
            let mut slots = self.lock_slots();
            let slot = slots.entry(id.clone()).or_insert_with(|| Slot {
                dir: dir.to_owned(),
                latest: None,
                running: None,
            });
            if slot.dir != dir {
                *slot = Slot {
                    dir: dir.to_owned(),
                    latest: None,
                    running: None,
                };
            }
            if slot.latest.is_none() {
                slot.latest = persisted;
            }
            slot.running.take_if(|handle| handle.is_finished())
        };
        if let Some(handle) = finished {
            let result = handle.await;
            self.record_summary(id, dir, result)?;
        }
        let handle = {
            let mut slots = self.lock_slots();
            match slots.get_mut(id).and_then(|slot| slot.running.take()) {
                Some(handle) => handle,
                None => {
                    let data = data.to_path_buf();
                    tokio::task::spawn_blocking(move || {
                        summarize(&data).map_err(|error| error.to_string())
                    })
                }
            }
        };
        let mut handle = handle;
        match tokio::time::timeout(SUMMARY_WAIT, &mut handle).await {
            Ok(result) => self.record_summary(id, dir, result)?,
            Err(_) => {
                let mut slots = self.lock_slots();
                match slots.get_mut(id).filter(|slot| slot.dir == dir) {
                    Some(slot) => slot.running = Some(handle),
                    None => handle.abort(),
                }
            }
        }
        Ok(self
            .lock_slots()
            .get(id)
            .filter(|slot| slot.dir == dir)
            .and_then(|slot| slot.latest.clone()))
    }

    pub(super) fn record_summary(
        &self,
        id: &ResourceId,
        dir: &str,
        result: Result<Result<Summary, String>, tokio::task::JoinError>,
    ) -> Result<(), SessionStorageError> {
        let summary = match result {
            Ok(Ok(summary)) => summary,
            Ok(Err(message)) => {
                return Err(SessionStorageError::Summary {
                    id: id.clone(),
                    path: dir.to_owned(),
                    message,
                });
            }
            Err(join) => {
                return Err(SessionStorageError::WorkerStopped {
                    id: id.clone(),
                    message: join.to_string(),
                });
            }
        };
        if let Some(slot) = self.lock_slots().get_mut(id).filter(|slot| slot.dir == dir) {
            slot.latest = Some(summary);
        }
        Ok(())
    }

    /// Drops what is known of a session's summary; a walk still running is left to finish and
    /// its result is discarded.
    pub(super) fn forget_summary(&self, id: &ResourceId) {
        self.lock_slots().remove(id);
    }

    pub(super) fn lock_slots(&self) -> std::sync::MutexGuard<'_, HashMap<ResourceId, Slot>> {
        // A panic while holding this lock leaves only summaries behind, which are recomputed.
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
