//! The machine state machine.
//!
//! One pure function, [`apply`], decides every change of a machine's state: it
//! takes the machine as it is, the machine's policy (from its config) and one
//! [`Input`] (a user request, an observation of the workload, or a timer), and
//! returns either a [`Transition`] (the new machine, the events to record and
//! the [`Effect`]s to carry out, in order) or a [`Denied`] reason.
//!
//! ```text
//!                      POST /machines
//!                            │
//!                            ▼              prepare failed
//!     skip_launch ┌───── created ───────────────────────────────► failed ◄──┐
//!     (prepared)  │          │ prepared (image ready)               │       │
//!                 ▼          ▼                          start       │       │
//!     ┌──────► stopped ──► starting ◄─────────────────────────────┘       │
//!     │   start   ▲ ▲      │   ▲  │                                        │
//!     │           │ │      │   │  └── start failed / prepare failed ───────┘
//!     │           │ │      │   │
//!     │           │ │      │   └── exit + restart policy (after backoff),
//!     │           │ │      │       or exit of a restart or update
//!     │           │ │      ▼   │
//!     │           │ │    started ─────── exit, no restart ────────┐
//!     │           │ │      │ │ ├─ restart ─► restarting ─exit─► starting
//!     │           │ │      │ │ └─ update ──► replacing ──exit─► starting (or stopped)
//!     │           │ │      │ └─ suspend ─► suspending ─frozen─► suspended ─start─► starting (thaw)
//!     │           │ │      │ stop (signal, then SIGKILL on timeout)│
//!     │           │ │      ▼                                       │
//!     │           │ └─ stopping ─── exit ──► stopped ◄─────────────┘
//!     │           │                          (auto_destroy: destroying)
//!     │
//!     any state ── destroy (running ones need force) ──► destroying ──► destroyed
//! ```
//!
//! A scheduled machine's runs ([`Input::ScheduledStart`], source `flyd`)
//! take the same `start` edges out of stopped, failed and suspended, and are
//! skipped in every other state; once its schedule has begun, a user's start
//! is refused ([`Denied::Scheduled`]).
//!
//! Ownership: exactly one task, the machine's runner in `hangar-agent`, calls
//! [`apply`] for a given machine, persists the transition (state and events in
//! one SQLite transaction) and only then executes its effects. Everyone else
//! sends the runner a message. Crash recovery uses the same path: at startup
//! the runner feeds [`Input::Resume`] with what the runtime reports, and the
//! arms below decide how to continue.
//!
//! The `match` in [`apply`] lists every `(state, input)` pair without a
//! wildcard arm, so a new state or input does not compile until each pair has
//! been decided.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::exit::ExitInfo;
use crate::signal::Signal;

/// The lifecycle state of a machine. Wire names (Fly's) are given by
/// [`MachineState::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MachineState {
    /// Exists; its image is being prepared (or it was created with
    /// `skip_launch` and is still being prepared).
    Created,
    /// Its workload is being started (including restart backoff).
    Starting,
    /// Its main process runs.
    Started,
    /// A stop signal was sent; waiting for the main process to exit.
    Stopping,
    /// Not running; can be started.
    Stopped,
    /// Restarting on request: stopping the main process to start it again.
    Restarting,
    /// Updating: stopping the old version's process to start the new one.
    Replacing,
    /// Being suspended (its processes frozen).
    Suspending,
    /// Suspended: processes frozen in memory; a start resumes them.
    Suspended,
    /// Being torn down.
    Destroying,
    /// Gone; the record is kept for `include_deleted` listings.
    Destroyed,
    /// Preparing or starting failed; can be started again or destroyed.
    Failed,
}

impl MachineState {
    /// Every state, in lifecycle order.
    pub const ALL: &'static [MachineState] = &[
        MachineState::Created,
        MachineState::Starting,
        MachineState::Started,
        MachineState::Stopping,
        MachineState::Stopped,
        MachineState::Restarting,
        MachineState::Replacing,
        MachineState::Suspending,
        MachineState::Suspended,
        MachineState::Destroying,
        MachineState::Destroyed,
        MachineState::Failed,
    ];

    /// Fly's name for the state, as the API reports it.
    pub fn as_str(self) -> &'static str {
        match self {
            MachineState::Created => "created",
            MachineState::Starting => "starting",
            MachineState::Started => "started",
            MachineState::Stopping => "stopping",
            MachineState::Stopped => "stopped",
            MachineState::Restarting => "restarting",
            MachineState::Replacing => "replacing",
            MachineState::Suspending => "suspending",
            MachineState::Suspended => "suspended",
            MachineState::Destroying => "destroying",
            MachineState::Destroyed => "destroyed",
            MachineState::Failed => "failed",
        }
    }

    /// The state's position in [`MachineState::ALL`].
    pub fn index(self) -> usize {
        MachineState::ALL
            .iter()
            .position(|s| *s == self)
            .unwrap_or_default()
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<MachineState> {
        MachineState::ALL
            .iter()
            .copied()
            .find(|st| st.as_str() == s)
    }

    /// Whether a workload may exist in this state (so destroy needs force).
    pub fn is_running(self) -> bool {
        matches!(
            self,
            MachineState::Starting
                | MachineState::Started
                | MachineState::Stopping
                | MachineState::Restarting
                | MachineState::Replacing
                | MachineState::Suspending
        )
    }
}

