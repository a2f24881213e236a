//! The agent with its real SQLite store and runners, over the fake runtime
//! and an in-memory image source: lifecycle, policies, failures, recovery.

use std::sync::Arc;
use std::time::Duration;

use hangar_agent::images::fake::FakeImages;
use hangar_agent::{Agent, AgentConfig, AgentError, NewMachine, WaitFor};
use hangar_core::machine::Observed;
use hangar_core::spec::Parsed;
use hangar_core::{ExitInfo, MachineState, Signal};
use hangar_runtime::fake::{Call, FakeRuntime};

struct Env {
    dir: tempfile::TempDir,
    rt: Arc<FakeRuntime>,
    agent: Agent,
}

async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(FakeRuntime::new());
    let agent = open(&dir, &rt).await;
    agent.create_app("app", None, None).unwrap();
    Env { dir, rt, agent }
}

async fn open(dir: &tempfile::TempDir, rt: &Arc<FakeRuntime>) -> Agent {
    Agent::open(
        AgentConfig::new(dir.path()),
        rt.clone(),
        Arc::new(FakeImages),
    )
    .await
    .unwrap()
}

fn config(v: serde_json::Value) -> Parsed {
    Parsed::new(v).unwrap()
}

fn new_machine(v: serde_json::Value) -> NewMachine {
    NewMachine::new(config(v))
}

async fn wait(agent: &Agent, id: &str, state: MachineState) {
    agent
        .wait_machine("app", id, &[WaitFor::State(state)], Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("waiting for {state}: {e}"));
}

fn kinds(agent: &Agent, id: &str) -> Vec<(String, String)> {
    let mut v: Vec<_> = agent
        .machine_events("app", id, 50)
        .unwrap()
        .into_iter()
        .map(|e| (e.kind, e.status))
        .collect();
    v.reverse();
    v
}

fn ev(k: &str, s: &str) -> (String, String) {
    (k.into(), s.into())
}

#[tokio::test]
async fn a_new_machine_is_wired_while_its_image_resolves_and_starts_after() {
    let e = env().await;
    // The wiring takes longer than the (instant) image: the start waits.
    e.rt.set_wire_delay(Duration::from_millis(150));
    let m = e
        .agent
        .create_machine("app", new_machine(serde_json::json!({"image": "busybox"})))
        .await
        .unwrap();
    wait(&e.agent, m.id.as_str(), MachineState::Started).await;
    let calls = e.rt.calls();
    let at = |want: &dyn Fn(&Call) -> bool| calls.iter().position(want).unwrap();
    let began = at(&|c| *c == Call::PrepareNetwork(m.id.clone()));
    let done = at(&|c| *c == Call::NetworkPrepared(m.id.clone()));
    let started = at(&|c| matches!(c, Call::Start(s) if s.id == m.id));
    assert!(began < done && done < started, "{calls:?}");

    // Its next start has the image at hand: nothing is wired ahead.
    e.agent
        .stop_machine("app", m.id.as_str(), None, None, None)
        .await
        .unwrap();
    wait(&e.agent, m.id.as_str(), MachineState::Stopped).await;
    e.agent
        .start_machine("app", m.id.as_str(), None)
        .await
        .unwrap();
    wait(&e.agent, m.id.as_str(), MachineState::Started).await;
    let wired =
        e.rt.calls()
            .iter()
            .filter(|c| **c == Call::PrepareNetwork(m.id.clone()))
            .count();
    assert_eq!(wired, 1);
}

