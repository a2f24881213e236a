use serde_json::json;

use super::*;
use crate::machine::{group_config, merge, release_command_config};

const FULL: &str = r#"
app = "shop"
primary_region = "local"
kill_signal = "SIGTERM"
kill_timeout = 30
swap_size_mb = 256

[build]
  image = "registry.local/shop:1"
  build-target = "prod"
  [build.args]
    VERSION = 3

[deploy]
  strategy = "bluegreen"
  max_unavailable = 0.5
  wait_timeout = "2m"
  release_command = "bin/migrate --all 'a b'"
  release_command_timeout = "90s"
  [deploy.release_command_vm]
    size = "shared-cpu-2x"

[env]
  LOG_LEVEL = "debug"
  WORKERS = 4
  DEBUG = false

[processes]
  web = "bin/web --port 8080"
  worker = "bin/worker"

[http_service]
  internal_port = 8080
  force_https = true
  auto_stop_machines = "suspend"
  auto_start_machines = true
  min_machines_running = 1
  processes = ["web"]
  [http_service.concurrency]
    type = "requests"
    soft_limit = 20
    hard_limit = 25
  [[http_service.checks]]
    grace_period = "5s"
    interval = 15000
    method = "get"
    path = "/health"
    timeout = "2s"
    [http_service.checks.headers]
      X-Probe = "1"

[[services]]
  internal_port = 5432
  protocol = "tcp"
  processes = ["worker"]
  [[services.ports]]
    port = 5432
  [[services.tcp_checks]]
    interval = "10s"

[checks.alive]
  type = "http"
  path = "/alive"
  processes = ["web"]

[[vm]]
  size = "shared-cpu-2x"
  memory = "1gb"
  processes = ["web"]

[[vm]]
  memory = 256
  processes = ["worker"]

[mounts]
  source = "data"
  destination = "/data"
  initial_size = "3gb"
  processes = ["worker"]

[[files]]
  guest_path = "/etc/motd"
  raw_value = "hello"

[[restart]]
  policy = "on-failure"
  retries = 3
  processes = ["worker"]

[[statics]]
  guest_path = "/app/public"
  url_prefix = "/static"

[metrics]
  port = 9091
  path = "/metrics"

[experimental]
  entrypoint = ["/bin/sh", "-c"]
"#;

#[test]
fn the_whole_format_parses_with_fly_names_and_aliases() {
    let l = parse(FULL).unwrap();
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    let c = l.config;
    assert_eq!(c.app.as_deref(), Some("shop"));
    assert_eq!(
        c.kill_timeout,
        Some(Secs(std::time::Duration::from_secs(30)))
    );
    let b = c.build.as_ref().unwrap();
    assert_eq!(b.build_target.as_deref(), Some("prod"));
    assert_eq!(b.args["VERSION"].0, "3");
    let d = c.deploy.as_ref().unwrap();
    assert_eq!(d.wait_timeout.unwrap().0.as_secs(), 120);
    assert_eq!(d.max_unavailable, Some(0.5));
    assert_eq!(c.env["WORKERS"].0, "4");
    assert_eq!(c.env["DEBUG"].0, "false");
    assert_eq!(c.groups(), vec!["web", "worker"]);
    assert_eq!(c.vm.len(), 2);
    assert_eq!(c.mounts.len(), 1, "[mounts] as one table");
    assert_eq!(c.mounts[0].initial_size.as_ref().unwrap().gb().unwrap(), 3);
    // A bluegreen deploy with volumes is refused, naming why.
    let err = c.validate().unwrap_err().to_string();
    assert!(
        err.contains("deploy.strategy bluegreen") && err.contains("mounts"),
        "{err}"
    );
    // The definition round-trips through JSON.
    let back = from_definition(&c.to_definition()).unwrap();
    assert_eq!(back, c);
}