impl std::fmt::Display for MachineState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the runner is waiting for inside a transient state. Not persisted:
/// after a restart of `hangard` it is derived again from [`Input::Resume`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Step {
    /// Nothing in flight.
    #[default]
    Idle,
    /// The image is being pulled or looked up.
    Preparing,
    /// The workload is being started.
    Launching,
    /// Waiting out the restart backoff before starting again.
    Backoff,
    /// Resuming a suspended workload.
    Thawing,
}

/// The part of a machine that the state machine owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// The lifecycle state.
    pub state: MachineState,
    /// What is in flight within the state.
    pub step: Step,
    /// Restarts by the restart policy since the last start by a user.
    pub restart_count: u32,
    /// In `created`: start the workload once the image is ready (false for
    /// `skip_launch`, which settles in `stopped`). In `replacing`: start the
    /// new version once the old one has stopped.
    pub launch: bool,
}

impl Machine {
    /// A machine that was just created.
    pub fn new(launch: bool) -> Self {
        Machine {
            state: MachineState::Created,
            step: Step::Idle,
            restart_count: 0,
            launch,
        }
    }
}

/// A machine's restart policy, `config.restart.policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicy {
    /// Never restart.
    No,
    /// Restart whenever the main process exits, unless a user stopped it.
    Always,
    /// Restart up to `max_retries` times when the exit was not clean.
    OnFailure,
    /// Fly's spot-price policy; without a spot market it behaves as
    /// `on-failure`.
    SpotPrice,
}

impl RestartPolicy {
    /// Parses Fly's names (`no`, `always`, `on-failure`, `spot-price`) and
    /// flyctl's spellings (`never`, `on-fail`).
    pub fn parse(s: &str) -> Option<RestartPolicy> {
        match s {
            "no" | "never" => Some(RestartPolicy::No),
            "always" => Some(RestartPolicy::Always),
            "on-failure" | "on-fail" => Some(RestartPolicy::OnFailure),
            "spot-price" => Some(RestartPolicy::SpotPrice),
            _ => None,
        }
    }

    /// Fly's name.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::No => "no",
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::SpotPrice => "spot-price",
        }
    }
}

/// Fly's default `max_retries` for `on-failure`.
pub const DEFAULT_MAX_RETRIES: u32 = 10;
/// Fly's default stop signal.
pub const DEFAULT_STOP_SIGNAL: Signal = Signal::Int;
/// Fly's default stop timeout.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest stop timeout Fly accepts.
pub const MAX_STOP_TIMEOUT: Duration = Duration::from_secs(300);

/// The parts of a machine's config that steer the state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// What to do when the main process exits by itself.
    pub restart: RestartPolicy,
    /// Most restarts in a row for `on-failure`.
    pub max_retries: u32,
    /// Destroy the machine once its main process has exited for good.
    pub auto_destroy: bool,
    /// Signal for a stop without an explicit signal.
    pub stop_signal: Signal,
    /// Time between the stop signal and SIGKILL.
    pub stop_timeout: Duration,
    /// The machine runs on a schedule whose cycle has begun: only the
    /// schedule starts it, users cannot.
    pub scheduled: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            restart: RestartPolicy::OnFailure,
            max_retries: DEFAULT_MAX_RETRIES,
            auto_destroy: false,
            stop_signal: DEFAULT_STOP_SIGNAL,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            scheduled: false,
        }
    }
}

/// What the runtime reports about a machine's workload when `hangard` starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// The workload is running.
    Running,
    /// The workload ended while `hangard` was away.
    Exited(ExitInfo),
    /// There is no trace of a workload.
    Absent,
}

/// A timer the runner can arm; at most one of each kind is armed at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    /// The stop timeout: SIGKILL when it fires.
    StopTimeout,
    /// The restart backoff: start again when it fires.
    RestartBackoff,
    /// Retry a failed teardown.
    DestroyRetry,
}

/// One input to the state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The runner (re)starts: after creation, or at `hangard` startup with
    /// what the runtime observed.
    Resume(Observed),
    /// A user asks to start the machine.
    Start,
    /// The machine's schedule says it is time for a run. A machine that is
    /// still running (or busy) skips the run.
    ScheduledStart,
    /// A user asks to stop the machine.
    Stop {
        /// Signal to send instead of the configured one.
        signal: Option<Signal>,
        /// Time to wait before SIGKILL instead of the configured one.
        timeout: Option<Duration>,
    },
    /// A user asks to restart the machine (stop, then start again).
    Restart {
        /// Signal to send instead of the configured one.
        signal: Option<Signal>,
        /// Time to wait before SIGKILL instead of the configured one.
        timeout: Option<Duration>,
    },
    /// A user replaced the machine's config (the agent has swapped it in).
    Update {
        /// Run the new version (false for `skip_launch`).
        launch: bool,
    },
    /// A user asks to suspend the machine.
    Suspend,
    /// A user sends a signal to the main process.
    Signal(Signal),
    /// A user asks to destroy the machine.
    Destroy {
        /// Destroy even if it runs (`force=true` or `kill=true`).
        force: bool,
    },
    /// The image is ready to run.
    Prepared,
    /// The image could not be made ready.
    PrepareFailed(String),
    /// The workload's main process runs.
    WorkloadStarted,
    /// The workload could not be started.
    WorkloadStartFailed(String),
    /// The workload's main process ended.
    WorkloadExited(ExitInfo),
    /// The workload's processes are frozen.
    Frozen,
    /// Freezing the workload failed.
    FreezeFailed(String),
    /// The workload's processes run again.
    Thawed,
    /// Thawing the workload failed.
    ThawFailed(String),
    /// The workload and the machine's files are gone.
    WorkloadDestroyed,
    /// Tearing the workload down failed.
    WorkloadDestroyFailed(String),
    /// A timer fired.
    TimerFired(Timer),
}

