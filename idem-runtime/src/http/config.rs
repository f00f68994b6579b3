//! Settings of the HTTP layer, the builder that checks them, and what each status does to a key.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method, StatusCode};

use crate::config::{CallOptions, FailurePolicy};
use crate::http::headers;
use crate::http::scope::{DefaultRoute, ExtractPrincipal, ExtractRoute, NoPrincipal};
use crate::http::IdempotencyLayer;
use crate::service::Idempotency;

/// The default request header that carries the key.
pub const DEFAULT_HEADER: HeaderName = HeaderName::from_static("idempotency-key");

/// The default cap on a request body, and on a response body stored for replay: 1 MiB.
pub const DEFAULT_MAX_BYTES: usize = 1024 * 1024;

/// A class of status codes, for [`IdempotencyLayerBuilder::on_class`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusClass {
    /// 2xx.
    Success,
    /// 3xx.
    Redirection,
    /// 4xx.
    ClientError,
    /// 5xx.
    ServerError,
}

impl StatusClass {
    /// The class of `status`; `None` for 1xx and for codes above 599, which are never stored.
    pub fn of(status: StatusCode) -> Option<StatusClass> {
        match status.as_u16() {
            200..=299 => Some(StatusClass::Success),
            300..=399 => Some(StatusClass::Redirection),
            400..=499 => Some(StatusClass::ClientError),
            500..=599 => Some(StatusClass::ServerError),
            _ => None,
        }
    }
}

/// What a handler's response does to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResponsePolicy {
    /// Store the response and replay it to every retry with the same key.
    Record,
    /// Free the key: the next request with it runs the handler again.
    Release,
}

/// 4xx statuses released by default although 4xx is recorded: each says the request was
/// refused before the handler acted (authentication, a timeout, rate limiting), so the same
/// request can succeed later and must not be pinned to the refusal.
const RELEASED_CLIENT_ERRORS: [StatusCode; 6] = [
    StatusCode::UNAUTHORIZED,
    StatusCode::FORBIDDEN,
    StatusCode::PROXY_AUTHENTICATION_REQUIRED,
    StatusCode::REQUEST_TIMEOUT,
    StatusCode::TOO_EARLY,
    StatusCode::TOO_MANY_REQUESTS,
];

/// A layer setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LayerConfigError {
    /// A header asked for in replays is one that must never be replayed.
    #[error(
        "header `{0}` is per exchange (cookies, credentials, dates, request ids, rate limits) \
         and is never stored or replayed; remove it from `replay_header`"
    )]
    ForbiddenReplayHeader(HeaderName),
    /// A size cap is zero.
    #[error("`{setting}` must be at least 1 byte")]
    ZeroLimit {
        /// The setting's name.
        setting: &'static str,
    },
    /// No method engages the layer, so it would do nothing.
    #[error("no method engages the layer; give `methods` at least one method, e.g. POST")]
    NoMethods,
    /// The Retry-After hint is zero.
    #[error("`retry_after` must be at least 1 second")]
    ZeroRetryAfter,
}

/// The checked settings that every request of one layer shares.
pub(crate) struct Config {
    pub header: HeaderName,
    pub required: bool,
    pub methods: Vec<Method>,
    pub principal: Arc<dyn ExtractPrincipal>,
    pub route: Arc<dyn ExtractRoute>,
    pub max_request_bytes: usize,
    pub max_response_bytes: usize,
    pub replay_headers: Vec<HeaderName>,
    pub classes: [(StatusClass, ResponsePolicy); 4],
    pub statuses: Vec<(StatusCode, ResponsePolicy)>,
    pub call_options: CallOptions,
    pub retry_after: Duration,
    pub problem_type_base: String,
}

impl Config {
    /// Whether requests with `method` go through the idempotency protocol.
    pub fn engages(&self, method: &Method) -> bool {
        self.methods.contains(method)
    }

