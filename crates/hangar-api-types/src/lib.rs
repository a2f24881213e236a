//! Fly Machines API wire types, as `hangard` accepts and emits them.
//!
//! Field names and shapes follow Fly's OpenAPI document
//! (`https://docs.machines.dev/spec/openapi3.json`) and what `fly-go` sends.
//! Inputs are liberal (unknown fields, JSON nulls, numbers where strings are
//! expected); outputs are strict (spec names only, absent rather than null).
//!
//! A machine's `config` must round-trip losslessly: clients GET it, edit one
//! field and POST it back whole. The fields Hangar interprets are typed; every
//! other field, at every level that has a typed struct, is kept verbatim in
//! the struct's `extra` map and emitted again as received.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use hangar_core::GoDuration;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// Extra (uninterpreted) fields of an object, kept as received. JSON nulls
/// are dropped: to Go clients a null and an absent field mean the same.
pub type Extra = Map<String, Value>;

fn drop_nulls<'de, D: Deserializer<'de>>(d: D) -> Result<Extra, D::Error> {
    let mut m = Extra::deserialize(d)?;
    m.retain(|_, v| !v.is_null());
    Ok(m)
}

/// A string-to-string map that also takes numbers and booleans as values
/// (`{"PORT": 8080}`), as a hand-written client may send them.
fn loose_string_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    let raw: Option<BTreeMap<String, Value>> = Option::deserialize(d)?;
    raw.map(|m| {
        m.into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k, s)),
                Value::Number(n) => Ok((k, n.to_string())),
                Value::Bool(b) => Ok((k, b.to_string())),
                Value::Null => Ok((k, String::new())),
                _ => Err(serde::de::Error::custom(format!(
                    "value of {k:?} must be a string"
                ))),
            })
            .collect()
    })
    .transpose()
}

/// `config.init`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MachineInit {
    /// Replaces the image's ENTRYPOINT and CMD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<Vec<String>>,
    /// Replaces the image's ENTRYPOINT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's CMD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// Allocate a TTY.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<bool>,
    /// Swap size (microVMs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_size_mb: Option<i64>,
    /// Kernel arguments (microVMs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_args: Option<Vec<String>>,
    /// Other fields, kept as received.
    #[serde(flatten, deserialize_with = "drop_nulls", default)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// `config.guest`: the machine's size.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MachineGuest {
    /// `shared` or `performance`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_kind: Option<String>,
    /// Number of vCPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<i64>,
    /// Memory in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<i64>,
    /// GPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<i64>,
    /// GPU model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_kind: Option<String>,
    /// Other fields, kept as received.
    #[serde(flatten, deserialize_with = "drop_nulls", default)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// `config.restart`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MachineRestart {
    /// `no`, `always`, `on-failure` or `spot-price`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Restarts in a row for `on-failure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<i64>,
    /// Other fields, kept as received.
    #[serde(flatten, deserialize_with = "drop_nulls", default)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// `config.stop_config`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StopConfig {
    /// Signal name (`SIGINT` by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// Time before SIGKILL (`"5s"` by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub timeout: Option<GoDuration>,
    /// Other fields, kept as received.
    #[serde(flatten, deserialize_with = "drop_nulls", default)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// A file written into the machine before it starts (`fly.File`): exactly