/// Something the runner must do, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Pull or look up the image; report [`Input::Prepared`] or
    /// [`Input::PrepareFailed`].
    PrepareImage,
    /// Abandon an image preparation in flight.
    CancelPrepare,
    /// Start the workload; report [`Input::WorkloadStarted`] or
    /// [`Input::WorkloadStartFailed`], then [`Input::WorkloadExited`] later.
    StartWorkload,
    /// Watch an adopted workload and report [`Input::WorkloadExited`].
    WatchExit,
    /// Send a signal to the workload's main process.
    Signal(Signal),
    /// Freeze the workload's processes; report [`Input::Frozen`] or
    /// [`Input::FreezeFailed`].
    Freeze,
    /// Thaw the workload's processes; report [`Input::Thawed`] or
    /// [`Input::ThawFailed`].
    Thaw,
    /// Remove what is left of a finished (or stray) workload and reset the
    /// root filesystem, without touching the machine's other files.
    CleanupWorkload,
    /// Get the root filesystem and bundle of the next start ready now, while
    /// the machine rests in `stopped` (nothing runs; the writable layer is
    /// fresh), so that the start does less. Best effort.
    Prewarm,
    /// Kill the workload if needed and remove everything of the machine;
    /// report [`Input::WorkloadDestroyed`] or [`Input::WorkloadDestroyFailed`].
    DestroyWorkload,
    /// Arm a timer.
    ArmTimer(Timer, Duration),
    /// Disarm a timer.
    CancelTimer(Timer),
}

/// Who caused an event: a user's request or the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    /// A user's API request.
    User,
    /// Hangar itself (Fly calls this `flyd`).
    Flyd,
}

/// An entry for the machine's event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    /// Fly's event type: `launch`, `start`, `stop`, `exit`, `restart`,
    /// `destroy`.
    pub kind: &'static str,
    /// The state the machine went to.
    pub status: MachineState,
    /// Who caused it.
    pub source: Source,
    /// For `exit` events: how the process ended.
    pub exit: Option<ExitRecord>,
    /// A failure message, or a note such as the max restart count.
    pub message: Option<String>,
}

/// The `exit_event` of an `exit` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitRecord {
    /// How the process ended.
    pub info: ExitInfo,
    /// A user asked for the stop.
    pub requested_stop: bool,
    /// The restart policy is starting the machine again.
    pub restarting: bool,
    /// Restarts in a row so far (after this one, when restarting).
    pub restart_count: u32,
}

impl EventRecord {
    fn new(kind: &'static str, status: MachineState, source: Source) -> Self {
        EventRecord {
            kind,
            status,
            source,
            exit: None,
            message: None,
        }
    }

    fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }
}

/// The outcome of an accepted input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The machine after the input.
    pub machine: Machine,
    /// Events to record, oldest first, in the same commit as the state.
    pub events: Vec<EventRecord>,
    /// What to do, in order, after the commit.
    pub effects: Vec<Effect>,
}

impl Transition {
    /// Whether the input changed nothing and asks for nothing.
    pub fn is_noop(&self, before: &Machine) -> bool {
        self.machine == *before && self.events.is_empty() && self.effects.is_empty()
    }
}

/// Why a request was refused. The API maps each reason to a status code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// Start is not possible from this state.
    #[error("unable to start machine from current state: '{0}'")]
    CannotStart(MachineState),
    /// Stop is not possible from this state.
    #[error("unable to stop machine from current state: '{0}'")]
    CannotStop(MachineState),
    /// The machine runs and the destroy was not forced.
    #[error(
        "unable to destroy machine, not currently stopped or suspended (state: '{0}'); use force=true to destroy it anyway"
    )]
    NotStopped(MachineState),
    /// The request needs a running machine.
    #[error("machine is not running (state: '{0}')")]
    NotRunning(MachineState),
    /// Another operation is under way; the request may succeed once the
    /// machine settles.
    #[error("machine is busy (state: '{0}'); try again once it settles")]
    Busy(MachineState),
    /// The machine is gone.
    #[error("machine is destroyed")]
    Destroyed,
    /// The machine starts only on its schedule.
    #[error(
        "machine runs on a schedule ({0}) and starts only when it is due; it cannot be started by hand"
    )]
    Scheduled(MachineState),
}

/// Delay before restart number `n` (1-based): 100 ms doubling up to 10 s.
pub fn restart_backoff(n: u32) -> Duration {
    let exp = n.saturating_sub(1).min(7);
    Duration::from_millis(100u64 << exp).min(Duration::from_secs(10))
}

