//! `hangar machine run|create|list|status|start|stop|destroy|wait` and the
//! dispatch of the other machine commands (see machine_ops.rs), with flyctl's
//! flags and defaults.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use hangar_api_types::{
    CreateMachineRequest, Machine, MachineConfig, MachineFile, MachineGuest, MachineInit,
    MachineRestart, StopConfig,
};
use hangar_client::{Client, ClientError, ListMachines};

use super::machine_ops;

mod flags;
mod lifecycle;
mod run;
mod show;

use crate::output::{Output, spinner};
pub(crate) use flags::*;
use run::*;

/// The image `hangar machine run --shell` uses when none is given (flyctl's).
const DEFAULT_SHELL_IMAGE: &str = "ubuntu";

/// Handlers the proxy knows (Fly's names).
const HANDLERS: [&str; 5] = ["http", "tls", "proxy_proto", "pg_tls", "edge_http"];

/// Machine commands.
#[derive(Debug, Subcommand)]
pub enum MachineCmd {
    /// Create and start a machine.
    Run(RunArgs),
    /// Create a machine without starting it.
    Create(RunArgs),
    /// List an app's machines.
    #[command(alias = "ls")]
    List {
        #[command(flatten)]
        app: AppArg,
        /// Include destroyed machines.
        #[arg(long)]
        all: bool,
        /// Only IDs, one per line.
        #[arg(long, short = 'q')]
        quiet: bool,
    },
    /// Show a machine's details and recent events.
    Status {
        /// Machine ID or name.
        id: String,
        #[command(flatten)]
        app: AppArg,
        /// Also print the machine's config.
        #[arg(long, short = 'd')]
        display_config: bool,
    },
    /// Start machines.
    Start {
        /// Machine IDs or names.
        #[arg(required = true)]
        ids: Vec<String>,
        #[command(flatten)]
        app: AppArg,
    },
    /// Stop machines.
    Stop {
        /// Machine IDs or names.
        #[arg(required = true)]
        ids: Vec<String>,
        #[command(flatten)]
        app: AppArg,
        /// Signal to send (default: the machine's stop_config.signal, SIGINT).
        #[arg(long, short = 's')]
        signal: Option<String>,
        /// Seconds (or a duration such as 30s) before SIGKILL.
        #[arg(long)]
        timeout: Option<String>,
    },
    /// Destroy a machine.
    #[command(alias = "remove", alias = "rm")]
    Destroy {
        /// Machine ID or name.
        id: String,
        #[command(flatten)]
        app: AppArg,
        /// Kill it if it runs.
        #[arg(long, short = 'f')]
        force: bool,
    },
    /// Replace a machine's config (image, env, size, ...) and restart it.
    Update(machine_ops::UpdateArgs),
    /// Create a machine with the same config as another.
    Clone(machine_ops::CloneArgs),
    /// Restart machines.
    Restart {
        /// Machine IDs or names.
        #[arg(required = true)]
        ids: Vec<String>,
        #[command(flatten)]
        app: AppArg,
        /// Signal to stop with.
        #[arg(long, short = 's')]
        signal: Option<String>,
        /// Time before SIGKILL (e.g. 30s).
        #[arg(long = "time", alias = "timeout")]
        time: Option<String>,
        /// Kill at once (SIGKILL).
        #[arg(long, short = 'f')]
        force: bool,
    },
    /// Send a signal to a machine's main process.
    Signal {
        /// Machine ID or name.
        id: String,
        #[command(flatten)]
        app: AppArg,
        /// The signal (name or number).
        #[arg(long, short = 's')]
        signal: String,
    },
    /// Suspend a machine (freeze it; `start` resumes it).
    Suspend {
        /// Machine ID or name.
        id: String,
        #[command(flatten)]
        app: AppArg,
    },
    /// Take a machine out of proxy rotation.
    Cordon {
        /// Machine ID or name.
        id: String,
        #[command(flatten)]
        app: AppArg,
    },
    /// Put a machine back into proxy rotation.
    Uncordon {
        /// Machine ID or name.
        id: String,
        #[command(flatten)]
        app: AppArg,
    },
    /// Run a command in a machine: one argument is a command line, several
    /// are the program and its arguments.
    Exec {
        /// Machine ID or name.
        id: String,
        /// The command.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
        #[command(flatten)]
        app: AppArg,
        /// Seconds before the command is killed (without --tty).
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        /// Pass stdin to the command.
        #[arg(long, short = 'i')]
        interactive: bool,
        /// Attach a terminal (PTY) to the command, as `docker exec -it`.
        #[arg(long, short = 't')]
        tty: bool,
    },
    /// List a machine's processes.
    Ps {
        /// Machine ID or name.
        id: String,
        #[command(flatten)]
        app: AppArg,
    },
    /// View or clear a machine's lease.
    #[command(subcommand, alias = "lease")]
    Leases(machine_ops::LeasesCmd),
    /// Get, set or unset a machine's metadata.
    #[command(subcommand)]
    Metadata(machine_ops::MetadataCmd),
    /// Wait for a machine to reach a state.
    Wait {
        /// Machine ID or name.
        id: String,
        #[command(flatten)]
        app: AppArg,
        /// The state to wait for.
        #[arg(long, default_value = "started")]
        state: String,
        /// How long to wait (e.g. 60s, 5m).
        #[arg(long = "wait-timeout", alias = "timeout", default_value = "5m")]
        wait_timeout: String,
    },
}

