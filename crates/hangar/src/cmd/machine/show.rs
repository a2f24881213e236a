//! `hangar machine status`.

use super::*;

/// An app's machines, as a table (`--json`, `-q` for ids only).
pub(crate) async fn list(
    c: &Client,
    out: &Output,
    app: &AppArg,
    all: bool,
    quiet: bool,
) -> anyhow::Result<()> {
    let app = app.get()?;
    let machines = c
        .list_machines(
            app,
            &ListMachines {
                include_deleted: all,
                ..ListMachines::default()
            },
        )
        .await?;
    if out.json {
        return out.print_json(&machines);
    }
    if quiet {
        machines.iter().for_each(|m| println!("{}", m.id));
        return Ok(());
    }
    if machines.is_empty() {
        println!("No machines in app {app}");
        return Ok(());
    }
    out.table(
        &[
            "ID", "NAME", "STATE", "REGION", "IMAGE", "CREATED", "UPDATED",
        ],
        machines
            .into_iter()
            .map(|m| {
                vec![
                    m.id,
                    m.name,
                    m.state,
                    m.region,
                    m.config.map(|c| c.image).unwrap_or_default(),
                    m.created_at,
                    m.updated_at,
                ]
            })
            .collect(),
    );
    Ok(())
}

/// One machine's details and recent events.
pub(crate) async fn status(
    c: &Client,
    out: &Output,
    app: &AppArg,
    id: &str,
    display_config: bool,
) -> anyhow::Result<()> {
    let app = app.get()?;
    let id = resolve(c, app, id).await?;
    let m = c.get_machine(app, &id).await?;
    if out.json {
        return out.print_json(&m);
    }
    print_status(&m, out, display_config)
}

pub(crate) fn print_status(m: &Machine, out: &Output, display_config: bool) -> anyhow::Result<()> {
    let image = m
        .image_ref
        .as_ref()
        .map(|r| {
            let tag = if r.tag.is_empty() {
                String::new()
            } else {
                format!(":{}", r.tag)
            };
            let digest = if r.digest.is_empty() {
                String::new()
            } else {
                format!("@{}", r.digest)
            };
            format!("{}/{}{tag}{digest}", r.registry, r.repository)
        })
        .unwrap_or_default();
    println!("Machine ID:  {}", m.id);
    println!("Name:        {}", m.name);
    println!("State:       {}", m.state);
    println!("Region:      {}", m.region);
    println!("Image:       {image}");
    println!("Instance ID: {}", m.instance_id);
    if !m.private_ip.is_empty() {
        println!("Private IP:  {}", m.private_ip);
    }
    println!("Created:     {}", m.created_at);
    println!("Updated:     {}", m.updated_at);
    if let Some(g) = m.config.as_ref().and_then(|c| c.guest.as_ref()) {
        println!(
            "Size:        {} x{} CPU, {} MB",
            g.cpu_kind.as_deref().unwrap_or("shared"),
            g.cpus.unwrap_or(1),
            g.memory_mb.unwrap_or(256)
        );
    }
    println!();
    println!("Event Logs");
    let rows = m
        .events
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|e| {
            let info = e
                .request
                .as_ref()
                .map(|r| {
                    if let Some(x) = r.get("exit_event") {
                        format!(
                            "exit_code={},oom_killed={},requested_stop={}",
                            x["exit_code"], x["oom_killed"], x["requested_stop"]
                        )
                    } else if let Some(err) = r.get("error").and_then(|v| v.as_str()) {
                        err.to_owned()
                    } else {
                        String::new()
                    }
                })
                .unwrap_or_default();
            vec![e.status, e.kind, e.source, format_ms(e.timestamp), info]
        })
        .collect();
    out.table(&["STATE", "EVENT", "SOURCE", "TIMESTAMP", "INFO"], rows);
    if let Some(checks) = m.checks.as_ref().filter(|c| !c.is_empty()) {
        println!();
        println!("Checks");
        out.table(
            &["NAME", "STATUS", "LAST UPDATED", "OUTPUT"],
            checks
                .iter()
                .map(|c| {
                    vec![
                        c.name.clone(),
                        c.status.clone(),
                        c.updated_at.clone(),
                        c.output.clone(),
                    ]
                })
                .collect(),
        );
    }
    if display_config {
        println!();
        println!("Config:");
        println!("{}", serde_json::to_string_pretty(&m.config)?);
    }
    Ok(())
}

/// Unix milliseconds as `2026-11-22T01:02:03.456Z`.
pub(crate) fn format_ms(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}
