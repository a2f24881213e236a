//! Image names as users write them (`busybox`, `nginx:1.27`,
//! `127.0.0.1:5000/team/app:v2`, `repo@sha256:...`), normalized Docker's way:
//! `busybox` means `docker.io/library/busybox:latest`.

use std::fmt;

use oci_client::Reference;

use crate::ImageError;

/// A parsed, normalized image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageName {
    /// Registry host (and port), e.g. `docker.io`, `127.0.0.1:5000`.
    pub registry: String,
    /// Repository path, e.g. `library/busybox`.
    pub repository: String,
    /// Tag, if the reference has one (`latest` when it has neither a tag nor
    /// a digest).
    pub tag: Option<String>,
    /// Manifest digest, if the reference pins one.
    pub digest: Option<String>,
}

impl ImageName {
    /// Parses and normalizes a reference.
    pub fn parse(input: &str) -> Result<ImageName, ImageError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(ImageError::InvalidReference {
                reference: input.to_owned(),
                reason: "empty".into(),
            });
        }
        let r: Reference = s.parse().map_err(|e| ImageError::InvalidReference {
            reference: input.to_owned(),
            reason: format!("{e}"),
        })?;
        let digest = r.digest().map(str::to_owned);
        let tag = match (r.tag(), &digest) {
            (Some(t), _) => Some(t.to_owned()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_owned()),
        };
        if let Some(d) = &digest {
            if !valid_digest(d) {
                return Err(ImageError::InvalidReference {
                    reference: input.to_owned(),
                    reason: "digest must be sha256:<64 hex characters>".into(),
                });
            }
        }
        check_registry(r.registry()).map_err(|reason| ImageError::InvalidReference {
            reference: input.to_owned(),
            reason,
        })?;
        Ok(ImageName {
            registry: r.registry().to_owned(),
            repository: r.repository().to_owned(),
            tag,
            digest,
        })
    }

    /// `registry/repository`.
    pub fn repo_path(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The reference pinned to a manifest digest.
    pub fn pinned(&self, digest: &str) -> ImageName {
        ImageName {
            digest: Some(digest.to_owned()),
            ..self.clone()
        }
    }

    /// The name an import or tag is filed under: `registry/repository:tag`
    /// (or `@digest` when there is no tag).
    pub fn key(&self) -> String {
        match (&self.tag, &self.digest) {
            (Some(t), _) => format!("{}:{t}", self.repo_path()),
            (None, Some(d)) => format!("{}@{d}", self.repo_path()),
            (None, None) => format!("{}:latest", self.repo_path()),
        }
    }

    pub(crate) fn to_oci(&self) -> Reference {
        match (&self.tag, &self.digest) {
            (Some(t), Some(d)) => Reference::with_tag_and_digest(
                self.registry.clone(),
                self.repository.clone(),
                t.clone(),
                d.clone(),
            ),
            (None, Some(d)) => {
                Reference::with_digest(self.registry.clone(), self.repository.clone(), d.clone())
            }
            (Some(t), None) => {
                Reference::with_tag(self.registry.clone(), self.repository.clone(), t.clone())
            }
            (None, None) => Reference::with_tag(
                self.registry.clone(),
                self.repository.clone(),
                "latest".into(),
            ),
        }
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.repo_path())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// A registry's port, when it names one, must be a TCP port.
fn check_registry(registry: &str) -> Result<(), String> {
    // `[::1]:5000`, `host:5000`, `host`.
    let port = match registry.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(':') && !port.contains(']') => port,
        _ => return Ok(()),
    };
    match port.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(()),
        _ => Err(format!(
            "registry port {port:?} is not a TCP port (1 to 65535)"
        )),
    }
}

/// Whether `d` is `sha256:` followed by 64 lowercase hex characters.
pub fn valid_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    })
}

/// The hex part of a `sha256:` digest (callers have validated it).
pub fn digest_hex(d: &str) -> &str {
    d.strip_prefix("sha256:").unwrap_or(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_defaults() {
        let n = ImageName::parse("busybox").unwrap();
        assert_eq!(n.registry, "docker.io");
        assert_eq!(n.repository, "library/busybox");
        assert_eq!(n.tag.as_deref(), Some("latest"));
        assert_eq!(n.key(), "docker.io/library/busybox:latest");
        let n = ImageName::parse("flyio/hellofly:v2").unwrap();
        assert_eq!(n.key(), "docker.io/flyio/hellofly:v2");
    }

    #[test]
    fn registry_with_port_and_digest() {
        let d = format!("sha256:{}", "a".repeat(64));
        let n = ImageName::parse(&format!("127.0.0.1:5000/team/app@{d}")).unwrap();
        assert_eq!(n.registry, "127.0.0.1:5000");
        assert_eq!(n.repository, "team/app");
        assert_eq!(n.tag, None);
        assert_eq!(n.digest.as_deref(), Some(d.as_str()));
        assert_eq!(n.to_string(), format!("127.0.0.1:5000/team/app@{d}"));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "Upper",
            "a b",
            "x@sha256:short",
            "../../etc",
            "127.0.0.1:99999/x:1",
            "host:0/x",
        ] {
            assert!(ImageName::parse(bad).is_err(), "{bad:?}");
        }
    }
}
