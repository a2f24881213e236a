//! App secrets: values sealed at rest, handed to machines at start.
//!
//! Each value is sealed with XChaCha20-Poly1305 under the installation's
//! secrets key (32 random bytes in `<data-dir>/secrets.key`, mode 0600, or a
//! key file the operator names), with a fresh random nonce and the app and
//! secret name as associated data, so a sealed value cannot be moved to
//! another slot. The SQLite file holds only names, digests (an HMAC of the
//! value under a key derived from the secrets key, so equal values are not
//! recognisable across installations and guessing needs the key) and times.
//! Values are never logged and never appear in errors, configs or events.
//!
//! Every change bumps the app's secrets `version`; a machine reads the
//! app's current secrets each time it starts.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::store::Store;
pub use crate::store::secrets::SecretInfo;
use crate::{Agent, AgentError};

/// Longest secret value, bytes.
pub const MAX_VALUE: usize = 64 * 1024;
/// Most secrets per app.
pub const MAX_SECRETS: usize = 500;

/// The installation's secrets key.
pub struct SecretBox {
    cipher: XChaCha20Poly1305,
    digest_key: [u8; 32],
}

impl SecretBox {
    /// From 32 key bytes.
    pub fn new(key: &[u8; 32]) -> SecretBox {
        let digest_key: [u8; 32] = Sha256::new()
            .chain_update(b"hangar secret digests v1")
            .chain_update(key)
            .finalize()
            .into();
        SecretBox {
            cipher: XChaCha20Poly1305::new(key.into()),
            digest_key,
        }
    }

    /// Reads the key at `path` (32 bytes, raw or as 64 hex digits), creating
    /// it (mode 0600) when it does not exist.
    pub fn load_or_create(path: &Path) -> Result<SecretBox, AgentError> {
        let internal = |source: std::io::Error| AgentError::Io {
            context: format!("secrets key {}", path.display()),
            source,
        };
        match std::fs::read(path) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let key: Vec<u8> = match hex::decode(text.trim()) {
                    Ok(k) if k.len() == 32 => k,
                    _ if bytes.len() == 32 => bytes,
                    _ => {
                        return Err(AgentError::Internal(format!(
                            "secrets key {} must hold 32 bytes (raw or 64 hex digits)",
                            path.display()
                        )));
                    }
                };
                let mut k = [0u8; 32];
                k.copy_from_slice(&key);
                Ok(SecretBox::new(&k))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key: [u8; 32] = rand::random();
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(internal)?;
                f.write_all(hex::encode(key).as_bytes()).map_err(internal)?;
                f.sync_all().map_err(internal)?;
                tracing::info!(path = %path.display(), "created the secrets key");
                Ok(SecretBox::new(&key))
            }
            Err(e) => Err(internal(e)),
        }
    }

    fn aad(app: &str, name: &str) -> Vec<u8> {
        format!("{app}\0{name}").into_bytes()
    }

    /// Seals `value` for secret `name` of `app`: nonce, then ciphertext.
    pub fn seal(&self, app: &str, name: &str, value: &[u8]) -> Vec<u8> {
        let nonce: [u8; 24] = rand::random();
        let aad = Self::aad(app, name);
        let ct = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: value,
                    aad: &aad,
                },
            )
            .expect("XChaCha20-Poly1305 encryption does not fail");
        let mut out = nonce.to_vec();
        out.extend(ct);
        out
    }

    /// Opens what [`SecretBox::seal`] sealed for the same slot.
    pub fn open(&self, app: &str, name: &str, sealed: &[u8]) -> Result<Vec<u8>, AgentError> {
        if sealed.len() < 24 {
            return Err(AgentError::Internal(format!(
                "secret {name} of {app} is damaged"
            )));
        }
        let (nonce, ct) = sealed.split_at(24);
        let aad = Self::aad(app, name);
        self.cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
            .map_err(|_| {
                AgentError::Internal(format!(
                    "secret {name} of {app} cannot be opened: wrong secrets key or damaged data"
                ))
            })
    }

    /// A short digest of a value (HMAC-SHA256, 16 hex digits).
    pub fn digest(&self, app: &str, name: &str, value: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.digest_key)
            .expect("HMAC takes keys of any length");
        mac.update(&Self::aad(app, name));
        mac.update(b"\0");
        mac.update(value);
        hex::encode(&mac.finalize().into_bytes()[..8])
    }
}

/// Checks a secret's name (an environment variable name, not one of Fly's).
pub fn check_name(name: &str) -> Result<(), AgentError> {
    let valid = !name.is_empty()
        && name.len() <= 256
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(AgentError::InvalidArgument(format!(
            "invalid secret name {name:?}: use letters, digits and underscores, not starting with a digit"
        )));
    }
    if name.to_ascii_uppercase().starts_with("FLY_") {
        return Err(AgentError::InvalidArgument(format!(
            "invalid secret name {name:?}: names starting with FLY_ are reserved"
        )));
    }
    Ok(())
}

/// Checks a value without ever quoting it.
fn check_value(name: &str, value: &str) -> Result<(), AgentError> {
    if value.len() > MAX_VALUE {
        return Err(AgentError::InvalidArgument(format!(
            "secret {name} is longer than {MAX_VALUE} bytes"
        )));
    }
    if value.contains('\0') {
        return Err(AgentError::InvalidArgument(format!(
            "secret {name} contains a NUL byte"
        )));
    }
    Ok(())
}

/// A sealed value and its digest.
pub(crate) type Sealed = (Vec<u8>, String);

