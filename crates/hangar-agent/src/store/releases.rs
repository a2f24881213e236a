//! Releases and their progress events.

use hangar_core::release::{ReleaseReason, ReleaseStatus};
use rusqlite::{OptionalExtension, Row, params};
use serde_json::Value;

use super::cluster::{CatalogChange, record};
use super::{Store, db, json_err, now_ms};
use crate::AgentError;

/// A release as stored (and as the cluster's catalogue carries it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReleaseRow {
    /// `rel_<ULID>`.
    pub id: String,
    /// Its app.
    pub app: String,
    /// Per app, from 1 (set when inserted).
    pub version: i64,
    /// Where it stands.
    pub status: ReleaseStatus,
    /// Why it was made.
    pub reason: ReleaseReason,
    /// rolling, immediate, canary or bluegreen.
    pub strategy: String,
    /// A line for listings.
    pub description: String,
    /// The image as asked for.
    pub image_ref: String,
    /// The manifest digest it resolved to (once resolved).
    pub image_digest: String,
    /// The fly.toml it deploys, as JSON.
    pub definition: Value,
    /// How to run it (strategy settings, filters, flags).
    pub options: Value,
    /// The app's secrets version when it was made.
    pub secrets_version: i64,
    /// The plan and each machine's outcome.
    pub machines: Value,
    /// Who asked.
    pub user: String,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub started_at: Option<i64>,
    /// Unix ms.
    pub finished_at: Option<i64>,
    /// Why it failed.
    pub error: Option<String>,
    /// The release a rollback restores.
    pub rollback_of: Option<String>,
}

/// One line of a release's progress.
#[derive(Debug, Clone, PartialEq)]
pub struct ReleaseEvent {
    /// From 1, in order.
    pub seq: i64,
    /// Unix ms.
    pub at: i64,
    /// The event.
    pub body: Value,
}

const COLUMNS: &str = "id, app_name, version, status, reason, strategy, description, image_ref, \
     image_digest, definition, options, secrets_version, machines, user, created_at, started_at, \
     finished_at, error, rollback_of";

fn row(r: &Row) -> rusqlite::Result<(ReleaseRow, [String; 3])> {
    let status: String = r.get(3)?;
    let reason: String = r.get(4)?;
    Ok((
        ReleaseRow {
            id: r.get(0)?,
            app: r.get(1)?,
            version: r.get(2)?,
            status: ReleaseStatus::parse(&status).unwrap_or(ReleaseStatus::Failed),
            reason: ReleaseReason::parse(&reason).unwrap_or(ReleaseReason::Deploy),
            strategy: r.get(5)?,
            description: r.get(6)?,
            image_ref: r.get(7)?,
            image_digest: r.get(8)?,
            definition: Value::Null,
            options: Value::Null,
            secrets_version: r.get(11)?,
            machines: Value::Null,
            user: r.get(13)?,
            created_at: r.get(14)?,
            started_at: r.get(15)?,
            finished_at: r.get(16)?,
            error: r.get(17)?,
            rollback_of: r.get(18)?,
        },
        [r.get(9)?, r.get(10)?, r.get(12)?],
    ))
}

fn finish(
    (mut rel, [definition, options, machines]): (ReleaseRow, [String; 3]),
) -> Result<ReleaseRow, AgentError> {
    rel.definition = serde_json::from_str(&definition).map_err(json_err)?;
    rel.options = serde_json::from_str(&options).map_err(json_err)?;
    rel.machines = serde_json::from_str(&machines).map_err(json_err)?;
    Ok(rel)
}

