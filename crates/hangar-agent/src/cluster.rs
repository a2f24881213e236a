//! What the cluster layer (`hangar-cluster`) asks of a host's agent: the
//! catalogue changes this host made (its outbox), applying those of other
//! hosts, and a summary of the machines it runs for the shared directory.

use std::sync::Arc;

use crate::store::{AppRecord, CatalogChange, TokenRow};
use crate::{Agent, AgentError};

/// One machine this host runs, as the cluster's directory lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineSummary {
    /// Machine id.
    pub id: String,
    /// Its app.
    pub app: String,
    /// Its state.
    pub state: String,
    /// Its region.
    pub region: String,
    /// vCPUs it reserves.
    pub cpus: u32,
    /// Memory it reserves, MiB.
    pub memory_mb: u64,
    /// The machines it stands by for (`config.standbys`).
    pub standbys: Vec<String>,
    /// The public ports its services serve over HTTP, as `start-end`
    /// ranges (a host's proxy relays requests for them).
    pub http_ports: Vec<(u16, u16)>,
    /// Every public port of its services, with protocol and handlers (a
    /// host's proxy listens on the app's dedicated addresses for them and
    /// relays raw connections and datagrams).
    pub ports: Vec<hangar_core::services::PublicPort>,
    /// Its 6PN address (empty before it has one).
    pub private_ip: String,
    /// Its process group (`metadata.fly_process_group`).
    pub process_group: Option<String>,
}

/// One volume this host holds, as the cluster's directory lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSummary {
    /// Volume id.
    pub id: String,
    /// Its app.
    pub app: String,
    /// Its region.
    pub region: String,
    /// Its size, GB.
    pub size_gb: i64,
    /// Its state.
    pub state: String,
}

/// What a host knows of the machines other hosts run (its copy of the
/// cluster's directory).
pub trait RemoteMachines: Send + Sync {
    /// Whether another host runs machine `id` of `app`.
    fn exists(&self, app: &str, id: &str) -> bool;

    /// The machines other hosts run on network `net` (by the third group
    /// of their 6PN address), as the internal DNS server answers them:
    /// those of hosts that are down left out.
    fn dns_entries(&self, net: u16) -> Vec<hangar_net::dns::Entry> {
        let _ = net;
        Vec::new()
    }

    /// The cluster-wide id of network `name` (made when it has none).
    /// Networks carry the same id on every host, so that a 6PN prefix
    /// means one network everywhere.
    fn network_id(&self, name: &str) -> NetworkIdFuture<'_>;
}

/// What [`RemoteMachines::network_id`] returns.
pub type NetworkIdFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<u16, String>> + Send + 'a>>;

/// The internal DNS server's view: this host's machines from its store,
/// and once it is in a cluster, the other hosts' from the directory.
pub(crate) struct HostDns(pub(crate) Arc<crate::Shared>);

impl hangar_net::dns::Directory for HostDns {
    fn machines(&self, gateway: std::net::IpAddr) -> Vec<hangar_net::dns::Entry> {
        let store = &self.0.store;
        let mut out = hangar_net::dns::Directory::machines(store, gateway);
        let Some(remote) = self.0.remote.get() else {
            return out;
        };
        let net = match gateway {
            std::net::IpAddr::V6(a) => Some(a.segments()[2]),
            std::net::IpAddr::V4(a) => store.network_of_block(a.octets()[2]).ok().flatten(),
        };
        if let Some(net) = net {
            out.extend(remote.dns_entries(net));
        }
        out
    }
}

impl Agent {
    /// Puts this host in a cluster: catalogue changes go to the outbox from
    /// now on.
    pub fn enable_cluster(&self, remote: Arc<dyn RemoteMachines>) {
        self.shared.store.set_clustered();
        let _ = self.shared.remote.set(remote);
    }

    /// Gives network `name` its cluster-wide id in this host's store before
    /// a machine is addressed on it (nothing outside a cluster).
    pub(crate) async fn ensure_cluster_network(&self, name: &str) -> Result<(), AgentError> {
        let Some(remote) = self.shared.remote.get() else {
            return Ok(());
        };
        let idx = remote.network_id(name).await.map_err(|e| {
            AgentError::Unavailable(format!(
                "network {name:?} has no id in the cluster yet and the cluster database cannot give it one: {e}"
            ))
        })?;
        self.shared.store.adopt_network(name, idx)
    }

    /// The oldest catalogue changes this host has not sent yet.
    pub fn cluster_outbox(&self, limit: usize) -> Result<Vec<(i64, CatalogChange)>, AgentError> {
        self.shared.store.outbox(limit)
    }

    /// Puts this host's whole catalogue in the outbox again: the cluster's
    /// database went back in time (restored from a backup).
    pub fn cluster_requeue_catalog(&self) -> Result<usize, AgentError> {
        self.shared.store.requeue_catalog()
    }

