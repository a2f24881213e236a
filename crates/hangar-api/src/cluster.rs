//! Any host answers any API call (`hangard --cluster`): a request for a
//! machine another host runs goes to that host, a new machine goes to the
//! host placement picks, and an app's machine list merges every host's.
//! The request travels with its own credentials, so the owner checks it as
//! if the client had called it; `hangar-forwarded-by` marks it so it is
//! never sent on again. Hosts are found in the cluster's in-memory copy of
//! the directory: nothing here reads the database.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Method, StatusCode};

use crate::Shared;
use crate::{ApiError, ApiState};

/// Marks a request one host sent to another.
pub const FORWARDED_BY: &str = "hangar-forwarded-by";

/// The largest request body forwarded (machine configs; images go through
/// the registry, which is not forwarded).
const BODY_LIMIT: usize = 16 << 20;

/// A cluster membership with the HTTP client hosts call each other with.
#[derive(Clone)]
pub struct ClusterApi {
    /// The membership.
    pub cluster: hangar_cluster::Cluster,
    http: reqwest::Client,
    /// The names this host's registry answers to.
    registry: Option<hangar_registry::Names>,
}

impl ClusterApi {
    /// Wraps a membership.
    pub fn new(cluster: hangar_cluster::Cluster) -> ClusterApi {
        ClusterApi {
            cluster,
            http: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(3))
                .build()
                .unwrap_or_default(),
            registry: None,
        }
    }

    /// With the names of this host's built-in registry: an image named
    /// by one of them (`localhost:4280/app`, say) is renamed by this
    /// host's advertised address before a request naming it goes to
    /// another host, where the local name would mean that host.
    pub fn with_registry(mut self, names: hangar_registry::Names) -> ClusterApi {
        self.registry = Some(names);
        self
    }

    /// `image` as another host must name it.
    fn image_for_peers(&self, image: &str) -> Option<String> {
        let (registry, rest) = image.split_once('/')?;
        if !self.registry.as_ref()?.matches(registry) {
            return None;
        }
        let me = self.cluster.host(self.cluster.host_id())?;
        let authority = me
            .api_url
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .trim_end_matches('/');
        (authority != registry).then(|| format!("{authority}/{rest}"))
    }
}

