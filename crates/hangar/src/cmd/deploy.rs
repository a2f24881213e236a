//! `hangar deploy`, `hangar releases` and `hangar config`: fly.toml turned
//! into a release that hangard runs; the CLI shows the plan, submits it and
//! follows its progress (Ctrl-C, `--detach` or a lost connection leave the
//! release running on the server).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use base64::Engine;
use clap::{Args, Subcommand};
use futures::StreamExt;
use hangar_api_types::{CreateReleaseRequest, Release, ReleasePlan};
use hangar_appconfig::{AppConfig, Scalar};
use hangar_client::Client;

use super::flytoml::{AppArg, find, read};
use crate::output::Output;

/// `hangar deploy`.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The directory holding fly.toml (default: the current one).
    workdir: Option<PathBuf>,
    #[command(flatten)]
    app: AppArg,
    /// The image to deploy (default: [build] image).
    #[arg(long, short = 'i')]
    image: Option<String>,
    /// rolling, immediate, canary or bluegreen (default: [deploy] strategy, else rolling).
    #[arg(long)]
    strategy: Option<String>,
    /// How long each machine gets to become healthy (e.g. 2m; default 5m).
    #[arg(long)]
    wait_timeout: Option<String>,
    /// A fraction of a group (< 1) or a number of machines down at once.
    #[arg(long)]
    max_unavailable: Option<f64>,
    /// Submit the release and return; it runs on in hangard.
    #[arg(long)]
    detach: bool,
    /// Set an environment variable (NAME=VALUE), overriding [env].
    #[arg(long = "env", short = 'e', value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// The region for new machines (overrides primary_region).
    #[arg(long)]
    primary_region: Option<String>,
    /// Two machines for each new process group (default true).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    ha: Option<bool>,
    /// Only update existing machines; create none.
    #[arg(long)]
    update_only: bool,
    /// Don't run [deploy] release_command.
    #[arg(long)]
    skip_release_command: bool,
    /// Only these process groups (comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    process_groups: Vec<String>,
    /// Only these machines.
    #[arg(long, value_delimiter = ',')]
    only_machines: Vec<String>,
    /// Not these machines.
    #[arg(long, value_delimiter = ',')]
    exclude_machines: Vec<String>,
    /// Confirm destructive steps (machines of removed process groups).
    #[arg(long, short = 'y')]
    yes: bool,
    /// Print the plan and stop.
    #[arg(long)]
    dry_run: bool,
    /// Leave changed machines as they are if the release fails.
    #[arg(long)]
    no_rollback: bool,
    /// Wait for the app's running release to end instead of failing.
    #[arg(long)]
    queue: bool,
    #[command(flatten)]
    build: super::build::BuildFlags,
    /// Build the image and stop (pushed only with --push).
    #[arg(long)]
    build_only: bool,
    /// With --build-only: push the image to hangard too.
    #[arg(long)]
    push: bool,
}

impl DeployArgs {
    /// A plain deploy of the fly.toml in `dir` (what `launch` runs).
    pub(crate) fn for_launch(dir: PathBuf) -> DeployArgs {
        DeployArgs {
            workdir: Some(dir),
            app: AppArg::from_name(None),
            image: None,
            strategy: None,
            wait_timeout: None,
            max_unavailable: None,
            detach: false,
            env: Vec::new(),
            primary_region: None,
            ha: None,
            update_only: false,
            skip_release_command: false,
            process_groups: Vec::new(),
            only_machines: Vec::new(),
            exclude_machines: Vec::new(),
            yes: false,
            dry_run: false,
            no_rollback: false,
            queue: false,
            build: super::build::BuildFlags {
                builder: "auto".into(),
                ..Default::default()
            },
            build_only: false,
            push: false,
        }
    }
}

/// `hangar releases ...`.
#[derive(Debug, Args)]
pub struct ReleasesArgs {
    #[command(subcommand)]
    cmd: Option<ReleasesCmd>,
    #[command(flatten)]
    app: AppArg,
    /// Show each release's image.
    #[arg(long)]
    image: bool,
}

