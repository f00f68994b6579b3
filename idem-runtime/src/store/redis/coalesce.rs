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
//!   together, even when no runtime runs its flush: its runtime stalled or stopped, or the
//!   worker whose slot holds the flush is blocked (a task spawned from a worker waits in
//!   that worker's own slot, which no other worker takes). Callers keep no timer of their
//!   own, which cost a tenth of a busy replay's CPU. Each command carries its deadline,
//!   the flush bounds its write and reply by the last deadline of its gathering, and a
//!   thread of the process (see `watchdog.rs`) answers with a timeout every command still
//!   waiting past its deadline, at most one tick late.
//! - A command whose caller dropped its call, or whose deadline passed, before its flush
//!   writes is left out of the write: nobody would read the reply, and a claim nobody owns
//!   would hold its key for a lease.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::{Cmd, ErrorKind, RedisError, RedisResult, Value};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use super::watchdog;

/// The most commands one write carries. A full gathering goes out at once, without waiting
/// for the flush's yield, so the server works through one while callers fill the next:
/// with one unbounded gathering, 64 busy callers took turns with the server instead of
/// working alongside it. Of 16, 24, 32 and 48, 32 did best in the load generator's
/// concurrency-64 replay phase, and again of 8, 16, 32 and 64 once callers kept no timers.
const GATHER_LIMIT: usize = 32;

type Reply = oneshot::Sender<RedisResult<Value>>;

/// Patience beyond this is taken as this, so that a deadline is always a valid instant.
const LONGEST_WAIT: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// A command waiting for its write, and where its reply goes.
struct Queued {
    /// `None` once the command is in its write.
    cmd: Option<Cmd>,
    /// `None` once the watchdog answered it.
    reply: Option<Reply>,
    /// When its caller stops waiting.
    deadline: Instant,
}

/// Gathers the commands of concurrent callers and sends each gathering as one pipeline.
pub(crate) struct Coalescer {
    queue: Mutex<Queue>,
    /// The gatherings taken from the queue, whose callers wait there for their replies
    /// until their flush answers them or the watchdog times them out.
    taken: Mutex<Taken>,
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
    /// Emptied gatherings, kept for their room: see [`SPARES`].
    spare: Vec<Vec<Queued>>,
}

#[derive(Default)]
struct Taken {
    next: u64,
    batches: Vec<Batch>,
    /// Emptied pipelines, kept for their room: see [`SPARES`].
    spare: Vec<redis::Pipeline>,
}

/// How many emptied gatherings, and pipelines, a coalescer keeps to use again: a few more
/// than are on their way at once under load. A full gathering's vectors are larger than
/// the chunks glibc's per-thread cache holds, so a fresh pair for every gathering, grown
/// from empty, went to the shared heap under its lock each time. Keeping them raised the
/// load generator's replays at concurrency 64 by 9% (267k–273k to 291k–297k calls/s in
/// alternating runs); 8 did about 1% better than 4.
const SPARES: usize = 8;

/// A gathering taken from the queue, from then on found by its `id`.
struct Batch {
    id: u64,
    queued: Vec<Queued>,
}

/// What one flush writes.
enum Write {
    One(Cmd),
    Many(redis::Pipeline),
}

impl Coalescer {
    /// A coalescer whose flushes run on the current runtime, and whose callers wait at most
    /// `patience` for a reply.
    pub fn new(patience: Duration) -> Arc<Self> {
        let coalescer = Coalescer::unwatched(patience);
        watchdog::watch(coalescer.clone());
        coalescer
    }

