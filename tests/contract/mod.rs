//! The store contract: what every [`Store`](idem::Store) must do, checked through the
//! service and through the store trait itself.
//!
//! The suite is generic over a [`Fixture`], which builds services over one shared store and
//! lets the suite plant and inspect raw records. A test file instantiates it with
//! [`store_contract_tests!`], which expands to one `#[tokio::test]` per case:
//!
//! ```ignore
//! mod contract;
//! contract::store_contract_tests!(MemoryFixture::new(), tokio::test(start_paused = true));
//! ```
//!
//! Every case is written to hold on real time too (a store whose clock is a server's): it
//! derives its timings from [`Fixture::lease`], keeps [`Fixture::clock_slack`] as a margin on
//! each side of a boundary, and asserts outcomes, never how long something took. Each case
//! uses its own key prefix, so cases may share one store and run in parallel.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use idem::store::{Claim, ClaimReply, Finish, LeaseReply, Owner};
use idem::{
    BatchItem, Body, CallOptions, CheckOutcome, DeleteReply, Error, FailurePolicy, Fingerprint,
    Idempotency, IdempotencyService, Key, KeyRule, Lease, Record, RecordState, RecordStatus,
    Response, Settings, Token,
};
use tokio::sync::Barrier;

/// What the remaining life of a stored key looks like, as Redis `PTTL` tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// There is no record under the key.
    Missing,
    /// The record never expires: always a bug.
    // The memory store cannot express it; a server's `PTTL -1` can.
    #[allow(dead_code)]
    Never,
    /// The record expires after this long.
    In(Duration),
}

/// A store under test, with the means to build services over it and to look at it raw.
pub trait Fixture: Sync {
    /// A new service over the fixture's store. Each call gives a separate service (its own
    /// in-process coalescing), as another process over the same store would have.
    fn service(&self, settings: Settings) -> IdempotencyService;

    /// The lease the suite gives its owners. Instant on paused time; a few hundred
    /// milliseconds on a real server, long enough for a few round trips.
    fn lease(&self) -> Duration;

    /// How far a timing may land from its target on this store: zero on paused time, the
    /// scheduling and round-trip jitter on a real server. The suite keeps this margin on
    /// each side of every lease or TTL boundary it tests.
    fn clock_slack(&self) -> Duration;

    /// Lets `duration` pass on the store's clock.
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(duration)
    }

    /// Writes `record` under `store_key` as it is, expiring after `ttl`, bypassing the
    /// protocol (to plant records an older or foreign writer could have left).
    fn insert_raw(
        &self,
        store_key: &str,
        record: Record,
        ttl: Duration,
    ) -> impl Future<Output = ()> + Send;

    /// The remaining life of the record under `store_key`.
    fn expiry(&self, store_key: &str) -> impl Future<Output = Expiry> + Send;

    /// Every key in the store.
    fn keys(&self) -> impl Future<Output = Vec<String>> + Send;
}

/// Expands to one `#[tokio::test]` per contract case over the fixture `$fixture` (an
/// expression evaluated inside each test, so it may `.await`), with the test attribute
/// `$test` (e.g. `tokio::test(start_paused = true)` or
/// `tokio::test(flavor = "multi_thread", worker_threads = 4)`).
macro_rules! store_contract_tests {
    ($fixture:expr, $test:meta) => {
        $crate::contract::store_contract_tests!(@cases ($fixture) ($test)
            concurrent_callers_on_one_key_run_the_body_once_and_share_its_value
            concurrent_callers_across_five_services_run_the_body_once_and_share_its_value
            exactly_one_of_ten_contenders_takes_over_an_expired_lease
            contenders_waiting_on_an_expired_lease_run_the_body_once
            a_stale_owner_cannot_complete_after_a_takeover
            a_stale_owner_cannot_fail_release_or_renew_after_a_takeover
            an_owner_past_its_lease_completes_while_nobody_took_over
            an_owner_whose_record_expired_cannot_complete_or_recreate_it
            completion_expiry_counts_from_completion_not_from_the_claim
            a_recorded_failure_replays_until_its_window_ends_then_the_key_runs_again
            a_released_failure_lets_the_next_call_run_at_once
            the_same_fingerprint_waits_replays_or_takes_over
            another_fingerprint_is_refused_on_a_processing_record_without_waiting
            another_fingerprint_is_refused_on_completed_and_failed_records
            another_fingerprint_never_takes_over_an_expired_claim
            without_fingerprint_validation_other_arguments_replay_and_take_over
            a_processing_record_without_a_lease_is_waited_on_never_taken_over
            a_lease_is_held_to_its_last_millisecond_and_taken_over_after_it
            every_record_state_carries_an_expiry
            a_vanished_owner_blocks_its_key_for_one_lease_not_the_ttl
            renewing_a_lapsed_lease_is_refused_and_never_recreates_the_record
            an_owner_whose_renewal_came_too_late_still_completes_when_nobody_took_over
            a_renewal_moves_the_lease_end_to_renew_time_plus_lock_timeout
            a_body_kept_alive_for_five_leases_is_never_taken_over
            a_call_that_does_not_wait_answers_in_progress_with_the_lease_remaining
            a_wait_that_outlasts_its_budget_returns_wait_timeout
            a_claim_retried_with_its_own_token_is_acquired_again
            a_completion_retried_with_the_same_outcome_is_applied_and_another_is_refused
            delete_keeps_a_processing_record_unless_forced
            unit_none_and_empty_results_are_stored_and_replayed
            responses_keep_status_bytes_and_headers_in_order
            get_returns_every_field_of_the_record
            fences_grow_with_every_new_owner
            an_oversized_result_is_recorded_and_never_run_again
            keys_are_compared_as_exact_bytes
            a_batch_answers_every_item_in_order_as_a_single_call_would
            a_batch_keeps_the_leases_it_acquired_alive_while_another_item_waits
            a_batch_claims_again_a_lease_it_lost_while_another_item_waited
            callers_that_compare_fingerprints_never_share_an_answer_with_callers_that_do_not
            a_result_exactly_at_the_size_cap_is_stored_and_one_byte_more_is_not
        );
    };
    (@cases ($fixture:expr) ($test:meta) $($case:ident)*) => {
        $(
            #[$test]
            async fn $case() {
                let fixture = $fixture;
                $crate::contract::$case(&fixture).await;
            }
        )*
    };
}
pub(crate) use store_contract_tests;

/// One case's view of the fixture: its settings, its key prefix and its timings.
struct Case<'f, F> {
    fixture: &'f F,
    settings: Settings,
    lease: Duration,
    slack: Duration,
}

impl<'f, F: Fixture> Case<'f, F> {
    /// Settings for `name`: the fixture's lease, a TTL and wait budget of 20 leases, and a
    /// key prefix of the case's own.
    fn new(fixture: &'f F, name: &str) -> Self {
        let lease = fixture.lease();
        let settings = Settings {
            key_prefix: format!("contract:{name}:"),
            lock_timeout: lease,
            ttl: lease * 20,
            failure_ttl: lease * 20,
            wait_timeout: lease * 20,
            ..Settings::default()
        };
        Case {
            fixture,
            settings,
            lease,
            slack: fixture.clock_slack(),
        }
    }

    fn service(&self) -> IdempotencyService {
        self.fixture.service(self.settings.clone())
    }

    fn services(&self, n: usize) -> Vec<IdempotencyService> {
        (0..n).map(|_| self.service()).collect()
    }

    /// The margin kept on each side of a boundary: at least a millisecond, the store's unit.
    fn margin(&self) -> Duration {
        self.slack.max(Duration::from_millis(1))
    }

    async fn sleep(&self, duration: Duration) {
        self.fixture.sleep(duration).await;
    }

    fn store_key(&self, key: &Key) -> String {
        key.store_key(&self.settings.key_prefix)
    }

    async fn expiry(&self, key: &Key) -> Expiry {
        self.fixture.expiry(&self.store_key(key)).await
    }

