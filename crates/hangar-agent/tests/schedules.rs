//! Schedules and standbys, with the agent's real store and runners over the
//! fake runtime; the agent runs on an injected clock 18000 times faster than
//! real time, so an "hour" lasts 200 ms.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hangar_agent::clock::{Clock as _, ScaledClock};
use hangar_agent::images::fake::FakeImages;
use hangar_agent::{Agent, AgentConfig, AgentError, NewMachine, UpdateMachine, WaitFor};
use hangar_core::spec::Parsed;
use hangar_core::{ExitInfo, MachineId, MachineState};
use hangar_runtime::fake::FakeRuntime;

const SCALE: u32 = 18_000;
const HOUR: Duration = Duration::from_millis(200);

/// One clock for every agent of the test process (reopened agents read the
/// time the one before them stored).
fn clock() -> ScaledClock {
    static ORIGIN: std::sync::OnceLock<ScaledClock> = std::sync::OnceLock::new();
    *ORIGIN.get_or_init(|| ScaledClock::from_now(SCALE))
}

async fn open(dir: &tempfile::TempDir, rt: &Arc<FakeRuntime>) -> Agent {
    Agent::open(
        AgentConfig {
            clock: Arc::new(clock()),
            ..AgentConfig::new(dir.path())
        },
        rt.clone(),
        Arc::new(FakeImages),
    )
    .await
    .unwrap()
}

fn machine(v: serde_json::Value, skip_launch: bool) -> NewMachine {
    NewMachine {
        skip_launch,
        ..NewMachine::new(Parsed::new(v).unwrap())
    }
}

async fn wait(agent: &Agent, id: &str, state: MachineState) {
    agent
        .wait_machine("app", id, &[WaitFor::State(state)], Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("waiting for {state}: {e}"));
}

/// Starts recorded for the machine, by source.
fn starts(agent: &Agent, id: &str) -> (usize, usize) {
    let ev = agent.machine_events("app", id, 200).unwrap();
    let n = |src: &str| {
        ev.iter()
            .filter(|e| e.kind == "start" && e.status == "starting" && e.source == src)
            .count()
    };
    (n("user"), n("flyd"))
}

fn exit0(rt: &FakeRuntime, id: &str) {
    rt.exit(&id.parse::<MachineId>().unwrap(), ExitInfo::default());
}

#[tokio::test]
async fn a_scheduled_machine_runs_once_per_period_and_not_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(FakeRuntime::new());
    let agent = open(&dir, &rt).await;
    agent.create_app("app", None, None).unwrap();
    let m = agent
        .create_machine(
            "app",
            machine(
                serde_json::json!({"image": "busybox", "schedule": "hourly"}),
                false,
            ),
        )
        .await
        .unwrap();
    let id = m.id.to_string();
    // The first run starts at once; the job ends; the machine rests.
    wait(&agent, &id, MachineState::Started).await;
    let began = Instant::now();
    exit0(&rt, &id);
    wait(&agent, &id, MachineState::Stopped).await;

    // Users cannot start it now that its cycle has begun.
    let err = agent.start_machine("app", &id, None).await.unwrap_err();
    assert!(matches!(err, AgentError::Precondition(_)), "{err:?}");
    assert!(err.to_string().contains("schedule"), "{err}");

    // About an hour later (give or take a tenth) it runs again, and again.
    for run in 1..=2 {
        wait(&agent, &id, MachineState::Started).await;
        exit0(&rt, &id);
        wait(&agent, &id, MachineState::Stopped).await;
        let elapsed = began.elapsed();
        assert!(
            elapsed >= HOUR * 9 / 10 * run,
            "run {run} came after {elapsed:?}"
        );
    }
    assert_eq!(starts(&agent, &id), (0, 2));
    assert!(
        began.elapsed() < HOUR * 4,
        "too slow: {:?}",
        began.elapsed()
    );

    // Without a schedule it is an ordinary machine again.
    let mut json = agent.get_machine("app", &id).unwrap().config;
    json.as_object_mut().unwrap().remove("schedule");
    let config = Parsed::new(json).unwrap();
    agent
        .update_machine(
            "app",
            &id,
            UpdateMachine {
                skip_launch: true,
                ..UpdateMachine::new(config)
            },
            None,
        )
        .await
        .unwrap();
    wait(&agent, &id, MachineState::Stopped).await;
    agent.start_machine("app", &id, None).await.unwrap();
    wait(&agent, &id, MachineState::Started).await;
}

