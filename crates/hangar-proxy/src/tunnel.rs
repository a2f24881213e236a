//! Raw connections and datagrams for machines on another host of the
//! cluster. A host's proxy listens on an app's dedicated addresses for the
//! ports of its machines on every host; a connection (or a UDP client's
//! datagrams) it has no machine for goes to the proxy of a host that has
//! one, through an HTTP `CONNECT` on that proxy's plain listener:
//!
//! ```text
//! CONNECT <app>:<port> HTTP/1.1
//! hangar-relayed: tcp:<port>          (or udp:<port>)
//! hangar-relayed-for: <client ip:port>
//! hangar-relayed-to: <dedicated ip:port the client reached>
//! hangar-relay-proxy-proto: 1         (the port's handlers ask for it)
//! ```
//!
//! The other proxy believes it only from a host of the cluster, answers
//! `200` and relays the stream to one of its own machines (starting one if
//! need be), writing the PROXY header with the client's own addresses.
//! Datagrams travel in the stream as `u16` big-endian length + payload.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hangar_core::services::{LoadKind, Protocol};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use crate::{Body, ClientConn, Counts, HANGAR_RELAYED, HANGAR_RELAYED_FOR, Proxy, text};

/// The client's address on the dedicated listener it reached.
const RELAYED_TO: &str = "hangar-relayed-to";
/// The port's handlers include `proxy_proto`.
const RELAY_PROXY_PROTO: &str = "hangar-relay-proxy-proto";
/// The longest answer head read.
const HEAD_LIMIT: usize = 8192;
/// How long the other host may take to answer.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a tunnelled connection came from and what it asks for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Origin {
    /// The client.
    pub(crate) peer: SocketAddr,
    /// The address and port it reached.
    pub(crate) local: SocketAddr,
    /// Whether the machine gets a PROXY protocol header first.
    pub(crate) proxy_proto: bool,
}

/// The request line and headers that open a tunnel.
fn open_request(app: &str, port: u16, protocol: Protocol, o: &Origin) -> String {
    let kind = match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    };
    let mut head = format!(
        "CONNECT {app}:{port} HTTP/1.1\r\nHost: {app}:{port}\r\n{HANGAR_RELAYED}: {kind}:{port}\r\n{HANGAR_RELAYED_FOR}: {}\r\n{RELAYED_TO}: {}\r\n",
        o.peer, o.local
    );
    if o.proxy_proto {
        head.push_str(RELAY_PROXY_PROTO);
        head.push_str(": 1\r\n");
    }
    head.push_str("\r\n");
    head
}

/// Opens a tunnel to the proxy at `edge`; the stream and any bytes the
/// machine already sent after the answer's head.
pub(crate) async fn open(
    edge: SocketAddr,
    app: &str,
    port: u16,
    protocol: Protocol,
    origin: &Origin,
) -> std::io::Result<(TcpStream, Vec<u8>)> {
    let go = async {
        let mut s = TcpStream::connect(edge).await?;
        let _ = s.set_nodelay(true);
        s.write_all(open_request(app, port, protocol, origin).as_bytes())
            .await?;
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        let end = loop {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the other host closed the tunnel before answering",
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > HEAD_LIMIT {
                return Err(std::io::Error::other("the other host's answer is too long"));
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]);
        let status = head.split_whitespace().nth(1).unwrap_or("");
        if status != "200" {
            let line = head.lines().next().unwrap_or("").to_owned();
            return Err(std::io::Error::other(format!(
                "the other host refused the tunnel: {line}"
            )));
        }
        Ok((s, buf[end..].to_vec()))
    };
    tokio::time::timeout(OPEN_TIMEOUT, go)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))?
}

/// Relays `client` through a tunnel to `edge`.
pub(crate) async fn relay_through<S>(
    mut client: S,
    edge: SocketAddr,
    app: &str,
    port: u16,
    origin: &Origin,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match open(edge, app, port, Protocol::Tcp, origin).await {
        Ok((mut up, early)) => {
            if !early.is_empty() && client.write_all(&early).await.is_err() {
                return;
            }
            let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
        }
        Err(e) => {
            tracing::debug!(app, port, %edge, error = %e, "cannot relay a connection to another host")
        }
    }
}

