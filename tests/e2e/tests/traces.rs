//! End to end: `hangard --otlp-endpoint` sends a span per API request to
//! an OTLP/HTTP collector (here the test's own receiver, which decodes the
//! protobuf the OpenTelemetry SDK sends): named by route, with the status,
//! continuing the caller's W3C `traceparent`, and never carrying the token.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hangar_test_utils::daemon::Daemon;
use hangar_test_utils::wait_until;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

type Received = Arc<Mutex<Vec<(String, Bytes)>>>;

/// An OTLP/HTTP receiver on loopback: every request's path and body.
async fn collector() -> (SocketAddr, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got: Received = Arc::default();
    let keep = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                return;
            };
            let got = keep.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let got = got.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        let body = req.into_body().collect().await.map(|b| b.to_bytes());
                        got.lock().unwrap().push((path, body.unwrap_or_default()));
                        Ok::<_, Infallible>(
                            hyper::Response::builder()
                                .header("content-type", "application/x-protobuf")
                                .body(Full::new(Bytes::new()))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(conn), svc)
                    .await;
            });
        }
    });
    (addr, got)
}

fn string_attr(
    attrs: &[opentelemetry_proto::tonic::common::v1::KeyValue],
    key: &str,
) -> Option<String> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            Any::StringValue(s) => Some(s.clone()),
            Any::IntValue(i) => Some(i.to_string()),
            _ => None,
        }
    })
}

#[tokio::test]
async fn api_requests_become_spans_at_an_otlp_collector() {
    if !hangar_test_utils::host_tier("api_requests_become_spans_at_an_otlp_collector", &["crun"]) {
        return;
    }
    let (addr, got) = collector().await;
    let mut d = Daemon::start_env(
        &["--otlp-endpoint".into(), format!("http://{addr}")],
        &[("OTEL_BSP_SCHEDULE_DELAY", "100".into())],
    )
    .await;
    let http = reqwest::Client::new();
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let r = http
        .post(format!("{}/v1/apps", d.url))
        .bearer_auth(&d.token)
        .header("traceparent", format!("00-{trace_id}-{parent}-01"))
        .json(&serde_json::json!({"app_name": "traced", "org_slug": "personal"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = http
        .get(format!("{}/v1/apps/traced/machines/nope", d.url))
        .bearer_auth(&d.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    let find =
        |name: &str| -> Option<(Span, Vec<opentelemetry_proto::tonic::common::v1::KeyValue>)> {
            for (path, body) in got.lock().unwrap().iter() {
                assert_eq!(path, "/v1/traces");
                let req = ExportTraceServiceRequest::decode(body.as_ref()).expect("OTLP protobuf");
                for rs in req.resource_spans {
                    let resource = rs.resource.map(|r| r.attributes).unwrap_or_default();
                    for ss in rs.scope_spans {
                        for span in ss.spans {
                            if span.name == name {
                                return Some((span, resource.clone()));
                            }
                        }
                    }
                }
            }
            None
        };
    let (create, resource) = wait_until(Duration::from_secs(30), "the create span", || async {
        find("POST /v1/apps")
    })
    .await;
    assert_eq!(
        hex::encode(&create.trace_id),
        trace_id,
        "the caller's trace goes on"
    );
    assert_eq!(hex::encode(&create.parent_span_id), parent);
    assert_eq!(
        string_attr(&create.attributes, "http.response.status_code").as_deref(),
        Some("201")
    );
    assert_eq!(
        string_attr(&resource, "service.name").as_deref(),
        Some("hangard")
    );
    let (get, _) = wait_until(Duration::from_secs(30), "the machine span", || async {
        find("GET /v1/apps/{app}/machines/{id}")
    })
    .await;
    assert_ne!(hex::encode(&get.trace_id), trace_id, "a trace of its own");
    assert_eq!(
        string_attr(&get.attributes, "url.path").as_deref(),
        Some("/v1/apps/traced/machines/nope")
    );
    assert_eq!(
        string_attr(&get.attributes, "http.response.status_code").as_deref(),
        Some("404")
    );
    d.stop();
    for (_, body) in got.lock().unwrap().iter() {
        assert!(
            !body.windows(d.token.len()).any(|w| w == d.token.as_bytes()),
            "the token went out in a span"
        );
    }
}
