//! What the benchmarks share: running `wrk` and reading its report, medians.

pub mod peers;
pub mod start;

use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use hangar_test_utils::image::Layer;

/// What one wrk run reports.
#[derive(Debug, Clone, Copy)]
pub struct Wrk {
    /// Requests per second.
    pub rps: f64,
    /// Median latency.
    pub p50_ms: f64,
    /// 99th percentile latency.
    pub p99_ms: f64,
    /// Requests answered with a status other than 2xx or 3xx.
    pub non_2xx: u64,
    /// Connect, read, write and timeout errors.
    pub socket_errors: u64,
    /// Requests in all.
    pub requests: u64,
}

/// `1.23ms`, `456us`, `2s` in milliseconds.
pub fn parse_latency(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
    let v: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => v / 1000.0,
        "ms" => v,
        "s" => v * 1000.0,
        "m" => v * 60_000.0,
        _ => return None,
    })
}

/// Runs wrk against `url` (with `Host: host`) and fails on any non-2xx
/// answer.
pub fn wrk(url: &str, host: Option<&str>, seconds: u32, conns: u32) -> anyhow::Result<Wrk> {
    let w = wrk_report(url, host, seconds, conns)?;
    if w.non_2xx > 0 {
        bail!("wrk saw {} non-2xx answers against {url}", w.non_2xx);
    }
    Ok(w)
}

/// Runs wrk against `url` (with `Host: host`) and reads its report,
/// errors included.
pub fn wrk_report(url: &str, host: Option<&str>, seconds: u32, conns: u32) -> anyhow::Result<Wrk> {
    let headers: Vec<String> = host.map(|h| format!("Host: {h}")).into_iter().collect();
    wrk_with(url, &headers, seconds, conns)
}

/// Runs wrk against `url` with these request headers (`Name: value`) and
/// reads its report, errors included.
pub fn wrk_with(url: &str, headers: &[String], seconds: u32, conns: u32) -> anyhow::Result<Wrk> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t",
        "2",
        "-c",
        &conns.to_string(),
        "-d",
        &format!("{seconds}s"),
        "--latency",
    ]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    let line = |prefix: &str| -> Option<&str> {
        text.lines().map(str::trim).find(|l| l.starts_with(prefix))
    };
    let field = |prefix: &str| -> Option<String> {
        line(prefix)
            .and_then(|l| l.split_whitespace().nth(1))
            .map(str::to_owned)
    };
    let non_2xx = line("Non-2xx or 3xx responses:")
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    // "Socket errors: connect 0, read 3, write 0, timeout 0"
    let socket_errors = line("Socket errors:")
        .map(|l| {
            l.split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    let requests = text
        .lines()
        .map(str::trim)
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Ok(Wrk {
        rps: field("Requests/sec:")
            .and_then(|v| v.parse().ok())
            .context("no Requests/sec in wrk's output")?,
        p50_ms: field("50%")
            .and_then(|v| parse_latency(&v))
            .context("no p50")?,
        p99_ms: field("99%")
            .and_then(|v| parse_latency(&v))
            .context("no p99")?,
        non_2xx,
        socket_errors,
        requests,
    })
}

/// Runs `cmd`; fails with its output when it fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().context("running a tool")?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The benchmark's first argument, a number of runs (`default` without
/// one).
pub fn runs_arg(default: usize) -> anyhow::Result<usize> {
    Ok(std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(default))
}

/// The median.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The machine's web server: the host's nginx with its libraries (busybox
/// httpd forks per connection and keeps none alive, which would make the
/// backend, not the proxies, what is measured).
pub fn nginx_layer() -> anyhow::Result<Layer> {
    let nginx = "/usr/sbin/nginx";
    let ldd = Command::new("ldd")
        .arg(nginx)
        .output()
        .context("ldd (apt-get install nginx-light)")?;
    let mut files = vec![nginx.to_owned()];
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            files.push(p.to_owned());
        }
    }
    let mut dirs = std::collections::BTreeSet::new();
    for f in &files {
        let mut p = std::path::Path::new(f).parent();
        while let Some(d) = p.filter(|d| *d != std::path::Path::new("/")) {
            dirs.insert(d.to_string_lossy().trim_start_matches('/').to_owned());
            p = d.parent();
        }
    }
    dirs.extend(["www".to_owned(), "tmp".to_owned(), "etc".to_owned()]);
    let mut layer = Layer::new();
    for d in &dirs {
        layer = layer.dir(d, 0o755);
    }
    for f in &files {
        let data = std::fs::read(f).with_context(|| format!("reading {f}"))?;
        layer = layer.file(f.trim_start_matches('/'), &data, 0o755);
    }
    let conf = "daemon off;\nuser root;\nworker_processes 2;\npid /tmp/nginx.pid;\n\
        error_log stderr;\nevents { worker_connections 4096; }\n\
        http { access_log off; client_body_temp_path /tmp/body; proxy_temp_path /tmp/proxy;\n\
        fastcgi_temp_path /tmp/fcgi; uwsgi_temp_path /tmp/uwsgi; scgi_temp_path /tmp/scgi;\n\
        keepalive_requests 100000;\n\
        server { listen 8080; listen [::]:8080; root /www; } }\n";
    Ok(layer
        .file("etc/nginx-bench.conf", conf.as_bytes(), 0o644)
        .file("www/index.html", b"hello from a machine\n", 0o644))
}

