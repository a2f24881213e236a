//! The image store of a hangard reads images pushed to its own registry
//! straight from the registry's storage: no HTTP server runs in this test,
//! so a pull over the network would fail.

use std::sync::Arc;

use hangar_image::{ImageError, ImageStore, StoreOptions};
use hangar_registry::{LocalSource, Names, Storage};
use hangar_test_utils::image::{BuiltImage, ImageBuilder, Layer};

/// Pushes `img` to `repo:tag` as a client would: blobs, then the manifest.
async fn push(s: &Storage, repo: &str, tag: &str, img: &BuiltImage) -> String {
    let mut blobs: Vec<&[u8]> = vec![&img.config];
    blobs.extend(img.layers.iter().map(|(b, _, _)| b.as_slice()));
    for b in blobs {
        let digest = format!(
            "sha256:{}",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b))
        );
        let id = s.start_upload(repo).unwrap();
        let body = futures::stream::iter(vec![Ok::<_, std::io::Error>(
            bytes::Bytes::copy_from_slice(b),
        )]);
        s.commit(repo, &id, &digest, body).await.unwrap();
    }
    s.put_manifest(repo, tag, BuiltImage::MANIFEST_TYPE, &img.manifest())
        .unwrap()
}

#[tokio::test]
async fn images_pushed_here_run_without_a_pull_over_http() {
    if !hangar_test_utils::host_tier("images_pushed_here_run_without_a_pull_over_http", &[]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path().join("registry")).unwrap();
    // Port 9 (discard): nothing of ours listens there, so only the local
    // path can succeed.
    let names = Names::new("127.0.0.1:9".parse().unwrap(), vec![]);
    let store = ImageStore::open(
        dir.path().join("images"),
        StoreOptions {
            local: Some(Arc::new(LocalSource::new(storage.clone(), names))),
            ..Default::default()
        },
    )
    .unwrap();

    let img = ImageBuilder::busybox()
        .layer(Layer::new().file("app/hello.txt", b"pushed to hangard\n", 0o644))
        .set("Cmd", serde_json::json!(["cat", "/app/hello.txt"]))
        .build();
    let digest = push(&storage, "web", "deployment-1", &img).await;
    assert_eq!(digest, img.digest());

    // By tag, under each name that reaches the listener.
    let got = store.resolve("127.0.0.1:9/web:deployment-1").await.unwrap();
    assert_eq!(got.digest, digest);
    assert_eq!(got.config.cmd, vec!["cat", "/app/hello.txt"]);
    assert_eq!(got.layers.len(), 2);
    assert_eq!(
        std::fs::read_to_string(got.layers[1].join("app/hello.txt")).unwrap(),
        "pushed to hangard\n"
    );
    let again = store
        .resolve(&format!("localhost:9/web@{digest}"))
        .await
        .unwrap();
    assert_eq!(again.layers, got.layers, "layers are unpacked once");
    assert_eq!(store.pull_count(), 0, "nothing went over HTTP");
    assert!(store.local_pull_count() >= 1);

    // The compressed layers stay stored once, in the registry: the image
    // store keeps no copy of them.
    for (blob, _, _) in &img.layers {
        let hex = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(blob));
        assert!(
            dir.path()
                .join("registry/blobs/sha256")
                .join(&hex)
                .is_file()
        );
        assert!(!dir.path().join("images/blobs/sha256").join(&hex).exists());
    }

    // Another app's repository does not see web's image, digest or not.
    let err = store
        .resolve(&format!("127.0.0.1:9/other@{digest}"))
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::NotFound { .. }), "{err}");
    let err = store.resolve("127.0.0.1:9/web:nope").await.unwrap_err();
    assert!(matches!(err, ImageError::NotFound { .. }), "{err}");
    assert_eq!(store.pull_count(), 0);

    // An index: its linux/amd64 image.
    let arm = ImageBuilder::busybox().architecture("arm64").build();
    push(&storage, "web", "arm", &arm).await;
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": BuiltImage::MANIFEST_TYPE, "digest": arm.digest(),
             "size": arm.manifest().len(), "platform": {"os": "linux", "architecture": "arm64"}},
            {"mediaType": BuiltImage::MANIFEST_TYPE, "digest": img.digest(),
             "size": img.manifest().len(), "platform": {"os": "linux", "architecture": "amd64"}},
        ],
    }))
    .unwrap();
    storage
        .put_manifest(
            "web",
            "multi",
            "application/vnd.oci.image.index.v1+json",
            &index,
        )
        .unwrap();
    let multi = store.resolve("127.0.0.1:9/web:multi").await.unwrap();
    assert_eq!(multi.digest, digest);
    assert_eq!(store.pull_count(), 0);
}
