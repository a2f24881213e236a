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

use hangar_api_types::{ImageRef, MachineConfig};
use hangar_core::machine::Machine as MachineCore;
use hangar_core::{MachineId, MachineState};
use rusqlite::{Connection, OptionalExtension, params};

use crate::AgentError;

const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_init.sql"),
    include_str!("../migrations/0002_leases_tokens.sql"),
    include_str!("../migrations/0003_schedules.sql"),
    include_str!("../migrations/0004_secrets.sql"),
    include_str!("../migrations/0005_volumes.sql"),
    include_str!("../migrations/0006_networks.sql"),
    include_str!("../migrations/0007_ip_assignments.sql"),
    include_str!("../migrations/0008_token_owners.sql"),
    include_str!("../migrations/0009_network_blocks.sql"),
];

/// Events kept per machine; older ones are pruned.
const EVENTS_KEPT: i64 = 200;

/// An app row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppRecord {
    /// Random id.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Organization slug.
    pub org_slug: String,
    /// Private network name.
    pub network: String,
    /// Numeric id.
    pub internal_numeric_id: i64,
    /// RFC 3339.
    pub created_at: String,
    /// Machines that are not destroyed.
    pub machine_count: i64,
}

/// A machine row.
#[derive(Debug, Clone, PartialEq)]
pub struct MachineRecord {
    /// Id.
    pub id: MachineId,
    /// App name.
    pub app: String,
    /// Unique name within the app.
    pub name: String,
    /// Region.
    pub region: String,
    /// The state machine's part.
    pub core: MachineCore,
    /// Current version.
    pub instance_id: String,
    /// Current config.
    pub config: MachineConfig,
    /// The image actually pulled.
    pub image_ref: Option<ImageRef>,
    /// Private address.
    pub private_ip: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// Left out of proxy rotation.
    pub cordoned: bool,
    /// Last change, Unix milliseconds.
    pub updated_at_ms: i64,
    /// A scheduled machine's next run, Unix milliseconds (none before the
    /// first run).
    pub schedule_next_ms: Option<i64>,
}

/// A machine's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    /// The holder's proof.
    pub nonce: String,
    /// Who holds it.
    pub owner: String,
    /// Why.
    pub description: String,
    /// Unix seconds.
    pub expires_at: i64,
    /// The machine's version when acquired.
    pub version: String,
}

/// An app-scoped token (never its secret; only its hash is stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    /// Id.
    pub id: String,
    /// The app it may act on.
    pub app: String,
    /// A name for listings (may be empty).
    pub name: String,
    /// RFC 3339.
    pub created_at: String,
    /// Unix seconds, if it expires.
    pub expires_at: Option<i64>,
    /// The token that minted it, if not the admin token.
    pub minted_by: Option<String>,
}

/// An event row.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    /// ULID.
    pub id: String,
    /// Type.
    pub kind: String,
    /// Status.
    pub status: String,
    /// `user` or `flyd`.
    pub source: String,
    /// Unix ms.
    pub timestamp: i64,
    /// Details.
    pub request: Option<serde_json::Value>,
}

/// The database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    /// The connection's `total_changes` as of the last time it was let go:
    /// [`Store::changes`] reads it without taking the connection.
    changes: Arc<AtomicU64>,
}

/// The connection, held: when let go, it records how many rows it has
/// changed so far.
pub(crate) struct Conn<'a> {
    guard: MutexGuard<'a, Connection>,
    changes: &'a AtomicU64,
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
        self.changes
            .store(self.guard.total_changes(), Ordering::Release);
    }
}

pub(crate) fn db(e: rusqlite::Error) -> AgentError {
    AgentError::Internal(format!("database: {e}"))
}

fn json_err(e: serde_json::Error) -> AgentError {
    AgentError::Internal(format!("stored JSON: {e}"))
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

fn state_from_db(s: &str) -> rusqlite::Result<MachineState> {
    MachineState::parse(s).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("unknown machine state {s:?}").into(),
        )
    })
}

