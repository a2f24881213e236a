//! Hangar's host networking.
//!
//! ```text
//!   host                                         machine netns
//!   ─────────────────────────────────────────    ─────────────────────────
//!   lo        fdaa::3         (internal DNS)
//!   hangar1   10.231.1.1/24  fdaa:0:1::1/64 ──┬── hv<id>  ══ eth0 10.231.1.2/24
//!             (network "default")              │                 fdaa:0:1::2/64
//!                                              └── hv<id>  ══ eth0 10.231.1.3 ...
//!   hangar2   10.231.2.1/24  fdaa:0:2::1/64 ──── hv<id>  ══ eth0 10.231.2.2 ...
//!             (another app `network`)
//!
//!   nftables table `inet hangar_10_231_0_0_16` (one per installation,
//!   named after its range): no forwarding between its bridges and other
//!   hangar bridges; masquerade 10.231.0.0/16 and its fdaa:0:N::/64s to the
//!   outside when outbound NAT is on, else no forwarding to the outside.
//! ```
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

/// Where machines find the internal DNS server (Fly's address for it).
pub const DNS_ADDR: Ipv6Addr = Ipv6Addr::new(0xfdaa, 0, 0, 0, 0, 0, 0, 3);

/// Bridges are `hangar1` to `hangar254`.
pub const MAX_BRIDGES: u32 = 254;

/// Prefix of the names of hangard's bridges.
pub const BRIDGE_PREFIX: &str = "hangar";

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
}

/// One private network's bridge: its name and gateway addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bridge {
    /// Interface name, `hangarN`.
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
    ensure_bridge_locked(bridge)
}

