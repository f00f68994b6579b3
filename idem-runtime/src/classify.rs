//! What an operation's error does to its key, decided per error value.

/// What an `#[idempotent]` fn's error does to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OnError {
    /// Free the key: the next call with it runs the body again. Right for errors that
    /// happen before any side effect (validation of a dependency, a refused connection).
    Release,
    /// Store the error and replay it to every later call with the key; the body does not
    /// run again. Right for errors that come after a side effect that cannot be undone
    /// (the payment was captured, then sending the receipt failed), and for deterministic
    /// errors that a retry would only repeat.
    Record,
}

/// Lets an error type decide, per value, whether it releases or is recorded.
///
/// Used by `#[idempotent(on_error = "classify")]`. The error type must also be serde
/// round-trippable, because recorded errors are replayed as the same typed value.
///
/// ```
/// use idem_runtime::{Classify, OnError};
///
/// #[derive(Debug, serde::Serialize, serde::Deserialize)]
/// enum ChargeError {
///     /// The card was declined before anything was captured: safe to run again.
///     Declined,
///     /// The payment was captured but the receipt could not be sent: never charge again.
///     ReceiptFailed { payment_id: String },
/// }
///
/// impl Classify for ChargeError {
///     fn on_error(&self) -> OnError {
///         match self {
///             ChargeError::Declined => OnError::Release,
///             ChargeError::ReceiptFailed { .. } => OnError::Record,
///         }
///     }
/// }
/// assert_eq!(ChargeError::Declined.on_error(), OnError::Release);
/// ```
pub trait Classify {
    /// Whether this error releases the key or is recorded for replay.
    fn on_error(&self) -> OnError;
}
