//! Hangar's proxy: the edge that routes requests to apps' machines.
//!
//! ```text
//!  client ──HTTP :80───┐                          ┌─▶ machine a (started, load 1)
//!  client ──HTTPS :443─┼─▶ Host: <app>.<domain> ──┼─▶ machine b (started, load 0)  ◀── picked
//!        (TLS ends here)│   services[].ports      └─▶ machine c (stopped, autostart)
//!                       │   covering 80 / 443          started when every started
//!                       │                              machine is at its soft limit
//!                       └─ autostop pass: started machines idle for `idle_timeout`
//!                          are stopped/suspended, keeping min_machines_running
//! ```
//!
//! The proxy holds no machine state of its own beyond the load it puts on
//! each machine: it asks a [`Machines`] directory (hangard's state) for the
//! app's machines on every request and asks it to start and stop them.
//! Which machine takes a request and which idle machines stop are the pure
//! rules of [`hangar_core::services`].

use std::borrow::Cow;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

// Tokio's clock, so that tests can pause and advance it.
use tokio::time::Instant;

use bytes::Bytes;
use hangar_core::services::{self, Autostop, Candidate, LoadKind, Pick, Service};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

mod dedicated;
pub mod tls;

/// How the proxy is set up.
#[derive(Debug, Clone)]
pub struct Config {
    /// Plain HTTP listener (serves services' port 80).
    pub http: Option<SocketAddr>,
    /// HTTPS listener (serves services' port 443; TLS ends here).
    pub https: Option<SocketAddr>,
    /// Apps are `<app>.<domain>`.
    pub domain: String,
    /// A started machine with no traffic for this long is stopped (when
    /// its service has `autostop`).
    pub idle_timeout: Duration,
    /// How often idle machines are looked for.
    pub autostop_interval: Duration,
    /// How long a request waits for a machine to start and listen.
    pub start_timeout: Duration,
    /// TLS certificate and key (PEM); made self-signed for `*.<domain>`
    /// when missing.
    pub tls_cert: PathBuf,
    /// See `tls_cert`.
    pub tls_key: PathBuf,
    /// `Fly-Region` of this host.
    pub region: String,
}

/// A machine's state, as the proxy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Running.
    Started,
    /// Stopped: can be started.
    Stopped,
    /// Suspended: can be resumed.
    Suspended,
    /// Anything else (starting, stopping, failed, ...).
    Other,
}

/// A machine of an app.
#[derive(Debug, Clone)]
pub struct Backend {
    /// Machine id.
    pub id: Arc<str>,
    /// Its address on the private network, as the host reaches it.
    pub addr: IpAddr,
    /// Its state.
    pub state: State,
    /// Cordoned, or failing a service check: no new traffic.
    pub out_of_rotation: bool,
    /// Its services.
    pub services: Vec<Service>,
}

/// Why the platform could not start or stop a machine for the proxy.
pub type ControlError = Box<dyn std::error::Error + Send + Sync>;

/// What the proxy needs from hangard.
#[async_trait::async_trait]
pub trait Machines: Send + Sync + 'static {
    /// Apps that have machines.
    fn apps(&self) -> Vec<String>;
    /// The app's machines (not destroyed); empty for an unknown app. Asked
    /// on every request: implementations should answer from a cache.
    fn backends(&self, app: &str) -> Arc<Vec<Backend>>;
    /// Starts (or resumes) a machine and returns once it is started.
    async fn start(&self, app: &str, id: &str) -> Result<(), ControlError>;
    /// Stops (or suspends) a machine.
    async fn stop(&self, app: &str, id: &str, suspend: bool) -> Result<(), ControlError>;
    /// Apps' dedicated addresses (`ip_assignments` of type `v4`).
    fn dedicated_ips(&self) -> Vec<(String, IpAddr)>;
}

/// What went wrong setting the proxy up.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// TLS setup failed.
    #[error("TLS: {0}")]
    Tls(String),
}

type Body = BoxBody<Bytes, hyper::Error>;

/// Load the proxy puts on a machine.
#[derive(Debug)]
struct Load {
    /// Traffic: HTTP requests in flight and raw TCP connections open. A
    /// machine with any is busy (never stopped for idleness), and it is
    /// the load of `requests` services.
    in_flight: u32,
    /// Client connections bound to the machine: HTTP connections of
    /// `connections` services and raw TCP connections. The load of
    /// `connections` services.
    conns: u32,
    last_active: Instant,
    /// Seen accepting connections since it last started.
    ready: bool,
}

