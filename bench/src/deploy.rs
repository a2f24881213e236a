//! Deploys under load, in one run: a 3-machine web app (busybox httpd in
//! real crun machines behind the Hangar proxy, an HTTP check each) is
//! deployed again and again while `wrk` sends requests through the proxy:
//!
//! - (a) `hangar deploy`, rolling (an env change);
//! - (b) `hangar deploy --strategy bluegreen` (an env change);
//! - (c) the baseline: the same steps as (a) done by hand through the
//!   Machines API, as a script would (update one machine, wait for its new
//!   version to be started, poll until its checks pass, next).
//!
//! Each is run `RUNS` times, interleaved; printed: the medians of each
//! deploy's duration, (a) and (b) against (c), and every non-2xx answer or
//! socket error wrk saw during any deploy (the goal: none).
//!
//! Usage (root, through `bench/deploy.sh`): `hangar-bench-deploy [RUNS]`.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hangar_api_types::{Machine, MachineConfig, UpdateMachineRequest};
use hangar_bench::{Wrk, median, wrk_report};
use hangar_client::{Client, ListMachines};
use hangar_test_utils::daemon::Daemon;
use hangar_test_utils::image::{ImageBuilder, Layer};
use hangar_test_utils::registry::Registry;

const START: &str = "#!/bin/sh\nmkdir -p /www\necho \"$GREETING from $FLY_MACHINE_ID\" > /www/index.html\nexec httpd -f -p 8080 -h /www\n";

fn fly_toml(image: &str, greeting: &str) -> String {
    format!(
        r#"app = "bench"
[build]
  image = "{image}"
[env]
  GREETING = "{greeting}"
[processes]
  web = "/app/start.sh"
[http_service]
  internal_port = 8080
  auto_stop_machines = "off"
  [http_service.concurrency]
    type = "requests"
    soft_limit = 1000
    hard_limit = 1000
  [[http_service.checks]]
    interval = "500ms"
    timeout = "1s"
    path = "/"
[deploy]
  wait_timeout = "60s"
"#
    )
}

async fn web(c: &Client) -> anyhow::Result<Vec<Machine>> {
    Ok(c.list_machines("bench", &ListMachines::default())
        .await?
        .into_iter()
        .filter(|m| m.state != "destroyed")
        .collect())
}

/// Runs `hangar` with `args` in `dir`; fails with its output.
fn hangar(d: &Daemon, dir: &std::path::Path, args: &[&str]) -> anyhow::Result<()> {
    let (ok, out, err) = d.cli_in(Some(dir), &[], args);
    if !ok {
        bail!("hangar {args:?} failed:\n{out}{err}");
    }
    Ok(())
}

