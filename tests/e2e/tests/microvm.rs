//! End to end: machines as microVMs (`qemu -M microvm`, the guest's own
//! kernel, `hangar-init` as the guest's PID 1) beside crun containers on
//! one real `hangard`, asked for per machine with the metadata key
//! `hangar_runtime`. On hosts whose `/dev/kvm` cannot run a stock kernel
//! (these machines' is PVM) they boot under TCG, a few seconds each.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hangar_client::Client;
use hangar_e2e::request;
use hangar_test_utils::daemon::Daemon;
use hangar_test_utils::image::ImageBuilder;
use hangar_test_utils::registry::Registry;
use serde_json::{Value, json};

const APP: &str = "vms";

/// A boot under TCG takes seconds, and longer when the suite keeps both
/// cores busy.
const BOOT: Duration = Duration::from_secs(120);

async fn setup(kernel: &Path) -> (Registry, Daemon, Client, String) {
    let reg = Registry::start().await;
    reg.push("test/bb", "v1", &ImageBuilder::busybox().build())
        .await;
    let d = Daemon::start(&[
        "--insecure-registry".into(),
        reg.addr.clone(),
        "--vm-kernel-dir".into(),
        kernel.display().to_string(),
    ])
    .await;
    let c = d.client();
    c.create_app(APP).await.unwrap();
    let image = format!("{}/test/bb:v1", reg.addr);
    (reg, d, c, image)
}

async fn wait(c: &Client, id: &str, state: &str) {
    c.wait_machine(APP, id, &[state], BOOT)
        .await
        .unwrap_or_else(|e| panic!("machine {id} did not reach {state}: {e}"));
}

async fn sh(c: &Client, id: &str, script: &str) -> (i32, String) {
    hangar_e2e::sh(c, APP, id, script).await
}

fn microvm(image: &str, cmd: &str) -> Value {
    json!({
        "image": image,
        "metadata": {"hangar_runtime": "microvm"},
        "init": {"cmd": ["/bin/sh", "-c", cmd]},
        "restart": {"policy": "no"},
        "guest": {"cpus": 1, "memory_mb": 256},
    })
}

/// The guest kernel's release: the one directory under `lib/modules`.
fn guest_release(kernel: &Path) -> String {
    std::fs::read_dir(kernel.join("lib/modules"))
        .unwrap()
        .flatten()
        .next()
        .expect("the guest kernel's modules")
        .file_name()
        .to_string_lossy()
        .into_owned()
}

/// How many qemu processes run for machine `id` of `d` (any, for "").
fn qemus_of(d: &Daemon, id: &str) -> usize {
    let dir = d.data_dir().join("vm/machines").join(id);
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| c.starts_with(b"/usr/bin/qemu") || c.starts_with(b"qemu"))
        .filter(|c| String::from_utf8_lossy(c).contains(&*dir.to_string_lossy()))
        .count()
}

async fn wait_log(d: &Daemon, id: &str, line: &str) {
    hangar_test_utils::wait_until(BOOT, line, || {
        let seen = d.machine_log(id).iter().any(|(_, m)| m == line);
        async move { seen.then_some(()) }
    })
    .await;
}

