//! How a record is laid out in one Redis string, and how script replies are read.
//!
//! A record is a header line of `name=value` fields after a format tag, then the payload:
//!
//! ```text
//! idem2 st=completed fp=<64 hex> tok=<token> fence=<µs> sa=<ms> ca=<ms> code=201 hl=22\n
//! [["Location","/o/7"]]{"id":7}
//! ```
//!
//! The module docs of the store list every field. Every function here is pure: it turns
//! records into bytes and bytes into records, and reports anything it cannot read as
//! [`StoreError::Corrupt`] naming the key.

use bytes::{Buf, Bytes};

use crate::error::StoreError;
use crate::fingerprint::Fingerprint;
use crate::record::{Body, Millis, Record, RecordState, Response, Token};
use crate::store::Finish;

/// The record format this store writes, and the only one it reads.
pub(crate) const FORMAT_VERSION: &str = "2";

/// The tag that starts every record of this format.
const TAG: &str = "idem2";

/// A script reply: its tag and the strings after it.
pub(crate) struct Reply {
    pub tag: String,
    pub items: Vec<Vec<u8>>,
}

impl Reply {
    /// Reads a script reply: an array of strings whose first is the tag.
    pub fn parse(key: &str, value: redis::Value) -> Result<Reply, StoreError> {
        let redis::Value::Array(values) = value else {
            return Err(corrupt(key, format!("unexpected script reply {value:?}")));
        };
        let mut items = values.into_iter().map(|v| bytes_of(key, v));
        let tag = items
            .next()
            .transpose()?
            .map(|t| String::from_utf8_lossy(&t).into_owned())
            .ok_or_else(|| corrupt(key, "empty script reply".into()))?;
        Ok(Reply {
            tag,
            items: items.collect::<Result<_, _>>()?,
        })
    }

    /// The `index`th item as a number.
    pub fn number(&self, key: &str, index: usize) -> Result<u64, StoreError> {
        let item = self.items.get(index).map(Vec::as_slice).unwrap_or_default();
        std::str::from_utf8(item)
            .ok()
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| {
                corrupt(
                    key,
                    format!(
                        "the script's {:?} reply holds {:?} where a whole number belongs",
                        self.tag,
                        String::from_utf8_lossy(item)
                    ),
                )
            })
    }

    /// The `index`th item as text.
    pub fn text(&self, index: usize) -> String {
        let item = self.items.get(index).map(Vec::as_slice).unwrap_or_default();
        String::from_utf8_lossy(item).into_owned()
    }

    /// The reply as an error: a `corrupt` reply names what the script found, anything else
    /// is a reply this client does not know.
    pub fn unexpected(&self, key: &str) -> StoreError {
        if self.tag == "corrupt" {
            return corrupt(key, self.text(0));
        }
        corrupt(key, format!("unexpected script reply {:?}", self.tag))
    }
}

/// Whether `token` can stand in a header line: printable ASCII without spaces.
pub(crate) fn check_token(key: &str, token: &Token) -> Result<(), StoreError> {
    let text = token.as_bytes();
    if !text.is_empty() && text.iter().all(u8::is_ascii_graphic) {
        return Ok(());
    }
    let text = token.as_str();
    Err(StoreError::Command(
        format!(
            "owner token {text:?} for {key:?} cannot be stored: tokens are printable ASCII \
             without spaces (Token::generate makes such tokens)"
        )
        .into(),
    ))
}

/// The record a fresh claim writes with `SET NX`: processing, with the lease length (`ls`)
/// instead of a lease end, since the client has no server clock; the server derives the
/// lease end from the key's expiry (two leases from the claim).
pub(crate) fn fresh_claim(
    out: &mut impl Out,
    fingerprint: &Fingerprint,
    token: &Token,
    fence: u64,
    started_at: Millis,
    lease_ms: u64,
) {
    write_header_start(out, "processing", fingerprint, token, fence, started_at);
    push_field(out, "ls", lease_ms);
    out.put(b"\n");
}

/// Where a record is written: a vector, or a [`Line`] on the stack.
pub(crate) trait Out {
    fn put(&mut self, bytes: &[u8]);
}

