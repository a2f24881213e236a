//! The cluster's shared database at scale, by simulation: a real PostgreSQL
//! (durable: `fsync=on`), N simulated hosts each on its own connection
//! running the statements a `hangard` runs (`hangar_cluster::sql`) on the
//! same schedule: a heartbeat and a sweep every second, and every half
//! second (or when a `NOTIFY` rings) the change log followed, its changed
//! machines published, the hosts and the directory's rows changed since
//! its last read read (the whole directory at its start). M machines spread
//! over the hosts change state at a set rate; catalogue changes (tokens,
//! apps) are appended at another.
//!
//! Measured per configuration: a host's round time (p50, p99), the lag
//! from a change's commit to a host seeing it (p50, p99), the database's
//! CPU (its processes' user+system time over the run, in cores), and the
//! directory rows read per second.
//!
//! Usage: hangar-bench-cluster-sim [SECONDS] (default 20 per configuration).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures::StreamExt;
use hangar_cluster::sql;
use hangar_test_utils::postgres::Postgres;
use tokio::sync::{Mutex, Notify};
use tokio_postgres::{AsyncMessage, Client, NoTls};

struct Config {
    hosts: usize,
    machines: usize,
    /// Machine state changes per second, cluster-wide.
    churn: f64,
    /// Catalogue changes per second.
    changes: f64,
}

