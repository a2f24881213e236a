//! End to end: two hosts, one platform. A real PostgreSQL (initdb in a temp
//! dir, run as the `postgres` user, on a unix socket) holds the shared
//! catalogue and directory; two real `hangard`s in two regions join it.
//! Apps and tokens made on one host work on the other; a machine asked for
//! in a region lands on that region's host and is driven through the other
//! host's API; secrets set on one host reach machines on the other, and
//! images pushed to one host's registry run on the other; lists merge; a full or unknown region refuses with Fly's
//! error; the database paused leaves both hosts serving; a host killed is
//! declared down once, the standby of its machine starts on the other host,
//! and when it comes back its machine is there, stopped (nothing runs
//! twice). One host's proxy serves, and starts, an app whose machine runs
//! on the other.

use std::time::Duration;

use hangar_client::Client;
use hangar_e2e::{hosts, request};
use hangar_test_utils::daemon::Daemon;
use hangar_test_utils::image::ImageBuilder;
use hangar_test_utils::postgres::Postgres;
use hangar_test_utils::registry::Registry;
use hangar_test_utils::wait_until;
use serde_json::{Value, json};

async fn host_state(d: &Daemon, id: &str) -> Option<String> {
    hosts(d).await["hosts"]
        .as_array()?
        .iter()
        .find(|h| h["id"] == id)
        .and_then(|h| h["state"].as_str().map(str::to_owned))
}

/// Sends a request of `d`'s admin; its status and JSON body.
async fn answer(
    d: &Daemon,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut rb = reqwest::Client::new()
        .request(method, format!("{}{path}", d.url))
        .bearer_auth(&d.token);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or_default())
}

