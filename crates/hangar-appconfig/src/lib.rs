//! fly.toml, as Fly reads it: the whole format with Fly's names and
//! aliases ([`AppConfig`]), parsed with a real TOML parser; unknown keys
//! are warnings, wrong types errors naming the key and line
//! ([`parse`]); and what a deploy makes of it: the process groups and each
//! group's machine config ([`machine`]).
//!
//! The same value travels as JSON: a release stores the fly.toml it was
//! made from as its `definition`, and hangard turns it into machine
//! configs with this crate.

#![forbid(unsafe_code)]

mod model;

pub mod machine;

pub use model::*;

/// A fly.toml that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not TOML, or a key of the wrong type (the message names the key,
    /// line and column).
    #[error("{0}")]
    Syntax(String),
    /// Well-formed, but asks for something that cannot be done.
    #[error("{0}")]
    Invalid(String),
}

/// A parsed fly.toml and what it left unused.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The config.
    pub config: AppConfig,
    /// One line per unknown key, e.g. ``unknown key `http_service.foo` ``.
    pub warnings: Vec<String>,
}

/// Parses fly.toml text: unknown keys become warnings, wrong types fail
/// with the key and line.
pub fn parse(text: &str) -> Result<Loaded, ConfigError> {
    let de = toml::de::Deserializer::parse(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
    let mut unknown = Vec::new();
    let config: AppConfig =
        serde_ignored::deserialize(de, |path| unknown.push(path.to_string()))
            .map_err(|e| ConfigError::Syntax(e.to_string().trim_end().to_owned()))?;
    let warnings = unknown
        .into_iter()
        .map(|k| {
            // serde_ignored writes an Option as `?`: not a key.
            let k = k
                .split('.')
                .filter(|s| *s != "?")
                .collect::<Vec<_>>()
                .join(".");
            format!("unknown key `{k}` (ignored)")
        })
        .collect();
    Ok(Loaded { config, warnings })
}

/// Parses a release's stored definition (the fly.toml as JSON).
pub fn from_definition(definition: &serde_json::Value) -> Result<AppConfig, ConfigError> {
    serde_json::from_value(definition.clone())
        .map_err(|e| ConfigError::Invalid(format!("invalid definition: {e}")))
}

impl AppConfig {
    /// The config as JSON (a release's `definition`).
    pub fn to_definition(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    /// Checks what parsing alone cannot: names, groups, ports, sizes and
    /// strategies. Every error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if let Some(app) = &self.app {
            if !valid_name(app) {
                return bad(format!(
                    "app {app:?}: use lowercase letters, digits and dashes (at most 63)"
                ));
            }
        }
        for g in self.processes.keys() {
            if !valid_name(g) {
                return bad(format!(
                    "processes.{g}: a group name uses lowercase letters, digits and dashes"
                ));
            }
        }
        for (g, cmd) in &self.processes {
            if shlex::split(cmd).is_none() {
                return bad(format!("processes.{g}: unbalanced quotes in {cmd:?}"));
            }
        }
        let groups = self.groups();
        let check_groups = |key: &str, procs: &[String]| -> Result<(), ConfigError> {
            for p in procs {
                if !groups.contains(p) {
                    return Err(ConfigError::Invalid(format!(
                        "{key}.processes names group {p:?}, which [processes] does not define (groups: {})",
                        groups.join(", ")
                    )));
                }
            }
            Ok(())
        };
        if let Some(h) = &self.http_service {
            check_groups("http_service", &h.processes)?;
            if h.internal_port == Some(0) {
                return bad("http_service.internal_port must be 1-65535".into());
            }
            if let Some(a) = &h.auto_stop_machines {
                a.check("http_service.auto_stop_machines")?;
            }
        }
        for (i, s) in self.services.iter().enumerate() {
            check_groups(&format!("services[{i}]"), &s.processes)?;
            if s.internal_port == 0 {
                return bad(format!("services[{i}].internal_port must be 1-65535"));
            }
            if !matches!(s.protocol.as_str(), "tcp" | "udp") {
                return bad(format!(
                    "services[{i}].protocol {:?}: must be tcp or udp",
                    s.protocol
                ));
            }
            if let Some(a) = &s.auto_stop_machines {
                a.check(&format!("services[{i}].auto_stop_machines"))?;
            }
        }
        for (name, c) in &self.checks {
            check_groups(&format!("checks.{name}"), &c.processes)?;
            match c.kind.as_deref() {
                Some("http" | "tcp") => {}
                Some(k) => return bad(format!("checks.{name}.type {k:?}: must be http or tcp")),
                None => return bad(format!("checks.{name}.type is needed (http or tcp)")),
            }
            if c.port.is_none() && self.http_service.is_none() {
                return bad(format!(
                    "checks.{name}.port is needed without [http_service] (whose internal_port is the default)"
                ));
            }
        }
        for (i, v) in self.vm.iter().enumerate() {
            check_groups(&format!("vm[{i}]"), &v.processes)?;
            if let Some(size) = &v.size {
                if hangar_core::spec::preset(size).is_none() {
                    return bad(format!(
                        "vm[{i}].size {size:?}: use shared-cpu-{{1,2,4,6,8}}x or performance-{{1,2,4,...,16}}x"
                    ));
                }
            }
            if let Some(m) = &v.memory {
                m.mb()
                    .map_err(|e| ConfigError::Invalid(format!("vm[{i}].memory: {e}")))?;
            }
        }
        for (i, m) in self.mounts.iter().enumerate() {
            check_groups(&format!("mounts[{i}]"), &m.processes)?;
            if m.destination == "/" || !m.destination.starts_with('/') {
                return bad(format!(
                    "mounts[{i}].destination {:?}: must be an absolute path other than /",
                    m.destination
                ));
            }
            if m.source.is_empty() {
                return bad(format!("mounts[{i}].source: the volume's name is needed"));
            }
            if let Some(s) = &m.initial_size {
                s.gb()
                    .map_err(|e| ConfigError::Invalid(format!("mounts[{i}].initial_size: {e}")))?;
            }
        }
        for (i, f) in self.files.iter().enumerate() {
            check_groups(&format!("files[{i}]"), &f.processes)?;
            let sources = [
                f.raw_value.is_some(),
                f.local_path.is_some(),
                f.secret_name.is_some(),
                f.raw_base64.is_some(),
            ];
            if sources.iter().filter(|s| **s).count() != 1 {
                return bad(format!(
                    "files[{i}] ({}): give exactly one of raw_value, local_path or secret_name",
                    f.guest_path
                ));
            }
            if !f.guest_path.starts_with('/') {
                return bad(format!("files[{i}].guest_path must be absolute"));
            }
        }
        for (i, r) in self.restart.iter().enumerate() {
            check_groups(&format!("restart[{i}]"), &r.processes)?;
            r.wire_policy().ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "restart[{i}].policy {:?}: must be always, never or on-failure",
                    r.policy
                ))
            })?;
        }
        if let Some(d) = &self.deploy {
            if let Some(s) = &d.strategy {
                Strategy::parse(s).ok_or_else(|| {
                    ConfigError::Invalid(format!(
                        "deploy.strategy {s:?}: must be rolling, immediate, canary or bluegreen"
                    ))
                })?;
            }
            if let Some(m) = d.max_unavailable {
                if m <= 0.0 || (m > 1.0 && m.fract() != 0.0) {
                    return bad(format!(
                        "deploy.max_unavailable {m}: a fraction in (0, 1] or a whole number of machines"
                    ));
                }
            }
            if let Some(cmd) = &d.release_command {
                if shlex::split(cmd).is_none_or(|v| v.is_empty()) {
                    return bad(format!("deploy.release_command {cmd:?}: not a command"));
                }
            }
        }
        if let Some(sig) = &self.kill_signal {
            if !KILL_SIGNALS.contains(&sig.to_ascii_uppercase().as_str()) {
                return bad(format!(
                    "kill_signal {sig:?}: must be one of {}",
                    KILL_SIGNALS.join(", ")
                ));
            }
        }
        if let Some(t) = &self.kill_timeout {
            if t.0 > std::time::Duration::from_secs(300) {
                return bad("kill_timeout: at most 300s".into());
            }
        }
        let mounted: Vec<&str> = self.groups_with_mounts();
        if let Some(s) = self.deploy.as_ref().and_then(|d| d.strategy.as_deref()) {
            if matches!(
                Strategy::parse(s),
                Some(Strategy::Canary | Strategy::Bluegreen)
            ) && !mounted.is_empty()
            {
                return bad(format!(
                    "deploy.strategy {s}: not with [mounts] (a new machine cannot share its old twin's volume); use rolling or immediate"
                ));
            }
        }
        Ok(())
    }

    /// The process groups: `[processes]`' names, or `app`.
    pub fn groups(&self) -> Vec<String> {
        if self.processes.is_empty() {
            vec![DEFAULT_GROUP.to_owned()]
        } else {
            self.processes.keys().cloned().collect()
        }
    }

    fn groups_with_mounts(&self) -> Vec<&str> {
        if self.mounts.is_empty() {
            return Vec::new();
        }
        self.processes
            .keys()
            .map(String::as_str)
            .chain(self.processes.is_empty().then_some(DEFAULT_GROUP))
            .filter(|g| self.mounts.iter().any(|m| applies(&m.processes, g)))
            .collect()
    }

    /// `[deploy] strategy`, `rolling` by default.
    pub fn strategy(&self) -> Strategy {
        self.deploy
            .as_ref()
            .and_then(|d| d.strategy.as_deref())
            .and_then(Strategy::parse)
            .unwrap_or(Strategy::Rolling)
    }
}

