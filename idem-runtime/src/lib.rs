//! The runtime of idem: the idempotency service, its stores and canonical fingerprints.
//!
//! Most users depend on the `idem` crate, which re-exports this one together with the
//! `#[idempotent]` attribute. This crate is for driving the service by hand: HTTP layers,
//! job runners, or code that needs the protocol without the attribute.
//!
//! # Quick start
//!
//! ```
//! use idem_runtime::{CallOptions, CheckOutcome, Idempotency, IdempotencyService, Key, Response, Body, fingerprint};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), idem_runtime::Error> {
//! let service = IdempotencyService::in_memory();
//! let key = Key::scoped("payments", "order-42");
//! let fp = fingerprint(&("order-42", 1999_u64)).expect("finite arguments");
//!
//! match service.check_and_lock(&key, &fp, &CallOptions::new()).await? {
//!     CheckOutcome::Acquired(lease) => {
//!         // Run the side effect once, then store its result for every retry.
//!         let receipt = service.keep_alive(&lease, async { "receipt-1" }).await;
//!         service.complete(&lease, Response::ok(Body::json(&receipt).unwrap())).await?;
//!     }
//!     CheckOutcome::Completed(record) => { /* replay record's response */ }
//!     other => panic!("unexpected {other:?}"),
//! }
//!
//! // A retry replays the stored response without running anything.
//! let retry = service.check_and_lock(&key, &fp, &CallOptions::new()).await?;
//! assert!(matches!(retry, CheckOutcome::Completed(_)));
//! # Ok(()) }
//! ```
//!
//! # Guarantees
//!
//! - **One owner at a time.** A claim is one atomic store step; among any number of
//!   concurrent callers, exactly one gets [`CheckOutcome::Acquired`]. The others wait for
//!   its outcome and replay it.
//! - **Fenced writes.** Completing, failing, renewing and releasing apply only while the
//!   store still holds the caller's lease token. An owner that lost its lease (it ran past
//!   the lease without renewing, and another caller took over) gets [`Error::LeaseLost`] and
//!   changes nothing.
//! - **Two clocks.** A processing record lives by its lease (`lock_timeout`, renewed by
//!   [`IdempotencyService::keep_alive`]); a finished record by its TTL counted from
//!   completion. A crashed owner blocks its key for one lease, never for the TTL. Every
//!   record carries an expiry. Lease decisions use the store's clock only.
//! - **Same arguments or refusal.** With fingerprint validation on (the default), a key
//!   reused with other arguments answers [`CheckOutcome::Mismatch`] on every path: claim,
//!   wait, replay and takeover.
//! - **Fail closed.** A store error returns [`Error::Store`] and the operation does not run,
//!   unless the service is built with [`ErrorPolicy::FailOpen`].
//!
//! What is *not* exactly-once: an owner that dies (or is dropped) after its side effect but
//! before completing leaves the key to be taken over when its lease ends, and the new owner
//! runs the operation again ([`Lease::is_takeover`] tells it so). A completion that fails
//! on every attempt leaves the same window. Downstream systems that must never see a
//! second write can check [`Lease::fence`].
//!
//! # Settings
//!
//! See [`Settings`] for every setting and its default, and [`CallOptions`] for per-call
//! overrides.

#![warn(missing_docs)]

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;
mod batch;
mod classify;
mod config;
mod error;
pub mod fingerprint;
mod flight;
pub mod global;
#[cfg(feature = "tower")]
pub mod http;
mod key;
mod lease;
mod record;
mod service;
pub mod store;

pub use classify::{Classify, OnError};
pub use config::{
    CallOptions, ErrorPolicy, FailurePolicy, Settings, MAX_DURATION, MIN_LOCK_TIMEOUT,
};
pub use error::{BoxError, ConfigError, Error, StoreError};
pub use fingerprint::{fingerprint, Fingerprint, FingerprintError};
pub use key::{Key, KeyRule, MAX_SCOPE_LEN};
pub use lease::Lease;
pub use record::{Body, Millis, Record, RecordState, RecordStatus, Response, Token};
pub use service::{
    keep_alive, BatchItem, CheckOutcome, Idempotency, IdempotencyService, ServiceBuilder,
};
pub use store::{DeleteReply, MemoryStore, Store};
