//! The container driver with real crun, a real overlay root filesystem and an
//! image imported into a real image store. Needs root and crun.

use std::path::Path;
use std::time::Duration;

use hangar_core::machine::Observed;
use hangar_core::process::ProcessSpec;
use hangar_core::{MachineId, Signal};
use hangar_image::{Image, ImageStore, StoreOptions};
use hangar_runtime::{CpuKind, Resources, Runtime, RuntimeError, WorkloadSpec};
use hangar_runtime_oci::{OciConfig, OciEngine, OciFlavor, OciRuntime, host};
use hangar_test_utils::image::{ImageBuilder, Layer};

struct Env {
    dir: tempfile::TempDir,
    image: Image,
}

async fn env() -> Env {
    hangar_test_utils::require_program("crun", "crun");
    host::fix_hybrid_cgroups().expect("cgroup fix");
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path().join("images"), StoreOptions::default()).unwrap();
    let archive = dir.path().join("img.tar");
    let img = ImageBuilder::busybox()
        .layer(Layer::new().file("etc/motd", b"from the image\n", 0o644))
        .build();
    std::fs::write(&archive, img.oci_archive(None)).unwrap();
    let image = store
        .import_archive(&archive, Some("test/bb:1"))
        .await
        .unwrap();
    Env { dir, image }
}

/// A failing test must not leave containers, shims or mounts behind.
impl Drop for Env {
    fn drop(&mut self) {
        let Ok(rd) = std::fs::read_dir(self.dir.path().join("machines")) else {
            return;
        };
        for e in rd.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            let crun = |args: &[&str]| {
                let _ = std::process::Command::new("crun")
                    .arg("--root")
                    .arg(self.dir.path().join("run/crun"))
                    .args(args)
                    .output();
            };
            crun(&["kill", &id, "KILL"]);
            std::thread::sleep(Duration::from_millis(100));
            crun(&["delete", "--force", &id]);
            let _ = hangar_runtime_oci::fsutil::unmount(&e.path().join("bundle/rootfs"));
            let _ = hangar_runtime_oci::netns::remove(&e.path().join("netns"));
        }
    }
}

fn runtime(dir: &Path) -> OciRuntime {
    OciRuntime::new(OciConfig {
        engines: vec![OciEngine::new(
            OciFlavor::Crun,
            host::find_program("crun").unwrap(),
            &dir.join("run"),
        )],
        init_path: hangar_runtime_oci::install_init(&dir.join("bin")).unwrap(),
        machines_dir: dir.join("machines"),
        log_max_bytes: 1 << 20,
        cgroup_parent: "/hangar-test".into(),
        secrets_dir: dir.join("secrets"),
        volumes: None,
        precreate: true,
    })
    .unwrap()
}

fn spec(env: &Env, script: &str) -> WorkloadSpec {
    let id = MachineId::generate();
    WorkloadSpec {
        hostname: id.to_string(),
        id,
        process: ProcessSpec {
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env: vec![
                ("PATH".into(), "/bin".into()),
                ("GREETING".into(), "hello".into()),
            ],
            cwd: "/tmp".into(),
            user: String::new(),
        },
        layers: env.image.layers.clone(),
        resources: Resources {
            cpus: 1,
            memory_mb: 256,
            cpu_kind: CpuKind::Shared,
            pids_max: 1024,
        },
        files: vec![],
        tty: false,
        secret_env: Default::default(),
        volumes: vec![],
        network: None,
        isolation: None,
    }
}

fn log(rt: &OciRuntime, id: &MachineId) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(rt.log_path(id).unwrap()).unwrap_or_default();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["stream"].as_str().unwrap().to_owned(),
                v["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn wait(rt: &OciRuntime, id: &MachineId) -> hangar_core::ExitInfo {
    tokio::time::timeout(Duration::from_secs(20), rt.wait(id))
        .await
        .expect("exit in time")
        .unwrap()
}

#[tokio::test]
async fn runs_captures_output_and_reports_exit_code() {
    if !hangar_test_utils::host_tier("runs_captures_output_and_reports_exit_code", &["crun"]) {
        return;
    }
    let env = env().await;
    let rt = runtime(env.dir.path());
    let s = spec(
        &env,
        "echo $GREETING from $(hostname) in $(pwd); cat /etc/motd; echo oops >&2; exit 3",
    );
    rt.start(&s).await.unwrap();
    let exit = wait(&rt, &s.id).await;
    assert_eq!(exit.exit_code, 3);
    assert_eq!(exit.signal, None);
    assert!(!exit.oom_killed);
    let lines = log(&rt, &s.id);
    assert!(
        lines.contains(&("stdout".into(), format!("hello from {} in /tmp", s.id))),
        "{lines:?}"
    );
    assert!(
        lines.contains(&("stdout".into(), "from the image".into())),
        "{lines:?}"
    );
    assert!(
        lines.contains(&("stderr".into(), "oops".into())),
        "{lines:?}"
    );
    rt.destroy(&s.id).await.unwrap();
    assert!(!env.dir.path().join("machines").join(s.id.as_str()).exists());
}

