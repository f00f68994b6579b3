//! The Redis store: one Redis string per record, a plain `SET` for the common claim, one
//! Lua script per other transition on the server's clock, for a standalone server or a
//! Redis Cluster.
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
//! One record is one Redis string under the store key
//! (`<prefix>{<len>:<scope>:<key>}`, see [`Key::store_key`](crate::Key::store_key)); the
//! braces make the scope and key the Redis Cluster hash tag. `redis-cli GET <store key>`
//! shows it: a header line, then the payload.
//!
//! ```text
//! idem2 st=completed fp=9f86…08 tok=5be0…c1 fence=1712345678901234 sa=1712345678901 ca=1712345678999 code=201 hl=22
//! [["Location","/o/7"]]{"order":7}
//! ```
//!
//! The header is the format tag `idem2` (format version 2; version 1 kept hashes, and any
//! other tag is reported as [`StoreError::Corrupt`]) and space-separated `name=value`
//! fields, none of which contains a space. The first five always come in the order of this
//! table (the scripts read them with one anchored match); fields a reader does not know are
//! skipped:
//!
//! | field | present | meaning |
//! |---|---|---|
//! | `st` | always | `processing`, `completed`, `failed` or `not_replayable` |
//! | `fp` | always | fingerprint of the arguments, 64 hex digits |
//! | `tok` | always | owner token of the call that claimed (or last took over) the key |
//! | `fence` | always | fencing number, see [Clocks](#clocks) |
//! | `sa` | always | when the owner claimed the key, epoch milliseconds |
//! | `ls` | processing, fresh claim | the lease length in milliseconds; the lease ends one lease before the key expires |
//! | `lu` | processing, after a takeover or renewal | end of the owner's lease, epoch milliseconds on the server's clock |
//! | `w` | processing | `1` when a waiter in another process asked to be told of the outcome |
//! | `ca` | finished | when the outcome was stored, epoch milliseconds (the client's clock when a first call finishes an untouched claim, see [Round trips](#round-trips); the server's otherwise) |
//! | `code` | completed, failed | status code of the stored response |
//! | `bt` | completed, failed | body type: `json` (JSON text; the default, left out) or `bytes` (stored as given) |
//! | `hl` | completed, failed, with headers | length of the headers at the start of the payload (left out: 0) |
//!
//! A processing record without `ls` or `lu` (written by hand) is held until it expires.
//!
//! Number fields hold decimal digits only, at most 2^53 − 1 (the largest integer a Lua
//! number holds exactly). A record with a field that breaks this, an unknown status, a
//! fingerprint that is not 64 hex digits, or (processing, without a lease) no expiry, is
//! refused as [`StoreError::Corrupt`] naming the key and the field, on every path: claim,
//! wait, complete, renew, release, get and delete. Nothing is waited on, taken over or
//! written over; a forced [`delete`](Store::delete) is how an operator clears it.
//! The payload of a completed or failed record is the headers (a JSON list of
//! `[name, value]` pairs, `hl` bytes, absent when there are none) followed by the body
//! bytes as given; of a not-replayable record, the reason.
//!
//! Every record expires (`PTTL` is never `-1`): a processing record one lease after its
//! lease ends (kept that long so a takeover knows whose claim it replaces), a finished
//! record its TTL after it finished.
//!
//! # Round trips
//!
//! A claim is first the plain command `SET <key> <processing record> NX GET PX <2 × lease>`
//! (a Lua call costs the server about ten times a `GET`):
//!
//! - no record: the key is claimed. A first call costs two requests (this, and the
//!   completion script).
//! - a finished record: `GET` brings it back in the same reply, and the client compares
//!   fingerprints. A replay costs one request.
//! - a processing record: the claim script (`claim.lua`) decides on the server's clock
//!   whether the lease can be taken over or how long it still runs; one more request, only
//!   on this path.
//!
//! Completing, failing, renewing, releasing, deleting and taking over are one script each
//! (`complete.lua`, `renew.lua`, `release.lua`, `delete.lua`, `claim.lua`), which read the
//! server's clock with `TIME` and touch only `KEYS[1]`. Their shared helpers (the record
//! format, the clock) are in `record.lua`, prepended to each at build time. Scripts go out
//! as `EVALSHA`; a `NOSCRIPT` reply is answered with `EVAL`, which caches the script again
//! on the node that owns the key, so `SCRIPT FLUSH`, restarts and failovers cost one extra
//! round trip and nothing else.
//!
//! The completion of a first call has a short way through its script
//! (`complete_untouched.lua`, ahead of the helpers): the client sends the bytes its claim
//! wrote (made again from the [`Owner`]) and the finished record. When the key still holds
//! exactly those bytes, nobody renewed, marked or took over the claim, and the script
//! writes the finished record as it is, its `ca` from the client's clock like the claim's
//! `sa`. Any other record goes the general way, on the server's clock.
//!
//! On a standalone server, commands that concurrent callers send at about the same moment
//! go out as one pipeline, in one write (see `coalesce.rs`): under load the socket writes
//! and reads of every single request cost the client and the server more than the commands
//! themselves. Each command keeps its own reply and error, waits at most
//! `connection_timeout + response_timeout` in all (up to 50 ms more when no runtime runs
//! its write), and is left out of the write when its caller gave up before it. The
//! callers keep no timers: one thread per process times out what is late.
//!
//! # Clocks
//!
//! Lease decisions (busy, takeover, renewal) are taken by scripts on the server's clock. A
//! fresh claim has no server clock, so what it writes comes from the client's:
//!
//! - the lease end is not stored; the server derives it from the key's expiry, which the
//!   `SET` set to two leases, as `now + PTTL − ls`. The lease end the client reports
//!   ([`Lease::lease_until`](crate::Lease::lease_until), and [`RedisStore::get`] as
//!   `sa + ls`) is the client's estimate of it;
//! - `sa` is the client's clock at the claim;
//! - the fence is the client's clock in microseconds, raised above every fence this store
//!   handle has seen. A takeover's fence is `max(server µs, previous fence + 1)`, so fences
//!   grow for every later owner of a key as long as the clients' clocks agree with each
//!   other and with the server's within one lease.
//!
//! # Waiting
//!
//! A caller that finds another process's owner at work waits for a notification, not for a
//! poll: it subscribes to `idem:changed:<store key>` on the store's shared pub/sub
//! connection, then runs `watch.lua`, which re-checks the record and marks it (`w=1`). The
//! scripts that end a processing record publish on that channel only when it is marked, so
//! an uncontended call pays nothing. A waiter claims again when notified, at the end of the
//! owner's lease, or after [`RedisStoreOptions::fallback_poll`] (300 ms) at the latest, whichever is first. Callers in
//! the same process share one claim and do not touch Redis while they wait.
//!
//! Notifications need a store made by [`RedisStore::connect`] or
//! [`RedisStore::connect_with`] on a standalone server. A Redis Cluster (where a
//! subscription lives on one node and the connection does not follow resharding) and a
//! store built from a caller's connection poll instead, after pauses that grow from 2 ms to
//! 250 ms.
//!
//! # Batches
//!
//! [`Store::claim_many`] sends the `SET NX GET` of every claim at once: one pipeline on a
//! standalone server, one pipeline per hash slot on a cluster, all sent together (a
//! cluster pipeline must stay within one slot). Claims that find a processing record go on
//! to the claim script, one request each.
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
//! Requires Redis 7.0 or later (`SET` with both `NX` and `GET`).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;

