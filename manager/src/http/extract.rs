//! Request extractors whose every rejection is an [`HttpError`], so no plain-text axum error
//! ever reaches a client: JSON bodies, the caller's role, the agent in the path, query strings.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::StatusCode;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use fleetlet_manifests::api::ErrorKind;
use fleetlet_manifests::{AgentId, Violation};
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::HttpError;
use crate::token::{AGENT_TOKEN_PREFIX, hash_token};

/// A JSON request body, parsed but not yet typed.
#[derive(Debug)]
pub struct JsonBody(pub serde_json::Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = HttpError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(request.headers().get(CONTENT_TYPE)) {
            return Err(HttpError::new(
                ErrorKind::UnsupportedMediaType,
                "the body must be JSON with Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    HttpError::new(
                        ErrorKind::PayloadTooLarge,
                        format!(
                            "the body exceeds the limit of {} bytes",
                            super::BODY_LIMIT_BYTES
                        ),
                    )
                } else {
                    HttpError::bad_request("the request body could not be read")
                }
            })?;
        let value = serde_json::from_slice(&bytes)
            .map_err(|e| HttpError::bad_request(format!("malformed JSON: {e}")))?;
        Ok(JsonBody(value))
    }
}

fn is_json(content_type: Option<&axum::http::HeaderValue>) -> bool {
    let Some(value) = content_type.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
}

/// Types a JSON value, reporting the path of the first bad field as a 422 violation.
pub fn decode<T: DeserializeOwned>(value: serde_json::Value, what: &str) -> Result<T, HttpError> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        let violation = Violation {
            path: if path == "." { String::new() } else { path },
            message: error.inner().to_string(),
        };
        HttpError::invalid(format!("invalid {what}"), vec![violation])
    })
}

/// Who is calling, by the bearer token presented.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Caller {
    Admin,
    Reader,
    Agent(AgentId),
}

impl Caller {
    pub fn require_admin(&self) -> Result<(), HttpError> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Reader => Err(HttpError::forbidden("the reader role is read-only")),
            Caller::Agent(_) => Err(HttpError::forbidden("this needs the admin role")),
        }
    }

    /// Admin or reader: the fleet-wide read endpoints.
    pub fn require_reader(&self) -> Result<(), HttpError> {
        match self {
            Caller::Admin | Caller::Reader => Ok(()),
            Caller::Agent(_) => Err(HttpError::forbidden("this needs the admin or reader role")),
        }
    }

    /// Admin, reader, or the agent itself.
    pub fn require_reader_or_agent(&self, agent_id: &AgentId) -> Result<(), HttpError> {
        match self {
            Caller::Admin | Caller::Reader => Ok(()),
            Caller::Agent(own) if own == agent_id => Ok(()),
            Caller::Agent(_) => Err(HttpError::forbidden(
                "an agent token is valid for its own agent only",
            )),
        }
    }

    /// The agent itself and nobody else.
    pub fn require_agent(&self, agent_id: &AgentId) -> Result<(), HttpError> {
        match self {
            Caller::Agent(own) if own == agent_id => Ok(()),
            Caller::Agent(_) => Err(HttpError::forbidden(
                "an agent token is valid for its own agent only",
            )),
            Caller::Reader => Err(HttpError::forbidden("the reader role is read-only")),
            Caller::Admin => Err(HttpError::forbidden(
                "only the agent itself reports its status",
            )),
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = HttpError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer_token(parts)?;
        let presented = hash_token(token);
        if state.roles.admin.matches(&presented) {
            return Ok(Caller::Admin);
        }
        if state
            .roles
            .reader
            .is_some_and(|reader| reader.matches(&presented))
        {
            return Ok(Caller::Reader);
        }
        if token.starts_with(AGENT_TOKEN_PREFIX)
            && let Some(agent_id) = state.store.agent_for_token(presented).await?
        {
            return Ok(Caller::Agent(agent_id));
        }
        Err(HttpError::unauthorized("invalid token"))
    }
}

/// The token of an `Authorization: Bearer <token>` header; a missing or malformed one is a 401.
pub fn bearer_token(parts: &Parts) -> Result<&str, HttpError> {
    let header = parts
        .headers
        .get(AUTHORIZATION)
        .ok_or_else(|| HttpError::unauthorized("missing bearer token"))?;
    header
        .to_str()
        .ok()
        .and_then(|value| {
            let (scheme, token) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|token| !token.is_empty())
        .ok_or_else(|| HttpError::unauthorized("the Authorization header must be 'Bearer <token>'"))
}

/// A caller that presented the bootstrap token: a device enrolling itself.
#[derive(Debug)]
pub struct Bootstrap;

impl FromRequestParts<AppState> for Bootstrap {
    type Rejection = HttpError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // Without a bootstrap token the endpoint does not exist for clients: 404 says so without
        // inviting anyone to guess a token.
        let Some(bootstrap) = state.roles.bootstrap else {
            return Err(HttpError::not_found(
                "enrollment is disabled: the manager has no bootstrap token",
            ));
        };
        let presented = hash_token(bearer_token(parts)?);
        if bootstrap.matches(&presented) {
            Ok(Bootstrap)
        } else {
            Err(HttpError::unauthorized("invalid bootstrap token"))
        }
    }
}

/// The `{agentId}` of the path, validated.
#[derive(Debug)]
pub struct AgentPath(pub AgentId);

impl<S: Send + Sync> FromRequestParts<S> for AgentPath {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| HttpError::bad_request("the path must name one agent"))?;
        // No agent can be registered under an invalid id, so there is nothing to find.
        AgentId::try_from(raw.as_str())
            .map(AgentPath)
            .map_err(|_| HttpError::not_found(format!("agent {raw:?} not found")))
    }
}

/// A query string, typed; a bad parameter is a 400.
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| QueryParams(value))
            .map_err(|rejection| {
                HttpError::bad_request(format!("bad query string: {}", rejection.body_text()))
            })
    }
}
