//! Machine operations beyond the basic lifecycle: update and versions,
//! restart, signal, suspend, cordon, leases, metadata, exec, ps, memory.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use hangar_agent::UpdateMachine;
use hangar_api_types::{
    CreateLeaseRequest, ExecResponse, Lease, LeaseEnvelope, ListenSocket, Machine,
    MachineExecRequest, MachineVersion, MemoryResponse, MetadataValueResponse, OkResponse,
    ProcessStat, RestartRequest, SetMemoryLimitRequest, SignalRequest, UpdateMachineRequest,
    UpdateMetadataRequest, UpsertMetadataKeyRequest,
};
use hangar_core::Signal;

// Types named only in the OpenAPI annotations below.
use crate::Shared;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Params, parse_config, parse_signal, present, stop_options};
use crate::{Principal, views};
#[allow(unused_imports)]
use hangar_api_types::*;

/// The request's `fly-machine-lease-nonce`.
pub(crate) fn nonce(headers: &HeaderMap) -> Option<String> {
    headers
        .get("fly-machine-lease-nonce")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// `POST /v1/apps/{app}/machines/{id}`: full config replacement.
#[utoipa::path(post, path = "/v1/apps/{app_name}/machines/{machine_id}", operation_id = "Machines_update", tag = "Machines", params(("app_name" = String, Path, description = "App name"), ("machine_id" = String, Path, description = "Machine id"), ("fly-machine-lease-nonce" = Option<String>, Header, description = "Nonce of the machine's lease, needed while it is leased")), request_body = UpdateMachineRequest, responses((status = 200, body = Machine), (status = 400, description = "Bad request", body = ErrorResponse), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse), (status = 409, description = "Conflict (leased, busy, taken)", body = ErrorResponse), (status = 412, description = "Precondition failed", body = ErrorResponse)))]
pub async fn update(
    State(s): State<Shared>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
    Body(req): Body<UpdateMachineRequest>,
) -> ApiResult<Json<Machine>> {
    let config = parse_config(req.config.as_ref())?;
    let rec = s
        .agent
        .update_machine(
            &app,
            &id,
            UpdateMachine {
                config,
                current_version: req.current_version,
                skip_launch: req.skip_launch.unwrap_or(false),
                name: req.name,
                region: req.region,
                min_secrets_version: req.min_secrets_version,
            },
            nonce(&headers).as_deref(),
        )
        .await?;
    let events = s.agent.events_of(&rec, views::MACHINE_EVENTS)?;
    let checks = s.agent.checks(rec.id.as_str());
    Ok(Json(views::with_checks(
        views::machine(rec, Some(events)),
        checks,
    )))
}

/// `GET .../versions`, newest first.
#[utoipa::path(get, path = "/v1/apps/{app_name}/machines/{machine_id}/versions", operation_id = "Machines_list_versions", tag = "Machines", params(("app_name" = String, Path, description = "App name"), ("machine_id" = String, Path, description = "Machine id")), responses((status = 200, body = Vec<MachineVersion>), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse)))]
pub async fn versions(
    State(s): State<Shared>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Json<Vec<MachineVersion>>> {
    let v = s.agent.machine_versions(&app, &id)?;
    Ok(Json(
        v.into_iter()
            .map(|(version, user_config)| MachineVersion {
                version,
                user_config: views::wire_config(user_config),
            })
            .collect(),
    ))
}

/// `POST .../restart` with `signal`, `timeout` and `force_stop` in the query
/// or the body.
#[utoipa::path(post, path = "/v1/apps/{app_name}/machines/{machine_id}/restart", operation_id = "Machines_restart", tag = "Machines", params(("app_name" = String, Path, description = "App name"), ("machine_id" = String, Path, description = "Machine id"), ("fly-machine-lease-nonce" = Option<String>, Header, description = "Nonce of the machine's lease, needed while it is leased"), ("signal" = Option<String>, Query, description = "Stop signal"), ("timeout" = Option<String>, Query, description = "Time before SIGKILL"), ("force_stop" = Option<bool>, Query, description = "Kill at once")), request_body = RestartRequest, responses((status = 200, body = OkResponse), (status = 400, description = "Bad request", body = ErrorResponse), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse), (status = 409, description = "Conflict (leased, busy, taken)", body = ErrorResponse), (status = 412, description = "Precondition failed", body = ErrorResponse)))]
pub async fn restart(
    State(s): State<Shared>,
    Path((app, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    Body(body): Body<RestartRequest>,
) -> ApiResult<Json<OkResponse>> {
    let p = Params::parse(q.as_deref());
    let (signal, timeout) = stop_options(&body.signal, &body.timeout, &p)?;
    let force = body.force_stop.unwrap_or(false) || p.bool("force_stop")?;
    let signal = if force { Some(Signal::Kill) } else { signal };
    s.agent
        .restart_machine(&app, &id, signal, timeout, nonce(&headers).as_deref())
        .await?;
    Ok(Json(OkResponse { ok: true }))
}

/// `POST .../signal` with a signal name or number.
#[utoipa::path(post, path = "/v1/apps/{app_name}/machines/{machine_id}/signal", operation_id = "Machines_signal", tag = "Machines", params(("app_name" = String, Path, description = "App name"), ("machine_id" = String, Path, description = "Machine id")), request_body = SignalRequest, responses((status = 200, body = OkResponse), (status = 400, description = "Bad request", body = ErrorResponse), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse), (status = 412, description = "Precondition failed", body = ErrorResponse)))]
pub async fn signal(
    State(s): State<Shared>,
    Path((app, id)): Path<(String, String)>,
    Body(req): Body<SignalRequest>,
) -> ApiResult<Json<OkResponse>> {
    let v =
        present(&req.signal).ok_or_else(|| ApiError::BadRequest("signal is required".into()))?;
    let sig = parse_signal(v)?;
    s.agent.signal_machine(&app, &id, sig).await?;
    Ok(Json(OkResponse { ok: true }))
}

/// `POST .../suspend`: freezes the machine's processes.
#[utoipa::path(post, path = "/v1/apps/{app_name}/machines/{machine_id}/suspend", operation_id = "Machines_suspend", tag = "Machines", params(("app_name" = String, Path, description = "App name"), ("machine_id" = String, Path, description = "Machine id"), ("fly-machine-lease-nonce" = Option<String>, Header, description = "Nonce of the machine's lease, needed while it is leased")), responses((status = 200, body = OkResponse), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse), (status = 409, description = "Conflict (leased, busy, taken)", body = ErrorResponse), (status = 412, description = "Precondition failed", body = ErrorResponse)))]
pub async fn suspend(
    State(s): State<Shared>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<OkResponse>> {
    s.agent
        .suspend_machine(&app, &id, nonce(&headers).as_deref())
        .await?;
    Ok(Json(OkResponse { ok: true }))
}

/// `POST .../cordon`.
#[utoipa::path(post, path = "/v1/apps/{app_name}/machines/{machine_id}/cordon", operation_id = "Machines_cordon", tag = "Machines", params(("app_name" = String, Path, description = "App name"), ("machine_id" = String, Path, description = "Machine id"), ("fly-machine-lease-nonce" = Option<String>, Header, description = "Nonce of the machine's lease, needed while it is leased")), responses((status = 200, body = OkResponse), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse), (status = 409, description = "Conflict (leased, busy, taken)", body = ErrorResponse), (status = 412, description = "Precondition failed", body = ErrorResponse)))]
pub async fn cordon(
    State(s): State<Shared>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<OkResponse>> {
    s.agent
        .cordon_machine(&app, &id, true, nonce(&headers).as_deref())?;
    Ok(Json(OkResponse { ok: true }))
}

/// `POST .../uncordon`.
#[utoipa::path(post, path = "/v1/apps/{app_name}/machines/{machine_id}/uncordon", operation_id = "Machines_uncordon", tag = "Machines", params(("app_name" = String, Path, description = "App name"), ("machine_id" = String, Path, description = "Machine id"), ("fly-machine-lease-nonce" = Option<String>, Header, description = "Nonce of the machine's lease, needed while it is leased")), responses((status = 200, body = OkResponse), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse), (status = 409, description = "Conflict (leased, busy, taken)", body = ErrorResponse), (status = 412, description = "Precondition failed", body = ErrorResponse)))]
pub async fn uncordon(
    State(s): State<Shared>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<OkResponse>> {
    s.agent
        .cordon_machine(&app, &id, false, nonce(&headers).as_deref())?;
    Ok(Json(OkResponse { ok: true }))
}

fn lease_view(l: hangar_agent::LeaseRow, with_nonce: bool) -> Lease {
    Lease {
        nonce: with_nonce.then_some(l.nonce),
        expires_at: l.expires_at,
        owner: l.owner,
        description: l.description,
        version: l.version,
    }
}

fn envelope<T>(data: T) -> LeaseEnvelope<T> {
    LeaseEnvelope {
        status: "success".into(),
        data,
    }
}

/// `GET .../lease`: the lease, or 404. It shows the nonce, as Fly's does:
/// `fly machine leases clear` reads it to release a stuck lease.
#[utoipa::path(get, path = "/v1/apps/{app_name}/machines/{machine_id}/lease", operation_id = "Machines_show_lease", tag = "Leases", params(("app_name" = String, Path, description = "App name"), ("machine_id" = String, Path, description = "Machine id")), responses((status = 200, body = LeaseEnvelope<Lease>), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse)))]
pub async fn get_lease(
    State(s): State<Shared>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Json<LeaseEnvelope<Lease>>> {
    let l = s
        .agent
        .get_lease(&app, &id)?
        .ok_or_else(|| ApiError::NotFound("lease not found".into()))?;
    Ok(Json(envelope(lease_view(l, true))))
}

/// `POST .../lease`: acquire (201), or refresh with the nonce header (200).
/// `ttl` in seconds comes from the query (fly-go) or the body (the spec).
#[utoipa::path(post, path = "/v1/apps/{app_name}/machines/{machine_id}/lease", operation_id = "Machines_create_lease", tag = "Leases", params(("app_name" = String, Path, description = "App name"), ("machine_id" = String, Path, description = "Machine id"), ("fly-machine-lease-nonce" = Option<String>, Header, description = "Nonce of the machine's lease, needed while it is leased"), ("ttl" = Option<i64>, Query, description = "Seconds (also in the body)")), request_body = CreateLeaseRequest, responses((status = 201, description = "Acquired", body = LeaseEnvelope<Lease>), (status = 200, description = "Refreshed", body = LeaseEnvelope<Lease>), (status = 400, description = "Bad request", body = ErrorResponse), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse), (status = 409, description = "Conflict (leased, busy, taken)", body = ErrorResponse)))]
pub async fn acquire_lease(
    State(s): State<Shared>,
    Path((app, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    Extension(who): Extension<Principal>,
    Body(body): Body<CreateLeaseRequest>,
) -> ApiResult<(StatusCode, Json<LeaseEnvelope<Lease>>)> {
    let p = Params::parse(q.as_deref());
    let ttl = match (body.ttl, p.get("ttl").filter(|t| !t.is_empty())) {
        (Some(t), _) => t,
        (None, Some(t)) => t
            .parse::<i64>()
            .map_err(|_| ApiError::BadRequest(format!("invalid_argument: invalid ttl {t:?}")))?,
        (None, None) => 30,
    };
    if ttl < 1 {
        return Err(ApiError::BadRequest(
            "invalid_argument: ttl must be at least 1 second".into(),
        ));
    }
    let (lease, new) = s.agent.acquire_lease(
        &app,
        &id,
        Duration::from_secs(ttl as u64),
        body.description.as_deref().unwrap_or(""),
        &who.owner(),
        nonce(&headers).as_deref(),
    )?;
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(envelope(lease_view(lease, true)))))
}

/// `DELETE .../lease` with the nonce header.
#[utoipa::path(delete, path = "/v1/apps/{app_name}/machines/{machine_id}/lease", operation_id = "Machines_release_lease", tag = "Leases", params(("app_name" = String, Path, description = "App name"), ("machine_id" = String, Path, description = "Machine id"), ("fly-machine-lease-nonce" = Option<String>, Header, description = "Nonce of the machine's lease, needed while it is leased")), responses((status = 200, body = LeaseEnvelope<OkResponse>), (status = 400, description = "Bad request", body = ErrorResponse), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse), (status = 409, description = "Conflict (leased, busy, taken)", body = ErrorResponse)))]
pub async fn release_lease(
    State(s): State<Shared>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<LeaseEnvelope<OkResponse>>> {
    s.agent
        .release_lease(&app, &id, nonce(&headers).as_deref())?;
    Ok(Json(envelope(OkResponse { ok: true })))
}

/// `GET .../metadata`.
#[utoipa::path(get, path = "/v1/apps/{app_name}/machines/{machine_id}/metadata", operation_id = "Machines_show_metadata", tag = "Metadata", params(("app_name" = String, Path, description = "App name"), ("machine_id" = String, Path, description = "Machine id")), responses((status = 200, body = BTreeMap<String, String>), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse)))]
pub async fn get_metadata(
    State(s): State<Shared>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Json<BTreeMap<String, String>>> {
    Ok(Json(s.agent.get_metadata(&app, &id)?))
}

/// `PUT/PATCH .../metadata`: upserts; null or empty values remove keys.
#[utoipa::path(method(put, patch), path = "/v1/apps/{app_name}/machines/{machine_id}/metadata", operation_id = "Machines_update_metadata", tag = "Metadata", params(("app_name" = String, Path, description = "App name"), ("machine_id" = String, Path, description = "Machine id")), request_body = UpdateMetadataRequest, responses((status = 204, description = "Updated"), (status = 400, description = "Bad request", body = ErrorResponse), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse), (status = 412, description = "Precondition failed", body = ErrorResponse)))]
pub async fn update_metadata(
    State(s): State<Shared>,
    Path((app, id)): Path<(String, String)>,
    Body(req): Body<UpdateMetadataRequest>,
) -> ApiResult<StatusCode> {
    let changes = req.metadata.unwrap_or_default();
    s.agent
        .update_metadata(&app, &id, changes, req.machine_version.as_deref())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET .../metadata/{key}`.
#[utoipa::path(get, path = "/v1/apps/{app_name}/machines/{machine_id}/metadata/{key}", operation_id = "Machines_get_metadata_key", tag = "Metadata", params(("app_name" = String, Path, description = "App name"), ("machine_id" = String, Path, description = "Machine id"), ("key" = String, Path, description = "Metadata key")), responses((status = 200, body = MetadataValueResponse), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse)))]
pub async fn get_metadata_key(
    State(s): State<Shared>,
    Path((app, id, key)): Path<(String, String, String)>,
) -> ApiResult<Json<MetadataValueResponse>> {
    let md = s.agent.get_metadata(&app, &id)?;
    let value = md
        .get(&key)
        .cloned()
        .ok_or_else(|| ApiError::NotFound(format!("metadata key {key:?} not found")))?;
    Ok(Json(MetadataValueResponse { value }))
}

/// `POST .../metadata/{key}` with `{value}`.
#[utoipa::path(post, path = "/v1/apps/{app_name}/machines/{machine_id}/metadata/{key}", operation_id = "Machines_upsert_metadata", tag = "Metadata", params(("app_name" = String, Path, description = "App name"), ("machine_id" = String, Path, description = "Machine id"), ("key" = String, Path, description = "Metadata key")), request_body = UpsertMetadataKeyRequest, responses((status = 204, description = "Set"), (status = 400, description = "Bad request", body = ErrorResponse), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse)))]
pub async fn set_metadata_key(
    State(s): State<Shared>,
    Path((app, id, key)): Path<(String, String, String)>,
    Body(req): Body<UpsertMetadataKeyRequest>,
) -> ApiResult<StatusCode> {
    let value = req
        .value
        .ok_or_else(|| ApiError::BadRequest("value is required".into()))?;
    let mut changes = BTreeMap::new();
    changes.insert(key, Some(value));
    s.agent.update_metadata(&app, &id, changes, None).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE .../metadata/{key}`.
#[utoipa::path(delete, path = "/v1/apps/{app_name}/machines/{machine_id}/metadata/{key}", operation_id = "Machines_delete_metadata", tag = "Metadata", params(("app_name" = String, Path, description = "App name"), ("machine_id" = String, Path, description = "Machine id"), ("key" = String, Path, description = "Metadata key")), responses((status = 204, description = "Removed"), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse)))]
pub async fn delete_metadata_key(
    State(s): State<Shared>,
    Path((app, id, key)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    let mut changes = BTreeMap::new();
    changes.insert(key, None);
    s.agent.update_metadata(&app, &id, changes, None).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Longest exec.
const MAX_EXEC_TIMEOUT: i64 = 600;

/// `POST .../exec`: `command` (array) or `cmd` (a command line), `stdin`,
/// `timeout` in seconds.
#[utoipa::path(post, path = "/v1/apps/{app_name}/machines/{machine_id}/exec", operation_id = "Machines_exec", tag = "Machines", params(("app_name" = String, Path, description = "App name"), ("machine_id" = String, Path, description = "Machine id")), request_body = MachineExecRequest, responses((status = 200, body = ExecResponse), (status = 400, description = "Bad request", body = ErrorResponse), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse), (status = 408, description = "Deadline exceeded", body = ErrorResponse), (status = 412, description = "Precondition failed", body = ErrorResponse)))]
pub async fn exec(
    State(s): State<Shared>,
    Path((app, id)): Path<(String, String)>,
    Body(req): Body<MachineExecRequest>,
) -> ApiResult<Json<ExecResponse>> {
    let argv = match (
        req.command.filter(|c| !c.is_empty()),
        req.cmd.filter(|c| !c.trim().is_empty()),
    ) {
        (Some(c), _) => c,
        (None, Some(line)) => split_words(&line).ok_or_else(|| {
            ApiError::BadRequest(format!("invalid cmd {line:?}: unbalanced quotes"))
        })?,
        (None, None) => return Err(ApiError::BadRequest("command (or cmd) is required".into())),
    };
    if req.container.as_deref().is_some_and(|c| !c.is_empty()) {
        return Err(ApiError::BadRequest(
            "this machine has no containers; omit container".into(),
        ));
    }
    let timeout = req.timeout.unwrap_or(30);
    if !(1..=MAX_EXEC_TIMEOUT).contains(&timeout) {
        return Err(ApiError::BadRequest(format!(
            "invalid_argument: timeout must be between 1 and {MAX_EXEC_TIMEOUT} seconds"
        )));
    }
    let out = s
        .agent
        .exec(
            &app,
            &id,
            hangar_runtime::ExecRequest {
                argv,
                stdin: req.stdin.map(String::into_bytes),
                timeout: Duration::from_secs(timeout as u64),
            },
        )
        .await?;
    if out.timed_out {
        return Err(ApiError::Agent(hangar_agent::AgentError::Timeout(format!(
            "deadline_exceeded: command did not finish within {timeout}s"
        ))));
    }
    Ok(Json(ExecResponse {
        exit_code: out.exit_code,
        exit_signal: out.exit_signal.unwrap_or(0),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }))
}

/// Splits a command line into words (single and double quotes, backslash
/// escapes), as a shell would without expansions.
fn split_words(line: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '\'' => break,
                        ch => cur.push(ch),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => cur.push(chars.next()?),
                        ch => cur.push(ch),
                    }
                }
            }
            '\\' => {
                in_word = true;
                cur.push(chars.next()?);
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Some(words)
}

/// `GET .../ps` with `sort_by` (pid, cpu, rss, rtime, command) and `order`
/// (asc, desc).
#[utoipa::path(get, path = "/v1/apps/{app_name}/machines/{machine_id}/ps", operation_id = "Machines_list_processes", tag = "Machines", params(("app_name" = String, Path, description = "App name"), ("machine_id" = String, Path, description = "Machine id"), ("sort_by" = Option<String>, Query, description = "pid, cpu, rss, rtime or command"), ("order" = Option<String>, Query, description = "asc or desc")), responses((status = 200, body = Vec<ProcessStat>), (status = 400, description = "Bad request", body = ErrorResponse), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse), (status = 412, description = "Precondition failed", body = ErrorResponse)))]
pub async fn ps(
    State(s): State<Shared>,
    Path((app, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Vec<ProcessStat>>> {
    let p = Params::parse(q.as_deref());
    let mut procs: Vec<ProcessStat> = s
        .agent
        .processes(&app, &id)
        .await?
        .into_iter()
        .map(|p| ProcessStat {
            pid: p.pid,
            stime: p.start_ms,
            rtime: p.run_ms,
            command: p.command,
            directory: p.directory,
            cpu: p.cpu_ms,
            rss: p.rss,
            listen_sockets: p
                .listen
                .into_iter()
                .map(|(proto, address)| ListenSocket { proto, address })
                .collect(),
        })
        .collect();
    match p.get("sort_by").unwrap_or("pid") {
        "pid" | "" => procs.sort_by_key(|p| p.pid),
        "cpu" => procs.sort_by_key(|p| p.cpu),
        "rss" | "mem" => procs.sort_by_key(|p| p.rss),
        "rtime" => procs.sort_by_key(|p| p.rtime),
        "command" => procs.sort_by(|a, b| a.command.cmp(&b.command)),
        other => {
            return Err(ApiError::BadRequest(format!(
                "invalid_argument: cannot sort by {other:?} (pid, cpu, rss, rtime, command)"
            )));
        }
    }
    match p.get("order").unwrap_or("asc") {
        "asc" | "" => {}
        "desc" => procs.reverse(),
        other => {
            return Err(ApiError::BadRequest(format!(
                "invalid_argument: order must be asc or desc, not {other:?}"
            )));
        }
    }
    Ok(Json(procs))
}

fn memory_view(m: hangar_runtime::MemoryInfo) -> MemoryResponse {
    MemoryResponse {
        limit_mb: m.limit_mb as i64,
        available_mb: m.limit_mb.saturating_sub(m.usage_mb) as i64,
    }
}

/// `GET .../memory`.
#[utoipa::path(get, path = "/v1/apps/{app_name}/machines/{machine_id}/memory", operation_id = "Machines_get_memory", tag = "Machines", params(("app_name" = String, Path, description = "App name"), ("machine_id" = String, Path, description = "Machine id")), responses((status = 200, body = MemoryResponse), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse), (status = 412, description = "Precondition failed", body = ErrorResponse)))]
pub async fn memory(
    State(s): State<Shared>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Json<MemoryResponse>> {
    Ok(Json(memory_view(s.agent.memory(&app, &id).await?)))
}

/// `PUT .../memory` with `{limit_mb}`: changes the running machine's limit.
#[utoipa::path(put, path = "/v1/apps/{app_name}/machines/{machine_id}/memory", operation_id = "Machines_set_memory_limit", tag = "Machines", params(("app_name" = String, Path, description = "App name"), ("machine_id" = String, Path, description = "Machine id")), request_body = SetMemoryLimitRequest, responses((status = 200, body = MemoryResponse), (status = 400, description = "Bad request", body = ErrorResponse), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse), (status = 412, description = "Precondition failed", body = ErrorResponse)))]
pub async fn set_memory(
    State(s): State<Shared>,
    Path((app, id)): Path<(String, String)>,
    Body(req): Body<SetMemoryLimitRequest>,
) -> ApiResult<Json<MemoryResponse>> {
    let mb = req
        .limit_mb
        .filter(|m| *m > 0)
        .ok_or_else(|| ApiError::BadRequest("limit_mb must be a positive number".into()))?;
    Ok(Json(memory_view(
        s.agent.set_memory(&app, &id, mb as u64).await?,
    )))
}

#[cfg(test)]
mod tests {
    use super::split_words;

    #[test]
    fn splits_command_lines() {
        assert_eq!(
            split_words("ls -la /tmp").unwrap(),
            vec!["ls", "-la", "/tmp"]
        );
        assert_eq!(
            split_words(r#"sh -c 'echo "hi there"'"#).unwrap(),
            vec!["sh", "-c", r#"echo "hi there""#]
        );
        assert_eq!(
            split_words(r#"a\ b "c\"d""#).unwrap(),
            vec!["a b", r#"c"d"#]
        );
        assert_eq!(split_words("''").unwrap(), vec![""]);
        assert!(split_words("'open").is_none());
    }
}