use super::{Claim, ClaimReply, DeleteReply, Finish, LeaseReply, Owner, Store};
use crate::error::StoreError;
use crate::fingerprint::Fingerprint;
use crate::record::{Millis, Record, Token};

mod coalesce;
mod codec;
mod connection;
mod notify;
mod script;
mod watchdog;

pub use connection::{EvictionPolicyError, RedisStoreOptions};
/// The `redis` crate this store is built on, for building a connection to pass to
/// [`RedisStore::from_connection_manager`] or [`RedisStore::from_cluster_connection`].
pub use redis;

use codec::{corrupt, Found, Reply, FORMAT_VERSION};
use connection::{is_connection_error, store_error, Connection};
use notify::Notifier;
use script::{Script, Scripts};

/// The pause before a command is sent again after a broken connection, times the attempt.
const RETRY_PAUSE: Duration = Duration::from_millis(25);

/// The largest fence a store handle carries over to its own fresh claims: half the format's
/// limit, about the year 2112 in microseconds, so fences taken over from ordinary records
/// always count and the handle's fences can never reach the limit.
const FENCE_CARRY_LIMIT: u64 = codec::MAX_NUMBER / 2;

/// Records in Redis: a standalone server (through a reconnecting
/// [`ConnectionManager`]) or a Redis Cluster. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct RedisStore {
    connection: Connection,
    scripts: Arc<Scripts>,
    options: RedisStoreOptions,
    /// Change notifications, on a standalone server reached by URL.
    notifier: Option<Arc<Notifier>>,
    /// The largest fence this handle has handed out or seen, so that its fresh claims'
    /// fences grow even when its clock does not.
    last_fence: Arc<AtomicU64>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.connection {
            Connection::Standalone(..) => "standalone",
            Connection::Cluster(_) => "cluster",
        };
        f.debug_struct("RedisStore")
            .field("connection", &kind)
            .field("notifies", &self.notifier.is_some())
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
        let client = redis::Client::open(url).map_err(store_error)?;
        let mut store = RedisStore::start(connection, options).await?;
        store.notifier = Some(Arc::new(Notifier::new(client)));
        Ok(store)
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
    /// settings apply, and `options` only for the start-up check, retries, and the longest
    /// a command waits for its reply (`connection_timeout` + `response_timeout`). Waiters
    /// poll: the store has no URL to open its pub/sub connection with.
    pub async fn from_connection_manager(
        manager: ConnectionManager,
        options: RedisStoreOptions,
    ) -> Result<Self, StoreError> {
        let patience = options
            .connection_timeout
            .saturating_add(options.response_timeout);
        let connection = Connection::Standalone(manager, coalesce::Coalescer::new(patience));
        RedisStore::start(connection, options).await
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
            scripts: Arc::new(Scripts::new()),
            options,
            notifier: None,
            last_fence: Arc::default(),
        })
    }

    /// Writes `record` under `key` as it is, expiring `ttl` from now, replacing what is
    /// there. For tests and migrations: it bypasses every rule of the protocol.
    pub async fn insert(&self, key: &str, record: Record, ttl: Duration) -> Result<(), StoreError> {
        codec::check_token(key, &record.token)?;
        let ttl = millis(ttl.max(Duration::from_millis(1)));
        let value = codec::encode(&record);
        let args: [&[u8]; 2] = [ttl.as_bytes(), &value];
        self.send(&self.scripts.insert, key, &args).await?;
        Ok(())
    }

    /// Time left before the record under `key` expires, from Redis `PTTL`: `None` when
    /// there is no record, [`Duration::MAX`] for a key without expiry (which idem never
    /// writes).
    pub async fn pttl(&self, key: &str) -> Result<Option<Duration>, StoreError> {
        let pttl = || {
            let mut cmd = redis::cmd("PTTL");
            cmd.arg(key);
            cmd
        };
        match self.query(key, pttl).await? {
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
            // The reply is taken apart before the pause, so that its room is not kept in
            // every call's future across it.
            match script.run(&self.connection, key, args).await {
                Ok(value) => return Ok(value),
                Err(error) if self.retry(key, &error, &mut attempt) => {}
                Err(error) => return Err(store_error(error)),
            }
            // Boxed, as every rare path here: inline it would grow each call.
            Box::pin(tokio::time::sleep(RETRY_PAUSE * attempt)).await;
        }
    }

    /// Sends the command `command` makes (again for each attempt: a sent command is gone).
    #[allow(clippy::manual_async_fn)] // see "Futures" in service.rs
    fn query<'a>(
        &'a self,
        key: &'a str,
        command: impl Fn() -> redis::Cmd + Send + 'a,
    ) -> impl Future<Output = Result<redis::Value, StoreError>> + Send + 'a {
        async move {
            let mut attempt = 0;
            loop {
                // The reply is taken apart before the pause, so that its room is not kept in
                // every call's future across it.
                match self.connection.query(command()).await {
                    Ok(value) => return Ok(value),
                    Err(error) if self.retry(key, &error, &mut attempt) => {}
                    Err(error) => return Err(store_error(error)),
                }
                // Boxed, as every rare path here: inline it would grow each call.
                Box::pin(tokio::time::sleep(RETRY_PAUSE * attempt)).await;
            }
        }
    }

    fn retry(&self, key: &str, error: &redis::RedisError, attempt: &mut u32) -> bool {
        // A timeout means the server took `response_timeout` without answering: sending again
        // here would multiply that wait under the service's own retries of claims and
        // completions, which already carry the same token.
        if !is_connection_error(error)
            || error.is_timeout()
            || *attempt >= self.options.connection_retries
        {
            return false;
        }
        *attempt += 1;
        tracing::debug!(key, %error, attempt = *attempt, "Redis connection failed; sending again");
        true
    }

    /// The record a fresh claim writes with `SET NX GET`, and what it acquires when the key
    /// is free.
    fn fresh_claim<'a>(&self, claim: &Claim<'a>) -> Result<FreshClaim<'a>, StoreError> {
        codec::check_token(claim.key, claim.token)?;
        let now = since_epoch();
        let now_us = now.as_micros() as u64;
        let previous = self.last_fence.fetch_max(now_us, Ordering::AcqRel);
        let fence = match previous >= now_us {
            true => self.last_fence.fetch_add(1, Ordering::AcqRel) + 1,
            false => now_us,
        };
        let started_at = now.as_millis() as Millis;
        let lease = claim.lease.as_millis() as u64;
        let fresh = FreshClaim {
            fingerprint: claim.fingerprint,
            token: claim.token,
            fence,
            started_at,
            lease_ms: lease,
        };
        Ok(fresh)
    }

    /// What the reply to a fresh claim's `SET NX GET` means; `None` when the key holds a
    /// processing record, which the claim script must decide on.
    fn fresh_reply(
        &self,
        claim: &Claim<'_>,
        fresh: &FreshClaim<'_>,
        reply: redis::Value,
    ) -> Result<Option<ClaimReply>, StoreError> {
        let key = claim.key;
        let value = match reply {
            redis::Value::Nil => return Ok(Some(fresh.acquired())),
            redis::Value::BulkString(value) => value,
            other => return Err(corrupt(key, format!("unexpected SET reply {other:?}"))),
        };
        match codec::found(key, value)? {
            Found::Processing => Ok(None),
            Found::Finished(record) => {
                if claim.validate_fingerprint && record.fingerprint != *claim.fingerprint {
                    return Ok(Some(ClaimReply::Mismatch {
                        stored: record.fingerprint,
                    }));
                }
                Ok(Some(ClaimReply::Finished(record)))
            }
        }
    }

    /// The claim script, for a key that holds a processing record.
    async fn claim_processing(&self, claim: &Claim<'_>) -> Result<ClaimReply, StoreError> {
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
            "acquired" => {
                let fence = reply.number(key, 0)?;
                // Fresh claims from this handle go above the fences it has seen, but not
                // above one taken over from a record near the format's limit (only a
                // hand-written record gets there): that would push every later fresh
                // fence of the handle past the limit.
                if fence <= FENCE_CARRY_LIMIT {
                    self.last_fence.fetch_max(fence, Ordering::AcqRel);
                }
                Ok(ClaimReply::Acquired {
                    fence,
                    lease_until: reply.number(key, 1)?,
                    takeover: reply.text(2) == "1",
                })
            }
            "busy" => Ok(ClaimReply::Busy {
                remaining: Duration::from_millis(reply.number(key, 0)?),
            }),
            "mismatch" => {
                let stored = reply.text(0).parse().map_err(|_| {
                    corrupt(key, "field `fp` is not a 64-digit hex fingerprint".into())
                })?;
                Ok(ClaimReply::Mismatch { stored })
            }
            "finished" => {
                let value = reply.items.into_iter().next().unwrap_or_default();
                Ok(ClaimReply::Finished(codec::decode(key, value)?))
            }
            _ => Err(reply.unexpected(key)),
        }
    }

    /// Sends the fresh claims of `claims` as pipelines: one on a standalone server, one per
    /// hash slot on a cluster, all at once. Answers each claim's `SET` reply in order.
    async fn pipelined(
        &self,
        claims: &[(&str, redis::Cmd)],
    ) -> Vec<Result<redis::Value, StoreError>> {
        let groups: Vec<Vec<usize>> = match &self.connection {
            Connection::Standalone(..) => vec![(0..claims.len()).collect()],
            Connection::Cluster(_) => {
                let mut by_slot: std::collections::BTreeMap<u16, Vec<usize>> = Default::default();
                for (index, (key, _)) in claims.iter().enumerate() {
                    by_slot.entry(slot_of(key)).or_default().push(index);
                }
                by_slot.into_values().collect()
            }
        };
        let sends = groups.iter().map(|group| async move {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for &index in group {
                pipe.add_command(claims[index].1.clone());
            }
            (group, self.connection.pipeline(&pipe).await)
        });
        let mut replies: Vec<Result<redis::Value, StoreError>> = Vec::with_capacity(claims.len());
        replies.resize_with(claims.len(), || Ok(redis::Value::Nil));
        for (group, result) in futures_util::future::join_all(sends).await {
            match result {
                Ok(values) if values.len() == group.len() => {
                    for (&index, value) in group.iter().zip(values) {
                        replies[index] = value
                            .map_err(|e| wrong_type_is_corrupt(claims[index].0, store_error(e)));
                    }
                }
                Ok(values) => {
                    let what = format!("{} replies to {} claims", values.len(), group.len());
                    for &index in group {
                        replies[index] = Err(StoreError::Command(what.clone().into()));
                    }
                }
                Err(error) => {
                    for &index in group {
                        replies[index] = Err(store_error(error.clone()));
                    }
                }
            }
        }
        replies
    }
}

