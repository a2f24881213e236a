//! Agent records to Fly's wire shapes.

use hangar_agent::{AppRecord, EventRow, MachineRecord};
use hangar_api_types::{App, AppOrganization, Machine, MachineEvent};

/// Events included in a machine's representation.
pub const MACHINE_EVENTS: usize = 20;

/// An app.
pub fn app(rec: &AppRecord, status: String, volume_count: i64) -> App {
    App {
        id: rec.id.clone(),
        name: rec.name.clone(),
        status,
        network: rec.network.clone(),
        internal_numeric_id: rec.internal_numeric_id,
        machine_count: rec.machine_count,
        volume_count,
        organization: AppOrganization {
            name: "Personal".into(),
            slug: rec.org_slug.clone(),
            internal_numeric_id: 1,
        },
        created_at: humantime::parse_rfc3339_weak(&rec.created_at)
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as i64),
    }
}

/// An event.
pub fn event(e: EventRow) -> MachineEvent {
    MachineEvent {
        id: e.id,
        kind: e.kind,
        status: e.status,
        source: e.source,
        timestamp: e.timestamp,
        request: e.request,
    }
}

/// A stored config as Fly's wire type (it was one when it was stored).
pub fn wire_config(json: serde_json::Value) -> hangar_api_types::MachineConfig {
    serde_json::from_value(json).unwrap_or_default()
}

/// A machine; `events` is `None` for summaries, which also omit the config
/// and host status.
pub fn machine(rec: MachineRecord, events: Option<Vec<EventRow>>) -> Machine {
    let summary = events.is_none();
    Machine {
        id: rec.id.to_string(),
        name: rec.name,
        // Fly's state names; `MachineState::as_str` is the one mapping.
        state: rec.core.state.as_str().into(),
        region: rec.region,
        version: rec.instance_id.clone(),
        instance_id: rec.instance_id,
        private_ip: rec.private_ip,
        config: (!summary).then(|| wire_config(rec.config)),
        image_ref: rec.image_ref.map(Into::into),
        created_at: rec.created_at,
        updated_at: rec.updated_at,
        events: events.map(|v| v.into_iter().map(event).collect()),
        checks: None,
        host_status: (!summary).then(|| "ok".into()),
        nonce: None,
        cordoned: rec.cordoned,
    }
}

/// A machine with its health check results (Fly leaves `checks` out when
/// there are none).
pub fn with_checks(mut m: Machine, checks: Vec<hangar_agent::checks::CheckResult>) -> Machine {
    if !checks.is_empty() {
        m.checks = Some(
            checks
                .into_iter()
                .map(|c| hangar_api_types::CheckStatus {
                    name: c.name,
                    status: c.status.as_str().into(),
                    output: c.output,
                    updated_at: c.updated_at,
                })
                .collect(),
        );
    }
    m
}