    /// The networks this host knows, with their ids.
    pub fn networks(&self) -> Result<Vec<(String, u16)>, AgentError> {
        self.shared.store.networks()
    }

    /// Marks the outbox sent up to `seq`.
    pub fn cluster_outbox_sent(&self, seq: i64) -> Result<(), AgentError> {
        self.shared.store.outbox_sent(seq)
    }

    /// A value this host keeps about the cluster.
    pub fn cluster_value(&self, key: &str) -> Result<Option<String>, AgentError> {
        self.shared.store.cluster_value(key)
    }

    /// Sets a value this host keeps about the cluster.
    pub fn set_cluster_value(&self, key: &str, value: &str) -> Result<(), AgentError> {
        self.shared.store.set_cluster_value(key, value)
    }

    /// Applies a catalogue change another host made. An app deleted
    /// elsewhere takes this host's machines and volumes of it along.
    pub async fn apply_catalog_change(&self, change: &CatalogChange) -> Result<(), AgentError> {
        match change {
            CatalogChange::App {
                id,
                name,
                org_slug,
                network,
                internal_numeric_id,
                created_at,
            } => self.shared.store.apply_app(&AppRecord {
                id: id.clone(),
                name: name.clone(),
                org_slug: org_slug.clone(),
                network: network.clone(),
                internal_numeric_id: *internal_numeric_id,
                created_at: created_at.clone(),
                machine_count: 0,
            }),
            CatalogChange::AppDeleted { name } => match self.delete_app_as(name, true, false).await
            {
                Err(AgentError::NotFound(_)) => Ok(()),
                r => r,
            },
            CatalogChange::Token {
                id,
                app,
                name,
                created_at,
                expires_at,
                minted_by,
                hash,
            } => self.shared.store.apply_token(
                &TokenRow {
                    id: id.clone(),
                    app: app.clone(),
                    name: name.clone(),
                    created_at: created_at.clone(),
                    expires_at: *expires_at,
                    minted_by: minted_by.clone(),
                },
                hash,
            ),
            CatalogChange::TokenDeleted { id } => self.shared.store.apply_token_deleted(id),
            CatalogChange::Secrets {
                app,
                changes,
                version,
            } => self.shared.store.apply_secrets(app, changes, *version),
            CatalogChange::Ip {
                ip,
                app,
                region,
                service_name,
                created_at,
            } => self.shared.store.apply_ip(&crate::ips::IpAssignment {
                ip: ip.clone(),
                app: app.clone(),
                region: region.clone(),
                service_name: service_name.clone(),
                shared: false,
                created_at: created_at.clone(),
            }),
            CatalogChange::IpReleased { ip, app } => self.shared.store.apply_ip_released(app, ip),
            CatalogChange::Release { host, release } => self
                .shared
                .store
                .apply_release(host.as_deref().unwrap_or("unknown"), release),
        }
    }

    /// An id of this host's secrets key (a digest made with it, not the
    /// key): the hosts of a cluster must share the key to share secrets.
    pub fn secrets_key_id(&self) -> String {
        self.shared.secrets.digest("hangar", "secrets key id", b"")
    }

    /// Every volume this host holds, for the directory.
    pub fn volume_summaries(&self) -> Result<Vec<VolumeSummary>, AgentError> {
        let mut out = Vec::new();
        for app in self.shared.store.list_apps(crate::DEFAULT_ORG)? {
            for v in self.list_volumes(&app.name)? {
                out.push(VolumeSummary {
                    id: v.id,
                    app: v.app,
                    region: v.region,
                    size_gb: v.size_gb,
                    state: v.state,
                });
            }
        }
        Ok(out)
    }

    /// Every machine this host runs (not destroyed), for the directory.
    pub fn machine_summaries(&self) -> Result<Vec<MachineSummary>, AgentError> {
        let mut out = Vec::new();
        for app in self.shared.store.list_apps(crate::DEFAULT_ORG)? {
            for m in self.shared.store.list_machines(&app.name, false)? {
                out.push(MachineSummary {
                    id: m.id.to_string(),
                    app: m.app.clone(),
                    state: m.core.state.to_string(),
                    region: m.region.clone(),
                    cpus: m.spec.guest.cpus,
                    memory_mb: m.spec.guest.memory_mb,
                    standbys: m.spec.standbys.iter().map(|s| s.to_string()).collect(),
                    http_ports: m
                        .spec
                        .services
                        .iter()
                        .flat_map(|s| s.ports.iter())
                        .filter(|p| p.is_http())
                        .map(|p| (p.start, p.end))
                        .collect(),
                    ports: hangar_core::services::PublicPort::of(&m.spec.services),
                    private_ip: m.private_ip.clone(),
                    process_group: m.spec.metadata.get("fly_process_group").cloned(),
                });
            }
        }
        Ok(out)
    }
}
