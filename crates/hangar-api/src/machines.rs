//! `/v1/apps/{app}/machines`.

use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use hangar_agent::{MachineFilter, NewMachine, WaitFor};
use hangar_api_types::{
    CreateMachineRequest, Machine, MachineEvent, OkResponse, StartResponse, StopRequest,
    WaitMachineResponse,
};
use hangar_core::MachineState;

// Types named only in the OpenAPI annotations below.
use crate::Shared;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Params, parse_config, stop_options};
use crate::machine_ops::nonce;
use crate::{ApiState, Principal, views};
#[allow(unused_imports)]
use hangar_api_types::*;

fn full_view(s: &ApiState, rec: hangar_agent::MachineRecord) -> ApiResult<Machine> {
    let events = s.agent.events_of(&rec, views::MACHINE_EVENTS)?;
    let checks = s.agent.checks(rec.id.as_str());
    Ok(views::with_checks(
        views::machine(rec, Some(events)),
        checks,
    ))
}

/// `GET /v1/apps/{app}/machines` with `include_deleted`, `region`, `state`,
/// `summary` and `metadata.KEY=VALUE` filters.
#[utoipa::path(get, path = "/v1/apps/{app_name}/machines", operation_id = "Machines_list", tag = "Machines", params(("app_name" = String, Path, description = "App name"), ("include_deleted" = Option<bool>, Query, description = "Include destroyed machines"), ("region" = Option<String>, Query, description = "Only this region"), ("state" = Option<String>, Query, description = "Comma-separated states"), ("summary" = Option<bool>, Query, description = "Omit config and events")), responses((status = 200, body = Vec<Machine>), (status = 400, description = "Bad request", body = ErrorResponse), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse)))]
pub async fn list(
    State(s): State<Shared>,
    Path(app): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let p = Params::parse(q.as_deref());
    let summary = p.bool("summary")?;
    let filter = MachineFilter {
        include_deleted: p.bool("include_deleted")?,
        region: p.get("region").filter(|r| !r.is_empty()).map(str::to_owned),
        states: p
            .all("state")
            .iter()
            .map(|st| {
                MachineState::parse(st).ok_or_else(|| {
                    ApiError::BadRequest(format!("invalid_argument: unknown state {st:?}"))
                })
            })
            .collect::<ApiResult<_>>()?,
        metadata: p
            .prefixed("metadata.")
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    };
    if summary {
        let out: Vec<Machine> = s
            .agent
            .find_machines(&app, &filter)?
            .into_iter()
            .map(|rec| views::machine(rec, None))
            .collect();
        return Ok(Json(out).into_response());
    }
    Ok(json_bytes(s.renderings.list(&s.agent, &app, &filter)?))
}

/// JSON already rendered, as `Json` would send it.
fn json_bytes(body: bytes::Bytes) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// `POST /v1/apps/{app}/machines`; with `lease_ttl` the machine comes back
/// leased, its `nonce` in the response.
#[utoipa::path(post, path = "/v1/apps/{app_name}/machines", operation_id = "Machines_create", tag = "Machines", params(("app_name" = String, Path, description = "App name")), request_body = CreateMachineRequest, responses((status = 200, body = Machine), (status = 400, description = "Bad request", body = ErrorResponse), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse), (status = 409, description = "Conflict (leased, busy, taken)", body = ErrorResponse), (status = 422, description = "Unprocessable", body = ErrorResponse)))]
pub async fn create(
    State(s): State<Shared>,
    Path(app): Path<String>,
    Extension(who): Extension<Principal>,
    Body(req): Body<CreateMachineRequest>,
) -> ApiResult<Json<Machine>> {
    let lease_ttl = req.lease_ttl.filter(|t| *t != 0);
    if lease_ttl.is_some_and(|t| t < 0) {
        return Err(ApiError::BadRequest(
            "invalid_argument: lease_ttl must be positive".into(),
        ));
    }
    let config = parse_config(req.config.as_ref())?;
    let rec = s
        .agent
        .create_machine(
            &app,
            NewMachine {
                config,
                name: req.name,
                region: req.region,
                skip_launch: req.skip_launch.unwrap_or(false),
                min_secrets_version: req.min_secrets_version,
            },
        )
        .await?;
    let nonce = match lease_ttl {
        Some(ttl) => Some(
            s.agent
                .acquire_lease(
                    &app,
                    rec.id.as_str(),
                    Duration::from_secs(ttl as u64),
                    "",
                    &who.owner(),
                    None,
                )?
                .0
                .nonce,
        ),
        None => None,
    };
    let mut m = full_view(&s, rec)?;
    m.nonce = nonce;
    Ok(Json(m))
}

