//! One request, from its Host to the machine and back.

use super::*;

impl Proxy {
    pub(crate) async fn handle(
        self: &Arc<Self>,
        req: Request<Incoming>,
        conn: &ClientConn,
    ) -> Response<Body> {
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

    /// A request's way: its app, the machines serving its port, an HTTPS
    /// redirect if the service forces it, the machine it goes to, and the
    /// forwarding.
    pub(crate) async fn route(
        self: &Arc<Self>,
        req: Request<Incoming>,
        conn: &ClientConn,
        request_id: &HeaderValue,
    ) -> Response<Body> {
        if req.method() == http::Method::CONNECT {
            return self.tunnel_in(req, conn).await;
        }
        let ctx = &conn.ctx;
        // The host the client asked for: in the URI (absolute form, HTTP/2)
        // or the Host header.
        let host = match req.uri().authority() {
            Some(a) => HeaderValue::from_str(a.as_str()).ok(),
            None => req.headers().get(header::HOST).cloned(),
        };
        let host_str = host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or("");
        let since = std::time::Instant::now();
        let app: Cow<'_, str> = match &ctx.app {
            Some(app) => Cow::Borrowed(app),
            None => match app_of(host_str, &self.cfg.domain) {
                Some(app) => app,
                None => {
                    hangar_metrics::get().proxy_request("", 404, since);
                    return text(
                        StatusCode::NOT_FOUND,
                        format!("no app here: ask for <app>.{}", self.cfg.domain),
                    );
                }
            },
        };
        let resp = self
            .route_app(req, conn, host.as_ref(), host_str, &app, request_id)
            .await;
        hangar_metrics::get().proxy_request(&app, resp.status().as_u16(), since);
        resp
    }

    /// Whether the client is another host of the cluster (whose relay
    /// headers and tunnels are believed).
    pub(crate) fn is_peer_client(&self, conn: &ClientConn) -> bool {
        conn.client_ip
            .to_str()
            .ok()
            .and_then(|ip| ip.parse().ok())
            .is_some_and(|ip| self.machines.is_peer(ip))
    }

