//! The shim role: the host-side parent of one machine's container.
//!
//! ```text
//! hangard ──spawn──► shim (setsid, child subreaper)
//!                     ├─ crun run --detach (stdout/stderr/fd 3 = shim's pipes)
//!                     │    └─ reports {"pid":N} or {"error":"..."} on its stdout
//!                     ├─ pipes ──► machine.log (JSON lines, rotated)
//!                     ├─ waits for the container's init (pidfd)
//!                     ├─ writes exit.json (exit code, signal, oom)
//!                     └─ deletes the container (its cgroup, crun's state); exits
//! ```
//!
//! With `--standby` (a stopped machine's next start, made ahead) the shim
//! runs `crun create` instead: the container's namespaces, cgroup and init
//! are made and the init waits at the runtime's exec barrier. The shim
//! reports `{"created":true}`, writes the `standby` marker and waits on the
//! `go` FIFO in its state directory: `start` (hangard's start) runs
//! `crun start` and the shim goes on as above, reporting `{"pid":N}` on the
//! same stdout; anything else (or the shim being killed) dismisses it.
//!
//! The shim does not depend on `hangard` at any instant after it is spawned:
//! if `hangard` exits or is killed, even before it read the shim's report,
//! the shim goes on (a write to hangard's closed pipe is ignored), logs, and
//! records the exit, which the next `hangard` reads when it adopts the
//! machine. From before its spawn until it exits the shim holds an exclusive
//! `flock` on `shim.lock` in its state directory (hangard takes the lock and
//! hands the locked file `shim.lock` to it as `--lock-fd`), so a `hangard` that starts
//! while the shim has not yet written `shim.pid` knows a shim is alive.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hangar_core::ExitInfo;

use crate::logfile::{LineBuffer, LogFile};
use crate::sys::{self, WaitStatus};

struct Options {
    id: String,
    runtime: PathBuf,
    runtime_root: PathBuf,
    bundle: PathBuf,
    state_dir: PathBuf,
    log: PathBuf,
    log_max_bytes: u64,
    oom_file: Option<PathBuf>,
    lock_fd: Option<i32>,
    standby: bool,
    /// The runtime cannot hand the container an extra fd (runsc): init has
    /// no status pipe, and the container's exit status is all there is.
    no_status_fd: bool,
    /// Global flags for the runtime (`--runtime-flag`, repeatable).
    runtime_flags: Vec<String>,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let get = |name: &str| -> Result<Option<String>, String> {
        match args.iter().position(|a| a == name) {
            Some(i) => args
                .get(i + 1)
                .cloned()
                .map(Some)
                .ok_or_else(|| format!("{name} needs a value")),
            None => Ok(None),
        }
    };
    let need = |name: &str| get(name)?.ok_or_else(|| format!("missing {name}"));
    Ok(Options {
        id: need("--id")?,
        runtime: need("--runtime")?.into(),
        runtime_root: need("--runtime-root")?.into(),
        bundle: need("--bundle")?.into(),
        state_dir: need("--state-dir")?.into(),
        log: need("--log")?.into(),
        log_max_bytes: need("--log-max-bytes")?
            .parse()
            .map_err(|_| "bad --log-max-bytes")?,
        oom_file: get("--oom-file")?.map(PathBuf::from),
        lock_fd: get("--lock-fd")?
            .map(|v| v.parse().map_err(|_| "bad --lock-fd"))
            .transpose()?,
        standby: args.iter().any(|a| a == "--standby"),
        no_status_fd: args.iter().any(|a| a == "--no-status-fd"),
        runtime_flags: args
            .windows(2)
            .filter(|w| w[0] == "--runtime-flag")
            .map(|w| w[1].clone())
            .collect(),
    })
}