/// Decides what `input` does to machine `m` under `policy`.
pub fn apply(m: &Machine, policy: &Policy, input: Input) -> Result<Transition, Denied> {
    use Input as I;
    use MachineState as S;

    let mut t = Transition {
        machine: m.clone(),
        events: Vec::new(),
        effects: Vec::new(),
    };
    let state = m.state;
    let input_source = match input {
        I::ScheduledStart => Source::Flyd,
        _ => Source::User,
    };

    match (state, input) {
        // ---- created: the image is being prepared --------------------------
        (S::Created, I::Resume(observed)) => {
            // A workload never ran in `created`; anything the runtime has is
            // stale and goes. Then (re)start the preparation.
            if observed != Observed::Absent {
                t.effects.push(Effect::CleanupWorkload);
            }
            t.machine.step = Step::Preparing;
            t.effects.push(Effect::PrepareImage);
        }
        (S::Created, I::Prepared) => {
            if m.launch {
                goto_launch(&mut t);
            } else {
                // skip_launch: settle in `stopped`, where flyctl waits for it.
                t.machine.state = S::Stopped;
                t.machine.step = Step::Idle;
                t.effects.push(Effect::Prewarm);
            }
        }
        (S::Created, I::PrepareFailed(error)) => fail(&mut t, "launch", error),
        // Starting a skip_launch machine that is still being prepared: start
        // it as soon as the image is ready.
        (S::Created, I::Start | I::Restart { .. }) => {
            if !m.launch {
                t.machine.launch = true;
                t.events
                    .push(EventRecord::new("start", S::Created, Source::User));
            }
        }
        (S::Created, I::Stop { .. }) => t.machine.launch = false,
        // The new config needs its own image.
        (S::Created, I::Update { launch }) => {
            t.machine.launch = launch;
            t.machine.step = Step::Preparing;
            t.effects.push(Effect::CancelPrepare);
            t.effects.push(Effect::PrepareImage);
            t.events
                .push(EventRecord::new("update", S::Created, Source::User));
        }
        (S::Created, I::Suspend | I::Signal(_)) => return Err(Denied::NotRunning(state)),
        (S::Created, I::Destroy { .. }) => {
            t.effects.push(Effect::CancelPrepare);
            goto_destroy(&mut t, Source::User);
        }
        (
            S::Created,
            I::WorkloadStarted
            | I::WorkloadStartFailed(_)
            | I::WorkloadExited(_)
            | I::Frozen
            | I::FreezeFailed(_)
            | I::Thawed
            | I::ThawFailed(_)
            | I::WorkloadDestroyed
            | I::WorkloadDestroyFailed(_)
            | I::TimerFired(_)
            | I::ScheduledStart,
        ) => {}

        // ---- starting ----------------------------------------------------------
        (S::Starting, I::Resume(observed)) => match observed {
            // Thawing is idempotent: a resume that was cut short finishes.
            Observed::Running => {
                t.machine.state = S::Started;
                t.machine.step = Step::Idle;
                t.effects.push(Effect::WatchExit);
                t.effects.push(Effect::Thaw);
                t.events
                    .push(EventRecord::new("start", S::Started, Source::Flyd));
            }
            Observed::Exited(info) => on_exit(&mut t, policy, info, false),
            Observed::Absent => {
                t.machine.step = Step::Preparing;
                t.effects.push(Effect::PrepareImage);
            }
        },
        (S::Starting, I::Prepared) => {
            if m.step == Step::Preparing {
                t.machine.step = Step::Launching;
                t.effects.push(Effect::StartWorkload);
            }
        }
        (S::Starting, I::PrepareFailed(error)) => {
            if m.step == Step::Preparing {
                fail(&mut t, "start", error);
            }
        }
        (S::Starting, I::WorkloadStarted) => {
            t.machine.state = S::Started;
            t.machine.step = Step::Idle;
            t.events
                .push(EventRecord::new("start", S::Started, Source::Flyd));
        }
        (S::Starting, I::WorkloadStartFailed(error)) => fail(&mut t, "start", error),
        // The process ended before its start was reported.
        (S::Starting, I::WorkloadExited(info)) => on_exit(&mut t, policy, info, false),
        (S::Starting, I::Thawed) => {
            if m.step == Step::Thawing {
                t.machine.state = S::Started;
                t.machine.step = Step::Idle;
                t.events.push(
                    EventRecord::new("start", S::Started, Source::Flyd).with_message("resumed"),
                );
            }
        }
        // Resuming failed: start from scratch instead, as Fly falls back to a
        // cold boot when a snapshot cannot be restored.
        (S::Starting, I::ThawFailed(error)) => {
            if m.step == Step::Thawing {
                t.machine.step = Step::Preparing;
                t.effects.push(Effect::CleanupWorkload);
                t.effects.push(Effect::PrepareImage);
                t.events.push(
                    EventRecord::new("start", S::Starting, Source::Flyd)
                        .with_message(format!("resume failed, starting afresh: {error}")),
                );
            }
        }
        (S::Starting, I::Frozen | I::FreezeFailed(_)) => {}
        (S::Starting, I::TimerFired(Timer::RestartBackoff)) => {
            if m.step == Step::Backoff {
                t.machine.step = Step::Preparing;
                t.effects.push(Effect::PrepareImage);
            }
        }
        (S::Starting, I::TimerFired(Timer::StopTimeout | Timer::DestroyRetry)) => {}
        (S::Starting, I::Start | I::Restart { .. } | I::ScheduledStart) => {}
        (S::Starting, I::Stop { signal, timeout }) => match m.step {
            // Nothing runs yet: stopping is immediate.
            Step::Preparing | Step::Backoff | Step::Idle => {
                t.effects.push(Effect::CancelPrepare);
                t.effects.push(Effect::CancelTimer(Timer::RestartBackoff));
                t.machine.state = S::Stopped;
                t.machine.step = Step::Idle;
                t.events
                    .push(EventRecord::new("stop", S::Stopped, Source::User));
            }
            Step::Launching | Step::Thawing => goto_stopping(&mut t, policy, signal, timeout),
        },
        // Updating a machine that crash-loops (or waits for its image) is how
        // users fix it: take the new config right away.
        (S::Starting, I::Update { launch }) => match m.step {
            Step::Preparing | Step::Backoff | Step::Idle => {
                t.effects.push(Effect::CancelPrepare);
                t.effects.push(Effect::CancelTimer(Timer::RestartBackoff));
                t.machine.restart_count = 0;
                goto_updated(&mut t, launch);
            }
            Step::Launching | Step::Thawing => return Err(Denied::Busy(state)),
        },
        (S::Starting, I::Suspend | I::Signal(_)) => return Err(Denied::NotRunning(state)),
        (S::Starting, I::Destroy { force }) => match m.step {
            Step::Preparing | Step::Backoff | Step::Idle => {
                t.effects.push(Effect::CancelPrepare);
                t.effects.push(Effect::CancelTimer(Timer::RestartBackoff));
                goto_destroy(&mut t, Source::User);
            }
            Step::Launching | Step::Thawing if force => goto_destroy(&mut t, Source::User),
            Step::Launching | Step::Thawing => return Err(Denied::NotStopped(state)),
        },
        (S::Starting, I::WorkloadDestroyed | I::WorkloadDestroyFailed(_)) => {}

        // ---- started -----------------------------------------------------------
        (S::Started, I::Resume(observed)) => match observed {
            Observed::Running => t.effects.push(Effect::WatchExit),
            Observed::Exited(info) => on_exit(&mut t, policy, info, false),
            Observed::Absent => on_exit(&mut t, policy, lost_workload(), false),
        },
        (S::Started, I::WorkloadExited(info)) => on_exit(&mut t, policy, info, false),
        (S::Started, I::Start | I::ScheduledStart) => {}
        (S::Started, I::Stop { signal, timeout }) => goto_stopping(&mut t, policy, signal, timeout),
        (S::Started, I::Restart { signal, timeout }) => {
            t.machine.state = S::Restarting;
            t.machine.restart_count = 0;
            push_stop(&mut t, policy, signal, timeout);
            t.events
                .push(EventRecord::new("restart", S::Restarting, Source::User));
        }
        (S::Started, I::Update { launch }) => {
            t.machine.state = S::Replacing;
            t.machine.launch = launch;
            push_stop(&mut t, policy, None, None);
            t.events
                .push(EventRecord::new("update", S::Replacing, Source::User));
        }
        (S::Started, I::Suspend) => {
            t.machine.state = S::Suspending;
            t.effects.push(Effect::Freeze);
            t.events
                .push(EventRecord::new("suspend", S::Suspending, Source::User));
        }
        (S::Started, I::Signal(sig)) => t.effects.push(Effect::Signal(sig)),
        (S::Started, I::Destroy { force: true }) => goto_destroy(&mut t, Source::User),
        (S::Started, I::Destroy { force: false }) => return Err(Denied::NotStopped(state)),
        (
            S::Started,
            I::Prepared
            | I::PrepareFailed(_)
            | I::WorkloadStarted
            | I::WorkloadStartFailed(_)
            | I::Frozen
            | I::FreezeFailed(_)
            | I::Thawed
            | I::ThawFailed(_)
            | I::WorkloadDestroyed
            | I::WorkloadDestroyFailed(_)
            | I::TimerFired(_),
        ) => {}

        // ---- stopping, restarting, replacing: waiting for the process to end --
        (S::Stopping | S::Restarting | S::Replacing, I::Resume(observed)) => match observed {
            // The stop timer died with the old daemon: signal again and
            // re-arm it.
            Observed::Running => {
                t.effects.push(Effect::WatchExit);
                push_stop(&mut t, policy, None, None);
            }
            Observed::Exited(info) => after_stop(&mut t, policy, info),
            Observed::Absent => after_stop(&mut t, policy, lost_workload()),
        },
        (S::Stopping | S::Restarting | S::Replacing, I::WorkloadExited(info)) => {
            after_stop(&mut t, policy, info)
        }
        (S::Stopping | S::Restarting | S::Replacing, I::TimerFired(Timer::StopTimeout)) => {
            t.effects.push(Effect::Signal(Signal::Kill));
        }
        (
            S::Stopping | S::Restarting | S::Replacing,
            I::TimerFired(Timer::RestartBackoff | Timer::DestroyRetry),
        ) => {}
        (S::Stopping, I::Start | I::Restart { .. }) => return Err(Denied::CannotStart(state)),
        (S::Restarting, I::Start | I::Restart { .. }) => {}
        // A start during an update: run the new version even if the update
        // said skip_launch.
        (S::Replacing, I::Start | I::Restart { .. }) => t.machine.launch = true,
        // A second stop with SIGKILL escalates; any other is already under way.
        (S::Stopping, I::Stop { signal, .. }) => {
            if signal == Some(Signal::Kill) {
                t.effects.push(Effect::Signal(Signal::Kill));
            }
        }
        // A stop while restarting or replacing: end stopped.
        (S::Restarting | S::Replacing, I::Stop { signal, .. }) => {
            t.machine.state = S::Stopping;
            if signal == Some(Signal::Kill) {
                t.effects.push(Effect::Signal(Signal::Kill));
            }
            t.events
                .push(EventRecord::new("stop", S::Stopping, Source::User));
        }
        (S::Stopping | S::Restarting | S::Replacing, I::Update { .. } | I::Suspend) => {
            return Err(Denied::Busy(state));
        }
        (S::Stopping | S::Restarting | S::Replacing, I::Signal(sig)) => {
            t.effects.push(Effect::Signal(sig));
        }
        (S::Stopping | S::Restarting | S::Replacing, I::Destroy { force: true }) => {
            t.effects.push(Effect::CancelTimer(Timer::StopTimeout));
            goto_destroy(&mut t, Source::User);
        }
        (S::Stopping | S::Restarting | S::Replacing, I::Destroy { force: false }) => {
            return Err(Denied::NotStopped(state));
        }
        (
            S::Stopping | S::Restarting | S::Replacing,
            I::Prepared
            | I::PrepareFailed(_)
            | I::WorkloadStarted
            | I::WorkloadStartFailed(_)
            | I::Frozen
            | I::FreezeFailed(_)
            | I::Thawed
            | I::ThawFailed(_)
            | I::WorkloadDestroyed
            | I::WorkloadDestroyFailed(_)
            | I::ScheduledStart,
        ) => {}

        // ---- suspending and suspended -------------------------------------------
        (S::Suspending | S::Suspended, I::Resume(observed)) => match observed {
            Observed::Running => {
                t.effects.push(Effect::WatchExit);
                if state == S::Suspending {
                    t.effects.push(Effect::Freeze);
                }
            }
            Observed::Exited(info) => on_exit(&mut t, policy, info, false),
            Observed::Absent => on_exit(&mut t, policy, lost_workload(), false),
        },
        (S::Suspending, I::Frozen) => {
            t.machine.state = S::Suspended;
            t.events
                .push(EventRecord::new("suspend", S::Suspended, Source::Flyd));
        }
        (S::Suspending, I::FreezeFailed(error)) => {
            t.machine.state = S::Started;
            t.events.push(
                EventRecord::new("suspend", S::Started, Source::Flyd)
                    .with_message(format!("suspend failed: {error}")),
            );
        }
        (S::Suspending | S::Suspended, I::WorkloadExited(info)) => {
            on_exit(&mut t, policy, info, false)
        }
        (S::Suspending, I::Suspend | I::ScheduledStart) => {}
        (
            S::Suspending,
            I::Start | I::Stop { .. } | I::Restart { .. } | I::Update { .. } | I::Signal(_),
        ) => return Err(Denied::Busy(state)),
        (S::Suspending, I::Destroy { force: true }) => goto_destroy(&mut t, Source::User),
        (S::Suspending, I::Destroy { force: false }) => return Err(Denied::NotStopped(state)),
        (S::Suspended, I::Start) if policy.scheduled => return Err(Denied::Scheduled(state)),
        (S::Suspended, I::Start | I::ScheduledStart) => {
            t.machine.state = S::Starting;
            t.machine.step = Step::Thawing;
            t.effects.push(Effect::Thaw);
            t.events.push(start_event(S::Starting, &input_source));
        }
        // Stop, restart or update of a suspended machine discard its frozen
        // processes: SIGKILL is delivered as they thaw.
        (S::Suspended, I::Stop { .. }) => {
            t.machine.state = S::Stopping;
            push_kill_frozen(&mut t, policy);
            t.events
                .push(EventRecord::new("stop", S::Stopping, Source::User));
        }
        (S::Suspended, I::Restart { .. }) => {
            t.machine.state = S::Restarting;
            push_kill_frozen(&mut t, policy);
            t.events
                .push(EventRecord::new("restart", S::Restarting, Source::User));
        }
        (S::Suspended, I::Update { launch }) => {
            t.machine.state = S::Replacing;
            t.machine.launch = launch;
            push_kill_frozen(&mut t, policy);
            t.events
                .push(EventRecord::new("update", S::Replacing, Source::User));
        }
        (S::Suspended, I::Suspend) => {}
        (S::Suspended, I::Signal(_)) => return Err(Denied::NotRunning(state)),
        // As Fly allows, a suspended machine is destroyed without force.
        (S::Suspended, I::Destroy { .. }) => goto_destroy(&mut t, Source::User),
        (
            S::Suspending | S::Suspended,
            I::Prepared
            | I::PrepareFailed(_)
            | I::WorkloadStarted
            | I::WorkloadStartFailed(_)
            | I::Thawed
            | I::ThawFailed(_)
            | I::WorkloadDestroyed
            | I::WorkloadDestroyFailed(_)
            | I::TimerFired(_),
        ) => {}
        (S::Suspended, I::Frozen | I::FreezeFailed(_)) => {}

        // ---- stopped and failed: nothing runs -------------------------------
        (S::Stopped | S::Failed, I::Resume(observed)) => {
            if observed != Observed::Absent {
                t.effects.push(Effect::CleanupWorkload);
            }
        }
        (S::Stopped | S::Failed, I::Start | I::Restart { .. }) if policy.scheduled => {
            return Err(Denied::Scheduled(state));
        }
        (S::Stopped | S::Failed, I::Start | I::Restart { .. } | I::ScheduledStart) => {
            t.machine.state = S::Starting;
            t.machine.step = Step::Preparing;
            t.machine.restart_count = 0;
            t.effects.push(Effect::PrepareImage);
            t.events.push(start_event(S::Starting, &input_source));
        }
        (S::Stopped | S::Failed, I::Stop { .. }) => {}
        (S::Stopped | S::Failed, I::Update { launch }) => {
            t.machine.restart_count = 0;
            goto_updated(&mut t, launch);
        }
        (S::Stopped | S::Failed, I::Suspend | I::Signal(_)) => {
            return Err(Denied::NotRunning(state));
        }
        (S::Stopped | S::Failed, I::Destroy { .. }) => goto_destroy(&mut t, Source::User),
        (
            S::Stopped | S::Failed,
            I::Prepared
            | I::PrepareFailed(_)
            | I::WorkloadStarted
            | I::WorkloadStartFailed(_)
            | I::WorkloadExited(_)
            | I::Frozen
            | I::FreezeFailed(_)
            | I::Thawed
            | I::ThawFailed(_)
            | I::WorkloadDestroyed
            | I::WorkloadDestroyFailed(_)
            | I::TimerFired(_),
        ) => {}

        // ---- destroying ----------------------------------------------------------
        (S::Destroying, I::Resume(_)) => t.effects.push(Effect::DestroyWorkload),
        (S::Destroying, I::WorkloadDestroyed) => {
            t.machine.state = S::Destroyed;
            t.machine.step = Step::Idle;
            t.events
                .push(EventRecord::new("destroy", S::Destroyed, Source::Flyd));
        }
        (S::Destroying, I::WorkloadDestroyFailed(error)) => {
            t.events.push(
                EventRecord::new("destroy", S::Destroying, Source::Flyd)
                    .with_message(format!("teardown failed, retrying: {error}")),
            );
            t.effects.push(Effect::ArmTimer(
                Timer::DestroyRetry,
                Duration::from_secs(5),
            ));
        }
        (S::Destroying, I::TimerFired(Timer::DestroyRetry)) => {
            t.effects.push(Effect::DestroyWorkload);
        }
        (S::Destroying, I::Start | I::Restart { .. }) => return Err(Denied::CannotStart(state)),
        (S::Destroying, I::Update { .. }) => return Err(Denied::Busy(state)),
        (S::Destroying, I::Suspend | I::Signal(_)) => return Err(Denied::NotRunning(state)),
        (S::Destroying, I::Stop { .. } | I::Destroy { .. }) => {}
        (
            S::Destroying,
            I::Prepared
            | I::PrepareFailed(_)
            | I::WorkloadStarted
            | I::WorkloadStartFailed(_)
            | I::WorkloadExited(_)
            | I::Frozen
            | I::FreezeFailed(_)
            | I::Thawed
            | I::ThawFailed(_)
            | I::TimerFired(Timer::StopTimeout | Timer::RestartBackoff)
            | I::ScheduledStart,
        ) => {}

        // ---- destroyed: terminal --------------------------------------------------
        (S::Destroyed, I::Start | I::Restart { .. }) => return Err(Denied::CannotStart(state)),
        (S::Destroyed, I::Stop { .. }) => return Err(Denied::CannotStop(state)),
        (S::Destroyed, I::Update { .. }) => return Err(Denied::Destroyed),
        (S::Destroyed, I::Suspend | I::Signal(_)) => return Err(Denied::NotRunning(state)),
        (
            S::Destroyed,
            I::Resume(_)
            | I::Destroy { .. }
            | I::Prepared
            | I::PrepareFailed(_)
            | I::WorkloadStarted
            | I::WorkloadStartFailed(_)
            | I::WorkloadExited(_)
            | I::Frozen
            | I::FreezeFailed(_)
            | I::Thawed
            | I::ThawFailed(_)
            | I::WorkloadDestroyed
            | I::WorkloadDestroyFailed(_)
            | I::TimerFired(_)
            | I::ScheduledStart,
        ) => {}
    }
    Ok(t)
}

