//! The boundary between Hangar's agent and whatever runs a machine's
//! workload: containers through an OCI runtime today
//! (`hangar-runtime-oci`), microVMs later. The agent sees only
//! [`Runtime`]; [`fake::FakeRuntime`] stands in for it in fast tests of the
//! agent's state handling.
//!
//! Contract, per machine id: at most one workload exists at a time.
//! [`Runtime::start`] returns once the main process runs;
//! [`Runtime::wait`] resolves when it has ended (also for a workload adopted
//! after a restart of `hangard`); [`Runtime::cleanup`] leaves nothing running
//! and resets the root filesystem; [`Runtime::destroy`] also removes every
//! file of the machine. All are idempotent.

#![forbid(unsafe_code)]

#[cfg(any(test, feature = "test-support"))]
pub mod fake;
mod routed;

pub use routed::Routed;

use std::path::PathBuf;

use hangar_core::machine::Observed;
use hangar_core::process::ProcessSpec;
use hangar_core::{ExitInfo, Isolation, MachineId, Signal};

/// CPU class, as Fly sells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CpuKind {
    /// Shared vCPUs: a smaller CPU weight.
    Shared,
    /// Dedicated vCPUs: full weight.
    Performance,
}

/// Resource limits of a workload.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Resources {
    /// vCPUs (CPU quota of `cpus` cores).
    pub cpus: u32,
    /// Memory limit in MiB.
    pub memory_mb: u64,
    /// CPU class.
    pub cpu_kind: CpuKind,
    /// Most tasks (processes and threads) at once.
    pub pids_max: u64,
}

impl Resources {
    /// The default task limit for a machine with `memory_mb`: 4 per MiB,
    /// at least 256 and at most 32768 (a 256 MB machine gets 1024), so that a
    /// fork bomb stops long before the host's pid space runs out.
    pub fn default_pids_max(memory_mb: u64) -> u64 {
        memory_mb.saturating_mul(4).clamp(256, 32768)
    }
}

/// Everything needed to start a machine's workload.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WorkloadSpec {
    /// The machine.
    pub id: MachineId,
    /// Hostname inside the machine (Fly uses the machine id).
    pub hostname: String,
    /// The main process.
    pub process: ProcessSpec,
    /// Unpacked image layers, bottom first.
    pub layers: Vec<PathBuf>,
    /// Limits.
    pub resources: Resources,
    /// Files to write into the root filesystem before the process starts.
    pub files: Vec<GuestFile>,
    /// Run the main process on a terminal (`init.tty`): one output stream.
    pub tty: bool,
    /// The app's secrets, as environment variables that win over the
    /// process's own; kept off disk.
    pub secret_env: SecretEnv,
    /// Volumes to mount (at most one today).
    pub volumes: Vec<VolumeAttachment>,
    /// The machine's place on its private network, if it has one.
    pub network: Option<NetworkAttachment>,
    /// The runtime the machine asked for; none: the host's default.
    pub isolation: Option<Isolation>,
}

/// A machine's interface on a private network: a host bridge per network,
/// and in the machine an `eth0` with an IPv4 and a 6PN-style IPv6 address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NetworkAttachment {
    /// The host bridge of the network.
    pub bridge: String,
    /// The machine's IPv4 address.
    pub address4: std::net::Ipv4Addr,
    /// The bridge's IPv4 address (the machine's gateway).
    pub gateway4: std::net::Ipv4Addr,
    /// IPv4 prefix length.
    pub prefix4: u8,
    /// The machine's private IPv6 address (`fdaa:...`).
    pub address6: std::net::Ipv6Addr,
    /// The bridge's IPv6 address.
    pub gateway6: std::net::Ipv6Addr,
    /// IPv6 prefix length.
    pub prefix6: u8,
    /// Resolvers for the machine's `/etc/resolv.conf` (none: keep the
    /// image's).
    pub dns: Vec<std::net::IpAddr>,
}

/// A volume a machine mounts: the runtime attaches it (a container runtime
/// mounts it on the host and binds its data directory; a microVM runtime
/// would attach the image as a disk).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct VolumeAttachment {
    /// The volume's id.
    pub id: String,
    /// Where it appears in the machine.
    pub guest_path: String,
    /// Its encryption key, if encrypted.
    pub key: Option<[u8; 64]>,
}

impl std::fmt::Debug for VolumeAttachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeAttachment")
            .field("id", &self.id)
            .field("guest_path", &self.guest_path)
            .field("encrypted", &self.key.is_some())
            .finish()
    }
}

/// Secret environment variables; `Debug` shows only their names.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct SecretEnv(pub Vec<(String, String)>);

impl std::fmt::Debug for SecretEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(k, _)| k))
            .finish()
    }
}

/// A file written into a machine's root filesystem before it starts (Fly's
/// `config.files`). Its contents may come from a secret, so `Debug` shows
/// only their length.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct GuestFile {
    /// Absolute, normalized path inside the machine.
    pub path: String,
    /// The bytes.
    pub contents: Vec<u8>,
    /// Permission bits (`chmod(2)`).
    pub mode: u32,
    /// The contents come from an app secret: keep them off disk.
    pub secret: bool,
}

