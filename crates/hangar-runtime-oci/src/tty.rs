//! Interactive commands in a running machine: `crun exec --tty` makes a
//! terminal inside the machine's own `/dev/pts` and hands its master side
//! over a console socket (`SCM_RIGHTS`), as the OCI runtimes do for every
//! engine; the master becomes a [`Terminal`]. The command is its session
//! leader with the terminal as controlling tty, so Ctrl-C, job control and
//! window-size changes behave as on any terminal. If the client goes away
//! first, the command is killed.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::Stdio;
use std::time::Duration;

use hangar_core::MachineId;
use hangar_runtime::{RuntimeError, Terminal, TtyRequest};
use tokio::io::AsyncReadExt;
use tokio::io::unix::AsyncFd;

use crate::{OciRuntime, failed};

/// How long the runtime may take to hand over the terminal.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) async fn run(
    rt: &OciRuntime,
    id: &MachineId,
    req: &TtyRequest,
) -> Result<Box<dyn Terminal>, RuntimeError> {
    if rt.shim(id).is_none() {
        return Err(RuntimeError::NotRunning(id.clone()));
    }
    if req.argv.is_empty() {
        return Err(RuntimeError::InvalidSpec("no command given".into()));
    }
    let tag = hangar_core::EventId::generate();
    if rt.engine_of(id).flavor == crate::OciFlavor::Runsc {
        return run_runsc(rt, id, req, &tag.to_string()).await;
    }
    // Socket paths are limited to 108 bytes: keep it short, and private.
    let sock_dir = tempfile::Builder::new()
        .prefix("hangar-tty-")
        .tempdir()
        .map_err(|e| failed("exec", id, e))?;
    let sock_path = sock_dir.path().join("console.sock");
    let listener = tokio::net::UnixListener::bind(&sock_path).map_err(|e| failed("exec", id, e))?;
    let pid_file = rt.dir(id).join("state").join(format!("tty-{tag}.pid"));
    let mut cmd = rt.runtime_cmd(id);
    cmd.arg("exec")
        .arg("--tty")
        .arg("--console-socket")
        .arg(&sock_path)
        .arg("--cwd")
        .arg(crate::exec::machine_cwd(rt, id))
        .arg("--pid-file")
        .arg(&pid_file);
    for kv in command_env(rt, id, req) {
        cmd.arg("--env").arg(kv);
    }
    cmd.arg(id.as_str())
        .args(&req.argv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| failed("exec", id, e))?;
    let mut stderr = child.stderr.take().expect("piped stderr");

    let stream = tokio::select! {
        r = tokio::time::timeout(HANDOVER_TIMEOUT, listener.accept()) => match r {
            Ok(Ok((stream, _))) => stream,
            Ok(Err(e)) => return Err(failed("exec", id, e)),
            Err(_) => return Err(failed("exec", id, "the runtime did not hand over a terminal")),
        },
        status = child.wait() => {
            // The runtime may hand the terminal over and then fail (the
            // command does not exist): the terminal then carries the error,
            // as a shell would show it.
            match tokio::time::timeout(Duration::from_millis(200), listener.accept()).await {
                Ok(Ok((stream, _))) => stream,
                _ => {
                    let mut msg = String::new();
                    let _ = stderr.read_to_string(&mut msg).await;
                    let _ = status;
                    return Err(RuntimeError::InvalidSpec(format!(
                        "cannot run {:?}: {}",
                        req.argv[0],
                        msg.trim()
                    )));
                }
            }
        }
    };
    let master = loop {
        stream.readable().await.map_err(|e| failed("exec", id, e))?;
        match stream.try_io(tokio::io::Interest::READABLE, || {
            receive_fd(stream.as_raw_fd())
        }) {
            Ok(fd) => break fd,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(failed("exec", id, e)),
        }
    };
    drop(stream);
    drop(listener);
    // Drain the runtime's stderr so that it never blocks on a full pipe.
    tokio::spawn(async move {
        let mut sink = Vec::new();
        let _ = stderr.read_to_end(&mut sink).await;
    });

    // The command's pidfd, to kill it if the client leaves early.
    let pidfd = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .and_then(|pid| crate::pidfd_open(pid).ok());
    let _ = std::fs::remove_file(&pid_file);

    set_nonblocking(&master).map_err(|e| failed("exec", id, e))?;
    // SAFETY: `master` is an open OwnedFd that the AsyncFd owns, unchanged,
    // until it is dropped.
    let master =
        unsafe { AsyncFd::register(master) }.map_err(|e| failed("exec", id, e.to_string()))?;
    let term = OciTerminal {
        master,
        child,
        pidfd,
        exited: false,
    };
    term.resize(req.rows, req.cols)
        .map_err(|e| failed("exec", id, e))?;
    Ok(Box::new(term))
}

/// The command's environment: the machine's, with `req.env` over it.
fn command_env(rt: &OciRuntime, id: &MachineId, req: &TtyRequest) -> Vec<String> {
    let extra: Vec<String> = req.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    crate::exec::machine_env(rt, id)
        .into_iter()
        .filter(|kv| {
            let name = kv.split('=').next().unwrap_or_default();
            !req.env.iter().any(|(k, _)| k == name)
        })
        .chain(extra)
        .collect()
}

