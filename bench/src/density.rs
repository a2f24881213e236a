//! Density: many idle machines on one host, and what they cost.
//!
//! One `hangard`; an app `web` with one machine serving HTTP (nginx) behind
//! the proxy, and an app `idle` whose machines run `sleep` (32 MB guests),
//! all on `idle`'s one private network. With one idle machine, then with
//! `MACHINES` of them (created 10 at a time, each until `started`), the
//! same reads with `wrk -t2 -c32`: `GET` of one machine, `GET` of the list
//! of `web` (one machine), and requests to `web` through the proxy; the
//! ratio between the two states is what the machines present cost a
//! request. Beside them: hangard's RSS, the host's memory per idle machine
//! (`MemAvailable` before and after), and how much of it is the machines'
//! own (their cgroups' memory, `hangar_machine_memory_bytes`). Then, with
//! the machines present, a mixed load: the proxy and `GET` of one machine
//! under wrk (16 connections each) and stop/start cycles of idle machines
//! (10 clients), each alone and then all three at once, with the share of
//! its own figure each keeps. Then every idle machine is destroyed, 10 at
//! a time.
//!
//! Run it through `bench/density.sh`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hangar_api_types::CreateMachineRequest;
use hangar_bench::{Wrk, median, nginx_layer, rate, start_nginx_machine, wrk_with};
use hangar_test_utils::daemon::Daemon;
use hangar_test_utils::image::ImageBuilder;
use hangar_test_utils::registry::Registry;

const CLIENTS: usize = 10;

/// A `kB` field of a `/proc` file, in MiB.
fn proc_kb(path: &str, field: &str) -> anyhow::Result<f64> {
    let text = std::fs::read_to_string(path)?;
    let kb: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("{field} in {path}"))?;
    Ok(kb / 1024.0)
}

/// The host's available memory, once the kernel has let go of what it
/// frees lazily (namespaces, cgroups): the median of a few readings.
async fn mem_available() -> anyhow::Result<f64> {
    let mut v = Vec::new();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        v.push(proc_kb("/proc/meminfo", "MemAvailable:")?);
    }
    Ok(median(v))
}

/// The sum of the machines' own memory (their cgroups), from the metrics.
async fn machines_memory(d: &Daemon, app: &str) -> anyhow::Result<f64> {
    let text = reqwest::Client::new()
        .get(format!("{}/metrics", d.url))
        .bearer_auth(&d.token)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let prefix = format!("hangar_machine_memory_bytes{{app=\"{app}\",");
    Ok(text
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>()
        / (1024.0 * 1024.0))
}

/// hangard's CPU use while nothing is asked of it, over `secs` seconds,
/// in percent of one core (utime + stime of all its threads).
async fn idle_cpu(pid: u32, secs: u64) -> anyhow::Result<f64> {
    let ticks = || -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let rest = &stat[stat.rfind(')').context("stat")? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        Ok(f[11].parse::<f64>()? + f[12].parse::<f64>()?)
    };
    let hz = 100.0; // USER_HZ on Linux
    let t0 = ticks()?;
    tokio::time::sleep(Duration::from_secs(secs)).await;
    Ok((ticks()? - t0) / hz / secs as f64 * 100.0)
}

struct Reads {
    one: Vec<f64>,
    list: Vec<f64>,
    proxy: Vec<f64>,
}

/// The three reads, each a URL and its one header: `GET` of one machine,
/// `GET` of the list of `web`, the proxy to `web`.
fn targets(d: &Daemon, one: &str) -> [(String, String); 3] {
    let auth = format!("Authorization: Bearer {}", d.token);
    [
        (
            format!("{}/v1/apps/idle/machines/{one}", d.url),
            auth.clone(),
        ),
        (format!("{}/v1/apps/web/machines", d.url), auth),
        (
            format!("http://{}/", d.proxy_http),
            "Host: web.localhost".to_owned(),
        ),
    ]
}