impl Out for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// A record's header line written on the stack, then copied into its command at once: a
/// fresh claim's record went into the command a field at a time, and those small copies
/// cost more than the rest of its making. A line longer than the buffer (a long token)
/// moves to the heap.
pub(crate) struct Line {
    buf: [u8; LINE],
    len: usize,
    spilled: Option<Vec<u8>>,
}

/// Room for a fresh claim's record with a token of up to about 100 bytes.
const LINE: usize = 256;

impl Line {
    pub fn new() -> Self {
        Line {
            buf: [0; LINE],
            len: 0,
            spilled: None,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        match &self.spilled {
            Some(spilled) => spilled,
            None => &self.buf[..self.len],
        }
    }
}

impl Out for Line {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        if let Some(spilled) = &mut self.spilled {
            spilled.extend_from_slice(bytes);
            return;
        }
        match self.buf.get_mut(self.len..self.len + bytes.len()) {
            Some(room) => {
                room.copy_from_slice(bytes);
                self.len += bytes.len();
            }
            None => {
                let mut spilled = Vec::with_capacity(2 * LINE);
                spilled.extend_from_slice(&self.buf[..self.len]);
                spilled.extend_from_slice(bytes);
                self.spilled = Some(spilled);
            }
        }
    }
}

/// The whole record as `insert` writes it.
pub(crate) fn encode(record: &Record) -> Vec<u8> {
    let (fp, token) = (&record.fingerprint, &record.token);
    let (fence, started_at) = (record.fence, record.started_at);
    let (finish, completed_at) = match &record.state {
        RecordState::Processing { lease_until } => {
            let mut out = header_start("processing", fp, token, fence, started_at);
            if let Some(until) = lease_until {
                push_field(&mut out, "lu", *until);
            }
            out.push(b'\n');
            return out;
        }
        RecordState::Completed {
            response,
            completed_at,
        } => (Finish::Completed(response.clone()), completed_at),
        RecordState::Failed {
            error,
            completed_at,
        } => (Finish::Failed(error.clone()), completed_at),
        RecordState::NotReplayable {
            reason,
            completed_at,
        } => (Finish::NotReplayable(reason.clone()), completed_at),
    };
    finished(fp, token, fence, started_at, &finish, *completed_at)
}

/// The finished record (header line, then payload) that an owner of these first four
/// fields stores when it finishes with `finish` at `completed_at`, as the client sends it
/// to the completion script.
pub(crate) fn finished(
    fp: &Fingerprint,
    token: &Token,
    fence: u64,
    started_at: Millis,
    finish: &Finish,
    completed_at: Millis,
) -> Vec<u8> {
    let status = finish_status(finish);
    match finish {
        Finish::Completed(response) | Finish::Failed(response) => {
            let parts = ResponseParts::of(response);
            let mut bytes = finished_header(
                status,
                fp,
                token,
                fence,
                started_at,
                completed_at,
                Some(&parts),
            );
            bytes.reserve_exact(parts.headers.len() + parts.body.len());
            bytes.extend_from_slice(&parts.headers);
            bytes.extend_from_slice(parts.body);
            bytes
        }
        Finish::NotReplayable(reason) => {
            let mut bytes =
                finished_header(status, fp, token, fence, started_at, completed_at, None);
            bytes.extend_from_slice(reason.as_bytes());
            bytes
        }
    }
}

/// The header line (newline included) of a finished record: `status` is `completed` or
/// `failed` with the response's `parts`, or `not_replayable` without. The same fields in
/// the same order as the completion script writes them.
fn finished_header(
    status: &str,
    fingerprint: &Fingerprint,
    token: &Token,
    fence: u64,
    started_at: Millis,
    completed_at: Millis,
    parts: Option<&ResponseParts<'_>>,
) -> Vec<u8> {
    let mut out = header_start(status, fingerprint, token, fence, started_at);
    push_field(&mut out, "ca", completed_at);
    if let Some(parts) = parts {
        push_field(&mut out, "code", u64::from(parts.code));
        // `bt=json` and `hl=0` are the defaults, left out to keep small records small.
        if parts.body_type != "json" {
            out.extend_from_slice(b" bt=");
            out.extend_from_slice(parts.body_type.as_bytes());
        }
        if !parts.headers.is_empty() {
            push_field(&mut out, "hl", parts.headers.len() as u64);
        }
    }
    out.push(b'\n');
    out
}