/// runsc's `exec` hands no terminal over a console socket: it runs the
/// command on the terminal that is its own stdin, a host pseudo-terminal
/// made here whose master side becomes the [`Terminal`] (gVisor serves the
/// command's side; Ctrl-C and window sizes pass through it).
async fn run_runsc(
    rt: &OciRuntime,
    id: &MachineId,
    req: &TtyRequest,
    tag: &str,
) -> Result<Box<dyn Terminal>, RuntimeError> {
    let state = rt.dir(id).join("state");
    let pid_file = state.join(format!("tty-{tag}.pid"));
    let process_file = state.join(format!("tty-{tag}.json"));
    let mut process = crate::exec::machine_process(rt, id);
    process["terminal"] = true.into();
    process["args"] = req.argv.clone().into();
    process["env"] = command_env(rt, id, req).into();
    process["cwd"] = crate::exec::machine_cwd(rt, id).into();
    if let Some(p) = process.as_object_mut() {
        p.remove("consoleSize");
    }
    std::fs::write(&process_file, process.to_string()).map_err(|e| failed("exec", id, e))?;
    let pty = nix::pty::openpty(None, None).map_err(|e| failed("exec", id, e))?;
    let slave = || {
        pty.slave
            .try_clone()
            .map(Stdio::from)
            .map_err(|e| failed("exec", id, e))
    };
    let mut cmd = rt.runtime_cmd(id);
    cmd.arg("exec")
        .arg("--process")
        .arg(&process_file)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(id.as_str())
        .stdin(slave()?)
        .stdout(slave()?)
        .stderr(slave()?)
        .kill_on_drop(true);
    // SAFETY: setsid is async-signal-safe: runsc leads a new session whose
    // controlling terminal is the pseudo-terminal.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| failed("exec", id, e))?;
    drop(pty.slave);
    // The command's pid appears once runsc has started it (or runsc ends
    // first, its error on the terminal).
    let deadline = tokio::time::Instant::now() + HANDOVER_TIMEOUT;
    let pid = loop {
        let pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok());
        if pid.is_some()
            || tokio::time::Instant::now() >= deadline
            || matches!(child.try_wait(), Ok(Some(_)))
        {
            break pid;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let _ = std::fs::remove_file(&process_file);
    let pidfd = pid.and_then(|pid| crate::pidfd_open(pid).ok());
    let _ = std::fs::remove_file(&pid_file);
    let master = pty.master;
    set_nonblocking(&master).map_err(|e| failed("exec", id, e))?;
    // SAFETY: `master` is an open OwnedFd that the AsyncFd owns, unchanged,
    // until it is dropped.
    let master =
        unsafe { AsyncFd::register(master) }.map_err(|e| failed("exec", id, e.to_string()))?;
    let term = OciTerminal {
        master,
        child,
        pidfd,
        exited: false,
    };
    term.resize(req.rows, req.cols)
        .map_err(|e| failed("exec", id, e))?;
    Ok(Box::new(term))
}

/// Receives one file descriptor sent with `SCM_RIGHTS`.
fn receive_fd(sock: RawFd) -> io::Result<OwnedFd> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut buf = [0u8; 4096];
    let mut iov = [io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(io::Error::from)?;
    for cmsg in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            if let Some(fd) = fds.first() {
                // SAFETY: the kernel just installed this fd for us.
                return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
            }
        }
    }
    Err(io::Error::other(
        "no terminal received on the console socket",
    ))
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL).map_err(io::Error::from)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map_err(io::Error::from)?;
    Ok(())
}

struct OciTerminal {
    master: AsyncFd<OwnedFd>,
    /// `crun exec`, which ends with the command.
    child: tokio::process::Child,
    pidfd: Option<OwnedFd>,
    exited: bool,
}

#[async_trait::async_trait]
impl Terminal for OciTerminal {
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.master.readable().await?;
            let r = guard.try_io(|fd| {
                // SAFETY: read(2) into a buffer of the given length.
                let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match r {
                Ok(Ok(n)) => return Ok(n),
                // EIO: every process on the terminal's side has closed it.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    async fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.master.writable().await?;
            match guard.try_io(|fd| {
                // SAFETY: write(2) from a buffer of the given length.
                let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            }) {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    fn resize(&self, rows: u16, cols: u16) -> io::Result<()> {
        let ws = libc::winsize {
            ws_row: rows.max(1),
            ws_col: cols.max(1),
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ on a terminal fd with a valid winsize.
        let r = unsafe { libc::ioctl(self.master.get_ref().as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    async fn wait(&mut self) -> io::Result<i32> {
        use std::os::unix::process::ExitStatusExt;
        let status = self.child.wait().await?;
        self.exited = true;
        Ok(match (status.code(), status.signal()) {
            (Some(c), _) => c,
            (None, Some(sig)) => 128 + sig,
            (None, None) => -1,
        })
    }
}

impl Drop for OciTerminal {
    fn drop(&mut self) {
        if self.exited {
            return;
        }
        if let Some(pidfd) = &self.pidfd {
            // SAFETY: pidfd_send_signal on a pidfd we own; a process that
            // has already ended makes it fail harmlessly.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    pidfd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
        }
    }
}