/// The subcommands of `hangar releases`.
#[derive(Debug, Subcommand)]
pub enum ReleasesCmd {
    /// One release in full: its steps and outcome.
    Show {
        /// Release id or version (v3).
        release: String,
        #[command(flatten)]
        app: AppArg,
    },
    /// Follow a release's progress until it ends.
    Watch {
        /// Release id or version (default: the newest).
        release: Option<String>,
        #[command(flatten)]
        app: AppArg,
    },
    /// Cancel a running release (it rolls back what it changed).
    Cancel {
        /// Release id or version.
        release: String,
        #[command(flatten)]
        app: AppArg,
    },
    /// Deploy a release's stored fly.toml and image digest again (default:
    /// the stable release before the newest).
    Rollback {
        /// Release id or version.
        release: Option<String>,
        #[command(flatten)]
        app: AppArg,
        /// Return once submitted.
        #[arg(long)]
        detach: bool,
    },
}

/// `hangar config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Print fly.toml as hangard reads it (JSON).
    Show {
        #[command(flatten)]
        app: AppArg,
    },
    /// Check fly.toml: syntax, types, names, groups.
    Validate {
        #[command(flatten)]
        app: AppArg,
    },
}

/// Loads fly.toml for a deploy: `workdir` or `-c`, checked; prints
/// warnings.
fn load(workdir: Option<&Path>, app: &AppArg, quiet: bool) -> anyhow::Result<(PathBuf, AppConfig)> {
    let explicit = app.config.clone().or_else(|| workdir.map(Path::to_owned));
    let path = find(explicit.as_deref())?
        .context("no fly.toml here: run in the app's directory, or pass -c PATH")?;
    let loaded = read(&path)?;
    for w in &loaded.warnings {
        if !quiet {
            eprintln!("Warning: {}: {w}", path.display());
        }
    }
    loaded
        .config
        .validate()
        .with_context(|| format!("{} is not valid", path.display()))?;
    Ok((path, loaded.config))
}

/// `[[files]] local_path` read next to fly.toml, so hangard gets the
/// content.
fn inline_files(cfg: &mut AppConfig, dir: &Path) -> anyhow::Result<()> {
    for f in &mut cfg.files {
        if let Some(p) = f.local_path.take() {
            let path = dir.join(&p);
            let bytes = std::fs::read(&path)
                .with_context(|| format!("[[files]] local_path {}", path.display()))?;
            f.raw_base64 = Some(base64::engine::general_purpose::STANDARD.encode(bytes));
        }
    }
    Ok(())
}

/// Runs `hangar deploy`.
pub async fn deploy(a: &DeployArgs, c: &Client, out: &Output) -> anyhow::Result<()> {
    let say = |s: &str| {
        if !out.json {
            println!("{s}");
        }
    };
    say("==> Verifying app config");
    let (path, mut cfg) = load(a.workdir.as_deref(), &a.app, out.json)?;
    let app = match &a.app.app {
        Some(n) => n.clone(),
        None => cfg
            .app
            .clone()
            .with_context(|| format!("{} has no `app`: add one, or use --app", path.display()))?,
    };
    cfg.app = Some(app.clone());
    for kv in &a.env {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--env {kv:?}: use NAME=VALUE"))?;
        cfg.env.insert(k.to_owned(), Scalar(v.to_owned()));
    }
    if let Some(r) = &a.primary_region {
        cfg.primary_region = Some(r.clone());
    }
    inline_files(&mut cfg, path.parent().unwrap_or(Path::new(".")))?;
    cfg.validate()?;
    say("--> Verified app config");
    c.get_app(&app)
        .await
        .with_context(|| format!("app {app}: create it first with `hangar apps create {app}`"))?;
    let dir = path
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("."));
    let image = match a
        .image
        .clone()
        .or_else(|| cfg.build.as_ref().and_then(|b| b.image.clone()))
    {
        Some(i) if !a.build_only => i,
        _ => {
            let req = super::build::request(&dir, &a.build, cfg.build.as_ref()).with_context(|| {
                format!(
                    "no image to deploy: pass --image, set [build] image in fly.toml, or put a Dockerfile in {}",
                    dir.display()
                )
            })?;
            let builder = super::build::pick(&a.build.builder)?;
            let tag = super::build::deployment_tag();
            if a.build_only && !a.push {
                let local = format!("localhost/hangar-build/{app}:{tag}");
                builder.build(&req, &local)?;
                println!("--> Built {local} (not pushed; --push pushes it to hangard)");
                return Ok(());
            }
            let image = super::build::build_and_push(c, builder.as_ref(), &req, &app, &tag)?;
            if a.build_only {
                return Ok(());
            }
            image
        }
    };
    let req = CreateReleaseRequest {
        definition: serde_json::to_value(&cfg)?,
        image: image.clone(),
        strategy: a.strategy.clone(),
        max_unavailable: a.max_unavailable,
        wait_timeout: a.wait_timeout.clone().map(serde_json::Value::String),
        release_command_timeout: None,
        skip_release_command: a.skip_release_command,
        update_only: a.update_only,
        ha: a.ha,
        process_groups: a.process_groups.clone(),
        only_machines: a.only_machines.clone(),
        exclude_machines: a.exclude_machines.clone(),
        yes: a.yes,
        no_rollback: a.no_rollback,
        description: None,
        rollback_to: None,
        restart: None,
        scale_count: None,
        scale_vm: None,
        queue: a.queue,
    };
    let plan = c.plan_release(&app, &req).await?;
    if out.json && a.dry_run {
        return out.print_json(&plan);
    }
    if !out.json {
        print_plan(&app, &image, &plan);
    }
    if a.dry_run {
        return Ok(());
    }
    confirm_volumes(&plan, a.yes)?;
    let rel = c.create_release(&app, &req).await?;
    say(&format!(
        "==> Release v{} ({}) created; hangard runs it",
        rel.version, rel.id
    ));
    if a.detach {
        say(&format!(
            "Detached. Follow it with `hangar releases watch v{} -a {app}`",
            rel.version
        ));
        if out.json {
            out.print_json(&rel)?;
        }
        return Ok(());
    }
    follow(c, &app, &rel.id, out).await
}

