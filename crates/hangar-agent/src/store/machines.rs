//! Machines, their config versions, events and leases.

use hangar_core::machine::Machine as MachineCore;
use hangar_core::spec::{ImageRef, MachineSpec, Parsed};
use hangar_core::{MachineId, MachineState};
use rusqlite::{OptionalExtension, params};

use super::{Store, db, exec_cached, json_err, now_ms, now_rfc3339};
use crate::AgentError;

/// Events kept per machine; older ones are pruned.
pub(crate) const EVENTS_KEPT: i64 = 200;

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
    /// Current config: Fly's `MachineConfig` as JSON, as received (with
    /// Fly's defaults filled in).
    pub config: serde_json::Value,
    /// What the current config asks for.
    pub spec: MachineSpec,
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

/// Where a new machine gets its address: its network, the installation's
/// plan, and which new blocks are free on this host.
pub type NetworkSlot<'a> = (&'a str, &'a crate::network::NetPlan, &'a dyn Fn(u8) -> bool);

/// A new config version of a machine.
#[derive(Debug, Clone)]
pub struct NewVersion {
    /// The new `instance_id`.
    pub instance_id: String,
    /// The new config.
    pub config: Parsed,
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
            id: id_from_db(0, id)?,
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
            config: serde_json::Value::Null,
            spec: empty_spec(),
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
    let parsed = Parsed::new(serde_json::from_str(&config).map_err(json_err)?).map_err(|e| {
        AgentError::Internal(format!(
            "machine {} has a stored config that does not parse: {e}",
            m.id
        ))
    })?;
    m.config = parsed.json;
    m.spec = parsed.spec;
    m.image_ref = image_ref
        .map(|s| serde_json::from_str(&s))
        .transpose()
        .map_err(json_err)?;
    Ok(m)
}

/// A machine as stored, its config not yet parsed: what a reader that
/// renders machines needs to tell whether its rendering of the machine is
/// still current without paying for the parse.
#[derive(Debug, Clone)]
pub struct MachineRow {
    /// The record, its `config`, `spec` and `image_ref` left empty.
    pub rec: MachineRecord,
    /// The stored config, as JSON text.
    pub config: String,
    /// The stored image reference, as JSON text.
    pub image_ref: Option<String>,
    /// The machine's revision: every change to its row or its events
    /// makes it higher.
    pub rev: i64,
}

impl MachineRow {
    /// The full record, its config parsed.
    pub fn finish(self) -> Result<MachineRecord, AgentError> {
        finish_machine((self.rec, self.config, self.image_ref))
    }
}

fn machine_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<MachineRow> {
    let (rec, config, image_ref) = machine_from_row(r)?;
    Ok(MachineRow {
        rec,
        config,
        image_ref,
        rev: r.get(16)?,
    })
}

/// An app's machine as listed, by revision: enough to tell whether a kept
/// rendering of it is current, and to filter it by region and state.
#[derive(Debug, Clone)]
pub struct MachineRev {
    /// Id.
    pub id: MachineId,
    /// Revision (see [`MachineRow::rev`]).
    pub rev: i64,
    /// State.
    pub state: MachineState,
    /// Region.
    pub region: String,
}

/// A machine in brief, for passes over every machine of the host
/// (metrics, usage): no config parsed.
#[derive(Debug, Clone)]
pub struct MachineBrief {
    /// Its app.
    pub app: String,
    /// Id.
    pub id: MachineId,
    /// State.
    pub state: MachineState,
}

fn id_from_db(i: usize, s: String) -> rusqlite::Result<MachineId> {
    s.parse().map_err(|e: hangar_core::ids::IdError| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
    })
}

impl Store {
    /// Every machine of the host that is not destroyed, in brief, by app.
    pub fn machine_briefs(&self) -> Result<Vec<MachineBrief>, AgentError> {
        self.conn()
            .prepare_cached(
                "SELECT app_name, id, state FROM machines WHERE state != 'destroyed' ORDER BY app_name, created_at, id",
            )
            .and_then(|mut st| {
                st.query_map([], |r| {
                    Ok(MachineBrief {
                        app: r.get(0)?,
                        id: id_from_db(1, r.get(1)?)?,
                        state: state_from_db(&r.get::<_, String>(2)?)?,
                    })
                })?
                .collect::<Result<_, _>>()
            })
            .map_err(db)
    }

