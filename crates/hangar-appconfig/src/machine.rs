//! What a deploy makes of fly.toml: each process group's machine config
//! (Fly's `MachineConfig` as JSON), and that config merged onto a machine's
//! current one as flyctl merges it.

use std::collections::BTreeMap;

use base64::Engine;
use serde_json::{Map, Value, json};

use crate::{AppConfig, Check, Vm, applies, go_duration};

/// Metadata keys of machines a deploy manages.
pub mod keys {
    /// `v2` on every machine a deploy made.
    pub const PLATFORM_VERSION: &str = "fly_platform_version";
    /// The machine's process group.
    pub const PROCESS_GROUP: &str = "fly_process_group";
    /// The release that last changed the machine.
    pub const RELEASE_ID: &str = "fly_release_id";
    /// Its version.
    pub const RELEASE_VERSION: &str = "fly_release_version";
    /// Group of release-command machines.
    pub const RELEASE_COMMAND_GROUP: &str = "fly_app_release_command";
    /// Set on canary machines.
    pub const CANARY: &str = "fly_canary";
    /// Set on a bluegreen deploy's new machines.
    pub const BLUEGREEN_TAG: &str = "fly_bluegreen_deployment_tag";
}

/// Keys of a machine config that fly.toml decides on every deploy; the
/// rest (guest unless `[vm]` applies, schedule, auto_destroy, dns,
/// standbys, user metadata, init.tty, init.kernel_args) is the machine's.
const MANAGED: &[&str] = &[
    "env",
    "services",
    "checks",
    "statics",
    "mounts",
    "stop_config",
    "files",
    "metrics",
    "restart",
];

/// The machine config fly.toml gives `group`, with `image`.
pub fn group_config(cfg: &AppConfig, group: &str, image: &str) -> Value {
    let mut c = Map::new();
    c.insert("image".into(), json!(image));
    c.insert("init".into(), Value::Object(init(cfg, group)));
    c.insert("env".into(), json!(env(cfg, group)));
    c.insert("services".into(), Value::Array(services(cfg, group)));
    c.insert("checks".into(), Value::Object(checks(cfg, group)));
    let mounts: Vec<Value> = cfg
        .mounts
        .iter()
        .filter(|m| applies(&m.processes, group))
        .map(|m| json!({"name": m.source, "path": m.destination}))
        .collect();
    c.insert("mounts".into(), Value::Array(mounts));
    let mut stop = Map::new();
    if let Some(s) = &cfg.kill_signal {
        let s = s.to_ascii_uppercase();
        let s = if s.starts_with("SIG") {
            s
        } else {
            format!("SIG{s}")
        };
        stop.insert("signal".into(), json!(s));
    }
    if let Some(t) = &cfg.kill_timeout {
        stop.insert("timeout".into(), json!(go_duration(t.0)));
    }
    c.insert(
        "stop_config".into(),
        if stop.is_empty() {
            Value::Null
        } else {
            Value::Object(stop)
        },
    );
    let files: Vec<Value> = cfg
        .files
        .iter()
        .filter(|f| applies(&f.processes, group))
        .map(|f| {
            let mut o = Map::new();
            o.insert("guest_path".into(), json!(f.guest_path));
            if let Some(v) = &f.raw_value {
                let b64 = base64::engine::general_purpose::STANDARD.encode(v.as_bytes());
                o.insert("raw_value".into(), json!(b64));
            } else if let Some(v) = &f.raw_base64 {
                o.insert("raw_value".into(), json!(v));
            } else if let Some(v) = &f.secret_name {
                o.insert("secret_name".into(), json!(v));
            }
            Value::Object(o)
        })
        .collect();
    c.insert("files".into(), Value::Array(files));
    let restart = cfg
        .restart
        .iter()
        .rev()
        .find(|r| applies(&r.processes, group))
        .and_then(|r| {
            let policy = r.wire_policy()?;
            let mut o = json!({"policy": policy});
            if let Some(n) = r.retries {
                o["max_retries"] = json!(n);
            }
            Some(o)
        });
    c.insert("restart".into(), restart.unwrap_or(Value::Null));
    let statics: Vec<Value> = cfg
        .statics
        .iter()
        .map(|s| serde_json::to_value(s).unwrap_or_default())
        .collect();
    c.insert("statics".into(), Value::Array(statics));
    let metrics = cfg
        .metrics
        .iter()
        .find(|m| applies(&m.processes, group))
        .map(|m| {
            let mut o = json!({"port": m.port, "path": m.path});
            if let Some(h) = m.https {
                o["https"] = json!(h);
            }
            o
        });
    c.insert("metrics".into(), metrics.unwrap_or(Value::Null));
    if let Some(g) = guest(cfg, group) {
        c.insert("guest".into(), g);
    }
    c.insert(
        "metadata".into(),
        json!({keys::PLATFORM_VERSION: "v2", keys::PROCESS_GROUP: group}),
    );
    Value::Object(c)
}

