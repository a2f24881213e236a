//! `hangar`: the Hangar CLI, shaped like flyctl.
//!
//! It talks to `hangard` over the Machines API: the address comes from
//! `--api-url` or `HANGAR_API_URL` (default `http://127.0.0.1:4280`), the
//! token from `--token`, `HANGAR_API_TOKEN`, `FLY_API_TOKEN`, or, when run as
//! root on the `hangard` host, its admin token file.

mod cmd;
mod output;
mod terminal;

use clap::{Parser, Subcommand};

/// Run Fly-style machines on your own hosts.
#[derive(Debug, Parser)]
#[command(name = "hangar", version, about, propagate_version = true)]
pub struct Cli {
    /// hangard's API address.
    #[arg(long, global = true, env = "HANGAR_API_URL", default_value = hangar_client::DEFAULT_URL)]
    api_url: String,
    /// API token (default: HANGAR_API_TOKEN, FLY_API_TOKEN, or the local admin token).
    #[arg(long, global = true, hide_env_values = true)]
    token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
enum Command {
    /// Manage apps.
    #[command(subcommand, alias = "app")]
    Apps(cmd::apps::AppsCmd),
    /// Manage machines.
    #[command(subcommand, alias = "machines", alias = "m")]
    Machine(cmd::machine::MachineCmd),
    /// Manage images in hangard's store.
    #[command(subcommand, alias = "images")]
    Image(cmd::image::ImageCmd),
    /// Show (and follow) the output of an app's machines.
    Logs(cmd::logs::LogsArgs),
    /// An app at a glance: its image, release and machines.
    Status(cmd::status::StatusArgs),
    /// Check this host for what hangard needs, and say what to fix.
    Doctor(cmd::doctor::DoctorArgs),
    /// Open hangard's web dashboard, logged in.
    Dashboard(cmd::dashboard::DashboardArgs),
    /// Manage an app's secrets.
    #[command(subcommand, alias = "secret")]
    Secrets(cmd::secrets::SecretsCmd),
    /// Manage an app's public addresses.
    #[command(subcommand, alias = "ip")]
    Ips(cmd::ips::IpsCmd),
    /// Show the health checks of an app's machines.
    #[command(subcommand, alias = "check")]
    Checks(cmd::checks::ChecksCmd),
    /// Manage app tokens.
    #[command(subcommand, alias = "token")]
    Tokens(cmd::tokens::TokensCmd),
    /// Manage an app's volumes.
    #[command(subcommand, alias = "volume", alias = "vol")]
    Volumes(cmd::volumes::VolumesCmd),
    /// Deploy fly.toml: a release that hangard runs.
    Deploy(cmd::deploy::DeployArgs),
    /// List an app's releases; show, watch, cancel or roll back one.
    #[command(alias = "release")]
    Releases(cmd::deploy::ReleasesArgs),
    /// Show or check fly.toml.
    #[command(subcommand)]
    Config(cmd::deploy::ConfigCmd),
    /// Change how many machines a process group has, or their size.
    #[command(subcommand)]
    Scale(cmd::scale::ScaleCmd),
    /// Create an app and its fly.toml from an image, then deploy it.
    Launch(cmd::launch::LaunchArgs),
    /// The hosts of the installation (a cluster's, with hangard --cluster).
    #[command(subcommand, alias = "host")]
    Hosts(cmd::hosts::HostsCmd),
}

impl Cli {
    fn client(&self) -> anyhow::Result<hangar_client::Client> {
        let token = match &self.token {
            Some(t) => t.clone(),
            None => hangar_client::discover_token()?,
        };
        Ok(hangar_client::Client::new(&self.api_url, token))
    }
}

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: {e}");
            std::process::exit(1);
        }
    };
    let result = rt.block_on(async {
        let out = output::Output { json: cli.json };
        if let Command::Doctor(a) = &cli.command {
            // Works before hangard is set up: a token only if there is one.
            let token = cli
                .token
                .clone()
                .or_else(|| hangar_client::discover_token().ok());
            return cmd::doctor::run(a, &cli.api_url, token, &out).await;
        }
        let client = cli.client()?;
        match &cli.command {
            Command::Apps(c) => cmd::apps::run(c, &client, &out).await,
            Command::Machine(c) => cmd::machine::run(c, &client, &out).await,
            Command::Image(c) => cmd::image::run(c, &client, &out).await,
            Command::Logs(a) => cmd::logs::run(a, &client, &out).await,
            Command::Status(a) => cmd::status::run(a, &client, &out).await,
            Command::Secrets(c) => cmd::secrets::run(c, &client, &out).await,
            Command::Volumes(c) => cmd::volumes::run(c, &client, &out).await,
            Command::Checks(c) => cmd::checks::run(c, &client, &out).await,
            Command::Ips(c) => cmd::ips::run(c, &client, &out).await,
            Command::Tokens(c) => cmd::tokens::run(c, &client, &out).await,
            Command::Deploy(a) => cmd::deploy::deploy(a, &client, &out).await,
            Command::Releases(a) => cmd::deploy::releases(a, &client, &out).await,
            Command::Config(c) => cmd::deploy::config(c, &out),
            Command::Scale(c) => cmd::scale::run(c, &client, &out).await,
            Command::Launch(a) => cmd::launch::run(a, &client, &out).await,
            Command::Hosts(c) => cmd::hosts::run(c, &client, &out).await,
            Command::Doctor(_) => Ok(()),
            Command::Dashboard(a) => cmd::dashboard::run(a, &cli.api_url, client.token()),
        }
    });
    if let Err(e) = result {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_command_s_flags_fit_together() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
