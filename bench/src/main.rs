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

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hangar_api_types::{CreateMachineRequest, MachineConfig};
use hangar_test_utils::daemon::Daemon;
use hangar_test_utils::image::ImageBuilder;
use hangar_test_utils::registry::Registry;

struct Series {
    name: &'static str,
    ms: Vec<f64>,
}

impl Series {
    fn sorted(&self) -> Vec<f64> {
        let mut v = self.ms.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        v
    }
    fn median(&self) -> f64 {
        let v = self.sorted();
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    }
    fn quantile(&self, q: f64) -> f64 {
        let v = self.sorted();
        v[((v.len() as f64 * q).ceil() as usize)
            .saturating_sub(1)
            .min(v.len() - 1)]
    }
    fn p95(&self) -> f64 {
        self.quantile(0.95)
    }
    fn p99(&self) -> f64 {
        self.quantile(0.99)
    }
    fn min(&self) -> f64 {
        self.sorted()[0]
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs a command whose children may keep its stdio open (`crun create`
/// leaves the container holding it): only the exit status is awaited.
fn run_quiet(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

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
        name: "hangard create -> started",
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
        name: "hangard stopped -> started",
        ms: vec![],
    };
    let mut back_to_back = Series {
        name: "  (started right after stopping)",
        ms: vec![],
    };
    let mut no_precreate = Series {
        name: "  --no-precreate: stopped -> started",
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
        name: "hangard started -> suspended",
        ms: vec![],
    };
    let mut resume = Series {
        name: "hangard suspended -> started",
        ms: vec![],
    };
    let mut suspended_memory = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        c.machine_action("bench", &keeper, "suspend").await?;
        wait(keeper.clone(), "suspended").await?;
        suspend.ms.push(ms(t.elapsed()));
        suspended_memory.push(machine_memory(&d, &keeper).await);
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
    let (raw, raw_pause, raw_resume) = raw_crun(&bundle_cfg, &layers, runs, &d)?;
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
        println!(
            "  {:<38} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            s.name,
            s.median(),
            s.p95(),
            s.p99(),
            s.min()
        );
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

/// The machine's `hangar_machine_memory_bytes` in hangard's `/metrics`.
async fn machine_memory(d: &Daemon, id: &str) -> Option<f64> {
    let text = reqwest::Client::new()
        .get(format!("{}/metrics", d.url))
        .bearer_auth(&d.token)
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let want = format!("hangar_machine_memory_bytes{{app=\"bench\",machine=\"{id}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&want))
        .and_then(|v| v.trim().parse().ok())
}

fn raw_crun(
    cfg: &serde_json::Value,
    layers: &[PathBuf],
    runs: usize,
    d: &Daemon,
) -> anyhow::Result<(Series, Series, Series)> {
    let crun = "crun";
    let work = tempfile::tempdir()?;
    let root = work.path().join("run");
    let bundle = work.path().join("bundle");
    std::fs::create_dir_all(bundle.join("rootfs"))?;
    // Exactly hangard's bundle (hangar-init as PID 1 running `sleep`, the
    // same mounts, limits and namespaces), with its own cgroup path and
    // copies of the files hangard bind-mounts into it.
    let mut cfg = cfg.clone();
    let mounts: Vec<serde_json::Value> = cfg["mounts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|mut m| {
            if let Some(src) = m["source"]
                .as_str()
                .filter(|s| s.starts_with(d.data_dir.to_str().unwrap_or("-")))
            {
                let copy = work
                    .path()
                    .join(Path::new(src).file_name().unwrap_or_default());
                let _ = std::fs::copy(src, &copy);
                m["source"] = copy.display().to_string().into();
            }
            m
        })
        .collect();
    cfg["mounts"] = mounts.into();
    let mut series = Series {
        name: "raw crun create+start (+overlay)",
        ms: vec![],
    };
    let mut pause = Series {
        name: "raw crun pause",
        ms: vec![],
    };
    let mut resume = Series {
        name: "raw crun resume",
        ms: vec![],
    };
    for i in 0..runs {
        let id = format!("bench-raw-{}-{i}", std::process::id());
        cfg["linux"]["cgroupsPath"] = format!("/hangar-bench/{id}").into();
        std::fs::write(bundle.join("config.json"), serde_json::to_vec(&cfg)?)?;
        let upper = work.path().join("upper");
        let wdir = work.path().join("work");
        let lower: Vec<String> = layers.iter().map(|p| p.display().to_string()).collect();
        let t = Instant::now();
        std::fs::create_dir_all(&upper)?;
        std::fs::create_dir_all(&wdir)?;
        nix::mount::mount(
            Some("overlay"),
            &bundle.join("rootfs"),
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(
                format!(
                    "lowerdir={},upperdir={},workdir={}",
                    lower.join(":"),
                    upper.display(),
                    wdir.display()
                )
                .as_str(),
            ),
        )?;
        run_quiet(
            Command::new(crun)
                .arg("--root")
                .arg(&root)
                .args(["create", "--bundle"])
                .arg(&bundle)
                .arg(&id),
        )?;
        run_quiet(
            Command::new(crun)
                .arg("--root")
                .arg(&root)
                .args(["start", &id]),
        )?;
        series.ms.push(ms(t.elapsed()));
        // The floor of a suspend and a resume: the runtime's own freeze.
        std::thread::sleep(Duration::from_millis(20));
        for (verb, into) in [("pause", &mut pause.ms), ("resume", &mut resume.ms)] {
            let t = Instant::now();
            run_quiet(
                Command::new(crun)
                    .arg("--root")
                    .arg(&root)
                    .args([verb, &id]),
            )?;
            into.push(ms(t.elapsed()));
        }
        run_quiet(
            Command::new(crun)
                .arg("--root")
                .arg(&root)
                .args(["kill", &id, "KILL"]),
        )?;
        std::thread::sleep(Duration::from_millis(20));
        run_quiet(
            Command::new(crun)
                .arg("--root")
                .arg(&root)
                .args(["delete", "--force", &id]),
        )?;
        nix::mount::umount2(&bundle.join("rootfs"), nix::mount::MntFlags::MNT_DETACH)?;
        std::fs::remove_dir_all(&upper)?;
        std::fs::remove_dir_all(&wdir)?;
    }
    Ok((series, pause, resume))
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
        name: "podman run -d",
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
