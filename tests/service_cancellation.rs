//! Owners that vanish: a dropped future or a panic frees the key after its lease, and no
//! waiter is left hanging.

mod support;

use std::time::Duration;

use futures::poll;
use idem::{CallOptions, CheckOutcome, Error, IdempotencyService, Key, Lease, MemoryStore};
use support::{service, text, FP, LEASE};
use tokio::time::timeout;

/// The whole life of one call: claim, a body that never ends on its own, completion.
async fn owner(service: IdempotencyService, key: Key) -> Result<(), Error> {
    match service
        .check_and_lock(&key, &FP, &CallOptions::new())
        .await?
    {
        CheckOutcome::Acquired(lease) => {
            service
                .keep_alive(&lease, std::future::pending::<()>())
                .await;
            service.complete(&lease, text("never")).await
        }
        other => panic!("expected to acquire, got {other:?}"),
    }
}

/// A call bounded by two leases, so a hang fails the test instead of stalling it.
async fn bounded_call(service: &IdempotencyService, key: &Key) -> Lease {
    let options = CallOptions::new();
    let call = service.check_and_lock(key, &FP, &options);
    match timeout(LEASE * 2, call).await {
        Ok(Ok(CheckOutcome::Acquired(lease))) => lease,
        Ok(other) => panic!("expected a takeover, got {other:?}"),
        Err(_) => panic!("the call still hung after two leases"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_dropped_owner_future_leaves_the_key_to_the_next_caller_within_two_leases() {
    let store = MemoryStore::new();
    let service = service(&store);
    let key = Key::new("charge-1");
    let mut running = Box::pin(owner(service.clone(), key.clone()));
    assert!(poll!(&mut running).is_pending());

    drop(running);
    let lease = bounded_call(&service, &key).await;

    assert!(lease.is_takeover());
    service
        .complete(&lease, text("charged"))
        .await
        .expect("complete");
}

#[tokio::test(start_paused = true)]
async fn a_waiter_that_joined_before_the_owner_was_dropped_also_returns() {
    let store = MemoryStore::new();
    let service = service(&store);
    let key = Key::new("charge-1");
    let mut running = Box::pin(owner(service.clone(), key.clone()));
    assert!(poll!(&mut running).is_pending());
    let waiter = tokio::spawn({
        let (service, key) = (service.clone(), key.clone());
        async move { bounded_call(&service, &key).await }
    });
    // Let the waiter join the owner's flight before the owner goes.
    tokio::time::sleep(Duration::from_millis(10)).await;

    drop(running);
    let lease = waiter.await.expect("the waiter returns");

    assert!(lease.is_takeover());
    service
        .complete(&lease, text("charged"))
        .await
        .expect("complete");
}

#[tokio::test(start_paused = true)]
async fn an_owner_that_panics_in_a_spawned_task_frees_the_key_after_its_lease() {
    let store = MemoryStore::new();
    let service = service(&store);
    let key = Key::new("charge-1");
    let panicking = tokio::spawn({
        let (service, key) = (service.clone(), key.clone());
        async move {
            let outcome = service.check_and_lock(&key, &FP, &CallOptions::new()).await;
            let Ok(CheckOutcome::Acquired(lease)) = outcome else {
                panic!("expected to acquire");
            };
            service
                .keep_alive(&lease, async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    panic!("the body failed");
                })
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let waiter = tokio::spawn({
        let (service, key) = (service.clone(), key.clone());
        async move { bounded_call(&service, &key).await }
    });

    assert!(panicking.await.expect_err("the owner panicked").is_panic());
    let lease = waiter.await.expect("the waiter returns");
    assert!(lease.is_takeover());
    service
        .complete(&lease, text("charged"))
        .await
        .expect("complete");
}

#[tokio::test(start_paused = true)]
async fn a_leader_dropped_while_waiting_does_not_strand_its_joiners() {
    let store = MemoryStore::new();
    let (elsewhere, here) = (service(&store), service(&store));
    let key = Key::new("charge-1");
    let CheckOutcome::Acquired(lease) = elsewhere
        .check_and_lock(&key, &FP, &CallOptions::new())
        .await
        .expect("claim")
    else {
        panic!("expected to acquire");
    };
    let call = |service: &IdempotencyService| {
        let (service, key) = (service.clone(), key.clone());
        tokio::spawn(async move {
            let options = CallOptions::new();
            let call = service.check_and_lock(&key, &FP, &options);
            timeout(LEASE * 2, call).await
        })
    };
    let leader = call(&here);
    tokio::time::sleep(Duration::from_millis(10)).await;
    let joiner = call(&here);
    tokio::time::sleep(Duration::from_millis(10)).await;

    leader.abort();
    elsewhere
        .complete(&lease, text("charged"))
        .await
        .expect("complete");

    match joiner.await.expect("joiner task") {
        Ok(Ok(CheckOutcome::Completed(record))) => {
            assert_eq!(record.status(), idem::RecordStatus::Completed)
        }
        other => panic!("expected the joiner to replay, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_waiter_takes_over_a_lease_its_own_process_let_lapse() {
    let store = MemoryStore::new();
    let service = service(&store);
    let key = Key::new("charge-1");
    let CheckOutcome::Acquired(hung) = service
        .check_and_lock(&key, &FP, &CallOptions::new())
        .await
        .expect("claim")
    else {
        panic!("expected to acquire");
    };

    // The hung owner is alive but never renews: a caller in its own process waits one
    // lease, then takes over like a caller in any other process.
    let taken = bounded_call(&service, &key).await;

    assert!(taken.is_takeover());
    assert!(taken.fence() > hung.fence());
    service
        .complete(&taken, text("charged"))
        .await
        .expect("complete");
    let late = service.complete(&hung, text("hung")).await;
    assert!(matches!(late, Err(Error::LeaseLost { .. })), "{late:?}");
}
