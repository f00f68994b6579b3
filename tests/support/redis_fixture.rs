//! The store contract suite's fixture over the Redis store: a standalone harness server or
//! a harness Redis Cluster, with several stores on separate connections so that the
//! suite's services behave like separate processes.

#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idem::store::redis::{RedisStore, RedisStoreOptions};
use idem::{IdempotencyService, Record, Settings};

use crate::contract::{Expiry, Fixture};
use crate::redis_harness::{RedisCluster, RedisServer};

/// How many connections the suite's services are spread over.
const CONNECTIONS: usize = 5;

/// The servers a fixture reads raw keys from.
pub enum Servers {
    /// A standalone server the fixture owns (stopped with it).
    Standalone(RedisServer),
    /// A cluster shared by the tests of one binary.
    Cluster(&'static RedisCluster),
}

/// The fixture.
pub struct RedisFixture {
    servers: Servers,
    stores: Vec<RedisStore>,
    next: AtomicUsize,
}

impl RedisFixture {
    /// A fixture over a new standalone server.
    pub async fn standalone() -> RedisFixture {
        let server = RedisServer::start();
        let mut stores = Vec::new();
        for _ in 0..CONNECTIONS {
            let store = RedisStore::connect_with(&server.url(), options())
                .await
                .expect("connecting to the harness server");
            stores.push(store);
        }
        RedisFixture::new(Servers::Standalone(server), stores)
    }

    /// A fixture over a shared harness cluster.
    pub async fn cluster(cluster: &'static RedisCluster) -> RedisFixture {
        let mut stores = Vec::new();
        for _ in 0..CONNECTIONS {
            let store = RedisStore::connect_cluster_with(cluster.urls(), options())
                .await
                .expect("connecting to the harness cluster");
            stores.push(store);
        }
        RedisFixture::new(Servers::Cluster(cluster), stores)
    }

    fn new(servers: Servers, stores: Vec<RedisStore>) -> RedisFixture {
        RedisFixture {
            servers,
            stores,
            next: AtomicUsize::new(0),
        }
    }

    fn store(&self) -> &RedisStore {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.stores.len();
        &self.stores[i]
    }
}

fn options() -> RedisStoreOptions {
    RedisStoreOptions {
        connection_timeout: Duration::from_secs(1),
        response_timeout: Duration::from_secs(2),
        ..RedisStoreOptions::default()
    }
}

impl Drop for RedisFixture {
    fn drop(&mut self) {
        // The suite checks its own keys; this checks the whole server it ran on.
        if !std::thread::panicking() {
            if let Servers::Standalone(server) = &self.servers {
                server.assert_every_key_expires();
            }
        }
    }
}

impl Fixture for RedisFixture {
    fn service(&self, settings: Settings) -> IdempotencyService {
        IdempotencyService::builder(self.store().clone())
            .settings(settings)
            .build()
            .expect("the suite's settings are valid")
    }

    fn lease(&self) -> Duration {
        Duration::from_millis(400)
    }

    fn clock_slack(&self) -> Duration {
        Duration::from_millis(100)
    }

    async fn insert_raw(&self, store_key: &str, record: Record, ttl: Duration) {
        self.store()
            .insert(store_key, record, ttl)
            .await
            .expect("insert");
    }

    async fn expiry(&self, store_key: &str) -> Expiry {
        match self.store().pttl(store_key).await.expect("PTTL") {
            None => Expiry::Missing,
            Some(Duration::MAX) => Expiry::Never,
            Some(left) => Expiry::In(left),
        }
    }

    async fn keys(&self) -> Vec<String> {
        match &self.servers {
            Servers::Standalone(server) => server.keys(),
            Servers::Cluster(cluster) => cluster.nodes().iter().flat_map(|n| n.keys()).collect(),
        }
    }
}
