//! The guest role: PID 1 of a microVM, started by the kernel as `/init`
//! from the initramfs Hangar builds (this binary, the kernel modules the
//! VM's devices need, and busybox for `ip`).
//!
//! ```text
//! /init (initramfs)
//!   ├─ mount /dev /proc /sys; load modules (lib/modules/order)
//!   ├─ mount /dev/vda (the machine's root, ext4) at /newroot
//!   ├─ open the virtio-serial port "hangar.agent"; hello → config
//!   ├─ hostname, eth0 (busybox ip), volumes (/dev/vdb...)
//!   ├─ move /newroot to / and chroot; /proc /sys /dev/pts /dev/shm
//!   ├─ config.files; spawn the main process (its output → log messages)
//!   ├─ serve requests (signal, exec, ps, memory) from the port
//!   └─ main process ended → exit report, ack, kill the rest, power off
//! ```
//!
//! Any failure before the main process runs is reported as `failed` (or,
//! without a port, printed on the console) and the VM powers off.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use hangar_core::ExitInfo;
use hangar_core::guest::{
    AGENT_PORT, FromGuest, GuestConfig, GuestProcess, ROOT_SERIAL, Reply, Request, ToGuest,
};

use crate::sys::{self, WaitStatus};

/// Most output kept of an exec, per stream.
const EXEC_OUTPUT_CAP: usize = 1 << 20;

/// Whether this process is a microVM's init: PID 1 started as `/init`.
pub fn is_guest_init() -> bool {
    // SAFETY: getpid has no preconditions.
    let pid1 = unsafe { libc::getpid() } == 1;
    pid1 && std::env::args().next().as_deref() == Some("/init")
}

/// The port to the host: writes are whole lines under a lock.
struct Port {
    out: Mutex<File>,
}

impl Port {
    fn send(&self, msg: &FromGuest) {
        if let Ok(mut line) = serde_json::to_vec(msg) {
            line.push(b'\n');
            let mut f = self.out.lock().unwrap_or_else(|p| p.into_inner());
            let _ = f.write_all(&line);
        }
    }
}

/// Exit statuses of the processes exec threads wait for, filled by the
/// reaper (init reaps every child).
#[derive(Default)]
struct Reaped {
    watched: HashSet<i32>,
    done: HashMap<i32, WaitStatus>,
}

struct Shared {
    port: Port,
    reaped: Mutex<Reaped>,
    reaped_cv: Condvar,
    acked: Mutex<bool>,
    acked_cv: Condvar,
    main_pid: AtomicI32,
    env: std::sync::OnceLock<Vec<(String, String)>>,
    /// Terminal sessions by request id.
    ttys: Mutex<HashMap<u64, TtySession>>,
    /// The volumes: where the machine sees each, and its disk (`vdb`...).
    volumes: std::sync::OnceLock<Vec<(String, String)>>,
    /// A generation per frozen volume path: a freeze's self-thaw only
    /// undoes that freeze, not a later one.
    freezes: Mutex<HashMap<String, u64>>,
}

/// A running terminal session: its command's pid (a session leader), its
/// terminal's master, and the channel to the thread that writes its input.
struct TtySession {
    pid: i32,
    master: File,
    input: std::sync::mpsc::Sender<Vec<u8>>,
}

/// Runs the guest init; never returns (the VM powers off).
pub fn main() -> i32 {
    if let Err(e) = boot() {
        eprintln!("hangar-init: {e}");
    }
    power_off()
}

fn power_off() -> ! {
    // SAFETY: sync and reboot have no memory-safety preconditions; PID 1
    // may power the machine off.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    // reboot returns only on failure: PID 1 exiting panics the kernel,
    // which (panic=-1, qemu -no-reboot) ends the VM too.
    std::process::exit(1)
}

fn mount(
    src: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let _ = std::fs::create_dir_all(target);
    let c = |s: &str| CString::new(s).map_err(io::Error::other);
    let what = format!("mounting {fstype} on {target}");
    let (src, target, fstype, data) = (c(src)?, c(target)?, c(fstype)?, c(data)?);
    // SAFETY: all pointers are valid NUL-terminated strings for the call.
    sys::check(unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    })
    .map(drop)
    .map_err(|e| io::Error::new(e.kind(), format!("{what}: {e}")))
}