/// one of `raw_value`, `secret_name` or `image_config` gives its contents.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MachineFile {
    /// Absolute path inside the machine.
    #[serde(default)]
    pub guest_path: String,
    /// The contents, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_value: Option<String>,
    /// An app secret holding the contents, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// An image whose OCI config becomes the contents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_config: Option<String>,
    /// Permission bits, as `chmod(2)` takes them (0644 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// Other fields, kept as received.
    #[serde(flatten, deserialize_with = "drop_nulls", default)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// A volume mounted into the machine (`fly.MachineMount`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MachineMount {
    /// The volume's id (`vol_...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    /// Where it appears in the machine.
    #[serde(default)]
    pub path: String,
    /// The volume's name (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Other fields (auto-extension settings), kept as received.
    #[serde(flatten, deserialize_with = "drop_nulls", default)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// A machine's configuration (`fly.MachineConfig`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MachineConfig {
    /// The OCI image to run.
    #[serde(default)]
    pub image: String,
    /// Environment variables.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "loose_string_map"
    )]
    pub env: Option<BTreeMap<String, String>>,
    /// Process overrides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<MachineInit>,
    /// Size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<MachineGuest>,
    /// User metadata.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "loose_string_map"
    )]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Restart policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<MachineRestart>,
    /// Destroy once the main process has exited for good.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_destroy: Option<bool>,
    /// How to stop the machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_config: Option<StopConfig>,
    /// `hourly`, `daily`, `weekly` or `monthly`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Deprecated size preset (e.g. `shared-cpu-1x`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// Files written into the machine before it starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<MachineFile>>,
    /// Volumes mounted into the machine (at most one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mounts: Option<Vec<MachineMount>>,
    /// Machines this one stands by for: it stays stopped until one of
    /// their hosts fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standbys: Option<Vec<String>>,
    /// Every other field of Fly's config (services, checks, mounts,
    /// dns, processes, statics, metrics, ...), kept as received.
    #[serde(flatten, deserialize_with = "drop_nulls", default)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// `image_ref` of a machine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageRef {
    /// Registry host.
    pub registry: String,
    /// Repository.
    pub repository: String,
    /// Tag.
    pub tag: String,
    /// Manifest digest.
    pub digest: String,
    /// Image labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl From<hangar_core::spec::ImageRef> for ImageRef {
    fn from(r: hangar_core::spec::ImageRef) -> ImageRef {
        ImageRef {
            registry: r.registry,
            repository: r.repository,
            tag: r.tag,
            digest: r.digest,
            labels: r.labels,
        }
    }
}

/// Parsing once, at the door: a wire config becomes the typed spec the
/// platform acts on, beside its JSON (stored and answered as received, with
/// Fly's defaults filled in).
impl TryFrom<&MachineConfig> for hangar_core::spec::Parsed {
    type Error = hangar_core::spec::SpecError;

    fn try_from(c: &MachineConfig) -> Result<Self, Self::Error> {
        let json = serde_json::to_value(c).unwrap_or_default();
        hangar_core::spec::Parsed::new(json)
    }
}

/// A machine event (`MachineEvent`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MachineEvent {
    /// ULID.
    pub id: String,
    /// `launch`, `start`, `stop`, `exit`, `destroy`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// The state the machine went to.
    pub status: String,
    /// `user` or `flyd`.
    pub source: String,
    /// Unix milliseconds.
    pub timestamp: i64,
    /// Details, e.g. `exit_event`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Value>,
}

/// A health check result (`CheckStatus`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckStatus {
    /// Check name.
    pub name: String,
    /// `passing`, `warning` or `critical`.
    pub status: String,
    /// Last output.
    pub output: String,
    /// RFC 3339.
    pub updated_at: String,
}

/// A machine (`Machine`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Machine {
    /// 14 hex characters.
    pub id: String,
    /// Unique within the app.
    pub name: String,
    /// Lifecycle state.
    pub state: String,
    /// Region code.
    pub region: String,
    /// Current version (ULID).
    pub instance_id: String,
    /// Same as `instance_id` (newer name).
    pub version: String,
    /// Private (6PN) address, when networking is configured.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub private_ip: String,
    /// Configuration (absent in summaries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<MachineConfig>,
    /// The image actually running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_ref: Option<ImageRef>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// Recent events, newest first (absent in summaries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<MachineEvent>>,
    /// Health checks (absent when the machine has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<Vec<CheckStatus>>,
    /// `ok` while the host answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_status: Option<String>,
    /// Lease nonce, only on create with `lease_ttl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// Out of proxy rotation (fly-go's `cordoned`; only shown when true).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cordoned: bool,
}

/// `POST /apps/{app}/machines` body (`CreateMachineRequest`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreateMachineRequest {
    /// The configuration; `image` is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<MachineConfig>,
    /// Unique name; generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Region; this host's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Create without starting; settles in `stopped`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_launch: Option<bool>,
    /// Acquire a lease of this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ttl: Option<i64>,
    /// Refuse (412) unless the app's secrets have reached this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_secrets_version: Option<i64>,
    /// Fields Hangar does not use yet, accepted and ignored.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// `POST /apps` body (`CreateAppRequest`; `app_name` as in Fly's docs).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreateAppRequest {
    /// App name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// App name, as Fly's docs spell it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_name: Option<String>,
    /// Organization slug.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_slug: Option<String>,
    /// Private network name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Other fields, accepted and ignored.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// An organization as apps report it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AppOrganization {
    /// Display name.
    pub name: String,
    /// Slug.
    pub slug: String,
    /// Numeric id.
    pub internal_numeric_id: i64,
}