    async fn case_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.fixture.keys().await;
        keys.retain(|k| k.starts_with(&self.settings.key_prefix));
        keys.sort();
        keys
    }

    /// Checks that every record this case left carries an expiry no longer than the
    /// longest one the case configured.
    async fn assert_every_record_expires(&self) {
        let longest = self
            .settings
            .ttl
            .max(self.settings.failure_ttl)
            .max(self.lease * 20);
        for key in self.case_keys().await {
            match self.fixture.expiry(&key).await {
                Expiry::Never => panic!("record {key} has no expiry"),
                Expiry::In(left) => assert!(left <= longest, "record {key} expires in {left:?}"),
                Expiry::Missing => {}
            }
        }
    }

    fn assert_near(&self, actual: Duration, expected: Duration, what: &str) {
        let low = expected.saturating_sub(self.slack);
        let high = expected + self.slack;
        assert!(
            (low..=high).contains(&actual),
            "{what}: {actual:?}, expected {expected:?} ± {:?}",
            self.slack
        );
    }
}

fn fp(n: u8) -> Fingerprint {
    Fingerprint::from_bytes([n; 32])
}

fn text(value: &str) -> Response {
    Response::ok(Body::json(value).expect("a string serializes"))
}

fn wait_not() -> CallOptions {
    CallOptions::new().wait(false)
}

async fn acquire(service: &IdempotencyService, key: &Key, fp: &Fingerprint) -> Lease {
    acquire_with(service, key, fp, &CallOptions::new()).await
}

async fn acquire_with(
    service: &IdempotencyService,
    key: &Key,
    fp: &Fingerprint,
    options: &CallOptions,
) -> Lease {
    match service.check_and_lock(key, fp, options).await {
        Ok(CheckOutcome::Acquired(lease)) => lease,
        other => panic!("expected to acquire {key}, got {other:?}"),
    }
}

async fn check(
    service: &IdempotencyService,
    key: &Key,
    fp: &Fingerprint,
    options: &CallOptions,
) -> CheckOutcome {
    match service.check_and_lock(key, fp, options).await {
        Ok(outcome) => outcome,
        Err(error) => panic!("check_and_lock({key}) failed: {error}"),
    }
}

fn replayed(outcome: CheckOutcome) -> Response {
    match outcome {
        CheckOutcome::Completed(record) => response_of(&record).clone(),
        other => panic!("expected a completed record to replay, got {other:?}"),
    }
}

fn response_of(record: &Record) -> &Response {
    match &record.state {
        RecordState::Completed { response, .. } => response,
        other => panic!("expected a completed record, got {other:?}"),
    }
}

fn lease_until_of(record: &Record) -> Option<u64> {
    match record.state {
        RecordState::Processing { lease_until } => lease_until,
        ref other => panic!("expected a processing record, got {other:?}"),
    }
}

fn assert_in_progress(outcome: CheckOutcome) -> Duration {
    match outcome {
        CheckOutcome::InProgress { retry_after } => retry_after,
        other => panic!("expected in progress, got {other:?}"),
    }
}

fn assert_mismatch(outcome: CheckOutcome, stored: Fingerprint) {
    match outcome {
        CheckOutcome::Mismatch { stored: found } => assert_eq!(found, stored),
        other => panic!("expected a fingerprint mismatch, got {other:?}"),
    }
}

async fn record(service: &IdempotencyService, key: &Key) -> Option<Record> {
    service.get(key).await.expect("get")
}

/// One caller of an operation: claims `key`, and if it owns it, runs a body that counts
/// itself in `runs` and takes `body` long; returns the response it ran or replayed.
async fn call_once(
    service: IdempotencyService,
    key: Key,
    options: CallOptions,
    runs: Arc<AtomicUsize>,
    body: Duration,
) -> Response {
    match check(&service, &key, &fp(1), &options).await {
        CheckOutcome::Acquired(lease) => {
            let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(body).await;
            let response = text(&format!("run {run}"));
            service
                .complete(&lease, response.clone())
                .await
                .expect("complete");
            response
        }
        outcome => replayed(outcome),
    }
}

/// Starts `callers` calls on one key at the same moment, caller `i` on `services[i % n]`,
/// and returns every response and the number of runs.
async fn stampede(
    services: &[IdempotencyService],
    key: &Key,
    callers: usize,
    body: Duration,
) -> (Vec<Response>, usize) {
    let barrier = Arc::new(Barrier::new(callers));
    let runs = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..callers)
        .map(|i| {
            let service = services[i % services.len()].clone();
            let (key, barrier, runs) = (key.clone(), Arc::clone(&barrier), Arc::clone(&runs));
            tokio::spawn(async move {
                barrier.wait().await;
                call_once(service, key, CallOptions::new(), runs, body).await
            })
        })
        .collect();
    let mut responses = Vec::with_capacity(callers);
    for task in tasks {
        responses.push(task.await.expect("caller task"));
    }
    (responses, runs.load(Ordering::SeqCst))
}

pub async fn concurrent_callers_on_one_key_run_the_body_once_and_share_its_value<F: Fixture>(
    f: &F,
) {
    let case = Case::new(f, "stampede-one-service");
    let key = Key::new("order-1");

    let (responses, runs) = stampede(&[case.service()], &key, 50, case.lease / 10).await;

    assert_eq!(runs, 1);
    assert_eq!(responses.len(), 50);
    assert!(
        responses.iter().all(|r| *r == text("run 1")),
        "{responses:?}"
    );
    case.assert_every_record_expires().await;
}

pub async fn concurrent_callers_across_five_services_run_the_body_once_and_share_its_value<
    F: Fixture,
>(
    f: &F,
) {
    let case = Case::new(f, "stampede-five-services");
    let key = Key::new("order-1");

    let (responses, runs) = stampede(&case.services(5), &key, 50, case.lease / 10).await;

    assert_eq!(runs, 1);
    assert!(
        responses.iter().all(|r| *r == text("run 1")),
        "{responses:?}"
    );
    case.assert_every_record_expires().await;
}

/// Leaves `key` claimed by an owner that vanished (its lease dropped unfinished), and lets
/// the lease run out.
async fn abandon_and_lapse<F: Fixture>(case: &Case<'_, F>, key: &Key, fp: &Fingerprint) -> u64 {
    let lease = acquire(&case.service(), key, fp).await;
    let fence = lease.fence();
    drop(lease);
    case.sleep(case.lease + case.margin()).await;
    fence
}

pub async fn exactly_one_of_ten_contenders_takes_over_an_expired_lease<F: Fixture>(f: &F) {
    let case = Case::new(f, "ten-contenders");
    let key = Key::new("order-1");
    let old_fence = abandon_and_lapse(&case, &key, &fp(1)).await;

    let barrier = Arc::new(Barrier::new(10));
    let tasks: Vec<_> = case
        .services(10)
        .into_iter()
        .map(|service| {
            let (key, barrier) = (key.clone(), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                let outcome = check(&service, &key, &fp(1), &wait_not()).await;
                (service, outcome)
            })
        })
        .collect();
    let mut winners = Vec::new();
    let mut busy = 0;
    for task in tasks {
        match task.await.expect("contender task") {
            (service, CheckOutcome::Acquired(lease)) => winners.push((service, lease)),
            (_, CheckOutcome::InProgress { .. }) => busy += 1,
            (_, other) => panic!("unexpected outcome {other:?}"),
        }
    }

    assert_eq!(winners.len(), 1);
    assert_eq!(busy, 9);
    let (service, lease) = winners.pop().expect("one winner");
    assert!(lease.is_takeover());
    assert!(lease.fence() > old_fence);
    service
        .complete(&lease, text("winner"))
        .await
        .expect("complete");
    let replay = check(&case.service(), &key, &fp(1), &CallOptions::new()).await;
    assert_eq!(replayed(replay), text("winner"));
    case.assert_every_record_expires().await;
}

pub async fn contenders_waiting_on_an_expired_lease_run_the_body_once<F: Fixture>(f: &F) {
    let case = Case::new(f, "waiting-contenders");
    let key = Key::new("order-1");
    abandon_and_lapse(&case, &key, &fp(1)).await;

    let (responses, runs) = stampede(&case.services(10), &key, 10, case.lease / 10).await;

    assert_eq!(runs, 1);
    assert!(
        responses.iter().all(|r| *r == text("run 1")),
        "{responses:?}"
    );
    case.assert_every_record_expires().await;
}

