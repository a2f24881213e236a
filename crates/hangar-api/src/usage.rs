//! Recent usage for the dashboard's plots: every few seconds, each running
//! machine's CPU time and memory (from its cgroup) and each app's proxied
//! requests and their total time (from the proxy's metrics), kept for the
//! last ten minutes in memory. `GET /v1/hangar/apps/{app}/usage` turns them
//! into rates: cores used, MiB, requests per second and mean latency.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Path, State};
use hangar_agent::Agent;
use serde::{Deserialize, Serialize};

use crate::Shared;
use crate::error::ApiResult;

/// How many samples are kept (ten minutes at the default interval).
const KEPT: usize = 120;

/// One sample of a machine.
#[derive(Debug, Clone, Copy)]
struct MachineSample {
    at: f64,
    cpu_seconds: f64,
    memory_bytes: u64,
    rx: u64,
    tx: u64,
}

/// One sample of an app's requests (counted since hangard started).
#[derive(Debug, Clone, Copy)]
struct AppSample {
    at: f64,
    requests: u64,
    seconds: f64,
}

#[derive(Default)]
struct History {
    interval: f64,
    machines: HashMap<String, (String, VecDeque<MachineSample>)>,
    apps: HashMap<String, VecDeque<AppSample>>,
}

fn history() -> &'static Mutex<History> {
    static H: OnceLock<Mutex<History>> = OnceLock::new();
    H.get_or_init(Mutex::default)
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

fn push<T>(q: &mut VecDeque<T>, v: T) {
    if q.len() == KEPT {
        q.pop_front();
    }
    q.push_back(v);
}

/// Samples every `interval`, for as long as the process runs.
pub fn start_sampling(agent: Agent, interval: Duration) {
    history().lock().unwrap_or_else(|p| p.into_inner()).interval = interval.as_secs_f64();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let agent = agent.clone();
            let _ = tokio::task::spawn_blocking(move || sample(&agent)).await;
        }
    });
}

fn sample(agent: &Agent) {
    let at = now();
    let machines: Vec<_> = agent
        .machine_briefs()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| {
            let usage = agent.machine_usage(&m.id)?;
            Some((m.app, m.id.to_string(), usage))
        })
        .collect();
    let requests = hangar_metrics::proxy_totals();
    let mut h = history().lock().unwrap_or_else(|p| p.into_inner());
    let live: std::collections::HashSet<&String> = machines.iter().map(|(_, id, _)| id).collect();
    h.machines.retain(|id, _| live.contains(id));
    for (app, id, u) in machines {
        let e = h
            .machines
            .entry(id)
            .or_insert_with(|| (app, VecDeque::new()));
        push(
            &mut e.1,
            MachineSample {
                at,
                cpu_seconds: u.cpu_seconds,
                memory_bytes: u.memory_bytes,
                rx: u.net_rx_bytes,
                tx: u.net_tx_bytes,
            },
        );
    }
    for (app, (requests, seconds)) in requests {
        push(
            h.apps.entry(app).or_default(),
            AppSample {
                at,
                requests,
                seconds,
            },
        );
    }
}

/// A series of points: times (Unix seconds) and values.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Series {
    /// When (Unix seconds).
    pub t: Vec<f64>,
    /// The value at each time.
    pub v: Vec<f64>,
}

/// A machine's recent usage.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MachineUsage {
    /// CPU cores used, averaged over each interval.
    pub cpu_cores: Series,
    /// Memory in use, MiB.
    pub memory_mb: Series,
    /// Bytes per second it received.
    pub net_rx_bytes_per_sec: Series,
    /// Bytes per second it sent.
    pub net_tx_bytes_per_sec: Series,
}

/// An app's recent usage (this host's machines and proxy).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AppUsage {
    /// Seconds between samples.
    pub interval_secs: f64,
    /// Each running machine's, by id.
    pub machines: BTreeMap<String, MachineUsage>,
    /// Requests per second the proxy answered for the app.
    pub requests_per_sec: Series,
    /// Their mean latency (to the answer's head), ms, over each interval.
    pub latency_ms: Series,
    /// The last hour's starts of the app's machines, from starting to
    /// started, ms: a point per start (every host's, in a cluster).
    #[serde(default)]
    pub start_ms: Series,
    /// In a cluster: each host's proxy's requests per second and latency
    /// for the app, by host id (this host's too).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hosts: BTreeMap<String, HostRequests>,
}

/// One host's proxy's requests for an app.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostRequests {
    /// Requests per second.
    pub requests_per_sec: Series,
    /// Their mean latency, ms.
    pub latency_ms: Series,
}

