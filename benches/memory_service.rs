//! The service over the in-memory store: a first call (claim, then complete) and a replay.
//!
//! These figures are the cost of idem's own code with no network in the way: key checks,
//! the in-process flight, the token, the store's lock and the record clones. The Redis
//! figures come from `examples/loadgen.rs`, which measures them against a raw-client floor.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use idem::{Body, CallOptions, CheckOutcome, IdempotencyService, Key, Response};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime")
}

fn service(ttl: Duration) -> IdempotencyService {
    IdempotencyService::builder(idem::MemoryStore::new())
        .ttl(ttl)
        .build()
        .expect("valid settings")
}

async fn first_call(service: &IdempotencyService, key: &Key, options: &CallOptions) {
    let fp = idem::fingerprint(&(key.id(), 1999_u64)).expect("finite");
    match service.check_and_lock(key, &fp, options).await {
        Ok(CheckOutcome::Acquired(lease)) => {
            let body = Body::json(&"receipt").expect("serializable");
            service
                .complete(&lease, Response::ok(body))
                .await
                .expect("completed");
        }
        other => panic!("a new key must be acquired, got {other:?}"),
    }
}

fn bench_memory_service(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("memory_service");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let options = CallOptions::new();

    // A short TTL lets the store's sweep drop the records of finished iterations, so the
    // map does not grow for the whole run.
    let fresh = service(Duration::from_secs(1));
    let counter = AtomicU64::new(0);
    group.bench_function("fresh_claim_complete", |b| {
        b.to_async(&rt).iter(|| async {
            let n = counter.fetch_add(1, Ordering::Relaxed);
            let key = Key::scoped("bench", format!("order-{n}"));
            first_call(&fresh, &key, &options).await;
        })
    });

    let replayed = service(Duration::from_secs(3600));
    let key = Key::scoped("bench", "order-replayed");
    let fp = idem::fingerprint(&(key.id(), 1999_u64)).expect("finite");
    rt.block_on(first_call(&replayed, &key, &options));
    group.bench_function("replay", |b| {
        b.to_async(&rt).iter(|| async {
            match replayed.check_and_lock(&key, &fp, &options).await {
                Ok(CheckOutcome::Completed(record)) => record,
                other => panic!("a completed key must replay, got {other:?}"),
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench_memory_service);
criterion_main!(benches);
