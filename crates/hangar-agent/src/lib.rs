//! Hangar's host agent: the machines of this host, their records in SQLite,
//! and one runner task per machine (see [`runner`]) that alone changes that
//! machine's state.
//!
//! Reads (get, list, events) come straight from the database, which every
//! runner updates before it answers, so a machine is visible and current the
//! instant a request that changed it returns. Writes go to the machine's
//! runner as messages. At startup every machine that is not destroyed gets
//! its runner back; the runner first asks the runtime what exists and
//! resumes from there, so recovery after a crash of `hangard` takes the same
//! path as everything else.

#![forbid(unsafe_code)]

pub mod checks;
pub mod clock;
mod cluster;
pub mod images;
pub mod ips;
pub mod logs;
pub mod network;
mod ops;
mod releases;
mod runner;
pub mod secrets;
pub mod spec;
pub mod standby;
pub mod store;
pub mod volumes;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hangar_core::machine::{self, Machine as MachineCore};
use hangar_core::spec::{MachineSpec, Parsed};
use hangar_core::{AppName, InstanceId, MachineId, MachineState, Signal};
use hangar_runtime::Runtime;
use tokio::sync::oneshot;

pub use cluster::{MachineSummary, NetworkIdFuture, RemoteMachines, VolumeSummary};
pub use images::{ImageSource, ResolvedImage};
pub use ops::{OrgMachines, UpdateMachine};
pub use runner::Status;
use runner::{Handle, Msg, Runner};
use store::NewVersion;
pub use store::{
    AppRecord, EventRow, LeaseRow, MachineRecord, MachineRev, MachineRow, ReleaseEvent, ReleaseRow,
    Store, TokenRow,
};

