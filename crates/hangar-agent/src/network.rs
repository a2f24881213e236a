//! Private networking: which network a machine is on and its addresses.
//!
//! Each app `network` name (Fly's per-org 6PN, `default` unless the app
//! asked for another) is one isolated network: a host bridge of its own
//! (`hangarN`), an IPv4 /24 (`10.231.N.0/24` in the default range) and an
//! IPv6 /64 (`fdaa:0:N::/64`, the shape of Fly's 6PN addresses), where `N`
//! is the third octet of a /24 inside the installation's [`NetRange`]. A
//! machine gets one address of each when it is created; the IPv6 one is
//! its `private_ip` and `FLY_PRIVATE_IP`. Addresses are never reused while
//! a machine holds them and are released when it is destroyed.

use std::net::{Ipv4Addr, Ipv6Addr};

use hangar_runtime::NetworkAttachment;
use rusqlite::{OptionalExtension, params};

use crate::AgentError;
use crate::store::{Store, db};

/// Most machines on one network.
pub const MAX_HOSTS: i64 = 253;

/// The IPv4 range an installation draws its networks' /24s from: `a.b.c.0/len`
/// with `len` between 16 and 24. Networks are the /24s inside it (but the
/// one whose third octet is 0), and their third octet names them: bridge
/// `hangarN`, IPv6 `fdaa:0:N::/64`. Two hangards on one host need ranges
/// that do not overlap.
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
    /// The first and last network (third octet) of the range.
    pub fn networks(&self) -> (u8, u8) {
        (self.first, self.last)
    }

    /// The host firewall for this range.
    pub fn firewall(&self, outbound_nat: bool) -> hangar_net::firewall::Firewall {
        hangar_net::firewall::Firewall {
            ipv4_range: self.to_string(),
            first: self.first,
            last: self.last,
            outbound_nat,
        }
    }

    /// The gateway (bridge) address of network `net`, IPv6: where its
    /// machines find the internal DNS server.
    pub fn gateway6(&self, net: u8) -> Ipv6Addr {
        Address {
            prefix: [self.a, self.b],
            net,
            host: 1,
        }
        .ipv6()
    }
}

/// A machine's addresses on its network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    /// The first two octets of the installation's range.
    pub prefix: [u8; 2],
    /// The network: the third octet of its /24.
    pub net: u8,
    /// The machine's index in it (2..=254; 1 is the bridge).
    pub host: u8,
}

impl Address {
    /// The IPv4 address.
    pub fn ipv4(self) -> Ipv4Addr {
        let [a, b] = self.prefix;
        Ipv4Addr::new(a, b, self.net, self.host)
    }

    /// The private IPv6 address.
    pub fn ipv6(self) -> Ipv6Addr {
        Ipv6Addr::new(
            0xfdaa,
            0,
            u16::from(self.net),
            0,
            0,
            0,
            0,
            u16::from(self.host),
        )
    }

    /// What the runtime needs to wire the machine in.
    pub fn attachment(self, dns: bool) -> NetworkAttachment {
        let gw = Address { host: 1, ..self };
        NetworkAttachment {
            bridge: format!("hangar{}", self.net),
            address4: self.ipv4(),
            gateway4: gw.ipv4(),
            prefix4: 24,
            address6: self.ipv6(),
            gateway6: gw.ipv6(),
            prefix6: 64,
            dns: if dns {
                vec![gw.ipv6().into()]
            } else {
                Vec::new()
            },
        }
    }
}

