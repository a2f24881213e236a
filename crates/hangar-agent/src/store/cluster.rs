//! The cluster outbox and cursor: what this host changed in the
//! cluster-wide catalogue (apps and tokens), recorded in the transaction of
//! the change, and how far it has applied the changes of other hosts.

use rusqlite::{OptionalExtension, params};

use super::ips::IpAssignment;
use super::{AppRecord, ReleaseRow, Store, TokenRow, db};
use crate::AgentError;

/// A change to the cluster-wide catalogue.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CatalogChange {
    /// An app was created.
    App {
        /// Its id.
        id: String,
        /// Its name.
        name: String,
        /// Its organization.
        org_slug: String,
        /// Its network.
        network: String,
        /// Its numeric id.
        internal_numeric_id: i64,
        /// When (RFC 3339).
        created_at: String,
    },
    /// An app was deleted, with its tokens.
    AppDeleted {
        /// Its name.
        name: String,
    },
    /// A token was minted (its hash only).
    Token {
        /// Id.
        id: String,
        /// Its app.
        app: String,
        /// Its name.
        name: String,
        /// RFC 3339.
        created_at: String,
        /// Unix seconds.
        expires_at: Option<i64>,
        /// The token that minted it.
        minted_by: Option<String>,
        /// SHA-256 of the token, hex.
        hash: String,
    },
    /// A token was revoked, with those it minted.
    TokenDeleted {
        /// Its id.
        id: String,
    },
    /// A dedicated address was assigned to an app (every host's proxy
    /// listens on it: the addresses are anycast across the cluster).
    Ip {
        /// The address.
        ip: String,
        /// The app.
        app: String,
        /// Region.
        region: String,
        /// Fly's `service_name`.
        service_name: String,
        /// RFC 3339.
        created_at: String,
    },
    /// A dedicated address was released.
    IpReleased {
        /// The address.
        ip: String,
        /// The app that had it.
        app: String,
    },
    /// An app's secrets changed: sealed values (hex; every host of a
    /// cluster has the same secrets key) and digests, or `None` for a
    /// removal; the app's secrets version after the change.
    Secrets {
        /// The app.
        app: String,
        /// `(name, Some((sealed hex, digest)))`, or `(name, None)`.
        changes: Vec<(String, Option<(String, String)>)>,
        /// The version the change made.
        version: i64,
    },
    /// A release was made or its status changed (a copy for every host's
    /// listings; only its own host runs it).
    Release {
        /// The host that runs it (set when the change is sent).
        #[serde(default)]
        host: Option<String>,
        /// The release.
        release: Box<ReleaseRow>,
    },
}

impl CatalogChange {
    pub(crate) fn release(r: ReleaseRow) -> CatalogChange {
        CatalogChange::Release {
            host: None,
            release: Box::new(r),
        }
    }

    pub(crate) fn app(a: &AppRecord) -> CatalogChange {
        CatalogChange::App {
            id: a.id.clone(),
            name: a.name.clone(),
            org_slug: a.org_slug.clone(),
            network: a.network.clone(),
            internal_numeric_id: a.internal_numeric_id,
            created_at: a.created_at.clone(),
        }
    }

    pub(crate) fn ip(a: &IpAssignment) -> CatalogChange {
        CatalogChange::Ip {
            ip: a.ip.clone(),
            app: a.app.clone(),
            region: a.region.clone(),
            service_name: a.service_name.clone(),
            created_at: a.created_at.clone(),
        }
    }

    pub(crate) fn token(t: &TokenRow, hash: &str) -> CatalogChange {
        CatalogChange::Token {
            id: t.id.clone(),
            app: t.app.clone(),
            name: t.name.clone(),
            created_at: t.created_at.clone(),
            expires_at: t.expires_at,
            minted_by: t.minted_by.clone(),
            hash: hash.to_owned(),
        }
    }
}