/// wrk with `conns` connections against a target, off the runtime's
/// threads; fails on any error answer.
async fn load(target: &(String, String), seconds: u32, conns: u32) -> anyhow::Result<Wrk> {
    let (url, headers) = (target.0.clone(), vec![target.1.clone()]);
    let w = tokio::task::spawn_blocking(move || wrk_with(&url, &headers, seconds, conns)).await??;
    anyhow::ensure!(
        w.non_2xx == 0 && w.socket_errors == 0,
        "{} non-2xx answers and {} socket errors from {}",
        w.non_2xx,
        w.socket_errors,
        target.0
    );
    Ok(w)
}

/// Stops and starts machines of `idle`, [`CLIENTS`] at a time (each client
/// cycling through machines of its own), each operation until its state
/// is reached, for about `seconds`; operations per second.
async fn stop_start(
    c: &hangar_client::Client,
    ids: &[String],
    seconds: u32,
) -> anyhow::Result<f64> {
    let t = Instant::now();
    let deadline = t + Duration::from_secs(seconds.into());
    let mut tasks = Vec::new();
    for k in 0..CLIENTS {
        let mine: Vec<String> = ids
            .iter()
            .skip(k)
            .step_by(CLIENTS)
            .take(5)
            .cloned()
            .collect();
        anyhow::ensure!(!mine.is_empty(), "too few machines for {CLIENTS} clients");
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut ops = 0u64;
            for id in mine.iter().cycle() {
                if Instant::now() >= deadline {
                    break;
                }
                c.stop_machine("idle", id, None, None).await?;
                c.wait_machine("idle", id, &["stopped"], Duration::from_secs(60))
                    .await?;
                c.start_machine("idle", id).await?;
                c.wait_machine("idle", id, &["started"], Duration::from_secs(60))
                    .await?;
                ops += 2;
            }
            Ok::<u64, anyhow::Error>(ops)
        }));
    }
    let mut ops = 0;
    for task in tasks {
        ops += task.await??;
    }
    Ok(ops as f64 / t.elapsed().as_secs_f64())
}

/// One mixed round: the proxy and `GET` of one machine under wrk (16
/// connections each) and stop/start cycles, each alone and then all three
/// at once; (alone, together) for each.
struct Mixed {
    proxy: Vec<(Wrk, Wrk)>,
    api: Vec<(Wrk, Wrk)>,
    ops: Vec<(f64, f64)>,
    /// The host's CPU time (all processes, ms) per stop or start, alone.
    cpu_per_op: Vec<f64>,
}

/// CPU time the host has spent busy (every CPU, ms), from `/proc/stat`.
fn host_busy_ms() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| anyhow::anyhow!("no cpu line in /proc/stat"))?;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    anyhow::ensure!(v.len() >= 5, "short cpu line in /proc/stat");
    // user nice system idle iowait irq softirq steal ...: all but idle and
    // iowait, in clock ticks.
    let busy: f64 = v
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| x)
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(busy * 1000.0 / hz)
}

/// Starts `perf record -a -g` into `$HANGAR_BENCH_PERF` if it is set.
fn profile_start() -> anyhow::Result<Option<tokio::process::Child>> {
    let Some(out) = std::env::var_os("HANGAR_BENCH_PERF") else {
        return Ok(None);
    };
    let child = tokio::process::Command::new("perf")
        .args(["record", "-a", "-g", "-F", "97", "-q", "-o"])
        .arg(out)
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("perf (linux-perf)")?;
    Ok(Some(child))
}

/// Ends the profile `profile_start` began (SIGINT: perf writes it out).
async fn profile_stop(perf: Option<tokio::process::Child>) {
    let Some(mut perf) = perf else { return };
    if let Some(pid) = perf.id() {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid as i32, libc::SIGINT) };
    }
    let _ = perf.wait().await;
}

