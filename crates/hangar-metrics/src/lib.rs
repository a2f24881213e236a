//! Hangar's Prometheus metrics.
//!
//! The agent, the image store and the proxy record into one process-wide
//! set of counters and histograms ([`get`]), so no constructor has to carry
//! a registry; `hangard` builds the [`registry`] once, adds what it reads
//! at scrape time (machines by state, each machine's cgroup figures) as a
//! [`Collector`], and serves it at `GET /metrics`. Recording costs an atomic
//! add (a label set's first use takes a lock to make its series).
//!
//! Names follow Prometheus' conventions: `hangar_` first, `_total` on
//! counters, `_seconds` on durations.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

pub use prometheus_client::collector::Collector;
pub use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// A machine operation asked for through the API and how it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    /// create, start, stop, restart, suspend, destroy.
    pub op: &'static str,
    /// ok or error.
    pub outcome: &'static str,
}

/// A machine operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpOnly {
    /// create, start, stop, restart, suspend, destroy.
    pub op: &'static str,
}

/// An image pull.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PullLabels {
    /// registry, or local (this host's built-in registry).
    pub source: &'static str,
    /// ok or error.
    pub outcome: &'static str,
}

/// A request the proxy answered.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The app (empty when the request named none).
    pub app: String,
    /// The HTTP status code of the answer.
    pub status: u16,
}

/// An app.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppLabels {
    /// The app.
    pub app: String,
}

/// A machine the proxy stopped or suspended for being idle.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AutostopLabels {
    /// The app.
    pub app: String,
    /// stop or suspend.
    pub action: &'static str,
}

/// A health check's run.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    /// passing or critical.
    pub status: &'static str,
}

/// A database's work.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DbLabels {
    /// sqlite (this host's store) or postgres (the cluster's catalogue).
    pub db: &'static str,
    /// For SQLite: read or write (a use of the connection that changed
    /// rows), and lock_wait (waiting for the connection). For PostgreSQL:
    /// each step of a sync round (heartbeat, outbox, follow, directory,
    /// volumes, view, sweep).
    pub op: &'static str,
}

/// Something that happened to a machine, kept for the dashboard: a start
/// and how long it took, or the proxy starting or stopping it.
#[derive(Clone, Debug, PartialEq)]
pub struct Activity {
    /// When (Unix seconds).
    pub at: f64,
    /// The app.
    pub app: String,
    /// The machine.
    pub machine: String,
    /// `start` (starting to started), `autostart` (the proxy started it
    /// for a request), `autostop` or `autosuspend` (the proxy found it
    /// idle).
    pub action: &'static str,
    /// How long it took, when it is timed.
    pub seconds: Option<f64>,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

/// How many activities are kept, all apps together.
const ACTIVITIES_KEPT: usize = 2000;

fn activities() -> &'static std::sync::Mutex<std::collections::VecDeque<Activity>> {
    static A: OnceLock<std::sync::Mutex<std::collections::VecDeque<Activity>>> = OnceLock::new();
    A.get_or_init(Default::default)
}

/// Unix seconds now.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// Keeps `a` among the recent activities.
pub fn note(a: Activity) {
    let mut q = activities().lock().unwrap_or_else(|p| p.into_inner());
    if q.len() == ACTIVITIES_KEPT {
        q.pop_front();
    }
    q.push_back(a);
}

/// The app's recent activities, oldest first, at most `limit` (the
/// newest), none before `since` (Unix seconds).
pub fn recent(app: &str, since: f64, limit: usize) -> Vec<Activity> {
    let q = activities().lock().unwrap_or_else(|p| p.into_inner());
    let mut out: Vec<Activity> = q
        .iter()
        .rev()
        .filter(|a| a.app == app && a.at >= since)
        .take(limit)
        .cloned()
        .collect();
    out.reverse();
    out
}

