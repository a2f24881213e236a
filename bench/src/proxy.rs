//! The proxy beside nginx, in one run, with `wrk`:
//!
//! - (a) a machine directly (nginx serving a small page in a real crun machine, reached
//!   on its private address);
//! - (b) through the Hangar proxy (`Host: bench.localhost`);
//! - (c) through nginx configured as the equivalent reverse proxy (one
//!   upstream, the same machine, access log off, worker per CPU, kept-alive
//!   upstream connections, and the same headers Hangar adds: the
//!   X-Forwarded-* and Fly-* request headers, Via and Fly-Request-Id both
//!   ways).
//!
//! Each is measured `RUNS` times, interleaved, for `SECONDS` each; the
//! medians of requests/s and p50/p99 latency are printed with the ratios
//! against nginx. Then the first request to a stopped app (autostart)
//! beside the machine's own start (API start → `started`, then until it
//! accepts connections), medians of `RUNS` cycles.
//!
//! Usage (root, through `bench/proxy.sh`): `hangar-bench-proxy [RUNS] [SECONDS]`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hangar_api_types::MachineExecRequest;
use hangar_bench::{Wrk, median, nginx_layer, start_nginx_machine, wrk};
use hangar_test_utils::daemon::Daemon;
use hangar_test_utils::image::ImageBuilder;
use hangar_test_utils::registry::Registry;

/// CPU time (user + system, seconds) of the `/proc/<pid>/stat`-shaped
/// files given.
fn cpu_of(stats: impl IntoIterator<Item = std::path::PathBuf>) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    stats
        .into_iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .filter_map(|s| {
            // Fields after the command (which may hold spaces), from 3 on.
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
        })
        .sum::<f64>()
        / hz
}

/// CPU time of hangard's proxy worker threads.
fn hangard_proxy_cpu(pid: u32) -> f64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|t| std::fs::read_to_string(t.join("comm")).is_ok_and(|c| c.starts_with("proxy-")))
        .map(|t| t.join("stat"));
    cpu_of(tasks)
}

/// CPU time of nginx: its master `pid` and its workers.
fn nginx_cpu(pid: u32) -> f64 {
    let procs = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("stat"))
        .filter(|p| {
            std::fs::read_to_string(p).is_ok_and(|s| {
                let ppid = s
                    .rfind(')')
                    .and_then(|i| s[i + 2..].split_whitespace().nth(1))
                    .and_then(|x| x.parse::<u32>().ok());
                ppid == Some(pid)
            })
        })
        .chain([std::path::PathBuf::from(format!("/proc/{pid}/stat"))]);
    cpu_of(procs)
}