fn ensure_bridge_locked(bridge: &Bridge) -> Result<(), NetError> {
    let name = bridge.name.as_str();
    let mut batch = String::new();
    if !exists(name) {
        batch.push_str(&format!("link add {name} type bridge\n"));
    }
    batch.push_str(&format!(
        "addr replace {}/{} dev {name}\naddr replace {}/{} dev {name} nodad\nlink set {name} up\n",
        bridge.gateway4, bridge.prefix4, bridge.gateway6, bridge.prefix6
    ));
    run("ip", &["-batch", "-"], Some(&batch)).map(drop)
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
    let _guard = bridges_lock();
    ensure_bridge_locked(bridge)?;
    let ns = netns
        .to_str()
        .ok_or_else(|| NetError::Invalid("namespace path is not UTF-8".into()))?;
    if exists(&link.host_if) {
        let _ = run("ip", &["link", "del", &link.host_if], None);
    }
    // A previous attempt may have left an eth0 in the namespace.
    let _ = run(
        "nsenter",
        &[&format!("--net={ns}"), "ip", "link", "del", "eth0"],
        None,
    );
    let host_if = link.host_if.as_str();
    run(
        "ip",
        &["-batch", "-"],
        Some(&format!(
            "link add {host_if} type veth peer name eth0 netns {ns}\n\
             link set {host_if} master {} up\n",
            bridge.name
        )),
    )?;
    let inside = format!(
        "addr add {}/{} dev eth0\n\
         addr add {}/{} dev eth0 nodad\n\
         link set eth0 up\n\
         route add default via {}\n\
         route add default via {}\n",
        link.address4,
        bridge.prefix4,
        link.address6,
        bridge.prefix6,
        bridge.gateway4,
        bridge.gateway6,
    );
    if let Err(e) = run(
        "nsenter",
        &[&format!("--net={ns}"), "ip", "-batch", "-"],
        Some(&inside),
    ) {
        let _ = run("ip", &["link", "del", host_if], None);
        return Err(e);
    }
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
    let bridge = std::fs::read_link(Path::new("/sys/class/net").join(host_if).join("master"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|b| b.starts_with(BRIDGE_PREFIX) && check_ifname(b).is_ok());
    run("ip", &["link", "del", host_if], None)?;
    if let Some(bridge) = bridge {
        let empty = std::fs::read_dir(Path::new("/sys/class/net").join(&bridge).join("brif"))
            .is_ok_and(|mut ports| ports.next().is_none());
        if empty {
            run("ip", &["link", "del", &bridge], None)?;
        }
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
        /// Its IPv4 range (`a.b.c.0/len`): its networks are the /24s
        /// `first..=last` in it.
        pub ipv4_range: String,
        /// Its first network (bridge `hangar<first>`, `fdaa:0:<first>::/64`).
        pub first: u8,
        /// Its last network.
        pub last: u8,
        /// Masquerade machines' traffic to the outside (IPv4 and IPv6).
        pub outbound_nat: bool,
    }

    impl Firewall {
        /// The installation's table: `inet hangar_<a>_<b>_<c>_<len>`, so
        /// that hangards with different ranges on one host keep their own.
        pub fn table(&self) -> String {
            format!(
                "{BRIDGE_PREFIX}_{}",
                self.ipv4_range.replace(['.', '/'], "_")
            )
        }

        fn bridges(&self) -> impl Iterator<Item = u8> + '_ {
            self.first.max(1)..=self.last.min(MAX_BRIDGES as u8)
        }

        /// The installation's bridges, as an nftables set.
        fn own(&self) -> String {
            let names: Vec<String> = self
                .bridges()
                .map(|i| format!("\"{BRIDGE_PREFIX}{i}\""))
                .collect();
            format!("{{ {} }}", names.join(", "))
        }

        /// The rules. Forwarding between one of this installation's
        /// bridges and any other hangar bridge (a different private
        /// network) is dropped; DNS to Fly's `fdaa::3` goes to the asker's
        /// gateway; with `outbound_nat`, machines' traffic to the outside
        /// is masqueraded (IPv4 from the range, IPv6 from the networks'
        /// /64s), and without it, forwarding between the bridges and the
        /// outside is dropped.
        pub fn rules(&self) -> String {
            let table = self.table();
            let own = self.own();
            // Traffic within one bridge reaches this hook only when the host
            // has br_netfilter loaded, then with the bridge as both ends: let
            // it through.
            let same = self
                .bridges()
                .map(|i| format!("\"{BRIDGE_PREFIX}{i}\" . \"{BRIDGE_PREFIX}{i}\""))
                .collect::<Vec<_>>()
                .join(", ");
            let mut r = format!(
                "table inet {table}\n\
                 delete table inet {table}\n\
                 table inet {table} {{\n\
                 \tchain forward {{\n\
                 \t\ttype filter hook forward priority filter; policy accept;\n\
                 \t\tiifname . oifname {{ {same} }} accept\n\
                 \t\tiifname {own} oifname \"{BRIDGE_PREFIX}*\" drop\n\
                 \t\tiifname \"{BRIDGE_PREFIX}*\" oifname {own} drop\n"
            );
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
                .bridges()
                .map(|i| format!("\"{BRIDGE_PREFIX}{i}\" : fdaa:0:{i:x}::1"))
                .collect::<Vec<_>>()
                .join(", ");
            r.push_str(&format!(
                "\tchain prerouting {{\n\
                 \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
                 \t\tip6 daddr {DNS_ADDR} meta l4proto {{ tcp, udp }} th dport 53 dnat ip6 to iifname map {{ {gateways} }}\n\
                 \t}}\n"
            ));
            if self.outbound_nat {
                let v6 = self
                    .bridges()
                    .map(|i| format!("fdaa:0:{i:x}::/64"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let v6 = format!("{{ {v6} }}");
                r.push_str(&format!(
                    "\tchain postrouting {{\n\
                     \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
                     \t\tip saddr {} oifname != \"{BRIDGE_PREFIX}*\" masquerade\n\
                     \t\tip6 saddr {v6} oifname != \"{BRIDGE_PREFIX}*\" masquerade\n\
                     \t}}\n",
                    self.ipv4_range
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
                    // Versions before per-installation tables had one `inet
                    // hangar` table for every installation on the host.
                    let _ = run("nft", &["delete", "table", "inet", BRIDGE_PREFIX], None);
                    // An accept in our table does not overrule a drop
                    // elsewhere: where iptables' FORWARD drops by default
                    // (Docker sets it so), machines' traffic is let
                    // through there too.
                    if self.outbound_nat && iptables_forward_drops() {
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
                for (table, chain, ours) in self.iptables_jumps(v6) {
                    if run(tool, &["-t", table, "-C", chain, "-j", &ours], None).is_err() {
                        run(tool, &["-t", table, "-I", chain, "1", "-j", &ours], None)?;
                    }
                }
            }
            Ok(())
        }

        /// With outbound NAT, turns forwarding on.
        fn apply_forwarding(&self) -> Result<(), NetError> {
            if self.outbound_nat {
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
            let mut r = format!("*filter\n:{t}-fwd - [0:0]\n:{t}-out - [0:0]\n:{t}-in - [0:0]\n");
            for i in self.bridges() {
                let b = format!("{BRIDGE_PREFIX}{i}");
                r.push_str(&format!(
                    "-A {t}-fwd -i {b} -o {b} -j ACCEPT\n\
                     -A {t}-fwd -i {b} -j {t}-out\n\
                     -A {t}-fwd -o {b} -j {t}-in\n"
                ));
            }
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
                 -A {t}-out -j {out}\n\
                 -A {t}-in -i {BRIDGE_PREFIX}+ -j DROP\n\
                 {back}-A {t}-in -j DROP\n\
                 COMMIT\n*nat\n:{t}-nat - [0:0]\n"
            ));
            if self.outbound_nat {
                if v6 {
                    for i in self.bridges() {
                        r.push_str(&format!(
                            "-A {t}-nat -s fdaa:0:{i:x}::/64 ! -o {BRIDGE_PREFIX}+ -j MASQUERADE\n"
                        ));
                    }
                } else {
                    r.push_str(&format!(
                        "-A {t}-nat -s {} ! -o {BRIDGE_PREFIX}+ -j MASQUERADE\n",
                        self.ipv4_range
                    ));
                }
            }
            if v6 {
                r.push_str(&format!(":{t}-dns - [0:0]\n"));
                for i in self.bridges() {
                    for proto in ["udp", "tcp"] {
                        r.push_str(&format!(
                            "-A {t}-dns -i {BRIDGE_PREFIX}{i} -d {DNS_ADDR} -p {proto} --dport 53 -j DNAT --to-destination fdaa:0:{i:x}::1\n"
                        ));
                    }
                }
            }
            r.push_str("COMMIT\n");
            r
        }

        /// Where the built-in chains jump to this installation's: (table,
        /// chain, our chain).
        fn iptables_jumps(&self, v6: bool) -> Vec<(&'static str, &'static str, String)> {
            let t = self.table();
            let mut j = vec![
                ("filter", "FORWARD", format!("{t}-fwd")),
                ("nat", "POSTROUTING", format!("{t}-nat")),
            ];
            if v6 {
                j.push(("nat", "PREROUTING", format!("{t}-dns")));
            }
            j
        }

        /// Other installations' tables on this host whose networks overlap
        /// this one's (their bridges would be shared).
        pub fn overlapping(&self) -> Vec<String> {
            let Ok(out) = run("nft", &["list", "tables", "inet"], None) else {
                return Vec::new();
            };
            let mine = self.table();
            out.lines()
                .filter_map(|l| l.trim().strip_prefix("table inet "))
                .filter(|t| *t != mine)
                .filter(|t| {
                    table_networks(t)
                        .is_some_and(|(first, last)| first <= self.last && self.first <= last)
                })
                .map(str::to_owned)
                .collect()
        }
    }

    /// The networks (third octets) a table named by [`Firewall::table`]
    /// covers.
    pub(crate) fn table_networks(table: &str) -> Option<(u8, u8)> {
        let rest = table.strip_prefix(BRIDGE_PREFIX)?.strip_prefix('_')?;
        let parts: Vec<u32> = rest
            .split('_')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        let [_, _, c, _, len] = parts[..] else {
            return None;
        };
        if !(16..=24).contains(&len) || c > 255 {
            return None;
        }
        let last = (c + (1 << (24 - len)) - 1).min(254);
        Some((c.max(1) as u8, last as u8))
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
            if name == "all" || name == "lo" || name.starts_with(BRIDGE_PREFIX) {
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

    fn fw(range: &str, first: u8, last: u8, nat: bool) -> firewall::Firewall {
        firewall::Firewall {
            ipv4_range: range.into(),
            first,
            last,
            outbound_nat: nat,
        }
    }

    #[test]
    fn rules_isolate_networks_and_nat_only_when_asked() {
        let off = fw("10.231.0.0/16", 1, 254, false).rules();
        assert!(off.contains("\"hangar7\" . \"hangar7\""));
        assert!(!off.contains("masquerade"));
        assert!(off.contains("\"hangar200\" : fdaa:0:c8::1"));
        let on = fw("10.231.0.0/16", 1, 254, true).rules();
        assert!(on.contains("masquerade"));
        assert!(on.contains("ip saddr 10.231.0.0/16"));
        assert!(on.contains("ip6 saddr { fdaa:0:1::/64, fdaa:0:2::/64"));
        // An installation's rules name its own bridges only.
        let small = fw("10.231.8.0/22", 8, 11, false);
        assert_eq!(small.table(), "hangar_10_231_8_0_22");
        let r = small.rules();
        assert!(r.contains("\"hangar11\" . \"hangar11\""));
        assert!(!r.contains("\"hangar12\""));
        assert!(!r.contains("\"hangar7\""));
        // The same for iptables, in chains named after the table (at most
        // 28 characters, whatever the range).
        let ipt = fw("10.231.8.0/22", 8, 11, true).iptables_rules(true);
        assert!(ipt.contains("-A hangar_10_231_8_0_22-fwd -i hangar9 -o hangar9 -j ACCEPT"));
        assert!(ipt.contains("-s fdaa:0:b::/64 ! -o hangar+ -j MASQUERADE"));
        assert!(ipt.contains("--to-destination fdaa:0:8::1"));
        assert!(!ipt.contains("hangar12 "));
        let longest = fw("255.255.255.0/24", 255, 255, true).table() + "-fwd";
        assert!(longest.len() <= 28, "{longest}");
    }

    #[test]
    fn tables_tell_their_networks() {
        assert_eq!(
            firewall::table_networks("hangar_10_231_8_0_22"),
            Some((8, 11))
        );
        assert_eq!(
            firewall::table_networks("hangar_10_231_0_0_16"),
            Some((1, 254))
        );
        assert_eq!(firewall::table_networks("hangar"), None);
        assert_eq!(firewall::table_networks("filter"), None);
    }
}
