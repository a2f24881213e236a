//! The OCI registry on the API's listener (`/v2/`, the distribution
//! spec's push and pull): repositories are apps (`<hangard>/<app>:<tag>`).
//! Credentials are a Hangar token, as HTTP basic (any user name, the token
//! as the password, as flyctl uses registry.fly.io) or Bearer; an app's
//! token reaches its app's repository only. Anything without valid
//! credentials is a 401 with the `WWW-Authenticate` challenge clients
//! expect. Storage is [`hangar_registry::Storage`].

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use hangar_registry::{RegistryError, Storage};

use crate::Shared;
use crate::extract::Params;
use crate::{ApiState, Principal};

const API_VERSION: &str = "registry/2.0";

/// The `/v2` routes, with their own authentication.
pub fn router(state: crate::Shared) -> Router {
    Router::new()
        .route("/v2/", get(base))
        .route("/v2", get(base))
        .route("/v2/{name}/blobs/uploads/", post(start_upload))
        .route("/v2/{name}/blobs/uploads", post(start_upload))
        .route(
            "/v2/{name}/blobs/uploads/{id}",
            get(upload_status)
                .patch(upload_chunk)
                .put(upload_commit)
                .delete(upload_cancel),
        )
        .route(
            "/v2/{name}/blobs/{digest}",
            get(blob).head(blob).delete(blob_delete),
        )
        .route(
            "/v2/{name}/manifests/{reference}",
            get(manifest)
                .head(manifest)
                .put(put_manifest)
                .delete(delete_manifest),
        )
        .route("/v2/{name}/tags/list", get(tags))
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state)
}

/// A registry error in the distribution spec's shape.
struct RegErr(StatusCode, &'static str, String);

impl IntoResponse for RegErr {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"errors": [{"code": self.1, "message": self.2}]});
        let mut r = (self.0, axum::Json(body)).into_response();
        r.headers_mut().insert(
            "docker-distribution-api-version",
            HeaderValue::from_static(API_VERSION),
        );
        if self.0 == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"hangar\""),
            );
        }
        r
    }
}

impl From<RegistryError> for RegErr {
    fn from(e: RegistryError) -> RegErr {
        let status = match &e {
            RegistryError::BlobUnknown(_)
            | RegistryError::UploadUnknown(_)
            | RegistryError::ManifestUnknown(_) => StatusCode::NOT_FOUND,
            RegistryError::RangeInvalid { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            RegistryError::Io { .. } => {
                tracing::error!(error = %hangar_core::errors::error_chain(&e), "registry storage");
                return RegErr(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "UNKNOWN",
                    "internal error; see hangard's log".into(),
                );
            }
            _ => StatusCode::BAD_REQUEST,
        };
        RegErr(status, e.code(), e.to_string())
    }
}

type RegResult<T> = Result<T, RegErr>;

fn storage(s: &ApiState) -> RegResult<&Storage> {
    s.registry.as_ref().ok_or_else(|| {
        RegErr(
            StatusCode::NOT_FOUND,
            "UNSUPPORTED",
            "this hangard has no registry".into(),
        )
    })
}

/// The token of a registry request: basic (password) or bearer.
fn token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (_, password) = text.split_once(':')?;
        Some(password.to_owned())
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Some(rest.trim().to_owned())
    } else {
        None
    }
}

async fn authenticate(State(s): State<Shared>, mut req: Request, next: Next) -> Response {
    let unauthorized =
        |m: &str| RegErr(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", m.into()).into_response();
    let Some(t) = token(req.headers()) else {
        return unauthorized("authentication required: a Hangar token as the password");
    };
    let Ok(header) = HeaderValue::from_str(&format!("Bearer {t}")) else {
        return unauthorized("bad credentials");
    };
    let principal = match s.auth.principal(Some(&header), &s.agent) {
        Ok(p) => p,
        Err(_) => return unauthorized("bad credentials"),
    };
    // /v2/<name>/...: an app token reaches its app only.
    let name = req
        .uri()
        .path()
        .strip_prefix("/v2/")
        .and_then(|p| p.split('/').next())
        .filter(|n| !n.is_empty())
        .map(str::to_owned);
    if let (Principal::App { app, .. }, Some(name)) = (&principal, &name) {
        if app != name {
            return RegErr(
                StatusCode::FORBIDDEN,
                "DENIED",
                format!("this token may push and pull app {app} only"),
            )
            .into_response();
        }
    }
    if let Some(name) = &name {
        if s.agent.get_app(name).is_err() {
            return RegErr(
                StatusCode::NOT_FOUND,
                "NAME_UNKNOWN",
                format!("repository {name}: no such app (create it first)"),
            )
            .into_response();
        }
    }
    req.extensions_mut().insert(principal);
    let mut r = next.run(req).await;
    r.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static(API_VERSION),
    );
    r
}

async fn base() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], "{}")
}

