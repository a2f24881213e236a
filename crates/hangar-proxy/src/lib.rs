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

mod autostop;
mod dedicated;
mod headers;
mod listen;
mod placement;
mod route;
mod splice;
mod statics;
pub mod tls;
mod tunnel;
mod upstream;
mod view;

use headers::*;
use listen::*;
use placement::*;
use upstream::*;

pub use statics::Static;
pub use view::BackendView;

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
    /// Its config has `statics` (the proxy then asks
    /// [`Machines::statics`] for `GET`s and `HEAD`s).
    pub statics: bool,
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
    /// The app's `[[statics]]`, with the image layers they serve from.
    async fn statics(&self, app: &str) -> Arc<Vec<Static>> {
        let _ = app;
        Arc::new(Vec::new())
    }
    /// In a cluster: the proxy of another host that runs machines of `app`
    /// serving public `port` over HTTP (one with a started machine first),
    /// for requests this host has no machine for.
    fn remote(&self, app: &str, port: u16) -> Option<SocketAddr> {
        let _ = (app, port);
        None
    }

    /// The started machines of `app` on other hosts of the cluster that
    /// serve one of these public ports over HTTP (autostop keeps
    /// `min_machines_running` across the cluster).
    fn remote_started(&self, app: &str, ports: &[(u16, u16)]) -> Vec<String> {
        let _ = (app, ports);
        Vec::new()
    }

    /// In a cluster: the proxy of another host that runs machines of `app`
    /// with a `protocol` service on public `port` (raw TCP and UDP, relayed
    /// through a tunnel), for connections this host has no machine for.
    fn remote_raw(&self, app: &str, port: u16, protocol: services::Protocol) -> Option<SocketAddr> {
        let _ = (app, port, protocol);
        None
    }

    /// In a cluster: the public ports of `app`'s machines on other hosts
    /// (this host's proxy listens on the app's dedicated addresses for
    /// them too).
    fn remote_ports(&self, app: &str) -> Vec<services::PublicPort> {
        let _ = app;
        Vec::new()
    }

    /// Whether `ip` is another host of the cluster (whose relayed requests
    /// are believed).
    fn is_peer(&self, ip: IpAddr) -> bool {
        let _ = ip;
        false
    }
}

/// Marks a request one host's proxy relayed to another's, with the
/// client's scheme and port there (`https:443`): the next proxy serves it
/// from its own machines only.
pub const HANGAR_RELAYED: &str = "hangar-relayed";

/// Carries the client's address on a relayed request; believed, like
/// [`HANGAR_RELAYED`], only from another host of the cluster.
pub const HANGAR_RELAYED_FOR: &str = "hangar-relayed-for";

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
    /// A worker thread or its runtime could not start.
    #[error("cannot start a proxy worker thread: {0}")]
    Worker(#[source] std::io::Error),
}

type Body = BoxBody<Bytes, hyper::Error>;

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
    /// The worker threads' runtimes (made when the proxy starts serving).
    workers: std::sync::OnceLock<Vec<tokio::runtime::Handle>>,
    /// `Fly-Region`, ready to send.
    region: HeaderValue,
}

/// An HTTP/1 connection to a machine: its address and the sender.
type UpstreamConn = (
    SocketAddr,
    hyper::client::conn::http1::SendRequest<Incoming>,
);

impl Proxy {
    /// A proxy over `machines`.
    pub fn new(cfg: Config, machines: Arc<dyn Machines>) -> Arc<Proxy> {
        Arc::new(Proxy {
            machines,
            loads: Box::leak(Box::new(Mutex::new(HashMap::new()))),
            starting: Mutex::new(HashMap::new()),
            dedicated: Default::default(),
            tls: std::sync::OnceLock::new(),
            workers: std::sync::OnceLock::new(),
            region: HeaderValue::from_str(&cfg.region).unwrap_or(HeaderValue::from_static("local")),
            cfg,
        })
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
            statics: false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_view_says_which_machines_take_traffic_and_why_not() {
        let mut cordoned = backend("b", "off");
        cordoned.out_of_rotation = true;
        let mut stopped = backend("c", "suspend");
        stopped.state = State::Stopped;
        let fake = Arc::new(Fake {
            backends: Mutex::new(vec![backend("a", "stop"), cordoned, stopped]),
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
        let busy = proxy.add_load(&"a".into(), Counts::Request);
        let v = proxy.view("web");
        assert_eq!(v.len(), 3);
        assert!(v[0].in_rotation);
        assert_eq!((v[0].in_flight, v[0].idle_secs), (1, None));
        assert_eq!(
            v[0].services,
            ["80/http → 8080 (autostop stop, min 1)".to_owned()]
        );
        assert_eq!(v[1].why_not, Some("cordoned or failing a check"));
        assert_eq!((v[2].in_rotation, v[2].why_not), (false, Some("stopped")));
        drop(busy);
        tokio::time::advance(Duration::from_secs(7)).await;
        let v = proxy.view("web");
        assert_eq!(v[0].in_flight, 0);
        assert!(v[0].idle_secs.is_some_and(|s| s >= 7.0), "{:?}", v[0]);
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
