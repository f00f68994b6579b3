//! Fingerprints: SHA-256 over a canonical encoding of a call's arguments.
//!
//! A key reused with different arguments must be refused, so every record keeps a
//! fingerprint of the arguments that created it and every later call under the same key is
//! compared against it. A fingerprint is the SHA-256 digest of a binary encoding that this
//! module defines and owns. It does not depend on serde_json's output, on `std::hash::Hash`,
//! on the toolchain, or on the order in which a `HashMap` happens to iterate, so it is stable
//! across processes, machines and releases.
//!
//! ```
//! use std::collections::HashMap;
//!
//! use idem_runtime::fingerprint::{fingerprint, Fingerprinter};
//!
//! let eu_first = HashMap::from([("eu", 7), ("us", 9)]);
//! let us_first = HashMap::from([("us", 9), ("eu", 7)]);
//! assert_eq!(fingerprint(&eu_first)?, fingerprint(&us_first)?);
//!
//! // An argument list hashes like the tuple of its arguments; the names are not hashed.
//! let mut args = Fingerprinter::new();
//! args.arg("tenant", "acme")?.arg("amount", &1250u64)?;
//! assert_eq!(args.finish(), fingerprint(&("acme", 1250u64))?);
//!
//! // Non-finite floats are refused rather than written like `None`.
//! assert!(fingerprint(&Some(f64::NAN)).is_err());
//! # Ok::<(), idem_runtime::fingerprint::FingerprintError>(())
//! ```
//!
//! # Which values count as equal
//!
//! Two values have the same fingerprint exactly when they have the same canonical encoding.
//! The encoding follows the value's `Serialize` implementation, with these rules:
//!
//! - **Maps** do not depend on iteration order: entries are sorted by the bytes of their
//!   encoded key. Keys may be any serializable value (`HashMap<(u32, u32), Fee>` works).
//! - **Structs** are maps keyed by field name. Declaration order does not matter, fields
//!   skipped by `#[serde(skip_serializing_if = ..)]` contribute nothing, and the struct's name
//!   is not encoded; renaming a field changes the fingerprint unless `#[serde(rename = ..)]`
//!   keeps its serialized name. A struct therefore has the same fingerprint as a `serde_json::Value`
//!   object with the same field names and values, as long as each field has a JSON
//!   counterpart (strings, numbers, booleans, sequences, maps, nested structs). `Option`,
//!   `()` and enums have none: `None` is not `null`.
//! - **Integers** of every width and signedness encode by value: `7u8`, `7i64`, `7u128` and
//!   the JSON number `7` are equal.
//! - **Floats** are a kind of their own: `1.0` is not `1`. `f32` is widened exactly to `f64`
//!   (`0.5f32` equals `0.5f64`; `0.1f32` does not equal `0.1f64`, being a different number).
//!   `-0.0` is encoded as `0.0`, since the two compare equal. NaN and ±infinity are refused
//!   with [`FingerprintError::NonFiniteFloat`]: JSON writes them as `null`, and there is no
//!   one right answer to whether two NaNs are the same argument.
//! - **Text**: a `char` equals the one-character string. Byte strings (`serialize_bytes`,
//!   e.g. through `serde_bytes`) differ from sequences of `u8`, which is how a `Vec<u8>`
//!   serializes by default.
//! - **Sequences**: `Vec`, slices, arrays, tuples and tuple structs are all sequences, so
//!   `(1, 2)`, `[1, 2]` and `vec![1, 2]` are equal.
//! - **Newtype structs** are transparent: `UserId(7)` equals `7`. **Unit structs** encode as
//!   a tag of their own, without their name.
//! - **Enums** encode the variant's name and payload, never the enum's name or the variant's
//!   index: reordering variants keeps fingerprints, renaming one changes them. Unit, newtype,
//!   tuple and struct variants have distinct tags, so `E::A((1, 2))` differs from `E::A(1, 2)`.
//! - `()`, `None`, `Some(())`, an empty sequence, an empty map and `""` are pairwise distinct.
//! - Type names are never encoded: the values compared are always arguments of one function,
//!   whose types the compiler has already fixed.
//! - The encoder reports itself human-readable, so types with two serde forms (IP addresses,
//!   UUIDs, timestamps) use their text form, the one they have in JSON.
//!
//! # Argument lists
//!
//! [`Fingerprinter`] fingerprints a function's arguments one by one. Only their positions
//! count, not their names: renaming a parameter keeps every stored record valid, while
//! reordering parameters changes the fingerprint. The arguments `(a, b)` have the fingerprint
//! of the tuple `(a, b)`, a single argument `a` that of `(a,)`.
//!
//! # Sets are sequences: a known shortcoming
//!
//! Serde serializes a `HashSet` exactly like a `Vec`, so the encoder cannot tell that its
//! order carries no meaning, and the set's iteration order, which varies between processes,
//! leaks into the fingerprint. Two calls with the same `HashSet` can then disagree, and a
//! genuine retry is refused as a mismatch. Serialize such fields through [`sorted_set`] (or
//! wrap an argument in [`SortedSet`]), which writes the elements in canonical order:
//!
//! ```
//! use std::collections::HashSet;
//!
//! #[derive(serde::Serialize)]
//! struct Invite {
//!     #[serde(serialize_with = "idem_runtime::fingerprint::sorted_set")]
//!     emails: HashSet<String>,
//! }
//! ```
//!
//! `BTreeSet` and `BTreeMap` iterate in order already and need nothing. The canonical order is
//! not `Ord` order, so a `HashSet` written through [`sorted_set`] does not share its
//! fingerprint with a `BTreeSet` of the same elements. Lifting this limitation would need
//! serde to tell sets from sequences, which its data model does not.
//!
//! # The encoding, byte by byte
//!
//! A fingerprint is `SHA-256(FORMAT_VERSION ‖ enc(value))`, where `FORMAT_VERSION` is one
//! byte (see [`FORMAT_VERSION`]) and `enc` is defined below. `len` and `count` are `u64`
//! little-endian; a *name* (of a variant) is `len` followed by its UTF-8 bytes.
//!
//! | value                         | tag  | then                                                 |
//! |-------------------------------|------|------------------------------------------------------|
//! | end of a sequence             | `00` | —                                                    |
//! | `()`                          | `01` | —                                                    |
//! | `None`                        | `02` | —                                                    |
//! | `Some(v)`                     | `03` | `enc(v)`                                             |
//! | `bool`                        | `04` | `00` (false) or `01` (true)                          |
//! | integer, any width            | `05` | sign `00` (≥ 0) or `01` (< 0), magnitude `u128` LE   |
//! | float, `f32` or `f64`         | `06` | the `f64` bits, LE (8 bytes); `-0.0` as `0.0`        |
//! | `str`, `char`                 | `07` | `len`, UTF-8 bytes                                   |
//! | bytes                         | `08` | `len`, the bytes                                     |
//! | sequence, tuple, tuple struct | `09` | `enc(element)` for each element, then `00`           |
//! | map, struct                   | `0a` | `count`, then `enc(key) ‖ enc(value)` for each entry |
//! | unit struct                   | `0b` | —                                                    |
//! | unit variant                  | `0c` | name                                                 |
//! | newtype variant               | `0d` | name, `enc(value)`                                   |
//! | tuple variant                 | `0e` | name, `enc(element)` for each element, then `00`     |
//! | struct variant                | `0f` | name, `count`, `enc(field) ‖ enc(value)` for each    |
//!
//! A struct field's key is its name encoded as a `str` (`07`, `len`, bytes). Map and struct
//! entries are written in ascending order of their encoded bytes, which orders them by key.
//! Newtype structs write their content only. Every encoding is self-delimiting (the tag says
//! what follows, lengths and counts come first, and `00` is no value's tag), so two different
//! values, or two different argument lists, never produce the same bytes.
//!
//! For example, `("ab", 7u8)` encodes as
//! `09 07 0200000000000000 6162 05 00 07000000000000000000000000000000 00`.
//!
//! # Versioning
//!
//! The version byte is hashed, not stored. Any change to the table or the rules above must
//! come with a new [`FORMAT_VERSION`] and new golden vectors in this module's tests. A new
//! version changes every fingerprint, so a retry of a call made before the upgrade is
//! refused as a mismatch until its record expires: ship it as a breaking change.
//!
//! # Limits
//!
//! serde_json's `arbitrary_precision` feature and its `RawValue` type serialize through
//! private structs that hold JSON text. With the feature on (cargo features are additive, so
//! any crate in the build can turn it on), a JSON number fingerprints as its text: `7` no
//! longer equals `7u8`, and `1.0` differs from `1.00`. A `RawValue` fingerprints as its text,
//! whitespace and key order included; parse it into a `Value` where that matters.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use serde::ser::{
    self, Serialize, SerializeMap, SerializeSeq, SerializeStruct, SerializeStructVariant,
    SerializeTuple, SerializeTupleStruct, SerializeTupleVariant, Serializer,
};
use sha2::{Digest, Sha256};

