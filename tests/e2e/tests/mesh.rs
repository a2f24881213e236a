//! End to end: three hosts, each a `hangard` in a network and mount
//! namespace of its own, on a LAN of veths the test makes, sharing one
//! PostgreSQL (on a unix socket). Their machines' private (6PN) traffic
//! goes between hosts over the WireGuard mesh (`wireguard-go`, as this
//! kernel has no WireGuard module): a machine on one host finds another
//! host's machine by `.internal` name and fetches from it; a machine of
//! another network finds and reaches nothing; the mesh keeps carrying
//! traffic while a host's `hangard` is down, and after it is back.
//!
//! The org's machines listed through one host, page by page, are every
//! host's, each once.
//!
//! Volumes stay on their host: one made for a region through host 0 lands
//! on that region's host, a machine mounting it runs there (and is refused
//! in another region), `hangar volumes fork --region` copies it to a host
//! of another region, where a machine reads what was written on the first.
//!
//! Host 0's proxy relays a request for an app that runs on host 1 only,
//! and the machine sees the client's own address and scheme, not host 0's;
//! the same headers sent by a client straight to host 1 are not believed.
//!
//! Autostop keeps `min_machines_running` across hosts: of two idle
//! machines on two hosts with a minimum of one, one stops and the other
//! keeps running.
//!
//! The proxy spills over: a request to a host whose only machine of an app
//! is at its hard limit is served by the app's machine on another host.
//!
//! Then fencing, with the database on the LAN (TCP), so that cutting a
//! host's link cuts it from the database and the other hosts alike: the
//! database gone for every host stops no machine; a host cut off while its
//! `hangard` lives stops its machine before the others declare it down and
//! start that machine's standby, and keeps it stopped when it is back, so
//! the machine and its standby never run at once. Last, a host crashes
//! (`hangard` killed, link cut): its machine's standby starts on another
//! host, its machines are listed `unreachable`, and back, it stops its own.

use std::time::Duration;

use hangar_api_types::{CreateAppRequest, CreateMachineRequest};
use hangar_client::Client;
use hangar_e2e::{http_get, lookup, request, sh, started};
use hangar_test_utils::daemon::Daemon;
use hangar_test_utils::image::ImageBuilder;
use hangar_test_utils::netns::Lan;
use hangar_test_utils::postgres::Postgres;
use hangar_test_utils::registry::Registry;
use hangar_test_utils::wait_until;
use serde_json::{Value, json};

const REGIONS: [&str; 3] = ["ams", "sjc", "fra"];

/// A request for a machine of `config` (Fly's JSON) in `region`.
fn in_region(config: Value, region: &str) -> CreateMachineRequest {
    let mut req = request(config);
    req.region = Some(region.into());
    req
}

/// A started machine of `app` in `region` running `cmd`: its id and 6PN
/// address.
async fn machine(c: &Client, app: &str, image: &str, region: &str, cmd: &str) -> (String, String) {
    let config = json!({
        "image": image,
        "init": {"cmd": ["/bin/sh", "-c", cmd]},
        "metadata": {"fly_process_group": "app"},
    });
    let m = started(c, app, &in_region(config, region)).await;
    (m.id, m.private_ip)
}

