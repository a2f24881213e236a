//! The CLI against an in-process daemon (the real agent and API, the fake
//! runtime): no root needed, so these run in every tier.

use std::process::{Command, Stdio};

use hangar_test_utils::inproc::TestDaemon;

/// Runs `hangar` against `d`; returns (success, stdout, stderr).
fn hangar(d: &TestDaemon, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args(args)
        .env("HANGAR_API_URL", &d.url)
        .env("HANGAR_API_TOKEN", &d.token)
        .env_remove("HANGAR_APP")
        .stdin(Stdio::null())
        .output()
        .expect("running hangar");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_machines_and_tokens_through_the_cli() {
    let d = TestDaemon::start().await;
    let (ok, out, err) = hangar(&d, &["apps", "create", "web"]);
    assert!(ok, "{err}");
    assert!(out.contains("web"), "{out}");
    let (ok, out, _) = hangar(&d, &["apps", "list"]);
    assert!(ok && out.contains("web"), "{out}");

    // A machine, on the fake runtime.
    let (ok, out, err) = hangar(
        &d,
        &[
            "machine", "run", "busybox", "--app", "web", "--name", "one", "--detach",
        ],
    );
    assert!(ok, "{out}{err}");
    let (ok, out, err) = hangar(&d, &["machine", "list", "--app", "web", "--json"]);
    assert!(ok, "{err}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list[0]["name"], "one");
    assert_eq!(d.runtime.starts(), 1);

    // Tokens: minted, listed, and one that outlives its minter's revocation
    // does not exist.
    let (ok, token, err) = hangar(&d, &["tokens", "create", "deploy", "-a", "web", "-x", "1h"]);
    assert!(ok, "{err}");
    let token = token.trim().to_owned();
    assert!(token.starts_with("hangar_app_"), "{token}");
    let (ok, out, _) = hangar(&d, &["tokens", "list", "-a", "web", "--json"]);
    assert!(ok);
    let tokens: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = tokens[0]["id"].as_str().unwrap().to_owned();
    assert!(tokens[0]["expires_at"].is_string(), "{tokens}");
    let app_client = hangar_client::Client::new(&d.url, &token);
    assert!(
        app_client
            .list_machines("web", &Default::default())
            .await
            .is_ok()
    );
    let (ok, _, err) = hangar(&d, &["tokens", "revoke", &id]);
    assert!(ok, "{err}");
    let err = app_client
        .list_machines("web", &Default::default())
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(401));

    // An app with a machine is not destroyed without --force.
    let (ok, _, err) = hangar(&d, &["apps", "destroy", "web"]);
    assert!(!ok && err.contains("machines"), "{err}");
    let (ok, _, err) = hangar(&d, &["apps", "destroy", "web", "--force"]);
    assert!(ok, "{err}");
    let (_, out, _) = hangar(&d, &["apps", "list"]);
    assert!(!out.contains("web"), "{out}");
}