/// The version of the canonical encoding: the first byte hashed into every fingerprint.
pub const FORMAT_VERSION: u8 = 1;

/// How deep values may nest (containers, options and newtypes each count one level). Deeper
/// values are refused with [`FingerprintError::TooDeep`] rather than risking a stack
/// overflow, which would abort the process. serde_json parses JSON up to 128 levels, so
/// every value it produces fits.
pub const MAX_DEPTH: usize = 256;

/// The SHA-256 digest of a canonical encoding of a call's arguments.
// Aligned to 8: at alignment 1 the compiler placed fingerprints at odd offsets in futures
// and copied them in 4-byte pieces that later 16-byte reads had to wait for.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[repr(align(8))]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// A fingerprint from its 32 digest bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Fingerprint(bytes)
    }

    /// The 32 digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// The text is not 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a fingerprint is 64 hex digits")]
pub struct ParseFingerprintError;

impl FromStr for Fingerprint {
    type Err = ParseFingerprintError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.as_bytes();
        if text.len() != 64 {
            return Err(ParseFingerprintError);
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| ParseFingerprintError)?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| ParseFingerprintError)?;
        }
        Ok(Fingerprint(out))
    }
}

/// Why a value could not be fingerprinted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FingerprintError {
    /// A float is NaN or infinite.
    #[error("{} holds a non-finite float ({value}); fingerprints accept finite floats only", where_(.argument))]
    NonFiniteFloat {
        /// The argument, when known.
        argument: Option<&'static str>,
        /// `NaN`, `inf` or `-inf`.
        value: String,
    },
    /// The value nests deeper than [`MAX_DEPTH`] levels.
    #[error("{} nests deeper than {max} levels; fingerprint a flatter value (`fingerprint = ..`) or `skip` it", where_(.argument))]
    TooDeep {
        /// The argument, when known.
        argument: Option<&'static str>,
        /// The limit, [`MAX_DEPTH`].
        max: usize,
    },
    /// The value's `Serialize` implementation failed.
    #[error("{} failed to serialize: {message}", where_(.argument))]
    Serialize {
        /// The argument, when known.
        argument: Option<&'static str>,
        /// What it said.
        message: String,
    },
}

fn where_(argument: &Option<&'static str>) -> String {
    match argument {
        Some(name) => format!("argument `{name}`"),
        None => "the value".to_owned(),
    }
}

/// Fingerprints one value.
///
/// # Errors
///
/// [`FingerprintError::NonFiniteFloat`] when the value holds NaN or an infinity, and
/// [`FingerprintError::Serialize`] when its `Serialize` implementation fails; both with
/// `argument: None`.
pub fn fingerprint<T: Serialize + ?Sized>(value: &T) -> Result<Fingerprint, FingerprintError> {
    let mut encoder = Encoder::new();
    value
        .serialize(&mut encoder)
        .map_err(|error| error.at(None))?;
    Ok(encoder.finish())
}

/// Fingerprints a function's arguments, one at a time, without collecting them in a tuple.
///
/// Arguments count by position, not by name: the result equals [`fingerprint`] of the tuple
/// of the arguments, so renaming a parameter keeps stored records valid.
///
/// ```
/// use idem_runtime::fingerprint::{fingerprint, Fingerprinter};
///
/// let mut args = Fingerprinter::new();
/// args.arg("item", &42u32)?.arg("discount", &Some(0.25))?;
/// assert_eq!(args.finish(), fingerprint(&(42u32, Some(0.25)))?);
/// # Ok::<(), idem_runtime::fingerprint::FingerprintError>(())
/// ```
pub struct Fingerprinter {
    encoder: Encoder,
    arguments: usize,
    failed: bool,
}

impl Fingerprinter {
    /// A fingerprinter with no arguments yet.
    pub fn new() -> Self {
        let mut encoder = Encoder::new();
        encoder.write(&[tag::SEQ]);
        Fingerprinter {
            encoder,
            arguments: 0,
            failed: false,
        }
    }

    /// Adds the next argument. `name` is used in errors only; it is not hashed.
    ///
    /// # Errors
    ///
    /// As [`fingerprint`], with `argument: Some(name)`. After an error the fingerprinter
    /// holds part of an argument and must be dropped.
    pub fn arg<T: Serialize + ?Sized>(
        &mut self,
        name: &'static str,
        value: &T,
    ) -> Result<&mut Self, FingerprintError> {
        self.arguments += 1;
        if let Err(error) = value.serialize(&mut self.encoder) {
            self.failed = true;
            return Err(error.at(Some(name)));
        }
        Ok(self)
    }

    /// The fingerprint of the arguments added so far.
    ///
    /// # Panics
    ///
    /// When an earlier [`Fingerprinter::arg`] failed: the bytes hashed so far end inside an
    /// argument, and a fingerprint made of them could equal that of another argument list.
    pub fn finish(mut self) -> Fingerprint {
        assert!(
            !self.failed,
            "Fingerprinter::finish after an argument failed to fingerprint"
        );
        self.encoder.write(&[tag::END]);
        self.encoder.finish()
    }
}

impl Default for Fingerprinter {
    fn default() -> Self {
        Fingerprinter::new()
    }
}

impl fmt::Debug for Fingerprinter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fingerprinter")
            .field("arguments", &self.arguments)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

/// Serializes a set as a sequence in canonical order, whatever its iteration order.
///
/// Use it as `#[serde(serialize_with = "idem_runtime::fingerprint::sorted_set")]` on a
/// `HashSet` field (see the module docs for why). The elements are ordered by the bytes of
/// their canonical encoding, for every serializer, so serde_json's output becomes
/// deterministic too.
///
/// When an element cannot be encoded (it holds NaN, say), the elements are written in
/// iteration order and the serializer meets the bad element itself: the fingerprint then
/// fails with the same error it would without this function.
///
/// # Errors
///
/// Whatever `serializer` reports.
pub fn sorted_set<'s, S, T>(set: &'s T, serializer: S) -> Result<S::Ok, S::Error>
where
    S: Serializer,
    T: ?Sized,
    &'s T: IntoIterator,
    <&'s T as IntoIterator>::Item: Serialize,
{
    let elements: Vec<_> = set.into_iter().collect();
    match canonical_order(&elements) {
        Some(order) => serializer.collect_seq(order.into_iter().map(|index| &elements[index])),
        None => serializer.collect_seq(elements),
    }
}

/// A borrowed set that serializes through [`sorted_set`], for passing a `HashSet` to
/// [`fingerprint`] or [`Fingerprinter::arg`] directly.
#[derive(Debug, Clone, Copy)]
pub struct SortedSet<'a, T: ?Sized>(pub &'a T);

impl<'s, T> Serialize for SortedSet<'s, T>
where
    T: ?Sized,
    &'s T: IntoIterator,
    <&'s T as IntoIterator>::Item: Serialize,
{
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        sorted_set(self.0, serializer)
    }
}

