//! The idempotency service: claim a key, wait for another owner, complete, replay.
//!
//! # Futures
//!
//! Every call's future holds the futures of the calls it awaits, down to the store's, and
//! is moved whole wherever it is created and awaited, so its size is paid in copies on
//! every call. The functions on that path are written as `fn .. -> impl Future` returning
//! an `async move` block rather than as `async fn`s, which keep their arguments twice (as
//! passed, and as the locals they are moved into), and they take apart a store's reply
//! before awaiting anything else, since a `match` holds its scrutinee across the awaits in
//! its arms. Together this halved a replay's future (2.4 KB to 1.2 KB), and under the load
//! generator a replay's client CPU fell by about a tenth.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::config::{CallOptions, ErrorPolicy, FailurePolicy, Resolved, Settings, FIRST_RECHECK};
use crate::error::{ConfigError, Error, StoreError};
use crate::fingerprint::Fingerprint;
use crate::flight::{FlightEnd, FlightGuard, FlightState, Flights, Joining, Role};
use crate::key::{for_message, Key};
use crate::lease::{Grant, Lease};
use crate::record::{Record, RecordState, Response, Token};
use crate::store::{Claim, ClaimReply, DeleteReply, Finish, LeaseReply, MemoryStore, Owner, Store};

/// The longest pause between two claim attempts while another process's owner works, for
/// stores that cannot notify. A store that can ([`Store::notifies`]) wakes its waiters on
/// the owner's outcome, and the service then waits on it up to the owner's lease end.
const MAX_RECHECK: Duration = Duration::from_millis(250);

/// How many times a claim is sent when the connection fails. The store may have applied an
/// attempt whose reply was lost; the next attempt carries the same token, which the store
/// recognises, so the caller does not wait out its own lease.
const CLAIM_ATTEMPTS: u32 = 3;

/// The pause before the second claim attempt; it grows fourfold for each later one.
const CLAIM_RETRY_PAUSE: Duration = Duration::from_millis(10);

/// How a leader starts: its owner token, and the reply of its first claim when a batch
/// already sent it.
pub(crate) struct Start {
    pub token: Token,
    /// Boxed: only a batch has one, and inline it would take room in every call's future.
    pub first: Option<Box<Result<ClaimReply, Error>>>,
}

pub use crate::batch::BatchItem;

/// How a joiner's wait on this process's flight ended.
// Moved once, straight into the caller's return value, like the `CheckOutcome` it holds.
#[allow(clippy::large_enum_variant)]
enum Joined {
    /// The flight ended with an answer for the joiner.
    Outcome(CheckOutcome),
    /// The flight ended without a result: the joiner enters again.
    Vacated,
    /// The leader's lease ran out and was not renewed: the joiner asks the store itself,
    /// which decides whether the lease can be taken over.
    LeaseLapsed,
}

/// What [`check_and_lock`](Idempotency::check_and_lock) found.
#[derive(Debug)]
#[must_use = "an acquired lease must be completed or failed"]
pub enum CheckOutcome {
    /// The caller owns the key: run the operation, then complete or fail the lease.
    Acquired(Lease),
    /// The operation completed before: replay the record's response.
    Completed(Record),
    /// The operation failed before under the *record* policy: replay the record's error.
    Failed(Record),
    /// The operation completed before but its result cannot be replayed; do not run it.
    NotReplayable(Record),
    /// The key was first used with other arguments.
    Mismatch {
        /// The stored fingerprint.
        stored: Fingerprint,
    },
    /// Another owner runs the operation, and the call asked not to wait.
    InProgress {
        /// How long that owner's lease still runs.
        retry_after: Duration,
    },
    /// The store failed and the service is set to fail open: the operation may run
    /// unprotected. Only ever produced under [`ErrorPolicy::FailOpen`].
    Bypassed {
        /// The store error that was bypassed.
        error: Error,
    },
}

/// The operations of an idempotency service, as a trait so that tests can put a mock in
/// place of [`IdempotencyService`], and so that `#[idempotent(service = ...)]` accepts any
/// implementation.
#[async_trait]
pub trait Idempotency: Send + Sync {
    /// Claims `key` for a call with `fingerprint`; see [`CheckOutcome`].
    async fn check_and_lock(
        &self,
        key: &Key,
        fingerprint: &Fingerprint,
        options: &CallOptions,
    ) -> Result<CheckOutcome, Error>;

