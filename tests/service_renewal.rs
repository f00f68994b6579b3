//! Lease renewal: `keep_alive` keeps a long body's lease, and reports a lost one.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use idem::{CallOptions, CheckOutcome, Error, IdempotencyService, Key, Response, MIN_LOCK_TIMEOUT};
use support::faulty_store::{Fault, FaultyStore, Op};
use support::{replayed, service, text, FP, LEASE};

async fn replay_of(service: &IdempotencyService, key: &Key) -> Response {
    replayed(service.check_and_lock(key, &FP, &CallOptions::new()).await)
}

#[tokio::test(start_paused = true)]
async fn a_body_running_five_leases_under_keep_alive_is_never_taken_over() {
    let store = FaultyStore::new();
    let (owner_service, other_service) = (service(&store), service(&store));
    let key = Key::new("export-1");
    let runs = Arc::new(AtomicUsize::new(0));
    let CheckOutcome::Acquired(lease) = owner_service
        .check_and_lock(&key, &FP, &CallOptions::new())
        .await
        .expect("claim")
    else {
        panic!("expected to acquire");
    };
    let owner = {
        let (service, runs) = (owner_service.clone(), Arc::clone(&runs));
        tokio::spawn(async move {
            runs.fetch_add(1, Ordering::SeqCst);
            service
                .keep_alive(&lease, tokio::time::sleep(LEASE * 5))
                .await;
            service.complete(&lease, text("export")).await
        })
    };

    tokio::time::sleep(LEASE * 3 / 2).await;
    let same_process = tokio::spawn({
        let (service, key) = (owner_service.clone(), key.clone());
        async move { replay_of(&service, &key).await }
    });
    tokio::time::sleep(LEASE * 3 / 2).await;
    let other_process = replay_of(&other_service, &key).await;

    assert_eq!(other_process, text("export"));
    assert_eq!(same_process.await.expect("joiner"), text("export"));
    owner.await.expect("owner").expect("complete");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    // A renewal every third of the lease, over five leases.
    assert!(
        store.calls(Op::Renew) >= 14,
        "{} renewals",
        store.calls(Op::Renew)
    );
}

/// The shortest lease a service accepts is renewed before it ends, every time: an owner
/// that keeps it alive for fifty leases is never taken over by another process.
#[tokio::test(start_paused = true)]
async fn a_lease_of_the_minimum_length_kept_alive_is_never_taken_over() {
    let store = FaultyStore::new();
    let build = || {
        IdempotencyService::builder(store.clone())
            .lock_timeout(MIN_LOCK_TIMEOUT)
            .build()
            .expect("the minimum lease is accepted")
    };
    let (owner_service, other_service) = (build(), build());
    let key = Key::new("export-1");
    let CheckOutcome::Acquired(lease) = owner_service
        .check_and_lock(&key, &FP, &CallOptions::new())
        .await
        .expect("claim")
    else {
        panic!("expected to acquire");
    };
    let owner = {
        let service = owner_service.clone();
        tokio::spawn(async move {
            let body = tokio::time::sleep(MIN_LOCK_TIMEOUT * 50);
            service.keep_alive(&lease, body).await;
            service.complete(&lease, text("export")).await
        })
    };

    tokio::time::sleep(MIN_LOCK_TIMEOUT * 5 / 2).await;
    let no_wait = CallOptions::new().wait(false);
    let elsewhere = other_service.check_and_lock(&key, &FP, &no_wait).await;
    assert!(
        matches!(elsewhere, Ok(CheckOutcome::InProgress { .. })),
        "{elsewhere:?}"
    );
    let waiter = replay_of(&other_service, &key).await;

    assert_eq!(waiter, text("export"));
    owner.await.expect("owner").expect("complete");
}

#[tokio::test(start_paused = true)]
async fn a_renewal_refused_by_the_store_is_retried_at_the_next_tick() {
    let store = FaultyStore::new();
    let service = service(&store);
    let key = Key::new("export-1");
    store.inject(Op::Renew, Fault::Refuse, 1);
    let CheckOutcome::Acquired(lease) = service
        .check_and_lock(&key, &FP, &CallOptions::new())
        .await
        .expect("claim")
    else {
        panic!("expected to acquire");
    };

    let probe = async {
        tokio::time::sleep(LEASE * 2).await;
        let other = IdempotencyService::builder(store.clone())
            .build()
            .expect("valid");
        other
            .check_and_lock(&key, &FP, &CallOptions::new().wait(false))
            .await
    };
    let probe = service.keep_alive(&lease, probe).await;

    assert!(
        matches!(probe, Ok(CheckOutcome::InProgress { .. })),
        "{probe:?}"
    );
    assert!(!lease.is_lost());
    service
        .complete(&lease, text("done"))
        .await
        .expect("complete");
}

#[tokio::test(start_paused = true)]
async fn a_lost_lease_stops_renewal_lets_the_body_finish_and_fails_the_completion() {
    let store = FaultyStore::new();
    let (owner_service, rival_service) = (service(&store), service(&store));
    let key = Key::new("export-1");
    // Renewals at 1/3, 2/3, 3/3 and 4/3 of the lease fail, so the lease lapses.
    store.inject(Op::Renew, Fault::Refuse, 4);
    let CheckOutcome::Acquired(lease) = owner_service
        .check_and_lock(&key, &FP, &CallOptions::new())
        .await
        .expect("claim")
    else {
        panic!("expected to acquire");
    };
    let rival = async {
        tokio::time::sleep(LEASE * 12 / 10).await;
        let options = CallOptions::new().wait(false);
        match rival_service.check_and_lock(&key, &FP, &options).await {
            Ok(CheckOutcome::Acquired(taken)) => taken,
            other => panic!("expected the rival to take over, got {other:?}"),
        }
    };

    let (body_output, taken) = tokio::join!(
        owner_service.keep_alive(&lease, async {
            tokio::time::sleep(LEASE * 3).await;
            "body finished"
        }),
        rival
    );

    assert_eq!(body_output, "body finished");
    assert!(lease.is_lost());
    // Four refused renewals, then the one that found the lease lost, then no more.
    assert_eq!(store.calls(Op::Renew), 5);
    let late = owner_service.complete(&lease, text("stale")).await;
    assert!(matches!(late, Err(Error::LeaseLost { .. })), "{late:?}");
    rival_service
        .complete(&taken, text("rival"))
        .await
        .expect("complete");
    assert_eq!(replay_of(&owner_service, &key).await, text("rival"));
}
