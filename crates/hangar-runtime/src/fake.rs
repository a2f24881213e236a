//! An in-memory [`Runtime`] for fast tests of the agent.
//!
//! It records every call. A started workload "runs" until the test ends it
//! with [`FakeRuntime::exit`], or until a signal arrives: SIGKILL ends it at
//! once with code 137; other signals end it with `128 + n` unless the test
//! made the workload ignore them ([`FakeRuntime::ignore_signals`]). Failures
//! can be injected per operation with [`FakeRuntime::fail_next_start`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use hangar_core::machine::Observed;
use hangar_core::{ExitInfo, MachineId, Signal};
use tokio::sync::watch;

use crate::{Runtime, RuntimeError, WorkloadSpec};

/// A call the fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `start` with this spec.
    Start(Box<WorkloadSpec>),
    /// `signal`.
    Signal(MachineId, Signal),
    /// `cleanup`.
    Cleanup(MachineId),
    /// `destroy`.
    Destroy(MachineId),
    /// `observe`.
    Observe(MachineId),
    /// `prewarm`.
    Prewarm(MachineId),
    /// `prepare_network` began.
    PrepareNetwork(MachineId),
    /// `prepare_network` returned.
    NetworkPrepared(MachineId),
    /// `freeze`.
    Freeze(MachineId),
    /// `thaw`.
    Thaw(MachineId),
    /// `exec`.
    Exec(MachineId, Vec<String>),
}

struct Workload {
    exit: watch::Sender<Option<ExitInfo>>,
    ignore_signals: bool,
}

/// The fake runtime.
#[derive(Default)]
pub struct FakeRuntime {
    calls: Mutex<Vec<Call>>,
    workloads: Mutex<HashMap<MachineId, Workload>>,
    fail_next_start: Mutex<Option<String>>,
    observed: Mutex<HashMap<MachineId, Observed>>,
    destroy_delay: Mutex<std::time::Duration>,
    wire_delay: Mutex<std::time::Duration>,
}

impl FakeRuntime {
    /// A fake with nothing running.
    pub fn new() -> FakeRuntime {
        FakeRuntime::default()
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// The number of `start` calls so far.
    pub fn starts(&self) -> usize {
        self.calls()
            .iter()
            .filter(|c| matches!(c, Call::Start(_)))
            .count()
    }

    /// Whether the machine's workload runs.
    pub fn is_running(&self, id: &MachineId) -> bool {
        self.workloads
            .lock()
            .unwrap()
            .get(id)
            .is_some_and(|w| w.exit.borrow().is_none())
    }

    /// Ends the machine's workload as if its main process exited.
    pub fn exit(&self, id: &MachineId, info: ExitInfo) {
        if let Some(w) = self.workloads.lock().unwrap().get(id) {
            let _ = w.exit.send(Some(info));
        }
    }

    /// Every `destroy` takes this long (a real teardown takes a while).
    pub fn set_destroy_delay(&self, d: std::time::Duration) {
        *self.destroy_delay.lock().unwrap() = d;
    }

    /// Every `prepare_network` takes this long.
    pub fn set_wire_delay(&self, d: std::time::Duration) {
        *self.wire_delay.lock().unwrap() = d;
    }

    /// The next `start` fails with `reason`.
    pub fn fail_next_start(&self, reason: &str) {
        *self.fail_next_start.lock().unwrap() = Some(reason.to_owned());
    }

    /// The machine's workload ignores every signal but SIGKILL.
    pub fn ignore_signals(&self, id: &MachineId) {
        if let Some(w) = self.workloads.lock().unwrap().get_mut(id) {
            w.ignore_signals = true;
        }
    }

    /// What `observe` reports for a machine the fake did not start itself
    /// (as after a restart of `hangard`). A `Running` workload is created.
    pub fn set_observed(&self, id: &MachineId, observed: Observed) {
        if observed == Observed::Running {
            let (tx, _) = watch::channel(None);
            self.workloads.lock().unwrap().insert(
                id.clone(),
                Workload {
                    exit: tx,
                    ignore_signals: false,
                },
            );
        }
        self.observed.lock().unwrap().insert(id.clone(), observed);
    }

    fn record(&self, call: Call) {
        self.calls.lock().unwrap().push(call);
    }
}

fn exit_code(code: i32, signal: Option<i32>) -> ExitInfo {
    ExitInfo {
        exit_code: code,
        signal,
        exited_at_ms: 1,
        ..ExitInfo::default()
    }
}

#[async_trait::async_trait]
impl Runtime for FakeRuntime {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn supports(&self, isolation: hangar_core::Isolation) -> Result<(), String> {
        match isolation {
            hangar_core::Isolation::Microvm => Err("the fake runtime runs no microVMs".into()),
            _ => Ok(()),
        }
    }

