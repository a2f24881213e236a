//! The image store against a real registry (Debian's docker-registry on
//! loopback) and real archives, with images built from the host's busybox.

use std::path::Path;

use hangar_image::{Credentials, ImageError, ImageStore, StoreOptions};
use hangar_test_utils::image::{Compression, ImageBuilder, Layer};
use hangar_test_utils::registry::Registry;

fn store(dir: &Path, reg: &Registry) -> ImageStore {
    store_at(&dir.join("images"), &reg.addr)
}

/// A store at `root` that reaches `addr` over plain HTTP.
fn store_at(root: &Path, addr: &str) -> ImageStore {
    ImageStore::open(
        root,
        StoreOptions {
            insecure_registries: vec![addr.to_owned()],
            ..StoreOptions::default()
        },
    )
    .unwrap()
}

#[tokio::test]
async fn pulls_by_tag_then_resolves_by_digest_offline() {
    if !hangar_test_utils::host_tier(
        "pulls_by_tag_then_resolves_by_digest_offline",
        &["docker-registry"],
    ) {
        return;
    }
    let reg = Registry::start().await;
    let img = ImageBuilder::busybox()
        .layer(
            Layer::new()
                .file("etc/motd", b"layer two\n", 0o644)
                .whiteout("www/index.html"),
        )
        .set("Entrypoint", serde_json::json!(["/bin/sh", "-c"]))
        .set("Cmd", serde_json::json!(["echo hi"]))
        .build();
    let digest = reg.push("test/bb", "v1", &img).await;
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), &reg);

    let got = s
        .resolve(&format!("{}/test/bb:v1", reg.addr))
        .await
        .unwrap();
    assert_eq!(got.digest, digest);
    assert_eq!(got.registry, reg.addr);
    assert_eq!(got.repository, "test/bb");
    assert_eq!(got.config.entrypoint, vec!["/bin/sh", "-c"]);
    assert_eq!(got.layers.len(), 2);
    assert!(got.layers[0].join("bin/busybox").is_file());
    assert_eq!(
        std::fs::read(got.layers[1].join("etc/motd")).unwrap(),
        b"layer two\n"
    );
    assert!(
        got.layers[1]
            .join("www/index.html")
            .symlink_metadata()
            .is_ok()
    );

    // The registry goes away: the pinned reference still resolves, and so
    // does the tag (from the stored copy).
    let pinned = got.pinned_reference();
    drop(reg);
    let again = s.resolve(&pinned).await.unwrap();
    assert_eq!(again.layers, got.layers);
    let by_tag = s
        .resolve(&format!("{}/test/bb:v1", got.registry))
        .await
        .unwrap();
    assert_eq!(by_tag.digest, digest);
}

#[tokio::test]
async fn zstd_and_plain_layers() {
    if !hangar_test_utils::host_tier("zstd_and_plain_layers", &["docker-registry"]) {
        return;
    }
    let reg = Registry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), &reg);
    for (tag, c) in [("zstd", Compression::Zstd), ("plain", Compression::None)] {
        let img = ImageBuilder::busybox()
            .layer(Layer::new().file("tag", tag.as_bytes(), 0o644))
            .compression(c)
            .build();
        reg.push("test/c", tag, &img).await;
        let got = s
            .resolve(&format!("{}/test/c:{tag}", reg.addr))
            .await
            .unwrap();
        assert_eq!(
            std::fs::read(got.layers[1].join("tag")).unwrap(),
            tag.as_bytes()
        );
    }
}

#[tokio::test]
async fn multi_arch_index_picks_linux_amd64() {
    if !hangar_test_utils::host_tier("multi_arch_index_picks_linux_amd64", &["docker-registry"]) {
        return;
    }
    let reg = Registry::start().await;
    let amd = ImageBuilder::busybox()
        .layer(Layer::new().file("arch", b"amd64", 0o644))
        .build();
    let arm = ImageBuilder::busybox()
        .layer(Layer::new().file("arch", b"arm64", 0o644))
        .architecture("arm64")
        .build();
    reg.push_index(
        "test/multi",
        "latest",
        &[(&arm, "linux", "arm64"), (&amd, "linux", "amd64")],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), &reg);
    let got = s
        .resolve(&format!("{}/test/multi", reg.addr))
        .await
        .unwrap();
    assert_eq!(got.digest, amd.digest());
    assert_eq!(std::fs::read(got.layers[1].join("arch")).unwrap(), b"amd64");
    // Resolved again: the registry still serves the same index for the tag
    // (its digest is not the platform manifest's), so nothing is fetched.
    let again = s
        .resolve(&format!("{}/test/multi", reg.addr))
        .await
        .unwrap();
    assert_eq!(again.digest, amd.digest());
    assert_eq!(s.unchanged_count(), 1);

    reg.push_index("test/armonly", "latest", &[(&arm, "linux", "arm64")])
        .await;
    let err = s
        .resolve(&format!("{}/test/armonly", reg.addr))
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("linux/amd64"), "{err}");
}

