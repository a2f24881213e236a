//! The crash soak: several clients create, stop, start, update and destroy
//! machines while `hangard` is killed with SIGKILL and started again at
//! random intervals of 0.5 to 5 s. Then everything settles and every
//! invariant is checked: each acknowledged machine exists in the state it
//! should be in, no machine has an exit it did not ask for, no request got a
//! 5xx, and nothing is left on the host that a live machine does not own (no
//! orphan container or shim, mount, cgroup, link, address or machine
//! directory), and SQLite passes its integrity check.
//!
//! `HANGAR_SOAK_SECS` sets the load's length (default 120); the long run
//! in `docs/soak.md` used 1200:
//! `HANGAR_SOAK_SECS=1200 cargo test -p hangar-e2e --test soak -- --nocapture`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hangar_api_types::{CreateMachineRequest, MachineConfig, UpdateMachineRequest};
use hangar_client::{Client, ClientError, ListMachines};
use hangar_test_utils::daemon::Daemon;
use hangar_test_utils::image::ImageBuilder;
use hangar_test_utils::registry::Registry;
use rand::Rng;
use serde_json::json;

const APP: &str = "soak";
const WORKERS: usize = 4;
/// Live machines per worker at most.
const PER_WORKER: usize = 5;

/// What a worker knows of one of its machines.
#[derive(Debug, Clone)]
struct Known {
    id: Option<String>,
    /// States the machine may be in once settled: one after an answered
    /// request, two when the answer was lost to a crash.
    may_be: BTreeSet<&'static str>,
}

#[derive(Debug, Default)]
struct Tally {
    ops: BTreeMap<&'static str, (u64, u64)>,
    server_errors: Vec<String>,
    violations: Vec<String>,
}

impl Tally {
    fn count(&mut self, op: &'static str, acked: bool) {
        let e = self.ops.entry(op).or_default();
        e.0 += 1;
        if acked {
            e.1 += 1;
        }
    }
}

fn config(image: &str, generation: u32) -> MachineConfig {
    serde_json::from_value(json!({
        "image": image,
        "guest": {"cpus": 1, "memory_mb": 64},
        "env": {"GENERATION": generation.to_string()},
        "init": {"cmd": ["/bin/sh", "-c", "trap 'exit 0' INT TERM; while true; do sleep 0.2; done"]},
        "restart": {"policy": "no"},
    }))
    .unwrap()
}

/// The outcome of one request: answered (2xx), refused (4xx: nothing
/// happened), or lost (no answer: it may or may not have happened).
enum Outcome<T> {
    Done(T),
    Refused,
    Lost,
}

fn outcome<T>(r: Result<T, ClientError>, what: &str, tally: &Mutex<Tally>) -> Outcome<T> {
    match r {
        Ok(v) => Outcome::Done(v),
        Err(e) => match e.status() {
            Some(s) if s >= 500 => {
                tally
                    .lock()
                    .unwrap()
                    .server_errors
                    .push(format!("{what}: {e}"));
                Outcome::Lost
            }
            Some(_) => Outcome::Refused,
            None => Outcome::Lost,
        },
    }
}

