//! End to end: the private network with real crun machines. Machines of
//! one network reach each other by `.internal` name over their 6PN
//! addresses; another network's machines cannot; addresses are stable
//! across restarts (of the machine and of hangard) and freed on destroy.

use std::time::Duration;

use hangar_api_types::{CreateAppRequest, CreateMachineRequest, MachineConfig, MachineExecRequest};
use hangar_client::Client;
use hangar_test_utils::daemon::Daemon;
use hangar_test_utils::image::ImageBuilder;
use hangar_test_utils::registry::Registry;
use serde_json::json;

async fn machine(c: &Client, app: &str, image: &str, name: &str, cmd: &str) -> (String, String) {
    let config: MachineConfig = serde_json::from_value(json!({
        "image": image,
        "init": {"cmd": ["/bin/sh", "-c", cmd]},
        "metadata": {"fly_process_group": "app"},
    }))
    .unwrap();
    let m = c
        .create_machine(
            app,
            &CreateMachineRequest {
                config: Some(config),
                name: Some(name.into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    c.wait_machine(app, &m.id, &["started"], Duration::from_secs(30))
        .await
        .unwrap();
    (m.id, m.private_ip)
}

async fn sh(c: &Client, app: &str, id: &str, cmd: &str) -> (i32, String) {
    let r = c
        .exec(
            app,
            id,
            &MachineExecRequest {
                command: Some(vec!["/bin/sh".into(), "-c".into(), cmd.into()]),
                timeout: Some(20),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    (r.exit_code, format!("{}{}", r.stdout, r.stderr))
}

/// A shell command that GETs `/` from port 8080 of `addr` (busybox's
/// static wget needs NSS libraries the test image lacks; nc does not).
fn get(addr: &str, timeout_s: u32) -> String {
    format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w {timeout_s} {addr} 8080")
}

/// The 6PN addresses `name` resolves to, seen from machine `id`.
async fn lookup(c: &Client, app: &str, id: &str, name: &str) -> Vec<String> {
    let (_, out) = sh(c, app, id, &format!("nslookup -type=AAAA {name}")).await;
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Address:"))
        .map(|a| a.trim().to_owned())
        .filter(|a| a.starts_with("fdaa:"))
        .collect()
}

#[tokio::test]
async fn machines_reach_each_other_by_name_and_other_networks_cannot() {
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
    assert!(env.contains(&format!("{web_ip}/64")), "{env}");
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
    let fetch = get(&web_ip, 5);
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
    let (code, body) = sh(&c, "client", &cli, &get("web.internal", 5)).await;
    assert_eq!(code, 0, "{body}");
    assert!(body.ends_with(&format!("hello-from-{web}\n")), "{body:?}");
    let (code, body) = sh(
        &c,
        "client",
        &cli,
        &get(&format!("{web}.vm.web.internal"), 5),
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
    let (code, _) = sh(&c, "client", &cli, &get(&web_v4, 5)).await;
    assert_eq!(code, 0);

    // Another network: its names are not there and its packets do not pass.
    assert!(lookup(&c, "apart", &apart, "web.internal").await.is_empty());
    let (_, nx) = sh(&c, "apart", &apart, "nslookup -type=AAAA web.internal").await;
    assert!(
        nx.to_lowercase().contains("nxdomain") || nx.contains("can't find"),
        "{nx}"
    );
    let (code, _) = sh(&c, "apart", &apart, &get(&web_ip, 3)).await;
    assert_ne!(code, 0, "another network reached the web machine");
    let (code, _) = sh(&c, "apart", &apart, &get(&web_v4, 3)).await;
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

    // The last machine of a network takes its bridge with it.
    let net: std::net::Ipv6Addr = apart_ip.parse().unwrap();
    let bridge = format!("/sys/class/net/hangar{}", net.segments()[2]);
    assert!(std::path::Path::new(&bridge).exists(), "{bridge}");
    c.destroy_machine("apart", &apart, true).await.unwrap();
    c.wait_machine("apart", &apart, &["destroyed"], Duration::from_secs(30))
        .await
        .unwrap();
    assert!(!std::path::Path::new(&bridge).exists(), "{bridge}");
}
