//! A KV watch that survives disconnects: it replays the bucket, reports what
//! changed, and after any error re-creates itself (with backoff).
//!
//! Two flavours:
//! - [`spawn_kv_watch`] keeps the bookkeeping itself: it remembers every
//!   key's revision, reports keys that vanished while it was not watching as
//!   deletes, and drops replays of what it already reported. Consumers see a
//!   clean stream of puts and deletes plus one `Ready` once the initial
//!   contents are loaded.
//! - [`spawn_kv_watch_stamped`] leaves the bookkeeping to a consumer that
//!   keeps per-key state anyway (the ticker, with a million schedules, should
//!   not hold every key twice): each change carries its write time and the
//!   number of the replay it belongs to, and a `Ready` ends every replay, so
//!   the consumer can drop keys a replay did not mention.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::kv::{Operation, Store};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// One change to a bucket.
#[derive(Debug, Clone)]
pub enum KvChange {
    /// A key was set.
    Put {
        /// The key.
        key: String,
        /// The new value.
        value: Bytes,
        /// Its revision.
        revision: u64,
    },
    /// A key was deleted or purged.
    Delete {
        /// The key.
        key: String,
    },
    /// The initial contents have all been delivered.
    Ready,
}

/// A change from [`spawn_kv_watch_stamped`].
#[derive(Debug, Clone)]
pub struct StampedChange {
    /// What changed. `Ready` ends each replay (the first one and every one
    /// after the watch was re-created); puts may repeat across replays.
    pub change: KvChange,
    /// When the server stored the put or delete (for `Ready`, now).
    pub written_at: SystemTime,
    /// Which replay this belongs to: 1 for the first watch, one more each
    /// time it is re-created. A key that was not put during replay `n`
    /// (before its `Ready`) is gone.
    pub replay: u32,
}

/// Watches every key of `store`, sending changes to the returned channel
/// until `shutdown` fires or the receiver is dropped.
pub fn spawn_kv_watch(store: Store, shutdown: CancellationToken, capacity: usize) -> mpsc::Receiver<KvChange> {
    spawn_watch(store, shutdown, capacity, Some(Known::default()), |change, _, _| change)
}

/// Watches every key of `store`, leaving bookkeeping to the consumer (see the
/// module docs).
pub fn spawn_kv_watch_stamped(
    store: Store,
    shutdown: CancellationToken,
    capacity: usize,
) -> mpsc::Receiver<StampedChange> {
    spawn_watch(store, shutdown, capacity, None, |change, written_at, replay| StampedChange {
        change,
        written_at,
        replay,
    })
}

/// Turns a change, its write time and replay number into what the channel carries.
type Wrap<T> = fn(KvChange, SystemTime, u32) -> T;

/// What [`spawn_kv_watch`] remembers across replays.
#[derive(Default)]
struct Known {
    revisions: HashMap<String, u64>,
    ready_sent: bool,
}

fn spawn_watch<T: Send + 'static>(
    store: Store,
    shutdown: CancellationToken,
    capacity: usize,
    mut known: Option<Known>,
    wrap: Wrap<T>,
) -> mpsc::Receiver<T> {
    let (tx, rx) = mpsc::channel(capacity);
    let mut tx = Sink { tx, wrap, replay: 0, failures: std::sync::atomic::AtomicU32::new(0) };
    tokio::spawn(async move {
        let mut backoff = crate::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        while !shutdown.is_cancelled() && !tx.is_closed() {
            tx.replay += 1;
            match watch_once(&store, &tx, &shutdown, known.as_mut()).await {
                Ok(()) => return,
                Err(err) => {
                    // One line when the trouble starts; the replay that ends it says so.
                    if tx.failures.fetch_add(1, Ordering::Relaxed) == 0 {
                        tracing::warn!(bucket = %store.name, %err, "KV watch interrupted; re-creating it with backoff");
                    } else {
                        tracing::debug!(bucket = %store.name, %err, "KV watch still interrupted");
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = backoff.wait() => {}
                    }
                }
            }
        }
    });
    rx
}

/// The channel and how to fill it.
struct Sink<T> {
    tx: mpsc::Sender<T>,
    wrap: Wrap<T>,
    replay: u32,
    /// Failed attempts since the watch last delivered a whole replay.
    failures: std::sync::atomic::AtomicU32,
}

