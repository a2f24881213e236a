//! Hangar's host networking.
//!
//! ```text
//!   host (installation 3fa2, host 1)              machine netns
//!   ──────────────────────────────────────────    ─────────────────────────────
//!   hgr3fa200101  10.231.1.1/24               ┬── hv<id> ══ eth0 10.231.1.2/24
//!     network 1, block 1  fdaa:3fa2:1:1::1:1/112 │            fdaa:3fa2:1:1::1:2/112
//!                                              └── hv<id> ══ eth0 10.231.1.3 ...
//!   hgr3fa200105  10.231.5.1/24  fdaa:3fa2:1:1::5:1/112  (network 1's second block)
//!   hgr3fa200202  10.231.2.1/24  fdaa:3fa2:2:1::2:1/112  (network 2: another app `network`)
//!
//!   nftables table `inet hangar_3fa2` (one per installation): forwarding
//!   between the bridges of one network is let through, between any other
//!   hangar bridges dropped; fdaa::3 (DNS) goes to the asker's gateway;
//!   10.231.0.0/16 and fdaa:3fa2::/32 are masqueraded to the outside when
//!   outbound NAT is on, else nothing is forwarded to the outside.
//! ```
//!
//! A network grows a block (a /24 of the installation's IPv4 range and a
//! bridge of its own, since a Linux bridge takes at most 1024 ports) for
//! every 253 machines; machines of one network in different blocks reach
//! each other through the host. Names come from the installation's id and
//! the network, never from an address, so installations with different
//! ranges share nothing.
//!
//! Every operation is idempotent, so whatever a crash left half done is
//! finished (or redone) by the next call: bridges and the DNS address are
//! ensured on use, a machine's link is recreated when it is incomplete,
//! and the firewall table is replaced as a whole.
//!
//! The work is done by `ip` and `nft` (iproute2 and nftables, present on
//! every Linux host that runs containers): plain, inspectable and the same
//! commands an operator would type to debug it.

use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::{Command, Stdio};

pub mod dns;
pub mod mesh;
mod netlink;

/// Where machines find the internal DNS server (Fly's address for it).
pub const DNS_ADDR: Ipv6Addr = Ipv6Addr::new(0xfdaa, 0, 0, 0, 0, 0, 0, 3);

/// Prefix of the names of hangard's bridges: `hgr`, the installation's id
/// (4 hex digits), the network (3) and the block (2).
pub const BRIDGE_PREFIX: &str = "hgr";

/// Prefix of the bridges of versions that named them after an octet
/// (`hangarN`).
pub const LEGACY_BRIDGE_PREFIX: &str = "hangar";

/// The bridge of block `block` of network `net` of an installation.
pub fn bridge_name(installation: u16, net: u16, block: u8) -> String {
    format!(
        "{BRIDGE_PREFIX}{installation:04x}{:03x}{block:02x}",
        net & 0xfff
    )
}

/// The prefix every bridge of an installation's names starts with.
pub fn installation_prefix(installation: u16) -> String {
    format!("{BRIDGE_PREFIX}{installation:04x}")
}

/// The host's IPv4 addresses: `(interface, address, prefix length)`.
pub fn ipv4_addresses() -> Result<Vec<(String, Ipv4Addr, u8)>, NetError> {
    let out = run("ip", &["-4", "-o", "addr", "show"], None)?;
    Ok(out
        .lines()
        .filter_map(|l| {
            // `2: eth0    inet 10.0.0.5/24 brd ... scope global eth0`
            let mut w = l.split_whitespace();
            let name = w.nth(1)?.split('@').next()?.to_owned();
            let (addr, len) = w.skip_while(|x| *x != "inet").nth(1)?.split_once('/')?;
            Some((name, addr.parse().ok()?, len.parse().ok()?))
        })
        .collect())
}

