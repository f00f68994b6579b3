//! Records: what a store keeps for one key, and the responses it replays.

use std::fmt;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::fingerprint::Fingerprint;

/// Milliseconds since the Unix epoch, on the store's clock.
pub type Millis = u64;

/// What a store keeps for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Fingerprint of the arguments of the call that created the record.
    pub fingerprint: Fingerprint,
    /// The owner token of the call that created or last took over the record.
    pub token: Token,
    /// Fencing number of that owner: larger for every later owner of the key.
    pub fence: u64,
    /// When the current owner claimed the key.
    pub started_at: Millis,
    /// The state, with what belongs to it.
    pub state: RecordState,
}

impl Record {
    /// The state without its data.
    pub fn status(&self) -> RecordStatus {
        match self.state {
            RecordState::Processing { .. } => RecordStatus::Processing,
            RecordState::Completed { .. } => RecordStatus::Completed,
            RecordState::Failed { .. } => RecordStatus::Failed,
            RecordState::NotReplayable { .. } => RecordStatus::NotReplayable,
        }
    }
}

/// The states of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordState {
    /// An owner holds the key and runs the operation.
    Processing {
        /// The end of the owner's lease. `None` for a record written without one (by an
        /// older writer or by hand): such a record counts as held until it expires.
        lease_until: Option<Millis>,
    },
    /// The operation succeeded and this is its response.
    Completed {
        /// The stored response.
        response: Response,
        /// When it was stored.
        completed_at: Millis,
    },
    /// The operation failed under the *record* failure policy and this is its error.
    Failed {
        /// The stored error, in the same shape as a response.
        error: Response,
        /// When it was stored.
        completed_at: Millis,
    },
    /// The operation succeeded but its result could not be stored (too large, or not
    /// serializable). It is not run again; callers get [`Error::NotReplayable`].
    ///
    /// [`Error::NotReplayable`]: crate::Error::NotReplayable
    NotReplayable {
        /// Why the result was not stored.
        reason: String,
        /// When the operation finished.
        completed_at: Millis,
    },
}

/// A record's state without its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordStatus {
    /// An owner holds the key.
    Processing,
    /// A response is stored.
    Completed,
    /// An error is stored.
    Failed,
    /// Finished without a replayable result.
    NotReplayable,
}

impl RecordStatus {
    /// The name used in stores and logs: `processing`, `completed`, `failed`, `not_replayable`.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordStatus::Processing => "processing",
            RecordStatus::Completed => "completed",
            RecordStatus::Failed => "failed",
            RecordStatus::NotReplayable => "not_replayable",
        }
    }
}

/// A stored response: status code, body and headers, as an HTTP handler or a function
/// returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code (200 for a function's `Ok` value).
    pub status: u16,
    /// The body.
    pub body: Body,
    /// Headers in order; names as given.
    pub headers: Vec<(String, String)>,
}

impl Response {
    /// A 200 response with `body` and no headers.
    pub fn ok(body: Body) -> Self {
        Response {
            status: 200,
            body,
            headers: Vec::new(),
        }
    }

    /// A response with `status` and `body` and no headers.
    pub fn new(status: u16, body: Body) -> Self {
        Response {
            status,
            body,
            headers: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The size that [`Settings::max_response_bytes`](crate::Settings::max_response_bytes)
    /// caps: the body's bytes plus the bytes of every header name and value. The status
    /// code and a store's own framing are not counted, so the cap means the same on every
    /// store.
    pub fn encoded_len(&self) -> usize {
        let headers: usize = self.headers.iter().map(|(n, v)| n.len() + v.len()).sum();
        self.body.as_bytes().len() + headers
    }
}

/// A response body: JSON text, or opaque bytes.
#[derive(Clone, PartialEq, Eq)]
pub enum Body {
    /// JSON text (always valid JSON; `null` is a value, not an absence).
    Json(Bytes),
    /// Bytes stored as given.
    Bytes(Bytes),
}

impl Body {
    /// Serializes `value` as JSON.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Body, serde_json::Error> {
        serde_json::to_vec(value).map(|text| Body::Json(text.into()))
    }

    /// Opaque bytes.
    pub fn bytes(bytes: impl Into<Bytes>) -> Body {
        Body::Bytes(bytes.into())
    }

    /// The stored bytes, JSON text or not.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Body::Json(b) | Body::Bytes(b) => b,
        }
    }

    /// Deserializes a JSON body (bytes bodies are read as JSON text too).
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(self.as_bytes())
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Bodies hold user payloads: show their size, never their content.
        match self {
            Body::Json(b) => write!(f, "Body::Json({} bytes)", b.len()),
            Body::Bytes(b) => write!(f, "Body::Bytes({} bytes)", b.len()),
        }
    }
}

/// An owner token: 128 random bits, made by the client before it claims a key, so that a
/// claim or completion retried after a lost reply recognises its own earlier write.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Token(String);

impl Token {
    /// A fresh random token.
    pub fn generate() -> Token {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let bits = rand::random::<u128>();
        // Lowercase hex, 32 digits; written directly since this runs on every claim.
        let text = (0..32)
            .rev()
            .map(|i| char::from(DIGITS[((bits >> (i * 4)) & 0xf) as usize]))
            .collect();
        Token(text)
    }

    /// A token from its stored text.
    pub fn from_stored(text: impl Into<String>) -> Token {
        Token(text.into())
    }

    /// The token's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({})", self.0)
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