impl<T> Sink<T> {
    async fn send(&self, change: KvChange, at: SystemTime) -> anyhow::Result<()> {
        if matches!(change, KvChange::Ready) {
            let failures = self.failures.swap(0, Ordering::Relaxed);
            if failures > 0 {
                tracing::info!(failures, "KV watch re-established");
            }
        }
        self.tx.send((self.wrap)(change, at, self.replay)).await.map_err(|_| anyhow::anyhow!("watch receiver dropped"))
    }

    fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Runs one watch until shutdown (`Ok`) or an error (`Err`: retry).
///
/// The watch is a pull-based ordered consumer on the bucket's stream (last
/// value per key, then every change), not the push-based `Store::watch`: a
/// consumer slower than the server (a ticker loading a million schedules)
/// then only slows delivery down, where a push subscription would overflow
/// and drop messages.
async fn watch_once<T>(
    store: &Store,
    tx: &Sink<T>,
    shutdown: &CancellationToken,
    mut known: Option<&mut Known>,
) -> anyhow::Result<()> {
    let consumer = store
        .stream
        .create_consumer(OrderedConfig {
            filter_subject: format!("{}>", store.prefix),
            deliver_policy: DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await?;
    let initial = consumer.cached_info().num_pending;
    let mut messages = consumer.messages().await?;
    let mut seen: HashSet<String> = HashSet::new();
    let mut caught_up = false;
    if initial == 0 {
        caught_up = true;
        finish_replay(tx, known.as_deref_mut(), &seen).await?;
    }
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            message = messages.next() => message,
        };
        let message = match message {
            Some(Ok(message)) => message,
            Some(Err(err)) => anyhow::bail!(err),
            None => anyhow::bail!("watch ended"),
        };
        let info = message.info().map_err(|e| anyhow::anyhow!("message without metadata: {e}"))?;
        let (revision, pending, created) = (info.stream_sequence, info.pending, info.published);
        let Some(key) = message.subject.strip_prefix(store.prefix.as_str()).map(str::to_string) else { continue };
        if !caught_up && known.is_some() {
            seen.insert(key.clone());
        }
        let done = !caught_up && pending == 0;
        let change = match (operation(&message), known.as_deref_mut()) {
            (Operation::Put, Some(k)) => (k.revisions.insert(key.clone(), revision) != Some(revision))
                .then(|| KvChange::Put { key, value: message.payload.clone(), revision }),
            (Operation::Put, None) => Some(KvChange::Put { key, value: message.payload.clone(), revision }),
            (Operation::Delete | Operation::Purge, Some(k)) => {
                k.revisions.remove(&key).map(|_| KvChange::Delete { key })
            }
            (Operation::Delete | Operation::Purge, None) => Some(KvChange::Delete { key }),
        };
        if let Some(change) = change {
            tx.send(change, created.into()).await?;
        }
        if done {
            caught_up = true;
            finish_replay(tx, known.as_deref_mut(), &seen).await?;
            seen = HashSet::new();
        }
    }
}

/// The KV operation a bucket message records: a put, unless its headers
/// say delete or purge (`KV-Operation`, or a server marker on expiry).
fn operation(message: &async_nats::jetstream::Message) -> Operation {
    let Some(headers) = message.headers.as_ref() else { return Operation::Put };
    if let Some(op) = headers.get("KV-Operation") {
        return match op.as_str() {
            "DEL" => Operation::Delete,
            "PURGE" => Operation::Purge,
            _ => Operation::Put,
        };
    }
    match headers.get("Nats-Marker-Reason").map(|r| r.as_str()) {
        Some("MaxAge" | "Purge") => Operation::Purge,
        Some("Remove") => Operation::Delete,
        _ => Operation::Put,
    }
}

/// After a (re)play: with bookkeeping, keys known before but absent now were
/// removed while we were not watching; without, the consumer learns that the
/// replay is complete.
async fn finish_replay<T>(tx: &Sink<T>, known: Option<&mut Known>, seen: &HashSet<String>) -> anyhow::Result<()> {
    let Some(known) = known else {
        return tx.send(KvChange::Ready, SystemTime::now()).await;
    };
    let vanished: Vec<String> = known.revisions.keys().filter(|k| !seen.contains(*k)).cloned().collect();
    for key in vanished {
        known.revisions.remove(&key);
        tx.send(KvChange::Delete { key }, SystemTime::now()).await?;
    }
    if !known.ready_sent {
        known.ready_sent = true;
        tx.send(KvChange::Ready, SystemTime::now()).await?;
    }
    Ok(())
}
