//! Machines' private traffic across hosts (the WireGuard mesh, here
//! `wireguard-go`) beside the same traffic within one host, in one run.
//!
//! Two hosts, each a release `hangard` in a network namespace of its own
//! (the test harness's `Lan`), PostgreSQL on the LAN; a server machine on
//! host 0 (busybox httpd serving a 64 MiB file), a client machine on host 0
//! ("near": bridge to bridge) and one on host 1 ("far": through the mesh).
//! Each run, interleaved: (a) the near client fetches the file, (b) the far
//! one does; (c) the near client makes 100 small requests one after the
//! other (a new connection each, with `nc`), (d) the far one does. Times
//! are taken inside the machines (`/proc/uptime`, 10 ms steps). Medians of
//! `RUNS`. Usage (root, through `bench/mesh.sh`): `hangar-bench-mesh [RUNS]`.

use std::time::Duration;

use hangar_api_types::{CreateMachineRequest, MachineConfig, MachineExecRequest};
use hangar_bench::median;
use hangar_client::Client;
use hangar_test_utils::image::ImageBuilder;
use hangar_test_utils::netns::Lan;
use hangar_test_utils::postgres::Postgres;
use hangar_test_utils::registry::Registry;
use serde_json::json;

async fn machine(
    c: &Client,
    image: &str,
    region: &str,
    cmd: &str,
) -> anyhow::Result<(String, String)> {
    let config: MachineConfig = serde_json::from_value(json!({
        "image": image,
        "init": {"cmd": ["/bin/sh", "-c", cmd]},
        "guest": {"cpus": 1, "memory_mb": 256},
    }))?;
    let m = c
        .create_machine(
            "bench",
            &CreateMachineRequest {
                config: Some(config),
                region: Some(region.into()),
                ..Default::default()
            },
        )
        .await?;
    c.wait_machine("bench", &m.id, &["started"], Duration::from_secs(60))
        .await?;
    let m = c.get_machine("bench", &m.id).await?;
    Ok((m.id, m.private_ip))
}

/// Runs `script` in machine `id`; its output.
async fn sh(c: &Client, id: &str, script: &str) -> anyhow::Result<String> {
    let r = c
        .exec(
            "bench",
            id,
            &MachineExecRequest {
                command: Some(vec!["/bin/sh".into(), "-c".into(), script.into()]),
                timeout: Some(120),
                ..Default::default()
            },
        )
        .await?;
    if r.exit_code != 0 {
        anyhow::bail!("{script}: exit {}: {}{}", r.exit_code, r.stdout, r.stderr);
    }
    Ok(r.stdout)
}

/// Seconds `body` takes inside machine `id`.
async fn timed(c: &Client, id: &str, body: &str) -> anyhow::Result<f64> {
    let out = sh(
        c,
        id,
        &format!(
            "s=$(cut -d' ' -f1 /proc/uptime); {body}; e=$(cut -d' ' -f1 /proc/uptime); echo \"$s $e\""
        ),
    )
    .await?;
    let mut it = out.split_whitespace().rev();
    let e: f64 = it.next().unwrap_or("0").parse()?;
    let s: f64 = it.next().unwrap_or("0").parse()?;
    Ok(e - s)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let runs = hangar_bench::runs_arg(5)?;
    let lan = Lan::new(2);
    let pg = Postgres::start_on(&lan.gateway, &lan.network());
    pg.create_db("hangar");
    let url = pg.url("hangar");
    let reg = Registry::start_on(&lan.gateway).await;
    reg.push("base/busybox", "v1", &ImageBuilder::busybox().build())
        .await;
    let image = format!("{}/base/busybox:v1", reg.addr);
    let keys = tempfile::tempdir()?;
    let key = keys.path().join("secrets.key").display().to_string();
    let mut daemons = Vec::new();
    for (i, region) in ["ams", "sjc"].iter().enumerate() {
        let args: Vec<String> = [
            "--secrets-key-file",
            &key,
            "--insecure-registry",
            &reg.addr,
            "--cluster",
            &url,
            "--host-id",
            &format!("host-{i}"),
            "--region",
            region,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        daemons.push(lan.hangard(i, &args).await);
    }
    let c = daemons[0].client();
    // Host 0 sees host 1 up before anything is placed there.
    let http = reqwest::Client::new();
    for _ in 0..100 {
        let v: serde_json::Value = http
            .get(format!("{}/v1/hangar/hosts", daemons[0].url))
            .bearer_auth(&daemons[0].token)
            .send()
            .await?
            .json()
            .await?;
        let up = v["hosts"]
            .as_array()
            .map(|h| h.iter().filter(|h| h["state"] == "up").count())
            .unwrap_or(0);
        if up == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.create_app("bench").await?;
    let dc = daemons[1].client();
    for _ in 0..100 {
        if dc.get_app("bench").await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, server_ip) = machine(
        &c,
        &image,
        "ams",
        "mkdir -p /www && echo ok > /www/index.html \
         && dd if=/dev/zero of=/www/big bs=1M count=64 2>/dev/null \
         && exec httpd -f -p 8080 -h /www",
    )
    .await?;
    let (near, _) = machine(&c, &image, "ams", "exec sleep 3600").await?;
    let (far, _) = machine(&c, &image, "sjc", "exec sleep 3600").await?;
    let fetch_big =
        format!("printf 'GET /big HTTP/1.0\\r\\n\\r\\n' | nc {server_ip} 8080 | wc -c > /tmp/n");
    let small = format!(
        "i=0; while [ $i -lt 100 ]; do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc {server_ip} 8080 >/dev/null; i=$((i+1)); done"
    );
    // Warm both paths (the mesh's handshake, ARP and neighbours).
    for id in [&near, &far] {
        sh(&c, id, &fetch_big).await?;
        let got: u64 = sh(&c, id, "cat /tmp/n").await?.trim().parse()?;
        anyhow::ensure!(got > 64 << 20, "a fetch got {got} bytes");
    }
    let (mut a, mut b, mut cc, mut d) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        a.push(timed(&c, &near, &fetch_big).await?);
        b.push(timed(&c, &far, &fetch_big).await?);
        cc.push(timed(&c, &near, &small).await?);
        d.push(timed(&c, &far, &small).await?);
        eprintln!(
            "run {}: 64 MiB near {:.2} s far {:.2} s; 100 requests near {:.2} s far {:.2} s",
            run + 1,
            a[run],
            b[run],
            cc[run],
            d[run]
        );
    }
    let mib = 64.0;
    let (a, b, cc, d) = (median(a), median(b), median(cc), median(d));
    println!(
        "machines' private traffic, medians of {runs} runs (2 hosts in namespaces, wireguard-go):"
    );
    println!(
        "(a) 64 MiB over HTTP, same host:       {a:.2} s  {:.0} MiB/s  1.00x",
        mib / a
    );
    println!(
        "(b) 64 MiB over HTTP, across the mesh: {b:.2} s  {:.0} MiB/s  {:.2}x the time of (a)",
        mib / b,
        b / a
    );
    println!(
        "(c) 100 requests, same host:           {:.1} ms each  1.00x",
        cc * 10.0
    );
    println!(
        "(d) 100 requests, across the mesh:     {:.1} ms each  {:.2}x the time of (c)",
        d * 10.0,
        d / cc
    );
    for id in [&near, &far] {
        let _ = c.destroy_machine("bench", id, true).await;
    }
    drop(daemons);
    drop(reg);
    drop(pg);
    drop(lan);
    Ok(())
}
