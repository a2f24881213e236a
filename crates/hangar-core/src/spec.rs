//! A machine's config, parsed once: [`MachineSpec`] is everything the
//! platform acts on (process, guest, restart policy, stop config, services,
//! checks, mounts, files, schedule, standbys), typed and validated, built
//! from Fly's `MachineConfig` JSON where it enters (the API) and kept beside
//! that JSON, which is stored and answered as received (with Fly's defaults
//! filled in), so the config still round-trips losslessly.
//!
//! Errors name the field that is wrong and why.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::checks::{self, CheckDef};
use crate::machine::{
    DEFAULT_MAX_RETRIES, DEFAULT_STOP_SIGNAL, DEFAULT_STOP_TIMEOUT, MAX_STOP_TIMEOUT, Policy,
    RestartPolicy,
};
use crate::process::InitOverrides;
use crate::schedule::Schedule;
use crate::services::{self, Service};
use crate::{GoDuration, GuestPath, MachineId, Signal};

/// A machine's config as it was sent (with Fly's defaults filled in: what
/// is stored and answered) and what it asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// Fly's `MachineConfig`, as JSON.
    pub json: Value,
    /// What it asks for.
    pub spec: MachineSpec,
}

impl Parsed {
    /// Parses (and fills in) `json`.
    pub fn new(mut json: Value) -> Result<Parsed, SpecError> {
        let spec = MachineSpec::parse(&mut json)?;
        Ok(Parsed { json, spec })
    }
}

/// The image a machine runs, as pulled (`image_ref`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

/// A config that cannot be run, and why (naming the field).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(String);

fn invalid<T>(msg: impl Into<String>) -> Result<T, SpecError> {
    Err(SpecError(msg.into()))
}

/// At most this many files per machine.
pub const MAX_FILES: usize = 100;
/// At most this many bytes of file contents per machine, decoded.
pub const MAX_FILES_BYTES: usize = 1 << 20;

/// CPU and memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guest {
    /// vCPUs.
    pub cpus: u32,
    /// Memory, MiB.
    pub memory_mb: u64,
    /// Dedicated (`performance`) rather than shared CPUs.
    pub performance: bool,
}

/// The process overrides of `init`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Init {
    /// `exec`, `entrypoint`, `cmd`.
    pub overrides: InitOverrides,
    /// Run the main process on a terminal.
    pub tty: bool,
}

/// Where a file's contents come from.
#[derive(Clone, PartialEq, Eq)]
pub enum FileSource {
    /// The bytes (`raw_value`, decoded).
    Raw(Vec<u8>),
    /// An app secret holding base64 (`secret_name`).
    Secret(String),
}

impl fmt::Debug for FileSource {
    /// Never the contents.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileSource::Raw(b) => write!(f, "Raw({} bytes)", b.len()),
            FileSource::Secret(name) => write!(f, "Secret({name})"),
        }
    }
}

/// A file written into the machine before it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSpec {
    /// Where.
    pub path: GuestPath,
    /// Its contents.
    pub source: FileSource,
    /// Permission bits.
    pub mode: u32,
}

/// A volume mounted into the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    /// The volume's id.
    pub volume: String,
    /// Where it appears.
    pub path: GuestPath,
}

/// Everything the platform acts on in a machine's config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineSpec {
    /// The image, as configured.
    pub image: String,
    /// CPU and memory.
    pub guest: Guest,
    /// Process overrides.
    pub init: Init,
    /// Environment variables.
    pub env: BTreeMap<String, String>,
    /// User metadata.
    pub metadata: BTreeMap<String, String>,
    /// What to do when the main process exits by itself.
    pub restart: RestartPolicy,
    /// Most restarts in a row for `on-failure`.
    pub max_retries: u32,
    /// Destroy the machine once its process has ended for good.
    pub auto_destroy: bool,
    /// The stop signal.
    pub stop_signal: Signal,
    /// Time between the stop signal and SIGKILL.
    pub stop_timeout: Duration,
    /// Runs on a schedule.
    pub schedule: Option<Schedule>,
    /// Files written before every start.
    pub files: Vec<FileSpec>,
    /// Its volume (at most one).
    pub mounts: Vec<MountSpec>,
    /// The machines it stands by for.
    pub standbys: Vec<MachineId>,
    /// Services the proxy routes to it.
    pub services: Vec<Service>,
    /// Health checks.
    pub checks: Vec<CheckDef>,
    /// The runtime asked for (metadata `hangar_runtime`); none: the host's.
    pub isolation: Option<crate::Isolation>,
}