/// The event of a start: a user's, or (source `flyd`) a scheduled run's.
fn start_event(status: MachineState, source: &Source) -> EventRecord {
    EventRecord::new("start", status, *source)
}

/// The stop signal and its SIGKILL timer.
fn push_stop(
    t: &mut Transition,
    policy: &Policy,
    signal: Option<Signal>,
    timeout: Option<Duration>,
) {
    t.effects
        .push(Effect::Signal(signal.unwrap_or(policy.stop_signal)));
    t.effects.push(Effect::ArmTimer(
        Timer::StopTimeout,
        timeout.unwrap_or(policy.stop_timeout),
    ));
}

/// A frozen workload is killed: SIGKILL is queued, then the thaw delivers it.
fn push_kill_frozen(t: &mut Transition, policy: &Policy) {
    t.effects.push(Effect::Signal(Signal::Kill));
    t.effects.push(Effect::Thaw);
    t.effects
        .push(Effect::ArmTimer(Timer::StopTimeout, policy.stop_timeout));
}

/// A machine with nothing running took a new config: run it, or rest in
/// `stopped` with the next start prepared.
fn goto_updated(t: &mut Transition, launch: bool) {
    t.machine.launch = false;
    if launch {
        t.machine.state = MachineState::Starting;
        t.machine.step = Step::Preparing;
        t.effects.push(Effect::PrepareImage);
    } else {
        t.machine.state = MachineState::Stopped;
        t.machine.step = Step::Idle;
        t.effects.push(Effect::Prewarm);
    }
    let status = t.machine.state;
    t.events
        .push(EventRecord::new("update", status, Source::User));
}

