//! Host tests (root): the nftables rules load, and a namespace wired to a
//! bridge reaches its gateway, and only through its own bridge.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::Command;

use hangar_net::{Bridge, Link};

#[test]
fn firewall_rules_are_valid_nftables() {
    for nat in [false, true] {
        let out = Command::new("nft")
            .args(["-c", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin
                    .take()
                    .unwrap()
                    .write_all(hangar_net::firewall::rules(nat, "10.231.0.0/16").as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn pinned_netns(path: &std::path::Path) {
    std::fs::File::create(path).unwrap();
    let st = Command::new("unshare")
        .arg(format!("--net={}", path.display()))
        .arg("true")
        .status()
        .unwrap();
    assert!(st.success());
}

fn in_ns(ns: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_namespace_is_wired_to_its_bridge_idempotently() {
    let dir = tempfile::tempdir().unwrap();
    let ns = dir.path().join("ns");
    pinned_netns(&ns);
    let bridge = Bridge {
        name: "hangar250".into(),
        gateway4: Ipv4Addr::new(10, 231, 250, 1),
        prefix4: 24,
        gateway6: "fdaa:0:fa::1".parse::<Ipv6Addr>().unwrap(),
        prefix6: 64,
    };
    let link = Link {
        host_if: "hvnettest250".into(),
        address4: Ipv4Addr::new(10, 231, 250, 2),
        address6: "fdaa:0:fa::2".parse().unwrap(),
    };
    hangar_net::connect(&ns, &bridge, &link).unwrap();
    assert!(hangar_net::is_connected(&link, &bridge));
    // Done twice (a crash between the steps), it ends the same.
    hangar_net::connect(&ns, &bridge, &link).unwrap();
    let addrs = in_ns(&ns, &["ip", "-o", "addr", "show", "dev", "eth0"]);
    let text = String::from_utf8_lossy(&addrs.stdout);
    assert!(text.contains("10.231.250.2/24"), "{text}");
    assert!(text.contains("fdaa:0:fa::2/64"), "{text}");
    let routes = in_ns(&ns, &["ip", "route"]);
    assert!(String::from_utf8_lossy(&routes.stdout).contains("default via 10.231.250.1"));
    // The gateway answers (the host end is on the bridge).
    let ping = in_ns(&ns, &["busybox", "ping", "-c1", "-W2", "10.231.250.1"]);
    assert!(ping.status.success(), "{ping:?}");

    hangar_net::disconnect(&link.host_if).unwrap();
    assert!(!hangar_net::is_connected(&link, &bridge));
    // Its last link gone, the bridge goes too.
    assert!(!std::path::Path::new("/sys/class/net/hangar250").exists());
    hangar_net::disconnect(&link.host_if).unwrap();
    let _ = Command::new("umount").arg(&ns).status();
}
