//! What a release will do: its options, and the plan of steps (one per
//! machine to create, update or destroy, and the release command), stored
//! with the release so that a restarted hangard continues it.

use std::collections::BTreeMap;
use std::time::Duration;

use hangar_agent::MachineRecord;
use hangar_appconfig::machine::{self, keys};
use hangar_appconfig::{AppConfig, Strategy};
use hangar_core::MachineState;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How a release runs: fly.toml's `[deploy]` and flyctl's deploy flags.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Options {
    /// Overrides `[deploy] strategy`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// Overrides `[deploy] max_unavailable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<f64>,
    /// Overrides `[deploy] wait_timeout`, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait_timeout_secs: Option<f64>,
    /// Overrides `[deploy] release_command_timeout`, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release_command_timeout_secs: Option<f64>,
    /// Don't run the release command.
    pub skip_release_command: bool,
    /// Don't create machines for groups that have none.
    pub update_only: bool,
    /// Two machines per new group (default true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ha: Option<bool>,
    /// Only these groups.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub process_groups: Vec<String>,
    /// Only these machines.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub only_machines: Vec<String>,
    /// Not these machines.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exclude_machines: Vec<String>,
    /// Destroy the machines of groups fly.toml no longer has (`--yes`).
    pub allow_destroy: bool,
    /// Leave changed machines as they are when the release fails.
    pub no_rollback: bool,
    /// Restart with the current definition and image; no release command
    /// (secrets changes, `apps restart`, rollbacks).
    pub restart_only: bool,
    /// Wait behind the app's unfinished release instead of a 409.
    pub queue: bool,
    /// `scale count`: this group gets this many machines (created from
    /// fly.toml's config for it, or destroyed: stopped ones first, then the
    /// newest); no other change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale: Option<ScaleCount>,
    /// `scale vm`: this guest for the machines of `process_groups` (all
    /// when empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest: Option<serde_json::Value>,
}

/// `hangar scale count`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleCount {
    /// The process group.
    pub group: String,
    /// How many machines it should have.
    pub count: usize,
}

impl Options {
    /// The strategy to run.
    pub fn strategy(&self, cfg: &AppConfig) -> Strategy {
        self.strategy
            .as_deref()
            .and_then(Strategy::parse)
            .unwrap_or_else(|| cfg.strategy())
    }

    /// How long each machine gets to become healthy (5 minutes unless set).
    pub fn wait_timeout(&self, cfg: &AppConfig) -> Duration {
        self.wait_timeout_secs
            .map(Duration::from_secs_f64)
            .or_else(|| {
                cfg.deploy
                    .as_ref()
                    .and_then(|d| d.wait_timeout)
                    .map(|d| d.0)
            })
            .unwrap_or(Duration::from_secs(300))
    }

    /// How long the release command may run (5 minutes unless set).
    pub fn release_command_timeout(&self, cfg: &AppConfig) -> Duration {
        self.release_command_timeout_secs
            .map(Duration::from_secs_f64)
            .or_else(|| {
                cfg.deploy
                    .as_ref()
                    .and_then(|d| d.release_command_timeout)
                    .map(|d| d.0)
            })
            .unwrap_or(Duration::from_secs(300))
    }

    /// How many machines of a group of `n` may be down at once.
    pub fn max_unavailable(&self, cfg: &AppConfig, n: usize) -> usize {
        let m = self
            .max_unavailable
            .or_else(|| cfg.deploy.as_ref().and_then(|d| d.max_unavailable))
            .unwrap_or(0.33);
        let k = if m >= 1.0 {
            m as usize
        } else {
            (n as f64 * m).ceil() as usize
        };
        k.max(1)
    }

    /// These options without what applied to their own run only (filters,
    /// confirmations, scaling, queueing, the release command): for a
    /// release that deploys an earlier one's definition again.
    pub fn for_rerun(mut self) -> Options {
        self.skip_release_command = true;
        self.update_only = false;
        self.only_machines.clear();
        self.exclude_machines.clear();
        self.process_groups.clear();
        self.allow_destroy = false;
        self.restart_only = false;
        self.queue = false;
        self.scale = None;
        self.guest = None;
        self
    }

