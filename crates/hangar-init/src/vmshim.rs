//! The vmshim role: the host-side parent of one microVM.
//!
//! ```text
//! hangard ──spawn──► vmshim (setsid; machine config on stdin)
//!                     ├─ qemu (PDEATHSIG: dies with the shim; console → console.log)
//!                     ├─ agent.sock (qemu's end of the guest's virtio-serial port)
//!                     │    hello → config; started → {"pid":N} on stdout;
//!                     │    log → machine.log; exit → exit.json, ack
//!                     ├─ ctl.sock: one request line in, one reply line out
//!                     │    (a terminal session streams both ways);
//!                     │    suspend: stop, migrate to memory.snap, quit qemu;
//!                     │    resume: qemu -incoming memory.snap, cont
//!                     └─ qemu exited → exit.json (if the guest wrote none); exits
//! ```
//!
//! As with the container shim, nothing here depends on `hangard` once it
//! is spawned: it holds `shim.lock` from before its spawn until it exits
//! and writes `shim.pid`, so a later `hangard` adopts it.

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hangar_core::ExitInfo;
use hangar_core::guest::{FromGuest, GuestConfig, Reply, Request, ToGuest};

use crate::logfile::{LineBuffer, LogFile};
use crate::shim::{EXIT_FILE, SHIM_PID_FILE, detach_stdio, report, start_time, write_atomic};
use crate::sys;

/// qemu's pid, for hangard's usage figures.
pub const QEMU_PID_FILE: &str = "qemu.pid";
/// qemu's end of the guest's port.
pub const AGENT_SOCKET: &str = "agent.sock";
/// Where `hangard` sends requests.
pub const CTL_SOCKET: &str = "ctl.sock";
/// The VM's serial console (kernel messages).
pub const CONSOLE_LOG: &str = "console.log";
/// qemu's monitor (QMP).
pub const QMP_SOCKET: &str = "qmp.sock";
/// A suspended VM's saved state (memory and devices).
pub const SNAPSHOT_FILE: &str = "memory.snap";

struct Options {
    qemu: PathBuf,
    state_dir: PathBuf,
    log: PathBuf,
    log_max_bytes: u64,
    lock_fd: Option<i32>,
    boot_timeout: Duration,
    qemu_args: Vec<String>,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let (flags, qemu_args) = match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], args[i + 1..].to_vec()),
        None => return Err("missing -- before qemu's arguments".into()),
    };
    let get = |name: &str| -> Option<String> {
        flags
            .iter()
            .position(|a| a == name)
            .and_then(|i| flags.get(i + 1).cloned())
    };
    let need = |name: &str| get(name).ok_or_else(|| format!("missing {name}"));
    Ok(Options {
        qemu: need("--qemu")?.into(),
        state_dir: need("--state-dir")?.into(),
        log: need("--log")?.into(),
        log_max_bytes: need("--log-max-bytes")?
            .parse()
            .map_err(|_| "bad --log-max-bytes")?,
        lock_fd: get("--lock-fd").and_then(|v| v.parse().ok()),
        boot_timeout: Duration::from_secs(
            get("--boot-timeout")
                .and_then(|v| v.parse().ok())
                .unwrap_or(120),
        ),
        qemu_args,
    })
}

/// Runs the vmshim; returns its exit code.
pub fn main(args: &[String]) -> i32 {
    let opts = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            report(&serde_json::json!({ "error": format!("vmshim: {e}") }));
            return 2;
        }
    };
    if let Some(fd) = opts.lock_fd {
        sys::set_cloexec(fd);
    }
    // SAFETY: setsid and signal(SIG_IGN) have no memory-safety preconditions.
    unsafe {
        libc::setsid();
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    match run(&opts) {
        Ok(()) => 0,
        Err(e) => {
            let _ = fail(&opts, &format!("vmshim: {e}"));
            1
        }
    }
}

struct Link {
    /// The guest's port; none while the VM is suspended.
    to_guest: Mutex<Option<UnixStream>>,
    /// Suspended (or being suspended): requests for the guest are refused.
    suspended: AtomicBool,
    pending: Mutex<HashMap<u64, mpsc::Sender<Reply>>>,
    next_id: AtomicU64,
    started: AtomicBool,
    /// Terminal sessions: the ctl connection each one's traffic goes to.
    ttys: Mutex<HashMap<u64, UnixStream>>,
}

