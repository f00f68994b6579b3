//! Support for the code that `#[idempotent]` generates.
//!
//! Not a public API: the attribute is pinned to this exact version of the runtime, and the
//! names and signatures here change with it. Everything an annotated fn does at run time is
//! [`run`]; the rest are small helpers that give the generated code one place to check the
//! user's types, so compiler errors name what is needed and point at the user's tokens.

use std::any::type_name;
use std::borrow::Cow;
use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::classify::{Classify, OnError};
pub use crate::config::CallOptions;
use crate::config::FailurePolicy;
use crate::error::Error;
use crate::fingerprint::{Fingerprint, FingerprintError, Fingerprinter};
use crate::key::{for_message, Key, MAX_SCOPE_LEN};
use crate::lease::Lease;
use crate::record::{Body, Record, RecordState, Response};
use crate::service::{keep_alive, CheckOutcome, Idempotency, IdempotencyService};

/// The status stored with a recorded error; an `Ok` value is stored with 200.
const ERROR_STATUS: u16 = 500;

tokio::task_local! {
    /// The keys whose bodies run on this task, innermost last. A call with one of them
    /// would wait on its own lease until its wait budget ran out.
    static HELD_KEYS: Vec<Key>;
}

/// One call of an annotated fn, as the generated code assembles it.
pub struct Call {
    /// The service that keeps the records.
    pub service: Arc<dyn Idempotency>,
    /// The scope: the attribute's `scope`, else [`method_scope`] for a method and
    /// `module::path::fn_name` for a free fn.
    pub scope: Cow<'static, str>,
    /// The key from `key = ..`; `None` derives the key from the fingerprint.
    pub key: Option<String>,
    /// The fingerprint of the arguments (or of `fingerprint = ..`).
    pub fingerprint: Result<Fingerprint, FingerprintError>,
    /// The per-call options from the attribute.
    pub options: CallOptions,
}

/// The return type of an `#[idempotent]` fn: a `Result`, whatever it is called.
#[diagnostic::on_unimplemented(
    message = "`#[idempotent]` fns must return `Result<T, E>`, not `{Self}`",
    label = "not a `Result`",
    note = "the `Ok` value is stored and replayed; idem's own errors reach the caller as `E: From<idem::Error>`"
)]
pub trait Returns {
    /// The `Ok` type.
    type Ok;
    /// The `Err` type.
    type Err;
    /// Builds the return value.
    fn from_result(result: Result<Self::Ok, Self::Err>) -> Self;
    /// Takes the return value apart.
    fn into_result(self) -> Result<Self::Ok, Self::Err>;
}

impl<T, E> Returns for Result<T, E> {
    type Ok = T;
    type Err = E;

    fn from_result(result: Result<T, E>) -> Self {
        result
    }

    fn into_result(self) -> Result<T, E> {
        self
    }
}

/// A scope written in the attribute, or the default scope of a free fn.
pub const fn scope(scope: &'static str) -> Cow<'static, str> {
    Cow::Borrowed(scope)
}

/// The default scope of a method: `path` (`module::path::fn_name`), `@`, and the type of
/// `Self`, so that methods of one name on two types in one module keep separate records.
/// A type name long enough to push the scope over [`MAX_SCOPE_LEN`] is cut, and a hash of
/// the whole name keeps the cut scopes of two types apart.
pub fn method_scope<S: ?Sized>(path: &'static str) -> Cow<'static, str> {
    let owner = type_name::<S>();
    let mut scope = String::with_capacity(path.len() + 1 + owner.len());
    scope.push_str(path);
    scope.push('@');
    let room = MAX_SCOPE_LEN.saturating_sub(scope.len());
    if owner.len() <= room {
        scope.push_str(owner);
        return Cow::Owned(scope);
    }
    let digest = <sha2::Sha256 as sha2::Digest>::digest(owner.as_bytes());
    let hash: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let mut cut = room.saturating_sub(hash.len() + 1);
    while !owner.is_char_boundary(cut) {
        cut -= 1;
    }
    scope.push_str(&owner[..cut]);
    scope.push('~');
    scope.push_str(&hash);
    Cow::Owned(scope)
}

/// What can be the `service` of an annotated fn.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the `service` of an `#[idempotent]` fn",
    label = "not an idempotency service",
    note = "use an `idem::IdempotencyService`, an `Arc` of any `idem::Idempotency` implementation (a mock, for instance), or a reference to either"
)]
pub trait Shared {
    /// A handle that outlives the call, so the outcome can be stored even when the
    /// caller is dropped after the body returned.
    fn shared(&self) -> Arc<dyn Idempotency>;
}

