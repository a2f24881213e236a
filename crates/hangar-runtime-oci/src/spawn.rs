//! Spawning a supervisor without forking `hangard`.
//!
//! `std::process::Command` with a `pre_exec` hook (needed to hand a child
//! an fd at a fixed number) forks: the kernel copies `hangard`'s page
//! tables, and every page `hangard` writes until the child execs faults.
//! That cost grows with `hangard`'s memory, so with the machines it holds.
//! `posix_spawn` (glibc's clones with `CLONE_VM | CLONE_VFORK` and execs at
//! once) does neither; its file actions place the fds.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::spawn::{PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags, posix_spawn};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::stat::Mode;

/// A process spawned with [`spawn`]: our child until reaped.
pub(crate) struct Spawned {
    pub pid: i32,
    /// The read end of its stdout.
    pub stdout: OwnedFd,
}

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::other("an argument holds a NUL byte"))
}

/// A copy of `fd` numbered 10 or above (close-on-exec), so that placing
/// fds in the child never overwrites one still to be placed.
fn high(fd: impl AsFd) -> io::Result<OwnedFd> {
    let raw = fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(10))?;
    // SAFETY: a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Spawns `program` with `args` (after argv[0]) and this process's
/// environment: stdin and stderr on /dev/null, stdout a new pipe (returned),
/// and each `(ours, theirs)` of `fds` our fd `ours` as its fd `theirs`
/// (`theirs` above 2). The signal mask is empty and SIGPIPE default, as
/// `Command` leaves them.
pub(crate) fn spawn(
    program: &Path,
    args: &[&OsStr],
    fds: &[(RawFd, RawFd)],
) -> io::Result<Spawned> {
    let argv: Vec<CString> = std::iter::once(program.as_os_str())
        .chain(args.iter().copied())
        .map(cstring)
        .collect::<io::Result<_>>()?;
    let envp: Vec<CString> = std::env::vars_os()
        .map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).map_err(|_| io::Error::other("the environment holds a NUL byte"))
        })
        .collect::<io::Result<_>>()?;
    let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let out_w = high(&out_w)?;
    let mut sources = Vec::with_capacity(fds.len());
    for (ours, theirs) in fds {
        if *theirs <= 2 {
            return Err(io::Error::other(format!(
                "fd {theirs} is the child's stdio"
            )));
        }
        // SAFETY: `ours` is an open fd the caller keeps open across the call.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(*ours) };
        sources.push((high(fd)?, *theirs));
    }
    let mut actions = PosixSpawnFileActions::init()?;
    actions.add_dup2(out_w.as_raw_fd(), 1)?;
    for (fd, theirs) in &sources {
        // dup2 to another number clears close-on-exec on the new fd.
        actions.add_dup2(fd.as_raw_fd(), *theirs)?;
    }
    actions.add_open(0, "/dev/null", OFlag::O_RDONLY, Mode::empty())?;
    actions.add_open(2, "/dev/null", OFlag::O_WRONLY, Mode::empty())?;
    let mut attr = PosixSpawnAttr::init()?;
    attr.set_sigmask(&SigSet::empty())?;
    let mut default = SigSet::empty();
    default.add(Signal::SIGPIPE);
    attr.set_sigdefault(&default)?;
    attr.set_flags(
        PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK | PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF,
    )?;
    let pid = posix_spawn(program, &actions, &attr, &argv, &envp)?;
    Ok(Spawned {
        pid: pid.as_raw(),
        stdout: out_r,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn places_fds_and_reads_stdout() {
        // The child sees our fd as its fd 7 and writes through it.
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        let s = spawn(
            Path::new("/bin/sh"),
            &[
                OsStr::new("-c"),
                OsStr::new("echo out; echo seven >&7; echo err >&2"),
            ],
            &[(w.as_raw_fd(), 7)],
        )
        .unwrap();
        drop(w);
        let mut out = String::new();
        std::fs::File::from(s.stdout)
            .read_to_string(&mut out)
            .unwrap();
        let mut seven = String::new();
        std::fs::File::from(r).read_to_string(&mut seven).unwrap();
        let mut status = 0;
        // SAFETY: waitpid on our own child.
        unsafe { libc::waitpid(s.pid, &mut status, 0) };
        assert_eq!(out, "out\n");
        assert_eq!(seven, "seven\n");
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }

    #[test]
    fn refuses_stdio_targets() {
        let (_r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        assert!(spawn(Path::new("/bin/true"), &[], &[(w.as_raw_fd(), 1)]).is_err());
    }
}