fn load_modules() -> io::Result<()> {
    let order = std::fs::read_to_string("/lib/modules/order").unwrap_or_default();
    for name in order.split_whitespace() {
        let f = File::open(format!("/lib/modules/{name}.ko"))?;
        let empty = c"";
        // SAFETY: finit_module on an open module file with empty params.
        let r = unsafe { libc::syscall(libc::SYS_finit_module, f.as_raw_fd(), empty.as_ptr(), 0) };
        if r != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(io::Error::new(
                    e.kind(),
                    format!("loading module {name}: {e}"),
                ));
            }
        }
    }
    Ok(())
}

fn wait_for(path: &str, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    while !Path::new(path).exists() {
        if Instant::now() > deadline {
            return Err(io::Error::other(format!("{path} did not appear")));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// `/dev/NAME` for the entry NAME of sysfs directory `class` whose
/// attribute file `attr` reads `value`, waiting (bounded) for the device
/// to appear.
fn find_device(class: &str, attr: &str, value: &str) -> io::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for e in std::fs::read_dir(class).into_iter().flatten().flatten() {
            let v = std::fs::read_to_string(e.path().join(attr)).unwrap_or_default();
            if v.trim() == value {
                let dev = format!("/dev/{}", e.file_name().to_string_lossy());
                wait_for(&dev, Duration::from_secs(5))?;
                return Ok(dev);
            }
        }
        if Instant::now() > deadline {
            return Err(io::Error::other(format!(
                "no device in {class} with {attr} {value}"
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The block device whose virtio serial is `serial` (qemu's order of
/// virtio-mmio devices is not the guest's `vdX` order).
fn disk_by_serial(serial: &str) -> io::Result<String> {
    find_device("/sys/block", "serial", serial)
}

fn boot() -> io::Result<()> {
    // Signals are taken synchronously by the reaper below; every thread
    // started from here on inherits the blocked mask.
    // SAFETY: a zeroed sigset_t is valid for sigfillset; blocking signals.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `all` is a valid sigset_t.
    unsafe {
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
    }
    mount("devtmpfs", "/dev", "devtmpfs", 0, "")?;
    mount("proc", "/proc", "proc", 0, "")?;
    mount("sysfs", "/sys", "sysfs", 0, "")?;
    load_modules()?;
    let dev = find_device("/sys/class/virtio-ports", "name", AGENT_PORT)?;
    let port_file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&dev)?;
    let reader = BufReader::new(port_file.try_clone()?);
    let shared = Arc::new(Shared {
        port: Port {
            out: Mutex::new(port_file),
        },
        reaped: Mutex::new(Reaped::default()),
        reaped_cv: Condvar::new(),
        acked: Mutex::new(false),
        acked_cv: Condvar::new(),
        main_pid: AtomicI32::new(0),
        env: std::sync::OnceLock::new(),
        ttys: Mutex::new(HashMap::new()),
        volumes: std::sync::OnceLock::new(),
        freezes: Mutex::new(HashMap::new()),
    });
    shared.port.send(&FromGuest::Hello);
    let mut lines = reader.lines();
    let config = loop {
        match lines.next() {
            Some(Ok(line)) => match serde_json::from_str::<ToGuest>(&line) {
                Ok(ToGuest::Config { config }) => break *config,
                _ => continue,
            },
            Some(Err(e)) => return Err(e),
            None => return Err(io::Error::other("the host closed the port")),
        }
    };
    let fail = |shared: &Shared, code: i32, msg: String| {
        eprintln!("hangar-init: {msg}");
        shared.port.send(&FromGuest::Failed {
            info: ExitInfo {
                exit_code: code,
                error: Some(msg),
                ..ExitInfo::default()
            },
        });
    };
    let _ = shared.env.set(config.env.clone());
    {
        let shared = shared.clone();
        std::thread::spawn(move || serve(shared, lines));
    }
    if let Err(e) = setup(&config) {
        fail(&shared, 1, format!("setting up the machine: {e}"));
        wait_ack(&shared);
        return Ok(());
    }
    let _ = shared.volumes.set(
        config
            .volumes
            .iter()
            .filter_map(|v| {
                let dev = disk_by_serial(&v.device).ok()?;
                Some((v.path.clone(), dev.trim_start_matches("/dev/").to_owned()))
            })
            .collect(),
    );

    let (pid, pumps) = match spawn_main(&config, &shared) {
        Ok(x) => x,
        Err(e) => {
            let code = match e.kind() {
                io::ErrorKind::PermissionDenied => 126,
                _ => 127,
            };
            fail(
                &shared,
                code,
                format!("failed to run {:?}: {e}", config.argv.first()),
            );
            wait_ack(&shared);
            return Ok(());
        }
    };
    shared.main_pid.store(pid, Ordering::SeqCst);
    shared.port.send(&FromGuest::Started { pid });
    let status = supervise(pid, &all, &shared);
    for p in pumps {
        let deadline = Instant::now() + Duration::from_secs(2);
        while !p.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let info = match status {
        WaitStatus::Exited(code) => ExitInfo {
            exit_code: code,
            ..ExitInfo::default()
        },
        WaitStatus::Signaled(sig) => ExitInfo {
            exit_code: 128 + sig,
            signal: Some(sig),
            ..ExitInfo::default()
        },
    };
    shared.port.send(&FromGuest::Exit { info });
    wait_ack(&shared);
    // SAFETY: kill(-1) from PID 1 signals every other process of the VM.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    while let Ok(Some(_)) = sys::try_wait(-1) {}
    for v in &config.volumes {
        let _ = CString::new(v.path.as_str()).map(|p| {
            // SAFETY: umount2 with a valid path.
            unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) }
        });
    }
    Ok(())
}

fn wait_ack(shared: &Shared) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut acked = shared.acked.lock().unwrap_or_else(|p| p.into_inner());
    while !*acked && Instant::now() < deadline {
        acked = shared
            .acked_cv
            .wait_timeout(acked, Duration::from_millis(100))
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0);
    }
}

/// Everything before the main process: its root, network and volumes.
fn setup(config: &GuestConfig) -> io::Result<()> {
    let root = disk_by_serial(ROOT_SERIAL)?;
    mount(&root, "/newroot", "ext4", 0, "")?;
    if !config.hostname.is_empty() {
        // SAFETY: sethostname with a valid buffer and length.
        sys::check(unsafe {
            libc::sethostname(config.hostname.as_ptr().cast(), config.hostname.len())
        })?;
    }
    let mut ip = vec!["link set lo up".to_owned()];
    if let Some(net) = &config.net {
        wait_for("/sys/class/net/eth0", Duration::from_secs(10))?;
        // No duplicate address detection (busybox ip has no `nodad`): the
        // address is the machine's alone, and usable at once.
        std::fs::write("/proc/sys/net/ipv6/conf/eth0/accept_dad", "0")?;
        ip.extend([
            format!("addr add {} dev eth0", net.address4),
            format!("addr add {} dev eth0", net.address6),
            "link set eth0 up".into(),
            format!("route add default via {}", net.gateway4),
            format!("route add default via {}", net.gateway6),
        ]);
    }
    for cmd in ip {
        let out = Command::new("/bin/busybox")
            .arg("ip")
            .args(cmd.split_whitespace())
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "ip {cmd}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    for (i, v) in config.volumes.iter().enumerate() {
        let dev = disk_by_serial(&v.device)?;
        let mnt = format!("/volumes/{i}");
        mount(&dev, &mnt, "ext4", libc::MS_NOSUID | libc::MS_NODEV, "")?;
        // An encrypted volume's data directory opens with its key, as on
        // the host (the key came over the agent port only).
        let data = hangar_fscrypt::open_data_dir(Path::new(&mnt), v.key.as_ref().map(|k| &k.0))?;
        let target = format!("/newroot{}", v.path);
        mount(&data.to_string_lossy(), &target, "", libc::MS_BIND, "")?;
    }
    // The machine's root becomes /; /dev goes along.
    mount("/dev", "/newroot/dev", "", libc::MS_MOVE, "")?;
    std::env::set_current_dir("/newroot")?;
    mount(".", "/", "", libc::MS_MOVE, "")?;
    let dot = c".";
    // SAFETY: chroot with a valid path.
    sys::check(unsafe { libc::chroot(dot.as_ptr()) })?;
    std::env::set_current_dir("/")?;
    mount("proc", "/proc", "proc", 0, "")?;
    mount("sysfs", "/sys", "sysfs", 0, "")?;
    mount(
        "devpts",
        "/dev/pts",
        "devpts",
        0,
        "newinstance,ptmxmode=0666,mode=0620",
    )?;
    mount(
        "shm",
        "/dev/shm",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=1777",
    )?;
    for f in &config.files {
        let path = Path::new(&f.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, &f.contents)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(f.mode))?;
    }
    Ok(())
}

/// Starts the main process with its output sent to the host as log
/// messages; returns its pid and the threads that copy its output.
fn spawn_main(
    config: &GuestConfig,
    shared: &Arc<Shared>,
) -> io::Result<(i32, Vec<std::thread::JoinHandle<()>>)> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let who = hangar_core::user::resolve(&config.user, &read("/etc/passwd"), &read("/etc/group"))
        .map_err(|e| io::Error::new(io::ErrorKind::NotFound, e.to_string()))?;
    let argv0 = config
        .argv
        .first()
        .ok_or_else(|| io::Error::other("no command"))?;
    let mut cmd = Command::new(argv0);
    cmd.args(&config.argv[1..])
        .env_clear()
        .envs(config.env.iter().map(|(k, v)| (k, v)))
        .current_dir(if config.cwd.is_empty() {
            "/"
        } else {
            &config.cwd
        })
        .stdin(Stdio::null());
    let terminal = if config.tty {
        Some(crate::init::open_terminal()?)
    } else {
        None
    };
    let slave = terminal.as_ref().map(|(_, s)| s.clone());
    if slave.is_none() {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    crate::init::prepare_main(&mut cmd, slave, who.uid, who.gid, who.groups);
    let mut child = cmd.spawn()?;
    let pid = child.id() as i32;
    let mut pumps = Vec::new();
    let mut pump = |r: Box<dyn Read + Send>, stream: &'static str| {
        let shared = shared.clone();
        pumps.push(std::thread::spawn(move || {
            let mut r = r;
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                shared.port.send(&FromGuest::Log {
                    stream: stream.into(),
                    data: String::from_utf8_lossy(&buf[..n]).into_owned(),
                });
            }
        }));
    };
    if let Some((master, _)) = terminal {
        pump(Box::new(master), "stdout");
    }
    if let Some(out) = child.stdout.take() {
        pump(Box::new(out), "stdout");
    }
    if let Some(err) = child.stderr.take() {
        pump(Box::new(err), "stderr");
    }
    Ok((pid, pumps))
}

/// Reaps every child until the main process ends, forwarding signals to it;
/// statuses of watched (exec'd) processes go to their threads.
fn supervise(main: i32, all: &libc::sigset_t, shared: &Shared) -> WaitStatus {
    loop {
        loop {
            // Under the lock: an exec's spawn holds it, so a child whose exec
            // failed is left for std's spawn to reap.
            let mut r = shared.reaped.lock().unwrap_or_else(|p| p.into_inner());
            match sys::try_wait(-1) {
                Ok(Some((pid, status))) if pid == main => return status,
                Ok(Some((pid, status))) => {
                    if r.watched.remove(&pid) {
                        r.done.insert(pid, status);
                        shared.reaped_cv.notify_all();
                    }
                }
                Ok(None) => break,
                Err(_) => return WaitStatus::Exited(255),
            }
        }
        // SAFETY: a zeroed siginfo_t is a valid out-parameter.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let timeout = libc::timespec {
            tv_sec: 1,
            tv_nsec: 0,
        };
        // SAFETY: valid pointers for the call.
        let sig = unsafe { libc::sigtimedwait(all, &mut info, &timeout) };
        if sig <= 0 || sig == libc::SIGCHLD {
            continue;
        }
        // SAFETY: kill with a caught signal number.
        unsafe { libc::kill(main, sig) };
    }
}

