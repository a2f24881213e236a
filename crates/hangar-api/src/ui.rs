//! The web dashboard at `/ui/`: a page and its script and styles, embedded
//! in the binary, that drive the API from the browser.
//!
//! Logging in (`/ui/?token=T`, or the form's `POST /ui/login`) checks the
//! token and keeps it in an HttpOnly, `SameSite=Strict` session cookie,
//! then redirects to a URL without it; the API accepts that cookie in
//! place of a bearer token (with the token's own scope), only with the
//! `x-hangar-ui` header, which another origin's page cannot send. `GET /v1/hangar/apps/{app}/watch` streams a
//! server-sent event whenever this host's state changes, so the pages
//! follow machines live without reloading.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, SET_COOKIE};
use http::{HeaderMap, HeaderValue};

use crate::Shared;
use crate::{ApiError, ApiState};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "hangar_session";
/// The header the dashboard sends with every call that changes something.
pub const UI_HEADER: &str = "x-hangar-ui";

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/style.css");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The dashboard's routes (outside the API's authentication: the page
/// itself holds nothing, and logging in is how a session starts).
pub fn router(state: crate::Shared) -> Router {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(index))
        .route(
            "/ui/app.js",
            get(|| asset("text/javascript; charset=utf-8", SCRIPT)),
        )
        .route(
            "/ui/style.css",
            get(|| asset("text/css; charset=utf-8", STYLE)),
        )
        .route("/ui/login", post(login))
        .route("/ui/logout", post(logout))
        .with_state(state)
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, content_type),
            (CACHE_CONTROL, "no-cache"),
            (CONTENT_SECURITY_POLICY, CSP),
        ],
        body,
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// `GET /ui/`: the page; with `?token=` it logs in first.
async fn index(State(s): State<Shared>, Query(q): Query<TokenQuery>) -> Response {
    if let Some(token) = q.token {
        return start_session(&s, &token);
    }
    (
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (CACHE_CONTROL, "no-store"),
            (CONTENT_SECURITY_POLICY, CSP),
        ],
        INDEX,
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct LoginForm {
    token: String,
}

/// `POST /ui/login` (the page's form).
async fn login(State(s): State<Shared>, axum::Form(f): axum::Form<LoginForm>) -> Response {
    start_session(&s, &f.token)
}

/// `POST /ui/logout`: the cookie is cleared.
async fn logout() -> Response {
    let mut r = Redirect::to("/ui/").into_response();
    r.headers_mut().insert(
        SET_COOKIE,
        HeaderValue::from_static("hangar_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    r
}

/// Checks `token` and answers with the session cookie and a redirect to
/// the page (without the token in its URL); a bad token goes back to the
/// login form with a message.
fn start_session(s: &ApiState, token: &str) -> Response {
    let token = token.trim();
    let valid = HeaderValue::from_str(&format!("Bearer {token}"))
        .ok()
        .filter(|_| !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic()))
        .is_some_and(|h| s.auth.principal(Some(&h), &s.agent).is_ok());
    if !valid {
        return Redirect::to("/ui/#/login?failed=1").into_response();
    }
    let mut r = Redirect::to("/ui/").into_response();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"
    )) {
        r.headers_mut().insert(SET_COOKIE, v);
    }
    r
}

/// The session's token in the request's cookies, if any.
pub fn session_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

/// `GET /v1/hangar/apps/{app}/watch`: a `change` event now and whenever
/// this host's state changes (machines, releases, volumes...), for pages
/// to fetch what they show again.
#[utoipa::path(get, path = "/v1/hangar/apps/{app_name}/watch", operation_id = "Apps_watch", tag = "Hangar extensions", params(("app_name" = String, Path, description = "App name")), responses((status = 200, description = "Server-sent events: `change` with this host's state version, whenever it changes", content_type = "text/event-stream", body = String), (status = 401, description = "No or bad token", body = hangar_api_types::ErrorResponse), (status = 404, description = "Not found", body = hangar_api_types::ErrorResponse)))]
pub async fn watch(
    State(s): State<Shared>,
    Path(app): Path<String>,
) -> Result<Sse<impl futures::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    s.agent.get_app(&app)?;
    let agent = s.agent.clone();
    let stream = futures::stream::unfold(None::<u64>, move |last| {
        let agent = agent.clone();
        async move {
            loop {
                let now = agent.state_version();
                if last != Some(now) {
                    let ev = Event::default().event("change").data(now.to_string());
                    return Some((Ok(ev), Some(now)));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// Whether a request authenticated by the session cookie may go on: only
/// with the dashboard's header, which only the dashboard's own page can
/// send (a page of another origin would need a CORS preflight, which
/// hangard never grants; a WebSocket cannot send it at all). `SameSite`
/// alone is not enough: an app served by the proxy on the same host is
/// the same site. The one exception is the watch stream, which an
/// `EventSource` opens without headers and which tells only a number.
pub fn cookie_may(method: &http::Method, path: &str, headers: &HeaderMap) -> Result<(), ApiError> {
    let watch = *method == http::Method::GET
        && path.starts_with("/v1/hangar/apps/")
        && path.ends_with("/watch");
    if headers.contains_key(UI_HEADER) || watch {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "a dashboard session is taken only with the {UI_HEADER} header"
        )))
    }
}
