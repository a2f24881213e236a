//! Hangar's release executor. A deploy is submitted as a release (the
//! fly.toml as JSON, the image, the options); hangard runs it, not the CLI:
//! one task owns each release, every step is persisted before and after it
//! is taken, and a hangard that was killed mid-release resumes it (or rolls
//! it back) when it starts again. Status changes are decided by the pure
//! [`hangar_core::release`] state machine.
//!
//! The executor drives machines only through the agent's public interface
//! (create, update, stop, destroy, leases, waits), as any API client would.

#![forbid(unsafe_code)]

pub mod plan;
mod run;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use hangar_agent::store::ReleaseRow;
use hangar_agent::{Agent, AgentError};
use hangar_appconfig::ConfigError;
use hangar_core::release::{self, ReleaseReason, ReleaseStatus};
use serde_json::Value;
use tokio::sync::watch;

pub use plan::{Action, Options, Outcome, Step};

/// Why a release could not be made or changed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The agent refused or failed (its kind decides the status).
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The definition is not a usable fly.toml.
    #[error("invalid definition: {0}")]
    Config(#[source] ConfigError),
    /// A field of the request is invalid.
    #[error("{0}")]
    Invalid(String),
    /// The release's status does not allow it.
    #[error("{0}")]
    Denied(#[source] release::Denied),
}

/// A release to make.
#[derive(Debug, Clone)]
pub struct NewRelease {
    /// The app.
    pub app: String,
    /// The fly.toml, as JSON.
    pub definition: Value,
    /// The image.
    pub image: String,
    /// How to run it.
    pub options: Options,
    /// Why.
    pub reason: ReleaseReason,
    /// Who asks.
    pub user: String,
    /// A line for listings.
    pub description: String,
    /// The release a rollback restores.
    pub rollback_of: Option<String>,
}

/// What the proxy has on a machine: a bluegreen deploy waits until an old
/// machine it took out of rotation has none before stopping it.
pub trait Traffic: Send + Sync + 'static {
    /// Requests in flight and raw connections open on machine `id`.
    fn on(&self, id: &str) -> u32;
}

/// Runs releases. Cheap to clone.
#[derive(Clone)]
pub struct Deployer {
    inner: Arc<Inner>,
}

struct Inner {
    agent: Agent,
    /// Bumped on every progress event and status change.
    changed: watch::Sender<u64>,
    /// Releases being run, by id: cancelling one sets its flag.
    running: Mutex<HashMap<String, watch::Sender<bool>>>,
    /// The proxy's view of traffic, when there is a proxy.
    traffic: Option<Arc<dyn Traffic>>,
}

impl Deployer {
    /// An executor driving `agent`'s machines.
    pub fn new(agent: Agent) -> Deployer {
        Deployer::with_traffic(agent, None)
    }

    /// An executor that drains machines through `traffic` (the proxy).
    pub fn with_traffic(agent: Agent, traffic: Option<Arc<dyn Traffic>>) -> Deployer {
        Deployer {
            inner: Arc::new(Inner {
                agent,
                changed: watch::channel(0).0,
                running: Mutex::default(),
                traffic,
            }),
        }
    }

    pub(crate) fn traffic(&self, id: &str) -> u32 {
        self.inner.traffic.as_ref().map_or(0, |t| t.on(id))
    }

    /// Takes up every release a previous hangard left unfinished.
    pub fn resume_all(&self) -> Result<usize, DeployError> {
        let list = self.inner.agent.unfinished_releases()?;
        let n = list.len();
        for rel in list {
            tracing::info!(
                app = rel.app,
                release = rel.id,
                status = rel.status.as_str(),
                "resuming release"
            );
            self.spawn(rel);
        }
        Ok(n)
    }

