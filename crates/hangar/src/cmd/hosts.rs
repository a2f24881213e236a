//! `hangar hosts list|show|drain|undrain`: the hosts of the installation
//! (several with `hangard --cluster`) and their load.

use anyhow::bail;
use clap::Subcommand;
use hangar_api_types::HostView;
use hangar_client::Client;

use crate::output::Output;

/// `hangar hosts ...`.
#[derive(Debug, Subcommand)]
pub enum HostsCmd {
    /// List the hosts with their region, state and load.
    #[command(alias = "ls")]
    List,
    /// Show one host.
    Show {
        /// Host id.
        id: String,
    },
    /// Stop placing new machines on a host (those it runs stay).
    Drain {
        /// Host id.
        id: String,
    },
    /// Place new machines on a host again.
    Undrain {
        /// Host id.
        id: String,
    },
}

fn row(h: &HostView) -> Vec<String> {
    vec![
        format!("{}{}", h.id, if h.this_host { " *" } else { "" }),
        h.region.clone(),
        if h.drained {
            format!("{} (drained)", h.state)
        } else {
            h.state.clone()
        },
        h.machines.to_string(),
        format!("{}/{}", h.reserved_cpus, h.cpus),
        format!("{}/{} MB", h.reserved_memory_mb, h.memory_mb),
        format!("{:.0}s ago", h.heartbeat_age_secs),
        h.api_url.clone(),
    ]
}

const HEADER: &[&str] = &[
    "ID", "REGION", "STATE", "MACHINES", "CPUS", "MEMORY", "HEARD", "API",
];

/// Runs a `hangar hosts` command.
pub async fn run(cmd: &HostsCmd, c: &Client, out: &Output) -> anyhow::Result<()> {
    match cmd {
        HostsCmd::List => {
            let r = c.list_hosts().await?;
            if out.json {
                return out.print_json(&r);
            }
            out.table(HEADER, r.hosts.iter().map(row).collect());
            if !r.cluster {
                println!("(a single host: start hangard with --cluster to add more)");
            }
        }
        HostsCmd::Show { id } => {
            let r = c.list_hosts().await?;
            let Some(h) = r.hosts.into_iter().find(|h| &h.id == id) else {
                bail!("host {id} not found");
            };
            if out.json {
                return out.print_json(&h);
            }
            out.table(HEADER, vec![row(&h)]);
        }
        HostsCmd::Drain { id } | HostsCmd::Undrain { id } => {
            let drain = matches!(cmd, HostsCmd::Drain { .. });
            let h = c.drain_host(id, drain).await?;
            if out.json {
                return out.print_json(&h);
            }
            println!(
                "Host {} {}",
                h.id,
                if drain {
                    "drained: it takes no new machines"
                } else {
                    "takes new machines again"
                }
            );
        }
    }
    Ok(())
}
