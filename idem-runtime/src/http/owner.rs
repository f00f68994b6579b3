//! The owner's side of a request: run the handler on a task of its own, stream its response
//! to the client while keeping a copy, then record the response or release the key.
//!
//! The task, not the client's connection, owns the lease. A client that hangs up, times
//! out or is cancelled by a proxy leaves the handler running to its end and its response
//! stored, so its retry is answered from the record instead of running the handler again.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::{mpsc, oneshot};
use tower::Service;
use tracing::Instrument;

use crate::error::{BoxError, Error};
use crate::http::config::{Config, ResponsePolicy, StatusClass};
use crate::http::headers;
use crate::http::problem::Refusal;
use crate::http::{RequestBody, ResponseBody};
use crate::lease::Lease;
use crate::record;
use crate::service::{keep_alive, Idempotency};

/// How many body frames may wait for a slow client before the recorder waits too.
const FRAMES_IN_FLIGHT: usize = 16;

/// How long the recorder waits for a client to take one frame. A client that takes longer
/// is cut off, so that a connection held open without reading cannot hold the key forever.
const CLIENT_STALL: Duration = Duration::from_secs(30);

/// The answer for the client: the handler's response, or its service's error.
pub(crate) type Answer<E> = oneshot::Receiver<Result<Response<ResponseBody>, E>>;

/// What the owner needs to finish a request: the service, the layer's settings and the lease.
pub(crate) struct Owner {
    pub service: Arc<dyn Idempotency>,
    pub config: Arc<Config>,
    pub lease: Lease,
}

/// Runs `request` through `inner` on a new task under `owner`'s lease, and answers with the
/// response once its head is in.
pub(crate) fn spawn<S, ResB>(
    owner: Owner,
    inner: S,
    request: Request<RequestBody>,
) -> Answer<S::Error>
where
    S: Service<Request<RequestBody>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    let (reply, answer) = oneshot::channel();
    let task = owner.run(inner, request, reply);
    tokio::spawn(task.instrument(tracing::Span::current()));
    answer
}

/// How reading the handler's body ended.
enum Drained {
    /// Within the cap, without trailers: the whole body.
    Whole(Bytes),
    /// Over the cap after `size` bytes.
    OverCap { size: usize },
    /// The body ended with trailers, which a record cannot keep.
    Trailers,
    /// The body stream failed.
    Broken,
}

impl Owner {
    async fn run<S, ResB>(
        self,
        mut inner: S,
        request: Request<RequestBody>,
        reply: oneshot::Sender<Result<Response<ResponseBody>, S::Error>>,
    ) where
        S: Service<Request<RequestBody>, Response = Response<ResB>>,
        ResB: Body<Data = Bytes> + Send + 'static,
        ResB::Error: Into<BoxError>,
    {
        // `call` runs on the first poll, inside `catch_unwind`, so a service that panics
        // before returning its future releases the key too.
        let call = catch_unwind(async move { inner.call(request).await });
        let response = match keep_alive(&*self.service, &self.lease, call).await {
            Ok(Ok(response)) => response.map(ResponseBody::new),
            Ok(Err(error)) => {
                // The handler's service failed without a response: there is nothing to store.
                self.release("the handler's service failed").await;
                let _ = reply.send(Err(error));
                return;
            }
            Err(()) => {
                tracing::error!(key = %self.lease.key(), "the handler panicked");
                Refusal::Internal("the handler panicked").into_response(&self.config)
            }
        };

        match self.config.policy_for(response.status()) {
            ResponsePolicy::Release => {
                self.release("the response's status is released by policy")
                    .await;
                let _ = reply.send(Ok(response));
            }
            ResponsePolicy::Record => self.record(response, reply).await,
        }
    }

