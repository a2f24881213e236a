//! The rest of the Machines API's operations: update and versions, restart,
//! suspend, signal, cordon, leases, metadata, exec/ps/memory, the
//! organization-wide listing, and app-scoped tokens.
//!
//! Leases (Fly's optimistic locks): a machine has at most one unexpired
//! lease; while it is held, update, start, stop, restart, suspend, cordon,
//! uncordon and destroy need the holder's nonce (`fly-machine-lease-nonce`),
//! except a forced destroy. Leases live in SQLite and expire by time.

use std::collections::BTreeMap;
use std::time::Duration;

use hangar_core::machine;
use hangar_core::spec::Parsed;
use hangar_core::{InstanceId, MachineState, Signal};
use hangar_runtime::{
    ExecOutput, ExecRequest, MemoryInfo, ProcessInfo, RuntimeError, Terminal, TtyRequest,
};
use tokio::sync::oneshot;

use crate::runner::Msg;
use crate::store::{self, LeaseRow, MachineRecord, NewVersion};
use crate::{Agent, AgentError, spec};

/// A full config replacement (`POST /apps/{app}/machines/{id}`).
#[derive(Debug, Clone)]
pub struct UpdateMachine {
    /// The new config, parsed where it entered.
    pub config: Parsed,
    /// Optimistic check: the version the client last saw.
    pub current_version: Option<String>,
    /// Leave the machine stopped with the new config.
    pub skip_launch: bool,
    /// Must match the machine's name if given (names are immutable).
    pub name: Option<String>,
    /// Must match the machine's region if given.
    pub region: Option<String>,
    /// Refuse (412) unless the app's secrets have reached this version.
    pub min_secrets_version: Option<i64>,
}

impl UpdateMachine {
    /// A replacement by `config`, run at once, with no preconditions.
    pub fn new(config: Parsed) -> UpdateMachine {
        UpdateMachine {
            config,
            current_version: None,
            skip_launch: false,
            name: None,
            region: None,
            min_secrets_version: None,
        }
    }
}

/// A page of the organization-wide machine listing.
#[derive(Debug, Clone)]
pub struct OrgMachines {
    /// The machines, ordered by last change.
    pub machines: Vec<MachineRecord>,
    /// Opaque cursor for the next page, if the page was full.
    pub next_cursor: Option<String>,
}

/// Longest lease.
const MAX_LEASE_TTL: u64 = 3600;