/// An app (`App`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct App {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// `pending` (no machines yet) or `deployed`.
    pub status: String,
    /// Private network.
    pub network: String,
    /// Numeric id.
    pub internal_numeric_id: i64,
    /// Machines (not destroyed).
    pub machine_count: i64,
    /// Volumes.
    pub volume_count: i64,
    /// Owner.
    pub organization: AppOrganization,
    /// Milliseconds since the Unix epoch, as Fly answers `POST /apps` (an
    /// RFC 3339 string is accepted too).
    #[serde(default, deserialize_with = "millis_or_rfc3339")]
    pub created_at: i64,
}

/// An integer of milliseconds, or an RFC 3339 time, as milliseconds.
fn millis_or_rfc3339<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    use serde::de::Error;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| D::Error::custom(format!("invalid time {n}"))),
        serde_json::Value::String(s) => humantime::parse_rfc3339_weak(&s)
            .map_err(|e| D::Error::custom(format!("invalid time {s:?}: {e}")))
            .map(|t| {
                t.duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0)
            }),
        serde_json::Value::Null => Ok(0),
        other => Err(D::Error::custom(format!("invalid time {other}"))),
    }
}

/// `GET /apps` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ListAppsResponse {
    /// Count.
    pub total_apps: i64,
    /// Apps.
    pub apps: Vec<App>,
}

/// `POST .../stop` body (`StopRequest`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StopRequest {
    /// Signal name or number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<Value>,
    /// Go duration string or nanoseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Value>,
    /// Other fields (fly-go sends `id`), ignored.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// `GET .../wait` response (`WaitMachineResponse`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WaitMachineResponse {
    /// Always true.
    pub ok: bool,
    /// The state reached.
    pub state: String,
    /// The machine's version.
    pub version: String,
    /// The newest event's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
}

/// `POST .../start` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StartResponse {
    /// State before the start.
    pub previous_state: String,
    /// Always false here.
    pub migrated: bool,
    /// Always empty here.
    pub new_host: String,
}

/// `{"ok": true}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OkResponse {
    /// Always true.
    pub ok: bool,
}

/// The error body (`ErrorResponse`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorResponse {
    /// What went wrong.
    pub error: String,
    /// Machine-readable status (`unknown`, `insufficient_capacity`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// A volume (`Volume`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Volume {
    /// `vol_` and 16 characters.
    pub id: String,
    /// Name (several volumes may share one).
    pub name: String,
    /// `created` while it exists, then `destroyed`.
    pub state: String,
    /// Size, GB.
    pub size_gb: i64,
    /// Region.
    pub region: String,
    /// The host's zone (4 hex digits).
    pub zone: String,
    /// Whether its data is encrypted at rest.
    pub encrypted: bool,
    /// `local`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `ext4` or `raw`.
    pub fstype: String,
    /// The machine it is bound to (absent when free).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attached_machine_id: Option<String>,
    /// The same machine (Fly's allocation id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attached_alloc_id: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// Filesystem blocks.
    pub blocks: i64,
    /// Block size, bytes.
    pub block_size: i64,
    /// Free blocks.
    pub blocks_free: i64,
    /// Blocks available to users.
    pub blocks_avail: i64,
    /// Size of the filesystem, bytes.
    pub bytes_total: i64,
    /// Bytes in use.
    pub bytes_used: i64,
    /// Days snapshots are kept.
    pub snapshot_retention: i64,
    /// Daily automatic snapshots.
    pub auto_backup_enabled: bool,
    /// `ok`.
    pub host_status: String,
}

/// `POST /apps/{app}/volumes` (`CreateVolumeRequest`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreateVolumeRequest {
    /// Name (required): lowercase letters, digits and underscores.
    #[serde(default)]
    pub name: Option<String>,
    /// Region (this host's when absent).
    #[serde(default)]
    pub region: Option<String>,
    /// Size in GB (default 3).
    #[serde(default)]
    pub size_gb: Option<i64>,
    /// Encrypt at rest (default true).
    #[serde(default)]
    pub encrypted: Option<bool>,
    /// `ext4` (default) or `raw`.
    #[serde(default)]
    pub fstype: Option<String>,
    /// Restore from this snapshot.
    #[serde(default)]
    pub snapshot_id: Option<String>,
    /// Fork this volume.
    #[serde(default)]
    pub source_volume_id: Option<String>,
    /// Days to keep snapshots (1-60, default 5).
    #[serde(default)]
    pub snapshot_retention: Option<i64>,
    /// Daily automatic snapshots (default true).
    #[serde(default)]
    pub auto_backup_enabled: Option<bool>,
    /// Other fields (placement hints), accepted and ignored.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// `PUT /apps/{app}/volumes/{id}` (`UpdateVolumeRequest`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UpdateVolumeRequest {
    /// Days to keep snapshots (1-60).
    #[serde(default)]
    pub snapshot_retention: Option<i64>,
    /// Daily automatic snapshots.
    #[serde(default)]
    pub auto_backup_enabled: Option<bool>,
}

