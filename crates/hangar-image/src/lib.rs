//! Hangar's image store.
//!
//! Images come from any OCI-distribution registry (through `oci-client`:
//! Docker Hub style names, token and basic auth, multi-arch indexes resolved
//! to linux/amd64, plain HTTP only for hosts named insecure) or from an OCI
//! layout / OCI or Docker archive imported by a user. Either way they land in
//! one content-addressed tree under the data dir:
//!
//! ```text
//! <root>/
//!   blobs/sha256/<hex>        image configs (and manifests of imports)
//!   layers/<diff_id hex>/     each layer unpacked once, overlayfs-ready
//!   manifests/<hex>.json      one record per image (config + layer list),
//!                             named by the manifest digest
//!   refs/<escaped name>       name -> manifest digest (+ where it came from)
//!   tmp/                      downloads and extractions in progress
//! ```
//!
//! Compressed layer blobs are dropped once unpacked: the unpacked layer is
//! what machines use. Concurrent requests for the same image share one pull,
//! and concurrent pulls of images that share a layer unpack it once.

#![forbid(unsafe_op_in_unsafe_fn)]

mod import;
mod local;
mod reference;
mod unpack;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, FutureExt, Shared};
use futures::{StreamExt, TryStreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;

/// What a manifest request accepts (oci-client's own list).
const MANIFEST_TYPES: &str = "application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";
use serde::{Deserialize, Serialize};

pub use local::{LocalManifest, LocalRegistry};
pub use reference::{ImageName, valid_digest};

/// What can go wrong getting an image.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ImageError {
    /// The reference cannot be parsed.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// What the user gave.
        reference: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The registry has no such image (or tag, or digest).
    #[error("image {reference} not found: {reason}")]
    NotFound {
        /// The normalized reference.
        reference: String,
        /// The registry's words.
        reason: String,
    },
    /// The registry refused our credentials (or wants some).
    #[error("registry {registry} refused access to {reference}: {reason}")]
    Unauthorized {
        /// Registry host.
        registry: String,
        /// The normalized reference.
        reference: String,
        /// The registry's words.
        reason: String,
    },
    /// The registry could not be reached.
    #[error("registry {registry} is unreachable: {reason}")]
    Unreachable {
        /// Registry host.
        registry: String,
        /// The transport's words.
        reason: String,
    },
    /// The registry answered with something we cannot use.
    #[error("registry error pulling {reference}: {reason}")]
    Registry {
        /// The normalized reference.
        reference: String,
        /// What went wrong.
        reason: String,
    },
    /// Content did not match its digest.
    #[error("digest mismatch pulling {reference}: {reason}")]
    DigestMismatch {
        /// The normalized reference.
        reference: String,
        /// Details.
        reason: String,
    },
    /// A layer is malformed.
    #[error("bad layer {diff_id}: {reason}")]
    BadLayer {
        /// The layer's diff_id.
        diff_id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The image is for another platform or uses unsupported media.
    #[error("unsupported image {reference}: {reason}")]
    Unsupported {
        /// The normalized reference.
        reference: String,
        /// Why.
        reason: String,
    },
    /// An imported archive is not an OCI layout, OCI archive or Docker archive.
    #[error("bad image archive: {0}")]
    BadArchive(String),
    /// Local storage failed.
    #[error("image store: {op} {path}: {reason}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The path involved.
        path: String,
        /// The OS error.
        reason: String,
    },
}

impl ImageError {
    pub(crate) fn io(op: &'static str, path: &Path, e: io::Error) -> ImageError {
        ImageError::Io {
            op,
            path: path.display().to_string(),
            reason: e.to_string(),
        }
    }

    /// Whether the error was caused by the request (bad reference, missing
    /// image, bad archive) rather than by the host.
    pub fn is_user_error(&self) -> bool {
        !matches!(self, ImageError::Io { .. })
    }
}

/// The process-related part of an image's config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `Entrypoint`.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `Env`.
    #[serde(default)]
    pub env: Vec<String>,
    /// `WorkingDir`.
    #[serde(default)]
    pub working_dir: String,
    /// `User`.
    #[serde(default)]
    pub user: String,
    /// `Labels`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `StopSignal`.
    #[serde(default)]
    pub stop_signal: Option<String>,
    /// `ExposedPorts` keys, e.g. `80/tcp`.
    #[serde(default)]
    pub exposed_ports: Vec<String>,
}

