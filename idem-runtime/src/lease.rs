//! Leases: an owner's right to complete a key.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::config::{FailurePolicy, Resolved};
use crate::fingerprint::Fingerprint;
use crate::flight::{FlightEnd, FlightGuard};
use crate::key::Key;
use crate::record::{Millis, Token};

/// The right to run an operation under a key and to store its outcome.
///
/// A lease is fenced: [`complete`](crate::IdempotencyService::complete),
/// [`fail`](crate::IdempotencyService::fail) and
/// [`renew`](crate::IdempotencyService::renew) apply only while the store still holds this
/// lease's token, so an owner whose lease was taken over changes nothing. Dropping a lease
/// without finishing it leaves the claim to lapse when the lease ends (the operation may have
/// had its effect, so the key is not freed at once) and wakes this process's waiters.
#[derive(Debug)]
pub struct Lease {
    key: Key,
    store_key: String,
    token: Token,
    fingerprint: Fingerprint,
    fence: u64,
    takeover: bool,
    lease_until: AtomicU64,
    lost: AtomicBool,
    pub(crate) options: Resolved,
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
        Lease {
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
        }
    }

    /// A lease that no store holds, for mocks of [`Idempotency`](crate::Idempotency) in
    /// tests: a real service answers [`Error::LeaseLost`](crate::Error::LeaseLost) for it.
    pub fn detached(key: Key, fingerprint: Fingerprint, lock_timeout: Duration) -> Self {
        let options = crate::CallOptions::new()
            .lock_timeout(lock_timeout)
            .resolve(&crate::Settings::default())
            .unwrap_or_else(|_| {
                crate::CallOptions::new()
                    .resolve(&crate::Settings::default())
                    .expect("default settings are valid")
            });
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
        &self.key
    }

    /// The full key in the store.
    pub fn store_key(&self) -> &str {
        &self.store_key
    }

    /// The owner token.
    pub fn token(&self) -> &Token {
        &self.token
    }

    /// The fingerprint the key was claimed with.
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    /// The fencing number: larger for every later owner of this key, so a downstream system
    /// can refuse writes from an owner that was taken over. It is the store's clock in
    /// microseconds at the claim, raised above the previous owner's on a takeover.
    pub fn fence(&self) -> u64 {
        self.fence
    }

    /// Whether this lease took over a lapsed lease of another owner (which may have had
    /// part of its effect).
    pub fn is_takeover(&self) -> bool {
        self.takeover
    }

    /// The end of the lease on the store's clock, in epoch milliseconds.
    pub fn lease_until(&self) -> Millis {
        self.lease_until.load(Ordering::Acquire)
    }

    /// The lease's length.
    pub fn lock_timeout(&self) -> Duration {
        self.options.lock_timeout
    }

    /// The result TTL this call asked for.
    pub fn ttl(&self) -> Duration {
        self.options.ttl
    }

    /// What [`fail`](crate::IdempotencyService::fail) does with this lease.
    pub fn failure_policy(&self) -> FailurePolicy {
        self.options.failure_policy
    }

    /// Whether a renewal or completion found the lease lost.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    pub(crate) fn renewed(&self, until: Millis) {
        self.lease_until.store(until, Ordering::Release);
    }

    pub(crate) fn mark_lost(&self) {
        self.lost.store(true, Ordering::Release);
    }

    /// Ends this process's flight for the key (waking its waiters). Once only.
    pub(crate) fn end_flight(&self, end: FlightEnd) {
        let guard = self.flight.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(guard) = guard {
            guard.end(end);
        }
    }

    /// Whether the flight is still open, i.e. the lease was neither finished nor released.
    pub(crate) fn is_open(&self) -> bool {
        self.flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.is_open() {
            tracing::warn!(
                key = %self.key,
                "lease dropped before the operation finished; the key is reclaimable when the lease ends"
            );
        }
        // The flight guard's own drop wakes this process's waiters.
    }
}
