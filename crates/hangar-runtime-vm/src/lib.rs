//! MicroVM machines: each machine a `qemu-system-x86_64 -M microvm` guest
//! with its own kernel, behind the same [`Runtime`] trait as containers.
//!
//! ```text
//! hangard ── VmRuntime ──spawn──► hangar-init vmshim ──► qemu -M microvm
//!                │                     │   ▲                 ├─ kernel + initramfs (/init = hangar-init)
//!                │  ctl.sock requests  │   │ agent.sock      ├─ virtio-blk: disk.qcow2 → <image>.ext4 (shared)
//!                └─────────────────────┘   └─ virtio-serial ─┤  virtio-blk: volumes
//!                                                            └─ virtio-net: tap on the network's bridge
//! ```
//!
//! - **Root disk.** The image's layers, merged, become one ext4 file per
//!   image (`mkfs.ext4 -d`), shared read-only by its machines; each start
//!   makes the machine a fresh qcow2 overlay of it, so every boot begins
//!   from the image as a container's does.
//! - **Guest.** `hangar-init` is the initramfs's `/init`: it loads the
//!   virtio modules, mounts the root disk, gets the machine's config over
//!   the virtio-serial port (secrets travel only there), sets up `eth0`
//!   and volumes, and runs the main process as init does in containers.
//! - **Supervision.** As containers have their shim, each VM has a
//!   `vmshim` that owns qemu (qemu dies with it), writes the log and
//!   `exit.json`, and relays requests; it outlives `hangard` and is adopted
//!   by the next one.
//! - **Suspend.** As Fly suspends VMs: the vmshim stops the vCPUs, saves
//!   the VM (memory and devices) to a file over QMP and ends qemu; resume
//!   starts qemu from that file and the guest goes on where it stopped.
//! - **Acceleration.** KVM where `/dev/kvm` can run stock kernels; TCG
//!   otherwise (PVM hosts, whose `kvm_pvm` runs only PVM-built guests).

#![deny(unsafe_code)]

pub mod kernel;
mod tty;

use std::collections::HashMap;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hangar_core::guest::{
    AGENT_PORT, GuestConfig, GuestConfigFile, GuestNet, GuestVolume, ROOT_SERIAL, Reply, Request,
    VolumeKey,
};
use hangar_core::machine::Observed;
use hangar_core::{ExitInfo, Isolation, MachineId, Signal};
use hangar_runtime::{
    ExecOutput, ExecRequest, MemoryInfo, ProcessInfo, Runtime, RuntimeError, Usage, WorkloadSpec,
};
use hangar_runtime_oci::{Shim, fsutil, pidfd_open, proc_start_time, try_flock, wait_pidfd};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// How qemu runs the guest's CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization.
    Kvm,
    /// qemu's software emulation: slow, but it runs anywhere.
    Tcg,
}

impl Accel {
    /// KVM when `/dev/kvm` can run a stock guest kernel; otherwise TCG and
    /// why (to be logged as a warning).
    pub fn detect() -> (Accel, Option<&'static str>) {
        if !Path::new("/dev/kvm").exists() {
            return (
                Accel::Tcg,
                Some("there is no /dev/kvm: microVMs run under qemu's TCG emulation (slow)"),
            );
        }
        if Path::new("/sys/module/kvm_pvm").exists() {
            return (
                Accel::Tcg,
                Some(
                    "/dev/kvm is PVM (kvm_pvm), which runs only PVM-built guest kernels and hangs stock ones: microVMs run under qemu's TCG emulation (slow)",
                ),
            );
        }
        (Accel::Kvm, None)
    }
}

/// Where things are and how to run them.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// `qemu-system-x86_64`.
    pub qemu: PathBuf,
    /// `qemu-img`.
    pub qemu_img: PathBuf,
    /// `mkfs.ext4`.
    pub mkfs_ext4: PathBuf,
    /// The guest kernel (bzImage).
    pub kernel: PathBuf,
    /// The initramfs ([`kernel::build_initrd`]).
    pub initrd: PathBuf,
    /// KVM or TCG.
    pub accel: Accel,
    /// The static `hangar-init` (the vmshim runs from it).
    pub init_path: PathBuf,
    /// Per-machine directories.
    pub machines_dir: PathBuf,
    /// Root disk images, one per image.
    pub images_dir: PathBuf,
    /// Size at which a machine's log is rotated.
    pub log_max_bytes: u64,
    /// The host's volumes (attached to VMs as disks).
    pub volumes: Option<hangar_volumes::VolumeHost>,
    /// How long a boot may take before the start fails.
    pub boot_timeout: Duration,
}

/// The microVM driver.
pub struct VmRuntime {
    cfg: VmConfig,
    shims: Mutex<HashMap<MachineId, Arc<Shim>>>,
    /// Root disks are built one at a time.
    building: tokio::sync::Mutex<()>,
    /// The guest kernel's command line.
    cmdline: String,
}