impl MachineSpec {
    /// Validates `config` (Fly's `MachineConfig` as JSON), fills Fly's
    /// defaults into it (`guest` from `size` or `shared-cpu-1x`, an empty
    /// `init`) and returns what it asks for.
    pub fn parse(config: &mut Value) -> Result<MachineSpec, SpecError> {
        let Some(c) = config.as_object_mut() else {
            return invalid("config must be an object");
        };
        let image = match c.get("image").and_then(Value::as_str).map(str::trim) {
            Some(i) if !i.is_empty() => i.to_owned(),
            _ => return invalid("config.image is required"),
        };
        c.insert("image".into(), Value::String(image.clone()));
        let guest = guest(c)?;
        let init = init(c)?;
        let env = string_map(c.get("env"), "env", true)?;
        let metadata = string_map(c.get("metadata"), "metadata", false)?;
        for k in metadata.keys() {
            if k.is_empty() || k.len() > 256 {
                return invalid(format!("invalid metadata key {k:?}"));
            }
        }
        let isolation = match metadata.get(crate::isolation::METADATA_KEY) {
            None => None,
            Some(v) => Some(crate::Isolation::parse(v).ok_or_else(|| {
                SpecError(format!(
                    "invalid metadata.{}: {v:?} is not a runtime (crun, runc, runsc or microvm)",
                    crate::isolation::METADATA_KEY
                ))
            })?),
        };
        let (restart, max_retries) = restart(c.get("restart"))?;
        let auto_destroy = c
            .get("auto_destroy")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let (stop_signal, stop_timeout) = stop_config(c.get("stop_config"))?;
        let schedule = match c.get("schedule").and_then(Value::as_str) {
            None | Some("") => None,
            Some(s) => Some(Schedule::parse(s).ok_or_else(|| {
                SpecError(format!(
                    "invalid schedule {s:?}: must be hourly, daily, weekly or monthly"
                ))
            })?),
        };
        check_services(c.get("services"))?;
        let files = files(c.get("files"))?;
        let mounts = mounts(c.get("mounts"))?;
        let standbys = standbys(c.get("standbys"))?;
        let json = Value::Object(c.clone());
        let spec = MachineSpec {
            image,
            guest,
            init,
            env,
            metadata,
            restart,
            max_retries,
            auto_destroy,
            stop_signal,
            stop_timeout,
            schedule,
            files,
            mounts,
            standbys,
            services: services::services(&json),
            checks: checks::checks(&json),
            isolation,
        };
        if spec.is_standby() {
            if !spec.services.is_empty() {
                return invalid(
                    "a standby machine cannot have services: it takes over those of the machines it watches",
                );
            }
            if spec.schedule.is_some() {
                return invalid("a standby machine cannot have a schedule");
            }
        }
        Ok(spec)
    }

    /// The state machine's policy (`scheduled`: the schedule's cycle has
    /// begun).
    pub fn policy(&self, scheduled: bool) -> Policy {
        Policy {
            restart: self.restart,
            max_retries: self.max_retries,
            auto_destroy: self.auto_destroy,
            stop_signal: self.stop_signal,
            stop_timeout: self.stop_timeout,
            scheduled,
        }
    }

    /// Whether the machine stands by for others (it stays stopped).
    pub fn is_standby(&self) -> bool {
        !self.standbys.is_empty()
    }