/// Files the shim keeps in its state directory.
pub const SHIM_PID_FILE: &str = "shim.pid";
/// Written when the container ended.
pub const EXIT_FILE: &str = "exit.json";
const CONTAINER_PID_FILE: &str = "container.pid";
/// Present while a `--standby` shim waits for its start.
pub const STANDBY_FILE: &str = "standby";
/// The FIFO a `--standby` shim waits on: `start` starts the container.
pub const GO_FIFO: &str = "go";
const RUNTIME_LOG: &str = "runtime.log";
const SHIM_LOG: &str = "shim.log";

/// Runs the shim; returns its exit code.
pub fn main(args: &[String]) -> i32 {
    let opts = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            report(&serde_json::json!({ "error": format!("shim: {e}") }));
            return 2;
        }
    };
    // Nothing of hangard's working directory is held (hangard spawns the
    // shim without changing it).
    let _ = std::env::set_current_dir("/");
    // The lock stays ours (it is shared with hangard's copy until hangard
    // closes it); the runtime and the container must not inherit it.
    if let Some(fd) = opts.lock_fd {
        sys::set_cloexec(fd);
    }
    // SAFETY: setsid and prctl have no memory-safety preconditions; signal()
    // with SIG_IGN installs no handler code.
    unsafe {
        libc::setsid();
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    match run(&opts) {
        Ok(()) => 0,
        Err(e) => {
            shim_log(&opts, &format!("shim failed: {e}"));
            1
        }
    }
}

fn run(o: &Options) -> io::Result<()> {
    let _ = fs::remove_file(o.state_dir.join(EXIT_FILE));
    // The machine's cgroup outlives its containers: only kills after this
    // count for this one.
    let oom_before = o.oom_file.as_deref().map(oom_kills).unwrap_or(0);
    write_atomic(
        &o.state_dir.join(SHIM_PID_FILE),
        format!("{} {}\n", std::process::id(), start_time("self")?).as_bytes(),
    )?;

    let (out_r, out_w) = sys::pipe()?;
    let (err_r, err_w) = sys::pipe()?;
    let (status_r, status_w) = sys::pipe()?;

    // `run --detach` (create and start in one runtime process: the network
    // namespace is made beforehand, so nothing needs to happen in between).
    // The container's stdio and fd 3 are the pipes' write ends.
    let pid_file = o.state_dir.join(CONTAINER_PID_FILE);
    let _ = fs::remove_file(&pid_file);
    let mut create = runtime(o);
    if o.standby {
        create.arg("create");
    } else {
        create.arg("run").arg("--detach");
    }
    create
        .arg("--bundle")
        .arg(&o.bundle)
        .arg("--pid-file")
        .arg(&pid_file);
    if !o.no_status_fd {
        create.arg("--preserve-fds").arg("1");
    }
    create
        .arg(&o.id)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out_w.try_clone()?))
        .stderr(Stdio::from(err_w.try_clone()?));
    if !o.no_status_fd {
        let status_raw = status_w.as_raw_fd();
        // SAFETY: dup2 is async-signal-safe; fd 3 becomes the status pipe in
        // the child (dup2 clears close-on-exec on the new fd).
        unsafe {
            create.pre_exec(move || {
                sys::check(libc::dup2(status_raw, 3))?;
                Ok(())
            });
        }
    }
    let mut runtime_started = std::time::Instant::now();
    let started = create.status()?;
    // The Command still holds copies of the pipes' write ends: drop them all,
    // or the pipes never reach EOF when the container ends.
    drop(create);
    drop((out_w, err_w, status_w));
    if !started.success() {
        let msg = runtime_error(o, if o.standby { "create" } else { "start" });
        cleanup(o);
        return report_failure(o, &msg);
    }
    if o.standby {
        let created_ms = runtime_started.elapsed().as_secs_f64() * 1e3;
        let word = match wait_for_go(o, created_ms) {
            Ok(w) => w,
            Err(e) => {
                dismissed(o);
                return Err(e);
            }
        };
        if word.trim() != "start" {
            dismissed(o);
            return Ok(());
        }
        runtime_started = std::time::Instant::now();
        let started = match release_exec_fifo(o) {
            Ok(true) => true,
            _ => runtime(o)
                .arg("start")
                .arg(&o.id)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?
                .success(),
        };
        let _ = fs::remove_file(o.state_dir.join(STANDBY_FILE));
        if !started {
            let msg = runtime_error(o, "start");
            cleanup(o);
            return report_failure(o, &msg);
        }
    }
    let runtime_ms = runtime_started.elapsed().as_secs_f64() * 1e3;
    let pid: libc::pid_t = fs::read_to_string(&pid_file)?
        .trim()
        .parse()
        .map_err(|_| io::Error::other("bad container pid file"))?;
    // The container's init is our child now (we are its subreaper), so the
    // pidfd works even if it has already exited.
    let pidfd = sys::pidfd_open(pid)?;

    // Tell hangard, then detach from it: nothing more goes to its pipe. A
    // hangard that died meanwhile does not read it, and that is fine.
    report(&serde_json::json!({ "pid": pid, "runtime_ms": runtime_ms }));
    detach_stdio();

    let mut log = LogFile::open(o.log.clone(), o.log_max_bytes)?;
    let (wait, init_report) = pump(pid, pidfd, out_r, err_r, status_r, &mut log);

    let mut info = match (wait, init_report) {
        // init reported on its status fd: trust its account of the main process.
        (WaitStatus::Exited(_), Some(report)) => report,
        (WaitStatus::Exited(code), None) => ExitInfo {
            exit_code: code,
            ..ExitInfo::default()
        },
        (WaitStatus::Signaled(sig), _) => ExitInfo {
            exit_code: 128 + sig,
            signal: Some(sig),
            ..ExitInfo::default()
        },
    };
    info.exited_at_ms = sys::now_ms();
    info.oom_killed = o.oom_file.as_deref().map(oom_kills).unwrap_or(0) > oom_before;
    write_atomic(
        &o.state_dir.join(EXIT_FILE),
        serde_json::to_string(&info)
            .map_err(io::Error::other)?
            .as_bytes(),
    )?;
    cleanup(o);
    Ok(())
}

