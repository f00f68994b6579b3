//! How records are laid out in a Redis hash, and how script replies are read.
//!
//! Every function here is pure: it turns fields into records and replies into values, and
//! reports anything it cannot read as [`StoreError::Corrupt`] naming the key.

use crate::error::StoreError;
use crate::fingerprint::Fingerprint;
use crate::record::{Body, Millis, Record, RecordState, Response, Token};
use crate::store::Finish;

/// The record format this store writes, and the only one it reads.
pub(crate) const FORMAT_VERSION: &str = "1";

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
        let mut items = values
            .into_iter()
            .map(|v| bytes_of(key, v))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter();
        let tag = items
            .next()
            .map(|t| String::from_utf8_lossy(&t).into_owned())
            .ok_or_else(|| corrupt(key, "empty script reply".into()))?;
        Ok(Reply {
            tag,
            items: items.collect(),
        })
    }

    /// The `index`th item as a number.
    pub fn number(&self, key: &str, index: usize) -> Result<u64, StoreError> {
        let item = self.items.get(index).map(Vec::as_slice).unwrap_or_default();
        parse_number(key, "reply", item)
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

/// The script arguments that describe how an operation finished: status, then either code,
/// body type, body and headers, or the reason it is not replayable.
pub(crate) fn finish_args(finish: &Finish) -> (&'static str, Vec<Vec<u8>>) {
    match finish {
        Finish::Completed(response) => ("completed", response_fields(response)),
        Finish::Failed(error) => ("failed", response_fields(error)),
        Finish::NotReplayable(reason) => ("not_replayable", vec![reason.as_bytes().to_vec()]),
    }
}

/// The hash fields of `record`, as `insert` writes them.
pub(crate) fn record_fields(record: &Record) -> Vec<(&'static str, Vec<u8>)> {
    let mut fields = vec![
        ("v", FORMAT_VERSION.as_bytes().to_vec()),
        ("st", record.status().as_str().as_bytes().to_vec()),
        ("fp", record.fingerprint.to_hex().into_bytes()),
        ("tok", record.token.as_str().as_bytes().to_vec()),
        ("fence", record.fence.to_string().into_bytes()),
        ("sa", record.started_at.to_string().into_bytes()),
    ];
    let finished_at = match &record.state {
        RecordState::Processing { lease_until } => {
            if let Some(until) = lease_until {
                fields.push(("lu", until.to_string().into_bytes()));
            }
            return fields;
        }
        RecordState::Completed {
            response,
            completed_at,
        }
        | RecordState::Failed {
            error: response,
            completed_at,
        } => {
            let names = ["code", "bt", "body", "hdr"];
            fields.extend(names.into_iter().zip(response_fields(response)));
            completed_at
        }
        RecordState::NotReplayable {
            reason,
            completed_at,
        } => {
            fields.push(("why", reason.as_bytes().to_vec()));
            completed_at
        }
    };
    fields.push(("ca", finished_at.to_string().into_bytes()));
    fields
}

fn response_fields(response: &Response) -> Vec<Vec<u8>> {
    let (body_type, body) = match &response.body {
        Body::Json(b) => ("json", b),
        Body::Bytes(b) => ("bytes", b),
    };
    // A list of string pairs always serializes.
    let headers = serde_json::to_vec(&response.headers).unwrap_or_else(|_| b"[]".to_vec());
    vec![
        response.status.to_string().into_bytes(),
        body_type.as_bytes().to_vec(),
        body.to_vec(),
        headers,
    ]
}

/// Reads a record from its hash fields, as `HGETALL` lists them.
pub(crate) fn record_from_fields(key: &str, flat: Vec<Vec<u8>>) -> Result<Record, StoreError> {
    let mut fields = Fields::default();
    let mut items = flat.into_iter();
    while let (Some(name), Some(value)) = (items.next(), items.next()) {
        fields.set(&name, value);
    }
    fields.into_record(key)
}

/// The fields idem reads; others are ignored, so a later minor addition stays readable.
#[derive(Default)]
struct Fields {
    v: Option<Vec<u8>>,
    st: Option<Vec<u8>>,
    fp: Option<Vec<u8>>,
    tok: Option<Vec<u8>>,
    fence: Option<Vec<u8>>,
    lu: Option<Vec<u8>>,
    sa: Option<Vec<u8>>,
    ca: Option<Vec<u8>>,
    code: Option<Vec<u8>>,
    bt: Option<Vec<u8>>,
    body: Option<Vec<u8>>,
    hdr: Option<Vec<u8>>,
    why: Option<Vec<u8>>,
}

impl Fields {
    fn set(&mut self, name: &[u8], value: Vec<u8>) {
        let slot = match name {
            b"v" => &mut self.v,
            b"st" => &mut self.st,
            b"fp" => &mut self.fp,
            b"tok" => &mut self.tok,
            b"fence" => &mut self.fence,
            b"lu" => &mut self.lu,
            b"sa" => &mut self.sa,
            b"ca" => &mut self.ca,
            b"code" => &mut self.code,
            b"bt" => &mut self.bt,
            b"body" => &mut self.body,
            b"hdr" => &mut self.hdr,
            b"why" => &mut self.why,
            _ => return,
        };
        *slot = Some(value);
    }

    fn into_record(self, key: &str) -> Result<Record, StoreError> {
        let version = self.v.as_deref().unwrap_or_default();
        if version != FORMAT_VERSION.as_bytes() {
            return Err(corrupt(
                key,
                format!(
                    "record format version {:?}, this idem reads version {FORMAT_VERSION}; \
                     upgrade idem or delete the record",
                    String::from_utf8_lossy(version)
                ),
            ));
        }
        let fingerprint = text(key, "fp", self.fp.as_deref())?
            .parse::<Fingerprint>()
            .map_err(|_| corrupt(key, "field `fp` is not a 64-digit hex fingerprint".into()))?;
        let token = Token::from_stored(text(key, "tok", self.tok.as_deref())?);
        let fence = number(key, "fence", self.fence.as_deref())?;
        let started_at = number(key, "sa", self.sa.as_deref())?;

        let state = match text(key, "st", self.st.as_deref())? {
            "processing" => RecordState::Processing {
                lease_until: self
                    .lu
                    .as_deref()
                    .map(|lu| parse_number(key, "lu", lu))
                    .transpose()?,
            },
            "completed" => RecordState::Completed {
                response: self.response(key)?,
                completed_at: number(key, "ca", self.ca.as_deref())?,
            },
            "failed" => RecordState::Failed {
                error: self.response(key)?,
                completed_at: number(key, "ca", self.ca.as_deref())?,
            },
            "not_replayable" => RecordState::NotReplayable {
                reason: text(key, "why", self.why.as_deref())?.to_owned(),
                completed_at: number(key, "ca", self.ca.as_deref())?,
            },
            other => return Err(corrupt(key, format!("unknown status {other:?}"))),
        };
        Ok(Record {
            fingerprint,
            token,
            fence,
            started_at,
            state,
        })
    }

    fn response(&self, key: &str) -> Result<Response, StoreError> {
        let code = number(key, "code", self.code.as_deref())?;
        let status = u16::try_from(code)
            .map_err(|_| corrupt(key, format!("status code {code} is out of range")))?;
        let body = self.body.clone().unwrap_or_default();
        let body = match text(key, "bt", self.bt.as_deref())? {
            "json" => Body::Json(body.into()),
            "bytes" => Body::Bytes(body.into()),
            other => return Err(corrupt(key, format!("unknown body type {other:?}"))),
        };
        let headers = match self.hdr.as_deref() {
            None => Vec::new(),
            Some(hdr) => serde_json::from_slice(hdr).map_err(|e| {
                corrupt(key, format!("field `hdr` is not a JSON list of pairs: {e}"))
            })?,
        };
        Ok(Response {
            status,
            body,
            headers,
        })
    }
}

fn text<'a>(key: &str, field: &str, value: Option<&'a [u8]>) -> Result<&'a str, StoreError> {
    let value = value.ok_or_else(|| corrupt(key, format!("field `{field}` is missing")))?;
    std::str::from_utf8(value).map_err(|_| corrupt(key, format!("field `{field}` is not UTF-8")))
}

