//! End to end: what a crash soak and hostile tenants found (the hardening
//! issue), each with the test that would have caught it. A real `hangard`,
//! real crun, a real registry on loopback.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use hangar_client::Client;
use hangar_e2e::{request, wait};
use hangar_test_utils::daemon::Daemon;
use hangar_test_utils::image::ImageBuilder;
use hangar_test_utils::registry::Registry;
use serde_json::json;

async fn setup(app: &str) -> (Registry, Daemon, Client, String) {
    hangar_e2e::setup(app, ImageBuilder::busybox()).await
}

/// A number from the clock, for spreading kills over a window.
fn jitter(max: u64) -> u64 {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    (n / 1000) % (max + 1)
}

/// The machine's cgroup directories left in any hierarchy.
fn cgroup_dirs(id: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in rd.flatten() {
            let p = e.path().join("hangar").join(id);
            if p.exists() {
                out.push(p.display().to_string());
            }
        }
    }
    if Path::new("/sys/fs/cgroup/hangar").join(id).exists() {
        out.push(format!("/sys/fs/cgroup/hangar/{id}"));
    }
    out
}

/// Pids in the machine's cgroup, from the pids controller (v1) or the
/// unified hierarchy (v2).
fn cgroup_pids(id: &str) -> BTreeSet<i32> {
    ["/sys/fs/cgroup/pids/hangar", "/sys/fs/cgroup/hangar"]
        .iter()
        .filter_map(|d| std::fs::read_to_string(Path::new(d).join(id).join("cgroup.procs")).ok())
        .flat_map(|t| {
            t.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

/// Whether the machine's memory cgroup has hit its limit (v1 `failcnt`, v2
/// `max` events).
fn memory_limit_hit(id: &str) -> bool {
    let v1 = std::fs::read_to_string(format!("/sys/fs/cgroup/memory/hangar/{id}/memory.failcnt"));
    let v2 = std::fs::read_to_string(format!("/sys/fs/cgroup/hangar/{id}/memory.events"));
    v1.ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .is_some_and(|n| n > 0)
        || v2.ok().is_some_and(|t| {
            t.lines()
                .filter_map(|l| l.strip_prefix("max "))
                .any(|n| n.trim().parse::<u64>().is_ok_and(|n| n > 0))
        })
}

fn pids_file(id: &str, name: &str) -> Option<String> {
    ["/sys/fs/cgroup/pids/hangar", "/sys/fs/cgroup/hangar"]
        .iter()
        .find_map(|d| std::fs::read_to_string(Path::new(d).join(id).join(name)).ok())
        .map(|s| s.trim().to_owned())
}

/// Defect 1: a kill -9 of hangard at any instant of a machine's start,
/// followed by a new hangard, leaves the machine running: never `stopped`
/// with an exit the machine did not make.
#[tokio::test]
async fn a_crash_of_hangard_during_a_start_never_kills_the_machine() {
    if !hangar_test_utils::host_tier(
        "a_crash_of_hangard_during_a_start_never_kills_the_machine",
        &["crun", "docker-registry"],
    ) {
        return;
    }
    let (_reg, mut d, _c, image) = setup("crash").await;
    let mut ids = Vec::new();
    for round in 0..24 {
        let c = d.client();
        let id = c
            .create_machine(
                "crash",
                &request(json!({
                    "image": image,
                    "init": {"cmd": ["/bin/sh", "-c", "while true; do sleep 1; done"]},
                    "restart": {"policy": "no"},
                })),
            )
            .await
            .unwrap()
            .id;
        // Kills land anywhere in the first 60 ms: before the shim is
        // spawned, while it runs crun, as it reports, after.
        tokio::time::sleep(Duration::from_millis(jitter(60))).await;
        d.kill();
        d.restart().await;
        let c = d.client();
        wait(&c, "crash", &id, "started").await;
        let exits: Vec<_> = c
            .machine_events("crash", &id, 50)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == "exit")
            .collect();
        assert!(
            exits.is_empty(),
            "round {round}: machine {id} exited: {exits:?}\n{}",
            d.log()
        );
        ids.push(id);
    }
    // Every one still runs, with exactly one supervisor.
    let c = d.client();
    for id in &ids {
        assert_eq!(c.get_machine("crash", id).await.unwrap().state, "started");
        let out = std::process::Command::new("ps")
            .args(["-eo", "args"])
            .output()
            .unwrap();
        let shims = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(&format!("shim --id {id}")))
            .count();
        assert_eq!(shims, 1, "machine {id} has {shims} shims");
    }
}

const BOMB: &str = "b() { b | b & }; b; while true; do sleep 1; done";

/// Defect 3: each machine's task limit scales with its memory, and a fork
/// bomb stops at it.
#[tokio::test]
async fn a_fork_bomb_stops_at_the_pids_limit_that_scales_with_memory() {
    if !hangar_test_utils::host_tier(
        "a_fork_bomb_stops_at_the_pids_limit_that_scales_with_memory",
        &["crun", "docker-registry"],
    ) {
        return;
    }
    let (_reg, _d, c, image) = setup("bomb").await;
    let plain = c
        .create_machine(
            "bomb",
            &request(json!({"image": image, "init": {"cmd": ["sleep", "600"]}})),
        )
        .await
        .unwrap()
        .id;
    // A 64 MB machine: 256 tasks at most.
    let id = c
        .create_machine(
            "bomb",
            &request(json!({
                "image": image,
                "guest": {"cpus": 1, "memory_mb": 64},
                "init": {"cmd": ["/bin/sh", "-c", BOMB]},
                "restart": {"policy": "no"},
            })),
        )
        .await
        .unwrap()
        .id;
    wait(&c, "bomb", &plain, "started").await;
    assert_eq!(pids_file(&plain, "pids.max").as_deref(), Some("1024"));
    hangar_test_utils::wait_until(Duration::from_secs(30), "the bomb to hit its limit", || {
        let id = id.clone();
        async move {
            let events: u64 = pids_file(&id, "pids.events")?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (events > 0).then_some(())
        }
    })
    .await;
    assert_eq!(pids_file(&id, "pids.max").as_deref(), Some("256"));
    let current: u64 = pids_file(&id, "pids.current")
        .unwrap_or_default()
        .parse()
        .unwrap_or(0);
    assert!(current <= 256, "{current} tasks");
    c.destroy_machine("bomb", &id, true).await.unwrap();
    wait(&c, "bomb", &id, "destroyed").await;
    assert!(cgroup_pids(&id).is_empty(), "{:?}", cgroup_pids(&id));
}

/// Defect 2: a forced destroy of a machine full of forking processes ends
/// every one of them and removes its cgroup before it reports `destroyed`
/// (a host with a high `--machine-pids-limit` lets the bomb grow large).
#[tokio::test]
async fn destroy_leaves_no_process_of_a_fork_bomb_behind() {
    if !hangar_test_utils::host_tier(
        "destroy_leaves_no_process_of_a_fork_bomb_behind",
        &["crun", "docker-registry"],
    ) {
        return;
    }
    let reg = Registry::start().await;
    reg.push("test/bb", "v1", &ImageBuilder::busybox().build())
        .await;
    let d = Daemon::start(&[
        "--insecure-registry".into(),
        reg.addr.clone(),
        "--machine-pids-limit".into(),
        "3000".into(),
    ])
    .await;
    let c = d.client();
    c.create_app("bomb").await.unwrap();
    // Twice: how long the kernel takes varies from run to run.
    for _ in 0..2 {
        let id = c
            .create_machine(
                "bomb",
                &request(json!({
                    "image": format!("{}/test/bb:v1", reg.addr),
                    "guest": {"cpus": 1, "memory_mb": 64},
                    "init": {"cmd": ["/bin/sh", "-c", BOMB]},
                    "restart": {"policy": "no"},
                })),
            )
            .await
            .unwrap()
            .id;
        // Large, and starved of memory: the state in which the kernel's own
        // teardown of the namespace takes minutes.
        hangar_test_utils::wait_until(
            Duration::from_secs(60),
            "the bomb to fill the machine",
            || {
                let id = id.clone();
                async move { (cgroup_pids(&id).len() > 300 && memory_limit_hit(&id)).then_some(()) }
            },
        )
        .await;
        assert_eq!(pids_file(&id, "pids.max").as_deref(), Some("3000"));
        // And a process of the machine's that its init's death does not take
        // with it: one from outside its pid namespace, moved into its cgroup.
        let mut stray = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        join_cgroup(&id, stray.id());
        assert!(cgroup_pids(&id).contains(&(stray.id() as i32)));
        c.destroy_machine("bomb", &id, true).await.unwrap();
        wait(&c, "bomb", &id, "destroyed").await;
        assert!(
            cgroup_pids(&id).is_empty(),
            "{} processes left after destroyed",
            cgroup_pids(&id).len()
        );
        assert!(
            cgroup_dirs(&id).is_empty(),
            "cgroups left: {:?}",
            cgroup_dirs(&id)
        );
        assert!(!d.machine_dir(&id).exists());
        let status = stray.try_wait().unwrap();
        let _ = stray.kill();
        let _ = stray.wait();
        assert!(
            status.is_some(),
            "a process of the machine outlived its destroy"
        );
    }
}

/// Moves `pid` into the machine's cgroup in every hierarchy that has it.
fn join_cgroup(id: &str, pid: u32) {
    for d in cgroup_dirs(id) {
        let _ = std::fs::write(Path::new(&d).join("cgroup.procs"), pid.to_string());
    }
}

/// Defects 4, 5 and 6: an app's volumes, snapshots and tokens go with it (an
/// app made later under its name starts empty); a delete without force is
/// refused while volumes hold data; tokens are listed, minted no longer
/// than their minter lives, and revoked, through the CLI.
#[tokio::test]
async fn an_apps_volumes_and_tokens_die_with_it() {
    if !hangar_test_utils::host_tier(
        "an_apps_volumes_and_tokens_die_with_it",
        &["crun", "docker-registry"],
    ) {
        return;
    }
    let (_reg, d, c, image) = setup("x").await;
    let vol = c
        .create_volume(
            "x",
            &hangar_api_types::CreateVolumeRequest {
                name: Some("data".into()),
                size_gb: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let id = c
        .create_machine(
            "x",
            &request(json!({
                "image": image,
                "init": {"cmd": ["/bin/sh", "-c", "echo secret-data > /data/f; sleep 600"]},
                "mounts": [{"volume": vol.id, "path": "/data"}],
            })),
        )
        .await
        .unwrap()
        .id;
    wait(&c, "x", &id, "started").await;
    c.create_snapshot("x", &vol.id).await.unwrap();
    let image_file = d
        .data_dir()
        .join("volumes/images")
        .join(format!("{}.img", vol.id));
    let images_dir = d.data_dir().join("volumes/images");
    let before: Vec<_> = std::fs::read_dir(&images_dir).unwrap().flatten().collect();
    assert!(
        !before.is_empty(),
        "no volume image in {}",
        images_dir.display()
    );

    // Tokens through the CLI: a deploy token, and one it mints for a year.
    let (ok, token, err) = d.cli(&["tokens", "create", "deploy", "-a", "x", "--expiry", "1h"]);
    assert!(ok, "{err}");
    let token = token.trim().to_owned();
    let short = Client::new(&d.url, &token);
    assert_eq!(
        short
            .list_machines("x", &Default::default())
            .await
            .unwrap()
            .len(),
        1
    );
    let minted = short
        .create_token(
            "x",
            &hangar_api_types::CreateAppTokenRequest {
                name: Some("ci".into()),
                expiry: Some("8760h".into()),
            },
        )
        .await
        .unwrap();
    let list = c.list_tokens(Some("x")).await.unwrap();
    let mine = list.iter().find(|t| t.id == minted.info.id).unwrap();
    let minter = list.iter().find(|t| t.id != minted.info.id).unwrap();
    assert_eq!(mine.expires_at, minter.expires_at, "{list:?}");
    let (ok, out, _) = d.cli(&["tokens", "list", "-a", "x"]);
    assert!(
        ok && out.contains(&minted.info.id) && out.contains("ci"),
        "{out}"
    );
    // Revoking the minter takes what it minted along.
    let (ok, _, err) = d.cli(&["tokens", "revoke", &minter.id, "-a", "x"]);
    assert!(ok, "{err}");
    let revoked = Client::new(&d.url, &minted.token);
    assert_eq!(
        revoked
            .list_machines("x", &Default::default())
            .await
            .unwrap_err()
            .status(),
        Some(401)
    );
    let survivor = c
        .create_token("x", &hangar_api_types::CreateAppTokenRequest::default())
        .await
        .unwrap()
        .token;

    // Without force: refused while machines or volumes are there.
    let err = c.delete_app("x", false).await.unwrap_err();
    assert_eq!(err.status(), Some(412), "{err}");
    c.destroy_machine("x", &id, true).await.unwrap();
    wait(&c, "x", &id, "destroyed").await;
    let err = c.delete_app("x", false).await.unwrap_err();
    assert_eq!(err.status(), Some(412), "{err}");
    assert!(err.to_string().contains(&vol.id), "{err}");
    // With force: gone, data and all.
    c.delete_app("x", true).await.unwrap();
    assert!(!image_file.exists());
    let after: Vec<_> = std::fs::read_dir(&images_dir).unwrap().flatten().collect();
    assert!(after.is_empty(), "{after:?}");
    assert!(
        std::fs::read_dir(d.data_dir().join("volumes"))
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_dir(e.path()).ok())
            .flatten()
            .flatten()
            .all(|f| !f.file_name().to_string_lossy().starts_with("vs_")),
        "a snapshot outlived its app"
    );

    // The name taken again: nothing of the old app reaches the new one.
    c.create_app("x").await.unwrap();
    assert!(c.list_volumes("x").await.unwrap().is_empty());
    assert!(c.list_tokens(Some("x")).await.unwrap().is_empty());
    let old = Client::new(&d.url, &survivor);
    assert_eq!(old.list_secrets("x").await.unwrap_err().status(), Some(401));
}

/// Defect 8: an exec's timeout ends the whole exec, background children
/// included; and an impossible registry port or service port is a 400.
#[tokio::test]
async fn exec_timeouts_end_background_children_and_bad_ports_are_refused() {
    if !hangar_test_utils::host_tier(
        "exec_timeouts_end_background_children_and_bad_ports_are_refused",
        &["crun", "docker-registry"],
    ) {
        return;
    }
    let (_reg, _d, c, image) = setup("ex").await;
    let id = c
        .create_machine(
            "ex",
            &request(json!({"image": image, "init": {"cmd": ["sleep", "600"]}})),
        )
        .await
        .unwrap()
        .id;
    wait(&c, "ex", &id, "started").await;
    let exec = |cmd: &str, timeout: i64| hangar_api_types::MachineExecRequest {
        command: Some(vec!["/bin/sh".into(), "-c".into(), cmd.into()]),
        timeout: Some(timeout),
        ..Default::default()
    };
    let t0 = std::time::Instant::now();
    let r = c
        .exec("ex", &id, &exec("sleep 27 & echo bg", 2))
        .await
        .unwrap();
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(6), "exec took {took:?}");
    assert_eq!(r.stdout.trim(), "bg", "{r:?}");
    let ps = c
        .exec(
            "ex",
            &id,
            &exec("ps -o args | grep -c '^sleep 27' || true", 5),
        )
        .await
        .unwrap();
    assert_eq!(ps.stdout.trim(), "0", "{ps:?}");
    // A command that itself outlives the timeout ends too (a 408, as Fly).
    let t0 = std::time::Instant::now();
    let err = c
        .exec("ex", &id, &exec("sleep 31 & sleep 30", 1))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(408), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    let ps = c
        .exec(
            "ex",
            &id,
            &exec("ps -o args | grep -c '^sleep 3[01]' || true", 5),
        )
        .await
        .unwrap();
    assert_eq!(ps.stdout.trim(), "0", "{ps:?}");
    // Quick commands are as they were.
    let r = c
        .exec("ex", &id, &exec("echo hi; exit 3", 5))
        .await
        .unwrap();
    assert_eq!((r.exit_code, r.stdout.as_str()), (3, "hi\n"));

    for config in [
        json!({"image": "127.0.0.1:99999/x:1"}),
        json!({"image": image, "services": [{"internal_port": 99999999, "protocol": "tcp"}]}),
    ] {
        let err = c
            .create_machine("ex", &request(config.clone()))
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(400), "{config}: {err}");
    }
}
