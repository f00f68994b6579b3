//! The Redis store under the faults real deployments see: the script cache emptied, the
//! server restarted or killed, a reply lost after the command ran, an owner that dies, and
//! an owner that completes after it was taken over. Every test runs its own `redis-server`
//! and ends by checking that every key idem wrote expires.

#[path = "support/redis_calls.rs"]
mod redis_calls;
#[path = "support/redis_harness.rs"]
mod redis_harness;
#[path = "support/redis_proxy.rs"]
mod redis_proxy;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use idem::store::redis::{RedisStore, RedisStoreOptions};
use idem::{
    Body, CallOptions, CheckOutcome, Error, Idempotency, IdempotencyService, Key, RecordState,
    Response, StoreError,
};
use redis_calls::{call, fp, service, store, Call};
use redis_harness::RedisServer;
use redis_proxy::CutProxy;

/// A bound for calls that must not wait out a lease or hang; far above their real time.
const NO_HANG: Duration = Duration::from_secs(10);

fn counted(runs: &Arc<AtomicU32>, value: &str) -> impl std::future::Future<Output = String> {
    let runs = Arc::clone(runs);
    let value = value.to_owned();
    async move {
        runs.fetch_add(1, Ordering::SeqCst);
        value
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_flush_between_calls_costs_nothing_but_a_reload() {
    let server = RedisServer::start();
    let svc = service(store(&server.url()).await, Duration::from_secs(2));
    let runs = Arc::new(AtomicU32::new(0));
    let opts = CallOptions::new();
    let first = Key::new("before-flush");
    let second = Key::new("after-flush");

    let before = call(&svc, &first, &fp(1), &opts, counted(&runs, "v1")).await;
    server.script_flush();
    server.reset_stats();
    let after = call(&svc, &second, &fp(1), &opts, counted(&runs, "v2")).await;
    let replay = call(&svc, &first, &fp(1), &opts, counted(&runs, "again")).await;

    assert_eq!(before.unwrap(), Call::Ran("v1".into()));
    assert_eq!(after.unwrap(), Call::Ran("v2".into()));
    assert_eq!(replay.unwrap(), Call::Replayed("v1".into()));
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    let stats = server.command_calls();
    // The first script after the flush (the completion; claims and replays are plain `SET`s)
    // fell back to EVAL once.
    assert_eq!(stats.get("eval").copied(), Some(1), "{stats:?}");
    server.assert_every_key_expires();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restarted_empty_between_calls_serves_them_again() {
    let mut server = RedisServer::start();
    let svc = service(store(&server.url()).await, Duration::from_secs(2));
    let runs = Arc::new(AtomicU32::new(0));
    let opts = CallOptions::new();
    let key = Key::new("k");

    let before = call(&svc, &key, &fp(1), &opts, counted(&runs, "v1")).await;
    server.kill9();
    server.restart();
    let after = tokio::time::timeout(
        NO_HANG,
        call(&svc, &key, &fp(1), &opts, counted(&runs, "v2")),
    )
    .await
    .expect("the call returns");

    assert_eq!(before.unwrap(), Call::Ran("v1".into()));
    // The server kept nothing (no persistence), so the key is new to it and runs again:
    // Redis durability bounds idem's guarantee.
    assert_eq!(after.unwrap(), Call::Ran("v2".into()));
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    let replay = call(&svc, &key, &fp(1), &opts, counted(&runs, "v3")).await;
    assert_eq!(replay.unwrap(), Call::Replayed("v2".into()));
    server.assert_every_key_expires();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_reply_was_lost_is_recognised_by_its_token() {
    let server = RedisServer::start();
    let proxy = CutProxy::start(server.port()).await;
    let lease = Duration::from_secs(30);
    let svc = service(store(&proxy.url()).await, lease);
    let runs = Arc::new(AtomicU32::new(0));
    let opts = CallOptions::new();
    // Cache the scripts first, so the lost reply is the claim's own, not a NOSCRIPT.
    call(
        &svc,
        &Key::new("warm-up"),
        &fp(1),
        &opts,
        counted(&runs, "w"),
    )
    .await
    .unwrap();

    proxy.cut_next_reply();
    let key = Key::new("k");
    let first = tokio::time::timeout(
        NO_HANG,
        call(&svc, &key, &fp(1), &opts, counted(&runs, "v1")),
    )
    .await
    .expect("the retried claim does not wait out its own 30 s lease");
    let again = call(&svc, &key, &fp(1), &opts, counted(&runs, "v2")).await;

    assert_eq!(proxy.cuts(), 1);
    assert_eq!(first.unwrap(), Call::Ran("v1".into()));
    assert_eq!(again.unwrap(), Call::Replayed("v1".into()));
    assert_eq!(runs.load(Ordering::SeqCst), 2, "warm-up and k, once each");
    let status = server
        .record_field("idem-test:{0::k}", "st")
        .expect("a record");
    assert_eq!(status, "completed");
    server.assert_every_key_expires();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_whose_reply_was_lost_counts_as_applied() {
    let server = RedisServer::start();
    let proxy = CutProxy::start(server.port()).await;
    let svc = service(store(&proxy.url()).await, Duration::from_secs(30));
    let key = Key::new("k");
    let CheckOutcome::Acquired(lease) = svc
        .check_and_lock(&key, &fp(1), &CallOptions::new())
        .await
        .unwrap()
    else {
        panic!("a fresh key is acquired");
    };

    proxy.cut_next_reply();
    let body = Body::json(&"v1").unwrap();
    let completed = svc.complete(&lease, Response::ok(body.clone())).await;

    assert_eq!(proxy.cuts(), 1);
    completed.expect("the retried completion finds its own result");
    let record = svc.get(&key).await.unwrap().expect("stored");
    let RecordState::Completed { response, .. } = record.state else {
        panic!("completed, got {:?}", record.state);
    };
    assert_eq!(response.body, body);
    assert_eq!(record.token, *lease.token());
    server.assert_every_key_expires();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_while_an_owner_runs_gives_typed_store_errors_and_runs_nothing() {
    let mut server = RedisServer::start();
    let svc = service(store(&server.url()).await, Duration::from_millis(500));
    let key = Key::new("k");
    let CheckOutcome::Acquired(lease) = svc
        .check_and_lock(&key, &fp(1), &CallOptions::new())
        .await
        .unwrap()
    else {
        panic!("a fresh key is acquired");
    };

    server.kill9();
    let completed = tokio::time::timeout(
        NO_HANG,
        svc.complete(&lease, Response::ok(Body::json(&"v1").unwrap())),
    )
    .await
    .expect("complete returns");
    let runs = Arc::new(AtomicU32::new(0));
    let other = Key::new("other");
    let fresh = tokio::time::timeout(
        NO_HANG,
        call(
            &svc,
            &other,
            &fp(1),
            &CallOptions::new(),
            counted(&runs, "never"),
        ),
    )
    .await
    .expect("the call returns");

    assert!(
        matches!(
            &completed,
            Err(Error::Store {
                source: StoreError::Connection(_),
                ..
            })
        ),
        "{completed:?}"
    );
    assert!(
        matches!(
            &fresh,
            Err(Error::Store {
                source: StoreError::Connection(_),
                ..
            })
        ),
        "{fresh:?}"
    );
    assert_eq!(
        runs.load(Ordering::SeqCst),
        0,
        "fail-closed: no body without the store"
    );

    // Restarted without persistence, the server forgot the claim: the key is free at once
    // and the next call runs the operation (a second time, for its side effects).
    server.restart();
    let after = call(
        &svc,
        &key,
        &fp(1),
        &CallOptions::new(),
        counted(&runs, "v2"),
    )
    .await;
    assert_eq!(after.unwrap(), Call::Ran("v2".into()));
    server.assert_every_key_expires();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persisted_claim_survives_a_kill_and_is_taken_over_once_its_lease_lapses() {
    let mut server = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let lease = Duration::from_millis(300);
    let owner = service(store(&server.url()).await, lease);
    let key = Key::new("k");
    let CheckOutcome::Acquired(first) = owner
        .check_and_lock(&key, &fp(1), &CallOptions::new())
        .await
        .unwrap()
    else {
        panic!("a fresh key is acquired");
    };

    server.kill9();
    server.restart();
    let status = server
        .record_field("idem-test:{0::k}", "st")
        .expect("a record");
    assert_eq!(status, "processing", "the claim was persisted");
    let callers = race_for_the_key(&server, &key, lease, 10).await;

    assert_one_takeover(&server, &callers, first.fence());
    server.assert_every_key_expires();
    drop(first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_owner_is_taken_over_by_exactly_one_caller_after_its_lease() {
    let server = RedisServer::start();
    let lease = Duration::from_millis(300);
    let owner = service(store(&server.url()).await, lease);
    let key = Key::new("k");
    let (claimed_tx, claimed_rx) = tokio::sync::oneshot::channel();
    let owner_task = tokio::spawn({
        let key = key.clone();
        async move {
            let outcome = owner
                .check_and_lock(&key, &fp(1), &CallOptions::new())
                .await;
            let Ok(CheckOutcome::Acquired(lease)) = outcome else {
                panic!("a fresh key is acquired: {outcome:?}");
            };
            let _ = claimed_tx.send(lease.fence());
            // The owner renews while it runs; it dies (is dropped) before finishing.
            owner.keep_alive(&lease, std::future::pending::<()>()).await;
        }
    });
    let first_fence = claimed_rx.await.expect("the owner claimed");
    // Let a renewal or two happen, then kill only the owner.
    tokio::time::sleep(lease).await;
    owner_task.abort();
    let _ = owner_task.await;

    let callers = race_for_the_key(&server, &key, lease, 10).await;

    assert_one_takeover(&server, &callers, first_fence);
    server.assert_every_key_expires();
}

/// Exactly one of `callers` ran the body, every caller got its value, and the record under
/// the key `k` carries a fence above `previous`.
fn assert_one_takeover(server: &RedisServer, callers: &[Call], previous: u64) {
    let ran: Vec<&Call> = callers
        .iter()
        .filter(|c| matches!(c, Call::Ran(_)))
        .collect();
    assert_eq!(ran.len(), 1, "exactly one caller takes over: {callers:?}");
    let value = ran[0].value().to_owned();
    assert!(callers.iter().all(|c| c.value() == value), "{callers:?}");
    let fence: u64 = server
        .record_field("idem-test:{0::k}", "fence")
        .and_then(|f| f.parse().ok())
        .expect("a record with a fence");
    assert!(fence > previous, "the takeover has a higher fence");
}

/// `callers` concurrent calls for `key` from three services on separate connections; each
/// caller that runs the body returns its own index.
async fn race_for_the_key(
    server: &RedisServer,
    key: &Key,
    lease: Duration,
    callers: usize,
) -> Vec<Call> {
    let mut services: Vec<IdempotencyService> = Vec::new();
    for _ in 0..3 {
        services.push(service(store(&server.url()).await, lease));
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(callers));
    let tasks: Vec<_> = (0..callers)
        .map(|i| {
            let svc = services[i % services.len()].clone();
            let key = key.clone();
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                let body = async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    format!("caller-{i}")
                };
                call(&svc, &key, &fp(1), &CallOptions::new(), body).await
            })
        })
        .collect();
    let mut calls = Vec::new();
    for task in tasks {
        let result = tokio::time::timeout(NO_HANG, task).await.expect("bounded");
        calls.push(result.expect("task").expect("call"));
    }
    calls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_after_a_takeover_is_lost_and_the_new_owners_result_stays() {
    let server = RedisServer::start();
    let lease = Duration::from_millis(300);
    let a = service(store(&server.url()).await, lease);
    let b = service(store(&server.url()).await, lease);
    let key = Key::new("k");
    let opts = CallOptions::new();

    let CheckOutcome::Acquired(lease_a) = a.check_and_lock(&key, &fp(1), &opts).await.unwrap()
    else {
        panic!("a fresh key is acquired");
    };
    // A's body runs without renewing: its lease lapses at 300 ms, and its record stays one
    // more lease (to 600 ms) so B's claim at 450 ms is a takeover, not a fresh claim.
    tokio::time::sleep(Duration::from_millis(450)).await;
    let CheckOutcome::Acquired(lease_b) = b.check_and_lock(&key, &fp(1), &opts).await.unwrap()
    else {
        panic!("B takes over the lapsed lease");
    };
    let a_done = a
        .complete(&lease_a, Response::ok(Body::json(&"from-a").unwrap()))
        .await;
    let raw_owner = server
        .record_field("idem-test:{0::k}", "tok")
        .expect("a record");
    let b_done = b
        .complete(&lease_b, Response::ok(Body::json(&"from-b").unwrap()))
        .await;

    assert!(lease_b.is_takeover());
    assert!(lease_b.fence() > lease_a.fence());
    assert!(matches!(a_done, Err(Error::LeaseLost { .. })), "{a_done:?}");
    assert_eq!(
        raw_owner,
        lease_b.token().as_str(),
        "A's completion changed nothing"
    );
    b_done.unwrap();
    let replay = call(&a, &key, &fp(1), &opts, async { "never".to_owned() }).await;
    assert_eq!(replay.unwrap(), Call::Replayed("from-b".into()));
    let raw_owner = server
        .record_field("idem-test:{0::k}", "tok")
        .expect("a record");
    assert_eq!(raw_owner, lease_b.token().as_str());
    server.assert_every_key_expires();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_a_dead_server_is_a_connection_error() {
    let mut server = RedisServer::start();
    let url = server.url();
    server.kill9();
    let options = RedisStoreOptions {
        connection_timeout: Duration::from_millis(500),
        ..RedisStoreOptions::default()
    };

    let connected = tokio::time::timeout(
        NO_HANG,
        idem::store::redis::RedisStore::connect_with(&url, options),
    )
    .await
    .expect("connect returns");

    assert!(
        matches!(connected, Err(StoreError::Connection(_))),
        "{connected:?}"
    );
}

/// A loopback proxy to `upstream` that forwards its first connection (the store's command
/// connection) and accepts but never answers the later ones (the pub/sub connection): a
/// partition that drops one connection's packets. Returns its port.
async fn black_hole_after_first(upstream: u16) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free loopback port");
    let port = listener.local_addr().expect("bound").port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        for accepted in 0..16 {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            if accepted == 0 {
                tokio::spawn(async move {
                    let upstream = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await;
                    if let Ok(mut upstream) = upstream {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut upstream).await;
                    }
                });
            } else {
                held.push(inbound);
            }
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_notifications_never_connect_still_keeps_its_wait_budget() {
    let server = RedisServer::start();
    let owner = service(store(&server.url()).await, Duration::from_secs(30));
    let key = Key::new("order-9");
    let CheckOutcome::Acquired(_held) = owner
        .check_and_lock(&key, &fp(1), &CallOptions::new())
        .await
        .expect("the owner claims")
    else {
        panic!("a fresh key is acquired");
    };
    let port = black_hole_after_first(server.port()).await;
    let waiter = service(
        store(&format!("redis://127.0.0.1:{port}/")).await,
        Duration::from_secs(30),
    );

    let waited = tokio::time::timeout(
        NO_HANG,
        waiter.check_and_lock(
            &key,
            &fp(1),
            &CallOptions::new().wait_timeout(Duration::from_secs(1)),
        ),
    )
    .await;

    let answer = waited.expect("the waiter returned instead of hanging on its subscription");
    assert!(
        matches!(answer, Err(Error::WaitTimeout { .. })),
        "{answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_fails_a_call_closed_after_the_services_attempts_not_more() {
    let server = RedisServer::start();
    let response_timeout = Duration::from_millis(500);
    let options = RedisStoreOptions {
        response_timeout,
        ..RedisStoreOptions::default()
    };
    let store = RedisStore::connect_with(&server.url(), options)
        .await
        .expect("connects");
    let svc = service(store, Duration::from_secs(30));
    let runs = Arc::new(AtomicU32::new(0));

    server.freeze(true);
    // The service sends a claim three times; each may wait one response timeout. A store
    // that also resent timed-out commands would wait three times as long.
    let bound = response_timeout * 3 + Duration::from_secs(2);
    let called = tokio::time::timeout(
        bound,
        call(
            &svc,
            &Key::new("k"),
            &fp(1),
            &CallOptions::new(),
            counted(&runs, "never"),
        ),
    )
    .await;
    server.freeze(false);

    let answer = called.expect("the call failed closed within the service's attempts");
    assert!(
        matches!(
            answer,
            Err(Error::Store {
                source: StoreError::Connection(_),
                ..
            })
        ),
        "{answer:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}