fn upload_headers(name: &str, id: &str, size: u64) -> [(header::HeaderName, String); 3] {
    [
        (header::LOCATION, format!("/v2/{name}/blobs/uploads/{id}")),
        (
            header::HeaderName::from_static("docker-upload-uuid"),
            id.to_owned(),
        ),
        (header::RANGE, format!("0-{}", size.saturating_sub(1))),
    ]
}

fn created(name: &str, digest: &str) -> Response {
    (
        StatusCode::CREATED,
        [
            (header::LOCATION, format!("/v2/{name}/blobs/{digest}")),
            (
                header::HeaderName::from_static("docker-content-digest"),
                digest.to_owned(),
            ),
        ],
    )
        .into_response()
}

/// `POST /v2/<name>/blobs/uploads/`: a session, or (`?digest=`) the whole
/// blob at once; a cross-repository `mount` falls back to a session.
async fn start_upload(
    State(s): State<Shared>,
    Path(name): Path<String>,
    axum::Extension(who): axum::Extension<Principal>,
    RawQuery(q): RawQuery,
    body: Body,
) -> RegResult<Response> {
    let st = storage(&s)?;
    let p = Params::parse(q.as_deref());
    // A cross-repository mount, for a client that may read the other
    // repository (the admin token; an app token reaches one app).
    if let (Some(digest), Some(from)) = (
        p.get("mount").filter(|d| !d.is_empty()),
        p.get("from").filter(|f| !f.is_empty()),
    ) {
        let may = match &who {
            Principal::Admin => true,
            Principal::App { app, .. } => app == from,
        };
        if may && st.mount(&name, from, digest)? {
            return Ok(created(&name, digest));
        }
    }
    let id = st.start_upload(&name)?;
    if let Some(digest) = p.get("digest").filter(|d| !d.is_empty()) {
        st.commit(&name, &id, digest, body.into_data_stream())
            .await?;
        return Ok(created(&name, digest));
    }
    Ok((StatusCode::ACCEPTED, upload_headers(&name, &id, 0)).into_response())
}

async fn upload_status(
    State(s): State<Shared>,
    Path((name, id)): Path<(String, String)>,
) -> RegResult<Response> {
    let size = storage(&s)?.upload_size(&name, &id)?;
    Ok((StatusCode::NO_CONTENT, upload_headers(&name, &id, size)).into_response())
}

