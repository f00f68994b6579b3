//! Scopes: whose key it is (principal), on which route and method.
//!
//! A key names a record only within its scope, so two clients, or two routes, that happen to
//! pick the same key never see each other's responses. The scope is text laid out so that
//! no two (principal, method, route) triples share one:
//!
//! ```text
//! http:<principal>:<method>:<route>
//! ```
//!
//! where `<principal>` is `-` for no principal, or `<byte length>=<principal>`; the method
//! is an HTTP token, which has no `:`, so the route is everything after it. A scope that the
//! key rules would refuse (longer than [`MAX_READABLE_SCOPE`] bytes, or with control
//! characters or trailing whitespace from an extractor) is replaced by `http#` and the hex
//! SHA-256 of its text, which keeps it distinct and valid.

use std::borrow::Cow;

use http::request::Parts;
use http::Method;
use sha2::{Digest, Sha256};

use crate::key::Key;

/// The longest scope kept as readable text; longer ones are replaced by their digest.
pub const MAX_READABLE_SCOPE: usize = 200;

/// Tells who sends a request, from its head: an account id, a tenant, an API key's id.
///
/// Implemented for every `Fn(&Parts) -> Option<String>`. `None` means anonymous: all
/// anonymous requests share one key space per route. Read the principal from what
/// authentication established (an extension set by an auth layer that runs first, or a
/// verified token), never from a header the client can set to anything it likes.
pub trait ExtractPrincipal: Send + Sync + 'static {
    /// The principal of the request with head `parts`.
    fn principal(&self, parts: &Parts) -> Option<String>;
}

impl<F> ExtractPrincipal for F
where
    F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
{
    fn principal(&self, parts: &Parts) -> Option<String> {
        self(parts)
    }
}

/// Tells which route a request belongs to, from its head: a template such as
/// `/accounts/{id}/charges`, so that the key space is per route, not per URL.
///
/// Implemented for every `Fn(&Parts) -> String`.
pub trait ExtractRoute: Send + Sync + 'static {
    /// The route of the request with head `parts`.
    fn route(&self, parts: &Parts) -> String;
}

impl<F> ExtractRoute for F
where
    F: Fn(&Parts) -> String + Send + Sync + 'static,
{
    fn route(&self, parts: &Parts) -> String {
        self(parts)
    }
}

/// No principal: every request is anonymous.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPrincipal;

impl ExtractPrincipal for NoPrincipal {
    fn principal(&self, _parts: &Parts) -> Option<String> {
        None
    }
}

/// axum's `MatchedPath` when the `axum` feature is on and the request went through a
/// router, else the request path.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultRoute;

impl ExtractRoute for DefaultRoute {
    fn route(&self, parts: &Parts) -> String {
        #[cfg(feature = "axum")]
        if let Some(matched) = parts.extensions.get::<axum::extract::MatchedPath>() {
            return matched.as_str().to_owned();
        }
        parts.uri.path().to_owned()
    }
}

/// The key under which the layer keeps the record of a request with idempotency key `key`,
/// sent by `principal` with `method` to `route`: for reading or deleting a record by hand
/// with [`Idempotency::get`](crate::Idempotency::get) and
/// [`Idempotency::delete`](crate::Idempotency::delete).
///
/// ```
/// use http::Method;
/// use idem_runtime::http::record_key;
///
/// let key = record_key(Some("acct_7"), &Method::POST, "/payments", "k-1");
/// assert_eq!(key.scope(), "http:6=acct_7:POST:/payments");
/// assert_eq!(key.id(), "k-1");
/// ```
pub fn record_key(principal: Option<&str>, method: &Method, route: &str, key: &str) -> Key {
    Key::scoped(scope(principal, method, route), key)
}

fn scope(principal: Option<&str>, method: &Method, route: &str) -> String {
    let principal: Cow<'_, str> = match principal {
        None => "-".into(),
        Some(p) => format!("{}={p}", p.len()).into(),
    };
    let text = format!("http:{principal}:{}:{route}", method.as_str());
    let refused = text.len() > MAX_READABLE_SCOPE
        || text.chars().any(char::is_control)
        || text.ends_with(char::is_whitespace);
    if !refused {
        return text;
    }
    let digest = Sha256::digest(text.as_bytes());
    let mut hashed = String::with_capacity(5 + 64);
    hashed.push_str("http#");
    for byte in digest {
        hashed.push_str(&format!("{byte:02x}"));
    }
    hashed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scope_layout_is_pinned() {
        assert_eq!(scope(None, &Method::POST, "/pay"), "http:-:POST:/pay");
        assert_eq!(
            scope(Some("alice"), &Method::PATCH, "/users/{id}"),
            "http:5=alice:PATCH:/users/{id}"
        );
    }

    #[test]
    fn separators_inside_principals_and_routes_cannot_collide() {
        let pairs = [
            (
                scope(Some("a:POST:/x"), &Method::POST, "/y"),
                scope(Some("a"), &Method::POST, "/x:POST:/y"),
            ),
            (
                scope(Some("-"), &Method::POST, "/x"),
                scope(None, &Method::POST, "/x"),
            ),
            (
                scope(Some(""), &Method::POST, "/x"),
                scope(None, &Method::POST, "/x"),
            ),
            (
                scope(Some("1=a"), &Method::POST, "/x"),
                scope(Some("a"), &Method::POST, "/x"),
            ),
        ];
        for (a, b) in pairs {
            assert_ne!(a, b);
        }
    }

    #[test]
    fn scopes_the_key_rules_would_refuse_are_digested() {
        let long = "/r".repeat(150);
        let digested = scope(None, &Method::POST, &long);
        assert!(digested.starts_with("http#"), "{digested}");
        assert_eq!(digested.len(), 5 + 64);
        assert_eq!(digested, scope(None, &Method::POST, &long));
        assert_ne!(digested, scope(None, &Method::POST, &"/r".repeat(151)));

        let control = scope(Some("al\nice"), &Method::POST, "/x");
        assert!(control.starts_with("http#"));
        assert_eq!(Key::scoped(control, "k").validate(255), Ok(()));
    }
}
