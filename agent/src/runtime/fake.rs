//! A fake container runtime for unit tests: containers and images live in memory, every call is
//! recorded, and a test can kill a container, plant a foreign one or take the engine down.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};

use time::OffsetDateTime;

use super::{ContainerInfo, ContainerRuntime, CreateRequest, RuntimeError};

/// One recorded call, with the id, name or image it was about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    List,
    Inspect(String),
    ImageId(String),
    Pull(String),
    Create(String),
    Start(String),
    Remove(String),
}

#[derive(Debug, Default)]
struct State {
    containers: BTreeMap<String, ContainerInfo>,
    requests: BTreeMap<String, CreateRequest>,
    images: BTreeSet<String>,
    calls: Vec<Call>,
    down: bool,
    next_id: u64,
}

#[derive(Debug, Default)]
pub struct FakeRuntime {
    state: Mutex<State>,
}

impl FakeRuntime {
    /// A runtime that has `images` locally.
    pub fn with_images(images: &[&str]) -> Self {
        let fake = Self::default();
        fake.lock().images = images.iter().map(|i| (*i).to_owned()).collect();
        fake
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread poisons the lock; the state is still fine to read.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The calls since the last `take_calls`.
    pub fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut self.lock().calls)
    }

    pub fn containers(&self) -> Vec<ContainerInfo> {
        self.lock().containers.values().cloned().collect()
    }

    pub fn container(&self, id: &str) -> Option<ContainerInfo> {
        self.lock().containers.get(id).cloned()
    }

    /// The request a container was created from.
    pub fn request(&self, id: &str) -> Option<CreateRequest> {
        self.lock().requests.get(id).cloned()
    }

    /// Makes every further call fail as if the engine were down.
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    /// Ends a container's process with `exit_code` at `finished_at`.
    pub fn exit(&self, id: &str, exit_code: i32, finished_at: OffsetDateTime) {
        if let Some(container) = self.lock().containers.get_mut(id) {
            container.status = "exited".into();
            container.exit_code = Some(exit_code);
            container.finished_at = Some(finished_at);
        }
    }

    /// Pretends the container's process started at `at`.
    pub fn set_started_at(&self, id: &str, at: OffsetDateTime) {
        if let Some(container) = self.lock().containers.get_mut(id) {
            container.started_at = Some(at);
        }
    }

    /// Adds a container the agent did not create.
    pub fn plant(&self, name: &str, labels: BTreeMap<String, String>) -> String {
        let mut state = self.lock();
        state.next_id += 1;
        let id = format!("foreign{}", state.next_id);
        state.containers.insert(
            id.clone(),
            ContainerInfo {
                id: id.clone(),
                name: name.to_owned(),
                image_id: "sha256:foreign".into(),
                labels,
                status: "running".into(),
                exit_code: None,
                created_at: Some(OffsetDateTime::now_utc()),
                started_at: Some(OffsetDateTime::now_utc()),
                finished_at: None,
            },
        );
        id
    }

    fn enter(&self, call: Call) -> Result<MutexGuard<'_, State>, RuntimeError> {
        let mut state = self.lock();
        state.calls.push(call);
        if state.down {
            return Err(RuntimeError::Unavailable {
                runtime: "fake".into(),
                message: "the fake engine is down".into(),
            });
        }
        Ok(state)
    }
}

impl ContainerRuntime for FakeRuntime {
    async fn list(&self, labels: &[(&str, &str)]) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let state = self.enter(Call::List)?;
        Ok(state
            .containers
            .values()
            .filter(|c| {
                labels
                    .iter()
                    .all(|(k, v)| c.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .cloned()
            .collect())
    }

    async fn inspect(&self, id_or_name: &str) -> Result<Option<ContainerInfo>, RuntimeError> {
        let state = self.enter(Call::Inspect(id_or_name.to_owned()))?;
        Ok(state
            .containers
            .values()
            .find(|c| c.id == id_or_name || c.name == id_or_name)
            .cloned())
    }

    async fn image_id(&self, image: &str) -> Result<Option<String>, RuntimeError> {
        let state = self.enter(Call::ImageId(image.to_owned()))?;
        Ok(state
            .images
            .contains(image)
            .then(|| format!("sha256:{image}")))
    }

    async fn pull(&self, image: &str) -> Result<(), RuntimeError> {
        drop(self.enter(Call::Pull(image.to_owned()))?);
        Err(RuntimeError::PullFailed {
            runtime: "fake".into(),
            image: image.to_owned(),
            message: "no registry is reachable".into(),
        })
    }

    async fn create(&self, request: &CreateRequest) -> Result<String, RuntimeError> {
        let mut state = self.enter(Call::Create(request.name.clone()))?;
        if state.containers.values().any(|c| c.name == request.name) {
            return Err(RuntimeError::NameInUse {
                name: request.name.clone(),
            });
        }
        if !state.images.contains(&request.image) {
            return Err(RuntimeError::ImageNotFound {
                image: request.image.clone(),
            });
        }
        state.next_id += 1;
        let id = format!("c{}", state.next_id);
        state.containers.insert(
            id.clone(),
            ContainerInfo {
                id: id.clone(),
                name: request.name.clone(),
                image_id: format!("sha256:{}", request.image),
                labels: request.labels.clone(),
                status: "created".into(),
                exit_code: None,
                created_at: Some(OffsetDateTime::now_utc()),
                started_at: None,
                finished_at: None,
            },
        );
        state.requests.insert(id.clone(), request.clone());
        Ok(id)
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        let mut state = self.enter(Call::Start(id.to_owned()))?;
        let Some(container) = state.containers.get_mut(id) else {
            return Err(RuntimeError::Failed {
                runtime: "fake".into(),
                operation: "start",
                message: format!("no such container {id}"),
            });
        };
        container.status = "running".into();
        container.exit_code = None;
        container.started_at = Some(OffsetDateTime::now_utc());
        container.finished_at = None;
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let mut state = self.enter(Call::Remove(id.to_owned()))?;
        state.containers.remove(id);
        Ok(())
    }
}
