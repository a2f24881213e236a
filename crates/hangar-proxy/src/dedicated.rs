//! Apps' dedicated addresses: every port of every service of the app gets
//! a listener on each of its addresses, serving what the port's handlers
//! say:
//!
//! | handlers              | the proxy                                      |
//! |-----------------------|------------------------------------------------|
//! | `[]`                  | relays the TCP connection                      |
//! | `["proxy_proto"]`     | relays it after a PROXY protocol v1 header     |
//! | `["tls"]`             | ends TLS, relays the plain stream              |
//! | `["http"]`            | proxies HTTP (the app is the address's)        |
//! | `["tls", "http"]`     | ends TLS, proxies HTTP                         |
//! | UDP services          | relays datagrams per client                    |
//!
//! The listeners follow the state: a reconcile pass every
//! [`RECONCILE_EVERY`] opens what assignments and services ask for and
//! closes the rest.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hangar_core::services::{LoadKind, Protocol, PublicPort, Service};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

use crate::{Backend, Bind, Counts, Ctx, LoadGuard, Proxy, Scheme, bind, tunnel};

/// How often listeners are brought in line with the state.
pub const RECONCILE_EVERY: Duration = Duration::from_millis(500);
/// Most ports one `start_port..end_port` range opens.
const MAX_RANGE: u16 = 256;
/// A UDP client's relay goes after this long without datagrams.
pub(crate) const UDP_IDLE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    ip: IpAddr,
    port: u16,
    udp: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Want {
    app: String,
    handlers: Vec<String>,
}

struct Running {
    want: Want,
    /// A listener's task per proxy worker (UDP: one).
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The open listeners.
#[derive(Default)]
pub(crate) struct Listeners {
    open: Mutex<HashMap<Key, Running>>,
    /// Keys that failed to bind, so that the failure is logged once.
    failed: Mutex<HashSet<Key>>,
}

impl Drop for Listeners {
    fn drop(&mut self) {
        for (_, r) in self
            .open
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
        {
            r.tasks.iter().for_each(|t| t.abort());
        }
    }
}

// The pool's addresses may be routed to this host without being on one of
// its interfaces. `shared`: one listener per proxy worker (SO_REUSEPORT).
fn bind_tcp(addr: SocketAddr, shared: bool) -> std::io::Result<socket2::Socket> {
    let how = Bind {
        tcp: true,
        shared,
        freebind: true,
    };
    bind(addr, how)
}

fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let how = Bind {
        tcp: false,
        shared: false,
        freebind: true,
    };
    UdpSocket::from_std(bind(addr, how)?.into())
}

/// The PROXY protocol v1 line for a connection from `peer` to `local`.
fn proxy_header(peer: SocketAddr, local: SocketAddr) -> String {
    let (peer_ip, local_ip) = (peer.ip().to_canonical(), local.ip().to_canonical());
    let family = if peer_ip.is_ipv4() && local_ip.is_ipv4() {
        "TCP4"
    } else {
        "TCP6"
    };
    format!(
        "PROXY {family} {peer_ip} {local_ip} {} {}\r\n",
        peer.port(),
        local.port()
    )
}

impl Proxy {
    /// What the assignments and services ask for.
    fn wanted(&self) -> HashMap<Key, Want> {
        let mut out = HashMap::new();
        for (app, ip) in self.machines.dedicated_ips() {
            // This host's machines first, then those of other hosts.
            let mut ports = Vec::new();
            for b in self.machines.backends(&app).iter() {
                ports.extend(PublicPort::of(&b.services));
            }
            ports.extend(self.machines.remote_ports(&app));
            for p in ports {
                let spec = &p.spec;
                let end = spec.end.min(spec.start.saturating_add(MAX_RANGE - 1));
                for port in spec.start..=end {
                    out.entry(Key {
                        ip,
                        port,
                        udp: p.protocol == Protocol::Udp,
                    })
                    .or_insert_with(|| Want {
                        app: app.clone(),
                        handlers: spec.handlers.clone(),
                    });
                }
            }
        }
        out
    }

