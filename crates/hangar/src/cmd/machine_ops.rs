//! `hangar machine update|clone|restart|signal|suspend|cordon|uncordon|exec|
//! ps|leases|metadata`, with flyctl's flags.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use hangar_api_types::{CreateMachineRequest, MachineExecRequest, UpdateMachineRequest};
use hangar_client::Client;

use super::machine::{AppArg, ConfigFlags, apply_flags, resolve};
use crate::output::{Output, spinner};

/// `hangar machine update`.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Machine ID or name.
    id: String,
    #[command(flatten)]
    app: AppArg,
    /// A new image.
    #[arg(long, short = 'i')]
    image: Option<String>,
    /// A new command (replaces CMD; shell words).
    #[arg(long = "command", short = 'C')]
    command: Option<String>,
    #[command(flatten)]
    flags: ConfigFlags,
    /// Update the config but leave the machine stopped.
    #[arg(long = "skip-start", alias = "skip-launch")]
    skip_start: bool,
    /// Return without waiting for the machine to start.
    #[arg(long, short = 'd')]
    detach: bool,
    /// Accepted for flyctl compatibility (no prompt is shown).
    #[arg(long, short = 'y')]
    yes: bool,
}

/// `hangar machine clone`.
#[derive(Debug, Args)]
pub struct CloneArgs {
    /// Machine ID or name to copy.
    id: String,
    #[command(flatten)]
    app: AppArg,
    /// Name of the new machine.
    #[arg(long, short = 'n')]
    name: Option<String>,
    /// Region of the new machine.
    #[arg(long, short = 'r')]
    region: Option<String>,
    /// Return without waiting for the clone to start.
    #[arg(long, short = 'd')]
    detach: bool,
}

/// Lease commands.
#[derive(Debug, Subcommand)]
pub enum LeasesCmd {
    /// Show a machine's lease.
    View {
        /// Machine ID or name.
        id: String,
        #[command(flatten)]
        app: AppArg,
    },
    /// Release a machine's lease, whoever holds it.
    Clear {
        /// Machine ID or name.
        id: String,
        #[command(flatten)]
        app: AppArg,
    },
}

/// Metadata commands.
#[derive(Debug, Subcommand)]
pub enum MetadataCmd {
    /// Show a machine's metadata (or one key's value).
    Get {
        /// Machine ID or name.
        id: String,
        /// A key.
        key: Option<String>,
        #[command(flatten)]
        app: AppArg,
    },
    /// Set KEY=VALUE pairs.
    Set {
        /// Machine ID or name.
        id: String,
        /// KEY=VALUE pairs.
        #[arg(required = true)]
        pairs: Vec<String>,
        #[command(flatten)]
        app: AppArg,
    },
    /// Remove keys.
    Unset {
        /// Machine ID or name.
        id: String,
        /// Keys.
        #[arg(required = true)]
        keys: Vec<String>,
        #[command(flatten)]
        app: AppArg,
    },
}

/// `hangar machine update`: GETs the config, applies the flags, POSTs it back
/// with the version it read (so a concurrent change is not overwritten).
pub async fn update(a: &UpdateArgs, c: &Client, out: &Output) -> anyhow::Result<()> {
    let app = a.app.get()?;
    let id = resolve(c, app, &a.id).await?;
    let m = c.get_machine(app, &id).await?;
    let mut config = m.config.clone().context("the machine has no config")?;
    if let Some(image) = &a.image {
        config.image = image.clone();
    }
    if let Some(cmd) = &a.command {
        config.init.get_or_insert_with(Default::default).cmd =
            Some(shlex::split(cmd).with_context(|| format!("invalid --command {cmd:?}"))?);
    }
    apply_flags(&mut config, &a.flags)?;
    // A standby rests stopped.
    let stays_stopped = a.skip_start || config.standbys.is_some();
    let req = UpdateMachineRequest {
        config: Some(config),
        current_version: Some(m.instance_id.clone()),
        skip_launch: a.skip_start.then_some(true),
        ..UpdateMachineRequest::default()
    };
    let updated = c.update_machine(app, &id, &req, None).await?;
    if !a.detach {
        let want = if stays_stopped { "stopped" } else { "started" };
        let pb = spinner(format!("Waiting for machine {id} to be updated"));
        let r = c
            .wait_machine(app, &id, &[want], Duration::from_secs(300))
            .await;
        pb.finish_and_clear();
        r.with_context(|| format!("machine {id} was updated but did not reach {want}"))?;
    }
    if out.json {
        return out.print_json(&c.get_machine(app, &id).await?);
    }
    println!(
        "Machine {id} updated to version {} (was {})",
        updated.instance_id, m.instance_id
    );
    Ok(())
}

