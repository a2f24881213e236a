//! The agent's state in an embedded SQLite database (WAL mode).
//!
//! Every write is one transaction: a machine's state change and the events
//! it produced commit together, before the API answers. Schema migrations are
//! the numbered files in `migrations/`, applied in order and recorded in
//! `PRAGMA user_version`.
//!
//! The connection sits behind a mutex; every statement is short (indexed
//! lookups and single-row writes), so callers hold it for microseconds.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::Connection;

use crate::AgentError;

mod apps;
mod cluster;
pub(crate) mod ips;
mod machines;
mod network;
mod releases;
pub(crate) mod secrets;
pub(crate) mod volumes;

pub use apps::{AppRecord, TokenRow};
pub use cluster::CatalogChange;
pub use machines::{
    EventRow, LeaseRow, MachineBrief, MachineRecord, MachineRev, MachineRow, NetworkSlot, NewEvent,
    NewVersion,
};
pub use releases::{ReleaseEvent, ReleaseRow};

const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/0001_init.sql"),
    include_str!("../../migrations/0002_leases_tokens.sql"),
    include_str!("../../migrations/0003_schedules.sql"),
    include_str!("../../migrations/0004_secrets.sql"),
    include_str!("../../migrations/0005_volumes.sql"),
    include_str!("../../migrations/0006_networks.sql"),
    include_str!("../../migrations/0007_ip_assignments.sql"),
    include_str!("../../migrations/0008_token_owners.sql"),
    include_str!("../../migrations/0009_network_blocks.sql"),
    include_str!("../../migrations/0010_releases.sql"),
    include_str!("../../migrations/0011_cluster.sql"),
    include_str!("../../migrations/0012_release_hosts.sql"),
    include_str!("../../migrations/0013_machine_rev.sql"),
    include_str!("../../migrations/0014_block_usage.sql"),
];

/// Runs `sql` through the connection's statement cache (parsing a
/// statement costs more than running most of ours).
pub(crate) fn exec_cached(
    conn: &Connection,
    sql: &str,
    p: impl rusqlite::Params,
) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(p)
}

/// The database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    /// The connection's `total_changes` as of the last time it was let go:
    /// [`Store::changes`] reads it without taking the connection.
    changes: Arc<AtomicU64>,
    /// In a cluster: catalogue changes go to the outbox too.
    clustered: Arc<std::sync::atomic::AtomicBool>,
}

/// The connection, held: when let go, it records how many rows it has
/// changed so far.
pub(crate) struct Conn<'a> {
    guard: MutexGuard<'a, Connection>,
    changes: &'a AtomicU64,
    /// When it was taken, and its `total_changes` then: how long it was
    /// held, as a read or (rows changed) a write.
    since: std::time::Instant,
    before: u64,
}

/// `hangar_database_duration_seconds` for SQLite: reads, writes, waits.
struct Timings {
    read: hangar_metrics::Histogram,
    write: hangar_metrics::Histogram,
    wait: hangar_metrics::Histogram,
}

fn timings() -> &'static Timings {
    static T: std::sync::OnceLock<Timings> = std::sync::OnceLock::new();
    T.get_or_init(|| {
        let m = hangar_metrics::get();
        Timings {
            read: m.database("sqlite", "read"),
            write: m.database("sqlite", "write"),
            wait: m.database("sqlite", "lock_wait"),
        }
    })
}

impl std::ops::Deref for Conn<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.guard
    }
}

impl std::ops::DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.guard
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        let total = self.guard.total_changes();
        self.changes.store(total, Ordering::Release);
        let t = timings();
        let held = if total != self.before {
            &t.write
        } else {
            &t.read
        };
        held.observe(self.since.elapsed().as_secs_f64());
    }
}

pub(crate) fn db(e: rusqlite::Error) -> AgentError {
    AgentError::Database(e)
}

pub(crate) fn json_err(e: serde_json::Error) -> AgentError {
    AgentError::StoredJson(e)
}