/// Reads the host's messages: requests (each in a thread of its own) and
/// the ack of the exit report.
fn serve(shared: Arc<Shared>, lines: std::io::Lines<BufReader<File>>) {
    for line in lines {
        let Ok(line) = line else { break };
        match serde_json::from_str::<ToGuest>(&line) {
            Ok(ToGuest::Request {
                id,
                body:
                    Request::Tty {
                        argv,
                        env,
                        rows,
                        cols,
                    },
            }) => {
                // It replies itself, before its first output.
                if let Err(e) = tty(&shared, id, argv, env, rows, cols) {
                    shared.port.send(&FromGuest::Reply {
                        id,
                        body: Reply::Error {
                            message: e.to_string(),
                        },
                    });
                }
            }
            Ok(ToGuest::Request { id, body }) => {
                let shared = shared.clone();
                std::thread::spawn(move || {
                    let body = handle(&shared, body);
                    shared.port.send(&FromGuest::Reply { id, body });
                });
            }
            Ok(ToGuest::Ack) => {
                *shared.acked.lock().unwrap_or_else(|p| p.into_inner()) = true;
                shared.acked_cv.notify_all();
            }
            Ok(ToGuest::TtyInput { id, data }) => {
                let ttys = shared.ttys.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(t) = ttys.get(&id) {
                    let _ = t.input.send(data);
                }
            }
            Ok(ToGuest::TtyResize { id, rows, cols }) => {
                let ttys = shared.ttys.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(t) = ttys.get(&id) {
                    crate::init::set_winsize(&t.master, rows.max(1), cols.max(1));
                }
            }
            Ok(ToGuest::TtyHangup { id }) => {
                let ttys = shared.ttys.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(t) = ttys.get(&id) {
                    // SAFETY: kill the session's process group (its leader
                    // is the command we started).
                    unsafe { libc::kill(-t.pid, libc::SIGHUP) };
                }
            }
            Ok(ToGuest::Config { .. }) | Err(_) => {}
        }
    }
}

