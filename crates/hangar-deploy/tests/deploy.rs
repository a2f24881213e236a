//! The release executor over the real agent (SQLite store, runners) with
//! the fake runtime and image source: plans, strategies, release commands,
//! fail-fast health gating, rollback, the one-release-per-app lock.

use std::sync::Arc;
use std::time::Duration;

use hangar_agent::images::fake::FakeImages;
use hangar_agent::store::ReleaseRow;
use hangar_agent::{Agent, AgentConfig, AgentError, MachineRecord};
use hangar_core::release::{ReleaseReason, ReleaseStatus};
use hangar_core::{ExitInfo, MachineState};
use hangar_deploy::{Action, DeployError, Deployer, NewRelease, Options, Outcome, Step};
use hangar_runtime::fake::FakeRuntime;
use hangar_test_utils::wait_until;
use serde_json::{Value, json};

struct Env {
    _dir: tempfile::TempDir,
    rt: Arc<FakeRuntime>,
    agent: Agent,
    d: Deployer,
}

async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(FakeRuntime::new());
    let agent = Agent::open(
        AgentConfig::new(dir.path()),
        rt.clone(),
        Arc::new(FakeImages),
    )
    .await
    .unwrap();
    agent.create_app("shop", None, None).unwrap();
    let d = Deployer::new(agent.clone());
    Env {
        _dir: dir,
        rt,
        agent,
        d,
    }
}

const FLY_TOML: &str = r#"
app = "shop"
primary_region = "local"
[env]
  GREETING = "hello"
[processes]
  web = "web --port 8080"
  worker = "worker"
[http_service]
  internal_port = 8080
  processes = ["web"]
"#;

fn definition(text: &str) -> Value {
    hangar_appconfig::parse(text)
        .unwrap()
        .config
        .to_definition()
}

fn release(def: Value, image: &str) -> NewRelease {
    NewRelease {
        app: "shop".into(),
        definition: def,
        image: image.into(),
        options: Options::default(),
        reason: ReleaseReason::Deploy,
        user: "test".into(),
        description: String::new(),
        rollback_of: None,
    }
}

async fn finished(e: &Env, id: &str) -> ReleaseRow {
    wait_until(Duration::from_secs(20), "the release to finish", || async {
        let r = e.agent.get_release("shop", id).unwrap();
        r.status.is_finished().then_some(r)
    })
    .await
}

fn steps(r: &ReleaseRow) -> Vec<Step> {
    serde_json::from_value(r.machines.clone()).unwrap()
}

fn managed(e: &Env) -> Vec<MachineRecord> {
    let mut v: Vec<MachineRecord> = e
        .agent
        .list_machines("shop", false)
        .unwrap()
        .into_iter()
        .filter(hangar_deploy::plan::is_managed)
        .collect();
    v.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
    v
}

fn exit_code(code: i32) -> ExitInfo {
    ExitInfo {
        exit_code: code,
        exited_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64,
        ..ExitInfo::default()
    }
}

fn group(m: &MachineRecord) -> String {
    hangar_deploy::plan::group_of(m)
}