async fn create_raw(d: &Daemon, body: Value) -> (u16, Value) {
    answer(
        d,
        reqwest::Method::POST,
        "/v1/apps/web/machines",
        Some(body),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_share_apps_place_by_region_and_answer_for_each_other() {
    if !hangar_test_utils::host_tier(
        "two_hosts_share_apps_place_by_region_and_answer_for_each_other",
        &["crun", "docker-registry", "skopeo"],
    ) {
        return;
    }
    let pg = Postgres::start();
    pg.create_db("hangar");
    let url = pg.url("hangar");
    let reg = Registry::start().await;
    reg.push("base/busybox", "v1", &ImageBuilder::busybox().build())
        .await;
    let image = format!("{}/base/busybox:v1", reg.addr);
    // The hosts of a cluster share one secrets key (made by the first).
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("secrets.key").display().to_string();
    let host = |id: &str, region: &str, memory: &str| -> Vec<String> {
        [
            "--secrets-key-file",
            &key,
            "--insecure-registry",
            &reg.addr,
            "--cluster",
            &url,
            "--host-id",
            id,
            "--region",
            region,
            "--cluster-down-after",
            "3s",
            "--capacity-memory-mb",
            memory,
            // Both hosts share this namespace, so one mesh route would
            // shadow the other: the mesh has its own test (mesh.rs), with a
            // namespace per host.
            "--no-mesh",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let a = Daemon::start(&host("host-a", "ams", "4096")).await;
    let mut b = Daemon::start(&host("host-b", "sjc", "512")).await;
    let (ca, cb) = (a.client(), b.client());

    // Both hosts see both hosts, up.
    wait_until(Duration::from_secs(10), "both hosts listed", || async {
        (host_state(&a, "host-b").await.as_deref() == Some("up")
            && host_state(&b, "host-a").await.as_deref() == Some("up"))
        .then_some(())
    })
    .await;

    // An app made on A is B's too, and its name is taken on B.
    ca.create_app("web").await.unwrap();
    wait_until(
        Duration::from_secs(10),
        "the app to reach host B",
        || async { cb.get_app("web").await.ok() },
    )
    .await;
    let err = cb.create_app("web").await.unwrap_err();
    assert!(err.to_string().contains("already taken"), "{err}");
    // A token minted on B works on A (and A's admin token on B).
    let token = cb
        .create_token("web", &Default::default())
        .await
        .unwrap()
        .token;
    let via_a = Client::new(&a.url, &token);
    wait_until(
        Duration::from_secs(10),
        "B's token to work on A",
        || async { via_a.list_machines("web", &Default::default()).await.ok() },
    )
    .await;
    assert!(Client::new(&b.url, &a.token).list_apps().await.is_ok());

    // A machine asked for in sjc, through A, runs on B; A answers for it.
    let config = json!({"image": image, "init": {"cmd": ["sleep", "3600"]}});
    let mut req = request(config.clone());
    req.region = Some("sjc".into());
    let m = ca.create_machine("web", &req).await.unwrap();
    assert_eq!(m.region, "sjc");
    assert!(
        cb.get_machine("web", &m.id).await.is_ok(),
        "the machine is B's"
    );
    let timeout = Duration::from_secs(60);
    ca.wait_machine("web", &m.id, &["started"], timeout)
        .await
        .unwrap();
    ca.stop_machine("web", &m.id, None, None).await.unwrap();
    ca.wait_machine("web", &m.id, &["stopped"], timeout)
        .await
        .unwrap();
    ca.start_machine("web", &m.id).await.unwrap();
    ca.wait_machine("web", &m.id, &["started"], timeout)
        .await
        .unwrap();
    let out = ca
        .exec(
            "web",
            &m.id,
            &hangar_api_types::MachineExecRequest {
                command: Some(vec!["echo".into(), "hello from sjc".into()]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(out.stdout.trim(), "hello from sjc");

    // Secrets set through A reach a new machine on B.
    let mut secrets = std::collections::BTreeMap::new();
    secrets.insert("GREETING".to_owned(), Some("hello across hosts".to_owned()));
    let version = ca.update_secrets("web", secrets).await.unwrap();
    let mut req = request(json!({
        "image": image,
        "init": {"cmd": ["/bin/sh", "-c", "echo \"$GREETING\" > /tmp/greeting; sleep 3600"]},
    }));
    req.region = Some("sjc".into());
    req.min_secrets_version = Some(version);
    let with_secret = wait_until(Duration::from_secs(10), "B to have the secret", || async {
        ca.create_machine("web", &req).await.ok()
    })
    .await;
    ca.wait_machine("web", &with_secret.id, &["started"], timeout)
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "the secret in B's machine",
        || async {
            let out = ca
                .exec(
                    "web",
                    &with_secret.id,
                    &hangar_api_types::MachineExecRequest {
                        command: Some(vec!["cat".into(), "/tmp/greeting".into()]),
                        ..Default::default()
                    },
                )
                .await
                .ok()?;
            (out.stdout.trim() == "hello across hosts").then_some(())
        },
    )
    .await;
    ca.destroy_machine("web", &with_secret.id, true)
        .await
        .unwrap();

    // An image pushed to A's registry runs on B (pulled from A).
    let dir = tempfile::tempdir().unwrap();
    let pushed = ImageBuilder::busybox()
        .layer(
            hangar_test_utils::image::Layer::new()
                .dir("app", 0o755)
                .file("app/hello", b"pushed to host A\n", 0o644),
        )
        .build();
    let archive = dir.path().join("image.tar");
    std::fs::write(&archive, pushed.oci_archive(None)).unwrap();
    let a_host = a.url.trim_start_matches("http://").to_owned();
    let out = std::process::Command::new("skopeo")
        .args([
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            &format!("x:{}", a.token),
            &format!("oci-archive:{}", archive.display()),
            &format!("docker://{a_host}/web:v1"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut req = request(json!({
        "image": format!("{a_host}/web:v1"),
        "init": {"cmd": ["sleep", "3600"]},
    }));
    req.region = Some("sjc".into());
    let from_a = ca.create_machine("web", &req).await.unwrap();
    ca.wait_machine("web", &from_a.id, &["started"], timeout)
        .await
        .unwrap();
    assert_eq!(
        cb.get_machine("web", &from_a.id)
            .await
            .unwrap()
            .image_ref
            .unwrap()
            .digest,
        pushed.digest(),
        "B runs the image pushed to A"
    );
    ca.destroy_machine("web", &from_a.id, true).await.unwrap();

    // `hangar deploy` through A of an app whose primary region is B's:
    // the release runs on B, which makes the machine there (a release
    // made on A would have to make it in ams). The image is named by A's
    // `localhost` name, which would mean B's own registry on B: A names
    // itself by its advertised address when it sends the release on.
    ca.create_app("far").await.unwrap();
    wait_until(Duration::from_secs(10), "far on B", || async {
        cb.get_app("far").await.ok()
    })
    .await;
    let port = a.url.rsplit(':').next().unwrap().to_owned();
    let local_name = format!("http://localhost:{port}");
    std::fs::write(
        dir.path().join("fly.toml"),
        format!(
            "app = \"far\"\nprimary_region = \"sjc\"\n\n[build]\n  image = \"localhost:{port}/web:v1\"\n\n[processes]\n  app = \"sleep 3600\"\n"
        ),
    )
    .unwrap();
    let (ok, out, err) = a.cli_in(
        Some(dir.path()),
        &[("HANGAR_API_URL", std::ffi::OsStr::new(&local_name))],
        &["deploy", "--ha=false"],
    );
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("--> Finished deploying"), "{out}");
    let far = cb.list_machines("far", &Default::default()).await.unwrap();
    assert_eq!(far.len(), 1, "{far:?}");
    assert_eq!(far[0].region, "sjc");
    assert_eq!(far[0].state, "started");
    wait_until(Duration::from_secs(10), "A to answer for it", || async {
        ca.get_machine("far", &far[0].id).await.ok()
    })
    .await;
    // The dashboard's proxy view and plots through A take in B's machine.
    let (status, view) = answer(&a, reqwest::Method::GET, "/v1/hangar/apps/far/proxy", None).await;
    assert_eq!(status, 200, "{view}");
    let on_b: Vec<&Value> = view["machines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["id"] == far[0].id.as_str())
        .collect();
    assert_eq!(on_b.len(), 1, "{view}");
    assert_eq!(on_b[0]["host"], "host-b");
    assert_eq!(on_b[0]["in_rotation"], true, "{view}");
    assert!(
        view["activity"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["machine"] == far[0].id.as_str()
                && e["action"] == "start"
                && e["host"] == "host-b"),
        "{view}"
    );
    let (status, usage) = answer(&a, reqwest::Method::GET, "/v1/hangar/apps/far/usage", None).await;
    assert_eq!(status, 200, "{usage}");
    assert!(
        !usage["start_ms"]["v"].as_array().unwrap().is_empty(),
        "{usage}"
    );
    for host in ["host-a", "host-b"] {
        assert!(usage["hosts"].get(host).is_some(), "{usage}");
    }
    // Each step of A's sync rounds is timed.
    let text = reqwest::Client::new()
        .get(format!("{}/metrics", a.url))
        .bearer_auth(&a.token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for op in ["heartbeat", "outbox", "follow", "directory", "view"] {
        let line =
            format!("hangar_database_duration_seconds_count{{db=\"postgres\",op=\"{op}\"}} ");
        assert!(text.contains(&line), "no {line:?} in\n{text}");
    }
    assert_eq!(
        far[0].image_ref.as_ref().unwrap().digest,
        pushed.digest(),
        "B runs the image pushed to A"
    );
    // Either host lists the release, and a second deploy through A goes
    // to B again (where the app's machine is): version 2.
    for cx in [&ca, &cb] {
        let rs = cx.list_releases("far", 10).await.unwrap();
        assert_eq!(rs.len(), 1, "{rs:?}");
        assert_eq!(rs[0].status, "complete");
        assert_eq!(
            rs[0].image_ref,
            format!("{}/web:v1", a.url.trim_start_matches("http://")),
            "A's image as B names it"
        );
        assert!(cx.get_release("far", "v1").await.is_ok());
    }
    let (ok, out, err) = a.cli_in(Some(dir.path()), &[], &["deploy", "--ha=false"]);
    assert!(ok, "{out}\n{err}");
    let rs = ca.list_releases("far", 10).await.unwrap();
    assert_eq!(rs.first().map(|r| r.version), Some(2), "{rs:?}");
    assert_eq!(
        cb.list_machines("far", &Default::default())
            .await
            .unwrap()
            .len(),
        1
    );
    // A machine of it on A too: a release would change only one host's,
    // so it is refused with what is where.
    let mut req = request(config.clone());
    req.region = Some("ams".into());
    let here = ca.create_machine("far", &req).await.unwrap();
    let (ok, out, err) = a.cli_in(Some(dir.path()), &[], &["deploy", "--ha=false"]);
    assert!(!ok, "{out}");
    assert!(
        err.contains("machines on several hosts") && err.contains("host-b (sjc)"),
        "{err}"
    );
    ca.destroy_machine("far", &here.id, true).await.unwrap();
    ca.destroy_machine("far", &far[0].id, true).await.unwrap();

    // One on A (this host's region by default): each host lists both.
    let local = ca
        .create_machine("web", &request(config.clone()))
        .await
        .unwrap();
    assert_eq!(local.region, "ams");
    wait_until(Duration::from_secs(10), "both lists to merge", || async {
        let la = ca.list_machines("web", &Default::default()).await.ok()?;
        let lb = cb.list_machines("web", &Default::default()).await.ok()?;
        // B answers for A's machine too.
        cb.get_machine("web", &local.id).await.ok()?;
        (la.len() == 2 && lb.len() == 2).then_some(())
    })
    .await;

    // Fly's errors: an unknown region, a full one (B offers 512 MiB).
    let (status, body) = create_raw(&a, json!({"region": "xyz", "config": config})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"], "Region 'xyz' cannot host your machine");
    assert_eq!(body["status"], "insufficient_capacity");
    let mut big = config.clone();
    big["guest"] = json!({"cpus": 1, "memory_mb": 1024});
    let (status, body) = create_raw(&a, json!({"region": "sjc", "config": big})).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("insufficient resources"),
        "{body}"
    );

    // The CLI lists the hosts; a drained host takes no new machines.
    let (ok, out, err) = a.cli(&["hosts", "list"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("host-a *") && out.contains("host-b") && out.contains("sjc"),
        "{out}"
    );
    let (ok, out, err) = a.cli(&["hosts", "drain", "host-b"]);
    assert!(ok && out.contains("drained"), "{out}{err}");
    wait_until(Duration::from_secs(10), "host B drained on B", || async {
        let h = hosts(&b).await;
        h["hosts"]
            .as_array()?
            .iter()
            .any(|x| x["id"] == "host-b" && x["drained"] == true)
            .then_some(())
    })
    .await;
    let (status, body) = create_raw(&b, json!({"region": "sjc", "config": config})).await;
    assert_eq!(status, 422, "{body}");
    let (ok, _, err) = b.cli(&["hosts", "undrain", "host-b"]);
    assert!(ok, "{err}");
    wait_until(Duration::from_secs(10), "host B undrained on A", || async {
        let h = hosts(&a).await;
        h["hosts"]
            .as_array()?
            .iter()
            .any(|x| x["id"] == "host-b" && x["drained"] == false)
            .then_some(())
    })
    .await;
    let regions: Value = reqwest::Client::new()
        .get(format!("{}/v1/platform/regions", b.url))
        .bearer_auth(&b.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let codes: Vec<&str> = regions["regions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["code"].as_str())
        .collect();
    assert_eq!(codes, ["ams", "sjc"], "{regions}");
    assert_eq!(regions["nearest"], "sjc");

    // A's proxy serves an app whose only machine runs on B, and starts it
    // when it is stopped.
    ca.create_app("site").await.unwrap();
    wait_until(Duration::from_secs(10), "site on B", || async {
        cb.get_app("site").await.ok()
    })
    .await;
    let mut sreq = request(json!({
        "image": image,
        "init": {"cmd": ["/bin/sh", "-c", "echo served from sjc > /www/index.html; exec httpd -f -p 8080 -h /www"]},
        "services": [{
            "protocol": "tcp", "internal_port": 8080,
            "autostart": true, "autostop": "off",
            "ports": [{"port": 80, "handlers": ["http"]}],
        }],
    }));
    sreq.region = Some("sjc".into());
    let web = ca.create_machine("site", &sreq).await.unwrap();
    ca.wait_machine("site", &web.id, &["started"], timeout)
        .await
        .unwrap();
    let page = || async {
        let r = reqwest::Client::new()
            .get(format!("http://{}/", a.proxy_http))
            .header("host", "site.localhost")
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(r.text().await.ok()?)
    };
    let got = wait_until(
        Duration::from_secs(15),
        "A's proxy to serve B's machine",
        &page,
    )
    .await;
    assert_eq!(got, "served from sjc\n");
    ca.stop_machine("site", &web.id, None, None).await.unwrap();
    ca.wait_machine("site", &web.id, &["stopped"], timeout)
        .await
        .unwrap();
    let got = wait_until(
        Duration::from_secs(30),
        "B's machine autostarted through A",
        &page,
    )
    .await;
    assert_eq!(got, "served from sjc\n");
    assert_eq!(
        ca.get_machine("site", &web.id).await.unwrap().state,
        "started"
    );
    // Deleting the app through A without force: refused, because B runs
    // its machine (the delete would take it on every host).
    let (status, body) = answer(&a, reqwest::Method::DELETE, "/v1/apps/site", None).await;
    assert_eq!(status, 412, "{body}");
    assert!(body["error"].as_str().unwrap().contains("host-b"), "{body}");
    assert!(cb.get_app("site").await.is_ok() && ca.get_app("site").await.is_ok());

    // The database paused (every process of it) for twice the time after
    // which a silent host is declared down: both hosts keep answering for
    // what they run and serving through their proxies; when it is back
    // nobody is declared down, and both catch up.
    pg.pause();
    let paused = std::time::Instant::now();
    ca.stop_machine("web", &local.id, None, None).await.unwrap();
    ca.wait_machine("web", &local.id, &["stopped"], timeout)
        .await
        .unwrap();
    while paused.elapsed() < Duration::from_secs(6) {
        assert_eq!(cb.get_machine("web", &m.id).await.unwrap().state, "started");
        assert_eq!(
            ca.get_machine("web", &m.id).await.unwrap().state,
            "started",
            "A still reaches B's machine through its copy of the directory"
        );
        assert_eq!(page().await.as_deref(), Some("served from sjc\n"));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    pg.resume();
    ca.start_machine("web", &local.id).await.unwrap();
    wait_until(
        Duration::from_secs(20),
        "both hosts heard again",
        || async {
            let h = hosts(&b).await;
            h["hosts"]
                .as_array()?
                .iter()
                .all(|x| {
                    x["state"] == "up" && x["heartbeat_age_secs"].as_f64().is_some_and(|a| a < 2.0)
                })
                .then_some(())
        },
    )
    .await;
    // Past a sweep window: still nobody down.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for d in [&a, &b] {
        assert!(
            !d.log().contains("host declared down"),
            "a host was declared down for the database's outage"
        );
    }

    // A standby for B's machine never goes to B (the only host of sjc), and
    // waits stopped on A.
    let standby_config = json!({
        "image": image,
        "init": {"cmd": ["sleep", "3600"]},
        "standbys": [m.id],
    });
    let (status, body) = create_raw(
        &a,
        json!({"region": "sjc", "config": standby_config.clone()}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("standby"),
        "{body}"
    );
    let mut sreq = request(standby_config);
    sreq.region = Some("ams".into());
    let standby = ca.create_machine("web", &sreq).await.unwrap();
    assert!(ca.get_machine("web", &standby.id).await.is_ok());
    ca.wait_machine("web", &standby.id, &["stopped"], timeout)
        .await
        .unwrap();

    // B killed: A declares it down (once), and says so for its machine.
    b.kill();
    wait_until(Duration::from_secs(20), "host B declared down", || async {
        (host_state(&a, "host-b").await.as_deref() == Some("down")).then_some(())
    })
    .await;
    let (status, body) = answer(
        &a,
        reqwest::Method::GET,
        &format!("/v1/apps/web/machines/{}", m.id),
        None,
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("host-b"), "{body}");
    // Listed through A as Fly lists a machine whose host it cannot reach.
    let (status, list) = answer(&a, reqwest::Method::GET, "/v1/apps/web/machines", None).await;
    assert_eq!(status, 200, "{list}");
    let on_b = list
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == m.id.as_str())
        .cloned()
        .unwrap_or_default();
    assert_eq!(on_b["host_status"], "unreachable", "{list}");
    // It decodes as Fly's Machine (what clients expect of a list).
    serde_json::from_value::<hangar_api_types::Machine>(on_b.clone()).unwrap();
    assert_eq!(on_b["region"], "sjc", "{list}");
    let declared = a
        .log()
        .lines()
        .filter(|l| l.contains("host declared down") && l.contains("host-b"))
        .count();
    assert_eq!(declared, 1, "declared down exactly once");
    // The standby took over.
    ca.wait_machine("web", &standby.id, &["started"], timeout)
        .await
        .unwrap();
    // The releases B ran are read through A from its copies.
    let rs = ca.list_releases("far", 10).await.unwrap();
    let versions: Vec<i64> = rs.iter().map(|r| r.version).collect();
    assert_eq!(versions, vec![2, 1], "{rs:?}");
    let v2 = ca.get_release("far", "v2").await.unwrap();
    assert_eq!((v2.status.as_str(), v2.stable), ("complete", true));
    let (status, body) = answer(
        &a,
        reqwest::Method::POST,
        "/v1/apps/far/releases/v2/cancel",
        None,
    )
    .await;
    assert_eq!(status, 503, "cancelled where it runs: {body}");

    // B back: up again under a new epoch, with its machine.
    b.restart().await;
    wait_until(Duration::from_secs(20), "host B up again", || async {
        (host_state(&a, "host-b").await.as_deref() == Some("up")).then_some(())
    })
    .await;
    // Its machine is there, stopped: its standby runs in its place, so it
    // does not run twice.
    wait_until(Duration::from_secs(20), "B's machine fenced", || async {
        let back = ca.get_machine("web", &m.id).await.ok()?;
        (back.state == "stopped").then_some(())
    })
    .await;
    assert_eq!(
        ca.get_machine("web", &standby.id).await.unwrap().state,
        "started"
    );
    // B's two machines (its first one and the site's), as A's copy of the
    // directory counts them once B has published again.
    let counted = hangar_test_utils::poll_until(Duration::from_secs(20), || async {
        let h = hosts(&a).await;
        let hb = h["hosts"]
            .as_array()?
            .iter()
            .find(|x| x["id"] == "host-b")?
            .clone();
        (hb["machines"] == 2 && hb["reserved_memory_mb"] == 512).then_some(())
    })
    .await;
    assert!(
        counted.is_some(),
        "A does not count B's two machines: {}\nthe directory:\n{}",
        hosts(&a).await,
        pg.psql(
            "hangar",
            "SELECT id, host, state, memory_mb, rev FROM machines ORDER BY rev"
        )
    );
}

/// `scripts/cluster-demo.sh` brings up three hosts and prints what scripts
/// need (`HOST`, `TOKEN`, `IMAGE` lines); the image runs on every host;
/// `stop` leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_demo_script_brings_up_three_hosts_and_leaves_nothing() {
    if !hangar_test_utils::host_tier(
        "the_cluster_demo_script_brings_up_three_hosts_and_leaves_nothing",
        &["crun", "skopeo", "umoci", "wg", "wireguard-go", "nsenter"],
    ) {
        return;
    }
    let root = std::path::Path::new("/var/lib/hangar-cluster-demo");
    assert!(
        !root.exists(),
        "a cluster demo is running on this machine: scripts/cluster-demo.sh stop first"
    );
    let (hangard, _) = hangar_test_utils::daemon::binaries();
    let bin_dir = hangard.parent().unwrap().to_owned();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/cluster-demo.sh");
    let out = std::process::Command::new(&script)
        .env("HANGAR_BIN_DIR", &bin_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    // Stopped whatever happens next.
    struct Stop(std::path::PathBuf);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = std::process::Command::new(&self.0).arg("stop").output();
        }
    }
    let stop = Stop(script.clone());
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hosts: Vec<Vec<&str>> = stdout
        .lines()
        .filter(|l| l.starts_with("HOST "))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(hosts.len(), 3, "{stdout}");
    let field = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key} ")))
            .unwrap_or_else(|| panic!("no {key} line: {stdout}"))
            .to_owned()
    };
    let (token, image) = (field("TOKEN"), field("IMAGE"));
    // The image runs on every host, each asked through another.
    let mut made = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let (name, region) = (h[1], h[2]);
        let via = Client::new(hosts[(i + 1) % 3][3], &token);
        let cmd = if i == 0 {
            json!(["httpd", "-f", "-p", "8080", "-h", "/www"])
        } else {
            json!(["sleep", "600"])
        };
        let mut req = request(json!({"image": image, "init": {"cmd": cmd}}));
        req.region = Some(region.to_owned());
        let m = via.create_machine("demo", &req).await.unwrap();
        via.wait_machine("demo", &m.id, &["started"], Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(m.region, region, "{name}");
        made.push(m);
    }
    // Each host is a namespace of its own: the machine in sjc reaches the
    // one in ams by its private address, over the mesh.
    let c = Client::new(hosts[0][3], &token);
    let fetch = format!(
        "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {} 8080",
        made[0].private_ip
    );
    let body =
        hangar_test_utils::wait_until(Duration::from_secs(15), "a fetch across hosts", || {
            let (c, id, fetch) = (c.clone(), made[1].id.clone(), fetch.clone());
            async move {
                let (code, body) = hangar_e2e::sh(&c, "demo", &id, &fetch).await;
                (code == 0 && body.contains("hello from a hangar cluster")).then_some(body)
            }
        })
        .await;
    assert!(body.contains("200 OK"), "{body}");
    let listed = Client::new(hosts[0][3], &token)
        .list_machines("demo", &Default::default())
        .await
        .unwrap();
    assert_eq!(listed.len(), 3);
    drop(stop);
    assert!(!root.exists(), "the demo's files are gone");
    let ps = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(
        !ps.contains("hangar-cluster-demo"),
        "a process of the demo is left: {ps}"
    );
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(!mounts.contains("hangar-demo-host"), "{mounts}");
    assert!(!mounts.contains("hangar-cluster-demo"), "{mounts}");
    let netns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let netns = String::from_utf8_lossy(&netns.stdout);
    assert!(!netns.contains("hangar-demo"), "{netns}");
    assert!(!std::path::Path::new("/sys/class/net/hgdemo0").exists());
}

/// The cluster's database restored from a backup while the hosts run: no
/// host is rejoined by hand. Host A joins, the database is backed up, then
/// host B joins and an app with a token and a secret is made; the backup
/// is restored (B's registration, its number in 6PN addresses and the app
/// are gone from the database). The hosts notice that the change log went
/// back, say again what they know, and a host C that joins afterwards gets
/// a number of its own, the app, its token and its secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restored_from_a_backup_is_told_again_what_it_lost() {
    if !hangar_test_utils::host_tier(
        "a_database_restored_from_a_backup_is_told_again_what_it_lost",
        &["crun"],
    ) {
        return;
    }
    let pg = Postgres::start();
    pg.create_db("hangar");
    let url = pg.url("hangar");
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("secrets.key").display().to_string();
    let host = |id: &str| -> Vec<String> {
        [
            "--secrets-key-file",
            &key,
            "--cluster",
            &url,
            "--host-id",
            id,
            "--region",
            "ams",
            "--no-mesh",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let a = Daemon::start(&host("host-a")).await;
    let backup = pg.dump("hangar");
    let b = Daemon::start(&host("host-b")).await;
    let (ca, cb) = (a.client(), b.client());
    ca.create_app("late").await.unwrap();
    let token = ca
        .create_token("late", &Default::default())
        .await
        .unwrap()
        .token;
    ca.update_secrets(
        "late",
        [("GREETING".to_owned(), Some("hi".to_owned()))].into(),
    )
    .await
    .unwrap();
    wait_until(Duration::from_secs(10), "the app on host B", || async {
        cb.list_secrets("late")
            .await
            .ok()
            .filter(|s| !s.secrets.is_empty())
    })
    .await;
    let index_of = |hs: &Value, id: &str| -> u64 {
        hs["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["id"] == id)
            .and_then(|h| h["host_index"].as_u64())
            .unwrap_or(0)
    };
    let b_index = wait_until(Duration::from_secs(10), "host B in A's view", || async {
        Some(index_of(&hosts(&a).await, "host-b")).filter(|i| *i > 0)
    })
    .await;

    pg.restore("hangar", &backup);
    assert_eq!(
        pg.psql("hangar", "SELECT count(*) FROM apps WHERE name = 'late'"),
        "0"
    );
    // Both hosts come back to the database and say again what it lost.
    wait_until(
        Duration::from_secs(20),
        "the app back in the database",
        || async {
            (pg.psql("hangar", "SELECT count(*) FROM apps WHERE name = 'late'") == "1"
                && pg.psql(
                    "hangar",
                    "SELECT count(*) FROM host_indexes WHERE host = 'host-b'",
                ) == "1")
                .then_some(())
        },
    )
    .await;
    assert!(
        b.log().contains("went back in time"),
        "host B did not notice the restore"
    );
    // A host that joins now has a number of its own and the whole catalogue.
    let c = Daemon::start(&host("host-c")).await;
    let hs = wait_until(
        Duration::from_secs(10),
        "three hosts in C's view",
        || async {
            let hs = hosts(&c).await;
            (hs["hosts"].as_array().map_or(0, |h| h.len()) == 3).then_some(hs)
        },
    )
    .await;
    let c_index = index_of(&hs, "host-c");
    assert!(
        c_index > 0 && c_index != b_index && c_index != index_of(&hs, "host-a"),
        "{hs}"
    );
    assert_eq!(index_of(&hs, "host-b"), b_index, "{hs}");
    let cc = c.client();
    wait_until(Duration::from_secs(10), "the secret on host C", || async {
        cc.list_secrets("late")
            .await
            .ok()
            .filter(|s| s.secrets.iter().any(|x| x.name == "GREETING"))
    })
    .await;
    let via_c = Client::new(&c.url, &token);
    wait_until(
        Duration::from_secs(10),
        "the app token on host C",
        || async { via_c.get_app("late").await.ok() },
    )
    .await;
}