impl Link {
    /// Writes `msg` to terminal session `id`'s connection; `last` ends the
    /// session (its connection is shut down). A connection that does not
    /// take its output in time loses its session, rather than stalling
    /// everything else the guest reports.
    fn to_tty(&self, id: u64, msg: &FromGuest, last: bool) -> bool {
        let mut ttys = self.ttys.lock().unwrap_or_else(|p| p.into_inner());
        let Some(conn) = ttys.get(&id) else {
            return false;
        };
        let mut line = serde_json::to_vec(msg).unwrap_or_default();
        line.push(b'\n');
        let ok = (&*conn).write_all(&line).is_ok();
        if last || !ok {
            if let Some(conn) = ttys.remove(&id) {
                let _ = conn.shutdown(std::net::Shutdown::Both);
            }
        }
        true
    }

    fn send(&self, msg: &ToGuest) -> io::Result<()> {
        let mut line = serde_json::to_vec(msg).map_err(io::Error::other)?;
        line.push(b'\n');
        match &mut *self.to_guest.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(port) => port.write_all(&line),
            None => Err(io::Error::other("the machine is suspended")),
        }
    }
}

/// What the reader of the guest's port keeps across a suspend.
struct GuestSide {
    /// The config, until the guest's hello takes it.
    config: Option<GuestConfig>,
    log: LogFile,
    buffers: HashMap<String, LineBuffer>,
}

/// Starts qemu, from the main thread only: its PDEATHSIG fires when the
/// thread that spawned it ends. `incoming` restores a snapshot.
fn spawn_qemu(o: &Options, incoming: Option<&Path>) -> io::Result<std::process::Child> {
    let console = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(o.state_dir.join(CONSOLE_LOG))?;
    let mut cmd = Command::new(&o.qemu);
    cmd.args(&o.qemu_args);
    if let Some(snapshot) = incoming {
        cmd.arg("-incoming")
            .arg(format!("file:{}", snapshot.display()));
    }
    cmd.current_dir(&o.state_dir)
        .stdin(Stdio::null())
        .stdout(console.try_clone()?)
        .stderr(console);
    // SAFETY: prctl is async-signal-safe: qemu dies with the shim, so a
    // killed shim never leaves a VM behind.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            Ok(())
        });
    }
    let qemu = cmd.spawn()?;
    write_atomic(
        &o.state_dir.join(QEMU_PID_FILE),
        format!("{}\n", qemu.id()).as_bytes(),
    )?;
    Ok(qemu)
}

