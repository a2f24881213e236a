//! From a machine's config (Fly's `MachineConfig`) to what the domain needs:
//! validation with clear messages, defaults filled in the way Fly fills them,
//! and the derived policy, resources and process overrides.

use std::collections::BTreeMap;

use hangar_api_types::{MachineConfig, MachineGuest, MachineInit};
use hangar_core::machine::{
    DEFAULT_MAX_RETRIES, DEFAULT_STOP_SIGNAL, DEFAULT_STOP_TIMEOUT, MAX_STOP_TIMEOUT, Policy,
};
use hangar_core::process::InitOverrides;
use hangar_core::{GuestPath, RestartPolicy, Signal};
use hangar_runtime::{CpuKind, GuestFile, Resources};

use crate::AgentError;

fn invalid(msg: impl Into<String>) -> AgentError {
    AgentError::InvalidArgument(msg.into())
}

/// Fly's guest presets: `shared-cpu-Nx` (N x 256 MB) and
/// `performance-Nx` (N x 2048 MB).
pub fn preset(size: &str) -> Option<MachineGuest> {
    let (kind, n, per_cpu) = if let Some(n) = size.strip_prefix("shared-cpu-") {
        ("shared", n, 256)
    } else if let Some(n) = size.strip_prefix("performance-") {
        ("performance", n, 2048)
    } else {
        return None;
    };
    let cpus: i64 = n.strip_suffix('x')?.parse().ok()?;
    let allowed: &[i64] = if kind == "shared" {
        &[1, 2, 4, 6, 8]
    } else {
        &[1, 2, 4, 6, 8, 10, 12, 14, 16]
    };
    allowed.contains(&cpus).then(|| MachineGuest {
        cpu_kind: Some(kind.into()),
        cpus: Some(cpus),
        memory_mb: Some(cpus * per_cpu),
        ..MachineGuest::default()
    })
}