/// `GET /v1/apps/{app}/machines/{id}`.
#[utoipa::path(get, path = "/v1/apps/{app_name}/machines/{machine_id}", operation_id = "Machines_show", tag = "Machines", params(("app_name" = String, Path, description = "App name"), ("machine_id" = String, Path, description = "Machine id")), responses((status = 200, body = Machine), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse)))]
pub async fn get(
    State(s): State<Shared>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    let row = s.agent.get_machine_row(&app, &id)?;
    Ok(json_bytes(s.renderings.machine(&s.agent, row)?))
}

/// `POST /v1/apps/{app}/machines/{id}/start`.
#[utoipa::path(post, path = "/v1/apps/{app_name}/machines/{machine_id}/start", operation_id = "Machines_start", tag = "Machines", params(("app_name" = String, Path, description = "App name"), ("machine_id" = String, Path, description = "Machine id"), ("fly-machine-lease-nonce" = Option<String>, Header, description = "Nonce of the machine's lease, needed while it is leased")), responses((status = 200, body = StartResponse), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse), (status = 409, description = "Conflict (leased, busy, taken)", body = ErrorResponse), (status = 412, description = "Precondition failed", body = ErrorResponse)))]
pub async fn start(
    State(s): State<Shared>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<StartResponse>> {
    let prev = s
        .agent
        .start_machine(&app, &id, nonce(&headers).as_deref())
        .await?;
    Ok(Json(StartResponse {
        previous_state: prev.as_str().into(),
        migrated: false,
        new_host: String::new(),
    }))
}

/// `POST /v1/apps/{app}/machines/{id}/stop` with optional `{signal, timeout}`.
#[utoipa::path(post, path = "/v1/apps/{app_name}/machines/{machine_id}/stop", operation_id = "Machines_stop", tag = "Machines", params(("app_name" = String, Path, description = "App name"), ("machine_id" = String, Path, description = "Machine id"), ("fly-machine-lease-nonce" = Option<String>, Header, description = "Nonce of the machine's lease, needed while it is leased")), request_body = StopRequest, responses((status = 200, body = OkResponse), (status = 400, description = "Bad request", body = ErrorResponse), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse), (status = 409, description = "Conflict (leased, busy, taken)", body = ErrorResponse), (status = 412, description = "Precondition failed", body = ErrorResponse)))]
pub async fn stop(
    State(s): State<Shared>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
    Body(req): Body<StopRequest>,
) -> ApiResult<Json<OkResponse>> {
    let (signal, timeout) = stop_options(&req.signal, &req.timeout, &Params::default())?;
    s.agent
        .stop_machine(&app, &id, signal, timeout, nonce(&headers).as_deref())
        .await?;
    Ok(Json(OkResponse { ok: true }))
}

/// `DELETE /v1/apps/{app}/machines/{id}?force=` (fly-go sends `kill=`).
#[utoipa::path(delete, path = "/v1/apps/{app_name}/machines/{machine_id}", operation_id = "Machines_delete", tag = "Machines", params(("app_name" = String, Path, description = "App name"), ("machine_id" = String, Path, description = "Machine id"), ("fly-machine-lease-nonce" = Option<String>, Header, description = "Nonce of the machine's lease, needed while it is leased"), ("force" = Option<bool>, Query, description = "Kill it if it runs (also `kill`)")), responses((status = 200, body = OkResponse), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse), (status = 409, description = "Conflict (leased, busy, taken)", body = ErrorResponse), (status = 412, description = "Precondition failed", body = ErrorResponse)))]
pub async fn destroy(
    State(s): State<Shared>,
    Path((app, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> ApiResult<Json<OkResponse>> {
    let p = Params::parse(q.as_deref());
    let force = p.bool("force")? || p.bool("kill")?;
    s.agent
        .destroy_machine(&app, &id, force, nonce(&headers).as_deref())
        .await?;
    Ok(Json(OkResponse { ok: true }))
}

/// `GET /v1/apps/{app}/machines/{id}/wait?state=&timeout=&version=`.
#[utoipa::path(get, path = "/v1/apps/{app_name}/machines/{machine_id}/wait", operation_id = "Machines_wait", tag = "Machines", params(("app_name" = String, Path, description = "App name"), ("machine_id" = String, Path, description = "Machine id"), ("state" = Option<String>, Query, description = "Desired states, repeated or comma-separated (default started)"), ("timeout" = Option<i64>, Query, description = "Seconds, 1 to 60 (default 60)"), ("version" = Option<String>, Query, description = "Version to wait on")), responses((status = 200, body = WaitMachineResponse), (status = 400, description = "Bad request", body = ErrorResponse), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse), (status = 408, description = "Deadline exceeded", body = ErrorResponse), (status = 412, description = "Precondition failed", body = ErrorResponse)))]
pub async fn wait(
    State(s): State<Shared>,
    Path((app, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<WaitMachineResponse>> {
    let p = Params::parse(q.as_deref());
    let states = p
        .all("state")
        .iter()
        .map(|n| {
            WaitFor::parse(n).ok_or_else(|| {
                ApiError::BadRequest(format!("invalid_argument: unknown state {n:?}"))
            })
        })
        .collect::<ApiResult<Vec<_>>>()?;
    let timeout = match p.get("timeout").filter(|t| !t.is_empty()) {
        None => 60,
        Some(t) => {
            let secs = t
                .parse::<u64>()
                .ok()
                .or_else(|| {
                    hangar_core::GoDuration::parse(t)
                        .ok()
                        .map(|d| d.get().as_secs())
                })
                .ok_or_else(|| {
                    ApiError::BadRequest(format!("invalid_argument: invalid timeout {t:?}"))
                })?;
            if !(1..=60).contains(&secs) {
                return Err(ApiError::BadRequest(
                    "invalid_argument: timeout must be between 1 and 60 seconds".into(),
                ));
            }
            secs
        }
    };
    let mut version = None;
    for key in ["version", "instance_id"] {
        if let Some(v) = p.get(key).filter(|v| !v.is_empty()) {
            v.parse::<hangar_core::InstanceId>().map_err(|_| {
                ApiError::BadRequest(format!(
                    "invalid_argument: {key} must be a 26-character version id"
                ))
            })?;
            version = Some(v.to_owned());
        }
    }
    let w = s
        .agent
        .wait(
            &app,
            &id,
            &states,
            version.as_deref(),
            Duration::from_secs(timeout),
        )
        .await?;
    Ok(Json(WaitMachineResponse {
        ok: true,
        state: w.state,
        version: w.version,
        event_id: w.event_id,
    }))
}

/// `GET /v1/apps/{app}/machines/{id}/events?limit=`, newest first.
#[utoipa::path(get, path = "/v1/apps/{app_name}/machines/{machine_id}/events", operation_id = "Machines_list_events", tag = "Machines", params(("app_name" = String, Path, description = "App name"), ("machine_id" = String, Path, description = "Machine id"), ("limit" = Option<i64>, Query, description = "Most events (default 20)")), responses((status = 200, body = Vec<MachineEvent>), (status = 400, description = "Bad request", body = ErrorResponse), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse)))]
pub async fn events(
    State(s): State<Shared>,
    Path((app, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Vec<MachineEvent>>> {
    let p = Params::parse(q.as_deref());
    let limit = match p.get("limit").filter(|l| !l.is_empty()) {
        None => 20,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| ApiError::BadRequest(format!("invalid_argument: invalid limit {l:?}")))?
            .min(200),
    };
    let events = s.agent.machine_events(&app, &id, limit)?;
    Ok(Json(events.into_iter().map(views::event).collect()))
}
