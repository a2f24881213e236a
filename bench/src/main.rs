//! Machine start latency, hangard beside its baselines, in one run:
//!
//! - hangard, create → started: `POST /machines`, then `GET .../wait?state=started`;
//! - hangard, stopped → started: `POST .../start`, then the same wait, for
//!   a machine stopped 100 ms before (its next container already created
//!   and waiting, as after any real pause) and, separately, right after it
//!   stopped; and the same on a second hangard run with `--no-precreate`
//!   (only the root filesystem and bundle made ahead), interleaved;
//! - raw crun: overlay mount of the same image layers + `crun create` +
//!   `crun start` of an equivalent bundle (hangard's own config.json:
//!   hangar-init as PID 1 running `sleep`, same mounts, limits, namespaces);
//! - `podman run -d` of the same image (with the flags this kind of host
//!   needs, see the runtime notes), when podman is installed.
//!
//! Each container runs `sleep` and is torn down outside the timed section.
//! Prints median, p95 and min of every series and the ratios the Foundation
//! issue sets as goals. Run it through `bench/run.sh`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hangar_api_types::{CreateMachineRequest, MachineConfig};
use hangar_bench::start::{Series, machine_memory, ms, raw_oci};
use hangar_test_utils::daemon::Daemon;
use hangar_test_utils::image::ImageBuilder;
use hangar_test_utils::registry::Registry;

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if !out.status.success() {
        bail!("{:?} failed: {}", cmd, String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let runs = hangar_bench::runs_arg(30)?;
    let reg = Registry::start().await;
    let image = ImageBuilder::busybox().build();
    reg.push("bench/bb", "v1", &image).await;
    let image_ref = format!("{}/bench/bb:v1", reg.addr);
    let d = Daemon::with_registry(&reg.addr).await;
    let c = d.client();
    c.create_app("bench").await?;
    let config: MachineConfig = serde_json::from_value(serde_json::json!({
        "image": image_ref,
        "init": {"cmd": ["/bin/sleep", "100000"]},
        "restart": {"policy": "no"},
    }))?;
    let req = CreateMachineRequest {
        config: Some(config),
        ..CreateMachineRequest::default()
    };
    let wait = |id: String, state: &'static str| {
        let c = c.clone();
        async move {
            c.wait_machine("bench", &id, &[state], Duration::from_secs(60))
                .await
                .with_context(|| format!("waiting for {state}"))
        }
    };

    // Warm up: the first create pulls the image.
    let keeper = c.create_machine("bench", &req).await?.id;
    wait(keeper.clone(), "started").await?;
    // The same on a hangard that does not create containers ahead.
    let plain = Daemon::start(&[
        "--insecure-registry".into(),
        reg.addr.clone(),
        "--no-precreate".into(),
    ])
    .await;
    let pc = plain.client();
    pc.create_app("bench").await?;
    let plain_keeper = pc.create_machine("bench", &req).await?.id;
    pc.wait_machine(
        "bench",
        &plain_keeper,
        &["started"],
        Duration::from_secs(60),
    )
    .await?;

    let mut create = Series {
        name: "hangard create -> started".into(),
        ms: vec![],
    };
    for _ in 0..runs {
        let t = Instant::now();
        let id = c.create_machine("bench", &req).await?.id;
        wait(id.clone(), "started").await?;
        create.ms.push(ms(t.elapsed()));
        c.destroy_machine("bench", &id, true).await?;
        wait(id, "destroyed").await?;
    }

    // A stopped machine prepares its next start right after it stops
    // (overlay, bundle): a machine that has been stopped a moment starts
    // without that work. Measured both ways.
    let mut restart = Series {
        name: "hangard stopped -> started".into(),
        ms: vec![],
    };
    let mut back_to_back = Series {
        name: "  (started right after stopping)".into(),
        ms: vec![],
    };
    let mut no_precreate = Series {
        name: "  --no-precreate: stopped -> started".into(),
        ms: vec![],
    };
    for i in 0..3 * runs {
        let (client, id, series) = match i % 3 {
            0 => (&c, &keeper, &mut restart),
            1 => (&pc, &plain_keeper, &mut no_precreate),
            _ => (&c, &keeper, &mut back_to_back),
        };
        client
            .stop_machine("bench", id, Some("SIGKILL"), None)
            .await?;
        client
            .wait_machine("bench", id, &["stopped"], Duration::from_secs(60))
            .await?;
        if i % 3 != 2 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let t = Instant::now();
        client.start_machine("bench", id).await?;
        client
            .wait_machine("bench", id, &["started"], Duration::from_secs(60))
            .await?;
        series.ms.push(ms(t.elapsed()));
    }
    pc.destroy_machine("bench", &plain_keeper, true).await?;
    drop(plain);

    // Suspend and resume through the API (Fly's suspend; `start` resumes).
    let mut suspend = Series {
        name: "hangard started -> suspended".into(),
        ms: vec![],
    };
    let mut resume = Series {
        name: "hangard suspended -> started".into(),
        ms: vec![],
    };
    let mut suspended_memory = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        c.machine_action("bench", &keeper, "suspend").await?;
        wait(keeper.clone(), "suspended").await?;
        suspend.ms.push(ms(t.elapsed()));
        suspended_memory.push(machine_memory(&d, "bench", &keeper).await);
        let t = Instant::now();
        c.start_machine("bench", &keeper).await?;
        wait(keeper.clone(), "started").await?;
        resume.ms.push(ms(t.elapsed()));
    }

    // The equivalent bundle: hangard's own spec, the process run directly.
    let bundle_cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(
        d.machine_dir(&keeper).join("bundle/config.json"),
    )?)?;
    let layers: Vec<PathBuf> = std::fs::read_dir(d.data_dir.join("images/layers"))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    if let Ok(path) = std::env::var("HANGAR_BENCH_LOG") {
        // hangard's log (with HANGAR_TEST_LOG=debug: each start's phases).
        std::fs::write(path, d.log())?;
    }
    let (raw, raw_pause, raw_resume) =
        raw_oci("crun", &[], &bundle_cfg, &layers, runs, &d.data_dir)?;
    c.destroy_machine("bench", &keeper, true).await?;

    let podman = podman(&image_ref, runs)?;

    println!();
    println!("machine start latency, {runs} runs each, ms (median / p95 / p99 / min)");
    let mut all = vec![
        &create,
        &restart,
        &back_to_back,
        &no_precreate,
        &raw,
        &suspend,
        &raw_pause,
        &resume,
        &raw_resume,
    ];
    if let Some(p) = &podman {
        all.push(p);
    }
    for s in &all {
        s.print_row();
    }
    println!();
    println!(
        "  stopped->started / raw crun      {:.2}x median, {:.2}x p99  (goal: <= 0.5x)",
        restart.median() / raw.median(),
        restart.p99() / raw.p99()
    );
    println!(
        "  same with --no-precreate         {:.2}x median, {:.2}x p99",
        no_precreate.median() / raw.median(),
        no_precreate.p99() / raw.p99()
    );
    println!(
        "  create->started / raw crun       {:.2}x",
        create.median() / raw.median()
    );
    println!(
        "  suspend / raw crun pause         {:.2}x median, {:.2}x p99",
        suspend.median() / raw_pause.median(),
        suspend.p99() / raw_pause.p99()
    );
    println!(
        "  resume / raw crun resume         {:.2}x median, {:.2}x p99",
        resume.median() / raw_resume.median(),
        resume.p99() / raw_resume.p99()
    );
    let accounted = suspended_memory.iter().filter(|m| m.is_some()).count();
    println!(
        "  memory of the suspended machine in /metrics: {accounted} of {} suspends ({:.1} MiB)",
        suspended_memory.len(),
        suspended_memory
            .iter()
            .flatten()
            .last()
            .copied()
            .unwrap_or_default()
            / (1 << 20) as f64
    );
    match &podman {
        Some(p) => println!(
            "  stopped->started / podman run    {:.2}x  (goal: < 0.25x)",
            restart.median() / p.median()
        ),
        None => println!("  podman not installed: no podman figure (apt-get install podman)"),
    }
    Ok(())
}