/// Turns counters into rates between consecutive samples.
fn rates<T: Copy>(
    samples: &VecDeque<T>,
    at: impl Fn(T) -> f64,
    f: impl Fn(T, T, f64) -> Option<f64>,
) -> Series {
    let mut s = Series::default();
    for (a, b) in samples.iter().zip(samples.iter().skip(1)) {
        let dt = at(*b) - at(*a);
        if dt <= 0.0 {
            continue;
        }
        if let Some(v) = f(*a, *b, dt) {
            s.t.push(at(*b));
            s.v.push(v);
        }
    }
    s
}

fn app_usage(app: &str) -> AppUsage {
    let h = history().lock().unwrap_or_else(|p| p.into_inner());
    let mut out = AppUsage {
        interval_secs: h.interval,
        ..AppUsage::default()
    };
    for (id, (owner, samples)) in &h.machines {
        if owner != app {
            continue;
        }
        let cpu = rates(
            samples,
            |s| s.at,
            |a, b, dt| Some(((b.cpu_seconds - a.cpu_seconds) / dt).max(0.0)),
        );
        let memory_mb = Series {
            t: samples.iter().map(|s| s.at).collect(),
            v: samples
                .iter()
                .map(|s| s.memory_bytes as f64 / (1 << 20) as f64)
                .collect(),
        };
        let net_rx = rates(
            samples,
            |s| s.at,
            |a, b, dt| Some(b.rx.saturating_sub(a.rx) as f64 / dt),
        );
        let net_tx = rates(
            samples,
            |s| s.at,
            |a, b, dt| Some(b.tx.saturating_sub(a.tx) as f64 / dt),
        );
        out.machines.insert(
            id.clone(),
            MachineUsage {
                cpu_cores: cpu,
                memory_mb,
                net_rx_bytes_per_sec: net_rx,
                net_tx_bytes_per_sec: net_tx,
            },
        );
    }
    if let Some(samples) = h.apps.get(app) {
        out.requests_per_sec = rates(
            samples,
            |s| s.at,
            |a, b, dt| Some(b.requests.saturating_sub(a.requests) as f64 / dt),
        );
        out.latency_ms = rates(
            samples,
            |s| s.at,
            |a, b, _| {
                let n = b.requests.saturating_sub(a.requests);
                (n > 0).then(|| (b.seconds - a.seconds).max(0.0) / n as f64 * 1000.0)
            },
        );
    }
    out
}

/// `GET /v1/hangar/apps/{app}/usage`.
#[utoipa::path(get, path = "/v1/hangar/apps/{app_name}/usage", operation_id = "Apps_usage", tag = "Hangar extensions", params(("app_name" = String, Path, description = "App name")), responses((status = 200, description = "The last ten minutes: each running machine's CPU, memory and network (every host's, in a cluster), the app's request rate and latency through this host's proxy (and each host's, in a cluster), and the last hour's start latencies", body = AppUsage), (status = 401, description = "No or bad token", body = hangar_api_types::ErrorResponse), (status = 404, description = "Not found", body = hangar_api_types::ErrorResponse)))]
pub async fn usage(State(s): State<Shared>, Path(app): Path<String>) -> ApiResult<Json<AppUsage>> {
    s.agent.get_app(&app)?;
    let mut u = app_usage(&app);
    let since = hangar_metrics::unix_now() - crate::proxy_view::ACTIVITY_SECS;
    for a in crate::proxy_view::activity(&s, &app, since, 500) {
        if let ("start", Some(secs)) = (a.action.as_str(), a.seconds) {
            u.start_ms.t.push(a.at);
            u.start_ms.v.push(secs * 1000.0);
        }
    }
    if let Some(host) = crate::proxy_view::host_of(&s) {
        u.hosts.insert(
            host,
            HostRequests {
                requests_per_sec: u.requests_per_sec.clone(),
                latency_ms: u.latency_ms.clone(),
            },
        );
    }
    Ok(Json(u))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_become_rates_between_samples() {
        let q: VecDeque<MachineSample> = [(0.0, 1.0, 10), (5.0, 2.0, 20), (10.0, 4.5, 30)]
            .into_iter()
            .map(|(at, cpu_seconds, memory_bytes)| MachineSample {
                at,
                cpu_seconds,
                memory_bytes,
                rx: 0,
                tx: 0,
            })
            .collect();
        let s = rates(
            &q,
            |s| s.at,
            |a, b, dt| Some((b.cpu_seconds - a.cpu_seconds) / dt),
        );
        assert_eq!(s.t, vec![5.0, 10.0]);
        assert_eq!(s.v, vec![0.2, 0.5]);
        let mut h = VecDeque::new();
        for i in 0..KEPT + 5 {
            push(&mut h, i);
        }
        assert_eq!(h.len(), KEPT);
        assert_eq!(h.front(), Some(&5));
    }
}
