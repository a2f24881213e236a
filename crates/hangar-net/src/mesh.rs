//! The mesh between the hosts of a cluster: WireGuard, so 6PN traffic
//! between hosts is encrypted and authenticated.
//!
//! ```text
//!   host 1                                 host 2
//!   machine fdaa:I:N:1::1:2                machine fdaa:I:N:2::1:2
//!     │ bridge of network N                  ▲ bridge of network N
//!     ▼                                      │
//!   route fdaa:I::/32 ─► hgm<I><1> ══UDP══ hgm<I><2> (peer 1: fdaa:I:N:1::/64 ...)
//!                   (peer 2: fdaa:I:N:2::/64 for each network N)
//! ```
//!
//! Each host has one interface, `hgm<installation><host>`, with a key pair
//! of its own; every other host is a peer whose allowed addresses are its
//! /64 of each network (`fdaa:<inst>:<net>:<host>::/64`), so WireGuard's
//! cryptokey routing delivers a packet to the host its address names and
//! accepts from a peer only sources of that peer's machines. The host
//! routes the installation's /32 into the interface; its own blocks'
//! routes (/112 on the bridges) are more specific and stay local. The
//! firewall lets a network's bridges and the mesh exchange that network's
//! addresses only, so networks stay apart across hosts as on one.
//!
//! The interface is the kernel's WireGuard where the module exists, else
//! `wireguard-go` (a userspace implementation over TUN; Debian's package),
//! which keeps running when `hangard` stops, so machines keep talking
//! across hosts while it restarts. Both are configured by `wg`
//! (wireguard-tools), peers replaced as a whole with `wg syncconf`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{NetError, run};

/// Prefix of mesh interfaces' names.
pub const MESH_PREFIX: &str = "hgm";

/// The mesh interface of host `host` of installation `installation`.
pub fn interface_name(installation: u16, host: u16) -> String {
    format!("{MESH_PREFIX}{installation:04x}{host:04x}")
}

/// This host's /64 of network `net`, as a peer's allowed addresses.
pub fn host_prefix(installation: u16, net: u16, host: u16) -> String {
    format!("fdaa:{installation:x}:{net:x}:{host:x}::/64")
}

/// Another host, as a WireGuard peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its public key (base64).
    pub public_key: String,
    /// Where it listens.
    pub endpoint: SocketAddr,
    /// The addresses it answers for.
    pub allowed_ips: Vec<String>,
}

/// How the interface is implemented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The kernel's WireGuard.
    Kernel,
    /// `wireguard-go` over TUN.
    Userspace,
}

/// This host's end of the mesh.
#[derive(Debug, Clone)]
pub struct Mesh {
    /// The interface.
    pub ifname: String,
    /// The file with the private key (0600).
    pub key_file: PathBuf,
    /// The UDP port it listens on.
    pub listen_port: u16,
    /// The installation's 6PN prefix (`fdaa:<inst>::/32`), routed into it.
    pub prefix: String,
}

impl Mesh {
    /// The mesh end of host `host` of `installation`, its key kept in
    /// `dir/mesh.key` (made when missing).
    pub fn new(dir: &Path, installation: u16, host: u16, listen_port: u16) -> Mesh {
        Mesh {
            ifname: interface_name(installation, host),
            key_file: dir.join("mesh.key"),
            listen_port,
            prefix: format!("fdaa:{installation:x}::/32"),
        }
    }

    /// Whether the tools the mesh needs are installed (`wg`, and
    /// `wireguard-go` where the kernel has no WireGuard).
    pub fn tools() -> Result<(), NetError> {
        run("wg", &["--version"], None).map_err(|_| NetError::Tool {
            tool: "wg",
            message:
                "wireguard-tools is not installed (apt-get install -y wireguard-tools wireguard-go)"
                    .into(),
        })?;
        Ok(())
    }

    /// The public key (made with its private key on first use).
    pub fn public_key(&self) -> Result<String, NetError> {
        if !self.key_file.exists() {
            let key = run("wg", &["genkey"], None)?;
            write_secret(&self.key_file, key.trim())?;
        }
        let private = std::fs::read_to_string(&self.key_file)
            .map_err(|e| NetError::Invalid(format!("{}: {e}", self.key_file.display())))?;
        Ok(run("wg", &["pubkey"], Some(private.trim()))?
            .trim()
            .to_owned())
    }

