//! Volumes (`/v1/apps/{app}/volumes`) and their snapshots, in Fly's shapes.

use axum::Json;
use axum::extract::{Path, State};
use hangar_agent::volumes::{NewVolume, SnapshotRecord, VolumeRecord};
use hangar_api_types::{
    CreateVolumeRequest, ExtendVolumeRequest, ExtendVolumeResponse, UpdateVolumeRequest, Volume,
    VolumeSnapshot,
};

use crate::ApiState;
use crate::Shared;
use crate::error::{ApiError, ApiResult};
use crate::extract::Body;
// Types named only in the OpenAPI annotations below.
#[allow(unused_imports)]
use hangar_api_types::*;

fn view(s: &ApiState, v: VolumeRecord) -> Volume {
    // Usage is known while the volume is mounted on the host; otherwise the
    // size is all we can say without mounting it.
    let usage = s.agent.volume_usage(&v);
    let (blocks, block_size, free, avail) = match usage {
        Some(u) => (u.blocks, u.block_size, u.blocks_free, u.blocks_avail),
        None => ((v.size_gb as u64) << 18, 4096, 0, 0),
    };
    let total = blocks * block_size;
    Volume {
        id: v.id,
        name: v.name,
        state: v.state,
        size_gb: v.size_gb,
        region: v.region,
        zone: v.zone,
        encrypted: v.encrypted,
        kind: "local".into(),
        fstype: v.fstype,
        attached_alloc_id: v.attached_machine_id.clone(),
        attached_machine_id: v.attached_machine_id,
        created_at: v.created_at,
        blocks: blocks as i64,
        block_size: block_size as i64,
        blocks_free: free as i64,
        blocks_avail: avail as i64,
        bytes_total: total as i64,
        bytes_used: if usage.is_some() {
            (total - free * block_size) as i64
        } else {
            0
        },
        snapshot_retention: v.snapshot_retention,
        auto_backup_enabled: v.auto_backup_enabled,
        host_status: "ok".into(),
    }
}

fn snapshot_view(s: SnapshotRecord) -> VolumeSnapshot {
    VolumeSnapshot {
        id: s.id,
        size: s.size,
        volume_size: s.volume_size,
        digest: s.digest,
        created_at: s.created_at,
        status: s.status,
        retention_days: s.retention_days,
    }
}

/// `GET /v1/apps/{app}/volumes`.
#[utoipa::path(get, path = "/v1/apps/{app_name}/volumes", operation_id = "Volumes_list", tag = "Volumes", params(("app_name" = String, Path, description = "App name"), ("summary" = Option<bool>, Query, description = "Accepted (usage is always included)")), responses((status = 200, body = Vec<Volume>), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse)))]
pub async fn list(
    State(s): State<Shared>,
    Path(app): Path<String>,
) -> ApiResult<Json<Vec<Volume>>> {
    let list = s.agent.list_volumes(&app)?;
    Ok(Json(list.into_iter().map(|v| view(&s, v)).collect()))
}

/// `POST /v1/apps/{app}/volumes`.
#[utoipa::path(post, path = "/v1/apps/{app_name}/volumes", operation_id = "Volumes_create", tag = "Volumes", params(("app_name" = String, Path, description = "App name")), request_body = CreateVolumeRequest, responses((status = 200, body = Volume), (status = 400, description = "Bad request (also: no capacity)", body = ErrorResponse), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse), (status = 422, description = "Region", body = ErrorResponse)))]
pub async fn create(
    State(s): State<Shared>,
    Path(app): Path<String>,
    headers: http::HeaderMap,
    Body(req): Body<CreateVolumeRequest>,
) -> ApiResult<Json<Volume>> {
    let name = req
        .name
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::BadRequest("invalid_argument: name is required".into()))?;
    let mut source_volume_id = req.source_volume_id.filter(|x| !x.is_empty());
    // A fork of another host's volume: its contents come from there.
    let mut import = None;
    if let (Some(src), Some(c)) = (&source_volume_id, &s.cluster) {
        if s.agent.get_volume(&app, src).is_err() {
            if let Some(owner) = c.cluster.volume_owner(src) {
                import =
                    Some(crate::volume_copy::import(&s, c, &owner, &app, src, &headers).await?);
                source_volume_id = None;
            }
        }
    }
    let imported = import.as_ref().map(|i| i.path.clone());
    let v = s
        .agent
        .create_volume(
            &app,
            NewVolume {
                name,
                region: req.region,
                size_gb: req.size_gb,
                encrypted: req.encrypted,
                fstype: req.fstype,
                snapshot_id: req.snapshot_id.filter(|x| !x.is_empty()),
                source_volume_id,
                snapshot_retention: req.snapshot_retention,
                auto_backup_enabled: req.auto_backup_enabled,
                import,
            },
        )
        .await;
    if let Some(p) = imported {
        let _ = std::fs::remove_file(p);
    }
    Ok(Json(view(&s, v?)))
}

