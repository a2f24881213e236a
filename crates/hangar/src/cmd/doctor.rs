//! `hangar doctor`: checks this host for what `hangard` needs (root, an
//! OCI runtime, cgroups, overlayfs, nftables and iproute2, TUN, free disk
//! in the data dir, a synchronised clock, the API and proxy ports; gVisor
//! and microVMs, which are optional) and says what to fix. Problems make it exit 1; warnings do not.
//!
//! The checks read the host through [`Host`], so each rule is tested
//! against a made-up host as well as run on the real one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Args;

/// `hangar doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// hangard's data dir (its `--data-dir`).
    #[arg(long, env = "HANGAR_DATA_DIR", default_value = hangar_client::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// hangard's proxy listeners to check (its `--proxy-http` and
    /// `--proxy-https`).
    #[arg(long, value_delimiter = ',', default_value = "0.0.0.0:80,0.0.0.0:443")]
    proxy: Vec<SocketAddr>,
}

/// What a check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Finding {
    /// Fine, with what was seen.
    Ok(String),
    /// Works, but worth a look: what, and what to do.
    Warn(String, String),
    /// hangard cannot work so: what, and how to fix it.
    Fail(String, String),
}

/// What the checks read of the host.
pub(crate) trait Host {
    /// The effective user id.
    fn uid(&self) -> u32;
    /// A file's contents, if readable.
    fn read(&self, path: &Path) -> Option<String>;
    /// Whether `path` exists.
    fn exists(&self, path: &Path) -> bool;
    /// The first line `program args...` printed, if it ran and succeeded.
    fn run(&self, program: &str, args: &[&str]) -> Option<String>;
    /// Free bytes on the filesystem holding `path` (or its nearest
    /// existing ancestor).
    fn free_bytes(&self, path: &Path) -> Option<u64>;
    /// Whether the kernel's clock is synchronised (NTP), if it can say.
    fn clock_synced(&self) -> Option<bool>;
    /// Whether something already listens on `addr` (TCP).
    fn port_taken(&self, addr: SocketAddr) -> bool;
}

/// The real host.
struct Real;

impl Host for Real {
    fn uid(&self) -> u32 {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() }
    }

    fn read(&self, path: &Path) -> Option<String> {
        std::fs::read_to_string(path).ok()
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn run(&self, program: &str, args: &[&str]) -> Option<String> {
        let out = std::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        Some(text.lines().next().unwrap_or_default().trim().to_owned())
    }

    fn free_bytes(&self, path: &Path) -> Option<u64> {
        let mut p = path.to_path_buf();
        while !p.exists() {
            p = p.parent()?.to_path_buf();
        }
        let st = nix::sys::statvfs::statvfs(&p).ok()?;
        Some(st.blocks_available() as u64 * st.fragment_size() as u64)
    }

    fn clock_synced(&self) -> Option<bool> {
        // SAFETY: a zeroed timex with modes 0 only reads the clock's state.
        let mut tx: libc::timex = unsafe { std::mem::zeroed() };
        // SAFETY: tx is a valid, writable timex.
        let state = unsafe { libc::adjtimex(&mut tx) };
        if state < 0 {
            return None;
        }
        Some(state != libc::TIME_ERROR && tx.status & libc::STA_UNSYNC == 0)
    }

    fn port_taken(&self, addr: SocketAddr) -> bool {
        matches!(
            std::net::TcpListener::bind(addr),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse
        )
    }
}

fn ok(s: impl Into<String>) -> Finding {
    Finding::Ok(s.into())
}

fn warn(what: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding::Warn(what.into(), fix.into())
}

fn fail(what: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding::Fail(what.into(), fix.into())
}

/// Every check, in the order they are shown.
pub(crate) fn checks(
    h: &dyn Host,
    data_dir: &Path,
    api: Option<SocketAddr>,
    api_up: bool,
    proxy: &[SocketAddr],
) -> Vec<(&'static str, Finding)> {
    let mut out = vec![
        ("root", root(h)),
        ("OCI runtime", runtime(h)),
        ("cgroups", cgroups(h)),
        ("overlayfs", overlay(h)),
        ("nftables", tool(h, "nft", &["--version"], "nftables")),
        ("iproute2", tool(h, "ip", &["-V"], "iproute2")),
        ("TUN", tun(h)),
        ("disk", disk(h, data_dir)),
        ("clock", clock(h)),
        ("gVisor", gvisor(h)),
        ("microVMs", microvms(h, data_dir)),
    ];
    if let Some(api) = api {
        out.push(("API port", api_port(h, api, api_up)));
    }
    for p in proxy {
        out.push(("proxy port", proxy_port(h, *p, api_up)));
    }
    out
}

