//! End to end: a real `hangard` running machines with real crun from images
//! pulled from a real registry on loopback, driven over HTTP and through the
//! `hangar` CLI.

use std::time::Duration;

use hangar_client::Client;
use hangar_e2e::request;
use hangar_test_utils::daemon::Daemon;
use hangar_test_utils::image::{ImageBuilder, Layer};
use hangar_test_utils::registry::Registry;
use serde_json::{Value, json};

/// A registry with the test image `test/bb:v1`, and a daemon allowed to
/// pull from it, with an app `e2e`.
async fn setup() -> (Registry, Daemon, Client, String) {
    let reg = Registry::start().await;
    let img = ImageBuilder::busybox()
        .layer(Layer::new().file("etc/motd", b"hello from the image\n", 0o644))
        .set(
            "Env",
            json!(["PATH=/bin", "IMAGE_VAR=from-image", "OVERRIDE=image"]),
        )
        .set("WorkingDir", json!("/www"))
        .build();
    reg.push("test/bb", "v1", &img).await;
    let d = Daemon::with_registry(&reg.addr).await;
    let c = d.client();
    c.create_app("e2e").await.unwrap();
    let image = format!("{}/test/bb:v1", reg.addr);
    (reg, d, c, image)
}

async fn wait(c: &Client, id: &str, state: &str) {
    hangar_e2e::wait(c, "e2e", id, state).await
}

async fn create(c: &Client, config: Value) -> String {
    c.create_machine("e2e", &request(config)).await.unwrap().id
}

async fn last_exit(c: &Client, id: &str) -> Value {
    let events = c.machine_events("e2e", id, 20).await.unwrap();
    let e = events
        .into_iter()
        .find(|e| e.kind == "exit")
        .expect("an exit event");
    e.request.unwrap()["exit_event"].clone()
}