/// The baseline: each machine updated with `greeting` through the API, one
/// at a time, each waited on until its new version is started and its
/// checks pass.
async fn by_hand(c: &Client, greeting: &str) -> anyhow::Result<()> {
    for m in web(c).await? {
        let mut config: MachineConfig = m.config.clone().context("config")?;
        config
            .env
            .get_or_insert_with(Default::default)
            .insert("GREETING".into(), greeting.into());
        let updated = c
            .update_machine(
                "bench",
                &m.id,
                &UpdateMachineRequest {
                    config: Some(config),
                    ..Default::default()
                },
                None,
            )
            .await?;
        c.wait_machine("bench", &m.id, &["started"], Duration::from_secs(60))
            .await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let now = c.get_machine("bench", &m.id).await?;
            let checks = now.checks.unwrap_or_default();
            // (A script cannot tell the new version's results from the old
            // one's for a moment after the update: it waits for a check
            // newer than the update, as a careful script would.)
            if now.instance_id == updated.instance_id
                && !checks.is_empty()
                && checks
                    .iter()
                    .all(|c| c.status == "passing" && c.updated_at >= updated.updated_at)
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("machine {} never passed its checks", m.id);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let runs = hangar_bench::runs_arg(5)?;
    let reg = Registry::start().await;
    let img = ImageBuilder::busybox()
        .layer(
            Layer::new()
                .dir("app", 0o755)
                .file("app/start.sh", START.as_bytes(), 0o755),
        )
        .build();
    reg.push("bench/web", "v1", &img).await;
    let image = format!("{}/bench/web:v1", reg.addr);
    let d = Daemon::start(&["--insecure-registry".into(), reg.addr.clone()]).await;
    let c = d.client();
    c.create_app("bench").await?;
    let dir = tempfile::tempdir()?;
    let write = |g: &str| std::fs::write(dir.path().join("fly.toml"), fly_toml(&image, g));
    write("v0")?;
    hangar(&d, dir.path(), &["deploy"])?;
    hangar(
        &d,
        dir.path(),
        &["scale", "count", "3", "--process-group", "web"],
    )?;
    let n = web(&c).await?.len();
    if n != 3 {
        bail!("expected 3 machines, have {n}");
    }
    let proxy = format!("http://{}/", d.proxy_http);
    let mut times: [Vec<f64>; 3] = Default::default();
    let mut errors: Vec<String> = Vec::new();
    let mut served = 0u64;
    let mut baseline_failed = 0u64;
    let mut k = 0;
    for run in 0..runs {
        for (i, what) in ["rolling", "bluegreen", "by hand"].iter().enumerate() {
            if std::env::var("HANGAR_BENCH_ONLY").is_ok_and(|o| o != *what) {
                continue;
            }
            k += 1;
            let greeting = format!("g{k}");
            // wrk runs across the whole deploy, with margin on both sides.
            let url = proxy.clone();
            let load = std::thread::spawn(move || wrk_report(&url, Some("bench.localhost"), 8, 8));
            // With HANGAR_BENCH_DIAG set, a second load that keeps what
            // failed requests got.
            let diag_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let diag = std::env::var_os("HANGAR_BENCH_DIAG").map(|_| {
                let url = proxy.clone();
                let stop = diag_stop.clone();
                tokio::spawn(async move {
                    let http = reqwest::Client::new();
                    let mut bad = Vec::new();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        match http
                            .get(&url)
                            .header("host", "bench.localhost")
                            .send()
                            .await
                        {
                            Ok(r) if r.status().is_success() => {}
                            Ok(r) => {
                                let st = r.status();
                                bad.push(format!("{st} {}", r.text().await.unwrap_or_default()));
                            }
                            Err(e) => bad.push(format!("transport {e}")),
                        }
                    }
                    bad
                })
            });
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let started = Instant::now();
            match i {
                0 => {
                    write(&greeting)?;
                    hangar(&d, dir.path(), &["deploy"])?;
                }
                1 => {
                    write(&greeting)?;
                    hangar(&d, dir.path(), &["deploy", "--strategy", "bluegreen"])?;
                }
                _ => by_hand(&c, &greeting).await?,
            }
            let took = started.elapsed().as_secs_f64() * 1000.0;
            if took > 3000.0 && i < 2 {
                // A slow deploy: its events, with their times.
                let rel = c.list_releases("bench", 1).await?.remove(0);
                let mut events = c.release_events("bench", &rel.id, 0, false).await?;
                use futures::StreamExt;
                let mut ids = Vec::new();
                while let Some(Ok(ev)) = events.next().await {
                    eprintln!("  slow {what}: {} {}", ev.timestamp, ev.message);
                    ids.extend(ev.machine_id);
                }
                for line in d
                    .log()
                    .lines()
                    .filter(|l| ids.iter().any(|id| l.contains(id.as_str())))
                {
                    eprintln!("  log: {line}");
                }
            }
            let w: Wrk = load.join().map_err(|_| anyhow::anyhow!("wrk thread"))??;
            diag_stop.store(true, std::sync::atomic::Ordering::Relaxed);
            if let Some(diag) = diag {
                for b in diag.await? {
                    eprintln!("  diag {what}: {b}");
                }
            }
            served += w.requests;
            if i == 2 {
                baseline_failed += w.non_2xx + w.socket_errors;
            } else if w.non_2xx > 0 || w.socket_errors > 0 {
                errors.push(format!(
                    "run {run} {what}: {} non-2xx, {} socket errors of {} requests",
                    w.non_2xx, w.socket_errors, w.requests
                ));
            }
            let ms = web(&c).await?;
            if ms.len() != 3 {
                bail!("{what}: {} machines after the deploy", ms.len());
            }
            times[i].push(took);
            eprintln!(
                "run {run}: {what} {took:.0} ms, wrk {} requests, {} non-2xx, {} socket errors",
                w.requests, w.non_2xx, w.socket_errors
            );
        }
    }
    if times.iter().any(Vec::is_empty) {
        return Ok(());
    }
    let [rolling, bluegreen, hand] = times.map(median);
    println!(
        "Deploy of a 3-machine web app under load (wrk -t2 -c8 through the proxy), {runs} runs, medians"
    );
    println!(
        "  (a) hangar deploy, rolling:   {rolling:.0} ms ({:.2}x the baseline)",
        rolling / hand
    );
    println!(
        "  (b) hangar deploy, bluegreen: {bluegreen:.0} ms ({:.2}x)",
        bluegreen / hand
    );
    println!(
        "  (c) the same as (a) by hand through the API: {hand:.0} ms ({baseline_failed} requests failed during these: nothing drains the machines)"
    );
    println!(
        "  requests served during the runs: {served}; failed during (a) and (b): {}",
        if errors.is_empty() {
            "none".to_string()
        } else {
            errors.join("; ")
        }
    );
    if !errors.is_empty() {
        bail!("requests failed during deploys");
    }
    Ok(())
}
