//! Releases (Hangar's extension beside Fly's API): `/v1/apps/{app}/releases`.
//! A deploy is submitted here and run by hangard's executor; its progress
//! streams as NDJSON.

use std::time::Duration;

use axum::body::Body as HttpBody;
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use hangar_agent::store::{ReleaseEvent as EventRow, ReleaseRow};
use hangar_api_types::{
    CreateReleaseRequest, ListReleasesResponse, Release, ReleaseEvent, ReleasePlan, ReleaseStep,
};
use hangar_core::release::{ReleaseReason, ReleaseStatus};
use hangar_deploy::{NewRelease, Options, Step};
use serde_json::Value;

use crate::Principal;
use crate::Shared;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Params};
// Types named only in the OpenAPI annotations below.
#[allow(unused_imports)]
use hangar_api_types::*;

fn rfc3339_ms(ms: i64) -> String {
    humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64),
    )
    .to_string()
}

fn step(s: Step) -> ReleaseStep {
    let v = serde_json::to_value(&s).unwrap_or_default();
    let text = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
    ReleaseStep {
        action: text("action"),
        process_group: s.process_group,
        id: s.id,
        from_version: s.from_version,
        to_version: s.to_version,
        was_started: s.was_started,
        standby: s.standby,
        volume: s.volume,
        replaces: s.replaces,
        changes: s.changes,
        outcome: text("outcome"),
        error: s.error,
    }
}

/// A stored release as the API shows it.
pub fn view(r: ReleaseRow, stable: bool) -> Release {
    let steps: Vec<Step> = serde_json::from_value(r.machines).unwrap_or_default();
    Release {
        id: r.id,
        version: r.version,
        status: r.status.as_str().into(),
        stable,
        reason: r.reason.as_str().into(),
        description: r.description,
        strategy: r.strategy,
        image_ref: r.image_ref,
        image_digest: r.image_digest,
        secrets_version: r.secrets_version,
        user: r.user,
        created_at: rfc3339_ms(r.created_at),
        started_at: r.started_at.map(rfc3339_ms),
        finished_at: r.finished_at.map(rfc3339_ms),
        error: r.error,
        rollback_of: r.rollback_of,
        machines: steps.into_iter().map(step).collect(),
        definition: r.definition,
    }
}

/// Views of `list` (newest first), the newest complete one marked stable.
fn views(list: Vec<ReleaseRow>) -> Vec<Release> {
    let stable = list
        .iter()
        .find(|r| r.status == ReleaseStatus::Complete)
        .map(|r| r.id.clone());
    list.into_iter()
        .map(|r| {
            let is = stable.as_deref() == Some(r.id.as_str());
            view(r, is)
        })
        .collect()
}

/// A duration given as a Go duration string or a number of seconds.
fn seconds(v: &Option<Value>, key: &str) -> ApiResult<Option<f64>> {
    let bad = || {
        ApiError::BadRequest(format!(
            "invalid_argument: invalid {key}: use a duration such as \"5m\" or a number of seconds"
        ))
    };
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_f64().filter(|f| *f > 0.0).map(Some).ok_or_else(bad),
        Some(Value::String(s)) => hangar_core::GoDuration::parse(s)
            .map(|d| Some(d.get().as_secs_f64()))
            .map_err(|_| bad()),
        Some(_) => Err(bad()),
    }
}

/// The guest `scale vm` asks for, checked as a machine's would be.
fn scale_guest(vm: &hangar_api_types::ScaleVmRequest) -> ApiResult<Value> {
    let mut probe = serde_json::json!({"image": "scale"});
    if let Some(g) = &vm.guest {
        probe["guest"] = serde_json::to_value(g).unwrap_or_default();
    }
    if let Some(size) = &vm.size {
        probe["size"] = Value::String(size.clone());
    }
    if probe.get("guest").is_none() && probe.get("size").is_none() {
        return Err(ApiError::BadRequest(
            "invalid_argument: scale_vm needs a size or a guest".into(),
        ));
    }
    let parsed = hangar_core::spec::Parsed::new(probe)
        .map_err(|e| ApiError::BadRequest(format!("invalid_argument: {e}")))?;
    Ok(parsed.json["guest"].clone())
}