    async fn start(&self, spec: &WorkloadSpec) -> Result<(), RuntimeError> {
        self.record(Call::Start(Box::new(spec.clone())));
        if let Some(reason) = self.fail_next_start.lock().unwrap().take() {
            return Err(RuntimeError::Failed {
                op: "start",
                id: spec.id.clone(),
                reason,
            });
        }
        let (tx, _) = watch::channel(None);
        self.workloads.lock().unwrap().insert(
            spec.id.clone(),
            Workload {
                exit: tx,
                ignore_signals: false,
            },
        );
        Ok(())
    }

    async fn freeze(&self, id: &MachineId) -> Result<(), RuntimeError> {
        self.record(Call::Freeze(id.clone()));
        if !self.is_running(id) {
            return Err(RuntimeError::NotRunning(id.clone()));
        }
        Ok(())
    }

    async fn thaw(&self, id: &MachineId) -> Result<(), RuntimeError> {
        self.record(Call::Thaw(id.clone()));
        Ok(())
    }

    /// Echoes: `echo ARGS` prints them; anything else exits 0 silently.
    async fn exec(
        &self,
        id: &MachineId,
        req: &crate::ExecRequest,
    ) -> Result<crate::ExecOutput, RuntimeError> {
        self.record(Call::Exec(id.clone(), req.argv.clone()));
        if !self.is_running(id) {
            return Err(RuntimeError::NotRunning(id.clone()));
        }
        let stdout = if req.argv.first().map(String::as_str) == Some("echo") {
            format!("{}\n", req.argv[1..].join(" ")).into_bytes()
        } else {
            Vec::new()
        };
        Ok(crate::ExecOutput {
            stdout,
            ..crate::ExecOutput::default()
        })
    }

