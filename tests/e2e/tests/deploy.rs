//! End to end: `hangar deploy` of a real fly.toml onto real crun machines
//! behind the proxy. A two-group app is made, rolled with health gating
//! while traffic flows (no failed request), kept as it was by a failing
//! release command and by a crashing image (which fails fast and rolls
//! back), guarded against concurrent deploys, and carried through a kill -9
//! of hangard in the middle of a release.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hangar_api_types::{CreateMachineRequest, Machine, MachineConfig};
use hangar_client::Client;
use hangar_test_utils::daemon::Daemon;
use hangar_test_utils::image::{ImageBuilder, Layer};
use hangar_test_utils::registry::Registry;
use hangar_test_utils::wait_until;

const START: &str = "#!/bin/sh\nmkdir -p /www\necho \"$GREETING from $FLY_MACHINE_ID\" > /www/index.html\nexec httpd -f -p 8080 -h /www\n";
const CRASH: &str =
    "#!/bin/sh\necho 'this release cannot start: crashing on purpose' >&2\nexit 3\n";

fn fly_toml(image: &str, greeting: &str, extra: &str) -> String {
    format!(
        r#"app = "shop"

[build]
  image = "{image}"

[env]
  GREETING = "{greeting}"

[processes]
  web = "/app/start.sh"
  worker = "sleep 86400"

[http_service]
  internal_port = 8080
  auto_stop_machines = "off"
  processes = ["web"]
  [[http_service.checks]]
    interval = "300ms"
    timeout = "1s"
    path = "/"

[[statics]]
  guest_path = "/app/public"
  url_prefix = "/static"

[deploy]
  wait_timeout = "60s"
{extra}
"#
    )
}

fn write(dir: &std::path::Path, text: &str) -> String {
    std::fs::write(dir.join("fly.toml"), text).unwrap();
    dir.display().to_string()
}

async fn cli(d: &Arc<Daemon>, args: &[&str]) -> (bool, String, String) {
    let d = d.clone();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        d.cli(&a)
    })
    .await
    .unwrap()
}

async fn managed(c: &Client) -> Vec<Machine> {
    let mut v: Vec<Machine> = c
        .list_machines("shop", &Default::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|m| {
            m.config
                .as_ref()
                .and_then(|c| c.metadata.as_ref())
                .is_some_and(|md| {
                    md.get("fly_platform_version").map(String::as_str) == Some("v2")
                        && md.get("fly_process_group").map(String::as_str)
                            != Some("fly_app_release_command")
                })
                && m.state != "destroyed"
        })
        .collect();
    v.sort_by(|a, b| a.id.cmp(&b.id));
    v
}

fn group(m: &Machine) -> &str {
    m.config
        .as_ref()
        .and_then(|c| c.metadata.as_ref())
        .and_then(|md| md.get("fly_process_group"))
        .map(String::as_str)
        .unwrap_or("")
}

fn env_of<'a>(m: &'a Machine, k: &str) -> &'a str {
    m.config
        .as_ref()
        .and_then(|c| c.env.as_ref())
        .and_then(|e| e.get(k))
        .map(String::as_str)
        .unwrap_or("")
}

/// Requests through the proxy until stopped; counts answers that are not
/// 200 with a greeting.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    bad: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(d: &Daemon) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let bad = Arc::new(std::sync::Mutex::new(Vec::new()));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let url = format!("http://{}/", d.proxy_http);
        let (s, o, b) = (stop.clone(), ok.clone(), bad.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                let r = http.get(&url).header("host", "shop.localhost").send().await;
                match r {
                    Ok(r) if r.status() == 200 => {
                        let body = r.text().await.unwrap_or_default();
                        if body.contains(" from ") {
                            o.fetch_add(1, Ordering::Relaxed);
                        } else {
                            b.lock().unwrap().push(format!("200 with {body:?}"));
                        }
                    }
                    Ok(r) => {
                        let st = r.status();
                        let body = r.text().await.unwrap_or_default();
                        b.lock().unwrap().push(format!("{st}: {body}"));
                    }
                    Err(e) => b.lock().unwrap().push(format!("transport: {e}")),
                }
            }
        });
        Load {
            stop,
            ok,
            bad,
            task,
        }
    }

    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        (
            self.ok.load(Ordering::Relaxed),
            self.bad.lock().unwrap().clone(),
        )
    }
}

