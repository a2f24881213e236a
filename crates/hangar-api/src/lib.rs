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
pub mod cluster;
pub mod error;
mod extract;
mod hosts;
mod images;
mod ips;
mod logs;
mod machine_metrics;
mod machine_ops;
mod machines;
mod metrics;
pub mod openapi;
mod platform;
pub mod proxy_view;
pub mod registry;
mod releases;
pub mod rendered;
mod secrets;
mod tokens;
mod tty;
pub mod ui;
pub mod usage;
mod views;
mod volume_copy;
mod volumes;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use hangar_agent::Agent;

pub use error::ApiError;

/// What every handler is given: the state behind one reference count (a
/// request clones it for the authentication, the cluster routing and the
/// handler; one atomic add each, not one per field).
pub(crate) type Shared = std::sync::Arc<ApiState>;

/// Shared state of all handlers.
#[derive(Clone)]
pub struct ApiState {
    /// The host agent.
    pub agent: Agent,
    /// The image store (for the import extension).
    pub images: Option<Arc<hangar_image::ImageStore>>,
    /// Accepted tokens.
    pub auth: Arc<Auth>,
    /// The release executor.
    pub deploy: hangar_deploy::Deployer,
    /// The built-in registry's storage (`/v2/`), when there is one.
    pub registry: Option<hangar_registry::Storage>,
    /// This host's cluster membership (`hangard --cluster`), if any.
    pub cluster: Option<cluster::ClusterApi>,
    /// The proxy's view of apps, when this host runs a proxy.
    pub proxy: Option<Arc<dyn proxy_view::ProxyView>>,
    /// Machines kept rendered as JSON.
    pub renderings: Arc<rendered::Renderings>,
}

impl ApiState {
    /// The API of `agent` alone, with `token` as the admin token: no image
    /// store, registry, cluster or proxy.
    pub fn bare(agent: Agent, token: &str) -> ApiState {
        ApiState {
            deploy: hangar_deploy::Deployer::new(agent.clone()),
            agent,
            images: None,
            auth: Arc::new(Auth::new(token)),
            registry: None,
            cluster: None,
            proxy: None,
            renderings: Default::default(),
        }
    }
}

/// Who a request acts as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The installation's admin token: everything.
    Admin,
    /// An app-scoped (deploy) token: that app only.
    App {
        /// The app.
        app: String,
        /// The token's id.
        token_id: String,
        /// Unix seconds, if it expires.
        expires_at: Option<i64>,
    },
}

impl Principal {
    /// The name leases record as their owner.
    pub fn owner(&self) -> String {
        match self {
            Principal::Admin => "admin".into(),
            Principal::App { token_id, .. } => token_id.clone(),
        }
    }
}

/// Token checking.
pub struct Auth {
    admin_token: String,
    cluster: Option<hangar_cluster::Cluster>,
}

impl Auth {
    /// Accepts exactly `admin_token`.
    pub fn new(admin_token: impl Into<String>) -> Auth {
        Auth {
            admin_token: admin_token.into(),
            cluster: None,
        }
    }

    /// Accepts the admin token of every host of `cluster` too.
    pub fn with_cluster(mut self, cluster: hangar_cluster::Cluster) -> Auth {
        self.cluster = Some(cluster);
        self
    }

    /// Checks an `Authorization` header value against the admin token and
    /// the agent's app-scoped tokens.
    pub fn principal(
        &self,
        header: Option<&HeaderValue>,
        agent: &Agent,
    ) -> Result<Principal, ApiError> {
        let tokens = tokens(header)?;
        if tokens.iter().any(|t| self.is_admin(t)) {
            return Ok(Principal::Admin);
        }
        for t in tokens {
            if let Some(row) = agent.app_token(t)? {
                return Ok(Principal::App {
                    app: row.app,
                    token_id: row.id,
                    expires_at: row.expires_at,
                });
            }
        }
        Err(rejected())
    }

    /// Checks an `Authorization` header value against the admin token.
    pub fn check(&self, header: Option<&HeaderValue>) -> Result<(), ApiError> {
        if tokens(header)?.iter().any(|t| self.is_admin(t)) {
            Ok(())
        } else {
            Err(rejected())
        }
    }

