//! Private networking: which network a machine is on and its addresses.
//!
//! Each app `network` name (Fly's per-org 6PN, `default` unless the app
//! asked for another) is one isolated network with an id of its own. It
//! takes IPv4 *blocks* (the /24s of the installation's [`NetRange`]) as it
//! grows, 253 machines each, and every block is a host bridge of its own
//! (a Linux bridge takes at most 1024 ports): `hgr<installation><net><block>`.
//! A machine's IPv6 address is its identity (`private_ip`,
//! `FLY_PRIVATE_IP`), in Fly's 6PN shape and routable as it says:
//!
//! ```text
//!   fdaa : <installation> : <network> : <host> : 0 : 0 : <block> : <n>
//!          16 bits          16 bits     16 bits                    /112 per bridge
//! ```
//!
//! so a network has a /64 per host, with room for millions of machines,
//! and the address tells the host a machine runs on. Machines of one
//! network in different blocks reach each other through the host. The
//! installation's id is random, made once and kept in the database, so
//! installations on one host never share a bridge, a table or a prefix,
//! whatever their ranges. Addresses are never reused while a machine holds
//! them and are released when it is destroyed; a block with no machine
//! left goes back to the range.

use std::net::{Ipv4Addr, Ipv6Addr};

use hangar_runtime::NetworkAttachment;

/// Machines in one block (its hosts .2 to .254; .1 is the bridge).
pub const BLOCK_HOSTS: i64 = 253;

/// Network ids run from 1 to this (three hex digits of a bridge's name).
pub const MAX_NETWORKS: i64 = 0xfff;

/// The IPv4 range an installation draws its blocks from: `a.b.c.0/len` with
/// `len` between 16 and 24. Blocks are the /24s inside it (but the one whose
/// third octet is 0). Two hangards on one host need ranges that do not
/// overlap (the second refuses to start on a clash, see
/// [`crate::AgentConfig::check_host_addresses`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetRange {
    a: u8,
    b: u8,
    c: u8,
    len: u8,
    first: u8,
    last: u8,
}

impl Default for NetRange {
    fn default() -> Self {
        NetRange {
            a: 10,
            b: 231,
            c: 0,
            len: 16,
            first: 1,
            last: 254,
        }
    }
}

impl std::fmt::Display for NetRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}.0/{}", self.a, self.b, self.c, self.len)
    }
}

/// A `--network-range` that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRange(String);

impl std::str::FromStr for NetRange {
    type Err = BadRange;

    fn from_str(s: &str) -> Result<Self, BadRange> {
        let bad = || {
            BadRange(format!(
                "{s:?} is not an IPv4 range like 10.231.0.0/16 (prefix 16 to 24)"
            ))
        };
        let (addr, len) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let len: u32 = len.parse().map_err(|_| bad())?;
        if !(16..=24).contains(&len) {
            return Err(bad());
        }
        let [a, b, c, d] = addr.octets();
        let size = 1u32 << (24 - len);
        if d != 0 || u32::from(c) % size != 0 {
            return Err(BadRange(format!(
                "{s:?}: the address has bits set beyond the prefix"
            )));
        }
        let first = c.max(1);
        let last = (u32::from(c) + size - 1).min(254) as u8;
        if first > last {
            return Err(BadRange(format!("{s:?} holds no usable network")));
        }
        Ok(NetRange {
            a,
            b,
            c,
            len: len as u8,
            first,
            last,
        })
    }
}

impl NetRange {
    /// The first and last block (third octet) of the range.
    pub fn blocks(&self) -> (u8, u8) {
        (self.first, self.last)
    }

    /// Whether `ip` is in the range.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let [a, b, c, _] = ip.octets();
        let size = 1u32 << (24 - self.len);
        (a, b) == (self.a, self.b)
            && u32::from(c) >= u32::from(self.c)
            && u32::from(c) < u32::from(self.c) + size
    }
}

/// How an installation addresses its machines: its IPv4 range, its id and
/// this host's id (both part of every 6PN address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetPlan {
    /// The IPv4 range blocks come from.
    pub range: NetRange,
    /// The installation's id (random, kept in the database).
    pub installation: u16,
    /// This host's id within the installation.
    pub host: u16,
}

impl NetPlan {
    /// A machine's address: network `net`, `host` of block `block`.
    pub fn address(&self, net: u16, block: u8, host: u8) -> Address {
        Address {
            prefix: [self.range.a, self.range.b],
            installation: self.installation,
            host_id: self.host,
            net,
            block,
            host,
        }
    }

    /// The installation's 6PN prefix, `fdaa:<installation>::/32`.
    pub fn ipv6_prefix(&self) -> String {
        format!("fdaa:{:x}::/32", self.installation)
    }

