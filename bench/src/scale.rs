//! 10,000 machines on one host, by simulation: what the control plane
//! costs per machine and whether a request's cost grows with the number of
//! machines, without the processes (which `bench/density.sh` runs for
//! real, up to what this host holds).
//!
//! In this process: hangard's agent (the real SQLite store, runners, the
//! network plan that gives every machine its addresses) over the fake
//! runtime and image source, and the real API router served on loopback.
//! An app `web` with one machine and an app `idle`; with one idle machine,
//! then with `MACHINES` of them (created through the API, 10 clients, each
//! until `started`), the same reads with `wrk -t2 -c32`: `GET` of one
//! machine, `GET` of the list of `web`. Beside them the process's RSS
//! (the agent's state per machine: its runner, its rows, its addresses).
//!
//! Usage: `hangar-bench-scale [MACHINES] [RUNS] [SECONDS]` (default 10000,
//! 3, 5); needs nothing but `wrk`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hangar_agent::images::fake::FakeImages;
use hangar_agent::{Agent, AgentConfig};
use hangar_api::{ApiState, router};
use hangar_bench::{median, rate, wrk_with};
use hangar_runtime::fake::FakeRuntime;

const TOKEN: &str = "bench-scale-token";
const CLIENTS: usize = 10;

fn rss_mib() -> anyhow::Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")?;
    Ok(kb / 1024.0)
}

/// How long a scrape of `/metrics` takes (ms), median of `n`: it reports
/// every machine of the host by app and state.
async fn scrape_ms(base: &str, n: usize) -> anyhow::Result<f64> {
    let http = reqwest::Client::new();
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let t = std::time::Instant::now();
        let r = http
            .get(format!("{base}/metrics"))
            .bearer_auth(TOKEN)
            .send()
            .await?
            .error_for_status()?;
        r.bytes().await?;
        took.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(median(took))
}

/// `GET` of one machine and of `web`'s list, `runs` times each; req/s.
async fn reads(base: &str, one: &str, runs: usize, seconds: u32) -> anyhow::Result<[Vec<f64>; 2]> {
    let auth = vec![format!("Authorization: Bearer {TOKEN}")];
    let urls = [
        format!("{base}/v1/apps/idle/machines/{one}"),
        format!("{base}/v1/apps/web/machines"),
    ];
    let mut out: [Vec<f64>; 2] = Default::default();
    for _ in 0..runs {
        for (i, url) in urls.iter().enumerate() {
            let (url, auth) = (url.clone(), auth.clone());
            let w =
                tokio::task::spawn_blocking(move || wrk_with(&url, &auth, seconds, 32)).await??;
            anyhow::ensure!(
                w.non_2xx == 0 && w.socket_errors == 0,
                "{} non-2xx answers and {} socket errors from {}",
                w.non_2xx,
                w.socket_errors,
                urls[i]
            );
            out[i].push(w.rps);
        }
    }
    Ok(out)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let machines: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10_000);
    let runs: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(3);
    let seconds: u32 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(5);
    anyhow::ensure!(machines >= 2, "at least 2 machines");

    let dir = tempfile::tempdir()?;
    let agent = Agent::open(
        AgentConfig::new(dir.path()),
        Arc::new(FakeRuntime::new()),
        Arc::new(FakeImages),
    )
    .await?;
    let app = router(ApiState::bare(agent.clone(), TOKEN));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let c = hangar_client::Client::new(&base, TOKEN);
    c.create_app("web").await?;
    c.create_app("idle").await?;
    let req: hangar_api_types::CreateMachineRequest = serde_json::from_value(serde_json::json!({
        "config": {"image": "bench/bb:v1", "guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 32}},
    }))?;
    let create = |c: hangar_client::Client,
                  app: &'static str,
                  req: hangar_api_types::CreateMachineRequest| async move {
        let id = c.create_machine(app, &req).await?.id;
        c.wait_machine(app, &id, &["started"], Duration::from_secs(60))
            .await
            .with_context(|| format!("{id} to be started"))?;
        Ok::<_, anyhow::Error>(id)
    };
    create(c.clone(), "web", req.clone()).await?;
    let first = create(c.clone(), "idle", req.clone()).await?;
    reads(&base, &first, 1, 1).await?;
    let rss0 = rss_mib()?;
    let before = reads(&base, &first, runs, seconds).await?;
    let scrape0 = scrape_ms(&base, 15).await?;

    let create_rate = {
        let c = c.clone();
        rate((1..machines).collect(), CLIENTS, move |_| {
            let (c, req) = (c.clone(), req.clone());
            async move { create(c, "idle", req).await.map(|_| ()) }
        })
        .await?
    };
    let present = agent.list_machines("idle", false)?.len();
    anyhow::ensure!(present == machines, "{present} machines, not {machines}");
    let rss1 = rss_mib()?;
    let after = reads(&base, &first, runs, seconds).await?;
    let scrape1 = scrape_ms(&base, 15).await?;

    println!(
        "\nScale, simulated: {machines} machines in one app (the agent and the API for real, \
         the runtime fake), wrk -t2 -c32, {seconds}s x {runs} runs, medians"
    );
    println!(
        "  {:<36} {:>12} {:>16} {:>8}",
        "",
        "1 machine",
        format!("{machines} machines"),
        "ratio"
    );
    for (what, i) in [
        ("GET one machine (req/s)", 0),
        ("GET list of another app (req/s)", 1),
    ] {
        let (b, a) = (median(before[i].clone()), median(after[i].clone()));
        println!("  {what:<36} {b:>12.0} {a:>16.0} {:>7.2}x", a / b);
    }
    println!(
        "  {:<36} {scrape0:>12.2} {scrape1:>16.2} {:>7.2}x",
        "GET /metrics (ms, median of 15)",
        scrape1 / scrape0
    );
    println!("  {:<36} {rss0:>12.1} {rss1:>16.1}", "process RSS (MiB)");
    println!(
        "  RSS per machine                      {:>8.1} KiB",
        (rss1 - rss0) * 1024.0 / (machines - 1) as f64
    );
    println!("  created, until started               {create_rate:>8.1} /s (10 clients)");
    Ok(())
}
