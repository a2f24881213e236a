//! Conformance with Fly's Machines API contract: every implemented operation
//! is called (success and error cases) through the real router and agent,
//! and each response is checked against Fly's OpenAPI document (a copy is in
//! `tests/fixtures`, with its source):
//!
//! - a success status must be one the spec declares for the operation;
//! - a body the spec describes must validate against that schema;
//! - an error body must validate against `ErrorResponse`.
//!
//! One deliberate deviation is checked separately: Fly's lease endpoints
//! answer with `{"status": "success", "data": Lease}` (what fly-go and flyctl
//! read), not the flat `Lease` the spec declares.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use hangar_agent::images::fake::FakeImages;
use hangar_agent::{Agent, AgentConfig};
use hangar_api::{ApiState, router};
use hangar_runtime::fake::FakeRuntime;
use serde_json::{Value, json};
use tower::ServiceExt;

const TOKEN: &str = "conformance";

struct Spec {
    doc: Value,
}

impl Spec {
    fn load() -> Spec {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/fly-machines-openapi3.json"
        ))
        .unwrap();
        Spec {
            doc: serde_json::from_str(&text).unwrap(),
        }
    }

    /// The schema with every `#/components/schemas/...` reference inlined.
    fn deref(&self, schema: &Value, depth: usize) -> Value {
        assert!(depth < 32, "reference cycle");
        match schema {
            Value::Object(m) => {
                if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                    let name = r.trim_start_matches("#/components/schemas/");
                    let target = &self.doc["components"]["schemas"][name];
                    assert!(!target.is_null(), "unknown schema {r}");
                    return self.deref(target, depth + 1);
                }
                Value::Object(
                    m.iter()
                        .filter(|(k, _)| !matches!(k.as_str(), "example" | "x-enum-varnames"))
                        .map(|(k, v)| (k.clone(), self.deref(v, depth)))
                        .collect(),
                )
            }
            Value::Array(a) => Value::Array(a.iter().map(|v| self.deref(v, depth)).collect()),
            other => other.clone(),
        }
    }

    fn operation(&self, template: &str, method: &str) -> &Value {
        let op = &self.doc["paths"][template][method.to_ascii_lowercase()];
        assert!(!op.is_null(), "the spec has no {method} {template}");
        op
    }

    /// Checks one response; returns a description of what is wrong.
    fn check(&self, method: &str, template: &str, status: u16, body: &Value) -> Result<(), String> {
        let op = self.operation(template, method);
        let responses = op["responses"].as_object().unwrap();
        if status >= 400 {
            let schema = self.deref(&json!({"$ref": "#/components/schemas/ErrorResponse"}), 0);
            return validate(&schema, body).map_err(|e| format!("error body: {e}"));
        }
        let declared = responses.get(&status.to_string()).ok_or_else(|| {
            format!(
                "status {status} is not among the spec's {:?}",
                responses.keys().collect::<Vec<_>>()
            )
        })?;
        let schema = declared["content"]["application/json"]["schema"].clone();
        if schema.is_null() {
            return Ok(());
        }
        validate(&self.deref(&schema, 0), body)
    }
}

