//! The HTTP API through the real router and agent (SQLite included), with
//! the fake runtime and image source at the I/O edge: paths, status codes,
//! error bodies, headers, and the liberal inputs real clients send.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use hangar_agent::images::fake::FakeImages;
use hangar_agent::{Agent, AgentConfig};
use hangar_api::{ApiState, Auth, router};
use hangar_runtime::fake::FakeRuntime;
use serde_json::{Value, json};
use tower::ServiceExt;

const TOKEN: &str = "test-token";

struct Api {
    app: axum::Router,
    _dir: tempfile::TempDir,
}

async fn api() -> Api {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::open(
        AgentConfig {
            data_dir: dir.path().to_owned(),
            region: "local".into(),
        },
        Arc::new(FakeRuntime::new()),
        Arc::new(FakeImages),
    )
    .await
    .unwrap();
    let app = router(ApiState {
        agent,
        images: None,
        auth: Arc::new(Auth::new(TOKEN)),
    });
    Api { app, _dir: dir }
}

struct Resp {
    status: StatusCode,
    body: Value,
    request_id: Option<String>,
}

impl Api {
    async fn raw(&self, req: Request<Body>) -> Resp {
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let request_id = resp
            .headers()
            .get("fly-request-id")
            .map(|v| v.to_str().unwrap().to_owned());
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        Resp {
            status,
            body,
            request_id,
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {TOKEN}"));
        let body = match body {
            Some(v) => {
                b = b.header("content-type", "application/json");
                Body::from(serde_json::to_vec(&v).unwrap())
            }
            None => Body::empty(),
        };
        self.raw(b.body(body).unwrap()).await
    }

    async fn machine(&self, config: Value) -> Value {
        let r = self
            .call(
                "POST",
                "/v1/apps/web/machines",
                Some(json!({"config": config})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.body
    }

    async fn wait(&self, id: &str, state: &str) {
        let r = self
            .call(
                "GET",
                &format!("/v1/apps/web/machines/{id}/wait?state={state}&timeout=10"),
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
}

async fn with_app() -> Api {
    let a = api().await;
    let r = a
        .call(
            "POST",
            "/v1/apps",
            Some(json!({"app_name": "web", "org_slug": "personal"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    a
}

#[tokio::test]
async fn every_request_needs_a_token() {
    let a = api().await;
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Basic dGVzdA=="),
        Some(TOKEN),
    ] {
        let mut b = Request::builder().uri("/v1/apps?org_slug=personal");
        if let Some(h) = auth {
            b = b.header("authorization", h);
        }
        let r = a.raw(b.body(Body::empty()).unwrap()).await;
        assert_eq!(r.status, 401);
        assert!(
            r.body["error"]
                .as_str()
                .unwrap()
                .starts_with("Authenticate"),
            "{}",
            r.body
        );
        assert!(r.request_id.is_some());
    }
    // Unknown paths are 401 too without a token, 404 with one.
    let r = a
        .raw(
            Request::builder()
                .uri("/v1/nope")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 401);
    let r = a.call("GET", "/v1/nope", None).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body["error"], "not found");
    let b = Request::builder()
        .uri("/v1/apps?org_slug=personal")
        .header("authorization", format!("FlyV1 fm2_other,{TOKEN}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(a.raw(b).await.status, 200);
}

#[tokio::test]
async fn apps_crud() {
    let a = api().await;
    let r = a
        .call(
            "POST",
            "/v1/apps",
            Some(json!({"name": "my-app", "org_slug": "personal", "unknown": 1})),
        )
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.body["name"], "my-app");
    assert_eq!(r.body["organization"]["slug"], "personal");
    assert!(r.body["id"].as_str().is_some() && r.body["created_at"].as_str().is_some());
    assert_eq!(
        a.call("POST", "/v1/apps", Some(json!({"name": "my-app"})))
            .await
            .status,
        409
    );
    let r = a
        .call("POST", "/v1/apps", Some(json!({"name": "Bad Name"})))
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.body["error"]
            .as_str()
            .unwrap()
            .contains("invalid app name")
    );
    assert_eq!(
        a.call("POST", "/v1/apps", Some(json!({}))).await.status,
        400
    );
    let r = a.call("GET", "/v1/apps?org_slug=personal", None).await;
    assert_eq!(r.body["total_apps"], 1);
    assert_eq!(
        a.call("GET", "/v1/apps/my-app", None).await.body["status"],
        "pending"
    );
    assert_eq!(a.call("GET", "/v1/apps/nope", None).await.status, 404);
    assert_eq!(a.call("DELETE", "/v1/apps/my-app", None).await.status, 202);
    assert_eq!(a.call("GET", "/v1/apps/my-app", None).await.status, 404);
}

#[tokio::test]
async fn machine_lifecycle_over_http() {
    let a = with_app().await;
    let m = a
        .machine(json!({"image": "busybox", "metadata": {"role": "worker"}}))
        .await;
    let id = m["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 14);
    assert_eq!(m["state"], "created");
    assert_eq!(m["instance_id"].as_str().unwrap().len(), 26);
    assert_eq!(
        m["config"]["guest"],
        json!({"cpu_kind": "shared", "cpus": 1, "memory_mb": 256})
    );
    assert_eq!(m["host_status"], "ok");
    assert_eq!(m["events"][0]["type"], "launch");
    // Visible right away, and waitable.
    assert_eq!(
        a.call("GET", &format!("/v1/apps/web/machines/{id}"), None)
            .await
            .status,
        200
    );
    a.wait(&id, "started").await;

    // Stop with an empty JSON body and content type (as some clients send).
    let req = Request::builder()
        .method("POST")
        .uri(format!("/v1/apps/web/machines/{id}/stop"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(Body::empty())
        .unwrap();
    let r = a.raw(req).await;
    assert_eq!(
        (r.status, r.body.clone()),
        (StatusCode::OK, json!({"ok": true}))
    );
    a.wait(&id, "stopped").await;

    let r = a
        .call("POST", &format!("/v1/apps/web/machines/{id}/start"), None)
        .await;
    assert_eq!(
        r.body,
        json!({"previous_state": "stopped", "migrated": false, "new_host": ""})
    );
    a.wait(&id, "started").await;

    let r = a
        .call("GET", &format!("/v1/apps/web/machines/{id}/events"), None)
        .await;
    let kinds: Vec<&str> = r
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        vec!["start", "start", "exit", "stop", "start", "launch"]
    );
    let exit = &r.body[2];
    assert_eq!(exit["source"], "flyd");
    assert_eq!(exit["request"]["exit_event"]["requested_stop"], true);
    assert!(exit["timestamp"].as_i64().unwrap() > 1_700_000_000_000);

    // Filters.
    let list = |q: &str| {
        let a = &a;
        let q = q.to_owned();
        async move {
            a.call("GET", &format!("/v1/apps/web/machines{q}"), None)
                .await
                .body
        }
    };
    assert_eq!(list("").await.as_array().unwrap().len(), 1);
    assert_eq!(list("?state=stopped").await.as_array().unwrap().len(), 0);
    assert_eq!(
        list("?state=started,stopped&region=local")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        list("?metadata.role=worker")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        list("?metadata.role=web").await.as_array().unwrap().len(),
        0
    );
    let summary = list("?summary=true").await;
    assert!(summary[0].get("config").is_none() && summary[0].get("events").is_none());

    // Destroy: refused while running, then fly-go's kill=true.
    let r = a
        .call("DELETE", &format!("/v1/apps/web/machines/{id}"), None)
        .await;
    assert_eq!(r.status, 412);
    assert!(
        r.body["error"]
            .as_str()
            .unwrap()
            .starts_with("failed_precondition: unable to destroy machine")
    );
    let r = a
        .call(
            "DELETE",
            &format!("/v1/apps/web/machines/{id}?kill=true"),
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    a.wait(&id, "destroyed").await;
    a.wait(&id, "destroyed").await;
    assert_eq!(list("").await.as_array().unwrap().len(), 0);
    assert_eq!(list("?include_deleted=true").await[0]["state"], "destroyed");
}

#[tokio::test]
async fn config_roundtrips_losslessly() {
    let a = with_app().await;
    let config = json!({
        "image": "busybox",
        "env": {"A": "1"},
        "init": {"cmd": ["sleep", "1000"]},
        "guest": {"cpu_kind": "performance", "cpus": 2, "memory_mb": 4096},
        "restart": {"policy": "always"},
        "stop_config": {"signal": "SIGTERM", "timeout": "10s"},
        "services": [{"protocol": "tcp", "internal_port": 8080, "ports": [{"port": 80, "handlers": ["http"]}],
                      "autostop": "suspend", "concurrency": {"type": "requests", "soft_limit": 20}}],
        "checks": {"alive": {"type": "tcp", "port": 8080, "interval": "15s"}},
        "mounts": [],
        "dns": {"skip_registration": true},
        "a_field_from_the_future": {"x": [1, 2, 3]}
    });
    let m = a.machine(config.clone()).await;
    let id = m["id"].as_str().unwrap();
    let got = a
        .call("GET", &format!("/v1/apps/web/machines/{id}"), None)
        .await
        .body["config"]
        .clone();
    assert_eq!(got, config);
}

#[tokio::test]
async fn bad_input_gets_clear_4xx() {
    let a = with_app().await;
    let cases: Vec<(&str, &str, Option<Value>, u16, &str)> = vec![
        (
            "POST",
            "/v1/apps/web/machines",
            Some(json!({})),
            400,
            "config is required",
        ),
        (
            "POST",
            "/v1/apps/web/machines",
            Some(json!({"config": {}})),
            400,
            "config.image is required",
        ),
        (
            "POST",
            "/v1/apps/web/machines",
            Some(json!({"config": {"image": "Not Valid"}})),
            400,
            "invalid image reference",
        ),
        (
            "POST",
            "/v1/apps/web/machines",
            Some(json!({"config": {"image": "x", "guest": {"cpus": -1}}})),
            400,
            "guest.cpus",
        ),
        (
            "POST",
            "/v1/apps/web/machines",
            Some(json!({"config": {"image": "x"}, "region": "syd"})),
            422,
            "Region 'syd'",
        ),
        (
            "POST",
            "/v1/apps/web/machines",
            Some(json!({"config": {"image": "x"}, "name": "a/b"})),
            400,
            "invalid machine name",
        ),
        (
            "POST",
            "/v1/apps/web/machines",
            Some(json!({"config": {"image": "x", "env": {"A": {"b": 1}}}})),
            400,
            "invalid JSON",
        ),
        (
            "POST",
            "/v1/apps/nope/machines",
            Some(json!({"config": {"image": "x"}})),
            404,
            "app nope not found",
        ),
        (
            "GET",
            "/v1/apps/web/machines/00000000000000",
            None,
            404,
            "machine 00000000000000 not found",
        ),
        (
            "GET",
            "/v1/apps/web/machines?include_deleted=maybe",
            None,
            400,
            "include_deleted",
        ),
        ("DELETE", "/v1/apps/web", None, 202, ""),
    ];
    for (method, path, body, status, msg) in cases {
        let r = a.call(method, path, body.clone()).await;
        assert_eq!(
            r.status.as_u16(),
            status,
            "{method} {path} {body:?}: {}",
            r.body
        );
        if status >= 400 {
            let e = r.body["error"].as_str().unwrap_or_default();
            assert!(e.contains(msg), "{method} {path}: {e:?} lacks {msg:?}");
        }
    }
    // Malformed JSON.
    let req = Request::builder()
        .method("POST")
        .uri("/v1/apps")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::from("{not json"))
        .unwrap();
    let r = a.raw(req).await;
    assert_eq!(r.status, 400);
    assert!(
        r.body["error"]
            .as_str()
            .unwrap()
            .starts_with("invalid JSON body")
    );
}

#[tokio::test]
async fn stop_and_wait_parameters() {
    let a = with_app().await;
    let m = a.machine(json!({"image": "busybox"})).await;
    let id = m["id"].as_str().unwrap();
    a.wait(id, "started").await;
    for (body, want) in [
        (json!({"signal": "SIGNOPE"}), "invalid signal"),
        (json!({"timeout": "forever"}), "invalid timeout"),
        (json!({"timeout": "10m"}), "longer than the maximum"),
    ] {
        let r = a
            .call(
                "POST",
                &format!("/v1/apps/web/machines/{id}/stop"),
                Some(body),
            )
            .await;
        assert_eq!(r.status, 400);
        assert!(
            r.body["error"].as_str().unwrap().contains(want),
            "{}",
            r.body
        );
    }
    for q in ["timeout=0", "timeout=61", "state=sleeping", "version=nope"] {
        let r = a
            .call("GET", &format!("/v1/apps/web/machines/{id}/wait?{q}"), None)
            .await;
        assert_eq!(r.status, 400, "{q}: {}", r.body);
        assert!(
            r.body["error"]
                .as_str()
                .unwrap()
                .starts_with("invalid_argument"),
            "{q}"
        );
    }
    let r = a
        .call(
            "GET",
            &format!("/v1/apps/web/machines/{id}/wait?state=stopped&timeout=1"),
            None,
        )
        .await;
    assert_eq!(r.status, 408);
    assert_eq!(
        r.body["error"],
        "deadline_exceeded: machine failed to reach desired state, stopped, currently started"
    );
    // fly-go's integer signal and nanosecond timeout.
    let r = a
        .call(
            "POST",
            &format!("/v1/apps/web/machines/{id}/stop"),
            Some(json!({"signal": 15, "timeout": 1_000_000_000u64, "id": id})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = a
        .call(
            "GET",
            &format!("/v1/apps/web/machines/{id}/wait?state=stopped&state=destroyed&timeout=5"),
            None,
        )
        .await;
    assert_eq!(r.body["state"], "stopped");
    assert_eq!(r.body["version"], m["instance_id"]);
    assert!(r.body["event_id"].as_str().is_some());
}
