//! Liberal input: JSON bodies that may be empty, carry nulls or unknown
//! fields, with or without a content type; query strings with repeated keys
//! and loose booleans.

use axum::extract::FromRequest;
use axum::http::Request;
use serde::de::DeserializeOwned;

use std::time::Duration;

use hangar_core::Signal;
use hangar_core::machine::MAX_STOP_TIMEOUT;

use crate::error::ApiError;

/// The most bytes a JSON body may have (axum's default limit).
pub const BODY_LIMIT: usize = 2 << 20;

/// A JSON body; an empty body is `T::default()`.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(
        req: Request<axum::body::Body>,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let bytes = bytes::Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(format!(
                    "the request body is larger than this endpoint takes ({} bytes at most)",
                    BODY_LIMIT
                ))
            } else {
                ApiError::BadRequest(format!("cannot read the request body: {e}"))
            }
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Body(T::default()));
        }
        serde_json::from_slice(&bytes)
            .map(Body)
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
    }
}

/// Query parameters, keeping repeated keys.
#[derive(Debug, Default)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// Parses a raw query string.
    pub fn parse(query: Option<&str>) -> Params {
        Params(
            url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// The last value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`, as given (no splitting).
    pub fn values(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Every value of `key`, comma lists split.
    pub fn all(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .flat_map(|(_, v)| v.split(','))
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// A boolean: `true`/`1`/`yes` (or the bare key) are true,
    /// `false`/`0`/`no` false; anything else is a 400.
    pub fn bool(&self, key: &str) -> Result<bool, ApiError> {
        match self.get(key).map(|v| v.to_ascii_lowercase()) {
            None => Ok(false),
            Some(v) => match v.as_str() {
                "" | "true" | "1" | "yes" | "t" => Ok(true),
                "false" | "0" | "no" | "f" => Ok(false),
                _ => Err(ApiError::BadRequest(format!(
                    "invalid_argument: {key} must be true or false, not {v:?}"
                ))),
            },
        }
    }

    /// `(key, value)` pairs whose key starts with `prefix`, prefix removed.
    pub fn prefixed<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.0
            .iter()
            .filter_map(move |(k, v)| k.strip_prefix(prefix).map(|k| (k, v.as_str())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_and_comma_values() {
        let p = Params::parse(Some(
            "state=started&state=stopped,destroyed&force&kill=0&metadata.role=web",
        ));
        assert_eq!(p.all("state"), vec!["started", "stopped", "destroyed"]);
        assert!(p.bool("force").unwrap());
        assert!(!p.bool("kill").unwrap());
        assert!(!p.bool("missing").unwrap());
        assert!(Params::parse(Some("force=maybe")).bool("force").is_err());
        assert_eq!(
            p.prefixed("metadata.").collect::<Vec<_>>(),
            vec![("role", "web")]
        );
    }
}

/// A machine config, parsed once, here at the door: the typed spec the
/// platform acts on, beside the JSON it came as (400 with what is wrong).
pub fn parse_config(
    config: Option<&hangar_api_types::MachineConfig>,
) -> Result<hangar_core::spec::Parsed, ApiError> {
    let config = config
        .ok_or_else(|| ApiError::BadRequest("config is required (with config.image)".into()))?;
    hangar_core::spec::Parsed::try_from(config).map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// A JSON value a client sent, unless it is absent, null or `""`.
pub fn present(v: &Option<serde_json::Value>) -> Option<&serde_json::Value> {
    v.as_ref()
        .filter(|v| !v.is_null() && v.as_str() != Some(""))
}

/// A stop, restart or signal request's signal and timeout, from the body
/// (JSON values) or the query string (text), the body winning.
pub fn stop_options(
    body_signal: &Option<serde_json::Value>,
    body_timeout: &Option<serde_json::Value>,
    query: &Params,
) -> Result<(Option<Signal>, Option<Duration>), ApiError> {
    let text = |k: &str| {
        query
            .get(k)
            .filter(|v| !v.is_empty())
            .map(|v| serde_json::Value::String(v.into()))
    };
    let signal = match present(body_signal).cloned().or_else(|| text("signal")) {
        Some(v) => Some(parse_signal(&v)?),
        None => None,
    };
    let timeout = match present(body_timeout).cloned().or_else(|| text("timeout")) {
        Some(v) => Some(parse_timeout(&v)?),
        None => None,
    };
    Ok((signal, timeout))
}

/// A stop request's timeout, from Fly's encodings: a Go duration string
/// (`"10s"`), integer nanoseconds (fly-go's Duration), or a bare number of
/// seconds as a string (`"10"`).
pub fn parse_timeout(v: &serde_json::Value) -> Result<Duration, ApiError> {
    let d = match v {
        serde_json::Value::String(s) => hangar_core::GoDuration::parse(s)
            .map_err(|e| invalid(format!("invalid timeout: {e}")))?
            .get(),
        serde_json::Value::Number(n) => match n.as_u64() {
            Some(ns) => Duration::from_nanos(ns),
            None => return Err(invalid(format!("invalid timeout {n}"))),
        },
        other => return Err(invalid(format!("invalid timeout {other}"))),
    };
    if d > MAX_STOP_TIMEOUT {
        return Err(invalid(format!(
            "timeout {} is longer than the maximum of 5m0s",
            hangar_core::GoDuration(d)
        )));
    }
    Ok(d)
}

/// A signal from a request: a name or a number.
pub fn parse_signal(v: &serde_json::Value) -> Result<Signal, ApiError> {
    serde_json::from_value::<Signal>(v.clone()).map_err(|_| invalid(format!("invalid signal {v}")))
}

fn invalid(m: String) -> ApiError {
    ApiError::BadRequest(m)
}

#[cfg(test)]
mod stop_tests {
    use super::*;

    #[test]
    fn parses_timeouts_and_signals() {
        assert_eq!(
            parse_timeout(&serde_json::json!("10s")).unwrap(),
            Duration::from_secs(10)
        );
        assert_eq!(
            parse_timeout(&serde_json::json!(2_000_000_000u64)).unwrap(),
            Duration::from_secs(2)
        );
        assert!(parse_timeout(&serde_json::json!("-1s")).is_err());
        assert!(parse_timeout(&serde_json::json!("1h")).is_err());
        assert_eq!(parse_signal(&serde_json::json!(9)).unwrap(), Signal::Kill);
        assert_eq!(
            parse_signal(&serde_json::json!("SIGTERM")).unwrap(),
            Signal::Term
        );
        assert!(parse_signal(&serde_json::json!("SIGFOO")).is_err());
    }

    #[test]
    fn stop_options_come_from_the_body_or_the_query() {
        let q = Params::parse(Some("signal=SIGTERM&timeout=3s"));
        let none = Params::parse(None);
        assert_eq!(
            stop_options(&None, &None, &q).unwrap(),
            (Some(Signal::Term), Some(Duration::from_secs(3)))
        );
        assert_eq!(
            stop_options(
                &Some(serde_json::json!(9)),
                &Some(serde_json::json!("")),
                &q
            )
            .unwrap(),
            (Some(Signal::Kill), Some(Duration::from_secs(3)))
        );
        assert_eq!(stop_options(&None, &None, &none).unwrap(), (None, None));
        assert!(stop_options(&Some(serde_json::json!("SIGNOPE")), &None, &none).is_err());
    }
}
