//! Images of a registry this process serves itself (hangard's `/v2/`),
//! read straight from that registry's storage: a machine from a pushed image
//! starts without an HTTP round trip to its own host, and the compressed
//! layers stay stored once, in the registry (the store keeps only what it
//! always keeps: the unpacked layer trees machines run from).

use std::path::PathBuf;
use std::sync::Arc;

use crate::import::{Descriptor, INDEX_MEDIA_TYPES, Index, Manifest};
use crate::{Image, ImageError, ImageName, Inner, LayerRecord};

/// A manifest as a local registry stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalManifest {
    /// `sha256:...` of `bytes`.
    pub digest: String,
    /// Its media type, as pushed.
    pub media_type: String,
    /// Its bytes, as pushed.
    pub bytes: Vec<u8>,
}

/// A registry whose storage this process can read. Implementations answer
/// from disk and never block for long.
pub trait LocalRegistry: std::fmt::Debug + Send + Sync {
    /// Whether `registry` (a reference's `host[:port]`) names this registry.
    fn serves(&self, registry: &str) -> bool;
    /// Manifest `reference` (a tag or a digest) of `repository`, if stored.
    fn manifest(&self, repository: &str, reference: &str) -> Result<Option<LocalManifest>, String>;
    /// The file holding blob `digest` of `repository`, if stored.
    fn blob(&self, repository: &str, digest: &str) -> Result<Option<PathBuf>, String>;
}

fn registry_err(name: &ImageName, reason: impl Into<String>) -> ImageError {
    ImageError::Registry {
        reference: name.to_string(),
        reason: reason.into(),
    }
}

fn not_found(name: &ImageName, reason: impl Into<String>) -> ImageError {
    ImageError::NotFound {
        reference: name.to_string(),
        reason: reason.into(),
    }
}

fn json<T: for<'de> serde::Deserialize<'de>>(
    name: &ImageName,
    data: &[u8],
    what: &str,
) -> Result<T, ImageError> {
    serde_json::from_slice(data).map_err(|e| registry_err(name, format!("unreadable {what}: {e}")))
}

/// Files image `name` from `local`, unpacking the layers the store lacks
/// from the registry's own blob files.
pub(crate) async fn pull(
    inner: &Arc<Inner>,
    local: &Arc<dyn LocalRegistry>,
    name: &ImageName,
) -> Result<Image, ImageError> {
    let repo = name.repository.as_str();
    let reference = name
        .digest
        .clone()
        .or_else(|| name.tag.clone())
        .unwrap_or_else(|| "latest".into());
    let manifest = |reference: &str| -> Result<LocalManifest, ImageError> {
        local
            .manifest(repo, reference)
            .map_err(|e| registry_err(name, e))?
            .ok_or_else(|| not_found(name, format!("{repo}:{reference} is not in the registry")))
    };
    let mut m = manifest(&reference)?;
    // An index: its linux/amd64 image.
    for _ in 0..4 {
        let is_index = INDEX_MEDIA_TYPES.contains(&m.media_type.as_str())
            || serde_json::from_slice::<serde_json::Value>(&m.bytes)
                .is_ok_and(|v| v.get("manifests").is_some());
        if !is_index {
            break;
        }
        let index: Index = json(name, &m.bytes, "image index")?;
        let chosen: Descriptor = index
            .manifests
            .into_iter()
            .find(|d| {
                d.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
            })
            .ok_or_else(|| ImageError::Unsupported {
                reference: name.to_string(),
                reason: "the image index has no linux/amd64 image".into(),
            })?;
        m = manifest(&chosen.digest)?;
    }
    let parsed: Manifest = json(name, &m.bytes, "image manifest")?;
    let config_path = local
        .blob(repo, &parsed.config.digest)
        .map_err(|e| registry_err(name, e))?
        .ok_or_else(|| {
            not_found(
                name,
                format!("config blob {} is missing", parsed.config.digest),
            )
        })?;
    let config = tokio::fs::read(&config_path)
        .await
        .map_err(|e| ImageError::io("read", &config_path, e))?;
    let got = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&config))
    );
    if got != parsed.config.digest {
        return Err(ImageError::DigestMismatch {
            reference: name.to_string(),
            reason: format!("config blob {} reads as {got}", parsed.config.digest),
        });
    }
    let (image_config, diff_ids) = crate::parse_config(&name.to_string(), &config)?;
    if diff_ids.len() != parsed.layers.len() {
        return Err(registry_err(
            name,
            format!(
                "manifest lists {} layers but the config {}",
                parsed.layers.len(),
                diff_ids.len()
            ),
        ));
    }
    inner.write_blob(&config)?;
    let mut layers = Vec::with_capacity(parsed.layers.len());
    for (desc, diff_id) in parsed.layers.iter().zip(diff_ids) {
        if desc.media_type.contains("foreign") {
            return Err(ImageError::Unsupported {
                reference: name.to_string(),
                reason: format!("foreign layer {} cannot be pulled", desc.digest),
            });
        }
        let dest = inner.layer_dir(&diff_id);
        if !dest.is_dir() {
            let lock = inner.layer_lock(&diff_id);
            let _guard = lock.lock().await;
            if !dest.is_dir() {
                let blob = local
                    .blob(repo, &desc.digest)
                    .map_err(|e| registry_err(name, e))?
                    .ok_or_else(|| {
                        not_found(name, format!("layer blob {} is missing", desc.digest))
                    })?;
                // The registry checked the compressed digest on upload; the
                // unpacker checks the uncompressed one against the config.
                inner.unpack(blob, diff_id.clone(), false).await?;
            }
        }
        layers.push(LayerRecord {
            digest: desc.digest.clone(),
            diff_id,
            media_type: desc.media_type.clone(),
        });
    }
    tracing::info!(image = %name, digest = %m.digest, "image read from this host's registry");
    inner.file_pulled(name, m.digest, image_config, layers, None)
}