/// The hosts `d` lists.
async fn hosts(d: &Daemon) -> Vec<Value> {
    hangar_e2e::hosts(d).await["hosts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Bytes host `i`'s mesh interface has received, over all peers.
fn mesh_received(lan: &Lan, i: usize) -> u64 {
    lan.run_in(i, "wg show all transfer")
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machines_on_different_hosts_talk_over_the_mesh_and_networks_stay_apart() {
    if !hangar_test_utils::host_tier(
        "machines_on_different_hosts_talk_over_the_mesh_and_networks_stay_apart",
        &[
            "crun",
            "docker-registry",
            "wg",
            "wireguard-go",
            "nsenter",
            "unshare",
        ],
    ) {
        return;
    }
    // Dropped after the daemons: their cgroup parents go with them.
    let cgroups = CgroupParents(
        (0..REGIONS.len())
            .map(|i| format!("hangar-mesh-{}-{i}", std::process::id()))
            .collect(),
    );
    let lan = Lan::new(3);
    let pg = Postgres::start_on(&lan.gateway, &lan.network());
    pg.create_db("hangar");
    let url = pg.url("hangar");
    let reg = Registry::start_on(&lan.gateway).await;
    reg.push("base/busybox", "v1", &ImageBuilder::busybox().build())
        .await;
    let image = format!("{}/base/busybox:v1", reg.addr);
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("secrets.key").display().to_string();
    let mut daemons = Vec::new();
    for (i, region) in REGIONS.iter().enumerate() {
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
            // Long enough for a cut-off host to fence itself before the
            // others declare it down (at half of it).
            "--cluster-down-after",
            "8s",
            "--proxy-idle-timeout",
            "2s",
            "--cgroup-parent",
            &format!("/{}", cgroups.0[i]),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        daemons.push(lan.hangard(i, &args).await);
    }
    let c = daemons[0].client();
    wait_until(Duration::from_secs(15), "three hosts up", || async {
        let hs = hosts(&daemons[0]).await;
        (hs.len() == 3 && hs.iter().all(|h| h["state"] == "up")).then_some(())
    })
    .await;
    // Each host has a number of its own (the fourth group of its machines'
    // 6PN addresses) and an end of the mesh.
    let hs = hosts(&daemons[0]).await;
    let mut indexes: Vec<u64> = hs.iter().filter_map(|h| h["host_index"].as_u64()).collect();
    indexes.sort();
    indexes.dedup();
    assert_eq!(indexes.len(), 3, "{hs:?}");
    assert!(
        hs.iter()
            .all(|h| h["mesh_key"].as_str().is_some_and(|k| k.len() == 44)),
        "{hs:?}"
    );

    c.create_app("web").await.unwrap();
    c.create_app("client").await.unwrap();
    c.create_app_with(&CreateAppRequest {
        name: Some("apart".into()),
        network: Some("apart-net".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    for d in &daemons[1..] {
        let dc = d.client();
        wait_until(
            Duration::from_secs(10),
            "the apps on every host",
            || async { dc.get_app("apart").await.ok() },
        )
        .await;
    }

    // A server on host 1, a client on host 2, another network's machine on
    // host 0; all made through host 0's API.
    let server = "mkdir -p /www && echo hello-from-$FLY_MACHINE_ID > /www/index.html \
                  && exec httpd -f -p 8080 -h /www";
    let (web, web_ip) = machine(&c, "web", &image, "sjc", server).await;
    let (cli, cli_ip) = machine(&c, "client", &image, "fra", "exec sleep 3600").await;
    let (apart, apart_ip) = machine(&c, "apart", &image, "ams", "exec sleep 3600").await;
    let seg = |ip: &str| ip.parse::<std::net::Ipv6Addr>().unwrap().segments();
    // One installation, one id per network on every host, a host's number
    // in each address.
    assert_eq!(seg(&web_ip)[1], seg(&cli_ip)[1]);
    assert_eq!(seg(&web_ip)[2], seg(&cli_ip)[2], "{web_ip} {cli_ip}");
    assert_ne!(seg(&web_ip)[2], seg(&apart_ip)[2], "{web_ip} {apart_ip}");
    assert_ne!(seg(&web_ip)[3], seg(&cli_ip)[3], "{web_ip} {cli_ip}");
    let index_of = |host: &str| -> u64 {
        hs.iter().find(|h| h["id"] == host).unwrap()["host_index"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(u64::from(seg(&web_ip)[3]), index_of("host-1"));
    assert_eq!(u64::from(seg(&cli_ip)[3]), index_of("host-2"));

    // The client on host 2 finds the web machine on host 1 by name, and
    // fetches from it through the mesh.
    let found = wait_until(Duration::from_secs(15), "web.internal from host 2", || {
        let c = c.clone();
        let cli = cli.clone();
        let web_ip = web_ip.clone();
        async move {
            let got = lookup(&c, "client", &cli, "web.internal").await;
            (got == vec![web_ip]).then_some(got)
        }
    })
    .await;
    assert_eq!(found.len(), 1);
    assert_eq!(
        lookup(&c, "client", &cli, &format!("{web}.vm.web.internal")).await,
        vec![web_ip.clone()]
    );
    let before = mesh_received(&lan, 2);
    let fetch = wait_until(Duration::from_secs(15), "a fetch across hosts", || {
        let c = c.clone();
        let cli = cli.clone();
        let f = http_get(&web_ip, 3);
        async move {
            let (code, body) = sh(&c, "client", &cli, &f).await;
            (code == 0 && body.contains("hello-from-")).then_some(body)
        }
    })
    .await;
    assert!(fetch.contains(&format!("hello-from-{web}")), "{fetch}");
    // It came through the mesh, encrypted on the LAN.
    assert!(
        mesh_received(&lan, 2) > before,
        "host 2's mesh received nothing"
    );
    // The client's address seen by the server is its own 6PN one (no NAT
    // on the way).
    let (_, seen) = sh(
        &c,
        "client",
        &cli,
        &format!("ip -6 route get {web_ip} | head -1"),
    )
    .await;
    assert!(seen.contains(&web_ip), "{seen}");

    // Another network's machine on host 0: the name is not there, and the
    // address does not answer.
    assert!(lookup(&c, "apart", &apart, "web.internal").await.is_empty());
    let (code, body) = sh(&c, "apart", &apart, &http_get(&web_ip, 2)).await;
    assert!(
        code != 0 || !body.contains("hello-from-"),
        "another network reached web across hosts: {body}"
    );

    // The org's machines through host 2, two a page: every host's, each
    // once.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    for _ in 0..10 {
        let page: Value = reqwest::Client::new()
            .get(format!(
                "{}/v1/orgs/personal/machines?limit=2&summary=true&cursor={cursor}",
                daemons[2].url
            ))
            .bearer_auth(&daemons[2].token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let ms = page["machines"].as_array().unwrap();
        assert!(ms.len() <= 2, "{page}");
        assert_eq!(page["error_regions"], json!([]), "{page}");
        seen.extend(ms.iter().map(|m| m["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    seen.sort();
    let mut want = vec![web.clone(), cli.clone(), apart.clone()];
    want.sort();
    assert_eq!(seen, want);

    // Volumes: made in sjc (host 1) through host 0; a machine with it runs
    // on host 1 without being told where.
    c.create_app("store").await.unwrap();
    let vol = c
        .create_volume(
            "store",
            &hangar_api_types::CreateVolumeRequest {
                name: Some("data".into()),
                region: Some("sjc".into()),
                size_gb: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(vol.region, "sjc");
    let with_volume = |vol: &str, region: Option<&str>| {
        let mut req = request(json!({
            "image": image,
            "init": {"cmd": ["sleep", "3600"]},
            "mounts": [{"volume": vol, "path": "/data"}],
        }));
        req.region = region.map(str::to_owned);
        req
    };
    let writer = started(&c, "store", &with_volume(&vol.id, None)).await;
    assert_eq!(writer.region, "sjc");
    let (code, out) = sh(
        &c,
        "store",
        &writer.id,
        "echo written-on-host-1 > /data/f && sync",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let err = c
        .create_machine("store", &with_volume(&vol.id, Some("fra")))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("runs where its volume is"), "{err}");
    // Forked to fra with the CLI: host 2 copies it from host 1.
    let (ok, fork_out, fork_err) = daemons[0].cli(&[
        "volumes", "fork", &vol.id, "--app", "store", "--region", "fra", "--json",
    ]);
    assert!(ok, "{fork_out}{fork_err}");
    let fork: Value = serde_json::from_str(&fork_out).unwrap();
    assert_eq!(fork["region"], "fra", "{fork}");
    let fork_id = fork["id"].as_str().unwrap().to_owned();
    assert_ne!(fork_id, vol.id);
    let reader = started(&c, "store", &with_volume(&fork_id, None)).await;
    assert_eq!(reader.region, "fra");
    let (code, out) = sh(&c, "store", &reader.id, "cat /data/f").await;
    assert_eq!((code, out.trim()), (0, "written-on-host-1"));
    // Both listed through any host.
    let listed = daemons[2].client().list_volumes("store").await.unwrap();
    let mut ids: Vec<&str> = listed.iter().map(|v| v.id.as_str()).collect();
    ids.sort();
    let mut want = vec![vol.id.as_str(), fork_id.as_str()];
    want.sort();
    assert_eq!(ids, want);
    for m in [&writer.id, &reader.id] {
        c.destroy_machine("store", m, true).await.unwrap();
    }

    // The proxy: an app whose only machine runs on host 1, asked through
    // host 0; a CGI script shows what the machine was told.
    c.create_app("echo").await.unwrap();
    let echo_cfg = json!({
        "image": image,
        "init": {"cmd": ["/bin/sh", "-c",
            "mkdir -p /www/cgi-bin && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\nenv\\n' > /www/cgi-bin/env \
             && chmod +x /www/cgi-bin/env && exec httpd -f -p 8080 -h /www"]},
        "services": [{
            "protocol": "tcp", "internal_port": 8080,
            "ports": [{"port": 80, "handlers": ["http"]}],
        }],
    });
    let echo = started(&c, "echo", &in_region(echo_cfg, "sjc")).await;
    let http = reqwest::Client::new();
    let ask = |proxy: String, spoof: bool| {
        let http = http.clone();
        async move {
            let mut r = http
                .get(format!("http://{proxy}/cgi-bin/env"))
                .header("host", "echo.localhost");
            if spoof {
                r = r
                    .header("hangar-relayed", "https:443")
                    .header("hangar-relayed-for", "192.0.2.66");
            }
            let r = r.send().await.ok()?;
            r.status().is_success().then_some(())?;
            r.text().await.ok()
        }
    };
    let env = wait_until(
        Duration::from_secs(20),
        "the app through host 0's proxy",
        || ask(daemons[0].proxy_http.clone(), false),
    )
    .await;
    assert!(
        env.contains(&format!("HTTP_FLY_CLIENT_IP={}", lan.gateway)),
        "{env}"
    );
    assert!(env.contains("HTTP_X_FORWARDED_PROTO=http\n"), "{env}");
    assert!(!env.contains("HANGAR_RELAYED"), "{env}");
    // Straight to host 1 with the relay's headers: not believed.
    let env = ask(daemons[1].proxy_http.clone(), true).await.unwrap();
    assert!(
        env.contains(&format!("HTTP_FLY_CLIENT_IP={}", lan.gateway)),
        "{env}"
    );
    assert!(env.contains("HTTP_X_FORWARDED_PROTO=http\n"), "{env}");
    c.destroy_machine("echo", &echo.id, true).await.unwrap();

    // Autostop across hosts: min_machines_running 1, two idle machines on
    // hosts 1 and 2; one stops, the other (the lower id) stays.
    c.create_app("auto").await.unwrap();
    let mut auto = Vec::new();
    for region in ["sjc", "fra"] {
        let cfg = json!({
            "image": image,
            "init": {"cmd": ["/bin/sh", "-c", server]},
            "services": [{
                "protocol": "tcp", "internal_port": 8080,
                "autostop": "stop", "autostart": true, "min_machines_running": 1,
                "ports": [{"port": 80, "handlers": ["http"]}],
            }],
        });
        auto.push(started(&c, "auto", &in_region(cfg, region)).await.id);
    }
    let states = || async {
        let mut st = Vec::new();
        for id in &auto {
            st.push(c.get_machine("auto", id).await.unwrap().state);
        }
        st
    };
    wait_until(
        Duration::from_secs(30),
        "one idle machine stopped",
        || async {
            let st = states().await;
            (st.iter().filter(|s| *s == "stopped").count() == 1).then_some(())
        },
    )
    .await;
    // The other keeps running through several autostop passes (each half a
    // second; the idle timeout is 2 s).
    let kept = auto.iter().min().unwrap().clone();
    let until = std::time::Instant::now() + Duration::from_secs(4);
    while std::time::Instant::now() < until {
        assert_eq!(c.get_machine("auto", &kept).await.unwrap().state, "started");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for id in &auto {
        c.destroy_machine("auto", id, true).await.unwrap();
    }

    // Spill-over: hard limit 1; host 1's machine busy with a slow request,
    // the next one through host 1's proxy goes to host 2's machine.
    c.create_app("spill").await.unwrap();
    let mut spill = Vec::new();
    for region in ["sjc", "fra"] {
        let cfg = json!({
            "image": image,
            "init": {"cmd": ["/bin/sh", "-c",
                "mkdir -p /www/cgi-bin \
                 && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\nenv\\n' > /www/cgi-bin/env \
                 && printf '#!/bin/sh\\nsleep 4\\necho Content-Type: text/plain\\necho\\necho slow\\n' > /www/cgi-bin/slow \
                 && chmod +x /www/cgi-bin/env /www/cgi-bin/slow && exec httpd -f -p 8080 -h /www"]},
            "services": [{
                "protocol": "tcp", "internal_port": 8080,
                "concurrency": {"type": "requests", "soft_limit": 1, "hard_limit": 1},
                "ports": [{"port": 80, "handlers": ["http"]}],
            }],
        });
        spill.push(started(&c, "spill", &in_region(cfg, region)).await.id);
    }
    let get_spill = |path: &'static str| {
        let (http, proxy) = (http.clone(), daemons[1].proxy_http.clone());
        async move {
            let r = http
                .get(format!("http://{proxy}/cgi-bin/{path}"))
                .header("host", "spill.localhost")
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        }
    };
    // Host 1's copy of the directory has host 2's machine, started.
    let c1 = daemons[1].client();
    wait_until(
        Duration::from_secs(15),
        "host 1 to know host 2's machine",
        || async {
            let m = c1.get_machine("spill", &spill[1]).await.ok()?;
            (m.state == "started").then_some(())
        },
    )
    .await;
    let slow = tokio::spawn(get_spill("slow"));
    wait_until(
        Duration::from_secs(10),
        "the slow request in flight",
        || async {
            let (_, ps) = sh(&c, "spill", &spill[0], "ps").await;
            ps.contains("sleep 4").then_some(())
        },
    )
    .await;
    let (code, env) = get_spill("env").await;
    assert_eq!(code, 200, "{env}");
    assert!(
        env.contains(&format!("FLY_MACHINE_ID={}", spill[1])),
        "{env}"
    );
    let (code, body) = slow.await.unwrap();
    assert_eq!((code, body.trim()), (200, "slow"));
    for id in &spill {
        c.destroy_machine("spill", id, true).await.unwrap();
    }

    // Dedicated addresses are the cluster's: one allocated through host 0
    // is listed through every host and served by every host's proxy. Host 0
    // has no machine of the app: its proxy tunnels raw TCP (the PROXY
    // header naming the client, not host 0) and UDP to host 1's machine,
    // and starts it when it is stopped.
    c.create_app("raw").await.unwrap();
    let (ok, out, err) = daemons[0].cli(&["ips", "allocate-v4", "-a", "raw"]);
    assert!(ok, "{out}{err}");
    let ip = c.list_ips("raw").await.unwrap()[0].ip.clone();
    let c2 = daemons[2].client();
    wait_until(
        Duration::from_secs(10),
        "host 2 to list the address",
        || async {
            let ips = c2.list_ips("raw").await.ok()?;
            ips.iter().any(|a| a.ip == ip).then_some(())
        },
    )
    .await;
    let raw_cfg = json!({
        "image": image,
        "init": {"cmd": ["/bin/sh", "-c",
            "nc -ll -p 7000 -e /bin/cat & \
             nc -ll -p 7001 -e /bin/sh -c 'read l; echo \"got: $l\"' & \
             exec sleep 3607"]},
        "services": [
            {"protocol": "tcp", "internal_port": 7000, "autostart": true, "ports": [{"port": 7000}]},
            {"protocol": "tcp", "internal_port": 7001, "ports": [{"port": 7001, "handlers": ["proxy_proto"]}]},
            {"protocol": "udp", "internal_port": 7002, "ports": [{"port": 7002}]},
        ],
    });
    let raw = started(&c, "raw", &in_region(raw_cfg, "sjc")).await;
    let host0 = lan.hosts[0].netns.clone();
    let echo = wait_until(Duration::from_secs(20), "raw TCP through host 0", || {
        let (ns, addr) = (host0.clone(), format!("{ip}:7000"));
        async move {
            let got = in_netns(ns, move || tcp_roundtrip(&addr, "ping\n")).await;
            (got == "ping\n").then_some(got)
        }
    })
    .await;
    assert_eq!(echo, "ping\n");
    let line = in_netns(host0.clone(), {
        let addr = format!("{ip}:7001");
        move || tcp_roundtrip(&addr, "hello\n")
    })
    .await;
    assert!(
        line.starts_with(&format!("got: PROXY TCP4 127.0.0.1 {ip} ")),
        "{line:?}"
    );
    // UDP: an echo in the machine's network namespace (busybox has no UDP
    // server), asked through host 0.
    let pid = sh_out("pgrep -f '^sleep 3607$'");
    udp_echo_in(&format!("/proc/{}/ns/net", pid.trim()), 7002);
    let reply = in_netns(host0.clone(), {
        let addr = format!("{ip}:7002");
        move || {
            let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            u.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            u.send_to(b"datagram", &addr).unwrap();
            let mut buf = [0u8; 64];
            let n = u.recv(&mut buf).unwrap_or(0);
            String::from_utf8_lossy(&buf[..n]).into_owned()
        }
    })
    .await;
    assert_eq!(reply, "datagram");
    // Stopped, it starts for a connection through host 0.
    c.stop_machine("raw", &raw.id, None, None).await.unwrap();
    c.wait_machine("raw", &raw.id, &["stopped"], Duration::from_secs(30))
        .await
        .unwrap();
    let again = in_netns(host0.clone(), {
        let addr = format!("{ip}:7000");
        move || tcp_roundtrip(&addr, "again\n")
    })
    .await;
    assert_eq!(again, "again\n");
    assert_eq!(
        c.get_machine("raw", &raw.id).await.unwrap().state,
        "started"
    );
    // Released through host 2: host 0 stops listening.
    let (ok, _, err) = daemons[2].cli(&["ips", "release", &ip, "-a", "raw"]);
    assert!(ok, "{err}");
    wait_until(
        Duration::from_secs(15),
        "host 0's listener to close",
        || {
            let (ns, addr) = (host0.clone(), format!("{ip}:7000"));
            async move {
                in_netns(ns, move || std::net::TcpStream::connect(&addr).is_err())
                    .await
                    .then_some(())
            }
        },
    )
    .await;
    c.destroy_machine("raw", &raw.id, true).await.unwrap();

    // Host 1's hangard down: its machine still runs, and the mesh (its own
    // process) still carries traffic to it.
    daemons[1].kill();
    let (code, body) = sh(&c, "client", &cli, &http_get(&web_ip, 3)).await;
    assert_eq!(code, 0, "{body}");
    assert!(body.contains(&format!("hello-from-{web}")), "{body}");
    // Back: the same, with the mesh found as it was.
    daemons[1].restart().await;
    let (code, body) = sh(&c, "client", &cli, &http_get(&web_ip, 3)).await;
    assert_eq!(code, 0, "{body}");
    assert!(
        daemons[1]
            .log()
            .matches("mesh to the cluster's hosts up")
            .count()
            >= 2
    );

    // A standby of the web machine on host 2.
    let config = json!({
        "image": image,
        "init": {"cmd": ["/bin/sh", "-c", server]},
        "standbys": [web],
    });
    let standby = c
        .create_machine("web", &in_region(config, "fra"))
        .await
        .unwrap()
        .id;
    c.wait_machine("web", &standby, &["stopped"], Duration::from_secs(30))
        .await
        .unwrap();
    // Every host sees the standby before anything is cut.
    wait_until(
        Duration::from_secs(10),
        "the standby in host 1's directory",
        || async { c1.get_machine("web", &standby).await.ok() },
    )
    .await;

    // The database gone for every host: host 1 asks the standby's host,
    // which lost it too, and stops nothing.
    pg.pause();
    wait_until(
        Duration::from_secs(20),
        "host 1 to judge the outage",
        || async {
            daemons[1]
                .log()
                .contains("gone for the standbys' hosts too")
                .then_some(())
        },
    )
    .await;
    pg.resume();
    let m = c1.get_machine("web", &web).await.unwrap();
    assert_eq!(
        m.state, "started",
        "an outage of the database stopped a machine"
    );

    // Host 1 cut off, its hangard alive: it fences its machine, then the
    // others declare it down and start the standby.
    let cut_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    lan.link(1, false);
    c.wait_machine("web", &standby, &["started"], Duration::from_secs(40))
        .await
        .unwrap();
    lan.link(1, true);
    // Back: host 1 joins again, and its machine stays stopped.
    wait_until(Duration::from_secs(30), "host 1 back", || async {
        let hs = hosts(&daemons[0]).await;
        hs.iter()
            .any(|h| h["id"] == "host-1" && h["state"] == "up")
            .then_some(())
    })
    .await;
    let m = c1.get_machine("web", &web).await.unwrap();
    let story = |d: &Daemon| -> String {
        d.log()
            .lines()
            .filter(|l| {
                ["fenc", "declared", "registered", "took over", "database"]
                    .iter()
                    .any(|w| l.contains(w))
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        m.state,
        "stopped",
        "the fenced machine runs again beside its standby; host 1 said:\n{}",
        story(&daemons[1])
    );
    assert!(
        daemons[1].log().contains("fenced: this host is cut off"),
        "{}",
        story(&daemons[1])
    );
    // It had ended before its standby started.
    let ended = c1
        .machine_events("web", &web, 50)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "exit" && e.timestamp >= cut_ms)
        .map(|e| e.timestamp)
        .min()
        .expect("an exit of the fenced machine");
    let took_over = c
        .machine_events("web", &standby, 50)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "start" && e.status == "started" && e.timestamp >= cut_ms)
        .map(|e| e.timestamp)
        .min()
        .expect("the standby's start");
    assert!(
        ended < took_over,
        "the machine ended at {ended}, its standby started at {took_over}"
    );

    // Host 2 crashes for good measure: hangard killed and its link cut.
    // The others declare it down and start the standby of its client
    // machine on host 0; back, host 2 stops its own, so nothing runs twice.
    let cfg = json!({
        "image": image,
        "init": {"cmd": ["sleep", "3600"]},
        "standbys": [cli],
    });
    let standby2 = c
        .create_machine("client", &in_region(cfg, "ams"))
        .await
        .unwrap()
        .id;
    c.wait_machine("client", &standby2, &["stopped"], Duration::from_secs(30))
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "host 2 to know the standby",
        || async {
            daemons[2]
                .client()
                .get_machine("client", &standby2)
                .await
                .ok()
        },
    )
    .await;
    daemons[2].kill();
    lan.link(2, false);
    c.wait_machine("client", &standby2, &["started"], Duration::from_secs(40))
        .await
        .unwrap();
    // Its machines are listed as unreachable meanwhile.
    let listed = c
        .list_machines("client", &Default::default())
        .await
        .unwrap();
    let gone = listed
        .iter()
        .find(|m| m.id == cli)
        .expect("the client machine listed");
    assert_eq!(gone.host_status.as_deref(), Some("unreachable"));
    lan.link(2, true);
    daemons[2].restart().await;
    wait_until(Duration::from_secs(30), "host 2 back", || async {
        let hs = hosts(&daemons[0]).await;
        hs.iter()
            .any(|h| h["id"] == "host-2" && h["state"] == "up")
            .then_some(())
    })
    .await;
    let back = daemons[2].client();
    wait_until(
        Duration::from_secs(20),
        "host 2's client machine stopped",
        || async {
            let m = back.get_machine("client", &cli).await.ok()?;
            (m.state == "stopped").then_some(())
        },
    )
    .await;
    assert_eq!(
        c.get_machine("client", &standby2).await.unwrap().state,
        "started"
    );

    for (app, id) in [
        ("web", &web),
        ("web", &standby),
        ("client", &cli),
        ("client", &standby2),
        ("apart", &apart),
    ] {
        c.destroy_machine(app, id, true).await.unwrap();
    }
    drop(daemons);
    drop(reg);
    drop(pg);
    drop(lan);
}

/// The daemons' cgroup parents, removed (in every hierarchy) when the
/// test ends: each daemon removes its machines' cgroups, not the parent it
/// was given.
struct CgroupParents(Vec<String>);

impl Drop for CgroupParents {
    fn drop(&mut self) {
        let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
            return;
        };
        for h in hierarchies.flatten() {
            for name in &self.0 {
                // Only an empty cgroup can be removed; a busy one stays.
                let _ = std::fs::remove_dir(h.path().join(name));
            }
        }
    }
}

/// Runs `f` on a thread of its own in network namespace `/run/netns/<ns>`.
async fn in_netns<T: Send + 'static>(ns: String, f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(move || {
        std::thread::spawn(move || {
            join_netns(&format!("/run/netns/{ns}"));
            f()
        })
        .join()
        .unwrap()
    })
    .await
    .unwrap()
}

/// Moves this thread into the network namespace at `path`.
fn join_netns(path: &str) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).unwrap();
    // SAFETY: setns on a namespace fd we opened; it changes only this
    // thread's network namespace.
    let joined = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(joined, 0, "setns {path}");
}

/// Sends `line` over TCP to `addr`; what comes back up to a newline
/// (empty when nothing does within 5 s or the connection fails).
fn tcp_roundtrip(addr: &str, line: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(line.as_bytes()).is_err() {
        return String::new();
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if out.ends_with(b"\n") {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A UDP echo on `port` in the network namespace at `netns`, on a thread
/// of its own (until the namespace goes).
fn udp_echo_in(netns: &str, port: u16) {
    let (tx, rx) = std::sync::mpsc::channel();
    let netns = netns.to_owned();
    std::thread::spawn(move || {
        join_netns(&netns);
        let sock = std::net::UdpSocket::bind(("0.0.0.0", port)).unwrap();
        tx.send(()).unwrap();
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], from);
        }
    });
    rx.recv().unwrap();
}

/// What `cmd` prints, run by `sh` on this host.
fn sh_out(cmd: &str) -> String {
    let out = std::process::Command::new("sh")
        .args(["-c", cmd])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}
