//! Each machine's network namespace, kept for the machine's whole life.
//!
//! A machine keeps its network identity across stops and starts (on Fly its
//! private address does not change when it restarts), so its namespace is
//! made once, on its first start, and pinned by a bind mount of the namespace
//! onto `<machine dir>/netns`; every start joins it, and destroy removes it.
//! This also keeps namespace creation (several milliseconds) off the
//! stopped-to-started path. After a reboot the bind mount is gone and the
//! namespace is made again on the next start.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `NSFS_MAGIC` from `linux/magic.h`.
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// Whether `path` is a pinned namespace.
pub fn is_pinned(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a zeroed statfs is a valid out-parameter; `c` is a valid path.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == NSFS_MAGIC
    }
}

/// Makes sure a network namespace (with loopback up) is pinned at `path`.
pub fn ensure(path: &Path) -> io::Result<()> {
    if is_pinned(path) {
        return Ok(());
    }
    std::fs::File::create(path)?;
    let target = path.to_owned();
    // unshare(CLONE_NEWNET) changes only the calling thread: do it on a
    // thread of its own, which ends right after pinning the namespace.
    std::thread::scope(|s| {
        s.spawn(move || -> io::Result<()> {
            // SAFETY: unshare with CLONE_NEWNET affects only this thread.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            loopback_up()?;
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(io::Error::from)
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
    })
}

/// Brings `lo` up in the calling thread's network namespace (a namespace
/// made this way starts with it down).
fn loopback_up() -> io::Result<()> {
    // SAFETY: plain socket(2) call; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `ifr` is a zeroed ifreq naming "lo"; SIOCGIFFLAGS/SIOCSIFFLAGS
    // read and write its flags member, which is what we access.
    let r = unsafe {
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        let mut r = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr);
        if r == 0 {
            ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            r = libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr);
        }
        r
    };
    let err = io::Error::last_os_error();
    // SAFETY: closing the socket we opened.
    unsafe { libc::close(fd) };
    if r != 0 {
        return Err(err);
    }
    Ok(())
}

/// Unpins and removes the namespace at `path` (if any).
pub fn remove(path: &Path) -> io::Result<()> {
    crate::fsutil::unmount(path)?;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_and_removes_a_namespace() {
        if !hangar_test_utils::host_tier("pins_and_removes_a_namespace", &[]) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("netns");
        ensure(&p).unwrap();
        assert!(is_pinned(&p));
        ensure(&p).unwrap(); // idempotent
        // The namespace has only loopback, and it is up.
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net={}", p.display()))
            .args(["cat", "/proc/net/dev"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let ifaces: Vec<&str> = text
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .map(str::trim)
            .collect();
        assert_eq!(ifaces, vec!["lo"], "{text}");
        let flags = std::process::Command::new("nsenter")
            .arg(format!("--net={}", p.display()))
            .args(["cat", "/sys/class/net/lo/operstate"])
            .output()
            .unwrap();
        assert_ne!(String::from_utf8_lossy(&flags.stdout).trim(), "down");
        remove(&p).unwrap();
        assert!(!p.exists());
    }
}