/// The routing middleware (inside authentication).
pub async fn route(State(s): State<Shared>, req: Request, next: Next) -> Response {
    let Some(c) = s.cluster.clone() else {
        return next.run(req).await;
    };
    if req.headers().contains_key(FORWARDED_BY) {
        let resp = next.run(req).await;
        c.cluster.poke();
        return resp;
    }
    let path = req.uri().path().to_owned();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["v1", "apps", app, "machines"] if req.method() == Method::GET => {
            let others = c.cluster.other_hosts_of(app);
            let app = (*app).to_owned();
            list(&c, others, req, next, |h| unreachable_machines(&c, h, &app)).await
        }
        ["v1", "orgs", _, "machines"] if req.method() == Method::GET => {
            org_machines(&c, req, next).await
        }
        ["v1", "apps", app, "volumes"] if req.method() == Method::GET => {
            let others = c.cluster.other_hosts_with_volumes(app);
            list(&c, others, req, next, |_| Vec::new()).await
        }
        ["v1", "apps", app, "volumes"] if req.method() == Method::POST => {
            create_volume(&c, app, req, next).await
        }
        ["v1", "apps", app, "volumes", id, ..] if !id.is_empty() => {
            let local = s.agent.get_volume(app, id).is_ok();
            let owner = c.cluster.volume_owner(id).filter(|_| !local);
            at_owner(&c, owner, req, next).await
        }
        ["v1", "apps", app, "machines"] if req.method() == Method::POST => {
            create(&c, app, req, next).await
        }
        ["v1", "apps", app] if req.method() == Method::DELETE => {
            // Deleting an app deletes it on every host, with its machines
            // and volumes there: without `force`, every other host must
            // have none (asked now; a host that cannot say refuses it).
            let force = req
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|kv| kv == "force=true" || kv == "force=1"));
            if !force {
                if let Err(resp) = nothing_elsewhere(&c, app, req.headers()).await {
                    return resp;
                }
            }
            next.run(req).await
        }
        ["v1", "apps", app, "releases"] if req.method() == Method::POST => {
            release(&c, &s, app, req, next).await
        }
        ["v1", "apps", app, "releases"] if req.method() == Method::GET => {
            // Every host keeps a copy of every release; the host that
            // holds the app's machines (which runs its releases) has the
            // newest.
            let home = match release_home(&c, &s, app) {
                Home::There(h) if h.state == "up" => Some(*h),
                _ => None,
            };
            at_owner(&c, home, req, next).await
        }
        ["v1", "apps", app, "releases", key, rest @ ..] if !key.is_empty() => {
            // A release is run, followed and cancelled on its host; its
            // copy here answers a plain read while that host is down.
            let read = req.method() == Method::GET && rest.is_empty();
            let found = match s.agent.release_host(app, key) {
                Ok(Some(id)) => match c.cluster.host(&id) {
                    Some(h) if h.state == "up" || !read => Some(h),
                    _ => None,
                },
                _ if s.agent.get_release(app, key).is_ok() => None,
                _ => match release_home(&c, &s, app) {
                    Home::There(h) => Some(*h),
                    _ => {
                        // Made a moment ago elsewhere, its copy not here yet.
                        let probe = format!("/v1/apps/{app}/releases/{key}");
                        first_with(&c, &probe, req.headers()).await
                    }
                },
            };
            at_owner(&c, found, req, next).await
        }
        ["v1", "hangar", "apps", app, "usage"] if req.method() == Method::GET => {
            let others = c.cluster.other_hosts_of(app);
            gather(&c, others, req, next, merge_usage).await
        }
        ["v1", "hangar", "apps", app, "proxy"] if req.method() == Method::GET => {
            let others = c.cluster.other_hosts_of(app);
            gather(&c, others, req, next, merge_proxy).await
        }
        ["v1", "apps", app, "machines", id, ..] if !id.is_empty() => {
            let local = s.agent.get_machine(app, id).is_ok();
            let owner = c.cluster.remote_owner(id).filter(|_| !local);
            at_owner(&c, owner, req, next).await
        }
        _ => next.run(req).await,
    }
}

/// A call for a machine or volume: sent to `owner` when another host
/// holds it, else answered here (and the directory told of a change).
async fn at_owner(
    c: &ClusterApi,
    owner: Option<hangar_cluster::HostInfo>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(owner) = owner {
        return forward(c, &owner, req).await;
    }
    let mutating = req.method() != Method::GET;
    let resp = next.run(req).await;
    if mutating {
        c.cluster.poke();
    }
    resp
}

/// Checks that no other host has machines or volumes of `app`; the
/// answer to give otherwise.
async fn nothing_elsewhere(c: &ClusterApi, app: &str, headers: &HeaderMap) -> Result<(), Response> {
    let me = c.cluster.host_id().to_owned();
    for h in c.cluster.hosts().into_iter().filter(|h| h.id != me) {
        if h.state != "up" {
            return Err(unreachable(
                &h,
                "it is down, so whether it has machines or volumes of the app cannot be known; use force=true to delete the app anyway",
            ));
        }
        for what in ["machines", "volumes"] {
            let uri: http::Uri = match format!("/v1/apps/{app}/{what}").parse() {
                Ok(u) => u,
                Err(_) => return Ok(()),
            };
            let r = send(c, &h, &Method::GET, &uri, headers, bytes::Bytes::new())
                .await
                .map_err(|e| unreachable(&h, &e))?;
            if r.status() == StatusCode::NOT_FOUND {
                continue;
            }
            let items: Vec<serde_json::Value> = r.json().await.unwrap_or_default();
            if !items.is_empty() {
                return Err(ApiError::Agent(hangar_agent::AgentError::Precondition(format!(
                    "app {app} has {} {what} on host {} ({}); destroy them first or use force=true",
                    items.len(),
                    h.id,
                    h.region
                )))
                .into_response());
            }
        }
    }
    Ok(())
}