/// A created container waits: marks it, tells hangard, and returns the
/// word written to the `go` FIFO, or nothing if the container died first
/// (killed from outside: the standby is over).
fn wait_for_go(o: &Options, created_ms: f64) -> io::Result<String> {
    let go = o.state_dir.join(GO_FIFO);
    let _ = fs::remove_file(&go);
    sys::mkfifo(&go)?;
    // Read and write: opening never blocks, and the FIFO never reads as
    // closed between hangard's writes.
    let mut fifo = fs::OpenOptions::new().read(true).write(true).open(&go)?;
    let pid: libc::pid_t = fs::read_to_string(o.state_dir.join(CONTAINER_PID_FILE))?
        .trim()
        .parse()
        .map_err(|_| io::Error::other("bad container pid file"))?;
    let pidfd = sys::pidfd_open(pid)?;
    write_atomic(&o.state_dir.join(STANDBY_FILE), b"")?;
    report(&serde_json::json!({ "created": true, "runtime_ms": created_ms }));
    let mut word = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        let mut fds = [pollfd(fifo.as_raw_fd()), pollfd(pidfd.as_raw_fd())];
        // SAFETY: `fds` is a valid array of pollfd for its length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[0].revents & libc::POLLIN != 0 {
            let got = fifo.read(&mut buf)?;
            word.extend_from_slice(&buf[..got]);
            if let Some(end) = word.iter().position(|b| *b == b'\n') {
                word.truncate(end);
                break;
            }
        } else if fds[1].revents != 0 {
            word.clear();
            break;
        }
    }
    let _ = fs::remove_file(&go);
    Ok(String::from_utf8_lossy(&word).into_owned())
}