/// The process ended after a stop, restart or update asked it to.
fn after_stop(t: &mut Transition, policy: &Policy, info: ExitInfo) {
    match t.machine.state {
        MachineState::Restarting => {
            restart_exit(t, info, true);
        }
        MachineState::Replacing => {
            let launch = t.machine.launch;
            restart_exit(t, info, launch);
            if !launch {
                t.effects.push(Effect::Prewarm);
            }
        }
        _ => on_exit(t, policy, info, true),
    }
}

/// Records a requested exit and starts again (`start`) or rests in `stopped`.
fn restart_exit(t: &mut Transition, info: ExitInfo, start: bool) {
    t.effects.push(Effect::CancelTimer(Timer::StopTimeout));
    t.effects.push(Effect::CleanupWorkload);
    t.machine.launch = false;
    let next = if start {
        MachineState::Starting
    } else {
        MachineState::Stopped
    };
    let mut event = EventRecord::new("exit", next, Source::Flyd);
    event.exit = Some(ExitRecord {
        info,
        requested_stop: true,
        restarting: start,
        restart_count: t.machine.restart_count,
    });
    t.events.push(event);
    t.machine.state = next;
    if start {
        t.machine.step = Step::Preparing;
        t.effects.push(Effect::PrepareImage);
    } else {
        t.machine.step = Step::Idle;
    }
}

