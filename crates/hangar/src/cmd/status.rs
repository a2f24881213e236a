//! `hangar status`: an app at a glance, as `fly status` shows it: the app,
//! the image its newest release runs, and its machines by process group
//! with their release version, region, state, role and checks.

use clap::Args;
use hangar_api_types::Machine;
use hangar_client::{Client, ListMachines};
use serde_json::json;

use super::flytoml::AppArg;
use crate::output::Output;

/// `hangar status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    app: AppArg,
    /// Show destroyed machines too.
    #[arg(long)]
    all: bool,
}

fn metadata<'a>(m: &'a Machine, key: &str) -> Option<&'a str> {
    m.config
        .as_ref()
        .and_then(|c| c.metadata.as_ref())
        .and_then(|md| md.get(key))
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

/// The machine's process group (`fly_process_group`), `<default>` for a
/// machine no deploy made.
fn process_group(m: &Machine) -> &str {
    metadata(m, "fly_process_group").unwrap_or("<default>")
}

/// The release version that made the machine.
fn release_version(m: &Machine) -> Option<i64> {
    metadata(m, "fly_release_version")?.parse().ok()
}

/// `N total, M passing, K critical`, as flyctl sums up checks.
pub(crate) fn checks_summary(m: &Machine) -> String {
    let checks = m.checks.as_deref().unwrap_or_default();
    if checks.is_empty() {
        return String::new();
    }
    let mut parts = vec![format!("{} total", checks.len())];
    for status in ["passing", "warning", "critical"] {
        let n = checks.iter().filter(|c| c.status == status).count();
        if n > 0 {
            parts.push(format!("{n} {status}"));
        }
    }
    parts.join(", ")
}

/// The image of the machines of the highest release version (flyctl's
/// rule), else of the newest machine; `-` with none.
fn app_image(machines: &[Machine]) -> String {
    let image = |m: &Machine| m.config.as_ref().map(|c| c.image.clone());
    machines
        .iter()
        .filter_map(|m| Some((release_version(m)?, m)))
        .max_by_key(|(v, _)| *v)
        .map(|(_, m)| m)
        .or_else(|| {
            machines
                .iter()
                .max_by(|a, b| a.created_at.cmp(&b.created_at))
        })
        .and_then(image)
        .unwrap_or_else(|| "-".into())
}

/// Runs `hangar status`.
pub async fn run(args: &StatusArgs, c: &Client, out: &Output) -> anyhow::Result<()> {
    let app = args.app.get()?;
    let info = c.get_app(app).await?;
    let mut machines = c
        .list_machines(
            app,
            &ListMachines {
                include_deleted: args.all,
                ..ListMachines::default()
            },
        )
        .await?;
    machines.sort_by(|a, b| {
        process_group(a)
            .cmp(process_group(b))
            .then_with(|| a.id.cmp(&b.id))
    });
    let release = c.list_releases(app, 10).await.unwrap_or_default();
    let current = release.iter().find(|r| r.status == "complete");
    if out.json {
        return out.print_json(&json!({
            "ID": info.id,
            "Name": info.name,
            "Status": info.status,
            "Deployed": current.is_some(),
            "Version": current.map(|r| r.version).unwrap_or(0),
            "Organization": {"Slug": info.organization.slug},
            "Image": app_image(&machines),
            "Machines": machines,
        }));
    }
    println!("App");
    println!("  Name     = {}", info.name);
    println!("  Owner    = {}", info.organization.slug);
    println!("  Status   = {}", info.status);
    println!("  Image    = {}", app_image(&machines));
    if let Some(r) = current {
        println!("  Release  = v{}", r.version);
    }
    println!();
    if machines.is_empty() {
        println!("No machines are available on this app {app}");
        return Ok(());
    }
    println!("Machines");
    out.table(
        &[
            "PROCESS",
            "ID",
            "VERSION",
            "REGION",
            "STATE",
            "ROLE",
            "CHECKS",
            "LAST UPDATED",
        ],
        machines
            .iter()
            .map(|m| {
                let standby = m
                    .config
                    .as_ref()
                    .and_then(|c| c.standbys.as_ref())
                    .is_some_and(|s| !s.is_empty());
                let mut state = m.state.clone();
                if let Some(h) = m.host_status.as_deref().filter(|h| *h != "ok") {
                    state = format!("{state} (host {h})");
                }
                vec![
                    process_group(m).to_owned(),
                    m.id.clone(),
                    release_version(m)
                        .map(|v| v.to_string())
                        .unwrap_or_default(),
                    m.region.clone(),
                    state,
                    if standby { "standby" } else { "" }.to_owned(),
                    checks_summary(m),
                    m.updated_at.clone(),
                ]
            })
            .collect(),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(id: &str, config: serde_json::Value, checks: &[&str]) -> Machine {
        serde_json::from_value(json!({
            "id": id, "name": id, "state": "started", "region": "local",
            "instance_id": "i", "version": "i", "private_ip": "", "config": config,
            "created_at": format!("2026-01-0{}T00:00:00Z", id.len() % 9),
            "updated_at": "2026-01-01T00:00:00Z",
            "checks": checks.iter().map(|s| json!({
                "name": "c", "status": s, "output": "", "updated_at": ""
            })).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    #[test]
    fn the_image_is_the_newest_releases_and_checks_add_up() {
        let old = machine(
            "a",
            json!({"image": "web:v1", "metadata": {"fly_release_version": "9", "fly_process_group": "app"}}),
            &["passing", "critical"],
        );
        let new = machine(
            "b",
            json!({"image": "web:v2", "metadata": {"fly_release_version": "10"}}),
            &[],
        );
        assert_eq!(app_image(&[old.clone(), new.clone()]), "web:v2");
        assert_eq!(app_image(&[]), "-");
        assert_eq!(process_group(&old), "app");
        assert_eq!(process_group(&new), "<default>");
        assert_eq!(checks_summary(&old), "2 total, 1 passing, 1 critical");
        assert_eq!(checks_summary(&new), "");
        // No release versions: the newest machine's image.
        let loose = machine("abc", json!({"image": "web:v3"}), &[]);
        let first = machine("ab", json!({"image": "web:v0"}), &[]);
        assert_eq!(app_image(&[first, loose]), "web:v3");
    }
}