/// The five fields every header line starts with, in their fixed order, after the tag,
/// in a new vector.
fn header_start(
    status: &str,
    fingerprint: &Fingerprint,
    token: &Token,
    fence: u64,
    started_at: Millis,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(200 + token.as_bytes().len());
    write_header_start(&mut out, status, fingerprint, token, fence, started_at);
    out
}

/// [`header_start`], written to `out`.
fn write_header_start(
    out: &mut impl Out,
    status: &str,
    fingerprint: &Fingerprint,
    token: &Token,
    fence: u64,
    started_at: Millis,
) {
    out.put(TAG.as_bytes());
    out.put(b" st=");
    out.put(status.as_bytes());
    out.put(b" fp=");
    push_hex(out, fingerprint);
    out.put(b" tok=");
    out.put(token.as_bytes());
    push_field(out, "fence", fence);
    push_field(out, "sa", started_at);
}

/// A response split into the parts a finished record lays out: status code, body type,
/// headers and body.
pub(crate) struct ResponseParts<'a> {
    pub code: u16,
    pub body_type: &'static str,
    /// Headers as a JSON list of pairs; empty when there are none.
    pub headers: Vec<u8>,
    pub body: &'a [u8],
}

impl<'a> ResponseParts<'a> {
    pub fn of(response: &'a Response) -> Self {
        let (body_type, body) = match &response.body {
            Body::Json(b) => ("json", b),
            Body::Bytes(b) => ("bytes", b),
        };
        let headers = match response.headers.is_empty() {
            true => Vec::new(),
            // A list of string pairs always serializes.
            false => serde_json::to_vec(&response.headers).unwrap_or_default(),
        };
        ResponseParts {
            code: response.status,
            body_type,
            headers,
            body,
        }
    }
}

/// The `st` field of a finished record.
fn finish_status(finish: &Finish) -> &'static str {
    match finish {
        Finish::Completed(_) => "completed",
        Finish::Failed(_) => "failed",
        Finish::NotReplayable(_) => "not_replayable",
    }
}

/// What a claim learns from the record that `SET NX GET` found.
pub(crate) enum Found {
    /// A finished record; here it is.
    Finished(Record),
    /// A processing record: the claim script decides, on the server's clock.
    Processing,
}

/// Reads a record that `SET NX GET` found, without copying its body.
pub(crate) fn found(key: &str, value: Vec<u8>) -> Result<Found, StoreError> {
    let header = Header::parse(key, &value)?;
    if header.status == "processing" {
        return Ok(Found::Processing);
    }
    header
        .fields(key)?
        .into_record(key, value)
        .map(Found::Finished)
}

/// Reads a whole record, without copying its body.
pub(crate) fn decode(key: &str, value: Vec<u8>) -> Result<Record, StoreError> {
    Header::parse(key, &value)?
        .fields(key)?
        .into_record(key, value)
}

/// The header line of a record, borrowed from it; fields this version does not know are
/// skipped, so a later minor addition stays readable. Every number field present is read
/// (and checked) as the line is parsed, whether or not the record's state uses it, so a
/// record with a garbled field is refused on every path, as the scripts refuse it.
#[derive(Default)]
struct Header<'a> {
    status: &'a str,
    fp: Option<&'a str>,
    tok: Option<&'a str>,
    fence: Option<u64>,
    sa: Option<u64>,
    lu: Option<u64>,
    ls: Option<u64>,
    ca: Option<u64>,
    code: Option<u64>,
    bt: Option<&'a str>,
    hl: Option<u64>,
    /// Where the payload starts.
    payload: usize,
}