fn unreachable(host: &hangar_cluster::HostInfo, why: &str) -> Response {
    ApiError::Unavailable(format!(
        "host {} ({}) is unreachable: {why}",
        host.id, host.region
    ))
    .into_response()
}

/// Sends `req` to `owner` and relays its answer (streamed: waits, event
/// and log streams work through it).
async fn forward(c: &ClusterApi, owner: &hangar_cluster::HostInfo, req: Request) -> Response {
    if owner.state != "up" {
        return unreachable(owner, "it is down");
    }
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, BODY_LIMIT).await {
        Ok(b) => b,
        Err(e) => {
            return ApiError::BadRequest(format!("request body: {e}")).into_response();
        }
    };
    match send(c, owner, &parts.method, &parts.uri, &parts.headers, body).await {
        Ok(resp) => relay(resp),
        Err(e) => unreachable(owner, &e),
    }
}

async fn send(
    c: &ClusterApi,
    owner: &hangar_cluster::HostInfo,
    method: &Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    body: bytes::Bytes,
) -> Result<reqwest::Response, String> {
    let url = format!(
        "{}{}",
        owner.api_url.trim_end_matches('/'),
        uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
    );
    let mut rb = c.http.request(method.clone(), url).body(body);
    for (k, v) in headers {
        if matches!(
            k.as_str(),
            "host" | "content-length" | "connection" | "transfer-encoding"
        ) {
            continue;
        }
        rb = rb.header(k, v);
    }
    rb.header(FORWARDED_BY, c.cluster.host_id())
        .send()
        .await
        .map_err(|e| hangar_core::errors::error_chain(&e))
}

fn relay(resp: reqwest::Response) -> Response {
    let status = resp.status();
    let mut out = Response::builder().status(status.as_u16());
    for (k, v) in resp.headers() {
        if matches!(
            k.as_str(),
            "content-length" | "connection" | "transfer-encoding"
        ) {
            continue;
        }
        out = out.header(k, v);
    }
    out.body(Body::from_stream(resp.bytes_stream()))
        .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}

/// An app's machines (or volumes) on every host: this host's, then each
/// of `others`' (hosts that are down are left out).
async fn list(
    c: &ClusterApi,
    others: Vec<hangar_cluster::HostInfo>,
    req: Request,
    next: Next,
    unreachable: impl Fn(&hangar_cluster::HostInfo) -> Vec<serde_json::Value>,
) -> Response {
    if others.is_empty() {
        return next.run(req).await;
    }
    let (method, uri, headers) = (
        req.method().clone(),
        req.uri().clone(),
        req.headers().clone(),
    );
    let local = next.run(req).await;
    if !local.status().is_success() {
        return local;
    }
    let Ok(bytes) = axum::body::to_bytes(local.into_body(), 64 << 20).await else {
        return ApiError::Agent(hangar_agent::AgentError::Internal(
            "reading this host's list".into(),
        ))
        .into_response();
    };
    let mut all: Vec<serde_json::Value> = serde_json::from_slice(&bytes).unwrap_or_default();
    for h in &others {
        if h.state != "up" {
            all.extend(unreachable(h));
            continue;
        }
        match send(c, h, &method, &uri, &headers, bytes::Bytes::new()).await {
            Ok(r) if r.status().is_success() => {
                if let Ok(more) = r.json::<Vec<serde_json::Value>>().await {
                    all.extend(more);
                }
            }
            Ok(r) => {
                tracing::warn!(host = %h.id, status = %r.status(), "listing on another host failed");
                all.extend(unreachable(h));
            }
            Err(e) => {
                tracing::warn!(host = %h.id, error = %e, "listing on another host failed");
                all.extend(unreachable(h));
            }
        }
    }
    axum::Json(all).into_response()
}

