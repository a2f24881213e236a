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
use rusqlite::{OptionalExtension, params};

use crate::AgentError;
use crate::store::{Store, db};

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

impl std::str::FromStr for NetRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an IPv4 range like 10.231.0.0/16 (prefix 16 to 24)");
        let (addr, len) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let len: u32 = len.parse().map_err(|_| bad())?;
        if !(16..=24).contains(&len) {
            return Err(bad());
        }
        let [a, b, c, d] = addr.octets();
        let size = 1u32 << (24 - len);
        if d != 0 || u32::from(c) % size != 0 {
            return Err(format!("{s:?}: the address has bits set beyond the prefix"));
        }
        let first = c.max(1);
        let last = (u32::from(c) + size - 1).min(254) as u8;
        if first > last {
            return Err(format!("{s:?} holds no usable network"));
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
    /// Its IPv6 gateway (where the internal DNS server answers).
    pub gateway6: Ipv6Addr,
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

impl Store {
    /// The installation's id: made (random, never 0) on first use and kept.
    pub fn installation_id(&self) -> Result<u16, AgentError> {
        let conn = self.conn();
        let candidate = rand::random_range(1..=u16::MAX);
        conn.execute(
            "INSERT OR IGNORE INTO settings (key, value) VALUES ('installation', ?1)",
            params![candidate.to_string()],
        )
        .map_err(db)?;
        let v: String = conn
            .query_row(
                "SELECT value FROM settings WHERE key = 'installation'",
                [],
                |r| r.get(0),
            )
            .map_err(db)?;
        v.parse()
            .map_err(|_| AgentError::Internal(format!("bad installation id {v:?}")))
    }

    /// The id of network `name`, made on first use (the lowest free one).
    fn network_id(tx: &rusqlite::Transaction<'_>, name: &str) -> Result<u16, AgentError> {
        if let Some(i) = tx
            .query_row(
                "SELECT idx FROM networks WHERE name = ?1",
                params![name],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map_err(db)?
        {
            return Ok(i as u16);
        }
        let used = ids(tx, "SELECT idx FROM networks ORDER BY idx", params![])?;
        let idx = (1..=MAX_NETWORKS)
            .find(|i| used.binary_search(i).is_err())
            .ok_or_else(|| {
                AgentError::Unprocessable(format!(
                    "this installation has no room for another network (it holds {MAX_NETWORKS})"
                ))
            })?;
        tx.execute(
            "INSERT INTO networks (name, idx) VALUES (?1, ?2)",
            params![name, idx],
        )
        .map_err(db)?;
        Ok(idx as u16)
    }

    /// Gives `machine` an address on `network` (the one it has, if any).
    /// Returns the address and whether it opened a new block.
    pub fn allocate_address(
        &self,
        network: &str,
        machine: &str,
        plan: &NetPlan,
    ) -> Result<(Address, bool), AgentError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db)?;
        let a = Self::allocate_in(&tx, network, machine, plan, &|_| true)?;
        tx.commit().map_err(db)?;
        Ok(a)
    }

    /// [`Store::allocate_address`] inside a transaction; a new block must
    /// pass `block_free` (no other interface of the host uses it).
    pub(crate) fn allocate_in(
        tx: &rusqlite::Transaction<'_>,
        network: &str,
        machine: &str,
        plan: &NetPlan,
        block_free: &dyn Fn(u8) -> bool,
    ) -> Result<(Address, bool), AgentError> {
        let net = Self::network_id(tx, network)?;
        if let Some((block, host)) = tx
            .query_row(
                "SELECT block, host FROM ip_allocations WHERE machine_id = ?1",
                params![machine],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
            )
            .optional()
            .map_err(db)?
        {
            return Ok((plan.address(net, block as u8, host as u8), false));
        }
        // The lowest free host of the network's blocks, in order.
        let blocks = ids(
            tx,
            "SELECT block FROM network_blocks WHERE network = ?1 ORDER BY block",
            params![network],
        )?;
        for block in blocks {
            let used = ids(
                tx,
                "SELECT host FROM ip_allocations WHERE block = ?1 ORDER BY host",
                params![block],
            )?;
            if let Some(host) = (2..=BLOCK_HOSTS + 1).find(|h| used.binary_search(h).is_err()) {
                insert_allocation(tx, block, host, network, machine)?;
                return Ok((plan.address(net, block as u8, host as u8), false));
            }
        }
        // A new block: the lowest of the range that is free here.
        let taken = ids(
            tx,
            "SELECT block FROM network_blocks ORDER BY block",
            params![],
        )?;
        let (first, last) = plan.range.blocks();
        let block = (i64::from(first)..=i64::from(last))
            .filter(|b| taken.binary_search(b).is_err())
            .find(|b| block_free(*b as u8))
            .ok_or_else(|| {
                AgentError::InsufficientCapacity(format!(
                    "the installation's network range {} is full ({} blocks of {BLOCK_HOSTS} machines); give hangard a wider --network-range",
                    plan.range,
                    taken.len()
                ))
            })?;
        tx.execute(
            "INSERT INTO network_blocks (block, network) VALUES (?1, ?2)",
            params![block, network],
        )
        .map_err(db)?;
        insert_allocation(tx, block, 2, network, machine)?;
        Ok((plan.address(net, block as u8, 2), true))
    }

    /// The address `machine` holds, if any.
    pub fn address_of(&self, machine: &str, plan: &NetPlan) -> Result<Option<Address>, AgentError> {
        self.conn()
            .query_row(
                "SELECT n.idx, a.block, a.host FROM ip_allocations a JOIN networks n ON n.name = a.network WHERE a.machine_id = ?1",
                params![machine],
                |r| {
                    Ok(plan.address(
                        r.get::<_, i64>(0)? as u16,
                        r.get::<_, i64>(1)? as u8,
                        r.get::<_, i64>(2)? as u8,
                    ))
                },
            )
            .optional()
            .map_err(db)
    }

    /// The blocks that have machines on them.
    pub fn blocks_in_use(&self, plan: &NetPlan) -> Result<Vec<Block>, AgentError> {
        let conn = self.conn();
        let mut st = conn
            .prepare(
                "SELECT DISTINCT n.idx, a.block FROM ip_allocations a
                 JOIN networks n ON n.name = a.network ORDER BY n.idx, a.block",
            )
            .map_err(db)?;
        let rows = st
            .query_map([], |r| {
                Ok(plan.block(r.get::<_, i64>(0)? as u16, r.get::<_, i64>(1)? as u8))
            })
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }

    /// Blocks held by a network (with or without machines).
    pub fn network_blocks(&self) -> Result<Vec<u8>, AgentError> {
        let conn = self.conn();
        let tx = conn.unchecked_transaction().map_err(db)?;
        let v = ids(
            &tx,
            "SELECT block FROM network_blocks ORDER BY block",
            params![],
        )?;
        Ok(v.into_iter().map(|b| b as u8).collect())
    }

    /// The network (id) a block belongs to.
    pub fn network_of_block(&self, block: u8) -> Result<Option<u16>, AgentError> {
        self.conn()
            .query_row(
                "SELECT n.idx FROM network_blocks b JOIN networks n ON n.name = b.network WHERE b.block = ?1",
                params![i64::from(block)],
                |r| r.get::<_, i64>(0).map(|i| i as u16),
            )
            .optional()
            .map_err(db)
    }

    /// The machines on network `net` (not destroyed), as DNS sees them.
    pub fn dns_entries(&self, net: u16) -> Result<Vec<hangar_net::dns::Entry>, AgentError> {
        let conn = self.conn();
        let mut st = conn
            .prepare(
                "SELECT m.app_name, m.id, m.region, m.state, m.private_ip, \
                 json_extract(m.config, '$.metadata.fly_process_group') \
                 FROM machines m JOIN ip_allocations a ON a.machine_id = m.id \
                 JOIN networks n ON n.name = a.network \
                 WHERE n.idx = ?1 AND m.state != 'destroyed' ORDER BY m.created_at",
            )
            .map_err(db)?;
        let rows = st
            .query_map(params![i64::from(net)], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, Option<String>>(5)?,
                ))
            })
            .map_err(db)?;
        let mut out = Vec::new();
        for row in rows {
            let (app, id, region, state, ip, group) = row.map_err(db)?;
            let Ok(addr) = ip.parse() else { continue };
            out.push(hangar_net::dns::Entry {
                app,
                id,
                region,
                started: state == "started",
                addr,
                process_group: group,
            });
        }
        Ok(out)
    }

    /// Records `machine`'s private address.
    pub fn set_private_ip(&self, machine: &str, ip: &str) -> Result<(), AgentError> {
        self.conn()
            .execute(
                "UPDATE machines SET private_ip = ?2 WHERE id = ?1",
                params![machine, ip],
            )
            .map_err(db)?;
        Ok(())
    }

    /// Frees `machine`'s address (and its block, when that was the last
    /// machine in it).
    pub fn release_address(&self, machine: &str) -> Result<(), AgentError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db)?;
        tx.execute(
            "DELETE FROM ip_allocations WHERE machine_id = ?1",
            params![machine],
        )
        .map_err(db)?;
        release_empty_blocks(&tx)?;
        tx.commit().map_err(db)
    }

    /// Frees addresses held for machines that do not exist or are
    /// destroyed (left by a crash), and blocks left empty; returns how many
    /// addresses.
    pub fn release_stray_addresses(&self) -> Result<usize, AgentError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db)?;
        let n = tx
            .execute(
                "DELETE FROM ip_allocations WHERE machine_id NOT IN
                    (SELECT id FROM machines WHERE state != 'destroyed')",
                [],
            )
            .map_err(db)?;
        release_empty_blocks(&tx)?;
        tx.commit().map_err(db)?;
        Ok(n)
    }
}