    /// Checks the options on their own.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(s) = &self.strategy {
            Strategy::parse(s).ok_or_else(|| {
                format!("strategy {s:?}: must be rolling, immediate, canary or bluegreen")
            })?;
        }
        if let Some(m) = self.max_unavailable {
            if m.is_nan() || m <= 0.0 || (m > 1.0 && m.fract() != 0.0) {
                return Err(format!(
                    "max_unavailable {m}: a fraction in (0, 1] or a whole number of machines"
                ));
            }
        }
        for (k, v) in [
            ("wait_timeout", self.wait_timeout_secs),
            ("release_command_timeout", self.release_command_timeout_secs),
        ] {
            if let Some(v) = v {
                if !(v > 0.0 && v <= 86_400.0) {
                    return Err(format!("{k} {v}: between 0 and 24 hours"));
                }
            }
        }
        Ok(())
    }
}

/// What a step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Run the release command in a temporary machine.
    ReleaseCommand,
    /// Make a new machine of a group.
    Create,
    /// A group's machine gets the release's config and image.
    Update,
    /// A machine of a group fly.toml no longer has goes.
    Destroy,
}

/// Where a step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Not begun.
    Pending,
    /// Begun (a restarted hangard looks at the machine to see how far).
    Running,
    /// Done.
    Done,
    /// Failed (the release fails with it).
    Failed,
    /// Put back as it was.
    RolledBack,
    /// Not done: an earlier step failed.
    Skipped,
}

/// One step of a release: one machine's change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// What it does.
    pub action: Action,
    /// The process group.
    pub process_group: String,
    /// The machine (for a create, once made).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The machine's version before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_version: Option<String>,
    /// Its version after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_version: Option<String>,
    /// Started before the change (so it is health-gated and started again
    /// after).
    #[serde(default)]
    pub was_started: bool,
    /// A create of a standby for the group's first new machine.
    #[serde(default)]
    pub standby: bool,
    /// The volume (by name) a new machine of this step mounts: one that is
    /// not attached, or a new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    /// A bluegreen deploy's new machine: the machine it replaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
    /// A bluegreen deploy's new machine taken into rotation: it stays,
    /// whatever happens next.
    #[serde(default)]
    pub committed: bool,
    /// Config keys the change touches (for the plan shown).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
    /// Where it is.
    pub outcome: Outcome,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Step {
    fn new(action: Action, group: &str) -> Step {
        Step {
            action,
            process_group: group.to_owned(),
            id: None,
            from_version: None,
            to_version: None,
            was_started: false,
            standby: false,
            volume: None,
            replaces: None,
            committed: false,
            changes: Vec::new(),
            outcome: Outcome::Pending,
            error: None,
        }
    }
}

/// Whether a machine is one a deploy manages (made by a deploy, not a
/// release command's, not gone).
pub fn is_managed(m: &MachineRecord) -> bool {
    m.config["metadata"][keys::PLATFORM_VERSION] == "v2"
        && group_of(m) != keys::RELEASE_COMMAND_GROUP
        && !matches!(
            m.core.state,
            MachineState::Destroyed | MachineState::Destroying
        )
}

/// A machine's process group (`app` when unset).
pub fn group_of(m: &MachineRecord) -> String {
    m.config["metadata"][keys::PROCESS_GROUP]
        .as_str()
        .filter(|g| !g.is_empty())
        .unwrap_or(hangar_appconfig::DEFAULT_GROUP)
        .to_owned()
}

/// Top-level config keys whose values differ.
pub fn changed_keys(from: &Value, to: &Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let a = from.as_object().unwrap_or(&empty);
    let b = to.as_object().unwrap_or(&empty);
    let mut keys: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k).filter(|v| !v.is_null()) != b.get(*k).filter(|v| !v.is_null()))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// The steps of a deploy of `cfg` onto an app's `machines`, with `image`.