/// The request as the executor takes it.
fn new_release(app: &str, who: &Principal, b: CreateReleaseRequest) -> ApiResult<NewRelease> {
    let options = Options {
        strategy: b.strategy,
        max_unavailable: b.max_unavailable,
        wait_timeout_secs: seconds(&b.wait_timeout, "wait_timeout")?,
        release_command_timeout_secs: seconds(
            &b.release_command_timeout,
            "release_command_timeout",
        )?,
        skip_release_command: b.skip_release_command,
        update_only: b.update_only,
        ha: b.ha,
        process_groups: b.process_groups,
        only_machines: b.only_machines,
        exclude_machines: b.exclude_machines,
        allow_destroy: b.yes,
        no_rollback: b.no_rollback,
        restart_only: false,
        queue: b.queue,
        scale: None,
        guest: None,
    };
    let definition = match b.definition {
        Value::Null => Value::Object(Default::default()),
        Value::Object(o) => Value::Object(o),
        other => {
            return Err(ApiError::BadRequest(format!(
                "invalid_argument: definition must be an object (fly.toml as JSON), not {other}"
            )));
        }
    };
    Ok(NewRelease {
        app: app.to_owned(),
        definition,
        image: b.image,
        options,
        reason: ReleaseReason::Deploy,
        user: who.owner(),
        description: b.description.unwrap_or_default(),
        rollback_of: None,
    })
}

/// `GET /v1/apps/{app}/releases`.
#[utoipa::path(get, path = "/v1/apps/{app_name}/releases", operation_id = "Releases_list", tag = "Hangar extensions", params(("app_name" = String, Path, description = "App name"), ("limit" = Option<i64>, Query, description = "At most this many, newest first (default 25)")), responses((status = 200, body = ListReleasesResponse), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse)))]
pub async fn list(
    State(s): State<Shared>,
    Path(app): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<ListReleasesResponse>> {
    let p = Params::parse(q.as_deref());
    let limit = match p.get("limit").filter(|l| !l.is_empty()) {
        None => 25,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| {
                ApiError::BadRequest(format!("invalid_argument: invalid limit {l:?} (1-1000)"))
            })?,
    };
    let list = s.agent.list_releases(&app, limit)?;
    Ok(Json(ListReleasesResponse {
        releases: views(list),
    }))
}

/// `POST /v1/apps/{app}/releases`: a deploy, run by hangard.
#[utoipa::path(post, path = "/v1/apps/{app_name}/releases", operation_id = "Releases_create", tag = "Hangar extensions", params(("app_name" = String, Path, description = "App name"), ("dry_run" = Option<bool>, Query, description = "Only show the plan")), request_body = CreateReleaseRequest, responses((status = 201, description = "Made; hangard runs it", body = Release), (status = 200, description = "dry_run: the plan", body = ReleasePlan), (status = 400, description = "Bad definition or options", body = ErrorResponse), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse), (status = 409, description = "Another release of the app is unfinished", body = ErrorResponse), (status = 422, description = "Image cannot be used", body = ErrorResponse)))]
pub async fn create(
    State(s): State<Shared>,
    Path(app): Path<String>,
    Extension(who): Extension<Principal>,
    RawQuery(q): RawQuery,
    Body(b): Body<CreateReleaseRequest>,
) -> ApiResult<Response> {
    let p = Params::parse(q.as_deref());
    if let Some(key) = b.rollback_to.as_deref() {
        let rel = s.deploy.rollback(&app, key, &who.owner())?;
        return Ok((StatusCode::CREATED, Json(view(rel, false))).into_response());
    }
    if let Some(sc) = &b.scale_count {
        let group = sc.process_group.clone().unwrap_or_else(|| "app".into());
        let rel = s.deploy.scale_count(&app, &group, sc.count, &who.owner())?;
        return Ok((StatusCode::CREATED, Json(view(rel, false))).into_response());
    }
    if let Some(vm) = &b.scale_vm {
        let guest = scale_guest(vm)?;
        let rel = s
            .deploy
            .scale_vm(&app, guest, vm.process_groups.clone(), &who.owner())?;
        return Ok((StatusCode::CREATED, Json(view(rel, false))).into_response());
    }
    if let Some(reason) = b.restart.as_deref() {
        let reason = match ReleaseReason::parse(reason) {
            Some(r @ (ReleaseReason::Secrets | ReleaseReason::Restart)) => r,
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "invalid_argument: restart {reason:?}: must be secrets or restart"
                )));
            }
        };
        let rel = s.deploy.restart(&app, reason, &who.owner())?;
        return Ok((StatusCode::CREATED, Json(view(rel, false))).into_response());
    }
    let req = new_release(&app, &who, b)?;
    if p.bool("dry_run")? {
        let steps = s.deploy.preview(&req)?;
        let cfg = hangar_appconfig::from_definition(&req.definition).unwrap_or_default();
        let current = s.agent.list_releases(&app, 1)?;
        return Ok(Json(ReleasePlan {
            current: views(current).into_iter().next(),
            strategy: req.options.strategy(&cfg).as_str().into(),
            machines: steps.into_iter().map(step).collect(),
        })
        .into_response());
    }
    let rel = s.deploy.submit(req)?;
    Ok((StatusCode::CREATED, Json(view(rel, false))).into_response())
}

