//! Reading the key from its request header.
//!
//! The IETF draft defines `Idempotency-Key` as a Structured Field item whose value is a
//! string: `Idempotency-Key: "8e03978e-40d5-43e8-bc93-6894a57f9324"`. Many clients send the
//! key without quotes, so a bare key is accepted too. Both forms of the same text name the
//! same key.
//!
//! - A quoted key follows RFC 8941 strings: printable ASCII, with `\"` and `\\` as the only
//!   escapes. Parameters after it (`"k";a=1`) are refused: the draft defines none, and a key
//!   that silently dropped part of its header would be a different key to another server.
//! - A bare key is printable ASCII without spaces, `"`, `\`, `,` or `;`. The comma is
//!   refused because a proxy that merges two header lines joins them with one, and the
//!   semicolon because it starts parameters.
//! - The header must appear once. Leading and trailing spaces around the field are ignored,
//!   as RFC 8941 says; spaces inside a quoted key are kept.

use http::{HeaderMap, HeaderName};

/// Why a key header cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MalformedKey {
    /// The header is present but empty, or holds `""`.
    #[error("the key is empty")]
    Empty,
    /// The header appears more than once.
    #[error("the header appears {0} times; send it once")]
    Repeated(usize),
    /// A quoted key has no closing quote.
    #[error("the quoted key has no closing quote")]
    Unterminated,
    /// A backslash in a quoted key escapes something other than `"` or `\`.
    #[error("a backslash in the quoted key escapes something other than `\"` or `\\`")]
    BadEscape,
    /// A byte outside what the form allows, at a 0-based position in the header.
    #[error(
        "the byte 0x{byte:02x} at position {position} is not allowed; keys are printable \
         ASCII, and a bare key has no spaces, quotes, backslashes, commas or semicolons"
    )]
    InvalidByte {
        /// The byte.
        byte: u8,
        /// Its position in the header value.
        position: usize,
    },
    /// Something follows the closing quote.
    #[error("characters follow the closing quote; parameters and lists are not accepted")]
    TrailingCharacters,
}

/// Reads the key from header `name` of `headers`: `Ok(None)` when it is absent.
pub fn read_key(headers: &HeaderMap, name: &HeaderName) -> Result<Option<String>, MalformedKey> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let more = values.count();
    if more > 0 {
        return Err(MalformedKey::Repeated(more + 1));
    }
    parse_key(value.as_bytes()).map(Some)
}

/// Parses one header value: a Structured Field string (`"abc"`) or a bare key (`abc`).
pub fn parse_key(value: &[u8]) -> Result<String, MalformedKey> {
    let start = value.iter().take_while(|b| **b == b' ').count();
    let end = value.len() - value.iter().rev().take_while(|b| **b == b' ').count();
    let field = &value[start..end.max(start)];
    let key = match field.first() {
        None => return Err(MalformedKey::Empty),
        Some(b'"') => parse_quoted(field, start)?,
        Some(_) => parse_bare(field, start)?,
    };
    if key.is_empty() {
        return Err(MalformedKey::Empty);
    }
    Ok(key)
}

fn parse_quoted(field: &[u8], offset: usize) -> Result<String, MalformedKey> {
    let mut key = String::with_capacity(field.len());
    let mut bytes = field.iter().enumerate().skip(1);
    while let Some((i, &byte)) = bytes.next() {
        match byte {
            b'\\' => match bytes.next() {
                Some((_, &escaped @ (b'"' | b'\\'))) => key.push(escaped as char),
                Some(_) => return Err(MalformedKey::BadEscape),
                None => return Err(MalformedKey::Unterminated),
            },
            b'"' if i + 1 == field.len() => return Ok(key),
            b'"' => return Err(MalformedKey::TrailingCharacters),
            0x20..=0x7e => key.push(byte as char),
            _ => {
                return Err(MalformedKey::InvalidByte {
                    byte,
                    position: offset + i,
                })
            }
        }
    }
    Err(MalformedKey::Unterminated)
}

fn parse_bare(field: &[u8], offset: usize) -> Result<String, MalformedKey> {
    let refused = |b: u8| !(0x21..=0x7e).contains(&b) || matches!(b, b'"' | b'\\' | b',' | b';');
    if let Some(position) = field.iter().position(|b| refused(*b)) {
        return Err(MalformedKey::InvalidByte {
            byte: field[position],
            position: offset + position,
        });
    }
    // Every byte is printable ASCII, so the bytes are UTF-8.
    Ok(field.iter().map(|b| *b as char).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn quoted_and_bare_forms_give_the_same_key() {
        assert_eq!(parse_key(b"\"abc-123\""), Ok("abc-123".to_owned()));
        assert_eq!(parse_key(b"abc-123"), Ok("abc-123".to_owned()));
        assert_eq!(
            parse_key(b"8e03978e-40d5-43e8-bc93-6894a57f9324"),
            Ok("8e03978e-40d5-43e8-bc93-6894a57f9324".to_owned())
        );
    }

    #[test]
    fn quoted_keys_unescape_and_keep_inner_spaces() {
        assert_eq!(parse_key(br#""a\"b\\c""#), Ok(r#"a"b\c"#.to_owned()));
        assert_eq!(parse_key(b"  \"a b\"  "), Ok("a b".to_owned()));
    }

    #[test]
    fn malformed_values_are_named() {
        let cases: [(&[u8], MalformedKey); 10] = [
            (b"", MalformedKey::Empty),
            (b"   ", MalformedKey::Empty),
            (b"\"\"", MalformedKey::Empty),
            (b"\"abc", MalformedKey::Unterminated),
            (b"\"ab\\", MalformedKey::Unterminated),
            (b"\"a\\nb\"", MalformedKey::BadEscape),
            (b"\"abc\";v=1", MalformedKey::TrailingCharacters),
            (
                b"a b",
                MalformedKey::InvalidByte {
                    byte: b' ',
                    position: 1,
                },
            ),
            (
                b"a,b",
                MalformedKey::InvalidByte {
                    byte: b',',
                    position: 1,
                },
            ),
            (
                b"\"caf\xc3\xa9\"",
                MalformedKey::InvalidByte {
                    byte: 0xc3,
                    position: 4,
                },
            ),
        ];
        for (value, expected) in cases {
            assert_eq!(
                parse_key(value),
                Err(expected),
                "{}",
                String::from_utf8_lossy(value)
            );
        }
    }

    #[test]
    fn a_repeated_header_is_refused_and_an_absent_one_is_none() {
        let name = HeaderName::from_static("idempotency-key");
        let mut headers = HeaderMap::new();
        assert_eq!(read_key(&headers, &name), Ok(None));
        headers.append(&name, HeaderValue::from_static("a"));
        assert_eq!(read_key(&headers, &name), Ok(Some("a".to_owned())));
        headers.append(&name, HeaderValue::from_static("b"));
        assert_eq!(read_key(&headers, &name), Err(MalformedKey::Repeated(2)));
    }
}
