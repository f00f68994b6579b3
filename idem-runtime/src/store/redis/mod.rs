//! The Redis store: records in Redis hashes, every transition one Lua script on the
//! server's clock, for a standalone server or a Redis Cluster.
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use idem_runtime::store::redis::RedisStore;
//! use idem_runtime::IdempotencyService;
//!
//! let store = RedisStore::connect("redis://127.0.0.1:7000/").await?;
//! let service = IdempotencyService::builder(store).build()?;
//! # let _ = service; Ok(()) }
//! ```
//!
//! # Record layout
//!
//! One record is one Redis hash under the store key
//! (`<prefix>{<len>:<scope>:<key>}`, see [`Key::store_key`](crate::Key::store_key)); the
//! braces make the scope and key the Redis Cluster hash tag. `redis-cli HGETALL <store key>`
//! shows it:
//!
//! | field | present | meaning |
//! |---|---|---|
//! | `v` | always | record format version, `1`; any other value is reported as [`StoreError::Corrupt`] |
//! | `st` | always | `processing`, `completed`, `failed` or `not_replayable` |
//! | `fp` | always | fingerprint of the arguments, 64 hex digits |
//! | `tok` | always | owner token of the call that claimed (or last took over) the key |
//! | `fence` | always | fencing number: the server clock in microseconds at the claim, raised above the previous owner's on a takeover |
//! | `sa` | always | when the owner claimed the key, epoch milliseconds |
//! | `lu` | processing | end of the owner's lease, epoch milliseconds (absent: held until the record expires) |
//! | `ca` | finished | when the outcome was stored, epoch milliseconds |
//! | `code` | completed, failed | status code of the stored response |
//! | `bt` | completed, failed | body type: `json` (JSON text) or `bytes` (stored as given) |
//! | `body` | completed, failed | the body |
//! | `hdr` | completed, failed | headers, a JSON array of `[name, value]` pairs |
//! | `why` | not_replayable | why the result was not stored |
//!
//! Every record expires (`PTTL` is never `-1`): a processing record one lease after its
//! lease ends (kept that long so a takeover knows whose claim it replaces), a finished
//! record its TTL after it finished.
//!
//! # Scripts and round trips
//!
//! Each transition is one script in its own `.lua` file beside this module: `claim.lua`,
//! `complete.lua`, `renew.lua`, `release.lua`, `delete.lua` (and `insert.lua` for
//! [`RedisStore::insert`]). They read the clock with `TIME` on the server, never the
//! client's, and touch only `KEYS[1]`. A claim that finds a finished record returns the
//! whole record, so a replay is one round trip and a first call is two (claim, complete).
//! A call that finds another process's owner at work claims again after growing pauses
//! (the default [`Store::wait_for_change`]); callers in the same process share one claim.
//!
//! Scripts go out as `EVALSHA`; a `NOSCRIPT` reply is answered with `EVAL`, which caches the
//! script again on the node that owns the key, so `SCRIPT FLUSH`, restarts and failovers
//! cost one extra round trip and nothing else.
//!
//! # Failures
//!
//! A command whose connection broke is sent again ([`RedisStoreOptions::connection_retries`]);
//! the owner token makes a repeated claim or completion recognise its own earlier write.
//! When the server stays unreachable the store answers [`StoreError::Connection`] within
//! about the configured timeouts; server error replies are [`StoreError::Command`].
//!
//! What Redis itself does not keep, idem cannot: a server restarted without persistence, or
//! a failover to a replica that had not received the claim, forgets records, and the next
//! call with such a key runs the operation again. Run Redis with `appendonly yes` (and
//! `appendfsync always` for the strictest setting) where that matters, and with
//! `maxmemory-policy noeviction`, which the store checks at start-up.
//!
//! Requires Redis 5 or later (scripts that read `TIME` and then write).

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;

use super::{Claim, ClaimReply, DeleteReply, Finish, LeaseReply, Store};
use crate::error::StoreError;
use crate::record::{Record, Token};

mod codec;
mod connection;
mod script;

pub use connection::{EvictionPolicyError, RedisStoreOptions};
/// The `redis` crate this store is built on, for building a connection to pass to
/// [`RedisStore::from_connection_manager`] or [`RedisStore::from_cluster_connection`].
pub use redis;

use codec::FORMAT_VERSION;
use codec::{corrupt, finish_args, flat_fields, record_fields, record_from_fields, Reply};
use connection::{is_connection_error, store_error, Connection};
use script::{Script, Scripts};

/// The pause before a command is sent again after a broken connection, times the attempt.
const RETRY_PAUSE: Duration = Duration::from_millis(25);