    /// `metadata.fly_process_group`.
    pub fn process_group(&self) -> Option<&str> {
        self.metadata.get("fly_process_group").map(String::as_str)
    }

    /// The app secrets its files name.
    pub fn file_secrets(&self) -> impl Iterator<Item = &str> {
        self.files.iter().filter_map(|f| match &f.source {
            FileSource::Secret(n) => Some(n.as_str()),
            FileSource::Raw(_) => None,
        })
    }
}

/// Fly's guest presets: `shared-cpu-Nx` (N x 256 MB) and `performance-Nx`
/// (N x 2048 MB): `(performance, cpus, memory_mb)`.
pub fn preset(size: &str) -> Option<(bool, u32, u64)> {
    let (performance, n, per_cpu) = if let Some(n) = size.strip_prefix("shared-cpu-") {
        (false, n, 256)
    } else if let Some(n) = size.strip_prefix("performance-") {
        (true, n, 2048)
    } else {
        return None;
    };
    let cpus: u32 = n.strip_suffix('x')?.parse().ok()?;
    let allowed: &[u32] = if performance {
        &[1, 2, 4, 6, 8, 10, 12, 14, 16]
    } else {
        &[1, 2, 4, 6, 8]
    };
    allowed
        .contains(&cpus)
        .then_some((performance, cpus, u64::from(cpus) * per_cpu))
}

/// `guest`, from `size` and defaults; written back filled in.
fn guest(c: &mut Map<String, Value>) -> Result<Guest, SpecError> {
    let mut g = match c.remove("guest") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(g)) => g,
        Some(other) => return invalid(format!("config.guest must be an object, not {other}")),
    };
    let num = |g: &Map<String, Value>, k: &str| -> Result<Option<i64>, SpecError> {
        match g.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| SpecError(format!("invalid guest.{k} {v}: must be a number"))),
        }
    };
    let mut kind = g.get("cpu_kind").and_then(Value::as_str).map(str::to_owned);
    let mut cpus = num(&g, "cpus")?;
    let mut memory = num(&g, "memory_mb")?;
    if let Some(size) = c
        .get("size")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        let (perf, pc, pm) = preset(size).ok_or_else(|| {
            SpecError(format!(
                "invalid size {size:?}: use shared-cpu-{{1,2,4,6,8}}x or performance-{{1,2,4,...,16}}x"
            ))
        })?;
        kind = kind.or_else(|| Some(if perf { "performance" } else { "shared" }.into()));
        cpus = cpus.or(Some(i64::from(pc)));
        memory = memory.or(Some(pm as i64));
    }
    let kind = kind
        .filter(|k| !k.is_empty())
        .unwrap_or_else(|| "shared".into());
    if kind != "shared" && kind != "performance" {
        return invalid(format!(
            "invalid guest.cpu_kind {kind:?}: must be \"shared\" or \"performance\""
        ));
    }
    let cpus = cpus.unwrap_or(1);
    if !(1..=128).contains(&cpus) {
        return invalid(format!(
            "invalid guest.cpus {cpus}: must be between 1 and 128"
        ));
    }
    let per_cpu = if kind == "shared" { 256 } else { 2048 };
    let memory = memory.unwrap_or(cpus * per_cpu);
    if !(32..=1 << 20).contains(&memory) {
        return invalid(format!(
            "invalid guest.memory_mb {memory}: must be between 32 and 1048576"
        ));
    }
    let gpus = num(&g, "gpus")?.unwrap_or(0);
    let gpu_kind = g.get("gpu_kind").and_then(Value::as_str).unwrap_or("");
    if gpus > 0 || !gpu_kind.is_empty() {
        return invalid(format!(
            "GPUs are not available on this host (guest.gpu_kind {gpu_kind:?}, guest.gpus {gpus})"
        ));
    }
    let performance = kind == "performance";
    g.insert("cpu_kind".into(), Value::String(kind));
    g.insert("cpus".into(), cpus.into());
    g.insert("memory_mb".into(), memory.into());
    c.insert("guest".into(), Value::Object(g));
    Ok(Guest {
        cpus: cpus as u32,
        memory_mb: memory as u64,
        performance,
    })
}