    /// The started machines whose config has a `metrics` section, with
    /// that section: only it is read out of each config.
    pub fn started_with_metrics(
        &self,
    ) -> Result<Vec<(MachineBrief, serde_json::Value)>, AgentError> {
        let rows: Vec<(MachineBrief, String)> = self
            .conn()
            .prepare_cached(
                "SELECT app_name, id, json_extract(config, '$.metrics') FROM machines
                 WHERE state = 'started' AND json_type(config, '$.metrics') = 'object'
                 ORDER BY app_name, created_at, id",
            )
            .and_then(|mut st| {
                st.query_map([], |r| {
                    Ok((
                        MachineBrief {
                            app: r.get(0)?,
                            id: id_from_db(1, r.get(1)?)?,
                            state: MachineState::Started,
                        },
                        r.get(2)?,
                    ))
                })?
                .collect::<Result<_, _>>()
            })
            .map_err(db)?;
        Ok(rows
            .into_iter()
            .filter_map(|(m, metrics)| Some((m, serde_json::from_str(&metrics).ok()?)))
            .collect())
    }

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
        let r = exec_cached(
            &tx,
            &format!(
                "INSERT INTO machines ({MACHINE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"
            ),
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
        exec_cached(
            &tx,
            "INSERT INTO machine_versions (machine_id, version, config, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![m.id.as_str(), m.instance_id, config, m.created_at],
        )
        .map_err(db)?;
        insert_event(&tx, &m.id, event)?;
        exec_cached(
            &tx,
            "UPDATE apps SET status = 'deployed' WHERE name = ?1",
            params![m.app],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(address)
    }

    /// One machine of an app.
    pub fn get_machine(&self, app: &str, id: &str) -> Result<Option<MachineRecord>, AgentError> {
        let conn = self.conn();
        let row = conn
            .prepare_cached(&format!(
                "SELECT {MACHINE_COLUMNS} FROM machines WHERE app_name = ?1 AND id = ?2"
            ))
            .and_then(|mut st| st.query_row(params![app, id], machine_from_row))
            .optional()
            .map_err(db)?;
        drop(conn);
        row.map(finish_machine).transpose()
    }

    /// One machine as stored, unparsed.
    pub fn get_machine_row(&self, app: &str, id: &str) -> Result<Option<MachineRow>, AgentError> {
        self.conn()
            .prepare_cached(&format!(
                "SELECT {MACHINE_COLUMNS}, rev FROM machines WHERE app_name = ?1 AND id = ?2"
            ))
            .and_then(|mut st| st.query_row(params![app, id], machine_row))
            .optional()
            .map_err(db)
    }

    /// An app's machines as stored, unparsed, oldest first.
    pub fn list_machine_rows(
        &self,
        app: &str,
        include_deleted: bool,
    ) -> Result<Vec<MachineRow>, AgentError> {
        let sql = format!(
            "SELECT {MACHINE_COLUMNS}, rev FROM machines WHERE app_name = ?1 {} ORDER BY created_at, id",
            if include_deleted {
                ""
            } else {
                "AND state != 'destroyed'"
            }
        );
        self.conn()
            .prepare_cached(&sql)
            .and_then(|mut st| {
                st.query_map(params![app], machine_row)?
                    .collect::<Result<_, _>>()
            })
            .map_err(db)
    }

    /// An app's machines by revision, oldest first.
    pub fn list_machine_revs(
        &self,
        app: &str,
        include_deleted: bool,
    ) -> Result<Vec<MachineRev>, AgentError> {
        let sql = format!(
            "SELECT id, rev, state, region FROM machines WHERE app_name = ?1 {} ORDER BY created_at, id",
            if include_deleted {
                ""
            } else {
                "AND state != 'destroyed'"
            }
        );
        self.conn()
            .prepare_cached(&sql)
            .and_then(|mut st| {
                st.query_map(params![app], |r| {
                    let state: String = r.get(2)?;
                    Ok(MachineRev {
                        id: id_from_db(0, r.get(0)?)?,
                        rev: r.get(1)?,
                        state: state_from_db(&state)?,
                        region: r.get(3)?,
                    })
                })?
                .collect::<Result<_, _>>()
            })
            .map_err(db)
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
        let rows: Vec<_> = conn
            .prepare_cached(&sql)
            .and_then(|mut st| {
                st.query_map(params![app], machine_from_row)?
                    .collect::<Result<_, _>>()
            })
            .map_err(db)?;
        // The configs are parsed with the connection let go.
        drop(conn);
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
        exec_cached(
            &tx,
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
            let config = serde_json::to_string(&v.config.json).map_err(json_err)?;
            let image_ref = serde_json::to_string(&v.image_ref).map_err(json_err)?;
            exec_cached(
                &tx,
                "UPDATE machines SET instance_id = ?2, config = ?3, image_ref = ?4 WHERE id = ?1",
                params![id.as_str(), v.instance_id, config, image_ref],
            )
            .map_err(db)?;
            exec_cached(
                &tx,
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
            exec_cached(
                &tx,
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
        exec_cached(
            &self.conn(),
            "UPDATE machines SET image_ref = ?2 WHERE id = ?1",
            params![id.as_str(), s],
        )
        .map_err(db)?;
        Ok(())
    }

    /// A machine's config versions, newest first: `(version, config)`.
    pub fn versions(&self, id: &MachineId) -> Result<Vec<(String, serde_json::Value)>, AgentError> {
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
        config: &serde_json::Value,
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
            .prepare_cached(
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
    exec_cached(
        tx,
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

/// A placeholder until the stored config is read ([`finish_machine`]).
/// The placeholder spec of a record whose config is not parsed yet (made
/// once: every row read starts from it).
fn empty_spec() -> MachineSpec {
    static EMPTY: std::sync::LazyLock<MachineSpec> = std::sync::LazyLock::new(|| {
        let mut json = serde_json::json!({"image": "-"});
        MachineSpec::parse(&mut json).unwrap_or_else(|_| unreachable!("a minimal config parses"))
    });
    EMPTY.clone()
}