/// `hangar machine clone`: a new machine with the same config.
pub async fn clone(a: &CloneArgs, c: &Client, out: &Output) -> anyhow::Result<()> {
    let app = a.app.get()?;
    let id = resolve(c, app, &a.id).await?;
    let src = c.get_machine(app, &id).await?;
    let req = CreateMachineRequest {
        config: src.config,
        name: a.name.clone(),
        region: a.region.clone().or(Some(src.region)),
        ..CreateMachineRequest::default()
    };
    let m = c.create_machine(app, &req).await?;
    if !a.detach {
        let pb = spinner(format!("Waiting for machine {} to start", m.id));
        let r = c
            .wait_machine(app, &m.id, &["started"], Duration::from_secs(300))
            .await;
        pb.finish_and_clear();
        r?;
    }
    if out.json {
        return out.print_json(&c.get_machine(app, &m.id).await?);
    }
    println!("Cloned machine {id} into {} ({})", m.id, m.name);
    Ok(())
}

/// `hangar machine restart`.
pub async fn restart(
    ids: &[String],
    app: &AppArg,
    signal: Option<&str>,
    timeout: Option<&str>,
    force: bool,
    c: &Client,
) -> anyhow::Result<()> {
    let app = app.get()?;
    for id in ids {
        let id = resolve(c, app, id).await?;
        c.restart_machine(app, &id, signal, timeout, force).await?;
        let pb = spinner(format!("Restarting machine {id}"));
        let r = c
            .wait_machine(app, &id, &["started"], Duration::from_secs(300))
            .await;
        pb.finish_and_clear();
        r?;
        println!("Machine {id} restarted");
    }
    Ok(())
}

/// `hangar machine exec`: prints the command's output; exits with its code.
pub async fn exec(
    id: &str,
    app: &AppArg,
    command: &[String],
    timeout: u64,
    interactive: bool,
    c: &Client,
    out: &Output,
) -> anyhow::Result<()> {
    let app = app.get()?;
    let id = resolve(c, app, id).await?;
    // One argument is a command line (flyctl's form); several are argv.
    let mut req = if command.len() == 1 {
        MachineExecRequest {
            cmd: Some(command[0].clone()),
            timeout: Some(timeout as i64),
            ..MachineExecRequest::default()
        }
    } else {
        MachineExecRequest {
            command: Some(command.to_vec()),
            timeout: Some(timeout as i64),
            ..MachineExecRequest::default()
        }
    };
    if interactive {
        use std::io::Read;
        let mut input = String::new();
        std::io::stdin()
            .read_to_string(&mut input)
            .context("reading stdin")?;
        req.stdin = Some(input);
    }
    let r = c.exec(app, &id, &req).await?;
    if out.json {
        out.print_json(&r)?;
    } else {
        print!("{}", r.stdout);
        eprint!("{}", r.stderr);
    }
    if r.exit_code != 0 {
        std::process::exit(r.exit_code.clamp(1, 255));
    }
    Ok(())
}

/// `hangar machine exec -it`: the command attached to this terminal; exits
/// with the command's exit code.
pub async fn exec_tty(
    id: &str,
    app: &AppArg,
    command: &[String],
    c: &Client,
) -> anyhow::Result<()> {
    let app = app.get()?;
    let id = resolve(c, app, id).await?;
    let argv = if command.len() == 1 {
        shlex::split(&command[0])
            .with_context(|| format!("invalid command line {:?}", command[0]))?
    } else {
        command.to_vec()
    };
    let code = attach_tty(c, app, &id, argv).await?;
    std::process::exit(code.clamp(0, 255));
}

/// Runs `argv` with this terminal attached; returns its exit code.
pub(crate) async fn attach_tty(
    c: &Client,
    app: &str,
    id: &str,
    argv: Vec<String>,
) -> anyhow::Result<i32> {
    let (rows, cols) = crate::terminal::window_size();
    let session = c
        .exec_tty(
            app,
            id,
            &hangar_client::TtyOptions {
                argv,
                rows,
                cols,
                term: std::env::var("TERM").ok(),
            },
        )
        .await?;
    crate::terminal::attach(session).await
}

