//! App tokens: Fly's `POST /v1/apps/{app}/deploy_token`, and Hangar's
//! listing, minting and revoking under `/v1/hangar/`. A token minted with an
//! app token is of that app and never outlives the token that minted it;
//! revoking a token revokes what it minted.

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use hangar_api_types::{
    AppToken, CreateAppDeployTokenRequest, CreateAppResponse, CreateAppTokenRequest,
    CreatedAppToken, OkResponse,
};

// Types named only in the OpenAPI annotations below.
use crate::Shared;
use crate::error::{ApiError, ApiResult};
use crate::extract::Body;
use crate::{ApiState, Principal};
#[allow(unused_imports)]
use hangar_api_types::*;

fn expiry(e: Option<&str>) -> ApiResult<Option<std::time::Duration>> {
    match e.filter(|e| !e.is_empty()) {
        None => Ok(None),
        Some(e) => Ok(Some(
            hangar_core::GoDuration::parse(e)
                .map_err(|err| {
                    ApiError::BadRequest(format!("invalid_argument: invalid expiry: {err}"))
                })?
                .get(),
        )),
    }
}

/// The app token behind the request, if it is one.
fn minter(s: &ApiState, who: &Principal) -> ApiResult<Option<hangar_agent::TokenRow>> {
    match who {
        Principal::Admin => Ok(None),
        Principal::App { token_id, app, .. } => Ok(s
            .agent
            .list_tokens(Some(app))?
            .into_iter()
            .find(|t| t.id == *token_id)),
    }
}

fn view(t: hangar_agent::TokenRow) -> AppToken {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    AppToken {
        id: t.id,
        app: t.app,
        name: t.name,
        created_at: t.created_at,
        expired: t.expires_at.is_some_and(|e| e <= now),
        expires_at: t.expires_at.map(|e| {
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(e.max(0) as u64),
            )
            .to_string()
        }),
        minted_by: t.minted_by,
    }
}

/// `POST /v1/apps/{app}/deploy_token` with an optional `expiry` (a Go
/// duration): a token that can act on this app only.
#[utoipa::path(post, path = "/v1/apps/{app_name}/deploy_token", operation_id = "App_create_deploy_token", tag = "Tokens", params(("app_name" = String, Path, description = "App name")), request_body = CreateAppDeployTokenRequest, responses((status = 200, body = CreateAppResponse), (status = 400, description = "Bad request", body = ErrorResponse), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 403, description = "Another app's token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse)))]
pub async fn deploy_token(
    State(s): State<Shared>,
    Path(app): Path<String>,
    Extension(who): Extension<Principal>,
    Body(req): Body<CreateAppDeployTokenRequest>,
) -> ApiResult<Json<CreateAppResponse>> {
    let expiry = expiry(req.expiry.as_deref())?;
    let minter = minter(&s, &who)?;
    let (_, token) = s
        .agent
        .create_app_token(&app, expiry, "deploy", minter.as_ref())?;
    Ok(Json(CreateAppResponse { token }))
}

/// `GET /v1/hangar/apps/{app}/tokens`: the app's tokens (never the tokens
/// themselves).
#[utoipa::path(get, path = "/v1/hangar/apps/{app_name}/tokens", operation_id = "Tokens_list", tag = "Hangar extensions", params(("app_name" = String, Path, description = "App name")), responses((status = 200, body = Vec<AppToken>), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 403, description = "Another app's token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse)))]
pub async fn list(
    State(s): State<Shared>,
    Path(app): Path<String>,
) -> ApiResult<Json<Vec<AppToken>>> {
    Ok(Json(
        s.agent
            .list_tokens(Some(&app))?
            .into_iter()
            .map(view)
            .collect(),
    ))
}

/// `GET /v1/hangar/tokens`: every app's tokens (admin token only).
#[utoipa::path(get, path = "/v1/hangar/tokens", operation_id = "Tokens_list_all", tag = "Hangar extensions", responses((status = 200, body = Vec<AppToken>), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 403, description = "An app's token", body = ErrorResponse)))]
pub async fn list_all(State(s): State<Shared>) -> ApiResult<Json<Vec<AppToken>>> {
    Ok(Json(
        s.agent.list_tokens(None)?.into_iter().map(view).collect(),
    ))
}

/// `POST /v1/hangar/apps/{app}/tokens` with `name` and `expiry`: a new app
/// token, shown once.
#[utoipa::path(post, path = "/v1/hangar/apps/{app_name}/tokens", operation_id = "Tokens_create", tag = "Hangar extensions", params(("app_name" = String, Path, description = "App name")), request_body = CreateAppTokenRequest, responses((status = 200, body = CreatedAppToken), (status = 400, description = "Bad request", body = ErrorResponse), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 403, description = "Another app's token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse)))]
pub async fn create(
    State(s): State<Shared>,
    Path(app): Path<String>,
    Extension(who): Extension<Principal>,
    Body(req): Body<CreateAppTokenRequest>,
) -> ApiResult<Json<CreatedAppToken>> {
    let expiry = expiry(req.expiry.as_deref())?;
    let minter = minter(&s, &who)?;
    let (row, token) = s.agent.create_app_token(
        &app,
        expiry,
        req.name.as_deref().unwrap_or_default(),
        minter.as_ref(),
    )?;
    Ok(Json(CreatedAppToken {
        token,
        info: view(row),
    }))
}

/// `DELETE /v1/hangar/apps/{app}/tokens/{id}`: revokes one of the app's
/// tokens, and every token it minted.
#[utoipa::path(delete, path = "/v1/hangar/apps/{app_name}/tokens/{token_id}", operation_id = "Tokens_revoke", tag = "Hangar extensions", params(("app_name" = String, Path, description = "App name"), ("token_id" = String, Path, description = "Token id")), responses((status = 200, body = OkResponse), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 403, description = "Another app's token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse)))]
pub async fn revoke(
    State(s): State<Shared>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Json<OkResponse>> {
    s.agent.revoke_token(&id, Some(&app))?;
    Ok(Json(OkResponse { ok: true }))
}

/// `DELETE /v1/hangar/tokens/{id}`: revokes any app's token (admin token
/// only).
#[utoipa::path(delete, path = "/v1/hangar/tokens/{token_id}", operation_id = "Tokens_revoke_any", tag = "Hangar extensions", params(("token_id" = String, Path, description = "Token id")), responses((status = 200, body = OkResponse), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 403, description = "An app's token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse)))]
pub async fn revoke_any(
    State(s): State<Shared>,
    Path(id): Path<String>,
) -> ApiResult<Json<OkResponse>> {
    s.agent.revoke_token(&id, None)?;
    Ok(Json(OkResponse { ok: true }))
}
