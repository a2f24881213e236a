//! `/v1/apps/{app}/machines`.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use hangar_agent::{NewMachine, WaitFor};
use hangar_api_types::{
    CreateMachineRequest, Machine, MachineEvent, OkResponse, StartResponse, StopRequest,
    WaitMachineResponse,
};
use hangar_core::MachineState;

use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Params};
use crate::{ApiState, views};

fn full_view(s: &ApiState, rec: hangar_agent::MachineRecord) -> ApiResult<Machine> {
    let events = s.agent.store().events(&rec.id, views::MACHINE_EVENTS)?;
    Ok(views::machine(rec, Some(events)))
}

/// `GET /v1/apps/{app}/machines` with `include_deleted`, `region`, `state`,
/// `summary` and `metadata.KEY=VALUE` filters.
pub async fn list(
    State(s): State<ApiState>,
    Path(app): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Vec<Machine>>> {
    let p = Params::parse(q.as_deref());
    let include_deleted = p.bool("include_deleted")?;
    let summary = p.bool("summary")?;
    let states = p.all("state");
    for st in &states {
        if MachineState::parse(st).is_none() && st != "suspended" {
            return Err(ApiError::BadRequest(format!(
                "invalid_argument: unknown state {st:?}"
            )));
        }
    }
    let region = p.get("region").filter(|r| !r.is_empty());
    let metadata: Vec<(&str, &str)> = p.prefixed("metadata.").collect();
    let mut out = Vec::new();
    for rec in s.agent.list_machines(&app, include_deleted)? {
        if region.is_some_and(|r| r != rec.region)
            || (!states.is_empty() && !states.iter().any(|st| st == rec.core.state.as_str()))
            || !metadata.iter().all(|(k, v)| {
                rec.config
                    .metadata
                    .as_ref()
                    .and_then(|m| m.get(*k))
                    .is_some_and(|x| x == v)
            })
        {
            continue;
        }
        out.push(if summary {
            views::machine(rec, None)
        } else {
            full_view(&s, rec)?
        });
    }
    Ok(Json(out))
}

/// `POST /v1/apps/{app}/machines`.
pub async fn create(
    State(s): State<ApiState>,
    Path(app): Path<String>,
    Body(req): Body<CreateMachineRequest>,
) -> ApiResult<Json<Machine>> {
    let config = req
        .config
        .ok_or_else(|| ApiError::BadRequest("config is required (with config.image)".into()))?;
    let rec = s
        .agent
        .create_machine(
            &app,
            NewMachine {
                config,
                name: req.name,
                region: req.region,
                skip_launch: req.skip_launch.unwrap_or(false),
            },
        )
        .await?;
    Ok(Json(full_view(&s, rec)?))
}

/// `GET /v1/apps/{app}/machines/{id}`.
pub async fn get(
    State(s): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Json<Machine>> {
    let rec = s.agent.get_machine(&app, &id)?;
    Ok(Json(full_view(&s, rec)?))
}

/// `POST /v1/apps/{app}/machines/{id}/start`.
pub async fn start(
    State(s): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Json<StartResponse>> {
    let prev = s.agent.start_machine(&app, &id).await?;
    Ok(Json(StartResponse {
        previous_state: prev.as_str().into(),
        migrated: false,
        new_host: String::new(),
    }))
}

/// `POST /v1/apps/{app}/machines/{id}/stop` with optional `{signal, timeout}`.
pub async fn stop(
    State(s): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
    Body(req): Body<StopRequest>,
) -> ApiResult<Json<OkResponse>> {
    let signal = req
        .signal
        .as_ref()
        .filter(|v| !v.is_null() && v.as_str() != Some(""))
        .map(hangar_agent::spec::parse_signal)
        .transpose()?;
    let timeout = req
        .timeout
        .as_ref()
        .filter(|v| !v.is_null() && v.as_str() != Some(""))
        .map(hangar_agent::spec::parse_timeout)
        .transpose()?;
    s.agent.stop_machine(&app, &id, signal, timeout).await?;
    Ok(Json(OkResponse { ok: true }))
}

/// `DELETE /v1/apps/{app}/machines/{id}?force=` (fly-go sends `kill=`).
pub async fn destroy(
    State(s): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<OkResponse>> {
    let p = Params::parse(q.as_deref());
    let force = p.bool("force")? || p.bool("kill")?;
    s.agent.destroy_machine(&app, &id, force).await?;
    Ok(Json(OkResponse { ok: true }))
}

/// `GET /v1/apps/{app}/machines/{id}/wait?state=&timeout=&version=`.
pub async fn wait(
    State(s): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<WaitMachineResponse>> {
    let p = Params::parse(q.as_deref());
    let names = p.all("state");
    let states = if names.is_empty() {
        vec![WaitFor::State(MachineState::Started)]
    } else {
        names
            .iter()
            .map(|n| {
                WaitFor::parse(n).ok_or_else(|| {
                    ApiError::BadRequest(format!("invalid_argument: unknown state {n:?}"))
                })
            })
            .collect::<ApiResult<Vec<_>>>()?
    };
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
    for key in ["version", "instance_id"] {
        if let Some(v) = p.get(key).filter(|v| !v.is_empty()) {
            v.parse::<hangar_core::InstanceId>().map_err(|_| {
                ApiError::BadRequest(format!(
                    "invalid_argument: {key} must be a 26-character version id"
                ))
            })?;
        }
    }
    let st = s
        .agent
        .wait_machine(&app, &id, &states, Duration::from_secs(timeout))
        .await?;
    Ok(Json(WaitMachineResponse {
        ok: true,
        state: st.state.as_str().into(),
        version: st.instance_id,
        event_id: st.last_event,
    }))
}

/// `GET /v1/apps/{app}/machines/{id}/events?limit=`, newest first.
pub async fn events(
    State(s): State<ApiState>,
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
