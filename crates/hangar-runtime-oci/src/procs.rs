//! What runs inside a machine, read from its cgroup and `/proc`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hangar_runtime::ProcessInfo;

/// Clock ticks per second (`_SC_CLK_TCK`).
fn ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// Boot time, Unix milliseconds.
fn boot_ms() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1000
}

/// Host pids listed in a cgroup's `cgroup.procs`.
pub fn cgroup_pids(cgroup_dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(cgroup_dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Describes the processes with these host pids (pids as the machine sees
/// them).
pub fn describe(pids: &[i32]) -> Vec<ProcessInfo> {
    let hz = ticks();
    let boot = boot_ms();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let sockets = listening_sockets(pids.first().copied());
    let mut out = Vec::new();
    for &pid in pids {
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        let Ok(stat) = std::fs::read_to_string(proc_dir.join("stat")) else {
            continue;
        };
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        // Fields after ")": state(0) ... utime(11) stime(12) ... starttime(19) ... rss(21)
        let cpu_ms = (num(11) + num(12)) * 1000 / hz;
        let start_ms = boot + num(19) * 1000 / hz;
        let rss = num(21) * 4096;
        let cmdline = std::fs::read(proc_dir.join("cmdline")).unwrap_or_default();
        let command = cmdline
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        let directory = std::fs::read_link(proc_dir.join("cwd"))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let ns_pid = std::fs::read_to_string(proc_dir.join("status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("NSpid:"))
                    .and_then(|v| v.split_whitespace().last().and_then(|p| p.parse().ok()))
            })
            .unwrap_or(pid);
        let listen = socket_inodes(pid)
            .into_iter()
            .filter_map(|inode| sockets.get(&inode).cloned())
            .collect();
        out.push(ProcessInfo {
            pid: ns_pid,
            start_ms,
            run_ms: now.saturating_sub(start_ms),
            command,
            directory,
            cpu_ms,
            rss,
            listen,
        });
    }
    out.sort_by_key(|p| p.pid);
    out
}

/// Inodes of the sockets a process holds.
/// The processes `runsc ps` lists (`UID PID PPID C TTY STIME TIME CMD`):
/// pids inside the sandbox, the command's name and its CPU time (gVisor
/// tells neither memory nor sockets this way).
pub fn parse_runsc_ps(table: &str) -> Vec<ProcessInfo> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            Some(ProcessInfo {
                pid: f[1].parse().ok()?,
                start_ms: 0,
                run_ms: 0,
                command: f[7..].join(" "),
                directory: String::new(),
                cpu_ms: hangar_core::GoDuration::parse(f[6])
                    .map(|d| d.get().as_millis() as u64)
                    .unwrap_or(0),
                rss: 0,
                listen: Vec::new(),
            })
        })
        .collect()
}

fn socket_inodes(pid: i32) -> Vec<u64> {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|t| {
            t.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// Listening sockets of the network namespace of `pid`: inode -> (proto,
/// address).
fn listening_sockets(pid: Option<i32>) -> HashMap<u64, (String, String)> {
    let mut out = HashMap::new();
    let Some(pid) = pid else {
        return out;
    };
    for (file, proto, listen_state) in [
        ("tcp", "tcp", "0A"),
        ("tcp6", "tcp", "0A"),
        ("udp", "udp", "07"),
        ("udp6", "udp", "07"),
    ] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != listen_state {
                continue;
            }
            if let (Some(addr), Ok(inode)) = (parse_addr(f[1]), f[9].parse::<u64>()) {
                out.insert(inode, (proto.to_owned(), addr));
            }
        }
    }
    out
}

/// `/proc/net` addresses: `0100007F:1F90` is 127.0.0.1:8080; IPv6 addresses
/// are four little-endian 32-bit words.
fn parse_addr(s: &str) -> Option<String> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    match ip.len() {
        8 => {
            let v = u32::from_str_radix(ip, 16).ok()?;
            Some(format!(
                "{}:{port}",
                std::net::Ipv4Addr::from(v.swap_bytes())
            ))
        }
        32 => {
            let mut bytes = [0u8; 16];
            for w in 0..4 {
                let word = u32::from_str_radix(&ip[w * 8..w * 8 + 8], 16).ok()?;
                bytes[w * 4..w * 4 + 4].copy_from_slice(&word.to_le_bytes());
            }
            Some(format!("[{}]:{port}", std::net::Ipv6Addr::from(bytes)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_runsc_ps() {
        let t = "UID       PID       PPID      C         TTY       STIME     TIME      CMD\n\
                 0         1         0         0         ?         09:03     1.5s      sleep\n\
                 0         4         1         0         pts/0     09:04     10ms      sh\n";
        let p = parse_runsc_ps(t);
        assert_eq!(p.len(), 2);
        assert_eq!(
            (p[0].pid, p[0].command.as_str(), p[0].cpu_ms),
            (1, "sleep", 1500)
        );
        assert_eq!(
            (p[1].pid, p[1].command.as_str(), p[1].cpu_ms),
            (4, "sh", 10)
        );
        assert!(parse_runsc_ps("").is_empty());
    }

    #[test]
    fn parses_proc_net_addresses() {
        assert_eq!(
            parse_addr("0100007F:1F90").as_deref(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(parse_addr("00000000:0050").as_deref(), Some("0.0.0.0:80"));
        assert_eq!(
            parse_addr("00000000000000000000000001000000:1F90").as_deref(),
            Some("[::1]:8080")
        );
        assert_eq!(parse_addr("nope"), None);
    }

    #[test]
    fn describes_this_process() {
        let me = std::process::id() as i32;
        let p = describe(&[me]);
        assert_eq!(p.len(), 1);
        assert!(p[0].rss > 0 && !p[0].command.is_empty());
    }
}
