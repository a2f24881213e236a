//! Hangar's HTTP API: Fly's Machines API v1 (`/v1/apps`, `/v1/apps/{app}/machines`
//! and the machine actions), plus Hangar's own extensions under
//! `/v1/hangar/`.
//!
//! Every request needs a token (`Authorization: Bearer <token>` or Fly's
//! `FlyV1 <token>`; several comma-separated tokens are allowed, as fly-go
//! sends them). Every response, errors included, carries a `fly-request-id`
//! header. Handlers are thin: parse, call one agent method, shape the answer.

#![forbid(unsafe_code)]

mod apps;
pub mod error;
mod extract;
mod images;
mod machines;
mod views;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hangar_agent::Agent;

pub use error::ApiError;

/// Shared state of all handlers.
#[derive(Clone)]
pub struct ApiState {
    /// The host agent.
    pub agent: Agent,
    /// The image store (for the import extension).
    pub images: Option<Arc<hangar_image::ImageStore>>,
    /// Accepted tokens.
    pub auth: Arc<Auth>,
}

/// Token checking.
pub struct Auth {
    admin_token: String,
}

impl Auth {
    /// Accepts exactly `admin_token`.
    pub fn new(admin_token: impl Into<String>) -> Auth {
        Auth {
            admin_token: admin_token.into(),
        }
    }

    /// Checks an `Authorization` header value.
    pub fn check(&self, header: Option<&HeaderValue>) -> Result<(), ApiError> {
        let value = header.and_then(|h| h.to_str().ok()).ok_or_else(|| {
            ApiError::Unauthorized(
                "Authenticate: missing Authorization header (use \"Bearer <token>\")".into(),
            )
        })?;
        let (scheme, tokens) = value.trim().split_once(' ').ok_or_else(|| {
            ApiError::Unauthorized("Authenticate: malformed Authorization header".into())
        })?;
        if !scheme.eq_ignore_ascii_case("bearer") && !scheme.eq_ignore_ascii_case("flyv1") {
            return Err(ApiError::Unauthorized(format!(
                "Authenticate: unsupported scheme {scheme:?} (use Bearer or FlyV1)"
            )));
        }
        if tokens
            .split(',')
            .any(|t| constant_time_eq(t.trim().as_bytes(), self.admin_token.as_bytes()))
        {
            Ok(())
        } else {
            Err(ApiError::Unauthorized(
                "Authenticate: token validation error".into(),
            ))
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The router.
pub fn router(state: ApiState) -> Router {
    let v1 = Router::new()
        .route("/apps", get(apps::list).post(apps::create))
        .route("/apps/{app}", get(apps::get).delete(apps::delete))
        .route(
            "/apps/{app}/machines",
            get(machines::list).post(machines::create),
        )
        .route(
            "/apps/{app}/machines/{id}",
            get(machines::get).delete(machines::destroy),
        )
        .route("/apps/{app}/machines/{id}/start", post(machines::start))
        .route("/apps/{app}/machines/{id}/stop", post(machines::stop))
        .route("/apps/{app}/machines/{id}/wait", get(machines::wait))
        .route("/apps/{app}/machines/{id}/events", get(machines::events))
        .route("/hangar/images", get(images::list))
        .route(
            "/hangar/images/import",
            post(images::import).layer(DefaultBodyLimit::disable()),
        );
    Router::new()
        .nest("/v1", v1)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(middleware::from_fn(request_id))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("not found".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

async fn authenticate(State(s): State<ApiState>, req: Request, next: Next) -> Response {
    match s.auth.check(req.headers().get(http::header::AUTHORIZATION)) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// Tags every response with `fly-request-id` and logs the request (never its
/// headers or body).
async fn request_id(req: Request, next: Next) -> Response {
    let id = format!("{}-hangar", ulid::Ulid::new());
    let (method, path): (Method, String) = (req.method().clone(), req.uri().path().to_owned());
    let started = Instant::now();
    let mut resp = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("fly-request-id", v);
    }
    let status = resp.status().as_u16();
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if status >= 500 {
        tracing::warn!(%method, %path, status, ms, request_id = %id, "request");
    } else {
        tracing::debug!(%method, %path, status, ms, request_id = %id, "request");
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_schemes() {
        let a = Auth::new("tok");
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert!(a.check(Some(&h("Bearer tok"))).is_ok());
        assert!(a.check(Some(&h("FlyV1 other,tok"))).is_ok());
        assert!(a.check(Some(&h("bearer tok"))).is_ok());
        assert!(a.check(Some(&h("Bearer nope"))).is_err());
        assert!(a.check(Some(&h("Basic tok"))).is_err());
        assert!(a.check(Some(&h("tok"))).is_err());
        assert!(a.check(None).is_err());
    }
}
