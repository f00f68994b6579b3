//! What is particular to the Redis store: the record layout an operator reads with
//! `redis-cli GET`, records of an unknown format version or of the old hash layout, and the
//! eviction-policy check.

#[path = "support/redis_calls.rs"]
mod redis_calls;
#[path = "support/redis_harness.rs"]
mod redis_harness;

use std::collections::HashMap;
use std::time::Duration;

use idem::store::redis::{redis, EvictionPolicyError, RedisStore, RedisStoreOptions};
use idem::store::{Claim, ClaimReply, Finish, Owner};
use idem::{
    Body, CallOptions, CheckOutcome, Error, IdempotencyService, Key, Response, Store, StoreError,
    Token,
};
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
    // The completion script finishes a record its owner's claim left untouched without
    // reading the server's clock, and any other through the general path, which does:
    // both must write the same record.
    for (key, untouched) in [(KEY, true), ("idem-test:{0::order-8}", false)] {
        operator_reads_a_claim_and_its_completion(&server, &store, key, untouched).await;
    }
    server.assert_every_key_expires();
}

/// Claims the free `key` with fingerprint `fp(0xab)`: its fence and lease end.
async fn claim_fresh(store: &RedisStore, key: &str, token: &Token, lease: Duration) -> (u64, u64) {
    let claim = Claim {
        key,
        fingerprint: &fp(0xab),
        validate_fingerprint: true,
        token,
        lease,
    };
    match store.claim(claim).await.unwrap() {
        ClaimReply::Acquired {
            fence, lease_until, ..
        } => (fence, lease_until),
        other => panic!("a fresh key is acquired, not {other:?}"),
    }
}

