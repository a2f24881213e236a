//! End to end: app secrets with a real hangard and crun: they reach the
//! process (environment and files), never the disk in the clear, and
//! changes roll out by restart.

use std::path::Path;
use std::time::Duration;

use hangar_test_utils::daemon::Daemon;
use hangar_test_utils::image::ImageBuilder;
use hangar_test_utils::registry::Registry;

const APP: &str = "sec";

/// Files under `dir` (not following symlinks) whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8], out: &mut Vec<std::path::PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        let p = e.path();
        if ft.is_dir() {
            files_containing(&p, needle, out);
        } else if ft.is_file()
            && std::fs::read(&p).is_ok_and(|data| data.windows(needle.len()).any(|w| w == needle))
        {
            out.push(p);
        }
    }
}

#[tokio::test]
async fn secrets_reach_machines_and_nothing_else() {
    if !hangar_test_utils::host_tier(
        "secrets_reach_machines_and_nothing_else",
        &["crun", "docker-registry"],
    ) {
        return;
    }
    let reg = Registry::start().await;
    reg.push("test/sec", "v1", &ImageBuilder::busybox().build())
        .await;
    let image = format!("{}/test/sec:v1", reg.addr);
    let d = Daemon::with_registry(&reg.addr).await;
    let c = d.client();
    c.create_app(APP).await.unwrap();
    let cli = |args: &[&str]| {
        let (ok, out, err) = d.cli(args);
        assert!(ok, "hangar {args:?}: {out}{err}");
        out
    };
    // "file-s3cret-value", base64 as Fly's file secrets hold it.
    let file_b64 = "ZmlsZS1zM2NyZXQtdmFsdWU=";
    let out = cli(&[
        "secrets",
        "set",
        "-a",
        APP,
        "--stage",
        "DB_URL=postgres://db-s3cret-value",
        "GREETING=from-secret",
        &format!("FILEKEY={file_b64}"),
    ]);
    assert!(out.contains("version 1"), "{out}");
    assert!(!out.contains("s3cret"), "{out}");

    cli(&[
        "machine",
        "run",
        &image,
        "-a",
        APP,
        "-n",
        "app",
        "-e",
        "GREETING=from-env",
        "--file-secret",
        "/etc/app/key=FILEKEY",
        "--",
        "/bin/sh",
        "-c",
        "echo db=$DB_URL greeting=$GREETING; cat /etc/app/key; echo; sleep 3600",
    ]);
    let id = c
        .list_machines(APP, &Default::default())
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.name == "app")
        .unwrap()
        .id;
    let said = |want: &'static str| {
        let d = &d;
        let id = id.clone();
        async move {
            hangar_test_utils::wait_until(Duration::from_secs(15), want, || async {
                d.machine_log(&id)
                    .iter()
                    .any(|(_, m)| m == want)
                    .then_some(())
            })
            .await
        }
    };
    // Secrets win over the config's env; the file secret is decoded.
    said("db=postgres://db-s3cret-value greeting=from-secret").await;
    said("file-s3cret-value").await;

    // At rest: neither the SQLite file nor anything else in the data dir
    // (bundle, upper layer, state) holds a value, in the clear or as base64;
    // only the machine's own log, which printed them on purpose. Nor does
    // hangard's log or the API's machine config.
    for secret in [
        &b"db-s3cret-value"[..],
        b"file-s3cret-value",
        file_b64.as_bytes(),
        b"from-secret",
    ] {
        let mut hits = Vec::new();
        files_containing(d.data_dir(), secret, &mut hits);
        hits.retain(|p| !p.ends_with("logs/machine.log"));
        assert!(
            hits.is_empty(),
            "{:?} in {hits:?}",
            String::from_utf8_lossy(secret)
        );
        assert!(
            !d.log()
                .as_bytes()
                .windows(secret.len())
                .any(|w| w == secret)
        );
    }
    let m = c.get_machine(APP, &id).await.unwrap();
    assert!(!serde_json::to_string(&m).unwrap().contains("s3cret"));

    // Names and digests only; a new value changes the digest, and without
    // --stage the running machine restarts with it.
    let digest = |list: &str, name: &str| {
        list.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or_default()
            .to_owned()
    };
    let list = cli(&["secrets", "list", "-a", APP]);
    assert!(!list.contains("s3cret"), "{list}");
    let before = digest(&list, "DB_URL");
    assert_eq!(before.len(), 16, "{list}");
    cli(&["secrets", "set", "-a", APP, "DB_URL=postgres://rotated"]);
    assert_ne!(
        digest(&cli(&["secrets", "list", "-a", APP]), "DB_URL"),
        before
    );
    said("db=postgres://rotated greeting=from-secret").await;

    // Unset: gone at the next restart (the env's value shows again).
    cli(&["secrets", "unset", "-a", APP, "GREETING"]);
    said("db=postgres://rotated greeting=from-env").await;

    // Import from stdin, then a file secret that no longer exists is a
    // clear error for new machines.
    let (code, out, err) = d.cli_with_stdin(
        &["secrets", "import", "-a", APP, "--stage"],
        b"# comment\nA=1\nB=two=parts\n",
        Duration::from_secs(30),
    );
    assert_eq!(code, 0, "{out}{err}");
    cli(&["secrets", "unset", "-a", APP, "--stage", "FILEKEY"]);
    let (ok, _, err) = d.cli(&[
        "machine",
        "run",
        &image,
        "-a",
        APP,
        "--file-secret",
        "/k=FILEKEY",
    ]);
    assert!(
        !ok && err.contains("app secret \"FILEKEY\" not found"),
        "{err}"
    );
}
