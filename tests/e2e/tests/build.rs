//! End to end: images from source. `hangar deploy` in a directory with a
//! Dockerfile builds it with buildah, pushes it to hangard's registry and
//! deploys the digest; the app serves through the proxy; an edit moves one
//! layer; `hangar machine run .` does the same for one machine; a failing
//! build stops before anything is deployed. podman builds, pushes and pulls
//! back the same way.

use std::path::Path;
use std::time::Duration;

use hangar_test_utils::daemon::Daemon;
use hangar_test_utils::image::ImageBuilder;
use hangar_test_utils::registry::Registry;
use hangar_test_utils::wait_until;

fn hangar(d: &Daemon, dir: &Path, storage: &Path, args: &[&str]) -> (bool, String) {
    let (ok, out, err) = d.cli_in(
        Some(dir),
        &[("HANGAR_BUILD_STORAGE", storage.as_os_str())],
        args,
    );
    (ok, format!("{out}{err}"))
}

/// A registry with a busybox base image, a hangard that pulls from it with
/// app `site`, and a directory with a Dockerfile (`FROM` the base, then
/// `steps`, then an httpd on 8080 serving /www) and a fly.toml serving it
/// (plus `extra` under `[http_service]`), built in a storage of its own.
struct Site {
    reg: Registry,
    d: Daemon,
    dir: tempfile::TempDir,
    storage: hangar_test_utils::build_storage::BuildStorage,
}

async fn site(steps: &str, extra: &str) -> Site {
    let reg = Registry::start().await;
    reg.push("base/busybox", "v1", &ImageBuilder::busybox().build())
        .await;
    let d = Daemon::start(&["--insecure-registry".into(), reg.addr.clone()]).await;
    d.client().create_app("site").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        format!(
            "FROM {}/base/busybox:v1\n{steps}CMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n",
            reg.addr
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("fly.toml"),
        format!("app = \"site\"\n\n[http_service]\n  internal_port = 8080\n  auto_stop_machines = \"off\"\n{extra}"),
    )
    .unwrap();
    Site {
        reg,
        d,
        dir,
        storage: hangar_test_utils::build_storage::BuildStorage::new(),
    }
}

fn blobs(d: &Daemon) -> usize {
    std::fs::read_dir(d.data_dir().join("registry/blobs/sha256"))
        .map(|r| r.count())
        .unwrap_or(0)
}

async fn page(d: &Daemon) -> String {
    reqwest::Client::new()
        .get(format!("http://{}/", d.proxy_http))
        .header("host", "site.localhost")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_builds_the_dockerfile_and_pushes_only_what_changed() {
    if !hangar_test_utils::host_tier(
        "deploy_builds_the_dockerfile_and_pushes_only_what_changed",
        &["crun", "docker-registry", "buildah"],
    ) {
        return;
    }
    let Site {
        reg,
        d,
        dir,
        storage,
    } = site(
        "COPY index.html /www/index.html\n",
        "  [[http_service.checks]]\n    interval = \"500ms\"\n    path = \"/\"\n",
    )
    .await;
    let c = d.client();
    let p = dir.path();
    std::fs::write(p.join("index.html"), "version one\n").unwrap();

    // Built, pushed to hangard, deployed by digest, served.
    let (ok, out) = hangar(&d, p, storage.path(), &["deploy"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("Building image with buildah") && out.contains("Pushed image"),
        "{out}"
    );
    assert_eq!(page(&d).await, "version one\n");
    let rel = c.list_releases("site", 1).await.unwrap().remove(0);
    assert!(rel.image_ref.contains("/site@sha256:"), "{}", rel.image_ref);
    pull_back(&d, "buildah", "site", &rel.image_digest).await;

    // One line changed: one new layer (and a new config and manifest) is
    // all that reaches the registry.
    let before = blobs(&d);
    std::fs::write(p.join("index.html"), "version two\n").unwrap();
    let (ok, out) = hangar(&d, p, storage.path(), &["deploy"]);
    assert!(ok, "{out}");
    assert_eq!(blobs(&d), before + 3, "layer, config and manifest only");
    wait_until(
        Duration::from_secs(30),
        "the new version to serve",
        || async { (page(&d).await == "version two\n").then_some(()) },
    )
    .await;

    // `machine run .`: the same for one machine (unmanaged).
    let (ok, out) = hangar(
        &d,
        p,
        storage.path(),
        &[
            "machine", "run", ".", "-a", "site", "--name", "one-off", "--json",
        ],
    );
    assert!(ok, "{out}");
    let m = c
        .list_machines("site", &Default::default())
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.name == "one-off")
        .expect("the machine from `run .`");
    assert_eq!(m.state, "started");
    assert!(m.config.unwrap().image.contains("/site@sha256:"));

    // A failing build deploys nothing.
    let releases = c.list_releases("site", 100).await.unwrap().len();
    std::fs::write(
        p.join("Dockerfile"),
        format!(
            "FROM {}/base/busybox:v1\nRUN echo about to fail && false\n",
            reg.addr
        ),
    )
    .unwrap();
    let (ok, out) = hangar(&d, p, storage.path(), &["deploy"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("the build failed") && out.contains("about to fail"),
        "{out}"
    );
    assert_eq!(c.list_releases("site", 100).await.unwrap().len(), releases);
}

/// `podman` (Debian's package) as the builder and as a client of hangard's
/// registry: it builds and pushes for `hangar deploy --builder podman`, and
/// pulls the pushed image back by digest with the app's token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_builds_pushes_and_pulls_back() {
    if !hangar_test_utils::host_tier(
        "podman_builds_pushes_and_pulls_back",
        &["crun", "docker-registry", "podman"],
    ) {
        return;
    }
    let Site {
        reg: _reg,
        d,
        dir,
        storage,
    } = site("RUN echo built by podman > /www/index.html\n", "").await;
    let c = d.client();
    let p = dir.path();
    let (ok, out) = hangar(&d, p, storage.path(), &["deploy", "--builder", "podman"]);
    assert!(ok, "{out}");
    assert!(out.contains("Building image with podman"), "{out}");
    wait_until(Duration::from_secs(30), "the app to serve", || async {
        (page(&d).await == "built by podman\n").then_some(())
    })
    .await;
    let rel = c.list_releases("site", 1).await.unwrap().remove(0);
    let digest = rel.image_digest.clone();
    assert!(digest.starts_with("sha256:"), "{rel:?}");

    // Pulled back by digest into a storage of its own, with an app token.
    pull_back(&d, "podman", "site", &digest).await;
}

/// Pulls `<hangard>/<app>@<digest>` with `program` (buildah or podman) into
/// a storage of its own with an app token, and checks what it got.
async fn pull_back(d: &Daemon, program: &str, app: &str, digest: &str) {
    let c = d.client();
    let token = c
        .create_token(app, &Default::default())
        .await
        .unwrap()
        .token;
    let host = c.base_url().trim_start_matches("http://").to_owned();
    let image = format!("{host}/{app}@{digest}");
    let storage = hangar_test_utils::build_storage::BuildStorage::new();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(program)
            .arg("--root")
            .arg(storage.path().join("root"))
            .arg("--runroot")
            .arg(storage.path().join("run"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    run(&[
        "pull",
        "--tls-verify=false",
        "--creds",
        &format!("x:{token}"),
        &image,
    ]);
    let got = if program == "podman" {
        run(&["image", "inspect", "--format", "{{.Digest}}", &image])
    } else {
        run(&[
            "inspect",
            "--type",
            "image",
            "--format",
            "{{.FromImageDigest}}",
            &image,
        ])
    };
    assert_eq!(got, digest, "{program} pulled another image");
}
