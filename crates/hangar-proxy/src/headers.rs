//! What the proxy reads and writes in HTTP: the app a request is for, the
//! headers it adds and the ones it never forwards, plain-text answers.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

pub(crate) fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(format!("{}\n", msg.into())))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

pub(crate) const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");

pub(crate) const X_FORWARDED_SSL: HeaderName = HeaderName::from_static("x-forwarded-ssl");

pub(crate) const FLY_CLIENT_IP: HeaderName = HeaderName::from_static("fly-client-ip");

pub(crate) const FLY_FORWARDED_PROTO: HeaderName = HeaderName::from_static("fly-forwarded-proto");

pub(crate) const FLY_FORWARDED_PORT: HeaderName = HeaderName::from_static("fly-forwarded-port");

pub(crate) const FLY_REGION: HeaderName = HeaderName::from_static("fly-region");

pub(crate) const FLY_REQUEST_ID: HeaderName = HeaderName::from_static("fly-request-id");

/// Headers that belong to one connection, never forwarded.
pub(crate) const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

pub(crate) fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none: look before removing.
    if !h
        .keys()
        .any(|n| n == header::UPGRADE || HOP_BY_HOP.contains(n))
    {
        return;
    }
    // Headers named in Connection are hop-by-hop too.
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .filter(|n| !(keep_upgrade && n == header::UPGRADE))
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in &HOP_BY_HOP {
        if keep_upgrade && n == header::CONNECTION {
            continue;
        }
        h.remove(n);
    }
    if !keep_upgrade {
        h.remove(header::UPGRADE);
    }
}

/// The app a Host header names (`<app>.<domain>`, any port, any case).
pub(crate) fn app_of<'h>(host: &'h str, domain: &str) -> Option<Cow<'h, str>> {
    let host = host.trim();
    let host = match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(']') => h,
        _ => host,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    let cut = host.len().checked_sub(domain.len() + 1)?;
    let (app, rest) = (host.get(..cut)?, host.get(cut..)?);
    let suffix = rest.strip_prefix('.')?;
    if app.is_empty() || app.contains('.') || !suffix.eq_ignore_ascii_case(domain) {
        return None;
    }
    Some(if app.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(app.to_ascii_lowercase())
    } else {
        Cow::Borrowed(app)
    })
}

pub(crate) fn app_of_host_without_port(host: &str) -> String {
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !h.is_empty() => h.to_owned(),
        _ => host.to_owned(),
    }
}
