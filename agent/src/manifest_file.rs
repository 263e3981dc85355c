//! Standalone mode: desired state from a local manifest file instead of a manager (like
//! kubelet's static pods). The file is re-read when it changes and at every resync.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use fleetlet_manifests::{AgentManifest, ManifestError};
use tokio::sync::mpsc;

use crate::engine::DesiredUpdate;
use crate::shutdown::ShutdownSignal;

/// How often the file's metadata is checked for a change between resyncs.
const CHANGE_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// Why the manifest file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestFileError {
    #[error("could not read manifest file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("manifest file {path} is not valid JSON: {message}")]
    Malformed { path: PathBuf, message: String },
    #[error("manifest file {path} is invalid: {violations}")]
    Invalid { path: PathBuf, violations: String },
}

/// Reads and validates the file. A file without `generation` gets one: the previous manifest's
/// when the resources are the same, the next one when they changed, so that
/// `observedGeneration` means the same as with a manager.
pub fn read_manifest_file(
    path: &Path,
    previous: Option<&AgentManifest>,
) -> Result<AgentManifest, ManifestFileError> {
    let bytes = read_bytes(path)?;
    parse_manifest(path, &bytes, previous)
}

fn read_bytes(path: &Path) -> Result<Vec<u8>, ManifestFileError> {
    std::fs::read(path).map_err(|source| ManifestFileError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// [`read_manifest_file`] of bytes already read from `path`.
fn parse_manifest(
    path: &Path,
    bytes: &[u8],
    previous: Option<&AgentManifest>,
) -> Result<AgentManifest, ManifestFileError> {
    let mut manifest = AgentManifest::from_slice(bytes).map_err(|error| match error {
        ManifestError::Malformed(message) => ManifestFileError::Malformed {
            path: path.to_path_buf(),
            message,
        },
        ManifestError::Invalid(violations) => ManifestFileError::Invalid {
            path: path.to_path_buf(),
            violations: violations
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        },
    })?;
    if manifest.generation.is_none() {
        let previous_generation = previous.and_then(|p| p.generation).unwrap_or(0);
        let same = previous.is_some_and(|p| p.content_hash() == manifest.content_hash());
        manifest.generation = Some(if same {
            previous_generation.max(1)
        } else {
            previous_generation + 1
        });
    }
    Ok(manifest)
}

/// The facts that change when the file is replaced or edited.
fn fingerprint(path: &Path) -> Option<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}

/// Watches the file and sends every new content to the engine until shutdown.
pub async fn watch_manifest_file(
    path: PathBuf,
    mut last: Option<AgentManifest>,
    resync_interval: Duration,
    updates: mpsc::Sender<DesiredUpdate>,
    shutdown: ShutdownSignal,
) {
    let mut seen = None;
    let mut last_error: Option<String> = None;
    // The bytes handled last. Parsing the same bytes again (every resync of an unchanged file)
    // would give the same manifest or the same error, which would be dropped below as "nothing
    // new", so they are not parsed again. Forgotten when a read fails.
    let mut handled: Option<Vec<u8>> = None;
    let mut next_full_read = tokio::time::Instant::now();
    loop {
        let now_seen = fingerprint(&path);
        let due = tokio::time::Instant::now() >= next_full_read;
        if due || now_seen != seen {
            seen = now_seen;
            next_full_read = tokio::time::Instant::now() + resync_interval;
            let read = read_bytes(&path).and_then(|bytes| {
                if handled.as_deref() == Some(bytes.as_slice()) {
                    return Ok(None);
                }
                let parsed = parse_manifest(&path, &bytes, last.as_ref());
                handled = Some(bytes);
                parsed.map(Some)
            });
            if let Err(ManifestFileError::Read { .. }) = &read {
                handled = None;
            }
            let update = match read {
                Ok(None) => None,
                Ok(Some(manifest)) if last.as_ref() == Some(&manifest) => None,
                Ok(Some(manifest)) => {
                    last = Some(manifest.clone());
                    last_error = None;
                    Some(DesiredUpdate::Manifest(manifest))
                }
                Err(error) => {
                    let why = error.to_string();
                    if last_error.as_deref() == Some(why.as_str()) {
                        None
                    } else {
                        tracing::error!(%error, "keeping the last accepted manifest");
                        last_error = Some(why.clone());
                        Some(DesiredUpdate::Rejected(why))
                    }
                }
            };
            if let Some(update) = update
                && updates.send(update).await.is_err()
            {
                return;
            }
        }
        tokio::select! {
            () = shutdown.triggered() => return,
            () = tokio::time::sleep(CHANGE_CHECK_INTERVAL.min(resync_interval)) => {}
        }
    }
}

#[cfg(test)]
mod tests;