/// What a fresh claim writes: the processing record's fields and the lease length.
struct FreshClaim<'a> {
    fingerprint: &'a Fingerprint,
    token: &'a Token,
    fence: u64,
    started_at: Millis,
    lease_ms: u64,
}

impl FreshClaim<'_> {
    /// What the claim answers when the key was free: the lease is the caller's. (Made
    /// after the reply, not kept beside the claim: every future up to the caller's would
    /// carry its 176 bytes.)
    fn acquired(&self) -> ClaimReply {
        ClaimReply::Acquired {
            fence: self.fence,
            lease_until: self.started_at + self.lease_ms,
            takeover: false,
        }
    }

    /// `SET <key> <record> NX GET PX <two leases>`; every attempt writes the same bytes.
    fn command(&self, key: &str) -> redis::Cmd {
        // Sized up front (20 digits for the expiry): growing the command's buffers argument
        // by argument took more allocator time than the rest of a replay.
        let mut record = codec::Line::new();
        codec::fresh_claim(
            &mut record,
            self.fingerprint,
            self.token,
            self.fence,
            self.started_at,
            self.lease_ms,
        );
        let record = record.as_bytes();
        let size = "SETNXGETPX".len() + key.len() + record.len() + 20;
        let mut cmd = redis::Cmd::with_capacity(7, size);
        cmd.arg("SET")
            .arg(key)
            .arg(record)
            .arg("NX")
            .arg("GET")
            .arg("PX")
            .arg(self.lease_ms.saturating_mul(2).max(1));
        cmd
    }
}