fn handle(shared: &Arc<Shared>, req: Request) -> Reply {
    match req {
        Request::Signal { signal } => {
            let pid = shared.main_pid.load(Ordering::SeqCst);
            // SAFETY: kill with a pid we started and a signal number.
            if pid > 0 && unsafe { libc::kill(pid, signal) } == 0 {
                Reply::Ok
            } else {
                Reply::Error {
                    message: io::Error::last_os_error().to_string(),
                }
            }
        }
        Request::Exec {
            argv,
            stdin,
            timeout_ms,
        } => exec(shared, argv, stdin, Duration::from_millis(timeout_ms)),
        Request::Tty { .. } => Reply::Error {
            message: "a terminal session is served apart".into(),
        },
        Request::Suspend | Request::Resume | Request::BlockResize { .. } => Reply::Error {
            message: "that is the host's to do".into(),
        },
        Request::FreezeVolume { path, timeout_ms } => reply_of(freeze_volume(
            shared,
            &path,
            Duration::from_millis(timeout_ms),
        )),
        Request::ThawVolume { path } => {
            // A newer generation: the freeze's own timer leaves it alone.
            *shared
                .freezes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(path.clone())
                .or_default() += 1;
            reply_of(fs_ioctl(&path, FITHAW, &mut 0i32).or_else(thawed_already))
        }
        Request::GrowVolume { path, bytes } => reply_of(grow_volume(shared, &path, bytes)),
        Request::Ps => ps(),
        Request::Memory => {
            let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
            let kb = |key: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(key))
                    .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            let total = kb("MemTotal:");
            Reply::Memory {
                total_mb: total / 1024,
                used_mb: total.saturating_sub(kb("MemAvailable:")) / 1024,
            }
        }
    }
}

