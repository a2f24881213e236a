//! Apps and their tokens.

use rusqlite::{OptionalExtension, params};

use super::cluster::{CatalogChange, record};
use super::{Store, db, now_ms};
use crate::AgentError;

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

impl Store {
    /// Inserts an app; `Conflict` when the name is taken.
    pub fn insert_app(&self, app: &AppRecord) -> Result<(), AgentError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db)?;
        let r = tx.execute(
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
            Ok(_) => {}
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                return Err(AgentError::Conflict(format!(
                    "app name {:?} is already taken",
                    app.name
                )));
            }
            Err(e) => return Err(db(e)),
        }
        record(self, &tx, &CatalogChange::app(app))?;
        tx.commit().map_err(db)
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

    /// The private network of the app named `name` (without counting its
    /// machines, as [`Store::get_app`] does).
    pub fn app_network(&self, name: &str) -> Result<Option<String>, AgentError> {
        self.conn()
            .prepare_cached("SELECT network FROM apps WHERE name = ?1")
            .and_then(|mut st| st.query_row(params![name], |r| r.get(0)).optional())
            .map_err(db)
    }

    /// Whether an app named `name` exists (without counting its machines).
    pub fn app_exists(&self, name: &str) -> Result<bool, AgentError> {
        self.conn()
            .prepare_cached("SELECT 1 FROM apps WHERE name = ?1")
            .and_then(|mut st| st.exists(params![name]))
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
        self.delete_app_as(name, true)
    }

    /// [`Store::delete_app`] of an app another host deleted.
    pub fn apply_app_deleted(&self, name: &str) -> Result<(), AgentError> {
        self.delete_app_as(name, false)
    }

    fn delete_app_as(&self, name: &str, publish: bool) -> Result<(), AgentError> {
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
        tx.execute("DELETE FROM releases WHERE app_name = ?1", params![name])
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
        if publish {
            record(
                self,
                &tx,
                &CatalogChange::AppDeleted {
                    name: name.to_owned(),
                },
            )?;
        }
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

    /// Stores an app-scoped token by its hash, bound to its app's id.
    pub fn insert_token(&self, t: &TokenRow, hash: &str) -> Result<(), AgentError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db)?;
        let n = tx
            .execute(
                "INSERT INTO tokens (id, hash, app_name, app_id, name, created_at, expires_at, minted_by)
                 SELECT ?1, ?2, name, id, ?4, ?5, ?6, ?7 FROM apps WHERE name = ?3",
                params![t.id, hash, t.app, t.name, t.created_at, t.expires_at, t.minted_by],
            )
            .map_err(db)?;
        if n == 0 {
            return Err(AgentError::NotFound(format!("app {} not found", t.app)));
        }
        record(self, &tx, &CatalogChange::token(t, hash))?;
        tx.commit().map_err(db)
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
        self.delete_token_as(id, app, true)
    }

    /// [`Store::delete_token`] of a token another host revoked.
    pub fn apply_token_deleted(&self, id: &str) -> Result<(), AgentError> {
        self.delete_token_as(id, None, false).map(|_| ())
    }

    fn delete_token_as(
        &self,
        id: &str,
        app: Option<&str>,
        publish: bool,
    ) -> Result<bool, AgentError> {
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
            if publish {
                record(
                    self,
                    &tx,
                    &CatalogChange::TokenDeleted { id: id.to_owned() },
                )?;
            }
        }
        tx.commit().map_err(db)?;
        Ok(n > 0)
    }
}
