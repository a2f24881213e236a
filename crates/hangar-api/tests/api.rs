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
    rt: Arc<FakeRuntime>,
    agent: Agent,
    _dir: tempfile::TempDir,
}

async fn api() -> Api {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(FakeRuntime::new());
    let agent = Agent::open(
        AgentConfig::new(dir.path()),
        rt.clone(),
        Arc::new(FakeImages),
    )
    .await
    .unwrap();
    let app = router(ApiState::bare(agent.clone(), TOKEN));
    Api {
        app,
        rt,
        agent,
        _dir: dir,
    }
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
        self.call_with(method, path, body, &[]).await
    }

    async fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {TOKEN}"));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
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
    assert!(r.body["id"].as_str().is_some() && r.body["created_at"].as_i64().is_some());
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
            Some(json!({"config": {"image": "x", "metadata": {"hangar_runtime": "docker"}}})),
            400,
            "metadata.hangar_runtime",
        ),
        (
            "POST",
            "/v1/apps/web/machines",
            Some(json!({"config": {"image": "x", "metadata": {"hangar_runtime": "microvm"}}})),
            412,
            "microvm",
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

#[tokio::test]
async fn update_versions_and_replaced() {
    let a = with_app().await;
    let m = a
        .machine(json!({"image": "busybox", "env": {"V": "1"}}))
        .await;
    let id = m["id"].as_str().unwrap();
    let v1 = m["instance_id"].as_str().unwrap().to_owned();
    a.wait(id, "started").await;
    let r = a.call("POST", &format!("/v1/apps/web/machines/{id}"), Some(json!({"config": {"image": "busybox", "env": {"V": "2"}}, "current_version": "01ARZ3NDEKTSV4RRFFQ69G5FAV"}))).await;
    assert_eq!(r.status, 412, "{}", r.body);
    let r = a
        .call(
            "POST",
            &format!("/v1/apps/web/machines/{id}"),
            Some(json!({"config": {"image": "busybox", "env": {"V": "2"}}, "current_version": v1})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v2 = r.body["instance_id"].as_str().unwrap().to_owned();
    assert_ne!(v1, v2);
    assert_eq!(r.body["config"]["env"]["V"], "2");
    a.wait(id, "started").await;
    let r = a
        .call("GET", &format!("/v1/apps/web/machines/{id}/versions"), None)
        .await;
    let versions: Vec<&str> = r
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, vec![v2.as_str(), v1.as_str()]);
    assert_eq!(r.body[1]["user_config"]["env"]["V"], "1");
    let r = a
        .call(
            "GET",
            &format!("/v1/apps/web/machines/{id}/wait?version={v1}&state=stopped"),
            None,
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.body["state"].as_str()),
        (200, Some("replaced")),
        "{}",
        r.body
    );
    let r = a
        .call(
            "POST",
            &format!("/v1/apps/web/machines/{id}"),
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn restart_signal_suspend_cordon() {
    let a = with_app().await;
    let m = a.machine(json!({"image": "busybox"})).await;
    let id = m["id"].as_str().unwrap();
    a.wait(id, "started").await;
    let r = a
        .call(
            "POST",
            &format!("/v1/apps/web/machines/{id}/restart?signal=SIGTERM&timeout=10s"),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    a.wait(id, "started").await;
    let r = a
        .call(
            "POST",
            &format!("/v1/apps/web/machines/{id}/signal"),
            Some(json!({"signal": "SIGNOPE"})),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = a
        .call("POST", &format!("/v1/apps/web/machines/{id}/suspend"), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    a.wait(id, "suspended").await;
    let r = a
        .call(
            "POST",
            &format!("/v1/apps/web/machines/{id}/signal"),
            Some(json!({"signal": 10})),
        )
        .await;
    assert_eq!(r.status, 412, "{}", r.body);
    let r = a
        .call("POST", &format!("/v1/apps/web/machines/{id}/start"), None)
        .await;
    assert_eq!(r.body["previous_state"], "suspended");
    a.wait(id, "started").await;
    assert_eq!(
        a.call("POST", &format!("/v1/apps/web/machines/{id}/cordon"), None)
            .await
            .status,
        200
    );
    assert_eq!(
        a.call("GET", &format!("/v1/apps/web/machines/{id}"), None)
            .await
            .body["cordoned"],
        true
    );
    assert_eq!(
        a.call(
            "POST",
            &format!("/v1/apps/web/machines/{id}/uncordon"),
            None
        )
        .await
        .status,
        200
    );
    assert!(
        a.call("GET", &format!("/v1/apps/web/machines/{id}"), None)
            .await
            .body
            .get("cordoned")
            .is_none()
    );
}

#[tokio::test]
async fn leases_with_fly_envelopes() {
    let a = with_app().await;
    let m = a.machine(json!({"image": "busybox"})).await;
    let id = m["id"].as_str().unwrap();
    a.wait(id, "started").await;
    let lease_url = format!("/v1/apps/web/machines/{id}/lease");
    assert_eq!(a.call("GET", &lease_url, None).await.status, 404);
    // fly-go: no body, ?ttl=
    let r = a.call("POST", &format!("{lease_url}?ttl=30"), None).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["status"], "success");
    let nonce = r.body["data"]["nonce"].as_str().unwrap().to_owned();
    assert_eq!(r.body["data"]["version"], m["instance_id"]);
    assert!(r.body["data"]["expires_at"].as_i64().unwrap() > 1_700_000_000);
    let r = a.call("GET", &lease_url, None).await;
    assert_eq!(r.body["data"]["nonce"], nonce.as_str());
    assert_eq!(
        a.call("POST", &lease_url, Some(json!({"ttl": 10})))
            .await
            .status,
        409
    );
    let stop = format!("/v1/apps/web/machines/{id}/stop");
    let r = a.call("POST", &stop, None).await;
    assert_eq!(r.status, 409);
    assert!(
        r.body["error"]
            .as_str()
            .unwrap()
            .contains("fly-machine-lease-nonce")
    );
    let r = a
        .call_with(
            "POST",
            &lease_url,
            Some(json!({"ttl": 60})),
            &[("fly-machine-lease-nonce", &nonce)],
        )
        .await;
    assert_eq!(r.status, 200, "refresh: {}", r.body);
    assert_eq!(
        a.call_with("POST", &stop, None, &[("fly-machine-lease-nonce", &nonce)])
            .await
            .status,
        200
    );
    assert_eq!(a.call("DELETE", &lease_url, None).await.status, 400);
    let r = a
        .call_with(
            "DELETE",
            &lease_url,
            None,
            &[("fly-machine-lease-nonce", &nonce)],
        )
        .await;
    assert_eq!(r.body, json!({"status": "success", "data": {"ok": true}}));
    assert_eq!(a.call("GET", &lease_url, None).await.status, 404);

    // Created already leased.
    let r = a
        .call(
            "POST",
            "/v1/apps/web/machines",
            Some(json!({"config": {"image": "busybox"}, "lease_ttl": 30})),
        )
        .await;
    let nonce = r.body["nonce"].as_str().unwrap();
    let id2 = r.body["id"].as_str().unwrap();
    assert_eq!(
        a.call("GET", &format!("/v1/apps/web/machines/{id2}/lease"), None)
            .await
            .status,
        200
    );
    // A forced destroy works on a leased machine.
    a.wait(id2, "started").await;
    assert_eq!(
        a.call("DELETE", &format!("/v1/apps/web/machines/{id2}"), None)
            .await
            .status,
        409
    );
    assert_eq!(
        a.call(
            "DELETE",
            &format!("/v1/apps/web/machines/{id2}?force=true"),
            None
        )
        .await
        .status,
        200
    );
    let _ = nonce;
}

#[tokio::test]
async fn metadata_endpoints() {
    let a = with_app().await;
    let m = a
        .machine(json!({"image": "busybox", "metadata": {"keep": "yes"}}))
        .await;
    let id = m["id"].as_str().unwrap();
    let md = format!("/v1/apps/web/machines/{id}/metadata");
    let r = a
        .call(
            "PUT",
            &md,
            Some(json!({"metadata": {"role": "web", "keep": null}})),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(a.call("GET", &md, None).await.body, json!({"role": "web"}));
    let r = a
        .call(
            "PATCH",
            &md,
            Some(json!({"metadata": {"tier": "1"}, "machine_version": m["instance_id"]})),
        )
        .await;
    assert_eq!(r.status, 204);
    let r = a
        .call(
            "PATCH",
            &md,
            Some(
                json!({"metadata": {"tier": "2"}, "machine_version": "01ARZ3NDEKTSV4RRFFQ69G5FAV"}),
            ),
        )
        .await;
    assert_eq!(r.status, 412);
    assert_eq!(
        a.call("GET", &format!("{md}/tier"), None).await.body,
        json!({"value": "1"})
    );
    assert_eq!(
        a.call("POST", &format!("{md}/tier"), Some(json!({"value": "3"})))
            .await
            .status,
        204
    );
    assert_eq!(
        a.call("GET", &format!("{md}/tier"), None).await.body["value"],
        "3"
    );
    assert_eq!(
        a.call("DELETE", &format!("{md}/tier"), None).await.status,
        204
    );
    assert_eq!(a.call("GET", &format!("{md}/tier"), None).await.status, 404);
    // Metadata changes make no new version.
    assert_eq!(
        a.call("GET", &format!("/v1/apps/web/machines/{id}"), None)
            .await
            .body["instance_id"],
        m["instance_id"]
    );
}

#[tokio::test]
async fn exec_over_http() {
    let a = with_app().await;
    let m = a.machine(json!({"image": "busybox"})).await;
    let id = m["id"].as_str().unwrap();
    let exec = format!("/v1/apps/web/machines/{id}/exec");
    a.wait(id, "started").await;
    let r = a
        .call("POST", &exec, Some(json!({"command": ["echo", "hi"]})))
        .await;
    assert_eq!(
        r.body,
        json!({"exit_code": 0, "exit_signal": 0, "stdout": "hi\n", "stderr": ""})
    );
    let r = a
        .call("POST", &exec, Some(json!({"cmd": "echo 'two words'"})))
        .await;
    assert_eq!(r.body["stdout"], "two words\n");
    assert_eq!(a.call("POST", &exec, Some(json!({}))).await.status, 400);
    assert_eq!(
        a.call("POST", &exec, Some(json!({"command": ["x"], "timeout": 0})))
            .await
            .status,
        400
    );
    a.call("POST", &format!("/v1/apps/web/machines/{id}/stop"), None)
        .await;
    a.wait(id, "stopped").await;
    assert_eq!(
        a.call("POST", &exec, Some(json!({"command": ["echo"]})))
            .await
            .status,
        412
    );
}

#[tokio::test]
async fn terminal_over_websocket() {
    use hangar_client::{Client, TtyEvent, TtyOptions};
    let a = with_app().await;
    let m = a.machine(json!({"image": "busybox"})).await;
    let id = m["id"].as_str().unwrap().to_owned();
    a.wait(&id, "started").await;
    // A real listener: WebSockets need a connection to upgrade.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, a.app.clone()).into_future());
    let c = Client::new(&url, TOKEN);
    let opts = TtyOptions {
        argv: vec!["sh".into()],
        rows: 24,
        cols: 80,
        term: Some("xterm".into()),
    };
    let (mut input, mut output) = c.exec_tty("web", &id, &opts).await.unwrap().split();
    let mut seen = Vec::new();
    let mut next = async || match output.next().await {
        Some(Ok(TtyEvent::Output(b))) => String::from_utf8(b).unwrap(),
        Some(Ok(TtyEvent::Exit(code))) => format!("exit {code}"),
        other => panic!("{other:?}"),
    };
    seen.push(next().await);
    input.send(b"hi").await.unwrap();
    seen.push(next().await);
    input.resize(40, 100).await.unwrap();
    seen.push(next().await);
    input.send(b"\x04").await.unwrap();
    seen.push(next().await);
    assert_eq!(seen, ["80x24$ ", "hi", "[100x40]", "exit 0"]);

    // Errors are Fly-shaped HTTP answers: no token, bad sizes, a plain GET,
    // a stopped machine.
    let bad = Client::new(&url, "wrong");
    assert_eq!(
        bad.exec_tty("web", &id, &opts)
            .await
            .err()
            .unwrap()
            .status(),
        Some(401)
    );
    let tty = format!("/v1/hangar/apps/web/machines/{id}/exec/tty");
    let r = a.call("GET", &tty, None).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body["error"].as_str().unwrap().contains("WebSocket"));
    let huge = TtyOptions {
        rows: 0,
        ..opts.clone()
    };
    let err = c.exec_tty("web", &id, &huge).await.err().unwrap();
    assert_eq!(err.status(), Some(400), "{err}");
    a.call("POST", &format!("/v1/apps/web/machines/{id}/stop"), None)
        .await;
    a.wait(&id, "stopped").await;
    let err = c.exec_tty("web", &id, &opts).await.err().unwrap();
    assert_eq!(err.status(), Some(412), "{err}");
}

#[tokio::test]
async fn platform_org_and_tokens() {
    let a = with_app().await;
    a.machine(json!({"image": "busybox"})).await;
    a.machine(json!({"image": "busybox"})).await;
    let r = a
        .call("GET", "/v1/orgs/personal/machines?limit=1", None)
        .await;
    assert_eq!(r.body["machines"].as_array().unwrap().len(), 1);
    assert_eq!(r.body["machines"][0]["app_name"], "web");
    let cursor = r.body["next_cursor"].as_str().unwrap().to_owned();
    let r = a
        .call(
            "GET",
            &format!("/v1/orgs/personal/machines?limit=5&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(r.body["machines"].as_array().unwrap().len(), 1);
    assert!(r.body.get("next_cursor").is_none());
    assert_eq!(
        a.call(
            "GET",
            "/v1/orgs/personal/machines?updated_after=yesterday",
            None
        )
        .await
        .status,
        400
    );
    let r = a.call("GET", "/v1/platform/regions", None).await;
    assert_eq!(r.body["nearest"], "local");
    assert_eq!(r.body["regions"][0]["code"], "local");
    let r = a.call("GET", "/v1/tokens/current", None).await;
    assert_eq!(r.body["tokens"][0]["org_slug"], "personal");

    // A deploy token acts on its app only.
    let r = a
        .call(
            "POST",
            "/v1/apps/web/deploy_token",
            Some(json!({"expiry": "24h"})),
        )
        .await;
    let token = r.body["token"].as_str().unwrap().to_owned();
    a.call("POST", "/v1/apps", Some(json!({"name": "other"})))
        .await;
    let with = |method: &str, path: &str| {
        Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(
        a.raw(with("GET", "/v1/apps/web/machines")).await.status,
        200
    );
    let r = a.raw(with("GET", "/v1/apps/other/machines")).await;
    assert_eq!(r.status, 403);
    assert!(r.body["error"].as_str().unwrap().contains("app web only"));
    assert_eq!(
        a.raw(with("GET", "/v1/apps?org_slug=personal"))
            .await
            .status,
        403
    );
    let r = a.raw(with("GET", "/v1/tokens/current")).await;
    assert_eq!(r.body["tokens"][0]["apps"], json!(["web"]));
    // Secrets: its own app's names and digests, never values, never
    // another app's.
    a.call(
        "POST",
        "/v1/apps/web/secrets",
        Some(json!({"values": {"PASSWORD": "pw-web"}})),
    )
    .await;
    a.call(
        "POST",
        "/v1/apps/other/secrets",
        Some(json!({"values": {"PASSWORD": "pw-other"}})),
    )
    .await;
    let r = a.raw(with("GET", "/v1/apps/web/secrets")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["secrets"][0]["name"], "PASSWORD");
    assert!(!r.body.to_string().contains("pw-web"));
    let r = a
        .raw(with("GET", "/v1/apps/web/secrets?show_secrets=true"))
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(
        a.raw(with("GET", "/v1/apps/other/secrets")).await.status,
        403
    );
    assert_eq!(
        a.raw(with("GET", "/v1/apps/other/secrets/PASSWORD"))
            .await
            .status,
        403
    );
    assert_eq!(
        a.call(
            "POST",
            "/v1/apps/web/deploy_token",
            Some(json!({"expiry": "soon"}))
        )
        .await
        .status,
        400
    );
}

impl Api {
    /// `method path` with `token`, an empty JSON object as the body.
    async fn as_token(&self, token: &str, method: &str, path: &str) -> Resp {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Body::from("{}"))
            .unwrap();
        self.raw(req).await
    }

    async fn mint(&self, app: &str, token: Option<&str>, expiry: Option<&str>) -> String {
        let body = match expiry {
            Some(e) => json!({ "expiry": e }),
            None => json!({}),
        };
        let path = format!("/v1/apps/{app}/deploy_token");
        let r = match token {
            Some(t) => {
                let req = Request::builder()
                    .method("POST")
                    .uri(&path)
                    .header("authorization", format!("Bearer {t}"))
                    .header("content-type", "application/json")
                    .body(Body::from(body.to_string()))
                    .unwrap();
                self.raw(req).await
            }
            None => self.call("POST", &path, Some(body)).await,
        };
        assert_eq!(r.status, 200, "{}", r.body);
        r.body["token"].as_str().unwrap().to_owned()
    }
}

/// Every operation of the API document, with its path filled in for app
/// `web`, plus the document itself.
fn every_route() -> Vec<(String, String)> {
    let doc: Value = serde_json::from_str(&hangar_api::openapi::document()).unwrap();
    let mut out = vec![("GET".to_owned(), "/openapi.json".to_owned())];
    for (path, ops) in doc["paths"].as_object().unwrap() {
        let filled = path
            .replace("{app_name}", "web")
            .replace("{machine_id}", "0123456789abcd")
            .replace("{org_slug}", "personal")
            .replace("{org}", "personal")
            .replace(['{', '}'], "");
        for method in ops.as_object().unwrap().keys() {
            out.push((method.to_uppercase(), filled.clone()));
        }
    }
    assert!(out.len() > 60, "{} routes", out.len());
    out
}

/// What an app token may reach outside its app's paths.
fn platform_route(path: &str) -> bool {
    path == "/v1/tokens/current" || path == "/v1/platform/regions"
}

/// Another app's token gets 403 on every route of app `web` and on every
/// installation-wide route; a revoked token, an expired token (also one an
/// expiring token minted), and the token of a deleted app (whose name was
/// taken again) get 401 everywhere.
#[tokio::test]
async fn token_scope_holds_on_every_route() {
    let a = with_app().await;
    for app in ["other", "gone"] {
        a.call("POST", "/v1/apps", Some(json!({ "name": app })))
            .await;
    }
    let other = a.mint("other", None, None).await;
    let revoked = a.mint("web", None, None).await;
    let r = a.call("GET", "/v1/hangar/apps/web/tokens", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let id = r.body[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        a.call("DELETE", &format!("/v1/hangar/apps/web/tokens/{id}"), None)
            .await
            .status,
        200
    );
    let expiring = a.mint("web", None, Some("1s")).await;
    // A token asking for a year, minted by one that expires in a second.
    let minted = a.mint("web", Some(&expiring), Some("8760h")).await;
    let gone = a.mint("gone", None, None).await;
    assert_eq!(
        a.call("DELETE", "/v1/apps/gone", None).await.status,
        StatusCode::ACCEPTED
    );
    a.call("POST", "/v1/apps", Some(json!({ "name": "gone" })))
        .await;

    // Both time-limited tokens work until the first expires, then neither.
    assert_eq!(a.as_token(&minted, "GET", "/v1/apps/web").await.status, 200);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while a.as_token(&expiring, "GET", "/v1/apps/web").await.status != 401 {
        assert!(std::time::Instant::now() < until, "the token never expired");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    for (method, path) in every_route() {
        let r = a.as_token(&other, &method, &path).await;
        if platform_route(&path) {
            assert_eq!(
                r.status, 200,
                "other app's token: {method} {path}: {}",
                r.body
            );
        } else {
            assert_eq!(
                r.status, 403,
                "other app's token: {method} {path}: {}",
                r.body
            );
            assert!(r.body["error"].is_string(), "{method} {path}");
        }
        for (what, token) in [
            ("revoked", &revoked),
            ("expired", &expiring),
            ("minted by an expired", &minted),
            ("deleted app's", &gone),
        ] {
            let r = a.as_token(token, &method, &path).await;
            assert_eq!(r.status, 401, "{what} token: {method} {path}: {}", r.body);
        }
    }
}

/// Bad ports, an impossible registry port, more memory than the host has
/// and an oversized body are refused with what was wrong, never accepted.
#[tokio::test]
async fn impossible_configs_and_huge_bodies_are_refused() {
    let a = with_app().await;
    for (config, status, want) in [
        (
            json!({"image": "busybox", "services": [{"internal_port": 99999999}]}),
            400,
            "config.services[0].internal_port",
        ),
        (
            json!({"image": "busybox", "services": [{"internal_port": 80, "ports": [{"port": 65536}]}]}),
            400,
            "ports[0].port",
        ),
        (
            json!({"image": "127.0.0.1:99999/app:v1"}),
            400,
            "not a TCP port",
        ),
        (
            json!({"image": "busybox", "guest": {"cpus": 1, "memory_mb": 1 << 20}}),
            422,
            "more than this host has",
        ),
    ] {
        let r = a
            .call(
                "POST",
                "/v1/apps/web/machines",
                Some(json!({ "config": config })),
            )
            .await;
        assert_eq!(r.status, status, "{config}: {}", r.body);
        assert!(
            r.body["error"].as_str().unwrap().contains(want),
            "{config}: {}",
            r.body
        );
        if status == 422 {
            assert_eq!(r.body["status"], "insufficient_capacity");
        }
    }
    let big = vec![b' '; 100 << 20];
    let req = Request::builder()
        .method("POST")
        .uri("/v1/apps/web/machines")
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(Body::from(big))
        .unwrap();
    let r = a.raw(req).await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.body["error"].is_string());
    let r = a.call("GET", "/v1/apps/web/machines", None).await;
    assert_eq!(r.body, json!([]));
}

/// What third-party Fly clients tripped over: `POST /v1/apps` answers
/// `created_at` as integer milliseconds (a Rust client failed to decode the
/// string), and `services[].autostop` comes back in the form it was sent.
#[tokio::test]
async fn created_at_is_milliseconds_and_autostop_keeps_its_form() {
    let a = api().await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let r = a
        .call(
            "POST",
            "/v1/apps",
            Some(json!({"name": "web", "org_slug": "personal"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let at = r.body["created_at"]
        .as_i64()
        .expect("created_at is an integer");
    assert!(
        at >= before - 1000 && at <= before + 60_000,
        "{at} vs {before}"
    );
    let r = a.call("GET", "/v1/apps/web", None).await;
    assert!(r.body["created_at"].is_i64(), "{}", r.body);
    let services = json!([
        {"protocol": "tcp", "internal_port": 80, "autostop": "stop"},
        {"protocol": "tcp", "internal_port": 81, "autostop": "off"},
        {"protocol": "tcp", "internal_port": 82, "autostop": true},
        {"protocol": "tcp", "internal_port": 83, "autostop": false},
        {"protocol": "tcp", "internal_port": 84, "autostop": "suspend"},
    ]);
    let m = a
        .machine(json!({"image": "busybox", "services": services}))
        .await;
    assert_eq!(m["config"]["services"], services);
    let id = m["id"].as_str().unwrap();
    let got = a
        .call("GET", &format!("/v1/apps/web/machines/{id}"), None)
        .await;
    assert_eq!(got.body["config"]["services"], services);
}

/// A destroy is answered once the machine is destroyed: a listing right
/// after does not show it, and the app can be deleted at once (clients did
/// both and got the machine back, then a 412).
#[tokio::test]
async fn a_destroy_answers_once_the_machine_is_gone() {
    let a = with_app().await;
    a.rt.set_destroy_delay(std::time::Duration::from_millis(300));
    let m = a.machine(json!({"image": "busybox"})).await;
    let id = m["id"].as_str().unwrap();
    a.wait(id, "started").await;
    let r = a
        .call(
            "DELETE",
            &format!("/v1/apps/web/machines/{id}?force=true"),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = a.call("GET", "/v1/apps/web/machines", None).await;
    assert_eq!(r.body, json!([]));
    let r = a
        .call("GET", &format!("/v1/apps/web/machines/{id}"), None)
        .await;
    assert_eq!(r.body["state"], "destroyed");
    // And an app whose last machine is still being torn down can go.
    let m = a.machine(json!({"image": "busybox"})).await;
    let id = m["id"].as_str().unwrap().to_owned();
    a.wait(&id, "started").await;
    a.rt.set_destroy_delay(std::time::Duration::from_secs(2));
    let app = a.app.clone();
    let destroying = tokio::spawn(async move {
        let req = Request::builder()
            .method("DELETE")
            .uri(format!("/v1/apps/web/machines/{id}?kill=true"))
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Body::empty())
            .unwrap();
        app.oneshot(req).await.unwrap().status()
    });
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let r = a.call("GET", "/v1/apps/web/machines", None).await;
        if r.body[0]["state"] == "destroying" {
            break;
        }
        assert!(std::time::Instant::now() < until, "{}", r.body);
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    a.rt.set_destroy_delay(std::time::Duration::ZERO);
    destroying.abort();
    let r = a.call("DELETE", "/v1/apps/web", None).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
}

/// `GET /metrics`: the admin token reads machines by state, the machine
/// operations it asked for, and a running machine's cgroup figures in
/// Prometheus' format; an app's token and no token are refused.
#[tokio::test]
async fn metrics_count_machines_and_operations_for_the_admin_only() {
    let a = with_app().await;
    let m = a.machine(json!({"image": "img"})).await;
    let id = m["id"].as_str().unwrap().to_owned();
    a.wait(&id, "started").await;
    let other = a.machine(json!({"image": "img"})).await;
    let other = other["id"].as_str().unwrap().to_owned();
    a.wait(&other, "started").await;
    let r = a
        .call("POST", &format!("/v1/apps/web/machines/{other}/stop"), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    a.wait(&other, "stopped").await;

    let resp = a
        .app
        .clone()
        .oneshot(
            Request::builder()
                .uri("/metrics")
                .header("authorization", format!("Bearer {TOKEN}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text"),
    );
    let text = String::from_utf8(
        axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    for line in [
        "hangar_machines{app=\"web\",state=\"started\"} 1".to_owned(),
        "hangar_machines{app=\"web\",state=\"stopped\"} 1".to_owned(),
        format!("hangar_machine_cpu_seconds_total{{app=\"web\",machine=\"{id}\"}} 1"),
        format!("hangar_machine_memory_bytes{{app=\"web\",machine=\"{id}\"}} 10485760"),
        format!("hangar_machine_network_receive_bytes_total{{app=\"web\",machine=\"{id}\"}} 2048"),
        format!("hangar_machine_network_transmit_bytes_total{{app=\"web\",machine=\"{id}\"}} 1024"),
    ] {
        assert!(text.contains(&line), "no {line:?} in\n{text}");
    }
    // Counted process-wide (other tests in this binary add to them).
    for family in [
        "hangar_machine_operations_total{op=\"create\",outcome=\"ok\"} ",
        "hangar_machine_operations_total{op=\"stop\",outcome=\"ok\"} ",
        "hangar_machine_operation_duration_seconds_count{op=\"create\"} ",
        "hangar_machine_start_duration_seconds_count ",
        "hangar_machine_stop_duration_seconds_count ",
        "hangar_database_duration_seconds_count{db=\"sqlite\",op=\"read\"} ",
        "hangar_database_duration_seconds_count{db=\"sqlite\",op=\"write\"} ",
        "hangar_database_duration_seconds_count{db=\"sqlite\",op=\"lock_wait\"} ",
        "hangar_build_info{version=\"",
    ] {
        assert!(text.contains(family), "no {family:?} in\n{text}");
    }
    assert!(
        !text.contains(&format!("machine=\"{other}\"")),
        "a stopped machine has no cgroup figures"
    );
    let token = a.mint("web", None, None).await;
    assert_eq!(a.as_token(&token, "GET", "/metrics").await.status, 403);
    let r = a
        .raw(
            Request::builder()
                .uri("/metrics")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 401);
}

/// The dashboard: the page loads without a token; `?token=` with a good
/// token sets an HttpOnly, SameSite=Strict cookie and redirects to a URL
/// without it (a bad one to the login form, without a cookie); the cookie
/// then stands for the token on the API (its scope kept), but changes
/// need the dashboard's header; the watch stream says when state changes.
#[tokio::test]
async fn the_dashboard_logs_in_with_a_cookie_that_keeps_the_tokens_scope() {
    let a = with_app().await;
    let get = |uri: &str, cookie: Option<&str>| {
        let mut b = Request::builder().uri(uri);
        if let Some(c) = cookie {
            b = b.header("cookie", c);
        }
        a.app.clone().oneshot(b.body(Body::empty()).unwrap())
    };
    let page = get("/ui/", None).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    let body = axum::body::to_bytes(page.into_body(), usize::MAX)
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&body).contains("/ui/app.js"));
    assert_eq!(get("/ui/app.js", None).await.unwrap().status(), 200);

    let bad = get("/ui/?token=nope", None).await.unwrap();
    assert_eq!(bad.status(), 303);
    assert_eq!(bad.headers()["location"], "/ui/#/login?failed=1");
    assert!(bad.headers().get("set-cookie").is_none());
    let good = get(&format!("/ui/?token={TOKEN}"), None).await.unwrap();
    assert_eq!(good.status(), 303);
    assert_eq!(good.headers()["location"], "/ui/");
    let cookie = good.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_owned();

    // The cookie is taken only with the dashboard's header (an app served
    // on the same host is the same site; a WebSocket cannot send it).
    let read = |ui: bool| {
        let mut b = Request::builder()
            .uri("/v1/apps/web")
            .header("cookie", &session);
        if ui {
            b = b.header("x-hangar-ui", "1");
        }
        b.body(Body::empty()).unwrap()
    };
    assert_eq!(a.raw(read(false)).await.status, 403);
    let r = a.raw(read(true)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let tty = a
        .raw(
            Request::builder()
                .uri("/v1/hangar/apps/web/machines/0123456789abcd/exec/tty")
                .header("cookie", &session)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(tty.status, 403);
    let create = |ui: bool| {
        let mut b = Request::builder()
            .method("POST")
            .uri("/v1/apps")
            .header("cookie", &session)
            .header("content-type", "application/json");
        if ui {
            b = b.header("x-hangar-ui", "1");
        }
        b.body(Body::from(r#"{"app_name": "made-in-ui"}"#)).unwrap()
    };
    let r = a.raw(create(false)).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body["error"].as_str().unwrap().contains("x-hangar-ui"));
    assert_eq!(a.raw(create(true)).await.status, StatusCode::CREATED);

    // An app token's session stays within its app.
    let token = a.mint("web", None, None).await;
    let app_cookie = format!("hangar_session={token}");
    let r = a
        .raw(
            Request::builder()
                .uri("/v1/apps/made-in-ui")
                .header("cookie", &app_cookie)
                .header("x-hangar-ui", "1")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 403);
    // A forged cookie is no session.
    let r = a
        .raw(
            Request::builder()
                .uri("/v1/apps/web")
                .header("cookie", "hangar_session=forged")
                .header("x-hangar-ui", "1")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 401);

    // The watch stream: a change event at once, another after a change.
    let resp = get("/v1/hangar/apps/web/watch", Some(&app_cookie))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body().into_data_stream();
    use futures::StreamExt;
    let first = body.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).starts_with("event: change"));
    a.machine(json!({"image": "img"})).await;
    let next = tokio::time::timeout(std::time::Duration::from_secs(5), body.next())
        .await
        .expect("a change event after a machine was made")
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&next).starts_with("event: change"));
    assert_eq!(
        get("/v1/hangar/apps/nope/watch", Some(&session))
            .await
            .unwrap()
            .status(),
        404
    );
}

/// The dashboard's plots: sampled, a running machine's memory and CPU come
/// back as series; an unknown app is 404.
#[tokio::test]
async fn usage_is_sampled_for_the_dashboards_plots() {
    let a = with_app().await;
    let m = a.machine(json!({"image": "img"})).await;
    let id = m["id"].as_str().unwrap().to_owned();
    a.wait(&id, "started").await;
    hangar_api::usage::start_sampling(a.agent.clone(), std::time::Duration::from_millis(50));
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = a.call("GET", "/v1/hangar/apps/web/usage", None).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let mu = &r.body["machines"][&id];
        if mu["memory_mb"]["v"]
            .as_array()
            .is_some_and(|v| v.len() >= 2)
            && mu["cpu_cores"]["v"]
                .as_array()
                .is_some_and(|v| !v.is_empty())
        {
            assert_eq!(mu["memory_mb"]["v"][0], 10.0);
            assert_eq!(
                mu["cpu_cores"]["v"][0], 0.0,
                "the fake's CPU time stands still"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "never sampled: {}",
            r.body
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let r = a.call("GET", "/v1/hangar/apps/nope/usage", None).await;
    assert_eq!(r.status, 404);
}

/// The proxy's view of an app: with no proxy on this host, no machines in
/// it, but the machines' starts are there, and the usage plots them.
#[tokio::test]
async fn the_proxy_view_and_start_latency_come_from_what_happened() {
    let a = with_app().await;
    let m = a.machine(json!({"image": "img"})).await;
    let id = m["id"].as_str().unwrap().to_owned();
    a.wait(&id, "started").await;
    let r = a.call("GET", "/v1/hangar/apps/web/proxy", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["proxy"], false);
    assert_eq!(r.body["machines"], json!([]));
    let starts: Vec<&serde_json::Value> = r.body["activity"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["machine"] == id.as_str())
        .collect();
    assert_eq!(starts.len(), 1, "{}", r.body);
    assert_eq!(starts[0]["action"], "start");
    assert!(starts[0]["seconds"].as_f64().is_some_and(|s| s >= 0.0));
    assert!(starts[0].get("host").is_none(), "no cluster, no host");
    let r = a.call("GET", "/v1/hangar/apps/web/usage", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let t = r.body["start_ms"]["t"].as_array().unwrap();
    assert!(!t.is_empty(), "{}", r.body);
    assert_eq!(t.len(), r.body["start_ms"]["v"].as_array().unwrap().len());
    assert!(r.body.get("hosts").is_none(), "no cluster, no hosts");
    let r = a.call("GET", "/v1/hangar/apps/nope/proxy", None).await;
    assert_eq!(r.status, 404);
}

/// A machine's kept rendering (GET and list) follows every kind of change:
/// after each one, it equals what a server that never saw the machine
/// before renders.
#[tokio::test]
async fn kept_renderings_follow_every_change() {
    let a = with_app().await;
    let fresh = |a: &Api| {
        router(ApiState {
            agent: a.agent.clone(),
            images: None,
            auth: Arc::new(Auth::new(TOKEN)),
            deploy: hangar_deploy::Deployer::new(a.agent.clone()),
            registry: None,
            cluster: None,
            proxy: None,
            renderings: Default::default(),
        })
    };
    let m = a
        .machine(json!({"image": "busybox", "metadata": {"keep": "yes"}}))
        .await;
    let id = m["id"].as_str().unwrap().to_owned();
    a.wait(&id, "started").await;
    let one = format!("/v1/apps/web/machines/{id}");
    let check = |what: &'static str| {
        let (a, one) = (&a, one.clone());
        async move {
            let kept = a.call("GET", &one, None).await.body;
            let list = a.call("GET", "/v1/apps/web/machines", None).await.body;
            let other = Api {
                app: fresh(a),
                rt: a.rt.clone(),
                agent: a.agent.clone(),
                _dir: tempfile::tempdir().unwrap(),
            };
            let new = other.call("GET", &one, None).await.body;
            assert_eq!(kept, new, "GET after {what}");
            assert_eq!(list, json!([new]), "list after {what}");
            kept
        }
    };
    let first = check("create").await;
    // The same rendering twice: nothing changed.
    assert_eq!(check("nothing").await, first);
    let r = a
        .call("POST", &format!("/v1/apps/web/machines/{id}/stop"), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    a.wait(&id, "stopped").await;
    let stopped = check("stop").await;
    assert_eq!(stopped["state"], "stopped");
    let r = a
        .call("GET", "/v1/apps/web/machines?state=stopped", None)
        .await;
    assert_eq!(r.body, json!([stopped]));
    let r = a
        .call("GET", "/v1/apps/web/machines?state=started", None)
        .await;
    assert_eq!(r.body, json!([]));
    let r = a
        .call(
            "POST",
            &format!("/v1/apps/web/machines/{id}/metadata/role"),
            Some(json!({"value": "web"})),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.body);
    let tagged = check("metadata").await;
    assert_eq!(tagged["config"]["metadata"]["role"], "web");
    let r = a
        .call("GET", "/v1/apps/web/machines?metadata.role=web", None)
        .await;
    assert_eq!(r.body, json!([tagged]));
    let r = a
        .call(
            "POST",
            &one,
            Some(json!({"config": {"image": "busybox", "env": {"A": "1"}}})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let updated = check("update").await;
    assert_eq!(updated["config"]["env"]["A"], "1");
    assert_ne!(updated["instance_id"], first["instance_id"]);
    let r = a
        .call("POST", &format!("/v1/apps/web/machines/{id}/cordon"), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(check("cordon").await["cordoned"], true);
    let r = a
        .call("POST", &format!("/v1/apps/web/machines/{id}/start"), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    a.wait(&id, "started").await;
    let started = check("start").await;
    assert_eq!(started["state"], "started");
    assert_eq!(started["events"][0]["type"], "start");
}
