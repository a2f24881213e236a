//! A machine's `services` as the proxy sees them, and the proxy's pure
//! decisions: which machine takes a request, when to start one, which
//! idle machines to stop.
//!
//! Services are read liberally from the stored config (it is kept exactly
//! as clients sent it): unknown fields are ignored, `autostop` is a boolean
//! or `off|stop|suspend`, ports are numbers.

use std::time::Duration;

use serde_json::Value;

/// `services[].protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// TCP (with or without HTTP/TLS handlers).
    Tcp,
    /// UDP.
    Udp,
}

/// `services[].autostop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Autostop {
    /// Machines run until stopped by hand.
    #[default]
    Off,
    /// Idle machines are stopped.
    Stop,
    /// Idle machines are suspended.
    Suspend,
}

/// `services[].concurrency.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoadKind {
    /// Open connections count.
    #[default]
    Connections,
    /// In-flight HTTP requests count.
    Requests,
}

/// `services[].concurrency`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Concurrency {
    /// What is counted.
    pub kind: LoadKind,
    /// Above this, the proxy prefers other machines and starts more.
    pub soft_limit: u32,
    /// At this, a machine takes no more.
    pub hard_limit: Option<u32>,
}

impl Default for Concurrency {
    fn default() -> Self {
        // Fly's defaults.
        Concurrency {
            kind: LoadKind::Connections,
            soft_limit: 20,
            hard_limit: Some(25),
        }
    }
}

/// One entry of `services[].ports`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    /// First public port.
    pub start: u16,
    /// Last public port (= start for a single port).
    pub end: u16,
    /// `handlers`: `http`, `tls`, `proxy_proto`, ... (lower case).
    pub handlers: Vec<String>,
    /// Redirect plain HTTP to HTTPS.
    pub force_https: bool,
}

impl PortSpec {
    /// Whether `port` is one of this entry's.
    pub fn covers(&self, port: u16) -> bool {
        (self.start..=self.end).contains(&port)
    }

    /// Whether requests are HTTP (the proxy speaks HTTP to the machine).
    pub fn is_http(&self) -> bool {
        self.handlers.iter().any(|h| h == "http")
    }

    /// Whether the proxy terminates TLS.
    pub fn is_tls(&self) -> bool {
        self.handlers.iter().any(|h| h == "tls")
    }
}

/// One entry of `services`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// `protocol`.
    pub protocol: Protocol,
    /// The port the machine listens on.
    pub internal_port: u16,
    /// Public ports.
    pub ports: Vec<PortSpec>,
    /// `autostop`.
    pub autostop: Autostop,
    /// `autostart` (off unless set, as in Fly's API; the CLI sets it).
    pub autostart: bool,
    /// `min_machines_running`.
    pub min_machines_running: u32,
    /// `concurrency`.
    pub concurrency: Concurrency,
}

fn port(v: &Value) -> Option<u16> {
    v.as_u64().and_then(|p| u16::try_from(p).ok())
}

fn port_spec(v: &Value) -> Option<PortSpec> {
    let (start, end) = match (
        port(&v["port"]),
        port(&v["start_port"]),
        port(&v["end_port"]),
    ) {
        (Some(p), _, _) => (p, p),
        (None, Some(s), Some(e)) if s <= e => (s, e),
        _ => return None,
    };
    Some(PortSpec {
        start,
        end,
        handlers: v["handlers"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_ascii_lowercase)
                    .collect()
            })
            .unwrap_or_default(),
        force_https: v["force_https"].as_bool().unwrap_or(false),
    })
}

/// A public port a machine serves, as hosts of a cluster tell each other
/// (their proxies listen on an app's dedicated addresses for the ports of
/// machines on any host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicPort {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The ports and their handlers.
    pub spec: PortSpec,
}

impl PublicPort {
    /// The public ports of `services`.
    pub fn of(services: &[Service]) -> Vec<PublicPort> {
        services
            .iter()
            .flat_map(|s| {
                s.ports.iter().map(|p| PublicPort {
                    protocol: s.protocol,
                    spec: p.clone(),
                })
            })
            .collect()
    }

    /// `tcp:80-80:http,tls;udp:53-53:` (entries by `;`).
    pub fn encode(ports: &[PublicPort]) -> String {
        ports
            .iter()
            .map(|p| {
                format!(
                    "{}:{}-{}:{}{}",
                    match p.protocol {
                        Protocol::Tcp => "tcp",
                        Protocol::Udp => "udp",
                    },
                    p.spec.start,
                    p.spec.end,
                    p.spec.handlers.join(","),
                    if p.spec.force_https {
                        ":force_https"
                    } else {
                        ""
                    }
                )
            })
            .collect::<Vec<_>>()
            .join(";")
    }