    /// What a response with `status` does to its key.
    pub fn policy_for(&self, status: StatusCode) -> ResponsePolicy {
        if let Some((_, policy)) = self.statuses.iter().find(|(s, _)| *s == status) {
            return *policy;
        }
        let Some(class) = StatusClass::of(status) else {
            return ResponsePolicy::Release;
        };
        self.classes
            .iter()
            .find(|(c, _)| *c == class)
            .map_or(ResponsePolicy::Release, |(_, policy)| *policy)
    }

    /// Whether a header named `name` is stored with a recorded response and replayed.
    pub fn replays_header(&self, name: &HeaderName) -> bool {
        !headers::is_per_exchange(name) && self.replay_headers.contains(name)
    }
}

/// Builds an [`IdempotencyLayer`], checking its settings. Start with
/// [`IdempotencyLayer::builder`].
pub struct IdempotencyLayerBuilder {
    service: Arc<dyn Idempotency>,
    header: HeaderName,
    required: bool,
    methods: Vec<Method>,
    principal: Arc<dyn ExtractPrincipal>,
    route: Arc<dyn ExtractRoute>,
    max_request_bytes: usize,
    max_response_bytes: usize,
    replay_headers: Vec<HeaderName>,
    classes: [(StatusClass, ResponsePolicy); 4],
    statuses: Vec<(StatusCode, ResponsePolicy)>,
    call_options: CallOptions,
    retry_after: Duration,
    problem_type_base: String,
}

impl std::fmt::Debug for IdempotencyLayerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyLayerBuilder")
            .field("header", &self.header)
            .field("required", &self.required)
            .field("methods", &self.methods)
            .field("max_request_bytes", &self.max_request_bytes)
            .field("max_response_bytes", &self.max_response_bytes)
            .finish_non_exhaustive()
    }
}

impl IdempotencyLayerBuilder {
    pub(crate) fn new(service: Arc<dyn Idempotency>) -> Self {
        IdempotencyLayerBuilder {
            service,
            header: DEFAULT_HEADER,
            required: false,
            methods: vec![Method::POST, Method::PATCH],
            principal: Arc::new(NoPrincipal),
            route: Arc::new(DefaultRoute),
            max_request_bytes: DEFAULT_MAX_BYTES,
            max_response_bytes: DEFAULT_MAX_BYTES,
            replay_headers: headers::DEFAULT_REPLAYED.to_vec(),
            classes: [
                (StatusClass::Success, ResponsePolicy::Record),
                (StatusClass::Redirection, ResponsePolicy::Record),
                (StatusClass::ClientError, ResponsePolicy::Record),
                (StatusClass::ServerError, ResponsePolicy::Release),
            ],
            statuses: RELEASED_CLIENT_ERRORS
                .iter()
                .map(|s| (*s, ResponsePolicy::Release))
                .collect(),
            call_options: CallOptions::new(),
            retry_after: Duration::from_secs(1),
            problem_type_base: "urn:idem:problem:".to_owned(),
        }
    }

    /// The request header that carries the key. Default `Idempotency-Key`.
    pub fn header_name(mut self, name: HeaderName) -> Self {
        self.header = name;
        self
    }

    /// Whether an engaged request without a key is refused with 400. Default off: such a
    /// request passes through unprotected.
    pub fn required(mut self, required: bool) -> Self {
        self.required = required;
        self
    }

