//! `GET /v1/hangar/apps/{app}/proxy`: the proxy's view of an app, for the
//! dashboard: which machines take traffic now and why the others do not,
//! the load on each, and what happened lately (starts, the proxy's
//! autostarts and autostops).

use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};

use crate::ApiState;
use crate::Shared;
use crate::error::ApiResult;

/// What the API needs of the proxy (hangard's proxy implements it).
pub trait ProxyView: Send + Sync + 'static {
    /// The app's machines on this host, as the proxy sees them.
    fn machines(&self, app: &str) -> Vec<ProxyMachine>;
}

/// One machine, as the proxy sees it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProxyMachine {
    /// The machine.
    pub id: String,
    /// The host that runs it (in a cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `started`, `stopped`, `suspended` or `other`.
    pub state: String,
    /// New requests and connections may go to it now.
    pub in_rotation: bool,
    /// Why not, when not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why_not: Option<String>,
    /// Requests in flight and raw connections open on it.
    pub in_flight: u32,
    /// Client connections bound to it.
    pub connections: u32,
    /// Seconds since its last request ended (while the proxy knows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_secs: Option<f64>,
    /// Its services, one line each (`80/http → 8080 (autostop stop, autostart)`).
    pub services: Vec<String>,
}

/// Something that happened to one of the app's machines.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Activity {
    /// When (Unix seconds).
    pub at: f64,
    /// The machine.
    pub machine: String,
    /// The host it happened on (in a cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `start` (from starting to started), `autostart` (the proxy started
    /// it for a request), `autostop` or `autosuspend` (the proxy found it
    /// idle).
    pub action: String,
    /// How long it took, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The proxy's view of an app.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AppProxy {
    /// Whether this host runs a proxy (`hangard --proxy-http off
    /// --proxy-https off` runs none).
    pub proxy: bool,
    /// The app's machines (every host's, in a cluster).
    pub machines: Vec<ProxyMachine>,
    /// The last hour's starts, autostarts and autostops, oldest first (at
    /// most 100 per host).
    pub activity: Vec<Activity>,
}

/// How far back [`AppProxy::activity`] and the usage's start plot reach.
pub const ACTIVITY_SECS: f64 = 3600.0;

/// This host's recent activities of `app`.
pub fn activity(s: &ApiState, app: &str, since: f64, limit: usize) -> Vec<Activity> {
    let host = host_of(s);
    hangar_metrics::recent(app, since, limit)
        .into_iter()
        .map(|a| Activity {
            at: a.at,
            machine: a.machine,
            host: host.clone(),
            action: a.action.to_owned(),
            seconds: a.seconds,
            error: a.error,
        })
        .collect()
}

/// This host's id, in a cluster.
pub fn host_of(s: &ApiState) -> Option<String> {
    s.cluster.as_ref().map(|c| c.cluster.host_id().to_owned())
}

/// `GET /v1/hangar/apps/{app}/proxy`.
#[utoipa::path(get, path = "/v1/hangar/apps/{app_name}/proxy", operation_id = "Apps_proxy", tag = "Hangar extensions", params(("app_name" = String, Path, description = "App name")), responses((status = 200, description = "The proxy's view of the app: its machines (in rotation or why not, load, idle time, services) and the last hour's starts, autostarts and autostops", body = AppProxy), (status = 401, description = "No or bad token", body = hangar_api_types::ErrorResponse), (status = 404, description = "Not found", body = hangar_api_types::ErrorResponse)))]
pub async fn proxy(State(s): State<Shared>, Path(app): Path<String>) -> ApiResult<Json<AppProxy>> {
    s.agent.get_app(&app)?;
    let host = host_of(&s);
    let machines = s
        .proxy
        .as_ref()
        .map(|p| p.machines(&app))
        .unwrap_or_default()
        .into_iter()
        .map(|m| ProxyMachine {
            host: host.clone(),
            ..m
        })
        .collect();
    Ok(Json(AppProxy {
        proxy: s.proxy.is_some(),
        machines,
        activity: activity(&s, &app, hangar_metrics::unix_now() - ACTIVITY_SECS, 100),
    }))
}