/// Validates a config and fills Fly's defaults (`guest` from `size` or
/// `shared-cpu-1x`, an empty `init`). `image` must already be checked by
/// the caller (it needs the image store's parser).
pub fn normalize(mut c: MachineConfig) -> Result<MachineConfig, AgentError> {
    if c.image.trim().is_empty() {
        return Err(invalid("config.image is required"));
    }
    c.image = c.image.trim().to_owned();

    // Guest: explicit fields win over a preset; missing fields get defaults.
    let mut guest = c.guest.take().unwrap_or_default();
    if let Some(size) = c.size.as_deref().filter(|s| !s.is_empty()) {
        let p = preset(size).ok_or_else(|| {
            invalid(format!(
                "invalid size {size:?}: use shared-cpu-{{1,2,4,6,8}}x or performance-{{1,2,4,...,16}}x"
            ))
        })?;
        guest.cpu_kind = guest.cpu_kind.or(p.cpu_kind);
        guest.cpus = guest.cpus.or(p.cpus);
        guest.memory_mb = guest.memory_mb.or(p.memory_mb);
    }
    let kind = guest.cpu_kind.clone().unwrap_or_else(|| "shared".into());
    if kind != "shared" && kind != "performance" {
        return Err(invalid(format!(
            "invalid guest.cpu_kind {kind:?}: must be \"shared\" or \"performance\""
        )));
    }
    let cpus = guest.cpus.unwrap_or(1);
    if !(1..=128).contains(&cpus) {
        return Err(invalid(format!(
            "invalid guest.cpus {cpus}: must be between 1 and 128"
        )));
    }
    let per_cpu = if kind == "shared" { 256 } else { 2048 };
    let memory = guest.memory_mb.unwrap_or(cpus * per_cpu);
    if !(32..=1 << 20).contains(&memory) {
        return Err(invalid(format!(
            "invalid guest.memory_mb {memory}: must be between 32 and 1048576"
        )));
    }
    if guest.gpus.unwrap_or(0) > 0 || guest.gpu_kind.as_deref().is_some_and(|k| !k.is_empty()) {
        return Err(invalid(format!(
            "GPUs are not available on this host (guest.gpu_kind {:?}, guest.gpus {})",
            guest.gpu_kind.as_deref().unwrap_or(""),
            guest.gpus.unwrap_or(0)
        )));
    }
    guest.cpu_kind = Some(kind);
    guest.cpus = Some(cpus);
    guest.memory_mb = Some(memory);
    c.guest = Some(guest);

    if c.init.is_none() {
        c.init = Some(MachineInit::default());
    }
    if let Some(init) = &c.init {
        for (field, v) in [
            ("exec", &init.exec),
            ("entrypoint", &init.entrypoint),
            ("cmd", &init.cmd),
        ] {
            if v.iter().flatten().any(|a| a.contains('\0')) {
                return Err(invalid(format!("config.init.{field} contains a NUL byte")));
            }
        }
    }

    if let Some(env) = &c.env {
        for (k, v) in env {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(invalid(format!("invalid environment variable name {k:?}")));
            }
            if v.contains('\0') {
                return Err(invalid(format!(
                    "environment variable {k} contains a NUL byte"
                )));
            }
        }
    }
    if let Some(md) = &c.metadata {
        for k in md.keys() {
            if k.is_empty() || k.len() > 256 {
                return Err(invalid(format!("invalid metadata key {k:?}")));
            }
        }
    }
    if let Some(r) = &c.restart {
        if let Some(p) = r.policy.as_deref().filter(|p| !p.is_empty()) {
            if RestartPolicy::parse(p).is_none() {
                return Err(invalid(format!(
                    "invalid restart.policy {p:?}: must be no, always, on-failure or spot-price"
                )));
            }
        }
        if r.max_retries.is_some_and(|n| n < 0) {
            return Err(invalid("restart.max_retries must not be negative"));
        }
    }
    if let Some(s) = &c.stop_config {
        if let Some(sig) = s.signal.as_deref().filter(|s| !s.is_empty()) {
            sig.parse::<Signal>()
                .map_err(|_| invalid(format!("invalid stop_config.signal {sig:?}")))?;
        }
        if let Some(t) = s.timeout {
            if t.get() > MAX_STOP_TIMEOUT {
                return Err(invalid(format!(
                    "stop_config.timeout {t} is longer than the maximum of 5m0s"
                )));
            }
        }
    }
    normalize_services(&mut c)?;
    guest_files(&c, None)?;
    if let Some(s) = c.schedule.as_deref().filter(|s| !s.is_empty()) {
        if hangar_core::schedule::Schedule::parse(s).is_none() {
            return Err(invalid(format!(
                "invalid schedule {s:?}: must be hourly, daily, weekly or monthly"
            )));
        }
    }
    Ok(c)
}

/// At most this many files per machine.
pub const MAX_FILES: usize = 100;
/// At most this many bytes of file contents per machine, decoded.
pub const MAX_FILES_BYTES: usize = 1 << 20;