fn root(h: &dyn Host) -> Finding {
    if h.uid() == 0 {
        ok("running as root")
    } else {
        fail(
            "not root: hangard needs root for containers, mounts, cgroups and networks",
            "run hangard (and this check) as root, e.g. with sudo",
        )
    }
}

fn runtime(h: &dyn Host) -> Finding {
    let found: Vec<String> = ["crun", "runc"]
        .iter()
        .filter_map(|r| h.run(r, &["--version"]))
        .collect();
    if found.is_empty() {
        fail(
            "no OCI runtime: neither crun nor runc runs",
            "apt-get install -y crun (or runc, with hangard --runtime runc)",
        )
    } else {
        ok(found.join("; "))
    }
}

fn cgroups(h: &dyn Host) -> Finding {
    let root = Path::new("/sys/fs/cgroup");
    if let Some(controllers) = h.read(&root.join("cgroup.controllers")) {
        let have: Vec<&str> = controllers.split_whitespace().collect();
        let missing: Vec<&str> = ["cpu", "memory", "pids"]
            .into_iter()
            .filter(|c| !have.contains(c))
            .collect();
        return if missing.is_empty() {
            ok(format!("cgroup v2 ({})", have.join(" ")))
        } else {
            fail(
                format!("cgroup v2 without the {} controller(s)", missing.join(", ")),
                "enable them in the root cgroup (echo +memory > /sys/fs/cgroup/cgroup.subtree_control) or boot with them on",
            )
        };
    }
    let missing: Vec<&str> = ["memory", "cpu", "cpuacct", "pids", "freezer"]
        .into_iter()
        .filter(|c| !h.exists(&root.join(c)))
        .collect();
    if h.exists(&root.join("memory")) && missing.is_empty() {
        ok("cgroup v1 (memory, cpu, cpuacct, pids, freezer)")
    } else if !h.exists(root) {
        fail(
            "no cgroup filesystem at /sys/fs/cgroup",
            "mount cgroup2 on /sys/fs/cgroup (mount -t cgroup2 none /sys/fs/cgroup)",
        )
    } else {
        fail(
            format!("cgroup v1 without the {} controller(s)", missing.join(", ")),
            "mount each missing controller under /sys/fs/cgroup, or boot with cgroup v2 (systemd.unified_cgroup_hierarchy=1)",
        )
    }
}

fn overlay(h: &dyn Host) -> Finding {
    let fs = h.read(Path::new("/proc/filesystems")).unwrap_or_default();
    if fs
        .lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"))
    {
        ok("overlay filesystem available")
    } else {
        fail(
            "the kernel has no overlay filesystem loaded: machines' root filesystems need it",
            "modprobe overlay (and add overlay to /etc/modules)",
        )
    }
}

fn tool(h: &dyn Host, program: &str, args: &[&str], package: &str) -> Finding {
    match h.run(program, args) {
        Some(v) => ok(v),
        None => fail(
            format!("{program} does not run"),
            format!("apt-get install -y {package}"),
        ),
    }
}

/// gVisor is optional: machines that ask for `runsc` need it.
fn gvisor(h: &dyn Host) -> Finding {
    match h.run("runsc", &["--version"]) {
        Some(v) => ok(v),
        None => warn(
            "no runsc: machines cannot ask for gVisor (hangar_runtime runsc)",
            "apt-get install -y runsc (only for gVisor machines)",
        ),
    }
}