/// The Redis Cluster hash slot of `key`: CRC16 (XMODEM) of its hash tag, or of the whole
/// key when it has none, modulo 16384.
fn slot_of(key: &str) -> u16 {
    let key = key.as_bytes();
    let tagged = key.iter().position(|b| *b == b'{').and_then(|open| {
        let close = key[open + 1..].iter().position(|b| *b == b'}')?;
        (close > 0).then(|| &key[open + 1..open + 1 + close])
    });
    let mut crc: u16 = 0;
    for byte in tagged.unwrap_or(key) {
        crc ^= u16::from(*byte) << 8;
        for _ in 0..8 {
            crc = match crc & 0x8000 {
                0 => crc << 1,
                _ => (crc << 1) ^ 0x1021,
            };
        }
    }
    crc % 16384
}

impl RedisStore {
    /// [`Store::claim`], whose future the service awaits without boxing it.
    #[allow(clippy::manual_async_fn)] // see "Futures" in service.rs
    pub(crate) fn claim_unboxed<'a>(
        &'a self,
        claim: Claim<'a>,
    ) -> impl Future<Output = Result<ClaimReply, StoreError>> + Send + 'a {
        async move {
            let fresh = self.fresh_claim(&claim)?;
            let reply = self
                .query(claim.key, || fresh.command(claim.key))
                .await
                .map_err(|e| wrong_type_is_corrupt(claim.key, e))?;
            if let Some(reply) = self.fresh_reply(&claim, &fresh, reply)? {
                return Ok(reply);
            }
            // Boxed: a held key is the rare case, and its script call inline made every claim's
            // future too large for the allocator's per-thread cache. (And after the `if`, not
            // in a `match` on the reply, which would hold the reply's room across this await.)
            Box::pin(self.claim_processing(&claim)).await
        }
    }

    /// [`Store::complete`], whose future the service awaits without boxing it.
    pub(crate) async fn complete_unboxed(
        &self,
        owner: &Owner<'_>,
        finish: &Finish,
        ttl: Duration,
    ) -> Result<LeaseReply, StoreError> {
        // The script reads the owner token from the finished record's header line, where
        // a space or a newline in it would pass for the end of the field.
        codec::check_token(owner.key, owner.token)?;
        let ttl = millis(ttl);
        // For the script's common case: what the owner's fresh claim wrote (a takeover
        // wrote a record of the script's making), and the finished record.
        let mut claimed = Vec::new();
        if !owner.takeover {
            codec::fresh_claim(
                &mut claimed,
                owner.fingerprint,
                owner.token,
                owner.fence,
                owner.started_at,
                owner.lease.as_millis() as u64,
            );
        }
        let completed_at = epoch_ms();
        let finished = codec::finished(
            owner.fingerprint,
            owner.token,
            owner.fence,
            owner.started_at,
            finish,
            completed_at,
        );
        let args: [&[u8]; 3] = [ttl.as_bytes(), &claimed, &finished];
        let reply = self.send(&self.scripts.complete, owner.key, &args).await?;
        // The short path's reply: stored as sent, finished at `completed_at`.
        if reply == redis::Value::Int(1) {
            return Ok(LeaseReply::Applied { at: completed_at });
        }
        lease_reply(owner.key, Reply::parse(owner.key, reply)?)
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn claim(&self, claim: Claim<'_>) -> Result<ClaimReply, StoreError> {
        self.claim_unboxed(claim).await
    }

    async fn claim_many(&self, claims: &[Claim<'_>]) -> Vec<Result<ClaimReply, StoreError>> {
        let prepared: Vec<_> = claims.iter().map(|c| self.fresh_claim(c)).collect();
        let commands: Vec<(&str, redis::Cmd)> = claims
            .iter()
            .zip(&prepared)
            .filter_map(|(c, p)| p.as_ref().ok().map(|f| (c.key, f.command(c.key))))
            .collect();
        let mut sent = self.pipelined(&commands).await.into_iter();
        let mut replies = Vec::with_capacity(claims.len());
        for (claim, prepared) in claims.iter().zip(prepared) {
            let reply = prepared.and_then(|fresh| {
                let missing = || Err(StoreError::Command("the pipeline lost a reply".into()));
                let value = sent.next().unwrap_or_else(missing)?;
                self.fresh_reply(claim, &fresh, value)
            });
            replies.push(reply);
        }
        // Keys held by an owner go to the claim script, all at once.
        let held = claims
            .iter()
            .zip(&replies)
            .enumerate()
            .filter(|(_, (_, reply))| matches!(reply, Ok(None)))
            .map(|(index, (claim, _))| async move { (index, self.claim_processing(claim).await) });
        let decided = futures_util::future::join_all(held).await;
        let mut answers: Vec<Option<Result<ClaimReply, StoreError>>> =
            replies.into_iter().map(Result::transpose).collect();
        for (index, reply) in decided {
            answers[index] = Some(reply);
        }
        let undecided = || {
            Err(StoreError::Command(
                "a held key was not sent to the claim script".into(),
            ))
        };
        answers
            .into_iter()
            .map(|answer| answer.unwrap_or_else(undecided))
            .collect()
    }

    async fn complete(
        &self,
        owner: &Owner<'_>,
        finish: &Finish,
        ttl: Duration,
    ) -> Result<LeaseReply, StoreError> {
        self.complete_unboxed(owner, finish, ttl).await
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
        let get = || {
            let mut cmd = redis::cmd("GET");
            cmd.arg(key);
            cmd
        };
        match self.query(key, get).await {
            Ok(redis::Value::Nil) => Ok(None),
            Ok(redis::Value::BulkString(value)) => codec::decode(key, value).map(Some),
            Ok(other) => Err(corrupt(key, format!("unexpected GET reply {other:?}"))),
            Err(error) => Err(wrong_type_is_corrupt(key, error)),
        }
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

    fn notifies(&self) -> bool {
        self.notifier.is_some()
    }

    async fn wait_for_change(&self, key: &str, timeout: Duration) -> Result<(), StoreError> {
        let Some(notifier) = &self.notifier else {
            tokio::time::sleep(timeout).await;
            return Ok(());
        };
        // Opening the pub/sub connection and subscribing are bounded like any command, and
        // by the caller's nap: a server that accepts but never answers must not hold the
        // waiter past its wait budget.
        let patience = self
            .options
            .connection_timeout
            .saturating_add(self.options.response_timeout);
        let bound = timeout.min(patience);
        let subscribed = tokio::time::timeout(bound, notifier.subscribe(notify::channel(key)));
        let subscription = match subscribed.await {
            Ok(Ok(subscription)) => subscription,
            Ok(Err(error)) => {
                tracing::debug!(key, %error, "could not subscribe to changes; polling");
                tokio::time::sleep(timeout.min(self.options.fallback_poll)).await;
                return Ok(());
            }
            Err(_) => {
                tracing::debug!(key, "subscribing to changes timed out; polling");
                return Ok(());
            }
        };
        let notified = subscription.notify().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();

        // Subscribed first: a change after this mark is published to us, and one before it
        // is seen here.
        let args: [&[u8]; 1] = [FORMAT_VERSION.as_bytes()];
        let reply = self.run(&self.scripts.watch, key, &args).await?;
        let remaining = match reply.tag.as_str() {
            "changed" => return Ok(()),
            "held" => Duration::from_millis(reply.number(key, 0)?),
            _ => return Err(reply.unexpected(key)),
        };
        let nap = timeout
            .min(remaining.max(Duration::from_millis(1)))
            .min(self.options.fallback_poll);
        let _ = tokio::time::timeout(nap, notified).await;
        Ok(())
    }
}

/// A plain command on a record of the old hash layout fails with `WRONGTYPE`: that record
/// is unreadable, not a server failure.
fn wrong_type_is_corrupt(key: &str, error: StoreError) -> StoreError {
    match &error {
        StoreError::Command(source) if source.to_string().contains("WRONGTYPE") => corrupt(
            key,
            "not a string record (format version 1 kept records in hashes); delete it".into(),
        ),
        _ => error,
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

/// The client's clock.
fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// The client's clock in epoch milliseconds.
fn epoch_ms() -> Millis {
    since_epoch().as_millis() as Millis
}

/// A duration as whole milliseconds, the unit of every script argument.
fn millis(duration: Duration) -> String {
    duration.as_millis().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_cluster_hash_tag() {
        // The values `CLUSTER KEYSLOT` answers.
        assert_eq!(slot_of("foo"), 12182);
        assert_eq!(slot_of("{user1000}.following"), slot_of("user1000"));
        assert_eq!(slot_of("p:{0::k}"), slot_of("0::k"));
        assert_eq!(slot_of("a{}b"), slot_of("a{}b"));
    }
}