async fn operator_reads_a_claim_and_its_completion(
    server: &RedisServer,
    store: &RedisStore,
    key: &str,
    untouched: bool,
) {
    let token = Token::from_stored("owner-1");
    let lease = Duration::from_secs(2);
    let (fence, lease_until) = claim_fresh(store, key, &token, lease).await;
    let processing = get(server, key);
    let processing_pttl: i64 = server.cmd(&["PTTL", key]);
    let response = Response::new(201, Body::json(&"ok").unwrap()).with_header("Location", "/o/7");
    let ttl = Duration::from_secs(60);
    let started_at = lease_until - 2000;
    let owner = Owner {
        key,
        token: &token,
        fingerprint: &fp(0xab),
        fence,
        started_at,
        lease,
        // An owner that took over does not know the record's bytes.
        takeover: !untouched,
    };
    let clock_reads = || server.command_calls().get("time").copied().unwrap_or(0);
    let before = clock_reads();
    store
        .complete(&owner, &Finish::Completed(response), ttl)
        .await
        .unwrap();
    assert_eq!(
        clock_reads() - before,
        u64::from(!untouched),
        "untouched: {untouched}"
    );
    let completed = get(server, key);
    let completed_pttl: i64 = server.cmd(&["PTTL", key]);

    let fp = "ab".repeat(32);
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
    let completed_at: u64 = fields[6]
        .strip_prefix("ca=")
        .and_then(|ca| ca.parse().ok())
        .unwrap_or_else(|| panic!("ca=<ms> in {header}"));
    assert!(completed_at >= started_at, "{header}");
    assert_eq!(fields[7..], ["code=201", "hl=21"]);
    assert_eq!(payload, r#"[["Location","/o/7"]]"ok""#);
    assert!(
        (59_000..=60_000).contains(&completed_pttl),
        "{completed_pttl}"
    );
}

/// Finishes a fresh claim of `key` with `finish`, the short way (the owner knows what its
/// claim wrote) or the general way (it does not, as after a takeover), and answers the
/// stored record with its `ca` field cut out, and what the completion replied.
async fn finished_record(
    server: &RedisServer,
    store: &RedisStore,
    key: &str,
    finish: &Finish,
    untouched: bool,
) -> (Vec<u8>, Result<idem::store::LeaseReply, StoreError>) {
    let token = Token::from_stored("owner-1");
    let lease = Duration::from_secs(2);
    let (fence, lease_until) = claim_fresh(store, key, &token, lease).await;
    let owner = Owner {
        key,
        token: &token,
        fingerprint: &fp(0xab),
        fence,
        started_at: lease_until - 2000,
        lease,
        takeover: !untouched,
    };
    let reply = store
        .complete(&owner, finish, Duration::from_secs(60))
        .await;
    let record: Vec<u8> = server.cmd(&["GET", key]);
    (without_fields(&record, &["ca="]), reply)
}

/// `record` with the header fields that start with any of `names` cut out.
fn without_fields(record: &[u8], names: &[&str]) -> Vec<u8> {
    let end = record
        .iter()
        .position(|b| *b == b'\n')
        .expect("a header line");
    let header = std::str::from_utf8(&record[..end]).expect("header lines are UTF-8");
    let kept: Vec<&str> = header
        .split(' ')
        .filter(|field| !names.iter().any(|name| field.starts_with(name)))
        .collect();
    [kept.join(" ").as_bytes(), &record[end..]].concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_ways_of_completing_store_the_same_record_for_every_outcome() {
    let server = RedisServer::start();
    let store = store(&server.url()).await;
    let with_headers = |r: Response| r.with_header("Location", "/o/7").with_header("X-A", "b c");
    let finishes = [
        Finish::Completed(with_headers(Response::new(201, Body::json(&"ok").unwrap()))),
        Finish::Completed(Response::ok(Body::bytes(&b"\x00\xffbytes\n"[..]))),
        Finish::Completed(Response::ok(Body::bytes(Vec::new()))),
        Finish::Failed(with_headers(Response::new(
            502,
            Body::bytes(&b"upstream"[..]),
        ))),
        Finish::Failed(Response::new(
            409,
            Body::json(&serde_json::json!({"e": 1})).unwrap(),
        )),
        Finish::NotReplayable("result of 9 bytes exceeds the 8-byte cap".to_owned()),
    ];
    for (n, finish) in finishes.iter().enumerate() {
        let short = format!("idem-test:{{0::short-{n}}}");
        let general = format!("idem-test:{{0::general-{n}}}");
        let (by_short, reply) = finished_record(&server, &store, &short, finish, true).await;
        assert!(
            matches!(reply, Ok(idem::store::LeaseReply::Applied { .. })),
            "{reply:?}"
        );
        let (by_general, reply) = finished_record(&server, &store, &general, finish, false).await;
        assert!(
            matches!(reply, Ok(idem::store::LeaseReply::Applied { .. })),
            "{reply:?}"
        );
        // Fences and claim times differ (each claim has its own); nothing else may.
        let fields = ["fence=", "sa="];
        assert_eq!(
            without_fields(&by_short, &fields),
            without_fields(&by_general, &fields),
            "{finish:?}"
        );
        let stored = store.get(&general).await.unwrap().expect("a record");
        let expected = match finish {
            Finish::Completed(response) => matches!(&stored.state,
                idem::RecordState::Completed { response: r, .. } if r == response),
            Finish::Failed(error) => matches!(&stored.state,
                idem::RecordState::Failed { error: e, .. } if e == error),
            Finish::NotReplayable(reason) => matches!(&stored.state,
                idem::RecordState::NotReplayable { reason: r, .. } if r == reason),
        };
        assert!(expected, "{finish:?} read back as {:?}", stored.state);
    }
    server.assert_every_key_expires();
}

// The completion script reads the owner token from the finished record's header line: a
// token with a space or a newline must not reach it, or it could pass for the owner's token
// followed by fields of the caller's making.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_with_a_token_that_cannot_stand_in_a_header_is_refused_and_changes_nothing() {
    let server = RedisServer::start();
    let store = store(&server.url()).await;
    let key = "idem-test:{0::forged}";
    let (token, lease) = (Token::generate(), Duration::from_secs(2));
    let (fence, lease_until) = claim_fresh(&store, key, &token, lease).await;
    let claimed: Vec<u8> = server.cmd(&["GET", key]);
    let fingerprint = fp(0xab);
    let owner = Owner {
        key,
        token: &token,
        fingerprint: &fingerprint,
        fence,
        started_at: lease_until - 2000,
        lease,
        takeover: true,
    };
    let intruder = Finish::Completed(Response::new(299, Body::json(&"intruder").unwrap()));
    let ttl = Duration::from_secs(60);
    for forged in [
        format!("{} fence=1 sa=1 ca=1 code=299\n", token.as_str()),
        format!("{} x", token.as_str()),
        format!("{}\n", token.as_str()),
    ] {
        let forged = Token::from_stored(forged);
        let forger = Owner {
            token: &forged,
            ..owner
        };
        let reply = store.complete(&forger, &intruder, ttl).await;
        assert!(
            matches!(&reply, Err(StoreError::Command(m)) if m.to_string().contains("forged")),
            "{forged:?}: {reply:?}"
        );
        assert_eq!(server.cmd::<Vec<u8>>(&["GET", key]), claimed, "{forged:?}");
    }
    let done = Finish::Completed(Response::ok(Body::json(&"mine").unwrap()));
    let reply = store.complete(&owner, &done, ttl).await;
    assert!(
        matches!(reply, Ok(idem::store::LeaseReply::Applied { .. })),
        "{reply:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_sent_again_the_general_way_is_applied_only_for_the_same_outcome() {
    let server = RedisServer::start();
    let store = store(&server.url()).await;
    let key = "idem-test:{0::again}";
    let first = Finish::Completed(
        Response::new(201, Body::bytes(&b"x"[..])).with_header("Location", "/o/7"),
    );
    let (_, reply) = finished_record(&server, &store, key, &first, false).await;
    assert!(
        matches!(reply, Ok(idem::store::LeaseReply::Applied { .. })),
        "{reply:?}"
    );
    let stored: Vec<u8> = server.cmd(&["GET", key]);
    let (token, fingerprint) = (Token::from_stored("owner-1"), fp(0xab));
    let owner = |fence| Owner {
        key,
        token: &token,
        fingerprint: &fingerprint,
        fence,
        started_at: 0,
        lease: Duration::from_secs(2),
        takeover: true,
    };
    let fence = store.get(key).await.unwrap().expect("a record").fence;
    let ttl = Duration::from_secs(60);
    // The same outcome again (its first reply was lost): applied, and nothing rewritten.
    let again = store.complete(&owner(fence), &first, ttl).await;
    assert!(
        matches!(again, Ok(idem::store::LeaseReply::Applied { .. })),
        "{again:?}"
    );
    assert_eq!(server.cmd::<Vec<u8>>(&["GET", key]), stored);
    // Any other outcome, or the same one with another status code, body type or headers,
    // must not pass for stored.
    let others = [
        Finish::Completed(
            Response::new(200, Body::bytes(&b"x"[..])).with_header("Location", "/o/7"),
        ),
        Finish::Completed(
            Response::new(201, Body::Json(b"x".to_vec().into())).with_header("Location", "/o/7"),
        ),
        Finish::Completed(Response::new(201, Body::bytes(&b"x"[..]))),
        Finish::Failed(Response::new(201, Body::bytes(&b"x"[..])).with_header("Location", "/o/7")),
        Finish::NotReplayable("x".to_owned()),
    ];
    for other in others {
        let reply = store.complete(&owner(fence), &other, ttl).await;
        assert!(
            matches!(reply, Ok(idem::store::LeaseReply::Lost)),
            "{other:?}: {reply:?}"
        );
        assert_eq!(server.cmd::<Vec<u8>>(&["GET", key]), stored, "{other:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_of_an_unknown_format_version_is_corrupt_on_every_path() {
    let server = RedisServer::start();
    let store = store(&server.url()).await;
    let planted = "idem9 st=processing tok=owner-1\n";
    let _: String = server.cmd(&["SET", KEY, planted, "PX", "60000"]);

    every_path_names(&store, "\"9\"", "a record of format version 9").await;

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

    every_path_names(&store, "format version 1", "a hash record").await;

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

/// Records whose header line an operator or a foreign writer garbled: every path refuses
/// them as corrupt, naming the key and the garbled field, without waiting, taking over or
/// writing anything; a forced delete clears them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbled_records_are_corrupt_on_every_path_naming_the_field_and_never_rewritten() {
    let server = RedisServer::start();
    let store = store(&server.url()).await;
    let service = IdempotencyService::builder(store.clone())
        .key_prefix("idem-test:")
        .wait_timeout(Duration::from_secs(2))
        .build()
        .expect("valid settings");
    let hex = fp(1).to_hex();
    let processing =
        |fields: &str| format!("idem2 st=processing fp={hex} tok=t fence=1 sa=1{fields}\n");
    let completed = |fields: &str, payload: &str| {
        format!("idem2 st=completed fp={hex} tok=t fence=1 sa=1 ca=1{fields}\n{payload}")
    };
    // (what is garbled, the record, what every path's error names)
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "lease end not a number",
            processing(" lu=abc"),
            "field `lu` is \"abc\"",
        ),
        (
            "lease end in exponent form",
            processing(" lu=1e400"),
            "field `lu` is \"1e400\"",
        ),
        (
            "lease end negative",
            processing(" lu=-1"),
            "field `lu` is \"-1\"",
        ),
        (
            "lease length negative",
            processing(" ls=-5"),
            "field `ls` is \"-5\"",
        ),
        (
            "lease length empty",
            processing(" ls="),
            "field `ls` is \"\"",
        ),
        (
            "fence past 2^53",
            format!("idem2 st=processing fp={hex} tok=t fence=9007199254740992 sa=1 ls=1000\n"),
            "field `fence` is \"9007199254740992\"",
        ),
        (
            "fence past u64",
            format!("idem2 st=processing fp={hex} tok=t fence=99999999999999999999999 sa=1 lu=1\n"),
            "field `fence`",
        ),
        (
            "claim time with a sign",
            format!("idem2 st=processing fp={hex} tok=t fence=1 sa=+1 ls=1000\n"),
            "field `sa` is \"+1\"",
        ),
        (
            "fingerprint short",
            "idem2 st=processing fp=abc tok=t fence=1 sa=1 ls=1000\n".to_owned(),
            "field `fp` is not a 64-digit hex fingerprint",
        ),
        (
            "completion time a fraction",
            completed(" code=200", "1").replace("ca=1", "ca=1.5"),
            "field `ca` is \"1.5\"",
        ),
        (
            "status code too large",
            completed(" code=70000", "1"),
            "status code 70000 is out of range",
        ),
        (
            "status code negative",
            completed(" code=-200", "1"),
            "field `code` is \"-200\"",
        ),
        (
            "header length past u64",
            completed(" code=200 hl=99999999999999999999", "{}"),
            "field `hl`",
        ),
        (
            "header length past the payload",
            completed(" code=200 hl=50", "{}"),
            "field `hl` is longer than the payload",
        ),
        (
            "body type unknown",
            completed(" code=200 bt=xml", "1"),
            "unknown body type \"xml\"",
        ),
        (
            "status code missing",
            completed("", "1"),
            "field `code` is missing",
        ),
        (
            "status unknown",
            format!("idem2 st=weird fp={hex} tok=t fence=1 sa=1\n"),
            "unknown status \"weird\"",
        ),
        (
            "carriage return before the newline",
            processing(" lu=5\r"),
            "the header line holds a control character",
        ),
        (
            "tab between fields",
            completed(" code=200\thl=0", "1"),
            "the header line holds a control character",
        ),
        (
            "tab inside the token",
            format!("idem2 st=processing fp={hex} tok=t\tu fence=1 sa=1 lu=5\n"),
            "the header line holds a control character",
        ),
    ];

    for (what, planted, names) in cases {
        let _: i64 = server.cmd(&["DEL", KEY]);
        let _: String = server.cmd(&["SET", KEY, &planted, "PX", "60000"]);

        every_path_names(&store, names, what).await;
        let key = Key::new("order-7");
        let called = service
            .check_and_lock(&key, &fp(1), &CallOptions::new())
            .await;
        assert!(
            matches!(&called, Err(Error::Store { key, source: StoreError::Corrupt(m) })
                if key == "order-7" && m.contains(names)),
            "{what}: a call got {called:?}"
        );

        assert_eq!(
            get(&server, KEY),
            planted,
            "{what}: the record was rewritten"
        );
        let left: i64 = server.cmd(&["PTTL", KEY]);
        assert!(
            (50_000..=60_000).contains(&left),
            "{what}: expiry moved to {left}"
        );
        assert_eq!(
            store.delete(KEY, true).await.unwrap(),
            idem::DeleteReply::Deleted,
            "{what}: a forced delete clears it"
        );
    }
    // The largest number a field may hold still reads.
    let largest =
        format!("idem2 st=completed fp={hex} tok=t fence=9007199254740991 sa=1 ca=1 code=200\n1");
    let _: String = server.cmd(&["SET", KEY, &largest, "PX", "60000"]);
    let read = store.get(KEY).await.unwrap().expect("a record");
    assert_eq!(read.fence, (1 << 53) - 1);
}

/// A processing record without a lease is held until it expires; one that never expires
/// would hold its key forever, and is corrupt rather than waited on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processing_record_without_a_lease_or_an_expiry_is_corrupt_not_waited_on() {
    let server = RedisServer::start();
    let store = store(&server.url()).await;
    let service = IdempotencyService::builder(store.clone())
        .key_prefix("idem-test:")
        .wait_timeout(Duration::from_secs(2))
        .build()
        .expect("valid settings");
    let planted = format!(
        "idem2 st=processing fp={} tok=t fence=1 sa=1\n",
        fp(1).to_hex()
    );
    let _: String = server.cmd(&["SET", KEY, &planted]);

    let called = service
        .check_and_lock(&Key::new("order-7"), &fp(1), &CallOptions::new())
        .await;

    assert!(
        matches!(&called, Err(Error::Store { source: StoreError::Corrupt(m), .. })
            if m.contains("without a lease never expires")),
        "{called:?}"
    );
    assert_eq!(
        get(&server, KEY),
        planted,
        "nothing marked or rewrote the record"
    );
    let _: i64 = server.cmd(&["DEL", KEY]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_claim_at_the_fence_limit_is_refused_and_other_keys_keep_small_fences() {
    let server = RedisServer::start();
    let store = store(&server.url()).await;
    let service = IdempotencyService::builder(store.clone())
        .key_prefix("idem-test:")
        .build()
        .expect("valid settings");
    // A lapsed claim (lease end 1 ms after the epoch) whose fence is the format's largest.
    let planted = format!(
        "idem2 st=processing fp={} tok=t fence=9007199254740991 sa=1 lu=1\n",
        fp(1).to_hex()
    );
    let _: String = server.cmd(&["SET", KEY, &planted, "PX", "60000"]);

    let taken = service
        .check_and_lock(&Key::new("order-7"), &fp(1), &CallOptions::new())
        .await;
    let CheckOutcome::Acquired(lease) = service
        .check_and_lock(&Key::new("order-8"), &fp(1), &CallOptions::new())
        .await
        .expect("a fresh key is claimed")
    else {
        panic!("a fresh key is acquired");
    };
    let completed = service
        .complete(&lease, Response::ok(Body::json(&"paid").unwrap()))
        .await;

    assert!(
        matches!(&taken, Err(Error::Store { source: StoreError::Corrupt(m), .. })
            if m.contains("fence") && m.contains("2^53 - 1 limit")),
        "{taken:?}"
    );
    assert_eq!(get(&server, KEY), planted, "the record was left as it was");
    assert!(lease.fence() < 1 << 53, "fence {}", lease.fence());
    assert!(completed.is_ok(), "{completed:?}");
    let _: i64 = server.cmd(&["DEL", KEY]);
}

/// Every store operation on the record under [`KEY`] answers corrupt, naming the key and
/// `names`.
async fn every_path_names(store: &RedisStore, names: &str, what: &str) {
    let token = Token::from_stored("t");
    let claim = Claim {
        key: KEY,
        fingerprint: &fp(1),
        validate_fingerprint: true,
        token: &token,
        lease: Duration::from_secs(1),
    };
    let finish = Finish::Completed(Response::ok(Body::json(&1).unwrap()));
    let owner = Owner {
        key: KEY,
        token: &token,
        fingerprint: &fp(1),
        fence: 1,
        started_at: 1,
        lease: Duration::from_secs(1),
        takeover: false,
    };
    let outcomes: [(&str, Result<(), StoreError>); 7] = [
        ("claim", store.claim(claim).await.map(drop)),
        ("claim_many", {
            let mut replies = store.claim_many(&[claim]).await;
            replies.pop().expect("one reply").map(drop)
        }),
        (
            "complete",
            store
                .complete(&owner, &finish, Duration::from_secs(1))
                .await
                .map(drop),
        ),
        (
            "renew",
            store
                .renew(KEY, &token, Duration::from_secs(1))
                .await
                .map(drop),
        ),
        ("release", store.release(KEY, &token).await.map(drop)),
        ("get", store.get(KEY).await.map(drop)),
        ("delete", store.delete(KEY, false).await.map(drop)),
    ];
    let key = format!("record under {KEY:?}: ");
    for (path, outcome) in outcomes {
        assert!(
            matches!(&outcome, Err(StoreError::Corrupt(m)) if m.starts_with(&key) && m.contains(names)),
            "{what}: {path} answered {outcome:?}, expected corrupt naming {names}"
        );
    }
}

fn one_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

fn two_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// How many reads of client connections the server has processed so far.
fn reads_processed(server: &RedisServer) -> u64 {
    let stats: String = server.cmd(&["INFO", "stats"]);
    stats
        .lines()
        .find_map(|line| line.strip_prefix("total_reads_processed:"))
        .and_then(|count| count.trim().parse().ok())
        .expect("Redis 6 or later reports total_reads_processed")
}

fn claim_for<'a>(key: &'a str, token: &'a Token) -> Claim<'a> {
    Claim {
        key,
        fingerprint: &FP_ONE,
        validate_fingerprint: true,
        token,
        lease: Duration::from_secs(5),
    }
}

const FP_ONE: idem::Fingerprint = idem::Fingerprint::from_bytes([1; 32]);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commands_go_out_together_and_each_gets_its_own_reply() {
    let server = RedisServer::start();
    let store = store(&server.url()).await;
    let keys: Vec<String> = (0..200)
        .map(|n| format!("idem-test:{{0::batch-{n}}}"))
        .collect();
    let tokens: Vec<Token> = keys.iter().map(|_| Token::generate()).collect();
    let before = reads_processed(&server);

    // Each caller a task of its own, as the requests of a server are.
    let claims: Vec<_> = keys
        .iter()
        .zip(&tokens)
        .map(|(key, token)| {
            let (store, key, token) = (store.clone(), key.clone(), token.clone());
            tokio::spawn(async move { store.claim(claim_for(&key, &token)).await })
        })
        .collect();
    let mut replies = Vec::new();
    for claim in claims {
        replies.push(claim.await.expect("the claim task"));
    }

    // How many go together depends on the scheduler; that some do shows in the reads. The
    // load generator measures what it saves.
    let reads = reads_processed(&server) - before;
    assert!(reads < 200, "200 claims took {reads} reads");
    for ((key, token), reply) in keys.iter().zip(&tokens).zip(replies) {
        assert!(
            matches!(
                reply,
                Ok(ClaimReply::Acquired {
                    takeover: false,
                    ..
                })
            ),
            "{key}: {reply:?}"
        );
        let record = get(&server, key);
        assert!(
            record.contains(&format!(" tok={} ", token.as_str())),
            "{key}: {record}"
        );
    }
    server.assert_every_key_expires();
}

#[tokio::test(flavor = "current_thread")]
async fn a_caller_dropped_while_its_command_waits_leaves_the_others_their_replies() {
    let server = RedisServer::start();
    let store = store(&server.url()).await;
    let keys: Vec<String> = (0..40)
        .map(|n| format!("idem-test:{{0::drop-{n}}}"))
        .collect();
    let tokens: Vec<Token> = keys.iter().map(|_| Token::generate()).collect();

    // Every other caller gives up after queuing its command, before any reply can come.
    let claims = keys
        .iter()
        .zip(&tokens)
        .enumerate()
        .map(|(n, (key, token))| {
            let store = store.clone();
            async move {
                let mut claim = Box::pin(store.claim(claim_for(key, token)));
                match n % 2 {
                    0 => Some(claim.await),
                    _ => {
                        let polled = futures::poll!(claim.as_mut());
                        assert!(polled.is_pending(), "{key} answered before any write");
                        None
                    }
                }
            }
        });
    let replies = futures::future::join_all(claims).await;

    for (key, reply) in keys.iter().zip(replies).step_by(2) {
        assert!(
            matches!(reply, Some(Ok(ClaimReply::Acquired { .. }))),
            "{key}: {reply:?}"
        );
    }
    // Those who gave up before the write had their claims left out of it.
    for key in keys.iter().skip(1).step_by(2) {
        let left: Option<Vec<u8>> = server.cmd(&["GET", key]);
        assert_eq!(left, None, "{key} was claimed for a caller that gave up");
    }
    // The kept callers' stores go on working after the dropped ones.
    let again = store.claim(claim_for(&keys[0], &tokens[0])).await;
    assert!(
        matches!(again, Ok(ClaimReply::Acquired { .. })),
        "{again:?}"
    );
    server.assert_every_key_expires();
}

// A server error answers one command of a write, not the write: in a gathering where every
// other key holds a hash (the server refuses `SET ... GET` on it), those claims are corrupt
// and the others are acquired, each with its own record.
#[tokio::test(flavor = "current_thread")]
async fn a_server_error_in_a_shared_write_answers_only_its_own_caller() {
    let server = RedisServer::start();
    let store = store(&server.url()).await;
    let keys: Vec<String> = (0..40)
        .map(|n| format!("idem-test:{{0::mixed-{n}}}"))
        .collect();
    for key in keys.iter().skip(1).step_by(2) {
        let _: i64 = server.cmd(&["HSET", key, "v", "1"]);
    }
    let tokens: Vec<Token> = keys.iter().map(|_| Token::generate()).collect();
    let before = reads_processed(&server);

    let claims = keys
        .iter()
        .zip(&tokens)
        .map(|(key, token)| store.claim(claim_for(key, token)));
    let replies = futures::future::join_all(claims).await;

    assert!(
        reads_processed(&server) - before < 40,
        "the claims went out alone"
    );
    for (n, ((key, token), reply)) in keys.iter().zip(&tokens).zip(replies).enumerate() {
        match n % 2 {
            0 => {
                assert!(
                    matches!(reply, Ok(ClaimReply::Acquired { .. })),
                    "{key}: {reply:?}"
                );
                assert!(get(&server, key).contains(&format!(" tok={} ", token.as_str())));
            }
            _ => assert!(
                matches!(&reply, Err(StoreError::Corrupt(m)) if m.contains(key.as_str())),
                "{key}: {reply:?}"
            ),
        }
    }
}

// The store's flushes run on the runtime it was opened on: a caller on another runtime
// that is not driven, or stops, must not hold up the callers that share a write with it.
#[test]
fn a_caller_on_a_runtime_that_stalls_and_stops_holds_up_no_one() {
    let main = two_thread_runtime();
    let server = RedisServer::start();
    let store = main.block_on(store(&server.url()));
    let (queued, is_queued) = std::sync::mpsc::channel();
    let side = std::thread::spawn({
        let store = store.clone();
        move || {
            let runtime = one_thread_runtime();
            runtime.block_on(async {
                let token = Token::generate();
                let mut claim = Box::pin(store.claim(claim_for("idem-test:{0::side}", &token)));
                // Queued: answered only if the main runtime was quicker than this thread.
                let _ = futures::poll!(claim.as_mut());
                queued.send(()).expect("the test waits");
                // Nothing drives this runtime while its thread sleeps; then it stops.
                std::thread::sleep(Duration::from_secs(2));
            });
        }
    });
    is_queued.recv().expect("the side caller queued its claim");

    let bounded = |key: &'static str| {
        let store = store.clone();
        main.block_on(async move {
            let token = Token::generate();
            tokio::time::timeout(Duration::from_secs(1), store.claim(claim_for(key, &token))).await
        })
    };
    let during = bounded("idem-test:{0::during}");
    side.join().expect("the side thread");
    let after = bounded("idem-test:{0::after}");

    for (when, reply) in [
        ("while the side runtime stalls", during),
        ("after it stopped", after),
    ] {
        assert!(
            matches!(reply, Ok(Ok(ClaimReply::Acquired { .. }))),
            "{when}: {reply:?}"
        );
    }
    // The side caller's claim went out with the others, though nobody read its reply.
    assert!(get(&server, "idem-test:{0::side}").starts_with("idem2 st=processing"));
    server.assert_every_key_expires();
}

// A store shared by tests that each run their own runtime, as `#[tokio::test]`s do.
#[test]
fn a_store_opened_on_a_runtime_that_ended_keeps_working_from_the_next_one() {
    let server = RedisServer::start();
    let first = two_thread_runtime();
    let store = first.block_on(store(&server.url()));
    drop(first);

    for round in 0..3 {
        let next = one_thread_runtime();
        let token = Token::generate();
        let key = format!("idem-test:{{0::next-{round}}}");
        let reply = next.block_on(async {
            let claim = store.claim(claim_for(&key, &token));
            tokio::time::timeout(Duration::from_secs(5), claim).await
        });
        assert!(
            matches!(reply, Ok(Ok(ClaimReply::Acquired { .. }))),
            "round {round}: {reply:?}"
        );
    }
    server.assert_every_key_expires();
}

// The runtime that opened the store lives on but nobody drives it: commands sent from
// elsewhere fail within the store's timeouts (as the connection's own would), not never.
#[test]
fn a_store_whose_runtime_is_never_driven_again_fails_within_its_timeouts() {
    let server = RedisServer::start();
    let idle = one_thread_runtime();
    // 0.5 s + 1 s: the harness store's connection and response timeouts.
    let store = idle.block_on(store(&server.url()));
    let other = one_thread_runtime();
    let token = Token::generate();
    let key = "idem-test:{0::idle}";

    let started = std::time::Instant::now();
    let reply = other.block_on(async {
        let claim = store.claim(claim_for(key, &token));
        tokio::time::timeout(Duration::from_secs(10), claim).await
    });
    let took = started.elapsed();

    assert!(
        matches!(reply, Ok(Err(StoreError::Connection(_)))),
        "{reply:?} after {took:?}"
    );
    // A claim nobody waits for any more is not sent when the runtime comes back.
    idle.block_on(async { tokio::time::sleep(Duration::from_millis(50)).await });
    let left: Option<Vec<u8>> = server.cmd(&["GET", key]);
    assert_eq!(left, None, "a claim sent after its caller gave up");
    drop(idle);
}

// A flush spawned from a worker waits in that worker's own slot, which no other worker
// takes. A worker blocked by other code must hold up no caller past the store's timeouts
// (0.5 s + 1 s here), on that worker's runtime or any other, and a caller that blocks its
// own worker on a command must get an error, not wait for ever.
#[test]
fn a_blocked_worker_holds_up_no_caller_past_the_stores_timeouts() {
    const BLOCK: Duration = Duration::from_secs(4);
    const BOUND: Duration = Duration::from_millis(3_000);
    let main = two_thread_runtime();
    let server = RedisServer::start();
    let store = main.block_on(store(&server.url()));

    let (blocked, free) = main.block_on(async {
        // Queues its claim (and so its write's flush, on this worker), then blocks the
        // worker's thread.
        let blocker = tokio::spawn({
            let store = store.clone();
            async move {
                let token = Token::generate();
                let claim = store.claim(claim_for("idem-test:{0::blocker}", &token));
                let block = async { std::thread::sleep(BLOCK) };
                let (reply, ()) = tokio::join!(claim, block);
                reply
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        // A caller on the other worker.
        let free = tokio::spawn({
            let store = store.clone();
            async move {
                let token = Token::generate();
                let started = std::time::Instant::now();
                let reply = store.claim(claim_for("idem-test:{0::free}", &token)).await;
                (started.elapsed(), reply)
            }
        })
        .await
        .expect("the free caller's task");
        (blocker.await.expect("the blocker's task"), free)
    });
    let (took, reply) = free;
    assert!(took < BOUND, "the free caller waited {took:?}: {reply:?}");
    assert!(
        matches!(
            reply,
            Ok(ClaimReply::Acquired { .. }) | Err(StoreError::Connection(_))
        ),
        "{reply:?}"
    );
    assert!(
        matches!(
            blocked,
            Ok(ClaimReply::Acquired { .. }) | Err(StoreError::Connection(_))
        ),
        "{blocked:?}"
    );

    // A caller that blocks its own worker on the command.
    let (took, reply) = main.block_on(async {
        let store = store.clone();
        let selfish = tokio::spawn(async move {
            let token = Token::generate();
            let started = std::time::Instant::now();
            let reply = futures::executor::block_on(
                store.claim(claim_for("idem-test:{0::self-block}", &token)),
            );
            (started.elapsed(), reply)
        });
        tokio::time::timeout(Duration::from_secs(10), selfish)
            .await
            .expect("the self-blocking caller returned")
            .expect("its task")
    });
    assert!(took < BOUND, "the self-blocking caller waited {took:?}");
    assert!(matches!(reply, Err(StoreError::Connection(_))), "{reply:?}");
    server.assert_every_key_expires();
}

// A flush that wrote its commands and then stops being polled (its runtime is not driven
// before the reply comes) must hold up its callers no longer than the store's timeouts
// (0.5 s + 1 s here), though no task of any runtime will answer them.
#[test]
fn a_flush_held_up_after_its_write_holds_up_no_caller_past_the_stores_timeouts() {
    const BOUND: Duration = Duration::from_millis(3_000);
    let server = RedisServer::start();
    let flushes = one_thread_runtime();
    let store = flushes.block_on(store(&server.url()));
    // The write goes out but gets no reply while the runtime of the flush is driven.
    server.freeze(true);

    let caller = std::thread::spawn({
        let store = store.clone();
        move || {
            let token = Token::generate();
            let started = std::time::Instant::now();
            let reply = one_thread_runtime().block_on(async {
                let claim = store.claim(claim_for("idem-test:{0::held-up}", &token));
                tokio::time::timeout(Duration::from_secs(10), claim).await
            });
            (started.elapsed(), reply)
        }
    });
    // Drives the flush through its write; after that nothing polls it.
    std::thread::sleep(Duration::from_millis(100));
    flushes.block_on(async { tokio::time::sleep(Duration::from_millis(300)).await });

    let (took, reply) = caller.join().expect("the caller's thread");
    server.freeze(false);
    assert!(took < BOUND, "the caller waited {took:?}: {reply:?}");
    assert!(
        matches!(reply, Ok(Err(StoreError::Connection(_)))),
        "{reply:?} after {took:?}"
    );
    drop(flushes);
    server.assert_every_key_expires();
}

// Each command waits its own patience (0.5 s + 1 s here), counted from when it was
// issued: a caller that joins a gathering whose flush is late keeps all of it, and one
// whose time ran out is left out of the write.
#[test]
fn a_late_gathering_keeps_each_caller_its_own_patience() {
    let server = RedisServer::start();
    let flushes = one_thread_runtime();
    let store = flushes.block_on(store(&server.url()));
    let callers = two_thread_runtime();
    let claim = |key: &'static str, after: Duration| {
        let store = store.clone();
        callers.spawn(async move {
            tokio::time::sleep(after).await;
            let token = Token::generate();
            let started = std::time::Instant::now();
            let reply = store.claim(claim_for(key, &token)).await;
            (started.elapsed(), reply)
        })
    };
    let first = claim("idem-test:{0::first}", Duration::ZERO);
    let second = claim("idem-test:{0::second}", Duration::from_secs(1));

    // The flush of both runs only now: past the first caller's time, within the second's.
    std::thread::sleep(Duration::from_millis(1_800));
    flushes.block_on(async { tokio::time::sleep(Duration::from_millis(300)).await });

    let ((took_first, first), (took_second, second)) = callers.block_on(async {
        let first = first.await.expect("the first caller's task");
        (first, second.await.expect("the second caller's task"))
    });
    assert!(
        matches!(first, Err(StoreError::Connection(_))),
        "{first:?} after {took_first:?}"
    );
    let waited = Duration::from_millis(1_400)..Duration::from_millis(1_750);
    assert!(
        waited.contains(&took_first),
        "the first waited {took_first:?}"
    );
    assert!(
        matches!(second, Ok(ClaimReply::Acquired { .. })),
        "{second:?} after {took_second:?}"
    );
    let left: Option<Vec<u8>> = server.cmd(&["GET", "idem-test:{0::first}"]);
    assert_eq!(left, None, "a claim sent after its caller's time ran out");
    server.assert_every_key_expires();
}

// The runtime that runs the flushes stops while a flush waits for the commands it is to
// gather: its callers get an error the store sends again on their own runtime at once,
// and later callers are not caught behind the flush that never comes.
#[test]
fn a_flush_dropped_while_it_gathers_leaves_its_callers_to_send_again() {
    let server = RedisServer::start();
    let flushes = one_thread_runtime();
    let store = flushes.block_on(store(&server.url()));
    let (queued, is_queued) = std::sync::mpsc::channel();
    let caller = std::thread::spawn({
        let store = store.clone();
        move || {
            one_thread_runtime().block_on(async {
                let token = Token::generate();
                let started = std::time::Instant::now();
                let mut claim =
                    Box::pin(store.claim(claim_for("idem-test:{0::gathering}", &token)));
                assert!(futures::poll!(claim.as_mut()).is_pending());
                queued.send(()).expect("the test waits");
                let reply = tokio::time::timeout(Duration::from_secs(10), claim).await;
                (started.elapsed(), reply)
            })
        }
    });
    is_queued.recv().expect("the caller queued its claim");
    // Polls the flush once, into the yield before it takes the queue; then stops.
    flushes.block_on(tokio::task::yield_now());
    drop(flushes);

    let (took, reply) = caller.join().expect("the caller's thread");
    assert!(
        matches!(reply, Ok(Ok(ClaimReply::Acquired { .. }))),
        "{reply:?} after {took:?}"
    );
    assert!(
        took < Duration::from_millis(1_000),
        "the caller waited {took:?}"
    );
    server.assert_every_key_expires();
}

// Timeouts so long that they mean "never" are taken as such wherever the store adds or
// compares them, whichever way it was built.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_that_mean_never_are_taken_as_such() {
    let server = RedisServer::start();
    let store = RedisStore::connect_with(&server.url(), redis_calls::never_timing_out())
        .await
        .expect("connecting to the harness server");
    let service = redis_calls::service(store, Duration::from_secs(5));
    redis_calls::whole_life(&service, &Key::new("never-times-out")).await;

    let client = redis::Client::open(server.url()).expect("the harness URL");
    let manager = redis::aio::ConnectionManager::new(client)
        .await
        .expect("connecting to the harness server");
    let store = RedisStore::from_connection_manager(manager, redis_calls::never_timing_out())
        .await
        .expect("a store over the manager");
    let service = redis_calls::service(store, Duration::from_secs(5));
    redis_calls::whole_life(&service, &Key::new("never-times-out-either")).await;
    server.assert_every_key_expires();
}