    /// Makes the interface if it is missing (the kernel's, else
    /// `wireguard-go`), gives it the key and port, brings it up and routes
    /// the installation's prefix into it. Idempotent.
    pub fn ensure(&self) -> Result<Kind, NetError> {
        let kind = if crate::exists(&self.ifname) {
            if run("ip", &["-d", "link", "show", &self.ifname], None)?.contains("wireguard") {
                Kind::Kernel
            } else {
                Kind::Userspace
            }
        } else if run(
            "ip",
            &["link", "add", &self.ifname, "type", "wireguard"],
            None,
        )
        .is_ok()
        {
            Kind::Kernel
        } else {
            self.start_userspace()?;
            Kind::Userspace
        };
        let port = self.listen_port.to_string();
        let key = self.key_file.to_string_lossy().into_owned();
        run(
            "wg",
            &[
                "set",
                &self.ifname,
                "private-key",
                &key,
                "listen-port",
                &port,
            ],
            None,
        )?;
        run("ip", &["link", "set", &self.ifname, "up"], None)?;
        run(
            "ip",
            &["-6", "route", "replace", &self.prefix, "dev", &self.ifname],
            None,
        )?;
        Ok(kind)
    }

    /// Starts `wireguard-go` for the interface (it detaches and outlives
    /// this process) and waits for the interface to appear.
    fn start_userspace(&self) -> Result<(), NetError> {
        // It detaches and keeps running: no pipe of ours may stay open in
        // it (a wait for its output would never end).
        let status = std::process::Command::new("wireguard-go")
            .arg(&self.ifname)
            // The kernel module is missing here: that is why it runs.
            .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")
            .env("LOG_LEVEL", "error")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map_err(|e| NetError::Tool {
                tool: "wireguard-go",
                message: format!(
                    "cannot run it ({e}): the kernel has no WireGuard, so the mesh needs it (apt-get install -y wireguard-go)"
                ),
            })?;
        if !status.success() {
            return Err(NetError::Tool {
                tool: "wireguard-go",
                message: format!("{} for {} (is /dev/net/tun there?)", status, self.ifname),
            });
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !crate::exists(&self.ifname) {
            if Instant::now() > deadline {
                return Err(NetError::Tool {
                    tool: "wireguard-go",
                    message: format!("{} did not appear within 5 s", self.ifname),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// The peers as they should be: added, changed and removed in one
    /// `wg syncconf`.
    pub fn set_peers(&self, peers: &[Peer]) -> Result<(), NetError> {
        let private = std::fs::read_to_string(&self.key_file)
            .map_err(|e| NetError::Invalid(format!("{}: {e}", self.key_file.display())))?;
        let conf = config(private.trim(), self.listen_port, peers);
        let file = self.key_file.with_extension("conf");
        write_secret(&file, &conf)?;
        let r = run(
            "wg",
            &["syncconf", &self.ifname, &file.to_string_lossy()],
            None,
        );
        let _ = std::fs::remove_file(&file);
        r.map(|_| ())
    }

    /// Removes the interface (`wireguard-go` ends with it).
    pub fn remove(ifname: &str) {
        let _ = run("ip", &["link", "del", ifname], None);
    }
}

/// A `wg` configuration (not wg-quick's): the interface and its peers.
pub fn config(private_key: &str, listen_port: u16, peers: &[Peer]) -> String {
    let mut c = format!("[Interface]\nPrivateKey = {private_key}\nListenPort = {listen_port}\n");
    for p in peers {
        c.push_str(&format!(
            "\n[Peer]\nPublicKey = {}\nEndpoint = {}\nAllowedIPs = {}\nPersistentKeepalive = 15\n",
            p.public_key,
            p.endpoint,
            p.allowed_ips.join(", ")
        ));
    }
    c
}

fn write_secret(path: &Path, text: &str) -> Result<(), NetError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| NetError::Invalid(format!("{}: {e}", path.display())))?;
    writeln!(f, "{text}").map_err(|e| NetError::Invalid(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_prefixes() {
        assert_eq!(interface_name(0x3fa2, 1), "hgm3fa20001");
        assert!(interface_name(0xffff, 0xffff).len() <= 15);
        assert_eq!(host_prefix(0x3fa2, 1, 2), "fdaa:3fa2:1:2::/64");
        let m = Mesh::new(Path::new("/d"), 0x3fa2, 2, 51820);
        assert_eq!(m.prefix, "fdaa:3fa2::/32");
        assert_eq!(m.key_file, Path::new("/d/mesh.key"));
    }

    #[test]
    fn the_configuration_lists_every_peer() {
        let c = config(
            "PRIV",
            51820,
            &[Peer {
                public_key: "PUB".into(),
                endpoint: "192.0.2.1:51821".parse().unwrap(),
                allowed_ips: vec!["fdaa:1:1:2::/64".into(), "fdaa:1:2:2::/64".into()],
            }],
        );
        assert!(c.starts_with("[Interface]\nPrivateKey = PRIV\nListenPort = 51820\n"));
        assert!(c.contains("[Peer]\nPublicKey = PUB\nEndpoint = 192.0.2.1:51821\n"));
        assert!(c.contains("AllowedIPs = fdaa:1:1:2::/64, fdaa:1:2:2::/64\n"));
    }
}
