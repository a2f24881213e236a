//! Networks, their blocks and machines' addresses in SQLite; the internal
//! DNS server's view of them.

use rusqlite::{OptionalExtension, params};

use super::{Store, db, exec_cached};
use crate::AgentError;
use crate::network::{Address, BLOCK_HOSTS, Block, MAX_NETWORKS, NetPlan};

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

    /// The networks with their ids.
    pub fn networks(&self) -> Result<Vec<(String, u16)>, AgentError> {
        let conn = self.conn();
        let mut st = conn
            .prepare("SELECT name, idx FROM networks ORDER BY idx")
            .map_err(db)?;
        let rows = st
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u16))
            })
            .map_err(db)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db)?;
        Ok(rows)
    }

    /// Takes the cluster's installation id for this host's addresses (a
    /// host that joins a cluster addresses its machines in the cluster's
    /// 6PN prefix; machines it already has follow at the next open).
    pub fn set_installation_id(&self, id: u16) -> Result<(), AgentError> {
        self.conn()
            .execute(
                "INSERT INTO settings (key, value) VALUES ('installation', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![id.to_string()],
            )
            .map_err(db)?;
        Ok(())
    }

    /// Gives network `name` the id `idx` the cluster gave it. A network of
    /// this host that holds addresses keeps its id: if it differs from the
    /// cluster's (a host that had machines before it joined), this is a
    /// conflict to resolve by hand.
    pub fn adopt_network(&self, name: &str, idx: u16) -> Result<(), AgentError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db)?;
        let current: Option<i64> = tx
            .query_row(
                "SELECT idx FROM networks WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)?;
        if current == Some(i64::from(idx)) {
            return Ok(());
        }
        let holder: Option<String> = tx
            .query_row(
                "SELECT name FROM networks WHERE idx = ?1",
                params![i64::from(idx)],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)?;
        for n in [Some(name.to_owned()), holder].into_iter().flatten() {
            let used: i64 = tx
                .query_row(
                    "SELECT COUNT(*) FROM ip_allocations WHERE network = ?1",
                    params![n],
                    |r| r.get(0),
                )
                .map_err(db)?;
            if used > 0 {
                return Err(AgentError::Conflict(format!(
                    "network {n:?} of this host has machines under another id than the cluster gives network {name:?} ({idx}): a host joins a cluster before it runs machines of that network"
                )));
            }
            tx.execute("DELETE FROM networks WHERE name = ?1", params![n])
                .map_err(db)?;
        }
        tx.execute(
            "INSERT INTO networks (name, idx) VALUES (?1, ?2)",
            params![name, i64::from(idx)],
        )
        .map_err(db)?;
        tx.commit().map_err(db)
    }

    /// The id of network `name`, made on first use (the lowest free one).
    pub(crate) fn network_id(
        tx: &rusqlite::Transaction<'_>,
        name: &str,
    ) -> Result<u16, AgentError> {
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
        // The lowest free host of the network's blocks with room, in order
        // (a block's `used` is kept by triggers; a block that turns out
        // full all the same is passed over).
        let blocks = ids(
            tx,
            "SELECT block FROM network_blocks WHERE network = ?1 AND used < ?2 ORDER BY block",
            params![network, BLOCK_HOSTS],
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
    let mut st = tx.prepare_cached(sql).map_err(db)?;
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
    exec_cached(
        tx,
        "INSERT INTO ip_allocations (block, host, network, machine_id) VALUES (?1, ?2, ?3, ?4)",
        params![block, host, network, machine],
    )
    .map_err(db)?;
    Ok(())
}

fn release_empty_blocks(tx: &rusqlite::Transaction<'_>) -> Result<(), AgentError> {
    tx.execute(
        "DELETE FROM network_blocks WHERE NOT EXISTS
            (SELECT 1 FROM ip_allocations a WHERE a.block = network_blocks.block)",
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
