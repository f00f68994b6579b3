//! The in-memory store: one process, same transitions and expiries as the Redis store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Claim, ClaimReply, DeleteReply, Finish, LeaseReply, Owner, Store};
use crate::error::StoreError;
use crate::record::{Millis, Record, RecordState, Token};

/// Records in this process's memory.
///
/// It follows the same rules as the Redis store, step for step, so tests written against it
/// hold for Redis. Its clock is tokio's: under `#[tokio::test(start_paused = true)]` leases
/// and TTLs run on paused time, and `tokio::time::advance` moves them.
///
/// It does not dedupe across processes. Expired records read as absent at once, and leave
/// memory when they are next touched or in a sweep. Only claims sweep: a claim runs one
/// after writes as many as a quarter of the records the last sweep kept (at least a few
/// thousand), or a minute after the last sweep. So:
///
/// - Between sweeps the map grows by at most a quarter of what the last sweep kept.
/// - A sweep visits every record: under steady writes each write pays for about five
///   visits, and when writes are fewer, a minute pays for one sweep.
/// - An expired record stays in memory until the first claim a minute after the last
///   sweep; when no claims come, it stays.
/// - A sweep holds the store's lock while it runs: on a 2-core machine, about 14 ms for a
///   million records, and 47 ms when a quarter of a million of them had expired.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use idem_runtime::{IdempotencyService, MemoryStore};
/// let service = IdempotencyService::builder(MemoryStore::new()).build().unwrap();
/// # let _ = service; }
/// ```
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    records: Mutex<Records>,
    /// Epoch milliseconds when `origin` was taken.
    origin_ms: Millis,
    origin: Instant,
}

#[derive(Default)]
struct Records {
    entries: HashMap<String, Entry>,
    watchers: HashMap<String, Arc<Notify>>,
    writes_since_sweep: usize,
    /// How many records the last sweep kept, and when it ran.
    kept_by_sweep: usize,
    last_sweep: Millis,
    /// The last fencing number handed out, so fences grow even between claims made in the
    /// same microsecond (paused time) or after a record was deleted.
    last_fence: u64,
}

struct Entry {
    record: Record,
    expires_at: Millis,
}

/// The fewest writes between sweeps of expired records. The number of writes between
/// sweeps is also at least [`SWEEP_SHARE`] of the records the last sweep kept.
const SWEEP_EVERY: usize = 4096;

/// Sweeps wait for writes as many as the last sweep's kept records divided by this. With
/// a million live records and a stream of short-lived claims, a claim cost 4.2 µs when
/// sweeps came every [`SWEEP_EVERY`] writes, and 1.3 µs with this. Waiting for as many
/// writes as records cost 2.1 µs, but let the map double, and left a burst's expired
/// records in it until as many writes came again.
const SWEEP_SHARE: usize = 4;

/// The longest a sweep waits, in milliseconds, when writes are too few.
const SWEEP_PERIOD: Millis = 60_000;

impl Default for Inner {
    fn default() -> Self {
        let origin_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as Millis);
        Inner {
            records: Mutex::default(),
            origin_ms,
            origin: Instant::now(),
        }
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    /// Writes `record` under `key` as it is, expiring `ttl` from now, replacing what is
    /// there. For tests and migrations: it bypasses every rule of the protocol.
    pub fn insert(&self, key: &str, record: Record, ttl: Duration) {
        let now = self.now_ms();
        let mut records = self.lock();
        records.put(key, record, now + ms(ttl));
    }

    /// Milliseconds left before the record under `key` expires, like Redis `PTTL`: `None`
    /// when there is no record.
    pub fn pttl(&self, key: &str) -> Option<Duration> {
        let now = self.now_ms();
        let records = self.lock();
        let entry = records.entries.get(key).filter(|e| e.expires_at > now)?;
        Some(Duration::from_millis(entry.expires_at - now))
    }

    /// The keys of all live records.
    pub fn keys(&self) -> Vec<String> {
        let now = self.now_ms();
        let records = self.lock();
        let live = records.entries.iter().filter(|(_, e)| e.expires_at > now);
        live.map(|(k, _)| k.clone()).collect()
    }

    /// The store's clock: epoch milliseconds that advance with tokio's clock.
    pub fn now_ms(&self) -> Millis {
        self.inner.origin_ms + self.inner.origin.elapsed().as_millis() as Millis
    }

    /// The store's clock in microseconds, for fencing numbers.
    fn now_us(&self) -> u64 {
        self.inner.origin_ms * 1000 + self.inner.origin.elapsed().as_micros() as u64
    }