#[tokio::test]
async fn a_first_deploy_makes_each_group_and_a_second_rolls_them() {
    let e = env().await;
    let r1 =
        e.d.submit(release(definition(FLY_TOML), "shop-v1"))
            .unwrap();
    assert_eq!(r1.version, 1);
    let r1 = finished(&e, &r1.id).await;
    assert_eq!(r1.status, ReleaseStatus::Complete, "{:?}", r1.error);
    assert!(r1.image_digest.starts_with("sha256:"));
    let ms = managed(&e);
    // web: two (it has services); worker: one and a standby.
    let web: Vec<_> = ms.iter().filter(|m| group(m) == "web").collect();
    let worker: Vec<_> = ms.iter().filter(|m| group(m) == "worker").collect();
    assert_eq!((web.len(), worker.len()), (2, 2));
    for m in &web {
        assert_eq!(m.core.state, MachineState::Started);
        assert_eq!(m.config["env"]["GREETING"], "hello");
        assert_eq!(m.config["metadata"]["fly_release_version"], "1");
        assert_eq!(m.config["init"]["cmd"], json!(["web", "--port", "8080"]));
        assert!(
            m.config["image"].as_str().unwrap().contains("@sha256:"),
            "deployed by digest"
        );
    }
    let standby = worker
        .iter()
        .find(|m| m.spec.is_standby())
        .expect("a standby worker");
    assert_eq!(standby.core.state, MachineState::Stopped);

    // A second deploy changes env: every machine is updated, the standby
    // stays stopped, nothing is created.
    let def2 = definition(&FLY_TOML.replace("hello", "bonjour"));
    let r2 = e.d.submit(release(def2, "shop-v2")).unwrap();
    let r2 = finished(&e, &r2.id).await;
    assert_eq!(r2.status, ReleaseStatus::Complete, "{:?}", r2.error);
    assert_eq!(r2.version, 2);
    let s2 = steps(&r2);
    assert_eq!(s2.len(), 4);
    assert!(
        s2.iter()
            .all(|s| s.action == Action::Update && s.outcome == Outcome::Done)
    );
    assert!(s2.iter().all(|s| s.changes.contains(&"env".to_string())));
    let after = managed(&e);
    assert_eq!(after.len(), 4);
    for m in &after {
        assert_eq!(m.config["env"]["GREETING"], "bonjour");
        assert_eq!(m.config["metadata"]["fly_release_id"], r2.id.as_str());
    }
    let standby = after.iter().find(|m| m.spec.is_standby()).unwrap();
    assert_eq!(standby.core.state, MachineState::Stopped);
    assert!(
        r2.description.starts_with("v2 complete in"),
        "{}",
        r2.description
    );
    // Progress was recorded, in order.
    let events = e.agent.release_events(&r2.id, 0).unwrap();
    assert!(events.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
    assert!(events.last().unwrap().body["phase"] == "finished");
}

#[tokio::test]
async fn unmanaged_machines_are_never_touched() {
    let e = env().await;
    let loose = e
        .agent
        .create_machine(
            "shop",
            hangar_agent::NewMachine::new(
                hangar_core::spec::Parsed::new(json!({"image": "loose"})).unwrap(),
            ),
        )
        .await
        .unwrap();
    let r =
        e.d.submit(release(definition(FLY_TOML), "shop-v1"))
            .unwrap();
    let r = finished(&e, &r.id).await;
    assert_eq!(r.status, ReleaseStatus::Complete);
    let m = e.agent.get_machine("shop", loose.id.as_str()).unwrap();
    assert_eq!(m.instance_id, loose.instance_id);
    assert!(
        steps(&r)
            .iter()
            .all(|s| s.id.as_deref() != Some(loose.id.as_str()))
    );
}

#[tokio::test]
async fn one_release_at_a_time_per_app() {
    let e = env().await;
    // A release command that never ends keeps the first release running.
    let slow = format!("{FLY_TOML}\n[deploy]\nrelease_command = \"migrate\"\n");
    let r1 = e.d.submit(release(definition(&slow), "shop-v1")).unwrap();
    let err =
        e.d.submit(release(definition(FLY_TOML), "shop-v2"))
            .unwrap_err();
    match err {
        DeployError::Agent(AgentError::Conflict(m)) => {
            assert!(m.contains("release v1") && m.contains("--queue"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    // Cancelling it (before anything changed) ends it interrupted.
    wait_until(
        Duration::from_secs(10),
        "the release command machine",
        || async {
            e.agent
                .get_release("shop", &r1.id)
                .unwrap()
                .started_at
                .map(|_| ())
        },
    )
    .await;
    e.d.cancel("shop", "v1").unwrap();
    // The release command machine is stuck; its run ends when it is
    // destroyed by the cancel... or when it exits: make it exit.
    let rc = wait_until(
        Duration::from_secs(10),
        "the release command machine",
        || async {
            e.agent
                .list_machines("shop", false)
                .unwrap()
                .into_iter()
                .find(|m| group(m) == "fly_app_release_command")
        },
    )
    .await;
    e.rt.exit(&rc.id, exit_code(0));
    let r1 = finished(&e, &r1.id).await;
    assert_eq!(r1.status, ReleaseStatus::Interrupted, "{:?}", r1.error);
    // Now a new one may go.
    let r2 =
        e.d.submit(release(definition(FLY_TOML), "shop-v2"))
            .unwrap();
    assert_eq!(r2.version, 2);
    finished(&e, &r2.id).await;
}

#[tokio::test]
async fn a_failing_release_command_changes_nothing() {
    let e = env().await;
    let r1 =
        e.d.submit(release(definition(FLY_TOML), "shop-v1"))
            .unwrap();
    finished(&e, &r1.id).await;
    let before: Vec<String> = managed(&e).iter().map(|m| m.instance_id.clone()).collect();
    let text = format!(
        "{}\n[deploy]\nrelease_command = \"migrate --up\"\n",
        FLY_TOML.replace("hello", "changed")
    );
    let r2 = e.d.submit(release(definition(&text), "shop-v2")).unwrap();
    let rc = wait_until(
        Duration::from_secs(10),
        "the release command machine",
        || async {
            e.agent
                .list_machines("shop", false)
                .unwrap()
                .into_iter()
                .find(|m| {
                    group(m) == "fly_app_release_command" && m.core.state == MachineState::Started
                })
        },
    )
    .await;
    assert_eq!(rc.config["env"]["RELEASE_COMMAND"], "1");
    assert_eq!(rc.config["init"]["cmd"], json!(["migrate", "--up"]));
    e.rt.exit(&rc.id, exit_code(3));
    let r2 = finished(&e, &r2.id).await;
    assert_eq!(r2.status, ReleaseStatus::Failed);
    let err = r2.error.unwrap();
    assert!(
        err.contains("exit code 3") && err.contains("nothing was changed"),
        "{err}"
    );
    let after: Vec<String> = managed(&e).iter().map(|m| m.instance_id.clone()).collect();
    assert_eq!(before, after, "no app machine changed");
    // The release command's machine is gone.
    let m = e.agent.get_machine("shop", rc.id.as_str());
    assert!(m.is_err() || m.unwrap().core.state == MachineState::Destroyed);
}

#[tokio::test]
async fn a_release_that_crashes_fails_fast_and_rolls_back() {
    let e = env().await;
    let r1 =
        e.d.submit(release(definition(FLY_TOML), "shop-v1"))
            .unwrap();
    finished(&e, &r1.id).await;
    let before: Vec<(String, Value)> = managed(&e)
        .iter()
        .map(|m| (m.id.to_string(), m.config["env"].clone()))
        .collect();
    // Every start of the new release's machines fails.
    let watcher = {
        let rt = e.rt.clone();
        let agent = e.agent.clone();
        tokio::spawn(async move {
            // Crash whichever machine runs v2 as soon as it starts.
            loop {
                for m in agent.list_machines("shop", false).unwrap() {
                    if m.config["metadata"]["fly_release_version"] == "2"
                        && m.core.state == MachineState::Started
                        && rt.is_running(&m.id)
                    {
                        rt.exit(&m.id, exit_code(7));
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let mut rel = release(definition(&FLY_TOML.replace("hello", "broken")), "shop-v2");
    rel.options.wait_timeout_secs = Some(60.0);
    let started = std::time::Instant::now();
    let r2 = e.d.submit(rel).unwrap();
    let r2 = finished(&e, &r2.id).await;
    watcher.abort();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "failed fast, not after the 60 s wait"
    );
    assert_eq!(r2.status, ReleaseStatus::RolledBack, "{:?}", r2.error);
    let err = r2.error.clone().unwrap();
    assert!(err.contains("exited with code 7"), "{err}");
    let after: Vec<(String, Value)> = managed(&e)
        .iter()
        .map(|m| (m.id.to_string(), m.config["env"].clone()))
        .collect();
    assert_eq!(before, after, "every machine is back on its old config");
    let s = steps(&r2);
    assert!(s.iter().any(|s| s.outcome == Outcome::RolledBack));
    assert!(
        s.iter().any(|s| s.outcome == Outcome::Skipped),
        "the rest was not touched"
    );
    // No leases were left behind.
    for m in managed(&e) {
        assert!(e.agent.get_lease("shop", m.id.as_str()).unwrap().is_none());
    }
}

#[tokio::test]
async fn removed_groups_need_confirmation_and_bad_input_is_refused() {
    let e = env().await;
    let r1 =
        e.d.submit(release(definition(FLY_TOML), "shop-v1"))
            .unwrap();
    finished(&e, &r1.id).await;
    let only_web =
        "app = \"shop\"\n[processes]\nweb = \"web\"\n[http_service]\ninternal_port = 8080\n";
    let err =
        e.d.submit(release(definition(only_web), "shop-v2"))
            .unwrap_err()
            .to_string();
    assert!(err.contains("\"worker\"") && err.contains("--yes"), "{err}");
    let mut rel = release(definition(only_web), "shop-v2");
    rel.options.allow_destroy = true;
    let r2 = finished(&e, &e.d.submit(rel).unwrap().id).await;
    assert_eq!(r2.status, ReleaseStatus::Complete, "{:?}", r2.error);
    assert!(managed(&e).iter().all(|m| group(m) == "web"));
    assert_eq!(managed(&e).len(), 2);

    // Another app's fly.toml, bluegreen, bad options, missing image.
    let other =
        e.d.submit(release(definition("app = \"other\"\n"), "x"))
            .unwrap_err();
    assert!(other.to_string().contains("not \"shop\""), "{other}");
    let bg =
        e.d.submit(release(
            definition("[deploy]\nstrategy = \"bluegreen\"\n"),
            "x",
        ))
        .unwrap_err();
    assert!(bg.to_string().contains("bluegreen"), "{bg}");
    let mut bad = release(definition(FLY_TOML), "x");
    bad.options.max_unavailable = Some(-1.0);
    assert!(
        e.d.submit(bad)
            .unwrap_err()
            .to_string()
            .contains("max_unavailable")
    );
    assert!(e.d.submit(release(definition(FLY_TOML), " ")).is_err());
    // A missing image fails the release before any machine is touched.
    let before: Vec<String> = managed(&e).iter().map(|m| m.instance_id.clone()).collect();
    let r =
        e.d.submit(release(definition(only_web), "missing-image"))
            .unwrap();
    let r = finished(&e, &r.id).await;
    assert_eq!(r.status, ReleaseStatus::Failed);
    assert!(r.error.unwrap().contains("missing-image"));
    let after: Vec<String> = managed(&e).iter().map(|m| m.instance_id.clone()).collect();
    assert_eq!(before, after);
}

#[tokio::test]
async fn rollback_redeploys_an_earlier_release_by_digest() {
    let e = env().await;
    let r1 = finished(
        &e,
        &e.d.submit(release(definition(FLY_TOML), "shop-v1"))
            .unwrap()
            .id,
    )
    .await;
    let def2 = definition(&FLY_TOML.replace("hello", "v2"));
    finished(&e, &e.d.submit(release(def2, "shop-v2")).unwrap().id).await;
    let r3 = e.d.rollback("shop", "v1", "test").unwrap();
    assert_eq!(r3.reason, ReleaseReason::Rollback);
    assert_eq!(r3.rollback_of.as_deref(), Some(r1.id.as_str()));
    let r3 = finished(&e, &r3.id).await;
    assert_eq!(r3.status, ReleaseStatus::Complete, "{:?}", r3.error);
    for m in managed(&e) {
        assert_eq!(m.config["env"]["GREETING"], "hello");
        assert!(
            m.config["image"]
                .as_str()
                .unwrap()
                .ends_with(&r1.image_digest)
        );
    }
}

#[tokio::test]
async fn stopped_machines_stay_stopped_but_one_proves_the_release_boots() {
    let e = env().await;
    let text = "app = \"shop\"\n[http_service]\ninternal_port = 8080\n";
    finished(
        &e,
        &e.d.submit(release(definition(text), "shop-v1")).unwrap().id,
    )
    .await;
    for m in managed(&e) {
        e.agent
            .stop_machine("shop", m.id.as_str(), None, None, None)
            .await
            .unwrap();
        e.agent
            .wait_machine(
                "shop",
                m.id.as_str(),
                &[hangar_agent::WaitFor::State(MachineState::Stopped)],
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    let starts = e.rt.starts();
    let r = finished(
        &e,
        &e.d.submit(release(definition(text), "shop-v2")).unwrap().id,
    )
    .await;
    assert_eq!(r.status, ReleaseStatus::Complete, "{:?}", r.error);
    assert_eq!(e.rt.starts(), starts + 1, "exactly one machine was booted");
    for m in managed(&e) {
        assert_eq!(m.core.state, MachineState::Stopped);
        assert!(
            m.config["image"]
                .as_str()
                .unwrap()
                .starts_with("test/shop-v2@"),
            "{}",
            m.config["image"]
        );
    }
}

#[tokio::test]
async fn canary_and_immediate_strategies() {
    let e = env().await;
    finished(
        &e,
        &e.d.submit(release(definition(FLY_TOML), "shop-v1"))
            .unwrap()
            .id,
    )
    .await;
    let ids: Vec<String> = managed(&e).iter().map(|m| m.id.to_string()).collect();
    // Canary: an extra machine per group with started machines passes
    // first, and is gone afterwards.
    let mut rel = release(definition(&FLY_TOML.replace("hello", "canary")), "shop-v2");
    rel.options.strategy = Some("canary".into());
    let r = finished(&e, &e.d.submit(rel).unwrap().id).await;
    assert_eq!(r.status, ReleaseStatus::Complete, "{:?}", r.error);
    assert_eq!(r.strategy, "canary");
    let said: Vec<String> = e
        .agent
        .release_events(&r.id, 0)
        .unwrap()
        .into_iter()
        .map(|ev| ev.body["message"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        said.iter().filter(|m| m.contains("Canary passed")).count(),
        2,
        "{said:#?}"
    );
    let now: Vec<String> = managed(&e).iter().map(|m| m.id.to_string()).collect();
    assert_eq!(now, ids, "the canaries are gone, the machines the same");
    assert!(
        managed(&e)
            .iter()
            .all(|m| m.config["env"]["GREETING"] == "canary")
    );
    // A canary that fails stops the release before any machine changes,
    // and is gone too.
    let watcher = {
        let (rt, agent) = (e.rt.clone(), e.agent.clone());
        tokio::spawn(async move {
            loop {
                for m in agent.list_machines("shop", false).unwrap() {
                    if m.config["metadata"]["fly_canary"] == "true" && rt.is_running(&m.id) {
                        rt.exit(&m.id, exit_code(9));
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let before: Vec<String> = managed(&e).iter().map(|m| m.instance_id.clone()).collect();
    let mut rel = release(definition(&FLY_TOML.replace("hello", "bad")), "shop-v3");
    rel.options.strategy = Some("canary".into());
    let r = finished(&e, &e.d.submit(rel).unwrap().id).await;
    watcher.abort();
    assert_eq!(r.status, ReleaseStatus::Failed, "{:?}", r.error);
    assert!(
        r.error.as_deref().unwrap().contains("canary"),
        "{:?}",
        r.error
    );
    let after: Vec<String> = managed(&e).iter().map(|m| m.instance_id.clone()).collect();
    assert_eq!(before, after);
    assert!(
        e.agent
            .list_machines("shop", false)
            .unwrap()
            .iter()
            .all(|m| m.config["metadata"]["fly_canary"] != "true")
    );
    // Immediate: everything at once, no gating.
    let mut rel = release(definition(&FLY_TOML.replace("hello", "now")), "shop-v4");
    rel.options.strategy = Some("immediate".into());
    let r = finished(&e, &e.d.submit(rel).unwrap().id).await;
    assert_eq!(r.status, ReleaseStatus::Complete, "{:?}", r.error);
    assert!(
        managed(&e)
            .iter()
            .all(|m| m.config["env"]["GREETING"] == "now")
    );
}

#[tokio::test]
async fn a_secrets_change_is_a_release_that_restarts_the_managed_machines() {
    let e = env().await;
    // Nothing deployed yet: nothing to restart from.
    let err =
        e.d.restart("shop", ReleaseReason::Secrets, "test")
            .unwrap_err();
    assert!(err.to_string().contains("deploy it first"), "{err}");
    let r1 = finished(
        &e,
        &e.d.submit(release(definition(FLY_TOML), "shop-v1"))
            .unwrap()
            .id,
    )
    .await;
    let before: Vec<(String, String, MachineState)> = managed(&e)
        .iter()
        .map(|m| (m.id.to_string(), m.instance_id.clone(), m.core.state))
        .collect();
    let mut values = std::collections::BTreeMap::new();
    values.insert("API_KEY".to_string(), Some("s3cret".to_string()));
    e.agent.update_secrets("shop", values).unwrap();
    let r = e.d.restart("shop", ReleaseReason::Secrets, "test").unwrap();
    assert!(r.secrets_version > r1.secrets_version);
    let r = finished(&e, &r.id).await;
    assert_eq!(r.status, ReleaseStatus::Complete, "{:?}", r.error);
    assert_eq!(r.reason, ReleaseReason::Secrets);
    assert!(steps(&r).iter().all(|s| s.action == Action::Update));
    for (id, version, state) in before {
        let m = e.agent.get_machine("shop", &id).unwrap();
        assert_ne!(m.instance_id, version, "{id} got a new version");
        assert_eq!(
            m.core.state, state,
            "{id} is as it was (standbys stay stopped)"
        );
        assert_eq!(
            m.config["metadata"]["fly_release_version"],
            r.version.to_string()
        );
    }
}

#[tokio::test]
async fn mounts_get_volumes_that_machines_keep() {
    let e = env().await;
    let text = "app = \"shop\"\n[env]\nV = \"1\"\n[mounts]\nsource = \"data\"\ndestination = \"/data\"\ninitial_size = \"2gb\"\n";
    let r = finished(
        &e,
        &e.d.submit(release(definition(text), "db-v1")).unwrap().id,
    )
    .await;
    assert_eq!(r.status, ReleaseStatus::Complete, "{:?}", r.error);
    let ms = managed(&e);
    assert_eq!(ms.len(), 1, "a group with a volume gets no HA twin");
    let vols = e.agent.list_volumes("shop").unwrap();
    assert_eq!(vols.len(), 1);
    assert_eq!((vols[0].name.as_str(), vols[0].size_gb), ("data", 2));
    let vol = ms[0].config["mounts"][0]["volume"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(vol, vols[0].id);
    // The next deploy keeps the machine on its volume.
    let r = finished(
        &e,
        &e.d.submit(release(
            definition(&text.replace("\"1\"", "\"2\"")),
            "db-v2",
        ))
        .unwrap()
        .id,
    )
    .await;
    assert_eq!(r.status, ReleaseStatus::Complete, "{:?}", r.error);
    let m = &managed(&e)[0];
    assert_eq!(m.config["mounts"][0]["volume"], vol.as_str());
    assert_eq!(m.config["env"]["V"], "2");
    // A new volume name replaces the machine (a new one with a new volume,
    // then the old one goes; its volume stays), never re-mounts it; canary
    // and bluegreen are refused with volumes.
    let old_id = m.id.to_string();
    let other = definition(&text.replace("source = \"data\"", "source = \"other\""));
    let r = finished(&e, &e.d.submit(release(other, "db-v3")).unwrap().id).await;
    assert_eq!(r.status, ReleaseStatus::Complete, "{:?}", r.error);
    let ms = managed(&e);
    assert_eq!(ms.len(), 1);
    assert_ne!(ms[0].id.to_string(), old_id, "replaced");
    let vols = e.agent.list_volumes("shop").unwrap();
    let other = vols
        .iter()
        .find(|v| v.name == "other")
        .expect("a new volume");
    assert_eq!(ms[0].config["mounts"][0]["volume"], other.id.as_str());
    assert!(
        vols.iter().any(|v| v.name == "data"),
        "the old volume stays"
    );
    let mut rel = release(definition(text), "db-v3");
    rel.options.strategy = Some("canary".into());
    let err = e.d.submit(rel).unwrap_err();
    assert!(err.to_string().contains("refused with [mounts]"), "{err}");
    assert_eq!(e.agent.list_volumes("shop").unwrap().len(), 2);
}

#[tokio::test]
async fn bluegreen_replaces_every_machine_with_a_healthy_twin() {
    let e = env().await;
    // A check that is never probed (its grace period outlasts the test:
    // the fake runtime's machines have no address on this host, and tests
    // send nothing off it), so no green ever passes.
    let text = "app = \"shop\"\n[env]\nV = \"1\"\n[http_service]\ninternal_port = 8080\n[checks.alive]\ntype = \"tcp\"\nport = 8080\ngrace_period = \"1h\"\n";
    // Without a check, bluegreen is refused.
    let mut rel = release(definition(FLY_TOML), "shop-v1");
    rel.options.strategy = Some("bluegreen".into());
    let err = e.d.submit(rel).unwrap_err().to_string();
    assert!(err.contains("needs at least one health check"), "{err}");
    let first = "app = \"shop\"\n[env]\nV = \"1\"\n[http_service]\ninternal_port = 8080\n";
    finished(
        &e,
        &e.d.submit(release(definition(first), "shop-v1"))
            .unwrap()
            .id,
    )
    .await;
    let blues: Vec<String> = managed(&e).iter().map(|m| m.id.to_string()).collect();
    let mut rel = release(definition(&text.replace("\"1\"", "\"2\"")), "shop-v2");
    rel.options.strategy = Some("bluegreen".into());
    rel.options.wait_timeout_secs = Some(1.0);
    let plan = e.d.preview(&rel).unwrap();
    assert_eq!(
        plan.iter()
            .filter(|s| s.action == Action::Create && s.replaces.is_some())
            .count(),
        2
    );
    assert_eq!(
        plan.iter().filter(|s| s.action == Action::Destroy).count(),
        2
    );
    // The greens' checks never pass: the release fails before any green
    // goes into rotation; the greens are destroyed and the blues never
    // touched. (The real bluegreen, greens passing, is in the end-to-end
    // deploy test.)
    let r = finished(&e, &e.d.submit(rel).unwrap().id).await;
    let said: Vec<String> = e
        .agent
        .release_events(&r.id, 0)
        .unwrap()
        .into_iter()
        .map(|ev| ev.body["message"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        r.status,
        ReleaseStatus::RolledBack,
        "{:?} {said:#?} {:#?}",
        r.error,
        r.machines
    );
    assert!(
        r.error.as_deref().unwrap().contains("green"),
        "{:?}",
        r.error
    );
    let now: Vec<String> = managed(&e).iter().map(|m| m.id.to_string()).collect();
    assert_eq!(now, blues);
    for m in managed(&e) {
        assert_eq!(m.core.state, MachineState::Started);
        assert!(!m.cordoned);
        assert_eq!(m.config["env"]["V"], "1");
    }
}

#[tokio::test]
async fn a_queued_deploy_waits_its_turn() {
    let e = env().await;
    let slow = format!("{FLY_TOML}\n[deploy]\nrelease_command = \"migrate\"\n");
    let r1 = e.d.submit(release(definition(&slow), "shop-v1")).unwrap();
    let mut queued = release(definition(&FLY_TOML.replace("hello", "queued")), "shop-v2");
    queued.options.queue = true;
    let r2 = e.d.submit(queued).unwrap();
    assert_eq!(r2.version, 2);
    // r2 waits while r1's release command runs.
    let rc = wait_until(
        Duration::from_secs(10),
        "the release command machine",
        || async {
            e.agent
                .list_machines("shop", false)
                .unwrap()
                .into_iter()
                .find(|m| {
                    group(m) == "fly_app_release_command" && m.core.state == MachineState::Started
                })
        },
    )
    .await;
    wait_until(
        Duration::from_secs(10),
        "r2 to say it is queued",
        || async {
            e.agent
                .release_events(&r2.id, 0)
                .unwrap()
                .iter()
                .any(|ev| ev.body["phase"] == "queued")
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        e.agent.get_release("shop", &r2.id).unwrap().status,
        ReleaseStatus::Pending
    );
    e.rt.exit(&rc.id, exit_code(0));
    let r1 = finished(&e, &r1.id).await;
    assert_eq!(r1.status, ReleaseStatus::Complete, "{:?}", r1.error);
    let r2 = finished(&e, &r2.id).await;
    assert_eq!(r2.status, ReleaseStatus::Complete, "{:?}", r2.error);
    assert!(r2.started_at.unwrap() >= r1.finished_at.unwrap());
    assert!(
        managed(&e)
            .iter()
            .all(|m| m.config["env"]["GREETING"] == "queued")
    );
}

#[tokio::test]
async fn scale_count_and_vm_are_releases_of_the_current_definition() {
    let e = env().await;
    let web = |e: &Env| -> Vec<MachineRecord> {
        managed(e)
            .into_iter()
            .filter(|m| group(m) == "web")
            .collect()
    };
    finished(
        &e,
        &e.d.submit(release(definition(FLY_TOML), "shop-v1"))
            .unwrap()
            .id,
    )
    .await;
    assert_eq!(web(&e).len(), 2);
    let r = finished(&e, &e.d.scale_count("shop", "web", 4, "test").unwrap().id).await;
    assert_eq!(r.status, ReleaseStatus::Complete, "{:?}", r.error);
    assert_eq!(r.reason, ReleaseReason::Scale);
    let ms = web(&e);
    assert_eq!(ms.len(), 4);
    assert!(
        ms.iter().all(
            |m| m.config["env"]["GREETING"] == "hello" && m.core.state == MachineState::Started
        )
    );
    // Down to one: the worker group is untouched.
    let workers = managed(&e).iter().filter(|m| group(m) == "worker").count();
    let r = finished(&e, &e.d.scale_count("shop", "web", 1, "test").unwrap().id).await;
    assert_eq!(r.status, ReleaseStatus::Complete, "{:?}", r.error);
    assert_eq!(web(&e).len(), 1);
    assert_eq!(
        managed(&e).iter().filter(|m| group(m) == "worker").count(),
        workers
    );
    // A size for the web group only, rolled; a later deploy keeps it.
    let r =
        e.d.scale_vm(
            "shop",
            json!({"cpu_kind": "shared", "cpus": 2, "memory_mb": 1024}),
            vec!["web".into()],
            "test",
        )
        .unwrap();
    let r = finished(&e, &r.id).await;
    assert_eq!(r.status, ReleaseStatus::Complete, "{:?}", r.error);
    assert_eq!(web(&e)[0].config["guest"]["memory_mb"], 1024);
    assert!(
        managed(&e)
            .iter()
            .filter(|m| group(m) == "worker")
            .all(|m| m.config["guest"]["memory_mb"] != 1024)
    );
    finished(
        &e,
        &e.d.submit(release(
            definition(&FLY_TOML.replace("hello", "again")),
            "shop-v2",
        ))
        .unwrap()
        .id,
    )
    .await;
    assert_eq!(
        web(&e)[0].config["guest"]["memory_mb"],
        1024,
        "deploy keeps the machine's guest without [vm]"
    );
    // Scaling up again clones that size.
    finished(&e, &e.d.scale_count("shop", "web", 2, "test").unwrap().id).await;
    assert!(
        web(&e)
            .iter()
            .all(|m| m.config["guest"]["memory_mb"] == 1024)
    );
    assert!(e.d.scale_count("shop", "web", 1000, "test").is_err());
}
