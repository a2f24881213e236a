//! The init role: PID 1 inside a machine.
//!
//! All signals are blocked in init and taken synchronously with
//! `sigtimedwait`, so there are no async signal handlers: SIGCHLD reaps
//! zombies, every other catchable signal is forwarded to the main process.
//! The main process starts with an empty signal mask (std's `Command` resets
//! it) as the requested user.

use std::io::Write;
use std::os::fd::{FromRawFd, RawFd};
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
    argv: Vec<String>,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        uid: 0,
        gid: 0,
        groups: Vec::new(),
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

    let child = match spawn(&opts) {
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

    let status = supervise(child, &all);
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

fn spawn(opts: &Options) -> std::io::Result<libc::pid_t> {
    let mut cmd = Command::new(&opts.argv[0]);
    cmd.args(&opts.argv[1..]);
    let (uid, gid, groups) = (opts.uid, opts.gid, opts.groups.clone());
    // SAFETY: the closure only calls async-signal-safe functions
    // (sigprocmask, setgroups, setgid, setuid) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Init blocks every signal; the main process must start with none
            // blocked (std does not reset the mask on this path).
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
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
    let child = cmd.spawn()?;
    Ok(child.id() as libc::pid_t)
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

/// Writes the exit report to the status fd, if the shim gave one.
fn report(info: &ExitInfo) {
    // SAFETY: fstat on a raw fd number only reads it; a closed fd yields EBADF.
    let open = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(STATUS_FD, &mut st) == 0
    };
    if !open {
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
        assert!(parse(&s(&["--uid"])).is_err());
        assert!(parse(&s(&["--",])).is_err());
        assert!(parse(&s(&["--bogus", "--", "x"])).is_err());
    }
}
