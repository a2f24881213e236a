//! End to end: the proxy in front of real crun machines. Requests reach an
//! app's machines by Host over HTTP and HTTPS with the forwarding headers,
//! spread over the machines, start a stopped machine on demand, and idle
//! machines stop down to `min_machines_running`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hangar_api_types::{CreateMachineRequest, MachineConfig};
use hangar_client::Client;
use hangar_test_utils::daemon::Daemon;
use hangar_test_utils::image::{ImageBuilder, Layer};
use hangar_test_utils::registry::Registry;
use serde_json::{Value, json};

const CGI: &str = "#!/bin/sh\necho 'Content-Type: text/plain'\necho\nenv | sort\n";

/// Creates a machine with `config` and returns its id once it is started.
async fn launch(c: &Client, app: &str, config: Value) -> String {
    let config: MachineConfig = serde_json::from_value(config).unwrap();
    let m = c
        .create_machine(
            app,
            &CreateMachineRequest {
                config: Some(config),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    c.wait_machine(app, &m.id, &["started"], Duration::from_secs(30))
        .await
        .unwrap();
    m.id
}

async fn web_machine(c: &Client, app: &str, image: &str, services: Value) -> String {
    let config = json!({
        "image": image,
        "init": {"cmd": ["/bin/sh", "-c",
            "echo hello-from-$FLY_MACHINE_ID > /www/index.html && exec httpd -f -p 8080 -h /www"]},
        "services": services,
    });
    launch(c, app, config).await
}

fn http_client(d: &Daemon) -> reqwest::Client {
    let https: SocketAddr = d.proxy_https.parse().unwrap();
    let mut b = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60));
    for app in ["web", "secure", "none", "nostart"] {
        b = b.resolve(&format!("{app}.localhost"), https);
    }
    b.build().unwrap()
}

