//! The layer's own answers: each refusal, its status code, and its problem-details body
//! (RFC 9457, `application/problem+json`).

use std::time::Duration;

use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};

use crate::error::Error;
use crate::http::config::Config;
use crate::http::key_header::MalformedKey;
use crate::http::ResponseBody;
use crate::key::KeyRule;

/// A request the layer answers itself, without the handler.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// The route requires a key and the request has none.
    MissingKey,
    /// The key header cannot be read.
    MalformedKey(MalformedKey),
    /// The key breaks a key rule (too long, whitespace at its edges, ...).
    InvalidKey(KeyRule),
    /// The body is over the cap.
    BodyTooLarge { limit: usize },
    /// The client's body stream failed.
    BodyUnreadable,
    /// The key was first used for another request.
    Mismatch,
    /// Another request with the key is still running.
    InProgress { retry_after: Duration },
    /// The request with the key completed but its response was not stored.
    NotReplayable,
    /// The store cannot be reached.
    StoreUnavailable,
    /// Anything else: a bug or a misconfiguration on the server's side.
    Internal(&'static str),
}

impl Refusal {
    /// The refusal for an error of the service.
    pub fn from_error(error: &Error, config: &Config) -> Refusal {
        match error {
            Error::InvalidKey {
                rule: KeyRule::Scope(_),
                ..
            } => Refusal::Internal("the idempotency scope breaks a key rule"),
            Error::InvalidKey { rule, .. } => Refusal::InvalidKey(rule.clone()),
            Error::FingerprintMismatch { .. } => Refusal::Mismatch,
            Error::InProgress { retry_after, .. } => Refusal::InProgress {
                retry_after: *retry_after,
            },
            Error::WaitTimeout { .. } => Refusal::InProgress {
                retry_after: config.retry_after,
            },
            Error::Store { .. } => Refusal::StoreUnavailable,
            Error::NotReplayable { .. } | Error::ResultTooLarge { .. } => Refusal::NotReplayable,
            _ => Refusal::Internal("the idempotency service failed"),
        }
    }

    /// The status code: the fixed mapping the layer documents.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::MissingKey
            | Refusal::MalformedKey(_)
            | Refusal::InvalidKey(_)
            | Refusal::BodyUnreadable => StatusCode::BAD_REQUEST,
            Refusal::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::Mismatch => StatusCode::UNPROCESSABLE_ENTITY,
            Refusal::InProgress { .. } => StatusCode::CONFLICT,
            Refusal::NotReplayable => StatusCode::GONE,
            Refusal::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The problem's name, the last part of its `type` URI.
    pub fn name(&self) -> &'static str {
        match self {
            Refusal::MissingKey => "missing-key",
            Refusal::MalformedKey(_) | Refusal::InvalidKey(_) => "malformed-key",
            Refusal::BodyTooLarge { .. } => "body-too-large",
            Refusal::BodyUnreadable => "body-unreadable",
            Refusal::Mismatch => "fingerprint-mismatch",
            Refusal::InProgress { .. } => "in-progress",
            Refusal::NotReplayable => "not-replayable",
            Refusal::StoreUnavailable => "store-unavailable",
            Refusal::Internal(_) => "internal",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            Refusal::MissingKey => "An idempotency key is required",
            Refusal::MalformedKey(_) | Refusal::InvalidKey(_) => "The idempotency key is malformed",
            Refusal::BodyTooLarge { .. } => "The request body is too large",
            Refusal::BodyUnreadable => "The request body could not be read",
            Refusal::Mismatch => "The idempotency key was used for another request",
            Refusal::InProgress { .. } => "A request with this idempotency key is in progress",
            Refusal::NotReplayable => "The response for this idempotency key cannot be replayed",
            Refusal::StoreUnavailable => "Idempotency is unavailable",
            Refusal::Internal(_) => "Idempotency failed on the server",
        }
    }

    fn detail(&self, config: &Config) -> String {
        let header = config.header.as_str();
        match self {
            Refusal::MissingKey => {
                format!("Send a unique key in the `{header}` header, and the same key on retries.")
            }
            Refusal::MalformedKey(why) => format!(
                "The `{header}` header cannot be read: {why}. Send one quoted string such as \
                 \"8e03978e-40d5-43e8-bc93-6894a57f9324\"."
            ),
            Refusal::InvalidKey(rule) => format!("The key cannot be used: {rule}."),
            Refusal::BodyTooLarge { limit } => {
                format!("Requests with an idempotency key carry at most {limit} bytes of body.")
            }
            Refusal::BodyUnreadable => {
                "The request body stream failed before it ended; send the request again.".into()
            }
            Refusal::Mismatch => "This key was first sent with a different method, path or \
                                  body. Use a new key for a different request; retrying this \
                                  one will not succeed."
                .into(),
            Refusal::InProgress { .. } => "The first request with this key has not finished. \
                                           Retry with the same key after the Retry-After delay."
                .into(),
            Refusal::NotReplayable => "A request with this key completed, but its response was \
                                       not stored. It will not run again under this key."
                .into(),
            Refusal::StoreUnavailable => "The idempotency store cannot be reached, so the \
                                          request was not processed. Retry with the same key."
                .into(),
            Refusal::Internal(what) => format!("{what}; the request was not processed."),
        }
    }

    /// The response: status, problem-details body, and `Retry-After` where a retry helps.
    pub fn into_response(self, config: &Config) -> Response<ResponseBody> {
        let status = self.status();
        let problem = serde_json::json!({
            "type": format!("{}{}", config.problem_type_base, self.name()),
            "title": self.title(),
            "status": status.as_u16(),
            "detail": self.detail(config),
        });
        let mut response = Response::new(ResponseBody::full(problem.to_string()));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        let retry_after = match self {
            Refusal::InProgress { retry_after } => Some(retry_after),
            Refusal::StoreUnavailable => Some(config.retry_after),
            _ => None,
        };
        if let Some(after) = retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from(whole_seconds(after)));
        }
        response
    }
}

/// `after` in whole seconds, rounded up, and at least 1: `Retry-After: 0` invites a retry
/// storm against an owner that is still working.
fn whole_seconds(after: Duration) -> u64 {
    let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(whole_seconds(Duration::ZERO), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_secs(2)), 2);
        assert_eq!(whole_seconds(Duration::from_millis(2001)), 3);
    }
}