    /// Stores `response` as the result of the lease's operation.
    async fn complete(&self, lease: &Lease, response: Response) -> Result<(), Error>;

    /// Finishes the lease's operation as succeeded without a replayable result (it could
    /// not be serialized): later calls get [`Error::NotReplayable`] and do not run it.
    ///
    /// Implementations that keep records must override this. The default stores nothing
    /// and returns [`Error::NotReplayable`], leaving the claim to lapse at the end of its
    /// lease.
    async fn complete_not_replayable(&self, lease: &Lease, reason: String) -> Result<(), Error> {
        Err(Error::NotReplayable {
            key: for_message(lease.key()),
            reason,
        })
    }

    /// Finishes the lease's operation as failed, by its failure policy: *release* frees the
    /// key (and `error` is dropped), *record* stores `error` for replay.
    async fn fail(&self, lease: &Lease, error: Response) -> Result<(), Error>;

    /// Frees the key at once, whatever the failure policy: the next call runs.
    async fn release(&self, lease: &Lease) -> Result<(), Error>;

    /// Extends the lease by its lock timeout from now.
    async fn renew(&self, lease: &Lease) -> Result<(), Error>;

    /// Reads the record under `key`.
    async fn get(&self, key: &Key) -> Result<Option<Record>, Error>;

    /// Removes the record under `key`. A record still processing is kept (and
    /// [`DeleteReply::Processing`] returned) unless `force` is set.
    async fn delete(&self, key: &Key, force: bool) -> Result<DeleteReply, Error>;

    /// This, when it is an [`IdempotencyService`]: the code `#[idempotent]` generates then
    /// calls its inherent methods, whose futures are not boxed. Only the service overrides
    /// it; a mock leaves it, and is called through the trait.
    #[doc(hidden)]
    fn as_service(&self) -> Option<&IdempotencyService> {
        None
    }
}

/// The idempotency service. Cheap to clone: clones share the store and the in-process
/// coalescing of calls.
#[derive(Clone)]
pub struct IdempotencyService {
    inner: Arc<Inner>,
}

struct Inner {
    store: Stores,
    settings: Settings,
    flights: Arc<Flights>,
}

/// The service's store, and the same store by its type when the service knows it: every
/// call claims and every first call completes, and through `dyn Store` each of those boxes
/// a future of several hundred bytes, more than glibc's allocator serves cheaply under
/// concurrent calls. Every other method goes through `dyn Store`.
struct Stores {
    any: Arc<dyn Store>,
    #[cfg(feature = "redis")]
    redis: Option<crate::store::redis::RedisStore>,
}

impl Stores {
    fn new<S: Store>(store: S) -> Stores {
        Stores {
            #[cfg(feature = "redis")]
            redis: (&store as &dyn std::any::Any)
                .downcast_ref::<crate::store::redis::RedisStore>()
                .cloned(),
            any: Arc::new(store),
        }
    }

    /// The store's claim. Hands back the store's own future rather than being an `async fn`:
    /// a layer of its own would add its copy of `claim` to every call's future.
    #[cfg(feature = "redis")]
    fn claim<'a>(
        &'a self,
        claim: Claim<'a>,
    ) -> impl Future<Output = Result<ClaimReply, StoreError>> + Send + 'a {
        use futures_util::future::Either;
        match &self.redis {
            Some(redis) => Either::Left(redis.claim_unboxed(claim)),
            None => Either::Right(self.any.claim(claim)),
        }
    }

    /// The store's claim.
    #[cfg(not(feature = "redis"))]
    fn claim<'a>(
        &'a self,
        claim: Claim<'a>,
    ) -> impl Future<Output = Result<ClaimReply, StoreError>> + Send + 'a {
        self.any.claim(claim)
    }

    async fn complete(
        &self,
        owner: &Owner<'_>,
        finish: &Finish,
        ttl: Duration,
    ) -> Result<LeaseReply, StoreError> {
        #[cfg(feature = "redis")]
        if let Some(redis) = &self.redis {
            return redis.complete_unboxed(owner, finish, ttl).await;
        }
        self.any.complete(owner, finish, ttl).await
    }
}

impl std::fmt::Debug for IdempotencyService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyService")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

/// Builds an [`IdempotencyService`], checking its settings.
#[derive(Debug, Clone)]
pub struct ServiceBuilder<S> {
    store: S,
    settings: Settings,
}

