//! `hangar machine start|stop|destroy|wait|signal|suspend|cordon|uncordon`.

use super::*;

/// Starts machines (ids or names).
pub(crate) async fn start(
    c: &Client,
    out: &Output,
    app: &AppArg,
    ids: &[String],
) -> anyhow::Result<()> {
    let app = app.get()?;
    for id in ids {
        let id = resolve(c, app, id).await?;
        let r = c.start_machine(app, &id).await?;
        if out.json {
            out.print_json(&r)?;
        } else {
            println!("{id} has been started (was {})", r.previous_state);
        }
    }
    Ok(())
}

/// Stops machines, with a signal and a timeout (flyctl's seconds or a
/// duration) if given.
pub(crate) async fn stop(
    c: &Client,
    app: &AppArg,
    ids: &[String],
    signal: Option<&str>,
    timeout: Option<&str>,
) -> anyhow::Result<()> {
    let app = app.get()?;
    let timeout = timeout.map(seconds_to_duration);
    for id in ids {
        let id = resolve(c, app, id).await?;
        c.stop_machine(app, &id, signal, timeout.as_deref()).await?;
        println!("Sent {} to machine {id}", signal.unwrap_or("stop"));
    }
    Ok(())
}

/// Destroys a machine and waits until it is gone.
pub(crate) async fn destroy(c: &Client, app: &AppArg, id: &str, force: bool) -> anyhow::Result<()> {
    let app = app.get()?;
    let id = resolve(c, app, id).await?;
    c.destroy_machine(app, &id, force).await?;
    let pb = spinner(format!("Destroying machine {id}"));
    let r = c
        .wait_machine(app, &id, &["destroyed"], Duration::from_secs(60))
        .await;
    pb.finish_and_clear();
    r?;
    println!("Machine {id} was destroyed");
    Ok(())
}

/// Waits until a machine reaches `state`.
pub(crate) async fn wait(
    c: &Client,
    out: &Output,
    app: &AppArg,
    id: &str,
    state: &str,
    wait_timeout: &str,
) -> anyhow::Result<()> {
    let app = app.get()?;
    let id = resolve(c, app, id).await?;
    let timeout = parse_duration(wait_timeout)?;
    let pb = spinner(format!("Waiting for machine {id} to reach {state}"));
    let r = c.wait_machine(app, &id, &[state], timeout).await;
    pb.finish_and_clear();
    let r = r?;
    if out.json {
        return out.print_json(&r);
    }
    println!("Machine {id} is {}", r.state);
    Ok(())
}

/// Sends a signal to a machine's main process.
pub(crate) async fn signal(c: &Client, app: &AppArg, id: &str, signal: &str) -> anyhow::Result<()> {
    let app = app.get()?;
    let id = resolve(c, app, id).await?;
    c.signal_machine(app, &id, signal).await?;
    println!("Sent {signal} to machine {id}");
    Ok(())
}

/// Suspend, cordon and uncordon.
pub(crate) async fn action(
    c: &Client,
    app: &AppArg,
    id: &str,
    action: &str,
    done: &str,
) -> anyhow::Result<()> {
    let app = app.get()?;
    let id = resolve(c, app, id).await?;
    c.machine_action(app, &id, action).await?;
    println!("Machine {id} {done}");
    Ok(())
}
