//! Raw TCP relays, in one run: an app's dedicated address with a `tcp`
//! service (no handlers, so the Hangar proxy relays the connection as it
//! is) beside socat, nginx's `stream` module and HAProxy in `tcp` mode
//! (with `option splice-auto`), all relaying to the same machine, and the
//! machine reached directly.
//!
//! Two loads, with `wrk` through each relay (it speaks HTTP to nginx in the
//! machine; the relays see only bytes):
//!
//! - bulk: `GET` of a 16 MiB file over 4 connections, in MiB/s, and each
//!   relay's CPU time per GiB moved;
//! - small: `GET` of a small page over 32 connections, in requests/s with
//!   p99, and CPU time per request.
//!
//! Each is measured `RUNS` times, interleaved, for `SECONDS` each;
//! medians, with ratios against nginx's `stream` relay.
//!
//! Usage (root, through `bench/relay.sh`): `hangar-bench-relay [RUNS] [SECONDS]`.

use std::time::Duration;

use anyhow::{Context, bail};
use hangar_bench::peers::{Peer, haproxy_tcp, nginx_stream, socat, tree_cpu};
use hangar_bench::{Wrk, machine_v4, median, web_daemon, wrk};

/// The bulk load's file, MiB.
const BIG_MIB: u64 = 16;
/// The app's raw TCP port on its dedicated address.
const PORT: u16 = 9000;

/// One relay under test: where wrk goes and whose CPU time counts.
struct Relay {
    name: &'static str,
    addr: String,
    /// A process whose CPU time (children included) is the relay's; none
    /// for the machine itself.
    pid: Option<u32>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let runs: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(5);
    let seconds: u32 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(5);