/// `PUT /apps/{app}/volumes/{id}/extend` (`ExtendVolumeRequest`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExtendVolumeRequest {
    /// The new size, GB (larger than now).
    #[serde(default)]
    pub size_gb: Option<i64>,
}

/// Answer to an extension (`ExtendVolumeResponse`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExtendVolumeResponse {
    /// The volume.
    pub volume: Volume,
    /// The machine must restart before it sees the new size.
    pub needs_restart: bool,
}

/// A volume snapshot (`VolumeSnapshot`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VolumeSnapshot {
    /// `vs_` and 16 characters.
    pub id: String,
    /// Bytes of data it holds.
    pub size: i64,
    /// Size of the volume, GB.
    pub volume_size: i64,
    /// SHA-256 of its data.
    pub digest: String,
    /// RFC 3339.
    pub created_at: String,
    /// `created`.
    pub status: String,
    /// Days it is kept.
    pub retention_days: i64,
}

/// An app secret (`AppSecret`): its value only with `show_secrets`, to an
/// admin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AppSecret {
    /// Name.
    pub name: String,
    /// Digest of the value (changes when the value does).
    pub digest: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// The value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// `IPAssignment`: a public address of an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IpAssignment {
    /// The address.
    pub ip: String,
    /// Region.
    pub region: String,
    /// The service it is for (free text).
    pub service_name: String,
    /// The proxy's shared address (HTTP by Host) rather than a dedicated one.
    pub shared: bool,
    /// RFC 3339.
    pub created_at: String,
}

/// `assignIPRequest`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AssignIpRequest {
    /// `v4` (dedicated), `shared_v4`, `v6`, `private_v6`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Region (this installation's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Organization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_slug: Option<String>,
    /// Private network (for `private_v6`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// The service it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    /// Other fields, accepted and ignored.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// `listIPAssignmentsResponse`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ListIpAssignmentsResponse {
    /// The app's addresses.
    pub ips: Vec<IpAssignment>,
}

/// `GET /apps/{app}/secrets` (`AppSecrets`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AppSecrets {
    /// The secrets, by name.
    pub secrets: Vec<AppSecret>,
}

/// `POST /apps/{app}/secrets` (`AppSecretsUpdateRequest`): `null` unsets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AppSecretsUpdateRequest {
    /// New values by name; `null` removes the secret.
    #[serde(default)]
    pub values: BTreeMap<String, Option<String>>,
}

/// Answer to `POST /apps/{app}/secrets` (`AppSecretsUpdateResp`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AppSecretsUpdateResp {
    /// The app's secrets after the change.
    pub secrets: Vec<AppSecret>,
    /// The app's secrets version.
    pub version: i64,
    /// The same (deprecated spelling Fly still sends).
    #[serde(rename = "Version")]
    pub version_deprecated: i64,
}

/// `POST /apps/{app}/secrets/{name}` (`SetAppSecretRequest`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SetAppSecretRequest {
    /// The value.
    #[serde(default)]
    pub value: Option<String>,
}

/// Answer to `POST /apps/{app}/secrets/{name}` (`SetAppSecretResponse`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SetAppSecretResponse {
    /// Name.
    pub name: String,
    /// Digest of the value.
    pub digest: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// The app's secrets version.
    pub version: i64,
    /// The same (deprecated spelling).
    #[serde(rename = "Version")]
    pub version_deprecated: i64,
}

/// Answer to `DELETE /apps/{app}/secrets/{name}` (`DeleteAppSecretResponse`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeleteAppSecretResponse {
    /// The app's secrets version.
    pub version: i64,
    /// The same (deprecated spelling).
    #[serde(rename = "Version")]
    pub version_deprecated: i64,
}

