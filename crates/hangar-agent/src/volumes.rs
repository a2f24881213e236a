//! Volumes as the API sees them: records in SQLite, images on the host
//! (`hangar-volumes`), Fly's rules.
//!
//! A volume belongs to an app and this host; it is bound to at most one
//! machine (from the machine's creation to its destruction), and a machine
//! mounts at most one volume. An encrypted volume's 64-byte key is sealed
//! with the secrets key. Snapshots are kept `snapshot_retention` days; with
//! `auto_backup_enabled` one is taken daily. Data outlives machines: it goes
//! only when the volume is deleted.

use std::time::Duration;

use hangar_core::spec::MachineSpec;
use hangar_core::{MachineId, MachineState};
use hangar_runtime::VolumeAttachment;
use hangar_volumes::{Fstype, GIB, Usage};

pub use crate::store::volumes::{SnapshotRecord, VolumeRecord};
use crate::store::{Store, now_rfc3339};
use crate::{Agent, AgentError};

/// Largest volume, GB (Fly's limit).
pub const MAX_SIZE_GB: i64 = 500;
/// Size when none is asked for, GB (Fly's default).
pub const DEFAULT_SIZE_GB: i64 = 3;
/// How often volume maintenance (backups, retention) runs, at real time.
pub const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(3600);
const DAY_MS: i64 = 24 * 3600 * 1000;

/// A volume to create.
#[derive(Debug, Clone, Default)]
pub struct NewVolume {
    /// Name (required).
    pub name: String,
    /// Region.
    pub region: Option<String>,
    /// Size, GB.
    pub size_gb: Option<i64>,
    /// Encrypt (default true).
    pub encrypted: Option<bool>,
    /// `ext4` or `raw`.
    pub fstype: Option<String>,
    /// Restore from a snapshot.
    pub snapshot_id: Option<String>,
    /// Fork a volume.
    pub source_volume_id: Option<String>,
    /// Days to keep snapshots.
    pub snapshot_retention: Option<i64>,
    /// Daily snapshots.
    pub auto_backup_enabled: Option<bool>,
    /// The contents of a volume of another host (a fork across hosts), as
    /// [`Agent::export_volume`] made them there.
    pub import: Option<VolumeImport>,
}

/// A volume's contents brought from another host.
#[derive(Debug, Clone)]
pub struct VolumeImport {
    /// The image file (this host's; copied, not moved).
    pub path: std::path::PathBuf,
    /// The source volume's id (its key is sealed for it).
    pub source_id: String,
    /// `ext4` or `raw`.
    pub fstype: String,
    /// The source's size, GB.
    pub size_gb: i64,
    /// Its key, sealed with the cluster's secrets key for `source_id`.
    pub key_sealed: Option<Vec<u8>>,
}

/// What [`Agent::export_volume`] made: a consistent copy of a volume's
/// image, and what a host needs to make a volume of it.
#[derive(Debug)]
pub struct VolumeExport {
    /// The copy, in the volumes directory (the caller removes it).
    pub path: std::path::PathBuf,
    /// The volume.
    pub volume: VolumeRecord,
    /// Its key, sealed for its id.
    pub key_sealed: Option<Vec<u8>>,
}

fn invalid(m: impl Into<String>) -> AgentError {
    AgentError::InvalidArgument(m.into())
}

fn host_err(e: hangar_volumes::VolumeError) -> AgentError {
    match e {
        hangar_volumes::VolumeError::Invalid(m) => AgentError::InvalidArgument(m),
        other => AgentError::Volumes(other),
    }
}

/// A copy whose task died.
fn copy_failed(e: tokio::task::JoinError) -> hangar_volumes::VolumeError {
    hangar_volumes::VolumeError::Io {
        op: "copying the volume".into(),
        source: std::io::Error::other(e),
    }
}

fn new_id(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let tail: String = (0..16)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}{tail}")
}

/// Checks a volume name as Fly does.
pub fn check_name(name: &str) -> Result<(), AgentError> {
    let ok = !name.is_empty()
        && name.len() <= 30
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "invalid volume name {name:?}: use up to 30 lowercase letters, digits and underscores"
        )))
    }
}

fn check_retention(days: i64) -> Result<i64, AgentError> {
    if (1..=60).contains(&days) {
        Ok(days)
    } else {
        Err(invalid(format!(
            "invalid snapshot_retention {days}: must be 1 to 60 days"
        )))
    }
}

