//! The Redis store under many callers, and what one call costs in Redis round trips.

#[path = "support/redis_calls.rs"]
mod redis_calls;
#[path = "support/redis_harness.rs"]
mod redis_harness;
#[path = "support/redis_monitor.rs"]
mod redis_monitor;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idem::{CallOptions, IdempotencyService, Key};
use redis_calls::{call, fp, service, store, Call};
use redis_harness::RedisServer;
use redis_monitor::Requests;

/// The claims and script calls clients sent since the last look (`MONITOR` leaves out the
/// commands scripts run); subscriptions are not counted.
async fn round_trips(requests: &mut Requests) -> u64 {
    let sent = requests.take().await;
    sent.iter()
        .filter(|c| ["set", "evalsha", "eval"].contains(&c.as_str()))
        .count() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_call_costs_two_round_trips_and_a_replay_one() {
    let server = RedisServer::start();
    let lease = Duration::from_secs(5);
    let a = service(store(&server.url()).await, lease);
    let b = service(store(&server.url()).await, lease);
    let opts = CallOptions::new();
    let one = fp(1);
    // Cache the scripts, so the counts are those of a running service.
    call(&a, &Key::new("warm-up"), &fp(1), &opts, async {
        "w".to_owned()
    })
    .await
    .unwrap();

    let mut requests = Requests::watch(&server).await;
    let fresh = call(&a, &Key::new("k1"), &fp(1), &opts, async { "v".to_owned() }).await;
    let fresh_trips = round_trips(&mut requests).await;
    let replay = call(&b, &Key::new("k1"), &fp(1), &opts, async { "x".to_owned() }).await;
    let replay_trips = round_trips(&mut requests).await;

    // A duplicate in the same process joins the owner's claim and asks Redis nothing.
    let key = Key::new("k2");
    let slow = || async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        "v2".to_owned()
    };
    let (owner, joiner) = tokio::join!(call(&a, &key, &one, &opts, slow()), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        call(&a, &key, &one, &opts, slow()).await
    });
    let same_process_trips = round_trips(&mut requests).await;

    // A duplicate in another process claims, finds the key busy, waits for the owner's
    // completion to be published, and claims again.
    let key = Key::new("k3");
    let (owner3, other) = tokio::join!(call(&a, &key, &one, &opts, slow()), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        call(&b, &key, &one, &opts, slow()).await
    });
    let other_process_trips = round_trips(&mut requests).await;

    println!(
        "round trips: fresh {fresh_trips}, replay {replay_trips}, \
         duplicate in process {} (owner 2), duplicate in another process {} (owner 2)",
        same_process_trips - 2,
        other_process_trips - 2
    );
    assert_eq!(fresh.unwrap(), Call::Ran("v".into()));
    assert_eq!(replay.unwrap(), Call::Replayed("v".into()));
    assert_eq!(owner.unwrap(), Call::Ran("v2".into()));
    assert_eq!(joiner.unwrap(), Call::Replayed("v2".into()));
    assert_eq!(owner3.unwrap(), Call::Ran("v2".into()));
    assert_eq!(other.unwrap(), Call::Replayed("v2".into()));
    assert_eq!(fresh_trips, 2);
    assert_eq!(replay_trips, 1);
    assert_eq!(same_process_trips, 2);
    assert!(
        other_process_trips >= 2 + 2,
        "busy, then finished: {other_process_trips}"
    );
    server.assert_every_key_expires();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_services_hammering_two_hundred_keys_run_each_body_once() {
    const SERVICES: usize = 5;
    const KEYS: usize = 200;
    const CALLERS_PER_KEY: usize = 20;
    let server = RedisServer::start();
    let mut services: Vec<IdempotencyService> = Vec::new();
    for _ in 0..SERVICES {
        services.push(service(store(&server.url()).await, Duration::from_secs(5)));
    }
    let runs: Arc<Mutex<HashMap<usize, u32>>> = Arc::default();
    let next_value = Arc::new(AtomicU64::new(0));

    let mut tasks = Vec::with_capacity(KEYS * CALLERS_PER_KEY);
    for caller in 0..CALLERS_PER_KEY {
        for k in 0..KEYS {
            let svc = services[(k + caller) % SERVICES].clone();
            let (runs, next_value) = (Arc::clone(&runs), Arc::clone(&next_value));
            tasks.push(tokio::spawn(async move {
                let body = async move {
                    *runs.lock().unwrap().entry(k).or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    format!("run-{}", next_value.fetch_add(1, Ordering::SeqCst))
                };
                let key = Key::scoped("hammer", format!("key-{k}"));
                (k, call(&svc, &key, &fp(1), &CallOptions::new(), body).await)
            }));
        }
    }
    let mut results: HashMap<usize, Vec<Call>> = HashMap::new();
    let all = async {
        for task in tasks {
            let (k, result) = task.await.expect("caller task");
            results.entry(k).or_default().push(result.expect("call"));
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("4000 calls finish");

    let runs = runs.lock().unwrap();
    assert_eq!(runs.len(), KEYS);
    assert!(runs.values().all(|&n| n == 1), "a body ran twice: {runs:?}");
    for (k, calls) in &results {
        assert_eq!(calls.len(), CALLERS_PER_KEY);
        let owners: Vec<&Call> = calls.iter().filter(|c| matches!(c, Call::Ran(_))).collect();
        assert_eq!(owners.len(), 1, "key-{k}: {calls:?}");
        let value = owners[0].value();
        assert!(
            calls.iter().all(|c| c.value() == value),
            "key-{k}: {calls:?}"
        );
    }
    server.assert_every_key_expires();
}
