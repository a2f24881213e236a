//! The init role: PID 1 inside a machine.
//!
//! All signals are blocked in init and taken synchronously with
//! `sigtimedwait`, so there are no async signal handlers: SIGCHLD reaps
//! zombies, every other catchable signal is forwarded to the main process.
//! The main process starts with an empty signal mask (std's `Command` resets
//! it) as the requested user. With `--tty` (Fly's `init.tty`) it runs in its
//! own session on a new terminal of the machine's `/dev/pts`, and init copies
//! the terminal's output to its own stdout, the machine's log.

use std::io::Write;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

use hangar_core::ExitInfo;

use crate::sys::{self, WaitStatus};

/// The fd on which init reports the main process's end to the shim.
const STATUS_FD: RawFd = 3;

struct Options {
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
    tty: bool,
    env_file: Option<String>,
    argv: Vec<String>,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        uid: 0,
        gid: 0,
        groups: Vec::new(),
        tty: false,
        env_file: None,
        argv: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match a.as_str() {
            "--uid" => o.uid = value("--uid")?.parse().map_err(|_| "bad --uid")?,
            "--gid" => o.gid = value("--gid")?.parse().map_err(|_| "bad --gid")?,
            "--groups" => {
                let v = value("--groups")?;
                o.groups = v
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|g| g.parse().map_err(|_| format!("bad group {g:?}")))
                    .collect::<Result<_, _>>()?;
            }
            "--tty" => o.tty = true,
            "--env-file" => o.env_file = Some(value("--env-file")?),
            "--" => {
                o.argv = it.cloned().collect();
                break;
            }
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    if o.argv.is_empty() {
        return Err("no command given after --".into());
    }
    Ok(o)
}

/// Runs init; returns the exit code.
pub fn main(args: &[String]) -> i32 {
    let opts = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("hangar-init: {e}");
            return 2;
        }
    };
    // Fd 3 is the shim's status pipe only if it is open as a pipe now,
    // before init opens anything (a runtime that cannot hand it over, such
    // as runsc, leaves fd 3 free for the next file init opens).
    STATUS_PIPE.store(is_fifo(STATUS_FD), std::sync::atomic::Ordering::Relaxed);
    // The status fd must not leak into the main process.
    sys::set_cloexec(STATUS_FD);
    // SAFETY: a zeroed sigset_t is a valid value to pass to sigfillset.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `all` is a valid sigset_t; blocking signals in this single-threaded
    // process before any child exists.
    unsafe {
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
    }

    let terminal = if opts.tty {
        match Terminal::open() {
            Ok(t) => Some(t),
            Err(e) => {
                let msg = format!("cannot open a terminal: {e}");
                eprintln!("hangar-init: {msg}");
                report(&ExitInfo {
                    exit_code: 1,
                    error: Some(msg),
                    ..ExitInfo::default()
                });
                return 1;
            }
        }
    } else {
        None
    };
    let child = match spawn(&opts, terminal.as_ref()) {
        Ok(pid) => pid,
        Err(e) => {
            let code = match e.kind() {
                std::io::ErrorKind::NotFound => 127,
                std::io::ErrorKind::PermissionDenied => 126,
                _ => 127,
            };
            let msg = format!("failed to run {:?}: {e}", opts.argv[0]);
            eprintln!("hangar-init: {msg}");
            report(&ExitInfo {
                exit_code: code,
                error: Some(msg),
                ..ExitInfo::default()
            });
            return code;
        }
    };

    // Copy the terminal's output to the log until the terminal closes.
    let copier = terminal.map(Terminal::copy_to_stdout);
    let status = supervise(child, &all);
    if let Some(done) = copier {
        // Everything the process wrote before it ended; a descendant that
        // keeps the terminal open must not hold up the exit report.
        let _ = done.recv_timeout(std::time::Duration::from_secs(2));
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
    report(&info);
    // As PID 1 of the machine, take everything else down with us; outside a
    // PID namespace (tests) never signal -1.
    // SAFETY: getpid has no preconditions.
    if unsafe { libc::getpid() } == 1 {
        // SAFETY: kill(-1) from PID 1 of a namespace signals only that namespace.
        unsafe { libc::kill(-1, libc::SIGKILL) };
        while let Ok(Some(_)) = sys::try_wait(-1) {}
    }
    info.exit_code & 0xff
}

