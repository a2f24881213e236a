//! Commands run inside a running machine (`crun exec`), with its process
//! environment, working directory and namespaces. Output is capped; a command
//! that outlives its timeout is killed by its pid inside the machine.

use std::process::Stdio;

use hangar_core::MachineId;
use hangar_runtime::{ExecOutput, ExecRequest, RuntimeError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{OciRuntime, failed};

/// Most output kept per stream.
const OUTPUT_CAP: usize = 1 << 20;

async fn read_capped<R: tokio::io::AsyncRead + Unpin>(mut r: R) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = OUTPUT_CAP.saturating_sub(out.len());
                out.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    out
}

fn machine_process(rt: &OciRuntime, id: &MachineId) -> serde_json::Value {
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
    let mut cmd = rt.runtime_cmd();
    cmd.arg("exec")
        .arg("--cwd")
        .arg(&cwd)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(id.as_str())
        .args(&req.argv)
        .stdin(if req.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| failed("exec", id, e))?;
    if let (Some(data), Some(mut stdin)) = (req.stdin.clone(), child.stdin.take()) {
        tokio::spawn(async move {
            let _ = stdin.write_all(&data).await;
        });
    }
    let stdout = tokio::spawn(read_capped(child.stdout.take().expect("piped stdout")));
    let stderr = tokio::spawn(read_capped(child.stderr.take().expect("piped stderr")));
    let (status, timed_out) = match tokio::time::timeout(req.timeout, child.wait()).await {
        Ok(status) => (status.map_err(|e| failed("exec", id, e))?, false),
        Err(_) => {
            // The command itself, not just crun: its host pid is in the pid file.
            if let Some(pid) = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok())
            {
                // SAFETY: kill(2) on the exec'd process's pid.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let status = child.wait().await.map_err(|e| failed("exec", id, e))?;
            (status, true)
        }
    };
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
        stdout: stdout.await.unwrap_or_default(),
        stderr: stderr.await.unwrap_or_default(),
        timed_out,
    })
}