/// The group of a fly.toml without `[processes]`.
pub const DEFAULT_GROUP: &str = "app";

const KILL_SIGNALS: &[&str] = &[
    "SIGINT", "SIGTERM", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGKILL", "SIGSTOP", "SIGHUP", "INT",
    "TERM", "QUIT", "USR1", "USR2", "KILL", "STOP", "HUP",
];

/// Whether an item with `processes` applies to `group` (an empty list
/// applies to every group).
pub fn applies(processes: &[String], group: &str) -> bool {
    processes.is_empty() || processes.iter().any(|p| p == group)
}

/// An app or group name as Fly allows them.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && !s.starts_with('-')
}

/// How a deploy replaces machines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// A few at a time, each health-gated (the default).
    Rolling,
    /// All at once, no waiting.
    Immediate,
    /// One extra machine of the new release first, then rolling.
    Canary,
    /// A healthy twin for every machine before any old one goes.
    Bluegreen,
}

impl Strategy {
    /// Fly's names (any case).
    pub fn parse(s: &str) -> Option<Strategy> {
        match s.to_ascii_lowercase().as_str() {
            "rolling" => Some(Strategy::Rolling),
            "immediate" => Some(Strategy::Immediate),
            "canary" => Some(Strategy::Canary),
            "bluegreen" | "blue-green" => Some(Strategy::Bluegreen),
            _ => None,
        }
    }

    /// Fly's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Rolling => "rolling",
            Strategy::Immediate => "immediate",
            Strategy::Canary => "canary",
            Strategy::Bluegreen => "bluegreen",
        }
    }
}

#[cfg(test)]
mod tests;
