//! A filesystem that loses power on demand, for the power-cut tests (issue 22): mounted with
//! FUSE (the `fuser` crate, pure Rust: `mount(2)` as root, `fusermount3` otherwise;
//! `deploy/dev/fuse.sh` makes it usable) on a directory of the test, served by a thread of the
//! test process from an in-memory [`model::Model`].
//!
//! Writes stay in memory until they are made durable: a file's data and attributes by `fsync`
//! or `fdatasync` of that file, a directory's entries (create, rename, unlink) by `fsync` of that
//! directory. [`PowerCutFs::cut`] turns the power off at once — every later request fails with
//! `EIO`, so nothing after the cut becomes durable — and [`PowerCutFs::reboot`] unmounts, keeps
//! only the durable state and mounts that again, as a device coming back up would see its disk.
//!
//! `syncfs(2)` never reaches a FUSE filesystem (the kernel answers it without asking the
//! daemon, for every FUSE filesystem but virtiofs), so this one cannot see it and models it as
//! making nothing durable: the strictest reading. The agent's store uses `syncfs` for a group
//! commit of more than eight files (`MAX_SEPARATE_SYNCS` in `agent/src/store/fs.rs`): its
//! journal lines and event lines stay volatile here until a later `fdatasync` of the same file.
//! The store only loses records, states and events that way, which its recovery re-derives (see
//! docs/agent-store.md); the managed files and the whole-file records (manifest, rollout,
//! status) are made durable by fsyncs this filesystem sees, so what the tests check does not
//! rest on the modelled `syncfs`.

pub mod fuse;
pub mod model;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use fuser::{BackgroundSession, Config, MountOption};

pub use model::Counters;
use model::Model;

/// A mounted power-cut filesystem; unmounted on drop.
#[derive(Debug)]
pub struct PowerCutFs {
    at: PathBuf,
    model: Arc<Mutex<Model>>,
    session: Option<BackgroundSession>,
}

fn mount(at: &Path, model: &Arc<Mutex<Model>>) -> anyhow::Result<BackgroundSession> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("fleetlet-powercut".into()),
        MountOption::Subtype("powercut".into()),
        MountOption::RW,
    ];
    let filesystem = fuse::PowerCutFuse {
        model: Arc::clone(model),
    };
    fuser::spawn_mount(filesystem, at, &config).with_context(|| {
        format!(
            "mount the power-cut FUSE filesystem on {} (needs /dev/fuse and root: deploy/dev/fuse.sh)",
            at.display()
        )
    })
}

impl PowerCutFs {
    /// Mounts an empty filesystem on the (existing, empty) directory `at`.
    pub fn mount(at: &Path) -> anyhow::Result<Self> {
        let model = Arc::new(Mutex::new(Model::new()));
        let session = mount(at, &model)?;
        Ok(Self {
            at: at.to_path_buf(),
            model,
            session: Some(session),
        })
    }

    pub fn path(&self) -> &Path {
        &self.at
    }

    fn model(&self) -> std::sync::MutexGuard<'_, Model> {
        self.model.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The power goes off now: nothing written after this call becomes durable, and every
    /// request fails with `EIO` until [`Self::reboot`]. The caller then kills what runs on the
    /// mount (its processes die with the power).
    pub fn cut(&self) {
        self.model().powered = false;
    }

    /// What the filesystem was asked to do so far.
    pub fn counters(&self) -> Counters {
        self.model().counters
    }

    /// Unmounts (nothing may still have a file open on it), keeps only what was durable at the
    /// cut and mounts that on the same directory.
    pub fn reboot(&mut self) -> anyhow::Result<()> {
        if self.model().powered {
            bail!("reboot without a power cut first");
        }
        self.unmount()?;
        self.model().reboot();
        self.session = Some(mount(&self.at, &self.model)?);
        Ok(())
    }

    fn unmount(&mut self) -> anyhow::Result<()> {
        if let Some(session) = self.session.take() {
            session
                .umount_and_join()
                .with_context(|| format!("unmount {}", self.at.display()))?;
        }
        Ok(())
    }
}

impl Drop for PowerCutFs {
    fn drop(&mut self) {
        if self.unmount().is_err() {
            // Something still holds a file open: detach, so the test's directory can go.
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.at)
                .status();
        }
    }
}

#[cfg(test)]
mod tests;