/// A new terminal: its master side and the path of its slave side.
pub(crate) fn open_terminal() -> std::io::Result<(std::fs::File, std::ffi::CString)> {
    let t = Terminal::open()?;
    Ok((t.master, t.slave_path))
}

/// Sets the window size of the terminal whose master is `master` (its
/// processes get SIGWINCH).
pub(crate) fn set_winsize(master: &std::fs::File, rows: u16, cols: u16) {
    use std::os::fd::AsRawFd;
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ on a terminal fd with a valid winsize.
    unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
}

/// A terminal for the main process: the master side stays with init.
struct Terminal {
    master: std::fs::File,
    slave_path: std::ffi::CString,
}

impl Terminal {
    fn open() -> std::io::Result<Terminal> {
        use std::os::fd::AsRawFd;
        let master = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
            .open("/dev/ptmx")?;
        let fd = master.as_raw_fd();
        let mut name = [0 as libc::c_char; 128];
        // SAFETY: grantpt/unlockpt/ptsname_r on an open ptmx fd, with a
        // buffer of the given length.
        unsafe {
            sys::check(libc::grantpt(fd))?;
            sys::check(libc::unlockpt(fd))?;
            let r = libc::ptsname_r(fd, name.as_mut_ptr(), name.len());
            if r != 0 {
                return Err(std::io::Error::from_raw_os_error(r));
            }
        }
        // SAFETY: ptsname_r wrote a NUL-terminated string into `name`.
        let slave_path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }.to_owned();
        set_winsize(&master, 24, 80);
        Ok(Terminal { master, slave_path })
    }

    /// Copies output to stdout in a thread; the receiver hears when the
    /// terminal has closed (every process on it has ended).
    fn copy_to_stdout(self) -> std::sync::mpsc::Receiver<()> {
        use std::io::Read;
        let (tx, rx) = std::sync::mpsc::channel();
        let mut master = self.master;
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            let mut out = std::io::stdout();
            // EIO once the last process on the terminal has closed it.
            while let Ok(n) = master.read(&mut buf) {
                if n == 0 || out.write_all(&buf[..n]).and_then(|_| out.flush()).is_err() {
                    break;
                }
            }
            let _ = tx.send(());
        });
        rx
    }
}

