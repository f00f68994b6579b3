//! The Redis store on a three-primary Redis Cluster started by the harness: the store
//! contract suite, calls whose keys cover every node (through a script-cache flush of every
//! node), and the hash slots of store keys, braces included.

mod contract;
#[path = "support/redis_calls.rs"]
mod redis_calls;
#[path = "support/redis_fixture.rs"]
mod redis_fixture;
#[path = "support/redis_harness.rs"]
mod redis_harness;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idem::store::redis::RedisStore;
use idem::{CallOptions, Idempotency, IdempotencyService, Key};
use redis_calls::{call, fp, Call};
use redis_harness::RedisCluster;

contract::store_contract_tests!(
    redis_fixture::RedisFixture::cluster(RedisCluster::shared()).await,
    tokio::test(flavor = "multi_thread", worker_threads = 4)
);

const PREFIX: &str = "idem-test:";

async fn cluster_service() -> IdempotencyService {
    let store = RedisStore::connect_cluster(RedisCluster::shared().urls())
        .await
        .expect("connecting to the harness cluster");
    IdempotencyService::builder(store)
        .key_prefix(PREFIX)
        .lock_timeout(Duration::from_secs(2))
        .build()
        .expect("valid settings")
}

/// Calls every key once; returns how many bodies ran per key.
async fn call_all(
    service: &IdempotencyService,
    keys: &[Key],
    runs: &Arc<Mutex<HashMap<String, u32>>>,
) -> Vec<Call> {
    let mut calls = Vec::new();
    for key in keys {
        let runs = Arc::clone(runs);
        let id = key.to_string();
        let body = async move {
            *runs.lock().unwrap().entry(id.clone()).or_default() += 1;
            format!("value-of-{id}")
        };
        let result = call(service, key, &fp(1), &CallOptions::new(), body).await;
        calls.push(result.unwrap_or_else(|e| panic!("call for {key}: {e}")));
    }
    calls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_on_keys_of_every_node_survive_a_script_flush_of_every_node() {
    let cluster = RedisCluster::shared();
    let service = cluster_service().await;
    let runs = Arc::new(Mutex::new(HashMap::new()));
    let keys: Vec<Key> = (0..300)
        .map(|i| Key::scoped("spread", format!("k{i}")))
        .collect();
    let (before, after) = keys.split_at(150);
    let nodes: HashSet<u16> = keys
        .iter()
        .map(|k| cluster.port_for_slot(cluster.keyslot(&k.store_key(PREFIX))))
        .collect();
    assert_eq!(nodes.len(), 3, "the keys cover every node");

    let first = call_all(&service, before, &runs).await;
    cluster.script_flush();
    let fresh = call_all(&service, after, &runs).await;
    let replays = call_all(&service, &keys, &runs).await;

    assert!(first
        .iter()
        .chain(&fresh)
        .all(|c| matches!(c, Call::Ran(_))));
    for (key, call) in keys.iter().zip(&replays) {
        assert_eq!(*call, Call::Replayed(format!("value-of-{key}")));
    }
    let runs = runs.lock().unwrap();
    assert_eq!(runs.len(), 300);
    assert!(runs.values().all(|&n| n == 1), "each body ran once");
    let per_node = cluster.keys_per_node();
    assert!(
        per_node.values().all(|&n| n > 0),
        "records on every node: {per_node:?}"
    );
    cluster.assert_every_key_expires();
}

/// CRC16/XMODEM, the checksum Redis Cluster slots are made of.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The slot of `key` by the Redis Cluster rule: the hash tag between the first `{` and the
/// next `}`, when not empty, else the whole key.
fn slot(key: &str) -> u16 {
    let tag = key
        .find('{')
        .and_then(|open| {
            let close = key[open + 1..].find('}')? + open + 1;
            (close > open + 1).then(|| &key[open + 1..close])
        })
        .unwrap_or(key);
    crc16(tag.as_bytes()) % 16384
}

fn sample_keys() -> Vec<Key> {
    let ids = [
        "order-1",
        "{tag}",
        "{",
        "}",
        "}{",
        "{}",
        "a{b}c",
        "x}y{z",
        "%7B",
        "%",
        "{{}}",
        "é",
        "e\u{301}",
        "payments:eu:7",
    ];
    let mut keys: Vec<Key> = ids.iter().map(|id| Key::new(*id)).collect();
    keys.extend(ids.iter().map(|id| Key::scoped("{scope}", *id)));
    keys.extend((0..200).map(|i| Key::scoped("spread", format!("k{i}"))));
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_keys_land_in_the_slot_of_their_whole_scope_and_key() {
    let cluster = RedisCluster::shared();

    for key in sample_keys() {
        let store_key = key.store_key(PREFIX);
        let other_prefix = key.store_key("another-prefix:");
        let inner = &store_key[PREFIX.len() + 1..store_key.len() - 1];

        assert_eq!(cluster.keyslot(&store_key), slot(&store_key), "{store_key}");
        assert_eq!(
            slot(&store_key),
            crc16(inner.as_bytes()) % 16384,
            "{store_key}"
        );
        assert_eq!(
            slot(&store_key),
            slot(&other_prefix),
            "the prefix is outside the tag"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_with_braces_run_their_whole_lifecycle_on_the_cluster() {
    let cluster = RedisCluster::shared();
    let service = cluster_service().await;
    let runs = Arc::new(Mutex::new(HashMap::new()));
    let keys: Vec<Key> = sample_keys()
        .into_iter()
        .filter(|k| k.id().contains(['{', '}']) || k.scope().contains('{'))
        .map(|k| Key::scoped(format!("braces-{}", k.scope()), k.id()))
        .collect();

    let fresh = call_all(&service, &keys, &runs).await;
    let replays = call_all(&service, &keys, &runs).await;

    assert!(fresh.iter().all(|c| matches!(c, Call::Ran(_))), "{fresh:?}");
    assert!(
        replays.iter().all(|c| matches!(c, Call::Replayed(_))),
        "{replays:?}"
    );
    assert!(runs.lock().unwrap().values().all(|&n| n == 1));
    for key in &keys {
        assert!(service.delete(key, false).await.is_ok());
    }
    cluster.assert_every_key_expires();
}

// As on a standalone server (`tests/redis_store.rs`): timeouts that mean "never".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_that_mean_never_are_taken_as_such_on_a_cluster() {
    let cluster = RedisCluster::shared();
    let options = redis_calls::never_timing_out();
    let store = RedisStore::connect_cluster_with(cluster.urls(), options)
        .await
        .expect("connecting to the harness cluster");
    let service = redis_calls::service(store, Duration::from_secs(5));
    let key = Key::new("never-times-out");
    redis_calls::whole_life(&service, &key).await;
    cluster.assert_every_key_expires();
}