impl<S: Store> ServiceBuilder<S> {
    /// Sets all settings at once.
    pub fn settings(mut self, settings: Settings) -> Self {
        self.settings = settings;
        self
    }

    /// Prefix of every store key.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.settings.key_prefix = prefix.into();
        self
    }

    /// How long completed records are kept.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.settings.ttl = ttl;
        self
    }

    /// How long failed records are kept under the *record* policy.
    pub fn failure_ttl(mut self, ttl: Duration) -> Self {
        self.settings.failure_ttl = ttl;
        self
    }

    /// The lease; at least [`MIN_LOCK_TIMEOUT`](crate::MIN_LOCK_TIMEOUT).
    pub fn lock_timeout(mut self, lease: Duration) -> Self {
        self.settings.lock_timeout = lease;
        self
    }

    /// The wait budget.
    pub fn wait_timeout(mut self, wait: Duration) -> Self {
        self.settings.wait_timeout = wait;
        self
    }

    /// Whether fingerprints are compared.
    pub fn validate_fingerprint(mut self, validate: bool) -> Self {
        self.settings.validate_fingerprint = validate;
        self
    }

    /// What a store failure does.
    pub fn error_policy(mut self, policy: ErrorPolicy) -> Self {
        self.settings.error_policy = policy;
        self
    }

    /// What an operation's failure does to its key.
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.settings.failure_policy = policy;
        self
    }

    /// Longest key in bytes.
    pub fn max_key_len(mut self, len: usize) -> Self {
        self.settings.max_key_len = len;
        self
    }

    /// Largest response stored for replay, body plus header names and values; see
    /// [`Settings::max_response_bytes`].
    pub fn max_response_bytes(mut self, bytes: usize) -> Self {
        self.settings.max_response_bytes = bytes;
        self
    }

    /// How many times a completion is tried when the store fails.
    pub fn complete_attempts(mut self, attempts: u32) -> Self {
        self.settings.complete_attempts = attempts;
        self
    }

    /// Checks the settings and builds the service.
    pub fn build(self) -> Result<IdempotencyService, ConfigError> {
        self.settings.validate()?;
        Ok(IdempotencyService {
            inner: Arc::new(Inner {
                store: Stores::new(self.store),
                settings: self.settings,
                flights: Arc::default(),
            }),
        })
    }
}

impl IdempotencyService {
    /// A builder over `store`, with the default settings.
    pub fn builder<S: Store>(store: S) -> ServiceBuilder<S> {
        ServiceBuilder {
            store,
            settings: Settings::default(),
        }
    }