fn validate(schema: &Value, body: &Value) -> Result<(), String> {
    let v = jsonschema::validator_for(schema).map_err(|e| format!("bad schema: {e}"))?;
    let errors: Vec<String> = v
        .iter_errors(body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

struct Harness {
    app: axum::Router,
    spec: Spec,
    covered: BTreeSet<(String, String)>,
    failures: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let agent = Agent::open(
            AgentConfig {
                ip_pool: Some("127.0.1.0/30".parse().unwrap()),
                shared_ip: Some("127.0.0.1".parse().unwrap()),
                ..AgentConfig::new(dir.path())
            },
            Arc::new(FakeRuntime::new()),
            Arc::new(FakeImages),
        )
        .await
        .unwrap();
        Harness {
            app: router(ApiState::bare(agent.clone(), TOKEN)),
            spec: Spec::load(),
            covered: BTreeSet::new(),
            failures: Vec::new(),
            _dir: dir,
        }
    }

    /// Calls `path` (a concrete path) as `template` (the spec's path
    /// template) and checks the answer.
    async fn call(
        &mut self,
        method: &str,
        template: &str,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("/v1{path}"))
            .header("authorization", format!("Bearer {TOKEN}"));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b
            .body(
                body.map(|v| Body::from(serde_json::to_vec(&v).unwrap()))
                    .unwrap_or_default(),
            )
            .unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        self.covered
            .insert((method.to_owned(), template.to_owned()));
        if let Err(e) = self.spec.check(method, template, status, &value) {
            self.failures
                .push(format!("{method} {path} -> {status}: {e}\n  body: {value}"));
        }
        (status, value)
    }

    async fn ok(&mut self, method: &str, template: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method, template, path, body, &[]).await;
        assert!(status < 300, "{method} {path} -> {status}: {v}");
        v
    }

    async fn err(
        &mut self,
        method: &str,
        template: &str,
        path: &str,
        body: Option<Value>,
        want: u16,
    ) {
        let (status, v) = self.call(method, template, path, body, &[]).await;
        assert_eq!(status, want, "{method} {path}: {v}");
    }

    async fn wait(&mut self, id: &str, state: &str) {
        self.ok(
            "GET",
            "/apps/{app_name}/machines/{machine_id}/wait",
            &format!("/apps/c/machines/{id}/wait?state={state}&timeout=10"),
            None,
        )
        .await;
    }
}

const M: &str = "/apps/{app_name}/machines/{machine_id}";

