//! `hangar apps create|list|destroy`.

use clap::Subcommand;
use hangar_client::Client;

use crate::output::Output;

/// App commands.
#[derive(Debug, Subcommand)]
pub enum AppsCmd {
    /// Create an app.
    Create {
        /// App name (lowercase letters, digits, dashes).
        name: String,
    },
    /// List apps.
    #[command(alias = "ls")]
    List,
    /// Restart an app's machines: a release with the current fly.toml and
    /// image (health-gated), or each started machine of an app never
    /// deployed.
    Restart {
        /// App name (default: fly.toml's).
        name: Option<String>,
    },
    /// Destroy an app.
    #[command(alias = "delete", alias = "rm")]
    Destroy {
        /// App name.
        name: String,
        /// Destroy its machines and volumes (their data) too.
        #[arg(long)]
        force: bool,
        /// Accepted for flyctl compatibility (no prompt is shown).
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

/// Runs an app command.
pub async fn run(cmd: &AppsCmd, c: &Client, out: &Output) -> anyhow::Result<()> {
    match cmd {
        AppsCmd::Create { name } => {
            let app = c.create_app(name).await?;
            if out.json {
                return out.print_json(&app);
            }
            println!("New app created: {}", app.name);
        }
        AppsCmd::Restart { name } => {
            let arg = super::flytoml::AppArg::from_name(name.clone());
            return super::scale::restart_app(c, arg.get()?, out).await;
        }
        AppsCmd::List => {
            let apps = c.list_apps().await?;
            if out.json {
                return out.print_json(&apps.apps);
            }
            out.table(
                &["NAME", "OWNER", "STATUS", "MACHINES", "CREATED"],
                apps.apps
                    .into_iter()
                    .map(|a| {
                        vec![
                            a.name,
                            a.organization.slug,
                            a.status,
                            a.machine_count.to_string(),
                            humantime::format_rfc3339_seconds(
                                std::time::UNIX_EPOCH
                                    + std::time::Duration::from_millis(a.created_at.max(0) as u64),
                            )
                            .to_string(),
                        ]
                    })
                    .collect(),
            );
        }
        AppsCmd::Destroy { name, force, .. } => {
            c.delete_app(name, *force).await?;
            println!("Destroyed app {name}");
        }
    }
    Ok(())
}
