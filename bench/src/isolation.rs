//! Machine start latency and memory per runtime tier, in one run on one
//! hangard: crun containers and gVisor (runsc) machines side by side.
//!
//! Per tier:
//! - create → started (`POST /machines`, then wait for `started`);
//! - stopped → started, 100 ms after the stop (the next container made
//!   ahead and waiting, as after any real pause);
//! - the memory of an idle started machine: its cgroup's usage as
//!   `/metrics` reports it (for gVisor that includes the sandbox's kernel
//!   and its gofer), median over the tier's idle machines.
//!
//! And their floors, in the same run: raw `crun` and raw `runsc` create +
//! start of hangard's own bundle of the same image (overlay included).
//! Run it through `bench/isolation.sh`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use hangar_api_types::{CreateMachineRequest, MachineConfig};
use hangar_bench::median;
use hangar_bench::start::{Series, machine_memory, ms, raw_oci};
use hangar_test_utils::daemon::Daemon;
use hangar_test_utils::image::ImageBuilder;
use hangar_test_utils::registry::Registry;

const APP: &str = "bench";
/// Idle machines per tier whose memory is measured.
const IDLE: usize = 5;

struct Tier {
    name: &'static str,
    create: Series,
    restart: Series,
    memory_mib: f64,
    bundle: serde_json::Value,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let runs = hangar_bench::runs_arg(10)?;
    let reg = Registry::start().await;
    reg.push("bench/bb", "v1", &ImageBuilder::busybox().build())
        .await;
    let image_ref = format!("{}/bench/bb:v1", reg.addr);
    let d = Daemon::with_registry(&reg.addr).await;
    let c = d.client();
    c.create_app(APP).await?;

    let mut tiers = Vec::new();
    let mut to_destroy = Vec::new();
    for (name, runtime) in [("crun", "crun"), ("gVisor", "runsc")] {
        let config: MachineConfig = serde_json::from_value(serde_json::json!({
            "image": image_ref,
            "init": {"cmd": ["/bin/sleep", "100000"]},
            "restart": {"policy": "no"},
            "metadata": {"hangar_runtime": runtime},
        }))?;
        let req = CreateMachineRequest {
            config: Some(config),
            ..CreateMachineRequest::default()
        };
        let wait = |id: String, state: &'static str| {
            let c = c.clone();
            async move {
                c.wait_machine(APP, &id, &[state], Duration::from_secs(120))
                    .await
                    .with_context(|| format!("waiting for {state}"))
            }
        };
        // Warm up (the first create pulls the image), and keep it for the
        // restarts.
        let keeper = c.create_machine(APP, &req).await?.id;
        wait(keeper.clone(), "started").await?;
        let mut create = Series {
            name: format!("{name}: create -> started"),
            ms: vec![],
        };
        for _ in 0..runs {
            let t = Instant::now();
            let id = c.create_machine(APP, &req).await?.id;
            wait(id.clone(), "started").await?;
            create.ms.push(ms(t.elapsed()));
            c.destroy_machine(APP, &id, true).await?;
            wait(id, "destroyed").await?;
        }
        let mut restart = Series {
            name: format!("{name}: stopped -> started"),
            ms: vec![],
        };
        for _ in 0..runs {
            c.stop_machine(APP, &keeper, Some("SIGKILL"), None).await?;
            wait(keeper.clone(), "stopped").await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
            let t = Instant::now();
            c.start_machine(APP, &keeper).await?;
            wait(keeper.clone(), "started").await?;
            restart.ms.push(ms(t.elapsed()));
        }
        // Idle machines, settled, then their memory.
        let mut idle = vec![keeper.clone()];
        for _ in 1..IDLE {
            let id = c.create_machine(APP, &req).await?.id;
            wait(id.clone(), "started").await?;
            idle.push(id);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut memory = Vec::new();
        for id in &idle {
            if let Some(b) = machine_memory(&d, APP, id).await {
                memory.push(b / (1 << 20) as f64);
            }
        }
        let bundle = serde_json::from_slice(&std::fs::read(
            d.machine_dir(&keeper).join("bundle/config.json"),
        )?)?;
        // The idle machines stay until the raw runs are done: those join
        // the keeper's network namespace and copy its files.
        to_destroy.extend(idle);
        tiers.push(Tier {
            name,
            create,
            restart,
            memory_mib: if memory.is_empty() {
                f64::NAN
            } else {
                median(memory)
            },
            bundle,
        });
    }

    let layers: Vec<PathBuf> = std::fs::read_dir(d.data_dir.join("images/layers"))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    let (raw_crun, _, _) = raw_oci("crun", &[], &tiers[0].bundle, &layers, runs, &d.data_dir)?;
    let (raw_runsc, _, _) = raw_oci(
        "runsc",
        &["--platform=ptrace", "--network=host"],
        &tiers[1].bundle,
        &layers,
        runs,
        &d.data_dir,
    )?;

    for id in to_destroy {
        c.destroy_machine(APP, &id, true).await?;
        c.wait_machine(APP, &id, &["destroyed"], Duration::from_secs(120))
            .await?;
    }

    println!();
    println!("start latency per runtime, {runs} runs each, ms (median / p95 / p99 / min)");
    let mut all: Vec<&Series> = tiers.iter().flat_map(|t| [&t.create, &t.restart]).collect();
    all.push(&raw_crun);
    all.push(&raw_runsc);
    for s in all {
        s.print_row();
    }
    println!();
    for (t, raw) in tiers.iter().zip([&raw_crun, &raw_runsc]) {
        println!(
            "  {:<7} create->started {:.2}x its raw runtime, {:.2}x raw crun; stopped->started {:.2}x its raw runtime, {:.2}x raw crun",
            t.name,
            t.create.median() / raw.median(),
            t.create.median() / raw_crun.median(),
            t.restart.median() / raw.median(),
            t.restart.median() / raw_crun.median(),
        );
    }
    for t in &tiers {
        println!(
            "  {:<7} memory of an idle machine (its cgroup, median of {IDLE}): {:.1} MiB",
            t.name, t.memory_mib
        );
    }
    Ok(())
}