impl<'a> Header<'a> {
    fn parse(key: &str, value: &'a [u8]) -> Result<Header<'a>, StoreError> {
        let end = memchr::memchr(b'\n', value);
        let line = &value[..end.unwrap_or(value.len())];
        let line = std::str::from_utf8(line)
            .map_err(|_| corrupt(key, "the header line is not UTF-8".into()))?;
        // Words are cut at their ASCII spaces and `=` by byte position (every byte offset of
        // an ASCII byte is a character boundary): this runs on every replay.
        let mut words = Words::new(line);
        let tag = words.next().unwrap_or_default();
        if tag != TAG {
            let version = tag.strip_prefix("idem").unwrap_or(tag);
            return Err(corrupt(
                key,
                format!(
                    "record format version {version:?}, this idem reads version \
                     {FORMAT_VERSION}; upgrade idem or delete the record"
                ),
            ));
        }
        // The scripts would read a control character (a CR, a tab) as a space.
        if has_control(line.as_bytes()) {
            return Err(corrupt(
                key,
                "the header line holds a control character".into(),
            ));
        }
        let end = end.ok_or_else(|| corrupt(key, "the header line has no end".into()))?;
        let mut header = Header {
            payload: end + 1,
            ..Header::default()
        };
        let mut status = None;
        for word in words {
            let Some(equals) = word.bytes().position(|b| b == b'=') else {
                continue;
            };
            let (name, text) = (&word[..equals], &word[equals + 1..]);
            let slot = match name {
                "st" => &mut status,
                "fp" => &mut header.fp,
                "tok" => &mut header.tok,
                "bt" => &mut header.bt,
                _ => {
                    let slot = match name {
                        "fence" => &mut header.fence,
                        "sa" => &mut header.sa,
                        "lu" => &mut header.lu,
                        "ls" => &mut header.ls,
                        "ca" => &mut header.ca,
                        "code" => &mut header.code,
                        "hl" => &mut header.hl,
                        _ => continue,
                    };
                    *slot = Some(parse_number(key, name, text.as_bytes())?);
                    continue;
                }
            };
            *slot = Some(text);
        }
        header.status = status.ok_or_else(|| corrupt(key, "field `st` is missing".into()))?;
        Ok(header)
    }

    /// The fields a record's state needs, checked, and owning nothing of the record.
    fn fields(self, key: &str) -> Result<Fields, StoreError> {
        let fingerprint = parse_hex(required(key, "fp", self.fp)?)
            .ok_or_else(|| corrupt(key, "field `fp` is not a 64-digit hex fingerprint".into()))?;
        let token = Token::from_text(required(key, "tok", self.tok)?);
        let fence = required(key, "fence", self.fence)?;
        let started_at = required(key, "sa", self.sa)?;
        let state = match self.status {
            "processing" => StateFields::Processing {
                lease_until: self.lu.or_else(|| self.ls.map(|ls| started_at + ls)),
            },
            "completed" => StateFields::Completed(self.response(key)?),
            "failed" => StateFields::Failed(self.response(key)?),
            "not_replayable" => StateFields::NotReplayable {
                completed_at: required(key, "ca", self.ca)?,
            },
            other => return Err(corrupt(key, format!("unknown status {other:?}"))),
        };
        Ok(Fields {
            fingerprint,
            token,
            fence,
            started_at,
            state,
            payload: self.payload,
        })
    }

    fn response(&self, key: &str) -> Result<ResponseHeader, StoreError> {
        let code = required(key, "code", self.code)?;
        let status = u16::try_from(code)
            .map_err(|_| corrupt(key, format!("status code {code} is out of range")))?;
        let json = match self.bt.unwrap_or("json") {
            "json" => true,
            "bytes" => false,
            other => return Err(corrupt(key, format!("unknown body type {other:?}"))),
        };
        Ok(ResponseHeader {
            status,
            json,
            headers_len: usize::try_from(self.hl.unwrap_or(0)).unwrap_or(usize::MAX),
            completed_at: required(key, "ca", self.ca)?,
        })
    }
}

/// A record's header, read: everything but the payload.
struct Fields {
    fingerprint: Fingerprint,
    token: Token,
    fence: u64,
    started_at: Millis,
    state: StateFields,
    /// Where the payload starts.
    payload: usize,
}

/// What the header says of the record's state. The lease end is given (`lu`, on the
/// server's clock), or the claim time plus the lease length (`ls`, for a fresh claim,
/// whose times come from the client's clock), or neither. Both numbers are at most
/// [`MAX_NUMBER`], so their sum cannot overflow.
enum StateFields {
    Processing { lease_until: Option<Millis> },
    Completed(ResponseHeader),
    Failed(ResponseHeader),
    NotReplayable { completed_at: Millis },
}

/// What the header says of a stored response.
struct ResponseHeader {
    status: u16,
    json: bool,
    headers_len: usize,
    completed_at: Millis,
}

impl Fields {
    /// The record, with `value` (the record's bytes) as its payload: the body is the same
    /// buffer, past the header, neither copied nor shared.
    fn into_record(self, key: &str, value: Vec<u8>) -> Result<Record, StoreError> {
        let mut payload = Bytes::from(value);
        payload.advance(self.payload.min(payload.len()));
        let state = match self.state {
            StateFields::Processing { lease_until } => RecordState::Processing { lease_until },
            StateFields::Completed(header) => RecordState::Completed {
                completed_at: header.completed_at,
                response: header.into_response(key, payload)?,
            },
            StateFields::Failed(header) => RecordState::Failed {
                completed_at: header.completed_at,
                error: header.into_response(key, payload)?,
            },
            StateFields::NotReplayable { completed_at } => RecordState::NotReplayable {
                reason: String::from_utf8(payload.to_vec())
                    .map_err(|_| corrupt(key, "the reason is not UTF-8".into()))?,
                completed_at,
            },
        };
        Ok(Record {
            fingerprint: self.fingerprint,
            token: self.token,
            fence: self.fence,
            started_at: self.started_at,
            state,
        })
    }
}

impl ResponseHeader {
    fn into_response(self, key: &str, mut payload: Bytes) -> Result<Response, StoreError> {
        if self.headers_len > payload.len() {
            return Err(corrupt(key, "field `hl` is longer than the payload".into()));
        }
        let headers = match self.headers_len {
            0 => Vec::new(),
            n => serde_json::from_slice(&payload[..n]).map_err(|e| {
                corrupt(
                    key,
                    format!("the headers are not a JSON list of pairs: {e}"),
                )
            })?,
        };
        payload.advance(self.headers_len);
        let body = match self.json {
            true => Body::Json(payload),
            false => Body::Bytes(payload),
        };
        Ok(Response {
            status: self.status,
            body,
            headers,
        })
    }
}

/// The words of a header line: what lies between single spaces, as `str::split(' ')`
/// gives them. The spaces are found in one pass over the line, not one search per word.
struct Words<'a> {
    line: &'a str,
    spaces: memchr::Memchr<'a>,
    /// Where the next word starts; `None` once the last word was given.
    at: Option<usize>,
}