/// Owner A claims `key` and lets its lease lapse without renewing; owner B, in another
/// service, takes it over. Returns both services and leases.
async fn takeover<F: Fixture>(
    case: &Case<'_, F>,
    key: &Key,
    options: &CallOptions,
) -> ((IdempotencyService, Lease), (IdempotencyService, Lease)) {
    let (a, b) = (case.service(), case.service());
    let stale = acquire_with(&a, key, &fp(1), options).await;
    case.sleep(case.lease + case.margin()).await;
    let owner = acquire_with(&b, key, &fp(1), options).await;
    assert!(owner.is_takeover());
    assert!(!stale.is_takeover());
    ((a, stale), (b, owner))
}

pub async fn a_stale_owner_cannot_complete_after_a_takeover<F: Fixture>(f: &F) {
    let case = Case::new(f, "stale-complete");
    let key = Key::new("order-1");
    let ((a, stale), (b, owner)) = takeover(&case, &key, &CallOptions::new()).await;

    let late = a.complete(&stale, text("stale owner")).await;

    assert!(
        matches!(&late, Err(Error::LeaseLost { key }) if key == "order-1"),
        "{late:?}"
    );
    assert!(stale.is_lost());
    let current = record(&b, &key).await.expect("the new owner's record");
    assert_eq!(current.token, *owner.token());
    assert_eq!(current.status(), RecordStatus::Processing);

    b.complete(&owner, text("new owner"))
        .await
        .expect("complete");
    let replay = check(&case.service(), &key, &fp(1), &CallOptions::new()).await;
    assert_eq!(replayed(replay), text("new owner"));
    case.assert_every_record_expires().await;
}

pub async fn a_stale_owner_cannot_fail_release_or_renew_after_a_takeover<F: Fixture>(f: &F) {
    let case = Case::new(f, "stale-fail");
    let key = Key::new("order-1");
    let record_failures = CallOptions::new().failure_policy(FailurePolicy::Record);
    let ((a, stale), (b, owner)) = takeover(&case, &key, &record_failures).await;
    let before = record(&b, &key).await.expect("the new owner's record");

    let failed = a
        .fail(&stale, Response::new(500, Body::bytes("stale")))
        .await;
    let released = a.release(&stale).await;
    let renewed = a.renew(&stale).await;

    assert!(matches!(failed, Err(Error::LeaseLost { .. })), "{failed:?}");
    assert!(
        matches!(released, Err(Error::LeaseLost { .. })),
        "{released:?}"
    );
    assert!(
        matches!(renewed, Err(Error::LeaseLost { .. })),
        "{renewed:?}"
    );
    assert_eq!(record(&b, &key).await, Some(before));
    b.complete(&owner, text("new owner"))
        .await
        .expect("complete");
    case.assert_every_record_expires().await;
}

pub async fn an_owner_past_its_lease_completes_while_nobody_took_over<F: Fixture>(f: &F) {
    let case = Case::new(f, "late-complete");
    let key = Key::new("order-1");
    let service = case.service();
    let lease = acquire(&service, &key, &fp(1)).await;

    case.sleep(case.lease + case.margin()).await;
    service
        .complete(&lease, text("late"))
        .await
        .expect("complete");

    let replay = check(&case.service(), &key, &fp(1), &CallOptions::new()).await;
    assert_eq!(replayed(replay), text("late"));
    case.assert_every_record_expires().await;
}

pub async fn an_owner_whose_record_expired_cannot_complete_or_recreate_it<F: Fixture>(f: &F) {
    let case = Case::new(f, "expired-complete");
    let key = Key::new("order-1");
    let service = case.service();
    let lease = acquire(&service, &key, &fp(1)).await;

    // A processing record is kept one lease past its lease end, then expires.
    case.sleep(case.lease * 2 + case.margin()).await;
    let late = service.complete(&lease, text("too late")).await;

    assert!(matches!(late, Err(Error::LeaseLost { .. })), "{late:?}");
    assert_eq!(record(&service, &key).await, None);
    assert_eq!(case.case_keys().await, Vec::<String>::new());
}

pub async fn completion_expiry_counts_from_completion_not_from_the_claim<F: Fixture>(f: &F) {
    let mut case = Case::new(f, "completion-expiry");
    // The TTL is as short as two leases, so that an expiry counted from the claim, or the
    // claim's own expiry kept, would both end the record before the check below.
    case.settings.ttl = case.lease * 2;
    let key = Key::new("order-1");
    let service = case.service();
    let lease = acquire(&service, &key, &fp(1)).await;

    case.sleep(case.lease * 8 / 10).await;
    service
        .complete(&lease, text("done"))
        .await
        .expect("complete");
    match case.expiry(&key).await {
        Expiry::In(left) => case.assert_near(left, case.lease * 2, "TTL right after completion"),
        other => panic!("expected an expiry, got {other:?}"),
    }

    // 2.4 leases after the claim: past the claim's expiry, within the completion's.
    case.sleep(case.lease * 16 / 10).await;
    assert_eq!(
        record(&service, &key).await.map(|r| r.status()),
        Some(RecordStatus::Completed)
    );

    // 3.3 leases after the claim: past the completion's expiry (2.8 leases).
    case.sleep(case.lease * 9 / 10).await;
    assert_eq!(record(&service, &key).await, None);
    let again = acquire(&case.service(), &key, &fp(1)).await;
    assert!(!again.is_takeover());
    service
        .complete(&again, text("again"))
        .await
        .expect("complete");
    case.assert_every_record_expires().await;
}

pub async fn a_recorded_failure_replays_until_its_window_ends_then_the_key_runs_again<
    F: Fixture,
>(
    f: &F,
) {
    let mut case = Case::new(f, "recorded-failure");
    case.settings.failure_policy = FailurePolicy::Record;
    case.settings.failure_ttl = case.lease * 3;
    let key = Key::new("order-1");
    let service = case.service();
    let declined = Response::new(402, Body::json("card declined").expect("json"));
    let lease = acquire(&service, &key, &fp(1)).await;

    service.fail(&lease, declined.clone()).await.expect("fail");

    match check(&case.service(), &key, &fp(1), &CallOptions::new()).await {
        CheckOutcome::Failed(record) => match record.state {
            RecordState::Failed { error, .. } => assert_eq!(error, declined),
            other => panic!("expected a failed state, got {other:?}"),
        },
        other => panic!("expected the failure to replay, got {other:?}"),
    }
    match case.expiry(&key).await {
        Expiry::In(left) => case.assert_near(left, case.lease * 3, "failure TTL"),
        other => panic!("expected an expiry, got {other:?}"),
    }

    case.sleep(case.lease * 3 + case.margin()).await;
    let fresh = acquire(&case.service(), &key, &fp(1)).await;
    assert!(!fresh.is_takeover());
    service
        .complete(&fresh, text("paid"))
        .await
        .expect("complete");
    case.assert_every_record_expires().await;
}

pub async fn a_released_failure_lets_the_next_call_run_at_once<F: Fixture>(f: &F) {
    let case = Case::new(f, "released-failure");
    let key = Key::new("order-1");
    let service = case.service();
    let lease = acquire(&service, &key, &fp(1)).await;

    service
        .fail(&lease, Response::new(503, Body::bytes("db down")))
        .await
        .expect("fail");

    assert_eq!(record(&service, &key).await, None);
    let next = acquire_with(&case.service(), &key, &fp(1), &wait_not()).await;
    assert!(!next.is_takeover());

    // Under the record policy an explicit release frees the key all the same.
    let recording = case.service();
    recording.release(&next).await.expect("release");
    let options = wait_not().failure_policy(FailurePolicy::Record);
    let last = acquire_with(&recording, &key, &fp(1), &options).await;
    recording
        .complete(&last, text("ok"))
        .await
        .expect("complete");
    case.assert_every_record_expires().await;
}