/// `target` (a [`group_config`]) merged onto a machine's `current` config,
/// as flyctl's `updateMachineConfig` does: what fly.toml decides is
/// replaced, the rest is the machine's; metadata is merged; the guest is
/// replaced only when `[vm]` gave one; a mount keeps its volume when its
/// name is the same.
pub fn merge(current: &Value, target: &Value) -> Value {
    let mut out = current.as_object().cloned().unwrap_or_default();
    let t = target.as_object().cloned().unwrap_or_default();
    out.insert(
        "image".into(),
        t.get("image").cloned().unwrap_or(Value::Null),
    );
    // init: cmd, entrypoint, exec and swap from fly.toml; tty and kernel
    // arguments stay.
    let mut init = out
        .get("init")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for k in ["cmd", "entrypoint", "exec", "swap_size_mb"] {
        init.remove(k);
    }
    if let Some(ti) = t.get("init").and_then(Value::as_object) {
        for (k, v) in ti {
            init.insert(k.clone(), v.clone());
        }
    }
    out.insert("init".into(), Value::Object(init));
    let old_mounts = out.get("mounts").cloned();
    for k in MANAGED {
        match t.get(*k) {
            Some(v) if !v.is_null() => {
                out.insert((*k).into(), v.clone());
            }
            _ => {
                out.remove(*k);
            }
        }
    }
    // A mount of the same volume name keeps the volume it has.
    if let (Some(Value::Array(new)), Some(Value::Array(old))) = (out.get_mut("mounts"), old_mounts)
    {
        for m in new.iter_mut() {
            let same = old.iter().find(|o| {
                o.get("name").is_some_and(|n| Some(n) == m.get("name"))
                    || (o.get("name").is_none() && m.get("name").is_none())
            });
            if let Some(vol) = same.and_then(|o| o.get("volume")) {
                m["volume"] = vol.clone();
            }
        }
    }
    if let Some(g) = t.get("guest") {
        out.insert("guest".into(), g.clone());
        out.remove("size");
    }
    let mut meta = out
        .get("metadata")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if let Some(tm) = t.get("metadata").and_then(Value::as_object) {
        for (k, v) in tm {
            meta.insert(k.clone(), v.clone());
        }
    }
    out.insert("metadata".into(), Value::Object(meta));
    // Standbys do not mix with services.
    if out
        .get("services")
        .and_then(Value::as_array)
        .is_some_and(|s| !s.is_empty())
    {
        out.remove("standbys");
    }
    Value::Object(out)
}

