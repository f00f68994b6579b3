//! What a call costs in requests to Redis: a first call two (the claim's `SET NX GET`, the
//! completion script), a replay one (the `SET NX GET` that finds the record), callers that
//! join an in-flight call in the same process none at all, a waiter in another process at
//! most three claims, and a batch one request for all its first claims.
//!
//! Requests are counted with `MONITOR` (see `support/redis_monitor.rs`), which leaves out
//! the commands scripts run inside the server.

#[path = "support/redis_calls.rs"]
mod redis_calls;
#[path = "support/redis_harness.rs"]
mod redis_harness;
#[path = "support/redis_monitor.rs"]
mod redis_monitor;
#[path = "support/redis_proxy.rs"]
mod redis_proxy;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use idem::store::redis::{redis, RedisStore, RedisStoreOptions};
use idem::{BatchItem, Body, CallOptions, CheckOutcome, IdempotencyService, Key, Response};
use redis_calls::{call, fp, service, store, Call};
use redis_harness::RedisServer;
use redis_monitor::Requests;
use redis_proxy::CutProxy;

/// The digest `EVALSHA` names a script by: the SHA-1 of its files, in the order `script.rs`
/// joins them.
fn script_sha(files: &[&str]) -> String {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/idem-runtime/src/store/redis/");
    let read = |name: &&str| std::fs::read_to_string(format!("{dir}{name}")).expect("script");
    let source: String = files.iter().map(read).collect();
    redis::Script::new(&source).get_hash().to_owned()
}