impl<'a> Words<'a> {
    fn new(line: &'a str) -> Self {
        Words {
            line,
            spaces: memchr::memchr_iter(b' ', line.as_bytes()),
            at: Some(0),
        }
    }
}

impl<'a> Iterator for Words<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let at = self.at?;
        // Every byte offset of an ASCII space is a character boundary.
        match self.spaces.next() {
            Some(space) => {
                self.at = Some(space + 1);
                Some(&self.line[at..space])
            }
            None => {
                self.at = None;
                Some(&self.line[at..])
            }
        }
    }
}

fn push_field(out: &mut impl Out, name: &str, value: u64) {
    out.put(b" ");
    out.put(name.as_bytes());
    out.put(b"=");
    out.put(itoa::Buffer::new().format(value).as_bytes());
}

fn push_hex(out: &mut impl Out, fingerprint: &Fingerprint) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    // Into an array first: a push per digit checks the vector's capacity 64 times.
    let mut hex = [0u8; 64];
    for (pair, byte) in hex.chunks_exact_mut(2).zip(fingerprint.as_bytes()) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
    out.put(&hex);
}

/// Whether `line` holds an ASCII control character. Every byte is looked at, without
/// stopping at the first hit, so the loop runs many bytes per step: this runs on every
/// replay.
fn has_control(line: &[u8]) -> bool {
    line.iter()
        .fold(false, |found, &b| found | (b < 0x20) | (b == 0x7f))
}