/// `NAME=VALUE` entries of a NUL-separated environment file.
fn parse_env_file(data: &[u8]) -> Vec<(String, String)> {
    data.split(|b| *b == 0)
        .filter_map(|entry| {
            let entry = String::from_utf8_lossy(entry);
            let (k, v) = entry.split_once('=')?;
            (!k.is_empty()).then(|| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

fn spawn(opts: &Options, terminal: Option<&Terminal>) -> std::io::Result<libc::pid_t> {
    let mut cmd = Command::new(&opts.argv[0]);
    cmd.args(&opts.argv[1..]);
    // Secrets, read as root before the main process drops to its user; they
    // win over the environment from the config.
    if let Some(path) = &opts.env_file {
        cmd.envs(parse_env_file(&std::fs::read(path)?));
    }
    let (uid, gid, groups) = (opts.uid, opts.gid, opts.groups.clone());
    let slave = terminal.map(|t| t.slave_path.clone());
    prepare_main(&mut cmd, slave, uid, gid, groups);
    let child = cmd.spawn()?;
    Ok(child.id() as libc::pid_t)
}

/// Makes `cmd` start as a machine's main process: no signal blocked (init
/// blocks them all), on the terminal `slave` in a session of its own when
/// given, as `uid`/`gid`/`groups`. Shared by the container's and the
/// microVM's init.
pub(crate) fn prepare_main(
    cmd: &mut Command,
    slave: Option<std::ffi::CString>,
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
) {
    // SAFETY: the closure only calls async-signal-safe functions
    // (sigprocmask, setsid, open, ioctl, dup2, setgroups, setgid, setuid)
    // between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Init blocks every signal; the main process must start with none
            // blocked (std does not reset the mask on this path).
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            // A session of its own, with the terminal as controlling tty
            // and stdio.
            if let Some(path) = &slave {
                sys::check(libc::setsid())?;
                let fd = sys::check(libc::open(path.as_ptr(), libc::O_RDWR))?;
                sys::check(libc::ioctl(fd, libc::TIOCSCTTY, 0))?;
                for target in 0..3 {
                    sys::check(libc::dup2(fd, target))?;
                }
                if fd > 2 {
                    libc::close(fd);
                }
            }
            // Change identity only when it differs, so a root process needs
            // no CAP_SETUID/CAP_SETGID.
            let same = libc::getuid() == uid && libc::getgid() == gid && groups.is_empty();
            if !same {
                if libc::geteuid() == 0 {
                    sys::check(libc::setgroups(groups.len(), groups.as_ptr()))?;
                }
                sys::check(libc::setgid(gid))?;
                sys::check(libc::setuid(uid))?;
            }
            Ok(())
        });
    }
}

/// Forwards signals and reaps until the main process ends.
fn supervise(child: libc::pid_t, all: &libc::sigset_t) -> WaitStatus {
    loop {
        // Reap first: the child may have ended before we started waiting.
        loop {
            match sys::try_wait(-1) {
                Ok(Some((pid, status))) if pid == child => return status,
                Ok(Some(_)) => continue,
                Ok(None) => break,
                // ECHILD: nothing left to wait for (cannot happen while the
                // main process lives); treat as gone.
                Err(_) => return WaitStatus::Exited(255),
            }
        }
        // SAFETY: a zeroed siginfo_t is a valid out-parameter.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let timeout = libc::timespec {
            tv_sec: 1,
            tv_nsec: 0,
        };
        // SAFETY: `all`, `info` and `timeout` are valid for the call.
        let sig = unsafe { libc::sigtimedwait(all, &mut info, &timeout) };
        if sig <= 0 || sig == libc::SIGCHLD {
            continue;
        }
        // SAFETY: kill on the main process's pid with a caught signal number.
        unsafe { libc::kill(child, sig) };
    }
}

/// Whether fd 3 was the shim's status pipe when init began.
static STATUS_PIPE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether `fd` is open as a pipe.
fn is_fifo(fd: RawFd) -> bool {
    // SAFETY: fstat on a raw fd number only reads it; a closed fd yields EBADF.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(fd, &mut st) == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFIFO
    }
}

/// Writes the exit report to the status fd, if the shim gave one.
fn report(info: &ExitInfo) {
    if !STATUS_PIPE.load(std::sync::atomic::Ordering::Relaxed) || !is_fifo(STATUS_FD) {
        return;
    }
    // SAFETY: the fd is open and was handed to us for this purpose; File takes
    // ownership and closes it after the write.
    let mut f = unsafe { std::fs::File::from_raw_fd(STATUS_FD) };
    if let Ok(line) = serde_json::to_string(info) {
        let _ = writeln!(f, "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parses_options() {
        let o = parse(&s(&[
            "--uid", "1000", "--gid", "100", "--groups", "4,27", "--", "sh", "-c", "x",
        ]))
        .unwrap();
        assert_eq!((o.uid, o.gid), (1000, 100));
        assert_eq!(o.groups, vec![4, 27]);
        assert_eq!(o.argv, s(&["sh", "-c", "x"]));
        assert!(!o.tty);
        assert!(parse(&s(&["--tty", "--", "sh"])).unwrap().tty);
        let o = parse(&s(&["--env-file", "/e", "--", "sh"])).unwrap();
        assert_eq!(o.env_file.as_deref(), Some("/e"));
        assert_eq!(
            parse_env_file(b"A=1\0B=x=y\0\0bad\0=v\0"),
            vec![("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
        assert!(parse(&s(&["--uid"])).is_err());
        assert!(parse(&s(&["--",])).is_err());
        assert!(parse(&s(&["--bogus", "--", "x"])).is_err());
    }
}