/// Does what `crun start` does, without its process: a container crun
/// created waits, its init reading `exec.fifo` in crun's state directory;
/// a byte written there lets it exec, and the FIFO removed tells crun the
/// container runs. False for another runtime (runc's FIFO goes the other
/// way: `runc start` does it) or when there is no such FIFO.
fn release_exec_fifo(o: &Options) -> io::Result<bool> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    if o.runtime.file_name().and_then(|n| n.to_str()) != Some("crun") {
        return Ok(false);
    }
    let fifo = o.runtime_root.join(&o.id).join("exec.fifo");
    match fs::symlink_metadata(&fifo) {
        Ok(m) if m.file_type().is_fifo() => {}
        _ => return Ok(false),
    }
    // Non-blocking: the waiting init holds the reading end.
    let mut f = fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)?;
    f.write_all(b"1")?;
    fs::remove_file(&fifo)?;
    Ok(true)
}

/// A standby that will not start: its container goes.
fn dismissed(o: &Options) {
    cleanup(o);
    let _ = fs::remove_file(o.state_dir.join(STANDBY_FILE));
    let _ = fs::remove_file(o.state_dir.join(GO_FIFO));
}

/// Moves the container's output into the log until its init exits; returns
/// the init's wait status and the report it wrote on the status pipe.
fn pump(
    pid: libc::pid_t,
    pidfd: OwnedFd,
    out_r: OwnedFd,
    err_r: OwnedFd,
    status_r: OwnedFd,
    log: &mut LogFile,
) -> (WaitStatus, Option<ExitInfo>) {
    let mut streams: [(Option<File>, &str, LineBuffer); 2] = [
        (Some(File::from(out_r)), "stdout", LineBuffer::default()),
        (Some(File::from(err_r)), "stderr", LineBuffer::default()),
    ];
    let mut status_pipe = Some(File::from(status_r));
    let mut status_bytes = Vec::new();
    let mut exited: Option<WaitStatus> = None;
    let mut drain_deadline: Option<Instant> = None;
    let mut buf = vec![0u8; 64 * 1024];

    loop {
        if let Some(deadline) = drain_deadline {
            let open = streams.iter().any(|s| s.0.is_some()) || status_pipe.is_some();
            if !open || Instant::now() >= deadline {
                break;
            }
        }
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(4);
        let fd_of = |f: &Option<File>| f.as_ref().map_or(-1, |f| f.as_raw_fd());
        for s in &streams {
            fds.push(pollfd(fd_of(&s.0)));
        }
        fds.push(pollfd(fd_of(&status_pipe)));
        fds.push(pollfd(if exited.is_none() {
            pidfd.as_fd().as_raw_fd()
        } else {
            -1
        }));
        let timeout_ms = if drain_deadline.is_some() { 50 } else { 1000 };
        // SAFETY: `fds` is a valid array of pollfd for its length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        for (i, s) in streams.iter_mut().enumerate() {
            if fds[i].revents == 0 {
                continue;
            }
            let (file, name, lines) = s;
            match file.as_mut().map(|f| f.read(&mut buf)) {
                Some(Ok(0)) | Some(Err(_)) => {
                    lines.finish(|l| {
                        let _ = log.write(name, l);
                    });
                    *file = None;
                }
                Some(Ok(k)) => lines.push(&buf[..k], |l| {
                    let _ = log.write(name, l);
                }),
                None => {}
            }
        }
        if fds[2].revents != 0 {
            match status_pipe.as_mut().map(|f| f.read(&mut buf)) {
                Some(Ok(0)) | Some(Err(_)) => status_pipe = None,
                Some(Ok(k)) => status_bytes.extend_from_slice(&buf[..k]),
                None => {}
            }
        }
        if exited.is_none() && (fds[3].revents != 0 || n == 0) {
            let status = match sys::try_wait(pid) {
                Ok(Some((_, status))) => Some(status),
                Ok(None) => None,
                // Not our child after all (cannot happen for a subreaper);
                // never spin on a readable pidfd.
                Err(_) => Some(WaitStatus::Exited(255)),
            };
            if let Some(status) = status {
                exited = Some(status);
                // The namespace dies with its init; give the pipes a moment to
                // deliver what was written last.
                drain_deadline = Some(Instant::now() + Duration::from_millis(500));
            }
        }
        // Reap any other orphan that was reparented to us; this may reap the
        // container's init too, whose status then must not be lost.
        while let Ok(Some((reaped, status))) = sys::try_wait(-1) {
            if reaped == pid && exited.is_none() {
                exited = Some(status);
                drain_deadline = Some(Instant::now() + Duration::from_millis(500));
            }
        }
    }
    for (_, name, lines) in streams.iter_mut() {
        lines.finish(|l| {
            let _ = log.write(name, l);
        });
    }
    let report = serde_json::from_slice::<ExitInfo>(
        status_bytes.split(|&b| b == b'\n').next().unwrap_or(&[]),
    )
    .ok();
    (exited.unwrap_or(WaitStatus::Exited(255)), report)
}