#[tokio::test]
async fn main_process_on_a_terminal() {
    if !hangar_test_utils::host_tier("main_process_on_a_terminal", &["crun"]) {
        return;
    }
    let env = env().await;
    let rt = runtime(env.dir.path());
    let mut s = spec(
        &env,
        "tty; [ -t 0 ] && [ -t 1 ] && echo on-a-tty; echo err >&2; stty size; exit 5",
    );
    s.tty = true;
    rt.start(&s).await.unwrap();
    let exit = wait(&rt, &s.id).await;
    assert_eq!(exit.exit_code, 5);
    let lines = log(&rt, &s.id);
    // One stream, as on any terminal.
    for want in ["/dev/pts/0", "on-a-tty", "err", "24 80"] {
        assert!(
            lines.contains(&("stdout".into(), want.into())),
            "{want}: {lines:?}"
        );
    }
    rt.destroy(&s.id).await.unwrap();
}

/// Whether any file under `dir` contains `needle`.
fn tree_contains(dir: &Path, needle: &[u8]) -> Option<std::path::PathBuf> {
    let rd = std::fs::read_dir(dir).ok()?;
    for e in rd.flatten() {
        let p = e.path();
        let ft = e.file_type().ok()?;
        if ft.is_dir() {
            if let Some(hit) = tree_contains(&p, needle) {
                return Some(hit);
            }
        } else if ft.is_file() {
            if let Ok(data) = std::fs::read(&p) {
                if data.windows(needle.len()).any(|w| w == needle) {
                    return Some(p);
                }
            }
        }
    }
    None
}

#[tokio::test]
async fn secrets_reach_the_process_but_not_the_disk() {
    if !hangar_test_utils::host_tier("secrets_reach_the_process_but_not_the_disk", &["crun"]) {
        return;
    }
    use hangar_runtime::{GuestFile, SecretEnv};
    let env = env().await;
    let rt = runtime(env.dir.path());
    let mut s = spec(
        &env,
        "echo token=$TOKEN greeting=$GREETING; cat /etc/app/key; echo; stat -c %a /etc/app/key; \
         cat /.hangar/secrets.env >/dev/null && echo readable; sleep 3600",
    );
    s.secret_env = SecretEnv(vec![
        ("TOKEN".into(), "tok-s3cr3t-value".into()),
        ("GREETING".into(), "from-a-secret".into()),
    ]);
    s.files.push(GuestFile {
        path: "/etc/app/key".into(),
        contents: b"file-s3cr3t-value".to_vec(),
        mode: 0o640,
        secret: true,
    });
    rt.start(&s).await.unwrap();
    hangar_test_utils::wait_until(
        Duration::from_secs(10),
        "the secrets in the log",
        || async {
            let lines = log(&rt, &s.id);
            lines.iter().any(|(_, m)| m == "640").then_some(())
        },
    )
    .await;
    let lines = log(&rt, &s.id);
    // Secrets win over the config's environment.
    assert!(
        lines.contains(&(
            "stdout".into(),
            "token=tok-s3cr3t-value greeting=from-a-secret".into()
        )),
        "{lines:?}"
    );
    assert!(
        lines.contains(&("stdout".into(), "file-s3cr3t-value".into())),
        "{lines:?}"
    );
    // Nothing under the machine's directory (bundle, upper layer, state)
    // holds a secret: only the log, which printed them on purpose, does.
    let machine_dir = env.dir.path().join("machines").join(s.id.as_str());
    for secret in [&b"tok-s3cr3t-value"[..], b"file-s3cr3t-value"] {
        let hit = tree_contains(&machine_dir, secret);
        assert!(
            hit.as_ref().is_none_or(|p| p.ends_with("logs/machine.log")),
            "{hit:?}"
        );
    }
    rt.cleanup(&s.id).await.unwrap();
    assert!(!env.dir.path().join("secrets").join(s.id.as_str()).exists());
    rt.destroy(&s.id).await.unwrap();
}

#[tokio::test]
async fn signals_reach_the_main_process_and_kill_works() {
    if !hangar_test_utils::host_tier("signals_reach_the_main_process_and_kill_works", &["crun"]) {
        return;
    }
    let env = env().await;
    let rt = runtime(env.dir.path());
    let s = spec(
        &env,
        "trap 'echo got TERM; exit 7' TERM; echo ready; while true; do sleep 0.05; done",
    );
    rt.start(&s).await.unwrap();
    hangar_test_utils::wait_until(Duration::from_secs(5), "ready", || async {
        log(&rt, &s.id)
            .iter()
            .any(|(_, m)| m == "ready")
            .then_some(())
    })
    .await;
    rt.signal(&s.id, Signal::Term).await.unwrap();
    let exit = wait(&rt, &s.id).await;
    assert_eq!(exit.exit_code, 7);
    rt.cleanup(&s.id).await.unwrap();

    let s2 = spec(&env, "sleep 1000");
    rt.start(&s2).await.unwrap();
    rt.signal(&s2.id, Signal::Kill).await.unwrap();
    let exit = wait(&rt, &s2.id).await;
    assert_eq!((exit.exit_code, exit.signal), (137, Some(9)));
    rt.destroy(&s2.id).await.unwrap();
    assert!(matches!(
        rt.signal(&s2.id, Signal::Term).await,
        Err(RuntimeError::NotRunning(_))
    ));
}

