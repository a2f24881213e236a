//! Hangar's container driver: each machine is an OCI container run by `crun`
//! (or `runc`) through the standard OCI runtime CLI, supervised by
//! `hangar-init shim` so that it outlives `hangard`.
//!
//! Per machine, under `<machines>/<id>/`:
//!
//! ```text
//! bundle/config.json    the OCI spec (see bundle.rs)
//! bundle/rootfs/        overlay: image layers (lower) + upper/ (writable),
//!                       mounted on the host until the container holds it
//! upper/ work/          the machine's writable layer; wiped after every run,
//!                       so each start begins from a clean root filesystem
//! etc/hosts etc/hostname
//! state/                the shim's: shim.pid, exit.json, runtime.log
//! logs/machine.log      stdout/stderr as JSON lines, rotated by the shim
//! ```
//!
//! Concurrency: the agent's runner for a machine is the only caller for that
//! machine, so operations on one machine never overlap; the map of shim
//! handles is the only state shared between machines.

#![deny(unsafe_op_in_unsafe_fn)]

mod bundle;
mod cgroups;
mod exec;
pub mod fsutil;
pub mod host;
pub mod netns;
mod procs;
mod spawn;
mod tty;

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hangar_core::machine::Observed;
use hangar_core::{ExitInfo, Isolation, MachineId, Signal};
use hangar_runtime::{
    ExecOutput, ExecRequest, MemoryInfo, ProcessInfo, Runtime, RuntimeError, WorkloadSpec,
};
use tokio::io::AsyncBufReadExt;
use tokio::io::unix::AsyncFd;

pub use bundle::INIT_IN_GUEST;

/// The static `hangar-init` executable (init and shim), built by `build.rs`.
pub const INIT_BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hangar-init"));

/// Writes [`INIT_BINARY`] to `<dir>/hangar-init` (atomically, only when the
/// file there differs) and returns its path. Running machines keep the
/// binary they started with.
pub fn install_init(dir: &Path) -> io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    let path = dir.join("hangar-init");
    if std::fs::read(&path).is_ok_and(|cur| cur == INIT_BINARY) {
        return Ok(path);
    }
    let tmp = dir.join(format!(".hangar-init.{}", std::process::id()));
    std::fs::write(&tmp, INIT_BINARY)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// Which OCI runtime binary to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OciFlavor {
    /// crun (the default: about 3 ms per container start here).
    Crun,
    /// runc.
    Runc,
    /// gVisor's runsc: the container's system calls are served by a
    /// user-space kernel, not the host's.
    Runsc,
}

impl OciFlavor {
    /// The binary's name.
    pub fn binary(self) -> &'static str {
        match self {
            OciFlavor::Crun => "crun",
            OciFlavor::Runc => "runc",
            OciFlavor::Runsc => "runsc",
        }
    }

    /// The isolation it gives.
    pub fn isolation(self) -> Isolation {
        match self {
            OciFlavor::Crun => Isolation::Crun,
            OciFlavor::Runc => Isolation::Runc,
            OciFlavor::Runsc => Isolation::Runsc,
        }
    }

    /// The flavor that gives `isolation`, if an OCI runtime does.
    pub fn of(isolation: Isolation) -> Option<OciFlavor> {
        match isolation {
            Isolation::Crun => Some(OciFlavor::Crun),
            Isolation::Runc => Some(OciFlavor::Runc),
            Isolation::Runsc => Some(OciFlavor::Runsc),
            Isolation::Microvm => None,
        }
    }

    /// Whether the runtime hands extra file descriptors to the container
    /// (`--preserve-fds`): crun and runc do; runsc does not, so its
    /// machines' init reports through the sandbox's exit status alone.
    fn preserves_fds(self) -> bool {
        !matches!(self, OciFlavor::Runsc)
    }
}

/// An OCI runtime binary machines can run with.
#[derive(Debug, Clone)]
pub struct OciEngine {
    /// Which one.
    pub flavor: OciFlavor,
    /// Path of the binary.
    pub path: PathBuf,
    /// Its state root (`--root`).
    pub root: PathBuf,
    /// Global flags before the command (runsc's `--platform=ptrace`).
    pub flags: Vec<String>,
}

impl OciEngine {
    /// The engine for `flavor` at `path`, its state under `run_dir`.
    pub fn new(flavor: OciFlavor, path: PathBuf, run_dir: &Path) -> OciEngine {
        OciEngine {
            flavor,
            path,
            root: run_dir.join(flavor.binary()),
            flags: Vec::new(),
        }
    }

    /// Whether the runtime still has state for container `id`.
    fn knows(&self, id: &MachineId) -> bool {
        match self.flavor {
            OciFlavor::Runsc => self.root.join(format!("{id}_sandbox:{id}.state")).exists(),
            _ => self.root.join(id.as_str()).exists(),
        }
    }
}

/// Where things are and how to run them.
#[derive(Debug, Clone)]
pub struct OciConfig {
    /// The OCI runtimes machines can run with; the first is the host's
    /// default (for machines that do not ask for one).
    pub engines: Vec<OciEngine>,
    /// The static `hangar-init` binary (init and shim).
    pub init_path: PathBuf,
    /// Per-machine directories live here.
    pub machines_dir: PathBuf,
    /// Size at which a machine's log is rotated.
    pub log_max_bytes: u64,
    /// Parent of every machine's cgroup, e.g. `/hangar`.
    pub cgroup_parent: String,
    /// Where secrets handed to machines live while they run: a tmpfs (see
    /// [`host::ensure_tmpfs`]), so they never reach a disk.
    pub secrets_dir: PathBuf,
    /// The host's volumes (mounted here and bound into machines).
    pub volumes: Option<hangar_volumes::VolumeHost>,
    /// Make a stopped machine's next container ahead of its start (created,
    /// waiting at the runtime's exec barrier), so that a start only lets
    /// it go.
    pub precreate: bool,
}

/// A stopped machine's next container, created and waiting for its start:
/// its shim, the shim's stdout (the start's report comes there) and the
/// hash of the spec it was made for.
struct Standby {
    shim: Shim,
    reports: ShimReports,
    hash: u64,
}

/// A live supervisor process (a machine's shim) we can wait on.
pub struct Shim {
    /// Its pid.
    pub pid: i32,
    /// A pidfd of it, so a reused pid is never mistaken for it.
    pub pidfd: OwnedFd,
}

/// The container driver.
pub struct OciRuntime {
    cfg: OciConfig,
    shims: Mutex<HashMap<MachineId, Arc<Shim>>>,
    /// Machines whose root filesystem and bundle are ready for the next
    /// start, with the hash of the spec they were prepared for.
    prepared: Mutex<HashMap<MachineId, u64>>,
    /// Containers made ahead for stopped machines ([`OciConfig::precreate`]).
    standbys: Mutex<HashMap<MachineId, Standby>>,
    nofile: u64,
}

fn failed(op: &'static str, id: &MachineId, reason: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Failed {
        op,
        id: id.clone(),
        reason: reason.to_string(),
    }
}

impl OciRuntime {
    /// A driver with this configuration; creates its directories.
    pub fn new(cfg: OciConfig) -> io::Result<OciRuntime> {
        std::fs::create_dir_all(&cfg.machines_dir)?;
        if cfg.engines.is_empty() {
            return Err(io::Error::other("no OCI runtime to run machines with"));
        }
        for e in &cfg.engines {
            std::fs::create_dir_all(&e.root)?;
        }
        if !cfg.init_path.is_file() {
            return Err(io::Error::other(format!(
                "init binary {} is missing",
                cfg.init_path.display()
            )));
        }
        Ok(OciRuntime {
            cfg,
            shims: Mutex::new(HashMap::new()),
            prepared: Mutex::new(HashMap::new()),
            standbys: Mutex::new(HashMap::new()),
            nofile: bundle::host_nofile_hard(),
        })
    }

