//! A real OCI registry (Debian's `docker-registry`, i.e. distribution) on a
//! free loopback port, optionally with basic auth, and a minimal pusher.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::image::BuiltImage;

/// A running registry; stopped and removed on drop.
pub struct Registry {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    child: Child,
    _dir: tempfile::TempDir,
    auth: Option<(String, String)>,
    http: reqwest::Client,
}

impl Registry {
    /// Starts an open registry.
    pub async fn start() -> Registry {
        Registry::start_with(None, "127.0.0.1").await
    }

    /// Starts an open registry on `ip` (an address of a bridge the test
    /// made, for daemons in network namespaces of their own).
    pub async fn start_on(ip: &str) -> Registry {
        Registry::start_with(None, ip).await
    }

    /// Starts a registry that demands `user`/`password` (basic auth).
    pub async fn start_with_auth(user: &str, password: &str) -> Registry {
        Registry::start_with(Some((user.to_owned(), password.to_owned())), "127.0.0.1").await
    }

    async fn start_with(auth: Option<(String, String)>, ip: &str) -> Registry {
        crate::require_program("docker-registry", "docker-registry");
        let dir = tempfile::tempdir().expect("tempdir");
        let port = crate::free_port();
        let addr = format!("{ip}:{port}");
        let data = dir.path().join("data");
        let mut config = format!(
            "version: 0.1\nlog: {{ level: error }}\nstorage:\n  filesystem: {{ rootdirectory: {} }}\n  delete: {{ enabled: true }}\nhttp:\n  addr: {addr}\n  secret: hangar-test\n",
            data.display()
        );
        if let Some((u, p)) = &auth {
            let hash = bcrypt::hash(p, 4).expect("bcrypt");
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{u}:{hash}\n")).expect("htpasswd");
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: hangar-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let cfg_path: PathBuf = dir.path().join("config.yml");
        std::fs::write(&cfg_path, config).expect("registry config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let http = reqwest::Client::new();
        let reg = Registry {
            addr: addr.clone(),
            child,
            _dir: dir,
            auth,
            http,
        };
        let url = format!("http://{addr}/v2/");
        let h = reg.http.clone();
        crate::wait_until(Duration::from_secs(15), "docker-registry to listen", || {
            let h = h.clone();
            let url = url.clone();
            async move { h.get(&url).send().await.ok().map(|_| ()) }
        })
        .await;
        reg
    }

    fn req(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, url);
        match &self.auth {
            Some((u, p)) => r.basic_auth(u, Some(p)),
            None => r,
        }
    }

    /// Uploads a blob; returns its digest.
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(data)));
        let start = self
            .req(
                reqwest::Method::POST,
                &format!("http://{}/v2/{repo}/blobs/uploads/", self.addr),
            )
            .send()
            .await
            .expect("start upload");
        assert_eq!(start.status(), 202, "start upload: {}", start.status());
        let loc = start.headers()["location"].to_str().unwrap().to_owned();
        let loc = if loc.starts_with("http") {
            loc
        } else {
            format!("http://{}{loc}", self.addr)
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let put = self
            .req(reqwest::Method::PUT, &format!("{loc}{sep}digest={digest}"))
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .expect("upload blob");
        assert_eq!(
            put.status(),
            201,
            "upload blob: {}",
            put.text().await.unwrap_or_default()
        );
        digest
    }

    /// Uploads a manifest under `reference` (tag or digest); returns its digest.
    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> String {
        let r = self
            .req(
                reqwest::Method::PUT,
                &format!("http://{}/v2/{repo}/manifests/{reference}", self.addr),
            )
            .header("content-type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .expect("put manifest");
        assert_eq!(
            r.status(),
            201,
            "put manifest: {}",
            r.text().await.unwrap_or_default()
        );
        format!("sha256:{}", hex::encode(Sha256::digest(body)))
    }

    /// Pushes a built image as `repo:tag`; returns the manifest digest.
    pub async fn push(&self, repo: &str, tag: &str, image: &BuiltImage) -> String {
        for (blob, _, _) in &image.layers {
            self.push_blob(repo, blob).await;
        }
        self.push_blob(repo, &image.config).await;
        self.push_manifest(repo, tag, BuiltImage::MANIFEST_TYPE, &image.manifest())
            .await
    }

    /// Pushes a multi-arch index as `repo:tag` whose entries are
    /// `(image, os, architecture)`; returns the index digest.
    pub async fn push_index(
        &self,
        repo: &str,
        tag: &str,
        entries: &[(&BuiltImage, &str, &str)],
    ) -> String {
        let mut manifests = Vec::new();
        for (image, os, arch) in entries {
            for (blob, _, _) in &image.layers {
                self.push_blob(repo, blob).await;
            }
            self.push_blob(repo, &image.config).await;
            let m = image.manifest();
            let digest = self
                .push_manifest(
                    repo,
                    &format!("sha256:{}", hex::encode(Sha256::digest(&m))),
                    BuiltImage::MANIFEST_TYPE,
                    &m,
                )
                .await;
            manifests.push(serde_json::json!({
                "mediaType": BuiltImage::MANIFEST_TYPE,
                "digest": digest,
                "size": m.len(),
                "platform": {"os": os, "architecture": arch},
            }));
        }
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        }))
        .unwrap();
        self.push_manifest(repo, tag, "application/vnd.oci.image.index.v1+json", &index)
            .await
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
