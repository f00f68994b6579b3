//! Leases: an owner's right to complete a key.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{FailurePolicy, Resolved, Settings, MAX_DURATION, MIN_LOCK_TIMEOUT};
use crate::fingerprint::Fingerprint;
use crate::flight::{FlightEnd, FlightGuard};
use crate::key::Key;
use crate::record::{Millis, Token};
use crate::store::Owner;

/// The right to run an operation under a key and to store its outcome.
///
/// A lease is fenced: [`complete`](crate::Idempotency::complete),
/// [`fail`](crate::Idempotency::fail) and
/// [`renew`](crate::Idempotency::renew) apply only while the store still holds this
/// lease's token, so an owner whose lease was taken over changes nothing. Dropping a lease
/// without finishing it leaves the claim to lapse when the lease ends (the operation may have
/// had its effect, so the key is not freed at once) and wakes this process's waiters.
#[derive(Debug)]
pub struct Lease(Box<Held>);

/// What a lease holds; boxed, so that [`CheckOutcome`](crate::CheckOutcome), which every
/// replay moves through several layers, is no larger than a record.
#[derive(Debug)]
struct Held {
    key: Key,
    store_key: String,
    token: Token,
    fingerprint: Fingerprint,
    fence: u64,
    takeover: bool,
    started_at: Millis,
    lease_until: AtomicU64,
    lost: AtomicBool,
    options: Resolved,
    flight: Mutex<Option<FlightGuard>>,
}

impl std::fmt::Debug for FlightGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FlightGuard")
    }
}

/// What a lease is made of, as a store reported it.
pub(crate) struct Grant {
    pub key: Key,
    pub store_key: String,
    pub token: Token,
    pub fingerprint: Fingerprint,
    pub fence: u64,
    pub takeover: bool,
    pub lease_until: Millis,
}

impl Lease {
    pub(crate) fn new(grant: Grant, options: Resolved, flight: Option<FlightGuard>) -> Self {
        if let Some(flight) = &flight {
            flight.running(Instant::now() + options.lock_timeout);
        }
        let lease_ms = options.lock_timeout.as_millis() as Millis;
        Lease(Box::new(Held {
            started_at: grant.lease_until.saturating_sub(lease_ms),
            key: grant.key,
            store_key: grant.store_key,
            token: grant.token,
            fingerprint: grant.fingerprint,
            fence: grant.fence,
            takeover: grant.takeover,
            lease_until: AtomicU64::new(grant.lease_until),
            lost: AtomicBool::new(false),
            options,
            flight: Mutex::new(flight),
        }))
    }

    /// A lease that no store holds, for mocks of [`Idempotency`](crate::Idempotency) in
    /// tests: a real service answers [`Error::LeaseLost`](crate::Error::LeaseLost) for it.
    ///
    /// `lock_timeout` is kept within what a service accepts ([`MIN_LOCK_TIMEOUT`] to
    /// [`MAX_DURATION`]); the other options are the default settings'.
    pub fn detached(key: Key, fingerprint: Fingerprint, lock_timeout: Duration) -> Self {
        let settings = Settings::default();
        let options = Resolved {
            ttl: settings.ttl,
            failure_ttl: settings.failure_ttl,
            lock_timeout: lock_timeout.clamp(MIN_LOCK_TIMEOUT, MAX_DURATION),
            wait_timeout: settings.wait_timeout,
            wait: true,
            validate_fingerprint: settings.validate_fingerprint,
            failure_policy: settings.failure_policy,
        };
        let grant = Grant {
            store_key: key.store_key("detached:"),
            key,
            token: Token::generate(),
            fingerprint,
            fence: 0,
            takeover: false,
            lease_until: 0,
        };
        Lease::new(grant, options, None)
    }

    /// The key.
    pub fn key(&self) -> &Key {
        &self.0.key
    }

    /// The full key in the store.
    pub fn store_key(&self) -> &str {
        &self.0.store_key
    }

    /// The owner token.
    pub fn token(&self) -> &Token {
        &self.0.token
    }

    /// The fingerprint the key was claimed with.
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.0.fingerprint
    }

    /// The fencing number: larger for every later owner of this key, so a downstream system
    /// can refuse writes from an owner that was taken over. It is a clock in microseconds at
    /// the claim, raised above the previous owner's on a takeover: the store's clock, except
    /// for a first claim on Redis, which takes the client's (see the Redis store's *Clocks*).
    pub fn fence(&self) -> u64 {
        self.0.fence
    }

    /// Whether this lease took over a lapsed lease of another owner (which may have had
    /// part of its effect).
    pub fn is_takeover(&self) -> bool {
        self.0.takeover
    }

    /// The end of the lease in epoch milliseconds: on the store's clock, or for a first
    /// claim on Redis the client's estimate of it (the server decides by the key's expiry).
    pub fn lease_until(&self) -> Millis {
        self.0.lease_until.load(Ordering::Acquire)
    }

    /// The lease's length.
    pub fn lock_timeout(&self) -> Duration {
        self.0.options.lock_timeout
    }

    /// The result TTL this call asked for.
    pub fn ttl(&self) -> Duration {
        self.0.options.ttl
    }

    /// The options the key was claimed with.
    pub(crate) fn options(&self) -> &Resolved {
        &self.0.options
    }

    /// What [`fail`](crate::Idempotency::fail) does with this lease.
    pub fn failure_policy(&self) -> FailurePolicy {
        self.0.options.failure_policy
    }

    /// This lease as the owner a [`Store`](crate::store::Store) finishes.
    pub fn owner(&self) -> Owner<'_> {
        Owner {
            key: &self.0.store_key,
            token: &self.0.token,
            fingerprint: &self.0.fingerprint,
            fence: self.0.fence,
            started_at: self.0.started_at,
            lease: self.0.options.lock_timeout,
            takeover: self.0.takeover,
        }
    }

    /// Whether a renewal or completion found the lease lost.
    pub fn is_lost(&self) -> bool {
        self.0.lost.load(Ordering::Acquire)
    }

    /// When the current owner claimed the key, on the store's clock.
    pub(crate) fn started_at(&self) -> Millis {
        self.0.started_at
    }

    /// Records a renewal up to `until`, and tells this process's waiters the lease runs on.
    pub(crate) fn renewed(&self, until: Millis) {
        self.0.lease_until.store(until, Ordering::Release);
        let flight = self.0.flight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(flight) = flight.as_ref() {
            flight.running(Instant::now() + self.0.options.lock_timeout);
        }
    }

    pub(crate) fn mark_lost(&self) {
        self.0.lost.store(true, Ordering::Release);
    }

    /// Ends this process's flight for the key (waking its waiters). Once only.
    pub(crate) fn end_flight(&self, end: FlightEnd) {
        let guard = self
            .0
            .flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(guard) = guard {
            guard.end(end);
        }
    }

    /// Ends this process's flight for the key; `end` is made only when a waiter is there
    /// to read it. Once only.
    pub(crate) fn end_flight_with(&self, end: impl FnOnce() -> FlightEnd) {
        let guard = self
            .0
            .flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(guard) = guard {
            guard.end_with(end);
        }
    }

    /// Whether the flight is still open, i.e. the lease was neither finished nor released.
    pub(crate) fn is_open(&self) -> bool {
        self.0
            .flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.is_open() {
            tracing::warn!(
                key = %self.0.key,
                "lease dropped before the operation finished; the key is reclaimable when the lease ends"
            );
        }
        // The flight guard's own drop wakes this process's waiters.
    }
}