const MACHINE_COLUMNS: &str = "id, app_name, name, region, state, restart_count, launch, instance_id, config, image_ref, private_ip, created_at, updated_at, cordoned, updated_at_ms, schedule_next_ms";

fn machine_from_row(
    r: &rusqlite::Row<'_>,
) -> rusqlite::Result<(MachineRecord, String, Option<String>)> {
    let id: String = r.get(0)?;
    let config: String = r.get(8)?;
    let image_ref: Option<String> = r.get(9)?;
    let state: String = r.get(4)?;
    Ok((
        MachineRecord {
            id: id.parse().map_err(|e: hangar_core::ids::IdError| {
                rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
            })?,
            app: r.get(1)?,
            name: r.get(2)?,
            region: r.get(3)?,
            core: MachineCore {
                state: state_from_db(&state)?,
                step: Default::default(),
                restart_count: r.get::<_, i64>(5)? as u32,
                launch: r.get::<_, i64>(6)? != 0,
            },
            instance_id: r.get(7)?,
            config: MachineConfig::default(),
            image_ref: None,
            private_ip: r.get(10)?,
            created_at: r.get(11)?,
            updated_at: r.get(12)?,
            cordoned: r.get::<_, i64>(13)? != 0,
            updated_at_ms: r.get(14)?,
            schedule_next_ms: r.get(15)?,
        },
        config,
        image_ref,
    ))
}

fn finish_machine(
    (mut m, config, image_ref): (MachineRecord, String, Option<String>),
) -> Result<MachineRecord, AgentError> {
    m.config = serde_json::from_str(&config).map_err(json_err)?;
    m.image_ref = image_ref
        .map(|s| serde_json::from_str(&s))
        .transpose()
        .map_err(json_err)?;
    Ok(m)
}

/// Where a new machine gets its address: its network, the installation's
/// plan, and which new blocks are free on this host.
pub type NetworkSlot<'a> = (&'a str, &'a crate::network::NetPlan, &'a dyn Fn(u8) -> bool);

/// A new config version of a machine.
#[derive(Debug, Clone)]
pub struct NewVersion {
    /// The new `instance_id`.
    pub instance_id: String,
    /// The new config.
    pub config: MachineConfig,
    /// The image reference it starts from (digest unknown until pulled).
    pub image_ref: ImageRef,
}

/// A new event to record.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Type.
    pub kind: String,
    /// Status.
    pub status: String,
    /// Source.
    pub source: String,
    /// Details.
    pub request: Option<serde_json::Value>,
}

impl Store {
    /// Opens (creating) the database at `path` and migrates it.
    pub fn open(path: &Path) -> Result<Store, AgentError> {
        let conn = Connection::open(path).map_err(db)?;
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
        Conn {
            guard: self.conn.lock().unwrap_or_else(|p| p.into_inner()),
            changes: &self.changes,
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

    // ---- apps ----------------------------------------------------------------

    /// Inserts an app; `Conflict` when the name is taken.
    pub fn insert_app(&self, app: &AppRecord) -> Result<(), AgentError> {
        let r = self.conn().execute(
            "INSERT INTO apps (id, name, org_slug, network, status, internal_numeric_id, created_at)
             VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?6)",
            params![
                app.id,
                app.name,
                app.org_slug,
                app.network,
                app.internal_numeric_id,
                app.created_at
            ],
        );
        match r {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(AgentError::Conflict(format!(
                    "app name {:?} is already taken",
                    app.name
                )))
            }
            Err(e) => Err(db(e)),
        }
    }

    fn app_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AppRecord> {
        Ok(AppRecord {
            id: r.get(0)?,
            name: r.get(1)?,
            org_slug: r.get(2)?,
            network: r.get(3)?,
            internal_numeric_id: r.get(4)?,
            created_at: r.get(5)?,
            machine_count: r.get(6)?,
        })
    }

