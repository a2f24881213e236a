//! Volumes and their snapshots in SQLite.

use rusqlite::{OptionalExtension, params};

use super::{Store, db, now_rfc3339};
use crate::AgentError;

/// A volume's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRecord {
    /// `vol_...`.
    pub id: String,
    /// Owning app.
    pub app: String,
    /// Name.
    pub name: String,
    /// `created` or `destroyed`.
    pub state: String,
    /// Size, GB.
    pub size_gb: i64,
    /// Region.
    pub region: String,
    /// Zone.
    pub zone: String,
    /// Encrypted at rest.
    pub encrypted: bool,
    /// `ext4` or `raw`.
    pub fstype: String,
    /// Its key, sealed (encrypted volumes).
    pub(crate) key_sealed: Option<Vec<u8>>,
    /// The machine it is bound to.
    pub attached_machine_id: Option<String>,
    /// Days snapshots are kept.
    pub snapshot_retention: i64,
    /// Daily snapshots.
    pub auto_backup_enabled: bool,
    /// RFC 3339.
    pub created_at: String,
}

/// A snapshot's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRecord {
    /// `vs_...`.
    pub id: String,
    /// The volume it was taken of.
    pub volume_id: String,
    /// Bytes of data.
    pub size: i64,
    /// The volume's size then, GB.
    pub volume_size: i64,
    /// Digest of its data.
    pub digest: String,
    /// `created`.
    pub status: String,
    /// Days it is kept.
    pub retention_days: i64,
    /// Its volume's file system.
    pub(crate) fstype: String,
    /// Whether its data is encrypted.
    pub(crate) encrypted: bool,
    /// Its volume's key, sealed.
    pub(crate) key_sealed: Option<Vec<u8>>,
    /// RFC 3339.
    pub created_at: String,
    /// Unix milliseconds.
    pub(crate) created_at_ms: i64,
}

const VOLUME_COLUMNS: &str = "id, app_name, name, state, size_gb, region, zone, encrypted, fstype, key_sealed, attached_machine_id, snapshot_retention, auto_backup_enabled, created_at";

fn volume_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<VolumeRecord> {
    Ok(VolumeRecord {
        id: r.get(0)?,
        app: r.get(1)?,
        name: r.get(2)?,
        state: r.get(3)?,
        size_gb: r.get(4)?,
        region: r.get(5)?,
        zone: r.get(6)?,
        encrypted: r.get::<_, i64>(7)? != 0,
        fstype: r.get(8)?,
        key_sealed: r.get(9)?,
        attached_machine_id: r.get(10)?,
        snapshot_retention: r.get(11)?,
        auto_backup_enabled: r.get::<_, i64>(12)? != 0,
        created_at: r.get(13)?,
    })
}

const SNAPSHOT_COLUMNS: &str = "id, volume_id, size, volume_size, digest, status, retention_days, fstype, encrypted, key_sealed, created_at, created_at_ms";

fn snapshot_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SnapshotRecord> {
    Ok(SnapshotRecord {
        id: r.get(0)?,
        volume_id: r.get(1)?,
        size: r.get(2)?,
        volume_size: r.get(3)?,
        digest: r.get(4)?,
        status: r.get(5)?,
        retention_days: r.get(6)?,
        fstype: r.get(7)?,
        encrypted: r.get::<_, i64>(8)? != 0,
        key_sealed: r.get(9)?,
        created_at: r.get(10)?,
        created_at_ms: r.get(11)?,
    })
}

impl Store {
    pub(crate) fn insert_volume(&self, v: &VolumeRecord) -> Result<(), AgentError> {
        let now = now_rfc3339();
        self.conn()
            .execute(
                &format!(
                    "INSERT INTO volumes ({VOLUME_COLUMNS}, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
                ),
                params![
                    v.id,
                    v.app,
                    v.name,
                    v.state,
                    v.size_gb,
                    v.region,
                    v.zone,
                    v.encrypted as i64,
                    v.fstype,
                    v.key_sealed,
                    v.attached_machine_id,
                    v.snapshot_retention,
                    v.auto_backup_enabled as i64,
                    v.created_at,
                    now
                ],
            )
            .map_err(db)?;
        Ok(())
    }

