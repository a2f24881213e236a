use super::*;

fn body(parts: &[&[u8]]) -> impl Stream<Item = Result<bytes::Bytes, std::io::Error>> + Unpin {
    futures::stream::iter(
        parts
            .iter()
            .map(|p| Ok(bytes::Bytes::copy_from_slice(p)))
            .collect::<Vec<_>>(),
    )
}

fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

#[tokio::test]
async fn uploads_commit_only_when_their_digest_matches() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(dir.path()).unwrap();
    // One PATCH without a range, then an empty PUT (containers/image).
    let id = s.start_upload("web").unwrap();
    assert_eq!(
        s.append("web", &id, None, body(&[b"hello ", b"world"]))
            .await
            .unwrap(),
        11
    );
    let d = sha(b"hello world");
    assert_eq!(s.commit("web", &id, &d, body(&[])).await.unwrap(), 11);
    let (path, len) = s.blob("web", &d).unwrap().unwrap();
    assert_eq!(
        (std::fs::read(path).unwrap(), len),
        (b"hello world".to_vec(), 11)
    );
    assert!(s.upload_size("web", &id).is_err(), "the session is gone");
    // The whole blob in the PUT (containerd).
    let id = s.start_upload("web").unwrap();
    let d2 = sha(b"second");
    s.commit("web", &id, &d2, body(&[b"second"])).await.unwrap();
    assert!(s.blob("web", &d2).unwrap().is_some());
    // Another repository does not see it, whoever knows its digest; a
    // mount from a repository that has it links it.
    assert!(s.blob("other", &d2).unwrap().is_none());
    assert!(!s.mount("third", "other", &d2).unwrap());
    assert!(s.mount("other", "web", &d2).unwrap());
    assert!(s.blob("other", &d2).unwrap().is_some());
    // Chunks in order with ranges; one out of order is refused.
    let id = s.start_upload("web").unwrap();
    s.append("web", &id, Some(0), body(&[b"abc"]))
        .await
        .unwrap();
    match s.append("web", &id, Some(5), body(&[b"x"])).await {
        Err(RegistryError::RangeInvalid {
            expected: 3,
            got: 5,
        }) => {}
        other => panic!("{other:?}"),
    }
    s.append("web", &id, Some(3), body(&[b"def"]))
        .await
        .unwrap();
    s.commit("web", &id, &sha(b"abcdef"), body(&[]))
        .await
        .unwrap();
    // A wrong digest stores nothing and ends the session.
    let id = s.start_upload("web").unwrap();
    let claimed = sha(b"what the client says");
    let err = s
        .commit("web", &id, &claimed, body(&[b"something else"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "DIGEST_INVALID");
    assert!(s.blob("web", &claimed).unwrap().is_none());
    assert!(s.blob("web", &sha(b"something else")).unwrap().is_none());
    assert!(
        std::fs::read_dir(dir.path().join("uploads/web"))
            .unwrap()
            .next()
            .is_none()
    );
    // Bad names and digests.
    assert!(s.blob("web", "md5:abc").is_err());
    assert!(s.blob("web", "sha256:../../etc/passwd").is_err());
    assert!(s.start_upload("../x").is_err());
    assert!(s.upload_size("web", "../../etc/passwd").is_err());
}

#[tokio::test]
async fn manifests_and_tags() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(dir.path()).unwrap();
    let put_blob = |b: &'static [u8]| {
        let s = s.clone();
        async move {
            let id = s.start_upload("web").unwrap();
            s.commit("web", &id, &sha(b), body(&[b])).await.unwrap();
            sha(b)
        }
    };
    let config = put_blob(b"{\"architecture\":\"amd64\"}").await;
    let layer = put_blob(b"layer bytes").await;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 24},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": 11}],
    });
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let oci = "application/vnd.oci.image.manifest.v1+json";
    let d = s.put_manifest("web", "v1", oci, &bytes).unwrap();
    assert_eq!(d, sha(&bytes));
    let m = s.manifest("web", "v1").unwrap();
    assert_eq!(
        (m.digest.as_str(), m.media_type.as_str()),
        (d.as_str(), oci)
    );
    assert_eq!(m.bytes, bytes, "byte for byte");
    assert_eq!(s.manifest("web", &d).unwrap().bytes, bytes);
    assert!(
        s.manifest("other", &d).is_err(),
        "a manifest belongs to the repository it was pushed to"
    );
    // By digest, a mismatch is refused; missing blobs are refused.
    assert_eq!(
        s.put_manifest("web", &sha(b"x"), oci, &bytes)
            .unwrap_err()
            .code(),
        "DIGEST_INVALID"
    );
    let dangling = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "config": {"digest": sha(b"nope")}, "layers": []}))
    .unwrap();
    assert_eq!(
        s.put_manifest("web", "v2", oci, &dangling)
            .unwrap_err()
            .code(),
        "MANIFEST_BLOB_UNKNOWN"
    );
    assert_eq!(
        s.put_manifest("web", "v2", oci, b"not json")
            .unwrap_err()
            .code(),
        "MANIFEST_INVALID"
    );
    assert_eq!(
        s.put_manifest("web", "bad tag!", oci, &bytes)
            .unwrap_err()
            .code(),
        "NAME_INVALID"
    );
    // An index of it; tags in order, paged.
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": oci, "digest": d, "size": bytes.len()}]}))
    .unwrap();
    s.put_manifest(
        "web",
        "multi",
        "application/vnd.oci.image.index.v1+json",
        &index,
    )
    .unwrap();
    s.put_manifest("web", "a", oci, &bytes).unwrap();
    assert_eq!(s.tags("web", None, None).unwrap(), vec!["a", "multi", "v1"]);
    assert_eq!(s.tags("web", Some(1), Some("a")).unwrap(), vec!["multi"]);
    // Deleting the manifest drops its tags.
    s.delete_manifest("web", &d).unwrap();
    assert_eq!(s.tags("web", None, None).unwrap(), vec!["multi"]);
    assert!(s.manifest("web", "v1").is_err());
}