/// The command lines of the host's processes, one a line.
fn processes() -> String {
    let out = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn process_running(needle: &str) -> bool {
    processes().lines().any(|l| l.contains(needle))
}

#[tokio::test]
async fn runs_a_machine_from_the_registry_with_env_and_exit_code() {
    if !hangar_test_utils::host_tier(
        "runs_a_machine_from_the_registry_with_env_and_exit_code",
        &["crun", "docker-registry"],
    ) {
        return;
    }
    let (_reg, d, c, image) = setup().await;
    let id = create(&c, json!({
        "image": image,
        "env": {"OVERRIDE": "machine", "EXTRA": "x"},
        "init": {"cmd": ["/bin/sh", "-c", "echo $IMAGE_VAR $OVERRIDE $EXTRA; echo app=$FLY_APP_NAME id=$FLY_MACHINE_ID region=$FLY_REGION; pwd; hostname; cat /etc/motd; exit 3"]},
        "restart": {"policy": "no"}
    })).await;
    wait(&c, &id, "stopped").await;
    let exit = last_exit(&c, &id).await;
    assert_eq!(exit["exit_code"], 3);
    assert_eq!(exit["requested_stop"], false);
    let log: Vec<String> = d.machine_log(&id).into_iter().map(|(_, m)| m).collect();
    assert_eq!(
        log,
        vec![
            "from-image machine x".to_string(),
            format!("app=e2e id={id} region=local"),
            "/www".into(),
            id.clone(),
            "hello from the image".into(),
        ]
    );
    let m = c.get_machine("e2e", &id).await.unwrap();
    let r = m.image_ref.unwrap();
    assert_eq!(r.repository, "test/bb");
    assert!(r.digest.starts_with("sha256:"));
}

#[tokio::test]
async fn entrypoint_and_cmd_follow_docker_rules() {
    if !hangar_test_utils::host_tier(
        "entrypoint_and_cmd_follow_docker_rules",
        &["crun", "docker-registry"],
    ) {
        return;
    }
    let reg = Registry::start().await;
    let img = ImageBuilder::busybox()
        .set("Entrypoint", json!(["/bin/echo", "ep"]))
        .set("Cmd", json!(["default-cmd"]))
        .build();
    reg.push("test/ep", "v1", &img).await;
    let d = Daemon::with_registry(&reg.addr).await;
    let c = d.client();
    c.create_app("e2e").await.unwrap();
    let image = format!("{}/test/ep:v1", reg.addr);
    let cases = [
        (json!({}), "ep default-cmd"),
        (json!({"cmd": ["new-cmd"]}), "ep new-cmd"),
        (json!({"entrypoint": ["/bin/echo", "other"]}), "other"),
        (
            json!({"entrypoint": ["/bin/echo", "other"], "cmd": ["x"]}),
            "other x",
        ),
        (
            json!({"exec": ["/bin/echo", "exec"], "cmd": ["ignored"]}),
            "exec",
        ),
    ];
    for (init, want) in cases {
        let id = create(
            &c,
            json!({"image": image, "init": init, "restart": {"policy": "no"}}),
        )
        .await;
        wait(&c, &id, "stopped").await;
        let log = d.machine_log(&id);
        assert_eq!(
            log,
            vec![("stdout".to_string(), want.to_string())],
            "init {init}"
        );
    }
}

#[tokio::test]
async fn stop_start_destroy_and_nothing_left_behind() {
    if !hangar_test_utils::host_tier(
        "stop_start_destroy_and_nothing_left_behind",
        &["crun", "docker-registry"],
    ) {
        return;
    }
    let (_reg, d, c, image) = setup().await;
    let id = create(&c, json!({
        "image": image,
        "init": {"cmd": ["/bin/sh", "-c", "trap 'echo stopping; exit 0' INT; echo up; while true; do sleep 0.1; done"]},
    })).await;
    wait(&c, &id, "started").await;
    assert!(process_running(&format!("shim --id {id}")));
    c.stop_machine("e2e", &id, None, None).await.unwrap();
    wait(&c, &id, "stopped").await;
    let exit = last_exit(&c, &id).await;
    assert_eq!(
        (exit["exit_code"].as_i64(), exit["requested_stop"].as_bool()),
        (Some(0), Some(true))
    );
    assert!(
        d.machine_log(&id)
            .contains(&("stdout".into(), "stopping".into()))
    );
    // The shim that ran it is gone; a stopped machine's next container
    // may already wait under a standby shim of its own.
    let ps = processes();
    assert!(
        !ps.lines()
            .any(|l| l.contains(&format!("shim --id {id}")) && !l.contains("--standby")),
        "the shim that ran {id} is still alive:\n{ps}"
    );

    c.start_machine("e2e", &id).await.unwrap();
    wait(&c, &id, "started").await;
    let err = c.destroy_machine("e2e", &id, false).await.unwrap_err();
    assert_eq!(err.status(), Some(412), "{err}");
    c.destroy_machine("e2e", &id, true).await.unwrap();
    wait(&c, &id, "destroyed").await;

    assert!(!process_running(&id), "a process of {id} is left");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&id), "a mount of {id} is left");
    assert!(
        !std::path::Path::new("/sys/fs/cgroup/memory/hangar")
            .join(&id)
            .exists()
    );
    assert!(!d.data_dir.join("machines").join(&id).exists());
}

#[tokio::test]
async fn memory_limit_is_enforced_and_oom_reported() {
    if !hangar_test_utils::host_tier(
        "memory_limit_is_enforced_and_oom_reported",
        &["crun", "docker-registry"],
    ) {
        return;
    }
    let (_reg, _d, c, image) = setup().await;
    let id = create(&c, json!({
        "image": image,
        "guest": {"cpus": 1, "memory_mb": 64},
        "init": {"cmd": ["/bin/sh", "-c", "x=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa; while true; do x=$x$x; done"]},
        "restart": {"policy": "no"}
    })).await;
    wait(&c, &id, "stopped").await;
    let exit = last_exit(&c, &id).await;
    assert_eq!(exit["oom_killed"], true, "{exit}");
    assert_eq!(exit["exit_code"], 137);
}

