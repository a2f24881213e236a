//! fly.toml on the CLI's side: finding it (`-c/--config`, else
//! `./fly.toml`), reading it with warnings, and the app it names, which
//! every command taking `--app` uses when `--app` is not given.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, bail};
use clap::Args;
use hangar_appconfig::Loaded;

/// The app flag, as flyctl spells it, with fly.toml as the fallback.
#[derive(Debug, Args)]
pub struct AppArg {
    /// App name (default: `app` in fly.toml).
    #[arg(long, short = 'a', env = "HANGAR_APP")]
    pub(crate) app: Option<String>,
    /// fly.toml to read (a file, or a directory holding one); default
    /// ./fly.toml.
    #[arg(long = "config", short = 'c', value_name = "PATH")]
    pub(crate) config: Option<PathBuf>,
    #[arg(skip)]
    resolved: OnceLock<String>,
}

impl AppArg {
    /// An app given by name (or none: fly.toml's).
    pub(crate) fn from_name(app: Option<String>) -> AppArg {
        AppArg {
            app,
            config: None,
            resolved: OnceLock::new(),
        }
    }

    /// The app: `--app`, else fly.toml's `app`.
    pub(crate) fn get(&self) -> anyhow::Result<&str> {
        if let Some(a) = &self.app {
            return Ok(a);
        }
        if let Some(a) = self.resolved.get() {
            return Ok(a);
        }
        let name = match find(self.config.as_deref())? {
            Some(path) => {
                let loaded = read(&path)?;
                loaded.config.app.with_context(|| {
                    format!(
                        "{} has no `app`: add one, or use --app NAME",
                        path.display()
                    )
                })?
            }
            None => bail!("no app given: use --app NAME, set HANGAR_APP, or run where fly.toml is"),
        };
        Ok(self.resolved.get_or_init(|| name))
    }
}

/// The fly.toml to use: `-c PATH` (a file or a directory with one; it must
/// exist), else `./fly.toml` if there is one.
pub fn find(config: Option<&Path>) -> anyhow::Result<Option<PathBuf>> {
    match config {
        Some(p) => {
            let path = if p.is_dir() {
                p.join("fly.toml")
            } else {
                p.to_owned()
            };
            if !path.is_file() {
                bail!("config file {} not found", path.display());
            }
            Ok(Some(path))
        }
        None => {
            let p = PathBuf::from("fly.toml");
            Ok(p.is_file().then_some(p))
        }
    }
}

/// Reads and parses a fly.toml; a broken one is an error naming the file.
pub fn read(path: &Path) -> anyhow::Result<Loaded> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    hangar_appconfig::parse(&text).with_context(|| format!("{} is not valid", path.display()))
}
