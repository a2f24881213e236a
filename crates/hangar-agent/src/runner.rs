//! One task per machine: the only code that changes a machine's state.
//!
//! ```text
//!   API handlers ──Msg::Request{input} + oneshot reply─────────►┐
//!   prepare task ──Msg::Prepared{gen}──────────────────────────►│ Runner
//!   exit watcher ──Msg::Exited{gen}────────────────────────────►│  apply() → commit → reply → effects
//!   timers, the schedule (in the runner's select loop) ────────►┘
//!                                   │
//!                                   ├─ checks::follow ──────────► health checks
//!                                   └─ watch::Sender<Status> ──► wait endpoint, list
//! ```
//!
//! For each input the runner calls [`hangar_core::machine::apply`], commits
//! the new state and its events to SQLite, publishes the new status, answers
//! the request (if any), and only then carries out the effects, in order.
//! Effects that finish quickly (start, signal, cleanup, destroy) run inline and
//! feed their outcome back as the next input; slow ones (image pulls) and
//! waits (process exits) run in tasks that post a message back, tagged with a
//! generation so that an answer to a cancelled effect is dropped. While the
//! image of a first start is resolved, a task wires the machine's network
//! ahead; the effects that touch the workload wait for it first.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use hangar_core::machine::{self, Effect, EventRecord, Input, Observed, Source, Timer};
use hangar_core::schedule::Schedule;
use hangar_core::{ExitInfo, MachineState};
use hangar_runtime::WorkloadSpec;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::images::ResolvedImage;
use crate::store::{MachineRecord, NewEvent, NewVersion};
use crate::{AgentError, Shared, spec};

/// A reply to a request: the state before it.
pub(crate) type Reply = oneshot::Sender<Result<MachineState, AgentError>>;

/// Messages to a runner. Small (each variant's payload boxed): every
/// machine's channel allocates room for 32 of them when it is made.
pub(crate) enum Msg {
    /// A request: an input for the state machine, answered with the state
    /// before it or why it was refused. An update brings its new config
    /// version, committed with the transition it causes.
    Request(Box<Request>),
    /// Metadata changes (`None` removes a key); no new version.
    Metadata(Box<Metadata>),
    Prepared {
        generation: u64,
        result: Box<Result<ResolvedImage, hangar_image::ImageError>>,
    },
    Exited {
        generation: u64,
        info: Box<ExitInfo>,
    },
    Shutdown,
}

const _: () = assert!(std::mem::size_of::<Msg>() <= 24);

/// See [`Msg::Metadata`].
pub(crate) struct Metadata {
    pub changes: BTreeMap<String, Option<String>>,
    pub reply: Reply,
}

/// See [`Msg::Request`].
pub(crate) struct Request {
    pub input: Input,
    pub version: Option<NewVersion>,
    pub reply: Reply,
}

/// What the runner publishes after every change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Current state.
    pub state: MachineState,
    /// Current version.
    pub instance_id: String,
    /// Newest event id.
    pub last_event: Option<String>,
    /// How often the machine entered each state (indexed by
    /// [`MachineState::index`]) while this runner ran: a waiter that
    /// subscribed late still learns that a brief state was passed through.
    pub entered: [u64; MachineState::ALL.len()],
}

/// How others reach a runner.
#[derive(Clone)]
pub(crate) struct Handle {
    pub tx: mpsc::Sender<Msg>,
    pub status: watch::Receiver<Status>,
}

pub(crate) struct Runner {
    rec: MachineRecord,
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Msg>,
    tx: mpsc::Sender<Msg>,
    status: watch::Sender<Status>,
    image: Option<ResolvedImage>,
    prepare: Option<JoinHandle<()>>,
    /// The network wiring done while the image is resolved; every effect
    /// that touches the workload waits for it first.
    wiring: Option<JoinHandle<()>>,
    prepare_gen: u64,
    exit_gen: u64,
    timers: HashMap<Timer, Instant>,
    /// When the machine entered its state (for the start and stop
    /// durations' metrics).
    entered: Instant,
    /// The version an `Update` message brings, committed with its transition.
    pending_version: Option<NewVersion>,
    /// When the machine's schedule fires next, and for which schedule.
    schedule_at: Option<Instant>,
    schedule_armed_for: Option<Schedule>,
}

