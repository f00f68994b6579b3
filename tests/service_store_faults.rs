//! Store faults: slow, failing and ambiguous calls, and a store that is down.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use idem::{
    CallOptions, CheckOutcome, Error, ErrorPolicy, Fingerprint, Idempotency, IdempotencyService,
    Key, Lease, RecordState, RecordStatus, StoreError,
};
use support::capture::Capture;
use support::faulty_store::{Fault, FaultyStore, Op};
use support::{replayed, service, text, FP, LEASE};
use tokio::time::Instant;

fn fail_open(store: &FaultyStore) -> IdempotencyService {
    IdempotencyService::builder(store.clone())
        .lock_timeout(LEASE)
        .error_policy(ErrorPolicy::FailOpen)
        .build()
        .expect("valid settings")
}

async fn acquire(service: &IdempotencyService, key: &Key) -> Lease {
    match service.check_and_lock(key, &FP, &CallOptions::new()).await {
        Ok(CheckOutcome::Acquired(lease)) => lease,
        other => panic!("expected to acquire, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_caller_arriving_while_a_completion_is_in_flight_waits_and_replays() {
    let store = FaultyStore::new();
    let (owner_service, other_service) = (service(&store), service(&store));
    let key = Key::new("order-1");
    let runs = Arc::new(AtomicUsize::new(0));
    store.inject(Op::Complete, Fault::Delay(Duration::from_millis(200)), 1);
    let lease = acquire(&owner_service, &key).await;
    runs.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(10)).await;

    let completion = tokio::spawn({
        let service = owner_service.clone();
        async move { service.complete(&lease, text("order 77")).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let options = CallOptions::new();
    let (elsewhere, here) = tokio::join!(
        other_service.check_and_lock(&key, &FP, &options),
        owner_service.check_and_lock(&key, &FP, &options),
    );

    completion
        .await
        .expect("completion task")
        .expect("complete");
    assert_eq!(replayed(elsewhere), text("order 77"));
    assert_eq!(replayed(here), text("order 77"));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_takeover_that_reaches_the_store_after_the_owner_completed_replays_its_result() {
    let store = FaultyStore::new();
    let (owner_service, late_service) = (service(&store), service(&store));
    let key = Key::new("order-1");
    let lease = acquire(&owner_service, &key).await;
    tokio::time::sleep(LEASE + Duration::from_millis(1)).await;
    // The late caller decides to claim while the lease looks lapsed, but its claim is slow
    // to arrive; the owner completes in between.
    store.inject(Op::Claim, Fault::Delay(Duration::from_millis(100)), 1);

    let late = tokio::spawn({
        let (service, key) = (late_service.clone(), key.clone());
        async move { service.check_and_lock(&key, &FP, &CallOptions::new()).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    owner_service
        .complete(&lease, text("order 77"))
        .await
        .expect("complete");

    assert_eq!(replayed(late.await.expect("late task")), text("order 77"));
}

#[tokio::test(start_paused = true)]
async fn a_completion_refused_twice_is_retried_until_stored() {
    let store = FaultyStore::new();
    let service = service(&store);
    let key = Key::new("order-1");
    store.inject(Op::Complete, Fault::Refuse, 2);
    let lease = acquire(&service, &key).await;

    service
        .complete(&lease, text("order 77"))
        .await
        .expect("complete");

    assert_eq!(store.calls(Op::Complete), 3);
    let record = service.get(&key).await.expect("get").expect("record");
    assert_eq!(record.status(), RecordStatus::Completed);
}

#[tokio::test(start_paused = true)]
async fn a_completion_whose_reply_was_lost_counts_as_stored_on_its_retry() {
    let store = FaultyStore::new();
    let service = service(&store);
    let key = Key::new("order-1");
    store.inject(Op::Complete, Fault::LoseReply, 1);
    let lease = acquire(&service, &key).await;

    service
        .complete(&lease, text("order 77"))
        .await
        .expect("complete");

    assert_eq!(store.calls(Op::Complete), 2);
    assert_eq!(
        replayed(service.check_and_lock(&key, &FP, &CallOptions::new()).await),
        text("order 77")
    );
}

#[tokio::test(start_paused = true)]
async fn a_completion_that_always_fails_leaves_the_claim_to_lapse_not_deleted() {
    let store = FaultyStore::new();
    let (service, next_service) = (service(&store), service(&store));
    let key = Key::new("order-1");
    store.always(Op::Complete, Fault::Refuse);
    let lease = acquire(&service, &key).await;

    let stored = service.complete(&lease, text("order 77")).await;

    match stored {
        Err(Error::Store {
            key,
            source: StoreError::Connection(_),
        }) => assert_eq!(key, "order-1"),
        other => panic!("expected a store error, got {other:?}"),
    }
    assert_eq!(store.calls(Op::Complete), 3);
    assert_eq!((store.calls(Op::Release), store.calls(Op::Delete)), (0, 0));
    let kept = service
        .get(&key)
        .await
        .expect("get")
        .expect("the claim is kept");
    assert_eq!(kept.status(), RecordStatus::Processing);
    assert_eq!(kept.token, *lease.token());

    // Once the lease has run out, the next caller may run the operation again: the
    // documented window of a completion that never reached the store.
    let taken = acquire(&next_service, &key).await;
    assert!(taken.is_takeover());
}

#[tokio::test(start_paused = true)]
async fn a_claim_applied_but_unanswered_is_recognised_by_its_retry() {
    let store = FaultyStore::new();
    let service = service(&store);
    let key = Key::new("order-1");
    store.inject(Op::Claim, Fault::LoseReply, 1);
    let started = Instant::now();

    let lease = acquire(&service, &key).await;

    assert!(started.elapsed() < LEASE, "waited {:?}", started.elapsed());
    assert!(!lease.is_takeover());
    assert_eq!(store.calls(Op::Claim), 2);
    service
        .complete(&lease, text("order 77"))
        .await
        .expect("complete");
    let record = service.get(&key).await.expect("get").expect("record");
    assert_eq!(record.status(), RecordStatus::Completed);
}

#[tokio::test(start_paused = true)]
async fn a_claim_refused_once_is_sent_again() {
    let store = FaultyStore::new();
    let service = service(&store);
    let key = Key::new("order-1");
    store.inject(Op::Claim, Fault::Refuse, 1);

    let lease = acquire(&service, &key).await;

    assert_eq!(store.calls(Op::Claim), 2);
    service
        .complete(&lease, text("order 77"))
        .await
        .expect("complete");
}

#[tokio::test(start_paused = true)]
async fn a_store_that_is_down_fails_closed_without_acquiring() {
    let store = FaultyStore::new();
    let service = service(&store);
    let key = Key::new("order-1");
    store.down();
    let started = Instant::now();

    let outcome = service.check_and_lock(&key, &FP, &CallOptions::new()).await;

    match outcome {
        Err(Error::Store {
            key,
            source: StoreError::Connection(_),
        }) => assert_eq!(key, "order-1"),
        other => panic!("expected a store error, got {other:?}"),
    }
    // A bounded number of attempts, well inside one lease.
    assert_eq!(store.calls(Op::Claim), 3);
    assert!(started.elapsed() < LEASE, "took {:?}", started.elapsed());
}

#[tokio::test(start_paused = true)]
async fn a_store_that_is_down_is_bypassed_under_fail_open_with_a_warning() {
    let store = FaultyStore::new();
    let service = fail_open(&store);
    let key = Key::scoped("payments", "order-1");
    store.down();
    let capture = Capture::default();
    let _guard = capture.install();

    let outcome = service.check_and_lock(&key, &FP, &CallOptions::new()).await;

    match outcome {
        Ok(CheckOutcome::Bypassed {
            error: Error::Store { key, .. },
        }) => {
            assert_eq!(key, "payments/order-1")
        }
        other => panic!("expected a bypass, got {other:?}"),
    }
    let warnings = capture.with_message("fail-open");
    assert_eq!(warnings.len(), 1, "{:?}", capture.events());
    assert_eq!(warnings[0].level, tracing::Level::WARN);
    assert_eq!(warnings[0].field("key"), Some("payments/order-1"));
}

#[tokio::test(start_paused = true)]
async fn fail_open_never_bypasses_a_mismatch_or_a_wait_timeout() {
    let store = FaultyStore::new();
    let (owner, caller) = (service(&store), fail_open(&store));
    let key = Key::new("order-1");
    let _lease = acquire(&owner, &key).await;

    let other_arguments = Fingerprint::from_bytes([2; 32]);
    let mismatch = caller
        .check_and_lock(&key, &other_arguments, &CallOptions::new())
        .await;
    let short_wait = CallOptions::new().wait_timeout(LEASE / 2);
    let timed_out = caller.check_and_lock(&key, &FP, &short_wait).await;

    assert!(
        matches!(mismatch, Ok(CheckOutcome::Mismatch { stored: FP })),
        "{mismatch:?}"
    );
    assert!(
        matches!(timed_out, Err(Error::WaitTimeout { .. })),
        "{timed_out:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_store_failure_while_waiting_fails_closed() {
    let store = FaultyStore::new();
    let (owner, caller) = (service(&store), service(&store));
    let key = Key::new("order-1");
    let _lease = acquire(&owner, &key).await;
    store.always(Op::WaitForChange, Fault::Refuse);

    let outcome = caller.check_and_lock(&key, &FP, &CallOptions::new()).await;

    assert!(matches!(outcome, Err(Error::Store { .. })), "{outcome:?}");
}

/// A batch renews the leases it holds while another item waits; when the store refuses
/// every renewal for longer than a lease, the batch cannot vouch for the lease and answers
/// the store's error for that item instead of a lease that may have lapsed.
#[tokio::test(start_paused = true)]
async fn a_batch_whose_held_lease_cannot_be_renewed_answers_the_store_error() {
    let store = FaultyStore::new();
    let service = service(&store);
    let (busy, fresh) = (Key::new("busy"), Key::new("fresh"));
    // Held by a claim without a lease for three leases, then free.
    let held = idem::Record {
        fingerprint: FP,
        token: idem::Token::generate(),
        fence: 1,
        started_at: 0,
        state: RecordState::Processing { lease_until: None },
    };
    store
        .memory()
        .insert(&busy.store_key("idempotency:"), held, LEASE * 3);
    store.always(Op::Renew, Fault::Refuse);
    let options = CallOptions::new();
    let items = [
        idem::BatchItem {
            key: &busy,
            fingerprint: &FP,
            options: &options,
        },
        idem::BatchItem {
            key: &fresh,
            fingerprint: &FP,
            options: &options,
        },
    ];

    let mut outcomes = service.check_and_lock_many(&items).await.into_iter();

    match outcomes.next() {
        Some(Ok(CheckOutcome::Acquired(lease))) => assert_eq!(lease.key(), &busy),
        other => panic!("expected the freed key to be acquired, got {other:?}"),
    }
    match outcomes.next() {
        Some(Err(Error::Store { key, source })) => {
            assert_eq!(key, "fresh");
            assert!(matches!(source, StoreError::Connection(_)), "{source:?}");
        }
        other => panic!("expected the store's error, got {other:?}"),
    }
    assert!(store.calls(Op::Renew) >= 9, "{}", store.calls(Op::Renew));
}
