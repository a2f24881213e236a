//! Importing images from files, for hosts with no registry at hand: an OCI
//! image layout or OCI archive (umoci, skopeo `oci:`/`oci-archive:`, buildah
//! `oci-archive:`) or a Docker archive (`docker save`, skopeo
//! `docker-archive:`), all given as one tar stream.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::reference::{digest_hex, valid_digest};
use crate::unpack::{file_digest, remove_tree};
use crate::{ImageError, ImageName, ImageRecord, Inner, LayerRecord, RefEntry, Source};

pub(crate) const INDEX_MEDIA_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

#[derive(Deserialize)]
pub(crate) struct Index {
    pub(crate) manifests: Vec<Descriptor>,
}

#[derive(Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default)]
    pub(crate) media_type: String,
    pub(crate) digest: String,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) platform: Option<Platform>,
}

#[derive(Deserialize, Clone)]
pub(crate) struct Platform {
    pub(crate) architecture: String,
    pub(crate) os: String,
}

#[derive(Deserialize)]
pub(crate) struct Manifest {
    pub(crate) config: Descriptor,
    pub(crate) layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// What an archive holds, ready to be filed.
struct Plan {
    name: ImageName,
    digest: String,
    config: Vec<u8>,
    /// (blob path, media type, compressed digest, diff_id)
    layers: Vec<(PathBuf, String, String)>,
}

fn bad(msg: impl Into<String>) -> ImageError {
    ImageError::BadArchive(msg.into())
}

pub(crate) async fn import(
    inner: &Arc<Inner>,
    archive: &Path,
    name: Option<&str>,
) -> Result<crate::Image, ImageError> {
    let requested = name.map(parse_name).transpose()?;
    let work = inner
        .root
        .join("tmp")
        .join(format!("import-{:x}", crate::rand_u64()));
    let archive = archive.to_owned();
    let work2 = work.clone();
    let planned = tokio::task::spawn_blocking(move || {
        extract(&archive, &work2)?;
        plan(&work2, requested)
    })
    .await
    .map_err(|e| bad(format!("import task failed: {e}")));
    let result = match planned {
        Ok(Ok(plan)) => file(inner, plan).await,
        Ok(Err(e)) | Err(e) => Err(e),
    };
    let w = work.clone();
    let _ = tokio::task::spawn_blocking(move || remove_tree(&w)).await;
    result
}

fn parse_name(n: &str) -> Result<ImageName, ImageError> {
    let name = ImageName::parse(n)?;
    if name.digest.is_some() {
        return Err(bad(format!(
            "import name {n:?} must be NAME[:TAG], not a digest"
        )));
    }
    Ok(name)
}

/// Extracts the tar stream into `dir` (paths are confined to `dir`).
fn extract(archive: &Path, dir: &Path) -> Result<(), ImageError> {
    fs::create_dir_all(dir).map_err(|e| ImageError::io("create", dir, e))?;
    let f = fs::File::open(archive).map_err(|e| ImageError::io("open", archive, e))?;
    let mut a = tar::Archive::new(std::io::BufReader::new(f));
    a.set_preserve_permissions(false);
    a.set_preserve_ownerships(false);
    for entry in a
        .entries()
        .map_err(|e| bad(format!("not a tar archive: {e}")))?
    {
        let mut entry = entry.map_err(|e| bad(format!("corrupt tar archive: {e}")))?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            continue;
        }
        entry
            .unpack_in(dir)
            .map_err(|e| bad(format!("extracting archive: {e}")))?;
    }
    Ok(())
}

fn plan(dir: &Path, requested: Option<ImageName>) -> Result<Plan, ImageError> {
    if dir.join("index.json").is_file() {
        plan_oci(dir, requested)
    } else if dir.join("manifest.json").is_file() {
        plan_docker(dir, requested)
    } else {
        Err(bad(
            "neither an OCI layout (index.json) nor a Docker archive (manifest.json)",
        ))
    }
}