impl Runner {
    /// Starts the runner task for `rec`; `last_event` seeds its status.
    pub(crate) fn spawn(
        rec: MachineRecord,
        shared: Arc<Shared>,
        last_event: Option<String>,
    ) -> Handle {
        let (tx, rx) = mpsc::channel(64);
        let (status, status_rx) = watch::channel(Status {
            state: rec.core.state,
            instance_id: rec.instance_id.clone(),
            last_event,
            entered: [0; MachineState::ALL.len()],
        });
        let runner = Runner {
            rec,
            shared,
            rx,
            tx: tx.clone(),
            status,
            image: None,
            prepare: None,
            wiring: None,
            prepare_gen: 0,
            exit_gen: 0,
            timers: HashMap::new(),
            entered: Instant::now(),
            pending_version: None,
            schedule_at: None,
            schedule_armed_for: None,
        };
        match runner.shared.machines_runtime.clone() {
            Some(rt) => rt.spawn(runner.run()),
            None => tokio::spawn(runner.run()),
        };
        Handle {
            tx,
            status: status_rx,
        }
    }

    /// The machine's task. It lives as long as the machine, idle most of
    /// the time, so what it holds is held once per machine: the handling
    /// of an input (and the effects it runs) is boxed for its duration
    /// rather than sized into the task (5.5 KB a machine before).
    async fn run(mut self) {
        let id = self.rec.id.clone();
        let observed = match self.shared.runtime.observe(&id).await {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(machine = %id, error = %e, "cannot observe the machine's workload");
                Observed::Absent
            }
        };
        // An exit already recorded is the end of a run before the current
        // one (hangard died after recording it, before cleaning up after
        // it): not news about the workload the state now expects.
        let observed = match observed {
            Observed::Exited(info) if self.exit_recorded(&info) => {
                tracing::info!(machine = %id, state = %self.rec.core.state, "the workload's exit was already recorded");
                if let Err(e) = self.shared.runtime.cleanup(&id).await {
                    tracing::warn!(machine = %id, error = %e, "cleanup failed");
                }
                Observed::Absent
            }
            o => o,
        };
        if observed != Observed::Absent {
            tracing::info!(machine = %id, state = %self.rec.core.state, ?observed, "adopting workload");
        }
        if observed == Observed::Running {
            // Wired as its addresses say now (a link lost while hangard was
            // away, or addresses that moved with an upgrade).
            let net = self
                .shared
                .store
                .address_of(id.as_str(), &self.shared.net)
                .ok()
                .flatten();
            if let Some(a) = net {
                let att = a.attachment(self.shared.dns);
                if let Err(e) = self.shared.runtime.connect_network(&id, &att).await {
                    tracing::warn!(machine = %id, error = %e, "cannot wire the machine to its network");
                }
            }
        }
        Box::pin(self.handle(Input::Resume(observed), None)).await;
        crate::checks::follow(&self.shared, &self.rec);