fn now_secs() -> i64 {
    store::now_ms() / 1000
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

impl Agent {
    /// Refuses a guarded request on a leased machine without its nonce.
    pub(crate) fn check_lease(
        &self,
        app: &str,
        id: &str,
        nonce: Option<&str>,
    ) -> Result<(), AgentError> {
        let rec = self.get_machine(app, id)?;
        match self.shared.store.lease(&rec.id)? {
            Some(l) if nonce != Some(l.nonce.as_str()) => Err(AgentError::Conflict(format!(
                "machine {} is leased by {} until {}; send its nonce in the fly-machine-lease-nonce header",
                rec.id,
                l.owner,
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + Duration::from_secs(l.expires_at.max(0) as u64)
                )
            ))),
            _ => Ok(()),
        }
    }

    // ---- update and versions ----------------------------------------------------

    /// Replaces a machine's config with a new version and (unless
    /// `skip_launch`) runs it: a running machine is stopped and started again.
    pub async fn update_machine(
        &self,
        app: &str,
        id: &str,
        req: UpdateMachine,
        nonce: Option<&str>,
    ) -> Result<MachineRecord, AgentError> {
        let rec = self.get_machine(app, id)?;
        self.check_lease(app, id, nonce)?;
        if let Some(v) = req.current_version.as_deref().filter(|v| !v.is_empty()) {
            if v != rec.instance_id {
                return Err(AgentError::Precondition(format!(
                    "machine version mismatch: current version is {}, not {v}",
                    rec.instance_id
                )));
            }
        }
        if let Some(n) = req.name.as_deref().filter(|n| !n.is_empty()) {
            if n != rec.name {
                return Err(AgentError::InvalidArgument(format!(
                    "a machine's name cannot change ({} to {n})",
                    rec.name
                )));
            }
        }
        if let Some(r) = req.region.as_deref().filter(|r| !r.is_empty()) {
            if r != rec.region {
                return Err(AgentError::InvalidArgument(format!(
                    "a machine's region cannot change ({} to {r})",
                    rec.region
                )));
            }
        }
        let config = req.config;
        self.check_isolation(&config.spec)?;
        self.check_capacity_for(&config.spec)?;
        self.check_standbys(app, Some(&rec.id), &config.spec)?;
        self.check_secrets_version(app, req.min_secrets_version)?;
        self.check_file_secrets(app, &config.spec)?;
        crate::volumes::check_mounts_unchanged(&rec.spec, &config.spec)?;
        let image_ref = self
            .shared
            .images
            .parse(&config.spec.image)
            .map_err(|e| AgentError::InvalidArgument(e.to_string()))?;
        // A standby stays stopped.
        let launch = !req.skip_launch && !config.spec.is_standby();
        let version = NewVersion {
            instance_id: InstanceId::generate().to_string(),
            config,
            image_ref,
        };
        self.request(
            app,
            rec.id.as_str(),
            machine::Input::Update { launch },
            Some(version),
        )
        .await?;
        self.get_machine(app, id)
    }

    /// A machine's config versions, newest first.
    pub fn machine_versions(
        &self,
        app: &str,
        id: &str,
    ) -> Result<Vec<(String, serde_json::Value)>, AgentError> {
        let rec = self.get_machine(app, id)?;
        self.shared.store.versions(&rec.id)
    }

    // ---- restart, suspend, signal, cordon ------------------------------------------

    /// Restarts a machine (a stopped one is started).
    pub async fn restart_machine(
        &self,
        app: &str,
        id: &str,
        signal: Option<Signal>,
        timeout: Option<Duration>,
        nonce: Option<&str>,
    ) -> Result<MachineState, AgentError> {
        let since = std::time::Instant::now();
        let r = async {
            let rec = self.get_machine(app, id)?;
            self.check_lease(app, id, nonce)?;
            self.request(
                app,
                rec.id.as_str(),
                machine::Input::Restart { signal, timeout },
                None,
            )
            .await
        }
        .await;
        hangar_metrics::get().machine_op("restart", since, &r);
        r
    }

    /// Suspends a machine (freezes its processes).
    pub async fn suspend_machine(
        &self,
        app: &str,
        id: &str,
        nonce: Option<&str>,
    ) -> Result<MachineState, AgentError> {
        let since = std::time::Instant::now();
        let r = async {
            let rec = self.get_machine(app, id)?;
            self.check_lease(app, id, nonce)?;
            self.request(app, rec.id.as_str(), machine::Input::Suspend, None)
                .await
        }
        .await;
        hangar_metrics::get().machine_op("suspend", since, &r);
        r
    }

    /// Sends a signal to a running machine's main process.
    pub async fn signal_machine(
        &self,
        app: &str,
        id: &str,
        signal: Signal,
    ) -> Result<(), AgentError> {
        let rec = self.get_machine(app, id)?;
        self.request(app, rec.id.as_str(), machine::Input::Signal(signal), None)
            .await?;
        Ok(())
    }

    /// Takes a machine out of (or back into) proxy rotation.
    pub fn cordon_machine(
        &self,
        app: &str,
        id: &str,
        cordoned: bool,
        nonce: Option<&str>,
    ) -> Result<(), AgentError> {
        let rec = self.get_machine(app, id)?;
        if rec.core.state == MachineState::Destroyed {
            return Err(AgentError::Precondition(
                machine::Denied::Destroyed.to_string(),
            ));
        }
        self.check_lease(app, id, nonce)?;
        self.shared.store.set_cordoned(&rec.id, cordoned)
    }

    // ---- leases -------------------------------------------------------------------

    /// The machine's lease, if held.
    pub fn get_lease(&self, app: &str, id: &str) -> Result<Option<LeaseRow>, AgentError> {
        let rec = self.get_machine(app, id)?;
        self.shared.store.lease(&rec.id)
    }

    /// Acquires a lease for `ttl`, or refreshes the one `nonce` names.
    /// Returns the lease and whether it is new.
    pub fn acquire_lease(
        &self,
        app: &str,
        id: &str,
        ttl: Duration,
        description: &str,
        owner: &str,
        nonce: Option<&str>,
    ) -> Result<(LeaseRow, bool), AgentError> {
        let rec = self.get_machine(app, id)?;
        if rec.core.state == MachineState::Destroyed {
            return Err(AgentError::Precondition(
                machine::Denied::Destroyed.to_string(),
            ));
        }
        let ttl = ttl.as_secs().clamp(1, MAX_LEASE_TTL) as i64;
        let expires_at = now_secs() + ttl;
        match (
            self.shared.store.lease(&rec.id)?,
            nonce.filter(|n| !n.is_empty()),
        ) {
            (Some(mut l), Some(n)) if n == l.nonce => {
                l.expires_at = expires_at;
                if !description.is_empty() {
                    l.description = description.to_owned();
                }
                self.shared.store.put_lease(&rec.id, &l)?;
                Ok((l, false))
            }
            (Some(l), _) => Err(AgentError::Conflict(format!(
                "lease currently held by {} on machine {}",
                l.owner, rec.id
            ))),
            (None, Some(_)) => Err(AgentError::NotFound("lease not found".into())),
            (None, None) => {
                let l = LeaseRow {
                    nonce: random_hex(6),
                    owner: owner.to_owned(),
                    description: description.to_owned(),
                    expires_at,
                    version: rec.instance_id.clone(),
                };
                self.shared.store.put_lease(&rec.id, &l)?;
                Ok((l, true))
            }
        }
    }

    /// Releases the lease `nonce` names.
    pub fn release_lease(
        &self,
        app: &str,
        id: &str,
        nonce: Option<&str>,
    ) -> Result<(), AgentError> {
        let rec = self.get_machine(app, id)?;
        let nonce = nonce.filter(|n| !n.is_empty()).ok_or_else(|| {
            AgentError::InvalidArgument("the fly-machine-lease-nonce header is required".into())
        })?;
        match self.shared.store.lease(&rec.id)? {
            None => Err(AgentError::NotFound("lease not found".into())),
            Some(l) if l.nonce != nonce => Err(AgentError::Conflict(format!(
                "lease on machine {} is held by {} with another nonce",
                rec.id, l.owner
            ))),
            Some(_) => self.shared.store.delete_lease(&rec.id),
        }
    }

    /// Drops a machine's lease whatever its nonce (`hangar machine leases clear`).
    pub fn clear_lease(&self, app: &str, id: &str) -> Result<(), AgentError> {
        let rec = self.get_machine(app, id)?;
        self.shared.store.delete_lease(&rec.id)
    }

    // ---- metadata -------------------------------------------------------------------

    /// The machine's metadata.
    pub fn get_metadata(
        &self,
        app: &str,
        id: &str,
    ) -> Result<BTreeMap<String, String>, AgentError> {
        Ok(self.get_machine(app, id)?.spec.metadata)
    }

    /// Upserts (`Some`) and removes (`None`) metadata keys; with
    /// `machine_version`, only if it is still the machine's version (412).
    pub async fn update_metadata(
        &self,
        app: &str,
        id: &str,
        changes: BTreeMap<String, Option<String>>,
        machine_version: Option<&str>,
    ) -> Result<(), AgentError> {
        let rec = self.get_machine(app, id)?;
        if let Some(v) = machine_version.filter(|v| !v.is_empty()) {
            if v != rec.instance_id {
                return Err(AgentError::Precondition(format!(
                    "machine version mismatch: current version is {}, not {v}",
                    rec.instance_id
                )));
            }
        }
        for k in changes.keys() {
            if k.is_empty() || k.len() > 256 {
                return Err(AgentError::InvalidArgument(format!(
                    "invalid metadata key {k:?}"
                )));
            }
        }
        let h = self
            .shared
            .runner(&rec.id)
            .ok_or_else(|| crate::denied(machine::Denied::Destroyed))?;
        let (reply, rx) = oneshot::channel();
        h.tx.send(Msg::Metadata(Box::new(crate::runner::Metadata {
            changes,
            reply,
        })))
        .await
        .map_err(|_| crate::denied(machine::Denied::Destroyed))?;
        rx.await
            .map_err(|_| crate::denied(machine::Denied::Destroyed))??;
        Ok(())
    }

    // ---- inside a running machine ------------------------------------------------------

    fn running(&self, app: &str, id: &str) -> Result<MachineRecord, AgentError> {
        let rec = self.get_machine(app, id)?;
        if rec.core.state != MachineState::Started {
            return Err(AgentError::Precondition(
                machine::Denied::NotRunning(rec.core.state).to_string(),
            ));
        }
        Ok(rec)
    }

    fn runtime_error(e: RuntimeError) -> AgentError {
        match e {
            RuntimeError::NotRunning(id) => {
                AgentError::Precondition(format!("machine {id} is not running"))
            }
            RuntimeError::InvalidSpec(m) => AgentError::InvalidArgument(m),
            other => AgentError::Runtime(other),
        }
    }

    /// Runs a command in a started machine.
    pub async fn exec(
        &self,
        app: &str,
        id: &str,
        req: ExecRequest,
    ) -> Result<ExecOutput, AgentError> {
        let rec = self.running(app, id)?;
        self.shared
            .runtime
            .exec(&rec.id, &req)
            .await
            .map_err(Self::runtime_error)
    }

    /// Runs an interactive command with a terminal in a started machine.
    pub async fn exec_tty(
        &self,
        app: &str,
        id: &str,
        req: TtyRequest,
    ) -> Result<Box<dyn Terminal>, AgentError> {
        let rec = self.running(app, id)?;
        if req.argv.is_empty() || req.argv.iter().any(|a| a.contains('\0')) {
            return Err(AgentError::InvalidArgument(
                "command must be a non-empty list of arguments without NUL bytes".into(),
            ));
        }
        self.shared
            .runtime
            .exec_tty(&rec.id, &req)
            .await
            .map_err(Self::runtime_error)
    }

    /// A started machine's processes.
    pub async fn processes(&self, app: &str, id: &str) -> Result<Vec<ProcessInfo>, AgentError> {
        let rec = self.running(app, id)?;
        self.shared
            .runtime
            .processes(&rec.id)
            .await
            .map_err(Self::runtime_error)
    }

    /// A started machine's memory.
    pub async fn memory(&self, app: &str, id: &str) -> Result<MemoryInfo, AgentError> {
        let rec = self.running(app, id)?;
        self.shared
            .runtime
            .memory(&rec.id)
            .await
            .map_err(Self::runtime_error)
    }

    /// Changes a started machine's memory limit until its next start (the
    /// config's `guest.memory_mb` is what the next start uses).
    pub async fn set_memory(
        &self,
        app: &str,
        id: &str,
        limit_mb: u64,
    ) -> Result<MemoryInfo, AgentError> {
        let rec = self.running(app, id)?;
        let max = spec::resources(&rec.spec, None).memory_mb;
        if limit_mb < 32 || limit_mb > max {
            return Err(AgentError::InvalidArgument(format!(
                "limit_mb must be between 32 and the machine's guest.memory_mb ({max})"
            )));
        }
        self.shared
            .runtime
            .set_memory_limit(&rec.id, limit_mb)
            .await
            .map_err(Self::runtime_error)?;
        self.memory(app, id).await
    }

    // ---- organization-wide listing ---------------------------------------------------

    /// Machines of every app of `org`, ordered by last change, paged.
    pub fn org_machines(
        &self,
        org: &str,
        include_deleted: bool,
        cursor: Option<&str>,
        updated_after_ms: Option<i64>,
        limit: usize,
    ) -> Result<OrgMachines, AgentError> {
        if org != crate::DEFAULT_ORG {
            return Err(AgentError::NotFound(format!(
                "organization {org:?} not found"
            )));
        }
        let mut after = match cursor.filter(|c| !c.is_empty()) {
            Some(c) => Some(decode_cursor(c)?),
            None => None,
        };
        if let Some(ms) = updated_after_ms {
            if after.as_ref().is_none_or(|(a, _)| *a < ms) {
                after = Some((ms, String::from("~")));
            }
        }
        let limit = limit.clamp(1, 1000);
        let machines = self
            .shared
            .store
            .org_machines(org, include_deleted, after, limit)?;
        let next_cursor = (machines.len() == limit)
            .then(|| {
                machines
                    .last()
                    .map(|m| encode_cursor(m.updated_at_ms, m.id.as_str()))
            })
            .flatten();
        Ok(OrgMachines {
            machines,
            next_cursor,
        })
    }

    // ---- tokens -----------------------------------------------------------------------

    /// Mints a token that can act on `app` only; stored hashed. Returns its
    /// record and the token itself (shown once, never stored). A token
    /// minted by an app token (`minter`) is of the same app and never
    /// outlives it: it expires when its minter does, or sooner.
    pub fn create_app_token(
        &self,
        app: &str,
        expiry: Option<Duration>,
        name: &str,
        minter: Option<&crate::TokenRow>,
    ) -> Result<(crate::TokenRow, String), AgentError> {
        let app = self.get_app(app)?;
        if name.chars().count() > 64 || name.chars().any(char::is_control) {
            return Err(AgentError::InvalidArgument(
                "token name: at most 64 characters, no control characters".into(),
            ));
        }
        if let Some(m) = minter {
            if m.app != app.name {
                return Err(AgentError::PermissionDenied(format!(
                    "a token of app {} cannot mint tokens for app {}",
                    m.app, app.name
                )));
            }
        }
        let asked = match expiry {
            Some(e) => {
                let secs = i64::try_from(e.as_secs())
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| {
                        AgentError::InvalidArgument("expiry must be at least one second".into())
                    })?;
                Some(now_secs().saturating_add(secs))
            }
            None => None,
        };
        let expires_at = match (asked, minter.and_then(|m| m.expires_at)) {
            (Some(a), Some(m)) => Some(a.min(m)),
            (a, m) => a.or(m),
        };
        let token = format!("hangar_app_{}", random_hex(24));
        let row = crate::TokenRow {
            id: format!("tok_{}", random_hex(8)),
            app: app.name,
            name: name.to_owned(),
            created_at: store::now_rfc3339(),
            expires_at,
            minted_by: minter.map(|m| m.id.clone()),
        };
        self.shared.store.insert_token(&row, &token_hash(&token))?;
        tracing::info!(app = %row.app, token = %row.id, "app token minted");
        Ok((row, token))
    }

    /// The app-scoped token `token` is, if any (unknown, revoked, expired
    /// and deleted apps' tokens are none).
    pub fn app_token(&self, token: &str) -> Result<Option<crate::TokenRow>, AgentError> {
        if !token.starts_with("hangar_app_") {
            return Ok(None);
        }
        self.shared.store.token_by_hash(&token_hash(token))
    }

    /// The tokens of an app, or of every app (`None`), expired ones too.
    pub fn list_tokens(&self, app: Option<&str>) -> Result<Vec<crate::TokenRow>, AgentError> {
        if let Some(a) = app {
            self.get_app(a)?;
        }
        self.shared.store.tokens(app)
    }

    /// Revokes a token (of `app`, when given) and the tokens it minted.
    pub fn revoke_token(&self, id: &str, app: Option<&str>) -> Result<(), AgentError> {
        if let Some(a) = app {
            self.get_app(a)?;
        }
        if self.shared.store.delete_token(id, app)? {
            tracing::info!(token = id, "token revoked");
            Ok(())
        } else {
            Err(AgentError::NotFound(format!("token {id} not found")))
        }
    }
}

/// SHA-256 of a token, hex.
fn token_hash(token: &str) -> String {
    use sha2::Digest;
    hex_encode(&sha2::Sha256::digest(token.as_bytes()))
}

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn encode_cursor(ms: i64, id: &str) -> String {
    hex_encode(format!("{ms}:{id}").as_bytes())
}

fn decode_cursor(c: &str) -> Result<(i64, String), AgentError> {
    let bad = || AgentError::InvalidArgument(format!("invalid cursor {c:?}"));
    if c.len() % 2 != 0 || c.len() > 200 {
        return Err(bad());
    }
    let bytes: Vec<u8> = (0..c.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&c[i..i + 2], 16))
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    let s = String::from_utf8(bytes).map_err(|_| bad())?;
    let (ms, id) = s.split_once(':').ok_or_else(bad)?;
    Ok((ms.parse().map_err(|_| bad())?, id.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_roundtrip() {
        let c = encode_cursor(1_700_000_000_123, "0123456789abcd");
        assert_eq!(
            decode_cursor(&c).unwrap(),
            (1_700_000_000_123, "0123456789abcd".to_owned())
        );
        assert!(decode_cursor("zz").is_err());
        assert!(decode_cursor("abc").is_err());
    }
}
