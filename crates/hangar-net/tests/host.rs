//! Host tests (root): the nftables rules load; a namespace wired to a
//! bridge reaches its gateway, and only through its own bridge; outbound
//! NAT works for IPv4 and IPv6, tried in a host of its own (a network
//! namespace with an "outside" namespace behind it), never on this host.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::Command;

use hangar_net::firewall::{Firewall, Tool};
use hangar_net::{Bridge, Link, bridge_name};

const INST: u16 = 0x3fa2;

/// Installation 3fa2's firewall: `networks` lists each network's blocks.
fn firewall(range: &str, networks: &[(u16, &[u8])], nat: bool) -> Firewall {
    Firewall {
        installation: INST,
        ipv4_range: range.into(),
        ipv6_prefix: "fdaa:3fa2::/32".into(),
        networks: networks
            .iter()
            .map(|(net, blocks)| {
                blocks
                    .iter()
                    .map(|b| (bridge_name(INST, *net, *b), gw6(*net, *b)))
                    .collect()
            })
            .collect(),
        mesh: None,
        outbound_nat: nat,
    }
}

fn gw6(net: u16, block: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfdaa, INST, net, 1, 0, 0, u16::from(block), 1)
}

/// Block `block` of network `net` in 10.231.0.0/16, and the link of its
/// machine number `n` (`hv<tag>`).
fn block(net: u16, block: u8, n: u8, tag: &str) -> (Bridge, Link) {
    (
        Bridge {
            name: bridge_name(INST, net, block),
            gateway4: Ipv4Addr::new(10, 231, block, 1),
            prefix4: 24,
            gateway6: gw6(net, block),
            prefix6: 112,
        },
        Link {
            host_if: format!("hv{tag}"),
            address4: Ipv4Addr::new(10, 231, block, n),
            address6: Ipv6Addr::new(0xfdaa, INST, net, 1, 0, 0, u16::from(block), u16::from(n)),
        },
    )
}