pub async fn the_same_fingerprint_waits_replays_or_takes_over<F: Fixture>(f: &F) {
    let case = Case::new(f, "same-fingerprint");
    let owner_service = case.service();
    let processing = Key::new("processing");
    let lease = acquire(&owner_service, &processing, &fp(1)).await;

    // Processing: a call that does not wait hears so; one that waits replays the result.
    let retry_after =
        assert_in_progress(check(&case.service(), &processing, &fp(1), &wait_not()).await);
    assert!(retry_after > Duration::ZERO && retry_after <= case.lease);
    let waiter = {
        let (service, key) = (case.service(), processing.clone());
        tokio::spawn(async move { check(&service, &key, &fp(1), &CallOptions::new()).await })
    };
    case.sleep(case.lease / 4).await;
    owner_service
        .complete(&lease, text("first"))
        .await
        .expect("complete");
    assert_eq!(replayed(waiter.await.expect("waiter")), text("first"));

    // Completed: replayed.
    let replay = check(&case.service(), &processing, &fp(1), &wait_not()).await;
    assert_eq!(replayed(replay), text("first"));

    // Expired claim: taken over.
    let expired = Key::new("expired");
    abandon_and_lapse(&case, &expired, &fp(1)).await;
    let taken = acquire(&case.service(), &expired, &fp(1)).await;
    assert!(taken.is_takeover());
    owner_service
        .complete(&taken, text("second"))
        .await
        .expect("complete");
    case.assert_every_record_expires().await;
}

pub async fn another_fingerprint_is_refused_on_a_processing_record_without_waiting<F: Fixture>(
    f: &F,
) {
    let case = Case::new(f, "mismatch-processing");
    let key = Key::new("transfer-1");
    let owner_service = case.service();
    let lease = acquire(&owner_service, &key, &fp(1)).await;

    // A waiting caller with other arguments is refused, not made to wait and replay.
    assert_mismatch(
        check(&case.service(), &key, &fp(2), &CallOptions::new()).await,
        fp(1),
    );
    assert_mismatch(
        check(&case.service(), &key, &fp(2), &wait_not()).await,
        fp(1),
    );
    // Also from the owner's own service, where a call with the same arguments would join.
    assert_mismatch(
        check(&owner_service, &key, &fp(2), &CallOptions::new()).await,
        fp(1),
    );

    owner_service
        .complete(&lease, text("to X"))
        .await
        .expect("complete");
    let replay = check(&case.service(), &key, &fp(1), &CallOptions::new()).await;
    assert_eq!(replayed(replay), text("to X"));
    case.assert_every_record_expires().await;
}

pub async fn another_fingerprint_is_refused_on_completed_and_failed_records<F: Fixture>(f: &F) {
    let case = Case::new(f, "mismatch-finished");
    let service = case.service();
    let completed = Key::new("completed");
    let lease = acquire(&service, &completed, &fp(1)).await;
    service
        .complete(&lease, text("done"))
        .await
        .expect("complete");
    let failed = Key::new("failed");
    let options = CallOptions::new().failure_policy(FailurePolicy::Record);
    let lease = acquire_with(&service, &failed, &fp(1), &options).await;
    service
        .fail(&lease, Response::new(422, Body::bytes("invalid")))
        .await
        .expect("fail");

    assert_mismatch(
        check(&case.service(), &completed, &fp(2), &CallOptions::new()).await,
        fp(1),
    );
    assert_mismatch(
        check(&case.service(), &failed, &fp(2), &CallOptions::new()).await,
        fp(1),
    );
    case.assert_every_record_expires().await;
}

pub async fn another_fingerprint_never_takes_over_an_expired_claim<F: Fixture>(f: &F) {
    let case = Case::new(f, "mismatch-expired");
    let key = Key::new("transfer-1");
    let service = case.service();
    let stale = acquire(&service, &key, &fp(1)).await;
    case.sleep(case.lease + case.margin()).await;

    assert_mismatch(
        check(&case.service(), &key, &fp(2), &CallOptions::new()).await,
        fp(1),
    );

    let kept = record(&service, &key).await.expect("the old claim");
    assert_eq!(kept.token, *stale.token());
    let taken = acquire(&case.service(), &key, &fp(1)).await;
    assert!(taken.is_takeover());
    service
        .complete(&taken, text("done"))
        .await
        .expect("complete");
    case.assert_every_record_expires().await;
}

pub async fn without_fingerprint_validation_other_arguments_replay_and_take_over<F: Fixture>(
    f: &F,
) {
    let mut case = Case::new(f, "validation-off");
    case.settings.validate_fingerprint = false;
    let service = case.service();
    let key = Key::new("order-1");
    let lease = acquire(&service, &key, &fp(1)).await;

    assert_in_progress(check(&case.service(), &key, &fp(2), &wait_not()).await);
    service
        .complete(&lease, text("first"))
        .await
        .expect("complete");
    let replay = check(&case.service(), &key, &fp(2), &CallOptions::new()).await;
    assert_eq!(replayed(replay), text("first"));

    let expired = Key::new("expired");
    abandon_and_lapse(&case, &expired, &fp(1)).await;
    let taken = acquire(&case.service(), &expired, &fp(2)).await;
    assert!(taken.is_takeover());
    service
        .complete(&taken, text("second"))
        .await
        .expect("complete");
    case.assert_every_record_expires().await;
}

pub async fn a_processing_record_without_a_lease_is_waited_on_never_taken_over<F: Fixture>(f: &F) {
    let case = Case::new(f, "no-lease");
    let key = Key::new("order-1");
    let service = case.service();
    let planted = Record {
        fingerprint: fp(1),
        token: Token::generate(),
        fence: 1,
        started_at: 0,
        state: RecordState::Processing { lease_until: None },
    };
    case.fixture
        .insert_raw(&case.store_key(&key), planted.clone(), case.lease * 3)
        .await;

    let retry_after = assert_in_progress(check(&service, &key, &fp(1), &wait_not()).await);
    assert!(retry_after > Duration::ZERO && retry_after <= case.lease * 3);
    let short_wait = CallOptions::new().wait_timeout(case.lease * 3 / 2);
    let waited = service.check_and_lock(&key, &fp(1), &short_wait).await;
    assert!(
        matches!(waited, Err(Error::WaitTimeout { .. })),
        "{waited:?}"
    );
    assert_eq!(record(&service, &key).await, Some(planted));

    // The record's own expiry is the end of it.
    case.sleep(case.lease * 3 / 2 + case.margin()).await;
    let lease = acquire(&service, &key, &fp(1)).await;
    service
        .complete(&lease, text("done"))
        .await
        .expect("complete");
    case.assert_every_record_expires().await;
}

pub async fn a_lease_is_held_to_its_last_millisecond_and_taken_over_after_it<F: Fixture>(f: &F) {
    let case = Case::new(f, "lease-boundary");
    let key = Key::new("order-1");
    let stale = acquire(&case.service(), &key, &fp(1)).await;

    case.sleep(case.lease - case.margin()).await;
    assert_in_progress(check(&case.service(), &key, &fp(1), &wait_not()).await);

    case.sleep(case.margin() * 2).await;
    let taken = acquire_with(&case.service(), &key, &fp(1), &wait_not()).await;
    assert!(taken.is_takeover());
    assert!(taken.fence() > stale.fence());
    case.service()
        .complete(&taken, text("done"))
        .await
        .expect("complete");
    case.assert_every_record_expires().await;
}

pub async fn every_record_state_carries_an_expiry<F: Fixture>(f: &F) {
    let case = Case::new(f, "expiries");
    let service = case.service();
    let in_range = |expiry: Expiry, low: Duration, high: Duration, what: &str| match expiry {
        Expiry::In(left) => assert!(
            left > low.saturating_sub(case.slack) && left <= high,
            "{what}: expires in {left:?}, expected within ({low:?}, {high:?}]"
        ),
        other => panic!("{what}: expected an expiry, got {other:?}"),
    };

    let processing = Key::new("processing");
    let lease = acquire(&service, &processing, &fp(1)).await;
    // Kept one lease past the lease end, so a takeover can see whose claim it replaces.
    in_range(
        case.expiry(&processing).await,
        case.lease,
        case.lease * 2,
        "processing",
    );
    case.sleep(case.lease / 2).await;
    service.renew(&lease).await.expect("renew");
    in_range(
        case.expiry(&processing).await,
        case.lease,
        case.lease * 2,
        "renewed",
    );
    service
        .complete(&lease, text("done"))
        .await
        .expect("complete");
    in_range(
        case.expiry(&processing).await,
        case.lease * 19,
        case.lease * 20,
        "completed",
    );

    let failed = Key::new("failed");
    let options = CallOptions::new()
        .failure_policy(FailurePolicy::Record)
        .failure_ttl(case.lease * 5);
    let lease = acquire_with(&service, &failed, &fp(1), &options).await;
    service
        .fail(&lease, Response::new(500, Body::bytes("no")))
        .await
        .expect("fail");
    in_range(
        case.expiry(&failed).await,
        case.lease * 4,
        case.lease * 5,
        "failed",
    );

    let custom = Key::new("custom-ttl");
    let lease = acquire_with(
        &service,
        &custom,
        &fp(1),
        &CallOptions::new().ttl(case.lease * 7),
    )
    .await;
    service
        .complete(&lease, text("done"))
        .await
        .expect("complete");
    in_range(
        case.expiry(&custom).await,
        case.lease * 6,
        case.lease * 7,
        "per-call TTL",
    );
    case.assert_every_record_expires().await;
}