type Timings<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric hangard records as things happen.
#[derive(Debug)]
pub struct Metrics {
    /// `hangar_machine_operations_total{op, outcome}`.
    pub machine_ops: Family<OpLabels, Counter>,
    /// `hangar_machine_operation_duration_seconds{op}`: how long the API
    /// call took.
    pub machine_op_seconds: Timings<OpOnly>,
    /// `hangar_machine_start_duration_seconds`: from `starting` to
    /// `started` (the image at hand, the workload started).
    pub machine_start_seconds: Histogram,
    /// `hangar_machine_stop_duration_seconds`: from `stopping` to
    /// `stopped`.
    pub machine_stop_seconds: Histogram,
    /// `hangar_image_pulls_total{source, outcome}`.
    pub image_pulls: Family<PullLabels, Counter>,
    /// `hangar_image_pull_duration_seconds`.
    pub image_pull_seconds: Histogram,
    /// `hangar_proxy_requests_total{app, status}`.
    pub proxy_requests: Family<RequestLabels, Counter>,
    /// `hangar_proxy_request_duration_seconds{app}`: until the answer's
    /// head (the body streams on).
    pub proxy_request_seconds: Timings<AppLabels>,
    /// `hangar_proxy_autostarts_total{app}`.
    pub autostarts: Family<AppLabels, Counter>,
    /// `hangar_proxy_autostops_total{app, action}`.
    pub autostops: Family<AutostopLabels, Counter>,
    /// `hangar_health_checks_total{status}`.
    pub checks: Family<CheckLabels, Counter>,
    /// `hangar_database_duration_seconds{db, op}`.
    pub database_seconds: Timings<DbLabels>,
    /// Per app: requests answered and their total seconds (for the
    /// dashboard's plots, which sample them).
    proxy_totals: std::sync::Mutex<std::collections::HashMap<String, Arc<Totals>>>,
}

/// An app's requests answered and their total time, in nanoseconds.
#[derive(Debug, Default)]
struct Totals {
    requests: AtomicU64,
    nanos: AtomicU64,
}

/// One app's series, as a proxy thread records into them.
struct AppCells {
    by_status: HashMap<u16, Counter>,
    latency: Histogram,
    totals: Arc<Totals>,
}

thread_local! {
    /// Each thread's handles on the series it has recorded into, so that
    /// a request costs a lookup in a map of its own and a few atomic adds,
    /// not the families' locks and a label set made and hashed.
    static CELLS: RefCell<HashMap<String, AppCells>> = RefCell::new(HashMap::new());
}

