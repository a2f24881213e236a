//! Test harness shared by Hangar's integration and end-to-end tests.
//!
//! Everything here is real: [`registry::Registry`] runs Debian's
//! `docker-registry` on a free loopback port; [`image`] builds OCI images
//! from the host's static busybox (no download) and pushes them with the
//! distribution API, or writes them as OCI layouts and Docker archives for
//! import; [`daemon::Daemon`] runs a real `hangard` on a free port. Missing
//! prerequisites are reported with the command that installs
//! them, and fail the test: a green run never means "skipped".

pub mod build_storage;
pub mod daemon;
pub mod image;
#[cfg(feature = "inproc")]
pub mod inproc;
pub mod netns;
pub mod postgres;
pub mod registry;

use std::time::{Duration, Instant};

/// Polls `check` every 20 ms until it returns `Some`, or panics with `what`
/// after `timeout`.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    match poll_until(timeout, check).await {
        Some(v) => v,
        None => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// Polls `check` every 20 ms until it returns `Some`; `None` after `timeout`.
pub async fn poll_until<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `check` every 10 ms until it holds; panics after `timeout`.
pub fn wait_until_sync(timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether a test of the host tier (root, a container runtime, a registry,
/// network namespaces) can run here. A plain `cargo test` as a normal user
/// skips such tests with a message (they return early); with
/// `HANGAR_HOST_TESTS=1`, which `scripts/test.sh` sets, they must run, and
/// a missing prerequisite fails them instead of skipping.
pub fn host_tier(test: &str, programs: &[&str]) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let missing: Vec<&str> = programs.iter().copied().filter(|p| !on_path(p)).collect();
    let required = std::env::var("HANGAR_HOST_TESTS").is_ok_and(|v| v == "1");
    if root && missing.is_empty() {
        return true;
    }
    let why = if root {
        format!("needs {} (apt-get install -y ...)", missing.join(", "))
    } else {
        "needs root".to_owned()
    };
    assert!(
        !required,
        "{test}: {why}; HANGAR_HOST_TESTS=1 asks for every tier (./scripts/test.sh installs what they need and runs as root)"
    );
    eprintln!("skipped {test}: host tier, {why} (./scripts/test.sh runs it)");
    false
}

/// The guest kernel directory for microVM tests (`vmlinuz` and
/// `lib/modules`, as `scripts/vm-kernel.sh` makes it), named by
/// `HANGAR_TEST_VM_KERNEL_DIR`, when the host tier can boot microVMs here
/// (root, crun, qemu, a registry and that kernel). Otherwise `None`, after
/// the same skip-or-fail rule as [`host_tier`]: `scripts/test.sh` installs
/// qemu and fetches the kernel, and then it must be there.
pub fn vm_tier(test: &str) -> Option<std::path::PathBuf> {
    if !host_tier(
        test,
        &["crun", "docker-registry", "qemu-system-x86_64", "qemu-img"],
    ) {
        return None;
    }
    let dir = std::env::var_os("HANGAR_TEST_VM_KERNEL_DIR").map(std::path::PathBuf::from);
    if let Some(d) = dir.filter(|d| d.join("vmlinuz").is_file()) {
        return Some(d);
    }
    let required = std::env::var("HANGAR_HOST_TESTS").is_ok_and(|v| v == "1");
    let why = "needs a guest kernel: HANGAR_TEST_VM_KERNEL_DIR=DIR after scripts/vm-kernel.sh DIR";
    assert!(!required, "{test}: {why}");
    eprintln!("skipped {test}: microVM tier, {why} (./scripts/test.sh does it)");
    None
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// Panics with an install hint unless `program` is on PATH.
pub fn require_program(program: &str, package: &str) {
    assert!(
        on_path(program),
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
