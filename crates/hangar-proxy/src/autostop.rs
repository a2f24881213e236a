//! The autostop pass: idle machines stop or suspend.

use super::*;

impl Proxy {
    /// Stops (or suspends) the started machines that have been idle for
    /// the idle timeout, per service with autostop, keeping
    /// `min_machines_running`.
    pub async fn autostop_pass(&self) {
        let now = Instant::now();
        for app in self.machines.apps() {
            let backends = self.machines.backends(&app);
            let mut chosen: Vec<(Arc<str>, bool)> = Vec::new();
            // One decision per service (by internal port) of the app.
            let mut ports: Vec<u16> = backends
                .iter()
                .flat_map(|b| b.services.iter())
                .filter(|s| s.autostop != Autostop::Off)
                .map(|s| s.internal_port)
                .collect();
            ports.sort_unstable();
            ports.dedup();
            for port in ports {
                let members: Vec<(&Backend, &Service)> = backends
                    .iter()
                    .filter_map(|b| {
                        b.services
                            .iter()
                            .find(|s| s.internal_port == port)
                            .map(|s| (b, s))
                    })
                    .collect();
                let Some((_, first)) = members.first() else {
                    continue;
                };
                let running: Vec<services::Running> = {
                    let mut loads = self.loads.lock().unwrap_or_else(|p| p.into_inner());
                    members
                        .iter()
                        .enumerate()
                        .filter(|(_, (b, _))| b.state == State::Started)
                        .map(|(index, (b, _))| {
                            let l = loads.entry(Arc::clone(&b.id)).or_insert_with(Load::new);
                            services::Running {
                                index,
                                load: l.in_flight,
                                idle_for: now.saturating_duration_since(l.last_active),
                            }
                        })
                        .collect()
                };
                // In a cluster, the machines kept are the same on every
                // host: the `min_machines_running` lowest ids of the app's
                // started machines everywhere; the others stop when idle.
                let ports: Vec<(u16, u16)> = first
                    .ports
                    .iter()
                    .filter(|p| p.is_http())
                    .map(|p| (p.start, p.end))
                    .collect();
                let remote = self.machines.remote_started(&app, &ports);
                let stop = if remote.is_empty() {
                    services::autostop(&running, first.min_machines_running, self.cfg.idle_timeout)
                } else {
                    let local: Vec<(usize, &str)> = running
                        .iter()
                        .map(|r| (r.index, &*members[r.index].0.id))
                        .collect();
                    services::autostop_cluster(
                        &running,
                        &local,
                        &remote,
                        first.min_machines_running,
                        self.cfg.idle_timeout,
                    )
                };
                for i in stop {
                    let (b, s) = members[i];
                    if s.autostop == Autostop::Off || chosen.iter().any(|(id, _)| *id == b.id) {
                        continue;
                    }
                    chosen.push((Arc::clone(&b.id), s.autostop == Autostop::Suspend));
                }
            }
            for (id, suspend) in chosen {
                tracing::info!(app, machine = %id, suspend, "proxy stopping an idle machine");
                {
                    // Stopped, it no longer listens; its load starts
                    // afresh unless connections are still counted on it.
                    let mut loads = self.loads.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(l) = loads.get_mut(&id) {
                        if l.in_flight == 0 && l.conns == 0 {
                            loads.remove(&id);
                        } else {
                            l.ready = false;
                        }
                    }
                }
                let since = Instant::now();
                let stopped = self.machines.stop(&app, &id, suspend).await;
                hangar_metrics::note(hangar_metrics::Activity {
                    at: hangar_metrics::unix_now(),
                    app: app.clone(),
                    machine: id.to_string(),
                    action: if suspend { "autosuspend" } else { "autostop" },
                    seconds: Some(since.elapsed().as_secs_f64()),
                    error: stopped.as_ref().err().map(|e| e.to_string()),
                });
                match stopped {
                    Ok(()) => {
                        hangar_metrics::get()
                            .autostops
                            .get_or_create(&hangar_metrics::AutostopLabels {
                                app: app.clone(),
                                action: if suspend { "suspend" } else { "stop" },
                            })
                            .inc();
                    }
                    Err(e) => tracing::warn!(app, machine = %id, error = %e, "autostop failed"),
                }
            }
        }
    }
}