pub async fn a_vanished_owner_blocks_its_key_for_one_lease_not_the_ttl<F: Fixture>(f: &F) {
    let case = Case::new(f, "vanished-owner");
    let key = Key::new("order-1");
    drop(acquire(&case.service(), &key, &fp(1)).await);

    // A wait budget of three leases, far below the 20-lease TTL, is enough to take over.
    let options = CallOptions::new().wait_timeout(case.lease * 3);
    let taken = acquire_with(&case.service(), &key, &fp(1), &options).await;

    assert!(taken.is_takeover());
    case.service()
        .complete(&taken, text("done"))
        .await
        .expect("complete");
    case.assert_every_record_expires().await;
}

pub async fn renewing_a_lapsed_lease_is_refused_and_never_recreates_the_record<F: Fixture>(f: &F) {
    let case = Case::new(f, "renew-lapsed");
    let key = Key::new("order-1");
    let service = case.service();
    let lease = acquire(&service, &key, &fp(1)).await;
    let claimed = record(&service, &key).await.expect("claim");

    case.sleep(case.lease + case.margin()).await;
    let renewed = service.renew(&lease).await;
    assert!(
        matches!(renewed, Err(Error::LeaseLost { .. })),
        "{renewed:?}"
    );
    assert!(lease.is_lost());
    assert_eq!(record(&service, &key).await, Some(claimed));

    case.sleep(case.lease + case.margin()).await;
    let renewed = service.renew(&lease).await;
    assert!(
        matches!(renewed, Err(Error::LeaseLost { .. })),
        "{renewed:?}"
    );
    assert_eq!(record(&service, &key).await, None);
    assert_eq!(case.case_keys().await, Vec::<String>::new());
}

/// The behaviour `keep_alive` documents: a renewal after the lease lapsed is refused, but
/// the record is still this owner's until another caller takes it over, so its completion
/// is stored and replayed.
pub async fn an_owner_whose_renewal_came_too_late_still_completes_when_nobody_took_over<
    F: Fixture,
>(
    f: &F,
) {
    let case = Case::new(f, "renew-late-complete");
    let key = Key::new("order-1");
    let service = case.service();
    let lease = acquire(&service, &key, &fp(1)).await;

    case.sleep(case.lease + case.margin()).await;
    let renewed = service.renew(&lease).await;
    let completed = service.complete(&lease, text("late but mine")).await;

    assert!(
        matches!(renewed, Err(Error::LeaseLost { .. })),
        "{renewed:?}"
    );
    assert!(completed.is_ok(), "{completed:?}");
    let again = check(&service, &key, &fp(1), &CallOptions::new()).await;
    assert_eq!(replayed(again), text("late but mine"));
    case.assert_every_record_expires().await;
}

pub async fn a_renewal_moves_the_lease_end_to_renew_time_plus_lock_timeout<F: Fixture>(f: &F) {
    let case = Case::new(f, "renew-deadline");
    let key = Key::new("order-1");
    let service = case.service();
    let lease = acquire(&service, &key, &fp(1)).await;
    let first_end = lease.lease_until();

    case.sleep(case.lease / 2).await;
    service.renew(&lease).await.expect("renew");

    let renewed_end = lease.lease_until();
    let moved = Duration::from_millis(renewed_end - first_end);
    case.assert_near(moved, case.lease / 2, "lease end moved by");
    let stored = record(&service, &key).await.expect("record");
    assert_eq!(lease_until_of(&stored), Some(renewed_end));

    // Past the first lease end, before the renewed one: still held.
    case.sleep(case.lease * 7 / 10).await;
    assert_in_progress(check(&case.service(), &key, &fp(1), &wait_not()).await);
    service
        .complete(&lease, text("done"))
        .await
        .expect("complete");
    case.assert_every_record_expires().await;
}

pub async fn a_body_kept_alive_for_five_leases_is_never_taken_over<F: Fixture>(f: &F) {
    let case = Case::new(f, "keep-alive");
    let key = Key::new("export-1");
    let service = case.service();
    let runs = Arc::new(AtomicUsize::new(0));
    let lease = acquire(&service, &key, &fp(1)).await;
    let owner = {
        let (service, runs, body) = (service.clone(), Arc::clone(&runs), case.lease * 5);
        tokio::spawn(async move {
            runs.fetch_add(1, Ordering::SeqCst);
            service.keep_alive(&lease, tokio::time::sleep(body)).await;
            service.complete(&lease, text("export")).await
        })
    };

    case.sleep(case.lease * 3 / 2).await;
    assert_in_progress(check(&case.service(), &key, &fp(1), &wait_not()).await);
    assert!(!matches!(case.expiry(&key).await, Expiry::Missing));
    case.sleep(case.lease * 3 / 2).await;
    let waiter = call_once(
        case.service(),
        key.clone(),
        CallOptions::new(),
        Arc::clone(&runs),
        Duration::ZERO,
    );

    assert_eq!(waiter.await, text("export"));
    owner.await.expect("owner task").expect("complete");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    case.assert_every_record_expires().await;
}

pub async fn a_call_that_does_not_wait_answers_in_progress_with_the_lease_remaining<F: Fixture>(
    f: &F,
) {
    let case = Case::new(f, "no-wait");
    let key = Key::new("order-1");
    let service = case.service();
    let lease = acquire(&service, &key, &fp(1)).await;

    case.sleep(case.lease / 4).await;
    let elsewhere = assert_in_progress(check(&case.service(), &key, &fp(1), &wait_not()).await);
    let here = assert_in_progress(check(&service, &key, &fp(1), &wait_not()).await);

    case.assert_near(
        elsewhere,
        case.lease * 3 / 4,
        "retry_after from another service",
    );
    case.assert_near(
        here,
        case.lease * 3 / 4,
        "retry_after from the owner's service",
    );
    service
        .complete(&lease, text("done"))
        .await
        .expect("complete");
    case.assert_every_record_expires().await;
}

pub async fn a_wait_that_outlasts_its_budget_returns_wait_timeout<F: Fixture>(f: &F) {
    let case = Case::new(f, "wait-timeout");
    let key = Key::new("order-1");
    let service = case.service();
    let long = CallOptions::new().lock_timeout(case.lease * 10);
    let lease = acquire_with(&service, &key, &fp(1), &long).await;
    let claimed = record(&service, &key).await;
    let budget = CallOptions::new().wait_timeout(case.lease / 2);

    let elsewhere = case.service().check_and_lock(&key, &fp(1), &budget).await;
    let here = service.check_and_lock(&key, &fp(1), &budget).await;

    for outcome in [elsewhere, here] {
        match outcome {
            Err(Error::WaitTimeout { key, waited }) => {
                assert_eq!(key, "order-1");
                assert_eq!(waited, case.lease / 2);
            }
            other => panic!("expected a wait timeout, got {other:?}"),
        }
    }
    assert_eq!(record(&service, &key).await, claimed);
    service
        .complete(&lease, text("done"))
        .await
        .expect("complete");
    case.assert_every_record_expires().await;
}

