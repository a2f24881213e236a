//! Start-latency pieces the start benchmarks share: timing series and the
//! raw OCI runtime floor.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::bail;

/// Timings of one thing, ms.
pub struct Series {
    /// What was timed.
    pub name: String,
    /// Each run's time.
    pub ms: Vec<f64>,
}

impl Series {
    fn sorted(&self) -> Vec<f64> {
        let mut v = self.ms.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        v
    }
    /// The median (ms).
    pub fn median(&self) -> f64 {
        let v = self.sorted();
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    }
    /// The quantile (ms).
    pub fn quantile(&self, q: f64) -> f64 {
        let v = self.sorted();
        v[((v.len() as f64 * q).ceil() as usize)
            .saturating_sub(1)
            .min(v.len() - 1)]
    }
    /// The p95 (ms).
    pub fn p95(&self) -> f64 {
        self.quantile(0.95)
    }
    /// The p99 (ms).
    pub fn p99(&self) -> f64 {
        self.quantile(0.99)
    }
    /// One table row: name, median, p95, p99, min.
    pub fn print_row(&self) {
        println!(
            "  {:<38} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            self.name,
            self.median(),
            self.p95(),
            self.p99(),
            self.min()
        );
    }
    /// The min (ms).
    pub fn min(&self) -> f64 {
        self.sorted()[0]
    }
}

/// A duration in ms.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs a command whose children may keep its stdio open (`crun create`
/// leaves the container holding it): only the exit status is awaited.
pub fn run_quiet(cmd: &mut Command) -> anyhow::Result<()> {
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

/// The floor of a machine start with an OCI runtime: the overlay of the
/// image's layers mounted, then `<runtime> create` and `start` of exactly
/// hangard's bundle `cfg` (hangar-init as PID 1, the same mounts, limits
/// and namespaces), `runs` times; with the runtime's own pause and resume
/// of each container. `flags` go before the command (runsc's platform);
/// `data_dir` is hangard's, whose bind-mounted files are copied.
pub fn raw_oci(
    runtime: &str,
    flags: &[&str],
    cfg: &serde_json::Value,
    layers: &[PathBuf],
    runs: usize,
    data_dir: &Path,
) -> anyhow::Result<(Series, Series, Series)> {
    let crun = runtime;
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
                .filter(|s| s.starts_with(data_dir.to_str().unwrap_or("-")))
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
        name: format!("raw {runtime} create+start (+overlay)"),
        ms: vec![],
    };
    let mut pause = Series {
        name: format!("raw {runtime} pause"),
        ms: vec![],
    };
    let mut resume = Series {
        name: format!("raw {runtime} resume"),
        ms: vec![],
    };
    for i in 0..runs {
        let id = format!("bench-raw-{runtime}-{}-{i}", std::process::id());
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
                .args(flags)
                .args(["create", "--bundle"])
                .arg(&bundle)
                .arg(&id),
        )?;
        run_quiet(
            Command::new(crun)
                .arg("--root")
                .arg(&root)
                .args(flags)
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
                    .args(flags)
                    .args([verb, &id]),
            )?;
            into.push(ms(t.elapsed()));
        }
        run_quiet(
            Command::new(crun)
                .arg("--root")
                .arg(&root)
                .args(flags)
                .args(["kill", &id, "KILL"]),
        )?;
        std::thread::sleep(Duration::from_millis(20));
        run_quiet(
            Command::new(crun)
                .arg("--root")
                .arg(&root)
                .args(flags)
                .args(["delete", "--force", &id]),
        )?;
        nix::mount::umount2(&bundle.join("rootfs"), nix::mount::MntFlags::MNT_DETACH)?;
        std::fs::remove_dir_all(&upper)?;
        std::fs::remove_dir_all(&wdir)?;
    }
    Ok((series, pause, resume))
}

/// The machine's `hangar_machine_memory_bytes` in hangard's `/metrics`.
pub async fn machine_memory(
    d: &hangar_test_utils::daemon::Daemon,
    app: &str,
    id: &str,
) -> Option<f64> {
    let text = reqwest::Client::new()
        .get(format!("{}/metrics", d.url))
        .bearer_auth(&d.token)
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let want = format!("hangar_machine_memory_bytes{{app=\"{app}\",machine=\"{id}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&want))
        .and_then(|v| v.trim().parse().ok())
}
