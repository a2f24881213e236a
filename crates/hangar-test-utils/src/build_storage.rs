//! A container storage of its own for buildah (`HANGAR_BUILD_STORAGE`),
//! removed with everything buildah mounted in it when dropped: tests and
//! benchmarks leave nothing behind.

use std::path::Path;
use std::process::{Command, Stdio};

/// A temporary buildah storage.
pub struct BuildStorage {
    dir: tempfile::TempDir,
}

impl BuildStorage {
    /// A fresh one.
    pub fn new() -> BuildStorage {
        BuildStorage {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// Its directory (what `HANGAR_BUILD_STORAGE` takes).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Default for BuildStorage {
    fn default() -> Self {
        BuildStorage::new()
    }
}

impl Drop for BuildStorage {
    fn drop(&mut self) {
        let root = self.dir.path();
        // Working containers first, then whatever is still mounted under
        // the storage (buildah's overlay home and layers), deepest first.
        let _ = Command::new("buildah")
            .arg("--root")
            .arg(root.join("root"))
            .arg("--runroot")
            .arg(root.join("run"))
            .args(["rm", "--all"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let prefix = root.to_string_lossy().into_owned();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            if let Ok(c) = std::ffi::CString::new(m) {
                // SAFETY: umount2 on a path we own, with a valid C string.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}