async fn greeting(d: &Daemon) -> String {
    reqwest::Client::new()
        .get(format!("http://{}/", d.proxy_http))
        .header("host", "shop.localhost")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_rolls_gates_refuses_and_survives_a_crash() {
    if !hangar_test_utils::host_tier(
        "deploy_rolls_gates_refuses_and_survives_a_crash",
        &["crun", "docker-registry"],
    ) {
        return;
    }
    let reg = Registry::start().await;
    for (tag, script) in [("v1", START), ("crash", CRASH)] {
        let img = ImageBuilder::busybox()
            .layer(
                Layer::new()
                    .dir("app", 0o755)
                    .file("app/start.sh", script.as_bytes(), 0o755)
                    .dir("app/public", 0o755)
                    .file(
                        "app/public/hello.txt",
                        format!("static {tag}\n").as_bytes(),
                        0o644,
                    ),
            )
            .build();
        reg.push("test/shop", tag, &img).await;
    }
    let image = format!("{}/test/shop:v1", reg.addr);
    let crash = format!("{}/test/shop:crash", reg.addr);
    let d = Arc::new(Daemon::start(&["--insecure-registry".into(), reg.addr.clone()]).await);
    let c = d.client();
    c.create_app("shop").await.unwrap();
    let dir = tempfile::tempdir().unwrap();

    // An unmanaged machine, which no deploy may touch.
    let loose = c
        .create_machine(
            "shop",
            &CreateMachineRequest {
                config: Some(
                    serde_json::from_value::<MachineConfig>(serde_json::json!({
                        "image": image, "init": {"cmd": ["sleep", "86400"]}
                    }))
                    .unwrap(),
                ),
                ..Default::default()
            },
        )
        .await
        .unwrap();

    // 1. First deploy: web gets two machines, worker one and a standby.
    let path = write(dir.path(), &fly_toml(&image, "hello", ""));
    let (ok, out, err) = cli(&d, &["deploy", &path]).await;
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("==> Verifying app config") && out.contains("--> Finished deploying"),
        "{out}"
    );
    assert!(out.contains("App shop: first deploy"), "{out}");
    let ms = managed(&c).await;
    let web: Vec<&Machine> = ms.iter().filter(|m| group(m) == "web").collect();
    let worker: Vec<&Machine> = ms.iter().filter(|m| group(m) == "worker").collect();
    assert_eq!((web.len(), worker.len()), (2, 2), "{ms:#?}");
    assert!(web.iter().all(|m| m.state == "started"));
    assert!(greeting(&d).await.starts_with("hello from "));
    // `hangar status`: the app, its release and machines by process
    // group, the worker's standby marked, the web machines' checks.
    let (ok, out, err) = cli(&d, &["status", "-a", "shop"]).await;
    assert!(ok, "{out}\n{err}");
    for want in [
        "Name     = shop",
        &format!("Image    = {}@sha256:", image.trim_end_matches(":v1")),
        "Release  = v1",
        "PROCESS",
        "standby",
        "1 total, 1 passing",
    ] {
        assert!(out.contains(want), "no {want:?} in\n{out}");
    }
    for m in &ms {
        let line = out.lines().find(|l| l.contains(&m.id)).unwrap_or_default();
        assert!(line.starts_with(group(m)), "{line:?}\n{out}");
    }
    let (ok, out, _) = cli(&d, &["status", "-a", "shop", "--json"]).await;
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["Version"], 1);
    assert_eq!(v["Machines"].as_array().map(Vec::len), Some(5), "{v}");
    // [[statics]]: served by the proxy from the image.
    let http = reqwest::Client::new();
    let get = |path: &str| {
        http.get(format!("http://{}{path}", d.proxy_http))
            .header("host", "shop.localhost")
            .send()
    };
    let r = get("/static/hello.txt").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(r.text().await.unwrap(), "static v1\n");
    let r = get("/static/%2e%2e/%2e%2e/etc/passwd").await.unwrap();
    assert!(
        !r.text().await.unwrap().contains("root:"),
        "nothing outside the image's tree"
    );

    // 2. A changed env rolls, health-gated, while traffic flows: no
    //    request fails.
    let load = Load::start(&d);
    let path = write(dir.path(), &fly_toml(&image, "bonjour", ""));
    let started = Instant::now();
    let (ok, out, err) = cli(&d, &["deploy", &path]).await;
    let rolled_in = started.elapsed();
    let (served, failed) = load.finish().await;
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("update 2 \"web\" machine(s): env"), "{out}");
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the roll: {:?}",
        failed.len(),
        served + failed.len() as u64,
        &failed[..failed.len().min(5)]
    );
    assert!(served > 10, "only {served} requests went through");
    eprintln!("rolling deploy of 4 machines: {rolled_in:?}, {served} requests, none failed");
    let ms = managed(&c).await;
    assert!(ms.iter().all(|m| env_of(m, "GREETING") == "bonjour"));
    assert!(greeting(&d).await.starts_with("bonjour from "));
    // 2b. Bluegreen: every machine gets a healthy twin, born out of
    //     rotation, before it goes; no request fails.
    let blues: Vec<String> = ms.iter().map(|m| m.id.clone()).collect();
    let load = Load::start(&d);
    let path = write(dir.path(), &fly_toml(&image, "bluegreen", ""));
    let started = Instant::now();
    let (ok, out, err) = cli(&d, &["deploy", &path, "--strategy", "bluegreen"]).await;
    let took = started.elapsed();
    let (served, failed) = load.finish().await;
    assert!(ok, "{out}\n{err}");
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during bluegreen: {:?}",
        failed.len(),
        served + failed.len() as u64,
        &failed[..failed.len().min(5)]
    );
    eprintln!("bluegreen deploy of 4 machines: {took:?}, {served} requests, none failed");
    let ms = managed(&c).await;
    assert_eq!(ms.len(), 4);
    assert!(
        ms.iter().all(|m| !blues.contains(&m.id)),
        "every machine was replaced"
    );
    assert!(
        ms.iter()
            .all(|m| env_of(m, "GREETING") == "bluegreen" && !m.cordoned)
    );
    let standby = ms
        .iter()
        .find(|m| {
            m.config
                .as_ref()
                .unwrap()
                .standbys
                .as_ref()
                .is_some_and(|s| !s.is_empty())
        })
        .expect("the worker's standby");
    let watched = &standby.config.as_ref().unwrap().standbys.as_ref().unwrap()[0];
    assert!(
        ms.iter().any(|m| &m.id == watched),
        "the standby watches a live machine: {watched} {:#?}",
        ms.iter()
            .map(|m| (
                m.id.clone(),
                m.state.clone(),
                m.config.as_ref().unwrap().standbys.clone()
            ))
            .collect::<Vec<_>>()
    );
    assert!(greeting(&d).await.starts_with("bluegreen from "));
    let versions: Vec<String> = ms.iter().map(|m| m.instance_id.clone()).collect();
    let m = c.get_machine("shop", &loose.id).await.unwrap();
    assert_eq!(
        m.instance_id, loose.instance_id,
        "the unmanaged machine was not touched"
    );

    // 3. A failing release command leaves every machine as it was.
    let extra = "  release_command = \"/bin/sh -c 'echo migrating the database; exit 4'\"\n";
    let path = write(dir.path(), &fly_toml(&image, "never", extra));
    let (ok, out, err) = cli(&d, &["deploy", &path]).await;
    assert!(!ok, "{out}");
    assert!(
        err.contains("exit code 4") && err.contains("migrating the database"),
        "{err}"
    );
    assert!(
        out.lines().any(|l| l.contains("] migrating the database")),
        "the release command's output streams as it runs: {out}"
    );
    let now: Vec<String> = managed(&c)
        .await
        .iter()
        .map(|m| m.instance_id.clone())
        .collect();
    assert_eq!(now, versions);

    // 4. An image that crashes fails at its first machine, at once, and
    //    that machine goes back to the release before.
    let path = write(dir.path(), &fly_toml(&image, "crashing", ""));
    let started = Instant::now();
    let (ok, out, err) = cli(&d, &["deploy", &path, "--image", &crash]).await;
    assert!(!ok, "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "not failed fast: {:?}",
        started.elapsed()
    );
    assert!(
        err.contains("rolled back") && err.contains("exited with code 3"),
        "{err}"
    );
    assert!(
        err.contains("crashing on purpose"),
        "the machine's last log lines are shown: {err}"
    );
    let ms = managed(&c).await;
    for m in &ms {
        let img = m.config.as_ref().unwrap().image.clone();
        assert!(
            !img.contains("crash") && !img.ends_with(":crash"),
            "{} runs {img}",
            m.id
        );
    }
    wait_until(
        Duration::from_secs(30),
        "the web machines to serve again",
        || async {
            let ms = managed(&c).await;
            ms.iter()
                .filter(|m| group(m) == "web")
                .all(|m| m.state == "started")
                .then_some(())
        },
    )
    .await;
    assert!(greeting(&d).await.starts_with("bluegreen from "));

    // 4b. Canary (an extra machine passes first, then is gone) and
    //     immediate.
    let before: Vec<String> = managed(&c).await.iter().map(|m| m.id.clone()).collect();
    let path = write(dir.path(), &fly_toml(&image, "canary", ""));
    let (ok, out, err) = cli(&d, &["deploy", &path, "--strategy", "canary"]).await;
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("Canary passed"), "{out}");
    let after: Vec<String> = managed(&c).await.iter().map(|m| m.id.clone()).collect();
    assert_eq!(
        before, after,
        "the canaries are gone, the machines the same"
    );
    let path = write(dir.path(), &fly_toml(&image, "immediate", ""));
    let (ok, out, err) = cli(&d, &["deploy", &path, "--strategy", "immediate"]).await;
    assert!(ok, "{out}\n{err}");
    wait_until(
        Duration::from_secs(30),
        "the immediate release to serve",
        || async {
            greeting(&d)
                .await
                .starts_with("immediate from ")
                .then_some(())
        },
    )
    .await;
    // 4c. A secrets change is a release that restarts the managed machines.
    let versions: Vec<String> = managed(&c)
        .await
        .iter()
        .map(|m| m.instance_id.clone())
        .collect();
    let (ok, out, err) = cli(&d, &["secrets", "set", "-a", "shop", "API_KEY=s3cret"]).await;
    assert!(ok, "{out}\n{err}");
    let rel = c.list_releases("shop", 1).await.unwrap().remove(0);
    assert_eq!(
        (rel.reason.as_str(), rel.status.as_str()),
        ("secrets", "complete")
    );
    let now = managed(&c).await;
    for (m, v) in now.iter().zip(&versions) {
        assert_ne!(&m.instance_id, v, "{} restarted", m.id);
    }

    // 5. One release at a time: a second deploy while one runs gets 409.
    let extra = "  release_command = \"sleep 3\"\n";
    let path = write(dir.path(), &fly_toml(&image, "queued", extra));
    let (ok, out, err) = cli(&d, &["deploy", &path, "--detach"]).await;
    assert!(ok, "{out}\n{err}");
    let (ok, _, err) = cli(&d, &["deploy", &path]).await;
    assert!(!ok);
    assert!(
        err.contains("is running") || err.contains("is pending"),
        "{err}"
    );
    let (ok, out, err) = cli(&d, &["releases", "watch", "-a", "shop"]).await;
    assert!(ok, "{out}\n{err}");

    // 6. kill -9 of hangard in the middle of a release: once it is back,
    //    the release ends (complete or rolled back) with every machine on
    //    one release and no lease left.
    let path = write(dir.path(), &fly_toml(&image, "after-crash", ""));
    let (ok, out, err) = cli(&d, &["deploy", &path, "--detach"]).await;
    assert!(ok, "{out}\n{err}");
    let rel = c.list_releases("shop", 1).await.unwrap().remove(0);
    wait_until(
        Duration::from_secs(60),
        "the release to be changing machines",
        || async {
            let r = c.get_release("shop", &rel.id).await.ok()?;
            r.machines
                .iter()
                .any(|s| s.action == "update" && s.outcome == "running")
                .then_some(())
        },
    )
    .await;
    let mut d = Arc::try_unwrap(d).unwrap_or_else(|_| panic!("daemon still shared"));
    d.restart().await;
    let c = d.client();
    let end = wait_until(
        Duration::from_secs(120),
        "the release to end after the crash",
        || async {
            let r = c.get_release("shop", &rel.id).await.ok()?;
            matches!(r.status.as_str(), "complete" | "rolled_back" | "failed").then_some(r)
        },
    )
    .await;
    assert!(
        matches!(end.status.as_str(), "complete" | "rolled_back"),
        "{:?}: {:?}",
        end.status,
        end.error
    );
    let ms = managed(&c).await;
    let greetings: std::collections::BTreeSet<&str> =
        ms.iter().map(|m| env_of(m, "GREETING")).collect();
    assert_eq!(
        greetings.len(),
        1,
        "mixed releases after the crash: {greetings:?}"
    );
    for m in &ms {
        assert!(
            c.get_lease("shop", &m.id).await.unwrap().is_none(),
            "lease left on {}",
            m.id
        );
    }
    let (ok, out, _) = d.cli(&["releases", "-a", "shop"]);
    assert!(ok);
    for v in ["v1", "v2", "v3", "v4", "v5", "v6", "v7"] {
        assert!(out.contains(v), "{out}");
    }
}