    fn dir(&self, id: &MachineId) -> PathBuf {
        self.cfg.machines_dir.join(id.as_str())
    }

    fn cgroup(&self, id: &MachineId) -> String {
        format!("{}/{}", self.cfg.cgroup_parent.trim_end_matches('/'), id)
    }

    /// The machine's cgroup directory for `controller` (v1), or its unified
    /// directory (v2).
    fn cgroup_dir(&self, controller: &str) -> PathBuf {
        let cg = self.cgroup_rel();
        let v1 = Path::new("/sys/fs/cgroup").join(controller);
        if v1.is_dir() {
            v1.join(cg)
        } else {
            Path::new("/sys/fs/cgroup").join(cg)
        }
    }

    fn cgroup_rel(&self) -> String {
        self.cfg.cgroup_parent.trim_matches('/').to_owned()
    }

    /// Whether the machine's processes are frozen.
    fn is_frozen(&self, id: &MachineId) -> bool {
        let cg = self.cgroup(id);
        let rel = cg.trim_start_matches('/');
        let v1 = Path::new("/sys/fs/cgroup/freezer")
            .join(rel)
            .join("freezer.state");
        let v2 = Path::new("/sys/fs/cgroup").join(rel).join("cgroup.freeze");
        std::fs::read_to_string(v1).is_ok_and(|s| s.trim() == "FROZEN")
            || std::fs::read_to_string(v2).is_ok_and(|s| s.trim() == "1")
    }

