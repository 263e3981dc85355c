//! The one error type of the HTTP API and its JSON form.
//!
//! Every failure a handler can meet becomes an [`HttpError`] whose body is the error JSON of docs/reference.md §3.
//! Store failures are logged here, with their cause, and answered with a fixed message: the body
//! never carries SQL, driver messages or connection details.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fleetlet_manifests::Violation;
use fleetlet_manifests::api::{ApiError, ErrorBody, ErrorKind};

use crate::store::StoreError;

/// An error answer: a kind from the contract's closed set, a message, and violations for 422.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpError {
    pub kind: ErrorKind,
    pub message: String,
    pub violations: Vec<Violation>,
}

impl HttpError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            violations: Vec::new(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unauthorized, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Forbidden, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// A 422 listing every violation.
    pub fn invalid(message: impl Into<String>, violations: Vec<Violation>) -> Self {
        Self {
            kind: ErrorKind::InvalidManifest,
            message: message.into(),
            violations,
        }
    }

    pub fn internal() -> Self {
        Self::new(
            ErrorKind::Internal,
            "the manager failed to handle this request",
        )
    }
}

impl From<StoreError> for HttpError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::AgentNotFound(id) => Self::not_found(format!("agent {id} not found")),
            StoreError::AgentExists(id) => Self::new(
                ErrorKind::Conflict,
                format!("agent {id} is already registered"),
            ),
            StoreError::GenerationMismatch { expected, current } => Self::new(
                ErrorKind::Conflict,
                format!(
                    "If-Match names generation {expected} but the current generation is {current}"
                ),
            ),
            StoreError::OwnedByFleet(fleet) => Self::new(
                ErrorKind::Conflict,
                format!("the agent is managed by fleet {fleet}; change the fleet instead"),
            ),
            StoreError::FleetNotFound(name) => Self::not_found(format!("fleet {name} not found")),
            StoreError::FleetsNeedPostgres => Self::new(
                ErrorKind::Conflict,
                "fleets need the PostgreSQL store; the --dev memory store has none",
            ),
            StoreError::Unavailable(cause) => {
                tracing::warn!(
                    kind = crate::store::postgres::failure_kind(&cause),
                    error = %cause,
                    "store unavailable"
                );
                Self::new(
                    ErrorKind::StoreUnavailable,
                    "the store is unavailable; retry later",
                )
            }
            StoreError::Internal(cause) => {
                tracing::error!(error = %cause, "store failure");
                Self::internal()
            }
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.kind.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody {
            error: ApiError {
                kind: self.kind,
                message: self.message,
                violations: self.violations,
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        if self.kind == ErrorKind::Unauthorized {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}
