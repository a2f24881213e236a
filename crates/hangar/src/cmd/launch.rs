//! `hangar launch`: a new app and the fly.toml to deploy it with, from an
//! image and flags (no source scanners), then its first deploy unless
//! `--no-deploy`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use hangar_appconfig::{AppConfig, Build, Check, Deploy, HttpService, Memory, Vm};
use hangar_client::Client;

use crate::output::Output;

/// `hangar launch`.
#[derive(Debug, Args)]
pub struct LaunchArgs {
    /// The image to run.
    #[arg(long, short = 'i')]
    image: String,
    /// The app's name (default: the directory's name).
    #[arg(long)]
    name: Option<String>,
    /// Where to write fly.toml (default: the current directory).
    #[arg(long, default_value = ".")]
    path: PathBuf,
    /// The port the app listens on: an [http_service] on it.
    #[arg(long)]
    internal_port: Option<u16>,
    /// An HTTP health check on this path (with --internal-port).
    #[arg(long)]
    check_path: Option<String>,
    /// The region of its machines.
    #[arg(long, short = 'r')]
    region: Option<String>,
    /// A size such as shared-cpu-1x.
    #[arg(long)]
    vm_size: Option<String>,
    /// Memory in MB.
    #[arg(long)]
    vm_memory: Option<i64>,
    /// Write fly.toml and create the app, without deploying.
    #[arg(long)]
    no_deploy: bool,
    /// Overwrite an existing fly.toml.
    #[arg(long)]
    force: bool,
}

/// Runs `hangar launch`.
pub async fn run(a: &LaunchArgs, c: &Client, out: &Output) -> anyhow::Result<()> {
    let file = a.path.join("fly.toml");
    if file.exists() && !a.force {
        bail!(
            "{} exists: deploy it with `hangar deploy`, or pass --force",
            file.display()
        );
    }
    let name = match &a.name {
        Some(n) => n.clone(),
        None => std::fs::canonicalize(&a.path)?
            .file_name()
            .and_then(|n| n.to_str())
            .map(|n| n.to_ascii_lowercase().replace(['_', '.', ' '], "-"))
            .context("cannot name the app after this directory: pass --name")?,
    };
    let mut cfg = AppConfig {
        app: Some(name.clone()),
        primary_region: a.region.clone(),
        build: Some(Build {
            image: Some(a.image.clone()),
            ..Build::default()
        }),
        deploy: Some(Deploy {
            strategy: Some("rolling".into()),
            ..Deploy::default()
        }),
        ..AppConfig::default()
    };
    if let Some(port) = a.internal_port {
        cfg.http_service = Some(HttpService {
            internal_port: Some(port),
            force_https: Some(false),
            auto_stop_machines: Some(hangar_appconfig::AutoStop::Mode("stop".into())),
            auto_start_machines: Some(true),
            min_machines_running: Some(0),
            checks: a
                .check_path
                .iter()
                .map(|p| Check {
                    path: Some(p.clone()),
                    interval: Some(hangar_appconfig::Millis(std::time::Duration::from_secs(10))),
                    timeout: Some(hangar_appconfig::Millis(std::time::Duration::from_secs(2))),
                    grace_period: Some(hangar_appconfig::Millis(std::time::Duration::from_secs(5))),
                    ..Check::default()
                })
                .collect(),
            ..HttpService::default()
        });
    } else if a.check_path.is_some() {
        bail!("--check-path needs --internal-port");
    }
    if a.vm_size.is_some() || a.vm_memory.is_some() {
        cfg.vm = vec![Vm {
            size: a.vm_size.clone(),
            memory: a.vm_memory.map(Memory::Mb),
            ..Vm::default()
        }];
    }
    cfg.validate()?;
    let text = toml::to_string_pretty(&cfg).context("writing fly.toml")?;
    if c.get_app(&name).await.is_err() {
        c.create_app(&name).await?;
        println!("New app created: {name}");
    }
    std::fs::write(
        &file,
        format!("# fly.toml for app {name}, written by hangar launch\n\n{text}"),
    )
    .with_context(|| format!("writing {}", file.display()))?;
    println!("Wrote {}", file.display());
    if a.no_deploy {
        println!("Deploy it with `hangar deploy`");
        return Ok(());
    }
    let args = super::deploy::DeployArgs::for_launch(a.path.clone());
    super::deploy::deploy(&args, c, out).await
}