/// The zone of this host: four hex digits derived from its name.
fn zone() -> String {
    use sha2::Digest;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    hex::encode(&sha2::Sha256::digest(host.as_bytes())[..2])
}

impl Agent {
    fn volume_key(&self, v: &VolumeRecord) -> Result<Option<[u8; 64]>, AgentError> {
        let Some(sealed) = &v.key_sealed else {
            return Ok(None);
        };
        let raw = self.shared.secrets.open("volumes", &v.id, sealed)?;
        let mut key = [0u8; 64];
        if raw.len() != 64 {
            return Err(AgentError::Internal(format!(
                "volume {} has a damaged key",
                v.id
            )));
        }
        key.copy_from_slice(&raw);
        Ok(Some(key))
    }

    /// A live volume of an app.
    pub fn get_volume(&self, app: &str, id: &str) -> Result<VolumeRecord, AgentError> {
        self.get_app(app)?;
        match self.shared.store.volume(id)? {
            Some(v) if v.app == app && v.state != "destroyed" => Ok(v),
            _ => Err(AgentError::NotFound(format!("volume {id} not found"))),
        }
    }

    /// The app's volumes.
    pub fn list_volumes(&self, app: &str) -> Result<Vec<VolumeRecord>, AgentError> {
        self.get_app(app)?;
        self.shared.store.volumes(Some(app))
    }

    /// Filesystem usage of a volume, when it is mounted on the host.
    pub fn volume_usage(&self, v: &VolumeRecord) -> Option<Usage> {
        self.shared.volumes.usage(&v.id)
    }

    fn check_capacity(&self, size_gb: i64) -> Result<(), AgentError> {
        let free = self
            .shared
            .volumes
            .free_bytes()
            .map_err(|source| AgentError::Io {
                context: "free space for volumes".into(),
                source,
            })?;
        if (size_gb as u64).saturating_mul(GIB) > free {
            return Err(invalid(format!(
                "insufficient capacity: {size_gb} GB asked, this host has {} GB free",
                free / GIB
            )));
        }
        Ok(())
    }