/// A fingerprint from 64 hex digits (either case).
fn parse_hex(text: &str) -> Option<Fingerprint> {
    let text = text.as_bytes();
    if text.len() != 64 {
        return None;
    }
    // A table, not a match: which branch a random digit takes cannot be predicted, and
    // the mispredictions cost more than the whole lookup.
    let mut bytes = [0u8; 32];
    let mut invalid = 0;
    for (byte, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
        let (high, low) = (
            HEX_VALUE[usize::from(pair[0])],
            HEX_VALUE[usize::from(pair[1])],
        );
        invalid |= (high | low) & NOT_HEX;
        *byte = high << 4 | low & 0xf;
    }
    (invalid == 0).then(|| Fingerprint::from_bytes(bytes))
}

/// Marks a byte that is not a hex digit in [`HEX_VALUE`].
const NOT_HEX: u8 = 0x80;

/// The value of each byte as a hex digit, or [`NOT_HEX`].
const HEX_VALUE: [u8; 256] = {
    let mut table = [NOT_HEX; 256];
    let mut c = 0;
    while c < 256 {
        table[c] = match c as u8 {
            digit @ b'0'..=b'9' => digit - b'0',
            letter @ b'a'..=b'f' => letter - b'a' + 10,
            letter @ b'A'..=b'F' => letter - b'A' + 10,
            _ => NOT_HEX,
        };
        c += 1;
    }
    table
};

/// The largest number a record field may hold: 2^53 − 1, the last integer the scripts'
/// Lua numbers (doubles) hold exactly. Epoch milliseconds, and fences in microseconds,
/// stay far below it.
pub(crate) const MAX_NUMBER: u64 = (1 << 53) - 1;

fn required<T>(key: &str, field: &str, value: Option<T>) -> Result<T, StoreError> {
    value.ok_or_else(|| corrupt(key, format!("field `{field}` is missing")))
}

/// A number field: decimal digits only (no sign, no exponent, no fraction), at most
/// [`MAX_NUMBER`], as the scripts read it.
fn parse_number(key: &str, field: &str, value: &[u8]) -> Result<u64, StoreError> {
    let mut number: u64 = 0;
    for &byte in value {
        // Past MAX_NUMBER after any digit, the number stays past it: stop there.
        if !byte.is_ascii_digit() || number > MAX_NUMBER {
            number = u64::MAX;
            break;
        }
        number = number * 10 + u64::from(byte - b'0');
    }
    if value.is_empty() || number > MAX_NUMBER {
        return Err(corrupt(
            key,
            format!(
                "field `{field}` is {:?}, not a whole number up to 2^53",
                String::from_utf8_lossy(value)
            ),
        ));
    }
    Ok(number)
}

pub(crate) fn bytes_of(key: &str, value: redis::Value) -> Result<Vec<u8>, StoreError> {
    match value {
        redis::Value::BulkString(bytes) => Ok(bytes),
        redis::Value::SimpleString(text) => Ok(text.into_bytes()),
        redis::Value::Int(n) => Ok(n.to_string().into_bytes()),
        redis::Value::Okay => Ok(b"OK".to_vec()),
        other => Err(corrupt(
            key,
            format!("unexpected value {other:?} in a reply"),
        )),
    }
}