/// Connects to qemu's end of the guest's port, which qemu makes as it
/// starts; the error says why it could not.
fn connect_agent(o: &Options, qemu: &mut std::process::Child) -> Result<UnixStream, String> {
    let agent = o.state_dir.join(AGENT_SOCKET);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(s) = UnixStream::connect(&agent) {
            return Ok(s);
        }
        if let Ok(Some(status)) = qemu.try_wait() {
            return Err(format!("qemu exited ({status}): {}", console_tail(o)));
        }
        if Instant::now() > deadline {
            let _ = qemu.kill();
            let _ = qemu.wait();
            return Err("qemu did not open the guest's port".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn start_reader(
    stream: UnixStream,
    link: &Arc<Link>,
    mut side: GuestSide,
    o: &Options,
) -> std::thread::JoinHandle<GuestSide> {
    let link = link.clone();
    let state_dir = o.state_dir.clone();
    std::thread::spawn(move || {
        from_guest(stream, &link, &mut side, &state_dir);
        side
    })
}

/// The operations the main thread does for the ctl server: suspend and
/// resume replace qemu, which only the main thread may spawn.
type Ops = mpsc::Sender<(Request, mpsc::Sender<Reply>)>;

fn run(o: &Options) -> io::Result<()> {
    let mut config = String::new();
    io::stdin().read_to_string(&mut config)?;
    let config: GuestConfig = serde_json::from_str(&config).map_err(io::Error::other)?;
    for f in [
        EXIT_FILE,
        AGENT_SOCKET,
        CTL_SOCKET,
        QEMU_PID_FILE,
        SNAPSHOT_FILE,
        CONSOLE_LOG,
    ] {
        let _ = fs::remove_file(o.state_dir.join(f));
    }
    write_atomic(
        &o.state_dir.join(SHIM_PID_FILE),
        format!("{} {}\n", std::process::id(), start_time("self")?).as_bytes(),
    )?;
    let mut qemu = spawn_qemu(o, None)?;
    let stream = match connect_agent(o, &mut qemu) {
        Ok(s) => s,
        Err(msg) => return fail(o, &msg),
    };
    let link = Arc::new(Link {
        to_guest: Mutex::new(Some(stream.try_clone()?)),
        suspended: AtomicBool::new(false),
        pending: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
        started: AtomicBool::new(false),
        ttys: Mutex::new(HashMap::new()),
    });
    let side = GuestSide {
        config: Some(config),
        log: LogFile::open(o.log.clone(), o.log_max_bytes)?,
        buffers: HashMap::new(),
    };
    let mut reader = Some(start_reader(stream, &link, side, o));
    let (ops, ops_rx) = mpsc::channel();
    {
        let link = link.clone();
        let listener = UnixListener::bind(o.state_dir.join(CTL_SOCKET))?;
        std::thread::spawn(move || serve_ctl(listener, link, ops));
    }
    // The boot must end in a started (or failed) report in time.
    let booted = Instant::now();
    while !link.started.load(Ordering::SeqCst) {
        if qemu.try_wait()?.is_some() {
            break;
        }
        if booted.elapsed() > o.boot_timeout {
            let _ = qemu.kill();
            let _ = qemu.wait();
            return fail(
                o,
                &format!(
                    "the VM did not start its init within {}s: {}",
                    o.boot_timeout.as_secs(),
                    console_tail(o)
                ),
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // Running: until qemu exits, other than for a suspend.
    let mut qemu = Some(qemu);
    let mut parked: Option<GuestSide> = None;
    let status = loop {
        if let Some(q) = qemu.as_mut()
            && let Some(status) = q.try_wait()?
        {
            break status;
        }
        let Ok((op, tx)) = ops_rx.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        let resuming = matches!(op, Request::Resume);
        let result = match op {
            Request::Suspend => suspend(o, &link, &mut qemu, &mut reader, &mut parked),
            Request::Resume => resume(o, &link, &mut qemu, &mut reader, &mut parked),
            Request::BlockResize { drive, bytes } if qemu.is_some() => {
                Qmp::connect(&o.state_dir.join(QMP_SOCKET))
                    .and_then(|mut m| {
                        m.cmd(
                            "block_resize",
                            Some(serde_json::json!({ "device": drive, "size": bytes })),
                        )
                    })
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
            Request::BlockResize { .. } => Err("the machine is suspended".into()),
            _ => Err("not an operation of the vmshim".into()),
        };
        // A failed resume leaves no VM to run.
        let fatal = resuming && result.is_err() && qemu.is_none();
        let _ = tx.send(match &result {
            Ok(()) => Reply::Ok,
            Err(message) => Reply::Error {
                message: message.clone(),
            },
        });
        if let (true, Err(msg)) = (fatal, result) {
            // No VM left to run: the machine ends here.
            let _ = fs::remove_file(o.state_dir.join(CTL_SOCKET));
            return fail(o, &msg);
        }
    };
    // The port closes with qemu: the reader drains what the guest wrote.
    let deadline = Instant::now() + Duration::from_secs(2);
    while reader.as_ref().is_some_and(|r| !r.is_finished()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    if !o.state_dir.join(EXIT_FILE).exists() {
        let msg = if link.started.load(Ordering::SeqCst) {
            format!("the VM stopped without reporting how the machine ended (qemu: {status})")
        } else {
            format!(
                "the VM stopped before its init ran (qemu: {status}): {}",
                console_tail(o)
            )
        };
        fail(o, &msg)?;
    }
    let _ = fs::remove_file(o.state_dir.join(CTL_SOCKET));
    let _ = fs::remove_file(o.state_dir.join(QEMU_PID_FILE));
    Ok(())
}

/// Saves the VM to [`SNAPSHOT_FILE`] and ends qemu: vCPUs stopped, the
/// state migrated to the file, qemu quit. The guest's side of the port is
/// parked for the resume. Fails (the VM running on) if qemu cannot save it.
fn suspend(
    o: &Options,
    link: &Link,
    qemu: &mut Option<std::process::Child>,
    reader: &mut Option<std::thread::JoinHandle<GuestSide>>,
    parked: &mut Option<GuestSide>,
) -> Result<(), String> {
    let Some(q) = qemu.as_mut() else {
        return Ok(());
    };
    link.suspended.store(true, Ordering::SeqCst);
    let snapshot = o.state_dir.join(SNAPSHOT_FILE);
    let _ = fs::remove_file(&snapshot);
    let saved = (|| -> io::Result<()> {
        let mut m = Qmp::connect(&o.state_dir.join(QMP_SOCKET))?;
        m.cmd("stop", None)?;
        m.cmd(
            "migrate",
            Some(serde_json::json!({ "uri": format!("file:{}", snapshot.display()) })),
        )?;
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let r = m.cmd("query-migrate", None)?;
            match r["status"].as_str().unwrap_or_default() {
                "completed" => break,
                "failed" | "cancelled" => {
                    let _ = m.cmd("cont", None);
                    return Err(io::Error::other(format!(
                        "qemu could not save the VM: {}",
                        r["error-desc"].as_str().unwrap_or("migration failed")
                    )));
                }
                _ if Instant::now() > deadline => {
                    let _ = m.cmd("migrate_cancel", None);
                    let _ = m.cmd("cont", None);
                    return Err(io::Error::other("saving the VM took too long"));
                }
                _ => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        // qemu answers and then closes its monitor as it quits.
        let _ = m.cmd("quit", None);
        Ok(())
    })();
    if let Err(e) = saved {
        let _ = fs::remove_file(&snapshot);
        link.suspended.store(false, Ordering::SeqCst);
        return Err(e.to_string());
    }
    let _ = q.wait();
    *qemu = None;
    *link.to_guest.lock().unwrap_or_else(|p| p.into_inner()) = None;
    let _ = fs::remove_file(o.state_dir.join(QEMU_PID_FILE));
    if let Some(r) = reader.take() {
        *parked = r.join().ok();
    }
    Ok(())
}

/// Starts qemu again from [`SNAPSHOT_FILE`], reconnects the guest's port
/// and lets the vCPUs go on where they stopped.
fn resume(
    o: &Options,
    link: &Arc<Link>,
    qemu: &mut Option<std::process::Child>,
    reader: &mut Option<std::thread::JoinHandle<GuestSide>>,
    parked: &mut Option<GuestSide>,
) -> Result<(), String> {
    if qemu.is_some() {
        return Ok(());
    }
    let snapshot = o.state_dir.join(SNAPSHOT_FILE);
    if !snapshot.exists() {
        return Err("the suspended VM's snapshot is gone".into());
    }
    let mut q = spawn_qemu(o, Some(&snapshot)).map_err(|e| format!("starting qemu: {e}"))?;
    let restored = (|| -> Result<UnixStream, String> {
        let stream = connect_agent(o, &mut q)?;
        let mut m = Qmp::connect(&o.state_dir.join(QMP_SOCKET)).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let st = m.cmd("query-status", None).map_err(|e| e.to_string())?;
            match st["status"].as_str().unwrap_or_default() {
                "inmigrate" if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                "paused" | "postmigrate" | "prelaunch" | "running" => break,
                other => {
                    return Err(format!(
                        "qemu could not restore the VM (state {other}): {}",
                        console_tail(o)
                    ));
                }
            }
        }
        *link.to_guest.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(stream.try_clone().map_err(|e| e.to_string())?);
        m.cmd("cont", None).map_err(|e| e.to_string())?;
        Ok(stream)
    })();
    let stream = match restored {
        Ok(s) => s,
        Err(e) => {
            let _ = q.kill();
            let _ = q.wait();
            return Err(e);
        }
    };
    let side = match parked.take() {
        Some(side) => side,
        None => GuestSide {
            config: None,
            log: LogFile::open(o.log.clone(), o.log_max_bytes)
                .map_err(|e| format!("the machine's log: {e}"))?,
            buffers: HashMap::new(),
        },
    };
    *reader = Some(start_reader(stream, link, side, o));
    *qemu = Some(q);
    link.suspended.store(false, Ordering::SeqCst);
    let _ = fs::remove_file(&snapshot);
    Ok(())
}

/// A blocking QMP client on qemu's monitor socket.
struct Qmp {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Qmp {
    fn connect(path: &Path) -> io::Result<Qmp> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let conn = loop {
            match UnixStream::connect(path) {
                Ok(c) => break c,
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        conn.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut m = Qmp {
            r: BufReader::new(conn.try_clone()?),
            w: conn,
        };
        let mut greeting = String::new();
        m.r.read_line(&mut greeting)?;
        m.cmd("qmp_capabilities", None)?;
        Ok(m)
    }

    /// Runs `name`; its `return` value, or its error.
    fn cmd(
        &mut self,
        name: &str,
        args: Option<serde_json::Value>,
    ) -> io::Result<serde_json::Value> {
        let mut msg = serde_json::json!({ "execute": name });
        if let Some(a) = args {
            msg["arguments"] = a;
        }
        let mut line = serde_json::to_vec(&msg).map_err(io::Error::other)?;
        line.push(b'\n');
        self.w.write_all(&line)?;
        loop {
            let mut reply = String::new();
            if self.r.read_line(&mut reply)? == 0 {
                return Err(io::Error::other(format!(
                    "qemu closed its monitor ({name})"
                )));
            }
            let v: serde_json::Value = serde_json::from_str(&reply).unwrap_or_default();
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(io::Error::other(format!(
                    "{name}: {}",
                    e["desc"].as_str().unwrap_or("failed")
                )));
            }
        }
    }
}

/// The console's last lines, for an error message.
fn console_tail(o: &Options) -> String {
    let text = fs::read_to_string(o.state_dir.join(CONSOLE_LOG)).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

fn write_exit(state_dir: &Path, mut info: ExitInfo) -> io::Result<()> {
    // The host's clock, not the guest's.
    info.exited_at_ms = sys::now_ms();
    write_atomic(
        &state_dir.join(EXIT_FILE),
        serde_json::to_string(&info)
            .map_err(io::Error::other)?
            .as_bytes(),
    )
}

/// Records a failed start: `exit.json` and an error report to hangard.
fn fail(o: &Options, msg: &str) -> io::Result<()> {
    write_exit(
        &o.state_dir,
        ExitInfo {
            exit_code: -1,
            error: Some(msg.to_owned()),
            ..ExitInfo::default()
        },
    )?;
    report(&serde_json::json!({ "error": msg }));
    detach_stdio();
    Ok(())
}

fn from_guest(stream: UnixStream, link: &Link, side: &mut GuestSide, state_dir: &Path) {
    let GuestSide {
        config,
        log,
        buffers,
    } = side;
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        let Ok(msg) = serde_json::from_str::<FromGuest>(&line) else {
            continue;
        };
        match msg {
            FromGuest::Hello => {
                // A second hello (a guest that rebooted) gets nothing: the
                // secrets are sent once.
                if let Some(c) = config.take() {
                    let _ = link.send(&ToGuest::Config {
                        config: Box::new(c),
                    });
                }
            }
            FromGuest::Started { pid } => {
                link.started.store(true, Ordering::SeqCst);
                report(&serde_json::json!({ "pid": pid }));
                detach_stdio();
            }
            FromGuest::Failed { info } => {
                let msg = info.error.clone().unwrap_or_default();
                let _ = write_exit(state_dir, info);
                report(&serde_json::json!({ "error": msg }));
                detach_stdio();
                link.started.store(true, Ordering::SeqCst);
                let _ = link.send(&ToGuest::Ack);
            }
            FromGuest::Log { stream, data } => {
                let buf = buffers.entry(stream.clone()).or_default();
                buf.push(data.as_bytes(), |l| {
                    let _ = log.write(&stream, l);
                });
            }
            FromGuest::Reply { id, body } => {
                // A terminal session's reply goes down its connection, in
                // order with its output.
                let failed = matches!(body, Reply::Error { .. });
                if link.to_tty(
                    id,
                    &FromGuest::Reply {
                        id,
                        body: body.clone(),
                    },
                    failed,
                ) {
                    continue;
                }
                let tx = link
                    .pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                if let Some(tx) = tx {
                    let _ = tx.send(body);
                }
            }
            FromGuest::Exit { info } => {
                for (stream, buf) in buffers.iter_mut() {
                    buf.finish(|l| {
                        let _ = log.write(stream, l);
                    });
                }
                let _ = write_exit(state_dir, info);
                let _ = link.send(&ToGuest::Ack);
            }
            FromGuest::TtyOutput { id, .. } => {
                link.to_tty(id, &msg, false);
            }
            FromGuest::TtyExit { id, .. } => {
                link.to_tty(id, &msg, true);
            }
        }
    }
    // The VM is gone: so are its terminal sessions.
    for (_, conn) in link.ttys.lock().unwrap_or_else(|p| p.into_inner()).drain() {
        let _ = conn.shutdown(std::net::Shutdown::Both);
    }
}

fn serve_ctl(listener: UnixListener, link: Arc<Link>, ops: Ops) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let (link, ops) = (link.clone(), ops.clone());
        std::thread::spawn(move || {
            let _ = ctl_request(conn, &link, &ops);
        });
    }
}

fn ctl_request(conn: UnixStream, link: &Link, ops: &Ops) -> io::Result<()> {
    let mut line = String::new();
    BufReader::new(conn.try_clone()?).read_line(&mut line)?;
    let reply = match serde_json::from_str::<Request>(&line) {
        Err(e) => Reply::Error {
            message: format!("bad request: {e}"),
        },
        Ok(op @ (Request::Suspend | Request::Resume | Request::BlockResize { .. })) => {
            let (tx, rx) = mpsc::channel();
            match ops.send((op, tx)) {
                Ok(()) => rx.recv().unwrap_or(Reply::Error {
                    message: "the VM's supervisor is ending".into(),
                }),
                Err(_) => Reply::Error {
                    message: "the VM's supervisor is ending".into(),
                },
            }
        }
        Ok(_) if link.suspended.load(Ordering::SeqCst) => Reply::Error {
            message: "the machine is suspended".into(),
        },
        Ok(body @ Request::Tty { .. }) => return tty_session(conn, link, body),
        Ok(body) => {
            let wait = match &body {
                Request::Exec { timeout_ms, .. } => {
                    Duration::from_millis(*timeout_ms) + Duration::from_secs(10)
                }
                _ => Duration::from_secs(30),
            };
            let id = link.next_id.fetch_add(1, Ordering::SeqCst);
            let (tx, rx) = mpsc::channel();
            link.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id, tx);
            let sent = link.send(&ToGuest::Request { id, body });
            let reply = match sent {
                Err(e) => Reply::Error {
                    message: format!("the VM's port: {e}"),
                },
                Ok(()) => rx.recv_timeout(wait).unwrap_or(Reply::Error {
                    message: "the VM did not answer".into(),
                }),
            };
            link.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            reply
        }
    };
    let mut out = serde_json::to_vec(&reply).map_err(io::Error::other)?;
    out.push(b'\n');
    (&conn).write_all(&out)
}

/// A terminal session on ctl connection `conn`: the guest's reply, output
/// and exit go down it (see [`Link::to_tty`]); its lines coming up
/// (`tty_input`, `tty_resize`, any id) go to the guest under the session's
/// id, and its end hangs the session up.
fn tty_session(conn: UnixStream, link: &Link, body: Request) -> io::Result<()> {
    let id = link.next_id.fetch_add(1, Ordering::SeqCst);
    let out = conn.try_clone()?;
    out.set_write_timeout(Some(Duration::from_secs(10)))?;
    link.ttys
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id, out);
    if let Err(e) = link.send(&ToGuest::Request { id, body }) {
        let reply = FromGuest::Reply {
            id,
            body: Reply::Error {
                message: format!("the VM's port: {e}"),
            },
        };
        link.to_tty(id, &reply, true);
        return Ok(());
    }
    for line in BufReader::new(conn).lines() {
        let Ok(line) = line else { break };
        let msg = match serde_json::from_str::<ToGuest>(&line) {
            Ok(ToGuest::TtyInput { data, .. }) => ToGuest::TtyInput { id, data },
            Ok(ToGuest::TtyResize { rows, cols, .. }) => ToGuest::TtyResize { id, rows, cols },
            _ => continue,
        };
        if link.send(&msg).is_err() {
            break;
        }
    }
    let _ = link.send(&ToGuest::TtyHangup { id });
    if let Some(c) = link
        .ttys
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id)
    {
        let _ = c.shutdown(std::net::Shutdown::Both);
    }
    Ok(())
}
