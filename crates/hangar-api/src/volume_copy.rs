//! Volumes between hosts (`hangard --cluster`): a fork in another region
//! is made on a host there from a copy of its source, which the source's
//! host exports.
//!
//! `GET /v1/apps/{app}/volumes/{id}/export` (Hangar's, app-scoped like the
//! volume) answers a consistent copy of the volume's image (frozen while
//! copied when mounted), zstd-compressed (an image is mostly holes), with
//! what a host needs to make a volume of it in headers: `hangar-volume-fstype`,
//! `hangar-volume-size-gb` and, for an encrypted volume,
//! `hangar-volume-key-sealed` (its key sealed with the cluster's secrets
//! key, which every host holds, for the source's id). The importing host
//! writes the image back with its holes.

use std::io::{Read, Seek, SeekFrom, Write};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::Response;
use base64::Engine;
use http::HeaderMap;
use tokio::io::AsyncWriteExt;

use crate::ApiState;
use crate::Shared;
use crate::error::{ApiError, ApiResult};
use hangar_agent::AgentError;
use hangar_agent::volumes::VolumeImport;

const FSTYPE: &str = "hangar-volume-fstype";
const SIZE_GB: &str = "hangar-volume-size-gb";
const KEY_SEALED: &str = "hangar-volume-key-sealed";

fn internal(what: &str) -> impl FnOnce(std::io::Error) -> ApiError + '_ {
    move |source| {
        ApiError::Agent(AgentError::Io {
            context: what.to_owned(),
            source,
        })
    }
}

/// `GET /v1/apps/{app}/volumes/{id}/export`.
#[utoipa::path(get, path = "/v1/apps/{app_name}/volumes/{volume_id}/export", operation_id = "Volumes_export", tag = "Hangar", params(("app_name" = String, Path, description = "App name"), ("volume_id" = String, Path, description = "Volume id")), responses((status = 200, description = "The volume's image, zstd-compressed; its fstype, size and sealed key in hangar-volume-* headers", content_type = "application/zstd"), (status = 401, description = "No or bad token", body = hangar_api_types::ErrorResponse), (status = 404, description = "Not found", body = hangar_api_types::ErrorResponse)))]
pub async fn export(
    State(s): State<Shared>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    let x = s.agent.export_volume(&app, &id).await?;
    let path = x.path.clone();
    // Compressed into a file that is gone once answered (unlinked while
    // open), then the copy removed.
    let file = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
        let dir = path.parent().unwrap_or(std::path::Path::new("/tmp"));
        let mut out = tempfile::tempfile_in(dir)?;
        let r = (|| -> std::io::Result<()> {
            let mut enc = zstd::Encoder::new(&mut out, 3)?;
            std::io::copy(&mut std::fs::File::open(&path)?, &mut enc)?;
            enc.finish()?;
            Ok(())
        })();
        let _ = std::fs::remove_file(&path);
        r?;
        out.seek(SeekFrom::Start(0))?;
        Ok(out)
    })
    .await
    .map_err(|e| ApiError::Agent(AgentError::Internal(e.to_string())))?
    .map_err(internal("compressing the volume's copy"))?;
    let len = file
        .metadata()
        .map_err(internal("the volume's copy"))?
        .len();
    let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file));
    let mut r = Response::builder()
        .header(http::header::CONTENT_TYPE, "application/zstd")
        .header(http::header::CONTENT_LENGTH, len)
        .header(FSTYPE, &x.volume.fstype)
        .header(SIZE_GB, x.volume.size_gb);
    if let Some(k) = &x.key_sealed {
        r = r.header(
            KEY_SEALED,
            base64::engine::general_purpose::STANDARD.encode(k),
        );
    }
    r.body(Body::from_stream(stream))
        .map_err(|e| ApiError::Agent(AgentError::Internal(e.to_string())))
}