impl Shared for IdempotencyService {
    fn shared(&self) -> Arc<dyn Idempotency> {
        Arc::new(self.clone())
    }
}

impl<S: Idempotency + 'static> Shared for Arc<S> {
    fn shared(&self) -> Arc<dyn Idempotency> {
        Arc::clone(self) as Arc<dyn Idempotency>
    }
}

impl Shared for Arc<dyn Idempotency> {
    fn shared(&self) -> Arc<dyn Idempotency> {
        Arc::clone(self)
    }
}

impl<T: Shared + ?Sized> Shared for &T {
    fn shared(&self) -> Arc<dyn Idempotency> {
        (**self).shared()
    }
}

/// The service named by `service = ..`.
pub fn shared<S: Shared + ?Sized>(service: &S) -> Arc<dyn Idempotency> {
    service.shared()
}

/// The process-wide service, for fns that name none.
pub fn global() -> Arc<dyn Idempotency> {
    crate::global::service()
}

/// What can be the value of `key = ..`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be an idempotency key",
    label = "not text",
    note = "a key is text: use a string, a number, `format!(..)`, or any type that implements `Display`"
)]
pub trait KeyText {
    /// The key's text.
    fn key_text(&self) -> String;
}

impl<T: Display + ?Sized> KeyText for T {
    fn key_text(&self) -> String {
        self.to_string()
    }
}

/// The text of `key = ..`, borrowed so the argument stays with the body.
pub fn key_text<K: KeyText + ?Sized>(key: &K) -> String {
    key.key_text()
}

/// A `Duration` option given as an expression; the generated code calls it so that a
/// value of another type is reported at that expression.
pub const fn duration(value: std::time::Duration) -> std::time::Duration {
    value
}

/// The fingerprint of a fn's arguments, added one by one, keeping the first error. Taken
/// and given back by reference: by value, each argument moved the whole hash state.
pub struct Args {
    fingerprinter: Option<Fingerprinter>,
    error: Option<FingerprintError>,
}

impl Args {
    /// No arguments yet.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Args {
            fingerprinter: Some(Fingerprinter::new()),
            error: None,
        }
    }

    /// Adds the next argument, named for errors.
    pub fn arg<T: Fingerprinted + ?Sized>(&mut self, name: &'static str, value: &T) -> &mut Self {
        if self.error.is_none() {
            if let Some(fingerprinter) = &mut self.fingerprinter {
                if let Err(error) = fingerprinter.arg(name, value) {
                    self.error = Some(error);
                }
            }
        }
        self
    }

    /// The fingerprint, or the first argument's error. Once: the generated code calls it
    /// once, and a second call is refused rather than answered with the fingerprint of no
    /// arguments.
    pub fn finish(&mut self) -> Result<Fingerprint, FingerprintError> {
        if let Some(error) = self.error.take() {
            // What was hashed ends inside the failed argument: nothing may finish it.
            self.fingerprinter = None;
            return Err(error);
        }
        match self.fingerprinter.take() {
            Some(fingerprinter) => Ok(fingerprinter.finish()),
            None => Err(FingerprintError::Serialize {
                argument: None,
                message: "the arguments were fingerprinted already".to_owned(),
            }),
        }
    }
}

/// The fingerprint of `fingerprint = ..`.
pub fn value<T: Serialize + ?Sized>(value: &T) -> Result<Fingerprint, FingerprintError> {
    crate::fingerprint::fingerprint(value)
}