#[derive(Default)]
struct Stats {
    rounds: Mutex<Vec<f64>>,
    lags: Mutex<Vec<f64>>,
    rows_read: AtomicU64,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn connect(url: &str, bell: Option<Arc<Notify>>) -> anyhow::Result<Client> {
    let (client, mut conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(_)) => {
                    if let Some(b) = &bell {
                        b.notify_one();
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    Ok(client)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// User + system CPU seconds of `pids`.
fn cpu_secs(pids: &[i32]) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|s| {
            let rest = s.rsplit_once(") ")?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
        })
        .sum::<f64>()
        / tick
}

/// One simulated host: its rounds until `until`.
/// Publishes one simulated machine to the directory, as a host does
/// (every column of `sql::UPSERT_MACHINE`).
async fn publish(
    tx: &tokio_postgres::Transaction<'_>,
    machine: &str,
    host: &str,
    state: &str,
) -> Result<u64, tokio_postgres::Error> {
    tx.execute(
        sql::UPSERT_MACHINE,
        &[
            &machine, &"app", &host, &"sim", &state, &1i32, &256i64, &"", &"", &"", &"", &"",
        ],
    )
    .await
}

async fn host(
    url: String,
    id: String,
    machines: Vec<String>,
    changed: Arc<Mutex<Vec<usize>>>,
    stats: Arc<Stats>,
    until: Instant,
) -> anyhow::Result<()> {
    let bell = Arc::new(Notify::new());
    let mut db = connect(&url, Some(bell.clone())).await?;
    db.batch_execute("LISTEN hangar_changes").await?;
    db.execute(
        sql::REGISTER,
        &[
            &id,
            &"sim",
            &"http://sim",
            &2i32,
            &65536i64,
            &"x",
            &"",
            &"",
            &"",
            &"",
        ],
    )
    .await?;
    let mut states: Vec<&str> = vec!["started"; machines.len()];
    // The first publish: every machine.
    let tx = db.transaction().await?;
    tx.execute(sql::LOCK_DIRECTORY, &[]).await?;
    for m in &machines {
        publish(&tx, m, &id, "started").await?;
    }
    tx.commit().await?;
    let mut dir_rev: i64 = 0;
    let mut cursor: i64 = db
        .query_one("SELECT COALESCE(MAX(rev), 0) FROM changes", &[])
        .await?
        .get(0);
    let mut last_beat = Instant::now();
    let mut hosts_read: Option<Instant> = None;
    while Instant::now() < until {
        let started = Instant::now();
        if last_beat.elapsed() >= Duration::from_secs(1) {
            db.execute(sql::HEARTBEAT, &[&id]).await?;
            db.query(sql::SWEEP, &[&3600.0f64]).await?;
            last_beat = Instant::now();
        }
        let rows = db.query(sql::FOLLOW, &[&cursor]).await?;
        for r in &rows {
            cursor = r.get(0);
            let body: String = r.get(2);
            if let Some(sent) = body
                .strip_prefix("sent:")
                .and_then(|t| t.parse::<i64>().ok())
            {
                stats.lags.lock().await.push((now_ms() - sent) as f64);
            }
        }
        let dirty: Vec<usize> = std::mem::take(&mut *changed.lock().await);
        if !dirty.is_empty() {
            let tx = db.transaction().await?;
            tx.execute(sql::LOCK_DIRECTORY, &[]).await?;
            for i in dirty {
                states[i] = if states[i] == "started" {
                    "stopped"
                } else {
                    "started"
                };
                publish(&tx, &machines[i], &id, states[i]).await?;
            }
            tx.batch_execute("NOTIFY hangar_changes").await?;
            tx.commit().await?;
        }
        // Hosts once a second, the directory's changes every round (as
        // hangar-cluster does).
        let h = if hosts_read.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
            hosts_read = Some(Instant::now());
            db.query(sql::READ_HOSTS, &[]).await?
        } else {
            Vec::new()
        };
        let m = db.query(sql::READ_MACHINES, &[&dir_rev]).await?;
        for r in &m {
            dir_rev = dir_rev.max(r.get::<_, i64>(8));
        }
        stats
            .rows_read
            .fetch_add((h.len() + m.len()) as u64, Ordering::Relaxed);
        stats
            .rounds
            .lock()
            .await
            .push(started.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(100).saturating_sub(started.elapsed())).await;
        tokio::select! {
            _ = bell.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
    Ok(())
}

async fn run(cfg: &Config, secs: u64) -> anyhow::Result<String> {
    let pg = Postgres::start_with(&[
        ("fsync", "on"),
        ("synchronous_commit", "on"),
        ("full_page_writes", "on"),
        ("max_connections", "250"),
    ]);
    pg.create_db("sim");
    let url = pg.url("sim");
    let setup = connect(&url, None).await?;
    setup.batch_execute(sql::SCHEMA).await?;
    let stats = Arc::new(Stats::default());
    let until = Instant::now() + Duration::from_secs(secs);
    let per_host = cfg.machines / cfg.hosts;
    let mut dirty = Vec::new();
    let mut tasks = Vec::new();
    for h in 0..cfg.hosts {
        let changed = Arc::new(Mutex::new(Vec::new()));
        dirty.push(changed.clone());
        let machines = (0..per_host).map(|i| format!("m{h:03}x{i:05}")).collect();
        tasks.push(tokio::spawn(host(
            url.clone(),
            format!("host-{h:03}"),
            machines,
            changed,
            stats.clone(),
            until,
        )));
    }
    // Let every host publish before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pids = pg.pids();
    let cpu0 = cpu_secs(&pids);
    let t0 = Instant::now();
    stats.rounds.lock().await.clear();
    stats.rows_read.store(0, Ordering::Relaxed);
    // Churn and catalogue changes.
    let mut writer = connect(&url, None).await?;
    let mut next_churn = Instant::now();
    let mut next_change = Instant::now();
    let mut n: u64 = 0;
    while Instant::now() < until {
        let now = Instant::now();
        if now >= next_churn {
            n = n
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let h = (n >> 33) as usize % cfg.hosts;
            let m = (n >> 13) as usize % per_host.max(1);
            dirty[h].lock().await.push(m);
            next_churn += Duration::from_secs_f64(1.0 / cfg.churn);
        }
        if now >= next_change {
            let tx = writer.transaction().await?;
            tx.batch_execute("LOCK TABLE changes IN EXCLUSIVE MODE")
                .await?;
            tx.execute(sql::APPEND_CHANGE, &[&"sim", &format!("sent:{}", now_ms())])
                .await?;
            tx.batch_execute("NOTIFY hangar_changes").await?;
            tx.commit().await?;
            next_change += Duration::from_secs_f64(1.0 / cfg.changes);
        }
        let wake = next_churn.min(next_change);
        tokio::time::sleep(wake.saturating_duration_since(Instant::now())).await;
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = (cpu_secs(&pids) - cpu0) / wall;
    for t in tasks {
        t.await?.context("a simulated host failed")?;
    }
    let mut rounds = stats.rounds.lock().await.clone();
    let mut lags = stats.lags.lock().await.clone();
    let rows = stats.rows_read.load(Ordering::Relaxed) as f64 / wall;
    Ok(format!(
        "| {} | {} | {:.0}/s | {:.0}/s | {:.1} ms | {:.1} ms | {:.0} ms | {:.0} ms | {:.2} | {:.0}k |",
        cfg.hosts,
        cfg.machines,
        cfg.churn,
        cfg.changes,
        percentile(&mut rounds, 0.5),
        percentile(&mut rounds, 0.99),
        percentile(&mut lags, 0.5),
        percentile(&mut lags, 0.99),
        cpu,
        rows / 1000.0,
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let secs: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    let configs = [
        Config {
            hosts: 10,
            machines: 1_000,
            churn: 2.0,
            changes: 1.0,
        },
        Config {
            hosts: 100,
            machines: 10_000,
            churn: 20.0,
            changes: 1.0,
        },
        Config {
            hosts: 100,
            machines: 10_000,
            churn: 100.0,
            changes: 5.0,
        },
    ];
    println!(
        "| hosts | machines | state changes | catalogue changes | round p50 | round p99 | change lag p50 | change lag p99 | database CPU (cores) | directory rows read |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for c in &configs {
        println!("{}", run(c, secs).await?);
    }
    Ok(())
}
