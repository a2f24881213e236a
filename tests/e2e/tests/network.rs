//! End to end: the private network with real crun machines. Machines of
//! one network reach each other by `.internal` name over their 6PN
//! addresses; another network's machines cannot; addresses are stable
//! across restarts (of the machine and of hangard) and freed on destroy.

use std::time::Duration;

use futures::StreamExt;

use hangar_api_types::{CreateAppRequest, CreateMachineRequest, MachineConfig};
use hangar_client::Client;
use hangar_e2e::{http_get, lookup, request, sh, started};
use hangar_test_utils::daemon::Daemon;
use hangar_test_utils::image::ImageBuilder;
use hangar_test_utils::registry::Registry;
use serde_json::json;

async fn machine(c: &Client, app: &str, image: &str, name: &str, cmd: &str) -> (String, String) {
    let mut req = request(json!({
        "image": image,
        "init": {"cmd": ["/bin/sh", "-c", cmd]},
        "metadata": {"fly_process_group": "app"},
    }));
    req.name = Some(name.into());
    let m = started(c, app, &req).await;
    (m.id, m.private_ip)
}

/// The bridge of the block a 6PN address is in:
/// `fdaa:<installation>:<network>:<host>::<block>:<n>`.
fn bridge_of(ip: &str) -> String {
    let a: std::net::Ipv6Addr = ip.parse().unwrap();
    let s = a.segments();
    format!("hgr{:04x}{:03x}{:02x}", s[1], s[2], s[6])
}