async fn worker(
    n: usize,
    url: String,
    token: String,
    image: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
    tally: Arc<Mutex<Tally>>,
) -> BTreeMap<String, Known> {
    let c = Client::new(&url, &token);
    let mut mine: BTreeMap<String, Known> = BTreeMap::new();
    let mut next = 0u32;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let live: Vec<String> = mine
            .iter()
            .filter(|(_, k)| !k.may_be.contains("destroyed") || k.may_be.len() > 1)
            .filter(|(_, k)| k.id.is_some() && !k.may_be.contains("unknown"))
            .map(|(name, _)| name.clone())
            .collect();
        let roll = rand::rng().random_range(0..100);
        if live.len() < PER_WORKER && (live.is_empty() || roll < 30) {
            next += 1;
            let name = format!("w{n}-{next}");
            let req = CreateMachineRequest {
                name: Some(name.clone()),
                config: Some(config(&image, 0)),
                ..CreateMachineRequest::default()
            };
            let r = c.create_machine(APP, &req).await;
            match outcome(r, "create", &tally) {
                Outcome::Done(m) => {
                    tally.lock().unwrap().count("create", true);
                    mine.insert(
                        name,
                        Known {
                            id: Some(m.id),
                            may_be: BTreeSet::from(["started"]),
                        },
                    );
                }
                Outcome::Refused => tally.lock().unwrap().count("create", false),
                Outcome::Lost => {
                    tally.lock().unwrap().count("create", false);
                    // Mostly hangard is down: do not spin.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    // It may exist: found by name at the end.
                    mine.insert(
                        name,
                        Known {
                            id: None,
                            may_be: BTreeSet::from(["started", "absent"]),
                        },
                    );
                }
            }
            continue;
        }
        let Some(name) = live.get(rand::rng().random_range(0..live.len().max(1))) else {
            continue;
        };
        let k = mine.get(name).cloned().unwrap();
        let id = k.id.clone().unwrap();
        // A machine whose last request lost its answer: once it has settled,
        // what it is tells which way the request went (checked to be one of
        // the two).
        if k.may_be.len() != 1 {
            let settled = c
                .wait_machine(APP, &id, &["settled"], Duration::from_secs(10))
                .await
                .ok();
            match settled {
                Some(w) if k.may_be.contains(w.state.as_str()) => {
                    let state = *k.may_be.iter().find(|s| **s == w.state).unwrap();
                    mine.get_mut(name).unwrap().may_be = BTreeSet::from([state]);
                }
                Some(w) => {
                    let events = c.machine_events(APP, &id, 30).await.unwrap_or_default();
                    tally.lock().unwrap().violations.push(format!(
                        "{name} ({id}): {}, expected one of {:?}; events: {events:#?}",
                        w.state, k.may_be
                    ));
                    mine.get_mut(name).unwrap().may_be = BTreeSet::from(["unknown"]);
                }
                None => tokio::time::sleep(Duration::from_millis(100)).await,
            }
            continue;
        }
        let now = *k.may_be.iter().next().unwrap();
        let (op, after, r): (&'static str, &'static str, Result<(), ClientError>) = match roll {
            0..=29 if now == "started" => (
                "stop",
                "stopped",
                c.stop_machine(APP, &id, None, None).await,
            ),
            0..=29 => (
                "start",
                "started",
                c.start_machine(APP, &id).await.map(|_| ()),
            ),
            30..=59 => {
                next += 1;
                let req = UpdateMachineRequest {
                    config: Some(config(&image, next)),
                    ..UpdateMachineRequest::default()
                };
                (
                    "update",
                    "started",
                    c.update_machine(APP, &id, &req, None).await.map(|_| ()),
                )
            }
            _ => (
                "destroy",
                "destroyed",
                c.destroy_machine(APP, &id, true).await,
            ),
        };
        let entry = mine.get_mut(name).unwrap();
        match outcome(r, op, &tally) {
            Outcome::Done(()) => {
                tally.lock().unwrap().count(op, true);
                entry.may_be = BTreeSet::from([after]);
            }
            Outcome::Refused => tally.lock().unwrap().count(op, false),
            Outcome::Lost => {
                tally.lock().unwrap().count(op, false);
                entry.may_be.insert(after);
            }
        }
        // Let the machine reach its state before the next operation on it
        // (a wait cut short by a crash is simply given up).
        if entry.may_be.len() == 1 && after != "destroyed" {
            let _ = c
                .wait_machine(APP, &id, &[after], Duration::from_secs(20))
                .await;
        }
    }
    mine
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_soak_loses_nothing_and_leaves_nothing() {
    if !hangar_test_utils::host_tier(
        "crash_soak_loses_nothing_and_leaves_nothing",
        &["crun", "docker-registry"],
    ) {
        return;
    }
    let secs: u64 = std::env::var("HANGAR_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let reg = Registry::start().await;
    reg.push("test/bb", "v1", &ImageBuilder::busybox().build())
        .await;
    let image = format!("{}/test/bb:v1", reg.addr);
    let mut d = Daemon::with_registry(&reg.addr).await;
    d.client().create_app(APP).await.unwrap();

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let workers: Vec<_> = (0..WORKERS)
        .map(|n| {
            tokio::spawn(worker(
                n,
                d.url.clone(),
                d.token.clone(),
                image.clone(),
                stop.clone(),
                tally.clone(),
            ))
        })
        .collect();

    // The killer.
    let end = Instant::now() + Duration::from_secs(secs);
    let mut kills = 0u32;
    let mut ready_ms = Vec::new();
    while Instant::now() < end {
        let pause = rand::rng().random_range(500..=5000);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        d.kill();
        kills += 1;
        let t0 = Instant::now();
        d.restart().await;
        ready_ms.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut known = BTreeMap::new();
    for w in workers {
        known.extend(w.await.unwrap());
    }

    // Settle.
    let c = d.client();
    let all = c
        .list_machines(
            APP,
            &ListMachines {
                include_deleted: true,
                ..ListMachines::default()
            },
        )
        .await
        .unwrap();
    for m in &all {
        c.wait_machine(APP, &m.id, &["settled"], Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("machine {} ({}) never settled: {e}", m.id, m.name));
    }
    let all = c
        .list_machines(
            APP,
            &ListMachines {
                include_deleted: true,
                ..ListMachines::default()
            },
        )
        .await
        .unwrap();
    let by_name: BTreeMap<&str, &hangar_api_types::Machine> =
        all.iter().map(|m| (m.name.as_str(), m)).collect();

    // Every acknowledged machine, in a state it may be in.
    let mut failures = Vec::new();
    for (name, k) in &known {
        let state = by_name
            .get(name.as_str())
            .map_or("absent", |m| m.state.as_str());
        if let (Some(id), Some(m)) = (&k.id, by_name.get(name.as_str()))
            && *id != m.id
        {
            failures.push(format!("{name}: id {} is not the acknowledged {id}", m.id));
        }
        if !k.may_be.contains(state) && !k.may_be.contains("unknown") {
            failures.push(format!("{name}: {state}, expected one of {:?}", k.may_be));
        }
    }
    // No machine the workers do not know of.
    for m in &all {
        if !known.contains_key(&m.name) {
            failures.push(format!("unknown machine {} ({})", m.name, m.id));
        }
    }
    // No exit nobody asked for.
    for m in all.iter().filter(|m| m.state != "destroyed") {
        for e in c.machine_events(APP, &m.id, 200).await.unwrap() {
            if e.kind == "exit" {
                let x = &e.request.as_ref().unwrap()["exit_event"];
                if x["requested_stop"] != true {
                    failures.push(format!("{} ({}): spurious exit {x}", m.name, m.id));
                }
            }
        }
    }

    // Nothing on the host that a live machine does not own.
    let live: BTreeSet<&str> = all
        .iter()
        .filter(|m| m.state != "destroyed")
        .map(|m| m.id.as_str())
        .collect();
    let started: BTreeSet<&str> = all
        .iter()
        .filter(|m| m.state == "started")
        .map(|m| m.id.as_str())
        .collect();
    let gone: Vec<&str> = all
        .iter()
        .filter(|m| m.state == "destroyed")
        .map(|m| m.id.as_str())
        .collect();
    let data = d.data_dir().to_owned();
    let root = data.join("run/crun");
    let out = std::process::Command::new("crun")
        .arg("--root")
        .arg(&root)
        .args(["list", "-q"])
        .output()
        .unwrap();
    let containers: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    for ctr in &containers {
        if !started.contains(ctr.as_str()) {
            failures.push(format!("orphan container {ctr}"));
        }
    }
    for id in &started {
        if !containers.contains(*id) {
            failures.push(format!("started machine {id} has no container"));
        }
    }
    let ps = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout);
    let state_dir = data.join("machines").display().to_string();
    let mut shims: BTreeMap<String, u32> = BTreeMap::new();
    for l in ps
        .lines()
        .filter(|l| l.contains(" shim --id ") && l.contains(&state_dir))
    {
        if let Some(id) = l.split_whitespace().skip_while(|w| *w != "--id").nth(1) {
            *shims.entry(id.to_owned()).or_default() += 1;
        }
    }
    for (id, n) in &shims {
        if !started.contains(id.as_str()) || *n != 1 {
            failures.push(format!(
                "shim of {id} x{n} (started: {})",
                started.contains(id.as_str())
            ));
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for l in mounts.lines() {
        let Some(point) = l.split_whitespace().nth(4) else {
            continue;
        };
        if let Some(rest) = point.strip_prefix(&format!("{state_dir}/")) {
            let id = rest.split('/').next().unwrap_or_default();
            if !live.contains(id) {
                failures.push(format!("leftover mount {point}"));
            }
        }
    }
    for id in &gone {
        for c in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
            if c.path().join("hangar").join(id).exists() {
                failures.push(format!(
                    "leftover cgroup {}/hangar/{id}",
                    c.path().display()
                ));
            }
        }
        if data.join("machines").join(id).exists() {
            failures.push(format!("leftover machine dir of {id}"));
        }
        let link = format!("hv{}", &id[id.len().saturating_sub(13)..]);
        if std::path::Path::new("/sys/class/net").join(&link).exists() {
            failures.push(format!("leftover link {link} of {id}"));
        }
    }
    for e in std::fs::read_dir(data.join("machines")).unwrap().flatten() {
        let id = e.file_name().to_string_lossy().into_owned();
        if !live.contains(id.as_str()) {
            failures.push(format!("machine dir of {id}, which is not live"));
        }
    }
    let db = rusqlite::Connection::open_with_flags(
        data.join("hangar.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    if check != "ok" {
        failures.push(format!("SQLite integrity: {check}"));
    }
    let mut st = db.prepare("SELECT machine_id FROM ip_allocations").unwrap();
    let held: Vec<String> = st
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for id in held {
        if !live.contains(id.as_str()) {
            failures.push(format!("address held for {id}, which is not live"));
        }
    }

    let tally = tally.lock().unwrap();
    ready_ms.sort_by(f64::total_cmp);
    let p50 = ready_ms
        .get(ready_ms.len() / 2)
        .copied()
        .unwrap_or_default();
    let acked: u64 = tally.ops.values().map(|(_, a)| a).sum();
    eprintln!(
        "soak: {secs} s, {kills} kills, restart to ready p50 {p50:.0} ms, {} machines ({} live), ops (tried, acknowledged): {:?}, {acked} acknowledged, {} 5xx",
        all.len(),
        live.len(),
        tally.ops,
        tally.server_errors.len()
    );
    for e in &tally.server_errors {
        failures.push(format!("5xx: {e}"));
    }
    failures.extend(tally.violations.iter().cloned());
    assert!(kills > 0 && acked > 0);
    if !failures.is_empty() {
        let keep = std::env::temp_dir().join("hangar-soak.log");
        let _ = std::fs::write(&keep, d.log());
        eprintln!("hangard's log: {}", keep.display());
    }
    assert!(
        failures.is_empty(),
        "{} invariant violations:\n{}\n{}",
        failures.len(),
        failures.join("\n"),
        d.log()
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .join("\n")
    );
}