impl Load {
    fn new() -> Load {
        Load {
            in_flight: 0,
            conns: 0,
            last_active: Instant::now(),
            ready: false,
        }
    }

    fn add(&mut self, counts: Counts) {
        if counts.request() {
            self.in_flight += 1;
            self.last_active = Instant::now();
        }
        if counts.connection() {
            self.conns += 1;
        }
    }

    fn of(&self, kind: LoadKind) -> u32 {
        match kind {
            LoadKind::Requests => self.in_flight,
            LoadKind::Connections => self.conns,
        }
    }
}

/// What a [`LoadGuard`] counts while it lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counts {
    /// An HTTP request.
    Request,
    /// A client connection bound to a machine (HTTP).
    Connection,
    /// A raw TCP connection: traffic and a connection.
    Both,
}

impl Counts {
    fn request(self) -> bool {
        matches!(self, Counts::Request | Counts::Both)
    }
    fn connection(self) -> bool {
        matches!(self, Counts::Connection | Counts::Both)
    }
}

/// The proxy. Cheap to share.
pub struct Proxy {
    cfg: Config,
    machines: Arc<dyn Machines>,
    /// Per machine: its load and whether it is known to listen.
    /// (Never freed: guards reach it without touching a shared reference
    /// count per request; a proxy lives as long as its process.)
    loads: &'static Mutex<HashMap<Arc<str>, Load>>,
    starting: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Listeners on apps' dedicated addresses.
    dedicated: dedicated::Listeners,
    /// TLS for `tls` handlers (made when the proxy starts serving).
    tls: std::sync::OnceLock<tokio_rustls::TlsAcceptor>,
    /// `Fly-Region`, ready to send.
    region: HeaderValue,
}

/// Where a connection came in: its scheme, public port, and the app when
/// the address is the app's own (else the Host header names it).
#[derive(Debug, Clone)]
struct Ctx {
    scheme: Scheme,
    port: u16,
    app: Option<Arc<str>>,
    /// The connection's own HTTP/1 connection to the machine it last
    /// talked to (kept alive while requests keep going there).
    upstream: Upstream,
}

/// A client connection being served: where it came in, and the values of
/// the headers that say who it is (made once per connection).
struct ClientConn {
    /// The proxy (held per connection, so requests need not count
    /// references to it).
    proxy: Arc<Proxy>,
    ctx: Ctx,
    /// `Fly-Client-IP` (and `X-Forwarded-For`).
    client_ip: HeaderValue,
    /// The public port, for `X-Forwarded-Port` and `Fly-Forwarded-Port`.
    port: HeaderValue,
}

/// An HTTP/1 connection to a machine: its address and the sender.
type UpstreamConn = (
    SocketAddr,
    hyper::client::conn::http1::SendRequest<Incoming>,
);

/// See [`Ctx::upstream`].
#[derive(Clone, Default)]
struct Upstream {
    /// Taken while a request is on it (HTTP/1 requests of one client
    /// connection come one after the other).
    conn: Arc<Mutex<Option<UpstreamConn>>>,
    /// For `connections` services: the machine this client connection is
    /// bound to (its requests all go there while it takes traffic),
    /// counted in that machine's load until the connection ends.
    bound: Arc<Mutex<Option<LoadGuard>>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Upstream")
    }
}

impl Upstream {
    /// Sends `req` (origin-form URI) to `target` over this connection's
    /// upstream connection, made (again) when it points elsewhere or went
    /// away.
    async fn send(
        &self,
        target: SocketAddr,
        mut req: Request<Incoming>,
    ) -> Result<Response<Incoming>, String> {
        let held = self.conn.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((t, mut s)) = held {
            if t == target && s.ready().await.is_ok() {
                match s.try_send_request(req).await {
                    Ok(r) => {
                        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some((t, s));
                        return Ok(r);
                    }
                    // The kept-alive connection went away before the
                    // request was written: it goes on a new one.
                    Err(mut e) => match e.take_message() {
                        Some(back) => req = back,
                        None => return Err(e.into_error().to_string()),
                    },
                }
            }
        }
        let stream = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect(target),
        )
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let (mut s, conn) = hyper::client::conn::http1::Builder::new()
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let r = s.send_request(req).await.map_err(|e| e.to_string());
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some((target, s));
        r
    }
}

