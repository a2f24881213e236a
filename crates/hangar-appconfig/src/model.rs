//! The fly.toml format, key by key, with Fly's names and aliases.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

use crate::ConfigError;

/// A whole fly.toml.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AppConfig {
    /// The app's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// Where new machines and volumes go.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary_region: Option<String>,
    /// The signal that asks a machine to stop.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kill_signal: Option<String>,
    /// How long a machine gets to stop (an integer is seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kill_timeout: Option<Secs>,
    /// Swap in MB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_size_mb: Option<i64>,
    /// `fly console`'s command (kept, not used).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub console_command: Option<String>,
    /// `[build]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build: Option<Build>,
    /// `[deploy]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deploy: Option<Deploy>,
    /// `[env]` (numbers and booleans become strings).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, Scalar>,
    /// `[processes]`: group name → command.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub processes: BTreeMap<String, String>,
    /// `[http_service]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_service: Option<HttpService>,
    /// `[[services]]`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
    /// `[checks.NAME]`: machine-level checks.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub checks: BTreeMap<String, Check>,
    /// `[[vm]]` or `[vm]` (also `[[compute]]`).
    #[serde(
        alias = "compute",
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub vm: Vec<Vm>,
    /// `[[mounts]]` or `[mounts]`.
    #[serde(
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub mounts: Vec<Mount>,
    /// `[[files]]`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<File>,
    /// `[[restart]]`.
    #[serde(
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub restart: Vec<Restart>,
    /// `[[statics]]`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub statics: Vec<Static>,
    /// `[metrics]` or `[[metrics]]`.
    #[serde(
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub metrics: Vec<Metrics>,
    /// `[experimental]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub experimental: Option<Experimental>,
}

/// `[build]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Build {
    /// A ready image: no build.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The Dockerfile to build.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<String>,
    /// The ignore file (`.dockerignore` by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ignorefile: Option<String>,
    /// The stage to build.
    #[serde(
        rename = "build-target",
        alias = "build_target",
        skip_serializing_if = "Option::is_none"
    )]
    pub build_target: Option<String>,
    /// Build arguments.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, Scalar>,
    /// Buildpacks builder (kept, not used).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub builder: Option<String>,
    /// Buildpacks (kept, not used).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub buildpacks: Vec<String>,
}

/// `[deploy]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Deploy {
    /// rolling, immediate, canary or bluegreen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// A fraction of a group (< 1) or a number of machines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<f64>,
    /// How long each machine gets to become healthy (an integer is ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait_timeout: Option<Millis>,
    /// Runs once per deploy in a temporary machine before any change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release_command: Option<String>,
    /// Its time limit (default 5m).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release_command_timeout: Option<Millis>,
    /// Its machine's size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release_command_vm: Option<Vm>,
    /// Kept, not used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed_command: Option<String>,
}

/// `[http_service]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpService {
    /// The port the app listens on (8080 by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub internal_port: Option<u16>,
    /// Redirect plain HTTP to HTTPS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub force_https: Option<bool>,
    /// off, stop or suspend (or a boolean).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_stop_machines: Option<AutoStop>,
    /// Start machines on demand.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_start_machines: Option<bool>,
    /// Never stop below this many.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_machines_running: Option<u32>,
    /// The groups it applies to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<String>,
    /// Limits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Concurrency>,
    /// `[[http_service.checks]]`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<Check>,
    /// `[http_service.tls_options]`, passed through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_options: Option<serde_json::Value>,
    /// `[http_service.http_options]`, passed through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_options: Option<serde_json::Value>,
}

/// `[[services]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    /// tcp or udp.
    #[serde(default = "tcp")]
    pub protocol: String,
    /// The port the app listens on.
    pub internal_port: u16,
    /// off, stop or suspend (or a boolean).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_stop_machines: Option<AutoStop>,
    /// Start machines on demand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_start_machines: Option<bool>,
    /// Never stop below this many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_machines_running: Option<u32>,
    /// The groups it applies to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<String>,
    /// `[[services.ports]]`, passed through as Fly's wire ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<serde_json::Value>,
    /// Limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Concurrency>,
    /// `[[services.tcp_checks]]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tcp_checks: Vec<Check>,
    /// `[[services.http_checks]]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_checks: Vec<Check>,
}

