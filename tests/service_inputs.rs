//! What the service refuses before it touches the store: keys, settings, call options; and
//! what it does with a lease no store holds.

mod support;

use std::time::Duration;

use idem::{
    Body, CallOptions, CheckOutcome, ConfigError, Error, Fingerprint, Idempotency,
    IdempotencyService, Key, KeyRule, Lease, Response, Settings, MAX_DURATION, MIN_LOCK_TIMEOUT,
};
use proptest::prelude::*;
use support::faulty_store::FaultyStore;

const FP: Fingerprint = Fingerprint::from_bytes([1; 32]);

fn service(store: &FaultyStore) -> IdempotencyService {
    IdempotencyService::builder(store.clone())
        .build()
        .expect("valid settings")
}

#[tokio::test(start_paused = true)]
async fn whitespace_edged_and_control_keys_are_refused_before_any_store_call() {
    let store = FaultyStore::new();
    let service = service(&store);
    let refused = [
        (Key::new("k1 "), KeyRule::EdgeWhitespace),
        (Key::new(" k1"), KeyRule::EdgeWhitespace),
        (Key::new("k1\t"), KeyRule::ControlCharacter('\t')),
        (Key::new(""), KeyRule::Empty),
        (
            Key::scoped("pay ", "k1"),
            KeyRule::Scope(Box::new(KeyRule::EdgeWhitespace)),
        ),
    ];

    for (key, rule) in refused {
        let claimed = service.check_and_lock(&key, &FP, &CallOptions::new()).await;
        let read = service.get(&key).await;
        let deleted = service.delete(&key, true).await;
        for outcome in [claimed.map(|_| ()), read.map(|_| ()), deleted.map(|_| ())] {
            match outcome {
                Err(Error::InvalidKey { rule: found, .. }) => assert_eq!(found, rule, "{key:?}"),
                other => panic!("expected {key:?} to be refused, got {other:?}"),
            }
        }
    }
    assert_eq!(store.all_calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn key_length_is_limited_in_bytes_by_a_setting() {
    let store = FaultyStore::new();
    let default = service(&store);
    let short = IdempotencyService::builder(store.clone())
        .max_key_len(10)
        .build()
        .expect("valid settings");
    let options = CallOptions::new().wait(false);

    let at_limit = default
        .check_and_lock(&Key::new("x".repeat(255)), &FP, &options)
        .await;
    let over = default
        .check_and_lock(&Key::new("x".repeat(256)), &FP, &options)
        .await;
    // Ten characters, but twenty bytes.
    let wide = short
        .check_and_lock(&Key::new("é".repeat(10)), &FP, &options)
        .await;

    assert!(
        matches!(at_limit, Ok(CheckOutcome::Acquired(_))),
        "{at_limit:?}"
    );
    assert!(
        matches!(
            over,
            Err(Error::InvalidKey {
                rule: KeyRule::TooLong { len: 256, max: 255 },
                ..
            })
        ),
        "{over:?}"
    );
    assert!(
        matches!(
            wide,
            Err(Error::InvalidKey {
                rule: KeyRule::TooLong { len: 20, max: 10 },
                ..
            })
        ),
        "{wide:?}"
    );
}

#[test]
fn composite_keys_that_print_alike_have_different_store_keys() {
    let pairs = [
        (Key::scoped("acme:eu", "7"), Key::scoped("acme", "eu:7")),
        (Key::scoped("a", "b:c"), Key::scoped("a:b", "c")),
        (Key::new("{x}"), Key::new("%7Bx%7D")),
        (Key::scoped("", "a/b"), Key::scoped("a", "b")),
    ];
    for (a, b) in pairs {
        assert_ne!(
            a.store_key("idempotency:"),
            b.store_key("idempotency:"),
            "{a:?} {b:?}"
        );
    }
}

proptest! {
    #[test]
    fn different_scope_and_key_pairs_never_share_a_store_key(
        a in ("[a:{}%7B/]{0,4}", "[a:{}%7B/]{1,4}"),
        b in ("[a:{}%7B/]{0,4}", "[a:{}%7B/]{1,4}"),
    ) {
        prop_assume!(a != b);
        let (a, b) = (Key::scoped(a.0, a.1), Key::scoped(b.0, b.1));
        prop_assert_ne!(a.store_key("p:"), b.store_key("p:"));
    }
}

#[test]
fn the_builder_refuses_settings_that_cannot_work() {
    let cases: Vec<(Settings, ConfigError)> = vec![
        (
            Settings {
                ttl: Duration::ZERO,
                ..Settings::default()
            },
            ConfigError::ZeroDuration { setting: "ttl" },
        ),
        (
            Settings {
                lock_timeout: Duration::from_micros(900),
                ..Settings::default()
            },
            ConfigError::SubMillisecond {
                setting: "lock_timeout",
                value: Duration::from_micros(900),
            },
        ),
        (
            Settings {
                lock_timeout: Duration::from_millis(9),
                ..Settings::default()
            },
            ConfigError::LeaseTooShort {
                lease: Duration::from_millis(9),
                min: Duration::from_millis(10),
            },
        ),
        (
            Settings {
                wait_timeout: MAX_DURATION * 2,
                ..Settings::default()
            },
            ConfigError::DurationTooLarge {
                setting: "wait_timeout",
                value: MAX_DURATION * 2,
                max: MAX_DURATION,
            },
        ),
        (
            Settings {
                wait_timeout: Duration::from_millis(1),
                ..Settings::default()
            },
            ConfigError::WaitTooShort {
                wait: Duration::from_millis(1),
                min: Duration::from_millis(2),
            },
        ),
        (
            Settings {
                failure_ttl: Duration::ZERO,
                ..Settings::default()
            },
            ConfigError::ZeroDuration {
                setting: "failure_ttl",
            },
        ),
        (
            Settings {
                max_key_len: 0,
                ..Settings::default()
            },
            ConfigError::ZeroLimit {
                setting: "max_key_len",
            },
        ),
        (
            Settings {
                complete_attempts: 0,
                ..Settings::default()
            },
            ConfigError::ZeroLimit {
                setting: "complete_attempts",
            },
        ),
        (
            Settings {
                key_prefix: "idem:{".into(),
                ..Settings::default()
            },
            ConfigError::InvalidPrefix {
                prefix: "idem:{".into(),
                reason: "contains a brace, which would change the Redis Cluster hash tag",
            },
        ),
    ];
    for (settings, expected) in cases {
        let built = IdempotencyService::builder(FaultyStore::new())
            .settings(settings)
            .build();
        assert_eq!(built.map(|_| ()), Err(expected));
    }
}

#[tokio::test(start_paused = true)]
async fn a_lease_shorter_than_the_minimum_is_refused_by_the_builder_and_per_call() {
    assert_eq!(MIN_LOCK_TIMEOUT, Duration::from_millis(10));
    let just_under = MIN_LOCK_TIMEOUT - Duration::from_millis(1);
    let refused = ConfigError::LeaseTooShort {
        lease: just_under,
        min: MIN_LOCK_TIMEOUT,
    };
    let built = IdempotencyService::builder(FaultyStore::new())
        .lock_timeout(just_under)
        .build();
    assert_eq!(built.map(|_| ()), Err(refused.clone()));

    let store = FaultyStore::new();
    let service = IdempotencyService::builder(store.clone())
        .lock_timeout(MIN_LOCK_TIMEOUT)
        .build()
        .expect("the minimum lease is accepted");
    let key = Key::new("order-1");
    let per_call = CallOptions::new().lock_timeout(just_under);
    match service.check_and_lock(&key, &FP, &per_call).await {
        Err(Error::Options { key, source }) => {
            assert_eq!((key, source), ("order-1".into(), refused))
        }
        other => panic!("expected the lease to be refused, got {other:?}"),
    }
    assert_eq!(store.all_calls(), 0);

    let at_minimum = CallOptions::new().lock_timeout(MIN_LOCK_TIMEOUT);
    match service.check_and_lock(&key, &FP, &at_minimum).await {
        Ok(CheckOutcome::Acquired(lease)) => assert_eq!(lease.lock_timeout(), MIN_LOCK_TIMEOUT),
        other => panic!("expected to acquire, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn invalid_call_options_are_refused_before_any_store_call() {
    let store = FaultyStore::new();
    let service = service(&store);
    let key = Key::new("order-1");

    let zero_lease = CallOptions::new().lock_timeout(Duration::ZERO);
    let outcome = service.check_and_lock(&key, &FP, &zero_lease).await;

    match outcome {
        Err(Error::Options { key, source }) => {
            assert_eq!(key, "order-1");
            assert_eq!(
                source,
                ConfigError::ZeroDuration {
                    setting: "lock_timeout"
                }
            );
        }
        other => panic!("expected the options to be refused, got {other:?}"),
    }
    assert_eq!(store.all_calls(), 0);
    // A call that does not wait has no wait budget to check.
    let no_wait = CallOptions::new().wait(false).wait_timeout(Duration::ZERO);
    let outcome = service.check_and_lock(&key, &FP, &no_wait).await;
    assert!(
        matches!(outcome, Ok(CheckOutcome::Acquired(_))),
        "{outcome:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_detached_lease_is_lost_to_a_real_service_and_changes_nothing() {
    let store = FaultyStore::new();
    let service = service(&store);
    let key = Key::new("order-1");
    let lease = Lease::detached(key.clone(), FP, Duration::ZERO);

    assert_eq!(lease.lock_timeout(), MIN_LOCK_TIMEOUT);
    let completed = service
        .complete(&lease, Response::ok(Body::bytes("x")))
        .await;
    let renewed = service.renew(&lease).await;
    let released = service.release(&lease).await;

    for outcome in [completed, renewed, released] {
        assert!(
            matches!(outcome, Err(Error::LeaseLost { .. })),
            "{outcome:?}"
        );
    }
    assert!(lease.is_lost());
    assert_eq!(store.memory().keys(), Vec::<String>::new());
    assert_eq!(service.get(&key).await.expect("get"), None);
}
