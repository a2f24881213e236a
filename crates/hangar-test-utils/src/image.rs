//! Test images built in process from the host's static busybox: no download,
//! no Docker. A [`BuiltImage`] can be pushed to a [`crate::registry::Registry`]
//! or written as an OCI layout archive or a Docker archive for import.

use std::io::Write;

use sha2::{Digest, Sha256};

/// Layer compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip (the common case).
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    fn media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    fn compress(self, tar: &[u8]) -> Vec<u8> {
        match self {
            Compression::None => tar.to_vec(),
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(tar).unwrap();
                e.finish().unwrap()
            }
            Compression::Zstd => zstd::encode_all(tar, 3).unwrap(),
        }
    }
}

/// One layer's entries.
#[derive(Default)]
pub struct Layer {
    builder: Option<tar::Builder<Vec<u8>>>,
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(size);
    h
}

impl Layer {
    /// An empty layer.
    pub fn new() -> Layer {
        Layer {
            builder: Some(tar::Builder::new(Vec::new())),
        }
    }

    fn b(&mut self) -> &mut tar::Builder<Vec<u8>> {
        self.builder
            .get_or_insert_with(|| tar::Builder::new(Vec::new()))
    }

    /// A regular file.
    pub fn file(mut self, path: &str, data: &[u8], mode: u32) -> Layer {
        let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
        self.b().append_data(&mut h, path, data).unwrap();
        self
    }

    /// A directory.
    pub fn dir(mut self, path: &str, mode: u32) -> Layer {
        let mut h = header(tar::EntryType::Directory, mode, 0);
        self.b().append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    /// A symlink.
    pub fn symlink(mut self, path: &str, target: &str) -> Layer {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        self.b().append_link(&mut h, path, target).unwrap();
        self
    }

    /// An OCI whiteout hiding `path` of lower layers.
    pub fn whiteout(self, path: &str) -> Layer {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let wh = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        self.file(&wh, b"", 0o644)
    }

    /// An opaque-directory marker for `dir`.
    pub fn opaque(self, dir: &str) -> Layer {
        self.file(&format!("{dir}/.wh..wh..opq"), b"", 0o644)
    }

    /// A root filesystem with the host's static busybox and its applets in
    /// `/bin`, `/etc/passwd` (root and nobody), `/etc/group`, and empty
    /// `/tmp`, `/proc`, `/sys`, `/dev`, `/root`, `/www`.
    pub fn busybox() -> Layer {
        let busybox = std::fs::read("/bin/busybox").unwrap_or_else(|_| {
            panic!("/bin/busybox is required: apt-get install -y busybox-static")
        });
        let list = std::process::Command::new("/bin/busybox")
            .arg("--list")
            .output()
            .expect("busybox --list");
        let mut l = Layer::new()
            .dir("bin", 0o755)
            .dir("etc", 0o755)
            .dir("tmp", 0o1777)
            .dir("proc", 0o555)
            .dir("sys", 0o555)
            .dir("dev", 0o755)
            .dir("root", 0o700)
            .dir("www", 0o755)
            .file("bin/busybox", &busybox, 0o755)
            .file(
                "etc/passwd",
                b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\nbob:x:1000:1000:bob:/tmp:/bin/sh\n",
                0o644,
            )
            .file(
                "etc/group",
                b"root:x:0:\nnogroup:x:65534:\nbob:x:1000:\nstaff:x:50:bob\n",
                0o644,
            )
            .file("www/index.html", b"<h1>hello from hangar</h1>\n", 0o644);
        for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
            if applet != "busybox" {
                l = l.symlink(&format!("bin/{applet}"), "busybox");
            }
        }
        l
    }

    fn finish(mut self) -> Vec<u8> {
        self.b();
        self.builder.take().unwrap().into_inner().unwrap()
    }
}

/// Builds a [`BuiltImage`].
pub struct ImageBuilder {
    layers: Vec<Layer>,
    compression: Compression,
    config: serde_json::Value,
    architecture: String,
}

impl ImageBuilder {
    /// An image whose first layer is [`Layer::busybox`], with
    /// `CMD ["/bin/sh"]` and `PATH=/bin`.
    pub fn busybox() -> ImageBuilder {
        ImageBuilder {
            layers: vec![Layer::busybox()],
            compression: Compression::Gzip,
            config: serde_json::json!({
                "Cmd": ["/bin/sh"],
                "Env": ["PATH=/bin:/sbin:/usr/bin:/usr/sbin"],
                "WorkingDir": "/",
            }),
            architecture: "amd64".into(),
        }
    }