/// Records `change` in the outbox, inside the caller's transaction, when
/// this host is in a cluster.
pub(crate) fn record(
    store: &Store,
    tx: &rusqlite::Transaction<'_>,
    change: &CatalogChange,
) -> Result<(), AgentError> {
    if !store.clustered() {
        return Ok(());
    }
    let body = serde_json::to_string(change)
        .map_err(|e| AgentError::Internal(format!("encoding a cluster change: {e}")))?;
    tx.execute(
        "INSERT INTO cluster_outbox (kind, body) VALUES ('catalog', ?1)",
        params![body],
    )
    .map_err(db)?;
    Ok(())
}

impl Store {
    /// Turns the outbox on: this host is in a cluster.
    pub fn set_clustered(&self) {
        self.clustered
            .store(true, std::sync::atomic::Ordering::Release);
    }

    pub(crate) fn clustered(&self) -> bool {
        self.clustered.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The oldest `limit` changes not yet sent, with their sequence numbers.
    pub fn outbox(&self, limit: usize) -> Result<Vec<(i64, CatalogChange)>, AgentError> {
        let conn = self.conn();
        let mut st = conn
            .prepare("SELECT seq, body FROM cluster_outbox ORDER BY seq LIMIT ?1")
            .map_err(db)?;
        let rows = st
            .query_map(params![limit as i64], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(db)?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, body) = row.map_err(db)?;
            match serde_json::from_str(&body) {
                Ok(c) => out.push((seq, c)),
                Err(e) => {
                    tracing::warn!(seq, error = %e, "dropping an unreadable cluster change");
                    conn.execute("DELETE FROM cluster_outbox WHERE seq = ?1", params![seq])
                        .map_err(db)?;
                }
            }
        }
        Ok(out)
    }