fn string_list(v: Option<&Value>, field: &str) -> Result<Option<Vec<String>>, SpecError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                let s = x.as_str().ok_or_else(|| {
                    SpecError(format!("config.init.{field} must be a list of strings"))
                })?;
                if s.contains('\0') {
                    return invalid(format!("config.init.{field} contains a NUL byte"));
                }
                Ok(s.to_owned())
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => invalid(format!("config.init.{field} must be a list of strings")),
    }
}

/// `init`; an empty one is written back when absent.
fn init(c: &mut Map<String, Value>) -> Result<Init, SpecError> {
    let i = c.entry("init").or_insert_with(|| Value::Object(Map::new()));
    if i.is_null() {
        *i = Value::Object(Map::new());
    }
    let Some(i) = i.as_object() else {
        return invalid("config.init must be an object");
    };
    Ok(Init {
        overrides: InitOverrides {
            exec: string_list(i.get("exec"), "exec")?,
            entrypoint: string_list(i.get("entrypoint"), "entrypoint")?,
            cmd: string_list(i.get("cmd"), "cmd")?,
        },
        tty: i.get("tty").and_then(Value::as_bool).unwrap_or(false),
    })
}

/// A map of strings (`env`, `metadata`); `env` names are checked.
fn string_map(
    v: Option<&Value>,
    field: &str,
    env_names: bool,
) -> Result<BTreeMap<String, String>, SpecError> {
    let mut out = BTreeMap::new();
    let Some(m) = v.filter(|v| !v.is_null()) else {
        return Ok(out);
    };
    let Some(m) = m.as_object() else {
        return invalid(format!("config.{field} must be an object"));
    };
    for (k, v) in m {
        let v = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => return invalid(format!("config.{field}.{k} must be a string")),
        };
        if env_names {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return invalid(format!("invalid environment variable name {k:?}"));
            }
            if v.contains('\0') {
                return invalid(format!("environment variable {k} contains a NUL byte"));
            }
        }
        out.insert(k.clone(), v);
    }
    Ok(out)
}

fn restart(v: Option<&Value>) -> Result<(RestartPolicy, u32), SpecError> {
    let r = v.and_then(Value::as_object);
    let policy = match r.and_then(|r| r.get("policy")).and_then(Value::as_str) {
        None | Some("") => RestartPolicy::OnFailure,
        Some(p) => RestartPolicy::parse(p).ok_or_else(|| {
            SpecError(format!(
                "invalid restart.policy {p:?}: must be no, always, on-failure or spot-price"
            ))
        })?,
    };
    let retries = match r.and_then(|r| r.get("max_retries")) {
        None | Some(Value::Null) => DEFAULT_MAX_RETRIES,
        Some(v) => match v.as_i64() {
            Some(n) if n < 0 => return invalid("restart.max_retries must not be negative"),
            Some(n) => n.min(i64::from(u32::MAX)) as u32,
            None => return invalid(format!("invalid restart.max_retries {v}")),
        },
    };
    Ok((policy, retries))
}