#[tokio::test]
async fn concurrent_resolves_share_one_pull() {
    if !hangar_test_utils::host_tier("concurrent_resolves_share_one_pull", &["docker-registry"]) {
        return;
    }
    let reg = Registry::start().await;
    let img = ImageBuilder::busybox().build();
    reg.push("test/once", "v1", &img).await;
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), &reg);
    let name = format!("{}/test/once:v1", reg.addr);
    let results = futures::future::join_all((0..8).map(|_| s.resolve(&name))).await;
    for r in &results {
        assert_eq!(r.as_ref().unwrap().digest, img.digest());
    }
    assert_eq!(s.pull_count(), 1);
    assert_eq!(s.unchanged_count(), 0);

    // The tag checked again: one HEAD finds it unchanged.
    assert_eq!(s.resolve(&name).await.unwrap().digest, img.digest());
    assert_eq!(s.unchanged_count(), 1);
    // Moved to another image: pulled whole.
    let moved = ImageBuilder::busybox()
        .layer(Layer::new().file("moved", b"yes", 0o644))
        .build();
    reg.push("test/once", "v1", &moved).await;
    let got = s.resolve(&name).await.unwrap();
    assert_eq!(got.digest, moved.digest());
    assert_eq!(s.unchanged_count(), 1);
    assert_eq!(std::fs::read(got.layers[1].join("moved")).unwrap(), b"yes");
    assert_eq!(s.resolve(&name).await.unwrap().digest, moved.digest());
    assert_eq!(s.unchanged_count(), 2);
}

#[tokio::test]
async fn failures_are_clear() {
    if !hangar_test_utils::host_tier("failures_are_clear", &["docker-registry"]) {
        return;
    }
    let reg = Registry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), &reg);

    let err = s
        .resolve(&format!("{}/test/nope:v1", reg.addr))
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::NotFound { .. }), "{err}");

    let port = hangar_test_utils::free_port();
    let s2 = ImageStore::open(
        dir.path().join("images2"),
        StoreOptions {
            insecure_registries: vec![format!("127.0.0.1:{port}")],
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let err = s2
        .resolve(&format!("127.0.0.1:{port}/x/y:z"))
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Unreachable { .. }), "{err}");

    let err = s.resolve("Not A Reference").await.unwrap_err();
    assert!(matches!(err, ImageError::InvalidReference { .. }), "{err}");
}

