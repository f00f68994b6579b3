//! Driving an idempotency service by hand in the Redis tests: one call runs a body under a
//! key, or replays the stored value.

#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use idem::store::redis::{RedisStore, RedisStoreOptions};
use idem::{
    Body, CallOptions, CheckOutcome, Error, Fingerprint, Idempotency, IdempotencyService, Key,
    Response,
};

/// What one call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// This call owned the key and ran the body, which returned the value.
    Ran(String),
    /// The value was stored by another call and replayed.
    Replayed(String),
}

impl Call {
    /// The value, ran or replayed.
    pub fn value(&self) -> &str {
        match self {
            Call::Ran(v) | Call::Replayed(v) => v,
        }
    }
}

/// The fingerprint `n` repeated: tests need distinct fingerprints, not real digests.
pub fn fp(n: u8) -> Fingerprint {
    Fingerprint::from_bytes([n; 32])
}

/// Claims `key`; when acquired runs `body` (renewing the lease meanwhile) and stores its
/// value; when finished replays the stored value.
pub async fn call<F>(
    service: &IdempotencyService,
    key: &Key,
    fingerprint: &Fingerprint,
    options: &CallOptions,
    body: F,
) -> Result<Call, Error>
where
    F: Future<Output = String>,
{
    match service.check_and_lock(key, fingerprint, options).await? {
        CheckOutcome::Acquired(lease) => {
            let value = service.keep_alive(&lease, body).await;
            let response = Response::ok(Body::json(&value).expect("a string is JSON"));
            service.complete(&lease, response).await?;
            Ok(Call::Ran(value))
        }
        CheckOutcome::Completed(record) => {
            let idem::RecordState::Completed { response, .. } = record.state else {
                unreachable!("a completed outcome holds a completed record");
            };
            Ok(Call::Replayed(
                response.body.decode().expect("stored JSON string"),
            ))
        }
        other => panic!("unexpected outcome for {key}: {other:?}"),
    }
}

/// A store on `url` with short timeouts, so a dead server fails a test fast.
pub async fn store(url: &str) -> RedisStore {
    let options = RedisStoreOptions {
        connection_timeout: Duration::from_millis(500),
        response_timeout: Duration::from_secs(1),
        ..RedisStoreOptions::default()
    };
    RedisStore::connect_with(url, options)
        .await
        .expect("connecting to the harness server")
}

/// A service over `store` with `lease` as its lock timeout and a short wait budget.
pub fn service(store: RedisStore, lease: Duration) -> IdempotencyService {
    IdempotencyService::builder(store)
        .key_prefix("idem-test:")
        .lock_timeout(lease)
        .wait_timeout(Duration::from_secs(10))
        .build()
        .expect("valid settings")
}

/// Options whose timeouts are so long that they mean "never".
pub fn never_timing_out() -> RedisStoreOptions {
    RedisStoreOptions {
        connection_timeout: Duration::MAX,
        response_timeout: Duration::MAX,
        fallback_poll: Duration::MAX,
        ..RedisStoreOptions::default()
    }
}

/// Runs a key's whole life on `service`: a first call whose body takes a moment, a
/// duplicate that waits for it, a replay and a delete. Panics on any other outcome.
pub async fn whole_life(service: &IdempotencyService, key: &Key) {
    let (options, fingerprint) = (CallOptions::new(), fp(1));
    let first = call(service, key, &fingerprint, &options, async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        "ran".to_owned()
    });
    let duplicate = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        call(service, key, &fp(1), &options, async {
            "ran twice".to_owned()
        })
        .await
    };
    let (first, duplicate) = tokio::join!(first, duplicate);
    assert_eq!(
        first.expect("the first call"),
        Call::Ran("ran".into()),
        "{key}"
    );
    let replayed = Call::Replayed("ran".into());
    assert_eq!(duplicate.expect("the duplicate"), replayed, "{key}");
    let replay = call(service, key, &fingerprint, &options, async {
        "again".to_owned()
    })
    .await;
    assert_eq!(replay.expect("the replay"), replayed, "{key}");
    service.delete(key, false).await.expect("the delete");
}
