//! Placing requests and connections: the load the proxy puts on each
//! machine, picking the machine (the rules are hangar-core's), starting it
//! when they say so and waiting until it listens.

use super::*;

/// Load the proxy puts on a machine.
#[derive(Debug)]
pub(crate) struct Load {
    /// Traffic: HTTP requests in flight and raw TCP connections open. A
    /// machine with any is busy (never stopped for idleness), and it is
    /// the load of `requests` services.
    pub(crate) in_flight: u32,
    /// Client connections bound to the machine: HTTP connections of
    /// `connections` services and raw TCP connections. The load of
    /// `connections` services.
    pub(crate) conns: u32,
    pub(crate) last_active: Instant,
    /// Seen accepting connections since it last started.
    pub(crate) ready: bool,
}

impl Load {
    pub(crate) fn new() -> Load {
        Load {
            in_flight: 0,
            conns: 0,
            last_active: Instant::now(),
            ready: false,
        }
    }

    pub(crate) fn add(&mut self, counts: Counts) {
        if counts.request() {
            self.in_flight += 1;
            self.last_active = Instant::now();
        }
        if counts.connection() {
            self.conns += 1;
        }
    }

    pub(crate) fn of(&self, kind: LoadKind) -> u32 {
        match kind {
            LoadKind::Requests => self.in_flight,
            LoadKind::Connections => self.conns,
        }
    }
}

/// What a [`LoadGuard`] counts while it lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counts {
    /// An HTTP request.
    Request,
    /// A client connection bound to a machine (HTTP).
    Connection,
    /// A raw TCP connection: traffic and a connection.
    Both,
}

impl Counts {
    pub(crate) fn request(self) -> bool {
        matches!(self, Counts::Request | Counts::Both)
    }
    pub(crate) fn connection(self) -> bool {
        matches!(self, Counts::Connection | Counts::Both)
    }
}

/// The machine picked for a request or connection, with the service that
/// matched and the load counted on it.
pub(crate) struct Chosen<'a> {
    pub(crate) backend: &'a Backend,
    pub(crate) svc: &'a Service,
    pub(crate) guard: LoadGuard,
}

/// A counter per proxy worker thread, bumped per pick: equally loaded
/// machines take turns.
pub(crate) fn next_turn() -> usize {
    thread_local! {
        static TURN: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }
    TURN.with(|t| {
        let n = t.get();
        t.set(n.wrapping_add(1));
        n
    })
}

/// Takes back what it added to a machine's load when the request (body
/// included) or the connection is done.
pub(crate) struct LoadGuard {
    pub(crate) loads: &'static Mutex<HashMap<Arc<str>, Load>>,
    pub(crate) id: Arc<str>,
    pub(crate) counts: Counts,
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        let mut loads = self.loads.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = loads.get_mut(&self.id) {
            if self.counts.request() {
                l.in_flight = l.in_flight.saturating_sub(1);
                l.last_active = Instant::now();
            }
            if self.counts.connection() {
                l.conns = l.conns.saturating_sub(1);
            }
        }
    }
}

impl Proxy {
    /// What the proxy has on machine `id` right now: HTTP requests in
    /// flight and raw TCP connections open. A machine out of rotation is
    /// drained when this is 0 (an idle kept-alive client connection bound
    /// to it moves to another machine with its next request).
    pub fn traffic(&self, id: &str) -> u32 {
        self.loads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .map_or(0, |l| l.in_flight)
    }

    #[cfg(test)]
    pub(crate) fn load(&self, id: &str, kind: LoadKind) -> u32 {
        self.loads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .map_or(0, |l| l.of(kind))
    }

    pub(crate) fn add_load(&self, id: &Arc<str>, counts: Counts) -> LoadGuard {
        let mut loads = self.loads.lock().unwrap_or_else(|p| p.into_inner());
        self.add_load_locked(&mut loads, id, counts)
    }

    pub(crate) fn add_load_locked(
        &self,
        loads: &mut HashMap<Arc<str>, Load>,
        id: &Arc<str>,
        counts: Counts,
    ) -> LoadGuard {
        match loads.get_mut(id) {
            Some(l) => l.add(counts),
            None => {
                let mut l = Load::new();
                l.add(counts);
                loads.insert(Arc::clone(id), l);
            }
        }
        LoadGuard {
            loads: self.loads,
            id: Arc::clone(id),
            counts,
        }
    }

    /// Forgets that machine `id` listens (it is starting, stopping, or
    /// did not answer).
    pub(crate) fn not_ready(&self, id: &str) {
        if let Some(l) = self
            .loads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(id)
        {
            l.ready = false;
        }
    }

