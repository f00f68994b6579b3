//! Behaviour of `#[idempotent]` fns on the in-memory store. The cases live in
//! `macro_cases/` so that `macro_behaviour_redis.rs` runs the same ones on Redis.

mod macro_cases;

use idem::{IdempotencyService, MemoryStore, Settings};
use macro_cases::Backend;

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