    /// Adds a layer on top.
    pub fn layer(mut self, l: Layer) -> ImageBuilder {
        self.layers.push(l);
        self
    }

    /// Compression of every layer.
    pub fn compression(mut self, c: Compression) -> ImageBuilder {
        self.compression = c;
        self
    }

    /// Sets a field of the config's `config` object (`Cmd`, `Entrypoint`,
    /// `Env`, `WorkingDir`, `User`, `Labels`, ...).
    pub fn set(mut self, key: &str, value: serde_json::Value) -> ImageBuilder {
        self.config[key] = value;
        self
    }

    /// The `architecture` of the config (for multi-arch tests).
    pub fn architecture(mut self, arch: &str) -> ImageBuilder {
        self.architecture = arch.into();
        self
    }

    /// Builds the blobs.
    pub fn build(self) -> BuiltImage {
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        for l in self.layers {
            let tar = l.finish();
            let diff_id = sha256(&tar);
            let blob = self.compression.compress(&tar);
            layers.push((
                blob,
                self.compression.media_type().to_owned(),
                diff_id.clone(),
            ));
            diff_ids.push(diff_id);
        }
        // One history entry per layer, as builders expect of a base image.
        let history: Vec<serde_json::Value> = (0..diff_ids.len())
            .map(|i| serde_json::json!({"created_by": format!("hangar-test-utils layer {i}")}))
            .collect();
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": self.architecture,
            "os": "linux",
            "config": self.config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": history,
        }))
        .unwrap();
        BuiltImage { layers, config }
    }
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// An image's blobs.
pub struct BuiltImage {
    /// `(blob, media type, diff_id)` per layer, bottom first.
    pub layers: Vec<(Vec<u8>, String, String)>,
    /// The config blob.
    pub config: Vec<u8>,
}

impl BuiltImage {
    /// Media type of the manifests this builds.
    pub const MANIFEST_TYPE: &'static str = "application/vnd.oci.image.manifest.v1+json";

    /// The OCI image manifest.
    pub fn manifest(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": Self::MANIFEST_TYPE,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha256(&self.config),
                "size": self.config.len(),
            },
            "layers": self.layers.iter().map(|(b, mt, _)| serde_json::json!({
                "mediaType": mt, "digest": sha256(b), "size": b.len(),
            })).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    /// The manifest's digest.
    pub fn digest(&self) -> String {
        sha256(&self.manifest())
    }

    /// An OCI image layout as a tar stream (what `skopeo copy ...
    /// oci-archive:` writes), with `ref_name` as the
    /// `org.opencontainers.image.ref.name` annotation.
    pub fn oci_archive(&self, ref_name: Option<&str>) -> Vec<u8> {
        let manifest = self.manifest();
        let mut desc = serde_json::json!({
            "mediaType": Self::MANIFEST_TYPE,
            "digest": sha256(&manifest),
            "size": manifest.len(),
        });
        if let Some(r) = ref_name {
            desc["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": r});
        }
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "manifests": [desc],
        }))
        .unwrap();
        let mut t = Layer::new()
            .file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#, 0o644)
            .file("index.json", &index, 0o644)
            .dir("blobs", 0o755)
            .dir("blobs/sha256", 0o755);
        let mut blobs: Vec<&[u8]> = vec![&manifest, &self.config];
        blobs.extend(self.layers.iter().map(|(b, _, _)| b.as_slice()));
        for b in blobs {
            let name = format!("blobs/sha256/{}", &sha256(b)[7..]);
            t = t.file(&name, b, 0o644);
        }
        t.finish()
    }

    /// A Docker archive (`docker save` format) tagged `repo_tag`.
    pub fn docker_archive(&self, repo_tag: &str) -> Vec<u8> {
        let cfg_name = format!("{}.json", &sha256(&self.config)[7..]);
        let mut t = Layer::new().file(&cfg_name, &self.config, 0o644);
        let mut layer_names = Vec::new();
        for (i, (blob, _, _)) in self.layers.iter().enumerate() {
            let n = format!("layer{i}/layer.tar");
            t = t.dir(&format!("layer{i}"), 0o755).file(&n, blob, 0o644);
            layer_names.push(n);
        }
        let manifest = serde_json::to_vec(&serde_json::json!([{
            "Config": cfg_name, "RepoTags": [repo_tag], "Layers": layer_names,
        }]))
        .unwrap();
        t.file("manifest.json", &manifest, 0o644).finish()
    }
}
