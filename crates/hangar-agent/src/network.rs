//! Private networking: which network a machine is on and its addresses.
//!
//! Each app `network` name (Fly's per-org 6PN, `default` unless the app
//! asked for another) is one isolated network: a host bridge of its own,
//! an IPv4 /24 inside `10.231.0.0/16` and an IPv6 /64 inside
//! `fdaa:0::/32`, the shape of Fly's 6PN addresses. A machine gets one
//! address of each when it is created; the IPv6 one is its `private_ip` and
//! `FLY_PRIVATE_IP`. Addresses are never reused while a machine holds them
//! and are released when it is destroyed.

use std::net::{Ipv4Addr, Ipv6Addr};

use hangar_runtime::NetworkAttachment;
use rusqlite::{OptionalExtension, params};

use crate::AgentError;
use crate::store::{Store, db};

/// Most networks on one host.
pub const MAX_NETWORKS: i64 = 254;
/// Most machines on one network.
pub const MAX_HOSTS: i64 = 253;

/// A machine's addresses on its network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    /// The network's index (1..=254).
    pub net: u8,
    /// The machine's index in it (2..=254; 1 is the bridge).
    pub host: u8,
}

impl Address {
    /// The IPv4 address.
    pub fn ipv4(self) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.net, self.host)
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
        let gw = Address {
            net: self.net,
            host: 1,
        };
        NetworkAttachment {
            bridge: format!("hangar{}", self.net),
            address4: self.ipv4(),
            gateway4: gw.ipv4(),
            prefix4: 24,
            address6: self.ipv6(),
            gateway6: gw.ipv6(),
            prefix6: 64,
            dns: if dns {
                vec![gw.ipv4().into()]
            } else {
                Vec::new()
            },
        }
    }
}

impl Store {
    /// The index of network `name`, made on first use.
    fn network_index(tx: &rusqlite::Transaction<'_>, name: &str) -> Result<u8, AgentError> {
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
        let idx = (1..=MAX_NETWORKS)
            .find(|i| used.binary_search(i).is_err())
            .ok_or_else(|| {
                AgentError::Unprocessable(format!(
                    "this host has no room for another network (at most {MAX_NETWORKS})"
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
    pub fn allocate_address(&self, network: &str, machine: &str) -> Result<Address, AgentError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db)?;
        let net = Self::network_index(&tx, network)?;
        if let Some(host) = tx
            .query_row(
                "SELECT host FROM ip_allocations WHERE machine_id = ?1",
                params![machine],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map_err(db)?
        {
            tx.commit().map_err(db)?;
            return Ok(Address {
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
        tx.commit().map_err(db)?;
        Ok(Address {
            net,
            host: host as u8,
        })
    }

    /// The address `machine` holds, if any.
    pub fn address_of(&self, machine: &str) -> Result<Option<Address>, AgentError> {
        self.conn()
            .query_row(
                "SELECT n.idx, a.host FROM ip_allocations a JOIN networks n ON n.name = a.network WHERE a.machine_id = ?1",
                params![machine],
                |r| {
                    Ok(Address {
                        net: r.get::<_, i64>(0)? as u8,
                        host: r.get::<_, i64>(1)? as u8,
                    })
                },
            )
            .optional()
            .map_err(db)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_unique_per_network_and_reused_only_when_free() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let a = store.allocate_address("default", "m1").unwrap();
        let b = store.allocate_address("default", "m2").unwrap();
        let c = store.allocate_address("other", "m3").unwrap();
        assert_eq!((a.net, a.host), (1, 2));
        assert_eq!((b.net, b.host), (1, 3));
        assert_eq!((c.net, c.host), (2, 2));
        assert_eq!(
            store.allocate_address("default", "m1").unwrap(),
            a,
            "stable"
        );
        assert_eq!(a.ipv4().to_string(), "10.231.1.2");
        assert_eq!(a.ipv6().to_string(), "fdaa:0:1::2");
        assert_eq!(store.address_of("m2").unwrap(), Some(b));
        store.release_address("m1").unwrap();
        assert_eq!(store.address_of("m1").unwrap(), None);
        // The freed address goes to the next machine; held ones never do.
        assert_eq!(store.allocate_address("default", "m4").unwrap(), a);
        let att = b.attachment(true);
        assert_eq!(att.bridge, "hangar1");
        assert_eq!(att.gateway4.to_string(), "10.231.1.1");
        assert_eq!(att.gateway6.to_string(), "fdaa:0:1::1");
        assert_eq!(att.dns, vec![std::net::IpAddr::from(att.gateway4)]);
    }

    #[test]
    fn networks_fill_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        for n in 0..5 {
            store
                .allocate_address(&format!("n{n}"), &format!("m{n}"))
                .unwrap();
        }
        assert_eq!(store.address_of("m4").unwrap().unwrap().net, 5);
    }
}