        while self.rec.core.state != MachineState::Destroyed {
            let next = self
                .timers
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(t, at)| (*t, *at));
            let msg = tokio::select! {
                m = self.rx.recv() => m,
                _ = sleep_until(self.schedule_at) => {
                    Box::pin(self.schedule_fired()).await;
                    continue;
                }
                _ = sleep_until(next.map(|(_, at)| at)) => {
                    if let Some((timer, _)) = next {
                        self.timers.remove(&timer);
                        Box::pin(self.handle(Input::TimerFired(timer), None)).await;
                    }
                    continue;
                }
            };
            match msg {
                None | Some(Msg::Shutdown) => break,
                Some(Msg::Request(r)) => {
                    let Request {
                        input,
                        version,
                        reply,
                    } = *r;
                    self.pending_version = version;
                    Box::pin(self.handle(input, Some(reply))).await;
                    self.pending_version = None;
                }
                Some(Msg::Metadata(m)) => {
                    let Metadata { changes, reply } = *m;
                    let r = self.set_metadata(changes);
                    let _ = reply.send(r);
                }
                Some(Msg::Prepared { generation, result }) => {
                    if generation != self.prepare_gen {
                        continue;
                    }
                    self.prepare = None;
                    let input = match *result {
                        Ok(img) => {
                            self.remember_image(img);
                            Input::Prepared
                        }
                        Err(e) => Input::PrepareFailed(e.to_string()),
                    };
                    Box::pin(self.handle(input, None)).await;
                }
                Some(Msg::Exited { generation, info }) => {
                    if generation == self.exit_gen {
                        Box::pin(self.handle(Input::WorkloadExited(*info), None)).await;
                    }
                }
            }
        }
        if let Some(p) = self.prepare.take() {
            p.abort();
        }
        if self.rec.core.state == MachineState::Destroyed {
            self.shared.forget_runner(&id);
        }
    }

    /// Whether `info` is the exit the machine's newest exit event records.
    fn exit_recorded(&self, info: &ExitInfo) -> bool {
        let recorded = match self.shared.store.events(&self.rec.id, 20) {
            Ok(events) => events.into_iter().find(|e| e.kind == "exit"),
            Err(_) => None,
        };
        let at = recorded.as_ref().and_then(|e| {
            e.request.as_ref()?["exit_event"]["exited_at"]
                .as_str()
                .map(str::to_owned)
        });
        at.is_some_and(|at| at == exited_at(info))
    }

    /// Applies metadata changes to the current config (no new version, no
    /// restart: they reach the process at its next start, as on Fly).
    fn set_metadata(
        &mut self,
        changes: BTreeMap<String, Option<String>>,
    ) -> Result<MachineState, AgentError> {
        let mut metadata = self.rec.spec.metadata.clone();
        for (k, v) in changes {
            match v.filter(|v| !v.is_empty()) {
                Some(v) => {
                    metadata.insert(k, v);
                }
                None => {
                    metadata.remove(&k);
                }
            }
        }
        let mut config = self.rec.config.clone();
        if let Some(c) = config.as_object_mut() {
            if metadata.is_empty() {
                c.remove("metadata");
            } else {
                c.insert(
                    "metadata".into(),
                    serde_json::to_value(&metadata).unwrap_or_default(),
                );
            }
        }
        self.shared
            .store
            .set_config(&self.rec.id, &self.rec.instance_id, &config)?;
        self.rec.config = config;
        self.rec.spec.metadata = metadata;
        Ok(self.rec.core.state)
    }

    fn remember_image(&mut self, img: ResolvedImage) {
        if self.rec.image_ref.as_ref() != Some(&img.image_ref) {
            if let Err(e) = self
                .shared
                .store
                .set_image_ref(&self.rec.id, &img.image_ref)
            {
                tracing::error!(machine = %self.rec.id, error = %e, "cannot record image_ref");
            }
            self.rec.image_ref = Some(img.image_ref.clone());
        }
        self.image = Some(img);
    }

    /// The machine's schedule, if it runs on one (standbys never do).
    fn schedule(&self) -> Option<Schedule> {
        let s = &self.rec.spec;
        if s.is_standby() {
            return None;
        }
        s.schedule
    }

    fn set_schedule_next(&mut self, next_ms: Option<i64>) {
        if let Err(e) = self.shared.store.set_schedule_next(&self.rec.id, next_ms) {
            tracing::error!(machine = %self.rec.id, error = %e, "cannot record the next scheduled run");
        }
        self.rec.schedule_next_ms = next_ms;
    }

    fn next_run_ms(&self, schedule: Schedule) -> i64 {
        let jitter = rand::random_range(-1.0..=1.0);
        schedule.next_run_ms(self.shared.clock.now_ms(), jitter)
    }

    /// Keeps the schedule's timer in line with the config and the state:
    /// the cycle begins with the machine's first run, a changed schedule
    /// counts from now, a removed one stops. The next run's time is stored,
    /// so it survives restarts of `hangard`.
    fn sync_schedule(&mut self) {
        let Some(schedule) = self.schedule() else {
            if self.rec.schedule_next_ms.is_some() {
                self.set_schedule_next(None);
            }
            self.schedule_at = None;
            self.schedule_armed_for = None;
            return;
        };
        let next = match self.rec.schedule_next_ms {
            None if matches!(
                self.rec.core.state,
                MachineState::Starting | MachineState::Started
            ) =>
            {
                let next = self.next_run_ms(schedule);
                self.set_schedule_next(Some(next));
                next
            }
            None => {
                self.schedule_at = None;
                return;
            }
            Some(_) if self.schedule_armed_for.is_some_and(|s| s != schedule) => {
                let next = self.next_run_ms(schedule);
                self.set_schedule_next(Some(next));
                next
            }
            Some(next) => next,
        };
        self.schedule_armed_for = Some(schedule);
        self.schedule_at = Some(Instant::now() + self.shared.clock.until(next));
    }

    /// A scheduled run is due: the next one is recorded first (so a crash
    /// or restart of `hangard` does not run it twice), counted from now
    /// (runs missed while `hangard` was down collapse into this one).
    async fn schedule_fired(&mut self) {
        let Some(schedule) = self.schedule() else {
            self.schedule_at = None;
            return;
        };
        let next = self.next_run_ms(schedule);
        self.set_schedule_next(Some(next));
        tracing::info!(machine = %self.rec.id, schedule = schedule.as_str(), "scheduled run");
        self.handle(Input::ScheduledStart, None).await;
    }

    /// Applies `first` and every input its effects produce, then brings the
    /// schedule in line.
    async fn handle(&mut self, first: Input, reply: Option<Reply>) {
        self.apply_all(first, reply).await;
        self.sync_schedule();
        if self.rec.core.state == MachineState::Destroyed {
            // Its volume is free for another machine (the data stays), its
            // address for another machine of the network.
            if let Err(e) = self.shared.store.release_volumes(self.rec.id.as_str()) {
                tracing::error!(machine = %self.rec.id, error = %e, "cannot release volumes");
            }
            if let Err(e) = self.shared.store.release_address(self.rec.id.as_str()) {
                tracing::error!(machine = %self.rec.id, error = %e, "cannot release the address");
            }
        }
    }

    async fn apply_all(&mut self, first: Input, mut reply: Option<Reply>) {
        let mut queue = VecDeque::from([first]);
        while let Some(input) = queue.pop_front() {
            let policy = self
                .rec
                .spec
                .policy(self.schedule().is_some() && self.rec.schedule_next_ms.is_some());
            let before = self.rec.core.state;
            let t = match machine::apply(&self.rec.core, &policy, input) {
                Ok(t) => t,
                Err(denied) => {
                    if let Some(r) = reply.take() {
                        let _ = r.send(Err(crate::denied(denied)));
                    }
                    continue;
                }
            };
            // A new version is committed with the first transition it causes.
            let version = self.pending_version.take();
            if !t.is_noop(&self.rec.core) || version.is_some() {
                let events: Vec<NewEvent> = t.events.iter().map(new_event).collect();
                match self.shared.store.commit_transition(
                    &self.rec.id,
                    &t.machine,
                    &events,
                    version.as_ref(),
                ) {
                    Ok(last) => {
                        self.rec.core = t.machine.clone();
                        if let Some(v) = version {
                            // The new config may name another image: resolve
                            // it afresh (a tag is looked up again, as Fly does).
                            self.rec.instance_id = v.instance_id;
                            self.rec.config = v.config.json;
                            self.rec.spec = v.config.spec;
                            self.rec.image_ref = Some(v.image_ref);
                            self.image = None;
                        }
                        let state = self.rec.core.state;
                        let instance_id = self.rec.instance_id.clone();
                        crate::checks::follow(&self.shared, &self.rec);
                        self.status.send_modify(|s| {
                            s.instance_id = instance_id;
                            if s.state != state {
                                s.entered[state.index()] += 1;
                            }
                            s.state = state;
                            if !last.is_empty() {
                                s.last_event = Some(last);
                            }
                        });
                        if before != state {
                            tracing::info!(machine = %self.rec.id, from = %before, to = %state, "state");
                            let took = self.entered.elapsed().as_secs_f64();
                            match (before, state) {
                                (MachineState::Starting, MachineState::Started) => {
                                    hangar_metrics::get().machine_start_seconds.observe(took);
                                    hangar_metrics::note(hangar_metrics::Activity {
                                        at: hangar_metrics::unix_now(),
                                        app: self.rec.app.clone(),
                                        machine: self.rec.id.to_string(),
                                        action: "start",
                                        seconds: Some(took),
                                        error: None,
                                    });
                                }
                                (MachineState::Stopping, MachineState::Stopped) => {
                                    hangar_metrics::get().machine_stop_seconds.observe(took)
                                }
                                _ => {}
                            }
                            self.entered = Instant::now();
                        }
                    }
                    Err(e) => {
                        // Nothing happened: no effects without a commit.
                        tracing::error!(machine = %self.rec.id, error = %e, "cannot commit transition");
                        if let Some(r) = reply.take() {
                            let _ = r.send(Err(e));
                        }
                        continue;
                    }
                }
            }
            if let Some(r) = reply.take() {
                let _ = r.send(Ok(before));
            }
            for effect in t.effects {
                if let Some(next) = self.execute(effect).await {
                    queue.push_back(next);
                }
            }
        }
    }

    async fn execute(&mut self, effect: Effect) -> Option<Input> {
        let id = self.rec.id.clone();
        let rt = self.shared.runtime.clone();
        if let Some(wiring) = self.wiring.take() {
            let touches = matches!(
                effect,
                Effect::StartWorkload
                    | Effect::Prewarm
                    | Effect::CleanupWorkload
                    | Effect::DestroyWorkload
            );
            if touches {
                let _ = wiring.await;
            } else {
                self.wiring = Some(wiring);
            }
        }
        match effect {
            Effect::PrepareImage => {
                self.prepare_gen += 1;
                let reference = self.image_reference();
                // The image this machine ran before is still at hand.
                if let Some(img) = &self.image {
                    if pinned(&img.image_ref) == reference {
                        return Some(Input::Prepared);
                    }
                }
                self.wire_ahead();
                let images = self.shared.images.clone();
                let tx = self.tx.clone();
                let generation = self.prepare_gen;
                self.prepare = Some(tokio::spawn(async move {
                    let result = images.resolve(&reference).await;
                    let _ = tx
                        .send(Msg::Prepared {
                            generation,
                            result: Box::new(result),
                        })
                        .await;
                }));
                None
            }
            Effect::CancelPrepare => {
                self.prepare_gen += 1;
                if let Some(p) = self.prepare.take() {
                    p.abort();
                }
                None
            }
            Effect::StartWorkload => {
                let spec = match self.workload_spec() {
                    Ok(s) => s,
                    Err(e) => {
                        return Some(Input::WorkloadStartFailed(
                            hangar_core::errors::error_chain(&e),
                        ));
                    }
                };
                match rt.start(&spec).await {
                    Ok(()) => {
                        self.watch_exit();
                        Some(Input::WorkloadStarted)
                    }
                    Err(e) => Some(Input::WorkloadStartFailed(e.to_string())),
                }
            }
            Effect::WatchExit => {
                self.watch_exit();
                None
            }
            Effect::Signal(sig) => {
                if let Err(e) = rt.signal(&id, sig).await {
                    tracing::debug!(machine = %id, error = %e, "signal not delivered");
                }
                None
            }
            Effect::CleanupWorkload => {
                self.exit_gen += 1;
                if let Err(e) = rt.cleanup(&id).await {
                    tracing::error!(machine = %id, error = %e, "cleanup failed");
                }
                None
            }
            Effect::Freeze => match rt.freeze(&id).await {
                Ok(()) => Some(Input::Frozen),
                Err(e) => Some(Input::FreezeFailed(e.to_string())),
            },
            Effect::Thaw => match rt.thaw(&id).await {
                Ok(()) => Some(Input::Thawed),
                Err(e) => Some(Input::ThawFailed(e.to_string())),
            },
            Effect::Prewarm => {
                // Only with the image at hand: never pull for a stopped machine.
                if self.image.is_some() {
                    match self.workload_spec() {
                        Ok(spec) => {
                            if let Err(e) = rt.prewarm(&spec).await {
                                tracing::debug!(machine = %id, error = %e, "prewarm failed");
                            }
                        }
                        Err(e) => tracing::debug!(machine = %id, error = %e, "nothing to prewarm"),
                    }
                }
                None
            }
            Effect::DestroyWorkload => {
                self.exit_gen += 1;
                match rt.destroy(&id).await {
                    Ok(()) => Some(Input::WorkloadDestroyed),
                    Err(e) => Some(Input::WorkloadDestroyFailed(e.to_string())),
                }
            }
            Effect::ArmTimer(timer, after) => {
                self.timers.insert(timer, Instant::now() + after);
                None
            }
            Effect::CancelTimer(timer) => {
                self.timers.remove(&timer);
                None
            }
        }
    }

    /// Wires the machine to its private network while its image is
    /// resolved (the two take about as long), so that its start finds
    /// that done.
    fn wire_ahead(&mut self) {
        if self.wiring.is_some() {
            return;
        }
        let net = match self
            .shared
            .store
            .address_of(self.rec.id.as_str(), &self.shared.net)
        {
            Ok(Some(a)) => a.attachment(self.shared.dns),
            _ => return,
        };
        let rt = self.shared.runtime.clone();
        let id = self.rec.id.clone();
        let isolation = self.rec.spec.isolation;
        self.wiring = Some(tokio::spawn(async move {
            if let Err(e) = rt.prepare_network(&id, isolation, &net).await {
                // The start wires it again and reports what fails.
                tracing::debug!(machine = %id, error = %e, "network not wired ahead");
            }
        }));
    }

    /// The reference to prepare: the digest pulled before, so that a
    /// machine keeps running the image it was created with (and restarts
    /// need no registry), else the configured name.
    fn image_reference(&self) -> String {
        match &self.rec.image_ref {
            Some(r) if !r.digest.is_empty() => pinned(r),
            _ => self.rec.spec.image.clone(),
        }
    }

    fn watch_exit(&mut self) {
        self.exit_gen += 1;
        let generation = self.exit_gen;
        let rt = self.shared.runtime.clone();
        let tx = self.tx.clone();
        let id = self.rec.id.clone();
        tokio::spawn(async move {
            let info = rt.wait(&id).await.unwrap_or_else(|e| ExitInfo {
                exit_code: -1,
                exited_at_ms: crate::store::now_ms(),
                error: Some(e.to_string()),
                ..ExitInfo::default()
            });
            let _ = tx
                .send(Msg::Exited {
                    generation,
                    info: Box::new(info),
                })
                .await;
        });
    }

    fn workload_spec(&self) -> Result<WorkloadSpec, AgentError> {
        let img = self
            .image
            .as_ref()
            .ok_or_else(|| AgentError::Internal("the image is not prepared".into()))?;
        let c = &self.rec.spec;
        let resources = spec::resources(c, self.shared.pids_limit);
        let reserved = spec::Reserved {
            app: &self.rec.app,
            machine_id: self.rec.id.as_str(),
            region: &self.rec.region,
            image: &c.image,
            version: &self.rec.instance_id,
            memory_mb: resources.memory_mb,
            metadata: Some(&c.metadata),
            private_ip: &self.rec.private_ip,
        };
        // The app's secrets as they are now: a change reaches a machine at
        // its next start.
        let secrets =
            crate::secrets::values(&self.shared.store, &self.shared.secrets, &self.rec.app)?;
        let process =
            hangar_core::process::resolve(&img.process, &c.init.overrides, &c.env, &reserved.env())
                .map_err(|e| AgentError::InvalidArgument(e.to_string()))?;
        Ok(WorkloadSpec {
            id: self.rec.id.clone(),
            hostname: self.rec.id.to_string(),
            process,
            layers: img.layers.clone(),
            resources,
            files: spec::guest_files(c, &secrets)?,
            tty: c.init.tty,
            secret_env: hangar_runtime::SecretEnv(secrets.into_iter().collect()),
            volumes: crate::volumes::attachments(&self.shared.store, &self.shared.secrets, c)?,
            network: self
                .shared
                .store
                .address_of(self.rec.id.as_str(), &self.shared.net)?
                .map(|a| a.attachment(self.shared.dns)),
            isolation: c.isolation,
        })
    }
}