#[tokio::test]
async fn create_starts_and_stop_stops() {
    let e = env().await;
    let m = e
        .agent
        .create_machine(
            "app",
            new_machine(serde_json::json!({"image": "busybox", "env": {"A": "1"}})),
        )
        .await
        .unwrap();
    assert_eq!(m.core.state, MachineState::Created);
    // Visible the instant create returns.
    assert_eq!(
        e.agent.get_machine("app", m.id.as_str()).unwrap().name,
        m.name
    );
    wait(&e.agent, m.id.as_str(), MachineState::Started).await;
    let spec =
        e.rt.calls()
            .into_iter()
            .find_map(|c| match c {
                Call::Start(s) => Some(s),
                _ => None,
            })
            .unwrap();
    assert_eq!(spec.process.argv, vec!["/bin/sh"]);
    assert!(spec.process.env.contains(&("A".into(), "1".into())));
    assert!(
        spec.process
            .env
            .contains(&("FLY_MACHINE_ID".into(), m.id.to_string()))
    );
    assert_eq!(spec.resources.memory_mb, 256);
    let got = e.agent.get_machine("app", m.id.as_str()).unwrap();
    assert_eq!(
        got.image_ref.unwrap().digest,
        format!("sha256:{}", "a".repeat(64))
    );

    let prev = e
        .agent
        .stop_machine("app", m.id.as_str(), None, None, None)
        .await
        .unwrap();
    assert_eq!(prev, MachineState::Started);
    wait(&e.agent, m.id.as_str(), MachineState::Stopped).await;
    assert!(
        e.rt.calls()
            .contains(&Call::Signal(m.id.clone(), Signal::Int))
    );
    assert_eq!(
        kinds(&e.agent, m.id.as_str()),
        vec![
            ev("launch", "created"),
            ev("start", "started"),
            ev("stop", "stopping"),
            ev("exit", "stopped")
        ]
    );
    let exit = &e.agent.machine_events("app", m.id.as_str(), 1).unwrap()[0];
    let x = &exit.request.as_ref().unwrap()["exit_event"];
    assert_eq!(x["requested_stop"], true);
    assert_eq!(x["exit_code"], 130);

    // And start again.
    assert_eq!(
        e.agent
            .start_machine("app", m.id.as_str(), None)
            .await
            .unwrap(),
        MachineState::Stopped
    );
    wait(&e.agent, m.id.as_str(), MachineState::Started).await;
    assert_eq!(e.rt.starts(), 2);
}

#[tokio::test(start_paused = true)]
async fn stop_kills_after_the_timeout() {
    let e = env().await;
    let m = e
        .agent
        .create_machine(
            "app",
            new_machine(serde_json::json!({
                "image": "busybox", "stop_config": {"signal": "SIGTERM", "timeout": "30s"}
            })),
        )
        .await
        .unwrap();
    wait(&e.agent, m.id.as_str(), MachineState::Started).await;
    e.rt.ignore_signals(&m.id);
    e.agent
        .stop_machine("app", m.id.as_str(), None, None, None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(29)).await;
    assert_eq!(
        e.agent
            .get_machine("app", m.id.as_str())
            .unwrap()
            .core
            .state,
        MachineState::Stopping
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    wait(&e.agent, m.id.as_str(), MachineState::Stopped).await;
    let signals: Vec<Signal> =
        e.rt.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Signal(_, s) => Some(s),
                _ => None,
            })
            .collect();
    assert_eq!(signals, vec![Signal::Term, Signal::Kill]);
}

#[tokio::test(start_paused = true)]
async fn on_failure_restarts_then_gives_up() {
    let e = env().await;
    let m = e
        .agent
        .create_machine(
            "app",
            new_machine(serde_json::json!({
                "image": "busybox", "restart": {"policy": "on-failure", "max_retries": 2}
            })),
        )
        .await
        .unwrap();
    for n in 0..3 {
        wait(&e.agent, m.id.as_str(), MachineState::Started).await;
        assert_eq!(e.rt.starts(), n + 1);
        e.rt.exit(
            &m.id,
            ExitInfo {
                exit_code: 1,
                exited_at_ms: 1,
                ..ExitInfo::default()
            },
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    wait(&e.agent, m.id.as_str(), MachineState::Stopped).await;
    let last = &e.agent.machine_events("app", m.id.as_str(), 1).unwrap()[0];
    assert_eq!(
        last.request.as_ref().unwrap()["message"],
        "machine has reached its max restart count (2)"
    );
    assert_eq!(last.request.as_ref().unwrap()["restart_count"], 2);
}

#[tokio::test]
async fn skip_launch_settles_stopped_then_starts() {
    let e = env().await;
    let mut nm = new_machine(serde_json::json!({"image": "busybox"}));
    nm.skip_launch = true;
    let m = e.agent.create_machine("app", nm).await.unwrap();
    wait(&e.agent, m.id.as_str(), MachineState::Stopped).await;
    assert_eq!(e.rt.starts(), 0);
    e.agent
        .start_machine("app", m.id.as_str(), None)
        .await
        .unwrap();
    wait(&e.agent, m.id.as_str(), MachineState::Started).await;
}

#[tokio::test]
async fn destroy_needs_force_while_running() {
    let e = env().await;
    let m = e
        .agent
        .create_machine("app", new_machine(serde_json::json!({"image": "busybox"})))
        .await
        .unwrap();
    wait(&e.agent, m.id.as_str(), MachineState::Started).await;
    let err = e
        .agent
        .destroy_machine("app", m.id.as_str(), false, None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, AgentError::Precondition(ref s) if s.contains("not currently stopped")),
        "{err}"
    );
    e.agent
        .destroy_machine("app", m.id.as_str(), true, None)
        .await
        .unwrap();
    wait(&e.agent, m.id.as_str(), MachineState::Destroyed).await;
    assert!(e.rt.calls().contains(&Call::Destroy(m.id.clone())));
    // Waiting for destroyed on a destroyed machine succeeds; starting it is refused.
    wait(&e.agent, m.id.as_str(), MachineState::Destroyed).await;
    let err = e
        .agent
        .start_machine("app", m.id.as_str(), None)
        .await
        .unwrap_err();
    assert!(matches!(err, AgentError::Precondition(_)), "{err}");
    assert!(e.agent.list_machines("app", false).unwrap().is_empty());
    assert_eq!(e.agent.list_machines("app", true).unwrap().len(), 1);
}

#[tokio::test]
async fn pull_failure_fails_the_machine() {
    let e = env().await;
    let m = e
        .agent
        .create_machine(
            "app",
            new_machine(serde_json::json!({"image": "missing/image"})),
        )
        .await
        .unwrap();
    wait(&e.agent, m.id.as_str(), MachineState::Failed).await;
    let last = &e.agent.machine_events("app", m.id.as_str(), 1).unwrap()[0];
    assert_eq!(
        (last.kind.as_str(), last.status.as_str()),
        ("launch", "failed")
    );
    // Waiting for `started` fails at once, with the reason.
    let err = e
        .agent
        .wait_machine(
            "app",
            m.id.as_str(),
            &[WaitFor::State(MachineState::Started)],
            Duration::from_secs(30),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, AgentError::Precondition(ref s) if s.contains("failed") && s.contains("not found")),
        "{err}"
    );
    assert!(
        last.request.as_ref().unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("not found")
    );
    // A failed machine can be destroyed without force.
    e.agent
        .destroy_machine("app", m.id.as_str(), false, None)
        .await
        .unwrap();
    wait(&e.agent, m.id.as_str(), MachineState::Destroyed).await;
}