fn blob_path(dir: &Path, digest: &str) -> Result<PathBuf, ImageError> {
    if !valid_digest(digest) {
        return Err(bad(format!("unsupported digest {digest:?}")));
    }
    Ok(dir.join("blobs/sha256").join(digest_hex(digest)))
}

/// Reads a blob and checks it against its digest.
fn read_blob(dir: &Path, digest: &str) -> Result<Vec<u8>, ImageError> {
    let p = blob_path(dir, digest)?;
    let data = fs::read(&p).map_err(|_| bad(format!("blob {digest} is missing")))?;
    let got = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data))
    );
    if got != digest {
        return Err(bad(format!("blob {digest} is corrupt (digest {got})")));
    }
    Ok(data)
}

fn json<T: for<'de> Deserialize<'de>>(data: &[u8], what: &str) -> Result<T, ImageError> {
    serde_json::from_slice(data).map_err(|e| bad(format!("unreadable {what}: {e}")))
}

fn plan_oci(dir: &Path, requested: Option<ImageName>) -> Result<Plan, ImageError> {
    let index: Index = json(
        &fs::read(dir.join("index.json")).map_err(|e| ImageError::io("read", dir, e))?,
        "index.json",
    )?;
    // The annotated name of an entry: a full reference, or a bare tag
    // (umoci writes `org.opencontainers.image.ref.name: latest`).
    let entry_name = |d: &Descriptor| -> Option<String> {
        d.annotations
            .get("io.containerd.image.name")
            .or_else(|| d.annotations.get("org.opencontainers.image.ref.name"))
            .cloned()
    };
    let chosen = match &requested {
        _ if index.manifests.len() == 1 => index.manifests[0].clone(),
        Some(want) => index
            .manifests
            .iter()
            .find(|d| {
                entry_name(d).is_some_and(|n| {
                    n == want.tag.clone().unwrap_or_default()
                        || ImageName::parse(&n).is_ok_and(|p| p.key() == want.key())
                })
            })
            .cloned()
            .ok_or_else(|| bad(format!("no image named {want} in the layout")))?,
        None => {
            let names: Vec<String> = index.manifests.iter().filter_map(entry_name).collect();
            return Err(bad(format!(
                "the layout holds {} images ({}); pass --name to pick one",
                index.manifests.len(),
                names.join(", ")
            )));
        }
    };
    let name = match requested {
        Some(n) => n,
        None => entry_name(&chosen)
            .filter(|n| n.contains('/') || n.contains(':'))
            .map(|n| parse_name(&n))
            .transpose()?
            .ok_or_else(|| {
                bad("the archive does not carry a full image name; pass --name NAME:TAG")
            })?,
    };
    // An index inside: pick linux/amd64.
    let mut desc = chosen;
    for _ in 0..4 {
        if !INDEX_MEDIA_TYPES.contains(&desc.media_type.as_str()) {
            break;
        }
        let nested: Index = json(&read_blob(dir, &desc.digest)?, "image index")?;
        desc = nested
            .manifests
            .into_iter()
            .find(|m| {
                m.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
            })
            .ok_or_else(|| bad("the image index has no linux/amd64 image"))?;
    }
    let manifest: Manifest = json(&read_blob(dir, &desc.digest)?, "image manifest")?;
    let config = read_blob(dir, &manifest.config.digest)?;
    let (_, diff_ids) = crate::parse_config(&name.to_string(), &config)?;
    if diff_ids.len() != manifest.layers.len() {
        return Err(bad("manifest and config disagree on the number of layers"));
    }
    let mut layers = Vec::new();
    for (l, diff_id) in manifest.layers.iter().zip(diff_ids) {
        let p = blob_path(dir, &l.digest)?;
        let got =
            file_digest(&p).map_err(|_| bad(format!("layer blob {} is missing", l.digest)))?;
        if got != l.digest {
            return Err(bad(format!("layer blob {} is corrupt", l.digest)));
        }
        layers.push((p, l.digest.clone(), diff_id));
    }
    Ok(Plan {
        name,
        digest: desc.digest,
        config,
        layers,
    })
}

