//! One [`Runtime`] over several: containers (crun, runc, runsc) and
//! microVMs side by side on a host, each machine sent to the one that runs
//! its kind.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use hangar_core::machine::Observed;
use hangar_core::{ExitInfo, Isolation, MachineId, Signal};

use crate::{
    ExecOutput, ExecRequest, MemoryInfo, NetworkAttachment, ProcessInfo, Runtime, RuntimeError,
    Terminal, TtyRequest, Usage, WorkloadSpec,
};

/// Runtimes by kind: a machine's start goes to the first runtime that
/// supports what it asks for (or the host's default); everything after, to
/// the runtime that [holds](Runtime::holds) the machine, else the first.
pub struct Routed {
    default: Isolation,
    runtimes: Vec<Arc<dyn Runtime>>,
    /// Kinds this host cannot run, and why.
    missing: Vec<(Isolation, String)>,
}

impl Routed {
    /// `runtimes` (at least one; the first takes machines no other holds)
    /// with `default` for machines that ask for no runtime.
    pub fn new(default: Isolation, runtimes: Vec<Arc<dyn Runtime>>) -> Routed {
        assert!(!runtimes.is_empty(), "Routed needs a runtime");
        Routed {
            default,
            runtimes,
            missing: Vec::new(),
        }
    }

    /// Says why machines of `isolation` cannot run here (instead of the
    /// runtimes' own answers).
    pub fn missing(mut self, isolation: Isolation, why: String) -> Routed {
        self.missing.push((isolation, why));
        self
    }

    fn for_isolation(&self, isolation: Isolation) -> Result<&Arc<dyn Runtime>, String> {
        if let Some((_, why)) = self.missing.iter().find(|(i, _)| *i == isolation) {
            return Err(why.clone());
        }
        let mut why = None;
        for r in &self.runtimes {
            match r.supports(isolation) {
                Ok(()) => return Ok(r),
                Err(e) => {
                    why.get_or_insert(e);
                }
            }
        }
        Err(why.unwrap_or_else(|| format!("no runtime here runs {isolation}")))
    }

    fn for_spec(&self, spec: &WorkloadSpec) -> Result<&Arc<dyn Runtime>, RuntimeError> {
        self.for_kind(spec.isolation)
    }

    /// The runtime for a machine that asks for `isolation` (or for none).
    fn for_kind(&self, isolation: Option<Isolation>) -> Result<&Arc<dyn Runtime>, RuntimeError> {
        self.for_isolation(isolation.unwrap_or(self.default))
            .map_err(RuntimeError::InvalidSpec)
    }

    fn of(&self, id: &MachineId) -> &Arc<dyn Runtime> {
        self.runtimes
            .iter()
            .find(|r| r.holds(id))
            .unwrap_or(&self.runtimes[0])
    }
}

#[async_trait]
impl Runtime for Routed {
    fn name(&self) -> &'static str {
        self.for_isolation(self.default)
            .map(|r| r.name())
            .unwrap_or("none")
    }

    fn supports(&self, isolation: Isolation) -> Result<(), String> {
        self.for_isolation(isolation).map(drop)
    }

    fn holds(&self, id: &MachineId) -> bool {
        self.runtimes.iter().any(|r| r.holds(id))
    }

    async fn start(&self, spec: &WorkloadSpec) -> Result<(), RuntimeError> {
        let target = self.for_spec(spec)?;
        // A machine that changed kind leaves nothing behind in the other.
        for r in &self.runtimes {
            if !Arc::ptr_eq(r, target) && r.holds(&spec.id) {
                r.destroy(&spec.id).await?;
            }
        }
        target.start(spec).await
    }

    async fn prewarm(&self, spec: &WorkloadSpec) -> Result<(), RuntimeError> {
        self.for_spec(spec)?.prewarm(spec).await
    }

    async fn prepare_network(
        &self,
        id: &MachineId,
        isolation: Option<Isolation>,
        net: &NetworkAttachment,
    ) -> Result<(), RuntimeError> {
        self.for_kind(isolation)?
            .prepare_network(id, isolation, net)
            .await
    }

    async fn connect_network(
        &self,
        id: &MachineId,
        net: &NetworkAttachment,
    ) -> Result<(), RuntimeError> {
        self.of(id).connect_network(id, net).await
    }

    async fn freeze(&self, id: &MachineId) -> Result<(), RuntimeError> {
        self.of(id).freeze(id).await
    }

    async fn thaw(&self, id: &MachineId) -> Result<(), RuntimeError> {
        self.of(id).thaw(id).await
    }

    fn volumes_in_guest(&self, id: &MachineId) -> bool {
        self.of(id).volumes_in_guest(id)
    }

    async fn freeze_volume(&self, id: &MachineId, volume: &str) -> Result<(), RuntimeError> {
        self.of(id).freeze_volume(id, volume).await
    }

    async fn thaw_volume(&self, id: &MachineId, volume: &str) -> Result<(), RuntimeError> {
        self.of(id).thaw_volume(id, volume).await
    }

    async fn grow_volume(
        &self,
        id: &MachineId,
        volume: &str,
        bytes: u64,
    ) -> Result<bool, RuntimeError> {
        self.of(id).grow_volume(id, volume, bytes).await
    }

    async fn exec(&self, id: &MachineId, req: &ExecRequest) -> Result<ExecOutput, RuntimeError> {
        self.of(id).exec(id, req).await
    }

    async fn exec_tty(
        &self,
        id: &MachineId,
        req: &TtyRequest,
    ) -> Result<Box<dyn Terminal>, RuntimeError> {
        self.of(id).exec_tty(id, req).await
    }

    async fn processes(&self, id: &MachineId) -> Result<Vec<ProcessInfo>, RuntimeError> {
        self.of(id).processes(id).await
    }

    fn usage(&self, id: &MachineId) -> Option<Usage> {
        self.of(id).usage(id)
    }

    async fn memory(&self, id: &MachineId) -> Result<MemoryInfo, RuntimeError> {
        self.of(id).memory(id).await
    }

    async fn set_memory_limit(&self, id: &MachineId, limit_mb: u64) -> Result<(), RuntimeError> {
        self.of(id).set_memory_limit(id, limit_mb).await
    }

    async fn signal(&self, id: &MachineId, signal: Signal) -> Result<(), RuntimeError> {
        self.of(id).signal(id, signal).await
    }

    async fn wait(&self, id: &MachineId) -> Result<ExitInfo, RuntimeError> {
        self.of(id).wait(id).await
    }

    async fn observe(&self, id: &MachineId) -> Result<Observed, RuntimeError> {
        self.of(id).observe(id).await
    }

    async fn cleanup(&self, id: &MachineId) -> Result<(), RuntimeError> {
        self.of(id).cleanup(id).await
    }

    async fn destroy(&self, id: &MachineId) -> Result<(), RuntimeError> {
        let mut held = false;
        for r in &self.runtimes {
            if r.holds(id) {
                held = true;
                r.destroy(id).await?;
            }
        }
        // Destroy is idempotent: with nothing held, the first runtime still
        // removes what it may keep outside the machine's directory.
        if !held {
            self.runtimes[0].destroy(id).await?;
        }
        Ok(())
    }

    fn log_path(&self, id: &MachineId) -> Option<PathBuf> {
        self.of(id).log_path(id)
    }
}