fn tcp() -> String {
    "tcp".into()
}

/// A service's concurrency limits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Concurrency {
    /// connections or requests.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Never more than this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hard_limit: Option<u32>,
    /// Prefer other machines above this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soft_limit: Option<u32>,
}

/// A check: of a service (`http_service.checks`, `services.*_checks`) or
/// of the machine (`[checks.NAME]`, which needs `type`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Check {
    /// http or tcp (top-level checks; a service's check is of its list's
    /// kind).
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The groups it applies to (top-level checks).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<String>,
    /// Time to wait after a start (an integer is ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grace_period: Option<Millis>,
    /// Time between checks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<Millis>,
    /// Time a check may take.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Millis>,
    /// HTTP method.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// HTTP path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// http or https.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Don't verify the certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_skip_verify: Option<bool>,
    /// SNI name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
    /// Request headers.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Port (the service's internal port by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Kept, not used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart_limit: Option<i64>,
}

/// `[[vm]]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Vm {
    /// A preset: shared-cpu-1x, performance-2x, ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// "512mb", "1gb" or a number of MB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    /// MB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<i64>,
    /// CPUs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<i64>,
    /// shared or performance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_kind: Option<String>,
    /// GPUs (kept).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpus: Option<i64>,
    /// GPU kind (kept).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_kind: Option<String>,
    /// Kernel arguments.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kernel_args: Vec<String>,
    /// The groups it applies to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<String>,
}

/// `[[mounts]]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Mount {
    /// The volume's name.
    pub source: String,
    /// Where it is mounted.
    pub destination: String,
    /// Size of volumes a deploy creates ("10gb" or GB).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_size: Option<SizeGb>,
    /// The groups it applies to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<String>,
    /// Days of snapshots kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_retention: Option<i64>,
    /// Kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduled_snapshots: Option<bool>,
    /// Kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_extend_size_threshold: Option<i64>,
    /// Kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_extend_size_increment: Option<String>,
    /// Kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_extend_size_limit: Option<String>,
}

/// `[[files]]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct File {
    /// Where in the machine.
    pub guest_path: String,
    /// The content.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_value: Option<String>,
    /// A file next to fly.toml (the CLI reads it into `raw_base64`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_path: Option<String>,
    /// An app secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Hangar: a local file's content, base64, filled in by the CLI.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_base64: Option<String>,
    /// The groups it applies to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<String>,
}

/// `[[restart]]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Restart {
    /// always, never or on-failure.
    pub policy: String,
    /// Restarts before giving up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<i64>,
    /// The groups it applies to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<String>,
}

impl Restart {
    /// The policy as the Machines API names it.
    pub fn wire_policy(&self) -> Option<&'static str> {
        match self.policy.to_ascii_lowercase().replace('_', "-").as_str() {
            "always" => Some("always"),
            "never" | "no" => Some("no"),
            "on-failure" => Some("on-failure"),
            _ => None,
        }
    }
}

/// `[[statics]]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Static {
    /// The directory in the image.
    pub guest_path: String,
    /// The URL prefix it answers.
    pub url_prefix: String,
    /// Kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tigris_bucket: Option<String>,
    /// Kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index_document: Option<String>,
}

/// `[metrics]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Metrics {
    /// Port.
    pub port: u16,
    /// Path.
    pub path: String,
    /// Over HTTPS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub https: Option<bool>,
    /// The groups it applies to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<String>,
}

/// `[experimental]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Experimental {
    /// The command (a list or a string split as a shell would).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Command>,
    /// The entrypoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Command>,
    /// Replaces entrypoint and command.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exec: Option<Command>,
    /// Kept (Fly reads it nowhere; Hangar rolls back by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_rollback: Option<bool>,
    /// Kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable_consul: Option<bool>,
    /// Kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lazy_load_images: Option<bool>,
}

/// A command: a list, or a string split as a shell would.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Command {
    /// `["a", "b"]`.
    List(Vec<String>),
    /// `"a b"`.
    Line(String),
}

impl Command {
    /// The argv.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Command::List(v) => v.clone(),
            Command::Line(s) => shlex::split(s).unwrap_or_default(),
        }
    }
}

/// A TOML scalar used as a string (`[env]`, build args).
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar(pub String);