    /// Freezes or thaws the machine through its cgroup's freezer, as
    /// `crun pause`/`resume` do but without spawning it (the runtime reads
    /// the same freezer for its state); through the runtime where the
    /// cgroup has no freezer.
    async fn set_frozen(&self, id: &MachineId, frozen: bool) -> Result<(), RuntimeError> {
        let op = if frozen { "freeze" } else { "thaw" };
        if self.shim(id).is_none() {
            return Err(RuntimeError::NotRunning(id.clone()));
        }
        let cgroup = cgroups::MachineCgroup::new(&self.cgroup(id));
        match cgroup.set_frozen(frozen).await {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.runtime_op(id, op, &[if frozen { "pause" } else { "resume" }])
                    .await
            }
            Err(e) => Err(failed(op, id, e)),
        }
    }

    async fn runtime_op(
        &self,
        id: &MachineId,
        op: &'static str,
        args: &[&str],
    ) -> Result<(), RuntimeError> {
        if self.shim(id).is_none() {
            return Err(RuntimeError::NotRunning(id.clone()));
        }
        let out = self
            .runtime_cmd(id)
            .args(args)
            .arg(id.as_str())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .await
            .map_err(|e| failed(op, id, e))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(failed(op, id, String::from_utf8_lossy(&out.stderr).trim()))
        }
    }

    /// The memory cgroup file that counts OOM kills (v1 or v2).
    fn oom_file(&self, id: &MachineId) -> PathBuf {
        let cg = self.cgroup(id);
        let v1 = Path::new("/sys/fs/cgroup/memory");
        if v1.is_dir() {
            v1.join(cg.trim_start_matches('/'))
                .join("memory.oom_control")
        } else {
            Path::new("/sys/fs/cgroup")
                .join(cg.trim_start_matches('/'))
                .join("memory.events")
        }
    }

    /// The runtime of machine `id`: the one its running (or standby)
    /// container was made with, else the host's default.
    fn engine_of(&self, id: &MachineId) -> &OciEngine {
        let name = std::fs::read_to_string(self.dir(id).join(ENGINE_FILE)).unwrap_or_default();
        self.cfg
            .engines
            .iter()
            .find(|e| e.flavor.binary() == name.trim())
            .unwrap_or(&self.cfg.engines[0])
    }

    /// The runtime `spec` asks for.
    fn engine_for(&self, spec: &WorkloadSpec) -> Result<&OciEngine, RuntimeError> {
        let Some(isolation) = spec.isolation else {
            return Ok(&self.cfg.engines[0]);
        };
        OciFlavor::of(isolation)
            .and_then(|f| self.cfg.engines.iter().find(|e| e.flavor == f))
            .ok_or_else(|| RuntimeError::InvalidSpec(self.unsupported(isolation)))
    }

    fn unsupported(&self, isolation: Isolation) -> String {
        let have: Vec<&str> = self.cfg.engines.iter().map(|e| e.flavor.binary()).collect();
        match OciFlavor::of(isolation) {
            Some(f) => format!(
                "{} is not installed or not enabled on this host (it runs {})",
                f.binary(),
                have.join(", ")
            ),
            None => format!(
                "this host runs containers only ({}), not {isolation}",
                have.join(", ")
            ),
        }
    }

    /// A command of machine `id`'s runtime.
    fn runtime_cmd(&self, id: &MachineId) -> tokio::process::Command {
        engine_cmd(self.engine_of(id))
    }

    fn shim(&self, id: &MachineId) -> Option<Arc<Shim>> {
        self.shims
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    fn set_shim(&self, id: &MachineId, shim: Option<Shim>) {
        let mut m = self.shims.lock().unwrap_or_else(|p| p.into_inner());
        match shim {
            Some(s) => m.insert(id.clone(), Arc::new(s)),
            None => m.remove(id),
        };
    }

    /// Takes the record of a prewarmed bundle; true if it was made for
    /// exactly this spec.
    fn take_prepared(&self, spec: &WorkloadSpec) -> bool {
        let prepared = self
            .prepared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&spec.id);
        prepared == Some(spec_hash(spec))
    }

    /// Mounts the spec's volumes on the host; returns `(data dir, guest
    /// path)` for each. A growth that had to wait for a restart happens
    /// here, while nothing uses the volume. The ids are recorded so that
    /// [`Runtime::destroy`] detaches them.
    async fn attach_volumes(
        &self,
        spec: &WorkloadSpec,
    ) -> Result<Vec<(PathBuf, String)>, RuntimeError> {
        if spec.volumes.is_empty() {
            return Ok(Vec::new());
        }
        let id = &spec.id;
        let host = self.cfg.volumes.as_ref().ok_or_else(|| {
            RuntimeError::InvalidSpec("this hangard has no volume support".into())
        })?;
        let mut out = Vec::new();
        for v in &spec.volumes {
            if host.growth_pending(&v.id) && host.is_attached(&v.id) {
                host.detach(&v.id)
                    .await
                    .map_err(|e| failed("attach volume", id, e))?;
            }
            let dir = host
                .attach(&v.id, v.key.as_ref())
                .await
                .map_err(|e| failed("attach volume", id, e))?;
            out.push((dir, v.guest_path.clone()));
        }
        let ids: Vec<&str> = spec.volumes.iter().map(|v| v.id.as_str()).collect();
        std::fs::create_dir_all(self.dir(id).join("state"))
            .and_then(|_| std::fs::write(self.dir(id).join("state/volumes"), ids.join("\n")))
            .map_err(|e| failed("attach volume", id, e))?;
        Ok(out)
    }

    /// Prepares the root filesystem and bundle; returns the bundle dir.
    fn prepare(
        &self,
        spec: &WorkloadSpec,
        volumes: &[(PathBuf, String)],
    ) -> Result<PathBuf, RuntimeError> {
        let id = &spec.id;
        let dir = self.dir(id);
        let bundle_dir = dir.join("bundle");
        if self.take_prepared(spec) && fsutil::is_mounted(&bundle_dir.join("rootfs")) {
            return Ok(bundle_dir);
        }
        let rootfs = bundle_dir.join("rootfs");
        let (upper, work) = (dir.join("upper"), dir.join("work"));
        let err = |op: &'static str| move |e: io::Error| failed(op, id, e);
        let netns_path = self.wire(id, spec.network.as_ref())?;
        fsutil::unmount(&rootfs).map_err(err("unmount stale rootfs"))?;
        fsutil::remove_tree(&upper).map_err(err("reset writable layer"))?;
        fsutil::remove_tree(&work).map_err(err("reset writable layer"))?;
        for d in [
            &rootfs,
            &upper,
            &work,
            &dir.join("state"),
            &dir.join("logs"),
            &dir.join("etc"),
        ] {
            std::fs::create_dir_all(d).map_err(err("create machine dirs"))?;
        }
        let mut lower = spec.layers.clone();
        if lower.is_empty() {
            let empty = dir.join("empty");
            std::fs::create_dir_all(&empty).map_err(err("create machine dirs"))?;
            lower.push(empty);
        }
        fsutil::mount_overlay(&lower, &upper, &work, &rootfs)
            .map_err(err("mount root filesystem"))?;

        let result = (|| {
            let secrets = self.write_secrets(spec).map_err(err("write secrets"))?;
            for f in &spec.files {
                // A secret file's place is held by an empty file, resolved
                // inside the root; the secret itself is bind-mounted over it
                // from the secrets tmpfs.
                let contents: &[u8] = if f.secret { b"" } else { &f.contents };
                fsutil::write_in_root(&rootfs, &f.path, contents, f.mode).map_err(|e| {
                    RuntimeError::InvalidSpec(format!("cannot write file {}: {e}", f.path))
                })?;
            }
            let passwd = fsutil::read_in_root(&rootfs, "etc/passwd").unwrap_or_default();
            let group = fsutil::read_in_root(&rootfs, "etc/group").unwrap_or_default();
            let who = hangar_core::user::resolve(&spec.process.user, &passwd, &group)
                .map_err(|e| RuntimeError::InvalidSpec(e.to_string()))?;
            let hosts = dir.join("etc/hosts");
            let hostname = dir.join("etc/hostname");
            std::fs::write(&hosts, hosts_file(spec)).map_err(err("write /etc/hosts"))?;
            let resolv = dir.join("etc/resolv.conf");
            let dns = spec
                .network
                .as_ref()
                .map(|n| &n.dns)
                .filter(|d| !d.is_empty());
            if let Some(servers) = dns {
                let mut text: String = servers
                    .iter()
                    .map(|s| format!("nameserver {s}\n"))
                    .collect();
                text.push_str("options ndots:0\n");
                std::fs::write(&resolv, text).map_err(err("write /etc/resolv.conf"))?;
            }
            std::fs::write(&hostname, format!("{}\n", spec.hostname))
                .map_err(err("write /etc/hostname"))?;
            // This start binds the current init into the machine: exec can
            // use its session role.
            std::fs::write(dir.join(exec::SESSION_MARKER), b"")
                .map_err(err("write the init marker"))?;
            let cgroup = self.cgroup(id);
            let config = bundle::config(
                spec,
                &who,
                &bundle::BundlePaths {
                    init: &self.cfg.init_path,
                    hosts: &hosts,
                    hostname: &hostname,
                    resolv: dns.map(|_| resolv.as_path()),
                    cgroup: &cgroup,
                    netns: &netns_path,
                    secret_env: secrets.env.as_deref(),
                    secret_files: &secrets.files,
                    volumes,
                },
                self.nofile,
            );
            std::fs::write(
                bundle_dir.join("config.json"),
                serde_json::to_vec(&config).unwrap_or_default(),
            )
            .map_err(err("write config.json"))?;
            Ok(bundle_dir.clone())
        })();
        if result.is_err() {
            let _ = fsutil::unmount(&rootfs);
        }
        result
    }

    /// The machine's directory and network namespace, wired to `net`:
    /// the part of a start that does not depend on the image.
    fn wire(
        &self,
        id: &MachineId,
        net: Option<&hangar_runtime::NetworkAttachment>,
    ) -> Result<PathBuf, RuntimeError> {
        let err = |op: &'static str| move |e: io::Error| failed(op, id, e);
        let dir = self.dir(id);
        std::fs::create_dir_all(&dir).map_err(err("create machine dirs"))?;
        let netns_path = dir.join("netns");
        netns::ensure(&netns_path).map_err(err("create network namespace"))?;
        if let Some(net) = net {
            self.connect(id, &netns_path, net)
                .map_err(err("connect to the private network"))?;
        }
        Ok(netns_path)
    }

    /// Wires the machine's namespace to its network's bridge, unless that
    /// is already done for these addresses (the namespace, and the link with
    /// it, lives as long as the machine).
    fn connect(
        &self,
        id: &MachineId,
        netns_path: &Path,
        net: &hangar_runtime::NetworkAttachment,
    ) -> io::Result<()> {
        let bridge = hangar_net::Bridge {
            name: net.bridge.clone(),
            gateway4: net.gateway4,
            prefix4: net.prefix4,
            gateway6: net.gateway6,
            prefix6: net.prefix6,
        };
        let link = hangar_net::Link {
            host_if: host_if(id),
            address4: net.address4,
            address6: net.address6,
        };
        let marker = self.dir(id).join("state/network");
        let want = format!("{bridge:?} {link:?}");
        if hangar_net::is_connected(&link, &bridge)
            && std::fs::read_to_string(&marker).is_ok_and(|have| have == want)
        {
            return Ok(());
        }
        let _ = std::fs::remove_file(&marker);
        hangar_net::connect(netns_path, &bridge, &link).map_err(io::Error::other)?;
        std::fs::create_dir_all(self.dir(id).join("state"))?;
        std::fs::write(&marker, want)
    }

    fn secrets_dir(&self, id: &MachineId) -> PathBuf {
        self.cfg.secrets_dir.join(id.as_str())
    }

    /// Writes the spec's secrets (environment and secret files) to the
    /// machine's directory on the secrets tmpfs, readable by root only.
    fn write_secrets(&self, spec: &WorkloadSpec) -> io::Result<bundle::SecretMounts> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let dir = self.secrets_dir(&spec.id);
        fsutil::remove_tree(&dir)?;
        let mut out = bundle::SecretMounts::default();
        let files: Vec<_> = spec.files.iter().filter(|f| f.secret).collect();
        if spec.secret_env.0.is_empty() && files.is_empty() {
            return Ok(out);
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        let write = |path: &Path, data: &[u8], mode: u32| -> io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(path)?;
            f.write_all(data)
        };
        if !spec.secret_env.0.is_empty() {
            let mut data = Vec::new();
            for (k, v) in &spec.secret_env.0 {
                data.extend_from_slice(format!("{k}={v}").as_bytes());
                data.push(0);
            }
            let path = dir.join("env");
            write(&path, &data, 0o400)?;
            out.env = Some(path);
        }
        for (n, f) in files.into_iter().enumerate() {
            let path = dir.join(format!("file-{n}"));
            write(&path, &f.contents, f.mode & 0o7777)?;
            // The mode again: create_new applied the umask.
            std::fs::set_permissions(
                &path,
                std::os::unix::fs::PermissionsExt::from_mode(f.mode & 0o7777),
            )?;
            out.files.push((path, f.path.clone()));
        }
        Ok(out)
    }

    fn lock_path(&self, id: &MachineId) -> PathBuf {
        self.dir(id).join("state/shim.lock")
    }

    /// Takes the machine's shim lock for a new shim; fails while another
    /// shim of the machine lives.
    fn lock_shim(&self, id: &MachineId) -> Result<std::fs::File, RuntimeError> {
        let path = self.lock_path(id);
        let open = || {
            std::fs::create_dir_all(self.dir(id).join("state"))?;
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
        };
        let f = open().map_err(|e| failed("start", id, format!("shim lock: {e}")))?;
        if !try_flock(&f) {
            return Err(failed(
                "start",
                id,
                "another supervisor of this machine is alive",
            ));
        }
        Ok(f)
    }

    /// Whether a shim of the machine lives (holds its lock), whether or not
    /// it has written its pid yet.
    fn shim_lock_held(&self, id: &MachineId) -> bool {
        lock_held(&self.lock_path(id))
    }

    /// The machine's shim, if one lives: one spawned by a `hangard` that died
    /// an instant later may not have written its pid yet, so while its lock
    /// is held this waits (bounded) for the pid.
    async fn live_shim(&self, id: &MachineId) -> Option<Shim> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(shim) = self.adopt_shim(id) {
                return Some(shim);
            }
            if !self.shim_lock_held(id) || tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Adopts the machine's shim if it still runs (same pid, same start time).
    fn adopt_shim(&self, id: &MachineId) -> Option<Shim> {
        adopt(&self.dir(id).join("state/shim.pid"))
    }

    /// Spawns the machine's shim for the bundle (a standby one: the
    /// container created, waiting for its start); returns it and its
    /// stdout's lines, where it reports.
    async fn spawn_shim(
        &self,
        id: &MachineId,
        engine: &OciEngine,
        bundle_dir: &Path,
        standby: bool,
    ) -> Result<(Shim, ShimReports), RuntimeError> {
        let dir = self.dir(id);

        // Locked from before the spawn until the shim exits (the shim keeps
        // the lock when this copy closes): see `live_shim`.
        let lock = self.lock_shim(id)?;
        let lock_raw = lock.as_raw_fd();
        // No shim lives (the lock is ours), so a container of this id the
        // runtime still knows was left by one that was killed before it
        // could delete it (a standby dismissed by a hangard that died
        // between killing its shim and deleting its container): it goes, or
        // the new one's create finds it there.
        if self.engine_of(id).knows(id) {
            tracing::info!(machine = %id, "deleting a container its ended supervisor left");
            self.delete_unheld(id).await;
        }
        // Which runtime the container is made with, for what follows
        // (signals, exec, its end), also after a restart of hangard.
        let tmp = dir.join(format!("{ENGINE_FILE}.tmp"));
        std::fs::write(&tmp, engine.flavor.binary())
            .and_then(|()| std::fs::rename(&tmp, dir.join(ENGINE_FILE)))
            .map_err(|e| failed("start", id, format!("recording the runtime: {e}")))?;
        let log_max = self.cfg.log_max_bytes.to_string();
        let lock_fd = SHIM_LOCK_FD.to_string();
        let (state, log, oom) = (
            dir.join("state"),
            dir.join("logs/machine.log"),
            self.oom_file(id),
        );
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "shim".as_ref(),
            "--id".as_ref(),
            id.as_str().as_ref(),
            "--runtime".as_ref(),
            engine.path.as_os_str(),
            "--runtime-root".as_ref(),
            engine.root.as_os_str(),
            "--bundle".as_ref(),
            bundle_dir.as_os_str(),
            "--state-dir".as_ref(),
            state.as_os_str(),
            "--log".as_ref(),
            log.as_os_str(),
            "--log-max-bytes".as_ref(),
            log_max.as_ref(),
            "--oom-file".as_ref(),
            oom.as_os_str(),
            "--lock-fd".as_ref(),
            lock_fd.as_ref(),
        ];
        if standby {
            args.push("--standby".as_ref());
        }
        if !engine.flavor.preserves_fds() {
            args.push("--no-status-fd".as_ref());
        }
        for f in &engine.flags {
            args.push("--runtime-flag".as_ref());
            args.push(f.as_ref());
        }
        // Not through `Command`: its fd placement forks hangard (see spawn.rs).
        let child = spawn::spawn(&self.cfg.init_path, &args, &[(lock_raw, SHIM_LOCK_FD)])
            .map_err(|e| failed("start", id, format!("spawning the shim: {e}")))?;
        drop(lock);
        // Our child: it is reaped when waited on, or when its handle goes.
        let pidfd = pidfd_open(child.pid).map_err(|e| failed("start", id, e))?;
        let shim = Shim {
            pid: child.pid,
            pidfd,
        };
        let stdout = tokio::net::unix::pipe::Receiver::from_owned_fd(child.stdout)
            .map_err(|e| failed("start", id, format!("the shim's stdout: {e}")))?;
        // A stopped machine's standby keeps this reader until its start:
        // sized for the shim's one-line reports, not tokio's 8 KiB (a
        // longer line still reads whole).
        Ok((
            shim,
            tokio::io::BufReader::with_capacity(REPORT_BUFFER, stdout).lines(),
        ))
    }

    fn take_standby(&self, id: &MachineId) -> Option<Standby> {
        self.standbys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
    }

    /// Whether a standby can start `spec`: made for exactly it, its shim
    /// alive, and no volume of it waiting to grow (which needs it
    /// detached).
    fn standby_fits(&self, standby: &Standby, spec: &WorkloadSpec) -> bool {
        standby.hash == spec_hash(spec)
            && proc_start_time(standby.shim.pid).is_some()
            && !spec.volumes.iter().any(|v| {
                self.cfg
                    .volumes
                    .as_ref()
                    .is_some_and(|h| h.growth_pending(&v.id))
            })
    }

    /// Lets a standby's container go; returns the runtime's start time (ms).
    async fn release(&self, id: &MachineId, mut standby: Standby) -> Result<f64, RuntimeError> {
        let go = self.dir(id).join("state/go");
        let write = || -> io::Result<()> {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            // Non-blocking: no reader (a dead shim) fails at once.
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&go)?;
            f.write_all(b"start\n")
        };
        if let Err(e) = write() {
            self.dismiss(id, standby).await;
            return Err(failed("start", id, format!("the standby is gone: {e}")));
        }
        let report = read_report(&mut standby.reports).await;
        if report.get("pid").and_then(|p| p.as_i64()).is_some() {
            self.set_shim(id, Some(standby.shim));
            return Ok(report
                .get("runtime_ms")
                .and_then(|v| v.as_f64())
                .unwrap_or_default());
        }
        let reason = report_error(&report, "the standby ended without starting the container");
        wait_pidfd_for(&standby.shim, Duration::from_secs(5)).await;
        Err(failed("start", id, reason))
    }

    /// Ends a standby: its shim is killed (it only waits) and its container
    /// deleted. Its bundle, never run, stays prepared.
    async fn dismiss(&self, id: &MachineId, standby: Standby) {
        self.end_standby_shim(id, &standby.shim).await;
    }

    async fn end_standby_shim(&self, id: &MachineId, shim: &Shim) {
        kill_pidfd(&shim.pidfd);
        wait_pidfd_for(shim, Duration::from_secs(5)).await;
        self.delete_unheld(id).await;
    }

    /// Deletes the machine's container, which no shim holds (its shim was
    /// ended, or none lives), and the state of a standby.
    async fn delete_unheld(&self, id: &MachineId) {
        let _ = self
            .runtime_cmd(id)
            .arg("delete")
            .arg("--force")
            .arg(id.as_str())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
        for f in [
            "state/standby",
            "state/go",
            "state/shim.pid",
            "state/container.pid",
        ] {
            let _ = std::fs::remove_file(self.dir(id).join(f));
        }
    }

    /// A standby left by an earlier hangard: its shim, if it still waits.
    fn orphan_standby(&self, id: &MachineId) -> Option<Shim> {
        if !self.dir(id).join("state/standby").exists() {
            return None;
        }
        self.adopt_shim(id)
    }

    /// Lets go of the host's mount of the machine's root filesystem once
    /// its container holds its own (crun and runc pivot into a copy, in a
    /// mount namespace of its own that nothing propagates to): every mount
    /// of the host is copied by each container made after, so a host that
    /// kept one per machine would make each start slower than the last.
    /// The prepared bundle is spent, so a later start prepares anew.
    fn release_rootfs(&self, id: &MachineId, flavor: OciFlavor) {
        if flavor == OciFlavor::Runsc {
            return;
        }
        self.prepared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        let rootfs = self.dir(id).join("bundle/rootfs");
        if let Err(e) = fsutil::unmount(&rootfs) {
            tracing::debug!(machine = %id, error = %e, "cannot unmount the host's root mount");
        }
    }

    /// A pidfd of the machine's container init, if it runs: the pid the
    /// runtime recorded, proven to be the machine's own process (in its
    /// cgroup, read while the pidfd shows it alive, so that a reused pid is
    /// never mistaken for it).
    fn container_init(&self, id: &MachineId) -> Option<OwnedFd> {
        let text = std::fs::read_to_string(self.dir(id).join("state/container.pid")).ok()?;
        let pid: i32 = text.trim().parse().ok().filter(|p| *p > 0)?;
        let fd = pidfd_open(pid).ok()?;
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let own = self.cgroup(id);
        let own = own.trim_matches('/');
        let inside = cgroups.lines().any(|l| {
            let path = l.splitn(3, ':').nth(2).unwrap_or("").trim_matches('/');
            path == own || path.strip_prefix(own).is_some_and(|r| r.starts_with('/'))
        });
        (inside && !pidfd_ended(&fd)).then_some(fd)
    }

    fn read_exit(&self, id: &MachineId) -> Option<ExitInfo> {
        let b = std::fs::read(self.dir(id).join("state/exit.json")).ok()?;
        serde_json::from_slice(&b).ok()
    }
}

