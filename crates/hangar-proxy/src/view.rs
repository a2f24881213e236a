//! What the proxy sees of an app's machines, for the dashboard: which take
//! traffic now, the load on each, and how long each has been idle.

use super::*;

/// One of an app's machines, as the proxy sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendView {
    /// The machine.
    pub id: String,
    /// Its state.
    pub state: State,
    /// Whether new requests and connections may go to it now.
    pub in_rotation: bool,
    /// Why not, when not.
    pub why_not: Option<&'static str>,
    /// HTTP requests in flight and raw connections open on it.
    pub in_flight: u32,
    /// Client connections bound to it.
    pub connections: u32,
    /// Seconds since its last request ended (while the proxy knows).
    pub idle_secs: Option<f64>,
    /// Its services, each as `80/http,443/tls+http → 8080 (autostop
    /// stop, autostart, min 1)`.
    pub services: Vec<String>,
}

impl Proxy {
    /// The app's machines, as the proxy sees them.
    pub fn view(&self, app: &str) -> Vec<BackendView> {
        let backends = self.machines.backends(app);
        let loads = self.loads.lock().unwrap_or_else(|p| p.into_inner());
        backends
            .iter()
            .map(|b| {
                let load = loads.get(&b.id);
                let why_not = match b.state {
                    State::Started if b.out_of_rotation => Some("cordoned or failing a check"),
                    State::Started => None,
                    State::Stopped => Some("stopped"),
                    State::Suspended => Some("suspended"),
                    State::Other => Some("not running"),
                };
                BackendView {
                    id: b.id.to_string(),
                    state: b.state,
                    in_rotation: why_not.is_none(),
                    why_not,
                    in_flight: load.map_or(0, |l| l.in_flight),
                    connections: load.map_or(0, |l| l.conns),
                    idle_secs: load
                        .filter(|l| l.in_flight == 0)
                        .map(|l| l.last_active.elapsed().as_secs_f64()),
                    services: b.services.iter().map(describe).collect(),
                }
            })
            .collect()
    }
}

/// A service in one line.
fn describe(s: &Service) -> String {
    let ports: Vec<String> = s
        .ports
        .iter()
        .map(|p| {
            let ports = if p.start == p.end {
                p.start.to_string()
            } else {
                format!("{}-{}", p.start, p.end)
            };
            if p.handlers.is_empty() {
                ports
            } else {
                format!("{ports}/{}", p.handlers.join("+"))
            }
        })
        .collect();
    let mut notes = Vec::new();
    match s.autostop {
        Autostop::Off => {}
        Autostop::Stop => notes.push("autostop stop".to_owned()),
        Autostop::Suspend => notes.push("autostop suspend".to_owned()),
    }
    if s.autostart {
        notes.push("autostart".into());
    }
    if s.min_machines_running > 0 {
        notes.push(format!("min {}", s.min_machines_running));
    }
    let protocol = match s.protocol {
        services::Protocol::Tcp => "",
        services::Protocol::Udp => " udp",
    };
    let notes = if notes.is_empty() {
        String::new()
    } else {
        format!(" ({})", notes.join(", "))
    };
    format!("{} → {}{protocol}{notes}", ports.join(","), s.internal_port)
}
