//! A machine's cgroup in every hierarchy of the host (cgroup v1 controllers,
//! the v1/v2 hybrid's unified tree, or a pure v2 host), and how to empty it
//! and remove it.
//!
//! Emptying never trusts the container's init to take its descendants with
//! it: on cgroup v2 it writes `cgroup.kill`; on v1 it freezes the cgroup (so
//! nothing can fork or exit while the list is read), sends SIGKILL to every
//! task, and thaws it so they die. It repeats until `cgroup.procs` is empty
//! in every hierarchy, so a fork bomb ends with nothing left.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

const ROOT: &str = "/sys/fs/cgroup";

/// One machine's cgroup: its path below each hierarchy's root.
#[derive(Debug, Clone)]
pub(crate) struct MachineCgroup {
    rel: PathBuf,
    root: PathBuf,
}

impl MachineCgroup {
    /// The cgroup at `path` (e.g. `/hangar/<id>`) below every hierarchy.
    pub(crate) fn new(path: &str) -> MachineCgroup {
        MachineCgroup::under(Path::new(ROOT), path)
    }

    fn under(root: &Path, path: &str) -> MachineCgroup {
        MachineCgroup {
            rel: PathBuf::from(path.trim_matches('/')),
            root: root.to_owned(),
        }
    }

    /// Whether the host is pure cgroup v2 (one hierarchy at the root).
    fn unified_root(&self) -> bool {
        self.root.join("cgroup.controllers").exists()
    }