/// Brings volume `source` of `app` from `owner` (with the client's
/// credentials in `headers`) into a file of this host: what a fork here
/// is made from.
pub async fn import(
    s: &ApiState,
    c: &crate::cluster::ClusterApi,
    owner: &hangar_cluster::HostInfo,
    app: &str,
    source: &str,
    headers: &HeaderMap,
) -> ApiResult<VolumeImport> {
    let unavailable = |e: String| {
        ApiError::Agent(AgentError::Unavailable(format!(
            "copying volume {source} from host {}: {e}",
            owner.id
        )))
    };
    let mut r = crate::cluster::fetch(
        c,
        owner,
        &format!("/v1/apps/{app}/volumes/{source}/export"),
        headers,
    )
    .await
    .map_err(unavailable)?;
    if !r.status().is_success() {
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        return Err(unavailable(format!("{status}: {body}")));
    }
    let header = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let fstype = header(FSTYPE).unwrap_or_else(|| "ext4".into());
    let size_gb: i64 = header(SIZE_GB)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| unavailable("no size in its answer".into()))?;
    let key_sealed = match header(KEY_SEALED) {
        Some(k) => Some(
            base64::engine::general_purpose::STANDARD
                .decode(k)
                .map_err(|e| unavailable(format!("its sealed key: {e}")))?,
        ),
        None => None,
    };
    let path = s.agent.import_path();
    let compressed = path.with_extension("zst");
    let mut out = tokio::fs::File::create(&compressed)
        .await
        .map_err(internal("receiving a volume"))?;
    let received = async {
        while let Some(chunk) = r.chunk().await.map_err(|e| unavailable(e.to_string()))? {
            out.write_all(&chunk)
                .await
                .map_err(internal("receiving a volume"))?;
        }
        out.flush().await.map_err(internal("receiving a volume"))
    }
    .await;
    drop(out);
    if let Err(e) = received {
        let _ = std::fs::remove_file(&compressed);
        return Err(e);
    }
    let (from, to) = (compressed.clone(), path.clone());
    let unpacked = tokio::task::spawn_blocking(move || unpack_sparse(&from, &to)).await;
    let _ = std::fs::remove_file(&compressed);
    match unpacked {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let _ = std::fs::remove_file(&path);
            return Err(internal("unpacking a volume")(e));
        }
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Err(ApiError::Agent(AgentError::Internal(e.to_string())));
        }
    }
    Ok(VolumeImport {
        path,
        source_id: source.to_owned(),
        fstype,
        size_gb,
        key_sealed,
    })
}

/// Decompresses `from` into `to`, leaving holes where the image has zeros.
fn unpack_sparse(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    let mut dec = zstd::Decoder::new(std::fs::File::open(from)?)?;
    let mut out = std::fs::File::create(to)?;
    let mut buf = vec![0u8; 1 << 16];
    let mut len: u64 = 0;
    loop {
        let mut n = 0;
        while n < buf.len() {
            match dec.read(&mut buf[n..])? {
                0 => break,
                k => n += k,
            }
        }
        if n == 0 {
            break;
        }
        if buf[..n].iter().all(|b| *b == 0) {
            out.seek(SeekFrom::Current(n as i64))?;
        } else {
            out.write_all(&buf[..n])?;
        }
        len += n as u64;
    }
    out.set_len(len)?;
    out.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpacking_keeps_data_and_makes_holes() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("img");
        let mut f = std::fs::File::create(&img).unwrap();
        f.write_all(b"head").unwrap();
        f.set_len(64 << 20).unwrap();
        f.seek(SeekFrom::End(-4)).unwrap();
        f.write_all(b"tail").unwrap();
        drop(f);
        let zst = dir.path().join("img.zst");
        let mut enc = zstd::Encoder::new(std::fs::File::create(&zst).unwrap(), 3).unwrap();
        std::io::copy(&mut std::fs::File::open(&img).unwrap(), &mut enc).unwrap();
        enc.finish().unwrap();
        let back = dir.path().join("back");
        unpack_sparse(&zst, &back).unwrap();
        assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&img).unwrap());
        let m = std::fs::metadata(&back).unwrap();
        assert_eq!(m.len(), 64 << 20);
        assert!(
            m.blocks() * 512 < 1 << 20,
            "no holes: {} blocks",
            m.blocks()
        );
    }
}