fn op_seconds() -> Histogram {
    // 1 ms to ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

fn database_seconds() -> Histogram {
    // 10 µs to ~1.3 s.
    Histogram::new(exponential_buckets(0.000_01, 2.0, 18))
}

fn request_seconds() -> Histogram {
    // 0.25 ms to ~8 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

impl Metrics {
    fn new() -> Metrics {
        Metrics {
            machine_ops: Family::default(),
            machine_op_seconds: Family::new_with_constructor(op_seconds),
            machine_start_seconds: op_seconds(),
            machine_stop_seconds: op_seconds(),
            image_pulls: Family::default(),
            image_pull_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            proxy_requests: Family::default(),
            proxy_request_seconds: Family::new_with_constructor(request_seconds),
            autostarts: Family::default(),
            autostops: Family::default(),
            checks: Family::default(),
            database_seconds: Family::new_with_constructor(database_seconds),
            proxy_totals: Default::default(),
        }
    }

    /// Records a machine operation that began at `since`.
    pub fn machine_op<T, E>(&self, op: &'static str, since: Instant, result: &Result<T, E>) {
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.machine_ops
            .get_or_create(&OpLabels { op, outcome })
            .inc();
        self.machine_op_seconds
            .get_or_create(&OpOnly { op })
            .observe(since.elapsed().as_secs_f64());
    }

    /// The histogram of `db`'s `op` (a handle to keep: observing it then
    /// costs no lookup).
    pub fn database(&self, db: &'static str, op: &'static str) -> Histogram {
        self.database_seconds
            .get_or_create(&DbLabels { db, op })
            .clone()
    }

    /// Records an answer of the proxy for `app` that took since `since`.
    pub fn proxy_request(&self, app: &str, status: u16, since: Instant) {
        let took = since.elapsed();
        CELLS.with(|cells| {
            let mut cells = cells.borrow_mut();
            if !cells.contains_key(app) {
                let totals = Arc::clone(
                    self.proxy_totals
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(app.to_owned())
                        .or_default(),
                );
                let latency = self
                    .proxy_request_seconds
                    .get_or_create(&AppLabels {
                        app: app.to_owned(),
                    })
                    .clone();
                cells.insert(
                    app.to_owned(),
                    AppCells {
                        by_status: HashMap::new(),
                        latency,
                        totals,
                    },
                );
            }
            let Some(c) = cells.get_mut(app) else {
                return;
            };
            c.by_status
                .entry(status)
                .or_insert_with(|| {
                    self.proxy_requests
                        .get_or_create(&RequestLabels {
                            app: app.to_owned(),
                            status,
                        })
                        .clone()
                })
                .inc();
            c.latency.observe(took.as_secs_f64());
            c.totals.requests.fetch_add(1, Ordering::Relaxed);
            c.totals.nanos.fetch_add(
                u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
        });
    }
}

/// Per app: the requests the proxy answered since the start, and their
/// total seconds.
pub fn proxy_totals() -> Vec<(String, (u64, f64))> {
    get()
        .proxy_totals
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(a, t)| {
            (
                a.clone(),
                (
                    t.requests.load(Ordering::Relaxed),
                    t.nanos.load(Ordering::Relaxed) as f64 / 1e9,
                ),
            )
        })
        .collect()
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// A registry of every metric in [`get`], `hangar_build_info` (the
/// version) and the `collectors` given (what is read at scrape time).
pub fn registry(collectors: Vec<Box<dyn Collector>>) -> Registry {
    let m = get();
    let mut r = Registry::with_prefix("hangar");
    r.register(
        "build",
        "Hangar's version",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
    );
    r.register(
        "machine_operations",
        "Machine operations asked for through the API, by outcome",
        m.machine_ops.clone(),
    );
    r.register(
        "machine_operation_duration_seconds",
        "How long a machine operation's API call took",
        m.machine_op_seconds.clone(),
    );
    r.register(
        "machine_start_duration_seconds",
        "From starting to started",
        m.machine_start_seconds.clone(),
    );
    r.register(
        "machine_stop_duration_seconds",
        "From stopping to stopped",
        m.machine_stop_seconds.clone(),
    );
    r.register(
        "image_pulls",
        "Images pulled, from a registry or this host's own",
        m.image_pulls.clone(),
    );
    r.register(
        "image_pull_duration_seconds",
        "How long an image pull took",
        m.image_pull_seconds.clone(),
    );
    r.register(
        "proxy_requests",
        "HTTP requests the proxy answered, by app and status",
        m.proxy_requests.clone(),
    );
    r.register(
        "proxy_request_duration_seconds",
        "From a request to its answer's head, by app",
        m.proxy_request_seconds.clone(),
    );
    r.register(
        "proxy_autostarts",
        "Machines the proxy started for a request",
        m.autostarts.clone(),
    );
    r.register(
        "proxy_autostops",
        "Idle machines the proxy stopped or suspended",
        m.autostops.clone(),
    );
    r.register(
        "health_checks",
        "Health check runs, by result",
        m.checks.clone(),
    );
    r.register(
        "database_duration_seconds",
        "Time spent in this host's SQLite store (reads, writes, waiting for the connection) and in the cluster's PostgreSQL (each step of a sync round)",
        m.database_seconds.clone(),
    );
    for c in collectors {
        r.register_collector(c);
    }
    r
}

/// The registry in Prometheus' text format (OpenMetrics 1.0, which
/// Prometheus reads).
pub fn encode(r: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, r)?;
    Ok(out)
}

/// What to write in a scrape-time [`Collector`]: families of values read
/// at that moment.
pub mod consts {
    use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
    use prometheus_client::metrics::MetricType;
    use prometheus_client::metrics::counter::ConstCounter;
    use prometheus_client::metrics::gauge::ConstGauge;

    /// Writes the gauge family `name` (with its `help`), one series per
    /// `(labels, value)`.
    pub fn gauges<L: EncodeLabelSet>(
        encoder: &mut DescriptorEncoder<'_>,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = (L, f64)>,
    ) -> Result<(), std::fmt::Error> {
        family(
            encoder,
            name,
            help,
            MetricType::Gauge,
            series.into_iter().map(|(l, v)| (l, ConstGauge::new(v))),
        )
    }

    /// Writes the counter family `name` (`_total` is added), one series
    /// per `(labels, value)`.
    pub fn counters<L: EncodeLabelSet>(
        encoder: &mut DescriptorEncoder<'_>,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = (L, f64)>,
    ) -> Result<(), std::fmt::Error> {
        family(
            encoder,
            name,
            help,
            MetricType::Counter,
            series.into_iter().map(|(l, v)| (l, ConstCounter::new(v))),
        )
    }

    fn family<L: EncodeLabelSet, M: EncodeMetric>(
        encoder: &mut DescriptorEncoder<'_>,
        name: &str,
        help: &str,
        kind: MetricType,
        series: impl Iterator<Item = (L, M)>,
    ) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(name, help, None, kind)?;
        for (labels, metric) in series {
            metric.encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Fixed;

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct StateLabels {
        app: String,
        state: String,
    }

    impl Collector for Fixed {
        fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
            consts::gauges(
                &mut encoder,
                "machines",
                "Machines by app and state",
                [(
                    StateLabels {
                        app: "web".into(),
                        state: "started".into(),
                    },
                    2.0,
                )],
            )
        }
    }

    #[test]
    fn what_is_recorded_is_what_a_scrape_reads() {
        let m = get();
        let since = Instant::now();
        m.machine_op("start", since, &Ok::<(), ()>(()));
        m.machine_op("start", since, &Err::<(), ()>(()));
        m.proxy_request("web", 200, since);
        m.proxy_request("web", 502, since);
        m.proxy_request("web", 200, since);
        m.database("sqlite", "read").observe(0.000_2);
        let text = encode(&registry(vec![Box::new(Fixed)])).unwrap();
        for line in [
            "hangar_build_info{version=\"",
            "hangar_machine_operations_total{op=\"start\",outcome=\"ok\"} 1",
            "hangar_machine_operations_total{op=\"start\",outcome=\"error\"} 1",
            "hangar_machine_operation_duration_seconds_count{op=\"start\"} 2",
            "hangar_proxy_requests_total{app=\"web\",status=\"200\"} 2",
            "hangar_proxy_requests_total{app=\"web\",status=\"502\"} 1",
            "hangar_proxy_request_duration_seconds_count{app=\"web\"} 3",
            "hangar_machines{app=\"web\",state=\"started\"} 2",
            "hangar_database_duration_seconds_count{db=\"sqlite\",op=\"read\"} 1",
            "# EOF",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn recent_activities_are_the_apps_newest_first_kept_last() {
        let at = unix_now();
        for (i, app) in ["a", "b", "a", "a"].into_iter().enumerate() {
            note(Activity {
                at: at + i as f64,
                app: app.into(),
                machine: format!("m{i}"),
                action: "start",
                seconds: Some(0.01),
                error: None,
            });
        }
        let got: Vec<String> = recent("a", at, 2).into_iter().map(|a| a.machine).collect();
        assert_eq!(got, ["m2", "m3"]);
        assert_eq!(recent("a", at + 2.5, 10).len(), 1);
        assert!(recent("nobody", 0.0, 10).is_empty());
    }
}