async fn warmed_up_service(server: &RedisServer) -> IdempotencyService {
    let service = service(store(&server.url()).await, Duration::from_secs(5));
    // The first use of each script on a fresh server costs one more request (`NOSCRIPT`,
    // then `EVAL`); the counts below are for a server that has the scripts cached.
    let warm = Key::scoped("round-trips", "warm-up");
    call(&service, &warm, &fp(9), &CallOptions::new(), async {
        "warm".to_owned()
    })
    .await
    .expect("warm-up call");
    service
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_call_sends_exactly_two_requests_claim_and_complete() {
    let server = RedisServer::start();
    let service = warmed_up_service(&server).await;
    let mut requests = Requests::watch(&server).await;

    let key = Key::scoped("round-trips", "order-1");
    let outcome = call(&service, &key, &fp(1), &CallOptions::new(), async {
        "receipt-1".to_owned()
    })
    .await
    .expect("first call");

    assert_eq!(outcome, Call::Ran("receipt-1".to_owned()));
    let sent = requests.take_requests().await;
    let complete = script_sha(&["complete_untouched.lua", "record.lua", "complete.lua"]);
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(sent[0][0], "set");
    assert_eq!(sent[1], ["evalsha", complete.as_str()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_sends_exactly_one_request() {
    let server = RedisServer::start();
    let service = warmed_up_service(&server).await;
    let key = Key::scoped("round-trips", "order-2");
    call(&service, &key, &fp(2), &CallOptions::new(), async {
        "receipt-2".to_owned()
    })
    .await
    .expect("first call");
    let mut requests = Requests::watch(&server).await;

    let outcome = call(&service, &key, &fp(2), &CallOptions::new(), async {
        unreachable!("a completed key is replayed, not run")
    })
    .await
    .expect("replay");

    assert_eq!(outcome, Call::Replayed("receipt-2".to_owned()));
    assert_eq!(requests.take().await, ["set"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_joiners_send_no_request_while_they_wait() {
    let server = RedisServer::start();
    let service = warmed_up_service(&server).await;
    let key = Key::scoped("round-trips", "order-3");
    let runs = Arc::new(AtomicU32::new(0));
    server.reset_stats();
    let mut requests = Requests::watch(&server).await;

    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (service, key, runs) = (service.clone(), key.clone(), Arc::clone(&runs));
        callers.spawn(async move {
            call(&service, &key, &fp(3), &CallOptions::new(), async {
                runs.fetch_add(1, Ordering::SeqCst);
                // Long enough for every caller to have joined the flight before it ends.
                tokio::time::sleep(Duration::from_millis(500)).await;
                "receipt-3".to_owned()
            })
            .await
            .expect("call")
        });
    }
    let mut outcomes = Vec::new();
    while let Some(outcome) = callers.join_next().await {
        outcomes.push(outcome.expect("caller task"));
    }

    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let ran = outcomes
        .iter()
        .filter(|o| matches!(o, Call::Ran(_)))
        .count();
    assert_eq!(ran, 1);
    assert!(outcomes.iter().all(|o| o.value() == "receipt-3"));
    assert_eq!(requests.take().await, ["set", "evalsha"]);
    let stats = server.command_calls();
    assert_eq!(stats.get("evalsha"), Some(&1), "commandstats: {stats:?}");
    assert_eq!(stats.get("eval"), None, "commandstats: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_in_another_process_is_notified_and_claims_at_most_three_times() {
    let server = RedisServer::start();
    let owner = warmed_up_service(&server).await;
    // A fallback poll far beyond this test's waits: every wake-up below is a notification.
    let options = RedisStoreOptions {
        fallback_poll: Duration::from_secs(30),
        ..RedisStoreOptions::default()
    };
    let store = RedisStore::connect_with(&server.url(), options)
        .await
        .expect("store");
    let waiter = service(store, Duration::from_secs(5));
    let key = Key::scoped("round-trips", "order-4");
    let runs = Arc::new(AtomicU32::new(0));
    let CheckOutcome::Acquired(lease) = owner
        .check_and_lock(&key, &fp(4), &CallOptions::new())
        .await
        .expect("claim")
    else {
        panic!("a fresh key is acquired");
    };
    runs.fetch_add(1, Ordering::SeqCst);
    let mut requests = Requests::watch(&server).await;

    let waiting = tokio::spawn({
        let (waiter, key, runs) = (waiter.clone(), key.clone(), Arc::clone(&runs));
        async move {
            call(&waiter, &key, &fp(4), &CallOptions::new(), async move {
                runs.fetch_add(1, Ordering::SeqCst);
                "from-the-waiter".to_owned()
            })
            .await
        }
    });
    // The waiter's subscription is in place once it has marked the record as watched.
    let store_key = key.store_key(&owner.settings().key_prefix);
    while server.record_field(&store_key, "w").is_none() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let body = Body::json(&"from-the-owner").expect("JSON");
    owner
        .complete(&lease, Response::ok(body))
        .await
        .expect("complete");
    let waited = waiting.await.expect("waiter task").expect("waiter call");

    assert_eq!(waited, Call::Replayed("from-the-owner".to_owned()));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let sent = requests.take_requests().await;
    let claim = script_sha(&["record.lua", "claim.lua"]);
    let claims = sent
        .iter()
        .filter(|r| r[0] == "set" || (r[0] == "evalsha" && r[1] == claim))
        .count();
    // `SET NX GET` finds the owner, the claim script says busy, and after the notification
    // one `SET NX GET` finds the result.
    assert_eq!(claims, 3, "{sent:?}");
    assert!(sent.iter().any(|r| r[0] == "subscribe"), "{sent:?}");
    server.assert_every_key_expires();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_sends_its_first_claims_in_one_request_and_answers_in_order() {
    let server = RedisServer::start();
    let proxy = CutProxy::start(server.port()).await;
    let service = service(store(&proxy.url()).await, Duration::from_secs(5));
    let (done, other, fresh) = (
        Key::scoped("batch", "done"),
        Key::scoped("batch", "other-args"),
        Key::scoped("batch", "fresh"),
    );
    for key in [&done, &other] {
        call(&service, key, &fp(5), &CallOptions::new(), async {
            "stored".to_owned()
        })
        .await
        .expect("first call");
    }
    let options = CallOptions::new();
    let items = [
        BatchItem {
            key: &fresh,
            fingerprint: &fp(5),
            options: &options,
        },
        BatchItem {
            key: &done,
            fingerprint: &fp(5),
            options: &options,
        },
        BatchItem {
            key: &other,
            fingerprint: &fp(6),
            options: &options,
        },
    ];
    let mut requests = Requests::watch(&server).await;

    let chunks_before = proxy.chunks();
    let outcomes = service.check_and_lock_many(&items).await;
    let chunks = proxy.chunks() - chunks_before;
    let sent = requests.take().await;

    assert_eq!(sent, ["set", "set", "set"]);
    assert_eq!(chunks, 1, "the three claims went out in one write");
    let mut outcomes = outcomes.into_iter().map(|o| o.expect("no error"));
    let Some(CheckOutcome::Acquired(lease)) = outcomes.next() else {
        panic!("the fresh key is acquired");
    };
    assert_eq!(lease.key(), &fresh);
    match outcomes.next() {
        Some(CheckOutcome::Completed(record)) => {
            let idem::RecordState::Completed { response, .. } = record.state else {
                unreachable!("a completed outcome holds a completed record");
            };
            assert_eq!(response.body.decode::<String>().unwrap(), "stored");
        }
        other => panic!("expected a replay, got {other:?}"),
    }
    match outcomes.next() {
        Some(CheckOutcome::Mismatch { stored }) => assert_eq!(stored, fp(5)),
        other => panic!("expected a mismatch, got {other:?}"),
    }
    service
        .complete(&lease, Response::ok(Body::json(&"new").unwrap()))
        .await
        .expect("complete");
    server.assert_every_key_expires();
}
