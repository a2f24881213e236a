//! End to end: volumes with a real hangard, crun, loop devices and ext4:
//! data survives restarts of the machine and of hangard and the machine's
//! destruction, is encrypted on disk, grows, snapshots and restores.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use hangar_test_utils::daemon::Daemon;
use hangar_test_utils::image::ImageBuilder;
use hangar_test_utils::registry::Registry;

const APP: &str = "vol";

/// Whether the data extents of `file` contain `needle`.
fn image_contains(file: &Path, needle: &[u8]) -> bool {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(file).unwrap();
    let len = f.metadata().unwrap().len() as i64;
    let mut pos = 0i64;
    while pos < len {
        // SAFETY: lseek on an open fd.
        let data = unsafe { libc::lseek(f.as_raw_fd(), pos, libc::SEEK_DATA) };
        if data < 0 {
            break;
        }
        // SAFETY: lseek on an open fd.
        let hole = unsafe { libc::lseek(f.as_raw_fd(), data, libc::SEEK_HOLE) };
        let mut buf = vec![0u8; (hole - data) as usize];
        f.read_exact_at(&mut buf, data as u64).unwrap();
        if buf.windows(needle.len()).any(|w| w == needle) {
            return true;
        }
        pos = hole;
    }
    false
}

/// Counts boots on the volume, leaves a payload there, then idles.
const SCRIPT: &str = "n=$(cat /data/count 2>/dev/null || echo 0); n=$((n+1)); echo $n > /data/count; \
    echo payload-on-the-volume > /data/payload; sync; echo boot $n; sleep 3600";