/// MicroVMs are optional: machines that ask for `microvm` need qemu, a
/// static busybox and a guest kernel in the data dir; without a KVM that
/// runs stock kernels they boot under TCG emulation.
fn microvms(h: &dyn Host, data_dir: &Path) -> Finding {
    let kernel_dir = data_dir.join("vm-kernel");
    let mut missing = Vec::new();
    if h.run("qemu-system-x86_64", &["--version"]).is_none() {
        missing.push("qemu-system-x86_64");
    }
    if h.run("qemu-img", &["--version"]).is_none() {
        missing.push("qemu-img");
    }
    if !h.exists(Path::new("/bin/busybox")) {
        missing.push("busybox-static");
    }
    if !h.exists(&kernel_dir.join("vmlinuz")) {
        missing.push("a guest kernel");
    }
    if !missing.is_empty() {
        return warn(
            format!(
                "machines cannot ask for microVMs (hangar_runtime microvm): missing {}",
                missing.join(", ")
            ),
            format!(
                "apt-get install -y qemu-system-x86 qemu-utils busybox-static (bookworm: from bookworm-backports, see docs/isolation.md), then scripts/vm-kernel.sh {}",
                kernel_dir.display()
            ),
        );
    }
    if !h.exists(Path::new("/dev/kvm")) {
        ok("qemu and a guest kernel; no /dev/kvm: VMs run under TCG emulation (slow)")
    } else if h.exists(Path::new("/sys/module/kvm_pvm")) {
        ok("qemu and a guest kernel; /dev/kvm is PVM: VMs run under TCG emulation (slow)")
    } else {
        ok("qemu and a guest kernel, with KVM")
    }
}

fn tun(h: &dyn Host) -> Finding {
    if h.exists(Path::new("/dev/net/tun")) {
        ok("/dev/net/tun present")
    } else {
        warn(
            "no /dev/net/tun: a cluster's mesh (wireguard-go) cannot start without it",
            "modprobe tun (single hosts do not need it)",
        )
    }
}

const GIB: u64 = 1 << 30;

fn disk(h: &dyn Host, data_dir: &Path) -> Finding {
    let shown = data_dir.display();
    match h.free_bytes(data_dir) {
        None => warn(
            format!("cannot tell the free space for {shown}"),
            "check that the data dir's filesystem is mounted",
        ),
        Some(b) if b < GIB / 4 => fail(
            format!("{:.1} GiB free for {shown}", b as f64 / GIB as f64),
            "free space or move --data-dir: images, volumes and logs live there",
        ),
        Some(b) if b < 2 * GIB => warn(
            format!("{:.1} GiB free for {shown}", b as f64 / GIB as f64),
            "images and volumes need room: free some, or move --data-dir",
        ),
        Some(b) => ok(format!("{:.1} GiB free for {shown}", b as f64 / GIB as f64)),
    }
}

fn clock(h: &dyn Host) -> Finding {
    match h.clock_synced() {
        Some(true) => ok("synchronised"),
        Some(false) => warn(
            "the clock is not synchronised: certificates, tokens' expiry and a cluster's heartbeats go by it",
            "run an NTP client (apt-get install -y systemd-timesyncd, or chrony)",
        ),
        None => warn(
            "cannot tell whether the clock is synchronised",
            "run an NTP client",
        ),
    }
}

fn api_port(h: &dyn Host, api: SocketAddr, api_up: bool) -> Finding {
    if api_up {
        ok(format!("hangard answers on {api}"))
    } else if h.port_taken(api) {
        fail(
            format!("{api} is taken by another program, and it is not hangard"),
            "stop it, or give hangard another --listen",
        )
    } else {
        warn(
            format!("hangard is not running on {api}"),
            "start it (./scripts/demo.sh, or hangard --listen ...)",
        )
    }
}

fn proxy_port(h: &dyn Host, addr: SocketAddr, api_up: bool) -> Finding {
    if !h.port_taken(addr) {
        ok(format!("{addr} free"))
    } else if api_up {
        ok(format!(
            "{addr} in use (by hangard's proxy, if it runs with it)"
        ))
    } else {
        fail(
            format!("{addr} is taken by another program"),
            "stop it, or give hangard's proxy another address (--proxy-http / --proxy-https, or off)",
        )
    }
}