#[test]
fn firewall_rules_are_valid_nftables() {
    if !hangar_test_utils::host_tier(
        "firewall_rules_are_valid_nftables",
        &["ip", "nft", "iptables"],
    ) {
        return;
    }
    for nat in [false, true] {
        let out = Command::new("nft")
            .args(["-c", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(
                    firewall("10.231.0.0/16", &[(1, &[1, 5]), (2, &[2])], nat)
                        .rules()
                        .as_bytes(),
                )?;
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
    if !hangar_test_utils::host_tier(
        "a_namespace_is_wired_to_its_bridge_idempotently",
        &["ip", "nft", "iptables"],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ns = dir.path().join("ns");
    pinned_netns(&ns);
    let (bridge, link) = block(0xfa, 250, 2, "nettest250");
    hangar_net::connect(&ns, &bridge, &link).unwrap();
    assert!(hangar_net::is_connected(&link, &bridge));
    // Done twice (a crash between the steps), it ends the same.
    hangar_net::connect(&ns, &bridge, &link).unwrap();
    let addrs = in_ns(&ns, &["ip", "-o", "addr", "show", "dev", "eth0"]);
    let text = String::from_utf8_lossy(&addrs.stdout);
    assert!(text.contains("10.231.250.2/24"), "{text}");
    assert!(text.contains("fdaa:3fa2:fa:1::fa:2/112"), "{text}");
    // No duplicate address detection: the IPv6 address is usable at once.
    let global6 = text.lines().find(|l| l.contains("fdaa:3fa2")).unwrap();
    assert!(!global6.contains("tentative"), "{text}");
    let routes = in_ns(&ns, &["ip", "route"]);
    assert!(String::from_utf8_lossy(&routes.stdout).contains("default via 10.231.250.1"));
    let routes6 = in_ns(&ns, &["ip", "-6", "route"]);
    let routes6 = String::from_utf8_lossy(&routes6.stdout);
    assert!(
        routes6.contains("default via fdaa:3fa2:fa:1::fa:1 dev eth0"),
        "{routes6}"
    );
    // The gateway answers (the host end is on the bridge).
    let ping = in_ns(&ns, &["busybox", "ping", "-c1", "-W2", "10.231.250.1"]);
    assert!(ping.status.success(), "{ping:?}");

    hangar_net::disconnect(&link.host_if).unwrap();
    assert!(!hangar_net::is_connected(&link, &bridge));
    // Its last link gone, the bridge goes too.
    assert!(
        !std::path::Path::new("/sys/class/net")
            .join(&bridge.name)
            .exists()
    );
    hangar_net::disconnect(&link.host_if).unwrap();
    let _ = Command::new("umount").arg(&ns).status();
}

/// Destroy's way: the namespace goes first, taking the veth pair with it;
/// the bridge is removed once its last port is gone, and only a Hangar
/// bridge is removed that way.
#[test]
fn a_link_goes_with_its_namespace_and_then_its_bridge() {
    if !hangar_test_utils::host_tier(
        "a_link_goes_with_its_namespace_and_then_its_bridge",
        &["ip", "nft", "iptables"],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ns = dir.path().join("ns");
    pinned_netns(&ns);
    let (bridge, link) = block(0xfb, 249, 2, "nettest249");
    hangar_net::connect(&ns, &bridge, &link).unwrap();
    assert_eq!(
        hangar_net::bridge_of(&link.host_if).as_deref(),
        Some(bridge.name.as_str())
    );
    // A bridge with a port stays.
    hangar_net::remove_bridge_if_empty(&bridge.name).unwrap();
    assert!(hangar_net::link_exists(&bridge.name));
    assert!(hangar_net::remove_bridge_if_empty("lo").is_err());
    assert!(hangar_net::remove_bridge_if_empty("hgr/../x").is_err());

    let st = Command::new("umount").arg(&ns).status().unwrap();
    assert!(st.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while hangar_net::link_exists(&link.host_if) {
        assert!(
            std::time::Instant::now() < deadline,
            "the veth outlived its namespace"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(hangar_net::bridge_of(&link.host_if), None);
    hangar_net::disconnect(&link.host_if).unwrap();
    hangar_net::remove_bridge_if_empty(&bridge.name).unwrap();
    assert!(!hangar_net::link_exists(&bridge.name));
}

#[test]
fn an_address_given_again_is_reached_at_once() {
    if !hangar_test_utils::host_tier(
        "an_address_given_again_is_reached_at_once",
        &["ip", "nft", "iptables"],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (keep, ns1, ns2) = (
        dir.path().join("k"),
        dir.path().join("a"),
        dir.path().join("b"),
    );
    for ns in [&keep, &ns1, &ns2] {
        pinned_netns(ns);
    }
    // A machine that keeps the bridge up; then, again and again, a machine
    // at .5 that the host talks to and that goes, and another one (another
    // link-layer address) at .5 right after it. Block 247 is this test's
    // alone (tests of this file run at once: a bridge or gateway another
    // one shares comes and goes under it).
    let (bridge, keeper) = block(0xf7, 247, 9, "nettest247k");
    hangar_net::connect(&keep, &bridge, &keeper).unwrap();
    let ping = |to: &str| {
        Command::new("busybox")
            .args(["ping", "-c1", "-W1", to])
            .output()
            .unwrap()
            .status
            .success()
    };
    let mut missed = Vec::new();
    for round in 0..20 {
        let (ns, tag) = if round % 2 == 0 {
            (&ns1, "nettest247a")
        } else {
            (&ns2, "nettest247b")
        };
        let (_, link) = block(0xf7, 247, 5, tag);
        hangar_net::connect(ns, &bridge, &link).unwrap();
        // Reached at once: the link passes traffic as soon as it is made
        // (the first neighbor request is not lost), and the host does not
        // keep sending to the previous machine's link-layer address (a
        // stale neighbor entry would last half a minute).
        if !ping("10.231.247.5") {
            missed.push(round);
        }
        hangar_net::disconnect(&link.host_if).unwrap();
    }
    hangar_net::disconnect(&keeper.host_if).unwrap();
    for ns in [&keep, &ns1, &ns2] {
        let _ = Command::new("umount").arg(ns).status();
    }
    assert!(
        missed.is_empty(),
        "the host could not reach the new machine at a reused address at once in rounds {missed:?}"
    );
}

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `f` on a thread of its own inside the network namespace pinned at
/// `ns`.
fn on_ns<T: Send + 'static>(ns: &std::path::Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(ns).unwrap();
    std::thread::spawn(move || {
        assert_eq!(
            // SAFETY: setns on this thread only, with a valid namespace fd.
            unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        f()
    })
    .join()
    .unwrap()
}

/// What a client in the machine namespace `ns` gets from the server at
/// `to`: the address the server saw it come from, or an error.
fn seen_from(ns: &std::path::Path, to: &str) -> Result<String, String> {
    use std::io::Read;
    let to: std::net::SocketAddr = to.parse().unwrap();
    on_ns(ns, move || {
        let mut s = std::net::TcpStream::connect_timeout(&to, std::time::Duration::from_secs(2))
            .map_err(|e| e.to_string())?;
        let mut got = String::new();
        s.read_to_string(&mut got).map_err(|e| e.to_string())?;
        Ok(got)
    })
}

/// The NAT test proper, run by `outbound_nat_masquerades_ipv4_and_ipv6`
/// inside the namespace that plays the host (with its own /sys); does
/// nothing when run any other way.
#[test]
fn nat_inside_a_host_of_its_own() {
    if !hangar_test_utils::host_tier("nat_inside_a_host_of_its_own", &["ip", "nft", "iptables"]) {
        return;
    }
    use std::io::Write;
    let Some(dir) = std::env::var_os("HANGAR_NAT_TEST_DIR") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let which = std::env::var("HANGAR_NAT_TEST_TOOL").unwrap_or_default();
    let tool = match which.as_str() {
        "iptables" => Tool::Iptables,
        _ => Tool::Nftables,
    };
    run(&["ip", "link", "set", "lo", "up"]);
    if which == "nftables-on-a-docker-host" {
        // Docker's default: iptables' FORWARD drops what it does not know.
        run(&["iptables", "-P", "FORWARD", "DROP"]);
        run(&["ip6tables", "-P", "FORWARD", "DROP"]);
    }
    // The outside: a namespace on a link of the host's own, with no route
    // back to the machines (so only masqueraded traffic gets answers).
    let out = dir.join("outside");
    pinned_netns(&out);
    let out_s = out.to_str().unwrap();
    run(&[
        "ip", "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", out_s,
    ]);
    run(&["ip", "addr", "add", "192.0.2.1/24", "dev", "up0"]);
    run(&[
        "ip",
        "addr",
        "add",
        "2001:db8:1::1/64",
        "dev",
        "up0",
        "nodad",
    ]);
    run(&["ip", "link", "set", "up0", "up"]);
    let inside = "addr add 192.0.2.2/24 dev eth0\naddr add 2001:db8:1::2/64 dev eth0 nodad\nlink set eth0 up\nlink set lo up\n";
    let mut ip = Command::new("nsenter")
        .arg(format!("--net={out_s}"))
        .args(["ip", "-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    ip.stdin
        .take()
        .unwrap()
        .write_all(inside.as_bytes())
        .unwrap();
    assert!(ip.wait().unwrap().success());
    // A server there that tells each client where it came from.
    let listener = on_ns(&out, || std::net::TcpListener::bind("[::]:7000").unwrap());
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            let from = s.peer_addr().unwrap().ip().to_canonical().to_string();
            let _ = s.write_all(from.as_bytes());
        }
    });

    // A machine on network 1's block 9, of an installation with range
    // 10.231.8.0/22.
    let m = dir.join("machine");
    pinned_netns(&m);
    let (bridge, link) = block(1, 9, 2, "nat9");
    hangar_net::connect(&m, &bridge, &link).unwrap();

    // NAT on: out through the host's address, IPv4 and IPv6.
    firewall("10.231.8.0/22", &[(1, &[9])], true)
        .apply_with(tool)
        .unwrap();
    assert_eq!(seen_from(&m, "192.0.2.2:7000"), Ok("192.0.2.1".into()));
    assert_eq!(
        seen_from(&m, "[2001:db8:1::2]:7000"),
        Ok("2001:db8:1::1".into())
    );
    // Nothing from outside opens a connection to a machine.
    let from_outside = on_ns(&out, || {
        Command::new("ip")
            .args(["route", "add", "10.231.8.0/22", "via", "192.0.2.1"])
            .status()
            .unwrap();
        std::net::TcpStream::connect_timeout(
            &"10.231.9.2:7001".parse().unwrap(),
            std::time::Duration::from_secs(1),
        )
    });
    let e = from_outside.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");

    // Network 1 grows a second block; network 2 has one. Machines of one
    // network reach each other across blocks (through the host), IPv4 and
    // IPv6; another network's machines do not reach them.
    let m2 = dir.join("machine2");
    pinned_netns(&m2);
    let (bridge2, link2) = block(1, 10, 2, "nat10");
    hangar_net::connect(&m2, &bridge2, &link2).unwrap();
    let m3 = dir.join("machine3");
    pinned_netns(&m3);
    let (bridge3, link3) = block(2, 11, 2, "nat11");
    hangar_net::connect(&m3, &bridge3, &link3).unwrap();
    firewall("10.231.8.0/22", &[(1, &[9, 10]), (2, &[11])], false)
        .apply_with(tool)
        .unwrap();
    let serve = |ns: &std::path::Path| {
        let listener = on_ns(ns, || std::net::TcpListener::bind("[::]:7100").unwrap());
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { continue };
                let from = s.peer_addr().unwrap().ip().to_canonical().to_string();
                let _ = s.write_all(from.as_bytes());
            }
        });
    };
    serve(&m2);
    serve(&m3);
    assert_eq!(seen_from(&m, "10.231.10.2:7100"), Ok("10.231.9.2".into()));
    assert_eq!(
        seen_from(&m, &format!("[{}]:7100", link2.address6)),
        Ok(link.address6.to_string())
    );
    assert!(seen_from(&m, "10.231.11.2:7100").is_err());
    assert!(seen_from(&m, &format!("[{}]:7100", link3.address6)).is_err());
    assert!(seen_from(&m3, "10.231.10.2:7100").is_err());

    // NAT off: nothing goes out.
    firewall("10.231.8.0/22", &[(1, &[9])], false)
        .apply_with(tool)
        .unwrap();
    assert!(seen_from(&m, "192.0.2.2:7000").is_err());
    assert!(seen_from(&m, "[2001:db8:1::2]:7000").is_err());
    for ns in [&m, &m2, &m3, &out] {
        let _ = Command::new("umount").arg(ns).status();
    }
}

#[test]
fn outbound_nat_masquerades_ipv4_and_ipv6() {
    if !hangar_test_utils::host_tier(
        "outbound_nat_masquerades_ipv4_and_ipv6",
        &["ip", "nft", "iptables"],
    ) {
        return;
    }
    if std::env::var_os("HANGAR_NAT_TEST_DIR").is_some() {
        return;
    }
    // With each tool the host may have, in a host of its own.
    for tool in ["nftables", "iptables", "nftables-on-a-docker-host"] {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("host");
        pinned_netns(&host);
        // The test binary again, in the namespace that plays the host, with
        // a /sys of that namespace (hangar-net reads interfaces there).
        let exe = std::env::current_exe().unwrap();
        let st = Command::new("nsenter")
            .arg(format!("--net={}", host.display()))
            .args(["unshare", "--mount", "sh", "-c"])
            .arg("mount -t sysfs sysfs /sys && exec \"$0\" nat_inside_a_host_of_its_own --exact --nocapture --test-threads=1")
            .arg(&exe)
            .env("HANGAR_NAT_TEST_DIR", dir.path())
            .env("HANGAR_NAT_TEST_TOOL", tool)
            .status()
            .unwrap();
        let _ = Command::new("umount").arg(&host).status();
        assert!(st.success(), "with {tool}");
    }
}

/// What a version that named bridges after an octet left is removed: its
/// bridges in the range (with the range's gateway address), nothing else.
#[test]
fn legacy_bridges_of_the_range_are_removed() {
    if !hangar_test_utils::host_tier(
        "legacy_bridges_of_the_range_are_removed",
        &["ip", "nft", "iptables"],
    ) {
        return;
    }
    run(&["ip", "link", "add", "hangar249", "type", "bridge"]);
    run(&["ip", "addr", "add", "10.231.249.1/24", "dev", "hangar249"]);
    run(&["ip", "link", "add", "hangar248", "type", "bridge"]);
    run(&["ip", "addr", "add", "10.77.248.1/24", "dev", "hangar248"]);
    let removed = hangar_net::remove_legacy("10.231.248.0/22", 248, 251).unwrap();
    let gone = !std::path::Path::new("/sys/class/net/hangar249").exists();
    let kept = std::path::Path::new("/sys/class/net/hangar248").exists();
    let _ = Command::new("ip")
        .args(["link", "del", "hangar248"])
        .status();
    let _ = Command::new("ip")
        .args(["link", "del", "hangar249"])
        .status();
    assert_eq!(removed, vec!["hangar249"]);
    assert!(gone && kept);
}
