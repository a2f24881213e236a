//! `GET /v1/hangar/hosts`: the hosts of the installation (one, unless
//! `hangard --cluster`), with their load.

use axum::Json;
use axum::extract::State;
use hangar_api_types::{ErrorResponse, HostView, HostsResponse};

use crate::{ApiState, error::ApiResult};

/// `GET /v1/hangar/hosts`.
#[utoipa::path(get, path = "/v1/hangar/hosts", operation_id = "Hosts_list", tag = "Hangar", responses((status = 200, body = HostsResponse), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 403, description = "An app token", body = ErrorResponse)))]
pub async fn list(State(s): State<ApiState>) -> ApiResult<Json<HostsResponse>> {
    if let Some(c) = &s.cluster {
        let me = c.cluster.host_id().to_owned();
        let hosts = c
            .cluster
            .hosts()
            .into_iter()
            .map(|h| HostView {
                this_host: h.id == me,
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
                heartbeat_age_secs: h.heartbeat_age_secs,
            })
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
            this_host: true,
        }],
        cluster: false,
    }))
}