/// `hangar machine ps`.
pub async fn ps(id: &str, app: &AppArg, c: &Client, out: &Output) -> anyhow::Result<()> {
    let app = app.get()?;
    let id = resolve(c, app, id).await?;
    let procs = c.processes(app, &id).await?;
    if out.json {
        return out.print_json(&procs);
    }
    out.table(
        &[
            "PID",
            "RSS",
            "CPU",
            "RUNNING",
            "DIRECTORY",
            "LISTENING",
            "COMMAND",
        ],
        procs
            .into_iter()
            .map(|p| {
                vec![
                    p.pid.to_string(),
                    format!("{} KB", p.rss / 1024),
                    format!("{:.1}s", p.cpu as f64 / 1000.0),
                    format!("{}s", p.rtime / 1000),
                    p.directory,
                    p.listen_sockets
                        .iter()
                        .map(|l| format!("{}/{}", l.address, l.proto))
                        .collect::<Vec<_>>()
                        .join(","),
                    p.command,
                ]
            })
            .collect(),
    );
    Ok(())
}

/// `hangar machine leases`.
pub async fn leases(cmd: &LeasesCmd, c: &Client, out: &Output) -> anyhow::Result<()> {
    match cmd {
        LeasesCmd::View { id, app } => {
            let app = app.get()?;
            let id = resolve(c, app, id).await?;
            match c.get_lease(app, &id).await? {
                None => println!("Machine {id} has no lease"),
                Some(l) if out.json => out.print_json(&l)?,
                Some(l) => {
                    let until =
                        std::time::UNIX_EPOCH + Duration::from_secs(l.expires_at.max(0) as u64);
                    out.table(
                        &["MACHINE", "OWNER", "EXPIRES", "DESCRIPTION", "NONCE"],
                        vec![vec![
                            id,
                            l.owner,
                            humantime::format_rfc3339_seconds(until).to_string(),
                            l.description,
                            l.nonce.unwrap_or_default(),
                        ]],
                    );
                }
            }
        }
        LeasesCmd::Clear { id, app } => {
            let app = app.get()?;
            let id = resolve(c, app, id).await?;
            match c.get_lease(app, &id).await? {
                None => println!("Machine {id} has no lease"),
                Some(l) => {
                    let nonce = l.nonce.context("the API did not show the lease's nonce")?;
                    c.release_lease(app, &id, &nonce).await?;
                    println!("Cleared the lease held by {} on machine {id}", l.owner);
                }
            }
        }
    }
    Ok(())
}

/// `hangar machine metadata`.
pub async fn metadata(cmd: &MetadataCmd, c: &Client, out: &Output) -> anyhow::Result<()> {
    match cmd {
        MetadataCmd::Get { id, key, app } => {
            let app = app.get()?;
            let id = resolve(c, app, id).await?;
            let md = c.metadata(app, &id).await?;
            match key {
                Some(k) => match md.get(k) {
                    Some(v) => println!("{v}"),
                    None => bail!("machine {id} has no metadata key {k:?}"),
                },
                None if out.json => out.print_json(&md)?,
                None => out.table(
                    &["KEY", "VALUE"],
                    md.into_iter().map(|(k, v)| vec![k, v]).collect(),
                ),
            }
        }
        MetadataCmd::Set { id, pairs, app } => {
            let app = app.get()?;
            let id = resolve(c, app, id).await?;
            let mut changes = BTreeMap::new();
            for p in pairs {
                let (k, v) = p
                    .split_once('=')
                    .with_context(|| format!("invalid pair {p:?}: use KEY=VALUE"))?;
                changes.insert(k.to_owned(), Some(v.to_owned()));
            }
            c.update_metadata(app, &id, &changes).await?;
            println!("Updated the metadata of machine {id}");
        }
        MetadataCmd::Unset { id, keys, app } => {
            let app = app.get()?;
            let id = resolve(c, app, id).await?;
            let changes: BTreeMap<String, Option<String>> =
                keys.iter().map(|k| (k.clone(), None)).collect();
            c.update_metadata(app, &id, &changes).await?;
            println!(
                "Removed {} from the metadata of machine {id}",
                keys.join(", ")
            );
        }
    }
    Ok(())
}
