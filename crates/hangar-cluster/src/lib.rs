//! Many hosts, one platform: each `hangard` keeps its own SQLite state and
//! stays the authority for the machines it runs (Fly's flyd model);
//! PostgreSQL holds what hosts share:
//!
//! ```text
//!  hangard A ──┐  hosts      (id, region, API URL, capacity, heartbeat, state)
//!  hangard B ──┼─ apps       (names unique across the cluster)
//!  hangard C ──┘  changes    (the catalogue's log: apps, tokens; by revision)
//!                 machines   (directory: machine → host, state, reservation)
//! ```
//!
//! A host writes its catalogue changes to a local outbox in the same SQLite
//! transaction, and a background session sends them here afterwards, so a
//! crash in between loses nothing. Every host follows `changes` by revision
//! (woken by `NOTIFY`, and every half second regardless) and applies what
//! other hosts did to its own SQLite; it publishes its machines to the
//! directory and keeps a copy of the directory and the hosts in memory. No
//! request reads PostgreSQL: the API and the proxy read the copies, so a host
//! whose database is gone keeps serving what it runs, and catches up when
//! the database is back.
//!
//! Liveness: hosts stamp their row with the database's clock; any host's
//! sweeper marks those silent for longer than `down_after` `down` with one
//! conditional `UPDATE ... RETURNING`, which exactly one sweeper wins.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hangar_agent::store::CatalogChange;
use hangar_agent::{Agent, MachineSummary};
use hangar_core::services::{Protocol, PublicPort};
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, NoTls};

/// The statements hosts run against the shared database each round (also
/// what `bench/` drives to simulate a large cluster).
pub mod sql {
    /// The schema, idempotent (run under an advisory lock).
    pub const SCHEMA: &str = include_str!("schema.sql");
    /// Registers a host (again).
    pub const REGISTER: &str = "INSERT INTO hosts (id, region, api_url, cpus, memory_mb, admin_token_hash, secrets_key_id, proxy_addr, mesh_key, mesh_endpoint)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT (id) DO UPDATE SET
                    region = excluded.region, api_url = excluded.api_url,
                    cpus = excluded.cpus, memory_mb = excluded.memory_mb,
                    admin_token_hash = excluded.admin_token_hash,
                    secrets_key_id = excluded.secrets_key_id,
                    proxy_addr = excluded.proxy_addr,
                    mesh_key = excluded.mesh_key, mesh_endpoint = excluded.mesh_endpoint,
                    epoch = hosts.epoch + CASE WHEN hosts.state = 'down' THEN 1 ELSE 0 END,
                    state = 'up', heartbeat_at = now()
                 RETURNING epoch";
    /// A host's heartbeat.
    pub const HEARTBEAT: &str =
        "UPDATE hosts SET heartbeat_at = now() WHERE id = $1 AND state = 'up'";
    /// Declares silent hosts down ($1: seconds).
    pub const SWEEP: &str = "UPDATE hosts SET state = 'down'
                 WHERE state = 'up' AND heartbeat_at < now() - make_interval(secs => $1)
                 RETURNING id";
    /// Appends to the change log.
    pub const APPEND_CHANGE: &str = "INSERT INTO changes (origin, body) VALUES ($1, $2)";
    /// Reads the change log after a revision.
    pub const FOLLOW: &str =
        "SELECT rev, origin, body FROM changes WHERE rev > $1 ORDER BY rev LIMIT 500";
    /// Publishes a machine to the directory.
    pub const UPSERT_MACHINE: &str = "INSERT INTO machines (id, app, host, region, state, cpus, memory_mb, standbys, http_ports, private_ip, process_group, ports, rev, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, nextval('machine_revs'), now())
                 ON CONFLICT (id) DO UPDATE SET app = excluded.app, host = excluded.host,
                    region = excluded.region, state = excluded.state, cpus = excluded.cpus,
                    memory_mb = excluded.memory_mb, standbys = excluded.standbys,
                    http_ports = excluded.http_ports, private_ip = excluded.private_ip,
                    process_group = excluded.process_group, ports = excluded.ports,
                    rev = excluded.rev, updated_at = now()";
    /// Held by every transaction that writes the directory: revisions
    /// commit in the order they are taken.
    pub const LOCK_DIRECTORY: &str = "SELECT pg_advisory_xact_lock(424243)";
    /// Marks machines of a host gone from the directory ($2: ids).
    pub const DELETE_MACHINES: &str =
        "UPDATE machines SET state = 'gone', rev = nextval('machine_revs'), updated_at = now()
                 WHERE host = $1 AND id = ANY($2) AND state <> 'gone'";
    /// Marks the machines of a host that are not in $2 gone.
    pub const REPLACE_MACHINES: &str =
        "UPDATE machines SET state = 'gone', rev = nextval('machine_revs'), updated_at = now()
                 WHERE host = $1 AND NOT (id = ANY($2)) AND state <> 'gone'";
    /// Forgets machines gone for ten minutes (a host rereads the whole
    /// directory every five).
    pub const PURGE_MACHINES: &str =
        "DELETE FROM machines WHERE state = 'gone' AND updated_at < now() - interval '10 minutes'";
    /// Reads the hosts.
    pub const READ_HOSTS: &str = "SELECT id, region, api_url, state, drained, cpus, memory_mb,
                        admin_token_hash, epoch,
                        EXTRACT(EPOCH FROM now() - heartbeat_at)::float8, proxy_addr,
                        mesh_key, mesh_endpoint,
                        COALESCE((SELECT idx FROM host_indexes WHERE host = hosts.id), 0)
                 FROM hosts";
    /// Publishes a volume.
    pub const UPSERT_VOLUME: &str = "INSERT INTO volumes (id, app, host, region, size_gb, state)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (id) DO UPDATE SET app = excluded.app, host = excluded.host,
                    region = excluded.region, size_gb = excluded.size_gb, state = excluded.state";
    /// Forgets the volumes of host $1 that are not in $2.
    pub const REPLACE_VOLUMES: &str = "DELETE FROM volumes WHERE host = $1 AND NOT (id = ANY($2))";
    /// Reads the volumes.
    pub const READ_VOLUMES: &str = "SELECT id, app, host, region, size_gb, state FROM volumes";
    /// Reads the networks.
    pub const READ_NETWORKS: &str = "SELECT name, idx FROM networks";
    /// Gives network $1 an id (the lowest free one) unless it has one.
    pub const ADD_NETWORK: &str = "INSERT INTO networks (name, idx)
                 SELECT $1, min(i) FROM generate_series(1, 4095) i
                 WHERE i NOT IN (SELECT idx FROM networks)
                 ON CONFLICT (name) DO NOTHING";
    /// Gives host $1 its number in 6PN addresses unless it has one.
    pub const ADD_HOST_INDEX: &str = "INSERT INTO host_indexes (host, idx)
                 SELECT $1, min(i) FROM generate_series(1, 65535) i
                 WHERE i NOT IN (SELECT idx FROM host_indexes)
                 ON CONFLICT (host) DO NOTHING";
    /// Reads the directory's rows written after revision $1, in order.
    pub const READ_MACHINES: &str =
        "SELECT id, host, app, state, standbys, http_ports, cpus, memory_mb, rev,
                        region, private_ip, process_group, ports
                 FROM machines WHERE rev > $1 ORDER BY rev";
}

/// A cluster failure.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The database refused or could not be reached.
    #[error("cluster database: {context}")]
    Database {
        /// What was being done.
        context: String,
        /// Why.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A bad setting.
    #[error("cluster: {0}")]
    Config(String),
    /// The host agent failed.
    #[error("cluster: {0}")]
    Agent(#[from] hangar_agent::AgentError),
    /// The database did not answer in time.
    #[error("cluster database: no answer within {0:?}")]
    Timeout(Duration),
}

fn pg(context: &str) -> impl FnOnce(tokio_postgres::Error) -> ClusterError + '_ {
    move |source| ClusterError::Database {
        context: context.to_owned(),
        source,
    }
}

/// How this host joins.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `postgres://...` (or key=value settings).
    pub url: String,
    /// This host's id (unique in the cluster).
    pub host_id: String,
    /// This host's region.
    pub region: String,
    /// Where other hosts reach this host's API (`http://host:port`).
    pub api_url: String,
    /// Where other hosts' proxies reach this host's proxy (its plain HTTP
    /// listener), if it has one.
    pub proxy_addr: Option<std::net::SocketAddr>,
    /// vCPUs machines may reserve here.
    pub cpus: u32,
    /// Memory machines may reserve here, MiB.
    pub memory_mb: u64,
    /// SHA-256 (hex) of this host's admin token: every host accepts the
    /// admin token of every host.
    pub admin_token_hash: String,
    /// Silence after which a host is declared down.
    pub down_after: Duration,
    /// This host's end of the mesh, if it has one: its WireGuard public
    /// key (base64) and the UDP address the other hosts reach it at.
    pub mesh: Option<(String, std::net::SocketAddr)>,
    /// This host's admin token, which every host accepts: it asks other
    /// hosts how they see the database before fencing itself.
    pub admin_token: AdminToken,
}

/// An admin token, kept out of logs.
#[derive(Clone, Default)]
pub struct AdminToken(pub String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

/// What a host takes from the cluster before it opens its own state: the
/// shape of its 6PN addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// The installation's id (the same on every host).
    pub installation: u16,
    /// This host's number (the fourth group of its machines' addresses).
    pub host_index: u16,
}

