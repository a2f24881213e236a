//! End to end: machines in gVisor (`runsc`) beside crun containers on one
//! real `hangard`, asked for per machine with the metadata key
//! `hangar_runtime`, and the refusals of runtimes a host cannot run.

use std::collections::BTreeMap;

use hangar_api_types::MachineExecRequest;
use hangar_client::Client;
use hangar_e2e::request;
use hangar_test_utils::daemon::Daemon;
use hangar_test_utils::image::ImageBuilder;
use hangar_test_utils::registry::Registry;
use serde_json::{Value, json};

const APP: &str = "iso";

async fn setup() -> (Registry, Daemon, Client, String) {
    let reg = Registry::start().await;
    reg.push("test/bb", "v1", &ImageBuilder::busybox().build())
        .await;
    let d = Daemon::with_registry(&reg.addr).await;
    let c = d.client();
    c.create_app(APP).await.unwrap();
    let image = format!("{}/test/bb:v1", reg.addr);
    (reg, d, c, image)
}

async fn wait(c: &Client, id: &str, state: &str) {
    hangar_e2e::wait(c, APP, id, state).await
}

async fn sh(c: &Client, id: &str, script: &str) -> (i32, String) {
    let out = c
        .exec(
            APP,
            id,
            &serde_json::from_value::<MachineExecRequest>(
                json!({"command": ["/bin/sh", "-c", script]}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    (out.exit_code, out.stdout + &out.stderr)
}

fn gvisor(image: &str, cmd: &str) -> Value {
    json!({
        "image": image,
        "metadata": {"hangar_runtime": "runsc"},
        "init": {"cmd": ["/bin/sh", "-c", cmd]},
        "restart": {"policy": "no"},
    })
}

async fn last_exit(c: &Client, id: &str) -> Value {
    let events = c.machine_events(APP, id, 20).await.unwrap();
    let e = events
        .into_iter()
        .find(|e| e.kind == "exit")
        .expect("an exit event");
    e.request.unwrap()["exit_event"].clone()
}

/// A gVisor machine: its own kernel answers (dmesg, uname), it sees none
/// of the host's processes, it gets its secrets, its logs and exit code
/// come back, and it stops and starts again like a container.
#[tokio::test]
async fn a_gvisor_machine_runs_its_lifecycle_beside_containers() {
    if !hangar_test_utils::host_tier(
        "a_gvisor_machine_runs_its_lifecycle_beside_containers",
        &["crun", "runsc", "docker-registry"],
    ) {
        return;
    }
    let (_reg, mut d, c, image) = setup().await;
    c.update_secrets(
        APP,
        BTreeMap::from([("TOP".to_owned(), Some("s3cret".to_owned()))]),
    )
    .await
    .unwrap();
    let id = c
        .create_machine(
            APP,
            &request(gvisor(
                &image,
                "echo hello from gvisor; echo top=$TOP; trap 'echo got-usr1' USR1; \
                 while true; do sleep 0.2; done",
            )),
        )
        .await
        .unwrap()
        .id;
    wait(&c, &id, "started").await;
    let m = c.get_machine(APP, &id).await.unwrap();
    assert_eq!(
        m.config.unwrap().metadata.unwrap()["hangar_runtime"],
        "runsc"
    );

    // gVisor's kernel, not the host's.
    let (code, out) = sh(&c, &id, "dmesg; uname -r").await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Starting gVisor"), "{out}");
    let host_release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert!(!out.contains(host_release.trim()), "{out}");
    // None of the host's processes: init, the workload and this shell.
    let (_, ps) = sh(&c, &id, "ls -d /proc/[0-9]* | wc -l").await;
    let n: usize = ps.trim().parse().unwrap_or(usize::MAX);
    assert!(n < 10, "{n} processes visible: {ps}");
    // A container beside it still sees the host's kernel.
    let plain = c
        .create_machine(
            APP,
            &request(json!({"image": image, "init": {"cmd": ["sleep", "3600"]}})),
        )
        .await
        .unwrap()
        .id;
    wait(&c, &plain, "started").await;
    let (_, out) = sh(&c, &plain, "uname -r").await;
    assert_eq!(out.trim(), host_release.trim());

    // Logs, and the secret in the environment.
    hangar_test_utils::wait_until(
        std::time::Duration::from_secs(10),
        "the machine's log",
        || {
            let log: Vec<String> = d.machine_log(&id).into_iter().map(|(_, m)| m).collect();
            let done = log.iter().any(|l| l == "hello from gvisor")
                && log.iter().any(|l| l == "top=s3cret");
            async move { done.then_some(()) }
        },
    )
    .await;

    // `ps` lists the sandbox's processes, as gVisor's kernel sees them.
    let ps = c.processes(APP, &id).await.unwrap();
    assert!(
        ps.iter().any(|p| p.command == "sh"),
        "{:?}",
        ps.iter().map(|p| (p.pid, &p.command)).collect::<Vec<_>>()
    );
    assert!(ps.iter().all(|p| !p.command.contains("runsc")));

    // A terminal session.
    let (code, out, err) = d.cli_with_stdin(
        &["machine", "exec", &id, "-a", APP, "-it", "--", "sh"],
        b"echo $((6*7)); tty; exit 3\n",
        std::time::Duration::from_secs(30),
    );
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains("42"), "{out}");

    // Signals reach the main process.
    c.signal_machine(APP, &id, "SIGUSR1").await.unwrap();
    hangar_test_utils::wait_until(std::time::Duration::from_secs(10), "got-usr1", || {
        let seen = d.machine_log(&id).iter().any(|(_, m)| m == "got-usr1");
        async move { seen.then_some(()) }
    })
    .await;

    // Suspend and resume.
    c.machine_action(APP, &id, "suspend").await.unwrap();
    wait(&c, &id, "suspended").await;
    c.start_machine(APP, &id).await.unwrap();
    wait(&c, &id, "started").await;
    assert_eq!(sh(&c, &id, "echo awake").await.1.trim(), "awake");

    // hangard killed and started again: the sandbox lives on and is
    // adopted, still run by runsc.
    d.restart().await;
    wait(&c, &id, "started").await;
    let (code, out) = sh(&c, &id, "dmesg | head -1").await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("gVisor"), "{out}");

    // Stop and start again: a clean root filesystem each time.
    sh(&c, &id, "touch /left-behind").await;
    c.stop_machine(APP, &id, None, None).await.unwrap();
    wait(&c, &id, "stopped").await;
    c.start_machine(APP, &id).await.unwrap();
    wait(&c, &id, "started").await;
    let (code, out) = sh(
        &c,
        &id,
        "test -e /left-behind && echo kept || echo clean; dmesg | head -1",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("clean"), "{out}");
    assert!(out.contains("gVisor"), "{out}");
    c.destroy_machine(APP, &id, true).await.unwrap();
    wait(&c, &id, "destroyed").await;

    // An exit code comes back from inside the sandbox, and the restart
    // policy acts on it: the first run and one restart.
    let mut config = gvisor(&image, "echo bye; exit 7");
    config["restart"] = json!({"policy": "on-failure", "max_retries": 1});
    let id = c.create_machine(APP, &request(config)).await.unwrap().id;
    let exits =
        hangar_test_utils::wait_until(std::time::Duration::from_secs(30), "two exits", || {
            let (c, id) = (c.clone(), id.clone());
            async move {
                let events = c.machine_events(APP, &id, 50).await.unwrap();
                let exits = events.iter().filter(|e| e.kind == "exit").count();
                let state = c.get_machine(APP, &id).await.unwrap().state;
                (exits == 2 && state == "stopped").then_some(exits)
            }
        })
        .await;
    assert_eq!(exits, 2);
    assert_eq!(last_exit(&c, &id).await["exit_code"], 7);
}

/// Asking for a runtime the host does not have is refused at create time
/// with 412 and why; asking for one that does not exist, with 400.
#[tokio::test]
async fn a_runtime_the_host_cannot_run_is_refused_at_create() {
    if !hangar_test_utils::host_tier(
        "a_runtime_the_host_cannot_run_is_refused_at_create",
        &["crun", "docker-registry"],
    ) {
        return;
    }
    let (_reg, d, _c, image) = setup().await;
    let http = reqwest::Client::new();
    let post = |config: Value| {
        let (http, url, token) = (http.clone(), d.url.clone(), d.token.clone());
        async move {
            let r = http
                .post(format!("{url}/v1/apps/{APP}/machines"))
                .bearer_auth(token)
                .json(&json!({ "config": config }))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let mut config = gvisor(&image, "true");
    config["metadata"]["hangar_runtime"] = json!("microvm");
    let (status, body) = post(config.clone()).await;
    assert_eq!(status, 412, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("microvm"),
        "{body}"
    );
    config["metadata"]["hangar_runtime"] = json!("docker");
    let (status, body) = post(config).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("hangar_runtime"),
        "{body}"
    );
}

/// A gVisor machine made with `hangar machine run --runtime runsc`: its
/// volume keeps data across restarts, the proxy routes to it and starts it
/// when stopped, and it and a container reach each other over `.internal`.
#[tokio::test]
async fn a_gvisor_machine_has_volumes_the_proxy_and_the_private_network() {
    if !hangar_test_utils::host_tier(
        "a_gvisor_machine_has_volumes_the_proxy_and_the_private_network",
        &["crun", "runsc", "docker-registry"],
    ) {
        return;
    }
    let (_reg, d, c, image) = setup().await;
    let cli = |args: &[&str]| {
        let (ok, out, err) = d.cli(args);
        assert!(ok, "hangar {args:?}: {out}{err}");
        out
    };
    cli(&["volumes", "create", "data", "-a", APP, "-s", "1"]);
    cli(&[
        "machine",
        "run",
        &image,
        "-a",
        APP,
        "-n",
        "sand",
        "--runtime",
        "runsc",
        "-v",
        "data:/data",
        "-p",
        "80:8080/tcp:http",
        "--autostart",
        "--",
        "/bin/sh",
        "-c",
        "n=$(cat /data/boots 2>/dev/null || echo 0); n=$((n+1)); echo $n > /data/boots; \
         mkdir -p /www; echo boot-$n-$(uname -r) > /www/index.html; exec httpd -f -p 8080 -h /www",
    ]);
    let id = c
        .list_machines(APP, &Default::default())
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.name == "sand")
        .unwrap()
        .id;
    wait(&c, &id, "started").await;
    let m = c.get_machine(APP, &id).await.unwrap();
    assert_eq!(
        m.config.unwrap().metadata.unwrap()["hangar_runtime"],
        "runsc"
    );

    let http = reqwest::Client::new();
    let get = || {
        let http = http.clone();
        let url = format!("http://{}/", d.proxy_http);
        async move {
            let r = http
                .get(url)
                .header("host", format!("{APP}.localhost"))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (status, body) = get().await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("boot-1-4.4.0"), "{body}");

    // Stopped, the proxy starts it again; the volume counted both boots.
    c.stop_machine(APP, &id, None, None).await.unwrap();
    wait(&c, &id, "stopped").await;
    let (status, body) = get().await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("boot-2-"), "{body}");

    // A container in the same app and the gVisor machine, by name.
    let plain = c
        .create_machine(
            APP,
            &request(json!({"image": image, "init": {"cmd": ["/bin/sh", "-c",
                "mkdir -p /www; echo plain > /www/index.html; exec httpd -f -p 8080 -h /www"]}})),
        )
        .await
        .unwrap()
        .id;
    wait(&c, &plain, "started").await;
    let (code, out) = sh(
        &c,
        &plain,
        &format!("wget -qO- http://{id}.vm.{APP}.internal:8080/"),
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("boot-2-"), "{out}");
    // From inside gVisor with nc: busybox wget there reads its socket
    // without blocking after a poll, and gVisor's host network (Debian's
    // runsc, 2022-12) sometimes answers that poll early, which wget takes
    // for an error (see docs/isolation.md).
    let (code, out) = sh(
        &c,
        &id,
        &format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc {plain}.vm.{APP}.internal 8080"),
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("200 OK") && out.trim_end().ends_with("plain"),
        "{out}"
    );
}
