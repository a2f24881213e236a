//! How a machine's main process ended.

use serde::{Deserialize, Serialize};

/// The end of a machine's main process, as the runtime observed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ExitInfo {
    /// Exit code of the main process; `128 + n` when signal `n` killed it
    /// (the shell and Docker convention).
    pub exit_code: i32,
    /// The signal that killed the main process, if one did.
    #[serde(default)]
    pub signal: Option<i32>,
    /// The kernel's OOM killer acted inside the machine's memory cgroup.
    #[serde(default)]
    pub oom_killed: bool,
    /// When the process ended, in Unix milliseconds.
    pub exited_at_ms: i64,
    /// Why the process could not run at all (for example, no such executable).
    #[serde(default)]
    pub error: Option<String>,
}

impl ExitInfo {
    /// Whether the process ended cleanly (exit code 0, no signal).
    pub fn success(&self) -> bool {
        self.exit_code == 0 && self.signal.is_none() && self.error.is_none()
    }
}
