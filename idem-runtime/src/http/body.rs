//! The body types the layer hands to the wrapped service and to the client.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};

use crate::error::BoxError;

/// The request body the wrapped service receives: the client's body as it came, or the copy
/// the layer read to fingerprint it.
pub struct RequestBody(UnsyncBoxBody<Bytes, BoxError>);

/// The response body the layer sends: the handler's, a replayed one, or a problem.
pub struct ResponseBody(UnsyncBoxBody<Bytes, BoxError>);

macro_rules! boxed_body {
    ($name:ident) => {
        impl $name {
            /// Wraps `body`.
            pub fn new<B>(body: B) -> Self
            where
                B: Body<Data = Bytes> + Send + 'static,
                B::Error: Into<BoxError>,
            {
                $name(body.map_err(Into::into).boxed_unsync())
            }

            /// A body of `bytes`, complete.
            pub fn full(bytes: impl Into<Bytes>) -> Self {
                $name::new(Full::new(bytes.into()))
            }
        }

        impl Body for $name {
            type Data = Bytes;
            type Error = BoxError;

            fn poll_frame(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
                Pin::new(&mut self.0).poll_frame(cx)
            }

            fn is_end_stream(&self) -> bool {
                self.0.is_end_stream()
            }

            fn size_hint(&self) -> SizeHint {
                self.0.size_hint()
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(stringify!($name))
            }
        }
    };
}

boxed_body!(RequestBody);
boxed_body!(ResponseBody);
