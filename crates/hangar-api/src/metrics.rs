//! `GET /metrics`: Prometheus' text format, for the admin token. What is
//! recorded as it happens comes from `hangar_metrics`; what is read at the
//! scrape (machines by state, each running machine's CPU time and memory
//! from its cgroup) from the agent here; the machines' own metrics (Fly's
//! `metrics` config) from `machine_metrics`.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use hangar_agent::Agent;
use hangar_metrics::{Collector, DescriptorEncoder, consts};
use prometheus_client::encoding::EncodeLabelSet;

use crate::Shared;
use crate::{ApiError, Principal};

/// The content type Prometheus asks for and reads.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `GET /metrics`.
#[utoipa::path(get, path = "/metrics", operation_id = "Metrics_scrape", tag = "Hangar extensions", responses((status = 200, description = "Prometheus' text format (OpenMetrics 1.0): machines by app and state, machine operations, start and stop durations, image pulls, proxy requests by app and status, autostarts and autostops, health checks, each running machine's CPU time and memory", content_type = "application/openmetrics-text", body = String), (status = 401, description = "No or bad token", body = hangar_api_types::ErrorResponse), (status = 403, description = "Not the admin token", body = hangar_api_types::ErrorResponse)))]
pub async fn scrape(
    State(s): State<Shared>,
    axum::Extension(who): axum::Extension<Principal>,
) -> Response {
    if who != Principal::Admin {
        return ApiError::Forbidden("metrics need the admin token".into()).into_response();
    }
    let agent = s.agent.clone();
    let targets = crate::machine_metrics::targets(&agent);
    let theirs = crate::machine_metrics::render(&crate::machine_metrics::fetch(targets).await);
    let text = tokio::task::spawn_blocking(move || {
        hangar_metrics::encode(&hangar_metrics::registry(vec![Box::new(FromAgent(agent))]))
    })
    .await;
    match text {
        Ok(Ok(mut body)) => {
            // The machines' own families go before the end marker.
            let end = body.rfind("# EOF").unwrap_or(body.len());
            body.insert_str(end, &theirs);
            ([(http::header::CONTENT_TYPE, OPENMETRICS)], body).into_response()
        }
        _ => ApiError::Agent(hangar_agent::AgentError::Internal(
            "encoding the metrics failed".into(),
        ))
        .into_response(),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    app: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MachineLabels {
    app: String,
    machine: String,
}

/// What the agent knows at the scrape.
struct FromAgent(Agent);

impl std::fmt::Debug for FromAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FromAgent")
    }
}

impl Collector for FromAgent {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut states = std::collections::BTreeMap::<(String, String), u64>::new();
        let mut cpu = Vec::new();
        let mut memory = Vec::new();
        let mut rx = Vec::new();
        let mut tx = Vec::new();
        for m in self.0.machine_briefs().unwrap_or_default() {
            *states
                .entry((m.app.clone(), m.state.to_string()))
                .or_default() += 1;
            if let Some(u) = self.0.machine_usage(&m.id) {
                let labels = MachineLabels {
                    app: m.app.clone(),
                    machine: m.id.to_string(),
                };
                cpu.push((labels.clone(), u.cpu_seconds));
                memory.push((labels.clone(), u.memory_bytes as f64));
                rx.push((labels.clone(), u.net_rx_bytes as f64));
                tx.push((labels, u.net_tx_bytes as f64));
            }
        }
        consts::gauges(
            &mut encoder,
            "machines",
            "Machines on this host, by app and state",
            states
                .into_iter()
                .map(|((app, state), n)| (StateLabels { app, state }, n as f64)),
        )?;
        consts::counters(
            &mut encoder,
            "machine_cpu_seconds",
            "CPU time a running machine has used (its cgroup)",
            cpu,
        )?;
        consts::gauges(
            &mut encoder,
            "machine_memory_bytes",
            "Memory a running machine uses (its cgroup)",
            memory,
        )?;
        consts::counters(
            &mut encoder,
            "machine_network_receive_bytes",
            "Bytes a running machine received on its network interface",
            rx,
        )?;
        consts::counters(
            &mut encoder,
            "machine_network_transmit_bytes",
            "Bytes a running machine sent on its network interface",
            tx,
        )
    }
}