#[tokio::test]
async fn start_failure_fails_the_machine() {
    let e = env().await;
    e.rt.fail_next_start("crun exploded");
    let m = e
        .agent
        .create_machine("app", new_machine(serde_json::json!({"image": "busybox"})))
        .await
        .unwrap();
    wait(&e.agent, m.id.as_str(), MachineState::Failed).await;
    e.agent
        .start_machine("app", m.id.as_str(), None)
        .await
        .unwrap();
    wait(&e.agent, m.id.as_str(), MachineState::Started).await;
}

#[tokio::test]
async fn auto_destroy_destroys_after_exit() {
    let e = env().await;
    let m = e
        .agent
        .create_machine(
            "app",
            new_machine(serde_json::json!({
                "image": "busybox", "auto_destroy": true, "restart": {"policy": "no"}
            })),
        )
        .await
        .unwrap();
    wait(&e.agent, m.id.as_str(), MachineState::Started).await;
    e.rt.exit(
        &m.id,
        ExitInfo {
            exit_code: 0,
            exited_at_ms: 1,
            ..ExitInfo::default()
        },
    );
    wait(&e.agent, m.id.as_str(), MachineState::Destroyed).await;
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let e = env().await;
    let err = e
        .agent
        .create_machine("nope", new_machine(serde_json::json!({"image": "x"})))
        .await
        .unwrap_err();
    assert!(matches!(err, AgentError::NotFound(_)), "{err}");
    // Configs are parsed once, at the edge: a bad one never reaches the agent.
    let err = Parsed::new(serde_json::json!({})).unwrap_err();
    assert_eq!(err.to_string(), "config.image is required");
    let err = e
        .agent
        .create_machine(
            "app",
            new_machine(serde_json::json!({"image": "has space"})),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, AgentError::InvalidArgument(_)), "{err}");
    let mut nm = new_machine(serde_json::json!({"image": "x"}));
    nm.region = Some("ams".into());
    let err = e.agent.create_machine("app", nm).await.unwrap_err();
    assert!(
        matches!(err, AgentError::Unprocessable(ref s) if s.contains("ams")),
        "{err}"
    );
    let mut nm = new_machine(serde_json::json!({"image": "x"}));
    nm.name = Some("../etc".into());
    assert!(matches!(
        e.agent.create_machine("app", nm).await,
        Err(AgentError::InvalidArgument(_))
    ));
    let mut nm = new_machine(serde_json::json!({"image": "x"}));
    nm.name = Some("web".into());
    e.agent.create_machine("app", nm.clone()).await.unwrap();
    assert!(matches!(
        e.agent.create_machine("app", nm).await,
        Err(AgentError::Conflict(_))
    ));
    assert!(matches!(
        e.agent.get_machine("app", "00000000000000"),
        Err(AgentError::NotFound(_))
    ));
    assert!(matches!(
        e.agent.create_app("app", None, None),
        Err(AgentError::Conflict(_))
    ));
    assert!(matches!(
        e.agent.create_app("Bad_Name", None, None),
        Err(AgentError::InvalidArgument(_))
    ));
    let err = e.agent.delete_app("app", false).await.unwrap_err();
    assert!(matches!(err, AgentError::Precondition(_)), "{err}");
}

