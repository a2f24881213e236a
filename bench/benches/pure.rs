//! Micro-benchmarks of the hot pure functions, each beside a baseline in
//! the same run so a regression shows as a ratio that grew:
//! - the machine state machine's `apply` (a stop, then the start back),
//!   beside cloning the machine it works on;
//! - the proxy's `pick` among 100 machines, beside a plain scan for the
//!   least loaded of the same loads;
//! - parsing a machine config at the API's door (`Parsed::try_from`),
//!   beside deserialising the same JSON into Fly's `MachineConfig` alone.
//!
//! `cargo bench -p hangar-bench --bench pure` (figures in
//! docs/benchmarks.md).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use hangar_core::MachineState;
use hangar_core::machine::{self, Input, Machine, Policy, Step};
use hangar_core::services::{Candidate, Concurrency, pick};

fn state_machine(c: &mut Criterion) {
    let policy = Policy::default();
    let started = Machine {
        state: MachineState::Started,
        step: Step::Idle,
        restart_count: 0,
        launch: false,
    };
    let mut g = c.benchmark_group("state machine");
    g.bench_function("apply: stop", |b| {
        b.iter(|| {
            machine::apply(
                black_box(&started),
                &policy,
                Input::Stop {
                    signal: None,
                    timeout: None,
                },
            )
        })
    });
    g.bench_function("baseline: clone the machine", |b| {
        b.iter(|| black_box(&started).clone())
    });
    g.finish();
}

fn proxy_pick(c: &mut Criterion) {
    let candidates: Vec<Candidate> = (0..100)
        .map(|i| Candidate {
            index: i,
            started: i % 3 != 0,
            startable: true,
            out_of_rotation: i % 17 == 0,
            load: ((i * 7919) % 23) as u32,
        })
        .collect();
    let limits = Concurrency::default();
    let mut g = c.benchmark_group("proxy pick, 100 machines");
    let mut turn = 0usize;
    g.bench_function("pick", |b| {
        b.iter(|| {
            turn = turn.wrapping_add(1);
            pick(black_box(&candidates), &limits, turn)
        })
    });
    g.bench_function("baseline: least loaded scan", |b| {
        b.iter(|| {
            black_box(&candidates)
                .iter()
                .filter(|c| c.started)
                .min_by_key(|c| c.load)
                .map(|c| c.index)
        })
    });
    g.finish();
}

fn config_parse(c: &mut Criterion) {
    let json = serde_json::json!({
        "image": "registry.example/web:v3",
        "env": {"PORT": "8080", "LOG": "info", "REGION": "ams"},
        "guest": {"cpu_kind": "shared", "cpus": 2, "memory_mb": 512},
        "init": {"cmd": ["/app/start.sh", "--port", "8080"]},
        "restart": {"policy": "on-failure", "max_retries": 5},
        "services": [{
            "protocol": "tcp", "internal_port": 8080, "autostart": true, "autostop": "stop",
            "min_machines_running": 1,
            "concurrency": {"type": "requests", "soft_limit": 20, "hard_limit": 25},
            "ports": [{"port": 80, "handlers": ["http"], "force_https": true},
                      {"port": 443, "handlers": ["tls", "http"]}],
        }],
        "checks": {"web": {"type": "http", "port": 8080, "path": "/health",
                           "interval": "10s", "timeout": "2s"}},
        "metadata": {"fly_process_group": "web", "fly_release_version": "3"},
    });
    let mut g = c.benchmark_group("machine config");
    g.bench_function("parse at the door", |b| {
        b.iter(|| {
            let cfg: hangar_api_types::MachineConfig =
                serde_json::from_value(black_box(json.clone())).unwrap();
            hangar_core::spec::Parsed::try_from(&cfg).unwrap()
        })
    });
    g.bench_function("baseline: deserialise MachineConfig", |b| {
        b.iter(|| {
            let cfg: hangar_api_types::MachineConfig =
                serde_json::from_value(black_box(json.clone())).unwrap();
            cfg
        })
    });
    g.finish();
}

criterion_group!(benches, state_machine, proxy_pick, config_parse);
criterion_main!(benches);
