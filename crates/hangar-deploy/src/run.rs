//! Running one release: the task that owns it.

use std::time::{Duration, Instant};

use hangar_agent::logs::LogQuery;
use hangar_agent::store::ReleaseRow;
use hangar_agent::{NewMachine, UpdateMachine};
use hangar_appconfig::machine::{self, keys};
use hangar_appconfig::{AppConfig, Strategy};
use hangar_core::MachineState;
use hangar_core::release::{self, Input, ReleaseStatus};
use hangar_core::spec::Parsed;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::plan::{Action, Options, Outcome, Step};
use crate::{Deployer, now_ms};

/// How often a wait looks at a machine again.
const POLL: Duration = Duration::from_millis(50);
/// At most this many machines change at once.
const MAX_CONCURRENT: usize = 8;
/// How long a machine out of rotation must stay without traffic to count
/// as drained.
const SETTLE: Duration = Duration::from_millis(50);
/// Log lines shown with a machine that failed.
const LOG_LINES: usize = 20;

type StepResult = Result<(), String>;

pub(crate) struct Run {
    d: Deployer,
    rel: ReleaseRow,
    cfg: AppConfig,
    opts: Options,
    steps: Vec<Step>,
    cancel: watch::Receiver<bool>,
    /// The image by digest, once resolved.
    image: String,
}

impl Run {
    pub(crate) fn new(d: Deployer, rel: ReleaseRow, cancel: watch::Receiver<bool>) -> Run {
        let cfg = hangar_appconfig::from_definition(&rel.definition).unwrap_or_default();
        let opts: Options = serde_json::from_value(rel.options.clone()).unwrap_or_default();
        let steps: Vec<Step> = serde_json::from_value(rel.machines.clone()).unwrap_or_default();
        Run {
            d,
            rel,
            cfg,
            opts,
            steps,
            cancel,
            image: String::new(),
        }
    }

    pub(crate) async fn go(mut self) {
        let resumed = self.rel.started_at.is_some() || self.rel.status != ReleaseStatus::Pending;
        if resumed {
            if self.apply(Input::Resume).is_err() {
                return;
            }
            self.event(
                "resume",
                None,
                "hangard restarted: taking the release up where it was",
            );
            self.clear_own_leases();
        }
        match self.rel.status {
            ReleaseStatus::Pending => {
                if !self.wait_turn().await {
                    let _ = self.apply(Input::Cancel { rollback: false });
                    self.rel.error = Some("cancelled while queued".into());
                    self.save();
                    self.event("failed", None, "cancelled while queued");
                    return;
                }
                // The plan is made again now: machines may have changed since
                // it was submitted (a queued release waited for another).
                let machines = self
                    .d
                    .agent()
                    .list_machines(&self.rel.app, false)
                    .unwrap_or_default();
                let replanned =
                    crate::plan::plan(&self.cfg, &self.rel.image_ref, &machines, &self.opts);
                if self.apply(Input::Begin).is_err() {
                    return;
                }
                self.rel.started_at = Some(now_ms());
                match replanned {
                    Ok(steps) => {
                        self.steps = steps;
                        self.save();
                        self.forward().await;
                    }
                    Err(e) => {
                        self.rel.error = Some(e.clone());
                        let _ = self.apply(Input::Failed { rollback: false });
                        self.event("failed", None, &e);
                    }
                }
            }
            ReleaseStatus::Running => self.forward().await,
            ReleaseStatus::RollingBack => self.backward().await,
            _ => {}
        }
    }