/// The permutation that puts `elements` in the order of their encodings, or `None` when one
/// cannot be encoded.
fn canonical_order<E: Serialize>(elements: &[E]) -> Option<Vec<usize>> {
    let mut encoder = Encoder::new();
    encoder.open_entries();
    for element in elements {
        element.serialize(&mut encoder).ok()?;
        encoder.end_entry();
    }
    let encoded = encoder.open.pop()?;

    let mut order: Vec<usize> = (0..elements.len()).collect();
    order.sort_by(|&a, &b| encoded.entry(a).cmp(encoded.entry(b)));
    Some(order)
}

/// The tags of the canonical encoding; the module docs give the bytes that follow each.
mod tag {
    pub const END: u8 = 0x00;
    pub const UNIT: u8 = 0x01;
    pub const NONE: u8 = 0x02;
    pub const SOME: u8 = 0x03;
    pub const BOOL: u8 = 0x04;
    pub const INT: u8 = 0x05;
    pub const FLOAT: u8 = 0x06;
    pub const STR: u8 = 0x07;
    pub const BYTES: u8 = 0x08;
    pub const SEQ: u8 = 0x09;
    pub const MAP: u8 = 0x0a;
    pub const UNIT_STRUCT: u8 = 0x0b;
    pub const UNIT_VARIANT: u8 = 0x0c;
    pub const NEWTYPE_VARIANT: u8 = 0x0d;
    pub const TUPLE_VARIANT: u8 = 0x0e;
    pub const STRUCT_VARIANT: u8 = 0x0f;
}

/// Why the encoder stopped, before we know which argument it was encoding.
#[derive(Debug)]
enum EncodeError {
    NonFiniteFloat(f64),
    TooDeep,
    Custom(String),
}

impl EncodeError {
    fn at(self, argument: Option<&'static str>) -> FingerprintError {
        match self {
            EncodeError::NonFiniteFloat(value) => FingerprintError::NonFiniteFloat {
                argument,
                value: value.to_string(),
            },
            EncodeError::TooDeep => FingerprintError::TooDeep {
                argument,
                max: MAX_DEPTH,
            },
            EncodeError::Custom(message) => FingerprintError::Serialize { argument, message },
        }
    }
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::NonFiniteFloat(value) => write!(f, "non-finite float {value}"),
            EncodeError::TooDeep => write!(f, "nested deeper than {MAX_DEPTH} levels"),
            EncodeError::Custom(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for EncodeError {}

impl ser::Error for EncodeError {
    fn custom<M: fmt::Display>(message: M) -> Self {
        EncodeError::Custom(message.to_string())
    }
}

/// Writes the canonical encoding straight into SHA-256.
///
/// Everything but maps streams. A map's entries must be sorted before they are hashed, so
/// while a map is open its entries are collected in a [`Frame`]; a map inside an entry gets
/// its own frame and, once sorted, lands in its parent's. Closed frames are kept for reuse,
/// so a value allocates only as many buffers as it nests maps.
struct Encoder {
    hasher: Sha256,
    open: Vec<Frame>,
    spare: Vec<Frame>,
    depth: usize,
}

/// The entries of one open map, laid end to end.
#[derive(Default)]
struct Frame {
    bytes: Vec<u8>,
    entries: Vec<Range<usize>>,
}

impl Frame {
    fn entry(&self, index: usize) -> &[u8] {
        &self.bytes[self.entries[index].clone()]
    }

    fn written_since_last_entry(&self) -> Range<usize> {
        let start = self.entries.last().map_or(0, |entry| entry.end);
        start..self.bytes.len()
    }
}

impl Encoder {
    fn new() -> Self {
        let mut hasher = Sha256::new();
        hasher.update([FORMAT_VERSION]);
        Encoder {
            hasher,
            open: Vec::new(),
            spare: Vec::new(),
            depth: 0,
        }
    }

    fn finish(self) -> Fingerprint {
        debug_assert!(self.open.is_empty(), "a map was left open");
        Fingerprint(self.hasher.finalize().into())
    }

    fn write(&mut self, bytes: &[u8]) {
        match self.open.last_mut() {
            Some(frame) => frame.bytes.extend_from_slice(bytes),
            None => self.hasher.update(bytes),
        }
    }

    fn write_len(&mut self, len: usize) {
        self.write(&(len as u64).to_le_bytes());
    }

    fn write_tagged_text(&mut self, tag: u8, text: &[u8]) {
        self.write(&[tag]);
        self.write_len(text.len());
        self.write(text);
    }

    fn write_int(&mut self, negative: bool, magnitude: u128) {
        let mut bytes = [0u8; 18];
        bytes[0] = tag::INT;
        bytes[1] = u8::from(negative);
        bytes[2..].copy_from_slice(&magnitude.to_le_bytes());
        self.write(&bytes);
    }

    fn write_signed(&mut self, value: i128) {
        self.write_int(value < 0, value.unsigned_abs());
    }

    /// Encodes a value nested in the current one. Serde recurses through the user's types,
    /// so an unbounded nesting (a long linked list, say) would overflow the stack and abort
    /// the process; past [`MAX_DEPTH`] levels it is refused instead.
    fn child<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), EncodeError> {
        if self.depth >= MAX_DEPTH {
            return Err(EncodeError::TooDeep);
        }
        self.depth += 1;
        let result = value.serialize(&mut *self);
        self.depth -= 1;
        result
    }

    fn open_entries(&mut self) {
        let frame = self.spare.pop().unwrap_or_default();
        self.open.push(frame);
    }

    fn end_entry(&mut self) {
        let frame = self
            .open
            .last_mut()
            .expect("an entry ends inside an open map");
        let entry = frame.written_since_last_entry();
        frame.entries.push(entry);
    }

    fn close_entries(&mut self) {
        let mut frame = self
            .open
            .pop()
            .expect("serde closes only the maps it opened");
        // A key written without its value still counts, so that no byte escapes the hash.
        let trailing = frame.written_since_last_entry();
        if !trailing.is_empty() {
            frame.entries.push(trailing);
        }

        let Frame { bytes, entries } = &mut frame;
        entries.sort_unstable_by(|a, b| bytes[a.clone()].cmp(&bytes[b.clone()]));
        self.write_len(entries.len());
        for entry in entries.iter() {
            self.write(&bytes[entry.clone()]);
        }

        frame.bytes.clear();
        frame.entries.clear();
        self.spare.push(frame);
    }
}

impl Serializer for &mut Encoder {
    type Ok = ();
    type Error = EncodeError;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    fn serialize_bool(self, value: bool) -> Result<(), EncodeError> {
        self.write(&[tag::BOOL, u8::from(value)]);
        Ok(())
    }

    fn serialize_i8(self, value: i8) -> Result<(), EncodeError> {
        self.serialize_i128(value.into())
    }

    fn serialize_i16(self, value: i16) -> Result<(), EncodeError> {
        self.serialize_i128(value.into())
    }

    fn serialize_i32(self, value: i32) -> Result<(), EncodeError> {
        self.serialize_i128(value.into())
    }

    fn serialize_i64(self, value: i64) -> Result<(), EncodeError> {
        self.serialize_i128(value.into())
    }

    fn serialize_i128(self, value: i128) -> Result<(), EncodeError> {
        self.write_signed(value);
        Ok(())
    }

    fn serialize_u8(self, value: u8) -> Result<(), EncodeError> {
        self.serialize_u128(value.into())
    }

    fn serialize_u16(self, value: u16) -> Result<(), EncodeError> {
        self.serialize_u128(value.into())
    }

    fn serialize_u32(self, value: u32) -> Result<(), EncodeError> {
        self.serialize_u128(value.into())
    }

    fn serialize_u64(self, value: u64) -> Result<(), EncodeError> {
        self.serialize_u128(value.into())
    }

    fn serialize_u128(self, value: u128) -> Result<(), EncodeError> {
        self.write_int(false, value);
        Ok(())
    }