    async fn record<E>(
        self,
        response: Response<ResponseBody>,
        reply: oneshot::Sender<Result<Response<ResponseBody>, E>>,
    ) {
        let (parts, body) = response.into_parts();
        let key = self.lease.key().to_string();
        let stored_headers = headers::to_store(&parts.headers, &self.config, &key);
        let status = parts.status;
        let (frames, receiver) = mpsc::channel(FRAMES_IN_FLIGHT);
        let to_client = ChannelBody {
            frames: receiver,
            hint: body.size_hint(),
        };
        // The client may be gone already; the response is recorded all the same.
        let _ = reply.send(Ok(Response::from_parts(
            parts,
            ResponseBody::new(to_client),
        )));

        let drain = catch_unwind(drain(body, frames, self.config.max_response_bytes));
        match keep_alive(&*self.service, &self.lease, drain).await {
            Ok(Drained::Whole(bytes)) => {
                let stored = record::Response {
                    status: status.as_u16(),
                    body: record::Body::Bytes(bytes),
                    headers: stored_headers,
                };
                self.store(status, stored).await;
            }
            Ok(Drained::OverCap { size }) => {
                tracing::warn!(
                    key = %key, size, cap = self.config.max_response_bytes,
                    "response body is over the cap; it went to the client whole and the key is released"
                );
                self.release("the response body is over the cap").await;
            }
            Ok(Drained::Trailers) => {
                tracing::warn!(key = %key, "response has trailers, which cannot be stored; the key is released");
                self.release("the response has trailers").await;
            }
            Ok(Drained::Broken) => {
                tracing::warn!(key = %key, "response body failed mid-stream; the key is released");
                self.release("the response body failed").await;
            }
            Err(()) => {
                tracing::error!(key = %key, "the response body panicked; the key is released");
                self.release("the response body panicked").await;
            }
        }
    }

    /// Stores a response: successes (2xx, 3xx) as completed, errors as recorded failures,
    /// which keep the service's failure TTL.
    async fn store(&self, status: StatusCode, stored: record::Response) {
        let key = self.lease.key();
        let result = match StatusClass::of(status) {
            Some(StatusClass::Success | StatusClass::Redirection) => {
                self.service.complete(&self.lease, stored).await
            }
            _ => self.service.fail(&self.lease, stored).await,
        };
        match result {
            Ok(()) => tracing::debug!(key = %key, status = status.as_u16(), "stored the response"),
            Err(Error::ResultTooLarge { size, limit, .. }) => tracing::warn!(
                key = %key, size, limit,
                "response is over the service's cap; the key is recorded as not replayable"
            ),
            Err(error) => tracing::error!(key = %key, %error, "could not store the response"),
        }
    }

    async fn release(&self, why: &'static str) {
        match self.service.release(&self.lease).await {
            Ok(()) => tracing::debug!(key = %self.lease.key(), why, "released the key"),
            Err(error) => {
                tracing::warn!(key = %self.lease.key(), why, %error, "could not release the key")
            }
        }
    }
}

/// Reads `body` to its end, sending every frame on to the client and keeping the data while
/// it stays within `cap` bytes.
async fn drain(
    mut body: ResponseBody,
    frames: mpsc::Sender<Result<Frame<Bytes>, BoxError>>,
    cap: usize,
) -> Drained {
    let mut client = Some(frames);
    let mut kept = Vec::new();
    let mut size = 0usize;
    let mut trailers = false;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) => {
                forward(&mut client, Err(error)).await;
                return Drained::Broken;
            }
        };
        match frame.data_ref() {
            Some(data) => {
                size = size.saturating_add(data.len());
                if size <= cap {
                    kept.push(data.clone());
                } else {
                    kept = Vec::new();
                }
            }
            None => trailers = true,
        }
        forward(&mut client, Ok(frame)).await;
    }
    if size > cap {
        return Drained::OverCap { size };
    }
    if trailers {
        return Drained::Trailers;
    }
    let mut whole = BytesMut::with_capacity(size);
    for chunk in kept {
        whole.extend_from_slice(&chunk);
    }
    Drained::Whole(whole.freeze())
}

/// Sends `frame` to the client, unless it is gone or has stalled; then it is gone for good.
async fn forward(
    client: &mut Option<mpsc::Sender<Result<Frame<Bytes>, BoxError>>>,
    frame: Result<Frame<Bytes>, BoxError>,
) {
    let Some(sender) = client else {
        return;
    };
    match tokio::time::timeout(CLIENT_STALL, sender.send(frame)).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) | Err(_) => *client = None,
    }
}

/// The client's copy of a recorded response body, fed by the recorder.
struct ChannelBody {
    frames: mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
    hint: SizeHint,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.frames.poll_recv(cx)
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

/// Runs `future`, turning a panic inside it into `Err(())`, so that a panicking handler
/// releases its key instead of holding it until its lease runs out.
async fn catch_unwind<F: Future>(future: F) -> Result<F::Output, ()> {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| {
        match std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(())),
        }
    })
    .await
}