    fn lock(&self) -> MutexGuard<'_, Records> {
        // A panic while holding this lock leaves the map consistent (every change is one
        // insert or remove), so a poisoned lock is safe to keep using.
        self.inner
            .records
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Records {
    fn live(&mut self, key: &str, now: Millis) -> Option<&mut Record> {
        if self.entries.get(key).is_some_and(|e| e.expires_at <= now) {
            self.entries.remove(key);
        }
        self.entries.get_mut(key).map(|e| &mut e.record)
    }

    fn put(&mut self, key: &str, record: Record, expires_at: Millis) {
        self.entries
            .insert(key.to_owned(), Entry { record, expires_at });
        self.changed(key);
    }

    /// Whether `key` holds a processing record whose lease (or, without one, whose record)
    /// is still live: the only state worth waiting on.
    fn held(&mut self, key: &str, now: Millis) -> bool {
        let lease = match self.live(key, now) {
            Some(record) => match record.state {
                RecordState::Processing { lease_until } => lease_until,
                _ => return false,
            },
            None => return false,
        };
        lease.is_none_or(|until| until > now)
    }

    fn next_fence(&mut self, now_us: u64, previous: Option<u64>) -> u64 {
        let floor = previous.map_or(self.last_fence, |p| p.max(self.last_fence));
        self.last_fence = now_us.max(floor + 1);
        self.last_fence
    }

    fn remove(&mut self, key: &str) {
        self.entries.remove(key);
        self.changed(key);
    }

    fn sweep_due(&self, now: Millis) -> bool {
        let writes = (self.kept_by_sweep / SWEEP_SHARE).max(SWEEP_EVERY);
        self.writes_since_sweep >= writes || now >= self.last_sweep.saturating_add(SWEEP_PERIOD)
    }

    fn changed(&mut self, key: &str) {
        if let Some(watch) = self.watchers.get(key) {
            watch.notify_waiters();
        }
        self.writes_since_sweep += 1;
    }

    fn sweep(&mut self, now: Millis) {
        if self.sweep_due(now) {
            self.writes_since_sweep = 0;
            self.entries.retain(|_, e| e.expires_at > now);
            self.kept_by_sweep = self.entries.len();
            self.last_sweep = now;
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn claim(&self, claim: Claim<'_>) -> Result<ClaimReply, StoreError> {
        let now = self.now_ms();
        let now_us = self.now_us();
        let mut records = self.lock();
        records.sweep(now);
        let lease = ms(claim.lease);

        let takeover_of = match records.live(claim.key, now) {
            None => None,
            Some(record) => {
                if let RecordState::Processing { lease_until } = record.state {
                    if record.token == *claim.token {
                        return Ok(ClaimReply::Acquired {
                            fence: record.fence,
                            lease_until: lease_until.unwrap_or(now),
                            takeover: false,
                        });
                    }
                }
                if claim.validate_fingerprint && record.fingerprint != *claim.fingerprint {
                    return Ok(ClaimReply::Mismatch {
                        stored: record.fingerprint,
                    });
                }
                match record.state {
                    RecordState::Processing {
                        lease_until: Some(until),
                    } if until <= now => Some(record.fence),
                    RecordState::Processing { lease_until } => {
                        let expires_at = records.entries[claim.key].expires_at;
                        let end = lease_until.unwrap_or(expires_at);
                        return Ok(ClaimReply::Busy {
                            remaining: Duration::from_millis(end.saturating_sub(now)),
                        });
                    }
                    _ => return Ok(ClaimReply::Finished(record.clone())),
                }
            }
        };

        let fence = records.next_fence(now_us, takeover_of);
        let lease_until = now + lease;
        let record = Record {
            fingerprint: *claim.fingerprint,
            token: claim.token.clone(),
            fence,
            started_at: now,
            state: RecordState::Processing {
                lease_until: Some(lease_until),
            },
        };
        records.put(claim.key, record, lease_until + lease);
        Ok(ClaimReply::Acquired {
            fence,
            lease_until,
            takeover: takeover_of.is_some(),
        })
    }

    async fn complete(
        &self,
        owner: &Owner<'_>,
        finish: &Finish,
        ttl: Duration,
    ) -> Result<LeaseReply, StoreError> {
        let (key, now) = (owner.key, self.now_ms());
        let mut records = self.lock();
        let Some(record) = records.live(key, now).filter(|r| r.token == *owner.token) else {
            return Ok(LeaseReply::Lost);
        };
        if !matches!(record.state, RecordState::Processing { .. }) {
            // An earlier try of this completion landed and its reply was lost; any other
            // outcome under this token is a second finish, which must not pass for stored.
            return Ok(match finished_as(&record.state, finish) {
                true => LeaseReply::Applied { at: now },
                false => LeaseReply::Lost,
            });
        }
        let mut record = record.clone();
        record.state = match finish {
            Finish::Completed(response) => RecordState::Completed {
                response: response.clone(),
                completed_at: now,
            },
            Finish::Failed(error) => RecordState::Failed {
                error: error.clone(),
                completed_at: now,
            },
            Finish::NotReplayable(reason) => RecordState::NotReplayable {
                reason: reason.clone(),
                completed_at: now,
            },
        };
        records.put(key, record, now + ms(ttl));
        Ok(LeaseReply::Applied { at: now })
    }

    async fn renew(
        &self,
        key: &str,
        token: &Token,
        lease: Duration,
    ) -> Result<LeaseReply, StoreError> {
        let now = self.now_ms();
        let mut records = self.lock();
        let Some(record) = records.live(key, now).filter(|r| r.token == *token) else {
            return Ok(LeaseReply::Lost);
        };
        match record.state {
            RecordState::Processing { lease_until } if lease_until.is_none_or(|t| t > now) => {
                let until = now + ms(lease);
                record.state = RecordState::Processing {
                    lease_until: Some(until),
                };
                if let Some(entry) = records.entries.get_mut(key) {
                    entry.expires_at = until + ms(lease);
                }
                Ok(LeaseReply::Applied { at: until })
            }
            _ => Ok(LeaseReply::Lost),
        }
    }

    async fn release(&self, key: &str, token: &Token) -> Result<LeaseReply, StoreError> {
        let now = self.now_ms();
        let mut records = self.lock();
        let owned = records.live(key, now).is_some_and(|r| {
            r.token == *token && matches!(r.state, RecordState::Processing { .. })
        });
        if !owned {
            return Ok(LeaseReply::Lost);
        }
        records.remove(key);
        Ok(LeaseReply::Applied { at: now })
    }

    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        let now = self.now_ms();
        Ok(self.lock().live(key, now).cloned())
    }

    async fn delete(&self, key: &str, force: bool) -> Result<DeleteReply, StoreError> {
        let now = self.now_ms();
        let mut records = self.lock();
        let reply = match records.live(key, now) {
            None => return Ok(DeleteReply::NotFound),
            Some(r) if !force && matches!(r.state, RecordState::Processing { .. }) => {
                return Ok(DeleteReply::Processing)
            }
            Some(_) => DeleteReply::Deleted,
        };
        records.remove(key);
        Ok(reply)
    }

    fn notifies(&self) -> bool {
        true
    }

    async fn wait_for_change(&self, key: &str, timeout: Duration) -> Result<(), StoreError> {
        let watch = Watch::new(self, key);
        let notified = watch.notify.notified();
        tokio::pin!(notified);
        // Registered before the record is looked at, so a change made after the look wakes
        // this waiter, and a change made before it is seen by the look.
        notified.as_mut().enable();
        if !self.lock().held(key, self.now_ms()) {
            return Ok(());
        }
        let _ = tokio::time::timeout(timeout, notified).await;
        Ok(())
    }
}

/// A waiter's registration for changes of one key, removed with the last waiter (also when
/// the waiting future is dropped).
struct Watch<'a> {
    store: &'a MemoryStore,
    key: &'a str,
    notify: Arc<Notify>,
}

impl<'a> Watch<'a> {
    fn new(store: &'a MemoryStore, key: &'a str) -> Self {
        let mut records = store.lock();
        let notify = Arc::clone(records.watchers.entry(key.to_owned()).or_default());
        Watch { store, key, notify }
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        let mut records = self.store.lock();
        // The map holds one reference and this waiter another: the last waiter cleans up.
        if Arc::strong_count(&self.notify) <= 2 {
            records.watchers.remove(self.key);
        }
    }
}

/// Whether a finished record's state is what `finish` would have written.
fn finished_as(state: &RecordState, finish: &Finish) -> bool {
    match (state, finish) {
        (RecordState::Completed { response, .. }, Finish::Completed(given)) => response == given,
        (RecordState::Failed { error, .. }, Finish::Failed(given)) => error == given,
        (RecordState::NotReplayable { reason, .. }, Finish::NotReplayable(given)) => {
            reason == given
        }
        _ => false,
    }
}

fn ms(duration: Duration) -> Millis {
    duration.as_millis() as Millis
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::Fingerprint;
    use crate::record::{Body, Response};

    const FP: Fingerprint = Fingerprint::from_bytes([1; 32]);
    const LEASE: Duration = Duration::from_secs(1);

    fn record(fence: u64) -> Record {
        Record {
            fingerprint: FP,
            token: Token::from_stored("t"),
            fence,
            started_at: 0,
            state: RecordState::Processing { lease_until: None },
        }
    }

    /// Records holding `live` records that a sweep at `now` kept, and no writes since.
    fn swept_with(live: usize, now: Millis) -> Records {
        let mut records = Records::default();
        for n in 0..live {
            records.put(&format!("live-{n}"), record(n as u64), now + 3_600_000);
        }
        records.sweep(now);
        assert_eq!(
            (records.writes_since_sweep, records.kept_by_sweep),
            (0, live)
        );
        records
    }

    // With many live records, a sweep waits for writes as many as a quarter of those the
    // last one kept, and then drops the expired ones and only those.
    #[test]
    fn a_sweep_waits_for_a_share_of_the_records_the_last_one_kept() {
        let now = 1_000_000;
        let live = 8 * SWEEP_EVERY;
        let mut records = swept_with(live, now);
        let share = live / SWEEP_SHARE;
        for n in 0..share - 1 {
            records.put(&format!("gone-{n}"), record(n as u64), now);
            records.sweep(now + 1);
        }
        assert_eq!(records.entries.len(), live + share - 1, "swept too soon");
        records.put("gone-last", record(0), now);
        records.sweep(now + 1);
        assert_eq!(records.entries.len(), live, "the expired records were kept");

        // A small map still waits for a few thousand writes.
        let mut records = swept_with(10, now);
        for n in 0..SWEEP_EVERY - 1 {
            records.put(&format!("gone-{n}"), record(n as u64), now);
            records.sweep(now + 1);
        }
        assert_eq!(
            records.entries.len(),
            10 + SWEEP_EVERY - 1,
            "swept too soon"
        );
    }

    // After a burst, expired records go a minute after the last sweep even when few writes
    // follow, or none.
    #[test]
    fn a_sweep_comes_a_minute_after_the_last_however_few_the_writes() {
        let now = 1_000_000;
        let mut records = swept_with(3 * SWEEP_EVERY, now);
        for entry in records.entries.values_mut() {
            entry.expires_at = now + 1;
        }
        records.put("late", record(0), now + 3_600_000);
        records.sweep(now + SWEEP_PERIOD - 1);
        assert_eq!(records.entries.len(), 3 * SWEEP_EVERY + 1, "swept too soon");
        records.sweep(now + SWEEP_PERIOD);
        assert_eq!(records.entries.len(), 1, "the burst's records were kept");

        records.sweep(now + 3 * SWEEP_PERIOD);
        assert_eq!(
            records.last_sweep,
            now + 3 * SWEEP_PERIOD,
            "no sweep came a minute later without writes"
        );
    }

    async fn claim(store: &MemoryStore, token: &Token) -> ClaimReply {
        let claim = Claim {
            key: "k",
            fingerprint: &FP,
            validate_fingerprint: true,
            token,
            lease: LEASE,
        };
        store.claim(claim).await.expect("memory never fails")
    }

    /// The owner of the claim `claim` made for `token`.
    fn owner(token: &Token) -> Owner<'_> {
        Owner {
            key: "k",
            token,
            fingerprint: &FP,
            fence: 0,
            started_at: 0,
            lease: LEASE,
            takeover: false,
        }
    }