/// Refuses (naming what) when the plan would destroy machines without
/// `allow_destroy`.
pub fn plan(
    cfg: &AppConfig,
    image: &str,
    machines: &[MachineRecord],
    opts: &Options,
) -> Result<Vec<Step>, String> {
    let groups = cfg.groups();
    let wanted =
        |g: &str| opts.process_groups.is_empty() || opts.process_groups.iter().any(|p| p == g);
    let picked = |m: &MachineRecord| {
        (opts.only_machines.is_empty() || opts.only_machines.iter().any(|x| *x == m.id.as_str()))
            && !opts.exclude_machines.iter().any(|x| *x == m.id.as_str())
    };
    let mut by_group: BTreeMap<String, Vec<&MachineRecord>> = BTreeMap::new();
    for m in machines.iter().filter(|m| is_managed(m)) {
        by_group.entry(group_of(m)).or_default().push(m);
    }
    for list in by_group.values_mut() {
        list.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
    }
    if let Some(sc) = &opts.scale {
        return Ok(scale_plan(cfg, &by_group, sc));
    }
    let bluegreen = opts.strategy(cfg) == Strategy::Bluegreen;
    let mut steps = Vec::new();
    let has_release_command = cfg
        .deploy
        .as_ref()
        .and_then(|d| d.release_command.as_deref())
        .is_some_and(|c| !c.trim().is_empty());
    if has_release_command && !opts.restart_only && !opts.skip_release_command {
        steps.push(Step::new(
            Action::ReleaseCommand,
            keys::RELEASE_COMMAND_GROUP,
        ));
    }
    for g in groups.iter().filter(|g| wanted(g)) {
        let target = machine::group_config(cfg, g, image);
        match by_group.get(g.as_str()) {
            Some(list) => {
                for m in list.iter().filter(|m| picked(m)) {
                    let mut s = Step::new(Action::Update, g);
                    s.id = Some(m.id.to_string());
                    s.from_version = Some(m.instance_id.clone());
                    s.was_started = matches!(
                        m.core.state,
                        MachineState::Started | MachineState::Starting | MachineState::Created
                    );
                    let mut merged = machine::merge(&m.config, &target);
                    if let Some(g) = &opts.guest {
                        merged["guest"] = g.clone();
                    }
                    let (had, wants) = (
                        machine::mount_names(&m.config),
                        machine::mount_names(&merged),
                    );
                    s.changes = changed_keys(&m.config, &merged)
                        .into_iter()
                        .filter(|k| k != "metadata")
                        .collect();
                    // A machine never changes its volume in place: one
                    // whose volume would change is replaced (a new machine
                    // with the new volume, then the old one goes).
                    let replace = had != wants;
                    if bluegreen || replace {
                        // A green twin born out of rotation, then the blue goes.
                        let mut green = Step::new(Action::Create, g);
                        green.replaces = s.id.clone();
                        green.was_started = s.was_started;
                        green.changes = s.changes.clone();
                        green.volume = wants.first().cloned();
                        steps.push(green);
                        s.action = Action::Destroy;
                        s.changes.clear();
                    }
                    steps.push(s);
                }
            }
            None if !opts.update_only && !opts.restart_only => {
                let mut first = Step::new(Action::Create, g);
                first.volume = machine::mount_names(&target).first().cloned();
                steps.push(first);
                if opts.ha.unwrap_or(true) && machine::mount_names(&target).is_empty() {
                    let mut twin = Step::new(Action::Create, g);
                    twin.standby = !machine::has_services(cfg, g);
                    steps.push(twin);
                }
            }
            None => {}
        }
    }
    let removed: Vec<(&String, &Vec<&MachineRecord>)> = by_group
        .iter()
        .filter(|(g, _)| !groups.contains(g) && opts.process_groups.is_empty())
        .collect();
    if !removed.is_empty() && !opts.restart_only {
        if !opts.allow_destroy {
            let what: Vec<String> = removed
                .iter()
                .map(|(g, l)| format!("{} {g:?} machine(s)", l.len()))
                .collect();
            return Err(format!(
                "fly.toml no longer has process group(s) {}: this deploy would destroy {}; deploy again with --yes to confirm",
                removed
                    .iter()
                    .map(|(g, _)| g.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                what.join(" and ")
            ));
        }
        for (g, list) in removed {
            for m in list {
                let mut s = Step::new(Action::Destroy, g);
                s.id = Some(m.id.to_string());
                s.from_version = Some(m.instance_id.clone());
                steps.push(s);
            }
        }
    }
    Ok(steps)
}

/// The steps of `scale count`: creates up to the count, or destroys down to
/// it (stopped machines first, then the newest).
fn scale_plan(
    cfg: &AppConfig,
    by_group: &BTreeMap<String, Vec<&MachineRecord>>,
    sc: &ScaleCount,
) -> Vec<Step> {
    let _ = cfg;
    let have: Vec<&MachineRecord> = by_group
        .get(&sc.group)
        .map(|l| l.iter().copied().filter(|m| !m.spec.is_standby()).collect())
        .unwrap_or_default();
    let mut steps = Vec::new();
    if sc.count > have.len() {
        for _ in have.len()..sc.count {
            steps.push(Step::new(Action::Create, &sc.group));
        }
    } else {
        let mut doomed = have.clone();
        doomed.sort_by_key(|m| {
            (
                m.core.state == MachineState::Started,
                std::cmp::Reverse(m.created_at.clone()),
            )
        });
        for m in doomed.into_iter().take(have.len() - sc.count) {
            let mut s = Step::new(Action::Destroy, &sc.group);
            s.id = Some(m.id.to_string());
            s.from_version = Some(m.instance_id.clone());
            steps.push(s);
        }
    }
    steps
}
