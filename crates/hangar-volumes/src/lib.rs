//! Volumes on the host: persistent disks for machines.
//!
//! A volume is a sparse image file, `<root>/images/<id>.img`, formatted
//! ext4 (or left raw). To use it, the image is attached to a loop device and
//! mounted at `<root>/mnt/<id>`; machines get its `data` directory
//! bind-mounted at their mount path, and a microVM driver will attach the
//! same image as a disk. An encrypted volume's `data` directory is encrypted
//! with fscrypt under a 64-byte key of its own (see [`fscrypt`]); the kernel
//! of the hosts this runs on has no device-mapper, so dm-crypt/LUKS is not
//! an option there. Growing works online (`resize2fs` on the mounted
//! filesystem); snapshots are sparse copies taken while the filesystem is
//! frozen (`FIFREEZE`), so they are consistent even while a machine writes.
//!
//! Everything here is idempotent where a retry can happen: attaching an
//! attached volume, detaching a detached one, destroying a missing one.

pub use hangar_fscrypt as fscrypt;

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// One gibibyte: volumes are sized in whole GB, as on Fly.
pub const GIB: u64 = 1 << 30;

/// How a volume is formatted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fstype {
    /// ext4 (Fly's default).
    Ext4,
    /// Left unformatted.
    Raw,
}

impl Fstype {
    /// Fly's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Fstype::Ext4 => "ext4",
            Fstype::Raw => "raw",
        }
    }

    /// Parses Fly's name.
    pub fn parse(s: &str) -> Option<Fstype> {
        match s {
            "ext4" => Some(Fstype::Ext4),
            "raw" => Some(Fstype::Raw),
            _ => None,
        }
    }
}

/// Why a volume operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A file or system call failed.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: String,
        /// The error.
        source: io::Error,
    },
    /// A tool (`losetup`, `mkfs.ext4`, ...) failed.
    #[error("{tool} failed: {message}")]
    Tool {
        /// The tool.
        tool: String,
        /// Its complaint.
        message: String,
    },
    /// Not possible for this volume.
    #[error("{0}")]
    Invalid(String),
}

fn io_err(op: impl Into<String>) -> impl FnOnce(io::Error) -> VolumeError {
    let op = op.into();
    move |source| VolumeError::Io { op, source }
}

/// Filesystem usage of a mounted volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Blocks in all.
    pub blocks: u64,
    /// Block size, bytes.
    pub block_size: u64,
    /// Free blocks.
    pub blocks_free: u64,
    /// Blocks available to unprivileged users.
    pub blocks_avail: u64,
}

/// The volumes of one host.
#[derive(Debug, Clone)]
pub struct VolumeHost {
    root: PathBuf,
}

fn check_id(id: &str) -> Result<(), VolumeError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(VolumeError::Invalid(format!(
            "invalid volume or snapshot id {id:?}"
        )))
    }
}

