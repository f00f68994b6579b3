//! Fingerprints: SHA-256 over a canonical encoding of a call's arguments.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// The SHA-256 digest of a canonical encoding of a call's arguments.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
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
pub fn fingerprint<T: Serialize + ?Sized>(value: &T) -> Result<Fingerprint, FingerprintError> {
    let _ = value;
    unimplemented!("the canonical encoder is being written in this module")
}