pub async fn a_claim_retried_with_its_own_token_is_acquired_again<F: Fixture>(f: &F) {
    let case = Case::new(f, "own-token");
    let service = case.service();
    let store_key = case.store_key(&Key::new("order-1"));
    let (token, other) = (Token::generate(), Token::generate());
    let claim = |token| claim_of(&store_key, token, case.lease);
    let first = service.store().claim(claim(&token)).await.expect("claim");
    let again = service.store().claim(claim(&token)).await.expect("claim");
    let foreign = service.store().claim(claim(&other)).await.expect("claim");

    let ClaimReply::Acquired {
        fence,
        lease_until,
        takeover: false,
    } = first
    else {
        panic!("expected the first claim to acquire, got {first:?}");
    };
    match again {
        ClaimReply::Acquired {
            fence: again_fence,
            takeover,
            ..
        } => {
            assert_eq!(again_fence, fence);
            assert!(!takeover);
        }
        other => panic!("expected the retried claim to acquire, got {other:?}"),
    }
    assert!(matches!(foreign, ClaimReply::Busy { .. }), "{foreign:?}");
    let finish = Finish::Completed(text("done"));
    let owner = Owner {
        key: &store_key,
        token: &token,
        fingerprint: &FP1,
        fence,
        started_at: lease_until - case.lease.as_millis() as u64,
        lease: case.lease,
        takeover: false,
    };
    let done = service
        .store()
        .complete(&owner, &finish, case.lease * 2)
        .await;
    assert!(matches!(done, Ok(LeaseReply::Applied { .. })), "{done:?}");
    case.assert_every_record_expires().await;
}

const FP1: Fingerprint = Fingerprint::from_bytes([1; 32]);

fn claim_of<'a>(key: &'a str, token: &'a Token, lease: Duration) -> Claim<'a> {
    Claim {
        key,
        fingerprint: &FP1,
        validate_fingerprint: true,
        token,
        lease,
    }
}

pub async fn a_completion_retried_with_the_same_outcome_is_applied_and_another_is_refused<
    F: Fixture,
>(
    f: &F,
) {
    let case = Case::new(f, "complete-twice");
    let key = Key::new("order-1");
    let service = case.service();
    let lease = acquire(&service, &key, &fp(1)).await;
    let store = service.store();
    let ttl = case.lease * 2;
    let first = Finish::Completed(text("first"));

    let applied = store.complete(&lease.owner(), &first, ttl).await;
    let repeated = store.complete(&lease.owner(), &first, ttl).await;
    let second = Finish::Completed(text("second"));
    let other = store.complete(&lease.owner(), &second, ttl).await;
    let failed = Finish::Failed(text("first"));
    let as_failure = store.complete(&lease.owner(), &failed, ttl).await;

    assert!(
        matches!(applied, Ok(LeaseReply::Applied { .. })),
        "{applied:?}"
    );
    assert!(
        matches!(repeated, Ok(LeaseReply::Applied { .. })),
        "{repeated:?}"
    );
    assert!(matches!(other, Ok(LeaseReply::Lost)), "{other:?}");
    assert!(matches!(as_failure, Ok(LeaseReply::Lost)), "{as_failure:?}");
    let stored = record(&service, &key).await.expect("record");
    assert_eq!(response_of(&stored), &text("first"));
    case.assert_every_record_expires().await;
}

pub async fn delete_keeps_a_processing_record_unless_forced<F: Fixture>(f: &F) {
    let case = Case::new(f, "delete");
    let key = Key::new("order-1");
    let service = case.service();
    let lease = acquire(&service, &key, &fp(1)).await;

    assert_eq!(
        service.delete(&key, false).await.expect("delete"),
        DeleteReply::Processing
    );
    assert_eq!(
        record(&service, &key).await.map(|r| r.status()),
        Some(RecordStatus::Processing)
    );
    assert_eq!(
        service.delete(&key, true).await.expect("delete"),
        DeleteReply::Deleted
    );
    assert_eq!(record(&service, &key).await, None);
    assert_eq!(
        service.delete(&key, false).await.expect("delete"),
        DeleteReply::NotFound
    );

    // The owner of a deleted claim cannot bring it back.
    let late = service.complete(&lease, text("late")).await;
    assert!(matches!(late, Err(Error::LeaseLost { .. })), "{late:?}");
    assert_eq!(record(&service, &key).await, None);

    let lease = acquire(&service, &key, &fp(1)).await;
    service
        .complete(&lease, text("done"))
        .await
        .expect("complete");
    assert_eq!(
        service.delete(&key, false).await.expect("delete"),
        DeleteReply::Deleted
    );
    assert_eq!(case.case_keys().await, Vec::<String>::new());
}

pub async fn unit_none_and_empty_results_are_stored_and_replayed<F: Fixture>(f: &F) {
    let case = Case::new(f, "empty-results");
    let service = case.service();
    let bodies = [
        ("unit", Body::json(&()).expect("json")),
        ("none", Body::json(&None::<u32>).expect("json")),
        ("empty-vec", Body::json(&Vec::<u32>::new()).expect("json")),
        ("empty-string", Body::json("").expect("json")),
        ("empty-bytes", Body::bytes(Vec::new())),
    ];
    for (name, body) in &bodies {
        let key = Key::new(*name);
        let lease = acquire(&service, &key, &fp(1)).await;
        service
            .complete(&lease, Response::ok(body.clone()))
            .await
            .expect("complete");
    }

    for (name, body) in &bodies {
        let replay = check(&case.service(), &Key::new(*name), &fp(1), &wait_not()).await;
        assert_eq!(replayed(replay).body, *body, "{name}");
    }
    let replay = |name: &'static str| {
        let service = case.service();
        async move { replayed(check(&service, &Key::new(name), &fp(1), &wait_not()).await).body }
    };
    replay("unit").await.decode::<()>().expect("unit decodes");
    assert_eq!(
        replay("none")
            .await
            .decode::<Option<u32>>()
            .expect("decodes"),
        None
    );
    assert_eq!(
        replay("empty-vec")
            .await
            .decode::<Vec<u32>>()
            .expect("decodes"),
        Vec::<u32>::new()
    );
    assert_eq!(
        replay("empty-string")
            .await
            .decode::<String>()
            .expect("decodes"),
        ""
    );
    assert_eq!(replay("empty-bytes").await.as_bytes(), b"");
    case.assert_every_record_expires().await;
}

pub async fn responses_keep_status_bytes_and_headers_in_order<F: Fixture>(f: &F) {
    let case = Case::new(f, "round-trip");
    let service = case.service();
    let key = Key::new("order-1");
    let response = Response::new(201, Body::bytes(vec![0_u8, 159, 146, 150, 255, b'\n']))
        .with_header("Content-Type", "application/octet-stream")
        .with_header("x-dup", "2")
        .with_header("x-dup", "1")
        .with_header("x-empty", "");
    let lease = acquire(&service, &key, &fp(1)).await;

    service
        .complete(&lease, response.clone())
        .await
        .expect("complete");

    let replay = check(&case.service(), &key, &fp(1), &wait_not()).await;
    assert_eq!(replayed(replay), response);
    case.assert_every_record_expires().await;
}

pub async fn get_returns_every_field_of_the_record<F: Fixture>(f: &F) {
    let case = Case::new(f, "get-fields");
    let service = case.service();
    let key = Key::new("order-1");
    let fingerprint = fp(7);
    let lease = acquire(&service, &key, &fingerprint).await;

    let claimed = record(&service, &key).await.expect("record");
    assert_eq!(claimed.fingerprint, fingerprint);
    assert_eq!(claimed.token, *lease.token());
    assert_eq!(claimed.fence, lease.fence());
    assert_eq!(lease_until_of(&claimed), Some(lease.lease_until()));
    assert_eq!(
        claimed.started_at + case.lease.as_millis() as u64,
        lease.lease_until()
    );

    case.sleep(case.lease / 4).await;
    service
        .complete(&lease, text("done"))
        .await
        .expect("complete");

    let done = record(&service, &key).await.expect("record");
    assert_eq!(done.fingerprint, fingerprint);
    assert_eq!(done.token, *lease.token());
    assert_eq!(done.fence, lease.fence());
    assert_eq!(done.started_at, claimed.started_at);
    match done.state {
        RecordState::Completed {
            response,
            completed_at,
        } => {
            assert_eq!(response, text("done"));
            let after_claim = Duration::from_millis(completed_at - done.started_at);
            case.assert_near(after_claim, case.lease / 4, "completed after the claim");
        }
        other => panic!("expected completed, got {other:?}"),
    }
    case.assert_every_record_expires().await;
}