    /// The cgroup's directory in each hierarchy where it exists.
    pub(crate) fn dirs(&self) -> Vec<PathBuf> {
        if self.unified_root() {
            let d = self.root.join(&self.rel);
            return if d.is_dir() { vec![d] } else { Vec::new() };
        }
        let Ok(rd) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut out: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path().join(&self.rel))
            .filter(|d| d.is_dir())
            .collect();
        out.sort();
        out
    }

    /// Whether any directory of the cgroup is left.
    pub(crate) fn exists(&self) -> bool {
        !self.dirs().is_empty()
    }

    /// The processes in the cgroup (and below it), in any hierarchy.
    pub(crate) fn pids(&self) -> BTreeSet<i32> {
        let mut out = BTreeSet::new();
        for d in self.dirs() {
            walk(&d, &mut |dir| {
                out.extend(read_pids(&dir.join("cgroup.procs")));
            });
        }
        out
    }

    /// Kills every process in the cgroup and waits until none is left, for
    /// at most `timeout`.
    pub(crate) async fn kill_all(&self, timeout: Duration) -> io::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = self.pids();
            if left.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(io::Error::other(format!(
                    "{} processes are still in cgroup {} after {timeout:?}",
                    left.len(),
                    self.rel.display()
                )));
            }
            self.kill_once(&left).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn kill_once(&self, left: &BTreeSet<i32>) {
        let dirs = self.dirs();
        // cgroup v2 kills the whole subtree at once, forks included.
        if let Some(kill) = dirs
            .iter()
            .map(|d| d.join("cgroup.kill"))
            .find(|k| k.exists())
        {
            if std::fs::write(&kill, "1").is_ok() {
                return;
            }
        }
        // cgroup v1: freeze, kill each task while none can fork, thaw.
        let freezer = dirs
            .iter()
            .find(|d| d.join("freezer.state").exists())
            .cloned();
        if let Some(f) = &freezer {
            let _ = std::fs::write(f.join("freezer.state"), "FROZEN");
            let until = tokio::time::Instant::now() + Duration::from_secs(1);
            while read_trimmed(&f.join("freezer.state")).as_deref() == Some("FREEZING")
                && tokio::time::Instant::now() < until
            {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        let targets = match &freezer {
            Some(f) => {
                let mut t = BTreeSet::new();
                walk(f, &mut |dir| t.extend(read_pids(&dir.join("cgroup.procs"))));
                t.extend(left);
                t
            }
            None => left.clone(),
        };
        for pid in targets {
            // SAFETY: kill has no memory-safety preconditions. The pid is a
            // member of the (frozen) cgroup, so it cannot have been reused.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if let Some(f) = &freezer {
            let _ = std::fs::write(f.join("freezer.state"), "THAWED");
        }
    }

    /// Freezes (or thaws) every process of the cgroup, as `crun pause`
    /// (`resume`) does, without a runtime process: cgroup v1's
    /// `freezer.state` or v2's `cgroup.freeze`, then waits until the kernel
    /// says it is done. `Ok(false)` when the cgroup has no freezer.
    pub(crate) async fn set_frozen(&self, frozen: bool) -> io::Result<bool> {
        let dirs = self.dirs();
        let (file, value, done): (PathBuf, &str, Box<dyn Fn() -> bool + Send + Sync>) =
            if let Some(d) = dirs.iter().find(|d| d.join("freezer.state").exists()) {
                let state = d.join("freezer.state");
                let want = if frozen { "FROZEN" } else { "THAWED" };
                let check = state.clone();
                (
                    state,
                    want,
                    Box::new(move || read_trimmed(&check).as_deref() == Some(want)),
                )
            } else if let Some(d) = dirs.iter().find(|d| d.join("cgroup.freeze").exists()) {
                let events = d.join("cgroup.events");
                let want = if frozen { "frozen 1" } else { "frozen 0" };
                (
                    d.join("cgroup.freeze"),
                    if frozen { "1" } else { "0" },
                    Box::new(move || {
                        std::fs::read_to_string(&events).is_ok_and(|t| t.lines().any(|l| l == want))
                    }),
                )
            } else {
                return Ok(false);
            };
        std::fs::write(&file, value)?;
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut pause = Duration::from_micros(100);
        while !done() {
            if tokio::time::Instant::now() >= until {
                if frozen {
                    let thaw = if value == "1" { "0" } else { "THAWED" };
                    let _ = std::fs::write(&file, thaw);
                }
                return Err(io::Error::other(format!(
                    "the cgroup did not become {} within 10 s",
                    if frozen { "frozen" } else { "thawed" }
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(10));
        }
        Ok(true)
    }

    /// Removes the cgroup's directories (children first). Fails while a
    /// process is left in one.
    pub(crate) fn remove(&self) -> io::Result<()> {
        self.remove_dirs(true)
    }

    /// Removes the cgroups the workload made below the machine's, which
    /// stays (empty, thawed) for the machine's next container.
    pub(crate) fn remove_below(&self) -> io::Result<()> {
        self.remove_dirs(false)
    }

    fn remove_dirs(&self, itself: bool) -> io::Result<()> {
        let mut first_error = None;
        for d in self.dirs() {
            let mut all = Vec::new();
            walk(&d, &mut |dir| all.push(dir.to_owned()));
            if !itself {
                all.retain(|dir| *dir != d);
            }
            // Deepest first.
            all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
            for dir in all {
                if let Err(e) = std::fs::remove_dir(&dir) {
                    if e.kind() != io::ErrorKind::NotFound {
                        first_error.get_or_insert_with(|| {
                            io::Error::new(e.kind(), format!("removing {}: {e}", dir.display()))
                        });
                    }
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Calls `f` with `dir` and every cgroup directory below it.
fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) {
    f(dir);
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&e.path(), f);
            }
        }
    }
}

fn read_pids(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup_in_every_v1_hierarchy() {
        let root = tempfile::tempdir().unwrap();
        for c in ["memory", "pids", "freezer", "cpu"] {
            std::fs::create_dir_all(root.path().join(c)).unwrap();
        }
        for c in ["memory", "pids"] {
            std::fs::create_dir_all(root.path().join(c).join("hangar/m1/sub")).unwrap();
        }
        std::fs::write(root.path().join("pids/hangar/m1/cgroup.procs"), "12\n13\n").unwrap();
        std::fs::write(root.path().join("pids/hangar/m1/sub/cgroup.procs"), "14\n").unwrap();
        let cg = MachineCgroup::under(root.path(), "/hangar/m1");
        assert_eq!(
            cg.dirs(),
            vec![
                root.path().join("memory/hangar/m1"),
                root.path().join("pids/hangar/m1")
            ]
        );
        assert_eq!(cg.pids(), BTreeSet::from([12, 13, 14]));
        assert!(!MachineCgroup::under(root.path(), "/hangar/m2").exists());
    }

    #[test]
    fn a_pure_v2_host_has_one_hierarchy() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        std::fs::create_dir_all(root.path().join("hangar/m1")).unwrap();
        std::fs::create_dir_all(root.path().join("memory/hangar/m1")).unwrap();
        let cg = MachineCgroup::under(root.path(), "hangar/m1");
        assert_eq!(cg.dirs(), vec![root.path().join("hangar/m1")]);
    }
}
