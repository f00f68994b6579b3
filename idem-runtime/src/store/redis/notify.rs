//! Change notifications for waiters in other processes: one shared pub/sub connection per
//! store, with one subscription per watched key, counted by its waiters.
//!
//! A waiter subscribes to `idem:changed:<store key>` *before* it marks the record as
//! watched (the `watch.lua` script, which also re-checks the record), so a completion that
//! lands after the mark always finds the subscription in place. The completion, failure,
//! release and forced delete scripts publish only on records a waiter marked, so a call
//! nobody waits for pays nothing.
//!
//! The pub/sub connection is opened on the first wait, not at start-up. When it breaks, the
//! waiters on it are woken (they claim again) and the next wait opens a new one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::StreamExt;
use redis::aio::PubSubSink;
use tokio::sync::Notify;

/// The channel on which changes of the record under `key` are published.
pub(crate) fn channel(key: &str) -> String {
    format!("idem:changed:{key}")
}

/// The shared pub/sub connection of one store.
pub(crate) struct Notifier {
    client: redis::Client,
    /// The live connection's sink. The lock also puts every `SUBSCRIBE` and `UNSUBSCRIBE`
    /// in one order, so an unsubscribe never overtakes a later subscribe of the same key.
    link: tokio::sync::Mutex<Option<Link>>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

struct Link {
    sink: PubSubSink,
    alive: Arc<AtomicBool>,
    reader: tokio::task::AbortHandle,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

struct Channel {
    waiters: usize,
    /// Whether the current connection has confirmed the subscription.
    subscribed: bool,
    notify: Arc<Notify>,
}

/// A waiter's share of a subscription; dropping the last share unsubscribes.
pub(crate) struct Subscription {
    notifier: Arc<Notifier>,
    channel: String,
    notify: Arc<Notify>,
}

impl Subscription {
    /// Woken by every message on the channel, and when the connection breaks.
    pub fn notify(&self) -> &Notify {
        &self.notify
    }
}

impl Notifier {
    pub fn new(client: redis::Client) -> Notifier {
        Notifier {
            client,
            link: tokio::sync::Mutex::new(None),
            channels: Arc::default(),
        }
    }

    /// Subscribes to `channel`, and returns once the server has confirmed it.
    pub async fn subscribe(self: &Arc<Self>, channel: String) -> redis::RedisResult<Subscription> {
        let mut link = self.link.lock().await;
        if !link
            .as_ref()
            .is_some_and(|l| l.alive.load(Ordering::Acquire))
        {
            *link = None;
            for entry in self.channels().values_mut() {
                entry.subscribed = false;
            }
            *link = Some(self.open().await?);
        }
        let (notify, subscribed) = {
            let mut channels = self.channels();
            let entry = channels.entry(channel.clone()).or_insert_with(|| Channel {
                waiters: 0,
                subscribed: false,
                notify: Arc::default(),
            });
            entry.waiters += 1;
            (Arc::clone(&entry.notify), entry.subscribed)
        };
        // Made before the request, so that a failed request still gives the share back.
        let subscription = Subscription {
            notifier: Arc::clone(self),
            channel,
            notify,
        };
        if !subscribed {
            let sink = &mut link.as_mut().expect("opened above").sink;
            sink.subscribe(&subscription.channel).await?;
            if let Some(entry) = self.channels().get_mut(&subscription.channel) {
                entry.subscribed = true;
            }
        }
        Ok(subscription)
    }

    async fn open(&self) -> redis::RedisResult<Link> {
        let (sink, mut stream) = self.client.get_async_pubsub().await?.split();
        let alive = Arc::new(AtomicBool::new(true));
        let channels = Arc::clone(&self.channels);
        let reader = tokio::spawn({
            let alive = Arc::clone(&alive);
            async move {
                while let Some(message) = stream.next().await {
                    let channels = lock(&channels);
                    if let Some(entry) = channels.get(message.get_channel_name()) {
                        entry.notify.notify_waiters();
                    }
                }
                alive.store(false, Ordering::Release);
                // Nobody will hear the next change: let every waiter look for itself.
                for entry in lock(&channels).values() {
                    entry.notify.notify_waiters();
                }
            }
        });
        Ok(Link {
            sink,
            alive,
            reader: reader.abort_handle(),
        })
    }

    /// Unsubscribes from `channel` when its last waiter left in the meantime.
    async fn release(&self, channel: String) {
        let mut link = self.link.lock().await;
        let subscribed = {
            let mut channels = self.channels();
            match channels.get(&channel) {
                Some(entry) if entry.waiters == 0 => {
                    let subscribed = entry.subscribed;
                    channels.remove(&channel);
                    subscribed
                }
                _ => return,
            }
        };
        if let Some(link) = link.as_mut().filter(|_| subscribed) {
            if let Err(error) = link.sink.unsubscribe(&channel).await {
                tracing::debug!(%error, channel, "UNSUBSCRIBE failed");
            }
        }
    }

    fn channels(&self) -> MutexGuard<'_, HashMap<String, Channel>> {
        lock(&self.channels)
    }
}

fn lock(channels: &Mutex<HashMap<String, Channel>>) -> MutexGuard<'_, HashMap<String, Channel>> {
    // Every change under this lock is a counter step or one insert or remove.
    channels.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let last = {
            let mut channels = self.notifier.channels();
            match channels.get_mut(&self.channel) {
                Some(entry) => {
                    entry.waiters = entry.waiters.saturating_sub(1);
                    entry.waiters == 0
                }
                None => false,
            }
        };
        if !last {
            return;
        }
        // Without a runtime (the store is dropped at shutdown) the connection goes anyway.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let notifier = Arc::clone(&self.notifier);
            let channel = std::mem::take(&mut self.channel);
            runtime.spawn(async move { notifier.release(channel).await });
        }
    }
}
