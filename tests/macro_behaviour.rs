//! Behaviour of `#[idempotent]` fns on the in-memory store. The cases live in
//! `macro_cases/` so that `macro_behaviour_redis.rs` runs the same ones on Redis.

mod macro_cases;

use std::time::Duration;

use idem::{IdempotencyService, MemoryStore, Settings};
use macro_cases::{Backend, Shop, ShopError};

/// A new in-memory store for every service.
struct Memory;

impl Backend for Memory {
    fn service(&self, settings: Settings) -> IdempotencyService {
        IdempotencyService::builder(MemoryStore::new())
            .settings(settings)
            .build()
            .expect("valid settings")
    }
}

#[tokio::test]
async fn empty_ok_values_replay_without_running_again() {
    macro_cases::empty_ok_values_replay_without_running_again(&Memory).await;
}

#[tokio::test]
async fn an_error_releases_the_key_by_default() {
    macro_cases::an_error_releases_the_key_by_default(&Memory).await;
}

#[tokio::test]
async fn recorded_errors_replay_as_the_same_value() {
    macro_cases::recorded_errors_replay_as_the_same_value(&Memory).await;
}

#[tokio::test]
async fn classified_errors_release_or_record_by_variant() {
    macro_cases::classified_errors_release_or_record_by_variant(&Memory).await;
}

#[tokio::test]
async fn early_exits_store_their_outcome() {
    macro_cases::early_exits_store_their_outcome(&Memory).await;
}

#[tokio::test]
async fn two_fns_with_one_key_do_not_share_a_record() {
    macro_cases::two_fns_with_one_key_do_not_share_a_record(&Memory).await;
}

#[tokio::test]
async fn methods_of_one_name_on_two_types_do_not_share_a_record() {
    macro_cases::methods_of_one_name_on_two_types_do_not_share_a_record(&Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_calls_run_the_body_once() {
    macro_cases::fifty_concurrent_calls_run_the_body_once(&Memory).await;
}

#[tokio::test]
async fn a_call_from_inside_its_own_body_is_refused() {
    macro_cases::a_call_from_inside_its_own_body_is_refused(&Memory).await;
}

#[tokio::test]
async fn an_oversized_result_reaches_its_caller_and_is_not_run_again() {
    macro_cases::an_oversized_result_reaches_its_caller_and_is_not_run_again(&Memory).await;
}

#[tokio::test]
async fn an_unserializable_result_reaches_its_caller_and_is_not_run_again() {
    macro_cases::an_unserializable_result_reaches_its_caller_and_is_not_run_again(&Memory).await;
}

#[tokio::test]
async fn a_result_that_no_longer_decodes_is_an_error_not_a_rerun() {
    macro_cases::a_result_that_no_longer_decodes_is_an_error_not_a_rerun(&Memory).await;
}

#[tokio::test]
async fn a_caller_dropped_mid_body_does_not_wedge_the_key() {
    macro_cases::a_caller_dropped_mid_body_does_not_wedge_the_key(&Memory).await;
}

#[tokio::test]
async fn a_waiter_returns_when_the_owner_is_dropped() {
    macro_cases::a_waiter_returns_when_the_owner_is_dropped(&Memory).await;
}

#[tokio::test]
async fn fingerprints_follow_the_arguments() {
    macro_cases::fingerprints_follow_the_arguments(&Memory).await;
}

#[tokio::test]
async fn the_outcome_is_stored_when_the_caller_is_dropped_after_the_body() {
    macro_cases::the_outcome_is_stored_when_the_caller_is_dropped_after_the_body(&Memory).await;
}

/// `failure_ttl = 60` keeps a recorded error for 60 s, where the service would keep it for
/// 24 h: at 59 s it is replayed, at 61 s it is gone and the body runs again. The memory
/// store's clock is tokio's, so paused time makes this exact.
#[tokio::test(start_paused = true)]
async fn a_recorded_error_lives_for_the_failure_ttl() {
    let shop = Shop::new(Memory.service(Settings::default()));

    let first = shop.record_for_a_minute("short-lived", true).await;
    assert!(matches!(
        first,
        Err(ShopError::ReceiptFailed { payment: 8 })
    ));
    tokio::time::advance(Duration::from_secs(59)).await;
    let replayed = shop.record_for_a_minute("short-lived", false).await;
    assert!(matches!(
        replayed,
        Err(ShopError::ReceiptFailed { payment: 8 })
    ));
    assert_eq!(shop.runs(), 1);

    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(
        shop.record_for_a_minute("short-lived", false)
            .await
            .unwrap(),
        2
    );

    let kept = shop.record_on_error("kept", true).await;
    assert!(matches!(kept, Err(ShopError::ReceiptFailed { payment: 7 })));
    tokio::time::advance(Duration::from_secs(3600)).await;
    let still = shop.record_on_error("kept", false).await;
    assert!(
        matches!(still, Err(ShopError::ReceiptFailed { payment: 7 })),
        "without `failure_ttl` the service's 24 h apply"
    );
    assert_eq!(shop.runs(), 3);
}

/// The default scope of a method whose type has a very long name is cut to the scope
/// limit, and two such types still get two scopes.
#[test]
fn a_long_type_name_is_cut_to_the_scope_limit_and_kept_apart() {
    type Map<T> = std::collections::HashMap<String, Vec<Option<T>>>;
    // The two names differ only at their ends, past the cut.
    type A = (Map<u8>, Map<u8>, Map<u8>);
    type B = (Map<u8>, Map<u8>, Map<u16>);
    assert!(std::any::type_name::<A>().len() > idem::MAX_SCOPE_LEN);

    let a = idem::__private::method_scope::<A>("shop::charge");
    let b = idem::__private::method_scope::<B>("shop::charge");
    assert_eq!(a.len(), idem::MAX_SCOPE_LEN);
    assert_eq!(b.len(), idem::MAX_SCOPE_LEN);
    assert!(
        a.starts_with("shop::charge@(std::collections::hash::map::HashMap<"),
        "{a}"
    );
    assert_ne!(a, b);
    assert_eq!(
        idem::__private::method_scope::<String>("shop::charge"),
        "shop::charge@alloc::string::String"
    );
}
