//! The errors of idem: one enum for callers, one for stores, one for configuration.

use std::time::Duration;

use crate::fingerprint::{Fingerprint, FingerprintError};
use crate::key::KeyRule;

/// A boxed error from a store's client library.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong between a caller and the idempotency service.
///
/// Each variant names the key it concerns and its message says what the caller can do.
/// Results of the caller's own function never appear here: they are replayed as they were.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key breaks one of the key rules; nothing was sent to the store.
    #[error("idempotency key {key:?} is invalid: {rule}; send a key that follows the rule")]
    InvalidKey {
        /// The key as given (cut to 300 bytes).
        key: String,
        /// The rule it breaks.
        rule: KeyRule,
    },

    /// The key was used before with other arguments.
    #[error(
        "idempotency key {key:?} was first used with other arguments (fingerprint {stored}, \
         this call {presented}); use a new key for a different request"
    )]
    FingerprintMismatch {
        /// The key.
        key: String,
        /// The fingerprint stored with the record.
        stored: Fingerprint,
        /// The fingerprint of this call.
        presented: Fingerprint,
    },

    /// Another caller still runs the operation and this call asked not to wait.
    #[error("idempotency key {key:?} is still being processed by another caller; retry later")]
    InProgress {
        /// The key.
        key: String,
        /// How long the current owner's lease still runs.
        retry_after: Duration,
    },

    /// Another caller still ran the operation when this call's wait budget ran out.
    #[error(
        "idempotency key {key:?} was still being processed after waiting {waited:?}; \
         retry later with the same key"
    )]
    WaitTimeout {
        /// The key.
        key: String,
        /// How long this call waited.
        waited: Duration,
    },

    /// This caller's lease ended: it lapsed (the operation ran past its lease without a
    /// renewal reaching the store), another caller took it over, or it was removed.
    ///
    /// From a completion or failure: nothing was stored, and the new owner's result stands.
    /// From a renewal: the lease was not extended; a completion that follows still stores
    /// its result if no other caller has taken the key over by then.
    #[error(
        "lease on idempotency key {key:?} is lost: it lapsed, another owner took it over, or \
         it was removed; a completion that gets this error stored nothing, retry with the \
         same key to read the stored result"
    )]
    LeaseLost {
        /// The key.
        key: String,
    },

    /// The store could not be reached or refused the command. Under the fail-closed policy the
    /// operation did not run.
    #[error("idempotency store failed for key {key:?}: {source}; the operation did not run, retry later")]
    Store {
        /// The key.
        key: String,
        /// What the store said.
        #[source]
        source: StoreError,
    },

    /// The arguments could not be fingerprinted; the operation did not run.
    #[error("arguments for idempotency key {key:?} cannot be fingerprinted: {source}")]
    Fingerprint {
        /// The key, or the scope when the key is derived from the fingerprint.
        key: String,
        /// What the encoder refused.
        #[source]
        source: FingerprintError,
    },

    /// The operation completed before, but its result was not stored in replayable form
    /// (too large, or it could not be serialized). The operation will not run again under
    /// this key.
    #[error(
        "idempotency key {key:?} completed before but its result cannot be replayed ({reason}); \
         the operation will not run again under this key"
    )]
    NotReplayable {
        /// The key.
        key: String,
        /// Why the result was not stored.
        reason: String,
    },

    /// A result is larger than the configured cap and was recorded as not replayable.
    #[error(
        "result for idempotency key {key:?} is {size} bytes, over the {limit}-byte cap; \
         it was recorded as not replayable"
    )]
    ResultTooLarge {
        /// The key.
        key: String,
        /// The encoded size.
        size: usize,
        /// The configured cap.
        limit: usize,
    },

    /// A stored result no longer decodes as the expected type, typically after a change of
    /// the return type. The operation is not run again.
    #[error(
        "stored result for idempotency key {key:?} does not decode as {type_name}: {message}; \
         change the scope when a return type changes incompatibly"
    )]
    ReplayDecode {
        /// The key.
        key: String,
        /// The type the caller expected.
        type_name: &'static str,
        /// What the decoder said.
        message: String,
    },

    /// The operation for this key called itself (directly or indirectly) and would wait on
    /// its own lease forever.
    #[error(
        "idempotency key {key:?} was used again from inside its own operation; use another key"
    )]
    Reentrant {
        /// The key.
        key: String,
    },

    /// The per-call options are not valid.
    #[error("invalid options for idempotency key {key:?}: {source}")]
    Options {
        /// The key.
        key: String,
        /// What is wrong.
        #[source]
        source: ConfigError,
    },
}

