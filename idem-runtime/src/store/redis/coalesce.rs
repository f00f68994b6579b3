//! Commands that callers send at about the same moment go out together, as one pipeline.
//!
//! The multiplexed connection writes whatever its queue holds when its driver runs, but
//! under tokio the driver runs right after the caller that woke it, so busy callers each
//! paid a socket write of their own (and the server a read), which cost more than the
//! command itself. Here the first caller of a gathering spawns its flush and the flush
//! yields once before it takes the queue: every caller that is ready to run in the meantime
//! joins the same write, up to [`GATHER_LIMIT`] commands. A lone caller pays one task
//! spawn and one yield.
//!
//! Each command keeps its own reply and error; a connection error fails every command of
//! its pipeline, as it would have failed each of them alone. What can go wrong around the
//! flush costs each caller no more than the plain connection would:
//!
//! - Flushes run on the runtime the connection was opened on, which drives the connection
//!   anyway, so a caller's runtime that stalls or stops holds up nobody else's command.
//!   When that runtime has shut down, the commands of the flush it dropped fail with a
//!   connection error (the store sends them again), and flushes move to the runtime of the
//!   next caller, as the connection's reconnect does.
//! - A caller waits for its reply at most the store's connection and response timeouts
//!   together, even when no runtime runs its flush (its runtime stalled or stopped, or
//!   the worker whose slot holds the flush is blocked). A flush bounds its own write and
//!   reply by the same time.
//! - A caller that gave up (dropped, or out of time) before its flush took the queue has
//!   its command left out: nobody would read the reply, and a claim nobody owns would
//!   hold its key for a lease.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{Cmd, ErrorKind, RedisError, RedisResult, Value};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// The most commands one write carries. A full gathering goes out at once, without waiting
/// for the flush's yield, so the server works through one while callers fill the next:
/// with one unbounded gathering, 64 busy callers took turns with the server instead of
/// working alongside it. Of 16, 24, 32 and 48, 32 did best in the load generator's
/// concurrency-64 replay phase.
const GATHER_LIMIT: usize = 32;

/// A command waiting for the next write, and where its reply goes.
struct Queued {
    cmd: Cmd,
    reply: oneshot::Sender<RedisResult<Value>>,
}

/// Gathers the commands of concurrent callers and sends each gathering as one pipeline.
pub(crate) struct Coalescer {
    queue: Mutex<Queue>,
    /// The longest a caller waits for its reply.
    patience: Duration,
}

/// What the next flush sends, and where flushes run. One lock for both: every caller
/// reads both.
struct Queue {
    queued: Vec<Queued>,
    /// The runtime the connection was opened on; `None` once that one was found shut
    /// down, and flushes run where their first caller does.
    runtime: Option<Handle>,
}

impl Coalescer {
    /// A coalescer whose flushes run on the current runtime, and whose callers wait at most
    /// `patience` for a reply.
    pub fn new(patience: Duration) -> Arc<Self> {
        Arc::new(Coalescer {
            queue: Mutex::new(Queue {
                queued: Vec::new(),
                runtime: Some(Handle::current()),
            }),
            patience,
        })
    }