    /// A service over a new [`MemoryStore`] with the default settings. It dedupes within
    /// this process only.
    pub fn in_memory() -> Self {
        IdempotencyService::builder(MemoryStore::new())
            .build()
            .expect("default settings are valid")
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// The store.
    pub fn store(&self) -> &dyn Store {
        &*self.inner.store.any
    }

    /// This process's flights, shared by the service's clones.
    pub(crate) fn flights(&self) -> &Arc<Flights> {
        &self.inner.flights
    }

    /// Runs `operation` while renewing `lease`; see [`keep_alive`].
    pub async fn keep_alive<F: Future>(&self, lease: &Lease, operation: F) -> F::Output {
        keep_alive(self, lease, operation).await
    }

    #[allow(clippy::manual_async_fn)] // see "Futures" in the module docs
    fn claim_once<'a>(
        &'a self,
        key: &'a Key,
        store_key: &'a str,
        fingerprint: &'a Fingerprint,
        token: &'a Token,
        options: &'a Resolved,
    ) -> impl Future<Output = Result<ClaimReply, Error>> + Send + 'a {
        async move {
            let claim = Claim {
                key: store_key,
                fingerprint,
                validate_fingerprint: options.validate_fingerprint,
                token,
                lease: options.lock_timeout,
            };
            let mut pause = CLAIM_RETRY_PAUSE;
            let mut attempt = 1;
            loop {
                // The reply is taken apart before the pause: a match that held it across the
                // pause would keep its room in every call's future.
                let source = match self.inner.store.claim(claim).await {
                    Ok(reply) => return Ok(reply),
                    Err(StoreError::Connection(source)) if attempt < CLAIM_ATTEMPTS => source,
                    Err(source) => return Err(store_error(key, source)),
                };
                tracing::warn!(
                    key = %key, error = %source, attempt,
                    "claim failed on the connection; sending it again with the same token"
                );
                drop(source);
                // Boxed: this rare path would otherwise grow every call's future.
                Box::pin(tokio::time::sleep(pause)).await;
                pause *= 4;
                attempt += 1;
            }
        }
    }

    /// `options` over the settings, checked.
    pub(crate) fn resolved(&self, key: &Key, options: &CallOptions) -> Result<Resolved, Error> {
        options
            .resolve(&self.inner.settings)
            .map_err(|source| Error::Options {
                key: for_message(key),
                source,
            })
    }

    /// [`check_and_lock`](Idempotency::check_and_lock) once its options are resolved and its
    /// key checked: joins this process's flight for the key, or leads it, within the wait
    /// budget that ends at `deadline`.
    #[allow(clippy::manual_async_fn)] // see "Futures" in the module docs
    pub(crate) fn call<'a>(
        &'a self,
        key: &'a Key,
        store_key: &'a str,
        fingerprint: &'a Fingerprint,
        options: Resolved,
        deadline: Instant,
    ) -> impl Future<Output = Result<CheckOutcome, Error>> + Send + 'a {
        async move {
            // A call that will not wait asks the store, which knows how long the owner's lease
            // still runs, instead of joining this process's flight.
            let flight = match options.wait {
                false => None,
                true => loop {
                    let entered = self.inner.flights.enter(
                        store_key,
                        fingerprint,
                        options.validate_fingerprint,
                    );
                    match entered {
                        Some(Role::Leader(flight)) => break Some(flight),
                        Some(Role::Joiner(flight)) => {
                            match self.join(key, flight, &options, deadline).await? {
                                Joined::Outcome(outcome) => return Ok(outcome),
                                Joined::Vacated => continue,
                                Joined::LeaseLapsed => break None,
                            }
                        }
                        None => break None,
                    }
                },
            };
            // One await of the leader's side, so that every call's future holds it once.
            self.lead(key, store_key, fingerprint, options, flight, deadline)
                .await
        }
    }

    /// The leader's side: claim, and while another process's owner works, wait and claim
    /// again until the key is ours, finished, or the wait budget is spent.
    ///
    /// Not an `async fn` of its own: it hands back [`lead_from`](Self::lead_from)'s future,
    /// which keeps every call's future one layer (and its copies of the arguments) smaller.
    fn lead<'a>(
        &'a self,
        key: &'a Key,
        store_key: &'a str,
        fingerprint: &'a Fingerprint,
        options: Resolved,
        flight: Option<FlightGuard>,
        deadline: Instant,
    ) -> impl Future<Output = Result<CheckOutcome, Error>> + Send + 'a {
        let token = Token::generate();
        let start = Start { token, first: None };
        self.lead_from(
            key,
            store_key,
            fingerprint,
            options,
            flight,
            deadline,
            start,
        )
    }

    /// [`lead`](Self::lead) with the token made, and maybe the first claim's reply known
    /// (from a batch).
    #[allow(clippy::too_many_arguments)]
    #[allow(clippy::manual_async_fn)] // see "Futures" in the module docs
    pub(crate) fn lead_from<'a>(
        &'a self,
        key: &'a Key,
        store_key: &'a str,
        fingerprint: &'a Fingerprint,
        options: Resolved,
        flight: Option<FlightGuard>,
        deadline: Instant,
        mut start: Start,
    ) -> impl Future<Output = Result<CheckOutcome, Error>> + Send + 'a {
        async move {
            let notifies = self.inner.store.any.notifies();
            let mut pause = FIRST_RECHECK;
            loop {
                let claimed = match start.first.take() {
                    Some(first) => *first,
                    None => {
                        self.claim_once(key, store_key, fingerprint, &start.token, &options)
                            .await
                    }
                };
                let reply = match claimed {
                    Ok(reply) => reply,
                    Err(error) => return self.on_store_error(error),
                };
                let remaining = match reply {
                    ClaimReply::Acquired {
                        fence,
                        lease_until,
                        takeover,
                    } => {
                        if takeover {
                            tracing::info!(key = %key, fence, "took over a lapsed lease");
                        } else {
                            tracing::debug!(key = %key, fence, "lock acquired");
                        }
                        let grant = Grant {
                            key: key.clone(),
                            store_key: store_key.to_owned(),
                            token: start.token,
                            fingerprint: *fingerprint,
                            fence,
                            takeover,
                            lease_until,
                        };
                        return Ok(CheckOutcome::Acquired(Lease::new(grant, options, flight)));
                    }
                    ClaimReply::Mismatch { stored } => {
                        tracing::debug!(key = %key, "fingerprint mismatch");
                        if let Some(flight) = flight {
                            flight.end(FlightEnd::Mismatch(stored));
                        }
                        return Ok(CheckOutcome::Mismatch { stored });
                    }
                    ClaimReply::Finished(record) => {
                        tracing::debug!(key = %key, status = record.status().as_str(), "replay");
                        let record = match flight {
                            Some(flight) => flight.end_finished(record),
                            None => record,
                        };
                        return replay(key, record);
                    }
                    // Taken apart here, and waited on below: a reply held across the wait
                    // would keep its room in every call's future.
                    ClaimReply::Busy { remaining } => remaining,
                };
                if !options.wait {
                    return Ok(CheckOutcome::InProgress {
                        retry_after: remaining,
                    });
                }
                let now = Instant::now();
                if now >= deadline {
                    return Err(Error::WaitTimeout {
                        key: for_message(key),
                        waited: options.wait_timeout,
                    });
                }
                // Wake at the end of the owner's lease at the latest, to take it over. A store
                // that notifies wakes this caller on the owner's outcome, so it is not asked
                // again after growing pauses.
                let until_lease_end = remaining.max(Duration::from_millis(1));
                let nap = match notifies {
                    true => until_lease_end.min(deadline - now),
                    false => pause.min(until_lease_end).min(deadline - now),
                };
                if let Err(source) = self.inner.store.any.wait_for_change(store_key, nap).await {
                    return self.on_store_error(store_error(key, source));
                }
                pause = (pause * 2).min(MAX_RECHECK);
            }
        }
    }

    pub(crate) fn on_store_error(&self, error: Error) -> Result<CheckOutcome, Error> {
        tracing::warn!(key = %error.key(), %error, "store error");
        match self.inner.settings.error_policy {
            ErrorPolicy::FailClosed => Err(error),
            ErrorPolicy::FailOpen => {
                tracing::warn!(key = %error.key(), "store failed; running unprotected (fail-open)");
                Ok(CheckOutcome::Bypassed { error })
            }
        }
    }

    /// A joiner's side: wait for the leader's flight to end, or for its lease to run out.
    async fn join(
        &self,
        key: &Key,
        flight: Joining,
        options: &Resolved,
        deadline: Instant,
    ) -> Result<Joined, Error> {
        loop {
            let changed = flight.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wake = match flight.state() {
                FlightState::Ended(FlightEnd::Finished(record)) => {
                    return replay(key, Arc::unwrap_or_clone(record)).map(Joined::Outcome)
                }
                FlightState::Ended(FlightEnd::Mismatch(stored)) => {
                    return Ok(Joined::Outcome(CheckOutcome::Mismatch { stored }))
                }
                FlightState::Ended(FlightEnd::Vacated) => return Ok(Joined::Vacated),
                FlightState::Running { lease_end } if Instant::now() >= lease_end => {
                    return Ok(Joined::LeaseLapsed)
                }
                FlightState::Running { lease_end } => lease_end.min(deadline),
                FlightState::Claiming => deadline,
            };
            if tokio::time::timeout_at(wake, changed).await.is_err() && Instant::now() >= deadline {
                return Err(Error::WaitTimeout {
                    key: for_message(key),
                    waited: options.wait_timeout,
                });
            }
            // Changed, or the leader's lease end came first: the next turn looks again.
        }
    }

    async fn finish(&self, lease: &Lease, finish: Finish, ttl: Duration) -> Result<(), Error> {
        let store = &self.inner.store;
        let attempts = self.inner.settings.complete_attempts;
        let mut pause = Duration::from_millis(10);
        let mut attempt = 1;
        let reply = loop {
            match store.complete(&lease.owner(), &finish, ttl).await {
                Ok(reply) => break reply,
                Err(source) if attempt >= attempts => {
                    tracing::error!(
                        key = %lease.key(), %source, attempts,
                        "could not store the outcome; the claim will lapse at the end of its lease"
                    );
                    lease.end_flight(FlightEnd::Vacated);
                    return Err(store_error(lease.key(), source));
                }
                Err(source) => {
                    tracing::warn!(key = %lease.key(), %source, attempt, "storing the outcome failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause *= 4;
                    attempt += 1;
                }
            }
        };
        let at = match reply {
            LeaseReply::Applied { at } => at,
            LeaseReply::Lost => return Err(self.lost(lease)),
        };
        // The record is made only for this process's joiners, when there are any.
        lease.end_flight_with(|| {
            let record = Record {
                fingerprint: *lease.fingerprint(),
                token: lease.token().clone(),
                fence: lease.fence(),
                started_at: lease.started_at(),
                state: match finish {
                    Finish::Completed(response) => RecordState::Completed {
                        response,
                        completed_at: at,
                    },
                    Finish::Failed(error) => RecordState::Failed {
                        error,
                        completed_at: at,
                    },
                    Finish::NotReplayable(reason) => RecordState::NotReplayable {
                        reason,
                        completed_at: at,
                    },
                },
            };
            FlightEnd::Finished(Arc::new(record))
        });
        Ok(())
    }

    fn lost(&self, lease: &Lease) -> Error {
        tracing::warn!(key = %lease.key(), fence = lease.fence(), "lease lost; outcome not stored");
        lease.mark_lost();
        lease.end_flight(FlightEnd::Vacated);
        Error::LeaseLost {
            key: for_message(lease.key()),
        }
    }
}