#[tokio::test]
async fn memory_limit_kills_with_oom() {
    if !hangar_test_utils::host_tier("memory_limit_kills_with_oom", &["crun"]) {
        return;
    }
    let env = env().await;
    let rt = runtime(env.dir.path());
    let mut s = spec(
        &env,
        "x=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa; while true; do x=$x$x; done",
    );
    s.resources.memory_mb = 32;
    rt.start(&s).await.unwrap();
    let exit = wait(&rt, &s.id).await;
    assert!(exit.oom_killed, "{exit:?}");
    assert_eq!(exit.exit_code, 137);
    rt.cleanup(&s.id).await.unwrap();
    // The machine's cgroup (and its count of OOM kills) outlives the run:
    // the next run's exit is its own.
    s.process.argv = vec!["/bin/sh".into(), "-c".into(), "exit 4".into()];
    rt.start(&s).await.unwrap();
    let exit = wait(&rt, &s.id).await;
    assert!(!exit.oom_killed, "{exit:?}");
    assert_eq!(exit.exit_code, 4);
    rt.destroy(&s.id).await.unwrap();
}

#[tokio::test]
async fn runs_as_the_image_user_and_resets_the_rootfs() {
    if !hangar_test_utils::host_tier("runs_as_the_image_user_and_resets_the_rootfs", &["crun"]) {
        return;
    }
    let env = env().await;
    let rt = runtime(env.dir.path());
    let mut s = spec(&env, "id; touch /tmp/was-here; ls /tmp");
    s.process.user = "bob".into();
    rt.start(&s).await.unwrap();
    assert_eq!(wait(&rt, &s.id).await.exit_code, 0);
    let lines = log(&rt, &s.id);
    let id_line = &lines[0].1;
    assert!(
        id_line.starts_with("uid=1000(bob) gid=1000(bob) groups="),
        "{lines:?}"
    );
    assert!(
        id_line.contains("1000(bob)") && id_line.contains("50(staff)"),
        "{lines:?}"
    );
    assert!(lines.iter().any(|(_, m)| m == "was-here"));
    rt.cleanup(&s.id).await.unwrap();

    // Next run: a clean root filesystem, and the image layer untouched.
    s.process.argv = vec![
        "/bin/sh".into(),
        "-c".into(),
        "test ! -e /tmp/was-here && echo clean".into(),
    ];
    s.process.user = String::new();
    rt.start(&s).await.unwrap();
    assert_eq!(wait(&rt, &s.id).await.exit_code, 0);
    assert!(log(&rt, &s.id).iter().any(|(_, m)| m == "clean"));
    for l in &env.image.layers {
        assert!(!l.join("tmp/was-here").exists());
    }
    rt.destroy(&s.id).await.unwrap();

    let mut bad = spec(&env, "true");
    bad.process.user = "nosuchuser".into();
    let err = rt.start(&bad).await.unwrap_err();
    assert!(
        matches!(err, RuntimeError::InvalidSpec(ref m) if m.contains("nosuchuser")),
        "{err}"
    );
    rt.destroy(&bad.id).await.unwrap();
}

#[tokio::test]
async fn missing_executable_exits_127() {
    if !hangar_test_utils::host_tier("missing_executable_exits_127", &["crun"]) {
        return;
    }
    let env = env().await;
    let rt = runtime(env.dir.path());
    let mut s = spec(&env, "");
    s.process.argv = vec!["/no/such/program".into()];
    rt.start(&s).await.unwrap();
    let exit = wait(&rt, &s.id).await;
    assert_eq!(exit.exit_code, 127);
    assert!(exit.error.unwrap().contains("/no/such/program"));
    rt.destroy(&s.id).await.unwrap();
}

