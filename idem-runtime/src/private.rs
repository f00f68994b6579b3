//! Support for the code that `#[idempotent]` generates.
//!
//! Not a public API: the attribute is pinned to this exact version of the runtime, and the
//! names and signatures here change with it. Everything an annotated fn does at run time is
//! [`run`]; the rest are small helpers that give the generated code one place to check the
//! user's types, so compiler errors name what is needed and point at the user's tokens.

use std::any::type_name;
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
use crate::key::{for_message, Key};
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
    /// The scope: `module::path::fn_name` unless the attribute names one.
    pub scope: &'static str,
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

/// The fingerprint of a fn's arguments, added one by one, keeping the first error.
pub struct Args {
    fingerprinter: Fingerprinter,
    error: Option<FingerprintError>,
}

impl Args {
    /// No arguments yet.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Args {
            fingerprinter: Fingerprinter::new(),
            error: None,
        }
    }

    /// Adds the next argument, named for errors.
    pub fn arg<T: Serialize + ?Sized>(mut self, name: &'static str, value: &T) -> Self {
        if self.error.is_none() {
            if let Err(error) = self.fingerprinter.arg(name, value) {
                self.error = Some(error);
            }
        }
        self
    }

    /// The fingerprint, or the first argument's error.
    pub fn finish(self) -> Result<Fingerprint, FingerprintError> {
        match self.error {
            Some(error) => Err(error),
            None => Ok(self.fingerprinter.finish()),
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

/// The `on_error` option: what an error does to the key, and how a recorded one replays.
pub trait Policy<E> {
    /// Whether the claim is made under the *record* failure policy.
    const RECORDS: bool;

    /// What `error` does to the key.
    fn on_failure(&self, error: &E) -> Finish;

    /// The recorded error in `body`, or why it does not decode.
    fn replay(&self, body: &Body) -> Result<E, String>;
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

impl<E> Policy<E> for Release {
    const RECORDS: bool = false;

    fn on_failure(&self, _error: &E) -> Finish {
        Finish::Release
    }

    fn replay(&self, _body: &Body) -> Result<E, String> {
        Err(
            "an error was recorded under this key, but this fn releases on error; \
             use `on_error = \"record\"` or another scope"
                .to_owned(),
        )
    }
}

impl<E: Serialize + DeserializeOwned> Policy<E> for Recorded {
    const RECORDS: bool = true;

    fn on_failure(&self, error: &E) -> Finish {
        record(error)
    }

    fn replay(&self, body: &Body) -> Result<E, String> {
        body.decode().map_err(|error| error.to_string())
    }
}

impl<E: Classify + Serialize + DeserializeOwned> Policy<E> for Classified {
    const RECORDS: bool = true;

    fn on_failure(&self, error: &E) -> Finish {
        match error.on_error() {
            OnError::Release => Finish::Release,
            OnError::Record => record(error),
        }
    }

    fn replay(&self, body: &Body) -> Result<E, String> {
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

/// Runs one call of an annotated fn: claim the key, then run the body and store its
/// outcome, or replay the stored one.
pub async fn run<R, P, F>(call: Call, policy: P, body: F) -> R
where
    R: Returns,
    R::Ok: Serialize + DeserializeOwned,
    R::Err: From<Error>,
    P: Policy<R::Err>,
    F: Future<Output = R>,
{
    let Call {
        service,
        scope,
        key,
        fingerprint,
        mut options,
    } = call;
    let fingerprint = match fingerprint {
        Ok(fingerprint) => fingerprint,
        Err(source) => {
            let key = key.map_or_else(|| scope.to_owned(), |id| Key::scoped(scope, id).to_string());
            return R::from_result(Err(Error::Fingerprint { key, source }.into()));
        }
    };
    let key = Key::scoped(scope, key.unwrap_or_else(|| fingerprint.to_hex()));

    if is_held(&key) {
        tracing::warn!(key = %key, "idempotent call from inside its own body refused");
        let key = for_message(&key);
        return R::from_result(Err(Error::Reentrant { key }.into()));
    }

    if P::RECORDS && options.failure_policy.is_none() {
        options.failure_policy = Some(FailurePolicy::Record);
    }
    let outcome = match service.check_and_lock(&key, &fingerprint, &options).await {
        Ok(outcome) => outcome,
        Err(error) => return R::from_result(Err(error.into())),
    };

    let result = match outcome {
        CheckOutcome::Acquired(lease) => return own(service, key, lease, &policy, body).await,
        CheckOutcome::Bypassed { .. } => return body.await,
        CheckOutcome::Completed(record) => replay_ok(&key, record),
        CheckOutcome::Failed(record) => replay_err(&key, record, &policy),
        CheckOutcome::NotReplayable(record) => Err(Error::NotReplayable {
            key: for_message(&key),
            reason: reason(record),
        }
        .into()),
        CheckOutcome::Mismatch { stored } => Err(Error::FingerprintMismatch {
            key: for_message(&key),
            stored,
            presented: fingerprint,
        }
        .into()),
        CheckOutcome::InProgress { retry_after } => Err(Error::InProgress {
            key: for_message(&key),
            retry_after,
        }
        .into()),
    };
    R::from_result(result)
}

/// The owner's side: run the body with the lease kept alive, then store the outcome.
async fn own<R, P, F>(
    service: Arc<dyn Idempotency>,
    key: Key,
    lease: Lease,
    policy: &P,
    body: F,
) -> R
where
    R: Returns,
    R::Ok: Serialize,
    P: Policy<R::Err>,
    F: Future<Output = R>,
{
    let held = held_with(&key);
    let result = HELD_KEYS
        .scope(held, keep_alive(&*service, &lease, body))
        .await
        .into_result();

    let finish = match &result {
        Ok(value) => match Body::json(value) {
            Ok(body) => Finish::Complete(Response::ok(body)),
            Err(cause) => Finish::NotReplayable(format!(
                "the {} result does not serialize: {cause}",
                type_name::<R::Ok>()
            )),
        },
        Err(error) => policy.on_failure(error),
    };
    store_outcome(service, lease, finish).await;
    R::from_result(result)
}

/// Stores the outcome on a task of its own when a runtime is at hand, so that a caller
/// dropped after the body returned cannot stop it: the body's effect has happened, and
/// an outcome left unstored would let a retry run it a second time. The caller gets the
/// body's result whatever the store says; failures are logged with the key.
async fn store_outcome(service: Arc<dyn Idempotency>, lease: Lease, finish: Finish) {
    let task = async move {
        let key = lease.key().clone();
        let stored = match finish {
            Finish::Complete(response) => service.complete(&lease, response).await,
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
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            if let Err(error) = runtime.spawn(task).await {
                tracing::error!(%error, "the task storing an outcome did not finish");
            }
        }
        Err(_) => task.await,
    }
}

fn replay_ok<T: DeserializeOwned, E: From<Error>>(key: &Key, record: Record) -> Result<T, E> {
    let RecordState::Completed { response, .. } = record.state else {
        return Err(Error::NotReplayable {
            key: for_message(key),
            reason: format!("the record is {}", record.status().as_str()),
        }
        .into());
    };
    response.body.decode().map_err(|cause| {
        tracing::error!(key = %key, type_name = type_name::<T>(), "stored result does not decode");
        Error::ReplayDecode {
            key: for_message(key),
            type_name: type_name::<T>(),
            message: cause.to_string(),
        }
        .into()
    })
}

fn replay_err<T, E: From<Error>, P: Policy<E>>(
    key: &Key,
    record: Record,
    policy: &P,
) -> Result<T, E> {
    let RecordState::Failed { error, .. } = record.state else {
        return Err(Error::NotReplayable {
            key: for_message(key),
            reason: format!("the record is {}", record.status().as_str()),
        }
        .into());
    };
    match policy.replay(&error.body) {
        Ok(error) => Err(error),
        Err(message) => {
            tracing::error!(key = %key, type_name = type_name::<E>(), "stored error does not decode");
            Err(Error::ReplayDecode {
                key: for_message(key),
                type_name: type_name::<E>(),
                message,
            }
            .into())
        }
    }
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

fn held_with(key: &Key) -> Vec<Key> {
    let mut keys = HELD_KEYS.try_with(Clone::clone).unwrap_or_default();
    keys.push(key.clone());
    keys
}
