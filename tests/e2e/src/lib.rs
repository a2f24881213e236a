//! End-to-end tests live in `tests/`; see `hangar-test-utils` for the
//! harness. What the test files share is here: a registry with a busybox
//! image and a daemon with an app, machine requests, waits and shell
//! commands inside machines.

use std::time::Duration;

use hangar_api_types::{CreateMachineRequest, MachineConfig, MachineExecRequest};
use hangar_client::Client;
use hangar_test_utils::daemon::Daemon;
use hangar_test_utils::image::ImageBuilder;
use hangar_test_utils::registry::Registry;

/// A registry holding `image` as `test/<app>:v1`, a daemon allowed to pull
/// from it, with app `app`; returns them, a client and the image's name.
pub async fn setup(app: &str, image: ImageBuilder) -> (Registry, Daemon, Client, String) {
    let reg = Registry::start().await;
    let repo = format!("test/{app}");
    reg.push(&repo, "v1", &image.build()).await;
    let d = Daemon::with_registry(&reg.addr).await;
    let c = d.client();
    c.create_app(app).await.unwrap();
    let image = format!("{}/{repo}:v1", reg.addr);
    (reg, d, c, image)
}

/// A create request for `config` (Fly's JSON).
pub fn request(config: serde_json::Value) -> CreateMachineRequest {
    CreateMachineRequest {
        config: Some(serde_json::from_value::<MachineConfig>(config).unwrap()),
        ..CreateMachineRequest::default()
    }
}

/// Waits (30 s at most) until machine `id` of `app` is in `state`.
pub async fn wait(c: &Client, app: &str, id: &str, state: &str) {
    c.wait_machine(app, id, &[state], Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("machine {id} did not reach {state}: {e}"));
}

/// Runs `script` with `/bin/sh -c` in machine `id` of `app` (20 s at most);
/// returns its exit code and its stdout followed by its stderr.
pub async fn sh(c: &Client, app: &str, id: &str, script: &str) -> (i32, String) {
    let r = c
        .exec(
            app,
            id,
            &MachineExecRequest {
                command: Some(vec!["/bin/sh".into(), "-c".into(), script.into()]),
                timeout: Some(20),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    (r.exit_code, format!("{}{}", r.stdout, r.stderr))
}

/// Creates a machine with `req`, waits (60 s at most) until it is started
/// and returns it as it is then (its private address assigned).
pub async fn started(
    c: &Client,
    app: &str,
    req: &CreateMachineRequest,
) -> hangar_api_types::Machine {
    let m = c.create_machine(app, req).await.unwrap();
    c.wait_machine(app, &m.id, &["started"], Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("machine {} did not start: {e}", m.id));
    c.get_machine(app, &m.id).await.unwrap()
}

/// A shell command that GETs `/` from port 8080 of `addr` (busybox's
/// static wget needs NSS libraries the test image lacks; nc does not).
pub fn http_get(addr: &str, timeout_s: u32) -> String {
    format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w {timeout_s} {addr} 8080")
}

/// The 6PN addresses `name` resolves to, seen from machine `id`.
pub async fn lookup(c: &Client, app: &str, id: &str, name: &str) -> Vec<String> {
    let (_, out) = sh(c, app, id, &format!("nslookup -type=AAAA {name}")).await;
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Address:"))
        .map(|a| a.trim().to_owned())
        .filter(|a| a.starts_with("fdaa:"))
        .collect()
}

/// `GET /v1/hangar/hosts` of `d` with its admin token.
pub async fn hosts(d: &Daemon) -> serde_json::Value {
    reqwest::Client::new()
        .get(format!("{}/v1/hangar/hosts", d.url))
        .bearer_auth(&d.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}
