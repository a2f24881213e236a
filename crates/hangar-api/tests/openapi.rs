//! The OpenAPI document: generated from the code, checked in, served.
//!
//! When the API changes, regenerate the checked-in copy with
//! `HANGAR_UPDATE_OPENAPI=1 cargo test -p hangar-api --test openapi`.

use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use hangar_agent::images::fake::FakeImages;
use hangar_agent::{Agent, AgentConfig};
use hangar_api::{ApiState, Auth, router};
use hangar_runtime::fake::FakeRuntime;
use tower::ServiceExt;

const CHECKED_IN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");

#[test]
fn checked_in_document_matches_the_code() {
    let generated = hangar_api::openapi::document();
    if std::env::var_os("HANGAR_UPDATE_OPENAPI").is_some() {
        std::fs::write(CHECKED_IN, format!("{generated}\n")).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(CHECKED_IN).unwrap_or_default();
    assert!(
        checked_in.trim_end() == generated,
        "crates/hangar-api/openapi.json is out of date with the code: regenerate it with \
         HANGAR_UPDATE_OPENAPI=1 cargo test -p hangar-api --test openapi"
    );
}

#[test]
fn document_describes_every_operation() {
    let doc: serde_json::Value = serde_json::from_str(&hangar_api::openapi::document()).unwrap();
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            ops.push(format!("{} {path}", method.to_uppercase()));
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path}"
            );
        }
    }
    // The operations of Fly's spec listed in the README, and Hangar's
    // extensions (images, logs, terminal, tokens, releases, hosts, metrics, the dashboard's watch, usage and proxy view).
    assert_eq!(ops.len(), 75, "{ops:#?}");
    assert!(ops.contains(&"GET /metrics".to_string()));
    assert!(ops.contains(&"GET /v1/apps/{app_name}/volumes/{volume_id}/export".to_string()));
    assert!(ops.contains(&"GET /v1/hangar/hosts".to_string()));
    assert!(ops.contains(&"GET /v1/hangar/apps/{app_name}/proxy".to_string()));
    assert!(ops.contains(&"POST /v1/apps/{app_name}/releases".to_string()));
    assert!(ops.contains(&"POST /v1/apps/{app_name}/machines/{machine_id}/lease".to_string()));
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    // Operation ids are Fly's, so clients generated from either document agree.
    let fly: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/fly-machines-openapi3.json")).unwrap();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let Some(fly_item) = path.strip_prefix("/v1").and_then(|p| fly["paths"].get(p)) else {
            continue;
        };
        for (method, op) in item.as_object().unwrap() {
            assert_eq!(
                op["operationId"], fly_item[method]["operationId"],
                "{method} {path}"
            );
        }
    }
    for schema in [
        "Machine",
        "MachineConfig",
        "CreateMachineRequest",
        "ErrorResponse",
        "ProcessStat",
    ] {
        assert!(
            doc["components"]["schemas"].get(schema).is_some(),
            "{schema} missing"
        );
    }
}

#[tokio::test]
async fn served_at_openapi_json() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::open(
        AgentConfig::new(dir.path()),
        Arc::new(FakeRuntime::new()),
        Arc::new(FakeImages),
    )
    .await
    .unwrap();
    let app = router(ApiState {
        agent: agent.clone(),
        images: None,
        auth: Arc::new(Auth::new("t")),
        deploy: hangar_deploy::Deployer::new(agent.clone()),
        registry: None,
        cluster: None,
        proxy: None,
        renderings: Default::default(),
    });
    let req = Request::get("/openapi.json")
        .header("authorization", "Bearer t")
        .body(Body::empty())
        .unwrap();
    let resp = app.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&body),
        hangar_api::openapi::document()
    );
}