/// How an owner's outcome is stored.
#[derive(Debug)]
pub enum Finish {
    /// The `Ok` value, for replay.
    Complete(Response),
    /// The error, for replay.
    Record(Response),
    /// Nothing: free the key.
    Release,
    /// The body finished but its outcome cannot be replayed; it does not run again.
    NotReplayable(String),
}

/// What can be an argument that is fingerprinted.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be fingerprinted: it does not implement `Serialize`",
    label = "fingerprinted argument",
    note = "every argument not named in `skip(..)` is fingerprinted, so that a key reused with other arguments is refused",
    note = "leave this argument out with `skip(<argument>)` if it does not change the outcome (a connection, a logger), or derive `serde::Serialize` for it"
)]
pub trait Fingerprinted: Serialize {}

impl<T: Serialize + ?Sized> Fingerprinted for T {}

/// What can be the `Ok` type of an annotated fn.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be stored and replayed: it must implement `Serialize` and `Deserialize`",
    label = "the `Ok` type is stored as JSON and replayed to later calls",
    note = "derive `serde::Serialize` and `serde::Deserialize` for it; a borrowed type such as `&str` cannot be replayed, so return an owned one (`String`)"
)]
pub trait Replayable: Serialize + DeserializeOwned {}

impl<T: Serialize + DeserializeOwned> Replayable for T {}

/// What can be the `Err` type of an annotated fn.
#[diagnostic::on_unimplemented(
    message = "`{Self}` must implement `From<idem::Error>` so idem's own errors (mismatch, timeout, store) can reach the caller",
    label = "`{Self}` cannot carry idem's errors",
    note = "wrap your error in an enum with an `Idem(idem::Error)` variant and implement `From<idem::Error>` for it, or return `idem::Error` itself"
)]
pub trait CarriesIdemErrors: From<Error> {}

impl<E: From<Error>> CarriesIdemErrors for E {}

/// The `on_error` option `P` over the error type: what an error does to the key, and how
/// a recorded one replays. Implemented by the error type, so that a missing `Serialize` is
/// reported about the error type at the fn's return type.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be recorded: `on_error = \"record\"` and `\"classify\"` store the error and replay it",
    label = "the error type must implement `Serialize` and `Deserialize` (and `idem::Classify` for \"classify\")",
    note = "derive `serde::Serialize` and `serde::Deserialize` for it, with `#[serde(skip)]` on a variant that holds `idem::Error`; or keep the default `on_error = \"release\"`, which stores no error"
)]
pub trait Policy<P>: Sized {
    /// Whether the claim is made under the *record* failure policy.
    const RECORDS: bool;

    /// What this error does to the key.
    fn on_failure(&self) -> Finish;

    /// The recorded error in `body`, or why it does not decode.
    fn replay(body: &Body) -> Result<Self, String>;
}

/// `on_error = "release"`, the default: every error frees the key.
#[derive(Debug, Clone, Copy)]
pub struct Release;

/// `on_error = "record"`: every error is stored and replayed.
#[derive(Debug, Clone, Copy)]
pub struct Recorded;

/// `on_error = "classify"`: the error's [`Classify`] implementation decides.
#[derive(Debug, Clone, Copy)]
pub struct Classified;

impl<E> Policy<Release> for E {
    const RECORDS: bool = false;

    fn on_failure(&self) -> Finish {
        Finish::Release
    }

    fn replay(_body: &Body) -> Result<E, String> {
        Err(
            "an error was recorded under this key, but this fn releases on error; \
             use `on_error = \"record\"` or another scope"
                .to_owned(),
        )
    }
}

impl<E: Serialize + DeserializeOwned> Policy<Recorded> for E {
    const RECORDS: bool = true;

    fn on_failure(&self) -> Finish {
        record(self)
    }

    fn replay(body: &Body) -> Result<E, String> {
        body.decode().map_err(|error| error.to_string())
    }
}

impl<E: Classify + Serialize + DeserializeOwned> Policy<Classified> for E {
    const RECORDS: bool = true;