    /// Picks the machine for a request or connection among `backends` (with
    /// the service that matched), weighing loads as `kind` says, and counts
    /// `counts` on it (in the returned guard); starts it when the rules say
    /// so, and returns once it accepts connections.
    pub(crate) async fn choose<'a>(
        &self,
        app: &str,
        backends: Vec<(&'a Backend, &'a Service)>,
        kind: LoadKind,
        counts: Counts,
    ) -> Result<Chosen<'a>, String> {
        self.choose_with(app, backends, kind, counts, true).await
    }

    /// [`Proxy::choose`]; `tcp` false skips waiting for a TCP listener
    /// (UDP services).
    pub(crate) async fn choose_with<'a>(
        &self,
        app: &str,
        backends: Vec<(&'a Backend, &'a Service)>,
        kind: LoadKind,
        counts: Counts,
        tcp: bool,
    ) -> Result<Chosen<'a>, String> {
        let Some(limits) = backends.first().map(|(_, s)| s.concurrency) else {
            return Err(format!("app {app} has no machine for this port"));
        };
        // Weighed, picked and counted under one lock: requests side by side
        // see each other's load, so a hard limit holds.
        let (backend, svc, started_now, ready, guard) = {
            let mut loads = self.loads.lock().unwrap_or_else(|p| p.into_inner());
            let candidates: Vec<Candidate> = backends
                .iter()
                .enumerate()
                .map(|(index, (b, s))| Candidate {
                    index,
                    started: b.state == State::Started,
                    startable: matches!(b.state, State::Stopped | State::Suspended) && s.autostart,
                    out_of_rotation: b.out_of_rotation,
                    load: loads.get(&*b.id).map_or(0, |l| l.of(kind)),
                })
                .collect();
            let (index, started_now) = match services::pick(&candidates, &limits, next_turn()) {
                Pick::Use(i) => (i, false),
                Pick::Start(i) => (i, true),
                Pick::Unavailable => {
                    return Err(format!("no machine of app {app} can take this request now"));
                }
            };
            let (backend, svc) = *backends.get(index).ok_or("no machine")?;
            let guard = self.add_load_locked(&mut loads, &backend.id, counts);
            let ready = !started_now && loads.get(&*backend.id).is_some_and(|l| l.ready);
            (backend, svc, started_now, ready, guard)
        };
        let target = SocketAddr::new(backend.addr, svc.internal_port);
        if started_now {
            self.start(app, &backend.id)
                .await
                .map_err(|e| format!("could not start a machine of app {app}: {e}"))?;
        }
        if tcp && !ready {
            self.until_listening(&backend.id, target)
                .await
                .map_err(|e| {
                    format!(
                        "machine {} of app {app} is not listening on port {}: {e}",
                        backend.id, svc.internal_port
                    )
                })?;
        }
        Ok(Chosen {
            backend,
            svc,
            guard,
        })
    }

    /// Starts a machine once, however many requests want it.
    pub(crate) async fn start(&self, app: &str, id: &str) -> Result<(), String> {
        let lock = Arc::clone(
            self.starting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(id.to_owned())
                .or_default(),
        );
        let _held = lock.lock().await;
        let state = self
            .machines
            .backends(app)
            .iter()
            .find(|b| *b.id == *id)
            .map(|b| b.state);
        match state {
            Some(State::Started) => Ok(()),
            None => Err("the machine is gone".into()),
            Some(_) => {
                tracing::info!(app, machine = id, "proxy starting a machine for a request");
                self.not_ready(id);
                let since = Instant::now();
                let started = self
                    .machines
                    .start(app, id)
                    .await
                    .map_err(|e| e.to_string());
                hangar_metrics::note(hangar_metrics::Activity {
                    at: hangar_metrics::unix_now(),
                    app: app.to_owned(),
                    machine: id.to_owned(),
                    action: "autostart",
                    seconds: Some(since.elapsed().as_secs_f64()),
                    error: started.as_ref().err().cloned(),
                });
                started?;
                hangar_metrics::get()
                    .autostarts
                    .get_or_create(&hangar_metrics::AppLabels {
                        app: app.to_owned(),
                    })
                    .inc();
                Ok(())
            }
        }
    }

    /// Waits until the machine accepts connections on `target`.
    pub(crate) async fn until_listening(
        &self,
        id: &Arc<str>,
        target: SocketAddr,
    ) -> Result<(), String> {
        let deadline = Instant::now() + self.cfg.start_timeout;
        loop {
            match tokio::time::timeout(
                Duration::from_secs(1),
                tokio::net::TcpStream::connect(target),
            )
            .await
            {
                Ok(Ok(_)) => {
                    self.loads
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(Arc::clone(id))
                        .or_insert_with(Load::new)
                        .ready = true;
                    return Ok(());
                }
                Ok(Err(e)) if Instant::now() >= deadline => return Err(e.to_string()),
                Err(_) if Instant::now() >= deadline => return Err("timed out".into()),
                // Poll fast at first: a machine usually listens within
                // milliseconds of its start.
                _ => {
                    let waited = self
                        .cfg
                        .start_timeout
                        .saturating_sub(deadline.saturating_duration_since(Instant::now()));
                    let pause = if waited < Duration::from_millis(200) {
                        1
                    } else {
                        10
                    };
                    tokio::time::sleep(Duration::from_millis(pause)).await
                }
            }
        }
    }
}