/// One answer of this host's and of each of `others`' (those that are up
/// and answer), merged into this host's.
async fn gather<T: serde::de::DeserializeOwned + serde::Serialize>(
    c: &ClusterApi,
    others: Vec<hangar_cluster::HostInfo>,
    req: Request,
    next: Next,
    merge: impl Fn(&mut T, T),
) -> Response {
    let (method, uri, headers) = (
        req.method().clone(),
        req.uri().clone(),
        req.headers().clone(),
    );
    let local = next.run(req).await;
    if others.is_empty() || !local.status().is_success() {
        return local;
    }
    let Ok(bytes) = axum::body::to_bytes(local.into_body(), 64 << 20).await else {
        return ApiError::Agent(hangar_agent::AgentError::Internal(
            "reading this host's answer".into(),
        ))
        .into_response();
    };
    let Ok(mut all) = serde_json::from_slice::<T>(&bytes) else {
        return ApiError::Agent(hangar_agent::AgentError::Internal(
            "reading this host's answer".into(),
        ))
        .into_response();
    };
    for h in others.iter().filter(|h| h.state == "up") {
        match send(c, h, &method, &uri, &headers, bytes::Bytes::new()).await {
            Ok(r) if r.status().is_success() => match r.json::<T>().await {
                Ok(theirs) => merge(&mut all, theirs),
                Err(e) => tracing::warn!(host = %h.id, error = %e, "another host's answer"),
            },
            Ok(r) => {
                tracing::warn!(host = %h.id, status = %r.status(), "asking another host failed")
            }
            Err(e) => tracing::warn!(host = %h.id, error = %e, "asking another host failed"),
        }
    }
    axum::Json(all).into_response()
}

fn merge_usage(all: &mut crate::usage::AppUsage, theirs: crate::usage::AppUsage) {
    all.machines.extend(theirs.machines);
    all.hosts.extend(theirs.hosts);
    let mut starts: Vec<(f64, f64)> = std::mem::take(&mut all.start_ms.t)
        .into_iter()
        .zip(std::mem::take(&mut all.start_ms.v))
        .chain(theirs.start_ms.t.into_iter().zip(theirs.start_ms.v))
        .collect();
    starts.sort_by(|a, b| a.0.total_cmp(&b.0));
    (all.start_ms.t, all.start_ms.v) = starts.into_iter().unzip();
}

fn merge_proxy(all: &mut crate::proxy_view::AppProxy, theirs: crate::proxy_view::AppProxy) {
    all.proxy |= theirs.proxy;
    all.machines.extend(theirs.machines);
    all.activity.extend(theirs.activity);
    all.activity.sort_by(|a, b| a.at.total_cmp(&b.at));
}

/// The machines the directory has of `app` on `host`, which cannot be
/// asked: as much of each as the directory knows, with Fly's
/// `host_status: "unreachable"`.
fn unreachable_machines(
    c: &ClusterApi,
    host: &hangar_cluster::HostInfo,
    app: &str,
) -> Vec<serde_json::Value> {
    c.cluster
        .machines_on(&host.id, app)
        .into_iter()
        .map(|(id, e)| {
            serde_json::json!({
                "id": id,
                "name": "",
                "state": e.state,
                "region": e.region,
                "instance_id": "",
                "version": "",
                "private_ip": e.private_ip.map(|a| a.to_string()).unwrap_or_default(),
                "created_at": "",
                "updated_at": "",
                "host_status": "unreachable",
            })
        })
        .collect()
}

/// Where a cluster-wide org listing stands: the host it is reading, and
/// that host's own cursor (none: from its start).
#[derive(serde::Serialize, serde::Deserialize)]
struct OrgCursor {
    host: String,
    cursor: Option<String>,
}

const ORG_CURSOR_PREFIX: &str = "hc";