    fn on_failure(&self) -> Finish {
        match self.on_error() {
            OnError::Release => Finish::Release,
            OnError::Record => record(self),
        }
    }

    fn replay(body: &Body) -> Result<E, String> {
        body.decode().map_err(|error| error.to_string())
    }
}

fn record<E: Serialize>(error: &E) -> Finish {
    match Body::json(error) {
        Ok(body) => Finish::Record(Response::new(ERROR_STATUS, body)),
        // An error that was to be recorded came after a side effect: running the body
        // again is what recording exists to prevent, so the key is closed instead.
        Err(cause) => Finish::NotReplayable(format!("the error does not serialize: {cause}")),
    }
}

/// How an annotated fn's `Ok` and `Err` values are stored and replayed, and how idem's own
/// errors become its `Err`. The generated code builds it with [`ops`], whose bounds the
/// compiler checks at the fn's return type; [`run`] then needs none of them. (Bounds on an
/// `async fn` such as `run` are checked again wherever its future is used, and those
/// repeats would report a missing implementation without the trait's own message.)
pub struct Ops<T, E> {
    records: bool,
    from_idem: fn(Error) -> E,
    on_failure: fn(&E) -> Finish,
    replay_err: fn(&Body) -> Result<E, String>,
    encode_ok: fn(&T) -> Result<Body, serde_json::Error>,
    decode_ok: fn(&Body) -> Result<T, serde_json::Error>,
}

impl<T, E> Clone for Ops<T, E> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T, E> Copy for Ops<T, E> {}

/// The [`Ops`] of the return type `R` under the `on_error` mode `P` ([`Release`],
/// [`Recorded`] or [`Classified`]), named by the caller rather than inferred: inferred, it
/// would be taken from the one implementation that fits an error type that is not serde.
pub fn ops<R, P>() -> Ops<R::Ok, R::Err>
where
    R: Returns,
    R::Ok: Replayable,
    R::Err: CarriesIdemErrors + Policy<P>,
{
    Ops {
        records: <R::Err as Policy<P>>::RECORDS,
        from_idem: <R::Err as From<Error>>::from,
        on_failure: <R::Err as Policy<P>>::on_failure,
        replay_err: <R::Err as Policy<P>>::replay,
        encode_ok: Body::json::<R::Ok>,
        decode_ok: Body::decode::<R::Ok>,
    }
}

