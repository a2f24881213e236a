//! TLS for the proxy's HTTPS listener (rustls): the operator's certificate,
//! or a self-signed one for `<domain>` and `*.<domain>` made on first use.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::ProxyError;

/// Makes a self-signed certificate for `domain` and its subdomains at
/// `cert`/`key` unless both exist.
pub fn ensure_self_signed(cert: &Path, key: &Path, domain: &str) -> Result<(), ProxyError> {
    if cert.exists() && key.exists() {
        return Ok(());
    }
    let names = vec![domain.to_owned(), format!("*.{domain}")];
    let made = rcgen::generate_simple_self_signed(names)
        .map_err(|e| ProxyError::Tls(format!("making a certificate: {e}")))?;
    let io = |e: std::io::Error| ProxyError::Tls(format!("writing the certificate: {e}"));
    if let Some(dir) = cert.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(key)
        .and_then(|mut f| f.write_all(made.signing_key.serialize_pem().as_bytes()))
        .map_err(io)?;
    std::fs::write(cert, made.cert.pem()).map_err(io)?;
    tracing::info!(cert = %cert.display(), domain, "made a self-signed certificate for the proxy");
    Ok(())
}

/// The TLS acceptor for the proxy (HTTP/2 and HTTP/1.1 by ALPN).
pub fn acceptor(
    cert: &Path,
    key: &Path,
    domain: &str,
) -> Result<tokio_rustls::TlsAcceptor, ProxyError> {
    ensure_self_signed(cert, key, domain)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| ProxyError::Tls(format!("reading {}: {e}", cert.display())))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| ProxyError::Tls(format!("reading {}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ProxyError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ProxyError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
