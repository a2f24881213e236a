//! App secrets (`/v1/apps/{app}/secrets`): names, digests and a version,
//! values only to an admin who asks with `show_secrets`.

use std::collections::BTreeMap;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use hangar_agent::secrets::SecretInfo;
use hangar_api_types::{
    AppSecret, AppSecrets, AppSecretsUpdateRequest, AppSecretsUpdateResp, DeleteAppSecretResponse,
    SetAppSecretRequest, SetAppSecretResponse,
};

use crate::Shared;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Params};
use crate::{ApiState, Principal};
// Types named only in the OpenAPI annotations below.
#[allow(unused_imports)]
use hangar_api_types::*;

fn view(i: SecretInfo, value: Option<String>) -> AppSecret {
    AppSecret {
        name: i.name,
        digest: i.digest,
        created_at: i.created_at,
        updated_at: i.updated_at,
        value,
    }
}

/// `min_version` (spec) or `version` (fly-go): 412 until reached.
fn min_version(s: &ApiState, app: &str, p: &Params) -> ApiResult<()> {
    let Some(v) = p
        .get("min_version")
        .or_else(|| p.get("version"))
        .filter(|v| !v.is_empty())
    else {
        return Ok(());
    };
    let v: i64 = v.parse().map_err(|_| {
        ApiError::BadRequest(format!("invalid_argument: invalid min_version {v:?}"))
    })?;
    Ok(s.agent.check_secrets_version(app, Some(v))?)
}

/// Values for `show_secrets`, which only the admin token may see.
fn shown(
    s: &ApiState,
    app: &str,
    who: &Principal,
    p: &Params,
) -> ApiResult<Option<BTreeMap<String, String>>> {
    if !p.bool("show_secrets")? {
        return Ok(None);
    }
    if *who != Principal::Admin {
        return Err(ApiError::Forbidden(
            "show_secrets needs the admin token; app tokens see names and digests only".into(),
        ));
    }
    Ok(Some(s.agent.secret_values(app)?))
}

/// `GET /v1/apps/{app}/secrets`.
#[utoipa::path(get, path = "/v1/apps/{app_name}/secrets", operation_id = "Secrets_list", tag = "Secrets", params(("app_name" = String, Path, description = "App name"), ("min_version" = Option<String>, Query, description = "412 until the app's secrets reach this version (`version` works too)"), ("show_secrets" = Option<bool>, Query, description = "Include values (admin token only)")), responses((status = 200, body = AppSecrets), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 403, description = "show_secrets with an app token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse), (status = 412, description = "Version not reached", body = ErrorResponse)))]
pub async fn list(
    State(s): State<Shared>,
    Path(app): Path<String>,
    Extension(who): Extension<Principal>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<AppSecrets>> {
    let p = Params::parse(q.as_deref());
    let (list, _) = s.agent.list_secrets(&app)?;
    min_version(&s, &app, &p)?;
    let mut values = shown(&s, &app, &who, &p)?;
    Ok(Json(AppSecrets {
        secrets: list
            .into_iter()
            .map(|i| {
                let v = values.as_mut().and_then(|m| m.remove(&i.name));
                view(i, v)
            })
            .collect(),
    }))
}

/// `POST /v1/apps/{app}/secrets` with `{"values": {"NAME": "value" | null}}`.
#[utoipa::path(post, path = "/v1/apps/{app_name}/secrets", operation_id = "Secrets_update", tag = "Secrets", params(("app_name" = String, Path, description = "App name")), request_body = AppSecretsUpdateRequest, responses((status = 200, body = AppSecretsUpdateResp), (status = 400, description = "Bad request", body = ErrorResponse), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse)))]
pub async fn update(
    State(s): State<Shared>,
    Path(app): Path<String>,
    Body(req): Body<AppSecretsUpdateRequest>,
) -> ApiResult<Json<AppSecretsUpdateResp>> {
    let version = s.agent.update_secrets(&app, req.values)?;
    let (list, _) = s.agent.list_secrets(&app)?;
    Ok(Json(AppSecretsUpdateResp {
        secrets: list.into_iter().map(|i| view(i, None)).collect(),
        version,
        version_deprecated: version,
    }))
}

/// `GET /v1/apps/{app}/secrets/{name}`.
#[utoipa::path(get, path = "/v1/apps/{app_name}/secrets/{secret_name}", operation_id = "Secret_get", tag = "Secrets", params(("app_name" = String, Path, description = "App name"), ("secret_name" = String, Path, description = "Secret name"), ("min_version" = Option<String>, Query, description = "412 until the app's secrets reach this version"), ("show_secrets" = Option<bool>, Query, description = "Include the value (admin token only)")), responses((status = 200, body = AppSecret), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 403, description = "show_secrets with an app token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse), (status = 412, description = "Version not reached", body = ErrorResponse)))]
pub async fn get(
    State(s): State<Shared>,
    Path((app, name)): Path<(String, String)>,
    Extension(who): Extension<Principal>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<AppSecret>> {
    let p = Params::parse(q.as_deref());
    let info = s.agent.get_secret(&app, &name)?;
    min_version(&s, &app, &p)?;
    let value = shown(&s, &app, &who, &p)?.and_then(|mut m| m.remove(&name));
    Ok(Json(view(info, value)))
}

/// `POST /v1/apps/{app}/secrets/{name}` with `{"value": "..."}`.
#[utoipa::path(post, path = "/v1/apps/{app_name}/secrets/{secret_name}", operation_id = "Secret_create", tag = "Secrets", params(("app_name" = String, Path, description = "App name"), ("secret_name" = String, Path, description = "Secret name")), request_body = SetAppSecretRequest, responses((status = 201, body = SetAppSecretResponse), (status = 400, description = "Bad request", body = ErrorResponse), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse)))]
pub async fn set(
    State(s): State<Shared>,
    Path((app, name)): Path<(String, String)>,
    Body(req): Body<SetAppSecretRequest>,
) -> ApiResult<(StatusCode, Json<SetAppSecretResponse>)> {
    let value = req
        .value
        .ok_or_else(|| ApiError::BadRequest("invalid_argument: value is required".into()))?;
    let version = s
        .agent
        .update_secrets(&app, BTreeMap::from([(name.clone(), Some(value))]))?;
    let i = s.agent.get_secret(&app, &name)?;
    Ok((
        StatusCode::CREATED,
        Json(SetAppSecretResponse {
            name: i.name,
            digest: i.digest,
            created_at: i.created_at,
            updated_at: i.updated_at,
            version,
            version_deprecated: version,
        }),
    ))
}

/// `DELETE /v1/apps/{app}/secrets/{name}`.
#[utoipa::path(delete, path = "/v1/apps/{app_name}/secrets/{secret_name}", operation_id = "Secret_delete", tag = "Secrets", params(("app_name" = String, Path, description = "App name"), ("secret_name" = String, Path, description = "Secret name")), responses((status = 200, body = DeleteAppSecretResponse), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse)))]
pub async fn delete(
    State(s): State<Shared>,
    Path((app, name)): Path<(String, String)>,
) -> ApiResult<Json<DeleteAppSecretResponse>> {
    let version = s.agent.delete_secret(&app, &name)?;
    Ok(Json(DeleteAppSecretResponse {
        version,
        version_deprecated: version,
    }))
}
