//! A real `hangard` for end-to-end tests: its own data dir, a free loopback
//! port, real crun. The binaries are built (if stale) on first use with the
//! same cargo that runs the tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use hangar_client::Client;

/// Paths of the freshly built `hangard` and `hangar` binaries, or of those
/// in `$HANGAR_BIN_DIR` when set (the benchmark uses release builds).
pub fn binaries() -> &'static (PathBuf, PathBuf) {
    static BINS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BINS.get_or_init(|| {
        if let Some(dir) = std::env::var_os("HANGAR_BIN_DIR").map(PathBuf::from) {
            // Absolute: a daemon run in namespaces of its own (nsenter)
            // starts elsewhere.
            let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
            return (dir.join("hangard"), dir.join("hangar"));
        }
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .and_then(Path::parent)
            .expect("workspace root")
            .to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(&workspace)
            .args([
                "build", "--quiet", "--bins", "-p", "hangard", "-p", "hangar",
            ])
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building hangard and hangar failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace.join("target"));
        let dir = target.join("debug");
        (dir.join("hangard"), dir.join("hangar"))
    })
}

/// A /22 of `10.231.0.0/16` (four blocks of 253 machines) that no other
/// daemon of this test process uses, so that daemons running side by side
/// get addresses of their own.
pub fn next_network_range() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Third octets already on this host's interfaces (daemons of other test
    // processes running beside this one).
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let taken: Vec<u32> = out
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("10.231."))
        .filter_map(|rest| rest.split('.').next()?.parse().ok())
        .collect();
    for _ in 0..63 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed) + std::process::id() * 7;
        let first = (n % 63 + 1) * 4;
        if !(first..first + 4).any(|o| taken.contains(&o)) {
            return format!("10.231.{first}.0/22");
        }
    }
    let n = NEXT.fetch_add(1, Ordering::Relaxed) + std::process::id() * 7;
    format!("10.231.{}.0/22", (n % 63 + 1) * 4)
}

/// A running `hangard`; killed (SIGKILL) and its machines destroyed on drop.
pub struct Daemon {
    /// The data dir.
    pub data_dir: PathBuf,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The admin token.
    pub token: String,
    port: u16,
    /// The daemon's IPv4 range for private networks.
    pub network_range: String,
    /// The proxy's HTTP listener, `127.0.0.1:PORT`.
    pub proxy_http: String,
    /// The proxy's HTTPS listener, `127.0.0.1:PORT`.
    pub proxy_https: String,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
    /// A command hangard runs under (`nsenter ...` for a host of its own).
    wrap: Vec<String>,
    /// The address its API and proxy listen on.
    ip: String,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts a daemon with extra flags (e.g. `--insecure-registry`).
    pub async fn start(extra_args: &[String]) -> Daemon {
        Daemon::start_in(&next_network_range(), extra_args).await
    }

    /// Starts a daemon whose private networks come from `range`.
    pub async fn start_in(range: &str, extra_args: &[String]) -> Daemon {
        Daemon::start_with(range, extra_args, &[]).await
    }

    /// Starts a daemon with extra flags and environment variables (kept
    /// across restarts).
    pub async fn start_env(extra_args: &[String], env: &[(&str, String)]) -> Daemon {
        Daemon::start_with(&next_network_range(), extra_args, env).await
    }

    async fn start_with(range: &str, extra_args: &[String], env: &[(&str, String)]) -> Daemon {
        Daemon::start_wrapped(range, extra_args, env, Vec::new(), "127.0.0.1").await
    }

