//! Test harness shared by Hangar's integration and end-to-end tests.
//!
//! Everything here is real: [`registry::Registry`] runs Debian's
//! `docker-registry` on a free loopback port; [`image`] builds OCI images
//! from the host's static busybox (no download) and pushes them with the
//! distribution API, or writes them as OCI layouts and Docker archives for
//! import; [`daemon::Daemon`] runs a real `hangard` on a free port. Missing
//! prerequisites are reported with the command that installs
//! them, and fail the test: a green run never means "skipped".

pub mod daemon;
pub mod image;
pub mod registry;

use std::time::{Duration, Instant};

/// Polls `check` every 20 ms until it returns `Some`, or panics with `what`
/// after `timeout`.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Panics with an install hint unless `program` is on PATH.
pub fn require_program(program: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{program} is required for this test: apt-get install -y {package} (the README's test command installs it)"
    );
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}