    const APP_SELECT: &'static str =
        "SELECT a.id, a.name, a.org_slug, a.network, a.internal_numeric_id, a.created_at,
            (SELECT COUNT(*) FROM machines m WHERE m.app_name = a.name AND m.state != 'destroyed')
         FROM apps a";

    /// The app named `name`.
    pub fn get_app(&self, name: &str) -> Result<Option<AppRecord>, AgentError> {
        self.conn()
            .query_row(
                &format!("{} WHERE a.name = ?1", Self::APP_SELECT),
                params![name],
                Self::app_from_row,
            )
            .optional()
            .map_err(db)
    }

    /// Apps of an organization, by name.
    pub fn list_apps(&self, org_slug: &str) -> Result<Vec<AppRecord>, AgentError> {
        let conn = self.conn();
        let mut st = conn
            .prepare(&format!(
                "{} WHERE a.org_slug = ?1 ORDER BY a.name",
                Self::APP_SELECT
            ))
            .map_err(db)?;
        let rows = st
            .query_map(params![org_slug], Self::app_from_row)
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }

    /// Deletes an app with the records of its destroyed machines, its
    /// secrets, addresses, volumes, snapshots and tokens.
    pub fn delete_app(&self, name: &str) -> Result<(), AgentError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db)?;
        let live: i64 = tx
            .query_row(
                "SELECT COUNT(*) FROM machines WHERE app_name = ?1 AND state != 'destroyed'",
                params![name],
                |r| r.get(0),
            )
            .map_err(db)?;
        if live > 0 {
            return Err(AgentError::Conflict(format!(
                "app {name} still has {live} machines"
            )));
        }
        tx.execute("DELETE FROM machines WHERE app_name = ?1", params![name])
            .map_err(db)?;
        tx.execute("DELETE FROM secrets WHERE app_name = ?1", params![name])
            .map_err(db)?;
        tx.execute(
            "DELETE FROM ip_assignments WHERE app_name = ?1",
            params![name],
        )
        .map_err(db)?;
        tx.execute("DELETE FROM volumes WHERE app_name = ?1", params![name])
            .map_err(db)?;
        tx.execute(
            "DELETE FROM volume_snapshots WHERE app_name = ?1",
            params![name],
        )
        .map_err(db)?;
        tx.execute(
            "DELETE FROM tokens WHERE app_id = (SELECT id FROM apps WHERE name = ?1)",
            params![name],
        )
        .map_err(db)?;
        tx.execute("DELETE FROM apps WHERE name = ?1", params![name])
            .map_err(db)?;
        tx.commit().map_err(db)
    }

    /// Marks an app `deployed` (it has had a machine).
    pub fn set_app_status(&self, name: &str, status: &str) -> Result<(), AgentError> {
        self.conn()
            .execute(
                "UPDATE apps SET status = ?2 WHERE name = ?1",
                params![name, status],
            )
            .map_err(db)?;
        Ok(())
    }

    /// The app's status column.
    pub fn app_status(&self, name: &str) -> Result<String, AgentError> {
        self.conn()
            .query_row(
                "SELECT status FROM apps WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .map_err(db)
    }

    // ---- machines -------------------------------------------------------------

    /// Inserts a new machine, its first version and its first event; with
    /// `network`, gives it an address on that network in the same
    /// transaction (so a crash never leaves an address without its machine)
    /// and records it as the machine's `private_ip`.
    pub fn insert_machine(
        &self,
        m: &mut MachineRecord,
        event: &NewEvent,
        network: Option<NetworkSlot<'_>>,
    ) -> Result<Option<(crate::network::Address, bool)>, AgentError> {
        let config = serde_json::to_string(&m.config).map_err(json_err)?;
        let image_ref = m
            .image_ref
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(json_err)?;
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db)?;
        let address = match network {
            Some((name, plan, block_free)) => {
                let a = Self::allocate_in(&tx, name, m.id.as_str(), plan, block_free)?;
                m.private_ip = a.0.ipv6().to_string();
                Some(a)
            }
            None => None,
        };
        let r = tx.execute(
            &format!("INSERT INTO machines ({MACHINE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"),
            params![
                m.id.as_str(),
                m.app,
                m.name,
                m.region,
                m.core.state.as_str(),
                m.core.restart_count,
                m.core.launch as i64,
                m.instance_id,
                config,
                image_ref,
                m.private_ip,
                m.created_at,
                m.updated_at,
                m.cordoned as i64,
                now_ms(),
                m.schedule_next_ms
            ],
        );
        match r {
            Ok(_) => {}
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                return Err(AgentError::Conflict(format!(
                    "a machine named {:?} already exists in app {}",
                    m.name, m.app
                )));
            }
            Err(e) => return Err(db(e)),
        }
        tx.execute(
            "INSERT INTO machine_versions (machine_id, version, config, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![m.id.as_str(), m.instance_id, config, m.created_at],
        )
        .map_err(db)?;
        insert_event(&tx, &m.id, event)?;
        tx.execute(
            "UPDATE apps SET status = 'deployed' WHERE name = ?1",
            params![m.app],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(address)
    }

    /// One machine of an app.
    pub fn get_machine(&self, app: &str, id: &str) -> Result<Option<MachineRecord>, AgentError> {
        let row = self
            .conn()
            .query_row(
                &format!("SELECT {MACHINE_COLUMNS} FROM machines WHERE app_name = ?1 AND id = ?2"),
                params![app, id],
                machine_from_row,
            )
            .optional()
            .map_err(db)?;
        row.map(finish_machine).transpose()
    }

    /// An app's machines, oldest first.
    pub fn list_machines(
        &self,
        app: &str,
        include_deleted: bool,
    ) -> Result<Vec<MachineRecord>, AgentError> {
        let conn = self.conn();
        let sql = format!(
            "SELECT {MACHINE_COLUMNS} FROM machines WHERE app_name = ?1 {} ORDER BY created_at, id",
            if include_deleted {
                ""
            } else {
                "AND state != 'destroyed'"
            }
        );
        let mut st = conn.prepare(&sql).map_err(db)?;
        let rows: Vec<_> = st
            .query_map(params![app], machine_from_row)
            .map_err(db)?
            .collect::<Result<_, _>>()
            .map_err(db)?;
        rows.into_iter().map(finish_machine).collect()
    }

    /// Every machine that is not destroyed (for reconciliation at startup).
    pub fn live_machines(&self) -> Result<Vec<MachineRecord>, AgentError> {
        let conn = self.conn();
        let mut st = conn
            .prepare(&format!(
                "SELECT {MACHINE_COLUMNS} FROM machines WHERE state != 'destroyed' ORDER BY created_at"
            ))
            .map_err(db)?;
        let rows: Vec<_> = st
            .query_map([], machine_from_row)
            .map_err(db)?
            .collect::<Result<_, _>>()
            .map_err(db)?;
        rows.into_iter().map(finish_machine).collect()
    }

    /// Commits a state transition and its events in one transaction; with
    /// `version`, the machine's new config version too.
    pub fn commit_transition(
        &self,
        id: &MachineId,
        core: &MachineCore,
        events: &[NewEvent],
        version: Option<&NewVersion>,
    ) -> Result<String, AgentError> {
        let now = now_rfc3339();
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db)?;
        tx.execute(
            "UPDATE machines SET state = ?2, restart_count = ?3, launch = ?4, updated_at = ?5, updated_at_ms = ?6 WHERE id = ?1",
            params![
                id.as_str(),
                core.state.as_str(),
                core.restart_count,
                core.launch as i64,
                now,
                now_ms()
            ],
        )
        .map_err(db)?;
        if let Some(v) = version {
            let config = serde_json::to_string(&v.config).map_err(json_err)?;
            let image_ref = serde_json::to_string(&v.image_ref).map_err(json_err)?;
            tx.execute(
                "UPDATE machines SET instance_id = ?2, config = ?3, image_ref = ?4 WHERE id = ?1",
                params![id.as_str(), v.instance_id, config, image_ref],
            )
            .map_err(db)?;
            tx.execute(
                "INSERT INTO machine_versions (machine_id, version, config, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![id.as_str(), v.instance_id, config, now],
            )
            .map_err(db)?;
        }
        let mut last = String::new();
        for e in events {
            last = insert_event(&tx, id, e)?;
        }
        if !events.is_empty() {
            tx.execute(
                "DELETE FROM machine_events WHERE machine_id = ?1 AND seq <= (
                    SELECT seq FROM machine_events WHERE machine_id = ?1
                    ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
                params![id.as_str(), EVENTS_KEPT],
            )
            .map_err(db)?;
        }
        tx.commit().map_err(db)?;
        Ok(last)
    }

    /// Records the image a machine actually runs.
    pub fn set_image_ref(&self, id: &MachineId, image_ref: &ImageRef) -> Result<(), AgentError> {
        let s = serde_json::to_string(image_ref).map_err(json_err)?;
        self.conn()
            .execute(
                "UPDATE machines SET image_ref = ?2 WHERE id = ?1",
                params![id.as_str(), s],
            )
            .map_err(db)?;
        Ok(())
    }

    /// A machine's config versions, newest first: `(version, config)`.
    pub fn versions(&self, id: &MachineId) -> Result<Vec<(String, MachineConfig)>, AgentError> {
        let conn = self.conn();
        let mut st = conn
            .prepare("SELECT version, config FROM machine_versions WHERE machine_id = ?1 ORDER BY rowid DESC")
            .map_err(db)?;
        let rows: Vec<(String, String)> = st
            .query_map(params![id.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(db)?
            .collect::<Result<_, _>>()
            .map_err(db)?;
        rows.into_iter()
            .map(|(v, c)| Ok((v, serde_json::from_str(&c).map_err(json_err)?)))
            .collect()
    }

    /// Replaces the current config in place (metadata changes, which make no
    /// new version); also rewrites the current version's row.
    pub fn set_config(
        &self,
        id: &MachineId,
        instance_id: &str,
        config: &MachineConfig,
    ) -> Result<(), AgentError> {
        let c = serde_json::to_string(config).map_err(json_err)?;
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db)?;
        tx.execute(
            "UPDATE machines SET config = ?2, updated_at = ?3, updated_at_ms = ?4 WHERE id = ?1",
            params![id.as_str(), c, now_rfc3339(), now_ms()],
        )
        .map_err(db)?;
        tx.execute(
            "UPDATE machine_versions SET config = ?3 WHERE machine_id = ?1 AND version = ?2",
            params![id.as_str(), instance_id, c],
        )
        .map_err(db)?;
        tx.commit().map_err(db)
    }

    /// Records when a scheduled machine runs next (`None`: no schedule).
    pub fn set_schedule_next(
        &self,
        id: &MachineId,
        next_ms: Option<i64>,
    ) -> Result<(), AgentError> {
        self.conn()
            .execute(
                "UPDATE machines SET schedule_next_ms = ?2 WHERE id = ?1",
                params![id.as_str(), next_ms],
            )
            .map_err(db)?;
        Ok(())
    }

    /// Cordons or uncordons a machine.
    pub fn set_cordoned(&self, id: &MachineId, cordoned: bool) -> Result<(), AgentError> {
        self.conn()
            .execute(
                "UPDATE machines SET cordoned = ?2, updated_at = ?3, updated_at_ms = ?4 WHERE id = ?1",
                params![id.as_str(), cordoned as i64, now_rfc3339(), now_ms()],
            )
            .map_err(db)?;
        Ok(())
    }

    /// The machine's lease, if one is held and has not expired.
    pub fn lease(&self, id: &MachineId) -> Result<Option<LeaseRow>, AgentError> {
        let now = now_ms() / 1000;
        self.conn()
            .query_row(
                "SELECT nonce, owner, description, expires_at, version FROM leases WHERE machine_id = ?1 AND expires_at > ?2",
                params![id.as_str(), now],
                |r| {
                    Ok(LeaseRow {
                        nonce: r.get(0)?,
                        owner: r.get(1)?,
                        description: r.get(2)?,
                        expires_at: r.get(3)?,
                        version: r.get(4)?,
                    })
                },
            )
            .optional()
            .map_err(db)
    }

    /// Stores (or replaces) the machine's lease.
    pub fn put_lease(&self, id: &MachineId, lease: &LeaseRow) -> Result<(), AgentError> {
        self.conn()
            .execute(
                "INSERT INTO leases (machine_id, nonce, owner, description, expires_at, version)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(machine_id) DO UPDATE SET nonce = ?2, owner = ?3, description = ?4, expires_at = ?5, version = ?6",
                params![id.as_str(), lease.nonce, lease.owner, lease.description, lease.expires_at, lease.version],
            )
            .map_err(db)?;
        Ok(())
    }

    /// Drops the machine's lease.
    pub fn delete_lease(&self, id: &MachineId) -> Result<(), AgentError> {
        self.conn()
            .execute(
                "DELETE FROM leases WHERE machine_id = ?1",
                params![id.as_str()],
            )
            .map_err(db)?;
        Ok(())
    }

    /// Stores an app-scoped token by its hash, bound to its app's id.
    pub fn insert_token(&self, t: &TokenRow, hash: &str) -> Result<(), AgentError> {
        let n = self
            .conn()
            .execute(
                "INSERT INTO tokens (id, hash, app_name, app_id, name, created_at, expires_at, minted_by)
                 SELECT ?1, ?2, name, id, ?4, ?5, ?6, ?7 FROM apps WHERE name = ?3",
                params![t.id, hash, t.app, t.name, t.created_at, t.expires_at, t.minted_by],
            )
            .map_err(db)?;
        if n == 0 {
            return Err(AgentError::NotFound(format!("app {} not found", t.app)));
        }
        Ok(())
    }

    const TOKEN_SELECT: &'static str =
        "SELECT t.id, a.name, t.name, t.created_at, t.expires_at, t.minted_by
         FROM tokens t JOIN apps a ON a.id = t.app_id";

    fn token_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRow> {
        Ok(TokenRow {
            id: r.get(0)?,
            app: r.get(1)?,
            name: r.get(2)?,
            created_at: r.get(3)?,
            expires_at: r.get(4)?,
            minted_by: r.get(5)?,
        })
    }

    /// The token with this hash, unless it expired or its app is gone.
    pub fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRow>, AgentError> {
        let now = now_ms() / 1000;
        self.conn()
            .query_row(
                &format!(
                    "{} WHERE t.hash = ?1 AND (t.expires_at IS NULL OR t.expires_at > ?2)",
                    Self::TOKEN_SELECT
                ),
                params![hash, now],
                Self::token_from_row,
            )
            .optional()
            .map_err(db)
    }

    /// Tokens of one app (or every app), oldest first; expired ones too.
    pub fn tokens(&self, app: Option<&str>) -> Result<Vec<TokenRow>, AgentError> {
        let conn = self.conn();
        let mut st = conn
            .prepare(&format!(
                "{} WHERE (?1 IS NULL OR a.name = ?1) ORDER BY t.created_at, t.id",
                Self::TOKEN_SELECT
            ))
            .map_err(db)?;
        let rows = st
            .query_map(params![app], Self::token_from_row)
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }

    /// Deletes a token (of `app`, when given), and every token it minted,
    /// transitively; false when there was no such token.
    pub fn delete_token(&self, id: &str, app: Option<&str>) -> Result<bool, AgentError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db)?;
        let n = tx
            .execute(
                "DELETE FROM tokens WHERE id = ?1 AND (?2 IS NULL OR app_id = (SELECT id FROM apps WHERE name = ?2))",
                params![id, app],
            )
            .map_err(db)?;
        if n > 0 {
            tx.execute(
                "WITH RECURSIVE minted(id) AS (
                    SELECT id FROM tokens WHERE minted_by = ?1
                    UNION SELECT t.id FROM tokens t JOIN minted m ON t.minted_by = m.id)
                 DELETE FROM tokens WHERE id IN (SELECT id FROM minted)",
                params![id],
            )
            .map_err(db)?;
        }
        tx.commit().map_err(db)?;
        Ok(n > 0)
    }

    /// Machines of every app of an organization, ordered by last change
    /// then id, after `(updated_at_ms, id)` when paging.
    pub fn org_machines(
        &self,
        org: &str,
        include_deleted: bool,
        after: Option<(i64, String)>,
        limit: usize,
    ) -> Result<Vec<MachineRecord>, AgentError> {
        let conn = self.conn();
        let (after_ms, after_id) = after.unwrap_or((-1, String::new()));
        let sql = format!(
            "SELECT {} FROM machines m JOIN apps a ON a.name = m.app_name
             WHERE a.org_slug = ?1 {} AND (m.updated_at_ms > ?2 OR (m.updated_at_ms = ?2 AND m.id > ?3))
             ORDER BY m.updated_at_ms, m.id LIMIT ?4",
            MACHINE_COLUMNS
                .split(", ")
                .map(|c| format!("m.{c}"))
                .collect::<Vec<_>>()
                .join(", "),
            if include_deleted {
                ""
            } else {
                "AND m.state != 'destroyed'"
            }
        );
        let mut st = conn.prepare(&sql).map_err(db)?;
        let rows: Vec<_> = st
            .query_map(
                params![org, after_ms, after_id, limit as i64],
                machine_from_row,
            )
            .map_err(db)?
            .collect::<Result<_, _>>()
            .map_err(db)?;
        rows.into_iter().map(finish_machine).collect()
    }

    /// A machine's events, newest first.
    pub fn events(&self, id: &MachineId, limit: usize) -> Result<Vec<EventRow>, AgentError> {
        let conn = self.conn();
        let mut st = conn
            .prepare(
                "SELECT id, type, status, source, timestamp, request FROM machine_events
                 WHERE machine_id = ?1 ORDER BY seq DESC LIMIT ?2",
            )
            .map_err(db)?;
        let rows = st
            .query_map(params![id.as_str(), limit as i64], |r| {
                let request: Option<String> = r.get(5)?;
                Ok(EventRow {
                    id: r.get(0)?,
                    kind: r.get(1)?,
                    status: r.get(2)?,
                    source: r.get(3)?,
                    timestamp: r.get(4)?,
                    request: request.and_then(|s| serde_json::from_str(&s).ok()),
                })
            })
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }
}

fn insert_event(
    tx: &rusqlite::Transaction<'_>,
    id: &MachineId,
    e: &NewEvent,
) -> Result<String, AgentError> {
    let event_id = hangar_core::EventId::generate().to_string();
    let request = e
        .request
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(json_err)?;
    tx.execute(
        "INSERT INTO machine_events (id, machine_id, type, status, source, timestamp, request)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            event_id,
            id.as_str(),
            e.kind,
            e.status,
            e.source,
            now_ms(),
            request
        ],
    )
    .map_err(db)?;
    Ok(event_id)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        MachineRecord {
            id: MachineId::generate(),
            app: app.into(),
            name: name.into(),
            region: "local".into(),
            core: MachineCore::new(true),
            instance_id: hangar_core::InstanceId::generate().to_string(),
            config: serde_json::from_value(serde_json::json!({"image": "busybox", "x": 1}))
                .unwrap(),
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
        assert_eq!(got.config.extra["x"], 1);
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
        assert_eq!(s.installation_id().unwrap(), plan.installation, "kept");
        assert_ne!(plan.installation, 0);
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