async fn mixed(
    d: &Daemon,
    one: &str,
    cycled: &[String],
    runs: usize,
    seconds: u32,
) -> anyhow::Result<Mixed> {
    let [api_t, _, proxy_t] = targets(d, one);
    let c = d.client();
    let mut out = Mixed {
        proxy: Vec::new(),
        api: Vec::new(),
        ops: Vec::new(),
        cpu_per_op: Vec::new(),
    };
    for _ in 0..runs {
        let proxy_alone = load(&proxy_t, seconds, 16).await?;
        let api_alone = load(&api_t, seconds, 16).await?;
        // `HANGAR_BENCH_PERF=FILE`: a system-wide profile of this phase
        // (`perf record -a -g`), to find where a stop/start's CPU goes.
        let perf = profile_start()?;
        let (busy, t) = (host_busy_ms()?, Instant::now());
        let ops_alone = stop_start(&c, cycled, seconds).await?;
        profile_stop(perf).await;
        let done = ops_alone * t.elapsed().as_secs_f64();
        out.cpu_per_op
            .push((host_busy_ms()? - busy) / done.max(1.0));
        let (proxy, api, ops) = tokio::join!(
            load(&proxy_t, seconds, 16),
            load(&api_t, seconds, 16),
            stop_start(&c, cycled, seconds)
        );
        out.proxy.push((proxy_alone, proxy?));
        out.api.push((api_alone, api?));
        out.ops.push((ops_alone, ops?));
    }
    Ok(out)
}