/// The buffer of the reader of a shim's reports.
const REPORT_BUFFER: usize = 512;

type ShimReports = tokio::io::Lines<tokio::io::BufReader<tokio::net::unix::pipe::Receiver>>;

/// The shim's next report line (a minute at most; null if none).
async fn read_report(reports: &mut ShimReports) -> serde_json::Value {
    match tokio::time::timeout(Duration::from_secs(60), reports.next_line()).await {
        Ok(Ok(Some(line))) => serde_json::from_str(&line).unwrap_or_default(),
        _ => serde_json::Value::Null,
    }
}

fn report_error(report: &serde_json::Value, otherwise: &str) -> String {
    report
        .get("error")
        .and_then(|e| e.as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| otherwise.to_owned())
}

/// The fd the shim finds its lock on.
const SHIM_LOCK_FD: i32 = 4;

/// Names the runtime a machine's container was made with.
const ENGINE_FILE: &str = "state/runtime";

/// A command of `engine`.
fn engine_cmd(engine: &OciEngine) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(&engine.path);
    c.arg("--root").arg(&engine.root).args(&engine.flags);
    c.stdin(Stdio::null());
    c
}

/// `flock(LOCK_EX | LOCK_NB)`: true if taken (or already ours).
pub fn try_flock(f: &std::fs::File) -> bool {
    // SAFETY: flock on an fd we own.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

fn spec_hash(spec: &WorkloadSpec) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    spec.hash(&mut h);
    h.finish()
}

