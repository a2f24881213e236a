//! Hosts of their own on one machine: each "host" is a network namespace
//! with its own interfaces, routes and firewall, joined to the others by a
//! veth on a bridge the test makes (the hosts' LAN), plus a mount namespace
//! kept for it in which `/sys` is that network namespace's (what `hangard`
//! reads of its interfaces) and the cgroup hierarchies are the machine's.
//! Every `hangard` started for a host enters both, so a restarted one sees
//! the mounts of the one before, as on a real host.
//!
//! ```text
//!   root namespace: bridge hgtl<n> 172.29.<n>.1/24 (the tests' registry listens here)
//!     ├── veth ══ host 0: eth0 172.29.<n>.2/24, lo
//!     ├── veth ══ host 1: eth0 172.29.<n>.3/24, lo
//!     └── ...
//! ```
//!
//! Nothing leaves the machine: the LAN is a bridge without uplink, and the
//! namespaces have no route beyond it.

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Hosts on a LAN of their own; all of it removed on drop.
pub struct Lan {
    /// The LAN's bridge in the root namespace.
    pub bridge: String,
    /// The bridge's address (the root namespace on the LAN).
    pub gateway: String,
    /// The hosts.
    pub hosts: Vec<NsHost>,
    dir: tempfile::TempDir,
}

/// One host of a [`Lan`].
pub struct NsHost {
    /// Its network namespace (`ip netns` name).
    pub netns: String,
    /// Its address on the LAN.
    pub ip: String,
    /// The root namespace's end of its veth (down: the host is cut off).
    pub veth: String,
    /// The file its mount namespace is kept in.
    pub mnt: PathBuf,
}

fn sh(cmd: &str) -> std::process::Output {
    Command::new("sh")
        .args(["-c", cmd])
        .stdin(Stdio::null())
        .output()
        .expect("running sh")
}

fn must(cmd: &str) {
    let out = sh(cmd);
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lan {
    /// `n` hosts on a new LAN.
    pub fn new(n: usize) -> Lan {
        crate::require_program("nsenter", "util-linux");
        crate::require_program("unshare", "util-linux");
        let tag = std::process::id() % 200 + 1;
        let dir = tempfile::tempdir().expect("tempdir");
        // The files that keep mount namespaces must sit on a mount that is
        // not shared: a private bind mount of the test's own directory.
        let d = dir.path().display().to_string();
        must(&format!("mount --bind {d} {d} && mount --make-private {d}"));
        let bridge = format!("hgtl{tag}");
        let gateway = format!("172.29.{tag}.1");
        let _ = sh(&format!("ip link del {bridge} 2>/dev/null"));
        must(&format!(
            "ip link add {bridge} type bridge && ip addr add {gateway}/24 dev {bridge} && ip link set {bridge} up"
        ));
        let mut lan = Lan {
            bridge,
            gateway,
            hosts: Vec::new(),
            dir,
        };
        for i in 0..n {
            let netns = format!("hgt{tag}h{i}");
            let veth = format!("hgtv{tag}h{i}");
            let ip = format!("172.29.{tag}.{}", i + 2);
            let mnt = lan.dir.path().join(format!("mnt-{i}"));
            let cg = lan.dir.path().join(format!("cgroup-{i}"));
            let _ = sh(&format!(
                "ip netns del {netns} 2>/dev/null; ip link del {veth} 2>/dev/null"
            ));
            must(&format!(
                "ip netns add {netns} && ip link add {veth} type veth peer name eth0 netns {netns} \
                 && ip link set {veth} master {} up \
                 && ip -n {netns} addr add {ip}/24 dev eth0 && ip -n {netns} link set eth0 up \
                 && ip -n {netns} link set lo up",
                lan.bridge
            ));
            std::fs::write(&mnt, b"").expect("mount namespace file");
            std::fs::create_dir(&cg).expect("cgroup dir");
            // The host's mount namespace: its own /sys (of its network
            // namespace), the machine's cgroups under it again.
            must(&format!(
                "nsenter --net=/run/netns/{netns} unshare --mount={} --propagation private sh -c \
                 'mount --rbind /sys/fs/cgroup {cg} && mount -t sysfs sysfs /sys \
                  && mount --rbind {cg} /sys/fs/cgroup && umount -l {cg}'",
                mnt.display(),
                cg = cg.display()
            ));
            lan.hosts.push(NsHost {
                netns,
                ip,
                veth,
                mnt,
            });
        }
        lan
    }

    /// The command that runs a program as host `i`: in its network and
    /// mount namespaces.
    pub fn wrap(&self, i: usize) -> Vec<String> {
        let h = &self.hosts[i];
        vec![
            "nsenter".into(),
            format!("--mount={}", h.mnt.display()),
            format!("--net=/run/netns/{}", h.netns),
            "--".into(),
        ]
    }

    /// The LAN's network (`172.29.<n>.0/24`), for services that trust it.
    pub fn network(&self) -> String {
        let prefix = self.gateway.rsplit_once('.').map_or("", |(p, _)| p);
        format!("{prefix}.0/24")
    }

    /// Starts a `hangard` as host `i` with `args`, listening on its LAN
    /// address.
    pub async fn hangard(&self, i: usize, args: &[String]) -> crate::daemon::Daemon {
        crate::daemon::Daemon::start_wrapped(
            &crate::daemon::next_network_range(),
            args,
            &[],
            self.wrap(i),
            &self.hosts[i].ip,
        )
        .await
    }

    /// Runs `cmd` (sh) as host `i`; its stdout, or panics.
    pub fn run_in(&self, i: usize, cmd: &str) -> String {
        let h = &self.hosts[i];
        let out = sh(&format!(
            "nsenter --mount={} --net=/run/netns/{} -- sh -c '{}'",
            h.mnt.display(),
            h.netns,
            cmd.replace('\'', r"'\''")
        ));
        assert!(
            out.status.success(),
            "{cmd} on host {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Cuts host `i` off the LAN (`false`) or puts it back (`true`).
    pub fn link(&self, i: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        must(&format!("ip link set {} {state}", self.hosts[i].veth));
    }
}

impl Drop for Lan {
    /// Every process left in the hosts' namespaces (`wireguard-go`, a
    /// daemon a failed test left) is killed, then the namespaces, the
    /// veths and the bridge go.
    fn drop(&mut self) {
        for h in &self.hosts {
            let _ = sh(&format!(
                "for l in $(ip -n {n} -o link show | awk -F': ' '{{print $2}}' | grep '^hgm'); do ip -n {n} link del $l; done; \
                 for p in $(ip netns pids {n}); do kill -9 $p; done; \
                 umount {m}; ip netns del {n}; ip link del {v}",
                n = h.netns,
                m = h.mnt.display(),
                v = h.veth
            ));
        }
        let _ = sh(&format!("ip link del {}", self.bridge));
        let _ = sh(&format!("umount -l {}", self.dir.path().display()));
    }
}
