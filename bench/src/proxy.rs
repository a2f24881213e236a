//! The proxy beside nginx, in one run, with `wrk`:
//!
//! - (a) a machine directly (nginx serving a small page in a real crun machine, reached
//!   on its private address);
//! - (b) through the Hangar proxy (`Host: bench.localhost`);
//! - (c) through nginx configured as the equivalent reverse proxy (one
//!   upstream, the same machine, access log off, worker per CPU, kept-alive
//!   upstream connections, and the same headers Hangar adds: the
//!   X-Forwarded-* and Fly-* request headers, Via and Fly-Request-Id both
//!   ways);
//! - (d) through HAProxy configured the same way (`http` mode, a thread per
//!   CPU, connections to the machine reused, the same headers).
//!
//! Each is measured `RUNS` times, interleaved, for `SECONDS` each; the
//! medians of requests/s and p50/p99 latency are printed with the ratios
//! against nginx and HAProxy. Then the first request to a stopped app (autostart)
//! beside the machine's own start (API start → `started`, then until it
//! accepts connections), medians of `RUNS` cycles.
//!
//! Usage (root, through `bench/proxy.sh`): `hangar-bench-proxy [RUNS] [SECONDS]`.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hangar_bench::peers::{haproxy_http, nginx_http, threads_cpu};
use hangar_bench::{Wrk, machine_v4, median, start_nginx_machine, web_daemon, wrk};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let runs: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(5);
    let seconds: u32 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(10);
    let conns = 32;

    let (_reg, d, image) = web_daemon().await?;
    let c = d.client();
    c.create_app("bench").await?;
    let id = start_nginx_machine(&c, "bench", &image).await?;
    let v4 = machine_v4(&c, "bench", &id).await?;
    let upstream = format!("{v4}:8080");
    let direct = format!("http://{upstream}/");
    let proxy = format!("http://{}/", d.proxy_http);
    let work = tempfile::tempdir()?;
    let ng = nginx_http(work.path(), hangar_test_utils::free_port(), &upstream)?;
    let via_nginx = format!("http://127.0.0.1:{}/", ng.port);
    let ha = haproxy_http(work.path(), hangar_test_utils::free_port(), &upstream)?;
    let via_haproxy = format!("http://127.0.0.1:{}/", ha.port);

    // Warm up every path.
    for (url, host) in [
        (&direct, None),
        (&proxy, Some("bench.localhost")),
        (&via_nginx, Some("bench.localhost")),
        (&via_haproxy, Some("bench.localhost")),
    ] {
        wrk(url, host, 2, conns)?;
    }
    let mut results: [Vec<Wrk>; 4] = Default::default();
    // CPU time per request of each proxy, microseconds.
    let mut cpu: [Vec<f64>; 3] = Default::default();
    let hangard_pid = d.pid().context("hangard's pid")?;
    let per_request = |cpu: f64, w: &Wrk| cpu * 1e6 / (w.rps * f64::from(seconds));
    for _ in 0..runs {
        results[0].push(wrk(&direct, None, seconds, conns)?);
        let before = threads_cpu(hangard_pid, "proxy-");
        let w = wrk(&proxy, Some("bench.localhost"), seconds, conns)?;
        cpu[0].push(per_request(threads_cpu(hangard_pid, "proxy-") - before, &w));
        results[1].push(w);
        for (i, (peer, url)) in [(&ng, &via_nginx), (&ha, &via_haproxy)]
            .into_iter()
            .enumerate()
        {
            let before = peer.cpu();
            let w = wrk(url, Some("bench.localhost"), seconds, conns)?;
            cpu[i + 1].push(per_request(peer.cpu() - before, &w));
            results[i + 2].push(w);
        }
    }
    drop((ng, ha));

    println!();
    println!("HTTP through the proxy: wrk -t2 -c{conns}, {seconds}s x {runs} runs, medians");
    println!(
        "  {:<22} {:>10} {:>9} {:>9}",
        "", "req/s", "p50 ms", "p99 ms"
    );
    let names = [
        "(a) machine directly",
        "(b) hangar proxy",
        "(c) nginx",
        "(d) haproxy",
    ];
    let mut med = Vec::new();
    for (name, r) in names.iter().zip(&results) {
        let rps = median(r.iter().map(|w| w.rps).collect());
        let p50 = median(r.iter().map(|w| w.p50_ms).collect());
        let p99 = median(r.iter().map(|w| w.p99_ms).collect());
        println!("  {name:<22} {rps:>10.0} {p50:>9.2} {p99:>9.2}");
        med.push((rps, p50, p99));
    }
    let (direct_m, hangar_m, nginx_m, haproxy_m) = (med[0], med[1], med[2], med[3]);
    println!();
    println!(
        "  throughput hangar / nginx        {:.2}x  (goal: >= 1.1x)",
        hangar_m.0 / nginx_m.0
    );
    println!(
        "  throughput hangar / haproxy      {:.2}x",
        hangar_m.0 / haproxy_m.0
    );
    println!(
        "  added p99: hangar {:+.2} ms, nginx {:+.2} ms, haproxy {:+.2} ms (goal: hangar <= nginx)",
        hangar_m.2 - direct_m.2,
        nginx_m.2 - direct_m.2,
        haproxy_m.2 - direct_m.2
    );
    let [cpu_h, cpu_n, cpu_ha] = cpu.map(median);
    println!(
        "  proxy CPU per request: hangar {cpu_h:.1} us, nginx {cpu_n:.1} us ({:.2}x, goal: <= 0.9x), haproxy {cpu_ha:.1} us ({:.2}x)",
        cpu_h / cpu_n,
        cpu_h / cpu_ha
    );

    // Autostart: the first request to a stopped app, beside the machine's
    // own start.
    let http = reqwest::Client::new();
    let mut own = Vec::new();
    let mut first = Vec::new();
    for _ in 0..runs.max(5) {
        c.stop_machine("bench", &id, Some("SIGKILL"), None).await?;
        c.wait_machine("bench", &id, &["stopped"], Duration::from_secs(60))
            .await?;
        let t = Instant::now();
        c.start_machine("bench", &id).await?;
        c.wait_machine("bench", &id, &["started"], Duration::from_secs(60))
            .await?;
        while std::net::TcpStream::connect(&upstream).is_err() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        own.push(t.elapsed().as_secs_f64() * 1e3);

        c.stop_machine("bench", &id, Some("SIGKILL"), None).await?;
        c.wait_machine("bench", &id, &["stopped"], Duration::from_secs(60))
            .await?;
        let t = Instant::now();
        let r = http
            .get(&proxy)
            .header("host", "bench.localhost")
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("autostart request failed: {}", r.status());
        }
        r.bytes().await?;
        first.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let (own_m, first_m) = (median(own), median(first));
    println!();
    println!("autostart ({} cycles, medians)", runs.max(5));
    println!("  machine's own start (API start -> listening) {own_m:>8.2} ms");
    println!("  first request to the stopped app            {first_m:>8.2} ms");
    println!(
        "  first request / own start        {:.2}x  (goal: <= 1.2x)",
        first_m / own_m
    );
    c.destroy_machine("bench", &id, true).await?;
    Ok(())
}