#[tokio::test(start_paused = true)]
async fn wait_times_out_with_fly_message() {
    let e = env().await;
    let mut nm = new_machine(serde_json::json!({"image": "busybox"}));
    nm.skip_launch = true;
    let m = e.agent.create_machine("app", nm).await.unwrap();
    let err = e
        .agent
        .wait_machine(
            "app",
            m.id.as_str(),
            &[WaitFor::State(MachineState::Started)],
            Duration::from_secs(3),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AgentError::Timeout(m) if m == "deadline_exceeded: machine failed to reach desired state, started, currently stopped"),
        "{err:?}"
    );
}

#[tokio::test]
async fn restart_of_hangard_adopts_and_records_missed_exits() {
    let e = env().await;
    let a = e
        .agent
        .create_machine("app", new_machine(serde_json::json!({"image": "busybox"})))
        .await
        .unwrap();
    let b = e
        .agent
        .create_machine(
            "app",
            new_machine(serde_json::json!({"image": "busybox", "restart": {"policy": "no"}})),
        )
        .await
        .unwrap();
    wait(&e.agent, a.id.as_str(), MachineState::Started).await;
    wait(&e.agent, b.id.as_str(), MachineState::Started).await;
    e.agent.shutdown().await;
    drop(e.agent);

    // While hangard is away, `b` exits.
    e.rt.set_observed(
        &b.id,
        Observed::Exited(ExitInfo {
            exit_code: 3,
            exited_at_ms: 1,
            ..ExitInfo::default()
        }),
    );
    let agent = open(&e.dir, &e.rt).await;
    wait(&agent, b.id.as_str(), MachineState::Stopped).await;
    let last = &agent.machine_events("app", b.id.as_str(), 1).unwrap()[0];
    assert_eq!(last.kind, "exit");
    assert_eq!(last.request.as_ref().unwrap()["exit_event"]["exit_code"], 3);
    // `a` is adopted as it runs: no new start.
    wait(&agent, a.id.as_str(), MachineState::Started).await;
    assert_eq!(e.rt.starts(), 2);
    agent
        .stop_machine("app", a.id.as_str(), None, None, None)
        .await
        .unwrap();
    wait(&agent, a.id.as_str(), MachineState::Stopped).await;
}

/// A machine's checks follow its state: a started machine with checks
/// has them (waiting, then probed), one without checks or not started has
/// none, and a new hangard finds them again for a machine it adopts.
#[tokio::test]
async fn checks_follow_the_machine_through_stops_and_restarts_of_hangard() {
    let e = env().await;
    let cfg = serde_json::json!({
        "image": "busybox",
        "checks": {"alive": {"type": "tcp", "port": 8080, "interval": "15s", "grace_period": "10s"}}
    });
    let m = e
        .agent
        .create_machine("app", new_machine(cfg))
        .await
        .unwrap();
    let plain = e
        .agent
        .create_machine("app", new_machine(serde_json::json!({"image": "busybox"})))
        .await
        .unwrap();
    let id = m.id.as_str();
    wait(&e.agent, id, MachineState::Started).await;
    wait(&e.agent, plain.id.as_str(), MachineState::Started).await;
    let names = |agent: &Agent, id: &str| -> Vec<String> {
        agent.checks(id).into_iter().map(|c| c.name).collect()
    };
    assert_eq!(names(&e.agent, id), vec!["alive"]);
    assert!(e.agent.checks(plain.id.as_str()).is_empty());
    let generation = e.agent.checks_generation();

    e.agent
        .stop_machine("app", id, None, None, None)
        .await
        .unwrap();
    wait(&e.agent, id, MachineState::Stopped).await;
    assert!(e.agent.checks(id).is_empty());
    assert!(
        e.agent.checks_generation() > generation,
        "a machine left the checks"
    );
    e.agent.start_machine("app", id, None).await.unwrap();
    wait(&e.agent, id, MachineState::Started).await;
    assert_eq!(names(&e.agent, id), vec!["alive"]);

    e.agent.shutdown().await;
    drop(e.agent);
    let agent = open(&e.dir, &e.rt).await;
    wait(&agent, id, MachineState::Started).await;
    // The machine's task follows it as it resumes.
    hangar_test_utils::wait_until(
        Duration::from_secs(5),
        "the adopted machine's checks",
        || {
            let got = names(&agent, id);
            async move { (got == ["alive"]).then_some(()) }
        },
    )
    .await;
    assert!(agent.checks(plain.id.as_str()).is_empty());
}