/// One line of a machine's output (API extension,
/// `GET /v1/hangar/apps/{app}/logs`, one JSON object per line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogEntry {
    /// RFC 3339, UTC, nanoseconds.
    pub timestamp: String,
    /// The machine that wrote it.
    pub machine_id: String,
    /// The machine's region.
    pub region: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The line, without its newline.
    pub message: String,
}

/// An image in Hangar's store (API extension, `GET /v1/images`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageSummary {
    /// The name it is filed under.
    pub name: String,
    /// Manifest digest.
    pub digest: String,
    /// `registry` or `import`.
    pub source: String,
    /// Number of layers.
    pub layers: usize,
}

/// An app token as Hangar lists it (API extension,
/// `GET /v1/hangar/apps/{app}/tokens`); never the token itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AppToken {
    /// Id (what revoking takes).
    pub id: String,
    /// The app it acts on.
    pub app: String,
    /// Its name (may be empty).
    #[serde(default)]
    pub name: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339; none: it does not expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Whether it has expired.
    #[serde(default)]
    pub expired: bool,
    /// The id of the token that minted it; none: the admin token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minted_by: Option<String>,
}

/// `POST /v1/hangar/apps/{app}/tokens` body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreateAppTokenRequest {
    /// A name for listings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Lifetime as a Go duration (e.g. `720h`); none: no expiry (or the
    /// minting token's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry: Option<String>,
}

/// `POST /v1/hangar/apps/{app}/tokens` response: the token, shown once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreatedAppToken {
    /// The token.
    pub token: String,
    /// What it is.
    pub info: AppToken,
}

/// A release of an app (Hangar's extension, `/v1/apps/{app}/releases`):
/// one deploy, secrets change, restart or rollback, run by hangard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Release {
    /// `rel_<ULID>`.
    pub id: String,
    /// Per app, from 1.
    pub version: i64,
    /// pending, running, rolling_back, complete, failed, interrupted or
    /// rolled_back.
    pub status: String,
    /// Whether this is the newest complete release.
    #[serde(default)]
    pub stable: bool,
    /// deploy, secrets, restart, rollback or scale.
    pub reason: String,
    /// A line for listings.
    #[serde(default)]
    pub description: String,
    /// rolling, immediate, canary or bluegreen.
    pub strategy: String,
    /// The image as asked for.
    pub image_ref: String,
    /// The manifest digest it resolved to (empty until resolved).
    #[serde(default)]
    pub image_digest: String,
    /// The app's secrets version when it was made.
    #[serde(default)]
    pub secrets_version: i64,
    /// Who asked (a token's id, or `admin`).
    pub user: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The release a rollback restores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<String>,
    /// Each machine's step: what it does and how it went.
    #[serde(default)]
    pub machines: Vec<ReleaseStep>,
    /// The fly.toml it deploys, as JSON.
    #[serde(default)]
    pub definition: Value,
}

/// One step of a release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReleaseStep {
    /// release_command, create, update or destroy.
    pub action: String,
    /// The process group.
    pub process_group: String,
    /// The machine (for a create, once made).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The machine's version before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_version: Option<String>,
    /// Its version after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_version: Option<String>,
    /// Whether it was started before (stopped machines stay stopped).
    #[serde(default)]
    pub was_started: bool,
    /// A standby of the group's first new machine.
    #[serde(default)]
    pub standby: bool,
    /// The volume (by name) a new machine mounts: an unattached one, or a
    /// new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    /// The machine a new one replaces (bluegreen, or a changed volume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
    /// Config keys the change touches.
    #[serde(default)]
    pub changes: Vec<String>,
    /// pending, running, done, failed, rolled_back or skipped.
    pub outcome: String,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `POST /v1/apps/{app}/releases` body: a deploy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreateReleaseRequest {
    /// The fly.toml, as JSON (what `hangar config show` prints).
    #[serde(default)]
    pub definition: Value,
    /// The image to deploy.
    #[serde(default)]
    pub image: String,
    /// rolling, immediate, canary or bluegreen (else fly.toml's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// A fraction of a group (< 1) or a number of machines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<f64>,
    /// Per machine, as a Go duration or seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_timeout: Option<Value>,
    /// As a Go duration or seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_command_timeout: Option<Value>,
    /// Don't run the release command.
    #[serde(default)]
    pub skip_release_command: bool,
    /// Don't create machines for groups without any.
    #[serde(default)]
    pub update_only: bool,
    /// Two machines per new group (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha: Option<bool>,
    /// Only these process groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub process_groups: Vec<String>,
    /// Only these machines.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub only_machines: Vec<String>,
    /// Not these machines.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_machines: Vec<String>,
    /// Confirms destroying the machines of groups fly.toml no longer has.
    #[serde(default)]
    pub yes: bool,
    /// Leave changed machines as they are if the release fails.
    #[serde(default)]
    pub no_rollback: bool,
    /// A line for listings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Instead of a definition and image: deploy this earlier release's
    /// (id or `vN`) again, by digest, without its release command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_to: Option<String>,
    /// Instead of a definition and image: restart the managed machines
    /// with the current release's, for this reason (`secrets` or
    /// `restart`), with its strategy and health gating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<String>,
    /// Instead of a definition and image: give a process group this many
    /// machines (`{"process_group": "web", "count": 3}`), from the current
    /// release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_count: Option<ScaleCountRequest>,
    /// Instead of a definition and image: give the managed machines (of
    /// `process_groups`, or all) this `guest`, rolled as a deploy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_vm: Option<ScaleVmRequest>,
    /// Wait behind the app's unfinished release instead of a 409.
    #[serde(default)]
    pub queue: bool,
}