/// `GET /v1/orgs/{org}/machines` across the cluster: the hosts one after
/// the other (by id), each read with its own cursor until it has no more,
/// so a page holds at most `limit` machines and paging loses none; the
/// `next_cursor` says which host and where. Hosts that are down or do not
/// answer are skipped and their regions named in `error_regions`, as Fly
/// does for regions it cannot reach.
async fn org_machines(c: &ClusterApi, req: Request, next: Next) -> Response {
    let bad = |m: String| ApiError::BadRequest(format!("invalid_argument: {m}")).into_response();
    let query: Vec<(String, String)> =
        url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let get = |k: &str| query.iter().find(|(q, _)| q == k).map(|(_, v)| v.clone());
    let limit = match get("limit").filter(|l| !l.is_empty()) {
        None => 100,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if n >= 1 => n.min(1000),
            _ => return bad(format!("invalid limit {l:?}")),
        },
    };
    let start = match get("cursor").filter(|c| !c.is_empty()) {
        None => None,
        Some(cur) => {
            let parsed = cur
                .strip_prefix(ORG_CURSOR_PREFIX)
                .and_then(|h| hex::decode(h).ok())
                .and_then(|b| serde_json::from_slice::<OrgCursor>(&b).ok());
            match parsed {
                Some(p) => Some(p),
                None => return bad(format!("invalid cursor {cur:?}")),
            }
        }
    };
    let me = c.cluster.host_id().to_owned();
    let mut hosts = c.cluster.hosts();
    hosts.sort_by(|a, b| a.id.cmp(&b.id));
    let first = match &start {
        Some(s) => match hosts.iter().position(|h| h.id == s.host) {
            Some(i) => i,
            None => {
                return bad(format!(
                    "the cursor's host {} is not in the cluster",
                    s.host
                ));
            }
        },
        None => 0,
    };
    let mut cursor = start.and_then(|s| s.cursor);
    let mut machines: Vec<serde_json::Value> = Vec::new();
    let mut error_regions: Vec<String> = Vec::new();
    let mut next_cursor = None;
    let path = req.uri().path().to_owned();
    let headers = req.headers().clone();
    let mut local = Some((req, next));
    for (i, h) in hosts.iter().enumerate().skip(first) {
        let want = limit - machines.len();
        let mut q: Vec<(String, String)> = query
            .iter()
            .filter(|(k, _)| k != "cursor" && k != "limit")
            .cloned()
            .collect();
        q.push(("limit".into(), want.to_string()));
        if let Some(cur) = cursor.take() {
            q.push(("cursor".into(), cur));
        }
        let qs = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(q)
            .finish();
        let page: Option<serde_json::Value> = if h.id == me {
            let Some((req, next)) = local.take() else {
                continue;
            };
            let (mut parts, body) = req.into_parts();
            match format!("{path}?{qs}").parse() {
                Ok(u) => parts.uri = u,
                Err(_) => return bad("bad query".into()),
            }
            let r = next.run(Request::from_parts(parts, body)).await;
            if !r.status().is_success() {
                // This host's answer (a bad filter, a bad token) is the
                // answer.
                return r;
            }
            match axum::body::to_bytes(r.into_body(), 64 << 20).await {
                Ok(b) => serde_json::from_slice(&b).ok(),
                Err(_) => None,
            }
        } else if h.state != "up" {
            None
        } else {
            match fetch(c, h, &format!("{path}?{qs}"), &headers).await {
                Ok(r) if r.status().is_success() => r.json().await.ok(),
                _ => None,
            }
        };
        let Some(page) = page else {
            if !error_regions.contains(&h.region) {
                error_regions.push(h.region.clone());
            }
            continue;
        };
        machines.extend(page["machines"].as_array().cloned().unwrap_or_default());
        let more = page["next_cursor"].as_str().map(str::to_owned);
        if machines.len() >= limit {
            // Full: go on from here (this host's next page, else the next
            // host's start).
            next_cursor = match more {
                Some(cur) => Some(OrgCursor {
                    host: h.id.clone(),
                    cursor: Some(cur),
                }),
                None => hosts.get(i + 1).map(|n| OrgCursor {
                    host: n.id.clone(),
                    cursor: None,
                }),
            };
            break;
        }
        if let Some(cur) = more {
            // A short page that says there is more (a filter took some):
            // go on with this host next time.
            next_cursor = Some(OrgCursor {
                host: h.id.clone(),
                cursor: Some(cur),
            });
            break;
        }
    }
    let last = machines.last().cloned().unwrap_or_default();
    let mut body = serde_json::json!({
        "machines": machines,
        "error_regions": error_regions,
    });
    if let Some(n) = next_cursor {
        body["next_cursor"] = serde_json::Value::String(format!(
            "{ORG_CURSOR_PREFIX}{}",
            hex::encode(serde_json::to_vec(&n).unwrap_or_default())
        ));
    }
    if let Some(id) = last["id"].as_str() {
        body["last_machine_id"] = id.into();
        body["last_updated_at"] = last["updated_at"].clone();
    }
    axum::Json(body).into_response()
}

