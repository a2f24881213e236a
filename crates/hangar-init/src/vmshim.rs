//! The vmshim role: the host-side parent of one microVM.
//!
//! ```text
//! hangard ──spawn──► vmshim (setsid; machine config on stdin)
//!                     ├─ qemu (PDEATHSIG: dies with the shim; console → console.log)
//!                     ├─ agent.sock (qemu's end of the guest's virtio-serial port)
//!                     │    hello → config; started → {"pid":N} on stdout;
//!                     │    log → machine.log; exit → exit.json, ack
//!                     ├─ ctl.sock: one request line in, one reply line out
//!                     └─ qemu exited → exit.json (if the guest wrote none); exits
//! ```
//!
//! As with the container shim, nothing here depends on `hangard` once it
//! is spawned: it holds `shim.lock` from before its spawn until it exits
//! and writes `shim.pid`, so a later `hangard` adopts it.

use std::collections::HashMap;
use std::fs::{self, File};
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
    to_guest: Mutex<UnixStream>,
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
        self.to_guest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write_all(&line)
    }
}

fn run(o: &Options) -> io::Result<()> {
    let mut config = String::new();
    io::stdin().read_to_string(&mut config)?;
    let config: GuestConfig = serde_json::from_str(&config).map_err(io::Error::other)?;
    for f in [EXIT_FILE, AGENT_SOCKET, CTL_SOCKET, QEMU_PID_FILE] {
        let _ = fs::remove_file(o.state_dir.join(f));
    }
    write_atomic(
        &o.state_dir.join(SHIM_PID_FILE),
        format!("{} {}\n", std::process::id(), start_time("self")?).as_bytes(),
    )?;
    let console = File::create(o.state_dir.join(CONSOLE_LOG))?;
    let mut cmd = Command::new(&o.qemu);
    cmd.args(&o.qemu_args)
        .current_dir(&o.state_dir)
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
    let mut qemu = cmd.spawn()?;
    write_atomic(
        &o.state_dir.join(QEMU_PID_FILE),
        format!("{}\n", qemu.id()).as_bytes(),
    )?;
    // qemu makes the socket as it starts.
    let agent = o.state_dir.join(AGENT_SOCKET);
    let deadline = Instant::now() + Duration::from_secs(30);
    let stream = loop {
        if let Ok(s) = UnixStream::connect(&agent) {
            break s;
        }
        if let Some(status) = qemu.try_wait()? {
            let msg = format!("qemu exited ({status}): {}", console_tail(o));
            return fail(o, &msg);
        }
        if Instant::now() > deadline {
            let _ = qemu.kill();
            return fail(o, "qemu did not open the guest's port");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let link = Arc::new(Link {
        to_guest: Mutex::new(stream.try_clone()?),
        pending: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
        started: AtomicBool::new(false),
        ttys: Mutex::new(HashMap::new()),
    });
    let log = LogFile::open(o.log.clone(), o.log_max_bytes)?;
    let reader = {
        let link = link.clone();
        let state_dir = o.state_dir.clone();
        std::thread::spawn(move || from_guest(stream, &link, config, log, &state_dir))
    };
    {
        let link = link.clone();
        let listener = UnixListener::bind(o.state_dir.join(CTL_SOCKET))?;
        std::thread::spawn(move || serve_ctl(listener, link));
    }
    // The boot must end in a started (or failed) report in time.
    let booted = Instant::now();
    let status = loop {
        if let Some(status) = qemu.try_wait()? {
            break status;
        }
        let started = link.started.load(Ordering::SeqCst);
        if !started && booted.elapsed() > o.boot_timeout {
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
        std::thread::sleep(Duration::from_millis(if started { 200 } else { 10 }));
    };
    // The port closes with qemu: the reader drains what the guest wrote.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !reader.is_finished() && Instant::now() < deadline {
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

fn from_guest(
    stream: UnixStream,
    link: &Link,
    config: GuestConfig,
    mut log: LogFile,
    state_dir: &Path,
) {
    let mut config = Some(config);
    let mut buffers: HashMap<String, LineBuffer> = HashMap::new();
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

fn serve_ctl(listener: UnixListener, link: Arc<Link>) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let link = link.clone();
        std::thread::spawn(move || {
            let _ = ctl_request(conn, &link);
        });
    }
}

fn ctl_request(conn: UnixStream, link: &Link) -> io::Result<()> {
    let mut line = String::new();
    BufReader::new(conn.try_clone()?).read_line(&mut line)?;
    let reply = match serde_json::from_str::<Request>(&line) {
        Err(e) => Reply::Error {
            message: format!("bad request: {e}"),
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