pub async fn fences_grow_with_every_new_owner<F: Fixture>(f: &F) {
    let case = Case::new(f, "fences");
    let key = Key::new("order-1");
    let service = case.service();
    let first = acquire(&service, &key, &fp(1)).await;
    case.sleep(case.lease + case.margin()).await;

    let second = acquire(&service, &key, &fp(1)).await;
    service.release(&second).await.expect("release");
    case.sleep(Duration::from_millis(1)).await;
    let third = acquire(&service, &key, &fp(1)).await;
    service
        .complete(&third, text("done"))
        .await
        .expect("complete");
    service.delete(&key, false).await.expect("delete");
    case.sleep(Duration::from_millis(1)).await;
    let fourth = acquire(&service, &key, &fp(1)).await;

    let fences = [first.fence(), second.fence(), third.fence(), fourth.fence()];
    assert!(fences.windows(2).all(|w| w[0] < w[1]), "{fences:?}");
    service
        .complete(&fourth, text("done"))
        .await
        .expect("complete");
    case.assert_every_record_expires().await;
}

pub async fn an_oversized_result_is_recorded_and_never_run_again<F: Fixture>(f: &F) {
    let mut case = Case::new(f, "oversized");
    case.settings.max_response_bytes = 64;
    let service = case.service();
    let key = Key::new("export-1");
    let lease = acquire(&service, &key, &fp(1)).await;

    let stored = service
        .complete(&lease, Response::ok(Body::bytes(vec![7_u8; 100])))
        .await;

    match stored {
        Err(Error::ResultTooLarge { key, size, limit }) => {
            assert_eq!((key.as_str(), size, limit), ("export-1", 100, 64));
        }
        other => panic!("expected the result to be too large, got {other:?}"),
    }
    match check(&case.service(), &key, &fp(1), &CallOptions::new()).await {
        CheckOutcome::NotReplayable(record) => {
            assert_eq!(record.status(), RecordStatus::NotReplayable);
        }
        other => panic!("expected not replayable, got {other:?}"),
    }
    case.assert_every_record_expires().await;
}

pub async fn keys_are_compared_as_exact_bytes<F: Fixture>(f: &F) {
    let case = Case::new(f, "exact-keys");
    let service = case.service();
    let keys = [
        Key::new("k1"),
        Key::new("\u{e9}"),
        Key::new("e\u{301}"),
        Key::scoped("acme:eu", "7"),
        Key::scoped("acme", "eu:7"),
        Key::new("{tag}"),
        Key::new("%7Btag%7D"),
    ];
    for (i, key) in keys.iter().enumerate() {
        let lease = acquire(&service, key, &fp(1)).await;
        service
            .complete(&lease, text(&format!("value {i}")))
            .await
            .expect("complete");
    }

    for (i, key) in keys.iter().enumerate() {
        let replay = check(&case.service(), key, &fp(1), &wait_not()).await;
        assert_eq!(replayed(replay), text(&format!("value {i}")), "{key:?}");
    }
    assert_eq!(case.case_keys().await.len(), keys.len());
    for (id, rule) in [
        ("k1 ", KeyRule::EdgeWhitespace),
        (" k1", KeyRule::EdgeWhitespace),
        ("k1\t", KeyRule::ControlCharacter('\t')),
    ] {
        match service
            .check_and_lock(&Key::new(id), &fp(1), &wait_not())
            .await
        {
            Err(Error::InvalidKey { key, rule: found }) => {
                assert_eq!((key.as_str(), found), (id, rule));
            }
            other => panic!("expected {id:?} to be refused, got {other:?}"),
        }
    }
    assert_eq!(case.case_keys().await.len(), keys.len());
    case.assert_every_record_expires().await;
}

pub async fn a_batch_answers_every_item_in_order_as_a_single_call_would<F: Fixture>(f: &F) {
    let case = Case::new(f, "batch");
    let service = case.service();
    let (fresh, done, other, held) = (
        Key::new("fresh"),
        Key::new("done"),
        Key::new("other-args"),
        Key::new("held"),
    );
    for key in [&done, &other] {
        let lease = acquire(&service, key, &fp(1)).await;
        service
            .complete(&lease, text("stored"))
            .await
            .expect("complete");
    }
    let holder = acquire(&case.service(), &held, &fp(1)).await;
    let (waits, no_wait) = (CallOptions::new(), wait_not());
    let item = |key, fingerprint, options| BatchItem {
        key,
        fingerprint,
        options,
    };
    let items = [
        item(&fresh, &FP1, &waits),
        item(&done, &FP1, &waits),
        item(&other, &FP2, &waits),
        item(&held, &FP1, &no_wait),
        item(&fresh, &FP1, &waits),
    ];

    let mut outcomes = service.check_and_lock_many(&items).await.into_iter();

    let Some(Ok(CheckOutcome::Acquired(lease))) = outcomes.next() else {
        panic!("the fresh key is acquired");
    };
    assert_eq!(lease.key(), &fresh);
    let replay = outcomes.next().expect("five answers").expect("no error");
    assert_eq!(replayed(replay), text("stored"));
    let mismatch = outcomes.next().expect("five answers").expect("no error");
    assert_mismatch(mismatch, fp(1));
    let busy = outcomes.next().expect("five answers").expect("no error");
    let retry_after = assert_in_progress(busy);
    assert!(retry_after > Duration::ZERO && retry_after <= case.lease);
    let repeated = outcomes.next().expect("five answers");
    assert!(
        matches!(&repeated, Err(Error::Reentrant { key }) if key.contains("fresh")),
        "{repeated:?}"
    );
    assert!(outcomes.next().is_none());

    service
        .complete(&lease, text("new"))
        .await
        .expect("complete");
    let again = service.check_and_lock_many(&items[..1]).await;
    match again.into_iter().next() {
        Some(Ok(outcome)) => assert_eq!(replayed(outcome), text("new")),
        other => panic!("expected a replay, got {other:?}"),
    }
    case.service()
        .complete(&holder, text("held"))
        .await
        .expect("complete");
    case.assert_every_record_expires().await;
}

const FP2: Fingerprint = Fingerprint::from_bytes([2; 32]);

/// A batch that waits for one item holds the leases it acquired for the others: it renews
/// them, so no caller elsewhere takes them over before the batch answers (and runs the
/// operation a second time), and a caller in the batch's own process waits for the batch's
/// outcome.
pub async fn a_batch_keeps_the_leases_it_acquired_alive_while_another_item_waits<F: Fixture>(
    f: &F,
) {
    let case = Case::new(f, "batch-holds");
    let (busy, fresh) = (Key::new("busy"), Key::new("fresh"));
    let runs = Arc::new(AtomicUsize::new(0));
    // Another process owns `busy` for three leases, renewing its lease all along.
    let other = case.service();
    let owned = acquire(&other, &busy, &fp(1)).await;
    let owner = {
        let body = tokio::time::sleep(case.lease * 3);
        tokio::spawn(async move {
            other.keep_alive(&owned, body).await;
            other.complete(&owned, text("busy done")).await
        })
    };

    let batcher = case.service();
    let batch = {
        let (batcher, runs) = (batcher.clone(), Arc::clone(&runs));
        let (busy, fresh) = (busy.clone(), fresh.clone());
        tokio::spawn(async move {
            let options = CallOptions::new();
            let items = [
                BatchItem {
                    key: &busy,
                    fingerprint: &FP1,
                    options: &options,
                },
                BatchItem {
                    key: &fresh,
                    fingerprint: &FP1,
                    options: &options,
                },
            ];
            let mut outcomes = batcher.check_and_lock_many(&items).await.into_iter();
            let waited = outcomes.next().expect("two answers").expect("no error");
            let Some(Ok(CheckOutcome::Acquired(lease))) = outcomes.next() else {
                panic!("the fresh key is acquired by the batch");
            };
            // The batch's caller runs the fresh key's operation as soon as it is answered.
            let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
            let stored = batcher.complete(&lease, text(&format!("run {run}"))).await;
            (replayed(waited), stored)
        })
    };
    // One caller in the batch's process, and one elsewhere once the fresh key's first lease
    // would have ended had nobody renewed it.
    case.sleep(case.lease / 4).await;
    let here = tokio::spawn(call_once(
        batcher,
        fresh.clone(),
        CallOptions::new(),
        Arc::clone(&runs),
        Duration::ZERO,
    ));
    case.sleep(case.lease * 5 / 4).await;
    let elsewhere = tokio::spawn(call_once(
        case.service(),
        fresh.clone(),
        CallOptions::new(),
        Arc::clone(&runs),
        Duration::ZERO,
    ));

    let (waited, stored) = batch.await.expect("batch task");
    assert_eq!(waited, text("busy done"));
    assert!(stored.is_ok(), "the batch's lease was lost: {stored:?}");
    assert_eq!(
        here.await.expect("caller in the batch's process"),
        text("run 1")
    );
    assert_eq!(elsewhere.await.expect("caller elsewhere"), text("run 1"));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    owner.await.expect("owner task").expect("complete");
    case.assert_every_record_expires().await;
}