    fn serialize_f32(self, value: f32) -> Result<(), EncodeError> {
        self.serialize_f64(value.into())
    }

    fn serialize_f64(self, value: f64) -> Result<(), EncodeError> {
        if !value.is_finite() {
            return Err(EncodeError::NonFiniteFloat(value));
        }
        // `-0.0 == 0.0`, so both take the bits of `0.0`.
        let value = if value == 0.0 { 0.0 } else { value };
        let mut bytes = [0u8; 9];
        bytes[0] = tag::FLOAT;
        bytes[1..].copy_from_slice(&value.to_bits().to_le_bytes());
        self.write(&bytes);
        Ok(())
    }

    fn serialize_char(self, value: char) -> Result<(), EncodeError> {
        self.serialize_str(value.encode_utf8(&mut [0u8; 4]))
    }

    fn serialize_str(self, value: &str) -> Result<(), EncodeError> {
        self.write_tagged_text(tag::STR, value.as_bytes());
        Ok(())
    }

    fn serialize_bytes(self, value: &[u8]) -> Result<(), EncodeError> {
        self.write_tagged_text(tag::BYTES, value);
        Ok(())
    }

    fn serialize_none(self) -> Result<(), EncodeError> {
        self.write(&[tag::NONE]);
        Ok(())
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), EncodeError> {
        self.write(&[tag::SOME]);
        self.child(value)
    }

    fn serialize_unit(self) -> Result<(), EncodeError> {
        self.write(&[tag::UNIT]);
        Ok(())
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), EncodeError> {
        self.write(&[tag::UNIT_STRUCT]);
        Ok(())
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), EncodeError> {
        self.write_tagged_text(tag::UNIT_VARIANT, variant.as_bytes());
        Ok(())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), EncodeError> {
        self.child(value)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), EncodeError> {
        self.write_tagged_text(tag::NEWTYPE_VARIANT, variant.as_bytes());
        self.child(value)
    }

    // Sequences end with `END` rather than start with a count: serde does not always know
    // the length up front, and `Fingerprinter` never does.
    fn serialize_seq(self, _len: Option<usize>) -> Result<Self, EncodeError> {
        self.write(&[tag::SEQ]);
        Ok(self)
    }

    fn serialize_tuple(self, _len: usize) -> Result<Self, EncodeError> {
        self.write(&[tag::SEQ]);
        Ok(self)
    }

    fn serialize_tuple_struct(self, _name: &'static str, _len: usize) -> Result<Self, EncodeError> {
        self.write(&[tag::SEQ]);
        Ok(self)
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Self, EncodeError> {
        self.write_tagged_text(tag::TUPLE_VARIANT, variant.as_bytes());
        Ok(self)
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Self, EncodeError> {
        self.write(&[tag::MAP]);
        self.open_entries();
        Ok(self)
    }

    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Self, EncodeError> {
        self.write(&[tag::MAP]);
        self.open_entries();
        Ok(self)
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Self, EncodeError> {
        self.write_tagged_text(tag::STRUCT_VARIANT, variant.as_bytes());
        self.open_entries();
        Ok(self)
    }

    // Human-readable, so types with a text form (addresses, UUIDs, timestamps) encode as
    // they appear in JSON and a typed argument matches its JSON counterpart.
    fn is_human_readable(&self) -> bool {
        true
    }
}

// Every kind of sequence (seq, tuple, tuple struct, tuple variant) encodes alike: each
// element, then `END`.
macro_rules! sequence_impls {
    ($($kind:ident :: $element:ident),* $(,)?) => {$(
        impl $kind for &mut Encoder {
            type Ok = ();
            type Error = EncodeError;

            fn $element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), EncodeError> {
                (**self).child(value)
            }

            fn end(self) -> Result<(), EncodeError> {
                self.write(&[tag::END]);
                Ok(())
            }
        }
    )*};
}

sequence_impls!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field,
);

impl SerializeMap for &mut Encoder {
    type Ok = ();
    type Error = EncodeError;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), EncodeError> {
        (**self).child(key)
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), EncodeError> {
        (**self).child(value)?;
        self.end_entry();
        Ok(())
    }