fn podman(image: &str, runs: usize) -> anyhow::Result<Option<Series>> {
    if Command::new("podman")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        return Ok(None);
    }
    let work = tempfile::tempdir()?;
    let base = |cmd: &mut Command| {
        cmd.arg("--root")
            .arg(work.path().join("root"))
            .arg("--runroot")
            .arg(work.path().join("runroot"))
            .args(["--cgroup-manager=cgroupfs", "--events-backend=file"]);
    };
    let mut pull = Command::new("podman");
    base(&mut pull);
    run(pull.args(["pull", "-q", "--tls-verify=false", image]))?;
    let mut series = Series {
        name: "podman run -d".into(),
        ms: vec![],
    };
    for _ in 0..runs {
        let mut cmd = Command::new("podman");
        base(&mut cmd);
        cmd.args([
            "run",
            "-d",
            "--network",
            "none",
            "--ulimit",
            "nofile=20000:20000",
            "--ulimit",
            "nproc=32768:32768",
            image,
            "/bin/sleep",
            "100000",
        ]);
        let t = Instant::now();
        let id = run(&mut cmd)?;
        series.ms.push(ms(t.elapsed()));
        let mut rm = Command::new("podman");
        base(&mut rm);
        run(rm.args(["rm", "-f", "-t", "0", &id]))?;
    }
    Ok(Some(series))
}
