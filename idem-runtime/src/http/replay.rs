//! Replays: a stored response sent again, marked `Idempotent-Replayed: true`.

use http::{HeaderValue, Response, StatusCode};

use crate::http::config::Config;
use crate::http::headers::{self, IDEMPOTENT_REPLAYED};
use crate::http::problem::Refusal;
use crate::http::ResponseBody;
use crate::key::Key;
use crate::record;

/// The HTTP response for `stored`, the response (or recorded failure) of the first request
/// with `key`: its status, its body byte for byte, and its allow-listed headers.
pub(crate) fn replay(
    key: &Key,
    stored: &record::Response,
    config: &Config,
) -> Response<ResponseBody> {
    let key_text = key.to_string();
    let Ok(status) = StatusCode::from_u16(stored.status) else {
        tracing::error!(key = %key_text, status = stored.status, "stored response has an invalid status");
        return Refusal::Internal("the stored response is unreadable").into_response(config);
    };
    tracing::debug!(
        key = %key_text, scope = key.scope(), status = status.as_u16(),
        "replayed a stored response"
    );

    let bytes = match &stored.body {
        record::Body::Json(bytes) | record::Body::Bytes(bytes) => bytes.clone(),
    };
    let body = ResponseBody::full(bytes);
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers::from_store(&stored.headers, config, &key_text);
    response
        .headers_mut()
        .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    response
}
