//! The view of session storage states that the SessionStorage reconciler keeps and the
//! Container reconciler reads.

use super::*;

/// What a container may do with the session storage it mounts; kept by the SessionStorage
/// reconciler, read by the Container reconciler. SessionStorage applies before Container in
/// every pass, so a container sees the state of the same pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeState {
    /// The data directory exists (possibly over quota: the workload may be what frees space).
    Ready { path: PathBuf },
    /// Expired and deleted: a container must not start on an empty directory in its place.
    Evicted,
    /// Not created (yet), or its last apply failed.
    NotReady { why: String },
}

/// The shared view of session storage states by resource id. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct SessionVolumes {
    states: Arc<RwLock<HashMap<ResourceId, VolumeState>>>,
}

impl SessionVolumes {
    /// The state of session storage `id`; `NotReady` when nothing is known of it.
    pub fn get(&self, id: &ResourceId) -> VolumeState {
        self.states
            .read()
            .ok()
            .and_then(|states| states.get(id).cloned())
            .unwrap_or_else(|| VolumeState::NotReady {
                why: "it has not been applied yet".into(),
            })
    }

    pub fn set(&self, id: &ResourceId, state: VolumeState) {
        if let Ok(mut states) = self.states.write() {
            states.insert(id.clone(), state);
        }
    }

    pub(super) fn remove(&self, id: &ResourceId) {
        if let Ok(mut states) = self.states.write() {
            states.remove(id);
        }
    }
}
