//! The proxy's view of hangard's machines: apps, their machines' services
//! and addresses, and starting and stopping them through the agent (so
//! that the proxy's starts and stops are recorded like anyone else's).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hangar_agent::{Agent, DEFAULT_ORG, WaitFor};
use hangar_core::MachineState;
use hangar_proxy::{Backend, ControlError, State};

/// [`hangar_proxy::Machines`] over the agent.
pub struct AgentMachines {
    pub agent: Agent,
    /// Each app's backends, with the state version they were read at
    /// (database changes, check standings): the proxy asks per request.
    cache: Mutex<HashMap<String, Cached>>,
    /// Each app's statics, with the state version they were read at.
    statics: Mutex<HashMap<String, CachedStatics>>,
    /// In a cluster: where the other hosts' proxies are.
    pub cluster: std::sync::OnceLock<hangar_cluster::Cluster>,
}

/// Statics as read at a state version.
type CachedStatics = (u64, Arc<Vec<hangar_proxy::Static>>);

/// Backends as read at a state version (database changes, check standings).
type Cached = ((u64, u64), Arc<Vec<Backend>>);

impl AgentMachines {
    /// The proxy's view of `agent`'s machines.
    pub fn new(agent: Agent) -> AgentMachines {
        AgentMachines {
            agent,
            cache: Mutex::new(HashMap::new()),
            statics: Mutex::new(HashMap::new()),
            cluster: std::sync::OnceLock::new(),
        }
    }

    fn read_backends(&self, app: &str) -> Vec<Backend> {
        let Ok(machines) = self.agent.list_machines(app, false) else {
            return Vec::new();
        };
        machines
            .into_iter()
            .filter_map(|m| {
                let addr = self.agent.machine_address(m.id.as_str()).ok().flatten()?;
                let mut services = m.spec.services.clone();
                if m.spec.is_standby() {
                    for s in &mut services {
                        s.autostart = false;
                    }
                }
                Some(Backend {
                    id: m.id.as_str().into(),
                    addr: IpAddr::V4(addr.ipv4()),
                    state: match m.core.state {
                        MachineState::Started => State::Started,
                        MachineState::Stopped => State::Stopped,
                        MachineState::Suspended => State::Suspended,
                        _ => State::Other,
                    },
                    out_of_rotation: m.cordoned || self.agent.failing_traffic_checks(m.id.as_str()),
                    services,
                    statics: m.config["statics"]
                        .as_array()
                        .is_some_and(|s| !s.is_empty()),
                })
            })
            .collect()
    }
}

#[async_trait::async_trait]
impl hangar_proxy::Machines for AgentMachines {
    fn apps(&self) -> Vec<String> {
        self.agent
            .list_apps(DEFAULT_ORG)
            .map(|apps| apps.into_iter().map(|a| a.name).collect())
            .unwrap_or_default()
    }

    fn backends(&self, app: &str) -> Arc<Vec<Backend>> {
        let version = (self.agent.state_version(), self.agent.checks_generation());
        if let Some((v, b)) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(app)
        {
            if *v == version {
                return Arc::clone(b);
            }
        }
        let fresh = Arc::new(self.read_backends(app));
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(app.to_owned(), (version, Arc::clone(&fresh)));
        fresh
    }

    fn remote(&self, app: &str, port: u16) -> Option<std::net::SocketAddr> {
        self.cluster.get()?.edge_for(app, port)
    }

    fn remote_started(&self, app: &str, ports: &[(u16, u16)]) -> Vec<String> {
        self.cluster
            .get()
            .map(|c| c.remote_started(app, ports))
            .unwrap_or_default()
    }

    fn remote_raw(
        &self,
        app: &str,
        port: u16,
        protocol: hangar_core::services::Protocol,
    ) -> Option<std::net::SocketAddr> {
        self.cluster.get()?.raw_edge_for(app, port, protocol)
    }