#[tokio::test]
async fn volumes_keep_data_through_everything() {
    if !hangar_test_utils::host_tier(
        "volumes_keep_data_through_everything",
        &["crun", "docker-registry"],
    ) {
        return;
    }
    let reg = Registry::start().await;
    reg.push("test/vol", "v1", &ImageBuilder::busybox().build())
        .await;
    let image = format!("{}/test/vol:v1", reg.addr);
    let mut d = Daemon::with_registry(&reg.addr).await;
    let c = d.client();
    c.create_app(APP).await.unwrap();
    let cli = |d: &Daemon, args: &[&str]| {
        let (ok, out, err) = d.cli(args);
        assert!(ok, "hangar {args:?}: {out}{err}");
        out
    };
    let out = cli(
        &d,
        &["volumes", "create", "data", "-a", APP, "-s", "1", "--json"],
    );
    let vol: serde_json::Value = serde_json::from_str(&out).unwrap();
    let vid = vol["id"].as_str().unwrap().to_owned();
    assert_eq!(vol["encrypted"], true);

    let run = |d: &Daemon, name: &str, volume: &str| {
        cli(
            d,
            &[
                "machine", "run", &image, "-a", APP, "-n", name, "-v", volume, "--", "/bin/sh",
                "-c", SCRIPT,
            ],
        );
    };
    let machine = |name: &'static str| {
        let c = c.clone();
        async move {
            c.list_machines(APP, &Default::default())
                .await
                .unwrap()
                .into_iter()
                .find(|m| m.name == name)
                .unwrap()
                .id
        }
    };
    async fn booted(d: &Daemon, id: &str, n: u32) {
        let want = format!("boot {n}");
        hangar_test_utils::wait_until(Duration::from_secs(20), &want, || async {
            d.machine_log(id)
                .iter()
                .any(|(_, m)| *m == want)
                .then_some(())
        })
        .await;
    }

    run(&d, "db", "data:/data");
    let db = machine("db").await;
    booted(&d, &db, 1).await;
    let list = cli(&d, &["volumes", "list", "-a", APP]);
    assert!(list.contains(&db), "{list}");

    // Restart, stop and start: the data stays.
    cli(&d, &["machine", "restart", &db, "-a", APP]);
    booted(&d, &db, 2).await;
    cli(&d, &["machine", "stop", &db, "-a", APP]);
    cli(&d, &["machine", "start", &db, "-a", APP]);
    booted(&d, &db, 3).await;

    // Encrypted on disk: the image never holds the payload in the clear.
    let img = d.data_dir().join(format!("volumes/images/{vid}.img"));
    assert!(img.exists());
    assert!(!image_contains(&img, b"payload-on-the-volume"));

    // One machine per volume; no deleting it while bound.
    let (ok, _, err) = d.cli(&[
        "machine",
        "run",
        &image,
        "-a",
        APP,
        "-v",
        &format!("{vid}:/data"),
    ]);
    assert!(!ok && err.contains("already attached"), "{err}");
    let (ok, _, err) = d.cli(&["volumes", "destroy", &vid, "-a", APP]);
    assert!(!ok && err.contains("bound to machine"), "{err}");

    // hangard restarts: the machine and its volume carry on.
    d.restart().await;
    let c = d.client();
    cli(&d, &["machine", "restart", &db, "-a", APP]);
    booted(&d, &db, 4).await;

    // Growth: the machine sees the new size (after a restart where the
    // kernel does not allow online growth).
    let out = cli(&d, &["volumes", "extend", &vid, "-a", APP, "-s", "2"]);
    if out.contains("Restart the machine") {
        cli(&d, &["machine", "restart", &db, "-a", APP]);
        booted(&d, &db, 5).await;
    }
    let df = c
        .exec(
            APP,
            &db,
            &serde_json::from_value(serde_json::json!({"command": ["df", "-k", "/data"]})).unwrap(),
        )
        .await
        .unwrap()
        .stdout;
    let kb: u64 = df
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(kb > 1_800_000, "{df}");

    // A snapshot, taken while the machine writes.
    cli(&d, &["volumes", "snapshots", "create", &vid, "-a", APP]);
    let snaps: serde_json::Value = serde_json::from_str(&cli(
        &d,
        &["volumes", "snapshots", "list", &vid, "-a", APP, "--json"],
    ))
    .unwrap();
    let snap = snaps[0]["id"].as_str().unwrap().to_owned();
    let count_then: u32 = c
        .exec(
            APP,
            &db,
            &serde_json::from_value(serde_json::json!({"command": ["cat", "/data/count"]}))
                .unwrap(),
        )
        .await
        .unwrap()
        .stdout
        .trim()
        .parse()
        .unwrap();

    // The machine goes; the volume and its data stay, free for another one,
    // picked by name.
    cli(&d, &["machine", "destroy", &db, "-a", APP, "--force"]);
    c.wait_machine(APP, &db, &["destroyed"], Duration::from_secs(30))
        .await
        .unwrap();
    let v = c.get_volume(APP, &vid).await.unwrap();
    assert_eq!(v.attached_machine_id, None);
    run(&d, "db2", "data:/data");
    let db2 = machine("db2").await;
    booted(&d, &db2, count_then + 1).await;

    // The snapshot restores into a new volume, with the data of its time.
    cli(
        &d,
        &[
            "volumes",
            "create",
            "restored",
            "-a",
            APP,
            "--snapshot-id",
            &snap,
        ],
    );
    run(&d, "db3", "restored:/data");
    let db3 = machine("db3").await;
    booted(&d, &db3, count_then + 1).await;

    // Clean up: nothing left attached to a loop device.
    for m in [&db2, &db3] {
        cli(&d, &["machine", "destroy", m, "-a", APP, "--force"]);
        c.wait_machine(APP, m, &["destroyed"], Duration::from_secs(30))
            .await
            .unwrap();
    }
    for v in c.list_volumes(APP).await.unwrap() {
        cli(&d, &["volumes", "destroy", &v.id, "-a", APP]);
    }
    assert!(!img.exists());
    let loops = std::process::Command::new("losetup")
        .arg("-a")
        .output()
        .unwrap();
    let loops = String::from_utf8_lossy(&loops.stdout);
    assert!(
        !loops.contains(&d.data_dir().display().to_string()),
        "{loops}"
    );
}
