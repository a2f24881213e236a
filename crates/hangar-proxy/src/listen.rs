//! The listeners: a worker per CPU with its own runtime and `SO_REUSEPORT`
//! socket, and the connections they accept.

use super::*;

/// How [`bind`] sets a socket up.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bind {
    /// A TCP listener (else a UDP socket).
    pub(crate) tcp: bool,
    /// Other workers may bind the same address (`SO_REUSEPORT`).
    pub(crate) shared: bool,
    /// The address may be routed to this host without being on one of its
    /// interfaces (`IP_FREEBIND`).
    pub(crate) freebind: bool,
}

/// A bound, non-blocking socket on `addr` (listening, for TCP).
pub(crate) fn bind(addr: SocketAddr, how: Bind) -> std::io::Result<socket2::Socket> {
    let (ty, proto) = if how.tcp {
        (socket2::Type::STREAM, socket2::Protocol::TCP)
    } else {
        (socket2::Type::DGRAM, socket2::Protocol::UDP)
    };
    let s = socket2::Socket::new(socket2::Domain::for_address(addr), ty, Some(proto))?;
    if how.tcp {
        s.set_reuse_address(true)?;
    }
    if how.shared {
        s.set_reuse_port(true)?;
    }
    if how.freebind {
        if addr.is_ipv4() {
            s.set_freebind_v4(true)?;
        } else {
            s.set_freebind_v6(true)?;
        }
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    if how.tcp {
        s.listen(1024)?;
    }
    Ok(s)
}

impl Proxy {
    /// Binds the listeners and serves until the returned tasks are
    /// aborted; also runs the autostop pass.
    pub async fn serve(self: &Arc<Self>) -> Result<Vec<tokio::task::JoinHandle<()>>, ProxyError> {
        let mut tasks = Vec::new();
        let acceptor = tls::acceptor(&self.cfg.tls_cert, &self.cfg.tls_key, &self.cfg.domain)?;
        let _ = self.tls.set(acceptor.clone());
        let workers = self.workers()?;
        for (addr, tls) in [(self.cfg.http, None), (self.cfg.https, Some(acceptor))] {
            let Some(addr) = addr else { continue };
            // One listener per worker (SO_REUSEPORT), each on a runtime of
            // its own thread, as nginx runs a worker per CPU: a request is
            // served start to end on one thread, with that thread's pool
            // of connections to machines.
            let mut listeners = Vec::new();
            for _ in workers {
                listeners.push(
                    bind(
                        addr,
                        Bind {
                            tcp: true,
                            shared: true,
                            freebind: false,
                        },
                    )
                    .map_err(|source| ProxyError::Listen { addr, source })?,
                );
            }
            tracing::info!(%addr, workers = workers.len(), tls = tls.is_some(), domain = %self.cfg.domain, "proxy serving");
            for (l, worker) in listeners.into_iter().zip(workers) {
                let me = Arc::clone(self);
                let tls = tls.clone();
                // The listener joins the worker's reactor there.
                tasks.push(worker.spawn(async move {
                    match tokio::net::TcpListener::from_std(l.into()) {
                        Ok(l) => me.accept(l, tls).await,
                        Err(e) => tracing::error!(error = %e, "proxy worker listener"),
                    }
                }));
            }
        }
        let me = Arc::clone(self);
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(me.cfg.autostop_interval).await;
                me.autostop_pass().await;
            }
        }));
        let me = Arc::clone(self);
        tasks.push(tokio::spawn(async move {
            loop {
                me.reconcile_dedicated().await;
                tokio::time::sleep(dedicated::RECONCILE_EVERY).await;
            }
        }));
        Ok(tasks)
    }

    /// The worker threads, a runtime of its own each, one per CPU; started
    /// on first use and kept for the life of the process.
    pub(crate) fn workers(&self) -> Result<&[tokio::runtime::Handle], ProxyError> {
        if let Some(w) = self.workers.get() {
            return Ok(w);
        }
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name(format!("proxy-{i}"))
                .spawn(move || {
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => {
                            let _ = tx.send(Ok(rt.handle().clone()));
                            // Drives whatever is spawned on the handle.
                            rt.block_on(std::future::pending::<()>());
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                })
                .and_then(|_| {
                    rx.recv()
                        .unwrap_or_else(|_| Err(std::io::Error::other("proxy worker ended")))
                })
                .map(|h| handles.push(h))
                .map_err(ProxyError::Worker)?;
        }
        // Two callers at once: the first set wins, the other's threads
        // idle.
        Ok(self.workers.get_or_init(|| handles))
    }

    pub(crate) async fn accept(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let me = Arc::clone(&self);
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    None => {
                        me.serve_conn(
                            TokioIo::new(stream),
                            peer,
                            Ctx {
                                scheme: Scheme::Http,
                                port: 80,
                                app: None,
                                upstream: Upstream::default(),
                            },
                        )
                        .await
                    }
                    Some(acceptor) => {
                        match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(s)) => {
                                me.serve_conn(
                                    TokioIo::new(s),
                                    peer,
                                    Ctx {
                                        scheme: Scheme::Https,
                                        port: 443,
                                        app: None,
                                        upstream: Upstream::default(),
                                    },
                                )
                                .await
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    }
                }
            });
        }
    }

    pub(crate) async fn serve_conn<I>(self: Arc<Self>, io: I, peer: SocketAddr, ctx: Ctx)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let conn = Arc::new(ClientConn {
            proxy: self,
            client_ip: HeaderValue::from_str(&peer.ip().to_canonical().to_string())
                .unwrap_or(HeaderValue::from_static("-")),
            port: HeaderValue::from(ctx.port),
            ctx: Ctx {
                upstream: Upstream::default(),
                ..ctx
            },
        });
        let svc = hyper::service::service_fn(move |req| {
            let conn = Arc::clone(&conn);
            async move { Ok::<_, Infallible>(conn.proxy.handle(req, &conn).await) }
        });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder.http1().writev(false);
        if let Err(e) = builder.serve_connection_with_upgrades(io, svc).await {
            tracing::debug!(%peer, error = %e, "proxy connection ended");
        }
    }
}