/// `GET /v1/apps/{app}/releases/{id}` (an id, `vN` or `N`).
#[utoipa::path(get, path = "/v1/apps/{app_name}/releases/{release}", operation_id = "Releases_show", tag = "Hangar extensions", params(("app_name" = String, Path, description = "App name"), ("release" = String, Path, description = "Release id, or version (`v3` or `3`)")), responses((status = 200, body = Release), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse)))]
pub async fn get(
    State(s): State<Shared>,
    Path((app, key)): Path<(String, String)>,
) -> ApiResult<Json<Release>> {
    let rel = s.agent.get_release(&app, &key)?;
    let stable = s
        .agent
        .list_releases(&app, 1000)?
        .into_iter()
        .find(|r| r.status == ReleaseStatus::Complete)
        .is_some_and(|r| r.id == rel.id);
    Ok(Json(view(rel, stable)))
}

/// `POST /v1/apps/{app}/releases/{id}/cancel`.
#[utoipa::path(post, path = "/v1/apps/{app_name}/releases/{release}/cancel", operation_id = "Releases_cancel", tag = "Hangar extensions", params(("app_name" = String, Path, description = "App name"), ("release" = String, Path, description = "Release id or version")), responses((status = 200, description = "Cancelling: it rolls back what it changed", body = Release), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse), (status = 412, description = "It has ended", body = ErrorResponse)))]
pub async fn cancel(
    State(s): State<Shared>,
    Path((app, key)): Path<(String, String)>,
) -> ApiResult<Json<Release>> {
    let rel = s.deploy.cancel(&app, &key)?;
    Ok(Json(view(rel, false)))
}

fn event(e: EventRow) -> ReleaseEvent {
    let text = |k: &str| e.body[k].as_str().unwrap_or_default().to_owned();
    ReleaseEvent {
        seq: e.seq,
        timestamp: rfc3339_ms(e.at),
        phase: text("phase"),
        status: text("status"),
        machine_id: e.body["machine_id"].as_str().map(str::to_owned),
        message: text("message"),
    }
}

fn line(e: EventRow) -> Vec<u8> {
    let mut v = serde_json::to_vec(&event(e)).unwrap_or_default();
    v.push(b'\n');
    v
}

/// `GET /v1/apps/{app}/releases/{id}/events?after=N&follow=true`.
#[utoipa::path(get, path = "/v1/apps/{app_name}/releases/{release}/events", operation_id = "Releases_events", tag = "Hangar extensions", params(("app_name" = String, Path, description = "App name"), ("release" = String, Path, description = "Release id or version"), ("after" = Option<i64>, Query, description = "Only events after this seq"), ("follow" = Option<bool>, Query, description = "Keep streaming until the release ends")), responses((status = 200, description = "One ReleaseEvent per line", content_type = "application/x-ndjson", body = ReleaseEvent), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse)))]
pub async fn events(
    State(s): State<Shared>,
    Path((app, key)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let p = Params::parse(q.as_deref());
    let after = match p.get("after").filter(|a| !a.is_empty()) {
        None => 0,
        Some(a) => a
            .parse::<i64>()
            .map_err(|_| ApiError::BadRequest(format!("invalid_argument: invalid after {a:?}")))?,
    };
    let rel = s.agent.get_release(&app, &key)?;
    let ndjson = [(header::CONTENT_TYPE, "application/x-ndjson")];
    if !p.bool("follow")? {
        let body: Vec<u8> = s
            .agent
            .release_events(&rel.id, after)?
            .into_iter()
            .flat_map(line)
            .collect();
        return Ok((ndjson, body).into_response());
    }
    // Follow: send what is new whenever the executor makes progress, until
    // the release has ended and everything is sent.
    let rx = s.deploy.subscribe();
    let state = (s, app, rel.id, after, rx, false);
    let stream = futures::stream::unfold(state, |(s, app, id, after, mut rx, done)| async move {
        if done {
            return None;
        }
        loop {
            let finished = s
                .agent
                .get_release(&app, &id)
                .map(|r| r.status.is_finished())
                .unwrap_or(true);
            let new = s.agent.release_events(&id, after).unwrap_or_default();
            if let Some(last) = new.last().map(|e| e.seq) {
                let bytes: Vec<u8> = new.into_iter().flat_map(line).collect();
                return Some((
                    Ok::<_, std::convert::Infallible>(bytes),
                    (s, app, id, last, rx, false),
                ));
            }
            if finished {
                return None;
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), rx.changed()).await;
        }
    });
    Ok((ndjson, HttpBody::from_stream(stream)).into_response())
}