/// `GET /v1/apps/{app}/volumes/{id}`.
#[utoipa::path(get, path = "/v1/apps/{app_name}/volumes/{volume_id}", operation_id = "Volumes_get_by_id", tag = "Volumes", params(("app_name" = String, Path, description = "App name"), ("volume_id" = String, Path, description = "Volume id")), responses((status = 200, body = Volume), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse)))]
pub async fn get(
    State(s): State<Shared>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Json<Volume>> {
    let v = s.agent.get_volume(&app, &id)?;
    Ok(Json(view(&s, v)))
}

/// `PUT /v1/apps/{app}/volumes/{id}`.
#[utoipa::path(put, path = "/v1/apps/{app_name}/volumes/{volume_id}", operation_id = "Volumes_update", tag = "Volumes", params(("app_name" = String, Path, description = "App name"), ("volume_id" = String, Path, description = "Volume id")), request_body = UpdateVolumeRequest, responses((status = 200, body = Volume), (status = 400, description = "Bad request", body = ErrorResponse), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse)))]
pub async fn update(
    State(s): State<Shared>,
    Path((app, id)): Path<(String, String)>,
    Body(req): Body<UpdateVolumeRequest>,
) -> ApiResult<Json<Volume>> {
    let v = s
        .agent
        .update_volume(&app, &id, req.snapshot_retention, req.auto_backup_enabled)?;
    Ok(Json(view(&s, v)))
}

/// `DELETE /v1/apps/{app}/volumes/{id}`.
#[utoipa::path(delete, path = "/v1/apps/{app_name}/volumes/{volume_id}", operation_id = "Volume_delete", tag = "Volumes", params(("app_name" = String, Path, description = "App name"), ("volume_id" = String, Path, description = "Volume id")), responses((status = 200, body = Volume), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse), (status = 412, description = "Bound to a machine", body = ErrorResponse)))]
pub async fn delete(
    State(s): State<Shared>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Json<Volume>> {
    let v = s.agent.delete_volume(&app, &id).await?;
    Ok(Json(view(&s, v)))
}

/// `PUT /v1/apps/{app}/volumes/{id}/extend`.
#[utoipa::path(put, path = "/v1/apps/{app_name}/volumes/{volume_id}/extend", operation_id = "Volumes_extend", tag = "Volumes", params(("app_name" = String, Path, description = "App name"), ("volume_id" = String, Path, description = "Volume id")), request_body = ExtendVolumeRequest, responses((status = 200, body = ExtendVolumeResponse), (status = 400, description = "Bad request", body = ErrorResponse), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse)))]
pub async fn extend(
    State(s): State<Shared>,
    Path((app, id)): Path<(String, String)>,
    Body(req): Body<ExtendVolumeRequest>,
) -> ApiResult<Json<ExtendVolumeResponse>> {
    let size = req
        .size_gb
        .ok_or_else(|| ApiError::BadRequest("invalid_argument: size_gb is required".into()))?;
    let (v, needs_restart) = s.agent.extend_volume(&app, &id, size).await?;
    Ok(Json(ExtendVolumeResponse {
        volume: view(&s, v),
        needs_restart,
    }))
}

/// `GET /v1/apps/{app}/volumes/{id}/snapshots`.
#[utoipa::path(get, path = "/v1/apps/{app_name}/volumes/{volume_id}/snapshots", operation_id = "Volumes_list_snapshots", tag = "Volumes", params(("app_name" = String, Path, description = "App name"), ("volume_id" = String, Path, description = "Volume id")), responses((status = 200, body = Vec<VolumeSnapshot>), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse)))]
pub async fn snapshots(
    State(s): State<Shared>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Json<Vec<VolumeSnapshot>>> {
    let list = s.agent.list_snapshots(&app, &id)?;
    Ok(Json(list.into_iter().map(snapshot_view).collect()))
}

/// `POST /v1/apps/{app}/volumes/{id}/snapshots`: 200 without a body, as
/// Fly answers.
#[utoipa::path(post, path = "/v1/apps/{app_name}/volumes/{volume_id}/snapshots", operation_id = "createVolumeSnapshot", tag = "Volumes", params(("app_name" = String, Path, description = "App name"), ("volume_id" = String, Path, description = "Volume id")), responses((status = 200, description = "Taken"), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse)))]
pub async fn snapshot(
    State(s): State<Shared>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<()> {
    s.agent.create_snapshot(&app, &id).await?;
    Ok(())
}