#[tokio::test]
async fn machines_reach_each_other_by_name_and_other_networks_cannot() {
    if !hangar_test_utils::host_tier(
        "machines_reach_each_other_by_name_and_other_networks_cannot",
        &["crun", "docker-registry"],
    ) {
        return;
    }
    let reg = Registry::start().await;
    reg.push("test/net", "v1", &ImageBuilder::busybox().build())
        .await;
    let image = format!("{}/test/net:v1", reg.addr);
    let mut d = Daemon::with_registry(&reg.addr).await;
    let c = d.client();
    c.create_app("web").await.unwrap();
    c.create_app("client").await.unwrap();
    c.create_app("iso").await.unwrap();
    c.create_app_with(&CreateAppRequest {
        name: Some("apart".into()),
        network: Some("apart-net".into()),
        ..Default::default()
    })
    .await
    .unwrap();

    let server = "mkdir -p /www && echo hello-from-$FLY_MACHINE_ID > /www/index.html \
                  && exec httpd -f -p 8080 -h /www";
    let (web, web_ip) = machine(&c, "web", &image, "web", server).await;
    let (cli, cli_ip) = machine(&c, "client", &image, "cli", "exec sleep 3600").await;
    let (apart, apart_ip) = machine(&c, "apart", &image, "apart", "exec sleep 3600").await;

    // Addresses: 6PN-shaped, distinct, the one the machine sees as
    // FLY_PRIVATE_IP and on its eth0.
    for ip in [&web_ip, &cli_ip, &apart_ip] {
        assert!(ip.starts_with("fdaa:"), "{ip}");
    }
    assert_ne!(web_ip, cli_ip);
    let (_, env) = sh(
        &c,
        "web",
        &web,
        "echo $FLY_PRIVATE_IP; ip -6 addr show dev eth0",
    )
    .await;
    assert!(env.starts_with(&format!("{web_ip}\n")), "{env}");
    assert!(env.contains(&format!("{web_ip}/112")), "{env}");
    let (_, hosts) = sh(&c, "web", &web, "cat /etc/hosts /etc/resolv.conf").await;
    assert!(
        hosts.contains(&format!("{web_ip}\tfly-local-6pn")),
        "{hosts}"
    );
    assert!(hosts.contains("nameserver fdaa:"), "{hosts}");

    // Same network: the client finds the web app by name and fetches from it.
    assert_eq!(
        lookup(&c, "client", &cli, "web.internal").await,
        vec![web_ip.clone()]
    );
    assert_eq!(
        lookup(&c, "client", &cli, &format!("{web}.vm.web.internal")).await,
        vec![web_ip.clone()]
    );
    assert_eq!(
        lookup(&c, "client", &cli, "local.web.internal").await,
        vec![web_ip.clone()]
    );
    let (_, apps) = sh(&c, "client", &cli, "nslookup -type=TXT _apps.internal").await;
    assert!(
        apps.contains("client,iso,web") || apps.contains("client,web"),
        "{apps}"
    );
    let fetch = http_get(&web_ip, 5);
    let (code, body) = sh(&c, "client", &cli, &fetch).await;
    assert_eq!(code, 0, "{body}");
    assert!(
        body.ends_with(&format!("\r\n\r\nhello-from-{web}\n")),
        "{body:?}"
    );
    // Fly's DNS address answers too.
    let (_, fly) = sh(
        &c,
        "client",
        &cli,
        "nslookup -type=AAAA web.internal fdaa::3",
    )
    .await;
    assert!(fly.contains(&web_ip), "{fly}");
    // By name, through the machine's resolver (the internal DNS server).
    let (code, body) = sh(&c, "client", &cli, &http_get("web.internal", 5)).await;
    assert_eq!(code, 0, "{body}");
    assert!(body.ends_with(&format!("hello-from-{web}\n")), "{body:?}");
    let (code, body) = sh(
        &c,
        "client",
        &cli,
        &http_get(&format!("{web}.vm.web.internal"), 5),
    )
    .await;
    assert_eq!(code, 0, "{body}");
    // IPv4 inside the network works too.
    let (_, v4) = sh(&c, "web", &web, "ip -4 -o addr show dev eth0").await;
    let web_v4 = v4
        .split_whitespace()
        .nth(3)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let (code, _) = sh(&c, "client", &cli, &http_get(&web_v4, 5)).await;
    assert_eq!(code, 0);

    // Another network: its names are not there and its packets do not pass.
    assert!(lookup(&c, "apart", &apart, "web.internal").await.is_empty());
    let (_, nx) = sh(&c, "apart", &apart, "nslookup -type=AAAA web.internal").await;
    assert!(
        nx.to_lowercase().contains("nxdomain") || nx.contains("can't find"),
        "{nx}"
    );
    let (code, _) = sh(&c, "apart", &apart, &http_get(&web_ip, 3)).await;
    assert_ne!(code, 0, "another network reached the web machine");
    let (code, _) = sh(&c, "apart", &apart, &http_get(&web_v4, 3)).await;
    assert_ne!(code, 0, "another network reached the web machine over IPv4");

    // A stopped machine leaves `<app>.internal`, keeps its address, and is
    // reachable again once started.
    c.stop_machine("web", &web, None, None).await.unwrap();
    c.wait_machine("web", &web, &["stopped"], Duration::from_secs(30))
        .await
        .unwrap();
    assert!(lookup(&c, "client", &cli, "web.internal").await.is_empty());
    c.start_machine("web", &web).await.unwrap();
    c.wait_machine("web", &web, &["started"], Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(c.get_machine("web", &web).await.unwrap().private_ip, web_ip);
    let (code, _) =
        hangar_test_utils::wait_until(Duration::from_secs(10), "web to serve again", || {
            let c = c.clone();
            let (cli, fetch) = (cli.clone(), fetch.clone());
            async move {
                let r = sh(&c, "client", &cli, &fetch).await;
                (r.0 == 0).then_some(r)
            }
        })
        .await;
    assert_eq!(code, 0);

    // hangard restarts: the network is still there, DNS answers again.
    d.restart().await;
    let c = d.client();
    assert_eq!(
        lookup(&c, "client", &cli, "web.internal").await,
        vec![web_ip.clone()]
    );
    let (code, _) = sh(&c, "client", &cli, &fetch).await;
    assert_eq!(code, 0);

    // Destroy frees the address (the next machine gets it) and removes the
    // host end of its link.
    let host_if = format!("hv{}", &web[web.len() - 13..]);
    assert!(
        std::path::Path::new("/sys/class/net")
            .join(&host_if)
            .exists()
    );
    c.destroy_machine("web", &web, true).await.unwrap();
    c.wait_machine("web", &web, &["destroyed"], Duration::from_secs(30))
        .await
        .unwrap();
    assert!(
        !std::path::Path::new("/sys/class/net")
            .join(&host_if)
            .exists()
    );
    let (_, again) = machine(&c, "iso", &image, "next", "exec sleep 3600").await;
    let _ = again;
    let next = c.list_machines("iso", &Default::default()).await.unwrap();
    assert_eq!(next[0].private_ip, web_ip);

    // The last machine of a network takes its bridge with it; the bridge is
    // named after the installation, the network and the block.
    let bridge = format!("/sys/class/net/{}", bridge_of(&apart_ip));
    assert_eq!(
        u16::from_str_radix(&bridge_of(&apart_ip)[3..7], 16).ok(),
        d.installation()
    );
    assert!(std::path::Path::new(&bridge).exists(), "{bridge}");
    c.destroy_machine("apart", &apart, true).await.unwrap();
    c.wait_machine("apart", &apart, &["destroyed"], Duration::from_secs(30))
        .await
        .unwrap();
    assert!(!std::path::Path::new(&bridge).exists(), "{bridge}");
}

/// Two installations on one host whose ranges share third octets (the old
/// scheme named bridges and 6PN prefixes after them), and a third with the
/// very same range as the first: each one's machines reach their own peers
/// by name, and no one else's.
#[tokio::test]
async fn installations_side_by_side_keep_to_themselves_whatever_their_ranges() {
    if !hangar_test_utils::host_tier(
        "installations_side_by_side_keep_to_themselves_whatever_their_ranges",
        &["crun", "docker-registry"],
    ) {
        return;
    }
    let reg = Registry::start().await;
    reg.push("test/net", "v1", &ImageBuilder::busybox().build())
        .await;
    let image = format!("{}/test/net:v1", reg.addr);
    let flags = ["--insecure-registry".to_owned(), reg.addr.clone()];
    let a = Daemon::start(&flags).await;
    let other_range = a.network_range.replacen("10.231.", "10.232.", 1);
    let b = Daemon::start_in(&other_range, &flags).await;
    let same = Daemon::start_in(&a.network_range.clone(), &flags).await;
    let server = "mkdir -p /www && echo hello-from-$FLY_MACHINE_ID > /www/index.html \
                  && exec httpd -f -p 8080 -h /www";
    let mut peers = Vec::new();
    for d in [&a, &b, &same] {
        let c = d.client();
        c.create_app("peer").await.unwrap();
        let (srv, srv_ip) = machine(&c, "peer", &image, "srv", server).await;
        let (cli, cli_ip) = machine(&c, "peer", &image, "cli", "exec sleep 3600").await;
        peers.push((c, srv, srv_ip, cli, cli_ip));
    }
    let installations: Vec<u16> = [&a, &b, &same]
        .iter()
        .map(|d| d.installation().unwrap())
        .collect();
    assert!(
        installations[0] != installations[1] && installations[1] != installations[2],
        "{installations:?}"
    );
    for (i, (c, srv, srv_ip, cli, _)) in peers.iter().enumerate() {
        // Own peers, by name.
        assert_eq!(
            lookup(c, "peer", cli, "peer.internal").await.len(),
            2,
            "installation {i}"
        );
        let (code, body) = sh(
            c,
            "peer",
            cli,
            &http_get(&format!("{srv}.vm.peer.internal"), 5),
        )
        .await;
        assert_eq!(code, 0, "installation {i}: {body}");
        assert!(body.ends_with(&format!("hello-from-{srv}\n")), "{body:?}");
        let (code, _) = sh(c, "peer", cli, &http_get(srv_ip, 5)).await;
        assert_eq!(code, 0, "installation {i}");
        // Nobody else's.
        for (j, (_, _, other_ip, _, _)) in peers.iter().enumerate() {
            if i != j {
                let (code, _) = sh(c, "peer", cli, &http_get(other_ip, 2)).await;
                assert_ne!(
                    code, 0,
                    "installation {i} reached installation {j}'s machine"
                );
            }
        }
    }
    // The third, on the first one's range, took blocks the first does not use.
    let block = |ip: &str| ip.parse::<std::net::Ipv6Addr>().unwrap().segments()[6];
    assert_ne!(block(&peers[0].2), block(&peers[2].2));
}

/// 300 machines of one app on one host: a network outgrows its first
/// block (253 machines) and machines in different blocks reach each other.
#[tokio::test]
async fn three_hundred_machines_start_in_one_app() {
    if !hangar_test_utils::host_tier(
        "three_hundred_machines_start_in_one_app",
        &["crun", "docker-registry"],
    ) {
        return;
    }
    let reg = Registry::start().await;
    reg.push("test/net", "v1", &ImageBuilder::busybox().build())
        .await;
    let image = format!("{}/test/net:v1", reg.addr);
    let d = Daemon::with_registry(&reg.addr).await;
    let c = d.client();
    c.create_app("many").await.unwrap();
    let config: MachineConfig = serde_json::from_value(json!({
        "image": image,
        "guest": {"cpus": 1, "memory_mb": 32},
        "init": {"cmd": ["/bin/sh", "-c", "mkdir -p /www && echo hi-$FLY_MACHINE_ID > /www/index.html && exec httpd -f -p 8080 -h /www"]},
    }))
    .unwrap();
    let t0 = std::time::Instant::now();
    let ids: Vec<String> = futures::stream::iter(0..300)
        .map(|n| {
            let c = c.clone();
            let config = config.clone();
            async move {
                let m = c
                    .create_machine(
                        "many",
                        &CreateMachineRequest {
                            config: Some(config),
                            name: Some(format!("m{n}")),
                            ..Default::default()
                        },
                    )
                    .await
                    .unwrap();
                c.wait_machine("many", &m.id, &["started"], Duration::from_secs(60))
                    .await
                    .unwrap();
                m.id
            }
        })
        .buffer_unordered(10)
        .collect()
        .await;
    let took = t0.elapsed();
    let machines = c.list_machines("many", &Default::default()).await.unwrap();
    assert_eq!(machines.len(), 300);
    assert!(machines.iter().all(|m| m.state == "started"));
    let mut blocks: Vec<String> = machines.iter().map(|m| bridge_of(&m.private_ip)).collect();
    blocks.sort();
    blocks.dedup();
    assert_eq!(blocks.len(), 2, "{blocks:?}");
    eprintln!(
        "300 machines created and started in {:.1} s ({:.1}/s), blocks {blocks:?}",
        took.as_secs_f64(),
        300.0 / took.as_secs_f64()
    );
    // Across blocks, by name and by address.
    let first = machines
        .iter()
        .find(|m| bridge_of(&m.private_ip) == blocks[0])
        .unwrap();
    let second = machines
        .iter()
        .find(|m| bridge_of(&m.private_ip) == blocks[1])
        .unwrap();
    let (code, body) = sh(
        &c,
        "many",
        &first.id,
        &http_get(&format!("{}.vm.many.internal", second.id), 5),
    )
    .await;
    assert_eq!(code, 0, "{body}");
    assert!(body.ends_with(&format!("hi-{}\n", second.id)), "{body:?}");
    let (code, body) = sh(&c, "many", &second.id, &http_get(&first.private_ip, 5)).await;
    assert_eq!(code, 0, "{body}");

    let t0 = std::time::Instant::now();
    futures::stream::iter(ids)
        .map(|id| {
            let c = c.clone();
            async move { c.destroy_machine("many", &id, true).await.unwrap() }
        })
        .buffer_unordered(10)
        .collect::<Vec<_>>()
        .await;
    eprintln!(
        "300 machines destroyed in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    assert!(
        c.list_machines("many", &Default::default())
            .await
            .unwrap()
            .is_empty()
    );
}