#[tokio::test]
async fn app_delete_with_force_destroys_machines() {
    let e = env().await;
    let m = e
        .agent
        .create_machine("app", new_machine(serde_json::json!({"image": "busybox"})))
        .await
        .unwrap();
    wait(&e.agent, m.id.as_str(), MachineState::Started).await;
    e.agent.delete_app("app", true).await.unwrap();
    assert!(matches!(
        e.agent.get_app("app"),
        Err(AgentError::NotFound(_))
    ));
    assert!(!e.rt.is_running(&m.id));
}

#[tokio::test]
async fn wait_sees_a_state_that_came_and_went() {
    let e = env().await;
    let mut nm = new_machine(serde_json::json!({"image": "busybox", "restart": {"policy": "no"}}));
    nm.skip_launch = true;
    let m = e.agent.create_machine("app", nm).await.unwrap();
    wait(&e.agent, m.id.as_str(), MachineState::Stopped).await;
    let agent = e.agent.clone();
    let id = m.id.to_string();
    let waiter = tokio::spawn(async move {
        agent
            .wait_machine(
                "app",
                &id,
                &[WaitFor::State(MachineState::Started)],
                Duration::from_secs(10),
            )
            .await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    e.agent
        .start_machine("app", m.id.as_str(), None)
        .await
        .unwrap();
    // Exit the instant it starts: the waiter may only ever see `stopped`.
    for _ in 0..500 {
        if e.rt.is_running(&m.id) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    e.rt.exit(
        &m.id,
        ExitInfo {
            exit_code: 0,
            exited_at_ms: 1,
            ..ExitInfo::default()
        },
    );
    let st = waiter.await.unwrap().unwrap();
    assert_eq!(st.state, MachineState::Started);
}

#[tokio::test]
async fn update_replaces_a_running_machine_with_a_new_version() {
    let e = env().await;
    let m = e
        .agent
        .create_machine(
            "app",
            new_machine(serde_json::json!({"image": "busybox", "env": {"V": "1"}})),
        )
        .await
        .unwrap();
    wait(&e.agent, m.id.as_str(), MachineState::Started).await;
    let upd = |v: &str, current: Option<String>, skip: bool| hangar_agent::UpdateMachine {
        current_version: current,
        skip_launch: skip,
        ..hangar_agent::UpdateMachine::new(config(
            serde_json::json!({"image": "busybox", "env": {"V": v}}),
        ))
    };
    // A stale current_version is refused.
    let err = e
        .agent
        .update_machine(
            "app",
            m.id.as_str(),
            upd("2", Some("01ARZ3NDEKTSV4RRFFQ69G5FAV".into()), false),
            None,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, AgentError::Precondition(ref s) if s.contains("version mismatch")),
        "{err}"
    );

    let updated = e
        .agent
        .update_machine(
            "app",
            m.id.as_str(),
            upd("2", Some(m.instance_id.clone()), false),
            None,
        )
        .await
        .unwrap();
    assert_ne!(updated.instance_id, m.instance_id);
    assert_eq!(updated.config["env"]["V"], "2");
    assert_eq!(updated.spec.env["V"], "2");
    wait(&e.agent, m.id.as_str(), MachineState::Started).await;
    let specs: Vec<_> =
        e.rt.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Start(s) => Some(s),
                _ => None,
            })
            .collect();
    assert_eq!(specs.len(), 2);
    assert!(specs[1].process.env.contains(&("V".into(), "2".into())));
    assert!(
        specs[1]
            .process
            .env
            .contains(&("FLY_MACHINE_VERSION".into(), updated.instance_id.clone()))
    );
    let versions = e.agent.machine_versions("app", m.id.as_str()).unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[0].0, updated.instance_id);
    let kinds = kinds(&e.agent, m.id.as_str());
    assert!(kinds.contains(&ev("update", "replacing")), "{kinds:?}");

    // skip_launch: the new version rests stopped.
    e.agent
        .update_machine("app", m.id.as_str(), upd("3", None, true), None)
        .await
        .unwrap();
    wait(&e.agent, m.id.as_str(), MachineState::Stopped).await;
    assert_eq!(e.rt.starts(), 2);
    // Names cannot change.
    let mut bad = upd("4", None, false);
    bad.name = Some("other".into());
    assert!(matches!(
        e.agent
            .update_machine("app", m.id.as_str(), bad, None)
            .await,
        Err(AgentError::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn restart_suspend_and_signal() {
    let e = env().await;
    let m = e
        .agent
        .create_machine("app", new_machine(serde_json::json!({"image": "busybox"})))
        .await
        .unwrap();
    let id = m.id.as_str();
    wait(&e.agent, id, MachineState::Started).await;
    e.agent
        .restart_machine("app", id, Some(Signal::Term), None, None)
        .await
        .unwrap();
    wait(&e.agent, id, MachineState::Started).await;
    assert_eq!(e.rt.starts(), 2);

    e.rt.ignore_signals(&m.id);
    e.agent
        .signal_machine("app", id, Signal::Usr1)
        .await
        .unwrap();
    assert!(
        e.rt.calls()
            .contains(&Call::Signal(m.id.clone(), Signal::Usr1))
    );

    e.agent.suspend_machine("app", id, None).await.unwrap();
    wait(&e.agent, id, MachineState::Suspended).await;
    assert!(e.rt.calls().contains(&Call::Freeze(m.id.clone())));
    e.agent.start_machine("app", id, None).await.unwrap();
    wait(&e.agent, id, MachineState::Started).await;
    assert!(e.rt.calls().contains(&Call::Thaw(m.id.clone())));
    assert_eq!(e.rt.starts(), 2, "a resume is not a new start");

    e.agent
        .stop_machine("app", id, None, None, None)
        .await
        .unwrap();
    // The machine ignores signals now: SIGKILL after the timeout.
    wait(&e.agent, id, MachineState::Stopped).await;
    let err = e
        .agent
        .signal_machine("app", id, Signal::Usr1)
        .await
        .unwrap_err();
    assert!(
        matches!(err, AgentError::Precondition(ref s) if s.contains("not running")),
        "{err}"
    );
}

#[tokio::test]
async fn leases_guard_mutations() {
    let e = env().await;
    let m = e
        .agent
        .create_machine("app", new_machine(serde_json::json!({"image": "busybox"})))
        .await
        .unwrap();
    let id = m.id.as_str();
    wait(&e.agent, id, MachineState::Started).await;
    let (lease, new) = e
        .agent
        .acquire_lease("app", id, Duration::from_secs(30), "deploy", "alice", None)
        .unwrap();
    assert!(new && lease.nonce.len() == 12);
    // Someone else cannot take it, nor act without the nonce.
    assert!(matches!(
        e.agent
            .acquire_lease("app", id, Duration::from_secs(30), "", "bob", None),
        Err(AgentError::Conflict(_))
    ));
    let err = e
        .agent
        .stop_machine("app", id, None, None, None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, AgentError::Conflict(ref s) if s.contains("fly-machine-lease-nonce")),
        "{err}"
    );
    assert!(matches!(
        e.agent.cordon_machine("app", id, true, Some("wrong")),
        Err(AgentError::Conflict(_))
    ));
    // With the nonce it works, and the holder can refresh it.
    e.agent
        .cordon_machine("app", id, true, Some(&lease.nonce))
        .unwrap();
    assert!(e.agent.get_machine("app", id).unwrap().cordoned);
    let (refreshed, new) = e
        .agent
        .acquire_lease(
            "app",
            id,
            Duration::from_secs(60),
            "",
            "alice",
            Some(&lease.nonce),
        )
        .unwrap();
    assert!(!new && refreshed.expires_at > lease.expires_at);
    // A forced destroy ignores the lease; a plain one does not.
    assert!(matches!(
        e.agent.destroy_machine("app", id, false, None).await,
        Err(AgentError::Conflict(_))
    ));
    assert!(matches!(
        e.agent.release_lease("app", id, None),
        Err(AgentError::InvalidArgument(_))
    ));
    e.agent
        .release_lease("app", id, Some(&lease.nonce))
        .unwrap();
    assert!(e.agent.get_lease("app", id).unwrap().is_none());
    assert!(matches!(
        e.agent.release_lease("app", id, Some(&lease.nonce)),
        Err(AgentError::NotFound(_))
    ));
    e.agent
        .acquire_lease("app", id, Duration::from_secs(30), "", "bob", None)
        .unwrap();
    e.agent
        .destroy_machine("app", id, true, None)
        .await
        .unwrap();
    wait(&e.agent, id, MachineState::Destroyed).await;
}

#[tokio::test]
async fn metadata_changes_without_a_new_version() {
    let e = env().await;
    let m = e
        .agent
        .create_machine(
            "app",
            new_machine(serde_json::json!({"image": "busybox", "metadata": {"a": "1"}})),
        )
        .await
        .unwrap();
    let id = m.id.as_str();
    let mut changes = std::collections::BTreeMap::new();
    changes.insert("b".to_string(), Some("2".to_string()));
    changes.insert("a".to_string(), None);
    e.agent
        .update_metadata("app", id, changes.clone(), Some(&m.instance_id))
        .await
        .unwrap();
    let md = e.agent.get_metadata("app", id).unwrap();
    assert_eq!(
        md.into_iter().collect::<Vec<_>>(),
        vec![("b".to_string(), "2".to_string())]
    );
    assert_eq!(
        e.agent.get_machine("app", id).unwrap().instance_id,
        m.instance_id
    );
    let err = e
        .agent
        .update_metadata("app", id, changes, Some("01ARZ3NDEKTSV4RRFFQ69G5FAV"))
        .await
        .unwrap_err();
    assert!(matches!(err, AgentError::Precondition(_)), "{err}");
    // It reaches the process at the next start.
    wait(&e.agent, id, MachineState::Started).await;
    let mut pg = std::collections::BTreeMap::new();
    pg.insert("fly_process_group".to_string(), Some("worker".to_string()));
    e.agent.update_metadata("app", id, pg, None).await.unwrap();
    e.agent
        .restart_machine("app", id, None, None, None)
        .await
        .unwrap();
    wait(&e.agent, id, MachineState::Started).await;
    let last =
        e.rt.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Start(s) => Some(s),
                _ => None,
            })
            .next_back()
            .unwrap();
    assert!(
        last.process
            .env
            .contains(&("FLY_PROCESS_GROUP".into(), "worker".into()))
    );
}