async fn reads(d: &Daemon, one: &str, runs: usize, seconds: u32) -> anyhow::Result<Reads> {
    let targets = targets(d, one);
    let mut out = Reads {
        one: Vec::new(),
        list: Vec::new(),
        proxy: Vec::new(),
    };
    for _ in 0..runs {
        for (i, target) in targets.iter().enumerate() {
            let w = load(target, seconds, 32).await?;
            [&mut out.one, &mut out.list, &mut out.proxy][i].push(w.rps);
        }
    }
    Ok(out)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let machines: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let runs: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(3);
    let seconds: u32 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(5);
    anyhow::ensure!(machines >= 2, "at least 2 machines");

    let reg = Registry::start().await;
    reg.push("bench/bb", "v1", &ImageBuilder::busybox().build())
        .await;
    reg.push(
        "bench/web",
        "v1",
        &ImageBuilder::busybox().layer(nginx_layer()?).build(),
    )
    .await;
    let d = Daemon::start(&[
        "--insecure-registry".into(),
        reg.addr.clone(),
        "--proxy-idle-timeout".into(),
        "1h".into(),
    ])
    .await;
    let pid = d.pid().context("hangard's pid")?;
    let rss = || proc_kb(&format!("/proc/{pid}/status"), "VmRSS:");
    let c = d.client();
    c.create_app("web").await?;
    c.create_app("idle").await?;
    start_nginx_machine(&c, "web", &format!("{}/bench/web:v1", reg.addr)).await?;
    let idle = CreateMachineRequest {
        config: Some(serde_json::from_value(serde_json::json!({
            "image": format!("{}/bench/bb:v1", reg.addr),
            "init": {"cmd": ["/bin/sleep", "1000000"]},
            "restart": {"policy": "no"},
            "guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 32},
        }))?),
        ..Default::default()
    };
    let create = |c: hangar_client::Client, req: CreateMachineRequest| async move {
        let id = c.create_machine("idle", &req).await?.id;
        c.wait_machine("idle", &id, &["started"], Duration::from_secs(300))
            .await
            .with_context(|| format!("{id} to be started"))?;
        Ok::<_, anyhow::Error>(id)
    };
    let first = create(c.clone(), idle.clone()).await?;
    // Warm every path, then measure with one idle machine.
    reads(&d, &first, 1, 1).await?;
    let mem0 = mem_available().await?;
    let own0 = machines_memory(&d, "idle").await?;
    let rss0 = rss()?;
    let cpu0 = idle_cpu(pid, 10).await?;
    let before = reads(&d, &first, runs, seconds).await?;

    let made = Arc::new(std::sync::Mutex::new(vec![first.clone()]));
    let create_rate = {
        let (c, made) = (c.clone(), made.clone());
        rate((1..machines).collect(), CLIENTS, move |_| {
            let (c, idle, made) = (c.clone(), idle.clone(), made.clone());
            async move {
                let id = create(c, idle).await?;
                made.lock().unwrap().push(id);
                Ok(())
            }
        })
        .await?
    };
    let present = c.list_machines("idle", &Default::default()).await?.len();
    anyhow::ensure!(present == machines, "{present} machines, not {machines}");
    let mem1 = mem_available().await?;
    let own1 = machines_memory(&d, "idle").await?;
    let rss1 = rss()?;
    let cpu1 = idle_cpu(pid, 10).await?;
    let after = reads(&d, &first, runs, seconds).await?;
    let rss2 = rss()?;
    let ids: Vec<String> = made.lock().unwrap().clone();
    let cycled: Vec<String> = ids.iter().filter(|i| **i != first).cloned().collect();
    let mix = mixed(&d, &first, &cycled, runs, seconds).await?;

    let destroy_rate = {
        let c = c.clone();
        rate(ids, CLIENTS, move |id| {
            let c = c.clone();
            async move {
                c.destroy_machine("idle", &id, true).await?;
                c.wait_machine("idle", &id, &["destroyed"], Duration::from_secs(300))
                    .await
                    .with_context(|| format!("{id} to be destroyed"))?;
                Ok(())
            }
        })
        .await?
    };

    let added = (machines - 1) as f64;
    let per_machine = (mem0 - mem1) / added;
    let own_per_machine = (own1 - own0) / added;
    println!(
        "\nDensity: {machines} idle machines in one app (32 MB guests running sleep), \
         wrk -t2 -c32, {seconds}s x {runs} runs, medians"
    );
    println!(
        "  {:<42} {:>12} {:>14} {:>8}",
        "",
        "1 machine",
        format!("{machines} machines"),
        "ratio"
    );
    for (what, b, a) in [
        ("GET one machine (req/s)", before.one, after.one),
        (
            "GET list of another app, 1 machine",
            before.list,
            after.list,
        ),
        ("proxy to another app's machine", before.proxy, after.proxy),
    ] {
        let (b, a) = (median(b), median(a));
        println!("  {what:<42} {b:>12.0} {a:>14.0} {:>7.2}x", a / b);
    }
    println!(
        "  {:<42} {rss0:>12.1} {rss1:>14.1}   (after the reads: {rss2:.1} MiB)",
        "hangard RSS (MiB)"
    );
    println!(
        "  {:<42} {cpu0:>11.1}% {cpu1:>13.1}%   (of one core, over 10 s)",
        "hangard CPU while idle"
    );
    println!(
        "  host memory per idle machine             {per_machine:>8.2} MiB, of which the machine's own \
         (its cgroup) {own_per_machine:.2} MiB, beyond it {:.2} MiB",
        per_machine - own_per_machine
    );
    println!(
        "  hangard RSS per machine                  {:>8.1} KiB",
        (rss1 - rss0) * 1024.0 / added
    );
    println!("  created, until started                   {create_rate:>8.1} /s (10 clients)");
    println!("  destroyed, until destroyed               {destroy_rate:>8.1} /s (10 clients)");

    println!(
        "\nMixed, with {machines} machines present: each load alone, then the three at once \
         ({seconds}s x {runs} runs, medians)"
    );
    println!(
        "  {:<34} {:>10} {:>10} {:>7} {:>12} {:>12}",
        "", "alone", "together", "share", "p99 alone", "p99 together"
    );
    let mut shares = 0.0;
    for (what, v) in [
        ("proxy to web, 16 conns (req/s)", &mix.proxy),
        ("GET one machine, 16 conns (req/s)", &mix.api),
    ] {
        let alone = median(v.iter().map(|x| x.0.rps).collect());
        let together = median(v.iter().map(|x| x.1.rps).collect());
        let p99a = median(v.iter().map(|x| x.0.p99_ms).collect());
        let p99t = median(v.iter().map(|x| x.1.p99_ms).collect());
        shares += together / alone;
        println!(
            "  {what:<34} {alone:>10.0} {together:>10.0} {:>6.2}x {p99a:>9.2} ms {p99t:>9.2} ms",
            together / alone
        );
    }
    let alone = median(mix.ops.iter().map(|x| x.0).collect());
    let together = median(mix.ops.iter().map(|x| x.1).collect());
    shares += together / alone;
    println!(
        "  {:<34} {alone:>10.1} {together:>10.1} {:>6.2}x",
        "stop/start, 10 clients (ops/s)",
        together / alone
    );
    println!(
        "  host CPU per stop or start, alone: {:.1} ms (every process, the bench's own included)",
        median(mix.cpu_per_op.clone())
    );
    println!(
        "  sum of the shares {shares:.2} (1.0: the three split the CPU with nothing lost to \
         contention; more: they use what one alone leaves idle)"
    );
    Ok(())
}
