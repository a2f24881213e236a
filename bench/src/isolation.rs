//! Machine start latency and memory per runtime tier, in one run on one
//! hangard: crun containers, gVisor (runsc) machines and microVMs (qemu
//! `-M microvm`, when `HANGAR_BENCH_VM_KERNEL_DIR` names a guest kernel)
//! side by side.
//!
//! Per tier:
//! - create → started (`POST /machines`, then wait for `started`);
//! - stopped → started, 100 ms after the stop (the next container made
//!   ahead and waiting, as after any real pause; a VM boots again);
//! - suspend (→ `suspended`) and resume (`start` → `started`);
//! - the memory of an idle started machine as `/metrics` reports it (a
//!   container's cgroup; for gVisor that includes the sandbox's kernel and
//!   its gofer; for a microVM qemu's resident memory), median over the
//!   tier's idle machines.
//!
//! And their floors, in the same run: raw `crun` and raw `runsc` create +
//! start of hangard's own bundle of the same image (overlay included), and
//! a bare `qemu-system-x86_64 -M microvm` boot of the same kernel and
//! initramfs with the same acceleration, from spawn to the power-off of a
//! busybox `/init`. Run it through `bench/isolation.sh`.

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
    suspend: Series,
    resume: Series,
    memory_mib: f64,
    bundle: Option<serde_json::Value>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let runs = hangar_bench::runs_arg(10)?;
    let reg = Registry::start().await;
    reg.push("bench/bb", "v1", &ImageBuilder::busybox().build())
        .await;
    let image_ref = format!("{}/bench/bb:v1", reg.addr);
    let vm_kernel = std::env::var_os("HANGAR_BENCH_VM_KERNEL_DIR").map(PathBuf::from);
    let mut args = vec!["--insecure-registry".to_owned(), reg.addr.clone()];
    if let Some(k) = &vm_kernel {
        args.extend(["--vm-kernel-dir".to_owned(), k.display().to_string()]);
    }
    let d = Daemon::start(&args).await;
    let c = d.client();
    c.create_app(APP).await?;

    let mut runtimes = vec![("crun", "crun"), ("gVisor", "runsc")];
    if vm_kernel.is_some() {
        runtimes.push(("microVM", "microvm"));
    } else {
        eprintln!("no HANGAR_BENCH_VM_KERNEL_DIR: the microVM tier is left out");
    }
    let mut tiers = Vec::new();
    let mut to_destroy = Vec::new();
    for (name, runtime) in runtimes {
        let config: MachineConfig = serde_json::from_value(serde_json::json!({
            "image": image_ref,
            "init": {"cmd": ["/bin/sleep", "100000"]},
            "restart": {"policy": "no"},
            "metadata": {"hangar_runtime": runtime},
            "guest": {"cpus": 1, "memory_mb": 256},
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
        let mut suspend = Series {
            name: format!("{name}: suspend -> suspended"),
            ms: vec![],
        };
        let mut resume = Series {
            name: format!("{name}: suspended -> started"),
            ms: vec![],
        };
        for _ in 0..runs {
            let t = Instant::now();
            c.machine_action(APP, &keeper, "suspend").await?;
            wait(keeper.clone(), "suspended").await?;
            suspend.ms.push(ms(t.elapsed()));
            let t = Instant::now();
            c.start_machine(APP, &keeper).await?;
            wait(keeper.clone(), "started").await?;
            resume.ms.push(ms(t.elapsed()));
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
        let bundle = std::fs::read(d.machine_dir(&keeper).join("bundle/config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        // The idle machines stay until the raw runs are done: those join
        // the keeper's network namespace and copy its files.
        to_destroy.extend(idle);
        tiers.push(Tier {
            name,
            create,
            restart,
            suspend,
            resume,
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
    let bundle = |i: usize| tiers[i].bundle.clone().context("the container's bundle");
    let (raw_crun, _, _) = raw_oci("crun", &[], &bundle(0)?, &layers, runs, &d.data_dir)?;
    let (raw_runsc, _, _) = raw_oci(
        "runsc",
        &["--platform=ptrace", "--network=host"],
        &bundle(1)?,
        &layers,
        runs,
        &d.data_dir,
    )?;
    let bare_qemu = match &vm_kernel {
        Some(k) => Some(bare_qemu_boot(k, &d.data_dir.join("vm/initrd.cpio"), runs)?),
        None => None,
    };

    for id in to_destroy {
        c.destroy_machine(APP, &id, true).await?;
        c.wait_machine(APP, &id, &["destroyed"], Duration::from_secs(120))
            .await?;
    }

    println!();
    println!("start latency per runtime, {runs} runs each, ms (median / p95 / p99 / min)");
    let mut all: Vec<&Series> = tiers
        .iter()
        .flat_map(|t| [&t.create, &t.restart, &t.suspend, &t.resume])
        .collect();
    all.push(&raw_crun);
    all.push(&raw_runsc);
    all.extend(bare_qemu.as_ref());
    for s in all {
        s.print_row();
    }
    println!();
    let floors: Vec<&Series> = [&raw_crun, &raw_runsc]
        .into_iter()
        .chain(bare_qemu.as_ref())
        .collect();
    for (t, raw) in tiers.iter().zip(floors) {
        println!(
            "  {:<7} create->started {:.2}x its floor, {:.2}x raw crun; stopped->started {:.2}x its floor, {:.2}x raw crun",
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

/// The microVM floor: a bare `qemu-system-x86_64 -M microvm` boot of the
/// guest kernel in `kernel_dir` and hangard's initramfs, as hangard runs it
/// (same acceleration, memory and kernel command line, TSC frequency
/// included) but with busybox as `/init` powering off at once: from the
/// spawn of qemu to its exit.
fn bare_qemu_boot(
    kernel_dir: &std::path::Path,
    initrd: &std::path::Path,
    runs: usize,
) -> anyhow::Result<Series> {
    use hangar_runtime_vm::{Accel, host_tsc_khz, kernel_cmdline};
    let (accel, _) = Accel::detect();
    let tsc = host_tsc_khz(Duration::from_millis(20));
    let cmdline = format!(
        "{} rdinit=/bin/busybox -- poweroff -f",
        kernel_cmdline(accel, tsc)
    );
    let mut series = Series {
        name: "bare qemu -M microvm boot (same kernel + initramfs)".into(),
        ms: vec![],
    };
    for i in 0..=runs {
        let t = Instant::now();
        let mut cmd = std::process::Command::new("qemu-system-x86_64");
        cmd.args(["-M", "microvm", "-accel"])
            .arg(match accel {
                Accel::Kvm => "kvm",
                Accel::Tcg => "tcg,thread=single",
            })
            .args(["-m", "256M", "-smp", "1", "-nodefaults", "-no-user-config"])
            .args([
                "-display",
                "none",
                "-no-reboot",
                "-serial",
                "null",
                "-monitor",
                "none",
            ])
            .arg("-kernel")
            .arg(kernel_dir.join("vmlinuz"))
            .arg("-initrd")
            .arg(initrd)
            .args(["-append", &cmdline])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null());
        if accel == Accel::Kvm {
            cmd.args(["-cpu", "host"]);
        }
        let status = cmd.status().context("running qemu-system-x86_64")?;
        anyhow::ensure!(status.success(), "the bare boot failed: {status}");
        // The first boot warms the page cache.
        if i > 0 {
            series.ms.push(ms(t.elapsed()));
        }
    }
    Ok(series)
}