    fn unwatched(patience: Duration) -> Arc<Self> {
        Arc::new(Coalescer {
            queue: Mutex::new(Queue {
                queued: Vec::with_capacity(GATHER_LIMIT),
                runtime: Some(Handle::current()),
                spare: Vec::new(),
            }),
            taken: Mutex::default(),
            patience: patience.min(LONGEST_WAIT),
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
            let queued = Queued {
                cmd: Some(cmd),
                reply: Some(reply),
                deadline: Instant::now() + self.patience,
            };
            let flush = {
                let mut queue = lock(&self.queue);
                queue.queued.push(queued);
                match queue.queued.len() {
                    1 => Some((None, queue.runtime.clone())),
                    n if n >= GATHER_LIMIT => Some((Some(queue.take()), queue.runtime.clone())),
                    _ => None,
                }
            };
            // Spawned out of the lock: a runtime that has shut down drops the task inside
            // `spawn`, and the flush's drop takes the lock.
            if let Some((full, runtime)) = flush {
                let full = full.map(|queued| self.take(queued));
                self.spawn_flush(conn, full, runtime);
            }
            answer.await.unwrap_or_else(|_| {
                Err(RedisError::from((
                    ErrorKind::Io,
                    "the task sending this command ended without its reply",
                )))
            })
        }
    }

    /// Starts the flush of the gathering this caller opened, or of batch `full`, which it
    /// closed, on `runtime` (else here).
    fn spawn_flush(
        self: &Arc<Self>,
        conn: &ConnectionManager,
        full: Option<u64>,
        runtime: Option<Handle>,
    ) {
        let flush = Flush {
            coalescer: Arc::clone(self),
            started: false,
            batch: full,
        };
        let conn = conn.clone();
        let task = flush.run(conn);
        match runtime {
            Some(runtime) => drop(runtime.spawn(task)),
            None => drop(tokio::spawn(task)),
        }
    }

    /// Moves a gathering to where the watchdog sees it; its batch id.
    fn take(&self, queued: Vec<Queued>) -> u64 {
        let mut taken = lock(&self.taken);
        let id = taken.next;
        taken.next += 1;
        taken.batches.push(Batch { id, queued });
        id
    }

    /// Takes what the queue holds; its batch id, or `None` when the queue was empty.
    fn take_queued(&self) -> Option<u64> {
        let queued = lock(&self.queue).take();
        match queued.is_empty() {
            true => None,
            false => Some(self.take(queued)),
        }
    }

    /// The write of batch `id`, and the last deadline of its commands. Leaves out the
    /// commands whose callers gave up, were answered, or are past their deadline (which it
    /// answers with a timeout, as the watchdog would at its next tick): nobody would read
    /// the reply, and a claim nobody owns would hold its key for a lease. `None` when no
    /// caller is left.
    fn write(&self, id: u64) -> Option<(Write, Instant)> {
        let now = Instant::now();
        let mut late = Vec::new();
        let written = {
            let mut guard = lock(&self.taken);
            let taken = &mut *guard;
            let at = taken.batches.iter().position(|batch| batch.id == id)?;
            let batch = &mut taken.batches[at];
            batch.queued.retain_mut(|queued| match &queued.reply {
                Some(reply) if reply.is_closed() => false,
                Some(_) if queued.deadline <= now => {
                    late.extend(queued.reply.take());
                    false
                }
                Some(_) => true,
                None => false,
            });
            let deadline = batch.queued.iter().map(|queued| queued.deadline).max();
            let write = match &mut batch.queued[..] {
                [] => None,
                [one] => one.cmd.take().map(Write::One),
                many => {
                    let mut pipe = taken.spare.pop().unwrap_or_else(|| {
                        let mut pipe = redis::Pipeline::with_capacity(GATHER_LIMIT);
                        pipe.ignore_errors();
                        pipe
                    });
                    for cmd in many.iter_mut().filter_map(|queued| queued.cmd.take()) {
                        pipe.add_command(cmd);
                    }
                    Some(Write::Many(pipe))
                }
            };
            if write.is_none() {
                taken.batches.swap_remove(at);
            }
            write.zip(deadline)
        };
        for reply in late {
            let _ = reply.send(Err(timed_out()));
        }
        written
    }

    /// The commands of batch `id`, with the reply channels the watchdog left; `None` when
    /// it answered them all. Keeps `sent`, the batch's pipeline, for a later batch.
    fn replies(&self, id: u64, mut sent: Option<redis::Pipeline>) -> Option<Vec<Queued>> {
        // Its commands are dropped out of the lock.
        if let Some(pipe) = &mut sent {
            pipe.clear();
        }
        let mut taken = lock(&self.taken);
        if let Some(pipe) = sent.filter(|_| taken.spare.len() < SPARES) {
            taken.spare.push(pipe);
        }
        let at = taken.batches.iter().position(|batch| batch.id == id)?;
        Some(taken.batches.swap_remove(at).queued)
    }

    /// Keeps an answered gathering's room for a later one, unless enough are kept or it
    /// is too small to hold a full gathering.
    fn recycle(&self, mut queued: Vec<Queued>) {
        queued.clear();
        let mut queue = lock(&self.queue);
        if queue.spare.len() < SPARES && queued.capacity() >= GATHER_LIMIT {
            queue.spare.push(queued);
        }
    }
}

impl Queue {
    /// What the queue holds, leaving it a kept gathering's room.
    fn take(&mut self) -> Vec<Queued> {
        let room = self
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(GATHER_LIMIT));
        std::mem::replace(&mut self.queued, room)
    }
}

