//! The storage of hangard's built-in OCI registry (the distribution spec's
//! push and pull), under one directory:
//!
//! ```text
//! blobs/sha256/<hex>                 content-addressed: layers, configs, manifests
//! uploads/<app>/<id>                 an upload session's bytes so far
//! repos/<app>/blobs/<hex>            a blob pushed to this repository (a link)
//! repos/<app>/manifests/<hex>        a manifest pushed to this repository: its media type
//! repos/<app>/tags/<tag>             the digest the tag names
//! ```
//!
//! A blob is stored once, but a repository sees only the blobs pushed to
//! it (or mounted from one its client may read): knowing a digest of
//! another app's layer does not make it readable.
//!
//! An upload is hashed when it is committed and renamed into place only if
//! its digest is the one the client named, so an interrupted or corrupt
//! upload leaves nothing in `blobs/`. Every file that names something
//! (a tag, a manifest's media type) is written to a temporary file, synced
//! and renamed, so a crash leaves the old value or the new one.

#![forbid(unsafe_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

use futures::{Stream, StreamExt};

mod local;
pub use local::{LocalSource, Names};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// The media types the registry stores manifests as.
pub const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// A registry failure, with the distribution spec's error code.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// `BLOB_UNKNOWN` (404).
    #[error("blob unknown: {0}")]
    BlobUnknown(String),
    /// `BLOB_UPLOAD_UNKNOWN` (404).
    #[error("upload unknown: {0}")]
    UploadUnknown(String),
    /// `BLOB_UPLOAD_INVALID` (416 for a chunk out of order).
    #[error("upload out of order: expected a chunk starting at {expected}, got {got}")]
    RangeInvalid {
        /// Where the next chunk must start.
        expected: u64,
        /// Where it started.
        got: u64,
    },
    /// `DIGEST_INVALID` (400).
    #[error("digest invalid: {0}")]
    DigestInvalid(String),
    /// `MANIFEST_UNKNOWN` (404).
    #[error("manifest unknown: {0}")]
    ManifestUnknown(String),
    /// `MANIFEST_INVALID` (400).
    #[error("manifest invalid: {0}")]
    ManifestInvalid(String),
    /// `MANIFEST_BLOB_UNKNOWN` (400): a manifest names a blob or manifest
    /// the registry does not have.
    #[error("manifest references unknown {0}")]
    ManifestBlobUnknown(String),
    /// `TAG_INVALID` / `NAME_INVALID` (400).
    #[error("invalid {0}")]
    NameInvalid(String),
    /// The disk failed.
    #[error("registry storage: {context}")]
    Io {
        /// What was being done.
        context: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl RegistryError {
    /// The distribution spec's code.
    pub fn code(&self) -> &'static str {
        match self {
            RegistryError::BlobUnknown(_) => "BLOB_UNKNOWN",
            RegistryError::UploadUnknown(_) => "BLOB_UPLOAD_UNKNOWN",
            RegistryError::RangeInvalid { .. } => "BLOB_UPLOAD_INVALID",
            RegistryError::DigestInvalid(_) => "DIGEST_INVALID",
            RegistryError::ManifestUnknown(_) => "MANIFEST_UNKNOWN",
            RegistryError::ManifestInvalid(_) => "MANIFEST_INVALID",
            RegistryError::ManifestBlobUnknown(_) => "MANIFEST_BLOB_UNKNOWN",
            RegistryError::NameInvalid(_) => "NAME_INVALID",
            RegistryError::Io { .. } => "UNKNOWN",
        }
    }
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RegistryError {
    let context = context.into();
    move |source| RegistryError::Io { context, source }
}

/// `sha256:<64 hex>`, checked; returns the hex.
pub fn digest_hex(digest: &str) -> Result<&str, RegistryError> {
    let hex = digest.strip_prefix("sha256:").ok_or_else(|| {
        RegistryError::DigestInvalid(format!("{digest:?}: only sha256 is supported"))
    })?;
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(RegistryError::DigestInvalid(format!("{digest:?}")));
    }
    Ok(hex)
}

/// A tag as the spec allows: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub fn check_tag(tag: &str) -> Result<(), RegistryError> {
    let mut b = tag.bytes();
    let ok = matches!(b.next(), Some(c) if c.is_ascii_alphanumeric() || c == b'_')
        && tag.len() <= 128
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(RegistryError::NameInvalid(format!("tag {tag:?}")))
    }
}