fn stop_config(v: Option<&Value>) -> Result<(Signal, Duration), SpecError> {
    let s = v.and_then(Value::as_object);
    let signal = match s.and_then(|s| s.get("signal")).and_then(Value::as_str) {
        None | Some("") => DEFAULT_STOP_SIGNAL,
        Some(sig) => sig
            .parse()
            .map_err(|_| SpecError(format!("invalid stop_config.signal {sig:?}")))?,
    };
    let timeout = match s.and_then(|s| s.get("timeout")) {
        None | Some(Value::Null) => DEFAULT_STOP_TIMEOUT,
        Some(Value::String(t)) if t.is_empty() => DEFAULT_STOP_TIMEOUT,
        Some(Value::String(t)) => GoDuration::parse(t)
            .map_err(|e| SpecError(format!("invalid stop_config.timeout {t:?}: {e}")))?
            .get(),
        Some(Value::Number(n)) => Duration::from_nanos(n.as_u64().unwrap_or(0)),
        Some(other) => return invalid(format!("invalid stop_config.timeout {other}")),
    };
    if timeout > MAX_STOP_TIMEOUT {
        return invalid(format!(
            "stop_config.timeout {} is longer than the maximum of 5m0s",
            GoDuration(timeout)
        ));
    }
    Ok((signal, timeout))
}

/// A port field, if present, must be a whole number from 1 to 65535.
fn check_port(v: Option<&Value>, field: &str) -> Result<(), SpecError> {
    match v {
        None | Some(Value::Null) => Ok(()),
        Some(v) if v.as_u64().is_some_and(|p| (1..=65535).contains(&p)) => Ok(()),
        Some(v) => invalid(format!(
            "invalid {field} {v}: must be a port from 1 to 65535"
        )),
    }
}

/// `services`: `autostop` a boolean (old clients) or `off`/`stop`/
/// `suspend` (kept as sent), `autostart` a boolean, ports ports.
fn check_services(v: Option<&Value>) -> Result<(), SpecError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(());
    };
    let Some(list) = v.as_array() else {
        return invalid("config.services must be a list");
    };
    for (i, svc) in list.iter().enumerate() {
        let Some(obj) = svc.as_object() else {
            return invalid(format!("config.services[{i}] must be an object"));
        };
        if let Some(v) = obj.get("autostop") {
            if services::parse_autostop(v).is_none() {
                return invalid(format!(
                    "invalid config.services[{i}].autostop {v}: must be off, stop or suspend (or a boolean)"
                ));
            }
        }
        check_port(
            obj.get("internal_port"),
            &format!("config.services[{i}].internal_port"),
        )?;
        if let Some(p) = obj.get("protocol").filter(|p| !p.is_null()) {
            if !matches!(p.as_str(), Some("tcp" | "udp")) {
                return invalid(format!(
                    "invalid config.services[{i}].protocol {p}: must be tcp or udp"
                ));
            }
        }
        if let Some(ports) = obj.get("ports").filter(|p| !p.is_null()) {
            let Some(ports) = ports.as_array() else {
                return invalid(format!("config.services[{i}].ports must be a list"));
            };
            for (j, port) in ports.iter().enumerate() {
                for key in ["port", "start_port", "end_port"] {
                    check_port(
                        port.get(key),
                        &format!("config.services[{i}].ports[{j}].{key}"),
                    )?;
                }
            }
        }
        if let Some(v) = obj.get("autostart") {
            if !v.is_boolean() && !v.is_null() {
                return invalid(format!(
                    "invalid config.services[{i}].autostart {v}: must be true or false"
                ));
            }
        }
    }
    Ok(())
}

/// A secret's name (an environment variable name, not one of Fly's).
pub fn check_secret_name(name: &str) -> Result<(), SpecError> {
    let valid = !name.is_empty()
        && name.len() <= 256
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return invalid(format!(
            "invalid secret name {name:?}: use letters, digits and underscores, not starting with a digit"
        ));
    }
    if name.to_ascii_uppercase().starts_with("FLY_") {
        return invalid(format!(
            "invalid secret name {name:?}: names starting with FLY_ are reserved"
        ));
    }
    Ok(())
}

/// Base64 with or without padding.
pub fn decode_base64(raw: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(raw.trim())
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(raw.trim()))
        .ok()
}

