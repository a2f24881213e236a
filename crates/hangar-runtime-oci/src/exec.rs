//! Commands run inside a running machine (`crun exec`), with its process
//! environment, working directory and namespaces. Output is capped. The
//! timeout bounds the whole exec: the command runs as the leader of its own
//! process group (through `hangar-init session`), and when the time is up the
//! group is killed, background children included, whether or not the
//! command itself has ended.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hangar_core::MachineId;
use hangar_runtime::{ExecOutput, ExecRequest, RuntimeError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{OciRuntime, failed};

/// Most output kept per stream.
const OUTPUT_CAP: usize = 1 << 20;

/// Marker in a machine's state directory: its init (bind-mounted when it
/// started) has the `session` role.
pub(crate) const SESSION_MARKER: &str = "state/init-session";

/// Reads `r` into `out` (at most [`OUTPUT_CAP`] bytes) until EOF.
async fn read_capped<R: tokio::io::AsyncRead + Unpin>(mut r: R, out: Arc<Mutex<Vec<u8>>>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
                let room = OUTPUT_CAP.saturating_sub(out.len());
                out.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// Kills the exec'd command's process group (and the command itself, for a
/// machine whose init predates the session role).
fn kill_group(pid_file: &std::path::Path) {
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .filter(|p| *p > 1)
    else {
        return;
    };
    // SAFETY: kill(2) has no memory-safety preconditions. `-pid` names the
    // group the command leads once it called setsid; before that no group
    // has that id and the call fails harmlessly.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
        libc::kill(pid, libc::SIGKILL);
    }
}

pub(crate) fn machine_process(rt: &OciRuntime, id: &MachineId) -> serde_json::Value {
    std::fs::read(rt.dir(id).join("bundle/config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .map(|v| v["process"].clone())
        .unwrap_or_default()
}

/// The machine's working directory: `exec` starts in `/` unless told.
pub(crate) fn machine_cwd(rt: &OciRuntime, id: &MachineId) -> String {
    machine_process(rt, id)["cwd"]
        .as_str()
        .unwrap_or("/")
        .to_owned()
}

/// The machine's environment, `NAME=VALUE` each (`exec --env` replaces it,
/// so a command that adds variables passes these too).
pub(crate) fn machine_env(rt: &OciRuntime, id: &MachineId) -> Vec<String> {
    machine_process(rt, id)["env"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) async fn run(
    rt: &OciRuntime,
    id: &MachineId,
    req: &ExecRequest,
) -> Result<ExecOutput, RuntimeError> {
    if rt.shim(id).is_none() {
        return Err(RuntimeError::NotRunning(id.clone()));
    }
    if req.argv.is_empty() {
        return Err(RuntimeError::InvalidSpec("no command given".into()));
    }
    let pid_file = rt
        .dir(id)
        .join("state")
        .join(format!("exec-{}.pid", hangar_core::EventId::generate()));
    let cwd = machine_cwd(rt, id);
    let session = rt.dir(id).join(SESSION_MARKER).exists();
    let mut cmd = rt.runtime_cmd(id);
    cmd.arg("exec")
        .arg("--cwd")
        .arg(&cwd)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(id.as_str());
    if session {
        cmd.arg(crate::INIT_IN_GUEST).arg("session").arg("--");
    }
    cmd.args(&req.argv)
        .stdin(if req.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let deadline = tokio::time::Instant::now() + req.timeout;
    let mut child = cmd.spawn().map_err(|e| failed("exec", id, e))?;
    if let (Some(data), Some(mut stdin)) = (req.stdin.clone(), child.stdin.take()) {
        tokio::spawn(async move {
            let _ = stdin.write_all(&data).await;
        });
    }
    let (out, err) = (
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(Mutex::new(Vec::new())),
    );
    let mut readers = [
        tokio::spawn(read_capped(
            child.stdout.take().expect("piped stdout"),
            out.clone(),
        )),
        tokio::spawn(read_capped(
            child.stderr.take().expect("piped stderr"),
            err.clone(),
        )),
    ];
    let (status, timed_out) = match tokio::time::timeout_at(deadline, child.wait()).await {
        Ok(status) => (status.map_err(|e| failed("exec", id, e))?, false),
        Err(_) => {
            kill_group(&pid_file);
            let status = child.wait().await.map_err(|e| failed("exec", id, e))?;
            (status, true)
        }
    };
    // Output ends when every process holding it has: background children
    // of the command get what is left of the timeout, then their group is
    // killed; one that left the group gets a moment, then is let go.
    let all_read = async {
        for r in &mut readers {
            let _ = r.await;
        }
    };
    if tokio::time::timeout_at(deadline, all_read).await.is_err() {
        kill_group(&pid_file);
        let all_read = async {
            for r in &mut readers {
                let _ = r.await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(1), all_read)
            .await
            .is_err()
        {
            for r in &readers {
                r.abort();
            }
        }
    }
    let _ = std::fs::remove_file(&pid_file);
    use std::os::unix::process::ExitStatusExt;
    let (exit_code, exit_signal) = match (status.code(), status.signal()) {
        (Some(c), _) => (c, None),
        (None, Some(sig)) => (128 + sig, Some(sig)),
        (None, None) => (-1, None),
    };
    Ok(ExecOutput {
        exit_code,
        exit_signal: exit_signal.or(timed_out.then_some(libc::SIGKILL)),
        stdout: std::mem::take(&mut *out.lock().unwrap_or_else(|p| p.into_inner())),
        stderr: std::mem::take(&mut *err.lock().unwrap_or_else(|p| p.into_inner())),
        timed_out,
    })
}
