//! The OCI runtime spec (`config.json`) of a machine's container.
//!
//! PID 1 is `hangar-init`, bind-mounted read-only at `/.hangar/init`; it runs
//! the machine's process as the image's user. The container gets its own pid,
//! mount, ipc, uts and cgroup namespaces (hostname = machine id) and joins the
//! machine's own network namespace (see netns.rs),
//! Docker's default capability set, the cgroup limits of its guest size, and
//! file descriptor limits equal to the host's hard limit (root here cannot
//! raise hard limits).

use std::path::{Path, PathBuf};

use hangar_runtime::{CpuKind, WorkloadSpec};
use serde_json::{Value, json};

use hangar_core::user::Identity;

/// Where the init binary appears inside the machine.
pub const INIT_IN_GUEST: &str = "/.hangar/init";

/// Docker's default capabilities.
const CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Inputs of [`config`] besides the spec.
pub struct BundlePaths<'a> {
    /// The static init binary on the host.
    pub init: &'a Path,
    /// Generated `/etc/hosts`.
    pub hosts: &'a Path,
    /// Generated `/etc/hostname`.
    pub hostname: &'a Path,
    /// Generated `/etc/resolv.conf` (none: the image's own).
    pub resolv: Option<&'a Path>,
    /// The container's cgroup path, e.g. `/hangar/<id>`.
    pub cgroup: &'a str,
    /// The machine's pinned network namespace.
    pub netns: &'a Path,
    /// The secrets environment file (NUL-separated `NAME=VALUE`), if any.
    pub secret_env: Option<&'a Path>,
    /// Secret files: `(host file, guest path)`.
    pub secret_files: &'a [(PathBuf, String)],
    /// Volumes: `(host data directory, guest path)`.
    pub volumes: &'a [(PathBuf, String)],
}

/// Where a machine's secrets wait on the secrets tmpfs.
#[derive(Debug, Default)]
pub struct SecretMounts {
    /// The environment file.
    pub env: Option<PathBuf>,
    /// `(host file, guest path)` of each secret file.
    pub files: Vec<(PathBuf, String)>,
}

/// Where the secrets environment file appears inside the machine (root
/// only, read by init before it starts the main process).
pub const SECRET_ENV_IN_GUEST: &str = "/.hangar/secrets.env";

/// The host's hard `RLIMIT_NOFILE`.
pub fn host_nofile_hard() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we pass.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0;
    if ok && r.rlim_max != libc::RLIM_INFINITY {
        r.rlim_max.min(1 << 20)
    } else {
        1 << 20
    }
}

