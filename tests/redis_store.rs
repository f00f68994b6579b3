//! What is particular to the Redis store: the record layout an operator reads with
//! `redis-cli`, records of an unknown format version, and the eviction-policy check.

#[path = "support/redis_calls.rs"]
mod redis_calls;
#[path = "support/redis_harness.rs"]
mod redis_harness;

use std::collections::HashMap;
use std::time::Duration;

use idem::store::redis::{EvictionPolicyError, RedisStore, RedisStoreOptions};
use idem::store::{Claim, ClaimReply, Finish};
use idem::{Body, Response, Store, StoreError, Token};
use redis_calls::{fp, store};
use redis_harness::RedisServer;

const KEY: &str = "idem-test:{0::order-7}";

fn hgetall(server: &RedisServer, key: &str) -> HashMap<String, String> {
    server.cmd(&["HGETALL", key])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_hashes_an_operator_can_read() {
    let server = RedisServer::start();
    let store = store(&server.url()).await;
    let token = Token::from_stored("owner-1");
    let lease = Duration::from_secs(2);
    let claim = Claim {
        key: KEY,
        fingerprint: &fp(0xab),
        validate_fingerprint: true,
        token: &token,
        lease,
    };

    let ClaimReply::Acquired {
        fence, lease_until, ..
    } = store.claim(claim).await.unwrap()
    else {
        panic!("a fresh key is acquired");
    };
    let processing = hgetall(&server, KEY);
    let processing_pttl: i64 = server.cmd(&["PTTL", KEY]);
    let response = Response::new(201, Body::json(&"ok").unwrap()).with_header("Location", "/o/7");
    let ttl = Duration::from_secs(60);
    store
        .complete(KEY, &token, &Finish::Completed(response), ttl)
        .await
        .unwrap();
    let completed = hgetall(&server, KEY);
    let completed_pttl: i64 = server.cmd(&["PTTL", KEY]);

    let mut names: Vec<&str> = processing.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(names, ["fence", "fp", "lu", "sa", "st", "tok", "v"]);
    assert_eq!(processing["v"], "1");
    assert_eq!(processing["st"], "processing");
    assert_eq!(processing["fp"], "ab".repeat(32));
    assert_eq!(processing["tok"], "owner-1");
    assert_eq!(processing["fence"], fence.to_string());
    assert_eq!(processing["lu"], lease_until.to_string());
    // Kept one lease past the lease's end: between one and two leases from now.
    assert!(
        (1000..=4000).contains(&processing_pttl),
        "{processing_pttl}"
    );

    let mut names: Vec<&str> = completed.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(
        names,
        ["body", "bt", "ca", "code", "fence", "fp", "hdr", "sa", "st", "tok", "v"]
    );
    assert_eq!(completed["st"], "completed");
    assert_eq!(completed["code"], "201");
    assert_eq!(completed["bt"], "json");
    assert_eq!(completed["body"], "\"ok\"");
    assert_eq!(completed["hdr"], r#"[["Location","/o/7"]]"#);
    assert!(
        (59_000..=60_000).contains(&completed_pttl),
        "{completed_pttl}"
    );
    server.assert_every_key_expires();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_of_an_unknown_format_version_is_corrupt_on_every_path() {
    let server = RedisServer::start();
    let store = store(&server.url()).await;
    let token = Token::from_stored("owner-1");
    let _: i64 = server.cmd(&["HSET", KEY, "v", "9", "st", "processing", "tok", "owner-1"]);
    let _: i64 = server.cmd(&["PEXPIRE", KEY, "60000"]);
    let claim = Claim {
        key: KEY,
        fingerprint: &fp(1),
        validate_fingerprint: true,
        token: &token,
        lease: Duration::from_secs(1),
    };
    let finish = Finish::Completed(Response::ok(Body::json(&1).unwrap()));

    let claimed = store.claim(claim).await;
    let completed = store
        .complete(KEY, &token, &finish, Duration::from_secs(1))
        .await;
    let renewed = store.renew(KEY, &token, Duration::from_secs(1)).await;
    let released = store.release(KEY, &token).await;
    let read = store.get(KEY).await;
    let deleted = store.delete(KEY, false).await;

    for (what, corrupt) in [
        (
            "claim",
            matches!(&claimed, Err(StoreError::Corrupt(m)) if m.contains("format version 9")),
        ),
        ("complete", matches!(completed, Err(StoreError::Corrupt(_)))),
        ("renew", matches!(renewed, Err(StoreError::Corrupt(_)))),
        ("release", matches!(released, Err(StoreError::Corrupt(_)))),
        (
            "get",
            matches!(&read, Err(StoreError::Corrupt(m)) if m.contains("\"9\"")),
        ),
        ("delete", matches!(deleted, Err(StoreError::Corrupt(_)))),
    ] {
        assert!(corrupt, "{what} did not report the record as corrupt");
    }
    let untouched: HashMap<String, String> = hgetall(&server, KEY);
    assert_eq!(untouched["v"], "9", "nothing overwrote the record");
    assert_eq!(
        store.delete(KEY, true).await.unwrap(),
        idem::DeleteReply::Deleted,
        "a forced delete clears it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicting_server_is_refused_in_strict_mode_and_accepted_otherwise() {
    let server = RedisServer::start_with(&["--maxmemory-policy", "allkeys-lru"]);
    let strict = RedisStoreOptions {
        strict_eviction_check: true,
        ..RedisStoreOptions::default()
    };

    let refused = RedisStore::connect_with(&server.url(), strict).await;
    let accepted = RedisStore::connect(&server.url()).await;

    let Err(StoreError::Command(error)) = refused else {
        panic!("strict mode refuses an evicting server: {refused:?}");
    };
    let error = error.downcast_ref::<EvictionPolicyError>().expect("typed");
    assert_eq!(error.policy, "allkeys-lru");
    assert!(accepted.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_refuses_config_skips_the_check_and_works() {
    let server = RedisServer::start_with(&["--rename-command", "CONFIG", ""]);
    let strict = RedisStoreOptions {
        strict_eviction_check: true,
        ..RedisStoreOptions::default()
    };

    let store = RedisStore::connect_with(&server.url(), strict)
        .await
        .expect("the check is skipped, not failed");
    let record = store.get(KEY).await;

    assert!(matches!(record, Ok(None)), "{record:?}");
}
