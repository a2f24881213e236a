//! `GET /v1/hangar/hosts`: the hosts of the installation (one, unless
//! `hangard --cluster`), with their load.

use axum::Json;
use axum::extract::{Path, State};
use hangar_agent::AgentError;
use hangar_api_types::{ErrorResponse, HostView, HostsResponse};

use crate::Shared;
use crate::{ApiState, error::ApiResult};

fn view(h: hangar_cluster::HostInfo, c: &hangar_cluster::Cluster) -> HostView {
    let me = h.id == c.host_id();
    HostView {
        this_host: me,
        // This host knows better than its copy of its row: since when the
        // database has not taken its heartbeat (other hosts ask it before
        // fencing themselves).
        heartbeat_age_secs: if me {
            c.heartbeat_silence().as_secs_f64()
        } else {
            h.heartbeat_age_secs
        },
        id: h.id,
        region: h.region,
        api_url: h.api_url,
        state: h.state,
        drained: h.drained,
        cpus: h.cpus,
        memory_mb: h.memory_mb,
        reserved_cpus: h.reserved_cpus,
        reserved_memory_mb: h.reserved_memory_mb,
        machines: h.machines,
        host_index: h.host_index,
        mesh_key: Some(h.mesh_key).filter(|k| !k.is_empty()),
        mesh_endpoint: h.mesh_endpoint.map(|e| e.to_string()),
    }
}

/// `GET /v1/hangar/hosts`.
#[utoipa::path(get, path = "/v1/hangar/hosts", operation_id = "Hosts_list", tag = "Hangar", responses((status = 200, body = HostsResponse), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 403, description = "An app token", body = ErrorResponse)))]
pub async fn list(State(s): State<Shared>) -> ApiResult<Json<HostsResponse>> {
    if let Some(c) = &s.cluster {
        let hosts = c
            .cluster
            .hosts()
            .into_iter()
            .map(|h| view(h, &c.cluster))
            .collect();
        return Ok(Json(HostsResponse {
            hosts,
            cluster: true,
        }));
    }
    let machines = s.agent.machine_summaries()?;
    Ok(Json(HostsResponse {
        hosts: vec![HostView {
            id: "local".into(),
            region: s.agent.region().to_owned(),
            api_url: String::new(),
            state: "up".into(),
            drained: false,
            cpus: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            memory_mb: s.agent.host_memory_mb().unwrap_or(0),
            reserved_cpus: machines.iter().map(|m| u64::from(m.cpus)).sum(),
            reserved_memory_mb: machines.iter().map(|m| m.memory_mb).sum(),
            machines: machines.len() as u64,
            heartbeat_age_secs: 0.0,
            host_index: 1,
            mesh_key: None,
            mesh_endpoint: None,
            this_host: true,
        }],
        cluster: false,
    }))
}

async fn set_drained(s: &ApiState, id: &str, drained: bool) -> ApiResult<Json<HostView>> {
    let Some(c) = &s.cluster else {
        return Err(AgentError::Precondition(
            "this hangard is not in a cluster (hangard --cluster): there is no host to drain"
                .into(),
        )
        .into());
    };
    match c.cluster.set_drained(id, drained).await {
        Ok(true) => {}
        Ok(false) => return Err(AgentError::NotFound(format!("host {id} not found")).into()),
        Err(e) => {
            return Err(crate::error::ApiError::Unavailable(format!(
                "the cluster database cannot be reached: {e}"
            )));
        }
    }
    let h = c
        .cluster
        .host(id)
        .ok_or_else(|| AgentError::NotFound(format!("host {id} not found")))?;
    Ok(Json(view(h, &c.cluster)))
}

/// `POST /v1/hangar/hosts/{id}/drain`: the host takes no new machines
/// (those it runs stay).
#[utoipa::path(post, path = "/v1/hangar/hosts/{id}/drain", operation_id = "Hosts_drain", tag = "Hangar", params(("id" = String, Path, description = "Host id")), responses((status = 200, body = HostView), (status = 404, description = "No such host", body = ErrorResponse), (status = 412, description = "Not a cluster", body = ErrorResponse)))]
pub async fn drain(State(s): State<Shared>, Path(id): Path<String>) -> ApiResult<Json<HostView>> {
    set_drained(&s, &id, true).await
}

/// `POST /v1/hangar/hosts/{id}/undrain`: the host takes new machines again.
#[utoipa::path(post, path = "/v1/hangar/hosts/{id}/undrain", operation_id = "Hosts_undrain", tag = "Hangar", params(("id" = String, Path, description = "Host id")), responses((status = 200, body = HostView), (status = 404, description = "No such host", body = ErrorResponse), (status = 412, description = "Not a cluster", body = ErrorResponse)))]
pub async fn undrain(State(s): State<Shared>, Path(id): Path<String>) -> ApiResult<Json<HostView>> {
    set_drained(&s, &id, false).await
}
