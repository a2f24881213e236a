//! The proxies Hangar's is measured against, each configured as the
//! equivalent of what Hangar does and run in the foreground on a loopback
//! port: nginx (HTTP reverse proxy and `stream` relay), HAProxy (`http`
//! and `tcp` modes) and socat. And the CPU time a process (with its
//! children or its threads) has spent.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// CPU time (user + system, seconds) of the `/proc/<pid>/stat`-shaped
/// files given; with `reaped`, the children they waited for as well.
fn cpu_of(stats: impl IntoIterator<Item = PathBuf>, reaped: bool) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let fields = if reaped { 11..15 } else { 11..13 };
    stats
        .into_iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .filter_map(|s| {
            // Fields after the command (which may hold spaces), from 3 on.
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            let mut sum = 0.0;
            for i in fields.clone() {
                sum += f.get(i)?.parse::<f64>().ok()?;
            }
            Some(sum)
        })
        .sum::<f64>()
        / hz
}

/// The live children of `pid`.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat")).is_ok_and(|s| {
                s.rfind(')')
                    .and_then(|i| s[i + 2..].split_whitespace().nth(1))
                    .and_then(|x| x.parse::<u32>().ok())
                    == Some(pid)
            })
        })
        .collect()
}

/// CPU time of `pid`, its threads, its live children and the children it
/// has reaped (nginx's workers, socat's per-connection forks).
pub fn tree_cpu(pid: u32) -> f64 {
    let stats = children(pid)
        .into_iter()
        .chain([pid])
        .map(|p| PathBuf::from(format!("/proc/{p}/stat")));
    cpu_of(stats, true)
}

/// CPU time of `pid`'s threads whose name starts with `prefix`.
pub fn threads_cpu(pid: u32, prefix: &str) -> f64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|t| std::fs::read_to_string(t.join("comm")).is_ok_and(|c| c.starts_with(prefix)))
        .map(|t| t.join("stat"));
    cpu_of(tasks, false)
}