#[tokio::test]
async fn a_new_driver_adopts_running_machines_and_finds_missed_exits() {
    if !hangar_test_utils::host_tier(
        "a_new_driver_adopts_running_machines_and_finds_missed_exits",
        &["crun"],
    ) {
        return;
    }
    let env = env().await;
    let rt = runtime(env.dir.path());
    let long = spec(&env, "trap 'exit 5' INT; while true; do sleep 0.05; done");
    let short = spec(&env, "exit 4");
    rt.start(&long).await.unwrap();
    rt.start(&short).await.unwrap();
    wait(&rt, &short.id).await;
    drop(rt); // hangard goes away; the machines do not

    let rt2 = runtime(env.dir.path());
    assert_eq!(rt2.observe(&long.id).await.unwrap(), Observed::Running);
    match rt2.observe(&short.id).await.unwrap() {
        Observed::Exited(info) => assert_eq!(info.exit_code, 4),
        other => panic!("expected the missed exit, got {other:?}"),
    }
    assert_eq!(
        rt2.observe(&MachineId::generate()).await.unwrap(),
        Observed::Absent
    );
    rt2.signal(&long.id, Signal::Int).await.unwrap();
    assert_eq!(wait(&rt2, &long.id).await.exit_code, 5);
    for id in [&long.id, &short.id] {
        rt2.destroy(id).await.unwrap();
    }
}

#[tokio::test]
async fn destroy_leaves_no_process_mount_or_cgroup() {
    if !hangar_test_utils::host_tier("destroy_leaves_no_process_mount_or_cgroup", &["crun"]) {
        return;
    }
    let env = env().await;
    let rt = runtime(env.dir.path());
    let s = spec(&env, "sleep 1000");
    rt.start(&s).await.unwrap();
    let rootfs = env
        .dir
        .path()
        .join("machines")
        .join(s.id.as_str())
        .join("bundle/rootfs");
    // The container holds its root; the host keeps no mount of it (each
    // container made later copies every mount of the host).
    assert!(!hangar_runtime_oci::fsutil::is_mounted(&rootfs));
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&format!("{}/bundle/rootfs", s.id)),
        "the host still mounts the root of {}",
        s.id
    );
    let root = std::fs::read_dir(format!("/proc/{}/root/bin", container_pid(&env, &s.id)))
        .unwrap()
        .count();
    assert!(root > 0, "the container's root is empty");
    rt.destroy(&s.id).await.unwrap();
    assert!(!hangar_runtime_oci::fsutil::is_mounted(&rootfs));
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(s.id.as_str()),
        "a mount of {} is left",
        s.id
    );
    assert!(
        !Path::new("/sys/fs/cgroup/memory/hangar-test")
            .join(s.id.as_str())
            .exists()
    );
    let ps = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(!ps.contains(s.id.as_str()), "leftover process for {}", s.id);
    let list = std::process::Command::new("crun")
        .arg("--root")
        .arg(env.dir.path().join("run/crun"))
        .arg("list")
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&list.stdout).contains(s.id.as_str()));
}

#[tokio::test]
async fn prewarmed_starts_use_a_clean_root_and_the_current_spec() {
    if !hangar_test_utils::host_tier(
        "prewarmed_starts_use_a_clean_root_and_the_current_spec",
        &["crun"],
    ) {
        return;
    }
    let env = env().await;
    let rt = runtime(env.dir.path());
    let mut s = spec(&env, "touch /tmp/dirty; echo run=$RUN");
    s.process.env.push(("RUN".into(), "one".into()));
    rt.start(&s).await.unwrap();
    assert_eq!(wait(&rt, &s.id).await.exit_code, 0);
    rt.cleanup(&s.id).await.unwrap();

    // Prewarmed for the same spec: its container made and waiting, its
    // root clean and held by the container alone.
    rt.prewarm(&s).await.unwrap();
    let rootfs = env
        .dir
        .path()
        .join("machines")
        .join(s.id.as_str())
        .join("bundle/rootfs");
    assert!(!hangar_runtime_oci::fsutil::is_mounted(&rootfs));
    let waiting = format!("/proc/{}/root", container_pid(&env, &s.id));
    assert!(Path::new(&waiting).join("bin").exists());
    assert!(
        !Path::new(&waiting).join("tmp/dirty").exists(),
        "the prewarmed root is not clean"
    );
    s.process.argv = vec![
        "/bin/sh".into(),
        "-c".into(),
        "test ! -e /tmp/dirty && echo clean run=$RUN".into(),
    ];
    // A changed spec (new command) is prepared afresh, not taken from the prewarm.
    rt.start(&s).await.unwrap();
    assert_eq!(wait(&rt, &s.id).await.exit_code, 0);
    assert!(
        log(&rt, &s.id).iter().any(|(_, m)| m == "clean run=one"),
        "{:?}",
        log(&rt, &s.id)
    );
    rt.cleanup(&s.id).await.unwrap();

    rt.prewarm(&s).await.unwrap();
    rt.start(&s).await.unwrap();
    assert_eq!(wait(&rt, &s.id).await.exit_code, 0);
    assert_eq!(
        log(&rt, &s.id)
            .iter()
            .filter(|(_, m)| m == "clean run=one")
            .count(),
        2
    );

    // A prewarmed, stopped machine is destroyed without leftovers.
    rt.cleanup(&s.id).await.unwrap();
    rt.prewarm(&s).await.unwrap();
    rt.destroy(&s.id).await.unwrap();
    assert!(!hangar_runtime_oci::fsutil::is_mounted(&rootfs));
    assert!(!env.dir.path().join("machines").join(s.id.as_str()).exists());
}

