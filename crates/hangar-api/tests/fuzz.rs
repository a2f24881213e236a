//! Property test of the whole API surface: thousands of generated requests
//! (every route, random and half-valid path parameters, query strings and
//! JSON bodies, with and without leases) against the real router, agent and
//! SQLite store over the fake runtime. Nothing may answer 5xx or panic, and
//! reopening the database afterwards must find every machine as it was.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use hangar_agent::images::fake::FakeImages;
use hangar_agent::{Agent, AgentConfig};
use hangar_api::{ApiState, router};
use hangar_runtime::fake::FakeRuntime;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};
use tower::ServiceExt;

const TOKEN: &str = "fuzz";

/// Arbitrary JSON, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "[a-zA-Z0-9 _./:@=-]{0,12}".prop_map(Value::String),
        Just(json!("SIGKILL")),
        Just(json!("10s")),
        Just(json!("busybox")),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("image".to_string()),
                    Just("config".to_string()),
                    Just("env".to_string()),
                    Just("guest".to_string()),
                    Just("cpus".to_string()),
                    Just("memory_mb".to_string()),
                    Just("signal".to_string()),
                    Just("timeout".to_string()),
                    Just("metadata".to_string()),
                    Just("restart".to_string()),
                    Just("policy".to_string()),
                    Just("services".to_string()),
                    Just("autostop".to_string()),
                    Just("command".to_string()),
                    Just("ttl".to_string()),
                    "[a-z_]{1,8}",
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Bodies that are mostly valid with random parts.
fn body() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        any_json().prop_map(Some),
        any_json().prop_map(|v| Some(
            json!({"config": {"image": "busybox", "env": {"A": "1"}, "guest": v}})
        )),
        any_json().prop_map(|v| Some(json!({"config": {"image": "busybox", "init": {"cmd": v}}}))),
        any_json().prop_map(|v| Some(
            json!({"config": {"image": "busybox", "services": [{"autostop": v}]}})
        )),
        any_json().prop_map(|v| Some(
            json!({"config": {"image": "busybox", "restart": {"policy": v}}, "skip_launch": true})
        )),
        any_json().prop_map(|v| Some(json!({"signal": v, "timeout": v}))),
        any_json().prop_map(|v| Some(json!({"config": {"image": "busybox", "files": v}}))),
        any_json().prop_map(|v| Some(
            json!({"config": {"image": "busybox", "files": [{"guest_path": v, "raw_value": v, "mode": v}]}})
        )),
        any_json().prop_map(|v| Some(
            json!({"config": {"image": "busybox", "standbys": v, "schedule": v}})
        )),
        any_json().prop_map(|v| Some(json!({"metadata": {"k": v}}))),
        any_json().prop_map(|v| Some(json!({"command": v, "timeout": 5}))),
        Just(Some(json!({"config": {"image": "busybox"}}))),
        Just(Some(json!({"config": {"image": "missing/thing"}}))),
        Just(Some(json!({"name": "fz", "org_slug": "personal"}))),
        any_json().prop_map(|v| Some(json!({"values": {"K": v, "k-2": v}}))),
        any_json().prop_map(|v| Some(json!({"value": v}))),
        any_json().prop_map(|v| Some(json!({"name": "vf", "size_gb": v, "encrypted": v}))),
        any_json().prop_map(|v| Some(json!({"size_gb": v, "snapshot_retention": v}))),
        any_json().prop_map(|v| Some(
            json!({"config": {"image": "busybox", "mounts": [{"volume": v, "path": v}]}})
        )),
        any_json().prop_map(|v| Some(
            json!({"config": {"image": "busybox", "files": [{"guest_path": "/s", "secret_name": v}]}, "min_secrets_version": v})
        )),
    ]
}

fn segment(ids: Vec<String>) -> impl Strategy<Value = String> {
    let known = proptest::sample::select(ids);
    prop_oneof![
        3 => known,
        1 => Just("00000000000000".to_string()),
        1 => Just("..%2F..%2Fetc".to_string()),
        1 => "[a-zA-Z0-9_.-]{1,20}",
    ]
}

#[derive(Debug, Clone)]
struct Req {
    method: &'static str,
    path: String,
    body: Option<Value>,
    nonce: bool,
}