/// `FIFREEZE` / `FITHAW`: `_IOWR('X', 119|120, int)`.
const FIFREEZE: libc::c_ulong = 0xC004_5877;
const FITHAW: libc::c_ulong = 0xC004_5878;
/// `EXT4_IOC_RESIZE_FS`: `_IOW('f', 16, __u64)`.
const EXT4_IOC_RESIZE_FS: libc::c_ulong = 0x4008_6610;

fn reply_of(r: io::Result<()>) -> Reply {
    match r {
        Ok(()) => Reply::Ok,
        Err(e) => Reply::Error {
            message: e.to_string(),
        },
    }
}

/// FITHAW of a file system that is not frozen fails with EINVAL.
fn thawed_already(e: io::Error) -> io::Result<()> {
    if e.raw_os_error() == Some(libc::EINVAL) {
        Ok(())
    } else {
        Err(e)
    }
}

/// Runs ioctl `request` on the file system mounted at `path`.
fn fs_ioctl<T>(path: &str, request: libc::c_ulong, arg: &mut T) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
    // SAFETY: `arg` is the argument `request` takes, on an open directory.
    sys::check(unsafe { libc::ioctl(dir.as_raw_fd(), request as _, arg as *mut T) })
        .map(drop)
        .map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))
}

/// The volume mounted at `path`, checked against the machine's volumes.
fn volume_disk(shared: &Shared, path: &str) -> io::Result<String> {
    shared
        .volumes
        .get()
        .and_then(|v| v.iter().find(|(p, _)| p == path))
        .map(|(_, dev)| dev.clone())
        .ok_or_else(|| io::Error::other(format!("no volume is mounted at {path}")))
}

