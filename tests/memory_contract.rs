//! The store contract suite on [`MemoryStore`], on paused tokio time.

mod contract;

use std::time::Duration;

use contract::{Expiry, Fixture};
use idem::{IdempotencyService, MemoryStore, Record, Settings};

/// One memory store per test; its clock is tokio's, paused and advanced by the runtime.
struct MemoryFixture {
    store: MemoryStore,
}

impl MemoryFixture {
    fn new() -> Self {
        MemoryFixture {
            store: MemoryStore::new(),
        }
    }
}

impl Fixture for MemoryFixture {
    fn service(&self, settings: Settings) -> IdempotencyService {
        IdempotencyService::builder(self.store.clone())
            .settings(settings)
            .build()
            .expect("the suite's settings are valid")
    }

    fn lease(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn clock_slack(&self) -> Duration {
        Duration::ZERO
    }

    async fn insert_raw(&self, store_key: &str, record: Record, ttl: Duration) {
        self.store.insert(store_key, record, ttl);
    }

    async fn expiry(&self, store_key: &str) -> Expiry {
        match self.store.pttl(store_key) {
            Some(left) => Expiry::In(left),
            None => Expiry::Missing,
        }
    }

    async fn keys(&self) -> Vec<String> {
        self.store.keys()
    }
}

contract::store_contract_tests!(MemoryFixture::new(), tokio::test(start_paused = true));
