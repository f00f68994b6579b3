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
#[derive(Clone)]
pub struct Token(TokenText);

/// A token's text: up to [`INLINE_TOKEN`] bytes (every generated token, and every token a
/// store reads back from idem's own records) kept in place, longer ones on the heap. Every
/// claim makes a token and every replay reads one: in place, neither allocates.
#[derive(Clone)]
enum TokenText {
    Inline { len: u8, bytes: [u8; INLINE_TOKEN] },
    Heap(Box<str>),
}

/// The longest token text kept in place: a generated token's 32 hex digits.
const INLINE_TOKEN: usize = 32;

impl Token {
    /// A fresh random token.
    pub fn generate() -> Token {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let bits = rand::random::<u128>();
        let mut bytes = [0u8; INLINE_TOKEN];
        for (i, digit) in bytes.iter_mut().enumerate() {
            *digit = DIGITS[((bits >> ((31 - i) * 4)) & 0xf) as usize];
        }
        Token(TokenText::Inline {
            len: INLINE_TOKEN as u8,
            bytes,
        })
    }

    /// A token from its stored text.
    pub fn from_stored(text: impl Into<String>) -> Token {
        let text = text.into();
        match text.len() <= INLINE_TOKEN {
            true => Token::from_text(&text),
            false => Token(TokenText::Heap(text.into_boxed_str())),
        }
    }

    /// A token from its stored text, copied.
    pub(crate) fn from_text(text: &str) -> Token {
        if text.len() > INLINE_TOKEN {
            return Token(TokenText::Heap(text.into()));
        }
        let mut bytes = [0u8; INLINE_TOKEN];
        bytes[..text.len()].copy_from_slice(text.as_bytes());
        Token(TokenText::Inline {
            len: text.len() as u8,
            bytes,
        })
    }

    /// The token's text as bytes, without the UTF-8 check that [`as_str`](Self::as_str)
    /// makes of a token kept in place.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            TokenText::Inline { len, bytes } => &bytes[..usize::from(*len)],
            TokenText::Heap(text) => text.as_bytes(),
        }
    }

    /// The token's text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Only ever the bytes of a whole `str` (or hex digits): always UTF-8.
            TokenText::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            TokenText::Heap(text) => text,
        }
    }
}

impl PartialEq for Token {
    fn eq(&self, other: &Token) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Token {}

impl std::hash::Hash for Token {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({})", self.as_str())
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn tokens_read_the_same_whether_kept_in_place_or_on_the_heap() {
        let long = "b".repeat(33);
        let wide = "é".repeat(20);
        for text in [
            "",
            "t1",
            "0123456789abcdef0123456789abcdef",
            &long,
            &wide,
            "токен",
        ] {
            let token = Token::from_stored(text);
            assert_eq!(token.as_str(), text);
            assert_eq!(token.as_bytes(), text.as_bytes());
            assert_eq!(token.to_string(), text);
            assert_eq!(Token::from_text(text), token);
            let state = std::hash::RandomState::new();
            assert_eq!(
                state.hash_one(&token),
                state.hash_one(Token::from_text(text))
            );
        }
        let generated = Token::generate();
        assert_eq!(Token::from_stored(generated.as_str()), generated);
        assert_ne!(Token::generate(), generated);
    }
}
