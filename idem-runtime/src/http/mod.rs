//! An HTTP layer for tower and axum that honours the `Idempotency-Key` header, as the IETF
//! draft *The Idempotency-Key HTTP Header Field* describes it.
//!
//! Enabled by the `tower` feature; the `axum` feature adds axum's matched route as the
//! default route of a request.
//!
//! # Quick start
//!
//! ```
//! # #[cfg(feature = "axum")] {
//! use axum::{routing::post, Router};
//! use idem_runtime::http::IdempotencyLayer;
//! use idem_runtime::IdempotencyService;
//!
//! let service = IdempotencyService::in_memory();
//! let layer = IdempotencyLayer::builder(service)
//!     .required(true)
//!     .principal(|parts: &http::request::Parts| {
//!         // Whatever authentication established; here an extension set by an auth layer.
//!         parts.extensions.get::<String>().cloned()
//!     })
//!     .build()
//!     .expect("valid settings");
//!
//! let app: Router = Router::new()
//!     .route("/payments", post(|| async { "charged" }))
//!     .route_layer(layer);
//! # }
//! ```
//!
//! A client sends `Idempotency-Key: "8e03978e-40d5-43e8-bc93-6894a57f9324"` (a quoted
//! Structured Field string, or the bare text) with a POST. The first request with a key runs
//! the handler; every retry gets the stored response, marked `Idempotent-Replayed: true`.
//!
//! # Which requests engage
//!
//! Requests whose method is one of [`methods`](IdempotencyLayerBuilder::methods) (default
//! POST and PATCH) and that carry the key header. Other methods pass through untouched. An
//! engaged request without the header passes through too, unless the layer is
//! [`required`](IdempotencyLayerBuilder::required).
//!
//! A key names a record within a *scope*: the principal (see [`ExtractPrincipal`]; default
//! none), the method and the route (see [`ExtractRoute`]; default axum's matched path, else
//! the request path). The same key sent by two users, or to two routes, names two records.
//! [`record_key`] gives the key a record is kept under.
//!
//! A record also keeps the request's *fingerprint*: method, route, concrete path and query,
//! and body. JSON bodies are compared as JSON values, so key order and whitespace do not
//! matter; other bodies as bytes together with their media type. A retry must match it.
//!
//! # Status codes
//!
//! | situation | response |
//! |---|---|
//! | first request with a key | the handler's response |
//! | retry after a recorded response | that response: same status, same body bytes, allow-listed headers, plus `Idempotent-Replayed: true` |
//! | key missing and required | 400 `missing-key` |
//! | key header malformed, repeated, empty, or breaking a key rule (e.g. over 255 bytes) | 400 `malformed-key` |
//! | request body over [`max_request_bytes`](IdempotencyLayerBuilder::max_request_bytes) | 413 `body-too-large` |
//! | key first used with another fingerprint | 422 `fingerprint-mismatch` (never retry it) |
//! | the first request still runs when the wait budget ends | 409 `in-progress`, with `Retry-After` |
//! | the first request's response was recorded as not replayable | 410 `not-replayable` |
//! | the store cannot be reached (fail-closed) | 503 `store-unavailable`, with `Retry-After` |
//! | the handler panicked | 500 `internal`, and the key follows the 5xx policy |
//!
//! The layer's own answers have problem-details bodies (RFC 9457,
//! `application/problem+json`) with `type`, `title`, `status` and `detail`; `type` is
//! [`problem_type_base`](IdempotencyLayerBuilder::problem_type_base) followed by the
//! problem's name above. Waiting duplicates wait for the first request up to the wait
//! budget of the service (or of [`call_options`](IdempotencyLayerBuilder::call_options));
//! with `CallOptions::wait(false)` they get 409 at once, with the owner's remaining lease
//! as `Retry-After`.
//!
//! # What is recorded
//!
//! By status, configurable per class ([`on_class`](IdempotencyLayerBuilder::on_class)) and
//! per status ([`on_status`](IdempotencyLayerBuilder::on_status)):
//!
//! - 2xx and 3xx are recorded as completed.
//! - 4xx are recorded as failures (kept for the service's failure TTL) and replayed: the
//!   handler looked at the request and refused it, and it would refuse it again. Except 401,
//!   403, 407, 408, 425 and 429, which say the request was stopped before the handler acted
//!   (credentials, a timeout, a rate limit); they release the key so that the retry runs.
//! - 5xx release the key: the next request with it runs the handler again. Handlers whose
//!   5xx can follow a side effect (a payment captured, then a failure) should record 5xx
//!   for their route or return a status that is recorded.
//!
//! A response is stored with its status, its body byte for byte, and only the headers that
//! describe the representation: Content-Type, Location, Content-Location, ETag,
//! Last-Modified and Link, plus any added with
//! [`replay_header`](IdempotencyLayerBuilder::replay_header). Set-Cookie, Authorization,
//! WWW-Authenticate, Proxy-Authenticate, Date, Retry-After, request and trace ids and
//! rate-limit headers are never stored, whatever the settings; the first client still gets
//! them.
//!
//! # Streaming responses and disconnects
//!
//! Once a request owns its key, the handler runs on a task of its own. Its response head
//! goes to the client at once and its body is streamed through while a copy is kept. When
//! the body ends, the copy is stored. A client that hangs up does not stop the handler or
//! the recording: its retry is answered from the record.
//!
//! A body larger than [`max_response_bytes`](IdempotencyLayerBuilder::max_response_bytes)
//! still reaches the client whole, but it is not stored and the key is *released*: a retry
//! runs the handler again. The same holds for a body that fails mid-stream and for a
//! response with trailers. A record is never stored empty or truncated. Raise the cap, or do
//! not engage the layer, for routes whose large responses follow a side effect. (Recording
//! such a key as not replayable instead would need a way to store a tombstone through
//! [`Idempotency`], which offers none besides an over-cap completion.)
//!
//! # Known shortcomings
//!
//! - A replay is logged as a `debug` event naming the key and scope; no metric is
//!   exported, since idem has no metrics dependency.
//! - Task-local values of the caller (tokio `task_local!`) are not visible to the handler,
//!   which runs on its own task; the tracing span is carried over.