#[tokio::test]
async fn app_tokens_and_org_listing() {
    let e = env().await;
    let (_, token) = e.agent.create_app_token("app", None, "", None).unwrap();
    assert_eq!(e.agent.app_token(&token).unwrap().unwrap().app, "app");
    assert!(e.agent.app_token("hangar_app_nope").unwrap().is_none());
    for _ in 0..3 {
        e.agent
            .create_machine("app", new_machine(serde_json::json!({"image": "busybox"})))
            .await
            .unwrap();
    }
    let page = e
        .agent
        .org_machines("personal", false, None, None, 2)
        .unwrap();
    assert_eq!(page.machines.len(), 2);
    let next = e
        .agent
        .org_machines("personal", false, page.next_cursor.as_deref(), None, 2)
        .unwrap();
    assert_eq!(next.machines.len(), 1);
    assert!(next.next_cursor.is_none());
    assert!(matches!(
        e.agent.org_machines("other", false, None, None, 10),
        Err(AgentError::NotFound(_))
    ));
}

#[tokio::test]
async fn minted_tokens_never_outlive_or_outreach_their_minter_and_die_with_their_app() {
    let e = env().await;
    e.agent.create_app("other", None, None).unwrap();
    // A token that expires in an hour mints one asked to last a year, and one
    // asked to last nothing more than it: both end with the minter.
    let (minter, _) = e
        .agent
        .create_app_token("app", Some(Duration::from_secs(3600)), "ci", None)
        .unwrap();
    let (long, long_token) = e
        .agent
        .create_app_token(
            "app",
            Some(Duration::from_secs(365 * 86400)),
            "",
            Some(&minter),
        )
        .unwrap();
    assert_eq!(long.expires_at, minter.expires_at);
    assert_eq!(long.minted_by.as_deref(), Some(minter.id.as_str()));
    let (forever, _) = e
        .agent
        .create_app_token("app", None, "", Some(&minter))
        .unwrap();
    assert_eq!(forever.expires_at, minter.expires_at);
    let (short, _) = e
        .agent
        .create_app_token("app", Some(Duration::from_secs(60)), "", Some(&minter))
        .unwrap();
    assert!(short.expires_at < minter.expires_at);
    // Never another app's.
    assert!(matches!(
        e.agent.create_app_token("other", None, "", Some(&minter)),
        Err(AgentError::PermissionDenied(_))
    ));
    assert_eq!(e.agent.list_tokens(Some("app")).unwrap().len(), 4);
    assert!(e.agent.list_tokens(Some("other")).unwrap().is_empty());

    // Revoking the minter revokes what it minted.
    assert!(matches!(
        e.agent.revoke_token(&minter.id, Some("other")),
        Err(AgentError::NotFound(_))
    ));
    e.agent.revoke_token(&minter.id, Some("app")).unwrap();
    assert!(e.agent.app_token(&long_token).unwrap().is_none());
    assert!(e.agent.list_tokens(Some("app")).unwrap().is_empty());

    // A token of a deleted app reaches nothing, not even an app made later
    // under the same name.
    let (_, token) = e.agent.create_app_token("other", None, "", None).unwrap();
    assert!(e.agent.app_token(&token).unwrap().is_some());
    e.agent.delete_app("other", false).await.unwrap();
    e.agent.create_app("other", None, None).unwrap();
    assert!(e.agent.app_token(&token).unwrap().is_none());
    assert!(e.agent.list_tokens(Some("other")).unwrap().is_empty());
}