    /// Starts a daemon under `wrap` (e.g. [`crate::netns::Lan::wrap`]: a
    /// network and mount namespace of its own), its API and proxy listening
    /// on `ip`.
    pub async fn start_wrapped(
        range: &str,
        extra_args: &[String],
        env: &[(&str, String)],
        wrap: Vec<String>,
        ip: &str,
    ) -> Daemon {
        crate::require_program("crun", "crun");
        let dir = tempfile::tempdir().expect("tempdir");
        let mut d = Daemon {
            data_dir: dir.path().join("data"),
            url: String::new(),
            token: String::new(),
            port: crate::free_port(),
            network_range: range.to_owned(),
            proxy_http: format!("{ip}:{}", crate::free_port()),
            proxy_https: format!("{ip}:{}", crate::free_port()),
            extra_args: extra_args.to_vec(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            wrap,
            ip: ip.to_owned(),
            child: None,
            _dir: dir,
        };
        d.url = format!("http://{ip}:{}", d.port);
        d.spawn().await;
        d
    }

    /// Starts a daemon that may pull from `registry` over plain HTTP.
    pub async fn with_registry(registry: &str) -> Daemon {
        Daemon::start(&["--insecure-registry".into(), registry.into()]).await
    }

    async fn spawn(&mut self) {
        let (hangard, _) = binaries();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self._dir.path().join("hangard.log"))
            .expect("log file");
        let mut cmd = match self.wrap.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(hangard);
                c
            }
            None => Command::new(hangard),
        };
        // A run dir of its own (its secrets tmpfs), not the host's
        // /run/hangar, unmounted when the daemon is dropped.
        if !self.extra_args.iter().any(|a| a == "--run-dir") {
            cmd.arg("--run-dir").arg(self.run_dir());
        }
        let child = cmd
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(format!("{}:{}", self.ip, self.port))
            .arg("--network-range")
            .arg(&self.network_range)
            .arg("--ip-pool")
            .arg(self.ip_pool())
            // Tests never send traffic beyond this host.
            .arg("--no-outbound-nat")
            .arg("--proxy-http")
            .arg(&self.proxy_http)
            .arg("--proxy-https")
            .arg(&self.proxy_https)
            .args(&self.extra_args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env(
                "RUST_LOG",
                std::env::var("HANGAR_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting hangard");
        self.child = Some(child);
        let token_file = self.data_dir.join("admin-token");
        let url = format!("{}/v1/apps?org_slug=personal", self.url);
        let http = reqwest::Client::new();
        let token = crate::poll_until(Duration::from_secs(30), || {
            let http = http.clone();
            let url = url.clone();
            let token_file = token_file.clone();
            async move {
                let token = std::fs::read_to_string(&token_file).ok()?.trim().to_owned();
                let r = http.get(&url).bearer_auth(&token).send().await.ok()?;
                r.status().is_success().then_some(token)
            }
        })
        .await;
        let Some(token) = token else {
            // Keep the log: the temp dir goes with the panic.
            let keep = std::env::temp_dir().join(format!("hangard-{}.log", self.port));
            let log = self.log();
            let _ = std::fs::write(&keep, &log);
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "timed out after 30s waiting for hangard to serve; its log is kept in {}; last lines:\n{}",
                keep.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        };
        self.token = token;
    }

    /// The daemon's pool of dedicated addresses: a loopback /24 of its own
    /// (named after its network range).
    pub fn ip_pool(&self) -> String {
        let octet = |i: usize| -> u32 {
            self.network_range
                .split(['.', '/'])
                .nth(i)
                .and_then(|o| o.parse().ok())
                .unwrap_or(0)
        };
        // 10.231.N.0/22 -> 127.3.N.0/24, 10.232.N.0/22 -> 127.4.N.0/24, ...
        format!(
            "127.{}.{}.0/24",
            3 + octet(1).saturating_sub(231) % 250,
            octet(2)
        )
    }

    /// A client for this daemon.
    pub fn client(&self) -> Client {
        Client::new(&self.url, &self.token)
    }

    /// The daemon's data dir.
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    /// A machine's directory in the data dir.
    pub fn machine_dir(&self, id: &str) -> PathBuf {
        self.data_dir.join("machines").join(id)
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("hangard.log")).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill on our child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let status = c.wait().expect("waiting for hangard");
            assert!(status.success(), "hangard exited with {status} on SIGTERM");
        }
    }

    /// SIGKILLs the daemon, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the daemon again on the same data dir and port.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Runs the `hangar` CLI against this daemon; returns (success, stdout,
    /// stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        self.cli_in(None, &[], args)
    }

    /// Runs the `hangar` CLI against this daemon in `dir` (where a
    /// fly.toml may be), with extra environment variables; returns
    /// (success, stdout, stderr).
    pub fn cli_in(
        &self,
        dir: Option<&std::path::Path>,
        env: &[(&str, &std::ffi::OsStr)],
        args: &[&str],
    ) -> (bool, String, String) {
        let (_, hangar) = binaries();
        let mut cmd = Command::new(hangar);
        cmd.args(args)
            .env("HANGAR_API_URL", &self.url)
            .env("HANGAR_API_TOKEN", &self.token)
            .env_remove("HANGAR_APP")
            .envs(env.iter().copied())
            .stdin(Stdio::null());
        if let Some(dir) = dir {
            cmd.current_dir(dir);
        }
        let out = cmd.output().expect("running hangar");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs the `hangar` CLI with `stdin` as its input; returns (exit code,
    /// stdout, stderr). Gives up after `timeout`.
    pub fn cli_with_stdin(
        &self,
        args: &[&str],
        stdin: &[u8],
        timeout: Duration,
    ) -> (i32, String, String) {
        use std::io::Write;
        let (_, hangar) = binaries();
        let mut child = Command::new(hangar)
            .args(args)
            .env("HANGAR_API_URL", &self.url)
            .env("HANGAR_API_TOKEN", &self.token)
            .env_remove("HANGAR_APP")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running hangar");
        let mut input = child.stdin.take().expect("stdin");
        input.write_all(stdin).expect("writing stdin");
        drop(input);
        let deadline = std::time::Instant::now() + timeout;
        while child.try_wait().expect("waiting for hangar").is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().expect("hangar output");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The machine's log lines as `(stream, message)`.
    pub fn machine_log(&self, id: &str) -> Vec<(String, String)> {
        // A container's log, or a microVM's.
        let path = ["machines", "vm/machines"]
            .iter()
            .map(|d| self.data_dir.join(d).join(id).join("logs/machine.log"))
            .find(|p| p.exists())
            .unwrap_or_default();
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| {
                (
                    v["stream"].as_str().unwrap_or_default().to_owned(),
                    v["message"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }
}

impl Drop for Daemon {
    /// Leaves nothing running: the daemon is killed, then every container of
    /// its data dir is killed and deleted and its root unmounted.
    fn drop(&mut self) {
        self.kill();
        self.remove_machines();
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.run_dir().join("secrets"))
            .stderr(Stdio::null())
            .status();
        // The bridges of the daemon's networks, and its firewall table,
        // named after its installation.
        if let Some(inst) = self.installation() {
            let prefix = format!("hgr{inst:04x}");
            if let Ok(rd) = std::fs::read_dir("/sys/class/net") {
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.starts_with(&prefix) {
                        let _ = Command::new("ip")
                            .args(["link", "del", &name])
                            .stderr(Stdio::null())
                            .status();
                    }
                }
            }
            let _ = Command::new("nft")
                .args(["delete", "table", "inet", &format!("hangar_{inst:04x}")])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Daemon {
    /// The daemon's `--run-dir` (unless the test gave one).
    fn run_dir(&self) -> PathBuf {
        self._dir.path().join("run")
    }

    /// The installation's id (it names the daemon's bridges and table), once
    /// the daemon has made it.
    pub fn installation(&self) -> Option<u16> {
        let db = rusqlite::Connection::open_with_flags(
            self.data_dir.join("hangar.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .ok()?;
        db.query_row(
            "SELECT value FROM settings WHERE key = 'installation'",
            [],
            |r| r.get::<_, String>(0),
        )
        .ok()?
        .parse()
        .ok()
    }

    /// The daemon's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Ends every microVM of the data dir (its shim, then qemu, by the
    /// pids they wrote, if those processes are still theirs) and removes
    /// their tap devices.
    fn remove_vms(&self) {
        let Ok(rd) = std::fs::read_dir(self.data_dir.join("vm/machines")) else {
            return;
        };
        for e in rd.flatten() {
            let state = e.path().join("state");
            for f in ["shim.pid", "qemu.pid"] {
                let Some(pid) = std::fs::read_to_string(state.join(f))
                    .ok()
                    .and_then(|p| p.trim().parse::<i32>().ok())
                else {
                    continue;
                };
                let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&*state.to_string_lossy()));
                if ours {
                    // SAFETY: kill has no memory preconditions.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            let id = e.file_name().to_string_lossy().into_owned();
            let tap = format!("hq{}", &id[id.len().saturating_sub(13)..]);
            if std::path::Path::new("/sys/class/net").join(&tap).exists() {
                let _ = Command::new("ip")
                    .args(["link", "del", &tap])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }

    fn remove_machines(&self) {
        self.remove_vms();
        let machines = self.data_dir.join("machines");
        let Ok(rd) = std::fs::read_dir(&machines) else {
            return;
        };
        for e in rd.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            for runtime in ["crun", "runc", "runsc"] {
                let root = self.data_dir.join("run").join(runtime);
                if !root.exists() {
                    continue;
                }
                let run = |args: &[&str]| {
                    let _ = Command::new(runtime)
                        .arg("--root")
                        .arg(&root)
                        .args(args)
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                };
                run(&["kill", &id, "KILL"]);
                std::thread::sleep(Duration::from_millis(100));
                run(&["delete", "--force", &id]);
            }
            for m in ["bundle/rootfs", "netns"] {
                let _ = Command::new("umount")
                    .arg("-l")
                    .arg(e.path().join(m))
                    .stderr(Stdio::null())
                    .status();
            }
            remove_cgroups(&id);
        }
        // Volumes still attached: their mounts, then their loop devices.
        if let Ok(rd) = std::fs::read_dir(self.data_dir.join("volumes/mnt")) {
            for e in rd.flatten() {
                let _ = Command::new("umount")
                    .arg(e.path())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        if let Ok(rd) = std::fs::read_dir(self.data_dir.join("volumes/images")) {
            for e in rd.flatten() {
                let Ok(out) = Command::new("losetup")
                    .arg("-j")
                    .arg(e.path())
                    .stderr(Stdio::null())
                    .output()
                else {
                    continue;
                };
                for dev in String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter_map(|l| l.split(':').next())
                {
                    let _ = Command::new("losetup")
                        .args(["-d", dev])
                        .stderr(Stdio::null())
                        .status();
                }
            }
        }
    }
}

/// Removes machine `id`'s cgroup (a directory named after it under any
/// cgroup parent, in every hierarchy), children first, once its processes
/// are gone: `runsc delete` leaves the sandbox's cgroup behind.
fn remove_cgroups(id: &str) {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for h in hierarchies.flatten() {
        let Ok(parents) = std::fs::read_dir(h.path()) else {
            continue;
        };
        for parent in parents.flatten() {
            let dir = parent.path().join(id);
            if dir.is_dir() {
                remove_tree_of_cgroups(&dir);
            }
        }
    }
}

fn remove_tree_of_cgroups(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree_of_cgroups(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}
