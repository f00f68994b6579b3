//! The tower service that puts the idempotency protocol in front of a handler.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower::Service;

use crate::error::BoxError;
use crate::http::config::Config;
use crate::http::key_header::read_key;
use crate::http::owner::{self, Owner};
use crate::http::problem::Refusal;
use crate::http::replay::replay;
use crate::http::request::{read_body, request_fingerprint, ReadError};
use crate::http::scope::record_key;
use crate::http::{RequestBody, ResponseBody};
use crate::record::RecordState;
use crate::service::{CheckOutcome, Idempotency};

/// The service that [`IdempotencyLayer`](crate::http::IdempotencyLayer) wraps around an
/// inner service: it answers retries from the store and runs each request once per key.
pub struct IdempotencyMiddleware<S> {
    inner: S,
    service: Arc<dyn Idempotency>,
    config: Arc<Config>,
}

impl<S: Clone> Clone for IdempotencyMiddleware<S> {
    fn clone(&self) -> Self {
        IdempotencyMiddleware {
            inner: self.inner.clone(),
            service: Arc::clone(&self.service),
            config: Arc::clone(&self.config),
        }
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for IdempotencyMiddleware<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyMiddleware")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> IdempotencyMiddleware<S> {
    pub(crate) fn new(inner: S, service: Arc<dyn Idempotency>, config: Arc<Config>) -> Self {
        IdempotencyMiddleware {
            inner,
            service,
            config,
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B, ResB> Service<Request<B>> for IdempotencyMiddleware<S>
where
    S: Service<Request<RequestBody>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<ResponseBody>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The instance polled ready is the one that must be called; keep a fresh clone.
        let fresh = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, fresh);
        let service = Arc::clone(&self.service);
        let config = Arc::clone(&self.config);
        Box::pin(handle(inner, service, config, request))
    }
}

async fn handle<S, B, ResB>(
    inner: S,
    service: Arc<dyn Idempotency>,
    config: Arc<Config>,
    request: Request<B>,
) -> Result<Response<ResponseBody>, S::Error>
where
    S: Service<Request<RequestBody>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    if !config.engages(request.method()) {
        return pass_through(inner, request.map(RequestBody::new)).await;
    }
    let (parts, body) = request.into_parts();
    let key = match read_key(&parts.headers, &config.header) {
        Ok(Some(key)) => key,
        Ok(None) if config.required => return Ok(Refusal::MissingKey.into_response(&config)),
        Ok(None) => {
            return pass_through(inner, Request::from_parts(parts, RequestBody::new(body))).await
        }
        Err(malformed) => return Ok(Refusal::MalformedKey(malformed).into_response(&config)),
    };

    let body = match read_body(&parts, body, config.max_request_bytes).await {
        Ok(body) => body,
        Err(ReadError::TooLarge) => {
            let limit = config.max_request_bytes;
            return Ok(Refusal::BodyTooLarge { limit }.into_response(&config));
        }
        Err(ReadError::Broken(error)) => {
            tracing::debug!(%error, "request body failed while it was read");
            return Ok(Refusal::BodyUnreadable.into_response(&config));
        }
    };
    let route = config.route.route(&parts);
    let principal = config.principal.principal(&parts);
    let key = record_key(principal.as_deref(), &parts.method, &route, &key);
    let Ok(fingerprint) = request_fingerprint(&parts, &route, &body) else {
        // Request fingerprints hold only text, bytes and JSON values, all of them encodable.
        return Ok(Refusal::Internal("the request cannot be fingerprinted").into_response(&config));
    };
    let request = Request::from_parts(parts, RequestBody::full(body));

    let outcome = service
        .check_and_lock(&key, &fingerprint, &config.call_options)
        .await;
    match outcome {
        Ok(CheckOutcome::Acquired(lease)) => {
            let owner = Owner {
                service,
                config: Arc::clone(&config),
                lease,
            };
            match owner::spawn(owner, inner, request).await {
                Ok(answer) => answer,
                // The owner task ended without an answer: the runtime is shutting down.
                Err(_) => Ok(Refusal::Internal("the request task ended").into_response(&config)),
            }
        }
        Ok(CheckOutcome::Completed(record)) | Ok(CheckOutcome::Failed(record)) => {
            match &record.state {
                RecordState::Completed { response, .. } => Ok(replay(&key, response, &config)),
                RecordState::Failed { error, .. } => Ok(replay(&key, error, &config)),
                _ => Ok(Refusal::Internal("the store answered an unfinished record")
                    .into_response(&config)),
            }
        }
        Ok(CheckOutcome::NotReplayable(_)) => Ok(Refusal::NotReplayable.into_response(&config)),
        Ok(CheckOutcome::Mismatch { .. }) => Ok(Refusal::Mismatch.into_response(&config)),
        Ok(CheckOutcome::InProgress { retry_after }) => {
            Ok(Refusal::InProgress { retry_after }.into_response(&config))
        }
        Ok(CheckOutcome::Bypassed { .. }) => {
            // The service logged the bypass; the request runs unprotected, as configured.
            pass_through(inner, request).await
        }
        Err(error) => {
            tracing::debug!(key = %key, %error, "request refused");
            Ok(Refusal::from_error(&error, &config).into_response(&config))
        }
    }
}

async fn pass_through<S, ResB>(
    mut inner: S,
    request: Request<RequestBody>,
) -> Result<Response<ResponseBody>, S::Error>
where
    S: Service<Request<RequestBody>, Response = Response<ResB>>,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    let response = inner.call(request).await?;
    Ok(response.map(ResponseBody::new))
}