/// Checks `config.files` and decodes it into what the runtime writes: guest
/// paths absolute and normalized, contents valid base64 (a `secret_name`
/// names an app secret holding base64, as on Fly), modes at most 0o7777,
/// within the limits above. Without `secrets` (validating a config) secret
/// files are checked by name only. `image_config` is refused clearly.
pub fn guest_files(
    c: &MachineConfig,
    secrets: Option<&BTreeMap<String, String>>,
) -> Result<Vec<GuestFile>, AgentError> {
    use base64::Engine as _;
    let files = c.files.as_deref().unwrap_or_default();
    if files.len() > MAX_FILES {
        return Err(invalid(format!(
            "config.files has {} entries; at most {MAX_FILES} are allowed",
            files.len()
        )));
    }
    let mut out: Vec<GuestFile> = Vec::with_capacity(files.len());
    let mut total = 0usize;
    for (i, f) in files.iter().enumerate() {
        let path = GuestPath::parse(&f.guest_path)
            .map_err(|e| invalid(format!("config.files[{i}].guest_path {e}")))?;
        if out.iter().any(|o| o.path == path.as_str()) {
            return Err(invalid(format!(
                "config.files[{i}].guest_path {path} appears twice"
            )));
        }
        let mode = f.mode.unwrap_or(0o644);
        if mode > 0o7777 {
            return Err(invalid(format!(
                "config.files[{i}].mode {mode} is not a permission mode (at most 0o7777 = 4095)"
            )));
        }
        let sources = [
            f.raw_value.is_some(),
            f.secret_name.as_deref().is_some_and(|s| !s.is_empty()),
            f.image_config.as_deref().is_some_and(|s| !s.is_empty()),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            return Err(invalid(format!(
                "config.files[{i}] ({path}) needs exactly one of raw_value, secret_name or image_config"
            )));
        }
        let secret = f.secret_name.as_deref().filter(|s| !s.is_empty());
        if let Some(name) = secret {
            crate::secrets::check_name(name)
                .map_err(|e| invalid(format!("config.files[{i}].secret_name: {e}")))?;
        }
        if let Some(image) = f.image_config.as_deref().filter(|s| !s.is_empty()) {
            return Err(invalid(format!(
                "config.files[{i}].image_config ({image:?}) is not supported; use raw_value"
            )));
        }
        let decode = |raw: &str| {
            base64::engine::general_purpose::STANDARD
                .decode(raw.trim())
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(raw.trim()))
        };
        let contents = match (secret, secrets) {
            (Some(_), None) => Vec::new(),
            (Some(name), Some(values)) => {
                let value = values.get(name).ok_or_else(|| {
                    invalid(format!(
                        "config.files[{i}].secret_name: app secret {name:?} not found"
                    ))
                })?;
                // Never quote the value or the decoder's view of it.
                decode(value).map_err(|_| {
                    invalid(format!(
                        "config.files[{i}]: app secret {name} is not valid base64 (file secrets hold base64)"
                    ))
                })?
            }
            (None, _) => {
                let raw = f.raw_value.as_deref().unwrap_or_default();
                decode(raw).map_err(|e| {
                    invalid(format!(
                        "config.files[{i}].raw_value ({path}) is not valid base64: {e}"
                    ))
                })?
            }
        };
        total += contents.len();
        if total > MAX_FILES_BYTES {
            return Err(invalid(format!(
                "config.files hold more than {MAX_FILES_BYTES} bytes; put large data in the image or a volume"
            )));
        }
        out.push(GuestFile {
            path: path.as_str().to_owned(),
            contents,
            mode,
            secret: secret.is_some(),
        });
    }
    Ok(out)
}

/// `services[].autostop` takes a boolean (old clients) or `off`, `stop`,
/// `suspend`, and is answered in the form it was sent. `autostart` must be
/// a boolean; ports must be ports.
fn normalize_services(c: &mut MachineConfig) -> Result<(), AgentError> {
    let Some(services) = c.extra.get_mut("services") else {
        return Ok(());
    };
    let Some(list) = services.as_array_mut() else {
        return Err(invalid("config.services must be a list"));
    };
    for (i, svc) in list.iter_mut().enumerate() {
        let Some(obj) = svc.as_object_mut() else {
            return Err(invalid(format!("config.services[{i}] must be an object")));
        };
        // Validated, kept as sent: a string stays a string, a boolean a
        // boolean (Fly's spec types it a string; older clients send bools).
        if let Some(v) = obj.get("autostop") {
            if hangar_core::services::parse_autostop(v).is_none() {
                return Err(invalid(format!(
                    "invalid config.services[{i}].autostop {v}: must be off, stop or suspend (or a boolean)"
                )));
            }
        }
        check_port(
            obj.get("internal_port"),
            &format!("config.services[{i}].internal_port"),
        )?;
        if let Some(p) = obj.get("protocol").filter(|p| !p.is_null()) {
            if !matches!(p.as_str(), Some("tcp" | "udp")) {
                return Err(invalid(format!(
                    "invalid config.services[{i}].protocol {p}: must be tcp or udp"
                )));
            }
        }
        if let Some(ports) = obj.get("ports").filter(|p| !p.is_null()) {
            let Some(ports) = ports.as_array() else {
                return Err(invalid(format!(
                    "config.services[{i}].ports must be a list"
                )));
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
                return Err(invalid(format!(
                    "invalid config.services[{i}].autostart {v}: must be true or false"
                )));
            }
        }
    }
    Ok(())
}