/// Records in Redis: a standalone server (through a reconnecting
/// [`ConnectionManager`]) or a Redis Cluster. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct RedisStore {
    connection: Connection,
    scripts: std::sync::Arc<Scripts>,
    options: RedisStoreOptions,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.connection {
            Connection::Standalone(_) => "standalone",
            Connection::Cluster(_) => "cluster",
        };
        f.debug_struct("RedisStore")
            .field("connection", &kind)
            .field("options", &self.options)
            .finish()
    }
}

impl RedisStore {
    /// Connects to a standalone server at `url` (`redis://host:port/db`) with the default
    /// [`RedisStoreOptions`], and checks its eviction policy.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        RedisStore::connect_with(url, RedisStoreOptions::default()).await
    }

    /// Connects to a standalone server at `url` with `options`.
    pub async fn connect_with(url: &str, options: RedisStoreOptions) -> Result<Self, StoreError> {
        let connection = Connection::standalone(url, &options).await?;
        RedisStore::start(connection, options).await
    }

    /// Connects to the Redis Cluster that the nodes at `urls` belong to, with the default
    /// [`RedisStoreOptions`], and checks the eviction policy of every primary.
    pub async fn connect_cluster<I, S>(urls: I) -> Result<Self, StoreError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        RedisStore::connect_cluster_with(urls, RedisStoreOptions::default()).await
    }

    /// Connects to a Redis Cluster with `options`.
    pub async fn connect_cluster_with<I, S>(
        urls: I,
        options: RedisStoreOptions,
    ) -> Result<Self, StoreError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let connection = Connection::cluster(urls, &options).await?;
        RedisStore::start(connection, options).await
    }

    /// A store over a connection manager the caller built; its own timeouts and reconnect
    /// settings apply, and `options` only for the start-up check and retries.
    pub async fn from_connection_manager(
        manager: ConnectionManager,
        options: RedisStoreOptions,
    ) -> Result<Self, StoreError> {
        RedisStore::start(Connection::Standalone(manager), options).await
    }

    /// A store over a cluster connection the caller built; as
    /// [`from_connection_manager`](RedisStore::from_connection_manager).
    pub async fn from_cluster_connection(
        connection: ClusterConnection,
        options: RedisStoreOptions,
    ) -> Result<Self, StoreError> {
        RedisStore::start(Connection::Cluster(connection), options).await
    }

    async fn start(connection: Connection, options: RedisStoreOptions) -> Result<Self, StoreError> {
        connection
            .check_eviction_policy(options.strict_eviction_check)
            .await?;
        Ok(RedisStore {
            connection,
            scripts: std::sync::Arc::new(Scripts::new()),
            options,
        })
    }

    /// Writes `record` under `key` as it is, expiring `ttl` from now, replacing what is
    /// there. For tests and migrations: it bypasses every rule of the protocol.
    pub async fn insert(&self, key: &str, record: Record, ttl: Duration) -> Result<(), StoreError> {
        let ttl = millis(ttl.max(Duration::from_millis(1)));
        let fields = record_fields(&record);
        let mut args: Vec<&[u8]> = vec![ttl.as_bytes()];
        for (name, value) in &fields {
            args.push(name.as_bytes());
            args.push(value);
        }
        self.send(&self.scripts.insert, key, &args).await?;
        Ok(())
    }

    /// Time left before the record under `key` expires, from Redis `PTTL`: `None` when
    /// there is no record, [`Duration::MAX`] for a key without expiry (which idem never
    /// writes).
    pub async fn pttl(&self, key: &str) -> Result<Option<Duration>, StoreError> {
        let mut cmd = redis::cmd("PTTL");
        cmd.arg(key);
        match self.query(key, &cmd).await? {
            redis::Value::Int(-2) => Ok(None),
            redis::Value::Int(-1) => Ok(Some(Duration::MAX)),
            redis::Value::Int(ms) => Ok(Some(Duration::from_millis(ms.max(0) as u64))),
            other => Err(corrupt(key, format!("unexpected PTTL reply {other:?}"))),
        }
    }

    /// Runs `script` for `key` and reads its reply.
    async fn run(&self, script: &Script, key: &str, args: &[&[u8]]) -> Result<Reply, StoreError> {
        let value = self.send(script, key, args).await?;
        Reply::parse(key, value)
    }

    async fn send(
        &self,
        script: &Script,
        key: &str,
        args: &[&[u8]],
    ) -> Result<redis::Value, StoreError> {
        let mut attempt = 0;
        loop {
            match script.run(&self.connection, key, args).await {
                Ok(value) => return Ok(value),
                Err(error) if self.retry(key, &error, &mut attempt) => {
                    tokio::time::sleep(RETRY_PAUSE * attempt).await;
                }
                Err(error) => return Err(store_error(error)),
            }
        }
    }

    async fn query(&self, key: &str, cmd: &redis::Cmd) -> Result<redis::Value, StoreError> {
        let mut attempt = 0;
        loop {
            match self.connection.query(cmd).await {
                Ok(value) => return Ok(value),
                Err(error) if self.retry(key, &error, &mut attempt) => {
                    tokio::time::sleep(RETRY_PAUSE * attempt).await;
                }
                Err(error) => return Err(store_error(error)),
            }
        }
    }

    fn retry(&self, key: &str, error: &redis::RedisError, attempt: &mut u32) -> bool {
        if !is_connection_error(error) || *attempt >= self.options.connection_retries {
            return false;
        }
        *attempt += 1;
        tracing::debug!(key, %error, attempt = *attempt, "Redis connection failed; sending again");
        true
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn claim(&self, claim: Claim<'_>) -> Result<ClaimReply, StoreError> {
        let key = claim.key;
        let fingerprint = claim.fingerprint.to_hex();
        let validate: &[u8] = if claim.validate_fingerprint {
            b"1"
        } else {
            b"0"
        };
        let lease = millis(claim.lease);
        let args: [&[u8]; 5] = [
            claim.token.as_str().as_bytes(),
            fingerprint.as_bytes(),
            validate,
            lease.as_bytes(),
            FORMAT_VERSION.as_bytes(),
        ];
        let reply = self.run(&self.scripts.claim, key, &args).await?;
        match reply.tag.as_str() {
            "acquired" => Ok(ClaimReply::Acquired {
                fence: reply.number(key, 0)?,
                lease_until: reply.number(key, 1)?,
                takeover: reply.text(2) == "1",
            }),
            "busy" => Ok(ClaimReply::Busy {
                remaining: Duration::from_millis(reply.number(key, 0)?),
            }),
            "mismatch" => {
                let stored = reply.text(0).parse().map_err(|_| {
                    corrupt(key, "field `fp` is not a 64-digit hex fingerprint".into())
                })?;
                Ok(ClaimReply::Mismatch { stored })
            }
            "finished" => Ok(ClaimReply::Finished(record_from_fields(key, reply.items)?)),
            _ => Err(reply.unexpected(key)),
        }
    }

    async fn complete(
        &self,
        key: &str,
        token: &Token,
        finish: &Finish,
        ttl: Duration,
    ) -> Result<LeaseReply, StoreError> {
        let (status, outcome) = finish_args(finish);
        let ttl = millis(ttl);
        let mut args: Vec<&[u8]> = vec![
            token.as_str().as_bytes(),
            status.as_bytes(),
            ttl.as_bytes(),
            FORMAT_VERSION.as_bytes(),
        ];
        args.extend(outcome.iter().map(Vec::as_slice));
        let reply = self.run(&self.scripts.complete, key, &args).await?;
        lease_reply(key, reply)
    }

    async fn renew(
        &self,
        key: &str,
        token: &Token,
        lease: Duration,
    ) -> Result<LeaseReply, StoreError> {
        let lease = millis(lease);
        let args: [&[u8]; 3] = [
            token.as_str().as_bytes(),
            lease.as_bytes(),
            FORMAT_VERSION.as_bytes(),
        ];
        let reply = self.run(&self.scripts.renew, key, &args).await?;
        lease_reply(key, reply)
    }

    async fn release(&self, key: &str, token: &Token) -> Result<LeaseReply, StoreError> {
        let args: [&[u8]; 2] = [token.as_str().as_bytes(), FORMAT_VERSION.as_bytes()];
        let reply = self.run(&self.scripts.release, key, &args).await?;
        lease_reply(key, reply)
    }

    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(key);
        let flat = flat_fields(key, self.query(key, &cmd).await?)?;
        if flat.is_empty() {
            return Ok(None);
        }
        record_from_fields(key, flat).map(Some)
    }

    async fn delete(&self, key: &str, force: bool) -> Result<DeleteReply, StoreError> {
        let force: &[u8] = if force { b"1" } else { b"0" };
        let args: [&[u8]; 2] = [force, FORMAT_VERSION.as_bytes()];
        let reply = self.run(&self.scripts.delete, key, &args).await?;
        match reply.tag.as_str() {
            "deleted" => Ok(DeleteReply::Deleted),
            "not_found" => Ok(DeleteReply::NotFound),
            "processing" => Ok(DeleteReply::Processing),
            _ => Err(reply.unexpected(key)),
        }
    }
}

fn lease_reply(key: &str, reply: Reply) -> Result<LeaseReply, StoreError> {
    match reply.tag.as_str() {
        "applied" => Ok(LeaseReply::Applied {
            at: reply.number(key, 0)?,
        }),
        "lost" => Ok(LeaseReply::Lost),
        _ => Err(reply.unexpected(key)),
    }
}

/// A duration as whole milliseconds, the unit of every script argument.
fn millis(duration: Duration) -> String {
    duration.as_millis().to_string()
}
