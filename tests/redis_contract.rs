//! The store contract suite on the Redis store, against a standalone `redis-server` the
//! harness starts for each case, on real time.

mod contract;
#[path = "support/redis_fixture.rs"]
mod redis_fixture;
#[path = "support/redis_harness.rs"]
mod redis_harness;

contract::store_contract_tests!(
    redis_fixture::RedisFixture::standalone().await,
    tokio::test(flavor = "multi_thread", worker_threads = 4)
);
