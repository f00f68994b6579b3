//! What is particular to the Redis store: the record layout an operator reads with
//! `redis-cli GET`, records of an unknown format version or of the old hash layout, and the
//! eviction-policy check.

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

fn get(server: &RedisServer, key: &str) -> String {
    let value: Vec<u8> = server.cmd(&["GET", key]);
    String::from_utf8(value).expect("these records are UTF-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_strings_an_operator_can_read() {
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
    let processing = get(&server, KEY);
    let processing_pttl: i64 = server.cmd(&["PTTL", KEY]);
    let response = Response::new(201, Body::json(&"ok").unwrap()).with_header("Location", "/o/7");
    let ttl = Duration::from_secs(60);
    store
        .complete(KEY, &token, &Finish::Completed(response), ttl)
        .await
        .unwrap();
    let completed = get(&server, KEY);
    let completed_pttl: i64 = server.cmd(&["PTTL", KEY]);

    let fp = "ab".repeat(32);
    let started_at = lease_until - 2000;
    assert_eq!(
        processing,
        format!("idem2 st=processing fp={fp} tok=owner-1 fence={fence} sa={started_at} ls=2000\n")
    );
    // Two leases: the lease, then one more so a takeover sees whose claim it replaces.
    assert!(
        (3000..=4000).contains(&processing_pttl),
        "{processing_pttl}"
    );

    let (header, payload) = completed.split_once('\n').expect("a header line");
    let fields: Vec<&str> = header.split(' ').collect();
    assert_eq!(
        fields[..6],
        [
            "idem2",
            "st=completed",
            &format!("fp={fp}"),
            "tok=owner-1",
            &format!("fence={fence}"),
            &format!("sa={started_at}"),
        ]
    );
    assert!(fields[6].starts_with("ca="), "{header}");
    assert_eq!(fields[7..], ["code=201", "hl=21"]);
    assert_eq!(payload, r#"[["Location","/o/7"]]"ok""#);
    assert!(
        (59_000..=60_000).contains(&completed_pttl),
        "{completed_pttl}"
    );
    server.assert_every_key_expires();
}

/// Every store operation on the record under [`KEY`], and whether each reported it as
/// corrupt (with the text it must contain, when given).
async fn every_path_reports_corrupt(store: &RedisStore, claim_says: &str, get_says: &str) {
    let token = Token::from_stored("owner-1");
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
            matches!(&claimed, Err(StoreError::Corrupt(m)) if m.contains(claim_says)),
        ),
        ("complete", matches!(completed, Err(StoreError::Corrupt(_)))),
        ("renew", matches!(renewed, Err(StoreError::Corrupt(_)))),
        ("release", matches!(released, Err(StoreError::Corrupt(_)))),
        (
            "get",
            matches!(&read, Err(StoreError::Corrupt(m)) if m.contains(get_says)),
        ),
        ("delete", matches!(deleted, Err(StoreError::Corrupt(_)))),
    ] {
        assert!(corrupt, "{what} did not report the record as corrupt");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_of_an_unknown_format_version_is_corrupt_on_every_path() {
    let server = RedisServer::start();
    let store = store(&server.url()).await;
    let planted = "idem9 st=processing tok=owner-1\n";
    let _: String = server.cmd(&["SET", KEY, planted, "PX", "60000"]);

    every_path_reports_corrupt(&store, "format version \"9\"", "\"9\"").await;

    assert_eq!(get(&server, KEY), planted, "nothing overwrote the record");
    assert_eq!(
        store.delete(KEY, true).await.unwrap(),
        idem::DeleteReply::Deleted,
        "a forced delete clears it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hash_record_of_format_version_one_is_corrupt_on_every_path() {
    let server = RedisServer::start();
    let store = store(&server.url()).await;
    let _: i64 = server.cmd(&["HSET", KEY, "v", "1", "st", "processing", "tok", "owner-1"]);
    let _: i64 = server.cmd(&["PEXPIRE", KEY, "60000"]);

    every_path_reports_corrupt(&store, "format version 1", "format version 1").await;

    let untouched: HashMap<String, String> = server.cmd(&["HGETALL", KEY]);
    assert_eq!(untouched["v"], "1", "nothing overwrote the record");
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
