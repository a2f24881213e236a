//! Liberal input: JSON bodies that may be empty, carry nulls or unknown
//! fields, with or without a content type; query strings with repeated keys
//! and loose booleans.

use axum::extract::FromRequest;
use axum::http::Request;
use serde::de::DeserializeOwned;

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
