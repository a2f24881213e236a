//! File system helpers: reading files inside a machine's root without
//! following its symlinks out of it, and the overlay mount of a machine's
//! root filesystem.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub use hangar_volumes::is_mounted;

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_IN_ROOT: u64 = 0x10;

/// Opens the directory `root` as an `O_PATH` handle for `*at` calls.
fn open_root(root: &Path) -> io::Result<OwnedFd> {
    let root_c = CString::new(root.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: `root_c` is a valid C string; the returned fd is owned below.
    let dirfd = unsafe {
        libc::open(
            root_c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if dirfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `dirfd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(dirfd) })
}

/// `openat2(dir, rel, flags, mode)` with `RESOLVE_IN_ROOT`: absolute
/// symlinks and `..` resolve against `dir`, never above it.
fn openat2_in_root(dir: &OwnedFd, rel: &str, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let rel = rel.trim_start_matches('/');
    let path = CString::new(if rel.is_empty() { "." } else { rel }).map_err(io::Error::other)?;
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: u64::from(mode),
        resolve: RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: openat2 with a valid dirfd, C string and open_how of the size given.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            std::os::fd::AsRawFd::as_raw_fd(dir),
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat2 returned a fresh fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Opens `rel` inside the directory `root` with `openat2(RESOLVE_IN_ROOT)`:
/// absolute symlinks and `..` resolve against `root`, never the host.
pub fn open_in_root(root: &Path, rel: &str) -> io::Result<File> {
    let dir = open_root(root)?;
    Ok(File::from(openat2_in_root(&dir, rel, libc::O_RDONLY, 0)?))
}

/// Writes `contents` to the absolute guest path `path` inside `root`, with
/// permission bits `mode`, creating missing parent directories (0755). Every
/// step resolves inside `root`: a symlink in the image that points at `/etc`
/// or `../..` leads to the root's own `/etc`, never the host's.
pub fn write_in_root(root: &Path, path: &str, contents: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = open_root(root)?;
    let rel = path.trim_start_matches('/');
    let parent = rel.rsplit_once('/').map_or("", |(p, _)| p);
    let mut prefix = String::new();
    for comp in parent.split('/').filter(|c| !c.is_empty()) {
        let above = openat2_in_root(&dir, &prefix, libc::O_PATH | libc::O_DIRECTORY, 0)?;
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(comp);
        match openat2_in_root(&dir, &prefix, libc::O_PATH | libc::O_DIRECTORY, 0) {
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        match nix::sys::stat::mkdirat(
            &above,
            comp,
            nix::sys::stat::Mode::from_bits_truncate(0o755),
        ) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(e.into()),
        }
        // A dangling symlink in the way fails here rather than being followed.
        openat2_in_root(&dir, &prefix, libc::O_PATH | libc::O_DIRECTORY, 0)?;
    }
    let fd = openat2_in_root(
        &dir,
        rel,
        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
        mode & 0o7777,
    )?;
    let mut file = File::from(fd);
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    file.write_all(contents)?;
    // The umask narrowed the mode given at creation; set it exactly.
    file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))?;
    Ok(())
}

/// Reads a text file inside `root` (empty when it does not exist), at most
/// 1 MiB.
pub fn read_in_root(root: &Path, rel: &str) -> io::Result<String> {
    match open_in_root(root, rel) {
        Ok(f) => {
            let mut s = String::new();
            f.take(1 << 20).read_to_string(&mut s)?;
            Ok(s)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e),
    }
}

/// Mounts an overlay of `lower` (bottom first) under `upper` at `target`.
pub fn mount_overlay(
    lower: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> io::Result<()> {
    for p in lower
        .iter()
        .map(PathBuf::as_path)
        .chain([upper, work, target])
    {
        let s = p.as_os_str().as_bytes();
        if s.contains(&b',') || s.contains(&b':') {
            return Err(io::Error::other(format!(
                "path {} contains ',' or ':', which overlayfs cannot take",
                p.display()
            )));
        }
    }
    // overlayfs lists the top layer first.
    let lowerdir: Vec<String> = lower
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowerdir.join(":"),
        upper.display(),
        work.display()
    );
    if data.len() >= 4000 {
        return Err(io::Error::other(format!(
            "the image has too many layers ({}) for one overlay mount",
            lower.len()
        )));
    }
    nix::mount::mount(
        Some("overlay"),
        target,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(io::Error::from)
}

/// Lazily unmounts `target`; not being mounted is fine.
pub fn unmount(target: &Path) -> io::Result<()> {
    match nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Removes a directory tree if it exists. Refuses to cross into a mount
/// (a still-mounted root would otherwise lose the image's files).
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_in_root_does_not_escape() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/real"), "inside").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", root.join("etc/abs")).unwrap();
        std::os::unix::fs::symlink("../../../../../etc/hostname", root.join("etc/rel")).unwrap();
        std::os::unix::fs::symlink("/etc/real", root.join("etc/inner")).unwrap();
        assert_eq!(read_in_root(root, "etc/real").unwrap(), "inside");
        assert_eq!(read_in_root(root, "/etc/inner").unwrap(), "inside");
        // Both escapes resolve inside the root, where there is no such file.
        assert_eq!(read_in_root(root, "etc/abs").unwrap(), "");
        assert_eq!(read_in_root(root, "etc/rel").unwrap(), "");
        assert_eq!(read_in_root(root, "../../etc/hostname").unwrap(), "");
    }

    #[test]
    fn write_in_root_stays_inside() {
        use std::os::unix::fs::PermissionsExt;
        let outside = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let target = outside.path().display().to_string();
        std::os::unix::fs::symlink(&target, root.join("abs")).unwrap();
        std::os::unix::fs::symlink(format!("../../../..{target}"), root.join("rel")).unwrap();
        std::os::unix::fs::symlink(format!("{target}/f"), root.join("file-link")).unwrap();

        write_in_root(root, "/a/b/c.txt", b"hello", 0o640).unwrap();
        assert_eq!(std::fs::read(root.join("a/b/c.txt")).unwrap(), b"hello");
        let meta = std::fs::metadata(root.join("a/b/c.txt")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
        write_in_root(root, "/a/b/c.txt", b"x", 0o755).unwrap();
        assert_eq!(std::fs::read(root.join("a/b/c.txt")).unwrap(), b"x");

        // Through symlinks that point out of the root: the files land inside
        // (where the root has the directory they name)...
        std::fs::create_dir_all(root.join(target.trim_start_matches('/'))).unwrap();
        for (path, lands) in [
            ("/abs/x", format!("{target}/x")),
            ("/rel/y", format!("{target}/y")),
            ("/file-link", format!("{target}/f")),
        ] {
            write_in_root(root, path, b"in", 0o644).unwrap();
            let inside = root.join(lands.trim_start_matches('/'));
            assert_eq!(std::fs::read(&inside).unwrap(), b"in", "{path}");
        }
        // ...or fail (where it has not).
        std::os::unix::fs::symlink(format!("{target}/nowhere"), root.join("gone")).unwrap();
        assert!(write_in_root(root, "/gone/x", b"", 0o644).is_err());
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        // `..` cannot climb out either.
        write_in_root(root, "/../../z", b"z", 0o644).unwrap();
        assert_eq!(std::fs::read(root.join("z")).unwrap(), b"z");
        // A file where a directory is needed is an error, not a surprise.
        assert!(write_in_root(root, "/a/b/c.txt/d", b"", 0o644).is_err());
    }
}