/// A host, as the cluster knows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HostInfo {
    /// Its id.
    pub id: String,
    /// Its region.
    pub region: String,
    /// Its API.
    pub api_url: String,
    /// Its proxy's plain HTTP listener, for other hosts' proxies.
    pub proxy_addr: Option<std::net::SocketAddr>,
    /// `up` or `down`.
    pub state: String,
    /// Drained hosts take no new machines.
    pub drained: bool,
    /// vCPUs machines may reserve.
    pub cpus: u32,
    /// Memory machines may reserve, MiB.
    pub memory_mb: u64,
    /// vCPUs its machines reserve.
    pub reserved_cpus: u64,
    /// Memory its machines reserve, MiB.
    pub reserved_memory_mb: u64,
    /// Machines it runs (not destroyed).
    pub machines: u64,
    /// Seconds since its last heartbeat.
    pub heartbeat_age_secs: f64,
    /// How many times it has joined after being declared down, plus one.
    pub epoch: i64,
    /// Its number in 6PN addresses (`fdaa:<inst>:<net>:<index>::/64`).
    pub host_index: u16,
    /// Its WireGuard public key (empty: not on the mesh).
    pub mesh_key: String,
    /// Where its end of the mesh listens.
    pub mesh_endpoint: Option<std::net::SocketAddr>,
    #[serde(skip)]
    admin_token_hash: String,
}

/// Where a machine runs, as the directory says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DirEntry {
    /// The host that runs it.
    pub host: String,
    /// Its app.
    pub app: String,
    /// Its state.
    pub state: String,
    /// The machines it stands by for.
    pub standbys: Vec<String>,
    /// The public ports it serves over HTTP, as ranges.
    pub http_ports: Vec<(u16, u16)>,
    /// Every public port of its services.
    #[serde(skip)]
    pub ports: Vec<PublicPort>,
    /// vCPUs it reserves.
    pub cpus: u32,
    /// Memory it reserves, MiB.
    pub memory_mb: u64,
    /// Its region.
    pub region: String,
    /// Its 6PN address.
    pub private_ip: Option<std::net::Ipv6Addr>,
    /// Its process group.
    pub process_group: Option<String>,
}

fn ports_text(ports: &[(u16, u16)]) -> String {
    ports
        .iter()
        .map(|(a, b)| format!("{a}-{b}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn parse_ports(text: &str) -> Vec<(u16, u16)> {
    text.split(',')
        .filter_map(|r| {
            let (a, b) = r.split_once('-')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect()
}

/// No host can take a machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    /// No host of the region is up (or the region is unknown).
    #[error("Region '{0}' cannot host your machine")]
    Region(String),
    /// Hosts of the region are up but full.
    #[error("insufficient resources to create machine in region '{0}'")]
    Full(String),
    /// The only hosts of the region with room run the machines a standby
    /// would watch.
    #[error(
        "no host in region '{0}' can take a standby: the others run the machines it stands by for"
    )]
    Standby(String),
}

#[derive(Default)]
struct View {
    hosts: HashMap<String, HostInfo>,
    /// Networks' cluster-wide ids by name.
    networks: HashMap<String, u16>,
    /// Volumes by id: (app, host, region).
    volumes: HashMap<String, (String, String, String)>,
    /// Machines by id.
    machines: HashMap<String, DirEntry>,
    /// Machines created through this host on another, known before their
    /// owner publishes them (within a round); forgotten after ten seconds
    /// unless the directory has them by then.
    noted: HashMap<String, (DirEntry, Instant)>,
}

struct Inner {
    cfg: ClusterConfig,
    agent: Agent,
    view: Arc<RwLock<View>>,
    doorbell: Notify,
    health: std::sync::Mutex<Health>,
}

/// How this host's link to the database fares, for self-fencing.
struct Health {
    /// The last heartbeat the database took.
    last_ok: Instant,
    /// Whether this host has fenced in this outage (it judges again every
    /// second until it has: the other hosts may get the database back
    /// while this one stays cut off).
    judged: bool,
    /// Whether it has said that the database is gone for everyone.
    said_safe: bool,
    /// Machines this host stopped in this outage, to start again if it
    /// ends before anyone declared this host down.
    fenced: Vec<(String, String)>,
}

/// The agent's window on the directory (standbys of machines elsewhere).
struct Remote {
    view: Arc<RwLock<View>>,
    me: String,
    cfg: ClusterConfig,
}

impl hangar_agent::RemoteMachines for Remote {
    fn exists(&self, app: &str, id: &str) -> bool {
        let v = self.view.read().unwrap_or_else(|p| p.into_inner());
        v.machines
            .get(id)
            .is_some_and(|e| e.app == app && e.host != self.me && e.state != "destroyed")
    }

    fn dns_entries(&self, net: u16) -> Vec<hangar_net::dns::Entry> {
        let v = self.view.read().unwrap_or_else(|p| p.into_inner());
        v.machines
            .iter()
            .filter(|(_, e)| e.host != self.me && e.state != "destroyed")
            .filter(|(_, e)| v.hosts.get(&e.host).is_some_and(|h| h.state == "up"))
            .filter_map(|(id, e)| {
                let addr = e.private_ip?;
                (addr.segments()[2] == net).then(|| hangar_net::dns::Entry {
                    app: e.app.clone(),
                    id: id.clone(),
                    region: e.region.clone(),
                    process_group: e.process_group.clone(),
                    addr,
                    started: e.state == "started",
                })
            })
            .collect()
    }

    fn network_id(&self, name: &str) -> hangar_agent::NetworkIdFuture<'_> {
        let name = name.to_owned();
        Box::pin(async move {
            if let Some(i) = self
                .view
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .networks
                .get(&name)
            {
                return Ok(*i);
            }
            let idx = add_network(&self.cfg, &name)
                .await
                .map_err(|e| hangar_error_chain(&e))?;
            self.view
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .networks
                .insert(name, idx);
            Ok(idx)
        })
    }
}

/// Gives network `name` its cluster-wide id (made if it has none), on a
/// connection of its own: it happens once per network in the cluster's
/// life, when its first machine is made.
pub async fn add_network(cfg: &ClusterConfig, name: &str) -> Result<u16, ClusterError> {
    let db = OneShot::connect(cfg).await?;
    within(async {
        db.execute("SELECT pg_advisory_lock(424244)", &[])
            .await
            .map_err(pg("locking the networks"))?;
        db.execute(sql::ADD_NETWORK, &[&name])
            .await
            .map_err(pg("giving a network an id"))?;
        let row = db
            .query_one("SELECT idx FROM networks WHERE name = $1", &[&name])
            .await
            .map_err(pg("reading a network's id"))?;
        let idx: i32 = row.get(0);
        u16::try_from(idx).ok().filter(|i| *i > 0).ok_or_else(|| {
            ClusterError::Config("the cluster has no room for another network".into())
        })
    })
    .await
}

/// A connection for one short job (not a session's): closed when dropped,
/// each job bounded by the round timeout.
struct OneShot {
    db: tokio_postgres::Client,
    task: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
}

impl OneShot {
    async fn connect(cfg: &ClusterConfig) -> Result<OneShot, ClusterError> {
        let (db, conn) = connect(cfg).await?;
        Ok(OneShot {
            db,
            task: tokio::spawn(conn),
        })
    }
}

/// `job`, bounded by the round timeout.
async fn within<T>(
    job: impl std::future::Future<Output = Result<T, ClusterError>>,
) -> Result<T, ClusterError> {
    tokio::time::timeout(ROUND_TIMEOUT, job)
        .await
        .map_err(|_| ClusterError::Timeout(ROUND_TIMEOUT))?
}

impl std::ops::Deref for OneShot {
    type Target = tokio_postgres::Client;
    fn deref(&self) -> &tokio_postgres::Client {
        &self.db
    }
}

impl std::ops::DerefMut for OneShot {
    fn deref_mut(&mut self) -> &mut tokio_postgres::Client {
        &mut self.db
    }
}