/// The start time of a live process (field 22 of its `stat`); none for a
/// process that has ended, zombies included: a shim that exited while no
/// `hangard` was there to reap it stays a zombie until the host's init does,
/// and adopting it would take its last run's end for the current one's.
pub fn proc_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace();
    if matches!(fields.next()?, "Z" | "X" | "x") {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// The shim recorded in `pid_file` (`PID START_TIME`, as shims write it)
/// if it still runs: same pid, same start time.
pub fn adopt(pid_file: &Path) -> Option<Shim> {
    let text = std::fs::read_to_string(pid_file).ok()?;
    let mut it = text.split_whitespace();
    let pid: i32 = it.next()?.parse().ok()?;
    let start: u64 = it.next()?.parse().ok()?;
    if proc_start_time(pid)? != start {
        return None;
    }
    let pidfd = pidfd_open(pid).ok()?;
    // The pid may have ended between the check and the open.
    (proc_start_time(pid)? == start).then_some(Shim { pid, pidfd })
}

/// Whether someone (a live shim) holds the `flock` on `lock`.
pub fn lock_held(lock: &Path) -> bool {
    match std::fs::File::open(lock) {
        Ok(f) => !try_flock(&f),
        Err(_) => false,
    }
}

/// Sends signal `sig` to the process behind `pidfd`.
fn send_signal(pidfd: &OwnedFd, sig: i32) -> io::Result<()> {
    // SAFETY: pidfd_send_signal on a pidfd we own, no siginfo, no flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends SIGKILL to the process behind `pidfd` (nothing if it has ended).
pub fn kill_pidfd(pidfd: &OwnedFd) {
    let _ = send_signal(pidfd, libc::SIGKILL);
}

/// Makes `cmd`'s process get our fd `fd` as its fd `target` (without
/// close-on-exec): how a shim is handed its locked `shim.lock`.
pub fn pass_fd(cmd: &mut tokio::process::Command, fd: i32, target: i32) {
    // SAFETY: dup2 and fcntl are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself would keep close-on-exec set.
            let r = if fd == target {
                libc::fcntl(fd, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, target)
            };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A pidfd of `pid`.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: the pidfd_open syscall takes a pid and flags and returns an fd.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Waits until the process behind `pidfd` has ended, then reaps it if it
/// is our child.
pub async fn wait_pidfd(shim: &Shim) -> io::Result<()> {
    if ended(shim) {
        reap(shim);
        return Ok(());
    }
    let dup = shim.pidfd.try_clone()?;
    // SAFETY: `dup` is an OwnedFd that stays open, unchanged, for as long as
    // the AsyncFd owns it.
    let afd = unsafe { AsyncFd::register_with_interest(dup, tokio::io::Interest::READABLE) }
        .map_err(|e| io::Error::other(e.to_string()))?;
    let _guard = afd.readable().await?;
    reap(shim);
    Ok(())
}

/// Whether a shim has ended, without waiting (a pidfd is readable once
/// its process has exited).
fn ended(shim: &Shim) -> bool {
    pidfd_ended(&shim.pidfd)
}

/// Whether the process behind `pidfd` has ended, without waiting.
fn pidfd_ended(pidfd: &OwnedFd) -> bool {
    let mut fds = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one pollfd that lives across the call, timeout 0.
    let n = unsafe { libc::poll(&mut fds, 1, 0) };
    n == 1 && fds.revents & (libc::POLLIN | libc::POLLHUP) != 0
}

/// Reaps an ended shim if it is our child (through its pidfd: never
/// another process that took its pid).
fn reap(shim: &Shim) {
    // SAFETY: a zeroed siginfo_t is valid for waitid to fill.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid on our pidfd with WNOHANG; ECHILD (not our child, or
    // reaped already) is fine.
    let r = unsafe {
        libc::waitid(
            libc::P_PIDFD,
            shim.pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG,
        )
    };
    if r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // A kernel before 5.4 (no P_PIDFD): by pid, as the shim has ended
        // and is not reaped yet (its pidfd is readable), so its pid is
        // still its own.
        let mut status = 0;
        // SAFETY: waitpid with WNOHANG on a pid; ECHILD is fine.
        unsafe { libc::waitpid(shim.pid, &mut status, libc::WNOHANG) };
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        // A shim of ours that ended unwaited leaves no zombie behind.
        if ended(self) {
            reap(self);
        }
    }
}

/// Waits for a shim's end for at most `timeout`; true if it ended.
pub async fn wait_pidfd_for(shim: &Shim, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, wait_pidfd(shim)).await,
        Ok(Ok(()))
    )
}

