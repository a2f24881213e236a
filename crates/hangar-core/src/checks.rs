//! Health checks a machine config asks for: `services[].checks` and the
//! top-level `checks` map, read liberally as Fly clients send them.
//!
//! Service checks are named as Fly names them
//! (`servicecheck-<NN>-<type>-<port>`); a machine failing one leaves the
//! proxy's rotation, as does one failing a top-level check of kind
//! `readiness`. Top-level `informational` checks are reported only.

use std::time::Duration;

use serde_json::Value;

use crate::GoDuration;

/// Fly's default time between checks.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(15);
/// Fly's default check timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// What a check does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Connect to the port.
    Tcp,
    /// Send an HTTP request; any 2xx or 3xx passes.
    Http {
        /// Upper-cased method, `GET` by default.
        method: String,
        /// Path, `/` by default.
        path: String,
        /// Speak HTTPS.
        https: bool,
        /// With HTTPS, accept any certificate.
        tls_skip_verify: bool,
        /// Extra request headers.
        headers: Vec<(String, String)>,
    },
}

/// One check of a machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckDef {
    /// Its name in the machine's `checks`.
    pub name: String,
    /// What it does.
    pub probe: Probe,
    /// The machine port it probes.
    pub port: u16,
    /// Time between runs.
    pub interval: Duration,
    /// Time one run may take.
    pub timeout: Duration,
    /// Time after a start before the first run.
    pub grace_period: Duration,
    /// Failing it takes the machine out of the proxy's rotation.
    pub gates_traffic: bool,
}

fn duration(v: &Value, default: Duration) -> Duration {
    match v {
        Value::String(s) => GoDuration::parse(s).map(|d| d.0).unwrap_or(default),
        // Integers are nanoseconds, as fly-go encodes time.Duration.
        Value::Number(n) => n.as_u64().map(Duration::from_nanos).unwrap_or(default),
        _ => default,
    }
}

fn check(name: String, v: &Value, default_port: Option<u16>, gates: bool) -> Option<CheckDef> {
    let port = v["port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .or(default_port)?;
    let probe = match v["type"].as_str().unwrap_or("tcp") {
        "tcp" => Probe::Tcp,
        "http" => Probe::Http {
            method: v["method"].as_str().unwrap_or("GET").to_ascii_uppercase(),
            path: match v["path"].as_str() {
                Some(p) if p.starts_with('/') => p.to_owned(),
                Some(p) if !p.is_empty() => format!("/{p}"),
                _ => "/".into(),
            },
            https: v["protocol"].as_str() == Some("https"),
            tls_skip_verify: v["tls_skip_verify"].as_bool().unwrap_or(false),
            headers: v["headers"]
                .as_array()
                .map(|hs| {
                    hs.iter()
                        .flat_map(|h| {
                            let name = h["name"].as_str().unwrap_or_default().to_owned();
                            h["values"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(Value::as_str)
                                .map(move |val| (name.clone(), val.to_owned()))
                        })
                        .filter(|(n, _)| !n.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
        },
        _ => return None,
    };
    Some(CheckDef {
        name,
        probe,
        port,
        interval: duration(&v["interval"], DEFAULT_INTERVAL).max(Duration::from_millis(100)),
        timeout: duration(&v["timeout"], DEFAULT_TIMEOUT).max(Duration::from_millis(10)),
        grace_period: duration(&v["grace_period"], Duration::ZERO),
        gates_traffic: gates,
    })
}

/// The checks of a machine config.
pub fn checks(config: &Value) -> Vec<CheckDef> {
    let mut out = Vec::new();
    let mut n = 0;
    for svc in config["services"].as_array().into_iter().flatten() {
        let internal = svc["internal_port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok());
        for c in svc["checks"].as_array().into_iter().flatten() {
            let kind = c["type"].as_str().unwrap_or("tcp");
            let port = c["port"]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .or(internal)
                .unwrap_or(0);
            let name = format!("servicecheck-{n:02}-{kind}-{port}");
            n += 1;
            out.extend(check(name, c, internal, true));
        }
    }
    if let Some(map) = config["checks"].as_object() {
        for (name, c) in map {
            let readiness = c["kind"].as_str() == Some("readiness");
            out.extend(check(name.clone(), c, None, readiness));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn service_and_top_level_checks_parse() {
        let c = checks(&json!({
            "services": [{"internal_port": 8080, "checks": [
                {"type": "http", "path": "healthz", "method": "head", "interval": "1s",
                 "timeout": 500_000_000u64, "grace_period": "2s",
                 "headers": [{"name": "X-A", "values": ["1", "2"]}]},
                {"type": "tcp"},
                {"type": "exec"}
            ]}],
            "checks": {
                "db": {"type": "tcp", "port": 5432, "kind": "readiness"},
                "info": {"type": "http", "port": 9090, "protocol": "https", "tls_skip_verify": true},
                "noport": {"type": "tcp"}
            }
        }));
        assert_eq!(c.len(), 4, "{c:?}");
        assert_eq!(c[0].name, "servicecheck-00-http-8080");
        assert_eq!(
            c[0].probe,
            Probe::Http {
                method: "HEAD".into(),
                path: "/healthz".into(),
                https: false,
                tls_skip_verify: false,
                headers: vec![("X-A".into(), "1".into()), ("X-A".into(), "2".into())],
            }
        );
        assert_eq!(c[0].interval, Duration::from_secs(1));
        assert_eq!(c[0].timeout, Duration::from_millis(500));
        assert_eq!(c[0].grace_period, Duration::from_secs(2));
        assert!(c[0].gates_traffic);
        assert_eq!(c[1].name, "servicecheck-01-tcp-8080");
        assert_eq!(
            (c[1].interval, c[1].timeout),
            (DEFAULT_INTERVAL, DEFAULT_TIMEOUT)
        );
        let db = c.iter().find(|c| c.name == "db").unwrap();
        assert!(db.gates_traffic && db.port == 5432 && db.probe == Probe::Tcp);
        let info = c.iter().find(|c| c.name == "info").unwrap();
        assert!(!info.gates_traffic);
        assert!(matches!(
            info.probe,
            Probe::Http {
                https: true,
                tls_skip_verify: true,
                ..
            }
        ));
        assert!(checks(&json!({})).is_empty());
    }
}