#[tokio::test]
async fn restart_policy_on_failure_retries_then_stops() {
    if !hangar_test_utils::host_tier(
        "restart_policy_on_failure_retries_then_stops",
        &["crun", "docker-registry"],
    ) {
        return;
    }
    let (_reg, _d, c, image) = setup().await;
    let id = create(
        &c,
        json!({
            "image": image,
            "init": {"cmd": ["/bin/sh", "-c", "exit 1"]},
            "restart": {"policy": "on-failure", "max_retries": 2}
        }),
    )
    .await;
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let events = c.machine_events("e2e", &id, 50).await.unwrap();
            if events.iter().any(|e| {
                e.request
                    .as_ref()
                    .is_some_and(|r| r.get("message").is_some())
            }) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("gave up in time");
    let events = c.machine_events("e2e", &id, 50).await.unwrap();
    let exits = events.iter().filter(|e| e.kind == "exit").count();
    assert_eq!(exits, 3, "first run plus two restarts");
    assert_eq!(c.get_machine("e2e", &id).await.unwrap().state, "stopped");
    // Oldest first: each exit carries the restart count, the last says why
    // it stopped there.
    let mut exits: Vec<&Value> = events
        .iter()
        .filter(|e| e.kind == "exit")
        .filter_map(|e| e.request.as_ref())
        .collect();
    exits.reverse();
    let counts: Vec<i64> = exits
        .iter()
        .map(|r| r["restart_count"].as_i64().unwrap())
        .collect();
    assert_eq!(counts, [1, 2, 2]);
    assert!(
        exits[2]["message"]
            .as_str()
            .unwrap()
            .contains("max restart count (2)"),
        "{}",
        exits[2]
    );
}

#[tokio::test]
async fn hangard_restarts_and_crashes_lose_nothing() {
    if !hangar_test_utils::host_tier(
        "hangard_restarts_and_crashes_lose_nothing",
        &["crun", "docker-registry"],
    ) {
        return;
    }
    let (_reg, mut d, c, image) = setup().await;
    let long = create(
        &c,
        json!({
            "image": image,
            "init": {"cmd": ["/bin/sh", "-c", "trap 'exit 0' INT; while true; do sleep 0.1; done"]},
        }),
    )
    .await;
    let short = create(
        &c,
        json!({
            "image": image,
            "init": {"cmd": ["/bin/sh", "-c", "sleep 1.5; exit 4"]},
            "restart": {"policy": "no"}
        }),
    )
    .await;
    wait(&c, &long, "started").await;
    wait(&c, &short, "started").await;

    // A clean stop of hangard leaves the machines running.
    d.stop();
    assert!(process_running(&format!("shim --id {long}")));
    d.restart().await;
    let c = d.client();
    assert_eq!(c.get_machine("e2e", &long).await.unwrap().state, "started");

    // A crash too; the short one ends while hangard is away.
    d.kill();
    hangar_test_utils::wait_until(Duration::from_secs(10), "the short machine to end", || {
        let needle = format!("shim --id {short}");
        async move { (!process_running(&needle)).then_some(()) }
    })
    .await;
    d.restart().await;
    let c = d.client();
    wait(&c, &short, "stopped").await;
    let exit = last_exit(&c, &short).await;
    assert_eq!(exit["exit_code"], 4);
    assert!(d.log().contains("adopting workload"), "{}", d.log());
    assert_eq!(c.get_machine("e2e", &long).await.unwrap().state, "started");
    c.stop_machine("e2e", &long, None, None).await.unwrap();
    wait(&c, &long, "stopped").await;
    assert_eq!(last_exit(&c, &long).await["exit_code"], 0);
}