async fn get(d: &Daemon, http: &reqwest::Client, app: &str, path: &str) -> reqwest::Response {
    http.get(format!("http://{}{path}", d.proxy_http))
        .header("host", format!("{app}.localhost"))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_proxy_routes_balances_starts_and_stops_machines() {
    if !hangar_test_utils::host_tier(
        "the_proxy_routes_balances_starts_and_stops_machines",
        &["crun", "docker-registry"],
    ) {
        return;
    }
    let reg = Registry::start().await;
    let image = ImageBuilder::busybox()
        .layer(
            Layer::new()
                .dir("www", 0o755)
                .dir("www/cgi-bin", 0o755)
                .file("www/cgi-bin/env", CGI.as_bytes(), 0o755),
        )
        .build();
    reg.push("test/web", "v1", &image).await;
    let image = format!("{}/test/web:v1", reg.addr);
    let d = Daemon::start(&[
        "--insecure-registry".into(),
        reg.addr.clone(),
        "--proxy-idle-timeout".into(),
        "2s".into(),
    ])
    .await;
    let c = d.client();
    let http = http_client(&d);
    for app in ["web", "secure", "none", "nostart"] {
        c.create_app(app).await.unwrap();
    }
    let services = json!([{
        "protocol": "tcp", "internal_port": 8080,
        "autostart": true, "autostop": "stop", "min_machines_running": 1,
        "concurrency": {"type": "requests", "soft_limit": 1, "hard_limit": 10},
        "ports": [{"port": 80, "handlers": ["http"]}, {"port": 443, "handlers": ["tls", "http"]}],
    }]);
    let a = web_machine(&c, "web", &image, services.clone()).await;
    let b = web_machine(&c, "web", &image, services.clone()).await;

    // Routed by Host, with Fly's forwarding headers both ways.
    let r = get(&d, &http, "web", "/").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["via"], "1.1 hangar");
    let request_id = r.headers()["fly-request-id"].to_str().unwrap().to_owned();
    assert!(!request_id.is_empty());
    let body = r.text().await.unwrap();
    assert!(
        body == format!("hello-from-{a}\n") || body == format!("hello-from-{b}\n"),
        "{body}"
    );
    let env = get(&d, &http, "web", "/cgi-bin/env")
        .await
        .text()
        .await
        .unwrap();
    for want in [
        "HTTP_X_FORWARDED_FOR=127.0.0.1",
        "HTTP_X_FORWARDED_PROTO=http",
        "HTTP_FLY_CLIENT_IP=127.0.0.1",
        "HTTP_FLY_REGION=local",
        "HTTP_VIA=1.1 hangar",
        "HTTP_FLY_REQUEST_ID=",
    ] {
        assert!(env.contains(want), "{want} missing:\n{env}");
    }
    // HTTPS ends in the proxy; the machine sees plain HTTP marked https.
    let https_port = d.proxy_https.rsplit(':').next().unwrap();
    let r = http
        .get(format!("https://web.localhost:{https_port}/cgi-bin/env"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let env = r.text().await.unwrap();
    assert!(env.contains("HTTP_X_FORWARDED_PROTO=https"), "{env}");

    // Requests spread over both machines (least loaded first).
    let mut seen = BTreeSet::new();
    let many = (0..20).map(|_| {
        let http = http.clone();
        let url = format!("http://{}/", d.proxy_http);
        async move {
            http.get(url)
                .header("host", "web.localhost")
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    });
    for body in futures::future::join_all(many).await {
        seen.insert(body.trim().to_owned());
    }
    assert_eq!(
        seen,
        BTreeSet::from([format!("hello-from-{a}"), format!("hello-from-{b}")])
    );

    // Unknown apps, apps without an HTTP service: 404.
    assert_eq!(get(&d, &http, "nope", "/").await.status(), 404);
    web_machine(&c, "none", &image, json!([])).await;
    assert_eq!(get(&d, &http, "none", "/").await.status(), 404);
    // force_https redirects.
    web_machine(
        &c,
        "secure",
        &image,
        json!([{"internal_port": 8080, "ports": [
            {"port": 80, "handlers": ["http"], "force_https": true},
            {"port": 443, "handlers": ["tls", "http"]}]}]),
    )
    .await;
    let r = get(&d, &http, "secure", "/x?y=1").await;
    assert_eq!(r.status(), 301);
    assert_eq!(
        r.headers()["location"],
        format!("https://secure.localhost:{https_port}/x?y=1").as_str()
    );

    // Idle machines stop, down to min_machines_running (1).
    let started = |c: Client| async move {
        c.list_machines("web", &Default::default())
            .await
            .unwrap()
            .into_iter()
            .filter(|m| m.state == "started")
            .map(|m| m.id)
            .collect::<Vec<_>>()
    };
    let left =
        hangar_test_utils::wait_until(Duration::from_secs(30), "an idle machine to stop", || {
            let c = c.clone();
            async move {
                let s = started(c).await;
                (s.len() == 1).then_some(s)
            }
        })
        .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        started(c.clone()).await,
        left,
        "min_machines_running not kept"
    );
    let events = c
        .machine_events("web", if left[0] == a { &b } else { &a }, 10)
        .await
        .unwrap();
    assert!(events.iter().any(|e| e.kind == "stop"), "{events:?}");

    // Stopped by hand too: a request starts one again and is served.
    c.stop_machine("web", &left[0], None, None).await.unwrap();
    c.wait_machine("web", &left[0], &["stopped"], Duration::from_secs(30))
        .await
        .unwrap();
    assert!(started(c.clone()).await.is_empty());
    let r = get(&d, &http, "web", "/").await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().starts_with("hello-from-"));
    assert_eq!(started(c.clone()).await.len(), 1);

    // autostart off and nothing started: a clear 503.
    let id = web_machine(
        &c,
        "nostart",
        &image,
        json!([{"internal_port": 8080, "autostart": false,
                "ports": [{"port": 80, "handlers": ["http"]}]}]),
    )
    .await;
    c.stop_machine("nostart", &id, None, None).await.unwrap();
    c.wait_machine("nostart", &id, &["stopped"], Duration::from_secs(30))
        .await
        .unwrap();
    let r = get(&d, &http, "nostart", "/").await;
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("no machine"));
}