    /// A request for `app`.
    async fn route_app(
        self: &Arc<Self>,
        mut req: Request<Incoming>,
        conn: &ClientConn,
        host: Option<&HeaderValue>,
        host_str: &str,
        app: &str,
        request_id: &HeaderValue,
    ) -> Response<Body> {
        let ctx = &conn.ctx;
        // Relayed by another host's proxy: the client's scheme, port and
        // address there (believed from the cluster's hosts only).
        let mut relayed = None;
        let mut relayed_for = None;
        if req.headers().contains_key(HANGAR_RELAYED)
            || req.headers().contains_key(HANGAR_RELAYED_FOR)
        {
            let from_peer = self.is_peer_client(conn);
            let h = req.headers_mut();
            let mark = h.remove(HANGAR_RELAYED);
            let client = h.remove(HANGAR_RELAYED_FOR);
            if from_peer {
                relayed = mark
                    .as_ref()
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.split_once(':'))
                    .and_then(|(scheme, port)| {
                        Some((scheme == "https", port.parse::<u16>().ok()?))
                    });
                relayed_for = client.filter(|v| {
                    v.to_str()
                        .is_ok_and(|s| s.parse::<std::net::IpAddr>().is_ok())
                });
            }
        }
        let (https, port) = match relayed {
            Some((https, port)) => (https, port),
            None => (ctx.scheme == Scheme::Https, ctx.port),
        };
        let all = self.machines.backends(app);
        let Some((members, kind, force_https)) = http_members(&all, port) else {
            if relayed.is_none() {
                if let Some(edge) = self.machines.remote(app, port) {
                    return self
                        .relay_to_host(req, conn, host, request_id, edge, https, port)
                        .await;
                }
            }
            return text(
                StatusCode::NOT_FOUND,
                format!("app {app} has no HTTP service on port {port}"),
            );
        };
        if !https && force_https {
            return self.https_redirect(&req, ctx, host_str);
        }
        if matches!(*req.method(), http::Method::GET | http::Method::HEAD)
            && members.iter().any(|(b, _)| b.statics)
        {
            if let Some(resp) = self.serve_static(app, &req).await {
                return resp;
            }
        }
        let (backend, svc, guard) = match self.place(app, members, kind, ctx).await {
            Ok(placed) => placed,
            Err(msg) => {
                // None of this host's machines can take it (all at their
                // hard limit, or none could start): another host's may.
                if relayed.is_none() {
                    if let Some(edge) = self.machines.remote(app, port) {
                        tracing::debug!(app = %app, %edge, reason = %msg, "spilling a request over to another host");
                        return self
                            .relay_to_host(req, conn, host, request_id, edge, https, port)
                            .await;
                    }
                }
                return text(StatusCode::SERVICE_UNAVAILABLE, msg);
            }
        };
        let target = SocketAddr::new(backend.addr, svc.internal_port);
        let relayed = relayed.map(|(https, port)| Relayed {
            client: relayed_for,
            https,
            port,
        });
        self.forward(
            req,
            conn,
            host,
            request_id,
            Hop {
                target,
                guard: Some(guard),
                relayed,
            },
        )
        .await
        .unwrap_or_else(|()| {
            self.not_ready(&backend.id);
            text(
                StatusCode::BAD_GATEWAY,
                format!("machine {} of app {app} did not answer", backend.id),
            )
        })
    }

    /// Sends a request for an app whose machines all run on other hosts to
    /// the proxy of one of them, and its answer back.
    #[allow(clippy::too_many_arguments)]
    async fn relay_to_host(
        &self,
        mut req: Request<Incoming>,
        conn: &ClientConn,
        host: Option<&HeaderValue>,
        request_id: &HeaderValue,
        edge: SocketAddr,
        https: bool,
        port: u16,
    ) -> Response<Body> {
        let mark = format!("{}:{port}", if https { "https" } else { "http" });
        if let Ok(v) = HeaderValue::from_str(&mark) {
            req.headers_mut().insert(HANGAR_RELAYED, v);
        }
        req.headers_mut()
            .insert(HANGAR_RELAYED_FOR, conn.client_ip.clone());
        let hop = Hop {
            target: edge,
            guard: None,
            relayed: None,
        };
        self.forward(req, conn, host, request_id, hop)
            .await
            .unwrap_or_else(|()| {
                text(
                    StatusCode::BAD_GATEWAY,
                    format!("the host at {edge} that runs this app's machines did not answer"),
                )
            })
    }

    /// A 301 to the same place over HTTPS.
    fn https_redirect(&self, req: &Request<Incoming>, ctx: &Ctx, host: &str) -> Response<Body> {
        let host_only = app_of_host_without_port(host);
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
        r
    }

    /// The machine a request goes to, with its load counted. `requests`
    /// services: every request goes where the rules pick. `connections`
    /// services: a client connection is bound to one machine, and counts on
    /// it, for as long as it lasts.
    async fn place<'a>(
        &self,
        app: &str,
        members: Vec<(&'a Backend, &'a Service)>,
        kind: LoadKind,
        ctx: &Ctx,
    ) -> Result<(&'a Backend, &'a Service, LoadGuard), String> {
        let bound = match kind {
            LoadKind::Connections => ctx.upstream.bound_in(&members),
            LoadKind::Requests => None,
        };
        if let Some((b, s)) = bound {
            return Ok((b, s, self.add_load(&b.id, Counts::Request)));
        }
        let counts = match kind {
            LoadKind::Requests => Counts::Request,
            LoadKind::Connections => Counts::Connection,
        };
        let c = self.choose(app, members, kind, counts).await?;
        if kind == LoadKind::Connections {
            ctx.upstream.bind(c.guard);
            Ok((
                c.backend,
                c.svc,
                self.add_load(&c.backend.id, Counts::Request),
            ))
        } else {
            Ok((c.backend, c.svc, c.guard))
        }
    }

    /// Forwards the request to `target` with the proxy's headers and brings
    /// the answer back (an upgraded connection is relayed both ways); the
    /// load stays counted until the answer's body is done. `Err` when the
    /// machine did not answer.
    async fn forward(
        &self,
        mut req: Request<Incoming>,
        conn: &ClientConn,
        host: Option<&HeaderValue>,
        request_id: &HeaderValue,
        hop: Hop,
    ) -> Result<Response<Body>, ()> {
        let Hop {
            target,
            guard,
            relayed,
        } = hop;
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
                Err(_) => return Ok(text(StatusCode::BAD_REQUEST, "bad request target")),
            }
        }
        *req.version_mut() = http::Version::HTTP_11;
        self.add_headers(req.headers_mut(), conn, host, request_id, upgrade, relayed);

        let sent = if sticky {
            conn.ctx.upstream.send(target, req).await
        } else {
            client().request(req).await.map_err(|e| e.to_string())
        };
        let mut resp = match sent {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(%target, error = %e, "proxy upstream failed");
                return Err(());
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
                return Ok(Response::from_parts(
                    parts,
                    Full::new(Bytes::new()).map_err(|n| match n {}).boxed(),
                ));
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
        Ok(Response::from_parts(parts, body))
    }

    /// The headers a machine gets with a request: Fly's `Fly-*`, the
    /// `X-Forwarded-*` ones, `Via`; hop-by-hop ones go.
    fn add_headers(
        &self,
        h: &mut HeaderMap,
        conn: &ClientConn,
        host: Option<&HeaderValue>,
        request_id: &HeaderValue,
        upgrade: bool,
        relayed: Option<Relayed>,
    ) {
        let scheme = conn.ctx.scheme;
        strip_hop_by_hop(h, upgrade);
        if !h.contains_key(header::HOST) {
            if let Some(host) = host {
                h.insert(header::HOST, host.clone());
            }
        }
        // A relayed request's client is the relaying host's client, which
        // that host already put at the end of X-Forwarded-For.
        let (client_ip, xff) = match relayed.as_ref().and_then(|r| r.client.clone()) {
            Some(ip) => {
                let xff = h
                    .get(X_FORWARDED_FOR)
                    .cloned()
                    .unwrap_or_else(|| ip.clone());
                (ip, xff)
            }
            None => {
                let client_ip = conn.client_ip.clone();
                let xff = xff_with(h.get(X_FORWARDED_FOR), &client_ip);
                (client_ip, xff)
            }
        };
        let (scheme, port_value) = match &relayed {
            Some(r) => (
                if r.https { Scheme::Https } else { Scheme::Http },
                HeaderValue::from(r.port),
            ),
            None => (scheme, conn.port.clone()),
        };
        let proto = HeaderValue::from_static(scheme.as_str());
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
    }
}