    /// Reads [`PublicPort::encode`]'s text, skipping entries it cannot.
    pub fn decode(text: &str) -> Vec<PublicPort> {
        text.split(';')
            .filter_map(|e| {
                let mut parts = e.split(':');
                let protocol = match parts.next()? {
                    "tcp" => Protocol::Tcp,
                    "udp" => Protocol::Udp,
                    _ => return None,
                };
                let (a, b) = parts.next()?.split_once('-')?;
                let (start, end): (u16, u16) = (a.parse().ok()?, b.parse().ok()?);
                if start > end {
                    return None;
                }
                let handlers = parts
                    .next()
                    .unwrap_or("")
                    .split(',')
                    .filter(|h| !h.is_empty())
                    .map(str::to_owned)
                    .collect();
                let force_https = parts.next() == Some("force_https");
                Some(PublicPort {
                    protocol,
                    spec: PortSpec {
                        start,
                        end,
                        handlers,
                        force_https,
                    },
                })
            })
            .collect()
    }
}

/// Parses `autostop` as Fly clients send it.
pub fn parse_autostop(v: &Value) -> Option<Autostop> {
    match v {
        Value::Null => Some(Autostop::Off),
        Value::Bool(false) => Some(Autostop::Off),
        Value::Bool(true) => Some(Autostop::Stop),
        Value::String(s) => match s.as_str() {
            "" | "off" => Some(Autostop::Off),
            "stop" => Some(Autostop::Stop),
            "suspend" => Some(Autostop::Suspend),
            _ => None,
        },
        _ => None,
    }
}

fn service(v: &Value) -> Option<Service> {
    let protocol = match v["protocol"].as_str().unwrap_or("tcp") {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        _ => return None,
    };
    let c = &v["concurrency"];
    let limit = |x: &Value| x.as_u64().map(|n| n.min(u64::from(u32::MAX)) as u32);
    let default = Concurrency::default();
    let soft = limit(&c["soft_limit"]);
    let hard = limit(&c["hard_limit"]);
    Some(Service {
        protocol,
        internal_port: port(&v["internal_port"])?,
        ports: v["ports"]
            .as_array()
            .map(|a| a.iter().filter_map(port_spec).collect())
            .unwrap_or_default(),
        autostop: parse_autostop(&v["autostop"]).unwrap_or_default(),
        autostart: v["autostart"].as_bool().unwrap_or(false),
        min_machines_running: limit(&v["min_machines_running"]).unwrap_or(0),
        concurrency: Concurrency {
            kind: match c["type"].as_str() {
                Some("requests") => LoadKind::Requests,
                _ => LoadKind::Connections,
            },
            soft_limit: soft.unwrap_or(default.soft_limit),
            hard_limit: match (hard, soft) {
                (Some(h), _) => Some(h),
                // Only a soft limit given: no hard limit below it.
                (None, Some(s)) => Some(s.max(default.hard_limit.unwrap_or(0))),
                (None, None) => default.hard_limit,
            },
        },
    })
}

/// The services of a machine config (entries that make no sense are
/// skipped: the API validated what it accepted).
pub fn services(config: &Value) -> Vec<Service> {
    config["services"]
        .as_array()
        .map(|a| a.iter().filter_map(service).collect())
        .unwrap_or_default()
}

/// A machine as the proxy weighs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Index in the caller's list.
    pub index: usize,
    /// Started and serving.
    pub started: bool,
    /// Stopped or suspended, and `autostart` allows starting it.
    pub startable: bool,
    /// Cordoned, or failing its checks: takes no new traffic.
    pub out_of_rotation: bool,
    /// Current load (connections or requests).
    pub load: u32,
}

/// What the proxy does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// Send it to this machine.
    Use(usize),
    /// Start this machine and send it there once it listens.
    Start(usize),
    /// Nothing can take it.
    Unavailable,
}

/// Chooses a machine: the least loaded started machine under its soft
/// limit; when every started machine is at or over its soft limit (or none
/// is started), a startable machine is started if there is one; else the
/// least loaded machine under its hard limit. Ties go round: `turn` (a
/// counter the caller bumps per request) picks among equally loaded ones.
pub fn pick(candidates: &[Candidate], limits: &Concurrency, turn: usize) -> Pick {
    // (Asked per request: no allocation.)
    let live = || {
        candidates
            .iter()
            .filter(|c| c.started && !c.out_of_rotation)
    };
    let least = |under: &dyn Fn(&Candidate) -> bool| {
        let min = live().filter(|c| under(c)).map(|c| c.load).min()?;
        let ties = live().filter(|c| under(c) && c.load == min);
        let n = ties.clone().count();
        ties.map(|c| c.index).nth(turn % n)
    };
    if let Some(i) = least(&|c| c.load < limits.soft_limit) {
        return Pick::Use(i);
    }
    if let Some(c) = candidates
        .iter()
        .find(|c| c.startable && !c.started && !c.out_of_rotation)
    {
        return Pick::Start(c.index);
    }
    match least(&|c| limits.hard_limit.is_none_or(|h| c.load < h)) {
        Some(i) => Pick::Use(i),
        None => Pick::Unavailable,
    }
}