    fn is_admin(&self, token: &str) -> bool {
        constant_time_eq(token.as_bytes(), self.admin_token.as_bytes())
            || self
                .cluster
                .as_ref()
                .is_some_and(|c| c.is_admin_token(token))
    }
}

fn rejected() -> ApiError {
    ApiError::Unauthorized("Authenticate: token validation error".into())
}

/// The tokens of an `Authorization` header: `Bearer` or Fly's `FlyV1`
/// scheme, several comma-separated as fly-go sends them.
fn tokens(header: Option<&HeaderValue>) -> Result<Vec<&str>, ApiError> {
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
    Ok(tokens.split(',').map(str::trim).collect())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The router.
pub fn router(state: ApiState) -> Router {
    let state: Shared = std::sync::Arc::new(state);
    let v1 = Router::new()
        .route("/apps", get(apps::list).post(apps::create))
        .route("/apps/{app}", get(apps::get).delete(apps::delete))
        .route(
            "/apps/{app}/machines",
            get(machines::list).post(machines::create),
        )
        .route(
            "/apps/{app}/machines/{id}",
            get(machines::get)
                .post(machine_ops::update)
                .delete(machines::destroy),
        )
        .route("/apps/{app}/machines/{id}/start", post(machines::start))
        .route("/apps/{app}/machines/{id}/stop", post(machines::stop))
        .route("/apps/{app}/machines/{id}/wait", get(machines::wait))
        .route("/apps/{app}/machines/{id}/events", get(machines::events))
        .route(
            "/apps/{app}/machines/{id}/versions",
            get(machine_ops::versions),
        )
        .route(
            "/apps/{app}/machines/{id}/restart",
            post(machine_ops::restart),
        )
        .route(
            "/apps/{app}/machines/{id}/signal",
            post(machine_ops::signal),
        )
        .route(
            "/apps/{app}/machines/{id}/suspend",
            post(machine_ops::suspend),
        )
        .route(
            "/apps/{app}/machines/{id}/cordon",
            post(machine_ops::cordon),
        )
        .route(
            "/apps/{app}/machines/{id}/uncordon",
            post(machine_ops::uncordon),
        )
        .route(
            "/apps/{app}/machines/{id}/lease",
            get(machine_ops::get_lease)
                .post(machine_ops::acquire_lease)
                .delete(machine_ops::release_lease),
        )
        .route(
            "/apps/{app}/machines/{id}/metadata",
            get(machine_ops::get_metadata)
                .put(machine_ops::update_metadata)
                .patch(machine_ops::update_metadata),
        )
        .route(
            "/apps/{app}/machines/{id}/metadata/{key}",
            get(machine_ops::get_metadata_key)
                .post(machine_ops::set_metadata_key)
                .delete(machine_ops::delete_metadata_key),
        )
        .route("/apps/{app}/machines/{id}/exec", post(machine_ops::exec))
        .route("/apps/{app}/machines/{id}/ps", get(machine_ops::ps))
        .route(
            "/apps/{app}/machines/{id}/memory",
            get(machine_ops::memory).put(machine_ops::set_memory),
        )
        .route("/apps/{app}/deploy_token", post(tokens::deploy_token))
        .route(
            "/apps/{app}/releases",
            get(releases::list).post(releases::create),
        )
        .route("/apps/{app}/releases/{release}", get(releases::get))
        .route(
            "/apps/{app}/releases/{release}/events",
            get(releases::events),
        )
        .route(
            "/apps/{app}/releases/{release}/cancel",
            post(releases::cancel),
        )
        .route(
            "/apps/{app}/ip_assignments",
            get(ips::list).post(ips::create),
        )
        .route("/apps/{app}/ip_assignments/{ip}", delete(ips::delete))
        .route(
            "/apps/{app}/volumes",
            get(volumes::list).post(volumes::create),
        )
        .route(
            "/apps/{app}/volumes/{id}",
            get(volumes::get)
                .put(volumes::update)
                .delete(volumes::delete),
        )
        .route("/apps/{app}/volumes/{id}/extend", put(volumes::extend))
        .route("/apps/{app}/volumes/{id}/export", get(volume_copy::export))
        .route(
            "/apps/{app}/volumes/{id}/snapshots",
            get(volumes::snapshots).post(volumes::snapshot),
        )
        .route(
            "/apps/{app}/secrets",
            get(secrets::list).post(secrets::update),
        )
        .route(
            "/apps/{app}/secrets/{name}",
            get(secrets::get).post(secrets::set).delete(secrets::delete),
        )
        .route("/orgs/{org}/machines", get(platform::org_machines))
        .route("/platform/regions", get(platform::regions))
        .route("/tokens/current", get(platform::current_token))
        .route("/hangar/apps/{app}/logs", get(logs::logs))
        .route("/hangar/apps/{app}/watch", get(ui::watch))
        .route("/hangar/apps/{app}/usage", get(usage::usage))
        .route("/hangar/apps/{app}/proxy", get(proxy_view::proxy))
        .route(
            "/hangar/apps/{app}/tokens",
            get(tokens::list).post(tokens::create),
        )
        .route("/hangar/apps/{app}/tokens/{id}", delete(tokens::revoke))
        .route("/hangar/tokens", get(tokens::list_all))
        .route("/hangar/tokens/{id}", delete(tokens::revoke_any))
        .route("/hangar/apps/{app}/machines/{id}/exec/tty", get(tty::tty))
        .route("/hangar/hosts", get(hosts::list))
        .route("/hangar/hosts/{id}/drain", post(hosts::drain))
        .route("/hangar/hosts/{id}/undrain", post(hosts::undrain))
        .route("/hangar/images", get(images::list))
        .route("/hangar/images/prune", post(images::prune))
        .route(
            "/hangar/images/import",
            post(images::import).layer(DefaultBodyLimit::disable()),
        );
    let registry = registry::router(state.clone());
    let dashboard = ui::router(state.clone());
    Router::new()
        .route("/openapi.json", get(openapi_json))
        .route("/metrics", get(metrics::scrape))
        .nest("/v1", v1)
        .layer(DefaultBodyLimit::max(extract::BODY_LIMIT))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            cluster::route,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state)
        .merge(registry)
        .merge(dashboard)
        .layer(middleware::from_fn(request_id))
}

