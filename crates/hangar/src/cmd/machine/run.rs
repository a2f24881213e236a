//! `hangar machine run` and `create`.

use super::*;

pub(crate) async fn run_machine(
    args: &RunArgs,
    c: &Client,
    out: &Output,
    start: bool,
) -> anyhow::Result<()> {
    let app = args.app.get()?;
    if args.shell && !start {
        bail!("--shell works with `hangar machine run`");
    }
    let shell = if args.shell {
        Some(
            shlex::split(&args.shell_command)
                .filter(|a| !a.is_empty())
                .with_context(|| format!("invalid --command {:?}", args.shell_command))?,
        )
    } else {
        None
    };
    match c.get_app(app).await {
        Ok(_) => {}
        Err(ClientError::Api { status: 404, .. }) => {
            c.create_app(app).await?;
            if !out.json {
                println!("Created app {app}");
            }
        }
        Err(e) => return Err(e.into()),
    }
    let mut config = config_from(args, start)?;
    // `run .` (a directory): its Dockerfile, built and pushed to hangard.
    if let Some(dir) = args
        .image
        .as_deref()
        .filter(|i| *i == "." || i.starts_with("./") || i.starts_with('/'))
        .map(std::path::Path::new)
        .filter(|p| p.is_dir())
    {
        let req = crate::cmd::build::request(dir, &args.build, None)
            .with_context(|| format!("no Dockerfile in {}", dir.display()))?;
        let builder = crate::cmd::build::pick(&args.build.builder)?;
        config.image = crate::cmd::build::build_and_push(
            c,
            builder.as_ref(),
            &req,
            app,
            &crate::cmd::build::deployment_tag(),
        )?;
    }
    if let Some(spec) = &args.volume {
        let (volume, path) = super::super::volumes::resolve_mount(c, app, spec).await?;
        config.mounts = Some(vec![hangar_api_types::MachineMount {
            volume: Some(volume),
            path,
            ..Default::default()
        }]);
    }
    // A standby stays stopped: wait for that instead.
    let start = start && config.standbys.is_none();
    let req = CreateMachineRequest {
        config: Some(config),
        name: args.name.clone(),
        region: args.region.clone(),
        skip_launch: (!start).then_some(true),
        ..CreateMachineRequest::default()
    };
    let m = c.create_machine(app, &req).await?;
    let id = m.id.clone();
    if !args.detach {
        let (want, verb) = if start {
            ("started", "start")
        } else {
            ("stopped", "be created")
        };
        let pb = spinner(format!("Waiting for machine {id} to {verb}"));
        let r = c
            .wait_machine(app, &id, &[want], Duration::from_secs(300))
            .await;
        pb.finish_and_clear();
        if let Err(e) = r {
            bail!("machine {id} did not {verb}: {e}");
        }
    }
    if let Some(argv) = shell {
        let code = machine_ops::attach_tty(c, app, &id, argv).await;
        // The machine was only for the shell.
        let _ = c.destroy_machine(app, &id, true).await;
        let code = code?;
        std::process::exit(code.clamp(0, 255));
    }
    let m = c.get_machine(app, &id).await?;
    if out.json {
        return out.print_json(&m);
    }
    println!(
        "Machine {} ({}) {}",
        m.id,
        m.name,
        if start { "is launched" } else { "is created" }
    );
    println!(" App:         {app}");
    println!(" Instance ID: {}", m.instance_id);
    println!(" State:       {}", m.state);
    println!(
        " Image:       {}",
        m.config.as_ref().map(|c| c.image.as_str()).unwrap_or("")
    );
    Ok(())
}