    /// Waits until no earlier release of the app is unfinished (a queued
    /// release); false when cancelled meanwhile.
    async fn wait_turn(&mut self) -> bool {
        let mut changed = self.d.subscribe();
        let mut said = false;
        loop {
            if self.cancelled() {
                return false;
            }
            let ahead = self
                .d
                .agent()
                .list_releases(&self.rel.app, 1000)
                .unwrap_or_default()
                .into_iter()
                .filter(|r| r.version < self.rel.version && !r.status.is_finished())
                .map(|r| r.version)
                .min();
            let Some(v) = ahead else {
                return true;
            };
            if !said {
                self.event(
                    "queued",
                    None,
                    &format!("Waiting for release v{v} to finish"),
                );
                said = true;
            }
            let mut cancel = self.cancel.clone();
            tokio::select! {
                _ = changed.changed() => {}
                _ = cancel.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    // ---- status and records ---------------------------------------------------------

    fn apply(&mut self, input: Input) -> Result<(), release::Denied> {
        let next = release::apply(self.rel.status, input)?;
        self.rel.status = next;
        if next.is_finished() {
            self.rel.finished_at = Some(now_ms());
        }
        self.save();
        Ok(())
    }

    fn save(&mut self) {
        self.rel.machines = serde_json::to_value(&self.steps).unwrap_or_default();
        if let Err(e) = self.d.agent().save_release(&self.rel) {
            tracing::error!(release = self.rel.id, error = %e, "saving release");
        }
        self.d.bump();
    }

    fn event(&self, phase: &str, machine: Option<&str>, message: &str) {
        tracing::info!(release = self.rel.id, phase, machine, "{message}");
        Worker::of(self).push(phase, self.rel.status.as_str(), machine, message);
    }

    fn cancelled(&self) -> bool {
        *self.cancel.borrow()
    }

    fn app(&self) -> &str {
        &self.rel.app
    }

    // ---- forward --------------------------------------------------------------------

    async fn forward(&mut self) {
        let started = Instant::now();
        match self.execute().await {
            Ok(()) => {
                let _ = self.apply(Input::Succeeded);
                let summary = self.summary(started);
                self.rel.description = if self.rel.description.is_empty() {
                    summary.clone()
                } else {
                    self.rel.description.clone()
                };
                self.save();
                self.event("finished", None, &summary);
            }
            Err(e) => {
                let cancelled = self.cancelled();
                let msg = if cancelled {
                    format!("cancelled: {e}")
                } else {
                    e
                };
                self.rel.error = Some(msg.clone());
                for s in self
                    .steps
                    .iter_mut()
                    .filter(|s| s.outcome == Outcome::Pending)
                {
                    s.outcome = Outcome::Skipped;
                }
                let changed = self.steps.iter().any(|s| {
                    matches!(s.action, Action::Create | Action::Update)
                        && matches!(
                            s.outcome,
                            Outcome::Done | Outcome::Running | Outcome::Failed
                        )
                });
                let rollback = changed && !self.opts.no_rollback;
                let input = if cancelled {
                    Input::Cancel { rollback }
                } else {
                    Input::Failed { rollback }
                };
                let _ = self.apply(input);
                self.event("failed", None, &msg);
                if self.rel.status == ReleaseStatus::RollingBack {
                    self.backward().await;
                }
            }
        }
    }

    fn summary(&self, started: Instant) -> String {
        let mut per: std::collections::BTreeMap<(String, &str), usize> = Default::default();
        for s in self.steps.iter().filter(|s| s.outcome == Outcome::Done) {
            let verb = match s.action {
                Action::ReleaseCommand => "release command",
                Action::Create => "created",
                Action::Update => "updated",
                Action::Destroy => "destroyed",
            };
            *per.entry((s.process_group.clone(), verb)).or_default() += 1;
        }
        let parts: Vec<String> = per
            .iter()
            .map(|((g, v), n)| {
                if *v == "release command" {
                    "release command ran".to_owned()
                } else {
                    format!("{g} {n} {v}")
                }
            })
            .collect();
        format!(
            "v{} complete in {:.1}s: {}",
            self.rel.version,
            started.elapsed().as_secs_f64(),
            if parts.is_empty() {
                "nothing to change".to_owned()
            } else {
                parts.join(", ")
            }
        )
    }

    async fn execute(&mut self) -> StepResult {
        self.resolve_image().await?;
        let strategy = self.opts.strategy(&self.cfg);
        self.event(
            "deploy",
            None,
            &format!(
                "Deploying {} v{} with {} strategy",
                self.app(),
                self.rel.version,
                strategy.as_str()
            ),
        );
        if let Some(i) = self
            .steps
            .iter()
            .position(|s| s.action == Action::ReleaseCommand && s.outcome != Outcome::Done)
        {
            self.release_command(i).await?;
        }
        let groups: Vec<String> = {
            let mut g: Vec<String> = self
                .steps
                .iter()
                .filter(|s| matches!(s.action, Action::Create | Action::Update))
                .map(|s| s.process_group.clone())
                .collect();
            g.dedup();
            g
        };
        for g in &groups {
            if self.cancelled() {
                return Err("the release was cancelled".into());
            }
            self.group(g, strategy).await?;
        }
        let destroys: Vec<usize> = self.indexes(|s| s.action == Action::Destroy);
        for i in destroys {
            self.destroy_step(i).await?;
        }
        Ok(())
    }

    fn indexes(&self, f: impl Fn(&Step) -> bool) -> Vec<usize> {
        self.steps
            .iter()
            .enumerate()
            .filter(|(_, s)| f(s) && !matches!(s.outcome, Outcome::Done))
            .map(|(i, _)| i)
            .collect()
    }

    async fn resolve_image(&mut self) -> StepResult {
        let agent = self.d.agent().clone();
        if self.rel.image_digest.is_empty() {
            self.event(
                "image",
                None,
                &format!("Resolving image {}", self.rel.image_ref),
            );
            let r = agent
                .resolve_image(&self.rel.image_ref)
                .await
                .map_err(|e| e.to_string())?;
            self.rel.image_digest = r.digest.clone();
            self.save();
            self.image = pinned(&r.registry, &r.repository, &r.digest);
        } else {
            self.image = pin(&agent, &self.rel.image_ref, &self.rel.image_digest)
                .map_err(|e| e.to_string())?;
            agent
                .resolve_image(&self.image)
                .await
                .map_err(|e| e.to_string())?;
        }
        self.event("image", None, &format!("image: {}", self.image));
        Ok(())
    }

    /// One process group's creates and updates, by the strategy.
    async fn group(&mut self, g: &str, strategy: Strategy) -> StepResult {
        let gate = strategy != Strategy::Immediate;
        let wait = self.opts.wait_timeout(&self.cfg);
        if strategy == Strategy::Bluegreen {
            return self.bluegreen(g, wait).await;
        }
        // Machines whose volume changes are replaced the bluegreen way: a
        // new machine with the new volume proves itself, then the old goes.
        if self
            .steps
            .iter()
            .any(|s| s.process_group == g && s.replaces.is_some() && s.outcome != Outcome::Done)
        {
            self.bluegreen(g, wait).await?;
        }
        // New machines: the first, then its twin (or standby).
        for i in self
            .indexes(|s| s.action == Action::Create && s.process_group == g && s.replaces.is_none())
        {
            self.create_step(i, gate, wait).await?;
        }
        let updates = self.indexes(|s| s.action == Action::Update && s.process_group == g);
        if updates.is_empty() {
            return Ok(());
        }
        let warm: Vec<usize> = updates
            .iter()
            .copied()
            .filter(|i| self.steps[*i].was_started)
            .collect();
        let cold: Vec<usize> = updates
            .iter()
            .copied()
            .filter(|i| !self.steps[*i].was_started)
            .collect();
        if strategy == Strategy::Immediate {
            return self.batch(&updates, false, wait).await;
        }
        if strategy == Strategy::Canary && !warm.is_empty() {
            self.canary(g, warm[0], wait).await?;
        }
        // Stopped machines stay stopped with the new config; when the whole
        // group is stopped, one of them proves the release boots.
        let mut cold = cold;
        if warm.is_empty() && !cold.is_empty() {
            let first = cold.remove(0);
            self.update_step(first, true, true, wait).await?;
            self.put_down(first).await?;
        }
        self.batch(&cold, false, wait).await?;
        let Some((&first, rest)) = warm.split_first() else {
            return Ok(());
        };
        self.update_step(first, true, true, wait).await?;
        let k = self.opts.max_unavailable(&self.cfg, warm.len());
        for chunk in rest.chunks(k) {
            if self.cancelled() {
                return Err("the release was cancelled".into());
            }
            self.batch(chunk, true, wait).await?;
        }
        Ok(())
    }

    /// Updates `idx`s concurrently (at most [`MAX_CONCURRENT`] at a time);
    /// `gate`: each must become healthy.
    async fn batch(&mut self, idx: &[usize], gate: bool, wait: Duration) -> StepResult {
        for chunk in idx.chunks(MAX_CONCURRENT) {
            let mut prepared = Vec::new();
            for &i in chunk {
                prepared.push((i, self.begin_update(i)?));
            }
            let futs = prepared.into_iter().map(|(i, p)| {
                let me = Worker::of(self);
                async move { (i, me.finish_update(p, gate, wait).await) }
            });
            let results = futures::future::join_all(futs).await;
            let mut first_err = None;
            for (i, r) in results {
                self.record(i, r.clone());
                if let Err(e) = r {
                    first_err.get_or_insert(e);
                }
            }
            if let Some(e) = first_err {
                return Err(e);
            }
        }
        Ok(())
    }

    async fn update_step(
        &mut self,
        i: usize,
        gate: bool,
        launch: bool,
        wait: Duration,
    ) -> StepResult {
        let mut p = self.begin_update(i)?;
        p.launch = launch;
        let r = Worker::of(self).finish_update(p, gate, wait).await;
        self.record(i, r.clone());
        r.map(|_| ())
    }

    fn record(&mut self, i: usize, r: Result<String, String>) {
        let s = &mut self.steps[i];
        match r {
            Ok(version) => {
                s.to_version = Some(version);
                s.outcome = Outcome::Done;
            }
            Err(e) => {
                s.outcome = Outcome::Failed;
                s.error = Some(e);
            }
        }
        self.save();
    }

    /// Marks an update begun and works out its config (the machine's own,
    /// with fly.toml's part and the image replaced).
    fn begin_update(&mut self, i: usize) -> Result<Prepared, String> {
        let id = self.steps[i].id.clone().unwrap_or_default();
        let m = self
            .d
            .agent()
            .get_machine(self.app(), &id)
            .map_err(|e| format!("machine {id}: {e}"))?;
        let applied = m.config["metadata"][keys::RELEASE_ID] == self.rel.id.as_str();
        let g = self.steps[i].process_group.clone();
        let mut target = self.stamp(machine::merge(
            &m.config,
            &machine::group_config(&self.cfg, &g, &self.image),
        ));
        if let Some(guest) = &self.opts.guest {
            target["guest"] = guest.clone();
        }
        self.steps[i].outcome = Outcome::Running;
        self.save();
        Ok(Prepared {
            id,
            target,
            launch: self.steps[i].was_started,
            applied: applied.then(|| m.instance_id.clone()),
        })
    }

    fn stamp(&self, mut config: Value) -> Value {
        config["metadata"][keys::RELEASE_ID] = json!(self.rel.id);
        config["metadata"][keys::RELEASE_VERSION] = json!(self.rel.version.to_string());
        config
    }

    /// Stops a machine a deploy started only to prove the release boots.
    async fn put_down(&mut self, i: usize) -> StepResult {
        let id = self.steps[i].id.clone().unwrap_or_default();
        self.event(
            "update",
            Some(&id),
            "booted to prove the release starts; stopping it again",
        );
        let agent = self.d.agent();
        agent
            .stop_machine(self.app(), &id, None, None, None)
            .await
            .map_err(|e| format!("stopping {id}: {e}"))?;
        agent
            .wait_machine(
                self.app(),
                &id,
                &[hangar_agent::WaitFor::State(MachineState::Stopped)],
                Duration::from_secs(60),
            )
            .await
            .map_err(|e| format!("stopping {id}: {e}"))?;
        self.steps[i].was_started = false;
        self.save();
        Ok(())
    }

    async fn create_step(&mut self, i: usize, gate: bool, wait: Duration) -> StepResult {
        let g = self.steps[i].process_group.clone();
        let standby = self.steps[i].standby;
        let app = self.app().to_owned();
        // A create begun before a crash: find what it made.
        if self.steps[i].outcome == Outcome::Running {
            if let Some(id) = self.steps[i].id.clone() {
                let r = Worker::of(self)
                    .healthy_or_stopped(&id, standby, gate, wait)
                    .await;
                self.record(i, r.clone());
                return r.map(|_| ());
            }
        }
        let target = machine::group_config(&self.cfg, &g, &self.image);
        // Scaling up clones a machine of the group (its size and own
        // settings), with a volume of its own.
        let like = self
            .opts
            .scale
            .as_ref()
            .and_then(|_| self.d.agent().list_machines(&app, false).ok())
            .and_then(|ms| {
                ms.into_iter().find(|m| {
                    crate::plan::is_managed(m)
                        && crate::plan::group_of(m) == g
                        && !m.spec.is_standby()
                })
            });
        let mut config = self.stamp(match like {
            Some(m) => {
                let mut c = machine::merge(&m.config, &target);
                if let Some(mounts) = c["mounts"].as_array_mut() {
                    for mount in mounts {
                        if let Some(o) = mount.as_object_mut() {
                            o.remove("volume");
                        }
                    }
                }
                c
            }
            None => target,
        });
        if standby {
            let first = self
                .steps
                .iter()
                .find(|s| s.action == Action::Create && s.process_group == g && !s.standby)
                .and_then(|s| s.id.clone())
                .or_else(|| {
                    self.steps
                        .iter()
                        .find(|s| s.process_group == g && s.id.is_some())
                        .and_then(|s| s.id.clone())
                });
            if let Some(first) = first {
                config["standbys"] = json!([first]);
                config["env"]["FLY_STANDBY_FOR"] = json!(first);
            }
        }
        self.attach_volumes(&mut config).await?;
        let parsed = Parsed::new(config).map_err(|e| format!("group {g}: {e}"))?;
        let mut req = NewMachine::new(parsed);
        req.region = self.cfg.primary_region.clone();
        self.steps[i].outcome = Outcome::Running;
        self.save();
        let rec = self
            .d
            .agent()
            .create_machine(&app, req)
            .await
            .map_err(|e| format!("creating a {g} machine: {e}"))?;
        let id = rec.id.to_string();
        self.steps[i].id = Some(id.clone());
        self.steps[i].to_version = Some(rec.instance_id.clone());
        self.steps[i].was_started = !standby;
        self.save();
        self.event(
            "create",
            Some(&id),
            &format!(
                "Created {g} machine {id}{}",
                if standby { " (standby)" } else { "" }
            ),
        );
        let r = Worker::of(self)
            .healthy_or_stopped(&id, standby, gate, wait)
            .await;
        self.record(i, r.clone());
        r.map(|_| ())
    }

    /// Bluegreen for group `g`: a green twin of every machine, born out of
    /// rotation (cordoned), started where its blue was, and healthy; then
    /// the greens go into rotation, the blues out, and once the proxy has
    /// no traffic left on a blue, it is stopped and destroyed. A failure
    /// before the greens are in rotation destroys the greens and leaves
    /// the blues as they were.
    async fn bluegreen(&mut self, g: &str, wait: Duration) -> StepResult {
        let greens = self.indexes(|s| {
            s.action == Action::Create && s.process_group == g && s.replaces.is_some()
        });
        let app = self.app().to_owned();
        let agent = self.d.agent().clone();
        let tag = (now_ms() / 1000).to_string();
        // Standbys last: their greens watch the greens of what they watched.
        let mut order = greens.clone();
        order.sort_by_key(|i| {
            let blue = self.steps[*i].replaces.clone().unwrap_or_default();
            agent
                .get_machine(&app, &blue)
                .is_ok_and(|m| m.spec.is_standby())
        });
        for i in order {
            if self.steps[i].id.is_some() {
                continue; // made before a crash
            }
            let blue_id = self.steps[i].replaces.clone().unwrap_or_default();
            let blue = agent
                .get_machine(&app, &blue_id)
                .map_err(|e| format!("{blue_id}: {e}"))?;
            let mut config = self.stamp(machine::merge(
                &blue.config,
                &machine::group_config(&self.cfg, g, &self.image),
            ));
            config["metadata"][keys::BLUEGREEN_TAG] = json!(tag);
            self.attach_volumes(&mut config).await?;
            if let Some(list) = config["standbys"].as_array_mut() {
                for w in list.iter_mut() {
                    let green = self
                        .steps
                        .iter()
                        .find(|s| s.replaces.as_deref() == w.as_str())
                        .and_then(|s| s.id.clone());
                    if let Some(green) = green {
                        *w = json!(green);
                    }
                }
                if let Some(first) = list.first().cloned() {
                    config["env"]["FLY_STANDBY_FOR"] = first;
                }
            }
            let parsed = Parsed::new(config).map_err(|e| format!("green of {blue_id}: {e}"))?;
            let mut req = NewMachine::new(parsed);
            req.region = Some(blue.region.clone());
            req.skip_launch = true;
            self.steps[i].outcome = Outcome::Running;
            self.save();
            let rec = agent
                .create_machine(&app, req)
                .await
                .map_err(|e| format!("creating the green of {blue_id}: {e}"))?;
            let id = rec.id.to_string();
            self.steps[i].id = Some(id.clone());
            self.steps[i].to_version = Some(rec.instance_id.clone());
            self.save();
            agent
                .wait_machine(&app, &id, &[hangar_agent::WaitFor::Settled], wait)
                .await
                .map_err(|e| format!("green {id}: {e}"))?;
            agent
                .cordon_machine(&app, &id, true, None)
                .map_err(|e| format!("cordoning green {id}: {e}"))?;
            self.event(
                "bluegreen",
                Some(&id),
                &format!("Created green {id} for {blue_id}, out of rotation"),
            );
        }
        // Start the greens whose blues ran, and wait until all are healthy.
        let mut waits = Vec::new();
        for &i in &greens {
            let s = &self.steps[i];
            if s.committed || !s.was_started {
                continue;
            }
            let id = s.id.clone().unwrap_or_default();
            let m = agent.get_machine(&app, &id).map_err(|e| e.to_string())?;
            if m.core.state != MachineState::Started && m.core.state != MachineState::Starting {
                agent
                    .start_machine(&app, &id, None)
                    .await
                    .map_err(|e| format!("starting green {id}: {e}"))?;
            }
            let since = now_ms() - 1;
            let w = Worker::of(self);
            waits.push(async move { (i, w.healthy(&id, &m.instance_id, wait, since).await) });
        }
        let results = futures::future::join_all(waits).await;
        let mut first_err = None;
        for (i, r) in results {
            if let Err(e) = r {
                self.steps[i].outcome = Outcome::Failed;
                self.steps[i].error = Some(e.clone());
                first_err.get_or_insert(e);
            }
        }
        self.save();
        if let Some(e) = first_err {
            return Err(format!("a green machine did not become healthy: {e}"));
        }
        // Into rotation: from here the greens stay.
        for &i in &greens {
            let id = self.steps[i].id.clone().unwrap_or_default();
            agent
                .cordon_machine(&app, &id, false, None)
                .map_err(|e| format!("uncordoning green {id}: {e}"))?;
            self.steps[i].committed = true;
            self.steps[i].outcome = Outcome::Done;
        }
        self.save();
        self.event(
            "bluegreen",
            None,
            &format!("Greens of group {g} are in rotation"),
        );
        // Blues out of rotation, drained, stopped, destroyed.
        let blues = self.indexes(|s| s.action == Action::Destroy && s.process_group == g);
        for &i in &blues {
            let id = self.steps[i].id.clone().unwrap_or_default();
            let _ = agent.cordon_machine(&app, &id, true, None);
        }
        for &i in &blues {
            let id = self.steps[i].id.clone().unwrap_or_default();
            Worker::of(self).drained(&id, wait).await;
            self.event(
                "bluegreen",
                Some(&id),
                &format!("Blue {id} is out of rotation and drained"),
            );
        }
        for i in blues {
            self.destroy_step(i).await?;
        }
        Ok(())
    }

    /// Gives each mount of a new machine's config a volume: an unattached
    /// one of the mount's name, else a new one (`[mounts] initial_size`,
    /// 1 GB by default).
    async fn attach_volumes(&mut self, config: &mut Value) -> StepResult {
        let agent = self.d.agent().clone();
        let app = self.app().to_owned();
        let Some(mounts) = config["mounts"].as_array_mut() else {
            return Ok(());
        };
        for m in mounts.iter_mut().filter(|m| m.get("volume").is_none()) {
            let name = m["name"].as_str().unwrap_or_default().to_owned();
            let free = agent
                .list_volumes(&app)
                .map_err(|e| e.to_string())?
                .into_iter()
                .find(|v| {
                    v.name == name && v.state == "created" && v.attached_machine_id.is_none()
                });
            let id = match free {
                Some(v) => v.id,
                None => {
                    let spec = self.cfg.mounts.iter().find(|x| x.source == name);
                    let size = spec
                        .and_then(|x| x.initial_size.as_ref())
                        .and_then(|s| s.gb().ok())
                        .unwrap_or(1);
                    let v = agent
                        .create_volume(
                            &app,
                            hangar_agent::volumes::NewVolume {
                                name: name.clone(),
                                region: self.cfg.primary_region.clone(),
                                size_gb: Some(size),
                                snapshot_retention: spec.and_then(|x| x.snapshot_retention),
                                ..Default::default()
                            },
                        )
                        .await
                        .map_err(|e| format!("creating volume {name}: {e}"))?;
                    self.event(
                        "volume",
                        None,
                        &format!("Created volume {} ({name}, {size} GB)", v.id),
                    );
                    v.id
                }
            };
            m["volume"] = json!(id);
        }
        Ok(())
    }

    /// A canary: one extra machine of the release in group `g` (from the
    /// config machine `like` would get) must become healthy before any
    /// machine changes; it is destroyed either way.
    async fn canary(&mut self, g: &str, like: usize, wait: Duration) -> StepResult {
        let id = self.steps[like].id.clone().unwrap_or_default();
        let m = self
            .d
            .agent()
            .get_machine(self.app(), &id)
            .map_err(|e| e.to_string())?;
        let mut config = self.stamp(machine::merge(
            &m.config,
            &machine::group_config(&self.cfg, g, &self.image),
        ));
        config["metadata"][keys::CANARY] = json!("true");
        let parsed = Parsed::new(config).map_err(|e| format!("canary of {g}: {e}"))?;
        let mut req = NewMachine::new(parsed);
        req.region = Some(m.region.clone());
        let rec = self
            .d
            .agent()
            .create_machine(self.app(), req)
            .await
            .map_err(|e| format!("creating the canary of {g}: {e}"))?;
        let cid = rec.id.to_string();
        self.event(
            "canary",
            Some(&cid),
            &format!("Canary {cid} of group {g} created"),
        );
        let r = Worker::of(self)
            .healthy(&cid, &rec.instance_id, wait, now_ms() - 1)
            .await;
        let _ = self
            .d
            .agent()
            .destroy_machine(self.app(), &cid, true, None)
            .await;
        match &r {
            Ok(()) => self.event("canary", Some(&cid), "Canary passed; destroyed"),
            Err(e) => self.event(
                "canary",
                Some(&cid),
                &format!("Canary failed ({e}); destroyed"),
            ),
        }
        r.map_err(|e| format!("canary of group {g}: {e}"))
    }

    async fn destroy_step(&mut self, i: usize) -> StepResult {
        let id = self.steps[i].id.clone().unwrap_or_default();
        self.steps[i].outcome = Outcome::Running;
        self.save();
        let r = self
            .d
            .agent()
            .destroy_machine(self.app(), &id, true, None)
            .await
            .map(|_| String::new())
            .map_err(|e| format!("destroying {id}: {e}"));
        let why = if self.opts.scale.is_some() {
            "scaled down"
        } else if self.cfg.groups().contains(&self.steps[i].process_group) {
            "replaced by its green"
        } else {
            "group removed from fly.toml"
        };
        self.event(
            "destroy",
            Some(&id),
            &format!(
                "Destroyed {} machine {id} ({why})",
                self.steps[i].process_group
            ),
        );
        self.record(i, r.clone());
        r.map(|_| ())
    }

    async fn release_command(&mut self, i: usize) -> StepResult {
        let cmd = self
            .cfg
            .deploy
            .as_ref()
            .and_then(|d| d.release_command.clone())
            .unwrap_or_default();
        let timeout = self.opts.release_command_timeout(&self.cfg);
        let agent = self.d.agent().clone();
        let app = self.app().to_owned();
        // One begun before a crash is not trusted: it goes, and runs again.
        if let Some(old) = self.steps[i].id.take() {
            let _ = agent.destroy_machine(&app, &old, true, None).await;
        }
        let mut config = machine::release_command_config(&self.cfg, &self.image, &cmd);
        config["auto_destroy"] = json!(false);
        config = self.stamp(config);
        let parsed = Parsed::new(config).map_err(|e| format!("release command: {e}"))?;
        let mut req = NewMachine::new(parsed);
        req.region = self.cfg.primary_region.clone();
        self.steps[i].outcome = Outcome::Running;
        self.save();
        self.event(
            "release_command",
            None,
            &format!("Running release command: {cmd}"),
        );
        let rec = agent
            .create_machine(&app, req)
            .await
            .map_err(|e| format!("release command: {e}"))?;
        let id = rec.id.to_string();
        self.steps[i].id = Some(id.clone());
        self.save();
        let since = now_ms() - 1;
        // Its output, as it comes, in the release's progress.
        let streaming = agent
            .follow_logs(
                &app,
                LogQuery {
                    machine: Some(id.clone()),
                    since: None,
                    tail: Some(1000),
                },
            )
            .ok()
            .map(|mut lines| {
                let w = Worker::of(self);
                let id = id.clone();
                tokio::spawn(async move {
                    while let Some(l) = lines.recv().await {
                        w.push("release_command_output", "running", Some(&id), &l.message);
                    }
                })
            });
        let ended = agent
            .wait_machine(
                &app,
                &id,
                &[
                    hangar_agent::WaitFor::State(MachineState::Stopped),
                    hangar_agent::WaitFor::State(MachineState::Failed),
                    hangar_agent::WaitFor::State(MachineState::Destroyed),
                ],
                timeout,
            )
            .await;
        let exit = Worker::of(self).exit_since(&id, since, false);
        let logs = Worker::of(self).log_tail(&id);
        if let Some(task) = streaming {
            // What it wrote last is read (the stream reads the log every
            // FOLLOW_INTERVAL) before the stream stops.
            tokio::time::sleep(hangar_agent::logs::FOLLOW_INTERVAL * 2).await;
            task.abort();
        }
        let _ = agent.destroy_machine(&app, &id, true, None).await;
        let r = match (ended, exit) {
            (Err(_), _) => Err(format!(
                "release command timed out after {}s{logs}",
                timeout.as_secs()
            )),
            (Ok(_), Some((0, _))) => Ok(String::new()),
            (Ok(_), Some((code, oom))) => Err(format!(
                "release command failed with exit code {code}{}: nothing was changed{logs}",
                if oom { " (out of memory)" } else { "" }
            )),
            (Ok(st), None) => Err(format!(
                "release command machine ended {} without an exit status{logs}",
                st.state.as_str()
            )),
        };
        match &r {
            Ok(_) => self.event(
                "release_command",
                Some(&id),
                "Release command completed successfully",
            ),
            Err(e) => self.event("release_command", Some(&id), e),
        }
        self.record(i, r.clone());
        r.map(|_| ())
    }

    /// Leases a crashed run of this release left on its machines.
    fn clear_own_leases(&self) {
        let agent = self.d.agent();
        for id in self.steps.iter().filter_map(|s| s.id.as_deref()) {
            if let Ok(Some(l)) = agent.get_lease(self.app(), id) {
                if l.owner == self.rel.id {
                    let _ = agent.clear_lease(self.app(), id);
                }
            }
        }
    }

    // ---- backward -------------------------------------------------------------------

    async fn backward(&mut self) {
        self.event(
            "rollback",
            None,
            "Rolling back the machines this release changed",
        );
        let mut failed = None;
        let wait = self
            .opts
            .wait_timeout(&self.cfg)
            .min(Duration::from_secs(120));
        for i in (0..self.steps.len()).rev() {
            let s = self.steps[i].clone();
            if !matches!(
                s.outcome,
                Outcome::Done | Outcome::Running | Outcome::Failed
            ) {
                continue;
            }
            let Some(id) = s.id.clone() else {
                continue;
            };
            let r = match s.action {
                Action::Update => self.revert(&s, &id, wait).await,
                Action::Create => self
                    .d
                    .agent()
                    .destroy_machine(self.app(), &id, true, None)
                    .await
                    .map(|_| ())
                    .or_else(|e| match e {
                        hangar_agent::AgentError::NotFound(_) => Ok(()),
                        e => Err(e),
                    })
                    .map_err(|e| e.to_string()),
                Action::ReleaseCommand | Action::Destroy => continue,
            };
            match r {
                Ok(()) => {
                    self.steps[i].outcome = Outcome::RolledBack;
                    self.event("rollback", Some(&id), &format!("{id} is back as it was"));
                }
                Err(e) => {
                    self.event(
                        "rollback",
                        Some(&id),
                        &format!("could not put {id} back: {e}"),
                    );
                    failed.get_or_insert(e);
                }
            }
            self.save();
        }
        self.clear_own_leases();
        match failed {
            None => {
                let _ = self.apply(Input::Undone);
                self.event(
                    "rolled_back",
                    None,
                    &format!(
                        "v{} rolled back: {}",
                        self.rel.version,
                        self.rel.error.clone().unwrap_or_default()
                    ),
                );
            }
            Some(e) => {
                self.rel.error = Some(format!(
                    "{}; rollback failed too: {e}",
                    self.rel.error.clone().unwrap_or_default()
                ));
                let _ = self.apply(Input::Failed { rollback: false });
                self.event("failed", None, &self.rel.error.clone().unwrap_or_default());
            }
        }
    }

    /// Puts an updated machine back on the config of the version it had.
    async fn revert(&mut self, s: &Step, id: &str, wait: Duration) -> Result<(), String> {
        let agent = self.d.agent().clone();
        let app = self.app().to_owned();
        let m = agent.get_machine(&app, id).map_err(|e| e.to_string())?;
        let Some(from) = s.from_version.as_deref() else {
            return Ok(());
        };
        if m.instance_id == from {
            return Ok(());
        }
        let old = agent
            .machine_versions(&app, id)
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|(v, _)| v == from)
            .map(|(_, c)| c)
            .ok_or_else(|| format!("version {from} of {id} is no longer known"))?;
        let parsed = Parsed::new(old).map_err(|e| e.to_string())?;
        let mut upd = UpdateMachine::new(parsed);
        upd.skip_launch = !s.was_started;
        let rec = agent
            .update_machine(&app, id, upd, None)
            .await
            .map_err(|e| e.to_string())?;
        if s.was_started {
            Worker::of(self)
                .healthy(id, &rec.instance_id, wait, now_ms() - 1)
                .await?;
        }
        // A machine drained for its update goes back into rotation.
        agent
            .cordon_machine(&app, id, false, None)
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// An update worked out, ready to send.
struct Prepared {
    id: String,
    target: Value,
    launch: bool,
    /// Set when a run before a crash already sent it: the version it made.
    applied: Option<String>,
}

/// What concurrent steps need of a run, without borrowing it.
#[derive(Clone)]
struct Worker {
    d: Deployer,
    app: String,
    release: String,
}

impl Worker {
    fn of(r: &Run) -> Worker {
        Worker {
            d: r.d.clone(),
            app: r.rel.app.clone(),
            release: r.rel.id.clone(),
        }
    }

    fn event(&self, machine: &str, message: &str) {
        self.push("update", "running", Some(machine), message);
    }

    /// Records a progress event of the release and wakes its followers.
    fn push(&self, phase: &str, status: &str, machine: Option<&str>, message: &str) {
        let mut body = json!({"phase": phase, "status": status, "message": message});
        if let Some(m) = machine {
            body["machine_id"] = json!(m);
        }
        if let Err(e) = self.d.agent().push_release_event(&self.release, &body) {
            tracing::error!(release = self.release, error = %e, "recording release event");
        }
        self.d.bump();
    }

    /// Sends an update under a lease and (with `gate`) waits until the new
    /// version is started and healthy. Returns the new version.
    async fn finish_update(
        &self,
        p: Prepared,
        gate: bool,
        wait: Duration,
    ) -> Result<String, String> {
        let agent = self.d.agent();
        let since = now_ms() - 1;
        let ttl = wait + Duration::from_secs(60);
        let nonce = self.lease(&p.id, ttl)?;
        let r = self.update_drained(&p, gate, wait, since, &nonce).await;
        let _ = agent.release_lease(&self.app, &p.id, Some(&nonce));
        r
    }

    /// The update under the lease `nonce`: a started machine that is gated
    /// leaves the proxy's rotation first and is drained (no request in
    /// flight), and comes back into it once its new version is healthy.
    async fn update_drained(
        &self,
        p: &Prepared,
        gate: bool,
        wait: Duration,
        since: i64,
        nonce: &str,
    ) -> Result<String, String> {
        let agent = self.d.agent();
        let drain = gate && p.launch;
        let version = match &p.applied {
            Some(v) => v.clone(),
            None => {
                if drain {
                    agent
                        .cordon_machine(&self.app, &p.id, true, Some(nonce))
                        .map_err(|e| format!("taking {} out of rotation: {e}", p.id))?;
                    self.drained(&p.id, wait).await;
                }
                let parsed = Parsed::new(p.target.clone()).map_err(|e| format!("{}: {e}", p.id))?;
                let mut upd = UpdateMachine::new(parsed);
                upd.skip_launch = !p.launch;
                agent
                    .update_machine(&self.app, &p.id, upd, Some(nonce))
                    .await
                    .map_err(|e| format!("updating {}: {e}", p.id))?
                    .instance_id
            }
        };
        self.event(&p.id, &format!("Updated {} to version {version}", p.id));
        if drain {
            self.healthy(&p.id, &version, wait, since).await?;
            agent
                .cordon_machine(&self.app, &p.id, false, Some(nonce))
                .map_err(|e| format!("putting {} back into rotation: {e}", p.id))?;
            self.event(
                &p.id,
                &format!("{} is started, healthy and in rotation", p.id),
            );
        }
        Ok(version)
    }

    /// Waits until the proxy has no request in flight on machine `id` (out
    /// of rotation), for at most `wait` (and 30 s). Idle is seen twice,
    /// [`SETTLE`] apart: a request that read the machine list just before
    /// the machine left rotation is placed within microseconds, and shows.
    async fn drained(&self, id: &str, wait: Duration) {
        let deadline = Instant::now() + wait.min(Duration::from_secs(30));
        let mut idle_since: Option<Instant> = None;
        while Instant::now() < deadline {
            if self.d.traffic(id) > 0 {
                idle_since = None;
            } else if idle_since.get_or_insert_with(Instant::now).elapsed() >= SETTLE {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn lease(&self, id: &str, ttl: Duration) -> Result<String, String> {
        let agent = self.d.agent();
        let take = || agent.acquire_lease(&self.app, id, ttl, "deploy", &self.release, None);
        match take() {
            Ok((l, _)) => Ok(l.nonce),
            Err(e) => {
                // Our own, left by a run before a crash.
                if let Ok(Some(l)) = agent.get_lease(&self.app, id) {
                    if l.owner == self.release {
                        let _ = agent.clear_lease(&self.app, id);
                        return take().map(|(l, _)| l.nonce).map_err(|e| e.to_string());
                    }
                }
                Err(format!("{id}: {e}"))
            }
        }
    }

    async fn healthy_or_stopped(
        &self,
        id: &str,
        standby: bool,
        gate: bool,
        wait: Duration,
    ) -> Result<String, String> {
        let agent = self.d.agent();
        let m = agent
            .get_machine(&self.app, id)
            .map_err(|e| e.to_string())?;
        if standby {
            agent
                .wait_machine(&self.app, id, &[hangar_agent::WaitFor::Settled], wait)
                .await
                .map_err(|e| format!("{id}: {e}"))?;
        } else if gate {
            self.healthy(id, &m.instance_id, wait, 0).await?;
        }
        Ok(m.instance_id)
    }

    /// Waits until machine `id` runs `version`, started, with every check
    /// passing; fails at once when that version exits (or is replaced).
    async fn healthy(
        &self,
        id: &str,
        version: &str,
        wait: Duration,
        since: i64,
    ) -> Result<(), String> {
        let agent = self.d.agent();
        let deadline = Instant::now() + wait;
        loop {
            let m = agent
                .get_machine(&self.app, id)
                .map_err(|e| format!("{id}: {e}"))?;
            if m.instance_id != version {
                return Err(format!(
                    "{id} was changed by someone else during the deploy (now version {})",
                    m.instance_id
                ));
            }
            if let Some((code, oom)) = self.exit_since(id, since, true) {
                return Err(format!(
                    "{id} exited with code {code}{} instead of becoming healthy{}",
                    if oom { " (oom_killed)" } else { "" },
                    self.log_tail(id)
                ));
            }
            match m.core.state {
                MachineState::Started => {
                    let want = m.spec.checks.len();
                    let results = agent.version_checks(id, version);
                    let passing = results
                        .iter()
                        .filter(|c| c.status == hangar_agent::checks::Health::Passing)
                        .count();
                    if want == 0 || (results.len() >= want && passing == results.len()) {
                        return Ok(());
                    }
                }
                MachineState::Stopped
                | MachineState::Failed
                | MachineState::Destroyed
                | MachineState::Destroying => {
                    return Err(format!(
                        "{id} is {} instead of started{}",
                        m.core.state.as_str(),
                        self.log_tail(id)
                    ));
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                let checks: Vec<String> = agent
                    .checks(id)
                    .iter()
                    .map(|c| format!("{} {} ({})", c.name, c.status.as_str(), c.output.trim()))
                    .collect();
                return Err(format!(
                    "timed out after {}s waiting for {id} to become healthy ({}; checks: {}); try a longer --wait-timeout",
                    wait.as_secs(),
                    m.core.state.as_str(),
                    if checks.is_empty() {
                        "none reported yet".into()
                    } else {
                        checks.join(", ")
                    }
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The newest exit of machine `id` since `since` (Unix ms) that was not
    /// asked for: (exit code, oom_killed).
    fn exit_since(&self, id: &str, since: i64, unrequested_only: bool) -> Option<(i64, bool)> {
        let events = self.d.agent().machine_events(&self.app, id, 50).ok()?;
        events
            .iter()
            .filter(|e| e.kind == "exit" && e.timestamp >= since)
            .find_map(|e| {
                let x = &e.request.as_ref()?["exit_event"];
                if unrequested_only && x["requested_stop"].as_bool() == Some(true) {
                    return None;
                }
                Some((
                    x["exit_code"].as_i64().unwrap_or(-1),
                    x["oom_killed"].as_bool().unwrap_or(false),
                ))
            })
    }

    /// The machine's last log lines, as text to append to an error.
    fn log_tail(&self, id: &str) -> String {
        let q = LogQuery {
            machine: Some(id.to_owned()),
            since: None,
            tail: Some(LOG_LINES),
        };
        match self.d.agent().read_logs(&self.app, &q) {
            Ok(lines) if !lines.is_empty() => {
                let text: Vec<String> = lines.iter().map(|l| format!("  {}", l.message)).collect();
                format!("; its last log lines:\n{}", text.join("\n"))
            }
            _ => String::new(),
        }
    }
}

/// `image_ref` by `digest`: as it is when it is already pinned, else its
/// registry and repository with the digest.
pub(crate) fn pin(
    agent: &hangar_agent::Agent,
    image_ref: &str,
    digest: &str,
) -> Result<String, hangar_agent::AgentError> {
    if image_ref.contains('@') {
        return Ok(image_ref.to_owned());
    }
    let r = agent.parse_image(image_ref)?;
    Ok(pinned(&r.registry, &r.repository, digest))
}

pub(crate) fn pinned(registry: &str, repository: &str, digest: &str) -> String {
    format!("{registry}/{repository}@{digest}")
}
