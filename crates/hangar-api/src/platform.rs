//! Organization and platform endpoints: the org-wide machine listing,
//! regions and the current token.

use axum::Extension;
use axum::Json;
use axum::extract::{Path, RawQuery, State};
use hangar_api_types::{
    CurrentTokenResponse, MachineOverviewConfig, OrgMachine, OrgMachinesResponse, RegionResponse,
    RegionRow, TokenInfo,
};

// Types named only in the OpenAPI annotations below.
use crate::Principal;
use crate::Shared;
use crate::error::{ApiError, ApiResult};
use crate::extract::Params;
#[allow(unused_imports)]
use hangar_api_types::*;

/// `GET /v1/orgs/{org}/machines` with `include_deleted`, `region`, `state`,
/// `summary`, `updated_after` (RFC 3339), `cursor`, `limit` (at most 1000):
/// ordered by last change; a page may be short after filtering.
#[utoipa::path(get, path = "/v1/orgs/{org_slug}/machines", operation_id = "Machines_org_list", tag = "Machines", params(("org_slug" = String, Path, description = "Organization"), ("include_deleted" = Option<bool>, Query, description = "Include destroyed machines"), ("region" = Option<String>, Query, description = "Only this region"), ("state" = Option<String>, Query, description = "Comma-separated states"), ("summary" = Option<bool>, Query, description = "Omit config"), ("updated_after" = Option<String>, Query, description = "RFC 3339"), ("cursor" = Option<String>, Query, description = "From next_cursor"), ("limit" = Option<i64>, Query, description = "At most 1000")), responses((status = 200, body = OrgMachinesResponse), (status = 400, description = "Bad request", body = ErrorResponse), (status = 401, description = "No or bad token", body = ErrorResponse), (status = 404, description = "Not found", body = ErrorResponse)))]
pub async fn org_machines(
    State(s): State<Shared>,
    Path(org): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<OrgMachinesResponse>> {
    let p = Params::parse(q.as_deref());
    let include_deleted = p.bool("include_deleted")?;
    let summary = p.bool("summary")?;
    let states = p.all("state");
    let region = p.get("region").filter(|r| !r.is_empty());
    let limit = match p.get("limit").filter(|l| !l.is_empty()) {
        None => 100,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| ApiError::BadRequest(format!("invalid_argument: invalid limit {l:?}")))?
            .min(1000),
    };
    let updated_after = match p.get("updated_after").filter(|u| !u.is_empty()) {
        None => None,
        Some(u) => {
            let t = humantime::parse_rfc3339_weak(u).map_err(|_| {
                ApiError::BadRequest(format!(
                    "invalid_argument: updated_after must be RFC 3339, not {u:?}"
                ))
            })?;
            Some(
                t.duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0),
            )
        }
    };
    let page =
        s.agent
            .org_machines(&org, include_deleted, p.get("cursor"), updated_after, limit)?;
    let last = page.machines.last().cloned();
    let machines = page
        .machines
        .into_iter()
        .filter(|m| region.is_none_or(|r| r == m.region))
        .filter(|m| states.is_empty() || states.iter().any(|st| st == m.core.state.as_str()))
        .map(|m| OrgMachine {
            id: m.id.to_string(),
            name: m.name,
            state: m.core.state.as_str().into(),
            region: m.region,
            app_name: m.app,
            private_ip: m.private_ip,
            version: m.instance_id.clone(),
            instance_id: m.instance_id,
            created_at: m.created_at,
            updated_at: m.updated_at,
            config: (!summary).then(|| {
                let c = crate::views::wire_config(m.config);
                MachineOverviewConfig {
                    image: c.image,
                    guest: c.guest,
                    metadata: c.metadata,
                }
            }),
        })
        .collect();
    Ok(Json(OrgMachinesResponse {
        machines,
        next_cursor: page.next_cursor,
        last_machine_id: last.as_ref().map(|m| m.id.to_string()),
        last_updated_at: last.map(|m| m.updated_at),
        error_regions: Vec::new(),
    }))
}

/// `GET /v1/platform/regions`: the regions of this installation (this
/// host's, or every region a host of the cluster is in; a region whose
/// hosts are all down or drained says `(no capacity)`).
#[utoipa::path(get, path = "/v1/platform/regions", operation_id = "Platform_regions_get", tag = "Platform", responses((status = 200, body = RegionResponse), (status = 401, description = "No or bad token", body = ErrorResponse)))]
pub async fn regions(State(s): State<Shared>) -> Json<RegionResponse> {
    let code = s.agent.region().to_owned();
    let row = |code: &str, name: String| RegionRow {
        name,
        code: code.to_owned(),
        latitude: 0.0,
        longitude: 0.0,
        gateway_available: false,
        requires_paid_plan: false,
        deprecated: false,
        geo_region: "local".into(),
    };
    let regions = match &s.cluster {
        None => vec![row(&code, format!("{code} (this host)"))],
        Some(c) => {
            let mut by_region: std::collections::BTreeMap<String, (usize, u64)> =
                Default::default();
            for h in c.cluster.hosts() {
                let e = by_region.entry(h.region.clone()).or_default();
                if h.state == "up" && !h.drained {
                    e.0 += 1;
                    e.1 += h.memory_mb.saturating_sub(h.reserved_memory_mb);
                }
            }
            by_region
                .into_iter()
                .map(|(r, (hosts, free))| {
                    let name = if hosts == 0 {
                        format!("{r} (no capacity)")
                    } else {
                        format!("{r} ({hosts} hosts, {free} MB free)")
                    };
                    row(&r, name)
                })
                .collect()
        }
    };
    Json(RegionResponse {
        regions,
        nearest: code,
    })
}

/// `GET /v1/tokens/current`: what the request's token is.
#[utoipa::path(get, path = "/v1/tokens/current", operation_id = "CurrentToken_show", tag = "Tokens", responses((status = 200, body = CurrentTokenResponse), (status = 401, description = "No or bad token", body = ErrorResponse)))]
pub async fn current_token(Extension(who): Extension<Principal>) -> Json<CurrentTokenResponse> {
    let (token_id, apps) = match who {
        Principal::Admin => ("admin".to_owned(), Vec::new()),
        Principal::App { app, token_id, .. } => (token_id, vec![app]),
    };
    Json(CurrentTokenResponse {
        tokens: vec![TokenInfo {
            token_id,
            org_slug: hangar_agent::DEFAULT_ORG.into(),
            organization: "Personal".into(),
            apps,
            user: String::new(),
            restricted_to_machine: String::new(),
            source_machine_id: String::new(),
        }],
    })
}