impl Upstream {
    /// The machine (and service) among `backends` this connection is bound
    /// to, while it can take traffic.
    fn bound_in<'a>(
        &self,
        backends: &[(&'a Backend, &'a Service)],
    ) -> Option<(&'a Backend, &'a Service)> {
        let bound = self.bound.lock().unwrap_or_else(|p| p.into_inner());
        let id = &bound.as_ref()?.id;
        backends
            .iter()
            .find(|(b, _)| b.id == *id && b.state == State::Started && !b.out_of_rotation)
            .copied()
    }

    /// Binds this connection to the machine `guard` counts it on (and
    /// unbinds it from the previous one).
    fn bind(&self, guard: LoadGuard) {
        *self.bound.lock().unwrap_or_else(|p| p.into_inner()) = Some(guard);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(format!("{}\n", msg.into())))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_FORWARDED_SSL: HeaderName = HeaderName::from_static("x-forwarded-ssl");
const FLY_CLIENT_IP: HeaderName = HeaderName::from_static("fly-client-ip");
const FLY_FORWARDED_PROTO: HeaderName = HeaderName::from_static("fly-forwarded-proto");
const FLY_FORWARDED_PORT: HeaderName = HeaderName::from_static("fly-forwarded-port");
const FLY_REGION: HeaderName = HeaderName::from_static("fly-region");
const FLY_REQUEST_ID: HeaderName = HeaderName::from_static("fly-request-id");

/// Headers that belong to one connection, never forwarded.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none: look before removing.
    if !h
        .keys()
        .any(|n| n == header::UPGRADE || HOP_BY_HOP.contains(n))
    {
        return;
    }
    // Headers named in Connection are hop-by-hop too.
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .filter(|n| !(keep_upgrade && n == header::UPGRADE))
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in &HOP_BY_HOP {
        if keep_upgrade && n == header::CONNECTION {
            continue;
        }
        h.remove(n);
    }
    if !keep_upgrade {
        h.remove(header::UPGRADE);
    }
}

/// The app a Host header names (`<app>.<domain>`, any port, any case).
fn app_of<'h>(host: &'h str, domain: &str) -> Option<Cow<'h, str>> {
    let host = host.trim();
    let host = match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(']') => h,
        _ => host,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    let cut = host.len().checked_sub(domain.len() + 1)?;
    let (app, rest) = (host.get(..cut)?, host.get(cut..)?);
    let suffix = rest.strip_prefix('.')?;
    if app.is_empty() || app.contains('.') || !suffix.eq_ignore_ascii_case(domain) {
        return None;
    }
    Some(if app.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(app.to_ascii_lowercase())
    } else {
        Cow::Borrowed(app)
    })
}

/// This thread's client to machines: its connections (and their tasks)
/// stay on the thread's runtime.
fn client() -> Client<HttpConnector, Incoming> {
    thread_local! {
        static CLIENT: Client<HttpConnector, Incoming> = {
            let mut connector = HttpConnector::new();
            connector.set_connect_timeout(Some(Duration::from_secs(5)));
            connector.set_nodelay(true);
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector)
        };
    }
    CLIENT.with(Clone::clone)
}

/// How [`bind`] sets a socket up.
#[derive(Debug, Clone, Copy)]
struct Bind {
    /// A TCP listener (else a UDP socket).
    tcp: bool,
    /// Other workers may bind the same address (`SO_REUSEPORT`).
    shared: bool,
    /// The address may be routed to this host without being on one of its
    /// interfaces (`IP_FREEBIND`).
    freebind: bool,
}

/// A bound, non-blocking socket on `addr` (listening, for TCP).
fn bind(addr: SocketAddr, how: Bind) -> std::io::Result<socket2::Socket> {
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

/// The machine picked for a request or connection, with the service that
/// matched and the load counted on it.
struct Chosen<'a> {
    backend: &'a Backend,
    svc: &'a Service,
    guard: LoadGuard,
}

