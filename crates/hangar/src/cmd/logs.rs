//! `hangar logs`: the output of an app's machines, as flyctl prints it
//! (`TIME APP[MACHINE] REGION [LEVEL] MESSAGE`), optionally followed.

use clap::Args;
use futures::StreamExt;
use hangar_client::{Client, LogsQuery};

use super::machine::{AppArg, resolve};
use crate::output::Output;

/// `hangar logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    #[command(flatten)]
    app: AppArg,
    /// Only this machine (id or name).
    #[arg(long = "machine", short = 'i', alias = "instance")]
    machine: Option<String>,
    /// Keep streaming new lines.
    #[arg(long, short = 'f')]
    follow: bool,
    /// Print the recent lines and exit (the default; flyctl's flag).
    #[arg(long = "no-tail", conflicts_with = "follow")]
    no_tail: bool,
    /// Only lines at or after this time (RFC 3339).
    #[arg(long)]
    since: Option<String>,
    /// How many recent lines to print first.
    #[arg(long, short = 'n', default_value_t = 100)]
    lines: usize,
}

/// Runs `hangar logs`.
pub async fn run(args: &LogsArgs, c: &Client, out: &Output) -> anyhow::Result<()> {
    let app = args.app.get()?;
    let machine = match &args.machine {
        Some(m) => Some(resolve(c, app, m).await?),
        None => None,
    };
    let query = LogsQuery {
        machine,
        since: args.since.clone(),
        tail: Some(args.lines),
        follow: args.follow && !args.no_tail,
    };
    let mut lines = std::pin::pin!(c.logs(app, &query).await?);
    while let Some(entry) = lines.next().await {
        let e = entry?;
        if out.json {
            println!("{}", serde_json::to_string(&e)?);
        } else {
            let level = if e.stream == "stderr" {
                "error"
            } else {
                "info"
            };
            // Seconds are enough for people; --json keeps the nanoseconds.
            let time = match e.timestamp.split_once('.') {
                Some((secs, _)) => format!("{secs}Z"),
                None => e.timestamp.clone(),
            };
            println!(
                "{time} app[{}] {} [{level}] {}",
                e.machine_id, e.region, e.message
            );
        }
    }
    Ok(())
}
