//! In-process coalescing: calls in one process for the same key share one claim.
//!
//! The first caller for a store key becomes the *leader* of a flight and talks to the store;
//! later callers that the store would answer alike (the same fingerprint and the same
//! fingerprint validation) *join* the flight and wait for it to change, touching the store
//! not at all. The leader publishes how the flight ended; if it ended
//! without a result (the key was released, or the leader gave up or was dropped), joiners
//! start over.
//!
//! Most flights have no joiner, so a flight is one map entry holding the leader's key, and
//! the part joiners wait on (a lock and a wake-up) is made by the first joiner; a flight
//! without joiners ends with one map removal and builds nothing for them.

use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};

use foldhash::fast::RandomState;
use hashbrown::HashTable;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::fingerprint::Fingerprint;
use crate::record::Record;

/// The flights of one service. Every call enters and leaves the map, so it hashes with
/// foldhash, several times cheaper than the standard SipHash and still seeded at random
/// per process, since its keys come from callers, and only once: the leader keeps the
/// hash, and finds its own entry again by it and by pointer. The map is cut into shards
/// by key, each with its lock, so that calls on different threads seldom take the same
/// lock (or pull the same memory from another core's cache).
pub(crate) struct Flights {
    shards: [Mutex<HashTable<Slot>>; SHARDS],
    /// Hashes keys, for their shard and within it alike.
    hasher: RandomState,
}

/// How many shards the flights are cut into.
const SHARDS: usize = 32;

impl Default for Flights {
    fn default() -> Self {
        Flights {
            shards: std::array::from_fn(|_| Mutex::default()),
            hasher: RandomState::default(),
        }
    }
}

impl Flights {
    fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The shard that holds the flight of the key with this hash.
    fn shard(&self, hash: u64) -> &Mutex<HashTable<Slot>> {
        // The shard comes from the hash's middle bits; the table uses the low and top ones.
        &self.shards[(hash >> 32) as usize % SHARDS]
    }
}

/// A flight in the map: what its leader asks the store, how far it got, and the joiners'
/// side once there is a joiner.
struct Slot {
    /// The leader's own [`Arc`], which is how the leader tells its flight from a later one
    /// for the same key.
    key: Arc<str>,
    fingerprint: Fingerprint,
    validate_fingerprint: bool,
    /// When the leader's lease ends, once it owns the key.
    lease_end: Option<Instant>,
    joiners: Option<Arc<Flight>>,
}

impl Slot {
    fn state(&self) -> FlightState {
        match self.lease_end {
            Some(lease_end) => FlightState::Running { lease_end },
            None => FlightState::Claiming,
        }
    }
}

/// What joiners share: where the flight is, and their wake-up.
pub(crate) struct Flight {
    state: Mutex<FlightState>,
    changed: Notify,
}

/// Where a flight is.
#[derive(Debug, Clone)]
pub(crate) enum FlightState {
    /// The leader is asking the store, or waiting for another process's owner.
    Claiming,
    /// The leader owns the key and runs the operation; its lease ends about `lease_end`
    /// (this process's clock, moved on every renewal). A joiner still waiting then goes to
    /// the store itself, which lets it take over a lease its own process let lapse.
    Running {
        /// When the leader's lease ends, as far as this process can tell.
        lease_end: Instant,
    },
    /// The flight is over.
    Ended(FlightEnd),
}

/// How a flight ended.
#[derive(Debug, Clone)]
pub(crate) enum FlightEnd {
    /// The operation finished with this record.
    Finished(Arc<Record>),
    /// The stored record has another fingerprint.
    Mismatch(Fingerprint),
    /// No result: the key was released, or the leader gave up or was dropped. Joiners
    /// start over.
    Vacated,
}

/// A caller's part in a flight.
pub(crate) enum Role {
    Leader(FlightGuard),
    Joiner(Joining),
}

/// A joiner's view of a flight.
pub(crate) struct Joining(Arc<Flight>);

impl Joining {
    /// A wake-up for the next change. Enable it before reading the [`state`](Self::state),
    /// so that a change between the two is not missed.
    pub fn changed(&self) -> Notified<'_> {
        self.0.changed.notified()
    }

    /// Where the flight is now.
    pub fn state(&self) -> FlightState {
        lock(&self.0.state).clone()
    }
}