pub(crate) fn corrupt(key: &str, what: String) -> StoreError {
    StoreError::Corrupt(format!("record under {key:?}: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completed() -> Record {
        Record {
            fingerprint: Fingerprint::from_bytes([7; 32]),
            token: Token::from_stored("t1"),
            fence: 1_712_345_678_901_234,
            started_at: 1_712_345_678_901,
            state: RecordState::Completed {
                response: Response::new(201, Body::json(&"ok").unwrap()).with_header("a", "b"),
                completed_at: 1_712_345_678_999,
            },
        }
    }

    #[test]
    fn a_completed_record_is_one_header_line_then_headers_and_body() {
        let text = String::from_utf8(encode(&completed())).unwrap();
        let fp = "07".repeat(32);
        assert_eq!(
            text,
            format!(
                "idem2 st=completed fp={fp} tok=t1 fence=1712345678901234 sa=1712345678901 \
                 ca=1712345678999 code=201 hl=11\n[[\"a\",\"b\"]]\"ok\""
            )
        );
    }

    #[test]
    fn a_fresh_claim_carries_the_lease_length_not_its_end() {
        let fp = Fingerprint::from_bytes([0xab; 32]);
        let mut value = Vec::new();
        fresh_claim(&mut value, &fp, &Token::from_stored("t1"), 7, 1000, 30_000);
        let text = String::from_utf8(value.clone()).unwrap();
        assert_eq!(
            text,
            format!(
                "idem2 st=processing fp={} tok=t1 fence=7 sa=1000 ls=30000\n",
                "ab".repeat(32)
            )
        );
        let record = decode("k", value).unwrap();
        assert_eq!(
            record.state,
            RecordState::Processing {
                lease_until: Some(31_000)
            }
        );
    }

    #[test]
    fn every_state_reads_back_as_written() {
        let base = completed();
        let mut records = vec![base.clone()];
        for state in [
            RecordState::Processing {
                lease_until: Some(5),
            },
            RecordState::Processing { lease_until: None },
            RecordState::Failed {
                error: Response::new(500, Body::bytes(&b"\xff\x00\n"[..])),
                completed_at: 9,
            },
            RecordState::Completed {
                response: Response::ok(Body::bytes(Bytes::new())),
                completed_at: 9,
            },
            RecordState::NotReplayable {
                reason: "too large: 2 MB".into(),
                completed_at: 9,
            },
        ] {
            records.push(Record {
                state,
                ..base.clone()
            });
        }
        for record in records {
            assert_eq!(decode("k", encode(&record)).unwrap(), record);
        }
    }

    #[test]
    fn an_unknown_format_version_is_corrupt_not_a_panic() {
        let error = decode("k", b"idem9 st=completed\n".to_vec()).unwrap_err();
        assert!(
            matches!(&error, StoreError::Corrupt(m) if m.contains("format version \"9\"")),
            "{error:?}"
        );
        let error = decode("k", b"{\"json\":1}".to_vec()).unwrap_err();
        assert!(matches!(&error, StoreError::Corrupt(_)), "{error:?}");
    }

    #[test]
    fn missing_or_garbled_fields_are_corrupt() {
        assert!(matches!(
            decode("k", b"idem2 st=completed\n".to_vec()),
            Err(StoreError::Corrupt(m)) if m.contains("`fp` is missing")
        ));
        let text = String::from_utf8(encode(&completed()))
            .unwrap()
            .replace("fence=1712345678901234", "fence=1e15");
        assert!(matches!(
            decode("k", text.into_bytes()),
            Err(StoreError::Corrupt(m)) if m.contains("`fence` is \"1e15\"")
        ));
        let text = String::from_utf8(encode(&completed()))
            .unwrap()
            .replace("hl=11", "hl=99");
        assert!(matches!(
            decode("k", text.into_bytes()),
            Err(StoreError::Corrupt(m)) if m.contains("`hl`")
        ));
    }

    #[test]
    fn every_number_field_with_a_sign_exponent_fraction_or_more_than_53_bits_is_corrupt() {
        let done = String::from_utf8(encode(&completed())).unwrap();
        let processing = String::from_utf8(encode(&Record {
            state: RecordState::Processing {
                lease_until: Some(5),
            },
            ..completed()
        }))
        .unwrap();
        let cases = [
            (&done, "fence=1712345678901234", "fence=-1"),
            (&done, "fence=1712345678901234", "fence=9007199254740992"),
            (
                &done,
                "fence=1712345678901234",
                "fence=99999999999999999999999",
            ),
            (&done, "sa=1712345678901", "sa=+1712345678901"),
            (&done, "sa=1712345678901", "sa=1.5"),
            (&done, "ca=1712345678999", "ca="),
            (&done, "code=201", "code=2e2"),
            (&done, "hl=11", "hl=-11"),
            (&processing, "lu=5", "lu=1e400"),
            (&processing, "lu=5", "lu=5 ls=-5"),
        ];
        for (record, field, garbled) in cases {
            let name = garbled
                .rsplit(' ')
                .next()
                .unwrap()
                .split('=')
                .next()
                .unwrap();
            let text = record.replace(field, garbled);
            let error = decode("k", text.into_bytes()).unwrap_err();
            assert!(
                matches!(&error, StoreError::Corrupt(m)
                    if m.starts_with("record under \"k\": ")
                        && m.contains(&format!("field `{name}`"))),
                "{garbled}: {error:?}"
            );
        }
        let largest = done.replace("fence=1712345678901234", "fence=9007199254740991");
        assert_eq!(
            decode("k", largest.into_bytes()).unwrap().fence,
            (1 << 53) - 1
        );
    }

    #[test]
    fn unknown_words_and_extra_spaces_in_the_header_are_skipped() {
        let text = String::from_utf8(encode(&completed()))
            .unwrap()
            .replacen(" sa=", "  later=1 word sa=", 1)
            .replacen('\n', " \n", 1);
        assert_eq!(decode("k", text.into_bytes()).unwrap(), completed());
    }

    #[test]
    fn fingerprints_read_from_hex_as_they_print() {
        let fp = Fingerprint::from_bytes(std::array::from_fn(|i| (i * 37) as u8));
        assert_eq!(parse_hex(&fp.to_hex()), Some(fp));
        assert_eq!(parse_hex(&fp.to_hex().to_uppercase()), Some(fp));
        assert_eq!(parse_hex(&"0g".repeat(32)), None);
        assert_eq!(parse_hex("ab"), None);
        // Every byte, as the first and as the last digit.
        for byte in 0..=u8::MAX {
            let digit = char::from(byte);
            for at in [0, 63] {
                let mut text = "0".repeat(64).into_bytes();
                text[at] = byte;
                let Ok(text) = String::from_utf8(text) else {
                    continue;
                };
                let parsed = parse_hex(&text).map(|fp| fp.as_bytes()[at / 2]);
                // The first digit of a pair is the high half of its byte.
                let shift = if at % 2 == 0 { 4 } else { 0 };
                let expected = digit.to_digit(16).map(|v| (v as u8) << shift);
                assert_eq!(parsed, expected, "byte {byte:#04x} at digit {at}");
            }
        }
    }

    #[test]
    fn a_line_reads_back_what_was_put_whether_it_stays_on_the_stack_or_not() {
        for token_len in [0, 1, 32, 100, 200, 255, 256, 257, 1000] {
            let token = Token::from_stored("t".repeat(token_len));
            let fp = Fingerprint::from_bytes([7; 32]);
            let mut line = Line::new();
            let mut vec = Vec::new();
            fresh_claim(&mut line, &fp, &token, 7, 1000, 30_000);
            fresh_claim(&mut vec, &fp, &token, 7, 1000, 30_000);
            assert_eq!(line.as_bytes(), &vec[..], "token of {token_len} bytes");
        }
    }

    #[test]
    fn words_are_cut_as_split_on_a_space_cuts_them() {
        for line in [
            "",
            " ",
            "a",
            "a b",
            " a",
            "a ",
            "a  b",
            "  ",
            "idem2 st=x  fp=y ",
            "é ü",
        ] {
            let words: Vec<&str> = Words::new(line).collect();
            let split: Vec<&str> = line.split(' ').collect();
            assert_eq!(words, split, "{line:?}");
        }
    }

    #[test]
    fn control_characters_are_found_wherever_they_stand() {
        for byte in 0..=u8::MAX {
            for at in [0, 1, 31, 32, 99] {
                let mut line = vec![b'a'; 100];
                line[at] = byte;
                assert_eq!(
                    has_control(&line),
                    byte.is_ascii_control(),
                    "{byte:#04x} at {at}"
                );
            }
        }
        assert!(!has_control(b""));
    }

    #[test]
    fn tokens_with_spaces_are_refused() {
        assert!(check_token("k", &Token::from_stored("a b")).is_err());
        assert!(check_token("k", &Token::from_stored("")).is_err());
        let generated = Token::generate();
        assert!(check_token("k", &generated).is_ok());
        assert_eq!(generated.as_str().len(), 32);
        assert!(generated
            .as_str()
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    }
}