#[tokio::test]
async fn garbage_collection_keeps_what_is_tagged_or_used() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(dir.path()).unwrap();
    let put = |b: Vec<u8>| {
        let s = s.clone();
        async move {
            let id = s.start_upload("web").unwrap();
            let d = sha(&b);
            s.commit(
                "web",
                &id,
                &d,
                futures::stream::iter(vec![Ok::<_, std::io::Error>(bytes::Bytes::from(b))]),
            )
            .await
            .unwrap();
            d
        }
    };
    let oci = "application/vnd.oci.image.manifest.v1+json";
    let image = |config: &str, layer: &str| {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": oci,
            "config": {"digest": config}, "layers": [{"digest": layer}]}))
        .unwrap()
    };
    let shared = put(b"shared layer".to_vec()).await;
    let (c1, l1) = (
        put(b"config 1".to_vec()).await,
        put(b"layer 1".to_vec()).await,
    );
    let (c2, l2) = (
        put(b"config 2".to_vec()).await,
        put(b"layer 2".to_vec()).await,
    );
    let (c3, _) = (put(b"config 3".to_vec()).await, ());
    let m1 = s.put_manifest("web", "v1", oci, &image(&c1, &l1)).unwrap();
    let m2 = s
        .put_manifest("web", "deployment-2", oci, &image(&c2, &shared))
        .unwrap();
    let m3 = s
        .put_manifest("web", "deployment-3", oci, &image(&c3, &l2))
        .unwrap();
    // deployment-2 and -3 lose their tags; a release still uses m2.
    for t in ["deployment-2", "deployment-3"] {
        std::fs::remove_file(dir.path().join("repos/web/tags").join(t)).unwrap();
    }
    let orphan = put(b"a layer of a push still going on".to_vec()).await;
    // Old enough blobs go; a fresh orphan stays (its push may not be done).
    let r = s
        .gc(&[("web".into(), m2.clone())], std::time::Duration::ZERO)
        .unwrap();
    assert_eq!(r.manifests, 1, "m3 goes");
    assert!(s.manifest("web", &m1).is_ok() && s.manifest("web", &m2).is_ok());
    assert!(s.manifest("web", &m3).is_err());
    for kept in [&c1, &l1, &c2, &shared, &m1, &m2] {
        assert!(s.blob("web", kept).unwrap().is_some(), "{kept} kept");
    }
    for gone in [&c3, &l2, &m3, &orphan] {
        assert!(s.blob("web", gone).unwrap().is_none(), "{gone} collected");
    }
    assert_eq!(r.blobs, 4);
    // With a grace period, a fresh orphan stays.
    let fresh = put(b"fresh".to_vec()).await;
    s.gc(&[], std::time::Duration::from_secs(3600)).unwrap();
    assert!(s.blob("web", &fresh).unwrap().is_some());
}
