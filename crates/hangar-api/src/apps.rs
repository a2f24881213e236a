//! `/v1/apps`.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use hangar_api_types::{App, CreateAppRequest, ListAppsResponse};

// Types named only in the OpenAPI annotations below.
use crate::Shared;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Params};
use crate::{ApiState, views};
#[allow(unused_imports)]
use hangar_api_types::*;

fn view(s: &ApiState, rec: &hangar_agent::AppRecord) -> ApiResult<App> {
    Ok(views::app(
        rec,
        s.agent.app_status(&rec.name)?,
        s.agent.volume_count(&rec.name)?,
    ))
}

/// `GET /v1/apps?org_slug=`.
#[utoipa::path(get, path = "/v1/apps", operation_id = "Apps_list", tag = "Apps", params(("org_slug" = Option<String>, Query, description = "Organization (default personal)")), responses((status = 200, body = ListAppsResponse), (status = 401, description = "No or bad token", body = ErrorResponse)))]
pub async fn list(
    State(s): State<Shared>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<ListAppsResponse>> {
    let p = Params::parse(q.as_deref());
    let org = p
        .get("org_slug")
        .filter(|o| !o.is_empty())
        .unwrap_or(hangar_agent::DEFAULT_ORG);
    let apps = s
        .agent
        .list_apps(org)?
        .iter()
        .map(|a| view(&s, a))
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(ListAppsResponse {
        total_apps: apps.len() as i64,
        apps,
    }))
}

/// `POST /v1/apps` (accepts `name` or `app_name`).
#[utoipa::path(post, path = "/v1/apps", operation_id = "Apps_create", tag = "Apps", request_body = CreateAppRequest, responses((status = 201, body = App), (status = 400, description = "Bad request", body = ErrorResponse), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse), (status = 409, description = "Conflict (leased, busy, taken)", body = ErrorResponse)))]
pub async fn create(
    State(s): State<Shared>,
    Body(req): Body<CreateAppRequest>,
) -> ApiResult<(StatusCode, Json<App>)> {
    let name = req
        .name
        .as_deref()
        .or(req.app_name.as_deref())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::BadRequest("app name is required (`name` or `app_name`)".into())
        })?;
    let rec = s
        .agent
        .create_app(name, req.org_slug.as_deref(), req.network.as_deref())?;
    Ok((StatusCode::CREATED, Json(view(&s, &rec)?)))
}

/// `GET /v1/apps/{app}`.
#[utoipa::path(get, path = "/v1/apps/{app_name}", operation_id = "Apps_show", tag = "Apps", params(("app_name" = String, Path, description = "App name")), responses((status = 200, body = App), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse)))]
pub async fn get(State(s): State<Shared>, Path(app): Path<String>) -> ApiResult<Json<App>> {
    let rec = s.agent.get_app(&app)?;
    Ok(Json(view(&s, &rec)?))
}

/// `DELETE /v1/apps/{app}?force=`.
#[utoipa::path(delete, path = "/v1/apps/{app_name}", operation_id = "Apps_delete", tag = "Apps", params(("app_name" = String, Path, description = "App name"), ("force" = Option<bool>, Query, description = "Destroy its machines too")), responses((status = 202, description = "Deleted"), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse), (status = 412, description = "Precondition failed", body = ErrorResponse)))]
pub async fn delete(
    State(s): State<Shared>,
    Path(app): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<StatusCode> {
    let force = Params::parse(q.as_deref()).bool("force")?;
    s.agent.delete_app(&app, force).await?;
    Ok(StatusCode::ACCEPTED)
}