/// Removes what versions that named bridges after an octet left for the
/// IPv4 range `range` (`a.b.c.0/len`, networks `first..=last`): their
/// firewall table (or iptables chains) and those of their bridges that
/// carry the range's gateway addresses. Machines are wired again on new
/// bridges as their agent resumes them. Returns the bridges removed.
pub fn remove_legacy(range: &str, first: u8, last: u8) -> Result<Vec<String>, NetError> {
    let table = format!("{LEGACY_BRIDGE_PREFIX}_{}", range.replace(['.', '/'], "_"));
    firewall::remove_table(&table);
    let _ = run(
        "nft",
        &["delete", "table", "inet", LEGACY_BRIDGE_PREFIX],
        None,
    );
    let prefix: Vec<u8> = range
        .split('.')
        .take(2)
        .filter_map(|o| o.parse().ok())
        .collect();
    let [a, b] = prefix[..] else {
        return Ok(Vec::new());
    };
    let mut removed = Vec::new();
    let _guard = bridges_lock();
    for (name, addr, _) in ipv4_addresses()? {
        let [x, y, n, h] = addr.octets();
        if name == format!("{LEGACY_BRIDGE_PREFIX}{n}")
            && (x, y, h) == (a, b, 1)
            && (first..=last).contains(&n)
        {
            forget_bridge(&name);
            run("ip", &["link", "del", &name], None)?;
            removed.push(name);
        }
    }
    Ok(removed)
}

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A tool failed.
    #[error("{tool} failed: {message}")]
    Tool {
        /// `ip` or `nft`.
        tool: &'static str,
        /// What it said.
        message: String,
    },
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
    /// The kernel refused a netlink request.
    #[error("cannot {op}: {source}")]
    Netlink {
        /// What was being done.
        op: &'static str,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
}

/// One private network's bridge: its name and gateway addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bridge {
    /// Interface name (see [`bridge_name`]).
    pub name: String,
    /// Gateway IPv4 address.
    pub gateway4: Ipv4Addr,
    /// IPv4 prefix length.
    pub prefix4: u8,
    /// Gateway IPv6 address.
    pub gateway6: Ipv6Addr,
    /// IPv6 prefix length.
    pub prefix6: u8,
}

/// A machine's side of the network: the addresses its `eth0` gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The host end of the veth pair (at most 15 bytes).
    pub host_if: String,
    /// IPv4 address.
    pub address4: Ipv4Addr,
    /// IPv6 address.
    pub address6: Ipv6Addr,
}

