//! End to end: the Machines API beyond the basic lifecycle (update, exec,
//! suspend, ps, leases, metadata, restart, clone, signal), with real crun,
//! driven through the `hangar` CLI where it has a command for it.

use std::time::Duration;

use hangar_api_types::{CreateMachineRequest, MachineConfig};
use hangar_test_utils::daemon::Daemon;
use hangar_test_utils::image::{ImageBuilder, Layer};
use hangar_test_utils::registry::Registry;
use serde_json::json;

#[tokio::test]
async fn update_exec_suspend_ps_leases_metadata_restart_clone_signal() {
    if !hangar_test_utils::host_tier(
        "update_exec_suspend_ps_leases_metadata_restart_clone_signal",
        &["crun", "docker-registry"],
    ) {
        return;
    }
    let reg = Registry::start().await;
    for v in ["v1", "v2"] {
        let img = ImageBuilder::busybox()
            .layer(Layer::new().file("version", v.as_bytes(), 0o644))
            .build();
        reg.push("test/app", v, &img).await;
    }
    let d = Daemon::with_registry(&reg.addr).await;
    let c = d.client();
    c.create_app("ops").await.unwrap();
    let config: MachineConfig = serde_json::from_value(json!({
        "image": format!("{}/test/app:v1", reg.addr),
        "init": {"cmd": ["/bin/sh", "-c", "trap 'echo got USR1' USR1; echo started; while true; do sleep 0.1; done"]},
        "metadata": {"team": "a"},
    }))
    .unwrap();
    let m = c
        .create_machine(
            "ops",
            &CreateMachineRequest {
                config: Some(config),
                name: Some("web".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let id = m.id.clone();
    c.wait_machine("ops", &id, &["started"], Duration::from_secs(30))
        .await
        .unwrap();
    let cli = |args: &[&str]| {
        let (ok, out, err) = d.cli(args);
        assert!(ok, "hangar {args:?} failed: {out}{err}");
        out
    };

    // exec: a command line, and argv.
    assert_eq!(
        cli(&["machine", "exec", "web", "-a", "ops", "cat /version"]),
        "v1"
    );
    assert_eq!(
        cli(&[
            "machine",
            "exec",
            "web",
            "-a",
            "ops",
            "sh",
            "-c",
            "echo $FLY_APP_NAME"
        ]),
        "ops\n"
    );
    let (ok, _, _) = d.cli(&["machine", "exec", "web", "-a", "ops", "sh -c 'exit 3'"]);
    assert!(!ok, "a failing command must fail the CLI");

    // update: new image and env, a new version, the old one replaced.
    let v2 = format!("{}/test/app:v2", reg.addr);
    cli(&[
        "machine", "update", "web", "-a", "ops", "--image", &v2, "-e", "X=2", "-y",
    ]);
    assert_eq!(
        cli(&["machine", "exec", "web", "-a", "ops", "cat /version"]),
        "v2"
    );
    assert_eq!(
        cli(&["machine", "exec", "web", "-a", "ops", "sh -c 'echo $X'"]),
        "2\n"
    );
    let versions = c.machine_versions("ops", &id).await.unwrap();
    assert_eq!(versions.len(), 2);
    assert!(versions[0].user_config.image.ends_with(":v2"));
    let m2 = c.get_machine("ops", &id).await.unwrap();
    assert_eq!(m2.image_ref.unwrap().tag, "v2");

    // suspend: frozen (a command cannot run), then resumed by start.
    cli(&["machine", "suspend", "web", "-a", "ops"]);
    c.wait_machine("ops", &id, &["suspended"], Duration::from_secs(10))
        .await
        .unwrap();
    let rootfs = d.machine_dir(&id).join("bundle/rootfs");
    assert!(rootfs.exists());
    cli(&["machine", "start", "web", "-a", "ops"]);
    c.wait_machine("ops", &id, &["started"], Duration::from_secs(10))
        .await
        .unwrap();
    let events = c.machine_events("ops", &id, 5).await.unwrap();
    assert_eq!(events[0].request.as_ref().unwrap()["error"], "resumed");

    // ps: init is pid 1, the shell runs under it.
    let ps = cli(&["machine", "ps", "web", "-a", "ops"]);
    assert!(
        ps.lines()
            .any(|l| l.starts_with("1 ") && l.contains("/.hangar/init")),
        "{ps}"
    );

    // signal reaches the main process.
    cli(&["machine", "signal", "web", "-a", "ops", "-s", "SIGUSR1"]);
    hangar_test_utils::wait_until(Duration::from_secs(5), "the USR1 trap", || async {
        d.machine_log(&id)
            .iter()
            .any(|(_, m)| m == "got USR1")
            .then_some(())
    })
    .await;

    // leases: held by someone else, the CLI's stop is refused; clear frees it.
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/v1/apps/ops/machines/{id}/lease?ttl=120", d.url))
        .bearer_auth(&d.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let view = cli(&["machine", "leases", "view", "web", "-a", "ops"]);
    assert!(view.contains("admin"), "{view}");
    let (ok, _, err) = d.cli(&["machine", "stop", "web", "-a", "ops"]);
    assert!(!ok && err.contains("leased"), "{err}");
    cli(&["machine", "leases", "clear", "web", "-a", "ops"]);

    // metadata.
    cli(&[
        "machine", "metadata", "set", "web", "role=api", "tier=1", "-a", "ops",
    ]);
    assert_eq!(
        cli(&["machine", "metadata", "get", "web", "role", "-a", "ops"]),
        "api\n"
    );
    cli(&[
        "machine", "metadata", "unset", "web", "tier", "team", "-a", "ops",
    ]);
    assert_eq!(
        c.metadata("ops", &id)
            .await
            .unwrap()
            .into_iter()
            .collect::<Vec<_>>(),
        vec![("role".into(), "api".into())]
    );

    // restart: stopped and started again, with its events.
    cli(&[
        "machine", "restart", "web", "-a", "ops", "--signal", "SIGKILL",
    ]);
    let events = c.machine_events("ops", &id, 10).await.unwrap();
    assert!(events.iter().any(|e| e.kind == "restart"), "{events:?}");
    assert_eq!(c.get_machine("ops", &id).await.unwrap().state, "started");

    // clone: the same config in a new machine.
    cli(&["machine", "clone", "web", "-a", "ops", "--name", "web-2"]);
    let machines = c.list_machines("ops", &Default::default()).await.unwrap();
    let clone = machines.iter().find(|m| m.name == "web-2").unwrap();
    assert_eq!(clone.state, "started");
    assert_eq!(
        cli(&["machine", "exec", "web-2", "-a", "ops", "cat /version"]),
        "v2"
    );

    // cordon shows in the machine.
    cli(&["machine", "cordon", "web", "-a", "ops"]);
    assert!(c.get_machine("ops", &id).await.unwrap().cordoned);
    cli(&["machine", "uncordon", "web", "-a", "ops"]);
}
