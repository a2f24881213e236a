//! Apps' public addresses in SQLite (`ip_assignments`).

use rusqlite::{OptionalExtension, params};

use super::cluster::{CatalogChange, record};
use super::{Store, db};
use crate::AgentError;
use crate::ips::IpPool;

/// One assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpAssignment {
    /// The address.
    pub ip: String,
    /// The app.
    pub app: String,
    /// Region.
    pub region: String,
    /// Fly's `service_name`.
    pub service_name: String,
    /// The proxy's shared address.
    pub shared: bool,
    /// RFC 3339.
    pub created_at: String,
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<IpAssignment> {
    Ok(IpAssignment {
        ip: r.get(0)?,
        app: r.get(1)?,
        region: r.get(2)?,
        service_name: r.get(3)?,
        shared: r.get::<_, i64>(4)? != 0,
        created_at: r.get(5)?,
    })
}

const COLUMNS: &str = "ip, app_name, region, service_name, shared, created_at";

/// Records `a` (in a transaction or not).
fn insert_row(conn: &rusqlite::Connection, a: &IpAssignment) -> Result<(), AgentError> {
    conn.execute(
        &format!("INSERT INTO ip_assignments ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
        params![
            a.ip,
            a.app,
            a.region,
            a.service_name,
            a.shared as i64,
            a.created_at
        ],
    )
    .map_err(db)?;
    Ok(())
}

impl Store {
    /// An app's assignments.
    pub fn ip_assignments(&self, app: Option<&str>) -> Result<Vec<IpAssignment>, AgentError> {
        let conn = self.conn();
        let mut st = conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM ip_assignments WHERE ?1 IS NULL OR app_name = ?1 ORDER BY created_at, ip"
            ))
            .map_err(db)?;
        let rows = st.query_map(params![app], row).map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }

    pub(crate) fn insert_ip(&self, a: &IpAssignment) -> Result<(), AgentError> {
        insert_row(&self.conn(), a)
    }

    /// Takes the first free address of `pool` for `a` (its `ip` is
    /// filled in), in one transaction.
    pub(crate) fn assign_from_pool(
        &self,
        pool: &IpPool,
        a: &mut IpAssignment,
    ) -> Result<(), AgentError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db)?;
        let mut chosen = None;
        for ip in pool.addresses() {
            let taken = tx
                .query_row(
                    "SELECT 1 FROM ip_assignments WHERE ip = ?1",
                    params![ip.to_string()],
                    |_| Ok(()),
                )
                .optional()
                .map_err(db)?
                .is_some();
            if !taken {
                chosen = Some(ip);
                break;
            }
        }
        let ip = chosen.ok_or_else(|| {
            AgentError::Unprocessable("the IP pool of this installation is used up".into())
        })?;
        a.ip = ip.to_string();
        insert_row(&tx, a)?;
        record(self, &tx, &CatalogChange::ip(a))?;
        tx.commit().map_err(db)
    }

    /// Applies a dedicated address another host assigned: it is `a.app`'s
    /// from now on (the cluster's record wins over an assignment made here
    /// at the same moment).
    pub fn apply_ip(&self, a: &IpAssignment) -> Result<(), AgentError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db)?;
        tx.execute(
            "DELETE FROM ip_assignments WHERE ip = ?1 AND shared = 0",
            params![a.ip],
        )
        .map_err(db)?;
        insert_row(&tx, a)?;
        tx.commit().map_err(db)
    }

    /// Applies a release another host made.
    pub fn apply_ip_released(&self, app: &str, ip: &str) -> Result<(), AgentError> {
        self.conn()
            .execute(
                "DELETE FROM ip_assignments WHERE app_name = ?1 AND ip = ?2 AND shared = 0",
                params![app, ip],
            )
            .map_err(db)?;
        Ok(())
    }

    /// Removes an app's assignment; whether there was one.
    pub fn release_ip(&self, app: &str, ip: &str) -> Result<bool, AgentError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db)?;
        let shared: Option<i64> = tx
            .query_row(
                "SELECT shared FROM ip_assignments WHERE app_name = ?1 AND ip = ?2",
                params![app, ip],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)?;
        let Some(shared) = shared else {
            return Ok(false);
        };
        tx.execute(
            "DELETE FROM ip_assignments WHERE app_name = ?1 AND ip = ?2",
            params![app, ip],
        )
        .map_err(db)?;
        if shared == 0 {
            record(
                self,
                &tx,
                &CatalogChange::IpReleased {
                    ip: ip.to_owned(),
                    app: app.to_owned(),
                },
            )?;
        }
        tx.commit().map_err(db)?;
        Ok(true)
    }
}