    /// Creates a volume: empty, restored from a snapshot, or forked from
    /// another volume. Nothing is recorded unless its image was made.
    pub async fn create_volume(
        &self,
        app: &str,
        req: NewVolume,
    ) -> Result<VolumeRecord, AgentError> {
        self.get_app(app)?;
        check_name(&req.name)?;
        if let Some(r) = req
            .region
            .as_deref()
            .map(str::trim)
            .filter(|r| !r.is_empty())
        {
            if r != self.region {
                return Err(AgentError::Unprocessable(format!(
                    "Region '{r}' cannot host your volume: this installation has region '{}'",
                    self.region
                )));
            }
        }
        let retention = check_retention(req.snapshot_retention.unwrap_or(5))?;
        let id = new_id("vol_");
        // Where the contents come from, and what they imply.
        let (source, source_volume, fstype, encrypted, key, min_size) = match (
            req.snapshot_id.as_deref(),
            req.source_volume_id.as_deref(),
        ) {
            (Some(_), Some(_)) => {
                return Err(invalid("give snapshot_id or source_volume_id, not both"));
            }
            (None, None) if req.import.is_some() => {
                let i = req.import.as_ref().expect("checked");
                let fstype = Fstype::parse(&i.fstype).unwrap_or(Fstype::Ext4);
                let key = match &i.key_sealed {
                    Some(k) => Some(self.shared.secrets.open("volumes", &i.source_id, k)?),
                    None => None,
                };
                (
                    Some(i.path.clone()),
                    None,
                    fstype,
                    key.is_some(),
                    key,
                    i.size_gb,
                )
            }
            (Some(snap), None) => {
                let s = self
                    .shared
                    .store
                    .snapshots(None, Some(app))?
                    .into_iter()
                    .find(|s| s.id == snap)
                    .ok_or_else(|| AgentError::NotFound(format!("snapshot {snap} not found")))?;
                let key = match &s.key_sealed {
                    Some(k) => Some(self.shared.secrets.open("snapshots", &s.id, k)?),
                    None => None,
                };
                let fstype = Fstype::parse(&s.fstype).unwrap_or(Fstype::Ext4);
                (
                    Some(self.shared.volumes.snapshot_file(&s.id)),
                    None,
                    fstype,
                    s.encrypted,
                    key,
                    s.volume_size,
                )
            }
            (None, Some(src)) => {
                let v = self.get_volume(app, src)?;
                let key = self.volume_key(&v)?.map(|k| k.to_vec());
                let fstype = Fstype::parse(&v.fstype).unwrap_or(Fstype::Ext4);
                (
                    Some(self.shared.volumes.image(&v.id)),
                    Some(v.id.clone()),
                    fstype,
                    v.encrypted,
                    key,
                    v.size_gb,
                )
            }
            (None, None) => {
                let fstype = match req.fstype.as_deref().filter(|f| !f.is_empty()) {
                    None => Fstype::Ext4,
                    Some(f) => Fstype::parse(f).ok_or_else(|| {
                        invalid(format!("invalid fstype {f:?}: must be ext4 or raw"))
                    })?,
                };
                // Fly encrypts by default; a raw volume has no filesystem
                // to encrypt files in.
                let encrypted = req.encrypted.unwrap_or(true) && fstype == Fstype::Ext4;
                if req.encrypted == Some(true) && fstype == Fstype::Raw {
                    return Err(invalid(
                        "raw volumes cannot be encrypted here (file-based encryption needs a filesystem)",
                    ));
                }
                let key = encrypted.then(|| {
                    let k: [u8; 64] = std::array::from_fn(|_| rand::random());
                    k.to_vec()
                });
                (None, None, fstype, encrypted, key, 1)
            }
        };
        let size_gb = req.size_gb.unwrap_or(DEFAULT_SIZE_GB.max(min_size));
        if !(1..=MAX_SIZE_GB).contains(&size_gb) {
            return Err(invalid(format!(
                "invalid size_gb {size_gb}: must be 1 to {MAX_SIZE_GB}"
            )));
        }
        if size_gb < min_size {
            return Err(invalid(format!(
                "invalid size_gb {size_gb}: the source is {min_size} GB"
            )));
        }
        self.check_capacity(size_gb)?;
        let host = &self.shared.volumes;
        let size_gb = match &source {
            None => {
                host.create(&id, size_gb as u64, fstype, encrypted)
                    .await
                    .map_err(host_err)?;
                size_gb
            }
            Some(src) => {
                let source_rec = match &source_volume {
                    Some(sv) => Some(self.get_volume(app, sv)?),
                    None => None,
                };
                self.with_volume_still(
                    source_rec.as_ref(),
                    host.create_from(&id, src, source_volume.as_deref(), size_gb as u64, fstype),
                )
                .await
                .map_err(host_err)? as i64
            }
        };
        let rec = VolumeRecord {
            id: id.clone(),
            app: app.to_owned(),
            name: req.name,
            state: "created".into(),
            size_gb,
            region: self.region.clone(),
            zone: zone(),
            encrypted,
            fstype: fstype.as_str().into(),
            key_sealed: key.map(|k| self.shared.secrets.seal("volumes", &id, &k)),
            attached_machine_id: None,
            snapshot_retention: retention,
            auto_backup_enabled: req.auto_backup_enabled.unwrap_or(true),
            created_at: now_rfc3339(),
        };
        if let Err(e) = self.shared.store.insert_volume(&rec) {
            let _ = host.destroy(&id).await;
            return Err(e);
        }
        tracing::info!(app, volume = %id, size_gb, encrypted, "volume created");
        Ok(rec)
    }

    /// A consistent copy of volume `id`'s image (frozen while copied when
    /// it is mounted), for another host to make a volume of (a fork across
    /// hosts).
    pub async fn export_volume(&self, app: &str, id: &str) -> Result<VolumeExport, AgentError> {
        let v = self.get_volume(app, id)?;
        let name = new_id("vx_");
        let host = self.shared.volumes.clone();
        let (vid, xid) = (v.id.clone(), name.clone());
        self.with_volume_still(Some(&v), async move {
            tokio::task::spawn_blocking(move || host.snapshot(&vid, &xid))
                .await
                .unwrap_or_else(|e| Err(copy_failed(e)))
        })
        .await
        .map_err(host_err)?;
        Ok(VolumeExport {
            path: self.shared.volumes.snapshot_file(&name),
            key_sealed: v.key_sealed.clone(),
            volume: v,
        })
    }