    /// The bridge and gateway of a block.
    pub fn block(&self, net: u16, block: u8) -> Block {
        let gw = self.address(net, block, 1);
        Block {
            net,
            block,
            bridge: gw.bridge(),
            gateway4: gw.ipv4(),
            gateway6: gw.ipv6(),
        }
    }

    /// The prefix of the names of network `net`'s bridges.
    pub fn network_prefix(&self, net: u16) -> String {
        let b = hangar_net::bridge_name(self.installation, net, 0);
        b[..b.len() - 2].to_owned()
    }

    /// The host firewall for these blocks.
    pub fn firewall(&self, blocks: &[Block], outbound_nat: bool) -> hangar_net::firewall::Firewall {
        let mut fw = hangar_net::firewall::Firewall {
            installation: self.installation,
            ipv4_range: self.range.to_string(),
            ipv6_prefix: self.ipv6_prefix(),
            networks: Vec::new(),
            mesh: None,
            outbound_nat,
        };
        for b in blocks {
            fw.add_bridge(&self.network_prefix(b.net), &b.bridge, b.gateway6);
        }
        fw
    }
}

/// One block of a network on this host: its bridge and IPv6 gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// The network's id.
    pub net: u16,
    /// The block (the third octet of its /24).
    pub block: u8,
    /// Its bridge.
    pub bridge: String,
    /// Its IPv4 gateway.
    pub gateway4: Ipv4Addr,
    /// Its IPv6 gateway (where the internal DNS server answers).
    pub gateway6: Ipv6Addr,
}

impl Block {
    /// The block's bridge as the host makes it.
    pub fn bridge(&self) -> hangar_net::Bridge {
        hangar_net::Bridge {
            name: self.bridge.clone(),
            gateway4: self.gateway4,
            prefix4: 24,
            gateway6: self.gateway6,
            prefix6: 112,
        }
    }
}

/// A machine's addresses on its network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    /// The first two octets of the installation's range.
    pub prefix: [u8; 2],
    /// The installation.
    pub installation: u16,
    /// The host.
    pub host_id: u16,
    /// The network's id.
    pub net: u16,
    /// The block: the third octet of its /24.
    pub block: u8,
    /// The machine's index in the block (2..=254; 1 is the bridge).
    pub host: u8,
}

impl Address {
    /// The IPv4 address.
    pub fn ipv4(self) -> Ipv4Addr {
        let [a, b] = self.prefix;
        Ipv4Addr::new(a, b, self.block, self.host)
    }

    /// The private (6PN) IPv6 address.
    pub fn ipv6(self) -> Ipv6Addr {
        Ipv6Addr::new(
            0xfdaa,
            self.installation,
            self.net,
            self.host_id,
            0,
            0,
            u16::from(self.block),
            u16::from(self.host),
        )
    }

    /// The block's bridge.
    pub fn bridge(self) -> String {
        hangar_net::bridge_name(self.installation, self.net, self.block)
    }

    /// What the runtime needs to wire the machine in.
    pub fn attachment(self, dns: bool) -> NetworkAttachment {
        let gw = Address { host: 1, ..self };
        NetworkAttachment {
            bridge: self.bridge(),
            address4: self.ipv4(),
            gateway4: gw.ipv4(),
            prefix4: 24,
            address6: self.ipv6(),
            gateway6: gw.ipv6(),
            prefix6: 112,
            dns: if dns {
                vec![gw.ipv6().into()]
            } else {
                Vec::new()
            },
        }
    }
}