/// Prepared and asked to run: start the workload.
fn goto_launch(t: &mut Transition) {
    t.machine.state = MachineState::Starting;
    t.machine.step = Step::Launching;
    t.machine.launch = false;
    t.effects.push(Effect::StartWorkload);
}

fn goto_stopping(
    t: &mut Transition,
    policy: &Policy,
    signal: Option<Signal>,
    timeout: Option<Duration>,
) {
    t.machine.state = MachineState::Stopping;
    t.machine.step = Step::Idle;
    push_stop(t, policy, signal, timeout);
    t.events.push(EventRecord::new(
        "stop",
        MachineState::Stopping,
        Source::User,
    ));
}

fn goto_destroy(t: &mut Transition, source: Source) {
    t.machine.state = MachineState::Destroying;
    t.machine.step = Step::Idle;
    t.effects.push(Effect::DestroyWorkload);
    t.events.push(EventRecord::new(
        "destroy",
        MachineState::Destroying,
        source,
    ));
}

fn fail(t: &mut Transition, kind: &'static str, error: String) {
    t.machine.state = MachineState::Failed;
    t.machine.step = Step::Idle;
    t.machine.launch = false;
    t.effects.push(Effect::CleanupWorkload);
    t.events
        .push(EventRecord::new(kind, MachineState::Failed, Source::Flyd).with_message(error));
}