/// Builds `config.json`.
pub fn config(spec: &WorkloadSpec, who: &Identity, paths: &BundlePaths<'_>, nofile: u64) -> Value {
    let mut args: Vec<String> = vec![INIT_IN_GUEST.into()];
    if who.uid != 0 || who.gid != 0 || !who.groups.is_empty() {
        args.extend([
            "--uid".into(),
            who.uid.to_string(),
            "--gid".into(),
            who.gid.to_string(),
        ]);
        if !who.groups.is_empty() {
            let g: Vec<String> = who.groups.iter().map(u32::to_string).collect();
            args.extend(["--groups".into(), g.join(",")]);
        }
    }
    if spec.tty {
        args.push("--tty".into());
    }
    if paths.secret_env.is_some() {
        args.extend(["--env-file".into(), SECRET_ENV_IN_GUEST.into()]);
    }
    args.push("--".into());
    args.extend(spec.process.argv.iter().cloned());
    let env: Vec<String> = spec
        .process
        .env
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();

    let period: u64 = 100_000;
    let cpus = u64::from(spec.resources.cpus.max(1));
    let shares = match spec.resources.cpu_kind {
        CpuKind::Performance => 1024 * cpus,
        CpuKind::Shared => 256 * cpus,
    };
    let memory = spec.resources.memory_mb.saturating_mul(1 << 20);

    let mut config = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": env,
            "cwd": spec.process.cwd,
            "capabilities": {
                "bounding": CAPS, "effective": CAPS, "permitted": CAPS,
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}],
            "noNewPrivileges": false,
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": spec.hostname,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
            {"destination": INIT_IN_GUEST, "type": "bind", "source": paths.init,
             "options": ["bind", "ro", "nosuid", "nodev"]},
            {"destination": "/etc/hosts", "type": "bind", "source": paths.hosts,
             "options": ["bind", "ro", "nosuid", "nodev", "noexec"]},
            {"destination": "/etc/hostname", "type": "bind", "source": paths.hostname,
             "options": ["bind", "ro", "nosuid", "nodev", "noexec"]},
        ],
        "linux": {
            "namespaces": [
                {"type": "pid"}, {"type": "network", "path": paths.netns}, {"type": "ipc"},
                {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"},
            ],
            "cgroupsPath": paths.cgroup,
            // Nothing the host mounts or unmounts later reaches the
            // container: the host lets go of its root mount once the
            // container holds it (see `OciRuntime::release_rootfs`).
            "rootfsPropagation": "rprivate",
            "resources": {
                "devices": [{"allow": false, "access": "rwm"}],
                "memory": {"limit": memory},
                "cpu": {"shares": shares, "quota": cpus * period, "period": period},
                "pids": {"limit": spec.resources.pids_max.max(1)},
            },
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
            ],
        },
    });
    if let Some(mounts) = config["mounts"].as_array_mut() {
        if let Some(resolv) = paths.resolv {
            mounts.push(
                json!({"destination": "/etc/resolv.conf", "type": "bind", "source": resolv,
                "options": ["bind", "ro", "nosuid", "nodev", "noexec"]}),
            );
        }
        if let Some(env) = paths.secret_env {
            mounts.push(
                json!({"destination": SECRET_ENV_IN_GUEST, "type": "bind", "source": env,
                "options": ["bind", "ro", "nosuid", "nodev", "noexec"]}),
            );
        }
        for (host, guest) in paths.volumes {
            mounts.push(json!({"destination": guest, "type": "bind", "source": host,
                "options": ["rbind", "nosuid", "nodev"]}));
        }
        for (host, guest) in paths.secret_files {
            mounts.push(json!({"destination": guest, "type": "bind", "source": host,
                "options": ["bind", "nosuid", "nodev"]}));
        }
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangar_core::process::ProcessSpec;
    use hangar_runtime::Resources;

    fn spec() -> WorkloadSpec {
        WorkloadSpec {
            id: "0123456789abcd".parse().unwrap(),
            hostname: "0123456789abcd".into(),
            process: ProcessSpec {
                argv: vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
                env: vec![("PATH".into(), "/bin".into())],
                cwd: "/app".into(),
                user: "bob".into(),
            },
            layers: vec![],
            resources: Resources {
                cpus: 2,
                memory_mb: 512,
                cpu_kind: CpuKind::Shared,
                pids_max: 2048,
            },
            files: vec![],
            tty: false,
            secret_env: Default::default(),
            volumes: vec![],
            network: None,
            isolation: None,
        }
    }

    #[test]
    fn builds_the_spec() {
        let p = Path::new("/x");
        let paths = BundlePaths {
            init: p,
            hosts: p,
            hostname: p,
            resolv: None,
            cgroup: "/hangar/0123456789abcd",
            netns: p,
            secret_env: None,
            secret_files: &[],
            volumes: &[],
        };
        let who = Identity {
            uid: 1000,
            gid: 1000,
            groups: vec![50],
        };
        let c = config(&spec(), &who, &paths, 1024);
        assert_eq!(
            c["process"]["args"],
            json!([
                "/.hangar/init",
                "--uid",
                "1000",
                "--gid",
                "1000",
                "--groups",
                "50",
                "--",
                "/bin/sh",
                "-c",
                "echo hi"
            ])
        );
        assert_eq!(c["process"]["env"], json!(["PATH=/bin"]));
        // Secrets: an env file for init and file mounts, never in the config.
        let files = [(PathBuf::from("/run/s/file-0"), "/etc/key".to_string())];
        let with_secrets = BundlePaths {
            secret_env: Some(Path::new("/run/s/env")),
            secret_files: &files,
            ..paths
        };
        let mut s = spec();
        s.secret_env = hangar_runtime::SecretEnv(vec![("TOKEN".into(), "hunter2".into())]);
        let cs = config(&s, &who, &with_secrets, 1024);
        assert!(!cs.to_string().contains("hunter2"));
        let args = cs["process"]["args"].to_string();
        assert!(
            args.contains(r#""--env-file","/.hangar/secrets.env""#),
            "{args}"
        );
        let mounts = cs["mounts"].to_string();
        assert!(mounts.contains(r#""destination":"/etc/key""#), "{mounts}");
        assert!(mounts.contains(r#""source":"/run/s/env""#), "{mounts}");
        assert!(format!("{s:?}").contains("TOKEN") && !format!("{s:?}").contains("hunter2"));
        assert_eq!(c["process"]["cwd"], "/app");
        assert_eq!(c["linux"]["resources"]["memory"]["limit"], 512u64 << 20);
        assert_eq!(c["linux"]["resources"]["cpu"]["quota"], 200_000);
        assert_eq!(c["linux"]["resources"]["pids"]["limit"], 2048);
        assert_eq!(c["linux"]["cgroupsPath"], "/hangar/0123456789abcd");
        let root = Identity {
            uid: 0,
            gid: 0,
            groups: vec![],
        };
        let c = config(&spec(), &root, &paths, 1024);
        assert_eq!(c["process"]["args"][1], "--");
    }
}
