//! Public addresses for apps (Fly's `/apps/{app}/ip_assignments`).
//!
//! A dedicated `v4` address comes from the installation's pool and serves
//! every service of the app on its own ports, raw TCP and UDP included;
//! `shared_v4` is the proxy's shared address, where HTTP services are
//! routed by Host. An address is never given to two apps (but the shared
//! one) and goes back to the pool when released or when the app is
//! deleted.

use std::net::{IpAddr, Ipv4Addr};

pub use crate::store::ips::IpAssignment;
use crate::{Agent, AgentError};

/// An IPv4 pool, `a.b.c.d/len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpPool {
    base: u32,
    len: u8,
}

/// An `--ip-pool` that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadPool(String);

impl std::str::FromStr for IpPool {
    type Err = BadPool;

    fn from_str(s: &str) -> Result<Self, BadPool> {
        let bad = || BadPool(format!("{s:?} is not an IPv4 pool like 127.0.1.0/24"));
        let (addr, len) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().map_err(|_| bad())?;
        if !(8..=32).contains(&len) {
            return Err(bad());
        }
        let mask = if len == 32 {
            u32::MAX
        } else {
            !(u32::MAX >> len)
        };
        let base = u32::from(addr);
        if base & !mask != 0 {
            return Err(BadPool(format!(
                "{s:?}: the address has bits set beyond the prefix"
            )));
        }
        Ok(IpPool { base, len })
    }
}

impl IpPool {
    /// The usable addresses (network and broadcast addresses left out of
    /// pools larger than two addresses), in order.
    pub fn addresses(&self) -> impl Iterator<Item = Ipv4Addr> + use<> {
        let size = 1u64 << (32 - u32::from(self.len));
        let (first, last) = if size > 2 {
            (1, size - 2)
        } else {
            (0, size - 1)
        };
        let base = u64::from(self.base);
        (first..=last).map(move |i| Ipv4Addr::from((base + i) as u32))
    }
}

impl Agent {
    /// Assigns an address to `app`: `v4` (dedicated, from the pool) or
    /// `shared_v4` (the proxy's shared address).
    pub fn assign_ip(
        &self,
        app: &str,
        kind: &str,
        region: Option<&str>,
        service_name: Option<&str>,
    ) -> Result<IpAssignment, AgentError> {
        let app = self.get_app(app)?;
        let region = region.filter(|r| !r.is_empty()).unwrap_or(self.region());
        if region != self.region() {
            return Err(AgentError::InvalidArgument(format!(
                "unknown region {region:?}; this installation has {:?}",
                self.region()
            )));
        }
        let mut a = IpAssignment {
            ip: String::new(),
            app: app.name.clone(),
            region: region.to_owned(),
            service_name: service_name.unwrap_or_default().to_owned(),
            shared: false,
            created_at: crate::store::now_rfc3339(),
        };
        match kind {
            "v4" | "" => {
                let pool = self.shared.ip_pool.ok_or_else(|| {
                    AgentError::Unprocessable(
                        "this installation has no IP pool for dedicated addresses (hangard --ip-pool)"
                            .into(),
                    )
                })?;
                self.shared.store.assign_from_pool(&pool, &mut a)?;
            }
            "shared_v4" => {
                let ip = self.shared.shared_ip.ok_or_else(|| {
                    AgentError::Unprocessable(
                        "this installation has no shared address (the proxy's HTTP listener is off)"
                            .into(),
                    )
                })?;
                a.ip = ip.to_string();
                a.shared = true;
                if self
                    .shared
                    .store
                    .ip_assignments(Some(&app.name))?
                    .iter()
                    .any(|x| x.ip == a.ip)
                {
                    return Err(AgentError::Conflict(format!(
                        "app {} already has the shared address {}",
                        app.name, a.ip
                    )));
                }
                self.shared.store.insert_ip(&a)?;
            }
            "v6" | "private_v6" => {
                return Err(AgentError::Unprocessable(format!(
                    "{kind} addresses are not available on this installation (v4 and shared_v4 are)"
                )));
            }
            other => {
                return Err(AgentError::InvalidArgument(format!(
                    "invalid type {other:?}: v4, shared_v4, v6 or private_v6"
                )));
            }
        }
        Ok(a)
    }

    /// The app's assignments.
    pub fn list_ips(&self, app: &str) -> Result<Vec<IpAssignment>, AgentError> {
        let app = self.get_app(app)?;
        self.shared.store.ip_assignments(Some(&app.name))
    }

    /// Every app's assignments (for the proxy).
    pub fn all_ips(&self) -> Result<Vec<IpAssignment>, AgentError> {
        self.shared.store.ip_assignments(None)
    }

    /// Releases an address of `app`.
    pub fn release_ip(&self, app: &str, ip: &str) -> Result<(), AgentError> {
        let app = self.get_app(app)?;
        let ip = ip
            .parse::<IpAddr>()
            .map_err(|_| AgentError::InvalidArgument(format!("{ip:?} is not an IP address")))?;
        if !self.shared.store.release_ip(&app.name, &ip.to_string())? {
            return Err(AgentError::NotFound(format!(
                "app {} has no address {ip}",
                app.name
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_parse_and_list_usable_addresses() {
        let p: IpPool = "127.0.1.0/30".parse().unwrap();
        let all: Vec<String> = p.addresses().map(|a| a.to_string()).collect();
        assert_eq!(all, vec!["127.0.1.1", "127.0.1.2"]);
        let p: IpPool = "203.0.113.7/32".parse().unwrap();
        assert_eq!(p.addresses().count(), 1);
        assert_eq!(
            "127.0.1.0/24"
                .parse::<IpPool>()
                .unwrap()
                .addresses()
                .count(),
            254
        );
        for bad in ["127.0.1.1/24", "x/24", "127.0.1.0", "10.0.0.0/4"] {
            assert!(bad.parse::<IpPool>().is_err(), "{bad}");
        }
    }
}
