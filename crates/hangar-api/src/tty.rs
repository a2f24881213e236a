//! Hangar's interactive-terminal extension (a path Fly's Machines API does
//! not use): `GET /v1/hangar/apps/{app}/machines/{id}/exec/tty` upgrades to
//! a WebSocket attached to a command running with a terminal in the
//! machine (what `hangar machine exec -it` and `hangar machine run --shell`
//! use; Fly reaches machines over SSH instead).
//!
//! Protocol: binary messages carry bytes, client to server as keystrokes
//! and server to client as terminal output; the client sends text
//! `{"resize":{"rows":R,"cols":C}}` when its window changes; when the
//! command ends the server sends text `{"exit_code":N}` and closes. A
//! client that goes away ends the command.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use hangar_runtime::{Terminal, TtyRequest};
use serde::Deserialize;

use crate::Shared;
use crate::error::{ApiError, ApiResult};
use crate::extract::Params;
// Types named only in the OpenAPI annotations below.
#[allow(unused_imports)]
use hangar_api_types::*;

#[derive(Deserialize)]
struct Control {
    resize: Option<Size>,
}

#[derive(Deserialize)]
struct Size {
    rows: u16,
    cols: u16,
}

fn size(p: &Params, key: &str, default: u16) -> ApiResult<u16> {
    match p.get(key).filter(|v| !v.is_empty()) {
        None => Ok(default),
        Some(v) => v
            .parse::<u16>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "invalid_argument: {key} must be a number from 1 to 1000, not {v:?}"
                ))
            }),
    }
}

/// `GET /v1/hangar/apps/{app}/machines/{id}/exec/tty?command=...&rows=&cols=&term=`.
#[utoipa::path(get, path = "/v1/hangar/apps/{app_name}/machines/{machine_id}/exec/tty", operation_id = "Machines_exec_tty", tag = "Hangar extensions", params(("app_name" = String, Path, description = "App name"), ("machine_id" = String, Path, description = "Machine id"), ("command" = Vec<String>, Query, description = "Program and arguments, one `command` parameter each (default /bin/sh)"), ("rows" = Option<u16>, Query, description = "Terminal height (default 24)"), ("cols" = Option<u16>, Query, description = "Terminal width (default 80)"), ("term" = Option<String>, Query, description = "TERM for the command (default xterm-256color)")), responses((status = 101, description = "WebSocket: binary messages carry terminal bytes both ways; the client sends text {\"resize\":{\"rows\":R,\"cols\":C}}; the server ends with text {\"exit_code\":N}"), (status = 400, description = "Bad request or not a WebSocket request", body = ErrorResponse), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse), (status = 412, description = "The machine is not running", body = ErrorResponse)))]
pub async fn tty(
    State(s): State<Shared>,
    Path((app, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let ws = ws.map_err(|e| {
        ApiError::BadRequest(format!("this endpoint needs a WebSocket upgrade: {e}"))
    })?;
    let p = Params::parse(q.as_deref());
    let mut argv: Vec<String> = p.values("command");
    if argv.is_empty() {
        argv = vec!["/bin/sh".into()];
    }
    let term = p
        .get("term")
        .filter(|t| !t.is_empty())
        .unwrap_or("xterm-256color");
    if term.contains('\0') || term.contains('=') {
        return Err(ApiError::BadRequest(format!(
            "invalid_argument: invalid term {term:?}"
        )));
    }
    let req = TtyRequest {
        argv,
        env: vec![("TERM".into(), term.into())],
        rows: size(&p, "rows", 24)?,
        cols: size(&p, "cols", 80)?,
    };
    // Start the command before upgrading, so that failures are HTTP errors.
    let terminal = s.agent.exec_tty(&app, &id, req).await?;
    Ok(ws.on_upgrade(move |socket| session(socket, terminal)))
}

async fn session(mut ws: WebSocket, mut term: Box<dyn Terminal>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            n = term.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if ws.send(Message::Binary(buf[..n].to_vec().into())).await.is_err() {
                        // The client is gone: dropping the terminal ends the command.
                        return;
                    }
                }
            },
            msg = ws.recv() => match msg {
                Some(Ok(Message::Binary(data))) => {
                    if term.write(&data).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Text(text))) => {
                    if let Ok(Control { resize: Some(sz) }) = serde_json::from_str(&text) {
                        let _ = term.resize(sz.rows.clamp(1, 1000), sz.cols.clamp(1, 1000));
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
            },
        }
    }
    let code = term.wait().await.unwrap_or(-1);
    let _ = ws
        .send(Message::Text(
            serde_json::json!({ "exit_code": code }).to_string().into(),
        ))
        .await;
    let _ = ws.send(Message::Close(None)).await;
}