    /// Sends `cmd` with the commands of other callers that come in before the next write.
    #[allow(clippy::manual_async_fn)] // see "Futures" in service.rs
    pub fn query<'a>(
        self: &'a Arc<Self>,
        conn: &'a ConnectionManager,
        cmd: Cmd,
    ) -> impl Future<Output = RedisResult<Value>> + Send + 'a {
        async move {
            let (reply, answer) = oneshot::channel();
            let flush = {
                let mut queue = lock(&self.queue);
                queue.queued.push(Queued { cmd, reply });
                match queue.queued.len() {
                    1 => Some((Vec::new(), queue.runtime.clone())),
                    n if n >= GATHER_LIMIT => {
                        Some((std::mem::take(&mut queue.queued), queue.runtime.clone()))
                    }
                    _ => None,
                }
            };
            // Spawned out of the lock: a runtime that has shut down drops the task inside
            // `spawn`, and the flush's drop takes the lock.
            if let Some((full, runtime)) = flush {
                self.spawn_flush(conn, full, runtime);
            }
            // Every caller keeps a timer of its own, even on the flushes' runtime: a flush
            // spawned from a worker waits in that worker's own slot, which no other worker
            // takes, so a worker blocked by other code would hold up the callers of every
            // worker, and a caller that blocks its own worker on this future would wait for
            // ever.
            let answer = match tokio::time::timeout(self.patience, answer).await {
                Ok(answer) => answer,
                Err(_) => return Err(timed_out()),
            };
            answer.unwrap_or_else(|_| {
                Err(RedisError::from((
                    ErrorKind::Io,
                    "the task sending this command ended without its reply",
                )))
            })
        }
    }

    /// Starts the flush of the gathering this caller opened, or of the `full` one it
    /// closed, on `runtime` (else here).
    fn spawn_flush(
        self: &Arc<Self>,
        conn: &ConnectionManager,
        full: Vec<Queued>,
        runtime: Option<Handle>,
    ) {
        let flush = Flush {
            coalescer: Some(Arc::clone(self)),
            full,
        };
        let conn = conn.clone();
        let task = async move {
            if flush.full.is_empty() {
                tokio::task::yield_now().await;
            }
            flush.run(conn).await;
        };
        match runtime {
            Some(runtime) => drop(runtime.spawn(task)),
            None => drop(tokio::spawn(task)),
        }
    }

    /// Takes what the queue holds.
    fn take(&self) -> Vec<Queued> {
        std::mem::take(&mut lock(&self.queue).queued)
    }
}

fn timed_out() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "no reply within the connection and response timeouts",
    ))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The flush of one gathering. Dropped before it ran (its runtime shut down), it drops
/// what was queued for it, and with them their callers' reply channels, so each caller
/// gets an error instead of a wait; later flushes run on their first caller's runtime.
/// Once it ran, the queue belongs to the next flush.
struct Flush {
    coalescer: Option<Arc<Coalescer>>,
    /// A gathering already taken from the queue, because it was full.
    full: Vec<Queued>,
}

impl Drop for Flush {
    fn drop(&mut self) {
        if let Some(coalescer) = self.coalescer.take() {
            let dropped = {
                let mut queue = lock(&coalescer.queue);
                queue.runtime = None;
                std::mem::take(&mut queue.queued)
            };
            drop(dropped);
        }
    }
}

impl Flush {
    /// Sends what the queue holds: one command as itself, more as a pipeline; every caller
    /// is answered within the coalescer's patience.
    async fn run(mut self, mut conn: ConnectionManager) {
        let Some(coalescer) = self.coalescer.take() else {
            return;
        };
        let patience = coalescer.patience;
        let mut gathered = match self.full.is_empty() {
            true => coalescer.take(),
            false => std::mem::take(&mut self.full),
        };
        gathered.retain(|queued| !queued.reply.is_closed());
        let gathered = match <[Queued; 1]>::try_from(gathered) {
            Ok([Queued { cmd, reply }]) => {
                let sent = tokio::time::timeout(patience, cmd.query_async(&mut conn)).await;
                let _ = reply.send(sent.unwrap_or_else(|_| Err(timed_out())));
                return;
            }
            Err(gathered) if gathered.is_empty() => return,
            Err(gathered) => gathered,
        };
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let replies: Vec<_> = gathered
            .into_iter()
            .map(|Queued { cmd, reply }| {
                pipe.add_command(cmd);
                reply
            })
            .collect();
        let sent = pipe.query_async::<Vec<RedisResult<Value>>>(&mut conn);
        let sent = tokio::time::timeout(patience, sent).await;
        match sent.unwrap_or_else(|_| Err(timed_out())) {
            Ok(values) if values.len() == replies.len() => {
                for (reply, value) in replies.into_iter().zip(values) {
                    let _ = reply.send(value);
                }
            }
            Ok(values) => {
                let what = format!("{} replies to {} commands", values.len(), replies.len());
                for reply in replies {
                    let error = (ErrorKind::Client, "unexpected pipeline reply", what.clone());
                    let _ = reply.send(Err(RedisError::from(error)));
                }
            }
            Err(error) => {
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
}
