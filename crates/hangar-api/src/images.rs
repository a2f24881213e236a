//! Hangar's image extension (paths Fly's API does not use):
//! `GET /v1/hangar/images` and `POST /v1/hangar/images/import?name=` with an
//! OCI layout, OCI archive or Docker archive as a tar body.

use axum::Json;
use axum::body::Body as HttpBody;
use axum::extract::{RawQuery, State};
use futures::StreamExt;
use hangar_api_types::ImageSummary;
use tokio::io::AsyncWriteExt;

// Types named only in the OpenAPI annotations below.
use crate::ApiState;
use crate::Shared;
use crate::error::{ApiError, ApiResult};
use crate::extract::Params;
#[allow(unused_imports)]
use hangar_api_types::*;

fn store(s: &ApiState) -> ApiResult<&hangar_image::ImageStore> {
    s.images
        .as_deref()
        .ok_or_else(|| ApiError::NotFound("this hangard has no image store".into()))
}

fn image_error(e: hangar_image::ImageError) -> ApiError {
    if e.is_user_error() {
        ApiError::BadRequest(e.to_string())
    } else {
        ApiError::Agent(hangar_agent::AgentError::Internal(e.to_string()))
    }
}

/// `GET /v1/hangar/images`.
#[utoipa::path(get, path = "/v1/hangar/images", operation_id = "Images_list", tag = "Hangar extensions", responses((status = 200, body = Vec<ImageSummary>), (status = 401, description = "No or bad token", body = ErrorResponse)))]
pub async fn list(State(s): State<Shared>) -> ApiResult<Json<Vec<ImageSummary>>> {
    let images = store(&s)?.list().map_err(image_error)?;
    Ok(Json(
        images
            .into_iter()
            .map(|i| ImageSummary {
                name: i.name,
                digest: i.digest,
                source: i.source,
                layers: i.layers,
            })
            .collect(),
    ))
}

/// `POST /v1/hangar/images/import?name=NAME:TAG`, body: a tar stream.
#[utoipa::path(post, path = "/v1/hangar/images/import", operation_id = "Images_import", tag = "Hangar extensions", params(("name" = Option<String>, Query, description = "NAME[:TAG] to file the image under")), request_body(content = Vec<u8>, content_type = "application/x-tar", description = "An OCI layout, OCI archive or Docker archive as a tar stream"), responses((status = 200, body = ImageSummary), (status = 400, description = "Bad request", body = ErrorResponse), (status = 401, description = "No or bad token", body = ErrorResponse)))]
pub async fn import(
    State(s): State<Shared>,
    RawQuery(q): RawQuery,
    body: HttpBody,
) -> ApiResult<Json<ImageSummary>> {
    let images = store(&s)?;
    let name = Params::parse(q.as_deref())
        .get("name")
        .filter(|n| !n.is_empty())
        .map(str::to_owned);
    let path = images.scratch_path("upload");
    let result = async {
        let mut file = tokio::fs::File::create(&path).await.map_err(|e| {
            ApiError::Agent(hangar_agent::AgentError::Internal(format!(
                "upload file: {e}"
            )))
        })?;
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| ApiError::BadRequest(format!("reading the upload: {e}")))?;
            file.write_all(&chunk).await.map_err(|e| {
                ApiError::Agent(hangar_agent::AgentError::Internal(format!(
                    "upload file: {e}"
                )))
            })?;
        }
        file.flush().await.ok();
        let img = images
            .import_archive(&path, name.as_deref())
            .await
            .map_err(image_error)?;
        Ok(Json(ImageSummary {
            name: format!(
                "{}/{}:{}",
                img.registry,
                img.repository,
                img.tag.clone().unwrap_or_else(|| "latest".into())
            ),
            digest: img.digest,
            source: "import".into(),
            layers: img.layers.len(),
        }))
    }
    .await;
    let _ = tokio::fs::remove_file(&path).await;
    result
}

/// `POST /v1/hangar/images/prune`: the registry's garbage collection
/// (admin token only). Kept: tagged manifests, the images of releases and
/// machines, and their blobs; blobs younger than an hour stay (a push may
/// still be coming).
#[utoipa::path(post, path = "/v1/hangar/images/prune", operation_id = "Images_prune", tag = "Hangar extensions", responses((status = 200, body = PruneReport), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 403, description = "Not the admin token", body = ErrorResponse), (status = 404, description = "No registry", body = ErrorResponse)))]
pub async fn prune(
    State(s): State<Shared>,
    axum::Extension(who): axum::Extension<crate::Principal>,
) -> ApiResult<Json<PruneReport>> {
    if who != crate::Principal::Admin {
        return Err(ApiError::Forbidden(
            "pruning the registry needs the admin token".into(),
        ));
    }
    let reg = s
        .registry
        .clone()
        .ok_or_else(|| ApiError::NotFound("this hangard has no registry".into()))?;
    let keep = crate::registry::in_use(&s.agent);
    let r = tokio::task::spawn_blocking(move || reg.gc(&keep, crate::registry::GC_MIN_AGE))
        .await
        .map_err(|e| ApiError::Agent(hangar_agent::AgentError::Internal(e.to_string())))?
        .map_err(|e| ApiError::Agent(hangar_agent::AgentError::Internal(e.to_string())))?;
    Ok(Json(PruneReport {
        manifests: r.manifests,
        blobs: r.blobs,
        bytes: r.bytes,
    }))
}