impl Serialize for Scalar {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Scalar, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.into()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// `auto_stop_machines`: off, stop, suspend, or a boolean (true = stop).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AutoStop {
    /// true or false.
    Bool(bool),
    /// off, stop or suspend.
    Mode(String),
}

impl AutoStop {
    /// The wire value (`off`, `stop` or `suspend`).
    pub fn wire(&self) -> &str {
        match self {
            AutoStop::Bool(true) => "stop",
            AutoStop::Bool(false) => "off",
            AutoStop::Mode(m) => m.as_str(),
        }
    }

    pub(crate) fn check(&self, key: &str) -> Result<(), ConfigError> {
        match self.wire() {
            "off" | "stop" | "suspend" => Ok(()),
            other => Err(ConfigError::Invalid(format!(
                "{key} {other:?}: must be off, stop or suspend (or a boolean)"
            ))),
        }
    }
}

/// Parses a Go- or humantime-style duration ("5s", "1m30s", "500ms").
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

macro_rules! duration_type {
    ($name:ident, $unit:literal, $from_int:expr) => {
        #[doc = concat!("A duration: a string with units, or an integer of ", $unit, ".")]
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $name(pub Duration);

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&go_duration(self.0))
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<$name, D::Error> {
                struct V;
                impl de::Visitor<'_> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        write!(f, "a duration such as \"5s\", or an integer of {}", $unit)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$name, E> {
                        parse_duration(v).map($name).map_err(E::custom)
                    }
                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<$name, E> {
                        u64::try_from(v)
                            .map(|v| $name($from_int(v)))
                            .map_err(|_| E::custom("a duration cannot be negative"))
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<$name, E> {
                        Ok($name($from_int(v)))
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}

duration_type!(Secs, "seconds", Duration::from_secs);
duration_type!(Millis, "milliseconds", Duration::from_millis);

/// A duration as Go writes the simple ones ("5s", "1500ms", "2m0s" → "120s").
pub fn go_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// `memory`: "512mb", "1gb", "2GB" or a number of MB.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Memory {
    /// MB.
    Mb(i64),
    /// With a unit.
    Text(String),
}

impl Memory {
    /// In MB.
    pub fn mb(&self) -> Result<i64, String> {
        match self {
            Memory::Mb(n) if *n > 0 => Ok(*n),
            Memory::Mb(n) => Err(format!("{n}: must be positive")),
            Memory::Text(s) => size_in(s, 1).ok_or_else(|| {
                format!("{s:?}: use a number of MB or a size such as \"512mb\" or \"2gb\"")
            }),
        }
    }
}

/// A volume size: "10gb" or a number of GB.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SizeGb {
    /// GB.
    Gb(i64),
    /// With a unit.
    Text(String),
}

impl SizeGb {
    /// In GB (at least 1).
    pub fn gb(&self) -> Result<i64, String> {
        match self {
            SizeGb::Gb(n) if *n > 0 => Ok(*n),
            SizeGb::Gb(n) => Err(format!("{n}: must be positive")),
            SizeGb::Text(s) => size_in(s, 1024)
                .map(|mb| ((mb + 1023) / 1024).max(1))
                .ok_or_else(|| format!("{s:?}: use a number of GB or a size such as \"10gb\"")),
        }
    }
}

/// "512mb" → 512, "1gb" → 1024, a bare number → `bare_unit_mb` MB each.
fn size_in(s: &str, bare_unit_mb: i64) -> Option<i64> {
    let t = s.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: i64 = n.parse().ok().filter(|n| *n > 0)?;
    let mult = match unit.trim() {
        "" => bare_unit_mb,
        "m" | "mb" | "mib" => 1,
        "g" | "gb" | "gib" => 1024,
        "t" | "tb" | "tib" => 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// A table or an array of tables, as a list (keeping the TOML parser's
/// errors and unknown-key reports inside either).
fn one_or_many<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct V<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> de::Visitor<'de> for V<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a table or an array of tables")
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut v = Vec::new();
            while let Some(t) = seq.next_element()? {
                v.push(t);
            }
            Ok(v)
        }
        fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Vec<T>, A::Error> {
            Ok(vec![T::deserialize(
                de::value::MapAccessDeserializer::new(map),
            )?])
        }
    }
    d.deserialize_any(V(std::marker::PhantomData))
}
