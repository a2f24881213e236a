//! `hangar checks list`: the health checks of an app's machines, as
//! `fly checks list` shows them.

use clap::Subcommand;
use hangar_client::{Client, ListMachines};

use super::machine::AppArg;
use crate::output::Output;

/// `hangar checks ...`.
#[derive(Debug, Subcommand)]
pub enum ChecksCmd {
    /// List the latest results of the app's machines' checks.
    #[command(alias = "ls")]
    List {
        #[command(flatten)]
        app: AppArg,
        /// Only checks whose name contains this.
        #[arg(long = "check-name")]
        check_name: Option<String>,
    },
}

/// Runs a `hangar checks` command.
pub async fn run(cmd: &ChecksCmd, c: &Client, out: &Output) -> anyhow::Result<()> {
    let ChecksCmd::List { app, check_name } = cmd;
    let app = app.get()?;
    let machines = c.list_machines(app, &ListMachines::default()).await?;
    let mut rows = Vec::new();
    let mut json = Vec::new();
    for m in machines {
        for check in m.checks.unwrap_or_default() {
            if check_name
                .as_ref()
                .is_some_and(|n| !check.name.contains(n.as_str()))
            {
                continue;
            }
            json.push(serde_json::json!({
                "machine": m.id, "name": check.name, "status": check.status,
                "output": check.output, "updated_at": check.updated_at,
            }));
            rows.push(vec![
                check.name,
                check.status,
                m.id.clone(),
                check.updated_at,
                check.output,
            ]);
        }
    }
    if out.json {
        return out.print_json(&json);
    }
    if rows.is_empty() {
        println!("No health checks for app {app}");
        return Ok(());
    }
    println!("Health Checks for {app}");
    out.table(
        &["NAME", "STATUS", "MACHINE", "LAST UPDATED", "OUTPUT"],
        rows,
    );
    Ok(())
}
