//! Hangar's logs extension (a path Fly's Machines API does not use):
//! `GET /v1/hangar/apps/{app}/logs`, the stdout and stderr lines of an
//! app's machines as JSON lines, oldest first; with `follow=true` the
//! response stays open and carries new lines as they are written.

use axum::body::Body as HttpBody;
use axum::extract::{Path, RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hangar_agent::logs::{LogQuery, LogRecord};
use hangar_api_types::LogEntry;

use crate::Shared;
use crate::error::{ApiError, ApiResult};
use crate::extract::Params;
// Types named only in the OpenAPI annotations below.
#[allow(unused_imports)]
use hangar_api_types::*;

fn line(r: LogRecord) -> Bytes {
    let mut v = serde_json::to_vec(&LogEntry {
        timestamp: r.timestamp,
        machine_id: r.machine_id,
        region: r.region,
        stream: r.stream,
        message: r.message,
    })
    .unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

/// `GET /v1/hangar/apps/{app}/logs?machine_id=&since=&tail=&follow=`.
#[utoipa::path(get, path = "/v1/hangar/apps/{app_name}/logs", operation_id = "Logs_list", tag = "Hangar extensions", params(("app_name" = String, Path, description = "App name"), ("machine_id" = Option<String>, Query, description = "Only this machine (id or name; `instance` works too)"), ("since" = Option<String>, Query, description = "Only lines at or after this RFC 3339 time"), ("tail" = Option<i64>, Query, description = "At most this many of the newest lines (default 100, at most 10000)"), ("follow" = Option<bool>, Query, description = "Keep the response open and stream new lines")), responses((status = 200, description = "One LogEntry per line", content_type = "application/x-ndjson", body = LogEntry), (status = 400, description = "Bad request", body = ErrorResponse), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse)))]
pub async fn logs(
    State(s): State<Shared>,
    Path(app): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let p = Params::parse(q.as_deref());
    let tail =
        match p.get("tail").filter(|t| !t.is_empty()) {
            None => None,
            Some(t) => Some(t.parse::<usize>().map_err(|_| {
                ApiError::BadRequest(format!("invalid_argument: invalid tail {t:?}"))
            })?),
        };
    let query = LogQuery {
        machine: p
            .get("machine_id")
            .or_else(|| p.get("instance"))
            .map(str::to_owned),
        since: p.get("since").filter(|s| !s.is_empty()).map(str::to_owned),
        tail,
    };
    let ndjson = [(header::CONTENT_TYPE, "application/x-ndjson")];
    if !p.bool("follow")? {
        let body: Vec<u8> = s
            .agent
            .read_logs(&app, &query)?
            .into_iter()
            .flat_map(|r| line(r).to_vec())
            .collect();
        return Ok((ndjson, body).into_response());
    }
    let rx = s.agent.follow_logs(&app, query)?;
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|r| (Ok::<_, std::convert::Infallible>(line(r)), rx))
    });
    Ok((ndjson, HttpBody::from_stream(stream)).into_response())
}