    let (_reg, d, image) = web_daemon().await?;
    let c = d.client();
    c.create_app("relay").await?;
    let (ok, out, err) = d.cli(&["ips", "allocate-v4", "-a", "relay"]);
    if !ok {
        bail!("allocating a dedicated address: {out}{err}");
    }
    let ip = c
        .list_ips("relay")
        .await?
        .into_iter()
        .find(|i| !i.shared)
        .context("the app's dedicated address")?
        .ip;
    let cmd = format!(
        "dd if=/dev/zero of=/www/big bs=1M count={BIG_MIB} 2>/dev/null && \
         exec /usr/sbin/nginx -c /etc/nginx-bench.conf -p /tmp"
    );
    let config: hangar_api_types::MachineConfig = serde_json::from_value(serde_json::json!({
        "image": image,
        "guest": {"cpu_kind": "shared", "cpus": 2, "memory_mb": 512},
        "init": {"cmd": ["/bin/sh", "-c", cmd]},
        // Above wrk's connections: Fly's default hard limit (25) would
        // refuse some.
        "services": [{"protocol": "tcp", "internal_port": 8080,
            "concurrency": {"type": "connections", "soft_limit": 1000, "hard_limit": 1000},
            "ports": [{"port": PORT}]}],
    }))?;
    let m = c
        .create_machine(
            "relay",
            &hangar_api_types::CreateMachineRequest {
                config: Some(config),
                ..Default::default()
            },
        )
        .await?;
    c.wait_machine("relay", &m.id, &["started"], Duration::from_secs(60))
        .await?;
    let v4 = machine_v4(&c, "relay", &m.id).await?;
    let upstream = format!("{v4}:8080");
    hangar_test_utils::wait_until(Duration::from_secs(30), "the machine's nginx", || {
        let u = upstream.clone();
        async move { std::net::TcpStream::connect(u).ok().map(|_| ()) }
    })
    .await;
    // The dedicated address's listener opens within a reconcile pass.
    let dedicated = format!("{ip}:{PORT}");
    hangar_test_utils::wait_until(Duration::from_secs(30), "the dedicated address", || {
        let a = dedicated.clone();
        async move {
            reqwest::get(format!("http://{a}/index.html"))
                .await
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ())
        }
    })
    .await;

    let work = tempfile::tempdir()?;
    let peers: Vec<(&'static str, Peer)> = vec![
        ("socat", socat(hangar_test_utils::free_port(), &upstream)?),
        (
            "nginx stream",
            nginx_stream(work.path(), hangar_test_utils::free_port(), &upstream)?,
        ),
        (
            "haproxy tcp",
            haproxy_tcp(work.path(), hangar_test_utils::free_port(), &upstream)?,
        ),
    ];
    let mut relays = vec![
        Relay {
            name: "machine directly",
            addr: upstream.clone(),
            pid: None,
        },
        Relay {
            name: "hangar",
            addr: dedicated.clone(),
            pid: Some(d.pid().context("hangard's pid")?),
        },
    ];
    for (name, p) in &peers {
        relays.push(Relay {
            name,
            addr: format!("127.0.0.1:{}", p.port),
            pid: Some(p.pid()),
        });
    }

    // Warm up every path, checking the file comes whole.
    for r in &relays {
        let body = reqwest::get(format!("http://{}/big", r.addr))
            .await?
            .bytes()
            .await?;
        if body.len() as u64 != BIG_MIB << 20 {
            bail!("{}: {} bytes of the file", r.name, body.len());
        }
        wrk(&format!("http://{}/", r.addr), None, 1, 32)?;
    }

    // Per relay: (MiB/s, CPU s per GiB) for bulk, (wrk, CPU us per request)
    // for small.
    let n = relays.len();
    let mut bulk: Vec<Vec<(f64, f64)>> = vec![Vec::new(); n];
    let mut small: Vec<Vec<(Wrk, f64)>> = vec![Vec::new(); n];
    for _ in 0..runs {
        for (i, r) in relays.iter().enumerate() {
            let cpu0 = r.pid.map(tree_cpu);
            let w = wrk(&format!("http://{}/big", r.addr), None, seconds, 4)?;
            if w.socket_errors > 0 {
                bail!("{}: {} socket errors in wrk's run", r.name, w.socket_errors);
            }
            let mib_s = w.rps * BIG_MIB as f64;
            let cpu = settled_cpu(r.pid).zip(cpu0).map(|(a, b)| a - b);
            let per_gib = cpu.map_or(f64::NAN, |c| c / (mib_s * f64::from(seconds) / 1024.0));
            bulk[i].push((mib_s, per_gib));

            let cpu0 = r.pid.map(tree_cpu);
            let w = wrk(&format!("http://{}/", r.addr), None, seconds, 32)?;
            if w.socket_errors > 0 {
                bail!("{}: {} socket errors in wrk's run", r.name, w.socket_errors);
            }
            let cpu = settled_cpu(r.pid).zip(cpu0).map(|(a, b)| a - b);
            let per_req = cpu.map_or(f64::NAN, |c| c * 1e6 / (w.rps * f64::from(seconds)));
            small[i].push((w, per_req));
        }
    }
    drop(peers);

    println!();
    println!(
        "raw TCP relays: wrk -t2, {seconds}s x {runs} runs, medians; ratios against nginx stream"
    );
    println!(
        "  {:<18} {:>10} {:>12} {:>10} {:>9} {:>13}",
        "", "bulk MiB/s", "CPU s/GiB", "small r/s", "p99 ms", "CPU us/req"
    );
    let med = |i: usize| {
        let b = &bulk[i];
        let s = &small[i];
        (
            median(b.iter().map(|x| x.0).collect()),
            median(b.iter().map(|x| x.1).collect()),
            median(s.iter().map(|x| x.0.rps).collect()),
            median(s.iter().map(|x| x.0.p99_ms).collect()),
            median(s.iter().map(|x| x.1).collect()),
        )
    };
    for (i, r) in relays.iter().enumerate() {
        let (mib, gib_cpu, rps, p99, req_cpu) = med(i);
        println!(
            "  {:<18} {mib:>10.0} {gib_cpu:>12.3} {rps:>10.0} {p99:>9.2} {req_cpu:>13.1}",
            r.name
        );
    }
    let nginx = relays
        .iter()
        .position(|r| r.name == "nginx stream")
        .context("nginx")?;
    let (h, ng) = (med(1), med(nginx));
    println!();
    println!(
        "  hangar / nginx stream: bulk {:.2}x at {:.2}x the CPU per GiB; small {:.2}x at {:.2}x the CPU per request",
        h.0 / ng.0,
        h.1 / ng.1,
        h.2 / ng.2,
        h.4 / ng.4
    );
    c.destroy_machine("relay", &m.id, true).await?;
    Ok(())
}

/// A relay's CPU time once the connections wrk closed have ended (socat's
/// per-connection children count when reaped).
fn settled_cpu(pid: Option<u32>) -> Option<f64> {
    let pid = pid?;
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let mut last = tree_cpu(pid);
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = tree_cpu(pid);
        if now == last || std::time::Instant::now() > deadline {
            return Some(now);
        }
        last = now;
    }
}