/// `scale_count` of a [`CreateReleaseRequest`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScaleCountRequest {
    /// The group (`app` by default).
    #[serde(default)]
    pub process_group: Option<String>,
    /// Machines it should have.
    pub count: usize,
}

/// `scale_vm` of a [`CreateReleaseRequest`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScaleVmRequest {
    /// The guest (`cpu_kind`, `cpus`, `memory_mb`), or use `size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<MachineGuest>,
    /// A preset such as `shared-cpu-2x`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// Only these groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub process_groups: Vec<String>,
}

/// `POST /v1/apps/{app}/releases?dry_run=true` response: what a deploy
/// would do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReleasePlan {
    /// The app's newest release, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<Release>,
    /// The strategy it would run.
    pub strategy: String,
    /// Its steps.
    pub machines: Vec<ReleaseStep>,
}

/// `POST /v1/hangar/images/prune` response: what the registry's garbage
/// collection removed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PruneReport {
    /// Manifests no tag, release or machine uses, dropped.
    pub manifests: usize,
    /// Blobs nothing kept names, deleted.
    pub blobs: usize,
    /// Their bytes.
    pub bytes: u64,
}

/// `GET /v1/apps/{app}/releases` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ListReleasesResponse {
    /// Newest first.
    pub releases: Vec<Release>,
}

/// One line of a release's progress
/// (`GET /v1/apps/{app}/releases/{id}/events`, NDJSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReleaseEvent {
    /// From 1, in order (pass the last one seen as `after`).
    pub seq: i64,
    /// RFC 3339 with milliseconds.
    pub timestamp: String,
    /// image, release_command, deploy, create, update, canary, destroy,
    /// rollback, resume, finished, failed or rolled_back.
    pub phase: String,
    /// The release's status when it happened.
    pub status: String,
    /// The machine it concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<String>,
    /// What happened.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_roundtrips_unknown_fields_at_every_level() {
        let input = serde_json::json!({
            "image": "nginx",
            "env": {"PORT": 8080, "NAME": "x"},
            "init": {"cmd": ["a"], "future_flag": 1},
            "guest": {"cpus": 2, "memory_mb": 512, "cpu_kind": "shared", "persist_rootfs": "always"},
            "restart": {"policy": "always", "gpu_bid_price": 1.5},
            "stop_config": {"signal": "SIGTERM", "timeout": 10000000000u64},
            "services": [{"internal_port": 80, "ports": [{"port": 443, "handlers": ["tls", "http"]}]}],
            "mounts": [{"volume": "vol_x", "path": "/data"}],
            "brand_new_field": {"nested": true},
            "dns": null,
        });
        let c: MachineConfig = serde_json::from_value(input).unwrap();
        assert_eq!(c.env.as_ref().unwrap()["PORT"], "8080");
        let out = serde_json::to_value(&c).unwrap();
        assert_eq!(out["init"]["future_flag"], 1);
        assert_eq!(out["guest"]["persist_rootfs"], "always");
        assert_eq!(out["restart"]["gpu_bid_price"], 1.5);
        assert_eq!(out["stop_config"]["timeout"], "10s");
        assert_eq!(out["services"][0]["ports"][0]["handlers"][1], "http");
        assert_eq!(out["brand_new_field"]["nested"], true);
        assert!(out.get("dns").is_none());
        // And once more: stable.
        let again: MachineConfig = serde_json::from_value(out.clone()).unwrap();
        assert_eq!(serde_json::to_value(&again).unwrap(), out);
    }

    #[test]
    fn bad_env_values_are_refused() {
        let r: Result<MachineConfig, _> =
            serde_json::from_value(serde_json::json!({"image": "x", "env": {"A": [1]}}));
        assert!(r.is_err());
    }
}