    fn done() -> Finish {
        Finish::Completed(Response::ok(Body::bytes("done")))
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_between_the_busy_reply_and_the_wait_is_not_missed() {
        let store = MemoryStore::new();
        let (token, waiter) = (Token::generate(), Token::generate());
        claim(&store, &token).await;
        assert!(matches!(
            claim(&store, &waiter).await,
            ClaimReply::Busy { .. }
        ));
        store
            .complete(&owner(&token), &done(), LEASE)
            .await
            .expect("complete");

        let started = Instant::now();
        store.wait_for_change("k", LEASE).await.expect("wait");

        assert_eq!(started.elapsed(), Duration::ZERO);
        assert!(store
            .inner
            .records
            .lock()
            .expect("lock")
            .watchers
            .is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_completion_wakes_a_waiter_before_its_timeout() {
        let store = MemoryStore::new();
        let token = Token::generate();
        claim(&store, &token).await;
        let waiter = tokio::spawn({
            let store = store.clone();
            async move {
                let started = Instant::now();
                store.wait_for_change("k", LEASE).await.expect("wait");
                started.elapsed()
            }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;

        store
            .complete(&owner(&token), &done(), LEASE)
            .await
            .expect("complete");

        assert_eq!(waiter.await.expect("waiter"), Duration::from_millis(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_waiter_leaves_no_registration_behind() {
        let store = MemoryStore::new();
        claim(&store, &Token::generate()).await;

        let wait = store.wait_for_change("k", LEASE);
        let _ = tokio::time::timeout(Duration::from_millis(5), wait).await;

        assert!(store
            .inner
            .records
            .lock()
            .expect("lock")
            .watchers
            .is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn fences_grow_for_claims_in_the_same_microsecond() {
        let store = MemoryStore::new();
        let mut fences = Vec::new();
        for _ in 0..3 {
            let token = Token::generate();
            let ClaimReply::Acquired { fence, .. } = claim(&store, &token).await else {
                panic!("expected to acquire");
            };
            store.release("k", &token).await.expect("release");
            fences.push(fence);
        }
        assert!(fences.windows(2).all(|w| w[0] < w[1]), "{fences:?}");
    }
}