#[tokio::test]
async fn a_created_scheduled_machine_waits_for_its_first_start() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(FakeRuntime::new());
    let agent = open(&dir, &rt).await;
    agent.create_app("app", None, None).unwrap();
    let m = agent
        .create_machine(
            "app",
            machine(
                serde_json::json!({"image": "busybox", "schedule": "hourly"}),
                true,
            ),
        )
        .await
        .unwrap();
    let id = m.id.to_string();
    wait(&agent, &id, MachineState::Stopped).await;
    tokio::time::sleep(HOUR * 2).await;
    assert_eq!(rt.starts(), 0, "the cycle begins with the first start");
    // The first start is a user's; then the schedule takes over.
    agent.start_machine("app", &id, None).await.unwrap();
    wait(&agent, &id, MachineState::Started).await;
    exit0(&rt, &id);
    wait(&agent, &id, MachineState::Stopped).await;
    assert!(agent.start_machine("app", &id, None).await.is_err());
    wait(&agent, &id, MachineState::Started).await;
    assert_eq!(starts(&agent, &id), (1, 1));
}

#[tokio::test]
async fn schedules_survive_restarts_and_missed_runs_fire_once() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(FakeRuntime::new());
    let agent = open(&dir, &rt).await;
    agent.create_app("app", None, None).unwrap();
    let m = agent
        .create_machine(
            "app",
            machine(
                serde_json::json!({"image": "busybox", "schedule": "hourly"}),
                false,
            ),
        )
        .await
        .unwrap();
    let id = m.id.to_string();
    wait(&agent, &id, MachineState::Started).await;
    exit0(&rt, &id);
    wait(&agent, &id, MachineState::Stopped).await;
    let next = agent.get_machine("app", &id).unwrap().schedule_next_ms;
    assert!(next.is_some());
    agent.shutdown().await;
    drop(agent);

    // Down for three "hours": the runs missed meanwhile collapse into one.
    tokio::time::sleep(HOUR * 3).await;
    let before = rt.starts();
    let agent = open(&dir, &rt).await;
    wait(&agent, &id, MachineState::Started).await;
    exit0(&rt, &id);
    wait(&agent, &id, MachineState::Stopped).await;
    let after = agent
        .get_machine("app", &id)
        .unwrap()
        .schedule_next_ms
        .unwrap();
    assert!(after > next.unwrap(), "the next run moved on");
    // Until the next run (an "hour" on) nothing else fires; on a host so
    // slow that its time has come, that run may have fired too.
    let one_run = |what: &str| {
        let starts = rt.starts();
        let due = clock().now_ms() >= after;
        assert!(
            starts == before + 1 || (due && starts == before + 2),
            "{what}: {} runs",
            starts - before
        );
        due
    };
    tokio::time::sleep(clock().until(after).saturating_sub(HOUR / 4)).await;
    one_run("a missed run fires once");

    // A restart right after a run does not run it again.
    agent.shutdown().await;
    drop(agent);
    let agent = open(&dir, &rt).await;
    tokio::time::sleep(HOUR / 8).await;
    if !one_run("a restart right after a run") {
        assert_eq!(
            agent.get_machine("app", &id).unwrap().core.state,
            MachineState::Stopped
        );
    }
}