async fn run(tool: &str, args: &[&str]) -> Result<String, VolumeError> {
    let out = tokio::process::Command::new(tool)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| VolumeError::Tool {
            tool: tool.into(),
            message: if e.kind() == io::ErrorKind::NotFound {
                format!(
                    "{tool} is not installed (e2fsprogs and util-linux provide the volume tools)"
                )
            } else {
                e.to_string()
            },
        })?;
    if !out.status.success() {
        return Err(VolumeError::Tool {
            tool: tool.into(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether something is mounted at `path` (this process's mount table).
pub fn is_mounted(path: &Path) -> bool {
    // The root of a mount says so in `statx` (Linux 5.8): one call, where
    // the mount table (a line per mount: two per machine on a host with
    // hundreds) was read whole for every question.
    if let Some(root) = mount_root(path) {
        return root;
    }
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.display().to_string();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| mp == want)
}

/// Whether `path` (not followed if a symbolic link) is the root of a
/// mount (false when nothing is there); `None` when the kernel cannot tell
/// (no `statx`, too old to report it, or the lookup failed otherwise).
fn mount_root(path: &Path) -> Option<bool> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: a zeroed statx is a valid out-parameter; `c` is a valid
    // NUL-terminated path.
    let st = unsafe {
        let mut st: libc::statx = std::mem::zeroed();
        if libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT,
            0,
            &mut st,
        ) != 0
        {
            let e = std::io::Error::last_os_error().raw_os_error();
            // Nothing there: nothing mounted there.
            return matches!(e, Some(libc::ENOENT | libc::ENOTDIR)).then_some(false);
        }
        st
    };
    let bit = libc::STATX_ATTR_MOUNT_ROOT as u64;
    (st.stx_attributes_mask & bit != 0).then_some(st.stx_attributes & bit != 0)
}

/// `FIFREEZE` / `FITHAW`: `_IOWR('X', 119|120, int)`.
const FIFREEZE: libc::c_ulong = 0xC004_5877;
const FITHAW: libc::c_ulong = 0xC004_5878;

/// Keeps a mounted filesystem frozen (writes wait) until dropped.
struct Frozen(std::fs::File);

impl Frozen {
    fn freeze(mountpoint: &Path) -> io::Result<Frozen> {
        let f = std::fs::File::open(mountpoint)?;
        let mut zero: libc::c_int = 0;
        // SAFETY: FIFREEZE on an open directory of the filesystem.
        if unsafe { libc::ioctl(f.as_raw_fd(), FIFREEZE as _, &mut zero) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Frozen(f))
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let mut zero: libc::c_int = 0;
        // SAFETY: FITHAW on the directory FIFREEZE was called on.
        unsafe { libc::ioctl(self.0.as_raw_fd(), FITHAW as _, &mut zero) };
    }
}

/// Copies `src` to a new file `dst` keeping holes, and returns the bytes of
/// data copied and a digest (SHA-256 over each data extent's offset and
/// bytes).
pub fn sparse_copy(src: &Path, dst: &Path) -> io::Result<(u64, String)> {
    let from = std::fs::File::open(src)?;
    let len = from.metadata()?.len();
    let to = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)?;
    to.set_len(len)?;
    let mut hash = Sha256::new();
    let mut copied = 0u64;
    let mut pos: i64 = 0;
    let mut buf = vec![0u8; 1 << 20];
    while (pos as u64) < len {
        // SAFETY: lseek on an open fd.
        let data = unsafe { libc::lseek(from.as_raw_fd(), pos, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole remains
            }
            return Err(e);
        }
        // SAFETY: lseek on an open fd.
        let hole = unsafe { libc::lseek(from.as_raw_fd(), data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io::Error::last_os_error());
        }
        hash.update(data.to_le_bytes());
        let mut off = data as u64;
        while off < hole as u64 {
            let n = ((hole as u64 - off) as usize).min(buf.len());
            from.read_exact_at(&mut buf[..n], off)?;
            // Zero blocks stay holes in the copy.
            if buf[..n].iter().any(|b| *b != 0) {
                to.write_all_at(&buf[..n], off)?;
            }
            hash.update(&buf[..n]);
            off += n as u64;
            copied += n as u64;
        }
        pos = hole;
    }
    to.sync_all()?;
    Ok((copied, hex::encode(hash.finalize())))
}

impl VolumeHost {
    /// The volumes under `root` (created if missing).
    pub fn new(root: impl Into<PathBuf>) -> io::Result<VolumeHost> {
        let root = root.into();
        for d in ["images", "mnt", "snapshots"] {
            std::fs::create_dir_all(root.join(d))?;
        }
        Ok(VolumeHost { root })
    }

    /// The image file of volume `id`.
    pub fn image(&self, id: &str) -> PathBuf {
        self.root.join("images").join(format!("{id}.img"))
    }

    /// Where volume `id` is mounted on the host.
    pub fn mountpoint(&self, id: &str) -> PathBuf {
        self.root.join("mnt").join(id)
    }

    /// The file of snapshot `id`.
    pub fn snapshot_file(&self, id: &str) -> PathBuf {
        self.root.join("snapshots").join(format!("{id}.img"))
    }

    /// Bytes free for new volumes on the host's disk.
    pub fn free_bytes(&self) -> io::Result<u64> {
        let s = nix::sys::statvfs::statvfs(&self.root).map_err(io::Error::from)?;
        Ok(s.blocks_available() * s.fragment_size())
    }

    /// Creates volume `id`: a sparse image of `size_gb` GiB, formatted
    /// unless raw (with the encryption feature when it will be encrypted).
    pub async fn create(
        &self,
        id: &str,
        size_gb: u64,
        fstype: Fstype,
        encrypted: bool,
    ) -> Result<(), VolumeError> {
        check_id(id)?;
        let img = self.image(id);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&img)
            .map_err(io_err(format!("creating {}", img.display())))?;
        let made = async {
            f.set_len(size_gb * GIB)
                .map_err(io_err("sizing the volume image"))?;
            if fstype == Fstype::Ext4 {
                let path = img.display().to_string();
                let mut args = vec!["-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1"];
                if encrypted {
                    args.extend(["-O", "encrypt"]);
                }
                args.push(&path);
                run("mkfs.ext4", &args).await?;
            }
            Ok(())
        }
        .await;
        if made.is_err() {
            let _ = std::fs::remove_file(&img);
        }
        made
    }

    /// Creates volume `id` from a snapshot file or another volume's image
    /// (frozen while copied if mounted), then grows it to `size_gb` if that
    /// is larger. Returns the size it ended with, in GiB.
    pub async fn create_from(
        &self,
        id: &str,
        source: &Path,
        source_volume: Option<&str>,
        size_gb: u64,
        fstype: Fstype,
    ) -> Result<u64, VolumeError> {
        check_id(id)?;
        let img = self.image(id);
        let frozen = match source_volume {
            Some(v) if is_mounted(&self.mountpoint(v)) => Some(
                Frozen::freeze(&self.mountpoint(v))
                    .map_err(io_err("freezing the source volume"))?,
            ),
            _ => None,
        };
        let copied = sparse_copy(source, &img).map_err(io_err("copying the volume"));
        drop(frozen);
        if let Err(e) = copied {
            let _ = std::fs::remove_file(&img);
            return Err(e);
        }
        let have = std::fs::metadata(&img)
            .map_err(io_err("reading the new volume"))?
            .len()
            / GIB;
        if size_gb > have {
            if let Err(e) = self.extend(id, size_gb, fstype).await {
                let _ = std::fs::remove_file(&img);
                return Err(e);
            }
            return Ok(size_gb);
        }
        Ok(have)
    }

    /// The loop devices volume `id`'s image is attached to.
    async fn loop_devices(&self, id: &str) -> Result<Vec<String>, VolumeError> {
        let img = self.image(id).display().to_string();
        let out = run("losetup", &["-j", &img]).await?;
        Ok(out
            .lines()
            .filter_map(|l| l.split(':').next())
            .filter(|d| d.starts_with("/dev/loop"))
            .map(str::to_owned)
            .collect())
    }

    async fn loop_device(&self, id: &str) -> Result<String, VolumeError> {
        if let Some(d) = self.loop_devices(id).await?.into_iter().next() {
            return Ok(d);
        }
        let img = self.image(id).display().to_string();
        Ok(run("losetup", &["--find", "--show", &img])
            .await?
            .trim()
            .to_owned())
    }

    /// Mounts volume `id` (unless it is) and returns the directory machines
    /// get: its `data` directory, encrypted under `key` when given.
    pub async fn attach(
        &self,
        id: &str,
        key: Option<&[u8; fscrypt::KEY_LEN]>,
    ) -> Result<PathBuf, VolumeError> {
        check_id(id)?;
        let mnt = self.mountpoint(id);
        if !is_mounted(&mnt) {
            if !self.image(id).exists() {
                return Err(VolumeError::Invalid(format!("volume {id} has no image")));
            }
            let dev = self.loop_device(id).await?;
            if self.growth_pending(id) {
                self.grow_offline(&dev).await?;
                let _ = std::fs::remove_file(self.grow_marker(id));
            }
            std::fs::create_dir_all(&mnt).map_err(io_err("creating the mount point"))?;
            nix::mount::mount(
                Some(dev.as_str()),
                &mnt,
                Some("ext4"),
                nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
                None::<&str>,
            )
            .map_err(|e| io_err(format!("mounting volume {id}"))(e.into()))?;
        }
        fscrypt::open_data_dir(&mnt, key).map_err(io_err(format!("volume {id}")))
    }

    /// Whether volume `id` is mounted on the host.
    pub fn is_attached(&self, id: &str) -> bool {
        is_mounted(&self.mountpoint(id))
    }

    /// Unmounts volume `id` and frees its loop devices (its key goes with
    /// the mount).
    pub async fn detach(&self, id: &str) -> Result<(), VolumeError> {
        check_id(id)?;
        let mnt = self.mountpoint(id);
        // A mount is busy for a moment after its last user is gone (a
        // process forked elsewhere holds a copy of a file descriptor until it
        // execs; a probe reads the new filesystem): try again until a
        // deadline before reporting it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while is_mounted(&mnt) {
            match nix::mount::umount2(&mnt, nix::mount::MntFlags::empty()) {
                Ok(()) => break,
                Err(nix::errno::Errno::EBUSY) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => return Err(io_err(format!("unmounting volume {id}"))(e.into())),
            }
        }
        // `losetup -d` only marks a device that something still holds open
        // (udev probing it, the tail of the unmount) for clearing on last
        // close, so wait until it is really gone: callers delete the image
        // or attach it again next.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let devices = self.loop_devices(id).await?;
            if devices.is_empty() {
                return Ok(());
            }
            for dev in &devices {
                if let Err(e) = run("losetup", &["-d", dev]).await {
                    if std::time::Instant::now() >= deadline {
                        return Err(e);
                    }
                }
            }
            if std::time::Instant::now() >= deadline {
                return Err(VolumeError::Tool {
                    tool: "losetup".into(),
                    message: format!("volume {id}: {} stays busy", devices.join(", ")),
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    fn grow_marker(&self, id: &str) -> PathBuf {
        self.root.join("images").join(format!("{id}.grow"))
    }

    /// Grows volume `id` to `size_gb` GiB. The image grows at once; the
    /// filesystem grows online when it is mounted and the kernel lets us
    /// (it needs `CAP_SYS_RESOURCE`), else at its next [`VolumeHost::attach`]
    /// after a detach. Returns whether the filesystem already has the new
    /// size (Fly's `needs_restart` is the opposite).
    pub async fn extend(
        &self,
        id: &str,
        size_gb: u64,
        fstype: Fstype,
    ) -> Result<bool, VolumeError> {
        check_id(id)?;
        let img = self.image(id);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&img)
            .map_err(io_err(format!("opening {}", img.display())))?;
        let len = f.metadata().map_err(io_err("reading the image"))?.len();
        if size_gb * GIB < len {
            return Err(VolumeError::Invalid(format!(
                "volumes only grow: {id} has {} GB",
                len / GIB
            )));
        }
        f.set_len(size_gb * GIB)
            .map_err(io_err("growing the image"))?;
        let devices = self.loop_devices(id).await?;
        for dev in &devices {
            run("losetup", &["-c", dev]).await?;
        }
        if fstype != Fstype::Ext4 {
            return Ok(true);
        }
        if is_mounted(&self.mountpoint(id)) {
            let dev = devices.first().cloned().unwrap_or_default();
            match run("resize2fs", &[&dev]).await {
                Ok(_) => return Ok(true),
                Err(e) => {
                    tracing::info!(volume = id, error = %e, "online growth refused; the filesystem grows at the next attach");
                    std::fs::write(self.grow_marker(id), b"")
                        .map_err(io_err("recording a pending growth"))?;
                    return Ok(false);
                }
            }
        }
        let target = match devices.first() {
            Some(dev) => dev.clone(),
            None => img.display().to_string(),
        };
        self.grow_offline(&target).await?;
        Ok(true)
    }

    /// Checks and grows an unmounted filesystem to its device's size.
    async fn grow_offline(&self, target: &str) -> Result<(), VolumeError> {
        // resize2fs wants a checked filesystem; e2fsck's 1 means "fixed".
        let check = tokio::process::Command::new("e2fsck")
            .args(["-f", "-p", target])
            .output()
            .await
            .map_err(io_err("running e2fsck"))?;
        if !matches!(check.status.code(), Some(0 | 1)) {
            return Err(VolumeError::Tool {
                tool: "e2fsck".into(),
                message: String::from_utf8_lossy(&check.stdout).trim().to_owned(),
            });
        }
        run("resize2fs", &[target]).await?;
        Ok(())
    }

    /// Whether a growth waits for the volume's next attach.
    pub fn growth_pending(&self, id: &str) -> bool {
        self.grow_marker(id).exists()
    }

    /// Grows volume `id`'s image to `size_gb` GiB while a microVM has it
    /// as a disk: the image only (its file system is the guest's to grow,
    /// which [`VolumeHost::growth_done`] records), with the growth marked
    /// pending until then, so that the next start grows it offline.
    pub async fn extend_image(&self, id: &str, size_gb: u64) -> Result<(), VolumeError> {
        check_id(id)?;
        let img = self.image(id);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&img)
            .map_err(io_err(format!("opening {}", img.display())))?;
        let len = f.metadata().map_err(io_err("reading the image"))?.len();
        if size_gb * GIB < len {
            return Err(VolumeError::Invalid(format!(
                "volumes only grow: {id} has {} GB",
                len / GIB
            )));
        }
        std::fs::write(self.grow_marker(id), b"").map_err(io_err("recording a pending growth"))?;
        f.set_len(size_gb * GIB)
            .map_err(io_err("growing the image"))
    }

    /// The file system of volume `id` has been grown (by the guest using
    /// it): nothing is pending any more.
    pub fn growth_done(&self, id: &str) {
        let _ = std::fs::remove_file(self.grow_marker(id));
    }

    /// Grows volume `id`'s file system offline if a growth is pending and
    /// the volume is not mounted here: before a microVM takes its image.
    pub async fn grow_pending(&self, id: &str) -> Result<(), VolumeError> {
        check_id(id)?;
        if !self.growth_pending(id) || is_mounted(&self.mountpoint(id)) {
            return Ok(());
        }
        self.grow_offline(&self.image(id).display().to_string())
            .await?;
        self.growth_done(id);
        Ok(())
    }

    /// Copies volume `id` to snapshot `snapshot` (frozen meanwhile if
    /// mounted); returns the bytes of data copied and a digest.
    pub fn snapshot(&self, id: &str, snapshot: &str) -> Result<(u64, String), VolumeError> {
        check_id(id)?;
        check_id(snapshot)?;
        let mnt = self.mountpoint(id);
        let frozen = if is_mounted(&mnt) {
            Some(Frozen::freeze(&mnt).map_err(io_err("freezing the volume"))?)
        } else {
            None
        };
        let dst = self.snapshot_file(snapshot);
        let r = sparse_copy(&self.image(id), &dst).map_err(io_err("copying the volume"));
        drop(frozen);
        if r.is_err() {
            let _ = std::fs::remove_file(&dst);
        }
        r
    }

    /// Removes snapshot `snapshot`'s file.
    pub fn delete_snapshot(&self, snapshot: &str) -> Result<(), VolumeError> {
        check_id(snapshot)?;
        match std::fs::remove_file(self.snapshot_file(snapshot)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("removing a snapshot")(e)),
        }
    }

    /// Filesystem usage of a mounted volume.
    pub fn usage(&self, id: &str) -> Option<Usage> {
        let mnt = self.mountpoint(id);
        if !is_mounted(&mnt) {
            return None;
        }
        let s = nix::sys::statvfs::statvfs(&mnt).ok()?;
        Some(Usage {
            blocks: s.blocks(),
            block_size: s.fragment_size(),
            blocks_free: s.blocks_free(),
            blocks_avail: s.blocks_available(),
        })
    }

    /// Detaches volume `id` and removes its image and mount point.
    pub async fn destroy(&self, id: &str) -> Result<(), VolumeError> {
        self.detach(id).await?;
        match std::fs::remove_file(self.image(id)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("removing the volume image")(e)),
        }
        let _ = std::fs::remove_dir(self.mountpoint(id));
        let _ = std::fs::remove_file(self.grow_marker(id));
        Ok(())
    }
}