impl IdempotencyService {
    /// [`Idempotency::check_and_lock`], without the allocation that the trait's boxed
    /// future costs: a call on the service itself (not through `dyn Idempotency` or a
    /// generic) takes this one.
    #[allow(clippy::manual_async_fn)] // see "Futures" in the module docs
    pub fn check_and_lock<'a>(
        &'a self,
        key: &'a Key,
        fingerprint: &'a Fingerprint,
        options: &'a CallOptions,
    ) -> impl Future<Output = Result<CheckOutcome, Error>> + Send + 'a {
        async move {
            let options = self.resolved(key, options)?;
            let store_key = self.checked_store_key(key)?;
            let deadline = deadline_of(&options);
            self.call(key, &store_key, fingerprint, options, deadline)
                .await
        }
    }

    /// [`Idempotency::complete`], without the allocation of the trait's boxed future, like
    /// [`check_and_lock`](Self::check_and_lock).
    pub async fn complete(&self, lease: &Lease, response: Response) -> Result<(), Error> {
        let limit = self.inner.settings.max_response_bytes;
        let size = response.encoded_len();
        if size > limit {
            let reason = format!("result of {size} bytes exceeds the {limit}-byte cap");
            self.finish(lease, Finish::NotReplayable(reason), lease.ttl())
                .await?;
            return Err(Error::ResultTooLarge {
                key: for_message(lease.key()),
                size,
                limit,
            });
        }
        self.finish(lease, Finish::Completed(response), lease.ttl())
            .await
    }
}

