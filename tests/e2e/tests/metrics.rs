//! End to end: a real Prometheus (Debian's `prometheus`) scrapes a real
//! `hangard`'s `/metrics` with the admin token, and its queries return the
//! machines by state, the requests the proxy answered, a running
//! machine's memory and CPU time from its cgroup, and the operations and
//! image pulls that made it, and the machine's own metrics (Fly's
//! `metrics` config) with its app and machine as labels. `hangar doctor` on the same host finds
//! nothing wrong, and names a port another program holds.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hangar_api_types::{CreateMachineRequest, MachineConfig};
use hangar_test_utils::daemon::Daemon;
use hangar_test_utils::image::{ImageBuilder, Layer};
use hangar_test_utils::registry::Registry;
use hangar_test_utils::{free_port, wait_until};
use serde_json::{Value, json};

/// A Prometheus server of the test's own (killed when dropped).
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrapes `target` (`host:port`) every second with `token`.
    fn start(target: &str, token: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: hangard\n    metrics_path: /metrics\n\
                 \x20   authorization:\n      type: Bearer\n      credentials: {token}\n\
                 \x20   static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let listen = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting prometheus");
        Prometheus {
            child,
            url: format!("http://{listen}"),
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The value of the instant query `q`'s first series, if it has one.
    async fn value(&self, q: &str) -> Option<f64> {
        let r: Value = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", q)])
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        r["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn prometheus_scrapes_machines_requests_and_cgroup_figures() {
    if !hangar_test_utils::host_tier(
        "prometheus_scrapes_machines_requests_and_cgroup_figures",
        &["crun", "docker-registry", "prometheus"],
    ) {
        return;
    }
    let reg = Registry::start().await;
    let image = ImageBuilder::busybox()
        .layer(Layer::new().dir("www", 0o755).file(
            "www/metrics",
            b"# TYPE jobs_total counter\njobs_total{queue=\"mail\"} 7\n",
            0o644,
        ))
        .build();
    reg.push("test/obs", "v1", &image).await;
    let image = format!("{}/test/obs:v1", reg.addr);
    let d = Daemon::start(&["--insecure-registry".into(), reg.addr.clone()]).await;
    let c = d.client();
    c.create_app("obs").await.unwrap();
    let config: MachineConfig = serde_json::from_value(json!({
        "image": image,
        "init": {"cmd": ["/bin/sh", "-c",
            "echo hello > /www/index.html && exec httpd -f -p 8080 -h /www"]},
        "metrics": {"port": 8080, "path": "/metrics"},
        "services": [{
            "protocol": "tcp", "internal_port": 8080, "autostop": "off",
            "ports": [{"port": 80, "handlers": ["http"]}],
        }],
    }))
    .unwrap();
    let m = c
        .create_machine(
            "obs",
            &CreateMachineRequest {
                config: Some(config),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    c.wait_machine("obs", &m.id, &["started"], Duration::from_secs(30))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    for _ in 0..3 {
        let r = wait_until(Duration::from_secs(10), "the machine to answer", || async {
            http.get(format!("http://{}/", d.proxy_http))
                .header("host", "obs.localhost")
                .send()
                .await
                .ok()
                .filter(|r| r.status() == 200)
        })
        .await;
        assert_eq!(r.text().await.unwrap(), "hello\n");
    }

    let target = d.url.trim_start_matches("http://").to_owned();
    let prom = Prometheus::start(&target, &d.token);
    let id = m.id.clone();
    let queries = [
        ("up{job=\"hangard\"}".to_owned(), 1.0),
        (
            "hangar_machines{app=\"obs\",state=\"started\"}".to_owned(),
            1.0,
        ),
        (
            "sum(hangar_proxy_requests_total{app=\"obs\",status=\"200\"})".to_owned(),
            3.0,
        ),
        (
            "sum(hangar_machine_operations_total{op=\"create\",outcome=\"ok\"})".to_owned(),
            1.0,
        ),
        (
            "sum(hangar_image_pulls_total{source=\"registry\",outcome=\"ok\"})".to_owned(),
            1.0,
        ),
        // The machine's own metrics (Fly's `metrics`), with its labels.
        (
            format!("jobs_total{{app=\"obs\",machine=\"{id}\",queue=\"mail\"}}"),
            7.0,
        ),
        (
            format!("hangar_machine_metrics_up{{app=\"obs\",machine=\"{id}\"}}"),
            1.0,
        ),
        (
            "hangar_machine_start_duration_seconds_count".to_owned(),
            1.0,
        ),
        // Time in this host's SQLite store: reads and writes.
        (
            "hangar_database_duration_seconds_count{db=\"sqlite\",op=\"read\"}".to_owned(),
            1.0,
        ),
        (
            "hangar_database_duration_seconds_count{db=\"sqlite\",op=\"write\"}".to_owned(),
            1.0,
        ),
        // The proxied requests went in and their answers out over its veth.
        (
            format!("hangar_machine_network_receive_bytes_total{{machine=\"{id}\"}}"),
            100.0,
        ),
        (
            format!("hangar_machine_network_transmit_bytes_total{{machine=\"{id}\"}}"),
            100.0,
        ),
        // Read from the machine's cgroup: busybox httpd uses some memory.
        (
            format!("hangar_machine_memory_bytes{{app=\"obs\",machine=\"{id}\"}}"),
            4096.0,
        ),
    ];
    for (q, at_least) in &queries {
        let got = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                match prom.value(q).await {
                    Some(v) if v >= *at_least => return v,
                    _ => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        })
        .await;
        assert!(
            got.is_ok(),
            "{q} never reached {at_least}: {:?}\nprometheus said:\n{}",
            prom.value(q).await,
            prom.log()
        );
    }
    // CPU time is there, as a counter.
    let cpu = prom
        .value(&format!(
            "hangar_machine_cpu_seconds_total{{app=\"obs\",machine=\"{id}\"}}"
        ))
        .await;
    assert!(cpu.is_some_and(|v| v >= 0.0), "{cpu:?}");

    // Stopped: no longer started, and its cgroup figures are gone.
    c.stop_machine("obs", &m.id, None, None).await.unwrap();
    c.wait_machine("obs", &m.id, &["stopped"], Duration::from_secs(30))
        .await
        .unwrap();
    let q = "hangar_machines{app=\"obs\",state=\"stopped\"}";
    wait_until(
        Duration::from_secs(30),
        "the stop to be scraped",
        || async { prom.value(q).await.filter(|v| *v == 1.0) },
    )
    .await;

    // `hangar doctor`: this host runs hangard; the proxy's port is its.
    let data_dir = d.data_dir().display().to_string();
    let doctor = |url: &str| {
        d.cli_in(
            None,
            &[("HANGAR_API_URL", std::ffi::OsStr::new(url))],
            &["doctor", "--data-dir", &data_dir, "--proxy", &d.proxy_http],
        )
    };
    let (ok, out, err) = doctor(&d.url);
    assert!(ok, "{out}\n{err}");
    for want in [
        "✓ root",
        "✓ OCI runtime: crun",
        "✓ cgroups",
        "✓ overlayfs",
        &format!("✓ API port: hangard answers on {target}"),
        "No problems found",
    ] {
        assert!(out.contains(want), "no {want:?} in\n{out}");
    }
    // An API address another program (the registry) holds: a problem (and
    // the proxy's port, no longer known to be hangard's, another).
    let (ok, out, err) = doctor(&format!("http://{}", reg.addr));
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "✗ API port: {} is taken by another program",
            reg.addr
        )),
        "{out}"
    );
    assert!(err.contains("2 problems found"), "{err}");
}