/// Freezes the volume at `path`, and thaws it after `timeout` unless it
/// was thawed (or frozen again) meanwhile.
fn freeze_volume(shared: &Arc<Shared>, path: &str, timeout: Duration) -> io::Result<()> {
    volume_disk(shared, path)?;
    fs_ioctl(path, FIFREEZE, &mut 0i32)?;
    let generation = {
        let mut f = shared.freezes.lock().unwrap_or_else(|p| p.into_inner());
        let g = f.entry(path.to_owned()).or_default();
        *g += 1;
        *g
    };
    let (shared, path) = (shared.clone(), path.to_owned());
    std::thread::spawn(move || {
        std::thread::sleep(timeout);
        let current = shared
            .freezes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&path)
            .copied();
        if current == Some(generation) {
            let _ = fs_ioctl(&path, FITHAW, &mut 0i32);
        }
    });
    Ok(())
}

/// Grows the ext4 file system of the volume at `path` to fill its disk,
/// once the disk shows at least `bytes`.
fn grow_volume(shared: &Shared, path: &str, bytes: u64) -> io::Result<()> {
    let dev = volume_disk(shared, path)?;
    let size_file = format!("/sys/block/{dev}/size");
    let deadline = Instant::now() + Duration::from_secs(10);
    let size = loop {
        let sectors: u64 = std::fs::read_to_string(&size_file)?
            .trim()
            .parse()
            .map_err(io::Error::other)?;
        if sectors * 512 >= bytes {
            break sectors * 512;
        }
        if Instant::now() > deadline {
            return Err(io::Error::other(format!(
                "{dev} still has {} bytes, not {bytes}",
                sectors * 512
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let c = CString::new(path).map_err(io::Error::other)?;
    // SAFETY: a zeroed statvfs is a valid out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid path and out-parameter.
    sys::check(unsafe { libc::statvfs(c.as_ptr(), &mut st) })?;
    let mut blocks: u64 = size / st.f_frsize.max(1);
    fs_ioctl(path, EXT4_IOC_RESIZE_FS, &mut blocks)
}

/// Starts `argv` as root on a new terminal in a session of its own, replies
/// to request `id`, then streams the terminal's output to the host and
/// ends with the command's exit code, once its output is drained (or a
/// moment after it exits, when something else keeps the terminal open).
fn tty(
    shared: &Arc<Shared>,
    id: u64,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    rows: u16,
    cols: u16,
) -> io::Result<()> {
    let argv0 = argv.first().ok_or_else(|| io::Error::other("no command"))?;
    let (master, slave) = crate::init::open_terminal()?;
    crate::init::set_winsize(&master, rows.max(1), cols.max(1));
    let mut cmd = Command::new(argv0);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(shared.env.get().into_iter().flatten().map(|(k, v)| (k, v)))
        .envs(env)
        .current_dir("/");
    crate::init::prepare_main(&mut cmd, Some(slave), 0, 0, Vec::new());
    let pid = {
        let mut r = shared.reaped.lock().unwrap_or_else(|p| p.into_inner());
        let child = cmd
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("{argv0}: {e}")))?;
        let pid = child.id() as i32;
        r.watched.insert(pid);
        pid
    };
    let (input, inputs) = std::sync::mpsc::channel::<Vec<u8>>();
    {
        let mut w = master.try_clone()?;
        std::thread::spawn(move || {
            for data in inputs {
                if w.write_all(&data).is_err() {
                    break;
                }
            }
        });
    }
    let mut out = master.try_clone()?;
    shared
        .ttys
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id, TtySession { pid, master, input });
    shared.port.send(&FromGuest::Reply {
        id,
        body: Reply::Ok,
    });
    let pump = {
        let shared = shared.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 16 * 1024];
            // EIO once every process on the terminal has closed it.
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                shared.port.send(&FromGuest::TtyOutput {
                    id,
                    data: buf[..n].to_vec(),
                });
            }
        })
    };
    let shared = shared.clone();
    std::thread::spawn(move || {
        let status = {
            let mut r = shared.reaped.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if let Some(s) = r.done.remove(&pid) {
                    break s;
                }
                r = shared
                    .reaped_cv
                    .wait_timeout(r, Duration::from_millis(200))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
        };
        let deadline = Instant::now() + Duration::from_secs(1);
        while !pump.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        shared
            .ttys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        let exit_code = match status {
            WaitStatus::Exited(c) => c,
            WaitStatus::Signaled(s) => 128 + s,
        };
        shared.port.send(&FromGuest::TtyExit { id, exit_code });
    });
    Ok(())
}

