//! `hangar volumes`: persistent disks, as flyctl manages them.

use anyhow::bail;
use clap::Subcommand;
use hangar_api_types::{CreateVolumeRequest, Volume};
use hangar_client::Client;

use super::machine::AppArg;
use crate::output::Output;

/// `hangar volumes ...`.
#[derive(Debug, Subcommand)]
pub enum VolumesCmd {
    /// Create a volume.
    Create {
        /// Name (lowercase letters, digits, underscores).
        name: String,
        #[command(flatten)]
        app: AppArg,
        /// Size in GB.
        #[arg(long, short = 's', default_value_t = 3)]
        size: i64,
        /// Region.
        #[arg(long, short = 'r')]
        region: Option<String>,
        /// Store the data unencrypted.
        #[arg(long)]
        no_encryption: bool,
        /// Restore from this snapshot.
        #[arg(long)]
        snapshot_id: Option<String>,
        /// Days to keep snapshots (1-60).
        #[arg(long)]
        snapshot_retention: Option<i64>,
        /// `ext4` (default) or `raw`.
        #[arg(long)]
        fstype: Option<String>,
        /// Accepted for flyctl compatibility (no prompt is shown).
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// List the app's volumes.
    #[command(alias = "ls")]
    List {
        #[command(flatten)]
        app: AppArg,
    },
    /// Show a volume.
    Show {
        /// Volume id.
        id: String,
        #[command(flatten)]
        app: AppArg,
    },
    /// Grow a volume (online when the kernel allows, else at the machine's
    /// next restart).
    Extend {
        /// Volume id.
        id: String,
        #[command(flatten)]
        app: AppArg,
        /// The new size in GB.
        #[arg(long, short = 's')]
        size: i64,
        /// Accepted for flyctl compatibility.
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Make a new volume from a copy of one.
    Fork {
        /// Volume id.
        id: String,
        #[command(flatten)]
        app: AppArg,
        /// Name of the copy (default: the original's).
        #[arg(long)]
        name: Option<String>,
        /// The region of the copy (default: the original's); in a cluster,
        /// a host there copies the volume from the original's host.
        #[arg(long, short = 'r')]
        region: Option<String>,
    },
    /// Destroy a volume and its data (not while a machine holds it).
    #[command(alias = "delete", alias = "rm")]
    Destroy {
        /// Volume id.
        id: String,
        #[command(flatten)]
        app: AppArg,
        /// Accepted for flyctl compatibility.
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Snapshots of a volume.
    #[command(subcommand, alias = "snapshot")]
    Snapshots(SnapshotsCmd),
}

/// `hangar volumes snapshots ...`.
#[derive(Debug, Subcommand)]
pub enum SnapshotsCmd {
    /// List a volume's snapshots.
    #[command(alias = "ls")]
    List {
        /// Volume id.
        id: String,
        #[command(flatten)]
        app: AppArg,
    },
    /// Take a snapshot now.
    Create {
        /// Volume id.
        id: String,
        #[command(flatten)]
        app: AppArg,
    },
}

fn row(v: &Volume) -> Vec<String> {
    vec![
        v.id.clone(),
        v.state.clone(),
        v.name.clone(),
        format!("{}GB", v.size_gb),
        v.region.clone(),
        v.zone.clone(),
        v.encrypted.to_string(),
        v.attached_machine_id.clone().unwrap_or_default(),
        v.created_at.clone(),
    ]
}

const HEADER: &[&str] = &[
    "ID",
    "STATE",
    "NAME",
    "SIZE",
    "REGION",
    "ZONE",
    "ENCRYPTED",
    "ATTACHED VM",
    "CREATED AT",
];

fn print(v: &Volume, out: &Output) -> anyhow::Result<()> {
    if out.json {
        return out.print_json(v);
    }
    out.table(HEADER, vec![row(v)]);
    Ok(())
}

/// Runs a `hangar volumes` command.
pub async fn run(cmd: &VolumesCmd, c: &Client, out: &Output) -> anyhow::Result<()> {
    match cmd {
        VolumesCmd::Create {
            name,
            app,
            size,
            region,
            no_encryption,
            snapshot_id,
            snapshot_retention,
            fstype,
            yes: _,
        } => {
            let v = c
                .create_volume(
                    app.get()?,
                    &CreateVolumeRequest {
                        name: Some(name.clone()),
                        region: region.clone(),
                        size_gb: Some(*size),
                        encrypted: Some(!no_encryption),
                        fstype: fstype.clone(),
                        snapshot_id: snapshot_id.clone(),
                        snapshot_retention: *snapshot_retention,
                        ..CreateVolumeRequest::default()
                    },
                )
                .await?;
            print(&v, out)
        }
        VolumesCmd::List { app } => {
            let list = c.list_volumes(app.get()?).await?;
            if out.json {
                return out.print_json(&list);
            }
            out.table(HEADER, list.iter().map(row).collect());
            Ok(())
        }
        VolumesCmd::Show { id, app } => print(&c.get_volume(app.get()?, id).await?, out),
        VolumesCmd::Extend { id, app, size, .. } => {
            let r = c.extend_volume(app.get()?, id, *size).await?;
            if out.json {
                return out.print_json(&r);
            }
            out.table(HEADER, vec![row(&r.volume)]);
            if r.needs_restart {
                println!("Restart the machine to use the new size");
            }
            Ok(())
        }
        VolumesCmd::Fork {
            id,
            app,
            name,
            region,
        } => {
            let app = app.get()?;
            let src = c.get_volume(app, id).await?;
            let v = c
                .create_volume(
                    app,
                    &CreateVolumeRequest {
                        name: Some(name.clone().unwrap_or(src.name)),
                        source_volume_id: Some(id.clone()),
                        region: region.clone(),
                        ..CreateVolumeRequest::default()
                    },
                )
                .await?;
            print(&v, out)
        }
        VolumesCmd::Destroy { id, app, .. } => {
            let v = c.delete_volume(app.get()?, id).await?;
            if out.json {
                return out.print_json(&v);
            }
            println!("Destroyed volume {} ({})", v.id, v.name);
            Ok(())
        }
        VolumesCmd::Snapshots(SnapshotsCmd::List { id, app }) => {
            let list = c.list_snapshots(app.get()?, id).await?;
            if out.json {
                return out.print_json(&list);
            }
            out.table(
                &[
                    "ID",
                    "STATUS",
                    "SIZE",
                    "VOLUME SIZE",
                    "CREATED AT",
                    "RETENTION DAYS",
                ],
                list.into_iter()
                    .map(|s| {
                        vec![
                            s.id,
                            s.status,
                            s.size.to_string(),
                            format!("{}GB", s.volume_size),
                            s.created_at,
                            s.retention_days.to_string(),
                        ]
                    })
                    .collect(),
            );
            Ok(())
        }
        VolumesCmd::Snapshots(SnapshotsCmd::Create { id, app }) => {
            c.create_snapshot(app.get()?, id).await?;
            if !out.json {
                println!("Snapshot of {id} taken");
            }
            Ok(())
        }
    }
}

/// Turns `--volume NAME_OR_ID:/path` into `(volume id, path)`: an id is
/// taken as is, a name picks an unattached volume of that name (flyctl's
/// rule).
pub async fn resolve_mount(c: &Client, app: &str, spec: &str) -> anyhow::Result<(String, String)> {
    let Some((source, path)) = spec.split_once(':') else {
        bail!("invalid --volume {spec:?}: use NAME_OR_ID:/path");
    };
    if source.starts_with("vol_") {
        return Ok((source.to_owned(), path.to_owned()));
    }
    let list = c.list_volumes(app).await?;
    match list
        .into_iter()
        .find(|v| v.name == source && v.attached_machine_id.is_none())
    {
        Some(v) => Ok((v.id, path.to_owned())),
        None => bail!(
            "no unattached volume named {source:?} in app {app}: create one with `hangar volumes create {source} -a {app}`"
        ),
    }
}