/// Writes `rel` as a new row: this host's own (`host` none) or a copy of
/// another host's, with `tail` after the values (a conflict clause).
fn insert(
    conn: &rusqlite::Connection,
    rel: &ReleaseRow,
    host: Option<&str>,
    tail: &str,
) -> rusqlite::Result<usize> {
    conn.execute(
        &format!(
            "INSERT INTO releases ({COLUMNS}, host) VALUES
             (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)
             {tail}"
        ),
        params![
            rel.id,
            rel.app,
            rel.version,
            rel.status.as_str(),
            rel.reason.as_str(),
            rel.strategy,
            rel.description,
            rel.image_ref,
            rel.image_digest,
            rel.definition.to_string(),
            rel.options.to_string(),
            rel.secrets_version,
            rel.machines.to_string(),
            rel.user,
            rel.created_at,
            rel.started_at,
            rel.finished_at,
            rel.error,
            rel.rollback_of,
            host,
        ],
    )
}

/// The version a release key names (`v3` or `3`; -1, which no release
/// has, for an id).
fn key_version(key: &str) -> i64 {
    key.strip_prefix('v').unwrap_or(key).parse().unwrap_or(-1)
}

/// The releases of `app` this host ran, oldest first.
pub(super) fn own(
    tx: &rusqlite::Transaction<'_>,
    app: &str,
) -> Result<Vec<ReleaseRow>, AgentError> {
    let mut st = tx
        .prepare(&format!(
            "SELECT {COLUMNS} FROM releases WHERE app_name = ?1 AND host IS NULL ORDER BY version"
        ))
        .map_err(db)?;
    let rows = st
        .query_map(params![app], row)
        .map_err(db)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(db)?;
    rows.into_iter().map(finish).collect()
}

