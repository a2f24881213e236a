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