/// A started machine as the autostop pass sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    /// Index in the caller's list.
    pub index: usize,
    /// Its load now.
    pub load: u32,
    /// Time since its last request or connection ended (or since it
    /// started, when it had none).
    pub idle_for: Duration,
}

/// The started machines of one service to stop (or suspend): those idle
/// for at least `idle`, the longest idle first, keeping
/// `min_machines_running` started.
pub fn autostop(running: &[Running], min_machines_running: u32, idle: Duration) -> Vec<usize> {
    let mut idle_ones: Vec<&Running> = running
        .iter()
        .filter(|r| r.load == 0 && r.idle_for >= idle)
        .collect();
    idle_ones.sort_by(|a, b| b.idle_for.cmp(&a.idle_for).then(a.index.cmp(&b.index)));
    let spare = running.len().saturating_sub(min_machines_running as usize);
    idle_ones.into_iter().take(spare).map(|r| r.index).collect()
}

/// [`autostop`] across a cluster: `ids` names each of `running` (this
/// host's started machines), `remote` the started machines of the other
/// hosts. The machines kept are the `min_machines_running` lowest ids of
/// all of them, so that every host, deciding alone, keeps the same ones;
/// this host's others stop once idle.
pub fn autostop_cluster(
    running: &[Running],
    ids: &[(usize, &str)],
    remote: &[String],
    min_machines_running: u32,
    idle: Duration,
) -> Vec<usize> {
    let mut all: Vec<&str> = ids
        .iter()
        .map(|(_, id)| *id)
        .chain(remote.iter().map(String::as_str))
        .collect();
    all.sort_unstable();
    all.dedup();
    let kept = &all[..all.len().min(min_machines_running as usize)];
    running
        .iter()
        .filter(|r| r.load == 0 && r.idle_for >= idle)
        .filter(|r| {
            ids.iter()
                .find(|(i, _)| *i == r.index)
                .is_some_and(|(_, id)| !kept.contains(id))
        })
        .map(|r| r.index)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_ports_read_back_what_they_wrote() {
        let config = serde_json::json!({"services": [
            {"protocol": "tcp", "internal_port": 8080, "ports": [
                {"port": 443, "handlers": ["tls", "http"]},
                {"port": 80, "handlers": ["http"], "force_https": true}]},
            {"protocol": "tcp", "internal_port": 5432, "ports": [{"start_port": 5432, "end_port": 5433}]},
            {"protocol": "udp", "internal_port": 53, "ports": [{"port": 53}]}]});
        let ports = PublicPort::of(&services(&config));
        assert_eq!(ports.len(), 4);
        let text = PublicPort::encode(&ports);
        assert_eq!(
            text,
            "tcp:443-443:tls,http;tcp:80-80:http:force_https;tcp:5432-5433:;udp:53-53:"
        );
        assert_eq!(PublicPort::decode(&text), ports);
        assert!(PublicPort::decode("").is_empty());
        assert!(PublicPort::decode("sctp:1-2:;tcp:9-3:;tcp:x-1:").is_empty());
    }
    use serde_json::json;

    #[test]
    fn across_hosts_every_host_keeps_the_same_machines() {
        let idle = Duration::from_secs(60);
        let r = |index, load, secs| Running {
            index,
            load,
            idle_for: Duration::from_secs(secs),
        };
        // Host A runs a and c, host B runs b; min 1: a (lowest) is kept.
        let a = autostop_cluster(
            &[r(0, 0, 100), r(1, 0, 100)],
            &[(0, "a"), (1, "c")],
            &["b".to_owned()],
            1,
            idle,
        );
        assert_eq!(a, vec![1]);
        let b = autostop_cluster(
            &[r(0, 0, 100)],
            &[(0, "b")],
            &["a".into(), "c".into()],
            1,
            idle,
        );
        assert_eq!(b, vec![0]);
        // Busy or not idle long enough: kept for now.
        assert!(autostop_cluster(&[r(0, 1, 100)], &[(0, "b")], &["a".into()], 1, idle).is_empty());
        assert!(autostop_cluster(&[r(0, 0, 5)], &[(0, "b")], &["a".into()], 1, idle).is_empty());
        // min 0: everything idle goes.
        assert_eq!(
            autostop_cluster(&[r(0, 0, 100)], &[(0, "a")], &["b".into()], 0, idle),
            vec![0]
        );
        // min above the count: nothing goes.
        assert!(autostop_cluster(&[r(0, 0, 100)], &[(0, "b")], &["a".into()], 2, idle).is_empty());
    }

    #[test]
    fn services_parse_liberally() {
        let s = services(&json!({"services": [
            {"protocol": "tcp", "internal_port": 8080, "autostop": "suspend", "autostart": true,
             "min_machines_running": 1,
             "concurrency": {"type": "requests", "soft_limit": 5, "hard_limit": 10},
             "ports": [{"port": 80, "handlers": ["HTTP"], "force_https": true},
                       {"port": 443, "handlers": ["tls", "http"]},
                       {"start_port": 9000, "end_port": 9010},
                       {"handlers": ["http"]}]},
            {"internal_port": 99999},
            {"internal_port": 53, "protocol": "udp", "autostop": true}
        ]}));
        assert_eq!(s.len(), 2);
        let web = &s[0];
        assert_eq!(web.internal_port, 8080);
        assert_eq!(web.autostop, Autostop::Suspend);
        assert!(web.autostart);
        assert_eq!(web.min_machines_running, 1);
        assert_eq!(
            web.concurrency,
            Concurrency {
                kind: LoadKind::Requests,
                soft_limit: 5,
                hard_limit: Some(10)
            }
        );
        assert_eq!(web.ports.len(), 3);
        assert!(web.ports[0].is_http() && web.ports[0].force_https && !web.ports[0].is_tls());
        assert!(web.ports[1].is_tls());
        assert!(web.ports[2].covers(9005) && !web.ports[2].covers(9011));
        assert_eq!(s[1].protocol, Protocol::Udp);
        assert_eq!(s[1].autostop, Autostop::Stop);
        assert!(!s[1].autostart);
        assert_eq!(s[1].concurrency, Concurrency::default());
        assert!(services(&json!({})).is_empty());
        assert!(services(&json!({"services": "nope"})).is_empty());
    }

    fn cand(index: usize, started: bool, startable: bool, load: u32) -> Candidate {
        Candidate {
            index,
            started,
            startable,
            out_of_rotation: false,
            load,
        }
    }

    #[test]
    fn picks_the_least_loaded_then_starts_more_then_overflows() {
        let l = Concurrency {
            kind: LoadKind::Requests,
            soft_limit: 2,
            hard_limit: Some(3),
        };
        let c = [
            cand(0, true, false, 1),
            cand(1, true, false, 0),
            cand(2, false, true, 0),
        ];
        assert_eq!(pick(&c, &l, 0), Pick::Use(1));
        // All at the soft limit: start the stopped one.
        let c = [
            cand(0, true, false, 2),
            cand(1, true, false, 2),
            cand(2, false, true, 0),
        ];
        assert_eq!(pick(&c, &l, 0), Pick::Start(2));
        // Nothing to start: over the soft limit, under the hard one.
        let c = [cand(0, true, false, 2), cand(1, true, false, 3)];
        assert_eq!(pick(&c, &l, 0), Pick::Use(0));
        let c = [cand(0, true, false, 3)];
        assert_eq!(pick(&c, &l, 0), Pick::Unavailable);
        // Nothing started: start one; nothing startable: unavailable.
        assert_eq!(pick(&[cand(0, false, true, 0)], &l, 0), Pick::Start(0));
        assert_eq!(pick(&[cand(0, false, false, 0)], &l, 0), Pick::Unavailable);
        assert_eq!(pick(&[], &l, 0), Pick::Unavailable);
        // Out of rotation (cordoned, failing checks) takes nothing.
        let mut out = cand(0, true, false, 0);
        out.out_of_rotation = true;
        assert_eq!(pick(&[out, cand(1, true, false, 1)], &l, 0), Pick::Use(1));
    }

    #[test]
    fn autostop_keeps_the_minimum_and_busy_machines() {
        let r = |index, load, secs| Running {
            index,
            load,
            idle_for: Duration::from_secs(secs),
        };
        let idle = Duration::from_secs(300);
        // Two idle, one busy, one recently used.
        let running = [r(0, 0, 400), r(1, 0, 900), r(2, 3, 0), r(3, 0, 10)];
        assert_eq!(autostop(&running, 0, idle), vec![1, 0]);
        assert_eq!(autostop(&running, 3, idle), vec![1]);
        assert_eq!(autostop(&running, 4, idle), Vec::<usize>::new());
        assert_eq!(autostop(&[r(0, 0, 299)], 0, idle), Vec::<usize>::new());
        assert_eq!(autostop(&[], 0, idle), Vec::<usize>::new());
    }
}