/// Runs one call of an annotated fn: claim the key, then run the body and store its
/// outcome, or replay the stored one.
#[allow(clippy::manual_async_fn)] // see "Futures" in service.rs
pub fn run<R, F>(mut call: Call, ops: Ops<R::Ok, R::Err>, body: F) -> impl Future<Output = R>
where
    R: Returns,
    F: Future<Output = R>,
{
    // `call`'s fields are used where they lie, and the outcome is taken apart before the
    // owner's path is awaited: see "Futures" in service.rs.
    async move {
        let idem = ops.from_idem;
        let fingerprint = match call.fingerprint {
            Ok(fingerprint) => fingerprint,
            Err(source) => {
                let key = match call.key {
                    Some(id) => Key::scoped(call.scope, id).to_string(),
                    None => call.scope.into_owned(),
                };
                return R::from_result(Err(idem(Error::Fingerprint { key, source })));
            }
        };
        let id = call.key.unwrap_or_else(|| fingerprint.to_hex());
        let key = Key::scoped(call.scope, id);

        if is_held(&key) {
            tracing::warn!(key = %key, "idempotent call from inside its own body refused");
            let key = for_message(&key);
            return R::from_result(Err(idem(Error::Reentrant { key })));
        }

        if ops.records && call.options.failure_policy.is_none() {
            call.options.failure_policy = Some(FailurePolicy::Record);
        }
        let service = call.service;
        // The outcome is taken apart in a block of its own, before anything else is
        // awaited: held across the owner's awaits, it would take room in every call's
        // future.
        let lease = {
            let checked = match service.as_service() {
                Some(direct) => {
                    direct
                        .check_and_lock(&key, &fingerprint, &call.options)
                        .await
                }
                None => {
                    service
                        .check_and_lock(&key, &fingerprint, &call.options)
                        .await
                }
            };
            match checked {
                Ok(CheckOutcome::Acquired(lease)) => Some(lease),
                Ok(CheckOutcome::Bypassed { .. }) => None,
                Ok(CheckOutcome::Completed(record)) => {
                    return R::from_result(replay_ok(&key, record, ops.decode_ok).map_err(idem))
                }
                Ok(CheckOutcome::Failed(record)) => {
                    return R::from_result(Err(
                        replay_err(&key, record, ops.replay_err).unwrap_or_else(idem)
                    ))
                }
                Ok(CheckOutcome::NotReplayable(record)) => {
                    return R::from_result(Err(idem(Error::NotReplayable {
                        key: for_message(&key),
                        reason: reason(record),
                    })))
                }
                Ok(CheckOutcome::Mismatch { stored }) => {
                    return R::from_result(Err(idem(Error::FingerprintMismatch {
                        key: for_message(&key),
                        stored,
                        presented: fingerprint,
                    })))
                }
                Ok(CheckOutcome::InProgress { retry_after }) => {
                    return R::from_result(Err(idem(Error::InProgress {
                        key: for_message(&key),
                        retry_after,
                    })))
                }
                Err(error) => return R::from_result(Err(idem(error))),
            }
        };
        match lease {
            // Boxed: the owner's future (body, renewals, store) is large, and keeping it out
            // of this one keeps the far more frequent replay cheap to set up.
            Some(lease) => Box::pin(own::<R, F>(service, key, lease, ops, body)).await,
            None => body.await,
        }
    }
}

/// The owner's side: run the body with the lease kept alive, then store the outcome.
#[allow(clippy::manual_async_fn)] // see "Futures" in service.rs
fn own<R, F>(
    service: Arc<dyn Idempotency>,
    key: Key,
    lease: Lease,
    ops: Ops<R::Ok, R::Err>,
    body: F,
) -> impl Future<Output = R>
where
    R: Returns,
    F: Future<Output = R>,
{
    async move {
        let held = held_with(key);
        let result = HELD_KEYS
            .scope(held, keep_alive(&*service, &lease, body))
            .await
            .into_result();

        let finish = match &result {
            Ok(value) => match (ops.encode_ok)(value) {
                Ok(body) => Finish::Complete(Response::ok(body)),
                Err(cause) => Finish::NotReplayable(format!(
                    "the {} result does not serialize: {cause}",
                    type_name::<R::Ok>()
                )),
            },
            Err(error) => (ops.on_failure)(error),
        };
        store_outcome(service, lease, finish).await;
        R::from_result(result)
    }
}

/// Stores the outcome so that a caller dropped after the body returned cannot stop it: the
/// body's effect has happened, and an outcome left unstored would let a retry run it a
/// second time. The store runs in the caller's task; only when the caller is dropped
/// before it finished does the rest move to a task of its own (see [`Detached`]). The
/// caller gets the body's result whatever the store says; failures are logged with the
/// key.
async fn store_outcome(service: Arc<dyn Idempotency>, lease: Lease, finish: Finish) {
    let task = async move {
        let key = lease.key();
        let stored = match finish {
            Finish::Complete(response) => match service.as_service() {
                Some(direct) => direct.complete(&lease, response).await,
                None => service.complete(&lease, response).await,
            },
            Finish::Record(response) => service.fail(&lease, response).await,
            Finish::Release => service.release(&lease).await,
            Finish::NotReplayable(reason) => {
                tracing::warn!(key = %key, %reason, "result recorded as not replayable");
                service.complete_not_replayable(&lease, reason).await
            }
        };
        match stored {
            Ok(()) => {}
            Err(Error::ResultTooLarge { size, limit, .. }) => {
                tracing::warn!(key = %key, size, limit, "result recorded as not replayable");
            }
            Err(error) => {
                tracing::error!(key = %key, %error, "the outcome was not stored; the caller still gets it");
            }
        }
    };
    Detached(Some(Box::pin(task))).await
}

