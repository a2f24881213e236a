//! `hangar scale count|vm|show` and `hangar apps restart`: releases of the
//! current fly.toml and image that change how many machines a process
//! group has, their size, or just restart them, run by hangard like a
//! deploy (strategy, health gating, rollback).

use anyhow::Context;
use clap::Subcommand;
use hangar_api_types::{MachineGuest, ScaleVmRequest};
use hangar_client::{Client, ListMachines};

use super::deploy::follow;
use super::flytoml::AppArg;
use crate::output::Output;

/// `hangar scale ...`.
#[derive(Debug, Subcommand)]
pub enum ScaleCmd {
    /// Give a process group this many machines.
    Count {
        /// How many.
        count: usize,
        #[command(flatten)]
        app: AppArg,
        /// The group (default `app`).
        #[arg(long, visible_alias = "group")]
        process_group: Option<String>,
        /// Return once submitted.
        #[arg(long)]
        detach: bool,
    },
    /// Give the app's machines a size (`shared-cpu-2x`, ...), rolled like a
    /// deploy.
    Vm {
        /// A preset such as shared-cpu-1x or performance-2x.
        size: Option<String>,
        #[command(flatten)]
        app: AppArg,
        /// Memory in MB (with or without a size).
        #[arg(long)]
        vm_memory: Option<i64>,
        /// Only this group.
        #[arg(long, visible_alias = "group")]
        process_group: Option<String>,
        /// Return once submitted.
        #[arg(long)]
        detach: bool,
    },
    /// The machines of each process group and their sizes.
    Show {
        #[command(flatten)]
        app: AppArg,
    },
}

/// Runs `hangar scale ...`.
pub async fn run(cmd: &ScaleCmd, c: &Client, out: &Output) -> anyhow::Result<()> {
    match cmd {
        ScaleCmd::Count {
            count,
            app,
            process_group,
            detach,
        } => {
            let app = app.get()?;
            let group = process_group.as_deref().unwrap_or("app");
            let rel = c.scale_count(app, group, *count).await?;
            println!("==> Release v{}: scale {group} to {count}", rel.version);
            if *detach {
                return Ok(());
            }
            follow(c, app, &rel.id, out).await
        }
        ScaleCmd::Vm {
            size,
            app,
            vm_memory,
            process_group,
            detach,
        } => {
            let app = app.get()?;
            let guest = vm_memory.map(|m| MachineGuest {
                memory_mb: Some(m),
                ..MachineGuest::default()
            });
            if size.is_none() && guest.is_none() {
                anyhow::bail!("give a size (e.g. shared-cpu-2x) or --vm-memory");
            }
            let rel = c
                .scale_vm(
                    app,
                    ScaleVmRequest {
                        guest,
                        size: size.clone(),
                        process_groups: process_group.iter().cloned().collect(),
                    },
                )
                .await?;
            println!("==> Release v{}: resizing machines", rel.version);
            if *detach {
                return Ok(());
            }
            follow(c, app, &rel.id, out).await
        }
        ScaleCmd::Show { app } => {
            let app = app.get()?;
            let machines = c.list_machines(app, &ListMachines::default()).await?;
            let mut rows: Vec<Vec<String>> = Vec::new();
            let mut groups: std::collections::BTreeMap<String, (usize, String)> =
                Default::default();
            for m in &machines {
                let Some(cfg) = &m.config else { continue };
                let md = cfg.metadata.clone().unwrap_or_default();
                let standby = cfg.standbys.as_ref().is_some_and(|s| !s.is_empty());
                if md.get("fly_platform_version").map(String::as_str) != Some("v2") || standby {
                    continue;
                }
                let g = md
                    .get("fly_process_group")
                    .cloned()
                    .unwrap_or_else(|| "app".into());
                let size = cfg
                    .guest
                    .as_ref()
                    .map(|g| {
                        format!(
                            "{} {} cpu, {} MB",
                            g.cpu_kind.clone().unwrap_or_default(),
                            g.cpus.unwrap_or(1),
                            g.memory_mb.unwrap_or(256)
                        )
                    })
                    .unwrap_or_default();
                let e = groups.entry(g).or_insert((0, size));
                e.0 += 1;
            }
            if out.json {
                return out.print_json(&groups);
            }
            for (g, (n, size)) in groups {
                rows.push(vec![g, n.to_string(), size]);
            }
            out.table(&["PROCESS GROUP", "COUNT", "SIZE"], rows);
            Ok(())
        }
    }
}

/// `hangar apps restart`: a release (reason `restart`) of the current
/// release's fly.toml and image, or, for an app never deployed, each
/// started machine in turn.
pub async fn restart_app(c: &Client, app: &str, out: &Output) -> anyhow::Result<()> {
    let deployed = c
        .list_releases(app, 100)
        .await?
        .iter()
        .any(|r| r.status == "complete");
    if deployed {
        let rel = c.restart_release(app, "restart").await?;
        println!("==> Release v{} restarts the app's machines", rel.version);
        return follow(c, app, &rel.id, out).await;
    }
    let machines = c.list_machines(app, &ListMachines::default()).await?;
    for m in machines.iter().filter(|m| m.state == "started") {
        c.restart_machine(app, &m.id, None, None, false)
            .await
            .with_context(|| format!("restarting {}", m.id))?;
        println!("Machine {} restarted", m.id);
    }
    Ok(())
}