/// A microVM: its own kernel answers, the host's processes and mounts are
/// out of its sight, its `/proc/sys` is its own; it gets its secret, its
/// logs and signals; it suspends and resumes, outlives a restart of
/// hangard, starts again from a clean disk, and its exit code drives the
/// restart policy.
#[tokio::test]
async fn a_microvm_machine_runs_its_lifecycle_with_its_own_kernel() {
    let Some(kernel) =
        hangar_test_utils::vm_tier("a_microvm_machine_runs_its_lifecycle_with_its_own_kernel")
    else {
        return;
    };
    let (_reg, mut d, c, image) = setup(&kernel).await;
    c.update_secrets(
        APP,
        BTreeMap::from([("TOP".to_owned(), Some("s3cret".to_owned()))]),
    )
    .await
    .unwrap();
    let id = c
        .create_machine(
            APP,
            &request(microvm(
                &image,
                "echo hello from the vm; echo top=$TOP; trap 'echo got-usr1' USR1; \
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
        "microvm"
    );

    // The guest's kernel, not the host's.
    let host_release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let (code, out) = sh(&c, &id, "uname -r").await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.trim(), guest_release(&kernel));
    assert_ne!(out.trim(), host_release.trim());
    // None of the host's processes: PID 1 is the guest's init, and neither
    // hangard nor qemu is there.
    let (code, out) = sh(&c, &id, "cat /proc/1/cmdline; echo; cat /proc/[0-9]*/comm").await;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("/init"), "{out}");
    for host_proc in ["hangard", "qemu-system-x86", "hangar-init"] {
        assert!(!out.lines().any(|l| l == host_proc), "{host_proc}: {out}");
    }
    // None of the host's mounts: not the data dir, not the host's root.
    let (_, mounts) = sh(&c, &id, "cat /proc/mounts").await;
    assert!(
        !mounts.contains(&*d.data_dir().to_string_lossy()),
        "{mounts}"
    );
    // Its root is its own disk.
    assert!(
        mounts.lines().any(|l| l.starts_with("/dev/vda / ext4 ")),
        "{mounts}"
    );
    // Its /proc/sys is its own kernel's.
    let host_swappiness = std::fs::read_to_string("/proc/sys/vm/swappiness").unwrap();
    let other = if host_swappiness.trim() == "13" {
        "17"
    } else {
        "13"
    };
    let (code, out) = sh(
        &c,
        &id,
        &format!("echo {other} > /proc/sys/vm/swappiness && cat /proc/sys/vm/swappiness"),
    )
    .await;
    assert_eq!((code, out.trim()), (0, other), "{out}");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/vm/swappiness").unwrap(),
        host_swappiness
    );

    // Logs, and the secret in the environment; `hangar logs` reads them
    // through the API.
    wait_log(&d, &id, "hello from the vm").await;
    wait_log(&d, &id, "top=s3cret").await;
    let (ok, out, err) = d.cli(&["logs", "-a", APP, "-i", &id, "--no-tail"]);
    assert!(ok && out.contains("hello from the vm"), "{out}{err}");

    // `ps` lists the guest's processes.
    let ps = c.processes(APP, &id).await.unwrap();
    assert!(
        ps.iter()
            .any(|p| p.command.starts_with("/bin/sh -c echo hello from the vm")),
        "{:?}",
        ps.iter().map(|p| (p.pid, &p.command)).collect::<Vec<_>>()
    );

    // A terminal session, in the guest.
    let (code, out, err) = d.cli_with_stdin(
        &["machine", "exec", &id, "-a", APP, "-it", "--", "sh"],
        b"echo $((6*7)); tty; uname -r; exit 3\n",
        Duration::from_secs(60),
    );
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains("42"), "{out}");
    assert!(out.contains("/dev/pts/"), "{out}");
    assert!(out.contains(&guest_release(&kernel)), "{out}");

    // Signals reach the main process.
    c.signal_machine(APP, &id, "SIGUSR1").await.unwrap();
    wait_log(&d, &id, "got-usr1").await;

    // Suspend and resume, as Fly does it for VMs: the VM's state goes to
    // a file and qemu ends; the guest comes back with its memory and goes
    // on where it stopped.
    sh(&c, &id, "echo kept > /dev/shm/mark").await;
    c.machine_action(APP, &id, "suspend").await.unwrap();
    wait(&c, &id, "suspended").await;
    let state = d.data_dir().join("vm/machines").join(&id).join("state");
    assert!(state.join("memory.snap").is_file());
    assert_eq!(qemus_of(&d, &id), 0);
    let exec = c
        .exec(
            APP,
            &id,
            &serde_json::from_value(json!({"command": ["true"]})).unwrap(),
        )
        .await;
    assert!(
        exec.as_ref().is_err() || exec.as_ref().is_ok_and(|r| r.exit_code != 0),
        "exec in a suspended VM: {exec:?}"
    );
    // A hangard restarted meanwhile finds it suspended and resumes it.
    d.restart().await;
    wait(&c, &id, "suspended").await;
    c.start_machine(APP, &id).await.unwrap();
    wait(&c, &id, "started").await;
    assert_eq!(sh(&c, &id, "cat /dev/shm/mark").await.1.trim(), "kept");

    // hangard killed and started again: the VM lives on and is adopted.
    d.restart().await;
    wait(&c, &id, "started").await;
    let (code, out) = sh(&c, &id, "cat /dev/shm/mark; uname -r").await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, format!("kept\n{}\n", guest_release(&kernel)));

    // Stop and start again: a clean root disk each time.
    sh(&c, &id, "touch /left-behind").await;
    c.stop_machine(APP, &id, None, None).await.unwrap();
    wait(&c, &id, "stopped").await;
    c.start_machine(APP, &id).await.unwrap();
    wait(&c, &id, "started").await;
    let (code, out) = sh(&c, &id, "test -e /left-behind && echo kept || echo clean").await;
    assert_eq!((code, out.trim()), (0, "clean"), "{out}");
    c.destroy_machine(APP, &id, true).await.unwrap();
    wait(&c, &id, "destroyed").await;
    assert!(!d.data_dir().join("vm/machines").join(&id).exists());

    // An exit code comes back from the guest, and the restart policy acts
    // on it: the first run and one restart.
    let mut config = microvm(&image, "echo bye; exit 7");
    config["restart"] = json!({"policy": "on-failure", "max_retries": 1});
    let id = c.create_machine(APP, &request(config)).await.unwrap().id;
    let exits = hangar_test_utils::wait_until(BOOT * 2, "two exits", || {
        let (c, id) = (c.clone(), id.clone());
        async move {
            let events = c.machine_events(APP, &id, 50).await.unwrap();
            let exits: Vec<Value> = events
                .into_iter()
                .filter(|e| e.kind == "exit")
                .map(|e| e.request.unwrap()["exit_event"].clone())
                .collect();
            let state = c.get_machine(APP, &id).await.unwrap().state;
            (exits.len() == 2 && state == "stopped").then_some(exits)
        }
    })
    .await;
    assert!(exits.iter().all(|e| e["exit_code"] == 7), "{exits:?}");
    c.destroy_machine(APP, &id, true).await.unwrap();
    wait(&c, &id, "destroyed").await;
    // Nothing of the VMs is left: no qemu, no tap.
    assert_eq!(qemus_of(&d, ""), 0);
    let taps: Vec<PathBuf> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.ends_with(format!("hq{}", &id[id.len() - 13..])))
        .collect();
    assert!(taps.is_empty(), "{taps:?}");
}