#[cfg(test)]
mod mount_tests {
    use super::*;

    /// The mount table's answer, read the old way.
    fn in_mountinfo(path: &str) -> bool {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .any(|mp| mp == path)
    }

    #[test]
    fn a_mount_point_is_told_as_the_mount_table_tells_it() {
        for p in ["/", "/proc"] {
            assert!(in_mountinfo(p) && is_mounted(Path::new(p)), "{p}");
        }
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::create_dir(&plain).unwrap();
        for p in [&plain, &dir.path().join("missing"), &plain.join("a/b")] {
            assert!(!is_mounted(p), "{}", p.display());
            assert!(!in_mountinfo(&p.display().to_string()));
        }
        // Not followed: a link to a mount point is not one.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/proc", &link).unwrap();
        assert!(!is_mounted(&link));
        // A bind mount of a directory of the same filesystem (where
        // comparing device numbers with the parent's would not tell), when
        // this process may mount.
        let target = dir.path().join("target");
        std::fs::create_dir(&target).unwrap();
        let bound = nix::mount::mount(
            Some(&plain),
            &target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .is_ok();
        if bound {
            let yes = is_mounted(&target);
            let _ = nix::mount::umount(&target);
            assert!(yes);
            assert!(!is_mounted(&target));
        }
    }
}