    /// Puts this host's whole catalogue in the outbox again (its apps,
    /// their tokens and secrets), for a cluster database that went back in
    /// time (restored from a backup) and lost what was sent since. Every
    /// change applies idempotently on the other hosts. Returns how many.
    pub fn requeue_catalog(&self) -> Result<usize, AgentError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db)?;
        let mut changes = Vec::new();
        {
            let mut st = tx
                .prepare(
                    "SELECT id, name, org_slug, network, internal_numeric_id, created_at, secrets_version
                     FROM apps ORDER BY name",
                )
                .map_err(db)?;
            let apps = st
                .query_map([], |r| {
                    Ok((
                        CatalogChange::App {
                            id: r.get(0)?,
                            name: r.get(1)?,
                            org_slug: r.get(2)?,
                            network: r.get(3)?,
                            internal_numeric_id: r.get(4)?,
                            created_at: r.get(5)?,
                        },
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(6)?,
                    ))
                })
                .map_err(db)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db)?;
            for (app, name, version) in apps {
                changes.push(app);
                let mut st = tx
                    .prepare(
                        "SELECT id, app_name, name, created_at, expires_at, minted_by, hash
                         FROM tokens WHERE app_name = ?1 ORDER BY id",
                    )
                    .map_err(db)?;
                let tokens = st
                    .query_map(params![name], |r| {
                        Ok(CatalogChange::Token {
                            id: r.get(0)?,
                            app: r.get(1)?,
                            name: r.get(2)?,
                            created_at: r.get(3)?,
                            expires_at: r.get(4)?,
                            minted_by: r.get(5)?,
                            hash: r.get(6)?,
                        })
                    })
                    .map_err(db)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(db)?;
                changes.extend(tokens);
                let mut st = tx
                    .prepare("SELECT name, sealed, digest FROM secrets WHERE app_name = ?1 ORDER BY name")
                    .map_err(db)?;
                let secrets = st
                    .query_map(params![name], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            Some((hex_encode(&r.get::<_, Vec<u8>>(1)?), r.get::<_, String>(2)?)),
                        ))
                    })
                    .map_err(db)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(db)?;
                if !secrets.is_empty() {
                    changes.push(CatalogChange::Secrets {
                        app: name.clone(),
                        changes: secrets,
                        version,
                    });
                }
                let mut st = tx
                    .prepare(
                        "SELECT ip, app_name, region, service_name, created_at FROM ip_assignments
                         WHERE app_name = ?1 AND shared = 0 ORDER BY ip",
                    )
                    .map_err(db)?;
                let ips = st
                    .query_map(params![name], |r| {
                        Ok(CatalogChange::Ip {
                            ip: r.get(0)?,
                            app: r.get(1)?,
                            region: r.get(2)?,
                            service_name: r.get(3)?,
                            created_at: r.get(4)?,
                        })
                    })
                    .map_err(db)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(db)?;
                changes.extend(ips);
                // The releases this host ran (the latest state of each).
                changes.extend(
                    super::releases::own(&tx, &name)?
                        .into_iter()
                        .map(CatalogChange::release),
                );
            }
        }

        let n = changes.len();
        for c in &changes {
            record(self, &tx, c)?;
        }
        tx.commit().map_err(db)?;
        Ok(n)
    }

    /// Forgets the sent changes up to `seq`.
    pub fn outbox_sent(&self, seq: i64) -> Result<(), AgentError> {
        self.conn()
            .execute("DELETE FROM cluster_outbox WHERE seq <= ?1", params![seq])
            .map_err(db)?;
        Ok(())
    }

    /// A value this host keeps about the cluster (its change-log cursor).
    pub fn cluster_value(&self, key: &str) -> Result<Option<String>, AgentError> {
        self.conn()
            .query_row(
                "SELECT value FROM cluster_state WHERE key = ?1",
                params![key],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)
    }

    /// Sets a value this host keeps about the cluster.
    pub fn set_cluster_value(&self, key: &str, value: &str) -> Result<(), AgentError> {
        self.conn()
            .execute(
                "INSERT INTO cluster_state (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map_err(db)?;
        Ok(())
    }

    /// Applies an app another host created: inserted, or when this host
    /// has an app of that name made at the same moment, given the
    /// cluster's id (the cluster's record wins; the two are the same app).
    pub fn apply_app(&self, a: &AppRecord) -> Result<(), AgentError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db)?;
        let existing: Option<String> = tx
            .query_row(
                "SELECT id FROM apps WHERE name = ?1",
                params![a.name],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)?;
        match existing {
            None => {
                tx.execute(
                    "INSERT INTO apps (id, name, org_slug, network, status, internal_numeric_id, created_at)
                     VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?6)",
                    params![a.id, a.name, a.org_slug, a.network, a.internal_numeric_id, a.created_at],
                )
                .map_err(db)?;
            }
            Some(old) if old != a.id => {
                tx.execute(
                    "UPDATE apps SET id = ?2, internal_numeric_id = ?3, created_at = ?4 WHERE name = ?1",
                    params![a.name, a.id, a.internal_numeric_id, a.created_at],
                )
                .map_err(db)?;
                tx.execute(
                    "UPDATE tokens SET app_id = ?2 WHERE app_id = ?1",
                    params![old, a.id],
                )
                .map_err(db)?;
            }
            Some(_) => {}
        }
        tx.commit().map_err(db)
    }

    /// Applies secrets another host changed; the app's version becomes at
    /// least theirs.
    pub fn apply_secrets(
        &self,
        app: &str,
        changes: &[(String, Option<(String, String)>)],
        version: i64,
    ) -> Result<(), AgentError> {
        let now = super::now_rfc3339();
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db)?;
        for (name, change) in changes {
            match change {
                Some((sealed_hex, digest)) => {
                    let sealed = hex_decode(sealed_hex).ok_or_else(|| {
                        AgentError::Internal(format!(
                            "secret {name} of {app}: unreadable sealed value"
                        ))
                    })?;
                    tx.execute(
                        "INSERT INTO secrets (app_name, name, sealed, digest, created_at, updated_at)
                         SELECT ?1, ?2, ?3, ?4, ?5, ?5 FROM apps WHERE name = ?1
                         ON CONFLICT (app_name, name) DO UPDATE SET
                           sealed = excluded.sealed, digest = excluded.digest,
                           updated_at = excluded.updated_at",
                        params![app, name, sealed, digest, now],
                    )
                    .map_err(db)?;
                }
                None => {
                    tx.execute(
                        "DELETE FROM secrets WHERE app_name = ?1 AND name = ?2",
                        params![app, name],
                    )
                    .map_err(db)?;
                }
            }
        }
        tx.execute(
            "UPDATE apps SET secrets_version = MAX(secrets_version, ?2) WHERE name = ?1",
            params![app, version],
        )
        .map_err(db)?;
        tx.commit().map_err(db)
    }

    /// Applies a token another host minted (known already: nothing).
    pub fn apply_token(&self, t: &TokenRow, hash: &str) -> Result<(), AgentError> {
        self.conn()
            .execute(
                "INSERT OR IGNORE INTO tokens (id, hash, app_name, app_id, name, created_at, expires_at, minted_by)
                 SELECT ?1, ?2, name, id, ?4, ?5, ?6, ?7 FROM apps WHERE name = ?3",
                params![t.id, hash, t.app, t.name, t.created_at, t.expires_at, t.minted_by],
            )
            .map_err(db)?;
        Ok(())
    }
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