#[async_trait::async_trait]
impl Runtime for OciRuntime {
    fn name(&self) -> &'static str {
        self.cfg.engines[0].flavor.binary()
    }

    fn supports(&self, isolation: Isolation) -> Result<(), String> {
        match OciFlavor::of(isolation) {
            Some(f) if self.cfg.engines.iter().any(|e| e.flavor == f) => Ok(()),
            _ => Err(self.unsupported(isolation)),
        }
    }

    fn holds(&self, id: &MachineId) -> bool {
        self.dir(id).exists()
    }

    async fn start(&self, spec: &WorkloadSpec) -> Result<(), RuntimeError> {
        let id = &spec.id;
        if self.shim(id).is_some() {
            return Err(failed("start", id, "a workload is already running"));
        }
        let t0 = Instant::now();
        if let Some(standby) = self.take_standby(id) {
            if self.standby_fits(&standby, spec) {
                match self.release(id, standby).await {
                    Ok(runtime_ms) => {
                        tracing::debug!(
                            machine = %id,
                            runtime_ms,
                            total_ms = ms(t0.elapsed()),
                            "container started from its standby"
                        );
                        return Ok(());
                    }
                    Err(e) => {
                        tracing::warn!(machine = %id, error = %e, "the standby did not start; starting afresh");
                    }
                }
            } else {
                self.dismiss(id, standby).await;
            }
        }
        let volumes = self.attach_volumes(spec).await?;
        let engine = self.engine_for(spec)?;
        let bundle_dir = blocking(|| self.prepare(spec, &volumes))?;
        let prepared = t0.elapsed();
        let (shim, mut reports) = self.spawn_shim(id, engine, &bundle_dir, false).await?;
        let spawned = t0.elapsed();
        let report = read_report(&mut reports).await;
        drop(reports);
        if report.get("pid").and_then(|p| p.as_i64()).is_some() {
            self.release_rootfs(id, engine.flavor);
            self.set_shim(id, Some(shim));
            tracing::debug!(
                machine = %id,
                prepare_ms = ms(prepared),
                spawned_ms = ms(spawned),
                runtime_ms = report.get("runtime_ms").and_then(|v| v.as_f64()).unwrap_or_default(),
                total_ms = ms(t0.elapsed()),
                "container started"
            );
            return Ok(());
        }
        let reason = report_error(&report, "the shim ended without starting the container");
        wait_pidfd_for(&shim, Duration::from_secs(5)).await;
        let _ = fsutil::unmount(&bundle_dir.join("rootfs"));
        Err(failed("start", id, reason))
    }

    async fn prewarm(&self, spec: &WorkloadSpec) -> Result<(), RuntimeError> {
        let id = &spec.id;
        if self.shim(id).is_some() {
            return Ok(());
        }
        if let Some(standby) = self.take_standby(id) {
            if self.standby_fits(&standby, spec) {
                self.standbys
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id.clone(), standby);
                return Ok(());
            }
            self.dismiss(id, standby).await;
        }
        let t0 = Instant::now();
        let volumes = self.attach_volumes(spec).await?;
        let bundle_dir = blocking(|| self.prepare(spec, &volumes))?;
        let prepared = t0.elapsed();
        let hash = spec_hash(spec);
        self.prepared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), hash);
        if !self.cfg.precreate {
            return Ok(());
        }
        let engine = self.engine_for(spec)?;
        let (shim, mut reports) = self.spawn_shim(id, engine, &bundle_dir, true).await?;
        let report = read_report(&mut reports).await;
        if report.get("created").and_then(|c| c.as_bool()) == Some(true) {
            self.release_rootfs(id, engine.flavor);
            tracing::debug!(
                machine = %id,
                runtime_ms = report.get("runtime_ms").and_then(|v| v.as_f64()).unwrap_or_default(),
                prepare_ms = ms(prepared),
                total_ms = ms(t0.elapsed()),
                "next container created"
            );
            self.standbys
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(
                    id.clone(),
                    Standby {
                        shim,
                        reports,
                        hash,
                    },
                );
            return Ok(());
        }
        // Its bundle stays prepared; the start makes the container then.
        let reason = report_error(&report, "the shim ended without creating the container");
        self.end_standby_shim(id, &shim).await;
        let _ = std::fs::remove_file(self.dir(id).join("state/exit.json"));
        Err(failed("prewarm", id, reason))
    }

    async fn prepare_network(
        &self,
        id: &MachineId,
        _isolation: Option<Isolation>,
        net: &hangar_runtime::NetworkAttachment,
    ) -> Result<(), RuntimeError> {
        if self.shim(id).is_some() {
            return Ok(());
        }
        blocking(|| self.wire(id, Some(net))).map(drop)
    }

    async fn connect_network(
        &self,
        id: &MachineId,
        net: &hangar_runtime::NetworkAttachment,
    ) -> Result<(), RuntimeError> {
        let netns = self.dir(id).join("netns");
        if !netns.exists() {
            return Ok(());
        }
        self.connect(id, &netns, net)
            .map_err(|e| failed("connect to the private network", id, e))
    }

    async fn freeze(&self, id: &MachineId) -> Result<(), RuntimeError> {
        self.set_frozen(id, true).await
    }

    async fn thaw(&self, id: &MachineId) -> Result<(), RuntimeError> {
        if !self.is_frozen(id) {
            return Ok(());
        }
        self.set_frozen(id, false).await
    }

    async fn exec(&self, id: &MachineId, req: &ExecRequest) -> Result<ExecOutput, RuntimeError> {
        exec::run(self, id, req).await
    }

    async fn exec_tty(
        &self,
        id: &MachineId,
        req: &hangar_runtime::TtyRequest,
    ) -> Result<Box<dyn hangar_runtime::Terminal>, RuntimeError> {
        tty::run(self, id, req).await
    }

    async fn processes(&self, id: &MachineId) -> Result<Vec<ProcessInfo>, RuntimeError> {
        if self.shim(id).is_none() {
            return Err(RuntimeError::NotRunning(id.clone()));
        }
        if self.engine_of(id).flavor == OciFlavor::Runsc {
            // The cgroup holds the sandbox's own processes; gVisor's kernel
            // knows the machine's.
            let out = self
                .runtime_cmd(id)
                .arg("ps")
                .arg(id.as_str())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .output()
                .await
                .map_err(|e| failed("ps", id, e))?;
            if !out.status.success() {
                return Err(failed(
                    "ps",
                    id,
                    String::from_utf8_lossy(&out.stderr).trim(),
                ));
            }
            return Ok(procs::parse_runsc_ps(&String::from_utf8_lossy(&out.stdout)));
        }
        let dir = self.cgroup_dir("memory").join(id.as_str());
        let pids = procs::cgroup_pids(&dir);
        Ok(tokio::task::spawn_blocking(move || procs::describe(&pids))
            .await
            .unwrap_or_default())
    }

    fn usage(&self, id: &MachineId) -> Option<hangar_runtime::Usage> {
        self.shim(id)?;
        let read = |controller: &str, name: &str| {
            std::fs::read_to_string(self.cgroup_dir(controller).join(id.as_str()).join(name)).ok()
        };
        let memory_bytes = ["memory.usage_in_bytes", "memory.current"]
            .iter()
            .find_map(|n| read("memory", n)?.trim().parse::<u64>().ok())?;
        // cgroup v1: nanoseconds in cpuacct.usage; v2: usage_usec in cpu.stat.
        let cpu_seconds = match read("cpuacct", "cpuacct.usage") {
            Some(ns) => ns.trim().parse::<u64>().ok()? as f64 / 1e9,
            None => {
                let stat = read("cpu", "cpu.stat")?;
                let us = stat
                    .lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))?
                    .trim()
                    .parse::<u64>()
                    .ok()?;
                us as f64 / 1e6
            }
        };
        // The host's end of its veth: what the host sends, the machine
        // receives.
        let stat = |name: &str| {
            std::fs::read_to_string(format!("/sys/class/net/{}/statistics/{name}", host_if(id)))
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        Some(hangar_runtime::Usage {
            cpu_seconds,
            memory_bytes,
            net_rx_bytes: stat("tx_bytes"),
            net_tx_bytes: stat("rx_bytes"),
        })
    }

    async fn memory(&self, id: &MachineId) -> Result<MemoryInfo, RuntimeError> {
        if self.shim(id).is_none() {
            return Err(RuntimeError::NotRunning(id.clone()));
        }
        let dir = self.cgroup_dir("memory").join(id.as_str());
        let read = |names: &[&str]| {
            names.iter().find_map(|n| {
                std::fs::read_to_string(dir.join(n))
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
        };
        let limit = read(&["memory.limit_in_bytes", "memory.max"]).unwrap_or(0);
        let usage = read(&["memory.usage_in_bytes", "memory.current"]).unwrap_or(0);
        Ok(MemoryInfo {
            limit_mb: limit >> 20,
            usage_mb: usage >> 20,
        })
    }

    async fn set_memory_limit(&self, id: &MachineId, limit_mb: u64) -> Result<(), RuntimeError> {
        let bytes = (limit_mb << 20).to_string();
        if self.engine_of(id).flavor == OciFlavor::Runsc {
            // runsc has no `update`: the sandbox's cgroup takes the limit.
            if self.shim(id).is_none() {
                return Err(RuntimeError::NotRunning(id.clone()));
            }
            let dir = self.cgroup_dir("memory").join(id.as_str());
            let file = ["memory.limit_in_bytes", "memory.max"]
                .into_iter()
                .map(|n| dir.join(n))
                .find(|p| p.exists())
                .ok_or_else(|| failed("memory limit", id, "the machine has no memory cgroup"))?;
            return std::fs::write(file, &bytes).map_err(|e| failed("memory limit", id, e));
        }
        self.runtime_op(id, "memory limit", &["update", "--memory", &bytes])
            .await
    }

    async fn signal(&self, id: &MachineId, signal: Signal) -> Result<(), RuntimeError> {
        let Some(shim) = self.shim(id) else {
            return Err(RuntimeError::NotRunning(id.clone()));
        };
        // crun and runc signal the container's init and nothing more: so
        // does this, through a pidfd, without spawning the runtime (a fork
        // of hangard and an exec of the runtime, per stop).
        if self.engine_of(id).flavor != OciFlavor::Runsc {
            if let Some(init) = self.container_init(id) {
                if send_signal(&init, signal.number()).is_ok() {
                    return Ok(());
                }
                if ended(&shim) || pidfd_ended(&init) {
                    return Err(RuntimeError::NotRunning(id.clone()));
                }
            }
        }
        let out = self
            .runtime_cmd(id)
            .arg("kill")
            .arg(id.as_str())
            .arg(signal.name())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .await
            .map_err(|e| failed("signal", id, e))?;
        if out.status.success() {
            Ok(())
        } else {
            // Most often the container ended an instant ago.
            Err(RuntimeError::NotRunning(id.clone()))
        }
    }

    async fn wait(&self, id: &MachineId) -> Result<ExitInfo, RuntimeError> {
        let shim = self
            .shim(id)
            .ok_or_else(|| RuntimeError::NotRunning(id.clone()))?;
        wait_pidfd(&shim).await.map_err(|e| failed("wait", id, e))?;
        Ok(self.read_exit(id).unwrap_or_else(|| ExitInfo {
            exit_code: -1,
            exited_at_ms: now_ms(),
            error: Some(
                "the machine's supervisor ended without recording how the machine ended".into(),
            ),
            ..ExitInfo::default()
        }))
    }

    async fn observe(&self, id: &MachineId) -> Result<Observed, RuntimeError> {
        // A container an earlier hangard made ahead, never started: the
        // machine is not running; the next prewarm or start makes another.
        if let Some(shim) = self.orphan_standby(id) {
            self.end_standby_shim(id, &shim).await;
        } else if self.dir(id).join("state/standby").exists() && !self.shim_lock_held(id) {
            // Its shim was killed before it deleted the container (with the
            // hangard that dismissed it): the container still waits.
            self.delete_unheld(id).await;
        }
        if let Some(shim) = self.live_shim(id).await {
            self.set_shim(id, Some(shim));
            return Ok(Observed::Running);
        }
        if let Some(info) = self.read_exit(id) {
            return Ok(Observed::Exited(info));
        }
        Ok(Observed::Absent)
    }

    async fn cleanup(&self, id: &MachineId) -> Result<(), RuntimeError> {
        let t0 = Instant::now();
        let dir = self.dir(id);
        let cgroup = cgroups::MachineCgroup::new(&self.cgroup(id));
        if let Some(standby) = self.take_standby(id) {
            self.dismiss(id, standby).await;
        }
        if let Some(shim) = self.orphan_standby(id) {
            self.end_standby_shim(id, &shim).await;
        }
        // A shim that has ended (the machine exited, or was stopped) has
        // nothing left to kill (its handle reaps it when dropped below);
        // stray processes in its cgroup go below.
        let live = self
            .shim(id)
            .or_else(|| self.adopt_shim(id).map(Arc::new))
            .filter(|s| !ended(s));
        if let Some(shim) = live {
            // SIGKILL reaches frozen processes only once they thaw.
            if self.is_frozen(id) {
                let _ = self
                    .runtime_cmd(id)
                    .arg("resume")
                    .arg(id.as_str())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .await;
            }
            let _ = self
                .runtime_cmd(id)
                .arg("kill")
                .arg(id.as_str())
                .arg("KILL")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await;
            // The init's death takes its namespace with it, but slowly when
            // thousands of processes fork: end them all now.
            let _ = cgroup.kill_all(Duration::from_secs(10)).await;
            if !wait_pidfd_for(&shim, Duration::from_secs(10)).await {
                kill_pidfd(&shim.pidfd);
                wait_pidfd_for(&shim, Duration::from_secs(5)).await;
            }
        }
        let killed = t0.elapsed();
        self.set_shim(id, None);
        self.prepared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        // The shim deletes the container when it ends normally; only a
        // container the runtime still knows about needs deleting here.
        if self.engine_of(id).knows(id) {
            let _ = self
                .runtime_cmd(id)
                .arg("delete")
                .arg("--force")
                .arg(id.as_str())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await;
        }
        // Nothing of the machine may outlive it: every process in its cgroup
        // is killed before the machine counts as stopped or destroyed. The
        // cgroup itself stays, empty and thawed, for the next container
        // (made again, it would cost the kernel work that grows with the
        // cgroups of the host); destroy removes it.
        if cgroup.exists() {
            cgroup
                .kill_all(Duration::from_secs(30))
                .await
                .map_err(|e| failed("cleanup", id, e))?;
            cgroup
                .remove_below()
                .map_err(|e| failed("cleanup", id, e))?;
            if self.is_frozen(id) {
                cgroup
                    .set_frozen(false)
                    .await
                    .map_err(|e| failed("cleanup", id, e))?;
            }
        }
        let deleted = t0.elapsed();
        let rootfs = dir.join("bundle/rootfs");
        fsutil::unmount(&rootfs).map_err(|e| failed("cleanup", id, e))?;
        if fsutil::is_mounted(&rootfs) {
            return Err(failed("cleanup", id, "root filesystem is still mounted"));
        }
        let unmounted = t0.elapsed();
        for d in ["upper", "work"] {
            fsutil::remove_tree(&dir.join(d)).map_err(|e| failed("cleanup", id, e))?;
        }
        for f in ["state/exit.json", "state/container.pid", "state/shim.pid"] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        fsutil::remove_tree(&self.secrets_dir(id)).map_err(|e| failed("cleanup", id, e))?;
        tracing::debug!(
            machine = %id,
            killed_ms = ms(killed),
            deleted_ms = ms(deleted),
            unmounted_ms = ms(unmounted),
            total_ms = ms(t0.elapsed()),
            "cleaned up"
        );
        Ok(())
    }

    async fn destroy(&self, id: &MachineId) -> Result<(), RuntimeError> {
        self.cleanup(id).await?;
        cgroups::MachineCgroup::new(&self.cgroup(id))
            .remove()
            .map_err(|e| failed("destroy", id, e))?;
        let dir = self.dir(id);
        // Unmount its volumes from the host; their data stays.
        if let (Some(host), Ok(list)) = (
            &self.cfg.volumes,
            std::fs::read_to_string(dir.join("state/volumes")),
        ) {
            for v in list.lines().filter(|l| !l.is_empty()) {
                host.detach(v).await.map_err(|e| failed("destroy", id, e))?;
            }
        }
        // The namespace goes first: the kernel then removes the veth pair
        // with it, in the background and batched with other namespaces',
        // where `ip link del` waits for it (about 20 ms, under the lock
        // every machine's network wiring takes). What the kernel has not
        // removed within a while is removed by hand.
        let link = host_if(id);
        let bridge = hangar_net::bridge_of(&link);
        netns::remove(&dir.join("netns")).map_err(|e| failed("destroy", id, e))?;
        let deadline = tokio::time::Instant::now() + LINK_GONE_WAIT;
        while hangar_net::link_exists(&link) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        blocking(|| {
            hangar_net::disconnect(&link)?;
            match bridge {
                Some(bridge) => hangar_net::remove_bridge_if_empty(&bridge),
                None => Ok(()),
            }
        })
        .map_err(|e| failed("destroy", id, e))?;
        fsutil::remove_tree(&dir).map_err(|e| failed("destroy", id, e))
    }

    fn log_path(&self, id: &MachineId) -> Option<PathBuf> {
        Some(self.dir(id).join("logs/machine.log"))
    }
}

/// A duration in milliseconds, for timings in logs.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs `f`, which blocks (it runs tools, mounts, waits on the network
/// lock), without stalling the other tasks of a multi-threaded runtime:
/// they move to another worker meanwhile.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// How long destroy waits for the kernel to remove a machine's veth pair
/// with its namespace before removing it itself.
const LINK_GONE_WAIT: Duration = Duration::from_secs(2);

/// The host end of a machine's veth pair: `hv` and the last 13 hex digits
/// of its id (interface names have at most 15 bytes).
fn host_if(id: &MachineId) -> String {
    let s = id.as_str();
    format!("hv{}", &s[s.len().saturating_sub(13)..])
}

/// The machine's `/etc/hosts`: its hostname on its private IPv4 address
/// and `fly-local-6pn` on its 6PN address, as on Fly.
pub fn hosts_file(spec: &WorkloadSpec) -> String {
    let mut s = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    match &spec.network {
        Some(n) => {
            s.push_str(&format!("{}\tfly-local-6pn\n", n.address6));
            s.push_str(&format!("{}\t{}\n", n.address4, spec.hostname));
        }
        None => s.push_str(&format!("127.0.1.1\t{}\n", spec.hostname)),
    }
    s
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime(dir: &Path) -> OciRuntime {
        let init = dir.join("hangar-init");
        std::fs::write(&init, b"").unwrap();
        OciRuntime::new(OciConfig {
            engines: vec![OciEngine::new(
                OciFlavor::Crun,
                "/bin/false".into(),
                &dir.join("run"),
            )],
            init_path: init,
            machines_dir: dir.join("machines"),
            log_max_bytes: 1 << 20,
            cgroup_parent: "/hangar-unit".into(),
            secrets_dir: dir.join("secrets"),
            volumes: None,
            precreate: true,
        })
        .unwrap()
    }

    /// A shim spawned by a hangard that died before the shim wrote its pid
    /// holds its lock: the next hangard waits for the pid and adopts it
    /// instead of finding nothing and starting a second one.
    #[tokio::test]
    async fn a_locked_shim_without_a_pid_yet_is_waited_for_and_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(dir.path());
        let id: MachineId = "0123456789abcd".parse().unwrap();
        assert_eq!(rt.observe(&id).await.unwrap(), Observed::Absent);

        let lock = rt.lock_shim(&id).unwrap();
        assert!(rt.lock_shim(&id).is_err(), "a second shim must not start");
        let pid_file = rt.dir(&id).join("state/shim.pid");
        let me = std::process::id() as i32;
        let line = format!("{me} {}\n", proc_start_time(me).unwrap());
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            std::fs::write(pid_file, line).unwrap();
        });
        assert_eq!(rt.observe(&id).await.unwrap(), Observed::Running);
        writer.await.unwrap();
        drop(lock);

        // A zombie (a shim that ended with nobody to reap it) is not alive.
        let mut zombie = std::process::Command::new("true").spawn().unwrap();
        let zpid = zombie.id() as i32;
        hangar_test_utils::wait_until_sync(Duration::from_secs(5), || {
            std::fs::read_to_string(format!("/proc/{zpid}/stat")).is_ok_and(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            })
        });
        assert_eq!(proc_start_time(zpid), None);
        let _ = zombie.wait();

        // Without a lock holder and without a live pid there is nothing.
        let other: MachineId = "abcdef01234567".parse().unwrap();
        std::fs::create_dir_all(rt.dir(&other).join("state")).unwrap();
        std::fs::write(rt.dir(&other).join("state/shim.pid"), "1 1\n").unwrap();
        let t0 = Instant::now();
        assert_eq!(rt.observe(&other).await.unwrap(), Observed::Absent);
        assert!(t0.elapsed() < Duration::from_secs(1));
    }
}
