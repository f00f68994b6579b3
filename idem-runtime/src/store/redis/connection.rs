//! Connections to a standalone Redis or a Redis Cluster, their timeouts, and how client
//! errors map to store errors.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::Either;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
use redis::{Cmd, ErrorKind, RedisError, ServerErrorKind, Value};

use super::coalesce::Coalescer;
use crate::error::StoreError;

/// How a [`RedisStore`](super::RedisStore) connects and what it checks at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisStoreOptions {
    /// Refuse to start when the server's `maxmemory-policy` is not `noeviction`, instead
    /// of logging a warning. Default off.
    ///
    /// An evicting server may drop a processing or completed record under memory pressure,
    /// and the next call with that key runs the operation again.
    pub strict_eviction_check: bool,
    /// How long one attempt to open a connection may take. Default 1 s.
    pub connection_timeout: Duration,
    /// How long one command may wait for its reply once sent. Default 2 s. On a standalone
    /// server, where concurrent commands share writes, a command also waits at most
    /// `connection_timeout + response_timeout` in all from the moment it is issued, and
    /// up to 50 ms more when no runtime runs its write (a blocked worker, say).
    pub response_timeout: Duration,
    /// How many times a command is sent again after its connection failed. Default 2. A
    /// command that timed out is not sent again by the store (the service's own retries of
    /// claims and completions cover it), so a server that accepts but never answers costs
    /// `response_timeout` per service attempt, not per attempt of both.
    ///
    /// Every script is safe to repeat: a claim or completion that landed but whose reply
    /// was lost is recognised by its owner token. A release or delete repeated after a
    /// lost reply answers as if the record were already gone.
    pub connection_retries: u32,
    /// The longest a waiter for another process's owner relies on a change notification
    /// before it claims again, in case the notification was lost (the pub/sub connection
    /// broke, or the record expired). Default 300 ms. Stores that cannot notify (a cluster,
    /// or a store built from a caller's connection) poll after growing pauses instead.
    pub fallback_poll: Duration,
}

impl Default for RedisStoreOptions {
    fn default() -> Self {
        RedisStoreOptions {
            strict_eviction_check: false,
            connection_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(2),
            connection_retries: 2,
            fallback_poll: Duration::from_millis(300),
        }
    }
}

/// The server's `maxmemory-policy` evicts keys, and the store was asked to refuse that.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "Redis maxmemory-policy is {policy:?}, which may evict idempotency records and run an \
     operation twice; set `maxmemory-policy noeviction` or turn off the strict check"
)]
pub struct EvictionPolicyError {
    /// The policy the server reported.
    pub policy: String,
}

/// A standalone or cluster connection; both are cheap clones of a shared handle. A
/// standalone connection gathers the commands of concurrent callers into one write.
#[derive(Clone)]
pub(crate) enum Connection {
    Standalone(ConnectionManager, Arc<Coalescer>),
    Cluster(ClusterConnection),
}

impl Connection {
    /// Opens a reconnecting connection to the server at `url`.
    pub async fn standalone(url: &str, options: &RedisStoreOptions) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(store_error)?;
        // Few, short reconnect attempts: a command issued while the server is down waits for
        // them, and should fail within a second or two rather than hang.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connection_timeout))
            .set_response_timeout(Some(options.response_timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(200));
        let manager = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(store_error)?;
        let patience = options
            .connection_timeout
            .saturating_add(options.response_timeout);
        Ok(Connection::Standalone(manager, Coalescer::new(patience)))
    }