    /// A volume by id, in any app.
    pub fn volume(&self, id: &str) -> Result<Option<VolumeRecord>, AgentError> {
        self.conn()
            .query_row(
                &format!("SELECT {VOLUME_COLUMNS} FROM volumes WHERE id = ?1"),
                params![id],
                volume_from_row,
            )
            .optional()
            .map_err(db)
    }

    pub(crate) fn volumes(&self, app: Option<&str>) -> Result<Vec<VolumeRecord>, AgentError> {
        let conn = self.conn();
        let mut st = conn
            .prepare(&format!(
                "SELECT {VOLUME_COLUMNS} FROM volumes WHERE state != 'destroyed' AND (?1 IS NULL OR app_name = ?1) ORDER BY created_at, id"
            ))
            .map_err(db)?;
        let rows = st.query_map(params![app], volume_from_row).map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }

    pub(crate) fn update_volume_row(&self, v: &VolumeRecord) -> Result<(), AgentError> {
        self.conn()
            .execute(
                "UPDATE volumes SET state = ?2, size_gb = ?3, snapshot_retention = ?4, auto_backup_enabled = ?5, attached_machine_id = ?6, updated_at = ?7 WHERE id = ?1",
                params![
                    v.id,
                    v.state,
                    v.size_gb,
                    v.snapshot_retention,
                    v.auto_backup_enabled as i64,
                    v.attached_machine_id,
                    now_rfc3339()
                ],
            )
            .map_err(db)?;
        Ok(())
    }

    /// Binds a free volume to a machine; false when another machine holds it.
    pub(crate) fn bind_volume(&self, volume: &str, machine: &str) -> Result<bool, AgentError> {
        let n = self
            .conn()
            .execute(
                "UPDATE volumes SET attached_machine_id = ?2, updated_at = ?3 WHERE id = ?1 AND state = 'created' AND (attached_machine_id IS NULL OR attached_machine_id = ?2)",
                params![volume, machine, now_rfc3339()],
            )
            .map_err(db)?;
        Ok(n == 1)
    }

    /// Frees the volumes bound to a machine; returns their ids.
    pub(crate) fn release_volumes(&self, machine: &str) -> Result<Vec<String>, AgentError> {
        let conn = self.conn();
        let ids: Vec<String> = {
            let mut st = conn
                .prepare("SELECT id FROM volumes WHERE attached_machine_id = ?1")
                .map_err(db)?;
            let rows = st.query_map(params![machine], |r| r.get(0)).map_err(db)?;
            rows.collect::<Result<_, _>>().map_err(db)?
        };
        conn.execute(
            "UPDATE volumes SET attached_machine_id = NULL, updated_at = ?2 WHERE attached_machine_id = ?1",
            params![machine, now_rfc3339()],
        )
        .map_err(db)?;
        Ok(ids)
    }

    pub(crate) fn insert_snapshot(&self, app: &str, s: &SnapshotRecord) -> Result<(), AgentError> {
        self.conn()
            .execute(
                &format!(
                    "INSERT INTO volume_snapshots ({SNAPSHOT_COLUMNS}, app_name) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
                ),
                params![
                    s.id,
                    s.volume_id,
                    s.size,
                    s.volume_size,
                    s.digest,
                    s.status,
                    s.retention_days,
                    s.fstype,
                    s.encrypted as i64,
                    s.key_sealed,
                    s.created_at,
                    s.created_at_ms,
                    app
                ],
            )
            .map_err(db)?;
        Ok(())
    }

    pub(crate) fn snapshots(
        &self,
        volume: Option<&str>,
        app: Option<&str>,
    ) -> Result<Vec<SnapshotRecord>, AgentError> {
        let conn = self.conn();
        let mut st = conn
            .prepare(&format!(
                "SELECT {SNAPSHOT_COLUMNS} FROM volume_snapshots WHERE (?1 IS NULL OR volume_id = ?1) AND (?2 IS NULL OR app_name = ?2) ORDER BY created_at_ms, id"
            ))
            .map_err(db)?;
        let rows = st
            .query_map(params![volume, app], snapshot_from_row)
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }

    pub(crate) fn delete_snapshot_row(&self, id: &str) -> Result<(), AgentError> {
        self.conn()
            .execute("DELETE FROM volume_snapshots WHERE id = ?1", params![id])
            .map_err(db)?;
        Ok(())
    }
}