#[tokio::test]
async fn image_failures_fail_the_machine_with_the_reason() {
    if !hangar_test_utils::host_tier(
        "image_failures_fail_the_machine_with_the_reason",
        &["crun", "docker-registry"],
    ) {
        return;
    }
    let (reg, _d, c, _image) = setup().await;
    let id = create(&c, json!({"image": format!("{}/test/nope:v1", reg.addr)})).await;
    let err = c
        .wait_machine("e2e", &id, &["started"], Duration::from_secs(30))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(412), "{err}");
    assert!(err.to_string().contains("not found"), "{err}");
    let m = c.get_machine("e2e", &id).await.unwrap();
    assert_eq!(m.state, "failed");
    let ev = &m.events.unwrap()[0];
    assert_eq!((ev.kind.as_str(), ev.status.as_str()), ("launch", "failed"));

    // A registry that is down: the request still answers at once.
    let port = hangar_test_utils::free_port();
    let started = std::time::Instant::now();
    let id = create(&c, json!({"image": format!("127.0.0.1:{port}/x/y:z")})).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    let err = c
        .wait_machine("e2e", &id, &["started"], Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("unreachable") || err.to_string().contains("127.0.0.1"),
        "{err}"
    );
}

#[tokio::test]
async fn bad_input_and_auth() {
    if !hangar_test_utils::host_tier("bad_input_and_auth", &["crun", "docker-registry"]) {
        return;
    }
    let (_reg, d, c, image) = setup().await;
    let http = reqwest::Client::new();
    let post = |path: &str, body: &str, token: Option<&str>| {
        let mut r = http
            .post(format!("{}{path}", d.url))
            .body(body.to_owned())
            .header("content-type", "application/json");
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let tok = Some(d.token.as_str());
    let cases = [
        (
            "/v1/apps/e2e/machines",
            r#"{"config":{}}"#,
            tok,
            400,
            "config.image is required",
        ),
        (
            "/v1/apps/e2e/machines",
            r#"{"config":{"image":"x"},"name":"bad name!"}"#,
            tok,
            400,
            "invalid machine name",
        ),
        (
            "/v1/apps/e2e/machines",
            r#"{"config":{"image":"#,
            tok,
            400,
            "invalid JSON",
        ),
        (
            "/v1/apps/nope/machines",
            r#"{"config":{"image":"x"}}"#,
            tok,
            404,
            "app nope not found",
        ),
        (
            "/v1/apps/e2e/machines",
            r#"{"config":{"image":"x"}}"#,
            None,
            401,
            "Authenticate",
        ),
        (
            "/v1/apps/e2e/machines",
            r#"{"config":{"image":"x"}}"#,
            Some("wrong"),
            401,
            "Authenticate",
        ),
    ];
    for (path, body, token, status, msg) in cases {
        let r = post(path, body, token).await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{path} {body}");
        assert!(r.headers().contains_key("fly-request-id"));
        let v: Value = r.json().await.unwrap();
        assert!(v["error"].as_str().unwrap().contains(msg), "{body}: {v}");
    }
    // Nothing was created by the failures.
    assert!(
        c.list_machines("e2e", &Default::default())
            .await
            .unwrap()
            .is_empty()
    );
    let _ = image;
}

#[tokio::test]
async fn cli_imports_runs_and_reports() {
    if !hangar_test_utils::host_tier("cli_imports_runs_and_reports", &["crun", "docker-registry"]) {
        return;
    }
    let d = Daemon::start(&[]).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let img = ImageBuilder::busybox().build();
    let archive = dir.join("img.tar");
    std::fs::write(&archive, img.oci_archive(Some("latest"))).unwrap();

    let (ok, out, err) = d.cli(&[
        "image",
        "import",
        archive.to_str().unwrap(),
        "--name",
        "local/demo:1",
    ]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("Imported docker.io/local/demo:1"), "{out}");

    let (ok, out, err) = d.cli(&[
        "machine",
        "run",
        "local/demo:1",
        "--app",
        "cli",
        "--name",
        "one",
        "-e",
        "X=42",
        "--restart",
        "no",
        "sh",
        "-c",
        "echo x=$X",
    ]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("Created app cli"), "{out}");
    let c = d.client();
    let id = c.list_machines("cli", &Default::default()).await.unwrap()[0]
        .id
        .clone();
    c.wait_machine("cli", &id, &["stopped"], Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(
        d.machine_log(&id),
        vec![("stdout".to_string(), "x=42".to_string())]
    );

    let (ok, out, _) = d.cli(&["machine", "list", "-a", "cli"]);
    assert!(
        ok && out.contains("one") && out.contains("stopped"),
        "{out}"
    );
    let (ok, out, _) = d.cli(&["machine", "status", "one", "-a", "cli"]);
    assert!(ok && out.contains("exit_code=0"), "{out}");
    let (ok, out, _) = d.cli(&["--json", "machine", "list", "-a", "cli"]);
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()[0]["name"],
        "one"
    );

    // --rm: gone once it exits.
    let (ok, out, err) = d.cli(&[
        "machine",
        "run",
        "local/demo:1",
        "-a",
        "cli",
        "--rm",
        "--name",
        "temp",
        "true",
    ]);
    assert!(ok, "{out}{err}");
    let temp = c
        .list_machines(
            "cli",
            &hangar_client::ListMachines {
                include_deleted: true,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.name == "temp")
        .unwrap();
    c.wait_machine("cli", &temp.id, &["destroyed"], Duration::from_secs(20))
        .await
        .unwrap();
    // Root filesystem, bundle and logs are gone with it.
    assert!(!d.machine_dir(&temp.id).exists());

    // Errors: the API's message, a non-zero exit.
    let (ok, _, err) = d.cli(&["machine", "start", "00000000000000", "-a", "cli"]);
    assert!(!ok);
    assert!(err.contains("machine 00000000000000 not found"), "{err}");
    let (ok, _, err) = d.cli(&[
        "machine",
        "run",
        "local/demo:1",
        "-a",
        "cli",
        "--vm-cpu-kind",
        "turbo",
    ]);
    assert!(!ok && err.contains("cpu_kind"), "{err}");
    let (ok, _, err) = d.cli(&["machine", "destroy", "one", "-a", "cli", "--force"]);
    assert!(ok, "{err}");
    let (ok, _, err) = d.cli(&["apps", "destroy", "cli"]);
    assert!(ok, "{err}");
}

#[tokio::test]
async fn runs_with_runc_too() {
    if !hangar_test_utils::host_tier("runs_with_runc_too", &["crun", "docker-registry"]) {
        return;
    }
    hangar_test_utils::require_program("runc", "runc");
    let reg = Registry::start().await;
    reg.push("test/bb", "v1", &ImageBuilder::busybox().build())
        .await;
    let d = Daemon::start(&[
        "--insecure-registry".into(),
        reg.addr.clone(),
        "--runtime".into(),
        "runc".into(),
    ])
    .await;
    let c = d.client();
    c.create_app("e2e").await.unwrap();
    let id = create(
        &c,
        json!({
            "image": format!("{}/test/bb:v1", reg.addr),
            "init": {"cmd": ["/bin/sh", "-c", "echo via runc; exit 5"]},
            "restart": {"policy": "no"}
        }),
    )
    .await;
    wait(&c, &id, "stopped").await;
    assert_eq!(last_exit(&c, &id).await["exit_code"], 5);
    assert_eq!(
        d.machine_log(&id),
        vec![("stdout".to_string(), "via runc".to_string())]
    );
}

#[tokio::test]
async fn pulls_by_digest() {
    if !hangar_test_utils::host_tier("pulls_by_digest", &["crun", "docker-registry"]) {
        return;
    }
    let reg = Registry::start().await;
    let img = ImageBuilder::busybox()
        .layer(Layer::new().file("v", b"1", 0o644))
        .build();
    let digest = reg.push("test/pin", "v1", &img).await;
    let d = Daemon::with_registry(&reg.addr).await;
    let c = d.client();
    c.create_app("e2e").await.unwrap();
    let id = create(
        &c,
        json!({
            "image": format!("{}/test/pin@{digest}", reg.addr),
            "init": {"cmd": ["/bin/cat", "/v"]},
            "restart": {"policy": "no"}
        }),
    )
    .await;
    wait(&c, &id, "stopped").await;
    assert_eq!(
        d.machine_log(&id),
        vec![("stdout".to_string(), "1".to_string())]
    );
    assert_eq!(
        c.get_machine("e2e", &id)
            .await
            .unwrap()
            .image_ref
            .unwrap()
            .digest,
        digest
    );
}
