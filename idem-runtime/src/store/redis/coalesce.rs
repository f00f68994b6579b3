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
//! its pipeline, as it would have failed each of them alone. The flush runs in its own task,
//! on the runtime the connection was opened on (which drives the connection anyway), so
//! that a caller dropped while waiting, or a caller's runtime that stops, takes only its own
//! reply with it. A flush dropped before it sent anything (its runtime shut down) fails
//! the commands it was to send, so none waits for a write that will not come.

use std::sync::{Arc, Mutex};

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
    /// Where flushes run: the runtime the connection was opened on.
    runtime: Handle,
}

impl Coalescer {
    /// A coalescer whose flushes run on the current runtime.
    pub fn new() -> Arc<Self> {
        Arc::new(Coalescer {
            queue: Mutex::default(),
            runtime: Handle::current(),
        })
    }

    /// Sends `cmd` with the commands of other callers that come in before the next write.
    pub async fn query(self: &Arc<Self>, conn: &ConnectionManager, cmd: Cmd) -> RedisResult<Value> {
        let (reply, answer) = oneshot::channel();
        let first = {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.push(Queued { cmd, reply });
            queue.len() == 1
        };
        if first {
            let flush = Flush(Some(Arc::clone(self)));
            let conn = conn.clone();
            self.runtime.spawn(async move {
                tokio::task::yield_now().await;
                flush.run(conn).await;
            });
        }
        answer.await.unwrap_or_else(|_| {
            Err(RedisError::from((
                ErrorKind::Io,
                "the task sending this command ended without its reply",
            )))
        })
    }

    /// Takes what the queue holds.
    fn take(&self) -> Vec<Queued> {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The flush of one gathering. Dropped before it ran, it drops what was queued for it, and
/// with them their callers' reply channels, so each caller gets an error instead of a wait.
/// Once it ran, the queue belongs to the next flush.
struct Flush(Option<Arc<Coalescer>>);

impl Drop for Flush {
    fn drop(&mut self) {
        if let Some(coalescer) = self.0.take() {
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
        let gathered = coalescer.take();
        let gathered = match <[Queued; 1]>::try_from(gathered) {
            Ok([Queued { cmd, reply }]) => {
                let _ = reply.send(cmd.query_async(&mut conn).await);
                return;
            }
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
