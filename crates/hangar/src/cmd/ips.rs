//! `hangar ips`: an app's public addresses, as `fly ips` manages them.

use clap::Subcommand;
use hangar_client::Client;

use super::machine::AppArg;
use crate::output::Output;

/// `hangar ips ...`.
#[derive(Debug, Subcommand)]
pub enum IpsCmd {
    /// List the app's addresses.
    #[command(alias = "ls")]
    List {
        #[command(flatten)]
        app: AppArg,
    },
    /// Give the app a dedicated IPv4 address from the installation's pool
    /// (with --shared, the proxy's shared address).
    #[command(name = "allocate-v4")]
    AllocateV4 {
        #[command(flatten)]
        app: AppArg,
        /// The shared address (HTTP services, routed by Host).
        #[arg(long)]
        shared: bool,
    },
    /// Give an address back.
    Release {
        /// The address.
        ip: String,
        #[command(flatten)]
        app: AppArg,
    },
}

/// Runs a `hangar ips` command.
pub async fn run(cmd: &IpsCmd, c: &Client, out: &Output) -> anyhow::Result<()> {
    match cmd {
        IpsCmd::List { app } => {
            let ips = c.list_ips(app.get()?).await?;
            if out.json {
                return out.print_json(&ips);
            }
            out.table(
                &["VERSION", "IP", "TYPE", "REGION", "CREATED AT"],
                ips.into_iter()
                    .map(|a| {
                        vec![
                            "v4".into(),
                            a.ip,
                            if a.shared {
                                "shared"
                            } else {
                                "public (dedicated)"
                            }
                            .into(),
                            a.region,
                            a.created_at,
                        ]
                    })
                    .collect(),
            );
        }
        IpsCmd::AllocateV4 { app, shared } => {
            let kind = if *shared { "shared_v4" } else { "v4" };
            let a = c.assign_ip(app.get()?, kind).await?;
            if out.json {
                return out.print_json(&a);
            }
            println!("VERSION\tIP\tTYPE\tREGION");
            println!(
                "v4\t{}\t{}\t{}",
                a.ip,
                if a.shared {
                    "shared"
                } else {
                    "public (dedicated)"
                },
                a.region
            );
        }
        IpsCmd::Release { ip, app } => {
            c.release_ip(app.get()?, ip).await?;
            println!("Released {ip} from {}", app.get()?);
        }
    }
    Ok(())
}