#[async_trait]
impl Idempotency for IdempotencyService {
    async fn check_and_lock(
        &self,
        key: &Key,
        fingerprint: &Fingerprint,
        options: &CallOptions,
    ) -> Result<CheckOutcome, Error> {
        IdempotencyService::check_and_lock(self, key, fingerprint, options).await
    }

    async fn complete(&self, lease: &Lease, response: Response) -> Result<(), Error> {
        IdempotencyService::complete(self, lease, response).await
    }

    fn as_service(&self) -> Option<&IdempotencyService> {
        Some(self)
    }

    async fn complete_not_replayable(&self, lease: &Lease, reason: String) -> Result<(), Error> {
        self.finish(lease, Finish::NotReplayable(reason), lease.ttl())
            .await
    }

    async fn fail(&self, lease: &Lease, error: Response) -> Result<(), Error> {
        match lease.failure_policy() {
            FailurePolicy::Release => self.release(lease).await,
            FailurePolicy::Record => {
                let ttl = lease.options().failure_ttl;
                self.finish(lease, Finish::Failed(error), ttl).await
            }
        }
    }

    async fn release(&self, lease: &Lease) -> Result<(), Error> {
        let reply = self
            .inner
            .store
            .any
            .release(lease.store_key(), lease.token())
            .await;
        match reply {
            Ok(LeaseReply::Applied { .. }) => {
                tracing::debug!(key = %lease.key(), "lock released");
                lease.end_flight(FlightEnd::Vacated);
                Ok(())
            }
            Ok(LeaseReply::Lost) => Err(self.lost(lease)),
            Err(source) => {
                lease.end_flight(FlightEnd::Vacated);
                Err(store_error(lease.key(), source))
            }
        }
    }