impl Flights {
    /// Leads the flight for `key`, or joins it when one is under way whose leader the store
    /// answers as it would answer this caller: the same fingerprint, compared or not alike.
    /// Any other caller neither leads nor joins: it goes to the store on its own (`None`).
    /// A caller that compares fingerprints must never get the record a non-comparing leader
    /// replays (made with other arguments), nor one that does not compare the refusal a
    /// comparing leader got.
    pub fn enter(
        self: &Arc<Self>,
        key: &str,
        fingerprint: &Fingerprint,
        validate_fingerprint: bool,
    ) -> Option<Role> {
        let hash = self.hash(key);
        let mut table = lock(self.shard(hash));
        if let Some(slot) = table.find_mut(hash, |slot| *slot.key == *key) {
            let alike = slot.fingerprint == *fingerprint
                && slot.validate_fingerprint == validate_fingerprint;
            if !alike {
                return None;
            }
            let state = slot.state();
            let flight = slot.joiners.get_or_insert_with(|| {
                Arc::new(Flight {
                    state: Mutex::new(state),
                    changed: Notify::new(),
                })
            });
            return Some(Role::Joiner(Joining(Arc::clone(flight))));
        }
        let key: Arc<str> = Arc::from(key);
        let slot = Slot {
            key: Arc::clone(&key),
            fingerprint: *fingerprint,
            validate_fingerprint,
            lease_end: None,
            joiners: None,
        };
        table.insert_unique(hash, slot, |slot| self.hash(&slot.key));
        Some(Role::Leader(FlightGuard {
            flights: Arc::clone(self),
            key: Some(key),
            hash,
        }))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every change under these locks is a single insert, remove or assignment.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The leader's hold on a flight. Dropping it without [`end`](FlightGuard::end) ends the
/// flight as vacated, so joiners never wait on a leader that is gone.
pub(crate) struct FlightGuard {
    flights: Arc<Flights>,
    /// The flight's key, shared with the map; `None` once the flight ended.
    key: Option<Arc<str>>,
    hash: u64,
}

impl FlightGuard {
    /// Tells joiners the leader owns the key until about `lease_end`.
    pub fn running(&self, lease_end: Instant) {
        let Some(key) = &self.key else {
            return;
        };
        let joiners = {
            let mut table = lock(self.flights.shard(self.hash));
            let Some(slot) = table.find_mut(self.hash, |slot| Arc::ptr_eq(&slot.key, key)) else {
                return;
            };
            slot.lease_end = Some(lease_end);
            slot.joiners.clone()
        };
        if let Some(flight) = joiners {
            *lock(&flight.state) = FlightState::Running { lease_end };
            flight.changed.notify_waiters();
        }
    }

    /// Ends the flight and wakes every joiner.
    pub fn end(self, end: FlightEnd) {
        self.end_with(|| end);
    }

    /// Ends the flight; `end` is made only when a joiner is there to read it.
    pub fn end_with(mut self, end: impl FnOnce() -> FlightEnd) {
        self.finish(end);
    }

    /// Ends the flight with a finished `record`, shared with the joiners if there are any,
    /// and hands the record back.
    pub fn end_finished(self, record: Record) -> Record {
        let mut kept = None;
        let mut record = Some(record);
        self.end_with(|| {
            let shared = Arc::new(record.take().expect("made once"));
            kept = Some(Arc::clone(&shared));
            FlightEnd::Finished(shared)
        });
        match (record, kept) {
            (Some(record), _) => record,
            (None, Some(shared)) => Arc::unwrap_or_clone(shared),
            (None, None) => unreachable!("the record was either kept or shared"),
        }
    }

    fn finish(&mut self, end: impl FnOnce() -> FlightEnd) {
        let Some(key) = self.key.take() else {
            return;
        };
        let joiners = {
            let mut table = lock(self.flights.shard(self.hash));
            // The leader's own entry, not a later flight's for the same key.
            match table.find_entry(self.hash, |slot| Arc::ptr_eq(&slot.key, &key)) {
                Ok(entry) => entry.remove().0.joiners,
                Err(_) => None,
            }
        };
        // Out of the map, no caller can join any more: only the joiners already holding the
        // flight can read its end.
        if let Some(flight) = joiners {
            if Arc::strong_count(&flight) > 1 {
                *lock(&flight.state) = FlightState::Ended(end());
                flight.changed.notify_waiters();
            }
        }
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        self.finish(|| FlightEnd::Vacated);
    }
}