/// The host's TSC frequency in kHz, measured against the monotonic clock
/// over `window`. Under TCG the guest's TSC is the host's, and a guest
/// kernel that has to calibrate it against the emulated PIT fails now and
/// then when the host is busy ("tsc: Unable to calibrate against PIT"),
/// marks the TSC unstable and then spins forever in the delay-loop
/// calibration waiting for a jiffy that never comes; telling it the
/// frequency (`tsc_early_khz=`) skips both.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub fn host_tsc_khz(window: Duration) -> Option<u64> {
    let read = || {
        // SAFETY: RDTSC exists on every x86_64 CPU and has no side effects.
        let tsc = unsafe { core::arch::x86_64::_rdtsc() };
        (tsc, std::time::Instant::now())
    };
    let mut best: Option<(u128, u64)> = None;
    // The shortest of a few windows is the least disturbed by preemption
    // between the two reads.
    for _ in 0..3 {
        let (t0, i0) = read();
        std::thread::sleep(window);
        let (t1, i1) = read();
        let ns = i1.duration_since(i0).as_nanos();
        let ticks = t1.checked_sub(t0)?;
        if ns == 0 {
            return None;
        }
        let khz = (u128::from(ticks) * 1_000_000 / ns) as u64;
        if best.is_none_or(|(b, _)| ns < b) {
            best = Some((ns, khz));
        }
    }
    best.map(|(_, khz)| khz).filter(|&k| k > 0)
}

/// The host's TSC frequency (not measurable off x86_64).
#[cfg(not(target_arch = "x86_64"))]
pub fn host_tsc_khz(_window: Duration) -> Option<u64> {
    None
}

/// The guest kernel's command line: the console on the serial port, no
/// reboot (a panic powers off), and under TCG the host's TSC frequency.
pub fn kernel_cmdline(accel: Accel, tsc_khz: Option<u64>) -> String {
    let mut c = String::from("console=ttyS0 quiet panic=-1 reboot=t");
    if let (Accel::Tcg, Some(khz)) = (accel, tsc_khz) {
        c.push_str(&format!(" tsc_early_khz={khz}"));
    }
    c
}

fn failed(op: &'static str, id: &MachineId, reason: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Failed {
        op,
        id: id.clone(),
        reason: reason.to_string(),
    }
}

/// The machine's volumes in disk order (`<machine dir>/volumes.json`).
const VOLUMES_FILE: &str = "volumes.json";

/// A volume of a VM: its id and where the guest mounts it; its position is
/// its disk's (`vol{i}`, serial `hangar-vol{i}`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct VmVolume {
    id: String,
    path: String,
}

/// How long a volume stays frozen for a copy unless thawed before.
const VOLUME_FREEZE_MAX: Duration = Duration::from_secs(120);

/// The fd the shim's lock is handed over on.
const SHIM_LOCK_FD: i32 = 4;

impl VmRuntime {
    /// A driver with this configuration; creates its directories.
    pub fn new(cfg: VmConfig) -> io::Result<VmRuntime> {
        std::fs::create_dir_all(&cfg.machines_dir)?;
        std::fs::create_dir_all(&cfg.images_dir)?;
        for (what, p) in [
            ("qemu", &cfg.qemu),
            ("the guest kernel", &cfg.kernel),
            ("the initramfs", &cfg.initrd),
            ("hangar-init", &cfg.init_path),
        ] {
            if !p.is_file() {
                return Err(io::Error::other(format!(
                    "{what} is missing at {}",
                    p.display()
                )));
            }
        }
        let tsc = match cfg.accel {
            Accel::Tcg => host_tsc_khz(Duration::from_millis(20)),
            Accel::Kvm => None,
        };
        Ok(VmRuntime {
            cmdline: kernel_cmdline(cfg.accel, tsc),
            cfg,
            shims: Mutex::new(HashMap::new()),
            building: tokio::sync::Mutex::new(()),
        })
    }

    fn dir(&self, id: &MachineId) -> PathBuf {
        self.cfg.machines_dir.join(id.as_str())
    }

    fn state(&self, id: &MachineId) -> PathBuf {
        self.dir(id).join("state")
    }

