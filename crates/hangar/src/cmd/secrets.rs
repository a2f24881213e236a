//! `hangar secrets`: an app's secrets, as flyctl manages them. Setting or
//! unsetting restarts the app's running machines one at a time so that they
//! pick the change up, unless `--stage` leaves that to their next restart or
//! update.

use std::collections::BTreeMap;
use std::io::Read;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use hangar_client::{Client, ListMachines};

use super::machine::AppArg;
use crate::output::{Output, spinner};

/// `hangar secrets ...`.
#[derive(Debug, Subcommand)]
pub enum SecretsCmd {
    /// Set secrets: NAME=VALUE ... (values never appear in output).
    Set {
        /// NAME=VALUE pairs.
        #[arg(required = true)]
        pairs: Vec<String>,
        #[command(flatten)]
        app: AppArg,
        /// Do not restart machines; they pick the change up later.
        #[arg(long)]
        stage: bool,
    },
    /// Remove secrets by name.
    Unset {
        /// Names.
        #[arg(required = true)]
        names: Vec<String>,
        #[command(flatten)]
        app: AppArg,
        /// Do not restart machines.
        #[arg(long)]
        stage: bool,
    },
    /// List names and digests (never values).
    #[command(alias = "ls")]
    List {
        #[command(flatten)]
        app: AppArg,
    },
    /// Set secrets from NAME=VALUE lines on stdin (values may hold `=`;
    /// blank lines and `#` comments are skipped).
    Import {
        #[command(flatten)]
        app: AppArg,
        /// Do not restart machines.
        #[arg(long)]
        stage: bool,
    },
}

/// Parses `NAME=VALUE` pairs.
fn pairs<'a>(
    items: impl IntoIterator<Item = &'a str>,
) -> anyhow::Result<BTreeMap<String, Option<String>>> {
    let mut out = BTreeMap::new();
    for (i, item) in items.into_iter().enumerate() {
        // Never echo the item: it may be a value typed without its name.
        let (k, v) = item
            .split_once('=')
            .with_context(|| format!("expected NAME=VALUE: item {} has no '='", i + 1))?;
        if k.trim().is_empty() {
            bail!("item {}: a secret needs a name before '='", i + 1);
        }
        out.insert(k.trim().to_owned(), Some(v.to_owned()));
    }
    Ok(out)
}

/// Runs a `hangar secrets` command.
pub async fn run(cmd: &SecretsCmd, c: &Client, out: &Output) -> anyhow::Result<()> {
    let (app, values, stage) = match cmd {
        SecretsCmd::List { app } => {
            let app = app.get()?;
            let list = c.list_secrets(app).await?;
            if out.json {
                return out.print_json(&list);
            }
            out.table(
                &["NAME", "DIGEST", "UPDATED"],
                list.secrets
                    .into_iter()
                    .map(|s| vec![s.name, s.digest, s.updated_at])
                    .collect(),
            );
            return Ok(());
        }
        SecretsCmd::Set {
            pairs: p,
            app,
            stage,
        } => (app.get()?, pairs(p.iter().map(String::as_str))?, *stage),
        SecretsCmd::Unset { names, app, stage } => (
            app.get()?,
            names.iter().map(|n| (n.clone(), None)).collect(),
            *stage,
        ),
        SecretsCmd::Import { app, stage } => {
            let mut input = String::new();
            std::io::stdin()
                .read_to_string(&mut input)
                .context("reading stdin")?;
            let lines = input
                .lines()
                .map(str::trim_end)
                .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
            (app.get()?, pairs(lines)?, *stage)
        }
    };
    let names: Vec<String> = values.keys().cloned().collect();
    let version = c.update_secrets(app, values).await?;
    if !out.json {
        println!("Secrets {} updated (version {version})", names.join(", "));
    }
    if stage {
        if !out.json {
            println!("Staged: machines pick the change up at their next restart or update");
        }
        return Ok(());
    }
    // Roll the change out. Machines a deploy manages: a release (reason
    // `secrets`) with the current release's strategy and health gating.
    // Others (from `machine run`): restarted one at a time.
    let deployed = c
        .list_releases(app, 100)
        .await?
        .iter()
        .any(|r| r.status == "complete");
    if deployed {
        let rel = c.restart_release(app, "secrets").await?;
        if !out.json {
            println!(
                "==> Release v{} restarts the app's machines with the new secrets",
                rel.version
            );
        }
        super::deploy::follow(c, app, &rel.id, out).await?;
    }
    let machines = c.list_machines(app, &ListMachines::default()).await?;
    let unmanaged = |m: &&hangar_api_types::Machine| {
        !deployed
            || m.config
                .as_ref()
                .and_then(|c| c.metadata.as_ref())
                .and_then(|md| md.get("fly_platform_version"))
                .is_none_or(|v| v != "v2")
    };
    for m in machines
        .iter()
        .filter(|m| m.state == "started")
        .filter(unmanaged)
    {
        let pb = spinner(format!("Restarting machine {} ({})", m.id, m.name));
        c.restart_machine(app, &m.id, None, None, false).await?;
        let r = c
            .wait_machine(app, &m.id, &["started"], Duration::from_secs(120))
            .await;
        pb.finish_and_clear();
        r.with_context(|| format!("machine {} did not come back", m.id))?;
        if !out.json {
            println!("Machine {} restarted with the new secrets", m.id);
        }
    }
    if out.json {
        out.print_json(&serde_json::json!({ "version": version }))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pairs_without_echoing_values() {
        let p = pairs(["A=1", "B=x=y", "C="]).unwrap();
        assert_eq!(p["A"].as_deref(), Some("1"));
        assert_eq!(p["B"].as_deref(), Some("x=y"));
        assert_eq!(p["C"].as_deref(), Some(""));
        let err = pairs(["A=1", "hunter2"]).unwrap_err().to_string();
        assert!(err.contains("item 2") && !err.contains("hunter2"), "{err}");
        assert!(pairs(["=v"]).is_err());
    }
}