    /// Opens a connection to the Redis Cluster that `urls` belong to.
    pub async fn cluster<I, S>(urls: I, options: &RedisStoreOptions) -> Result<Self, StoreError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let urls: Vec<String> = urls.into_iter().map(|u| u.as_ref().to_owned()).collect();
        let client = redis::cluster::ClusterClient::builder(urls)
            .connection_timeout(options.connection_timeout)
            .response_timeout(options.response_timeout)
            .retries(options.connection_retries)
            .build()
            .map_err(store_error)?;
        let connection = client.get_async_connection().await.map_err(store_error)?;
        Ok(Connection::Cluster(connection))
    }

    /// Sends one command to the node that owns its key (any node for keyless commands); on
    /// a standalone server, in one write with those of other callers sent at the same time.
    ///
    /// Hands back the connection's own future rather than being an `async fn`: a layer of
    /// its own would add its copy of `cmd` to every call's future.
    pub fn query(&self, cmd: Cmd) -> impl Future<Output = redis::RedisResult<Value>> + Send + '_ {
        match self {
            Connection::Standalone(conn, coalescer) => Either::Left(coalescer.query(conn, cmd)),
            Connection::Cluster(conn) => {
                let mut conn = conn.clone();
                Either::Right(async move { cmd.query_async(&mut conn).await })
            }
        }
    }

    /// Sends `pipe` as one request to the node that owns its keys (which must share one
    /// slot on a cluster), with a result per command.
    pub async fn pipeline(
        &self,
        pipe: &redis::Pipeline,
    ) -> redis::RedisResult<Vec<redis::RedisResult<Value>>> {
        match self.clone() {
            Connection::Standalone(mut conn, _) => pipe.query_async(&mut conn).await,
            Connection::Cluster(mut conn) => pipe.query_async(&mut conn).await,
        }
    }

    /// Sends one command to every primary (the only one, when standalone).
    async fn query_primaries(&self, cmd: Cmd) -> redis::RedisResult<Value> {
        match self.clone() {
            Connection::Standalone(mut conn, _) => cmd.query_async(&mut conn).await,
            Connection::Cluster(mut conn) => {
                let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
                conn.route_command(cmd, routing).await
            }
        }
    }

    /// Checks that no primary evicts keys; see [`RedisStoreOptions::strict_eviction_check`].
    pub async fn check_eviction_policy(&self, strict: bool) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("GET").arg("maxmemory-policy");
        let reply = match self.query_primaries(cmd).await {
            Ok(reply) => reply,
            Err(error) if matches!(store_error(error.clone()), StoreError::Command(_)) => {
                // Managed services often refuse CONFIG; the store works, unchecked.
                tracing::info!(%error, "could not read maxmemory-policy; eviction check skipped");
                return Ok(());
            }
            Err(error) => return Err(store_error(error)),
        };
        let mut policies = Vec::new();
        collect_policies(&reply, &mut policies);
        for policy in policies.into_iter().filter(|p| p != "noeviction") {
            if strict {
                return Err(StoreError::Command(Box::new(EvictionPolicyError {
                    policy,
                })));
            }
            tracing::warn!(
                policy,
                "Redis maxmemory-policy is not noeviction; an evicted record lets an operation run twice"
            );
        }
        Ok(())
    }
}

/// Finds every value that follows a `maxmemory-policy` name, however the replies of one or
/// many nodes are nested.
fn collect_policies(value: &Value, out: &mut Vec<String>) {
    let items: Vec<&Value> = match value {
        Value::Array(items) | Value::Set(items) => items.iter().collect(),
        Value::Map(pairs) => pairs.iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => return,
    };
    let mut iter = items.into_iter().peekable();
    while let Some(item) = iter.next() {
        if text(item).as_deref() == Some("maxmemory-policy") {
            if let Some(policy) = iter.peek().and_then(|v| text(v)) {
                out.push(policy);
                iter.next();
                continue;
            }
        }
        collect_policies(item, out);
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    }
}

/// Maps a client error: the server could not be reached or the connection broke (the
/// command may or may not have run) → [`StoreError::Connection`]; the server answered with
/// an error → [`StoreError::Command`].
pub(crate) fn store_error(error: RedisError) -> StoreError {
    if is_connection_error(&error) {
        StoreError::Connection(Box::new(error))
    } else {
        StoreError::Command(Box::new(error))
    }
}

/// Whether the error leaves the outcome of the command unknown, or means the server could
/// not take it at all for a while, so sending it again may succeed.
pub(crate) fn is_connection_error(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || matches!(
            error.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(ServerErrorKind::BusyLoading)
                | ErrorKind::Server(ServerErrorKind::ClusterDown)
                | ErrorKind::Server(ServerErrorKind::MasterDown)
                | ErrorKind::Server(ServerErrorKind::TryAgain)
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn policies_are_found_in_standalone_and_per_node_replies() {
        let standalone = Value::Array(vec![bulk("maxmemory-policy"), bulk("noeviction")]);
        let mut found = Vec::new();
        collect_policies(&standalone, &mut found);
        assert_eq!(found, vec!["noeviction"]);

        let per_node = Value::Map(vec![
            (bulk("127.0.0.1:7001"), standalone.clone()),
            (
                bulk("127.0.0.1:7002"),
                Value::Map(vec![(bulk("maxmemory-policy"), bulk("allkeys-lru"))]),
            ),
        ]);
        let mut found = Vec::new();
        collect_policies(&per_node, &mut found);
        assert_eq!(found, vec!["noeviction", "allkeys-lru"]);
    }

    #[test]
    fn io_errors_are_connection_errors_and_server_replies_are_command_errors() {
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(matches!(store_error(io), StoreError::Connection(_)));
        let timeout = RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert!(matches!(store_error(timeout), StoreError::Connection(_)));
        let reply = RedisError::from((
            ErrorKind::Server(ServerErrorKind::ResponseError),
            "WRONGTYPE",
        ));
        assert!(matches!(store_error(reply), StoreError::Command(_)));
    }
}