/// Spawns one `check_and_lock` of `key` with `fingerprint` and `options` on `service`.
fn spawn_check(
    service: &IdempotencyService,
    key: &Key,
    fingerprint: Fingerprint,
    options: CallOptions,
) -> tokio::task::JoinHandle<CheckOutcome> {
    let (service, key) = (service.clone(), key.clone());
    tokio::spawn(async move { check(&service, &key, &fingerprint, &options).await })
}

/// Callers in one process share a claim only when the store would answer them alike. One
/// that compares fingerprints never gets the record that a caller that does not compare
/// replays (made with other arguments); one that does not compare is never refused because
/// a caller that compares was.
pub async fn callers_that_compare_fingerprints_never_share_an_answer_with_callers_that_do_not<
    F: Fixture,
>(
    f: &F,
) {
    let case = Case::new(f, "validation-flights");
    let service = case.service();
    let (lax, strict) = (
        CallOptions::new().validate_fingerprint(false),
        CallOptions::new(),
    );
    let claimed_with = |fingerprint| Record {
        fingerprint,
        token: Token::generate(),
        fence: 1,
        started_at: 0,
        state: RecordState::Processing { lease_until: None },
    };
    let completed_with = |fingerprint| Record {
        fingerprint,
        token: Token::generate(),
        fence: 1,
        started_at: 0,
        state: RecordState::Completed {
            response: text("made with A"),
            completed_at: 1,
        },
    };
    let (a, b) = (fp(0xA), fp(0xB));

    // A caller that does not compare waits on a claim made with A; one that compares, with
    // B, comes along in the same process; then the claim with A completes.
    let key = Key::new("lax-first");
    let store_key = case.store_key(&key);
    let kept = case.lease * 20;
    case.fixture
        .insert_raw(&store_key, claimed_with(a), kept)
        .await;
    let first = spawn_check(&service, &key, b, lax.clone());
    case.sleep(case.lease / 4).await;
    let second = spawn_check(&service, &key, b, strict.clone());
    case.sleep(case.lease / 4).await;
    case.fixture
        .insert_raw(&store_key, completed_with(a), kept)
        .await;

    assert_eq!(replayed(first.await.expect("first")), text("made with A"));
    assert_mismatch(second.await.expect("second"), a);

    // A caller that compares waits on a claim made with B, as it is; one that does not
    // compare comes along; then the claim is replaced by a record made with A.
    let key = Key::new("strict-first");
    let store_key = case.store_key(&key);
    case.fixture
        .insert_raw(&store_key, claimed_with(b), kept)
        .await;
    let first = spawn_check(&service, &key, b, strict);
    case.sleep(case.lease / 4).await;
    let second = spawn_check(&service, &key, b, lax);
    case.sleep(case.lease / 4).await;
    case.fixture
        .insert_raw(&store_key, completed_with(a), kept)
        .await;

    assert_mismatch(first.await.expect("first"), a);
    assert_eq!(replayed(second.await.expect("second")), text("made with A"));
    case.assert_every_record_expires().await;
}

/// The size cap counts the body's bytes and the bytes of header names and values, nothing
/// else: a result of exactly the cap is stored and replayed, one byte more is recorded as
/// not replayable.
pub async fn a_result_exactly_at_the_size_cap_is_stored_and_one_byte_more_is_not<F: Fixture>(
    f: &F,
) {
    let mut case = Case::new(f, "size-cap");
    case.settings.max_response_bytes = 100;
    let service = case.service();
    // 90 body bytes and a header of 4 + 6 bytes.
    let at_cap = Response::new(201, Body::bytes(vec![b'x'; 90])).with_header("Etag", "abcdef");
    let over = Response::new(201, Body::bytes(vec![b'x'; 91])).with_header("Etag", "abcdef");
    let (kept, refused) = (Key::new("at-cap"), Key::new("over-cap"));

    let lease = acquire(&service, &kept, &fp(1)).await;
    let stored = service.complete(&lease, at_cap.clone()).await;
    let lease = acquire(&service, &refused, &fp(1)).await;
    let too_large = service.complete(&lease, over).await;

    assert!(stored.is_ok(), "{stored:?}");
    match too_large {
        Err(Error::ResultTooLarge { key, size, limit }) => {
            assert_eq!((key.as_str(), size, limit), ("over-cap", 101, 100));
        }
        other => panic!("expected the result to be too large, got {other:?}"),
    }
    let replay = check(&case.service(), &kept, &fp(1), &wait_not()).await;
    assert_eq!(replayed(replay), at_cap);
    match check(&case.service(), &refused, &fp(1), &wait_not()).await {
        CheckOutcome::NotReplayable(record) => {
            assert_eq!(record.status(), RecordStatus::NotReplayable);
        }
        other => panic!("expected not replayable, got {other:?}"),
    }
    case.assert_every_record_expires().await;
}

/// A lease a batch holds can still be lost while another item waits (here its record is
/// deleted by force); the batch then claims the key again within the item's budget, and
/// answers with the new lease, never the lost one.
pub async fn a_batch_claims_again_a_lease_it_lost_while_another_item_waited<F: Fixture>(f: &F) {
    let case = Case::new(f, "batch-relost");
    let (busy, fresh) = (Key::new("busy"), Key::new("fresh"));
    let other = case.service();
    let owned = acquire(&other, &busy, &fp(1)).await;
    let owner = {
        let body = tokio::time::sleep(case.lease * 2);
        tokio::spawn(async move {
            other.keep_alive(&owned, body).await;
            other.complete(&owned, text("busy done")).await
        })
    };
    let batch = {
        let batcher = case.service();
        let (busy, fresh) = (busy.clone(), fresh.clone());
        tokio::spawn(async move {
            let options = CallOptions::new();
            let item = |key| BatchItem {
                key,
                fingerprint: &FP1,
                options: &options,
            };
            let mut outcomes = batcher
                .check_and_lock_many(&[item(&busy), item(&fresh)])
                .await
                .into_iter();
            let waited = outcomes.next().expect("two answers").expect("no error");
            let Some(Ok(CheckOutcome::Acquired(lease))) = outcomes.next() else {
                panic!("the fresh key is acquired again by the batch");
            };
            let claimed = record(&batcher, &fresh).await.expect("the new claim");
            let stored = batcher.complete(&lease, text("fresh done")).await;
            (replayed(waited), claimed.token == *lease.token(), stored)
        })
    };

    case.sleep(case.lease / 2).await;
    let deleted = case.service().delete(&fresh, true).await.expect("delete");

    let (waited, current, stored) = batch.await.expect("batch task");
    assert_eq!(deleted, DeleteReply::Deleted);
    assert_eq!(waited, text("busy done"));
    assert!(
        current,
        "the batch answered with a lease the store does not hold"
    );
    assert!(stored.is_ok(), "{stored:?}");
    let replay = check(&case.service(), &fresh, &fp(1), &wait_not()).await;
    assert_eq!(replayed(replay), text("fresh done"));
    owner.await.expect("owner task").expect("complete");
    case.assert_every_record_expires().await;
}
