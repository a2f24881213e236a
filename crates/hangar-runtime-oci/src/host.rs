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