#[tokio::test]
async fn freeze_thaw_exec_ps_and_memory() {
    if !hangar_test_utils::host_tier("freeze_thaw_exec_ps_and_memory", &["crun"]) {
        return;
    }
    use hangar_runtime::ExecRequest;
    let env = env().await;
    let rt = runtime(env.dir.path());
    let mut s = spec(
        &env,
        "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.05; done",
    );
    s.resources.memory_mb = 128;
    rt.start(&s).await.unwrap();
    let count = || async {
        let out = rt
            .exec(
                &s.id,
                &ExecRequest {
                    argv: vec!["cat".into(), "/tmp/count".into()],
                    stdin: None,
                    timeout: Duration::from_secs(5),
                },
            )
            .await
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u64>()
            .unwrap_or(0)
    };
    hangar_test_utils::wait_until(Duration::from_secs(10), "the counter to count", || async {
        (count().await > 0).then_some(())
    })
    .await;

    // Frozen: the counter stands still (over a moment it would otherwise
    // have counted in); thawed: it moves again.
    rt.freeze(&s.id).await.unwrap();
    let a = std::fs::read_to_string(
        env.dir
            .path()
            .join("machines")
            .join(s.id.as_str())
            .join("upper/tmp/count"),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = std::fs::read_to_string(
        env.dir
            .path()
            .join("machines")
            .join(s.id.as_str())
            .join("upper/tmp/count"),
    )
    .unwrap();
    assert_eq!(a, b, "a frozen machine kept running");
    rt.thaw(&s.id).await.unwrap();
    let before = count().await;
    hangar_test_utils::wait_until(
        Duration::from_secs(10),
        "the counter to move again",
        || async { (count().await > before).then_some(()) },
    )
    .await;

    // exec: env and cwd of the machine, stdin, exit codes, timeouts.
    let out = rt
        .exec(
            &s.id,
            &ExecRequest {
                argv: vec![
                    "sh".into(),
                    "-c".into(),
                    "echo $GREETING in $(pwd); cat; echo err >&2; exit 3".into(),
                ],
                stdin: Some(b"from stdin\n".to_vec()),
                timeout: Duration::from_secs(5),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello in /tmp\nfrom stdin\n"
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    assert_eq!((out.exit_code, out.timed_out), (3, false));
    let out = rt
        .exec(
            &s.id,
            &ExecRequest {
                argv: vec!["sleep".into(), "30".into()],
                stdin: None,
                timeout: Duration::from_millis(300),
            },
        )
        .await
        .unwrap();
    assert!(out.timed_out);

    // ps: the init, the shell, pids as the machine sees them.
    let ps = rt.processes(&s.id).await.unwrap();
    assert_eq!(ps[0].pid, 1, "{ps:?}");
    assert!(ps[0].command.starts_with("/.hangar/init"));
    assert!(ps.iter().any(|p| p.command.starts_with("/bin/sh -c")));

    // memory: the limit, and a live change.
    let m = rt.memory(&s.id).await.unwrap();
    assert_eq!(m.limit_mb, 128);
    rt.set_memory_limit(&s.id, 256).await.unwrap();
    assert_eq!(rt.memory(&s.id).await.unwrap().limit_mb, 256);

    // Stopped while frozen: its cgroup, kept for the next container, is
    // left thawed, so the next run runs (and is not frozen from birth).
    rt.freeze(&s.id).await.unwrap();
    rt.cleanup(&s.id).await.unwrap();
    // Even one found frozen with nothing in it.
    let v1 = Path::new("/sys/fs/cgroup/freezer/hangar-test")
        .join(s.id.as_str())
        .join("freezer.state");
    let v2 = Path::new("/sys/fs/cgroup/hangar-test")
        .join(s.id.as_str())
        .join("cgroup.freeze");
    if v1.exists() {
        std::fs::write(&v1, "FROZEN").unwrap();
    } else {
        std::fs::write(&v2, "1").unwrap();
    }
    rt.cleanup(&s.id).await.unwrap();
    let mut again = s.clone();
    again.process.argv = vec!["/bin/sh".into(), "-c".into(), "exit 5".into()];
    rt.start(&again).await.unwrap();
    assert_eq!(wait(&rt, &s.id).await.exit_code, 5);
    rt.cleanup(&s.id).await.unwrap();
    rt.start(&s).await.unwrap();

    // A frozen machine is still destroyed cleanly.
    rt.freeze(&s.id).await.unwrap();
    rt.destroy(&s.id).await.unwrap();
    assert!(!env.dir.path().join("machines").join(s.id.as_str()).exists());
}

#[tokio::test]
async fn interactive_terminal_with_ctrl_c_resize_and_exit_code() {
    if !hangar_test_utils::host_tier(
        "interactive_terminal_with_ctrl_c_resize_and_exit_code",
        &["crun"],
    ) {
        return;
    }
    use hangar_runtime::{Terminal, TtyRequest};
    let env = env().await;
    let rt = runtime(env.dir.path());
    let s = spec(&env, "sleep 3600");
    rt.start(&s).await.unwrap();
    let mut term = rt
        .exec_tty(
            &s.id,
            &TtyRequest {
                argv: vec!["/bin/sh".into()],
                env: vec![("TERM".into(), "xterm".into())],
                rows: 30,
                cols: 90,
            },
        )
        .await
        .unwrap();
    // Reads until `want` shows up in the output.
    async fn until(term: &mut Box<dyn Terminal>, out: &mut String, want: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 4096];
        while !out.contains(want) {
            let n = tokio::time::timeout_at(deadline, term.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("no {want:?} in {out:?}"))
                .unwrap();
            assert!(n > 0, "terminal closed before {want:?}: {out:?}");
            out.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
    let mut out = String::new();
    term.write(b"echo $((6*7)) $TERM $GREETING; tty; stty size\n")
        .await
        .unwrap();
    until(&mut term, &mut out, "42 xterm hello").await;
    until(&mut term, &mut out, "/dev/pts/").await;
    until(&mut term, &mut out, "30 90").await;
    term.resize(40, 100).unwrap();
    term.write(b"stty size\n").await.unwrap();
    until(&mut term, &mut out, "40 100").await;
    // Ctrl-C interrupts the foreground command, not the shell.
    let started = std::time::Instant::now();
    term.write(b"sleep 30\n").await.unwrap();
    hangar_test_utils::wait_until(Duration::from_secs(10), "sleep 30 to run", || async {
        host_ps("sleep 30").then_some(())
    })
    .await;
    term.write(b"\x03").await.unwrap();
    term.write(b"echo after-$((1+1))\n").await.unwrap();
    until(&mut term, &mut out, "after-2").await;
    assert!(started.elapsed() < Duration::from_secs(10));
    term.write(b"exit 3\n").await.unwrap();
    let mut buf = [0u8; 4096];
    while tokio::time::timeout(Duration::from_secs(10), term.read(&mut buf))
        .await
        .unwrap()
        .unwrap()
        > 0
    {}
    assert_eq!(term.wait().await.unwrap(), 3);
    // A terminal dropped mid-command takes its command with it.
    let term = rt
        .exec_tty(
            &s.id,
            &TtyRequest {
                argv: vec!["sleep".into(), "4242".into()],
                env: vec![],
                rows: 24,
                cols: 80,
            },
        )
        .await
        .unwrap();
    hangar_test_utils::wait_until(Duration::from_secs(10), "sleep 4242 to run", || async {
        host_ps("sleep 4242").then_some(())
    })
    .await;
    drop(term);
    hangar_test_utils::wait_until(Duration::from_secs(5), "the command to end", || async {
        (!host_ps("sleep 4242")).then_some(())
    })
    .await;
    // A command that does not exist says so and fails.
    let mut term = rt
        .exec_tty(
            &s.id,
            &TtyRequest {
                argv: vec!["/no/such/program".into()],
                env: vec![],
                rows: 24,
                cols: 80,
            },
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), term.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    let code = term.wait().await.unwrap();
    assert_ne!(code, 0);
    assert!(
        String::from_utf8_lossy(&out).contains("not found"),
        "{out:?}"
    );
    rt.destroy(&s.id).await.unwrap();
}

/// Whether a process of this host runs exactly `args`.
fn host_ps(args: &str) -> bool {
    let out = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == args)
}

/// `crun state`'s status of the machine's container, if it has one.
fn crun_status(env: &Env, id: &MachineId) -> Option<String> {
    let out = std::process::Command::new("crun")
        .arg("--root")
        .arg(env.dir.path().join("run/crun"))
        .arg("state")
        .arg(id.as_str())
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["status"].as_str().map(str::to_owned)
}

/// Whether any process mentions the machine (its shim, its runtime, its init).
fn any_process_of(id: &MachineId) -> bool {
    let ps = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&ps.stdout).contains(id.as_str())
}

#[tokio::test]
async fn a_stopped_machines_next_container_waits_created_and_only_its_own_spec_starts_it() {
    if !hangar_test_utils::host_tier(
        "a_stopped_machines_next_container_waits_created_and_only_its_own_spec_starts_it",
        &["crun"],
    ) {
        return;
    }
    let env = env().await;
    let rt = runtime(env.dir.path());
    let mut s = spec(&env, "touch /tmp/dirty; echo secret=$SECRET");
    s.secret_env = hangar_runtime::SecretEnv(vec![("SECRET".into(), "one".into())]);
    rt.start(&s).await.unwrap();
    assert_eq!(wait(&rt, &s.id).await.exit_code, 0);
    rt.cleanup(&s.id).await.unwrap();
    let state = env
        .dir
        .path()
        .join("machines")
        .join(s.id.as_str())
        .join("state");

    // Prewarmed: the container is created, waiting; nothing of the
    // workload runs, and the machine is not running.
    rt.prewarm(&s).await.unwrap();
    assert_eq!(crun_status(&env, &s.id).as_deref(), Some("created"));
    assert!(state.join("standby").exists());
    assert!(
        rt.usage(&s.id).is_none(),
        "a standby is not a running machine"
    );
    assert!(matches!(
        rt.signal(&s.id, Signal::Term).await,
        Err(RuntimeError::NotRunning(_))
    ));
    // Prewarming again for the same spec keeps it.
    rt.prewarm(&s).await.unwrap();
    assert_eq!(crun_status(&env, &s.id).as_deref(), Some("created"));
    rt.start(&s).await.unwrap();
    assert_eq!(wait(&rt, &s.id).await.exit_code, 0);
    assert!(!state.join("standby").exists());
    let lines =
        |rt: &OciRuntime| -> Vec<String> { log(rt, &s.id).into_iter().map(|(_, m)| m).collect() };
    assert_eq!(lines(&rt), ["secret=one", "secret=one"]);
    rt.cleanup(&s.id).await.unwrap();

    // Secrets changed since the prewarm: the standby is not used.
    rt.prewarm(&s).await.unwrap();
    s.secret_env = hangar_runtime::SecretEnv(vec![("SECRET".into(), "two".into())]);
    s.process.argv = vec![
        "/bin/sh".into(),
        "-c".into(),
        "test ! -e /tmp/dirty && echo clean secret=$SECRET".into(),
    ];
    rt.start(&s).await.unwrap();
    assert_eq!(wait(&rt, &s.id).await.exit_code, 0);
    assert_eq!(
        lines(&rt).last().map(String::as_str),
        Some("clean secret=two")
    );
    rt.cleanup(&s.id).await.unwrap();

    // hangard goes away with a standby waiting: the next one finds the
    // machine not running and ends the standby; a prewarm makes another.
    rt.prewarm(&s).await.unwrap();
    drop(rt);
    let rt = runtime(env.dir.path());
    assert_eq!(rt.observe(&s.id).await.unwrap(), Observed::Absent);
    assert_eq!(crun_status(&env, &s.id), None);
    assert!(!any_process_of(&s.id), "the old standby's shim is left");
    rt.prewarm(&s).await.unwrap();
    rt.start(&s).await.unwrap();
    assert_eq!(wait(&rt, &s.id).await.exit_code, 0);
    assert_eq!(
        lines(&rt).last().map(String::as_str),
        Some("clean secret=two")
    );
    rt.cleanup(&s.id).await.unwrap();

    // A standby's container killed from outside: its shim goes by itself,
    // and the start makes a container afresh.
    rt.prewarm(&s).await.unwrap();
    std::process::Command::new("crun")
        .arg("--root")
        .arg(env.dir.path().join("run/crun"))
        .args(["kill", s.id.as_str(), "KILL"])
        .status()
        .unwrap();
    hangar_test_utils::wait_until(
        Duration::from_secs(10),
        "the standby's shim to go",
        || async { (!any_process_of(&s.id)).then_some(()) },
    )
    .await;
    rt.start(&s).await.unwrap();
    assert_eq!(wait(&rt, &s.id).await.exit_code, 0);
    assert_eq!(
        lines(&rt).last().map(String::as_str),
        Some("clean secret=two")
    );
    rt.cleanup(&s.id).await.unwrap();

    // Destroyed while a standby waits: nothing is left.
    rt.prewarm(&s).await.unwrap();
    assert_eq!(crun_status(&env, &s.id).as_deref(), Some("created"));
    rt.destroy(&s.id).await.unwrap();
    assert_eq!(crun_status(&env, &s.id), None);
    assert!(!any_process_of(&s.id), "a process of the standby is left");
    assert!(
        !Path::new("/sys/fs/cgroup/memory/hangar-test")
            .join(s.id.as_str())
            .exists()
    );
}

/// The host pid of machine `id`'s container init (from its shim's state).
fn container_pid(env: &Env, id: &MachineId) -> i32 {
    let path = env
        .dir
        .path()
        .join("machines")
        .join(id.as_str())
        .join("state/container.pid");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap()
}

/// A container that ended is deleted by its shim without starting crun:
/// crun's state and the container's cgroup (in every hierarchy) go, as
/// `crun delete` would remove them, and crun no longer lists it.
#[tokio::test]
async fn an_ended_container_is_deleted_without_starting_the_runtime() {
    if !hangar_test_utils::host_tier(
        "an_ended_container_is_deleted_without_starting_the_runtime",
        &["crun"],
    ) {
        return;
    }
    let env = env().await;
    let rt = runtime(env.dir.path());
    let s = spec(&env, "sleep 0.2; exit 3");
    rt.start(&s).await.unwrap();
    let cgroups: Vec<_> = std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|e| e.path().join("hangar-test").join(s.id.as_str()))
        .filter(|d| d.is_dir())
        .collect();
    assert!(!cgroups.is_empty(), "the container has no cgroup");
    assert_eq!(wait(&rt, &s.id).await.exit_code, 3);
    let state = env.dir.path().join("run/crun").join(s.id.as_str());
    hangar_test_utils::wait_until(Duration::from_secs(10), "crun's state removed", || {
        let gone = !state.exists();
        async move { gone.then_some(()) }
    })
    .await;
    // The cgroup stays, empty, for the machine's next container, which
    // runs in it; destroy removes it.
    for d in &cgroups {
        let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap();
        assert!(procs.trim().is_empty(), "{}: {procs}", d.display());
    }
    let shim_log = env
        .dir
        .path()
        .join("machines")
        .join(s.id.as_str())
        .join("state/shim.log");
    let text = std::fs::read_to_string(shim_log).unwrap_or_default();
    assert!(!text.contains("deletes the container"), "{text}");
    let list = std::process::Command::new("crun")
        .arg("--root")
        .arg(env.dir.path().join("run/crun"))
        .arg("list")
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&list.stdout).contains(s.id.as_str()));
    rt.cleanup(&s.id).await.unwrap();
    rt.start(&s).await.unwrap();
    let pid = container_pid(&env, &s.id);
    for d in &cgroups {
        let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap();
        assert!(
            procs.lines().any(|p| p == pid.to_string()),
            "{}",
            d.display()
        );
    }
    assert_eq!(wait(&rt, &s.id).await.exit_code, 3);
    rt.destroy(&s.id).await.unwrap();
    for d in &cgroups {
        assert!(!d.exists(), "{} is left", d.display());
    }
}