    /// A terminal that greets with `COLSxROWS$ `, echoes its input back
    /// and reports resizes as `[COLSxROWS]`; Ctrl-D ends it with exit code
    /// 0, Ctrl-C with 130.
    async fn exec_tty(
        &self,
        id: &MachineId,
        req: &crate::TtyRequest,
    ) -> Result<Box<dyn crate::Terminal>, RuntimeError> {
        self.record(Call::Exec(id.clone(), req.argv.clone()));
        if !self.is_running(id) {
            return Err(RuntimeError::NotRunning(id.clone()));
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let _ = tx.send(format!("{}x{}$ ", req.cols, req.rows).into_bytes());
        Ok(Box::new(FakeTerminal {
            tx,
            rx,
            exit: None,
            size: std::sync::Mutex::new((req.rows, req.cols)),
        }))
    }

    /// One process: the init.
    async fn processes(&self, id: &MachineId) -> Result<Vec<crate::ProcessInfo>, RuntimeError> {
        if !self.is_running(id) {
            return Err(RuntimeError::NotRunning(id.clone()));
        }
        Ok(vec![crate::ProcessInfo {
            pid: 1,
            command: "/.hangar/init".into(),
            directory: "/".into(),
            ..crate::ProcessInfo::default()
        }])
    }

    /// One second of CPU, 10 MiB, 2 KiB in and 1 KiB out, while it runs.
    fn usage(&self, id: &MachineId) -> Option<crate::Usage> {
        self.is_running(id).then_some(crate::Usage {
            cpu_seconds: 1.0,
            memory_bytes: 10 << 20,
            net_rx_bytes: 2048,
            net_tx_bytes: 1024,
        })
    }

    /// 256 MiB, 10 in use.
    async fn memory(&self, id: &MachineId) -> Result<crate::MemoryInfo, RuntimeError> {
        if !self.is_running(id) {
            return Err(RuntimeError::NotRunning(id.clone()));
        }
        Ok(crate::MemoryInfo {
            limit_mb: 256,
            usage_mb: 10,
        })
    }

    async fn set_memory_limit(&self, id: &MachineId, _limit_mb: u64) -> Result<(), RuntimeError> {
        if !self.is_running(id) {
            return Err(RuntimeError::NotRunning(id.clone()));
        }
        Ok(())
    }

    async fn prewarm(&self, spec: &WorkloadSpec) -> Result<(), RuntimeError> {
        self.record(Call::Prewarm(spec.id.clone()));
        Ok(())
    }

    async fn prepare_network(
        &self,
        id: &MachineId,
        _isolation: Option<hangar_core::Isolation>,
        _net: &crate::NetworkAttachment,
    ) -> Result<(), RuntimeError> {
        self.record(Call::PrepareNetwork(id.clone()));
        let delay = *self.wire_delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        self.record(Call::NetworkPrepared(id.clone()));
        Ok(())
    }

    async fn signal(&self, id: &MachineId, signal: Signal) -> Result<(), RuntimeError> {
        self.record(Call::Signal(id.clone(), signal));
        let workloads = self.workloads.lock().unwrap();
        let w = workloads
            .get(id)
            .filter(|w| w.exit.borrow().is_none())
            .ok_or_else(|| RuntimeError::NotRunning(id.clone()))?;
        if signal == Signal::Kill {
            let _ = w.exit.send(Some(exit_code(137, Some(9))));
        } else if !w.ignore_signals {
            let n = signal.number();
            let _ = w.exit.send(Some(exit_code(128 + n, Some(n))));
        }
        Ok(())
    }

    async fn wait(&self, id: &MachineId) -> Result<ExitInfo, RuntimeError> {
        let mut rx = self
            .workloads
            .lock()
            .unwrap()
            .get(id)
            .map(|w| w.exit.subscribe())
            .ok_or_else(|| RuntimeError::NotRunning(id.clone()))?;
        loop {
            if let Some(info) = rx.borrow_and_update().clone() {
                return Ok(info);
            }
            if rx.changed().await.is_err() {
                return Err(RuntimeError::NotRunning(id.clone()));
            }
        }
    }

    async fn observe(&self, id: &MachineId) -> Result<Observed, RuntimeError> {
        self.record(Call::Observe(id.clone()));
        if let Some(o) = self.observed.lock().unwrap().remove(id) {
            return Ok(o);
        }
        let workloads = self.workloads.lock().unwrap();
        Ok(match workloads.get(id) {
            Some(w) => match w.exit.borrow().clone() {
                None => Observed::Running,
                Some(info) => Observed::Exited(info),
            },
            None => Observed::Absent,
        })
    }

    async fn cleanup(&self, id: &MachineId) -> Result<(), RuntimeError> {
        self.record(Call::Cleanup(id.clone()));
        if let Some(w) = self.workloads.lock().unwrap().remove(id) {
            if w.exit.borrow().is_none() {
                let _ = w.exit.send(Some(exit_code(137, Some(9))));
            }
        }
        Ok(())
    }

    async fn destroy(&self, id: &MachineId) -> Result<(), RuntimeError> {
        self.record(Call::Destroy(id.clone()));
        let delay = *self.destroy_delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if let Some(w) = self.workloads.lock().unwrap().remove(id) {
            let _ = w.exit.send(Some(exit_code(137, Some(9))));
        }
        Ok(())
    }

    fn log_path(&self, _id: &MachineId) -> Option<PathBuf> {
        None
    }
}

/// [`FakeRuntime`]'s terminal.
struct FakeTerminal {
    tx: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
    rx: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    exit: Option<i32>,
    size: std::sync::Mutex<(u16, u16)>,
}

#[async_trait::async_trait]
impl crate::Terminal for FakeTerminal {
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.exit.is_some() && self.rx.is_empty() {
            return Ok(0);
        }
        match self.rx.recv().await {
            Some(data) => {
                let n = data.len().min(buf.len());
                buf[..n].copy_from_slice(&data[..n]);
                Ok(n)
            }
            None => Ok(0),
        }
    }

    async fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        for b in data {
            match b {
                4 => self.exit = Some(0),
                3 => self.exit = Some(130),
                _ => {}
            }
        }
        if self.exit.is_none() {
            let _ = self.tx.send(data.to_vec());
        }
        Ok(())
    }

    fn resize(&self, rows: u16, cols: u16) -> std::io::Result<()> {
        *self.size.lock().unwrap_or_else(|p| p.into_inner()) = (rows, cols);
        let _ = self.tx.send(format!("[{cols}x{rows}]").into_bytes());
        Ok(())
    }

    async fn wait(&mut self) -> std::io::Result<i32> {
        Ok(self.exit.unwrap_or(0))
    }
}