/// Current time, RFC 3339 to the second, as Fly formats it.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Current time in Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Store {
    /// Opens (creating) the database at `path` and migrates it.
    pub fn open(path: &Path) -> Result<Store, AgentError> {
        let conn = Connection::open(path).map_err(db)?;
        // The hot reads keep their prepared statements.
        conn.set_prepared_statement_cache_capacity(64);
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA foreign_keys = ON;
             PRAGMA busy_timeout = 5000;",
        )
        .map_err(db)?;
        let store = Store {
            conn: Arc::new(Mutex::new(conn)),
            changes: Arc::default(),
            clustered: Arc::default(),
        };
        store.migrate()?;
        Ok(store)
    }

    /// A number that changes whenever anything is written (rows changed
    /// through this store's connection, which is the only writer): readers
    /// that cache what they read compare it.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    pub(crate) fn conn(&self) -> Conn<'_> {
        let asked = std::time::Instant::now();
        let guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let since = std::time::Instant::now();
        timings()
            .wait
            .observe(since.duration_since(asked).as_secs_f64());
        Conn {
            before: guard.total_changes(),
            guard,
            changes: &self.changes,
            since,
        }
    }

    fn migrate(&self) -> Result<(), AgentError> {
        let mut conn = self.conn();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(db)?;
        if version as usize > MIGRATIONS.len() {
            return Err(AgentError::Internal(format!(
                "the database is at schema version {version}, newer than this hangard knows ({}); refusing to touch it",
                MIGRATIONS.len()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction().map_err(db)?;
            tx.execute_batch(sql).map_err(db)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)
                .map_err(db)?;
            tx.commit().map_err(db)?;
            tracing::info!(version = i + 1, "applied database migration");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::machines::EVENTS_KEPT;
    use super::*;
    use hangar_core::machine::Machine as MachineCore;
    use hangar_core::{MachineId, MachineState};

    fn app(name: &str) -> AppRecord {
        AppRecord {
            id: format!("id-{name}"),
            name: name.into(),
            org_slug: "personal".into(),
            network: "default".into(),
            internal_numeric_id: 1,
            created_at: now_rfc3339(),
            machine_count: 0,
        }
    }

    fn machine(app: &str, name: &str) -> MachineRecord {
        let parsed =
            hangar_core::spec::Parsed::new(serde_json::json!({"image": "busybox", "x": 1}))
                .unwrap();
        MachineRecord {
            id: MachineId::generate(),
            app: app.into(),
            name: name.into(),
            region: "local".into(),
            core: MachineCore::new(true),
            instance_id: hangar_core::InstanceId::generate().to_string(),
            config: parsed.json,
            spec: parsed.spec,
            image_ref: None,
            private_ip: String::new(),
            created_at: now_rfc3339(),
            updated_at: now_rfc3339(),
            cordoned: false,
            updated_at_ms: 0,
            schedule_next_ms: None,
        }
    }

    fn ev(kind: &str) -> NewEvent {
        NewEvent {
            kind: kind.into(),
            status: "created".into(),
            source: "user".into(),
            request: None,
        }
    }

    #[test]
    fn briefs_and_metrics_sections_are_read_without_whole_machines() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("hangar.db")).unwrap();
        s.insert_app(&app("b")).unwrap();
        s.insert_app(&app("a")).unwrap();
        let with = |app: &str, metrics: serde_json::Value| {
            let mut m = machine(app, &format!("m{metrics}"));
            m.config["metrics"] = metrics;
            s.insert_machine(&mut m, &ev("launch"), None).unwrap();
            m
        };
        let set = |m: &MachineRecord, state| {
            let mut core = m.core.clone();
            core.state = state;
            s.commit_transition(&m.id, &core, &[ev("x")], None).unwrap();
        };
        let scraped = with("b", serde_json::json!({"port": 9091, "path": "/m"}));
        let not_started = with("a", serde_json::json!({"port": 9091}));
        let no_section = with("a", serde_json::Value::Null);
        let not_an_object = with("a", serde_json::json!("9091"));
        let gone = with("a", serde_json::json!({"port": 1}));
        for m in [&scraped, &no_section, &not_an_object, &gone] {
            set(m, MachineState::Started);
        }
        set(&gone, MachineState::Destroyed);

        let briefs = s.machine_briefs().unwrap();
        let mut got: Vec<_> = briefs
            .iter()
            .map(|b| (b.app.as_str(), b.id.clone(), b.state))
            .collect();
        assert!(got.is_sorted_by_key(|b| b.0), "by app: {got:?}");
        got.sort_by(|x, y| (x.0, x.1.as_str()).cmp(&(y.0, y.1.as_str())));
        let mut want = vec![
            ("a", not_started.id.clone(), MachineState::Created),
            ("a", no_section.id.clone(), MachineState::Started),
            ("a", not_an_object.id.clone(), MachineState::Started),
            ("b", scraped.id.clone(), MachineState::Started),
        ];
        want.sort_by(|x, y| (x.0, x.1.as_str()).cmp(&(y.0, y.1.as_str())));
        assert_eq!(got, want);
        let metrics = s.started_with_metrics().unwrap();
        assert_eq!(metrics.len(), 1, "{metrics:?}");
        assert_eq!(metrics[0].0.id, scraped.id);
        assert_eq!(metrics[0].0.app, "b");
        assert_eq!(
            metrics[0].1,
            serde_json::json!({"port": 9091, "path": "/m"})
        );
    }

    #[test]
    fn machines_persist_across_reopen_with_events() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hangar.db");
        let s = Store::open(&path).unwrap();
        s.insert_app(&app("a")).unwrap();
        assert!(matches!(
            s.insert_app(&app("a")),
            Err(AgentError::Conflict(_))
        ));
        let m = machine("a", "m1");
        s.insert_machine(&mut m.clone(), &ev("launch"), None)
            .unwrap();
        assert!(matches!(
            s.insert_machine(&mut machine("a", "m1"), &ev("launch"), None),
            Err(AgentError::Conflict(_))
        ));
        let mut core = m.core.clone();
        core.state = MachineState::Started;
        s.commit_transition(&m.id, &core, &[ev("start")], None)
            .unwrap();
        drop(s);

        let s = Store::open(&path).unwrap();
        let got = s.get_machine("a", m.id.as_str()).unwrap().unwrap();
        assert_eq!(got.core.state, MachineState::Started);
        assert_eq!(got.config["x"], 1);
        assert_eq!(got.spec.image, "busybox");
        let kinds: Vec<String> = s
            .events(&m.id, 10)
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, vec!["start", "launch"]);
        assert_eq!(s.get_app("a").unwrap().unwrap().machine_count, 1);
        assert!(matches!(s.delete_app("a"), Err(AgentError::Conflict(_))));
    }

    /// A database of the version before network blocks: its networks keep
    /// their ids, their /24 becomes their first block, every allocation
    /// keeps its IPv4 address.
    #[test]
    fn allocations_of_the_octet_scheme_migrate_to_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hangar.db");
        {
            let conn = Connection::open(&path).unwrap();
            for sql in &MIGRATIONS[..8] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 8).unwrap();
            conn.execute_batch(
                "INSERT INTO networks (name, idx) VALUES ('default', 5), ('other', 9);
                 INSERT INTO ip_allocations (network, host, machine_id) VALUES
                    ('default', 7, 'm1'), ('default', 8, 'm2'), ('other', 2, 'm3');",
            )
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        let plan = crate::network::NetPlan {
            range: crate::network::NetRange::default(),
            installation: s.installation_id().unwrap(),
            host: 1,
        };
        let a = s.address_of("m1", &plan).unwrap().unwrap();
        assert_eq!(a.ipv4().to_string(), "10.231.5.7");
        assert_eq!((a.net, a.block), (5, 5));
        let c = s.address_of("m3", &plan).unwrap().unwrap();
        assert_eq!(c.ipv4().to_string(), "10.231.9.2");
        assert_eq!(s.network_blocks().unwrap(), vec![5, 9]);
        // The next machine of `default` goes on in its block.
        let (n, new) = s.allocate_address("default", "m4", &plan).unwrap();
        assert!(!new);
        assert_eq!(n.ipv4().to_string(), "10.231.5.2");
        // The blocks' usage was counted by the migration, and followed after.
        assert_eq!(block_usage(&s), vec![(5, 3, 3), (9, 1, 1)]);
        assert_eq!(s.installation_id().unwrap(), plan.installation, "kept");
        assert_ne!(plan.installation, 0);
    }

    /// Each block: `(block, used as kept, addresses it holds)`.
    fn block_usage(s: &Store) -> Vec<(i64, i64, i64)> {
        let conn = s.conn();
        let mut st = conn
            .prepare(
                "SELECT b.block, b.used, (SELECT COUNT(*) FROM ip_allocations a WHERE a.block = b.block)
                 FROM network_blocks b ORDER BY b.block",
            )
            .unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// A create finds the first block with room by its kept usage: the
    /// usage follows every allocation and release, a freed host is taken
    /// again first, and a block left empty goes.
    #[test]
    fn block_usage_follows_allocations_and_releases() {
        use crate::network::BLOCK_HOSTS;
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        let plan = crate::network::NetPlan {
            range: crate::network::NetRange::default(),
            installation: s.installation_id().unwrap(),
            host: 1,
        };
        let mut blocks = Vec::new();
        for i in 0..BLOCK_HOSTS + 2 {
            let (a, _) = s
                .allocate_address("default", &format!("m{i}"), &plan)
                .unwrap();
            blocks.push(a.block);
        }
        let (first, second) = (blocks[0], blocks[BLOCK_HOSTS as usize]);
        assert_ne!(first, second);
        assert_eq!(
            block_usage(&s),
            vec![
                (i64::from(first), BLOCK_HOSTS, BLOCK_HOSTS),
                (i64::from(second), 2, 2)
            ]
        );
        // A host freed in the full block is the next one given.
        s.release_address("m7").unwrap();
        let (a, new) = s.allocate_address("default", "again", &plan).unwrap();
        assert!(!new);
        assert_eq!((a.block, a.ipv4().octets()[3]), (first, 9));
        // The second block emptied: it goes.
        s.release_address(&format!("m{}", BLOCK_HOSTS)).unwrap();
        s.release_address(&format!("m{}", BLOCK_HOSTS + 1)).unwrap();
        assert_eq!(
            block_usage(&s),
            vec![(i64::from(first), BLOCK_HOSTS, BLOCK_HOSTS)]
        );
    }

    #[test]
    fn events_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        s.insert_app(&app("a")).unwrap();
        let m = machine("a", "m");
        s.insert_machine(&mut m.clone(), &ev("launch"), None)
            .unwrap();
        for _ in 0..(EVENTS_KEPT + 20) {
            s.commit_transition(&m.id, &m.core, &[ev("exit")], None)
                .unwrap();
        }
        assert_eq!(s.events(&m.id, 1000).unwrap().len() as i64, EVENTS_KEPT);
    }
}