/// Runs `op` on every item with `clients` at a time; items per second.
pub async fn rate<T, F, Fut>(items: Vec<T>, clients: usize, op: F) -> anyhow::Result<f64>
where
    T: Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let n = items.len();
    let op = std::sync::Arc::new(op);
    let queue = std::sync::Arc::new(std::sync::Mutex::new(items));
    let t = std::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (op, queue) = (op.clone(), queue.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let next = queue.lock().unwrap().pop();
                let Some(item) = next else {
                    return Ok::<(), anyhow::Error>(());
                };
                op(item).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// Creates, in `app`, a machine of `image` (built with [`nginx_layer`])
/// serving HTTP on 8080 behind the proxy's port 80, and waits until it is
/// started; its id.
pub async fn start_nginx_machine(
    c: &hangar_client::Client,
    app: &str,
    image: &str,
) -> anyhow::Result<String> {
    let config: hangar_api_types::MachineConfig = serde_json::from_value(serde_json::json!({
        "image": image,
        "init": {"cmd": ["/usr/sbin/nginx", "-c", "/etc/nginx-bench.conf", "-p", "/tmp"]},
        "services": [{"internal_port": 8080, "autostart": true,
            "concurrency": {"type": "requests", "soft_limit": 10000, "hard_limit": 10000},
            "ports": [{"port": 80, "handlers": ["http"]}]}],
    }))?;
    let m = c
        .create_machine(
            app,
            &hangar_api_types::CreateMachineRequest {
                config: Some(config),
                ..Default::default()
            },
        )
        .await?;
    c.wait_machine(app, &m.id, &["started"], std::time::Duration::from_secs(60))
        .await?;
    Ok(m.id)
}

/// A machine's private IPv4 address on its network, as the machine sees it.
pub async fn machine_v4(c: &hangar_client::Client, app: &str, id: &str) -> anyhow::Result<String> {
    let out = c
        .exec(
            app,
            id,
            &hangar_api_types::MachineExecRequest {
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
    Ok(out
        .split_whitespace()
        .nth(3)
        .and_then(|a| a.split('/').next())
        .context("the machine's IPv4 address")?
        .to_owned())
}

/// A registry holding `bench/web:v1` (busybox and [`nginx_layer`]) and a
/// `hangard` pulling from it whose proxy stops no machine for being idle
/// during a run; the image's reference.
pub async fn web_daemon() -> anyhow::Result<(
    hangar_test_utils::registry::Registry,
    hangar_test_utils::daemon::Daemon,
    String,
)> {
    let reg = hangar_test_utils::registry::Registry::start().await;
    let image = hangar_test_utils::image::ImageBuilder::busybox()
        .layer(nginx_layer()?)
        .build();
    reg.push("bench/web", "v1", &image).await;
    let d = hangar_test_utils::daemon::Daemon::start(&[
        "--insecure-registry".into(),
        reg.addr.clone(),
        "--proxy-idle-timeout".into(),
        "1h".into(),
    ])
    .await;
    let image = format!("{}/bench/web:v1", reg.addr);
    Ok((reg, d, image))
}
