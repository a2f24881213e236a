//! The CLI against an in-process daemon (the real agent and API, the fake
//! runtime): no root needed, so these run in every tier.

use std::process::{Command, Stdio};

use hangar_test_utils::inproc::TestDaemon;

/// Runs `hangar` against `d`; returns (success, stdout, stderr).
fn hangar(d: &TestDaemon, args: &[&str]) -> (bool, String, String) {
    hangar_with(d, None, &d.token, args)
}

/// Runs `hangar` in `dir` (where fly.toml is).
fn hangar_in(d: &TestDaemon, dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    hangar_with(d, Some(dir), &d.token, args)
}

/// Runs `hangar` against `d` with `token`, in `dir` if given.
fn hangar_with(
    d: &TestDaemon,
    dir: Option<&std::path::Path>,
    token: &str,
    args: &[&str],
) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hangar"));
    cmd.args(args)
        .env("HANGAR_API_URL", &d.url)
        .env("HANGAR_API_TOKEN", token)
        .env_remove("HANGAR_APP")
        .stdin(Stdio::null());
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    let out = cmd.output().expect("running hangar");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_deploy_scale_and_releases_through_the_cli() {
    let d = TestDaemon::start().await;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    // launch: an app and its fly.toml from an image, then its first deploy.
    let (ok, out, err) = hangar_in(
        &d,
        p,
        &[
            "launch",
            "--image",
            "busybox",
            "--name",
            "shop",
            "--vm-memory",
            "512",
        ],
    );
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("Wrote") && out.contains("Finished deploying"),
        "{out}"
    );
    let toml = std::fs::read_to_string(p.join("fly.toml")).unwrap();
    assert!(
        toml.contains("app = \"shop\"") && toml.contains("image = \"busybox\""),
        "{toml}"
    );
    // The app comes from fly.toml in every command.
    let (ok, out, err) = hangar_in(&d, p, &["machine", "list", "--json"]);
    assert!(ok, "{err}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        list.as_array().unwrap().len(),
        2,
        "no services: a machine and its standby: {list}"
    );
    let (ok, out, _) = hangar_in(&d, p, &["config", "validate"]);
    assert!(ok && out.contains("is valid"), "{out}");
    let (ok, out, _) = hangar_in(&d, p, &["config", "show"]);
    assert!(ok && out.contains("\"memory\": 512"), "{out}");
    // A warning for an unknown key, an error with the line for a wrong type.
    std::fs::write(p.join("fly.toml"), format!("bogus = 1\n{toml}")).unwrap();
    let (ok, _, err) = hangar_in(&d, p, &["deploy", "--dry-run"]);
    assert!(ok && err.contains("unknown key `bogus`"), "{err}");
    std::fs::write(
        p.join("fly.toml"),
        format!("kill_timeout = \"soon\"\n{toml}"),
    )
    .unwrap();
    let (ok, _, err) = hangar_in(&d, p, &["deploy"]);
    assert!(
        !ok && err.contains("kill_timeout") && err.contains("line"),
        "{err}"
    );
    std::fs::write(p.join("fly.toml"), &toml).unwrap();
    // Another app's token cannot deploy this one.
    hangar(&d, &["apps", "create", "other"]);
    let (_, other_token, _) = hangar(&d, &["tokens", "create", "deploy", "-a", "other"]);
    let (ok, _, err) = hangar_with(&d, Some(p), other_token.trim(), &["deploy"]);
    assert!(!ok);
    assert!(err.contains("app other only"), "{err}");
    // Token listings take the app from fly.toml too.
    let (ok, out, _) = hangar_in(&d, p, &["tokens", "list", "--json"]);
    assert!(ok);
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["app"] == "shop"),
        "{listed}"
    );
    let (_, out, _) = hangar(&d, &["tokens", "list", "--json"]);
    assert!(
        out.contains("\"other\""),
        "without fly.toml: every app's: {out}"
    );
    // Scale up, then releases lists v1 and v2.
    let (ok, out, err) = hangar_in(&d, p, &["scale", "count", "3"]);
    assert!(ok, "{out}\n{err}");
    let (ok, out, _) = hangar_in(&d, p, &["scale", "show"]);
    assert!(ok && out.contains("app") && out.contains('3'), "{out}");
    let (ok, out, _) = hangar_in(&d, p, &["releases", "--image"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("v1") && out.contains("v2") && out.contains("scale"),
        "{out}"
    );
    let (ok, out, _) = hangar_in(&d, p, &["releases", "show", "v2", "--json"]);
    assert!(ok);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["reason"], "scale");
    assert_eq!(r["machines"].as_array().unwrap().len(), 2);
    // On a terminal: a spinner line per machine, marked when done.
    let cmd = format!("{} deploy --env TTY=1", env!("CARGO_BIN_EXE_hangar"));
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .current_dir(p)
        .env("HANGAR_API_URL", &d.url)
        .env("HANGAR_API_TOKEN", &d.token)
        .stdin(Stdio::null())
        .output()
        .expect("script (util-linux) runs the CLI on a terminal");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("\u{2714} ["),
        "a finished machine's line: {text}"
    );
    // apps restart is a release too.
    let (ok, out, err) = hangar_in(&d, p, &["apps", "restart"]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("Release v4"), "{out}");
}