/// A new volume: in its region (this host's when none is given), or for a
/// fork, on the source's host unless another region is asked for, where
/// the chosen host copies the source from its host.
async fn create_volume(c: &ClusterApi, app: &str, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, BODY_LIMIT).await {
        Ok(b) => b,
        Err(e) => {
            return ApiError::BadRequest(format!("request body: {e}")).into_response();
        }
    };
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let region = v
        .get("region")
        .and_then(|r| r.as_str())
        .filter(|r| !r.is_empty());
    let source = v
        .get("source_volume_id")
        .and_then(|r| r.as_str())
        .filter(|r| !r.is_empty())
        .map(|s| c.cluster.volume_owner(s));
    let me = c.cluster.host_id().to_owned();
    let host = match (source, region) {
        // A fork stays with its source unless a region says otherwise.
        (Some(Some(owner)), r) if r.is_none_or(|r| r == owner.region) => Some(owner),
        (Some(None), r) if r.is_none_or(|r| r == c.cluster.region()) => None,
        (_, None) => None,
        (_, r) => match c.cluster.place(r, 0, 0, &[]) {
            Ok(h) if h.id == me => None,
            Ok(h) => Some(h),
            Err(e) => {
                return ApiError::Agent(hangar_agent::AgentError::InsufficientCapacity(
                    e.to_string().replace("machine", "volume"),
                ))
                .into_response();
            }
        },
    };
    let Some(host) = host else {
        let resp = next.run(Request::from_parts(parts, Body::from(body))).await;
        c.cluster.poke();
        return resp;
    };
    let body = for_peers(c, v, "/config/image", body);
    match send_create(c, &host, &parts, body).await {
        Ok(r) if r.status().is_success() => {
            let status = r.status();
            let Ok(bytes) = r.bytes().await else {
                return unreachable(&host, "its answer was cut off");
            };
            if let Some(id) = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|m| m.get("id").and_then(|i| i.as_str()).map(str::to_owned))
            {
                c.cluster.note_volume(&id, app, &host.id);
            }
            Response::builder()
                .status(status.as_u16())
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Body::from(bytes))
                .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
        }
        Ok(r) => relay(r),
        Err(e) => unreachable(&host, &e),
    }
}

/// Sends a create to `host`; while it does not know the app yet (made
/// here a moment ago, on its way through the cluster's change log), sends
/// it again for up to five seconds.
async fn send_create(
    c: &ClusterApi,
    host: &hangar_cluster::HostInfo,
    parts: &http::request::Parts,
    body: bytes::Bytes,
) -> Result<reqwest::Response, String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let r = send(
            c,
            host,
            &parts.method,
            &parts.uri,
            &parts.headers,
            body.clone(),
        )
        .await?;
        if r.status() != StatusCode::NOT_FOUND || std::time::Instant::now() >= deadline {
            return Ok(r);
        }
        let app_known_here = parts
            .uri
            .path()
            .split('/')
            .nth(3)
            .is_some_and(|app| c.cluster.app_exists_here(app));
        if !app_known_here {
            return Ok(r);
        }
        c.cluster.poke();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Sends a GET for `path` to `host` with the client's credentials (a fork