/// An image ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Registry host, e.g. `docker.io`.
    pub registry: String,
    /// Repository, e.g. `library/busybox`.
    pub repository: String,
    /// Tag it was resolved from, if any.
    pub tag: Option<String>,
    /// Manifest digest (for Docker archives, the config digest).
    pub digest: String,
    /// Process defaults.
    pub config: ImageConfig,
    /// Unpacked layer directories, bottom layer first.
    pub layers: Vec<PathBuf>,
}

impl Image {
    /// `registry/repository@digest`: resolves to exactly this image, offline.
    pub fn pinned_reference(&self) -> String {
        format!("{}/{}@{}", self.registry, self.repository, self.digest)
    }
}

/// A stored image, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSummary {
    /// The name it is filed under.
    pub name: String,
    /// Manifest digest.
    pub digest: String,
    /// `registry` or `import`.
    pub source: String,
    /// Number of layers.
    pub layers: usize,
}

/// Registry credentials, as in a Docker `config.json` (`auths`).
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    by_host: HashMap<String, (String, String)>,
}

impl Credentials {
    /// Reads the `auths` of a Docker `config.json`.
    pub fn from_docker_config(path: &Path) -> Result<Credentials, ImageError> {
        let text = std::fs::read_to_string(path).map_err(|e| ImageError::io("read", path, e))?;
        Credentials::parse_docker_config(&text).map_err(|reason| ImageError::Io {
            op: "parse",
            path: path.display().to_string(),
            reason,
        })
    }

    /// Parses the text of a Docker `config.json`.
    pub fn parse_docker_config(text: &str) -> Result<Credentials, String> {
        use base64::Engine as _;
        #[derive(Deserialize)]
        struct File {
            #[serde(default)]
            auths: HashMap<String, Entry>,
        }
        #[derive(Deserialize)]
        struct Entry {
            auth: Option<String>,
            username: Option<String>,
            password: Option<String>,
        }
        let f: File = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let mut by_host = HashMap::new();
        for (host, e) in f.auths {
            let pair = match (e.auth, e.username, e.password) {
                (Some(a), _, _) => {
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(a.trim())
                        .map_err(|_| format!("auth for {host} is not base64"))?;
                    let s = String::from_utf8(raw)
                        .map_err(|_| format!("auth for {host} is not UTF-8"))?;
                    let (u, p) = s
                        .split_once(':')
                        .ok_or_else(|| format!("auth for {host} is not user:password"))?;
                    (u.to_owned(), p.to_owned())
                }
                (None, Some(u), Some(p)) => (u, p),
                _ => continue,
            };
            let host = host
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .trim_end_matches("/v1/")
                .trim_end_matches('/')
                .to_owned();
            by_host.insert(host, pair);
        }
        Ok(Credentials { by_host })
    }

    /// Adds credentials for one registry host.
    pub fn insert(&mut self, host: &str, user: &str, password: &str) {
        self.by_host
            .insert(host.to_owned(), (user.to_owned(), password.to_owned()));
    }

    fn for_registry(&self, registry: &str) -> RegistryAuth {
        let aliases: &[&str] = if registry == "docker.io" {
            &["docker.io", "index.docker.io", "registry-1.docker.io"]
        } else {
            &[]
        };
        std::iter::once(registry)
            .chain(aliases.iter().copied())
            .find_map(|h| self.by_host.get(h))
            .map(|(u, p)| RegistryAuth::Basic(u.clone(), p.clone()))
            .unwrap_or(RegistryAuth::Anonymous)
    }
}

/// The registries of the other hosts of a cluster (each `hangard` serves
/// one): reached over plain HTTP on the hosts' API addresses.
pub trait PeerRegistries: std::fmt::Debug + Send + Sync {
    /// The user and password to pull from `registry` (`host:port`) with,
    /// when it is another host's.
    fn credentials(&self, registry: &str) -> Option<(String, String)>;
}

