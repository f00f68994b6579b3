//! The `#[idempotent]` behaviour cases of `macro_cases/` on the Redis store, each against
//! a `redis-server` the harness starts for it on a free loopback port, on real time.

mod macro_cases;
#[path = "support/redis_harness.rs"]
mod redis_harness;

use idem::store::redis::RedisStore;
use idem::{IdempotencyService, Settings};
use macro_cases::Backend;
use redis_harness::RedisServer;

/// Services over one connection to a harness server, which stops with it.
struct Redis {
    store: RedisStore,
    _server: RedisServer,
}

impl Redis {
    async fn start() -> Redis {
        let server = RedisServer::start();
        let store = RedisStore::connect(&server.url())
            .await
            .expect("connecting to the harness server");
        Redis {
            store,
            _server: server,
        }
    }
}

impl Backend for Redis {
    fn service(&self, settings: Settings) -> IdempotencyService {
        IdempotencyService::builder(self.store.clone())
            .settings(settings)
            .build()
            .expect("valid settings")
    }
}

macro_rules! on_redis {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let redis = Redis::start().await;
            macro_cases::$case(&redis).await;
        }
    )*};
}

on_redis!(
    empty_ok_values_replay_without_running_again,
    an_error_releases_the_key_by_default,
    recorded_errors_replay_as_the_same_value,
    classified_errors_release_or_record_by_variant,
    early_exits_store_their_outcome,
    two_fns_with_one_key_do_not_share_a_record,
    methods_of_one_name_on_two_types_do_not_share_a_record,
    fifty_concurrent_calls_run_the_body_once,
    a_call_from_inside_its_own_body_is_refused,
    an_oversized_result_reaches_its_caller_and_is_not_run_again,
    an_unserializable_result_reaches_its_caller_and_is_not_run_again,
    a_result_that_no_longer_decodes_is_an_error_not_a_rerun,
    a_caller_dropped_mid_body_does_not_wedge_the_key,
    a_waiter_returns_when_the_owner_is_dropped,
    fingerprints_follow_the_arguments,
    the_outcome_is_stored_when_the_caller_is_dropped_after_the_body,
);