fn ids(
    tx: &rusqlite::Transaction<'_>,
    sql: &str,
    p: impl rusqlite::Params,
) -> Result<Vec<i64>, AgentError> {
    let mut st = tx.prepare(sql).map_err(db)?;
    let rows = st.query_map(p, |r| r.get(0)).map_err(db)?;
    rows.collect::<Result<_, _>>().map_err(db)
}

fn insert_allocation(
    tx: &rusqlite::Transaction<'_>,
    block: i64,
    host: i64,
    network: &str,
    machine: &str,
) -> Result<(), AgentError> {
    tx.execute(
        "INSERT INTO ip_allocations (block, host, network, machine_id) VALUES (?1, ?2, ?3, ?4)",
        params![block, host, network, machine],
    )
    .map_err(db)?;
    Ok(())
}

fn release_empty_blocks(tx: &rusqlite::Transaction<'_>) -> Result<(), AgentError> {
    tx.execute(
        "DELETE FROM network_blocks WHERE block NOT IN (SELECT block FROM ip_allocations)",
        [],
    )
    .map_err(db)?;
    Ok(())
}

/// The internal DNS server reads machines from the state store: a machine
/// sees the machines of its own network, found by the gateway it asked.
impl hangar_net::dns::Directory for Store {
    fn machines(&self, gateway: std::net::IpAddr) -> Vec<hangar_net::dns::Entry> {
        let net = match gateway {
            std::net::IpAddr::V6(a) => a.segments()[2],
            std::net::IpAddr::V4(a) => match self.network_of_block(a.octets()[2]) {
                Ok(Some(n)) => n,
                _ => return Vec::new(),
            },
        };
        self.dns_entries(net).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "internal DNS cannot read machines");
            Vec::new()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(range: &str) -> NetPlan {
        NetPlan {
            range: range.parse().unwrap(),
            installation: 0x3fa2,
            host: 1,
        }
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