/// A port field, if present, must be a whole number from 1 to 65535.
fn check_port(v: Option<&serde_json::Value>, field: &str) -> Result<(), AgentError> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(()),
        Some(v) if v.as_u64().is_some_and(|p| (1..=65535).contains(&p)) => Ok(()),
        Some(v) => Err(invalid(format!(
            "invalid {field} {v}: must be a port from 1 to 65535"
        ))),
    }
}

/// The state machine's policy for a (normalized) config.
pub fn policy(c: &MachineConfig) -> Policy {
    let restart = c.restart.as_ref();
    Policy {
        restart: restart
            .and_then(|r| r.policy.as_deref())
            .and_then(RestartPolicy::parse)
            .unwrap_or(RestartPolicy::OnFailure),
        max_retries: restart
            .and_then(|r| r.max_retries)
            .map(|n| n.clamp(0, i64::from(u32::MAX)) as u32)
            .unwrap_or(DEFAULT_MAX_RETRIES),
        auto_destroy: c.auto_destroy.unwrap_or(false),
        stop_signal: c
            .stop_config
            .as_ref()
            .and_then(|s| s.signal.as_deref())
            .and_then(|s| s.parse().ok())
            .unwrap_or(DEFAULT_STOP_SIGNAL),
        stop_timeout: c
            .stop_config
            .as_ref()
            .and_then(|s| s.timeout)
            .map(|t| t.get())
            .unwrap_or(DEFAULT_STOP_TIMEOUT),
        // The runner knows whether the schedule's cycle has begun.
        scheduled: false,
    }
}

/// Resource limits of a (normalized) config; `pids_limit` is the host's
/// override of the task limit (scaled with memory when absent).
pub fn resources(c: &MachineConfig, pids_limit: Option<u64>) -> Resources {
    let g = c.guest.clone().unwrap_or_default();
    let memory_mb = g.memory_mb.unwrap_or(256).max(32) as u64;
    Resources {
        cpus: g.cpus.unwrap_or(1).clamp(1, 128) as u32,
        memory_mb,
        cpu_kind: if g.cpu_kind.as_deref() == Some("performance") {
            CpuKind::Performance
        } else {
            CpuKind::Shared
        },
        pids_max: pids_limit.unwrap_or_else(|| Resources::default_pids_max(memory_mb)),
    }
}

/// The `init` overrides of a config.
pub fn init_overrides(c: &MachineConfig) -> InitOverrides {
    let init = c.init.clone().unwrap_or_default();
    InitOverrides {
        exec: init.exec,
        entrypoint: init.entrypoint,
        cmd: init.cmd,
    }
}

/// The `FLY_*` variables Fly sets inside every machine.
pub struct Reserved<'a> {
    /// App name.
    pub app: &'a str,
    /// Machine id.
    pub machine_id: &'a str,
    /// Region.
    pub region: &'a str,
    /// The image as configured.
    pub image: &'a str,
    /// Current version.
    pub version: &'a str,
    /// Memory in MiB.
    pub memory_mb: u64,
    /// Metadata (for the process group).
    pub metadata: Option<&'a BTreeMap<String, String>>,
    /// The machine's private IPv6 address, if it has one.
    pub private_ip: &'a str,
}