/// New machines with volumes on a deploy that is not the first: asked on a
/// terminal, `--yes` elsewhere (the first deploy makes them as on Fly).
fn confirm_volumes(plan: &ReleasePlan, yes: bool) -> anyhow::Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    let names: Vec<&str> = plan
        .machines
        .iter()
        .filter(|s| s.action == "create")
        .filter_map(|s| s.volume.as_deref())
        .collect();
    if yes || names.is_empty() || plan.current.is_none() {
        return Ok(());
    }
    let what = format!(
        "{} new machine(s) will mount volume(s) {} (an unattached one of that name, or a new one)",
        names.len(),
        names.join(", ")
    );
    if !std::io::stdin().is_terminal() {
        bail!("{what}: pass --yes to go ahead");
    }
    print!("{what}. Go ahead? [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if !matches!(answer.trim(), "y" | "Y" | "yes") {
        bail!("nothing was done");
    }
    Ok(())
}

fn print_plan(app: &str, image: &str, plan: &ReleasePlan) {
    match &plan.current {
        Some(r) => println!(
            "App {app}: current release v{} ({}, {})",
            r.version, r.status, r.image_ref
        ),
        None => println!("App {app}: first deploy"),
    }
    println!("Image: {image}");
    println!("Strategy: {}", plan.strategy);
    if plan.machines.is_empty() {
        println!("This deployment changes nothing.");
        return;
    }
    println!("This deployment will:");
    let mut per: BTreeMap<(String, String), (usize, Vec<String>)> = BTreeMap::new();
    for s in &plan.machines {
        let e = per
            .entry((s.process_group.clone(), s.action.clone()))
            .or_default();
        e.0 += 1;
        for ch in &s.changes {
            if !e.1.contains(ch) {
                e.1.push(ch.clone());
            }
        }
    }
    for ((g, action), (n, changes)) in per {
        match action.as_str() {
            "release_command" => println!(" * run the release command"),
            "create" => {
                let vols: Vec<&str> = plan
                    .machines
                    .iter()
                    .filter(|s| s.action == "create" && s.process_group == g)
                    .filter_map(|s| s.volume.as_deref())
                    .collect();
                let replacing = plan
                    .machines
                    .iter()
                    .filter(|s| s.action == "create" && s.process_group == g)
                    .filter(|s| s.replaces.is_some())
                    .count();
                let mut line = format!(" * create {n} \"{g}\" machine(s)");
                if replacing > 0 {
                    line.push_str(&format!(", replacing {replacing}"));
                }
                if !vols.is_empty() {
                    line.push_str(&format!(" with volume(s) {}", vols.join(", ")));
                }
                println!("{line}");
            }
            "update" if changes.is_empty() => {
                println!(" * update {n} \"{g}\" machine(s) (image only)")
            }
            "update" => println!(" * update {n} \"{g}\" machine(s): {}", changes.join(", ")),
            other => println!(" * {other} {n} \"{g}\" machine(s)"),
        }
    }
}