    async fn renew(&self, lease: &Lease) -> Result<(), Error> {
        let reply = self
            .inner
            .store
            .any
            .renew(lease.store_key(), lease.token(), lease.lock_timeout())
            .await
            .map_err(|source| store_error(lease.key(), source))?;
        match reply {
            LeaseReply::Applied { at } => {
                lease.renewed(at);
                Ok(())
            }
            LeaseReply::Lost => Err(self.lost(lease)),
        }
    }

    async fn get(&self, key: &Key) -> Result<Option<Record>, Error> {
        let store_key = self.checked_store_key(key)?;
        self.inner
            .store
            .any
            .get(&store_key)
            .await
            .map_err(|source| store_error(key, source))
    }

    async fn delete(&self, key: &Key, force: bool) -> Result<DeleteReply, Error> {
        let store_key = self.checked_store_key(key)?;
        self.inner
            .store
            .any
            .delete(&store_key, force)
            .await
            .map_err(|source| store_error(key, source))
    }
}

impl IdempotencyService {
    /// The store key of `key`, once `key` follows the key rules.
    pub(crate) fn checked_store_key(&self, key: &Key) -> Result<String, Error> {
        let settings = &self.inner.settings;
        key.validate(settings.max_key_len)
            .map_err(|rule| Error::InvalidKey {
                key: for_message(key),
                rule,
            })?;
        Ok(key.store_key(&settings.key_prefix))
    }
}

/// Runs `operation` while renewing `lease` every third of its lock timeout, so an
/// operation longer than the lease is not taken over while this future is alive. Each
/// renewal has two thirds of the lease to reach the store; services refuse leases shorter
/// than [`MIN_LOCK_TIMEOUT`](crate::MIN_LOCK_TIMEOUT), which would leave it no time.
///
/// When a renewal finds the lease lost, the operation is left to finish (stopping it
/// halfway could leave a side effect half done); the lease is marked lost and a warning is
/// logged. The completion then fails with [`Error::LeaseLost`] if another caller took the
/// key over meanwhile, and stores the result if nobody did (the record is still this
/// owner's). A store error during
/// renewal is retried at the next tick. Dropping the returned future stops renewal.
pub async fn keep_alive<S, F>(service: &S, lease: &Lease, operation: F) -> F::Output
where
    S: Idempotency + ?Sized,
    F: Future,
{
    let period = renewal_period(lease.lock_timeout());
    let renewals = async {
        let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match service.renew(lease).await {
                Err(Error::LeaseLost { .. }) => break,
                Err(error) => {
                    tracing::warn!(key = %lease.key(), %error, "lease renewal failed; retrying")
                }
                Ok(()) => {}
            }
        }
        std::future::pending::<()>().await
    };
    tokio::pin!(operation);
    tokio::pin!(renewals);
    tokio::select! {
        biased;
        output = &mut operation => output,
        () = &mut renewals => unreachable!("renewals never end"),
    }
}

/// When a call with `options` stops waiting for another owner. The budget is unchecked (and
/// unused) when the call does not wait.
pub(crate) fn deadline_of(options: &Resolved) -> Instant {
    match options.wait {
        true => Instant::now() + options.wait_timeout,
        false => Instant::now(),
    }
}

/// How often a lease of `lock_timeout` is renewed: every third of it, so a renewal that
/// misses (a store error, a slow round trip) is tried again before the lease ends.
pub(crate) fn renewal_period(lock_timeout: Duration) -> Duration {
    lock_timeout / 3
}

fn replay(key: &Key, record: Record) -> Result<CheckOutcome, Error> {
    match record.state {
        RecordState::Completed { .. } => Ok(CheckOutcome::Completed(record)),
        RecordState::Failed { .. } => Ok(CheckOutcome::Failed(record)),
        RecordState::NotReplayable { .. } => Ok(CheckOutcome::NotReplayable(record)),
        RecordState::Processing { .. } => Err(store_error(
            key,
            StoreError::Corrupt("the store answered a processing record as finished".into()),
        )),
    }
}

pub(crate) fn store_error(key: &Key, source: StoreError) -> Error {
    Error::Store {
        key: for_message(key),
        source,
    }
}