pub(crate) fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(name: &str, id: &str) -> AppRecord {
        AppRecord {
            id: id.into(),
            name: name.into(),
            org_slug: "personal".into(),
            network: "default".into(),
            internal_numeric_id: 7,
            created_at: super::super::now_rfc3339(),
            machine_count: 0,
        }
    }

    #[test]
    fn local_changes_go_to_the_outbox_and_applied_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        // A single host records nothing.
        s.insert_app(&app("solo", "id-solo")).unwrap();
        assert!(s.outbox(10).unwrap().is_empty());
        s.set_clustered();
        s.insert_app(&app("web", "id-web")).unwrap();
        let t = TokenRow {
            id: "tok_1".into(),
            app: "web".into(),
            name: String::new(),
            created_at: super::super::now_rfc3339(),
            expires_at: None,
            minted_by: None,
        };
        s.insert_token(&t, "hash1").unwrap();
        assert!(s.delete_token("tok_1", None).unwrap());
        let out = s.outbox(10).unwrap();
        let kinds: Vec<&CatalogChange> = out.iter().map(|(_, c)| c).collect();
        assert!(matches!(kinds[0], CatalogChange::App { name, .. } if name == "web"));
        assert!(matches!(kinds[1], CatalogChange::Token { hash, .. } if hash == "hash1"));
        assert!(matches!(kinds[2], CatalogChange::TokenDeleted { id } if id == "tok_1"));
        s.outbox_sent(out.last().unwrap().0).unwrap();
        assert!(s.outbox(10).unwrap().is_empty());

        // Another host's app, token and deletion: applied, not sent back.
        s.apply_app(&app("api", "id-api")).unwrap();
        s.apply_token(
            &TokenRow {
                id: "tok_2".into(),
                app: "api".into(),
                ..t.clone()
            },
            "hash2",
        )
        .unwrap();
        assert_eq!(s.token_by_hash("hash2").unwrap().unwrap().app, "api");
        // The same app made here at the same moment takes the cluster's id,
        // and its tokens follow.
        s.apply_app(&app("web", "id-cluster")).unwrap();
        assert_eq!(s.get_app("web").unwrap().unwrap().id, "id-cluster");
        s.apply_token_deleted("tok_2").unwrap();
        assert!(s.token_by_hash("hash2").unwrap().is_none());
        s.apply_app_deleted("api").unwrap();
        assert!(s.get_app("api").unwrap().is_none());
        assert!(s.outbox(10).unwrap().is_empty());
        // Secrets: sealed bytes travel as hex; the version only grows.
        s.apply_secrets(
            "web",
            &[("A".into(), Some((hex_encode(b"sealed"), "d1".into())))],
            5,
        )
        .unwrap();
        assert_eq!(s.secrets_version("web").unwrap(), 5);
        s.apply_secrets("web", &[("A".into(), None)], 3).unwrap();
        assert_eq!(s.secrets_version("web").unwrap(), 5);
        assert!(s.outbox(10).unwrap().is_empty());
    }

    fn rel(id: &str) -> ReleaseRow {
        ReleaseRow {
            id: id.into(),
            app: "web".into(),
            version: 0,
            status: hangar_core::release::ReleaseStatus::Pending,
            reason: hangar_core::release::ReleaseReason::Deploy,
            strategy: "rolling".into(),
            description: String::new(),
            image_ref: "img".into(),
            image_digest: String::new(),
            definition: serde_json::json!({"app": "web"}),
            options: serde_json::json!({}),
            secrets_version: 0,
            machines: serde_json::json!([]),
            user: "admin".into(),
            created_at: 1,
            started_at: None,
            finished_at: None,
            error: None,
            rollback_of: None,
        }
    }

    #[test]
    fn releases_travel_with_their_host_and_only_it_runs_them() {
        use hangar_core::release::ReleaseStatus;
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        s.set_clustered();
        s.insert_app(&app("web", "id-web")).unwrap();
        s.outbox_sent(i64::MAX).unwrap();
        // Made here: sent with its version; a status change is sent, a
        // progress write that leaves the status alone is not.
        let mut r = rel("rel_1");
        r.version = s.insert_release(&r, false).unwrap();
        assert_eq!(r.version, 1);
        r.machines = serde_json::json!([{"id": "m1"}]);
        s.update_release(&r).unwrap();
        r.status = ReleaseStatus::Running;
        s.update_release(&r).unwrap();
        let out = s.outbox(10).unwrap();
        let sent: Vec<(i64, ReleaseStatus)> = out
            .iter()
            .filter_map(|(_, c)| match c {
                CatalogChange::Release {
                    host: None,
                    release,
                } => Some((release.version, release.status)),
                _ => None,
            })
            .collect();
        assert_eq!(
            sent,
            vec![(1, ReleaseStatus::Pending), (1, ReleaseStatus::Running)]
        );
        s.outbox_sent(out.last().unwrap().0).unwrap();
        r.status = ReleaseStatus::Complete;
        s.update_release(&r).unwrap();
        s.outbox_sent(i64::MAX).unwrap();

        // Another host's release: a copy, listed, never resumed here and
        // no bar to a release here, which takes the next version.
        let mut theirs = rel("rel_2");
        theirs.version = 2;
        theirs.status = ReleaseStatus::Running;
        s.apply_release("host-b", &theirs).unwrap();
        assert!(s.outbox(10).unwrap().is_empty());
        assert_eq!(
            s.release_host("web", "v2").unwrap().as_deref(),
            Some("host-b")
        );
        assert_eq!(s.release_host("web", "rel_1").unwrap(), None);
        assert!(s.unfinished_releases().unwrap().is_empty());
        theirs.status = ReleaseStatus::Complete;
        s.apply_release("host-b", &theirs).unwrap();
        assert_eq!(
            s.release("web", "rel_2").unwrap().unwrap().status,
            ReleaseStatus::Complete
        );
        let mine = rel("rel_3");
        assert_eq!(s.insert_release(&mine, false).unwrap(), 3);
        // A copy never overwrites this host's own, nor takes its version.
        let mut clash = rel("rel_3");
        clash.status = ReleaseStatus::Failed;
        s.apply_release("host-b", &clash).unwrap();
        let mut same_version = rel("rel_4");
        same_version.version = 3;
        s.apply_release("host-b", &same_version).unwrap();
        let r3 = s.release("web", "v3").unwrap().unwrap();
        assert_eq!(
            (r3.id.as_str(), r3.status),
            ("rel_3", ReleaseStatus::Pending)
        );
        assert_eq!(s.unfinished_releases().unwrap().len(), 1);
        // A restored database hears of this host's own releases again.
        s.outbox_sent(i64::MAX).unwrap();
        s.requeue_catalog().unwrap();
        let ids: Vec<String> = s
            .outbox(100)
            .unwrap()
            .into_iter()
            .filter_map(|(_, c)| match c {
                CatalogChange::Release { release, .. } => Some(release.id),
                _ => None,
            })
            .collect();
        assert_eq!(ids, vec!["rel_1".to_owned(), "rel_3".to_owned()]);
    }

    #[test]
    fn dedicated_addresses_travel_and_the_clusters_record_wins() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        s.set_clustered();
        s.insert_app(&app("web", "id-web")).unwrap();
        s.apply_app(&app("api", "id-api")).unwrap();
        let pool: crate::ips::IpPool = "127.0.2.0/30".parse().unwrap();
        let mut a = IpAssignment {
            ip: String::new(),
            app: "web".into(),
            region: "ams".into(),
            service_name: String::new(),
            shared: false,
            created_at: super::super::now_rfc3339(),
        };
        s.assign_from_pool(&pool, &mut a).unwrap();
        assert_eq!(a.ip, "127.0.2.1");
        // The shared address stays this host's own.
        s.insert_ip(&IpAssignment {
            ip: "10.0.0.1".into(),
            shared: true,
            ..a.clone()
        })
        .unwrap();
        let out = s.outbox(10).unwrap();
        assert!(
            matches!(&out.last().unwrap().1, CatalogChange::Ip { ip, app, .. } if ip == "127.0.2.1" && app == "web"),
            "{out:?}"
        );
        // A restored database hears of it again; the shared one never.
        s.outbox_sent(out.last().unwrap().0).unwrap();
        s.requeue_catalog().unwrap();
        let again = s.outbox(10).unwrap();
        let ips: Vec<&CatalogChange> = again
            .iter()
            .map(|(_, c)| c)
            .filter(|c| matches!(c, CatalogChange::Ip { .. }))
            .collect();
        assert_eq!(ips.len(), 1, "{again:?}");
        s.outbox_sent(again.last().unwrap().0).unwrap();
        // Another host's app won the address: it is theirs here too, and
        // the pool's next address is what this host gives next.
        s.apply_ip(&IpAssignment {
            app: "api".into(),
            ..a.clone()
        })
        .unwrap();
        let all = s.ip_assignments(None).unwrap();
        assert!(all.iter().any(|x| x.ip == "127.0.2.1" && x.app == "api"));
        assert!(!all.iter().any(|x| x.ip == "127.0.2.1" && x.app == "web"));
        let mut b = IpAssignment {
            ip: String::new(),
            ..a.clone()
        };
        s.assign_from_pool(&pool, &mut b).unwrap();
        assert_eq!(b.ip, "127.0.2.2");
        // Released here: the others hear of it; a release applied from
        // another host is not sent back.
        assert!(s.release_ip("web", "127.0.2.2").unwrap());
        let out = s.outbox(10).unwrap();
        assert!(matches!(
            &out.last().unwrap().1,
            CatalogChange::IpReleased { ip, app } if ip == "127.0.2.2" && app == "web"
        ));
        s.outbox_sent(out.last().unwrap().0).unwrap();
        s.apply_ip_released("api", "127.0.2.1").unwrap();
        assert!(s.ip_assignments(Some("api")).unwrap().is_empty());
        assert!(s.release_ip("web", "10.0.0.1").unwrap());
        assert!(s.outbox(10).unwrap().is_empty());
    }
}
