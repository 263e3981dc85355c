//! Enrollment: how an agent without a configured token gets one.
//!
//! With no FLEETLET_TOKEN(_FILE), the agent uses the token it kept from an earlier enrollment at
//! `<state-dir>/agents/<agentId>/token`; without one, it enrolls with the fleet's bootstrap token
//! (`POST /api/v1/enroll`), which answers the agent's own token exactly once, and keeps that
//! token there (mode 0600, written atomically) so that a restart reuses it. The bootstrap token
//! itself is never stored.
//!
//! A token that cannot be written (a full or failing state dir) does not stop the agent: the
//! manager answers it only once, so it is used from memory and written by a background retry
//! (1 s doubling to 30 s) as soon as the disk allows.
//!
//! A manager that is down is waited for (1 s doubling to 30 s) until shutdown; an answer that
//! cannot change by retrying (401, 404, 409, 422) stops the agent with a message saying what the
//! operator must do.

use std::ffi::OsStr;
#[cfg(test)]
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleetlet_manifests::AgentId;
use fleetlet_manifests::api::{AgentToken, ErrorBody};
use reqwest::StatusCode;

use crate::config::Token;
use crate::confined::{self, ConfinedError, Durability, ModeChoice, Replace};
use crate::shutdown::ShutdownSignal;

/// The first wait after a failed attempt; it doubles up to [`MAX_RETRY_WAIT`].
const FIRST_RETRY_WAIT: Duration = Duration::from_secs(1);
const MAX_RETRY_WAIT: Duration = Duration::from_secs(30);

/// Why no token could be had.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(
        "no token for agent {agent_id}: set FLEETLET_TOKEN or FLEETLET_TOKEN_FILE, or FLEETLET_BOOTSTRAP_TOKEN to enroll (no token is kept at {path})"
    )]
    NoCredential { agent_id: AgentId, path: PathBuf },
    #[error("cannot read the kept token {path}: {source}")]
    ReadToken {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the kept token file {path} is empty; delete it to enroll again")]
    EmptyToken { path: PathBuf },
    #[error("cannot keep the agent token at {path}: {source}")]
    WriteToken {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the manager refused the bootstrap token (HTTP 401): check FLEETLET_BOOTSTRAP_TOKEN")]
    BootstrapRefused,
    #[error(
        "the manager does not allow enrollment (HTTP 404): it has no bootstrap token configured"
    )]
    EnrollmentDisabled,
    #[error(
        "agent {agent_id} is already known to the manager (HTTP 409): an admin must rotate its token and configure it with FLEETLET_TOKEN_FILE"
    )]
    AlreadyEnrolled { agent_id: AgentId },
    #[error("the manager refused the enrollment of {agent_id} (HTTP {status}): {message}")]
    Refused {
        agent_id: AgentId,
        status: u16,
        message: String,
    },
    #[error("could not build the HTTP client: {0}")]
    Setup(String),
    #[error("shut down before the enrollment finished")]
    ShutDown,
}

/// Where the agent keeps the token it got by enrolling.
pub fn token_path(state_dir: &Path, agent_id: &AgentId) -> PathBuf {
    state_dir
        .join("agents")
        .join(agent_id.as_str())
        .join("token")
}

/// The token kept from an earlier enrollment, if there is one.
pub fn kept_token(state_dir: &Path, agent_id: &AgentId) -> Result<Option<Token>, EnrollError> {
    let path = token_path(state_dir, agent_id);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(EnrollError::ReadToken { path, source }),
    };
    let token = text.trim();
    if token.is_empty() {
        return Err(EnrollError::EmptyToken { path });
    }
    Ok(Some(Token::new(token.to_owned())))
}

/// Writes the token with mode 0600 from the first byte (never readable by others, not even
/// briefly), then renames it into place, so a crash leaves either no token or the whole token:
/// the atomic replace of [`crate::confined`], fsynced, directory included.
fn keep_token(path: &Path, token: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let dir_fd = confined::open_dir(dir)?;
    let how = Replace {
        mode: ModeChoice::Exact(0o600),
        uid: None,
        gid: None,
        durability: Durability::Full,
        temp_suffix: ".tmp",
    };
    let name = path.file_name().unwrap_or_else(|| OsStr::new("token"));
    confined::replace(&dir_fd, name, path, format!("{token}\n").as_bytes(), &how)
        .map_err(ConfinedError::into_io)
}

