//! One thread per process that times out the coalescers' commands whose flush is held up.
//!
//! A caller of a coalesced command has no timer of its own (see `coalesce.rs`). Its flush
//! bounds the wait by the gathering's deadline, but only while some runtime polls the
//! flush; this thread needs no runtime. It wakes every [`TICK`] while anything it watches
//! is alive, lets each answer what is past its deadline, and ends when the last one is
//! dropped; the next one watched starts it again.

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

/// How often the watchdog looks, and so the most a held-up caller waits past its deadline.
/// Each look locks each coalescer's queues for a moment.
const TICK: Duration = Duration::from_millis(50);

/// What the watchdog looks after.
pub(super) trait Expire: Send + Sync {
    /// Answers with a timeout every command whose deadline is past at `now`.
    fn expire(&self, now: Instant);
}

struct Watched {
    items: Vec<Weak<dyn Expire>>,
    /// Whether the thread runs. Set and cleared under the lock, so an item watched while
    /// the thread ends starts a new one.
    running: bool,
}

static WATCHED: Mutex<Watched> = Mutex::new(Watched {
    items: Vec::new(),
    running: false,
});

fn watched() -> MutexGuard<'static, Watched> {
    WATCHED.lock().unwrap_or_else(|p| p.into_inner())
}

/// Calls `item.expire` every tick until `item` is dropped.
pub(super) fn watch(item: Arc<dyn Expire>) {
    let mut watched = watched();
    watched.items.push(Arc::downgrade(&item));
    if watched.running {
        return;
    }
    let started = std::thread::Builder::new()
        .name("idem-redis-watchdog".into())
        .spawn(run);
    match started {
        Ok(_) => watched.running = true,
        // Flushes still bound their own waits; only a flush that no runtime polls is
        // left without a bound. The next item watched tries again.
        Err(error) => tracing::warn!(
            %error,
            "could not start the watchdog thread; a Redis command whose flush no runtime \
             runs waits without a timeout"
        ),
    }
}

fn run() {
    loop {
        std::thread::sleep(TICK);
        let alive: Vec<Arc<dyn Expire>> = {
            let mut watched = watched();
            watched.items.retain(|item| item.strong_count() > 0);
            if watched.items.is_empty() {
                watched.running = false;
                return;
            }
            watched.items.iter().filter_map(Weak::upgrade).collect()
        };
        let now = Instant::now();
        for item in alive {
            item.expire(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[derive(Default)]
    struct Ticks(AtomicUsize);

    impl Expire for Ticks {
        fn expire(&self, _: Instant) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn count(ticks: &Ticks) -> usize {
        ticks.0.load(Ordering::Relaxed)
    }

    // The only test in this crate that starts the watchdog: no other item keeps it alive.
    #[test]
    fn the_thread_runs_while_something_is_watched_and_starts_again_for_the_next() {
        let first = Arc::new(Ticks::default());
        watch(first.clone());
        std::thread::sleep(TICK * 4);
        assert!(count(&first) >= 2, "{} ticks in four", count(&first));

        drop(first);
        std::thread::sleep(TICK * 4);
        assert!(!watched().running, "the thread outlived what it watched");
        assert!(watched().items.is_empty());

        let next = Arc::new(Ticks::default());
        watch(next.clone());
        std::thread::sleep(TICK * 4);
        assert!(count(&next) >= 2, "{} ticks in four", count(&next));
    }
}