    fn shim(&self, id: &MachineId) -> Option<Arc<Shim>> {
        self.shims
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    fn set_shim(&self, id: &MachineId, shim: Option<Shim>) {
        let mut shims = self.shims.lock().unwrap_or_else(|p| p.into_inner());
        match shim {
            Some(s) => shims.insert(id.clone(), Arc::new(s)),
            None => shims.remove(id),
        };
    }

    /// The machine's shim if it still runs (same pid, same start time).
    fn adopt_shim(&self, id: &MachineId) -> Option<Shim> {
        hangar_runtime_oci::adopt(&self.state(id).join("shim.pid"))
    }

    fn read_exit(&self, id: &MachineId) -> Option<ExitInfo> {
        let text = std::fs::read_to_string(self.state(id).join("exit.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The image's root disk: its layers merged into one ext4 file, made
    /// once and shared read-only by every machine of the image.
    async fn root_disk(&self, id: &MachineId, layers: &[PathBuf]) -> Result<PathBuf, RuntimeError> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        layers.hash(&mut h);
        let disk = self
            .cfg
            .images_dir
            .join(format!("{:016x}.ext4", h.finish()));
        if disk.is_file() {
            return Ok(disk);
        }
        let _building = self.building.lock().await;
        if disk.is_file() {
            return Ok(disk);
        }
        let layers = layers.to_vec();
        let (mkfs, out) = (self.cfg.mkfs_ext4.clone(), disk.clone());
        let t0 = std::time::Instant::now();
        tokio::task::spawn_blocking(move || build_root_disk(&mkfs, &layers, &out))
            .await
            .map_err(|e| failed("start", id, e))?
            .map_err(|e| failed("start", id, format!("building the root disk: {e}")))?;
        tracing::info!(disk = %disk.display(), ms = t0.elapsed().as_millis() as u64, "built a microVM root disk");
        Ok(disk)
    }

    fn guest_config(&self, spec: &WorkloadSpec) -> GuestConfig {
        let mut env = spec.process.env.clone();
        for (k, v) in &spec.secret_env.0 {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        let mut files = vec![
            GuestConfigFile {
                path: "/etc/hosts".into(),
                contents: hangar_runtime_oci::hosts_file(spec).into_bytes(),
                mode: 0o644,
            },
            GuestConfigFile {
                path: "/etc/hostname".into(),
                contents: format!("{}\n", spec.hostname).into_bytes(),
                mode: 0o644,
            },
        ];
        if let Some(net) = spec.network.as_ref().filter(|n| !n.dns.is_empty()) {
            let mut text: String = net
                .dns
                .iter()
                .map(|s| format!("nameserver {s}\n"))
                .collect();
            text.push_str("options ndots:0\n");
            files.push(GuestConfigFile {
                path: "/etc/resolv.conf".into(),
                contents: text.into_bytes(),
                mode: 0o644,
            });
        }
        files.extend(spec.files.iter().map(|f| GuestConfigFile {
            path: f.path.clone(),
            contents: f.contents.clone(),
            mode: f.mode,
        }));
        GuestConfig {
            argv: spec.process.argv.clone(),
            env,
            cwd: spec.process.cwd.clone(),
            user: spec.process.user.clone(),
            tty: spec.tty,
            hostname: spec.hostname.clone(),
            files,
            net: spec.network.as_ref().map(|n| GuestNet {
                address4: format!("{}/{}", n.address4, n.prefix4),
                gateway4: n.gateway4.to_string(),
                address6: format!("{}/{}", n.address6, n.prefix6),
                gateway6: n.gateway6.to_string(),
            }),
            volumes: spec
                .volumes
                .iter()
                .enumerate()
                .map(|(i, v)| GuestVolume {
                    device: volume_serial(i),
                    path: v.guest_path.clone(),
                    key: v.key.map(VolumeKey),
                })
                .collect(),
        }
    }

    fn qemu_args(&self, spec: &WorkloadSpec, volumes: &[PathBuf]) -> Vec<String> {
        let state = self.state(&spec.id);
        let s = |p: PathBuf| p.display().to_string();
        let mut a: Vec<String> = vec![
            "-M".into(),
            "microvm".into(),
            "-accel".into(),
            match self.cfg.accel {
                Accel::Kvm => "kvm".into(),
                Accel::Tcg => format!(
                    "tcg,thread={}",
                    if spec.resources.cpus > 1 {
                        "multi"
                    } else {
                        "single"
                    }
                ),
            },
        ];
        if self.cfg.accel == Accel::Kvm {
            a.extend(["-cpu".into(), "host".into()]);
        }
        a.extend([
            "-m".into(),
            format!("{}M", spec.resources.memory_mb.max(128)),
            "-smp".into(),
            spec.resources.cpus.max(1).to_string(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-no-reboot".into(),
            "-serial".into(),
            "stdio".into(),
            "-monitor".into(),
            "none".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", s(state.join("qmp.sock"))),
            "-kernel".into(),
            s(self.cfg.kernel.clone()),
            "-initrd".into(),
            s(self.cfg.initrd.clone()),
            "-append".into(),
            self.cmdline.clone(),
            "-drive".into(),
            format!(
                "id=root,file={},format=qcow2,if=none",
                s(self.dir(&spec.id).join("disk.qcow2"))
            ),
            "-device".into(),
            format!("virtio-blk-device,drive=root,serial={ROOT_SERIAL}"),
        ]);
        for (i, v) in volumes.iter().enumerate() {
            a.extend([
                "-drive".into(),
                format!("id=vol{i},file={},format=raw,if=none", s(v.clone())),
                "-device".into(),
                format!("virtio-blk-device,drive=vol{i},serial={}", volume_serial(i)),
            ]);
        }
        a.extend([
            "-chardev".into(),
            format!(
                "socket,id=agent,path={},server=on,wait=off",
                s(state.join("agent.sock"))
            ),
            "-device".into(),
            "virtio-serial-device".into(),
            "-device".into(),
            format!("virtserialport,chardev=agent,name={AGENT_PORT}"),
        ]);
        if spec.network.is_some() {
            a.extend([
                "-netdev".into(),
                format!(
                    "tap,id=n0,ifname={},script=no,downscript=no",
                    tap_name(&spec.id)
                ),
                "-device".into(),
                format!("virtio-net-device,netdev=n0,mac={}", mac_of(&spec.id)),
            ]);
        }
        a
    }

    /// Volume `volume` of VM `id`: its disk index and guest path.
    fn volume(&self, id: &MachineId, volume: &str) -> Result<(usize, String), RuntimeError> {
        let map: Vec<VmVolume> = std::fs::read(self.dir(id).join(VOLUMES_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        map.into_iter()
            .enumerate()
            .find(|(_, v)| v.id == volume)
            .map(|(i, v)| (i, v.path))
            .ok_or_else(|| failed("volume", id, format!("volume {volume} is not attached")))
    }

    /// Whether VM `id` is suspended (saved to its file; nothing runs).
    fn suspended(&self, id: &MachineId) -> bool {
        self.state(id).join("memory.snap").exists() && self.qemu_pid(id).is_none()
    }

    /// A request whose answer is `Ok` or an error.
    async fn simple(
        &self,
        id: &MachineId,
        op: &'static str,
        req: Request,
    ) -> Result<(), RuntimeError> {
        match self.request(id, &req).await? {
            Reply::Ok => Ok(()),
            Reply::Error { message } => Err(failed(op, id, message)),
            other => Err(failed(op, id, format!("unexpected answer {other:?}"))),
        }
    }

    /// Sends a request to the running VM and reads its reply.
    async fn request(&self, id: &MachineId, req: &Request) -> Result<Reply, RuntimeError> {
        if self.shim(id).is_none() {
            return Err(RuntimeError::NotRunning(id.clone()));
        }
        let path = self.state(id).join("ctl.sock");
        let mut conn = tokio::net::UnixStream::connect(&path)
            .await
            .map_err(|_| RuntimeError::NotRunning(id.clone()))?;
        let mut line = serde_json::to_vec(req).map_err(|e| failed("request", id, e))?;
        line.push(b'\n');
        conn.write_all(&line)
            .await
            .map_err(|e| failed("request", id, e))?;
        let mut reply = String::new();
        tokio::io::BufReader::new(conn)
            .read_line(&mut reply)
            .await
            .map_err(|e| failed("request", id, e))?;
        serde_json::from_str(&reply)
            .map_err(|_| failed("request", id, "the VM's supervisor gave no answer"))
    }

    fn qemu_pid(&self, id: &MachineId) -> Option<i32> {
        std::fs::read_to_string(self.state(id).join("qemu.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    async fn spawn_shim(
        &self,
        spec: &WorkloadSpec,
        config: &GuestConfig,
        volumes: &[PathBuf],
    ) -> Result<Shim, RuntimeError> {
        let id = &spec.id;
        let state = self.state(id);
        let lock_path = state.join("shim.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| failed("start", id, format!("shim lock: {e}")))?;
        if !try_flock(&lock) {
            return Err(failed(
                "start",
                id,
                "another supervisor of this machine is alive",
            ));
        }
        let lock_raw = lock.as_raw_fd();
        let mut cmd = tokio::process::Command::new(&self.cfg.init_path);
        cmd.arg("vmshim")
            .arg("--id")
            .arg(id.as_str())
            .arg("--qemu")
            .arg(&self.cfg.qemu)
            .arg("--state-dir")
            .arg(&state)
            .arg("--log")
            .arg(self.dir(id).join("logs/machine.log"))
            .arg("--log-max-bytes")
            .arg(self.cfg.log_max_bytes.to_string())
            .arg("--lock-fd")
            .arg(SHIM_LOCK_FD.to_string())
            .arg("--boot-timeout")
            .arg(self.cfg.boot_timeout.as_secs().to_string())
            .arg("--")
            .args(self.qemu_args(spec, volumes))
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        hangar_runtime_oci::pass_fd(&mut cmd, lock_raw, SHIM_LOCK_FD);
        let mut child = cmd
            .spawn()
            .map_err(|e| failed("start", id, format!("spawning the VM's supervisor: {e}")))?;
        drop(lock);
        let pid = child.id().unwrap_or(0) as i32;
        let pidfd = pidfd_open(pid).map_err(|e| failed("start", id, e))?;
        let shim = Shim { pid, pidfd };
        // The config, secrets included, goes through the pipe only.
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| failed("start", id, "no shim stdin"))?;
        let json = serde_json::to_vec(config).map_err(|e| failed("start", id, e))?;
        stdin
            .write_all(&json)
            .await
            .map_err(|e| failed("start", id, format!("sending the config: {e}")))?;
        drop(stdin);
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| failed("start", id, "no shim stdout"))?;
        drop(child);
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let wait = self.cfg.boot_timeout + Duration::from_secs(15);
        let report = match tokio::time::timeout(wait, lines.next_line()).await {
            Ok(Ok(Some(line))) => {
                serde_json::from_str::<serde_json::Value>(&line).unwrap_or_default()
            }
            _ => serde_json::Value::Null,
        };
        if report.get("pid").is_some() {
            return Ok(shim);
        }
        let reason = report
            .get("error")
            .and_then(|e| e.as_str())
            .unwrap_or("the VM's supervisor ended without starting it")
            .to_owned();
        let _ = tokio::time::timeout(Duration::from_secs(5), wait_pidfd(&shim)).await;
        Err(failed("start", id, reason))
    }

    /// Ends the VM: its shim (qemu dies with it) and qemu itself.
    async fn kill(&self, id: &MachineId) {
        let shim = self.shim(id).or_else(|| self.adopt_shim(id).map(Arc::new));
        if let Some(shim) = &shim {
            hangar_runtime_oci::kill_pidfd(&shim.pidfd);
            let _ = tokio::time::timeout(Duration::from_secs(10), wait_pidfd(shim)).await;
        }
        // A qemu whose shim was gone already: only if it is still ours.
        if let Some(pid) = self.qemu_pid(id) {
            let ours = std::fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|exe| exe == self.cfg.qemu)
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| contains(&c, self.state(id).as_os_str().as_encoded_bytes()));
            if ours && let Ok(fd) = pidfd_open(pid) {
                hangar_runtime_oci::kill_pidfd(&fd);
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                while proc_start_time(pid).is_some() && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        self.set_shim(id, None);
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// The virtio serial of a machine's `i`th volume disk.
fn volume_serial(i: usize) -> String {
    format!("hangar-vol{i}")
}

/// The machine's tap device: `hq` and the last 13 characters of its id.
pub fn tap_name(id: &MachineId) -> String {
    let s = id.as_str();
    format!("hq{}", &s[s.len().saturating_sub(13)..])
}

/// A stable, locally administered MAC address for the machine.
fn mac_of(id: &MachineId) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.as_str().hash(&mut h);
    let b = h.finish().to_be_bytes();
    format!(
        "0a:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        b[0], b[1], b[2], b[3], b[4]
    )
}

/// Merges `layers` (an overlay mount) into a new ext4 file at `out`, with
/// room to grow: its size is what the files take plus as much again, at
/// least 1 GiB (the file is sparse; only what is written takes space).
fn build_root_disk(mkfs: &Path, layers: &[PathBuf], out: &Path) -> io::Result<()> {
    let work = out.with_extension("build");
    let _ = fsutil::unmount(&work.join("merged"));
    fsutil::remove_tree(&work)?;
    for d in ["merged", "upper", "work"] {
        std::fs::create_dir_all(work.join(d))?;
    }
    let merged = work.join("merged");
    fsutil::mount_overlay(layers, &work.join("upper"), &work.join("work"), &merged)?;
    let result = (|| {
        let (bytes, inodes) = tree_size(&merged, 0)?;
        let size = (bytes + inodes * 4096).max(64 << 20) + (bytes.max(1 << 30));
        let size = size.div_ceil(1 << 20) << 20;
        let tmp = out.with_extension("tmp");
        let f = std::fs::File::create(&tmp)?;
        f.set_len(size)?;
        drop(f);
        let o = std::process::Command::new(mkfs)
            .args(["-q", "-F", "-L", "root", "-d"])
            .arg(&merged)
            .arg(&tmp)
            .stdin(Stdio::null())
            .output()?;
        if !o.status.success() {
            let _ = std::fs::remove_file(&tmp);
            return Err(io::Error::other(format!(
                "mkfs.ext4: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )));
        }
        std::fs::rename(&tmp, out)
    })();
    let _ = fsutil::unmount(&merged);
    let _ = fsutil::remove_tree(&work);
    result
}

/// Bytes (allocated) and entries under `dir`.
fn tree_size(dir: &Path, depth: usize) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let (mut bytes, mut n) = (0, 0);
    if depth > 256 {
        return Ok((0, 0));
    }
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let m = e.path().symlink_metadata()?;
        n += 1;
        bytes += m.blocks() * 512;
        if m.is_dir() {
            let (b, c) = tree_size(&e.path(), depth + 1)?;
            bytes += b;
            n += c;
        }
    }
    Ok((bytes, n))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[async_trait::async_trait]
impl Runtime for VmRuntime {
    fn name(&self) -> &'static str {
        "microvm"
    }

    fn supports(&self, isolation: Isolation) -> Result<(), String> {
        match isolation {
            Isolation::Microvm => Ok(()),
            other => Err(format!("the microVM runtime does not run {other}")),
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
        let t0 = std::time::Instant::now();
        let dir = self.dir(id);
        let state = self.state(id);
        for d in [&state, &dir.join("logs")] {
            std::fs::create_dir_all(d).map_err(|e| failed("start", id, e))?;
        }
        // qemu's sockets must fit a sockaddr_un.
        if state.join("agent.sock").as_os_str().len() > 100 {
            return Err(failed(
                "start",
                id,
                format!(
                    "the data directory's path is too long for qemu's sockets ({})",
                    state.display()
                ),
            ));
        }
        let mut volumes = Vec::new();
        for v in &spec.volumes {
            let host = self
                .cfg
                .volumes
                .as_ref()
                .ok_or_else(|| failed("start", id, "this host has no volumes"))?;
            // The disk must not be mounted on the host while the VM has it,
            // and a growth left pending is done before.
            host.detach(&v.id)
                .await
                .map_err(|e| failed("start", id, e))?;
            host.grow_pending(&v.id)
                .await
                .map_err(|e| failed("start", id, e))?;
            volumes.push(host.image(&v.id));
        }
        // Which disk is which volume, for the volume operations of a
        // running VM (also after hangard restarts).
        let map: Vec<VmVolume> = spec
            .volumes
            .iter()
            .map(|v| VmVolume {
                id: v.id.clone(),
                path: v.guest_path.clone(),
            })
            .collect();
        std::fs::write(
            dir.join(VOLUMES_FILE),
            serde_json::to_vec(&map).map_err(|e| failed("start", id, e))?,
        )
        .map_err(|e| failed("start", id, e))?;
        let base = self.root_disk(id, &spec.layers).await?;
        let disk = dir.join("disk.qcow2");
        let _ = std::fs::remove_file(&disk);
        let out = tokio::process::Command::new(&self.cfg.qemu_img)
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&base)
            .arg(&disk)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| failed("start", id, format!("qemu-img: {e}")))?;
        if !out.status.success() {
            return Err(failed(
                "start",
                id,
                format!("qemu-img: {}", String::from_utf8_lossy(&out.stderr).trim()),
            ));
        }
        if let Some(net) = &spec.network {
            let bridge = hangar_net::Bridge {
                name: net.bridge.clone(),
                gateway4: net.gateway4,
                prefix4: net.prefix4,
                gateway6: net.gateway6,
                prefix6: net.prefix6,
            };
            let link = hangar_net::Link {
                host_if: tap_name(id),
                address4: net.address4,
                address6: net.address6,
            };
            hangar_net::connect_tap(&bridge, &link)
                .map_err(|e| failed("start", id, format!("network: {e}")))?;
        }
        let prepared = t0.elapsed();
        let config = self.guest_config(spec);
        let shim = self.spawn_shim(spec, &config, &volumes).await?;
        self.set_shim(id, Some(shim));
        tracing::debug!(
            machine = %id,
            prepare_ms = prepared.as_secs_f64() * 1e3,
            total_ms = t0.elapsed().as_secs_f64() * 1e3,
            "microVM started"
        );
        Ok(())
    }

    async fn prewarm(&self, spec: &WorkloadSpec) -> Result<(), RuntimeError> {
        self.root_disk(&spec.id, &spec.layers).await.map(drop)
    }

    async fn connect_network(
        &self,
        id: &MachineId,
        net: &hangar_runtime::NetworkAttachment,
    ) -> Result<(), RuntimeError> {
        let tap = tap_name(id);
        let master = std::fs::read_link(format!("/sys/class/net/{tap}/master"));
        if !Path::new("/sys/class/net").join(&tap).exists()
            || master.is_ok_and(|m| m.file_name().is_some_and(|n| *n == *net.bridge))
        {
            return Ok(());
        }
        // The tap lives while qemu holds it; only its bridge can change.
        let out = tokio::process::Command::new("ip")
            .args(["link", "set", &tap, "master", &net.bridge, "up"])
            .output()
            .await
            .map_err(|e| failed("connect to the private network", id, e))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(failed(
                "connect to the private network",
                id,
                String::from_utf8_lossy(&out.stderr).trim(),
            ))
        }
    }

    /// Suspends the VM to a file, as Fly does: the vmshim stops its vCPUs,
    /// saves its memory and devices to `memory.snap` and ends qemu (the
    /// memory goes back to the host).
    async fn freeze(&self, id: &MachineId) -> Result<(), RuntimeError> {
        match self.request(id, &Request::Suspend).await? {
            Reply::Ok => Ok(()),
            Reply::Error { message } => Err(failed("suspend", id, message)),
            other => Err(failed(
                "suspend",
                id,
                format!("unexpected answer {other:?}"),
            )),
        }
    }

    /// Resumes the VM from its snapshot where it stopped.
    async fn thaw(&self, id: &MachineId) -> Result<(), RuntimeError> {
        self.simple(id, "resume", Request::Resume).await
    }

    fn volumes_in_guest(&self, id: &MachineId) -> bool {
        self.shim(id).is_some()
    }

    /// Freezes the volume's file system in the guest; a suspended VM's
    /// disks are still already.
    async fn freeze_volume(&self, id: &MachineId, volume: &str) -> Result<(), RuntimeError> {
        let (_, path) = self.volume(id, volume)?;
        if self.suspended(id) {
            return Ok(());
        }
        let timeout_ms = VOLUME_FREEZE_MAX.as_millis() as u64;
        self.simple(
            id,
            "freeze a volume",
            Request::FreezeVolume { path, timeout_ms },
        )
        .await
    }

    async fn thaw_volume(&self, id: &MachineId, volume: &str) -> Result<(), RuntimeError> {
        let (_, path) = self.volume(id, volume)?;
        if self.suspended(id) {
            return Ok(());
        }
        self.simple(id, "thaw a volume", Request::ThawVolume { path })
            .await
    }

    /// qemu resizes the disk, then the guest grows the file system on it
    /// online. A suspended VM's volume grows at its next start.
    async fn grow_volume(
        &self,
        id: &MachineId,
        volume: &str,
        bytes: u64,
    ) -> Result<bool, RuntimeError> {
        let (i, path) = self.volume(id, volume)?;
        if self.suspended(id) {
            return Ok(false);
        }
        let drive = format!("vol{i}");
        self.simple(id, "grow a volume", Request::BlockResize { drive, bytes })
            .await?;
        self.simple(id, "grow a volume", Request::GrowVolume { path, bytes })
            .await?;
        Ok(true)
    }

    async fn exec(&self, id: &MachineId, req: &ExecRequest) -> Result<ExecOutput, RuntimeError> {
        let reply = self
            .request(
                id,
                &Request::Exec {
                    argv: req.argv.clone(),
                    stdin: req.stdin.clone(),
                    timeout_ms: req.timeout.as_millis() as u64,
                },
            )
            .await?;
        match reply {
            Reply::Exec {
                exit_code,
                exit_signal,
                stdout,
                stderr,
                timed_out,
            } => Ok(ExecOutput {
                exit_code,
                exit_signal,
                stdout,
                stderr,
                timed_out,
            }),
            Reply::Error { message } => Err(failed("exec", id, message)),
            other => Err(failed("exec", id, format!("unexpected answer {other:?}"))),
        }
    }

    async fn exec_tty(
        &self,
        id: &MachineId,
        req: &hangar_runtime::TtyRequest,
    ) -> Result<Box<dyn hangar_runtime::Terminal>, RuntimeError> {
        if self.shim(id).is_none() {
            return Err(RuntimeError::NotRunning(id.clone()));
        }
        let t = tty::open(&self.state(id).join("ctl.sock"), req)
            .await
            .map_err(|e| failed("exec with a terminal", id, e))?;
        Ok(Box::new(t))
    }

    async fn processes(&self, id: &MachineId) -> Result<Vec<ProcessInfo>, RuntimeError> {
        match self.request(id, &Request::Ps).await? {
            Reply::Ps {
                uptime_ms,
                processes,
            } => {
                let now = now_ms();
                Ok(processes
                    .into_iter()
                    .map(|p| {
                        let run_ms = uptime_ms.saturating_sub(p.start_ms);
                        ProcessInfo {
                            pid: p.pid,
                            start_ms: now.saturating_sub(run_ms),
                            run_ms,
                            command: p.command,
                            directory: p.directory,
                            cpu_ms: p.cpu_ms,
                            rss: p.rss,
                            listen: Vec::new(),
                        }
                    })
                    .collect())
            }
            Reply::Error { message } => Err(failed("ps", id, message)),
            other => Err(failed("ps", id, format!("unexpected answer {other:?}"))),
        }
    }

    fn usage(&self, id: &MachineId) -> Option<Usage> {
        self.shim(id)?;
        let pid = self.qemu_pid(id)?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
        let rss_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        let tap = tap_name(id);
        let counter = |name: &str| {
            std::fs::read_to_string(format!("/sys/class/net/{tap}/statistics/{name}"))
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        Some(Usage {
            // utime + stime, in clock ticks of 100 Hz.
            cpu_seconds: (num(11) + num(12)) as f64 / 100.0,
            memory_bytes: rss_pages * 4096,
            // The tap's receive is the VM's send.
            net_rx_bytes: counter("tx_bytes"),
            net_tx_bytes: counter("rx_bytes"),
        })
    }

    async fn memory(&self, id: &MachineId) -> Result<MemoryInfo, RuntimeError> {
        match self.request(id, &Request::Memory).await? {
            Reply::Memory { total_mb, used_mb } => Ok(MemoryInfo {
                limit_mb: total_mb,
                usage_mb: used_mb,
            }),
            Reply::Error { message } => Err(failed("memory", id, message)),
            other => Err(failed("memory", id, format!("unexpected answer {other:?}"))),
        }
    }

    async fn set_memory_limit(&self, id: &MachineId, limit_mb: u64) -> Result<(), RuntimeError> {
        let _ = limit_mb;
        Err(RuntimeError::InvalidSpec(format!(
            "machine {id} is a microVM: its memory is the VM's size, changed by an update (which restarts it)"
        )))
    }

    async fn signal(&self, id: &MachineId, signal: Signal) -> Result<(), RuntimeError> {
        match self
            .request(
                id,
                &Request::Signal {
                    signal: signal.number(),
                },
            )
            .await?
        {
            Reply::Ok => Ok(()),
            _ => Err(RuntimeError::NotRunning(id.clone())),
        }
    }

    async fn wait(&self, id: &MachineId) -> Result<ExitInfo, RuntimeError> {
        let shim = self
            .shim(id)
            .ok_or_else(|| RuntimeError::NotRunning(id.clone()))?;
        wait_pidfd(&shim).await.map_err(|e| failed("wait", id, e))?;
        Ok(self.read_exit(id).unwrap_or_else(|| ExitInfo {
            exit_code: -1,
            exited_at_ms: now_ms() as i64,
            error: Some("the VM's supervisor ended without recording how the machine ended".into()),
            ..ExitInfo::default()
        }))
    }

    async fn observe(&self, id: &MachineId) -> Result<Observed, RuntimeError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(shim) = self.adopt_shim(id) {
                self.set_shim(id, Some(shim));
                return Ok(Observed::Running);
            }
            let held = hangar_runtime_oci::lock_held(&self.state(id).join("shim.lock"));
            if !held || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if let Some(info) = self.read_exit(id) {
            return Ok(Observed::Exited(info));
        }
        Ok(Observed::Absent)
    }

    async fn cleanup(&self, id: &MachineId) -> Result<(), RuntimeError> {
        self.kill(id).await;
        let dir = self.dir(id);
        let _ = std::fs::remove_file(dir.join("disk.qcow2"));
        for f in [
            "exit.json",
            "shim.pid",
            "qemu.pid",
            "agent.sock",
            "ctl.sock",
            "qmp.sock",
            "memory.snap",
        ] {
            let _ = std::fs::remove_file(dir.join("state").join(f));
        }
        Ok(())
    }

    async fn destroy(&self, id: &MachineId) -> Result<(), RuntimeError> {
        self.cleanup(id).await?;
        hangar_net::disconnect(&tap_name(id)).map_err(|e| failed("destroy", id, e))?;
        fsutil::remove_tree(&self.dir(id)).map_err(|e| failed("destroy", id, e))
    }

    fn log_path(&self, id: &MachineId) -> Option<PathBuf> {
        Some(self.dir(id).join("logs/machine.log"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_interfaces_and_macs_are_local() {
        let id = MachineId::generate();
        let t = tap_name(&id);
        assert!(t.len() <= 15 && t.starts_with("hq"), "{t}");
        let mac = mac_of(&id);
        assert!(mac.starts_with("0a:") && mac.len() == 17, "{mac}");
        assert_eq!(mac, mac_of(&id));
    }

    #[test]
    fn tcg_guests_are_told_the_tsc_frequency() {
        assert!(!kernel_cmdline(Accel::Kvm, Some(2_300_000)).contains("tsc_early_khz"));
        assert!(!kernel_cmdline(Accel::Tcg, None).contains("tsc_early_khz"));
        let c = kernel_cmdline(Accel::Tcg, Some(2_300_000));
        assert!(
            c.starts_with("console=ttyS0 ") && c.ends_with(" tsc_early_khz=2300000"),
            "{c}"
        );
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_host_tsc_is_measured_twice_alike() {
        let a = host_tsc_khz(Duration::from_millis(10)).expect("a TSC frequency");
        let b = host_tsc_khz(Duration::from_millis(10)).expect("a TSC frequency");
        // Some hundreds of MHz at least, and two measures within 2%.
        assert!(a > 100_000, "{a}");
        assert!(a.abs_diff(b) * 50 < a, "{a} vs {b}");
    }
}