/// How the store talks to registries.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// `host:port`s reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Registry credentials.
    pub credentials: Credentials,
    /// The registry this process serves, read from its storage instead of
    /// over HTTP.
    pub local: Option<Arc<dyn LocalRegistry>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Source {
    Registry,
    Import,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RefEntry {
    digest: String,
    source: Source,
    /// What the registry answered for the tag when it was last pulled (an
    /// index's digest where `digest` is its platform manifest's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    served: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LayerRecord {
    digest: String,
    diff_id: String,
    media_type: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ImageRecord {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: String,
    config: ImageConfig,
    layers: Vec<LayerRecord>,
}

type PullFuture = Shared<BoxFuture<'static, Result<Image, ImageError>>>;

/// The image store. Cheap to clone.
#[derive(Clone)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    client: oci_client::Client,
    credentials: Credentials,
    pulls: Mutex<HashMap<String, PullFuture>>,
    pull_count: std::sync::atomic::AtomicU64,
    unchanged_count: std::sync::atomic::AtomicU64,
    local: Option<Arc<dyn LocalRegistry>>,
    local_pull_count: std::sync::atomic::AtomicU64,
    /// The other hosts of a cluster, whose registries answer over plain
    /// HTTP (set once the cluster is joined).
    peers: std::sync::OnceLock<Arc<dyn PeerRegistries>>,
    /// A client for peers: plain HTTP.
    peer_client: oci_client::Client,
    layer_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Asks open registries what a tag names (see [`ImageStore::head_open`]).
    head_client: reqwest::Client,
    insecure: Vec<String>,
    /// Registries that answered a `HEAD` without credentials with 401.
    closed: Mutex<std::collections::HashSet<String>>,
}

impl ImageStore {
    /// Opens (creating) the store at `root`.
    pub fn open(root: impl Into<PathBuf>, opts: StoreOptions) -> Result<ImageStore, ImageError> {
        let root = root.into();
        for d in ["blobs/sha256", "layers", "manifests", "refs", "tmp"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(|e| ImageError::io("create", &p, e))?;
        }
        // Leftovers of interrupted pulls and imports.
        let tmp = root.join("tmp");
        if let Ok(rd) = std::fs::read_dir(&tmp) {
            for e in rd.flatten() {
                unpack::remove_tree(&e.path());
            }
        }
        if let Ok(rd) = std::fs::read_dir(root.join("layers")) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(".tmp-") {
                    unpack::remove_tree(&e.path());
                }
            }
        }
        let head_client = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .timeout(std::time::Duration::from_secs(60))
            .user_agent(concat!("hangar/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ImageError::Registry {
                reference: String::new(),
                reason: format!("cannot make an HTTP client: {e}"),
            })?;
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(opts.insecure_registries.clone()),
            platform_resolver: Some(Box::new(oci_client::client::linux_amd64_resolver)),
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            read_timeout: Some(std::time::Duration::from_secs(60)),
            user_agent: concat!("hangar/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        };
        Ok(ImageStore {
            inner: Arc::new(Inner {
                root,
                client: oci_client::Client::new(config),
                credentials: opts.credentials,
                pulls: Mutex::new(HashMap::new()),
                pull_count: std::sync::atomic::AtomicU64::new(0),
                unchanged_count: std::sync::atomic::AtomicU64::new(0),
                local: opts.local,
                local_pull_count: std::sync::atomic::AtomicU64::new(0),
                peers: std::sync::OnceLock::new(),
                peer_client: oci_client::Client::new(ClientConfig {
                    protocol: ClientProtocol::Http,
                    platform_resolver: Some(Box::new(oci_client::client::linux_amd64_resolver)),
                    connect_timeout: Some(std::time::Duration::from_secs(10)),
                    read_timeout: Some(std::time::Duration::from_secs(60)),
                    user_agent: concat!("hangar/", env!("CARGO_PKG_VERSION")),
                    ..ClientConfig::default()
                }),
                layer_locks: Mutex::new(HashMap::new()),
                head_client,
                insecure: opts.insecure_registries,
                closed: Mutex::new(Default::default()),
            }),
        })
    }

    /// Registries of the other hosts of this host's cluster (once it has
    /// joined one).
    pub fn set_peers(&self, peers: Arc<dyn PeerRegistries>) {
        let _ = self.inner.peers.set(peers);
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Makes `image` available locally and returns it. A digest reference
    /// that is already stored, or an imported name, resolves without network;
    /// a tag is checked against its registry (falling back to the stored copy
    /// when the registry cannot be reached).
    pub async fn resolve(&self, image: &str) -> Result<Image, ImageError> {
        let name = ImageName::parse(image)?;
        if let Some(d) = &name.digest {
            if self.inner.visible(&name, d)? {
                if let Some(img) = self.inner.load_complete(d)? {
                    return Ok(img);
                }
            }
        } else if let Some(r) = self.inner.read_ref(&name.key())? {
            if r.source == Source::Import {
                if let Some(img) = self.inner.load_complete(&r.digest)? {
                    return Ok(img);
                }
            }
        }
        match self.shared_pull(name.clone()).await {
            Ok(img) => Ok(img),
            Err(e @ ImageError::Unreachable { .. }) => {
                // Offline: a copy pulled earlier still serves.
                if let Some(r) = self.inner.read_ref(&name.key())? {
                    if let Some(img) = self.inner.load_complete(&r.digest)? {
                        tracing::warn!(image = %name, error = %e, "registry unreachable; using the stored copy");
                        return Ok(img);
                    }
                }
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// One pull per reference at a time; late callers join the pull in
    /// flight. The pull runs in its own task, so it completes (and its work
    /// is kept) even if every caller goes away.
    fn shared_pull(&self, name: ImageName) -> PullFuture {
        let key = name.to_string();
        let mut pulls = self.inner.pulls.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = pulls.get(&key) {
            return f.clone();
        }
        let inner = self.inner.clone();
        let task = tokio::spawn({
            let inner = inner.clone();
            async move { inner.pull(&name).await }
        });
        let key2 = key.clone();
        let fut = async move {
            let result = match task.await {
                Ok(r) => r,
                Err(e) => Err(ImageError::Registry {
                    reference: key2.clone(),
                    reason: format!("pull task failed: {e}"),
                }),
            };
            inner
                .pulls
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key2);
            result
        }
        .boxed()
        .shared();
        pulls.insert(key, fut.clone());
        fut
    }

    /// Imports the image in an OCI layout, OCI archive or Docker archive
    /// (`archive` is a tar file) under `name`, or under the name the archive
    /// carries.
    pub async fn import_archive(
        &self,
        archive: &Path,
        name: Option<&str>,
    ) -> Result<Image, ImageError> {
        import::import(&self.inner, archive, name).await
    }

    /// A fresh path in the store's scratch area (for uploads).
    pub fn scratch_path(&self, prefix: &str) -> PathBuf {
        self.inner.root.join("tmp").join(format!(
            "{prefix}-{}-{:x}",
            std::process::id(),
            rand_u64()
        ))
    }

    /// How many registry pulls over HTTP this store has started (for tests
    /// and metrics).
    pub fn pull_count(&self) -> u64 {
        self.inner
            .pull_count
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many of those pulls found, with one `HEAD` of the tag, that it
    /// still names the image stored for it (nothing more fetched).
    pub fn unchanged_count(&self) -> u64 {
        self.inner
            .unchanged_count
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many images this store has read from the local registry's
    /// storage.
    pub fn local_pull_count(&self) -> u64 {
        self.inner
            .local_pull_count
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The images filed under a name.
    pub fn list(&self) -> Result<Vec<ImageSummary>, ImageError> {
        let dir = self.inner.root.join("refs");
        let mut out = Vec::new();
        let rd = std::fs::read_dir(&dir).map_err(|e| ImageError::io("read", &dir, e))?;
        for e in rd.flatten() {
            let name = unescape(&e.file_name().to_string_lossy());
            if let Some(r) = self.inner.read_ref(&name)? {
                let layers = self
                    .inner
                    .read_record(&r.digest)?
                    .map(|rec| rec.layers.len())
                    .unwrap_or(0);
                out.push(ImageSummary {
                    name,
                    digest: r.digest,
                    source: match r.source {
                        Source::Registry => "registry".into(),
                        Source::Import => "import".into(),
                    },
                    layers,
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// Ref names are file names: `/`, `:` and `@` are percent-escaped (the
/// reference grammar admits no other special characters, and no `..`).
fn escape(name: &str) -> String {
    name.replace('%', "%25")
        .replace('/', "%2F")
        .replace(':', "%3A")
        .replace('@', "%40")
}

fn unescape(name: &str) -> String {
    name.replace("%2F", "/")
        .replace("%3A", ":")
        .replace("%40", "@")
        .replace("%25", "%")
}

pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<(), ImageError> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp{:x}", rand_u64()));
    let write = || -> io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        ImageError::io("write", path, e)
    })
}

/// The raw OCI image config, as far as Hangar reads it.
#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    architecture: Option<String>,
    #[serde(default)]
    os: Option<String>,
    #[serde(default)]
    config: Option<RawProcess>,
    rootfs: RawRootfs,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawProcess {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    stop_signal: Option<String>,
    #[serde(default)]
    exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
}

#[derive(Deserialize)]
struct RawRootfs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// Parses an image config; returns the process defaults and the diff_ids.
pub(crate) fn parse_config(
    reference: &str,
    raw: &[u8],
) -> Result<(ImageConfig, Vec<String>), ImageError> {
    let c: RawConfig = serde_json::from_slice(raw).map_err(|e| ImageError::Registry {
        reference: reference.to_owned(),
        reason: format!("unreadable image config: {e}"),
    })?;
    if let Some(os) = &c.os {
        if os != "linux" {
            return Err(ImageError::Unsupported {
                reference: reference.to_owned(),
                reason: format!("image is for os {os:?}, not linux"),
            });
        }
    }
    if let Some(arch) = &c.architecture {
        if arch != "amd64" && !arch.is_empty() {
            return Err(ImageError::Unsupported {
                reference: reference.to_owned(),
                reason: format!("image is for architecture {arch:?}, this host runs amd64"),
            });
        }
    }
    for d in &c.rootfs.diff_ids {
        if !valid_digest(d) {
            return Err(ImageError::Unsupported {
                reference: reference.to_owned(),
                reason: format!("unsupported layer digest {d:?}"),
            });
        }
    }
    let p = c.config.unwrap_or_default();
    Ok((
        ImageConfig {
            entrypoint: p.entrypoint.unwrap_or_default(),
            cmd: p.cmd.unwrap_or_default(),
            env: p.env.unwrap_or_default(),
            working_dir: p.working_dir.unwrap_or_default(),
            user: p.user.unwrap_or_default(),
            labels: p.labels.unwrap_or_default(),
            stop_signal: p.stop_signal,
            exposed_ports: p.exposed_ports.unwrap_or_default().into_keys().collect(),
        },
        c.rootfs.diff_ids,
    ))
}

impl Inner {
    fn layer_dir(&self, diff_id: &str) -> PathBuf {
        self.root
            .join("layers")
            .join(reference::digest_hex(diff_id))
    }

    /// Files a small blob (an image config) under its digest.
    fn write_blob(&self, data: &[u8]) -> Result<String, ImageError> {
        use sha2::Digest as _;
        let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)));
        let p = self
            .root
            .join("blobs/sha256")
            .join(reference::digest_hex(&digest));
        if !p.exists() {
            write_atomic(&p, data)?;
        }
        Ok(digest)
    }

    fn read_ref(&self, key: &str) -> Result<Option<RefEntry>, ImageError> {
        let p = self.root.join("refs").join(escape(key));
        match std::fs::read(&p) {
            Ok(b) => Ok(serde_json::from_slice(&b).ok()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ImageError::io("read", &p, e)),
        }
    }

    fn write_ref(&self, key: &str, entry: &RefEntry) -> Result<(), ImageError> {
        let p = self.root.join("refs").join(escape(key));
        write_atomic(&p, &serde_json::to_vec(entry).unwrap_or_default())
    }

    fn read_record(&self, digest: &str) -> Result<Option<ImageRecord>, ImageError> {
        if !valid_digest(digest) {
            return Ok(None);
        }
        let p = self
            .root
            .join("manifests")
            .join(format!("{}.json", reference::digest_hex(digest)));
        match std::fs::read(&p) {
            Ok(b) => Ok(serde_json::from_slice(&b).ok()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ImageError::io("read", &p, e)),
        }
    }

    fn write_record(&self, rec: &ImageRecord) -> Result<(), ImageError> {
        let p = self
            .root
            .join("manifests")
            .join(format!("{}.json", reference::digest_hex(&rec.digest)));
        write_atomic(&p, &serde_json::to_vec_pretty(rec).unwrap_or_default())
    }

    /// The stored image with this manifest digest, if all its layers are here.
    fn load_complete(&self, digest: &str) -> Result<Option<Image>, ImageError> {
        let Some(rec) = self.read_record(digest)? else {
            return Ok(None);
        };
        let layers: Vec<PathBuf> = rec
            .layers
            .iter()
            .map(|l| self.layer_dir(&l.diff_id))
            .collect();
        if !layers.iter().all(|l| l.is_dir()) {
            return Ok(None);
        }
        Ok(Some(Image {
            registry: rec.registry,
            repository: rec.repository,
            tag: rec.tag,
            digest: rec.digest,
            config: rec.config,
            layers,
        }))
    }

    /// Whether `name` may use the stored image `digest`: in this host's
    /// registry only the repository it was pushed to (or mounted into) sees
    /// it, as over HTTP; elsewhere a digest names the same image anywhere.
    fn visible(&self, name: &ImageName, digest: &str) -> Result<bool, ImageError> {
        match self.local.as_ref().filter(|l| l.serves(&name.registry)) {
            Some(local) => local
                .manifest(&name.repository, digest)
                .map(|m| m.is_some())
                .map_err(|reason| ImageError::Registry {
                    reference: name.to_string(),
                    reason,
                }),
            None => Ok(true),
        }
    }

    fn layer_lock(&self, diff_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.layer_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(diff_id.to_owned())
            .or_default()
            .clone()
    }

    /// The client and credentials for `registry`: a peer host's over plain
    /// HTTP with its credentials, else the configured ones.
    fn client_for(&self, registry: &str) -> (&oci_client::Client, RegistryAuth) {
        if let Some((user, password)) = self.peers.get().and_then(|p| p.credentials(registry)) {
            return (&self.peer_client, RegistryAuth::Basic(user, password));
        }
        (&self.client, self.credentials.for_registry(registry))
    }

    fn map_oci(&self, name: &ImageName, e: OciDistributionError) -> ImageError {
        let reference = name.to_string();
        let registry = name.registry.clone();
        match e {
            OciDistributionError::ImageManifestNotFoundError(reason)
                if reason.contains("platform") =>
            {
                ImageError::Unsupported {
                    reference,
                    reason: "the image index has no linux/amd64 image".into(),
                }
            }
            OciDistributionError::ImageManifestNotFoundError(reason) => {
                ImageError::NotFound { reference, reason }
            }
            OciDistributionError::RegistryError { envelope, .. } => {
                let not_found = envelope.errors.iter().any(|e| {
                    matches!(
                        e.code,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::NotFound
                            | OciErrorCode::BlobUnknown
                    )
                });
                let denied = envelope
                    .errors
                    .iter()
                    .any(|e| matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied));
                let reason = envelope
                    .errors
                    .iter()
                    .map(|e| e.message.clone())
                    .collect::<Vec<_>>()
                    .join("; ");
                if not_found {
                    ImageError::NotFound { reference, reason }
                } else if denied {
                    ImageError::Unauthorized {
                        registry,
                        reference,
                        reason,
                    }
                } else {
                    ImageError::Registry { reference, reason }
                }
            }
            OciDistributionError::AuthenticationFailure(reason) => ImageError::Unauthorized {
                registry,
                reference,
                reason,
            },
            OciDistributionError::UnauthorizedError { url } => ImageError::Unauthorized {
                registry,
                reference,
                reason: format!("401 from {url}"),
            },
            OciDistributionError::ServerError {
                code: 404, message, ..
            } => ImageError::NotFound {
                reference,
                reason: message,
            },
            OciDistributionError::RequestError(e) => ImageError::Unreachable {
                registry,
                reason: hangar_core::errors::error_chain(&e),
            },
            OciDistributionError::DigestError(e) => ImageError::DigestMismatch {
                reference,
                reason: e.to_string(),
            },
            OciDistributionError::IoError(e) => ImageError::Io {
                op: "download",
                path: reference,
                reason: e.to_string(),
            },
            e @ (OciDistributionError::ImageIndexParsingNoPlatformResolverError
            | OciDistributionError::UnsupportedMediaTypeError(_)
            | OciDistributionError::UnsupportedSchemaVersionError(_)) => ImageError::Unsupported {
                reference,
                reason: e.to_string(),
            },
            other => {
                let reason = other.to_string();
                if reason.contains("platform") {
                    ImageError::Unsupported { reference, reason }
                } else {
                    ImageError::Registry { reference, reason }
                }
            }
        }
    }

    async fn pull(self: &Arc<Self>, name: &ImageName) -> Result<Image, ImageError> {
        let since = std::time::Instant::now();
        let local = self
            .local
            .as_ref()
            .is_some_and(|l| l.serves(&name.registry));
        let r = self.pull_now(name).await;
        let m = hangar_metrics::get();
        m.image_pulls
            .get_or_create(&hangar_metrics::PullLabels {
                source: if local { "local" } else { "registry" },
                outcome: if r.is_ok() { "ok" } else { "error" },
            })
            .inc();
        m.image_pull_seconds.observe(since.elapsed().as_secs_f64());
        r
    }

    async fn pull_now(self: &Arc<Self>, name: &ImageName) -> Result<Image, ImageError> {
        if let Some(local) = self.local.as_ref().filter(|l| l.serves(&name.registry)) {
            self.local_pull_count
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return local::pull(self, local, name).await;
        }
        let reference = name.to_oci();
        let (client, auth) = self.client_for(&name.registry);
        self.pull_count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(image = %name, "pulling image");
        // A tag that still names what was pulled for it before is
        // answered by one HEAD of the manifest (what the registry serves
        // for the tag), not the manifest and the config again.
        let served = match name.digest {
            Some(_) => None,
            None => match self.head_open(&reference, &auth).await {
                Some(d) => Some(d),
                None => client.fetch_manifest_digest(&reference, &auth).await.ok(),
            },
        };
        if let Some(served) = &served {
            if let Some(img) = self.still_current(name, served)? {
                return Ok(img);
            }
        }
        let (manifest, digest, config) = client
            .pull_manifest_and_config(&reference, &auth)
            .await
            .map_err(|e| self.map_oci(name, e))?;
        if let Some(want) = &name.digest {
            // A digest reference to an index resolves to a platform manifest;
            // only a direct manifest must match exactly.
            if want != &digest && manifest.layers.is_empty() {
                return Err(ImageError::DigestMismatch {
                    reference: name.to_string(),
                    reason: format!("asked for {want}, registry served {digest}"),
                });
            }
        }
        let (image_config, diff_ids) = parse_config(&name.to_string(), config.as_bytes())?;
        self.write_blob(config.as_bytes())?;
        if diff_ids.len() != manifest.layers.len() {
            return Err(ImageError::Registry {
                reference: name.to_string(),
                reason: format!(
                    "manifest lists {} layers but the config {}",
                    manifest.layers.len(),
                    diff_ids.len()
                ),
            });
        }
        let pairs: Vec<(OciDescriptor, String)> =
            manifest.layers.iter().cloned().zip(diff_ids).collect();
        let layers: Vec<LayerRecord> =
            futures::stream::iter(pairs.into_iter().map(|(desc, diff_id)| {
                let this = self.clone();
                let name = name.clone();
                async move {
                    this.ensure_layer_from_registry(&name, &desc, &diff_id)
                        .await?;
                    Ok::<_, ImageError>(LayerRecord {
                        digest: desc.digest.clone(),
                        diff_id,
                        media_type: desc.media_type.clone(),
                    })
                }
            }))
            .buffered(3)
            .try_collect()
            .await?;
        self.file_pulled(name, digest, image_config, layers, served.as_deref())
    }

    /// The digest a registry that anyone may read serves for `reference`'s
    /// tag, asked with one `HEAD` of its manifest. oci-client asks such a
    /// registry `/v2/` before every request (it keeps no token for it,
    /// there is none), a second round trip on every create. None (ask
    /// through oci-client) with credentials, for a registry that answered
    /// 401 before, or without a digest in the answer.
    async fn head_open(
        &self,
        reference: &oci_client::Reference,
        auth: &RegistryAuth,
    ) -> Option<String> {
        if !matches!(auth, RegistryAuth::Anonymous) || reference.namespace().is_some() {
            return None;
        }
        let registry = reference.resolve_registry();
        let closed = self
            .closed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(registry);
        if closed {
            return None;
        }
        let scheme = if self.insecure.iter().any(|r| r == registry) {
            "http"
        } else {
            "https"
        };
        let url = format!(
            "{scheme}://{registry}/v2/{}/manifests/{}",
            reference.repository(),
            reference.tag().unwrap_or("latest")
        );
        let res = self
            .head_client
            .head(&url)
            .header(reqwest::header::ACCEPT, MANIFEST_TYPES)
            .send()
            .await
            .ok()?;
        if res.status() == reqwest::StatusCode::UNAUTHORIZED {
            self.closed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(registry.to_owned());
            return None;
        }
        if !res.status().is_success() {
            return None;
        }
        let digest = res.headers().get("docker-content-digest")?.to_str().ok()?;
        reference::valid_digest(digest).then(|| digest.to_owned())
    }

    /// The image the tag of `name` was pulled as, if the registry still
    /// serves `served` for it and the image is complete here.
    fn still_current(&self, name: &ImageName, served: &str) -> Result<Option<Image>, ImageError> {
        let Some(r) = self.read_ref(&name.key())? else {
            return Ok(None);
        };
        if r.source != Source::Registry
            || !(r.digest == served || r.served.as_deref() == Some(served))
        {
            return Ok(None);
        }
        let img = self.load_complete(&r.digest)?;
        if img.is_some() {
            self.unchanged_count
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(image = %name, digest = %r.digest, "tag unchanged in the registry");
        }
        Ok(img)
    }

    /// Files an image whose layers are all unpacked: its record, and its tag
    /// when that names something new.
    fn file_pulled(
        &self,
        name: &ImageName,
        digest: String,
        config: ImageConfig,
        layers: Vec<LayerRecord>,
        served: Option<&str>,
    ) -> Result<Image, ImageError> {
        let rec = ImageRecord {
            registry: name.registry.clone(),
            repository: name.repository.clone(),
            tag: name.tag.clone(),
            digest: digest.clone(),
            config,
            layers,
        };
        // A tag that still names the image we have needs no new records.
        let known = self.read_record(&digest)?.is_some();
        let current = name.tag.is_none()
            || self.read_ref(&name.key())?.is_some_and(|r| {
                r.digest == digest
                    && r.source == Source::Registry
                    && (served.is_none()
                        || r.served.as_deref() == served
                        || served == Some(&*digest))
            });
        if !known {
            self.write_record(&rec)?;
        }
        if !current {
            self.write_ref(
                &name.key(),
                &RefEntry {
                    digest: digest.clone(),
                    source: Source::Registry,
                    served: served.map(str::to_owned),
                },
            )?;
        }
        tracing::info!(image = %name, %digest, "image ready");
        self.load_complete(&digest)?.ok_or_else(|| ImageError::Io {
            op: "verify",
            path: digest,
            reason: "layers missing right after the pull".into(),
        })
    }

    async fn ensure_layer_from_registry(
        self: &Arc<Self>,
        name: &ImageName,
        desc: &OciDescriptor,
        diff_id: &str,
    ) -> Result<(), ImageError> {
        let dest = self.layer_dir(diff_id);
        if dest.is_dir() {
            return Ok(());
        }
        if desc.media_type.contains("foreign") {
            return Err(ImageError::Unsupported {
                reference: name.to_string(),
                reason: format!("foreign layer {} cannot be pulled", desc.digest),
            });
        }
        let lock = self.layer_lock(diff_id);
        let _guard = lock.lock().await;
        if dest.is_dir() {
            return Ok(());
        }
        let tmp = self.root.join("tmp").join(format!(
            "blob-{}-{:x}",
            reference::digest_hex(&desc.digest),
            rand_u64()
        ));
        let file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| ImageError::io("create", &tmp, e))?;
        let (client, _) = self.client_for(&name.registry);
        let result = client
            .pull_blob(&name.to_oci(), desc, file)
            .await
            .map_err(|e| self.map_oci(name, e));
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        self.unpack(tmp, diff_id.to_owned(), true).await
    }

    /// Unpacks a verified blob into the layer tree (blocking work on the
    /// blocking pool); removes the blob afterwards when `consume`.
    async fn unpack(
        &self,
        blob: PathBuf,
        diff_id: String,
        consume: bool,
    ) -> Result<(), ImageError> {
        let dest = self.layer_dir(&diff_id);
        let result = tokio::task::spawn_blocking(move || {
            let r = unpack::unpack_layer(&blob, &diff_id, &dest);
            if consume {
                let _ = std::fs::remove_file(&blob);
            }
            r
        })
        .await;
        match result {
            Ok(r) => r,
            Err(e) => Err(ImageError::Io {
                op: "unpack",
                path: String::new(),
                reason: e.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_names() {
        let n = "127.0.0.1:5000/a/b:v1";
        let e = escape(n);
        assert!(!e.contains('/') && !e.contains(':'));
        assert_eq!(unescape(&e), n);
    }

    #[test]
    fn docker_config_credentials() {
        let text = r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dXNlcjpwYXNz"},
            "127.0.0.1:5000":{"username":"u","password":"p:w"}}}"#;
        let c = Credentials::parse_docker_config(text).unwrap();
        assert!(
            matches!(c.for_registry("docker.io"), RegistryAuth::Basic(u, p) if u == "user" && p == "pass")
        );
        assert!(
            matches!(c.for_registry("127.0.0.1:5000"), RegistryAuth::Basic(u, p) if u == "u" && p == "p:w")
        );
        assert!(matches!(c.for_registry("ghcr.io"), RegistryAuth::Anonymous));
        assert!(Credentials::parse_docker_config(r#"{"auths":{"x":{"auth":"!!"}}}"#).is_err());
    }

    #[test]
    fn config_parsing() {
        let raw = br#"{"architecture":"amd64","os":"linux","config":{"Cmd":["/bin/sh"],"Env":["PATH=/bin"],"Entrypoint":null,"ExposedPorts":{"80/tcp":{}}},"rootfs":{"type":"layers","diff_ids":["sha256:0000000000000000000000000000000000000000000000000000000000000000"]}}"#;
        let (c, d) = parse_config("x", raw).unwrap();
        assert_eq!(c.cmd, vec!["/bin/sh"]);
        assert!(c.entrypoint.is_empty());
        assert_eq!(c.exposed_ports, vec!["80/tcp"]);
        assert_eq!(d.len(), 1);
        let arm = br#"{"architecture":"arm64","os":"linux","rootfs":{"diff_ids":[]}}"#;
        assert!(matches!(
            parse_config("x", arm),
            Err(ImageError::Unsupported { .. })
        ));
    }
}