/// The app's secret values, opened.
pub(crate) fn values(
    store: &Store,
    key: &SecretBox,
    app: &str,
) -> Result<BTreeMap<String, String>, AgentError> {
    let mut out = BTreeMap::new();
    for (info, sealed) in store.sealed_secrets(app)? {
        let value = key.open(app, &info.name, &sealed)?;
        out.insert(info.name, String::from_utf8_lossy(&value).into_owned());
    }
    Ok(out)
}

impl Agent {
    /// The app's secrets (without values) and its secrets version.
    pub fn list_secrets(&self, app: &str) -> Result<(Vec<SecretInfo>, i64), AgentError> {
        self.get_app(app)?;
        let list = self.shared.store.sealed_secrets(app)?;
        let version = self.shared.store.secrets_version(app)?;
        Ok((list.into_iter().map(|(i, _)| i).collect(), version))
    }

    /// The app's secret values, by name (for machines, and `show_secrets`
    /// to an admin).
    pub fn secret_values(&self, app: &str) -> Result<BTreeMap<String, String>, AgentError> {
        self.get_app(app)?;
        values(&self.shared.store, &self.shared.secrets, app)
    }

    /// Sets (`Some`) and unsets (`None`) secrets all at once; returns the
    /// new secrets version. Unsetting a secret that does not exist is fine.
    pub fn update_secrets(
        &self,
        app: &str,
        values: BTreeMap<String, Option<String>>,
    ) -> Result<i64, AgentError> {
        self.get_app(app)?;
        let mut changes = Vec::with_capacity(values.len());
        for (name, value) in values {
            check_name(&name)?;
            let sealed = match value {
                Some(v) => {
                    check_value(&name, &v)?;
                    let b = &self.shared.secrets;
                    Some((
                        b.seal(app, &name, v.as_bytes()),
                        b.digest(app, &name, v.as_bytes()),
                    ))
                }
                None => None,
            };
            changes.push((name, sealed));
        }
        let version = self.shared.store.change_secrets(app, &changes)?;
        tracing::info!(app, version, changed = changes.len(), "secrets updated");
        Ok(version)
    }

    /// One secret's name, digest and times.
    pub fn get_secret(&self, app: &str, name: &str) -> Result<SecretInfo, AgentError> {
        self.list_secrets(app)?
            .0
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| AgentError::NotFound(format!("secret {name} not found")))
    }

    /// Removes one secret (404 when there is none); returns the version.
    pub fn delete_secret(&self, app: &str, name: &str) -> Result<i64, AgentError> {
        self.get_secret(app, name)?;
        self.update_secrets(app, BTreeMap::from([(name.to_owned(), None)]))
    }

    /// 400 when a file of `config` names a secret the app does not have.
    pub(crate) fn check_file_secrets(
        &self,
        app: &str,
        spec: &hangar_core::spec::MachineSpec,
    ) -> Result<(), AgentError> {
        if spec.file_secrets().next().is_none() {
            return Ok(());
        }
        let values = self.secret_values(app)?;
        crate::spec::guest_files(spec, &values).map(|_| ())
    }

    /// 412 unless the app's secrets have reached `min` (a version a client
    /// saw when it set them).
    pub fn check_secrets_version(&self, app: &str, min: Option<i64>) -> Result<(), AgentError> {
        let Some(min) = min else {
            return Ok(());
        };
        let current = self.shared.store.secrets_version(app)?;
        if current < min {
            return Err(AgentError::Precondition(format!(
                "failed_precondition: secrets version {min} not reached, the app is at {current}"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_opens_and_binds_to_the_slot() {
        let b = SecretBox::new(&[7u8; 32]);
        let sealed = b.seal("web", "DB_URL", b"postgres://u:p@h/db");
        assert!(!sealed.windows(8).any(|w| w == b"postgres"));
        assert_eq!(
            b.open("web", "DB_URL", &sealed).unwrap(),
            b"postgres://u:p@h/db"
        );
        // Another slot, another key, a flipped bit: refused.
        assert!(b.open("web", "OTHER", &sealed).is_err());
        assert!(b.open("api", "DB_URL", &sealed).is_err());
        assert!(
            SecretBox::new(&[8u8; 32])
                .open("web", "DB_URL", &sealed)
                .is_err()
        );
        let mut bad = sealed.clone();
        bad[30] ^= 1;
        assert!(b.open("web", "DB_URL", &bad).is_err());
        // Nonces are fresh: sealing twice differs.
        assert_ne!(sealed, b.seal("web", "DB_URL", b"postgres://u:p@h/db"));
    }

    #[test]
    fn digests_follow_values_and_keys() {
        let b = SecretBox::new(&[7u8; 32]);
        let d = b.digest("web", "A", b"one");
        assert_eq!(d.len(), 16);
        assert_eq!(d, b.digest("web", "A", b"one"));
        assert_ne!(d, b.digest("web", "A", b"two"));
        assert_ne!(d, SecretBox::new(&[9u8; 32]).digest("web", "A", b"one"));
    }

    #[test]
    fn keys_are_created_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        let a = SecretBox::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = SecretBox::load_or_create(&path).unwrap();
        let sealed = a.seal("x", "Y", b"z");
        assert_eq!(b.open("x", "Y", &sealed).unwrap(), b"z");
        std::fs::write(&path, "short").unwrap();
        assert!(SecretBox::load_or_create(&path).is_err());
    }

    #[test]
    fn names_are_checked() {
        for ok in ["A", "_x", "DATABASE_URL", "a1"] {
            check_name(ok).unwrap();
        }
        for bad in ["", "1A", "A-B", "A B", "FLY_APP_NAME", "fly_x", "A=B"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        let err = check_value("K", &"x".repeat(MAX_VALUE + 1)).unwrap_err();
        assert!(!err.to_string().contains("xxx"));
    }
}
