//! `hangard`'s own OpenAPI document, generated from the handlers' and wire
//! types' annotations (utoipa) and served at `/openapi.json`. A copy is
//! checked in as `crates/hangar-api/openapi.json`; `tests/openapi.rs` fails
//! when the two drift apart.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::{
    apps, hosts, images, ips, logs, machine_ops, machines, metrics, platform, proxy_view, releases,
    secrets, tokens, tty, ui, usage, volume_copy, volumes,
};

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Hangar Machines API",
        description = "Fly.io's Machines API v1 as hangard serves it, plus Hangar's extensions under /v1/hangar. Every request needs `Authorization: Bearer <token>` (or `FlyV1 <token>`).",
        license(name = "Apache-2.0"),
    ),
    paths(
        apps::list, apps::create, apps::get, apps::delete,
        ips::list, ips::create, ips::delete,
        machines::list, machines::create, machines::get, machine_ops::update, machines::destroy,
        machines::start, machines::stop, machine_ops::restart, machine_ops::signal,
        machine_ops::suspend, machine_ops::cordon, machine_ops::uncordon,
        machines::wait, machines::events, machine_ops::versions,
        machine_ops::get_lease, machine_ops::acquire_lease, machine_ops::release_lease,
        machine_ops::get_metadata, machine_ops::update_metadata,
        machine_ops::get_metadata_key, machine_ops::set_metadata_key, machine_ops::delete_metadata_key,
        machine_ops::exec, machine_ops::ps, machine_ops::memory, machine_ops::set_memory,
        platform::org_machines, platform::regions, platform::current_token, tokens::deploy_token,
        secrets::list, secrets::update, secrets::get, secrets::set, secrets::delete,
        volumes::list, volumes::create, volumes::get, volumes::update, volumes::delete,
        volumes::extend, volumes::snapshots, volumes::snapshot, volume_copy::export,
        logs::logs, tty::tty, images::list, images::import, images::prune,
        tokens::list, tokens::list_all, tokens::create, tokens::revoke, tokens::revoke_any,
        releases::list, releases::create, releases::get, releases::cancel, releases::events,
        metrics::scrape, ui::watch, usage::usage, proxy_view::proxy,
        hosts::list, hosts::drain, hosts::undrain,
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The document as pretty JSON, with the crate's version.
pub fn document() -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    doc.to_pretty_json().unwrap_or_default()
}