mod body;
mod config;
mod headers;
mod key_header;
mod middleware;
mod owner;
mod problem;
mod replay;
mod request;
mod scope;

use std::sync::Arc;

use tower::Layer;

pub use body::{RequestBody, ResponseBody};
pub use config::{
    IdempotencyLayerBuilder, LayerConfigError, ResponsePolicy, StatusClass, DEFAULT_HEADER,
    DEFAULT_MAX_BYTES,
};
pub use headers::IDEMPOTENT_REPLAYED;
pub use key_header::{parse_key, read_key, MalformedKey};
pub use middleware::IdempotencyMiddleware;
pub use scope::{
    record_key, DefaultRoute, ExtractPrincipal, ExtractRoute, NoPrincipal, MAX_READABLE_SCOPE,
};

use crate::service::Idempotency;

/// A tower [`Layer`] that makes the requests it engages safe to retry; see the
/// [module docs](self).
#[derive(Clone)]
pub struct IdempotencyLayer {
    service: Arc<dyn Idempotency>,
    config: Arc<config::Config>,
}

impl std::fmt::Debug for IdempotencyLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("header", &self.config.header)
            .field("required", &self.config.required)
            .field("methods", &self.config.methods)
            .finish_non_exhaustive()
    }
}

impl IdempotencyLayer {
    /// A layer over `service` with the default settings.
    pub fn new(service: impl Idempotency + 'static) -> Self {
        IdempotencyLayer::builder(service)
            .build()
            .expect("the default settings are valid")
    }

    /// A builder over `service`, starting from the default settings.
    pub fn builder(service: impl Idempotency + 'static) -> IdempotencyLayerBuilder {
        IdempotencyLayerBuilder::new(Arc::new(service))
    }

    pub(crate) fn from_parts(service: Arc<dyn Idempotency>, config: Arc<config::Config>) -> Self {
        IdempotencyLayer { service, config }
    }

    #[cfg(test)]
    pub(crate) fn config(&self) -> Arc<config::Config> {
        Arc::clone(&self.config)
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = IdempotencyMiddleware<S>;

    fn layer(&self, inner: S) -> Self::Service {
        IdempotencyMiddleware::new(inner, Arc::clone(&self.service), Arc::clone(&self.config))
    }
}