/// A repository name here is an app name.
fn check_repo(repo: &str) -> Result<(), RegistryError> {
    let ok = !repo.is_empty()
        && repo.len() <= 63
        && repo
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(RegistryError::NameInvalid(format!("repository {repo:?}")))
    }
}

/// An upload session id: a ULID, lower case.
fn check_upload(id: &str) -> Result<(), RegistryError> {
    if id.len() == 26 && id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(())
    } else {
        Err(RegistryError::UploadUnknown(id.to_owned()))
    }
}

/// A manifest as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// `sha256:...` of its bytes.
    pub digest: String,
    /// Its media type, as pushed.
    pub media_type: String,
    /// Its bytes, as pushed.
    pub bytes: Vec<u8>,
}

/// The registry's storage.
#[derive(Debug, Clone)]
pub struct Storage {
    root: PathBuf,
}

impl Storage {
    /// Storage under `root` (made when missing).
    pub fn open(root: impl Into<PathBuf>) -> Result<Storage, RegistryError> {
        let root = root.into();
        for d in ["blobs/sha256", "uploads", "repos"] {
            std::fs::create_dir_all(root.join(d)).map_err(io(format!("creating {d}")))?;
        }
        // Sessions of a previous run are gone with it.
        let _ = std::fs::remove_dir_all(root.join("uploads"));
        std::fs::create_dir_all(root.join("uploads")).map_err(io("creating uploads"))?;
        Ok(Storage { root })
    }

    /// A blob's file, if `repo` has it.
    pub fn blob(&self, repo: &str, digest: &str) -> Result<Option<(PathBuf, u64)>, RegistryError> {
        check_repo(repo)?;
        let hex = digest_hex(digest)?;
        if !self
            .root
            .join("repos")
            .join(repo)
            .join("blobs")
            .join(hex)
            .exists()
        {
            return Ok(None);
        }
        let p = self.root.join("blobs/sha256").join(hex);
        Ok(std::fs::metadata(&p).ok().map(|m| (p, m.len())))
    }

    /// Makes blob `digest` (stored) part of `repo`.
    fn link(&self, repo: &str, hex: &str) -> Result<(), RegistryError> {
        let path = self.root.join("repos").join(repo).join("blobs").join(hex);
        if !path.exists() {
            write_atomic(&path, b"")?;
        }
        Ok(())
    }

    /// Mounts blob `digest` of repository `from` into `repo` (a client that
    /// may read both): false when `from` does not have it.
    pub fn mount(&self, repo: &str, from: &str, digest: &str) -> Result<bool, RegistryError> {
        check_repo(repo)?;
        if self.blob(from, digest)?.is_none() {
            return Ok(false);
        }
        self.link(repo, digest_hex(digest)?)?;
        Ok(true)
    }

    /// Opens an upload session for `repo`; returns its id.
    pub fn start_upload(&self, repo: &str) -> Result<String, RegistryError> {
        check_repo(repo)?;
        let id = ulid::Ulid::new().to_string().to_lowercase();
        let dir = self.root.join("uploads").join(repo);
        std::fs::create_dir_all(&dir).map_err(io("creating an upload"))?;
        std::fs::File::create(dir.join(&id)).map_err(io("creating an upload"))?;
        Ok(id)
    }

    fn upload_path(&self, repo: &str, id: &str) -> PathBuf {
        self.root.join("uploads").join(repo).join(id)
    }

    /// Bytes received so far by upload `id` of `repo`.
    pub fn upload_size(&self, repo: &str, id: &str) -> Result<u64, RegistryError> {
        check_repo(repo)?;
        check_upload(id)?;
        std::fs::metadata(self.upload_path(repo, id))
            .map(|m| m.len())
            .map_err(|_| RegistryError::UploadUnknown(id.to_owned()))
    }