/// What can go wrong: what the caller did wrong (each of which the API
/// answers with its own status), or what failed on this host, with its
/// cause kept as the error's source.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// 400: the request is malformed or a field is invalid.
    #[error("{0}")]
    InvalidArgument(String),
    /// 403: the caller may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 408: a wait ran out.
    #[error("{0}")]
    Timeout(String),
    /// 409: a name is taken, or the resource is busy.
    #[error("{0}")]
    Conflict(String),
    /// 412: the machine's state does not allow the request.
    #[error("failed_precondition: {0}")]
    Precondition(String),
    /// 422: valid but unprocessable (e.g. a region this host lacks).
    #[error("{0}")]
    Unprocessable(String),
    /// 422 with Fly's `insufficient_capacity` status: the host cannot give
    /// the machine what it asks for.
    #[error("{0}")]
    InsufficientCapacity(String),
    /// 503: something this host needs from elsewhere (the cluster's
    /// database) cannot be reached now; the request may be retried.
    #[error("{0}")]
    Unavailable(String),
    /// The database failed.
    #[error("database")]
    Database(#[source] rusqlite::Error),
    /// A stored value does not parse.
    #[error("stored JSON")]
    StoredJson(#[source] serde_json::Error),
    /// The container runtime failed.
    #[error("container runtime")]
    Runtime(#[source] hangar_runtime::RuntimeError),
    /// The volume host failed.
    #[error("volumes")]
    Volumes(#[source] hangar_volumes::VolumeError),
    /// A file of the host could not be read or written.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// Something else on this host failed.
    #[error("{0}")]
    Internal(String),
}

impl AgentError {
    /// Whether this is the host's failure rather than the caller's.
    pub fn is_internal(&self) -> bool {
        matches!(
            self,
            AgentError::Database(_)
                | AgentError::StoredJson(_)
                | AgentError::Runtime(_)
                | AgentError::Volumes(_)
                | AgentError::Io { .. }
                | AgentError::Internal(_)
        )
    }
}

/// How the agent is set up.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The data directory (the database lives here).
    pub data_dir: PathBuf,
    /// This host's region code.
    pub region: String,
    /// The clock of schedules and volume upkeep (the system's, but in
    /// tests).
    pub clock: Arc<dyn clock::Clock>,
    /// The secrets key; `<data_dir>/secrets.key` (created when missing)
    /// when not given.
    pub secrets_key_file: Option<PathBuf>,
    /// Point machines' resolv.conf at hangard's DNS server (which the
    /// binary runs on every network's gateway).
    pub dns: bool,
    /// The IPv4 range private networks' blocks are drawn from.
    pub network_range: network::NetRange,
    /// This host's id in the installation (part of every 6PN address).
    pub host_id: u16,
    /// Check the host's interfaces: refuse to open when another interface
    /// uses a block of the range that this installation's machines use
    /// (another installation with an overlapping range), and never take a
    /// new block that another interface uses. hangard turns it on; tests of
    /// the agent alone leave it off.
    pub check_host_addresses: bool,
    /// Dedicated public addresses for apps (`ip_assignments` type `v4`).
    pub ip_pool: Option<ips::IpPool>,
    /// The proxy's shared address (`shared_v4`).
    pub shared_ip: Option<std::net::IpAddr>,
    /// Every machine's task limit; scaled with its memory when absent
    /// (see [`hangar_runtime::Resources::default_pids_max`]).
    pub pids_limit: Option<u64>,
    /// The host's memory: no machine may ask for more. Read from
    /// `/proc/meminfo` when absent.
    pub host_memory_mb: Option<u64>,
    /// Where machines' runners (and the work they spawn: pulls, root
    /// filesystems, containers) run. hangard gives them a runtime of their
    /// own, so that lifecycle work never queues ahead of API requests on
    /// the runtime serving them; the caller's runtime when absent.
    pub machines_runtime: Option<tokio::runtime::Handle>,
}

impl AgentConfig {
    /// A configuration for `data_dir` with the defaults: region `local`,
    /// real-time schedules, the secrets key in the data dir, no DNS in
    /// resolv.conf, the default network range, no public addresses.
    pub fn new(data_dir: impl Into<PathBuf>) -> AgentConfig {
        AgentConfig {
            data_dir: data_dir.into(),
            region: "local".into(),
            clock: Arc::new(clock::SystemClock),
            secrets_key_file: None,
            dns: false,
            network_range: network::NetRange::default(),
            host_id: 1,
            check_host_addresses: false,
            ip_pool: None,
            shared_ip: None,
            pids_limit: None,
            host_memory_mb: None,
            machines_runtime: None,
        }
    }
}

/// See [`Agent::on_network`].
pub type NetworkHook = Arc<dyn Fn(&network::Block) + Send + Sync>;

/// How long a destroy request waits for the machine to be destroyed before
/// it answers anyway (the teardown goes on).
const DESTROY_ANSWER_WAIT: Duration = Duration::from_secs(30);

/// How many generated names a create tries before it gives up.
pub const NAME_DRAWS: u32 = 8;

/// A generated machine name (Fly's style, `adjective-noun-1234`).
fn draw_name() -> String {
    #[cfg(any(test, feature = "test-support"))]
    if let Some(name) = names_for_tests::NEXT.with(|q| q.borrow_mut().pop_front()) {
        return name;
    }
    hangar_core::names::generate()
}

/// Tests choose the names a create draws on this thread.
#[cfg(any(test, feature = "test-support"))]
pub mod names_for_tests {
    use std::cell::RefCell;
    use std::collections::VecDeque;

    thread_local! {
        pub(crate) static NEXT: RefCell<VecDeque<String>> = const { RefCell::new(VecDeque::new()) };
    }

    /// The next names drawn on this thread, in order (then random ones).
    pub fn queue(names: &[&str]) {
        NEXT.with(|q| q.borrow_mut().extend(names.iter().map(|n| n.to_string())));
    }
}

/// The one organization of a single-host installation.
pub const DEFAULT_ORG: &str = "personal";

/// State shared by the agent and its runners.
pub(crate) struct Shared {
    pub store: Store,
    pub runtime: Arc<dyn Runtime>,
    pub images: Arc<dyn ImageSource>,
    /// [`AgentConfig::clock`].
    pub clock: Arc<dyn clock::Clock>,
    /// Seals and opens app secrets.
    pub secrets: secrets::SecretBox,
    /// Volume images on this host.
    pub volumes: hangar_volumes::VolumeHost,
    /// One volume maintenance run at a time.
    pub maintenance: tokio::sync::Mutex<()>,
    /// Machines resolve names through hangard's DNS server on their
    /// network's gateway.
    pub dns: bool,
    /// How machines are addressed.
    pub net: network::NetPlan,
    /// [`AgentConfig::check_host_addresses`].
    pub check_host_addresses: bool,
    /// Health check results.
    pub(crate) checks: checks::Checks,
    pub ip_pool: Option<ips::IpPool>,
    pub shared_ip: Option<std::net::IpAddr>,
    /// [`AgentConfig::pids_limit`].
    pub pids_limit: Option<u64>,
    /// [`AgentConfig::host_memory_mb`], resolved.
    pub host_memory_mb: Option<u64>,
    /// [`AgentConfig::machines_runtime`].
    pub machines_runtime: Option<tokio::runtime::Handle>,
    /// Called with a block when a machine opens it (hangard serves DNS on
    /// its gateway and lets its network's traffic through).
    network_hook: Mutex<Option<NetworkHook>>,
    runners: Mutex<HashMap<MachineId, Handle>>,
    /// In a cluster: the machines other hosts run.
    pub(crate) remote: std::sync::OnceLock<Arc<dyn cluster::RemoteMachines>>,
}

impl Shared {
    pub(crate) fn forget_runner(&self, id: &MachineId) {
        self.runners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    pub(crate) fn runner(&self, id: &MachineId) -> Option<Handle> {
        self.runners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }
}

/// A new machine.
#[derive(Debug, Clone)]
pub struct NewMachine {
    /// Its config, parsed where it entered.
    pub config: Parsed,
    /// Name; generated when absent.
    pub name: Option<String>,
    /// Region; this host's when absent.
    pub region: Option<String>,
    /// Create without starting.
    pub skip_launch: bool,
    /// Refuse (412) unless the app's secrets have reached this version.
    pub min_secrets_version: Option<i64>,
}

impl NewMachine {
    /// A machine of `config`, started once created, with a generated name,
    /// in this host's region.
    pub fn new(config: Parsed) -> NewMachine {
        NewMachine {
            config,
            name: None,
            region: None,
            skip_launch: false,
            min_secrets_version: None,
        }
    }
}

/// A state a waiter can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitFor {
    /// This state.
    State(MachineState),
    /// Any state that is not transient.
    Settled,
    /// An older version that an update replaced (Fly's `replaced`).
    Replaced,
}

impl WaitFor {
    /// Parses Fly's names (`started`, `stopped`, `destroyed`, `failed`,
    /// `settled`, `replaced`, and any other state name).
    pub fn parse(s: &str) -> Option<WaitFor> {
        match s {
            "settled" => Some(WaitFor::Settled),
            "replaced" => Some(WaitFor::Replaced),
            _ => MachineState::parse(s).map(WaitFor::State),
        }
    }

    fn matches(self, s: MachineState) -> bool {
        match self {
            WaitFor::State(want) => want == s,
            WaitFor::Settled => matches!(
                s,
                MachineState::Started
                    | MachineState::Stopped
                    | MachineState::Failed
                    | MachineState::Destroyed
            ),
            WaitFor::Replaced => false,
        }
    }

    /// Whether a version that an update replaced has reached it (it has
    /// stopped for good).
    fn reached_by_replaced(self) -> bool {
        matches!(
            self,
            WaitFor::Replaced
                | WaitFor::Settled
                | WaitFor::State(MachineState::Stopped | MachineState::Destroyed)
        )
    }

    fn name(self) -> &'static str {
        match self {
            WaitFor::State(s) => s.as_str(),
            WaitFor::Settled => "settled",
            WaitFor::Replaced => "replaced",
        }
    }
}

/// What a wait reached: a state name (`replaced` for an older version),
/// the version it is of and the newest event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitOutcome {
    /// Fly's state name.
    pub state: String,
    /// The version.
    pub version: String,
    /// The newest event's id.
    pub event_id: Option<String>,
}