impl Drop for OneShot {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Creates (or completes) the schema, under the schema's lock, in `tx`.
async fn create_schema(tx: &tokio_postgres::Transaction<'_>) -> Result<(), ClusterError> {
    tx.execute("SELECT pg_advisory_xact_lock(424242)", &[])
        .await
        .map_err(pg("locking the schema"))?;
    tx.batch_execute(sql::SCHEMA)
        .await
        .map_err(pg("creating the schema"))
}

/// The shape of this host's 6PN addresses, from the cluster's database:
/// the installation's id (`proposed`, this host's own, when the cluster has
/// none yet) and this host's number, made on its first join and kept.
pub async fn identity(cfg: &ClusterConfig, proposed: u16) -> Result<Identity, ClusterError> {
    check_id(&cfg.host_id)?;
    let mut db = OneShot::connect(cfg).await?;
    within(async {
        let tx = db
            .transaction()
            .await
            .map_err(pg("starting the identity transaction"))?;
        create_schema(&tx).await?;
        tx.execute(
            "INSERT INTO settings (key, value) VALUES ('installation', $1) ON CONFLICT (key) DO NOTHING",
            &[&proposed.to_string()],
        )
        .await
        .map_err(pg("recording the installation"))?;
        let inst: String = tx
            .query_one("SELECT value FROM settings WHERE key = 'installation'", &[])
            .await
            .map_err(pg("reading the installation"))?
            .get(0);
        tx.execute(sql::ADD_HOST_INDEX, &[&cfg.host_id])
            .await
            .map_err(pg("giving this host a number"))?;
        let idx: i32 = tx
            .query_one("SELECT idx FROM host_indexes WHERE host = $1", &[&cfg.host_id])
            .await
            .map_err(pg("reading this host's number"))?
            .get(0);
        tx.commit().await.map_err(pg("committing the identity"))?;
        let installation = inst
            .parse()
            .map_err(|_| ClusterError::Config(format!("bad installation id {inst:?}")))?;
        let host_index = u16::try_from(idx)
            .ok()
            .filter(|i| *i > 0)
            .ok_or_else(|| ClusterError::Config("the cluster has no room for another host".into()))?;
        Ok(Identity {
            installation,
            host_index,
        })
    })
    .await
}

/// Events of the cluster itself in the change log (origin `cluster`):
/// every host applies them, the one that wrote them too.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum ClusterEvent {
    /// A host was declared down, with the machines the directory had on it
    /// (`(app, id)`).
    HostDown {
        host: String,
        machines: Vec<(String, String)>,
    },
}

/// The origin of [`ClusterEvent`]s in the change log.
const CLUSTER_ORIGIN: &str = "cluster";

/// This host's membership of a cluster. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

/// How long one round of the session may take before it counts as a lost
/// database.
const ROUND_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the session runs when nothing wakes it.
const TICK: Duration = Duration::from_millis(500);
/// The least time from one round's start to the next one's.
const MIN_GAP: Duration = Duration::from_millis(100);
/// How often the hosts are read (the directory and the change log are
/// read every round).
const HOSTS_EVERY: Duration = Duration::from_secs(1);
/// How often hosts stamp their heartbeat.
const HEARTBEAT: Duration = Duration::from_secs(1);

impl Cluster {
    /// Joins the cluster: checks the database, creates the schema, registers
    /// this host and syncs once (apps, tokens, the directory) before
    /// returning; then keeps following in the background, through outages
    /// of the database.
    pub async fn join(cfg: ClusterConfig, agent: Agent) -> Result<Cluster, ClusterError> {
        check_id(&cfg.host_id)?;
        if cfg.region.is_empty() || cfg.api_url.is_empty() {
            return Err(ClusterError::Config(
                "a cluster host needs a region and the URL other hosts reach its API at".into(),
            ));
        }
        let view: Arc<RwLock<View>> = Arc::default();
        agent.enable_cluster(Arc::new(Remote {
            view: view.clone(),
            me: cfg.host_id.clone(),
            cfg: cfg.clone(),
        }));
        let cluster = Cluster {
            inner: Arc::new(Inner {
                cfg,
                agent,
                view,
                doorbell: Notify::new(),
                health: std::sync::Mutex::new(Health {
                    last_ok: Instant::now(),
                    judged: false,
                    said_safe: false,
                    fenced: Vec::new(),
                }),
            }),
        };
        // The first session must work: a host that cannot reach the
        // database at its first start has nothing to serve from.
        let mut session = Session::open(&cluster.inner).await?;
        session.register().await?;
        session.round().await?;
        tracing::info!(host = %cluster.inner.cfg.host_id, region = %cluster.inner.cfg.region, hosts = cluster.hosts().len(), "joined the cluster");
        let inner = cluster.inner.clone();
        tokio::spawn(async move { run(inner, Some(session)).await });
        let inner = cluster.inner.clone();
        tokio::spawn(async move { watchdog(inner).await });
        Ok(cluster)
    }

    /// The host that holds volume `id`, when it is another one.
    pub fn volume_owner(&self, id: &str) -> Option<HostInfo> {
        let v = self.inner.view.read().unwrap_or_else(|p| p.into_inner());
        let (_, host, _) = v.volumes.get(id)?;
        if *host == self.inner.cfg.host_id {
            return None;
        }
        v.hosts.get(host).cloned()
    }

    /// Records that volume `id` of `app` is now held by `host` (a create
    /// this host forwarded), ahead of the directory.
    pub fn note_volume(&self, id: &str, app: &str, host: &str) {
        let mut v = self.inner.view.write().unwrap_or_else(|p| p.into_inner());
        let region = v
            .hosts
            .get(host)
            .map(|h| h.region.clone())
            .unwrap_or_default();
        v.volumes
            .insert(id.to_owned(), (app.to_owned(), host.to_owned(), region));
    }

    /// The other hosts that hold volumes of `app`.
    pub fn other_hosts_with_volumes(&self, app: &str) -> Vec<HostInfo> {
        let v = self.inner.view.read().unwrap_or_else(|p| p.into_inner());
        let mut ids: Vec<&String> = v
            .volumes
            .values()
            .filter(|(a, h, _)| a == app && *h != self.inner.cfg.host_id)
            .map(|(_, h, _)| h)
            .collect();
        ids.sort();
        ids.dedup();
        ids.into_iter()
            .filter_map(|h| v.hosts.get(h).cloned())
            .collect()
    }

    /// Whether `ip` is an address of another host (its proxy's or its
    /// API's, as advertised): a request relayed from there is believed.
    pub fn is_peer_address(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        let v = self.inner.view.read().unwrap_or_else(|p| p.into_inner());
        v.hosts.values().any(|h| {
            h.id != self.inner.cfg.host_id
                && (h.proxy_addr.is_some_and(|a| a.ip().to_canonical() == ip)
                    || api_ip(&h.api_url) == Some(ip))
        })
    }

    /// Whether this host has app `name` (made here, or applied from the
    /// change log).
    pub fn app_exists_here(&self, name: &str) -> bool {
        self.inner.agent.get_app(name).is_ok()
    }

    /// The cluster's networks and their ids.
    pub fn networks(&self) -> Vec<(String, u16)> {
        let v = self.inner.view.read().unwrap_or_else(|p| p.into_inner());
        let mut n: Vec<(String, u16)> = v.networks.iter().map(|(k, i)| (k.clone(), *i)).collect();
        n.sort_by_key(|(_, i)| *i);
        n
    }

    /// How long since the database last took this host's heartbeat.
    pub fn heartbeat_silence(&self) -> Duration {
        self.inner
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_ok
            .elapsed()
    }

    /// This host's id.
    pub fn host_id(&self) -> &str {
        &self.inner.cfg.host_id
    }

    /// This host's region.
    pub fn region(&self) -> &str {
        &self.inner.cfg.region
    }

    /// Wakes the background session (after a local change).
    pub fn poke(&self) {
        self.inner.doorbell.notify_one();
    }

    /// The hosts, by id.
    pub fn hosts(&self) -> Vec<HostInfo> {
        let v = self.inner.view.read().unwrap_or_else(|p| p.into_inner());
        let mut hosts: Vec<HostInfo> = v.hosts.values().cloned().collect();
        hosts.sort_by(|a, b| a.id.cmp(&b.id));
        hosts
    }

    /// A host by id.
    pub fn host(&self, id: &str) -> Option<HostInfo> {
        let v = self.inner.view.read().unwrap_or_else(|p| p.into_inner());
        v.hosts.get(id).cloned()
    }

    /// Where machine `id` runs, when it is another host.
    pub fn remote_owner(&self, id: &str) -> Option<HostInfo> {
        let v = self.inner.view.read().unwrap_or_else(|p| p.into_inner());
        let e = v
            .machines
            .get(id)
            .or_else(|| v.noted.get(id).map(|(e, _)| e))?;
        if e.host == self.inner.cfg.host_id {
            return None;
        }
        v.hosts.get(&e.host).cloned()
    }

    /// Records that machine `id` of `app` now runs on `host` (a create this
    /// host forwarded), ahead of the directory.
    pub fn note_machine(&self, id: &str, app: &str, host: &str) {
        let mut v = self.inner.view.write().unwrap_or_else(|p| p.into_inner());
        let e = DirEntry {
            host: host.to_owned(),
            app: app.to_owned(),
            state: "created".into(),
            standbys: Vec::new(),
            http_ports: Vec::new(),
            ports: Vec::new(),
            cpus: 0,
            memory_mb: 0,
            region: String::new(),
            private_ip: None,
            process_group: None,
        };
        v.noted.insert(id.to_owned(), (e, Instant::now()));
    }