fn pinned(r: &hangar_core::spec::ImageRef) -> String {
    format!("{}/{}@{}", r.registry, r.repository, r.digest)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// An exit's time as events record it (RFC 3339, milliseconds).
fn exited_at(info: &ExitInfo) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(info.exited_at_ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// The stored form of an event, in Fly's shape.
fn new_event(e: &EventRecord) -> NewEvent {
    let mut request = serde_json::Map::new();
    if let Some(x) = &e.exit {
        let signal = x.info.signal.unwrap_or(-1);
        request.insert(
            "exit_event".into(),
            serde_json::json!({
                "requested_stop": x.requested_stop,
                "restarting": x.restarting,
                "guest_exit_code": x.info.exit_code,
                "guest_signal": signal,
                "guest_error": x.info.error.clone().unwrap_or_default(),
                "exit_code": x.info.exit_code,
                "signal": signal,
                "error": x.info.error.clone().unwrap_or_default(),
                "oom_killed": x.info.oom_killed,
                "exited_at": exited_at(&x.info),
            }),
        );
        request.insert("restart_count".into(), x.restart_count.into());
        if let Some(m) = &e.message {
            request.insert("message".into(), m.clone().into());
        }
    } else if let Some(m) = &e.message {
        request.insert("error".into(), m.clone().into());
    }
    NewEvent {
        kind: e.kind.into(),
        status: e.status.as_str().into(),
        source: match e.source {
            Source::User => "user".into(),
            Source::Flyd => "flyd".into(),
        },
        request: (!request.is_empty()).then_some(serde_json::Value::Object(request)),
    }
}
