//! Health checks of started machines: each check of a machine's config
//! ([`hangar_core::checks`]) runs every `interval` once its `grace_period`
//! after the start is over, against the machine's private address. Results
//! live in memory (they are re-established within one interval after a
//! restart of hangard) and show in the machine's `checks`.
//!
//! ```text
//!   started ──grace──▶ warning ──probe ok──▶ passing ◀──┐
//!                         │                    │ fail    │ ok
//!                         └──probe fails──▶ critical ────┘
//!   stopped / replaced: the machine's checks are dropped
//! ```

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hangar_core::MachineState;
use hangar_core::checks::{CheckDef, Probe};

use crate::{Agent, Shared};

/// How often the runner looks for due checks.
const TICK: Duration = Duration::from_millis(200);

/// A check's standing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// It passed last time.
    Passing,
    /// Not checked yet.
    Warning,
    /// It failed last time.
    Critical,
}

impl Health {
    /// Fly's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Passing => "passing",
            Health::Warning => "warning",
            Health::Critical => "critical",
        }
    }
}

/// One check's latest result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// The check's name.
    pub name: String,
    /// Its standing.
    pub status: Health,
    /// What the last run said.
    pub output: String,
    /// RFC 3339.
    pub updated_at: String,
    /// Failing it takes the machine out of the proxy's rotation.
    pub gates_traffic: bool,
}

struct MachineChecks {
    /// The machine version the checks belong to.
    instance: String,
    /// Where the checks go (none: the machine has no address).
    ip: Option<IpAddr>,
    defs: Vec<CheckDef>,
    results: Vec<CheckResult>,
    next_due: Vec<Instant>,
    running: Vec<bool>,
}

/// The results of every started machine's checks.
#[derive(Default)]
pub(crate) struct Checks {
    machines: Mutex<HashMap<String, MachineChecks>>,
    /// Bumped whenever a machine's standing changes.
    generation: std::sync::atomic::AtomicU64,
}