#[test]
fn unknown_keys_warn_and_wrong_types_name_key_and_line() {
    let l = parse("app = \"a\"\nnonsense = 1\n[http_service]\ninternal_port = 80\nbogus = true\n[[vm]]\nsize = \"shared-cpu-1x\"\nflavour = \"x\"\n").unwrap();
    let mut w = l.warnings.clone();
    w.sort();
    assert_eq!(
        w,
        vec![
            "unknown key `http_service.bogus` (ignored)",
            "unknown key `nonsense` (ignored)",
            "unknown key `vm.0.flavour` (ignored)",
        ]
    );
    let e = parse("app = \"a\"\n\n[http_service]\ninternal_port = \"eighty\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 4") && e.contains("internal_port"), "{e}");
    let e = parse("kill_timeout = \"forever\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 1") && e.contains("forever"), "{e}");
    assert!(parse("app = \n").is_err());
}

#[test]
fn validation_names_the_key() {
    let cases = [
        (
            "[processes]\nweb = \"x\"\n[http_service]\nprocesses = [\"api\"]\n",
            "http_service.processes",
        ),
        ("[checks.a]\ntype = \"grpc\"\nport = 1\n", "checks.a.type"),
        ("[checks.a]\ntype = \"tcp\"\n", "checks.a.port"),
        ("[[vm]]\nsize = \"huge\"\n", "vm[0].size"),
        ("[[vm]]\nmemory = \"lots\"\n", "vm[0].memory"),
        (
            "[mounts]\nsource = \"d\"\ndestination = \"/\"\n",
            "mounts[0].destination",
        ),
        ("[[files]]\nguest_path = \"/a\"\n", "files[0]"),
        ("[[restart]]\npolicy = \"sometimes\"\n", "restart[0].policy"),
        ("[deploy]\nstrategy = \"yolo\"\n", "deploy.strategy"),
        (
            "[deploy]\nmax_unavailable = 1.5\n",
            "deploy.max_unavailable",
        ),
        ("kill_signal = \"SIGWINCH\"\n", "kill_signal"),
        ("app = \"Bad_Name!\"\n", "app"),
        (
            "[http_service]\nauto_stop_machines = \"nap\"\n",
            "auto_stop_machines",
        ),
    ];
    for (text, key) in cases {
        let c = parse(text).unwrap().config;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains(key), "{text:?}: {e}");
    }
    assert!(parse("app = \"ok\"\n").unwrap().config.validate().is_ok());
}

#[test]
fn each_group_gets_its_own_machine_config() {
    let mut c = parse(FULL).unwrap().config;
    c.mounts.clear();
    c.validate().unwrap();
    let web = group_config(&c, "web", "img@sha256:1");
    assert_eq!(web["image"], "img@sha256:1");
    assert_eq!(web["init"]["cmd"], json!(["bin/web", "--port", "8080"]));
    assert_eq!(web["init"]["entrypoint"], json!(["/bin/sh", "-c"]));
    assert_eq!(web["init"]["swap_size_mb"], 256);
    assert_eq!(web["env"]["FLY_PROCESS_GROUP"], "web");
    assert_eq!(web["env"]["PRIMARY_REGION"], "local");
    assert_eq!(web["env"]["WORKERS"], "4");
    let svc = &web["services"][0];
    assert_eq!(svc["internal_port"], 8080);
    assert_eq!(
        svc["ports"][0],
        json!({"port": 80, "handlers": ["http"], "force_https": true})
    );
    assert_eq!(svc["ports"][1]["handlers"], json!(["tls", "http"]));
    assert_eq!(svc["autostop"], "suspend");
    assert_eq!(svc["min_machines_running"], 1);
    assert_eq!(
        svc["concurrency"],
        json!({"type": "requests", "hard_limit": 25, "soft_limit": 20})
    );
    assert_eq!(
        svc["checks"][0],
        json!({"type": "http", "interval": "15s", "timeout": "2s", "grace_period": "5s",
               "method": "GET", "path": "/health", "headers": [{"name": "X-Probe", "values": ["1"]}]})
    );
    assert_eq!(
        web["checks"]["alive"]["port"], 8080,
        "top-level checks default to http_service's port"
    );
    assert_eq!(
        web["guest"],
        json!({"cpu_kind": "shared", "cpus": 2, "memory_mb": 1024})
    );
    assert_eq!(
        web["stop_config"],
        json!({"signal": "SIGTERM", "timeout": "30s"})
    );
    assert_eq!(
        web["files"][0],
        json!({"guest_path": "/etc/motd", "raw_value": "aGVsbG8="})
    );
    assert_eq!(
        web["restart"],
        serde_json::Value::Null,
        "[[restart]] names only worker"
    );
    assert_eq!(web["metadata"]["fly_process_group"], "web");
    assert_eq!(web["metadata"]["fly_platform_version"], "v2");
    let worker = group_config(&c, "worker", "img@sha256:1");
    assert_eq!(worker["services"][0]["internal_port"], 5432);
    assert_eq!(worker["services"][0]["checks"][0]["type"], "tcp");
    assert!(worker["checks"].as_object().unwrap().is_empty());
    assert_eq!(
        worker["restart"],
        json!({"policy": "on-failure", "max_retries": 3})
    );
    assert_eq!(worker["guest"], json!({"memory_mb": 256}));
    // Each group's config is one the Machines API accepts.
    for g in [&web, &worker] {
        hangar_core::spec::Parsed::new(g.clone()).unwrap();
    }
}

