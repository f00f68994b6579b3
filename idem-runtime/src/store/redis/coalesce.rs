//! Commands that callers send at about the same moment go out together, as one pipeline.
//!
//! The multiplexed connection writes whatever its queue holds when its driver runs, but
//! under tokio the driver runs right after the caller that woke it, so busy callers each
//! paid a socket write of their own (and the server a read), which cost more than the
//! command itself. Here the first caller of a gathering spawns its flush and the flush
//! yields once before it takes the queue: every caller that is ready to run in the meantime
//! joins the same write. A lone caller pays one task spawn and one yield.
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
//!   together, even when no runtime runs its flush.
//! - A caller that gave up (dropped, or out of time) before its flush took the queue has
//!   its command left out: nobody would read the reply, and a claim nobody owns would
//!   hold its key for a lease.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{Cmd, ErrorKind, RedisError, RedisResult, Value};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// A command waiting for the next write, and where its reply goes.
struct Queued {
    cmd: Cmd,
    reply: oneshot::Sender<RedisResult<Value>>,
}

/// Gathers the commands of concurrent callers and sends each gathering as one pipeline.
pub(crate) struct Coalescer {
    queue: Mutex<Vec<Queued>>,
    /// Where flushes run: the runtime the connection was opened on; `None` once that one
    /// was found shut down, and flushes run where their first caller does.
    runtime: Mutex<Option<Handle>>,
    /// The longest a caller waits for its reply.
    patience: Duration,
}

impl Coalescer {
    /// A coalescer whose flushes run on the current runtime, and whose callers wait at most
    /// `patience` for a reply.
    pub fn new(patience: Duration) -> Arc<Self> {
        Arc::new(Coalescer {
            queue: Mutex::default(),
            runtime: Mutex::new(Some(Handle::current())),
            patience,
        })
    }

    /// Sends `cmd` with the commands of other callers that come in before the next write.
    pub async fn query(self: &Arc<Self>, conn: &ConnectionManager, cmd: Cmd) -> RedisResult<Value> {
        let (reply, answer) = oneshot::channel();
        let first = {
            let mut queue = lock(&self.queue);
            queue.push(Queued { cmd, reply });
            queue.len() == 1
        };
        if first {
            self.spawn_flush(conn);
        }
        match tokio::time::timeout(self.patience, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(RedisError::from((
                ErrorKind::Io,
                "the task sending this command ended without its reply",
            ))),
            Err(_) => Err(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no reply within the connection and response timeouts",
            ))),
        }
    }

    /// Starts the flush of the gathering this caller opened.
    fn spawn_flush(self: &Arc<Self>, conn: &ConnectionManager) {
        let flush = Flush(Some(Arc::clone(self)));
        let conn = conn.clone();
        let task = async move {
            tokio::task::yield_now().await;
            flush.run(conn).await;
        };
        // Cloned out of the lock: a runtime that has shut down drops the task inside
        // `spawn`, and the flush's drop takes the lock.
        let runtime = lock(&self.runtime).clone();
        match runtime {
            Some(runtime) => drop(runtime.spawn(task)),
            None => drop(tokio::spawn(task)),
        }
    }

    /// Takes what the queue holds.
    fn take(&self) -> Vec<Queued> {
        std::mem::take(&mut *lock(&self.queue))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The flush of one gathering. Dropped before it ran (its runtime shut down), it drops
/// what was queued for it, and with them their callers' reply channels, so each caller
/// gets an error instead of a wait; later flushes run on their first caller's runtime.
/// Once it ran, the queue belongs to the next flush.
struct Flush(Option<Arc<Coalescer>>);

impl Drop for Flush {
    fn drop(&mut self) {
        if let Some(coalescer) = self.0.take() {
            *lock(&coalescer.runtime) = None;
            drop(coalescer.take());
        }
    }
}

impl Flush {
    /// Sends what the queue holds: one command as itself, more as a pipeline.
    async fn run(mut self, mut conn: ConnectionManager) {
        let Some(coalescer) = self.0.take() else {
            return;
        };
        let mut gathered = coalescer.take();
        gathered.retain(|queued| !queued.reply.is_closed());
        let gathered = match <[Queued; 1]>::try_from(gathered) {
            Ok([Queued { cmd, reply }]) => {
                let _ = reply.send(cmd.query_async(&mut conn).await);
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
        match pipe.query_async::<Vec<RedisResult<Value>>>(&mut conn).await {
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