/// `POST /apps/{app}/machines/{id}` body (`UpdateMachineRequest`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UpdateMachineRequest {
    /// The new config (image required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<MachineConfig>,
    /// The version the client last saw (optimistic check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<String>,
    /// Leave the machine stopped with the new config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_launch: Option<bool>,
    /// Must match the machine's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Must match the machine's region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Refuse (412) unless the app's secrets have reached this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_secrets_version: Option<i64>,
    /// Other fields, accepted and ignored.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// One version of a machine's config (`MachineVersion`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MachineVersion {
    /// The version id.
    pub version: String,
    /// Its config.
    pub user_config: MachineConfig,
}

/// `POST .../signal` body (`SignalRequest`); a name or, as fly-go sends it,
/// a number.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SignalRequest {
    /// The signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<Value>,
    /// Other fields, ignored.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// `POST .../restart` body (Fly takes these as query parameters too).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RestartRequest {
    /// Stop signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<Value>,
    /// Time before SIGKILL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Value>,
    /// Kill at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_stop: Option<bool>,
    /// Other fields, ignored.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// `POST .../exec` body (`MachineExecRequest`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MachineExecRequest {
    /// Program and arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Deprecated: a command line, split into words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<String>,
    /// Standard input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Seconds before the command is killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
    /// A container of a multi-container machine (none here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Other fields, ignored.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// `POST .../exec` response (`flydv1.ExecResponse`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExecResponse {
    /// Exit code.
    pub exit_code: i32,
    /// The signal that killed it, 0 if none.
    pub exit_signal: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// A machine lease (`Lease`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Lease {
    /// The holder's proof; absent when shown to someone else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// Unix seconds.
    pub expires_at: i64,
    /// Who holds it.
    pub owner: String,
    /// Why.
    pub description: String,
    /// The machine version when acquired.
    pub version: String,
}

/// Fly's lease envelope: `{"status": "success", "data": ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LeaseEnvelope<T> {
    /// Always `success`.
    pub status: String,
    /// The lease (or `{"ok": true}`).
    pub data: T,
}

/// `POST .../lease` body (`CreateLeaseRequest`); fly-go sends `?ttl=` instead.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreateLeaseRequest {
    /// Seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<i64>,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Other fields, ignored.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// `PUT/PATCH .../metadata` body (`updateMetadataRequest`); a null or empty
/// value removes the key.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UpdateMetadataRequest {
    /// Changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, Option<String>>>,
    /// Only if the machine is still at this version (else 412).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_version: Option<String>,
    /// Accepted and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

/// `POST .../metadata/{key}` body (`upsertMetadataKeyRequest`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UpsertMetadataKeyRequest {
    /// The value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Accepted and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

/// `GET .../metadata/{key}` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MetadataValueResponse {
    /// The value.
    pub value: String,
}

/// `GET/PUT .../memory` response (`main.memoryResponse`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MemoryResponse {
    /// The limit, MiB.
    pub limit_mb: i64,
    /// Not in use, MiB.
    pub available_mb: i64,
}

/// `PUT .../memory` body (`main.setMemoryLimitRequest`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SetMemoryLimitRequest {
    /// The new limit, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_mb: Option<i64>,
}

/// A listening socket of a process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ListenSocket {
    /// `tcp` or `udp`.
    pub proto: String,
    /// `address:port`.
    pub address: String,
}

/// A process of a machine (`ProcessStat`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProcessStat {
    /// Pid inside the machine.
    pub pid: i32,
    /// Start time, Unix milliseconds.
    pub stime: u64,
    /// Running time, milliseconds.
    pub rtime: u64,
    /// Command line.
    pub command: String,
    /// Working directory.
    pub directory: String,
    /// CPU time used, milliseconds.
    pub cpu: u64,
    /// Resident memory, bytes.
    pub rss: u64,
    /// Listening sockets.
    pub listen_sockets: Vec<ListenSocket>,
}