fn request(ids: Vec<String>) -> impl Strategy<Value = Req> {
    let routes = vec![
        ("GET", "/v1/apps"),
        ("POST", "/v1/apps"),
        ("GET", "/v1/apps/{app}"),
        ("DELETE", "/v1/apps/{app}"),
        ("GET", "/v1/apps/{app}/machines"),
        ("POST", "/v1/apps/{app}/machines"),
        ("GET", "/v1/apps/{app}/machines/{id}"),
        ("POST", "/v1/apps/{app}/machines/{id}"),
        ("DELETE", "/v1/apps/{app}/machines/{id}"),
        ("POST", "/v1/apps/{app}/machines/{id}/start"),
        ("POST", "/v1/apps/{app}/machines/{id}/stop"),
        ("POST", "/v1/apps/{app}/machines/{id}/restart"),
        ("POST", "/v1/apps/{app}/machines/{id}/signal"),
        ("POST", "/v1/apps/{app}/machines/{id}/suspend"),
        ("POST", "/v1/apps/{app}/machines/{id}/cordon"),
        ("POST", "/v1/apps/{app}/machines/{id}/uncordon"),
        ("GET", "/v1/apps/{app}/machines/{id}/wait"),
        ("GET", "/v1/apps/{app}/machines/{id}/events"),
        ("GET", "/v1/apps/{app}/machines/{id}/versions"),
        ("GET", "/v1/apps/{app}/machines/{id}/lease"),
        ("POST", "/v1/apps/{app}/machines/{id}/lease"),
        ("DELETE", "/v1/apps/{app}/machines/{id}/lease"),
        ("GET", "/v1/apps/{app}/machines/{id}/metadata"),
        ("PUT", "/v1/apps/{app}/machines/{id}/metadata"),
        ("PATCH", "/v1/apps/{app}/machines/{id}/metadata"),
        ("GET", "/v1/apps/{app}/machines/{id}/metadata/k"),
        ("POST", "/v1/apps/{app}/machines/{id}/metadata/k"),
        ("DELETE", "/v1/apps/{app}/machines/{id}/metadata/k"),
        ("POST", "/v1/apps/{app}/machines/{id}/exec"),
        ("GET", "/v1/apps/{app}/machines/{id}/ps"),
        ("GET", "/v1/apps/{app}/machines/{id}/memory"),
        ("PUT", "/v1/apps/{app}/machines/{id}/memory"),
        ("POST", "/v1/apps/{app}/deploy_token"),
        ("GET", "/v1/orgs/{org}/machines"),
        ("GET", "/v1/platform/regions"),
        ("GET", "/v1/tokens/current"),
        ("GET", "/v1/hangar/apps/{app}/logs"),
        ("GET", "/v1/apps/{app}/volumes"),
        ("POST", "/v1/apps/{app}/volumes"),
        ("GET", "/v1/apps/{app}/volumes/{id}"),
        ("PUT", "/v1/apps/{app}/volumes/{id}"),
        ("DELETE", "/v1/apps/{app}/volumes/{id}"),
        ("PUT", "/v1/apps/{app}/volumes/{id}/extend"),
        ("GET", "/v1/apps/{app}/volumes/{id}/snapshots"),
        ("POST", "/v1/apps/{app}/volumes/{id}/snapshots"),
        ("GET", "/v1/apps/{app}/secrets"),
        ("POST", "/v1/apps/{app}/secrets"),
        ("GET", "/v1/apps/{app}/secrets/K"),
        ("POST", "/v1/apps/{app}/secrets/K"),
        ("DELETE", "/v1/apps/{app}/secrets/K"),
        ("PATCH", "/v1/apps/{app}/machines"),
        ("GET", "/v1/nope"),
    ];
    let query = proptest::collection::vec(
        (
            proptest::sample::select(vec![
                "state",
                "timeout",
                "force",
                "kill",
                "include_deleted",
                "summary",
                "region",
                "metadata.k",
                "limit",
                "cursor",
                "ttl",
                "signal",
                "version",
                "org_slug",
                "updated_after",
                "sort_by",
                "order",
                "force_stop",
                "tail",
                "since",
                "machine_id",
                "show_secrets",
                "min_version",
            ]),
            prop_oneof![
                Just("true".to_string()),
                Just("1".to_string()),
                Just("started".to_string()),
                Just("stopped,destroyed".to_string()),
                Just("-5".to_string()),
                Just("99999999999999999999".to_string()),
                "[a-zA-Z0-9%]{0,10}",
            ],
        ),
        0..3,
    );
    let app = prop_oneof![4 => Just("f".to_string()), 1 => Just("nope".to_string()), 1 => "[a-zA-Z0-9-]{1,10}"];
    (
        proptest::sample::select(routes),
        app,
        segment(ids),
        query,
        body(),
        any::<bool>(),
    )
        .prop_map(|((method, template), app, id, query, body, nonce)| {
            let mut path = template
                .replace("{app}", &app)
                .replace("{id}", &id)
                .replace("{org}", if app == "f" { "personal" } else { &app });
            let mut q: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
            // Waits take the shortest timeout the API allows (the last value
            // counts), so that the run stays quick.
            if template.ends_with("/wait") {
                q.push("timeout=1".into());
            }
            if !q.is_empty() {
                path = format!("{path}?{}", q.join("&"));
            }
            Req {
                method,
                path,
                body,
                nonce,
            }
        })
}