impl std::fmt::Debug for GuestFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestFile")
            .field("path", &self.path)
            .field("contents", &format_args!("<{} bytes>", self.contents.len()))
            .field("mode", &format_args!("{:o}", self.mode))
            .field("secret", &self.secret)
            .finish()
    }
}

/// A command to run inside a running machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Bytes for its standard input.
    pub stdin: Option<Vec<u8>>,
    /// Kill it after this long.
    pub timeout: std::time::Duration,
}

/// An interactive command with a terminal, run inside a running machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TtyRequest {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Extra environment (e.g. `TERM`).
    pub env: Vec<(String, String)>,
    /// Terminal height.
    pub rows: u16,
    /// Terminal width.
    pub cols: u16,
}

/// The host side of a terminal attached to a command in a machine: what
/// the command writes, what it reads, its window size and its exit.
#[async_trait::async_trait]
pub trait Terminal: Send {
    /// Reads output; `Ok(0)` once the command's side has closed. Cancel
    /// safe: dropping the future loses nothing.
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize>;
    /// Writes input (keystrokes; Ctrl-C becomes SIGINT in the machine).
    async fn write(&mut self, data: &[u8]) -> std::io::Result<()>;
    /// Sets the window size (the command gets SIGWINCH).
    fn resize(&self, rows: u16, cols: u16) -> std::io::Result<()>;
    /// Waits for the command to end; its exit code (`128 + n` when killed
    /// by signal `n`).
    async fn wait(&mut self) -> std::io::Result<i32>;
}

/// How an exec ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecOutput {
    /// Exit code (`128 + n` when killed by signal `n`).
    pub exit_code: i32,
    /// The signal that killed it, if any.
    pub exit_signal: Option<i32>,
    /// Standard output (capped).
    pub stdout: Vec<u8>,
    /// Standard error (capped).
    pub stderr: Vec<u8>,
    /// It ran out of time and was killed.
    pub timed_out: bool,
}

/// A process of a running machine.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcessInfo {
    /// Pid inside the machine.
    pub pid: i32,
    /// Start time, Unix milliseconds.
    pub start_ms: u64,
    /// Time since start, milliseconds.
    pub run_ms: u64,
    /// Command line.
    pub command: String,
    /// Working directory.
    pub directory: String,
    /// CPU time used, milliseconds.
    pub cpu_ms: u64,
    /// Resident memory, bytes.
    pub rss: u64,
    /// Listening sockets: `(proto, address)`.
    pub listen: Vec<(String, String)>,
}

/// Memory of a running machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryInfo {
    /// The limit, MiB.
    pub limit_mb: u64,
    /// In use, MiB.
    pub usage_mb: u64,
}

/// What a running workload has used, from its cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Usage {
    /// CPU time, seconds, since it started.
    pub cpu_seconds: f64,
    /// Memory in use, bytes.
    pub memory_bytes: u64,
    /// Bytes it received over its network interface.
    pub net_rx_bytes: u64,
    /// Bytes it sent over its network interface.
    pub net_tx_bytes: u64,
}

/// Why a runtime operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The machine has no running workload.
    #[error("machine {0} is not running")]
    NotRunning(MachineId),
    /// The workload cannot be built from the spec (for example, the image's
    /// user does not exist in it). Reported to the user.
    #[error("{0}")]
    InvalidSpec(String),
    /// An operation failed on the host.
    #[error("{op} of machine {id} failed: {reason}")]
    Failed {
        /// The operation (start, signal, cleanup...).
        op: &'static str,
        /// The machine.
        id: MachineId,
        /// What went wrong.
        reason: String,
    },
}

