//! The one place where failures become HTTP responses: Fly's status codes
//! and its body `{"error": "...", "status": "unknown"}` (the spec's
//! `main.statusCode`; `insufficient_capacity` is the only other value, and a
//! single host answers capacity problems with 412 preconditions instead). Internal failures are logged with their
//! details and answered with a generic message, never with paths or driver
//! output.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hangar_agent::AgentError;
use hangar_api_types::ErrorResponse;

/// An API failure.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A failure of the agent.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// 401.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: the token may not act on this resource.
    #[error("{0}")]
    Forbidden(String),
    /// 400 raised by the HTTP layer (bad JSON, bad query).
    #[error("{0}")]
    BadRequest(String),
    /// 404 raised by the HTTP layer (no such route).
    #[error("{0}")]
    NotFound(String),
    /// 405.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 413.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 503: the host that runs the machine cannot be reached.
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    /// The status code.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Agent(e) => match e {
                AgentError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
                AgentError::PermissionDenied(_) => StatusCode::FORBIDDEN,
                AgentError::NotFound(_) => StatusCode::NOT_FOUND,
                AgentError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
                AgentError::Conflict(_) => StatusCode::CONFLICT,
                AgentError::Precondition(_) => StatusCode::PRECONDITION_FAILED,
                AgentError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                AgentError::Unprocessable(_) | AgentError::InsufficientCapacity(_) => {
                    StatusCode::UNPROCESSABLE_ENTITY
                }
                e if e.is_internal() => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            ApiError::Agent(e) if e.is_internal() => {
                // The whole chain of causes, in hangard's log only.
                let detail = hangar_core::errors::error_chain(e);
                tracing::error!(error = %detail, "internal error");
                "internal error; see hangard's log".to_owned()
            }
            other => other.to_string(),
        };
        let kind = match &self {
            ApiError::Agent(AgentError::InsufficientCapacity(_)) => "insufficient_capacity",
            _ => "unknown",
        };
        let body = ErrorResponse {
            error: message,
            status: Some(kind.to_owned()),
        };
        (status, Json(body)).into_response()
    }
}

impl From<hangar_deploy::DeployError> for ApiError {
    fn from(e: hangar_deploy::DeployError) -> ApiError {
        use hangar_deploy::DeployError as D;
        match e {
            D::Agent(e) => ApiError::Agent(e),
            D::Config(e) => ApiError::BadRequest(format!("invalid_argument: fly.toml: {e}")),
            D::Invalid(m) => ApiError::BadRequest(format!("invalid_argument: {m}")),
            D::Denied(d) => ApiError::Agent(AgentError::Precondition(d.to_string())),
        }
    }
}

/// Handler result.
pub type ApiResult<T> = Result<T, ApiError>;