fn open(rt: &tokio::runtime::Runtime, dir: &std::path::Path, runtime: Arc<FakeRuntime>) -> Agent {
    rt.block_on(Agent::open(
        AgentConfig::new(dir),
        runtime,
        Arc::new(FakeImages),
    ))
    .unwrap()
}

fn call(
    rt: &tokio::runtime::Runtime,
    app: &axum::Router,
    r: &Req,
    nonce: Option<&str>,
) -> (u16, Value) {
    let mut b = Request::builder()
        .method(r.method)
        .uri(&r.path)
        .header("authorization", format!("Bearer {TOKEN}"));
    if let Some(n) = nonce {
        b = b.header("fly-machine-lease-nonce", n);
    }
    let req = b
        .body(
            r.body
                .as_ref()
                .map(|v| Body::from(v.to_string()))
                .unwrap_or_default(),
        )
        .unwrap();
    rt.block_on(async {
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    })
}

#[test]
fn thousands_of_generated_requests_never_fail_the_server() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeRuntime::new());
    let agent = open(&rt, dir.path(), fake.clone());
    let app = router(ApiState::bare(agent.clone(), TOKEN));
    rt.block_on(async { agent.create_app("f", None, None).unwrap() });
    let mut ids = Vec::new();
    for _ in 0..4 {
        let (st, m) = call(
            &rt,
            &app,
            &Req {
                method: "POST",
                path: "/v1/apps/f/machines".into(),
                body: Some(json!({"config": {"image": "busybox"}})),
                nonce: false,
            },
            None,
        );
        assert_eq!(st, 200);
        ids.push(m["id"].as_str().unwrap().to_owned());
    }
    // Two volumes, so that volume routes meet real ones too.
    for name in ["fa", "fb"] {
        let (st, v) = call(
            &rt,
            &app,
            &Req {
                method: "POST",
                path: "/v1/apps/f/volumes".into(),
                body: Some(json!({"name": name, "size_gb": 1})),
                nonce: false,
            },
            None,
        );
        assert_eq!(st, 200, "{v}");
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    // Nonces handed out by the generated lease requests, reused by later ones.
    let nonces = std::sync::Mutex::new(Vec::<String>::new());
    let cases: u32 = std::env::var("HANGAR_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let mut statuses: BTreeMap<u16, u32> = BTreeMap::new();
    let seen = std::sync::Mutex::new(&mut statuses);
    runner
        .run(&request(ids.clone()), |r| {
            // A generated DELETE may have taken the app: bring it back, so
            // that most requests reach real machines.
            if agent.get_app("f").is_err() {
                let _ = agent.create_app("f", None, None);
            }
            let nonce = if r.nonce {
                nonces.lock().unwrap().last().cloned()
            } else {
                None
            };
            let (status, body) = call(&rt, &app, &r, nonce.as_deref());
            if let Some(n) = body["data"]["nonce"].as_str() {
                nonces.lock().unwrap().push(n.to_owned());
            }
            *seen.lock().unwrap().entry(status).or_default() += 1;
            prop_assert!(
                status < 500,
                "{} {} with {:?} -> {status}: {body}",
                r.method,
                r.path,
                r.body
            );
            if status >= 400 {
                prop_assert!(body["error"].is_string(), "error without a message: {body}");
                prop_assert_eq!(
                    &body["status"],
                    "unknown",
                    "error without Fly's status: {}",
                    body
                );
            }
            Ok(())
        })
        .unwrap();
    println!("statuses over {cases} requests: {statuses:?}");
    assert!(statuses.keys().any(|s| *s < 300), "nothing succeeded");
    assert!(statuses.keys().any(|s| *s >= 400), "nothing was refused");

    // Nothing lost: a fresh agent on the same database sees the same machines.
    let before: BTreeMap<String, (String, String)> = rt.block_on(async {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        agent.shutdown().await;
        agent
            .list_machines("f", true)
            .map(|ms| {
                ms.into_iter()
                    .map(|m| {
                        (
                            m.id.to_string(),
                            (m.core.state.as_str().to_string(), m.instance_id),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    });
    drop(app);
    let agent2 = open(&rt, dir.path(), fake);
    let after: BTreeMap<String, (String, String)> = agent2
        .list_machines("f", true)
        .map(|ms| {
            ms.into_iter()
                .map(|m| {
                    (
                        m.id.to_string(),
                        (m.core.state.as_str().to_string(), m.instance_id),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    for (id, (_, version)) in &before {
        assert_eq!(&after[id].1, version, "machine {id} lost its version");
    }
}
