//! Public addresses of apps (`/v1/apps/{app}/ip_assignments`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use hangar_api_types::{AssignIpRequest, IpAssignment, ListIpAssignmentsResponse};

use crate::Shared;
use crate::error::ApiResult;
use crate::extract::Body;
// Types named only in the OpenAPI annotations below.
#[allow(unused_imports)]
use hangar_api_types::*;

fn view(a: hangar_agent::ips::IpAssignment) -> IpAssignment {
    IpAssignment {
        ip: a.ip,
        region: a.region,
        service_name: a.service_name,
        shared: a.shared,
        created_at: a.created_at,
    }
}

/// `GET /v1/apps/{app}/ip_assignments`.
#[utoipa::path(get, path = "/v1/apps/{app_name}/ip_assignments", operation_id = "App_IPAssignments_list", tag = "Apps", params(("app_name" = String, Path, description = "App name")), responses((status = 200, body = ListIpAssignmentsResponse), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse)))]
pub async fn list(
    State(s): State<Shared>,
    Path(app): Path<String>,
) -> ApiResult<Json<ListIpAssignmentsResponse>> {
    Ok(Json(ListIpAssignmentsResponse {
        ips: s.agent.list_ips(&app)?.into_iter().map(view).collect(),
    }))
}

/// `POST /v1/apps/{app}/ip_assignments`: `v4` takes a dedicated address
/// from the installation's pool; `shared_v4` is the proxy's shared one.
#[utoipa::path(post, path = "/v1/apps/{app_name}/ip_assignments", operation_id = "App_IPAssignments_create", tag = "Apps", params(("app_name" = String, Path, description = "App name")), request_body = AssignIpRequest, responses((status = 200, body = IpAssignment), (status = 400, description = "Bad request", body = ErrorResponse), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse), (status = 409, description = "Already assigned", body = ErrorResponse), (status = 422, description = "No such address to give", body = ErrorResponse)))]
pub async fn create(
    State(s): State<Shared>,
    Path(app): Path<String>,
    Body(req): Body<AssignIpRequest>,
) -> ApiResult<Json<IpAssignment>> {
    let a = s.agent.assign_ip(
        &app,
        req.kind.as_deref().unwrap_or("v4"),
        req.region.as_deref(),
        req.service_name.as_deref(),
    )?;
    Ok(Json(view(a)))
}

/// `DELETE /v1/apps/{app}/ip_assignments/{ip}`.
#[utoipa::path(delete, path = "/v1/apps/{app_name}/ip_assignments/{ip}", operation_id = "App_IPAssignments_delete", tag = "Apps", params(("app_name" = String, Path, description = "App name"), ("ip" = String, Path, description = "IP address")), responses((status = 204, description = "Released"), (status = 400, description = "Bad address", body = ErrorResponse), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse)))]
pub async fn delete(
    State(s): State<Shared>,
    Path((app, ip)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    s.agent.release_ip(&app, &ip)?;
    Ok(StatusCode::NO_CONTENT)
}
