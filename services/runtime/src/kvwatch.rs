//! A KV watch that survives disconnects: it replays the bucket, reports what
//! changed, and after any error re-creates itself (with backoff) and reports
//! keys that vanished meanwhile as deletes. Consumers see a clean stream of
//! puts and deletes plus one `Ready` once the initial contents are loaded.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

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

/// A change with the server's time of the write it reports (for `Ready`,
/// and for keys found gone after a reconnect, the time it was noticed).
#[derive(Debug, Clone)]
pub struct StampedChange {
    /// What changed.
    pub change: KvChange,
    /// When the server stored the put or delete.
    pub written_at: SystemTime,
}

/// Watches every key of `store`, sending changes to the returned channel
/// until `shutdown` fires or the receiver is dropped.
pub fn spawn_kv_watch(store: Store, shutdown: CancellationToken, capacity: usize) -> mpsc::Receiver<KvChange> {
    spawn_watch(store, shutdown, capacity, |change, _| change)
}

/// [`spawn_kv_watch`], with each change's write time.
pub fn spawn_kv_watch_stamped(
    store: Store,
    shutdown: CancellationToken,
    capacity: usize,
) -> mpsc::Receiver<StampedChange> {
    spawn_watch(store, shutdown, capacity, |change, written_at| StampedChange { change, written_at })
}

/// Turns a change and its write time into what the channel carries.
type Wrap<T> = fn(KvChange, SystemTime) -> T;

fn spawn_watch<T: Send + 'static>(
    store: Store,
    shutdown: CancellationToken,
    capacity: usize,
    wrap: Wrap<T>,
) -> mpsc::Receiver<T> {
    let (tx, rx) = mpsc::channel(capacity);
    let tx = Sink { tx, wrap };
    tokio::spawn(async move {
        let mut known: HashMap<String, u64> = HashMap::new();
        let mut ready_sent = false;
        let mut backoff = Duration::from_millis(100);
        while !shutdown.is_cancelled() && !tx.is_closed() {
            match watch_once(&store, &tx, &shutdown, &mut known, &mut ready_sent).await {
                Ok(()) => return,
                Err(err) => {
                    tracing::warn!(bucket = %store.name, %err, ?backoff, "KV watch interrupted; re-creating");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
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
}

impl<T> Sink<T> {
    async fn send(&self, change: KvChange, at: SystemTime) -> anyhow::Result<()> {
        self.tx.send((self.wrap)(change, at)).await.map_err(|_| anyhow::anyhow!("watch receiver dropped"))
    }

    fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Runs one watch until shutdown (`Ok`) or an error (`Err`: retry).
async fn watch_once<T>(
    store: &Store,
    tx: &Sink<T>,
    shutdown: &CancellationToken,
    known: &mut HashMap<String, u64>,
    ready_sent: &mut bool,
) -> anyhow::Result<()> {
    let stored = store.status().await?.values();
    let mut watch = store.watch_with_history(">").await?;
    let mut seen: HashSet<String> = HashSet::new();
    let mut caught_up = false;
    if stored == 0 {
        caught_up = true;
        finish_replay(tx, known, &seen, ready_sent).await?;
    }
    loop {
        let entry = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            entry = watch.next() => entry,
        };
        let entry = match entry {
            Some(Ok(entry)) => entry,
            Some(Err(err)) => anyhow::bail!(err),
            None => anyhow::bail!("watch ended"),
        };
        if !caught_up {
            seen.insert(entry.key.clone());
        }
        let change = match entry.operation {
            Operation::Put => (known.insert(entry.key.clone(), entry.revision) != Some(entry.revision))
                .then(|| KvChange::Put { key: entry.key, value: entry.value, revision: entry.revision }),
            Operation::Delete | Operation::Purge => {
                known.remove(&entry.key).map(|_| KvChange::Delete { key: entry.key })
            }
        };
        if let Some(change) = change {
            tx.send(change, entry.created.into()).await?;
        }
        if !caught_up && entry.delta == 0 {
            caught_up = true;
            finish_replay(tx, known, &seen, ready_sent).await?;
        }
    }
}

/// After a (re)play: keys known before but absent now were removed while we
/// were not watching.
async fn finish_replay<T>(
    tx: &Sink<T>,
    known: &mut HashMap<String, u64>,
    seen: &HashSet<String>,
    ready_sent: &mut bool,
) -> anyhow::Result<()> {
    let vanished: Vec<String> = known.keys().filter(|k| !seen.contains(*k)).cloned().collect();
    for key in vanished {
        known.remove(&key);
        tx.send(KvChange::Delete { key }, SystemTime::now()).await?;
    }
    if !*ready_sent {
        *ready_sent = true;
        tx.send(KvChange::Ready, SystemTime::now()).await?;
    }
    Ok(())
}