    /// Appends a chunk to upload `id`; with `start` (a `Content-Range`), it
    /// must begin where the upload ends. Returns the new size.
    pub async fn append<S, E>(
        &self,
        repo: &str,
        id: &str,
        start: Option<u64>,
        body: S,
    ) -> Result<u64, RegistryError>
    where
        S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let size = self.upload_size(repo, id)?;
        if let Some(start) = start {
            if start != size {
                return Err(RegistryError::RangeInvalid {
                    expected: size,
                    got: start,
                });
            }
        }
        let mut f = tokio::fs::OpenOptions::new()
            .append(true)
            .open(self.upload_path(repo, id))
            .await
            .map_err(|_| RegistryError::UploadUnknown(id.to_owned()))?;
        let mut body = body;
        let mut total = size;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| RegistryError::Io {
                context: "reading the upload".into(),
                source: std::io::Error::other(e.to_string()),
            })?;
            f.write_all(&chunk).await.map_err(io("writing an upload"))?;
            total += chunk.len() as u64;
        }
        f.flush().await.map_err(io("writing an upload"))?;
        Ok(total)
    }

    /// Commits upload `id` as `digest` (after appending `body`, which may be
    /// empty): the bytes are hashed and must match, then moved into place.
    /// A mismatch removes the upload and stores nothing.
    pub async fn commit<S, E>(
        &self,
        repo: &str,
        id: &str,
        digest: &str,
        body: S,
    ) -> Result<u64, RegistryError>
    where
        S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let hex = digest_hex(digest)?.to_owned();
        let appended = self.append(repo, id, None, body).await;
        let path = self.upload_path(repo, id);
        let size = match appended {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
        };
        let p = path.clone();
        let actual = tokio::task::spawn_blocking(move || hash_file(&p))
            .await
            .map_err(|e| RegistryError::Io {
                context: "hashing an upload".into(),
                source: std::io::Error::other(e.to_string()),
            })??;
        if actual != hex {
            let _ = std::fs::remove_file(&path);
            return Err(RegistryError::DigestInvalid(format!(
                "the upload's content is sha256:{actual}, not {digest}"
            )));
        }
        let dest = self.root.join("blobs/sha256").join(&hex);
        std::fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(io("syncing an upload"))?;
        std::fs::rename(&path, &dest).map_err(io("committing an upload"))?;
        sync_dir(dest.parent());
        self.link(repo, &hex)?;
        Ok(size)
    }

    /// Drops upload `id` of `repo`.
    pub fn cancel(&self, repo: &str, id: &str) -> Result<(), RegistryError> {
        check_repo(repo)?;
        check_upload(id)?;
        std::fs::remove_file(self.upload_path(repo, id))
            .map_err(|_| RegistryError::UploadUnknown(id.to_owned()))
    }

    /// Stores a manifest pushed to `repo` as `reference` (a tag or its
    /// digest): checked (JSON of a known media type, everything it names
    /// present), kept byte for byte. Returns its digest.
    pub fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<String, RegistryError> {
        check_repo(repo)?;
        let hex = hex::encode(Sha256::digest(bytes));
        let digest = format!("sha256:{hex}");
        if reference.starts_with("sha256:") {
            if reference != digest {
                return Err(RegistryError::DigestInvalid(format!(
                    "the manifest is {digest}, not {reference}"
                )));
            }
        } else {
            check_tag(reference)?;
        }
        let v: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| RegistryError::ManifestInvalid(format!("not JSON: {e}")))?;
        let media_type = match media_type.split(';').next().map(str::trim) {
            Some(t) if MANIFEST_TYPES.contains(&t) => t.to_owned(),
            _ => match v["mediaType"].as_str() {
                Some(t) if MANIFEST_TYPES.contains(&t) => t.to_owned(),
                _ => {
                    return Err(RegistryError::ManifestInvalid(format!(
                        "media type {media_type:?} is not one of {}",
                        MANIFEST_TYPES.join(", ")
                    )));
                }
            },
        };
        // Everything it names must be here already.
        if let Some(list) = v["manifests"].as_array() {
            for m in list {
                let d = m["digest"].as_str().unwrap_or_default();
                if self.manifest_type(repo, d)?.is_none() {
                    return Err(RegistryError::ManifestBlobUnknown(format!("manifest {d}")));
                }
            }
        } else {
            let mut named: Vec<&str> = Vec::new();
            named.extend(v["config"]["digest"].as_str());
            for l in v["layers"].as_array().into_iter().flatten() {
                named.extend(l["digest"].as_str());
            }
            if named.is_empty() {
                return Err(RegistryError::ManifestInvalid(
                    "an image manifest needs a config and layers".into(),
                ));
            }
            for d in named {
                if self.blob(repo, d)?.is_none() {
                    return Err(RegistryError::ManifestBlobUnknown(format!("blob {d}")));
                }
            }
        }
        let blob = self.root.join("blobs/sha256").join(&hex);
        if !blob.exists() {
            write_atomic(&blob, bytes)?;
        }
        self.link(repo, &hex)?;
        let dir = self.root.join("repos").join(repo);
        write_atomic(&dir.join("manifests").join(&hex), media_type.as_bytes())?;
        if !reference.starts_with("sha256:") {
            write_atomic(&dir.join("tags").join(reference), digest.as_bytes())?;
        }
        Ok(digest)
    }

    /// The media type of manifest `digest` in `repo`, if pushed there.
    fn manifest_type(&self, repo: &str, digest: &str) -> Result<Option<String>, RegistryError> {
        let hex = digest_hex(digest)?;
        Ok(std::fs::read_to_string(
            self.root
                .join("repos")
                .join(repo)
                .join("manifests")
                .join(hex),
        )
        .ok())
    }

    /// A manifest of `repo` by tag or digest.
    pub fn manifest(&self, repo: &str, reference: &str) -> Result<Manifest, RegistryError> {
        check_repo(repo)?;
        let digest = if reference.starts_with("sha256:") {
            reference.to_owned()
        } else {
            check_tag(reference)?;
            std::fs::read_to_string(
                self.root
                    .join("repos")
                    .join(repo)
                    .join("tags")
                    .join(reference),
            )
            .map_err(|_| RegistryError::ManifestUnknown(format!("{repo}:{reference}")))?
        };
        let media_type = self
            .manifest_type(repo, &digest)?
            .ok_or_else(|| RegistryError::ManifestUnknown(format!("{repo}@{digest}")))?;
        let hex = digest_hex(&digest)?;
        let bytes = std::fs::read(self.root.join("blobs/sha256").join(hex))
            .map_err(|_| RegistryError::ManifestUnknown(format!("{repo}@{digest}")))?;
        Ok(Manifest {
            digest,
            media_type,
            bytes,
        })
    }

    /// Deletes manifest `digest` from `repo` (and the tags that name it).
    pub fn delete_manifest(&self, repo: &str, digest: &str) -> Result<(), RegistryError> {
        check_repo(repo)?;
        let hex = digest_hex(digest)?;
        let dir = self.root.join("repos").join(repo);
        std::fs::remove_file(dir.join("manifests").join(hex))
            .map_err(|_| RegistryError::ManifestUnknown(format!("{repo}@{digest}")))?;
        for (tag, d) in self.tag_digests(repo) {
            if d == digest {
                let _ = std::fs::remove_file(dir.join("tags").join(tag));
            }
        }
        Ok(())
    }

    fn tag_digests(&self, repo: &str) -> Vec<(String, String)> {
        let dir = self.root.join("repos").join(repo).join("tags");
        let mut v: Vec<(String, String)> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                if name.starts_with('.') {
                    return None;
                }
                Some((name, std::fs::read_to_string(e.path()).ok()?))
            })
            .collect();
        v.sort();
        v
    }

    /// `repo`'s tags in order: at most `n` after `last`.
    pub fn tags(
        &self,
        repo: &str,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<Vec<String>, RegistryError> {
        check_repo(repo)?;
        Ok(self
            .tag_digests(repo)
            .into_iter()
            .map(|(t, _)| t)
            .filter(|t| last.is_none_or(|l| t.as_str() > l))
            .take(n.unwrap_or(usize::MAX))
            .collect())
    }

    /// Whether `repo` has anything.
    pub fn has_repo(&self, repo: &str) -> bool {
        check_repo(repo).is_ok() && self.root.join("repos").join(repo).is_dir()
    }
}