/// across hosts reads its source's export so).
pub async fn fetch(
    c: &ClusterApi,
    host: &hangar_cluster::HostInfo,
    path: &str,
    headers: &HeaderMap,
) -> Result<reqwest::Response, String> {
    let uri: http::Uri = path.parse().map_err(|e| format!("{path}: {e}"))?;
    send(c, host, &Method::GET, &uri, headers, bytes::Bytes::new()).await
}

/// A new machine: on the host placement picks (this one, or forwarded).
async fn create(c: &ClusterApi, app: &str, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, BODY_LIMIT).await {
        Ok(b) => b,
        Err(e) => {
            return ApiError::BadRequest(format!("request body: {e}")).into_response();
        }
    };
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let region = v.get("region").and_then(|r| r.as_str());
    let guest = v.pointer("/config/guest");
    let cpus = guest
        .and_then(|g| g.get("cpus"))
        .and_then(|c| c.as_u64())
        .unwrap_or(1);
    let memory = guest
        .and_then(|g| g.get("memory_mb"))
        .and_then(|m| m.as_u64())
        .unwrap_or(256);
    let standbys: Vec<String> = v
        .pointer("/config/standbys")
        .and_then(|s| s.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    // A machine with a volume runs where its volume is.
    let volume_host = v
        .pointer("/config/mounts")
        .and_then(|m| m.as_array())
        .into_iter()
        .flatten()
        .filter_map(|m| m.get("volume").and_then(|x| x.as_str()))
        .find_map(|id| c.cluster.volume_owner(id));
    let host = match volume_host {
        Some(h) => {
            if let Some(r) = region.filter(|r| !r.is_empty() && *r != h.region) {
                return ApiError::Agent(hangar_agent::AgentError::Unprocessable(format!(
                    "the machine's volume is in region '{}' (host {}), not '{r}': a machine runs where its volume is (hangar volumes fork --region {r} copies it)",
                    h.region, h.id
                )))
                .into_response();
            }
            h
        }
        None => match c.cluster.place(
            region,
            u32::try_from(cpus).unwrap_or(u32::MAX),
            memory,
            &standbys,
        ) {
            Ok(h) => h,
            Err(e) => {
                return ApiError::Agent(hangar_agent::AgentError::InsufficientCapacity(
                    e.to_string(),
                ))
                .into_response();
            }
        },
    };
    if host.id == c.cluster.host_id() {
        let resp = next.run(Request::from_parts(parts, Body::from(body))).await;
        c.cluster.poke();
        return resp;
    }
    match send_create(c, &host, &parts, body).await {
        Ok(r) if r.status().is_success() => {
            let status = r.status();
            let headers = r.headers().clone();
            let Ok(bytes) = r.bytes().await else {
                return unreachable(&host, "its answer was cut off");
            };
            if let Some(id) = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|m| m.get("id").and_then(|i| i.as_str()).map(str::to_owned))
            {
                c.cluster.note_machine(&id, app, &host.id);
            }
            let mut out = Response::builder().status(status.as_u16());
            if let Some(ct) = headers.get(http::header::CONTENT_TYPE) {
                out = out.header(http::header::CONTENT_TYPE, ct);
            }
            out.body(Body::from(bytes))
                .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
        }
        Ok(r) => relay(r),
        Err(e) => unreachable(&host, &e),
    }
}

/// `body` (parsed as `v`) with the image at `pointer` named as another
/// host must name it (see [`ClusterApi::image_for_peers`]), or as it was.
fn for_peers(
    c: &ClusterApi,
    mut v: serde_json::Value,
    pointer: &str,
    body: bytes::Bytes,
) -> bytes::Bytes {
    let Some(image) = v
        .pointer(pointer)
        .and_then(|i| i.as_str())
        .and_then(|i| c.image_for_peers(i))
    else {
        return body;
    };
    if let Some(slot) = v.pointer_mut(pointer) {
        *slot = serde_json::Value::String(image);
    }
    serde_json::to_vec(&v)
        .map(bytes::Bytes::from)
        .unwrap_or(body)
}

