//! In-process coalescing: calls in one process for the same key share one claim.
//!
//! The first caller for a store key becomes the *leader* of a flight and talks to the store;
//! later callers with the same fingerprint *join* the flight and wait on a channel, touching
//! the store not at all. The leader publishes how the flight ended; if it ended without a
//! result (the key was released, or the leader gave up or was dropped), joiners start over.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::time::Instant;

use crate::fingerprint::Fingerprint;
use crate::record::Record;

/// The flights of one service.
#[derive(Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<String, Arc<Flight>>>,
}

pub(crate) struct Flight {
    pub fingerprint: Fingerprint,
    state: watch::Sender<FlightState>,
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
    Joiner(watch::Receiver<FlightState>),
}

impl Flights {
    /// Leads the flight for `key`, or joins it when one is under way with the same
    /// fingerprint. A caller with another fingerprint neither leads nor joins: it goes to
    /// the store on its own (`None`), which answers it with the stored fingerprint.
    pub fn enter(self: &Arc<Self>, key: &str, fingerprint: &Fingerprint) -> Option<Role> {
        let mut map = self.lock();
        if let Some(flight) = map.get(key) {
            if flight.fingerprint != *fingerprint {
                return None;
            }
            return Some(Role::Joiner(flight.state.subscribe()));
        }
        let flight = Arc::new(Flight {
            fingerprint: *fingerprint,
            state: watch::Sender::new(FlightState::Claiming),
        });
        map.insert(key.to_owned(), Arc::clone(&flight));
        Some(Role::Leader(FlightGuard {
            flights: Arc::clone(self),
            key: key.to_owned(),
            flight: Some(flight),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Flight>>> {
        // Every change under this lock is a single insert or remove.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The leader's hold on a flight. Dropping it without [`end`](FlightGuard::end) ends the
/// flight as vacated, so joiners never wait on a leader that is gone.
pub(crate) struct FlightGuard {
    flights: Arc<Flights>,
    key: String,
    flight: Option<Arc<Flight>>,
}

impl FlightGuard {
    /// Tells joiners the leader owns the key until about `lease_end`.
    pub fn running(&self, lease_end: Instant) {
        if let Some(flight) = &self.flight {
            flight
                .state
                .send_replace(FlightState::Running { lease_end });
        }
    }

    /// Ends the flight and wakes every joiner.
    pub fn end(mut self, end: FlightEnd) {
        self.finish(end);
    }

    fn finish(&mut self, end: FlightEnd) {
        let Some(flight) = self.flight.take() else {
            return;
        };
        {
            let mut map = self.flights.lock();
            if map.get(&self.key).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
                map.remove(&self.key);
            }
        }
        flight.state.send_replace(FlightState::Ended(end));
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        self.finish(FlightEnd::Vacated);
    }
}