/// nginx as the equivalent reverse proxy, in the foreground, on `port`.
fn nginx(dir: &std::path::Path, port: u16, upstream: &str) -> anyhow::Result<std::process::Child> {
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes auto;\n\
             daemon off;\n\
             pid {dir}/nginx.pid;\n\
             error_log {dir}/error.log;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n\
               access_log off;\n\
               client_body_temp_path {dir}/body;\n\
               proxy_temp_path {dir}/proxy;\n\
               upstream machine {{ server {upstream}; keepalive 64; }}\n\
               server {{\n\
                 listen 127.0.0.1:{port};\n\
                 location / {{\n\
                   proxy_pass http://machine;\n\
                   proxy_http_version 1.1;\n\
                   proxy_set_header Connection \"\";\n\
                   proxy_set_header Host $host;\n\
                   proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
                   proxy_set_header X-Forwarded-Proto $scheme;\n\
                   proxy_set_header X-Forwarded-Port $server_port;\n\
                   proxy_set_header X-Forwarded-Ssl off;\n\
                   proxy_set_header Fly-Client-IP $remote_addr;\n\
                   proxy_set_header Fly-Forwarded-Proto $scheme;\n\
                   proxy_set_header Fly-Forwarded-Port $server_port;\n\
                   proxy_set_header Fly-Region local;\n\
                   proxy_set_header Fly-Request-Id $request_id;\n\
                   proxy_set_header Via \"1.1 nginx\";\n\
                   add_header Fly-Request-Id $request_id;\n\
                   add_header Via \"1.1 nginx\";\n\
                 }}\n\
               }}\n\
             }}\n",
            dir = dir.display()
        ),
    )?;
    let child = Command::new("nginx")
        .args([
            "-c",
            &conf.display().to_string(),
            "-p",
            &dir.display().to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nginx (apt-get install nginx)")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nginx did not come up");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let runs: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(5);
    let seconds: u32 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(10);
    let conns = 32;

    let reg = Registry::start().await;
    let image = ImageBuilder::busybox().layer(nginx_layer()?).build();
    reg.push("bench/web", "v1", &image).await;
    let d = Daemon::start(&[
        "--insecure-registry".into(),
        reg.addr.clone(),
        "--proxy-idle-timeout".into(),
        "1h".into(),
    ])
    .await;
    let c = d.client();
    c.create_app("bench").await?;
    let id = start_nginx_machine(&c, "bench", &format!("{}/bench/web:v1", reg.addr)).await?;
    let v4 = c
        .exec(
            "bench",
            &id,
            &MachineExecRequest {
                command: Some(vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "ip -4 -o addr show dev eth0".into(),
                ]),
                ..Default::default()
            },
        )
        .await?
        .stdout;
    let v4 = v4
        .split_whitespace()
        .nth(3)
        .and_then(|a| a.split('/').next())
        .context("the machine's IPv4 address")?
        .to_owned();
    let upstream = format!("{v4}:8080");
    let direct = format!("http://{upstream}/");
    let proxy = format!("http://{}/", d.proxy_http);
    let nginx_port = hangar_test_utils::free_port();
    let work = tempfile::tempdir()?;
    let mut ng = nginx(work.path(), nginx_port, &upstream)?;
    let via_nginx = format!("http://127.0.0.1:{nginx_port}/");

    // Warm up every path.
    for (url, host) in [
        (&direct, None),
        (&proxy, Some("bench.localhost")),
        (&via_nginx, Some("bench.localhost")),
    ] {
        wrk(url, host, 2, conns)?;
    }
    let mut results: [Vec<Wrk>; 3] = Default::default();
    // CPU time per request of each proxy, microseconds.
    let mut cpu: [Vec<f64>; 2] = Default::default();
    let hangard_pid = d.pid().context("hangard's pid")?;
    let per_request = |cpu: f64, w: &Wrk| cpu * 1e6 / (w.rps * f64::from(seconds));
    for _ in 0..runs {
        results[0].push(wrk(&direct, None, seconds, conns)?);
        let before = hangard_proxy_cpu(hangard_pid);
        let w = wrk(&proxy, Some("bench.localhost"), seconds, conns)?;
        cpu[0].push(per_request(hangard_proxy_cpu(hangard_pid) - before, &w));
        results[1].push(w);
        let before = nginx_cpu(ng.id());
        let w = wrk(&via_nginx, Some("bench.localhost"), seconds, conns)?;
        cpu[1].push(per_request(nginx_cpu(ng.id()) - before, &w));
        results[2].push(w);
    }
    // SIGTERM, so nginx's master ends its workers before it goes (a
    // SIGKILL would leave them running).
    let _ = Command::new("kill")
        .args(["-TERM", &ng.id().to_string()])
        .status();
    let _ = ng.wait();

    println!();
    println!("HTTP through the proxy: wrk -t2 -c{conns}, {seconds}s x {runs} runs, medians");
    println!(
        "  {:<22} {:>10} {:>9} {:>9}",
        "", "req/s", "p50 ms", "p99 ms"
    );
    let names = ["(a) machine directly", "(b) hangar proxy", "(c) nginx"];
    let mut med = Vec::new();
    for (name, r) in names.iter().zip(&results) {
        let rps = median(r.iter().map(|w| w.rps).collect());
        let p50 = median(r.iter().map(|w| w.p50_ms).collect());
        let p99 = median(r.iter().map(|w| w.p99_ms).collect());
        println!("  {name:<22} {rps:>10.0} {p50:>9.2} {p99:>9.2}");
        med.push((rps, p50, p99));
    }
    let (direct_m, hangar_m, nginx_m) = (med[0], med[1], med[2]);
    println!();
    println!(
        "  throughput hangar / nginx        {:.2}x  (goal: >= 1.0x)",
        hangar_m.0 / nginx_m.0
    );
    println!(
        "  added p99: hangar {:+.2} ms, nginx {:+.2} ms (goal: hangar <= nginx)",
        hangar_m.2 - direct_m.2,
        nginx_m.2 - direct_m.2
    );
    let (cpu_h, cpu_n) = (median(cpu[0].clone()), median(cpu[1].clone()));
    println!(
        "  proxy CPU per request: hangar {cpu_h:.1} us, nginx {cpu_n:.1} us ({:.2}x)",
        cpu_h / cpu_n
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