    /// Where a volume's image from another host is put while it is made
    /// into a volume here (in the volumes directory, so copies stay on one
    /// file system).
    pub fn import_path(&self) -> std::path::PathBuf {
        self.shared.volumes.snapshot_file(&new_id("vi_"))
    }

    /// Changes a volume's snapshot settings.
    pub fn update_volume(
        &self,
        app: &str,
        id: &str,
        snapshot_retention: Option<i64>,
        auto_backup_enabled: Option<bool>,
    ) -> Result<VolumeRecord, AgentError> {
        let mut v = self.get_volume(app, id)?;
        if let Some(r) = snapshot_retention {
            v.snapshot_retention = check_retention(r)?;
        }
        if let Some(a) = auto_backup_enabled {
            v.auto_backup_enabled = a;
        }
        self.shared.store.update_volume_row(&v)?;
        Ok(v)
    }

    /// The live machine a volume is bound to, if any (a binding left by a
    /// destroyed machine is released on the way).
    fn holder(&self, v: &mut VolumeRecord) -> Result<Option<String>, AgentError> {
        let Some(m) = v.attached_machine_id.clone() else {
            return Ok(None);
        };
        let live = self
            .shared
            .store
            .get_machine(&v.app, &m)?
            .is_some_and(|r| r.core.state != MachineState::Destroyed);
        if live {
            return Ok(Some(m));
        }
        v.attached_machine_id = None;
        self.shared.store.update_volume_row(v)?;
        Ok(None)
    }

    /// How many volumes an app has (not destroyed).
    pub fn volume_count(&self, app: &str) -> Result<i64, AgentError> {
        Ok(self.shared.store.volumes(Some(app))?.len() as i64)
    }

    /// The volumes of an app that are not destroyed.
    pub(crate) fn live_volumes(&self, app: &str) -> Result<Vec<VolumeRecord>, AgentError> {
        self.shared.store.volumes(Some(app))
    }

    /// Removes the data of every volume and snapshot of an app whose
    /// machines are all destroyed (its rows go with the app's).
    pub(crate) async fn remove_app_volumes(&self, app: &str) -> Result<(), AgentError> {
        for v in self.shared.store.volumes(Some(app))? {
            self.shared.volumes.destroy(&v.id).await.map_err(host_err)?;
            tracing::info!(app, volume = %v.id, "volume destroyed with its app");
        }
        for s in self.shared.store.snapshots(None, Some(app))? {
            self.shared
                .volumes
                .delete_snapshot(&s.id)
                .map_err(host_err)?;
        }
        Ok(())
    }

    /// Deletes a volume and its data; refused while a machine holds it.
    pub async fn delete_volume(&self, app: &str, id: &str) -> Result<VolumeRecord, AgentError> {
        let mut v = self.get_volume(app, id)?;
        if let Some(m) = self.holder(&mut v)? {
            return Err(AgentError::Precondition(format!(
                "failed_precondition: volume is currently bound to machine: {m}"
            )));
        }
        self.shared.volumes.destroy(&v.id).await.map_err(host_err)?;
        v.state = "destroyed".into();
        self.shared.store.update_volume_row(&v)?;
        tracing::info!(app, volume = %id, "volume destroyed");
        Ok(v)
    }

    /// Grows a volume; returns it and whether its machine must restart to
    /// see the new size.
    pub async fn extend_volume(
        &self,
        app: &str,
        id: &str,
        size_gb: i64,
    ) -> Result<(VolumeRecord, bool), AgentError> {
        let mut v = self.get_volume(app, id)?;
        if size_gb <= v.size_gb {
            return Err(invalid(format!(
                "invalid size_gb {size_gb}: volumes only grow, and {} is {} GB",
                v.id, v.size_gb
            )));
        }
        if size_gb > MAX_SIZE_GB {
            return Err(invalid(format!(
                "invalid size_gb {size_gb}: at most {MAX_SIZE_GB}"
            )));
        }
        self.check_capacity(size_gb - v.size_gb)?;
        let fstype = Fstype::parse(&v.fstype).unwrap_or(Fstype::Ext4);
        let grown = match self.guest_of(&v) {
            // A microVM has the volume as a disk: the image grows here, the
            // disk and its file system in the VM (or at its next start).
            Some(m) if fstype == Fstype::Ext4 => {
                let host = &self.shared.volumes;
                host.extend_image(&v.id, size_gb as u64)
                    .await
                    .map_err(host_err)?;
                let bytes = size_gb as u64 * (1 << 30);
                match self.shared.runtime.grow_volume(&m, &v.id, bytes).await {
                    Ok(true) => {
                        host.growth_done(&v.id);
                        true
                    }
                    Ok(false) => false,
                    Err(e) => {
                        tracing::info!(volume = %v.id, error = %e, "online growth in the VM failed; the file system grows at the next start");
                        false
                    }
                }
            }
            _ => self
                .shared
                .volumes
                .extend(&v.id, size_gb as u64, fstype)
                .await
                .map_err(host_err)?,
        };
        v.size_gb = size_gb;
        self.shared.store.update_volume_row(&v)?;
        Ok((v, !grown))
    }