#[test]
fn a_deploy_keeps_what_is_the_machines_own() {
    let c = parse("[env]\nA = \"2\"\n[http_service]\ninternal_port = 80\n[mounts]\nsource = \"data\"\ndestination = \"/new\"\n").unwrap().config;
    let current = json!({
        "image": "old",
        "init": {"cmd": ["old"], "tty": true},
        "env": {"A": "1", "GONE": "x"},
        "guest": {"cpus": 4, "memory_mb": 4096, "cpu_kind": "performance"},
        "schedule": "daily",
        "auto_destroy": false,
        "restart": {"policy": "always"},
        "mounts": [{"name": "data", "path": "/old", "volume": "vol_1"}],
        "metadata": {"fly_platform_version": "v2", "team": "blue", "fly_process_group": "app"},
    });
    let merged = merge(&current, &group_config(&c, "app", "new"));
    assert_eq!(merged["image"], "new");
    assert_eq!(
        merged["init"],
        json!({"tty": true}),
        "cmd replaced (none now), tty kept"
    );
    assert_eq!(merged["env"]["A"], "2");
    assert!(merged["env"].get("GONE").is_none(), "env replaced whole");
    assert_eq!(
        merged["guest"]["cpus"], 4,
        "no [vm]: the machine's guest stays"
    );
    assert_eq!(merged["schedule"], "daily");
    assert!(
        merged.get("restart").is_none(),
        "restart reset without [[restart]]"
    );
    assert_eq!(
        merged["mounts"],
        json!([{"name": "data", "path": "/new", "volume": "vol_1"}])
    );
    assert_eq!(merged["metadata"]["team"], "blue");
    assert_eq!(merged["services"][0]["internal_port"], 80);
}

#[test]
fn a_release_command_runs_alone_and_once() {
    let c = parse(FULL).unwrap().config;
    let r = release_command_config(
        &c,
        "img",
        c.deploy
            .as_ref()
            .unwrap()
            .release_command
            .as_deref()
            .unwrap(),
    );
    assert_eq!(r["init"]["cmd"], json!(["bin/migrate", "--all", "a b"]));
    assert_eq!(r["env"]["RELEASE_COMMAND"], "1");
    assert_eq!(r["restart"]["policy"], "no");
    assert_eq!(r["auto_destroy"], true);
    assert!(r.get("services").is_none() && r.get("mounts").is_none());
    assert_eq!(r["guest"]["memory_mb"], 512, "release_command_vm");
    hangar_core::spec::Parsed::new(r).unwrap();
}