/// What a garbage collection removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Manifests dropped from repositories.
    pub manifests: usize,
    /// Blobs deleted.
    pub blobs: usize,
    /// Their bytes.
    pub bytes: u64,
}

impl Storage {
    /// Collects garbage. Kept: every manifest a tag names, every manifest
    /// `keep` names (`(repository, digest)`: what releases and machines
    /// use), the manifests kept indexes name, and the blobs of all of
    /// those. Other manifests leave their repository; blobs nothing keeps
    /// are deleted once older than `min_age` (so that the layers of a push
    /// whose manifest has not come yet stay); upload sessions older than a
    /// day go too.
    pub fn gc(
        &self,
        keep: &[(String, String)],
        min_age: std::time::Duration,
    ) -> Result<GcReport, RegistryError> {
        let mut report = GcReport::default();
        let mut live: std::collections::HashSet<String> = std::collections::HashSet::new();
        let repos: Vec<String> = std::fs::read_dir(self.root.join("repos"))
            .map_err(io("listing repositories"))?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|r| check_repo(r).is_ok())
            .collect();
        for repo in repos {
            let dir = self.root.join("repos").join(&repo).join("manifests");
            let mut kept: Vec<String> = self
                .tag_digests(&repo)
                .into_iter()
                .map(|(_, d)| d)
                .chain(
                    keep.iter()
                        .filter(|(r, _)| *r == repo)
                        .map(|(_, d)| d.clone()),
                )
                .collect();
            // Kept indexes keep what they list.
            let mut i = 0;
            while i < kept.len() {
                if let Ok(m) = self.manifest(&repo, &kept[i]) {
                    let v: serde_json::Value = serde_json::from_slice(&m.bytes).unwrap_or_default();
                    for c in v["manifests"].as_array().into_iter().flatten() {
                        if let Some(d) = c["digest"].as_str() {
                            if !kept.iter().any(|k| k == d) {
                                kept.push(d.to_owned());
                            }
                        }
                    }
                }
                i += 1;
            }
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let Ok(hex) = e.file_name().into_string() else {
                    continue;
                };
                let digest = format!("sha256:{hex}");
                if kept.contains(&digest) {
                    live.insert(hex);
                    if let Ok(m) = self.manifest(&repo, &digest) {
                        let v: serde_json::Value =
                            serde_json::from_slice(&m.bytes).unwrap_or_default();
                        let named = v["config"]["digest"].as_str().into_iter().chain(
                            v["layers"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(|l| l["digest"].as_str()),
                        );
                        for d in named {
                            if let Ok(h) = digest_hex(d) {
                                live.insert(h.to_owned());
                            }
                        }
                    }
                } else if !hex.starts_with('.') {
                    let _ = std::fs::remove_file(e.path());
                    report.manifests += 1;
                }
            }
        }
        let now = std::time::SystemTime::now();
        let old_enough = |p: &Path, age: std::time::Duration| {
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|a| a >= age)
        };
        for e in std::fs::read_dir(self.root.join("blobs/sha256"))
            .map_err(io("listing blobs"))?
            .flatten()
        {
            let Ok(hex) = e.file_name().into_string() else {
                continue;
            };
            if live.contains(&hex) || !old_enough(&e.path(), min_age) {
                continue;
            }
            let size = e.metadata().map(|m| m.len()).unwrap_or(0);
            if std::fs::remove_file(e.path()).is_ok() {
                report.blobs += 1;
                report.bytes += size;
            }
        }
        for dir in std::fs::read_dir(self.root.join("uploads"))
            .into_iter()
            .flatten()
            .flatten()
        {
            for e in std::fs::read_dir(dir.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if old_enough(&e.path(), std::time::Duration::from_secs(86_400)) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        // Links to blobs that are gone go too.
        for repo in std::fs::read_dir(self.root.join("repos"))
            .into_iter()
            .flatten()
            .flatten()
        {
            for e in std::fs::read_dir(repo.path().join("blobs"))
                .into_iter()
                .flatten()
                .flatten()
            {
                if !self.root.join("blobs/sha256").join(e.file_name()).exists() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(report)
    }
}

fn hash_file(path: &Path) -> Result<String, RegistryError> {
    let mut f = std::fs::File::open(path).map_err(io("reading an upload"))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut HashWriter(&mut h)).map_err(io("hashing an upload"))?;
    Ok(hex::encode(h.finalize()))
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn sync_dir(dir: Option<&Path>) {
    if let Some(d) = dir {
        let _ = std::fs::File::open(d).and_then(|f| f.sync_all());
    }
}

/// Writes `bytes` to `path` through a synced temporary file and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RegistryError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let tmp = dir.join(format!(".tmp-{}", ulid::Ulid::new()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        RegistryError::Io {
            context: format!("writing {}", path.display()),
            source: e,
        }
    })?;
    sync_dir(Some(dir));
    Ok(())
}

#[cfg(test)]
mod tests;