    /// The machine that has volume `v` as a disk of its own kernel (a
    /// microVM), if one runs with it.
    fn guest_of(&self, v: &VolumeRecord) -> Option<MachineId> {
        v.attached_machine_id
            .as_deref()
            .and_then(|m| m.parse::<MachineId>().ok())
            .filter(|m| self.shared.runtime.volumes_in_guest(m))
    }

    /// Runs `copy` (of volume `v`'s image) with the volume held still: a
    /// volume a microVM has as a disk is frozen inside the guest (the host
    /// cannot freeze a file system it has not mounted) and thawed after;
    /// others are frozen by the host's copy itself.
    async fn with_volume_still<T>(
        &self,
        v: Option<&VolumeRecord>,
        copy: impl std::future::Future<Output = Result<T, hangar_volumes::VolumeError>>,
    ) -> Result<T, hangar_volumes::VolumeError> {
        let guest = v.and_then(|v| Some((self.guest_of(v)?, v.id.clone())));
        if let Some((m, vid)) = &guest {
            self.shared
                .runtime
                .freeze_volume(m, vid)
                .await
                .map_err(|e| hangar_volumes::VolumeError::Io {
                    op: format!("freezing volume {vid} in machine {m}"),
                    source: std::io::Error::other(e),
                })?;
        }
        let r = copy.await;
        if let Some((m, vid)) = &guest
            && let Err(e) = self.shared.runtime.thaw_volume(m, vid).await
        {
            tracing::warn!(volume = %vid, machine = %m, error = %e, "thawing a volume in its VM failed; it thaws itself in time");
        }
        r
    }

    /// A volume's snapshots, oldest first.
    pub fn list_snapshots(&self, app: &str, id: &str) -> Result<Vec<SnapshotRecord>, AgentError> {
        self.get_app(app)?;
        let snaps = self.shared.store.snapshots(Some(id), Some(app))?;
        if snaps.is_empty() {
            // Snapshots outlive their volume; an unknown id is a 404.
            self.get_volume(app, id)?;
        }
        Ok(snaps)
    }

    /// Takes a snapshot of a volume now.
    pub async fn create_snapshot(&self, app: &str, id: &str) -> Result<SnapshotRecord, AgentError> {
        let v = self.get_volume(app, id)?;
        let snap = new_id("vs_");
        let host = self.shared.volumes.clone();
        let (vid, sid) = (v.id.clone(), snap.clone());
        let (size, digest) = self
            .with_volume_still(Some(&v), async move {
                tokio::task::spawn_blocking(move || host.snapshot(&vid, &sid))
                    .await
                    .unwrap_or_else(|e| Err(copy_failed(e)))
            })
            .await
            .map_err(host_err)?;
        let key = self.volume_key(&v)?;
        let rec = SnapshotRecord {
            id: snap.clone(),
            volume_id: v.id.clone(),
            size: size as i64,
            volume_size: v.size_gb,
            digest,
            status: "created".into(),
            retention_days: v.snapshot_retention,
            fstype: v.fstype.clone(),
            encrypted: v.encrypted,
            key_sealed: key.map(|k| self.shared.secrets.seal("snapshots", &snap, &k)),
            created_at: now_rfc3339(),
            created_at_ms: self.shared.clock.now_ms(),
        };
        if let Err(e) = self.shared.store.insert_snapshot(app, &rec) {
            let _ = self.shared.volumes.delete_snapshot(&snap);
            return Err(e);
        }
        tracing::info!(app, volume = %id, snapshot = %snap, size, "snapshot taken");
        Ok(rec)
    }