/// The `config` of an org listing entry (`MachineOverviewConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MachineOverviewConfig {
    /// Image.
    pub image: String,
    /// Size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<MachineGuest>,
    /// Metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
}

/// A machine in the organization-wide listing (`OrgMachine`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrgMachine {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// State.
    pub state: String,
    /// Region.
    pub region: String,
    /// App.
    pub app_name: String,
    /// Private address.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub private_ip: String,
    /// Deprecated alias of `version`.
    pub instance_id: String,
    /// Version.
    pub version: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// Absent in summaries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<MachineOverviewConfig>,
}

/// `GET /orgs/{org}/machines` response (`OrgMachinesResponse`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrgMachinesResponse {
    /// The page.
    pub machines: Vec<OrgMachine>,
    /// Cursor of the next page; absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// Id of the page's last machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_machine_id: Option<String>,
    /// `updated_at` of the page's last machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated_at: Option<String>,
    /// Regions that did not answer (none here).
    pub error_regions: Vec<String>,
}

/// A region (`main.regionRow`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RegionRow {
    /// Code.
    pub code: String,
    /// Name.
    pub name: String,
    /// Latitude.
    pub latitude: f64,
    /// Longitude.
    pub longitude: f64,
    /// Whether it has a gateway.
    pub gateway_available: bool,
    /// Whether it needs a paid plan.
    pub requires_paid_plan: bool,
    /// Whether it is deprecated.
    pub deprecated: bool,
    /// Geographic area.
    pub geo_region: String,
}

/// `GET /platform/regions` response (`main.regionResponse`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RegionResponse {
    /// Regions of this installation.
    pub regions: Vec<RegionRow>,
    /// The nearest one.
    pub nearest: String,
}

/// A token, as `GET /tokens/current` describes it (`main.tokenInfo`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenInfo {
    /// Id.
    pub token_id: String,
    /// Organization slug.
    pub org_slug: String,
    /// Organization name.
    pub organization: String,
    /// Apps it is limited to (empty: all).
    pub apps: Vec<String>,
    /// User, for user tokens.
    pub user: String,
    /// Machine it is restricted to.
    pub restricted_to_machine: String,
    /// Machine making the request.
    pub source_machine_id: String,
}

/// `GET /tokens/current` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CurrentTokenResponse {
    /// The tokens of the request.
    pub tokens: Vec<TokenInfo>,
}

/// `POST /apps/{app}/deploy_token` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreateAppDeployTokenRequest {
    /// Lifetime as a Go duration (e.g. `720h`); none: no expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry: Option<String>,
}

/// `POST /apps/{app}/deploy_token` response (`CreateAppResponse`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreateAppResponse {
    /// The token.
    pub token: String,
}

/// A host of the installation (`GET /v1/hangar/hosts`, a Hangar extension).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostView {
    /// Its id.
    pub id: String,
    /// Its region.
    pub region: String,
    /// Where its API answers (empty on a single host).
    #[serde(default)]
    pub api_url: String,
    /// `up`, or `down` once it has been silent for too long.
    pub state: String,
    /// Drained hosts take no new machines.
    #[serde(default)]
    pub drained: bool,
    /// vCPUs machines may reserve.
    pub cpus: u32,
    /// Memory machines may reserve, MiB.
    pub memory_mb: u64,
    /// vCPUs its machines reserve.
    pub reserved_cpus: u64,
    /// Memory its machines reserve, MiB.
    pub reserved_memory_mb: u64,
    /// Machines it runs.
    pub machines: u64,
    /// Seconds since it was last heard from.
    #[serde(default)]
    pub heartbeat_age_secs: f64,
    /// Its number in machines' 6PN addresses
    /// (`fdaa:<installation>:<network>:<host_index>::/64`); 1 on a host
    /// that stands alone.
    #[serde(default)]
    pub host_index: u16,
    /// Its WireGuard public key on the cluster's mesh (absent: not on it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_key: Option<String>,
    /// Where its end of the mesh listens (UDP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_endpoint: Option<String>,
    /// Whether this is the host that answered.
    #[serde(default)]
    pub this_host: bool,
}

/// `GET /v1/hangar/hosts` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostsResponse {
    /// The hosts, by id.
    pub hosts: Vec<HostView>,
    /// Whether the installation is a cluster (`hangard --cluster`).
    pub cluster: bool,
}