    /// Checks a release without making it: the definition and options, and
    /// the plan it would run against the app's machines now.
    pub fn preview(&self, req: &NewRelease) -> Result<Vec<Step>, DeployError> {
        let cfg =
            hangar_appconfig::from_definition(&req.definition).map_err(DeployError::Config)?;
        cfg.validate().map_err(DeployError::Config)?;
        req.options.validate().map_err(DeployError::Invalid)?;
        if let Some(a) = cfg.app.as_deref().filter(|a| *a != req.app) {
            return Err(DeployError::Invalid(format!(
                "the definition is for app {a:?}, not {:?}: check fly.toml's app, or pass --app",
                req.app
            )));
        }
        let strategy = req.options.strategy(&cfg);
        if matches!(
            strategy,
            hangar_appconfig::Strategy::Canary | hangar_appconfig::Strategy::Bluegreen
        ) && !cfg.mounts.is_empty()
        {
            return Err(DeployError::Invalid(format!(
                "the {} strategy is refused with [mounts]: its new machines cannot share their twins' volumes; use rolling or immediate",
                strategy.as_str()
            )));
        }
        if strategy == hangar_appconfig::Strategy::Bluegreen {
            let checked = cfg.groups().iter().any(|g| {
                let c = hangar_appconfig::machine::group_config(&cfg, g, "x");
                !hangar_core::checks::checks(&c).is_empty()
            });
            if !checked {
                return Err(DeployError::Invalid(
                    "the bluegreen strategy needs at least one health check ([[http_service.checks]], [[services.*_checks]] or [checks]): it is how a new machine proves itself before the old one goes".into(),
                ));
            }
        }
        if req.image.trim().is_empty() {
            return Err(DeployError::Invalid(
                "image is required (--image, or [build] image in fly.toml)".into(),
            ));
        }
        let machines = self.inner.agent.list_machines(&req.app, false)?;
        plan::plan(&cfg, &req.image, &machines, &req.options).map_err(DeployError::Invalid)
    }

    /// Makes a release and starts running it; 409 while another release of
    /// the app is unfinished.
    pub fn submit(&self, req: NewRelease) -> Result<ReleaseRow, DeployError> {
        let steps = self.preview(&req)?;
        let cfg =
            hangar_appconfig::from_definition(&req.definition).map_err(DeployError::Config)?;
        let rel = ReleaseRow {
            id: format!("rel_{}", ulid::Ulid::new().to_string().to_lowercase()),
            app: req.app.clone(),
            version: 0,
            status: ReleaseStatus::Pending,
            reason: req.reason,
            strategy: req.options.strategy(&cfg).as_str().to_owned(),
            description: req.description.clone(),
            image_ref: req.image.clone(),
            image_digest: String::new(),
            definition: req.definition.clone(),
            options: serde_json::to_value(&req.options).unwrap_or_default(),
            secrets_version: self.inner.agent.secrets_version(&req.app)?,
            machines: serde_json::to_value(&steps).unwrap_or_default(),
            user: req.user.clone(),
            created_at: now_ms(),
            started_at: None,
            finished_at: None,
            error: None,
            rollback_of: req.rollback_of.clone(),
        };
        let rel = self.inner.agent.create_release(rel, req.options.queue)?;
        tracing::info!(
            app = rel.app,
            release = rel.id,
            version = rel.version,
            "release created"
        );
        self.spawn(rel.clone());
        Ok(rel)
    }

    /// Deploys an earlier release's definition and image (by digest) again,
    /// without its release command.
    pub fn rollback(&self, app: &str, key: &str, user: &str) -> Result<ReleaseRow, DeployError> {
        let agent = &self.inner.agent;
        let old = agent.get_release(app, key)?;
        if old.image_digest.is_empty() {
            return Err(DeployError::Invalid(format!(
                "release v{} never resolved its image: there is nothing to roll back to",
                old.version
            )));
        }
        let options = serde_json::from_value::<Options>(old.options.clone())
            .unwrap_or_default()
            .for_rerun();
        self.submit(NewRelease {
            app: app.to_owned(),
            definition: old.definition.clone(),
            image: run::pin(agent, &old.image_ref, &old.image_digest)?,
            options,
            reason: ReleaseReason::Rollback,
            user: user.to_owned(),
            description: format!("rollback to v{}", old.version),
            rollback_of: Some(old.id),
        })
    }