/// hangard killed while it dismissed a standby (its shim killed, its
/// container not yet deleted): the next hangard finds the machine not
/// running, leaves no waiting container behind, and a start makes the
/// machine's container afresh rather than failing on the one left.
#[tokio::test]
async fn a_container_left_by_a_killed_standby_does_not_block_the_next_start() {
    if !hangar_test_utils::host_tier(
        "a_container_left_by_a_killed_standby_does_not_block_the_next_start",
        &["crun"],
    ) {
        return;
    }
    let env = env().await;
    let rt = runtime(env.dir.path());
    let s = spec(&env, "echo fresh");
    let state = env
        .dir
        .path()
        .join("machines")
        .join(s.id.as_str())
        .join("state");
    let kill_shim = || {
        let text = std::fs::read_to_string(state.join("shim.pid")).unwrap();
        let pid: i32 = text.split_whitespace().next().unwrap().parse().unwrap();
        // SAFETY: kill has no memory-safety preconditions.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        hangar_test_utils::wait_until(Duration::from_secs(10), "the shim to end", move || {
            let gone = hangar_runtime_oci::proc_start_time(pid).is_none();
            async move { gone.then_some(()) }
        })
    };

    // Observed by the next hangard: the leftover goes at once.
    rt.prewarm(&s).await.unwrap();
    assert_eq!(crun_status(&env, &s.id).as_deref(), Some("created"));
    kill_shim().await;
    drop(rt);
    assert_eq!(crun_status(&env, &s.id).as_deref(), Some("created"));
    let rt = runtime(env.dir.path());
    assert_eq!(rt.observe(&s.id).await.unwrap(), Observed::Absent);
    assert_eq!(
        crun_status(&env, &s.id),
        None,
        "the leftover container stays"
    );
    assert!(!any_process_of(&s.id), "a process of the leftover is left");
    rt.start(&s).await.unwrap();
    assert_eq!(wait(&rt, &s.id).await.exit_code, 0);
    rt.cleanup(&s.id).await.unwrap();

    // Started without an observe first (the container appeared after it):
    // the start clears the leftover itself.
    rt.prewarm(&s).await.unwrap();
    kill_shim().await;
    drop(rt);
    let rt = runtime(env.dir.path());
    assert_eq!(crun_status(&env, &s.id).as_deref(), Some("created"));
    rt.start(&s).await.unwrap();
    assert_eq!(wait(&rt, &s.id).await.exit_code, 0);
    let lines: Vec<String> = log(&rt, &s.id).into_iter().map(|(_, m)| m).collect();
    assert_eq!(lines, ["fresh", "fresh"]);
    rt.destroy(&s.id).await.unwrap();
    assert_eq!(crun_status(&env, &s.id), None);
    assert!(!any_process_of(&s.id), "a process of the machine is left");
}