    /// The methods that engage the layer; others pass through untouched. Default POST and
    /// PATCH (the methods that are not idempotent by definition).
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = methods.into_iter().collect();
        self
    }

    /// Who sends the request, so that one client's key never answers another's request.
    /// Default: nobody (every request shares one key space per route).
    pub fn principal(mut self, extract: impl ExtractPrincipal) -> Self {
        self.principal = Arc::new(extract);
        self
    }

    /// The route a request belongs to. Default: axum's `MatchedPath` when the `axum` feature
    /// is on and the layer runs inside a router, else the request path.
    pub fn route(mut self, extract: impl ExtractRoute) -> Self {
        self.route = Arc::new(extract);
        self
    }

    /// The largest request body read, in bytes; larger requests get 413. Default 1 MiB.
    pub fn max_request_bytes(mut self, bytes: usize) -> Self {
        self.max_request_bytes = bytes;
        self
    }

    /// The largest response body stored for replay, in bytes. A larger response is streamed
    /// to its client whole, and its key is released. Default 1 MiB. Keep it below the
    /// service's `max_response_bytes`, over which the service records the key as not
    /// replayable instead.
    pub fn max_response_bytes(mut self, bytes: usize) -> Self {
        self.max_response_bytes = bytes;
        self
    }

    /// Adds a response header to store and replay, beyond Content-Type, Location,
    /// Content-Location, ETag, Last-Modified and Link. Per-exchange headers (cookies,
    /// credentials, Date, request ids, rate limits) are refused by [`build`](Self::build).
    pub fn replay_header(mut self, name: HeaderName) -> Self {
        if !self.replay_headers.contains(&name) {
            self.replay_headers.push(name);
        }
        self
    }

    /// What responses of `class` do to their key. Defaults: 2xx, 3xx and 4xx are recorded,
    /// 5xx released.
    pub fn on_class(mut self, class: StatusClass, policy: ResponsePolicy) -> Self {
        for entry in &mut self.classes {
            if entry.0 == class {
                entry.1 = policy;
            }
        }
        self
    }

    /// What responses with exactly `status` do to their key, before their class's policy.
    /// Defaults: 401, 403, 407, 408, 425 and 429 are released.
    pub fn on_status(mut self, status: StatusCode, policy: ResponsePolicy) -> Self {
        self.statuses.retain(|(s, _)| *s != status);
        self.statuses.push((status, policy));
        self
    }

    /// Options of every call to the service (lease, wait budget, TTLs). The failure policy
    /// is set by the layer, which records failures by status (see
    /// [`on_class`](Self::on_class)).
    pub fn call_options(mut self, options: CallOptions) -> Self {
        self.call_options = options;
        self
    }

    /// The `Retry-After` sent with 503 (store unavailable) and with 409 when the wait budget
    /// ran out. Default 1 second. A 409 for a call that does not wait carries the owner's
    /// remaining lease instead.
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = after;
        self
    }

    /// The prefix of the `type` URI in problem-details bodies; the problem's name follows
    /// it (e.g. `fingerprint-mismatch`). Default `urn:idem:problem:`.
    pub fn problem_type_base(mut self, base: impl Into<String>) -> Self {
        self.problem_type_base = base.into();
        self
    }

    /// Checks the settings and builds the layer.
    pub fn build(self) -> Result<IdempotencyLayer, LayerConfigError> {
        if let Some(name) = self
            .replay_headers
            .iter()
            .find(|n| headers::is_per_exchange(n))
        {
            return Err(LayerConfigError::ForbiddenReplayHeader(name.clone()));
        }
        if self.max_request_bytes == 0 {
            return Err(LayerConfigError::ZeroLimit {
                setting: "max_request_bytes",
            });
        }
        if self.max_response_bytes == 0 {
            return Err(LayerConfigError::ZeroLimit {
                setting: "max_response_bytes",
            });
        }
        if self.methods.is_empty() {
            return Err(LayerConfigError::NoMethods);
        }
        if self.retry_after < Duration::from_secs(1) {
            return Err(LayerConfigError::ZeroRetryAfter);
        }
        let config = Config {
            header: self.header,
            required: self.required,
            methods: self.methods,
            principal: self.principal,
            route: self.route,
            max_request_bytes: self.max_request_bytes,
            max_response_bytes: self.max_response_bytes,
            replay_headers: self.replay_headers,
            classes: self.classes,
            statuses: self.statuses,
            // Failures are recorded or released by the layer's status policy, so every
            // lease must be able to record one.
            call_options: self.call_options.failure_policy(FailurePolicy::Record),
            retry_after: self.retry_after,
            problem_type_base: self.problem_type_base,
        };
        Ok(IdempotencyLayer::from_parts(self.service, Arc::new(config)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IdempotencyService;

    fn config() -> Arc<Config> {
        IdempotencyLayer::new(IdempotencyService::in_memory()).config()
    }

    #[test]
    fn default_policies_record_4xx_and_release_5xx_and_transient_refusals() {
        let config = config();
        assert_eq!(config.policy_for(StatusCode::OK), ResponsePolicy::Record);
        assert_eq!(
            config.policy_for(StatusCode::SEE_OTHER),
            ResponsePolicy::Record
        );
        assert_eq!(
            config.policy_for(StatusCode::BAD_REQUEST),
            ResponsePolicy::Record
        );
        assert_eq!(
            config.policy_for(StatusCode::PAYMENT_REQUIRED),
            ResponsePolicy::Record
        );
        for status in RELEASED_CLIENT_ERRORS {
            assert_eq!(
                config.policy_for(status),
                ResponsePolicy::Release,
                "{status}"
            );
        }
        assert_eq!(
            config.policy_for(StatusCode::INTERNAL_SERVER_ERROR),
            ResponsePolicy::Release
        );
        assert_eq!(
            config.policy_for(StatusCode::SWITCHING_PROTOCOLS),
            ResponsePolicy::Release
        );
    }

    #[test]
    fn a_status_override_beats_its_class() {
        let layer = IdempotencyLayer::builder(IdempotencyService::in_memory())
            .on_class(StatusClass::ServerError, ResponsePolicy::Record)
            .on_status(StatusCode::SERVICE_UNAVAILABLE, ResponsePolicy::Release)
            .on_status(StatusCode::TOO_MANY_REQUESTS, ResponsePolicy::Record)
            .build()
            .unwrap();
        let config = layer.config();
        assert_eq!(
            config.policy_for(StatusCode::BAD_GATEWAY),
            ResponsePolicy::Record
        );
        assert_eq!(
            config.policy_for(StatusCode::SERVICE_UNAVAILABLE),
            ResponsePolicy::Release
        );
        assert_eq!(
            config.policy_for(StatusCode::TOO_MANY_REQUESTS),
            ResponsePolicy::Record
        );
    }

    #[test]
    fn per_exchange_headers_cannot_be_allowed_into_replays() {
        for name in [
            "set-cookie",
            "date",
            "x-ratelimit-remaining",
            "www-authenticate",
        ] {
            let result = IdempotencyLayer::builder(IdempotencyService::in_memory())
                .replay_header(HeaderName::from_static(name))
                .build();
            assert_eq!(
                result.err(),
                Some(LayerConfigError::ForbiddenReplayHeader(
                    HeaderName::from_static(name)
                )),
                "{name}"
            );
        }
    }

    #[test]
    fn unusable_limits_are_refused_by_name() {
        let build = |b: IdempotencyLayerBuilder| b.build().err();
        let fresh = || IdempotencyLayer::builder(IdempotencyService::in_memory());
        assert_eq!(
            build(fresh().max_request_bytes(0)),
            Some(LayerConfigError::ZeroLimit {
                setting: "max_request_bytes"
            })
        );
        assert_eq!(
            build(fresh().max_response_bytes(0)),
            Some(LayerConfigError::ZeroLimit {
                setting: "max_response_bytes"
            })
        );
        assert_eq!(
            build(fresh().methods([])),
            Some(LayerConfigError::NoMethods)
        );
        assert_eq!(
            build(fresh().retry_after(Duration::from_millis(500))),
            Some(LayerConfigError::ZeroRetryAfter)
        );
    }

    #[test]
    fn the_layer_always_records_failures_so_it_can_decide_by_status() {
        let layer = IdempotencyLayer::builder(IdempotencyService::in_memory())
            .call_options(CallOptions::new().failure_policy(FailurePolicy::Release))
            .build()
            .unwrap();
        assert_eq!(
            layer.config().call_options.failure_policy,
            Some(FailurePolicy::Record)
        );
    }
}
