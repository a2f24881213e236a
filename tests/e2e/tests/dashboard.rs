//! End to end: the dashboard in a real browser. Headless Chromium
//! (Debian's `chromium`), driven over WebDriver (`chromedriver`, with
//! fantoccini), logs in with the URL `hangar dashboard` gives, finds the
//! app and its running machine, reads the machine's live logs and sees its
//! memory plotted, stops it (confirming) and starts
//! it from the page, and sees each state change without reloading; sees
//! the proxy's view (machines in rotation, an autostop and an autostart
//! with their times) and the start-latency plot; takes a volume's snapshot
//! and restores it into a new volume from the page; the login form works
//! too. Screenshots of the pages are kept in
//! `target/dashboard-screenshots/`.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hangar_api_types::{CreateMachineRequest, MachineConfig};
use hangar_test_utils::daemon::Daemon;
use hangar_test_utils::image::ImageBuilder;
use hangar_test_utils::registry::Registry;
use hangar_test_utils::{free_port, wait_until};
use serde_json::json;

/// A chromedriver of the test's own (killed when dropped).
struct Driver(Child);

impl Drop for Driver {
    /// Ends chromedriver and the Chromium it started (its process group:
    /// a test that fails never closes its session).
    fn drop(&mut self) {
        // SAFETY: kill on the process group this test made for the driver.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn browser(profile: &std::path::Path) -> (Driver, Client) {
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting chromedriver");
    let driver = Driver(child);
    let url = format!("http://127.0.0.1:{port}");
    wait_until(
        Duration::from_secs(20),
        "chromedriver to listen",
        || async { reqwest::get(format!("{url}/status")).await.ok() },
    )
    .await;
    let caps = json!({
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000", "--no-first-run",
                format!("--user-data-dir={}", profile.display()),
            ],
        }
    });
    let serde_json::Value::Object(caps) = caps else {
        unreachable!()
    };
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&url)
        .await
        .expect("a Chromium session");
    (driver, client)
}

/// The text of the first element `css` finds, once it contains `want`.
async fn text_with(c: &Client, css: &str, want: &str) -> String {
    wait_until(
        Duration::from_secs(30),
        &format!("{css} to show {want:?}"),
        || async {
            let t = c.find(Locator::Css(css)).await.ok()?.text().await.ok()?;
            t.contains(want).then_some(t)
        },
    )
    .await
}

/// Clicks what `css` finds, once it shows (found again if the page
/// redrew it between the find and the click).
async fn click(c: &Client, css: &str) {
    wait_until(
        Duration::from_secs(30),
        &format!("{css} to show and take a click"),
        || async { c.find(Locator::Css(css)).await.ok()?.click().await.ok() },
    )
    .await;
}