impl Reserved<'_> {
    /// The variables.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = vec![
            ("FLY_APP_NAME".into(), self.app.into()),
            ("FLY_MACHINE_ID".into(), self.machine_id.into()),
            ("FLY_ALLOC_ID".into(), self.machine_id.into()),
            ("FLY_REGION".into(), self.region.into()),
            ("FLY_IMAGE_REF".into(), self.image.into()),
            ("FLY_MACHINE_VERSION".into(), self.version.into()),
            ("FLY_VM_MEMORY_MB".into(), self.memory_mb.to_string()),
        ];
        if !self.private_ip.is_empty() {
            v.push(("FLY_PRIVATE_IP".into(), self.private_ip.into()));
        }
        if let Some(group) = self.metadata.and_then(|m| m.get("fly_process_group")) {
            v.push(("FLY_PROCESS_GROUP".into(), group.clone()));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(v: serde_json::Value) -> MachineConfig {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn fills_guest_defaults_and_presets() {
        let c = normalize(cfg(serde_json::json!({"image": "busybox"}))).unwrap();
        let g = c.guest.unwrap();
        assert_eq!(
            (g.cpu_kind.as_deref(), g.cpus, g.memory_mb),
            (Some("shared"), Some(1), Some(256))
        );
        assert!(c.init.is_some());
        let c = normalize(cfg(
            serde_json::json!({"image": "x", "size": "performance-2x"}),
        ))
        .unwrap();
        let g = c.guest.unwrap();
        assert_eq!(
            (g.cpu_kind.as_deref(), g.cpus, g.memory_mb),
            (Some("performance"), Some(2), Some(4096))
        );
        let c = normalize(cfg(serde_json::json!({"image": "x", "guest": {"cpus": 2}}))).unwrap();
        assert_eq!(c.guest.unwrap().memory_mb, Some(512));
    }

    #[test]
    fn refuses_bad_fields_with_clear_messages() {
        let cases = [
            (serde_json::json!({}), "config.image is required"),
            (
                serde_json::json!({"image": "x", "guest": {"cpu_kind": "turbo"}}),
                "cpu_kind",
            ),
            (
                serde_json::json!({"image": "x", "guest": {"cpus": 0}}),
                "guest.cpus",
            ),
            (
                serde_json::json!({"image": "x", "guest": {"memory_mb": 1}}),
                "memory_mb",
            ),
            (
                serde_json::json!({"image": "x", "guest": {"gpu_kind": "a100-pcie-40gb"}}),
                "GPUs",
            ),
            (
                serde_json::json!({"image": "x", "size": "huge"}),
                "invalid size",
            ),
            (
                serde_json::json!({"image": "x", "restart": {"policy": "sometimes"}}),
                "restart.policy",
            ),
            (
                serde_json::json!({"image": "x", "stop_config": {"signal": "SIGNOPE"}}),
                "stop_config.signal",
            ),
            (
                serde_json::json!({"image": "x", "stop_config": {"timeout": "10m"}}),
                "stop_config.timeout",
            ),
            (
                serde_json::json!({"image": "x", "env": {"A=B": "c"}}),
                "environment variable name",
            ),
            (
                serde_json::json!({"image": "x", "schedule": "yearly"}),
                "schedule",
            ),
            (
                serde_json::json!({"image": "x", "files": [{"guest_path": "/../etc/passwd", "raw_value": ""}]}),
                "files[0].guest_path \"/../etc/passwd\" is not normalized",
            ),
            (
                serde_json::json!({"image": "x", "files": [{"guest_path": "etc/x", "raw_value": ""}]}),
                "is not absolute",
            ),
            (
                serde_json::json!({"image": "x", "files": [{"guest_path": "/x", "raw_value": "not base64!"}]}),
                "files[0].raw_value (/x) is not valid base64",
            ),
            (
                serde_json::json!({"image": "x", "files": [{"guest_path": "/x"}]}),
                "exactly one of raw_value",
            ),
            (
                serde_json::json!({"image": "x", "files": [{"guest_path": "/x", "secret_name": "not-a-name"}]}),
                "files[0].secret_name: invalid secret name",
            ),
            (
                serde_json::json!({"image": "x", "files": [{"guest_path": "/x", "raw_value": "", "mode": 65535}]}),
                "mode 65535",
            ),
            (
                serde_json::json!({"image": "x", "files": [{"guest_path": "/x", "raw_value": ""}, {"guest_path": "/x", "raw_value": ""}]}),
                "appears twice",
            ),
        ];
        for (v, want) in cases {
            let err = normalize(cfg(v.clone())).unwrap_err().to_string();
            assert!(err.contains(want), "{v}: {err}");
        }
    }

    #[test]
    fn decodes_files() {
        let c = normalize(cfg(serde_json::json!({"image": "x", "files": [
            {"guest_path": "/etc/app.conf", "raw_value": "aGVsbG8K"},
            {"guest_path": "/run.sh", "raw_value": "ZWNobw", "mode": 493},
        ]})))
        .unwrap();
        let files = guest_files(&c, None).unwrap();
        assert_eq!(files[0].path, "/etc/app.conf");
        assert_eq!(files[0].contents, b"hello\n");
        assert_eq!(files[0].mode, 0o644);
        assert_eq!(files[1].contents, b"echo");
        assert_eq!(files[1].mode, 0o755);
        assert!(
            !format!("{files:?}").contains("hello"),
            "Debug shows contents"
        );
        let big = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            vec![0u8; MAX_FILES_BYTES + 1],
        );
        let err = normalize(cfg(
            serde_json::json!({"image": "x", "files": [{"guest_path": "/big", "raw_value": big}]}),
        ))
        .unwrap_err();
        assert!(err.to_string().contains("more than"), "{err}");
    }

    #[test]
    fn autostop_takes_bools_and_names() {
        let c = normalize(cfg(serde_json::json!({"image": "x", "services": [
            {"autostop": "stop"}, {"autostop": "off"}, {"autostop": "suspend"}, {"autostop": true}, {"internal_port": 80}
        ]})))
        .unwrap();
        let s = &c.extra["services"];
        assert_eq!(s[0]["autostop"], "stop");
        assert_eq!(s[1]["autostop"], "off");
        assert_eq!(s[2]["autostop"], "suspend");
        assert_eq!(s[3]["autostop"], true);
        assert!(s[4].get("autostop").is_none());
        for bad in [
            serde_json::json!({"internal_port": 99999999}),
            serde_json::json!({"internal_port": 0}),
            serde_json::json!({"internal_port": "80"}),
            serde_json::json!({"internal_port": 80, "ports": [{"port": 70000}]}),
            serde_json::json!({"internal_port": 80, "ports": [{"start_port": -1}]}),
            serde_json::json!({"internal_port": 80, "protocol": "sctp"}),
        ] {
            let err = normalize(cfg(
                serde_json::json!({"image": "x", "services": [bad.clone()]}),
            ))
            .unwrap_err()
            .to_string();
            assert!(err.contains("config.services[0]"), "{bad}: {err}");
        }
        let err = normalize(cfg(
            serde_json::json!({"image": "x", "services": [{"autostop": "sometimes"}]}),
        ))
        .unwrap_err();
        assert!(err.to_string().contains("autostop"), "{err}");
        assert!(
            normalize(cfg(
                serde_json::json!({"image": "x", "services": [{"autostart": "yes"}]})
            ))
            .is_err()
        );
    }

    #[test]
    fn derives_policy() {
        let c = cfg(
            serde_json::json!({"image": "x", "restart": {"policy": "always"}, "auto_destroy": true,
            "stop_config": {"signal": "SIGTERM", "timeout": "30s"}}),
        );
        let p = policy(&c);
        assert_eq!(p.restart, RestartPolicy::Always);
        assert!(p.auto_destroy);
        assert_eq!(p.stop_signal, Signal::Term);
        assert_eq!(p.stop_timeout, std::time::Duration::from_secs(30));
        let p = policy(&cfg(serde_json::json!({"image": "x"})));
        assert_eq!((p.restart, p.max_retries), (RestartPolicy::OnFailure, 10));
    }
}
