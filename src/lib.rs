//! Make side-effecting async functions safe to retry: the first call with a key runs the
//! body and stores its result; later and concurrent calls with that key get the stored
//! result; a key reused with different arguments is refused.
//!
//! # Getting started
//!
//! In `Cargo.toml`:
//!
//! ```toml
//! [dependencies]
//! idem = "0.1"
//! tokio = { version = "1", features = ["macros", "rt-multi-thread"] }
//! serde = { version = "1", features = ["derive"] }
//! ```
//!
//! The features are `redis` (on by default: the Redis store, [`store::redis`]), `tower` (an
//! HTTP layer honouring the `Idempotency-Key` header) and `axum` (the same for axum, which
//! turns on `tower`). Without `redis` (`default-features = false`) only the in-memory store
//! is built.
//!
//! At start-up, connect the store, build the service and install it for every
//! `#[idempotent]` fn that names no `service`:
//!
//! ```no_run
//! use idem::store::redis::RedisStore;
//! use idem::IdempotencyService;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let store = RedisStore::connect("redis://127.0.0.1:6379/").await?;
//!     let service = IdempotencyService::builder(store).build()?;
//!     idem::global::install(service)?;
//!
//!     // ... run the application; annotated fns now dedupe across every process that
//!     // shares this Redis.
//!     Ok(())
//! }
//! ```
//!
//! # Quick start
//!
//! ```
//! use idem::{idempotent, IdempotencyService};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! struct Receipt {
//!     order_id: String,
//!     amount_cents: u64,
//! }
//!
//! #[idempotent(key = order_id, ttl = 86400)]
//! async fn charge(order_id: &str, amount_cents: u64) -> Result<Receipt, idem::Error> {
//!     // Call the payment provider here: this body runs once per order id.
//!     Ok(Receipt { order_id: order_id.to_owned(), amount_cents })
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), idem::Error> {
//! // Once, at start-up (a Redis-backed service dedupes across processes too).
//! idem::global::install(IdempotencyService::in_memory()).expect("installed once");
//!
//! let first = charge("order-1", 1999).await?;
//! let retry = charge("order-1", 1999).await?; // replayed, the body does not run
//! assert_eq!(first, retry);
//!
//! let reused = charge("order-1", 5).await; // same key, other arguments
//! assert!(matches!(reused, Err(idem::Error::FingerprintMismatch { .. })));
//! # Ok(()) }
//! ```
//!
//! `cargo run --example quickstart` shows a retry, concurrent duplicates and a mismatch;
//! `cargo run --example webhooks` processes a log of webhook redeliveries.
//!
//! # What the attribute does
//!
//! `#[idempotent]` goes on an `async fn` returning `Result<T, E>`. It keeps the fn's
//! signature and rewrites its body into, in outline:
//!
//! ```text
//! let call = Call { service, scope, key, fingerprint: fingerprint(&arg1, &arg2, ..), options };
//! __private::run(call, ops::<ReturnType, OnErrorMode>(), async move { /* the original body */ }).await
//! ```
//!
//! The arguments are borrowed for the fingerprint and the key before the body receives
//! them, so a `String` key argument stays usable in the body. The original body runs
//! inside an inner `async move` block typed with the declared return type, so `?`, an
//! early `return` and falling off the end all pass through the same completion. `run`:
//!
//! 1. claims the key (one atomic store step);
//! 2. if it owns the key, runs the body while renewing the lease, then stores the `Ok`
//!    value as JSON (or handles the error by the `on_error` policy) and returns the body's
//!    own result;
//! 3. otherwise replays: a stored `Ok` value is deserialized into `T`, a recorded error
//!    into `E`; a running owner is waited for, then replayed.
//!
//! # Guarantees
//!
//! - **Once per key among live callers.** Among any number of concurrent calls with one
//!   key, in one process or many sharing a store, exactly one runs the body; the others
//!   wait and get its result.
//! - **Same arguments or refusal.** Every record keeps the fingerprint of the arguments
//!   that created it; a later call with the same key and other arguments gets
//!   [`Error::FingerprintMismatch`] and the body does not run.
//! - **The caller gets the body's result.** Once the body has returned, its caller gets
//!   exactly that value, even when storing it fails (the failure is logged with the key).
//! - **Storing is not tied to the caller.** A caller dropped after the body returned (a
//!   timeout, a client hanging up) does not keep the result from being stored: the store
//!   step then finishes on a task of its own.
//! - **Unstorable results are never re-run.** A result that does not serialize, or is
//!   larger than the service's `max_response_bytes`, is recorded as not replayable: the
//!   first caller gets its value, later calls get [`Error::NotReplayable`], and the body
//!   does not run again.
//! - **A stored value that no longer decodes is an error, not a re-run**
//!   ([`Error::ReplayDecode`] names the type). Change the `scope` when a return type
//!   changes incompatibly.
//! - **No self-deadlock.** A call with the same key from inside its own body gets
//!   [`Error::Reentrant`] instead of waiting on itself.
//!
//! What is *not* exactly-once: a caller dropped (or a process that dies) *while the body
//! runs* leaves the claim to lapse at the end of its lease (`lock_timeout`), since the body
//! may have had its effect; the next call then takes over and runs the body again. The
//! same holds when storing the outcome fails on every attempt. Downstream systems that
//! must never see a second write can check the lease's fencing number by driving the
//! service by hand ([`IdempotencyService`]).
//!
//! # Options
//!
//! All are optional. Unknown or repeated options are compile errors at the option, with
//! the closest valid name suggested.
//!
//! | option | meaning | default |
//! |---|---|---|
//! | `key = <expr>` | the key: any expression over the arguments whose value implements `Display` (a string, a number, `format!(..)`) | derived from the fingerprint: identical calls dedupe |
//! | `scope = "name"` | the namespace of the records | the module path plus the fn name |
//! | `ttl = 86400` or `ttl = <Duration expr>` | how long a finished record is kept | the service's (24 h) |
//! | `failure_ttl = ..` | how long a recorded error is kept (with `on_error = "record"` or `"classify"`) | the service's (24 h) |
//! | `lock_timeout = ..` | the lease; renewed while the body runs | the service's (30 s) |
//! | `wait_timeout = ..` | how long a call waits for another owner | the service's (60 s) |
//! | `skip(a, b)` | arguments left out of the fingerprint | none; receivers are always left out |
//! | `fingerprint = <expr>` | fingerprint this value instead of the arguments | the arguments |
//! | `service = <expr>` | the service: an [`IdempotencyService`], an `Arc` of any [`Idempotency`] (a mock, say), or a reference to either | the [`global`] service |
//! | `on_error = "release"`, `"record"` or `"classify"` | what an `Err` does to the key (below) | `"release"` |
//! | `validate_fingerprint = false` | accept other arguments under a used key | the service's (on) |
//! | `crate = "path"` | where idem is, when renamed or re-exported | `::idem` |
//!
//! Durations written as integers are whole seconds, checked at compile time: `ttl = 0`,
//! negative numbers, fractions, strings such as `"1d"` and units such as `24h` or `500ms`
//! are refused there, with what to write instead (`ttl = 86400`,
//! `lock_timeout = std::time::Duration::from_millis(500)`); an integer type suffix
//! (`86400u64`) is accepted. A `Duration` expression is checked when the call runs
//! ([`Error::Options`]). `failure_ttl` without `on_error = "record"` or `"classify"` is a
//! compile error, since such a fn records no error.
//!
//! The default scope is `module::path::fn_name` for a free fn, and
//! `module::path::fn_name@<type of Self>` for a method (any fn with a `self` receiver),
//! the type as [`std::any::type_name`] writes it (`shop::Stripe::charge` on `shop::Stripe`
//! has the scope `shop::charge@shop::Stripe`). So two fns that use the same key never share
//! a record, nor do two types' methods of one name in one module. A type name that would
//! make the scope longer than [`MAX_SCOPE_LEN`] is cut, with a hash of the whole name.
//!
//! The default scope changes when the fn or its type is renamed or moved to another
//! module, which orphans its records; and `type_name`'s output is not guaranteed to stay
//! the same across compiler versions, so a toolchain update could in principle do the
//! same to a method's records. Give fns whose records must outlive a deploy (long `ttl`,
//! recorded errors) an explicit `scope`. Associated fns without a receiver cannot name
//! `Self` for the attribute and keep `module::path::fn_name`.
//!
//! # Return type and errors
//!
//! The fn returns `Result<T, E>` under any name (`anyhow::Result<T>` and other aliases
//! work) where `T: Serialize + DeserializeOwned` (it is stored and replayed) and
//! `E: From<idem::Error>`. The runtime's own outcomes reach the caller through that
//! conversion:
//!
//! | situation | `Err(E::from(..))` |
//! |---|---|
//! | the key was first used with other arguments | [`Error::FingerprintMismatch`] |
//! | another owner still runs and the wait budget ran out | [`Error::WaitTimeout`] |
//! | the store failed before the body ran (fail-closed) | [`Error::Store`] |
//! | the result was recorded as not replayable | [`Error::NotReplayable`] |
//! | the stored result does not decode as `T` (or a recorded error as `E`) | [`Error::ReplayDecode`] |
//! | the same key from inside its own body | [`Error::Reentrant`] |
//! | an argument cannot be fingerprinted (NaN, a failing `Serialize`) | [`Error::Fingerprint`] |
//! | the key or the options are invalid | [`Error::InvalidKey`], [`Error::Options`] |
//!
//! # What an error does to the key
//!
//! - `on_error = "release"` (the default) frees the key at once: the next call runs the
//!   body again. Right for errors that come before any side effect, and for transient ones.
//! - `on_error = "record"` stores the error and replays it, as the same typed value, to
//!   every later call; the body does not run again. Right for errors that come *after* a
//!   side effect (the payment was captured, then the receipt failed), where running
//!   again would repeat the effect. `E` must be `Serialize + DeserializeOwned`, which the
//!   compiler checks at the return type.
//! - `on_error = "classify"` lets each error value decide through [`Classify`]:
//!
//! ```
//! use idem::{idempotent, Classify, OnError};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! enum ChargeError {
//!     Declined,                          // nothing happened: run again on retry
//!     ReceiptFailed { payment: String }, // the money moved: never charge again
//!     #[serde(skip)]
//!     Idem(idem::Error),
//! }
//!
//! impl From<idem::Error> for ChargeError {
//!     fn from(error: idem::Error) -> Self {
//!         ChargeError::Idem(error)
//!     }
//! }
//!
//! impl Classify for ChargeError {
//!     fn on_error(&self) -> OnError {
//!         match self {
//!             ChargeError::ReceiptFailed { .. } => OnError::Record,
//!             _ => OnError::Release,
//!         }
//!     }
//! }
//!
//! #[idempotent(key = order, on_error = "classify")]
//! async fn charge(order: &str) -> Result<String, ChargeError> {
//!     Err(ChargeError::Declined)
//! }
//! ```
//!
//! An error that is to be recorded but fails to serialize (like `Idem` above) closes the
//! key as not replayable rather than letting the body run twice.
//!
//! # The service
//!
//! Without `service = ..`, fns use the process-wide service: install it once at start-up
//! with [`global::install`]. If none was installed when the first call runs, an in-memory
//! service takes its place: it dedupes within one process only. The one-time warning about
//! it is a `tracing` event at `warn` level, so it is invisible unless the application
//! installs a subscriber (`tracing-subscriber`, say).
//!
//! With `service = self.service` (or any expression), each call uses that service. Tests
//! can pass an `Arc` of their own [`Idempotency`] implementation: the trait is declared
//! with `#[async_trait]`, so a mock needs the `async-trait` crate to implement it, and
//! [`Lease::detached`] makes the lease a mock's `check_and_lock` hands out as
//! [`CheckOutcome::Acquired`].
//!
//! # Methods, generics and `#[async_trait]`
//!
//! Receivers (`&self`, `&mut self`, `self`, `self: &Self`, `self: Arc<Self>`) are never
//! fingerprinted and stay usable in the body, nested macros included. Generics, `where`
//! clauses, named and elided lifetimes and `impl Trait` arguments work; every argument
//! that is fingerprinted must implement `Serialize` (the compiler says so at the
//! argument). The returned future is `Send` when the body's future, `T` and `E` are.
//!
//! With `#[async_trait]`, put `#[async_trait]` on the trait or impl as usual and
//! `#[idempotent]` on the method inside it. The impl's attribute expands first; the
//! method attribute recognises the boxed future it leaves and wraps the body inside it:
//!
//! ```
//! use async_trait::async_trait;
//! use idem::{idempotent, IdempotencyService};
//!
//! #[async_trait]
//! trait Payments {
//!     async fn charge(&self, order: String) -> Result<u64, idem::Error>;
//! }
//!
//! struct Gateway {
//!     idem: IdempotencyService,
//! }
//!
//! #[async_trait]
//! impl Payments for Gateway {
//!     #[idempotent(key = order, service = self.idem)]
//!     async fn charge(&self, order: String) -> Result<u64, idem::Error> {
//!         Ok(order.len() as u64)
//!     }
//! }
//! ```
//!
//! # Known limitations
//!
//! - **Stored values are owned.** `T` must be `DeserializeOwned`, so a borrowed result
//!   such as `&'static str` cannot be replayed; return `String`:
//!
//!   ```compile_fail
//!   #[idem::idempotent(key = id)]
//!   async fn name(id: u32) -> Result<&'static str, idem::Error> {
//!       Ok("fixed")
//!   }
//!   ```
//!
//!   The compiler reports ``implementation of `Deserialize` is not general enough`` at the
//!   return type.
//! - **Only `async fn`.** A fn returning `impl Future` is refused ("`#[idempotent]` goes on
//!   an `async fn`; make this fn `async`"):
//!
//!   ```compile_fail
//!   #[idem::idempotent(key = id)]
//!   fn charge(id: u32) -> Result<u32, idem::Error> {
//!       Ok(id)
//!   }
//!   ```
//! - **Sets are fingerprinted in iteration order.** serde serializes a `HashSet` as a
//!   sequence, so two equal sets that iterate differently give two fingerprints, and a
//!   retry can be refused as a mismatch. Use a `BTreeSet`, or mark the field
//!   `#[serde(serialize_with = "idem::fingerprint::sorted_set")]` (and pass a set argument
//!   as [`fingerprint::SortedSet`] through `fingerprint = ..`).
//! - **Numbers keep their JSON type.** `1.0` and `1` are different values to the
//!   fingerprint (a float and an integer), so a client that sends `"amount": 1.0` on one
//!   attempt and `"amount": 1` on the next gets a mismatch when the argument is a
//!   `serde_json::Value`; deserialize into a typed struct first:
//!
//!   ```
//!   let float: serde_json::Value = serde_json::from_str("1.0").unwrap();
//!   let integer: serde_json::Value = serde_json::from_str("1").unwrap();
//!   assert_ne!(
//!       idem::fingerprint::fingerprint(&float).unwrap(),
//!       idem::fingerprint::fingerprint(&integer).unwrap()
//!   );
//!   ```
//! - **Reentrancy is tracked per task.** A same-key call from a task spawned inside the
//!   body is not recognised as reentrant; it waits for the body like any other caller and
//!   ends with [`Error::WaitTimeout`] if the body waits for it in turn.
//! - **Destructured arguments** are fingerprinted by the names they bind (parts bound to
//!   `_` or `..` cannot affect the body and are left out). Under `#[async_trait]`, which
//!   renames such arguments, they are fingerprinted whole and cannot be `skip`ped by the
//!   inner names.

#![warn(missing_docs)]

#[doc(inline)]
pub use idem_macros::idempotent;
pub use idem_runtime::*;