fn run(tool: &'static str, args: &[&str], stdin: Option<&str>) -> Result<String, NetError> {
    let mut cmd = Command::new(tool);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| NetError::Tool {
        tool,
        message: format!("cannot run it: {e}"),
    })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let _ = pipe.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| NetError::Tool {
        tool,
        message: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(NetError::Tool {
            tool,
            message: format!(
                "{} ({})",
                String::from_utf8_lossy(&out.stderr).trim(),
                args.join(" ")
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn exists(ifname: &str) -> bool {
    Path::new("/sys/class/net").join(ifname).exists()
}

/// Bridges are made, joined and removed one step at a time (machines of
/// one network start and go side by side).
static BRIDGES: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn bridges_lock() -> std::sync::MutexGuard<'static, ()> {
    BRIDGES.lock().unwrap_or_else(|p| p.into_inner())
}

/// Makes sure `bridge` exists, is up and has its gateway addresses.
pub fn ensure_bridge(bridge: &Bridge) -> Result<(), NetError> {
    check_ifname(&bridge.name)?;
    let _guard = bridges_lock();
    forget_bridge(&bridge.name);
    ensure_bridge_locked(bridge)
}

/// The bridges this process has set up (with these gateways) and that
/// still existed when last looked at: wiring a machine to one of them
/// needs no `ip` run for the bridge itself. Held under the bridges lock.
static READY: std::sync::Mutex<Vec<Bridge>> = std::sync::Mutex::new(Vec::new());

fn ready() -> std::sync::MutexGuard<'static, Vec<Bridge>> {
    READY.lock().unwrap_or_else(|p| p.into_inner())
}

fn forget_bridge(name: &str) {
    ready().retain(|b| b.name != name);
}

fn ensure_bridge_locked(bridge: &Bridge) -> Result<(), NetError> {
    let name = bridge.name.as_str();
    if exists(name) && ready().contains(bridge) {
        return Ok(());
    }
    forget_bridge(name);
    if !exists(name) {
        run("ip", &["link", "add", name, "type", "bridge"], None)?;
    }
    // No duplicate address detection: while the bridge's link-local address
    // is tentative the host sends no neighbor solicitations on it, so the
    // first packets routed to a machine of this block (from another block
    // of its network) would be lost.
    let _ = std::fs::write(
        Path::new("/proc/sys/net/ipv6/conf")
            .join(name)
            .join("accept_dad"),
        "0",
    );
    let mut batch = String::new();
    batch.push_str(&format!(
        "addr replace {}/{} dev {name}\naddr replace {}/{} dev {name} nodad\nlink set {name} up\n",
        bridge.gateway4, bridge.prefix4, bridge.gateway6, bridge.prefix6
    ));
    run("ip", &["-batch", "-"], Some(&batch))?;
    ready().push(bridge.clone());
    Ok(())
}

fn check_ifname(name: &str) -> Result<(), NetError> {
    if name.is_empty()
        || name.len() > 15
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(NetError::Invalid(format!("bad interface name {name:?}")));
    }
    Ok(())
}

/// Whether the machine link `link` is in place on `bridge`: its host end
/// exists and is a port of the bridge (the other end lives and dies with
/// the namespace). Reads sysfs only, no tool runs.
pub fn is_connected(link: &Link, bridge: &Bridge) -> bool {
    std::fs::read_link(
        Path::new("/sys/class/net")
            .join(&link.host_if)
            .join("master"),
    )
    .is_ok_and(|m| m.file_name().is_some_and(|n| *n == *bridge.name))
}

/// Wires the network namespace pinned at `netns` to `bridge`: a veth pair
/// whose host end joins the bridge and whose other end becomes the
/// namespace's `eth0` with `link`'s addresses and default routes through
/// the gateway. A half-made link is removed and made again.
pub fn connect(netns: &Path, bridge: &Bridge, link: &Link) -> Result<(), NetError> {
    check_ifname(&link.host_if)?;
    check_ifname(&bridge.name)?;
    let host_if = link.host_if.as_str();
    // The host's side under the lock (the bridge must not be removed as
    // empty meanwhile); the namespace's side, which is the machine's alone,
    // without it.
    {
        let _guard = bridges_lock();
        ensure_bridge_locked(bridge)?;
        netlink::host_side(netns, bridge, link)?;
    }
    if let Err(e) = netlink::inside(netns, bridge, link) {
        let _guard = bridges_lock();
        let _ = netlink::remove(host_if);
        return Err(e);
    }
    // The host end's queue is activated after the carrier comes up, as
    // the namespace's end was (see `netlink::inside`).
    let state = Path::new("/sys/class/net").join(host_if).join("operstate");
    let deadline = std::time::Instant::now() + netlink::PASSING_WAIT;
    while std::fs::read_to_string(&state).is_ok_and(|s| s.trim() != "up") {
        if std::time::Instant::now() >= deadline {
            tracing::warn!(link = host_if, "a new link does not pass traffic yet");
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    Ok(())
}

/// The addresses may have been a destroyed machine's: the host must not
/// keep sending to its link-layer address (a stale neighbor entry lasts
/// about half a minute, during which nothing on the host reaches the new
/// machine).
fn flush_neighbors(bridge: &Bridge, link: &Link) {
    let _ = run(
        "ip",
        &["-batch", "-"],
        Some(&format!(
            "neigh flush to {} dev {}\nneigh flush to {} dev {}\n",
            link.address4, bridge.name, link.address6, bridge.name
        )),
    );
}

/// Wires a microVM's tap device `link.host_if` to `bridge`: made (again)
/// as a persistent tap and made a port of the bridge; the VM's own
/// `eth0` gets `link`'s addresses from inside.
pub fn connect_tap(bridge: &Bridge, link: &Link) -> Result<(), NetError> {
    check_ifname(&link.host_if)?;
    check_ifname(&bridge.name)?;
    let _guard = bridges_lock();
    ensure_bridge_locked(bridge)?;
    let tap = link.host_if.as_str();
    if exists(tap) {
        let _ = run("ip", &["link", "del", tap], None);
    }
    run(
        "ip",
        &["-batch", "-"],
        Some(&format!(
            "tuntap add dev {tap} mode tap\nlink set {tap} master {} up\n",
            bridge.name
        )),
    )?;
    flush_neighbors(bridge, link);
    Ok(())
}

/// Removes a machine's link (if it is there), and its bridge when that was
/// the bridge's last link.
pub fn disconnect(host_if: &str) -> Result<(), NetError> {
    check_ifname(host_if)?;
    let _guard = bridges_lock();
    if !exists(host_if) {
        return Ok(());
    }
    let bridge = bridge_of(host_if);
    run("ip", &["link", "del", host_if], None)?;
    match bridge {
        Some(bridge) => remove_bridge_if_empty_locked(&bridge),
        None => Ok(()),
    }
}

/// Whether the interface `ifname` exists on the host (sysfs only).
pub fn link_exists(ifname: &str) -> bool {
    check_ifname(ifname).is_ok() && exists(ifname)
}

/// The Hangar bridge the machine link `host_if` is a port of, if any
/// (sysfs only, no tool runs).
pub fn bridge_of(host_if: &str) -> Option<String> {
    check_ifname(host_if).ok()?;
    std::fs::read_link(Path::new("/sys/class/net").join(host_if).join("master"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|b| is_hangar_bridge(b))
}

/// Whether `name` is a valid interface name of a Hangar bridge.
fn is_hangar_bridge(name: &str) -> bool {
    (name.starts_with(BRIDGE_PREFIX) || name.starts_with(LEGACY_BRIDGE_PREFIX))
        && check_ifname(name).is_ok()
}

/// Removes the Hangar bridge `bridge` if no link is a port of it any more
/// (after a machine's namespace went, taking its veth pair with it).
pub fn remove_bridge_if_empty(bridge: &str) -> Result<(), NetError> {
    if !is_hangar_bridge(bridge) {
        return Err(NetError::Invalid(format!(
            "{bridge:?} is not a Hangar bridge"
        )));
    }
    let _guard = bridges_lock();
    remove_bridge_if_empty_locked(bridge)
}

fn remove_bridge_if_empty_locked(bridge: &str) -> Result<(), NetError> {
    let empty = std::fs::read_dir(Path::new("/sys/class/net").join(bridge).join("brif"))
        .is_ok_and(|mut ports| ports.next().is_none());
    if empty {
        forget_bridge(bridge);
        run("ip", &["link", "del", bridge], None)?;
    }
    Ok(())
}

/// The firewall: each installation's own nftables table, replaced as a
/// whole (or, on a host without nftables, its own iptables chains).
pub mod firewall {
    use super::*;

    /// What installs the rules.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Tool {
        /// `nft`: one table per installation.
        Nftables,
        /// `iptables`/`ip6tables`: chains per installation, jumped to from
        /// the built-in ones.
        Iptables,
    }

    impl Tool {
        /// nftables when the host has `nft`, else iptables, else none.
        pub fn detect() -> Option<Tool> {
            if run("nft", &["--version"], None).is_ok() {
                Some(Tool::Nftables)
            } else if run("iptables", &["--version"], None).is_ok() {
                Some(Tool::Iptables)
            } else {
                None
            }
        }
    }

    /// One installation's rules.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Firewall {
        /// The installation: its id names the table and its bridges.
        pub installation: u16,
        /// Its IPv4 range (`a.b.c.0/len`), masqueraded.
        pub ipv4_range: String,
        /// Its 6PN prefix (`fdaa:<installation>::/32`), masqueraded.
        pub ipv6_prefix: String,
        /// Its networks' bridges, one list per network, each bridge with its
        /// IPv6 gateway (where `fdaa::3` is sent).
        pub networks: Vec<Vec<(String, Ipv6Addr)>>,
        /// Masquerade machines' traffic to the outside (IPv4 and IPv6).
        pub outbound_nat: bool,
        /// The mesh interface to the cluster's other hosts, if any: each
        /// network's bridges exchange that network's 6PN addresses (its
        /// /48) with it.
        pub mesh: Option<String>,
    }

    impl Firewall {
        /// The installation's table: `inet hangar_<installation>`.
        pub fn table(&self) -> String {
            format!("{LEGACY_BRIDGE_PREFIX}_{:04x}", self.installation)
        }

        /// Adds `bridge` to the list of the network whose bridges start with
        /// `network_prefix` (a new list if none); false if it was there.
        pub fn add_bridge(
            &mut self,
            network_prefix: &str,
            bridge: &str,
            gateway6: Ipv6Addr,
        ) -> bool {
            if self.networks.iter().flatten().any(|(b, _)| b == bridge) {
                return false;
            }
            match self
                .networks
                .iter_mut()
                .find(|n| n.iter().any(|(b, _)| b.starts_with(network_prefix)))
            {
                Some(n) => n.push((bridge.to_owned(), gateway6)),
                None => self.networks.push(vec![(bridge.to_owned(), gateway6)]),
            }
            true
        }

        /// Each network's bridges with its 6PN /48 (from its gateways).
        fn network_prefixes(&self) -> Vec<(&[(String, Ipv6Addr)], String)> {
            self.networks
                .iter()
                .filter_map(|n| {
                    let g = n.first()?.1.segments();
                    Some((
                        n.as_slice(),
                        format!("{:x}:{:x}:{:x}::/48", g[0], g[1], g[2]),
                    ))
                })
                .collect()
        }

        fn own(&self) -> String {
            format!("\"{}*\"", installation_prefix(self.installation))
        }

        /// The rules. Forwarding between the bridges of one network is let
        /// through; between one of this installation's bridges and any
        /// other hangar bridge (another network, or another installation's)
        /// it is dropped; DNS to Fly's `fdaa::3` goes to the asker's
        /// gateway; with `outbound_nat`, machines' traffic to the outside is
        /// masqueraded (IPv4 from the range, IPv6 from the installation's
        /// /32), and without it, forwarding between the bridges and the
        /// outside is dropped.
        pub fn rules(&self) -> String {
            let table = self.table();
            let own = self.own();
            let mut r = format!(
                "table inet {table}\n\
                 delete table inet {table}\n\
                 table inet {table} {{\n\
                 \tchain forward {{\n\
                 \t\ttype filter hook forward priority filter; policy accept;\n"
            );
            for net in self.networks.iter().filter(|n| !n.is_empty()) {
                let set = net
                    .iter()
                    .map(|(b, _)| format!("\"{b}\""))
                    .collect::<Vec<_>>()
                    .join(", ");
                r.push_str(&format!(
                    "\t\tiifname {{ {set} }} oifname {{ {set} }} accept\n"
                ));
            }
            if let Some(mesh) = &self.mesh {
                // A network's addresses between its bridges and the other
                // hosts, nothing else.
                for (net, prefix) in self.network_prefixes() {
                    let set = net
                        .iter()
                        .map(|(b, _)| format!("\"{b}\""))
                        .collect::<Vec<_>>()
                        .join(", ");
                    r.push_str(&format!(
                        "\t\tiifname {{ {set} }} oifname \"{mesh}\" ip6 saddr {prefix} ip6 daddr {prefix} accept\n\
                         \t\tiifname \"{mesh}\" oifname {{ {set} }} ip6 saddr {prefix} ip6 daddr {prefix} accept\n"
                    ));
                }
            }
            for other in [BRIDGE_PREFIX, LEGACY_BRIDGE_PREFIX] {
                r.push_str(&format!(
                    "\t\tiifname {own} oifname \"{other}*\" drop\n\
                     \t\tiifname \"{other}*\" oifname {own} drop\n"
                ));
            }
            if self.outbound_nat {
                // Out and back; nothing from outside opens a connection to
                // a machine (the proxy is the way in).
                r.push_str(&format!(
                    "\t\toifname {own} ct state != {{ established, related }} drop\n"
                ));
            } else {
                r.push_str(&format!(
                    "\t\tiifname {own} drop\n\
                     \t\toifname {own} drop\n"
                ));
            }
            r.push_str("\t}\n");
            // Fly's DNS address, fdaa::3, answered by the internal DNS server
            // on the asker's gateway.
            let gateways = self
                .networks
                .iter()
                .flatten()
                .map(|(b, gw)| format!("\"{b}\" : {gw}"))
                .collect::<Vec<_>>()
                .join(", ");
            r.push_str(
                "\tchain prerouting {\n\
                 \t\ttype nat hook prerouting priority dstnat; policy accept;\n",
            );
            if !gateways.is_empty() {
                r.push_str(&format!(
                    "\t\tip6 daddr {DNS_ADDR} meta l4proto {{ tcp, udp }} th dport 53 dnat ip6 to iifname map {{ {gateways} }}\n"
                ));
            }
            r.push_str("\t}\n");
            if self.outbound_nat {
                r.push_str(&format!(
                    "\tchain postrouting {{\n\
                     \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
                     \t\tip saddr {} oifname != \"{BRIDGE_PREFIX}*\" masquerade\n\
                     \t\tip6 saddr {} oifname != \"{BRIDGE_PREFIX}*\" masquerade\n\
                     \t}}\n",
                    self.ipv4_range, self.ipv6_prefix
                ));
            }
            r.push_str("}\n");
            r
        }

        /// Installs the rules; with outbound NAT, turns forwarding on
        /// (IPv4, and IPv6 where the host has it: interfaces that take
        /// router advertisements keep taking them).
        pub fn apply(&self) -> Result<Tool, NetError> {
            let tool = Tool::detect().ok_or_else(|| NetError::Tool {
                tool: "nft",
                message: "neither nft (nftables) nor iptables is installed".into(),
            })?;
            self.apply_with(tool)?;
            Ok(tool)
        }

        /// [`Firewall::apply`] with the tool given.
        pub fn apply_with(&self, tool: Tool) -> Result<(), NetError> {
            match tool {
                Tool::Nftables => {
                    run("nft", &["-f", "-"], Some(&self.rules()))?;
                    // An accept in our table does not overrule a drop
                    // elsewhere: where iptables' FORWARD drops by default
                    // (Docker sets it so), machines' forwarded traffic is
                    // let through there too.
                    if self.forwards() && iptables_forward_drops() {
                        self.apply_iptables()?;
                    }
                }
                Tool::Iptables => self.apply_iptables()?,
            }
            self.apply_forwarding()
        }

        /// The iptables form of the rules (ip6tables too where the host has
        /// it).
        fn apply_iptables(&self) -> Result<(), NetError> {
            for v6 in [false, true] {
                let (tool, restore) = if v6 {
                    ("ip6tables", "ip6tables-restore")
                } else {
                    ("iptables", "iptables-restore")
                };
                if v6 && run(tool, &["--version"], None).is_err() {
                    continue;
                }
                run(restore, &["--noflush"], Some(&self.iptables_rules(v6)))?;
                for (table, chain, ours) in iptables_jumps(&self.table(), v6) {
                    if run(tool, &["-t", table, "-C", chain, "-j", &ours], None).is_err() {
                        run(tool, &["-t", table, "-I", chain, "1", "-j", &ours], None)?;
                    }
                }
            }
            Ok(())
        }

        /// Whether machines' traffic goes through the host's forwarding:
        /// with outbound NAT, or when a network has more than one block.
        fn forwards(&self) -> bool {
            self.outbound_nat || self.mesh.is_some() || self.networks.iter().any(|n| n.len() > 1)
        }

        /// Turns forwarding on when something needs it: outbound NAT, or a
        /// network with more than one block (its machines reach each other
        /// through the host). The rules keep everything else of ours from
        /// being forwarded.
        fn apply_forwarding(&self) -> Result<(), NetError> {
            if self.forwards() {
                let sysctl = |e: std::io::Error| NetError::Tool {
                    tool: "sysctl",
                    message: format!("cannot turn forwarding on: {e}"),
                };
                std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(sysctl)?;
                if Path::new("/proc/sys/net/ipv6/conf/all/forwarding").exists() {
                    keep_router_advertisements();
                    std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1")
                        .map_err(sysctl)?;
                }
            }
            Ok(())
        }

        /// The same rules for iptables (`v6`: ip6tables), as
        /// `iptables-restore --noflush` input: chains named after the
        /// table, declared (so emptied) and filled again.
        pub fn iptables_rules(&self, v6: bool) -> String {
            let t = self.table();
            let own = format!("{}+", installation_prefix(self.installation));
            let mut r = format!("*filter\n:{t}-fwd - [0:0]\n:{t}-out - [0:0]\n:{t}-in - [0:0]\n");
            for net in &self.networks {
                for (a, _) in net {
                    for (b, _) in net {
                        r.push_str(&format!("-A {t}-fwd -i {a} -o {b} -j ACCEPT\n"));
                    }
                }
            }
            if let (Some(mesh), true) = (&self.mesh, v6) {
                for (net, prefix) in self.network_prefixes() {
                    for (b, _) in net {
                        r.push_str(&format!(
                            "-A {t}-fwd -i {b} -o {mesh} -s {prefix} -d {prefix} -j ACCEPT\n\
                             -A {t}-fwd -i {mesh} -o {b} -s {prefix} -d {prefix} -j ACCEPT\n"
                        ));
                    }
                }
            }
            r.push_str(&format!(
                "-A {t}-fwd -i {own} -j {t}-out\n\
                 -A {t}-fwd -o {own} -j {t}-in\n"
            ));
            let (out, back) = if self.outbound_nat {
                (
                    "ACCEPT",
                    format!("-A {t}-in -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"),
                )
            } else {
                ("DROP", String::new())
            };
            r.push_str(&format!(
                "-A {t}-out -o {BRIDGE_PREFIX}+ -j DROP\n\
                 -A {t}-out -o {LEGACY_BRIDGE_PREFIX}+ -j DROP\n\
                 -A {t}-out -j {out}\n\
                 -A {t}-in -i {BRIDGE_PREFIX}+ -j DROP\n\
                 -A {t}-in -i {LEGACY_BRIDGE_PREFIX}+ -j DROP\n\
                 {back}-A {t}-in -j DROP\n\
                 COMMIT\n*nat\n:{t}-nat - [0:0]\n"
            ));
            if self.outbound_nat {
                let source = if v6 {
                    &self.ipv6_prefix
                } else {
                    &self.ipv4_range
                };
                r.push_str(&format!(
                    "-A {t}-nat -s {source} ! -o {BRIDGE_PREFIX}+ -j MASQUERADE\n"
                ));
            }
            if v6 {
                r.push_str(&format!(":{t}-dns - [0:0]\n"));
                for (b, gw) in self.networks.iter().flatten() {
                    for proto in ["udp", "tcp"] {
                        r.push_str(&format!(
                            "-A {t}-dns -i {b} -d {DNS_ADDR} -p {proto} --dport 53 -j DNAT --to-destination {gw}\n"
                        ));
                    }
                }
            }
            r.push_str("COMMIT\n");
            r
        }
    }

    /// Where the built-in chains jump to an installation's: (table,
    /// chain, our chain).
    fn iptables_jumps(t: &str, v6: bool) -> Vec<(&'static str, &'static str, String)> {
        let mut j = vec![
            ("filter", "FORWARD", format!("{t}-fwd")),
            ("nat", "POSTROUTING", format!("{t}-nat")),
        ];
        if v6 {
            j.push(("nat", "PREROUTING", format!("{t}-dns")));
        }
        j
    }

    /// Removes a table (nftables) and the chains of the same name
    /// (iptables) with the jumps to them, wherever they are.
    pub fn remove_table(t: &str) {
        let _ = run("nft", &["delete", "table", "inet", t], None);
        for (tool, v6) in [("iptables", false), ("ip6tables", true)] {
            if run(tool, &["--version"], None).is_err() {
                continue;
            }
            for (table, chain, ours) in iptables_jumps(t, v6) {
                while run(tool, &["-t", table, "-D", chain, "-j", &ours], None).is_ok() {}
            }
            for (table, chains) in [
                ("filter", ["fwd", "out", "in"].as_slice()),
                ("nat", &["nat", "dns"]),
            ] {
                for c in chains {
                    let _ = run(tool, &["-t", table, "-F", &format!("{t}-{c}")], None);
                }
                for c in chains {
                    let _ = run(tool, &["-t", table, "-X", &format!("{t}-{c}")], None);
                }
            }
        }
    }

    /// Whether iptables' FORWARD chain drops what no rule accepts.
    fn iptables_forward_drops() -> bool {
        run("iptables", &["-S", "FORWARD"], None)
            .is_ok_and(|out| out.lines().any(|l| l.trim() == "-P FORWARD DROP"))
    }

    /// With forwarding on, Linux ignores router advertisements on
    /// interfaces set to take them only when not forwarding (`accept_ra`
    /// 1): those are set to 2 (take them anyway), so that the host keeps
    /// its IPv6 addresses and routes.
    fn keep_router_advertisements() {
        let Ok(dir) = std::fs::read_dir("/proc/sys/net/ipv6/conf") else {
            return;
        };
        for e in dir.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name == "all"
                || name == "lo"
                || name.starts_with(BRIDGE_PREFIX)
                || name.starts_with(LEGACY_BRIDGE_PREFIX)
            {
                continue;
            }
            let p = e.path().join("accept_ra");
            if std::fs::read_to_string(&p).is_ok_and(|v| v.trim() == "1") {
                if let Err(err) = std::fs::write(&p, "2") {
                    tracing::warn!(interface = %name, error = %err, "cannot keep taking router advertisements");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_checked() {
        assert!(check_ifname("hangar1").is_ok());
        assert!(check_ifname("hv0123456789abc").is_ok());
        assert!(check_ifname("hv0123456789abcd").is_err());
        assert!(check_ifname("a b").is_err());
        assert!(check_ifname("").is_err());
        assert!(check_ifname("x;rm").is_err());
    }

    fn fw(nat: bool) -> firewall::Firewall {
        let gw = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        firewall::Firewall {
            installation: 0x3fa2,
            ipv4_range: "10.231.0.0/16".into(),
            ipv6_prefix: "fdaa:3fa2::/32".into(),
            networks: vec![
                vec![
                    (bridge_name(0x3fa2, 1, 1), gw("fdaa:3fa2:1:1::1:1")),
                    (bridge_name(0x3fa2, 1, 5), gw("fdaa:3fa2:1:1::5:1")),
                ],
                vec![(bridge_name(0x3fa2, 2, 2), gw("fdaa:3fa2:2:1::2:1"))],
            ],
            outbound_nat: nat,
            mesh: None,
        }
    }

    #[test]
    fn the_mesh_carries_each_networks_addresses_only() {
        let mut f = fw(false);
        assert!(!f.rules().contains("hgm"));
        f.mesh = Some("hgm3fa20001".into());
        let r = f.rules();
        assert!(r.contains(
            "iifname { \"hgr3fa200101\", \"hgr3fa200105\" } oifname \"hgm3fa20001\" ip6 saddr fdaa:3fa2:1::/48 ip6 daddr fdaa:3fa2:1::/48 accept"
        ), "{r}");
        assert!(r.contains(
            "iifname \"hgm3fa20001\" oifname { \"hgr3fa200202\" } ip6 saddr fdaa:3fa2:2::/48 ip6 daddr fdaa:3fa2:2::/48 accept"
        ), "{r}");
        // Before the drops that keep everything else apart.
        assert!(r.find("hgm3fa20001").unwrap() < r.find("drop").unwrap());
        let v6 = f.iptables_rules(true);
        assert!(
            v6.contains(
                "-i hgr3fa200105 -o hgm3fa20001 -s fdaa:3fa2:1::/48 -d fdaa:3fa2:1::/48 -j ACCEPT"
            ),
            "{v6}"
        );
        assert!(!f.iptables_rules(false).contains("hgm"));
    }

    #[test]
    fn bridges_are_named_after_installation_network_and_block() {
        assert_eq!(bridge_name(0x3fa2, 1, 5), "hgr3fa200105");
        assert_eq!(bridge_name(0xffff, 0xfff, 0xfe), "hgrffffffffe");
        assert!(check_ifname(&bridge_name(0xffff, 0xfff, 0xff)).is_ok());
    }

    #[test]
    fn rules_join_a_networks_blocks_isolate_the_rest_and_nat_only_when_asked() {
        let mut off = fw(false);
        let r = off.rules();
        assert!(r.contains("table inet hangar_3fa2"));
        assert!(r.contains(
            "iifname { \"hgr3fa200101\", \"hgr3fa200105\" } oifname { \"hgr3fa200101\", \"hgr3fa200105\" } accept"
        ));
        assert!(r.contains("iifname \"hgr3fa2*\" oifname \"hgr*\" drop"));
        assert!(r.contains("iifname \"hangar*\" oifname \"hgr3fa2*\" drop"));
        assert!(r.contains("\"hgr3fa200202\" : fdaa:3fa2:2:1::2:1"));
        assert!(!r.contains("masquerade"));
        let on = fw(true).rules();
        assert!(on.contains("ip saddr 10.231.0.0/16 oifname != \"hgr*\" masquerade"));
        assert!(on.contains("ip6 saddr fdaa:3fa2::/32"));
        // A new block joins its network; a known one changes nothing.
        let gw = "fdaa:3fa2:1:1::9:1".parse().unwrap();
        assert!(off.add_bridge("hgr3fa2001", &bridge_name(0x3fa2, 1, 9), gw));
        assert!(!off.add_bridge("hgr3fa2001", &bridge_name(0x3fa2, 1, 9), gw));
        assert_eq!(off.networks[0].len(), 3);
        let gw = "fdaa:3fa2:3:1::3:1".parse().unwrap();
        assert!(off.add_bridge("hgr3fa2003", &bridge_name(0x3fa2, 3, 3), gw));
        assert_eq!(off.networks.len(), 3);
        // iptables: the same, in chains named after the table.
        let ipt = fw(true).iptables_rules(true);
        assert!(ipt.contains("-A hangar_3fa2-fwd -i hgr3fa200101 -o hgr3fa200105 -j ACCEPT"));
        assert!(!ipt.contains("-i hgr3fa200101 -o hgr3fa200202"));
        assert!(ipt.contains("-s fdaa:3fa2::/32 ! -o hgr+ -j MASQUERADE"));
        assert!(ipt.contains("--to-destination fdaa:3fa2:1:1::5:1"));
        assert!(
            fw(true)
                .iptables_rules(false)
                .contains("-s 10.231.0.0/16 ! -o hgr+ -j MASQUERADE")
        );
    }
}