    /// Restarts the app's managed machines with the current release's
    /// definition and image (the newest complete release), with its
    /// strategy and health gating: what a secrets change or `apps restart`
    /// does. The machines pick up the app's current secrets.
    pub fn restart(
        &self,
        app: &str,
        reason: ReleaseReason,
        user: &str,
    ) -> Result<ReleaseRow, DeployError> {
        self.rerun_current(app, reason, user, "restart", |o| o.restart_only = true)
    }

    /// `scale count`: `group` gets `count` machines, made from the current
    /// release's fly.toml and image, or destroyed (stopped ones first).
    pub fn scale_count(
        &self,
        app: &str,
        group: &str,
        count: usize,
        user: &str,
    ) -> Result<ReleaseRow, DeployError> {
        if count > 100 {
            return Err(DeployError::Invalid(format!(
                "count {count}: at most 100 machines per group at a time"
            )));
        }
        let what = format!("scale {group} to {count}");
        self.rerun_current(app, ReleaseReason::Scale, user, &what, |o| {
            o.scale = Some(plan::ScaleCount {
                group: group.to_owned(),
                count,
            })
        })
    }

    /// `scale vm`: the managed machines of `groups` (all when empty) get
    /// `guest`, rolled with the current release's strategy and gating.
    pub fn scale_vm(
        &self,
        app: &str,
        guest: Value,
        groups: Vec<String>,
        user: &str,
    ) -> Result<ReleaseRow, DeployError> {
        let what = format!("scale vm {guest}");
        self.rerun_current(app, ReleaseReason::Scale, user, &what, move |o| {
            o.guest = Some(guest);
            o.process_groups = groups;
            o.update_only = true;
        })
    }

    /// A release of the current (newest complete) release's definition and
    /// image, with `tweak` applied to its options.
    fn rerun_current(
        &self,
        app: &str,
        reason: ReleaseReason,
        user: &str,
        what: &str,
        tweak: impl FnOnce(&mut Options),
    ) -> Result<ReleaseRow, DeployError> {
        let agent = &self.inner.agent;
        let current = agent
            .list_releases(app, 1000)?
            .into_iter()
            .find(|r| r.status == ReleaseStatus::Complete && !r.image_digest.is_empty())
            .ok_or_else(|| {
                DeployError::Invalid(format!(
                    "app {app} has no complete release to {what} from: deploy it first"
                ))
            })?;
        let mut options = serde_json::from_value::<Options>(current.options.clone())
            .unwrap_or_default()
            .for_rerun();
        tweak(&mut options);
        self.submit(NewRelease {
            app: app.to_owned(),
            definition: current.definition.clone(),
            image: run::pin(agent, &current.image_ref, &current.image_digest)?,
            options,
            reason,
            user: user.to_owned(),
            description: format!("{what} (v{})", current.version),
            rollback_of: None,
        })
    }

    /// Cancels an unfinished release: a pending one ends `interrupted`, a
    /// running one rolls back what it changed (unless it runs with
    /// `no_rollback`).
    pub fn cancel(&self, app: &str, key: &str) -> Result<ReleaseRow, DeployError> {
        let rel = self.inner.agent.get_release(app, key)?;
        if rel.status.is_finished() {
            return Err(DeployError::Denied(release::Denied::Finished(rel.status)));
        }
        let flag = self
            .inner
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&rel.id)
            .cloned();
        match flag {
            Some(f) => {
                f.send_replace(true);
            }
            None => {
                return Err(DeployError::Invalid(format!(
                    "release {} is not being run here",
                    rel.id
                )));
            }
        }
        Ok(rel)
    }

    /// A receiver that changes whenever any release makes progress.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    /// The agent.
    pub fn agent(&self) -> &Agent {
        &self.inner.agent
    }

    fn spawn(&self, rel: ReleaseRow) {
        let (tx, rx) = watch::channel(false);
        self.inner
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(rel.id.clone(), tx);
        let me = self.clone();
        tokio::spawn(async move {
            let id = rel.id.clone();
            run::Run::new(me.clone(), rel, rx).go().await;
            me.inner
                .running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            me.bump();
        });
    }

    fn bump(&self) {
        self.inner.changed.send_modify(|n| *n += 1);
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
