//! `hangar image import|list`.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use hangar_client::Client;

use crate::output::{Output, spinner};

/// Image commands.
#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Load an OCI image layout (a directory, as umoci or `skopeo copy ... oci:DIR` write it),
    /// an OCI archive or a Docker archive into hangard's store.
    Import {
        /// Directory or tar file.
        path: PathBuf,
        /// Name to file it under (NAME[:TAG]); defaults to the name the archive carries.
        #[arg(long)]
        name: Option<String>,
    },
    /// List stored images.
    #[command(alias = "ls")]
    List,
    /// Collect the registry's garbage: images no tag, release or machine
    /// uses, and their layers.
    Prune,
    /// Push an image built elsewhere (in buildah's or podman's local
    /// storage) to hangard's registry as `<app>:<tag>`.
    Push {
        /// The local image (e.g. `localhost/shop:dev`).
        local: String,
        #[command(flatten)]
        app: super::flytoml::AppArg,
        /// The tag in hangard (default: the local image's, else latest).
        #[arg(long)]
        tag: Option<String>,
        /// buildah, podman or auto.
        #[arg(long, default_value = "auto")]
        builder: String,
    },
}

/// Runs an image command.
pub async fn run(cmd: &ImageCmd, c: &Client, out: &Output) -> anyhow::Result<()> {
    match cmd {
        ImageCmd::Prune => {
            let r = c.prune_images().await?;
            if out.json {
                return out.print_json(&r);
            }
            println!(
                "Removed {} manifest(s) and {} blob(s), {} MB freed",
                r.manifests,
                r.blobs,
                r.bytes / 1_000_000
            );
        }
        ImageCmd::Push {
            local,
            app,
            tag,
            builder,
        } => {
            let app = app.get()?;
            let tag = tag.clone().unwrap_or_else(|| {
                local
                    .rsplit_once(':')
                    .filter(|(_, t)| !t.contains('/'))
                    .map_or("latest".into(), |(_, t)| t.to_owned())
            });
            let b = super::build::pick(builder)?;
            let host = c.registry_host();
            let digest = b.push(
                local,
                &format!("docker://{host}/{app}:{tag}"),
                &format!("hangar:{}", c.token()),
            )?;
            println!("Pushed {host}/{app}:{tag} ({digest})");
        }
        ImageCmd::Import { path, name } => {
            let pb = spinner(format!("Importing {}", path.display()));
            let result = import(c, path, name.as_deref()).await;
            pb.finish_and_clear();
            let img = result?;
            if out.json {
                return out.print_json(&img);
            }
            println!(
                "Imported {} ({}, {} layers)",
                img.name, img.digest, img.layers
            );
        }
        ImageCmd::List => {
            let images = c.list_images().await?;
            if out.json {
                return out.print_json(&images);
            }
            out.table(
                &["NAME", "DIGEST", "SOURCE", "LAYERS"],
                images
                    .into_iter()
                    .map(|i| vec![i.name, i.digest, i.source, i.layers.to_string()])
                    .collect(),
            );
        }
    }
    Ok(())
}

async fn import(
    c: &Client,
    path: &Path,
    name: Option<&str>,
) -> anyhow::Result<hangar_api_types::ImageSummary> {
    if path.is_dir() {
        // An OCI layout directory: send it as a tar stream.
        let tmp = tempfile::NamedTempFile::new()?;
        {
            let mut b = tar::Builder::new(tmp.as_file());
            b.follow_symlinks(false);
            b.append_dir_all(".", path)?;
            b.finish()?;
        }
        Ok(c.import_image_file(tmp.path(), name).await?)
    } else if path.is_file() {
        Ok(c.import_image_file(path, name).await?)
    } else {
        anyhow::bail!("{} is neither a directory nor a file", path.display())
    }
}