#[tokio::test]
async fn standbys_stay_stopped_until_their_machine_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(FakeRuntime::new());
    let agent = open(&dir, &rt).await;
    agent.create_app("app", None, None).unwrap();
    agent.create_app("other", None, None).unwrap();
    let primary = agent
        .create_machine(
            "app",
            machine(serde_json::json!({"image": "busybox"}), false),
        )
        .await
        .unwrap()
        .id
        .to_string();
    let elsewhere = agent
        .create_machine(
            "other",
            machine(serde_json::json!({"image": "busybox"}), false),
        )
        .await
        .unwrap()
        .id
        .to_string();

    for (standbys, extra, want) in [
        (
            serde_json::json!(["nope"]),
            serde_json::json!({}),
            "not a machine id",
        ),
        (
            serde_json::json!([elsewhere]),
            serde_json::json!({}),
            "not found in app app",
        ),
        (
            serde_json::json!([primary, primary]),
            serde_json::json!({}),
            "twice",
        ),
        (
            serde_json::json!([primary]),
            serde_json::json!({"services": [{"internal_port": 80, "protocol": "tcp"}]}),
            "cannot have services",
        ),
        (
            serde_json::json!([primary]),
            serde_json::json!({"schedule": "daily"}),
            "cannot have a schedule",
        ),
    ] {
        let mut v = serde_json::json!({"image": "busybox", "standbys": standbys});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        // Shape is checked where the config is parsed, references by the agent.
        let err = match Parsed::new(v) {
            Err(e) => e.to_string(),
            Ok(parsed) => {
                let err = agent
                    .create_machine("app", NewMachine::new(parsed))
                    .await
                    .unwrap_err();
                assert!(matches!(err, AgentError::InvalidArgument(_)), "{err:?}");
                err.to_string()
            }
        };
        assert!(err.contains(want), "{err}");
    }

    let standby = agent
        .create_machine(
            "app",
            machine(
                serde_json::json!({"image": "busybox", "standbys": [primary]}),
                false,
            ),
        )
        .await
        .unwrap()
        .id
        .to_string();
    wait(&agent, &standby, MachineState::Stopped).await;
    let err = agent
        .update_machine(
            "app",
            &standby,
            UpdateMachine::new(
                Parsed::new(serde_json::json!({"image": "busybox", "standbys": [standby]}))
                    .unwrap(),
            ),
            None,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("itself"), "{err}");

    // The host-down hook starts the standbys of the machines lost, only.
    assert!(
        agent
            .start_standbys_for("app", &[&elsewhere])
            .await
            .unwrap()
            .is_empty()
    );
    let started = agent.start_standbys_for("app", &[&primary]).await.unwrap();
    assert_eq!(started, vec![standby.clone()]);
    wait(&agent, &standby, MachineState::Started).await;

    // Clearing standbys makes it an ordinary machine that an update starts.
    agent
        .update_machine(
            "app",
            &standby,
            UpdateMachine::new(Parsed::new(serde_json::json!({"image": "busybox"})).unwrap()),
            None,
        )
        .await
        .unwrap();
    wait(&agent, &standby, MachineState::Started).await;
    assert!(
        agent
            .get_machine("app", &standby)
            .unwrap()
            .spec
            .standbys
            .is_empty()
    );
}

#[tokio::test]
async fn volume_backups_run_daily_and_expire() {
    // A "day" of 1 ms: every maintenance run is a new day.
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(FakeRuntime::new());
    let agent = Agent::open(
        AgentConfig {
            clock: Arc::new(ScaledClock::from_now(86_400_000)),
            ..AgentConfig::new(dir.path())
        },
        rt.clone(),
        Arc::new(FakeImages),
    )
    .await
    .unwrap();
    agent.create_app("app", None, None).unwrap();
    let backed = agent
        .create_volume(
            "app",
            hangar_agent::volumes::NewVolume {
                name: "backed".into(),
                size_gb: Some(1),
                snapshot_retention: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let manual = agent
        .create_volume(
            "app",
            hangar_agent::volumes::NewVolume {
                name: "manual".into(),
                size_gb: Some(1),
                auto_backup_enabled: Some(false),
                encrypted: Some(false),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    agent.maintain_volumes().await.unwrap();
    let first = agent.list_snapshots("app", &backed.id).unwrap();
    assert_eq!(first.len(), 1, "a daily backup");
    assert!(agent.list_snapshots("app", &manual.id).unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(5)).await;
    agent.maintain_volumes().await.unwrap();
    let second = agent.list_snapshots("app", &backed.id).unwrap();
    // The first is past its one-"day" retention: replaced, not kept.
    assert_eq!(second.len(), 1);
    assert_ne!(second[0].id, first[0].id);
    assert!(
        !dir.path()
            .join(format!("volumes/snapshots/{}.img", first[0].id))
            .exists()
    );
    for v in [&backed, &manual] {
        agent.delete_volume("app", &v.id).await.unwrap();
    }
}