fn pollfd(fd: libc::c_int) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

fn runtime(o: &Options) -> Command {
    let mut c = Command::new(&o.runtime);
    c.arg("--root")
        .arg(&o.runtime_root)
        .arg(format!("--log={}", o.state_dir.join(RUNTIME_LOG).display()))
        .arg("--log-format=json")
        .args(&o.runtime_flags);
    c
}

/// The last error message the OCI runtime logged.
fn runtime_error(o: &Options, step: &str) -> String {
    let text = fs::read_to_string(o.state_dir.join(RUNTIME_LOG)).unwrap_or_default();
    let msg = text
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["level"] == "error")
        .and_then(|v| v["msg"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{} {step} failed", o.runtime.display()));
    format!("container {step} failed: {msg}")
}

/// Reports a failed start to hangard and in `exit.json`, for a hangard that
/// adopted this shim after the one that spawned it went away.
fn report_failure(o: &Options, msg: &str) -> io::Result<()> {
    shim_log(o, msg);
    let info = ExitInfo {
        exit_code: -1,
        exited_at_ms: sys::now_ms(),
        error: Some(msg.to_owned()),
        ..ExitInfo::default()
    };
    let _ = write_atomic(
        &o.state_dir.join(EXIT_FILE),
        serde_json::to_string(&info)
            .map_err(io::Error::other)?
            .as_bytes(),
    );
    report(&serde_json::json!({ "error": msg }));
    Ok(())
}

/// One line to hangard on stdout. Errors are ignored: hangard may have died
/// (EPIPE), and the machine must not die with it.
pub(crate) fn report(v: &serde_json::Value) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

fn cleanup(o: &Options) {
    if let Err(why) = delete_ended(o, Path::new(CGROUP_ROOT)) {
        if why != NOT_CRUN {
            shim_log(
                o,
                &format!("{} deletes the container: {why}", o.runtime.display()),
            );
        }
        let _ = runtime(o)
            .arg("delete")
            .arg("--force")
            .arg(&o.id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let _ = fs::remove_file(o.state_dir.join(CONTAINER_PID_FILE));
}

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Another runtime's containers are always deleted by it (not logged).
const NOT_CRUN: &str = "not crun";

/// What `crun delete` does for a container that has ended, done here
/// without starting crun (starting it costs more CPU than the work): crun's
/// state directory removed, once the cgroup is found empty (nothing of the
/// container runs). Unlike `crun delete` it leaves the cgroup, empty, for
/// the machine's next container (hangard removes it with the machine):
/// removing a cgroup and making it again costs the kernel work that grows
/// with the cgroups and filesystems of the host (the memory controller's
/// offlining walks every filesystem's reclaim lists; a new cpuset checks
/// every sibling). Says why not, for `crun delete --force` to
/// do it all, with another runtime, a systemd cgroup, hooks, or anything
/// left in the cgroup (a process, a child cgroup): then nothing was
/// removed (crun finishes what a failed removal left).
fn delete_ended(o: &Options, cgroup_root: &Path) -> Result<(), &'static str> {
    if o.runtime.file_name().and_then(|n| n.to_str()) != Some("crun") {
        return Err(NOT_CRUN);
    }
    let state = o.runtime_root.join(&o.id);
    let status: serde_json::Value = fs::read(state.join("status"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("no status")?;
    let cgroup = match status["cgroup-path"].as_str() {
        Some(p) if !p.is_empty() && status["systemd-cgroup"] != true => p.trim_start_matches('/'),
        _ => return Err("no cgroup of its own"),
    };
    if cgroup
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err("an unexpected cgroup path");
    }
    let hooks = fs::read(state.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .map(|c| !c["hooks"].is_null());
    if hooks != Some(false) {
        return Err("hooks to run");
    }
    let dirs = cgroup_dirs(cgroup_root, cgroup);
    if dirs.is_empty() {
        return Err("no cgroup found");
    }
    if !dirs.iter().all(|d| empty_cgroup(d)) {
        return Err("its cgroup is not empty");
    }
    fs::remove_dir_all(&state).map_err(|_| "its state cannot be removed")
}

/// The directories of cgroup `path` in every hierarchy mounted under
/// `root` (one on a cgroup v2 host, one a controller on v1): what
/// `MachineCgroup::dirs` in hangar-runtime-oci finds, which the shim (a
/// static executable that crate builds) cannot call.
fn cgroup_dirs(root: &Path, path: &str) -> Vec<PathBuf> {
    if root.join("cgroup.controllers").exists() {
        let d = root.join(path);
        return if d.is_dir() { vec![d] } else { Vec::new() };
    }
    let Ok(entries) = fs::read_dir(root) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        // `cpu` and `cpuacct` may be links to `cpu,cpuacct`.
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path().join(path))
        .filter(|d| d.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// A cgroup directory with no process and no child cgroup.
fn empty_cgroup(dir: &Path) -> bool {
    let no_procs = fs::read_to_string(dir.join("cgroup.procs")).is_ok_and(|p| p.trim().is_empty());
    let no_children = fs::read_dir(dir)
        .is_ok_and(|mut rd| !rd.any(|e| e.is_ok_and(|e| e.file_type().is_ok_and(|t| t.is_dir()))));
    no_procs && no_children
}

/// Points stdin, stdout and stderr at /dev/null.
pub(crate) fn detach_stdio() {
    if let Ok(null) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard fds, which we own.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

fn shim_log(o: &Options, msg: &str) {
    if let Ok(mut f) = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(o.state_dir.join(SHIM_LOG))
    {
        let _ = writeln!(f, "{} {} {msg}", sys::now_ms(), o.id);
    }
}

/// The memory cgroup's `oom_kill` counter (cgroup v1 `memory.oom_control`
/// and v2 `memory.events` both carry the line); 0 without one.
fn oom_kills(path: &Path) -> u64 {
    fs::read_to_string(path)
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Field 22 of `/proc/<pid>/stat`: the process's start time in clock ticks,
/// which tells a live process from a later one that reused its pid.
pub fn start_time(pid: &str) -> io::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may contain spaces; fields resume after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| io::Error::other("bad stat"))?;
    rest.split_whitespace()
        .nth(19)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| io::Error::other("bad stat"))
}

/// Replaces `path` atomically. No fsync: these files must survive a crash of
/// `hangard`, not of the host (after which no container survives either), and
/// an fsync would sit on every machine start.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
    }
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_start_time() {
        assert!(start_time("self").unwrap() > 0);
    }

    #[test]
    fn oom_counter() {
        let dir = std::env::temp_dir().join(format!("hangar-oom-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let f = dir.join("memory.oom_control");
        fs::write(&f, "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n").unwrap();
        assert_eq!(oom_kills(&f), 0);
        fs::write(&f, "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n").unwrap();
        assert_eq!(oom_kills(&f), 2);
        fs::write(&f, "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n").unwrap();
        assert_eq!(oom_kills(&f), 1);
        assert_eq!(oom_kills(&dir.join("missing")), 0);
        fs::remove_dir_all(&dir).unwrap();
    }
}