    /// The machines the directory has of `app` on `host`.
    pub fn machines_on(&self, host: &str, app: &str) -> Vec<(String, DirEntry)> {
        let v = self.inner.view.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(String, DirEntry)> = v
            .machines
            .iter()
            .filter(|(_, e)| e.host == host && e.app == app && e.state != "destroyed")
            .map(|(id, e)| (id.clone(), e.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The other hosts that run machines of `app`.
    pub fn other_hosts_of(&self, app: &str) -> Vec<HostInfo> {
        let v = self.inner.view.read().unwrap_or_else(|p| p.into_inner());
        let mut ids: Vec<&String> = v
            .machines
            .values()
            .filter(|e| e.app == app && e.host != self.inner.cfg.host_id)
            .map(|e| &e.host)
            .collect();
        ids.sort();
        ids.dedup();
        ids.into_iter()
            .filter_map(|h| v.hosts.get(h).cloned())
            .collect()
    }

    /// The other hosts that hold machines of `app` (destroyed ones left
    /// out), each with how many, most first (then by id).
    pub fn machine_counts(&self, app: &str) -> Vec<(HostInfo, usize)> {
        let v = self.inner.view.read().unwrap_or_else(|p| p.into_inner());
        let mut counts: BTreeMap<&String, usize> = BTreeMap::new();
        for e in v.machines.values() {
            if e.app == app && e.host != self.inner.cfg.host_id && e.state != "destroyed" {
                *counts.entry(&e.host).or_default() += 1;
            }
        }
        let mut out: Vec<(HostInfo, usize)> = counts
            .into_iter()
            .filter_map(|(h, n)| Some((v.hosts.get(h)?.clone(), n)))
            .collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.id.cmp(&b.0.id)));
        out
    }

    /// The proxy of another host that runs machines of `app` serving
    /// public `port` over HTTP, and is up: one with a started machine of
    /// it first.
    pub fn edge_for(&self, app: &str, port: u16) -> Option<std::net::SocketAddr> {
        self.edge_where(app, |e| {
            e.http_ports.iter().any(|(a, b)| (*a..=*b).contains(&port))
        })
    }

    /// The proxy of another host that runs machines of `app` with a
    /// `protocol` service on public `port` (one with a started machine
    /// first): where a raw connection or a client's datagrams go when this
    /// host has no machine for them.
    pub fn raw_edge_for(
        &self,
        app: &str,
        port: u16,
        protocol: Protocol,
    ) -> Option<std::net::SocketAddr> {
        self.edge_where(app, |e| {
            e.ports
                .iter()
                .any(|p| p.protocol == protocol && p.spec.covers(port))
        })
    }

    /// The public ports of `app`'s machines on other hosts that are up.
    pub fn remote_ports(&self, app: &str) -> Vec<PublicPort> {
        let v = self.inner.view.read().unwrap_or_else(|p| p.into_inner());
        let me = &self.inner.cfg.host_id;
        let mut out: Vec<PublicPort> = Vec::new();
        for e in v.machines.values() {
            if e.app != app || &e.host == me || e.state == "destroyed" {
                continue;
            }
            if v.hosts.get(&e.host).is_none_or(|h| h.state != "up") {
                continue;
            }
            for p in &e.ports {
                if !out.contains(p) {
                    out.push(p.clone());
                }
            }
        }
        out
    }

    fn edge_where(
        &self,
        app: &str,
        serves: impl Fn(&DirEntry) -> bool,
    ) -> Option<std::net::SocketAddr> {
        let v = self.inner.view.read().unwrap_or_else(|p| p.into_inner());
        let me = &self.inner.cfg.host_id;
        let mut best: Option<(bool, &String)> = None;
        for e in v.machines.values() {
            if e.app != app || &e.host == me || e.state == "destroyed" || !serves(e) {
                continue;
            }
            let started = e.state == "started";
            let up = v
                .hosts
                .get(&e.host)
                .is_some_and(|h| h.state == "up" && h.proxy_addr.is_some());
            if up && best.is_none_or(|(s, h)| (started, &e.host) > (s, h)) {
                best = Some((started, &e.host));
            }
        }
        best.and_then(|(_, h)| v.hosts.get(h)?.proxy_addr)
    }

    /// The started machines of `app` on other hosts that are up, serving
    /// one of `ports` over HTTP.
    pub fn remote_started(&self, app: &str, ports: &[(u16, u16)]) -> Vec<String> {
        let v = self.inner.view.read().unwrap_or_else(|p| p.into_inner());
        let me = &self.inner.cfg.host_id;
        v.machines
            .iter()
            .filter(|(_, e)| e.app == app && &e.host != me && e.state == "started")
            .filter(|(_, e)| v.hosts.get(&e.host).is_some_and(|h| h.state == "up"))
            .filter(|(_, e)| {
                e.http_ports
                    .iter()
                    .any(|(a, b)| ports.iter().any(|(c, d)| a <= d && c <= b))
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Whether `registry` (`host:port`) is the API (and registry) of
    /// another host of the cluster.
    pub fn is_peer_registry(&self, registry: &str) -> bool {
        let v = self.inner.view.read().unwrap_or_else(|p| p.into_inner());
        v.hosts.values().any(|h| {
            h.id != self.inner.cfg.host_id
                && h.api_url
                    .trim_start_matches("http://")
                    .trim_end_matches('/')
                    .eq_ignore_ascii_case(registry)
        })
    }

    /// Whether `token` is the admin token of a host of the cluster.
    pub fn is_admin_token(&self, token: &str) -> bool {
        let hash = token_hash(token);
        let v = self.inner.view.read().unwrap_or_else(|p| p.into_inner());
        v.hosts.values().any(|h| h.admin_token_hash == hash)
    }

    /// Drains host `id` (it takes no new machines) or undrains it; false
    /// when there is no such host. Written to the database at once, on a
    /// connection of its own.
    pub async fn set_drained(&self, id: &str, drained: bool) -> Result<bool, ClusterError> {
        let db = OneShot::connect(&self.inner.cfg).await?;
        let n = within(async {
            let n = db
                .execute(
                    "UPDATE hosts SET drained = $2 WHERE id = $1",
                    &[&id, &drained],
                )
                .await
                .map_err(pg("draining a host"))?;
            db.batch_execute("NOTIFY hangar_changes")
                .await
                .map_err(pg("ringing the doorbell"))?;
            Ok(n)
        })
        .await?;
        drop(db);
        if n > 0 {
            let mut v = self.inner.view.write().unwrap_or_else(|p| p.into_inner());
            if let Some(h) = v.hosts.get_mut(id) {
                h.drained = drained;
            }
            tracing::info!(host = id, drained, "host drain changed");
        }
        Ok(n > 0)
    }

    /// The host a new machine of `cpus` vCPUs and `memory_mb` MiB goes to:
    /// in `region` (this host's when none is asked for), a host that is up
    /// and not drained with the most free memory, this host on a tie; for a
    /// standby, never the host of a machine in `standbys`.
    pub fn place(
        &self,
        region: Option<&str>,
        cpus: u32,
        memory_mb: u64,
        standbys: &[String],
    ) -> Result<HostInfo, PlaceError> {
        let region = region
            .filter(|r| !r.is_empty())
            .unwrap_or(&self.inner.cfg.region);
        // A standby never shares a host with a machine it watches.
        let avoid: Vec<String> = {
            let v = self.inner.view.read().unwrap_or_else(|p| p.into_inner());
            standbys
                .iter()
                .filter_map(|id| v.machines.get(id).map(|e| e.host.clone()))
                .collect()
        };
        let hosts: Vec<HostInfo> = self
            .hosts()
            .into_iter()
            .filter(|h| !avoid.contains(&h.id))
            .collect();
        match pick_host(&hosts, region, &self.inner.cfg.host_id, cpus, memory_mb) {
            Err(PlaceError::Region(r)) if !avoid.is_empty() => Err(PlaceError::Standby(r)),
            r => r,
        }
    }
}

/// Placement: among the hosts of `region` that are up and not drained,
/// those with room for `memory_mb` (and `cpus`, overcommitted 8 to 1), the
/// one with the most free memory; `me` on a tie.
fn pick_host(
    hosts: &[HostInfo],
    region: &str,
    me: &str,
    cpus: u32,
    memory_mb: u64,
) -> Result<HostInfo, PlaceError> {
    let candidates: Vec<&HostInfo> = hosts
        .iter()
        .filter(|h| h.region == region && h.state == "up" && !h.drained)
        .collect();
    if candidates.is_empty() {
        return Err(PlaceError::Region(region.to_owned()));
    }
    let free = |h: &HostInfo| h.memory_mb.saturating_sub(h.reserved_memory_mb);
    candidates
        .into_iter()
        .filter(|h| {
            free(h) >= memory_mb && u64::from(h.cpus) * 8 >= h.reserved_cpus + u64::from(cpus)
        })
        .max_by_key(|h| (free(h), h.id == me))
        .cloned()
        .ok_or_else(|| PlaceError::Full(region.to_owned()))
}

/// The address in an API URL (`http://10.0.0.2:4280` → 10.0.0.2).
fn api_ip(url: &str) -> Option<std::net::IpAddr> {
    let rest = url.split_once("://")?.1;
    let host = rest.split('/').next()?;
    let host = match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    host.trim_matches(['[', ']'])
        .parse::<std::net::IpAddr>()
        .ok()
        .map(|i| i.to_canonical())
}

/// SHA-256 of a token, hex.
pub fn token_hash(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

fn check_id(id: &str) -> Result<(), ClusterError> {
    let ok = !id.is_empty()
        && id.len() <= 63
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ClusterError::Config(format!(
            "host id {id:?}: 1 to 63 lower-case letters, digits and dashes"
        )))
    }
}

/// Sessions, one after the other, for as long as the process runs: a lost
/// database ends a session and the next one starts when it answers again.
async fn run(inner: Arc<Inner>, mut session: Option<Session>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let s = match session.take() {
            Some(s) => s,
            None => match Session::open(&inner).await {
                Ok(mut s) => match s.register().await {
                    Ok(()) => {
                        tracing::info!("cluster database reachable again; catching up");
                        backoff = Duration::from_millis(200);
                        s
                    }
                    Err(e) => {
                        tracing::warn!(error = %hangar_error_chain(&e), "cluster: registering failed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                },
                Err(e) => {
                    tracing::debug!(error = %hangar_error_chain(&e), "cluster database unreachable");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            },
        };
        let e = s.serve().await;
        tracing::warn!(error = %hangar_error_chain(&e), "cluster database lost; this host keeps serving what it runs");
    }
}

/// A host that heartbeats has been heard within this (a heartbeat a
/// second, and a round's slack).
const HEALTHY_SILENCE: Duration = Duration::from_secs(2);

/// Self-fencing. A host whose heartbeats the database has not taken for
/// half of `down_after` (at least 3.5 s, so that hosts that lost the
/// database at the same moment are seen silent for longer than
/// [`HEALTHY_SILENCE`]) may be declared down by the others soon, and the
/// standbys of its machines started on their hosts: before that, it stops
/// those of its machines that have a standby on another host, so that
/// nothing runs twice even when this `hangard` is alive but cut off. It
/// first asks the standbys' hosts: when every one of them answers and has
/// lost the database as well, nobody can declare anyone down, and it
/// fences nothing (an outage of the database alone stops no machine). When
/// the database takes a heartbeat again before this host was declared
/// down, what it stopped starts again.
async fn watchdog(inner: Arc<Inner>) {
    let fence_after = (inner.cfg.down_after / 2).max(Duration::from_millis(3500));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap_or_default();
    let mut last_judged = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if last_judged.elapsed() < Duration::from_secs(1) {
            continue;
        }
        let silent = {
            let h = inner.health.lock().unwrap_or_else(|p| p.into_inner());
            (!h.judged && h.last_ok.elapsed() >= fence_after).then_some(h.last_ok)
        };
        let Some(since) = silent else { continue };
        last_judged = Instant::now();
        let me = inner.cfg.host_id.clone();
        // This host's machines with a standby elsewhere, and those hosts.
        let (ids, hosts) = {
            let v = inner.view.read().unwrap_or_else(|p| p.into_inner());
            let mine: std::collections::HashSet<String> = inner
                .agent
                .machine_summaries()
                .unwrap_or_default()
                .into_iter()
                .map(|m| m.id)
                .collect();
            let mut ids = Vec::new();
            let mut hosts = Vec::new();
            for e in v.machines.values().filter(|e| e.host != me) {
                for s in e.standbys.iter().filter(|s| mine.contains(*s)) {
                    ids.push(s.clone());
                    if let Some(h) = v.hosts.get(&e.host) {
                        hosts.push(h.api_url.clone());
                    }
                }
            }
            hosts.sort();
            hosts.dedup();
            (ids, hosts)
        };
        let mut fence = false;
        for url in &hosts {
            match peer_silence(&http, url, &inner.cfg.admin_token.0).await {
                Some(secs) if secs >= HEALTHY_SILENCE.as_secs_f64() => {}
                // It hears the database (or cannot be asked): it may
                // declare this host down.
                _ => fence = true,
            }
        }
        if !fence && !ids.is_empty() {
            let mut h = inner.health.lock().unwrap_or_else(|p| p.into_inner());
            if !std::mem::replace(&mut h.said_safe, true) {
                tracing::warn!(
                    "the cluster database is gone for the standbys' hosts too: nothing fenced while it stays so"
                );
            }
            continue;
        }
        let stopped = if fence && !ids.is_empty() {
            tracing::warn!(
                silent_secs = since.elapsed().as_secs_f64(),
                machines = ?ids,
                "the cluster database has not heard from this host and other hosts may start standbys: fencing"
            );
            inner
                .agent
                .fence_now(
                    &ids,
                    Some(inner.cfg.down_after / 4),
                    "fenced: this host is cut off from the cluster, and its standby may start elsewhere",
                )
                .await
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let late = {
            let mut h = inner.health.lock().unwrap_or_else(|p| p.into_inner());
            if h.last_ok == since {
                h.judged = true;
                h.fenced.extend(stopped);
                Vec::new()
            } else {
                stopped
            }
        };
        // Heard again meanwhile: whatever was stopped starts again.
        inner.agent.unfence(&late).await;
    }
}

/// How long host `api_url` says the database has not taken its heartbeat.
async fn peer_silence(http: &reqwest::Client, api_url: &str, token: &str) -> Option<f64> {
    let v: serde_json::Value = http
        .get(format!("{}/v1/hangar/hosts", api_url.trim_end_matches('/')))
        .bearer_auth(token)
        .send()
        .await
        .ok()?
        .error_for_status()
        .ok()?
        .json()
        .await
        .ok()?;
    v["hosts"]
        .as_array()?
        .iter()
        .find(|h| h["this_host"] == true)?["heartbeat_age_secs"]
        .as_f64()
}

fn hangar_error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// One connection's worth of following and publishing.
struct Session {
    inner: Arc<Inner>,
    db: tokio_postgres::Client,
    /// What this session has published to the directory.
    published: HashMap<String, MachineSummary>,
    /// Whether this session has checked the change log against this
    /// host's cursor (a restored database).
    log_checked: bool,
    /// The volumes it has published (`None`: none yet in this session).
    published_volumes: Option<Vec<hangar_agent::VolumeSummary>>,
    /// Whether the directory rows of this host were replaced in full yet.
    full_published: bool,
    /// The directory's revision this session has read up to (0: read it
    /// whole next).
    dir_rev: i64,
    /// When the directory was last read whole.
    full_read_at: Instant,
    /// When gone machines were last purged.
    last_purge: Instant,
    /// When the hosts were last read (`None`: never in this session).
    hosts_read_at: Option<Instant>,
    last_heartbeat: Instant,
    /// Since when this session has reached the database without a stall:
    /// it sweeps only once every live host has had `down_after` to
    /// heartbeat since (so an outage or a stall of the database itself
    /// declares nobody down).
    healthy_since: Instant,
    closed: Arc<Notify>,
}

/// A connection to the cluster's database as host `cfg.host_id`, within
/// the round timeout.
/// Runs one step of a sync round, timed into
/// `hangar_database_duration_seconds{db="postgres", op}`.
async fn timed<T>(op: &'static str, step: impl std::future::Future<Output = T>) -> T {
    let since = Instant::now();
    let out = step.await;
    hangar_metrics::get()
        .database_seconds
        .get_or_create(&hangar_metrics::DbLabels { db: "postgres", op })
        .observe(since.elapsed().as_secs_f64());
    out
}

async fn connect(
    cfg: &ClusterConfig,
) -> Result<
    (
        tokio_postgres::Client,
        tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
    ),
    ClusterError,
> {
    let mut config: tokio_postgres::Config =
        cfg.url.parse().map_err(pg("parsing the cluster URL"))?;
    config.connect_timeout(Duration::from_secs(5));
    config.application_name(format!("hangard {}", cfg.host_id));
    tokio::time::timeout(ROUND_TIMEOUT, config.connect(NoTls))
        .await
        .map_err(|_| ClusterError::Timeout(ROUND_TIMEOUT))?
        .map_err(pg("connecting"))
}

impl Session {
    async fn open(inner: &Arc<Inner>) -> Result<Session, ClusterError> {
        let (db, mut conn) = connect(&inner.cfg).await?;
        let closed = Arc::new(Notify::new());
        {
            let inner = inner.clone();
            let closed = closed.clone();
            tokio::spawn(async move {
                let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
                while let Some(m) = messages.next().await {
                    match m {
                        Ok(AsyncMessage::Notification(_)) => inner.doorbell.notify_one(),
                        Ok(_) => {}
                        Err(e) => {
                            tracing::debug!(error = %e, "cluster connection ended");
                            break;
                        }
                    }
                }
                closed.notify_one();
            });
        }
        let mut s = Session {
            inner: inner.clone(),
            db,
            published: HashMap::new(),
            published_volumes: None,
            log_checked: false,
            full_published: false,
            dir_rev: 0,
            full_read_at: Instant::now(),
            last_purge: Instant::now(),
            hosts_read_at: None,
            last_heartbeat: Instant::now(),
            healthy_since: Instant::now(),
            closed,
        };
        s.migrate().await?;
        s.db.batch_execute("LISTEN hangar_changes")
            .await
            .map_err(pg("listening for changes"))?;
        Ok(s)
    }

    async fn migrate(&mut self) -> Result<(), ClusterError> {
        let tx = self
            .db
            .transaction()
            .await
            .map_err(pg("starting the schema transaction"))?;
        create_schema(&tx).await?;
        tx.commit().await.map_err(pg("creating the schema"))
    }

    /// Registers this host (again): up, with a new epoch when it had been
    /// declared down.
    async fn register(&mut self) -> Result<(), ClusterError> {
        let c = &self.inner.cfg;
        let key_id = self.inner.agent.secrets_key_id();
        if let Some(other) = self
            .db
            .query_opt(
                "SELECT id FROM hosts WHERE id <> $1 AND secrets_key_id <> '' AND secrets_key_id <> $2 LIMIT 1",
                &[&c.host_id, &key_id],
            )
            .await
            .map_err(pg("checking the secrets key"))?
        {
            let other: String = other.get(0);
            return Err(ClusterError::Config(format!(
                "this host's secrets key is not host {other}'s: the hosts of a cluster share one key (copy host {other}'s <data-dir>/secrets.key, or the file its --secrets-key-file names, to this host's before it joins)"
            )));
        }
        let was_down = self
            .db
            .query_opt("SELECT state FROM hosts WHERE id = $1", &[&c.host_id])
            .await
            .map_err(pg("reading this host"))?
            .is_some_and(|r| r.get::<_, String>(0) == "down");
        let row = self
            .db
            .query_one(
                sql::REGISTER,
                &[
                    &c.host_id,
                    &c.region,
                    &c.api_url,
                    &(c.cpus as i32),
                    &(c.memory_mb as i64),
                    &c.admin_token_hash,
                    &key_id,
                    &c.proxy_addr.map(|a| a.to_string()).unwrap_or_default(),
                    &c.mesh.as_ref().map(|m| m.0.clone()).unwrap_or_default(),
                    &c.mesh.as_ref().map(|m| m.1.to_string()).unwrap_or_default(),
                ],
            )
            .await
            .map_err(pg("registering this host"))?;
        let epoch: i64 = row.get(0);
        tracing::info!(host = %c.host_id, epoch, "host registered");
        self.last_heartbeat = Instant::now();
        if was_down {
            // What this host fenced stays stopped: standbys took over.
            self.inner
                .health
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .fenced
                .clear();
            self.fence().await?;
        }
        self.heard().await;
        Ok(())
    }

    /// Rounds until the connection fails; returns why.
    async fn serve(mut self) -> ClusterError {
        let closed = self.closed.clone();
        loop {
            let started = Instant::now();
            if let Err(e) = self.round().await {
                return e;
            }
            // Doorbells that ring while a round runs, or right after it,
            // are answered together by the next one.
            tokio::time::sleep(MIN_GAP.saturating_sub(started.elapsed())).await;
            let inner = self.inner.clone();
            tokio::select! {
                _ = inner.doorbell.notified() => {}
                _ = tokio::time::sleep(TICK) => {}
                _ = closed.notified() => {
                    return ClusterError::Config("the database closed the connection".into());
                }
            }
        }
    }

    async fn round(&mut self) -> Result<(), ClusterError> {
        tokio::time::timeout(ROUND_TIMEOUT, async {
            let since_last = self.last_heartbeat.elapsed();
            if since_last >= HEARTBEAT {
                let started = Instant::now();
                timed("heartbeat", self.heartbeat()).await?;
                if since_last >= HEARTBEAT * 3 || started.elapsed() >= HEARTBEAT {
                    // This host could not heartbeat for a while: the
                    // database stalled, and the others' heartbeats with it.
                    self.healthy_since = Instant::now();
                }
                if self.healthy_since.elapsed() >= self.inner.cfg.down_after {
                    timed("sweep", self.sweep()).await?;
                }
            }
            timed("outbox", self.send_outbox()).await?;
            timed("follow", self.follow()).await?;
            timed("directory", self.publish_directory()).await?;
            timed("volumes", self.publish_volumes()).await?;
            timed("view", self.refresh_view()).await
        })
        .await
        .map_err(|_| ClusterError::Timeout(ROUND_TIMEOUT))?
    }

    async fn heartbeat(&mut self) -> Result<(), ClusterError> {
        let n = self
            .db
            .execute(sql::HEARTBEAT, &[&self.inner.cfg.host_id])
            .await
            .map_err(pg("heartbeat"))?;
        if n == 0 {
            // Declared down while this host could not reach the database:
            // it joins again under a new epoch.
            tracing::warn!("this host was declared down while away; joining again");
            self.register().await?;
        }
        self.last_heartbeat = Instant::now();
        self.heard().await;
        Ok(())
    }

    /// The database took a heartbeat: an outage is over. Machines this
    /// host fenced in it start again unless it was declared down meanwhile
    /// ([`Session::register`] forgets them then: their standbys took over).
    async fn heard(&mut self) {
        let fenced = {
            let mut h = self.inner.health.lock().unwrap_or_else(|p| p.into_inner());
            h.last_ok = Instant::now();
            h.judged = false;
            h.said_safe = false;
            std::mem::take(&mut h.fenced)
        };
        if !fenced.is_empty() {
            self.inner.agent.unfence(&fenced).await;
        }
    }

    /// Declares silent hosts down; exactly one sweeper wins each.
    async fn sweep(&mut self) -> Result<(), ClusterError> {
        let secs = self.inner.cfg.down_after.as_secs_f64();
        let tx = self
            .db
            .transaction()
            .await
            .map_err(pg("starting a sweep"))?;
        let rows = tx
            .query(sql::SWEEP, &[&secs])
            .await
            .map_err(pg("sweeping silent hosts"))?;
        if rows.is_empty() {
            return tx.commit().await.map_err(pg("sweeping silent hosts"));
        }
        // The one sweeper that won tells every host, in the same
        // transaction: the event exists exactly when the host went down.
        tx.batch_execute("LOCK TABLE changes IN EXCLUSIVE MODE")
            .await
            .map_err(pg("locking the change log"))?;
        for r in &rows {
            let id: String = r.get(0);
            let machines = tx
                .query(
                    "SELECT app, id FROM machines WHERE host = $1 AND state <> 'gone'",
                    &[&id],
                )
                .await
                .map_err(pg("reading a down host's machines"))?
                .into_iter()
                .map(|m| (m.get::<_, String>(0), m.get::<_, String>(1)))
                .collect();
            let body = serde_json::to_string(&ClusterEvent::HostDown {
                host: id.clone(),
                machines,
            })
            .unwrap_or_default();
            tx.execute(sql::APPEND_CHANGE, &[&CLUSTER_ORIGIN, &body])
                .await
                .map_err(pg("announcing a down host"))?;
            tracing::warn!(host = %id, after_secs = secs, "host declared down");
        }
        tx.batch_execute("NOTIFY hangar_changes")
            .await
            .map_err(pg("ringing the doorbell"))?;
        tx.commit().await.map_err(pg("sweeping silent hosts"))
    }

    /// A host went down: the standbys here of its machines start, unless it
    /// is already back (an old event read late).
    async fn host_down(&mut self, host: &str, machines: &[(String, String)]) {
        if host == self.inner.cfg.host_id {
            return;
        }
        if let Ok(rows) = self
            .db
            .query("SELECT state FROM hosts WHERE id = $1", &[&host])
            .await
        {
            if rows.first().is_some_and(|r| r.get::<_, String>(0) == "up") {
                return;
            }
        }
        let mut by_app: HashMap<&str, Vec<&str>> = HashMap::new();
        for (app, id) in machines {
            by_app.entry(app).or_default().push(id);
        }
        for (app, ids) in by_app {
            match self.inner.agent.start_standbys_for(app, &ids).await {
                Ok(started) if !started.is_empty() => {
                    tracing::warn!(%host, %app, ?started, "standbys started for a down host's machines")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(%host, %app, error = %e, "could not start standbys"),
            }
        }
    }

    /// After this host was declared down: stops its machines whose
    /// standbys took over elsewhere, so nothing runs twice.
    async fn fence(&mut self) -> Result<(), ClusterError> {
        let rows = self
            .db
            .query(
                "SELECT standbys FROM machines WHERE host <> $1 AND state IN ('starting', 'started') AND standbys <> ''",
                &[&self.inner.cfg.host_id],
            )
            .await
            .map_err(pg("reading standbys"))?;
        let watched: Vec<String> = rows
            .iter()
            .flat_map(|r| {
                r.get::<_, String>(0)
                    .split(',')
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
        if !watched.is_empty() {
            self.inner.agent.fence(&watched).await?;
        }
        Ok(())
    }

    /// Sends the outbox: each change appended to the log (app names
    /// arbitrated by the `apps` table), then forgotten locally.
    async fn send_outbox(&mut self) -> Result<(), ClusterError> {
        loop {
            let batch = self.inner.agent.cluster_outbox(100)?;
            let Some(last) = batch.last().map(|(seq, _)| *seq) else {
                return Ok(());
            };
            let mut adopt = Vec::new();
            let tx = self
                .db
                .transaction()
                .await
                .map_err(pg("starting to send changes"))?;
            tx.batch_execute("LOCK TABLE changes IN EXCLUSIVE MODE")
                .await
                .map_err(pg("locking the change log"))?;
            for (_, change) in &batch {
                // A release goes out naming the host that runs it.
                let named;
                let change = match change {
                    CatalogChange::Release { release, .. } => {
                        named = CatalogChange::Release {
                            host: Some(self.inner.cfg.host_id.clone()),
                            release: release.clone(),
                        };
                        &named
                    }
                    c => c,
                };
                let body = serde_json::to_string(change).unwrap_or_default();
                let append = match change {
                    CatalogChange::App { name, .. } => {
                        let inserted = tx
                            .execute(
                                "INSERT INTO apps (name, body) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                                &[name, &body],
                            )
                            .await
                            .map_err(pg("recording an app"))?;
                        if inserted == 0 {
                            // Made at the same moment on another host: the
                            // cluster's record wins.
                            let row = tx
                                .query_one("SELECT body FROM apps WHERE name = $1", &[name])
                                .await
                                .map_err(pg("reading an app"))?;
                            let theirs: String = row.get(0);
                            if let Ok(c) = serde_json::from_str::<CatalogChange>(&theirs) {
                                adopt.push(c);
                            }
                        }
                        inserted > 0
                    }
                    CatalogChange::AppDeleted { name } => {
                        tx.execute("DELETE FROM apps WHERE name = $1", &[name])
                            .await
                            .map_err(pg("deleting an app"))?;
                        tx.execute("DELETE FROM ips WHERE app = $1", &[name])
                            .await
                            .map_err(pg("releasing an app's addresses"))?;
                        tx.execute("DELETE FROM releases WHERE app = $1", &[name])
                            .await
                            .map_err(pg("deleting an app's releases"))?;
                        true
                    }
                    CatalogChange::Release { release, .. } => {
                        tx.execute(
                            "INSERT INTO releases (id, app, body) VALUES ($1, $2, $3)
                             ON CONFLICT (id) DO UPDATE SET body = excluded.body",
                            &[&release.id, &release.app, &body],
                        )
                        .await
                        .map_err(pg("recording a release"))?;
                        true
                    }
                    CatalogChange::Ip { ip, app, .. } => {
                        let inserted = tx
                            .execute(
                                "INSERT INTO ips (ip, app, body) VALUES ($1, $2, $3)
                                 ON CONFLICT (ip) DO UPDATE SET body = excluded.body
                                 WHERE ips.app = excluded.app",
                                &[ip, app, &body],
                            )
                            .await
                            .map_err(pg("recording an address"))?;
                        if inserted == 0 {
                            // Another app took it at the same moment on
                            // another host: the cluster's record wins.
                            let row = tx
                                .query_one("SELECT body FROM ips WHERE ip = $1", &[ip])
                                .await
                                .map_err(pg("reading an address"))?;
                            let theirs: String = row.get(0);
                            if let Ok(c) = serde_json::from_str::<CatalogChange>(&theirs) {
                                tracing::warn!(%ip, %app, "address assigned to two apps at once; the cluster's first record keeps it");
                                adopt.push(c);
                            }
                        }
                        inserted > 0
                    }
                    CatalogChange::IpReleased { ip, app } => {
                        tx.execute("DELETE FROM ips WHERE ip = $1 AND app = $2", &[ip, app])
                            .await
                            .map_err(pg("releasing an address"))?;
                        true
                    }
                    CatalogChange::Token { .. }
                    | CatalogChange::TokenDeleted { .. }
                    | CatalogChange::Secrets { .. } => true,
                };
                if append {
                    tx.execute(sql::APPEND_CHANGE, &[&self.inner.cfg.host_id, &body])
                        .await
                        .map_err(pg("appending a change"))?;
                }
            }
            tx.batch_execute("NOTIFY hangar_changes")
                .await
                .map_err(pg("ringing the doorbell"))?;
            tx.commit().await.map_err(pg("sending changes"))?;
            self.inner.agent.cluster_outbox_sent(last)?;
            for c in adopt {
                self.inner.agent.apply_catalog_change(&c).await?;
            }
        }
    }

    /// Applies the changes other hosts made since this host's cursor.
    async fn follow(&mut self) -> Result<(), ClusterError> {
        let mut cursor: i64 = self
            .inner
            .agent
            .cluster_value("changes_rev")?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if !self.log_checked {
            cursor = self.check_log(cursor).await?;
            self.log_checked = true;
        }
        loop {
            let rows = self
                .db
                .query(sql::FOLLOW, &[&cursor])
                .await
                .map_err(pg("reading the change log"))?;
            if rows.is_empty() {
                return Ok(());
            }
            for r in &rows {
                let rev: i64 = r.get(0);
                let origin: String = r.get(1);
                let body: String = r.get(2);
                if origin == CLUSTER_ORIGIN {
                    match serde_json::from_str::<ClusterEvent>(&body) {
                        Ok(ClusterEvent::HostDown { host, machines }) => {
                            self.host_down(&host, &machines).await
                        }
                        Err(e) => {
                            tracing::warn!(rev, error = %e, "skipping an unreadable cluster event")
                        }
                    }
                } else if origin != self.inner.cfg.host_id {
                    match serde_json::from_str::<CatalogChange>(&body) {
                        Ok(c) => {
                            if let Err(e) = self.inner.agent.apply_catalog_change(&c).await {
                                tracing::warn!(rev, error = %e, "could not apply a cluster change");
                            }
                        }
                        Err(e) => {
                            tracing::warn!(rev, error = %e, "skipping an unreadable cluster change")
                        }
                    }
                }
                cursor = rev;
            }
            self.inner
                .agent
                .set_cluster_value("changes_rev", &cursor.to_string())?;
        }
    }

    /// Once a session: whether the database went back in time (restored
    /// from a backup: its change log ends before what this host has read).
    /// If so, this host says again what the restored database may have
    /// lost of it: its number in 6PN addresses, its networks' ids, the
    /// installation's id, and its whole catalogue (apps, tokens, secrets,
    /// through the outbox); and it reads on from the log's end. Its
    /// machines and volumes are republished in full by every session
    /// anyway. Returns the cursor to read from.
    async fn check_log(&mut self, cursor: i64) -> Result<i64, ClusterError> {
        let end: i64 = self
            .db
            .query_one("SELECT COALESCE(max(rev), 0) FROM changes", &[])
            .await
            .map_err(pg("reading the change log's end"))?
            .get(0);
        if end >= cursor {
            return Ok(cursor);
        }
        tracing::warn!(
            log_end = end,
            read_up_to = cursor,
            "the cluster database went back in time (restored from a backup?): saying again what this host knows"
        );
        let c = &self.inner.cfg;
        let plan = self.inner.agent.net_plan();
        self.db
            .execute(
                "INSERT INTO settings (key, value) VALUES ('installation', $1) ON CONFLICT (key) DO NOTHING",
                &[&plan.installation.to_string()],
            )
            .await
            .map_err(pg("recording the installation again"))?;
        let taken = self
            .db
            .query_opt(
                "SELECT host FROM host_indexes WHERE idx = $1 AND host <> $2",
                &[&i32::from(plan.host), &c.host_id],
            )
            .await
            .map_err(pg("reading host numbers"))?;
        if let Some(other) = taken {
            let other: String = other.get(0);
            tracing::error!(
                host = %other,
                number = plan.host,
                "after the restore another host holds this host's number in 6PN addresses: their machines' addresses clash; remove one of them from the cluster"
            );
        } else {
            self.db
                .execute(
                    "INSERT INTO host_indexes (host, idx) VALUES ($1, $2) ON CONFLICT (host) DO NOTHING",
                    &[&c.host_id, &i32::from(plan.host)],
                )
                .await
                .map_err(pg("recording this host's number again"))?;
        }
        for (name, idx) in self.inner.agent.networks()? {
            self.db
                .execute(
                    "INSERT INTO networks (name, idx) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[&name, &i32::from(idx)],
                )
                .await
                .map_err(pg("recording a network again"))?;
        }
        let n = self.inner.agent.cluster_requeue_catalog()?;
        tracing::info!(changes = n, "this host's catalogue queued to be sent again");
        self.inner
            .agent
            .set_cluster_value("changes_rev", &end.to_string())?;
        Ok(end)
    }

    /// Publishes what changed among this host's machines since the last
    /// round (everything, the first time in a session).
    async fn publish_directory(&mut self) -> Result<(), ClusterError> {
        let now: HashMap<String, MachineSummary> = self
            .inner
            .agent
            .machine_summaries()?
            .into_iter()
            .map(|m| (m.id.clone(), m))
            .collect();
        let host = self.inner.cfg.host_id.clone();
        let changed: Vec<&MachineSummary> = now
            .values()
            .filter(|m| !self.full_published || self.published.get(&m.id) != Some(*m))
            .collect();
        let gone: Vec<String> = self
            .published
            .keys()
            .filter(|id| !now.contains_key(*id))
            .cloned()
            .collect();
        if changed.is_empty() && gone.is_empty() && self.full_published {
            return Ok(());
        }
        let tx = self
            .db
            .transaction()
            .await
            .map_err(pg("starting to publish machines"))?;
        tx.execute(sql::LOCK_DIRECTORY, &[])
            .await
            .map_err(pg("locking the directory"))?;
        if !self.full_published {
            let ids: Vec<String> = now.keys().cloned().collect();
            tx.execute(sql::REPLACE_MACHINES, &[&host, &ids])
                .await
                .map_err(pg("replacing this host's machines"))?;
        }
        for m in &changed {
            tx.execute(
                sql::UPSERT_MACHINE,
                &[
                    &m.id,
                    &m.app,
                    &host,
                    &m.region,
                    &m.state,
                    &(m.cpus as i32),
                    &(m.memory_mb as i64),
                    &m.standbys.join(","),
                    &ports_text(&m.http_ports),
                    &m.private_ip,
                    &m.process_group.clone().unwrap_or_default(),
                    &PublicPort::encode(&m.ports),
                ],
            )
            .await
            .map_err(pg("publishing a machine"))?;
        }
        if !gone.is_empty() {
            tx.execute(sql::DELETE_MACHINES, &[&host, &gone])
                .await
                .map_err(pg("unpublishing machines"))?;
        }
        tx.batch_execute("NOTIFY hangar_changes")
            .await
            .map_err(pg("ringing the doorbell"))?;
        tx.commit().await.map_err(pg("publishing machines"))?;
        self.published = now;
        self.full_published = true;
        Ok(())
    }

    /// Publishes this host's volumes when they changed (all of them: a
    /// host holds few).
    async fn publish_volumes(&mut self) -> Result<(), ClusterError> {
        let mut now = self.inner.agent.volume_summaries()?;
        now.sort_by(|a, b| a.id.cmp(&b.id));
        if self.published_volumes.as_ref() == Some(&now) {
            return Ok(());
        }
        let host = self.inner.cfg.host_id.clone();
        let tx = self
            .db
            .transaction()
            .await
            .map_err(pg("starting to publish volumes"))?;
        let ids: Vec<String> = now.iter().map(|v| v.id.clone()).collect();
        tx.execute(sql::REPLACE_VOLUMES, &[&host, &ids])
            .await
            .map_err(pg("replacing this host's volumes"))?;
        for v in &now {
            tx.execute(
                sql::UPSERT_VOLUME,
                &[&v.id, &v.app, &host, &v.region, &v.size_gb, &v.state],
            )
            .await
            .map_err(pg("publishing a volume"))?;
        }
        tx.batch_execute("NOTIFY hangar_changes")
            .await
            .map_err(pg("ringing the doorbell"))?;
        tx.commit().await.map_err(pg("publishing volumes"))?;
        self.published_volumes = Some(now);
        Ok(())
    }

    /// Reads the hosts, and what changed in the directory since the last
    /// round (all of it at the start of a session and every five minutes),
    /// into memory.
    async fn refresh_view(&mut self) -> Result<(), ClusterError> {
        if self.full_read_at.elapsed() >= Duration::from_secs(300) {
            self.dir_rev = 0;
        }
        if self.last_purge.elapsed() >= Duration::from_secs(60) {
            self.db
                .execute(sql::PURGE_MACHINES, &[])
                .await
                .map_err(pg("purging gone machines"))?;
            self.last_purge = Instant::now();
        }
        let host_rows = if self
            .hosts_read_at
            .is_none_or(|at| at.elapsed() >= HOSTS_EVERY)
        {
            self.hosts_read_at = Some(Instant::now());
            Some(
                self.db
                    .query(sql::READ_HOSTS, &[])
                    .await
                    .map_err(pg("reading the hosts"))?,
            )
        } else {
            None
        };
        let (network_rows, volume_rows) = match host_rows.is_some() {
            true => (
                Some(
                    self.db
                        .query(sql::READ_NETWORKS, &[])
                        .await
                        .map_err(pg("reading the networks"))?,
                ),
                Some(
                    self.db
                        .query(sql::READ_VOLUMES, &[])
                        .await
                        .map_err(pg("reading the volumes"))?,
                ),
            ),
            false => (None, None),
        };
        let machine_rows = self
            .db
            .query(sql::READ_MACHINES, &[&self.dir_rev])
            .await
            .map_err(pg("reading the directory"))?;
        let whole = self.dir_rev == 0;
        let mut v = self.inner.view.write().unwrap_or_else(|p| p.into_inner());
        if whole {
            v.machines.clear();
            self.full_read_at = Instant::now();
        }
        for r in machine_rows {
            let id: String = r.get(0);
            let state: String = r.get(3);
            self.dir_rev = self.dir_rev.max(r.get::<_, i64>(8));
            if state == "gone" {
                v.machines.remove(&id);
                continue;
            }
            v.machines.insert(
                id,
                DirEntry {
                    host: r.get(1),
                    app: r.get(2),
                    state,
                    standbys: r
                        .get::<_, String>(4)
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect(),
                    http_ports: parse_ports(&r.get::<_, String>(5)),
                    cpus: r.get::<_, i32>(6).max(0) as u32,
                    memory_mb: r.get::<_, i64>(7).max(0) as u64,
                    region: r.get(9),
                    private_ip: r.get::<_, String>(10).parse().ok(),
                    process_group: Some(r.get::<_, String>(11)).filter(|g| !g.is_empty()),
                    ports: PublicPort::decode(&r.get::<_, String>(12)),
                },
            );
        }
        {
            let View {
                noted, machines, ..
            } = &mut *v;
            noted.retain(|id, (_, at)| {
                !machines.contains_key(id) && at.elapsed() < Duration::from_secs(10)
            });
        }
        // Each host's reservations, from the directory in memory.
        let mut load: HashMap<String, (u64, u64, u64)> = HashMap::new();
        for e in v.machines.values().filter(|e| e.state != "destroyed") {
            let l = load.entry(e.host.clone()).or_default();
            l.0 += u64::from(e.cpus);
            l.1 += e.memory_mb;
            l.2 += 1;
        }
        let mut hosts = HashMap::new();
        let rows = match host_rows {
            Some(rows) => rows,
            None => {
                // The hosts as last read, with their reservations now.
                let mut hosts = std::mem::take(&mut v.hosts);
                for h in hosts.values_mut() {
                    let (c, m, n) = load.get(h.id.as_str()).copied().unwrap_or_default();
                    (h.reserved_cpus, h.reserved_memory_mb, h.machines) = (c, m, n);
                }
                drop(load);
                v.hosts = hosts;
                return Ok(());
            }
        };
        for r in rows {
            let id: String = r.get(0);
            let (reserved_cpus, reserved_memory_mb, machines) =
                load.get(id.as_str()).copied().unwrap_or_default();
            let h = HostInfo {
                id,
                region: r.get(1),
                api_url: r.get(2),
                state: r.get(3),
                drained: r.get(4),
                cpus: r.get::<_, i32>(5).max(0) as u32,
                memory_mb: r.get::<_, i64>(6).max(0) as u64,
                admin_token_hash: r.get(7),
                epoch: r.get(8),
                heartbeat_age_secs: r.get(9),
                reserved_cpus,
                reserved_memory_mb,
                machines,
                proxy_addr: r.get::<_, String>(10).parse().ok(),
                mesh_key: r.get(11),
                mesh_endpoint: r.get::<_, String>(12).parse().ok(),
                host_index: u16::try_from(r.get::<_, i32>(13)).unwrap_or(0),
            };
            hosts.insert(h.id.clone(), h);
        }
        drop(load);
        v.hosts = hosts;
        v.volumes = volume_rows
            .into_iter()
            .flatten()
            .map(|r| (r.get::<_, String>(0), (r.get(1), r.get(2), r.get(3))))
            .collect();
        v.networks = network_rows
            .into_iter()
            .flatten()
            .filter_map(|r| {
                Some((
                    r.get::<_, String>(0),
                    u16::try_from(r.get::<_, i32>(1)).ok()?,
                ))
            })
            .collect();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: &str, region: &str, memory: u64, reserved: u64) -> HostInfo {
        HostInfo {
            id: id.into(),
            region: region.into(),
            api_url: String::new(),
            state: "up".into(),
            drained: false,
            cpus: 2,
            memory_mb: memory,
            reserved_cpus: 0,
            reserved_memory_mb: reserved,
            machines: 0,
            heartbeat_age_secs: 0.0,
            epoch: 1,
            admin_token_hash: String::new(),
            proxy_addr: None,
            host_index: 1,
            mesh_key: String::new(),
            mesh_endpoint: None,
        }
    }

    #[test]
    fn api_urls_give_their_address() {
        assert_eq!(api_ip("http://10.0.0.2:4280"), "10.0.0.2".parse().ok());
        assert_eq!(api_ip("http://[fd00::1]:4280/x"), "fd00::1".parse().ok());
        assert_eq!(api_ip("http://10.0.0.2"), "10.0.0.2".parse().ok());
        assert_eq!(api_ip("http://host.example:4280"), None);
    }

    #[test]
    fn placement_picks_the_region_s_host_with_room() {
        let hosts = vec![
            host("a", "ams", 4096, 3500),
            host("b", "ams", 2048, 0),
            host("c", "sjc", 1024, 0),
        ];
        assert_eq!(pick_host(&hosts, "ams", "a", 1, 256).unwrap().id, "b");
        assert_eq!(pick_host(&hosts, "sjc", "a", 1, 256).unwrap().id, "c");
        assert_eq!(
            pick_host(&hosts, "sjc", "a", 1, 2048),
            Err(PlaceError::Full("sjc".into()))
        );
        assert_eq!(
            pick_host(&hosts, "fra", "a", 1, 256)
                .unwrap_err()
                .to_string(),
            "Region 'fra' cannot host your machine"
        );
        // Down and drained hosts take nothing; ties go to this host.
        let mut down = hosts.clone();
        down[1].state = "down".into();
        assert_eq!(pick_host(&down, "ams", "a", 1, 256).unwrap().id, "a");
        down[0].drained = true;
        assert!(matches!(
            pick_host(&down, "ams", "a", 1, 256),
            Err(PlaceError::Region(_))
        ));
        let tie = vec![host("x", "ams", 1024, 0), host("y", "ams", 1024, 0)];
        assert_eq!(pick_host(&tie, "ams", "x", 1, 256).unwrap().id, "x");
        assert_eq!(pick_host(&tie, "ams", "y", 1, 256).unwrap().id, "y");
        // CPUs overcommit 8 to 1.
        let mut busy = vec![host("z", "ams", 8192, 0)];
        busy[0].reserved_cpus = 16;
        assert!(pick_host(&busy, "ams", "z", 1, 256).is_err());
    }
}