impl Error {
    /// The key this error concerns.
    pub fn key(&self) -> &str {
        match self {
            Error::InvalidKey { key, .. }
            | Error::FingerprintMismatch { key, .. }
            | Error::InProgress { key, .. }
            | Error::WaitTimeout { key, .. }
            | Error::LeaseLost { key }
            | Error::Store { key, .. }
            | Error::Fingerprint { key, .. }
            | Error::NotReplayable { key, .. }
            | Error::ResultTooLarge { key, .. }
            | Error::ReplayDecode { key, .. }
            | Error::Reentrant { key }
            | Error::Options { key, .. } => key,
        }
    }

    /// Whether retrying the same call later, with the same key, can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::InProgress { .. } | Error::WaitTimeout { .. } | Error::Store { .. }
        )
    }
}

/// A failure of the store itself: connection, command or record format.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store could not be reached, or the connection broke during the command. The
    /// command may or may not have been applied.
    #[error("connection failed: {0}")]
    Connection(#[source] BoxError),
    /// The store answered with an error.
    #[error("command failed: {0}")]
    Command(#[source] BoxError),
    /// A stored record could not be read: corrupt, or written by an unknown format version.
    #[error("record is unreadable: {0}")]
    Corrupt(String),
}

/// A setting or per-call option that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A duration that must be positive is zero.
    #[error("`{setting}` must be greater than zero")]
    ZeroDuration {
        /// The setting's name.
        setting: &'static str,
    },
    /// A duration is too large for the store's millisecond clock.
    #[error("`{setting}` is {value:?}, more than the supported maximum of {max:?}")]
    DurationTooLarge {
        /// The setting's name.
        setting: &'static str,
        /// The value given.
        value: Duration,
        /// The maximum.
        max: Duration,
    },
    /// Durations below a millisecond cannot be stored.
    #[error(
        "`{setting}` is {value:?}; durations are kept in whole milliseconds, use at least 1 ms"
    )]
    SubMillisecond {
        /// The setting's name.
        setting: &'static str,
        /// The value given.
        value: Duration,
    },
    /// The lease is too short for a renewal to land before it ends.
    #[error(
        "`lock_timeout` is {lease:?}, shorter than the minimum of {min:?}: a lease that short \
         ends before its renewal reaches the store; use at least {min:?}"
    )]
    LeaseTooShort {
        /// The lease given.
        lease: Duration,
        /// The shortest lease accepted ([`MIN_LOCK_TIMEOUT`](crate::MIN_LOCK_TIMEOUT)).
        min: Duration,
    },
    /// A size limit is zero.
    #[error("`{setting}` must be at least 1")]
    ZeroLimit {
        /// The setting's name.
        setting: &'static str,
    },
    /// The wait budget is shorter than the first re-check, so a wait could never succeed.
    #[error("`wait_timeout` is {wait:?}, shorter than the first re-check after {min:?}; use at least {min:?} or do not wait")]
    WaitTooShort {
        /// The wait budget given.
        wait: Duration,
        /// The shortest budget that can see a completion.
        min: Duration,
    },
    /// The key prefix is not usable.
    #[error("key prefix {prefix:?} is invalid: it {reason}")]
    InvalidPrefix {
        /// The prefix given.
        prefix: String,
        /// Why.
        reason: &'static str,
    },
}