#[tokio::test]
async fn basic_auth() {
    if !hangar_test_utils::host_tier("basic_auth", &["docker-registry"]) {
        return;
    }
    let reg = Registry::start_with_auth("hangar", "s3cret").await;
    let img = ImageBuilder::busybox().build();
    reg.push("private/app", "v1", &img).await;
    let dir = tempfile::tempdir().unwrap();
    let name = format!("{}/private/app:v1", reg.addr);

    let anon = store(dir.path(), &reg);
    let err = anon.resolve(&name).await.unwrap_err();
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err}");

    let mut creds = Credentials::default();
    creds.insert(&reg.addr, "hangar", "s3cret");
    let authed = ImageStore::open(
        dir.path().join("images-auth"),
        StoreOptions {
            insecure_registries: vec![reg.addr.clone()],
            credentials: creds,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(authed.resolve(&name).await.unwrap().digest, img.digest());
}

#[tokio::test]
async fn imports_oci_and_docker_archives() {
    if !hangar_test_utils::host_tier("imports_oci_and_docker_archives", &["docker-registry"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = ImageStore::open(dir.path().join("images"), StoreOptions::default()).unwrap();
    let img = ImageBuilder::busybox()
        .layer(Layer::new().file("hello", b"imported", 0o644))
        .build();

    let oci = dir.path().join("img.oci.tar");
    std::fs::write(&oci, img.oci_archive(Some("latest"))).unwrap();
    // umoci-style layouts name only a tag: a name is needed.
    let err = s.import_archive(&oci, None).await.unwrap_err();
    assert!(err.to_string().contains("--name"), "{err}");
    let got = s.import_archive(&oci, Some("demo:v1")).await.unwrap();
    assert_eq!(got.repository, "library/demo");
    assert_eq!(got.digest, img.digest());
    // Imported names resolve offline.
    let again = s.resolve("demo:v1").await.unwrap();
    assert_eq!(
        std::fs::read(again.layers[1].join("hello")).unwrap(),
        b"imported"
    );

    let docker = dir.path().join("img.docker.tar");
    std::fs::write(&docker, img.docker_archive("example.com/team/app:2")).unwrap();
    let got = s.import_archive(&docker, None).await.unwrap();
    assert_eq!(
        (got.registry.as_str(), got.repository.as_str()),
        ("example.com", "team/app")
    );
    assert!(s.resolve("example.com/team/app:2").await.is_ok());

    let junk = dir.path().join("junk.tar");
    std::fs::write(&junk, b"definitely not a tar").unwrap();
    assert!(matches!(
        s.import_archive(&junk, Some("x:1")).await,
        Err(ImageError::BadArchive(_))
    ));

    let names: Vec<String> = s.list().unwrap().into_iter().map(|i| i.name).collect();
    assert_eq!(
        names,
        vec!["docker.io/library/demo:v1", "example.com/team/app:2"]
    );
}

/// A relay on loopback to `target` that notes the request line of every
/// request passing through it.
struct Counting {
    addr: String,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Counting {
    async fn start(target: &str) -> Counting {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (target, seen) = (target.to_owned(), lines.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                    continue;
                };
                let seen = seen.clone();
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                });
                tokio::spawn(async move {
                    let (mut buf, mut pending) = (vec![0u8; 16384], Vec::new());
                    while let Ok(n) = cr.read(&mut buf).await {
                        if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        pending.extend_from_slice(&buf[..n]);
                        while let Some(end) = pending.windows(2).position(|w| w == b"\r\n") {
                            let line = String::from_utf8_lossy(&pending[..end]).into_owned();
                            pending.drain(..end + 2);
                            if line.ends_with(" HTTP/1.1") {
                                seen.lock().unwrap().push(line);
                            }
                        }
                    }
                });
            }
        });
        Counting { addr, lines }
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.lines.lock().unwrap())
    }
}

#[tokio::test]
async fn an_open_registry_is_asked_once_per_tag_check() {
    if !hangar_test_utils::host_tier(
        "an_open_registry_is_asked_once_per_tag_check",
        &["docker-registry"],
    ) {
        return;
    }
    let reg = Registry::start().await;
    let img = ImageBuilder::busybox().build();
    reg.push("test/once", "v1", &img).await;
    let relay = Counting::start(&reg.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let s = store_at(&dir.path().join("images"), &relay.addr);
    let name = format!("{}/test/once:v1", relay.addr);
    assert_eq!(s.resolve(&name).await.unwrap().digest, img.digest());
    relay.take();
    // The tag checked again: one HEAD, without asking `/v2/` first.
    for _ in 0..3 {
        assert_eq!(s.resolve(&name).await.unwrap().digest, img.digest());
        assert_eq!(
            relay.take(),
            vec!["HEAD /v2/test/once/manifests/v1 HTTP/1.1".to_owned()]
        );
    }
    assert_eq!(s.unchanged_count(), 3);

    // A registry that wants credentials: its 401 is remembered, the
    // checks after go through the token dance (and fail clearly here).
    let closed = Registry::start_with_auth("hangar", "s3cret").await;
    let relay = Counting::start(&closed.addr).await;
    let s = store_at(&dir.path().join("images-closed"), &relay.addr);
    let name = format!("{}/test/once:v1", relay.addr);
    for round in 0..2 {
        let err = s.resolve(&name).await.unwrap_err();
        assert!(matches!(err, ImageError::Unauthorized { .. }), "{err}");
        let lines = relay.take();
        let direct = lines
            .iter()
            .take_while(|l| !l.starts_with("GET /v2/ "))
            .count();
        assert_eq!(direct, if round == 0 { 1 } else { 0 }, "{lines:?}");
    }
}