impl Store {
    /// The index of network `name`, made on first use.
    fn network_index(
        tx: &rusqlite::Transaction<'_>,
        name: &str,
        range: &NetRange,
    ) -> Result<u8, AgentError> {
        if let Some(i) = tx
            .query_row(
                "SELECT idx FROM networks WHERE name = ?1",
                params![name],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map_err(db)?
        {
            return Ok(i as u8);
        }
        let used: Vec<i64> = {
            let mut st = tx
                .prepare("SELECT idx FROM networks ORDER BY idx")
                .map_err(db)?;
            let rows = st.query_map([], |r| r.get(0)).map_err(db)?;
            rows.collect::<Result<_, _>>().map_err(db)?
        };
        let idx = (i64::from(range.first)..=i64::from(range.last))
            .find(|i| used.binary_search(i).is_err())
            .ok_or_else(|| {
                AgentError::Unprocessable(format!(
                    "this installation has no room for another network (its range holds {})",
                    range.last - range.first + 1
                ))
            })?;
        tx.execute(
            "INSERT INTO networks (name, idx) VALUES (?1, ?2)",
            params![name, idx],
        )
        .map_err(db)?;
        Ok(idx as u8)
    }

    /// Gives `machine` an address on `network` (the one it has, if any).
    pub fn allocate_address(
        &self,
        network: &str,
        machine: &str,
        range: &NetRange,
    ) -> Result<Address, AgentError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db)?;
        let a = Self::allocate_in(&tx, network, machine, range)?;
        tx.commit().map_err(db)?;
        Ok(a)
    }

    /// [`Store::allocate_address`] inside a transaction.
    pub(crate) fn allocate_in(
        tx: &rusqlite::Transaction<'_>,
        network: &str,
        machine: &str,
        range: &NetRange,
    ) -> Result<Address, AgentError> {
        let net = Self::network_index(tx, network, range)?;
        let prefix = [range.a, range.b];
        if let Some(host) = tx
            .query_row(
                "SELECT host FROM ip_allocations WHERE machine_id = ?1",
                params![machine],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map_err(db)?
        {
            return Ok(Address {
                prefix,
                net,
                host: host as u8,
            });
        }
        let used: Vec<i64> = {
            let mut st = tx
                .prepare("SELECT host FROM ip_allocations WHERE network = ?1 ORDER BY host")
                .map_err(db)?;
            let rows = st.query_map(params![network], |r| r.get(0)).map_err(db)?;
            rows.collect::<Result<_, _>>().map_err(db)?
        };
        let host = (2..=MAX_HOSTS + 1)
            .find(|h| used.binary_search(h).is_err())
            .ok_or_else(|| {
                AgentError::Unprocessable(format!(
                    "network {network} is full ({MAX_HOSTS} machines)"
                ))
            })?;
        tx.execute(
            "INSERT INTO ip_allocations (network, host, machine_id) VALUES (?1, ?2, ?3)",
            params![network, host, machine],
        )
        .map_err(db)?;
        Ok(Address {
            prefix,
            net,
            host: host as u8,
        })
    }

    /// The address `machine` holds, if any.
    pub fn address_of(
        &self,
        machine: &str,
        range: &NetRange,
    ) -> Result<Option<Address>, AgentError> {
        self.conn()
            .query_row(
                "SELECT n.idx, a.host FROM ip_allocations a JOIN networks n ON n.name = a.network WHERE a.machine_id = ?1",
                params![machine],
                |r| {
                    Ok(Address {
                        prefix: [range.a, range.b],
                        net: r.get::<_, i64>(0)? as u8,
                        host: r.get::<_, i64>(1)? as u8,
                    })
                },
            )
            .optional()
            .map_err(db)
    }

    /// The networks (by index) that have machines on them.
    pub fn networks_in_use(&self) -> Result<Vec<u8>, AgentError> {
        let conn = self.conn();
        let mut st = conn
            .prepare(
                "SELECT DISTINCT n.idx FROM networks n JOIN ip_allocations a ON a.network = n.name ORDER BY n.idx",
            )
            .map_err(db)?;
        let rows = st
            .query_map([], |r| r.get::<_, i64>(0).map(|i| i as u8))
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }

    /// The machines on network `net` (not destroyed), as DNS sees them.
    pub fn dns_entries(&self, net: u8) -> Result<Vec<hangar_net::dns::Entry>, AgentError> {
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
                process_group: group,
                addr,
                started: state == "started",
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

    /// Frees `machine`'s address.
    pub fn release_address(&self, machine: &str) -> Result<(), AgentError> {
        self.conn()
            .execute(
                "DELETE FROM ip_allocations WHERE machine_id = ?1",
                params![machine],
            )
            .map_err(db)?;
        Ok(())
    }
}

/// The internal DNS server reads machines from the state store: a machine
/// sees the machines of its own network, found by the gateway it asked.
impl hangar_net::dns::Directory for Store {
    fn machines(&self, gateway: std::net::IpAddr) -> Vec<hangar_net::dns::Entry> {
        let net = match gateway {
            std::net::IpAddr::V6(a) => a.segments()[2],
            std::net::IpAddr::V4(a) => u16::from(a.octets()[2]),
        };
        let Ok(net) = u8::try_from(net) else {
            return Vec::new();
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

    #[test]
    fn addresses_are_unique_per_network_and_reused_only_when_free() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let r = NetRange::default();
        let a = store.allocate_address("default", "m1", &r).unwrap();
        let b = store.allocate_address("default", "m2", &r).unwrap();
        let c = store.allocate_address("other", "m3", &r).unwrap();
        assert_eq!((a.net, a.host), (1, 2));
        assert_eq!((b.net, b.host), (1, 3));
        assert_eq!((c.net, c.host), (2, 2));
        assert_eq!(
            store.allocate_address("default", "m1", &r).unwrap(),
            a,
            "stable"
        );
        assert_eq!(a.ipv4().to_string(), "10.231.1.2");
        assert_eq!(a.ipv6().to_string(), "fdaa:0:1::2");
        assert_eq!(store.address_of("m2", &r).unwrap(), Some(b));
        assert_eq!(store.networks_in_use().unwrap(), vec![1, 2]);
        store.release_address("m1").unwrap();
        assert_eq!(store.address_of("m1", &r).unwrap(), None);
        // The freed address goes to the next machine; held ones never do.
        assert_eq!(store.allocate_address("default", "m4", &r).unwrap(), a);
        let att = b.attachment(true);
        assert_eq!(att.bridge, "hangar1");
        assert_eq!(att.gateway4.to_string(), "10.231.1.1");
        assert_eq!(att.gateway6.to_string(), "fdaa:0:1::1");
        assert_eq!(att.dns, vec![std::net::IpAddr::from(att.gateway6)]);
    }

    #[test]
    fn networks_fill_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let r: NetRange = "10.231.8.0/22".parse().unwrap();
        for n in 0..4 {
            store
                .allocate_address(&format!("n{n}"), &format!("m{n}"), &r)
                .unwrap();
        }
        let last = store.address_of("m3", &r).unwrap().unwrap();
        assert_eq!(last.net, 11);
        assert_eq!(last.ipv4().to_string(), "10.231.11.2");
        let full = store.allocate_address("n4", "m4", &r).unwrap_err();
        assert!(full.to_string().contains("no room"), "{full}");
    }

    #[test]
    fn ranges_parse() {
        let r: NetRange = "10.231.0.0/16".parse().unwrap();
        assert_eq!(r, NetRange::default());
        let r: NetRange = "10.231.0.0/22".parse().unwrap();
        assert_eq!((r.first, r.last), (1, 3));
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