/// Filters of a machine listing.
#[derive(Debug, Clone, Default)]
pub struct MachineFilter {
    /// Destroyed machines too.
    pub include_deleted: bool,
    /// Only this region.
    pub region: Option<String>,
    /// Only these states (none: any).
    pub states: Vec<MachineState>,
    /// Only machines with every one of these metadata values.
    pub metadata: Vec<(String, String)>,
}

impl MachineFilter {
    fn admits(&self, m: &MachineRecord) -> bool {
        self.admits_columns(&m.region, m.core.state) && self.admits_metadata(m)
    }

    /// What can be told from the machine's row alone.
    fn admits_columns(&self, region: &str, state: MachineState) -> bool {
        self.region.as_ref().is_none_or(|r| r == region)
            && (self.states.is_empty() || self.states.contains(&state))
    }

    /// What needs its parsed config.
    fn admits_metadata(&self, m: &MachineRecord) -> bool {
        self.metadata
            .iter()
            .all(|(k, v)| m.spec.metadata.get(k).is_some_and(|x| x == v))
    }
}

/// The agent. Cheap to clone.
#[derive(Clone)]
pub struct Agent {
    pub(crate) shared: Arc<Shared>,
    region: String,
}

impl Agent {
    /// Opens the database and resumes every machine that is not destroyed.
    pub async fn open(
        cfg: AgentConfig,
        runtime: Arc<dyn Runtime>,
        images: Arc<dyn ImageSource>,
    ) -> Result<Agent, AgentError> {
        std::fs::create_dir_all(&cfg.data_dir).map_err(|source| AgentError::Io {
            context: format!("creating {}", cfg.data_dir.display()),
            source,
        })?;
        let store = Store::open(&cfg.data_dir.join("hangar.db"))?;
        let net = network::NetPlan {
            range: cfg.network_range,
            installation: store.installation_id()?,
            host: cfg.host_id,
        };
        if cfg.check_host_addresses {
            let ours = store.network_blocks()?;
            let clashes: Vec<String> = network::foreign_blocks(&net)
                .into_iter()
                .filter(|(b, _)| ours.contains(b))
                .map(|(b, ifname)| format!("{ifname} has an address in block {b}"))
                .collect();
            if !clashes.is_empty() {
                return Err(AgentError::Conflict(format!(
                    "the network range {} clashes with this host's interfaces ({}), and this installation's machines use those blocks: give each hangard on this host a --network-range of its own",
                    net.range,
                    clashes.join(", ")
                )));
            }
        }
        let key_file = cfg
            .secrets_key_file
            .clone()
            .unwrap_or_else(|| cfg.data_dir.join("secrets.key"));
        let secrets = secrets::SecretBox::load_or_create(&key_file)?;
        let volumes =
            hangar_volumes::VolumeHost::new(cfg.data_dir.join("volumes")).map_err(|source| {
                AgentError::Io {
                    context: "the volumes directory".into(),
                    source,
                }
            })?;
        let shared = Arc::new(Shared {
            store,
            runtime,
            images,
            clock: cfg.clock.clone(),
            secrets,
            volumes,
            maintenance: tokio::sync::Mutex::new(()),
            dns: cfg.dns,
            net,
            check_host_addresses: cfg.check_host_addresses,
            checks: Default::default(),
            ip_pool: cfg.ip_pool,
            shared_ip: cfg.shared_ip,
            pids_limit: cfg.pids_limit,
            host_memory_mb: cfg.host_memory_mb.or_else(host_memory_mb),
            machines_runtime: cfg.machines_runtime.clone(),
            network_hook: Mutex::new(None),
            runners: Mutex::new(HashMap::new()),
            remote: std::sync::OnceLock::new(),
        });
        let mut live = shared.store.live_machines()?;
        tracing::info!(machines = live.len(), "resuming machines");
        // Addresses a crash left without a live machine go back.
        let strays = shared.store.release_stray_addresses()?;
        if strays > 0 {
            tracing::info!(
                addresses = strays,
                "released addresses of machines that are gone"
            );
        }
        // Every machine's address as this version shapes it: machines made
        // before private networking get one, and the 6PN address of
        // machines of older versions follows the installation's plan
        // (running ones are wired again as they are resumed, stopped ones at
        // their next start).
        for rec in &mut live {
            let network = shared
                .store
                .get_app(&rec.app)?
                .map_or_else(|| "default".to_owned(), |a| a.network);
            let (a, _) = shared
                .store
                .allocate_address(&network, rec.id.as_str(), &shared.net)?;
            let ip = a.ipv6().to_string();
            if rec.private_ip != ip {
                tracing::info!(machine = %rec.id, from = %rec.private_ip, to = %ip, "private address follows the installation's plan");
                shared.store.set_private_ip(rec.id.as_str(), &ip)?;
                rec.private_ip = ip;
            }
        }
        for rec in live {
            let last = shared.store.events(&rec.id, 1)?.pop().map(|e| e.id);
            let id = rec.id.clone();
            let handle = Runner::spawn(rec, shared.clone(), last);
            shared
                .runners
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id, handle);
        }
        let agent = Agent {
            shared,
            region: cfg.region,
        };
        agent.spawn_volume_maintenance();
        agent.spawn_checks();
        Ok(agent)
    }

    /// Runs [`Agent::maintain_volumes`] every
    /// [`volumes::MAINTENANCE_INTERVAL`] of the agent's clock for as long as
    /// the agent exists.
    fn spawn_volume_maintenance(&self) {
        let weak = Arc::downgrade(&self.shared);
        let region = self.region.clone();
        // By the agent's clock, but never busier than once a second.
        let every = self
            .shared
            .clock
            .until(self.shared.clock.now_ms() + volumes::MAINTENANCE_INTERVAL.as_millis() as i64)
            .max(Duration::from_secs(1));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(shared) = weak.upgrade() else {
                    return;
                };
                let agent = Agent {
                    shared,
                    region: region.clone(),
                };
                if let Err(e) = agent.maintain_volumes().await {
                    tracing::warn!(error = %e, "volume maintenance failed");
                }
            }
        });
    }

    /// Calls `hook` with every block that has machines now, and later with
    /// each block a new machine opens.
    pub fn on_network(&self, hook: NetworkHook) -> Result<(), AgentError> {
        for b in self.shared.store.blocks_in_use(&self.shared.net)? {
            hook(&b);
        }
        *self
            .shared
            .network_hook
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(hook);
        Ok(())
    }

    /// How this installation addresses machines.
    pub fn net_plan(&self) -> network::NetPlan {
        self.shared.net
    }

    /// The blocks that have machines on them.
    pub fn blocks_in_use(&self) -> Result<Vec<network::Block>, AgentError> {
        self.shared.store.blocks_in_use(&self.shared.net)
    }

    /// A machine's private addresses, if it has them.
    pub fn machine_address(&self, id: &str) -> Result<Option<network::Address>, AgentError> {
        self.shared.store.address_of(id, &self.shared.net)
    }

    /// This host's region.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The memory of this host machines may reserve (MiB), when known.
    pub fn host_memory_mb(&self) -> Option<u64> {
        self.shared.host_memory_mb
    }

    /// The database (for tests and read-only tools; the API goes through
    /// the agent's methods).
    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// A number that changes whenever the state changes (readers that cache
    /// what they read compare it).
    pub fn state_version(&self) -> u64 {
        self.shared.store.changes()
    }

    /// Where the internal DNS server finds machines by network.
    pub fn dns_directory(&self) -> Arc<dyn hangar_net::dns::Directory> {
        Arc::new(cluster::HostDns(self.shared.clone()))
    }

    /// Stops every runner; the machines themselves keep running.
    pub async fn shutdown(&self) {
        let handles: Vec<Handle> = self
            .shared
            .runners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for h in handles {
            let _ = h.tx.send(Msg::Shutdown).await;
        }
    }

    // ---- apps -------------------------------------------------------------------

    /// Creates an app.
    pub fn create_app(
        &self,
        name: &str,
        org_slug: Option<&str>,
        network: Option<&str>,
    ) -> Result<AppRecord, AgentError> {
        let name: AppName = name
            .parse()
            .map_err(|e: hangar_core::ids::IdError| AgentError::InvalidArgument(e.to_string()))?;
        let org = org_slug.filter(|o| !o.is_empty()).unwrap_or(DEFAULT_ORG);
        if org != DEFAULT_ORG {
            return Err(AgentError::NotFound(format!(
                "organization {org:?} not found; this installation has only {DEFAULT_ORG:?}"
            )));
        }
        let rec = AppRecord {
            id: random_app_id(),
            name: name.to_string(),
            org_slug: org.to_owned(),
            network: network
                .filter(|n| !n.is_empty())
                .unwrap_or("default")
                .to_owned(),
            internal_numeric_id: rand::random_range(1..i64::from(i32::MAX)),
            created_at: store::now_rfc3339(),
            machine_count: 0,
        };
        self.shared.store.insert_app(&rec)?;
        Ok(rec)
    }

    /// An app by name.
    pub fn get_app(&self, name: &str) -> Result<AppRecord, AgentError> {
        self.shared
            .store
            .get_app(name)?
            .ok_or_else(|| AgentError::NotFound(format!("app {name} not found")))
    }

    /// `NotFound` unless the app exists.
    fn app_must_exist(&self, name: &str) -> Result<(), AgentError> {
        if self.shared.store.app_exists(name)? {
            Ok(())
        } else {
            Err(AgentError::NotFound(format!("app {name} not found")))
        }
    }

    /// The apps of an organization.
    pub fn list_apps(&self, org_slug: &str) -> Result<Vec<AppRecord>, AgentError> {
        self.shared.store.list_apps(org_slug)
    }

    /// Every machine of every app on this host (destroyed ones left out),
    /// in brief: app, id and state.
    pub fn machine_briefs(&self) -> Result<Vec<store::MachineBrief>, AgentError> {
        self.shared.store.machine_briefs()
    }

    /// The started machines of this host whose config has a `metrics`
    /// section, with that section.
    pub fn started_with_metrics(
        &self,
    ) -> Result<Vec<(store::MachineBrief, serde_json::Value)>, AgentError> {
        self.shared.store.started_with_metrics()
    }

    /// What a machine's workload has used (CPU time, memory), when it
    /// runs: read from its cgroup, for metrics.
    pub fn machine_usage(&self, id: &MachineId) -> Option<hangar_runtime::Usage> {
        self.shared.runtime.usage(id)
    }

    /// The app's status: `pending` until it has had a machine, then
    /// `deployed`.
    pub fn app_status(&self, name: &str) -> Result<String, AgentError> {
        self.shared.store.app_status(name)
    }

    /// Deletes an app with everything that is its: its records, secrets,
    /// addresses, tokens, volumes (their data) and snapshots, so that an app
    /// created later under the same name starts with nothing. With machines
    /// or volumes left it refuses, unless `force`, which destroys them first.
    /// Machines already being destroyed do not count: the delete waits for
    /// them.
    pub async fn delete_app(&self, name: &str, force: bool) -> Result<(), AgentError> {
        self.delete_app_as(name, force, true).await
    }

    async fn delete_app_as(
        &self,
        name: &str,
        force: bool,
        publish: bool,
    ) -> Result<(), AgentError> {
        let app = self.get_app(name)?;
        let machines = self.shared.store.list_machines(&app.name, false)?;
        let volumes = self.live_volumes(&app.name)?;
        let alive = machines
            .iter()
            .filter(|m| m.core.state != MachineState::Destroying)
            .count();
        if !force && alive > 0 {
            return Err(AgentError::Precondition(format!(
                "app {name} has {alive} machines; destroy them first or use force=true"
            )));
        }
        if !force && !volumes.is_empty() {
            return Err(AgentError::Precondition(format!(
                "app {name} has {} volumes ({}); deleting the app deletes their data: destroy them first or use force=true",
                volumes.len(),
                volumes
                    .iter()
                    .map(|v| v.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        for m in &machines {
            if m.core.state != MachineState::Destroying {
                self.destroy_machine(name, m.id.as_str(), true, None)
                    .await?;
            }
        }
        for m in &machines {
            self.wait_machine(
                name,
                m.id.as_str(),
                &[WaitFor::State(MachineState::Destroyed)],
                Duration::from_secs(60),
            )
            .await?;
        }
        self.remove_app_volumes(&app.name).await?;
        if publish {
            self.shared.store.delete_app(name)?;
        } else {
            self.shared.store.apply_app_deleted(name)?;
        }
        tracing::info!(app = name, "app deleted");
        Ok(())
    }

    // ---- machines ----------------------------------------------------------------

    /// Creates a machine and starts it (unless `skip_launch`). Returns once
    /// the machine is recorded; preparing and starting continue in its runner.
    pub async fn create_machine(
        &self,
        app: &str,
        req: NewMachine,
    ) -> Result<MachineRecord, AgentError> {
        let since = std::time::Instant::now();
        let r = self.create_machine_now(app, req).await;
        hangar_metrics::get().machine_op("create", since, &r);
        r
    }

    async fn create_machine_now(
        &self,
        app: &str,
        req: NewMachine,
    ) -> Result<MachineRecord, AgentError> {
        // Not `get_app`: that counts the app's machines.
        let network = self
            .shared
            .store
            .app_network(app)?
            .ok_or_else(|| AgentError::NotFound(format!("app {app} not found")))?;
        self.ensure_cluster_network(&network).await?;
        let Parsed { json, spec } = req.config;
        self.check_isolation(&spec)?;
        self.check_capacity_for(&spec)?;
        self.check_standbys(app, None, &spec)?;
        self.check_secrets_version(app, req.min_secrets_version)?;
        self.check_file_secrets(app, &spec)?;
        let volume = self.mount_volume(app, None, &spec)?;
        let image_ref = self
            .shared
            .images
            .parse(&spec.image)
            .map_err(|e| AgentError::InvalidArgument(e.to_string()))?;
        let region = match req
            .region
            .as_deref()
            .map(str::trim)
            .filter(|r| !r.is_empty())
        {
            None => self.region.clone(),
            Some(r) if r == self.region => r.to_owned(),
            Some(r) => {
                return Err(AgentError::Unprocessable(format!(
                    "Region '{r}' cannot host your machine: this installation has region '{}'",
                    self.region
                )));
            }
        };
        let generated = req.name.as_deref().is_none_or(str::is_empty);
        let name = match req.name.as_deref().filter(|n| !n.is_empty()) {
            Some(n) if hangar_core::names::valid_machine_name(n) => n.to_owned(),
            Some(n) => {
                return Err(AgentError::InvalidArgument(format!(
                    "invalid machine name {n:?}: use up to 63 letters, digits, dashes and underscores"
                )));
            }
            None => draw_name(),
        };
        let now = store::now_rfc3339();
        let machine_id = MachineId::generate();
        // The volume is bound first: a machine never runs without it.
        if let Some(v) = &volume {
            self.bind_volume(v, &machine_id)?;
        }
        let mut rec = MachineRecord {
            id: machine_id.clone(),
            app: app.to_owned(),
            name,
            region,
            // A standby settles in `stopped`, like skip_launch.
            core: MachineCore::new(!req.skip_launch && !spec.is_standby()),
            instance_id: InstanceId::generate().to_string(),
            config: json,
            spec,
            image_ref: Some(image_ref),
            private_ip: String::new(),
            created_at: now.clone(),
            updated_at: now,
            cordoned: false,
            updated_at_ms: store::now_ms(),
            schedule_next_ms: None,
        };
        let event = store::NewEvent {
            kind: "launch".into(),
            status: MachineState::Created.as_str().into(),
            source: "user".into(),
            request: None,
        };
        // The machine and its address commit together. A new block must be
        // free on this host.
        let foreign = std::sync::OnceLock::new();
        let block_free = |b: u8| {
            !self.shared.check_host_addresses
                || !foreign
                    .get_or_init(|| network::foreign_blocks(&self.shared.net))
                    .iter()
                    .any(|(f, _)| *f == b)
        };
        // A generated name can be taken (there are about 37 million: with
        // 10,000 machines in an app, one create in about 3,700 draws a
        // name in use): draw another, as a user would pick another.
        let mut draws = 1;
        let address = loop {
            match self.shared.store.insert_machine(
                &mut rec,
                &event,
                Some((&network, &self.shared.net, &block_free)),
            ) {
                Ok(a) => break a,
                Err(AgentError::Conflict(_)) if generated && draws < NAME_DRAWS => {
                    draws += 1;
                    rec.name = draw_name();
                }
                Err(e) => {
                    let _ = self.shared.store.release_volumes(rec.id.as_str());
                    return Err(e);
                }
            }
        };
        if let Some((a, true)) = address {
            let hook = self
                .shared
                .network_hook
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if let Some(hook) = hook {
                hook(&self.shared.net.block(a.net, a.block));
            }
        }
        let last = self.shared.store.events(&rec.id, 1)?.pop().map(|e| e.id);
        let handle = Runner::spawn(rec.clone(), self.shared.clone(), last);
        self.shared
            .runners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(rec.id.clone(), handle);
        tracing::info!(machine = %rec.id, app = %rec.app, image = %rec.spec.image, "machine created");
        Ok(rec)
    }

    /// A machine of an app.
    pub fn get_machine(&self, app: &str, id: &str) -> Result<MachineRecord, AgentError> {
        self.app_must_exist(app)?;
        self.shared
            .store
            .get_machine(app, id)?
            .ok_or_else(|| AgentError::NotFound(format!("machine {id} not found")))
    }

    /// An app's machines.
    pub fn list_machines(
        &self,
        app: &str,
        include_deleted: bool,
    ) -> Result<Vec<MachineRecord>, AgentError> {
        self.app_must_exist(app)?;
        self.shared.store.list_machines(app, include_deleted)
    }

    /// An app's machines that pass `filter`.
    pub fn find_machines(
        &self,
        app: &str,
        filter: &MachineFilter,
    ) -> Result<Vec<MachineRecord>, AgentError> {
        Ok(self
            .list_machines(app, filter.include_deleted)?
            .into_iter()
            .filter(|m| filter.admits(m))
            .collect())
    }

    /// One machine as stored, its config not parsed (for readers that
    /// keep renderings of machines; see [`MachineRow`]).
    pub fn get_machine_row(&self, app: &str, id: &str) -> Result<MachineRow, AgentError> {
        self.app_must_exist(app)?;
        self.shared
            .store
            .get_machine_row(app, id)?
            .ok_or_else(|| AgentError::NotFound(format!("machine {id} not found")))
    }

    /// An app's machines that pass `filter`, as stored; a metadata filter
    /// parses the configs of the machines the other filters let through.
    pub fn find_machine_rows(
        &self,
        app: &str,
        filter: &MachineFilter,
    ) -> Result<Vec<MachineRow>, AgentError> {
        self.app_must_exist(app)?;
        let mut out = Vec::new();
        for row in self
            .shared
            .store
            .list_machine_rows(app, filter.include_deleted)?
        {
            if filter.admits_columns(&row.rec.region, row.rec.core.state)
                && (filter.metadata.is_empty() || filter.admits_metadata(&row.clone().finish()?))
            {
                out.push(row);
            }
        }
        Ok(out)
    }

    /// An app's machines that pass `filter`, by revision; `None` when the
    /// filter needs the machines' configs (metadata), for which
    /// [`Agent::find_machine_rows`] reads them.
    pub fn find_machine_revs(
        &self,
        app: &str,
        filter: &MachineFilter,
    ) -> Result<Option<Vec<MachineRev>>, AgentError> {
        if !filter.metadata.is_empty() {
            return Ok(None);
        }
        self.app_must_exist(app)?;
        Ok(Some(
            self.shared
                .store
                .list_machine_revs(app, filter.include_deleted)?
                .into_iter()
                .filter(|m| filter.admits_columns(&m.region, m.state))
                .collect(),
        ))
    }

    /// A machine's newest events (of a record just read).
    pub fn events_of(&self, m: &MachineRecord, limit: usize) -> Result<Vec<EventRow>, AgentError> {
        self.shared.store.events(&m.id, limit)
    }

    /// Waits as Fly's wait endpoint does: for one of `states` (`started`
    /// when none), of the current version or of `version`. A version that
    /// an update replaced reaches `replaced`, `stopped`, `destroyed` and
    /// `settled` at once and nothing else.
    pub async fn wait(
        &self,
        app: &str,
        id: &str,
        states: &[WaitFor],
        version: Option<&str>,
        timeout: Duration,
    ) -> Result<WaitOutcome, AgentError> {
        let rec = self.get_machine(app, id)?;
        if let Some(v) = version.filter(|v| *v != rec.instance_id) {
            let known = self
                .shared
                .store
                .versions(&rec.id)?
                .iter()
                .any(|(x, _)| x == v);
            if !known {
                return Err(AgentError::NotFound(format!(
                    "version {v} of machine {id} not found"
                )));
            }
            if !states.is_empty() && !states.iter().any(|w| w.reached_by_replaced()) {
                return Err(AgentError::Precondition(format!(
                    "version {v} was replaced and will not reach the desired state"
                )));
            }
            return Ok(WaitOutcome {
                state: "replaced".into(),
                version: v.to_owned(),
                event_id: None,
            });
        }
        let wanted: Vec<WaitFor> = if states.is_empty() {
            vec![WaitFor::State(MachineState::Started)]
        } else {
            states
                .iter()
                .copied()
                .filter(|w| *w != WaitFor::Replaced)
                .collect()
        };
        if wanted.is_empty() {
            return Err(AgentError::Precondition(
                "the current version is not replaced; wait on the version an update replaced"
                    .into(),
            ));
        }
        let st = self.wait_machine(app, id, &wanted, timeout).await?;
        Ok(WaitOutcome {
            state: st.state.as_str().into(),
            version: st.instance_id,
            event_id: st.last_event,
        })
    }

    /// A machine's events, newest first.
    pub fn machine_events(
        &self,
        app: &str,
        id: &str,
        limit: usize,
    ) -> Result<Vec<EventRow>, AgentError> {
        let m = self.get_machine(app, id)?;
        self.shared.store.events(&m.id, limit)
    }

    /// Sends `input` to the machine's runner, the one path of every request
    /// that changes a machine, and returns the state before it. A machine
    /// without a runner is destroyed: destroying it again is a no-op,
    /// anything else is refused.
    pub(crate) async fn request(
        &self,
        app: &str,
        id: &str,
        input: machine::Input,
        version: Option<NewVersion>,
    ) -> Result<MachineState, AgentError> {
        let rec = self.get_machine(app, id)?;
        let destroy = matches!(input, machine::Input::Destroy { .. });
        if let Some(h) = self.shared.runner(&rec.id) {
            let (reply, rx) = oneshot::channel();
            let msg = Msg::Request(Box::new(runner::Request {
                input,
                version,
                reply,
            }));
            if h.tx.send(msg).await.is_ok() {
                if let Ok(r) = rx.await {
                    return r;
                }
            }
        }
        // The runner is gone: the machine was destroyed (or is, an instant
        // from now: its record says so once the runner is gone).
        if destroy {
            Ok(MachineState::Destroyed)
        } else {
            Err(denied(machine::Denied::Destroyed))
        }
    }

    /// Starts a machine; returns the state it was in. `nonce` is the
    /// request's `fly-machine-lease-nonce`, needed while the machine is leased.
    pub async fn start_machine(
        &self,
        app: &str,
        id: &str,
        nonce: Option<&str>,
    ) -> Result<MachineState, AgentError> {
        let since = std::time::Instant::now();
        let r = async {
            self.check_lease(app, id, nonce)?;
            self.request(app, id, machine::Input::Start, None).await
        }
        .await;
        hangar_metrics::get().machine_op("start", since, &r);
        r
    }

    /// Stops a machine with an optional signal and timeout.
    pub async fn stop_machine(
        &self,
        app: &str,
        id: &str,
        signal: Option<Signal>,
        timeout: Option<Duration>,
        nonce: Option<&str>,
    ) -> Result<MachineState, AgentError> {
        let since = std::time::Instant::now();
        let r = async {
            self.check_lease(app, id, nonce)?;
            self.request(app, id, machine::Input::Stop { signal, timeout }, None)
                .await
        }
        .await;
        hangar_metrics::get().machine_op("stop", since, &r);
        r
    }

    /// Destroys a machine (`force` kills a running one, leased or not).
    pub async fn destroy_machine(
        &self,
        app: &str,
        id: &str,
        force: bool,
        nonce: Option<&str>,
    ) -> Result<MachineState, AgentError> {
        let since = std::time::Instant::now();
        let r = self.destroy_machine_now(app, id, force, nonce).await;
        hangar_metrics::get().machine_op("destroy", since, &r);
        r
    }

    async fn destroy_machine_now(
        &self,
        app: &str,
        id: &str,
        force: bool,
        nonce: Option<&str>,
    ) -> Result<MachineState, AgentError> {
        if !force {
            self.check_lease(app, id, nonce)?;
        }
        let before = self
            .request(app, id, machine::Input::Destroy { force }, None)
            .await?;
        // Answered once it is gone (a listing right after no longer shows
        // it), or after a while if the teardown takes longer.
        let _ = self
            .wait_machine(
                app,
                id,
                &[WaitFor::State(MachineState::Destroyed)],
                DESTROY_ANSWER_WAIT,
            )
            .await;
        Ok(before)
    }

    /// Waits until the machine is in one of `states`, for at most `timeout`.
    pub async fn wait_machine(
        &self,
        app: &str,
        id: &str,
        states: &[WaitFor],
        timeout: Duration,
    ) -> Result<Status, AgentError> {
        let rec = self.get_machine(app, id)?;
        let want = |s: MachineState| states.iter().any(|w| w.matches(s));
        let deadline = tokio::time::Instant::now() + timeout;
        if let Some(h) = self.shared.runner(&rec.id) {
            let mut rx = h.status.clone();
            let start = rx.borrow_and_update().entered;
            loop {
                let st = rx.borrow_and_update().clone();
                if want(st.state) {
                    return Ok(st);
                }
                if let Some(e) = self.hopeless(&rec.id, st.state, &want)? {
                    return Err(e);
                }
                // A wanted state came and went since the wait began.
                if let Some(passed) = MachineState::ALL
                    .iter()
                    .find(|s| want(**s) && st.entered[s.index()] > start[s.index()])
                {
                    return Ok(Status {
                        state: *passed,
                        ..st
                    });
                }
                match tokio::time::timeout_at(deadline, rx.changed()).await {
                    Ok(Ok(())) => continue,
                    // The runner is gone (destroyed): the record is final.
                    Ok(Err(_)) => break,
                    Err(_) => return Err(timeout_error(states, st.state)),
                }
            }
        }
        let rec = self.get_machine(app, id)?;
        let status = Status {
            state: rec.core.state,
            instance_id: rec.instance_id.clone(),
            last_event: self.shared.store.events(&rec.id, 1)?.pop().map(|e| e.id),
            entered: [0; MachineState::ALL.len()],
        };
        if want(status.state) {
            Ok(status)
        } else {
            Err(self
                .hopeless(&rec.id, status.state, &want)?
                .unwrap_or_else(|| timeout_error(states, status.state)))
        }
    }

    /// A machine that is `failed` or `destroyed` will not reach another state
    /// by itself: a waiter learns why at once instead of at the deadline.
    fn hopeless(
        &self,
        id: &MachineId,
        current: MachineState,
        want: &dyn Fn(MachineState) -> bool,
    ) -> Result<Option<AgentError>, AgentError> {
        if want(current) || !matches!(current, MachineState::Failed | MachineState::Destroyed) {
            return Ok(None);
        }
        let reason = self.shared.store.events(id, 10)?.into_iter().find_map(|e| {
            e.request?
                .get("error")
                .and_then(|v| v.as_str())
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        });
        Ok(Some(AgentError::Precondition(match reason {
            Some(r) => format!("machine is {current} and will not reach the desired state: {r}"),
            None => format!("machine is {current} and will not reach the desired state"),
        })))
    }

    /// Where the machine's log is, if the runtime keeps one.
    pub fn log_path(&self, app: &str, id: &str) -> Result<Option<PathBuf>, AgentError> {
        let rec = self.get_machine(app, id)?;
        Ok(self.shared.runtime.log_path(&rec.id))
    }
}

impl Agent {
    /// Refuses a machine that asks for a runtime this host cannot run
    /// (412, with the runtime's reason).
    pub(crate) fn check_isolation(&self, spec: &MachineSpec) -> Result<(), AgentError> {
        match spec.isolation {
            Some(i) => self.shared.runtime.supports(i).map_err(|why| {
                AgentError::Precondition(format!(
                    "this host cannot run {i} machines (metadata.{}): {why}",
                    hangar_core::isolation::METADATA_KEY
                ))
            }),
            None => Ok(()),
        }
    }

    /// Refuses a machine that asks for more memory than the host has.
    pub(crate) fn check_capacity_for(&self, spec: &MachineSpec) -> Result<(), AgentError> {
        let asked = spec::resources(spec, None).memory_mb;
        match self.shared.host_memory_mb {
            Some(host) if asked > host => Err(AgentError::InsufficientCapacity(format!(
                "insufficient memory: guest.memory_mb {asked} is more than this host has ({host} MB)"
            ))),
            _ => Ok(()),
        }
    }
}

/// `MemTotal` of `/proc/meminfo`, in MiB.
fn host_memory_mb() -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()
        .map(|kb| kb / 1024)
}

/// A refusal of the state machine, as the API reports it: 409 when the
/// machine is busy with another operation, 412 otherwise.
pub(crate) fn denied(d: machine::Denied) -> AgentError {
    match d {
        machine::Denied::Busy(_) => AgentError::Conflict(d.to_string()),
        _ => AgentError::Precondition(d.to_string()),
    }
}

fn timeout_error(states: &[WaitFor], current: MachineState) -> AgentError {
    let want: Vec<&str> = states.iter().map(|w| w.name()).collect();
    AgentError::Timeout(format!(
        "deadline_exceeded: machine failed to reach desired state, {}, currently {}",
        want.join(","),
        current
    ))
}

fn random_app_id() -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghjkmnpqrstvwxyz";
    (0..16)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}