impl Checks {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, MachineChecks>> {
        self.machines.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A machine's standing changed.
    fn bump(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl Agent {
    /// The latest results of machine `id`'s checks (empty when it has none
    /// or is not started).
    pub fn checks(&self, id: &str) -> Vec<CheckResult> {
        self.shared
            .checks
            .map()
            .get(id)
            .map(|m| m.results.clone())
            .unwrap_or_default()
    }

    /// The latest results of the checks of version `instance` of machine
    /// `id`: none until that version's checks are set up (so a version
    /// never passes on the results of the one it replaced).
    pub fn version_checks(&self, id: &str, instance: &str) -> Vec<CheckResult> {
        self.shared
            .checks
            .map()
            .get(id)
            .filter(|m| m.instance == instance)
            .map(|m| m.results.clone())
            .unwrap_or_default()
    }

    /// A number that changes whenever a check's status changes (for
    /// callers that cache [`Agent::failing_traffic_checks`]).
    pub fn checks_generation(&self) -> u64 {
        self.shared
            .checks
            .generation
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether machine `id` fails a check that keeps traffic away.
    pub fn failing_traffic_checks(&self, id: &str) -> bool {
        self.checks(id)
            .iter()
            .any(|c| c.gates_traffic && c.status == Health::Critical)
    }

    /// Runs the checks of started machines for as long as the agent exists.
    pub(crate) fn spawn_checks(&self) {
        let weak = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(TICK).await;
                let Some(shared) = weak.upgrade() else {
                    return;
                };
                tick(&shared);
            }
        });
    }
}

/// Follows a machine's record after each of its transitions (and when its
/// task begins): a started machine with checks is checked, afresh for a new
/// version; any other is not, and holds no entry (its checks read empty).
/// Its task calls this, so a pass never reads the machines from the store.
pub(crate) fn follow(shared: &Shared, rec: &crate::store::MachineRecord) {
    let id = rec.id.as_str();
    let checked = rec.core.state == MachineState::Started && !rec.spec.checks.is_empty();
    if !checked {
        let removed = shared.checks.map().remove(id).is_some();
        if removed {
            shared.checks.bump();
        }
        return;
    }
    let current = shared
        .checks
        .map()
        .get(id)
        .is_some_and(|c| c.instance == rec.instance_id);
    if current {
        return;
    }
    let ip = match shared.store.address_of(id, &shared.net) {
        Ok(a) => a.map(|a| IpAddr::V4(a.ipv4())),
        Err(e) => {
            tracing::warn!(machine = %id, error = %e, "cannot read the machine's address for its checks");
            None
        }
    };
    let now = Instant::now();
    let stamp = crate::store::now_rfc3339();
    let defs = rec.spec.checks.clone();
    let entry = MachineChecks {
        instance: rec.instance_id.clone(),
        ip,
        results: defs
            .iter()
            .map(|d| CheckResult {
                name: d.name.clone(),
                status: Health::Warning,
                output: "waiting for the first check".into(),
                updated_at: stamp.clone(),
                gates_traffic: d.gates_traffic,
            })
            .collect(),
        next_due: defs.iter().map(|d| now + d.grace_period).collect(),
        running: vec![false; defs.len()],
        defs,
    };
    shared.checks.map().insert(id.to_owned(), entry);
}

/// One pass: starts the checks that are due.
fn tick(shared: &Arc<Shared>) {
    let now = Instant::now();
    let mut due = Vec::new();
    {
        let mut map = shared.checks.map();
        for (id, mc) in map.iter_mut() {
            let Some(ip) = mc.ip else { continue };
            for i in 0..mc.defs.len() {
                if !mc.running[i] && now >= mc.next_due[i] {
                    mc.running[i] = true;
                    due.push((id.clone(), mc.instance.clone(), i, mc.defs[i].clone(), ip));
                }
            }
        }
    }
    for (id, instance, i, def, ip) in due {
        let shared = Arc::clone(shared);
        tokio::spawn(async move {
            let (ok, output) = probe(&def, ip).await;
            let mut map = shared.checks.map();
            let Some(mc) = map.get_mut(&id).filter(|m| m.instance == instance) else {
                return;
            };
            mc.running[i] = false;
            mc.next_due[i] = Instant::now() + def.interval;
            let status = if ok {
                Health::Passing
            } else {
                Health::Critical
            };
            hangar_metrics::get()
                .checks
                .get_or_create(&hangar_metrics::CheckLabels {
                    status: status.as_str(),
                })
                .inc();
            if mc.results[i].status != status {
                shared.checks.bump();
                tracing::info!(machine = %id, check = %def.name, status = status.as_str(), %output, "health check changed");
            }
            mc.results[i] = CheckResult {
                name: def.name.clone(),
                status,
                output,
                updated_at: crate::store::now_rfc3339(),
                gates_traffic: def.gates_traffic,
            };
        });
    }
}

/// The client for HTTP checks (one that verifies certificates, one that
/// does not), made once: building one loads the root certificates.
fn http_client(skip_verify: bool) -> Result<reqwest::Client, String> {
    static CLIENTS: std::sync::OnceLock<Result<[reqwest::Client; 2], String>> =
        std::sync::OnceLock::new();
    let clients = CLIENTS.get_or_init(|| {
        let build = |skip| {
            reqwest::Client::builder()
                // Every check opens a connection of its own, as a client would.
                .pool_max_idle_per_host(0)
                .redirect(reqwest::redirect::Policy::none())
                .tls_danger_accept_invalid_certs(skip)
                .build()
                .map_err(|e| e.to_string())
        };
        Ok([build(false)?, build(true)?])
    });
    clients
        .as_ref()
        .map(|c| c[usize::from(skip_verify)].clone())
        .map_err(Clone::clone)
}

/// Runs one check: whether it passed, and what to report.
async fn probe(def: &CheckDef, ip: IpAddr) -> (bool, String) {
    let target = SocketAddr::new(ip, def.port);
    match &def.probe {
        Probe::Tcp => {
            match tokio::time::timeout(def.timeout, tokio::net::TcpStream::connect(target)).await {
                Ok(Ok(_)) => (true, format!("TCP connect {target}: success")),
                Ok(Err(e)) => (false, format!("TCP connect {target}: {e}")),
                Err(_) => (
                    false,
                    format!("TCP connect {target}: timed out after {:?}", def.timeout),
                ),
            }
        }
        Probe::Http {
            method,
            path,
            https,
            tls_skip_verify,
            headers,
        } => {
            let scheme = if *https { "https" } else { "http" };
            let url = format!("{scheme}://{target}{path}");
            let client = match http_client(*tls_skip_verify) {
                Ok(c) => c,
                Err(e) => return (false, format!("{method} {url}: {e}")),
            };
            let Ok(m) = reqwest::Method::from_bytes(method.as_bytes()) else {
                return (false, format!("invalid method {method}"));
            };
            let mut req = client.request(m, &url).timeout(def.timeout);
            for (k, v) in headers {
                req = req.header(k.as_str(), v.as_str());
            }
            match req.send().await {
                Ok(r) => {
                    let s = r.status();
                    let ok = s.is_success() || s.is_redirection();
                    (ok, format!("{method} {url}: {s}"))
                }
                Err(e) if e.is_timeout() => (
                    false,
                    format!("{method} {url}: timed out after {:?}", def.timeout),
                ),
                Err(e) => (false, format!("{method} {url}: {e}")),
            }
        }
    }
}