fn plan_docker(dir: &Path, requested: Option<ImageName>) -> Result<Plan, ImageError> {
    let entries: Vec<DockerEntry> = json(
        &fs::read(dir.join("manifest.json")).map_err(|e| ImageError::io("read", dir, e))?,
        "manifest.json",
    )?;
    let entry = match (entries.len(), &requested) {
        (1, _) => &entries[0],
        (0, _) => return Err(bad("manifest.json lists no image")),
        (_, Some(want)) => entries
            .iter()
            .find(|e| {
                e.repo_tags
                    .iter()
                    .flatten()
                    .any(|t| ImageName::parse(t).is_ok_and(|p| p.key() == want.key()))
            })
            .ok_or_else(|| bad(format!("no image named {want} in the archive")))?,
        (_, None) => {
            return Err(bad(
                "the archive holds several images; pass --name to pick one",
            ));
        }
    };
    let name = match requested {
        Some(n) => n,
        None => entry
            .repo_tags
            .iter()
            .flatten()
            .next()
            .map(|t| parse_name(t))
            .transpose()?
            .ok_or_else(|| bad("the archive carries no image name; pass --name NAME:TAG"))?,
    };
    let inside = |rel: &str| -> Result<PathBuf, ImageError> {
        let p = Path::new(rel);
        if p.is_absolute()
            || p.components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(bad(format!("path {rel:?} escapes the archive")));
        }
        Ok(dir.join(p))
    };
    let config_path = inside(&entry.config)?;
    let config =
        fs::read(&config_path).map_err(|_| bad(format!("config {} is missing", entry.config)))?;
    let digest = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&config))
    );
    let (_, diff_ids) = crate::parse_config(&name.to_string(), &config)?;
    if diff_ids.len() != entry.layers.len() {
        return Err(bad(
            "manifest.json and the config disagree on the number of layers",
        ));
    }
    let mut layers = Vec::new();
    for (l, diff_id) in entry.layers.iter().zip(diff_ids) {
        let p = inside(l)?;
        if !p.is_file() {
            return Err(bad(format!("layer {l} is missing")));
        }
        layers.push((p, String::new(), diff_id));
    }
    Ok(Plan {
        name,
        digest,
        config,
        layers,
    })
}

/// Unpacks the planned layers and files the image under its name.
async fn file(inner: &Arc<Inner>, plan: Plan) -> Result<crate::Image, ImageError> {
    let (image_config, _) = crate::parse_config(&plan.name.to_string(), &plan.config)?;
    let mut layer_records = Vec::new();
    for (blob, digest, diff_id) in plan.layers {
        let dest = inner.layer_dir(&diff_id);
        if !dest.is_dir() {
            let lock = inner.layer_lock(&diff_id);
            let _g = lock.lock().await;
            if !dest.is_dir() {
                inner.unpack(blob, diff_id.clone(), false).await?;
            }
        }
        layer_records.push(LayerRecord {
            digest: if digest.is_empty() {
                diff_id.clone()
            } else {
                digest
            },
            diff_id,
            media_type: String::new(),
        });
    }
    inner.write_blob(&plan.config)?;
    let rec = ImageRecord {
        registry: plan.name.registry.clone(),
        repository: plan.name.repository.clone(),
        tag: plan.name.tag.clone(),
        digest: plan.digest.clone(),
        config: image_config,
        layers: layer_records,
    };
    inner.write_record(&rec)?;
    inner.write_ref(
        &plan.name.key(),
        &RefEntry {
            digest: plan.digest.clone(),
            source: Source::Import,
            served: None,
        },
    )?;
    tracing::info!(image = %plan.name, digest = %plan.digest, "image imported");
    inner
        .load_complete(&plan.digest)?
        .ok_or_else(|| ImageError::Io {
            op: "verify",
            path: plan.digest,
            reason: "layers missing right after the import".into(),
        })
}