/// Runs a machine command.
pub async fn run(cmd: &MachineCmd, c: &Client, out: &Output) -> anyhow::Result<()> {
    match cmd {
        MachineCmd::Run(args) => run_machine(args, c, out, true).await,
        MachineCmd::Update(a) => machine_ops::update(a, c, out).await,
        MachineCmd::Clone(a) => machine_ops::clone(a, c, out).await,
        MachineCmd::Restart {
            ids,
            app,
            signal,
            time,
            force,
        } => {
            let time = time.as_deref().map(seconds_to_duration);
            machine_ops::restart(ids, app, signal.as_deref(), time.as_deref(), *force, c).await
        }
        MachineCmd::Signal { id, app, signal } => lifecycle::signal(c, app, id, signal).await,
        MachineCmd::Suspend { id, app } => {
            lifecycle::action(c, app, id, "suspend", "suspended").await
        }
        MachineCmd::Cordon { id, app } => lifecycle::action(c, app, id, "cordon", "cordoned").await,
        MachineCmd::Uncordon { id, app } => {
            lifecycle::action(c, app, id, "uncordon", "uncordoned").await
        }
        MachineCmd::Exec {
            id,
            command,
            app,
            timeout,
            interactive,
            tty,
        } => {
            if *tty {
                machine_ops::exec_tty(id, app, command, c).await
            } else {
                machine_ops::exec(id, app, command, *timeout, *interactive, c, out).await
            }
        }
        MachineCmd::Ps { id, app } => machine_ops::ps(id, app, c, out).await,
        MachineCmd::Leases(cmd) => machine_ops::leases(cmd, c, out).await,
        MachineCmd::Metadata(cmd) => machine_ops::metadata(cmd, c, out).await,
        MachineCmd::Create(args) => run_machine(args, c, out, false).await,
        MachineCmd::List { app, all, quiet } => show::list(c, out, app, *all, *quiet).await,
        MachineCmd::Status {
            id,
            app,
            display_config,
        } => show::status(c, out, app, id, *display_config).await,
        MachineCmd::Start { ids, app } => lifecycle::start(c, out, app, ids).await,
        MachineCmd::Stop {
            ids,
            app,
            signal,
            timeout,
        } => lifecycle::stop(c, app, ids, signal.as_deref(), timeout.as_deref()).await,
        MachineCmd::Destroy { id, app, force } => lifecycle::destroy(c, app, id, *force).await,
        MachineCmd::Wait {
            id,
            app,
            state,
            wait_timeout,
        } => lifecycle::wait(c, out, app, id, state, wait_timeout).await,
    }
}

/// A machine ID, or the ID of the app's machine with that name.
pub(crate) async fn resolve(c: &Client, app: &str, id_or_name: &str) -> anyhow::Result<String> {
    let is_id = id_or_name.len() == 14 && id_or_name.bytes().all(|b| b.is_ascii_hexdigit());
    if is_id {
        return Ok(id_or_name.to_owned());
    }
    let machines = c.list_machines(app, &ListMachines::default()).await?;
    machines
        .into_iter()
        .find(|m| m.name == id_or_name)
        .map(|m| m.id)
        .with_context(|| format!("no machine with ID or name {id_or_name:?} in app {app}"))
}