fn number(key: &str, field: &str, value: Option<&[u8]>) -> Result<Millis, StoreError> {
    let value = value.ok_or_else(|| corrupt(key, format!("field `{field}` is missing")))?;
    parse_number(key, field, value)
}

fn parse_number(key: &str, field: &str, value: &[u8]) -> Result<u64, StoreError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| {
            corrupt(
                key,
                format!(
                    "field `{field}` is {:?}, not a whole number",
                    String::from_utf8_lossy(value)
                ),
            )
        })
}

fn bytes_of(key: &str, value: redis::Value) -> Result<Vec<u8>, StoreError> {
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

/// Reads an `HGETALL` reply (an array under RESP2, a map under RESP3) as a flat list.
pub(crate) fn flat_fields(key: &str, value: redis::Value) -> Result<Vec<Vec<u8>>, StoreError> {
    let pairs = match value {
        redis::Value::Array(items) => items,
        redis::Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        redis::Value::Nil => Vec::new(),
        other => return Err(corrupt(key, format!("unexpected HGETALL reply {other:?}"))),
    };
    pairs.into_iter().map(|v| bytes_of(key, v)).collect()
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

    fn flatten(fields: Vec<(&'static str, Vec<u8>)>) -> Vec<Vec<u8>> {
        fields
            .into_iter()
            .flat_map(|(n, v)| [n.as_bytes().to_vec(), v])
            .collect()
    }

    #[test]
    fn completed_record_fields_are_pinned() {
        let fields = record_fields(&completed());
        let text: Vec<(&str, String)> = fields
            .iter()
            .map(|(n, v)| (*n, String::from_utf8_lossy(v).into_owned()))
            .collect();
        let fp = "07".repeat(32);
        assert_eq!(
            text,
            vec![
                ("v", "1".to_owned()),
                ("st", "completed".to_owned()),
                ("fp", fp),
                ("tok", "t1".to_owned()),
                ("fence", "1712345678901234".to_owned()),
                ("sa", "1712345678901".to_owned()),
                ("code", "201".to_owned()),
                ("bt", "json".to_owned()),
                ("body", "\"ok\"".to_owned()),
                ("hdr", "[[\"a\",\"b\"]]".to_owned()),
                ("ca", "1712345678999".to_owned()),
            ]
        );
    }

    #[test]
    fn every_state_reads_back_as_written() {
        let mut records = vec![completed()];
        let base = completed();
        records.push(Record {
            state: RecordState::Processing {
                lease_until: Some(5),
            },
            ..base.clone()
        });
        records.push(Record {
            state: RecordState::Processing { lease_until: None },
            ..base.clone()
        });
        records.push(Record {
            state: RecordState::Failed {
                error: Response::new(500, Body::bytes(&b"\xff\x00"[..])),
                completed_at: 9,
            },
            ..base.clone()
        });
        records.push(Record {
            state: RecordState::NotReplayable {
                reason: "too large".into(),
                completed_at: 9,
            },
            ..base
        });
        for record in records {
            let flat = flatten(record_fields(&record));
            assert_eq!(record_from_fields("k", flat).unwrap(), record);
        }
    }

    #[test]
    fn an_unknown_format_version_is_corrupt_not_a_panic() {
        let mut flat = flatten(record_fields(&completed()));
        flat[1] = b"2".to_vec();
        let error = record_from_fields("k", flat).unwrap_err();
        assert!(matches!(&error, StoreError::Corrupt(m) if m.contains("format version \"2\"")));
    }

    #[test]
    fn missing_or_garbled_fields_are_corrupt() {
        let flat = flatten(vec![("v", b"1".to_vec()), ("st", b"completed".to_vec())]);
        assert!(matches!(
            record_from_fields("k", flat),
            Err(StoreError::Corrupt(m)) if m.contains("`fp` is missing")
        ));
        let mut fields = record_fields(&completed());
        fields[4].1 = b"1e15".to_vec();
        assert!(matches!(
            record_from_fields("k", flatten(fields)),
            Err(StoreError::Corrupt(m)) if m.contains("`fence` is \"1e15\"")
        ));
    }
}