#[tokio::test]
async fn failing_health_checks_take_machines_out_of_rotation() {
    if !hangar_test_utils::host_tier(
        "failing_health_checks_take_machines_out_of_rotation",
        &["crun", "docker-registry"],
    ) {
        return;
    }
    let reg = Registry::start().await;
    reg.push("test/web", "v1", &ImageBuilder::busybox().build())
        .await;
    let image = format!("{}/test/web:v1", reg.addr);
    let d = Daemon::with_registry(&reg.addr).await;
    let c = d.client();
    c.create_app("web").await.unwrap();
    let make = |healthy: bool| {
        let c = c.clone();
        let image = image.clone();
        async move {
            let marker = if healthy { "touch /www/healthz; " } else { "" };
            let config = json!({
                "image": image,
                "init": {"cmd": ["/bin/sh", "-c", format!(
                    "mkdir -p /www; {marker}echo hello-from-$FLY_MACHINE_ID > /www/index.html; \
                     exec httpd -f -p 8080 -h /www")]},
                "services": [{"internal_port": 8080,
                    "ports": [{"port": 80, "handlers": ["http"]}],
                    "checks": [{"type": "http", "path": "/healthz", "interval": "300ms", "timeout": "1s"}]}],
                "checks": {"alive": {"type": "tcp", "port": 8080, "interval": "300ms"}},
            });
            launch(&c, "web", config).await
        }
    };
    let good = make(true).await;
    let bad = make(false).await;
    // The results show in the machines' `checks`.
    let status = |id: String| {
        let c = c.clone();
        async move {
            c.get_machine("web", &id)
                .await
                .unwrap()
                .checks
                .unwrap_or_default()
                .into_iter()
                .map(|ch| (ch.name, ch.status))
                .collect::<Vec<_>>()
        }
    };
    hangar_test_utils::wait_until(Duration::from_secs(20), "checks to settle", || {
        let (s1, s2) = (status(good.clone()), status(bad.clone()));
        async move {
            let (g, b) = (s1.await, s2.await);
            let want_g = vec![
                ("servicecheck-00-http-8080".to_owned(), "passing".to_owned()),
                ("alive".to_owned(), "passing".to_owned()),
            ];
            let want_b = vec![
                (
                    "servicecheck-00-http-8080".to_owned(),
                    "critical".to_owned(),
                ),
                ("alive".to_owned(), "passing".to_owned()),
            ];
            (g == want_g && b == want_b).then_some(())
        }
    })
    .await;
    let (ok, status, err) = d.cli(&["machine", "status", &bad, "-a", "web"]);
    assert!(ok, "{err}");
    assert!(status.contains("Private IP:  fdaa:"), "{status}");
    assert!(
        status.contains("servicecheck-00-http-8080") && status.contains("critical"),
        "{status}"
    );
    let (ok, table, err) = d.cli(&["checks", "list", "-a", "web"]);
    assert!(ok, "{err}");
    assert!(
        table.contains("critical") && table.contains("passing"),
        "{table}"
    );
    assert!(table.contains("404"), "{table}");

    // Every connection goes to the healthy machine (a new connection per
    // request: the service counts connections, and a kept-alive one stays
    // with its machine).
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    for _ in 0..10 {
        let body = get(&d, &http, "web", "/").await.text().await.unwrap();
        assert_eq!(body, format!("hello-from-{good}\n"));
    }
    // Once the bad one passes, it is back in rotation.
    let r = c
        .exec(
            "web",
            &bad,
            &hangar_api_types::MachineExecRequest {
                command: Some(vec!["touch".into(), "/www/healthz".into()]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(r.exit_code, 0);
    hangar_test_utils::wait_until(
        Duration::from_secs(20),
        "the fixed machine to serve",
        || {
            let (d, http, bad) = (&d, &http, bad.clone());
            async move {
                let mut seen = BTreeSet::new();
                for _ in 0..10 {
                    seen.insert(get(d, http, "web", "/").await.text().await.unwrap());
                }
                seen.contains(&format!("hello-from-{bad}\n")).then_some(())
            }
        },
    )
    .await;
}

/// Connects, sends `line`, returns what comes back until the server closes
/// (or 5 s pass).
async fn tcp_roundtrip(addr: &str, line: &str) -> String {
    try_tcp_roundtrip(addr, line)
        .await
        .unwrap_or_else(|e| panic!("{addr}: {e}"))
}

/// [`tcp_roundtrip`], with an error when the connection is refused.
async fn try_tcp_roundtrip(addr: &str, line: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(line.as_bytes()).await?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if out.ends_with(b"\n") {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test]
async fn dedicated_addresses_serve_raw_tcp_proxy_protocol_tls_http_and_udp() {
    if !hangar_test_utils::host_tier(
        "dedicated_addresses_serve_raw_tcp_proxy_protocol_tls_http_and_udp",
        &["crun", "docker-registry"],
    ) {
        return;
    }
    let reg = Registry::start().await;
    reg.push("test/tcp", "v1", &ImageBuilder::busybox().build())
        .await;
    let image = format!("{}/test/tcp:v1", reg.addr);
    let d = Daemon::with_registry(&reg.addr).await;
    let c = d.client();
    c.create_app("tcp").await.unwrap();
    // No address yet: nothing listens for the app.
    let (ok, out, err) = d.cli(&["ips", "allocate-v4", "-a", "tcp"]);
    assert!(ok, "{out}{err}");
    let ips = c.list_ips("tcp").await.unwrap();
    assert_eq!(ips.len(), 1);
    let ip = ips[0].ip.clone();
    assert!(out.contains(&ip), "{out}");
    assert!(!ips[0].shared);

    // One machine: an echo on 7000, a line reader on 7001 (sees the PROXY
    // header), httpd on 8080. (busybox has no UDP server: the UDP echo on
    // 7002 runs in the machine's network namespace from this test.)
    let cmd = "mkdir -p /www && echo hello-from-$FLY_MACHINE_ID > /www/index.html; \
        httpd -p 8080 -h /www; \
        nc -ll -p 7000 -e /bin/cat & \
        nc -ll -p 7001 -e /bin/sh -c 'read l; echo \"got: $l\"' & \
        wait";
    let id = launch(
        &c,
        "tcp",
        json!({
        "image": image,
        "init": {"cmd": ["/bin/sh", "-c", cmd]},
        "services": [
            {"protocol": "tcp", "internal_port": 7000, "autostart": true, "ports": [{"port": 7000}, {"port": 7443, "handlers": ["tls"]}]},
            {"protocol": "tcp", "internal_port": 7001, "ports": [{"port": 7001, "handlers": ["proxy_proto"]}]},
            {"protocol": "tcp", "internal_port": 8080, "ports": [{"port": 8080, "handlers": ["http"]}]},
            {"protocol": "udp", "internal_port": 7002, "ports": [{"port": 7002}]},
        ],
        }),
    )
    .await;

    // Raw TCP (the listener appears within a reconcile pass).
    let echo = hangar_test_utils::wait_until(Duration::from_secs(10), "the TCP echo", || {
        let addr = format!("{ip}:7000");
        async move {
            let out =
                tokio::time::timeout(Duration::from_secs(2), try_tcp_roundtrip(&addr, "ping\n"))
                    .await
                    .ok()?
                    .ok()?;
            (!out.is_empty()).then_some(out)
        }
    })
    .await;
    assert_eq!(echo, "ping\n");
    // PROXY protocol: the machine reads the header line first.
    let line = tcp_roundtrip(&format!("{ip}:7001"), "hello\n").await;
    assert!(
        line.starts_with(&format!("got: PROXY TCP4 127.0.0.1 {ip} ")),
        "{line:?}"
    );
    assert!(line.trim_end().ends_with(" 7001"), "{line:?}");
    // HTTP on the app's own address needs no Host.
    let body = reqwest::get(format!("http://{ip}:8080/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, format!("hello-from-{id}\n"));
    // TLS ends in the proxy; the machine gets the plain stream.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let connector = insecure_tls();
        let tcp = tokio::net::TcpStream::connect(format!("{ip}:7443"))
            .await
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from("tcp.localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        tls.write_all(b"secret\n").await.unwrap();
        let mut buf = [0u8; 7];
        tls.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"secret\n");
    }
    // UDP.
    udp_echo_in(&d.machine_dir(&id).join("netns"), 7002);
    let u = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    u.send_to(b"datagram", format!("{ip}:7002")).await.unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), u.recv_from(&mut buf))
        .await
        .expect("a UDP reply")
        .unwrap();
    assert_eq!(&buf[..n], b"datagram");

    // A stopped machine with autostart starts for a raw connection.
    c.stop_machine("tcp", &id, None, None).await.unwrap();
    c.wait_machine("tcp", &id, &["stopped"], Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        tcp_roundtrip(&format!("{ip}:7000"), "again\n").await,
        "again\n"
    );
    assert_eq!(c.get_machine("tcp", &id).await.unwrap().state, "started");

    // Released: the listeners close.
    let (ok, _, err) = d.cli(&["ips", "release", &ip, "-a", "tcp"]);
    assert!(ok, "{err}");
    hangar_test_utils::wait_until(Duration::from_secs(10), "the listener to close", || {
        let addr = format!("{ip}:7000");
        async move {
            tokio::net::TcpStream::connect(addr)
                .await
                .is_err()
                .then_some(())
        }
    })
    .await;
}

/// A UDP echo server on `port` inside the network namespace pinned at
/// `netns` (a machine's), on a thread of its own.
fn udp_echo_in(netns: &std::path::Path, port: u16) {
    serve_in_netns(
        netns,
        move || std::net::UdpSocket::bind(("0.0.0.0", port)).unwrap(),
        |sock| {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
            }
        },
    );
}

/// On a thread of its own inside the network namespace pinned at `netns`:
/// `bind` (returns once it has), then `serve` what it bound.
fn serve_in_netns<S: 'static>(
    netns: &std::path::Path,
    bind: impl FnOnce() -> S + Send + 'static,
    serve: impl FnOnce(S) + Send + 'static,
) {
    let ns = std::fs::File::open(netns).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: setns on a namespace fd we opened; it changes only this
        // thread's network namespace.
        let joined = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(joined, 0);
        let bound = bind();
        tx.send(()).unwrap();
        serve(bound);
    });
    rx.recv().unwrap();
}