/// Runs `hangar doctor` against `api_url`; `token` when there is one.
pub async fn run(
    args: &DoctorArgs,
    api_url: &str,
    token: Option<String>,
    out: &crate::output::Output,
) -> anyhow::Result<()> {
    let api: Option<SocketAddr> = api_url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .ok();
    let api_up = match token {
        Some(t) => hangar_client::Client::new(api_url, t)
            .list_apps()
            .await
            .is_ok(),
        None => false,
    };
    let found = checks(&Real, &args.data_dir, api, api_up, &args.proxy);
    let problems = found
        .iter()
        .filter(|(_, f)| matches!(f, Finding::Fail(..)))
        .count();
    if out.json {
        let rows: Vec<serde_json::Value> = found
            .iter()
            .map(|(name, f)| match f {
                Finding::Ok(s) => serde_json::json!({"check": name, "status": "ok", "detail": s}),
                Finding::Warn(s, fix) => {
                    serde_json::json!({"check": name, "status": "warning", "detail": s, "fix": fix})
                }
                Finding::Fail(s, fix) => {
                    serde_json::json!({"check": name, "status": "problem", "detail": s, "fix": fix})
                }
            })
            .collect();
        out.print_json(&rows)?;
    } else {
        println!("Checking this host for hangard");
        for (name, f) in &found {
            match f {
                Finding::Ok(s) => println!(" ✓ {name}: {s}"),
                Finding::Warn(s, fix) => println!(" ! {name}: {s}\n     → {fix}"),
                Finding::Fail(s, fix) => println!(" ✗ {name}: {s}\n     → {fix}"),
            }
        }
    }
    if problems > 0 {
        anyhow::bail!(
            "{problems} problem{} found",
            if problems == 1 { "" } else { "s" }
        );
    }
    if !out.json {
        println!("No problems found");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    #[derive(Default)]
    struct Fake {
        uid: u32,
        files: BTreeMap<PathBuf, String>,
        programs: BTreeMap<String, String>,
        free: Option<u64>,
        synced: Option<bool>,
        taken: BTreeSet<SocketAddr>,
    }

    impl Host for Fake {
        fn uid(&self) -> u32 {
            self.uid
        }
        fn read(&self, path: &Path) -> Option<String> {
            self.files.get(path).cloned()
        }
        fn exists(&self, path: &Path) -> bool {
            self.files.keys().any(|p| p.starts_with(path))
        }
        fn run(&self, program: &str, _args: &[&str]) -> Option<String> {
            self.programs.get(program).cloned()
        }
        fn free_bytes(&self, _path: &Path) -> Option<u64> {
            self.free
        }
        fn clock_synced(&self) -> Option<bool> {
            self.synced
        }
        fn port_taken(&self, addr: SocketAddr) -> bool {
            self.taken.contains(&addr)
        }
    }

    fn good() -> Fake {
        let mut f = Fake {
            free: Some(20 * GIB),
            synced: Some(true),
            ..Fake::default()
        };
        for (p, c) in [
            (
                "/sys/fs/cgroup/cgroup.controllers",
                "cpuset cpu io memory pids",
            ),
            ("/proc/filesystems", "nodev\tproc\nnodev\toverlay\n"),
            ("/dev/net/tun", ""),
        ] {
            f.files.insert(PathBuf::from(p), c.into());
        }
        for (p, v) in [
            ("crun", "crun version 1.8.1"),
            ("nft", "nftables v1.0.6"),
            ("ip", "ip utility, iproute2-6.1.0"),
        ] {
            f.programs.insert(p.into(), v.into());
        }
        f
    }

    fn find(h: &Fake, api_up: bool) -> BTreeMap<&'static str, Finding> {
        let api: SocketAddr = "127.0.0.1:4280".parse().unwrap();
        let proxy: SocketAddr = "0.0.0.0:80".parse().unwrap();
        checks(h, Path::new("/var/lib/hangar"), Some(api), api_up, &[proxy])
            .into_iter()
            .collect()
    }

    fn fails(h: &Fake) -> Vec<&'static str> {
        find(h, false)
            .into_iter()
            .filter(|(_, f)| matches!(f, Finding::Fail(..)))
            .map(|(n, _)| n)
            .collect()
    }

    #[test]
    fn a_ready_host_has_no_problems_and_each_lack_is_named() {
        let h = good();
        assert!(fails(&h).is_empty(), "{:?}", find(&h, false));
        assert!(matches!(find(&h, false)["API port"], Finding::Warn(..)));
        assert!(matches!(find(&h, true)["API port"], Finding::Ok(..)));

        let mut h = good();
        h.uid = 1000;
        h.programs.remove("crun");
        h.programs.remove("nft");
        assert_eq!(fails(&h), vec!["OCI runtime", "nftables", "root"]);
        h.programs
            .insert("runc".into(), "runc version 1.1.5".into());
        assert_eq!(fails(&h), vec!["nftables", "root"]);

        // cgroup v2 without memory; v1 without freezer; none at all.
        let mut h = good();
        h.files.insert(
            PathBuf::from("/sys/fs/cgroup/cgroup.controllers"),
            "cpu pids".into(),
        );
        match &find(&h, false)["cgroups"] {
            Finding::Fail(what, _) => assert!(what.contains("memory"), "{what}"),
            f => panic!("{f:?}"),
        }
        h.files
            .remove(Path::new("/sys/fs/cgroup/cgroup.controllers"));
        for c in ["memory", "cpu", "cpuacct", "pids"] {
            h.files.insert(
                PathBuf::from(format!("/sys/fs/cgroup/{c}/tasks")),
                String::new(),
            );
        }
        match &find(&h, false)["cgroups"] {
            Finding::Fail(what, _) => assert!(what.contains("freezer"), "{what}"),
            f => panic!("{f:?}"),
        }
        h.files
            .insert(PathBuf::from("/sys/fs/cgroup/freezer/tasks"), String::new());
        assert!(matches!(find(&h, false)["cgroups"], Finding::Ok(..)));

        // No overlay, little disk, no TUN, an unsynchronised clock, a
        // taken proxy port with no hangard.
        let mut h = good();
        h.files
            .insert(PathBuf::from("/proc/filesystems"), "nodev\tproc\n".into());
        h.free = Some(GIB / 8);
        h.files.remove(Path::new("/dev/net/tun"));
        h.synced = Some(false);
        h.taken.insert("0.0.0.0:80".parse().unwrap());
        assert_eq!(fails(&h), vec!["disk", "overlayfs", "proxy port"]);
        let all = find(&h, false);
        assert!(matches!(all["TUN"], Finding::Warn(..)));
        assert!(matches!(all["clock"], Finding::Warn(..)));
        // With hangard up the port is its proxy's.
        assert!(matches!(find(&h, true)["proxy port"], Finding::Ok(..)));
        h.free = Some(GIB);
        assert!(matches!(find(&h, false)["disk"], Finding::Warn(..)));
        // The API port held by something that is not hangard.
        h.taken.insert("127.0.0.1:4280".parse().unwrap());
        assert!(matches!(find(&h, false)["API port"], Finding::Fail(..)));
    }

    #[test]
    fn gvisor_and_microvms_are_optional_and_say_what_they_lack() {
        let mut h = good();
        let all = find(&h, false);
        assert!(matches!(all["gVisor"], Finding::Warn(..)));
        match &all["microVMs"] {
            Finding::Warn(what, fix) => {
                assert!(
                    what.contains("qemu-system-x86_64") && what.contains("a guest kernel"),
                    "{what}"
                );
                assert!(
                    fix.contains("scripts/vm-kernel.sh /var/lib/hangar/vm-kernel"),
                    "{fix}"
                );
            }
            f => panic!("{f:?}"),
        }
        h.programs
            .insert("runsc".into(), "runsc version release-20221212.0".into());
        h.programs.insert(
            "qemu-system-x86_64".into(),
            "QEMU emulator version 10.0.2".into(),
        );
        h.programs
            .insert("qemu-img".into(), "qemu-img version 10.0.2".into());
        h.files.insert(PathBuf::from("/bin/busybox"), String::new());
        match &find(&h, false)["microVMs"] {
            Finding::Warn(what, _) => assert!(what.ends_with("missing a guest kernel"), "{what}"),
            f => panic!("{f:?}"),
        }
        h.files.insert(
            PathBuf::from("/var/lib/hangar/vm-kernel/vmlinuz"),
            String::new(),
        );
        h.files.insert(PathBuf::from("/dev/kvm"), String::new());
        h.files
            .insert(PathBuf::from("/sys/module/kvm_pvm/refcnt"), String::new());
        let all = find(&h, false);
        assert!(matches!(&all["gVisor"], Finding::Ok(v) if v.contains("runsc")));
        assert!(matches!(&all["microVMs"], Finding::Ok(v) if v.contains("PVM")));
        h.files.remove(Path::new("/sys/module/kvm_pvm/refcnt"));
        assert!(matches!(&find(&h, false)["microVMs"], Finding::Ok(v) if v.ends_with("with KVM")));
        assert!(fails(&h).is_empty());
    }
}