    fn end(self) -> Result<(), EncodeError> {
        self.close_entries();
        Ok(())
    }
}

// Structs and struct variants encode alike: a map keyed by field name.
macro_rules! struct_impls {
    ($($kind:ident),* $(,)?) => {$(
        impl $kind for &mut Encoder {
            type Ok = ();
            type Error = EncodeError;

            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result<(), EncodeError> {
                self.write_tagged_text(tag::STR, key.as_bytes());
                (**self).child(value)?;
                self.end_entry();
                Ok(())
            }

            fn end(self) -> Result<(), EncodeError> {
                self.close_entries();
                Ok(())
            }
        }
    )*};
}

struct_impls!(SerializeStruct, SerializeStructVariant);

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap, HashSet};
    use std::path::{Path, PathBuf};

    use proptest::prelude::*;
    use serde::Serialize;
    use serde_json::{json, Value};

    use super::*;

    fn fp<T: Serialize + ?Sized>(value: &T) -> Fingerprint {
        fingerprint(value).expect("the value is fingerprintable")
    }

    /// The canonical encoding of `value`, without the version byte.
    fn encoding<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
        let mut encoder = Encoder::new();
        encoder.open_entries();
        value
            .serialize(&mut encoder)
            .expect("the value is encodable");
        encoder.open.pop().expect("the frame opened above").bytes
    }

    fn hex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        digits
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect()
    }

    /// Serializes through `serialize_bytes`, as `serde_bytes` does.
    struct Bytes<'a>(&'a [u8]);

    impl Serialize for Bytes<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.serialize_bytes(self.0)
        }
    }

    #[derive(Serialize)]
    struct Marker;

    #[derive(Serialize)]
    struct UserId(u64);

    #[derive(Serialize)]
    struct Point(i32, i32);

    #[derive(Serialize)]
    enum Shape {
        Empty,
        Circle(u32),
        Rect(u32, u32),
        Named { name: String, sides: u8 },
        Wrapped((u32, u32)),
    }

    #[derive(Serialize)]
    enum ShapeReordered {
        Named { sides: u8, name: String },
        Circle(u32),
    }

    #[derive(Serialize)]
    struct Customer {
        name: String,
        vip: bool,
    }

    #[derive(Serialize)]
    struct Order {
        id: u32,
        customer: Customer,
        lines: Vec<String>,
        total: f64,
    }

    #[derive(Serialize)]
    struct OrderReordered {
        total: f64,
        lines: Vec<String>,
        customer: Customer,
        id: u32,
    }

    fn order() -> Order {
        Order {
            id: 7,
            customer: Customer {
                name: "Zoë".to_owned(),
                vip: true,
            },
            lines: vec!["sku-1".to_owned(), "sku-2".to_owned()],
            total: 12.5,
        }
    }

    // ---- the byte layout -------------------------------------------------------------------

    #[test]
    fn every_tag_encodes_as_the_module_docs_specify() {
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("unit", encoding(&()), "01"),
            ("none", encoding(&None::<u8>), "02"),
            ("some unit", encoding(&Some(())), "03 01"),
            ("false", encoding(&false), "04 00"),
            ("true", encoding(&true), "04 01"),
            (
                "zero",
                encoding(&0u8),
                "05 00 00000000000000000000000000000000",
            ),
            (
                "minus one",
                encoding(&-1i64),
                "05 01 01000000000000000000000000000000",
            ),
            (
                "i128::MIN",
                encoding(&i128::MIN),
                "05 01 00000000000000000000000000000080",
            ),
            (
                "u128::MAX",
                encoding(&u128::MAX),
                "05 00 ffffffffffffffffffffffffffffffff",
            ),
            ("1.5", encoding(&1.5f64), "06 000000000000f83f"),
            ("-0.0", encoding(&-0.0f64), "06 0000000000000000"),
            ("f32 0.5", encoding(&0.5f32), "06 000000000000e03f"),
            ("empty str", encoding(""), "07 0000000000000000"),
            ("str", encoding("hé"), "07 0300000000000000 68c3a9"),
            ("char", encoding(&'é'), "07 0200000000000000 c3a9"),
            (
                "bytes",
                encoding(&Bytes(&[1, 2])),
                "08 0200000000000000 0102",
            ),
            (
                "vec",
                encoding(&vec![1u8, 2]),
                "09 05 00 01000000000000000000000000000000 \
                    05 00 02000000000000000000000000000000 00",
            ),
            ("empty tuple array", encoding(&[0u8; 0]), "09 00"),
            (
                "tuple struct",
                encoding(&Point(0, -1)),
                "09 05 00 00000000000000000000000000000000 \
                    05 01 01000000000000000000000000000000 00",
            ),
            (
                "map, written out of order",
                encoding(&BTreeMap::from([("b", ()), ("a", ())])),
                "0a 0200000000000000 07 0100000000000000 61 01 07 0100000000000000 62 01",
            ),
            (
                "empty map",
                encoding(&BTreeMap::<u8, u8>::new()),
                "0a 0000000000000000",
            ),
            ("unit struct", encoding(&Marker), "0b"),
            (
                "newtype struct",
                encoding(&UserId(7)),
                "05 00 07000000000000000000000000000000",
            ),
            (
                "unit variant",
                encoding(&Shape::Empty),
                "0c 0500000000000000 456d707479",
            ),
            (
                "newtype variant",
                encoding(&Shape::Circle(2)),
                "0d 0600000000000000 436972636c65 05 00 02000000000000000000000000000000",
            ),
            (
                "tuple variant",
                encoding(&Shape::Rect(1, 2)),
                "0e 0400000000000000 52656374 \
                    05 00 01000000000000000000000000000000 \
                    05 00 02000000000000000000000000000000 00",
            ),
            (
                "struct variant",
                encoding(&Shape::Named {
                    sides: 3,
                    name: String::new(),
                }),
                "0f 0500000000000000 4e616d6564 0200000000000000 \
                    07 0400000000000000 6e616d65 07 0000000000000000 \
                    07 0500000000000000 7369646573 05 00 03000000000000000000000000000000",
            ),
        ];
        for (what, actual, expected) in cases {
            assert_eq!(actual, hex(expected), "{what}");
        }
    }

    #[test]
    fn a_fingerprint_is_sha256_of_the_version_byte_and_the_encoding() {
        let value = ("ab", 7u8);
        let mut bytes = vec![FORMAT_VERSION];
        bytes.extend(hex(
            "09 07 0200000000000000 6162 05 00 07000000000000000000000000000000 00",
        ));
        let expected: [u8; 32] = Sha256::digest(&bytes).into();

        assert_eq!(encoding(&value), bytes[1..]);
        assert_eq!(fp(&value), Fingerprint::from_bytes(expected));
    }

    #[test]
    fn golden_vectors_pin_the_encoding() {
        let mut args = Fingerprinter::new();
        args.arg("tenant", "acme")
            .unwrap()
            .arg("amount", &1250u64)
            .unwrap();
        let vectors: Vec<(&str, Fingerprint, &str)> = vec![
            (
                "unit",
                fp(&()),
                "9dcf97a184f32623d11a73124ceb99a5709b083721e878a16d78f596718ba7b2",
            ),
            (
                "None",
                fp(&None::<u8>),
                "a12871fee210fb8619291eaea194581cbd2531e4b23759d225f6806923f63222",
            ),
            (
                "Some(0)",
                fp(&Some(0u8)),
                "5edc96058f95652a2a1af75c601ec559013f24ab8602157af410f10bf1425646",
            ),
            (
                "0u8",
                fp(&0u8),
                "faa914052d78d12e25b45450af50f5b2f0e8c1158b8b2a887aaa104771de925b",
            ),
            (
                "-1i64",
                fp(&-1i64),
                "be111a0e65074111d37225c69582adae8ec90a77717e45c91e1388ba49aa6e37",
            ),
            (
                "u128::MAX",
                fp(&u128::MAX),
                "40ebd4a5018f2223f042ea910caf1b83d53a610c5845e26925b71346e8dc0ccc",
            ),
            (
                "1.5",
                fp(&1.5f64),
                "ef652671f18bc11116665b56c3ec2f1a9829974beefeffa95175b68a590c8208",
            ),
            (
                "0.0",
                fp(&0.0f64),
                "c4b2277a673e7dea301fa751997e35b8ed6040071b700545f534c47af689e897",
            ),
            (
                "-0.0",
                fp(&-0.0f64),
                "c4b2277a673e7dea301fa751997e35b8ed6040071b700545f534c47af689e897",
            ),
            (
                "empty string",
                fp(""),
                "1b6adcc983ad40868b3d1949eeaf3603320ab617eb68802ca84e26a4c94c29d2",
            ),
            (
                "héllo",
                fp("héllo"),
                "b8b2491061e36d82246fc906123956634ec79c8a252c50ace3c54924071614ec",
            ),
            (
                "bytes",
                fp(&Bytes(b"\x00\xff")),
                "ba6c8e2f837082f7185b5296cd9cbd4fb5154005c4d58f18630735f3a014b763",
            ),
            (
                "vec",
                fp(&vec![1u32, 2, 3]),
                "430c5f3fe713a0ddd12c4d50ce97f3365a469973d10f995d59b2f39793c69172",
            ),
            (
                "nested struct",
                fp(&order()),
                "a660b26fa86ebabad99652f35da3ad86b8d682348e719b3b58fd2b0e8a5c1ebe",
            ),
            (
                "struct variant",
                fp(&Shape::Named {
                    name: "tri".to_owned(),
                    sides: 3,
                }),
                "040c78e3ede5bb7bc142d771332d41f98d6436a7714748d330a11561d8ea7464",
            ),
            (
                "btree map",
                fp(&BTreeMap::from([("eu", 7), ("us", -9)])),
                "34650ecc26f9c6083d33cbcbc3504bf3a6ae2884242460cf1e87ee48a09d05fa",
            ),
            (
                "arguments",
                args.finish(),
                "481f84af116b7a2c7a5abfe21b5843a440da1462f31aa9fed990b76724bcca36",
            ),
        ];
        for (what, actual, expected) in vectors {
            assert_eq!(actual.to_hex(), expected, "{what}");
        }
    }

    #[test]
    fn a_fingerprint_is_32_bytes_shown_as_64_lowercase_hex_digits() {
        let fingerprint = fp(&order());
        let text = fingerprint.to_string();

        assert_eq!(fingerprint.as_bytes().len(), 32);
        assert_eq!(text.len(), 64);
        assert!(text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_eq!(text.parse::<Fingerprint>(), Ok(fingerprint));
    }

    // ---- which values count as equal ---------------------------------------------------------

    #[test]
    fn integers_of_every_width_and_json_numbers_encode_by_value() {
        let seven = fp(&7u8);
        let json_seven: Value = serde_json::from_str("7").unwrap();
        let json_minus_seven: Value = serde_json::from_str("-7").unwrap();

        assert_eq!(fp(&7i8), seven);
        assert_eq!(fp(&7u16), seven);
        assert_eq!(fp(&7i32), seven);
        assert_eq!(fp(&7i64), seven);
        assert_eq!(fp(&7u128), seven);
        assert_eq!(fp(&json_seven), seven);
        assert_eq!(fp(&json_minus_seven), fp(&-7i16));
        assert_ne!(fp(&-7i64), seven);
        assert_eq!(fp(&i64::MIN), fp(&i128::from(i64::MIN)));
    }

    #[test]
    fn a_float_with_an_integral_value_differs_from_the_integer() {
        let json_one_point_zero: Value = serde_json::from_str("1.0").unwrap();

        assert_ne!(fp(&1.0f64), fp(&1u8));
        assert_eq!(fp(&json_one_point_zero), fp(&1.0f64));
    }

    #[test]
    fn f32_is_widened_exactly_to_f64() {
        assert_eq!(fp(&0.5f32), fp(&0.5f64));
        assert_ne!(fp(&0.1f32), fp(&0.1f64));
        assert_eq!(fp(&0.1f32), fp(&f64::from(0.1f32)));
    }

    #[test]
    fn a_char_equals_the_one_character_string() {
        assert_eq!(fp(&'é'), fp("é"));
        assert_ne!(fp(&'a'), fp("ab"));
    }

    #[test]
    fn bytes_differ_from_a_sequence_of_u8() {
        assert_ne!(fp(&Bytes(&[1, 2])), fp(&vec![1u8, 2]));
        assert_ne!(fp(&Bytes(b"ab")), fp("ab"));
    }

    #[test]
    fn tuples_arrays_vecs_and_tuple_structs_are_the_same_sequence() {
        let vec = fp(&vec![1i32, 2]);

        assert_eq!(fp(&(1i32, 2i32)), vec);
        assert_eq!(fp(&[1i32, 2]), vec);
        assert_eq!(fp(&[1i32, 2][..]), vec);
        assert_eq!(fp(&Point(1, 2)), vec);
    }

    #[test]
    fn newtype_structs_are_transparent_and_unit_structs_are_not_unit() {
        assert_eq!(fp(&UserId(7)), fp(&7u64));
        assert_ne!(fp(&Marker), fp(&()));
    }

    #[test]
    fn unit_none_some_unit_and_empty_containers_are_pairwise_distinct() {
        let values = [
            fp(&()),
            fp(&None::<()>),
            fp(&Some(())),
            fp(&Vec::<()>::new()),
            fp(&BTreeMap::<(), ()>::new()),
            fp(""),
            fp(&Bytes(b"")),
            fp(&Marker),
            fp(&0u8),
            fp(&false),
        ];
        let distinct: HashSet<Fingerprint> = values.iter().copied().collect();

        assert_eq!(distinct.len(), values.len());
    }

    #[test]
    fn enum_variants_hash_name_and_payload_but_not_index_or_enum_name() {
        let named = Shape::Named {
            name: "tri".to_owned(),
            sides: 3,
        };
        let reordered = ShapeReordered::Named {
            sides: 3,
            name: "tri".to_owned(),
        };

        assert_eq!(fp(&named), fp(&reordered));
        assert_eq!(fp(&Shape::Circle(1)), fp(&ShapeReordered::Circle(1)));
        assert_ne!(fp(&Shape::Circle(1)), fp(&1u32));
        assert_ne!(fp(&Shape::Empty), fp("Empty"));
        assert_ne!(fp(&Shape::Rect(1, 2)), fp(&Shape::Wrapped((1, 2))));
    }

    #[test]
    fn struct_field_declaration_order_does_not_matter() {
        let order = order();
        let reordered = OrderReordered {
            total: order.total,
            lines: order.lines.clone(),
            customer: Customer {
                name: order.customer.name.clone(),
                vip: order.customer.vip,
            },
            id: order.id,
        };

        assert_eq!(fp(&order), fp(&reordered));
    }

    #[test]
    fn skipped_fields_contribute_nothing() {
        #[derive(Serialize)]
        struct WithNote {
            id: u32,
            #[serde(skip_serializing_if = "Option::is_none")]
            note: Option<String>,
        }
        #[derive(Serialize)]
        struct WithoutNote {
            id: u32,
        }

        let skipped = WithNote { id: 1, note: None };
        let present = WithNote {
            id: 1,
            note: Some(String::new()),
        };

        assert_eq!(fp(&skipped), fp(&WithoutNote { id: 1 }));
        assert_ne!(fp(&present), fp(&WithoutNote { id: 1 }));
    }

    #[test]
    fn a_struct_equals_the_json_object_with_the_same_fields() {
        let body = json!({
            "total": 12.5,
            "lines": ["sku-1", "sku-2"],
            "id": 7,
            "customer": { "vip": true, "name": "Zoë" },
        });
        let parsed: Value = serde_json::from_str(concat!(
            r#"{"customer":{"name":"Zoë","vip":true},"#,
            r#""id":7,"lines":["sku-1","sku-2"],"total":12.5}"#,
        ))
        .unwrap();

        assert_eq!(fp(&order()), fp(&body));
        assert_eq!(fp(&order()), fp(&parsed));
    }

    #[test]
    fn option_fields_have_no_json_counterpart() {
        #[derive(Serialize)]
        struct Quote {
            discount: Option<f64>,
        }

        assert_ne!(
            fp(&Quote { discount: None }),
            fp(&json!({ "discount": null }))
        );
        assert_ne!(
            fp(&Quote {
                discount: Some(0.5)
            }),
            fp(&json!({ "discount": 0.5 }))
        );
    }

    #[test]
    fn maps_with_tuple_keys_fingerprint_regardless_of_insertion_order() {
        #[derive(Serialize)]
        struct Fee {
            cents: u64,
        }
        let routes = [
            ((1u32, 2u32), 150u64),
            ((2, 1), 90),
            ((1, 3), 400),
            ((7, 0), 5),
        ];

        let forward: HashMap<(u32, u32), Fee> = routes
            .iter()
            .map(|&(route, cents)| (route, Fee { cents }))
            .collect();
        let backward: HashMap<(u32, u32), Fee> = routes
            .iter()
            .rev()
            .map(|&(route, cents)| (route, Fee { cents }))
            .collect();
        let sorted: BTreeMap<(u32, u32), Fee> = routes
            .iter()
            .map(|&(route, cents)| (route, Fee { cents }))
            .collect();

        let mut args = Fingerprinter::new();
        args.arg("fees", &forward)
            .expect("tuple keys are supported");
        assert_eq!(args.finish(), fingerprint(&(&backward,)).unwrap());
        assert_eq!(fp(&forward), fp(&sorted));
    }

    #[test]
    fn nested_maps_are_sorted_at_every_level() {
        let inner_a = HashMap::from([("x", 1), ("y", 2), ("z", 3)]);
        let inner_b = HashMap::from([("z", 3), ("x", 1), ("y", 2)]);
        let a = HashMap::from([(1u8, inner_a.clone()), (2, inner_b.clone())]);
        let b = HashMap::from([(2u8, inner_a), (1, inner_b)]);
        let changed = HashMap::from([(1u8, HashMap::from([("x", 1)])), (2, HashMap::new())]);

        assert_eq!(fp(&a), fp(&b));
        assert_ne!(fp(&a), fp(&changed));
    }

    // ---- floats -------------------------------------------------------------------------------

    #[test]
    fn non_finite_floats_are_refused_naming_the_argument() {
        for (value, text) in [
            (f64::NAN, "NaN"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
        ] {
            let expected = |argument| FingerprintError::NonFiniteFloat {
                argument,
                value: text.to_owned(),
            };

            assert_eq!(fingerprint(&value), Err(expected(None)), "{text}");
            assert_eq!(fingerprint(&Some(value)), Err(expected(None)), "{text}");
            assert_eq!(
                fingerprint(&vec![1.0, value]),
                Err(expected(None)),
                "{text} in a sequence"
            );
            assert_eq!(
                fingerprint(&BTreeMap::from([("k", value)])),
                Err(expected(None)),
                "{text} in a map"
            );

            let mut args = Fingerprinter::new();
            args.arg("item", &42u32).unwrap();
            let refused = args.arg("discount", &Some(value)).map(|_| ()).unwrap_err();
            assert_eq!(refused, expected(Some("discount")), "{text} as an argument");
        }
        assert!(matches!(
            fingerprint(&f32::NAN),
            Err(FingerprintError::NonFiniteFloat { .. })
        ));
    }

    #[test]
    fn the_non_finite_float_error_says_which_argument_and_why() {
        let mut args = Fingerprinter::new();
        let refused = args
            .arg("discount", &Some(f64::NAN))
            .map(|_| ())
            .unwrap_err();

        assert_eq!(
            refused.to_string(),
            "argument `discount` holds a non-finite float (NaN); \
             fingerprints accept finite floats only"
        );
    }

    #[test]
    fn none_differs_from_some_zero() {
        assert_ne!(fp(&None::<f64>), fp(&Some(0.0f64)));
        assert_ne!(fp(&(7u32, None::<f64>)), fp(&(7u32, Some(0.0f64))));
    }

    #[test]
    fn zero_and_negative_zero_share_a_fingerprint() {
        assert_eq!(fp(&0.0f64), fp(&-0.0f64));
        assert_eq!(fp(&Some(0.0f64)), fp(&Some(-0.0f64)));
        assert_eq!(fp(&-0.0f32), fp(&0.0f64));
    }

    #[test]
    fn adjacent_floats_differ() {
        let next = 1.0000000000000002f64;
        assert_eq!(next, f64::from_bits(1.0f64.to_bits() + 1));

        assert_ne!(fp(&1.0f64), fp(&next));
    }

    // ---- composite values ---------------------------------------------------------------------

    #[test]
    fn moving_a_separator_between_tuple_parts_changes_the_fingerprint() {
        assert_ne!(fp(&("acme:eu", "7")), fp(&("acme", "eu:7")));
        assert_ne!(fp(&("ab", "c")), fp(&("a", "bc")));
        assert_ne!(fp(&("", "ab")), fp(&("ab", "")));
        assert_ne!(
            fp(&(vec![1u8], vec![2u8])),
            fp(&(vec![1u8, 2], Vec::<u8>::new()))
        );
    }

    // ---- argument lists -----------------------------------------------------------------------

    #[test]
    fn arguments_fingerprint_like_the_tuple_of_their_values() {
        let mut args = Fingerprinter::new();
        args.arg("item", &42u32)
            .unwrap()
            .arg("discount", &Some(0.25))
            .unwrap();

        assert_eq!(args.finish(), fp(&(42u32, Some(0.25))));
    }

    #[test]
    fn argument_names_are_not_hashed_but_positions_are() {
        let fingerprint_of = |names: [&'static str; 2], values: (u32, u32)| {
            let mut args = Fingerprinter::new();
            args.arg(names[0], &values.0).unwrap();
            args.arg(names[1], &values.1).unwrap();
            args.finish()
        };

        assert_eq!(
            fingerprint_of(["a", "b"], (1, 2)),
            fingerprint_of(["x", "y"], (1, 2))
        );
        assert_ne!(
            fingerprint_of(["a", "b"], (1, 2)),
            fingerprint_of(["a", "b"], (2, 1))
        );
    }

    #[test]
    fn one_argument_is_a_one_tuple_and_no_arguments_an_empty_sequence() {
        let mut one = Fingerprinter::new();
        one.arg("id", &7u8).unwrap();

        assert_eq!(one.finish(), fp(&(7u8,)));
        assert_ne!(fp(&(7u8,)), fp(&7u8));
        assert_eq!(Fingerprinter::new().finish(), fp(&Vec::<u8>::new()));
        assert_eq!(Fingerprinter::default().finish(), fp(&[0u8; 0]));
    }

    #[test]
    fn a_failing_serialize_impl_is_reported_with_the_argument() {
        struct Broken;
        impl Serialize for Broken {
            fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(ser::Error::custom("the clock is not set"))
            }
        }

        let mut args = Fingerprinter::new();
        let refused = args.arg("when", &Broken).map(|_| ()).unwrap_err();

        assert_eq!(
            refused,
            FingerprintError::Serialize {
                argument: Some("when"),
                message: "the clock is not set".to_owned(),
            }
        );
        assert_eq!(
            refused.to_string(),
            "argument `when` failed to serialize: the clock is not set"
        );
        assert_eq!(
            fingerprint(&Broken),
            Err(FingerprintError::Serialize {
                argument: None,
                message: "the clock is not set".to_owned(),
            })
        );
    }

    #[test]
    #[should_panic(expected = "after an argument failed")]
    fn finishing_after_a_failed_argument_panics() {
        let mut args = Fingerprinter::new();
        let _ = args.arg("discount", &f64::NAN);
        args.finish();
    }

    // ---- sets ---------------------------------------------------------------------------------

    #[derive(Serialize)]
    struct Invite {
        #[serde(serialize_with = "sorted_set")]
        emails: HashSet<String>,
    }

    fn emails(order: impl Iterator<Item = u32>) -> HashSet<String> {
        order.map(|n| format!("user{n}@example.test")).collect()
    }

    #[test]
    fn sorted_set_makes_a_hash_set_independent_of_its_iteration_order() {
        let up = Invite {
            emails: emails(0..64),
        };
        let down = Invite {
            emails: emails((0..64).rev()),
        };

        // Without `sorted_set` the iteration order leaks: 64 elements almost never iterate
        // alike in two sets with different hash keys.
        assert_ne!(fp(&up.emails), fp(&down.emails));
        assert_eq!(fp(&up), fp(&down));
        assert_eq!(fp(&SortedSet(&up.emails)), fp(&SortedSet(&down.emails)));
        assert_eq!(
            serde_json::to_string(&up).unwrap(),
            serde_json::to_string(&down).unwrap()
        );
    }

    #[test]
    fn sorted_set_orders_elements_by_their_encoding() {
        let set = HashSet::from([256u32, 1, 2]);

        // Magnitudes are little-endian, so 256 (`00 01 ..`) sorts before 1 (`01 00 ..`).
        assert_eq!(
            serde_json::to_string(&SortedSet(&set)).unwrap(),
            "[256,1,2]"
        );
        assert_eq!(fp(&SortedSet(&set)), fp(&[256u32, 1, 2]));
    }

    #[test]
    fn sorted_set_passes_a_non_finite_element_on_to_the_fingerprint_error() {
        let values = vec![1.0, f64::NAN];

        assert_eq!(
            fingerprint(&SortedSet(&values)),
            Err(FingerprintError::NonFiniteFloat {
                argument: None,
                value: "NaN".to_owned(),
            })
        );
    }

    // ---- real-world JSON ----------------------------------------------------------------------

    /// Serializes a JSON value with every object's keys in reverse order.
    struct Reversed<'a>(&'a Value);

    impl Serialize for Reversed<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            match self.0 {
                Value::Object(map) => {
                    serializer.collect_map(map.iter().rev().map(|(k, v)| (k, Reversed(v))))
                }
                Value::Array(items) => serializer.collect_seq(items.iter().map(Reversed)),
                other => other.serialize(serializer),
            }
        }
    }

    /// Every payload beside the checkout, sorted by path. On CI (`CI` set) the payloads
    /// must be there; elsewhere a missing directory is reported on stderr and gives `None`,
    /// and the test using it returns.
    fn webhook_payloads() -> Option<Vec<(PathBuf, Value)>> {
        fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
            let entries = std::fs::read_dir(dir)
                .unwrap_or_else(|error| panic!("cannot list {}: {error}", dir.display()));
            for entry in entries {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    collect(&path, out);
                } else if path.extension().is_some_and(|ext| ext == "json") {
                    out.push(path);
                }
            }
        }

        let root =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/github-webhook-payloads");
        if !root.is_dir() {
            assert!(
                std::env::var_os("CI").is_none(),
                "the webhook payloads are expected at {} on CI",
                root.display()
            );
            eprintln!(
                "note: skipping a webhook-payload test: {} is absent (it is required when `CI` \
                 is set)",
                root.display()
            );
            return None;
        }
        let mut paths = Vec::new();
        collect(&root, &mut paths);
        paths.sort();
        assert!(!paths.is_empty(), "no payloads under {}", root.display());

        let payloads = paths
            .into_iter()
            .map(|path| {
                let text = std::fs::read_to_string(&path).unwrap();
                let value = serde_json::from_str(&text)
                    .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
                (path, value)
            })
            .collect();
        Some(payloads)
    }

    #[test]
    fn webhook_payloads_fingerprint_the_same_with_their_keys_reversed() {
        let Some(payloads) = webhook_payloads() else {
            return;
        };
        let mut reordered = 0;
        for (path, payload) in payloads {
            let forward = serde_json::to_string(&payload).unwrap();
            let backward = serde_json::to_string(&Reversed(&payload)).unwrap();
            if forward != backward {
                reordered += 1;
            }

            assert_eq!(fp(&payload), fp(&Reversed(&payload)), "{}", path.display());
        }
        assert!(reordered > 0, "reversing the keys changed no payload");
    }

    #[test]
    fn distinct_webhook_payloads_have_distinct_fingerprints() {
        let Some(payloads) = webhook_payloads() else {
            return;
        };
        let mut seen: HashMap<Fingerprint, &(PathBuf, Value)> = HashMap::new();
        for payload in &payloads {
            if let Some(earlier) = seen.insert(fp(&payload.1), payload) {
                assert_eq!(
                    earlier.1,
                    payload.1,
                    "{} and {} share a fingerprint",
                    earlier.0.display(),
                    payload.0.display()
                );
            }
        }
        assert!(seen.len() > 1);
    }

    // ---- properties ---------------------------------------------------------------------------

    #[derive(Debug, Clone, PartialEq, Serialize)]
    enum Line {
        Blank,
        Quantity(u8),
        Pair(i64, String),
        Item { sku: String, discount: Option<f64> },
    }

    #[derive(Debug, Clone, PartialEq, Serialize)]
    struct Quote {
        item: u32,
        discount: Option<f64>,
        lines: Vec<Line>,
        note: String,
    }

    /// Finite floats, often the ones that are easy to confuse.
    fn finite_float() -> impl Strategy<Value = f64> {
        prop_oneof![
            Just(0.0),
            Just(-0.0),
            Just(1.0),
            Just(1.0000000000000002),
            proptest::num::f64::NORMAL | proptest::num::f64::SUBNORMAL | proptest::num::f64::ZERO,
        ]
    }

    /// Short text over an alphabet that includes a separator.
    fn short_text() -> impl Strategy<Value = String> {
        "[a:]{0,2}"
    }

    fn line() -> impl Strategy<Value = Line> {
        prop_oneof![
            Just(Line::Blank),
            (0u8..3).prop_map(Line::Quantity),
            (-1i64..2, short_text()).prop_map(|(n, text)| Line::Pair(n, text)),
            (short_text(), proptest::option::of(finite_float()))
                .prop_map(|(sku, discount)| Line::Item { sku, discount }),
        ]
    }

    fn quote() -> impl Strategy<Value = Quote> {
        (
            0u32..2,
            proptest::option::of(finite_float()),
            proptest::collection::vec(line(), 0..3),
            short_text(),
        )
            .prop_map(|(item, discount, lines, note)| Quote {
                item,
                discount,
                lines,
                note,
            })
    }

    /// A quote with every zero's sign flipped: equal to it, with different float bits.
    fn with_zero_signs_flipped(quote: &Quote) -> Quote {
        let flip = |value: f64| if value == 0.0 { -value } else { value };
        let mut flipped = quote.clone();
        flipped.discount = flipped.discount.map(flip);
        for line in &mut flipped.lines {
            if let Line::Item { discount, .. } = line {
                *discount = discount.map(flip);
            }
        }
        flipped
    }

    /// Two quotes, often equal or nearly so.
    fn quote_pair() -> impl Strategy<Value = (Quote, Quote)> {
        prop_oneof![
            (quote(), quote()),
            quote().prop_map(|a| (with_zero_signs_flipped(&a), a)),
            (quote(), line()).prop_map(|(a, extra)| {
                let mut b = a.clone();
                b.lines.push(extra);
                (a, b)
            }),
        ]
    }

    type Entries<K, V> = Vec<(K, V)>;

    /// The same entries, in their generated order and shuffled.
    fn entries_twice<K, V>(
        map: impl Strategy<Value = HashMap<K, V>>,
    ) -> impl Strategy<Value = (Entries<K, V>, Entries<K, V>)>
    where
        K: Clone + std::fmt::Debug,
        V: Clone + std::fmt::Debug,
    {
        map.prop_flat_map(|map| {
            let entries: Entries<K, V> = map.into_iter().collect();
            (Just(entries.clone()), Just(entries).prop_shuffle())
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn hash_maps_with_the_same_entries_share_a_fingerprint(
            (first, second) in entries_twice(
                proptest::collection::hash_map("[a-z]{0,6}", any::<i64>(), 0..24),
            ),
        ) {
            let a: HashMap<String, i64> = first.iter().cloned().collect();
            let b: HashMap<String, i64> = second.into_iter().collect();
            let sorted: BTreeMap<String, i64> = first.into_iter().collect();

            prop_assert_eq!(fp(&a), fp(&b));
            prop_assert_eq!(fp(&a), fp(&sorted));
        }

        #[test]
        fn nested_hash_maps_with_the_same_entries_share_a_fingerprint(
            (first, second) in entries_twice(
                proptest::collection::hash_map(
                    any::<u32>(),
                    proptest::collection::vec("[a-z]{0,4}", 0..4),
                    0..16,
                ),
            ),
        ) {
            let a: HashMap<u32, Vec<String>> = first.iter().cloned().collect();
            let b: HashMap<u32, Vec<String>> = second.iter().cloned().collect();
            let outer_a = HashMap::from([("first", a.clone()), ("second", b.clone())]);
            let outer_b = HashMap::from([("second", a), ("first", b)]);

            prop_assert_eq!(fp(&outer_a), fp(&outer_b));
        }

        #[test]
        fn lines_share_a_fingerprint_exactly_when_equal(a in line(), b in line()) {
            prop_assert_eq!(fp(&a) == fp(&b), a == b, "{:?} vs {:?}", a, b);
        }

        #[test]
        fn quotes_share_a_fingerprint_exactly_when_equal((a, b) in quote_pair()) {
            prop_assert_eq!(fp(&a) == fp(&b), a == b, "{:?} vs {:?}", a, b);
        }

        #[test]
        fn text_pairs_share_a_fingerprint_exactly_when_equal(
            a in (short_text(), short_text()),
            b in (short_text(), short_text()),
        ) {
            prop_assert_eq!(fp(&a) == fp(&b), a == b);
        }
    }

    /// A linked list `depth` nodes long.
    #[derive(Serialize)]
    struct Node {
        next: Option<Box<Node>>,
    }

    // Dropped link by link: the default, recursive drop of a long chain would overflow the
    // test's own stack.
    impl Drop for Node {
        fn drop(&mut self) {
            let mut next = self.next.take();
            while let Some(mut node) = next {
                next = node.next.take();
            }
        }
    }

    fn chain(depth: usize) -> Node {
        let mut node = Node { next: None };
        for _ in 0..depth {
            node = Node {
                next: Some(Box::new(node)),
            };
        }
        node
    }

    fn nested_seq(depth: usize) -> Value {
        (0..depth).fold(json!(0), |inner, _| json!([inner]))
    }

    #[test]
    fn values_nested_up_to_the_limit_are_fingerprinted() {
        assert!(fingerprint(&nested_seq(MAX_DEPTH)).is_ok());
        // Each node is a struct level and an option level.
        assert!(fingerprint(&chain(MAX_DEPTH / 2 - 1)).is_ok());
    }

    #[test]
    fn values_nested_past_the_limit_are_refused_not_overflowing_the_stack() {
        assert_eq!(
            fingerprint(&nested_seq(MAX_DEPTH + 1)),
            Err(FingerprintError::TooDeep {
                argument: None,
                max: MAX_DEPTH
            })
        );
        let mut args = Fingerprinter::new();
        let error = args.arg("list", &chain(100_000)).map(|_| ()).unwrap_err();
        assert_eq!(
            error,
            FingerprintError::TooDeep {
                argument: Some("list"),
                max: MAX_DEPTH
            }
        );
    }
}
