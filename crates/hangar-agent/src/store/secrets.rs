//! App secrets in SQLite: sealed values, digests, the app's version.

use rusqlite::{OptionalExtension, params};

use super::{Store, db, now_rfc3339};
use crate::AgentError;
use crate::secrets::{MAX_SECRETS, Sealed};

/// What the API shows of a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretInfo {
    /// Name.
    pub name: String,
    /// Digest of the value.
    pub digest: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

impl Store {
    /// The app's secrets version.
    pub fn secrets_version(&self, app: &str) -> Result<i64, AgentError> {
        self.conn()
            .query_row(
                "SELECT secrets_version FROM apps WHERE name = ?1",
                params![app],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)?
            .ok_or_else(|| AgentError::NotFound(format!("app {app} not found")))
    }

    /// Names, digests, times and sealed values of the app's secrets.
    pub(crate) fn sealed_secrets(
        &self,
        app: &str,
    ) -> Result<Vec<(SecretInfo, Vec<u8>)>, AgentError> {
        let conn = self.conn();
        let mut st = conn
            .prepare(
                "SELECT name, digest, created_at, updated_at, sealed FROM secrets WHERE app_name = ?1 ORDER BY name",
            )
            .map_err(db)?;
        let rows = st
            .query_map(params![app], |r| {
                Ok((
                    SecretInfo {
                        name: r.get(0)?,
                        digest: r.get(1)?,
                        created_at: r.get(2)?,
                        updated_at: r.get(3)?,
                    },
                    r.get(4)?,
                ))
            })
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }

    /// Applies sealed changes (`None` removes) in one transaction; bumps the
    /// version when anything changed. Returns the version.
    pub(crate) fn change_secrets(
        &self,
        app: &str,
        changes: &[(String, Option<Sealed>)],
    ) -> Result<i64, AgentError> {
        let now = now_rfc3339();
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db)?;
        let mut changed = 0;
        for (name, change) in changes {
            changed += match change {
                Some((sealed, digest)) => tx
                    .execute(
                        "INSERT INTO secrets (app_name, name, sealed, digest, created_at, updated_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?5)
                         ON CONFLICT (app_name, name) DO UPDATE SET
                           sealed = excluded.sealed, digest = excluded.digest,
                           updated_at = excluded.updated_at",
                        params![app, name, sealed, digest, now],
                    )
                    .map_err(db)?,
                None => tx
                    .execute(
                        "DELETE FROM secrets WHERE app_name = ?1 AND name = ?2",
                        params![app, name],
                    )
                    .map_err(db)?,
            };
        }
        let count: i64 = tx
            .query_row(
                "SELECT COUNT(*) FROM secrets WHERE app_name = ?1",
                params![app],
                |r| r.get(0),
            )
            .map_err(db)?;
        if count as usize > MAX_SECRETS {
            return Err(AgentError::InvalidArgument(format!(
                "an app can have at most {MAX_SECRETS} secrets"
            )));
        }
        if changed > 0 {
            tx.execute(
                "UPDATE apps SET secrets_version = secrets_version + 1 WHERE name = ?1",
                params![app],
            )
            .map_err(db)?;
        }
        let version = tx
            .query_row(
                "SELECT secrets_version FROM apps WHERE name = ?1",
                params![app],
                |r| r.get(0),
            )
            .map_err(db)?;
        if changed > 0 {
            super::cluster::record(
                self,
                &tx,
                &super::cluster::CatalogChange::Secrets {
                    app: app.to_owned(),
                    changes: changes
                        .iter()
                        .map(|(n, c)| {
                            (
                                n.clone(),
                                c.as_ref().map(|(sealed, digest)| {
                                    (super::cluster::hex_encode(sealed), digest.clone())
                                }),
                            )
                        })
                        .collect(),
                    version,
                },
            )?;
        }
        tx.commit().map_err(db)?;
        Ok(version)
    }
}