/// Where an app's releases run: the host that holds its machines.
enum Home {
    /// This host holds the app's machines (the most of them).
    Here,
    /// Another host does.
    There(Box<hangar_cluster::HostInfo>),
    /// No host holds any.
    Nowhere,
}

fn release_home(c: &ClusterApi, s: &ApiState, app: &str) -> Home {
    let here = local_machines(s, app);
    match c.cluster.machine_counts(app).into_iter().next() {
        Some((h, n)) if n > here => Home::There(Box::new(h)),
        _ if here > 0 => Home::Here,
        _ => Home::Nowhere,
    }
}

fn local_machines(s: &ApiState, app: &str) -> usize {
    s.agent
        .list_machines(app, false)
        .map(|l| l.len())
        .unwrap_or(0)
}

/// The first other host that is up and answers `GET path` with a 200.
async fn first_with(
    c: &ClusterApi,
    path: &str,
    headers: &HeaderMap,
) -> Option<hangar_cluster::HostInfo> {
    let me = c.cluster.host_id().to_owned();
    for h in c.cluster.hosts() {
        if h.id == me || h.state != "up" {
            continue;
        }
        let Ok(r) = fetch(c, &h, path, headers).await else {
            continue;
        };
        if r.status() == StatusCode::OK {
            return Some(h);
        }
    }
    None
}

/// A new release (a deploy, rollback, scale or restart, or its plan):
/// run by the host that holds the app's machines, or, for an app with
/// none yet, by a host of the region its fly.toml names as primary. A
/// release changes the machines of the host that runs it, so an app whose
/// machines are spread over several hosts is refused rather than half
/// deployed.
async fn release(c: &ClusterApi, s: &ApiState, app: &str, req: Request, next: Next) -> Response {
    let here = local_machines(s, app);
    let others = c.cluster.machine_counts(app);
    let host = match (here, others.as_slice()) {
        (0, []) => None,
        (_, []) => return at_owner(c, None, req, next).await,
        (0, [(h, _)]) => Some(h.clone()),
        _ => {
            let me = c.cluster.host(c.cluster.host_id());
            let mut spread: Vec<String> = others
                .iter()
                .map(|(h, n)| format!("{n} on host {} ({})", h.id, h.region))
                .collect();
            if let Some(me) = me.filter(|_| here > 0) {
                spread.insert(0, format!("{here} on host {} ({})", me.id, me.region));
            }
            return ApiError::Agent(hangar_agent::AgentError::Unprocessable(format!(
                "app {app} has machines on several hosts ({}): a release runs on one host and changes the machines there; destroy or move the others first",
                spread.join(", ")
            )))
            .into_response();
        }
    };
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, BODY_LIMIT).await {
        Ok(b) => b,
        Err(e) => {
            return ApiError::BadRequest(format!("request body: {e}")).into_response();
        }
    };
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let host = match host {
        Some(h) => h,
        None => {
            // No machines anywhere: the primary region decides.
            let region = v
                .pointer("/definition/primary_region")
                .and_then(|r| r.as_str())
                .filter(|r| !r.is_empty());
            match c.cluster.place(region, 1, 256, &[]) {
                Ok(h) => h,
                Err(e) => {
                    return ApiError::Agent(hangar_agent::AgentError::Unprocessable(e.to_string()))
                        .into_response();
                }
            }
        }
    };
    if host.id == c.cluster.host_id() {
        let resp = next
            .run(Request::from_parts(parts, Body::from(bytes)))
            .await;
        c.cluster.poke();
        return resp;
    }
    let body = for_peers(c, v, "/image", bytes);
    forward(c, &host, Request::from_parts(parts, Body::from(body))).await
}
