//! End to end: what `fly machine run` promises beyond the lifecycle (files,
//! stop config, ...), with real crun machines from a registry on loopback.

use std::time::Duration;

use base64::Engine as _;
use hangar_api_types::MachineExecRequest;
use hangar_client::{Client, LogsQuery};
use hangar_e2e::request;
use hangar_test_utils::daemon::Daemon;
use hangar_test_utils::image::{ImageBuilder, Layer};
use hangar_test_utils::registry::Registry;
use serde_json::json;

const APP: &str = "beh";

async fn setup(image: ImageBuilder) -> (Registry, Daemon, Client, String) {
    hangar_e2e::setup(APP, image).await
}

async fn wait(c: &Client, id: &str, state: &str) {
    hangar_e2e::wait(c, APP, id, state).await
}

async fn sh(c: &Client, id: &str, script: &str) -> String {
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
    assert_eq!(out.exit_code, 0, "{script}: {}", out.stderr);
    out.stdout
}

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn files_are_written_inside_the_machine_and_nowhere_else() {
    if !hangar_test_utils::host_tier(
        "files_are_written_inside_the_machine_and_nowhere_else",
        &["crun", "docker-registry"],
    ) {
        return;
    }
    // The image has symlinks that point out of its root, as absolute and
    // relative links; writes through them must land inside the machine.
    let host = tempfile::tempdir().unwrap();
    let host_dir = host.path().display().to_string();
    let image = ImageBuilder::busybox().layer(
        Layer::new()
            .dir("srv/conf", 0o755)
            .symlink("etc/conf.d", "/srv/conf")
            .symlink("abs-escape", &host_dir)
            .symlink("rel-escape", &format!("../../../../../..{host_dir}")),
    );
    let (_reg, d, c, image) = setup(image).await;

    let m = c
        .create_machine(
            APP,
            &request(json!({
                "image": image,
                "init": {"cmd": ["sleep", "3600"]},
                "files": [
                    {"guest_path": "/etc/app/config.json", "raw_value": b64(b"{\"a\":1}")},
                    {"guest_path": "/etc/conf.d/site.conf", "raw_value": b64(b"site")},
                    {"guest_path": "/usr/local/bin/hello", "raw_value": b64(b"#!/bin/sh\necho hi from a file\n"), "mode": 0o755},
                    {"guest_path": "/secret", "raw_value": b64(b"s"), "mode": 0o600},
                ],
            })),
        )
        .await
        .unwrap();
    wait(&c, &m.id, "started").await;
    assert_eq!(sh(&c, &m.id, "cat /etc/app/config.json").await, "{\"a\":1}");
    assert_eq!(sh(&c, &m.id, "cat /srv/conf/site.conf").await, "site");
    assert_eq!(
        sh(&c, &m.id, "/usr/local/bin/hello").await,
        "hi from a file\n"
    );
    assert_eq!(
        sh(&c, &m.id, "stat -c '%a %U' /secret /usr/local/bin/hello").await,
        "600 root\n755 root\n"
    );
    // Files come back as configured on every start, even after the machine
    // changed them.
    sh(&c, &m.id, "echo changed > /etc/app/config.json").await;
    c.stop_machine(APP, &m.id, None, None).await.unwrap();
    wait(&c, &m.id, "stopped").await;
    c.start_machine(APP, &m.id).await.unwrap();
    wait(&c, &m.id, "started").await;
    assert_eq!(sh(&c, &m.id, "cat /etc/app/config.json").await, "{\"a\":1}");

    // A write through a link out of the root: absolute and relative links
    // resolve inside the machine, where their target does not exist, so the
    // machine fails with the reason; the host directory stays untouched.
    for link in ["abs-escape", "rel-escape"] {
        let m = c
            .create_machine(
                APP,
                &request(json!({
                    "image": image,
                    "init": {"cmd": ["sleep", "3600"]},
                    "files": [{"guest_path": format!("/{link}/pwned"), "raw_value": b64(b"x")}],
                })),
            )
            .await
            .unwrap();
        let _ = c
            .wait_machine(APP, &m.id, &["failed"], Duration::from_secs(30))
            .await;
        let got = c.get_machine(APP, &m.id).await.unwrap();
        assert_eq!(got.state, "failed", "{link}");
        let events =
            serde_json::to_string(&c.machine_events(APP, &m.id, 20).await.unwrap()).unwrap();
        assert!(events.contains("cannot write file"), "{link}: {events}");
    }
    assert_eq!(std::fs::read_dir(host.path()).unwrap().count(), 0);

    // Bad input is refused before anything runs.
    for (files, want) in [
        (
            json!([{"guest_path": "/../../etc/x", "raw_value": ""}]),
            "not normalized",
        ),
        (
            json!([{"guest_path": "relative", "raw_value": ""}]),
            "not absolute",
        ),
        (
            json!([{"guest_path": "/x", "raw_value": "%%%"}]),
            "not valid base64",
        ),
        (
            json!([{"guest_path": "/x", "secret_name": "NOPE"}]),
            "app secret \"NOPE\" not found",
        ),
    ] {
        let err = c
            .create_machine(APP, &request(json!({"image": image, "files": files})))
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(400), "{files}");
        assert!(err.to_string().contains(want), "{files}: {err}");
    }

    // The CLI: flyctl's example of an entrypoint script sent with
    // --file-local, and a literal.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("entrypoint.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho from-entrypoint > /tmp/marker\nexec \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (ok, out, err) = d.cli(&[
        "machine",
        "run",
        &image,
        "-a",
        APP,
        "-n",
        "cli",
        "--file-local",
        &format!("/entrypoint.sh={}", script.display()),
        "--file-literal",
        "/etc/note=Some text I want in a file",
        "--entrypoint",
        "/entrypoint.sh",
        "sleep",
        "3600",
    ]);
    assert!(ok, "{out}{err}");
    let id = c
        .list_machines(APP, &Default::default())
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.name == "cli")
        .unwrap()
        .id;
    wait(&c, &id, "started").await;
    assert_eq!(
        sh(&c, &id, "cat /tmp/marker /etc/note").await,
        "from-entrypoint\nSome text I want in a file"
    );
}