/// A microVM made with `hangar machine run --runtime microvm`: its volume
/// (a disk of the VM) keeps data across restarts, the proxy routes to it
/// and boots it when stopped, and it and a container reach each other over
/// `.internal`.
#[tokio::test]
async fn a_microvm_machine_has_volumes_the_proxy_and_the_private_network() {
    let Some(kernel) = hangar_test_utils::vm_tier(
        "a_microvm_machine_has_volumes_the_proxy_and_the_private_network",
    ) else {
        return;
    };
    let (_reg, d, c, image) = setup(&kernel).await;
    let cli = |args: &[&str]| {
        let (ok, out, err) = d.cli(args);
        assert!(ok, "hangar {args:?}: {out}{err}");
        out
    };
    let vol: Value = serde_json::from_str(&cli(&[
        "volumes", "create", "data", "-a", APP, "-s", "1", "--json",
    ]))
    .unwrap();
    // Encrypted, as volumes are by default: the guest opens it with the key
    // the host sends it.
    assert_eq!(vol["encrypted"], true);
    let img = d.data_dir().join(format!(
        "volumes/images/{}.img",
        vol["id"].as_str().unwrap()
    ));
    cli(&[
        "machine",
        "run",
        &image,
        "-a",
        APP,
        "-n",
        "vm",
        "--runtime",
        "microvm",
        "-v",
        "data:/data",
        "-p",
        "80:8080/tcp:http",
        "--autostart",
        "--",
        "/bin/sh",
        "-c",
        "n=$(cat /data/boots 2>/dev/null || echo 0); n=$((n+1)); echo $n > /data/boots; \
         echo vm-payload-on-the-volume > /data/payload; \
         mkdir -p /www; echo boot-$n-$(uname -r) > /www/index.html; exec httpd -f -p 8080 -h /www",
    ]);
    let id = c
        .list_machines(APP, &Default::default())
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.name == "vm")
        .unwrap()
        .id;
    wait(&c, &id, "started").await;
    let m = c.get_machine(APP, &id).await.unwrap();
    assert_eq!(
        m.config.unwrap().metadata.unwrap()["hangar_runtime"],
        "microvm"
    );

    let http = reqwest::Client::new();
    let get = || {
        let http = http.clone();
        let url = format!("http://{}/", d.proxy_http);
        async move {
            let r = http
                .get(url)
                .header("host", format!("{APP}.localhost"))
                .timeout(BOOT)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    // httpd may still be starting when the machine is: the proxy retries a
    // started machine's refused connections a while, but not forever.
    let release = guest_release(&kernel);
    let body = hangar_test_utils::wait_until(BOOT, "the VM's page", || {
        let get = get();
        async move {
            let (status, body) = get.await;
            (status == 200).then_some(body)
        }
    })
    .await;
    assert_eq!(body.trim(), format!("boot-1-{release}"));

    // Stopped, the proxy boots it again; the volume counted both boots
    // (the guest's init syncs before it powers off) and holds the payload
    // only encrypted.
    c.stop_machine(APP, &id, None, None).await.unwrap();
    wait(&c, &id, "stopped").await;
    let bytes = std::fs::read(&img).unwrap();
    let payload = b"vm-payload-on-the-volume";
    assert!(!bytes.windows(payload.len()).any(|w| w == payload));
    let (status, body) = get().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.trim(), format!("boot-2-{release}"));

    // A container in the same app and the microVM, by name, both ways.
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
    assert_eq!(out.trim(), format!("boot-2-{release}"));
    let (code, out) = sh(
        &c,
        &id,
        &format!("wget -qO- http://{plain}.vm.{APP}.internal:8080/"),
    )
    .await;
    assert_eq!((code, out.trim()), (0, "plain"), "{out}");

    // Volume operations while the VM runs with the volume as its disk:
    // a fork and a snapshot are taken with the file system frozen inside
    // the guest, so what it just wrote (still in its page cache) is in the
    // copy; the volume grows online, disk and file system.
    let vid = vol["id"].as_str().unwrap().to_owned();
    let (code, out) = sh(&c, &id, "echo written-just-now > /data/fresh; df -k /data").await;
    assert_eq!(code, 0, "{out}");
    let kb_before = df_kb(&out);
    let fork: Value = serde_json::from_str(&cli(&[
        "volumes", "fork", &vid, "-a", APP, "--name", "copy", "--json",
    ]))
    .unwrap();
    cli(&["volumes", "snapshots", "create", &vid, "-a", APP]);
    let snaps = cli(&["volumes", "snapshots", "list", &vid, "-a", APP, "--json"]);
    assert!(snaps.contains("vs_"), "{snaps}");
    // The VM goes on writing after the copies: thawed.
    let (code, out) = sh(&c, &id, "echo after > /data/after && cat /data/after").await;
    assert_eq!((code, out.trim()), (0, "after"), "{out}");
    let reader = c
        .create_machine(
            APP,
            &request(json!({
                "image": image,
                "init": {"cmd": ["sleep", "3600"]},
                "mounts": [{"volume": fork["id"], "path": "/copy"}],
            })),
        )
        .await
        .unwrap()
        .id;
    wait(&c, &reader, "started").await;
    let (code, out) = sh(&c, &reader, "cat /copy/fresh /copy/boots").await;
    assert_eq!((code, out.as_str()), (0, "written-just-now\n2\n"), "{out}");

    let out = cli(&["volumes", "extend", &vid, "-a", APP, "-s", "2", "--json"]);
    let extended: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(extended["needs_restart"], false, "{out}");
    let (code, out) = sh(&c, &id, "df -k /data; cat /data/fresh").await;
    assert_eq!(code, 0, "{out}");
    let kb_after = df_kb(&out);
    assert!(
        kb_after > kb_before + 700 * 1024,
        "{kb_before} KiB -> {kb_after} KiB: {out}"
    );
    assert!(out.contains("written-just-now"), "{out}");

    // Health checks reach into the VM over its network as into a
    // container: a passing HTTP check and a failing TCP one.
    let mut config = microvm(
        &image,
        "mkdir -p /www; touch /www/healthz; exec httpd -f -p 8080 -h /www",
    );
    config["checks"] = json!({
        "web": {"type": "http", "port": 8080, "path": "/healthz", "interval": "500ms", "timeout": "2s"},
        "closed": {"type": "tcp", "port": 9, "interval": "500ms", "timeout": "1s"},
    });
    let checked = c.create_machine(APP, &request(config)).await.unwrap().id;
    wait(&c, &checked, "started").await;
    hangar_test_utils::wait_until(BOOT, "the VM's checks", || {
        let (c, id) = (c.clone(), checked.clone());
        async move {
            let mut got: Vec<(String, String)> = c
                .get_machine(APP, &id)
                .await
                .unwrap()
                .checks
                .unwrap_or_default()
                .into_iter()
                .map(|ch| (ch.name, ch.status))
                .collect();
            got.sort();
            (got == [
                ("closed".to_owned(), "critical".to_owned()),
                ("web".to_owned(), "passing".to_owned()),
            ])
            .then_some(())
        }
    })
    .await;
}

/// The size in KiB of the file system `df -k` shows on its second line.
fn df_kb(df: &str) -> u64 {
    df.lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no size in {df}"))
}