/// Keeps a token that could not be written when it was answered (a full or failing state dir):
/// tries again after 1 s, doubling up to 30 s, until it is kept or the agent shuts down. If the
/// agent stops first, the token is lost with the process and an admin must rotate it.
async fn keep_token_later(path: PathBuf, token: String, shutdown: ShutdownSignal) {
    let mut wait = FIRST_RETRY_WAIT;
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.triggered() => {
                tracing::error!(path = %path.display(), "shut down before the agent token could be kept: the next start cannot reuse it; an admin must rotate it and configure it with FLEETLET_TOKEN_FILE");
                return;
            }
        }
        let written = {
            let (path, token) = (path.clone(), token.clone());
            tokio::task::spawn_blocking(move || keep_token(&path, &token)).await
        };
        match written {
            Ok(Ok(())) => {
                tracing::info!(path = %path.display(), "the agent token is now kept in the state dir");
                return;
            }
            Ok(Err(error)) => {
                tracing::debug!(path = %path.display(), %error, "the agent token still cannot be kept; retrying");
            }
            Err(error) => {
                tracing::debug!(%error, "keeping the agent token did not finish; retrying")
            }
        }
        wait = (wait * 2).min(MAX_RETRY_WAIT);
    }
}

/// Enrolls `agent_id` with the bootstrap token, keeps the answered token and returns it; a
/// token that cannot be written yet (a full disk) is used from memory and kept later.
/// Transient failures are retried until `shutdown`.
pub async fn enroll(
    http: &reqwest::Client,
    base_url: &str,
    agent_id: &AgentId,
    bootstrap: &Token,
    state_dir: &Path,
    shutdown: &ShutdownSignal,
) -> Result<Token, EnrollError> {
    let url = format!("{}/api/v1/enroll", base_url.trim_end_matches('/'));
    let body = serde_json::json!({"agentId": agent_id, "labels": {}});
    let mut wait = FIRST_RETRY_WAIT;
    loop {
        let attempt = http
            .post(&url)
            .bearer_auth(bootstrap.expose())
            .json(&body)
            .timeout(crate::client::REQUEST_TIMEOUT)
            .send()
            .await;
        match attempt {
            Ok(response) if response.status() == StatusCode::CREATED => {
                let answer: AgentToken = match response.json().await {
                    Ok(answer) => answer,
                    Err(error) => {
                        tracing::warn!(%error, "the enrollment answer could not be read; retrying");
                        continue;
                    }
                };
                let path = token_path(state_dir, agent_id);
                match keep_token(&path, &answer.token) {
                    Ok(()) => {
                        tracing::info!(%agent_id, "enrolled with the manager; the agent token is kept in the state dir")
                    }
                    // The manager answers the token once: stopping here would lose it for
                    // good (a restart is refused with 409). It is used from memory and kept
                    // as soon as the disk allows, as the store does with what it cannot save.
                    Err(source) => {
                        let error = EnrollError::WriteToken {
                            path: path.clone(),
                            source,
                        };
                        tracing::warn!(%agent_id, %error, "enrolled with the manager, but the agent token cannot be kept yet; it is used from memory and kept as soon as the disk allows");
                        tokio::spawn(keep_token_later(
                            path,
                            answer.token.clone(),
                            shutdown.clone(),
                        ));
                    }
                }
                return Ok(Token::new(answer.token));
            }
            Ok(response) => {
                let status = response.status();
                match status {
                    StatusCode::UNAUTHORIZED => return Err(EnrollError::BootstrapRefused),
                    StatusCode::NOT_FOUND => return Err(EnrollError::EnrollmentDisabled),
                    StatusCode::CONFLICT => {
                        return Err(EnrollError::AlreadyEnrolled {
                            agent_id: agent_id.clone(),
                        });
                    }
                    _ if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS => {
                        let message = response
                            .json::<ErrorBody>()
                            .await
                            .map(|body| body.error.message)
                            .unwrap_or_default();
                        return Err(EnrollError::Refused {
                            agent_id: agent_id.clone(),
                            status: status.as_u16(),
                            message,
                        });
                    }
                    _ => tracing::warn!(status = status.as_u16(), "enrollment failed; retrying"),
                }
            }
            // reqwest's message names the URL, never a header, so the bootstrap token stays out.
            Err(error) => {
                tracing::warn!(%error, "the manager is unreachable for enrollment; retrying")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.triggered() => return Err(EnrollError::ShutDown),
        }
        wait = (wait * 2).min(MAX_RETRY_WAIT);
    }
}

#[cfg(test)]
mod tests;
