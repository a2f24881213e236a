//! Host preparation for the container driver.

use std::io;
use std::path::{Path, PathBuf};

/// Finds `name` on `PATH`.
pub fn find_program(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// On a hybrid cgroup host (v1 controllers plus a cgroup2 mount at
/// `/sys/fs/cgroup/unified`), crun refuses to run while any controller sits
/// on the v2 side ("cgroups in hybrid mode not supported"). Typically that is
/// `hugetlb`, which the boot did not mount as v1. This mounts each such
/// controller on its own v1 hierarchy, which moves it off cgroup2. Returns
/// the controllers it moved.
pub fn fix_hybrid_cgroups() -> io::Result<Vec<String>> {
    let unified = Path::new("/sys/fs/cgroup/unified/cgroup.controllers");
    let v1 = Path::new("/sys/fs/cgroup/memory");
    if !unified.is_file() || !v1.is_dir() {
        return Ok(Vec::new());
    }
    let controllers = std::fs::read_to_string(unified)?;
    let mut moved = Vec::new();
    for c in controllers.split_whitespace() {
        let target = Path::new("/sys/fs/cgroup").join(c);
        std::fs::create_dir_all(&target)?;
        nix::mount::mount(
            Some("cgroup"),
            &target,
            Some("cgroup"),
            nix::mount::MsFlags::empty(),
            Some(c),
        )
        .map_err(|e| io::Error::other(format!("mounting the {c} cgroup controller as v1: {e}")))?;
        moved.push(c.to_owned());
    }
    Ok(moved)
}

/// Turns on the cgroup2 `favordynmods` mount option when the kernel has it
/// and it is off. Every container start moves a task into its cgroups; that
/// write takes the global `cgroup_threadgroup_rwsem`, whose writer side waits
/// for an RCU grace period (several milliseconds, the largest single cost of
/// a container start on this kind of host). `favordynmods` makes it cheap at
/// the price of slightly costlier fork and exit (see the kernel's
/// cgroup-v2 documentation), the right trade for a host that starts
/// containers. The option is global and lasts until reboot. Returns whether
/// it changed anything.
pub fn favor_dynamic_cgroups() -> io::Result<bool> {
    let features = std::fs::read_to_string("/sys/kernel/cgroup/features").unwrap_or_default();
    if !features.split_whitespace().any(|f| f == "favordynmods") {
        return Ok(false);
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    // Fields: ... mount point (5th) ... " - " fstype source super-options.
    let Some((mount_point, super_opts)) = mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mut r = right.split_whitespace();
        (r.next()? == "cgroup2").then(|| {
            (
                left.split_whitespace().nth(4).map(str::to_owned),
                r.nth(1).map(str::to_owned),
            )
        })
    }) else {
        return Ok(false);
    };
    let (Some(mount_point), Some(super_opts)) = (mount_point, super_opts) else {
        return Ok(false);
    };
    if super_opts.split(',').any(|o| o == "favordynmods") {
        return Ok(false);
    }
    // util-linux's mount merges the current options into the remount.
    let status = std::process::Command::new("mount")
        .args(["-o", "remount,favordynmods", &mount_point])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()?;
    if !status.status.success() {
        return Err(io::Error::other(format!(
            "remounting {mount_point} with favordynmods: {}",
            String::from_utf8_lossy(&status.stderr).trim()
        )));
    }
    Ok(true)
}

/// Makes `dir` (mode 0700) live on a tmpfs: kept as is when it already does
/// (as under `/run` on most hosts), else a tmpfs is mounted on it. Secrets
/// handed to machines wait there, in memory only. Returns whether it
/// mounted one.
pub fn ensure_tmpfs(dir: &Path) -> io::Result<bool> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let fs = nix::sys::statfs::statfs(dir).map_err(io::Error::from)?;
    if fs.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC {
        return Ok(false);
    }
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        Some("mode=0700,size=256m"),
    )
    .map_err(|e| io::Error::other(format!("mounting a tmpfs on {}: {e}", dir.display())))?;
    Ok(true)
}