/// A way of running machines.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Short name for logs (`crun`, `runc`, `fake`).
    fn name(&self) -> &'static str;

    /// Whether machines that ask for `isolation` can run here; `Err` says
    /// why not (the API answers such a machine's create with 412 and it).
    fn supports(&self, isolation: Isolation) -> Result<(), String>;

    /// Whether this runtime has anything of machine `id` (files, a
    /// workload): where [`Routed`] sends the machine's operations.
    fn holds(&self, id: &MachineId) -> bool {
        let _ = id;
        false
    }

    /// Starts the workload; returns once its main process runs.
    async fn start(&self, spec: &WorkloadSpec) -> Result<(), RuntimeError>;

    /// Gets everything for a later [`Runtime::start`] of `spec` ready now,
    /// without running anything, so that the start does less. A start with a
    /// different spec, or after [`Runtime::cleanup`], prepares afresh. The
    /// default does nothing.
    async fn prewarm(&self, spec: &WorkloadSpec) -> Result<(), RuntimeError> {
        let _ = spec;
        Ok(())
    }

    /// Wires a machine that is about to start for the first time to `net`
    /// ahead of its start (while its image is being resolved), so that the
    /// start finds that part done; `isolation` is what the machine asks
    /// for. The start still checks, and does it when this did not. The
    /// default does nothing.
    async fn prepare_network(
        &self,
        id: &MachineId,
        isolation: Option<Isolation>,
        net: &NetworkAttachment,
    ) -> Result<(), RuntimeError> {
        let _ = (id, isolation, net);
        Ok(())
    }

    /// Makes sure a running workload is wired to `net` as it says (after an
    /// address change, or a link lost while `hangard` was away); does
    /// nothing when it already is. The default does nothing.
    async fn connect_network(
        &self,
        id: &MachineId,
        net: &NetworkAttachment,
    ) -> Result<(), RuntimeError> {
        let _ = (id, net);
        Ok(())
    }

    /// Freezes every process of the workload (suspend).
    async fn freeze(&self, id: &MachineId) -> Result<(), RuntimeError> {
        Err(unsupported(id, "freeze"))
    }

    /// Thaws a frozen workload (resume).
    async fn thaw(&self, id: &MachineId) -> Result<(), RuntimeError> {
        Err(unsupported(id, "thaw"))
    }

    /// Whether the running workload has its volumes as disks of a kernel of
    /// its own (a microVM): the host must not read or change their images
    /// behind it, and asks the runtime instead ([`Runtime::freeze_volume`],
    /// [`Runtime::grow_volume`]). Containers' volumes are mounted on the
    /// host, which handles them itself.
    fn volumes_in_guest(&self, id: &MachineId) -> bool {
        let _ = id;
        false
    }

    /// Freezes volume `volume`'s file system inside the running workload
    /// (flushed and held still), so that its image can be copied
    /// consistently; [`Runtime::thaw_volume`] lets it go on. A freeze not
    /// thawed in time thaws itself.
    async fn freeze_volume(&self, id: &MachineId, volume: &str) -> Result<(), RuntimeError> {
        let _ = volume;
        Err(unsupported(id, "freezing a volume"))
    }

    /// Thaws what [`Runtime::freeze_volume`] froze.
    async fn thaw_volume(&self, id: &MachineId, volume: &str) -> Result<(), RuntimeError> {
        let _ = volume;
        Err(unsupported(id, "thawing a volume"))
    }

    /// Volume `volume`'s image has grown to `bytes`: lets the running
    /// workload see the bigger disk and grows its file system online.
    /// Returns whether it did (else it grows at the next start).
    async fn grow_volume(
        &self,
        id: &MachineId,
        volume: &str,
        bytes: u64,
    ) -> Result<bool, RuntimeError> {
        let _ = (volume, bytes);
        Err(unsupported(id, "growing a volume"))
    }

    /// Runs a command inside the running workload.
    async fn exec(&self, id: &MachineId, req: &ExecRequest) -> Result<ExecOutput, RuntimeError> {
        let _ = req;
        Err(unsupported(id, "exec"))
    }

    /// Runs an interactive command inside the running workload, attached to
    /// a new terminal.
    async fn exec_tty(
        &self,
        id: &MachineId,
        req: &TtyRequest,
    ) -> Result<Box<dyn Terminal>, RuntimeError> {
        let _ = req;
        Err(unsupported(id, "exec with a terminal"))
    }

    /// The workload's processes.
    async fn processes(&self, id: &MachineId) -> Result<Vec<ProcessInfo>, RuntimeError> {
        Err(unsupported(id, "ps"))
    }

    /// What the running workload has used (read at a metrics scrape, so
    /// a few small files at most); `None` when it is not running or the
    /// runtime cannot say.
    fn usage(&self, id: &MachineId) -> Option<Usage> {
        let _ = id;
        None
    }

    /// The workload's memory limit and use.
    async fn memory(&self, id: &MachineId) -> Result<MemoryInfo, RuntimeError> {
        Err(unsupported(id, "memory"))
    }

    /// Changes the running workload's memory limit.
    async fn set_memory_limit(&self, id: &MachineId, limit_mb: u64) -> Result<(), RuntimeError> {
        let _ = limit_mb;
        Err(unsupported(id, "memory limit"))
    }

    /// Sends a signal to the main process.
    async fn signal(&self, id: &MachineId, signal: Signal) -> Result<(), RuntimeError>;

    /// Resolves when the current workload has ended.
    async fn wait(&self, id: &MachineId) -> Result<ExitInfo, RuntimeError>;

    /// What exists of the machine's workload, for adoption at startup. A
    /// running workload reported here can then be [`Runtime::wait`]ed on.
    async fn observe(&self, id: &MachineId) -> Result<Observed, RuntimeError>;

    /// Kills what runs, removes the finished workload and resets the root
    /// filesystem; keeps the machine's logs.
    async fn cleanup(&self, id: &MachineId) -> Result<(), RuntimeError>;

    /// [`Runtime::cleanup`], then removes every file of the machine.
    async fn destroy(&self, id: &MachineId) -> Result<(), RuntimeError>;

    /// Where the machine's log lives, if this runtime keeps one.
    fn log_path(&self, id: &MachineId) -> Option<PathBuf>;
}

fn unsupported(id: &MachineId, op: &'static str) -> RuntimeError {
    RuntimeError::Failed {
        op,
        id: id.clone(),
        reason: "not supported by this runtime".into(),
    }
}