    /// Opens and closes listeners to match [`Proxy::wanted`].
    pub(crate) async fn reconcile_dedicated(self: &Arc<Self>) {
        let wanted = self.wanted();
        let mut open = self
            .dedicated
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        open.retain(|k, r| {
            let keep = wanted.get(k) == Some(&r.want) && !r.tasks.iter().any(|t| t.is_finished());
            if !keep {
                tracing::info!(ip = %k.ip, port = k.port, udp = k.udp, "proxy closing a dedicated listener");
                r.tasks.iter().for_each(|t| t.abort());
            }
            keep
        });
        let mut failed = self
            .dedicated
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        failed.retain(|k| wanted.contains_key(k));
        for (key, want) in wanted {
            if open.contains_key(&key) {
                continue;
            }
            let addr = SocketAddr::new(key.ip, key.port);
            let tasks = if key.udp {
                match bind_udp(addr) {
                    Ok(sock) => vec![tokio::spawn(Arc::clone(self).serve_udp(
                        sock,
                        want.app.clone(),
                        key.port,
                    ))],
                    Err(e) => {
                        if failed.insert(key.clone()) {
                            tracing::warn!(%addr, app = %want.app, error = %e, "cannot listen on a dedicated address (UDP)");
                        }
                        continue;
                    }
                }
            } else {
                match self.open_tcp(addr, &want, key.port) {
                    Ok(tasks) => tasks,
                    Err(e) => {
                        if failed.insert(key.clone()) {
                            tracing::warn!(%addr, app = %want.app, error = %e, "cannot listen on a dedicated address");
                        }
                        continue;
                    }
                }
            };
            failed.remove(&key);
            tracing::info!(%addr, app = %want.app, handlers = ?want.handlers, udp = key.udp, "proxy listening on a dedicated address");
            open.insert(key, Running { want, tasks });
        }
    }

    /// Listens on `addr` once per proxy worker, each listener served on
    /// its worker's thread as the proxy's own ports are (or, before the
    /// workers exist, once on this runtime).
    fn open_tcp(
        self: &Arc<Self>,
        addr: SocketAddr,
        want: &Want,
        port: u16,
    ) -> std::io::Result<Vec<tokio::task::JoinHandle<()>>> {
        let workers = self.workers.get().map_or(&[][..], Vec::as_slice);
        if workers.is_empty() {
            let l = TcpListener::from_std(bind_tcp(addr, false)?.into())?;
            return Ok(vec![tokio::spawn(Arc::clone(self).serve_tcp(
                l,
                want.clone(),
                port,
            ))]);
        }
        let socks = workers
            .iter()
            .map(|_| bind_tcp(addr, true))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(socks
            .into_iter()
            .zip(workers)
            .map(|(sock, worker)| {
                let (me, want) = (Arc::clone(self), want.clone());
                // The listener joins the worker's reactor there.
                worker.spawn(async move {
                    match TcpListener::from_std(sock.into()) {
                        Ok(l) => me.serve_tcp(l, want, port).await,
                        Err(e) => tracing::warn!(%addr, error = %e, "dedicated listener"),
                    }
                })
            })
            .collect())
    }

