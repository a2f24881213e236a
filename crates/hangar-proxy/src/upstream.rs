//! Connections: a client connection's state, and its own HTTP/1
//! connection to the machine it last talked to.

use super::*;

/// Where a connection came in: its scheme, public port, and the app when
/// the address is the app's own (else the Host header names it).
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub(crate) scheme: Scheme,
    pub(crate) port: u16,
    pub(crate) app: Option<Arc<str>>,
    /// The connection's own HTTP/1 connection to the machine it last
    /// talked to (kept alive while requests keep going there).
    pub(crate) upstream: Upstream,
}

/// A client connection being served: where it came in, and the values of
/// the headers that say who it is (made once per connection).
pub(crate) struct ClientConn {
    /// The proxy (held per connection, so requests need not count
    /// references to it).
    pub(crate) proxy: Arc<Proxy>,
    pub(crate) ctx: Ctx,
    /// `Fly-Client-IP` (and `X-Forwarded-For`).
    pub(crate) client_ip: HeaderValue,
    /// The public port, for `X-Forwarded-Port` and `Fly-Forwarded-Port`.
    pub(crate) port: HeaderValue,
}

/// See [`Ctx::upstream`].
#[derive(Clone, Default)]
pub(crate) struct Upstream {
    /// Taken while a request is on it (HTTP/1 requests of one client
    /// connection come one after the other).
    pub(crate) conn: Arc<Mutex<Option<UpstreamConn>>>,
    /// For `connections` services: the machine this client connection is
    /// bound to (its requests all go there while it takes traffic),
    /// counted in that machine's load until the connection ends.
    pub(crate) bound: Arc<Mutex<Option<LoadGuard>>>,
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
    pub(crate) async fn send(
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

/// This thread's client to machines: its connections (and their tasks)
/// stay on the thread's runtime.
pub(crate) fn client() -> Client<HttpConnector, Incoming> {
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

impl Upstream {
    /// The machine (and service) among `backends` this connection is bound
    /// to, while it can take traffic.
    pub(crate) fn bound_in<'a>(
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
    pub(crate) fn bind(&self, guard: LoadGuard) {
        *self.bound.lock().unwrap_or_else(|p| p.into_inner()) = Some(guard);
    }
}