/// A crash between an address allocation and its machine's insert cannot
/// happen (they commit together); what an older version or a crash after a
/// destroy left is released when the agent opens.
#[tokio::test]
async fn addresses_without_a_live_machine_are_released_at_startup() {
    let e = env().await;
    let m = e
        .agent
        .create_machine("app", new_machine(serde_json::json!({"image": "busybox"})))
        .await
        .unwrap();
    let range = e.agent.net_plan();
    let held = e.agent.store().address_of(m.id.as_str(), &range).unwrap();
    assert_eq!(
        held.map(|a| a.ipv6().to_string()),
        Some(m.private_ip.clone())
    );
    e.agent
        .store()
        .allocate_address("default", "ghost00000000a", &range)
        .unwrap();
    e.agent.shutdown().await;
    drop(e.agent);
    let agent = open(&e.dir, &e.rt).await;
    assert!(
        agent
            .store()
            .address_of("ghost00000000a", &range)
            .unwrap()
            .is_none()
    );
    assert_eq!(
        agent
            .store()
            .address_of(m.id.as_str(), &range)
            .unwrap()
            .map(|a| a.ipv6().to_string()),
        Some(m.private_ip)
    );
}

/// hangard dies after recording an exit and moving on (a restart waiting
/// out its backoff), before it cleaned up after the exit: the exit the next
/// hangard finds is the one already recorded, not a new one.
#[tokio::test]
async fn an_exit_already_recorded_is_not_counted_again_after_a_crash() {
    let e = env().await;
    let m = e
        .agent
        .create_machine(
            "app",
            new_machine(serde_json::json!({
                "image": "busybox", "restart": {"policy": "on-failure", "max_retries": 5}
            })),
        )
        .await
        .unwrap();
    wait(&e.agent, m.id.as_str(), MachineState::Started).await;
    let info = ExitInfo {
        exit_code: 1,
        exited_at_ms: 1_796_000_000_123,
        ..ExitInfo::default()
    };
    e.rt.exit(&m.id, info.clone());
    wait(&e.agent, m.id.as_str(), MachineState::Starting).await;
    // The crash, mid-backoff; the runtime still holds the old exit.
    e.agent.shutdown().await;
    let exits = |agent: &Agent| {
        agent
            .machine_events("app", m.id.as_str(), 50)
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == "exit")
            .count()
    };
    assert_eq!(exits(&e.agent), 1);
    e.rt.set_observed(&m.id, Observed::Exited(info));
    let agent = open(&e.dir, &e.rt).await;
    wait(&agent, m.id.as_str(), MachineState::Started).await;
    assert_eq!(exits(&agent), 1, "{:?}", kinds(&agent, m.id.as_str()));
    assert_eq!(
        agent
            .get_machine("app", m.id.as_str())
            .unwrap()
            .core
            .restart_count,
        1
    );
}