/// A counter per proxy worker thread, bumped per pick: equally loaded
/// machines take turns.
fn next_turn() -> usize {
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
struct LoadGuard {
    loads: &'static Mutex<HashMap<Arc<str>, Load>>,
    id: Arc<str>,
    counts: Counts,
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
    /// A proxy over `machines`.
    pub fn new(cfg: Config, machines: Arc<dyn Machines>) -> Arc<Proxy> {
        Arc::new(Proxy {
            machines,
            loads: Box::leak(Box::new(Mutex::new(HashMap::new()))),
            starting: Mutex::new(HashMap::new()),
            dedicated: Default::default(),
            tls: std::sync::OnceLock::new(),
            region: HeaderValue::from_str(&cfg.region).unwrap_or(HeaderValue::from_static("local")),
            cfg,
        })
    }

    /// Binds the listeners and serves until the returned tasks are
    /// aborted; also runs the autostop pass.
    pub async fn serve(self: &Arc<Self>) -> Result<Vec<tokio::task::JoinHandle<()>>, ProxyError> {
        let mut tasks = Vec::new();
        let acceptor = tls::acceptor(&self.cfg.tls_cert, &self.cfg.tls_key, &self.cfg.domain)?;
        let _ = self.tls.set(acceptor.clone());
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        for (addr, tls) in [(self.cfg.http, None), (self.cfg.https, Some(acceptor))] {
            let Some(addr) = addr else { continue };
            // One listener per worker (SO_REUSEPORT), each on a runtime of
            // its own thread, as nginx runs a worker per CPU: a request is
            // served start to end on one thread, with that thread's pool
            // of connections to machines.
            let mut listeners = Vec::new();
            for _ in 0..workers {
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
            tracing::info!(%addr, workers, tls = tls.is_some(), domain = %self.cfg.domain, "proxy serving");
            for (i, l) in listeners.into_iter().enumerate() {
                let me = Arc::clone(self);
                let tls = tls.clone();
                std::thread::Builder::new()
                    .name(format!("proxy-{}-{i}", addr.port()))
                    .spawn(move || {
                        let rt = match tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                        {
                            Ok(rt) => rt,
                            Err(e) => {
                                tracing::error!(error = %e, "proxy worker runtime");
                                return;
                            }
                        };
                        rt.block_on(async move {
                            match tokio::net::TcpListener::from_std(l.into()) {
                                Ok(l) => me.accept(l, tls).await,
                                Err(e) => tracing::error!(error = %e, "proxy worker listener"),
                            }
                        });
                    })
                    .map_err(|source| ProxyError::Listen { addr, source })?;
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

    async fn accept(
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

    async fn serve_conn<I>(self: Arc<Self>, io: I, peer: SocketAddr, ctx: Ctx)
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

    #[cfg(test)]
    fn load(&self, id: &str, kind: LoadKind) -> u32 {
        self.loads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .map_or(0, |l| l.of(kind))
    }

    fn add_load(&self, id: &Arc<str>, counts: Counts) -> LoadGuard {
        let mut loads = self.loads.lock().unwrap_or_else(|p| p.into_inner());
        self.add_load_locked(&mut loads, id, counts)
    }

    fn add_load_locked(
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
    fn not_ready(&self, id: &str) {
        if let Some(l) = self
            .loads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(id)
        {
            l.ready = false;
        }
    }

    async fn handle(self: &Arc<Self>, req: Request<Incoming>, conn: &ClientConn) -> Response<Body> {
        let mut buf = [0u8; ulid::ULID_LEN];
        let id = ulid::Ulid::new().array_to_str(&mut buf);
        id.make_ascii_lowercase();
        let request_id = HeaderValue::from_str(id).unwrap_or(HeaderValue::from_static("-"));
        let mut resp = self.route(req, conn, &request_id).await;
        let h = resp.headers_mut();
        h.insert(FLY_REQUEST_ID, request_id);
        h.append(header::VIA, HeaderValue::from_static("1.1 hangar"));
        resp
    }

    async fn route(
        self: &Arc<Self>,
        mut req: Request<Incoming>,
        conn: &ClientConn,
        request_id: &HeaderValue,
    ) -> Response<Body> {
        let ctx = &conn.ctx;
        let scheme = ctx.scheme;
        // The host the client asked for: in the URI (absolute form, HTTP/2)
        // or the Host header.
        let host = match req.uri().authority() {
            Some(a) => HeaderValue::from_str(a.as_str()).ok(),
            None => req.headers().get(header::HOST).cloned(),
        };
        let host_str = host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or("");
        let app: Cow<'_, str> = match &ctx.app {
            Some(app) => Cow::Borrowed(app),
            None => match app_of(host_str, &self.cfg.domain) {
                Some(app) => app,
                None => {
                    return text(
                        StatusCode::NOT_FOUND,
                        format!("no app here: ask for <app>.{}", self.cfg.domain),
                    );
                }
            },
        };
        let port = ctx.port;
        let all = self.machines.backends(&app);
        let mut force_https = false;
        let members: Vec<(&Backend, &Service)> = all
            .iter()
            .filter_map(|b| {
                b.services.iter().find_map(|s| {
                    let p = s.ports.iter().find(|p| p.covers(port) && p.is_http())?;
                    force_https |= p.force_https;
                    Some((b, s))
                })
            })
            .collect();
        let Some(kind) = members.first().map(|(_, s)| s.concurrency.kind) else {
            return text(
                StatusCode::NOT_FOUND,
                format!("app {app} has no HTTP service on port {port}"),
            );
        };
        if scheme == Scheme::Http && force_https {
            let host_only = app_of_host_without_port(host_str);
            let https_port = match ctx.app {
                // An app's own address serves HTTPS on 443.
                Some(_) => 443,
                None => self.cfg.https.map(|a| a.port()).unwrap_or(443),
            };
            let authority = if https_port == 443 {
                host_only
            } else {
                format!("{host_only}:{https_port}")
            };
            let path = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            let mut r = text(StatusCode::MOVED_PERMANENTLY, "use https");
            if let Ok(v) = HeaderValue::from_str(&format!("https://{authority}{path}")) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            return r;
        }

        // `requests` services: every request goes to the machine the
        // rules pick. `connections` services: a client connection is bound
        // to one machine, and counts on it, for as long as it lasts.
        let bound = match kind {
            LoadKind::Connections => ctx.upstream.bound_in(&members),
            LoadKind::Requests => None,
        };
        let (backend, svc, guard) = match bound {
            Some((b, s)) => (b, s, self.add_load(&b.id, Counts::Request)),
            None => {
                let counts = match kind {
                    LoadKind::Requests => Counts::Request,
                    LoadKind::Connections => Counts::Connection,
                };
                match self.choose(&app, members, kind, counts).await {
                    Ok(c) if kind == LoadKind::Connections => {
                        ctx.upstream.bind(c.guard);
                        (
                            c.backend,
                            c.svc,
                            self.add_load(&c.backend.id, Counts::Request),
                        )
                    }
                    Ok(c) => (c.backend, c.svc, c.guard),
                    Err(msg) => return text(StatusCode::SERVICE_UNAVAILABLE, msg),
                }
            }
        };
        let target = SocketAddr::new(backend.addr, svc.internal_port);

        // Forward.
        let upgrade = req.headers().contains_key(header::UPGRADE);
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        // HTTP/1 requests go over the client connection's own upstream
        // connection (origin-form target); HTTP/2 streams and upgrades
        // through the pool (absolute target).
        let sticky = !upgrade && req.version() != http::Version::HTTP_2;
        if !sticky || req.uri().authority().is_some() {
            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
            let uri: Result<Uri, _> = if sticky {
                path.parse()
            } else {
                format!("http://{target}{path}").parse()
            };
            match uri {
                Ok(u) => *req.uri_mut() = u,
                Err(_) => return text(StatusCode::BAD_REQUEST, "bad request target"),
            }
        }
        *req.version_mut() = http::Version::HTTP_11;
        let h = req.headers_mut();
        strip_hop_by_hop(h, upgrade);
        if !h.contains_key(header::HOST) {
            if let Some(host) = &host {
                h.insert(header::HOST, host.clone());
            }
        }
        let client_ip = conn.client_ip.clone();
        let xff = match h.get(X_FORWARDED_FOR) {
            Some(prev) => {
                let mut v = prev.as_bytes().to_vec();
                v.extend_from_slice(b", ");
                v.extend_from_slice(client_ip.as_bytes());
                HeaderValue::from_bytes(&v).unwrap_or_else(|_| client_ip.clone())
            }
            None => client_ip.clone(),
        };
        let proto = HeaderValue::from_static(scheme.as_str());
        let port_value = conn.port.clone();
        h.insert(X_FORWARDED_FOR, xff);
        h.insert(X_FORWARDED_PROTO, proto.clone());
        h.insert(X_FORWARDED_PORT, port_value.clone());
        h.insert(
            X_FORWARDED_SSL,
            HeaderValue::from_static(if scheme == Scheme::Https { "on" } else { "off" }),
        );
        h.insert(FLY_CLIENT_IP, client_ip);
        h.insert(FLY_FORWARDED_PROTO, proto);
        h.insert(FLY_FORWARDED_PORT, port_value);
        h.insert(FLY_REGION, self.region.clone());
        h.insert(FLY_REQUEST_ID, request_id.clone());
        h.append(header::VIA, HeaderValue::from_static("1.1 hangar"));

        let sent = if sticky {
            ctx.upstream.send(target, req).await
        } else {
            client().request(req).await.map_err(|e| e.to_string())
        };
        let mut resp = match sent {
            Ok(r) => r,
            Err(e) => {
                self.not_ready(&backend.id);
                tracing::debug!(machine = %backend.id, error = %e, "proxy upstream failed");
                return text(
                    StatusCode::BAD_GATEWAY,
                    format!("machine {} of app {app} did not answer", backend.id),
                );
            }
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client_upgrade) = client_upgrade {
                let server_upgrade = hyper::upgrade::on(&mut resp);
                tokio::spawn(async move {
                    let _guard = guard;
                    if let (Ok(c), Ok(s)) = (client_upgrade.await, server_upgrade.await) {
                        let (mut c, mut s) = (TokioIo::new(c), TokioIo::new(s));
                        let _ = tokio::io::copy_bidirectional(&mut c, &mut s).await;
                    }
                });
                let (parts, _) = resp.into_parts();
                return Response::from_parts(
                    parts,
                    Full::new(Bytes::new()).map_err(|n| match n {}).boxed(),
                );
            }
        }
        strip_hop_by_hop(resp.headers_mut(), false);
        let (parts, body) = resp.into_parts();
        let body = body
            .map_frame(move |f| {
                let _ = &guard;
                f
            })
            .boxed();
        Response::from_parts(parts, body)
    }

    /// Picks the machine for a request or connection among `backends` (with
    /// the service that matched), weighing loads as `kind` says, and counts
    /// `counts` on it (in the returned guard); starts it when the rules say
    /// so, and returns once it accepts connections.
    async fn choose<'a>(
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
    async fn choose_with<'a>(
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
    async fn start(&self, app: &str, id: &str) -> Result<(), String> {
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
                self.machines
                    .start(app, id)
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Waits until the machine accepts connections on `target`.
    async fn until_listening(&self, id: &Arc<str>, target: SocketAddr) -> Result<(), String> {
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
                for i in
                    services::autostop(&running, first.min_machines_running, self.cfg.idle_timeout)
                {
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
                if let Err(e) = self.machines.stop(&app, &id, suspend).await {
                    tracing::warn!(app, machine = %id, error = %e, "autostop failed");
                }
            }
        }
    }
}

fn app_of_host_without_port(host: &str) -> String {
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !h.is_empty() => h.to_owned(),
        _ => host.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Machines in memory; records stops.
    struct Fake {
        backends: Mutex<Vec<Backend>>,
        stopped: Mutex<Vec<(String, bool)>>,
    }

    #[async_trait::async_trait]
    impl Machines for Fake {
        fn apps(&self) -> Vec<String> {
            vec!["web".into()]
        }
        fn backends(&self, _app: &str) -> Arc<Vec<Backend>> {
            Arc::new(self.backends.lock().unwrap().clone())
        }
        async fn start(&self, _app: &str, _id: &str) -> Result<(), ControlError> {
            Ok(())
        }
        async fn stop(&self, _app: &str, id: &str, suspend: bool) -> Result<(), ControlError> {
            self.stopped.lock().unwrap().push((id.to_owned(), suspend));
            for b in self.backends.lock().unwrap().iter_mut() {
                if *b.id == *id {
                    b.state = if suspend {
                        State::Suspended
                    } else {
                        State::Stopped
                    };
                }
            }
            Ok(())
        }
        fn dedicated_ips(&self) -> Vec<(String, IpAddr)> {
            Vec::new()
        }
    }

    fn backend(id: &str, autostop: &str) -> Backend {
        let config = serde_json::json!({"services": [{
            "internal_port": 8080, "autostop": autostop, "min_machines_running": 1,
            "ports": [{"port": 80, "handlers": ["http"]}]}]});
        Backend {
            id: id.into(),
            addr: IpAddr::from([10, 0, 0, 1]),
            state: State::Started,
            out_of_rotation: false,
            services: services::services(&config),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idle_machines_stop_after_the_idle_timeout_keeping_the_minimum() {
        let fake = Arc::new(Fake {
            backends: Mutex::new(vec![
                backend("a", "stop"),
                backend("b", "stop"),
                backend("c", "suspend"),
            ]),
            stopped: Mutex::new(Vec::new()),
        });
        let dir = std::env::temp_dir();
        let proxy = Proxy::new(
            Config {
                http: None,
                https: None,
                domain: "localhost".into(),
                idle_timeout: Duration::from_secs(300),
                autostop_interval: Duration::from_secs(1),
                start_timeout: Duration::from_secs(1),
                tls_cert: dir.join("unused.crt"),
                tls_key: dir.join("unused.key"),
                region: "local".into(),
            },
            fake.clone(),
        );
        // First seen now: idle from here.
        proxy.autostop_pass().await;
        tokio::time::advance(Duration::from_secs(200)).await;
        // Traffic on "b" (a request that ends at once).
        drop(proxy.add_load(&"b".into(), Counts::Request));
        tokio::time::advance(Duration::from_secs(99)).await;
        proxy.autostop_pass().await;
        assert!(
            fake.stopped.lock().unwrap().is_empty(),
            "stopped before the idle timeout"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        proxy.autostop_pass().await;
        // "a" and "c" idle for 301 s: both go ("c" suspended); "b", used
        // 101 s ago, stays, and so does the minimum of one.
        let mut stopped = fake.stopped.lock().unwrap().clone();
        stopped.sort();
        assert_eq!(
            stopped,
            vec![("a".to_owned(), false), ("c".to_owned(), true)]
        );
        // A busy machine is never stopped, however long it has been busy.
        let guard = proxy.add_load(&"b".into(), Counts::Request);
        tokio::time::advance(Duration::from_secs(3600)).await;
        proxy.autostop_pass().await;
        assert_eq!(fake.stopped.lock().unwrap().len(), 2);
        drop(guard);
        // An idle kept-alive connection is load for `connections` balancing,
        // not traffic: it does not keep its machine from stopping.
        let conn = proxy.add_load(&"b".into(), Counts::Connection);
        assert_eq!(proxy.load("b", LoadKind::Connections), 1);
        assert_eq!(proxy.load("b", LoadKind::Requests), 0);
        fake.backends.lock().unwrap()[0].state = State::Started;
        tokio::time::advance(Duration::from_secs(3600)).await;
        proxy.autostop_pass().await;
        assert_eq!(
            fake.stopped.lock().unwrap().last(),
            Some(&("b".to_owned(), false)),
            "idle with a connection"
        );
        drop(conn);
        assert_eq!(proxy.load("b", LoadKind::Connections), 0);
        // Idle again, but the last started machine: min_machines_running.
        tokio::time::advance(Duration::from_secs(3600)).await;
        proxy.autostop_pass().await;
        assert_eq!(fake.stopped.lock().unwrap().len(), 3);
    }

    #[test]
    fn hosts_name_apps() {
        assert_eq!(app_of("web.localhost", "localhost"), Some("web".into()));
        assert_eq!(
            app_of("Web.LocalHost:8080", "localhost"),
            Some("web".into())
        );
        assert_eq!(app_of("web.localhost.", "localhost"), Some("web".into()));
        assert_eq!(app_of("localhost", "localhost"), None);
        assert_eq!(app_of("a.b.localhost", "localhost"), None);
        assert_eq!(app_of("webxlocalhost", "localhost"), None);
        assert_eq!(app_of("web.example.com", "localhost"), None);
        assert_eq!(
            app_of("api.apps.example.com", "apps.example.com"),
            Some("api".into())
        );
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        let mut up = h.clone();
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
        strip_hop_by_hop(&mut up, true);
        assert!(up.contains_key("upgrade") && up.contains_key("connection"));
        assert!(!up.contains_key("x-private"));
    }
}