    fn remote_ports(&self, app: &str) -> Vec<hangar_core::services::PublicPort> {
        self.cluster
            .get()
            .map(|c| c.remote_ports(app))
            .unwrap_or_default()
    }

    fn is_peer(&self, ip: std::net::IpAddr) -> bool {
        self.cluster.get().is_some_and(|c| c.is_peer_address(ip))
    }

    async fn statics(&self, app: &str) -> Arc<Vec<hangar_proxy::Static>> {
        let version = self.agent.state_version();
        if let Some((v, s)) = self
            .statics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(app)
        {
            if *v == version {
                return Arc::clone(s);
            }
        }
        // The statics of the app's newest started machine that has some
        // (a deploy gives every machine of a release the same), served from
        // its image.
        let mut found = Vec::new();
        let mut machines = self.agent.list_machines(app, false).unwrap_or_default();
        machines.retain(|m| {
            m.config["statics"]
                .as_array()
                .is_some_and(|s| !s.is_empty())
                && m.core.state == MachineState::Started
        });
        machines.sort_by_key(|m| std::cmp::Reverse(m.updated_at_ms));
        if let Some(m) = machines.first() {
            if let Some(image) = m.config["image"].as_str() {
                if let Ok(layers) = self.agent.image_layers(image).await {
                    for s in m.config["statics"].as_array().into_iter().flatten() {
                        let (Some(prefix), Some(path)) =
                            (s["url_prefix"].as_str(), s["guest_path"].as_str())
                        else {
                            continue;
                        };
                        found.push(hangar_proxy::Static {
                            url_prefix: prefix.to_owned(),
                            guest_path: path.to_owned(),
                            index_document: s["index_document"].as_str().map(str::to_owned),
                            layers: layers.clone(),
                        });
                    }
                }
            }
        }
        let fresh = Arc::new(found);
        let mut cache = self.statics.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(app.to_owned(), (version, Arc::clone(&fresh)));
        fresh
    }

    fn dedicated_ips(&self) -> Vec<(String, IpAddr)> {
        self.agent
            .all_ips()
            .unwrap_or_default()
            .into_iter()
            .filter(|a| !a.shared)
            .filter_map(|a| Some((a.app, a.ip.parse().ok()?)))
            .collect()
    }

    async fn start(&self, app: &str, id: &str) -> Result<(), ControlError> {
        self.agent.start_machine(app, id, None).await?;
        self.agent
            .wait_machine(
                app,
                id,
                &[WaitFor::State(MachineState::Started)],
                Duration::from_secs(60),
            )
            .await?;
        Ok(())
    }

    async fn stop(&self, app: &str, id: &str, suspend: bool) -> Result<(), ControlError> {
        let r = if suspend {
            self.agent.suspend_machine(app, id, None).await
        } else {
            self.agent.stop_machine(app, id, None, None, None).await
        };
        r?;
        Ok(())
    }
}

/// The proxy's traffic per machine, for the deploy executor's drains.
pub struct ProxyTraffic(pub Arc<hangar_proxy::Proxy>);

impl hangar_deploy::Traffic for ProxyTraffic {
    fn on(&self, id: &str) -> u32 {
        self.0.traffic(id)
    }
}

impl hangar_api::proxy_view::ProxyView for ProxyTraffic {
    fn machines(&self, app: &str) -> Vec<hangar_api::proxy_view::ProxyMachine> {
        self.0
            .view(app)
            .into_iter()
            .map(|b| hangar_api::proxy_view::ProxyMachine {
                id: b.id,
                host: None,
                state: match b.state {
                    hangar_proxy::State::Started => "started",
                    hangar_proxy::State::Stopped => "stopped",
                    hangar_proxy::State::Suspended => "suspended",
                    hangar_proxy::State::Other => "other",
                }
                .to_owned(),
                in_rotation: b.in_rotation,
                why_not: b.why_not.map(str::to_owned),
                in_flight: b.in_flight,
                connections: b.connections,
                idle_secs: b.idle_secs,
                services: b.services,
            })
            .collect()
    }
}