/// Follows a release until it ends; an error unless it completed.
pub(crate) async fn follow(c: &Client, app: &str, id: &str, out: &Output) -> anyhow::Result<()> {
    let mut after = 0;
    let mut lines = Lines::new(out.json);
    // A dropped stream (hangard restarted) is picked up again.
    for _ in 0..100 {
        let mut events = match c.release_events(app, id, after, true).await {
            Ok(e) => e,
            Err(e) => {
                lines.say(&format!("(lost the release's progress: {e}; retrying)"));
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(ev) = events.next().await {
            let Ok(ev) = ev else { break };
            after = ev.seq;
            if out.json {
                println!("{}", serde_json::to_string(&ev)?);
            } else {
                lines.event(&ev);
            }
        }
        let rel = c.get_release(app, id).await?;
        if is_finished(&rel) {
            lines.done(rel.status == "complete");
            return finish(rel, out);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    bail!("lost track of release {id}; see `hangar releases show {id}`")
}

/// How a release's progress is shown: on a terminal, one line per machine
/// with a spinner that shows what it is doing (and a mark once done);
/// otherwise, and for the release's own steps, plain lines.
struct Lines {
    multi: Option<indicatif::MultiProgress>,
    bars: BTreeMap<String, indicatif::ProgressBar>,
}

impl Lines {
    fn new(json: bool) -> Lines {
        use std::io::IsTerminal;
        let tty = !json && std::io::stdout().is_terminal();
        Lines {
            multi: tty.then(indicatif::MultiProgress::new),
            bars: BTreeMap::new(),
        }
    }

    fn say(&self, line: &str) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(line);
            }
            None => println!("{line}"),
        }
    }

    fn event(&mut self, ev: &hangar_api_types::ReleaseEvent) {
        let (Some(multi), Some(machine)) = (&self.multi, ev.machine_id.as_deref()) else {
            let who = ev
                .machine_id
                .as_deref()
                .map(|m| format!("[{m}] "))
                .unwrap_or_default();
            self.say(&format!("  {who}{}", ev.message));
            return;
        };
        if ev.phase == "release_command_output" {
            self.say(&format!("  | {}", ev.message));
            return;
        }
        let bar = self.bars.entry(machine.to_owned()).or_insert_with(|| {
            let b = multi.add(indicatif::ProgressBar::new_spinner());
            b.set_style(
                indicatif::ProgressStyle::with_template("  {spinner} [{prefix}] {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            b.set_prefix(machine.to_owned());
            b.enable_steady_tick(std::time::Duration::from_millis(100));
            b
        });
        bar.set_message(ev.message.clone());
        let finished = ev.message.contains("healthy and in rotation")
            || ev.message.contains("is started and healthy")
            || ev.phase == "destroy";
        if finished {
            bar.set_style(
                indicatif::ProgressStyle::with_template("  ✔ [{prefix}] {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar.finish();
        }
    }

    fn done(&mut self, ok: bool) {
        let mark = if ok { "✔" } else { "✖" };
        for bar in self.bars.values().filter(|b| !b.is_finished()) {
            bar.set_style(
                indicatif::ProgressStyle::with_template(&format!("  {mark} [{{prefix}}] {{msg}}"))
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar.finish();
        }
    }
}

fn is_finished(r: &Release) -> bool {
    matches!(
        r.status.as_str(),
        "complete" | "failed" | "interrupted" | "rolled_back"
    )
}

fn finish(rel: Release, out: &Output) -> anyhow::Result<()> {
    if out.json {
        out.print_json(&rel)?;
    }
    match rel.status.as_str() {
        "complete" => {
            if !out.json {
                println!("--> Finished deploying: {}", rel.description);
            }
            Ok(())
        }
        status => bail!(
            "release v{} {}: {}",
            rel.version,
            status.replace('_', " "),
            rel.error.unwrap_or_default()
        ),
    }
}

/// Runs `hangar releases ...`.
pub async fn releases(a: &ReleasesArgs, c: &Client, out: &Output) -> anyhow::Result<()> {
    match &a.cmd {
        None => {
            let app = a.app.get()?;
            let list = c.list_releases(app, 25).await?;
            if out.json {
                return out.print_json(&list);
            }
            let mut header = vec!["VERSION", "STATUS", "REASON", "DESCRIPTION", "USER", "DATE"];
            if a.image {
                header.push("DOCKER IMAGE");
            }
            let rows = list
                .into_iter()
                .map(|r| {
                    let mut row = vec![
                        format!("v{}{}", r.version, if r.stable { " (stable)" } else { "" }),
                        r.status,
                        r.reason,
                        r.error.unwrap_or(r.description),
                        r.user,
                        r.created_at,
                    ];
                    if a.image {
                        row.push(if r.image_digest.is_empty() {
                            r.image_ref
                        } else {
                            format!("{} ({})", r.image_ref, r.image_digest)
                        });
                    }
                    row
                })
                .collect();
            out.table(&header, rows);
            Ok(())
        }
        Some(ReleasesCmd::Show { release, app }) => {
            let r = c.get_release(app.get()?, release).await?;
            if out.json {
                return out.print_json(&r);
            }
            println!("Release v{} ({}): {}", r.version, r.id, r.status);
            println!(
                "  reason {}, strategy {}, by {}",
                r.reason, r.strategy, r.user
            );
            println!("  image {} {}", r.image_ref, r.image_digest);
            println!("  created {}", r.created_at);
            if let Some(f) = &r.finished_at {
                println!("  finished {f}");
            }
            if let Some(e) = &r.error {
                println!("  error: {e}");
            }
            let rows = r
                .machines
                .into_iter()
                .map(|s| {
                    vec![
                        s.action,
                        s.process_group,
                        s.id.unwrap_or_default(),
                        s.outcome,
                        s.error.unwrap_or_default(),
                    ]
                })
                .collect();
            out.table(&["ACTION", "GROUP", "MACHINE", "OUTCOME", "ERROR"], rows);
            Ok(())
        }
        Some(ReleasesCmd::Watch { release, app }) => {
            let app = app.get()?;
            let id = match release {
                Some(r) => c.get_release(app, r).await?.id,
                None => {
                    c.list_releases(app, 1)
                        .await?
                        .into_iter()
                        .next()
                        .context("the app has no releases")?
                        .id
                }
            };
            follow(c, app, &id, out).await
        }
        Some(ReleasesCmd::Cancel { release, app }) => {
            let r = c.cancel_release(app.get()?, release).await?;
            println!(
                "Cancelling release v{}: it rolls back what it changed",
                r.version
            );
            Ok(())
        }
        Some(ReleasesCmd::Rollback {
            release,
            app,
            detach,
        }) => {
            let app = app.get()?;
            let target = match release {
                Some(r) => c.get_release(app, r).await?,
                None => {
                    let list = c.list_releases(app, 100).await?;
                    let newest = list.first().map(|r| r.id.clone());
                    list.into_iter()
                        .find(|r| r.status == "complete" && Some(&r.id) != newest.as_ref())
                        .context("no earlier complete release to roll back to")?
                }
            };
            let rel = c.rollback_release(app, &target.id).await?;
            println!(
                "==> Rolling back to v{} as release v{} ({})",
                target.version, rel.version, rel.id
            );
            if *detach {
                return Ok(());
            }
            follow(c, app, &rel.id, out).await
        }
    }
}

/// Runs `hangar config ...`.
pub fn config(cmd: &ConfigCmd, out: &Output) -> anyhow::Result<()> {
    match cmd {
        ConfigCmd::Show { app } => {
            let (_, cfg) = load(None, app, false)?;
            let _ = out;
            println!("{}", serde_json::to_string_pretty(&cfg)?);
            Ok(())
        }
        ConfigCmd::Validate { app } => {
            let (path, cfg) = load(None, app, false)?;
            println!(
                "{} is valid: app {}, process groups {}",
                path.display(),
                cfg.app.as_deref().unwrap_or("(none)"),
                cfg.groups().join(", ")
            );
            Ok(())
        }
    }
}