async fn openapi_json() -> impl IntoResponse {
    (
        [(http::header::CONTENT_TYPE, "application/json")],
        openapi::document(),
    )
}

async fn not_found() -> ApiError {
    ApiError::NotFound("not found".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

async fn authenticate(State(s): State<Shared>, mut req: Request, next: Next) -> Response {
    // A bearer token, or else the dashboard's session cookie.
    let cookie = match req.headers().get(http::header::AUTHORIZATION) {
        Some(_) => None,
        None => ui::session_token(req.headers())
            .and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok()),
    };
    if cookie.is_some() {
        if let Err(e) = ui::cookie_may(req.method(), req.uri().path(), req.headers()) {
            return e.into_response();
        }
    }
    let header = cookie
        .as_ref()
        .or_else(|| req.headers().get(http::header::AUTHORIZATION));
    let principal = match s.auth.principal(header, &s.agent) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    if let Principal::App { app, .. } = &principal {
        if !app_token_may(app, req.uri().path()) {
            return ApiError::Forbidden(format!("this token may act on app {app} only"))
                .into_response();
        }
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

/// What an app-scoped token may reach: its app and what lies below it (also
/// under Hangar's extensions), and the read-only platform endpoints.
fn app_token_may(app: &str, path: &str) -> bool {
    let own = format!("/v1/apps/{app}");
    path == own
        || path.starts_with(&format!("{own}/"))
        || path.starts_with(&format!("/v1/hangar/apps/{app}/"))
        || path == "/v1/tokens/current"
        || path == "/v1/platform/regions"
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
    fn app_tokens_reach_their_app_only() {
        assert!(app_token_may("web", "/v1/apps/web"));
        assert!(app_token_may("web", "/v1/apps/web/machines/x/start"));
        assert!(!app_token_may("web", "/v1/apps/webby/machines"));
        assert!(app_token_may("web", "/v1/hangar/apps/web/logs"));
        assert!(!app_token_may("web", "/v1/hangar/apps/webby/logs"));
        assert!(!app_token_may("web", "/v1/hangar/images"));
        assert!(!app_token_may("web", "/v1/apps"));
        assert!(!app_token_may("web", "/v1/orgs/personal/machines"));
        assert!(app_token_may("web", "/v1/tokens/current"));
    }

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
