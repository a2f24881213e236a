//! The registry as the image store of the same hangard reads it: straight
//! from disk, for every name clients reach the registry by.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use hangar_image::{LocalManifest, LocalRegistry};

use crate::{RegistryError, Storage};

/// The names that reach this registry: the API listener's address, and
/// `localhost` or this host's name or addresses where the listener takes
/// them, plus names an operator adds (a reverse proxy's, say).
#[derive(Debug, Clone)]
pub struct Names {
    listen: SocketAddr,
    extra: Vec<String>,
    hostname: Option<String>,
}

impl Names {
    /// The names of a registry served on `listen`, plus `extra`
    /// (`HOST[:PORT]`, compared as written in image names).
    pub fn new(listen: SocketAddr, extra: Vec<String>) -> Names {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty());
        Names {
            listen,
            extra: extra.into_iter().map(|e| e.to_ascii_lowercase()).collect(),
            hostname,
        }
    }

    /// Whether the registry part of an image name (`host[:port]`) is this
    /// registry.
    pub fn matches(&self, registry: &str) -> bool {
        let registry = registry.to_ascii_lowercase();
        if self.extra.contains(&registry) {
            return true;
        }
        if let Ok(addr) = registry.parse::<SocketAddr>() {
            return addr.port() == self.listen.port() && self.is_listened(addr.ip());
        }
        let Some((host, port)) = registry.rsplit_once(':') else {
            return false;
        };
        if port.parse::<u16>().ok() != Some(self.listen.port()) {
            return false;
        }
        let ip = self.listen.ip();
        (host == "localhost" && (ip.is_loopback() || ip.is_unspecified()))
            || (ip.is_unspecified() && self.hostname.as_deref() == Some(host))
    }

    /// Whether the listener answers on address `ip`.
    fn is_listened(&self, ip: IpAddr) -> bool {
        let listen = self.listen.ip();
        if listen.is_unspecified() {
            // One of this host's addresses (only those can be bound), of the
            // listener's family, or IPv4 on a dual-stack `[::]`.
            (listen.is_ipv6() || ip.is_ipv4())
                && !ip.is_unspecified()
                && std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
        } else {
            ip == listen
        }
    }
}

/// The registry's storage, seen by the image store.
#[derive(Debug, Clone)]
pub struct LocalSource {
    storage: Storage,
    names: Names,
}

impl LocalSource {
    /// `storage`, reached by `names`.
    pub fn new(storage: Storage, names: Names) -> LocalSource {
        LocalSource { storage, names }
    }
}

fn unknown(e: &RegistryError) -> bool {
    matches!(
        e,
        RegistryError::ManifestUnknown(_)
            | RegistryError::BlobUnknown(_)
            | RegistryError::NameInvalid(_)
    )
}

impl LocalRegistry for LocalSource {
    fn serves(&self, registry: &str) -> bool {
        self.names.matches(registry)
    }

    fn manifest(&self, repository: &str, reference: &str) -> Result<Option<LocalManifest>, String> {
        match self.storage.manifest(repository, reference) {
            Ok(m) => Ok(Some(LocalManifest {
                digest: m.digest,
                media_type: m.media_type,
                bytes: m.bytes,
            })),
            Err(e) if unknown(&e) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    fn blob(&self, repository: &str, digest: &str) -> Result<Option<PathBuf>, String> {
        match self.storage.blob(repository, digest) {
            Ok(b) => Ok(b.map(|(path, _)| path)),
            Err(e) if unknown(&e) || matches!(e, RegistryError::DigestInvalid(_)) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_reach_the_listener() {
        let lo = Names::new("127.0.0.1:4280".parse().unwrap(), vec![]);
        assert!(lo.matches("127.0.0.1:4280"));
        assert!(lo.matches("LOCALHOST:4280"));
        assert!(!lo.matches("127.0.0.1:5000"));
        assert!(!lo.matches("127.0.0.2:4280"), "another listener's address");
        assert!(!lo.matches("[::1]:4280"));
        assert!(!lo.matches("docker.io"));
        assert!(!lo.matches("localhost"));

        let any = Names::new(
            "0.0.0.0:4280".parse().unwrap(),
            vec!["Registry.Example.com".into()],
        );
        assert!(any.matches("127.0.0.1:4280"));
        assert!(any.matches("localhost:4280"));
        assert!(any.matches("registry.example.com"));
        assert!(!any.matches("registry.example.com:4280"));
        assert!(
            !any.matches("192.0.2.1:4280"),
            "not an address of this host"
        );
        assert!(!any.matches("[::1]:4280"), "an IPv4 listener");
        if let Some(h) = any.hostname.clone() {
            assert!(any.matches(&format!("{h}:4280")));
            assert!(!lo.matches(&format!("{h}:4280")));
        }
    }
}
