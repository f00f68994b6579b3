//! Which response headers a record keeps: an allow-list of representation headers, and a
//! deny-list of per-exchange headers that no setting can allow.

use http::header::{
    AUTHORIZATION, CONTENT_LOCATION, CONTENT_TYPE, DATE, ETAG, LAST_MODIFIED, LINK, LOCATION,
    PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, RETRY_AFTER, SET_COOKIE, WWW_AUTHENTICATE,
};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::http::config::Config;

/// Headers stored and replayed by default: they describe the representation, which is the
/// same for every retry.
pub(crate) const DEFAULT_REPLAYED: [HeaderName; 6] = [
    CONTENT_TYPE,
    LOCATION,
    CONTENT_LOCATION,
    ETAG,
    LAST_MODIFIED,
    LINK,
];

/// Headers that belong to one exchange: replaying them would hand one client's session,
/// credentials challenge, clock or quota to another.
const PER_EXCHANGE: [&str; 14] = [
    "set-cookie2",
    "x-request-id",
    "request-id",
    "x-correlation-id",
    "x-amzn-requestid",
    "traceparent",
    "tracestate",
    "ratelimit",
    "ratelimit-policy",
    // Hop-by-hop and framing headers: the replay's own connection sets them.
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "trailer",
];

/// Prefixes of rate-limit header families (`X-RateLimit-Remaining`, `RateLimit-Reset`, ...).
const PER_EXCHANGE_PREFIXES: [&str; 3] = ["x-ratelimit-", "x-rate-limit-", "ratelimit-"];

/// The header that marks a replayed response.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Whether `name` is a per-exchange header, which is never stored or replayed.
pub(crate) fn is_per_exchange(name: &HeaderName) -> bool {
    let fixed = [
        SET_COOKIE,
        AUTHORIZATION,
        PROXY_AUTHORIZATION,
        WWW_AUTHENTICATE,
        PROXY_AUTHENTICATE,
        DATE,
        RETRY_AFTER,
    ];
    let text = name.as_str();
    fixed.contains(name)
        || PER_EXCHANGE.contains(&text)
        || PER_EXCHANGE_PREFIXES.iter().any(|p| text.starts_with(p))
        || name == IDEMPOTENT_REPLAYED
}

/// The headers of `headers` that a record keeps, in order, as text. A value that is not
/// UTF-8 cannot be kept as text; it is left out with a warning naming the header.
pub(crate) fn to_store(headers: &HeaderMap, config: &Config, key: &str) -> Vec<(String, String)> {
    let mut kept = Vec::new();
    for (name, value) in headers {
        if !config.replays_header(name) {
            continue;
        }
        match std::str::from_utf8(value.as_bytes()) {
            Ok(text) => kept.push((name.as_str().to_owned(), text.to_owned())),
            Err(_) => tracing::warn!(
                key,
                header = name.as_str(),
                "response header is not UTF-8 text; it is left out of the stored response"
            ),
        }
    }
    kept
}

/// Rebuilds the stored `headers` for a replay. Each is checked against the layer's list
/// again, so a record written under an older configuration leaks nothing now denied.
pub(crate) fn from_store(stored: &[(String, String)], config: &Config, key: &str) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(stored.len() + 1);
    for (name, value) in stored {
        let parsed = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        );
        match parsed {
            (Ok(name), Ok(value)) if config.replays_header(&name) => {
                map.append(name, value);
            }
            (Ok(_), Ok(_)) => {}
            _ => tracing::warn!(
                key,
                header = name.as_str(),
                "stored header is not a valid HTTP header; it is left out of the replay"
            ),
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_exchange_headers_are_recognised_by_name_and_family() {
        for name in [
            "set-cookie",
            "authorization",
            "www-authenticate",
            "proxy-authenticate",
            "date",
            "x-request-id",
            "x-ratelimit-remaining",
            "x-rate-limit-reset",
            "ratelimit-remaining",
            "ratelimit",
            "retry-after",
            "content-length",
            "idempotent-replayed",
        ] {
            assert!(is_per_exchange(&HeaderName::from_static(name)), "{name}");
        }
        for name in ["content-type", "location", "etag", "link", "x-total-count"] {
            assert!(!is_per_exchange(&HeaderName::from_static(name)), "{name}");
        }
    }
}