/// A future that, when dropped before it finished, finishes on a task of its own (when a
/// runtime is at hand). Spawning only then keeps a task and a scheduler round trip off
/// every call.
struct Detached(Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>>);

impl Future for Detached {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let Some(task) = self.0.as_mut() else {
            return std::task::Poll::Ready(());
        };
        let done = task.as_mut().poll(cx);
        if done.is_ready() {
            self.0 = None;
        }
        done
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn(task)),
                Err(_) => tracing::error!("dropped outside a runtime; the outcome was not stored"),
            }
        }
    }
}

/// The stored `Ok` value, decoded with `decode`.
fn replay_ok<T>(
    key: &Key,
    record: Record,
    decode: fn(&Body) -> Result<T, serde_json::Error>,
) -> Result<T, Error> {
    let RecordState::Completed { response, .. } = record.state else {
        return Err(Error::NotReplayable {
            key: for_message(key),
            reason: format!("the record is {}", record.status().as_str()),
        });
    };
    decode(&response.body).map_err(|cause| {
        tracing::error!(key = %key, type_name = type_name::<T>(), "stored result does not decode");
        Error::ReplayDecode {
            key: for_message(key),
            type_name: type_name::<T>(),
            message: cause.to_string(),
        }
    })
}

/// The recorded error, decoded with `replay`; `Err` when it cannot be replayed.
fn replay_err<E>(
    key: &Key,
    record: Record,
    replay: fn(&Body) -> Result<E, String>,
) -> Result<E, Error> {
    let RecordState::Failed { error, .. } = record.state else {
        return Err(Error::NotReplayable {
            key: for_message(key),
            reason: format!("the record is {}", record.status().as_str()),
        });
    };
    replay(&error.body).map_err(|message| {
        tracing::error!(key = %key, type_name = type_name::<E>(), "stored error does not decode");
        Error::ReplayDecode {
            key: for_message(key),
            type_name: type_name::<E>(),
            message,
        }
    })
}

fn reason(record: Record) -> String {
    let status = record.status();
    match record.state {
        RecordState::NotReplayable { reason, .. } => reason,
        _ => format!("the record is {}", status.as_str()),
    }
}

fn is_held(key: &Key) -> bool {
    HELD_KEYS
        .try_with(|keys| keys.contains(key))
        .unwrap_or(false)
}

fn held_with(key: Key) -> Vec<Key> {
    let mut keys = HELD_KEYS.try_with(Clone::clone).unwrap_or_default();
    keys.push(key);
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_fingerprint_once_and_keep_their_first_error() {
        let mut args = Args::new();
        args.arg("item", &42u32).arg("discount", &0.25);
        let expected = crate::fingerprint::fingerprint(&(42u32, 0.25)).expect("finite");
        assert_eq!(args.finish().ok(), Some(expected));
        assert!(args.finish().is_err(), "a second finish is refused");

        let mut args = Args::new();
        args.arg("a", &f64::NAN).arg("b", &1u8);
        let error = args.finish().expect_err("NaN does not fingerprint");
        assert!(error.to_string().contains("`a`"), "{error}");
        assert!(
            args.finish().is_err(),
            "a second finish after an error is refused too"
        );
    }

    #[tokio::test]
    async fn a_store_dropped_midway_finishes_on_a_task_of_its_own() {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let gate = Arc::new(tokio::sync::Notify::new());
        let store = {
            let gate = Arc::clone(&gate);
            async move {
                gate.notified().await;
                let _ = done_tx.send("stored");
            }
        };
        let mut detached = Box::pin(Detached(Some(Box::pin(store))));
        let first = tokio::time::timeout(std::time::Duration::from_millis(5), &mut detached).await;
        assert!(first.is_err(), "the store waits for the gate");

        drop(detached);
        gate.notify_one();

        assert_eq!(done_rx.await, Ok("stored"));
    }
}