impl Store {
    /// Inserts a release with the app's next version, unless another of
    /// the app's releases is unfinished (409 naming it; with `queue` it
    /// goes in behind it), in one transaction. Returns the version.
    pub fn insert_release(&self, rel: &ReleaseRow, queue: bool) -> Result<i64, AgentError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db)?;
        let running: Option<(i64, String, String, i64)> = tx
            .query_row(
                "SELECT version, status, user, created_at FROM releases
                 WHERE app_name = ?1 AND status IN ('pending', 'running', 'rolling_back')
                 AND host IS NULL ORDER BY version LIMIT 1",
                params![rel.app],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(db)?;
        if let Some((v, status, user, at)) = running.filter(|_| !queue) {
            let since = humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(at.max(0) as u64),
            );
            return Err(AgentError::Conflict(format!(
                "release v{v} of app {} by {user} is {status} since {since}; wait for it, cancel it, or deploy with --queue",
                rel.app
            )));
        }
        let version: i64 = tx
            .query_row(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM releases WHERE app_name = ?1",
                params![rel.app],
                |r| r.get(0),
            )
            .map_err(db)?;
        let mut rel = rel.clone();
        rel.version = version;
        insert(&tx, &rel, None, "").map_err(db)?;
        record(self, &tx, &CatalogChange::release(rel))?;
        tx.commit().map_err(db)?;
        Ok(version)
    }

    /// Writes what changes while a release runs; the cluster hears of it
    /// when its status changes.
    pub fn update_release(&self, rel: &ReleaseRow) -> Result<(), AgentError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db)?;
        let was: Option<String> = tx
            .query_row(
                "SELECT status FROM releases WHERE id = ?1",
                params![rel.id],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)?;
        tx.execute(
            "UPDATE releases SET status = ?2, image_digest = ?3, machines = ?4,
             started_at = ?5, finished_at = ?6, error = ?7, description = ?8
             WHERE id = ?1",
            params![
                rel.id,
                rel.status.as_str(),
                rel.image_digest,
                rel.machines.to_string(),
                rel.started_at,
                rel.finished_at,
                rel.error,
                rel.description,
            ],
        )
        .map_err(db)?;
        if was.is_some_and(|w| w != rel.status.as_str()) {
            record(self, &tx, &CatalogChange::release(rel.clone()))?;
        }
        tx.commit().map_err(db)?;
        Ok(())
    }

    /// Stores a release another host of the cluster ran (`host`), or its
    /// newer state. A version this host has given one of its own keeps
    /// its own (a copy that lost the race is dropped, with a warning).
    pub fn apply_release(&self, host: &str, rel: &ReleaseRow) -> Result<(), AgentError> {
        let r = insert(
            &self.conn(),
            rel,
            Some(host),
            "ON CONFLICT (id) DO UPDATE SET status = excluded.status,
             image_digest = excluded.image_digest, machines = excluded.machines,
             started_at = excluded.started_at, finished_at = excluded.finished_at,
             error = excluded.error, description = excluded.description
             WHERE releases.host IS NOT NULL",
        );
        match r {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                tracing::warn!(app = %rel.app, version = rel.version, release = %rel.id, %host, "a release of the same version is here already; the copy is dropped");
                Ok(())
            }
            Err(e) => Err(db(e)),
        }
    }

    /// The host that ran a release of `app` (by id or version), if it is
    /// another host's (`None`: this host's, or not here).
    pub fn release_host(&self, app: &str, key: &str) -> Result<Option<String>, AgentError> {
        self.conn()
            .query_row(
                "SELECT host FROM releases WHERE app_name = ?1 AND (id = ?2 OR version = ?3)",
                params![app, key, key_version(key)],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()
            .map(Option::flatten)
            .map_err(db)
    }

    /// A release of `app` by id or by version (`v3` or `3`).
    pub fn release(&self, app: &str, key: &str) -> Result<Option<ReleaseRow>, AgentError> {
        let r = self
            .conn()
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM releases WHERE app_name = ?1 AND (id = ?2 OR version = ?3)"
                ),
                params![app, key, key_version(key)],
                row,
            )
            .optional()
            .map_err(db)?;
        r.map(finish).transpose()
    }

    /// An app's releases, newest first.
    pub fn releases(&self, app: &str, limit: usize) -> Result<Vec<ReleaseRow>, AgentError> {
        let conn = self.conn();
        let mut st = conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM releases WHERE app_name = ?1 ORDER BY version DESC LIMIT ?2"
            ))
            .map_err(db)?;
        let rows = st
            .query_map(params![app, limit as i64], row)
            .map_err(db)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db)?;
        drop(st);
        drop(conn);
        rows.into_iter().map(finish).collect()
    }

    /// Every unfinished release this host runs (to resume at startup),
    /// oldest first.
    pub fn unfinished_releases(&self) -> Result<Vec<ReleaseRow>, AgentError> {
        let conn = self.conn();
        let mut st = conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM releases
                 WHERE status IN ('pending', 'running', 'rolling_back') AND host IS NULL
                 ORDER BY created_at"
            ))
            .map_err(db)?;
        let rows = st
            .query_map([], row)
            .map_err(db)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db)?;
        drop(st);
        drop(conn);
        rows.into_iter().map(finish).collect()
    }

    /// Appends a progress event; returns its sequence number.
    pub fn push_release_event(&self, id: &str, body: &Value) -> Result<i64, AgentError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db)?;
        let seq: i64 = tx
            .query_row(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM release_events WHERE release_id = ?1",
                params![id],
                |r| r.get(0),
            )
            .map_err(db)?;
        tx.execute(
            "INSERT INTO release_events (release_id, seq, at, body) VALUES (?1, ?2, ?3, ?4)",
            params![id, seq, now_ms(), body.to_string()],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(seq)
    }

    /// A release's events after `after`, in order.
    pub fn release_events(&self, id: &str, after: i64) -> Result<Vec<ReleaseEvent>, AgentError> {
        let conn = self.conn();
        let mut st = conn
            .prepare(
                "SELECT seq, at, body FROM release_events
                 WHERE release_id = ?1 AND seq > ?2 ORDER BY seq",
            )
            .map_err(db)?;
        let rows = st
            .query_map(params![id, after], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .map_err(db)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db)?;
        rows.into_iter()
            .map(|(seq, at, body)| {
                Ok(ReleaseEvent {
                    seq,
                    at,
                    body: serde_json::from_str(&body).map_err(json_err)?,
                })
            })
            .collect()
    }
}