    async fn serve_tcp(self: Arc<Self>, listener: TcpListener, want: Want, port: u16) {
        let app: Arc<str> = Arc::from(want.app.as_str());
        let has = |h: &str| want.handlers.iter().any(|x| x == h);
        let (tls, http, proxy_proto) = (has("tls"), has("http"), has("proxy_proto"));
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let local = stream
                .local_addr()
                .unwrap_or(SocketAddr::new(peer.ip(), port));
            let me = Arc::clone(&self);
            let app = Arc::clone(&app);
            let origin = tunnel::Origin {
                peer,
                local,
                proxy_proto,
            };
            tokio::spawn(async move {
                let scheme = if tls { Scheme::Https } else { Scheme::Http };
                let ctx = Ctx {
                    scheme,
                    port,
                    app: Some(Arc::clone(&app)),
                    upstream: Default::default(),
                };
                if !tls {
                    if http {
                        me.serve_conn(TokioIo::new(stream), peer, ctx).await;
                    } else {
                        me.relay(stream, &origin, &app, port, true).await;
                    }
                    return;
                }
                let Some(acceptor) = me.tls.get().cloned() else {
                    return;
                };
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                    Ok(Ok(s)) if http => me.serve_conn(TokioIo::new(s), peer, ctx).await,
                    Ok(Ok(s)) => me.relay(s, &origin, &app, port, true).await,
                    _ => tracing::debug!(%peer, "TLS handshake failed"),
                }
            });
        }
    }

    /// The app's machines with a service of `protocol` on public `port`.
    pub(crate) fn backends_on(
        &self,
        app: &str,
        port: u16,
        protocol: Protocol,
    ) -> Vec<(Backend, Service)> {
        self.machines
            .backends(app)
            .iter()
            .filter_map(|b| {
                let s = b
                    .services
                    .iter()
                    .find(|s| s.protocol == protocol && s.ports.iter().any(|p| p.covers(port)))?
                    .clone();
                Some((b.clone(), s))
            })
            .collect()
    }

    /// Relays one TCP connection to a machine: one of this host's, else
    /// (unless it came through a tunnel already) through a tunnel to
    /// another host that has one.
    pub(crate) async fn relay<S>(
        self: &Arc<Self>,
        client: S,
        origin: &tunnel::Origin,
        app: &str,
        port: u16,
        may_tunnel: bool,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + 'static,
    {
        let owned = self.backends_on(app, port, Protocol::Tcp);
        let backends = owned.iter().map(|(b, s)| (b, s)).collect();
        // A raw TCP connection is a connection, whatever the service says.
        let chosen = match self
            .choose(app, backends, LoadKind::Connections, Counts::Both)
            .await
        {
            Ok(x) => x,
            Err(e) => {
                // None here (or none that can take it): another host's.
                match self
                    .machines
                    .remote_raw(app, port, Protocol::Tcp)
                    .filter(|_| may_tunnel)
                {
                    Some(edge) => {
                        tracing::debug!(app, port, %edge, reason = %e, "relaying a connection to another host");
                        tunnel::relay_through(client, edge, app, port, origin).await;
                    }
                    None => {
                        tracing::debug!(app, port, error = %e, "no machine for a TCP connection")
                    }
                }
                return;
            }
        };
        self.relay_to_machine(client, chosen, origin).await;
    }

    async fn relay_to_machine<S>(
        self: &Arc<Self>,
        mut client: S,
        chosen: crate::Chosen<'_>,
        origin: &tunnel::Origin,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + 'static,
    {
        let (peer, local, proxy_proto) = (origin.peer, origin.local, origin.proxy_proto);
        let _guard = chosen.guard;
        let target = SocketAddr::new(chosen.backend.addr, chosen.svc.internal_port);
        let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await else {
            tracing::debug!(machine = %chosen.backend.id, %target, "machine refused a relayed connection");
            return;
        };
        let _ = upstream.set_nodelay(true);
        if proxy_proto
            && upstream
                .write_all(proxy_header(peer, local).as_bytes())
                .await
                .is_err()
        {
            return;
        }
        // A plain TCP client: splice, zero copy. A TLS stream or a tunnel
        // goes through user space.
        match (&mut client as &mut dyn std::any::Any).downcast_mut::<tokio::net::TcpStream>() {
            Some(tcp) => {
                let _ = crate::splice::relay(tcp, &mut upstream).await;
            }
            None => {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            }
        }
    }

    /// Relays datagrams: each client gets an upstream socket of its own to
    /// one machine (or, with no machine here, a tunnel to another host's
    /// proxy), and the replies go back to it.
    async fn serve_udp(self: Arc<Self>, sock: UdpSocket, app: String, port: u16) {
        let sock = Arc::new(sock);
        let local = sock
            .local_addr()
            .unwrap_or(SocketAddr::new(IpAddr::from([0, 0, 0, 0]), port));
        // Each client's way to its machine and when it last sent.
        let mut sessions: HashMap<SocketAddr, (UdpUpstream, Instant)> = HashMap::new();
        let mut buf = vec![0u8; 65536];
        loop {
            let Ok((n, client)) = sock.recv_from(&mut buf).await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            sessions.retain(|_, (_, last)| last.elapsed() < UDP_IDLE);
            if let std::collections::hash_map::Entry::Vacant(e) = sessions.entry(client) {
                let Some(up) = self.udp_session(&sock, &app, port, client, local).await else {
                    continue;
                };
                e.insert((up, Instant::now()));
            }
            let Some((up, last)) = sessions.get_mut(&client) else {
                continue;
            };
            *last = Instant::now();
            let sent = match up {
                UdpUpstream::Machine(u, _) => u.send(&buf[..n]).await.is_ok(),
                UdpUpstream::Tunnel(w) => tunnel::write_frame(w, &buf[..n]).await.is_ok(),
            };
            if !sent {
                sessions.remove(&client);
            }
        }
    }

    /// A new UDP client's way to a machine: one of this host's, else a
    /// tunnel to another host that has one.
    async fn udp_session(
        self: &Arc<Self>,
        sock: &Arc<UdpSocket>,
        app: &str,
        port: u16,
        client: SocketAddr,
        local: SocketAddr,
    ) -> Option<UdpUpstream> {
        let owned = self.backends_on(app, port, Protocol::Udp);
        let backends = owned.iter().map(|(b, s)| (b, s)).collect();
        let chosen = match self
            .choose_with(app, backends, LoadKind::Connections, Counts::Both, false)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                let edge = self.machines.remote_raw(app, port, Protocol::Udp)?;
                let origin = tunnel::Origin {
                    peer: client,
                    local,
                    proxy_proto: false,
                };
                let back = Arc::clone(sock);
                let reply = move |d: Vec<u8>| {
                    let _ = back.try_send_to(&d, client);
                };
                return match tunnel::open_datagrams(edge, app, port, &origin, reply).await {
                    Ok(w) => Some(UdpUpstream::Tunnel(w)),
                    Err(err) => {
                        tracing::debug!(app, port, %edge, reason = %e, error = %err, "cannot relay datagrams to another host");
                        None
                    }
                };
            }
        };
        let target = SocketAddr::new(chosen.backend.addr, chosen.svc.internal_port);
        let bind: SocketAddr = if target.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let u = UdpSocket::bind(bind).await.ok()?;
        u.connect(target).await.ok()?;
        let u = Arc::new(u);
        let (back, to) = (Arc::clone(sock), Arc::clone(&u));
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok(Ok(n)) = tokio::time::timeout(UDP_IDLE, to.recv(&mut buf)).await {
                let _ = back.send_to(&buf[..n], client).await;
            }
        });
        Some(UdpUpstream::Machine(u, chosen.guard))
    }
}

/// Where a UDP client's datagrams go.
enum UdpUpstream {
    /// A socket to one of this host's machines, with its count on the
    /// machine's load (held while the session lasts).
    Machine(Arc<UdpSocket>, #[allow(dead_code)] LoadGuard),
    /// A tunnel to another host's proxy.
    Tunnel(tokio::net::tcp::OwnedWriteHalf),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_protocol_lines() {
        assert_eq!(
            proxy_header(
                "127.0.0.1:5000".parse().unwrap(),
                "127.0.2.1:5432".parse().unwrap()
            ),
            "PROXY TCP4 127.0.0.1 127.0.2.1 5000 5432\r\n"
        );
        assert_eq!(
            proxy_header(
                "[::1]:5000".parse().unwrap(),
                "[fdaa::1]:80".parse().unwrap()
            ),
            "PROXY TCP6 ::1 fdaa::1 5000 80\r\n"
        );
    }
}