/// The names of the volumes a machine's config mounts, in order.
pub fn mount_names(config: &Value) -> Vec<String> {
    config["mounts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| m["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Whether `group` has services (a deploy's second machine for HA is a
/// twin, not a standby).
pub fn has_services(cfg: &AppConfig, group: &str) -> bool {
    !services(cfg, group).is_empty()
}

/// The machine config of a release command: the image's command replaced
/// by `command`, env with `RELEASE_COMMAND=1`, no services, checks or
/// mounts, restart `no`, destroyed when it ends.
pub fn release_command_config(cfg: &AppConfig, image: &str, command: &str) -> Value {
    let group = cfg.groups().into_iter().next().unwrap_or_default();
    let mut env = env(cfg, &group);
    env.insert("RELEASE_COMMAND".into(), "1".into());
    env.insert(
        "FLY_PROCESS_GROUP".into(),
        keys::RELEASE_COMMAND_GROUP.into(),
    );
    let mut c = json!({
        "image": image,
        "init": {"cmd": shlex::split(command).unwrap_or_default()},
        "env": env,
        "restart": {"policy": "no"},
        "auto_destroy": true,
        "dns": {"skip_registration": true},
        "metadata": {
            keys::PROCESS_GROUP: keys::RELEASE_COMMAND_GROUP,
            keys::PLATFORM_VERSION: "v2",
        },
    });
    let vm = cfg
        .deploy
        .as_ref()
        .and_then(|d| d.release_command_vm.as_ref());
    if let Some(g) = vm.and_then(vm_guest).or_else(|| guest(cfg, &group)) {
        c["guest"] = g;
    }
    c
}

fn init(cfg: &AppConfig, group: &str) -> Map<String, Value> {
    let mut init = Map::new();
    let exp = cfg.experimental.as_ref();
    let cmd = cfg
        .processes
        .get(group)
        .filter(|c| !c.trim().is_empty())
        .and_then(|c| shlex::split(c))
        .or_else(|| exp.and_then(|e| e.cmd.as_ref()).map(|c| c.argv()));
    if let Some(cmd) = cmd {
        init.insert("cmd".into(), json!(cmd));
    }
    if let Some(e) = exp.and_then(|e| e.entrypoint.as_ref()) {
        init.insert("entrypoint".into(), json!(e.argv()));
    }
    if let Some(e) = exp.and_then(|e| e.exec.as_ref()) {
        init.insert("exec".into(), json!(e.argv()));
    }
    if let Some(s) = cfg.swap_size_mb {
        init.insert("swap_size_mb".into(), json!(s));
    }
    init
}

fn env(cfg: &AppConfig, group: &str) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = cfg
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    env.insert("FLY_PROCESS_GROUP".into(), group.into());
    if let Some(r) = &cfg.primary_region {
        env.insert("PRIMARY_REGION".into(), r.clone());
    }
    env
}

fn check_json(kind: &str, c: &Check) -> Value {
    let mut o = Map::new();
    o.insert("type".into(), json!(kind));
    if let Some(p) = c.port {
        o.insert("port".into(), json!(p));
    }
    for (k, d) in [
        ("interval", c.interval),
        ("timeout", c.timeout),
        ("grace_period", c.grace_period),
    ] {
        if let Some(d) = d {
            o.insert(k.into(), json!(go_duration(d.0)));
        }
    }
    if let Some(m) = &c.method {
        o.insert("method".into(), json!(m.to_ascii_uppercase()));
    }
    if let Some(p) = &c.path {
        o.insert("path".into(), json!(p));
    }
    if let Some(p) = &c.protocol {
        o.insert("protocol".into(), json!(p));
    }
    if let Some(t) = c.tls_skip_verify {
        o.insert("tls_skip_verify".into(), json!(t));
    }
    if let Some(t) = &c.tls_server_name {
        o.insert("tls_server_name".into(), json!(t));
    }
    if !c.headers.is_empty() {
        let h: Vec<Value> = c
            .headers
            .iter()
            .map(|(k, v)| json!({"name": k, "values": [v]}))
            .collect();
        o.insert("headers".into(), Value::Array(h));
    }
    Value::Object(o)
}

fn services(cfg: &AppConfig, group: &str) -> Vec<Value> {
    let mut out = Vec::new();
    if let Some(h) = cfg
        .http_service
        .as_ref()
        .filter(|h| applies(&h.processes, group))
    {
        let mut s = json!({
            "protocol": "tcp",
            "internal_port": h.internal_port.unwrap_or(8080),
            "ports": [
                {"port": 80, "handlers": ["http"], "force_https": h.force_https.unwrap_or(false)},
                {"port": 443, "handlers": ["tls", "http"]},
            ],
            "autostart": h.auto_start_machines.unwrap_or(true),
            "autostop": h.auto_stop_machines.as_ref().map_or("off", |a| a.wire()),
            "min_machines_running": h.min_machines_running.unwrap_or(0),
        });
        if let Some(c) = &h.concurrency {
            s["concurrency"] = serde_json::to_value(c).unwrap_or_default();
        }
        if let Some(t) = &h.tls_options {
            s["ports"][1]["tls_options"] = t.clone();
        }
        if let Some(o) = &h.http_options {
            s["ports"][0]["http_options"] = o.clone();
            s["ports"][1]["http_options"] = o.clone();
        }
        let checks: Vec<Value> = h.checks.iter().map(|c| check_json("http", c)).collect();
        if !checks.is_empty() {
            s["checks"] = Value::Array(checks);
        }
        out.push(s);
    }
    for svc in cfg.services.iter().filter(|s| applies(&s.processes, group)) {
        let mut s = json!({
            "protocol": svc.protocol,
            "internal_port": svc.internal_port,
            "ports": svc.ports,
            "autostart": svc.auto_start_machines.unwrap_or(true),
            "autostop": svc.auto_stop_machines.as_ref().map_or("off", |a| a.wire()),
            "min_machines_running": svc.min_machines_running.unwrap_or(0),
        });
        if let Some(c) = &svc.concurrency {
            s["concurrency"] = serde_json::to_value(c).unwrap_or_default();
        }
        let checks: Vec<Value> = svc
            .tcp_checks
            .iter()
            .map(|c| check_json("tcp", c))
            .chain(svc.http_checks.iter().map(|c| check_json("http", c)))
            .collect();
        if !checks.is_empty() {
            s["checks"] = Value::Array(checks);
        }
        out.push(s);
    }
    out
}

fn checks(cfg: &AppConfig, group: &str) -> Map<String, Value> {
    let default_port = cfg
        .http_service
        .as_ref()
        .map(|h| h.internal_port.unwrap_or(8080));
    cfg.checks
        .iter()
        .filter(|(_, c)| applies(&c.processes, group))
        .map(|(name, c)| {
            let mut v = check_json(c.kind.as_deref().unwrap_or("tcp"), c);
            if c.port.is_none() {
                if let Some(p) = default_port {
                    v["port"] = json!(p);
                }
            }
            (name.clone(), v)
        })
        .collect()
}

fn vm_guest(v: &Vm) -> Option<Value> {
    let mut g = Map::new();
    if let Some(size) = &v.size {
        let (perf, cpus, mem) = hangar_core::spec::preset(size)?;
        g.insert(
            "cpu_kind".into(),
            json!(if perf { "performance" } else { "shared" }),
        );
        g.insert("cpus".into(), json!(cpus));
        g.insert("memory_mb".into(), json!(mem));
    }
    if let Some(k) = &v.cpu_kind {
        g.insert("cpu_kind".into(), json!(k));
    }
    if let Some(c) = v.cpus {
        g.insert("cpus".into(), json!(c));
    }
    if let Some(m) = v
        .memory_mb
        .or_else(|| v.memory.as_ref().and_then(|m| m.mb().ok()))
    {
        g.insert("memory_mb".into(), json!(m));
    }
    if let Some(n) = v.gpus {
        g.insert("gpus".into(), json!(n));
    }
    if let Some(k) = &v.gpu_kind {
        g.insert("gpu_kind".into(), json!(k));
    }
    (!g.is_empty()).then_some(Value::Object(g))
}

/// The guest `[[vm]]` gives `group`, if any applies.
pub fn guest(cfg: &AppConfig, group: &str) -> Option<Value> {
    cfg.vm
        .iter()
        .rev()
        .find(|v| applies(&v.processes, group))
        .and_then(vm_guest)
}