/// Blocks of the range that another interface of the host uses (another
/// installation, or anything else): `(block, interface)`.
pub fn foreign_blocks(plan: &NetPlan) -> Vec<(u8, String)> {
    let own = hangar_net::installation_prefix(plan.installation);
    hangar_net::ipv4_addresses()
        .unwrap_or_default()
        .into_iter()
        .filter(|(name, addr, _)| !name.starts_with(&own) && plan.range.contains(*addr))
        .map(|(name, addr, _)| (addr.octets()[2], name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;

    fn plan(range: &str) -> NetPlan {
        NetPlan {
            range: range.parse().unwrap(),
            installation: 0x3fa2,
            host: 1,
        }
    }

    #[test]
    fn networks_take_the_clusters_ids_unless_their_addresses_are_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let p = NetPlan {
            host: 3,
            ..plan("10.231.0.0/16")
        };
        store.adopt_network("default", 9).unwrap();
        let (a, _) = store.allocate_address("default", "m1", &p).unwrap();
        assert_eq!(a.ipv6().to_string(), "fdaa:3fa2:9:3::1:2");
        store.adopt_network("default", 9).unwrap();
        // In use: neither the name nor the id changes hands.
        let e = store.adopt_network("default", 4).unwrap_err();
        assert!(matches!(e, crate::AgentError::Conflict(_)), "{e}");
        assert!(store.adopt_network("fresh", 9).is_err());
        // Unused names and ids move.
        store.adopt_network("fresh", 4).unwrap();
        store.adopt_network("fresh", 5).unwrap();
        let (b, _) = store.allocate_address("fresh", "m2", &p).unwrap();
        assert_eq!(b.net, 5);
        store.set_installation_id(0x77).unwrap();
        assert_eq!(store.installation_id().unwrap(), 0x77);
    }

    #[test]
    fn addresses_are_unique_per_network_and_reused_only_when_free() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let p = plan("10.231.0.0/16");
        let (a, new) = store.allocate_address("default", "m1", &p).unwrap();
        assert!(new, "the network's first block");
        let (b, new) = store.allocate_address("default", "m2", &p).unwrap();
        assert!(!new);
        let (c, _) = store.allocate_address("other", "m3", &p).unwrap();
        assert_eq!((a.net, a.block, a.host), (1, 1, 2));
        assert_eq!((b.net, b.block, b.host), (1, 1, 3));
        assert_eq!((c.net, c.block, c.host), (2, 2, 2));
        assert_eq!(
            store.allocate_address("default", "m1", &p).unwrap().0,
            a,
            "stable"
        );
        assert_eq!(a.ipv4().to_string(), "10.231.1.2");
        assert_eq!(a.ipv6().to_string(), "fdaa:3fa2:1:1::1:2");
        assert_eq!(c.ipv6().to_string(), "fdaa:3fa2:2:1::2:2");
        assert_eq!(store.address_of("m2", &p).unwrap(), Some(b));
        assert_eq!(
            store
                .blocks_in_use(&p)
                .unwrap()
                .iter()
                .map(|b| b.bridge.as_str())
                .collect::<Vec<_>>(),
            vec!["hgr3fa200101", "hgr3fa200202"]
        );
        store.release_address("m1").unwrap();
        assert_eq!(store.address_of("m1", &p).unwrap(), None);
        // The freed address goes to the next machine; held ones never do.
        assert_eq!(store.allocate_address("default", "m4", &p).unwrap().0, a);
        let att = b.attachment(true);
        assert_eq!(att.bridge, "hgr3fa200101");
        assert_eq!(att.gateway4.to_string(), "10.231.1.1");
        assert_eq!(att.gateway6.to_string(), "fdaa:3fa2:1:1::1:1");
        assert_eq!(att.prefix6, 112);
        assert_eq!(att.dns, vec![std::net::IpAddr::from(att.gateway6)]);
    }

    #[test]
    fn a_network_grows_by_blocks_and_gives_them_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let p = plan("10.231.8.0/22");
        let mut opened = Vec::new();
        for n in 0..(BLOCK_HOSTS * 3 + 1) {
            let (a, new) = store
                .allocate_address("default", &format!("m{n}"), &p)
                .unwrap();
            if new {
                opened.push(a.block);
            }
        }
        assert_eq!(opened, vec![8, 9, 10, 11]);
        let last = store
            .address_of(&format!("m{}", BLOCK_HOSTS * 3), &p)
            .unwrap()
            .unwrap();
        assert_eq!(last.ipv4().to_string(), "10.231.11.2");
        assert_eq!(last.ipv6().to_string(), "fdaa:3fa2:1:1::b:2");
        let full = store.allocate_address("other", "x", &p).unwrap_err();
        assert!(full.to_string().contains("is full"), "{full}");
        // A block whose machines are all gone goes back to the range.
        for n in (BLOCK_HOSTS * 3)..(BLOCK_HOSTS * 3 + 1) {
            store.release_address(&format!("m{n}")).unwrap();
        }
        assert_eq!(store.network_blocks().unwrap(), vec![8, 9, 10]);
        let (a, new) = store.allocate_address("other", "x", &p).unwrap();
        assert!(new);
        assert_eq!((a.net, a.block), (2, 11));
    }

    #[test]
    fn ranges_parse() {
        let r: NetRange = "10.231.0.0/16".parse().unwrap();
        assert_eq!(r, NetRange::default());
        assert!(r.contains(Ipv4Addr::new(10, 231, 200, 7)));
        assert!(!r.contains(Ipv4Addr::new(10, 232, 0, 7)));
        let r: NetRange = "10.231.0.0/22".parse().unwrap();
        assert_eq!((r.first, r.last), (1, 3));
        assert!(!r.contains(Ipv4Addr::new(10, 231, 4, 1)));
        assert_eq!(r.to_string(), "10.231.0.0/22");
        let r: NetRange = "192.168.7.0/24".parse().unwrap();
        assert_eq!((r.a, r.b, r.first, r.last), (192, 168, 7, 7));
        for bad in [
            "10.231.0.0",
            "10.231.0.0/8",
            "10.231.0.0/25",
            "10.231.1.0/22",
            "10.231.0.0/24",
            "x/16",
        ] {
            assert!(bad.parse::<NetRange>().is_err(), "{bad}");
        }
    }
}