/// What is recorded when a workload vanished while `hangard` was down.
fn lost_workload() -> ExitInfo {
    ExitInfo {
        exit_code: -1,
        signal: None,
        oom_killed: false,
        exited_at_ms: 0,
        error: Some("the machine's process ended while hangard was not running".into()),
    }
}

/// The main process ended: record it, then restart, stop or destroy.
fn on_exit(t: &mut Transition, policy: &Policy, info: ExitInfo, requested_stop: bool) {
    t.effects.push(Effect::CancelTimer(Timer::StopTimeout));
    t.effects.push(Effect::CleanupWorkload);
    let count = t.machine.restart_count;
    let restart = !requested_stop
        && match policy.restart {
            RestartPolicy::No => false,
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure | RestartPolicy::SpotPrice => {
                !info.success() && count < policy.max_retries
            }
        };
    let gave_up = !requested_stop
        && !restart
        && matches!(
            policy.restart,
            RestartPolicy::OnFailure | RestartPolicy::SpotPrice
        )
        && !info.success();

    let mut event = EventRecord::new("exit", MachineState::Stopped, Source::Flyd);
    if restart {
        let n = count + 1;
        t.machine.restart_count = n;
        t.machine.state = MachineState::Starting;
        t.machine.step = Step::Backoff;
        t.effects
            .push(Effect::ArmTimer(Timer::RestartBackoff, restart_backoff(n)));
        event.status = MachineState::Starting;
    } else {
        t.machine.state = MachineState::Stopped;
        t.machine.step = Step::Idle;
        if gave_up {
            event.message = Some(format!(
                "machine has reached its max restart count ({})",
                policy.max_retries
            ));
        }
    }
    event.exit = Some(ExitRecord {
        info,
        requested_stop,
        restarting: restart,
        restart_count: t.machine.restart_count,
    });
    t.events.push(event);
    if !restart {
        if policy.auto_destroy {
            goto_destroy(t, Source::Flyd);
        } else {
            t.effects.push(Effect::Prewarm);
        }
    }
}

#[cfg(test)]
mod tests;
