//! hangard's registry beside Debian's `docker-registry`, in one run:
//!
//! - push of a multi-layer image (busybox and three 4 MiB layers of random
//!   bytes, OCI archive) with skopeo, to a fresh repository each time, to
//!   each registry, interleaved;
//! - edit to serving: a one-line change of a web app built from a
//!   Dockerfile, `hangar deploy` (build with buildah, push to hangard,
//!   rolling deploy) until the proxy serves the change, beside the same
//!   build pushed by hand to docker-registry (what deploying anywhere
//!   starts with).
//!
//! Medians of `RUNS`. Usage (root, through `bench/registry.sh`):
//! `hangar-bench-registry [RUNS]`.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::bail;
use hangar_bench::{median, run};
use hangar_test_utils::daemon::Daemon;
use hangar_test_utils::image::{ImageBuilder, Layer};
use hangar_test_utils::registry::Registry;

fn random(n: usize, seed: u64) -> Vec<u8> {
    // xorshift: incompressible enough, reproducible.
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let runs = hangar_bench::runs_arg(5)?;
    let reg = Registry::start().await;
    let d = Daemon::start(&["--insecure-registry".into(), reg.addr.clone()]).await;
    let c = d.client();
    let token = c.token().to_owned();
    let host = c.registry_host();
    let work = tempfile::tempdir()?;

    // (1) Pushes of a multi-layer image.
    let mut img = ImageBuilder::busybox();
    for i in 0..3u64 {
        img = img.layer(Layer::new().file(&format!("data{i}"), &random(4 << 20, i + 7), 0o644));
    }
    let img = img.build();
    let archive = work.path().join("image.tar");
    std::fs::write(&archive, img.oci_archive(None))?;
    let src = format!("oci-archive:{}", archive.display());
    let mut to_hangard = Vec::new();
    let mut to_registry = Vec::new();
    // skopeo remembers where it pushed blobs and mounts them from there
    // next time; each push here is a full upload.
    let forget = || {
        for f in [
            "/var/lib/containers/cache/blob-info-cache-v1.boltdb",
            "/root/.local/share/containers/cache/blob-info-cache-v1.boltdb",
        ] {
            let _ = std::fs::remove_file(f);
        }
    };
    for i in 0..runs {
        let app = format!("push{i}");
        forget();
        c.create_app(&app).await?;
        let t = Instant::now();
        run(Command::new("skopeo").args([
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            &format!("x:{token}"),
            &src,
            &format!("docker://{host}/{app}:v1"),
        ]))?;
        to_hangard.push(t.elapsed().as_secs_f64() * 1000.0);
        forget();
        let t = Instant::now();
        run(Command::new("skopeo").args([
            "copy",
            "--dest-tls-verify=false",
            &src,
            &format!("docker://{}/push{i}/image:v1", reg.addr),
        ]))?;
        to_registry.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let (h, r) = (median(to_hangard), median(to_registry));
    println!("Push of a 4-layer image (12 MiB of layers) with skopeo, {runs} runs, medians");
    println!(
        "  to hangard's registry:   {h:.0} ms ({:.2}x docker-registry)",
        h / r
    );
    println!("  to Debian's docker-registry: {r:.0} ms");

    // (2) Edit to serving.
    reg.push("base/busybox", "v1", &ImageBuilder::busybox().build())
        .await;
    c.create_app("site").await?;
    let dir = work.path().join("site");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("Dockerfile"),
        format!(
            "FROM {}/base/busybox:v1\nCOPY index.html /www/index.html\nCMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n",
            reg.addr
        ),
    )?;
    std::fs::write(
        dir.join("fly.toml"),
        "app = \"site\"\n[http_service]\n  internal_port = 8080\n  auto_stop_machines = \"off\"\n  [[http_service.checks]]\n    interval = \"500ms\"\n    path = \"/\"\n",
    )?;
    let build_storage = hangar_test_utils::build_storage::BuildStorage::new();
    let storage = build_storage.path().to_owned();
    let deploy = || -> anyhow::Result<()> {
        let (ok, out, err) = d.cli_in(
            Some(&dir),
            &[("HANGAR_BUILD_STORAGE", storage.as_os_str())],
            &["deploy"],
        );
        if !ok {
            bail!("hangar deploy failed:\n{out}{err}");
        }
        Ok(())
    };
    std::fs::write(dir.join("index.html"), "v0\n")?;
    deploy()?;
    let http = reqwest::Client::new();
    let serves = |want: String| {
        let http = http.clone();
        let url = format!("http://{}/", d.proxy_http);
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let got = match http.get(&url).header("host", "site.localhost").send().await {
                    Ok(r) => r.text().await.unwrap_or_default(),
                    Err(_) => String::new(),
                };
                if got == want {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    bail!("the change never served");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let buildah = |args: &[&str]| -> anyhow::Result<()> {
        run(Command::new("buildah")
            .args(["--root", &format!("{}/root", storage.display())])
            .args(["--runroot", &format!("{}/run", storage.display())])
            .args(args))
    };
    let mut edit = Vec::new();
    let mut by_hand = Vec::new();
    for i in 1..=runs {
        let content = format!("v{i}\n");
        std::fs::write(dir.join("index.html"), &content)?;
        let t = Instant::now();
        deploy()?;
        serves(content).await?;
        edit.push(t.elapsed().as_secs_f64() * 1000.0);
        // The baseline: the same build, pushed to docker-registry by hand.
        std::fs::write(dir.join("index.html"), format!("hand {i}\n"))?;
        let t = Instant::now();
        let tag = format!("localhost/bench/site:hand{i}");
        buildah(&[
            "bud",
            "--isolation",
            "chroot",
            "--tls-verify=false",
            "--layers",
            "-q",
            "-t",
            &tag,
            &dir.display().to_string(),
        ])?;
        buildah(&[
            "push",
            "--tls-verify=false",
            &tag,
            &format!("docker://{}/site/hand:{i}", reg.addr),
        ])?;
        by_hand.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let (e, b) = (median(edit), median(by_hand));
    println!(
        "Edit to serving of a one-line change (a Dockerfile app of 2 machines), {runs} runs, medians"
    );
    println!(
        "  hangar deploy (build, push, roll, served): {e:.0} ms ({:.2}x the baseline)",
        e / b
    );
    println!("  baseline, build + push to docker-registry by hand: {b:.0} ms");
    Ok(())
}