/// Writes one datagram as a frame.
pub(crate) async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    data: &[u8],
) -> std::io::Result<()> {
    let len = u16::try_from(data.len()).map_err(|_| std::io::Error::other("datagram too large"))?;
    let mut frame = Vec::with_capacity(2 + data.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(data);
    w.write_all(&frame).await
}

/// Reads one frame into `buf`; its length, or `None` at the end.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
) -> std::io::Result<Option<usize>> {
    let mut len = [0u8; 2];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let n = usize::from(u16::from_be_bytes(len));
    r.read_exact(&mut buf[..n]).await?;
    Ok(Some(n))
}

/// A reader that first yields bytes already read.
struct Prefixed<R> {
    early: Vec<u8>,
    pos: usize,
    inner: R,
}

impl<R: AsyncRead + Unpin> AsyncRead for Prefixed<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.pos < self.early.len() {
            let n = (self.early.len() - self.pos).min(buf.remaining());
            let pos = self.pos;
            buf.put_slice(&self.early[pos..pos + n]);
            self.pos += n;
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

/// Opens a datagram tunnel: frames written to the returned half go to a
/// machine on the other host; `reply` gets each frame that comes back.
pub(crate) async fn open_datagrams(
    edge: SocketAddr,
    app: &str,
    port: u16,
    origin: &Origin,
    reply: impl Fn(Vec<u8>) + Send + 'static,
) -> std::io::Result<tokio::net::tcp::OwnedWriteHalf> {
    let (s, early) = open(edge, app, port, Protocol::Udp, origin).await?;
    let (r, w) = s.into_split();
    tokio::spawn(async move {
        let mut r = Prefixed {
            early,
            pos: 0,
            inner: r,
        };
        let mut buf = vec![0u8; 65536];
        while let Ok(Some(n)) = read_frame(&mut r, &mut buf).await {
            reply(buf[..n].to_vec());
        }
    });
    Ok(w)
}

impl Proxy {
    /// A `CONNECT` another host's proxy sent: a raw connection or a UDP
    /// client's datagrams for one of this host's machines.
    pub(crate) async fn tunnel_in(
        self: &Arc<Self>,
        mut req: Request<Incoming>,
        conn: &ClientConn,
    ) -> Response<Body> {
        if !self.is_peer_client(conn) || req.method() != Method::CONNECT {
            return text(StatusCode::FORBIDDEN, "tunnels are for the cluster's hosts");
        }
        let header = |k: &str| {
            req.headers()
                .get(k)
                .and_then(|v: &HeaderValue| v.to_str().ok())
                .map(str::to_owned)
        };
        let kind = header(HANGAR_RELAYED).unwrap_or_default();
        let parsed = (|| {
            let (proto, port) = kind.split_once(':')?;
            let protocol = match proto {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                _ => return None,
            };
            let port: u16 = port.parse().ok()?;
            let app = req.uri().authority()?.host().to_owned();
            let peer: SocketAddr = header(HANGAR_RELAYED_FOR)?.parse().ok()?;
            let local: SocketAddr = header(RELAYED_TO)?.parse().ok()?;
            Some((app, protocol, port, peer, local))
        })();
        let Some((app, protocol, port, peer, local)) = parsed else {
            return text(
                StatusCode::BAD_REQUEST,
                "a tunnel needs hangar-relayed (tcp:<port> or udp:<port>), hangar-relayed-for and hangar-relayed-to",
            );
        };
        if self.backends_on(&app, port, protocol).is_empty() {
            return text(
                StatusCode::NOT_FOUND,
                format!("no machine of app {app} serves port {port} here"),
            );
        }
        let origin = Origin {
            peer,
            local,
            proxy_proto: header(RELAY_PROXY_PROTO).is_some(),
        };
        let upgrade = hyper::upgrade::on(&mut req);
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let Ok(up) = upgrade.await else {
                return;
            };
            let io = TokioIo::new(up);
            match protocol {
                Protocol::Tcp => me.relay(io, &origin, &app, port, false).await,
                Protocol::Udp => me.datagrams_here(io, &app, port).await,
            }
        });
        Response::new(
            Full::new(Bytes::new())
                .map_err(|never| match never {})
                .boxed(),
        )
    }

    /// A tunnel's datagrams to one of this host's machines and back.
    async fn datagrams_here<S>(self: Arc<Self>, io: S, app: &str, port: u16)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let owned = self.backends_on(app, port, Protocol::Udp);
        let backends = owned.iter().map(|(b, s)| (b, s)).collect();
        let Ok(chosen) = self
            .choose_with(app, backends, LoadKind::Connections, Counts::Both, false)
            .await
        else {
            return;
        };
        let _guard = chosen.guard;
        let target = SocketAddr::new(chosen.backend.addr, chosen.svc.internal_port);
        let bind: SocketAddr = if target.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let Ok(sock) = UdpSocket::bind(bind).await else {
            return;
        };
        if sock.connect(target).await.is_err() {
            return;
        }
        let (mut r, mut w) = tokio::io::split(io);
        let up = async {
            let mut buf = vec![0u8; 65536];
            while let Ok(Some(n)) = read_frame(&mut r, &mut buf).await {
                let _ = sock.send(&buf[..n]).await;
            }
        };
        let down = async {
            let mut buf = vec![0u8; 65536];
            while let Ok(Ok(n)) =
                tokio::time::timeout(crate::dedicated::UDP_IDLE, sock.recv(&mut buf)).await
            {
                if write_frame(&mut w, &buf[..n]).await.is_err() {
                    break;
                }
            }
        };
        tokio::select! {
            _ = up => {}
            _ = down => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_request_names_what_the_other_host_needs() {
        let o = Origin {
            peer: "203.0.113.9:40000".parse().unwrap(),
            local: "127.0.1.1:5432".parse().unwrap(),
            proxy_proto: true,
        };
        let r = open_request("db", 5432, Protocol::Tcp, &o);
        assert!(r.starts_with("CONNECT db:5432 HTTP/1.1\r\n"));
        assert!(r.contains("hangar-relayed: tcp:5432\r\n"));
        assert!(r.contains("hangar-relayed-for: 203.0.113.9:40000\r\n"));
        assert!(r.contains("hangar-relayed-to: 127.0.1.1:5432\r\n"));
        assert!(r.contains("hangar-relay-proxy-proto: 1\r\n"));
        assert!(r.ends_with("\r\n\r\n"));
        let o = Origin {
            proxy_proto: false,
            ..o
        };
        let r = open_request("dns", 53, Protocol::Udp, &o);
        assert!(r.contains("hangar-relayed: udp:53\r\n") && !r.contains("proxy-proto"));
    }

    #[tokio::test]
    async fn frames_carry_datagrams_whole() {
        let (mut a, mut b) = tokio::io::duplex(1 << 17);
        write_frame(&mut a, b"one").await.unwrap();
        write_frame(&mut a, &[7u8; 65535]).await.unwrap();
        write_frame(&mut a, b"").await.unwrap();
        drop(a);
        let mut buf = vec![0u8; 65536];
        assert_eq!(read_frame(&mut b, &mut buf).await.unwrap(), Some(3));
        assert_eq!(&buf[..3], b"one");
        assert_eq!(read_frame(&mut b, &mut buf).await.unwrap(), Some(65535));
        assert_eq!(read_frame(&mut b, &mut buf).await.unwrap(), Some(0));
        assert_eq!(read_frame(&mut b, &mut buf).await.unwrap(), None);
        let mut c = tokio::io::duplex(16).0;
        assert!(write_frame(&mut c, &vec![0u8; 70000]).await.is_err());
    }
}