/// A peer proxy running in the foreground; ended with SIGTERM (so that
/// nginx's master ends its workers, which a SIGKILL would leave running)
/// when dropped.
pub struct Peer {
    child: std::process::Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Peer {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its CPU time so far, children included.
    pub fn cpu(&self) -> f64 {
        tree_cpu(self.pid())
    }

    fn spawn(cmd: &mut Command, port: u16, what: &str) -> anyhow::Result<Peer> {
        let errors = tempfile::tempfile()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(errors.try_clone()?)
            .spawn()
            .with_context(|| format!("starting {what} (apt-get install {what})"))?;
        let mut peer = Peer { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = peer.child.try_wait() {
                let mut said = String::new();
                let mut errors = errors;
                use std::io::{Read, Seek};
                errors.rewind()?;
                errors.read_to_string(&mut said)?;
                bail!("{what} exited ({status}): {said}");
            }
            if Instant::now() > deadline {
                bail!("{what} did not come up on port {port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(peer)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid, which we have not waited
        // for yet, so it cannot have been reused.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// nginx with `head` (modules) and `body` (its `http` or `stream` block).
fn nginx_with(dir: &Path, port: u16, head: &str, body: &str) -> anyhow::Result<Peer> {
    let conf = dir.join(format!("nginx-{port}.conf"));
    std::fs::write(
        &conf,
        format!(
            "{head}worker_processes auto;\n\
             daemon off;\n\
             pid {dir}/nginx-{port}.pid;\n\
             error_log {dir}/error-{port}.log;\n\
             events {{ worker_connections 4096; }}\n\
             {body}",
            dir = dir.display()
        ),
    )?;
    Peer::spawn(
        Command::new("nginx").args([
            "-c",
            &conf.display().to_string(),
            "-p",
            &dir.display().to_string(),
        ]),
        port,
        "nginx",
    )
}

/// nginx as the reverse proxy equivalent to Hangar's: one upstream, access
/// log off, a worker per CPU, kept-alive upstream connections, and the
/// headers Hangar adds (X-Forwarded-* and Fly-* on requests, Via and
/// Fly-Request-Id both ways).
pub fn nginx_http(dir: &Path, port: u16, upstream: &str) -> anyhow::Result<Peer> {
    let body = format!(
        "http {{\n\
           access_log off;\n\
           client_body_temp_path {dir}/body;\n\
           proxy_temp_path {dir}/proxy;\n\
           upstream machine {{ server {upstream}; keepalive 64; }}\n\
           server {{\n\
             listen 127.0.0.1:{port};\n\
             location / {{\n\
               proxy_pass http://machine;\n\
               proxy_http_version 1.1;\n\
               proxy_set_header Connection \"\";\n\
               proxy_set_header Host $host;\n\
               proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
               proxy_set_header X-Forwarded-Proto $scheme;\n\
               proxy_set_header X-Forwarded-Port $server_port;\n\
               proxy_set_header X-Forwarded-Ssl off;\n\
               proxy_set_header Fly-Client-IP $remote_addr;\n\
               proxy_set_header Fly-Forwarded-Proto $scheme;\n\
               proxy_set_header Fly-Forwarded-Port $server_port;\n\
               proxy_set_header Fly-Region local;\n\
               proxy_set_header Fly-Request-Id $request_id;\n\
               proxy_set_header Via \"1.1 nginx\";\n\
               add_header Fly-Request-Id $request_id;\n\
               add_header Via \"1.1 nginx\";\n\
             }}\n\
           }}\n\
         }}\n",
        dir = dir.display()
    );
    nginx_with(dir, port, "", &body)
}

/// nginx's `stream` module relaying TCP to `upstream`.
pub fn nginx_stream(dir: &Path, port: u16, upstream: &str) -> anyhow::Result<Peer> {
    let module = "/usr/lib/nginx/modules/ngx_stream_module.so";
    if !Path::new(module).exists() {
        bail!("no {module} (apt-get install libnginx-mod-stream)");
    }
    let body =
        format!("stream {{ server {{ listen 127.0.0.1:{port}; proxy_pass {upstream}; }} }}\n");
    nginx_with(dir, port, &format!("load_module {module};\n"), &body)
}

fn haproxy_with(dir: &Path, port: u16, body: &str) -> anyhow::Result<Peer> {
    let conf = dir.join(format!("haproxy-{port}.cfg"));
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::fs::write(
        &conf,
        format!(
            "global\n\
             \x20 nbthread {threads}\n\
             \x20 maxconn 4096\n\
             defaults\n\
             \x20 timeout connect 5s\n\
             \x20 timeout client 60s\n\
             \x20 timeout server 60s\n\
             {body}"
        ),
    )?;
    Peer::spawn(
        Command::new("haproxy").args(["-db", "-f", &conf.display().to_string()]),
        port,
        "haproxy",
    )
}

/// HAProxy as the reverse proxy equivalent to Hangar's: a thread per CPU,
/// no log, connections to the machine kept and reused, the same headers.
pub fn haproxy_http(dir: &Path, port: u16, upstream: &str) -> anyhow::Result<Peer> {
    let body = format!(
        "frontend f\n\
         \x20 mode http\n\
         \x20 bind 127.0.0.1:{port}\n\
         \x20 option http-keep-alive\n\
         \x20 option forwardfor\n\
         \x20 unique-id-format %[uuid()]\n\
         \x20 http-request set-header X-Forwarded-Proto http\n\
         \x20 http-request set-header X-Forwarded-Port %[dst_port]\n\
         \x20 http-request set-header X-Forwarded-Ssl off\n\
         \x20 http-request set-header Fly-Client-IP %[src]\n\
         \x20 http-request set-header Fly-Forwarded-Proto http\n\
         \x20 http-request set-header Fly-Forwarded-Port %[dst_port]\n\
         \x20 http-request set-header Fly-Region local\n\
         \x20 http-request set-header Fly-Request-Id %[unique-id]\n\
         \x20 http-request set-header Via \"1.1 haproxy\"\n\
         \x20 http-response set-header Fly-Request-Id %[unique-id]\n\
         \x20 http-response set-header Via \"1.1 haproxy\"\n\
         \x20 default_backend machine\n\
         backend machine\n\
         \x20 mode http\n\
         \x20 http-reuse always\n\
         \x20 server m {upstream}\n"
    );
    haproxy_with(dir, port, &body)
}

/// HAProxy relaying TCP to `upstream`, with splice where it helps
/// (`option splice-auto`).
pub fn haproxy_tcp(dir: &Path, port: u16, upstream: &str) -> anyhow::Result<Peer> {
    let body = format!(
        "frontend f\n\
         \x20 mode tcp\n\
         \x20 bind 127.0.0.1:{port}\n\
         \x20 option splice-auto\n\
         \x20 default_backend machine\n\
         backend machine\n\
         \x20 mode tcp\n\
         \x20 option splice-auto\n\
         \x20 server m {upstream}\n"
    );
    haproxy_with(dir, port, &body)
}

/// socat relaying TCP to `upstream`, a process per connection.
pub fn socat(port: u16, upstream: &str) -> anyhow::Result<Peer> {
    Peer::spawn(
        Command::new("socat").args([
            &format!("TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr,backlog=1024"),
            &format!("TCP:{upstream},nodelay"),
        ]),
        port,
        "socat",
    )
}