async fn screenshot(c: &Client, name: &str) {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

#[tokio::test]
async fn the_dashboard_shows_and_operates_a_machine_in_chromium() {
    if !hangar_test_utils::host_tier(
        "the_dashboard_shows_and_operates_a_machine_in_chromium",
        &["crun", "docker-registry", "chromium", "chromedriver"],
    ) {
        return;
    }
    let reg = Registry::start().await;
    reg.push("test/ui", "v1", &ImageBuilder::busybox().build())
        .await;
    let image = format!("{}/test/ui:v1", reg.addr);
    let d = Daemon::start(&[
        "--insecure-registry".into(),
        reg.addr.clone(),
        "--proxy-idle-timeout".into(),
        "2s".into(),
    ])
    .await;
    let api = d.client();
    api.create_app("ui").await.unwrap();
    let config: MachineConfig = serde_json::from_value(json!({
        "image": image,
        "init": {"cmd": ["/bin/sh", "-c",
            "i=0; while true; do echo tick-$i; i=$((i+1)); sleep 1; done"]},
    }))
    .unwrap();
    let m = api
        .create_machine(
            "ui",
            &CreateMachineRequest {
                config: Some(config),
                name: Some("ticker".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    api.wait_machine("ui", &m.id, &["started"], Duration::from_secs(30))
        .await
        .unwrap();
    // A web machine behind the proxy: idle, the proxy stops it; a request
    // starts it again.
    let site: MachineConfig = serde_json::from_value(json!({
        "image": image,
        "init": {"cmd": ["httpd", "-f", "-p", "8080", "-h", "/etc"]},
        "services": [{
            "protocol": "tcp", "internal_port": 8080,
            "autostart": true, "autostop": "stop", "min_machines_running": 0,
            "ports": [{"port": 80, "handlers": ["http"]}],
        }],
    }))
    .unwrap();
    let site = api
        .create_machine(
            "ui",
            &CreateMachineRequest {
                config: Some(site),
                name: Some("site".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    api.wait_machine("ui", &site.id, &["stopped"], Duration::from_secs(60))
        .await
        .expect("the proxy stops the idle machine");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let r = http
        .get(format!("http://{}/hostname", d.proxy_http))
        .header("host", "ui.localhost")
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "autostarted");
    let vol = api
        .create_volume(
            "ui",
            &hangar_api_types::CreateVolumeRequest {
                name: Some("data".into()),
                size_gb: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();

    let profile = tempfile::tempdir().unwrap();
    let (_driver, c) = browser(profile.path()).await;
    // Logging in by the URL `hangar dashboard` gives: the token leaves
    // the address bar.
    let (ok, out, err) = d.cli(&["dashboard", "--print"]);
    assert!(ok, "{err}");
    let login = out.lines().last().unwrap().trim().to_owned();
    assert!(login.starts_with(&format!("{}/ui/?token=", d.url)), "{out}");
    c.goto(&login).await.unwrap();
    let here = c.current_url().await.unwrap();
    assert_eq!(here.path(), "/ui/");
    assert!(!here.as_str().contains(&d.token), "{here}");
    text_with(&c, "h1", "Apps").await;
    screenshot(&c, "apps").await;
    click(&c, "a[href='#/apps/ui']").await;
    let row = format!("tr[data-machine='{}']", m.id);
    text_with(&c, &row, "started").await;
    // The proxy's view: both machines, the ticker (no public service) in
    // rotation, and what the proxy did to the site machine.
    let rotation = format!("tr[data-proxy-machine='{}'] td[data-rotation]", m.id);
    text_with(&c, &rotation, "yes").await;
    text_with(
        &c,
        &format!("tr[data-proxy-machine='{}']", site.id),
        "80/http → 8080 (autostop stop, autostart)",
    )
    .await;
    text_with(&c, "#proxy tr[data-activity='autostop']", &site.id).await;
    text_with(&c, "#proxy tr[data-activity='autostart']", " ms").await;
    let caption = text_with(&c, "#usage", "Start latency:").await;
    assert!(!caption.contains("Start latency: no data yet"), "{caption}");
    text_with(&c, "#usage", &format!("Memory {}", m.id)).await;
    let usage = c
        .find(Locator::Css("#usage"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!usage.contains("[object"), "{usage}");
    let proxy = c
        .find(Locator::Css("#proxy"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!proxy.contains("null"), "{proxy}");
    screenshot(&c, "app").await;

    // A snapshot of the volume, then a new volume from it, from the page.
    click(
        &c,
        &format!(
            "tr[data-volume='{}'] button[data-action='snapshot']",
            vol.id
        ),
    )
    .await;
    c.accept_alert().await.unwrap();
    click(&c, "tr[data-snapshot] button[data-action='restore']").await;
    c.send_alert_text("restored").await.unwrap();
    c.accept_alert().await.unwrap();
    let vols = wait_until(Duration::from_secs(30), "the restored volume", || async {
        let vs = api.list_volumes("ui").await.ok()?;
        (vs.len() == 2).then_some(vs)
    })
    .await;
    let restored = vols.iter().find(|v| v.id != vol.id).unwrap();
    assert_eq!(restored.name, "restored");
    text_with(
        &c,
        &format!("tr[data-volume='{}']", restored.id),
        "restored",
    )
    .await;
    screenshot(&c, "app-volumes").await;

    // The machine's page: its live logs.
    click(&c, &format!("a[href='#/apps/ui/machines/{}']", m.id)).await;
    text_with(&c, "#logs", "tick-").await;
    text_with(&c, "#machine-state", "started").await;
    // Its versions (one: the one it runs).
    text_with(&c, "#versions", "yes").await;
    // Its memory plotted from its cgroup (hangard samples every 5 s).
    text_with(&c, "#usage", "MiB").await;
    assert!(c.find(Locator::Css("#usage svg.chart")).await.is_ok());
    screenshot(&c, "machine").await;

    // Stop (confirmed in the page's dialog): the state changes live.
    click(&c, "#machine button[data-action='stop']").await;
    c.accept_alert().await.unwrap();
    text_with(&c, "#machine-state", "stopped").await;
    assert_eq!(api.get_machine("ui", &m.id).await.unwrap().state, "stopped");
    click(&c, "#machine button[data-action='start']").await;
    text_with(&c, "#machine-state", "started").await;
    assert_eq!(api.get_machine("ui", &m.id).await.unwrap().state, "started");
    screenshot(&c, "machine-restarted").await;

    // Logged out, the form logs in again.
    click(&c, "#logout button").await;
    c.goto(&format!("{}/ui/#/login", d.url)).await.unwrap();
    let input = wait_until(Duration::from_secs(10), "the token field", || async {
        c.find(Locator::Css("#token")).await.ok()
    })
    .await;
    input.send_keys(&d.token).await.unwrap();
    click(&c, "form.login button[type='submit']").await;
    text_with(&c, "h1", "Apps").await;
    text_with(&c, "main", "ui").await;
    c.close().await.unwrap();
}