/// Where a request goes: the machine (or host) and what it carries along.
struct Hop {
    target: SocketAddr,
    /// The machine's load, counted until the answer's body is done.
    guard: Option<LoadGuard>,
    /// What the host that relayed it said.
    relayed: Option<Relayed>,
}

/// What another host's proxy said of a request it relayed: its client's
/// address, scheme and port there.
struct Relayed {
    client: Option<HeaderValue>,
    https: bool,
    port: u16,
}

/// `X-Forwarded-For` with `client` appended.
fn xff_with(prev: Option<&HeaderValue>, client: &HeaderValue) -> HeaderValue {
    match prev {
        Some(prev) => {
            let mut v = prev.as_bytes().to_vec();
            v.extend_from_slice(b", ");
            v.extend_from_slice(client.as_bytes());
            HeaderValue::from_bytes(&v).unwrap_or_else(|_| client.clone())
        }
        None => client.clone(),
    }
}

/// Machines with the service that matched, their load kind, and whether
/// HTTPS is forced.
type Members<'a> = (Vec<(&'a Backend, &'a Service)>, LoadKind, bool);

/// The app's machines with an HTTP service on `port`, the service's load
/// kind, and whether one of them forces HTTPS; none when no service
/// covers the port.
fn http_members(all: &[Backend], port: u16) -> Option<Members<'_>> {
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
    let kind = members.first()?.1.concurrency.kind;
    Some((members, kind, force_https))
}
