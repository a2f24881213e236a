//! End to end: hangard's built-in registry with a real client that pushes
//! and pulls (skopeo, Debian's package, which speaks the distribution API
//! as containers/image does: one PATCH, then an empty PUT): an image goes
//! in under an app, comes back byte for byte, and tokens reach their own
//! app only; a corrupt upload is refused and stores nothing.

use std::process::Command;

use hangar_test_utils::daemon::Daemon;
use hangar_test_utils::image::{ImageBuilder, Layer};

/// A machine of `shop` from `image`, once started.
async fn started(c: &hangar_client::Client, image: &str) -> hangar_api_types::Machine {
    let m = c
        .create_machine(
            "shop",
            &hangar_e2e::request(serde_json::json!({
                "image": image,
                "init": {"cmd": ["/bin/sh", "-c", "cat /app/hello; sleep 600"]},
            })),
        )
        .await
        .unwrap();
    c.wait_machine(
        "shop",
        &m.id,
        &["started"],
        std::time::Duration::from_secs(60),
    )
    .await
    .unwrap();
    c.get_machine("shop", &m.id).await.unwrap()
}

fn skopeo(args: &[&str]) -> (bool, String) {
    let out = Command::new("skopeo").args(args).output().expect("skopeo");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pushes_and_pulls_through_hangards_registry() {
    if !hangar_test_utils::host_tier(
        "skopeo_pushes_and_pulls_through_hangards_registry",
        &["crun", "skopeo"],
    ) {
        return;
    }
    let d = Daemon::start(&[]).await;
    let c = d.client();
    c.create_app("shop").await.unwrap();
    c.create_app("other").await.unwrap();
    let token = c.token().to_owned();
    let host = d
        .client()
        .base_url()
        .trim_start_matches("http://")
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    let img = ImageBuilder::busybox()
        .layer(
            Layer::new()
                .dir("app", 0o755)
                .file("app/hello", b"hello\n", 0o644),
        )
        .build();
    let archive = dir.path().join("image.tar");
    std::fs::write(&archive, img.oci_archive(None)).unwrap();
    let src = format!("oci-archive:{}", archive.display());
    let creds = format!("x:{token}");
    let dest = format!("docker://{host}/shop:v1");

    // Pushed under the app, with the token as the password.
    let (ok, out) = skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        &creds,
        &src,
        &dest,
    ]);
    assert!(ok, "{out}");
    let (ok, out) = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds",
        &creds,
        &dest,
    ]);
    assert!(ok, "{out}");
    assert_eq!(
        out.as_bytes(),
        img.manifest(),
        "the manifest is stored byte for byte"
    );
    let (ok, out) = skopeo(&[
        "list-tags",
        "--tls-verify=false",
        "--creds",
        &creds,
        &format!("docker://{host}/shop"),
    ]);
    assert!(ok && out.contains("\"v1\""), "{out}");

    // Pulled back: the same manifest digest.
    let back = format!("oci:{}:v1", dir.path().join("back").display());
    let (ok, out) = skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--src-creds",
        &creds,
        &dest,
        &back,
    ]);
    assert!(ok, "{out}");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("back/index.json")).unwrap())
            .unwrap();
    assert_eq!(index["manifests"][0]["digest"], img.digest());

    // A machine runs from the pushed image (hangard pulls from itself).
    let m = started(&c, &format!("{host}/shop:v1")).await;
    assert_eq!(m.image_ref.clone().unwrap().digest, img.digest());
    // Read from the registry's own storage, with no HTTP round trip to
    // itself, under `localhost` too.
    let log = d.log();
    assert!(
        log.contains("image read from this host's registry"),
        "{log}"
    );
    assert!(!log.contains("pulling image"), "{log}");
    let port = host.rsplit_once(':').unwrap().1;
    started(&c, &format!("localhost:{port}/shop:v1")).await;
    assert!(!d.log().contains("pulling image"));

    // A second push of the same image moves no blob again: the client
    // asks (HEAD) and the registry has them.
    let (ok, out) = skopeo(&[
        "--debug",
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        &creds,
        &src,
        &format!("docker://{host}/shop:v2"),
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("HEAD "), "{out}");
    assert!(
        !out.contains("blobs/uploads"),
        "a blob was uploaded again: {out}"
    );

    // No credentials: a 401 with the challenge; another app's token: refused.
    let http = reqwest::Client::new();
    let r = http.get(format!("http://{host}/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Basic realm=\"hangar\"");
    let other = c
        .create_token("other", &Default::default())
        .await
        .unwrap()
        .token;
    let (ok, out) = skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        &format!("x:{other}"),
        &src,
        &dest,
    ]);
    assert!(!ok, "another app's token pushed: {out}");
    let (ok, _) = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--creds",
        &format!("x:{other}"),
        &dest,
    ]);
    assert!(!ok, "another app's token pulled");
    let own = c
        .create_token("shop", &Default::default())
        .await
        .unwrap()
        .token;
    // Knowing a digest of another app's layer does not make it readable.
    let manifest: serde_json::Value = serde_json::from_slice(&img.manifest()).unwrap();
    let layer_digest = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();
    let r = http
        .head(format!("http://{host}/v2/other/blobs/{layer_digest}"))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "a blob of shop seen through other");
    let r = http
        .put(format!("http://{host}/v2/other/manifests/stolen"))
        .bearer_auth(&other)
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(img.manifest())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        400,
        "a manifest naming shop's blobs pushed to other"
    );
    let (ok, out) = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds",
        &format!("x:{own}"),
        &dest,
    ]);
    assert!(ok, "the app's own token pulls: {out}");

    // A corrupt upload (the bytes do not match the digest) stores nothing.
    let claimed = format!("sha256:{}", "0".repeat(64));
    let r = http
        .post(format!(
            "http://{host}/v2/shop/blobs/uploads/?digest={claimed}"
        ))
        .bearer_auth(&token)
        .body("not what the digest says")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "DIGEST_INVALID");
    let r = http
        .head(format!("http://{host}/v2/shop/blobs/{claimed}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(
        std::fs::read_dir(d.data_dir().join("registry/uploads/shop"))
            .unwrap()
            .next()
            .is_none(),
        "no upload left behind"
    );
    // Garbage collection: what is tagged or in use stays (and nothing
    // younger than an hour goes); only the admin token may run it.
    let r = c.prune_images().await.unwrap();
    assert_eq!(r.blobs, 0, "{r:?}");
    let (ok, out) = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds",
        &creds,
        &dest,
    ]);
    assert!(ok, "{out}");
    let own_client = hangar_client::Client::new(d.client().base_url(), &own);
    assert!(
        own_client.prune_images().await.is_err(),
        "an app token may not prune"
    );

    // Another app cannot run shop's image by its digest, though this host
    // has it unpacked.
    let other_client = hangar_client::Client::new(d.client().base_url(), &other);
    let config: hangar_api_types::MachineConfig = serde_json::from_value(serde_json::json!({
        "image": format!("{host}/other@{}", img.digest()),
    }))
    .unwrap();
    let stolen = other_client
        .create_machine(
            "other",
            &hangar_api_types::CreateMachineRequest {
                config: Some(config),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    other_client
        .wait_machine(
            "other",
            &stolen.id,
            &["failed"],
            std::time::Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert!(!d.log().contains("pulling image"));
    // The image a machine runs cannot be deleted from under it.
    let r = http
        .delete(format!("http://{host}/v2/shop/manifests/{}", img.digest()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "DENIED");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("is the image of machine "),
        "{body}"
    );

    // A repository that is not an app.
    let r = http
        .get(format!("http://{host}/v2/nope/tags/list"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}