/// A TLS client that accepts the proxy's self-signed certificate.
fn insecure_tls() -> tokio_rustls::TlsConnector {
    #[derive(Debug)]
    struct AnyCert(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &rustls::pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &rustls::pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test]
async fn a_machine_at_its_limit_spills_to_a_second_one() {
    if !hangar_test_utils::host_tier(
        "a_machine_at_its_limit_spills_to_a_second_one",
        &["crun", "docker-registry"],
    ) {
        return;
    }
    let reg = Registry::start().await;
    let slow = "#!/bin/sh\nsleep 3\necho 'Content-Type: text/plain'\necho\ncat /www/index.html\n";
    let image = ImageBuilder::busybox()
        .layer(
            Layer::new()
                .dir("www", 0o755)
                .dir("www/cgi-bin", 0o755)
                .file("www/cgi-bin/slow", slow.as_bytes(), 0o755),
        )
        .build();
    reg.push("test/web", "v1", &image).await;
    let image = format!("{}/test/web:v1", reg.addr);
    let d = Daemon::with_registry(&reg.addr).await;
    let c = d.client();
    let http = http_client(&d);
    c.create_app("web").await.unwrap();
    let services = json!([{
        "internal_port": 8080, "autostart": true,
        "concurrency": {"type": "requests", "soft_limit": 1, "hard_limit": 1},
        "ports": [{"port": 80, "handlers": ["http"]}],
    }]);
    let a = web_machine(&c, "web", &image, services.clone()).await;
    let b = web_machine(&c, "web", &image, services).await;
    c.stop_machine("web", &b, None, None).await.unwrap();
    c.wait_machine("web", &b, &["stopped"], Duration::from_secs(30))
        .await
        .unwrap();

    // A slow request holds A at its limit; the next one starts B.
    let busy = {
        let (http, url) = (
            http.clone(),
            format!("http://{}/cgi-bin/slow", d.proxy_http),
        );
        tokio::spawn(async move {
            http.get(url)
                .header("host", "web.localhost")
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        })
    };
    // Once the slow request runs in A.
    hangar_test_utils::wait_until(
        Duration::from_secs(10),
        "the slow request to reach A",
        || {
            let c = c.clone();
            let a = a.clone();
            async move {
                let out = c
                    .exec(
                        "web",
                        &a,
                        &hangar_api_types::MachineExecRequest {
                            command: Some(vec!["ps".into(), "-o".into(), "args".into()]),
                            ..Default::default()
                        },
                    )
                    .await
                    .ok()?;
                out.stdout
                    .lines()
                    .any(|l| l.trim() == "sleep 3")
                    .then_some(())
            }
        },
    )
    .await;
    let second = get(&d, &http, "web", "/").await.text().await.unwrap();
    assert_eq!(second, format!("hello-from-{b}\n"));
    assert_eq!(busy.await.unwrap(), format!("hello-from-{a}\n"));
    assert_eq!(c.get_machine("web", &b).await.unwrap().state, "started");
}

/// An HTTP/1.1 keep-alive connection to the proxy.
async fn keep_alive(
    d: &Daemon,
) -> hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    let tcp = tokio::net::TcpStream::connect(&d.proxy_http).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

/// A request on `conn`: the status and the body.
async fn ask(
    conn: &mut hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
) -> (u16, String) {
    use http_body_util::BodyExt;
    conn.ready().await.unwrap();
    let req = hyper::Request::builder()
        .uri("/")
        .header("host", "web.localhost")
        .body(http_body_util::Empty::new())
        .unwrap();
    let resp = conn.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn connections_services_count_client_connections() {
    if !hangar_test_utils::host_tier(
        "connections_services_count_client_connections",
        &["crun", "docker-registry"],
    ) {
        return;
    }
    let reg = Registry::start().await;
    reg.push("test/web", "v1", &ImageBuilder::busybox().build())
        .await;
    let image = format!("{}/test/web:v1", reg.addr);
    let d = Daemon::with_registry(&reg.addr).await;
    let c = d.client();
    c.create_app("web").await.unwrap();
    // One connection per machine at most (Fly's default type).
    let services = json!([{
        "internal_port": 8080,
        "concurrency": {"type": "connections", "soft_limit": 1, "hard_limit": 1},
        "ports": [{"port": 80, "handlers": ["http"]}],
    }]);
    let a = web_machine(&c, "web", &image, services.clone()).await;
    let b = web_machine(&c, "web", &image, services).await;
    let hello = |id: &str| format!("hello-from-{id}\n");

    // An idle keep-alive connection holds its machine: the next connection
    // goes to the other one, although no request is in flight.
    let mut first = keep_alive(&d).await;
    let (status, one) = ask(&mut first).await;
    assert_eq!(status, 200);
    let mut second = keep_alive(&d).await;
    let (status, two) = ask(&mut second).await;
    assert_eq!(status, 200);
    let mut got = [one.clone(), two.clone()];
    got.sort();
    let mut want = [hello(&a), hello(&b)];
    want.sort();
    assert_eq!(got, want, "two connections, two machines");
    // Each connection stays with its machine.
    for _ in 0..3 {
        assert_eq!(ask(&mut first).await, (200, one.clone()));
        assert_eq!(ask(&mut second).await, (200, two.clone()));
    }
    // Both machines at their hard limit: a third connection is turned away.
    let mut third = keep_alive(&d).await;
    let (status, msg) = ask(&mut third).await;
    assert_eq!(status, 503, "{msg}");
    // The first connection goes: its machine takes the next one.
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut fourth = keep_alive(&d).await;
        let (status, body) = ask(&mut fourth).await;
        if status == 200 {
            assert_eq!(body, one);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A server for one upgraded connection, in the network namespace pinned at
/// `netns` (a machine's), on `port`: it answers the first upgrade request
/// with 101 and then echoes what it gets.
fn upgrade_echo_in(netns: &std::path::Path, port: u16) {
    let bind = move || std::net::TcpListener::bind(("0.0.0.0", port)).unwrap();
    serve_in_netns(netns, bind, |l| {
        use std::io::{Read, Write};
        // The proxy probes the port first (connect, close): skip those.
        let mut s = loop {
            let (mut s, _) = l.accept().unwrap();
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap_or(0) == 1 {
                head.push(b[0]);
            }
            if String::from_utf8_lossy(&head)
                .to_lowercase()
                .contains("upgrade: echo")
            {
                break s;
            }
        };
        s.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n",
        )
        .unwrap();
        let mut buf = [0u8; 1024];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 || s.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
}

#[tokio::test]
async fn upgrades_and_http2_pass_through() {
    if !hangar_test_utils::host_tier(
        "upgrades_and_http2_pass_through",
        &["crun", "docker-registry"],
    ) {
        return;
    }
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let reg = Registry::start().await;
    reg.push("test/web", "v1", &ImageBuilder::busybox().build())
        .await;
    let image = format!("{}/test/web:v1", reg.addr);
    let d = Daemon::with_registry(&reg.addr).await;
    let c = d.client();
    c.create_app("web").await.unwrap();
    let services = json!([
        {"internal_port": 8080, "ports": [{"port": 80, "handlers": ["http"]}, {"port": 443, "handlers": ["tls", "http"]}]},
    ]);
    web_machine(&c, "web", &image, services).await;

    // HTTP/2 with prior knowledge (h2c) on the plain listener.
    let tcp = tokio::net::TcpStream::connect(&d.proxy_http).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .uri("http://web.localhost/")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    use http_body_util::BodyExt;
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(body.starts_with(b"hello-from-"), "{body:?}");

    // An upgraded connection (as WebSockets do) stays open both ways.
    let upgrade_app = "up";
    c.create_app(upgrade_app).await.unwrap();
    let up = web_machine(
        &c,
        upgrade_app,
        &image,
        json!([{"internal_port": 9000, "ports": [{"port": 80, "handlers": ["http"]}]}]),
    )
    .await;
    upgrade_echo_in(&d.machine_dir(&up).join("netns"), 9000);
    let mut s = tokio::net::TcpStream::connect(&d.proxy_http).await.unwrap();
    s.write_all(
        b"GET /chat HTTP/1.1\r\nHost: up.localhost\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).await.unwrap(), 1, "{head:?}");
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    for msg in ["first", "second"] {
        s.write_all(msg.as_bytes()).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(got, msg.as_bytes());
    }
}

#[tokio::test]
async fn a_service_made_with_the_cli_port_flags_serves_through_the_proxy() {
    if !hangar_test_utils::host_tier(
        "a_service_made_with_the_cli_port_flags_serves_through_the_proxy",
        &["crun", "docker-registry"],
    ) {
        return;
    }
    let reg = Registry::start().await;
    let image = ImageBuilder::busybox()
        .layer(
            Layer::new()
                .dir("www", 0o755)
                .file("www/index.html", b"made by the cli\n", 0o644),
        )
        .build();
    reg.push("test/web", "v1", &image).await;
    let image = format!("{}/test/web:v1", reg.addr);
    let d = Daemon::with_registry(&reg.addr).await;
    let http = http_client(&d);
    let (ok, out, err) = d.cli(&[
        "machine",
        "run",
        &image,
        "-a",
        "web",
        "--port",
        "80:8080/tcp:http",
        "--port",
        "443:8080/tcp:http:tls",
        "--autostop=suspend",
        "--autostart",
        "--",
        "httpd",
        "-f",
        "-p",
        "8080",
        "-h",
        "/www",
    ]);
    assert!(ok, "{out}{err}");
    let c = d.client();
    let m = &c.list_machines("web", &Default::default()).await.unwrap()[0];
    let services = &m.config.as_ref().unwrap().extra["services"];
    assert_eq!(services[0]["autostop"], "suspend");
    assert_eq!(services[1]["ports"][0]["handlers"], json!(["http", "tls"]));
    let r = get(&d, &http, "web", "/").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "made by the cli\n");
    // Without services the proxy flags are refused, as Fly says.
    let (ok, _, err) = d.cli(&[
        "machine",
        "run",
        &image,
        "-a",
        "web",
        "--autostop",
        "--",
        "true",
    ]);
    assert!(!ok);
    assert!(err.contains("--port"), "{err}");
}