    /// Volume upkeep: removes snapshots past their retention and takes the
    /// daily snapshot of volumes with `auto_backup_enabled`. A "day" is
    /// shortened by the schedule time scale (for tests).
    pub async fn maintain_volumes(&self) -> Result<(), AgentError> {
        let _one_at_a_time = self.shared.maintenance.lock().await;
        let day = DAY_MS;
        let now = self.shared.clock.now_ms();
        for s in self.shared.store.snapshots(None, None)? {
            if s.created_at_ms + s.retention_days * day <= now {
                self.shared
                    .volumes
                    .delete_snapshot(&s.id)
                    .map_err(host_err)?;
                self.shared.store.delete_snapshot_row(&s.id)?;
                tracing::info!(snapshot = %s.id, "snapshot expired");
            }
        }
        for v in self.shared.store.volumes(None)? {
            if !v.auto_backup_enabled {
                continue;
            }
            let last = self
                .shared
                .store
                .snapshots(Some(&v.id), None)?
                .iter()
                .map(|s| s.created_at_ms)
                .max();
            if last.is_none_or(|t| t + day <= now) {
                if let Err(e) = self.create_snapshot(&v.app, &v.id).await {
                    tracing::warn!(volume = %v.id, error = %e, "automatic snapshot failed");
                }
            }
        }
        Ok(())
    }

    /// Checks a config's mounts against the app's volumes; returns the
    /// volume to bind, if any.
    pub(crate) fn mount_volume(
        &self,
        app: &str,
        machine: Option<&str>,
        spec: &MachineSpec,
    ) -> Result<Option<String>, AgentError> {
        let Some(m) = spec.mounts.first() else {
            return Ok(None);
        };
        let vol = m.volume.as_str();
        let mut v = self.get_volume(app, vol)?;
        if v.fstype != "ext4" {
            return Err(invalid(format!(
                "volume {vol} is {}: container machines mount ext4 volumes only",
                v.fstype
            )));
        }
        if let Some(holder) = self.holder(&mut v)? {
            if Some(holder.as_str()) != machine {
                return Err(AgentError::Conflict(format!(
                    "volume {vol} is already attached to machine {holder}"
                )));
            }
        }
        Ok(Some(v.id))
    }

    /// Binds `volume` to `machine` (after [`Agent::mount_volume`]).
    pub(crate) fn bind_volume(&self, volume: &str, machine: &MachineId) -> Result<(), AgentError> {
        if !self.shared.store.bind_volume(volume, machine.as_str())? {
            return Err(AgentError::Conflict(format!(
                "volume {volume} is already attached to another machine"
            )));
        }
        Ok(())
    }
}

/// Mounts must not change on update (a machine keeps its volume).
pub(crate) fn check_mounts_unchanged(
    old: &MachineSpec,
    new: &MachineSpec,
) -> Result<(), AgentError> {
    if old.mounts != new.mounts {
        return Err(invalid(
            "mounts cannot change on update: destroy the machine and create a new one with the other volume",
        ));
    }
    Ok(())
}

/// The volumes a machine's config mounts, with their keys, for the runtime.
pub(crate) fn attachments(
    store: &Store,
    secrets: &crate::secrets::SecretBox,
    spec: &MachineSpec,
) -> Result<Vec<VolumeAttachment>, AgentError> {
    let mut out = Vec::new();
    for m in &spec.mounts {
        let id = m.volume.as_str();
        let v = store
            .volume(id)?
            .filter(|v| v.state != "destroyed")
            .ok_or_else(|| AgentError::NotFound(format!("volume {id} not found")))?;
        let key = match &v.key_sealed {
            Some(sealed) => {
                let raw = secrets.open("volumes", &v.id, sealed)?;
                let mut k = [0u8; 64];
                if raw.len() != 64 {
                    return Err(AgentError::Internal(format!(
                        "volume {id} has a damaged key"
                    )));
                }
                k.copy_from_slice(&raw);
                Some(k)
            }
            None => None,
        };
        out.push(VolumeAttachment {
            id: v.id,
            guest_path: m.path.as_str().to_owned(),
            key,
        });
    }
    Ok(out)
}