#[tokio::test]
async fn logs_show_and_follow_every_machine_across_restarts() {
    if !hangar_test_utils::host_tier(
        "logs_show_and_follow_every_machine_across_restarts",
        &["crun", "docker-registry"],
    ) {
        return;
    }
    use futures::StreamExt;
    let (_reg, d, c, image) = setup(ImageBuilder::busybox()).await;
    let create = |name: &'static str, script: &'static str| {
        let c = c.clone();
        let image = image.clone();
        async move {
            let mut req = request(json!({
                "image": image,
                "init": {"cmd": ["/bin/sh", "-c", script]},
            }));
            req.name = Some(name.into());
            let m = c.create_machine(APP, &req).await.unwrap();
            wait(&c, &m.id, "started").await;
            m.id
        }
    };
    let a = create(
        "ticker",
        "echo boot; echo oops >&2; i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done",
    )
    .await;
    let lines = |q: LogsQuery| {
        let c = c.clone();
        async move {
            let s = c.logs(APP, &q).await.unwrap();
            s.map(|e| e.unwrap()).collect::<Vec<_>>().await
        }
    };
    hangar_test_utils::wait_until(Duration::from_secs(10), "ticks in the log", || async move {
        let got = lines(LogsQuery::default()).await;
        got.iter().any(|e| e.message == "tick 2").then_some(())
    })
    .await;
    let got = lines(LogsQuery::default()).await;
    assert_eq!(got[0].message, "boot");
    assert!(got.iter().all(|e| e.machine_id == a && e.region == "local"));
    assert!(
        got.iter()
            .any(|e| e.stream == "stderr" && e.message == "oops")
    );
    let last2 = lines(LogsQuery {
        tail: Some(2),
        ..LogsQuery::default()
    })
    .await;
    assert_eq!(last2.len(), 2);
    assert!(last2[0].timestamp <= last2[1].timestamp);

    // Follow: the newest line first, then what comes, through a restart of
    // the machine and from a machine created meanwhile.
    let mut follow = Box::pin(
        c.logs(
            APP,
            &LogsQuery {
                tail: Some(1),
                follow: true,
                ..LogsQuery::default()
            },
        )
        .await
        .unwrap(),
    );
    let first = follow.next().await.unwrap().unwrap();
    assert!(first.message.starts_with("tick"), "{first:?}");
    c.restart_machine(APP, &a, None, None, false).await.unwrap();
    let b = create("greeter", "echo hello from b; sleep 3600").await;
    let (mut boots, mut hello) = (0, false);
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(e) = follow.next().await {
            let e = e.unwrap();
            boots += usize::from(e.machine_id == a && e.message == "boot");
            hello |= e.machine_id == b && e.message == "hello from b";
            if boots == 1 && hello {
                break;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("follow saw boots={boots} hello={hello}"));

    // The CLI prints flyctl's format, for one machine by name.
    let (ok, out, err) = d.cli(&["logs", "-a", APP, "-i", "greeter", "-n", "5"]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        out.contains(&format!("app[{b}] local [info] hello from b")),
        "{out}"
    );
    let (ok, out, _) = d.cli(&["logs", "-a", APP, "-i", "ticker"]);
    assert!(ok && out.contains("[error] oops"), "{out}");
    let (ok, _, err) = d.cli(&["logs", "-a", APP, "--since", "yesterday"]);
    assert!(!ok && err.contains("invalid since"), "{err}");
}

#[tokio::test]
async fn exec_with_a_terminal_and_a_throwaway_shell() {
    if !hangar_test_utils::host_tier(
        "exec_with_a_terminal_and_a_throwaway_shell",
        &["crun", "docker-registry"],
    ) {
        return;
    }
    let (_reg, d, c, image) = setup(ImageBuilder::busybox()).await;
    let m = c
        .create_machine(
            APP,
            &request(json!({"image": image, "init": {"cmd": ["sleep", "3600"]}})),
        )
        .await
        .unwrap();
    wait(&c, &m.id, "started").await;

    // `exec -it`: a shell on a terminal inside the machine, its exit code
    // becoming the CLI's.
    let (code, out, err) = d.cli_with_stdin(
        &["machine", "exec", &m.id, "-a", APP, "-it", "--", "sh"],
        b"echo $((6*7)); tty; exit 3\n",
        Duration::from_secs(30),
    );
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains("42"), "{out}");
    assert!(out.contains("/dev/pts/"), "{out}");

    // Through the client: resize, and Ctrl-C stops the foreground command.
    let mut session = c
        .exec_tty(
            APP,
            &m.id,
            &hangar_client::TtyOptions {
                argv: vec!["sh".into()],
                rows: 20,
                cols: 70,
                term: None,
            },
        )
        .await
        .unwrap()
        .split();
    let mut seen = String::new();
    async fn until(out: &mut hangar_client::TtyOutput, seen: &mut String, want: &str) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while !seen.contains(want) {
                match out.next().await {
                    Some(Ok(hangar_client::TtyEvent::Output(b))) => {
                        seen.push_str(&String::from_utf8_lossy(&b))
                    }
                    other => panic!("{other:?} before {want:?}: {seen}"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {want:?} in {seen}"));
    }
    session.0.send(b"stty size\n").await.unwrap();
    until(&mut session.1, &mut seen, "20 70").await;
    session.0.resize(33, 99).await.unwrap();
    session.0.send(b"sleep 60\n").await.unwrap();
    hangar_test_utils::wait_until(Duration::from_secs(10), "sleep 60 to run", || {
        let c = c.clone();
        let id = m.id.clone();
        async move {
            let (_, ps) = hangar_e2e::sh(&c, APP, &id, "ps -o args").await;
            ps.lines().any(|l| l.trim() == "sleep 60").then_some(())
        }
    })
    .await;
    session.0.send(b"\x03stty size\n").await.unwrap();
    until(&mut session.1, &mut seen, "33 99").await;
    session.0.send(b"exit 0\n").await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match session.1.next().await {
                Some(Ok(hangar_client::TtyEvent::Exit(code))) => return code,
                Some(Ok(_)) => {}
                other => panic!("{other:?}"),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(end, 0);

    // Refused cleanly: a stopped machine, a plain HTTP request.
    c.stop_machine(APP, &m.id, None, None).await.unwrap();
    wait(&c, &m.id, "stopped").await;
    let err = c
        .exec_tty(
            APP,
            &m.id,
            &hangar_client::TtyOptions {
                argv: vec![],
                rows: 24,
                cols: 80,
                term: None,
            },
        )
        .await
        .err()
        .unwrap();
    assert_eq!(err.status(), Some(412), "{err}");

    // `run --shell`: a temporary machine for the shell, gone afterwards.
    let (code, out, err) = d.cli_with_stdin(
        &["machine", "run", &image, "--shell", "-a", APP, "-n", "tmp"],
        b"echo inside-$((2+3)) $FLY_APP_NAME\nexit\n",
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("inside-5 {APP}")), "{out}");
    let tmp = c
        .list_machines(
            APP,
            &hangar_client::ListMachines {
                include_deleted: true,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.name == "tmp")
        .unwrap();
    c.wait_machine(APP, &tmp.id, &["destroyed"], Duration::from_secs(30))
        .await
        .unwrap();
}

/// A daemon on a test clock 3600 times faster than real time (an "hour"
/// is a second), the same across its restarts.
async fn fast_schedules(reg: &Registry) -> Daemon {
    let origin = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    Daemon::start_env(
        &["--insecure-registry".into(), reg.addr.clone()],
        &[("HANGAR_TEST_CLOCK", format!("3600@{origin}"))],
    )
    .await
}

fn flyd_starts(events: &[hangar_api_types::MachineEvent]) -> usize {
    events
        .iter()
        .filter(|e| e.kind == "start" && e.source == "flyd" && e.status == "starting")
        .count()
}

#[tokio::test]
async fn scheduled_machines_run_on_their_schedule_only() {
    if !hangar_test_utils::host_tier(
        "scheduled_machines_run_on_their_schedule_only",
        &["crun", "docker-registry"],
    ) {
        return;
    }
    let reg = Registry::start().await;
    reg.push("test/beh", "v1", &ImageBuilder::busybox().build())
        .await;
    let image = format!("{}/test/beh:v1", reg.addr);
    let mut d = fast_schedules(&reg).await;
    let c = d.client();

    // `machine run --schedule`: the first run at once, a job that ends.
    let (ok, out, err) = d.cli(&[
        "machine",
        "run",
        &image,
        "-a",
        APP,
        "-n",
        "job",
        "--schedule",
        "hourly",
        "--",
        "echo",
        "job ran",
    ]);
    assert!(ok, "{out}{err}");
    let id = c
        .list_machines(APP, &Default::default())
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.name == "job")
        .unwrap()
        .id;
    let m = c.get_machine(APP, &id).await.unwrap();
    let cfg = m.config.unwrap();
    assert_eq!(cfg.schedule.as_deref(), Some("hourly"));
    assert_eq!(cfg.restart.unwrap().policy.as_deref(), Some("on-failure"));
    wait(&c, &id, "stopped").await;

    // By hand: refused, with the reason.
    let (ok, _, err) = d.cli(&["machine", "start", &id, "-a", APP]);
    assert!(!ok && err.contains("schedule"), "{err}");

    // About an "hour" later it has run again, by itself.
    hangar_test_utils::wait_until(Duration::from_secs(10), "a scheduled run", || async {
        let ev = c.machine_events(APP, &id, 50).await.ok()?;
        (flyd_starts(&ev) >= 1).then_some(())
    })
    .await;
    wait(&c, &id, "stopped").await;
    let runs = d
        .machine_log(&id)
        .iter()
        .filter(|(_, m)| m == "job ran")
        .count();
    assert!(runs >= 2, "{runs} runs");

    // The schedule survives a restart of hangard and keeps going.
    let before = flyd_starts(&c.machine_events(APP, &id, 50).await.unwrap());
    d.restart().await;
    let c = d.client();
    hangar_test_utils::wait_until(
        Duration::from_secs(10),
        "a run after the restart",
        || async {
            let ev = c.machine_events(APP, &id, 50).await.ok()?;
            (flyd_starts(&ev) > before).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn standbys_stop_config_env_and_resources() {
    if !hangar_test_utils::host_tier(
        "standbys_stop_config_env_and_resources",
        &["crun", "docker-registry"],
    ) {
        return;
    }
    let (_reg, d, c, image) = setup(ImageBuilder::busybox()).await;
    let cli = |args: &[&str]| {
        let (ok, out, err) = d.cli(args);
        assert!(ok, "hangar {args:?}: {out}{err}");
        out
    };
    cli(&[
        "machine",
        "run",
        &image,
        "-a",
        APP,
        "-n",
        "main",
        "--vm-cpus",
        "2",
        "--vm-memory",
        "384",
        "--kill-signal",
        "SIGTERM",
        "--kill-timeout",
        "20",
        "-m",
        "fly_process_group=web",
        "--",
        "/bin/sh",
        "-c",
        "trap 'echo got TERM; exit 0' TERM; while true; do sleep 0.1; done",
    ]);
    let main = c
        .list_machines(APP, &Default::default())
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.name == "main")
        .unwrap();
    wait(&c, &main.id, "started").await;

    // Fly's variables, and the limits in the machine's own cgroup.
    let env = sh(&c, &main.id, "env").await;
    for want in [
        format!("FLY_APP_NAME={APP}"),
        format!("FLY_MACHINE_ID={}", main.id),
        "FLY_REGION=local".to_string(),
        format!("FLY_IMAGE_REF={image}"),
        format!("FLY_MACHINE_VERSION={}", main.instance_id),
        "FLY_PROCESS_GROUP=web".to_string(),
        "FLY_VM_MEMORY_MB=384".to_string(),
    ] {
        assert!(env.lines().any(|l| l == want), "{want} not in {env}");
    }
    assert_eq!(
        sh(
            &c,
            &main.id,
            // cgroup v2, or v1 as on hosts with the hybrid layout.
            "cd /sys/fs/cgroup; if [ -f cpu.max ]; then cat cpu.max memory.max; \
             else echo $(cat cpu/cpu.cfs_quota_us) $(cat cpu/cpu.cfs_period_us); \
             cat memory/memory.limit_in_bytes; fi"
        )
        .await,
        format!("200000 100000\n{}\n", 384 << 20)
    );

    // A GPU this host does not have is refused before anything runs.
    let (ok, _, err) = d.cli(&[
        "machine",
        "run",
        &image,
        "-a",
        APP,
        "--vm-gpu-kind",
        "a100-pcie-40gb",
    ]);
    assert!(!ok && err.contains("GPUs are not available"), "{err}");

    // A standby for it stays stopped, and becomes an ordinary machine when
    // its standbys are cleared.
    cli(&[
        "machine",
        "run",
        &image,
        "-a",
        APP,
        "-n",
        "spare",
        "--standby-for",
        &main.id,
        "--",
        "sleep",
        "3600",
    ]);
    let spare = c
        .list_machines(APP, &Default::default())
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.name == "spare")
        .unwrap();
    wait(&c, &spare.id, "stopped").await;
    assert_eq!(
        c.get_machine(APP, &spare.id)
            .await
            .unwrap()
            .config
            .unwrap()
            .standbys,
        Some(vec![main.id.clone()])
    );
    let (ok, _, err) = d.cli(&[
        "machine",
        "run",
        &image,
        "-a",
        APP,
        "--standby-for",
        "00000000000000",
    ]);
    assert!(!ok && err.contains("not found"), "{err}");
    cli(&[
        "machine",
        "update",
        &spare.id,
        "-a",
        APP,
        "--standby-for",
        "",
        "-y",
    ]);
    wait(&c, &spare.id, "started").await;
    assert!(
        c.get_machine(APP, &spare.id)
            .await
            .unwrap()
            .config
            .unwrap()
            .standbys
            .is_none()
    );

    // The stop config: SIGTERM (trapped), not the default SIGINT.
    cli(&["machine", "stop", &main.id, "-a", APP]);
    wait(&c, &main.id, "stopped").await;
    assert!(
        d.machine_log(&main.id).iter().any(|(_, m)| m == "got TERM"),
        "{:?}",
        d.machine_log(&main.id)
    );
}