impl watchdog::Expire for Coalescer {
    /// Answers the commands past their deadline, queued or on their way. A gathering on
    /// its way keeps its other commands, and their places in its write.
    fn expire(&self, now: Instant) {
        let is_late = |queued: &Queued| queued.deadline <= now;
        let mut late: Vec<Reply> = lock(&self.queue)
            .queued
            .extract_if(.., |queued| is_late(queued))
            .filter_map(|queued| queued.reply)
            .collect();
        {
            let mut taken = lock(&self.taken);
            for batch in &mut taken.batches {
                let answered = batch.queued.iter_mut().filter(|queued| is_late(queued));
                late.extend(answered.filter_map(|queued| queued.reply.take()));
            }
            let waiting = |batch: &Batch| batch.queued.iter().any(|q| q.reply.is_some());
            taken.batches.retain(waiting);
        }
        for reply in late {
            let _ = reply.send(Err(timed_out()));
        }
    }
}

/// The reply to one command, a server's error as an error.
fn server_error(value: Value) -> RedisResult<Value> {
    match value {
        Value::ServerError(error) => Err(error.into()),
        value => Ok(value),
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

/// The flush of one gathering: the batch its caller closed, or what the queue holds once
/// it ran. Dropped before it took the queue (its runtime shut down), it drops what was
/// queued for it, and later flushes run on their first caller's runtime. Dropped with its
/// batch unanswered, it drops the batch. Either way each caller gets an error (which the
/// store sends again) instead of a wait.
struct Flush {
    coalescer: Arc<Coalescer>,
    /// Whether it took the queue, or was handed a batch.
    started: bool,
    batch: Option<u64>,
}

impl Drop for Flush {
    fn drop(&mut self) {
        if !self.started {
            let dropped = {
                let mut queue = lock(&self.coalescer.queue);
                queue.runtime = None;
                std::mem::take(&mut queue.queued)
            };
            drop(dropped);
        }
        if let Some(id) = self.batch.take() {
            drop(self.coalescer.replies(id, None));
        }
    }
}

impl Flush {
    /// Sends the batch, one command as itself, more as a pipeline, and answers its callers
    /// by the last of their deadlines.
    async fn run(mut self, mut conn: ConnectionManager) {
        if self.batch.is_none() {
            tokio::task::yield_now().await;
            self.batch = self.coalescer.take_queued();
        }
        // From here on the queue belongs to the next flush.
        self.started = true;
        let Some(id) = self.batch else {
            return;
        };
        let Some((write, deadline)) = self.coalescer.write(id) else {
            self.batch = None;
            return;
        };
        let deadline = tokio::time::Instant::from_std(deadline);
        // Sent by the connection's own methods, unboxed, and each reply taken as it came.
        let (sent, pipe) = match write {
            Write::One(cmd) => {
                let sent = conn.send_packed_command(&cmd);
                let sent = tokio::time::timeout_at(deadline, sent).await;
                (sent.map(|value| value.map(|value| vec![value])), None)
            }
            Write::Many(pipe) => {
                let sent = conn.send_packed_commands(&pipe, 0, pipe.len());
                (tokio::time::timeout_at(deadline, sent).await, Some(pipe))
            }
        };
        self.batch = None;
        let Some(mut queued) = self.coalescer.replies(id, pipe) else {
            return;
        };
        // `None` where the watchdog answered already.
        let replies = queued.drain(..).map(|queued| queued.reply);
        let answer = |reply: Option<Reply>, value| {
            if let Some(reply) = reply {
                let _ = reply.send(value);
            }
        };
        match sent.unwrap_or_else(|_| Err(timed_out())) {
            Ok(values) if values.len() == replies.len() => {
                for (reply, value) in replies.zip(values) {
                    answer(reply, server_error(value));
                }
            }
            Ok(values) => {
                let what = format!("{} replies to {} commands", values.len(), replies.len());
                for reply in replies {
                    let error = (ErrorKind::Client, "unexpected pipeline reply", what.clone());
                    answer(reply, Err(RedisError::from(error)));
                }
            }
            Err(error) => {
                for reply in replies {
                    answer(reply, Err(error.clone()));
                }
            }
        }
        self.coalescer.recycle(queued);
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot::error::TryRecvError;

    use super::*;

    type Answer = oneshot::Receiver<RedisResult<Value>>;

    fn queued(deadline: Instant) -> (Queued, Answer) {
        let (reply, answer) = oneshot::channel();
        let cmd = Some(redis::cmd("PING"));
        let reply = Some(reply);
        (
            Queued {
                cmd,
                reply,
                deadline,
            },
            answer,
        )
    }

    fn timed_out_already(answer: &mut Answer) -> bool {
        matches!(answer.try_recv(), Ok(Err(error)) if error.is_timeout())
    }

    // Whether or not the watchdog ticked since, a command past its deadline when its flush
    // writes is answered with a timeout and left out of the write; the others go out.
    #[tokio::test]
    async fn a_write_times_out_and_leaves_out_the_commands_past_their_deadline() {
        let coalescer = Coalescer::unwatched(Duration::from_secs(1));
        let now = Instant::now();
        let (past, soon, later) = (
            now - Duration::from_millis(1),
            now + Duration::from_secs(3),
            now + Duration::from_secs(4),
        );

        let (late, mut late_answer) = queued(past);
        let (due, mut due_answer) = queued(soon);
        let (last, mut last_answer) = queued(later);
        let id = coalescer.take(vec![late, due, last]);
        let Some((Write::Many(pipe), deadline)) = coalescer.write(id) else {
            panic!("a pipeline of the two commands in time");
        };
        assert_eq!((pipe.len(), deadline), (2, later));
        assert!(timed_out_already(&mut late_answer));
        for answer in [&mut due_answer, &mut last_answer] {
            assert!(matches!(answer.try_recv(), Err(TryRecvError::Empty)));
        }

        let (late, mut late_answer) = queued(past);
        let (due, mut due_answer) = queued(soon);
        let id = coalescer.take(vec![late, due]);
        let written = coalescer.write(id);
        assert!(matches!(written, Some((Write::One(_), deadline)) if deadline == soon));
        assert!(timed_out_already(&mut late_answer));
        assert!(matches!(due_answer.try_recv(), Err(TryRecvError::Empty)));

        let (late, mut late_answer) = queued(past);
        let id = coalescer.take(vec![late]);
        assert!(coalescer.write(id).is_none());
        assert!(timed_out_already(&mut late_answer));
        assert!(
            coalescer.replies(id, None).is_none(),
            "an empty batch was kept"
        );
    }

    fn pipeline_of(write: Option<(Write, Instant)>) -> redis::Pipeline {
        match write {
            Some((Write::Many(pipe), _)) => pipe,
            _ => panic!("a pipeline"),
        }
    }

    fn keyed(key: &str) -> (Queued, Answer) {
        let (mut queued, answer) = queued(Instant::now() + Duration::from_secs(60));
        queued.cmd = Some(redis::cmd("GET").arg(key).to_owned());
        (queued, answer)
    }

    // A kept gathering and a kept pipeline carry nothing of the batch they served into the
    // next one, and no more than `SPARES` of each are kept.
    #[tokio::test]
    async fn kept_gatherings_and_pipelines_start_empty_and_are_bounded() {
        let coalescer = Coalescer::unwatched(Duration::from_secs(60));
        let (old, _answers): (Vec<_>, Vec<_>) =
            ["old-1", "old-2", "old-3"].map(keyed).into_iter().unzip();
        let mut room = Vec::with_capacity(GATHER_LIMIT);
        room.extend(old);
        let id = coalescer.take(room);
        let pipe = pipeline_of(coalescer.write(id));
        let queued = coalescer.replies(id, Some(pipe)).expect("the batch");
        coalescer.recycle(queued);

        let (new_one, new_two) = (keyed("new-1"), keyed("new-2"));
        {
            let mut queue = lock(&coalescer.queue);
            queue.queued.extend([new_one.0, new_two.0]);
        }
        let id = coalescer.take_queued().expect("two queued");
        let (held, room) = {
            let queue = lock(&coalescer.queue);
            (queue.queued.len(), queue.queued.capacity())
        };
        assert_eq!(held, 0, "the next gathering starts with commands in it");
        assert!(
            room >= GATHER_LIMIT,
            "the next gathering has room for {room}"
        );
        let pipe = pipeline_of(coalescer.write(id));
        let packed = String::from_utf8_lossy(&pipe.get_packed_pipeline()).into_owned();
        assert_eq!(
            packed,
            "*2\r\n$3\r\nGET\r\n$5\r\nnew-1\r\n*2\r\n$3\r\nGET\r\n$5\r\nnew-2\r\n"
        );
        assert_eq!(coalescer.replies(id, Some(pipe)).map(|q| q.len()), Some(2));

        for _ in 0..SPARES + 3 {
            coalescer.recycle(Vec::with_capacity(GATHER_LIMIT));
            let (two, _answers): (Vec<_>, Vec<_>) = ["a", "b"].map(keyed).into_iter().unzip();
            let id = coalescer.take(two);
            let pipe = pipeline_of(coalescer.write(id));
            drop(coalescer.replies(id, Some(pipe)));
            assert!(coalescer.replies(id, Some(redis::pipe())).is_none());
        }
        assert_eq!(lock(&coalescer.queue).spare.len(), SPARES);
        assert_eq!(lock(&coalescer.taken).spare.len(), SPARES);
    }
}