fn exec(shared: &Shared, argv: Vec<String>, stdin: Option<Vec<u8>>, timeout: Duration) -> Reply {
    let Some(argv0) = argv.first() else {
        return Reply::Error {
            message: "no command".into(),
        };
    };
    let mut cmd = Command::new(argv0);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(shared.env.get().into_iter().flatten().map(|(k, v)| (k, v)))
        .current_dir("/")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: async-signal-safe calls only.
    unsafe {
        cmd.pre_exec(|| {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            sys::check(libc::setsid())?;
            Ok(())
        });
    }
    // Spawned under the lock, so the reaper cannot take its status before
    // it is watched.
    let mut child = {
        let mut r = shared.reaped.lock().unwrap_or_else(|p| p.into_inner());
        match cmd.spawn() {
            Ok(c) => {
                r.watched.insert(c.id() as i32);
                c
            }
            Err(e) => {
                let code = if e.kind() == io::ErrorKind::PermissionDenied {
                    126
                } else {
                    127
                };
                return Reply::Exec {
                    exit_code: code,
                    exit_signal: None,
                    stdout: Vec::new(),
                    stderr: format!("{argv0}: {e}\n").into_bytes(),
                    timed_out: false,
                };
            }
        }
    };
    let pid = child.id() as i32;
    if let (Some(mut w), Some(data)) = (child.stdin.take(), stdin) {
        std::thread::spawn(move || {
            let _ = w.write_all(&data);
        });
    }
    let collect = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            if let Some(r) = r {
                let _ = r.take(EXEC_OUTPUT_CAP as u64).read_to_end(&mut out);
            }
            out
        })
    };
    let out = collect(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err = collect(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = {
        let mut r = shared.reaped.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(s) = r.done.remove(&pid) {
                break s;
            }
            if !timed_out && Instant::now() >= deadline {
                timed_out = true;
                // SAFETY: kill the command's session (it is its leader).
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
            r = shared
                .reaped_cv
                .wait_timeout(r, Duration::from_millis(50))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    };
    let (code, signal) = match status {
        WaitStatus::Exited(c) => (c, None),
        WaitStatus::Signaled(s) => (128 + s, Some(s)),
    };
    Reply::Exec {
        exit_code: code,
        exit_signal: signal,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        timed_out,
    }
}

fn ps() -> Reply {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    let uptime_ms = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map(|s| (s * 1000.0) as u64)
        .unwrap_or(0);
    let mut processes = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        // Init itself is not the machine's.
        if pid == 1 {
            continue;
        }
        let dir = e.path();
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        // Kernel threads have no command line.
        let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
        if cmdline.is_empty() || f.len() < 22 {
            continue;
        }
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let command = cmdline
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        processes.push(GuestProcess {
            pid,
            start_ms: num(19) * 1000 / ticks,
            command,
            directory: std::fs::read_link(dir.join("cwd"))
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
            cpu_ms: (num(11) + num(12)) * 1000 / ticks,
            rss: num(21) * page,
        });
    }
    processes.sort_by_key(|p| p.pid);
    Reply::Ps {
        uptime_ms,
        processes,
    }
}