/// `PATCH`: a chunk (in order, with `Content-Range`) or the whole stream.
async fn upload_chunk(
    State(s): State<Shared>,
    Path((name, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> RegResult<Response> {
    let start = match headers
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
    {
        None => None,
        Some(r) => Some(
            r.trim()
                .trim_start_matches("bytes")
                .trim_start_matches([' ', '='])
                .split('-')
                .next()
                .and_then(|n| n.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    RegErr(
                        StatusCode::BAD_REQUEST,
                        "BLOB_UPLOAD_INVALID",
                        format!("bad Content-Range {r:?}"),
                    )
                })?,
        ),
    };
    let size = storage(&s)?
        .append(&name, &id, start, body.into_data_stream())
        .await?;
    Ok((StatusCode::ACCEPTED, upload_headers(&name, &id, size)).into_response())
}

/// `PUT ?digest=`: commit, with the last bytes (or all of them) in the body.
async fn upload_commit(
    State(s): State<Shared>,
    Path((name, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    body: Body,
) -> RegResult<Response> {
    let p = Params::parse(q.as_deref());
    let digest = p.get("digest").filter(|d| !d.is_empty()).ok_or_else(|| {
        RegErr(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            "the digest query parameter is required".into(),
        )
    })?;
    storage(&s)?
        .commit(&name, &id, digest, body.into_data_stream())
        .await?;
    Ok(created(&name, digest))
}

async fn upload_cancel(
    State(s): State<Shared>,
    Path((name, id)): Path<(String, String)>,
) -> RegResult<StatusCode> {
    storage(&s)?.cancel(&name, &id)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET`/`HEAD /v2/<name>/blobs/<digest>`.
async fn blob(
    State(s): State<Shared>,
    Path((name, digest)): Path<(String, String)>,
    method: Method,
) -> RegResult<Response> {
    let (path, len) = storage(&s)?.blob(&name, &digest)?.ok_or_else(|| {
        RegErr(
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
            format!("blob {digest}"),
        )
    })?;
    let headers = [
        (header::CONTENT_LENGTH, len.to_string()),
        (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
        (
            header::HeaderName::from_static("docker-content-digest"),
            digest.clone(),
        ),
    ];
    if method == Method::HEAD {
        return Ok((headers, Body::empty()).into_response());
    }
    let file = tokio::fs::File::open(&path).await.map_err(|_| {
        RegErr(
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
            format!("blob {digest}"),
        )
    })?;
    let stream = tokio_util::io::ReaderStream::new(file);
    Ok((headers, Body::from_stream(stream)).into_response())
}

async fn blob_delete() -> RegErr {
    RegErr(
        StatusCode::METHOD_NOT_ALLOWED,
        "UNSUPPORTED",
        "blobs go with garbage collection (hangar image prune), not by hand".into(),
    )
}

/// `GET`/`HEAD /v2/<name>/manifests/<tag or digest>`: as pushed, with its
/// media type.
async fn manifest(
    State(s): State<Shared>,
    Path((name, reference)): Path<(String, String)>,
    method: Method,
) -> RegResult<Response> {
    let m = storage(&s)?.manifest(&name, &reference)?;
    let headers = [
        (header::CONTENT_TYPE, m.media_type),
        (header::CONTENT_LENGTH, m.bytes.len().to_string()),
        (
            header::HeaderName::from_static("docker-content-digest"),
            m.digest,
        ),
    ];
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::from(m.bytes)
    };
    Ok((headers, body).into_response())
}

/// Manifests above this size are refused.
const MAX_MANIFEST: usize = 4 << 20;

async fn put_manifest(
    State(s): State<Shared>,
    Path((name, reference)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> RegResult<Response> {
    let bytes = axum::body::to_bytes(body, MAX_MANIFEST)
        .await
        .map_err(|_| {
            RegErr(
                StatusCode::PAYLOAD_TOO_LARGE,
                "SIZE_INVALID",
                format!("a manifest is at most {MAX_MANIFEST} bytes"),
            )
        })?;
    let media_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let digest = storage(&s)?.put_manifest(&name, &reference, media_type, &bytes)?;
    Ok((
        StatusCode::CREATED,
        [
            (header::LOCATION, format!("/v2/{name}/manifests/{digest}")),
            (
                header::HeaderName::from_static("docker-content-digest"),
                digest,
            ),
        ],
    )
        .into_response())
}

async fn delete_manifest(
    State(s): State<Shared>,
    Path((name, reference)): Path<(String, String)>,
) -> RegResult<StatusCode> {
    if !reference.starts_with("sha256:") {
        return Err(RegErr(
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
            "delete a manifest by its digest".into(),
        ));
    }
    // What a release or machine runs stays (rollbacks and restarts need it).
    if let Some((_, user)) = in_use_by(&s.agent, &name)
        .into_iter()
        .find(|(d, _)| *d == reference)
    {
        return Err(RegErr(
            StatusCode::CONFLICT,
            "DENIED",
            format!("{name}@{reference} is the image of {user}; it stays while in use"),
        ));
    }
    storage(&s)?.delete_manifest(&name, &reference)?;
    Ok(StatusCode::ACCEPTED)
}

/// `GET /v2/<name>/tags/list?n=&last=`.
async fn tags(
    State(s): State<Shared>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> RegResult<Response> {
    let p = Params::parse(q.as_deref());
    let n = match p.get("n").filter(|n| !n.is_empty()) {
        None => None,
        Some(n) => Some(n.parse::<usize>().map_err(|_| {
            RegErr(
                StatusCode::BAD_REQUEST,
                "PAGINATION_NUMBER_INVALID",
                format!("n {n:?}"),
            )
        })?),
    };
    let last = p.get("last").filter(|l| !l.is_empty());
    let list = storage(&s)?.tags(&name, n.map(|n| n + 1), last)?;
    let more = n.is_some_and(|n| list.len() > n);
    let shown: Vec<String> = list.into_iter().take(n.unwrap_or(usize::MAX)).collect();
    let mut r = axum::Json(serde_json::json!({"name": name, "tags": shown})).into_response();
    if more {
        if let Some(l) = shown.last() {
            if let Ok(v) = HeaderValue::from_str(&format!(
                "</v2/{name}/tags/list?n={}&last={l}>; rel=\"next\"",
                n.unwrap_or(0)
            )) {
                r.headers_mut().insert(header::LINK, v);
            }
        }
    }
    Ok(r)
}

/// What the registry must keep: `(app, digest)` of every release's image
/// and every machine's image (releases and machines keep their images).
pub fn in_use(agent: &hangar_agent::Agent) -> Vec<(String, String)> {
    agent
        .list_apps(hangar_agent::DEFAULT_ORG)
        .unwrap_or_default()
        .into_iter()
        .flat_map(|app| {
            in_use_by(agent, &app.name)
                .into_iter()
                .map(move |(digest, _)| (app.name.clone(), digest))
        })
        .collect()
}

/// The image digests app `app`'s releases and machines use, each with who
/// uses it (`release vN`, `machine ID`).
fn in_use_by(agent: &hangar_agent::Agent, app: &str) -> Vec<(String, String)> {
    let releases = agent
        .list_releases(app, 100_000)
        .unwrap_or_default()
        .into_iter()
        .filter(|r| !r.image_digest.is_empty())
        .map(|r| (r.image_digest, format!("release v{}", r.version)));
    let machines = agent
        .list_machines(app, false)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| {
            let id = m.id.to_string();
            m.image_ref
                .filter(|i| !i.digest.is_empty())
                .map(|i| (i.digest, format!("machine {id}")))
        });
    releases.chain(machines).collect()
}

/// Blobs younger than this are never collected (a push may still be
/// bringing the manifest that names them).
pub const GC_MIN_AGE: std::time::Duration = std::time::Duration::from_secs(3600);
