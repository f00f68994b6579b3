//! Reading a request body under its cap, and the request's fingerprint.
//!
//! The fingerprint covers what makes two requests the same operation: the method, the route,
//! the concrete path and query (so that the same key sent to `/accounts/1/charges` and
//! `/accounts/2/charges`, one route, is refused rather than answered with the other
//! account's charge), and the body. A body whose content type is JSON (`application/json`
//! or any `+json` type) and that parses is compared as a JSON value, so key order and
//! whitespace do not matter; any other body is compared as its bytes, together with its
//! media type.
//!
//! A JSON body is compared as a value only when that value says everything its text says:
//! a body with a repeated object key (parsers disagree on which one counts) or with an
//! integer too large for a 64-bit number (it would be rounded to a float) is compared as
//! bytes instead. Fractions are compared as the `f64` they parse to, as serde_json reads
//! them: `0.3` and `0.30000000000000001` are the same amount.

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::request::Parts;
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::{Serialize, Serializer};

use crate::error::BoxError;
use crate::fingerprint::{fingerprint, Fingerprint, FingerprintError};

/// Why a request body was not read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// It is larger than the cap.
    TooLarge,
    /// The client's body stream failed.
    Broken(BoxError),
}

/// Reads the whole body, refusing it as soon as it passes `limit` bytes. A Content-Length
/// over the limit is refused before anything is read.
pub(crate) async fn read_body<B>(parts: &Parts, body: B, limit: usize) -> Result<Bytes, ReadError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ReadError::TooLarge);
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(ReadError::TooLarge),
        Err(error) => Err(ReadError::Broken(error)),
    }
}

/// What of a request its fingerprint covers.
#[derive(Serialize)]
struct RequestPrint<'a> {
    method: &'a str,
    route: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    body: BodyPrint<'a>,
}

#[derive(Serialize)]
enum BodyPrint<'a> {
    Empty,
    Json(serde_json::Value),
    Raw {
        media_type: String,
        bytes: RawBytes<'a>,
    },
}

/// Bytes serialized as a byte string, not as a sequence of numbers.
struct RawBytes<'a>(&'a [u8]);

impl Serialize for RawBytes<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

/// The fingerprint of the request with head `parts`, on `route`, with `body`.
pub(crate) fn request_fingerprint(
    parts: &Parts,
    route: &str,
    body: &[u8],
) -> Result<Fingerprint, FingerprintError> {
    let media_type = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let is_json = media_type == "application/json" || media_type.ends_with("+json");
    let body = if body.is_empty() {
        BodyPrint::Empty
    } else {
        match is_json.then(|| exact_json(body)).flatten() {
            Some(value) => BodyPrint::Json(value),
            None => BodyPrint::Raw {
                media_type,
                bytes: RawBytes(body),
            },
        }
    };
    fingerprint(&RequestPrint {
        method: parts.method.as_str(),
        route,
        path: parts.uri.path(),
        query: parts.uri.query(),
        body,
    })
}

/// `body` as a JSON value, when the value loses nothing of the text: `None` for text that
/// does not parse, repeats a key within an object, or holds an integer beyond 64 bits.
fn exact_json(body: &[u8]) -> Option<serde_json::Value> {
    serde_json::from_slice::<ExactJson>(body).ok().map(|v| v.0)
}

struct ExactJson(serde_json::Value);

impl<'de> serde::Deserialize<'de> for ExactJson {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ExactVisitor).map(ExactJson)
    }
}

struct ExactVisitor;

impl<'de> serde::de::Visitor<'de> for ExactVisitor {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
        // serde_json hands integers beyond 64 bits over as floats, rounded: two different
        // amounts would compare equal.
        const EXACT_INTEGERS: f64 = 9_007_199_254_740_992.0; // 2^53
        if v.fract() == 0.0 && v.abs() >= EXACT_INTEGERS {
            return Err(E::custom("integer beyond 64 bits"));
        }
        serde_json::Number::from_f64(v)
            .map(serde_json::Value::Number)
            .ok_or_else(|| E::custom("non-finite number"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(ExactJson(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(serde_json::Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some((key, ExactJson(value))) = map.next_entry::<String, ExactJson>()? {
            if object.contains_key(&key) {
                return Err(serde::de::Error::custom("repeated object key"));
            }
            object.insert(key, value);
        }
        Ok(serde_json::Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn print(uri: &str, content_type: &str, body: &str) -> Fingerprint {
        let (parts, ()) = Request::post(uri)
            .header(CONTENT_TYPE, content_type)
            .body(())
            .unwrap()
            .into_parts();
        request_fingerprint(&parts, "/r/{id}", body.as_bytes()).unwrap()
    }

    #[test]
    fn json_bodies_compare_as_values() {
        assert_eq!(
            print("/r/1", "application/json", r#"{"a":1,"b":[true,null]}"#),
            print(
                "/r/1",
                "application/json; charset=utf-8",
                "{ \"b\": [true, null],\n \"a\": 1 }"
            )
        );
        assert_eq!(
            print("/r/1", "application/merge-patch+json", r#"{"a":1,"b":2}"#),
            print("/r/1", "Application/Merge-Patch+JSON", r#"{"b":2,"a":1}"#)
        );
        assert_ne!(
            print("/r/1", "application/json", r#"{"a":1}"#),
            print("/r/1", "application/json", r#"{"a":1.0}"#)
        );
    }

    #[test]
    fn other_bodies_compare_as_bytes_with_their_media_type() {
        assert_ne!(
            print("/r/1", "text/plain", r#"{"a":1,"b":2}"#),
            print("/r/1", "text/plain", r#"{"b":2,"a":1}"#)
        );
        assert_ne!(
            print("/r/1", "text/plain", "x"),
            print("/r/1", "application/octet-stream", "x")
        );
        // Invalid JSON under a JSON type falls back to bytes rather than failing.
        assert_eq!(
            print("/r/1", "application/json", "{oops"),
            print("/r/1", "application/json", "{oops")
        );
    }

    #[test]
    fn the_concrete_path_and_query_count() {
        let base = print("/r/1", "application/json", "{}");
        assert_ne!(base, print("/r/2", "application/json", "{}"));
        assert_ne!(base, print("/r/1?dry_run=true", "application/json", "{}"));
    }

    #[test]
    fn json_that_a_value_would_flatten_is_compared_as_bytes() {
        let json = "application/json";
        // Integers beyond 64 bits would round to the same float.
        assert_ne!(
            print("/r", json, r#"{"amount":18446744073709551616}"#),
            print("/r", json, r#"{"amount":18446744073709551617}"#)
        );
        // A repeated key: one parser keeps the first, another the last.
        assert_ne!(
            print("/r", json, r#"{"to":"bob","to":"eve"}"#),
            print("/r", json, r#"{"to":"eve"}"#)
        );
        // Ordinary bodies still compare as values.
        assert_eq!(
            print("/r", json, r#"{"a":1,"b":[2.5,-3]}"#),
            print("/r", json, r#"{ "b":[2.5,-3], "a":1 }"#)
        );
        assert!(exact_json(br#"{"n":9007199254740991}"#).is_some());
    }
}