/// `files`: paths absolute and normalized, contents valid base64 (or an
/// app secret by name), modes at most 0o7777, within the limits.
fn files(v: Option<&Value>) -> Result<Vec<FileSpec>, SpecError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let Some(list) = v.as_array() else {
        return invalid("config.files must be a list");
    };
    if list.len() > MAX_FILES {
        return invalid(format!(
            "config.files has {} entries; at most {MAX_FILES} are allowed",
            list.len()
        ));
    }
    let mut out: Vec<FileSpec> = Vec::with_capacity(list.len());
    let mut total = 0usize;
    for (i, f) in list.iter().enumerate() {
        let text = |k: &str| f.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
        let raw_path = f.get("guest_path").and_then(Value::as_str).unwrap_or("");
        let path = GuestPath::parse(raw_path)
            .map_err(|e| SpecError(format!("config.files[{i}].guest_path {e}")))?;
        if out.iter().any(|o| o.path == path) {
            return invalid(format!("config.files[{i}].guest_path {path} appears twice"));
        }
        let mode = match f.get("mode") {
            None | Some(Value::Null) => 0o644,
            Some(m) => m.as_u64().unwrap_or(u64::MAX),
        };
        if mode > 0o7777 {
            return invalid(format!(
                "config.files[{i}].mode {} is not a permission mode (at most 0o7777 = 4095)",
                f.get("mode").cloned().unwrap_or_default()
            ));
        }
        let raw = f.get("raw_value").and_then(Value::as_str);
        let sources = [
            raw.is_some(),
            text("secret_name").is_some(),
            text("image_config").is_some(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            return invalid(format!(
                "config.files[{i}] ({path}) needs exactly one of raw_value, secret_name or image_config"
            ));
        }
        if let Some(image) = text("image_config") {
            return invalid(format!(
                "config.files[{i}].image_config ({image:?}) is not supported; use raw_value"
            ));
        }
        let source = match (raw, text("secret_name")) {
            (_, Some(name)) => {
                check_secret_name(name)
                    .map_err(|e| SpecError(format!("config.files[{i}].secret_name: {e}")))?;
                FileSource::Secret(name.to_owned())
            }
            (Some(raw), None) => {
                let bytes = decode_base64(raw).ok_or_else(|| {
                    SpecError(format!(
                        "config.files[{i}].raw_value ({path}) is not valid base64"
                    ))
                })?;
                total += bytes.len();
                if total > MAX_FILES_BYTES {
                    return invalid(format!(
                        "config.files hold more than {MAX_FILES_BYTES} bytes; put large data in the image or a volume"
                    ));
                }
                FileSource::Raw(bytes)
            }
            (None, None) => unreachable!("one source is set"),
        };
        out.push(FileSpec {
            path,
            source,
            mode: mode as u32,
        });
    }
    Ok(out)
}

/// `mounts`: at most one, a volume id and a normalized path.
fn mounts(v: Option<&Value>) -> Result<Vec<MountSpec>, SpecError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let Some(list) = v.as_array() else {
        return invalid("config.mounts must be a list");
    };
    if list.len() > 1 {
        return invalid("a machine can mount at most one volume");
    }
    list.iter()
        .map(|m| {
            let path = GuestPath::parse(m.get("path").and_then(Value::as_str).unwrap_or(""))
                .map_err(|e| SpecError(format!("config.mounts[0].path {e}")))?;
            let volume = m
                .get("volume")
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| {
                    SpecError("config.mounts[0].volume is required (a volume id)".into())
                })?;
            Ok(MountSpec {
                volume: volume.to_owned(),
                path,
            })
        })
        .collect()
}