#[tokio::test]
async fn responses_conform_to_flys_spec() {
    let mut h = Harness::new().await;

    // Apps.
    h.ok(
        "POST",
        "/apps",
        "/apps",
        Some(json!({"app_name": "c", "org_slug": "personal"})),
    )
    .await;
    h.ok(
        "POST",
        "/apps",
        "/apps",
        Some(json!({"name": "gone", "org_slug": "personal"})),
    )
    .await;
    h.err("POST", "/apps", "/apps", Some(json!({"name": "c"})), 409)
        .await;
    h.err("POST", "/apps", "/apps", Some(json!({"name": "Bad!"})), 400)
        .await;
    h.ok("GET", "/apps", "/apps?org_slug=personal", None).await;
    h.ok("GET", "/apps/{app_name}", "/apps/c", None).await;
    h.err("GET", "/apps/{app_name}", "/apps/nope", None, 404)
        .await;
    h.ok("DELETE", "/apps/{app_name}", "/apps/gone", None).await;

    // Machines.
    let m = h
        .ok("POST", "/apps/{app_name}/machines", "/apps/c/machines", Some(json!({
            "config": {"image": "busybox", "env": {"A": "1"}, "metadata": {"role": "web"},
                       "services": [{"internal_port": 8080, "protocol": "tcp", "ports": [{"port": 80, "handlers": ["http"]}]}],
                       "stop_config": {"timeout": "10s", "signal": "SIGTERM"}},
            "name": "web",
        })))
        .await;
    let id = m["id"].as_str().unwrap().to_owned();
    let v1 = m["instance_id"].as_str().unwrap().to_owned();
    h.err(
        "POST",
        "/apps/{app_name}/machines",
        "/apps/c/machines",
        Some(json!({"config": {}})),
        400,
    )
    .await;
    h.err(
        "POST",
        "/apps/{app_name}/machines",
        "/apps/c/machines",
        Some(json!({"config": {"image": "x"}, "region": "syd"})),
        422,
    )
    .await;
    h.wait(&id, "started").await;
    h.ok("GET", "/apps/{app_name}/machines", "/apps/c/machines", None)
        .await;
    h.ok(
        "GET",
        "/apps/{app_name}/machines",
        "/apps/c/machines?summary=true&state=started",
        None,
    )
    .await;
    h.ok("GET", M, &format!("/apps/c/machines/{id}"), None)
        .await;
    h.err("GET", M, "/apps/c/machines/00000000000000", None, 404)
        .await;
    h.ok(
        "GET",
        &format!("{M}/events"),
        &format!("/apps/c/machines/{id}/events"),
        None,
    )
    .await;
    h.err(
        "GET",
        &format!("{M}/wait"),
        &format!("/apps/c/machines/{id}/wait?state=stopped&timeout=1"),
        None,
        408,
    )
    .await;
    h.err(
        "GET",
        &format!("{M}/wait"),
        &format!("/apps/c/machines/{id}/wait?timeout=99"),
        None,
        400,
    )
    .await;

    // Update and versions.
    let upd = h
        .ok(
            "POST",
            M,
            &format!("/apps/c/machines/{id}"),
            Some(json!({"config": {"image": "busybox", "env": {"A": "2"}}, "current_version": v1})),
        )
        .await;
    h.err(
        "POST",
        M,
        &format!("/apps/c/machines/{id}"),
        Some(json!({"config": {"image": "busybox"}, "current_version": v1})),
        412,
    )
    .await;
    let _ = upd;
    h.wait(&id, "started").await;
    h.ok(
        "GET",
        &format!("{M}/versions"),
        &format!("/apps/c/machines/{id}/versions"),
        None,
    )
    .await;

    // Actions.
    h.ok(
        "POST",
        &format!("{M}/restart"),
        &format!("/apps/c/machines/{id}/restart?signal=SIGTERM"),
        None,
    )
    .await;
    h.wait(&id, "started").await;
    h.ok(
        "POST",
        &format!("{M}/signal"),
        &format!("/apps/c/machines/{id}/signal"),
        Some(json!({"signal": "SIGHUP"})),
    )
    .await;
    h.wait(&id, "started").await;
    h.err(
        "POST",
        &format!("{M}/signal"),
        &format!("/apps/c/machines/{id}/signal"),
        Some(json!({"signal": "SIGNOPE"})),
        400,
    )
    .await;
    h.ok(
        "POST",
        &format!("{M}/cordon"),
        &format!("/apps/c/machines/{id}/cordon"),
        None,
    )
    .await;
    h.ok(
        "POST",
        &format!("{M}/uncordon"),
        &format!("/apps/c/machines/{id}/uncordon"),
        None,
    )
    .await;
    h.ok(
        "POST",
        &format!("{M}/exec"),
        &format!("/apps/c/machines/{id}/exec"),
        Some(json!({"command": ["echo", "hi"]})),
    )
    .await;
    h.err(
        "POST",
        &format!("{M}/exec"),
        &format!("/apps/c/machines/{id}/exec"),
        Some(json!({})),
        400,
    )
    .await;
    h.ok(
        "POST",
        &format!("{M}/suspend"),
        &format!("/apps/c/machines/{id}/suspend"),
        None,
    )
    .await;
    h.wait(&id, "suspended").await;
    h.ok(
        "POST",
        &format!("{M}/start"),
        &format!("/apps/c/machines/{id}/start"),
        None,
    )
    .await;
    h.wait(&id, "started").await;
    h.ok(
        "POST",
        &format!("{M}/stop"),
        &format!("/apps/c/machines/{id}/stop"),
        Some(json!({"timeout": "5s"})),
    )
    .await;
    h.wait(&id, "stopped").await;
    h.err(
        "POST",
        &format!("{M}/stop"),
        &format!("/apps/c/machines/{id}/stop"),
        Some(json!({"signal": "SIGNOPE"})),
        400,
    )
    .await;

    // Metadata.
    h.ok(
        "GET",
        &format!("{M}/metadata"),
        &format!("/apps/c/machines/{id}/metadata"),
        None,
    )
    .await;
    h.ok(
        "PUT",
        &format!("{M}/metadata"),
        &format!("/apps/c/machines/{id}/metadata"),
        Some(json!({"metadata": {"a": "1"}})),
    )
    .await;
    h.ok(
        "PATCH",
        &format!("{M}/metadata"),
        &format!("/apps/c/machines/{id}/metadata"),
        Some(json!({"metadata": {"b": "2"}})),
    )
    .await;
    h.err(
        "PATCH",
        &format!("{M}/metadata"),
        &format!("/apps/c/machines/{id}/metadata"),
        Some(json!({"metadata": {"b": "3"}, "machine_version": "01ARZ3NDEKTSV4RRFFQ69G5FAV"})),
        412,
    )
    .await;
    h.ok(
        "GET",
        &format!("{M}/metadata/{{key}}"),
        &format!("/apps/c/machines/{id}/metadata/a"),
        None,
    )
    .await;
    h.err(
        "GET",
        &format!("{M}/metadata/{{key}}"),
        &format!("/apps/c/machines/{id}/metadata/zz"),
        None,
        404,
    )
    .await;
    h.ok(
        "POST",
        &format!("{M}/metadata/{{key}}"),
        &format!("/apps/c/machines/{id}/metadata/c"),
        Some(json!({"value": "3"})),
    )
    .await;
    h.ok(
        "DELETE",
        &format!("{M}/metadata/{{key}}"),
        &format!("/apps/c/machines/{id}/metadata/c"),
        None,
    )
    .await;

    // Platform and org.
    h.ok(
        "GET",
        "/orgs/{org_slug}/machines",
        "/orgs/personal/machines?limit=10",
        None,
    )
    .await;
    h.err(
        "GET",
        "/orgs/{org_slug}/machines",
        "/orgs/personal/machines?cursor=zz",
        None,
        400,
    )
    .await;
    h.ok("GET", "/platform/regions", "/platform/regions", None)
        .await;
    h.ok("GET", "/tokens/current", "/tokens/current", None)
        .await;
    h.ok(
        "POST",
        "/apps/{app_name}/deploy_token",
        "/apps/c/deploy_token",
        Some(json!({"expiry": "1h"})),
    )
    .await;

    // Leases: Fly's envelope (checked by hand: the spec's flat Lease does not
    // describe what the real API sends).
    let (st, lease) = h
        .call(
            "POST",
            &format!("{M}/lease"),
            &format!("/apps/c/machines/{id}/lease?ttl=30"),
            None,
            &[],
        )
        .await;
    h.failures.retain(|f| !f.contains("/lease"));
    assert_eq!(st, 201);
    assert_eq!(lease["status"], "success");
    let nonce = lease["data"]["nonce"].as_str().unwrap().to_owned();
    for k in ["nonce", "expires_at", "owner", "description", "version"] {
        assert!(lease["data"].get(k).is_some(), "lease lacks {k}: {lease}");
    }
    let (st, _) = h
        .call(
            "GET",
            &format!("{M}/lease"),
            &format!("/apps/c/machines/{id}/lease"),
            None,
            &[],
        )
        .await;
    assert_eq!(st, 200);
    let (st, _) = h
        .call(
            "DELETE",
            &format!("{M}/lease"),
            &format!("/apps/c/machines/{id}/lease"),
            None,
            &[("fly-machine-lease-nonce", &nonce)],
        )
        .await;
    assert_eq!(st, 200);
    h.failures.retain(|f| !f.contains("/lease"));

    // Destroy.
    h.ok("DELETE", M, &format!("/apps/c/machines/{id}"), None)
        .await;
    h.wait(&id, "destroyed").await;
    h.err(
        "POST",
        &format!("{M}/start"),
        &format!("/apps/c/machines/{id}/start"),
        None,
        412,
    )
    .await;

    // Secrets.
    const S: &str = "/apps/{app_name}/secrets";
    const SN: &str = "/apps/{app_name}/secrets/{secret_name}";
    let r = h
        .ok(
            "POST",
            S,
            "/apps/c/secrets",
            Some(json!({"values": {"DB_URL": "postgres://x", "KEY": "aGk="}})),
        )
        .await;
    assert_eq!(r["version"], 1);
    assert_eq!(r["Version"], 1);
    h.ok(
        "POST",
        S,
        "/apps/c/secrets",
        Some(json!({"values": {"DB_URL": null}})),
    )
    .await;
    let list = h.ok("GET", S, "/apps/c/secrets", None).await;
    assert_eq!(list["secrets"].as_array().unwrap().len(), 1);
    assert!(list["secrets"][0].get("value").is_none());
    let shown = h
        .ok("GET", S, "/apps/c/secrets?show_secrets=true", None)
        .await;
    assert_eq!(shown["secrets"][0]["value"], "aGk=");
    h.err("GET", S, "/apps/c/secrets?min_version=99", None, 412)
        .await;
    h.err(
        "POST",
        S,
        "/apps/c/secrets",
        Some(json!({"values": {"FLY_X": "1"}})),
        400,
    )
    .await;
    let set = h
        .ok(
            "POST",
            SN,
            "/apps/c/secrets/TOKEN",
            Some(json!({"value": "t0k"})),
        )
        .await;
    assert_eq!(set["version"], 3);
    let got = h.ok("GET", SN, "/apps/c/secrets/TOKEN", None).await;
    assert_eq!(got["digest"], set["digest"]);
    h.err("GET", SN, "/apps/c/secrets/NOPE", None, 404).await;
    h.err("POST", SN, "/apps/c/secrets/TOKEN", Some(json!({})), 400)
        .await;
    h.ok("DELETE", SN, "/apps/c/secrets/TOKEN", None).await;
    h.err("DELETE", SN, "/apps/c/secrets/TOKEN", None, 404)
        .await;
    // Machines name secrets in files and wait for secret versions.
    h.ok(
        "POST",
        "/apps/{app_name}/machines",
        "/apps/c/machines",
        Some(json!({
            "config": {"image": "busybox", "files": [{"guest_path": "/k", "secret_name": "KEY"}]},
            "min_secrets_version": 4,
        })),
    )
    .await;
    h.err(
        "POST",
        "/apps/{app_name}/machines",
        "/apps/c/machines",
        Some(json!({
            "config": {"image": "busybox", "files": [{"guest_path": "/k", "secret_name": "NOPE"}]},
        })),
        400,
    )
    .await;
    h.err(
        "POST",
        "/apps/{app_name}/machines",
        "/apps/c/machines",
        Some(json!({
            "config": {"image": "busybox"}, "min_secrets_version": 5,
        })),
        412,
    )
    .await;

    // Volumes (real sparse images; the fake runtime mounts nothing).
    const V: &str = "/apps/{app_name}/volumes";
    const VI: &str = "/apps/{app_name}/volumes/{volume_id}";
    let vol = h
        .ok(
            "POST",
            V,
            "/apps/c/volumes",
            Some(json!({"name": "data", "size_gb": 1})),
        )
        .await;
    let vid = vol["id"].as_str().unwrap().to_owned();
    assert!(vid.starts_with("vol_") && vid.len() == 20, "{vid}");
    assert_eq!(vol["encrypted"], true);
    assert_eq!(vol["fstype"], "ext4");
    assert_eq!(vol["state"], "created");
    h.err(
        "POST",
        V,
        "/apps/c/volumes",
        Some(json!({"name": "Bad Name"})),
        400,
    )
    .await;
    h.err(
        "POST",
        V,
        "/apps/c/volumes",
        Some(json!({"name": "x", "size_gb": 0})),
        400,
    )
    .await;
    h.err(
        "POST",
        V,
        "/apps/c/volumes",
        Some(json!({"name": "x", "size_gb": 1_000_000})),
        400,
    )
    .await;
    h.err(
        "POST",
        V,
        "/apps/c/volumes",
        Some(json!({"name": "x", "region": "syd"})),
        422,
    )
    .await;
    h.err("POST", V, "/apps/c/volumes", Some(json!({})), 400)
        .await;
    h.ok("GET", V, "/apps/c/volumes", None).await;
    h.ok("GET", VI, &format!("/apps/c/volumes/{vid}"), None)
        .await;
    h.err("GET", VI, "/apps/c/volumes/vol_nope", None, 404)
        .await;
    let u = h
        .ok(
            "PUT",
            VI,
            &format!("/apps/c/volumes/{vid}"),
            Some(json!({"snapshot_retention": 7})),
        )
        .await;
    assert_eq!(u["snapshot_retention"], 7);
    h.err(
        "PUT",
        VI,
        &format!("/apps/c/volumes/{vid}"),
        Some(json!({"snapshot_retention": 99})),
        400,
    )
    .await;
    let x = h
        .ok(
            "PUT",
            &format!("{VI}/extend"),
            &format!("/apps/c/volumes/{vid}/extend"),
            Some(json!({"size_gb": 2})),
        )
        .await;
    assert_eq!(x["volume"]["size_gb"], 2);
    assert_eq!(x["needs_restart"], false);
    h.err(
        "PUT",
        &format!("{VI}/extend"),
        &format!("/apps/c/volumes/{vid}/extend"),
        Some(json!({"size_gb": 1})),
        400,
    )
    .await;
    h.ok(
        "POST",
        &format!("{VI}/snapshots"),
        &format!("/apps/c/volumes/{vid}/snapshots"),
        None,
    )
    .await;
    let snaps = h
        .ok(
            "GET",
            &format!("{VI}/snapshots"),
            &format!("/apps/c/volumes/{vid}/snapshots"),
            None,
        )
        .await;
    let snap = snaps[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(snaps[0]["volume_size"], 2);
    let restored = h
        .ok(
            "POST",
            V,
            "/apps/c/volumes",
            Some(json!({"name": "restored", "snapshot_id": snap})),
        )
        .await;
    assert_eq!(
        restored["size_gb"], 3,
        "the default, above the snapshot's 2"
    );
    let fork = h
        .ok(
            "POST",
            V,
            "/apps/c/volumes",
            Some(json!({"name": "fork", "source_volume_id": vid, "size_gb": 2})),
        )
        .await;
    // Machines bind volumes; one machine per volume; mounts stay as created.
    let mv = h
        .ok(
            "POST",
            "/apps/{app_name}/machines",
            "/apps/c/machines",
            Some(json!({
                "config": {"image": "busybox", "mounts": [{"volume": vid, "path": "/data"}]},
                "skip_launch": true,
            })),
        )
        .await;
    let mid = mv["id"].as_str().unwrap().to_owned();
    let bound = h
        .ok("GET", VI, &format!("/apps/c/volumes/{vid}"), None)
        .await;
    assert_eq!(bound["attached_machine_id"], mid.as_str());
    h.err(
        "POST",
        "/apps/{app_name}/machines",
        "/apps/c/machines",
        Some(json!({
            "config": {"image": "busybox", "mounts": [{"volume": vid, "path": "/data"}]},
        })),
        409,
    )
    .await;
    h.err(
        "POST",
        "/apps/{app_name}/machines",
        "/apps/c/machines",
        Some(json!({
            "config": {"image": "busybox", "mounts": [{"volume": fork["id"], "path": "/"}]},
        })),
        400,
    )
    .await;
    h.err(
        "POST",
        M,
        &format!("/apps/c/machines/{mid}"),
        Some(json!({
            "config": {"image": "busybox", "mounts": [{"volume": vid, "path": "/elsewhere"}]},
        })),
        400,
    )
    .await;
    h.err("DELETE", VI, &format!("/apps/c/volumes/{vid}"), None, 412)
        .await;
    h.ok(
        "DELETE",
        M,
        &format!("/apps/c/machines/{mid}?force=true"),
        None,
    )
    .await;
    h.ok(
        "GET",
        &format!("{M}/wait"),
        &format!("/apps/c/machines/{mid}/wait?state=destroyed&timeout=10"),
        None,
    )
    .await;
    let gone = h
        .ok("DELETE", VI, &format!("/apps/c/volumes/{vid}"), None)
        .await;
    assert_eq!(gone["state"], "destroyed");
    for v in [&restored, &fork] {
        h.ok(
            "DELETE",
            VI,
            &format!("/apps/c/volumes/{}", v["id"].as_str().unwrap()),
            None,
        )
        .await;
    }

    // Public addresses: two in the pool, then it is used up.
    const IPS: &str = "/apps/{app_name}/ip_assignments";
    const IP: &str = "/apps/{app_name}/ip_assignments/{ip}";
    let a = h
        .ok(
            "POST",
            IPS,
            "/apps/c/ip_assignments",
            Some(json!({"type": "v4"})),
        )
        .await;
    assert_eq!(a["ip"], "127.0.1.1");
    assert_eq!(a["shared"], false);
    let b = h.ok("POST", IPS, "/apps/c/ip_assignments", None).await;
    assert_eq!(b["ip"], "127.0.1.2");
    h.err(
        "POST",
        IPS,
        "/apps/c/ip_assignments",
        Some(json!({"type": "v4"})),
        422,
    )
    .await;
    let shared = h
        .ok(
            "POST",
            IPS,
            "/apps/c/ip_assignments",
            Some(json!({"type": "shared_v4"})),
        )
        .await;
    assert_eq!(
        (shared["ip"].as_str(), shared["shared"].as_bool()),
        (Some("127.0.0.1"), Some(true))
    );
    h.err(
        "POST",
        IPS,
        "/apps/c/ip_assignments",
        Some(json!({"type": "shared_v4"})),
        409,
    )
    .await;
    h.err(
        "POST",
        IPS,
        "/apps/c/ip_assignments",
        Some(json!({"type": "v6"})),
        422,
    )
    .await;
    h.err(
        "POST",
        IPS,
        "/apps/c/ip_assignments",
        Some(json!({"type": "v5"})),
        400,
    )
    .await;
    h.err(
        "POST",
        IPS,
        "/apps/c/ip_assignments",
        Some(json!({"region": "mars"})),
        400,
    )
    .await;
    h.err("POST", IPS, "/apps/nope/ip_assignments", None, 404)
        .await;
    let list = h.ok("GET", IPS, "/apps/c/ip_assignments", None).await;
    assert_eq!(list["ips"].as_array().unwrap().len(), 3);
    h.ok("DELETE", IP, "/apps/c/ip_assignments/127.0.1.1", None)
        .await;
    h.err("DELETE", IP, "/apps/c/ip_assignments/127.0.1.1", None, 404)
        .await;
    h.err("DELETE", IP, "/apps/c/ip_assignments/not-an-ip", None, 400)
        .await;
    // The freed address is given again.
    let again = h.ok("POST", IPS, "/apps/c/ip_assignments", None).await;
    assert_eq!(again["ip"], "127.0.1.1");

    assert!(
        h.failures.is_empty(),
        "responses that break Fly's spec:\n{}",
        h.failures.join("\n")
    );

    // Every implemented operation but ps and memory (which need a real
    // workload; the end-to-end tests cover them) is exercised here.
    assert_eq!(h.covered.len(), 49, "{:?}", h.covered);
}

/// The checker itself catches what it should.
#[test]
fn the_checker_catches_mismatches() {
    let spec = Spec::load();
    let create = "/apps/{app_name}/machines";
    // Wrong types for the spec's fields.
    assert!(spec.check("POST", create, 200, &json!({"id": 5})).is_err());
    assert!(
        spec.check(
            "POST",
            create,
            200,
            &json!({"id": "x", "events": [{"timestamp": "soon"}]})
        )
        .is_err()
    );
    assert!(
        spec.check(
            "POST",
            create,
            200,
            &json!({"id": "x", "config": {"guest": {"cpus": "two"}}})
        )
        .is_err()
    );
    // A status the spec does not declare for the operation.
    assert!(spec.check("POST", create, 201, &json!({})).is_err());
    // Error bodies need a string `error`.
    assert!(
        spec.check("POST", create, 400, &json!({"error": 1}))
            .is_err()
    );
    // And the right shapes pass.
    assert!(
        spec.check(
            "POST",
            create,
            200,
            &json!({"id": "x", "events": [{"timestamp": 1}]})
        )
        .is_ok()
    );
    assert!(
        spec.check("POST", create, 404, &json!({"error": "machine not found"}))
            .is_ok()
    );
}