#[tokio::test]
async fn a_generated_name_in_use_is_drawn_again() {
    let e = env().await;
    let mut named = new_machine(serde_json::json!({"image": "busybox"}));
    named.name = Some("red-paper-9074".into());
    e.agent.create_machine("app", named).await.unwrap();
    // The first draw is taken: the create draws again.
    hangar_agent::names_for_tests::queue(&["red-paper-9074", "blue-river-1234"]);
    let m = e
        .agent
        .create_machine("app", new_machine(serde_json::json!({"image": "busybox"})))
        .await
        .unwrap();
    assert_eq!(m.name, "blue-river-1234");
    // A name the user gave is never replaced.
    let mut named = new_machine(serde_json::json!({"image": "busybox"}));
    named.name = Some("blue-river-1234".into());
    let err = e.agent.create_machine("app", named).await.unwrap_err();
    assert!(matches!(err, AgentError::Conflict(_)), "{err:?}");
    // Every draw taken: the create fails, with nothing left behind.
    let taken = vec!["red-paper-9074"; hangar_agent::NAME_DRAWS as usize];
    hangar_agent::names_for_tests::queue(&taken);
    let err = e
        .agent
        .create_machine("app", new_machine(serde_json::json!({"image": "busybox"})))
        .await
        .unwrap_err();
    assert!(matches!(err, AgentError::Conflict(_)), "{err:?}");
    assert_eq!(e.agent.list_machines("app", true).unwrap().len(), 2);
}