/// `standbys`: machine ids, at most 16, none twice.
fn standbys(v: Option<&Value>) -> Result<Vec<MachineId>, SpecError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let Some(list) = v.as_array() else {
        return invalid("config.standbys must be a list of machine ids");
    };
    if list.len() > 16 {
        return invalid("config.standbys lists more than 16 machines");
    }
    let mut out: Vec<MachineId> = Vec::new();
    for (i, id) in list.iter().enumerate() {
        let s = id.as_str().unwrap_or_default();
        let id: MachineId = s
            .parse()
            .map_err(|_| SpecError(format!("config.standbys[{i}] {s:?} is not a machine id")))?;
        if out.contains(&id) {
            return invalid(format!("config.standbys lists {id} twice"));
        }
        out.push(id);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(mut v: Value) -> Result<(MachineSpec, Value), SpecError> {
        let s = MachineSpec::parse(&mut v)?;
        Ok((s, v))
    }

    #[test]
    fn runtime_is_read_from_metadata() {
        let (s, _) = parse(json!({"image": "x"})).unwrap();
        assert_eq!(s.isolation, None);
        let (s, c) =
            parse(json!({"image": "x", "metadata": {"hangar_runtime": "gvisor"}})).unwrap();
        assert_eq!(s.isolation, Some(crate::Isolation::Runsc));
        assert_eq!(
            c["metadata"]["hangar_runtime"], "gvisor",
            "kept as the client wrote it"
        );
        let e = parse(json!({"image": "x", "metadata": {"hangar_runtime": "docker"}})).unwrap_err();
        assert!(e.0.contains("metadata.hangar_runtime"), "{}", e.0);
    }

    #[test]
    fn fills_guest_defaults_and_presets() {
        let (s, c) = parse(json!({"image": " busybox "})).unwrap();
        assert_eq!(
            s.guest,
            Guest {
                cpus: 1,
                memory_mb: 256,
                performance: false
            }
        );
        assert_eq!(
            c["guest"],
            json!({"cpu_kind": "shared", "cpus": 1, "memory_mb": 256})
        );
        assert_eq!(c["init"], json!({}));
        assert_eq!(c["image"], "busybox");
        let (s, _) = parse(json!({"image": "x", "size": "performance-2x"})).unwrap();
        assert_eq!(
            (s.guest.performance, s.guest.cpus, s.guest.memory_mb),
            (true, 2, 4096)
        );
        let (s, _) = parse(json!({"image": "x", "guest": {"cpus": 2}})).unwrap();
        assert_eq!(s.guest.memory_mb, 512);
    }

    #[test]
    fn refuses_bad_fields_with_clear_messages() {
        let cases = [
            (json!({}), "config.image is required"),
            (
                json!({"image": "x", "guest": {"cpu_kind": "turbo"}}),
                "cpu_kind",
            ),
            (json!({"image": "x", "guest": {"cpus": 0}}), "guest.cpus"),
            (
                json!({"image": "x", "guest": {"memory_mb": 1}}),
                "memory_mb",
            ),
            (
                json!({"image": "x", "guest": {"gpu_kind": "a100-pcie-40gb"}}),
                "GPUs",
            ),
            (json!({"image": "x", "size": "huge"}), "invalid size"),
            (
                json!({"image": "x", "restart": {"policy": "sometimes"}}),
                "restart.policy",
            ),
            (
                json!({"image": "x", "stop_config": {"signal": "SIGNOPE"}}),
                "stop_config.signal",
            ),
            (
                json!({"image": "x", "stop_config": {"timeout": "10m"}}),
                "stop_config.timeout",
            ),
            (
                json!({"image": "x", "env": {"A=B": "c"}}),
                "environment variable name",
            ),
            (json!({"image": "x", "schedule": "yearly"}), "schedule"),
            (
                json!({"image": "x", "files": [{"guest_path": "/../etc/passwd", "raw_value": ""}]}),
                "files[0].guest_path \"/../etc/passwd\" is not normalized",
            ),
            (
                json!({"image": "x", "files": [{"guest_path": "etc/x", "raw_value": ""}]}),
                "is not absolute",
            ),
            (
                json!({"image": "x", "files": [{"guest_path": "/x", "raw_value": "not base64!"}]}),
                "files[0].raw_value (/x) is not valid base64",
            ),
            (
                json!({"image": "x", "files": [{"guest_path": "/x"}]}),
                "exactly one of raw_value",
            ),
            (
                json!({"image": "x", "files": [{"guest_path": "/x", "secret_name": "not-a-name"}]}),
                "files[0].secret_name: invalid secret name",
            ),
            (
                json!({"image": "x", "files": [{"guest_path": "/x", "raw_value": "", "mode": 65535}]}),
                "mode 65535",
            ),
            (
                json!({"image": "x", "files": [{"guest_path": "/x", "raw_value": ""}, {"guest_path": "/x", "raw_value": ""}]}),
                "appears twice",
            ),
            (
                json!({"image": "x", "services": [{"internal_port": 99999999}]}),
                "config.services[0].internal_port",
            ),
            (
                json!({"image": "x", "services": [{"internal_port": 80, "ports": [{"port": 70000}]}]}),
                "ports[0].port",
            ),
            (
                json!({"image": "x", "services": [{"internal_port": 80, "protocol": "sctp"}]}),
                "protocol",
            ),
            (
                json!({"image": "x", "services": [{"autostop": "sometimes"}]}),
                "autostop",
            ),
            (
                json!({"image": "x", "services": [{"autostart": "yes"}]}),
                "autostart",
            ),
            (
                json!({"image": "x", "mounts": [{"path": "/data"}]}),
                "mounts[0].volume is required",
            ),
            (
                json!({"image": "x", "mounts": [{"volume": "v", "path": "data"}]}),
                "mounts[0].path",
            ),
            (
                json!({"image": "x", "standbys": ["nope"]}),
                "is not a machine id",
            ),
            (
                json!({"image": "x", "standbys": ["0123456789abcd"], "schedule": "daily"}),
                "cannot have a schedule",
            ),
        ];
        for (v, want) in cases {
            let err = parse(v.clone()).unwrap_err().to_string();
            assert!(err.contains(want), "{v}: {err}");
        }
    }

    #[test]
    fn decodes_files_and_keeps_their_contents_out_of_debug() {
        let (s, _) = parse(json!({"image": "x", "files": [
            {"guest_path": "/etc/app.conf", "raw_value": "aGVsbG8K"},
            {"guest_path": "/run.sh", "raw_value": "ZWNobw", "mode": 493},
            {"guest_path": "/key", "secret_name": "TLS_KEY"},
        ]}))
        .unwrap();
        assert_eq!(s.files[0].source, FileSource::Raw(b"hello\n".to_vec()));
        assert_eq!(s.files[0].mode, 0o644);
        assert_eq!(s.files[1].mode, 0o755);
        assert_eq!(s.file_secrets().collect::<Vec<_>>(), vec!["TLS_KEY"]);
        assert!(!format!("{s:?}").contains("hello"));
        let big = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            vec![0u8; MAX_FILES_BYTES + 1],
        );
        let err = parse(json!({"image": "x", "files": [{"guest_path": "/big", "raw_value": big}]}))
            .unwrap_err();
        assert!(err.to_string().contains("more than"), "{err}");
    }

    #[test]
    fn autostop_is_kept_as_sent() {
        let services = json!([{"autostop": "stop"}, {"autostop": "off"}, {"autostop": true}]);
        let (_, c) = parse(json!({"image": "x", "services": services})).unwrap();
        assert_eq!(c["services"], services);
    }

    #[test]
    fn derives_the_policy() {
        let (s, _) = parse(
            json!({"image": "x", "restart": {"policy": "always"}, "auto_destroy": true,
            "stop_config": {"signal": "SIGTERM", "timeout": "30s"}}),
        )
        .unwrap();
        let p = s.policy(false);
        assert_eq!(p.restart, RestartPolicy::Always);
        assert!(p.auto_destroy);
        assert_eq!(p.stop_signal, Signal::Term);
        assert_eq!(p.stop_timeout, Duration::from_secs(30));
        let (s, _) = parse(json!({"image": "x"})).unwrap();
        assert_eq!((s.restart, s.max_retries), (RestartPolicy::OnFailure, 10));
    }
}
